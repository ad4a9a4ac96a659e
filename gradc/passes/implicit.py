"""The implicit-differentiation rewrite, and the lowering of solver regions.

Solver regions are ``root`` equations (made by ``gradc.fixed_point``, ``argmin``,
``custom_root``, ``implicit_diff``) and ``linear_solve`` equations (``gradc.linear_solve``,
and every derivative of a ``root``).  Differentiation never enters them: the JVP rule of
``root`` (``prims.implicit``) *is* the rewrite — it replaces what would be the derivative
of the solver's iterations by one ``linear_solve`` with ``∂F/∂y`` — so the derivative
Graph holds ``linear_solve`` equations where unrolled reverse mode would hold a tape of
every iteration.  ``regions(graph)`` lists them (``gradc.show`` prints the list).

``expand(graph)`` runs before code generation: each ``linear_solve`` becomes its solve
algorithm's equations (a ``while_loop`` for CG/GMRES/BiCGSTAB) and each ``root`` with a
traced solver becomes the solver's equations; a ``root`` whose solver is Python stays
(an object-mode call).  Functions with user rules (``custom_jvp_call``,
``custom_vjp_call``) become the function's equations, and ``custom_lin`` (seen only
when a matvec holds one) the transpose of its ``bwd``.  Sub-Graphs of loops and branches
are expanded too.
"""
from __future__ import annotations

from ..interpret import eval_graph
from ..ir import Graph, map_subgraphs, subgraphs
from ..prims.custom import forward_of
from ..prims.implicit import PyCallback, solve_graph
from ..trace import trace_graph

SOLVER_PRIMS = ("root", "linear_solve")
# user rules (``prims.custom``): the function itself is what runs
CUSTOM_PRIMS = ("custom_jvp_call", "custom_vjp_call", "custom_lin", "checkpoint")
EXPANDED = SOLVER_PRIMS + CUSTOM_PRIMS      # expanded before code generation


def _needs(graph: Graph) -> bool:
    for eqn in graph.eqns:
        if eqn.prim.name in EXPANDED:
            return True
        if any(_needs(g) for g in subgraphs(eqn)):
            return True
    return False


def _expanded_params(eqn):
    return map_subgraphs(eqn, expand)


def expand(graph: Graph) -> Graph:
    """``graph`` with every traceable solver region replaced by its algorithm."""
    if not _needs(graph):
        return graph
    from ..trace import bind

    def rewrite(eqn, xs):
        name, p = eqn.prim.name, eqn.params
        if name == "linear_solve":
            return eval_graph(expand(solve_graph(p["matvec"], p["solve"])), xs)
        if name == "root" and not isinstance(p["solver"], PyCallback):
            return eval_graph(expand(p["solver"]), xs)
        if name in ("custom_jvp_call", "custom_vjp_call", "checkpoint"):
            return eval_graph(expand(p["fun"]), xs)
        if name == "custom_lin":
            return eval_graph(expand(forward_of(p["bwd"], p["n_res"], p["name"],
                                                p["where"])), xs)
        if not subgraphs(eqn):
            return None
        out = bind(eqn.prim, *xs, **_expanded_params(eqn))
        return out if eqn.prim.multiple_results else [out]

    def fn(*args):
        return eval_graph(graph, list(args), rewrite)

    new, _, captured = trace_graph(fn, [(v.shape, v.dtype) for v in graph.inputs])
    assert not captured
    return new


def regions(graph: Graph) -> list:
    """One line per solver region of ``graph`` (sub-Graphs included)."""
    lines = []
    for eqn in graph.eqns:
        p, where = eqn.params, f"  at {eqn.source}" if eqn.source else ""
        if eqn.prim.name == "root":
            solver = p["solver"] if isinstance(p["solver"], PyCallback) else (
                f"traced ({len(p['solver'].eqns)} equations)")
            lines.append(f"root[{p['kind']}] solver={solver}: differentiated by the implicit "
                         f"function theorem on its optimality conditions "
                         f"({len(p['optimality'].eqns)} equations), linear systems by "
                         f"{p['solve']}{where}")
        elif eqn.prim.name == "solve":
            lines.append("solve (np.linalg.solve): LAPACK; its derivative is another solve, "
                         f"dy = A⁻¹ (db − dA y), adjoint A⁻ᵀ ȳ and −(A⁻ᵀ ȳ) yᵀ{where}")
        elif eqn.prim.name == "linear_solve":
            how = ("materialised by one batched matvec" if "dense" in str(p["solve"])
                   else "never materialised")
            lines.append(f"linear_solve by {p['solve']}: x = A⁻¹ b with A a matvec of "
                         f"{len(p['matvec'].eqns)} equations, {how}{where}")
        for sub in subgraphs(eqn):
            lines += ["  " + line for line in regions(sub)]
    return lines
