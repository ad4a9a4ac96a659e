"""Shape primitives: reshape, broadcast_in_dim, transpose, concatenate.

All are linear; each transpose is another shape primitive (or a slice).
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Primitive
from ..trace import bind
from .rules import deflinear, is_undefined

# ---------------------------------------------------------------- reshape

reshape_p = Primitive("reshape")
reshape_p.impl = lambda x, shape: np.reshape(x, shape)


def _reshape_abstract(x, shape):
    if int(np.prod(x.shape, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise ShapeError(f"cannot reshape an array of shape {tuple(x.shape)} into shape {shape}")
    return [(tuple(shape), x.dtype)]


reshape_p.abstract = _reshape_abstract
deflinear(reshape_p, lambda ct, x, shape: [reshape(ct, tuple(x.shape))])


def reshape(x, shape):
    shape = tuple(int(d) for d in shape)
    if tuple(np.shape(x)) == shape:
        return x
    return bind(reshape_p, x, shape=shape)


# ---------------------------------------------------------------- broadcast_in_dim

broadcast_p = Primitive("broadcast_in_dim")


def _broadcast_impl(x, shape, dims):
    x = np.asarray(x)
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = x.shape[i]
    return np.broadcast_to(x.reshape(expanded), shape)


def _broadcast_abstract(x, shape, dims):
    if len(dims) != len(x.shape) or len(set(dims)) != len(dims) or list(dims) != sorted(dims) \
            or any(not 0 <= d < len(shape) for d in dims):
        raise ShapeError(f"broadcast_in_dim: bad dims {dims} for an operand of shape "
                         f"{tuple(x.shape)}")
    for i, d in enumerate(dims):
        if x.shape[i] not in (1, shape[d]):
            raise ShapeError(f"cannot broadcast shape {tuple(x.shape)} to {tuple(shape)}")
    return [(tuple(shape), x.dtype)]


def _broadcast_transpose(ct, x, shape, dims):
    # sum over the new axes and over the axes x had with size 1
    summed = tuple(d for d in range(len(shape)) if d not in dims)
    summed += tuple(d for i, d in enumerate(dims) if x.shape[i] == 1 and shape[d] != 1)
    from .reduce import reduce_sum
    out = reduce_sum(ct, axes=tuple(sorted(summed))) if summed else ct
    return [reshape(out, tuple(x.shape))]


broadcast_p.impl = _broadcast_impl
broadcast_p.abstract = _broadcast_abstract
deflinear(broadcast_p, _broadcast_transpose)


def broadcast_in_dim(x, shape, dims):
    """Place operand dim ``i`` at output dim ``dims[i]``; other output dims are new."""
    shape, dims = tuple(int(d) for d in shape), tuple(int(d) for d in dims)
    if tuple(np.shape(x)) == shape and dims == tuple(range(len(shape))):
        return x
    return bind(broadcast_p, x, shape=shape, dims=dims)


def broadcast_to(x, shape):
    """NumPy-style broadcast (trailing alignment)."""
    shape = tuple(shape)
    r = len(np.shape(x))
    if r > len(shape):
        # (an assignment's value may have more leading axes of length 1 than the window:
        # y[0] = x of shape (1, n); they go, rather than becoming negative dims)
        lead = tuple(np.shape(x))[:r - len(shape)]
        if any(d != 1 for d in lead):
            raise ShapeError(f"cannot broadcast shape {tuple(np.shape(x))} to {shape}")
        x = reshape(x, tuple(np.shape(x))[r - len(shape):])
        r = len(shape)
    return broadcast_in_dim(x, shape, tuple(range(len(shape) - r, len(shape))))


# ---------------------------------------------------------------- transpose

transpose_p = Primitive("transpose")
transpose_p.impl = lambda x, perm: np.transpose(x, perm)


def _transpose_abstract(x, perm):
    if sorted(perm) != list(range(len(x.shape))):
        raise ShapeError(f"transpose: {perm} is not a permutation of the axes of an array "
                         f"of shape {tuple(x.shape)}")
    return [(tuple(x.shape[p] for p in perm), x.dtype)]


transpose_p.abstract = _transpose_abstract
deflinear(transpose_p, lambda ct, x, perm: [transpose(ct, tuple(np.argsort(perm)))])


def transpose(x, perm):
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(len(perm))):
        return x
    return bind(transpose_p, x, perm=perm)


# ---------------------------------------------------------------- concatenate

concatenate_p = Primitive("concatenate")
concatenate_p.impl = lambda *xs, axis: np.concatenate(xs, axis=axis)


def _concatenate_abstract(*xs, axis):
    first = tuple(xs[0].shape)
    for x in xs[1:]:
        s = tuple(x.shape)
        if len(s) != len(first) or s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
            raise ShapeError("concatenate: shapes " + ", ".join(str(tuple(x.shape)) for x in xs)
                             + f" do not match outside axis {axis}")
    dtypes = {np.dtype(x.dtype) for x in xs}
    if len(dtypes) != 1:
        raise DTypeError("concatenate: operands must share a dtype")
    total = sum(x.shape[axis] for x in xs)
    return [(first[:axis] + (total,) + first[axis + 1:], xs[0].dtype)]


def _concatenate_transpose(ct, *xs, axis):
    from .index import slice_
    out, start = [], 0
    for x in xs:
        n = x.shape[axis]
        if is_undefined(x):
            index = tuple((0, d, 1) if i != axis else (start, start + n, 1)
                          for i, d in enumerate(ct.shape))
            out.append(slice_(ct, index))
        else:
            out.append(None)
        start += n
    return out


concatenate_p.abstract = _concatenate_abstract
deflinear(concatenate_p, _concatenate_transpose)


def concatenate(xs, axis=0):
    xs = list(xs)
    if len(xs) == 1:
        return xs[0]
    return bind(concatenate_p, *xs, axis=int(axis))
