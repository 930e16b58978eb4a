"""The compiled float convolution gradients (refbnn.kernels._floatops.conv2d_backward) against the
NumPy path they replace (refbnn.ops.conv.conv2d_backward_from_input), on the binary convolutions
of ResNet-20 at batch 128: 3x3 kernels, padding 1, +-1 inputs and weights, float dout.

    python benchmarks/bench_floatops_conv.py [--batch 128] [--threads 1 2] [--rounds 5] [--clock wall|cpu]
                                             [--json PATH]

Per layer and thread count: the best time of ``--rounds`` calls (a shared machine: the load average
is printed), and GFLOP/s counting 2 N O K L per GEMM (K = C kh kw, L = Ho Wo): two GEMMs (dW and
dcols) for a backward with dx, one for dW only. NumPy's BLAS is limited with threadpoolctl, the
compiled kernels take ``threads=``. ``--clock cpu`` times with the process's CPU time instead of the
wall clock: on a shared machine a 1-thread run is then not charged for the time other processes
hold its core (with more threads it is the CPU time of all of them, not a wall time). Then the 18 binary convolutions of ResNet-20 are added up
(6 of stage 1, the strided 16->32 and 5 of stage 2, the strided 32->64 and 5 of stage 3), and the
float forward (refbnn.kernels._floatops.conv2d_forward against refbnn.ops.conv2d_forward, general
float inputs) is timed on the 3->16 stem and the stride-1 shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from benchtime import best_time

# (C, O, H=W of the input, stride, how many of ResNet-20's 18 binary convolutions have this shape)
LAYERS = [(16, 16, 32, 1, 6), (16, 32, 32, 2, 1), (32, 32, 16, 1, 5), (32, 64, 16, 2, 1), (64, 64, 8, 1, 5)]


CLOCK = time.perf_counter


def best_of(fn, rounds):
    return best_time(fn, rounds, CLOCK)


def main(argv=None):
    from threadpoolctl import threadpool_limits

    from refbnn.kernels import _floatops as F
    from refbnn.machine import cpu_model
    from refbnn.ops.conv import conv2d_backward_from_input, conv2d_forward

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time

    print(f"{cpu_model()}, {os.cpu_count()} CPUs, conv path {F.conv_path()}, {args.clock} clock, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rng = np.random.default_rng(0)
    n = args.batch
    rows, totals = [], {}
    for c, o, hw, s, count in LAYERS:
        x = np.where(rng.random((n, c, hw, hw)) < 0.5, -1.0, 1.0).astype(np.float32)
        w = np.where(rng.random((o, c, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
        ho = (hw - 1) // s + 1
        dout = rng.standard_normal((n, o, ho, ho)).astype(np.float32)
        geo = ((s, s), (1, 1), (1, 1), 1, 0.0)
        gemm = 2.0 * n * o * (c * 9) * (ho * ho)
        for t in args.threads:
            with threadpool_limits(t):
                t_np = best_of(lambda: conv2d_backward_from_input(dout, x, w, *geo), args.rounds)
            t_fo = best_of(lambda: F.conv2d_backward(dout, x, w, *geo, threads=t), args.rounds)
            t_dw = best_of(lambda: F.conv2d_backward(dout, x, w, *geo, need_dx=False, threads=t), args.rounds)
            row = dict(layer=f"{c}->{o} {hw}x{hw} s{s}", count=count, threads=t, numpy_ms=1e3 * t_np,
                       fo_ms=1e3 * t_fo, fo_dw_only_ms=1e3 * t_dw, numpy_gflops=2 * gemm / t_np / 1e9,
                       fo_gflops=2 * gemm / t_fo / 1e9, fo_dw_only_gflops=gemm / t_dw / 1e9)
            rows.append(row)
            tot = totals.setdefault(t, [0.0, 0.0])
            tot[0] += count * t_np
            tot[1] += count * t_fo
            print(f"{row['layer']:>18} x{count} {t}T: numpy {row['numpy_ms']:7.1f} ms ({row['numpy_gflops']:5.1f} "
                  f"GFLOP/s)  compiled {row['fo_ms']:6.1f} ms ({row['fo_gflops']:5.1f} GFLOP/s, "
                  f"{t_np / t_fo:4.1f}x)  dW only {row['fo_dw_only_ms']:5.1f} ms "
                  f"({row['fo_dw_only_gflops']:5.1f} GFLOP/s)")
    for t, (tn, tf) in totals.items():
        print(f"ResNet-20's 18 binary conv backwards, {t} thread(s): numpy {1e3 * tn:.0f} ms, compiled "
              f"{1e3 * tf:.0f} ms ({tn / tf:.1f}x)")
    fwd_rows = []
    for c, o, hw in ((3, 16, 32), (16, 16, 32), (32, 32, 16), (64, 64, 8)):
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
        flops = 2.0 * n * o * c * 9 * hw * hw
        for t in args.threads:
            with threadpool_limits(t):
                t_np = best_of(lambda: conv2d_forward(x, w, None, 1, 1, 1, 1), args.rounds)
            t_fo = best_of(lambda: F.conv2d_forward(x, w, (1, 1), (1, 1), (1, 1), 1, 0.0, threads=t), args.rounds)
            fwd_rows.append(dict(layer=f"{c}->{o} {hw}x{hw}", threads=t, numpy_ms=1e3 * t_np, fo_ms=1e3 * t_fo))
            print(f"forward {c}->{o} {hw}x{hw} {t}T: numpy {1e3 * t_np:6.1f} ms ({flops / t_np / 1e9:5.1f} GFLOP/s)  "
                  f"compiled {1e3 * t_fo:5.1f} ms ({flops / t_fo / 1e9:5.1f} GFLOP/s, {t_np / t_fo:4.1f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), clock=args.clock, load=os.getloadavg(), batch=n, rows=rows, forward=fwd_rows,
                           totals_ms={str(t): dict(numpy=1e3 * a, compiled=1e3 * b) for t, (a, b) in totals.items()}),
                      f, indent=1)


if __name__ == "__main__":
    main()
