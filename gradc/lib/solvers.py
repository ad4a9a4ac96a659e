"""Linear solvers written with gradc operations: ``cg``, ``gmres``, ``bicgstab``, ``dense``.

Each takes ``matvec`` (a function ``v -> A v``, linear) and ``b`` and returns ``x`` with
``A x = b`` (``(A + ridge·I) x = b`` with ``ridge``).  They are ordinary traceable code
(``while_loop`` iterations), so they compile with the rest of a derivative; the implicit
rules (``prims.implicit``) call them through a ``Method``, which names the algorithm and
its settings and prints as, e.g., ``gmres(tol=1e-10)``.

The iterative methods work on ``b`` flattened to a vector, stop when the residual is
below ``tol`` relative to ``|b|`` or after ``maxiter`` matrix-vector products, and then
*report*: a warning (``gradc.ConvergenceWarning``) when they stopped at the limit above
both ``tol`` and what the precision allows (ten times eps (|A| |x| + |b|), see
``_goal2``), an error when the iteration broke down (a NaN or infinite residual: a
singular or, for CG, an indefinite system), suggesting ``ridge=``.  ``dense``
materialises ``A`` with one batched matvec over the identity and calls LAPACK (a
singular ``A`` is a clear error).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError, with_location
from ..prims.implicit import report
from ..prims.loops import cond, fori_loop, while_loop

METHODS = ("cg", "gmres", "bicgstab", "dense")


@dataclass(frozen=True)
class Method:
    """A linear-solve algorithm and its settings; ``method(matvec, b) -> x``."""
    name: str = "bicgstab"
    tol: float = 1e-10
    maxiter: int | None = None      # matrix-vector products (default: 10 n, at least 100)
    ridge: float = 0.0
    restart: int = 50               # GMRES: Krylov vectors per cycle (memory: restart x n)

    def __post_init__(self):
        if self.name not in METHODS:
            raise ArgumentError(with_location(
                f"solve={self.name!r} is not one of {', '.join(map(repr, METHODS))} "
                "(or a function solve(matvec, b))"))
        if not self.tol > 0 or self.ridge < 0:
            raise ArgumentError(with_location(
                f"solve={self.name!r}: tol must be > 0 and ridge >= 0 (got tol={self.tol}, "
                f"ridge={self.ridge})"))

    @property
    def symmetric(self) -> bool:
        """Whether the method needs a symmetric matrix (its transpose is itself)."""
        return self.name == "cg"

    def __call__(self, matvec, b):
        shape = np.shape(b)
        n = int(np.prod(shape, dtype=np.int64))

        def mv(v):
            out = np.reshape(matvec(np.reshape(v, shape)), (n,))
            return out + self.ridge * v if self.ridge else out

        solver = {"cg": _cg, "gmres": _gmres, "bicgstab": _bicgstab, "dense": _dense}[self.name]
        maxiter = self.maxiter or max(10 * n, 100)
        return np.reshape(solver(self, mv, np.reshape(b, (n,)), n, maxiter), shape)

    def __str__(self):
        parts = [f"tol={self.tol:g}"] if self.name != "dense" else []
        if self.maxiter:
            parts.append(f"maxiter={self.maxiter}")
        if self.ridge:
            parts.append(f"ridge={self.ridge:g}")
        return f"{self.name}({', '.join(parts)})"


class UserSolve:
    """A user's ``solve(matvec, b)`` (``linear_solve``, ``custom_root``'s
    ``tangent_solve``) with the attributes the rules read."""

    def __init__(self, fn, symmetric=False):
        self.fn, self.symmetric = fn, bool(symmetric)

    def __call__(self, matvec, b):
        x = self.fn(matvec, b)
        solved_check(matvec(x) - b, b, f"linear_solve: the solve function {self}")
        return x

    def __str__(self):
        return f"python:{getattr(self.fn, '__qualname__', type(self.fn).__name__)}"


def solved_check(residual, scale, what: str) -> None:
    """A warning at run time (``report``) unless ``|residual|`` is within √eps of
    ``|scale|``: a user's solve whose result does not solve its equation (one Newton step,
    a wrong formula) would otherwise give derivatives silently taken as if it did."""
    r, s = np.ravel(residual), np.ravel(scale)
    eps = np.finfo(r.dtype if r.dtype.kind == "f" else np.float64).eps
    rn, sn = np.sqrt(np.dot(r, r)), np.sqrt(np.dot(s, s))
    report(rn <= np.sqrt(eps) * sn, rn / np.maximum(sn, np.finfo(rn.dtype).tiny), what=what)


def as_method(solve, tol=1e-10, maxiter=None, ridge=0.0, symmetric=False):
    """``solve`` (a method name, a ``Method`` or a function) as a callable solve."""
    if isinstance(solve, (Method, UserSolve)):
        return solve
    if isinstance(solve, str):
        try:
            tol, ridge = float(tol), float(ridge)
            maxiter = None if maxiter is None else operator.index(maxiter)
        except (TypeError, ValueError):
            raise ArgumentError(with_location(
                f"solve={solve!r}: tol and ridge are numbers and maxiter an int (or None), "
                f"got tol={tol!r}, ridge={ridge!r}, maxiter={maxiter!r}")) from None
        if maxiter is not None and maxiter < 1:     # (0 read as "the default")
            raise ArgumentError(with_location(
                f"solve={solve!r}: maxiter is a count of matrix-vector products, >= 1 (or "
                f"None for the default), got {maxiter}"))
        return Method(solve, tol, maxiter, ridge)
    if callable(solve):
        return UserSolve(solve, symmetric)
    raise ArgumentError(with_location(
        f"solve must be one of {', '.join(map(repr, METHODS))} or a function "
        f"solve(matvec, b), got {solve!r}"))


def _norm2(v):
    return np.dot(v, v)


def reachable(tol, dtype) -> float:
    """``tol``, or the smallest relative residual ``dtype``'s arithmetic reaches where it
    is below that (the default 1e-10 in float32: about 1e-6), so that a float32 solve
    is not reported unconverged at every call."""
    dtype = np.dtype(dtype)
    return max(float(tol), 10 * float(np.finfo(dtype).eps)) if dtype.kind == "f" else tol


def _goal2(method, dtype, bb, an2, xx):
    """The squared residual below which a solve is reported converged: ``tol`` relative
    to ``|b|``, or ten times what ``dtype``'s arithmetic can reach, whichever is larger.
    Rounding leaves a residual of about eps (|A| |x| + |b|) however many steps are taken
    (the normwise backward error: Higham, *Accuracy and Stability of Numerical
    Algorithms*, 7.1), which in float32 is above 1e-10 |b| for any system and above
    10 eps |b| for an ill-conditioned one: a BiCGSTAB solve of a system of condition 100
    stalled at 3e-6 relative and warned at every call.  ``an2`` is |A|² estimated from
    below: the largest |A p|² / |p|² of the iteration's products.  The floor is at
    most sqrt(eps) |b|: on a singular system an enormous ``x`` has a small backward
    error and would pass (GMRES returned 4e15 for an inconsistent 2 x 2 system).  (The
    iterations still stop at ``reachable``: stopping at this floor cost float32
    gradients up to 40x their accuracy at condition 1000.)"""
    eps = float(np.finfo(dtype).eps)
    floor = np.minimum(10 * eps * (np.sqrt(an2 * xx) + np.sqrt(bb)), np.sqrt(eps * bb))
    return np.maximum(float(method.tol) ** 2 * bb, floor * floor)


def _gain2(av, v):
    """|A v|² / |v|² (0 for v = 0): a lower bound of |A|²."""
    vv = _norm2(v)
    return _norm2(av) / np.where(vv > 0, vv, 1.0)


def _check(method, residual2, goal2, bb, maxiter):
    """The report: a warning when the residual is above ``goal2``."""
    rel = np.sqrt(residual2 / np.maximum(bb, np.finfo(np.float64).tiny))
    report(residual2 <= goal2, rel, what=f"{method} after at most {maxiter} matvecs")


def _cg(method, mv, b, n, maxiter):
    bb = _norm2(b)
    goal = reachable(method.tol, b.dtype) ** 2 * bb
    x0 = np.zeros_like(b)
    zero = np.zeros((), b.dtype)
    state = (x0, b, b, bb, np.int64(0), zero)         # (x0 = 0: the residual is b)

    def go(s):
        return (s[4] < maxiter) & (s[3] > goal)

    def step(s):
        x, r, p, rr, k, an2 = s
        ap = mv(p)
        alpha = rr / np.dot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _norm2(r)
        an2 = np.maximum(an2, _gain2(ap, p))
        return x, r, r + (rr_new / rr) * p, rr_new, k + 1, an2

    x, _, _, _, _, an2 = while_loop(go, step, state)
    # (the true residual: the recursion's drifts below it in float32)
    _check(method, _norm2(b - mv(x)), _goal2(method, b.dtype, bb, an2, _norm2(x)), bb,
           maxiter)
    return x


def _bicgstab(method, mv, b, n, maxiter):
    bb = _norm2(b)
    goal = reachable(method.tol, b.dtype) ** 2 * bb
    r0 = b                                      # (x0 = 0: the residual is b)
    one, zero = np.ones((), b.dtype), np.zeros((), b.dtype)
    eps = float(np.finfo(b.dtype).eps)
    # (a fixed vector of b's size, mixed into the shadow residual at a restart)
    pattern = np.cos(2.399963 * np.cumsum(np.ones_like(b)))
    state = (np.zeros_like(b), r0, np.zeros_like(b), np.zeros_like(b), one, one, one, bb,
             np.int64(0), r0, zero)

    def go(s):
        return (s[8] < maxiter) & (s[7] > goal)

    def step(s):
        x, r, p, v, rho, alpha, omega, rr, k, shadow, an2 = s
        # breakdown: omega = 0 (the half step's residual orthogonal to its image, as a
        # symmetric indefinite system such as a KKT matrix makes of r0 = b) or rho = 0
        # (the residual orthogonal to the shadow).  Restart from x, the shadow residual
        # r mixed with the pattern (r alone would break down again: rᵀ A r = 0)
        restart = (omega == 0) | (np.dot(shadow, r) == 0)
        shadow = np.where(restart, r + np.sqrt(rr / n) * pattern, shadow)
        rho_new = np.dot(shadow, r)
        rho, alpha, omega = (np.where(restart, one, q) for q in (rho, alpha, omega))
        p, v = (np.where(restart, np.zeros_like(b), q) for q in (p, v))
        beta = (rho_new / rho) * (alpha / omega)
        p = r + beta * (p - omega * v)
        v = mv(p)
        # breakdown: the shadow orthogonal to A p, to rounding (a saddle-point system such
        # as a KKT matrix, with b in its constraint rows alone: bᵀ A b = 0).  No step:
        # alpha = omega = 0 keep x and r, and omega = 0 restarts at the next step
        sv = np.dot(shadow, v)
        lost = np.abs(sv) <= n * eps * np.sqrt(_norm2(shadow) * _norm2(v))
        alpha = np.where(lost, zero, rho_new / np.where(lost, one, sv))
        h = x + alpha * p
        s_ = r - alpha * v
        t = mv(s_)
        # s_ = 0 when the half step solved the system exactly (a small system, or a lucky
        # rounding): then t = 0 too, and omega = 0 keeps x = h and r = 0 instead of 0/0
        tt = np.dot(t, t)
        omega = np.where(lost, zero, np.dot(t, s_) / np.where(tt > 0, tt, one))
        x = h + omega * s_
        r = s_ - omega * t
        an2 = np.maximum(an2, np.maximum(_gain2(v, p), _gain2(t, s_)))
        return x, r, p, v, rho_new, alpha, omega, _norm2(r), k + 2, shadow, an2

    out = while_loop(go, step, state)
    x, an2 = out[0], out[10]
    _check(method, _norm2(b - mv(x)), _goal2(method, b.dtype, bb, an2, _norm2(x)),
           bb, maxiter)
    return x


def _gmres(method, mv, b, n, maxiter):
    """Restarted GMRES(m) (Saad and Schultz): Arnoldi with classical Gram-Schmidt (two
    products with the basis) repeated when it lost more than ~30% of the vector's norm
    (the criterion of Daniel, Gragg, Kaufman and Stewart: "twice is enough"), the
    Hessenberg matrix reduced by Givens rotations as it grows (so the residual norm is
    known at every step without forming ``x``), a cycle ending at ``m`` steps or at the
    tolerance, then the small triangular solve and a restart from the true residual."""
    m = max(1, min(method.restart, n, max(10, (1 << 24) // n)))   # basis <= 128 MiB f64
    dt = b.dtype
    bb = _norm2(b)
    goal = reachable(method.tol, dt) * np.sqrt(bb)
    rows, cols = np.arange(m + 1), np.arange(m)

    def cycle(s):
        x, r, rr, k, an2 = s
        beta = np.sqrt(rr)
        V = np.concatenate([np.reshape(r / beta, (1, n)), np.zeros((m, n), dt)])
        g = np.concatenate([np.reshape(beta, (1,)), np.zeros(m, dt)])

        def step(t):
            V, R, g, cs, sn, j, res, an2 = t
            w = mv(V[j])
            before = _norm2(w)                 # (|A v|², |v| = 1)
            h = V @ w
            w = w - V.T @ h

            def again(w, h):
                h2 = V @ w
                return w - V.T @ h2, h + h2

            hn2 = _norm2(w)
            w, h = cond(hn2 < 0.5 * before, again, lambda w, h: (w, h), w, h)
            hn = np.sqrt(_norm2(w))
            h = h * (rows <= j)
            h[j + 1] = hn
            V[j + 1] = w / np.where(hn > 0, hn, 1.0)

            def rotate(i, h):                  # the rotations of the earlier columns
                a, c = h[i], h[i + 1]
                h[i] = cs[i] * a + sn[i] * c
                h[i + 1] = cs[i] * c - sn[i] * a
                return h

            h = fori_loop(0, j, rotate, h)
            a, c = h[j], h[j + 1]
            rad = np.sqrt(a * a + c * c)
            safe = np.where(rad > 0, rad, 1.0)
            cj, sj = np.where(rad > 0, a / safe, 1.0), np.where(rad > 0, c / safe, 0.0)
            h[j] = rad
            h[j + 1] = 0.0
            gj = g[j]
            g[j] = cj * gj
            g[j + 1] = -sj * gj
            R[:, j] = h
            cs[j] = cj
            sn[j] = sj
            return V, R, g, cs, sn, j + 1, np.abs(sj * gj), np.maximum(an2, before)

        def more(t):
            return (t[5] < m) & (t[6] > goal) & (k + t[5] < maxiter)

        init = (V, np.zeros((m + 1, m), dt), g, np.ones(m, dt), np.zeros(m, dt), np.int64(0),
                beta, an2)
        V, R, g, _, _, j, _, an2 = while_loop(more, step, init)
        used = cols < j                        # solve the leading j x j triangle
        # (a zero on its diagonal: A singular on the Krylov space, an inconsistent
        # singular system: that direction is left out, and the cycles stall until the
        # report names it, rather than LAPACK's "singular matrix" from inside GMRES)
        T = R[:m] * used[None, :] * used[:, None]
        zero = np.diagonal(T) == 0
        T = T + np.diag(zero.astype(dt))
        y = np.linalg.solve(T, g[:m] * used * ~zero)
        x = x + V[:m].T @ y
        r = b - mv(x)
        return x, r, _norm2(r), k + j + 1, an2

    def go(s):
        return (s[3] < maxiter) & (s[2] > goal * goal)

    x, _, rr, _, an2 = while_loop(go, cycle, (np.zeros_like(b), b, bb, np.int64(0),
                                              np.zeros((), dt)))
    _check(method, rr, _goal2(method, dt, bb, an2, _norm2(x)), bb, maxiter)
    return x


def _dense(method, mv, b, n, maxiter):
    from ..api import vmap
    eye = np.eye(n, dtype=b.dtype)
    A = vmap(mv)(eye).T         # row i of vmap(mv)(eye) is A e_i, column i of A
    return np.linalg.solve(A, b)
