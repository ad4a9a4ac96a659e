"""The NumPy surface: how NumPy calls on Tracers become gradc operations.

Tracers reach this module through NumPy's protocols: ``__array_ufunc__`` (ufuncs,
operators) and ``__array_function__`` (``np.sum``, ``np.linalg.solve``, ...), and
through the methods and operators installed on ``Tracer`` at the bottom of this file.
Here NumPy's conventions are made explicit for the primitives: type promotion
(Python scalars are weak, NEP 50), broadcasting (explicit ``broadcast_in_dim``),
``axis``/``keepdims`` handling, and indexing.

The tables ``UFUNCS`` and ``FUNCTIONS`` (filled here, in ``numpy_funcs`` and
``numpy_linalg``) name every supported entry point; anything else raises
``UnsupportedError`` naming it.
"""
from __future__ import annotations

import builtins
import inspect

import numpy as np

from . import ops
from .errors import (ArgumentError, ConcretizationError, DTypeError, GradcError,
                     ScalarOverflowError, ShapeError, UnsupportedError, with_location)
from .ir import dtype_name, is_float
from .prims.index import EXTREMA, normalise_slice
from .prims.reduce import axis_index
from .trace import Tracer, dtype_of, shape_of, strides_of

UFUNCS: dict = {}
FUNCTIONS: dict = {}


def implements(*funcs, table=None):
    """Register a gradc implementation of NumPy functions (or ufuncs).  ``None`` stands
    for a function this NumPy lacks (``getattr(np, "unstack", None)`` before 2.1): it is
    not registered."""
    def register(impl):
        for f in funcs:
            if f is None:
                continue
            (table if table is not None else
             (UFUNCS if isinstance(f, np.ufunc) else FUNCTIONS))[f] = impl
        return impl
    return register


def _numpy_name(func) -> str:
    module = getattr(func, "__module__", None) or "numpy"
    module = module.replace("numpy._core.", "numpy.").replace("numpy.core.", "numpy.")
    if module.startswith("numpy._") or module == "numpy.numeric":
        module = "numpy"
    return f"{module.replace('numpy', 'np', 1)}.{func.__name__}"


def _ufunc_name(ufunc) -> str:
    """How the user spelled ``ufunc``: NumPy's, or one of ``scipy.special``'s (whose
    derivative rules ``lib.scipy_special`` registers when one first reaches gradc)."""
    import sys
    special = sys.modules.get("scipy.special")
    if special is not None and getattr(special, ufunc.__name__, None) is ufunc:
        from .lib import scipy_special
        scipy_special.register()
        return f"scipy.special.{ufunc.__name__}"
    return f"np.{ufunc.__name__}"


def dispatch_ufunc(ufunc, method, inputs, kwargs):
    name = _ufunc_name(ufunc)
    if method == "__call__":
        out = kwargs.get("out")
        if out is not None and any(isinstance(o, np.ndarray) for o in (
                out if isinstance(out, tuple) else (out,))):
            raise UnsupportedError(with_location(
                f"{name}(..., out=a NumPy array) with a traced operand, as z += x does where z "
                "is a NumPy array: a NumPy array cannot hold traced values; write z = z + x, "
                "or make z a traced array (z = np.zeros_like(x, shape=shape))"))
        if isinstance(out, tuple):
            if len(out) != ufunc.nout:
                raise ArgumentError(with_location(
                    f"{name}: out= must hold {ufunc.nout} array(s), got {len(out)}"))
            out = out[0] if ufunc.nout == 1 else out
        if out is not None and not isinstance(out, Tracer):
            raise UnsupportedError(with_location(
                f"{name}(..., out=...) with {len(out)} outputs on a traced array: write "
                "the results to new variables instead" if isinstance(out, tuple) else
                f"{name}(..., out={type(out).__name__}): out must be an array"))
        extra = {k: v for k, v in kwargs.items() if k not in ("dtype", "casting", "out")}
        if extra:
            raise UnsupportedError(with_location(
                f"{name}: argument(s) {', '.join(extra)} are not supported on traced arrays"))
        impl = UFUNCS.get(ufunc)
        if impl is None:
            raise UnsupportedError(with_location(
                f"{name} is not supported by gradc (it has no derivative rule); see "
                "docs/adding_a_primitive.md, or wrap the value in gradc.stop_gradient"))
        result = impl(*inputs)
        if kwargs.get("dtype") is not None:
            result = astype(result, kwargs["dtype"])
        if out is not None:
            # np.add(a, b, out=y): y is written in place, as y += b is (functionalised:
            # the Tracer y is rebound, writes reach what it is a view of)
            if out.numpy_scalar():
                raise ArgumentError(with_location(
                    f"{name}(..., out=s): s is a NumPy scalar (an element, a sum, ...), "
                    "not an array (NumPy: return arrays must be of ArrayType); write "
                    f"s = {name}(...)"))
            write_result(out, result, name, "out=", broadcast=True)
            return out
        return result
    reducers = {np.add: "sum", np.multiply: "prod", np.maximum: "max", np.minimum: "min",
                np.logical_and: "all", np.logical_or: "any"}
    if method == "reduce" and ufunc in reducers:
        x, *rest = inputs
        axis = kwargs.get("axis", rest[0] if rest else 0)
        return FUNCTIONS[getattr(np, reducers[ufunc])](x, axis=axis,
                                                       keepdims=kwargs.get("keepdims", False))
    if method == "accumulate" and ufunc in UFUNCS and ufunc.nin == 2:
        from .lib.numpy_composites import accumulate
        x = inputs[0]
        if ufunc is np.add:
            return FUNCTIONS[np.cumsum](x, axis=kwargs.get("axis", 0),
                                        dtype=kwargs.get("dtype"))
        return accumulate(ufunc, x, kwargs.get("axis", 0), kwargs.get("dtype"))
    if method == "at":
        return ufunc_at(ufunc, name, *inputs, **kwargs)
    raise UnsupportedError(with_location(
        f"{name}.{method} is not supported on traced arrays"))


def write_result(target, result, name, how, broadcast=False):
    """Write ``result`` into the Tracer ``target`` in place (``y += v``, ``np.add(a, b,
    out=y)``): as NumPy's, refused when its dtype does not cast to y's under the
    same_kind rule or its shape is not y's (``broadcast``: broadcasts to y's, as an
    ``out=`` operand takes part in broadcasting)."""
    if not np.can_cast(dtype_of(result), target.dtype, "same_kind"):
        raise DTypeError(with_location(
            f"{name} {how}: cannot cast the result from {dtype_of(result)} to the array's "
            f"{target.dtype} (NumPy refuses it under its same_kind casting rule); make a "
            "new array (y = y + v), or convert on purpose (y = (y + v).astype(y.dtype))"))
    shape = tuple(shape_of(result))
    if shape != tuple(target.shape):
        fits = False
        if broadcast:
            try:
                fits = np.broadcast_shapes(shape, target.shape) == tuple(target.shape)
            except ValueError:
                pass
        if not fits:
            raise ShapeError(with_location(
                f"{name} {how}: non-broadcastable output operand: the array has shape "
                f"{tuple(target.shape)}, the result {shape} (NumPy refuses to grow an array "
                "in place); write y = y + v for a new array of the broadcast shape"))
        result = ops.broadcast_to(result, tuple(target.shape))
    target.assign(astype(result, target.dtype))


def dispatch_function(func, args, kwargs):
    impl = FUNCTIONS.get(func)
    if impl is None:
        raise UnsupportedError(with_location(
            f"{_numpy_name(func)} is not supported by gradc; see docs/adding_a_primitive.md, "
            "or wrap its inputs in gradc.stop_gradient if no derivative is needed"))
    try:
        inspect.signature(impl).bind(*args, **kwargs)
    except TypeError as e:
        raise UnsupportedError(with_location(
            f"{_numpy_name(func)}: {e} (this argument is not supported on traced arrays)"
        )) from None
    return impl(*args, **kwargs)


# ---------------------------------------------------------------- operands

def operand(x):
    """A Tracer stays; Python scalars stay (weakly typed); anything else becomes an array
    (of numbers: a string, an object or a date is named as not one)."""
    if isinstance(x, (Tracer, bool, int, float, complex)):
        return x
    if isinstance(x, np.ndarray):
        return _numeric(x, x)
    if isinstance(x, np.generic):
        return _numeric(np.asarray(x), x)
    if isinstance(x, (list, tuple)) and any(isinstance(e, Tracer) for e in _iter_nested(x)):
        return stack([operand(e) for e in x])
    if x is None:
        return np.asarray(x)
    try:
        array = np.asarray(x)
    except ValueError as e:         # (a ragged list)
        raise ShapeError(with_location(
            f"a {type(x).__name__} operand that is not an array of numbers: {e}")) from None
    return _numeric(array, x)


def _numeric(array, x):
    if array.dtype.kind in "biufc":
        return array
    what = {"U": "a string", "S": "a bytes string", "O": "a Python object",
            "M": "a date", "m": "a time delta", "V": "a structured record"}.get(
                array.dtype.kind, f"a value of dtype {array.dtype}")
    shown = repr(x) if len(repr(x)) <= 40 else f"{type(x).__name__} of dtype {array.dtype}"
    raise DTypeError(with_location(
        f"{what} ({shown}) where gradc traces numbers: an operand of a traced array "
        f"must be an array of booleans, integers or floats, not dtype {array.dtype}"))


def _iter_nested(x):
    for e in x:
        if isinstance(e, (list, tuple)):
            yield from _iter_nested(e)
        else:
            yield e


def result_dtype(*xs):
    return np.result_type(*[x if isinstance(x, (bool, int, float, complex)) else
                            _weak_example(x) if _is_weak(x) else dtype_of(x) for x in xs])


def _is_weak(x) -> bool:
    return isinstance(x, Tracer) and x.weak


def weakly(fn):
    """A Python operator ``fn`` whose result is weak (``Tracer.weak``) where its operands
    are weak values and Python numbers only: Python's arithmetic on Python floats gives
    a Python float (``y * 2.0``), NumPy's functions an ``np.float64`` (``np.sin(y)``),
    which is not weak (NEP 50)."""
    def apply(*xs):
        out = fn(*xs)
        if isinstance(out, Tracer) and out.dtype.kind in "fc" and any(map(_is_weak, xs)) \
                and all(_is_weak(x) or isinstance(x, (int, float, complex)) for x in xs):
            out.weak = True
        return out
    return apply


def _weak_example(x):
    """The Python number standing for weak Tracer ``x`` in NumPy's promotion."""
    return {"f": 0.0, "c": 0j}.get(np.dtype(x.dtype).kind, 0)


def astype(x, dtype):
    dtype = np.dtype(dtype)
    if isinstance(x, (bool, int, float, complex)):
        try:
            return np.asarray(x, dtype=dtype)
        except OverflowError:
            raise ScalarOverflowError(with_location(
                f"Python integer {x} out of bounds for {dtype}: NumPy gives a Python "
                f"scalar the array's dtype; convert the array first "
                f"(x.astype(np.int64))")) from None
    return ops.convert_element_type(x, dtype)


def promote(*xs, float_result=False):
    """Convert operands to their common NumPy result dtype (or the float it implies)."""
    xs = [operand(x) for x in xs]
    dtype = result_dtype(*xs)
    if float_result and not is_float(dtype):
        dtype = np.result_type(dtype, 1.0) if dtype != np.dtype(bool) else np.dtype(np.float64)
    return [astype(x, dtype) for x in xs]


def broadcast(*xs):
    """Broadcast operands to a common shape; rank-0 operands are left as they are
    (the elementwise primitives broadcast those implicitly)."""
    shapes = [shape_of(x) for x in xs]
    try:
        target = np.broadcast_shapes(*shapes)
    except ValueError:
        raise ShapeError(with_location(
            "operands could not be broadcast together with shapes "
            + " ".join(str(s) for s in shapes))) from None
    return [x if shape_of(x) in ((), target) else ops.broadcast_to(x, target) for x in xs]


def elementwise(op, float_result=False):
    def apply(*xs):
        return op(*broadcast(*promote(*xs, float_result=float_result)))
    apply.__name__ = getattr(op, "__name__", "elementwise")
    return apply


def fits(value, dtype) -> bool:
    """Whether Python int ``value`` is a value of ``dtype`` (any value fits a float)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return True
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _comparison(op):
    """A comparison: NumPy 2 compares a Python integer outside an integer array's range
    exactly (``uint8_array < 300`` is all True), where arithmetic would overflow."""
    def apply(*xs):
        xs = [operand(x) for x in xs]
        dtypes = [dtype_of(x) for x in xs if not isinstance(x, (bool, int, float, complex))]
        out = []
        for x in xs:
            if isinstance(x, int) and not isinstance(x, bool) and \
                    not builtins.all(fits(x, d) for d in dtypes):
                kind = np.min_scalar_type(x)
                x = np.asarray(x, kind) if kind.kind != "O" else np.asarray(float(x))
            out.append(x)
        return op(*broadcast(*promote(*out)))
    apply.__name__ = getattr(op, "__name__", "comparison")
    return apply


# ---------------------------------------------------------------- ufuncs

# From NumPy 2.3 on, floor, ceil and trunc of integers and booleans are the values
# themselves in their own dtype; before, they were computed in float64
_WHOLE_KEEPS_DTYPE = np.floor(np.int8(1)).dtype == np.int8


def _whole(op, ufunc):
    """floor, ceil or trunc, in the installed NumPy's dtype (``_WHOLE_KEEPS_DTYPE``)."""
    as_float = elementwise(op, float_result=True)

    def apply(x):
        x = operand(x)
        if _WHOLE_KEEPS_DTYPE and np.dtype(dtype_of(x)).kind in "iub":
            return _new(x, ufunc)
        return as_float(x)
    apply.__name__ = ufunc.__name__
    return apply


def _new(x, ufunc):
    """A ufunc whose value is its operand's: a new Tracer of it (a write into the result
    must not reach ``x``, as NumPy's result is a new array), or ``ufunc`` of a constant."""
    return x.fresh() if isinstance(x, Tracer) else ufunc(x)


_FLOAT_UNARY = {
    np.sin: ops.sin, np.cos: ops.cos, np.tan: ops.tan, np.arcsin: ops.asin,
    np.arccos: ops.acos, np.arctan: ops.atan, np.sinh: ops.sinh, np.cosh: ops.cosh,
    np.tanh: ops.tanh, np.arcsinh: ops.asinh, np.arccosh: ops.acosh, np.arctanh: ops.atanh,
    np.exp: ops.exp, np.expm1: ops.expm1, np.log: ops.log, np.log1p: ops.log1p,
    np.sqrt: ops.sqrt, np.cbrt: ops.cbrt, np.exp2: ops.exp2, np.log2: ops.log2,
    np.log10: ops.log10,
}
for _uf, _op in _FLOAT_UNARY.items():
    UFUNCS[_uf] = elementwise(_op, float_result=True)

UFUNCS.update({
    np.add: elementwise(ops.add), np.subtract: elementwise(ops.sub),
    np.multiply: elementwise(ops.mul), np.true_divide: elementwise(ops.div, float_result=True),
    np.power: elementwise(ops.pow),
    np.maximum: elementwise(ops.maximum), np.minimum: elementwise(ops.minimum),
    np.arctan2: elementwise(ops.atan2, float_result=True),
    np.remainder: elementwise(ops.rem),
    np.negative: elementwise(ops.neg), np.positive: lambda x: _new(operand(x), np.positive),
    np.absolute: elementwise(ops.abs), np.fabs: elementwise(ops.abs, float_result=True),
    np.sign: elementwise(ops.sign), np.floor: _whole(ops.floor, np.floor),
    np.ceil: _whole(ops.ceil, np.ceil),
    np.rint: elementwise(ops.round, float_result=True),
    np.trunc: _whole(ops.trunc, np.trunc),
    np.less: _comparison(ops.lt), np.less_equal: _comparison(ops.le),
    np.greater: _comparison(ops.gt), np.greater_equal: _comparison(ops.ge),
    np.equal: _comparison(ops.eq), np.not_equal: _comparison(ops.ne),
    np.isnan: elementwise(ops.isnan), np.isfinite: elementwise(ops.isfinite),
})


def _logical(op):
    def apply(*xs):
        xs = [astype(operand(x), bool) for x in xs]
        return op(*broadcast(*xs))
    return apply


UFUNCS.update({np.logical_and: _logical(ops.logical_and),
               np.logical_or: _logical(ops.logical_or),
               np.logical_xor: _logical(ops.logical_xor),
               np.logical_not: _logical(ops.logical_not)})


def _bitwise(logical, integer, name):
    """NumPy's bitwise ufuncs: logical on booleans, bit by bit on integers."""
    def apply(*xs):
        xs = promote(*xs)
        dtype = dtype_of(xs[0])
        if dtype == np.dtype(bool) and logical is not None:
            return logical(*broadcast(*xs))
        if dtype == np.dtype(bool):             # (shifts of booleans: NumPy's int8)
            xs, dtype = [astype(x, np.int8) for x in xs], np.dtype(np.int8)
        if not np.issubdtype(dtype, np.integer):
            raise DTypeError(with_location(
                f"np.{name} needs integer or boolean operands, got {dtype_name(dtype)}"))
        return integer(*broadcast(*xs))
    apply.__name__ = name
    return apply


UFUNCS.update({
    np.bitwise_and: _bitwise(ops.logical_and, ops.bitwise_and, "bitwise_and"),
    np.bitwise_or: _bitwise(ops.logical_or, ops.bitwise_or, "bitwise_or"),
    np.bitwise_xor: _bitwise(ops.logical_xor, ops.bitwise_xor, "bitwise_xor"),
    np.invert: _bitwise(ops.logical_not, ops.bitwise_not, "invert"),
    np.left_shift: _bitwise(None, ops.left_shift, "left_shift"),
    np.right_shift: _bitwise(None, ops.right_shift, "right_shift"),
})


@implements(np.isinf)
def isinf(x):
    (x,) = promote(x)
    return ops.logical_not(ops.logical_or(ops.isfinite(x), ops.isnan(x)))


@implements(np.conjugate)
def conjugate(x):
    (x,) = promote(x)
    if np.issubdtype(dtype_of(x), np.complexfloating):
        raise UnsupportedError(with_location("complex arrays are not supported by gradc"))
    if dtype_of(x) == np.bool_:                   # (NumPy's conjugate of booleans: int8)
        return ops.convert_element_type(x, np.int8)
    return _new(x, np.conjugate)


@implements(np.floor_divide)
def floor_divide(x, y):
    x, y = broadcast(*promote(x, y))
    if dtype_of(x) == np.dtype(bool):
        x, y = astype(x, np.int8), astype(y, np.int8)
    if not is_float(dtype_of(x)):
        return ops.floordiv(x, y)
    # NumPy's float floor division (npy_divmod): exact, from C's remainder (fmod);
    # floor(x / y) is not (1.0 // 0.1 is 9.0: x / y rounds up to 10.0).  x // 0 is
    # x / 0, a zero quotient takes the sign of x / y, a finite x over an infinite y of
    # the other sign is -1.  Piecewise constant: no derivative flows.
    x, y = ops.stop_gradient(x), ops.stop_gradient(y)
    zero = np.zeros((), dtype_of(x))
    quotient = ops.div(x, y)
    mod = ops.fmod(x, y)
    q = ops.div(ops.sub(x, mod), y)
    adjust = ops.logical_and(ops.ne(mod, zero), ops.ne(ops.lt(y, zero), ops.lt(mod, zero)))
    q = ops.select(adjust, ops.sub(q, 1.0), q)
    whole = ops.floor(q)
    whole = ops.select(ops.gt(ops.sub(q, whole), 0.5), ops.add(whole, 1.0), whole)
    whole = ops.select(ops.eq(q, zero), ops.mul(quotient, zero), whole)
    return ops.select(ops.eq(y, zero), quotient, whole)


@implements(np.divmod)
def divmod_(x, y):
    return floor_divide(x, y), UFUNCS[np.remainder](x, y)


@implements(np.square)
def square(x):
    (x,) = promote(x)
    return ops.mul(x, x)


@implements(np.reciprocal)
def reciprocal(x):
    """Of integers NumPy keeps the dtype (bool becomes int8): 1/x truncated toward zero,
    that is x itself at 1 and -1 and 0 elsewhere (at 0 NumPy's value is its machine's,
    not defined; gradc gives 0)."""
    (x,) = promote(x)
    if dtype_of(x) == np.dtype(bool):
        x = astype(x, np.int8)
    if dtype_of(x).kind in "iu":
        unit = ops.eq(x, 1)
        if dtype_of(x).kind == "i":
            unit = ops.logical_or(unit, ops.eq(x, -1))
        return ops.select(unit, x, np.zeros((), dtype_of(x)))
    (x,) = promote(x, float_result=True)
    return ops.div(np.ones((), x.dtype), x)


@implements(np.float_power)
def float_power(x, y):
    """NumPy's float_power computes in float64 at least: float32 in, float64 out."""
    x, y = (operand(v) for v in (x, y))
    dtype = np.result_type(result_dtype(x, y), np.float64)
    return ops.pow(*broadcast(astype(x, dtype), astype(y, dtype)))


@implements(np.deg2rad, np.radians)
def deg2rad(x):
    (x,) = promote(x, float_result=True)
    return ops.mul(x, np.pi / 180.0)


@implements(np.rad2deg, np.degrees)
def rad2deg(x):
    (x,) = promote(x, float_result=True)
    return ops.mul(x, 180.0 / np.pi)


@implements(np.hypot)
def hypot(x, y):
    # scaled by max(|x|, |y|) so that it neither overflows nor underflows
    x, y = broadcast(*promote(x, y, float_result=True))
    ax, ay = ops.abs(x), ops.abs(y)
    big, small = ops.maximum(ax, ay), ops.minimum(ax, ay)
    # an infinite side makes it inf, even beside a NaN (NumPy's, C's hypot), where the
    # ratio would be inf/inf and maximum(inf, NaN) NaN
    inf = np.array(np.inf, dtype_of(x))
    either = ops.logical_or(ops.eq(ax, inf), ops.eq(ay, inf))
    safe = ops.select(ops.logical_or(ops.eq(big, 0.0), ops.eq(big, inf)),
                      np.broadcast_to(np.array(1, dtype_of(x)), shape_of(big)), big)
    ratio = ops.div(small, safe)
    scaled = ops.mul(big, ops.sqrt(ops.add(ops.mul(ratio, ratio), 1.0)))
    return ops.select(either, np.broadcast_to(inf, shape_of(scaled)), scaled)


@implements(np.logaddexp)
def logaddexp(x, y):
    # log(e^x + e^y) = max + log1p(exp(-|x - y|)); where x == y, max + log(2) (NumPy's
    # -inf for two -infs, and inf for two infs: their difference is NaN)
    x, y = broadcast(*promote(x, y, float_result=True))
    big = ops.maximum(x, y)
    same, zero = ops.eq(x, y), np.zeros((), x.dtype)
    apart = ops.sub(ops.select(same, zero, x), ops.select(same, zero, y))
    return ops.add(big, ops.log1p(ops.exp(ops.neg(ops.abs(apart)))))


@implements(np.logaddexp2)
def logaddexp2(x, y):
    x, y = broadcast(*promote(x, y, float_result=True))
    ln2 = float(np.log(2.0))
    return ops.div(logaddexp(ops.mul(x, ln2), ops.mul(y, ln2)), ln2)


def _nan_ignoring(op):
    # fmax/fmin: like maximum/minimum, but a NaN operand yields the other one
    def apply(x, y):
        x, y = broadcast(*promote(x, y))
        both = op(x, y)
        return ops.select(ops.isnan(x), y, ops.select(ops.isnan(y), x, both))
    return apply


UFUNCS[np.fmax] = _nan_ignoring(ops.maximum)
UFUNCS[np.fmin] = _nan_ignoring(ops.minimum)


@implements(np.heaviside)
def heaviside(x, h0):
    x, h0 = broadcast(*promote(x, h0, float_result=True))
    step = ops.select(ops.gt(x, 0.0), np.ones((), x.dtype), np.zeros((), x.dtype))
    step = ops.select(ops.isnan(x), ops.stop_gradient(x), step)      # (NaN stays NaN)
    return ops.select(ops.eq(x, 0.0), h0, step)


@implements(np.matmul)
def matmul(a, b):
    from .numpy_linalg import matmul as _matmul
    return _matmul(a, b)


# ---------------------------------------------------------------- stacking (used above)

def stack(arrays, axis=0):
    arrays = promote(*arrays)
    shapes = {shape_of(a) for a in arrays}
    if len(shapes) != 1:
        raise ShapeError(with_location("all input arrays must have the same shape, got "
                                       + ", ".join(str(shape_of(a)) for a in arrays)))
    shape = shapes.pop()
    axis = _axis(axis, len(shape) + 1)
    new_shape = shape[:axis] + (1,) + shape[axis:]
    return ops.concatenate([ops.reshape(a, new_shape) for a in arrays], axis)


def _axis(axis, ndim):
    axis = axis_index(axis)
    if not -ndim <= axis < ndim:
        raise ShapeError(with_location(f"axis {axis} is out of bounds for array of dimension "
                                       f"{ndim}"))
    return axis % ndim


# ---------------------------------------------------------------- indexing

def _index_spec(x, key):
    """Translate a NumPy index into ``(spec, index arrays, basic)``; see prims/index.py."""
    if not isinstance(key, tuple):
        key = (key,)
    key = tuple(_coerce_index(k) for k in key)
    n_used = builtins.sum(1 if not (k is None or k is Ellipsis) else 0 for k in key)
    n_used += builtins.sum(max(len(shape_of(k)) - 1, 0) for k in key if _is_bool_array(k))
    n_ellipsis = builtins.sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise ShapeError(with_location("an index can only have a single ellipsis ('...')"))
    if n_used > x.ndim:
        raise ShapeError(with_location(
            f"too many indices for an array of shape {x.shape}: {n_used} given"))
    expanded = []
    for k in key:
        if k is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_used))
        else:
            expanded.append(k)
    if n_ellipsis == 0:
        expanded.extend([slice(None)] * (x.ndim - n_used))
    spec, arrays, dim, basic = [], [], 0, True
    for k in expanded:
        if k is None:
            spec.append(("n",))
        elif isinstance(k, slice):
            try:
                spec.append(("s",) + normalise_slice(k, x.shape[dim]))
            except GradcError:
                raise
            except ValueError as e:         # (a step of 0: NumPy's ValueError)
                raise ShapeError(with_location(f"slice {_slice_text(k)}: {e}")) from None
            except TypeError as e:          # (a float bound: NumPy's TypeError)
                raise ArgumentError(with_location(f"slice {_slice_text(k)}: {e}")) from None
            dim += 1
        elif isinstance(k, (int, np.integer)):
            n = x.shape[dim]
            if not -n <= int(k) < n:
                raise ShapeError(with_location(
                    f"index {int(k)} is out of bounds for axis {dim} with size {n}"))
            spec.append(("i", int(k) % n))
            dim += 1
        elif _is_bool_array(k):
            basic = False
            kshape = shape_of(k)
            if tuple(x.shape[dim:dim + len(kshape)]) != tuple(kshape):
                raise ShapeError(with_location(
                    f"boolean index of shape {kshape} does not match the indexed array's "
                    f"shape {x.shape[dim:dim + len(kshape)]}"))
            for idx in _mask_indices(k):
                spec.append(("a", len(arrays)))
                arrays.append(idx)
            dim += len(kshape)
        else:
            basic = False
            if not np.issubdtype(dtype_of(k), np.integer):
                raise ShapeError(with_location(
                    f"arrays used as indices must be of integer or boolean type, "
                    f"got {dtype_of(k)}"))
            spec.append(("a", len(arrays)))
            arrays.append(k)
            dim += 1
    return tuple(spec), arrays, basic


def _slice_text(s: slice) -> str:
    """``1:5:0`` for ``slice(1, 5, 0)``, as it was written."""
    parts = ["" if p is None else repr(p) for p in (s.start, s.stop, s.step)]
    return ":".join(parts if s.step is not None else parts[:2])


def _coerce_index(k):
    if isinstance(k, (bool, np.bool_)) or (
            isinstance(k, np.ndarray) and k.ndim == 0 and k.dtype == np.dtype(bool)):
        # NumPy's 0-d boolean index: a new axis of length 1 (True) or 0 (False); True
        # is x[None] (bool is an int: it read as the index 1)
        if bool(k):
            return None
        raise UnsupportedError(with_location(
            "indexing a traced array with False (an empty selection along a new axis) is "
            "not supported; use x[None][:0], or leave the value out"))
    if isinstance(k, Tracer) and k.ndim == 0 and k.dtype == np.dtype(bool):
        raise UnsupportedError(with_location(
            "x[cond] with a traced boolean scalar selects all of x or nothing, a shape "
            "that depends on the value; use np.where(cond, x, 0), or gradc.cond"))
    if isinstance(k, (list, tuple)):
        return np.asarray(k)
    if isinstance(k, np.ndarray) and k.ndim == 0 and np.issubdtype(k.dtype, np.integer):
        return int(k)
    if isinstance(k, Tracer) and k.ndim == 0 and k.dtype != np.dtype(bool):
        return k
    return k


def _is_bool_array(k) -> bool:
    return isinstance(k, (Tracer, np.ndarray)) and dtype_of(k) == np.dtype(bool)


def _mask_indices(mask):
    if not isinstance(mask, Tracer):
        return [i.astype(np.int64) for i in np.nonzero(mask)]
    if mask.val is None:
        raise UnsupportedError(with_location("boolean-mask indexing on an abstract value"))
    count = int(np.count_nonzero(mask.val))
    # The output's shape depends on the number of True entries: nonzero checks it and
    # raises GuardFailure (a re-trace) when a later call's mask has another count.
    return ops.nonzero(mask, count)


def getitem(x, key):
    spec, arrays, basic = _index_spec(x, key)
    if isinstance(x, Tracer) and x.numpy_scalar():
        # a NumPy scalar's s[()] is itself (immutable), s[...] a new 0-d array, s[None]
        # a new 1-d one: copies, which writes do not carry back to s
        out = ops.reshape(x, tuple(1 for e in spec if e[0] == "n"))
        out = out.fresh() if out is x else out
        out.array0d = builtins.any(k is Ellipsis or k is None for k in (
            key if isinstance(key, tuple) else (key,)))
        return out
    if not basic:
        return ops.gather(x, arrays, spec)
    window, shape = [], []
    for entry in spec:
        if entry[0] == "s":
            window.append(entry[1:])
            shape.append(len(range(*slice(*entry[1:]).indices(x.shape[len(window) - 1]))))
        elif entry[0] == "i":
            window.append((entry[1], entry[1] + 1, 1))
        else:
            shape.append(1)
    window, shape = tuple(window), tuple(shape)
    view = ops.reshape(ops.slice_(x, window), shape)
    keys = key if isinstance(key, tuple) else (key,)
    if not shape and not builtins.any(k is Ellipsis for k in keys) or builtins.any(
            isinstance(k, (bool, np.bool_)) or isinstance(k, np.ndarray) and k.ndim == 0
            and k.dtype == np.dtype(bool) for k in keys):
        # an element, which NumPy returns as a scalar, or a boolean scalar's selection
        # (advanced indexing): a copy, not a view (of x itself, x[()] of a 0-d x:
        # another Tracer, which a write to x does not rebind)
        return x.fresh() if view is x else view
    if isinstance(view, Tracer) and isinstance(x, Tracer):
        # basic indexing makes a view: writes to it reach x, and writes to x reach it
        view.as_view_of(x, lambda v: ops.index_set(x, v, [], spec), spec,
                        lambda b: ops.reshape(ops.slice_(b, window), shape))
        if view is not x:
            strides, dim = strides_of(x), 0
            layout = []
            for entry in spec:
                if entry[0] == "s":
                    layout.append(strides[dim] * entry[3])
                elif entry[0] == "n":
                    layout.append(0)
                dim += entry[0] != "n"
            view.layout = tuple(layout)
    return view


def setitem(x, key, value):
    """``x[key] = value`` on a Tracer: rebinds the Tracer to the updated array."""
    if isinstance(x, Tracer) and x.numpy_scalar():
        raise ArgumentError(with_location(
            f"'numpy.{x.dtype}' object does not support item assignment: the value is a "
            "NumPy scalar (an element x[i, j], a sum, arithmetic of 0-d values), not an "
            "array, as in NumPy; rebind it (s = v), or make a 0-d array to write into "
            "(s = np.array(s) ... in traced code: s = np.copy(s))"))
    spec, arrays, _ = _index_spec(x, key)
    if isinstance(value, Tracer) and value.view_of is not None and value.view_of[0] is x \
            and value.view_of[2] == spec and not arrays:
        return      # x[k] op= v: the update of the view x[k] already reached x
    (value,) = [astype(operand(value), x.dtype)]
    from .prims.index import _indexed_shape
    window = _indexed_shape(x.shape, spec, arrays)
    if shape_of(value) not in ((), tuple(window)):
        try:
            value = ops.broadcast_to(value, window)
        except Exception:
            raise ShapeError(with_location(
                f"could not broadcast a value of shape {shape_of(value)} into a window of "
                f"shape {tuple(window)}")) from None
    updated = ops.index_set(x, value, arrays, spec)
    x.assign(updated)



# ---------------------------------------------------------------- ufunc.at

def ufunc_at(ufunc, name, a, indices, b=None, **kwargs):
    """NumPy's unbuffered in place ``ufunc.at(a, indices, b)`` (``np.add.at``): ``a[indices]
    = ufunc(a[indices], b)`` once per index, so that a repeated index takes each of its
    updates.  Functionalised as ``x[key] = v`` is: the Tracer ``a`` is rebound to the
    updated array (writes reach the array it is a view of), and the result is None.

    NumPy computes in the dtype of ``ufunc(a, np.asarray(b))`` (a Python scalar is not
    weak here) and casts back to ``a``'s dtype unsafely (float into an integer array
    truncates).  ``np.add``/``np.subtract`` are one ``scatter_add`` (its transpose is
    ``gather``): any index, traced index arrays included, repeats summed first (floats
    may round differently from NumPy's one-by-one sums).  maximum, minimum, fmax and
    fmin are one ``scatter_extremum`` (any index, traced index arrays included).  The
    other ufuncs need the positions known when tracing: multiply (and the extrema of a
    boolean array) combine each position's updates first (``_at_by_segments``), the
    rest, and an integer or boolean array updated with another dtype (cast at every
    step), go one repeat at a time (``_at_in_rounds``), in NumPy's order."""
    if kwargs:
        raise UnsupportedError(with_location(
            f"{name}.at: argument(s) {', '.join(kwargs)} are not supported"))
    if not isinstance(a, Tracer):
        raise ConcretizationError(with_location(
            f"{name}.at(y, indices, v) where y is a NumPy array and the indices or values "
            "are traced: a NumPy array cannot hold traced values (as with y[i] = x). Make y "
            "a traced array first: y = gradc.asarray(y) (its values, traced), or start "
            "from y = np.zeros_like(x, shape=shape) (x any traced value)"))
    if a.numpy_scalar():
        raise ArgumentError(with_location(
            f"{name}.at(s, ...): s is a NumPy scalar (an element, a sum, ...), not an "
            "array (NumPy: first operand must be array); write s = s + v, or make a 0-d "
            "array first (s = np.copy(s))"))
    impl = UFUNCS.get(ufunc)
    if impl is None or ufunc.nout != 1 or ufunc.nin > 2:
        raise UnsupportedError(with_location(
            f"{name}.at is not supported by gradc ({name} has no derivative rule)"))
    # (a missing or extra second operand: NumPy's ValueError, before it dispatches here)
    spec, arrays, _ = _index_spec(a, indices)
    from .prims.index import _indexed_shape
    try:
        window = tuple(_indexed_shape(a.shape, spec, arrays))
    except ShapeError as e:
        raise ShapeError(with_location(f"{name}.at: {e}")) from None
    if b is not None:
        b = operand(b)
        if isinstance(b, (bool, int, float, complex)):
            b = np.asarray(b)                   # (NumPy's ufunc.at: not weak)
        if shape_of(b) != window:
            try:
                fits_window = np.broadcast_shapes(shape_of(b), window) == window
            except ValueError:
                fits_window = False
            if not fits_window:
                raise ShapeError(with_location(
                    f"{name}.at: values of shape {shape_of(b)} do not broadcast to the "
                    f"indexed shape {window}"))
            b = ops.broadcast_to(b, window)
    if 0 in window:
        return None                             # (nothing indexed)
    kind = np.dtype(a.dtype).kind
    loop = np.result_type(a.dtype, dtype_of(b)) if b is not None else a.dtype
    if ufunc in (np.add, np.subtract) and (kind == "f" or kind in "iu" and loop.kind in "iu"):
        # (integers wrap: summing in a's dtype is NumPy's sum modulo 2**bits)
        work = loop if kind == "f" else a.dtype
        total = ops.scatter_add(astype(b, work), arrays, a.shape, spec)
        combine = ops.add if ufunc is np.add else ops.sub
        a.assign(astype(combine(astype(a, work), total), a.dtype))
        return None
    traced = builtins.any(isinstance(k, Tracer) for k in arrays)
    if ufunc.__name__ in EXTREMA and kind in "fiu" and (kind == "f" or loop == a.dtype):
        # (the values cast to NumPy's loop dtype, then to a's: rounding is monotone, so
        # the extremum is the same as NumPy's, computed in the loop dtype and cast back.
        # Known indices too: one rule for the derivative at ties)
        v = astype(astype(b, loop), a.dtype)
        a.assign(ops.scatter_extremum(a, v, arrays, spec, ufunc.__name__))
        return None
    if traced:
        raise UnsupportedError(with_location(
            f"{name}.at with a traced index array: gradc combines the updates of a "
            "repeated index by the positions it reads, which need the indices known when "
            "tracing; make them a NumPy array (a constant of the function, not an argument)"
            + (", or convert the values to the array's dtype first (v.astype(y.dtype))"
               if ufunc in (np.add, np.subtract) else "")))
    from .prims.index import numpy_index
    positions = np.arange(a.size, dtype=np.int64).reshape(a.shape)[
        numpy_index(spec, arrays)].reshape(-1)
    if ufunc in _ASSOCIATIVE and (kind == "f" or loop == a.dtype):
        _at_by_segments(impl, a, positions, astype(b, loop))
    else:
        _at_in_rounds(impl, a, positions, b, name)
    return None


# ufuncs whose repeated updates may be combined first, in any order: op(op(y, v1), v2)
# is op(y, op(v1, v2)) (for floats, up to rounding; the casts to a float array are
# monotone, so maximum and minimum are exact)
_ASSOCIATIVE = (np.maximum, np.minimum, np.fmax, np.fmin, np.multiply)
MAX_ROUNDS = 64     # repeats of one index that ``_at_in_rounds`` applies one at a time


def _segments(positions):
    """``(order, segment, starts)``: the stable order sorting ``positions``, the segment
    (run of one position) of each sorted element, and where each segment starts."""
    order = np.argsort(positions, kind="stable")
    ranked = positions[order]
    first = np.r_[True, ranked[1:] != ranked[:-1]]
    return order, np.cumsum(first) - 1, np.flatnonzero(first)


def _at_by_segments(impl, a, positions, values):
    """``a[positions] = impl(a[positions], values)`` for an associative, commutative
    ``impl``: the values sorted by position, each run of one position combined by
    doubling steps (step j combines each value with the one 2**j after it in its run:
    log2 of the longest run of gathers, selects and ``impl``s), then one ``impl`` and
    one ``index_set`` per position."""
    order, segment, starts = _segments(positions)
    one = (("a", 0),)
    combined = ops.gather(ops.reshape(values, (positions.size,)), [order], one)
    longest = int(np.max(np.diff(np.r_[starts, positions.size])))
    shift, here = 1, np.arange(positions.size)
    while shift < longest:
        partner = np.minimum(here + shift, positions.size - 1)
        same = (here + shift < positions.size) & (segment[partner] == segment)
        combined = ops.select(same, impl(combined, ops.gather(combined, [partner], one)),
                              combined)
        shift *= 2
    where = positions[order[starts]]
    flat = ops.reshape(a, (a.size,))
    new = impl(ops.gather(flat, [where], one), ops.gather(combined, [starts], one))
    a.assign(ops.reshape(ops.index_set(flat, astype(new, a.dtype), [where], one), a.shape))


def _at_in_rounds(impl, a, positions, b, name):
    """``a[positions] = impl(a[positions], b)`` one occurrence of each position at a time
    (round k applies the k-th occurrence of each), in NumPy's order and with its cast
    to ``a``'s dtype after each."""
    order, segment, starts = _segments(positions)
    rank = np.empty_like(positions)
    rank[order] = np.arange(positions.size) - starts[segment]
    rounds = int(rank.max()) + 1
    if rounds > MAX_ROUNDS:
        raise UnsupportedError(with_location(
            f"{name}.at: an index repeats {rounds} times, and gradc applies {name} (here) "
            f"once per repeat, a gather and a write each (at most {MAX_ROUNDS}); combine "
            f"each index's values first, then apply {name} once per index"))
    flat = ops.reshape(a, (a.size,))
    values = None if b is None else ops.reshape(b, (positions.size,))
    one = (("a", 0),)
    for r in range(rounds):
        chosen = np.flatnonzero(rank == r)
        where = positions[chosen]
        old = ops.gather(flat, [where], one)
        new = impl(old) if values is None else impl(old, ops.gather(values, [chosen], one))
        flat = ops.index_set(flat, astype(new, a.dtype), [where], one)
    a.assign(ops.reshape(flat, a.shape))
