"""Evaluate a Graph equation by equation.

``eval_graph`` is both the NumPy reference backend and the inliner: it applies each
equation through ``bind``, so on NumPy arrays it runs the primitives' implementations,
and on Tracers it re-records the equations into the active trace (that is how passes
re-trace graphs and how a transformed function is used inside another one).
"""
from __future__ import annotations

import numpy as np

from .ir import Graph, Lit
from .trace import bind, source_line


def eval_graph(graph: Graph, args, rewrite=None) -> list:
    """Evaluate ``graph`` on ``args`` (arrays or Tracers); returns the list of outputs.
    ``rewrite(eqn, operands)``: the list of an equation's results computed another way
    (a pass re-tracing a graph), or None to bind it as it is.

    Raises ``GuardFailure`` when a recorded control-flow guard does not hold.
    """
    if len(args) != len(graph.inputs):
        raise TypeError(f"graph takes {len(graph.inputs)} inputs, got {len(args)}")
    env = dict(zip(graph.inputs, args))

    def read(atom):
        return atom.value if isinstance(atom, Lit) else env[atom]

    for eqn in graph.eqns:
        xs = [read(a) for a in eqn.inputs]
        with source_line(eqn.source):
            outs = None if rewrite is None else rewrite(eqn, xs)
            if outs is None:
                result = bind(eqn.prim, *xs, **eqn.params)
                outs = result if eqn.prim.multiple_results else [result]
        env.update(zip(eqn.outputs, outs))
    # literal outputs are copied (a caller mutating a result must not change the graph),
    # and so are read-only views (a broadcast): results are ordinary writable arrays
    return [np.array(a.value) if isinstance(a, Lit) else _writable(env[a])
            for a in graph.outputs]


def rewrite_graph(graph: Graph, rewrite) -> Graph:
    """``graph`` traced again with ``rewrite`` (``eval_graph``'s): the passes that write
    some equations another way (``passes.sums``, ``passes.steps``, ``passes.implicit``)
    run the graph on fresh inputs and keep what binds."""
    from .trace import trace_graph
    new, _, captured = trace_graph(lambda *args: eval_graph(graph, list(args), rewrite),
                                   [(v.shape, v.dtype) for v in graph.inputs])
    assert not captured
    return new


def eval_graph_checked(graph: Graph, args, rewrite=None) -> list:
    """``gradc.eval_graph``: ``eval_graph`` for the user, its arguments checked against
    the Graph's inputs (their number, shapes and kinds of dtype) with an error at the
    user's line; inside gradc, ``eval_graph`` runs unchecked."""
    from .errors import ArgumentError, DTypeError, ShapeError, with_location
    from .ir import type_str
    from .trace import dtype_of, shape_of
    if not isinstance(graph, Graph):
        raise ArgumentError(with_location(
            f"gradc.eval_graph takes a Graph (from gradc.make_graph(f)(*args)), got a "
            f"{type(graph).__name__}"))
    args = list(args)
    if len(args) != len(graph.inputs):
        raise ArgumentError(with_location(
            f"gradc.eval_graph: the Graph takes {len(graph.inputs)} input"
            f"{'s' if len(graph.inputs) != 1 else ''} "
            f"({', '.join(type_str(v.shape, v.dtype) for v in graph.inputs)}), got "
            f"{len(args)}"))
    for k, (a, v) in enumerate(zip(args, graph.inputs)):
        shape, dtype = tuple(shape_of(a)), np.dtype(dtype_of(a))
        if shape != tuple(v.shape):
            raise ShapeError(with_location(
                f"gradc.eval_graph: input {k} has shape {shape}; the Graph was traced for "
                f"{type_str(v.shape, v.dtype)}: trace it again for these shapes"))
        if dtype.kind != np.dtype(v.dtype).kind:
            raise DTypeError(with_location(
                f"gradc.eval_graph: input {k} has dtype {dtype}; the Graph was traced for "
                f"{type_str(v.shape, v.dtype)}"))
    return eval_graph(graph, args, rewrite)


def _writable(x):
    return np.array(x) if isinstance(x, np.ndarray) and not x.flags.writeable else x


def run(graph: Graph, *args) -> list:
    """The reference backend: NumPy arrays in, NumPy arrays out."""
    return [np.asarray(x) for x in eval_graph(graph, [np.asarray(a) for a in args])]
