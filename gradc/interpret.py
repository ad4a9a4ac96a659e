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


def _writable(x):
    return np.array(x) if isinstance(x, np.ndarray) and not x.flags.writeable else x


def run(graph: Graph, *args) -> list:
    """The reference backend: NumPy arrays in, NumPy arrays out."""
    return [np.asarray(x) for x in eval_graph(graph, [np.asarray(a) for a in args])]
