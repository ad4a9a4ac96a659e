"""Transpose a linear Graph: reverse mode.

``transpose_graph(lin, n_res)`` takes a Graph ``(residuals..., xs...) -> ys`` that is
linear in ``xs`` and returns ``(residuals..., ct_ys...) -> ct_xs``, the adjoint map.
Equations are visited in reverse; each linear equation's transpose rule turns the
cotangents of its outputs into cotangents of its linear inputs, which are summed
where a value is used more than once.  Cotangents are symbolic zeros (absent) until
something flows into them.

``vjp_graph`` composes linearize and transpose into one Graph
``(inputs..., ct_outputs...) -> (outputs..., ct_inputs[wrt]...)``.
"""
from __future__ import annotations


from ..errors import GradcError
from ..interpret import eval_graph
from ..ir import Graph, Lit, Var, is_float
from ..prims.rules import UndefinedPrimal, add_tangents
from ..trace import bind, source_line, trace_graph
from .linearize import linearize_graph


def backward_pass(linear: Graph, residuals, cts):
    """Cotangents of the linear inputs of ``linear`` (those after the residuals)."""
    n_res = len(residuals)
    env = dict(zip(linear.inputs[:n_res], residuals))
    lin_inputs = linear.inputs[n_res:]
    linear_vars = set(lin_inputs)
    linear_eqns = []
    for eqn in linear.eqns:   # forward: evaluate what does not depend on the linear inputs
        if any(isinstance(a, Var) and a in linear_vars for a in eqn.inputs):
            linear_eqns.append(eqn)
            linear_vars.update(eqn.outputs)
        else:
            with source_line(eqn.source):
                out = bind(eqn.prim, *[_read(env, a) for a in eqn.inputs], **eqn.params)
            env.update(zip(eqn.outputs, out if eqn.prim.multiple_results else [out]))

    ct_env: dict = {}

    def accumulate(v, ct):
        if ct is not None:
            ct_env[v] = add_tangents(ct_env.get(v), ct)

    for o, ct in zip(linear.outputs, cts):
        if isinstance(o, Var) and o in linear_vars:
            accumulate(o, ct)
    for eqn in reversed(linear_eqns):
        out_cts = [ct_env.pop(v, None) for v in eqn.outputs]
        if all(c is None for c in out_cts):
            continue
        if eqn.prim.transpose is None:
            raise GradcError(f"reverse mode: {eqn.prim.name} has no transpose rule but is "
                             "applied to a tangent (its JVP rule is not linear)"
                             + (f"\n  at {eqn.source}" if eqn.source else ""))
        args = [UndefinedPrimal(a.shape, a.dtype)
                if isinstance(a, Var) and a in linear_vars else _read(env, a)
                for a in eqn.inputs]
        ct = out_cts if eqn.prim.multiple_results else out_cts[0]
        with source_line(eqn.source):
            in_cts = eqn.prim.transpose(ct, *args, **eqn.params)
            for a, c in zip(eqn.inputs, in_cts):
                if isinstance(a, Var) and a in linear_vars:
                    accumulate(a, c)
    return [ct_env.get(v) for v in lin_inputs]


def _read(env, atom):
    return atom.value if isinstance(atom, Lit) else env[atom]


def zeros_of(v):
    """An array of zeros shaped like the Var ``v`` (a zero cotangent made concrete)."""
    from .. import ops
    return ops.full(v.shape, 0, v.dtype)


def transpose_graph(linear: Graph, n_res: int) -> Graph:
    avals = [(v.shape, v.dtype) for v in linear.inputs[:n_res]]
    avals += [(o.shape, o.dtype) for o in linear.outputs]
    lin_inputs = linear.inputs[n_res:]

    def fn(*args):
        cts = backward_pass(linear, list(args[:n_res]), list(args[n_res:]))
        return [zeros_of(v) if c is None else c for v, c in zip(lin_inputs, cts)]

    graph, _, captured = trace_graph(fn, avals)
    assert not captured
    return graph


def vjp_graph(graph: Graph, wrt=None) -> Graph:
    """``(inputs..., ct_outputs...) -> (outputs..., ct_inputs[wrt]...)``."""
    wrt = tuple(is_float(v.dtype) for v in graph.inputs) if wrt is None else tuple(wrt)
    primal, linear = linearize_graph(graph, wrt)
    n_out = len(graph.outputs)
    n_res = len(primal.outputs) - n_out
    back = transpose_graph(linear, n_res)
    avals = [(v.shape, v.dtype) for v in graph.inputs] + [(o.shape, o.dtype)
                                                           for o in graph.outputs]
    n = len(graph.inputs)

    def fn(*args):
        outs_res = eval_graph(primal, list(args[:n]))
        outs, res = outs_res[:n_out], outs_res[n_out:]
        return outs + eval_graph(back, res + list(args[n:]))

    new, _, captured = trace_graph(fn, avals)
    assert not captured
    return new
