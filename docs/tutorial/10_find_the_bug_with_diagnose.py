"""Step 10 -- find the bug in a layer with --diagnose.

The same PyTorch layer as in step 7, with a typical bug: the activations' estimator forgot the clip
(identity instead of 1[|x| <= 1]). The forward is right, so `out` agrees and `grad_x` does not.
diagnose=True (`refbnn crosscheck FILE --diagnose` on the command line) re-runs the check over the
nearby choices refbnn knows -- every convention field, every estimator with the same forward, the
other layout -- and says which change makes the differing tensor pass.
"""
import sys

try:
    import torch
except ImportError:
    print("SKIP: PyTorch is not installed (pip install torch==2.13.0 for the CPU build)")
    sys.exit(0)

from refbnn.crosscheck import crosscheck, record_torch


class SignIdentitySTE(torch.autograd.Function):        # the bug: used for the activations too
    @staticmethod
    def forward(ctx, x):
        return torch.where(x < 0, -1.0, 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class BuggyBinaryLinear(torch.nn.Linear):
    def forward(self, x):
        return torch.nn.functional.linear(SignIdentitySTE.apply(x), SignIdentitySTE.apply(self.weight))


torch.manual_seed(0)
layer = BuggyBinaryLinear(16, 4, bias=False).double()
x = torch.randn(8, 16, dtype=torch.float64) * 1.5        # many |x| > 1, where the clip matters
report = crosscheck(record_torch(layer, x), method="bnn", convention="paper", diagnose=True)
print(report.table())
assert report.row("out").passed and not report.row("grad_x").passed
text = report.table()
assert "identity_ste_sign" in text, "the diagnosis names the identity estimator as the change that fits"
print("step 10 ok")
