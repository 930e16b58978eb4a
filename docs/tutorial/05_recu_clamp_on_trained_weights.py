"""Step 5 -- ReCU's clamp on real latent weights.

ReCU standardizes each output channel's latent weights, then clamps them to [-Q, Q] with
Q = -b ln(2 - 2 tau), b = mean |w1|: under a Laplace model a share 2 - 2 tau of the weights is clamped
(their gradient is cut). Train a small ReCU network, then look at its weights: are they Laplace?
(docs/claims.md has the full measurement: on these networks they are not.)
"""
import tempfile

import numpy as np

from refbnn.quantizers import get_quantizer
from refbnn.quantizers.recu import clamped_fraction, laplace_quantile
from refbnn.train import TrainConfig, train

with tempfile.TemporaryDirectory() as out:
    train(TrainConfig(method="recu", epochs=5, out=out, progress=False), log=lambda *a, **k: None)
    with np.load(f"{out}/checkpoint.npz", allow_pickle=False) as ck:
        layer = next(k[:-len(".weight_quantizer.tau")] for k in ck.files if k.endswith(".weight_quantizer.tau"))
        w, tau = ck[layer + ".weight"].astype(np.float64), float(ck[layer + ".weight_quantizer.tau"])

w1 = get_quantizer("recu_weight", center=False).standardized(w)
b = np.abs(w1).mean()
x = w1.ravel()
kurtosis = np.mean((x - x.mean()) ** 4) / np.var(x) ** 2 - 3
print(f"layer {layer}: {w.shape}, final tau = {tau:.3f}, b = mean|w1| = {b:.3f}")
print(f"excess kurtosis {kurtosis:.2f} (Laplace 3, Gaussian 0, uniform -1.2)")
for t in (0.85, 0.9, tau):
    q = laplace_quantile(t, b)
    print(f"tau {t:.3f}: Q = {q:.3f}, clamped {100 * np.mean(np.abs(w1) >= q):5.1f} %, "
          f"Laplace model {100 * clamped_fraction(t):5.1f} %")
assert kurtosis < 0, "these latent weights are lighter-tailed than a Gaussian, far from Laplace"
print("step 5 ok")
