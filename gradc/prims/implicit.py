"""Primitives whose derivatives are implicit: ``linear_solve``, ``root`` and ``report``.

``linear_solve[matvec, solve, transpose_solve, symmetric] consts... b -> x`` solves
``A x = b`` where ``A v = matvec(consts..., v)`` is linear in ``v`` (a closed Graph) and
``x = solve(A, b)`` for a Python ``solve(matvec_fn, b)`` written with gradc operations
(``gradc.lib.solvers``: CG, GMRES, BiCGSTAB, dense).  JAX's ``custom_linear_solve``:

* JVP: ``A ẋ = ḃ − Ȧ x`` (``Ȧ x`` is the JVP of ``matvec`` in its consts at ``x``): one
  more solve with the same ``A``;
* transpose in ``b``: ``ct_b = A⁻ᵀ ct``, a ``linear_solve`` of the transposed ``matvec``
  (``passes.transpose``) with ``transpose_solve`` (``solve`` itself when ``symmetric``).

``root[solver, optimality, solve, kind] init params... -> y`` is a solver region: ``y``
comes from ``solver`` (a Graph, or a ``PyCallback`` of untraced Python) and satisfies
``optimality(y, params...) = 0``.  Its derivative never looks inside ``solver``: by the
implicit function theorem ``∂F/∂y ẏ = −∂F/∂θ θ̇``, one ``linear_solve`` whose matvec is
the linear part of ``F`` in ``y`` (``passes.linearize``: the values it reads are computed
once, not per iteration).  ``init`` gets no derivative (the root does not depend on it).

``report[what, where] ok residual`` warns (``ConvergenceWarning``) when a solver stopped
without converging; it is an effect, kept by DCE.

Compiled targets lower ``linear_solve`` and Graph solvers by inlining their Graphs
(``passes.implicit``); a ``PyCallback`` runs in an object-mode block.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np

from ..codegen.compile import GradcWarning
from ..errors import ArgumentError, EvaluationError, GradcError, with_location
from ..ir import Graph, Primitive
from ..trace import no_trace, trace_graph


class ConvergenceWarning(GradcWarning):
    """An iterative solver stopped at its iteration limit before reaching its tolerance."""


class PyCallback:
    """A Python function run on NumPy values, never traced (an ``implicit_diff`` solver).
    Hashed by identity; prints as its name."""

    def __init__(self, fn, out_shape, out_dtype, name=None):
        self.fn = fn
        self.shape = tuple(out_shape)
        self.dtype = np.dtype(out_dtype)
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)

    def __call__(self, *args):
        from ..trace import evaluating_for_a_trace
        with no_trace(), warnings.catch_warnings():
            if evaluating_for_a_trace():   # (its run in the program warns: not twice)
                warnings.simplefilter("ignore", ConvergenceWarning)
            y = np.asarray(self.fn(*args), dtype=self.dtype)
        if y.shape != self.shape:
            raise ArgumentError(with_location(
                f"the solver {self} returned shape {y.shape}; its first call returned "
                f"{self.shape}"))
        return y

    def __str__(self):
        return f"python:{self.name}"


# ---------------------------------------------------------------- linear_solve

linear_solve_p = Primitive("linear_solve")


@functools.lru_cache(maxsize=256)
def solve_graph(matvec: Graph, solve) -> Graph:
    """``solve(A, b)`` traced as a Graph ``(consts..., b) -> x``."""
    from ..interpret import eval_graph
    avals = [(v.shape, v.dtype) for v in matvec.inputs]

    def fn(*args):
        consts = list(args[:-1])
        return [solve(lambda v: eval_graph(matvec, consts + [v])[0], args[-1])]

    graph, _, captured = trace_graph(fn, avals)
    if captured:
        raise ArgumentError(with_location(
            f"linear_solve: the solve function {solve} reads traced values from outside "
            "(pass them through matvec instead)"))
    return graph


@functools.lru_cache(maxsize=256)
def transposed(matvec: Graph) -> Graph:
    """The adjoint of ``matvec``: ``(consts..., u) -> Aᵀ u``, as the VJP of ``matvec`` in
    its argument (at 0: ``matvec`` is linear, so any point gives ``Aᵀ``)."""
    from ..interpret import eval_graph
    from ..passes.simplify import simplify
    from ..passes.transpose import vjp_graph
    n = len(matvec.inputs) - 1
    v = matvec.inputs[-1]
    vjp = vjp_graph(matvec, (False,) * n + (True,))

    def fn(*args):
        zero = np.zeros(v.shape, v.dtype)
        return [eval_graph(vjp, list(args[:-1]) + [zero, args[-1]])[-1]]

    graph, _, captured = trace_graph(fn, [(x.shape, x.dtype) for x in matvec.inputs])
    assert not captured
    return simplify(graph)


def _linear_solve_impl(*args, matvec, solve, transpose_solve, symmetric):
    from ..interpret import eval_graph
    # a breakdown (NaN) is reported by the solver's own check, as an error naming it
    with no_trace(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.asarray(eval_graph(solve_graph(matvec, solve), list(args))[0])


def _linear_solve_abstract(*args, matvec, solve, transpose_solve, symmetric):
    b, x = args[-1], matvec.inputs[-1]
    if tuple(b.shape) != tuple(x.shape) or np.dtype(b.dtype) != np.dtype(x.dtype):
        raise ArgumentError(f"linear_solve: b has shape {tuple(b.shape)} {b.dtype}, matvec "
                            f"takes {tuple(x.shape)} {x.dtype}")
    return [(tuple(b.shape), b.dtype)]


def _linear_solve_jvp(primals, tangents, **params):
    from ..passes.jvp import jvp_eval
    from . import elementwise as ew
    x = linear_solve_p.bind(*primals, **params)
    consts, tconsts, tb = primals[:-1], tangents[:-1], tangents[-1]
    rhs = tb
    if any(t is not None for t in tconsts):
        _, (tax,) = jvp_eval(params["matvec"], list(consts) + [x], list(tconsts) + [None])
        if tax is not None:
            rhs = ew.neg(tax) if rhs is None else ew.sub(rhs, tax)
    return x, None if rhs is None else linear_solve_p.bind(*consts, rhs, **params)


def _linear_solve_transpose(ct, *args, matvec, solve, transpose_solve, symmetric):
    from .rules import is_undefined
    if any(is_undefined(a) for a in args[:-1]):
        raise GradcError("linear_solve is linear in b only, not in the values matvec reads")
    if ct is None:
        return [None] * len(args)
    back = solve if symmetric else (transpose_solve or solve)
    ct_b = linear_solve_p.bind(*args[:-1], ct, matvec=matvec if symmetric else transposed(matvec),
                               solve=back, transpose_solve=solve, symmetric=symmetric)
    return [None] * (len(args) - 1) + [ct_b]


linear_solve_p.impl = _linear_solve_impl
linear_solve_p.abstract = _linear_solve_abstract
linear_solve_p.jvp = _linear_solve_jvp
linear_solve_p.transpose = _linear_solve_transpose


# ---------------------------------------------------------------- root

root_p = Primitive("root")


@functools.lru_cache(maxsize=256)
def tangent_system(optimality: Graph):
    """``(primal, linear)`` of ``F`` in ``y`` alone: ``primal(y, params...) -> F,
    residuals...`` and the matvec ``linear(residuals..., v) -> ∂F/∂y v``."""
    from ..passes.linearize import linearize_graph
    from ..passes.simplify import simplify
    wrt = (True,) + (False,) * (len(optimality.inputs) - 1)
    primal, linear = linearize_graph(optimality, wrt)
    return primal, simplify(linear)


def _root_impl(init, *params, solver, optimality, solve, kind):
    from ..interpret import eval_graph
    if isinstance(solver, PyCallback):
        return solver(init, *params)
    with no_trace():
        return np.asarray(eval_graph(solver, [init, *params])[0])


def _root_abstract(init, *params, solver, optimality, solve, kind):
    y = optimality.inputs[0]
    return [(tuple(y.shape), y.dtype)]


def _root_jvp(primals, tangents, solver, optimality, solve, kind):
    from ..interpret import eval_graph
    from ..passes.jvp import jvp_eval
    from . import elementwise as ew
    y = root_p.bind(*primals, solver=solver, optimality=optimality, solve=solve, kind=kind)
    params, tparams = list(primals[1:]), list(tangents[1:])
    if all(t is None for t in tparams):
        return y, None
    # ∂F/∂θ θ̇, then ẏ = −(∂F/∂y)⁻¹ ∂F/∂θ θ̇
    _, (tf,) = jvp_eval(optimality, [y] + params, [None] + tparams)
    if tf is None:
        return y, None
    primal, linear = tangent_system(optimality)
    residuals = eval_graph(primal, [y] + params)[1:]
    ty = linear_solve_p.bind(*residuals, ew.neg(tf), matvec=linear, solve=solve,
                             transpose_solve=None, symmetric=solve.symmetric)
    return y, ty


root_p.impl = _root_impl
root_p.abstract = _root_abstract
root_p.jvp = _root_jvp


# ---------------------------------------------------------------- report

report_p = Primitive("report", effect=True, multiple_results=True)


def warn_unconverged(what: str, where, residual) -> None:
    """A warning for a solver that stopped at its limit; an error for one that broke
    down (a NaN or infinite residual: nothing it returns can be trusted)."""
    residual = float(residual)
    if what == "odeint: times":             # (residual: the first index out of order)
        raise EvaluationError(with_location(
            f"odeint: the times t must be non-decreasing; t[{int(residual)}] is below the "
            "time before it", where))
    if what.startswith("odeint"):           # (residual: the time where it stopped)
        warn_at(ConvergenceWarning(with_location(
            f"gradc: {what} stopped at t = {residual:.6g}, short of an output time: it "
            "took mxstep steps in one interval, or its step size fell to zero or NaN (a "
            "stiff system, a solution that blows up, or NaN from func); the values from "
            "there on are not the solution. Raise mxstep, loosen rtol and atol, or "
            "check func near that time", where)), where)
        return
    if what.startswith("linear_solve(symmetric=True)"):
        warn_at(ConvergenceWarning(with_location(
            f"gradc: {what} is not symmetric (|u'Av - v'Au| is {residual:.3g} of its "
            "scale for random u, v): with symmetric=True the derivative solves with A "
            "where it needs A transposed, so it would be that of another system; pass "
            "symmetric=False", where)), where)
        return
    if what.startswith(("custom_root", "linear_solve: the solve function")):
        equation = "f(y) = 0" if what.startswith("custom_root") else "matvec(x) = b"
        warn_at(ConvergenceWarning(with_location(
            f"gradc: {what} returned a point that does not solve {equation} (residual "
            f"{residual:.3g} relative to its scale, above sqrt(eps)): derivatives are "
            "taken there as if it did, so they are those of another point. Check that "
            "the solve converges", where)), where)
        return
    if not np.isfinite(residual) and what.startswith("fixed_point"):
        raise EvaluationError(with_location(
            f"{what.split(' after ')[0]} diverged: the iterates x = f(x, ...) overflowed "
            f"(residual {residual}); the iteration converges where f is a contraction "
            "near the fixed point: start closer, or solve f(x) - x = 0 another way "
            "(gradc.custom_root, @gradc.implicit_diff)", where))
    if not np.isfinite(residual):
        raise EvaluationError(with_location(
            f"{what} broke down (residual {residual}): the system is singular, or not "
            "positive definite for CG; regularise it with ridge=..., or use "
            "solve='dense' or 'gmres'", where))
    message = f"gradc: {what} did not converge (relative residual {residual:.3g})"
    if what.startswith("cg"):
        message += ("; CG needs a symmetric positive definite system: for another, use "
                    "solve='bicgstab', 'gmres' or 'dense'")
    elif residual > 1 and what.startswith("bicgstab"):
        message += (": it diverged, its result worse than zeros (BiCGSTAB does on systems "
                    "with eigenvalues on or near the imaginary axis, e.g. skew-symmetric "
                    "ones, and on very ill-conditioned ones); use solve='gmres' or "
                    "'dense', or regularise with ridge=...")
    elif what.startswith("gmres"):
        message += ("; GMRES stalls on singular or nearly singular systems: regularise "
                    "with ridge=..., or raise maxiter")
    warn_at(ConvergenceWarning(with_location(message, where)), where)


def warn_at(warning, where) -> None:
    """``warning`` attributed to the user's line ``where`` (``'file.py:12: code'``, where
    the solver was called), not to this file: Python's display then shows the user's
    line, and ``warnings.filterwarnings(module=...)`` sees the user's module.  (At run
    time the stack may be a compiled function's object-mode block.)"""
    import re
    found = re.match(r"(.+?):(\d+)(?::|$)", where or "")
    if found is None:
        warnings.warn(warning, stacklevel=3)
        return
    filename = found.group(1)
    module = os.path.splitext(os.path.basename(filename))[0] or "<unknown>"
    warnings.warn_explicit(warning, type(warning), filename, int(found.group(2)),
                           module=module)


def _report_impl(ok, residual, what, where):
    from ..trace import evaluating_for_a_trace
    # (not while tracing: the trace's values are evaluated only to build the program,
    # which then runs and reports; the first call warned twice)
    if not bool(ok) and not evaluating_for_a_trace():
        warn_unconverged(what, where, residual)
    return []


report_p.impl = _report_impl
report_p.abstract = lambda ok, residual, what, where: []
report_p.jvp = lambda primals, tangents, what, where: (
    report_p.bind(*primals, what=what, where=where), [])


def report(ok, residual, what: str, where: str | None = None):
    """Warn when ``ok`` is false (at run time, compiled or not), naming ``where``: by
    default the line of the equation a transformation is rewriting (a solve's transpose
    in a gradient: the user's solve, not the line that asked for the gradient) unless
    user code runs inside it, else the user's line now."""
    from ..trace import report_location
    if where is None:
        where = report_location()
    report_p.bind(ok, residual, what=what, where=where)
