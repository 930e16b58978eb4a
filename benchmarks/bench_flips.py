"""What the flip-ratio tracking (refbnn.flips.FlipTracker) adds to a training epoch of ``refbnn train``.

    python benchmarks/bench_flips.py [--json PATH] [--steps 15]

For each setting (the digits MLP with ReCU, BNN and IR-Net; ResNet-20 on digits with ReCU at width
0.25 and 1), on the model ``refbnn train`` builds: the best of ``--steps`` timed training steps
(batch 64: zero_grad, forward, loss, backward, optimizer step), the best of as many
``FlipTracker.after_step`` calls (one per training step) and of ``start_epoch`` calls (one per
epoch), and the overhead per epoch, (steps * after_step + start_epoch) / (steps * step), with the
digits epoch's 23 steps. Best-of times are steadier than whole epochs on a shared machine; BLAS
runs single-threaded here (set before NumPy is imported) so that a busy machine does not
oversubscribe its threads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from benchtime import best_time  # noqa: E402 - after the thread settings

SETTINGS = [("mlp", "recu", 1.0), ("mlp", "bnn", 1.0), ("mlp", "irnet", 1.0), ("resnet20", "recu", 0.25),
            ("resnet20", "recu", 1.0)]




def measure(model_name, method, width, n, batch=64):
    from refbnn import ops
    from refbnn.data import load_dataset
    from refbnn.flips import FlipTracker
    from refbnn.train import TrainConfig, build

    data = load_dataset("digits")
    c = TrainConfig(dataset="digits", model=model_name, method=method, width=width, batch_size=batch).resolved()
    _, model, optimizer = build(c, data.input_shape, data.num_classes)
    x, y = data.x_train[:batch], data.y_train[:batch]

    def step():
        model.zero_grad()
        logits, cache = model.forward(x)
        _, lcache = ops.softmax_cross_entropy_forward(logits, y)
        model.backward(ops.softmax_cross_entropy_backward(lcache), cache)
        optimizer.step()

    tracker = FlipTracker(model)
    tracker.start_epoch()
    steps = -(-len(data.x_train) // batch)
    row = {"model": model_name, "method": method, "width": width, "binary_weights": sum(tracker.sizes),
           "steps_per_epoch": steps, "step_s": best_time(step, n), "after_step_s": best_time(tracker.after_step, n),
           "start_epoch_s": best_time(tracker.start_epoch, max(3, n // 3))}
    row["overhead_pct"] = 100 * (steps * row["after_step_s"] + row["start_epoch_s"]) / (steps * row["step_s"])
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--steps", type=int, default=15)
    args = p.parse_args(argv)
    rows = []
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, BLAS threads 1")
    for setting in SETTINGS:
        r = measure(*setting, args.steps)
        rows.append(r)
        print(f"{r['model']:9s} {r['method']:5s} width {r['width']:<5g} step {r['step_s'] * 1e3:7.2f} ms, "
              f"after_step {r['after_step_s'] * 1e3:5.2f} ms, start_epoch {r['start_epoch_s'] * 1e3:5.1f} ms: "
              f"+{r['overhead_pct']:.1f} % per epoch", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
