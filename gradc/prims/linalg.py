"""Linear-algebra primitives: einsum (two operands, the one contraction primitive),
solve, det, slogdet, cofactor (det's gradient).

``einsum`` is bilinear.  Its operands never repeat an index and every index of an
operand appears in the other operand or in the output (the NumPy layer sums such
indices out first), so each transpose is again such an ``einsum``.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Primitive
from ..trace import bind
from .rules import defbilinear, is_undefined

# ---------------------------------------------------------------- einsum

einsum_p = Primitive("einsum")
einsum_p.impl = lambda a, b, spec: np.einsum(spec, a, b, optimize=True)


def parse_spec(spec: str):
    ins, out = spec.split("->")
    a, b = ins.split(",")
    return a, b, out


def _einsum_abstract(a, b, spec):
    sa, sb, so = parse_spec(spec)
    sizes: dict = {}
    for letters, shape in ((sa, a.shape), (sb, b.shape)):
        if len(letters) != len(shape) or len(set(letters)) != len(letters):
            raise ShapeError(f"einsum {spec!r}: operand of shape {tuple(shape)} does not fit "
                             f"{letters!r}")
        for c, d in zip(letters, shape):
            if sizes.setdefault(c, d) != d:
                raise ShapeError(f"einsum {spec!r}: index {c!r} has sizes {sizes[c]} and {d} "
                                 f"(operands {tuple(a.shape)} and {tuple(b.shape)})")
    for c in sa + sb:
        if c not in so and (c not in sa or c not in sb):
            raise ShapeError(f"einsum {spec!r}: index {c!r} must be summed before einsum")
    if np.dtype(a.dtype) != np.dtype(b.dtype):
        raise DTypeError(f"einsum {spec!r}: operand dtypes differ")
    return [(tuple(sizes[c] for c in so), a.dtype)]


einsum_p.abstract = _einsum_abstract
# z = Σ a b:  ct_a = Σ ct b (contract over what a lacks),  ct_b = Σ a ct
defbilinear(einsum_p,
            lambda ct, a, b, spec: einsum2(f"{parse_spec(spec)[2]},{parse_spec(spec)[1]}"
                                           f"->{parse_spec(spec)[0]}", ct, b),
            lambda ct, a, b, spec: einsum2(f"{parse_spec(spec)[0]},{parse_spec(spec)[2]}"
                                           f"->{parse_spec(spec)[1]}", a, ct))


def einsum2(spec, a, b):
    return bind(einsum_p, a, b, spec=spec)


def _batch_letters(nbatch):
    return "".join(chr(ord("A") + i) for i in range(nbatch))


def matmul2(a, b):
    """a @ b for a (..., n, k) and b (..., k, m) with equal batch dims, or b (k,)."""
    nb = len(np.shape(a)) - 2
    batch = _batch_letters(nb)
    if len(np.shape(b)) == 1:
        return einsum2(f"{batch}ij,j->{batch}i", a, b)
    return einsum2(f"{batch}ij,{batch}jk->{batch}ik", a, b)


def _swap_last(x):
    from .shape import transpose
    n = len(np.shape(x))
    return transpose(x, tuple(range(n - 2)) + (n - 1, n - 2))


def _trace_last(x):
    """Σ_i x[..., i, i]."""
    from . import elementwise as ew
    from .reduce import reduce_sum
    n = np.shape(x)[-1]
    eye = np.eye(n, dtype=x.dtype)
    return reduce_sum(ew.mul(x, np.broadcast_to(eye, np.shape(x))), (-2, -1))


# ---------------------------------------------------------------- solve

solve_p = Primitive("solve")


def _solve_impl(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if b.ndim == 1:
        return np.linalg.solve(a, b)
    return np.linalg.solve(a, b)


def _solve_abstract(a, b):
    if len(a.shape) < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"solve: the matrix must be square (..., n, n), got {tuple(a.shape)}")
    n = a.shape[-1]
    if len(b.shape) == 1:
        if len(a.shape) != 2 or b.shape[0] != n:
            raise ShapeError(f"solve: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit")
    elif tuple(b.shape[:-2]) != tuple(a.shape[:-2]) or b.shape[-2] != n:
        raise ShapeError(f"solve: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit")
    if np.dtype(a.dtype) != np.dtype(b.dtype):
        raise DTypeError("solve: operand dtypes differ")
    return [(tuple(b.shape), b.dtype)]


def _solve_jvp(primals, tangents):
    # A y = b  =>  A dy = db - dA y
    from . import elementwise as ew
    a, b = primals
    ta, tb = tangents
    y = solve(a, b)
    rhs = tb
    if ta is not None:
        day = matmul2(ta, y)
        rhs = ew.neg(day) if rhs is None else ew.sub(rhs, day)
    return y, None if rhs is None else solve(a, rhs)


def _solve_transpose(ct, a, b):
    # linear in b only: ct_b = A⁻ᵀ ct
    if is_undefined(a):
        raise ValueError("solve is not linear in its matrix")
    return [None, solve(_swap_last(a), ct)]


solve_p.impl = _solve_impl
solve_p.abstract = _solve_abstract
solve_p.jvp = _solve_jvp
solve_p.transpose = _solve_transpose


def solve(a, b):
    return bind(solve_p, a, b)


# ---------------------------------------------------------------- det, slogdet

det_p = Primitive("det")
det_p.impl = lambda a: np.linalg.det(a)


def _check_square(a):
    if len(a.shape) < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"expected square matrices (..., n, n), got {tuple(a.shape)}")


def _square_abstract(a):
    _check_square(a)
    return [(tuple(a.shape[:-2]), a.dtype)]


def _det_jvp(primals, tangents):
    # d det A = tr(adj(A) dA) = Σ cof(A) ∘ dA: defined at singular A too (rank n − 1
    # gives the adjugate's rank-one matrix; det A · A⁻¹ would divide by zero)
    from . import elementwise as ew
    from .reduce import reduce_sum
    (a,), (t,) = primals, tangents
    d = det(a)
    return d, None if t is None else reduce_sum(ew.mul(cofactor(a), t), (-2, -1))


det_p.abstract = _square_abstract
det_p.jvp = _det_jvp


def det(a):
    return bind(det_p, a)


# ---------------------------------------------------------------- cofactor

cofactor_p = Primitive("cofactor")


def cofactor_matrix(a):
    """The cofactor matrix adj(A)ᵀ of each matrix of ``a`` (..., n, n), the gradient of
    ``det``: det A · A⁻ᵀ where det A ≠ 0, else from the SVD A = U S Vᵀ,
    adj(A) = det U det V · V diag(Π_{j≠i} s_j) Uᵀ (NumPy; the CPU kernel computes the
    same, ``kernels.cofactor_batched``)."""
    a = np.asarray(a)
    out = np.empty(a.shape, a.dtype)
    flat, cof = a.reshape((-1,) + a.shape[-2:]), out.reshape((-1,) + a.shape[-2:])
    for i, m in enumerate(flat):
        d = np.linalg.det(m)
        if d != 0 and np.isfinite(d):
            cof[i] = d * np.linalg.inv(m).T
        elif not np.all(np.isfinite(m)):
            cof[i] = np.nan
        else:
            u, s, vt = np.linalg.svd(m)
            others = np.array([np.prod(np.delete(s, k)) for k in range(len(s))], s.dtype)
            cof[i] = (np.linalg.det(u) * np.linalg.det(vt)) * (u * others) @ vt
    return out


def _cofactor_abstract(a):
    _check_square(a)
    return [(tuple(a.shape), a.dtype)]


def _cofactor_jvp(primals, tangents):
    # C = det A · A⁻ᵀ:  dC = C tr(A⁻¹ dA) − A⁻ᵀ dAᵀ C   (A invertible: second derivatives
    # of det at a singular matrix raise solve's error)
    from . import elementwise as ew
    from .shape import broadcast_in_dim
    (a,), (t,) = primals, tangents
    c = cofactor(a)
    if t is None:
        return c, None
    n = len(np.shape(a))
    tr = broadcast_in_dim(_trace_last(solve(a, t)), tuple(np.shape(a)), tuple(range(n - 2)))
    return c, ew.sub(ew.mul(c, tr), solve(_swap_last(a), matmul2(_swap_last(t), c)))


cofactor_p.impl = cofactor_matrix
cofactor_p.abstract = _cofactor_abstract
cofactor_p.jvp = _cofactor_jvp


def cofactor(a):
    return bind(cofactor_p, a)


slogdet_p = Primitive("slogdet", multiple_results=True)
slogdet_p.impl = lambda a: list(np.linalg.slogdet(a))
slogdet_p.abstract = lambda a: _square_abstract(a) * 2


def _slogdet_jvp(primals, tangents):
    # d log|det A| = tr(A⁻¹ dA); the sign is piecewise constant
    (a,), (t,) = primals, tangents
    sign, logabs = slogdet(a)
    return [sign, logabs], [None, None if t is None else _trace_last(solve(a, t))]


slogdet_p.jvp = _slogdet_jvp


def slogdet(a):
    return bind(slogdet_p, a)
