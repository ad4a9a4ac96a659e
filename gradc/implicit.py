"""Implicit differentiation: derivatives of solvers from their optimality conditions.

* ``linear_solve(matvec, b, solve=...)``: ``A x = b`` whose derivative is another solve
  (JAX's ``custom_linear_solve``);
* ``custom_root(f, initial_guess, solve, tangent_solve)``: a root of ``f`` found by any
  traceable ``solve`` (JAX's ``custom_root``);
* ``@implicit_diff(optimality_fn)``: any solver ``solver(init, *params) -> y``, even
  untraceable Python, differentiated through ``optimality_fn(y, *params) = 0`` (JAXopt);
* ``fixed_point(f, x0, *params)``: ``x = f(x, *params)``;
* ``argmin(objective, x0, *params, constraints=...)``: smooth minimisation, with equality
  and inequality constraints through the KKT conditions (OptNet's QP layer).

Each becomes one ``root`` or ``linear_solve`` equation (``prims.implicit``) whose rules
are the implicit function theorem; the solver's iterations are never differentiated.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .errors import ArgumentError, check_function, user_location, with_location
from .interpret import eval_graph
from .ir import Graph
from .lib.solvers import UserSolve, as_method, solved_check
from .prims.implicit import ConvergenceWarning, PyCallback, linear_solve_p, report, root_p
from .prims.loops import while_loop
from .pytree import flatten, unflatten
from .trace import dtype_of, is_tracer, shape_of, trace_graph

__all__ = ["linear_solve", "custom_root", "implicit_diff", "fixed_point", "argmin"]


def _aval(x, what):
    if isinstance(x, (list, tuple, dict)):
        raise ArgumentError(with_location(
            f"{what} must be one array (gradc's solvers work on arrays, not pytrees); "
            "concatenate the parts"))
    dtype = np.dtype(dtype_of(x))
    if dtype.kind != "f":
        raise ArgumentError(with_location(
            f"{what} must be a floating-point array, got dtype {dtype}"))
    return tuple(shape_of(x)), dtype


def _as_array(x, dtype):
    return x if is_tracer(x) else np.asarray(x, dtype)


def _traced(fn, avals, what):
    """``fn`` traced as a Graph of its own inputs then the outer values it reads
    (``captured``); its single output checked against ``avals[0]``."""
    def one(*xs):
        y = fn(*xs)
        if isinstance(y, (tuple, list, dict)):    # (else a TracerLeakError, from NumPy's
            shape, dtype = avals[0]               # conversion of the container)
            raise ArgumentError(with_location(
                f"{what} returns a {type(y).__name__}; it must return one array of "
                f"{shape} {dtype}, like its argument"))
        return [y]
    graph, _, captured = trace_graph(one, avals)
    out = graph.outputs[0]
    if (tuple(out.shape), np.dtype(out.dtype)) != tuple(avals[0]):
        shape, dtype = avals[0]
        raise ArgumentError(with_location(
            f"{what} returns shape {tuple(out.shape)} {out.dtype}; it must return "
            f"{shape} {dtype}, like its argument"))
    return graph, list(captured)


def _with_inputs(graph: Graph, own, everything) -> Graph:
    """``graph`` (its ``own`` inputs' values, then one input per captured value) as a
    Graph of its first input and then ``everything`` (values matched by identity; a
    value may be both a parameter and captured)."""
    n = 1 + len(own)

    def fn(y, *values):
        by_id = {id(x): v for x, v in zip(everything, values)}
        return eval_graph(graph, [y] + [by_id[id(x)] for x in own])

    avals = [(v.shape, v.dtype) for v in graph.inputs[:1]]
    avals += [(tuple(shape_of(x)), np.dtype(dtype_of(x))) for x in everything]
    new, _, captured = trace_graph(fn, avals)
    assert not captured and n <= len(graph.inputs)
    return new


def _given_params(callback: PyCallback, params, everything) -> PyCallback:
    """A ``PyCallback`` solver, which the root calls with ``everything`` (its parameters
    without repeats, then the values the optimality function reads from outside), given
    its own parameters in their order (``solver(init, a, a)``: ``a`` twice)."""
    position = {id(x): i for i, x in enumerate(everything)}
    picks = [position[id(p)] for p in params]
    if picks == list(range(len(everything))):
        return callback
    fn = callback.fn
    return PyCallback(lambda y0, *values: fn(y0, *(values[i] for i in picks)),
                      callback.shape, callback.dtype, callback.name)


def _union(*groups) -> list:
    seen, out = set(), []
    for group in groups:
        for x in group:
            if id(x) not in seen:
                seen.add(id(x))
                out.append(x)
    return out


# ---------------------------------------------------------------- linear_solve

def linear_solve(matvec, b, solve=None, transpose_solve=None, symmetric=False, *,
                 tol=1e-10, maxiter=None, ridge=0.0):
    """``x`` with ``matvec(x) = b``; ``matvec`` is linear and may read traced values.

    ``solve``: ``"cg"`` (symmetric positive definite), ``"gmres"``, ``"bicgstab"``,
    ``"dense"`` or a function ``solve(matvec, b) -> x``; default CG when ``symmetric``,
    else BiCGSTAB (short recurrences: no restarts, memory of a few vectors).  Its
    derivative is another solve: ``dx = A⁻¹ (db − dA x)``; reverse mode solves with
    ``Aᵀ`` (the transposed matvec) by ``transpose_solve``, which defaults to ``solve``
    (the same algorithm on the transposed matrix) and is not needed when ``symmetric``.
    ``ridge`` solves ``(A + ridge·I) x = b`` instead (named methods).  A matvec that is
    not linear as traced (``v ** 2``, ``A @ v + c``, a branch on v) is an ArgumentError:
    its derivative would silently be that of another system."""
    if isinstance(matvec, np.ndarray) or hasattr(matvec, "shape"):
        raise ArgumentError(with_location(
            "linear_solve: matvec must be a function v -> A @ v, got an array; for a "
            "matrix A, pass lambda v: A @ v (or np.linalg.solve(A, b))"))
    check_function(matvec, "linear_solve: matvec(v)", 1)
    aval = _aval(b, "linear_solve: b")
    method = as_method(solve or ("cg" if symmetric else "bicgstab"), tol, maxiter, ridge,
                       symmetric)
    back = None if transpose_solve is None else as_method(transpose_solve, tol, maxiter,
                                                          ridge)
    graph, captured = _traced(matvec, [aval], "linear_solve: matvec")
    _check_linear(graph)
    if symmetric:
        _check_symmetric(matvec, aval)
    mv = Graph(tuple(graph.inputs[1:]) + (graph.inputs[0],), graph.eqns, graph.outputs)
    return linear_solve_p.bind(*captured, _as_array(b, aval[1]), matvec=mv, solve=method,
                               transpose_solve=back, symmetric=bool(symmetric))


def _check_symmetric(matvec, aval) -> None:
    """A warning at run time (``report``) unless ``uᵀ A v = vᵀ A u`` to √eps for two fixed
    random vectors: with ``symmetric=True`` the derivative's transposed solve is a solve
    with ``A`` itself, so a matvec that is not symmetric would give that of ``Aᵀ``'s
    system, silently (two matvecs more a solve)."""
    rng = np.random.default_rng(20261207)
    u, v = (rng.standard_normal(aval[0]).astype(aval[1]) for _ in range(2))
    au, av = np.ravel(matvec(u)), np.ravel(matvec(v))
    u, v = np.ravel(u), np.ravel(v)
    gap = np.abs(np.dot(u, av) - np.dot(v, au))
    scale = np.linalg.norm(u) * np.linalg.norm(av) + np.linalg.norm(v) * np.linalg.norm(au)
    eps = np.finfo(aval[1]).eps
    report(gap <= np.sqrt(eps) * scale, gap / np.maximum(scale, np.finfo(aval[1]).tiny),
           what="linear_solve(symmetric=True): matvec")


def _check_linear(graph: Graph) -> None:
    """An ``ArgumentError`` naming the matvec's line and the user's call unless the
    traced ``matvec`` is linear in its argument: its derivative (``A⁻¹ (db − dA x)``)
    and transpose assume ``matvec(v) = A v``; an affine or nonlinear one would be
    silently linearised, a wrong derivative."""
    from .passes.implicit import nonlinearity
    found = nonlinearity(graph)
    if found is None:
        return
    eqn, why = found
    inside = f"\n  in matvec at {eqn.source}" if eqn is not None and eqn.source else ""
    raise ArgumentError(with_location(
        f"linear_solve: matvec must be linear in its argument v (matvec(v) = A v), but "
        f"{why}; its derivative would be that of another system, silently wrong. Move a "
        "constant term c into b (solve matvec(x) = b - c); for a nonlinear equation use "
        f"gradc.custom_root or gradc.fixed_point{inside}"))


# ---------------------------------------------------------------- roots

def _root(kind, solver, optimality, init, params, method, init_aval):
    """One ``root`` equation: ``solver`` (a function ``(init, *params) -> y`` to trace,
    or a ``PyCallback``) and ``optimality(y, *params) = 0``."""
    avals = [init_aval] + [(tuple(shape_of(p)), np.dtype(dtype_of(p))) for p in params]
    opt, opt_caps = _traced(optimality, avals, f"{kind}: the optimality function")
    if isinstance(solver, PyCallback):
        sol, sol_caps = None, []
    else:
        sol, sol_caps = _traced(solver, avals, f"{kind}: the solver")
    everything = _union(params, opt_caps, sol_caps)
    opt = _with_inputs(opt, params + opt_caps, everything)
    if sol is not None:
        solver = _with_inputs(sol, params + sol_caps, everything)
    else:
        solver = _given_params(solver, params, everything)
    return root_p.bind(_as_array(init, init_aval[1]), *everything, solver=solver,
                       optimality=opt, solve=method, kind=kind)


def custom_root(f, initial_guess, solve, tangent_solve):
    """A root ``y`` of ``f`` (``f(y) = 0``) computed as ``solve(f, initial_guess)``,
    differentiated implicitly (JAX's ``lax.custom_root``): ``tangent_solve(g, v)`` solves
    the linear ``g(x) = v`` (``g`` is ``∂f/∂y``); ``f`` may read traced values, and the
    derivative with respect to them is ``−(∂f/∂y)⁻¹ ∂f/∂θ``."""
    aval = _aval(initial_guess, "custom_root: initial_guess")
    check_function(f, "custom_root: f(y)", 1)
    check_function(solve, "custom_root: solve(f, initial_guess)", 2)
    check_function(tangent_solve, "custom_root: tangent_solve(g, y)", 2)
    def solved(y0):
        y = solve(f, y0)
        # (a root is where |f(y)| is within √eps of f's own scale there, |f'(y)·d| with
        # d = y, or 1 where y is 0, by a central difference: as implicit_diff checks)
        d = np.where(y != 0, y, np.ones_like(y))
        h = np.finfo(dtype_of(y)).eps ** (1 / 3)
        solved_check(f(y), (f(y + h * d) - f(y - h * d)) / (2 * h),
                     "custom_root: solve(f, initial_guess)")
        return y
    return _root("custom_root", solved, lambda y: f(y),
                 initial_guess, [], UserSolve(tangent_solve), aval)


def implicit_diff(optimality_fn, solve="bicgstab", *, tol=1e-10, maxiter=None, ridge=0.0):
    """Decorator: ``solver(init, *params) -> y`` differentiated through
    ``optimality_fn(y, *params) = 0`` (JAXopt's ``custom_root``).  The solver runs as
    ordinary Python on NumPy arrays (never traced: it may use SciPy, loops, anything);
    its result must have ``init``'s shape.  ``solve``: how the derivative's linear
    systems ``∂F/∂y`` are solved (``"cg"`` when ``∂F/∂y`` is symmetric positive
    definite, ``"gmres"``, ``"bicgstab"``, ``"dense"``), matrix-free except ``"dense"``."""
    check_function(optimality_fn, "implicit_diff: optimality_fn(y, *params)")
    method = as_method(solve, tol, maxiter, ridge)
    where = user_location()

    def decorate(solver=None, *more, **kwargs):
        if more or kwargs or not callable(solver):
            # (@implicit_diff without (optimality_fn): the solver became optimality_fn,
            # and calling the solver called this)
            raise ArgumentError(with_location(
                "implicit_diff(optimality_fn) makes a decorator: write "
                "@gradc.implicit_diff(optimality_fn) above the solver, where "
                "optimality_fn(y, *params) is 0 at the solution", where))
        name = getattr(solver, "__name__", "solver")

        def run(y0, *ps, tree):
            args, kwargs = unflatten(tree, list(ps))
            y = solver(y0, *args, **kwargs)
            _check_root(optimality_fn, y, args, kwargs, name)
            return y

        def wrapped(init, *params, **kwargs):
            if kwargs:  # (bound as the solver's signature binds them, defaults filled in:
                import inspect     # keyword-only ones stay keywords)
                try:
                    bound = inspect.signature(solver).bind(init, *params, **kwargs)
                except TypeError as e:
                    raise ArgumentError(with_location(f"{name}: {e}")) from None
                bound.apply_defaults()
                params, kwargs = tuple(bound.args[1:]), dict(bound.kwargs)
            aval = _aval(init, f"{name}: init")
            check_function(optimality_fn, f"implicit_diff: the optimality function of {name}",
                           (init,) + tuple(params), kwargs)
            leaves, tree = flatten([list(params), kwargs])
            leaves = [p if is_tracer(p) else np.asarray(p) for p in leaves]
            callback = PyCallback(functools.partial(run, tree=tree),
                                  aval[0], aval[1], getattr(solver, "__qualname__", None))

            def optimality(y, *ps):
                args, kw = unflatten(tree, list(ps))
                return optimality_fn(y, *args, **kw)
            return _root("implicit_diff", callback, optimality, init, leaves, method, aval)
        wrapped.__name__ = getattr(solver, "__name__", "solver")
        wrapped.__doc__ = getattr(solver, "__doc__", None)
        wrapped.__wrapped__ = solver
        return wrapped
    return decorate


def _check_root(optimality_fn, y, args, kwargs, name):
    """Warn when the solver's ``y`` leaves the optimality function ``F`` well away from
    0 (an unconverged or wrong solver: the implicit derivative assumes a root).  "Well
    away" is against ``F``'s own scale there: ``|F(y)|`` above √eps times ``|∂F/∂y · d|``
    (``d`` = ``y``, or 1 where ``y`` is 0; by a central difference), where a root
    rounded correctly leaves ``|F(y)|`` near eps times it."""
    from .trace import evaluating_for_a_trace
    if evaluating_for_a_trace():     # (checked when the program runs: not twice)
        return
    y = np.asarray(y)
    dtype = y.dtype if y.dtype.kind == "f" else np.dtype(np.float64)
    d = np.where(y != 0, y, 1.0).astype(dtype)
    h = np.finfo(dtype).eps ** (1 / 3)

    def norm_f(v):
        return np.linalg.norm(np.asarray(optimality_fn(v, *args, **kwargs), np.float64))
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = norm_f(y)
            scale = np.linalg.norm(
                np.asarray(optimality_fn(y + h * d, *args, **kwargs), np.float64)
                - np.asarray(optimality_fn(y - h * d, *args, **kwargs), np.float64)) / (2 * h)
    except Exception:       # noqa: BLE001  (not computable on NumPy arrays: not checked)
        return
    if np.isfinite(scale) and not r <= np.sqrt(np.finfo(dtype).eps) * scale:
        warnings.warn(ConvergenceWarning(with_location(
            f"gradc: implicit_diff: {name} returned a point where the optimality function "
            f"is not 0 (|F(y)| = {r:.3g}, against |dF/dy·y| = {scale:.3g}): derivatives "
            "are taken there as if it were a root")), stacklevel=2)


def fixed_point(f, x0, *params, tol=1e-10, maxiter=1000, solve="bicgstab", implicit=True,
                ridge=0.0):
    """The solution of ``x = f(x, *params)`` by fixed-point iteration from ``x0`` (until
    the step is below ``tol`` relative to ``1 + |x|``; a warning if ``maxiter`` steps do
    not get there).  Derivatives by the implicit function theorem on ``x − f(x, θ) = 0``
    (``solve`` for its linear systems), or, with ``implicit=False``, through the
    iterations themselves (reverse mode stores every step: for comparison)."""
    aval = _aval(x0, "fixed_point: x0")
    check_function(f, "fixed_point: f(x, *params)", (x0,) + tuple(params))
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
        raise ArgumentError(with_location(
            f"fixed_point: maxiter is the most iterations, an int >= 1; got {maxiter!r}"))
    leaves, tree = flatten(list(params))
    leaves = [p if is_tracer(p) else np.asarray(p) for p in leaves]
    # (f keeps x's shape and dtype: said of f, not of the loop or x - f(x) made of it)
    _traced(lambda x, *ps: f(x, *unflatten(tree, list(ps))),
            [aval] + [(tuple(shape_of(p)), np.dtype(dtype_of(p))) for p in leaves],
            "fixed_point: f(x, *params)")
    from .lib.solvers import reachable
    tol = reachable(tol, aval[1])         # (the default 1e-10 is below float32's)
    goal = float(tol) ** 2

    def iterate(x0, *ps):
        user = unflatten(tree, list(ps))

        def go(s):
            x, dx2, k = s
            xx = np.dot(np.ravel(x), np.ravel(x))
            # (iterates that overflow are no fixed point: a step below goal * inf is)
            return (k < maxiter) & ~((dx2 <= goal * (1.0 + xx)) & np.isfinite(xx))

        def step(s):
            x, _, k = s
            new = f(x, *user)
            d = np.ravel(new - x)
            return new, np.dot(d, d), k + 1

        x, dx2, k = while_loop(go, step, (x0, np.asarray(np.inf, aval[1]), np.int64(0)))
        rel = np.sqrt(dx2 / (1.0 + np.dot(np.ravel(x), np.ravel(x))))
        report(rel <= tol, rel, what=f"fixed_point after {maxiter} steps")
        return x

    if not implicit:
        return iterate(_as_array(x0, aval[1]), *leaves)
    return _root("fixed_point", iterate,
                 lambda x, *ps: x - f(x, *unflatten(tree, list(ps))),
                 x0, leaves, as_method(solve, tol, None, ridge), aval)


def argmin(objective, x0, *params, constraints=None, tol=1e-10, maxiter=1000, solve=None,
           ridge=0.0):
    """``argmin_x objective(x, *params)`` from ``x0``, differentiated through its
    optimality conditions.  ``x0`` is an array of any shape (a scalar, a matrix), which
    the result has.  See ``gradc.lib.optimize`` for the solvers and the constraint
    format."""
    from .lib.optimize import minimize
    check_function(objective, "argmin: objective(x, *params)", (x0,) + tuple(params))
    return minimize(objective, x0, params, constraints, tol, maxiter, solve, ridge, _root)

