"""Reductions and scans: reduce_sum, reduce_max, reduce_min, reduce_prod, argmax, argmin,
cumsum.  ``axes`` is a sorted tuple of the reduced axes; reduced axes are removed from the
output (``keepdims`` is a reshape in the NumPy layer).
"""
from __future__ import annotations

import operator

import numpy as np

from ..errors import ArgumentError, DTypeError, ShapeError, with_location
from ..ir import Primitive
from ..trace import Tracer, bind
from .rules import deflinear, defzero


def _reduce_abstract(x, axes):
    for a in axes:
        if not 0 <= a < len(x.shape):
            raise ShapeError(f"axis {a} is out of bounds for an array of shape {tuple(x.shape)}")
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [(shape, x.dtype)]


def _kept_dims(ndim, axes):
    return tuple(i for i in range(ndim) if i not in axes)


def _expand(y, x_shape, axes):
    """Broadcast a reduced value back over the reduced axes of ``x_shape``."""
    from .shape import broadcast_in_dim
    return broadcast_in_dim(y, tuple(x_shape), _kept_dims(len(x_shape), axes))


def axis_index(axis) -> int:
    """``axis`` as NumPy takes one (``operator.index``: a Python or NumPy integer, not a
    bool, float, string or traced array, which ``int()`` would quietly convert)."""
    if not isinstance(axis, (bool, np.bool_, Tracer)):
        try:
            return operator.index(axis)
        except TypeError:
            pass
    got = (f"a traced array, {axis!r} (an axis is a static integer)"
           if isinstance(axis, Tracer) else f"{axis!r} of type {type(axis).__name__}")
    raise ArgumentError(with_location(
        f"axis must be an integer or a tuple of integers (as in NumPy), got {got}"))


def _normalise_axes(axes, ndim):
    if axes is None:
        return tuple(range(ndim))
    if not isinstance(axes, (tuple, list)) and np.ndim(axes) == 0:
        axes = (axes,)
    out = []
    for a in axes:
        a = axis_index(a)
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


# ---------------------------------------------------------------- sum

reduce_sum_p = Primitive("reduce_sum")
reduce_sum_p.impl = lambda x, axes: np.sum(x, axis=axes, dtype=x.dtype)   # (no widening)
reduce_sum_p.abstract = _reduce_abstract
deflinear(reduce_sum_p, lambda ct, x, axes: [_expand(ct, x.shape, axes)])


def reduce_sum(x, axes=None):
    axes = _normalise_axes(axes, len(np.shape(x)))
    if not axes:
        return x
    return bind(reduce_sum_p, x, axes=axes)


# ---------------------------------------------------------------- max / min

def _extremum_jvp(prim):
    # The tangent flows from the arg-extremal elements, shared equally among ties.
    def jvp(primals, tangents, axes):
        from . import elementwise as ew
        (x,), (t,) = primals, tangents
        ans = prim.bind(x, axes=axes)
        if t is None:
            return ans, None
        hit = ew.convert_element_type(ew.eq(x, _expand(ans, x.shape, axes)), x.dtype)
        count = reduce_sum(hit, axes)
        return ans, ew.div(reduce_sum(ew.mul(t, hit), axes), count)
    return jvp


reduce_max_p = Primitive("reduce_max")
reduce_max_p.impl = lambda x, axes: np.max(x, axis=axes)
reduce_max_p.abstract = _reduce_abstract
reduce_max_p.jvp = _extremum_jvp(reduce_max_p)

reduce_min_p = Primitive("reduce_min")
reduce_min_p.impl = lambda x, axes: np.min(x, axis=axes)
reduce_min_p.abstract = _reduce_abstract
reduce_min_p.jvp = _extremum_jvp(reduce_min_p)


def reduce_max(x, axes=None):
    axes = _normalise_axes(axes, len(np.shape(x)))
    return bind(reduce_max_p, x, axes=axes) if axes else x


def reduce_min(x, axes=None):
    axes = _normalise_axes(axes, len(np.shape(x)))
    return bind(reduce_min_p, x, axes=axes) if axes else x


# ---------------------------------------------------------------- prod

reduce_prod_p = Primitive("reduce_prod")
reduce_prod_p.impl = lambda x, axes: np.prod(x, axis=axes, dtype=x.dtype)
reduce_prod_p.abstract = _reduce_abstract


def _prod_jvp(primals, tangents, axes):
    # d prod(x) = sum_i t_i prod_{j != i} x_j.  The products of the others are formed
    # exactly (no division, so zeros in x are fine) from an n×n table whose diagonal is
    # replaced by ones: O(n²) work in the length n of the reduced axes.
    from . import elementwise as ew
    from .shape import broadcast_in_dim, reshape, transpose
    (x,), (t,) = primals, tangents
    ans = reduce_prod(x, axes)
    if t is None:
        return ans, None
    kept = _kept_dims(len(x.shape), axes)
    perm = kept + axes
    lead = tuple(x.shape[i] for i in kept)
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    xf = reshape(transpose(x, perm), lead + (n,))
    tf = reshape(transpose(t, perm), lead + (n,))
    table = broadcast_in_dim(xf, lead + (n, n), tuple(range(len(lead))) + (len(lead) + 1,))
    eye = np.broadcast_to(np.eye(n, dtype=bool), lead + (n, n))
    others = reduce_prod(ew.select(eye, np.ones((), x.dtype), table), (len(lead) + 1,))
    return ans, reduce_sum(ew.mul(tf, others), (len(lead),))


reduce_prod_p.jvp = _prod_jvp


def reduce_prod(x, axes=None):
    axes = _normalise_axes(axes, len(np.shape(x)))
    return bind(reduce_prod_p, x, axes=axes) if axes else x


# ---------------------------------------------------------------- argmax / argmin

def _arg_abstract(x, axis):
    if not 0 <= axis < len(x.shape):
        raise ShapeError(f"axis {axis} is out of bounds for an array of shape {tuple(x.shape)}")
    return [(tuple(d for i, d in enumerate(x.shape) if i != axis), np.dtype(np.int64))]


argmax_p = Primitive("argmax")
argmax_p.impl = lambda x, axis: np.argmax(x, axis=axis).astype(np.int64)
argmax_p.abstract = _arg_abstract
defzero(argmax_p)

argmin_p = Primitive("argmin")
argmin_p.impl = lambda x, axis: np.argmin(x, axis=axis).astype(np.int64)
argmin_p.abstract = _arg_abstract
defzero(argmin_p)


def _normalise_axis(axis, ndim):
    (axis,) = _normalise_axes(axis, ndim)
    return axis


def argmax(x, axis):
    return bind(argmax_p, x, axis=_normalise_axis(axis, len(np.shape(x))))


def argmin(x, axis):
    return bind(argmin_p, x, axis=_normalise_axis(axis, len(np.shape(x))))


# ---------------------------------------------------------------- argsort

def _argsort_abstract(x, axis):
    if not 0 <= axis < len(x.shape):
        raise ShapeError(f"axis {axis} is out of bounds for an array of shape {tuple(x.shape)}")
    if np.dtype(x.dtype).kind == "c":
        raise DTypeError("argsort of complex arrays is not supported by gradc")
    return [(tuple(x.shape), np.dtype(np.int64))]


# a stable sort: ties keep their order, NaNs go last (NumPy's order for every kind;
# NumPy's default kind is not stable, so its order among equal elements may differ)
argsort_p = Primitive("argsort")
argsort_p.impl = lambda x, axis: np.argsort(x, axis=axis, kind="stable").astype(np.int64)
argsort_p.abstract = _argsort_abstract
defzero(argsort_p)


def argsort(x, axis):
    return bind(argsort_p, x, axis=_normalise_axis(axis, len(np.shape(x))))


# ---------------------------------------------------------------- searchsorted

def _searchsorted_abstract(a, v, side):
    if len(a.shape) != 1:
        raise ShapeError(f"searchsorted: the sorted array must be 1-D, got shape "
                         f"{tuple(a.shape)}")
    if np.dtype(a.dtype) != np.dtype(v.dtype) or np.dtype(a.dtype).kind == "c":
        raise DTypeError(f"searchsorted: operands must have one real dtype, got "
                         f"{np.dtype(a.dtype)} and {np.dtype(v.dtype)}")
    if side not in ("left", "right"):
        raise ValueError(f"searchsorted: side must be 'left' or 'right', got {side!r}")
    return [(tuple(v.shape), np.dtype(np.int64))]


# where each v would go into the sorted 1-D a to keep it sorted: the first such place
# (side="left") or the last; NaNs count as larger than everything (NumPy's order)
searchsorted_p = Primitive("searchsorted")
searchsorted_p.impl = lambda a, v, side: np.asarray(
    np.searchsorted(a, v, side=side), np.int64)
searchsorted_p.abstract = _searchsorted_abstract
defzero(searchsorted_p)


def searchsorted(a, v, side="left"):
    return bind(searchsorted_p, a, v, side=side)


# ---------------------------------------------------------------- cumsum

cumsum_p = Primitive("cumsum")


def _cumsum_impl(x, axis, reverse):
    # (in the operand's dtype: np.cumsum's widening of small integers is the tracer's)
    if reverse:
        return np.flip(np.cumsum(np.flip(x, axis), axis=axis, dtype=x.dtype), axis)
    return np.cumsum(x, axis=axis, dtype=x.dtype)


def _cumsum_abstract(x, axis, reverse):
    if not 0 <= axis < len(x.shape):
        raise ShapeError(f"axis {axis} is out of bounds for an array of shape {tuple(x.shape)}")
    if np.dtype(x.dtype) == np.dtype(bool):
        raise DTypeError("cumsum of booleans: convert them to integers first (np.cumsum "
                         "does: gradc.numpy_funcs.cumsum)")
    return [(tuple(x.shape), np.dtype(x.dtype))]


cumsum_p.impl = _cumsum_impl
cumsum_p.abstract = _cumsum_abstract
# the transpose of a prefix sum is a suffix sum
deflinear(cumsum_p, lambda ct, x, axis, reverse: [cumsum(ct, axis, not reverse)])


def cumsum(x, axis, reverse=False):
    return bind(cumsum_p, x, axis=_normalise_axis(axis, len(np.shape(x))),
                reverse=bool(reverse))
