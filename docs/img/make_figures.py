"""Regenerate the figures of docs/plots.md from short real runs on the digits data.

    python docs/img/make_figures.py            # trains into a temporary directory (about 30 s on 2 cores)
    python docs/img/make_figures.py --runs R   # keeps the runs in R (and reuses finished ones)

Run it from the repository root with refbnn importable (installed, or PYTHONPATH=.).

Needs matplotlib (pip install 'refbnn[plot]'). Every figure goes through the same functions as
``refbnn plot`` (refbnn.plots); the runs are ``refbnn train`` runs (refbnn.train.train).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from refbnn import plots
from refbnn.train import TrainConfig, train

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN_RUN = dict(method="recu", model="vgg_small", width=0.25, epochs=15, seed=0)   # weights / training figures
CURVE_RUNS = [(m, s) for m in ("bnn", "irnet", "recu") for s in (0, 1)]   # the learning-curve figure
CURVE_EPOCHS, CURVE_WIDTH = 12, 0.5


def run(root, name, **cfg):
    """A finished run in root/name (trained now unless its metrics are there): (directory, metrics)."""
    out = os.path.join(root, name)
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            return out, json.load(f)
    print(f"training {name} ...", flush=True)
    metrics = train(TrainConfig(out=out, metrics_json=metrics_path, overwrite=True, progress=False, **cfg),
                    log=lambda *a, **k: None)
    return out, metrics


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=None, help="directory for the runs (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs or tmp
        os.makedirs(root, exist_ok=True)

        def img(name):
            return os.path.join(HERE, name)

        written = [
            plots.plot_quantizer("ede", img("quantizer_ede.png"))["out"],
            plots.plot_quantizer("recu_weight", img("quantizer_recu_weight.png"))["out"],
            plots.plot_schedule("recu", 30, img("schedule_recu.png"))["out"],
        ]
        main_dir, _ = run(root, "recu", **MAIN_RUN)
        written.append(plots.plot_weights(os.path.join(main_dir, "checkpoint.npz"), img("weights.png"))["out"])
        written.append(plots.plot_training(main_dir, img("training.png"))["out"])
        runs = [run(root, f"{m}_seed{s}", method=m, seed=s, epochs=CURVE_EPOCHS, width=CURVE_WIDTH)[1]
                for m, s in CURVE_RUNS]
        written.append(plots.plot_learning_curves(
            runs, img("learning_curves.png"),
            f"digits MLP (width {CURVE_WIDTH}), {CURVE_EPOCHS} epochs, 2 seeds per method")["out"])
    for path in written:
        print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} KB)")


if __name__ == "__main__":
    main()
