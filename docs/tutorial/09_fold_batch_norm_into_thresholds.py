"""Step 9 -- batch norm and the next sign, folded into integer thresholds.

In a binary network a binary convolution is followed by batch norm (in eval mode: a per-channel
affine map) and the next layer's sign. The sign of an increasing map of the integer dot product d
changes once on [-K, K], so one integer threshold per channel decides it (a decreasing map -- a
negative gamma -- flips the bit). The kernel can then write the next layer's packed input directly.
threshold_fold finds the thresholds by evaluating the float map itself at every integer, so the
packed path reproduces the float one bit for bit.
"""
import numpy as np

from refbnn import kernels
from refbnn.kernels import reference as ref

rng = np.random.default_rng(0)
n, c, o, h, w = 2, 16, 5, 6, 6
x = np.where(rng.random((n, c, h, w)) < 0.5, -1.0, 1.0).astype(np.float32)
wt = np.where(rng.random((o, c, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
gamma = np.array([1.5, -0.7, 0.3, 2.0, -1.1], np.float32)   # two negative gammas
beta = rng.standard_normal(o).astype(np.float32)
mean, var, eps = (rng.standard_normal(o) * 3).astype(np.float32), rng.uniform(0.5, 2, o).astype(np.float32), 1e-5


def batch_norm_eval(d):                 # d (..., o): the float map, one expression used by both paths
    return gamma * ((d - mean) / np.sqrt(var + np.float32(eps))) + beta


d = ref.binary_conv2d(x, wt, (1, 1), (1, 1), (1, 1), 1, pad_value=1.0).transpose(0, 2, 3, 1)  # NHWC
float_path = np.where(batch_norm_eval(d) < 0, -1.0, 1.0)    # the next layer's input, sign(0) = +1

k = 3 * 3 * c
thresholds, flip = kernels.threshold_fold(k, batch_norm_eval, o)
print("thresholds", thresholds, "flip", flip)
paths = kernels.kernel_paths()
if "error" in paths:
    # without the compiled kernels: apply the thresholds to the reference dot products
    bits = (d < thresholds) ^ flip
    packed_path = np.where(bits, -1.0, 1.0)
    print("compiled kernels not built: thresholds applied to the reference's dot products")
else:
    xw, ww = ref.pack_bits(x.transpose(0, 2, 3, 1)), ref.pack_bits(wt.transpose(0, 2, 3, 1))
    words = kernels.bconv2d(xw, ww, c, padding=1, pad_value=1.0, output="bits", thresholds=thresholds, flip=flip)
    packed_path = kernels.unpack_bits(words, o)             # (N, Ho, Wo, o) +-1
    print(f"packed output {words.shape} {words.dtype} from the {paths['active']} kernel")
np.testing.assert_array_equal(packed_path, float_path)
print("the packed path equals batch norm + sign in float, bit for bit")
print("step 9 ok")
