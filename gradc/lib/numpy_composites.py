"""More of NumPy's surface, written as compositions of the NumPy functions gradc already
traces (slices, concatenation, reductions, contractions).  No new primitives: each
function here gets its derivative from the pieces it is made of.

Registered like the rest of the surface (``@implements``); they also run on plain arrays.
"""
from __future__ import annotations

import builtins
import operator
import warnings

import numpy as np

from .. import numpy_funcs as npf
from .. import numpy_linalg as npl
from .. import ops
from ..errors import (ArgumentError, DTypeError, InvalidValueError, ShapeError, UnsupportedError,
                      with_location)
from ..numpy_api import _axis, astype, broadcast, implements, operand, promote
from ..prims.reduce import axis_index
from ..trace import Tracer, checkable, dtype_of, shape_of


def _slice_along(x, axis, start, stop, step=1):
    index = [slice(None)] * len(shape_of(x))
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


@implements(np.diff)
def diff(a, n=1, axis=-1, prepend=None, append=None):
    if n < 0:
        raise InvalidValueError(with_location(
            f"np.diff: order must be non-negative but got {n} (NumPy's ValueError)"))
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
        later, earlier = _slice_along(a, axis, 1, None), _slice_along(a, axis, None, -1)
        # (of booleans NumPy takes !=, as it refuses to subtract them)
        a = later != earlier if dtype_of(a) == np.dtype(bool) else later - earlier
    return a


@implements(np.ediff1d)
def ediff1d(ary, to_end=None, to_begin=None):
    d = diff(npf.ravel(ary))
    pieces = [npf.ravel(operand(p)) for p in (to_begin,) if p is not None] + [d] + \
        [npf.ravel(operand(p)) for p in (to_end,) if p is not None]
    return npf.concatenate(pieces) if len(pieces) > 1 else d


@implements(np.pad)
def pad(array, pad_width, mode="constant", **kwargs):
    """Constant, edge, reflect, symmetric and wrap padding (the modes that copy
    elements: slices, or, where the padding is wider than the axis or mirrors it with
    its edge, a gather of the positions NumPy's own ``pad`` gives ``arange(n)``)."""
    x = operand(array)
    nd = len(shape_of(x))
    try:
        widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (nd, 2))
    except (TypeError, ValueError):
        raise ShapeError(with_location(
            f"np.pad: pad_width {pad_width!r} does not fit an array of dimension {nd}: give "
            "one (before, after) pair per axis, one pair for all, or one number")) from None
    if mode == "constant":
        value = kwargs.pop("constant_values", 0)
        if kwargs or np.ndim(value) != 0:
            raise UnsupportedError(with_location(
                "np.pad: only a scalar constant_values is supported on traced arrays"))
        shape = tuple(int(d + lo + hi) for d, (lo, hi) in zip(shape_of(x), widths))
        window = tuple((int(lo), int(lo + d), 1) for d, (lo, _) in zip(shape_of(x), widths))
        (x,) = promote(x)
        padded = ops.pad(x, shape, window)
        traced = isinstance(value, Tracer)      # (a learned padding value: a select)
        if traced or value != 0:
            inside = ops.pad(np.ones(shape_of(x), bool), shape, window)
            fill = astype(value, dtype_of(x)) if traced else np.asarray(value, dtype_of(x))
            padded = ops.select(inside, padded, fill)
        return padded
    if kwargs:
        raise UnsupportedError(with_location(f"np.pad: arguments {sorted(kwargs)}"))
    for axis, (lo, hi) in enumerate(widths):
        lo, hi = int(lo), int(hi)
        n = shape_of(x)[axis]
        if mode == "symmetric" and (lo or hi) or mode == "wrap" and (lo > n or hi > n) or \
                mode == "reflect" and (lo >= n or hi >= n):
            if n == 0:
                raise ShapeError(with_location(f"np.pad(mode={mode!r}) of an empty axis"))
            x = npf.take(x, np.pad(np.arange(n), (lo, hi), mode=mode), axis=axis)
            continue
        if mode == "edge":
            before = [_slice_along(x, axis, 0, 1)] * lo
            after = [_slice_along(x, axis, n - 1, n)] * hi
        elif mode == "wrap":
            before = [_slice_along(x, axis, n - lo, n)] if lo else []
            after = [_slice_along(x, axis, 0, hi)] if hi else []
        elif mode == "reflect":
            before = [_slice_along(x, axis, lo, 0, -1)] if lo else []
            stop = n - 2 - hi if n - 2 - hi >= 0 else None
            after = [_slice_along(x, axis, n - 2, stop, -1)] if hi else []
        elif mode == "symmetric":
            continue                                    # (no padding on this axis)
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


_RANK_WARNING = getattr(getattr(np, "exceptions", np), "RankWarning", UserWarning)


@implements(np.polyfit)
def polyfit(x, y, deg, rcond=None, full=False, w=None, cov=False):
    """NumPy's least-squares fit: the Vandermonde matrix, weighted, its columns scaled to
    unit norm, solved by ``np.linalg.lstsq`` (here through the SVD, where NumPy calls
    LAPACK's ``gelsd``: equal up to rounding).  The ``RankWarning`` of a rank-deficient
    fit is raised when gradc traces it (the rank is guarded: a call of another rank is
    traced again), so it shows once per rank, not on every call; not inside ``vmap``."""
    order = int(deg) + 1
    x, y = operand(x) + 0.0, operand(y) + 0.0
    if deg < 0:
        raise InvalidValueError(with_location("np.polyfit: expected deg >= 0"))
    # (NumPy raises TypeError for these)
    if len(shape_of(x)) != 1 or not shape_of(x)[0]:
        raise ArgumentError(with_location(f"np.polyfit: expected a non-empty 1-D x, got "
                                          f"shape {shape_of(x)}"))
    if len(shape_of(y)) not in (1, 2) or shape_of(y)[0] != shape_of(x)[0]:
        raise ArgumentError(with_location(f"np.polyfit: expected y of shape "
                                          f"({shape_of(x)[0]},) or ({shape_of(x)[0]}, k), got "
                                          f"{shape_of(y)}"))
    if rcond is None:
        rcond = shape_of(x)[0] * np.finfo(dtype_of(x)).eps
    lhs, rhs = vander(x, order), y
    if w is not None:
        w = operand(w) + 0.0
        if shape_of(w) != shape_of(x):
            raise ArgumentError(with_location(f"np.polyfit: expected weights w of shape "
                                              f"{shape_of(x)}, got {shape_of(w)}"))
        lhs = lhs * w[:, None]
        rhs = rhs * (w[:, None] if len(shape_of(rhs)) == 2 else w)
    scale = np.sqrt(npf.sum(lhs * lhs, axis=0))
    lhs = lhs / scale
    c, resids, rank, s = npl.lstsq(lhs, rhs, rcond)
    c = (c.T / scale).T
    if full:
        return c, resids, rank, s, rcond
    if checkable(rank) and bool(rank != order):      # (a guard: see the docstring)
        warnings.warn(_RANK_WARNING(with_location("Polyfit may be poorly conditioned")),
                      stacklevel=2)
    if not cov:
        return c
    base = npl.inv(npl.dot(lhs.T, lhs)) / npl.outer(scale, scale)
    if cov == "unscaled":
        fac = 1.0
    else:
        if shape_of(x)[0] <= order:
            raise InvalidValueError(with_location("np.polyfit: the number of data points must "
                                              "exceed order to scale the covariance matrix"))
        fac = resids / (shape_of(x)[0] - order)
    return c, (base * fac if len(shape_of(y)) == 1 else base[:, :, None] * fac)


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


# ---------------------------------------------------------------- NaN-ignoring reductions
# A NaN is replaced before any arithmetic touches it (0 for sums, 1 for products, -inf or
# inf for extrema), so that its derivative is 0 rather than 0 * NaN.

def _nan_filled(a, fill):
    (a,) = promote(a)
    if not np.issubdtype(dtype_of(a), np.inexact):
        return a, None
    missing = np.isnan(a)
    return npf.where(missing, np.asarray(fill, dtype_of(a)), a), missing


@implements(np.nansum)
def nansum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    npf._no_out(out, "nansum")
    a, _ = _nan_filled(a, 0)
    return npf.sum(a, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.nanprod)
def nanprod(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    npf._no_out(out, "nanprod")
    a, _ = _nan_filled(a, 1)
    return npf.prod(a, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.nancumsum)
def nancumsum(a, axis=None, dtype=None, out=None):
    npf._no_out(out, "nancumsum")
    a, _ = _nan_filled(a, 0)
    return npf.cumsum(a, axis, dtype=dtype)


def _count(a, missing, axis, keepdims):
    present = npf.ones_like(a, dtype=bool) if missing is None else ~missing
    return npf.sum(present, axis, keepdims=keepdims)


@implements(np.nanmean)
def nanmean(a, axis=None, dtype=None, out=None, keepdims=False):
    """An all-NaN line gives NaN (0 / 0), as NumPy's (which also warns)."""
    npf._no_out(out, "nanmean")
    (a,) = promote(a, float_result=True)
    filled, missing = _nan_filled(a, 0)
    total = npf.sum(filled, axis, dtype=dtype, keepdims=keepdims)
    return total / astype(_count(a, missing, axis, keepdims), dtype_of(total))


@implements(np.nanvar)
def nanvar(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    npf._no_out(out, "nanvar")
    (a,) = promote(a, float_result=True)
    filled, missing = _nan_filled(a, 0)
    mean = nanmean(a, axis, keepdims=True)
    centred = npf.where(missing, np.zeros((), dtype_of(a)), filled - mean)
    count = astype(_count(a, missing, axis, keepdims), dtype_of(a))
    # NumPy gives NaN where count <= ddof; the division there is by 1, so that its
    # derivative (0 / 0 otherwise) does not put NaN in the gradient of the other entries
    bad = count <= ddof
    dof = npf.where(bad, np.ones((), dtype_of(a)), count - ddof)
    return npf.where(bad, np.full((), np.nan, dtype_of(a)),
                     npf.sum(centred * centred, axis, keepdims=keepdims) / dof)


@implements(np.nanstd)
def nanstd(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    return np.sqrt(nanvar(a, axis, dtype, out, ddof, keepdims))


def _nan_extremum(name, fill):
    reduce = getattr(npf, name)

    def apply(a, axis=None, out=None, keepdims=False, initial=None, where=None):
        npf._no_out(out, f"nan{name}")
        filled, missing = _nan_filled(a, fill)
        kw = {} if initial is None and where is None else dict(initial=initial, where=where)
        result = reduce(filled, axis, keepdims=keepdims, **kw)
        if missing is None:
            return result
        # a line of NaNs only: NaN, as NumPy's (which also warns)
        empty = npf.all(missing, axis, keepdims=keepdims)
        return npf.where(empty, np.asarray(np.nan, dtype_of(result)), result)
    apply.__name__ = f"nan{name}"
    return apply


nanmax = implements(np.nanmax)(_nan_extremum("max", -np.inf))
nanmin = implements(np.nanmin)(_nan_extremum("min", np.inf))


def _nan_arg(name, fill):
    def apply(a, axis=None, out=None, *, keepdims=False):
        """An all-NaN line raises, as in NumPy: whether one is there is guarded (a guard
        holds while no line is all NaN).  Where the values are not known when tracing
        (a loop body, ``vmap``: ``trace.checkable``) such a line gives -1 instead."""
        npf._no_out(out, f"nanarg{name}")
        filled, missing = _nan_filled(a, fill)
        index = getattr(np, f"arg{name}")(filled, axis, keepdims=keepdims)
        if missing is None:
            return index
        empty = npf.all(missing, axis, keepdims=keepdims)
        some = npf.any(empty)
        if checkable(some) and _holds(some):
            raise InvalidValueError(with_location(
                f"np.nanarg{name}: All-NaN slice encountered"))
        return npf.where(empty, np.int64(-1), index)
    apply.__name__ = f"nanarg{name}"
    return apply


nanargmax = implements(np.nanargmax)(_nan_arg("max", -np.inf))
nanargmin = implements(np.nanargmin)(_nan_arg("min", np.inf))


def _nan_quantile(a, q, axis, method, keepdims, name):
    """Quantiles of the numbers of each line (``method="median"``: the mean of the middle
    two): sorted, NaNs come last, so the positions read depend on the line's count of
    numbers (data, so gathered per line); a line of NaNs only gives NaN."""
    if method == "median":
        q, q_dtype = np.asarray(0.5), None
    else:
        q, q_dtype = npf._check_q(q, method, name)
    picking = method in npf._PICKING
    s, kept, axes, n = npf._sorted_lines(a, axis, q_dtype, to_float=not picking)
    if not np.issubdtype(dtype_of(s), np.inexact):       # (no NaNs: NumPy's quantile)
        return npf._quantile(a, q, axis, method, keepdims, name)
    dt = dtype_of(s)
    count = npf.sum(~np.isnan(s), axis=-1, keepdims=True)               # (kept..., 1)
    last = np.maximum(count - 1, 0)
    qs = q.reshape((1,) * len(kept) + (q.size,)).astype(dt)
    virtual = qs * astype(last, dt)                                       # (kept..., Q)
    lo = np.floor(virtual)

    def at(index):
        return npf.take_along_axis(s, astype(index, np.int64), -1)
    if method == "median":
        below, above = at(lo), at(np.ceil(virtual))
        value = npf.where(lo == np.ceil(virtual), below, (below + above) / 2.0)
    elif picking:
        value = at({"lower": lo, "higher": np.ceil(virtual),
                    "nearest": np.rint(virtual)}[method])
    else:
        t = virtual - lo
        if method == "midpoint":
            t = npf.where(t == 0, t, np.asarray(0.5, dt))
        value = npf._blend(at(lo), at(np.minimum(lo + 1, astype(last, dt))), t)
    value = npf.where(count == 0, np.asarray(np.nan, dt), value)      # only NaNs: NaN
    return npf.quantile_layout(value, a, kept, axes, q, keepdims)


nanquantile = npf.quantile_function("nanquantile", _nan_quantile, percent=False)
nanpercentile = npf.quantile_function("nanpercentile", _nan_quantile, percent=True)


@implements(np.nanmedian)
def nanmedian(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    npf._no_out(out, "nanmedian")
    return _nan_quantile(a, 0.5, axis, "median", keepdims, "nanmedian")


# ---------------------------------------------------------------- more ufuncs

def _negative_sign(x):
    """Whether x's sign bit is set, for the numbers arithmetic can see: x < 0, or a
    negative zero (1 / -0.0 is -inf).  (A NaN's sign bit is invisible to arithmetic.)"""
    zero = np.zeros((), dtype_of(x))
    return (x < zero) | ((x == zero) & (np.true_divide(1.0, x) < zero))


@implements(np.copysign)
def copysign(x1, x2):
    """|x1| with the sign of x2 (a NaN x2 counts as positive)."""
    x1, x2 = broadcast(*promote(x1, x2, float_result=True))
    return npf.where(_negative_sign(x2), -np.abs(x1), np.abs(x1))


@implements(np.fmod)
def fmod(x1, x2):
    """C's remainder (x1's sign), exact: its own primitive."""
    x1, x2 = broadcast(*promote(x1, x2))
    if dtype_of(x1) == np.dtype(bool):
        x1, x2 = astype(x1, np.int8), astype(x2, np.int8)
    return ops.fmod(x1, x2)


@implements(np.modf)
def modf(x):
    """(fractional part, integral part), both with x's sign; ±inf gives (±0, ±inf)."""
    (x,) = promote(x, float_result=True)
    whole = np.trunc(x)
    frac = npf.where(np.isinf(x), np.zeros((), dtype_of(x)), x - whole)
    return copysign(frac, x), whole


@implements(np.ldexp)
def ldexp(x1, x2):
    """x1 · 2^x2, the power split in two so that neither half overflows on its own."""
    (x1,) = promote(x1, float_result=True)
    x2 = operand(x2)
    if not np.issubdtype(dtype_of(x2), np.integer):
        raise ShapeError(with_location("np.ldexp: the exponent must be an integer array"))
    half = x2 // 2
    two = np.asarray(2.0, dtype_of(x1))
    return x1 * np.power(two, astype(half, dtype_of(x1))) * \
        np.power(two, astype(x2 - half, dtype_of(x1)))


# ---------------------------------------------------------------- arrangement

@implements(np.rot90)
def rot90(m, k=1, axes=(0, 1)):
    m = operand(m)
    nd = len(shape_of(m))
    if len(axes) != 2 or _axis(axes[0], nd) == _axis(axes[1], nd):
        raise ShapeError(with_location("np.rot90: axes must be two different axes"))
    a0, a1 = _axis(axes[0], nd), _axis(axes[1], nd)
    k %= 4
    if k == 0:
        return m
    if k == 2:
        return npf.flip(npf.flip(m, a0), a1)
    perm = list(range(nd))
    perm[a0], perm[a1] = perm[a1], perm[a0]
    if k == 1:
        return npf.transpose(npf.flip(m, a1), perm)
    return npf.flip(npf.transpose(m, perm), a1)


@implements(np.meshgrid)
def meshgrid(*xi, copy=True, sparse=False, indexing="xy"):
    if indexing not in ("xy", "ij"):
        raise ArgumentError(with_location("np.meshgrid: indexing must be 'xy' or 'ij'"))
    xs = [npf.ravel(operand(x)) for x in xi]
    n = len(xs)
    shapes = [[1] * n for _ in xs]
    for i, x in enumerate(xs):
        shapes[i][i] = shape_of(x)[0]
    if indexing == "xy" and n > 1:
        for s in shapes:
            s[0], s[1] = s[1], s[0]
    out = [npf.reshape(x, tuple(s)) for x, s in zip(xs, shapes)]
    if sparse:
        return tuple(out)
    full = np.broadcast_shapes(*[tuple(s) for s in shapes])
    if not copy:            # (NumPy's broadcast_arrays: views of the inputs)
        return tuple(_broadcast_view(x, full, "np.meshgrid(copy=False)") for x in out)
    return tuple(npf.broadcast_to(x, full) for x in out)


# ---------------------------------------------------------------- statistics

@implements(np.cov)
def cov(m, y=None, rowvar=True, bias=False, ddof=None, fweights=None, aweights=None, *,
        dtype=None):
    if fweights is not None or aweights is not None:
        raise UnsupportedError(with_location("np.cov with weights on traced arrays"))
    (m,) = promote(m, float_result=True)
    if len(shape_of(m)) > 2:
        raise ShapeError(with_location("np.cov: m has more than 2 dimensions"))
    x = npf.reshape(m, (1, -1)) if len(shape_of(m)) < 2 else m
    if not rowvar and len(shape_of(m)) == 2:
        x = x.T
    if y is not None:
        (y,) = promote(y, float_result=True)
        y = npf.reshape(y, (1, -1)) if len(shape_of(y)) < 2 else y
        if not rowvar and len(shape_of(y)) == 2:
            y = y.T
        x = npf.concatenate(promote(x, y), axis=0)
    # (NumPy computes in float64 at least unless told the dtype: float32 in, float64 out)
    x = astype(x, np.result_type(dtype_of(x), np.float64) if dtype is None else dtype)
    ddof = (0 if bias else 1) if ddof is None else ddof
    n = shape_of(x)[1]
    centred = x - npf.mean(x, axis=1, keepdims=True)
    c = npl.matmul(centred, centred.T) / float(builtins.max(n - ddof, 0))   # (as NumPy)
    return npf.reshape(c, ()) if shape_of(c) == (1, 1) else c


@implements(np.corrcoef)
def corrcoef(x, y=None, rowvar=True, *, dtype=None):
    c = cov(x, y, rowvar, dtype=dtype)
    if len(shape_of(c)) == 0:
        return c / c
    d = np.sqrt(npf.diagonal(c))
    c = c / d[:, None] / d[None, :]
    return npf.clip(c, -1, 1)


@implements(np.gradient)
def gradient(f, *varargs, axis=None, edge_order=1):
    """Central differences inside, one-sided ones (first or second order) at the ends,
    for uniform spacings (scalars)."""
    f = operand(f)
    if not np.issubdtype(dtype_of(f), np.inexact):
        f = astype(f, np.float64)
    nd = len(shape_of(f))
    axes = list(range(nd)) if axis is None else \
        [_axis(a, nd) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))]
    if len(varargs) == 0:
        spacing = [1.0] * len(axes)
    elif len(varargs) == 1:
        spacing = list(varargs) * len(axes)
    else:
        spacing = list(varargs)
    if len(spacing) != len(axes) or any(np.ndim(h) != 0 or isinstance(h, npf.Tracer)
                                        for h in spacing):
        raise UnsupportedError(with_location(
            "np.gradient: one constant scalar spacing per axis on traced arrays"))
    if edge_order not in (1, 2):
        raise ArgumentError(with_location("np.gradient: edge_order must be 1 or 2"))
    out = []
    for ax, h in zip(axes, spacing):
        n = shape_of(f)[ax]
        if n < edge_order + 1:
            raise ShapeError(with_location("np.gradient: an axis has too few elements for "
                                           "this edge order"))
        h = float(h)
        inner = (_slice_along(f, ax, 2, None) - _slice_along(f, ax, None, -2)) / (2 * h)
        if edge_order == 1:
            first = (_slice_along(f, ax, 1, 2) - _slice_along(f, ax, 0, 1)) / h
            last = (_slice_along(f, ax, n - 1, n) - _slice_along(f, ax, n - 2, n - 1)) / h
        else:
            first = (-1.5 * _slice_along(f, ax, 0, 1) + 2.0 * _slice_along(f, ax, 1, 2)
                     - 0.5 * _slice_along(f, ax, 2, 3)) / h
            last = (0.5 * _slice_along(f, ax, n - 3, n - 2)
                    - 2.0 * _slice_along(f, ax, n - 2, n - 1)
                    + 1.5 * _slice_along(f, ax, n - 1, n)) / h
        out.append(npf.concatenate([first, inner, last], axis=ax))
    return out[0] if len(out) == 1 else tuple(out)


# ---------------------------------------------------------------- 1-D convolution

def _full_convolution(a, v):
    """Σ_j a[j] v[k - j] for every k: windows of a zero-padded a (one gather) times v
    reversed."""
    n, m = shape_of(a)[0], shape_of(v)[0]
    padded = pad(a, (m - 1, m - 1))
    windows = padded[np.arange(n + m - 1)[:, None] + np.arange(m)[None, :]]
    return npl.matmul(windows, v[::-1])


def _convolution(a, v, mode, name):
    a, v = promote(a, v)
    if len(shape_of(a)) != 1 or len(shape_of(v)) != 1:
        raise ShapeError(with_location(f"np.{name}: a and v must be 1-D"))
    n, m = shape_of(a)[0], shape_of(v)[0]
    if n == 0 or m == 0:
        raise ShapeError(with_location(f"np.{name}: a and v must not be empty"))
    full = _full_convolution(a, v) if n >= m else _full_convolution(v, a)
    short, long = min(n, m), max(n, m)
    if mode == "full":
        return full
    if mode == "same":
        start = (short - 1) // 2
        return full[start:start + long]
    if mode == "valid":
        return full[short - 1:long]
    raise ArgumentError(with_location(f"np.{name}: mode must be 'full', 'same' or 'valid', "
                                      f"got {mode!r}"))


@implements(np.convolve)
def convolve(a, v, mode="full"):
    return _convolution(a, v, mode, "convolve")


@implements(np.correlate)
def correlate(a, v, mode="valid"):
    """Σ_n a[n + k] v[n] (real arrays): a convolution with v reversed."""
    return _convolution(a, operand(v)[::-1], mode, "correlate")


# ---------------------------------------------------------------- sliding windows

@implements(np.lib.stride_tricks.sliding_window_view)
def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    """NumPy's windows, ``out[i..., w...] = x[j...]`` with ``j[a] = i[a] + Σ w[k]`` over
    the k whose ``axis[k]`` is a (an axis may be windowed more than once, as in NumPy);
    shape ``x.shape`` with each windowed axis n cut to n - w + 1, then ``window_shape``.
    One gather, every axis indexed by a small broadcast array (its transpose a
    scatter_add: differentiable).  A read-only view, as NumPy's: writes to x reach the
    windows, writes to the windows are refused; ``writeable=True`` (writing through the
    windows into x, each element held by several windows) is refused too."""
    if writeable:
        raise UnsupportedError(with_location(
            "np.lib.stride_tricks.sliding_window_view(writeable=True): gradc does not trace "
            "writes through the windows into x (each element is in several windows); build "
            "the new array instead"))
    x = operand(x)
    windows = _windows(x, window_shape, axis)
    if isinstance(x, Tracer) and isinstance(windows, Tracer):
        windows = windows.read_only_view_of(
            x, "np.lib.stride_tricks.sliding_window_view",
            lambda b: _windows(b, window_shape, axis))
    return windows


def _windows(x, window_shape, axis):
    """sliding_window_view's windows of x, a new array."""
    shape = tuple(shape_of(x))
    ndim = len(shape)
    windows = tuple(window_shape) if np.iterable(window_shape) else (window_shape,)
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool)
               for w in windows):
        raise ArgumentError(with_location(
            f"sliding_window_view: window_shape must be ints; got {window_shape!r}"))
    if any(w < 0 for w in windows):
        raise ShapeError(with_location(
            f"sliding_window_view: window_shape cannot contain negative values; got "
            f"{window_shape!r}"))
    if axis is None:
        if len(windows) != ndim:
            raise ShapeError(with_location(
                f"sliding_window_view: since axis is None, window_shape needs a size for "
                f"every axis of x; got {len(windows)} sizes and x.ndim is {ndim}"))
        axes = tuple(range(ndim))
    else:
        # (an int as operator.index takes it: a bool, float or string is an
        # ArgumentError, as for every axis in gradc, not "out of bounds")
        try:
            axes = tuple(axis_index(a)
                         for a in (tuple(axis) if np.iterable(axis) else (axis,)))
        except ArgumentError as e:
            raise ArgumentError(f"sliding_window_view: {e}") from None
        for a in axes:
            if not -ndim <= a < ndim:
                raise ShapeError(with_location(
                    f"sliding_window_view: axis {a!r} is out of bounds for x of dimension "
                    f"{ndim}"))
        axes = tuple(a % ndim for a in axes)
        if len(axes) != len(windows):
            raise ShapeError(with_location(
                f"sliding_window_view: window_shape and axis must have the same length; got "
                f"{len(windows)} sizes and {len(axes)} axes"))
    trimmed = list(shape)
    for a, w in zip(axes, windows):
        if trimmed[a] < w:
            raise ShapeError(with_location(
                f"sliding_window_view: window shape {tuple(windows)} is larger than the input "
                f"array's shape {shape} (axis {a})"))
        trimmed[a] -= w - 1
    rank = ndim + len(windows)

    def along(values, dim):
        index = [1] * rank
        index[dim] = len(values)
        return values.reshape(index)
    index = []
    for a in range(ndim):
        i = along(np.arange(trimmed[a]), a)
        for k, (b, w) in enumerate(zip(axes, windows)):
            if b == a:
                i = i + along(np.arange(w), ndim + k)
        index.append(i)
    return x[tuple(index)]


# ---------------------------------------------------------------- accumulations

def accumulate(ufunc, a, axis=0, dtype=None):
    """``ufunc.accumulate``: out[0] = a[0], out[t] = ufunc(out[t - 1], a[t]) along
    ``axis``, as one ``scan`` (a loop in the Graph, differentiated exactly: zeros in a
    product, ties in a running maximum), in NumPy's dtype (the ufunc's; sums and
    products of small integers in the default integer)."""
    from ..numpy_api import UFUNCS
    from ..prims.loops import scan
    op = UFUNCS[ufunc]
    a = operand(a)
    if ufunc in (np.add, np.multiply):      # (small integers widen, as in np.cumsum)
        a = npf._accumulating(a, dtype)
    elif dtype is not None:
        a = astype(a, dtype)
    nd = len(shape_of(a))
    if nd == 0:
        raise ShapeError(with_location(f"np.{ufunc.__name__}.accumulate of a 0-d array"))
    moved = npf.moveaxis(a, _axis(axis, nd), 0)
    moved = astype(moved, dtype_of(op(moved[:1], moved[:1])))
    if shape_of(moved)[0] <= 1:
        return npf.moveaxis(moved, 0, _axis(axis, nd))

    def step(carry, x):
        y = astype(op(carry, x), dtype_of(carry))
        return y, y
    _, ys = scan(step, moved[0], moved[1:])
    return npf.moveaxis(npf.concatenate([moved[:1], ys], axis=0), 0, _axis(axis, nd))


@implements(np.cumprod)
def cumprod(a, axis=None, dtype=None, out=None):
    npf._no_out(out, "cumprod")
    a = npf._accumulating(operand(a), dtype)
    if axis is None:
        a, axis = npf.ravel(a), 0
    return accumulate(np.multiply, a, axis)


@implements(np.nancumprod)
def nancumprod(a, axis=None, dtype=None, out=None):
    npf._no_out(out, "nancumprod")
    a, _ = _nan_filled(a, 1)
    return cumprod(a, axis, dtype)


# ---------------------------------------------------------------- data-dependent sizes
# The length of these results depends on the values (how many distinct ones, the largest
# one).  Traced with the concrete values, the length is fixed and checked: a guard (or
# ``nonzero``'s count) fails on a call whose values would give another length, and the
# function is traced again, as for Python control flow on traced values.

def _holds(pred) -> bool:
    """``bool(pred)``, recorded as a guard when ``pred`` is traced (a re-trace when a
    later call's values disagree)."""
    return bool(pred)


@implements(np.unique)
def unique(ar, return_index=False, return_inverse=False, return_counts=False, axis=None, *,
           equal_nan=True, sorted=True):
    """The sorted distinct values (a stable sort: ``return_index`` gives first
    occurrences, as NumPy's).  Differentiable in the values: each distinct value's
    derivative goes to its first occurrence."""
    if axis is not None:
        raise UnsupportedError(with_location("np.unique(..., axis=...) on traced arrays; "
                                             "flatten, or compare rows yourself"))
    x = operand(ar)
    flat = npf.ravel(x)
    n = shape_of(flat)[0]
    order = npf.argsort(flat, kind="stable")
    s = npf.take(flat, order)
    if n:
        new = s[1:] != s[:-1]
        if equal_nan and np.issubdtype(dtype_of(s), np.inexact):
            new = new & ~(np.isnan(s[1:]) & np.isnan(s[:-1]))   # one NaN, as NumPy
        first = npf.concatenate([np.ones(1, bool), new])
    else:
        first = np.zeros(0, bool)
    starts = npf.flatnonzero(first)          # (their number checked on every call)
    out = [npf.take(s, starts)]
    if return_index:
        out.append(npf.take(order, starts))
    if return_inverse:
        rank = npf.cumsum(astype(first, np.int64)) - 1          # in sorted order
        inverse = npf.take(rank, npf.argsort(order, kind="stable"))
        out.append(np.reshape(inverse, shape_of(x)))
    if return_counts:
        out.append(diff(starts, append=np.array([n], np.int64)))
    return out[0] if len(out) == 1 else tuple(out)


def _sum_into_bins(values, bins, n):
    """``out[bins[i]] += values[i]`` into ``n`` zeros (NumPy's ``np.add.at``)."""
    return ops.scatter_add(values, [astype(bins, np.int64)], (n,), (("a", 0),))


@implements(np.bincount)
def bincount(x, weights=None, minlength=0):
    """Counts (or sums of ``weights``, as float64) of each non-negative integer; the
    length, ``max(x) + 1`` or ``minlength``, is checked on every call.  Differentiable in
    ``weights``."""
    x = operand(x)
    if len(shape_of(x)) != 1:
        raise ShapeError(with_location(f"np.bincount: x must be 1-D, got shape "
                                       f"{shape_of(x)}"))
    if not (np.issubdtype(dtype_of(x), np.integer) or dtype_of(x) == np.bool_):
        raise DTypeError(with_location(f"np.bincount: x must hold integers, got "
                                       f"{dtype_of(x)}"))
    minlength = _index(minlength, "np.bincount: minlength")
    if minlength < 0:
        raise ArgumentError(with_location("np.bincount: minlength must be non-negative"))
    n = shape_of(x)[0]
    length = minlength
    if n:
        if _holds(np.min(x) < 0):
            raise InvalidValueError(with_location("np.bincount: x must have no negative "
                                              "elements"))
        top = np.max(astype(x, np.int64))
        concrete = getattr(top, "val", top)
        if concrete is None:
            raise UnsupportedError(with_location("np.bincount of abstract values (inside "
                                                 "vmap or a loop body): its length is "
                                                 "data-dependent"))
        length = max(minlength, int(concrete) + 1)
        _holds(top + 1 == length if length > minlength else top < length)
    if weights is None:
        w = np.ones(n, np.int64)
    else:
        w = astype(operand(weights), np.float64)
        if shape_of(w) != (n,):
            raise ShapeError(with_location("np.bincount: weights must have the shape of x, "
                                           f"{(n,)}, got {shape_of(w)}"))
    if not n:                  # (NumPy's counts, even with weights)
        return np.zeros(length, np.int64)
    return _sum_into_bins(w, x, length)


@implements(np.linspace)
def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0, *,
             device=None):
    """NumPy's arithmetic, so the points are NumPy's to the last bit (``start + k·step``;
    ``k/div·delta`` where a step is 0; ``stop`` itself at the end); differentiable in
    ``start`` and ``stop``."""
    num = _index(num, "np.linspace: num")
    if num < 0:
        raise ArgumentError(with_location(f"np.linspace: number of samples, {num}, must be "
                                          "non-negative"))
    start, stop = promote(start, stop, float_result=True)
    try:
        shape = np.broadcast_shapes(shape_of(start), shape_of(stop))
    except ValueError:
        raise ShapeError(with_location(f"np.linspace: start and stop of shapes "
                                       f"{shape_of(start)} and {shape_of(stop)} do not "
                                       "broadcast")) from None
    start, stop = (v if shape_of(v) == shape else npf.broadcast_to(v, shape)
                   for v in (start, stop))
    dt = dtype_of(start)
    div = num - 1 if endpoint else num
    delta = stop - start
    k = np.arange(num, dtype=dt).reshape((-1,) + (1,) * len(shape_of(delta)))
    if div > 0:
        step = delta / div
        y = np.where(np.any(step == 0), k / div * delta, k * step)     # (gh-5437)
    else:
        step = np.full(shape_of(delta), np.nan, dt)
        y = k * delta
    y = y + start
    if endpoint and num > 1:
        y = npf.concatenate([y[:-1], np.expand_dims(stop, 0)])
    nd = len(shape_of(y))
    if axis != 0:
        y = np.moveaxis(y, 0, _axis(axis, nd))
    if dtype is not None:
        if np.issubdtype(np.dtype(dtype), np.integer):
            y = np.floor(y)
        y = astype(y, dtype)
    return (y, step) if retstep else y


_BLOCK = 65536      # NumPy's histogram works through its data in blocks of this many


def _index(value, what):
    try:
        return operator.index(value)
    except TypeError:
        raise ArgumentError(with_location(f"{what} must be an integer, got "
                                          f"{type(value).__name__}")) from None


@implements(np.histogram)
def histogram(a, bins=10, range=None, density=None, weights=None):
    """Counts per bin (or sums of ``weights``): the bin of ``x`` is the ``i`` with
    ``edges[i] <= x < edges[i + 1]``, the last bin closed, values outside the edges
    dropped.  ``bins`` a number (equal bins over ``range`` or the data's extent, then
    differentiable in the data through the edges) or constant edges; the counts have a
    zero derivative, sums of weights their own.  NumPy's arithmetic: blocks of 65536,
    weights summed in float64 per block for equal bins, differences of a running sum
    for given edges."""
    if isinstance(bins, str):
        raise UnsupportedError(with_location(f"np.histogram(bins={bins!r}) on traced "
                                             "arrays; give a number of bins or the edges"))
    a = operand(a)
    w = None if weights is None else operand(weights)
    if w is not None and shape_of(w) != shape_of(a):
        raise ShapeError(with_location("np.histogram: weights should have the same shape "
                                       "as a"))
    a = npf.ravel(a)
    w = None if w is None else npf.ravel(w)
    uniform = np.ndim(bins) == 0
    if uniform:
        n = _index(bins, "np.histogram: bins")
        if n < 1:
            raise ArgumentError(with_location("np.histogram: bins must be positive"))
        if range is not None:
            first, last = (e if isinstance(e, (Tracer, int, float)) else np.asarray(e)
                           for e in range)
            if _holds(first > last):
                raise ArgumentError(with_location("np.histogram: max must be larger than "
                                                  "min in range parameter"))
        elif shape_of(a)[0] == 0:
            first, last = 0, 1
        else:
            first, last = np.min(a), np.max(a)
        if not _holds(np.isfinite(first) & np.isfinite(last)):
            raise ArgumentError(with_location("np.histogram: the range of the data is not "
                                              "finite (NaN or infinite values)"))
        if _holds(first == last):
            first, last = first - 0.5, last + 0.5
        kind = np.result_type(*[e if isinstance(e, (int, float)) else dtype_of(e)
                                for e in (first, last)], dtype_of(a))
        kind = kind if np.issubdtype(kind, np.inexact) else np.result_type(kind, 1.0)
        edges = linspace(first, last, n + 1, dtype=kind)
        if _holds(np.any(edges[:-1] >= edges[1:])):
            raise ArgumentError(with_location(f"np.histogram: too many bins for the data "
                                              f"range; cannot create {n} finite-sized bins"))
    else:
        edges = operand(bins)
        if len(shape_of(edges)) != 1:
            raise ShapeError(with_location("np.histogram: bins must be 1-D"))
        if not isinstance(edges, Tracer) and np.any(edges[:-1] > edges[1:]):
            raise ArgumentError(with_location("np.histogram: bins must increase "
                                              "monotonically"))
        n = shape_of(edges)[0] - 1
    ntype = np.dtype(np.int64) if w is None else dtype_of(w)
    # equal bins: counts added block by block; given edges: running counts at the edges
    # added block by block, their differences at the end
    total = np.zeros(n if uniform else n + 1, ntype)
    for start in builtins.range(0, shape_of(a)[0], _BLOCK):
        part = a[start:start + _BLOCK]
        part_w = None if w is None else w[start:start + _BLOCK]
        more = (_equal_bins if uniform else _running_at_edges)(part, part_w, edges, n)
        total = more if start == 0 else total + more
    counts = total if uniform else diff(total)
    if density:
        counts = counts / astype(diff(edges), np.float64) / np.sum(counts)
    return counts, edges


def _equal_bins(a, w, edges, n):
    """NumPy's ``bincount`` of the bins: weights summed in float64, then cast back."""
    index = npf.searchsorted(edges, a, side="right") - 1
    index = np.where(a == edges[-1], n - 1, index)            # (the last bin is closed)
    inside = (index >= 0) & (index < n)
    index = astype(np.where(inside, index, 0), np.int64)
    if w is None:
        return _sum_into_bins(astype(inside, np.int64), index, n)
    kept = np.where(inside, astype(w, np.float64), 0.0)
    return astype(_sum_into_bins(kept, index, n), dtype_of(w))


def _running_at_edges(a, w, edges, n):
    """NumPy's way for given edges: the data sorted, each edge's place in it, and the
    count (or the weights' running sum, in their dtype) up to each place.  (NumPy's sort
    is not stable: with equal values and weights the sums may differ in the last bit.)"""
    order = npf.argsort(a, kind="stable")
    sa = npf.take(a, order)
    places = npf.concatenate([npf.searchsorted(sa, edges[:-1], side="left"),
                              npf.searchsorted(sa, edges[-1:], side="right")])
    if w is None:
        return places
    cw = npf.concatenate([np.zeros(1, dtype_of(w)), npf.cumsum(npf.take(w, order))])
    return npf.take(cw, places)


@implements(np.logspace)
def logspace(start, stop, num=50, endpoint=True, base=10.0, dtype=None, axis=0):
    """``base ** linspace(start, stop)``, as NumPy computes it (a scalar base)."""
    if np.ndim(base) != 0:
        raise UnsupportedError(with_location("np.logspace with an array base on traced "
                                             "arrays"))
    y = np.power(base, linspace(start, stop, num, endpoint, axis=axis))
    return y if dtype is None else astype(y, dtype)


# ---------------------------------------------------------------- rearrangements
# NumPy functions that only move, repeat or drop elements: NumPy itself runs them on an
# array of element numbers, and the result is a gather of those elements (every corner
# of their argument handling is NumPy's own).

def _rearranged(fn, x, *args, **kwargs):
    x = operand(x)
    numbers = np.arange(int(np.prod(shape_of(x))), dtype=np.int64).reshape(shape_of(x))
    where = fn(numbers, *args, **kwargs)
    if isinstance(where, (list, tuple)):
        return type(where)(npf.take(npf.ravel(x), w) for w in where)
    return npf.take(npf.ravel(x), where)


@implements(np.delete)
def delete(arr, obj, axis=None):
    if isinstance(obj, Tracer):
        raise UnsupportedError(with_location("np.delete with traced indices"))
    return _rearranged(np.delete, arr, obj, axis)


@implements(np.resize)
def resize(a, new_shape):
    return _rearranged(np.resize, a, new_shape)


@implements(np.rollaxis)
def rollaxis(a, axis, start=0):
    return _rearranged(np.rollaxis, a, axis, start)


@implements(np.matrix_transpose)
def matrix_transpose(x):
    if len(shape_of(operand(x))) < 2:
        raise ShapeError(with_location("np.matrix_transpose: x must be at least 2-D"))
    return npf.swapaxes(x, -1, -2)


def _splitter(name, axis, least):
    def impl(ary, indices_or_sections):
        ary = operand(ary)
        if len(shape_of(ary)) < least:
            raise ShapeError(with_location(f"np.{name} only works on arrays of {least} or "
                                           "more dimensions"))
        ax = 0 if name == "hsplit" and len(shape_of(ary)) == 1 else axis
        return split(ary, indices_or_sections, axis=ax)
    impl.__name__ = name
    return impl


for _name, _axis_of, _least in (("hsplit", 1, 1), ("vsplit", 0, 2), ("dsplit", 2, 3)):
    implements(getattr(np, _name))(_splitter(_name, _axis_of, _least))


@implements(np.insert)
def insert(arr, obj, values, axis=None):
    """Positions from NumPy's own ``np.insert`` of element numbers; the values (cast to
    ``arr``'s dtype, broadcast as NumPy broadcasts them) gathered in."""
    if isinstance(obj, Tracer):
        raise UnsupportedError(with_location("np.insert with traced indices"))
    arr, values = operand(arr), operand(values)
    size = int(np.prod(shape_of(arr)))
    numbers = np.arange(size, dtype=np.int64).reshape(shape_of(arr))
    tags = size + np.arange(int(np.prod(shape_of(values))), dtype=np.int64)
    where = np.insert(numbers, obj, tags.reshape(shape_of(values)), axis)
    pool = npf.concatenate([npf.ravel(arr), astype(npf.ravel(values), dtype_of(arr))])
    return npf.take(pool, where)


@implements(np.diagflat)
def diagflat(v, k=0):
    v = npf.ravel(operand(v))
    numbers = 1 + np.arange(shape_of(v)[0], dtype=np.int64)
    where = np.diagflat(numbers, k)            # (0: off the diagonal)
    return npf.take(npf.concatenate([np.zeros(1, dtype_of(v)), v]), where)


@implements(np.atleast_3d)
def atleast_3d(*arys):
    out = []
    for x in arys:
        x = operand(x)
        shape = shape_of(x)
        new = {0: (1, 1, 1), 1: (1,) + shape + (1,), 2: shape + (1,)}.get(len(shape), shape)
        out.append(npf.reshape(x, new) if new != shape else x)
    return out[0] if len(out) == 1 else out


@implements(np.dstack)
def dstack(tup):
    return npf.concatenate([atleast_3d(a) for a in tup], axis=2)


@implements(np.broadcast_arrays)
def broadcast_arrays(*args, subok=False):
    args = [operand(a) for a in args]
    try:
        shape = np.broadcast_shapes(*[shape_of(a) for a in args])
    except ValueError:
        raise ShapeError(with_location(
            "np.broadcast_arrays: shapes " + ", ".join(str(shape_of(a)) for a in args)
            + " do not broadcast")) from None
    return tuple(a if shape_of(a) == shape else _broadcast_view(a, shape, "np.broadcast_arrays")
                 for a in args)


def _broadcast_view(a, shape, made_by):
    """np.broadcast_arrays's (and np.meshgrid(copy=False)'s) broadcast of ``a``: a view
    whose elements share memory; NumPy deprecates writing into it (a DeprecationWarning,
    and the write reaches every element it repeats): refused, as a future NumPy will."""
    y = npf.broadcast_to(a, shape)
    if isinstance(a, Tracer) and isinstance(y, Tracer):
        y = y.read_only_view_of(
            a, made_by, lambda b: npf.broadcast_to(b, shape),
            "whose elements share memory (NumPy deprecates writing into it: the write "
            "would reach every element the broadcast repeats)")
    return y


@implements(getattr(np, "unstack", None))
def unstack(x, /, *, axis=0):
    x = operand(x)
    moved = np.moveaxis(x, _axis(axis, len(shape_of(x))), 0)
    return tuple(moved[i] for i in range(shape_of(moved)[0]))


@implements(np.astype)
def astype_function(x, dtype, /, *, copy=True, device=None):
    return astype(operand(x), dtype)


@implements(np.block)
def block(arrays):
    """Nested lists joined from the innermost (the last axis) outwards, each piece raised
    to the result's rank first, as NumPy's block."""
    def depth(a):
        return 1 + depth(a[0]) if isinstance(a, list) and a else (0 if not
                                                                  isinstance(a, list) else 1)

    def ranks(a):
        return max(ranks(e) for e in a) if isinstance(a, list) else len(shape_of(operand(a)))
    if isinstance(arrays, tuple):
        raise ArgumentError(with_location("np.block: tuples are not allowed, use lists"))
    levels = depth(arrays)
    nd = max(levels, ranks(arrays))

    def join(a, level):
        if not isinstance(a, list):
            a = operand(a)
            return npf.reshape(a, (1,) * (nd - len(shape_of(a))) + shape_of(a))
        if not a:
            raise ArgumentError(with_location("np.block: lists cannot be empty"))
        return npf.concatenate([join(e, level + 1) for e in a], axis=nd - levels + level)
    return join(arrays, 0)


def _cumulative_of(name, running, initial):
    def impl(x, /, *, axis=None, dtype=None, out=None, include_initial=False):
        npf._no_out(out, name)
        x = operand(x)
        if axis is None:
            if len(shape_of(x)) != 1:
                raise ArgumentError(with_location(f"np.{name}: axis must be given for "
                                                  "arrays of more than one dimension"))
            axis = 0
        axis = _axis(axis, len(shape_of(x)))
        y = running(x, axis=axis, dtype=dtype)
        if include_initial:
            shape = list(shape_of(y))
            shape[axis] = 1
            y = npf.concatenate([np.full(shape, initial, dtype_of(y)), y], axis=axis)
        return y
    impl.__name__ = name
    return impl


implements(getattr(np, "cumulative_sum", None))(_cumulative_of("cumulative_sum", npf.cumsum, 0))
implements(getattr(np, "cumulative_prod", None))(
    _cumulative_of("cumulative_prod", lambda x, axis, dtype: cumprod(x, axis, dtype), 1))


@implements(np.fix)
def fix(x, out=None):
    npf._no_out(out, "fix")
    return np.trunc(operand(x))       # (as NumPy's: a new array, in trunc's dtype)


@implements(np.isposinf)
def isposinf(x, out=None):
    npf._no_out(out, "isposinf")
    return operand(x) == np.inf


@implements(np.isneginf)
def isneginf(x, out=None):
    npf._no_out(out, "isneginf")
    return operand(x) == -np.inf


@implements(np.signbit)
def signbit(x):
    """The sign bit of a number, -0.0's included (a NaN's is invisible to arithmetic:
    False here, whatever NumPy reads off its bits)."""
    x = operand(x)
    if not np.issubdtype(dtype_of(x), np.floating):
        return x < 0 if np.issubdtype(dtype_of(x), np.signedinteger) else \
            np.zeros(shape_of(x), bool)
    return _negative_sign(x)


@implements(np.vecdot)
def vecdot(x1, x2):
    x1, x2 = promote(x1, x2)
    return np.sum(x1 * x2, axis=-1)


@implements(getattr(np, "matvec", None))
def matvec(x1, x2):
    return np.matmul(x1, npf.expand_dims(operand(x2), -1))[..., 0]


@implements(getattr(np, "vecmat", None))
def vecmat(x1, x2):
    return np.matmul(npf.expand_dims(operand(x1), -2), x2)[..., 0, :]


@implements(np.geomspace)
def geomspace(start, stop, num=50, endpoint=True, dtype=None, axis=0):
    """NumPy's steps: ``logspace`` of the magnitudes' ``log10``, then the ends exactly
    ``start`` and ``stop`` and the sign put back."""
    start, stop = (v if isinstance(v, Tracer) else np.asarray(v) for v in (start, stop))
    if _holds(np.any(start == 0) | np.any(stop == 0)):
        raise ArgumentError(with_location("np.geomspace: a geometric sequence cannot "
                                          "include zero"))
    dt = np.result_type(dtype_of(start), dtype_of(stop), float(num),
                        np.zeros((), dtype).dtype)
    start, stop = broadcast_arrays(astype(start, dt), astype(stop, dt))
    sign = np.sign(start)
    start, stop = start / sign, stop / sign
    result = logspace(np.log10(start), np.log10(stop), num, endpoint, base=10.0)
    if num > 0:
        ends = [npf.expand_dims(start, 0), result[1:]]
        if num > 1 and endpoint:
            ends = [ends[0], result[1:-1], npf.expand_dims(stop, 0)]
        result = npf.concatenate(ends)
    result = result * sign
    if axis != 0:
        result = np.moveaxis(result, 0, _axis(axis, len(shape_of(result))))
    return astype(result, dt if dtype is None else dtype)


@implements(np.isreal)
def isreal(x):
    return np.ones(shape_of(operand(x)), bool)        # (traced arrays are never complex)


@implements(np.iscomplex)
def iscomplex(x):
    return np.zeros(shape_of(operand(x)), bool)


@implements(np.real_if_close)
def real_if_close(a, tol=100):
    return operand(a)


@implements(np.isin)
def isin(element, test_elements, assume_unique=False, invert=False, *, kind=None):
    element, tests = operand(element), npf.ravel(operand(test_elements))
    if not shape_of(tests)[0]:
        found = np.zeros(shape_of(element), bool)
    else:
        found = np.any(npf.expand_dims(element, -1) == tests, axis=-1)
    return ~found if invert else found


@implements(np.extract)
def extract(condition, arr):
    return npf.ravel(operand(arr))[npf.ravel(astype(operand(condition), bool))]


@implements(np.array_equal)
def array_equal(a1, a2, equal_nan=False):
    a1, a2 = operand(a1), operand(a2)
    if shape_of(a1) != shape_of(a2):
        return False
    same = a1 == a2
    if equal_nan:
        same = same | (np.isnan(a1) & np.isnan(a2))
    return np.all(same)


@implements(np.lexsort)
def lexsort(keys, axis=-1):
    """Stable sorts by each key in turn, the last key primary (as NumPy)."""
    keys = list(keys) if isinstance(keys, (list, tuple)) else \
        [operand(keys)[i] for i in range(shape_of(operand(keys))[0])]
    keys = [operand(k) for k in keys]
    if not keys:
        raise ArgumentError(with_location("np.lexsort: need at least one key"))
    first = keys[0]
    ax = _axis(axis, len(shape_of(first)))
    order = None
    for k in keys:
        if order is None:
            order = npf.argsort(k, axis=ax, kind="stable")
        else:
            order = npf.take_along_axis(order, npf.argsort(
                npf.take_along_axis(k, order, ax), axis=ax, kind="stable"), ax)
    return order


@implements(np.vander)
def vander(x, N=None, increasing=False):
    """Columns of repeated products (NumPy's ``multiply.accumulate``), not powers, in
    NumPy's dtype: ``promote_types(x.dtype, int)`` (float32 gives float64)."""
    x = operand(x)
    if len(shape_of(x)) != 1:
        raise ShapeError(with_location("np.vander: x must be a one-dimensional array"))
    dtype = np.promote_types(dtype_of(x), int)
    x = astype(x, dtype)
    n = shape_of(x)[0] if N is None else int(N)
    cols = [np.ones(shape_of(x), dtype)] if n else []
    for _ in range(1, n):
        cols.append(cols[-1] * x)
    if not cols:
        return np.zeros(shape_of(x) + (0,), dtype_of(x))
    return npf.stack(cols if increasing else cols[::-1], axis=1)


@implements(np.apply_along_axis)
def apply_along_axis(func1d, axis, arr, *args, **kwargs):
    """``func1d`` called on every 1-D slice (unrolled: one call per slice)."""
    arr = operand(arr)
    nd = len(shape_of(arr))
    moved = np.moveaxis(arr, _axis(axis, nd), -1)
    outer = shape_of(moved)[:-1]
    results = [operand(func1d(moved[i], *args, **kwargs)) for i in np.ndindex(*outer)]
    if not results:
        raise ArgumentError(with_location("np.apply_along_axis: cannot apply func1d to 0 "
                                          "slices"))
    out = npf.reshape(npf.stack(results), outer + shape_of(results[0]))
    inner = len(shape_of(results[0]))
    # the function's axes replace ``axis`` (as NumPy places them)
    dest = list(range(_axis(axis, nd), _axis(axis, nd) + inner))
    return np.moveaxis(out, list(range(len(outer), len(outer) + inner)), dest)


@implements(np.piecewise)
def piecewise(x, condlist, funclist, *args, **kw):
    """As NumPy: each function sees only the elements its condition selects (so a
    function undefined elsewhere, a square root say, gives no NaN derivative), later
    conditions win; zeros where none holds, or the extra function."""
    x = operand(x)
    if isinstance(condlist, (bool, np.bool_)) or (not isinstance(condlist, list)
                                                   and len(shape_of(condlist)) == 0):
        condlist = [condlist]
    conds = [npf.broadcast_to(astype(operand(c), bool), shape_of(x)) for c in condlist]
    if len(funclist) == len(conds) + 1:
        conds.append(~np.any(npf.stack(conds), axis=0))
    elif len(funclist) != len(conds):
        raise ArgumentError(with_location(
            f"np.piecewise: with {len(conds)} condition(s), either {len(conds)} or "
            f"{len(conds) + 1} functions are expected"))
    y = np.zeros(shape_of(x), dtype_of(x))
    for cond, f in zip(conds, funclist):
        if callable(f):
            picked = npf.ravel(x)[npf.ravel(cond)]
            values = npf.broadcast_to(operand(f(picked, *args, **kw)), shape_of(picked))
        else:
            values = f
        index = npf.flatnonzero(cond)
        values = astype(npf.broadcast_to(operand(values), shape_of(index)), dtype_of(y))
        flat = ops.index_set(operand(npf.ravel(y)), values, [index], (("a", 0),))
        y = npf.reshape(flat, shape_of(x))
    return y
