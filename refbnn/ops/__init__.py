"""Pure forward/backward pairs: ``out, cache = f_forward(...)``, ``dx, grads = f_backward(dout, cache)``.

Every op takes its array module (NumPy or CuPy) from its inputs. ``grads`` is a dict keyed by the
parameter names of the op (``{}`` when it has none).
"""
from .activations import (bias_backward, bias_forward, hardtanh_backward, hardtanh_forward, prelu_backward,
                          prelu_forward, relu_backward, relu_forward, rprelu_backward, rprelu_forward)
from .batchnorm import batchnorm_backward, batchnorm_forward
from .conv import Conv2dCache, conv2d_backward, conv2d_backward_from_input, conv2d_cache, conv2d_forward
from .linear import LinearCache, linear_backward, linear_cache, linear_forward
from .losses import (distillation_backward, distillation_forward, log_softmax, softmax_cross_entropy_backward,
                     softmax_cross_entropy_forward)
from .pooling import (avgpool2d_backward, avgpool2d_forward, global_avgpool_backward, global_avgpool_forward,
                      maxpool2d_backward, maxpool2d_forward)
from .shape import (add_backward, add_forward, flatten_backward, flatten_forward, shortcut_a_backward,
                    shortcut_a_forward)

__all__ = [
    "Conv2dCache",
    "LinearCache",
    "add_backward",
    "add_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "bias_backward",
    "bias_forward",
    "conv2d_backward",
    "conv2d_backward_from_input",
    "conv2d_cache",
    "conv2d_forward",
    "distillation_backward",
    "distillation_forward",
    "f_backward",
    "f_forward",
    "flatten_backward",
    "flatten_forward",
    "global_avgpool_backward",
    "global_avgpool_forward",
    "hardtanh_backward",
    "hardtanh_forward",
    "linear_backward",
    "linear_cache",
    "linear_forward",
    "log_softmax",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "prelu_backward",
    "prelu_forward",
    "relu_backward",
    "relu_forward",
    "rprelu_backward",
    "rprelu_forward",
    "shortcut_a_backward",
    "shortcut_a_forward",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
]
