"""Command line: ``refbnn train``, ``refbnn info`` (also ``python -m refbnn ...``)."""
from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np

from . import __version__, kernels
from .conventions import PRESETS
from .data import DATASETS
from .methods import METHODS
from .models import MODELS
from .optim import OPTIMIZERS
from .schedules import LR_SCHEDULES
from .train import DEFAULT_EPOCHS, DEFAULT_MODEL, TrainConfig, train


def _add_train(sub):
    p = sub.add_parser("train", help="train a (binary) network; with no options, the main job on the digits data",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="directory with the MNIST IDX or CIFAR-10 binary files")
    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help=f"default per data set: {DEFAULT_MODEL}")
    p.add_argument("--width", type=float, default=1.0, help="channel/width multiplier of the model")
    p.add_argument("--method", default="bnn", choices=list(METHODS), help="quantization method")
    p.add_argument("--convention", default="paper", choices=sorted(PRESETS),
                   help="paper or official-code conventions (sign(0), padding, statistics, schedule clock)")
    p.add_argument("--epochs", type=int, default=None, help=f"default per data set: {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: the method's)")
    p.add_argument("--optimizer", default=None, choices=sorted(OPTIMIZERS), help="default: the method's")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the method's")
    p.add_argument("--lr-schedule", default="cosine", choices=sorted(LR_SCHEDULES))
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory for checkpoint.npz (written after every epoch)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz, bit-exactly")
    p.add_argument("--metrics-json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_train(args) -> int:
    cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model, width=args.width,
                      method=args.method, convention=args.convention, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
                      warmup_epochs=args.warmup_epochs, seed=args.seed, out=args.out, resume=args.resume,
                      metrics_json=args.metrics_json, progress=not args.no_progress)
    m = train(cfg)
    print(f"{m['method']} / {m['model']} / {m['dataset']}: test accuracy {100 * m['test_accuracy']:.2f} % "
          f"after {m['epochs']} epochs in {m['seconds']:.1f} s "
          f"({m['binary_parameters']} of {m['parameters']} parameters binary)")
    if args.metrics_json:
        print(f"metrics written to {args.metrics_json}")
    return 0


def info() -> dict:
    """Versions, the kernel backends, and the compiled kernels' SIMD paths: which are compiled in,
    which this CPU supports, which one runs (the fastest, or $REFBNN_KERNEL_PATH), OpenMP threads."""
    return {"refbnn": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "kernel_backends": kernels.available_backends(),
            "unavailable_backends": kernels.backend_errors(), "kernel_paths": kernels.kernel_paths()}


def cmd_info(args) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            if isinstance(v, dict) and v:
                print(f"{k}:")
                for kk, vv in v.items():
                    print(f"  {kk}: {vv}")
            else:
                print(f"{k}: {v}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="refbnn", description="refbnn: the reference for binary neural networks")
    parser.add_argument("--version", action="version", version=f"refbnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("info", help="versions and the kernel backends that are available")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        return {"train": cmd_train, "info": cmd_info}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"refbnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
