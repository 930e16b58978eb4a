"""Command line: ``refbnn train``, ``refbnn crosscheck``, ``refbnn info``, ``refbnn summary``, ``refbnn plot``,
``refbnn compare``, ``refbnn export``, ``refbnn infer`` (also ``python -m refbnn ...``)."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import traceback
import warnings

import numpy as np

from . import __version__, crosscheck, kernels
from .conventions import PRESETS
from .data import DATASETS
from .device import DEVICES, device_module, gpu_unavailable
from .methods import METHODS
from .models import MODELS
from .optim import OPTIMIZER_NAMES
from .params import parse_params, parse_value
from .schedules import LR_SCHEDULES
from .train import DEFAULT_EPOCHS, DEFAULT_MODEL, RANGES, TrainConfig, train

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
TRACEBACK_ENV = "REFBNN_TRACEBACK"  # set to 1 to see the traceback behind a one-line error


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), naming the option."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _get_values(self, action, arg_strings):
        # argparse drops a lone '--' even from "--opt=--" and then hands the option [] unconverted; read it
        # as the value it is, so the option's type checks it
        if action.nargs is None and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)


def _ranged(name: str):
    """An argparse type for the numeric setting ``name`` of :data:`refbnn.train.RANGES`: parses, and
    refuses values outside the range (NaN and infinities included) with the range in the message."""
    allowed = RANGES[name]

    def parse(text: str):
        try:
            value = allowed.kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {allowed.describe()}, got {text!r}") from None
        try:
            return allowed.check(name, value)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected {allowed.describe()}, got {text!r}") from None

    parse.__name__ = allowed.kind.__name__  # argparse names the type in "invalid <type> value"
    return parse


def _tolerance(text: str) -> float:
    """--rtol/--atol: a finite number >= 0 (NaN would pass every tensor, a negative one fail identical ones)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _path(text: str) -> str:
    """An argparse type for a path: not empty (an empty --out or --metrics-json would write nothing)."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a non-empty path, got {text!r}")
    return text


TRAIN_EPILOG = """exit status: 0 trained (and wrote --out / --metrics-json), 1 the run failed (diverged, out of
memory, a write failed; the message says why), 2 bad input: an option, a file or a setting (the message
names it), 130 interrupted. Errors are one line on stderr; REFBNN_TRACEBACK=1 adds the traceback."""


PARAM_HELP = ("override a method parameter (repeatable), e.g. T_min=1e-3, clip_value=1.2, "
              "weight_quantizer=stochastic_sign; see refbnn/methods.py. VALUE none is None, a value in "
              "quotes is that string: input.scale=\"'none'\" is the string 'none'")


def _add_data_model_options(p):
    """The data set and model options, shared by refbnn train and refbnn compare."""
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", type=_path, default=None,
                   help="directory with the MNIST IDX or CIFAR-10 binary files")
    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help=f"default per data set: {DEFAULT_MODEL}")
    p.add_argument("--width", type=_ranged("width"), default=1.0,
                   help=f"channel/width multiplier of the model ({RANGES['width'].describe()})")


def _add_training_options(p, param_help=PARAM_HELP, epochs_help=f"default per data set: {DEFAULT_EPOCHS}"):
    """The options of one training run (method parameters, convention, epochs, optimizer, learning rate),
    shared by refbnn train and refbnn compare; :func:`_run_settings` reads them back."""
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help=param_help)
    p.add_argument("--convention", default="paper", choices=sorted(PRESETS),
                   help="paper or official-code conventions (sign(0), padding, statistics, schedule clock)")
    p.add_argument("--epochs", type=_ranged("epochs"), default=None, help=epochs_help)
    p.add_argument("--batch-size", type=_ranged("batch_size"), default=64)
    p.add_argument("--lr", type=_ranged("lr"), default=None, help="base learning rate (default: the method's)")
    p.add_argument("--optimizer", default=None, choices=sorted(OPTIMIZER_NAMES),
                   help="default: the method's; bop: Bop for the binary weights, Adam for the rest")
    p.add_argument("--bop-threshold", type=_ranged("bop_threshold"), default=1e-8, help="Bop's flip threshold")
    p.add_argument("--bop-gamma", type=_ranged("bop_gamma"), default=1e-4,
                   help="Bop's gradient moving-average rate, in (0, 1]")
    p.add_argument("--weight-decay", type=_ranged("weight_decay"), default=None, help="default: the method's")
    p.add_argument("--lr-schedule", default="cosine", choices=sorted(LR_SCHEDULES))
    p.add_argument("--warmup-epochs", type=_ranged("warmup_epochs"), default=0, help="at most --epochs")
    p.add_argument("--backend", default="auto", choices=("auto", "cython", "numpy"),
                   help="auto/cython: the packed kernels and the compiled float ops (docs/training-speed.md); "
                        "numpy: the NumPy reference everywhere (the specification; slower)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="cpu: NumPy arrays; gpu: the model and the data on the GPU as CuPy arrays (needs "
                        "`pip install 'refbnn[gpu]'` and a CUDA device; `refbnn info` says whether it can run)")


# TrainConfig fields set by _add_data_model_options and _add_training_options (--param aside)
RUN_SETTINGS = ("dataset", "data_dir", "model", "width", "convention", "epochs", "batch_size", "lr", "optimizer",
                "bop_threshold", "bop_gamma", "weight_decay", "lr_schedule", "warmup_epochs", "backend", "device")


def _run_settings(args) -> dict:
    """The TrainConfig fields given by the shared options."""
    return {name: getattr(args, name) for name in RUN_SETTINGS}


def _add_train(sub):
    p = sub.add_parser("train", help="train a (binary) network; with no options, the main job on the digits data",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_model_options(p)
    p.add_argument("--method", default="recu", choices=list(METHODS), help="quantization method")
    _add_training_options(p)
    p.add_argument("--seed", type=_ranged("seed"), default=0, help=RANGES["seed"].describe())
    p.add_argument("--out", type=_path, default=None,
                   help="directory for checkpoint.npz (written after every epoch)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz, bit-exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/checkpoint.npz of an earlier run (without --resume or --overwrite, an "
                        "existing checkpoint is an error)")
    p.add_argument("--metrics-json", type=_path, default=None, help="write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_param(text: str):
    """``KEY=VALUE`` -> (key, value), read as ``refbnn crosscheck --param`` reads it (an int, a float,
    true/false, none, or else a string)."""
    ((key, value),) = parse_params([text]).items()
    return key, value


def _check_kernel_path():
    """$REFBNN_KERNEL_PATH naming a path that is unknown, not compiled or not supported by this CPU is an
    error before training, not in the middle of the first epoch."""
    if "cython" not in kernels.available_backends():
        return
    try:
        kernels.compiled().resolve_path()
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def cmd_train(args) -> int:
    params = parse_params(args.param)  # refuses a name given twice
    _check_kernel_path()
    cfg = TrainConfig(**_run_settings(args), method=args.method, method_params=params or None, seed=args.seed,
                      out=args.out, resume=args.resume, overwrite=args.overwrite, metrics_json=args.metrics_json,
                      progress=not args.no_progress)
    with warnings.catch_warnings():  # overflow on the way to a divergence: reported as one line instead
        warnings.simplefilter("ignore", RuntimeWarning)
        m = train(cfg)
    print(f"{m['method']} / {m['model']} / {m['dataset']}: test accuracy {100 * m['test_accuracy']:.2f} % "
          f"after {m['epochs']} epochs in {m['seconds']:.1f} s "
          f"({m['binary_parameters']} of {m['parameters']} parameters binary)")
    if args.metrics_json:
        print(f"metrics written to {args.metrics_json}")
    return 0


CROSSCHECK_EXAMPLES = """examples:
  refbnn crosscheck mine.npz --method bnn --convention official         # a binary conv/linear layer
  refbnn crosscheck mine.npz --method bnn --convention paper --part input   # the input quantizer alone
  refbnn crosscheck larq.npz --input-quantizer ste_sign --kernel-quantizer ste_sign --padding same
  refbnn crosscheck q.npz --quantizer ste_sign --param clip_value=1.25
  refbnn crosscheck tau.npz --schedule recu_tau --convention official   # epoch, epochs, tau_min, tau_max, tau
  refbnn crosscheck --export refs/ --method bnn --convention official --dtype float32
exit status: 0 every tensor agrees, 1 some tensor differs, 2 anything else: bad input, a file that cannot be
read or written, an error (one line on stderr saying what; REFBNN_TRACEBACK=1 adds the traceback)"""


def _add_crosscheck(sub):
    p = sub.add_parser("crosscheck", help="compare your implementation with refbnn on a reference bundle (.npz)",
                       description="Run refbnn on a bundle's inputs and compare each expected output and gradient "
                       "it holds (out, grad_x, grad_weight, ...; gradients of L = sum(out * grad_out)); or, with "
                       "--export, write bundles computed by refbnn.", epilog=CROSSCHECK_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", help="the .npz bundle (with --export: optional, supplies the inputs)")
    what = p.add_argument_group("what to check against (exactly one)")
    what.add_argument("--method", help=f"a method ({', '.join(METHODS)}); needs --convention")
    what.add_argument("--input-quantizer", help="Larq-style layer: the input quantizer (a quantizer name or none)")
    what.add_argument("--kernel-quantizer", help="Larq-style layer: the kernel quantizer (a quantizer name or none)")
    what.add_argument("--quantizer", help="one quantizer: the bundle holds x, grad_out, out, grad_x")
    what.add_argument("--schedule", help="a schedule (recu_tau, irnet_tk, ...; --list): the bundle holds epoch "
                      "(vector), epochs, parameters, values; a quantizer schedule needs --convention (its clock)")
    p.add_argument("--convention", choices=sorted(PRESETS),
                   help="paper or official-code conventions (sign(0), padding, statistics, schedule clock); "
                   "required with --method and with a quantizer --schedule")
    p.add_argument("--part", choices=crosscheck.PARTS, help="layer (default), or only the method's weight or input "
                   "quantizer applied to x")
    p.add_argument("--layer", choices=("conv2d", "linear", "dense"), help="default: from the weight's rank")
    p.add_argument("--layout", choices=crosscheck.LAYOUTS, help="nchw: PyTorch (x NCHW, weight OIHW / (out, in)); "
                   "nhwc: TensorFlow/Larq (x NHWC, kernel HWIO / (in, out)). Default: nhwc for Larq-style layers, "
                   "else nchw")
    p.add_argument("--padding", type=parse_value, help="valid, same (Larq/TensorFlow spelling) or an int")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a setting, quantizer or method parameter the bundle does not hold (repeatable); prefix "
                   "weight_quantizer./kernel_quantizer./input_quantizer. for one quantizer. VALUE: none is None, "
                   "true/false, a number, else a string; a value in quotes is always that string: "
                   "input_quantizer.scale=\"'none'\" is the string 'none' (a bundle's 0-d string: 'none' is None, "
                   "\"'none'\" the string)")
    p.add_argument("--rtol", type=_tolerance, default=None, help="relative tolerance, finite >= 0 (default: 1e-10 "
                   "for float64 bundles, 1e-5 for float32)")
    p.add_argument("--atol", type=_tolerance, default=None, help="absolute tolerance, finite >= 0 (default: 1e-12 / "
                   "1e-6)")
    p.add_argument("--json", type=_path, default=None, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--diagnose", action="store_true", help="when tensors differ, re-run the check with nearby "
                   "choices changed (convention fields, estimators, layout) and say which makes each tensor pass")
    p.add_argument("--list", action="store_true", help="list the known methods, quantizers and schedules")
    ex = p.add_argument_group("export (bundles computed by refbnn, to test your implementation against)")
    ex.add_argument("--export", type=_path, default=None, metavar="DIR",
                    help="write bundles into DIR instead of checking one")
    ex.add_argument("--overwrite", action="store_true", help="let --export replace existing files")
    ex.add_argument("--seed", type=_ranged("seed"), default=0)
    ex.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ex.add_argument("--x-shape", default=None, help="e.g. 2,3,5,5 (in the chosen layout)")
    ex.add_argument("--weight-shape", default=None, help="e.g. 4,3,3,3 (OIHW; HWIO with --layout nhwc)")
    ex.add_argument("--no-bias", action="store_true", help="export a layer without bias")


def cmd_crosscheck(args) -> int:
    if args.list:
        print("methods:    " + ", ".join(m for m in METHODS if METHODS[m].variant_of is None))
        print("variants:   " + ", ".join(f"{m} (of {METHODS[m].variant_of})" for m in METHODS
                                         if METHODS[m].variant_of is not None))
        print("quantizers: " + ", ".join(sorted(crosscheck.QUANTIZERS)))
        print("schedules:  " + ", ".join(sorted(crosscheck.schedule_table())))
        print("conventions: " + ", ".join(sorted(PRESETS)))
        return 0
    request = dict(method=args.method, convention=args.convention, part=args.part, layer=args.layer,
                   layout=args.layout, padding=args.padding, quantizer=args.quantizer,
                   input_quantizer=args.input_quantizer, kernel_quantizer=args.kernel_quantizer,
                   schedule=args.schedule, params=parse_params(args.param), require_convention=True)
    if args.export:
        if args.json:
            raise ValueError("--json writes the report of a check; --export checks nothing")
        paths = crosscheck.export_bundles(args.export, **request, seed=args.seed, dtype=args.dtype,
                                          x_shape=args.x_shape, weight_shape=args.weight_shape,
                                          bias=not args.no_bias, bundle=args.bundle, overwrite=args.overwrite)
        for path in paths:
            print(f"wrote {path}")
        return 0
    if args.overwrite:
        raise ValueError("--overwrite applies to --export")
    if args.bundle is None:
        raise ValueError("give the bundle to check (BUNDLE.npz), or --export DIR to write bundles")
    if args.json:
        _check_report_path(args.json, args.bundle)
    report = crosscheck.crosscheck(args.bundle, **request, rtol=args.rtol, atol=args.atol,
                                   diagnose=args.diagnose)
    print(report.table())
    if args.json:
        _write_text_atomic(args.json, report.to_json())
    return 0 if report.passed else 1


def _check_report_path(path, bundle):
    """--json: a file (new, or a regular file to replace) in an existing directory, and not the bundle."""
    if os.path.isdir(path):
        raise ValueError(f"--json {path}: is a directory; expected a file name")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"--json {path}: exists and is not a regular file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"--json {path}: {parent} is not a directory")
    if os.path.exists(path) and os.path.exists(bundle) and os.path.samefile(path, bundle):
        raise ValueError(f"--json {path}: is the bundle being checked; choose another name for the report")


def _write_text_atomic(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def info() -> dict:
    """Versions, the kernel backends, and the compiled kernels' SIMD paths: which are compiled in,
    which this CPU supports, which one runs and how it was chosen ($REFBNN_KERNEL_PATH, else measured
    on this machine or read from the cache of an earlier measurement, see
    refbnn/kernels/dispatch.py), the measured times per path, OpenMP threads; whether the compiled
    float ops of the training step are built (docs/training-speed.md)."""
    try:
        fast = kernels.float_ops("cython", np.zeros(1, np.float32))
        float_ops = f"built ({fast.__name__}): backend auto/cython trains with them, numpy with the reference"
    except ImportError as exc:
        float_ops = f"not available ({exc})"
    return {"refbnn": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "kernel_backends": kernels.available_backends(),
            "unavailable_backends": kernels.backend_errors(), "kernel_paths": kernels.kernel_paths(),
            "compiled_float_ops": float_ops, "gpu": _gpu_info()}


def _gpu_info() -> str:
    """The GPU path's state: the device CuPy would use, or why it cannot run."""
    why = gpu_unavailable()
    if why is not None:
        return f"unavailable: {why}"
    import cupy  # noqa: PLC0415 - available, as just checked

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (f"available: CuPy {cupy.__version__}, device {cupy.cuda.Device().id} {name} "
            f"(sm_{props['major']}{props['minor']}); `refbnn train --device gpu` trains there")


def cmd_info(args) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_tree(data)
    return 0


def _print_tree(data, indent=""):
    """Nested dicts as indented ``key: value`` lines (a measured time per path, per kernel)."""
    for k, v in data.items():
        if isinstance(v, dict) and v:
            print(f"{indent}{k}:")
            _print_tree(v, indent + "  ")
        else:
            print(f"{indent}{k}: {v}")


# ---- inference: refbnn export / refbnn infer (refbnn/inference) --------------------------------------
def _add_inference(sub):
    p = sub.add_parser("export", help="turn a training checkpoint into a packed inference model (.npz)")
    p.add_argument("checkpoint", help="checkpoint.npz written by refbnn train --out DIR")
    p.add_argument("--out", required=True, metavar="MODEL.npz", help="the inference model file to write")
    p = sub.add_parser("infer", help="run an exported model with the bit-packed kernels: accuracy, images/s")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="directory with the MNIST IDX or CIFAR-10 binary files")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: OpenMP's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")


def cmd_export(args) -> int:
    from .inference import export_checkpoint

    graph = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {args.out}: {len(graph.nodes)} nodes, packed weights {graph.packed_weight_bytes()} bytes, "
          f"float arrays {graph.float_array_bytes()} bytes")
    return 0


def cmd_infer(args) -> int:
    import time

    from .data import load_dataset
    from .inference import load_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    model = load_model(args.model, threads=args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    t0 = time.perf_counter()
    pred = model.predict(data.x_test, args.batch_size)
    seconds = time.perf_counter() - t0
    result = {"accuracy": float((pred == data.y_test).mean()), "images_per_second": len(pred) / seconds,
              "n_images": len(pred), "seconds": seconds, "threads": args.threads, "model": args.model,
              "dataset": args.dataset}
    print(f"{args.model} on {args.dataset}: accuracy {100 * result['accuracy']:.2f} % on {result['n_images']} "
          f"images, {result['images_per_second']:.0f} images/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


# ---- refbnn summary: a Larq-style table of a model's parameters, memory and MACs (refbnn/summary.py) --
def _add_summary(sub):
    p = sub.add_parser("summary", help="per-layer and total parameters by precision, memory and MACs of a model")
    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="default: the data set's default model, as for refbnn train")
    p.add_argument("--width", type=_ranged("width"), default=1.0,
                   help=f"channel/width multiplier of the model ({RANGES['width'].describe()})")
    p.add_argument("--method", default="recu", choices=list(METHODS), help="quantization method")
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="sets the input shape")
    p.add_argument("--convention", default="paper", choices=sorted(PRESETS))
    p.add_argument("--json", default=None, type=_path, metavar="PATH", help="also write the summary as JSON")


def cmd_summary(args) -> int:
    from .summary import build_summary_model, summarize

    model_name = args.model or DEFAULT_MODEL.get(args.dataset, "mlp")
    model, input_shape = build_summary_model(model_name, args.method, args.dataset, args.width, args.convention)
    result = summarize(model, input_shape)
    print(f"{model_name} (width {args.width:g}, method {args.method}, convention {args.convention}) on {args.dataset}")
    print(result.table())
    if args.json:
        data = {"model": model_name, "width": args.width, "method": args.method, "dataset": args.dataset,
                "convention": args.convention, **result.as_dict()}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0


# ---- refbnn compare: methods x seeds as Dask tasks, a markdown report (refbnn/compare.py) ----------
COMPARE_EPILOG = """examples:
  refbnn compare                                     # bnn,xnor,bireal,irnet,recu,bnnpp x 3 seeds on digits
  refbnn compare --methods bnn,recu --seeds 5 --epochs 10 --out report-small/
  refbnn compare --param bnnpp:beta_end=50           # a parameter of one method (KEY=VALUE: of every method)
  refbnn compare --scheduler tcp://10.0.0.5:8786     # an existing cluster: dask scheduler / dask worker
exit status: 0 every run finished, 1 some run failed (the report names it and its error; the others are
reported), 2 bad input (a method name, an option, --param, the output directory, a scheduler that does not
answer), 130 interrupted. Writes OUT/README.md, OUT/learning_curves.png, OUT/runs/<method>-seed<k>.json."""


class _CompareHelp(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in the help, and the epilog's examples as written."""


def _percent(text: str) -> float:
    """--target: a percentage in (0, 100]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage > 0 and <= 100, got {text!r}")
    return value


def _add_compare(sub):
    from .compare import DEFAULT_METHODS, DEFAULT_SEEDS

    p = sub.add_parser("compare", help="train one network with several methods and seeds (Dask tasks); write a "
                       "report: table, learning curves, metrics JSON", epilog=COMPARE_EPILOG,
                       description="Train the same network with each method and seed as independent Dask tasks "
                       "(a local cluster of one single-thread worker process per core, or --scheduler), and "
                       "write OUT/README.md: per method the mean ± std test accuracy, the epochs to 90 % test "
                       "accuracy, the final weight flip ratio and the seconds per run.",
                       formatter_class=_CompareHelp)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M1,M2,...",
                   help=f"methods to compare (known: {', '.join(METHODS)})")
    p.add_argument("--seeds", type=_ranged("epochs"), default=DEFAULT_SEEDS, metavar="N",
                   help="runs per method, with seeds 0 .. N-1")
    p.add_argument("--out", type=_path, default="report", help="the report directory")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier compare in OUT")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://host:8786; without it, a local cluster on this "
                   "machine's cores")
    p.add_argument("--workers", type=_ranged("epochs"), default=None, metavar="N",
                   help="worker processes of the local cluster (without it: the cores, at most the number of "
                   "runs)")
    p.add_argument("--target", type=_percent, default=90.0, metavar="PERCENT",
                   help="the test accuracy whose first epoch the table reports")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_model_options(p)
    _add_training_options(
        p, param_help="override a method parameter (repeatable): KEY=VALUE for every method (each must accept "
        "it), METHOD:KEY=VALUE for one, e.g. bnnpp:beta_end=50; values as for refbnn train --param",
        epochs_help=f"epochs of every run (default per data set, as refbnn train: {DEFAULT_EPOCHS}; the "
        "default comparison on digits takes about 2 minutes on 2 cores)")


def cmd_compare(args) -> int:
    import shlex

    from .compare import compare, parse_methods, plan_runs, table_markdown

    methods = parse_methods(args.methods)
    runs = plan_runs(methods, args.seeds, _run_settings(args), parse_params(args.param))
    _check_kernel_path()
    device_module(args.device)  # a GPU that cannot be used is one error now, not a failed row per run
    argv = getattr(args, "argv", None)
    command = "refbnn " + shlex.join(argv) if argv is not None else None
    result = compare(runs, args.out, scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress,
                     command=command, overwrite=args.overwrite, target=args.target / 100)
    print(table_markdown(result["rows"]))
    print(f"{len(runs)} runs in {result['seconds']:.0f} s on {result['workers']} workers; report written to "
          f"{os.path.join(args.out, 'README.md')}")
    if result["failed"]:
        print(f"refbnn compare: {result['failed']} of {len(runs)} runs failed (see the table)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ---- refbnn plot: figures of quantizers, schedules, weights and runs (refbnn/plots.py, needs matplotlib) --
PLOT_EPILOG = """figures are written to files (PNG unless --out names another format matplotlib knows); matplotlib
is needed (pip install 'refbnn[plot]'), a display is not. exit status: 0 written, 2 bad input (an unknown name
lists the known ones; a file that is not a checkpoint or metrics file), 1 a failure."""


def _add_plot(sub):
    p = sub.add_parser("plot", help="figures: a quantizer's estimator, a schedule, a checkpoint's weights, a run's "
                       "curves (needs matplotlib)", epilog=PLOT_EPILOG)
    kinds = p.add_subparsers(dest="plot_kind", required=True, metavar="{quantizer,schedule,weights,training}")
    q = kinds.add_parser("quantizer", help="forward and estimator curves of a quantizer (several schedule points "
                         "for a scheduled one)", epilog=PLOT_EPILOG)
    q.add_argument("name", help="a quantizer of the catalogue (refbnn crosscheck --list)")
    q.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor parameter of the quantizer or of its schedule (repeatable), e.g. "
                        "clip_value=1.2, T_min=1e-3; a state value (tau=0.9) draws that one state")
    q.add_argument("--xlim", type=_positive_float, default=3.0, metavar="A",
                   help="the element-wise quantizers' x range [-A, A]")
    q.add_argument("--out", type=_path, default=None, help="default: quantizer_NAME.png")
    s = kinds.add_parser("schedule", help="a method's or schedule's values per epoch (and learning rate)",
                         epilog=PLOT_EPILOG)
    s.add_argument("name", help="a method (its quantizer schedule and learning rate), a quantizer schedule "
                   "(irnet_tk, recu_tau, bnnpp_beta, pc_mu) or a learning-rate schedule (cosine, linear, step, "
                   "constant)")
    s.add_argument("--epochs", type=_ranged("epochs"), required=True)
    s.add_argument("--convention", default="paper", choices=sorted(PRESETS), help="its clock is drawn solid")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a schedule parameter (repeatable), e.g. tau_end=0.95, T_min=1e-3, milestones=30,60")
    s.add_argument("--lr-schedule", default="cosine", choices=sorted(LR_SCHEDULES),
                   help="a method's learning-rate schedule")
    s.add_argument("--lr", type=_ranged("lr"), default=None,
                   help="base learning rate (default: the method's; 1 for a learning-rate schedule)")
    s.add_argument("--out", type=_path, default=None, help="default: schedule_NAME.png")
    w = kinds.add_parser("weights", help="histogram of a binary layer's standardized latent weights with ReCU's "
                         "clamp points, and the tail's sign flips over training", epilog=PLOT_EPILOG)
    w.add_argument("checkpoint", help="checkpoint.npz written by refbnn train --out DIR")
    w.add_argument("--layer", default=None, help="a binary layer's name (default: the first binary layer)")
    w.add_argument("--out", type=_path, default=None, help="default: CHECKPOINT_weights_LAYER.png next to it")
    t = kinds.add_parser("training", help="loss, accuracy and flip-ratio curves of a run", epilog=PLOT_EPILOG)
    t.add_argument("run", help="a metrics JSON (refbnn train --metrics-json), a checkpoint, or a run directory")
    t.add_argument("--out", type=_path, default=None,
                   help="default: RUN_DIR/training.png, or NAME_training.png next to a file")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def cmd_plot(args) -> int:
    from . import plots

    if args.plot_kind == "quantizer":
        data = plots.plot_quantizer(args.name, args.out or f"quantizer_{args.name}.png",
                                    params=parse_params(args.param), x_range=(-args.xlim, args.xlim))
    elif args.plot_kind == "schedule":
        data = plots.plot_schedule(args.name, args.epochs, args.out or f"schedule_{args.name}.png",
                                   convention=args.convention, params=parse_params(args.param),
                                   lr_schedule=args.lr_schedule, base_lr=args.lr)
    elif args.plot_kind == "weights":
        data = plots.plot_weights(args.checkpoint, args.out, layer=args.layer)
    else:
        data = plots.plot_training(args.run, args.out)
    print(f"wrote {data['out']}")
    return 0


def main(argv=None) -> int:
    parser = _Parser(prog="refbnn", description="refbnn: the reference for binary neural networks")
    parser.add_argument("--version", action="version", version=f"refbnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_crosscheck(sub)
    _add_inference(sub)
    _add_summary(sub)
    _add_plot(sub)
    _add_compare(sub)
    p = sub.add_parser("info", help="versions and the kernel backends that are available")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    command = {"train": cmd_train, "crosscheck": cmd_crosscheck, "info": cmd_info, "export": cmd_export,
               "infer": cmd_infer, "summary": cmd_summary, "plot": cmd_plot,
               "compare": cmd_compare}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"refbnn {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and a documented exit status
        status = exit_status(args.command, exc)
        what = "error" if status == EXIT_BAD_INPUT else "failed"
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        print(f"refbnn {args.command}: {what}: {one_line(exc)}", file=sys.stderr)
        return status


def one_line(exc: BaseException) -> str:
    """An error as one line: the message (with the exception's type where the message alone would not say
    what happened)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return f"out of memory ({text})" if text else "out of memory"
    if isinstance(exc, (ValueError, TypeError, OSError, ImportError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# an OSError of these kinds names a path the user gave (a missing file, a file where a directory is needed,
# no permission): bad input. Others (a full disk, an I/O error) are failures of the run.
_BAD_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def exit_status(command: str, exc: BaseException) -> int:
    """The exit status for an error: 2 bad input (ValueError, TypeError, a missing optional package, a path
    that does not exist or cannot be used); else 1, a failure of the run, except for crosscheck, where 1 means
    "some tensor differs" and so every error is 2."""
    if command == "crosscheck":
        return EXIT_BAD_INPUT
    if isinstance(exc, (ValueError, TypeError, ImportError, _BAD_PATH_ERRORS)):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
