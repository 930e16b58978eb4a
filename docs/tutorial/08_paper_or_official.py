"""Step 8 -- one layer, two conventions.

The papers and their official code disagree on small things that change numbers (docs/conventions.md).
Build the same ReCU layer under `paper` and `official`, feed both the same input with some exact
zeros, and see where they differ: sign(0) (+1 in the papers, 0 with torch.sign), the scale alpha
(computed in the paper, learned per channel in the code), the activation normalization.
"""
import numpy as np

from refbnn.conventions import PRESETS
from refbnn.methods import LayerFactory, get_method

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8)).astype(np.float64)
x[0, :3] = 0.0                                              # exact zeros: where sign(0) matters
outputs = {}
for name in ("paper", "official"):
    factory = LayerFactory(get_method("recu"), rng=0, dtype=np.float64, convention=name, backend="numpy")
    layer = factory.binary_linear(8, 4)
    print(f"{name:8s}: weight quantizer {layer.weight_quantizer!r}")
    print(f"{'':8s}  input quantizer  {layer.input_quantizer!r}, scale {layer.scale!r}")
    xq, _ = layer.input_quantizer.forward(x)
    print(f"{'':8s}  binarized zeros -> {xq[0, :3]}")
    outputs[name] = xq[0, :3]
    differing = {k for k, v in PRESETS[name].as_dict().items() if k != "name" and v != PRESETS["paper"].as_dict()[k]}
    if name != "paper":
        print(f"{'':8s}  fields that differ from paper: {sorted(differing)}")
assert (outputs["paper"] == 1).all() and (outputs["official"] == 0).all()
print("step 8 ok")
