"""Scalar special functions for the compiled targets: ``erf``, ``erfc``, ``lgamma``
(libm's, through Numba's ``math``), and ``digamma`` / ``polygamma`` written out here.

``digamma`` and ``polygamma`` are plain Python on floats and ``math``, so that one text
serves both targets: the CPU lowering calls them jitted (``kernels.digamma``, ...), and
the CUDA lowering copies their source into each kernel that uses them as inner functions
(``DEVICE_SOURCE``: Numba inlines those, where a ``cuda.jit(device=True)`` function
would need a GPU just to compile to PTX).  The interpreter uses SciPy's (``psi``,
``polygamma``); these agree with it to a few ulps away from the functions' zeros.

* ``digamma``: the reflection ``ψ(x) = ψ(1 − x) − π cot(πx)`` below 1/2, the recurrence
  ``ψ(x) = ψ(x + 1) − 1/x`` up to 10, then the asymptotic series in Bernoulli numbers
  (truncation error under 1e-16 from 10 on).
* ``polygamma`` of order ``n ≥ 1``: ``(−1)ⁿ⁺¹ n! ζ(n + 1, x)``, the Hurwitz zeta summed
  directly up to ``10 + n`` and by Euler–Maclaurin beyond (eight Bernoulli terms).
  Negative ``x`` is summed up from ``x``, so its cost grows with ``|x|``.

Edges as SciPy's: poles give ``±inf`` (``ψ(±0) = ∓inf``, ``ψ`` of a negative integer
NaN, ``ψ⁽ⁿ⁾`` of a non-positive integer ``(−1)ⁿ⁺¹ inf``), a non-integer or negative
order NaN.
"""
from __future__ import annotations

import inspect
import math

import numba

_INF = math.inf


def _sp_digamma(x):
    if x != x or x == -_INF:
        return math.nan
    if x == _INF:
        return _INF
    if x == 0.0:
        return -_INF if math.copysign(1.0, x) > 0 else _INF
    if x < 0.0 and x == math.floor(x):
        return math.nan
    shift = 0.0
    if x < 0.5:                       # ψ(x) = ψ(1 − x) − π cot(πx), cot of period 1
        r = x - math.floor(x)
        shift = -math.pi / math.tan(math.pi * r)
        x = 1.0 - x
    while x < 10.0:
        shift -= 1.0 / x
        x += 1.0
    z = 1.0 / (x * x)
    series = z * (1.0 / 12 - z * (1.0 / 120 - z * (1.0 / 252 - z * (
        1.0 / 240 - z * (1.0 / 132 - z * (691.0 / 32760 - z / 12))))))
    return shift + math.log(x) - 0.5 / x - series


def _sp_polygamma(n, x):
    if n != n or x != x or n < 0.0 or n != math.floor(n):
        return math.nan
    if n == 0.0:
        return _sp_digamma(x)
    s = n + 1.0
    sign = 1.0 if n - 2.0 * math.floor(0.5 * n) == 1.0 else -1.0     # (−1)ⁿ⁺¹
    if x == _INF:
        return sign * 0.0
    if x == -_INF or (x <= 0.0 and x == math.floor(x)):
        return sign * _INF
    factorial = 1.0
    k = 2.0
    while k <= n:
        factorial *= k
        k += 1.0
    total = 0.0                                              # ζ(s, x) = Σ (x + k)^−s
    top = 10.0 + n
    while x < top:
        total += x ** -s
        x += 1.0
    ys = x ** -s
    total += x ** (1.0 - s) / n + 0.5 * ys
    b = (1.0 / 6, -1.0 / 30, 1.0 / 42, -1.0 / 30, 5.0 / 66, -691.0 / 2730, 7.0 / 6,
         -3617.0 / 510)
    c = s * ys / (2.0 * x)             # s (s+1) ... (s+2k−2) x^(−s−2k+1) / (2k)!
    for j in range(8):
        total += b[j] * c
        m = 2.0 * j + 2.0
        c *= (s + m - 1.0) * (s + m) / ((m + 1.0) * (m + 2.0) * x * x)
    return sign * factorial * total


def _device_source() -> str:
    """The two functions' text, for a kernel's inner functions."""
    return "\n".join(inspect.getsource(f) for f in (_sp_digamma, _sp_polygamma)).replace(
        "_INF", "math.inf")


DEVICE_SOURCE = _device_source()
DEVICE_FUNCTIONS = ("_sp_digamma", "_sp_polygamma")

_jit = numba.njit(cache=True, error_model="numpy")
# (rebound to their jitted forms: _sp_polygamma's call of _sp_digamma then finds one)
_sp_digamma = _jit(_sp_digamma)
_sp_polygamma = _jit(_sp_polygamma)

# The CPU lowering's functions (``kernels.erf`` ...), in float64 (``pysource`` rounds a
# float32 result back: ``element_template``).


@_jit
def erf(x):
    return math.erf(float(x))


@_jit
def erfc(x):
    return math.erfc(float(x))


@_jit
def lgamma(x):
    x = float(x)
    return -math.inf if x == -math.inf else math.lgamma(x)     # (SciPy's gammaln(-inf))


@_jit
def digamma(x):
    return _sp_digamma(float(x))


@_jit
def polygamma(n, x):
    return _sp_polygamma(float(n), float(x))


NAMES = ("erf", "erfc", "lgamma", "digamma", "polygamma")
