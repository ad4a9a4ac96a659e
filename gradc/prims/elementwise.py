"""Elementwise primitives: one stanza each (implementation, shape rule, JVP, transpose).

Operands of an n-ary elementwise primitive have equal dtypes and equal shapes, except
that a rank-0 operand broadcasts implicitly (so ``mul(x, 2.0)`` needs no broadcast
equation).  NumPy's general broadcasting and type promotion happen in the tracer's
NumPy layer (``gradc.numpy_api``), which inserts explicit ``broadcast_in_dim`` and
``convert_element_type`` equations.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Primitive, dtype_name, is_float
from ..trace import Tracer, bind, dtype_of
from .rules import deflinear, defjvp, defzero, is_undefined, unbroadcast


def _lift(x, like):
    """A Python scalar operand takes the dtype of the array it meets (NumPy's weak scalars)."""
    if isinstance(x, (int, float, complex, bool)) and not isinstance(x, np.generic):
        return np.asarray(x, dtype=like.dtype if hasattr(like, "dtype") else None)
    return x


def _elementwise_shape(*avals):
    shapes = {tuple(a.shape) for a in avals if len(a.shape) > 0}
    if len(shapes) > 1:
        raise ShapeError("elementwise operands must have equal shapes or be rank 0, got "
                         + ", ".join(str(tuple(a.shape)) for a in avals))
    return shapes.pop() if shapes else ()


def _same_dtype(prim, avals):
    dtypes = {np.dtype(a.dtype) for a in avals}
    if len(dtypes) > 1:
        raise DTypeError(f"{prim}: operands have different dtypes "
                        + ", ".join(dtype_name(d) for d in dtypes))
    return dtypes.pop()


def _unary(name, impl, float_only=True):
    prim = Primitive(name)
    prim.impl = impl

    def abstract(x):
        if float_only and not is_float(x.dtype):
            raise DTypeError(f"{name} needs a floating-point operand, got {dtype_name(x.dtype)}")
        return [(tuple(x.shape), x.dtype)]
    prim.abstract = abstract
    return prim


def _binary(name, impl, out_dtype=None):
    prim = Primitive(name)
    prim.impl = impl

    def abstract(x, y):
        dtype = _same_dtype(name, (x, y))
        return [(_elementwise_shape(x, y), out_dtype or dtype)]
    prim.abstract = abstract
    return prim


# ---------------------------------------------------------------- arithmetic (linear)

neg_p = _unary("neg", np.negative, float_only=False)
deflinear(neg_p, lambda ct, x: [neg(ct)])


def neg(x):
    return bind(neg_p, x)


add_p = _binary("add", np.add)


def _add_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    ans = add(x, y)
    if tx is None and ty is None:
        return ans, None
    if tx is None:
        return ans, _broadcast_like(ty, ans)
    if ty is None:
        return ans, _broadcast_like(tx, ans)
    return ans, add(tx, ty)


add_p.jvp = _add_jvp
add_p.transpose = lambda ct, x, y: [unbroadcast(ct, x.shape) if is_undefined(x) else None,
                                    unbroadcast(ct, y.shape) if is_undefined(y) else None]


def add(x, y):
    return bind(add_p, _lift(x, y), _lift(y, x))


sub_p = _binary("sub", np.subtract)


def _sub_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    ans = sub(x, y)
    if tx is None and ty is None:
        return ans, None
    if tx is None:
        return ans, _broadcast_like(neg(ty), ans)
    if ty is None:
        return ans, _broadcast_like(tx, ans)
    return ans, sub(tx, ty)


sub_p.jvp = _sub_jvp
sub_p.transpose = lambda ct, x, y: [unbroadcast(ct, x.shape) if is_undefined(x) else None,
                                    unbroadcast(neg(ct), y.shape) if is_undefined(y) else None]


def sub(x, y):
    return bind(sub_p, _lift(x, y), _lift(y, x))


def _broadcast_like(t, ans):
    if tuple(np.shape(t)) == tuple(np.shape(ans)):
        return t
    from .shape import broadcast_in_dim
    return broadcast_in_dim(t, tuple(np.shape(ans)), ())


# ---------------------------------------------------------------- arithmetic (nonlinear)

mul_p = _binary("mul", np.multiply)


def _mul_transpose(ct, x, y):
    if is_undefined(x) and is_undefined(y):
        raise ValueError("mul is not linear in both operands at once")
    if is_undefined(x):
        return [unbroadcast(mul(ct, y), x.shape), None]
    return [None, unbroadcast(mul(x, ct), y.shape)]


defjvp(mul_p, lambda t, ans, x, y: mul(t, y), lambda t, ans, x, y: mul(x, t))
mul_p.transpose = _mul_transpose


def mul(x, y):
    return bind(mul_p, _lift(x, y), _lift(y, x))


div_p = _binary("div", np.true_divide)
# d(x/y) = dx/y - (x/y) dy/y;  div is linear in x (transpose: ct/y).
defjvp(div_p, lambda t, ans, x, y: div(t, y),
       lambda t, ans, x, y: neg(mul(t, div(ans, y))))
div_p.transpose = lambda ct, x, y: [unbroadcast(div(ct, y), x.shape), None]


def div(x, y):
    return bind(div_p, _lift(x, y), _lift(y, x))


def _power(x, y):
    """``np.power``, with a scalar float exponent of 0.5 as ``np.sqrt`` (at -inf and -0.0:
    NaN and -0.0), as NumPy's ``x ** 0.5`` computes it and the compiled targets do
    (``codegen.pysource.eqn_template``); ``np.power`` itself gives inf and 0.0 there in
    NumPy 2.1, NaN and -0.0 in 2.4."""
    if (np.ndim(y) == 0 and np.result_type(x).kind == "f" and float(y) == 0.5):
        return np.sqrt(x)
    return np.power(x, y)


pow_p = _binary("pow", _power)


def _pow_dy(t, ans, x, y):
    # d(x^y)/dy = x^y log x, taken as 0 where x == 0 (the limit for y > 0).
    safe_log = log(select(eq(x, 0.0), _ones_like(x), x))
    return mul(t, mul(ans, safe_log))


def _ones_like(x):
    from .shape import broadcast_in_dim
    one = np.ones((), dtype=x.dtype)
    return broadcast_in_dim(one, tuple(x.shape), ()) if x.shape else one


def _pow_dx(t, ans, x, y):
    # d(x^y)/dx = y x^(y-1), taken as 0 where y == 0: x^0 is constant, also at x = 0
    # where y x^(y-1) would be 0·inf.  This also makes every higher derivative of an
    # integer power finite at 0 (d²(x¹)/dx² = 1·0·x⁻¹ → 0).  A constant exponent with no
    # zeros needs no select.
    d = mul(y, pow(x, sub(y, 1.0)))
    if isinstance(y, Tracer) or np.any(np.asarray(y) == 0):
        d = select(eq(y, 0.0), np.zeros((), dtype_of(d)), d)
    return mul(t, d)


defjvp(pow_p, _pow_dx, _pow_dy)


def pow(x, y):
    return bind(pow_p, _lift(x, y), _lift(y, x))


max_p = _binary("max", np.maximum)
min_p = _binary("min", np.minimum)


def _choose(pick_x, t_is_x):
    """Tangent weight of max/min: 1 on the chosen side, 1/2 each at ties (as JAX)."""
    def rule(t, ans, x, y):
        wins = pick_x(x, y) if t_is_x else pick_x(y, x)
        ties = eq(x, y)
        w = select(wins, _ones_like_shape(ans, 1.0), _ones_like_shape(ans, 0.0))
        w = select(ties, _ones_like_shape(ans, 0.5), w)
        return mul(_broadcast_like(t, ans), w)
    return rule


def _ones_like_shape(like, value):
    from .shape import broadcast_in_dim
    c = np.asarray(value, dtype=like.dtype)
    return broadcast_in_dim(c, tuple(like.shape), ()) if like.shape else c


defjvp(max_p, _choose(lambda a, b: gt(a, b), True), _choose(lambda a, b: gt(a, b), False))
defjvp(min_p, _choose(lambda a, b: lt(a, b), True), _choose(lambda a, b: lt(a, b), False))


def maximum(x, y):
    return bind(max_p, _lift(x, y), _lift(y, x))


def minimum(x, y):
    return bind(min_p, _lift(x, y), _lift(y, x))


atan2_p = _binary("atan2", np.arctan2)
# atan2(y, x): d = (x dy - y dx) / (x² + y²)
defjvp(atan2_p,
       lambda t, ans, y, x: mul(t, div(x, add(mul(x, x), mul(y, y)))),
       lambda t, ans, y, x: neg(mul(t, div(y, add(mul(x, x), mul(y, y))))))


def atan2(y, x):
    return bind(atan2_p, _lift(y, x), _lift(x, y))


rem_p = _binary("rem", np.mod)
# x mod y = x - y floor(x / y): d/dx = 1, d/dy = -floor(x / y)
defjvp(rem_p, lambda t, ans, x, y: _broadcast_like(t, ans),
       lambda t, ans, x, y: neg(mul(t, floor(div(x, y)))))


def rem(x, y):
    return bind(rem_p, _lift(x, y), _lift(y, x))


fmod_p = _binary("fmod", np.fmod)
# C's remainder, exact, with x's sign: x - y trunc(x / y): d/dx = 1, d/dy = -trunc(x / y)
defjvp(fmod_p, lambda t, ans, x, y: _broadcast_like(t, ans),
       lambda t, ans, x, y: neg(mul(t, trunc(div(x, y)))))


def fmod(x, y):
    return bind(fmod_p, _lift(x, y), _lift(y, x))


# ---------------------------------------------------------------- transcendental

def _def_unary(name, impl, rule):
    prim = _unary(name, impl)
    defjvp(prim, rule)
    return prim


exp_p = _def_unary("exp", np.exp, lambda t, ans, x: mul(t, ans))
expm1_p = _def_unary("expm1", np.expm1, lambda t, ans, x: mul(t, add(ans, 1.0)))
log_p = _def_unary("log", np.log, lambda t, ans, x: div(t, x))
log1p_p = _def_unary("log1p", np.log1p, lambda t, ans, x: div(t, add(x, 1.0)))
# (primitives of their own, not log(x) / log(10): NumPy's log10(1000.0) is 3.0 exactly)
_LN2, _LN10 = float(np.log(2.0)), float(np.log(10.0))
log2_p = _def_unary("log2", np.log2, lambda t, ans, x: div(t, mul(x, _LN2)))
log10_p = _def_unary("log10", np.log10, lambda t, ans, x: div(t, mul(x, _LN10)))
exp2_p = _def_unary("exp2", np.exp2, lambda t, ans, x: mul(t, mul(ans, _LN2)))
sqrt_p = _def_unary("sqrt", np.sqrt, lambda t, ans, x: div(t, mul(ans, 2.0)))
cbrt_p = _def_unary("cbrt", np.cbrt, lambda t, ans, x: div(t, mul(mul(ans, ans), 3.0)))
sin_p = _def_unary("sin", np.sin, lambda t, ans, x: mul(t, cos(x)))
cos_p = _def_unary("cos", np.cos, lambda t, ans, x: neg(mul(t, sin(x))))
tan_p = _def_unary("tan", np.tan, lambda t, ans, x: mul(t, add(mul(ans, ans), 1.0)))
asin_p = _def_unary("asin", np.arcsin,
                    lambda t, ans, x: div(t, sqrt(sub(1.0, mul(x, x)))))
acos_p = _def_unary("acos", np.arccos,
                    lambda t, ans, x: neg(div(t, sqrt(sub(1.0, mul(x, x))))))
atan_p = _def_unary("atan", np.arctan, lambda t, ans, x: div(t, add(mul(x, x), 1.0)))
sinh_p = _def_unary("sinh", np.sinh, lambda t, ans, x: mul(t, cosh(x)))
cosh_p = _def_unary("cosh", np.cosh, lambda t, ans, x: mul(t, sinh(x)))
tanh_p = _def_unary("tanh", np.tanh, lambda t, ans, x: mul(t, sub(1.0, mul(ans, ans))))
asinh_p = _def_unary("asinh", np.arcsinh,
                     lambda t, ans, x: div(t, sqrt(add(mul(x, x), 1.0))))
# sqrt(x-1) sqrt(x+1) rather than sqrt(x²-1): no cancellation near x = 1
acosh_p = _def_unary("acosh", np.arccosh,
                     lambda t, ans, x: div(t, mul(sqrt(sub(x, 1.0)), sqrt(add(x, 1.0)))))
atanh_p = _def_unary("atanh", np.arctanh, lambda t, ans, x: div(t, sub(1.0, mul(x, x))))
abs_p = _unary("abs", np.abs, float_only=False)
# (|z| of a complex z is real, as NumPy's)
abs_p.abstract = lambda x: [(tuple(x.shape), np.abs(np.zeros((), x.dtype)).dtype)]
defjvp(abs_p, lambda t, ans, x: mul(t, sign(x)))


def _make_unary_op(prim):
    def op(x):
        return bind(prim, x)
    op.__name__ = prim.name
    op.__doc__ = f"Apply the ``{prim.name}`` primitive elementwise."
    return op


exp = _make_unary_op(exp_p)
expm1 = _make_unary_op(expm1_p)
log = _make_unary_op(log_p)
log1p = _make_unary_op(log1p_p)
log2 = _make_unary_op(log2_p)
log10 = _make_unary_op(log10_p)
exp2 = _make_unary_op(exp2_p)
sqrt = _make_unary_op(sqrt_p)
cbrt = _make_unary_op(cbrt_p)
sin = _make_unary_op(sin_p)
cos = _make_unary_op(cos_p)
tan = _make_unary_op(tan_p)
asin = _make_unary_op(asin_p)
acos = _make_unary_op(acos_p)
atan = _make_unary_op(atan_p)
sinh = _make_unary_op(sinh_p)
cosh = _make_unary_op(cosh_p)
tanh = _make_unary_op(tanh_p)
asinh = _make_unary_op(asinh_p)
acosh = _make_unary_op(acosh_p)
atanh = _make_unary_op(atanh_p)
abs = _make_unary_op(abs_p)

# ---------------------------------------------------------------- piecewise constant

sign_p = _unary("sign", np.sign, float_only=False)
floor_p = _unary("floor", np.floor)
ceil_p = _unary("ceil", np.ceil)
round_p = _unary("round", np.rint)
trunc_p = _unary("trunc", np.trunc)
for _p in (sign_p, floor_p, ceil_p, round_p, trunc_p):
    defzero(_p)
sign = _make_unary_op(sign_p)
floor = _make_unary_op(floor_p)
ceil = _make_unary_op(ceil_p)
round = _make_unary_op(round_p)
trunc = _make_unary_op(trunc_p)

# ---------------------------------------------------------------- comparisons and logic

_BOOL = np.dtype(bool)


def _compare(name, impl):
    prim = _binary(name, impl, out_dtype=_BOOL)
    defzero(prim)
    return prim, _binary_op(prim)


def _binary_op(prim):
    """The operation binding binary ``prim``, Python scalars taking the other's dtype."""
    def op(x, y):
        return bind(prim, _lift(x, y), _lift(y, x))
    op.__name__ = prim.name
    return op


lt_p, lt = _compare("lt", np.less)
le_p, le = _compare("le", np.less_equal)
gt_p, gt = _compare("gt", np.greater)
ge_p, ge = _compare("ge", np.greater_equal)
eq_p, eq = _compare("eq", np.equal)
ne_p, ne = _compare("ne", np.not_equal)
and_p, logical_and = _compare("and", np.logical_and)
or_p, logical_or = _compare("or", np.logical_or)
xor_p, logical_xor = _compare("xor", np.logical_xor)

not_p = _unary("not", np.logical_not, float_only=False)
not_p.abstract = lambda x: [(tuple(x.shape), _BOOL)]
defzero(not_p)
logical_not = _make_unary_op(not_p)

isnan_p = _unary("isnan", np.isnan, float_only=False)
isnan_p.abstract = lambda x: [(tuple(x.shape), _BOOL)]
defzero(isnan_p)
isnan = _make_unary_op(isnan_p)

isfinite_p = _unary("isfinite", np.isfinite, float_only=False)
isfinite_p.abstract = lambda x: [(tuple(x.shape), _BOOL)]
defzero(isfinite_p)
isfinite = _make_unary_op(isfinite_p)

# ---------------------------------------------------------------- integer arithmetic
# (NumPy's semantics at the edges: ``x // 0`` is 0, a shift by the width or more, or by
# a negative count, gives 0, or for a right shift of a negative number -1)

def _integer(name, impl, arity=2):
    prim = _binary(name, impl) if arity == 2 else _unary(name, impl, float_only=False)
    shape_rule = prim.abstract

    def abstract(*avals):
        out = shape_rule(*avals)
        if not np.issubdtype(out[0][1], np.integer):
            raise DTypeError(f"{name} needs integer operands, got {dtype_name(out[0][1])}")
        return out
    prim.abstract = abstract
    defzero(prim)

    return prim, (_make_unary_op(prim) if arity == 1 else _binary_op(prim))


floordiv_p, floordiv = _integer("floordiv", np.floor_divide)
bitand_p, bitwise_and = _integer("bitand", np.bitwise_and)
bitor_p, bitwise_or = _integer("bitor", np.bitwise_or)
bitxor_p, bitwise_xor = _integer("bitxor", np.bitwise_xor)
bitnot_p, bitwise_not = _integer("bitnot", np.invert, arity=1)
shl_p, left_shift = _integer("shl", np.left_shift)
shr_p, right_shift = _integer("shr", np.right_shift)

# ---------------------------------------------------------------- select

select_p = Primitive("select")
select_p.impl = lambda pred, on_true, on_false: np.where(pred, on_true, on_false)


def _select_abstract(pred, on_true, on_false):
    if np.dtype(pred.dtype) != _BOOL:
        raise DTypeError(f"select: predicate must be bool, got {dtype_name(pred.dtype)}")
    dtype = _same_dtype("select", (on_true, on_false))
    return [(_elementwise_shape(pred, on_true, on_false), dtype)]


select_p.abstract = _select_abstract


def _select_jvp(primals, tangents):
    pred, a, b = primals
    _, ta, tb = tangents
    ans = select(pred, a, b)
    if ta is None and tb is None:
        return ans, None
    ta = _zeros_as(ans) if ta is None else _broadcast_like(ta, ans)
    tb = _zeros_as(ans) if tb is None else _broadcast_like(tb, ans)
    return ans, select(pred, ta, tb)


def _zeros_as(like):
    return _ones_like_shape(like, 0.0)


def _select_transpose(ct, pred, a, b):
    zero = np.zeros((), dtype=ct.dtype)
    return [None,
            unbroadcast(select(pred, ct, zero), a.shape) if is_undefined(a) else None,
            unbroadcast(select(pred, zero, ct), b.shape) if is_undefined(b) else None]


select_p.jvp = _select_jvp
select_p.transpose = _select_transpose


def select(pred, on_true, on_false):
    on_true = _lift(on_true, on_false)
    on_false = _lift(on_false, on_true)
    return bind(select_p, pred, on_true, on_false)


# ---------------------------------------------------------------- dtype conversion

convert_p = Primitive("convert_element_type")
convert_p.impl = lambda x, dtype: np.asarray(x).astype(dtype)
convert_p.abstract = lambda x, dtype: [(tuple(x.shape), np.dtype(dtype))]


def _convert_jvp(primals, tangents, dtype):
    (x,), (t,) = primals, tangents
    ans = convert_element_type(x, dtype)
    if t is None or not (is_float(x.dtype) and is_float(dtype)):
        return ans, None
    return ans, convert_element_type(t, dtype)


convert_p.jvp = _convert_jvp
convert_p.transpose = lambda ct, x, dtype: [convert_element_type(ct, x.dtype)]


def convert_element_type(x, dtype):
    dtype = np.dtype(dtype)
    if dtype_of(x) == dtype:
        return x
    return bind(convert_p, x, dtype=dtype)
