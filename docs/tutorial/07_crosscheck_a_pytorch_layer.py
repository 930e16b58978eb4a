"""Step 7 -- check your own PyTorch layer against refbnn.

A binary linear layer as people write it in PyTorch: sign on the activations with the clipped
straight-through estimator, sign on the weights with the identity one (BNN). record_torch runs it
forward and backward and collects what it holds -- x, weight, out, the gradients -- as a bundle;
crosscheck runs refbnn's `bnn` method on the same inputs and compares every tensor.
"""
import sys

import numpy as np

try:
    import torch
except ImportError:
    print("SKIP: PyTorch is not installed (pip install torch==2.13.0 for the CPU build)")
    sys.exit(0)

from refbnn.crosscheck import crosscheck, record_torch


class SignClippedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x < 0, -1.0, 1.0).to(x.dtype)      # sign(0) = +1, as the BNN paper

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)           # 1[|x| <= 1]


class SignIdentitySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return torch.where(w < 0, -1.0, 1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class MyBinaryLinear(torch.nn.Linear):
    def forward(self, x):
        return torch.nn.functional.linear(SignClippedSTE.apply(x), SignIdentitySTE.apply(self.weight))


torch.manual_seed(0)
layer = MyBinaryLinear(16, 4, bias=False).double()
x = torch.randn(8, 16, dtype=torch.float64) * 1.5
bundle = record_torch(layer, x)
print("recorded:", {k: tuple(np.shape(v)) for k, v in bundle.items()})
report = crosscheck(bundle, method="bnn", convention="paper")
print(report.table())
assert report.passed
print("step 7 ok")
