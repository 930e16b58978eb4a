"""How ``auto`` chooses a kernel path (refbnn/kernels/dispatch.py): a timing run on first use,
cached per machine and kernel version in $REFBNN_CACHE_DIR; a bad cache is ignored (and rebuilt
where it can be), never an error, never a different result. Also the machine-peak mixes.
"""
import json
import pathlib
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from refbnn.kernels import compiled, reference

K = compiled()
from refbnn.kernels import dispatch  # noqa: E402 - needs the extension, as K

SUPPORTED = K.supported_paths()
needs_two_paths = pytest.mark.skipif(len(SUPPORTED) < 2, reason="one supported path: nothing is measured")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory of this test's own, auto mode, a short timing run; counts the
    timing runs in ``cache.runs``."""
    d = tmp_path / "cache"
    monkeypatch.setenv("REFBNN_CACHE_DIR", str(d))
    monkeypatch.delenv("REFBNN_KERNEL_PATH", raising=False)
    monkeypatch.delenv("REFBNN_KERNEL_DISPATCH", raising=False)
    monkeypatch.setattr(dispatch, "BUDGET_S", 0.005)
    monkeypatch.setattr(dispatch, "MIN_ROUNDS", 2)
    runs = []
    real = dispatch.measure

    def counted(*a, **kw):
        runs.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(dispatch, "measure", counted)
    dispatch.reset()

    class C:
        dir = d
        file = pathlib.Path(dispatch.cache_file())

    C.runs = runs
    yield C
    dispatch.reset()          # the next test chooses again, with its own environment


def no_timing(monkeypatch):
    def fail(*a, **kw):
        raise AssertionError("the timing run ran")
    monkeypatch.setattr(dispatch, "measure", fail)


def a_kernel_call():
    """bgemm and bconv2d on the auto path, checked against the float reference."""
    rng = np.random.default_rng(1)
    a = np.where(rng.random((7, 130)) < 0.5, -1.0, 1.0)
    b = np.where(rng.random((5, 130)) < 0.5, -1.0, 1.0)
    assert np.array_equal(K.bgemm(K.pack_bits(a), K.pack_bits(b), 130), a @ b.T)
    x = np.where(rng.random((2, 70, 6, 5)) < 0.5, -1.0, 1.0)
    w = np.where(rng.random((3, 70, 3, 3)) < 0.5, -1.0, 1.0)
    got = K.bconv2d(K.pack_bits(x, axis=1), K.pack_bits(w, axis=1), 70, 1, 1, layout="nchw")
    assert np.array_equal(got, reference.binary_conv2d(x, w, (1, 1), (1, 1), (1, 1), 1, 0.0))


MIXED = dispatch.MIX_PATH in SUPPORTED
needs_mixed = pytest.mark.skipif(not MIXED, reason="this CPU does not run the avx2+popcnt path (AVX2 and POPCNT)")


def valid_entry(path=None, split=None):
    fp = dispatch.fingerprint()
    e = {"format": dispatch.CACHE_FORMAT, "kernel_version": dispatch.KERNEL_VERSION, "fingerprint": fp,
         "path": path or SUPPORTED[-1], "times_s": {p: {"bgemm": 1e-3, "bconv2d": 1e-3} for p in SUPPORTED},
         "measured_at": "2024-01-01T00:00:00+0000"}
    if MIXED:
        e["mix_split"] = K.MIX_SPLITS[0] if split is None else split
        e["mix_times_s"] = {str(s): {"bgemm": 1e-3, "bconv2d": 1e-3} for s in K.MIX_SPLITS}
    return e


# ---- first use, reuse -------------------------------------------------------------------------

@needs_two_paths
def test_first_kernel_call_measures_and_writes_the_cache(cache):
    assert not cache.dir.exists()
    a_kernel_call()
    assert len(cache.runs) == 1
    entry = json.loads(cache.file.read_text())
    assert entry["fingerprint"] == dispatch.fingerprint()
    assert entry["kernel_version"] == dispatch.KERNEL_VERSION
    assert entry["path"] == K.resolve_path() == K.info()["active"]
    assert entry["path"] in SUPPORTED
    assert set(entry["times_s"]) == set(SUPPORTED)
    c = dispatch.current()
    assert c.how == "measured" and c.cached and c.note is None
    a_kernel_call()                                   # the choice is kept: no second run
    assert len(cache.runs) == 1
    assert [p.name for p in cache.dir.iterdir()] == [cache.file.name]      # no temporary file left


def test_the_file_name_is_the_key_of_fingerprint_and_version(cache, monkeypatch):
    fp = dispatch.fingerprint()
    name = os.path.basename(dispatch.cache_file(fp))
    assert name.startswith("kernel-dispatch-") and name.endswith(".json")
    assert os.path.basename(dispatch.cache_file(dict(fp, cpu="Another CPU"))) != name
    assert set(fp) == {"cpu", "machine", "flags", "compiled", "supported"}
    assert set(fp["flags"]) <= set(dispatch.CPU_FLAGS)
    assert fp["supported"] == SUPPORTED
    monkeypatch.setattr(dispatch, "KERNEL_VERSION", dispatch.KERNEL_VERSION + 1)
    assert os.path.basename(dispatch.cache_file(fp)) != name


@needs_two_paths
def test_a_valid_cache_is_used_without_a_timing_run(cache, monkeypatch):
    a_kernel_call()                                   # measures, writes
    dispatch.reset()                                  # as a new process
    no_timing(monkeypatch)
    a_kernel_call()
    c = dispatch.current()
    assert c.how == "cache" and c.cache_file == str(cache.file)
    assert "from cache" in K.info()["chosen_by"] and str(cache.file) in K.info()["chosen_by"]


@needs_two_paths
@pytest.mark.parametrize("path", SUPPORTED)
def test_every_choice_computes_the_same_bits(cache, monkeypatch, path):
    """A cache naming any supported path is followed (even one that is not the fastest): the
    choice changes the speed, never the result."""
    cache.dir.mkdir()
    cache.file.write_text(json.dumps(valid_entry(path)))
    no_timing(monkeypatch)
    assert K.resolve_path() == path
    a_kernel_call()
    from refbnn import kernels
    rng = np.random.default_rng(2)
    x = np.where(rng.random((2, 9, 7, 7)) < 0.5, -1.0, 1.0).astype(np.float32)
    w = np.where(rng.random((4, 9, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    assert np.array_equal(kernels.binary_conv2d(x, w, padding=1, backend="cython"),
                          kernels.binary_conv2d(x, w, padding=1, backend="numpy"))


# ---- bad caches: ignored, rebuilt, never an error ----------------------------------------------

def _bad_entries():
    e = valid_entry()
    return {
        "not json": b"{not json",
        "not utf-8": b"\xff\xfe\x00garbage",
        "empty": b"",
        "a list": b"[]",
        "other format": json.dumps(dict(e, format=99)).encode(),
        "older kernel version": json.dumps(dict(e, kernel_version=e["kernel_version"] - 1)).encode(),
        "other fingerprint": json.dumps(dict(e, fingerprint=dict(e["fingerprint"], cpu="Some Other CPU"))).encode(),
        "unknown path": json.dumps(dict(e, path="avx1024")).encode(),
        "negative time": json.dumps(dict(e, times_s={p: {"bgemm": -1, "bconv2d": 1} for p in SUPPORTED})).encode(),
        "times missing": json.dumps({k: v for k, v in e.items() if k != "times_s"}).encode(),
        "huge": b" " * (dispatch.MAX_CACHE_BYTES + 10) + json.dumps(e).encode(),
        "deep": b"[" * 100000 + b"]" * 100000,
    } | ({
        "mix split not compiled": json.dumps(dict(e, mix_split=3)).encode(),
        "mix split a bool": json.dumps(dict(e, mix_split=True)).encode(),
        "mix split a float": json.dumps(dict(e, mix_split=float(K.MIX_SPLITS[0]))).encode(),
        "mix split missing": json.dumps({k: v for k, v in e.items() if k != "mix_split"}).encode(),
        "mix times not per split": json.dumps(dict(e, mix_times_s={"x": {"bgemm": 1, "bconv2d": 1}})).encode(),
        "mix times negative": json.dumps(dict(e, mix_times_s={s: {"bgemm": 1, "bconv2d": 0}
                                                              for s in e["mix_times_s"]})).encode(),
    } if MIXED else {})


@needs_two_paths
@pytest.mark.parametrize("kind", list(_bad_entries()))
def test_a_bad_cache_is_ignored_and_rebuilt(cache, kind):
    cache.dir.mkdir()
    cache.file.write_bytes(_bad_entries()[kind])
    a_kernel_call()                                   # no error, the right bits
    assert len(cache.runs) == 1
    c = dispatch.current()
    assert c.how == "measured" and c.cached
    assert "ignored" in c.note and str(cache.file) in c.note
    assert "ignored" in K.info()["chosen_by"]
    entry = json.loads(cache.file.read_text())       # rewritten, valid
    assert dispatch._invalid(entry, dispatch.fingerprint(), SUPPORTED) is None


@needs_two_paths
def test_a_directory_in_place_of_the_file(cache):
    cache.file.mkdir(parents=True)
    a_kernel_call()
    c = dispatch.current()
    assert c.how == "measured" and not c.cached
    assert "ignored" in c.note and "not cached" in c.note
    assert cache.file.is_dir()                        # left alone: it is not ours to delete


@needs_two_paths
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_cache_is_ignored_and_replaced(cache):
    cache.dir.mkdir()
    cache.file.write_text(json.dumps(valid_entry()))
    cache.file.chmod(0)
    a_kernel_call()
    c = dispatch.current()
    assert c.how == "measured" and c.cached and "PermissionError" in c.note
    assert dispatch._invalid(json.loads(cache.file.read_text()), dispatch.fingerprint(), SUPPORTED) is None


@needs_two_paths
def test_a_cache_that_raises_permission_errors(cache, monkeypatch):
    """The two tests above without root's exemptions: reading and writing raise PermissionError."""
    import types
    cache.dir.mkdir()
    cache.file.write_text(json.dumps(valid_entry()))

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dispatch, "open", denied, raising=False)            # the module's open only
    monkeypatch.setattr(dispatch, "tempfile", types.SimpleNamespace(mkstemp=denied))
    a_kernel_call()
    c = dispatch.current()
    assert c.how == "measured" and not c.cached
    assert "ignored (PermissionError" in c.note and "not cached (PermissionError" in c.note
    assert sorted(p.name for p in cache.dir.iterdir()) == [cache.file.name]   # nothing else written


@needs_two_paths
def test_a_cache_directory_that_cannot_be_created(cache, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("REFBNN_CACHE_DIR", str(blocker / "cache"))     # under a regular file
    a_kernel_call()
    c = dispatch.current()
    assert c.how == "measured" and not c.cached and "not cached" in c.note
    assert "not cached" in K.info()["chosen_by"]
    a_kernel_call()
    assert len(cache.runs) == 1                       # kept for the process all the same


@needs_two_paths
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes whatever the mode")
def test_an_unwritable_cache_directory(cache):
    cache.dir.mkdir()
    cache.dir.chmod(0o500)
    try:
        a_kernel_call()
        c = dispatch.current()
        assert c.how == "measured" and not c.cached and "PermissionError" in c.note
        assert list(cache.dir.iterdir()) == []
    finally:
        cache.dir.chmod(0o700)


# ---- overrides -------------------------------------------------------------------------------

def test_kernel_path_variable_wins_and_measures_nothing(cache, monkeypatch):
    no_timing(monkeypatch)
    for p in SUPPORTED:
        monkeypatch.setenv("REFBNN_KERNEL_PATH", p)
        assert K.resolve_path() == p
        a_kernel_call()
        assert K.info()["chosen_by"] == f"REFBNN_KERNEL_PATH={p}" and K.info()["measured_ms"] is None
    monkeypatch.setenv("REFBNN_KERNEL_DISPATCH", "static")
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "scalar")
    assert K.resolve_path() == "scalar"
    assert K.resolve_path(SUPPORTED[0]) == SUPPORTED[0]                  # path= wins over both
    assert not cache.dir.exists()


def test_static_mode_is_the_widest_path_without_timing(cache, monkeypatch):
    monkeypatch.setenv("REFBNN_KERNEL_DISPATCH", "static")
    no_timing(monkeypatch)
    assert K.resolve_path() == SUPPORTED[0]
    a_kernel_call()
    assert "static" in K.info()["chosen_by"]
    assert not cache.dir.exists()


def test_a_bad_dispatch_mode_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setenv("REFBNN_KERNEL_DISPATCH", "fastest")
    w = np.zeros((1, 1), np.uint64)
    with pytest.raises(ValueError, match=r"REFBNN_KERNEL_DISPATCH='fastest'.*measure.*static"):
        K.bgemm(w, w, 1)
    assert "REFBNN_KERNEL_DISPATCH" in K.info()["active"]                # info still prints
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "scalar")                    # a forced path needs no mode
    assert K.bgemm(w, w, 1).tolist() == [[1]]


def test_packing_and_max_pool_never_measure(cache, monkeypatch):
    no_timing(monkeypatch)
    words = K.pack_bits(np.ones((2, 3, 4, 4)), axis=1)
    K.bmaxpool2d(words, 2)
    assert not cache.dir.exists()


# ---- the choice -----------------------------------------------------------------------------

def test_pick_takes_the_fastest_and_keeps_the_widest_within_the_margin():
    paths = ["avx2", "scalar"]
    # the AVX2-only EPYC of the issue: scalar popcnt ahead by about 10 %
    assert dispatch.pick({"avx2": {"bgemm": 1.1, "bconv2d": 1.1}, "scalar": {"bgemm": 1.0, "bconv2d": 1.0}},
                         paths) == "scalar"
    assert dispatch.pick({"avx2": {"bgemm": 1.01, "bconv2d": 1.0}, "scalar": {"bgemm": 1.0, "bconv2d": 1.0}},
                         paths) == "avx2"                       # 0.5 % is noise
    assert dispatch.pick({"avx2": {"bgemm": 1.0, "bconv2d": 2.0}, "scalar": {"bgemm": 1.5, "bconv2d": 1.0}},
                         paths) == "scalar"                     # geometric mean: sqrt(1.5) < sqrt(2)
    sc = dispatch.scores({"a": {"x": 2.0, "y": 3.0}, "b": {"x": 1.0, "y": 6.0}})
    assert sc["a"] == pytest.approx(np.sqrt(2 * 1)) and sc["b"] == pytest.approx(np.sqrt(1 * 2))


@needs_two_paths
def test_the_timing_run_is_short_and_covers_every_path(monkeypatch):
    import time
    t0 = time.perf_counter()
    times = dispatch.measure()
    elapsed = time.perf_counter() - t0
    assert set(times) == set(SUPPORTED)
    assert all(0 < t < 0.1 for v in times.values() for t in v.values())
    assert elapsed < 1.5, f"the timing run took {elapsed:.2f} s"      # about 0.25 s; slack for a loaded machine


def test_cache_dir_follows_the_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("REFBNN_CACHE_DIR", str(tmp_path / "x"))
    assert dispatch.cache_dir() == str(tmp_path / "x")
    monkeypatch.delenv("REFBNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dispatch.cache_dir() == str(tmp_path / "xdg" / "refbnn")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")                 # not absolute: ignored (XDG spec)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dispatch.cache_dir() == str(tmp_path / "home" / ".cache" / "refbnn")


def test_the_suite_does_not_write_the_real_cache():
    assert os.environ["REFBNN_CACHE_DIR"].startswith(tempfile.gettempdir())


def _python(code, **env):
    import refbnn
    here = os.path.dirname(os.path.dirname(os.path.abspath(refbnn.__file__)))
    env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    env.pop("REFBNN_KERNEL_PATH", None)
    env.pop("REFBNN_KERNEL_DISPATCH", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


@needs_two_paths
def test_import_measures_nothing_and_a_kernel_call_does(tmp_path):
    d = tmp_path / "c"
    code = ("import os, numpy as np, refbnn, refbnn.kernels as k, refbnn.kernels._bitpack as b\n"
            "import refbnn.kernels.dispatch, refbnn.cli\n"
            f"print(os.path.exists({str(d)!r}))\n"
            "b.bgemm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 1)\n"
            f"print(len(os.listdir({str(d)!r})))\n")
    res = _python(code, REFBNN_CACHE_DIR=str(d))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "1"]


@needs_two_paths
def test_cli_info_shows_the_choice_and_the_times(cache):
    from refbnn.cli import info
    kp = info()["kernel_paths"]
    assert kp["active"] in SUPPORTED and kp["chosen_by"].startswith("measured now, cached in")
    assert set(kp["measured_ms"]) == set(SUPPORTED)
    assert all(v["bgemm"] > 0 and v["bconv2d"] > 0 for v in kp["measured_ms"].values())
    assert min(v["score"] for v in kp["measured_ms"].values()) == 1.0


# ---- the machine's peak ------------------------------------------------------------------------

def test_machine_peak_covers_every_path_and_the_mixes():
    mixes = K.peak_mixes()
    assert set(SUPPORTED) <= set(mixes)
    if "avx2" in SUPPORTED and "popcnt" in dispatch.fingerprint()["flags"]:
        assert "avx2 x4 + popcnt x8" in mixes
    r = K.measure_machine_peak(seconds=0.001, rounds=1)
    assert set(r["mixes"]) == set(mixes) and r["mix"] in mixes
    assert r["peak"] == max(r["mixes"].values()) > 0
    with pytest.raises(ValueError, match="mix: expected one of"):
        K.measure_peak_mix("avx9000 x1")
    with pytest.raises(ValueError, match="rounds"):
        K.measure_machine_peak(rounds=0)


# ---- the mixed path's split ------------------------------------------------------------------

@needs_mixed
def test_the_mixed_split_is_measured_cached_and_reported(cache, monkeypatch):
    K.set_mix_split(K.MIX_DEFAULT)
    a_kernel_call()
    c = dispatch.current()
    entry = json.loads(cache.file.read_text())
    assert c.mix_split == entry["mix_split"] == K.mix_split() in K.MIX_SPLITS
    assert set(entry["mix_times_s"]) == {str(s) for s in K.MIX_SPLITS}
    assert set(c.mix_times) == set(K.MIX_SPLITS)
    sc = dispatch.scores(c.mix_times)
    assert sc[c.mix_split] == min(sc.values())                # the fastest split runs
    split = K.info()["mix_split"]
    assert split["scalar_columns"] == c.mix_split and split["chosen_by"] == "measured"
    assert set(split["measured_ms"]) == {str(s) for s in K.MIX_SPLITS}
    # a new process reads the split from the cache, with no timing run
    other = next(s for s in K.MIX_SPLITS if s != c.mix_split)
    cache.file.write_text(json.dumps(valid_entry(split=other)))
    dispatch.reset()
    assert K.mix_split() == K.MIX_DEFAULT                     # reset: back to the default until chosen
    no_timing(monkeypatch)
    a_kernel_call()
    assert dispatch.current().how == "cache" and K.mix_split() == other


@needs_mixed
def test_measure_mix_split_times_every_split_and_keeps_the_current_one():
    K.set_mix_split(K.MIX_SPLITS[-1])
    try:
        t = dispatch.measure_mix_split(budget=0.001)
        assert set(t) == set(K.MIX_SPLITS)
        assert all(0 < v < 0.1 for s in t.values() for v in s.values())
        assert K.mix_split() == K.MIX_SPLITS[-1]
    finally:
        K.set_mix_split(K.MIX_DEFAULT)


@needs_mixed
@pytest.mark.parametrize("bad", [3, 0, 32, -4, True, 12.0, "12", None])
def test_set_mix_split_refuses_what_is_not_compiled(bad):
    with pytest.raises(ValueError, match="scalar_columns: expected one of"):
        K.set_mix_split(bad)
    assert K.mix_split() in K.MIX_SPLITS
