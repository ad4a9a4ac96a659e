"""Primitives for user-defined derivative rules: ``custom_jvp_call``, ``custom_vjp_call``
and ``custom_lin`` (``gradc.custom_jvp`` and ``gradc.custom_vjp`` make them), and
``checkpoint`` (``gradc.checkpoint``).  Applied to tangents (a linear function whose
rule is itself, JAX's idiom), the first two transpose as their function.

``custom_jvp_call[fun, rule, n_args] args... consts... -> outs...`` computes the Graph
``fun(args..., consts...)``.  Its JVP rule runs the user's rule, a Graph ``(args...,
tangents..., consts...) -> (outs..., tangent outs...)``, in place of differentiating ``fun``; the
rule is ordinary traced code, so it is differentiated again for higher orders and
transposed for reverse mode (its tangent part must be linear in the tangents, as every
JVP is).

``custom_vjp_call[fun, fwd, bwd, n_args] args... consts... -> outs...`` computes ``fun``
too.  Differentiated:

* for reverse mode (``passes.linearize`` splits), ``fwd`` ``(args..., consts...) ->
  (outs..., residuals...)`` runs inline and the tangents are one ``custom_lin`` equation,
  whose transpose is the user's ``bwd`` ``(residuals..., consts..., cotangents...) ->
  argument cotangents``;
* for forward mode, the tangents are ``bwd`` transposed (``transpose_graph``): ``bwd`` is
  linear in the cotangents, so its transpose is the JVP that ``bwd`` is the adjoint of.
  A ``bwd`` that is not linear (gradient clipping), or affine, has no forward mode
  (``_check_linear``); the error (``NoForwardMode``) says so.

``custom_lin[bwd, n_res, name] residuals... tangents... -> tangent outs...`` (``name``
describes whose map it is) is linear in the tangents.  Evaluated forward (a matvec of an
implicit solve) it is ``bwd`` transposed.

``checkpoint[fun] args... -> outs...`` (``gradc.checkpoint``) is ``fun`` whose inner
values are not kept for reverse mode: its JVP rule under ``linearize`` keeps the outputs
as one equation and writes the tangents as a ``custom_lin`` whose ``bwd`` recomputes
``fun`` from the inputs and runs its VJP, so the residuals are the inputs alone.

The rules are ``Deferred``: traced when a derivative first needs them, not when the
function is called, because a rule usually calls the function itself (``fwd`` returns
``f(x)``), which would otherwise trace the rule again without end.  ``fun`` is traced at
the call and may read outer values (``consts``, trailing operands); the rules take them
as trailing inputs too (``rule(args..., tangents..., consts...)``, ``fwd(args...,
consts...)``, ``bwd(residuals..., consts..., cotangents...)``).  A derivative flowing
into a const is an error, as the rule says nothing about it.
Compiled targets inline ``fun`` (``passes.implicit``).
"""
from __future__ import annotations

import functools
import types

import numpy as np

from ..errors import ArgumentError, UnsupportedError, with_location
from ..ir import Graph, Primitive, Var, free_vars, is_float, map_subgraphs, subgraphs
from ..trace import no_trace


class Deferred:
    """A Graph traced when first needed (``make()``), then kept.  Hashed by identity;
    prints as its description."""

    def __init__(self, make, description: str):
        self._make = make
        self.description = description

    @functools.cached_property
    def graph(self) -> Graph:
        return self._make()

    def batched(self, flags, count) -> "Deferred":
        from ..passes.batching import batch_graph
        return Deferred(lambda: batch_graph(self.graph, flags, count),
                        f"{self.description} (batched)")

    def __str__(self):
        return self.description


class NoForwardMode(UnsupportedError):
    """A ``custom_vjp`` whose ``bwd`` is not linear in the cotangents: reverse mode only
    (``gradc.jacobian`` then takes reverse mode).  ``who`` names the function."""

    def __init__(self, message: str, who: str):
        super().__init__(message)
        self.who = who


def _run(graph: Graph, args) -> list:
    from ..interpret import eval_graph
    with no_trace():
        return [np.asarray(v) for v in eval_graph(graph, list(args))]


def avals_of(values) -> list:
    """``(shape, dtype)`` of each of ``values`` (Vars, Tracers or arrays)."""
    return [(tuple(v.shape), np.dtype(v.dtype)) for v in values]


def _closure_check(who, where, tangents) -> None:
    if any(t is not None for t in tangents):
        raise ArgumentError(with_location(
            f"{who} reads a value being differentiated from outside its arguments (a "
            "closure); its derivative rule cannot account for it: pass the value as an "
            "argument", where))


def _zeros_for(primals, tangents):
    """The tangents with each symbolic zero (``None``) made an array of zeros."""
    from ..passes.jvp import zero_tangent
    return [zero_tangent(p) if t is None else t for p, t in zip(primals, tangents)]


def _tangents_or_none(outs, touts):
    """Tangents of the floating-point outputs; ``None`` (no derivative) for the others."""
    from ..trace import dtype_of
    return [t if is_float(dtype_of(o)) else None for o, t in zip(outs, touts)]


# ---------------------------------------------------------------- custom_jvp_call

custom_jvp_call_p = Primitive("custom_jvp_call", multiple_results=True)


def _cj_impl(*args, fun, rule, n_args, name, where):
    return _run(fun, args)


def _cj_abstract(*args, fun, rule, n_args, name, where):
    return avals_of(fun.outputs)


def _cj_jvp(primals, tangents, fun, rule, n_args, name, where):
    from ..interpret import eval_graph
    xs, consts = list(primals[:n_args]), list(primals[n_args:])
    _closure_check(f"gradc.custom_jvp function {name}", where, tangents[n_args:])
    # (a zero tangent only where the rule reads it: one it ignores, as a mask's, was a
    # dead equation, in a loop's body left there and run at every step)
    from ..passes.jvp import zero_tangent
    graph = rule.graph
    read = set(free_vars(graph.eqns)).union(o for o in graph.outputs if isinstance(o, Var))
    ts = [zero_tangent(x) if t is None and v in read else t     # (None: never read)
          for x, t, v in zip(xs, tangents[:n_args], graph.inputs[n_args:2 * n_args])]
    out = eval_graph(graph, xs + ts + consts)
    m = len(fun.outputs)
    return out[:m], _tangents_or_none(out[:m], out[m:])


def _transpose_fun(cts, args, fun, who, where):
    """The transpose of ``fun`` in its undefined (linear) operands: a function with a
    rule applied to tangents (a linear function, as JAX allows) transposes as itself."""
    from ..errors import GradcError
    from ..passes.transpose import backward_pass
    from .rules import is_undefined
    linear = [i for i, a in enumerate(args) if is_undefined(a)]
    known = [i for i, a in enumerate(args) if not is_undefined(a)]
    graph = fun.replace(inputs=tuple(fun.inputs[i] for i in known + linear))
    try:
        in_cts = backward_pass(graph, [args[i] for i in known], list(cts))
    except GradcError as e:
        raise UnsupportedError(with_location(
            f"reverse mode: {who} is applied to a tangent, so it must be linear in it, "
            f"and it is not ({str(e).splitlines()[0]})", where)) from None
    out = [None] * len(args)
    for i, c in zip(linear, in_cts):
        out[i] = c
    return out


def _cj_transpose(cts, *args, fun, rule, n_args, name, where):
    return _transpose_fun(cts, args, fun, f"gradc.custom_jvp function {name}", where)


custom_jvp_call_p.impl = _cj_impl
custom_jvp_call_p.abstract = _cj_abstract
custom_jvp_call_p.jvp = _cj_jvp
custom_jvp_call_p.transpose = _cj_transpose


# ---------------------------------------------------------------- custom_vjp_call

custom_vjp_call_p = Primitive("custom_vjp_call", multiple_results=True)


def _cv_impl(*args, fun, fwd, bwd, n_args, name, where):
    return _run(fun, args)


def _cv_abstract(*args, fun, fwd, bwd, n_args, name, where):
    return avals_of(fun.outputs)


def _cv_jvp(primals, tangents, fun, fwd, bwd, n_args, name, where):
    from ..interpret import eval_graph
    from ..passes.jvp import splitting
    xs, consts = list(primals[:n_args]), list(primals[n_args:])
    who = f"gradc.custom_vjp function {name}"
    _closure_check(who, where, tangents[n_args:])
    m = len(fun.outputs)
    out = eval_graph(fwd.graph, xs + consts)
    outs, res = out[:m], out[m:] + consts       # bwd reads the outside values too
    ts = _zeros_for(xs, tangents[:n_args])
    if splitting():
        # reverse mode: one linear equation whose transpose is bwd
        touts = custom_lin_p.bind(*res, *ts, bwd=bwd.graph, n_res=len(res), name=who,
                                  where=where)
    else:
        touts = eval_graph(forward_of(bwd.graph, len(res), who, where), res + ts)
    return outs, _tangents_or_none(outs, touts)


def _cv_transpose(cts, *args, fun, fwd, bwd, n_args, name, where):
    return _transpose_fun(cts, args, fun, f"gradc.custom_vjp function {name}", where)


custom_vjp_call_p.impl = _cv_impl
custom_vjp_call_p.abstract = _cv_abstract
custom_vjp_call_p.jvp = _cv_jvp
custom_vjp_call_p.transpose = _cv_transpose


# ---------------------------------------------------------------- custom_lin

custom_lin_p = Primitive("custom_lin", multiple_results=True)


@functools.lru_cache(maxsize=256)
def forward_of(bwd: Graph, n_res: int, who: str, where) -> Graph:
    """``bwd`` ``(residuals..., cotangents...) -> argument cotangents`` transposed in its
    cotangents: ``(residuals..., argument tangents...) -> output tangents``, the
    forward-mode map whose adjoint ``bwd`` is."""
    from ..errors import GradcError
    from ..passes.simplify import simplify
    from ..passes.transpose import transpose_graph
    bwd = without_barriers(bwd)
    try:
        _check_linear(bwd, n_res)
        return simplify(transpose_graph(bwd, n_res))
    except (GradcError, ValueError) as e:
        raise NoForwardMode(with_location(
            f"forward mode (jvp, linearize, jacfwd, hessian) of {who}: "
            "its bwd is not linear in the cotangents, so it is the adjoint of no JVP "
            "(gradient clipping, for one, has no forward mode); use reverse mode, or "
            "give the function a gradc.custom_jvp rule "
            f"(transposing bwd failed: {str(e).splitlines()[0]})", where), who) from None


# equations whose operands are added (or chosen between): in a linear map, each of them
# must be linear too, or zero; the others are linear in one operand scaled by the rest
_ADDITIVE = {"add", "sub", "select", "concatenate", "pad", "scatter_add", "index_set",
             "max", "min"}
# a zero operand makes their result zero
_PRODUCTS = {"mul", "einsum", "dot"}
# sub-Graphs read the equation's operands in order (their linear inputs are checked too)
_SAME_INPUTS = {"custom_jvp_call", "custom_vjp_call", "checkpoint", "scan"}


def _check_linear(graph: Graph, n_res: int) -> None:
    """Raise unless ``graph`` is linear (not affine, not constant) in the inputs after
    the first ``n_res``: transposition would drop a term that does not read them, and
    could not transpose a product of two of them."""
    _linear_outputs(graph, [False] * n_res + [True] * (len(graph.inputs) - n_res),
                    [False] * len(graph.inputs), check_outputs=True)


def _linear_outputs(graph: Graph, linear_in, zero_in, check_outputs=False) -> list:
    """Which outputs of ``graph`` are linear in the inputs flagged ``linear_in`` (the
    others must then be zero, for a linear map); raises ``GradcError`` where a term is
    added without reading them, or two of them are multiplied."""
    from ..errors import GradcError
    from ..ir import Var
    linear = {v for v, f in zip(graph.inputs, linear_in) if f}
    zero = {v for v, f in zip(graph.inputs, zero_in) if f}

    def is_zero(a):
        return (a in zero) if isinstance(a, Var) else not np.any(np.asarray(a.value))

    for eqn in graph.eqns:
        reads = [isinstance(a, Var) and a in linear for a in eqn.inputs]
        name = eqn.prim.name
        if not any(reads):
            floats = [a for a in eqn.inputs if is_float(a.dtype)]
            if (name in _PRODUCTS and any(is_zero(a) for a in floats)) or (
                    floats and all(is_zero(a) for a in floats) and not subgraphs(eqn)):
                zero.update(eqn.outputs)         # zeros (ops.full, 0 * r)
            continue
        inner = subgraphs(eqn)
        if name in _ADDITIVE:
            if any(not r and is_float(a.dtype) and not is_zero(a)
                   for a, r in zip(eqn.inputs, reads)):
                raise GradcError(f"{name} adds a term that does not read the cotangents")
        elif name in _PRODUCTS and sum(reads) > 1:
            raise GradcError(f"{name} multiplies two values that read the cotangents")
        elif name == "cond":
            if reads[0]:
                raise GradcError("cond branches on a value that reads the cotangents")
            outs = [_linear_outputs(b, reads[1:], [is_zero(a) for a in eqn.inputs[1:]])
                    for b in eqn.params["branches"]]
            linear.update(v for k, v in enumerate(eqn.outputs) if any(o[k] for o in outs))
            zero.update(v for k, v in enumerate(eqn.outputs) if not any(o[k] for o in outs))
            continue
        elif name in _SAME_INPUTS:
            body = eqn.params.get("body") or eqn.params["fun"]
            flags = list(reads)
            if name == "scan":      # a carry that starts at zero may accumulate tangents
                c0, c1 = eqn.params["n_consts"], eqn.params["n_consts"] + eqn.params["n_carry"]
                flags[c0:c1] = [r or is_zero(a) for a, r in
                                zip(eqn.inputs[c0:c1], reads[c0:c1])]
            _linear_outputs(body, flags, [False] * len(flags))
        elif name == "linear_solve":
            if any(reads[:-1]):
                raise GradcError("linear_solve's matrix reads the cotangents")
        elif inner:
            raise GradcError(f"{name} over values that read the cotangents")
        linear.update(eqn.outputs)
    flags = [isinstance(o, Var) and o in linear for o in graph.outputs]
    if check_outputs and not all(f or is_zero(o) for f, o in zip(flags, graph.outputs)):
        raise GradcError("a result that does not read the cotangents")
    return flags


def _lin_impl(*args, bwd, n_res, name, where):
    return _run(forward_of(bwd, n_res, name, where), args)


def _lin_abstract(*args, bwd, n_res, name, where):
    return avals_of(bwd.inputs[n_res:])


def _lin_jvp(primals, tangents, bwd, n_res, name, where):
    from ..passes.jvp import jvp_eval
    return jvp_eval(forward_of(bwd, n_res, name, where), list(primals), list(tangents))


def _lin_transpose(cts, *args, bwd, n_res, name, where):
    from ..interpret import eval_graph
    from ..passes.transpose import zeros_of
    from .rules import is_undefined
    if any(is_undefined(a) for a in args[:n_res]):
        raise UnsupportedError(with_location(
            f"{name}: its bwd is linear in the cotangents only, "
            "not in the residuals", where))
    cts = [zeros_of(v) if c is None else c
           for v, c in zip(bwd.inputs[n_res:], cts)]
    in_cts = eval_graph(bwd, list(args[:n_res]) + cts)
    return [None] * n_res + [c if is_undefined(a) else None
                             for a, c in zip(args[n_res:], in_cts)]


custom_lin_p.impl = _lin_impl
custom_lin_p.abstract = _lin_abstract
custom_lin_p.jvp = _lin_jvp
custom_lin_p.transpose = _lin_transpose


# ---------------------------------------------------------------- checkpoint

checkpoint_p = Primitive("checkpoint", multiple_results=True)


# ``barrier[n] values... deps... -> values...``: the identity on its first n operands,
# whose results exist only once the other operands do.  ``checkpoint``'s recomputation
# starts from its inputs passed through a barrier on the output cotangents: CSE cannot
# merge it back into the forward pass (its operands are other values), and no schedule
# can run it before the backward pass reaches it, so the forward pass's inner values
# are dead by then and their memory is reused (``codegen/memplan``).  Its derivative is
# the identity's: the deps are read for their time, not their value.
barrier_p = Primitive("barrier", multiple_results=True)


def _barrier_impl(*args, n):
    return [np.asarray(a) for a in args[:n]]


def _barrier_abstract(*args, n):
    return avals_of(args[:n])


def _barrier_jvp(primals, tangents, n):
    return barrier_p.bind(*primals, n=n), list(tangents[:n])


def _barrier_transpose(cts, *args, n):
    from .rules import is_undefined
    return [c if is_undefined(a) else None for a, c in zip(args[:n], cts)] + \
        [None] * (len(args) - n)


barrier_p.impl = _barrier_impl
barrier_p.abstract = _barrier_abstract
barrier_p.jvp = _barrier_jvp
barrier_p.transpose = _barrier_transpose


def _has_barrier(graph: Graph) -> bool:
    return any(e.prim is barrier_p or any(_has_barrier(g) for g in subgraphs(e))
               for e in graph.eqns)


def without_barriers(graph: Graph) -> Graph:
    """``graph`` with each ``barrier``'s results replaced by its values, in sub-Graphs
    too (a loop's body): for analyses that read values, not schedules (transposition;
    a barrier's other operands would count as read)."""
    if not _has_barrier(graph):
        return graph
    from ..ir import Var
    sub: dict = {}
    eqns = []

    def read(a):
        return sub.get(a, a) if isinstance(a, Var) else a

    for e in graph.eqns:
        if e.prim is barrier_p:
            sub.update(zip(e.outputs, (read(a) for a in e.inputs[:e.params["n"]])))
            continue
        params = types.MappingProxyType(map_subgraphs(e, without_barriers))
        eqns.append(e.replace(inputs=tuple(read(a) for a in e.inputs), params=params))
    return Graph(graph.inputs, tuple(eqns), tuple(read(o) for o in graph.outputs))


@functools.lru_cache(maxsize=256)
def recomputing_vjp(fun: Graph) -> Graph:
    """``(inputs..., output cotangents...) -> a cotangent per input``: ``fun``'s forward
    pass recomputed from its inputs, once the cotangents exist (a ``barrier``), then its
    VJP (zeros for non-float inputs)."""
    from ..interpret import eval_graph
    from ..passes.simplify import simplify
    from ..passes.transpose import vjp_graph, zeros_of
    from ..trace import trace_graph
    wrt = tuple(is_float(v.dtype) for v in fun.inputs)
    vjp = vjp_graph(fun, wrt)
    n, m = len(fun.inputs), len(fun.outputs)

    def fn(*args):
        args = list(barrier_p.bind(*args, n=n)) + list(args[n:])
        cts = iter(eval_graph(vjp, args)[m:])
        return [next(cts) if w else zeros_of(v)
                for v, w in zip(fun.inputs, wrt)]

    avals = avals_of(fun.inputs) + avals_of(fun.outputs)
    graph, _, captured = trace_graph(fn, avals)
    assert not captured and len(graph.inputs) == n + m
    return simplify(graph)


def _ck_impl(*args, fun, name, where):
    return _run(fun, args)


def _ck_abstract(*args, fun, name, where):
    return avals_of(fun.outputs)


def _ck_jvp(primals, tangents, fun, name, where):
    """Forward mode: ``fun``'s own JVP.  Reverse mode: the outputs as one equation (its
    inner values are no residuals) and the tangents as a ``custom_lin`` that reads only
    the inputs, whose transpose recomputes ``fun`` and runs its VJP."""
    from ..passes.jvp import jvp_eval, splitting
    if not splitting():
        return jvp_eval(fun, list(primals), list(tangents))
    outs = checkpoint_p.bind(*primals, fun=fun, name=name, where=where)
    ts = _zeros_for(primals, tangents)
    touts = custom_lin_p.bind(*primals, *ts, bwd=recomputing_vjp(fun), n_res=len(primals),
                              name=f"gradc.checkpoint of {name}", where=where)
    return outs, _tangents_or_none(outs, touts)


def _ck_transpose(cts, *args, fun, name, where):
    return _transpose_fun(cts, args, fun, f"gradc.checkpoint of {name}", where)


checkpoint_p.impl = _ck_impl
checkpoint_p.abstract = _ck_abstract
checkpoint_p.jvp = _ck_jvp
checkpoint_p.transpose = _ck_transpose
