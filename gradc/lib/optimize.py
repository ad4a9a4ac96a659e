"""``gradc.argmin``: smooth minimisation differentiated through its optimality conditions.

Unconstrained: ``y = argmin f(y, θ)`` satisfies ``∇_y f(y, θ) = 0``; its derivative
solves with the Hessian ``∇²_yy f`` (matrix-free Hessian-vector products, CG by default).

Constrained (``constraints={"eq": h, "ineq": g}`` with ``h(y, *params) = 0`` and
``g(y, *params) <= 0``, each returning a vector, a scalar (one constraint) or an array
(raveled)): the KKT point ``z = (y, ν, λ)`` solves

    ∇_y f + J_hᵀ ν + J_gᵀ λ = 0,    h(y) = 0,    λ ⊙ g(y) = 0,

and those conditions are the optimality function (OptNet's differentiation of a QP;
BiCGSTAB by default, the KKT matrix being unsymmetric).  A constraint whose multiplier
is 0 counts as inactive (``dλ = 0``), also one exactly at its boundary with no force
(``g = λ = 0``, where the derivative is one-sided and the KKT matrix singular): its
derivative is that of the directions that keep it inactive.  The forward solve runs SciPy on
NumPy values (L-BFGS-B, or SLSQP with constraints, each with gradc's compiled gradients),
estimates the multipliers from the active constraints, and polishes ``z`` with Newton
steps on the KKT conditions, so the point the derivative is taken at solves them to
rounding.  The solver is a ``PyCallback``: it is never traced.
"""
from __future__ import annotations

import numpy as np

from ..errors import ArgumentError, with_location
from ..prims.implicit import ConvergenceWarning, PyCallback, warn_at
from ..pytree import flatten, unflatten
from ..trace import is_tracer, report_location
from .solvers import as_method, reachable


def _check_constraints(constraints) -> None:
    """An ``ArgumentError`` naming the user's line unless ``constraints`` is None or a
    dict of 'eq' and 'ineq' functions (a list, or a number in place of a function, gave
    Python's TypeError from inside the solver)."""
    form = ("constraints={'eq': h, 'ineq': g}, functions with h(x, *params) = 0 and "
            "g(x, *params) <= 0 at the solution (either may be left out)")
    if constraints is None:
        return
    if not isinstance(constraints, dict):
        raise ArgumentError(with_location(
            f"argmin: constraints must be a dict, {form}; got a {type(constraints).__name__}"))
    unknown = set(constraints) - {"eq", "ineq"}
    if unknown:
        raise ArgumentError(with_location(
            f"argmin: constraints takes 'eq' (h(x, *params) = 0) and 'ineq' "
            f"(g(x, *params) <= 0), not {sorted(unknown)}"))
    for key, fn in constraints.items():
        if fn is not None and not callable(fn):
            raise ArgumentError(with_location(
                f"argmin: constraints[{key!r}] must be a function of (x, *params), {form}; "
                f"got {type(fn).__name__} {fn!r}"[:400]))


def minimize(objective, x0, params, constraints, tol, maxiter, solve, ridge, root):
    from ..implicit import _aval
    aval = _aval(x0, "argmin: x0")
    _check_constraints(constraints)
    shape, size = aval[0], int(np.prod(aval[0], dtype=np.int64))
    if shape != (size,):    # (a scalar, a matrix: solved as a vector, given back its shape)
        def shaped(fn):
            return fn if not callable(fn) else (
                lambda y, *ps: fn(np.reshape(y, shape), *ps))
        constraints = constraints if not isinstance(constraints, dict) else {
            k: shaped(v) for k, v in constraints.items()}
        x0 = np.reshape(x0 if is_tracer(x0) else np.asarray(x0, aval[1]), (size,))
        return np.reshape(minimize(shaped(objective), x0, params, constraints, tol, maxiter,
                                   solve, ridge, root), shape)
    leaves, tree = flatten(list(params))
    leaves = [p if is_tracer(p) else np.asarray(p) for p in leaves]

    def f(y, ps):
        return objective(y, *unflatten(tree, list(ps)))

    out = _shape_of_result(f, aval, leaves, x0)
    if out != ():
        raise ArgumentError(with_location(
            f"argmin: the objective must return a scalar, got shape {out} (sum it, or "
            "give the constraints as constraints={'eq': ..., 'ineq': ...})"))
    constraints = dict(constraints or {})
    eq, ineq = constraints.get("eq"), constraints.get("ineq")
    leaves, tree, objective, eq, ineq = _reads_as_params(aval, leaves, tree, objective, eq,
                                                         ineq)

    def f(y, ps):
        return objective(y, *unflatten(tree, list(ps)))

    if eq is None and ineq is None:
        return _unconstrained(f, x0, leaves, aval, tol, maxiter, solve, ridge, root)
    return _constrained(f, eq, ineq, tree, x0, leaves, aval, tol, maxiter, solve, ridge,
                        root)


def _reads_as_params(aval, leaves, tree, *fns):
    """``leaves, tree, *fns`` where the functions ``fn(y, *params)`` read no traced value
    from outside: the solver runs them on NumPy values, so what they read (a closure over
    an argument being differentiated, ``lambda x: x @ Q @ x`` in ``grad`` w.r.t. ``Q``)
    becomes more parameters, each function a Graph of ``y`` and all of them.  Unchanged
    when none reads any."""
    from ..interpret import eval_graph
    from ..trace import dtype_of, shape_of, trace_graph
    avals = [aval] + [(tuple(shape_of(p)), np.dtype(dtype_of(p))) for p in leaves]
    traced = []
    for fn in fns:
        if fn is not None:
            graph, _, captured = trace_graph(
                lambda y, *ps, fn=fn: [fn(y, *unflatten(tree, list(ps)))], avals)
            fn = (graph, list(captured))
        traced.append(fn)
    seen, everything = {id(p) for p in leaves}, list(leaves)
    for fn in traced:
        for x in fn[1] if fn else ():
            if id(x) not in seen:
                seen.add(id(x))
                everything.append(x)
    if len(everything) == len(leaves):
        return (leaves, tree) + fns
    position = {id(x): i for i, x in enumerate(everything)}

    def closed(graph, captured):
        n, picks = len(leaves), [position[id(x)] for x in captured]

        def fn(y, *ps):
            return eval_graph(graph, [y, *ps[:n], *(ps[i] for i in picks)])[0]
        return fn
    return (everything, flatten(everything)[1]) + tuple(
        None if fn is None else closed(*fn) for fn in traced)


def _shape_of_result(fn, aval, leaves, x0) -> tuple:
    """The shape of ``fn(y, params)``, by a trace: at the values of ``x0`` and the
    parameters where they have them (Python branches on them work), by shapes alone
    where not (inside a scan)."""
    from ..trace import dtype_of, shape_of, trace_graph
    avals = [aval] + [(tuple(shape_of(p)), np.dtype(dtype_of(p))) for p in leaves]
    values = [getattr(v, "val", v) for v in [x0] + list(leaves)]
    if any(v is None for v in values):
        values = None
    else:
        values = [np.asarray(v, dtype=a[1]) for v, a in zip(values, avals)]
    graph, _, _ = trace_graph(lambda y, *ps: [fn(y, tuple(ps))], avals, values)
    return tuple(graph.outputs[0].shape)


def _grad_y(f):
    from ..api import grad
    return grad(lambda y, ps: f(y, ps))


def _unconstrained(f, x0, leaves, aval, tol, maxiter, solve, ridge, root):
    from ..api import jvp, value_and_grad
    where = report_location()      # (its warnings come at run time, from a callback)
    vg = value_and_grad(lambda y, ps: f(y, ps))
    grad_y = _grad_y(f)
    dtype = aval[1]

    def hvp(y, v, ps):       # one function object: compiled once, not per call
        zeros = tuple(np.zeros_like(p) for p in ps)
        return jvp(grad_y, (y, ps), (v, zeros))[1]

    def solver(y0, *ps):
        import scipy.optimize
        ps = tuple(ps)

        def fun(y):
            v, g = vg(y.astype(dtype), ps)
            return float(v), np.asarray(g, np.float64)

        start = np.asarray(y0, np.float64)
        # (the gradient's scale: its size at the start; relative to |y| instead, a run
        # off to infinity on an unbounded objective passed for converged)
        scale = max(1.0, float(np.linalg.norm(fun(start)[1])))
        res = scipy.optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                                      options=dict(maxiter=maxiter, gtol=tol, ftol=0.0))
        y = res.x
        for _ in range(3):         # Newton polish: H d = -g by CG on Hessian-vector products
            g = fun(y)[1]
            if np.linalg.norm(g) <= tol * scale or not np.all(np.isfinite(y)):
                break
            import scipy.sparse.linalg as sla
            op = sla.LinearOperator((y.size, y.size), dtype=np.float64, matvec=lambda v: np.asarray(
                hvp(y.astype(dtype), v.astype(dtype), ps), np.float64))
            with np.errstate(all="ignore"):
                d, _ = sla.cg(op, -g, rtol=1e-12, maxiter=10 * y.size)
            trial = y + d
            if not (np.all(np.isfinite(trial))
                    and np.linalg.norm(fun(trial)[1]) < np.linalg.norm(g)):
                break               # (a flat or unbounded direction: keep L-BFGS-B's)
            y = trial
        g = fun(y)[1]
        if not np.linalg.norm(g) <= reachable(max(tol, 1e-8), dtype) * scale:
            hint = ("; the objective may be unbounded below (|x| grew to "
                    f"{np.linalg.norm(y):.3g})" if not np.linalg.norm(y) < 1e6 * max(
                        1.0, np.linalg.norm(start)) else "")
            warn_at(ConvergenceWarning(with_location(
                f"gradc: argmin did not converge (|gradient| {np.linalg.norm(g):.3g}, "
                f"{np.linalg.norm(fun(start)[1]):.3g} at the start; {res.message}){hint}",
                where)), where)
        return y.astype(dtype)

    return root("argmin", PyCallback(solver, aval[0], dtype, "argmin(L-BFGS-B)"),
                lambda y, *ps: grad_y(y, tuple(ps)), x0, leaves,
                as_method(solve or "cg", tol, None, ridge), aval)


def _constrained(f, eq, ineq, tree, x0, leaves, aval, tol, maxiter, solve, ridge, root):
    from ..api import grad, jit, value_and_grad
    from ..jacobians import jacfwd
    where = report_location()
    n, dtype = aval[0][0], aval[1]

    def user(fn):
        # (a scalar constraint is a vector of one; an array's constraints, raveled)
        if fn is None:
            return None
        return lambda y, ps: np.reshape(fn(y, *unflatten(tree, list(ps))), (-1,))

    h, g = user(eq), user(ineq)
    # (how many constraints: from shapes alone, so inside a scan too)
    m_eq = 0 if h is None else int(np.prod(_shape_of_result(h, aval, leaves, x0)))
    m_in = 0 if g is None else int(np.prod(_shape_of_result(g, aval, leaves, x0)))

    def split(z):
        return z[:n], z[n:n + m_eq], z[n + m_eq:]

    def lagrangian(y, nu, lam, ps):
        total = f(y, ps)
        if m_eq:
            total = total + np.dot(nu, h(y, ps))
        if m_in:
            total = total + np.dot(lam, g(y, ps))
        return total

    grad_l = grad(lagrangian)

    def kkt(z, *ps):
        y, nu, lam = split(z)
        parts = [grad_l(y, nu, lam, tuple(ps))]
        if m_eq:
            parts.append(h(y, tuple(ps)))
        if m_in:
            # λ ⊙ g = 0; a multiplier of exactly 0 (the solver's for an inactive
            # constraint, or one active with no force, g = λ = 0, whose row λ ∇g dy + g dλ
            # would be 0: a singular system) counts as inactive, dλ = 0, with the same value
            parts.append(lam * (g(y, tuple(ps)) - (lam == 0)))
        return np.concatenate(parts)

    vg = value_and_grad(lambda y, ps: f(y, ps))
    jh = None if h is None else jacfwd(h)
    jg = None if g is None else jacfwd(g)
    kkt_jac = jacfwd(kkt)
    kkt_jit = jit(kkt)

    def solver(z0, *ps):
        import scipy.optimize
        ps = tuple(ps)
        cons = []
        if m_eq:
            cons.append(dict(type="eq", fun=lambda y: np.asarray(h(y, ps), np.float64),
                             jac=lambda y: np.asarray(jh(y, ps), np.float64)))
        if m_in:   # SciPy's inequalities are >= 0
            cons.append(dict(type="ineq", fun=lambda y: -np.asarray(g(y, ps), np.float64),
                             jac=lambda y: -np.asarray(jg(y, ps), np.float64)))

        def fun(y):
            v, gr = vg(y.astype(dtype), ps)
            return float(v), np.asarray(gr, np.float64)

        res = scipy.optimize.minimize(fun, np.asarray(z0[:n], np.float64), jac=True,
                                      method="SLSQP", constraints=cons,
                                      options=dict(maxiter=maxiter, ftol=1e-15))
        y = res.x
        # multipliers of the active constraints, by least squares on stationarity
        cols, act = [], np.zeros(m_in, bool)
        if m_eq:
            cols.append(np.asarray(jh(y, ps), np.float64).T)
        if m_in:
            gy = np.asarray(g(y, ps), np.float64)
            act = gy > -1e-7 * max(1.0, np.abs(gy).max())
            cols.append(np.asarray(jg(y, ps), np.float64).T[:, act])
        mult = np.linalg.lstsq(np.hstack(cols), -fun(y)[1], rcond=None)[0] if cols else []
        lam = np.zeros(m_in)
        lam[act] = np.maximum(mult[m_eq:], 0.0)
        z = np.concatenate([y, mult[:m_eq], lam]).astype(dtype)
        # Newton polish on the KKT conditions (same active set)
        r = np.asarray(kkt_jit(z, *ps), np.float64)
        for _ in range(5):
            if np.linalg.norm(r) <= 1e-14 * max(1.0, np.linalg.norm(z)):
                break
            try:
                step = np.linalg.solve(np.asarray(kkt_jac(z, *ps), np.float64), -r)
            except np.linalg.LinAlgError:
                break
            trial = z + step
            r_new = np.asarray(kkt_jit(trial, *ps), np.float64)
            if not (np.linalg.norm(r_new) < np.linalg.norm(r)) or (
                    m_in and trial[n + m_eq:].min() < -1e-10):
                break
            z, r = trial, r_new
        if not np.linalg.norm(r) <= reachable(max(tol, 1e-8), dtype) * max(
                1.0, np.linalg.norm(z)):
            warn_at(ConvergenceWarning(with_location(
                f"gradc: argmin with constraints did not converge (KKT residual "
                f"{np.linalg.norm(r):.3g}; {res.message})", where)), where)
        # multipliers 0 to the solver's accuracy are 0 (a constraint at its boundary with
        # no force, then differentiated as inactive: the one-sided derivative of the
        # directions that leave it inactive)
        lam = z[n + m_eq:]
        small = reachable(max(tol, 1e-8), dtype) * max(
            1.0, float(np.linalg.norm(fun(z[:n])[1])))
        z[n + m_eq:] = np.where(np.abs(lam) <= small, 0.0, lam)
        return z

    zaval = ((n + m_eq + m_in,), dtype)
    # (y0, ν0 = 0, λ0 = 0): np.concatenate traces when x0 is traced
    z0 = np.concatenate([x0 if is_tracer(x0) else np.asarray(x0, dtype),
                         np.zeros(m_eq + m_in, dtype)])
    z = root("argmin", PyCallback(solver, zaval[0], dtype, "argmin(SLSQP)"), kkt, z0,
             leaves, as_method(solve or "bicgstab", tol, None, ridge), zaval)
    return z[:n]
