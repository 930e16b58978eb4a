"""Which SIMD path the compiled kernels run when none is named: measured on the machine, cached.

The paths (``avx512``, ``avx2``, ``avx2+popcnt``, ``scalar``; see :mod:`refbnn.kernels._bitpack`)
compute the same bits, so the choice only decides speed, and the widest path is not always the
fastest: on an AVX2-only AMD EPYC the scalar ``popcnt`` loop runs ``bgemm`` faster than the AVX2
nibble-lookup loop, and the mixed ``avx2+popcnt`` loop (some columns of each panel through scalar
``popcnt`` on the integer ports, the others through AVX2 lookups on the vector ports) can beat both.
So when the path is ``"auto"`` (no ``path=``, ``REFBNN_KERNEL_PATH`` unset, empty or ``auto``), the
first kernel call that needs a path runs a short timing run (at most about 0.25 s with the mixed
path's splits; 0.18 s on an AVX-512 Zen 5 core) of every path this CPU supports on one bgemm and
one bconv2d shape, on one thread, and picks the fastest:

    score(path) = geometric mean over the shapes of  t(path, shape) / min over paths of t(·, shape)

(each t the best of interleaved rounds, so that every path sees the same state of a shared
machine); the lowest score wins, except that a path other than the widest must beat the widest by
``MARGIN`` (timing noise must not flip the choice between two near-equal paths). Where the CPU runs
the mixed path, its split (how many of a panel's 32 columns go through scalar ``popcnt``, one of
``_bitpack.MIX_SPLITS``) is measured first the same way, on the same two shapes, and the best split
is the one the path comparison times (and the one the mixed path runs from then on).

The choice is kept for the process and in a small JSON file, ``kernel-dispatch-<key>.json`` in
:func:`cache_dir` ($REFBNN_CACHE_DIR, else $XDG_CACHE_HOME/refbnn, else ~/.cache/refbnn), where
``key`` hashes the machine's :func:`fingerprint` (CPU model, the CPU flags the paths need, the
compiled and supported paths) and :data:`KERNEL_VERSION`. Deleting it is safe (the next process
measures again). A cache file that cannot be read, is not valid JSON, or belongs to another
fingerprint or kernel version is ignored and rewritten; one that cannot be written (read-only
directory, a directory in its place) leaves the choice uncached. None of these is an error, and
none changes a result, only which correct path computes it. Writes are atomic (a temporary file
in the same directory, then a rename).

``REFBNN_KERNEL_DISPATCH=static`` skips the measurement and runs the widest path the CPU supports
(refbnn's choice before measurement existed: deterministic, for tests and CI);
``REFBNN_KERNEL_DISPATCH=measure`` (or unset, or empty) is the default. ``REFBNN_KERNEL_PATH``
(or ``path=``) still forces a path and wins over both. ``refbnn info`` shows the choice, how it was
made and the measured times.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..machine import cpu_model, cpuinfo
from . import _bitpack as K

KERNEL_VERSION = 2          # bump whenever a tile kernel changes: every cached choice is measured again
CACHE_FORMAT = 2
MIX_PATH = "avx2+popcnt"
ENV_DISPATCH = "REFBNN_KERNEL_DISPATCH"
ENV_CACHE_DIR = "REFBNN_CACHE_DIR"
MODES = ("measure", "static")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vpopcntdq", "popcnt")   # /proc/cpuinfo names of what the paths use
MARGIN = 0.03
GEMM_SHAPE = (256, 256, 2304)       # M, N, K of bgemm: a 3x3x256 convolution as a GEMM
CONV_SHAPE = (4, 16, 16, 64, 64, 3)  # batch, H, W, C, O, kernel of bconv2d, stride 1, zero padding 1
BUDGET_S = 0.2                      # the timing run stops after this (once MIN_ROUNDS are done)
MIX_BUDGET_S = 0.05                 # the same for the mixed path's splits
MIN_ROUNDS, MAX_ROUNDS = 5, 60
MAX_CACHE_BYTES = 1 << 16           # a larger file is not ours: ignored unread


@dataclass(frozen=True)
class Choice:
    """The path ``auto`` runs and how it was chosen.

    ``how``: ``"measured"`` (timed in this process), ``"cache"`` (read from ``cache_file``),
    ``"static"`` (REFBNN_KERNEL_DISPATCH=static) or ``"only"`` (one supported path, nothing to
    compare). ``cached``: the choice is in ``cache_file`` (read from it, or written). ``times``: path -> {"bgemm": s, "bconv2d": s}, the best times of the timing run
    (None when nothing was measured). ``note``: why a cache file was not used or not written.
    ``mix_split``: the split the mixed path runs (scalar columns of 32; None where the CPU has no
    mixed path), ``mix_times``: split -> {"bgemm": s, "bconv2d": s} when it was measured."""
    path: str
    how: str
    cache_file: str | None = None
    times: dict | None = None
    note: str | None = None
    measured_at: str | None = None
    scores: dict = field(default_factory=dict)
    cached: bool = False
    mix_split: int | None = None
    mix_times: dict | None = None


_lock = threading.RLock()
_memo: dict[str, Choice] = {}       # mode -> the choice, made once per process


def mode() -> str:
    """$REFBNN_KERNEL_DISPATCH: ``"measure"`` (default; also unset or empty) or ``"static"``."""
    value = os.environ.get(ENV_DISPATCH, "")
    if value == "":
        return "measure"
    if value not in MODES:
        raise K.KernelPathError(f"{ENV_DISPATCH}={value!r}: expected one of {list(MODES)} (or unset: "
                                f"'measure')")
    return value


def auto_path() -> str:
    """The path ``"auto"`` runs (the kernels' hook, called by every kernel call: one dict look-up
    once the choice is made; an invalid mode is never in the memo)."""
    choice = _memo.get(K._getenv(b"REFBNN_KERNEL_DISPATCH") or "measure")
    return (choice or current()).path


def current(refresh: bool = False) -> Choice:
    """The choice for the current :func:`mode`, made on the first call of the process (from the
    cache file, else by a timing run); ``refresh=True`` measures again and rewrites the cache."""
    m = mode()
    choice = None if refresh else _memo.get(m)
    if choice is None:
        with _lock:
            choice = None if refresh else _memo.get(m)
            if choice is None:
                choice = _memo[m] = _choose(m, refresh)
    return choice


def reset() -> None:
    """Forget this process's choice (the cache file stays): the next kernel call chooses again (the
    mixed path's split is back to the build's default until then)."""
    with _lock:
        _memo.clear()
        K.set_mix_split(K.MIX_DEFAULT)


def report() -> dict:
    """``refbnn info``'s lines: ``chosen_by`` (how) and ``measured_ms`` (per path, or None)."""
    c = current()
    if c.how == "static":
        how = f"static ({ENV_DISPATCH}=static): the widest path this CPU supports"
    elif c.how == "only":
        how = "the only path this CPU supports"
    elif c.how == "cache":
        how = f"from cache {c.cache_file} (measured {c.measured_at})"
    else:
        how = "measured now" + (f", cached in {c.cache_file}" if c.cached else "")
    if c.note:
        how += f"; {c.note}"
    measured = None
    if c.times:
        measured = {p: {"bgemm": round(1e3 * t["bgemm"], 4), "bconv2d": round(1e3 * t["bconv2d"], 4),
                        "score": round(c.scores.get(p, float("nan")), 3)} for p, t in c.times.items()}
    split = None
    if MIX_PATH in K.supported_paths():
        split = {"scalar_columns": K.mix_split(), "of": K.PANEL_COLUMNS,
                 "chosen_by": "measured" if c.mix_times else "the build's default"}
        if c.mix_times:
            split["measured_ms"] = {str(s): {k: round(1e3 * v, 4) for k, v in t.items()}
                                    for s, t in c.mix_times.items()}
    return {"chosen_by": how, "measured_ms": measured, "mix_split": split}


# ---- the cache key ---------------------------------------------------------------------------

def fingerprint() -> dict:
    """What the cached choice depends on: CPU model, the CPU flags the paths use, the machine
    type, and the compiled and supported paths."""
    info = cpuinfo()
    model = cpu_model(info)
    flags = set(info.get("flags", info.get("Features", "")).split())
    return {"cpu": model, "machine": platform.machine(), "flags": [f for f in CPU_FLAGS if f in flags],
            "compiled": K.compiled_paths(), "supported": K.supported_paths()}


def cache_dir() -> str:
    """$REFBNN_CACHE_DIR, else $XDG_CACHE_HOME/refbnn (an absolute XDG_CACHE_HOME only, as the XDG
    spec says), else ~/.cache/refbnn."""
    d = os.environ.get(ENV_CACHE_DIR)
    if d:
        return os.path.abspath(os.path.expanduser(d))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "refbnn")
    return os.path.join(os.path.expanduser("~"), ".cache", "refbnn")


def _key(fp: dict) -> str:
    blob = json.dumps({"fingerprint": fp, "kernel_version": KERNEL_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_file(fp: dict | None = None) -> str:
    """This machine's cache file: ``kernel-dispatch-<key>.json`` in :func:`cache_dir`."""
    return os.path.join(cache_dir(), f"kernel-dispatch-{_key(fp or fingerprint())}.json")


# ---- the cache file ---------------------------------------------------------------------------

def _read_cache(path: str, fp: dict, supported: list) -> tuple[dict | None, str | None]:
    """(entry, None) when ``path`` holds a valid choice for ``fp`` and this KERNEL_VERSION, else
    (None, why not); never raises."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:           # unreadable, a directory, ...
        return None, f"cache {path} ignored ({type(exc).__name__}: {exc.strerror or exc})"
    if len(raw) > MAX_CACHE_BYTES:
        return None, f"cache {path} ignored (larger than {MAX_CACHE_BYTES} bytes)"
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"cache {path} ignored (not valid JSON: {exc})"
    why = _invalid(entry, fp, supported)
    return (None, f"cache {path} ignored ({why})") if why else (entry, None)


def _invalid(entry, fp: dict, supported: list) -> str | None:
    """Why ``entry`` is not a usable choice for this machine and kernel version (None: usable)."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    if entry.get("format") != CACHE_FORMAT:
        return f"format {entry.get('format')!r}, expected {CACHE_FORMAT}"
    if entry.get("kernel_version") != KERNEL_VERSION:
        return f"kernel version {entry.get('kernel_version')!r}, this build is {KERNEL_VERSION}"
    if entry.get("fingerprint") != fp:
        return "written for another machine or build (fingerprint differs)"
    if entry.get("path") not in supported:
        return f"path {entry.get('path')!r} is not one this CPU supports {supported}"
    why = _invalid_times(entry.get("times_s"), supported, "times_s", "supported path")
    if why:
        return why
    if not isinstance(entry.get("measured_at"), str):
        return "measured_at is missing"
    if MIX_PATH in supported:
        split = entry.get("mix_split")
        if type(split) is not int or split not in K.MIX_SPLITS:     # not a bool, not 12.0
            return f"mix_split {split!r} is not one of the compiled splits {list(K.MIX_SPLITS)}"
        return _invalid_times(entry.get("mix_times_s"), [str(s) for s in K.MIX_SPLITS], "mix_times_s",
                              "compiled split")
    return None


def _invalid_times(times, names, what: str, per: str) -> str | None:
    if not isinstance(times, dict) or set(times) != set(names):
        return f"{what} is not a timing per {per}"
    for t in times.values():
        if not isinstance(t, dict) or set(t) != {"bgemm", "bconv2d"} or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in t.values()):
            return f"{what} holds something other than positive times"
    return None


def _write_cache(path: str, entry: dict) -> str | None:
    """Write ``entry`` to ``path`` atomically (temporary file + rename); None, or why it failed."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kernel-dispatch-", suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        return None
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return f"not cached ({type(exc).__name__}: {exc.strerror or exc})"


# ---- the timing run ---------------------------------------------------------------------------

def _operands():
    """Random words for the two shapes (the values do not change the time: no branch on data)."""
    rng = np.random.default_rng(20240613)
    m, n, k = GEMM_SHAPE
    kw = (k + 63) // 64

    def words(*shape):
        return np.frombuffer(rng.bytes(8 * math.prod(shape)), np.uint64).reshape(shape).copy()

    nb, h, w, c, o, ks = CONV_SHAPE
    cw = (c + 63) // 64
    return {"a": words(m, kw), "b": words(n, kw), "out": np.empty((m, n), np.int32),
            "x": words(nb, h, w, cw), "w": words(o, ks, ks, cw), "conv_out": np.empty((nb, h, w, o), np.int32)}


def _calls(paths, d, ws):
    k, c = GEMM_SHAPE[2], CONV_SHAPE[3]
    return {p: {"bgemm": lambda p=p: K.bgemm(d["a"], d["b"], k, threads=1, out=d["out"], path=p, workspace=ws),
                "bconv2d": lambda p=p: K.bconv2d(d["x"], d["w"], c, 1, 1, pad_value=0.0, out=d["conv_out"], threads=1,
                                                 path=p, workspace=ws)}
            for p in paths}


def _best_of_rounds(calls: dict, budget: float, before=lambda name: None) -> dict:
    """name -> {shape: best s}: warm-up, then interleaved rounds (MIN_ROUNDS to MAX_ROUNDS, stopping
    once ``budget`` seconds have passed); ``before(name)`` runs before each of name's calls."""
    for name, fs in calls.items():     # warm-up: workspace buffers, code and data into the caches
        before(name)
        for f in fs.values():
            f()
    best = {name: {s: math.inf for s in fs} for name, fs in calls.items()}
    t_start = time.perf_counter()
    for r in range(MAX_ROUNDS):
        if r >= MIN_ROUNDS and time.perf_counter() - t_start > budget:
            break
        for name, fs in calls.items():
            before(name)
            for s, f in fs.items():
                t0 = time.perf_counter()
                f()
                best[name][s] = min(best[name][s], time.perf_counter() - t0)
    return best


def measure_mix_split(budget: float | None = None) -> dict:
    """The mixed path's splits timed as :func:`measure` times the paths: split (scalar columns) ->
    {"bgemm": s, "bconv2d": s}. Leaves the current split unchanged."""
    budget = MIX_BUDGET_S if budget is None else budget
    d = _operands()
    ws = K.Workspace()
    f = _calls([MIX_PATH], d, ws)[MIX_PATH]
    keep = K.mix_split()
    try:
        return _best_of_rounds({s: f for s in K.MIX_SPLITS}, budget, before=K.set_mix_split)
    finally:
        K.set_mix_split(keep)


def measure(paths=None, budget: float | None = None) -> dict:
    """The timing run: path -> {"bgemm": s, "bconv2d": s}, the best of interleaved rounds (each
    round times one call of each shape on each path, one thread), MIN_ROUNDS to MAX_ROUNDS rounds,
    stopping once ``budget`` seconds (default BUDGET_S) have passed."""
    paths = list(K.supported_paths() if paths is None else paths)
    budget = BUDGET_S if budget is None else budget
    return _best_of_rounds(_calls(paths, _operands(), K.Workspace()), budget)


def scores(times: dict) -> dict:
    """path -> geometric mean over the shapes of its time / the fastest path's time (1.0 = fastest
    at every shape)."""
    shapes = next(iter(times.values())).keys()
    fastest = {s: min(t[s] for t in times.values()) for s in shapes}
    return {p: math.exp(sum(math.log(t[s] / fastest[s]) for s in shapes) / len(fastest)) for p, t in times.items()}


def pick(times: dict, paths: list) -> str:
    """The lowest :func:`scores`; a path other than the widest (``paths[0]``) only when it beats the
    widest by MARGIN."""
    sc = scores(times)
    best = min(paths, key=lambda p: sc[p])           # ties: the earlier (wider) path; the mixed path is
    #                                                  narrower than avx2 (PATHS' order): it must win by MARGIN
    widest = paths[0]
    if best != widest and sc[best] > sc[widest] * (1 - MARGIN):
        return widest
    return best


def _choose(m: str, refresh: bool) -> Choice:
    supported = K.supported_paths()
    if m == "static":
        return Choice(supported[0], "static")
    if len(supported) == 1:
        return Choice(supported[0], "only")
    fp = fingerprint()
    path = cache_file(fp)
    note = None
    if not refresh:
        entry, note = _read_cache(path, fp, supported)
        if entry is not None:
            times = {p: dict(entry["times_s"][p]) for p in supported}
            split, mix_times = entry.get("mix_split"), None
            if MIX_PATH in supported:            # both validated by _invalid
                K.set_mix_split(split)
                mix_times = {int(s): dict(t) for s, t in entry["mix_times_s"].items()}
            return Choice(entry["path"], "cache", path, times, None, entry["measured_at"], scores(times), True,
                          split, mix_times)
    split = mix_times = None
    if MIX_PATH in supported:
        mix_times = measure_mix_split()
        split = min(mix_times, key=scores(mix_times).get)
        K.set_mix_split(split)
    times = measure(supported)
    chosen = pick(times, supported)
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"format": CACHE_FORMAT, "kernel_version": KERNEL_VERSION, "fingerprint": fp, "path": chosen,
             "times_s": times, "measured_at": measured_at, "shapes": {"bgemm": list(GEMM_SHAPE),
                                                                        "bconv2d": list(CONV_SHAPE)},
             "note": "refbnn's kernel path choice for this machine (safe to delete: measured again on next use)"}
    if split is not None:
        entry["mix_split"], entry["mix_times_s"] = split, {str(s): t for s, t in mix_times.items()}
    failed = _write_cache(path, entry)
    note = "; ".join(filter(None, (note, failed)))
    return Choice(chosen, "measured", path, times, note or None, measured_at, scores(times), failed is None,
                  split, mix_times)
