"""``argmax`` and ``argmin`` inside a scan's step, for the CUDA target, as two
reductions the one-kernel scan lowers (``codegen.cudarows``), where it has no lowering
of the primitives themselves (the step then ran as a host loop, a launch or more a
step):

    argmax(x, axis) = min over axis of where((x == max(x, axis)) | (x != x), iota, n)

The first index of the maximum, or, when ``x`` holds a NaN (the maximum is then NaN,
and no element equals it), the first NaN's: NumPy's ties and NaNs.  The second
reduction reads the first's result at its own kept element, so the two merge into one
loop (``cudarows._merged``).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Lit, Var, make_eqn, map_subgraphs, subgraphs

ARG = {"argmax": np.max, "argmin": np.min}


def arg_reductions(graph: Graph, in_loop: bool = False) -> Graph:
    """``graph`` with each ``argmax``/``argmin`` of real numbers inside a scan's body
    (at any depth) written as reductions; ``graph`` itself when there is none."""
    eqns, changed = [], False
    for eqn in graph.eqns:
        if subgraphs(eqn):
            inner = in_loop or eqn.prim.name == "scan"
            params = map_subgraphs(eqn, lambda g: arg_reductions(g, inner))
            if any(params[k] is not eqn.params[k] for k in params):
                eqn = make_eqn(eqn.prim, eqn.inputs, eqn.outputs, params, eqn.source)
                changed = True
        x = eqn.inputs[0] if eqn.inputs else None
        if in_loop and eqn.prim.name in ARG and isinstance(x, Var) and \
                np.dtype(x.dtype).kind in "biuf":
            eqns += _decomposed(eqn)
            changed = True
            continue
        eqns.append(eqn)
    return graph.replace(eqns=tuple(eqns)) if changed else graph


def _decomposed(eqn) -> list:
    """The equations computing ``eqn``'s result as reductions (traced from NumPy code,
    then renamed onto ``eqn``'s operand and result)."""
    from ..trace import source_line, trace_graph
    x, axis = eqn.inputs[0], eqn.params["axis"]
    n = int(x.shape[axis])
    extremum = ARG[eqn.prim.name]
    iota = np.arange(n, dtype=np.int64).reshape(
        [n if d == axis else 1 for d in range(x.ndim)])

    def first_index(v):
        hit = v == extremum(v, axis=axis, keepdims=True)
        if np.dtype(x.dtype).kind == "f":
            hit = hit | (v != v)
        return [np.min(np.where(hit, iota, np.int64(n)), axis=axis)]
    with source_line(eqn.source):
        graph, _, captured = trace_graph(first_index, [(tuple(x.shape), x.dtype)])
    assert not captured
    rename = {graph.inputs[0]: x}
    out = graph.outputs[0]
    if isinstance(out, Lit) or out in rename:       # (a constant result: n == 1)
        from ..prims.shape import broadcast_p
        return [make_eqn(broadcast_p, (Lit(np.asarray(0, np.int64)),), eqn.outputs,
                         {"shape": tuple(eqn.outputs[0].shape), "dims": ()}, eqn.source)]
    rename[out] = eqn.outputs[0]
    made = []
    for e in graph.eqns:
        for o in e.outputs:
            rename.setdefault(o, Var(tuple(o.shape), o.dtype))
        made.append(make_eqn(e.prim, tuple(rename.get(a, a) if isinstance(a, Var) else a
                                          for a in e.inputs),
                             tuple(rename[o] for o in e.outputs), e.params, e.source))
    return made
