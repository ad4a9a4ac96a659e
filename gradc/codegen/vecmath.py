"""``exp``, ``log``, ``log1p`` and ``tanh`` that LLVM can vectorise, for the CPU target's
fused loops.

Numba lowers ``np.exp``, ``np.log``, ``np.log1p`` and ``np.tanh`` of a scalar to calls of
libm's: one element at a time, 3 ns for ``exp``, 2.5-10 ns for ``log``, 3.5-16 ns for
``log1p`` and 14 ns for ``tanh`` on this machine, and a loop that calls them is never
vectorised (the pip builds of llvmlite have no vector math library).  NumPy's own
ufuncs are SIMD code, and ``passes.fuse`` leaves large transcendentals to them
(``VECTOR_UFUNCS``); the loops below that size (a neural ODE's 256 hidden units, an
RNN's state) spent most of their time in libm.

Here the functions are written as LLVM instructions at each call (Numba
``intrinsic``\\ s: one call to type, no function to inline), arithmetic, bit operations
and selects only, so a loop over them vectorises (about 1 ns an element):

* ``exp``: ``x = n ln 2 + r`` with ``|r| <= ln 2 / 2`` (ln 2 in two parts, Cody and
  Waite, so ``n * C1`` is exact), ``e^r`` by its Taylor polynomial to degree 13
  (truncation below 5e-18), and ``2^n`` built from its exponent bits in two factors,
  so results down into the subnormals round once.  Below -745.2 it is 0, above 709.79
  inf, NaN stays NaN.
* ``tanh``: below 0.625 in magnitude Cephes' rational form ``x + x z P(z) / Q(z)``
  (``z = x^2``), above it ``1 - 2 / (e^{2|x|} + 1)`` with the ``exp`` above (1 from 20
  on), its sign copied from ``x``; ±0 and NaN are returned as they are.
* ``log``: fdlibm's: ``x = m 2^k`` with ``m`` in ``[√2/2, √2)`` read from the exponent
  bits (a subnormal ``x`` scaled by 2^54 first), ``ln m = 2 atanh(s)``,
  ``s = (m - 1) / (m + 1)``, by its odd series in two halves, and ``k ln 2`` in two
  parts.  0 gives -inf, a negative number NaN.
* ``log1p``: ``ln(u) x / (u - 1)``, ``u = 1 + x`` (Goldberg), or ``x`` where ``u`` is 1.

Measured against NumPy's own functions on 10⁶-2·10⁶ points of several ranges: at most
1 ulp for ``exp`` and ``log``, 2 ulp for ``log1p`` and ``tanh`` (libm's ``tanh``, what the
compiled loops called before, differs from NumPy's by up to 3).  float32 arguments are
computed in float64 and rounded once.  ``tests/test_vecmath.py`` keeps those bounds.
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_F64 = ir.DoubleType()
_I64 = ir.IntType(64)

_LOG2E = 1.4426950408889634
_C1 = 6.93145751953125e-1              # ln 2's leading bits: n * _C1 is exact for |n| < 2^11
_C2 = 1.42860682030941723212e-6        # ... and the rest
_TAYLOR = [1.0 / math.factorial(k) for k in range(2, 14)]    # e^r = 1 + r + r^2 (...)
_ROUND = 6755399441055744.0            # 1.5 * 2^52: adding it leaves n in the low bits
# Cephes' tanh for |x| < 0.625: x + x z P(z) / Q(z), z = x^2
_TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1,
           -1.61468768441708447952e3)
_TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3,
           4.84406305325125486048e3)


# ln x = k ln 2 + ln m, ln m = 2 atanh(s) with s = (m - 1) / (m + 1): fdlibm's form
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_LOG_ODD = (6.666666666666735130e-01, 2.857142874366239149e-01, 1.818357216161805012e-01,
            1.479819860511658591e-01)     # (in s^2, times s^2 ...: Lg1, Lg3, Lg5, Lg7)
_LOG_EVEN = (3.999999999940941908e-01, 2.222219843214978396e-01, 1.531383769920937332e-01)


def _const(v: float):
    return ir.Constant(_F64, v)


def _call(builder, name: str, *args):
    fn = builder.module.declare_intrinsic(name, [_F64])
    return builder.call(fn, list(args))


def _clamp(builder, x, lo: float, hi: float):
    """``x`` within ``[lo, hi]``; NaN gives ``lo`` (ordered comparisons are false)."""
    x = builder.select(builder.fcmp_ordered(">", x, _const(lo)), x, _const(lo))
    return builder.select(builder.fcmp_ordered("<", x, _const(hi)), x, _const(hi))


def _exp(builder, x):
    """e^x in float64 instructions (see the module's text)."""
    xc = _clamp(builder, x, -745.2, 709.8)
    n = _call(builder, "llvm.floor", builder.fadd(builder.fmul(xc, _const(_LOG2E)),
                                                  _const(0.5)))
    r = builder.fsub(builder.fsub(xc, builder.fmul(n, _const(_C1))),
                     builder.fmul(n, _const(_C2)))
    q = _const(_TAYLOR[-1])
    for c in reversed(_TAYLOR[:-1]):
        q = builder.fadd(_const(c), builder.fmul(r, q))
    e = builder.fadd(_const(1.0), builder.fadd(r, builder.fmul(builder.fmul(r, r), q)))
    # n (a whole number in [-1075, 1025]) as an integer without a conversion instruction
    # (AVX2 has none for 64-bit integers): its bits once 1.5 * 2^52 is added
    bits = builder.bitcast(builder.fadd(n, _const(_ROUND)), _I64)
    k = builder.sub(bits, builder.bitcast(_const(_ROUND), _I64))
    half = builder.ashr(k, ir.Constant(_I64, 1))

    def power(m):                         # 2^m for m in [-1022, 1023]
        return builder.bitcast(builder.shl(builder.add(m, ir.Constant(_I64, 1023)),
                                           ir.Constant(_I64, 52)), _F64)
    y = builder.fmul(builder.fmul(e, power(half)), power(builder.sub(k, half)))
    y = builder.select(builder.fcmp_ordered(">", x, _const(709.79)), _const(math.inf), y)
    return builder.select(builder.fcmp_unordered("uno", x, x), x, y)


def _tanh(builder, x):
    """tanh(x) in float64 instructions (see the module's text)."""
    ax = _call(builder, "llvm.fabs", x)
    z = builder.fmul(x, x)
    p = builder.fadd(builder.fmul(builder.fadd(builder.fmul(_const(_TANH_P[0]), z),
                                               _const(_TANH_P[1])), z), _const(_TANH_P[2]))
    q = builder.fadd(builder.fmul(builder.fadd(builder.fmul(builder.fadd(
        z, _const(_TANH_Q[0])), z), _const(_TANH_Q[1])), z), _const(_TANH_Q[2]))
    small = builder.fadd(x, builder.fmul(x, builder.fmul(z, builder.fdiv(p, q))))
    a = builder.select(builder.fcmp_ordered("<", ax, _const(20.0)), ax, _const(20.0))
    e = _exp(builder, builder.fadd(a, a))
    big = builder.fsub(_const(1.0), builder.fdiv(_const(2.0), builder.fadd(e, _const(1.0))))
    fn = builder.module.declare_intrinsic("llvm.copysign", [_F64],
                                          ir.FunctionType(_F64, [_F64, _F64]))
    big = builder.call(fn, [big, x])
    y = builder.select(builder.fcmp_ordered("<", ax, _const(0.625)), small, big)
    # ±0 (whose sign the rational form would lose) and NaN as they are
    return builder.select(builder.fcmp_unordered("==", x, _const(0.0)), x, y)


def _whole_to_float(builder, k):
    """Integer ``k`` (|k| < 2^51) as a float64 without a conversion instruction."""
    bits = builder.add(k, builder.bitcast(_const(_ROUND), _I64))
    return builder.fsub(builder.bitcast(bits, _F64), _const(_ROUND))


def _log(builder, x):
    """ln(x) in float64 instructions (see the module's text)."""
    i64 = lambda v: ir.Constant(_I64, v)       # noqa: E731
    tiny = builder.fcmp_ordered("<", x, _const(2.2250738585072014e-308))
    xs = builder.select(tiny, builder.fmul(x, _const(18014398509481984.0)), x)   # (2^54)
    bits = builder.bitcast(xs, _I64)
    high, low = builder.lshr(bits, i64(32)), builder.and_(bits, i64(0xFFFFFFFF))
    k = builder.sub(builder.lshr(high, i64(20)), i64(1023))
    k = builder.select(tiny, builder.sub(k, i64(54)), k)
    high = builder.and_(high, i64(0x000FFFFF))
    # the mantissa m within [sqrt(2)/2, sqrt(2)), x = m 2^k
    i = builder.and_(builder.add(high, i64(0x95F64)), i64(0x100000))
    m = builder.bitcast(builder.or_(builder.shl(builder.or_(
        high, builder.xor(i, i64(0x3FF00000))), i64(32)), low), _F64)
    k = builder.add(k, builder.lshr(i, i64(20)))
    f = builder.fsub(m, _const(1.0))
    s = builder.fdiv(f, builder.fadd(_const(2.0), f))
    z = builder.fmul(s, s)
    w = builder.fmul(z, z)

    def horner(v, coefficients):
        acc = _const(coefficients[-1])
        for c in reversed(coefficients[:-1]):
            acc = builder.fadd(_const(c), builder.fmul(v, acc))
        return acc
    r = builder.fadd(builder.fmul(z, horner(w, _LOG_ODD)),
                     builder.fmul(w, horner(w, _LOG_EVEN)))
    dk = _whole_to_float(builder, k)
    hfsq = builder.fmul(_const(0.5), builder.fmul(f, f))
    inner = builder.fadd(builder.fmul(s, builder.fadd(hfsq, r)), builder.fmul(dk, _const(_LN2_LO)))
    y = builder.fsub(builder.fmul(dk, _const(_LN2_HI)), builder.fsub(builder.fsub(hfsq, inner), f))
    # 0 gives -inf, a negative number NaN, inf and NaN themselves
    y = builder.select(builder.fcmp_ordered("==", x, _const(0.0)), _const(-math.inf), y)
    y = builder.select(builder.fcmp_ordered("<", x, _const(0.0)), _const(math.nan), y)
    return builder.select(builder.fcmp_unordered("uno", x, x),
                          x, builder.select(builder.fcmp_ordered("==", x, _const(math.inf)), x, y))


def _log1p(builder, x):
    """ln(1 + x) in float64 instructions: ``ln(u) x / (u - 1)`` with ``u = 1 + x``
    (Goldberg's: the rounding of ``u`` cancels), ``x`` itself where ``u`` rounds to 1."""
    u = builder.fadd(_const(1.0), x)
    y = builder.fmul(_log(builder, u), builder.fdiv(x, builder.fsub(u, _const(1.0))))
    y = builder.select(builder.fcmp_ordered("==", u, _const(1.0)), x, y)
    # inf (whose ratio inf / inf is NaN) and -1 (0 / 0... times -inf) as NumPy's
    y = builder.select(builder.fcmp_ordered("==", x, _const(math.inf)), x, y)
    return builder.select(builder.fcmp_ordered("==", x, _const(-1.0)), _const(-math.inf), y)


def _float_intrinsic(emit):
    """A Numba intrinsic of one float32 or float64 argument, of its type, computing in
    float64 by ``emit(builder, x)``."""
    def typer(typingctx, x):
        if not isinstance(x, types.Float) or x.bitwidth not in (32, 64):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            if x.bitwidth == 32:
                v = builder.fpext(v, _F64)
            y = emit(builder, v)
            return builder.fptrunc(y, ir.FloatType()) if x.bitwidth == 32 else y
        return x(x), codegen
    typer.__name__ = emit.__name__.lstrip("_")
    return intrinsic(typer)


exp = _float_intrinsic(_exp)
tanh = _float_intrinsic(_tanh)
log = _float_intrinsic(_log)
log1p = _float_intrinsic(_log1p)
