"""Speed of the GPU path against cuBLAS and against the CPU, in one run (needs a CUDA GPU and CuPy).

    python benchmarks/bench_gpu.py [--json PATH] [--shapes 64,64,4096 ...] [--repeats 20] [--quick]
                                   [--parts gemm conv train] [--batch 128] [--steps 5]

Three parts, each verified before it is timed:

- ``gemm``: the CuPy backend's packed XNOR-popcount GEMM (``refbnn.kernels.cupy_backend.bgemm`` on
  the words of its ``pack_bits``) against cuBLAS sgemm (CuPy's ``matmul`` on the same +-1 float32
  matrices), at 4096^3 and at the other shapes of benchmarks/bench_kernels.py: time per call, TOP/s
  (2*M*N*K/t, the same count for both) and sgemm time / bgemm time. ``bgemm`` must equal the
  integers of the float product exactly. If the backend's ``bgemm`` takes ``tensor_cores=``, the
  plain kernel is called with ``tensor_cores=False`` and the tensor-core variant (``True``) is
  verified and timed too.
- ``conv``: ``bconv2d`` on the ResNet-18 layer (3x3, 64 -> 64, 56x56, zero padding 1) at batch 1 and
  64 against a float convolution on the GPU. CuPy 14 has no cuDNN binding (it was removed in CuPy
  v14, docs.cupy.dev "Upgrade Guide"), so the float convolution is refbnn's own im2col + cuBLAS
  matmul (``refbnn.ops.im2col``, ``refbnn.ops.conv.conv2d_cols_matmul``: what the engine runs for a
  float convolution on CuPy arrays); the table names it. cuDNN's implicit-GEMM or Winograd
  convolution would be faster than that baseline, so the ratio is not a comparison with cuDNN.
  Also timed: the cuBLAS product alone (columns built beforehand) and the binary layer's full path
  (float NCHW +-1 in: packing included, float NCHW out).
- ``train``: one ResNet-20 BNN training step (method ``bnn``, batch 128, Adam, latent weight clip;
  built as benchmarks/bench_train_step.py builds it) on the GPU (``model.to("gpu")``, the batch
  uploaded once) against the same step on the CPU (NumPy arrays, the compiled kernels), in the same
  run. Both start from the same weights; their first losses are compared (float sums in another
  order, and signs of values near zero may differ, so within a tolerance, not bit for bit).

Timing: GPU kernels with CUDA events around ``inner`` back-to-back calls (enough for about a
millisecond; warm-up calls first, which also compile the NVRTC kernels), the best of ``--repeats``
rounds, per call; the calls' value checks are deferred to the end of each round, as in a training
step (``refbnn.checks.deferred_checks``). A call's time includes its Python argument checks and
launch, so for small shapes it is the launch overhead rather than the kernel. A training step is wall time from its
start to ``cupy.cuda.Device().synchronize()`` after it (the CPU step: its wall time), the best of
``--steps`` after a warm-up step.

Without a usable GPU (CuPy missing, no CUDA device or driver) the script prints one line saying why
(``refbnn.device.gpu_unavailable``) and exits with status 2.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchtime, when imported by the tests
from benchtime import best_time  # noqa: E402

# bench_kernels.py's shapes (tests/test_bench_gpu.py checks that the two lists agree)
SHAPES = [(64, 64, 4096), (256, 256, 2304), (1024, 1024, 1024), (4096, 4096, 4096), (3136, 64, 576),
          (196, 256, 2304)]
BIG = (4096, 4096, 4096)
CONV_BATCHES = (1, 64)
PARTS = ("gemm", "conv", "train")
EXIT_NO_GPU = 2


# ---- pure helpers (tested without a GPU) ---------------------------------------------------------

def parse_shape(text: str) -> tuple[int, int, int]:
    """"M,N,K" -> (M, N, K), each a positive integer (argparse type: ValueError -> a usage error)."""
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected M,N,K (three integers), got {text!r}")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected M,N,K (three integers), got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape


def select_shapes(shapes, quick: bool):
    """The GEMM shapes to run: ``shapes`` (default :data:`SHAPES`), without 4096^3 when ``quick``."""
    shapes = list(SHAPES if not shapes else shapes)
    return [s for s in shapes if not (quick and tuple(s) == BIG)]


def tops(ops: float, seconds: float | None) -> float | None:
    """Tera-operations per second (None when there is no time)."""
    return None if seconds is None else ops / seconds / 1e12


def ratio(slow: float | None, fast: float | None) -> float | None:
    """``slow / fast`` (how many times faster ``fast`` is), None when either is missing."""
    if slow is None or fast is None or fast <= 0:
        return None
    return slow / fast


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` has a parameter called ``name`` (a named one, not only ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def no_gpu_message(why: str) -> str:
    return f"bench_gpu.py: no GPU benchmark run: {why}"


def _f(v, fmt):
    return "-" if v is None else fmt.format(v)


def gemm_table(rows) -> list[str]:
    """The GEMM rows as text lines: times in microseconds, TOP/s, sgemm / bgemm."""
    tc = any(r.get("bgemm_tc_s") is not None for r in rows)
    head = (f"{'M,N,K':>17} | {'sgemm us':>10} {'TOP/s':>7} | {'bgemm us':>10} {'TOP/s':>7} {'x sgemm':>8}"
            + (f" | {'bgemm TC us':>11} {'TOP/s':>7} {'x sgemm':>8}" if tc else "")
            + f" | {'pack A us':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{','.join(map(str, r['shape'])):>17} | {_f(us(r['sgemm_s']), '{:10.1f}')} "
                f"{_f(r['sgemm_tops'], '{:7.2f}')} | {_f(us(r['bgemm_s']), '{:10.1f}')} "
                f"{_f(r['bgemm_tops'], '{:7.2f}')} {_f(r['bgemm_vs_sgemm'], '{:8.2f}')}")
        if tc:
            line += (f" | {_f(us(r.get('bgemm_tc_s')), '{:11.1f}')} {_f(r.get('bgemm_tc_tops'), '{:7.2f}')} "
                     f"{_f(r.get('bgemm_tc_vs_sgemm'), '{:8.2f}')}")
        lines.append(line + f" | {_f(us(r['pack_a_s']), '{:9.1f}')}")
    lines += [f"  {','.join(map(str, r['shape']))}: {r['bgemm_tc_note']}" for r in rows if r.get("bgemm_tc_note")]
    return lines


def conv_table(rows) -> list[str]:
    """The convolution rows as text lines: times in milliseconds, TOP/s, float conv / bconv2d."""
    lines = []
    for method in dict.fromkeys(r["float_conv"] for r in rows):
        lines.append(f"float convolution: {method}")
    head = (f"{'batch':>5} | {'float conv ms':>13} {'TOP/s':>7} | {'sgemm only ms':>13} | {'bconv2d ms':>10} "
            f"{'TOP/s':>7} {'x float':>7} | {'layer path ms':>13} {'x float':>7}")
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['batch']:>5} | {1e3 * r['float_conv_s']:13.3f} {r['float_conv_tops']:7.2f} | "
                     f"{1e3 * r['sgemm_only_s']:13.3f} | {1e3 * r['bconv2d_s']:10.3f} {r['bconv2d_tops']:7.2f} "
                     f"{r['bconv2d_vs_float']:7.2f} | {1e3 * r['layer_path_s']:13.3f} "
                     f"{r['layer_path_vs_float']:7.2f}")
    return lines


def train_lines(r) -> list[str]:
    """The training-step comparison as text lines."""
    return [f"ResNet-20 BNN training step, batch {r['batch']}, {r['parameters']} parameters (best of {r['steps']})",
            f"  GPU: {1e3 * r['gpu_s']:9.1f} ms",
            f"  CPU: {1e3 * r['cpu_s']:9.1f} ms   ({r['cpu_kernels']})",
            f"  CPU / GPU: {r['cpu_vs_gpu']:.1f}x; first-step losses {r['loss_gpu']:.6f} (GPU) vs "
            f"{r['loss_cpu']:.6f} (CPU), relative difference {r['loss_rel_diff']:.1e}"]


def us(seconds):
    return None if seconds is None else 1e6 * seconds


# ---- timers --------------------------------------------------------------------------------------

def cuda_timer(cupy, target=1e-3, warmup=2):
    """A timer ``(f, repeats) -> seconds per call`` with CUDA events: ``warmup`` calls, then the best
    of ``repeats`` rounds of ``inner`` back-to-back calls between two events (``inner`` chosen so
    that a round takes about ``target`` seconds). Each round runs in a
    :func:`refbnn.checks.deferred_checks` block, as a training step does: the value checks of the
    calls (pack_bits' flag of non-+-1 or NaN input) are answered together after the end event, so
    no call waits for the device in the timed region."""
    from refbnn.checks import deferred_checks  # noqa: PLC0415

    def timer(f, repeats):
        for _ in range(warmup):
            f()
        cupy.cuda.Device().synchronize()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()

        def run(inner):
            with deferred_checks():
                start.record()
                for _ in range(inner):
                    f()
                end.record()
                end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end) / 1e3 / inner

        inner = max(1, min(1000, round(target / max(run(1), 1e-7))))
        return min(run(inner) for _ in range(repeats))
    return timer


def host_timer(f, repeats):
    """The host's timer (benchtime.best_time: a warm-up call, the best of ``repeats``)."""
    return best_time(f, repeats)


# ---- the parts -----------------------------------------------------------------------------------

def signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def check_equal(got, want, what):
    """Exact agreement of two arrays of one module (integers of a float product); AssertionError
    naming ``what`` and how many entries differ."""
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {want.shape}")
    bad = int((got != want).sum())
    if bad:
        raise AssertionError(f"{what}: {bad} of {want.size} entries differ from the float product")


def bench_gemm(xp, kern, timer, shape, repeats, rng):
    """One GEMM row: cuBLAS sgemm (``xp.matmul``), ``kern.bgemm`` and packing A, all on arrays of
    ``xp``; bgemm verified first. When ``kern.bgemm`` takes ``tensor_cores=``, the plain kernel is
    called with ``tensor_cores=False`` and the tensor-core variant (``True``) is verified and timed
    as well; a device that cannot run it (ValueError) leaves a note in the row instead."""
    m, n, k = shape
    a, b = xp.asarray(signs(rng, (m, k))), xp.asarray(signs(rng, (n, k)))
    bt = b.T
    c = xp.matmul(a, bt)
    aw, bw = kern.pack_bits(a), kern.pack_bits(b)
    tc = accepts(kern.bgemm, "tensor_cores")

    def plain():
        return kern.bgemm(aw, bw, k, tensor_cores=False) if tc else kern.bgemm(aw, bw, k)

    check_equal(plain(), c, f"bgemm {shape}")
    ops = 2 * m * n * k
    row = {"shape": [m, n, k],
           "sgemm_s": timer(lambda: xp.matmul(a, bt), repeats),
           "bgemm_s": timer(plain, repeats),
           "pack_a_s": timer(lambda: kern.pack_bits(a), repeats),
           "bgemm_tc_s": None}
    if tc:
        try:
            got = kern.bgemm(aw, bw, k, tensor_cores=True)
        except ValueError as exc:             # e.g. a device older than the variant needs
            row["bgemm_tc_note"] = f"tensor_cores=True refused: {exc}"
        else:
            check_equal(got, c, f"bgemm tensor_cores=True {shape}")
            row["bgemm_tc_s"] = timer(lambda: kern.bgemm(aw, bw, k, tensor_cores=True), repeats)
    for name in ("sgemm", "bgemm", "bgemm_tc"):
        row[f"{name}_tops"] = tops(ops, row[f"{name}_s"])
    row["bgemm_vs_sgemm"] = ratio(row["sgemm_s"], row["bgemm_s"])
    row["bgemm_tc_vs_sgemm"] = ratio(row["sgemm_s"], row["bgemm_tc_s"])
    return row


FLOAT_CONV = "im2col + cuBLAS matmul (refbnn.ops; CuPy 14 has no cuDNN)"


def bench_conv(xp, kern, timer, batch, repeats, rng, channels=64, size=56):
    """The ResNet-18 layer (3x3, ``channels`` -> ``channels``, ``size`` x ``size``, zero padding 1) at
    ``batch``: the float convolution (im2col + matmul), the matmul alone, ``bconv2d`` on packed
    words (NHWC in, float NHWC out) and the layer path (float NCHW in: pack + bconv2d, NCHW out);
    bconv2d verified against the float convolution first."""
    from refbnn.ops.conv import conv2d_cols_matmul  # noqa: PLC0415
    from refbnn.ops.im2col import im2col  # noqa: PLC0415

    c = channels
    x = xp.asarray(signs(rng, (batch, c, size, size)))
    w = xp.asarray(signs(rng, (c, c, 3, 3)))
    geometry = ((1, 1), (1, 1), (1, 1))

    def float_conv():
        return conv2d_cols_matmul(im2col(x, 3, 3, *geometry), w, 1)

    cols = im2col(x, 3, 3, *geometry)
    ref = float_conv()
    xw, ww = kern.pack_bits(x, axis=1), kern.pack_bits(w, axis=1)      # NHWC words, OHWI words

    def layer_path():
        return kern.bconv2d(kern.pack_bits(x, axis=1), ww, c, 1, 1, pad_value=0.0, output="float", layout="nchw")

    check_equal(layer_path(), ref, f"bconv2d (batch {batch}, NCHW)")
    check_equal(kern.bconv2d(xw, ww, c, 1, 1, pad_value=0.0, output="float").transpose(0, 3, 1, 2), ref,
                f"bconv2d (batch {batch}, NHWC)")
    ops = 2 * batch * size * size * c * c * 9
    row = {"batch": batch, "channels": c, "size": size, "float_conv": FLOAT_CONV,
           "float_conv_s": timer(float_conv, repeats),
           "sgemm_only_s": timer(lambda: conv2d_cols_matmul(cols, w, 1), repeats),
           "bconv2d_s": timer(lambda: kern.bconv2d(xw, ww, c, 1, 1, pad_value=0.0, output="float"), repeats),
           "layer_path_s": timer(layer_path, repeats)}
    for name in ("float_conv", "bconv2d"):
        row[f"{name}_tops"] = tops(ops, row[f"{name}_s"])
    row["bconv2d_vs_float"] = ratio(row["float_conv_s"], row["bconv2d_s"])
    row["layer_path_vs_float"] = ratio(row["float_conv_s"], row["layer_path_s"])
    return row


def train_step_fn(batch, device, seed=0):
    """(step, parameter count): one ResNet-20 BNN training step on a fixed batch, the model, the
    optimizer state and the batch on ``device`` (an array module; NumPy = the CPU). Built as
    benchmarks/bench_train_step.py builds it; the weights and the batch depend on ``seed`` only."""
    from refbnn.device import move  # noqa: PLC0415
    from refbnn.methods import LayerFactory, get_method  # noqa: PLC0415
    from refbnn.models import build_model  # noqa: PLC0415
    from refbnn.optim import Adam, WeightClip, no_decay_bn_and_bias, param_groups  # noqa: PLC0415
    from refbnn.train import train_step  # noqa: PLC0415

    method = get_method("bnn")
    model = build_model("resnet20", LayerFactory(method, rng=seed, backend="auto"), (3, 32, 32), 10)
    opt = Adam(param_groups(model, 0.0, no_decay_bn_and_bias), lr=method.lr)
    clip = WeightClip(method.latent_clip)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if device is not np:
        model.to(device)
        opt.to(device)
        x, y = move(x, device), move(y, device)

    def step():
        return train_step(model, opt, clip, x, y)[0]

    return step, model.num_parameters()


LOSS_RTOL = 0.05   # the first losses of the two devices: same weights and batch, float sums reordered


def bench_train(device, sync, batch, steps, seed=0):
    """The training step on ``device`` (an array module; ``sync()`` waits for it) against the same
    step on the CPU; the first steps' losses must agree within LOSS_RTOL."""
    from refbnn.kernels import kernel_paths  # noqa: PLC0415

    gpu_step, params = train_step_fn(batch, device, seed)
    cpu_step, _ = train_step_fn(batch, np, seed)
    loss_gpu, loss_cpu = float(gpu_step()), float(cpu_step())
    rel = abs(loss_gpu - loss_cpu) / max(abs(loss_cpu), 1e-12)
    if not (math.isfinite(loss_gpu) and rel <= LOSS_RTOL):
        raise AssertionError(f"training step: first loss {loss_gpu} on the device, {loss_cpu} on the CPU "
                             f"(relative difference {rel:.2e} > {LOSS_RTOL})")

    def gpu():
        gpu_step()
        sync()

    r = {"batch": batch, "steps": steps, "parameters": params, "loss_gpu": loss_gpu, "loss_cpu": loss_cpu,
         "loss_rel_diff": rel, "gpu_s": best_time(gpu, steps), "cpu_s": best_time(cpu_step, steps)}
    paths = kernel_paths()
    r["cpu_kernels"] = f"kernels {paths.get('active', 'not built')}, {os.cpu_count()} cores"
    r["cpu_vs_gpu"] = ratio(r["cpu_s"], r["gpu_s"])
    return r


# ---- the run -------------------------------------------------------------------------------------

def gpu_description(cupy) -> dict:
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {"name": name, "device": dev.id, "sm": f"sm_{props['major']}{props['minor']}",
            "memory_gib": props["totalGlobalMem"] / 2**30, "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "driver": cupy.cuda.runtime.driverGetVersion()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--shapes", nargs="*", type=parse_shape, help="M,N,K triples (default: bench_kernels.py's six)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per GPU measurement; the best is kept")
    p.add_argument("--quick", action="store_true", help="skip 4096^3 and the batch-64 layer; 3 training steps unless --steps")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="which parts to run")
    p.add_argument("--batch", type=int, default=128, help="training-step batch size")
    p.add_argument("--steps", type=int, help="timed training steps after a warm-up step (default 5, 3 with --quick)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.quick else 5
    for name in ("repeats", "batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    from refbnn.device import gpu_unavailable  # noqa: PLC0415

    why = gpu_unavailable()
    if why is not None:
        print(no_gpu_message(why), file=sys.stderr)
        return EXIT_NO_GPU
    import cupy  # noqa: PLC0415

    from refbnn.kernels import cupy_backend as kern  # noqa: PLC0415
    from refbnn.machine import cpu_model  # noqa: PLC0415

    rng = np.random.default_rng(0)
    timer = cuda_timer(cupy)
    res = {"gpu": gpu_description(cupy), "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
           "repeats": args.repeats, "loadavg_before": os.getloadavg(), "CUPY_TF32": os.environ.get("CUPY_TF32"),
           "tensor_cores_variant": accepts(kern.bgemm, "tensor_cores"),
           # what bgemm runs when not told (the training step's binary products), where the backend says
           "tensor_cores_default": kern.use_tensor_cores() if hasattr(kern, "use_tensor_cores") else None}
    g = res["gpu"]
    print(f"GPU: {g['name']} ({g['sm']}, {g['memory_gib']:.0f} GiB), CuPy {g['cupy']}, CUDA runtime "
          f"{g['cuda_runtime']}, driver {g['driver']}; CPU: {res['cpu']}, {res['cores']} cores; load average "
          f"{' '.join(f'{v:.2f}' for v in res['loadavg_before'])}")
    def save():   # after each part: a failure in a later part keeps the earlier results
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)

    if res["CUPY_TF32"] not in (None, "", "0"):
        print(f"note: CUPY_TF32={res['CUPY_TF32']}: cuBLAS may compute the float32 products in TF32 (10-bit mantissa)")
    if "gemm" in args.parts:
        res["gemm"] = [bench_gemm(cupy, kern, timer, s, args.repeats, rng) for s in select_shapes(args.shapes,
                                                                                                   args.quick)]
        print("\nbgemm (packed XNOR-popcount) vs cuBLAS sgemm on the same +-1 data; TOP/s = 2MNK/t"
              + ("; bgemm: tensor_cores=False, bgemm TC: tensor_cores=True" if res["tensor_cores_variant"]
                 else "; the backend has no tensor-core variant"))
        print("\n".join(gemm_table(res["gemm"])))
        save()
    if "conv" in args.parts:
        batches = CONV_BATCHES[:1] if args.quick else CONV_BATCHES
        res["conv"] = [bench_conv(cupy, kern, timer, b, args.repeats, rng) for b in batches]
        print("\nResNet-18 layer 3x3 64->64 56x56, zero padding 1")
        print("\n".join(conv_table(res["conv"])))
        save()
    if "train" in args.parts:
        res["train"] = bench_train(cupy, cupy.cuda.Device().synchronize, args.batch, args.steps)
        print()
        print("\n".join(train_lines(res["train"])))
        if res["tensor_cores_default"] is not None:
            print(f"  (the GPU step's bgemm calls run with tensor_cores={res['tensor_cores_default']})")
    res["loadavg_after"] = os.getloadavg()
    save()
    if args.json:
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    status = main()
    if status == 0:
        print(f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(status)
