"""Composite operations common in numerical and ML code, written with NumPy calls so
they trace into primitives (and also run on plain arrays)."""
from __future__ import annotations

import numpy as np

from ..api import stop_gradient


def logsumexp(x, axis=None, keepdims=False):
    """``log Σ exp(x)`` along ``axis``, shifted by the maximum for stability.  The shift
    is held constant: the result does not depend on it.  It is the maximum of
    ``stop_gradient(x)``, so that derivatives do not even compute the maximum's (the tie
    mask, a residual as large as x that reverse mode through a loop would store)."""
    x = np.asarray(x) if not hasattr(x, "shape") else x
    shift = np.max(stop_gradient(x), axis=axis, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    out = np.log(np.sum(np.exp(x - shift), axis=axis, keepdims=True)) + shift
    if not keepdims:
        out = np.squeeze(out, axis=axis) if axis is not None else np.reshape(out, ())
    return out


def softmax(x, axis=-1):
    """``exp(x) / Σ exp(x)`` along ``axis``."""
    return np.exp(x - logsumexp(x, axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    return x - logsumexp(x, axis=axis, keepdims=True)


def sigmoid(x):
    """The logistic function ``1 / (1 + e^−x)``, as ``e^x / (1 + e^x)`` below 0: one
    ``exp`` of ``−|x|`` (written as a choice, not with ``abs``, whose derivative at 0 would
    be 0), never overflowing, and accurate to an ulp or two for large negative x, where
    ``(1 + tanh(x/2)) / 2`` cancels (1.7e-4 relative error at −30, 0 below −38)."""
    neg = x < 0
    e = np.exp(np.where(neg, x, -x))
    s = 1.0 / (1.0 + e)
    return np.where(neg, e * s, s)


def relu(x):
    return np.maximum(x, 0.0)


def softplus(x):
    """``log(1 + exp(x))`` without overflow."""
    return np.logaddexp(x, 0.0)
