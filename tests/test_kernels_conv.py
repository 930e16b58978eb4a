"""bconv2d against the NumPy reference convolution of the same +-1 values, exactly: every padding
mode (zero with its correction, +1, -1), strides, dilation, groups, empty batches, non-contiguous
inputs, the float output transform, bit-packed output with thresholds (batch norm + sign folded,
negative gammas included), on every SIMD path the CPU has."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refbnn import ops
from refbnn.kernels import compiled, reference, threshold_fold

K = compiled()
seeds = st.integers(0, 2**32 - 1)


def random_conv(rng, max_batch=2):
    """Random geometry and +-1 data: (x, w, stride, padding, dilation, groups, pad_value)."""
    g = int(rng.choice([1, 1, 2, 3]))
    cg = int(rng.choice([1, 5, 63, 64, 65, 100, 130]))
    og = int(rng.integers(1, 40))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = tuple(int(v) for v in rng.integers(0, 3, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    h = int(rng.integers(max(1, (kh - 1) * dilation[0] + 1 - 2 * padding[0]), 8))
    w = int(rng.integers(max(1, (kw - 1) * dilation[1] + 1 - 2 * padding[1]), 8))
    n = int(rng.integers(0, max_batch + 1))
    x = np.where(rng.random((n, g * cg, h, w)) < 0.5, -1.0, 1.0).astype(np.float32)
    wt = np.where(rng.random((g * og, cg, kh, kw)) < 0.5, -1.0, 1.0).astype(np.float32)
    pad_value = float(rng.choice([0.0, 1.0, -1.0]))
    return x, wt, stride, padding, dilation, g, pad_value


def pack_input(x, groups):
    """NCHW +-1 -> NHWC words, each group's channels in their own words."""
    n, c, h, w = x.shape
    words = reference.pack_bits(x.reshape(n, groups, c // groups, h, w), axis=2)   # (N, g, H, W, CWg)
    return np.ascontiguousarray(words.transpose(0, 2, 3, 1, 4)).reshape(n, h, w, groups * words.shape[-1])


@given(seeds, st.sampled_from(["nhwc", "nchw"]), st.integers(1, 2))
def test_bconv2d_int32_matches_reference(kernel_path, seed, layout, threads):
    rng = np.random.default_rng(seed)
    x, wt, s, p, d, g, pv = random_conv(rng)
    expect = reference.binary_conv2d(x, wt, s, p, d, g, pv)
    xw, ww = pack_input(x, g), reference.pack_bits(wt, axis=1)
    if rng.random() < 0.5 and xw.size:   # non-contiguous activations: spare words per pixel, flipped rows
        spare = np.zeros(xw.shape[:3] + (xw.shape[3] + 2,), np.uint64)
        spare[..., 1:-1] = xw
        xw = spare[:, ::-1, :, 1:-1]
        x = x[:, :, ::-1]
        expect = reference.binary_conv2d(np.ascontiguousarray(x), wt, s, p, d, g, pv)
    out = K.bconv2d(xw, ww, x.shape[1], s, p, d, g, pv, layout=layout, threads=threads)
    assert out.dtype == np.int32
    assert np.array_equal(out if layout == "nchw" else out.transpose(0, 3, 1, 2), expect)


@given(seeds, st.sampled_from(["nhwc", "nchw"]))
def test_bconv2d_float_transform(kernel_path, seed, layout):
    """float32(clip(dot, lo, hi)) * multiplier + bias, rounded as NumPy's float32 arithmetic."""
    rng = np.random.default_rng(seed)
    x, wt, s, p, d, g, pv = random_conv(rng)
    o, k = wt.shape[0], wt[0].size
    dot = reference.binary_conv2d(x, wt, s, p, d, g, pv).astype(np.int64)
    mul = rng.standard_normal(o).astype(np.float32) if rng.random() < 0.8 else None
    bias = rng.standard_normal(o).astype(np.float32) if rng.random() < 0.8 else None
    clamp = None
    if rng.random() < 0.5:
        lo = int(rng.integers(-k - 1, k + 1))
        clamp = (lo, int(rng.integers(lo, k + 2)))
    y = np.clip(dot, *clamp) if clamp else dot
    y = y.astype(np.float32)
    if mul is not None:
        y = y * mul.reshape(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    out = K.bconv2d(pack_input(x, g), reference.pack_bits(wt, axis=1), x.shape[1], s, p, d, g, pv,
                    output="float", multiplier=mul, bias=bias, clamp=clamp, layout=layout)
    assert out.dtype == np.float32
    assert np.array_equal(out if layout == "nchw" else out.transpose(0, 3, 1, 2), y)


@given(seeds)
def test_bconv2d_bits_output(kernel_path, seed):
    """bit o = (dot < thresholds[o]) XOR flip[o], packed along the output channels."""
    rng = np.random.default_rng(seed)
    x, wt, s, p, d, g, pv = random_conv(rng)
    o, k = wt.shape[0], wt[0].size
    if g > 1:                             # grouped bit-packed output needs whole words per group
        wt = np.where(rng.random((64 * g,) + wt.shape[1:]) < 0.5, -1.0, 1.0).astype(np.float32)
        o = wt.shape[0]
    dot = reference.binary_conv2d(x, wt, s, p, d, g, pv)
    thr = rng.integers(-k - 2, k + 3, o)
    thr[rng.random(o) < 0.1] = -2**31
    thr[rng.random(o) < 0.1] = 2**40                   # clipped to int32: still "always"
    flip = rng.random(o) < 0.5
    bits = (dot < thr.reshape(1, -1, 1, 1)) ^ flip.reshape(1, -1, 1, 1)
    out = K.bconv2d(pack_input(x, g), reference.pack_bits(wt, axis=1), x.shape[1], s, p, d, g, pv,
                    output="bits", thresholds=thr, flip=flip)
    assert out.dtype == np.uint64
    assert np.array_equal(out, reference.pack_bits(np.where(bits, -1.0, 1.0), axis=1))


@given(seeds, st.sampled_from([1.0, -1.0]))
def test_batchnorm_and_sign_fold_into_bits(kernel_path, seed, sign_zero):
    """conv -> scale -> batch norm (eval, gammas of both signs and zero) -> sign, as the float layers
    compute it, equals bconv2d's bit-packed output with the folded thresholds."""
    rng = np.random.default_rng(seed)
    x, _, _, _, _, _, pv = random_conv(rng)       # a batch, channels and a pad value
    wt = np.where(rng.random((int(rng.integers(1, 80)), x.shape[1], 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    o, k = wt.shape[0], wt[0].size
    x = np.where(rng.random(x.shape[:2] + (6, 6)) < 0.5, -1.0, 1.0).astype(np.float32)
    alpha = rng.uniform(0.1, 2.0, o).astype(np.float32)
    gamma = rng.standard_normal(o).astype(np.float32)
    gamma[rng.random(o) < 0.15] = 0.0
    beta, mean = (rng.standard_normal(o) * 3).astype(np.float32), (rng.standard_normal(o) * 5).astype(np.float32)
    var = rng.uniform(0.5, 4.0, o).astype(np.float32)

    def chain(y):       # the float ops after the binary product, on a batch with channels on axis 1
        z, _ = ops.batchnorm_forward(y * alpha.reshape((1, -1) + (1,) * (y.ndim - 2)), gamma, beta,
                                     mean.copy(), var.copy(), training=False)
        return z

    thr, flip = threshold_fold(k, chain, o, sign_zero=sign_zero)
    z = chain(reference.binary_conv2d(x, wt, (1, 1), (1, 1), (1, 1), 1, pv))
    expect = reference.pack_bits(np.where(z < 0, -1.0, np.where(z > 0, 1.0, sign_zero)), axis=1)
    out = K.bconv2d(pack_input(x, 1), reference.pack_bits(wt, axis=1), x.shape[1], 1, 1, 1, 1, pv,
                    output="bits", thresholds=thr, flip=flip)
    assert np.array_equal(out, expect)
    varies = (thr > -2**31) & (thr < 2**31 - 1)        # channels whose bit is not constant on [-k, k]
    assert flip[varies & (gamma < 0)].all() and not flip[varies & (gamma > 0)].any()


def test_threshold_fold_rejects_non_monotone_chains():
    with pytest.raises(ValueError, match="not monotone"):
        threshold_fold(5, lambda d: (d - 1) * (d + 1), 1)
    with pytest.raises(ValueError, match="sign_zero"):
        threshold_fold(5, lambda d: d, 1, sign_zero=0.0)


def test_bconv2d_known_values(kernel_path):
    """A 3x3 all -1 input, all +1 weights, padding 1: zero padding counts the in-image taps only,
    +1 padding adds +1 per outside tap, -1 padding -1."""
    x = -np.ones((1, 1, 3, 3), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    xw, ww = pack_input(x, 1), reference.pack_bits(w, axis=1)
    inside = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    assert np.array_equal(K.bconv2d(xw, ww, 1, padding=1, pad_value=0.0)[0, :, :, 0], -inside)
    assert np.array_equal(K.bconv2d(xw, ww, 1, padding=1, pad_value=1.0)[0, :, :, 0], 9 - 2 * inside)
    assert np.array_equal(K.bconv2d(xw, ww, 1, padding=1, pad_value=-1.0)[0, :, :, 0], -9 * np.ones((3, 3)))


def test_bconv2d_bad_input():
    xw = np.zeros((1, 5, 5, 1), np.uint64)
    ww = np.zeros((8, 3, 3, 1), np.uint64)
    with pytest.raises(TypeError, match="uint64"):
        K.bconv2d(xw.astype(np.float32), ww, 16)
    with pytest.raises(ValueError, match="4-D"):
        K.bconv2d(xw[0], ww, 16)
    with pytest.raises(ValueError, match="words per tap"):
        K.bconv2d(xw, ww, 100)                        # 100 channels need 2 words
    with pytest.raises(ValueError, match="words per pixel"):
        K.bconv2d(np.zeros((1, 5, 5, 2), np.uint64), ww, 16)
    with pytest.raises(ValueError, match="divisible by groups"):
        K.bconv2d(xw, ww, 15, groups=2)
    with pytest.raises(ValueError, match="smaller than"):
        K.bconv2d(np.zeros((1, 2, 2, 1), np.uint64), ww, 16)
    with pytest.raises(ValueError, match=">= 1"):
        K.bconv2d(xw, ww, 16, stride=0)
    with pytest.raises(ValueError, match=">= 0"):
        K.bconv2d(xw, ww, 16, padding=-1)
    with pytest.raises(ValueError, match=">= 1"):
        K.bconv2d(xw, ww, -16)
    with pytest.raises(ValueError, match="pad_value"):
        K.bconv2d(xw, ww, 16, pad_value=0.5)
    with pytest.raises(ValueError, match="output"):
        K.bconv2d(xw, ww, 16, output="int8")
    with pytest.raises(ValueError, match="thresholds"):
        K.bconv2d(xw, ww, 16, output="bits")
    with pytest.raises(ValueError, match="output='float' only"):
        K.bconv2d(xw, ww, 16, multiplier=np.ones(8, np.float32))
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        K.bconv2d(xw, ww, 16, output="float", bias=np.ones(7, np.float32))
    with pytest.raises(TypeError, match="integers"):
        K.bconv2d(xw, ww, 16, output="bits", thresholds=np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        K.bconv2d(xw, ww, 16, output="float", multiplier=np.full(8, np.nan, np.float32))
    with pytest.raises(ValueError, match="clamp"):
        K.bconv2d(xw, ww, 16, output="float", clamp=(5, -5))
    with pytest.raises(ValueError, match="multiple of 64"):
        K.bconv2d(np.zeros((1, 5, 5, 2), np.uint64), ww, 32, groups=2, output="bits", thresholds=np.zeros(8, int))
    with pytest.raises(ValueError, match="layout"):
        K.bconv2d(xw, ww, 16, output="bits", thresholds=np.zeros(8, int), layout="nchw")
    out = np.zeros((1, 3, 3, 8), np.int32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.bconv2d(xw, ww, 16, out=out)
    with pytest.raises(ValueError, match="shape"):
        K.bconv2d(xw, ww, 16, out=np.zeros((1, 8, 3, 3), np.int32))         # NCHW out for NHWC layout
    with pytest.raises(ValueError, match="taps"):
        K.bconv2d(np.zeros((1, 40, 40, 1), np.uint64), np.zeros((1, 33, 33, 1), np.uint64), 1)


@given(seeds, st.sampled_from(["int32", "float", "bits"]))
def test_bconv2d_every_mix_split(seed, output):
    """The avx2+popcnt path with each split of its columns: every padding mode (the zero-padding
    correction included), the float transform and bit-packed output, exactly."""
    if "avx2+popcnt" not in K.supported_paths():
        pytest.skip("this CPU does not run the avx2+popcnt path (AVX2 and POPCNT)")
    rng = np.random.default_rng(seed)
    x, wt, s, p, d, g, pv = random_conv(rng)
    if output == "bits" and g > 1:
        wt = np.where(rng.random((64 * g,) + wt.shape[1:]) < 0.5, -1.0, 1.0).astype(np.float32)
    o = wt.shape[0]
    dot = reference.binary_conv2d(x, wt, s, p, d, g, pv)
    kw = {}
    if output == "int32":
        expect = dot
    elif output == "float":
        kw = {"multiplier": rng.standard_normal(o).astype(np.float32), "bias": rng.standard_normal(o).astype(np.float32)}
        expect = dot.astype(np.float32) * kw["multiplier"].reshape(1, -1, 1, 1) + kw["bias"].reshape(1, -1, 1, 1)
    else:
        thr = rng.integers(-wt[0].size - 1, wt[0].size + 2, o)
        flip = rng.random(o) < 0.5
        kw = {"thresholds": thr, "flip": flip}
        bits = (dot < thr.reshape(1, -1, 1, 1)) ^ flip.reshape(1, -1, 1, 1)
        expect = reference.pack_bits(np.where(bits, -1.0, 1.0), axis=1)
    keep = K.mix_split()
    try:
        for split in K.MIX_SPLITS:
            K.set_mix_split(split)
            out = K.bconv2d(pack_input(x, g), reference.pack_bits(wt, axis=1), x.shape[1], s, p, d, g, pv,
                            output=output, layout="nhwc", path="avx2+popcnt", threads=int(rng.integers(1, 3)), **kw)
            got = out if output == "bits" else out.transpose(0, 3, 1, 2)
            assert np.array_equal(got, expect), f"split {split}"
    finally:
        K.set_mix_split(keep)


@pytest.mark.parametrize("c, ksize, pad_value", [(300, 3, 0.0), (64, 7, 0.0), (40, 6, -1.0), (130, 5, 1.0)])
def test_bconv2d_mix_splits_past_the_byte_counters(c, ksize, pad_value):
    """More than 31 words per output (taps x words per tap): the mixed path's byte counters are
    flushed inside a tap (300 channels: 5 words a tap) and between taps (64 channels: 1 word a tap,
    49 taps); extreme all -1 / all +1 corners give the largest counts."""
    if "avx2+popcnt" not in K.supported_paths():
        pytest.skip("this CPU does not run the avx2+popcnt path (AVX2 and POPCNT)")
    rng = np.random.default_rng(c + ksize)
    x = np.where(rng.random((2, c, 9, 8)) < 0.5, -1.0, 1.0).astype(np.float32)
    x[0, :, :7, :7] = -1.0                     # a corner where a 7x7 window sees only -1
    w = np.where(rng.random((37, c, ksize, ksize)) < 0.5, -1.0, 1.0).astype(np.float32)
    w[0] = -1.0
    w[1] = 1.0
    pad = ksize // 2
    expect = reference.binary_conv2d(x, w, (1, 1), (pad, pad), (1, 1), 1, pad_value)
    xw, ww = pack_input(x, 1), reference.pack_bits(w, axis=1)
    keep = K.mix_split()
    try:
        for split in K.MIX_SPLITS:
            K.set_mix_split(split)
            out = K.bconv2d(xw, ww, c, 1, pad, pad_value=pad_value, layout="nchw", path="avx2+popcnt")
            assert np.array_equal(out, expect), f"split {split}"
    finally:
        K.set_mix_split(keep)


@pytest.mark.parametrize("c", [512, 520, 1000])
def test_bconv2d_many_words_per_tap(kernel_path, c):
    """8 or more words a tap: the weight panels are packed in 8 x 8 blocks of words on the avx512
    path (1000 channels: 16 words, the second block ends with the masked last word), word by word
    elsewhere; 19 output channels: two whole groups of 8 columns and a partial one."""
    rng = np.random.default_rng(c)
    x = np.where(rng.random((1, c, 5, 4)) < 0.5, -1.0, 1.0).astype(np.float32)
    w = np.where(rng.random((19, c, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    for pv in (0.0, -1.0):
        expect = reference.binary_conv2d(x, w, (1, 1), (1, 1), (1, 1), 1, pv)
        xw = pack_input(x, 1)
        ww = reference.pack_bits(w, axis=1)
        ww = with_garbage_tail(ww, c, rng)
        assert np.array_equal(K.bconv2d(xw, ww, c, 1, 1, pad_value=pv, layout="nchw"), expect)


def with_garbage_tail(words, bits, rng):
    """Random bits past ``bits`` in each last word (the kernels must mask them)."""
    words = words.copy()
    if bits % 64:
        words[..., -1] |= rng.integers(0, 2**63, words.shape[:-1], dtype=np.uint64) << np.uint64(bits % 64)
    return words
