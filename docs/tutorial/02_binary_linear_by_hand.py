"""Step 2 -- a binary linear layer, forward and backward by hand.

y = sign(x) sign(W)^T. With the clipped STE on both operands the backward is
    dL/dx = (dL/dy sign(W)) * 1[|x| <= 1],      dL/dW = (dL/dy^T sign(x)) * 1[|W| <= 1].
We compute both with NumPy, compare with refbnn's BinaryLinear, and then check the layer's backward
against finite differences of its *surrogate*: the function whose true derivative the estimator is
(here hardtanh, the clip to [-1, 1], in place of each sign), which is what "the gradient of a binary
layer" means.
"""
import numpy as np

from refbnn.layers import BinaryLinear

rng = np.random.default_rng(0)
x = rng.standard_normal((4, 6))
layer = BinaryLinear(6, 3, weight_quantizer="ste_sign", input_quantizer="ste_sign", backend="numpy",
                     rng=1, dtype=np.float64)
w = layer.params["weight"]
dy = rng.standard_normal((4, 3))

sx, sw = np.where(x < 0, -1.0, 1.0), np.where(w < 0, -1.0, 1.0)
y_hand = sx @ sw.T
dx_hand = (dy @ sw) * (np.abs(x) <= 1)
dw_hand = (dy.T @ sx) * (np.abs(w) <= 1)

y, cache = layer.forward(x)
dx = layer.backward(dy, cache)
np.testing.assert_array_equal(y, y_hand)
np.testing.assert_allclose(dx, dx_hand, rtol=1e-12)
np.testing.assert_allclose(layer.grads["weight"], dw_hand, rtol=1e-12)
print("forward and backward match the hand computation")

# finite differences of the surrogates: for x, L(x) = sum(dy * (clip(x) sign(W)^T)) -- the input quantizer
# replaced by hardtanh, the weights' binary values held -- and the same for W with sign(x) held
def numeric_gradient(f, v, h=1e-6):
    g = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        e = np.zeros_like(v)
        e[i] = h
        g[i] = (f(v + e) - f(v - e)) / (2 * h)
    return g


num_dx = numeric_gradient(lambda xv: float((dy * (np.clip(xv, -1, 1) @ sw.T)).sum()), x)
num_dw = numeric_gradient(lambda wv: float((dy * (sx @ np.clip(wv, -1, 1).T)).sum()), w)
print("max |finite differences - backward|: dx", np.abs(num_dx - dx).max(), " dW",
      np.abs(num_dw - layer.grads["weight"]).max())
assert np.abs(num_dx - dx).max() < 1e-6 and np.abs(num_dw - layer.grads["weight"]).max() < 1e-6
print("step 2 ok")
