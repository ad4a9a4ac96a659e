"""Special functions: ``erf``, ``erfc``, ``gamma``, ``lgamma``, ``digamma``,
``polygamma``, ``ndtri`` (the standard normal quantile) and ``erfinv``.

Elementwise on floats, like ``elementwise.py``'s (and fused with them).  The interpreter
runs SciPy's (``scipy.special.erf``, ``erfc``, ``gammaln``, ``psi``, ``polygamma``), the
compiled targets ``codegen.special``'s.  Derivatives:

* ``erf′(x) = 2/√π e^(−x²)``, ``erfc′ = −erf′``;
* ``gamma′ = gamma · digamma``, ``lgamma′ = digamma``, ``digamma′ = polygamma(1, ·)``, and
  ``∂ polygamma(n, x)/∂x = polygamma(n + 1, x)``, so every order of derivative is a
  primitive here.  The order ``n`` (a float array holding integers, as SciPy takes it)
  has no derivative: one asked for is an error;
* inverses from their results: ``ndtri′(p) = √(2π) e^(x²/2)`` and
  ``erfinv′(y) = (√π/2) e^(x²)`` at ``x`` the result.
"""
from __future__ import annotations


import numpy as np

from ..errors import DTypeError, UnsupportedError, with_location
from ..ir import dtype_name, is_float
from ..trace import bind
from .elementwise import _binary, _unary, add, exp, mul, neg
from .rules import defjvp


def _scipy(name):
    def impl(*args):
        import scipy.special
        dtype = np.result_type(*args)
        with np.errstate(all="ignore"):
            return np.asarray(getattr(scipy.special, name)(*args), dtype)
    impl.__name__ = name
    return impl


# (correctly rounded, so that gradc.to_sympy reads them as 2/√π, √(2π), √π/2)
_TWO_OVER_SQRT_PI = 1.1283791670955126
_SQRT_2PI, _SQRT_PI_OVER_2 = 2.5066282746310007, 0.886226925452758

erf_p = _unary("erf", _scipy("erf"))
defjvp(erf_p, lambda t, ans, x: mul(t, mul(exp(neg(mul(x, x))), _TWO_OVER_SQRT_PI)))
erfc_p = _unary("erfc", _scipy("erfc"))
defjvp(erfc_p, lambda t, ans, x: mul(t, mul(exp(neg(mul(x, x))), -_TWO_OVER_SQRT_PI)))
gamma_p = _unary("gamma", _scipy("gamma"))
defjvp(gamma_p, lambda t, ans, x: mul(t, mul(ans, digamma(x))))
lgamma_p = _unary("lgamma", _scipy("gammaln"))
defjvp(lgamma_p, lambda t, ans, x: mul(t, digamma(x)))
digamma_p = _unary("digamma", _scipy("psi"))
defjvp(digamma_p, lambda t, ans, x: mul(t, polygamma(np.asarray(1.0, x.dtype), x)))
polygamma_p = _binary("polygamma", _scipy("polygamma"))
_same_dtype_abstract = polygamma_p.abstract


def _polygamma_abstract(n, x):
    if not is_float(x.dtype):
        raise DTypeError(f"polygamma needs floating-point operands, got {dtype_name(x.dtype)}")
    return _same_dtype_abstract(n, x)


polygamma_p.abstract = _polygamma_abstract


ndtri_p = _unary("ndtri", _scipy("ndtri"))
defjvp(ndtri_p, lambda t, ans, p: mul(t, mul(exp(mul(mul(ans, ans), 0.5)), _SQRT_2PI)))
erfinv_p = _unary("erfinv", _scipy("erfinv"))
defjvp(erfinv_p, lambda t, ans, y: mul(t, mul(exp(mul(ans, ans)), _SQRT_PI_OVER_2)))


def _no_order_derivative(t, ans, n, x):
    raise UnsupportedError(with_location(
        "polygamma(n, x) has no derivative with respect to its order n (an integer); "
        "pass n as a constant, or through gradc.stop_gradient"))


defjvp(polygamma_p, _no_order_derivative,
       lambda t, ans, n, x: mul(t, polygamma(add(n, 1.0), x)))


def erf(x):
    return bind(erf_p, x)


def erfc(x):
    return bind(erfc_p, x)


def gamma(x):
    return bind(gamma_p, x)


def lgamma(x):
    return bind(lgamma_p, x)


def digamma(x):
    return bind(digamma_p, x)


def polygamma(n, x):
    """ψ⁽ⁿ⁾(x), the operands in NumPy's common float dtype (integers as float64, as in
    SciPy)."""
    from ..numpy_api import promote
    return bind(polygamma_p, *promote(n, x, float_result=True))


def ndtri(p):
    return bind(ndtri_p, p)


def erfinv(y):
    return bind(erfinv_p, y)
