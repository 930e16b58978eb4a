"""Images per second of exported BNNs (packed runner) against the training model's eval forward.

    PYTHONPATH=. python benchmarks/bench_inference.py [--json PATH] [--models vgg_small,resnet20] [--width 1.0] [--quick]
        [--node-by-node]

VGG-Small and ResNet-20 (method ``bnn``, 32x32x3 inputs, 10 classes) are built with random weights
and random batch-norm statistics (negative gammas included), exported with
``refbnn.inference.export_model`` and run by ``InferenceModel`` at batch 1 and 64 with 1 and 2
kernel threads. The baseline is the same training model's eval-mode forward in NumPy (binary layers
on the ``"numpy"`` backend: im2col and a float32 BLAS GEMM, BLAS threads as the environment sets
them; with threadpoolctl installed they are limited to the kernel thread count, on both sides, since
the exported model's float layers (the stem, the head) run the same NumPy ops). Before timing,
the logits of the two are compared. Timings are the best of short repeats; the load average is
printed, since a shared machine changes every number here. ``--node-by-node`` also times the
runner without its fused plan (``InferenceModel(fuse=False)``, the graph's nodes one by one in
NCHW), to show what the plan gains under the same load. Needs the compiled kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - reported in the output
    threadpool_limits = None

from refbnn.inference import InferenceModel, export_model
from refbnn.kernels import kernel_paths
from refbnn.methods import LayerFactory, get_method
from refbnn.models import build_model

TARGET_RATIO_BATCH64 = 8.0


def best_time(f, budget=1.0, min_repeats=3):
    """Best per-call time over repeats within about ``budget`` seconds (at least ``min_repeats``)."""
    t0 = time.perf_counter()
    f()
    first = time.perf_counter() - t0
    best = first
    repeats = max(min_repeats, min(50, int(budget / max(first, 1e-6))))
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def random_model(name, width, seed=0):
    rng = np.random.default_rng(seed)
    factory = LayerFactory(get_method("bnn"), rng=rng, backend="numpy")
    model = build_model(name, factory, (3, 32, 32), 10, width)
    for _, m in model.modules():
        if "running_var" in m.buffers:
            c = m.params["gamma"].size
            m.params["gamma"][:] = rng.choice([-1.0, 0.5, 1.0, 2.0], c)
            m.params["beta"][:] = rng.normal(size=c)
            m.buffers["running_mean"][:] = rng.normal(size=c) * 2
            m.buffers["running_var"][:] = rng.uniform(0.5, 4.0, size=c)
    return model.eval()


class _Limit:
    def __init__(self, threads):
        self.ctx = threadpool_limits(threads) if threadpool_limits is not None else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def run(models, width, batches, threads, budget, node_by_node=False):
    rows = []
    for name in models:
        model = random_model(name, width)
        graph = export_model(model, (3, 32, 32), 10)
        rng = np.random.default_rng(1)
        for batch in batches:
            x = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
            ref, _ = model.forward(x)
            for nt in threads:
                im = InferenceModel(graph, threads=nt)
                out = im.forward(x)
                err = float(np.abs(out - ref).max())
                agree = float((out.argmax(1) == ref.argmax(1)).mean())
                with _Limit(nt):   # both sides: the float layers' BLAS calls get the same thread count
                    t_numpy = best_time(lambda model=model, x=x: model.forward(x), budget)
                    t_packed = best_time(lambda im=im, x=x: im.forward(x), budget)
                    if node_by_node:
                        nodes = InferenceModel(graph, threads=nt, fuse=False)
                        # the same logits bit for bit (under the same BLAS threads: OpenBLAS's float GEMMs
                        # of the stem and head may round differently with another thread count)
                        assert np.array_equal(nodes.forward(x), im.forward(x))
                        t_nodes = best_time(lambda nodes=nodes, x=x: nodes.forward(x), budget)
                rows.append({"model": name, "width": width, "batch": batch, "threads": nt,
                             "packed_images_per_second": batch / t_packed, "numpy_images_per_second": batch / t_numpy,
                             "ratio": t_numpy / t_packed, "max_abs_logit_difference": err,
                             "prediction_agreement": agree,
                             "blas_threads": nt if threadpool_limits is not None else "environment"})
                r = rows[-1]
                if node_by_node:
                    r["node_by_node_images_per_second"] = batch / t_nodes
                print(f"{name:10s} batch {batch:3d} threads {nt}: packed {r['packed_images_per_second']:9.1f} img/s, "
                      f"numpy {r['numpy_images_per_second']:8.1f} img/s, ratio {r['ratio']:6.1f}x "
                      f"(max |logit diff| {err:.1e}, agreement {agree:.3f})"
                      + (f"; node by node {batch / t_nodes:9.1f} img/s" if node_by_node else ""), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--models", default="vgg_small,resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per timing")
    p.add_argument("--quick", action="store_true", help="width 0.25, short budget (a smoke run)")
    p.add_argument("--node-by-node", action="store_true", help="also time the runner without its fused plan")
    args = p.parse_args(argv)
    width, budget = (0.25, 0.2) if args.quick else (args.width, args.budget)
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} "
          f"(a shared machine: every figure depends on the load); kernel path {kernel_paths().get('active')}; "
          f"BLAS threads {'limited to the kernel threads' if threadpool_limits else 'as the environment sets them'}")
    rows = run(args.models.split(","), width, (1, 64), (1, 2), budget, args.node_by_node)
    nbn = args.node_by_node
    print(f"\n| model | batch | threads | packed img/s | NumPy img/s | ratio |{' node by node img/s |' if nbn else ''}"
          f"  (target >= {TARGET_RATIO_BATCH64}x at batch 64)\n|---|---|---|---|---|---|{'---|' if nbn else ''}")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['packed_images_per_second']:.1f} | "
              f"{r['numpy_images_per_second']:.1f} | {r['ratio']:.1f}x |"
              + (f" {r['node_by_node_images_per_second']:.1f} |" if nbn else ""))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average_before": load, "load_average_after": os.getloadavg(), "width": width,
                       "kernel_paths": kernel_paths(), "target_ratio_batch64": TARGET_RATIO_BATCH64, "rows": rows},
                      f, indent=2)


if __name__ == "__main__":
    main()
