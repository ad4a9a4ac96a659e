"""Structured loops: ``scan`` holds its body as a sub-Graph and stays one equation.

``scan[body, n_consts, n_carry, length, reverse] consts... carry... xs...`` runs
``body(consts..., carry..., x[t]...) -> (carry..., y...)`` for t = 0 .. length-1 (or
backwards with ``reverse``) and returns the final carry and the stacked ys.  The body
is a closed Graph: values of the enclosing function that it reads are its leading
``consts`` inputs (captured when the body is traced).

Forward mode differentiates the body (``jvp_graph``) and scans it with the tangents as
extra consts, carries and xs, so the tangent of a loop is again one loop.  Reverse mode
needs the loop split into a primal scan that stores what the body's adjoint reads and a
backward scan over them; it is not written yet and says so.
"""
from __future__ import annotations

import numpy as np

from ..errors import GradcError
from ..ir import Graph, Primitive, is_float

scan_p = Primitive("scan", multiple_results=True)


def _split(args, n_consts, n_carry):
    return (list(args[:n_consts]), list(args[n_consts:n_consts + n_carry]),
            list(args[n_consts + n_carry:]))


def _scan_impl(*args, body, n_consts, n_carry, length, reverse):
    from ..interpret import eval_graph
    from ..trace import no_trace
    consts, carry, xs = _split([np.asarray(a) for a in args], n_consts, n_carry)
    steps = range(length - 1, -1, -1) if reverse else range(length)
    ys = []
    with no_trace():
        for t in steps:
            out = eval_graph(body, consts + carry + [x[t] for x in xs])
            carry = [np.asarray(c) for c in out[:n_carry]]
            ys.append([np.asarray(y) for y in out[n_carry:]])
    if reverse:
        ys.reverse()
    stacked = [np.stack([y[j] for y in ys]) if ys else np.empty((0,) + v.shape, v.dtype)
               for j, v in enumerate(body.outputs[n_carry:])]
    return carry + stacked


def _scan_abstract(*args, body, n_consts, n_carry, length, reverse):
    outs = body.outputs
    return ([(tuple(v.shape), v.dtype) for v in outs[:n_carry]]
            + [((length,) + tuple(v.shape), v.dtype) for v in outs[n_carry:]])


scan_p.impl = _scan_impl
scan_p.abstract = _scan_abstract


def _scan_jvp(primals, tangents, body, n_consts, n_carry, length, reverse):
    from .. import ops
    from ..passes.jvp import jvp_graph
    consts, carry, xs = _split(primals, n_consts, n_carry)
    tconsts, tcarry, txs = _split(tangents, n_consts, n_carry)
    # every float carry gets a tangent: one that starts at zero may not stay zero
    carry_t = [is_float(v.dtype) for v in body.inputs[n_consts:n_consts + n_carry]]
    wrt = ([t is not None for t in tconsts] + carry_t + [t is not None for t in txs])
    jbody = jvp_graph(body, wrt)
    n_in, n_out = len(body.inputs), len(body.outputs)
    prim_in, tan_in = list(jbody.inputs[:n_in]), iter(jbody.inputs[n_in:])
    tan_of = [next(tan_in) if w else None for w in wrt]
    c_in, k_in, x_in = _split(prim_in, n_consts, n_carry)
    tc_in, tk_in, tx_in = _split(tan_of, n_consts, n_carry)
    outs, touts = list(jbody.outputs[:n_out]), list(jbody.outputs[n_out:])
    y_float = [is_float(v.dtype) for v in body.outputs[n_carry:]]
    inputs = (c_in + [t for t in tc_in if t is not None] + k_in
              + [t for t in tk_in if t is not None] + x_in + [t for t in tx_in if t is not None])
    outputs = (outs[:n_carry] + [t for t, w in zip(touts[:n_carry], carry_t) if w]
               + outs[n_carry:] + [t for t, w in zip(touts[n_carry:], y_float) if w])
    new_body = Graph(tuple(inputs), jbody.eqns, tuple(outputs))
    zeros = [t if t is not None else ops.zeros_like(c)
             for c, t, w in zip(carry, tcarry, carry_t) if w]
    args = (consts + [t for t in tconsts if t is not None] + carry + zeros
            + xs + [t for t in txs if t is not None])
    n_tc = sum(t is not None for t in tconsts)
    result = scan_p.bind(*args, body=new_body, n_consts=n_consts + n_tc,
                         n_carry=n_carry + sum(carry_t), length=length, reverse=reverse)
    res = iter(result)
    carry_out = [next(res) for _ in range(n_carry)]
    tcarry_out = [next(res) if w else None for w in carry_t]
    ys = [next(res) for _ in y_float]
    tys = [next(res) if w else None for w in y_float]
    return carry_out + ys, tcarry_out + tys


def _scan_transpose(cts, *args, **params):
    raise GradcError("reverse mode (grad, vjp) through scan is not implemented yet: use "
                     "forward mode (gradc.jvp), or a Python loop, which gradc unrolls")


scan_p.jvp = _scan_jvp
scan_p.transpose = _scan_transpose


# ---------------------------------------------------------------- the user's functions

def scan(f, init, xs=None, length=None, reverse=False):
    """Loop ``carry, y = f(carry, x)`` over the leading axis of ``xs`` (JAX's
    ``lax.scan``): returns the final carry and the ys stacked along a new leading axis.
    ``init``, ``xs`` and the results may be pytrees; with ``xs=None``, ``length`` says
    how many steps.  The loop stays one equation of the Graph, however many steps.
    ``f`` is traced once, without concrete values: Python branches on the carry are an
    error inside it."""
    from ..errors import ArgumentError, with_location
    from ..pytree import flatten, unflatten
    from ..trace import dtype_of, shape_of, trace_graph
    carry_leaves, carry_def = flatten(init)
    x_leaves, x_def = flatten(xs)
    sizes = set()
    for x in x_leaves:
        if len(shape_of(x)) == 0:
            raise ArgumentError(with_location("scan: every leaf of xs needs a leading "
                                              "axis to loop over; got a scalar"))
        sizes.add(shape_of(x)[0])
    if length is None:
        if len(sizes) != 1:
            raise ArgumentError(with_location(
                "scan: give xs with one leading length, or length= when xs is None; "
                f"got leading lengths {sorted(sizes)}"))
        length = sizes.pop()
    elif sizes and sizes != {int(length)}:
        raise ArgumentError(with_location(
            f"scan: length={length} but xs have leading lengths {sorted(sizes)}"))
    length = int(length)
    n_carry = len(carry_leaves)
    carry_avals = [(tuple(shape_of(c)), np.dtype(dtype_of(c))) for c in carry_leaves]
    x_avals = [(tuple(shape_of(x))[1:], np.dtype(dtype_of(x))) for x in x_leaves]
    y_def = []

    def body(*leaves):
        result = f(unflatten(carry_def, leaves[:n_carry]), unflatten(x_def, leaves[n_carry:]))
        if not isinstance(result, tuple) or len(result) != 2:
            raise ArgumentError(with_location("scan: the body must return a pair "
                                              "(new carry, y)"))
        new_leaves, new_def = flatten(result[0])
        if new_def != carry_def:
            raise ArgumentError(with_location(
                f"scan: the body returns a carry of structure {new_def}, but the "
                f"initial carry has structure {carry_def}"))
        y_leaves, y_tree = flatten(result[1])
        y_def.append(y_tree)
        return list(new_leaves) + list(y_leaves)

    graph, _, captured = trace_graph(body, carry_avals + x_avals)
    for k, (out, (shape, dtype)) in enumerate(zip(graph.outputs[:n_carry], carry_avals)):
        if tuple(out.shape) != shape or np.dtype(out.dtype) != dtype:
            from ..ir import type_str
            raise ArgumentError(with_location(
                f"scan: the body changes carry leaf {k} from {type_str(shape, dtype)} to "
                f"{type_str(out.shape, out.dtype)}; a carry keeps its shape and dtype "
                "(convert it explicitly, e.g. with .astype)"))
    n_own = n_carry + len(x_leaves)
    body_graph = Graph(tuple(graph.inputs[n_own:]) + tuple(graph.inputs[:n_own]),
                       graph.eqns, graph.outputs)
    result = scan_p.bind(*captured, *carry_leaves, *x_leaves, body=body_graph,
                         n_consts=len(captured), n_carry=n_carry, length=length,
                         reverse=bool(reverse))
    return (unflatten(carry_def, result[:n_carry]), unflatten(y_def[0], result[n_carry:]))


def fori_loop(lower, upper, body_fun, init_val):
    """``val = body_fun(i, val)`` for i from ``lower`` to ``upper - 1`` (JAX's
    ``lax.fori_loop``), as one ``scan`` over the indices: bounds are Python ints."""
    from ..errors import ArgumentError, with_location
    from ..trace import Tracer
    if isinstance(lower, Tracer) or isinstance(upper, Tracer):
        raise ArgumentError(with_location(
            "fori_loop: the bounds must be Python ints (a traced bound makes the trip "
            "count depend on data)"))
    lower, upper = int(lower), int(upper)
    steps = np.arange(lower, max(lower, upper), dtype=np.int64)
    carry, _ = scan(lambda val, i: (body_fun(i, val), None), init_val, steps,
                    length=len(steps))
    return carry
