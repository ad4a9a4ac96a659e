"""Indexing primitives.

* ``slice`` / ``pad``: basic strided windows, ``index`` a tuple of ``(start, stop, step)``
  per axis (Python's normalised ``slice.indices`` form; ``stop`` may be ``None`` for a
  negative step running past 0).  They are each other's transpose: ``pad`` embeds its
  operand at the window inside zeros of ``shape``.
* ``gather`` / ``scatter_add``: NumPy's general (advanced) indexing.  ``spec`` is a tuple
  with one entry per index item: ``("s", start, stop, step)`` a slice, ``("n",)`` a new
  axis, ``("i", k)`` an int, ``("a", k)`` the k-th integer index array operand.
  ``scatter_add`` accumulates duplicates (``np.add.at``), which makes it the transpose
  of ``gather``.
* ``index_set``: ``x[spec] = v`` as a value (functionalised in-place write); linear in
  ``(x, v)`` jointly.
* ``scatter_extremum``: ``np.maximum.at(x, spec, v)`` as a value (``op`` one of
  ``maximum``, ``minimum``, ``fmax``, ``fmin``), by any index, index arrays known only
  when the program runs included.  Its tangent at a position is the mean of the
  tangents of the values equal to the result there (``x``'s and each update's), the
  rule of JAX's ``x.at[i].max(v)`` and PyTorch's ``scatter_reduce(..., "amax")``.
* ``nonzero``: the indices of the True entries of a mask, with a static count (the count
  is checked by a guard when traced).
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Primitive
from ..trace import bind
from .elementwise import eq, select
from .rules import add_tangents, defzero, is_undefined, unbroadcast


def _py_slices(index):
    return tuple(slice(a, b, c) for a, b, c in index)


# ---------------------------------------------------------------- slice / pad

slice_p = Primitive("slice")
slice_p.impl = lambda x, index: np.asarray(x)[_py_slices(index)]


def _window_shape(shape, index):
    if len(index) != len(shape):
        raise ShapeError(f"slice: {len(index)} slices for an array of rank {len(shape)}")
    return tuple(len(range(*slice(a, b, c).indices(n))) for n, (a, b, c) in zip(shape, index))


slice_p.abstract = lambda x, index: [(_window_shape(x.shape, index), x.dtype)]

pad_p = Primitive("pad")


def _pad_impl(x, shape, index):
    out = np.zeros(shape, dtype=np.asarray(x).dtype)
    out[_py_slices(index)] = x
    return out


def _pad_abstract(x, shape, index):
    if _window_shape(shape, index) != tuple(x.shape):
        raise ShapeError(f"pad: operand of shape {tuple(x.shape)} does not fill the window")
    return [(tuple(shape), x.dtype)]


pad_p.impl = _pad_impl
pad_p.abstract = _pad_abstract


def _linear_unary(prim, transpose):
    def jvp(primals, tangents, **params):
        ans = prim.bind(*primals, **params)
        return ans, None if tangents[0] is None else prim.bind(tangents[0], **params)
    prim.jvp = jvp
    prim.transpose = transpose


_linear_unary(slice_p, lambda ct, x, index: [pad(ct, tuple(x.shape), index)])
_linear_unary(pad_p, lambda ct, x, shape, index: [slice_(ct, index)])


def slice_(x, index):
    index = tuple((int(a), None if b is None else int(b), int(c)) for a, b, c in index)
    full = tuple((0, n, 1) for n in np.shape(x))
    if index == full:
        return x
    return bind(slice_p, x, index=index)


def pad(x, shape, index):
    return bind(pad_p, x, shape=tuple(int(d) for d in shape), index=tuple(index))


def normalise_slice(s: slice, n: int) -> tuple:
    """``(start, stop, step)`` selecting what ``s`` selects of an axis of ``n``, as
    indices that mean the same when used again (``slice(*result)``).  ``s.indices``
    gives -1 for "before the first element" (``[-5::-2]`` of 4: empty), which as an
    index is the last element; an empty selection is ``(0, 0, step)``."""
    start, stop, step = s.indices(n)
    if not len(range(start, stop, step)):
        return (0, 0, step)
    if step < 0 and stop < 0:
        stop = None
    return (start, stop, step)


# ---------------------------------------------------------------- gather / scatter_add

def numpy_index(spec, arrays):
    out = []
    for entry in spec:
        kind = entry[0]
        if kind == "s":
            out.append(slice(*entry[1:]))
        elif kind == "n":
            out.append(None)
        elif kind == "i":
            out.append(entry[1])
        else:
            out.append(np.asarray(arrays[entry[1]]))
    return tuple(out)


def _indexed_shape(shape, spec, arrays):
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=bool), shape=tuple(shape),
                                            strides=(0,) * len(shape))
    dummies = [np.zeros(a.shape, dtype=np.int64) for a in arrays]
    try:
        return probe[numpy_index(spec, dummies)].shape
    except IndexError as e:
        raise ShapeError(f"bad index for an array of shape {tuple(shape)}: {e}") from None


gather_p = Primitive("gather")
gather_p.impl = lambda x, *idx, spec: np.asarray(x)[numpy_index(spec, idx)]
gather_p.abstract = lambda x, *idx, spec: [(_indexed_shape(x.shape, spec, idx), x.dtype)]


def _gather_jvp(primals, tangents, spec):
    x, *idx = primals
    ans = gather(x, idx, spec)
    return ans, None if tangents[0] is None else gather(tangents[0], idx, spec)


gather_p.jvp = _gather_jvp
gather_p.transpose = lambda ct, x, *idx, spec: (
    [scatter_add(ct, idx, tuple(x.shape), spec)] + [None] * len(idx))


def gather(x, idx, spec):
    return bind(gather_p, x, *idx, spec=tuple(spec))


scatter_add_p = Primitive("scatter_add")


def _scatter_add_impl(v, *idx, shape, spec):
    out = np.zeros(shape, dtype=np.asarray(v).dtype)
    np.add.at(out, numpy_index(spec, idx), v)
    return out


def _scatter_add_abstract(v, *idx, shape, spec):
    window = _indexed_shape(shape, spec, idx)
    if tuple(v.shape) != tuple(window):
        raise ShapeError(f"scatter_add: updates of shape {tuple(v.shape)} for a window of "
                         f"shape {window}")
    return [(tuple(shape), v.dtype)]


def _scatter_add_jvp(primals, tangents, shape, spec):
    v, *idx = primals
    ans = scatter_add(v, idx, shape, spec)
    return ans, None if tangents[0] is None else scatter_add(tangents[0], idx, shape, spec)


scatter_add_p.impl = _scatter_add_impl
scatter_add_p.abstract = _scatter_add_abstract
scatter_add_p.jvp = _scatter_add_jvp
scatter_add_p.transpose = lambda ct, v, *idx, shape, spec: (
    [gather(ct, idx, spec)] + [None] * len(idx))


def scatter_add(v, idx, shape, spec):
    return bind(scatter_add_p, v, *idx, shape=tuple(shape), spec=tuple(spec))


# ---------------------------------------------------------------- index_set

index_set_p = Primitive("index_set")


def _index_set_impl(x, v, *idx, spec):
    out = np.array(x, copy=True)
    out[numpy_index(spec, idx)] = v
    return out


def _index_set_abstract(x, v, *idx, spec):
    window = _indexed_shape(x.shape, spec, idx)
    if tuple(v.shape) not in ((), tuple(window)):
        raise ShapeError(f"cannot assign a value of shape {tuple(v.shape)} to a window of "
                         f"shape {tuple(window)}")
    if np.dtype(v.dtype) != np.dtype(x.dtype):
        raise DTypeError("index_set: value and array dtypes differ")
    return [(tuple(x.shape), x.dtype)]


def _index_set_jvp(primals, tangents, spec):
    from .. import ops
    x, v, *idx = primals
    tx, tv = tangents[0], tangents[1]
    ans = index_set(x, v, idx, spec)
    if tx is None and tv is None:
        return ans, None
    tx = ops.zeros_like(x) if tx is None else tx
    tv = ops.zeros_like(v) if tv is None else tv
    return ans, index_set(tx, tv, idx, spec)


def _index_set_transpose(ct, x, v, *idx, spec):
    # y = x with window W replaced by v:  ct_x = ct with W zeroed,  ct_v = ct[W] where
    # that element of v was the one written.  With repeated indices NumPy keeps one write
    # per position (the last); the overwritten elements of v have zero cotangent.
    ct_x = index_set(ct, np.zeros((), ct.dtype), idx, spec) if is_undefined(x) else None
    ct_v = None
    if is_undefined(v):
        window = gather(ct, idx, spec)
        if idx:
            window = select(_written(x.shape, idx, spec, window.shape), window,
                            np.zeros((), ct.dtype))
        ct_v = unbroadcast(window, v.shape)
    return [ct_x, ct_v] + [None] * len(idx)


def _written(shape, idx, spec, window_shape):
    """Mask over the window of ``x[spec] = v``: True where that element of the window is
    the write NumPy keeps.  Found by writing each element's position and reading back."""
    positions = np.arange(int(np.prod(window_shape, dtype=np.int64)),
                          dtype=np.int64).reshape(window_shape)
    stamped = index_set(np.full(tuple(shape), -1, np.int64), positions, idx, spec)
    return eq(gather(stamped, idx, spec), positions)


index_set_p.impl = _index_set_impl
index_set_p.abstract = _index_set_abstract
index_set_p.jvp = _index_set_jvp
index_set_p.transpose = _index_set_transpose


def index_set(x, v, idx, spec):
    return bind(index_set_p, x, v, *idx, spec=tuple(spec))


# ---------------------------------------------------------------- scatter_extremum

scatter_extremum_p = Primitive("scatter_extremum")
EXTREMA = ("maximum", "minimum", "fmax", "fmin")


def _scatter_extremum_impl(x, v, *idx, spec, op):
    out = np.array(x, copy=True)
    getattr(np, op).at(out, numpy_index(spec, idx), v)
    return out


def _scatter_extremum_abstract(x, v, *idx, spec, op):
    if op not in EXTREMA:
        raise ValueError(f"scatter_extremum: op {op!r} is not one of {EXTREMA}")
    window = _indexed_shape(x.shape, spec, idx)
    if tuple(v.shape) != tuple(window):
        raise ShapeError(f"scatter_extremum: updates of shape {tuple(v.shape)} for a "
                         f"window of shape {tuple(window)}")
    if np.dtype(v.dtype) != np.dtype(x.dtype):
        raise DTypeError("scatter_extremum: value and array dtypes differ")
    return [(tuple(x.shape), x.dtype)]


def _scatter_extremum_jvp(primals, tangents, spec, op):
    from .. import ops
    x, v, *idx = primals
    tx, tv = tangents[0], tangents[1]
    ans = scatter_extremum(x, v, idx, spec, op)
    if tx is None and tv is None:
        return ans, None
    dtype = np.dtype(x.dtype)
    kept = eq(x, ans)                           # x's own value is the result there
    won = eq(v, gather(ans, idx, spec))         # an update equal to the result
    count = ops.add(ops.convert_element_type(kept, dtype),
                    scatter_add(ops.convert_element_type(won, dtype), idx, x.shape, spec))
    count = ops.maximum(count, np.ones((), dtype))     # (nothing equals a NaN: 0)
    total = None
    if tx is not None:
        total = select(kept, tx, ops.zeros_like(tx))
    if tv is not None:
        winners = scatter_add(select(won, tv, ops.zeros_like(tv)), idx, x.shape, spec)
        total = winners if total is None else ops.add(total, winners)
    return ans, ops.div(total, count)


scatter_extremum_p.impl = _scatter_extremum_impl
scatter_extremum_p.abstract = _scatter_extremum_abstract
scatter_extremum_p.jvp = _scatter_extremum_jvp


def scatter_extremum(x, v, idx, spec, op):
    return bind(scatter_extremum_p, x, v, *idx, spec=tuple(spec), op=str(op))


# ---------------------------------------------------------------- nonzero

nonzero_p = Primitive("nonzero", multiple_results=True, checks_values=True)


def _nonzero_impl(mask, size):
    found = np.nonzero(mask)
    if found[0].shape[0] != size:
        from ..errors import GuardFailure
        raise GuardFailure(f"mask has {found[0].shape[0]} True entries, traced with {size}")
    return [f.astype(np.int64) for f in found]


nonzero_p.impl = _nonzero_impl
nonzero_p.abstract = lambda mask, size: [((size,), np.dtype(np.int64))] * len(mask.shape)
defzero(nonzero_p)


def nonzero(mask, size):
    return bind(nonzero_p, mask, size=int(size))


__all__ = ["slice_", "pad", "gather", "scatter_add", "index_set", "scatter_extremum",
           "nonzero", "numpy_index",
           "normalise_slice", "add_tangents"]
