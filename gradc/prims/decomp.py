"""Matrix decompositions: ``cholesky``, ``eigh``, ``svd``, ``qr`` (one matrix, float).

Their derivatives are implicit in the defining equations (A = L Lᵀ, A V = V diag(w),
A = U diag(s) Vᵀ); the JVP rules below solve those equations for the tangents and are
written with gradc operations, so reverse mode (linearize + transpose) and second
derivatives follow.

* ``cholesky`` reads the lower triangle of ``A`` (as NumPy does), so the tangent used is
  ``tril(dA) + tril(dA, -1)ᵀ``; ``dL = L Φ(L⁻¹ dA L⁻ᵀ)``, Φ taking the lower triangle with
  its diagonal halved.
* ``eigh`` (lower triangle too): ``dw = diag(Vᵀ dA V)``, ``dV = V (F ⊙ Vᵀ dA V)`` with
  ``F_ij = 1/(w_j − w_i)``.
* ``svd`` (``full_matrices=False``): ``dP = Uᵀ dA V``, ``ds = diag(dP)``, and
  ``K_ij = 1/(σ_j² − σ_i²)`` couples the singular vectors (the seed's formula), plus the
  terms for the part of ``dA`` outside the span of ``U`` or ``V`` when ``A`` is not square.
* ``qr`` (reduced: ``Q`` is m×k, ``R`` k×n, k = min(m, n); LAPACK's signs, which are
  locally constant): for m ≥ n, with ``B = dA R⁻¹`` and ``C = Qᵀ B``, the upper-triangular
  ``U = triu(C) + tril(C, −1)ᵀ`` gives ``dR = U R`` and ``dQ = B − Q U`` (then ``QᵀdQ =
  C − U`` is antisymmetric and ``dQ R + Q dR = dA``).  For m < n, ``A = [X Y]`` with ``X``
  square: ``Q, R₁`` follow ``X`` as above and ``R₂ = Qᵀ Y`` gives ``dR₂ = dQᵀ Y + Qᵀ dY``.
  ``A`` (its first k columns) must have full rank: ``R⁻¹`` appears in the derivative.

Repeated eigenvalues / singular values: the vector derivatives are not defined there
(the basis of the repeated subspace is arbitrary).  gradc drops the coupling terms of
pairs closer than ``1e-9`` relative to the largest (``F_ij = K_ij = 0``): finite values,
never NaN or inf (JAX's and PyTorch's are), and the exact derivative of symmetric
functions of a repeated group's eigenvalues (``Σ g(w_i)``, the trace of a matrix
function) and of projectors onto a whole repeated subspace (checked against finite
differences).  Not of a matrix function written ``V diag(g(w)) Vᵀ``: inside a repeated
group its derivative is ``g'(w)`` times the tangent's whole block (the limit of the
divided differences), of which the dropped terms leave the diagonal only; write such a
function so that it does not go through the eigenvectors at a repeated eigenvalue.
Zero singular values of a non-square matrix are treated the same way (their ``1/σ``
terms dropped).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Primitive
from ..trace import bind

GAP = 1e-9     # relative gap under which two eigen/singular values count as repeated


def _matrix(a, name):
    if len(a.shape) != 2:
        raise ShapeError(f"{name}: expected one matrix (n, m), got shape {tuple(a.shape)} "
                         "(use gradc.vmap for a stack)")
    if np.dtype(a.dtype).kind != "f":
        raise ShapeError(f"{name}: expected a float matrix, got {a.dtype}")


def _square(a, name):
    _matrix(a, name)
    if a.shape[0] != a.shape[1]:
        raise ShapeError(f"{name}: expected a square matrix, got shape {tuple(a.shape)}")


def _lower_sym(t):
    """The symmetric matrix whose lower triangle is ``t``'s (what NumPy reads)."""
    n = np.shape(t)[-1]
    low = np.tril(np.ones((n, n), dtype=t.dtype))
    strict = np.tril(np.ones((n, n), dtype=t.dtype), -1)
    return t * low + (t * strict).T


def _coupling(vals, squared: bool):
    """``1/(v_j − v_i)`` (or of the squares) off the diagonal, 0 on it and for
    repeated values (see the module docstring)."""
    n, dtype = np.shape(vals)[0], np.dtype(vals.dtype)
    v = vals * vals if squared else vals
    diff = v[None, :] - v[:, None]
    scale = np.max(np.abs(v)) + float(np.finfo(dtype).tiny)   # (weak: vals' dtype)
    close = np.abs(diff) <= GAP * scale
    off = 1.0 - np.eye(n, dtype=dtype)          # (float64's would make a float32 dV so)
    return np.where(close, 0.0, 1.0 / np.where(close, 1.0, diff)) * off


# ---------------------------------------------------------------- cholesky

cholesky_p = Primitive("cholesky")
cholesky_p.impl = lambda a: np.linalg.cholesky(a)


def _cholesky_abstract(a):
    _square(a, "cholesky")
    return [(tuple(a.shape), a.dtype)]


def _cholesky_jvp(primals, tangents):
    from .linalg import solve
    (a,), (t,) = primals, tangents
    low = cholesky(a)
    if t is None:
        return low, None
    n = np.shape(a)[0]
    s = solve(low, solve(low, _lower_sym(t)).T).T      # L⁻¹ dA L⁻ᵀ
    phi = np.tril(np.ones((n, n), dtype=a.dtype), -1) + 0.5 * np.eye(n, dtype=a.dtype)
    return low, low @ (s * phi)


cholesky_p.abstract = _cholesky_abstract
cholesky_p.jvp = _cholesky_jvp


def cholesky(a):
    return bind(cholesky_p, a)


# ---------------------------------------------------------------- eigh

eigh_p = Primitive("eigh", multiple_results=True)
eigh_p.impl = lambda a: list(np.linalg.eigh(a))


def _eigh_abstract(a):
    _square(a, "eigh")
    return [((a.shape[0],), a.dtype), (tuple(a.shape), a.dtype)]


def _eigh_jvp(primals, tangents):
    (a,), (t,) = primals, tangents
    w, v = eigh(a)
    if t is None:
        return [w, v], [None, None]
    p = v.T @ _lower_sym(t) @ v
    return [w, v], [np.diagonal(p), v @ (_coupling(w, False) * p)]


eigh_p.abstract = _eigh_abstract
eigh_p.jvp = _eigh_jvp


def eigh(a):
    return bind(eigh_p, a)


# ---------------------------------------------------------------- svd

svd_p = Primitive("svd", multiple_results=True)
svd_p.impl = lambda a: list(np.linalg.svd(a, full_matrices=False))


def _svd_abstract(a):
    _matrix(a, "svd")
    m, n = a.shape
    k = min(m, n)
    return [((m, k), a.dtype), ((k,), a.dtype), ((k, n), a.dtype)]


def _svd_jvp(primals, tangents):
    (a,), (t,) = primals, tangents
    u, s, vt = svd(a)
    if t is None:
        return [u, s, vt], [None, None, None]
    m, n = np.shape(a)
    k = min(m, n)
    v = vt.T
    dp = u.T @ t @ v                              # k x k
    ds = np.diagonal(dp)
    f = _coupling(s, True)                        # 1/(σ_j² − σ_i²)
    big = s > GAP * (np.max(s) + np.finfo(np.float64).tiny)
    s_inv = np.where(big, 1.0 / np.where(big, s, 1.0), 0.0)
    dss = dp * s[None, :]                         # dP diag(s)
    sds = s[:, None] * dp                         # diag(s) dP
    du = u @ (f * (dss + dss.T))
    dv = v @ (f * (sds + sds.T))
    if m > k:
        dav = t @ v
        du = du + (dav - u @ (u.T @ dav)) * s_inv[None, :]
    if n > k:
        dau = t.T @ u
        dv = dv + (dau - v @ (v.T @ dau)) * s_inv[None, :]
    return [u, s, vt], [du, ds, dv.T]


svd_p.abstract = _svd_abstract
svd_p.jvp = _svd_jvp


def svd(a):
    return bind(svd_p, a)


# ---------------------------------------------------------------- qr

qr_p = Primitive("qr", multiple_results=True)
qr_p.impl = lambda a: list(np.linalg.qr(a))


def _qr_abstract(a):
    _matrix(a, "qr")
    m, n = a.shape
    k = min(m, n)
    return [((m, k), a.dtype), ((k, n), a.dtype)]


def _qr_jvp(primals, tangents):
    from .linalg import solve
    (a,), (t,) = primals, tangents
    q, r = qr(a)
    if t is None:
        return [q, r], [None, None]
    m, n = np.shape(a)
    k = min(m, n)
    r1, t1 = (r, t) if m >= n else (r[:, :k], t[:, :k])
    b = solve(r1.T, t1.T).T                       # dA R⁻¹  (m x k)
    c = q.T @ b
    strict = np.tril(np.ones((k, k), dtype=a.dtype), -1)
    up = c * (1.0 - strict) + (c * strict).T      # triu(C) + tril(C, -1)ᵀ
    dq = b - q @ up
    dr = up @ r1
    if m < n:
        y, dy = a[:, k:], t[:, k:]
        dr = np.concatenate([dr, dq.T @ y + q.T @ dy], axis=1)
    return [q, r], [dq, dr]


qr_p.abstract = _qr_abstract
qr_p.jvp = _qr_jvp


def qr(a):
    return bind(qr_p, a)
