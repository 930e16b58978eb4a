"""Batch norm (training) and the element-wise ops of the training step: refbnn.kernels._floatops
(src_cython/fo_norm.c) against the NumPy reference, at ResNet-20's shapes (batch 128).

    python benchmarks/bench_floatops_norm.py [--batch 128] [--repeat 20] [--threads 1 2] [--json PATH]

Each time is the best of ``--repeat`` calls (after one warm-up call), in ms. The reference rows
are refbnn.ops' functions as the training step calls them (their input checks included:
batchnorm_forward and hardtanh_forward scan their input for NaN/Inf with one x.sum()); the
"numpy" rows are the bare NumPy expressions the kernels replace.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
from benchtime import best_time


def best_ms(fn, repeat):
    return best_time(fn, repeat) * 1e3


def run(batch, repeat, threads):
    from refbnn import ops
    from refbnn.checks import first_nonfinite
    from refbnn.conventions import clip_mask
    from refbnn.kernels import _floatops as F

    rng = np.random.default_rng(0)
    rows = []
    for shape in ((batch, 16, 32, 32), (batch, 32, 16, 16), (batch, 64, 8, 8)):
        c = shape[1]
        x = (rng.standard_normal(shape) * 2 + 0.3).astype(np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)
        gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        _, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv)
        _, xhat, _, _, inv_std = F.batchnorm_train_forward(x, gamma, beta, 1e-5)
        mask = (x > -1) & (x < 1)
        name = "x".join(str(s) for s in shape[1:])
        ref = {
            "bn_forward": lambda: ops.batchnorm_forward(x, gamma, beta, rm, rv),
            "bn_backward": lambda: ops.batchnorm_backward(dout, cache),
            "hardtanh_forward": lambda: ops.hardtanh_forward(x),
            "mask_multiply": lambda: ops.hardtanh_backward(dout, mask),
            "ste_clip_backward": lambda: dout * clip_mask(x, 1.0),
            "clip_mask": lambda: clip_mask(x, 1.0),
            "first_nonfinite": lambda: first_nonfinite(x),
        }
        numpy_only = {
            "hardtanh_forward": lambda: (x.clip(-1.0, 1.0), (x > -1.0) & (x < 1.0)),
        }
        for t in threads:
            kern = {
                "bn_forward": lambda: F.batchnorm_train_forward(x, gamma, beta, 1e-5, threads=t),
                "bn_backward": lambda: F.batchnorm_train_backward(dout, xhat, gamma, inv_std, threads=t),
                "hardtanh_forward": lambda: F.hardtanh_forward(x, -1.0, 1.0, threads=t),
                "mask_multiply": lambda: F.mask_multiply(dout, mask, threads=t),
                "ste_clip_backward": lambda: F.ste_clip_backward(dout, x, 1.0, threads=t),
                "clip_mask": lambda: F.clip_mask(x, 1.0, threads=t),
                "first_nonfinite": lambda: F.first_nonfinite_index(x, threads=t),
            }
            for op, fn in kern.items():
                r = best_ms(ref[op], repeat)
                k = best_ms(fn, repeat)
                row = {"shape": name, "op": op, "threads": t, "reference_ms": r, "kernel_ms": k, "speedup": r / k}
                if op in numpy_only:
                    row["numpy_ms"] = best_ms(numpy_only[op], repeat)
                rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = run(a.batch, a.repeat, a.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load}")
    print(f"{'shape':>10} {'op':>18} {'thr':>3} {'reference':>10} {'kernel':>8} {'speedup':>7}")
    for r in rows:
        print(f"{r['shape']:>10} {r['op']:>18} {r['threads']:>3} {r['reference_ms']:>9.3f}  {r['kernel_ms']:>7.3f} "
              f"{r['speedup']:>6.1f}x" + (f"   (bare numpy {r['numpy_ms']:.3f})" if "numpy_ms" in r else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load_average": load, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
