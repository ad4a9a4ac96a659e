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

from ..ir import Graph, map_subgraphs, subgraphs

ARG = {"argmax": np.max, "argmin": np.min}


def arg_reductions(graph: Graph, in_loop: bool = False) -> Graph:
    """``graph`` with each ``argmax``/``argmin`` of real numbers inside a scan's body
    (at any depth) written as reductions (the graph traced again, as
    ``passes.implicit.expand`` does); ``graph`` itself when there is none."""
    if not _needs(graph, in_loop):
        return graph
    from ..interpret import eval_graph
    from ..trace import bind, trace_graph

    def rewrite(eqn, xs):
        if _decomposable(eqn, in_loop):
            return [first_index(xs[0], eqn.prim.name, eqn.params["axis"])]
        if not subgraphs(eqn):
            return None
        inner = in_loop or eqn.prim.name == "scan"
        out = bind(eqn.prim, *xs, **map_subgraphs(eqn, lambda g: arg_reductions(g, inner)))
        return out if eqn.prim.multiple_results else [out]

    new, _, captured = trace_graph(lambda *args: eval_graph(graph, list(args), rewrite),
                                   [(v.shape, v.dtype) for v in graph.inputs])
    assert not captured
    return new


def _decomposable(eqn, in_loop) -> bool:
    return in_loop and eqn.prim.name in ARG and eqn.inputs[0].ndim > 0 and \
        np.dtype(eqn.inputs[0].dtype).kind in "biuf"


def _needs(graph: Graph, in_loop: bool) -> bool:
    return any(_decomposable(e, in_loop) or any(
        _needs(g, in_loop or e.prim.name == "scan") for g in subgraphs(e))
        for e in graph.eqns)


def first_index(v, name: str, axis: int):
    """``argmax``/``argmin`` (``name``) of traced ``v`` along ``axis`` as reductions."""
    n = int(v.shape[axis])
    iota = np.arange(n, dtype=np.int64).reshape(
        [n if d == axis else 1 for d in range(len(v.shape))])
    hit = v == ARG[name](v, axis=axis, keepdims=True)
    if np.dtype(v.dtype).kind == "f":
        hit = hit | (v != v)
    return np.min(np.where(hit, iota, np.int64(n)), axis=axis)
