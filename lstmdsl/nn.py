"""What a task needs around a recurrent layer: a dense output layer and the losses, forward and
backward, on numpy or CuPy arrays (the array module of the input decides).

    dense = lstmdsl.nn.Dense(64, 10, backend="cuda")
    logits = dense.forward(h)                          # [..., 64] -> [..., 10]
    loss, dlogits = lstmdsl.nn.softmax_cross_entropy(logits, labels)
    dh = dense.backward(dlogits)                       # accumulates dense.grads()
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import array_module, is_cupy
from .errors import UsageError


class Dense:
    """y = x @ W^T + b over the last axis. W is [out, in], uniform in +-1/sqrt(in) as torch.nn.Linear."""

    def __init__(self, in_features: int, out_features: int, backend: str = "numpy", dtype: str = "float32",
                 seed: int = 0):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:  # (numpy's too, as compile's)
                raise UsageError(f"{name} must be a positive integer, got {v!r}")
        if backend not in ("numpy", "cuda"):
            raise UsageError(f"unknown backend {backend!r}; choose numpy or cuda")
        if dtype not in ("float32", "float64"):  # ("int32" made all-zero weights)
            raise UsageError(f"dtype must be float32 or float64, got {dtype!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
        in_features, out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(in_features)
        host = {"W": rng.uniform(-k, k, (out_features, in_features)).astype(dtype),
                "b": rng.uniform(-k, k, out_features).astype(dtype)}
        if backend == "cuda":
            from .runtime import check_available

            check_available()
            import cupy

            host = {n: cupy.asarray(a) for n, a in host.items()}
        self._params = host
        xp = array_module(host["W"])
        self._grads = {n: xp.zeros_like(a) for n, a in host.items()}
        self._x = None

    def parameters(self) -> dict:
        return self._params

    def grads(self) -> dict:
        return self._grads

    def zero_grad(self) -> None:
        for g in self._grads.values():
            g.fill(0)

    def forward(self, x):
        W = self._params["W"]
        if x.shape[-1] != W.shape[1] or x.dtype != W.dtype or array_module(x) is not array_module(W):
            raise UsageError(f"Dense expects [..., {W.shape[1]}] {W.dtype} arrays of its backend, got "
                             f"{list(x.shape)} {x.dtype} ({type(x).__module__.split('.')[0]})")
        self._x = x
        return x @ W.T + self._params["b"]

    def backward(self, dy):
        if self._x is None:
            raise UsageError("Dense.backward() needs a forward() first")
        W = self._params["W"]
        want = (*self._x.shape[:-1], W.shape[0])
        if tuple(dy.shape) != want or dy.dtype != W.dtype or array_module(dy) is not array_module(W):
            raise UsageError(f"Dense.backward expects dy of the forward's output, {list(want)} {W.dtype} of its "
                             f"backend, got {list(dy.shape)} {dy.dtype} ({type(dy).__module__.split('.')[0]})")
        x2 = self._x.reshape(-1, self._x.shape[-1])
        d2 = dy.reshape(-1, dy.shape[-1])
        self._grads["W"] += d2.T @ x2
        self._grads["b"] += d2.sum(axis=0)
        return dy @ self._params["W"]


def _check_arrays(logits, **others) -> None:
    """A loss's arrays: numpy or CuPy (lists and numbers were AttributeErrors), logits with a class axis."""
    for name, a in (("logits", logits), *others.items()):
        if a is not None and not (isinstance(a, np.ndarray) or is_cupy(a)):
            raise UsageError(f"{name} must be a numpy or CuPy array, got {type(a).__name__}")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise UsageError(f"logits have shape {list(logits.shape)}: expected [N..., C] with C >= 1 classes")


def _check_mask(mask, shape) -> None:
    """A loss's mask: one weight per counted position, of exactly that shape (broadcasting would silently
    weight the wrong axis)."""
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise UsageError(f"mask has shape {list(mask.shape)}, expected {list(shape)} (one weight per position)")


def softmax_cross_entropy(logits, labels, mask=None):
    """Mean cross-entropy of softmax(logits) [N..., C] against integer labels [N...]; returns
    (loss, dL/dlogits). mask [N...] (1 = counts) restricts the mean to the counted positions."""
    _check_arrays(logits, labels=labels, mask=mask)
    xp = array_module(logits)
    if labels.shape != logits.shape[:-1]:
        raise UsageError(f"labels have shape {list(labels.shape)}, expected {list(logits.shape[:-1])}")
    C = logits.shape[-1]
    if labels.dtype.kind not in "iub":
        raise UsageError(f"labels must be integers (class numbers), got {labels.dtype}")
    _check_mask(mask, labels.shape)
    counted = labels if mask is None else labels[mask != 0]  # (padding labels, -1 or -100, where the mask is 0)
    if counted.size and not (0 <= int(counted.min()) and int(counted.max()) < C):
        raise UsageError(f"labels must be class numbers in [0, {C}) where they count, got values in "
                         f"[{int(counted.min())}, {int(counted.max())}]")
    labels = labels if mask is None else xp.where(mask != 0, labels, 0)  # (no one-hot row for padding)
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
    onehot = (xp.arange(C) == labels[..., None]).astype(logits.dtype)
    w = xp.ones(labels.shape, logits.dtype) if mask is None else mask.astype(logits.dtype)
    count = max(float(w.sum()), 1.0)
    # the label's own log-probability, taken (0 * -inf, an impossible class's logit of -inf, was NaN), and only
    # where it counts (a padding row's label 0 may be such a class)
    picked = xp.take_along_axis(logp, labels[..., None].astype(xp.int64), axis=-1)[..., 0]
    loss = float(-(xp.where(w != 0, picked, 0) * w).sum()) / count
    grad = (xp.exp(logp) - onehot) * (w[..., None] / count)
    return loss, grad


def sigmoid_binary_cross_entropy(logits, targets, mask=None):
    """Mean over all elements of the binary cross-entropy of sigmoid(logits) against targets in [0, 1]
    (stable form: max(z, 0) - z t + log(1 + exp(-|z|))); returns (loss, dL/dlogits). mask [N...] over the
    leading axes restricts the mean to the counted rows; the mean is per element."""
    _check_arrays(logits, targets=targets, mask=mask)
    xp = array_module(logits)
    if targets.shape != logits.shape:
        raise UsageError(f"targets have shape {list(targets.shape)}, expected {list(logits.shape)}")
    _check_mask(mask, logits.shape[:-1])
    counted = targets if mask is None else targets[mask != 0]  # (rows the mask leaves out may hold padding)
    if counted.size and not (0 <= float(counted.min()) and float(counted.max()) <= 1):  # (NaN fails both)
        raise UsageError(f"targets must be probabilities in [0, 1] where they count, got values in "
                         f"[{float(counted.min())}, {float(counted.max())}]")
    targets = targets.astype(logits.dtype, copy=False)  # (the gradient in the logits' type, as Dense expects)
    if mask is not None:
        targets = xp.where((mask != 0)[..., None], targets, 0)  # (padding rows weigh 0; no NaN * 0 there)
    w = xp.ones(logits.shape[:-1], logits.dtype) if mask is None else mask.astype(logits.dtype)
    count = max(float(w.sum()) * logits.shape[-1], 1.0)
    per = xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))
    loss = float((per * w[..., None]).sum()) / count
    sig = 0.5 * (1 + xp.tanh(0.5 * logits))  # sigmoid without overflow
    grad = (sig - targets) * (w[..., None] / count)
    return loss, grad
