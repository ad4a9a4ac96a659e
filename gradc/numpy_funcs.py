"""NumPy functions (``__array_function__``) written with gradc operations: reductions,
selection and shape manipulation (contractions and ``np.linalg`` are in numpy_linalg.py).

Each is registered with ``@implements(np.f)``.  They also accept plain arrays, so the
composite operations here are ordinary functions of the primitives.
"""
from __future__ import annotations

import builtins

import numpy as np

from . import ops
from .errors import (ArgumentError, DTypeError, InvalidValueError, ShapeError, UnsupportedError,
                     with_location)
from .numpy_api import (_axis, astype, broadcast, elementwise, fits, implements, operand, promote,
                        stack)
from .prims.reduce import _normalise_axes
from .trace import (Tracer, c_contiguous, dtype_of, full_traced, reshape_strides, shape_of,
                    strides_of)



@implements(np.stack)
def _stack(arrays, axis=0, out=None, dtype=None):
    """NumPy converts each item with ``asarray``: a Python float is a float64 array, not
    a scalar of the others' dtype (``np.stack([x32, 1.5])`` is float64)."""
    _no_out(out, "stack")
    arrays = [np.asarray(a) if isinstance(a, (bool, int, float, complex)) else a
              for a in arrays]
    result = stack(arrays, axis)
    return result if dtype is None else astype(result, dtype)


def _ndim(x):
    return len(shape_of(x))


def _axes(axis, ndim):
    try:
        return _normalise_axes(axis, ndim)
    except ShapeError as e:
        raise ShapeError(with_location(str(e))) from None


def _keep(y, x_shape, axes, keepdims):
    if not keepdims:
        return y
    return ops.reshape(y, tuple(1 if i in axes else d for i, d in enumerate(x_shape)))


def _no_out(out, name):
    if out is not None:
        raise UnsupportedError(with_location(f"np.{name}(..., out=...) on a traced array"))


# ---------------------------------------------------------------- reductions

def _accumulating(x, dtype):
    """``x`` in the dtype NumPy sums, multiplies or accumulates it in: ``dtype`` when
    given, else NumPy's default, which widens bool and the integers narrower than the
    platform integer (``np.sum`` of int8 is int64, of uint16 uint64)."""
    if dtype is None:
        dtype = np.add.reduce(np.zeros(1, dtype_of(x))).dtype
    return x if np.dtype(dtype) == dtype_of(x) else astype(x, dtype)


def _masked(x, where, fill):
    """``x`` with the entries outside ``where`` replaced by ``fill`` (for ``where=``)."""
    if where is None or where is True:
        return x
    x, where = operand(x), astype(operand(where), bool)
    where = broadcast(where, np.zeros(shape_of(x), bool))[0]
    return ops.select(where, x, np.asarray(fill, dtype_of(x)))


@implements(np.sum)
def sum(x, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _no_out(out, "sum")
    x = _masked(_accumulating(operand(x), dtype), where, 0)
    axes = _axes(axis, _ndim(x))
    y = ops.reduce_sum(x, axes)
    if initial is not None:
        y = ops.add(y, initial)
    return _keep(y, shape_of(x), axes, keepdims)


@implements(np.mean)
def mean(x, axis=None, dtype=None, out=None, keepdims=False, where=None):
    _no_out(out, "mean")
    (x,) = promote(x, float_result=True)
    axes = _axes(axis, _ndim(x))
    if where is not None and where is not True:
        count = sum(astype(broadcast(operand(where), np.zeros(shape_of(x), bool))[0],
                           dtype_of(x)), axes, keepdims=keepdims)
        return ops.div(sum(x, axes, dtype=dtype, keepdims=keepdims, where=where), count)
    count = int(np.prod([shape_of(x)[a] for a in axes], dtype=np.int64))
    return ops.div(sum(x, axes, dtype=dtype, keepdims=keepdims), float(count))


@implements(np.var)
def var(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    _no_out(out, "var")
    (x,) = promote(x, float_result=True)
    axes = _axes(axis, _ndim(x))
    count = int(np.prod([shape_of(x)[a] for a in axes], dtype=np.int64))
    centred = ops.sub(x, ops.broadcast_to(mean(x, axes, keepdims=True), shape_of(x)))
    # (NumPy divides by max(n - ddof, 0): inf, or NaN for a constant line, when ddof >= n)
    return ops.div(sum(ops.mul(centred, centred), axes, keepdims=keepdims),
                   float(builtins.max(count - ddof, 0)))


@implements(np.std)
def std(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    return ops.sqrt(var(x, axis, dtype, out, ddof, keepdims))


def _extremum(op, name):
    def reduce(x, axis=None, out=None, keepdims=False, initial=None, where=None):
        _no_out(out, name)
        x = operand(x)
        if where is not None and where is not True:
            if initial is None:
                raise UnsupportedError(with_location(
                    f"np.{name}(..., where=...) needs initial=... (as in NumPy)"))
            x = _masked(x, where, initial)
        axes = _axes(axis, _ndim(x))
        if initial is not None and builtins.any(shape_of(x)[a] == 0 for a in axes):
            # over no elements NumPy's result is initial (there is no max to compare with)
            kept = tuple(d for a, d in enumerate(shape_of(x)) if a not in axes)
            return _keep(full_traced(kept, initial, dtype_of(x), x), shape_of(x), axes, keepdims)
        y = op(x, axes)
        if initial is not None:
            y = (ops.maximum if name == "max" else ops.minimum)(y, initial)
        return _keep(y, shape_of(x), axes, keepdims)
    reduce.__name__ = name
    return reduce


max = implements(np.max, np.amax)(_extremum(ops.reduce_max, "max"))
min = implements(np.min, np.amin)(_extremum(ops.reduce_min, "min"))


@implements(np.prod)
def prod(x, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _no_out(out, "prod")
    x = _masked(_accumulating(operand(x), dtype), where, 1)
    axes = _axes(axis, _ndim(x))
    y = ops.reduce_prod(x, axes)
    if initial is not None:
        y = ops.mul(y, initial)
    return _keep(y, shape_of(x), axes, keepdims)


def _logical_reduction(x, axes, keepdims, reduce, empty_value):
    """``any``/``all``: a max/min of booleans; over no elements NumPy's False/True."""
    shape = shape_of(x)
    if builtins.any(shape[a] == 0 for a in axes):
        kept = tuple(1 if k in axes else d for k, d in enumerate(shape)) if keepdims else \
            tuple(d for k, d in enumerate(shape) if k not in axes)
        return np.full(kept, empty_value)
    return _keep(reduce(x, axes), shape, axes, keepdims)


@implements(np.any)
def any(x, axis=None, out=None, keepdims=False, where=None):
    _no_out(out, "any")
    x = _masked(astype(operand(x), bool), where, False)
    return _logical_reduction(x, _axes(axis, _ndim(x)), keepdims, ops.reduce_max, False)


@implements(np.all)
def all(x, axis=None, out=None, keepdims=False, where=None):
    _no_out(out, "all")
    x = _masked(astype(operand(x), bool), where, True)
    return _logical_reduction(x, _axes(axis, _ndim(x)), keepdims, ops.reduce_min, True)


def _arg(op, name):
    def arg(x, axis=None, out=None, keepdims=False):
        _no_out(out, name)
        x = operand(x)
        shape = tuple(shape_of(x))
        if axis is None:
            r, kept = op(ravel(x), 0), (1,) * len(shape)
        else:
            axis = _axis(axis, len(shape))
            r, kept = op(x, axis), tuple(1 if d == axis else n for d, n in enumerate(shape))
        return ops.reshape(r, kept) if keepdims else r     # (NumPy's kept axis of 1)
    return arg


implements(np.argmax)(_arg(ops.argmax, "argmax"))
implements(np.argmin)(_arg(ops.argmin, "argmin"))


@implements(np.cumsum)
def cumsum(x, axis=None, dtype=None, out=None):
    _no_out(out, "cumsum")
    x = _accumulating(operand(x), dtype)
    if axis is None:
        x, axis = ravel(x), 0
    return ops.cumsum(x, _axis(axis, _ndim(x)))


@implements(np.average)
def average(x, axis=None, weights=None, returned=False, keepdims=False):
    if weights is None:
        avg = mean(x, axis, keepdims=keepdims)
        if not returned:
            return avg
        size = int(np.prod(shape_of(operand(x)), dtype=np.int64))
        kept = int(np.prod(shape_of(avg), dtype=np.int64))
        count = np.full(shape_of(avg), size // builtins.max(1, kept), dtype_of(avg))
        return avg, count
    x, w = promote(x, weights, float_result=True)
    if shape_of(w) != shape_of(x):
        # (NumPy's: 1-D weights along one axis)
        if not isinstance(axis, (int, np.integer)) or len(shape_of(w)) != 1 or \
                shape_of(w)[0] != shape_of(x)[_axis(axis, len(shape_of(x)))]:
            raise ShapeError(with_location(
                f"np.average: weights of shape {shape_of(w)} fit neither a of shape "
                f"{shape_of(x)} nor its axis {axis!r} (1-D weights need an int axis)"))
        ax = _axis(axis, len(shape_of(x)))
        w = ops.broadcast_to(reshape(w, tuple(-1 if i == ax else 1
                                              for i in range(len(shape_of(x))))),
                             shape_of(x))
    total = sum(w, axis, keepdims=keepdims)
    avg = ops.div(sum(ops.mul(x, w), axis, keepdims=keepdims), total)
    return (avg, ops.broadcast_to(total, shape_of(avg))) if returned else avg


# ---------------------------------------------------------------- selection, clipping

@implements(np.where)
def where(cond, x=None, y=None):
    if x is None and y is None:
        raise UnsupportedError(with_location(
            "np.where(cond) with one argument (data-dependent shape); use np.nonzero "
            "on a constant, or boolean-mask indexing"))
    x, y = promote(x, y)
    cond = astype(operand(cond), bool)
    cond, x, y = broadcast(cond, x, y)
    if shape_of(cond) == () and shape_of(x) == () and shape_of(y) == ():
        return ops.select(cond, x, y)
    target = np.broadcast_shapes(shape_of(cond), shape_of(x), shape_of(y))
    cond = cond if shape_of(cond) == target else ops.broadcast_to(cond, target)
    return ops.select(cond, x, y)


@implements(np.clip)
def clip(x, a_min=None, a_max=None, out=None, **kwargs):
    _no_out(out, "clip")
    a_min = kwargs.pop("min", a_min)
    a_max = kwargs.pop("max", a_max)
    x = operand(x)
    # (a Python integer bound beyond the dtype's range clips nothing, as in NumPy 2)
    if isinstance(a_max, int) and not isinstance(a_max, bool) and \
            not fits(a_max, dtype_of(x)) and a_max > 0:
        a_max = None
    if isinstance(a_min, int) and not isinstance(a_min, bool) and \
            not fits(a_min, dtype_of(x)) and a_min < 0:
        a_min = None
    if a_min is not None:
        x = elementwise(ops.maximum)(x, a_min)
    if a_max is not None:
        x = elementwise(ops.minimum)(x, a_max)
    return x


@implements(np.round, np.around)
def round(x, decimals=0, out=None):
    """NumPy's way: integers stay integers (unchanged for ``decimals >= 0``, else rounded
    to tens, hundreds, ... in float64); floats are scaled by ``10**decimals``, rounded half
    to even and scaled back, dividing by ``10**-decimals`` when it is negative (a factor
    0.1 is inexact, and would round some halves the other way)."""
    x = operand(x)
    if dtype_of(x).kind in "iu":
        if decimals >= 0:
            return copy(x)
        return astype(round(astype(x, np.float64), decimals), dtype_of(x))
    (x,) = promote(x, float_result=True)
    if decimals == 0:
        return ops.round(x)
    if decimals > 0:
        scale = 10.0 ** decimals
        return ops.div(ops.round(ops.mul(x, scale)), scale)
    scale = 10.0 ** -decimals
    return ops.mul(ops.round(ops.div(x, scale)), scale)


@implements(np.sinc)
def sinc(x):
    # sin(πx)/(πx), 1 at 0
    (x,) = promote(x, float_result=True)
    px = ops.mul(x, np.pi)
    zero = ops.eq(x, 0.0)
    safe = ops.select(zero, np.ones((), dtype_of(x)), px)
    return ops.select(zero, np.ones((), dtype_of(x)), ops.div(ops.sin(safe), safe))


@implements(np.isclose)
def isclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    """NumPy's test: ``|a - b| <= atol + rtol |b|`` where ``b`` is finite (else an
    infinite tolerance would call anything close to ``inf``), or ``a == b`` (so an
    infinity is close to itself), or both NaN under ``equal_nan``."""
    a, b = broadcast(*promote(a, b, float_result=True))
    diff = ops.abs(ops.sub(a, b))
    within = ops.logical_and(ops.le(diff, ops.add(ops.mul(ops.abs(b), rtol), atol)),
                             ops.isfinite(b))
    close = ops.logical_or(within, ops.eq(a, b))
    if equal_nan:
        close = ops.logical_or(close, ops.logical_and(ops.isnan(a), ops.isnan(b)))
    return close


@implements(np.allclose)
def allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    return all(isclose(a, b, rtol, atol, equal_nan))


# ---------------------------------------------------------------- shapes

def _reshape_view(x, shape, view=True):
    """reshape, ravel, squeeze, expand_dims return views in NumPy: writes reach x (and
    writes to x reach them), where x's strides allow one (else a copy, as NumPy's;
    ``view=False``: a copy)."""
    x = operand(x)
    y = ops.reshape(x, shape)
    if isinstance(x, Tracer) and isinstance(y, Tracer):
        out = tuple(shape_of(y))
        # (a NumPy scalar's s.ravel(), s.reshape(1), np.expand_dims(s, 0): new arrays)
        view = view and not x.numpy_scalar()
        layout = reshape_strides(shape_of(x), strides_of(x), out) if view else None
        if layout is None:
            # NumPy copies where the strides do not allow a view (x.T.reshape(-1))
            copied = y.fresh()
            copied.array0d = True
            return copied
        if y is not x:
            y.as_view_of(x, lambda v: ops.reshape(v, shape_of(x)), None,
                         lambda b: ops.reshape(b, out))
            y.layout = layout
    return y


def _transpose_view(x, perm):
    """transpose, swapaxes, moveaxis return views in NumPy: writes reach x (and writes
    to x reach them)."""
    x = operand(x)
    y = ops.transpose(x, perm)
    if isinstance(x, Tracer) and isinstance(y, Tracer):
        y.as_view_of(x, lambda v: ops.transpose(v, tuple(np.argsort(perm))), None,
                     lambda b: ops.transpose(b, perm))
        if y is not x:
            strides = strides_of(x)
            y.layout = tuple(strides[p] for p in perm)
    return y


@implements(np.reshape)
def reshape(x, *args, **kwargs):
    shape = kwargs.pop("shape", kwargs.pop("newshape", None))
    order = kwargs.pop("order", "C")
    if shape is None:
        shape = args[0] if len(args) == 1 else args
        if len(args) == 2 and isinstance(args[1], str):
            shape, order = args
    if order != "C":
        raise UnsupportedError(with_location("reshape with order other than 'C'"))
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = list(shape)
    size = int(np.prod(shape_of(x), dtype=np.int64))
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        shape[shape.index(-1)] = size // known if known else 0
    if int(np.prod(shape, dtype=np.int64)) != size:
        raise ShapeError(with_location(
            f"cannot reshape an array of shape {shape_of(x)} into shape {tuple(shape)}"))
    return _reshape_view(x, tuple(shape))


@implements(np.ravel)
def ravel(x, order="C"):
    """A view of a C-contiguous x, else a copy (NumPy's rule: x[::2].ravel() is a copy
    although x[::2].reshape(-1) is a view)."""
    if order != "C":
        raise UnsupportedError(with_location("ravel with order other than 'C'"))
    size = int(np.prod(shape_of(x), dtype=np.int64))
    return _reshape_view(x, (size,), view=c_contiguous(shape_of(x), strides_of(x)))


@implements(np.transpose)
def transpose(x, axes=None):
    n = _ndim(x)
    perm = tuple(reversed(range(n))) if axes is None else tuple(_axis(a, n) for a in axes)
    return _transpose_view(x, perm)


@implements(np.swapaxes)
def swapaxes(x, axis1, axis2):
    perm = list(range(_ndim(x)))
    a, b = _axis(axis1, len(perm)), _axis(axis2, len(perm))
    perm[a], perm[b] = perm[b], perm[a]
    return _transpose_view(x, tuple(perm))


@implements(np.moveaxis)
def moveaxis(x, source, destination):
    n = _ndim(x)
    src = [_axis(a, n) for a in np.atleast_1d(source)]
    dst = [_axis(a, n) for a in np.atleast_1d(destination)]
    order = [i for i in range(n) if i not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return _transpose_view(x, tuple(order))


@implements(np.squeeze)
def squeeze(x, axis=None):
    shape = shape_of(x)
    axes = [i for i, d in enumerate(shape) if d == 1] if axis is None else _axes(axis, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ShapeError(with_location(
                f"cannot select an axis to squeeze out which has size not equal to one "
                f"(axis {a} of shape {shape})"))
    return _reshape_view(x, tuple(d for i, d in enumerate(shape) if i not in axes))


@implements(np.expand_dims)
def expand_dims(x, axis):
    shape = list(shape_of(x))
    axes = _axes(axis, len(shape) + len(np.atleast_1d(axis)))
    for a in axes:
        shape.insert(a, 1)
    return _reshape_view(x, tuple(shape))


@implements(np.atleast_1d)
def atleast_1d(*xs):
    out = [reshape(x, (1,)) if _ndim(x) == 0 else operand(x) for x in xs]
    return out[0] if len(out) == 1 else out


@implements(np.atleast_2d)
def atleast_2d(*xs):
    out = []
    for x in xs:
        x = operand(x)
        out.append(reshape(x, (1,) * (2 - _ndim(x)) + shape_of(x)) if _ndim(x) < 2 else x)
    return out[0] if len(out) == 1 else out


def broadcast_to(x, shape):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return broadcast(operand(x), np.zeros(shape, bool))[0] if shape_of(x) != () else \
        ops.broadcast_to(operand(x), shape)


@implements(np.broadcast_to)
def broadcast_to_view(x, shape, subok=False):
    """``np.broadcast_to``: a read-only view of x, as NumPy's (writes to it are refused,
    writes to x reach it).  gradc's own code broadcasts with ``broadcast_to``."""
    y = broadcast_to(x, shape)
    if isinstance(x, Tracer) and isinstance(y, Tracer) and x.numpy_scalar():
        # (a NumPy scalar's: a view of a new array, which s += v, a rebinding, leaves)
        y = y.fresh() if y is x else y
        y.read_only = ("np.broadcast_to", "which NumPy makes read-only")
        y.array0d = True
    elif isinstance(x, Tracer) and isinstance(y, Tracer):
        out = tuple(shape_of(y))
        y = y.read_only_view_of(x, "np.broadcast_to", lambda b: broadcast_to(b, out))
        strides, lead = strides_of(x), len(out) - len(shape_of(x))
        y.layout = (0,) * lead + tuple(0 if d == 1 and o != 1 else s for d, o, s in
                                       zip(shape_of(x), out[lead:], strides))
    return y


@implements(np.concatenate)
def concatenate(arrays, axis=0, out=None, dtype=None):
    _no_out(out, "concatenate")
    arrays = promote(*arrays)
    if dtype is not None:
        arrays = [astype(a, dtype) for a in arrays]
    if axis is None:
        return ops.concatenate([ravel(a) for a in arrays], 0)
    return ops.concatenate(arrays, _axis(axis, _ndim(arrays[0])))


@implements(np.hstack)
def hstack(arrays):
    arrays = [atleast_1d(a) for a in arrays]
    return concatenate(arrays, 0 if _ndim(arrays[0]) == 1 else 1)


@implements(np.vstack)
def vstack(arrays):
    return concatenate([atleast_2d(a) for a in arrays], 0)


@implements(np.column_stack)
def column_stack(arrays):
    cols = [reshape(a, (-1, 1)) if _ndim(a) == 1 else operand(a) for a in arrays]
    return concatenate(cols, 1)


@implements(np.flip)
def flip(x, axis=None):
    x = operand(x)
    axes = _axes(axis, _ndim(x))
    index = tuple((d - 1, None, -1) if i in axes else (0, d, 1)
                  for i, d in enumerate(shape_of(x)))
    return ops.slice_(x, index)


@implements(np.fliplr)
def fliplr(x):
    return flip(x, 1)


@implements(np.flipud)
def flipud(x):
    return flip(x, 0)


@implements(np.roll)
def roll(x, shift, axis=None):
    x = operand(x)
    if axis is None:
        return reshape(roll(ravel(x), shift, 0), shape_of(x))
    shifts, axes = np.broadcast_arrays(np.atleast_1d(shift), np.atleast_1d(axis))
    for s, a in zip(shifts, axes):
        a = _axis(a, _ndim(x))
        n = shape_of(x)[a]
        s = int(s) % n if n else 0
        if s == 0:
            continue
        full = [(0, d, 1) for d in shape_of(x)]
        head, tail = list(full), list(full)
        head[a], tail[a] = (n - s, n, 1), (0, n - s, 1)
        x = ops.concatenate([ops.slice_(x, tuple(head)), ops.slice_(x, tuple(tail))], a)
    return x


@implements(np.tile)
def tile(x, reps):
    x = operand(x)
    reps = (int(reps),) if isinstance(reps, (int, np.integer)) else tuple(int(r) for r in reps)
    shape = shape_of(x)
    n = builtins.max(len(reps), len(shape))
    shape = (1,) * (n - len(shape)) + shape
    reps = (1,) * (n - len(reps)) + reps
    x = ops.reshape(x, shape)
    # place each axis d after a new axis of length reps[d], then merge the pairs
    big = tuple(v for r, d in zip(reps, shape) for v in (r, d))
    out = ops.broadcast_in_dim(x, big, tuple(range(1, 2 * n, 2)))
    return ops.reshape(out, tuple(r * d for r, d in zip(reps, shape)))


@implements(np.repeat)
def repeat(x, repeats, axis=None):
    x = operand(x)
    if axis is None:
        x, axis = ravel(x), 0
    axis = _axis(axis, _ndim(x))
    shape = shape_of(x)
    if np.any(np.asarray(repeats) < 0):
        raise InvalidValueError(with_location(
            f"np.repeat: repeats may not contain negative values, got {repeats!r}"))
    if np.ndim(repeats) == 0:
        r = int(repeats)
        big = shape[:axis + 1] + (r,) + shape[axis + 1:]
        dims = tuple(range(axis + 1)) + tuple(range(axis + 2, len(big)))
        out = ops.broadcast_in_dim(x, big, dims)
        return ops.reshape(out, shape[:axis] + (shape[axis] * r,) + shape[axis + 1:])
    try:
        index = np.repeat(np.arange(shape[axis]), np.asarray(repeats))
    except ValueError:
        raise ShapeError(with_location(
            f"np.repeat: repeats of shape {np.shape(repeats)} for an axis of size "
            f"{shape[axis]}: give one count, or one per element of the axis")) from None
    return take(x, index, axis)


@implements(np.take)
def take(x, indices, axis=None, out=None, mode=None):
    _no_out(out, "take")
    if mode not in (None, "raise"):
        raise UnsupportedError(with_location(f"np.take(..., mode={mode!r}) on traced arrays"))
    x = operand(x)
    if axis is None:
        x, axis = ravel(x), 0
    axis = _axis(axis, _ndim(x))
    key = (slice(None),) * axis + (operand(indices),)
    from .numpy_api import getitem
    return getitem(x, key)


# ---------------------------------------------------------------- sorting

@implements(np.take_along_axis)
def take_along_axis(arr, indices, axis=-1):
    arr, indices = operand(arr), operand(indices)
    if axis is None:
        arr, axis = ravel(arr), 0
    if not np.issubdtype(dtype_of(indices), np.integer):
        raise DTypeError(with_location("np.take_along_axis: indices must be integers, got "
                                       f"{dtype_of(indices)}"))
    nd = _ndim(arr)
    if _ndim(indices) != nd:
        raise ShapeError(with_location("np.take_along_axis: indices and arr must have the "
                                       f"same number of dimensions ({_ndim(indices)} != {nd})"))
    axis = _axis(axis, nd)
    key = tuple(indices if d == axis else
                np.arange(n).reshape(tuple(n if k == d else 1 for k in range(nd)))
                for d, n in enumerate(shape_of(arr)))
    from .numpy_api import getitem
    return getitem(arr, key)


def _sorted_along(x, axis, name, order=None):
    if order is not None:
        raise UnsupportedError(with_location(f"np.{name}(..., order=...) on traced arrays"))
    x = operand(x)
    if axis is None:
        x, axis = ravel(x), 0
    return x, _axis(axis, _ndim(x))


@implements(np.argsort)
def argsort(a, axis=-1, kind=None, order=None, *, stable=None):
    """A stable sort (NaNs last): NumPy's default kind is not stable, so the order of
    equal elements may differ from NumPy's unless ``kind="stable"``."""
    a, axis = _sorted_along(a, axis, "argsort", order)
    return ops.argsort(a, axis)


@implements(np.sort)
def sort(a, axis=-1, kind=None, order=None, *, stable=None):
    """The elements gathered in their sorted order: the derivative moves with them."""
    a, axis = _sorted_along(a, axis, "sort", order)
    return take_along_axis(a, ops.argsort(a, axis), axis)


def _check_kth(a, kth, axis):
    n = shape_of(a)[axis]
    for k in np.atleast_1d(np.asarray(kth)).ravel():
        if not -n <= int(k) < n:
            raise ShapeError(with_location(f"kth(={int(k)}) out of bounds ({n})"))


@implements(np.partition)
def partition(a, kth, axis=-1, kind="introselect", order=None):
    """A full sort: one of the partitions NumPy's contract allows."""
    a, ax = _sorted_along(a, axis, "partition", order)
    _check_kth(a, kth, ax)
    return sort(a, ax)


@implements(np.argpartition)
def argpartition(a, kth, axis=-1, kind="introselect", order=None):
    a, ax = _sorted_along(a, axis, "argpartition", order)
    _check_kth(a, kth, ax)
    return ops.argsort(a, ax)


@implements(np.searchsorted)
def searchsorted(a, v, side="left", sorter=None):
    if sorter is not None:
        a = take(a, sorter)
    if isinstance(v, (bool, int, float)):
        # NumPy compares a Python scalar at its own precision (0.1 as a float64 against
        # a float32 array; 300 against uint8), not at the array's
        v = np.asarray(v)
    a, v = promote(a, v)
    if _ndim(a) != 1:
        raise ShapeError(with_location(f"np.searchsorted: a must be 1-D, got shape "
                                       f"{shape_of(a)}"))
    if side not in ("left", "right"):
        raise ArgumentError(with_location(f"np.searchsorted: side must be 'left' or "
                                          f"'right', got {side!r}"))
    return ops.searchsorted(a, v, side)


@implements(np.digitize)
def digitize(x, bins, right=False):
    """For constant bins (NumPy checks their order at run time; traced bins would need
    that check on every target)."""
    if isinstance(bins, Tracer):
        raise UnsupportedError(with_location("np.digitize with traced bins; use "
                                             "np.searchsorted on increasing bins"))
    bins = np.asarray(bins)
    if bins.ndim != 1:
        raise ShapeError(with_location("np.digitize: bins must be 1-D"))
    if np.all(bins[1:] >= bins[:-1]):
        return searchsorted(bins, x, "left" if right else "right")
    if np.all(bins[1:] <= bins[:-1]):
        flipped = searchsorted(bins[::-1], x, "left" if right else "right")
        return ops.sub(np.int64(len(bins)), flipped)
    raise ArgumentError(with_location("np.digitize: bins must be monotonically increasing "
                                      "or decreasing"))


@implements(np.interp)
def interp(x, xp, fp, left=None, right=None, period=None):
    """Piecewise-linear interpolation as NumPy computes it (float64, NaN for a NaN x,
    ``left``/``right`` outside ``xp``, the value at a knot exactly ``fp`` there);
    differentiable in ``x``, ``xp`` and ``fp``."""
    if period is not None:
        raise UnsupportedError(with_location("np.interp(..., period=...) on traced arrays"))
    if builtins.any(np.issubdtype(dtype_of(operand(v)), np.complexfloating)
                    for v in (x, xp, fp)):
        raise UnsupportedError(with_location("np.interp of complex values: complex arrays "
                                             "are not supported by gradc"))
    x, xp, fp = (astype(operand(v), np.float64) for v in (x, xp, fp))
    if _ndim(xp) != 1 or shape_of(fp) != shape_of(xp):
        raise ShapeError(with_location("np.interp: xp and fp must be 1-D sequences of the "
                                       f"same length, got {shape_of(xp)} and {shape_of(fp)}"))
    n = shape_of(xp)[0]
    if n == 0:
        raise ShapeError(with_location("np.interp: the array of sample points is empty"))
    from .numpy_api import getitem
    first, last = getitem(fp, 0), getitem(fp, n - 1)
    left = first if left is None else astype(operand(left), np.float64)
    right = last if right is None else astype(operand(right), np.float64)
    x, left, right = broadcast(x, left, right)
    if n == 1:
        inside = ops.broadcast_to(first, shape_of(x)) if shape_of(x) else first
    else:
        j = ops.searchsorted(xp, x, "right")
        j = ops.maximum(ops.minimum(ops.sub(j, np.int64(1)), np.int64(n - 2)), np.int64(0))
        xj, fj = getitem(xp, j), getitem(fp, j)
        j1 = ops.add(j, np.int64(1))
        xj1, fj1 = getitem(xp, j1), getitem(fp, j1)
        slope = ops.div(ops.sub(fj1, fj), ops.sub(xj1, xj))
        inside = ops.add(ops.mul(slope, ops.sub(x, xj)), fj)
        from_right = ops.add(ops.mul(slope, ops.sub(x, xj1)), fj1)
        # NumPy's fallbacks: from the right end when the left one is not finite, the
        # common value of a flat interval
        inside = ops.select(ops.isnan(inside), from_right, inside)
        inside = ops.select(ops.logical_and(ops.isnan(inside), ops.eq(fj, fj1)), fj, inside)
        # at a knot, NumPy's value is the knot's fp exactly (the last one's at the last
        # knot, repeated or infinite); an exact zero carries the slope's derivative
        # in x there (a nonzero fp only: adding a zero would turn -0.0 into 0.0)
        safe = ops.select(ops.isfinite(slope), slope, 0.0)
        moved = ops.sub(x, ops.stop_gradient(x))
        carry = ops.select(ops.isfinite(x), ops.mul(moved, safe), 0.0)

        def knot(f):
            return ops.select(ops.eq(f, 0.0), f, ops.add(f, carry))
        inside = ops.select(ops.eq(x, xj), knot(fj), inside)
        inside = ops.select(ops.eq(x, getitem(xp, n - 1)), knot(ops.broadcast_to(last, shape_of(x))
                                                                if shape_of(x) else last),
                            inside)
    below, above = ops.lt(x, getitem(xp, 0)), ops.gt(x, getitem(xp, n - 1))
    out = ops.select(below, left, ops.select(above, right, inside))
    # a NaN x gives NaN (but with one sample point NumPy's comparisons give fp[0])
    return out if n == 1 else ops.select(ops.isnan(x), x, out)


def _sorted_lines(a, axis, q_dtype=None, to_float=True):
    """``a`` (promoted to float unless ``to_float`` is false, and with ``q_dtype``, as
    NumPy's result) sorted along the given axes merged into the last one, the kept axes
    in front; with the kept shape and the axes."""
    (a,) = promote(a, float_result=to_float)
    if q_dtype is not None and to_float:
        a = astype(a, np.result_type(dtype_of(a), q_dtype))
    axes = _axes(axis, _ndim(a))
    kept = tuple(d for i, d in enumerate(shape_of(a)) if i not in axes)
    n = int(np.prod([shape_of(a)[i] for i in axes], dtype=np.int64))
    lines = reshape(moveaxis(a, axes, tuple(range(-len(axes), 0))), kept + (n,))
    return sort(lines, -1), kept, axes, n


_QUANTILE_METHODS = ("linear", "lower", "higher", "nearest", "midpoint")
# methods that pick an element (NumPy keeps its dtype, and reads nothing else)
_PICKING = ("lower", "higher", "nearest")


def _check_q(q, method, name):
    """q as a float64 array, and the dtype it promotes the result to (None: none)."""
    if isinstance(q, Tracer):
        raise UnsupportedError(with_location(
            f"np.{name}: q must be a constant (the positions read depend on it)"))
    if method not in _QUANTILE_METHODS:
        raise UnsupportedError(with_location(
            f"np.{name}(..., method={method!r}) on traced arrays; supported: "
            + ", ".join(_QUANTILE_METHODS)))
    # a Python number is weak in NumPy's promotion, as are integers; a float q counts
    # (float32 data with q = [0.5] gives float64)
    q_dtype = None if type(q) in (int, float) or np.asarray(q).dtype.kind in "biu" \
        else np.asarray(q).dtype
    q = np.asarray(q, np.float64)
    if np.any((q < 0) | (q > 1)) or np.any(np.isnan(q)):
        scale = "[0, 100]" if "percentile" in name else "[0, 1]"
        raise ArgumentError(with_location(f"np.{name}: q must be in the range {scale}"))
    return q, q_dtype


def _blend(below, above, t):
    """NumPy's interpolation between neighbours: from the nearer end, exact at t = 0
    and t = 1."""
    diff = ops.sub(above, below)
    return ops.select(ops.ge(t, 0.5), ops.sub(above, ops.mul(diff, ops.sub(1.0, t))),
                      ops.add(below, ops.mul(diff, t)))


def _quantile(a, q, axis, method, keepdims, name):
    """Quantiles (and with ``method="median"``, NumPy's median: the mean of the middle
    elements) of the sorted lines; a NaN in a line makes its results NaN."""
    if method == "median":
        q, q_dtype = np.asarray(0.5), None
    else:
        q, q_dtype = _check_q(q, method, name)
    s, kept, axes, n = _sorted_lines(a, axis, q_dtype, to_float=method not in _PICKING)
    if n == 0:
        if method != "median":      # (NumPy's quantiles fail with an IndexError)
            raise ShapeError(with_location(f"np.{name} of an empty array"))
        # NumPy's median of no elements is their mean, NaN (with a RuntimeWarning)
        value = full_traced(kept, np.nan, dtype_of(s), s)
        return quantile_layout(value, a, kept, axes, q, keepdims)
    from .numpy_api import getitem

    def at(index):
        return getitem(s, (Ellipsis, np.asarray(index, np.int64).ravel()))
    virtual = q * (n - 1)
    lo = np.floor(virtual).astype(np.int64)
    if method == "median":
        mid = at([n // 2])
        value = mid if n % 2 else ops.div(ops.add(at([n // 2 - 1]), mid), 2.0)
    elif method in _PICKING:
        value = at({"lower": lo, "higher": np.ceil(virtual),
                    "nearest": np.around(virtual)}[method])
    else:
        t = virtual - lo if method == "linear" else np.where(virtual == lo, 0.0, 0.5)
        below, above = at(lo), at(np.minimum(lo + 1, n - 1))
        value = _blend(below, above, np.broadcast_to(t.ravel().astype(dtype_of(s)),
                                                     shape_of(below)))
    if np.issubdtype(dtype_of(s), np.inexact):
        # a NaN anywhere along the line makes its quantiles NaN (sorted, it is last)
        last = getitem(s, (Ellipsis, slice(n - 1, n)))
        value = ops.select(ops.broadcast_to(ops.isnan(last), shape_of(value)),
                           ops.broadcast_to(last, shape_of(value)), value)
    return quantile_layout(value, a, kept, axes, q, keepdims)


def quantile_layout(value, a, kept, axes, q, keepdims):
    """Quantiles computed as (kept..., Q) into NumPy's layout: q's axes first, then the
    kept axes (with ``keepdims``, ``a``'s with the reduced ones as 1)."""
    value = reshape(value, kept + q.shape)
    value = moveaxis(value, tuple(range(len(kept), len(kept) + q.ndim)), tuple(range(q.ndim)))
    if keepdims:
        full = tuple(1 if i in axes else d for i, d in enumerate(shape_of(operand(a))))
        value = reshape(value, q.shape + full)
    return value


def quantile_function(name, compute, percent):
    """NumPy's signature of ``np.<name>`` over ``compute(a, q, axis, method, keepdims,
    name)``; ``percent``: q in [0, 100]."""
    def function(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                 keepdims=False, *, weights=None, interpolation=None):
        _no_out(out, name)
        if weights is not None:
            raise UnsupportedError(with_location(f"np.{name}(..., weights=...) on traced "
                                                 "arrays"))
        if percent and not isinstance(q, Tracer):
            q = q / 100.0 if type(q) in (int, float) else np.true_divide(q, 100)
        return compute(a, q, axis, interpolation or method, keepdims, name)
    function.__name__ = name
    return implements(getattr(np, name))(function)


quantile = quantile_function("quantile", _quantile, percent=False)
percentile = quantile_function("percentile", _quantile, percent=True)


@implements(np.median)
def median(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    _no_out(out, "median")
    return _quantile(a, 0.5, axis, "median", keepdims, "median")


def _diagonal_values(x, offset, axis1, axis2):
    n = _ndim(x)
    if n < 2:
        raise ShapeError(with_location("diag requires an array of at least two dimensions"))
    a, b = _axis(axis1, n), _axis(axis2, n)
    if a == b:
        raise ShapeError(with_location("axis1 and axis2 cannot be the same"))
    perm = tuple(i for i in range(n) if i not in (a, b)) + (a, b)
    x = ops.transpose(operand(x), perm)
    n, m = shape_of(x)[-2:]
    rows = np.arange(builtins.max(0, -offset), builtins.min(n, m - offset))
    if isinstance(x, Tracer):
        from .numpy_api import getitem
        return getitem(x, (Ellipsis, rows, rows + offset))      # (a gather: no view)
    return np.diagonal(x, offset, -2, -1)


@implements(np.diagonal)
def diagonal(x, offset=0, axis1=0, axis2=1):
    """A read-only view of x, as NumPy's (since 1.9): writes to it are refused, writes to
    x reach it."""
    y = _diagonal_values(x, offset, axis1, axis2)
    if isinstance(x, Tracer) and isinstance(y, Tracer):
        y = y.read_only_view_of(x, "x.diagonal",
                                lambda b: _diagonal_values(b, offset, axis1, axis2))
        strides = strides_of(x)
        a, b = _axis(axis1, _ndim(x)), _axis(axis2, _ndim(x))
        y.layout = tuple(s for i, s in enumerate(strides) if i not in (a, b)) + (
            strides[a] + strides[b],)
    return y


@implements(np.diag)
def diag(v, k=0):
    v = operand(v)
    if _ndim(v) == 2:
        return diagonal(v, k)
    if _ndim(v) != 1:
        raise ShapeError(with_location("np.diag: input must be 1-d or 2-d"))
    n = shape_of(v)[0] + builtins.abs(k)
    rows = np.arange(shape_of(v)[0]) + builtins.max(0, -k)
    zeros = np.zeros((n, n), dtype_of(v))
    return ops.index_set(zeros, v, [rows, rows + k], (("a", 0), ("a", 1)))


@implements(np.trace)
def trace(x, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    return sum(diagonal(x, offset, axis1, axis2), axis=-1, dtype=dtype)


def _triangle(x, k, lower):
    """NumPy's ``where(tri(*x.shape[-2:], k), x, 0)``: a 1-d ``x`` of length n meets an
    (n, n) mask, so its copies fill the rows of an (n, n) triangle."""
    x = operand(x)
    if _ndim(x) == 0:
        raise ShapeError(with_location(
            f"np.{'tril' if lower else 'triu'} of a 0-d array: it needs at least 1 dimension"))
    dims = shape_of(x)[-2:]
    mask = np.tri(*dims, k=k, dtype=bool) if lower else ~np.tri(*dims, k=k - 1, dtype=bool)
    mask, x = broadcast(mask, x)
    return ops.select(mask, x, np.zeros((), dtype_of(x)))


@implements(np.tril)
def tril(x, k=0):
    return _triangle(x, k, True)


@implements(np.triu)
def triu(x, k=0):
    return _triangle(x, k, False)


def _like_shape(x, args, kwargs) -> tuple:
    """The shape of ``np.zeros_like(x, dtype, order, subok, shape)``: ``shape`` if given
    (positionally or by name), else ``x``'s."""
    shape = kwargs.get("shape", args[2] if len(args) > 2 else None)
    if shape is None:
        return tuple(shape_of(x))
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)


@implements(np.zeros_like, np.empty_like)
def zeros_like(x, dtype=None, *args, **kwargs):
    return full_traced(_like_shape(x, args, kwargs), 0, dtype or dtype_of(x), x)


@implements(np.ones_like)
def ones_like(x, dtype=None, *args, **kwargs):
    return full_traced(_like_shape(x, args, kwargs), 1, dtype or dtype_of(x), x)


@implements(np.full_like)
def full_like(x, fill_value, dtype=None, *args, **kwargs):
    shape = _like_shape(x, args, kwargs)
    if isinstance(fill_value, Tracer):
        return ops.broadcast_to(astype(fill_value, dtype or dtype_of(x)), shape)
    return full_traced(shape, fill_value, dtype or dtype_of(x), x)


@implements(np.copy)
def copy(x, *args, **kwargs):
    x = operand(x)
    if not isinstance(x, Tracer):
        return np.array(x)
    out = x.fresh()
    out.array0d = True          # (a copy is an array, even of a 0-d one: see Tracer)
    return out


@implements(np.shape)
def shape(x):
    return shape_of(x)


@implements(np.ndim)
def ndim(x):
    return _ndim(x)


@implements(np.size)
def size(x, axis=None):
    s = shape_of(x)
    return int(np.prod(s, dtype=np.int64)) if axis is None else s[axis]


@implements(np.result_type)
def result_type(*xs):
    return np.result_type(*[dtype_of(x) if isinstance(x, Tracer) else x for x in xs])


# ---------------------------------------------------------------- indices of True entries

@implements(np.nonzero)
def nonzero(x):
    """Indices of the nonzero entries.  Their number is data-dependent: it is fixed at
    trace time and checked when the graph runs (a different count re-traces)."""
    from .numpy_api import _mask_indices
    x = operand(x)
    if _ndim(x) == 0:
        raise UnsupportedError(with_location("np.nonzero of a 0-d array; use np.atleast_1d"))
    mask = x if dtype_of(x) == np.dtype(bool) else ops.ne(x, np.zeros((), dtype_of(x)))
    return tuple(_mask_indices(mask))


@implements(np.flatnonzero)
def flatnonzero(x):
    return nonzero(ravel(x))[0]


@implements(np.argwhere)
def argwhere(x):
    return stack(list(nonzero(atleast_1d(x))), axis=1)
