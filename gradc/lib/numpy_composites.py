"""More of NumPy's surface, written as compositions of the NumPy functions gradc already
traces (slices, concatenation, reductions, contractions).  No new primitives: each
function here gets its derivative from the pieces it is made of.

Registered like the rest of the surface (``@implements``); they also run on plain arrays.
"""
from __future__ import annotations

import numpy as np

from .. import numpy_funcs as npf
from .. import numpy_linalg as npl
from .. import ops
from ..errors import ShapeError, UnsupportedError, with_location
from ..numpy_api import _axis, astype, broadcast, implements, operand, promote
from ..trace import dtype_of, shape_of


def _slice_along(x, axis, start, stop, step=1):
    index = [slice(None)] * len(shape_of(x))
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


@implements(np.diff)
def diff(a, n=1, axis=-1, prepend=None, append=None):
    a = operand(a)
    axis = _axis(axis, len(shape_of(a)))
    parts = []
    for extra in (prepend, append):
        if extra is None:
            parts.append(None)
            continue
        extra = operand(extra)
        if len(shape_of(extra)) == 0:
            shape = list(shape_of(a))
            shape[axis] = 1
            extra = npf.broadcast_to(extra, tuple(shape))
        parts.append(extra)
    pieces = [p for p in (parts[0], a, parts[1]) if p is not None]
    if len(pieces) > 1:
        a = npf.concatenate(pieces, axis=axis)
    for _ in range(n):
        a = _slice_along(a, axis, 1, None) - _slice_along(a, axis, None, -1)
    return a


@implements(np.ediff1d)
def ediff1d(ary, to_end=None, to_begin=None):
    d = diff(npf.ravel(ary))
    pieces = [npf.ravel(operand(p)) for p in (to_begin,) if p is not None] + [d] + \
        [npf.ravel(operand(p)) for p in (to_end,) if p is not None]
    return npf.concatenate(pieces) if len(pieces) > 1 else d


@implements(np.pad)
def pad(array, pad_width, mode="constant", **kwargs):
    """Constant, edge, reflect and wrap padding (the modes made of slices)."""
    x = operand(array)
    nd = len(shape_of(x))
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (nd, 2))
    if mode == "constant":
        value = kwargs.pop("constant_values", 0)
        if kwargs or np.ndim(value) != 0:
            raise UnsupportedError(with_location(
                "np.pad: only a scalar constant_values is supported on traced arrays"))
        shape = tuple(int(d + lo + hi) for d, (lo, hi) in zip(shape_of(x), widths))
        window = tuple((int(lo), int(lo + d), 1) for d, (lo, _) in zip(shape_of(x), widths))
        (x,) = promote(x)
        padded = ops.pad(x, shape, window)
        if value != 0:
            inside = ops.pad(np.ones(shape_of(x), bool), shape, window)
            padded = ops.select(inside, padded, np.asarray(value, dtype_of(x)))
        return padded
    if kwargs:
        raise UnsupportedError(with_location(f"np.pad: arguments {sorted(kwargs)}"))
    for axis, (lo, hi) in enumerate(widths):
        lo, hi = int(lo), int(hi)
        n = shape_of(x)[axis]
        if mode == "edge":
            before = [_slice_along(x, axis, 0, 1)] * lo
            after = [_slice_along(x, axis, n - 1, n)] * hi
        elif mode == "wrap":
            before = [_slice_along(x, axis, n - lo, n)] if lo else []
            after = [_slice_along(x, axis, 0, hi)] if hi else []
            if lo > n or hi > n:
                raise UnsupportedError(with_location("np.pad(mode='wrap') wider than the axis"))
        elif mode == "reflect":
            if lo >= n or hi >= n:
                raise UnsupportedError(with_location("np.pad(mode='reflect') wider than the axis"))
            before = [_slice_along(x, axis, lo, 0, -1)] if lo else []
            stop = n - 2 - hi if n - 2 - hi >= 0 else None
            after = [_slice_along(x, axis, n - 2, stop, -1)] if hi else []
        else:
            raise UnsupportedError(with_location(f"np.pad(mode={mode!r}) on traced arrays"))
        x = npf.concatenate(before + [x] + after, axis=axis)
    return x


@implements(np.array_split)
def array_split(ary, indices_or_sections, axis=0):
    x = operand(ary)
    axis = _axis(axis, len(shape_of(x)))
    n = shape_of(x)[axis]
    if np.ndim(indices_or_sections) == 0:
        sections = int(indices_or_sections)
        size, extra = divmod(n, sections)
        bounds = np.cumsum([0] + [size + 1] * extra + [size] * (sections - extra))
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    return [_slice_along(x, axis, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


@implements(np.split)
def split(ary, indices_or_sections, axis=0):
    n = shape_of(ary)[_axis(axis, len(shape_of(ary)))]
    if np.ndim(indices_or_sections) == 0 and n % int(indices_or_sections):
        raise ShapeError(with_location(
            f"np.split: an axis of length {n} does not divide into "
            f"{int(indices_or_sections)} equal sections; use np.array_split"))
    return array_split(ary, indices_or_sections, axis)


@implements(np.append)
def append(arr, values, axis=None):
    if axis is None:
        return npf.concatenate([npf.ravel(arr), npf.ravel(values)])
    return npf.concatenate([arr, values], axis=axis)


@implements(np.ptp)
def ptp(a, axis=None, out=None, keepdims=False):
    npf._no_out(out, "ptp")
    return npf.max(a, axis, keepdims=keepdims) - npf.min(a, axis, keepdims=keepdims)


@implements(np.count_nonzero)
def count_nonzero(a, axis=None, *, keepdims=False):
    return npf.sum(astype(operand(a), bool), axis, keepdims=keepdims)


@implements(np.select)
def select(condlist, choicelist, default=0):
    if len(condlist) != len(choicelist):
        raise ShapeError(with_location("np.select: condlist and choicelist differ in length"))
    out = default
    for cond, choice in reversed(list(zip(condlist, choicelist))):
        out = npf.where(cond, choice, out)
    if len(shape_of(out)) == 0 and condlist:
        target = np.broadcast_shapes(*[shape_of(c) for c in condlist])
        out = npf.broadcast_to(out, target)
    return out


@implements(np.real)
def real(val):
    val = operand(val)
    if np.issubdtype(dtype_of(val), np.complexfloating):
        raise UnsupportedError(with_location("complex arrays are not supported by gradc"))
    return val


@implements(np.imag)
def imag(val):
    return np.zeros(shape_of(val), dtype_of(real(val)))


@implements(np.cross)
def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    a, b = broadcast(*promote(a, b))
    if axis is not None or (axisa, axisb, axisc) != (-1, -1, -1) or shape_of(a)[-1] != 3:
        raise UnsupportedError(with_location(
            "np.cross: only 3-vectors along the last axis on traced arrays"))

    def comp(x, i):
        return x[..., i]

    return npf.stack([comp(a, 1) * comp(b, 2) - comp(a, 2) * comp(b, 1),
                      comp(a, 2) * comp(b, 0) - comp(a, 0) * comp(b, 2),
                      comp(a, 0) * comp(b, 1) - comp(a, 1) * comp(b, 0)], axis=-1)


@implements(np.kron)
def kron(a, b):
    a, b = promote(a, b)
    nd = max(len(shape_of(a)), len(shape_of(b)))
    a = npf.reshape(a, (1,) * (nd - len(shape_of(a))) + shape_of(a))
    b = npf.reshape(b, (1,) * (nd - len(shape_of(b))) + shape_of(b))
    # out[i*m + k] = a[i] b[k]: interleave the axes of a and b, then merge the pairs
    sa, sb = shape_of(a), shape_of(b)
    a2 = npf.reshape(a, tuple(v for d in sa for v in (d, 1)))
    b2 = npf.reshape(b, tuple(v for d in sb for v in (1, d)))
    return npf.reshape(a2 * b2, tuple(p * q for p, q in zip(sa, sb)))


@implements(np.trapezoid)
def trapezoid(y, x=None, dx=1.0, axis=-1):
    y = operand(y)
    axis = _axis(axis, len(shape_of(y)))
    mids = (_slice_along(y, axis, 1, None) + _slice_along(y, axis, None, -1)) * 0.5
    if x is None:
        return npf.sum(mids, axis=axis) * dx
    d = diff(x, axis=-1 if len(shape_of(x)) == 1 else axis)
    if len(shape_of(d)) == 1 and len(shape_of(y)) > 1:
        shape = [1] * len(shape_of(y))
        shape[axis] = shape_of(d)[0]
        d = npf.reshape(d, tuple(shape))
    return npf.sum(mids * d, axis=axis)


@implements(np.polyval)
def polyval(p, x):
    # Horner's rule over the coefficients (highest power first)
    p = operand(p)
    n = shape_of(p)[0] if len(shape_of(p)) else 1
    out = p[0] * npf.ones_like(x) if n else npf.zeros_like(x)
    for i in range(1, n):
        out = out * x + p[i]
    return out


@implements(np.linalg.multi_dot)
def multi_dot(arrays, *, out=None):
    npf._no_out(out, "linalg.multi_dot")
    result = arrays[0]
    for a in arrays[1:]:
        result = npl.dot(result, a)
    return result


@implements(np.linalg.matrix_power)
def matrix_power(a, n):
    (a,) = promote(a)
    n = int(n)
    if n < 0:
        a, n = npl.inv(a), -n
    size = shape_of(a)[-1]
    result = np.broadcast_to(np.eye(size, dtype=dtype_of(a)), shape_of(a))
    base = a
    while n:
        if n & 1:
            result = npl.matmul(result, base)
        n >>= 1
        if n:
            base = npl.matmul(base, base)
    return result


@implements(np.nan_to_num)
def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    (x,) = promote(x)
    info = np.finfo(dtype_of(x))
    posinf = info.max if posinf is None else posinf
    neginf = info.min if neginf is None else neginf
    x = npf.where(np.isnan(x), nan, x)
    return npf.where(np.isinf(x), npf.where(x > 0, posinf, neginf), x)
