"""Losses on logits (N, K), averaged over the batch.

softmax cross-entropy:  L = -(1/N) sum_n log softmax(z_n)[y_n];   dL/dz = (softmax(z) - onehot(y)) / N
distillation:           L = -(1/N) sum_n sum_k p_nk log softmax(z_n / T)_k,   p = softmax(t / T)
                        (cross-entropy to a teacher's softmax, as ReCU's two-stage code does with T = 1);
                        dL/dz = (softmax(z / T) - p) / (N T).

The forward functions return the loss as a Python float for NumPy logits; for logits on a GPU
(CuPy) it stays a 0-d array there, since reading its value would wait for the device.
"""
from __future__ import annotations

from ..checks import array_module, check_float_array, check_real, check_same_dtype, check_shape, check_value, host_float


def log_softmax(z):
    xp = array_module(z)
    zs = z - z.max(axis=1, keepdims=True)
    return zs - xp.log(xp.exp(zs).sum(axis=1, keepdims=True))


def _check_logits(logits, name="logits"):
    logits = check_float_array(logits, name, ndim=2)
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{name}: expected a batch of at least 1 sample and 1 class, got shape {tuple(logits.shape)}")
    return logits


def softmax_cross_entropy_forward(logits, labels):
    """Returns (loss, cache); ``labels`` are integer class indices (N,)."""
    logits = _check_logits(logits)
    xp = array_module(logits)
    if not hasattr(labels, "dtype") or not hasattr(labels, "ndim"):
        raise TypeError(f"labels: expected an integer array of class indices, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels: expected shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu" or labels.dtype.itemsize > 8:
        raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    if labels.size:
        def fail():
            raise ValueError(f"labels: expected values in [0, {logits.shape[1]}), got [{int(labels.min())}, "
                             f"{int(labels.max())}]")

        check_value((labels.min() >= 0) & (labels.max() < logits.shape[1]), fail)
    logp = log_softmax(logits)
    n = logits.shape[0]
    loss = -logp[xp.arange(n), labels].mean()
    return host_float(loss), (logp, labels)


def softmax_cross_entropy_backward(cache):
    logp, labels = cache
    xp = array_module(logp)
    n = logp.shape[0]
    d = xp.exp(logp)
    d[xp.arange(n), labels] -= 1.0
    return d / n


def distillation_forward(logits, teacher_logits, temperature=1.0):
    logits = _check_logits(logits)
    teacher_logits = _check_logits(teacher_logits, "teacher_logits")
    check_shape(teacher_logits, "teacher_logits", logits.shape)
    check_same_dtype(("logits", logits), ("teacher_logits", teacher_logits))
    temperature = check_real("temperature", temperature, 0.0, open_min=True)
    xp = array_module(logits)
    p = xp.exp(log_softmax(teacher_logits / temperature))
    logq = log_softmax(logits / temperature)
    loss = -(p * logq).sum(axis=1).mean()
    return host_float(loss), (p, logq, temperature)


def distillation_backward(cache):
    p, logq, temperature = cache
    xp = array_module(p)
    return (xp.exp(logq) - p) / (p.shape[0] * temperature)
