"""Step 3 -- XNOR and popcount, by hand.

For +-1 vectors of length K, a . b = K - 2 * (number of positions where the signs differ). Pack the
signs into bits (bit 1 = -1, bit 0 = +1, least significant first) and the differing positions are
the 1 bits of A XOR B, so a . b = K - 2 * popcount(A XOR B): 64 multiply-adds become one XOR and one
popcount. See docs/kernels.md.
"""
import numpy as np

from refbnn.kernels import reference as ref

rng = np.random.default_rng(0)
k = 100
a = np.where(rng.random((3, k)) < 0.5, -1.0, 1.0)
b = np.where(rng.random((5, k)) < 0.5, -1.0, 1.0)

aw, bw = ref.pack_bits(a), ref.pack_bits(b)          # (3, 2) and (5, 2) uint64 words: ceil(100 / 64) = 2
print("a[0] starts", a[0, :8], "-> first word in binary, low bits first:", format(int(aw[0, 0]), "064b")[::-1][:8])
differ = np.bitwise_count(aw[0] ^ bw[0]).sum()
print(f"a[0] . b[0] = {a[0] @ b[0]:.0f};  K - 2 * popcount = {k} - 2 * {differ} = {k - 2 * differ}")
assert a[0] @ b[0] == k - 2 * differ

np.testing.assert_array_equal(ref.bgemm_bits(aw, bw, k), a @ b.T)
from refbnn import kernels

paths = kernels.kernel_paths()
if "error" in paths:
    print("compiled kernels not built, that comparison skipped:", paths["error"])
else:
    np.testing.assert_array_equal(kernels.bgemm(aw, bw, k), a @ b.T)
    print(f"the compiled kernel ({paths['active']} path) gives the same integers")
print("step 3 ok")
