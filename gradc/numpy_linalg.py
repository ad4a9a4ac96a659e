"""NumPy's contractions (``matmul``, ``dot``, ``tensordot``, ``inner``, ``outer``, ``vdot``,
``einsum``) and ``np.linalg``, written with gradc operations.

Every contraction lowers to the two-operand ``einsum`` primitive: multi-operand
``einsum`` contracts left to right, first summing out indices that occur in one operand
only, and takes diagonals for indices repeated within an operand.
"""
from __future__ import annotations

import builtins
import string

import numpy as np

from . import ops
from .errors import ShapeError, UnsupportedError, with_location
from .numpy_api import _axis, elementwise, implements, promote
from .numpy_funcs import (_axes, _ndim, _no_out, diagonal, max, min, ravel, reshape, sum)
from .prims.linalg import _swap_last
from .trace import checkable, dtype_of, shape_of


def _result_type(example):
    """NumPy's named tuple of results (``QRResult``, ``SVDResult``, ...), found from an
    example result, so that ``np.linalg.qr(a).Q`` works on traced arrays too."""
    kind = type(example)
    return kind if hasattr(kind, "_fields") else (lambda *parts: tuple(parts))


_QR = _result_type(np.linalg.qr(np.eye(1)))
_EIGH = _result_type(np.linalg.eigh(np.eye(1)))
_SVD = _result_type(np.linalg.svd(np.eye(1)))
_SLOGDET = _result_type(np.linalg.slogdet(np.eye(1)))


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
    return einsum(f"{''.join(la)},{''.join(lb)}->{''.join(out)}", a, b, _strict=True)


@implements(np.einsum)
def einsum(subscripts, *operands, optimize=None, _strict=False, **kwargs):
    """NumPy's ``einsum`` (an index of extent 1 broadcasts against the others', as
    NumPy's does; not with ``_strict``, for ``dot`` and ``tensordot``, which NumPy
    refuses on such shapes)."""
    if not isinstance(subscripts, str):
        raise UnsupportedError(with_location("np.einsum: only the string form is supported"))
    operands = promote(*operands)
    terms, out = _parse_einsum(subscripts.replace(" ", ""), [_ndim(x) for x in operands])
    for t, x in zip(terms, operands):
        if len(t) != _ndim(x):
            raise ShapeError(with_location(
                f"einsum {subscripts!r}: term {t!r} does not match an operand of shape "
                f"{shape_of(x)}"))
    pairs = [_diagonal_of(x, t) for t, x in zip(terms, operands)]
    # (an index of extent 1 in one operand broadcasts against the others', as NumPy's)
    extent = {}
    for x, t in pairs:
        for c, d in zip(t, shape_of(x)):
            extent[c] = d if extent.get(c, 1) == 1 else extent[c]
    pairs = [(x if _strict or all(extent[c] == d for c, d in zip(t, shape_of(x))) else
              ops.broadcast_to(x, tuple(extent[c] if d == 1 else d
                                        for c, d in zip(t, shape_of(x)))), t)
             for x, t in pairs]
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
    ell = ""
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
        single = "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
        out = ell + single
    unknown = [c for c in out if not any(c in t for t in terms)]
    if unknown or len(set(out)) != len(out):
        raise ShapeError(with_location(
            f"einsum {spec!r}: output subscripts must be distinct and appear in an input"))
    return terms, out


def _diagonal_of(x, term):
    """``(x, term)`` with the diagonal taken over indices repeated within one operand
    (``'ii->i'``): each such index once, last (where ``diagonal`` puts it)."""
    while len(set(term)) != len(term):
        c = next(c for c in term if term.count(c) > 1)
        i = term.index(c)
        j = term.index(c, i + 1)
        x = diagonal(x, 0, i, j)
        term = "".join(t for k, t in enumerate(term) if k not in (i, j)) + c
    return x, term


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
    if _ndim(a) < 2 or shape_of(a)[-1] != shape_of(a)[-2]:
        raise ShapeError(with_location(
            f"np.linalg.inv: expected square matrices (..., n, n), got {shape_of(a)}"))
    n = shape_of(a)[-1]
    eye = np.broadcast_to(np.eye(n, dtype=dtype_of(a)), shape_of(a))
    return ops.solve(a, eye)


@implements(np.linalg.cholesky)
def cholesky(a, upper=False):
    """The lower factor of each matrix from its lower triangle; ``upper=True``, the
    upper factor from its upper triangle (NumPy reads that one: the lower factor of the
    transpose, transposed)."""
    a = _matrices(a, "cholesky")
    if upper:
        a = _swap_last(a)
    low = _per_matrix(lambda m: (ops.cholesky(m),), a)[0] if _ndim(a) != 2 else \
        ops.cholesky(a)
    return _swap_last(low) if upper else low


@implements(np.linalg.eigh)
def eigh(a, UPLO="L"):
    a = _matrices(a, "eigh")
    if UPLO not in ("L", "l"):
        a = _swap_last(a)  # the upper triangle, read as the lower one of the transpose
    w, v = _per_matrix(ops.eigh, a) if _ndim(a) != 2 else ops.eigh(a)
    return _EIGH(w, v)


@implements(np.linalg.eigvalsh)
def eigvalsh(a, UPLO="L"):
    return eigh(a, UPLO)[0]


@implements(np.linalg.svd)
def svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    (a,) = promote(a, float_result=True)
    m, n = shape_of(a)[-2:] if _ndim(a) >= 2 else (0, 0)
    if full_matrices and compute_uv and m != n:
        raise UnsupportedError(with_location(
            f"np.linalg.svd of a {m}x{n} matrix with full_matrices=True: the extra "
            "singular vectors are not unique, so gradc differentiates the reduced SVD "
            "only; pass full_matrices=False"))
    if 0 in shape_of(a):              # (LAPACK refuses empty matrices; NumPy's shapes)
        lead, dt, k = shape_of(a)[:-2], dtype_of(a), builtins.min(m, n)
        u, s, vt = (np.zeros(lead + (m, k), dt), np.zeros(lead + (k,), dt),
                    np.zeros(lead + (k, n), dt))
    else:
        u, s, vt = _per_matrix(ops.svd, a) if _ndim(a) != 2 else ops.svd(a)
    return _SVD(u, s, vt) if compute_uv else s


@implements(np.linalg.qr)
def qr(a, mode="reduced"):
    """``Q, R`` of each matrix (LAPACK's signs, as NumPy); ``mode="r"`` gives ``R`` only,
    ``"complete"`` is the reduced form where that is all of ``Q`` (m <= n)."""
    a = _matrices(a, "qr")
    m, n = shape_of(a)[-2:]
    if mode not in ("reduced", "complete", "r"):
        raise UnsupportedError(with_location(
            f"np.linalg.qr(mode={mode!r}): gradc gives mode 'reduced', 'complete' or 'r' "
            "('raw' is LAPACK's Householder storage)"))
    if mode == "complete" and m > n:
        raise UnsupportedError(with_location(
            f"np.linalg.qr of a {m}x{n} matrix with mode='complete': the extra columns of Q "
            "are not unique, so gradc differentiates the reduced QR only; pass "
            "mode='reduced'"))
    k = builtins.min(m, n)
    if 0 in shape_of(a):              # (LAPACK refuses empty matrices; NumPy's shapes)
        lead, dt = shape_of(a)[:-2], dtype_of(a)
        q, r = np.zeros(lead + (m, k), dt), np.zeros(lead + (k, n), dt)
    else:
        q, r = _per_matrix(ops.qr, a) if _ndim(a) != 2 else ops.qr(a)
    return r if mode == "r" else _QR(q, r)


@implements(np.linalg.det)
def det(a):
    (a,) = promote(a, float_result=True)
    return ops.det(a)


@implements(np.linalg.slogdet)
def slogdet(a):
    (a,) = promote(a, float_result=True)
    sign, logabs = ops.slogdet(a)
    return _SLOGDET(sign, logabs)


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
        if len(axes) == 2 and axis is not None:   # (rows, then columns: as given)
            axes = tuple(int(a) % nd for a in axis)
    if ord is None or ord == "fro" or (vector and ord == 2):
        y = ops.sqrt(sum(ops.mul(x, x), axes, keepdims=keepdims))
        return y
    if vector:
        return _vector_norm(x, ord, axes, keepdims)
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ShapeError(with_location(f"np.linalg.norm: a matrix norm needs two distinct "
                                       f"axes, got {axis}"))
    absx = ops.abs(x)
    extreme = {1: max, -1: min, np.inf: max, -np.inf: min}
    if ord in extreme:       # the largest (smallest) column sum (1) or row sum (inf)
        summed = axes[0] if ord in (1, -1) else axes[1]
        return extreme[ord](sum(absx, summed, keepdims=True), axes, keepdims=keepdims)
    if ord in (2, -2, "nuc"):         # the singular values of the matrices
        s = _singular_values(x, axes)
        y = {2: lambda: max(s, -1), -2: lambda: min(s, -1), "nuc": lambda: sum(s, -1)}[ord]()
        if keepdims:
            y = reshape(y, tuple(1 if d in axes else n for d, n in enumerate(shape_of(x))))
        return y
    raise ShapeError(with_location(f"np.linalg.norm: invalid norm order {ord!r} for "
                                   "matrices"))


def _vector_norm(x, ord, axes, keepdims):
    absx = ops.abs(x)
    if ord is None or ord == 2:
        return ops.sqrt(sum(ops.mul(x, x), axes, keepdims=keepdims))
    if ord == np.inf:
        return max(absx, axes, keepdims=keepdims)
    if ord == -np.inf:
        return min(absx, axes, keepdims=keepdims)
    if ord == 1:
        return sum(absx, axes, keepdims=keepdims)
    if ord == 0:            # the number of nonzeros (piecewise constant)
        return ops.convert_element_type(
            sum(ops.convert_element_type(ops.ne(x, np.zeros((), dtype_of(x))), np.int64),
                axes, keepdims=keepdims), dtype_of(x))
    if isinstance(ord, str):
        raise ShapeError(with_location(f"np.linalg.norm: invalid norm order {ord!r} for "
                                       "vectors"))
    p = float(ord)
    powers = ops.pow(absx, p)
    if 0 < p < 1:
        # (|x|^p has a vertical tangent at 0: its derivative there is 0, as the central
        # difference and PyTorch have it, not inf * sign(0) = NaN)
        zero = np.zeros((), dtype_of(x))
        nonzero = ops.gt(absx, zero)
        powers = ops.select(nonzero, ops.pow(ops.select(nonzero, absx, zero + 1), p),
                            zero)
    return ops.pow(sum(powers, axes, keepdims=keepdims), 1.0 / p)


def _singular_values(x, axes=(-2, -1)):
    nd = _ndim(x)
    x = np.moveaxis(x, [a % nd for a in axes], [nd - 2, nd - 1])
    return svd(x, full_matrices=False, compute_uv=False)


def _per_matrix(fn, a):
    """The results of ``fn`` (a tuple) for each matrix of a stack ``(..., m, n)``, stacked
    (one call per matrix; ``gradc.vmap`` of the caller batches instead)."""
    lead = shape_of(a)[:-2]
    flat = reshape(a, (-1,) + shape_of(a)[-2:])
    if shape_of(flat)[0] == 0:          # (no matrix: the shapes of one, for none)
        m, n = shape_of(a)[-2:]
        one = fn(np.eye(m, n, dtype=dtype_of(a)))
        return tuple(np.zeros(lead + shape_of(o), dtype_of(o)) for o in one)
    outs = [fn(flat[k]) for k in range(shape_of(flat)[0])]
    return tuple(reshape(np.stack([o[j] for o in outs]), lead + shape_of(outs[0][j]))
                 for j in range(len(outs[0])))


def _matrices(a, name):
    (a,) = promote(a, float_result=True)
    if _ndim(a) < 2:
        raise ShapeError(with_location(f"np.linalg.{name}: expected matrices (..., m, n), "
                                       f"got shape {shape_of(a)}"))
    return a


@implements(np.linalg.vector_norm)
def vector_norm(x, /, *, axis=None, keepdims=False, ord=2):
    (x,) = promote(x, float_result=True)
    axes = tuple(range(_ndim(x))) if axis is None else _axes(axis, _ndim(x))
    return _vector_norm(x, ord, axes, keepdims)


@implements(np.linalg.matrix_norm)
def matrix_norm(x, /, *, keepdims=False, ord="fro"):
    return norm(_matrices(x, "matrix_norm"), ord, (-2, -1), keepdims)


@implements(np.linalg.svdvals)
def svdvals(x, /):
    return _singular_values(_matrices(x, "svdvals"))


@implements(np.linalg.cond)
def cond(x, p=None):
    """The ratio of extreme singular values (``p`` None, 2, -2), else ``‖x‖ ‖x⁻¹‖``."""
    x = _matrices(x, "cond")
    if p in (None, 2, -2):
        s = _singular_values(x)
        big, small = max(s, -1), min(s, -1)
        return ops.div(small, big) if p == -2 else ops.div(big, small)
    return ops.mul(norm(x, p, (-2, -1)), norm(inv(x), p, (-2, -1)))


@implements(np.linalg.matrix_rank)
def matrix_rank(A, tol=None, hermitian=False, *, rtol=None):
    (A,) = promote(A, float_result=True)
    if _ndim(A) < 2:
        return np.any(A != 0).astype(np.int64)
    S = _singular_values(A)
    if tol is None:
        scale = builtins.max(shape_of(A)[-2:]) * np.finfo(dtype_of(S)).eps if rtol is None \
            else np.asarray(rtol)[..., None]
        tol = max(S, -1, keepdims=True) * scale
    else:
        tol = np.asarray(tol)[..., None]
    return sum((S > tol).astype(np.int64), -1)


@implements(np.linalg.pinv)
def pinv(a, rcond=None, hermitian=False, *, rtol=None):
    """NumPy's: the reduced SVD with singular values at or below ``rcond`` times the
    largest dropped.  Differentiable where the rank does not change."""
    a = _matrices(a, "pinv")
    if rcond is None:           # (NumPy's default cut-off, or the relative one given)
        rcond = 1e-15 if rtol is None else rtol
    u, s, vt = svd(a, full_matrices=False)
    cutoff = np.asarray(rcond, dtype_of(s))[..., None] * max(s, -1, keepdims=True)
    large = s > cutoff
    inv_s = np.where(large, 1.0 / np.where(large, s, 1.0), 0.0)
    return matmul(np.swapaxes(vt, -1, -2), inv_s[..., None] * np.swapaxes(u, -1, -2))


@implements(np.linalg.lstsq)
def lstsq(a, b, rcond=None):
    """``(x, residuals, rank, s)`` as NumPy's: the minimum-norm least-squares solution
    (through the SVD, singular values at or below ``rcond`` times the largest dropped;
    NumPy's LAPACK ``gelsd`` gives the same up to rounding).  Under ``vmap`` the
    residuals of an m > n system are there whatever the rank (NumPy's are empty for a
    deficient rank)."""
    a, b = promote(a, b, float_result=True)
    if _ndim(a) != 2 or _ndim(b) not in (1, 2) or shape_of(b)[0] != shape_of(a)[0]:
        raise ShapeError(with_location(f"np.linalg.lstsq: a (m, n) and b (m,) or (m, k) "
                                       f"expected, got {shape_of(a)} and {shape_of(b)}"))
    m, n = shape_of(a)
    if rcond is None:
        rcond = np.finfo(dtype_of(a)).eps * builtins.max(m, n)
    x = matmul(pinv(a, rcond), b)
    s = _singular_values(a)
    # (LAPACK's rank: an int32)
    rank = matrix_rank(a, tol=None, rtol=rcond).astype(np.int32) if m and n else np.int32(0)
    # (the residuals' shape depends on the rank: ``bool`` of a traced rank records a
    # guard, so a later call of another rank is traced again; inside ``vmap`` or a loop
    # body, where one trace serves every rank, the residuals are always there)
    if m > n and (not checkable(rank) or bool(rank == n)):
        r = ops.sub(matmul(a, x), b)
        residuals = sum(ops.mul(r, r), 0)
        residuals = reshape(residuals, (1,)) if _ndim(b) == 1 else residuals
    else:
        residuals = np.zeros((0,), dtype_of(b))
    return x, residuals, rank, s


@implements(np.linalg.tensorinv)
def tensorinv(a, ind=2):
    (a,) = promote(a, float_result=True)
    old = shape_of(a)
    rows = int(np.prod(old[:ind]))
    if ind <= 0 or rows != int(np.prod(old[ind:])):
        raise ShapeError(with_location("np.linalg.tensorinv: the product of the first ind "
                                       "dimensions must equal that of the rest"))
    return reshape(inv(reshape(a, (rows, -1))), old[ind:] + old[:ind])


@implements(np.linalg.tensorsolve)
def tensorsolve(a, b, axes=None):
    a, b = promote(a, b, float_result=True)
    if axes is not None:
        nd = _ndim(a)
        rest = [k for k in range(nd) if k not in [x % nd for x in axes]]
        a = np.transpose(a, rest + [x % nd for x in axes])
    out = shape_of(a)[_ndim(b):]
    rows = int(np.prod(shape_of(b)))
    if rows != int(np.prod(out)):
        raise ShapeError(with_location("np.linalg.tensorsolve: a's trailing dimensions must "
                                       "match b's size"))
    return reshape(solve(reshape(a, (rows, -1)), ravel(b)), out)


@implements(np.linalg.outer)
def linalg_outer(x1, x2, /):
    if _ndim(x1) != 1 or _ndim(x2) != 1:
        raise ShapeError(with_location("np.linalg.outer: both inputs must be 1-D"))
    return outer(x1, x2)


@implements(np.linalg.diagonal)
def linalg_diagonal(x, /, *, offset=0):
    return diagonal(x, offset, -2, -1)


@implements(np.linalg.trace)
def linalg_trace(x, /, *, offset=0, dtype=None):
    return np.trace(x, offset, -2, -1, dtype)


@implements(np.linalg.cross)
def linalg_cross(x1, x2, /, *, axis=-1):
    if axis != -1:
        return np.cross(x1, x2, axis=axis)
    return np.cross(x1, x2)
