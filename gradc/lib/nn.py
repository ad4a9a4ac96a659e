"""Composite operations common in numerical and ML code, written with NumPy calls so
they trace into primitives (and also run on plain arrays): ``gradc.nn``, after
``jax.nn``.  Each branchy one computes every branch on inputs made safe for it, so a
branch not taken puts no NaN or inf into a derivative."""
from __future__ import annotations

import math

import numpy as np

from ..api import stop_gradient
from ..custom import custom_jvp

__all__ = ["logsumexp", "softmax", "log_softmax", "sigmoid", "log_sigmoid", "relu", "relu6",
           "leaky_relu", "elu", "celu", "selu", "silu", "swish", "gelu", "softplus",
           "softsign", "soft_sign", "hard_tanh", "one_hot"]


def logsumexp(x, axis=None, keepdims=False, *, b=None, return_sign=False, where=None):
    """``log Σ b·exp(x)`` along ``axis`` (SciPy's and JAX's ``logsumexp``: weights ``b``,
    ``return_sign`` for a negative sum, returning ``(log |Σ|, sign)``; ``where`` a mask of
    the terms taken), shifted by the maximum for stability.  The shift is held constant:
    the result does not depend on it.  It is the maximum of ``stop_gradient(x)``, so that
    derivatives do not even compute the maximum's (the tie mask, a residual as large as x
    that reverse mode through a loop would store).  A sum of no terms (a slice all −inf,
    masked out or of weight 0) is −inf with a zero derivative (``_log_of_sum``)."""
    x = np.asarray(x) if not hasattr(x, "shape") else x
    if where is not None:
        x = np.where(where, x, -np.inf)
    if b is not None:       # (a term of weight 0 is no term: not in the maximum either)
        x = np.where(np.asarray(b) != 0 if not hasattr(b, "shape") else b != 0, x, -np.inf)
    peak = np.max(stop_gradient(x), axis=axis, keepdims=True)
    shift = np.where(np.isfinite(peak), peak, 0.0)
    terms = np.exp(x - shift)
    if b is not None:
        terms = terms * b
    total = np.sum(terms, axis=axis, keepdims=True)
    sign = None
    if return_sign:
        sign, total = np.sign(total), np.abs(total)
    out = _log_of_sum(total, peak) + shift
    if not keepdims:
        def drop(v):
            return np.squeeze(v, axis=axis) if axis is not None else np.reshape(v, ())
        out = drop(out)
        sign = None if sign is None else drop(sign)
    return (out, sign) if return_sign else out


@custom_jvp
def _log_of_sum(total, peak):
    """``log(total)``, ``total`` a sum of exponentials whose largest exponent is ``peak``.
    Where ``peak`` is −inf, every term is (masked out, of weight 0, or −inf): a sum of no
    terms, whose value is −inf and whose derivative is 0, its terms' weights (softmax's)
    being 0.  Plain ``log``'s derivative ``t / total`` was 0/0 there (as JAX's
    logsumexp gives), and NaN reached every gradient through it: a CRF with a state
    reachable only at the first step (a column of −inf transitions) had NaN gradients
    for all its parameters, its log Z finite.  The log is taken of 1 there, the −inf
    selected: ``log(0)`` warned (divide by zero) for a row masked out entirely."""
    empty = peak == -np.inf
    return np.where(empty, -np.inf, np.log(np.where(empty, 1.0, total)))


@_log_of_sum.defjvp
def _log_of_sum_jvp(primals, tangents):
    # t = Σ terms·(their tangents) is 0 for a sum of no terms (each term's tangent is
    # exp(−inf)·t): divided by 1 there rather than by total = 0.  Elsewhere it is log's
    # derivative as it was (a NaN, an inf, or a sum of weights that cancel to 0 keep
    # theirs).  A compare and a select per result, not per term; their derivatives
    # are plain code (hessians, hvp), and log's is this rule again.
    (total, peak), (t, _) = primals, tangents
    return _log_of_sum(total, peak), t / np.where(peak == -np.inf, 1.0, total)


def softmax(x, axis=-1, *, where=None):
    """``exp(x) / Σ exp(x)`` along ``axis`` (with ``where``: over the terms it marks, 0
    elsewhere, as JAX's).

    With ``where``, the exponent is ``x`` masked to −inf minus a log-sum that is 0 for a
    slice with no terms: ``exp(-inf) = 0`` at every masked term then, with a zero
    derivative.  ``exp(x - lse)`` of the unmasked ``x`` was selected away, but its
    derivative was ``0 · exp(x - lse)``: NaN where a masked ``x`` was large, inf or NaN
    (padding), and everywhere in a slice with no terms (``lse = −inf``)."""
    if where is None:
        return np.exp(x - logsumexp(x, axis=axis, keepdims=True))
    x, lse = _masked_logsumexp(x, axis, where)
    return np.exp(x - lse)


def log_softmax(x, axis=-1, *, where=None):
    """``x - log Σ exp(x)`` along ``axis`` (with ``where``: over the terms it marks,
    −inf elsewhere, as JAX's; see ``softmax``)."""
    if where is None:
        return x - logsumexp(x, axis=axis, keepdims=True)
    x, lse = _masked_logsumexp(x, axis, where)
    return x - lse


def _masked_logsumexp(x, axis, where):
    """``x`` with the terms ``where`` leaves out at −inf, and its logsumexp along
    ``axis`` (kept), 0 rather than −inf for a slice with no terms (so that ``x - lse`` is
    −inf there, not −inf + inf = NaN)."""
    x = np.where(where, x, -np.inf)
    lse = logsumexp(x, axis=axis, keepdims=True)
    return x, np.where(lse == -np.inf, 0.0, lse)


def sigmoid(x):
    """The logistic function ``1 / (1 + e^−x)``, as ``e^x / (1 + e^x)`` below 0: one
    ``exp`` of ``−|x|`` (written as a choice, not with ``abs``, whose derivative at 0 would
    be 0), never overflowing, and accurate to an ulp or two for large negative x, where
    ``(1 + tanh(x/2)) / 2`` cancels (1.7e-4 relative error at −30, 0 below −38)."""
    neg = x < 0
    e = np.exp(np.where(neg, x, -x))
    s = 1.0 / (1.0 + e)
    return np.where(neg, e * s, s)


@custom_jvp
def relu(x):
    """``max(x, 0)``, whose derivative at 0 is 0 (as in JAX and PyTorch; the derivative
    of ``np.maximum`` splits a tie, 0.5)."""
    return np.maximum(x, 0.0)


@relu.defjvp
def _relu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return relu(x), np.where(x > 0, t, 0.0)


def relu6(x):
    """``min(max(x, 0), 6)``; derivative 1 strictly inside."""
    return np.where(x >= 6.0, 6.0, relu(x))


def leaky_relu(x, negative_slope=0.01):
    return np.where(x >= 0, x, negative_slope * x)


def _expm1_below(x, alpha=1.0):
    """``expm1(x / alpha)`` for the branch x ≤ 0, read at 0 where x > 0 so that the branch
    not taken cannot overflow (a choice, not ``minimum``, whose derivative at the tie
    x = 0 would be 1/2: the slope at 0 is 1, as in JAX)."""
    return np.expm1(np.where(x > 0, 0.0, x) / alpha)


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * _expm1_below(x))


def celu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * _expm1_below(x, alpha))


def selu(x):
    """Scaled ELU with the self-normalising constants of Klambauer et al. (2017)."""
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * elu(x, alpha)


def silu(x):
    """``x · sigmoid(x)`` (swish)."""
    return x * sigmoid(x)


swish = silu


def gelu(x, approximate=True):
    """``x Φ(x)``: with ``approximate`` (JAX's default) the tanh form
    ``x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))``, else exactly, ``x/2 erfc(−x/√2)``
    (``1 + erf`` would cancel for x < 0)."""
    if approximate:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    from .. import ops
    return 0.5 * x * ops.erfc(x * (-1.0 / math.sqrt(2.0)))    # 1 + erf, no cancellation


def softplus(x):
    """``log(1 + exp(x))`` without overflow."""
    return np.logaddexp(x, 0.0)


def log_sigmoid(x):
    """``log sigmoid(x) = −softplus(−x)``, finite for every finite x."""
    return -softplus(-x)


def softsign(x):
    return x / (1.0 + np.abs(x))


soft_sign = softsign            # JAX's name


def hard_tanh(x):
    """``clip(x, −1, 1)``; derivative 1 strictly inside, 0 outside."""
    return np.where(x > 1.0, 1.0, np.where(x < -1.0, -1.0, x))


def one_hot(x, num_classes, dtype=np.float64):
    """``x[..., None] == arange(num_classes)`` as ``dtype`` (zeros for out-of-range)."""
    import operator

    from ..errors import ArgumentError, with_location
    from ..trace import is_tracer
    try:
        num_classes = operator.index(num_classes)
    except TypeError:
        raise ArgumentError(with_location(
            f"one_hot: num_classes is an int, got {num_classes!r}")) from None
    x = x if is_tracer(x) else np.asarray(x)
    return (x[..., None] == np.arange(num_classes)).astype(dtype)
