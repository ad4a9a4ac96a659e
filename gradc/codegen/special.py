"""Scalar special functions for the compiled targets: ``erf``, ``erfc``, ``gamma``,
``lgamma`` (libm's, through Numba's ``math``), and ``digamma``, ``polygamma``, ``ndtri`` and
``erfinv`` written out here (the last two for the CPU only: CUDA has libdevice's).

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
  Negative ``x`` is reflected for orders 1 and 2 (the derivatives of π cot(πx)), and
  summed up from ``x`` for higher orders, so that cost grows with ``|x|``.

Edges as SciPy's: poles give ``±inf`` (``ψ(±0) = ∓inf``, ``ψ`` of a negative integer
NaN, ``ψ⁽ⁿ⁾`` of a non-positive integer ``(−1)ⁿ⁺¹ inf``), a non-integer or negative
order NaN.
"""
from __future__ import annotations

import inspect
import math

import numba

_INF = math.inf


def _sp_whole(v):
    """Whether float ``v`` is a whole number (every float from 2⁵² on is; below, Numba's
    ``math.floor`` gives an int64)."""
    return abs(v) >= 4503599627370496.0 or v == math.floor(v)


def _sp_offset(x):
    """``x`` minus its nearest whole number, exact (for ``|x| < 2⁵²``): where the
    reflections' cot(πx) and sin(πx), of period 1, are read without losing digits."""
    return x - math.floor(x + 0.5)


def _sp_cotpi(r):
    """cot(πr) for |r| <= 1/2, its cosine as sin(π(1/2 − |r|)): exactly 0 at r = ±1/2,
    where cos(π/2) would leave 6e-17."""
    return math.sin(math.pi * (0.5 - abs(r))) / math.sin(math.pi * r)


def _sp_digamma(x):
    if x != x or x == -_INF:
        return math.nan
    if x == _INF:
        return _INF
    if x == 0.0:
        return -_INF if math.copysign(1.0, x) > 0 else _INF
    if x < 0.0 and _sp_whole(x):
        return math.nan
    shift = 0.0
    if x < 0.5:                       # ψ(x) = ψ(1 − x) − π cot(πx)
        shift = -math.pi * _sp_cotpi(_sp_offset(x))
        x = 1.0 - x
    while x < 10.0:
        shift -= 1.0 / x
        x += 1.0
    z = 1.0 / (x * x)
    series = z * (1.0 / 12 - z * (1.0 / 120 - z * (1.0 / 252 - z * (
        1.0 / 240 - z * (1.0 / 132 - z * (691.0 / 32760 - z / 12))))))
    return shift + math.log(x) - 0.5 / x - series


def _sp_polygamma(n, x):
    if n != n or x != x or n < 0.0 or not _sp_whole(n):
        return math.nan
    if n == 0.0:
        return _sp_digamma(x)
    s = n + 1.0
    odd = n < 4503599627370496.0 and n - 2.0 * math.floor(0.5 * n) == 1.0
    sign = 1.0 if odd else -1.0                                        # (−1)ⁿ⁺¹
    if x == _INF:
        return sign * 0.0
    if x == -_INF or (x <= 0.0 and _sp_whole(x)):
        return sign * _INF
    if n > 170.0:                 # n! overflows: SciPy's ±inf, NaN where ζ underflows
        return sign * _INF if x > 0.0 and x ** -s > 0.0 else math.nan
    reflected = 0.0
    if x < 0.0 and n <= 2.0:
        # ψ′(x) = π² csc²(πx) − ψ′(1 − x), ψ″(x) = −2π³ cot(πx) csc²(πx) + ψ″(1 − x)
        # (negative x is otherwise summed up from x: a cost that grows with |x|)
        r = _sp_offset(x)
        csc2 = (math.pi / math.sin(math.pi * r)) ** 2
        reflected = csc2 if n == 1.0 else -2.0 * math.pi * csc2 * _sp_cotpi(r)
        x = 1.0 - x
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
    value = sign * factorial * total
    return value if reflected == 0.0 else reflected - sign * value


# Acklam's rational approximation of the normal quantile (relative error < 1.2e-9),
# refined below by Halley steps on libm's erf/erfc
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
      3.754408661907416e+00)
_SQRT2PI = 2.5066282746310007          # √(2π), correctly rounded


def _quantile_guess(p):
    """Acklam's approximation of Φ⁻¹(p) for 0 < p <= 1/2."""
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        return ((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
                / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0))
    q = p - 0.5
    r = q * q
    return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0))


def _lower_quantile(p):
    """Φ⁻¹(p) for 0 < p <= 1/2: the guess, then two Halley steps on Φ(x) − p, written
    as ½ erf(x/√2) − (p − ½) from 1/4 on (no cancellation near the median) and as
    ½ erfc(−x/√2) − p below (relative accuracy in the tail)."""
    x = _quantile_guess(p)
    if p < 1e-300:
        # (exp(x²/2) would overflow: Newton steps on log Φ(x) = log p instead, with
        # log Φ(x) = −x²/2 − log(−x) − ½ log 2π + log S, S = 1 − 1/x² + 3/x⁴ − ...,
        # whose derivative is −x/S)
        log_p = math.log(p)
        for _ in range(3):
            z = 1.0 / (x * x)
            s = 1.0 - z * (1.0 - z * (3.0 - z * (15.0 - z * (105.0 - z * 945.0))))
            log_cdf = -0.5 * x * x - math.log(-x) - 0.9189385332046728 + math.log(s)
            x = x + (log_cdf - log_p) * s / x
        return x
    for _ in range(2):
        if p >= 0.25:
            e = 0.5 * math.erf(x * 0.7071067811865476) - (p - 0.5)
        else:
            e = 0.5 * math.erfc(-x * 0.7071067811865476) - p
        u = e * _SQRT2PI * math.exp(0.5 * x * x)
        x = x - u / (1.0 + 0.5 * x * u)
    return x


def ndtri(p):
    """Φ⁻¹(p), the standard normal quantile (SciPy's ``ndtri``)."""
    p = float(p)
    if not (0.0 <= p <= 1.0):
        return math.nan
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    return _lower_quantile(p) if p <= 0.5 else -_lower_quantile(1.0 - p)


def erfinv(y):
    """The inverse of erf: a guess from the normal quantile, then two Halley steps on
    erf(x) − y (or (1 − y) − erfc(x) from 1/2 on, where 1 − y is exact)."""
    y = float(y)
    if not (-1.0 <= y <= 1.0):
        return math.nan
    if y == 0.0 or abs(y) == 1.0:
        return y * math.inf if y != 0.0 else y
    a = abs(y)
    x = -_lower_quantile(0.5 * (1.0 - a)) * 0.7071067811865476
    for _ in range(2):
        e = math.erf(x) - a if a < 0.5 else (1.0 - a) - math.erfc(x)
        u = e * 0.886226925452758 * math.exp(x * x)          # e / erf′(x)
        x = x - u / (1.0 + x * u)
    return x if y > 0.0 else -x


def _device_source() -> str:
    """The two functions' text, for a kernel's inner functions."""
    return "\n".join(inspect.getsource(f) for f in (
        _sp_whole, _sp_offset, _sp_cotpi, _sp_digamma, _sp_polygamma)).replace(
            "_INF", "math.inf")


DEVICE_SOURCE = _device_source()
DEVICE_FUNCTIONS = ("_sp_digamma", "_sp_polygamma")       # (the entry points)

_jit = numba.njit(cache=True, error_model="numpy")
# (rebound to their jitted forms: calls between them then find jitted functions)
_sp_whole = _jit(_sp_whole)
_sp_offset = _jit(_sp_offset)
_sp_cotpi = _jit(_sp_cotpi)
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
def gamma(x):
    return math.gamma(float(x))


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


_quantile_guess = _jit(_quantile_guess)
_lower_quantile = _jit(_lower_quantile)
ndtri = _jit(ndtri)
erfinv = _jit(erfinv)
