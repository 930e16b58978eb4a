"""Step 6 -- IR-Net's EDE and its schedule.

The Error Decay Estimator replaces the sign's gradient by k t (1 - tanh^2(t x)), with
t = T_min 10^(p log10(T_max / T_min)) and k = max(1 / t, 1) over the training progress p. Early on
(t < 1) it is wide and flat, like the identity; later (t > 1) narrow and tall, like the sign.
The clock matters: the official code uses p = i / E (0-based epoch i), the paper's formula reaches
T_max at the end, p = i / (E - 1) (docs/conventions.md).
"""
import numpy as np

from refbnn.quantizers import get_quantizer
from refbnn.schedules import QUANTIZER_SCHEDULES

schedule = QUANTIZER_SCHEDULES["irnet_tk"]
epochs = 5
x = np.array([0.0, 0.5, 1.0, 2.0])
print("epoch  clock      t        k      estimator at x =", x)
for clock in ("epoch", "progress"):
    for i in range(epochs):
        state = schedule.at(i, epochs, clock)
        q = get_quantizer("ede", t=state["t"], k=state["k"])
        _, cache = q.forward(x)
        g = q.backward(np.ones_like(x), cache)
        print(f"{i:5d}  {clock:8s} {state['t']:7.3f} {state['k']:7.3f}   {np.round(g, 3)}")
last_epoch_clock = schedule.at(epochs - 1, epochs, "epoch")["t"]
last_progress_clock = schedule.at(epochs - 1, epochs, "progress")["t"]
assert last_progress_clock == 10.0 and last_epoch_clock < 10.0
print("step 6 ok")
