"""The bit-level reference (pack, XOR, popcount, K - 2 * popcount, the zero-padding correction) against the
float +-1 product and against the compiled kernels, on the same inputs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbnn.kernels import reference as ref
from refbnn.kernels.geometry import conv_output_size


def _signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _compiled():
    try:
        from refbnn.kernels import _bitpack
    except ImportError:
        pytest.skip("the compiled kernels are not built (python setup.py build_ext --inplace)")
    return _bitpack


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 6), k=st.integers(1, 200), seed=st.integers(0, 2 ** 32 - 1))
def test_bgemm_bits_equals_the_float_product_and_the_compiled_kernel(m, n, k, seed):
    rng = np.random.default_rng(seed)
    a, b = _signs(rng, (m, k)), _signs(rng, (n, k))
    aw, bw = ref.pack_bits(a), ref.pack_bits(b)
    got = ref.bgemm_bits(aw, bw, k)
    np.testing.assert_array_equal(got, ref.binary_matmul(a, b))
    np.testing.assert_array_equal(got, _compiled().bgemm(aw, bw, k))


def test_xor_popcount_identity_by_hand():
    """a = (+1, -1, -1, +1), b = (+1, +1, -1, -1): bits 0110 and 0011 differ in 2 places, so a . b = 4 - 2 * 2 = 0."""
    a, b = np.array([[1.0, -1, -1, 1]]), np.array([[1.0, 1, -1, -1]])
    aw, bw = ref.pack_bits(a), ref.pack_bits(b)
    assert aw[0, 0] == 0b0110 and bw[0, 0] == 0b1100
    assert int(np.bitwise_count(aw ^ bw)[0, 0]) == 2
    assert ref.bgemm_bits(aw, bw, 4)[0, 0] == 0 == (a @ b.T)[0, 0]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), cg=st.integers(1, 70), groups=st.integers(1, 2), og=st.integers(1, 3),
       h=st.integers(1, 6), w=st.integers(1, 6), kh=st.integers(1, 3), kw=st.integers(1, 3),
       stride=st.integers(1, 2), dilation=st.integers(1, 2), padding=st.integers(0, 2),
       pad_value=st.sampled_from([0.0, 1.0, -1.0]), seed=st.integers(0, 2 ** 32 - 1))
def test_bconv2d_bits_equals_the_float_convolution_and_the_compiled_kernel(n, cg, groups, og, h, w, kh, kw, stride,
                                                                             dilation, padding, pad_value, seed):
    if conv_output_size(h, kh, stride, padding, dilation) < 1 or \
            conv_output_size(w, kw, stride, padding, dilation) < 1:
        return
    rng = np.random.default_rng(seed)
    c, o = cg * groups, og * groups
    x, wt = _signs(rng, (n, c, h, w)), _signs(rng, (o, cg, kh, kw))
    geometry = dict(stride=(stride, stride), padding=(padding, padding), dilation=(dilation, dilation),
                    groups=groups, pad_value=pad_value)
    # NHWC activations, each group's channels in their own words; OHWI weights
    xw = np.concatenate([ref.pack_bits(x[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1)) for g in range(groups)],
                        axis=-1)
    ww = ref.pack_bits(wt.transpose(0, 2, 3, 1))
    got = ref.bconv2d_bits(xw, ww, c, **geometry)
    expected = ref.binary_conv2d(x, wt, **geometry).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, expected)
    compiled = _compiled().bconv2d(xw, ww, c, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                   pad_value=pad_value)
    np.testing.assert_array_equal(got, compiled)


def test_zero_padding_correction_by_hand():
    """One channel, a 3x3 filter of +1 at the corner pixel of a 1x1 image padded by 1: eight taps are padding.
    Read as +1 they would add 8; the correction takes them back out, leaving the one real tap."""
    x = np.array([[[[-1.0]]]])
    wt = np.ones((1, 1, 3, 3))
    xw, ww = ref.pack_bits(x.transpose(0, 2, 3, 1)), ref.pack_bits(wt.transpose(0, 2, 3, 1))
    zero = ref.bconv2d_bits(xw, ww, 1, padding=(1, 1), pad_value=0.0)
    one = ref.bconv2d_bits(xw, ww, 1, padding=(1, 1), pad_value=1.0)
    assert zero[0, 0, 0, 0] == -1 and one[0, 0, 0, 0] == 8 - 1
