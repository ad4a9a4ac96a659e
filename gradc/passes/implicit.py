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

import numpy as np

from ..interpret import eval_graph, rewrite_graph
from ..ir import Graph, Lit, Var, is_float, map_subgraphs, subgraphs
from ..prims.custom import forward_of
from ..prims.implicit import PyCallback, solve_graph

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

    return rewrite_graph(graph, rewrite)


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


# ---------------------------------------------------------------- linearity of a matvec

_UNARY = ("neg", "reshape", "broadcast_in_dim", "transpose", "reduce_sum", "cumsum",
          "slice", "pad", "convert_element_type", "gather", "scatter_add", "div")
# inputs (by position) each primitive is linear in, and how: "one" (unary: the rest are
# parameters), "sum" (a sum, a piece or a branch of the result: the others must then be
# zeros, else the map is affine), "product" (bilinear: at most one may depend on v)
_LINEAR_IN = {
    **{name: ("one", (0,)) for name in _UNARY},
    "solve": ("one", (1,)), "linear_solve": ("one", (-1,)),
    "add": ("sum", (0, 1)), "sub": ("sum", (0, 1)), "concatenate": ("sum", None),
    "select": ("sum", (1, 2)), "index_set": ("sum", (0, 1)),
    "mul": ("product", (0, 1)), "einsum": ("product", (0, 1)),
    "conv2d": ("product", (0, 1)),
}


def _zero_out(eqn, zeros) -> bool:
    """Whether ``eqn`` (reading no value that depends on v) makes zeros."""
    name, ins = eqn.prim.name, eqn.inputs
    picked = {"add": ins[:2], "sub": ins[:2], "concatenate": ins, "index_set": ins[:2],
              "select": ins[1:3]}
    if name in ("mul", "einsum", "conv2d"):
        return any(_is_zero(a, zeros) for a in ins)
    if name in picked:
        return all(_is_zero(a, zeros) for a in picked[name])
    return name in _UNARY and _is_zero(ins[0], zeros)


def _is_zero(atom, zeros) -> bool:
    if isinstance(atom, Lit):
        return not np.any(atom.value)
    return atom in zeros


def nonlinearity(graph: Graph, n_linear: int = 1):
    """Why ``graph`` is not linear in its first ``n_linear`` inputs (``None`` when it is,
    as far as its equations show): ``(eqn or None, reason)``.  Each equation that reads
    a value depending on those inputs must be linear in it (a sum of such values, a
    product with one other value, a reshape, an index, ...) and add no term that does
    not depend on them; loops, branches and functions with rules of their own are taken
    as linear (not looked into)."""
    linear = set(graph.inputs[:n_linear])
    zeros: set = set()
    for eqn in graph.eqns:
        name = eqn.prim.name
        ins = [isinstance(a, Var) and a in linear for a in eqn.inputs]
        if not any(ins):
            if _zero_out(eqn, zeros):
                zeros.update(eqn.outputs)
            continue
        if subgraphs(eqn) or name == "barrier":
            # (a loop, a branch, a custom rule: taken as linear)
            linear.update(v for v in eqn.outputs if is_float(v.dtype))
            continue
        kind, positions = _LINEAR_IN.get(name, (None, ()))
        n = len(eqn.inputs)
        positions = range(n) if positions is None else [p % n for p in positions]
        if name == "pow" and isinstance(eqn.inputs[1], Lit) and not ins[1] and \
                np.all(eqn.inputs[1].value == 1):
            kind, positions = "one", [0]            # v ** 1
        if kind is None or any(i and p not in positions for p, i in enumerate(ins)):
            what = "divides by" if name == "div" else f"applies {name} to"
            return eqn, f"it {what} a value that depends on v"
        if kind == "product" and all(ins[p] for p in positions):
            return eqn, f"it multiplies two values that both depend on v ({name})"
        if kind == "sum":
            for p in positions:
                if not ins[p] and not _is_zero(eqn.inputs[p], zeros):
                    return eqn, (f"it adds a term that does not depend on v ({name}), so "
                                 "matvec(0) is not 0")
        for v in eqn.outputs:
            if not is_float(v.dtype):
                return eqn, (f"it turns a value that depends on v into {v.dtype} "
                             f"({name})")
        linear.update(eqn.outputs)
    for out in graph.outputs:
        if not (isinstance(out, Var) and out in linear) and not _is_zero(out, zeros):
            return None, "its result does not depend on v (and is not zero)"
    return None
