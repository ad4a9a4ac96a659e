"""Linearize: split a JVP Graph into a primal part and a linear part.

``linearize_graph(g, wrt) -> (primal, linear)`` where

* ``primal`` maps the inputs of ``g`` to ``outputs + residuals``;
* ``linear`` maps ``residuals + input tangents`` to output tangents, and is linear in
  the tangents (every JVP rule is linear in its tangent operands).

An equation of the JVP Graph belongs to the linear part exactly when it depends on a
tangent input; everything else (including guards) is primal.  The residuals are the
primal values the linear part reads.  Reverse mode is this split followed by
``transpose`` of the linear part.
"""
from __future__ import annotations

from ..errors import GradcError
from ..ir import Graph, Var, free_vars, is_float
from .jvp import jvp_graph


def linearize_graph(graph: Graph, wrt=None):
    wrt = tuple(is_float(v.dtype) for v in graph.inputs) if wrt is None else tuple(wrt)
    jg = jvp_graph(graph, wrt, split=True)
    n, m = len(graph.inputs), len(graph.outputs)
    tangent_ins = jg.inputs[n:]
    linear_vars = set(tangent_ins)
    primal_eqns, linear_eqns = [], []
    for eqn in jg.eqns:
        if any(isinstance(a, Var) and a in linear_vars for a in eqn.inputs):
            linear_eqns.append(eqn)
            linear_vars.update(eqn.outputs)
        else:
            primal_eqns.append(eqn)
    primal_outs = {v for v in jg.outputs[:m] if isinstance(v, Var)}
    leaked = [e for e in linear_eqns if primal_outs.intersection(e.outputs)]
    if leaked:
        # an equation computes primal values and tangents together (a loop whose JVP
        # rule does not split itself): name the loop, not the arithmetic after it
        loops = [e for e in linear_eqns if "body" in e.params or "branches" in e.params]
        eqn = (loops or leaked)[0]
        raise GradcError(f"reverse mode (grad, vjp) through {eqn.prim.name} is not "
                         "implemented yet: use forward mode (gradc.jvp), or a Python "
                         "loop, which gradc unrolls"
                         + (f"\n  at {eqn.source}" if eqn.source else ""))
    tangent_outs = jg.outputs[m:]
    residuals = [v for v in free_vars(linear_eqns) if v not in linear_vars]
    for o in tangent_outs:
        if isinstance(o, Var) and o not in linear_vars and o not in residuals:
            residuals.append(o)
    primal = Graph(jg.inputs[:n], tuple(primal_eqns), tuple(jg.outputs[:m]) + tuple(residuals))
    linear = Graph(tuple(residuals) + tuple(tangent_ins), tuple(linear_eqns), tuple(tangent_outs))
    return primal, linear
