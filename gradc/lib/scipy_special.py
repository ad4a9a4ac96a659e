"""``scipy.special``'s ufuncs on traced arrays: ``erf``, ``erfc``, ``gamma``, ``gammaln``,
``psi``/``digamma``, ``ndtri``, ``erfinv`` (primitives, ``prims/special.py``), and
``expit``, ``log_expit``, ``logit``, ``ndtr``, ``log_ndtr``, ``erfcinv``, ``xlogy``,
``xlog1py``, ``entr``, ``rel_entr``, ``kl_div`` written with them and NumPy's functions,
by SciPy's own formulas (so the interpreter's values are SciPy's, to the bit where the
formula's pieces are).

Every branch is computed on inputs made safe for it (the other branch's points replaced
by a harmless value), so a branch not taken never sends NaN into a derivative:
``expit`` reads ``exp(−|x|)``, which never overflows.

SciPy's Python functions (``polygamma``, ``logsumexp``, ``softmax``) convert their
arguments with ``np.asarray``, which gradc cannot trace: use ``gradc.ops.polygamma`` and
NumPy expressions instead.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..numpy_api import UFUNCS, elementwise, promote

_REGISTERED = False
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)      # (a Python float: keeps float32)


def _floats(*xs):
    return promote(*xs, float_result=True)


def expit(x):
    """``1 / (1 + e^−x)`` (SciPy's), as ``e^x / (1 + e^x)`` where ``e^−x`` would
    overflow (and its derivative be NaN): below −709.8, where SciPy's result is 0, this
    gives the subnormal ``e^x``."""
    (x,) = _floats(x)
    high = x >= 2.0 - float(np.log(np.finfo(x.dtype).max))      # (-707.8; float32 -86.7)
    e = np.exp(np.where(high, 0.0, x))
    return np.where(high, 1.0 / (1.0 + np.exp(-np.where(high, x, 0.0))), e / (1.0 + e))


def log_expit(x):
    """``x − log1p(e^x)`` below 0, ``−log1p(e^−x)`` from 0 (SciPy's); ``e^−|x|`` written
    as a choice, not with ``abs``, whose derivative at 0 would be 0."""
    (x,) = _floats(x)
    neg = x < 0
    e = np.exp(np.where(neg, x, -x))
    return np.where(neg, x - np.log1p(e), -np.log1p(e))


def logit(x):
    """``log x − log1p(−x)``; ``log1p(s) − log1p(−s)`` with ``s = 2x − 1`` for x in
    [0.3, 0.65], where that loses digits (SciPy's split; SciPy's outer branch is
    ``log(x / (1 − x))``, within an ulp or two, whose derivative at 0 and 1 would be
    NaN, inf · 0 in the quotient rule, where this one gives inf)."""
    (x,) = _floats(x)
    mid = (x >= 0.3) & (x <= 0.65)
    s = 2.0 * (np.where(mid, x, 0.5) - 0.5)
    out = np.where(mid, 0.25, x)
    return np.where(mid, np.log1p(s) - np.log1p(-s), np.log(out) - np.log1p(-out))


def ndtr(x):
    """The standard normal CDF, SciPy's way: ``½ + ½ erf(x/√2)`` near 0, ``½ erfc(|x|/√2)``
    (or one minus it) in the tails."""
    (x,) = _floats(x)
    t = x * np.sqrt(0.5).astype(x.dtype)
    z = np.abs(t)
    tail = 0.5 * ops.erfc(z)
    return np.where(z < np.sqrt(0.5), 0.5 + 0.5 * ops.erf(t), np.where(t > 0, 1.0 - tail, tail))


def log_ndtr(x):
    """``log Φ(x)``, SciPy's way: ``−Φ(−x)`` above 6, ``log Φ(x)`` down to −20, and
    below the asymptotic series ``−x²/2 − log(−x) − ½ log 2π + log(1 − 1/x² + 3/x⁴ − …)``
    (twelve terms: converged to the last bit from −20 down)."""
    (x,) = _floats(x)
    high, low = x > 6.0, x <= -20.0
    mid = ~high & ~low
    top = -ndtr(-np.where(high, x, 7.0))
    middle = np.log(ndtr(np.where(mid, x, 0.0)))
    xl = np.where(low, x, -21.0)
    z = 1.0 / (xl * xl)
    total, term = 1.0, 1.0
    for i in range(1, 13):
        term = term * -(2.0 * i - 1.0) * z
        total = total + term
    tail = -0.5 * xl * xl - np.log(-xl) - _HALF_LOG_2PI + np.log(total)
    return np.where(high, top, np.where(mid, middle, tail))


def erfcinv(y):
    """``−ndtri(y/2)/√2``: accurate for small ``y``, where ``erfinv(1 − y)`` is not."""
    (y,) = _floats(y)
    return -ops.ndtri(0.5 * y) * np.sqrt(0.5).astype(y.dtype)


def _x_times(log_fn, x, y, finite):
    """``x log_fn(y)``, 0 where x = 0 and y is not NaN (SciPy's convention)."""
    x, y = np.broadcast_arrays(*_floats(x, y))
    zero = (x == 0) & ~np.isnan(y) & ~finite(y)
    return np.where(zero, 0.0, x * log_fn(np.where(zero, 1.0, y)))


def xlogy(x, y):
    return _x_times(np.log, x, y, lambda y: (y > 0) & (y < np.inf))


def xlog1py(x, y):
    return _x_times(np.log1p, x, y, lambda y: (y > -1) & (y < np.inf))


def entr(x):
    """``−x log x`` for x > 0, 0 at 0, −inf below."""
    (x,) = _floats(x)
    pos = x > 0
    safe = np.where(pos, x, 1.0)
    below = np.where(np.isnan(x), x, np.zeros_like(x) - np.inf)     # (in x's dtype)
    return np.where(pos, -safe * np.log(safe), np.where(x == 0, 0.0, below))


def _relative(x, y, inside, at_zero):
    x, y = np.broadcast_arrays(*_floats(x, y))
    good = (x > 0) & (y > 0)
    edge = np.where((x == 0) & (y >= 0), at_zero(y), np.inf)
    nan = np.isnan(x) | np.isnan(y)
    return np.where(good, inside(np.where(good, x, 1.0), np.where(good, y, 1.0)),
                    np.where(nan, np.nan, edge))


def _x_log_ratio(x, y):
    """``x log(x/y)``; ``x log1p((x − y)/y)`` for a ratio in (1/2, 2) (SciPy's)."""
    r = x / y
    near = (r > 0.5) & (r < 2.0)
    return np.where(near, x * np.log1p((x - y) / y), x * np.log(np.where(near, 1.0, r)))


def rel_entr(x, y):
    """``x log(x/y)`` for x, y > 0; 0 for x = 0 and y ≥ 0; inf otherwise."""
    return _relative(x, y, _x_log_ratio, np.zeros_like)


def kl_div(x, y):
    """``x log(x/y) − x + y`` for x, y > 0; y for x = 0 and y ≥ 0; inf otherwise."""
    return _relative(x, y, lambda x, y: x * np.log(x / y) - x + y, lambda y: y)


def register() -> None:
    """Add these to the ufunc table (once, when a ``scipy.special`` ufunc first meets a
    traced array)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import scipy.special as sc
    table = {
        "erf": elementwise(ops.erf, float_result=True),
        "erfc": elementwise(ops.erfc, float_result=True),
        "gammaln": elementwise(ops.lgamma, float_result=True),
        "gamma": elementwise(ops.gamma, float_result=True),
        "psi": elementwise(ops.digamma, float_result=True),
        "ndtri": elementwise(ops.ndtri, float_result=True),
        "erfinv": elementwise(ops.erfinv, float_result=True),
        "erfcinv": erfcinv, "log_ndtr": log_ndtr,
        "expit": expit, "log_expit": log_expit, "logit": logit, "ndtr": ndtr,
        "xlogy": xlogy, "xlog1py": xlog1py, "entr": entr, "rel_entr": rel_entr,
        "kl_div": kl_div,
    }
    for name, impl in table.items():
        ufunc = getattr(sc, name, None)
        if isinstance(ufunc, np.ufunc):
            UFUNCS[ufunc] = impl
    _REGISTERED = True
