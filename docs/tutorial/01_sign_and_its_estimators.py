"""Step 1 -- sign and its estimators.

The sign has derivative 0 almost everywhere, so a binary network trains with an *estimator*: the
backward pass multiplies the incoming gradient by some other function. Here are the common ones,
side by side, on a grid of inputs. Every quantizer in refbnn has forward(x) -> (y, cache) and
backward(dy, cache) -> dx; with dy = 1 the backward shows the estimator itself.
"""
import numpy as np

from refbnn.quantizers import get_quantizer

x = np.array([-1.5, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 1.5])
print("x                  ", x)
estimators = {}
for name in ("identity_ste_sign", "ste_sign", "approx_sign", "swish_sign"):
    q = get_quantizer(name)
    y, cache = q.forward(x)
    dx = q.backward(np.ones_like(x), cache)
    estimators[name] = dx
    print(f"{name:19s} forward {y}  backward {np.round(dx, 3)}")

# every one binarizes the same way (sign(0) = +1, the papers' and Larq's convention) ...
assert all((get_quantizer(n).forward(x)[0] == np.where(x < 0, -1.0, 1.0)).all() for n in estimators)
# ... and differs only in the backward: identity passes everything, the clipped STE cuts |x| > 1,
# ApproxSign is the triangle max(0, 2 - 2|x|), SwishSign a smooth bump of height beta = 5 at 0.
assert (estimators["identity_ste_sign"] == 1).all()
assert (estimators["ste_sign"] == (np.abs(x) <= 1)).all()
np.testing.assert_allclose(estimators["approx_sign"], np.maximum(0, 2 - 2 * np.abs(x)))
assert estimators["swish_sign"][4] == 5.0
print("step 1 ok")
