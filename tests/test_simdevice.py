"""The simulated device (tests/simdevice.py) is the oracle of the device tests (tests/test_device.py),
so its own rules are checked here: its arrays refuse implicit conversion to NumPy and mixing with
NumPy arrays (as CuPy's do), reductions stay on the device as 0-d arrays, every device -> host value
is counted (and refused inside ``forbid_syncs``), host -> device copies are counted, and the numbers
are NumPy's, bit for bit."""
import copy
import re

import numpy as np
import pytest
import simdevice as sd

from refbnn.checks import array_module, on_host, to_host


@pytest.fixture(autouse=True)
def _clean():
    sd.reset()
    yield
    sd.reset()


def _host(seed=0, shape=(3, 4), dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _dev(seed=0, shape=(3, 4), dtype=np.float32):
    return sd.asarray(_host(seed, shape, dtype))


# -- the host boundary ------------------------------------------------------------------------------

@pytest.mark.parametrize("convert", [np.asarray, np.array, np.ascontiguousarray,
                                     lambda a: np.asarray(a, dtype=np.float64)])
def test_implicit_conversion_to_numpy_raises(convert):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        convert(_dev())
    assert sd.syncs == []  # a refused conversion reads nothing


@pytest.mark.parametrize("op", [
    lambda d, h: d + h, lambda d, h: h + d, lambda d, h: d * h, lambda d, h: h - d, lambda d, h: d @ h.T,
    lambda d, h: np.add(d, h), lambda d, h: np.where(d > 0, h, d), lambda d, h: np.concatenate([d, h]),
    lambda d, h: sd.maximum(d, h), lambda d, h: sd.stack([d, h]), lambda d, h: d.__setitem__(0, h[0]),
])
def test_mixing_with_numpy_arrays_raises(op):
    with pytest.raises(TypeError, match="NumPy array .* mixed with device arrays"):
        op(_dev(0), _host(1))


def test_python_scalars_and_device_arrays_mix():
    d = _dev()
    for out in (d + 1, 2.0 * d, d / 3.0, -d, abs(d), d ** 2, d > 0, np.float32(2) * d):
        assert isinstance(out, sd.DeviceArray)
    assert sd.syncs == []


@pytest.mark.parametrize("reduce", [
    lambda a: a.sum(), lambda a: a.mean(), lambda a: a.max(), lambda a: a.min(), lambda a: abs(a).mean(),
    lambda a: (a > 0).any(), lambda a: (a > 0).all(), lambda a: a.argmax(), lambda a: np.sum(a),
    lambda a: np.count_nonzero(a > 0), lambda a: a[1, 2], lambda a: a.std(),
])
def test_reductions_and_scalar_indexing_give_0d_device_arrays(reduce):
    d, h = _dev(), _host()
    out = reduce(d)
    assert isinstance(out, sd.DeviceArray) and out.shape == ()
    assert sd.syncs == []
    want = reduce(h)
    got = out.get()
    assert got.dtype == np.asarray(want).dtype and got.tobytes() == np.asarray(want).tobytes()


@pytest.mark.parametrize("kind,read", [
    ("float()", float), ("int()", lambda a: int(a.astype(np.int64))), ("bool()", lambda a: bool(a > 0)),
    ("item()", lambda a: a.item()), ("get()", lambda a: a.get()), ("tolist()", lambda a: a.tolist()),
    ("index", lambda a: [10, 20, 30][a.astype(np.int64)]),
])
def test_every_host_read_is_counted_and_refused_inside_forbid_syncs(kind, read):
    d = sd.asarray(np.float32(1.5))
    read(d)
    assert len(sd.syncs) == 1 and sd.syncs[0].startswith(f"{kind} at ")
    assert __file__ in sd.syncs[0]  # names the caller's file and line, not simdevice's
    with sd.forbid_syncs():
        with pytest.raises(sd.HostSync, match=f"device -> host synchronisation: {re.escape(kind)}"):
            read(d)
    assert len(sd.syncs) == 2  # the refused read is counted too
    read(d)  # allowed again after the block
    assert len(sd.syncs) == 3


def test_if_on_a_device_value_is_a_sync():
    d = _dev()
    with sd.forbid_syncs(), pytest.raises(sd.HostSync, match="bool"):
        if (d > 0).any():
            pass


def test_forbid_nests_and_allow_lifts_it_within():
    d = sd.asarray(np.float32(1.0))
    with sd.forbid_syncs():
        with sd.forbid_syncs():
            pass
        with pytest.raises(sd.HostSync):
            float(d)  # the outer block still forbids
        with sd.allow_syncs():
            float(d)
            with sd.forbid_syncs(), pytest.raises(sd.HostSync):
                float(d)
            float(d)
        with pytest.raises(sd.HostSync):
            float(d)
    float(d)
    assert len(sd.syncs) == 6


def test_to_host_is_one_counted_copy():
    d = _dev()
    h = to_host(d)
    assert type(h) is np.ndarray and np.array_equal(h, _host())
    assert len(sd.syncs) == 1
    h[0, 0] = 99.0  # a copy: the device array is unchanged
    assert d[0, 0].get() != 99.0


def test_uploads_are_counted_and_device_arrays_are_not():
    h = _host()
    d = sd.asarray(h)
    assert len(sd.uploads) == 1 and sd.uploads[0].startswith("(3, 4) at ") and __file__ in sd.uploads[0]
    sd.asarray(d)
    sd.asarray(d, dtype=np.float64)
    d[sd.asarray(np.array([0, 2]))]  # a device index: no upload
    assert len(sd.uploads) == 2  # sd.asarray(np index array) above
    d[np.array([0, 2])]  # a NumPy index array is uploaded (as CuPy does)
    assert len(sd.uploads) == 3 and sd.uploads[-1].startswith("index (2,)")
    h[0, 0] = 42.0  # asarray copied the host array
    assert d[0, 0].get() != 42.0
    sd.reset()
    assert sd.syncs == [] and sd.uploads == []


def test_array_module_and_namespace():
    d = _dev()
    assert d.__array_namespace__() is sd
    assert array_module(d) is sd and not on_host(d)
    assert array_module(d.sum()) is sd  # a 0-d result stays there
    assert array_module(_host()) is np and on_host(np.float32(1.0)) and on_host(1.0)
    assert sd.get_array_module(d, _host()) is sd and sd.get_array_module(_host()) is np
    assert sd.float32 is np.float32 and sd.newaxis is None and sd.inf == np.inf
    assert isinstance(sd.asnumpy(d), np.ndarray) and len(sd.syncs) == 1


# -- the numbers are NumPy's ------------------------------------------------------------------------

@pytest.mark.parametrize("name,fn", [
    ("matmul", lambda xp, a, b: a @ b.T),
    ("exp-log", lambda xp, a, b: xp.log(xp.exp(a) + 1.0)),
    ("sum-axis", lambda xp, a, b: a.sum(axis=1, keepdims=True)),
    ("mean-var", lambda xp, a, b: a.var(axis=0) + a.mean(axis=0)),
    ("where-clip", lambda xp, a, b: xp.where(a > b, xp.clip(a, -0.5, 0.5), b)),
    ("sign", lambda xp, a, b: xp.sign(a) * xp.abs(b)),
    ("tanh-sqrt", lambda xp, a, b: xp.tanh(a) / xp.sqrt(b * b + 1e-3)),
    ("argmax", lambda xp, a, b: a.argmax(axis=1)),
    ("pad", lambda xp, a, b: xp.pad(a, ((1, 1), (2, 0)))),
    ("gather", lambda xp, a, b: a[xp.asarray(np.array([2, 0, 1])), xp.asarray(np.array([3, 1, 0]))]),
    ("astype", lambda xp, a, b: (a * 1e3).astype(np.int32)),
    ("stack", lambda xp, a, b: xp.stack([a, b]).reshape(-1)),
    ("einsum", lambda xp, a, b: xp.einsum("ij,ij->i", a, b)),
    ("float64-mix", lambda xp, a, b: a.astype(np.float64) * b),
])
def test_results_equal_numpy_bit_for_bit(name, fn):
    ha, hb = _host(0), _host(1)
    want = fn(np, ha, hb)
    got = fn(sd, sd.asarray(ha), sd.asarray(hb))
    assert isinstance(got, sd.DeviceArray)
    got = got.get()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), name


def test_in_place_updates_reach_the_device_array():
    h, d = _host(), _dev()
    idx = np.array([0, 2])
    h[idx, 1] -= 1.0
    d[sd.asarray(idx), 1] -= 1.0
    h *= 0.5
    d *= 0.5
    d2 = d
    d2 += 1.0  # the same object
    h += 1.0
    assert d2 is d and d.get().tobytes() == h.tobytes()


def test_copies_are_independent():
    d = _dev()
    for c in (d.copy(), copy.copy(d), copy.deepcopy(d), sd.array(d)):
        assert isinstance(c, sd.DeviceArray)
        c[0, 0] = 7.0
        assert d[0, 0].get() != 7.0


def test_attributes_follow_the_array():
    d = _dev(shape=(2, 3, 4))
    assert d.shape == (2, 3, 4) and d.ndim == 3 and d.size == 24 and d.dtype == np.float32
    assert len(d) == 2 and d.T.shape == (4, 3, 2) and d.flags.c_contiguous and d.nbytes == 96
    assert [isinstance(row, sd.DeviceArray) for row in d] == [True, True]
    assert sd.syncs == []

