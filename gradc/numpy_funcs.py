"""NumPy functions (``__array_function__``) written with gradc operations: reductions,
shape manipulation, contractions (``matmul``, ``dot``, ``einsum``, ...) and ``np.linalg``.

Each is registered with ``@implements(np.f)``.  They also accept plain arrays, so the
composite operations here are ordinary functions of the primitives.
"""
from __future__ import annotations

import builtins
import string

import numpy as np

from . import ops
from .errors import ShapeError, UnsupportedError, with_location
from .numpy_api import (_axis, astype, broadcast, elementwise, implements, operand, promote,
                        stack)
from .prims.reduce import _normalise_axes
from .trace import Tracer, dtype_of, full_traced, shape_of

implements(np.stack)(stack)


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
    x = operand(x)
    if dtype is not None:
        x = astype(x, dtype)
    elif dtype_of(x) == np.dtype(bool):
        x = astype(x, np.int64)
    x = _masked(x, where, 0)
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
    return ops.div(sum(ops.mul(centred, centred), axes, keepdims=keepdims),
                   float(count - ddof))


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
    x = operand(x)
    if dtype is not None:
        x = astype(x, dtype)
    x = _masked(x, where, 1)
    axes = _axes(axis, _ndim(x))
    y = ops.reduce_prod(x, axes)
    if initial is not None:
        y = ops.mul(y, initial)
    return _keep(y, shape_of(x), axes, keepdims)


@implements(np.any)
def any(x, axis=None, out=None, keepdims=False, where=None):
    _no_out(out, "any")
    x = _masked(astype(operand(x), bool), where, False)
    axes = _axes(axis, _ndim(x))
    return _keep(ops.reduce_max(x, axes), shape_of(x), axes, keepdims)


@implements(np.all)
def all(x, axis=None, out=None, keepdims=False, where=None):
    _no_out(out, "all")
    x = _masked(astype(operand(x), bool), where, True)
    axes = _axes(axis, _ndim(x))
    return _keep(ops.reduce_min(x, axes), shape_of(x), axes, keepdims)


def _arg(op):
    def arg(x, axis=None, out=None, keepdims=False):
        x = operand(x)
        if axis is None:
            x, axis = ravel(x), 0
        return op(x, _axis(axis, _ndim(x)))
    return arg


implements(np.argmax)(_arg(ops.argmax))
implements(np.argmin)(_arg(ops.argmin))


@implements(np.cumsum)
def cumsum(x, axis=None, dtype=None, out=None):
    x = operand(x)
    if dtype is not None:
        x = astype(x, dtype)
    if axis is None:
        x, axis = ravel(x), 0
    return ops.cumsum(x, _axis(axis, _ndim(x)))


@implements(np.average)
def average(x, axis=None, weights=None, returned=False, keepdims=False):
    if returned:
        raise UnsupportedError(with_location("np.average(..., returned=True) on traced arrays"))
    if weights is None:
        return mean(x, axis, keepdims=keepdims)
    x, w = promote(x, weights, float_result=True)
    if shape_of(w) != shape_of(x):
        raise UnsupportedError(with_location("np.average: weights must have the shape of a"))
    return ops.div(sum(ops.mul(x, w), axis, keepdims=keepdims), sum(w, axis, keepdims=keepdims))


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
    if a_min is not None:
        x = elementwise(ops.maximum)(x, a_min)
    if a_max is not None:
        x = elementwise(ops.minimum)(x, a_max)
    return x


@implements(np.round, np.around)
def round(x, decimals=0, out=None):
    (x,) = promote(x, float_result=True)
    if decimals == 0:
        return ops.round(x)
    scale = 10.0 ** decimals
    return ops.div(ops.round(ops.mul(x, scale)), scale)


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
    a, b = broadcast(*promote(a, b, float_result=True))
    diff = ops.abs(ops.sub(a, b))
    return ops.le(diff, ops.add(ops.mul(ops.abs(b), rtol), atol))


@implements(np.allclose)
def allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    return all(isclose(a, b, rtol, atol))


# ---------------------------------------------------------------- shapes

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
    return ops.reshape(operand(x), tuple(shape))


@implements(np.ravel)
def ravel(x, order="C"):
    return reshape(x, (-1,), order=order)


@implements(np.transpose)
def transpose(x, axes=None):
    n = _ndim(x)
    perm = tuple(reversed(range(n))) if axes is None else tuple(_axis(a, n) for a in axes)
    return ops.transpose(operand(x), perm)


@implements(np.swapaxes)
def swapaxes(x, axis1, axis2):
    perm = list(range(_ndim(x)))
    a, b = _axis(axis1, len(perm)), _axis(axis2, len(perm))
    perm[a], perm[b] = perm[b], perm[a]
    return ops.transpose(operand(x), tuple(perm))


@implements(np.moveaxis)
def moveaxis(x, source, destination):
    n = _ndim(x)
    src = [_axis(a, n) for a in np.atleast_1d(source)]
    dst = [_axis(a, n) for a in np.atleast_1d(destination)]
    order = [i for i in range(n) if i not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return ops.transpose(operand(x), tuple(order))


@implements(np.squeeze)
def squeeze(x, axis=None):
    shape = shape_of(x)
    axes = [i for i, d in enumerate(shape) if d == 1] if axis is None else _axes(axis, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ShapeError(with_location(
                f"cannot select an axis to squeeze out which has size not equal to one "
                f"(axis {a} of shape {shape})"))
    return ops.reshape(operand(x), tuple(d for i, d in enumerate(shape) if i not in axes))


@implements(np.expand_dims)
def expand_dims(x, axis):
    shape = list(shape_of(x))
    axes = _axes(axis, len(shape) + len(np.atleast_1d(axis)))
    for a in axes:
        shape.insert(a, 1)
    return ops.reshape(operand(x), tuple(shape))


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


@implements(np.broadcast_to)
def broadcast_to(x, shape):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return broadcast(operand(x), np.zeros(shape, bool))[0] if shape_of(x) != () else \
        ops.broadcast_to(operand(x), shape)


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
    if np.ndim(repeats) == 0:
        r = int(repeats)
        big = shape[:axis + 1] + (r,) + shape[axis + 1:]
        dims = tuple(range(axis + 1)) + tuple(range(axis + 2, len(big)))
        out = ops.broadcast_in_dim(x, big, dims)
        return ops.reshape(out, shape[:axis] + (shape[axis] * r,) + shape[axis + 1:])
    index = np.repeat(np.arange(shape[axis]), np.asarray(repeats))
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


@implements(np.diagonal)
def diagonal(x, offset=0, axis1=0, axis2=1):
    x = moveaxis(operand(x), (axis1, axis2), (-2, -1))
    n, m = shape_of(x)[-2:]
    rows = np.arange(builtins.max(0, -offset), builtins.min(n, m - offset))
    from .numpy_api import getitem
    return getitem(x, (Ellipsis, rows, rows + offset))


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
    x = operand(x)
    n, m = shape_of(x)[-2:]
    mask = np.tri(n, m, k, dtype=bool) if lower else ~np.tri(n, m, k - 1, dtype=bool)
    return ops.select(np.broadcast_to(mask, shape_of(x)), x, np.zeros((), dtype_of(x)))


@implements(np.tril)
def tril(x, k=0):
    return _triangle(x, k, True)


@implements(np.triu)
def triu(x, k=0):
    return _triangle(x, k, False)


@implements(np.zeros_like, np.empty_like)
def zeros_like(x, dtype=None, *args, **kwargs):
    return full_traced(shape_of(x), 0, dtype or dtype_of(x), x)


@implements(np.ones_like)
def ones_like(x, dtype=None, *args, **kwargs):
    return full_traced(shape_of(x), 1, dtype or dtype_of(x), x)


@implements(np.full_like)
def full_like(x, fill_value, dtype=None, *args, **kwargs):
    if isinstance(fill_value, Tracer):
        return ops.broadcast_to(astype(fill_value, dtype or dtype_of(x)), shape_of(x))
    return full_traced(shape_of(x), fill_value, dtype or dtype_of(x), x)


@implements(np.copy)
def copy(x, *args, **kwargs):
    x = operand(x)
    return Tracer(x.ir_var, x.val, x.owner) if isinstance(x, Tracer) else np.array(x)


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


# ---------------------------------------------------------------- contractions

def matmul(a, b):
    a, b = promote(a, b)
    if _ndim(a) == 0 or _ndim(b) == 0:
        raise ShapeError(with_location("matmul: operands must not be scalars (use *)"))
    sa, sb = shape_of(a), shape_of(b)
    inner_a, inner_b = sa[-1], (sb[0] if len(sb) == 1 else sb[-2])
    if inner_a != inner_b:
        raise ShapeError(with_location(
            f"matmul: shapes {sa} and {sb} do not align ({inner_a} != {inner_b})"))
    if _ndim(a) == 1 and _ndim(b) == 1:
        return einsum("i,i->", a, b)
    if _ndim(a) == 1:
        return einsum("j,...jk->...k", a, b)
    if _ndim(b) == 1:
        return einsum("...ij,j->...i", a, b)
    batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    if sa[:-2] != batch:
        a = ops.broadcast_to(a, batch + sa[-2:])
    if sb[:-2] != batch:
        b = ops.broadcast_to(b, batch + sb[-2:])
    return einsum("...ij,...jk->...ik", a, b)


@implements(np.dot)
def dot(a, b, out=None):
    _no_out(out, "dot")
    a, b = promote(a, b)
    if _ndim(a) == 0 or _ndim(b) == 0:
        return elementwise(ops.mul)(a, b)
    if _ndim(b) == 1:
        return tensordot(a, b, ([_ndim(a) - 1], [0]))
    return tensordot(a, b, ([_ndim(a) - 1], [_ndim(b) - 2]))


@implements(np.vdot)
def vdot(a, b):
    return dot(ravel(a), ravel(b))


@implements(np.inner)
def inner(a, b):
    a, b = promote(a, b)
    if _ndim(a) == 0 or _ndim(b) == 0:
        return elementwise(ops.mul)(a, b)
    return tensordot(a, b, ([_ndim(a) - 1], [_ndim(b) - 1]))


@implements(np.outer)
def outer(a, b, out=None):
    return einsum("i,j->ij", ravel(a), ravel(b))


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    a, b = promote(a, b)
    na, nb = _ndim(a), _ndim(b)
    if isinstance(axes, (int, np.integer)):
        ax_a, ax_b = list(range(na - axes, na)), list(range(int(axes)))
    else:
        ax_a, ax_b = [list(np.atleast_1d(t)) for t in axes]
    ax_a = [_axis(i, na) for i in ax_a]
    ax_b = [_axis(i, nb) for i in ax_b]
    letters = iter(string.ascii_letters)
    la = [next(letters) for _ in range(na)]
    lb = [next(letters) for _ in range(nb)]
    for i, j in zip(ax_a, ax_b):
        lb[j] = la[i]
    out = [c for i, c in enumerate(la) if i not in ax_a] + \
          [c for j, c in enumerate(lb) if j not in ax_b]
    return einsum(f"{''.join(la)},{''.join(lb)}->{''.join(out)}", a, b)


@implements(np.einsum)
def einsum(subscripts, *operands, optimize=None, **kwargs):
    if not isinstance(subscripts, str):
        raise UnsupportedError(with_location("np.einsum: only the string form is supported"))
    operands = promote(*operands)
    terms, out = _parse_einsum(subscripts.replace(" ", ""), [_ndim(x) for x in operands])
    for t, x in zip(terms, operands):
        if len(t) != _ndim(x):
            raise ShapeError(with_location(
                f"einsum {subscripts!r}: term {t!r} does not match an operand of shape "
                f"{shape_of(x)}"))
    pairs = [(_diagonal_of(x, t), "".join(dict.fromkeys(t))) for t, x in zip(terms, operands)]
    pairs = [(x, t) for x, t in pairs]
    while True:
        # sum out indices that occur in one operand only and not in the output
        reduced = []
        for i, (x, t) in enumerate(pairs):
            elsewhere = out + "".join(u for j, (_, u) in enumerate(pairs) if j != i)
            drop = tuple(k for k, c in enumerate(t) if c not in elsewhere)
            if drop:
                x = ops.reduce_sum(x, drop)
                t = "".join(c for k, c in enumerate(t) if k not in drop)
            reduced.append((x, t))
        pairs = reduced
        if len(pairs) == 1:
            break
        (x, tx), (y, ty), rest = pairs[0], pairs[1], pairs[2:]
        later = out + "".join(u for _, u in rest)
        keep = "".join(c for c in dict.fromkeys(tx + ty) if c in later)
        pairs = [(ops.einsum2(f"{tx},{ty}->{keep}", x, y), keep)] + rest
    x, t = pairs[0]
    return ops.transpose(x, tuple(t.index(c) for c in out))


def _parse_einsum(spec, ndims):
    if "->" in spec:
        lhs, out = spec.split("->")
    else:
        lhs, out = spec, None
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise ShapeError(with_location(f"einsum {spec!r}: {len(terms)} terms for "
                                       f"{len(ndims)} operands"))
    if "..." in spec:
        n_ell = builtins.max(nd - len(t.replace("...", "")) for t, nd in zip(terms, ndims)
                             if "..." in t)
        free = [c for c in string.ascii_uppercase if c not in spec][:n_ell]
        new_terms = []
        for t, nd in zip(terms, ndims):
            if "..." in t:
                k = nd - len(t.replace("...", ""))
                t = t.replace("...", "".join(free[n_ell - k:]))
            new_terms.append(t)
        terms = new_terms
        ell = "".join(free)
        if out is not None:
            out = out.replace("...", ell)
    if out is None:
        counts = {}
        for c in "".join(terms):
            counts[c] = counts.get(c, 0) + 1
        out = "".join(sorted(c for c, n in counts.items() if n == 1))
    return terms, out


def _diagonal_of(x, term):
    """Take the diagonal over repeated indices within one operand (``'ii->i'``)."""
    while len(set(term)) != len(term):
        c = next(c for c in term if term.count(c) > 1)
        i = term.index(c)
        j = term.index(c, i + 1)
        x = diagonal(x, 0, i, j)
        term = "".join(t for k, t in enumerate(term) if k not in (i, j)) + c
    return x


# ---------------------------------------------------------------- linalg

@implements(np.linalg.solve)
def solve(a, b):
    a, b = promote(a, b, float_result=True)
    if _ndim(b) == 1 and _ndim(a) > 2:
        b = ops.broadcast_to(b, shape_of(a)[:-2] + shape_of(b))
        return ops.reshape(solve(a, reshape(b, shape_of(b) + (1,))), shape_of(b))
    if _ndim(b) >= 2:
        batch = np.broadcast_shapes(shape_of(a)[:-2], shape_of(b)[:-2])
        if shape_of(a)[:-2] != batch:
            a = ops.broadcast_to(a, batch + shape_of(a)[-2:])
        if shape_of(b)[:-2] != batch:
            b = ops.broadcast_to(b, batch + shape_of(b)[-2:])
    return ops.solve(a, b)


@implements(np.linalg.inv)
def inv(a):
    (a,) = promote(a, float_result=True)
    n = shape_of(a)[-1]
    eye = np.broadcast_to(np.eye(n, dtype=dtype_of(a)), shape_of(a))
    return ops.solve(a, eye)


@implements(np.linalg.det)
def det(a):
    (a,) = promote(a, float_result=True)
    return ops.det(a)


@implements(np.linalg.slogdet)
def slogdet(a):
    (a,) = promote(a, float_result=True)
    sign, logabs = ops.slogdet(a)
    return sign, logabs


@implements(np.linalg.norm)
def norm(x, ord=None, axis=None, keepdims=False):
    (x,) = promote(x, float_result=True)
    nd = _ndim(x)
    if axis is None and (ord is None or ord == "fro" or nd == 1):
        axes = tuple(range(nd))
        vector = nd == 1
    else:
        axes = _axes(axis, nd)
        vector = len(axes) == 1
    if ord is None or ord == "fro" or (vector and ord == 2):
        y = ops.sqrt(sum(ops.mul(x, x), axes, keepdims=keepdims))
        return y
    absx = ops.abs(x)
    if vector:
        if ord == np.inf:
            return max(absx, axes, keepdims=keepdims)
        if ord == -np.inf:
            return min(absx, axes, keepdims=keepdims)
        if ord == 1:
            return sum(absx, axes, keepdims=keepdims)
        if ord == 0:
            raise UnsupportedError(with_location("np.linalg.norm(ord=0) has no derivative"))
        p = float(ord)
        return ops.pow(sum(ops.pow(absx, p), axes, keepdims=keepdims), 1.0 / p)
    if ord == 1:
        return max(sum(absx, axes[0], keepdims=True), axes, keepdims=keepdims)
    if ord == np.inf:
        return max(sum(absx, axes[1], keepdims=True), axes, keepdims=keepdims)
    raise UnsupportedError(with_location(
        f"np.linalg.norm(ord={ord!r}) of a matrix (it needs the SVD, not yet in gradc)"))
