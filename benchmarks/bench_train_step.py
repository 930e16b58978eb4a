"""One training step of the ResNet-20 BNN (batch 128, 3x32x32 inputs, 10 classes): refbnn against
the same network in PyTorch CPU eager, in one run.

    python benchmarks/bench_train_step.py [--json PATH] [--batch 128] [--steps 5] [--threads 2]

It also prints where refbnn's step spends its time (``profile``): the forward and backward of each
kind of leaf layer (binary conv products, their quantizers, batch norm, hardtanh, ...), the loss,
the optimizer and the block glue (residual adds, shortcuts: the rest of the step), as a share of
the step, from a separate instrumented step (each timed call costs about a microsecond).

refbnn: ``build_model("resnet20", LayerFactory(get_method("bnn")), (3, 32, 32), 10)`` with the
packed kernels (backend "auto") and with the NumPy reference (backend "numpy"); a step is
zero_grad, forward, softmax cross-entropy, backward, Adam step, latent weight clip. PyTorch: the
same architecture (Bi-Real double-skip blocks, option-A shortcuts, sign with sign(0) = +1, the
clipped straight-through estimator on activations and the identity one on weights, zero padding
of the binarized input, hardtanh, BatchNorm1d head) and the same step. Skipped if torch is absent
(``pip install torch==2.13.0`` installs a CPU build here). Times are the best of ``--steps`` steps
after a warm-up step; both use ``--threads`` threads (torch.set_num_threads, OpenMP/BLAS).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from benchtime import best_time


def best_step_time(step, steps):
    """The best of ``steps`` timed calls of ``step``, after a warm-up call."""
    return best_time(step, steps)


class OpTimer:
    """Wall time per (op kind, forward | backward), measured by wrapping the forward and backward of
    every leaf layer and of every quantizer of a model (instance attributes: the model's classes are
    untouched). A binary layer's time excludes its quantizers' time (listed on their own)."""

    def __init__(self):
        self.seconds = {}
        self._stack = []

    def _wrap(self, obj, attr, key):
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            self._stack.append(0.0)
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            total = time.perf_counter() - t0
            nested = self._stack.pop()
            self.seconds[key] = self.seconds.get(key, 0.0) + total - nested
            if self._stack:
                self._stack[-1] += total
            return out

        setattr(obj, attr, timed)

    def instrument(self, model):
        wrapped = set()  # a quantizer instance shared by layers is wrapped once
        for _, m in model.modules():
            if m.children:
                continue
            kind = type(m).__name__
            self._wrap(m, "forward", (kind, "forward"))
            self._wrap(m, "backward", (kind, "backward"))
            for qname in ("input_quantizer", "weight_quantizer"):
                q = getattr(m, qname, None)
                if q is not None and id(q) not in wrapped:
                    wrapped.add(id(q))
                    label = f"{qname} ({type(q).__name__})"
                    self._wrap(q, "forward", (label, "forward"))
                    self._wrap(q, "backward", (label, "backward"))

    def time(self, key, f, *args):
        t0 = time.perf_counter()
        out = f(*args)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
        return out


def refbnn_step_time(batch, steps, backend, seed=0, profile=False):
    """(best step time, parameters[, profile]): ``profile`` adds one more, instrumented step and
    returns its shares: ``{"op forward|backward": fraction of that step}`` with the glue as "other"."""
    from refbnn import ops
    from refbnn.methods import LayerFactory, get_method
    from refbnn.models import build_model
    from refbnn.optim import Adam, WeightClip, no_decay_bn_and_bias, param_groups
    from refbnn.train import train_step

    method = get_method("bnn")
    model = build_model("resnet20", LayerFactory(method, rng=seed, backend=backend), (3, 32, 32), 10)
    opt = Adam(param_groups(model, 0.0, no_decay_bn_and_bias), lr=method.lr)
    clip = WeightClip(method.latent_clip)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        return train_step(model, opt, clip, x, y)[0]

    best = best_step_time(step, steps)
    if not profile:
        return best, model.num_parameters()
    timer = OpTimer()
    timer.instrument(model)

    def timed_step():
        timer.time(("zero_grad", ""), model.zero_grad)
        logits, cache = model.forward(x)
        loss, lcache = timer.time(("loss", "forward"), ops.softmax_cross_entropy_forward, logits, y)
        dlogits = timer.time(("loss", "backward"), ops.softmax_cross_entropy_backward, lcache)
        model.backward(dlogits, cache)
        timer.time(("optimizer (Adam + clip)", ""), lambda: (opt.step(), clip.apply(model)))

    t0 = time.perf_counter()
    timed_step()
    total = time.perf_counter() - t0
    shares = {" ".join(k).strip(): v / total for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])}
    shares["other (block glue: residual adds, shortcuts, Python)"] = max(0.0, 1.0 - sum(shares.values()))
    return best, model.num_parameters(), {"step_s": total, "shares": shares}


def torch_step_time(batch, steps, threads, seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(threads)

    class SignSTE(torch.autograd.Function):
        """sign with sign(0) = +1; backward: dy * 1[|x| <= clip] (clip None: identity)."""

        @staticmethod
        def forward(ctx, x, clip):
            ctx.save_for_backward(x)
            ctx.clip = clip
            return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

        @staticmethod
        def backward(ctx, dy):
            (x,) = ctx.saved_tensors
            return (dy if ctx.clip is None else dy * (x.abs() <= ctx.clip).to(dy.dtype)), None

    class BinaryConv(nn.Conv2d):
        def forward(self, x):
            return nn.functional.conv2d(SignSTE.apply(x, 1.0), SignSTE.apply(self.weight, None), None,
                                        self.stride, self.padding)

    class ShortcutA(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            extra = cout - cin
            self.stride, self.pad = stride, (extra // 2, extra - extra // 2)

        def forward(self, x):
            x = x[:, :, ::self.stride, ::self.stride]
            return nn.functional.pad(x, (0, 0, 0, 0, *self.pad))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = BinaryConv(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = BinaryConv(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = ShortcutA(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            h = nn.functional.hardtanh(self.bn1(self.conv1(x)) + self.short(x))
            return nn.functional.hardtanh(self.bn2(self.conv2(h)) + h)

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardtanh()]
    prev = 16
    for stage, c in enumerate((16, 32, 64)):
        for b in range(3):
            layers.append(Block(prev, c, 2 if stage > 0 and b == 0 else 1))
            prev = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(prev), nn.Linear(prev, 10)]
    model = nn.Sequential(*layers).train()
    binary = [m.weight for m in model.modules() if isinstance(m, BinaryConv)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for w in binary:
                w.clamp_(-1.0, 1.0)
        return float(loss.detach())

    return best_step_time(step, steps), sum(p.numel() for p in model.parameters()), torch.__version__


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    res = {"batch": args.batch, "threads": args.threads, "loadavg_before": os.getloadavg()}
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads)
    except ImportError:
        limiter = None
        res["note"] = "threadpoolctl not installed: BLAS/OpenMP threads not set"
    from refbnn.kernels import kernel_paths

    res["kernels"] = kernel_paths()
    res["refbnn_s"], res["parameters"], res["profile"] = refbnn_step_time(args.batch, args.steps, "auto",
                                                                          profile=True)
    res["refbnn_numpy_backend_s"], _ = refbnn_step_time(args.batch, args.steps, "numpy")
    try:
        res["torch_s"], torch_params, res["torch"] = torch_step_time(args.batch, args.steps, args.threads)
        assert torch_params == res["parameters"], (torch_params, res["parameters"])
        res["refbnn_vs_torch"] = res["refbnn_s"] / res["torch_s"]
    except ImportError:
        res["torch_s"] = None
        res["note"] = "torch is not installed: install it with `pip install torch==2.13.0` for the comparison"
    if limiter is not None:
        limiter.unregister()
    res["loadavg_after"] = os.getloadavg()
    print(f"ResNet-20 BNN training step, batch {args.batch}, {args.threads} threads, "
          f"{res['parameters']} parameters; load average {res['loadavg_before']} -> {res['loadavg_after']}")
    print(f"  refbnn (packed kernels, {res['kernels'].get('active', 'not built')}): {1e3 * res['refbnn_s']:8.1f} ms")
    print(f"  refbnn (NumPy reference backend):            {1e3 * res['refbnn_numpy_backend_s']:8.1f} ms")
    if res["torch_s"] is not None:
        print(f"  PyTorch {res['torch']} CPU eager:               {1e3 * res['torch_s']:8.1f} ms")
        print(f"  refbnn / PyTorch: {res['refbnn_vs_torch']:.2f}x the time "
              f"({'no slower' if res['refbnn_vs_torch'] <= 1 else 'slower'} than PyTorch)")
    else:
        print(f"  PyTorch: skipped ({res['note']})")
    prof = res["profile"]
    print(f"  where refbnn's step goes (packed kernels; one instrumented step, {1e3 * prof['step_s']:.1f} ms):")
    for name, share in prof["shares"].items():
        if share >= 0.005:
            print(f"    {100 * share:5.1f} %  {1e3 * share * prof['step_s']:7.1f} ms  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
