"""Hostile input for every public kernel entry point: the answer is a clear ValueError/TypeError,
or exactly the NumPy reference's answer on a clean (C-contiguous, native byte order) copy of the
same values -- never a wrong number, a crash or a modified input.

The entry points: ``pack_bits``, ``bgemm``, ``bconv2d``, ``bmaxpool2d`` (compiled),
``unpack_bits``, ``threshold_fold`` (NumPy) and the backend functions ``binary_matmul`` and
``binary_conv2d`` of :mod:`refbnn.kernels`. The strategies draw byte orders, dtype spellings,
strided / negative-stride / Fortran / misaligned / broadcast views, zero-size axes, NaN and Inf,
``out=`` arrays of the wrong dtype, shape, order or overlapping an input, and ints of the wrong
type or past 2**31.

The first half holds one regression test per bug fixed (each failed before its fix). Example
counts are small by default; ``REFBNN_HOSTILE_EXAMPLES=N`` sets every property test's
max_examples to N for a long run, and ``REFBNN_HOSTILE_LOG=file`` appends one line per example
(test, outcome) to count a run exactly even if it is stopped.
"""
import os
import subprocess
import tempfile
import sys

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from refbnn import kernels
from refbnn.kernels import compiled, reference, threshold_fold
from refbnn.ops.im2col import im2col

K = compiled()   # ImportError with the build command when the extension is not built
EXAMPLES = int(os.environ.get("REFBNN_HOSTILE_EXAMPLES", "30"))
LOG = os.environ.get("REFBNN_HOSTILE_LOG")      # a file: one line per example run (exact counts of a long run)
hostile = settings(max_examples=EXAMPLES, deadline=None)
CLEAR = (ValueError, TypeError)
BAD_INTS = [0, -1, 2**31 - 1, 2**31, 2**32 + 1, 2**63, 2**64, -2**63, True, False, 1.0, 2.5, float("nan"),
            np.int64(2**40), np.uint64(2**64 - 1), np.int8(-3), "2", None, (1,), (1, 2, 3), np.array([1, 1])]


# ---- helpers -------------------------------------------------------------------------------------

def pick(draw, good, bad, one_in=8):
    """A value from ``good``, or one from ``bad`` one time in ``one_in``: each argument is hostile
    now and then, so that a good share of the examples is accepted and compared with the reference."""
    return draw(st.sampled_from(bad if draw(st.integers(0, one_in - 1)) == 0 else good))


def random_words(rng, shape):
    return rng.integers(0, 2**64, shape, dtype=np.uint64)


def unpack(words, n):
    """Independent of the code under test: LCE +-1 floats (float64) of the first n bits of the last axis."""
    w = np.ascontiguousarray(words, dtype="<u8")
    bits = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little") if w.size else \
        np.zeros(w.shape[:-1] + (64 * w.shape[-1],), np.uint8)
    return 1.0 - 2.0 * bits[..., :n].astype(np.float64)


def clean(a):
    """The clean copy the reference answer is computed on: C-contiguous, native byte order."""
    a = np.asarray(a)
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


def misaligned(a):
    if a.dtype.hasobject:
        return a
    raw = np.zeros(a.nbytes + 1, np.uint8)
    view = raw[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


# value-preserving layouts: the kernels must give the reference's answer (or a clear error)
LAYOUTS = ["plain", "bigendian", "spelling", "strided", "reversed", "fortran", "misaligned", "readonly",
           "broadcast", "subclass"]
# layouts the kernels must refuse
BAD_WORD_LAYOUTS = ["int64", "uint32", "float64", "bool", "object", "list", "extra_axis", "masked"]


def layout(a, how, rng):
    """``a`` (a clean array) in layout ``how``; values may change only for "broadcast" (then the
    clean copy of the result is the reference's input)."""
    if a.ndim == 0 or how == "plain":
        return a
    if how == "bigendian":
        return a.astype(a.dtype.newbyteorder(">"))
    if how == "spelling":                 # the same dtype under another name ('Q' vs 'L' for uint64)
        other = {np.dtype(np.uint64): np.ulonglong, np.dtype(np.int64): np.longlong,
                 np.dtype(np.int32): np.intc}.get(a.dtype)
        return a if other is None else a.astype(other)
    if how == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
        big[tuple(slice(1, None, 2) for _ in a.shape)] = a
        return big[tuple(slice(1, None, 2) for _ in a.shape)]
    if how == "reversed":
        flipped = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "misaligned":
        return misaligned(a)
    if how == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if how == "broadcast":                # stride 0 along the first axis: every row the same
        return np.broadcast_to(a[:1], a.shape) if a.shape[0] else a
    if how == "subclass":
        class Sub(np.ndarray):
            pass
        return a.copy().view(Sub)
    raise AssertionError(how)


def bad_words(a, how):
    """Word arrays the kernels must refuse (wrong dtype, container or ndim)."""
    return {"int64": lambda: a.astype(np.int64), "uint32": lambda: a.astype(np.uint32),
            "float64": lambda: a.astype(np.float64), "bool": lambda: a.astype(bool),
            "object": lambda: a.astype(object), "list": lambda: a.tolist(), "extra_axis": lambda: a[..., None],
            "masked": lambda: np.ma.masked_array(a, mask=np.zeros(a.shape, bool))}[how]()


def snapshot(args):
    return [(x, np.array(x, copy=True)) for x in args if isinstance(x, np.ndarray)]


def unchanged(snap):
    for x, before in snap:
        if before.dtype.hasobject:          # NaN objects: compare what they print as
            assert [repr(v) for v in np.asarray(x).ravel()] == [repr(v) for v in before.ravel()], \
                "an input was modified"
        else:
            assert np.array_equal(np.asarray(x), before, equal_nan=before.dtype.kind in "fc"), "an input was modified"


def record(what):
    event(what)
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{what}\n")


def outcome(call):
    """(result, None) or (None, the clear exception); anything else propagates (a test failure)."""
    try:
        result = call()
    except CLEAR as exc:
        assert str(exc), "an error without a message"
        record(f"refused: {type(exc).__name__}")
        return None, exc
    record("accepted: compared with the reference")
    return result, None


def assert_same(got, expect):
    assert isinstance(got, np.ndarray) and got.dtype == expect.dtype and got.shape == expect.shape, \
        (getattr(got, "dtype", type(got)), getattr(got, "shape", None), expect.dtype, expect.shape)
    assert np.array_equal(got, expect), "a wrong number"


def hostile_out(rng, draw, shape, dtype, inputs):
    """An out= array: right, or one of the ways of being wrong. Returns (out, must_refuse)."""
    kind = pick(draw, ["none", "none", "good", "spelling"], ["bigendian", "dtype", "shape", "fortran", "strided",
                                                           "readonly", "misaligned", "overlap", "overlap", "list"], 4)
    dtype = np.dtype(dtype)
    good = np.full(shape, 7, dtype)
    if kind == "none":
        return None, False
    if kind == "good":
        return good, False
    if kind == "bigendian":
        return good.astype(dtype.newbyteorder(">")), True
    if kind == "spelling":                       # allowed: the same dtype
        other = {np.dtype(np.uint64): np.ulonglong, np.dtype(np.int32): np.intc}.get(dtype, dtype)
        return good.astype(other), False
    if kind == "dtype":
        return good.astype(np.int64 if dtype != np.int64 else np.int32), True
    if kind == "shape":
        return np.zeros(shape + (1,), dtype), True
    if kind == "fortran":
        return np.asfortranarray(good), good.size > 0 and sum(s > 1 for s in shape) > 1
    if kind == "strided":
        big = np.zeros(tuple(2 * s for s in shape), dtype)
        return big[tuple(slice(None, None, 2) for _ in shape)], good.size > 0 and any(s > 1 for s in shape)
    if kind == "readonly":
        good.flags.writeable = False
        return good, True
    if kind == "misaligned":
        return misaligned(good), dtype.itemsize > 1 and good.size > 0
    if kind == "list":
        return good.tolist(), True
    # overlap: out laid over the memory of one of the (array) inputs
    arrays = [x for x in inputs if isinstance(x, np.ndarray) and x.size and x.flags.writeable and not x.dtype.hasobject]
    if not arrays or not good.size:
        return good, False
    victim = arrays[int(rng.integers(len(arrays)))]
    base = victim
    while base.base is not None and isinstance(base.base, np.ndarray):
        base = base.base
    raw = base.view(np.uint8).reshape(-1) if base.flags.c_contiguous else None
    if raw is None or raw.size < good.nbytes + dtype.itemsize:
        return good, False
    start = (-raw.ctypes.data) % dtype.itemsize
    if start + good.nbytes > raw.size:
        return good, False
    out = raw[start:start + good.nbytes].view(dtype).reshape(shape)
    return out, bool(np.may_share_memory(out, victim))


def as_pair(v, minimum):
    """The pair of ints a geometry argument means, or None when it is not a valid one (bool, float,
    str, None, negative, past 2**31 - 1, a sequence of other than two ints)."""
    def ok(e):
        return isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_)) and minimum <= e < 2**31
    if ok(v):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) or (isinstance(v, np.ndarray) and v.ndim == 1):
        if len(v) == 2 and all(ok(e) for e in v):
            return int(v[0]), int(v[1])
    return None


def draw_threads(draw):
    return pick(draw, [None, None, 1, 2, 3, 1000, 2**31, 2**63, np.int64(2)], [0, -1, True, 1.5, "2", np.float32(2)])


def threads_ok(t):
    return t is None or (isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 1)


# ---- regression tests: one per bug fixed (each failed before the fix) ----------------------------

def test_big_endian_words_are_converted_not_misread():
    rng = np.random.default_rng(0)
    a, b = np.sign(rng.standard_normal((5, 100))), np.sign(rng.standard_normal((40, 100)))
    aw, bw = reference.pack_bits(a), reference.pack_bits(b)
    expect = (a @ b.T).astype(np.int32)
    assert_same(K.bgemm(aw.astype(">u8"), bw, 100), expect)
    assert_same(K.bgemm(aw, bw.astype(">u8"), 100), expect)
    x = np.sign(rng.standard_normal((1, 70, 5, 5)))
    xw, ww = reference.pack_bits(x, axis=1), reference.pack_bits(np.ones((3, 70, 3, 3)), axis=1)
    expect = reference.binary_conv2d(x, np.ones((3, 70, 3, 3)), (1, 1), (1, 1), (1, 1)).astype(np.int32)
    assert_same(K.bconv2d(xw.astype(">u8"), ww.astype(">u8"), 70, padding=1, layout="nchw"), expect)
    assert_same(K.bmaxpool2d(xw.astype(">u8"), 2), K.bmaxpool2d(xw, 2))
    assert_same(K.pack_bits(x.astype(">f8"), axis=1), xw)


def test_big_endian_out_is_refused_by_name():
    w = np.zeros((4, 2), np.uint64)
    for out, call in ((np.zeros((4, 4), ">i4"), lambda o: K.bgemm(w, w, 100, out=o)),
                      (np.zeros((1, 3, 3, 8), ">i4"),
                       lambda o: K.bconv2d(np.zeros((1, 5, 5, 1), np.uint64), np.zeros((8, 3, 3, 1), np.uint64), 16,
                                           out=o)),
                      (np.zeros((1, 2, 2, 1), ">u8"), lambda o: K.bmaxpool2d(np.zeros((1, 4, 4, 1), np.uint64), 2,
                                                                            out=o))):
        with pytest.raises(TypeError, match="out: .*native byte order"):
            call(out)
        assert not out.any()


def test_every_spelling_of_uint64_is_accepted():
    rng = np.random.default_rng(1)
    aw, bw = random_words(rng, (3, 2)), random_words(rng, (4, 2))
    expect = K.bgemm(aw, bw, 100)
    for spelling in ("Q", np.ulonglong, "L", np.uint, "=u8", "<u8"):
        assert_same(K.bgemm(aw.astype(spelling), bw.astype(spelling), 100), expect)
    out = np.empty((1, 2, 2, 2), "Q")
    x = random_words(rng, (1, 4, 4, 2))
    assert K.bmaxpool2d(x.astype("Q"), 2, out=out) is out and np.array_equal(out, K.bmaxpool2d(x, 2))
    with pytest.raises(TypeError, match=r"got int64 \('<i8'\)"):      # the message shows what was wrong
        K.bgemm(aw.astype(np.int64), bw, 100)


@pytest.mark.parametrize("victim", ["a", "b"])
def test_bgemm_out_overlapping_an_operand_is_refused(victim):
    """B of 300 rows spans 10 panels: writing out while later panels are still read gave wrong values."""
    rng = np.random.default_rng(2)
    m, n, k = 8, 300, 64
    a, b = np.sign(rng.standard_normal((m, k))), np.sign(rng.standard_normal((n, k)))
    buf = np.zeros(m * n, np.int32)
    words = buf.view(np.uint64)
    aw = words[:m].reshape(m, 1) if victim == "a" else reference.pack_bits(a)
    bw = words[:n].reshape(n, 1) if victim == "b" else reference.pack_bits(b)
    if victim == "a":
        aw[:] = reference.pack_bits(a)
    else:
        bw[:] = reference.pack_bits(b)
    before = buf.copy()
    with pytest.raises(ValueError, match=f"out: shares memory with {victim}_words"):
        K.bgemm(aw, bw, k, out=buf.reshape(m, n), threads=2)
    assert np.array_equal(buf, before)


def test_conv_and_pool_out_overlapping_an_input_are_refused():
    flat = np.zeros(1 * 4 * 4 * 8, np.uint64)
    x = flat.reshape(1, 4, 4, 8)
    with pytest.raises(ValueError, match="shares memory with x_words"):
        K.bmaxpool2d(x, 2, out=flat[:32].reshape(1, 2, 2, 8))
    xw = np.zeros(1 * 5 * 5 + 64, np.uint64)
    with pytest.raises(ValueError, match="shares memory with x_words"):
        K.bconv2d(xw[:25].reshape(1, 5, 5, 1), np.zeros((2, 3, 3, 1), np.uint64), 16,
                  out=xw[:9].view(np.int32).reshape(1, 3, 3, 2))
    ws = K.Workspace()
    K.bgemm(np.zeros((2, 1), np.uint64), np.zeros((40, 1), np.uint64), 64, workspace=ws)
    panel = ws.get("panels", 80, np.uint64).view(np.int32)[:80].reshape(2, 40)
    with pytest.raises(ValueError, match="workspace"):
        K.bgemm(np.zeros((2, 1), np.uint64), np.zeros((40, 1), np.uint64), 64, out=panel, workspace=ws)


@pytest.mark.parametrize("param", ["gamma", "beta", "mean", "var"])
def test_threshold_fold_refuses_nan_parameters(param):
    """A NaN batch-norm parameter made every comparison False: thresholds 'always +1', silently."""
    p = {"gamma": np.array([1.0, -0.5], np.float32), "beta": np.array([0.2, 0.1], np.float32),
         "mean": np.array([0.0, 1.0], np.float32), "var": np.array([1.0, 2.0], np.float32)}
    p[param][1] = np.nan

    def bn(d):
        return (d - p["mean"]) / np.sqrt(p["var"] + np.float32(1e-5)) * p["gamma"] + p["beta"]

    with pytest.raises(ValueError, match="NaN"):
        threshold_fold(9, bn, 2)
    with pytest.raises(ValueError, match=f"^{param}: contains NaN"):
        threshold_fold(9, bn, 2, params=p)
    p[param][1] = np.inf
    with pytest.raises(ValueError, match=f"^{param}: contains Inf"):
        threshold_fold(9, bn, 2, params=p)


def test_threshold_fold_refuses_inexact_dtype_and_bad_ints():
    with pytest.raises(ValueError, match="k: .*float16"):
        threshold_fold(5000, lambda d: d, 1, dtype=np.float16)       # 4097 is not a float16
    with pytest.raises(TypeError, match="k"):
        threshold_fold(5.0, lambda d: d, 1)
    with pytest.raises(TypeError, match="channels"):
        threshold_fold(5, lambda d: d, True)
    with pytest.raises(TypeError, match="dtype"):
        threshold_fold(5, lambda d: d, 1, dtype=np.int32)


def test_threads_are_capped_at_the_usable_cpus(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = np.sign(rng.standard_normal((50, 130))), np.sign(rng.standard_normal((70, 130)))
    expect = (a @ b.T).astype(np.int32)
    for t in (1000, 2**31, 2**63, 10**30, np.uint64(2**64 - 1)):
        assert_same(K.bgemm(reference.pack_bits(a), reference.pack_bits(b), 130, threads=t), expect)
    assert K._threads(10**6) == K.usable_cpus()
    monkeypatch.setattr(K, "usable_cpus", lambda: 1)        # as in a container pinned to one CPU
    assert K._threads(1000) == 1 and K.default_threads() == 1
    with pytest.raises(TypeError, match="threads"):
        K.bgemm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 1, threads=2.0)


def _python(code, **env):
    """Run ``code`` in a fresh interpreter that imports the refbnn this test imports (installed, or a source
    checkout with the kernels built): not from the working directory, whose refbnn may lack the build."""
    import refbnn
    here = os.path.dirname(os.path.dirname(os.path.abspath(refbnn.__file__)))
    env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


def test_default_threads_are_capped_whatever_omp_num_threads_says():
    code = "from refbnn.kernels import compiled as c; k = c(); print(k.default_threads(), k.usable_cpus())"
    res = _python(code, OMP_NUM_THREADS="4096")
    assert res.returncode == 0, res.stderr
    threads, cpus = (int(v) for v in res.stdout.split())
    assert 1 <= threads <= cpus


@pytest.mark.parametrize("arg", ["stride", "padding", "dilation", "groups", "channels"])
@pytest.mark.parametrize("value", [2**31, 2**63, 2**64 + 5])
def test_ints_past_int32_are_refused_by_name(arg, value):
    xw, ww = np.zeros((1, 5, 5, 1), np.uint64), np.zeros((8, 3, 3, 1), np.uint64)
    kw = {"channels": 16, arg: value}
    with pytest.raises(ValueError, match=f"^{arg}: expected an int >= [01] and <= 2147483647"):
        K.bconv2d(xw, ww, **kw)
    if arg in ("stride", "padding"):
        with pytest.raises(ValueError, match=f"^{arg}: "):
            K.bmaxpool2d(xw, 2, **{arg: value})
    if arg == "channels":
        with pytest.raises(ValueError, match="^k: "):
            K.bgemm(xw[0, 0], xw[0, 0], value)


def test_unsupported_kernel_path_names_the_variable(monkeypatch):
    """As on a CPU without AVX-512: the error names REFBNN_KERNEL_PATH, the value and what runs."""
    monkeypatch.setattr(K, "_SUPPORTED", ("avx2", "scalar"))
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "avx512")
    w = np.zeros((1, 1), np.uint64)
    with pytest.raises(ValueError, match=r"REFBNN_KERNEL_PATH='avx512'.*supports \['avx2', 'scalar'\]"):
        K.bgemm(w, w, 1)
    with pytest.raises(RuntimeError, match="REFBNN_KERNEL_PATH"):              # still a RuntimeError too
        K.pack_bits(np.ones(3))
    with pytest.raises(ValueError, match="REFBNN_KERNEL_PATH"):
        kernels.binary_matmul(np.ones((2, 3)), np.ones((2, 3)), backend="cython")
    assert "REFBNN_KERNEL_PATH" in K.info()["active"]                       # refbnn info still prints
    monkeypatch.setenv("REFBNN_KERNEL_PATH", "avx1024")                      # a path that does not exist
    with pytest.raises(ValueError, match=r"REFBNN_KERNEL_PATH='avx1024'.*supports"):
        K.bmaxpool2d(np.zeros((1, 2, 2, 1), np.uint64), 2)
    with pytest.raises(TypeError, match="path"):
        K.bgemm(w, w, 1, path=["avx2"])


def test_bad_kernel_path_does_not_break_import():
    code = ("import refbnn, refbnn.kernels as k; print(refbnn.__name__); "
            "print(k.kernel_paths()['active'])")
    res = _python(code, REFBNN_KERNEL_PATH="avx1024")
    assert res.returncode == 0, res.stderr
    assert "REFBNN_KERNEL_PATH='avx1024'" in res.stdout


def test_unpack_bits_into_unsigned_dtype_is_refused():
    """uint8 cannot hold -1: 1 - 2 * bits wrapped to 255, a wrong number."""
    with pytest.raises(TypeError, match="dtype"):
        reference.unpack_bits(np.array([1], np.uint64), 3, dtype=np.uint8)
    assert reference.unpack_bits(np.array([1], ">u8"), 3).tolist() == [-1.0, 1.0, 1.0]
    assert reference.unpack_bits(np.array([1], "Q"), 3, dtype=np.int8).tolist() == [-1, 1, 1]


def test_bool_and_float_where_ints_are_expected():
    xw, ww = np.zeros((1, 5, 5, 1), np.uint64), np.zeros((8, 3, 3, 1), np.uint64)
    for kw in ({"stride": True}, {"padding": (1, True)}, {"groups": 1.0}, {"pad_value": True}, {"channels": 16.0}):
        with pytest.raises(TypeError, match=next(iter(kw))):
            K.bconv2d(xw, ww, **({"channels": 16} | kw))
    x = np.ones((1, 2, 3, 3))
    for kw in ({"stride": True}, {"groups": True}, {"pad_value": True}, {"padding": 2**31}):
        with pytest.raises(CLEAR, match=next(iter(kw))):
            kernels.binary_conv2d(x, x, **kw)


def test_bconv2d_float_multiplier_that_float32_cannot_hold_is_refused():
    xw, ww = np.zeros((1, 5, 5, 1), np.uint64), np.zeros((2, 3, 3, 1), np.uint64)
    with pytest.raises(ValueError, match="multiplier: .*float32"):
        K.bconv2d(xw, ww, 16, output="float", multiplier=np.array([1 / 3, 1.0]))      # float64 1/3 would round
    with pytest.raises(ValueError, match="bias: .*float32"):
        K.bconv2d(xw, ww, 16, output="float", bias=np.array([1e300, 0.0]))         # would become Inf
    # exactly representable values of any dtype and byte order are fine: all +1, dot = 9 * 16 = 144
    out = K.bconv2d(xw, ww, 16, output="float", multiplier=np.array([0.5, 2.0]), bias=np.array([3, -1], ">i8"))
    assert out.dtype == np.float32 and out[0, 0, 0].tolist() == [0.5 * 144 + 3, 2.0 * 144 - 1]


# ---- properties: every entry point on hostile input ----------------------------------------------

@hostile
@given(st.data())
def test_hostile_bgemm(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, n = draw(st.integers(0, 7)), draw(st.sampled_from([0, 1, 5, 31, 32, 33, 70]))
    k = draw(st.sampled_from([1, 5, 63, 64, 65, 130]))
    kw = (k + 63) // 64
    aw, bw = random_words(rng, (m, kw)), random_words(rng, (n, kw))
    bad = None
    la, lb = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))
    a_in, b_in = layout(aw, la, rng), layout(bw, lb, rng)
    if draw(st.integers(0, 9)) == 0:
        bad = draw(st.sampled_from(BAD_WORD_LAYOUTS))
        if draw(st.booleans()):
            a_in = bad_words(aw, bad)
        else:
            b_in = bad_words(bw, bad)
    k_in = draw(st.sampled_from(BAD_INTS)) if draw(st.integers(0, 9)) == 0 else k
    out, out_bad = hostile_out(rng, draw, (m, n), np.int32, [a_in, b_in])
    threads = draw_threads(draw)
    path = pick(draw, [None, None, "auto", "scalar", K.supported_paths()[0]], ["avx1024", 3, "AVX2", ""])
    clean_a, clean_b = (None if bad else clean(a_in)), (None if bad else clean(b_in))
    snap = snapshot([a_in, b_in])
    got, err = outcome(lambda: K.bgemm(a_in, b_in, k_in, threads=threads, out=out, path=path))
    unchanged(snap)
    if err is None:
        assert bad is None and not out_bad and threads_ok(threads) and path in (None, "auto", "scalar",
                                                                                  K.supported_paths()[0])
        assert isinstance(k_in, (int, np.integer)) and not isinstance(k_in, bool) and k_in == k
        expect = (unpack(clean_a, k) @ unpack(clean_b, k).T).astype(np.int32)
        assert_same(got, expect)
        if out is not None:
            assert got is out


def conv_reference(xw, ww, c, stride, padding, dilation, groups, pad_value):
    """int64 dot products (N, O, Ho, Wo) from the unpacked words, by the NumPy reference."""
    n, h, w, _ = xw.shape
    cg = c // groups
    cwg = ww.shape[-1]
    x = unpack(xw.reshape(n, h, w, groups, cwg), cg)                       # (N, H, W, g, cg)
    x = x.transpose(0, 3, 4, 1, 2).reshape(n, c, h, w)
    wt = unpack(ww, cg).transpose(0, 3, 1, 2)                              # (O, cg, kh, kw)
    return reference.binary_conv2d(x, wt, stride, padding, dilation, groups, pad_value).astype(np.int64)


def per_channel_values(draw, rng, o, kind):
    """A multiplier/bias (kind "f") or thresholds (kind "i") or flip (kind "b"), maybe hostile."""
    how = pick(draw, ["good", "good", "bigendian", "strided", "float64exact", "int", "list"],
               ["nan", "inf", "inexact", "shape", "dtype"], 4)
    if kind == "f":
        v = rng.standard_normal(o).astype(np.float32)
    elif kind == "i":
        v = rng.integers(-40, 40, o).astype(np.int64)
        if o and draw(st.booleans()):
            v[0] = draw(st.sampled_from([2**40, -2**40, 2**31, -2**31 - 1]))
    else:
        v = rng.random(o) < 0.5
    if how == "good":
        return v
    if how == "bigendian":
        return v.astype(v.dtype.newbyteorder(">"))
    if how == "strided":
        return np.repeat(v, 2)[::2]
    if how == "nan" and kind == "f" and o:
        v = v.copy()
        v[0] = np.nan
        return v
    if how == "inf" and kind == "f" and o:
        v = v.copy()
        v[-1] = -np.inf
        return v
    if how == "inexact" and kind == "f" and o:
        return v.astype(np.float64) + 1e-12
    if how == "shape":
        return np.concatenate([v, v[:1]])
    if how == "dtype":
        return v.astype(np.complex64) if kind != "b" else v.astype(np.int8)
    if how == "list":
        return v.tolist()
    if how == "float64exact":
        return v.astype(np.float64)
    if how == "int":
        return v.astype(np.int32) if kind != "b" else v.astype(np.int32)
    return v


@hostile
@given(st.data())
def test_hostile_bconv2d(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    g = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.sampled_from([1, 5, 64, 65]))
    output = pick(draw, ["int32", "float", "bits"], ["int8", 3, None], 16)
    og = 64 if output == "bits" and g > 1 else draw(st.integers(1, 9))
    o, c, cwg = g * og, g * cg, (cg + 63) // 64
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    n = pick(draw, [1, 1, 2], [0])
    h, w = pick(draw, [4, 5, 6, 7], [0, 1, 2, 3]), pick(draw, [4, 5, 6, 7], [0, 1, 2, 3])
    pad_value = pick(draw, [0.0, 1.0, -1.0, 0, np.float32(-1.0)], [True, 0.5, float("nan"), "0", None], 12)
    layout_ = pick(draw, ["nhwc", "nchw"], ["NHWC", None], 16) if output != "bits" else "nhwc"
    xw, ww = random_words(rng, (n, h, w, g * cwg)), random_words(rng, (o, kh, kw, cwg))
    lx, lw = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))
    x_in, w_in = layout(xw, lx, rng), layout(ww, lw, rng)
    bad = None
    if draw(st.integers(0, 15)) == 0:
        bad = draw(st.sampled_from(BAD_WORD_LAYOUTS))
        if draw(st.booleans()):
            x_in = bad_words(xw, bad)
        else:
            w_in = bad_words(ww, bad)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": g, "channels": c}
    hostile_arg = None
    if draw(st.integers(0, 11)) == 0:
        hostile_arg = draw(st.sampled_from(sorted(geometry)))
        geometry[hostile_arg] = draw(st.sampled_from(BAD_INTS))
    extra = {}
    mul = bia = thr = flp = clamp = None
    if output == "float":
        if draw(st.booleans()):
            mul = extra["multiplier"] = per_channel_values(draw, rng, o, "f")
        if draw(st.booleans()):
            bia = extra["bias"] = per_channel_values(draw, rng, o, "f")
        if draw(st.booleans()):
            lo = int(rng.integers(-30, 30))
            clamp = extra["clamp"] = draw(st.sampled_from([(lo, lo + 5), (lo, lo - 1), (lo,), (1.0, 2.0),
                                                             (-2**31, 2**31 - 1), (-2**31 - 1, 0), "ab"]))
    elif output == "bits":
        thr = extra["thresholds"] = per_channel_values(draw, rng, o, "i")
        if draw(st.booleans()):
            flp = extra["flip"] = per_channel_values(draw, rng, o, "b")
    elif draw(st.integers(0, 5)) == 0:
        extra["multiplier"] = np.ones(o, np.float32)          # not for this output: refused
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    oshape = (max(n, 0), max(ho, 0), max(wo, 0))
    if output == "bits":
        oshape, odtype = oshape + ((o + 63) // 64,), np.uint64
    else:
        oshape = oshape + (o,) if layout_ != "nchw" else (oshape[0], o) + oshape[1:]
        odtype = np.float32 if output == "float" else np.int32
    out, out_bad = hostile_out(rng, draw, oshape, odtype, [x_in, w_in])
    threads = draw_threads(draw)
    clean_x = None if bad else clean(x_in)
    clean_w = None if bad else clean(w_in)
    snap = snapshot([x_in, w_in, mul, bia, thr, flp])
    got, err = outcome(lambda: K.bconv2d(x_in, w_in, geometry["channels"], geometry["stride"], geometry["padding"],
                                         geometry["dilation"], geometry["groups"], pad_value, output=output,
                                         layout=layout_, out=out, threads=threads, **extra))
    unchanged(snap)
    if err is not None:
        return
    assert bad is None and not out_bad and threads_ok(threads)
    assert output in ("int32", "float", "bits") and pad_value in (0.0, 1.0, -1.0) and not isinstance(pad_value, bool)
    if hostile_arg is not None:                 # accepted: it must have been a valid value after all
        v = geometry[hostile_arg]
        if hostile_arg in ("groups", "channels"):
            assert isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v < 2**31
            assert v == {"groups": g, "channels": c}[hostile_arg]
        else:
            assert as_pair(v, 0 if hostile_arg == "padding" else 1) is not None
    stride, padding, dilation = (as_pair(geometry[a], 0) for a in ("stride", "padding", "dilation"))
    dot = conv_reference(clean_x, clean_w, c, stride, padding, dilation, g, float(pad_value))
    if output == "int32":
        expect = dot.astype(np.int32)
    elif output == "float":
        y = (np.clip(dot, *clamp) if clamp is not None else dot).astype(np.float32)
        if mul is not None:
            m32 = np.asarray(mul, np.float64)
            assert np.isfinite(m32).all() and np.array_equal(m32.astype(np.float32), m32)
            y = y * m32.astype(np.float32).reshape(1, -1, 1, 1)
        if bia is not None:
            b32 = np.asarray(bia, np.float64)
            assert np.isfinite(b32).all() and np.array_equal(b32.astype(np.float32), b32)
            y = y + b32.astype(np.float32).reshape(1, -1, 1, 1)
        expect = y
    else:
        t = np.asarray(thr)
        assert t.dtype.kind in "iu"
        f = np.zeros(o, bool) if flp is None else np.asarray(flp)
        assert f.dtype == bool
        bits = (dot < t.astype(np.float64).reshape(1, -1, 1, 1)) ^ f.reshape(1, -1, 1, 1)
        expect = reference.pack_bits(np.where(bits, -1.0, 1.0), axis=1)
    if output != "bits" and layout_ == "nhwc":
        expect = np.ascontiguousarray(expect.transpose(0, 2, 3, 1))
    assert_same(got, expect)
    if out is not None:
        assert got is out


@hostile
@given(st.data())
def test_hostile_bmaxpool2d(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, cw = pick(draw, [1, 2], [0]), pick(draw, [1, 2, 3], [0])
    h, w = pick(draw, [3, 4, 5, 6], [0, 1, 2]), pick(draw, [3, 4, 5, 6], [0, 1, 2])
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.sampled_from([None, 1, 2, 3, (1, 2), (2, 1)]))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    kernel = (kh, kw)
    hostile_arg = None
    if draw(st.integers(0, 7)) == 0:
        hostile_arg = draw(st.sampled_from(["kernel", "stride", "padding"]))
        value = draw(st.sampled_from(BAD_INTS))
        kernel, stride, padding = ((value if hostile_arg == "kernel" else kernel),
                                   (value if hostile_arg == "stride" else stride),
                                   (value if hostile_arg == "padding" else padding))
    xw = random_words(rng, (n, h, w, cw))
    x_in = layout(xw, draw(st.sampled_from(LAYOUTS)), rng)
    bad = None
    if draw(st.integers(0, 9)) == 0:
        bad = draw(st.sampled_from(BAD_WORD_LAYOUTS))
        x_in = bad_words(xw, bad)
    kp, sp, pp = as_pair(kernel, 1), as_pair(stride, 1) if stride is not None else None, as_pair(padding, 0)
    valid = kp is not None and pp is not None and (stride is None or sp is not None)
    if valid:
        sp = kp if stride is None else sp
        ho, wo = (h + 2 * pp[0] - kp[0]) // sp[0] + 1, (w + 2 * pp[1] - kp[1]) // sp[1] + 1
    if not valid or ho * wo > 10**4:             # a huge padding: refused (more than half the window)
        ho = wo = 1
    out, out_bad = hostile_out(rng, draw, (n, max(ho, 0), max(wo, 0), cw), np.uint64, [x_in])
    threads = draw_threads(draw)
    clean_x = None if bad else clean(x_in)
    snap = snapshot([x_in])
    got, err = outcome(lambda: K.bmaxpool2d(x_in, kernel, stride, padding, threads=threads, out=out))
    unchanged(snap)
    if err is not None:
        return
    assert bad is None and not out_bad and threads_ok(threads) and valid
    assert h >= 1 and w >= 1 and pp[0] <= kp[0] // 2 and pp[1] <= kp[1] // 2
    x = unpack(clean_x, 64 * cw).transpose(0, 3, 1, 2)                  # (N, C, H, W), every bit
    cols = im2col(x, kp[0], kp[1], sp, pp, (1, 1), pad_value=-np.inf)
    pooled = cols.max(axis=(2, 3)) if cols.size else np.zeros(cols.shape[:2] + cols.shape[4:])
    expect = reference.pack_bits(pooled, axis=1) if cw else np.zeros((n, ho, wo, 0), np.uint64)
    assert_same(got.view(np.uint64), expect)
    if out is not None:
        assert got is out


@hostile
@given(st.data())
def test_hostile_pack_bits(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ndim = pick(draw, [1, 2, 3], [0], 16)
    shape = tuple(pick(draw, [1, 3, 64, 65], [0], 12) for _ in range(ndim))
    dtype = pick(draw, [np.float32, np.float64, np.float16, ">f4", ">f8", np.int8, np.int64, ">i2", np.uint64],
                 [bool, np.complex64, object, np.longdouble, "U3"], 6)
    x = (rng.standard_normal(shape) * 3).round()
    if draw(st.integers(0, 5)) == 0 and x.size:
        x.flat[int(rng.integers(x.size))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.0, 1e300, -1e-300]))
    with np.errstate(all="ignore"):
        x = np.asarray(x.astype(dtype) if np.dtype(dtype).kind not in "iub" or np.isfinite(x).all() else x)
    x_in = layout(x, draw(st.sampled_from(LAYOUTS)), rng) if x.ndim else x
    if draw(st.integers(0, 15)) == 0:
        x_in = x.tolist()
    axis = pick(draw, list(range(-ndim, ndim)) or [-1], [ndim, -ndim - 1, 2**31, True, 1.0, None])
    polarity = pick(draw, ["lce", "dabnn", "bitorch"], ["LCE", 0, None])
    threads = draw_threads(draw)
    clean_x = clean(x_in) if isinstance(x_in, np.ndarray) else None
    snap = snapshot([x_in])
    got, err = outcome(lambda: K.pack_bits(x_in, axis=axis, polarity=polarity, threads=threads))
    unchanged(snap)
    if err is not None:
        return
    assert threads_ok(threads) and not isinstance(axis, bool) and isinstance(axis, int)
    assert clean_x.dtype.kind in "iuf" and np.isfinite(clean_x.astype(np.float64)).all()
    assert clean_x.dtype != np.longdouble
    assert_same(got, reference.pack_bits(clean_x.astype(np.float64), axis=axis, polarity=polarity))


@hostile
@given(st.data())
def test_hostile_unpack_bits(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ndim = draw(st.integers(1, 3))
    nbits = draw(st.sampled_from([0, 1, 63, 64, 65, 130]))
    shape = tuple(draw(st.sampled_from([0, 1, 3])) for _ in range(ndim - 1)) + (-(-nbits // 64),)
    words = random_words(rng, shape)
    w_in = layout(words, draw(st.sampled_from(LAYOUTS)), rng)
    bad = None
    if draw(st.integers(0, 7)) == 0:
        bad = draw(st.sampled_from(BAD_WORD_LAYOUTS[:6]))
        w_in = bad_words(words, bad)
    n = pick(draw, [nbits], [nbits + 64, -1, True, 2**70, 1.0, None])
    axis = pick(draw, list(range(-ndim, ndim)), [ndim, -ndim - 1, True, 0.0])
    dtype = pick(draw, [np.float32, np.float64, np.int8, np.int32, "f4", ">f8"], [np.uint8, bool, "nonsense", None])
    polarity = pick(draw, ["lce", "dabnn", "bitorch"], ["xnor", None])
    clean_w = None if bad else clean(w_in)
    snap = snapshot([w_in])
    got, err = outcome(lambda: reference.unpack_bits(w_in, n, axis=axis, polarity=polarity, dtype=dtype))
    unchanged(snap)
    if err is not None:
        return
    assert bad is None and n == nbits and not isinstance(n, bool) and not isinstance(axis, bool)
    assert np.dtype(dtype).kind in "fi"
    signs = unpack(clean_w, nbits)                                      # LCE +-1, the n values last
    if polarity != "lce":
        signs = -signs
    assert_same(got, np.moveaxis(signs.astype(dtype), -1, axis))


@hostile
@given(st.data())
def test_hostile_threshold_fold(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = draw(st.integers(1, 4))
    k = pick(draw, [0, 1, 9, 64, 2049], [-1, True, 3.0, 2**31, None])
    params = {name: rng.standard_normal(channels).astype(np.float32) for name in ("gamma", "beta", "mean")}
    params["var"] = rng.uniform(0.1, 2, channels).astype(np.float32)
    hostile_param = None
    if draw(st.integers(0, 2)) == 0:
        hostile_param = draw(st.sampled_from(sorted(params)))
        params[hostile_param][int(rng.integers(channels))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0]))
    eps = np.float32(draw(st.sampled_from([1e-5, 0.0])))
    sign_zero = pick(draw, [1.0, -1.0, 1], [0.0, True, np.nan, "1"])
    dtype = pick(draw, [np.float32, np.float64, np.float16], [np.int32, "nonsense"])
    pass_params = draw(st.booleans())

    def bn(d):
        with np.errstate(all="ignore"):
            return (d - params["mean"]) / np.sqrt(params["var"] + eps) * params["gamma"] + params["beta"]

    snap = snapshot(list(params.values()))
    got, err = outcome(lambda: threshold_fold(k, bn, channels, sign_zero=sign_zero, dtype=dtype,
                                              params=params if pass_params else None))
    unchanged(snap)
    if err is not None:
        return
    assert sign_zero in (1.0, -1.0) and not isinstance(sign_zero, bool) and not isinstance(k, bool)
    assert np.dtype(dtype).kind == "f" and k <= 2 ** (np.finfo(dtype).nmant + 1)
    assert not pass_params or all(np.isfinite(v).all() for v in params.values())
    thr, flip = got
    assert thr.dtype == np.int32 and flip.dtype == bool and thr.shape == flip.shape == (channels,)
    d = np.arange(-k, k + 1, dtype=dtype)[:, None] * np.ones((1, channels), dtype)
    z = bn(d)
    assert not np.isnan(z).any(), "a NaN pre-sign value folded into a threshold"
    neg = z < 0 if sign_zero == 1.0 else z <= 0
    assert np.array_equal((np.arange(-k, k + 1)[:, None] < thr) ^ flip, neg)


def float_signs(rng, shape, dtype, hostile_value=None):
    x = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    if hostile_value is not None and x.size:
        x.flat[int(rng.integers(x.size))] = hostile_value
    with np.errstate(invalid="ignore"):
        return x.astype(dtype)


@hostile
@given(st.data())
def test_hostile_binary_matmul(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, n, k = draw(st.integers(0, 5)), draw(st.integers(0, 40)), draw(st.sampled_from([0, 1, 64, 65, 130]))
    dta, dtb = (pick(draw, [np.float32, np.float64], [">f8", np.float16, np.int64]) for _ in range(2))
    hv = pick(draw, [None], [0.0, 0.5, np.nan, np.inf, -2.0], 4)
    a = layout(float_signs(rng, (m, k), dta, hv), draw(st.sampled_from(LAYOUTS)), rng)
    b = layout(float_signs(rng, (n, k), dtb), draw(st.sampled_from(LAYOUTS)), rng)
    if draw(st.integers(0, 15)) == 0:
        b = b[..., None]
    backend = draw(st.sampled_from(["cython", "auto", "numpy"]))
    snap = snapshot([a, b])
    got, err = outcome(lambda: kernels.binary_matmul(a, b, backend=backend))
    unchanged(snap)
    if err is not None:
        return
    ca, cb = clean(a), clean(b)
    assert ca.dtype.kind == "f" and cb.dtype.kind == "f" and np.isfinite(ca).all()
    expect = reference.binary_matmul(ca, cb)
    if backend != "numpy" and ca.size and cb.size:
        assert set(np.unique(ca)) <= {-1.0, 1.0} and set(np.unique(cb)) <= {-1.0, 1.0}
    assert_same(got, expect)


@hostile
@given(st.data())
def test_hostile_binary_conv2d(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    g = draw(st.sampled_from([1, 2]))
    cg, og = pick(draw, [1, 3, 65], [0]), pick(draw, [1, 2, 3], [0])
    kh, kw = pick(draw, [1, 2, 3], [0]), draw(st.integers(1, 3))
    n, h, w = pick(draw, [1, 2], [0]), pick(draw, [3, 4, 5], [0, 1]), pick(draw, [3, 4, 5], [0, 1])
    dtype = pick(draw, [np.float32, np.float64], [">f4", np.int32])
    hv = pick(draw, [None], [0.0, np.nan, 3.0], 6)
    x = layout(float_signs(rng, (n, g * cg, h, w), dtype, hv), draw(st.sampled_from(LAYOUTS)), rng)
    wt = layout(float_signs(rng, (g * og, cg, kh, kw), draw(st.sampled_from([np.float32, np.float64]))),
                draw(st.sampled_from(LAYOUTS)), rng)
    geometry = {"stride": (draw(st.integers(1, 2)), 1), "padding": draw(st.integers(0, 2)),
                "dilation": draw(st.integers(1, 2)), "groups": g}
    hostile_arg = None
    if draw(st.integers(0, 5)) == 0:
        hostile_arg = draw(st.sampled_from(sorted(geometry)))
        bad_values = [-1, True, 1.0, 2**31, "2", None, (1, 2, 3)]   # no huge padding: the reference would allocate it
        geometry[hostile_arg] = draw(st.sampled_from(bad_values + ([2**31 - 1] if hostile_arg != "padding" else [])))
    pad_value = pick(draw, [0.0, 1.0, -1.0], [True, 0.5])
    backend = draw(st.sampled_from(["cython", "auto", "numpy"]))
    snap = snapshot([x, wt])
    got, err = outcome(lambda: kernels.binary_conv2d(x, wt, pad_value=pad_value, backend=backend, **geometry))
    unchanged(snap)
    if err is not None:
        return
    assert not isinstance(pad_value, bool)
    s, pd, dl = as_pair(geometry["stride"], 1), as_pair(geometry["padding"], 0), as_pair(geometry["dilation"], 1)
    assert s and pd and dl and geometry["groups"] == g
    cx, cw_ = clean(x), clean(wt)
    expect = reference.binary_conv2d(cx, cw_, s, pd, dl, g, pad_value)
    if backend != "numpy" and cx.size and cw_.size:
        assert set(np.unique(cx)) <= {-1.0, 1.0} and set(np.unique(cw_)) <= {-1.0, 1.0}
    assert_same(got, expect)
