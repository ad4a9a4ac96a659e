"""Forward mode: the JVP pass.

``jvp_graph(g, wrt)`` returns a Graph of ``(primals..., tangents for wrt...)`` that
computes ``(outputs..., output tangents...)``.  Each equation is replaced by its
primitive's JVP rule; rules are traced (they call gradc operations), so the result is
an ordinary Graph that can be differentiated again.

Symbolic zeros: a tangent is ``None`` until something nonzero flows into it.  An
equation none of whose operands has a tangent is copied as it is, so parts of the
program that do not depend on the differentiated inputs cost nothing extra.
"""
from __future__ import annotations

import contextvars

from ..errors import GradcError, UnsupportedError
from ..ir import Graph, Lit, is_float, type_str
from ..trace import bind, source_line, trace_graph


def jvp_eval(graph: Graph, primals, tangents):
    """Run the JVP of ``graph`` on values or Tracers.  ``tangents`` has one entry per
    input, ``None`` for a zero tangent.  Returns ``(outputs, output_tangents)`` with
    ``None`` for zero output tangents."""
    env = dict(zip(graph.inputs, primals))
    tenv = {v: t for v, t in zip(graph.inputs, tangents) if t is not None}

    def read(a):
        return a.value if isinstance(a, Lit) else env[a]

    for eqn in graph.eqns:
        xs = [read(a) for a in eqn.inputs]
        ts = [None if isinstance(a, Lit) else tenv.get(a) for a in eqn.inputs]
        differentiable = any(is_float(v.dtype) for v in eqn.outputs)
        with source_line(eqn.source):
            if all(t is None for t in ts) or not differentiable:
                outs = bind(eqn.prim, *xs, **eqn.params)
                touts = None
            else:
                if any(v.dtype.kind == "c" for v in eqn.outputs):
                    v = eqn.outputs[0]
                    raise UnsupportedError(
                        "gradc differentiates real-valued programs only: this makes a "
                        f"complex value ({type_str(v.shape, v.dtype)}) from one that is "
                        "differentiated (jit evaluates complex arithmetic; grad, jvp and "
                        "vjp do not)" + (f"\n  at {eqn.source}" if eqn.source else ""))
                if eqn.prim.jvp is None:
                    raise GradcError(f"primitive {eqn.prim.name} has no JVP rule"
                                     + (f"\n  at {eqn.source}" if eqn.source else ""))
                outs, touts = eqn.prim.jvp(xs, ts, **eqn.params)
        if eqn.prim.multiple_results:
            env.update(zip(eqn.outputs, outs))
            for v, t in zip(eqn.outputs, touts or [None] * len(eqn.outputs)):
                if t is not None:
                    tenv[v] = t
        else:
            env[eqn.outputs[0]] = outs
            if touts is not None:
                tenv[eqn.outputs[0]] = touts
    outs = [read(a) for a in graph.outputs]
    touts = [None if isinstance(a, Lit) else tenv.get(a) for a in graph.outputs]
    return outs, touts


def zero_tangent(like):
    from .. import ops
    return ops.zeros_like(like)


_SPLIT = contextvars.ContextVar("gradc_jvp_split", default=False)


def splitting() -> bool:
    """Whether the JVP being built is for reverse mode (``linearize_graph``).  A loop's
    rule then writes its primal and tangent work as separate equations (the tangent one
    reading primal values only as residuals), so that the tangent part can be
    transposed; for forward mode alone it runs both in one loop."""
    return _SPLIT.get()


def jvp_graph(graph: Graph, wrt=None, split: bool = False) -> Graph:
    """The forward-mode Graph: inputs ``primals + tangents[wrt]``, outputs
    ``outputs + output tangents`` (zero tangents materialised).  ``split``: see
    ``splitting``."""
    token = _SPLIT.set(split)
    try:
        return _jvp_graph(graph, wrt)
    finally:
        _SPLIT.reset(token)


def _jvp_graph(graph: Graph, wrt) -> Graph:
    wrt = tuple(is_float(v.dtype) for v in graph.inputs) if wrt is None else tuple(wrt)
    n = len(graph.inputs)
    avals = [(v.shape, v.dtype) for v in graph.inputs]
    avals += [(v.shape, v.dtype) for v, w in zip(graph.inputs, wrt) if w]

    def fn(*args):
        primals, rest = list(args[:n]), iter(args[n:])
        tangents = [next(rest) if w else None for w in wrt]
        outs, touts = jvp_eval(graph, primals, tangents)
        touts = [zero_tangent(o) if t is None else t for o, t in zip(outs, touts)]
        return outs + touts

    new, _, captured = trace_graph(fn, avals)
    assert not captured, "jvp_graph of a closed graph captured a value"
    return new
