"""``refbnn compare``: train one network with several methods and seeds, as independent Dask tasks, and
write a report (a markdown table, learning curves, every run's metrics JSON).

Each (method, seed) run is one task, ``run_one(config)``, that calls :func:`refbnn.train.train` with
the progress bar off and returns the metrics dict that ``refbnn train --metrics-json`` writes. Runs
share nothing: a run's numbers depend only on its settings and seed (``refbnn.train`` draws every
random number from the seed) and on the software that computes them, so the same seed gives the same
metrics on whichever worker runs it, for one version of refbnn, NumPy and its BLAS, one BLAS thread
(below) and one kind of CPU.

Where the tasks run (``dask.distributed``, https://distributed.dask.org):

- by default a ``LocalCluster`` on this machine: one worker process per core (``processes=True``, one
  thread each), so runs do not share an interpreter lock;
- ``scheduler="tcp://host:port"``: an existing cluster (``dask scheduler`` plus ``dask worker`` processes
  on any machines that can import the same refbnn). The scheduler is contacted first, with a short
  timeout; an address nobody answers at is an error before any run starts.

Each run computes with one thread (the compiled kernels' OpenMP team and NumPy's BLAS), so N workers
use N cores and do not oversubscribe the machine: the task sets ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` to 1 before refbnn's kernels load in the worker (Dask's
nanny sets the same variables before it starts a worker, ``distributed.nanny.pre-spawn-environ``), and
limits the libraries already loaded with ``threadpoolctl`` where it is installed. One thread is also what
makes the numbers reproducible: the compiled kernels give the same bits for every thread count, but
NumPy's BLAS (OpenBLAS) splits a float product's sums differently with two threads, and a digits run's
accuracy then differs from the one-thread run's.

Results come back through the scheduler in memory; the report is written by the process that runs the
command: ``OUT/runs/<method>-seed<k>.json`` as each run finishes, then ``OUT/README.md`` and
``OUT/learning_curves.png``. A run that fails (it diverged, a worker died) is recorded with its error
message; the others go on.

Summary statistics (``summarize``): per method, over the seeds whose run finished, the mean and the
sample standard deviation (ddof = 1) of the final test accuracy; the first epoch (1-based) whose test
accuracy reaches a target (``TARGET_ACCURACY``, 0.9, unless given), averaged over the seeds that reach
it; the last epoch's weight flip ratio (the metrics' ``flip_ratio_mean[-1]``: the share of binary
weights whose sign changes per optimizer step, averaged over the epoch, as Larq's flip-ratio metric,
larq/larq ``larq/metrics.py``); and the mean of the runs' training seconds.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import time
import warnings
from dataclasses import dataclass, field

from .methods import METHODS
from .machine import cpu_model
from .train import DEFAULT_EPOCHS, TrainConfig, write_json_atomic

DEFAULT_METHODS = ("bnn", "xnor", "bireal", "irnet", "recu", "bnnpp")
DEFAULT_SEEDS = 3
TARGET_ACCURACY = 0.9
CONNECT_TIMEOUT_S = 5        # contacting --scheduler
WORKER_WAIT_S = 60           # a scheduler without workers: how long to wait for the first one
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MALLOC_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
REPORT_FILES = ("README.md", "learning_curves.png", "runs")


class CompareError(ValueError):
    """Bad input to a comparison (a method name, a --param, the scheduler, the output directory):
    reported before any run starts."""


@dataclass
class Run:
    """One (method, seed) run: its TrainConfig settings, and once finished its metrics or error."""
    method: str
    seed: int
    config: dict
    metrics: dict | None = None
    error: str | None = None
    worker: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"


# ---- planning: every run's settings, checked before anything starts -------------------------------
def parse_methods(text: str | list) -> list[str]:
    """``"bnn,xnor"`` -> ``["bnn", "xnor"]``; an unknown or repeated name is an error listing the known ones."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    if not names or any(not n for n in names):
        raise CompareError(f"methods: expected a comma-separated list of method names, got {text!r}; "
                           f"known methods: {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise CompareError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                           f"known methods: {', '.join(METHODS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CompareError(f"methods: {', '.join(repeated)} given more than once")
    return names


def split_params(params: dict, methods: list[str]) -> dict[str, dict]:
    """``--param`` items (already parsed to {name: value}) -> {method: its parameters}. ``KEY`` applies
    to every method and must be accepted by each; ``METHOD:KEY`` to that method only (one of
    ``methods``). The values are checked by :meth:`Method.with_params` in :func:`plan_runs`."""
    out = {m: {} for m in methods}
    for name, value in params.items():
        method, sep, key = name.rpartition(":")
        if not sep:
            refusing = [m for m in methods if key not in METHODS[m].accepted_params()]
            if refusing:
                raise CompareError(f"--param {key}: not a parameter of {', '.join(refusing)}; write "
                                   f"METHOD:{key}=VALUE to set it for one method only")
            for m in methods:
                out[m][key] = value
        else:
            if method not in methods:
                raise CompareError(f"--param {name}: {method!r} is not one of the compared methods "
                                   f"({', '.join(methods)})")
            if not key:
                raise CompareError(f"--param {name}: expected METHOD:KEY=VALUE")
            if key in out[method]:
                raise CompareError(f"--param {name}: {key} given for {method} twice")
            out[method][key] = value
    return out


def plan_runs(methods: list[str], seeds: int, settings: dict, params: dict | None = None) -> list[Run]:
    """The runs, in (method, seed) order: seeds 0 .. ``seeds`` - 1 of each method, every other setting
    from ``settings`` (TrainConfig fields: dataset, model, epochs, lr, ...). Each run's settings are
    validated here (``TrainConfig.resolved``), so a bad value is an error before anything starts."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise CompareError(f"seeds: expected a positive integer (the runs use seeds 0 .. seeds - 1), got {seeds!r}")
    forbidden = {"method", "method_params", "seed", "out", "resume", "overwrite", "metrics_json", "progress"}
    if forbidden & set(settings):
        raise CompareError(f"settings: {', '.join(sorted(forbidden & set(settings)))} are set per run by compare")
    per_method = split_params(params or {}, methods)
    settings = dict(settings)
    if settings.get("epochs") is None:
        settings["epochs"] = DEFAULT_EPOCHS.get(settings.get("dataset", "digits"), 30)
    runs = []
    for method in methods:
        for seed in range(seeds):
            config = dict(settings, method=method, method_params=per_method[method] or None, seed=seed,
                          progress=False)
            try:
                TrainConfig(**config).resolved()
            except (ValueError, TypeError) as exc:
                raise CompareError(f"{method}: {exc}") from None
            runs.append(Run(method, seed, config))
    return runs


# ---- one run: the Dask task -----------------------------------------------------------------------------
def machine_info() -> dict:
    """This process's machine: host name, CPU model, cores (logical CPUs, and those this process may
    use), and the versions that decide a run's numbers."""
    import numpy as np  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count() or 1, "usable_cores": usable,
            "refbnn": __version__, "numpy": np.__version__, "python": platform.python_version(),
            "malloc_trim_threshold": os.environ.get(MALLOC_VARIABLE)}


def _one_thread():
    """Make this worker process compute with one thread: the environment variables for libraries not
    loaded yet (the compiled kernels' OpenMP in a fresh worker), threadpoolctl (when installed) for the
    BLAS already loaded. Not undone after the run: a worker running several runs at once (``--nthreads``
    > 1) must not see one run's exit raise the BLAS threads under the others, since NumPy's BLAS gives
    other float sums for another thread count."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional
    except ImportError:
        return
    threadpool_limits(limits=1)


def run_one(config: dict) -> dict:
    """Train one run (TrainConfig fields in ``config``) and return ``{"metrics": ..., "error": None,
    "worker": machine_info(), "log": [...]}``, or ``{"metrics": None, "error": "one line", ...}`` when
    the run fails. The Dask task of :func:`compare`; runnable anywhere."""
    _one_thread()  # before refbnn's kernels load in this process
    from . import kernels  # noqa: PLC0415
    from .cli import one_line  # noqa: PLC0415 - the CLI's one-line form of an error
    from .train import train  # noqa: PLC0415

    messages = []
    result = {"metrics": None, "error": None, "log": messages}
    try:
        result["worker"] = dict(machine_info(), kernel_threads=kernels.kernel_paths().get("threads"))
        with warnings.catch_warnings():  # overflow on the way to a divergence: reported as one line
            warnings.simplefilter("ignore", RuntimeWarning)
            result["metrics"] = train(TrainConfig(**dict(config, progress=False)), log=messages.append)
    except Exception as exc:  # noqa: BLE001 - a failed run is a row of the report, not a crash
        result["error"] = one_line(exc)
    result.setdefault("worker", {})
    return result


# ---- the output directory ------------------------------------------------------------------------------
def check_out(out: str, overwrite: bool = False):
    """``out`` is a directory that can be made and written, without an earlier report in it (unless
    ``overwrite``). Nothing is created."""
    if not out or "\0" in str(out):
        raise CompareError(f"out: expected a non-empty path, got {out!r}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CompareError(f"out: {out}: exists and is not a directory")
    existing = [n for n in REPORT_FILES if os.path.lexists(os.path.join(out, n))]
    if existing and not overwrite:
        raise CompareError(f"out: {out} holds an earlier report ({', '.join(existing)}); pass --overwrite to "
                           f"replace it, or choose another --out")
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise CompareError(f"out: {out}: cannot create or write there ({probe} is not a writable directory)")


def _prepare_out(out: str):
    """Make ``out``/runs; with --overwrite, remove the files of the earlier report (none stays behind)."""
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    for name in os.listdir(runs_dir):
        if name.endswith(".json"):
            os.unlink(os.path.join(runs_dir, name))
    for name in ("README.md", "learning_curves.png"):
        if os.path.isfile(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
    return runs_dir


# ---- the cluster ---------------------------------------------------------------------------------------
def check_address(address: str):
    """A scheduler address as Dask writes it: [PROTOCOL://]HOST:PORT (tcp:// when no protocol is given),
    e.g. tcp://10.0.0.5:8786; CompareError otherwise."""
    from distributed.comm.addressing import parse_address, parse_host_port  # noqa: PLC0415

    try:
        protocol, location = parse_address(address)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise CompareError(f"--scheduler {address!r}: expected a Dask scheduler address tcp://HOST:PORT, e.g. "
                           f"tcp://10.0.0.5:8786 ({exc})") from None
    if not host or not 0 < int(port) < 65536:
        raise CompareError(f"--scheduler {address!r}: expected a Dask scheduler address tcp://HOST:PORT with a host "
                           f"and a port in 1..65535")


@contextlib.contextmanager
def _client(scheduler: str | None, n_workers: int):
    """A ``distributed.Client``: to ``scheduler``, or to a new LocalCluster of ``n_workers`` single-thread
    worker processes (closed on exit)."""
    try:
        import distributed  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ImportError(f"refbnn compare runs on Dask: pip install 'refbnn[compare]' "
                          f"(dask[distributed], matplotlib) ({exc})") from None
    import dask  # noqa: PLC0415

    if scheduler is not None:
        check_address(scheduler)
        try:
            client = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address
            raise CompareError(f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT_S} s "
                               f"({' '.join(str(exc).split()) or type(exc).__name__}); start one with "
                               f"`dask scheduler` and workers with `dask worker {scheduler}`") from None
        try:
            yield client, None
        finally:
            client.close()
        return
    import logging  # noqa: PLC0415

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.update({name: 1 for name in THREAD_VARIABLES})
    # Dask's default MALLOC_TRIM_THRESHOLD_=65536 also turns off glibc's adaptive mmap threshold: every
    # array above 128 KiB is then mmap'ed and unmapped again, and a digits run takes 2.5x as long
    env.pop(MALLOC_VARIABLE, None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client, cluster
        finally:
            client.close()
    finally:
        cluster.close()


def _check_workers(client, scheduler):
    """Wait for a worker; every worker must import this refbnn version. Returns {worker address: info}."""
    from . import __version__  # noqa: PLC0415

    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except Exception:  # noqa: BLE001 - TimeoutError (its type differs between versions)
        raise CompareError(f"the Dask scheduler at {scheduler} has no workers (waited {WORKER_WAIT_S} s); start "
                           f"some with `dask worker {scheduler} --nthreads 1 --nworkers N`") from None
    try:
        infos = client.run(machine_info)
    except Exception as exc:  # noqa: BLE001 - a worker that cannot import refbnn fails to unpickle the call
        raise CompareError(f"the Dask workers of {scheduler} cannot run refbnn ({' '.join(str(exc).split())}); "
                           f"install refbnn {__version__} where they run, or start them with PYTHONPATH naming "
                           f"it") from None
    other = {w: i["refbnn"] for w, i in infos.items() if i["refbnn"] != __version__}
    if other:
        raise CompareError(f"the Dask workers run another refbnn than this one ({__version__}): "
                           + ", ".join(f"{w} has {v}" for w, v in other.items()))
    return infos


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- the comparison ------------------------------------------------------------------------------------
def compare(runs: list[Run], out: str, scheduler: str | None = None, workers: int | None = None,
            progress: bool = True, command: str | None = None, overwrite: bool = False,
            title: str | None = None, target: float = TARGET_ACCURACY) -> dict:
    """Run ``runs`` on Dask (a LocalCluster of ``workers`` processes, default one per core, or the
    cluster at ``scheduler``) and write the report into ``out``. Returns ``{"runs": runs, "rows":
    summarize(runs, target), "seconds": wall time, "machines": [...], "failed": n, "plot": the PNG or None,
    ...}``."""
    check_out(out, overwrite)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise CompareError(f"target: expected a test accuracy in (0, 1], got {target!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise CompareError(f"workers: expected a positive integer, got {workers!r}")
    if scheduler is not None and workers is not None:
        raise CompareError("--workers sizes the local cluster; with --scheduler the cluster's own workers run")
    n_workers = workers or max(1, min(usable_cores(), len(runs)))
    try:  # the learning curves are drawn after the runs: a missing matplotlib is an error before them
        import matplotlib  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ImportError(f"refbnn compare draws its learning curves with matplotlib: pip install "
                          f"'refbnn[compare]' ({exc})") from None
    t0 = time.perf_counter()
    with _client(scheduler, n_workers) as (client, cluster):
        where = scheduler or "a local cluster"
        worker_infos = _check_workers(client, where)
        runs_dir = _prepare_out(out)
        futures = {}
        for run in runs:
            futures[client.submit(run_one, run.config, pure=False, key=f"refbnn-compare-{run.name}-"
                                  f"{os.getpid()}-{time.time_ns()}")] = run
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=len(runs), desc=f"compare ({len(worker_infos)} workers)", unit="run",
                       dynamic_ncols=True)
        try:
            import distributed  # noqa: PLC0415

            for future in distributed.as_completed(list(futures), loop=client.loop):
                run = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (KilledWorker), a lost connection
                    from .cli import one_line  # noqa: PLC0415

                    result = {"metrics": None, "error": one_line(exc), "worker": {}}
                run.metrics, run.error, run.worker = result["metrics"], result["error"], result.get("worker", {})
                if run.metrics is None and run.error is None:
                    run.error = "the run returned no metrics"
                record = run.metrics if run.metrics is not None else {
                    "method": run.method, "seed": run.seed, "error": run.error, "settings": run.config}
                write_json_atomic(os.path.join(runs_dir, f"{run.name}.json"), record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{run.name} " + (f"{100 * run.metrics['test_accuracy']:.1f} %"
                                                         if run.metrics else "failed"))
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - t0
    machines = _machines(runs, worker_infos)
    rows = summarize(runs, target)
    result = {"runs": runs, "rows": rows, "seconds": seconds, "machines": machines, "target": target,
              "failed": sum(r.error is not None for r in runs), "scheduler": scheduler, "workers": len(worker_infos),
              "malloc_trim_threshold": sorted({i["malloc_trim_threshold"] for i in worker_infos.values()
                                               if i.get("malloc_trim_threshold") is not None})}
    title = title or _title(runs)
    finished = [r.metrics for r in runs if r.metrics is not None]
    result["plot"] = os.path.join(out, "learning_curves.png") if finished else None
    if finished:
        plot_runs(finished, result["plot"], title)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(report_markdown(result, command=command, title=title))
    return result


def _title(runs: list[Run]) -> str:
    c = runs[0].config
    model = TrainConfig(**runs[0].config).resolved().model
    return f"{model} (width {c.get('width', 1.0):g}) on {c.get('dataset', 'digits')}, {c['epochs']} epochs"


def _machines(runs, worker_infos) -> list[dict]:
    """The distinct machines (host, CPU, cores) that ran the runs, with how many runs each ran."""
    seen = {}
    for info in worker_infos.values():
        seen.setdefault((info["host"], info["cpu"], info["cores"]), 0)
    for r in runs:
        key = (r.worker.get("host"), r.worker.get("cpu"), r.worker.get("cores"))
        if key[0] is not None:
            seen[key] = seen.get(key, 0) + 1
    return [{"host": h, "cpu": c, "cores": n, "runs": k} for (h, c, n), k in seen.items()]


# ---- the summary ----------------------------------------------------------------------------------------
def epochs_to_reach(accuracies, target: float = TARGET_ACCURACY):
    """The first epoch (1-based) whose test accuracy is >= ``target``; None if none is."""
    for i, a in enumerate(accuracies):
        if a is not None and a >= target:
            return i + 1
    return None


def _mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def summarize(runs: list[Run], target: float = TARGET_ACCURACY) -> list[dict]:
    """Per method (in the order of ``runs``): n_runs, n_ok, accuracy mean/std (fractions), the epochs to
    ``target`` (mean over the seeds that reach it, and how many do), the final flip ratio (mean; None
    when the metrics have no ``flip_ratio_mean``), mean seconds, and the failed seeds' errors."""
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        ok = [r for r in mine if r.metrics is not None]
        row = {"method": method, "n_runs": len(mine), "n_ok": len(ok),
               "errors": {r.seed: r.error for r in mine if r.error is not None},
               "accuracy_mean": None, "accuracy_std": None, "epochs_to_target": None, "n_reached": 0,
               "flip_ratio": None, "seconds": None}
        if ok:
            row["accuracy_mean"], row["accuracy_std"] = _mean_std([r.metrics["test_accuracy"] for r in ok])
            reached = [e for e in (epochs_to_reach(r.metrics["test_accuracy_per_epoch"], target) for r in ok)
                       if e is not None]
            row["n_reached"] = len(reached)
            row["epochs_to_target"] = sum(reached) / len(reached) if reached else None
            flips = [r.metrics["flip_ratio_mean"][-1] for r in ok if r.metrics.get("flip_ratio_mean")]
            row["flip_ratio"] = sum(flips) / len(flips) if flips and len(flips) == len(ok) else None
            row["seconds"] = sum(r.metrics["seconds"] for r in ok) / len(ok)
        row["target"] = target
        rows.append(row)
    return rows


def load_runs(out: str) -> list[Run]:
    """The runs of a report directory (``out``/runs/*.json, as :func:`compare` wrote them), in (method,
    seed) order, e.g. to summarize them at another target: ``summarize(load_runs("report"), 0.99)``."""
    runs = []
    directory = os.path.join(out, "runs")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such directory (expected the runs of a refbnn compare report)")
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(directory, name)) as f:
            record = json.load(f)
        if not isinstance(record, dict) or "method" not in record or "seed" not in record:
            raise ValueError(f"{os.path.join(directory, name)}: expected a run's metrics or error record")
        if "error" in record and "test_accuracy" not in record:
            runs.append(Run(record["method"], record["seed"], record.get("settings", {}), error=record["error"]))
        else:
            runs.append(Run(record["method"], record["seed"], {}, metrics=record))
    runs.sort(key=lambda r: (r.method, r.seed))
    return runs


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table_markdown(rows: list[dict]) -> str:
    """The markdown table of :func:`summarize`'s rows."""
    target = f"{100 * (rows[0]['target'] if rows else TARGET_ACCURACY):g} %"
    lines = [f"| method | test accuracy % (mean ± std) | epochs to {target} test accuracy | final flip ratio | "
             f"seconds per run | runs |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        n, k = row["n_runs"], row["n_ok"]
        if k:
            acc = f"{100 * row['accuracy_mean']:.2f}"
            acc += f" ± {100 * row['accuracy_std']:.2f}" if row["accuracy_std"] is not None else " (1 run)"
            if row["epochs_to_target"] is None:
                reach = "not reached"
            else:
                reach = f"{row['epochs_to_target']:.1f}"
                if row["n_reached"] < k:
                    reach += f" ({row['n_reached']} of {k} runs; the others not reached)"
            flip = f"{row['flip_ratio']:.2e}" if row["flip_ratio"] is not None else "n/a"
            secs = f"{row['seconds']:.1f}"
        else:
            acc, reach, flip, secs = "failed", "–", "–", "–"
        runs = f"{k} of {n} finished" if k < n else f"{n}"
        by_error = {}
        for seed, error in row["errors"].items():  # one message for the seeds that failed the same way
            by_error.setdefault(error, []).append(seed)
        for error, seeds in by_error.items():
            runs += f"; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} failed: {error}"
        lines.append(f"| {row['method']} | {acc} | {reach} | {flip} | {secs} | {_cell(runs)} |")
    return "\n".join(lines)


def report_markdown(result: dict, command: str | None = None, title: str = "") -> str:
    runs = result["runs"]
    c = runs[0].config
    seeds = sorted({r.seed for r in runs})
    lines = [f"# refbnn compare: {title}", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    lines += [table_markdown(result["rows"]), "",
              f"Test accuracy after the last epoch over seeds {', '.join(map(str, seeds))} (std: the sample standard "
              f"deviation, n - 1); epochs to {100 * result['target']:g} %: the first epoch whose test accuracy "
              f"reaches it, averaged over the runs that do; final flip ratio: the share of binary weights whose "
              f"sign changes per optimizer step in the last epoch (`flip_ratio_mean[-1]` of the metrics; n/a "
              f"where the metrics do not have it); seconds: the training time of one run (one thread).", ""]
    failed = result["failed"]
    lines += [f"{len(runs)} runs ({len(runs) - failed} finished, {failed} failed) on "
              f"{result['workers']} Dask worker{'s' if result['workers'] != 1 else ''} "
              f"({'scheduler ' + result['scheduler'] if result['scheduler'] else 'a local cluster'}) in "
              f"{result['seconds']:.0f} s wall time.", "", "Machines:", ""]
    for m in result["machines"]:
        lines.append(f"- {m['cpu']}, {m['cores']} cores ({m['host']}): {m['runs']} runs")
    if result.get("malloc_trim_threshold"):
        lines += ["", f"The workers ran with {MALLOC_VARIABLE}={', '.join(result['malloc_trim_threshold'])} (Dask's "
                  f"nanny sets 65536 by default), which slows training several times over: the seconds above are "
                  f"not those of `refbnn train` (see docs/compare.md)."]
    lines += ["", f"Settings: dataset {c.get('dataset', 'digits')}, model {TrainConfig(**c).resolved().model}, "
              f"width {c.get('width', 1.0):g}, epochs {c['epochs']}, batch size {c.get('batch_size', 64)}, "
              f"convention {c.get('convention', 'paper')}.", "",
              "![learning curves](learning_curves.png)" if result.get("plot") else "No run finished: no learning "
              "curves.", "",
              "Each run's metrics: `runs/<method>-seed<k>.json` (as `refbnn train --metrics-json` writes them; a "
              "failed run's file holds its error and settings).", ""]
    return "\n".join(lines)


# ---- the learning curves ----------------------------------------------------------------------------
def plot_runs(metrics: list[dict], out_png: str, title: str):
    """The learning curves (``refbnn.plots.plot_learning_curves``: mean line and min-max band per method);
    returns the file written."""
    from .plots import plot_learning_curves  # noqa: PLC0415 - matplotlib only when a report is drawn

    return plot_learning_curves(metrics, out_png, title)["out"]
