"""Structured loops: ``scan`` holds its body as a sub-Graph and stays one equation.

``scan[body, n_consts, n_carry, length, reverse] consts... carry... xs...`` runs
``body(consts..., carry..., x[t]...) -> (carry..., y...)`` for t = 0 .. length-1 (or
backwards with ``reverse``) and returns the final carry and the stacked ys.  The body
is a closed Graph: values of the enclosing function that it reads are its leading
``consts`` inputs (captured when the body is traced).

Derivatives split the body (``linearize_graph``) into its primal part, which a first
scan runs while it stacks the values the tangent part reads (the residuals: the tape),
and its tangent part, which a second scan runs over the residuals.  Forward mode runs
both; reverse mode transposes the second into a scan running the other way.  Memory:
the residuals of every step (a value per step for each intermediate the tangent part
reads), as for JAX's ``lax.scan``; a residual computed from the loop's consts alone is
computed once, before the loop, and not stacked.
"""
from __future__ import annotations

import numpy as np

from ..errors import ArgumentError, GradcError, check_function, with_location
from ..interpret import eval_graph
from ..ir import Graph, Primitive, Var, computed_from, is_float, type_str
from ..pytree import flatten, unflatten
from ..trace import Tracer, dtype_of, mark_array0d, no_trace, shape_of, trace_graph
from .rules import UndefinedPrimal

scan_p = Primitive("scan", multiple_results=True)


def _avals(leaves, drop=0) -> list:
    """``(shape, dtype)`` of each leaf, without its first ``drop`` axes."""
    return [(tuple(shape_of(x))[drop:], np.dtype(dtype_of(x))) for x in leaves]


def _closed(fn, avals) -> Graph:
    """``fn`` traced on abstract inputs, as a Graph that reads nothing from outside."""
    graph, _, captured = trace_graph(fn, avals)
    assert not captured
    return graph


def _consts_first(graph, n_own) -> Graph:
    """A traced body with the values it captured (its trailing inputs) moved first."""
    return Graph(tuple(graph.inputs[n_own:]) + tuple(graph.inputs[:n_own]), graph.eqns,
                 graph.outputs)


def _check_kept(what, outputs, avals, hint):
    """A loop's new value has the shapes and dtypes of its old one."""
    for k, (out, (shape, dtype)) in enumerate(zip(outputs, avals)):
        if tuple(out.shape) != shape or np.dtype(out.dtype) != dtype:
            raise ArgumentError(with_location(
                f"{what} {k} from {type_str(shape, dtype)} to "
                f"{type_str(out.shape, out.dtype)}; {hint}"))


def _split(args, n_consts, n_carry):
    return (list(args[:n_consts]), list(args[n_consts:n_consts + n_carry]),
            list(args[n_consts + n_carry:]))


def _scan_impl(*args, body, n_consts, n_carry, length, reverse):
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


def _loop_invariant(graph: Graph, n_consts: int, wanted) -> dict:
    """The outputs among ``wanted`` that ``graph`` (a loop's body) computes from its
    first ``n_consts`` inputs alone, not inputs themselves, and the equations computing
    them: ``{"values": [...], "eqns": (...)}``, empty when there are none."""
    known, eqns = computed_from(graph, n_consts)
    inputs = set(graph.inputs)
    values = list(dict.fromkeys(r for r in wanted if isinstance(r, Var) and r in known
                                and r not in inputs))
    if not values:
        return {}
    from ..passes.simplify import dce
    return {"values": values, "eqns": dce(Graph(graph.inputs[:n_consts], tuple(eqns),
                                                tuple(values))).eqns}


def _scan_jvp(primals, tangents, body, n_consts, n_carry, length, reverse):
    """Two loops: a primal scan of the body's primal part, which also stacks the values
    its tangent part reads (residuals), then a scan of the tangent part over them.  The
    second depends on the tangents only linearly, so reverse mode (linearize, then
    transpose) finds the split made: the first loop is primal, the second is linear and
    is transposed by ``_scan_transpose``."""
    from .. import ops
    from ..passes.jvp import splitting
    from ..passes.linearize import linearize_graph
    consts, carry, xs = _split(primals, n_consts, n_carry)
    tconsts, tcarry, txs = _split(tangents, n_consts, n_carry)
    # every float carry gets a tangent: one that starts at zero may not stay zero
    carry_t = [is_float(v.dtype) for v in body.inputs[n_consts:n_consts + n_carry]]
    wrt = [t is not None for t in tconsts] + carry_t + [t is not None for t in txs]
    if not splitting():
        return _scan_jvp_fused(body, consts, carry, xs, tconsts, tcarry, txs, wrt, carry_t,
                               length, reverse)
    primal_body, linear_body = linearize_graph(body, wrt)
    n_y = len(body.outputs) - n_carry
    n_res = len(primal_body.outputs) - len(body.outputs)
    # residuals that are consts of the body, or computed from consts alone (a parameter
    # broadcast to the carry's shape), are the same at every step: passed as they are
    # (those computed once, before the loop), not stacked
    res_out = primal_body.outputs[len(body.outputs):]
    const_of = {v: k for k, v in enumerate(primal_body.inputs[:n_consts])}
    known = list(consts)                 # (the consts, then the hoisted residuals)
    invariant = _loop_invariant(primal_body, n_consts, res_out)
    if invariant:
        known += eval_graph(Graph(primal_body.inputs[:n_consts], invariant["eqns"],
                                  tuple(invariant["values"])), list(consts))
        const_of.update({r: n_consts + k for k, r in enumerate(invariant["values"])})
    stacked = [r for r in res_out if r not in const_of]
    primal_body = Graph(primal_body.inputs, primal_body.eqns,
                        primal_body.outputs[:len(body.outputs)] + tuple(stacked))
    out = scan_p.bind(*consts, *carry, *xs, body=primal_body, n_consts=n_consts,
                      n_carry=n_carry, length=length, reverse=reverse)
    carry_out, ys, res = out[:n_carry], out[n_carry:n_carry + n_y], out[n_carry + n_y:]
    # the tangent loop: consts = the invariant residuals, then const tangents; carries =
    # float carries' tangents; xs = stacked residuals, then xs' tangents; ys = tangents
    # of the float ys
    res_in, tan_in = linear_body.inputs[:n_res], iter(linear_body.inputs[n_res:])
    fixed_in = [v for v, r in zip(res_in, res_out) if r in const_of]
    fixed = [known[const_of[r]] for r in res_out if r in const_of]
    step_in = [v for v, r in zip(res_in, res_out) if r not in const_of]
    tan_of = [next(tan_in) if w else None for w in wrt]
    tc_in, tk_in, tx_in = _split(tan_of, n_consts, n_carry)
    y_float = [is_float(v.dtype) for v in body.outputs[n_carry:]]
    touts = linear_body.outputs
    inputs = (fixed_in + [t for t in tc_in if t is not None]
              + [t for t in tk_in if t is not None]
              + step_in + [t for t in tx_in if t is not None])
    outputs = ([t for t, w in zip(touts[:n_carry], carry_t) if w]
               + [t for t, w in zip(touts[n_carry:], y_float) if w])
    zeros = [t if t is not None else ops.zeros_like(c)
             for c, t, w in zip(carry, tcarry, carry_t) if w]
    tc = fixed + [t for t in tconsts if t is not None]
    tout = scan_p.bind(*tc, *zeros, *res, *[t for t in txs if t is not None],
                       body=Graph(tuple(inputs), linear_body.eqns, tuple(outputs)),
                       n_consts=len(tc), n_carry=len(zeros), length=length, reverse=reverse)
    tout = iter(tout)
    tcarry_out = [next(tout) if w else None for w in carry_t]
    tys = [next(tout) if w else None for w in y_float]
    return list(carry_out) + list(ys), tcarry_out + tys


def _scan_jvp_fused(body, consts, carry, xs, tconsts, tcarry, txs, wrt, carry_t, length,
                    reverse):
    """Forward mode alone: one scan of the body's JVP, the tangents carried beside the
    values (no tape)."""
    from .. import ops
    from ..passes.jvp import jvp_graph
    n_consts, n_carry = len(consts), len(carry)
    jbody = jvp_graph(body, wrt)
    n_in = len(body.inputs)
    prim_in, tan_in = list(jbody.inputs[:n_in]), iter(jbody.inputs[n_in:])
    tan_of = [next(tan_in) if w else None for w in wrt]
    tc_in, tk_in, tx_in = _split(tan_of, n_consts, n_carry)
    pc_in, pk_in, px_in = _split(prim_in, n_consts, n_carry)
    n_out = len(body.outputs)
    touts = jbody.outputs[n_out:]
    y_float = [is_float(v.dtype) for v in body.outputs[n_carry:]]
    some = lambda vs: [v for v in vs if v is not None]          # noqa: E731
    inputs = pc_in + some(tc_in) + pk_in + some(tk_in) + px_in + some(tx_in)
    outputs = (list(jbody.outputs[:n_carry]) + [t for t, w in zip(touts[:n_carry], carry_t) if w]
               + list(jbody.outputs[n_carry:n_out])
               + [t for t, w in zip(touts[n_carry:], y_float) if w])
    zeros = [t if t is not None else ops.zeros_like(c)
             for c, t, w in zip(carry, tcarry, carry_t) if w]
    tc = some(tconsts)
    out = scan_p.bind(*consts, *tc, *carry, *zeros, *xs, *some(txs),
                      body=Graph(tuple(inputs), jbody.eqns, tuple(outputs)),
                      n_consts=n_consts + len(tc), n_carry=n_carry + len(zeros),
                      length=length, reverse=reverse)
    out = iter(out)
    prim_carry = [next(out) for _ in carry]
    t_carry = [next(out) if w else None for w in carry_t]
    ys = [next(out) for _ in y_float]
    t_ys = [next(out) if w else None for w in y_float]
    return prim_carry + ys, t_carry + t_ys


def _scan_transpose(cts, *args, body, n_consts, n_carry, length, reverse):
    """The adjoint of a scan that is linear in its carries and in some consts and xs
    (the tangent loop ``_scan_jvp`` writes): a scan running the other way over the
    transposed body, its carries the carries' cotangents and the sums of the linear
    consts' cotangents, its xs the non-linear xs and the ys' cotangents."""
    from .. import ops
    from ..passes.transpose import transpose_graph
    # the carries are tangents, so the body is linear in them, even where one starts
    # from a constant (the zero tangent of an input not differentiated): its cotangent is
    # then simply not returned
    consts, carry, xs = _split(list(args), n_consts, n_carry)
    lin = lambda a: isinstance(a, UndefinedPrimal)          # noqa: E731
    c_in, k_in, x_in = _split(list(body.inputs), n_consts, n_carry)
    nl_c = [v for v, a in zip(c_in, consts) if not lin(a)]
    l_c = [v for v, a in zip(c_in, consts) if lin(a)]
    nl_x = [v for v, a in zip(x_in, xs) if not lin(a)]
    l_x = [v for v, a in zip(x_in, xs) if lin(a)]
    linear = Graph(tuple(nl_c + nl_x + l_c + k_in + l_x), body.eqns, body.outputs)
    back = transpose_graph(linear, len(nl_c) + len(nl_x))
    n_y = len(body.outputs) - n_carry
    # the backward body: consts (non-linear consts), carries (carry cotangents, sums of
    # the linear consts' cotangents), xs (non-linear xs, ys' cotangents)
    avals = ([(v.shape, v.dtype) for v in nl_c] + [(v.shape, v.dtype) for v in k_in]
             + [(v.shape, v.dtype) for v in l_c] + [(v.shape, v.dtype) for v in nl_x]
             + [(v.shape, v.dtype) for v in body.outputs[n_carry:]])

    def step(*vals):
        it = iter(vals)
        ncs = [next(it) for _ in nl_c]
        ct_k = [next(it) for _ in k_in]
        acc = [next(it) for _ in l_c]
        nxs = [next(it) for _ in nl_x]
        ct_y = [next(it) for _ in range(n_y)]
        got = eval_graph(back, ncs + nxs + ct_k + ct_y)
        ct_lc, ct_kk, ct_lx = (got[:len(l_c)], got[len(l_c):len(l_c) + n_carry],
                               got[len(l_c) + n_carry:])
        return list(ct_kk) + [a + c for a, c in zip(acc, ct_lc)] + list(ct_lx)

    step_graph = _closed(step, avals)
    ct_carry = [ops.full(tuple(v.shape), 0, v.dtype) if c is None else c
                for v, c in zip(body.outputs[:n_carry], cts[:n_carry])]
    ct_ys = [ops.full((length,) + tuple(v.shape), 0, v.dtype) if c is None else c
             for v, c in zip(body.outputs[n_carry:], cts[n_carry:])]
    acc0 = [ops.full(tuple(v.shape), 0, v.dtype) for v in l_c]
    out = scan_p.bind(*[a for a in consts if not lin(a)], *ct_carry, *acc0,
                      *[a for a in xs if not lin(a)], *ct_ys, body=step_graph,
                      n_consts=len(nl_c), n_carry=n_carry + len(l_c), length=length,
                      reverse=not reverse)
    ct_k0, ct_lc, ct_lx = (out[:n_carry], out[n_carry:n_carry + len(l_c)],
                           iter(out[n_carry + len(l_c):]))
    ct_lc = iter(ct_lc)
    return ([next(ct_lc) if lin(a) else None for a in consts]
            + [c if lin(a) else None for a, c in zip(carry, ct_k0)]
            + [next(ct_lx) if lin(a) else None for a in xs])


scan_p.jvp = _scan_jvp
scan_p.transpose = _scan_transpose


# ---------------------------------------------------------------- the user's functions

def _an_int(v) -> bool:
    """Whether ``v`` is an integer (a Python or NumPy int, or a 0-d integer array), not
    a bool or a float that ``int()`` would truncate."""
    return not isinstance(v, (bool, np.bool_)) and np.ndim(v) == 0 and \
        np.asarray(v).dtype.kind in "iu"


def scan(f, init, xs=None, length=None, reverse=False, unroll=1):
    """Loop ``carry, y = f(carry, x)`` over the leading axis of ``xs`` (JAX's
    ``lax.scan``): returns the final carry and the ys stacked along a new leading axis.
    ``init``, ``xs`` and the results may be pytrees; with ``xs=None``, ``length`` says
    how many steps.  The loop stays one equation of the Graph, however many steps.
    ``f`` is traced once, without concrete values: Python branches on the carry are an
    error inside it.  ``unroll`` (JAX's hint for XLA) is accepted and has no effect: the
    loop is compiled as a loop, whose body LLVM unrolls where it pays."""
    return _scan(f, init, xs, length, reverse, unroll, "scan")


def _scan(f, init, xs, length, reverse, unroll, what):
    """``scan``; ``what`` names the function the user called in errors (scan, or
    fori_loop, which is a scan)."""
    check_function(f, "scan: the body f(carry, x)", 2)
    if not isinstance(unroll, (bool, np.bool_)) and (
            not isinstance(unroll, (int, np.integer)) or unroll < 1):
        raise ArgumentError(with_location(
            f"scan: unroll is a positive int or a bool, got {unroll!r}"))
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
    elif not isinstance(length, Tracer) and (not _an_int(length) or length < 0):
        raise ArgumentError(with_location(
            f"scan: length is a count of steps, an int >= 0; got {length!r}"))
    elif sizes and sizes != {int(length)}:
        raise ArgumentError(with_location(
            f"scan: length={length} but xs have leading lengths {sorted(sizes)}"))
    length = int(length)
    n_carry = len(carry_leaves)
    carry_avals, x_avals = _avals(carry_leaves), _avals(x_leaves, drop=1)
    y_def = []

    def body(*leaves):
        mark_array0d(leaves, carry_leaves)
        result = f(unflatten(carry_def, leaves[:n_carry]), unflatten(x_def, leaves[n_carry:]))
        if not isinstance(result, tuple) or len(result) != 2:
            raise ArgumentError(with_location(f"{what}: the body must return a pair "
                                              "(new carry, y)"))
        new_leaves, new_def = flatten(result[0])
        if new_def != carry_def:
            raise ArgumentError(with_location(
                f"{what}: the body returns a carry of structure {new_def}, but the "
                f"initial carry has structure {carry_def}"))
        y_leaves, y_tree = flatten(result[1])
        y_def.append(y_tree)
        return list(new_leaves) + list(y_leaves)

    graph, _, captured = trace_graph(body, carry_avals + x_avals)
    _check_kept(f"{what}: the body changes carry leaf", graph.outputs[:n_carry], carry_avals,
                "a carry keeps its shape and dtype (convert it explicitly, e.g. with .astype)")
    body_graph = _consts_first(graph, n_carry + len(x_leaves))
    from ..passes import licm
    if length >= 1 and licm.enabled():   # (the step's work on consts alone, once, first)
        split = licm.split_invariants(body_graph, len(captured))
        if split is not None:
            pre, body_graph, keep = split
            captured = [captured[k] for k in keep] + eval_graph(pre, list(captured))
    result = scan_p.bind(*captured, *carry_leaves, *x_leaves, body=body_graph,
                         n_consts=len(captured), n_carry=n_carry, length=length,
                         reverse=bool(reverse))
    mark_array0d(result, carry_leaves)
    return (unflatten(carry_def, result[:n_carry]), unflatten(y_def[0], result[n_carry:]))


def _index(i):
    """fori_loop's index, weakly typed (``Tracer.weak``) as the Python int of the loop
    written out (``for i in range(...)``) and JAX's index are: ``x + 0.1 * i`` keeps a
    float32 ``x`` float32 (an ``np.int64`` index would promote it to float64)."""
    if isinstance(i, Tracer):
        i.weak = True
    return i


def fori_loop(lower, upper, body_fun, init_val):
    """``val = body_fun(i, val)`` for i from ``lower`` to ``upper - 1`` (JAX's
    ``lax.fori_loop``): one ``scan`` over the indices when the bounds are Python ints, a
    ``while_loop`` over ``(i, val)`` when one is traced (the trip count then depends on
    data; both modes of differentiation still go through it)."""
    check_function(body_fun, "fori_loop: body_fun(i, val)", 2)
    traced = [b for b in (lower, upper) if isinstance(b, Tracer)]
    if traced:
        for b in traced:
            if tuple(shape_of(b)) != () or np.dtype(dtype_of(b)).kind not in "iu":
                raise ArgumentError(with_location(
                    f"fori_loop: a bound must be an integer scalar, got "
                    f"{type_str(tuple(shape_of(b)), dtype_of(b))}"))
        start = lower if isinstance(lower, Tracer) else np.int64(lower)
        _, val = while_loop(lambda s: s[0] < upper,
                            lambda s: (s[0] + 1, body_fun(_index(s[0]), s[1])),
                            (start, init_val))
        return val
    for bound in (lower, upper):
        if not _an_int(bound):
            raise ArgumentError(with_location(
                f"fori_loop: the bounds are integers, got {bound!r} "
                f"({type(bound).__name__})"))
    lower, upper = int(lower), int(upper)
    steps = np.arange(lower, max(lower, upper), dtype=np.int64)
    carry, _ = _scan(lambda val, i: (body_fun(_index(i), val), None), init_val, steps,
                     len(steps), False, 1, "fori_loop")
    return carry


# ---------------------------------------------------------------- cond

cond_p = Primitive("cond", multiple_results=True)


def _cond_impl(pred, *args, branches):
    with no_trace():
        return [np.asarray(v) for v in
                eval_graph(branches[int(bool(np.asarray(pred)))], [np.asarray(a) for a in args])]


cond_p.impl = _cond_impl
cond_p.abstract = lambda pred, *args, branches: [(tuple(v.shape), v.dtype)
                                                 for v in branches[0].outputs]


def _cond_jvp(primals, tangents, branches):
    """As for scan: a primal cond whose branches also return their residuals (each
    branch zeros for the other's), then a cond of the branches' linear parts (for
    forward mode alone: one cond of the branches' JVPs)."""
    from .. import ops
    from ..passes.jvp import jvp_graph, splitting
    from ..passes.linearize import linearize_graph
    pred, args = primals[0], primals[1:]
    targs = tangents[1:]
    wrt = [t is not None for t in targs]
    floats = [is_float(v.dtype) for v in branches[0].outputs]
    if not splitting():     # forward mode alone: a cond of the branches' JVPs
        out = cond_p.bind(pred, *args, *[t for t in targs if t is not None],
                          branches=tuple(jvp_graph(b, wrt) for b in branches))
        n_out = len(floats)
        return list(out[:n_out]), [t if f else None for t, f in zip(out[n_out:], floats)]
    parts = [linearize_graph(b, wrt) for b in branches]
    n_out = len(branches[0].outputs)
    res_avals = [[(tuple(v.shape), v.dtype) for v in p.outputs[n_out:]] for p, _ in parts]

    def primal_branch(k):
        primal = parts[k][0]

        def fn(*xs):
            got = eval_graph(primal, list(xs))
            others = [[ops.full(s, 0, d) for s, d in res_avals[j]] for j in range(2)]
            others[k] = got[n_out:]
            return got[:n_out] + others[0] + others[1]
        return _closed(fn, [(tuple(v.shape), v.dtype) for v in branches[k].inputs])

    out = cond_p.bind(pred, *args, branches=(primal_branch(0), primal_branch(1)))
    outs, res = out[:n_out], out[n_out:]
    n0 = len(res_avals[0])
    t_avals = [(tuple(v.shape), v.dtype) for v, w in zip(branches[0].inputs, wrt) if w]
    all_res = res_avals[0] + res_avals[1]

    def linear_branch(k):
        linear = parts[k][1]

        def fn(*xs):
            mine = xs[:n0] if k == 0 else xs[n0:len(all_res)]
            return eval_graph(linear, list(mine) + list(xs[len(all_res):]))
        return _closed(fn, all_res + t_avals)

    tin = [t for t in targs if t is not None]
    tout = cond_p.bind(pred, *res, *tin, branches=(linear_branch(0), linear_branch(1)))
    return list(outs), [t if f else None for t, f in zip(tout, floats)]


def _cond_transpose(cts, pred, *args, branches):
    """Each branch transposed (residuals and the predicate are not linear), in a cond."""
    from .. import ops
    from ..passes.transpose import transpose_graph
    lin = [isinstance(a, UndefinedPrimal) for a in args]
    outs = branches[0].outputs
    cts = [ops.full(tuple(v.shape), 0, v.dtype) if c is None else c
           for v, c in zip(outs, cts)]

    def transposed(b):
        ins = ([v for v, m in zip(b.inputs, lin) if not m]
               + [v for v, m in zip(b.inputs, lin) if m])
        return transpose_graph(Graph(tuple(ins), b.eqns, b.outputs), sum(not m for m in lin))

    got = iter(cond_p.bind(pred, *[a for a, m in zip(args, lin) if not m], *cts,
                           branches=tuple(transposed(b) for b in branches)))
    return [None] + [next(got) if m else None for m in lin]


cond_p.jvp = _cond_jvp
cond_p.transpose = _cond_transpose


def cond(pred, true_fun, false_fun, *operands):
    """``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)`` (JAX's
    ``lax.cond``), as one equation holding both branches: the branch is chosen when
    the function runs, not when it is traced, and both are differentiated.  The
    branches must return the same structure of the same shapes and dtypes."""
    for fun, name in ((true_fun, "true_fun"), (false_fun, "false_fun")):
        if callable(fun) and len(operands) == 1 and isinstance(operands[0], tuple):
            try:                # JAX's old cond(pred, f, g, (a, b)): f takes a and b
                check_function(fun, "", operands)
            except ArgumentError:
                try:
                    check_function(fun, "", operands[0])
                except ArgumentError:
                    pass
                else:
                    raise ArgumentError(with_location(
                        f"cond: {name} takes {len(operands[0])} arguments and is given one "
                        "tuple: pass the operands one by one, cond(pred, true_fun, "
                        "false_fun, *operands)")) from None
        check_function(fun, f"cond: {name}", len(operands))
    if tuple(shape_of(pred)) != ():
        raise ArgumentError(with_location(f"cond: the predicate must be a scalar, got shape "
                                          f"{tuple(shape_of(pred))}"))
    leaves, tree = flatten(operands)
    avals = _avals(leaves)
    traced, trees = [], []
    for fun in (false_fun, true_fun):
        def fn(*xs, fun=fun):
            mark_array0d(xs, leaves)
            out_leaves, out_tree = flatten(fun(*unflatten(tree, xs)))
            trees.append(out_tree)
            return list(out_leaves)
        traced.append(trace_graph(fn, avals))
    if trees[0] != trees[1]:
        raise ArgumentError(with_location(
            f"cond: the branches return different structures: {trees[1]} (true) and "
            f"{trees[0]} (false)"))
    for k, (a, b) in enumerate(zip(traced[1][0].outputs, traced[0][0].outputs)):
        if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
            raise ArgumentError(with_location(
                f"cond: output {k} is {type_str(a.shape, a.dtype)} in the true branch and "
                f"{type_str(b.shape, b.dtype)} in the false branch; both must agree"))
    # the values either branch reads from the enclosing function, as common inputs
    consts, seen = [], set()
    for _, _, captured in traced:
        for c in captured:
            if id(c) not in seen:
                seen.add(id(c))
                consts.append(c)
    branches = []
    for graph, _, captured in traced:
        mine = {id(c): v for c, v in zip(captured, graph.inputs[len(leaves):])}
        ins = [mine.get(id(c)) or Var(tuple(c.shape), np.dtype(c.dtype)) for c in consts]
        branches.append(Graph(tuple(ins) + tuple(graph.inputs[:len(leaves)]), graph.eqns,
                              graph.outputs))
    pred = pred if not isinstance(pred, (bool, np.bool_)) else np.asarray(pred)
    out = cond_p.bind(pred, *consts, *leaves, branches=tuple(branches))
    return unflatten(trees[0], out)


# ---------------------------------------------------------------- while_loop

while_p = Primitive("while_loop", multiple_results=True)


def _while_impl(*args, branches, n_cond, n_body, checkpoint=None):
    cond_graph, body_graph = branches
    cc, bc = list(args[:n_cond]), list(args[n_cond:n_cond + n_body])
    carry = [np.asarray(a) for a in args[n_cond + n_body:]]
    with no_trace():
        while bool(np.asarray(eval_graph(cond_graph, cc + carry)[0])):
            carry = [np.asarray(c) for c in eval_graph(body_graph, bc + carry)]
    return carry


while_p.impl = _while_impl
while_p.abstract = lambda *args, branches, n_cond, n_body, checkpoint=None: [
    (tuple(v.shape), v.dtype) for v in branches[1].outputs]


def _float_carries(body_graph, n_body) -> list:
    return [is_float(v.dtype) for v in body_graph.inputs[n_body:]]


def _tangent_body(body_graph, n_body, lin) -> Graph:
    """The body of a while loop over values and tangents: inputs ``consts...,
    tangents of consts[lin]..., carries..., tangents of the float carries...``, outputs
    the new carries, then their tangents (float carries only)."""
    from ..passes.jvp import jvp_graph
    carry_t = _float_carries(body_graph, n_body)
    wrt = list(lin) + carry_t
    jbody = jvp_graph(body_graph, wrt)
    n_in = len(body_graph.inputs)
    prim_in, tan_in = list(jbody.inputs[:n_in]), iter(jbody.inputs[n_in:])
    tan_of = [next(tan_in) if w else None for w in wrt]
    t_bc = [t for t in tan_of[:n_body] if t is not None]
    t_k = [t for t in tan_of[n_body:] if t is not None]
    touts = jbody.outputs[len(body_graph.outputs):]
    return Graph(tuple(prim_in[:n_body] + t_bc + prim_in[n_body:] + t_k), jbody.eqns,
                 tuple(jbody.outputs[:len(body_graph.outputs)])
                 + tuple(t for t, w in zip(touts, carry_t) if w))


def _while_jvp(primals, tangents, branches, n_cond, n_body, checkpoint=None):
    """Forward mode alone: one while loop over the carries and their tangents (the
    body's JVP; the condition reads the primal carries only).  For reverse mode
    (``splitting``): ``_while_jvp_split``."""
    from .. import ops
    from ..passes.jvp import splitting
    if splitting():
        return _while_jvp_split(primals, tangents, branches, n_cond, n_body, checkpoint)
    cond_graph, body_graph = branches
    cc, bc, carry = (primals[:n_cond], primals[n_cond:n_cond + n_body],
                     primals[n_cond + n_body:])
    tbc, tcarry = tangents[n_cond:n_cond + n_body], tangents[n_cond + n_body:]
    carry_t = _float_carries(body_graph, n_body)
    lin = [t is not None for t in tbc]
    body = _tangent_body(body_graph, n_body, lin)
    # the condition takes the tangent carries too, and ignores them
    extra = tuple(Var(tuple(v.shape), v.dtype) for v, w in
                  zip(body_graph.inputs[n_body:], carry_t) if w)
    cond = Graph(cond_graph.inputs + extra, cond_graph.eqns, cond_graph.outputs)
    zeros = [t if t is not None else ops.zeros_like(c)
             for c, t, w in zip(carry, tcarry, carry_t) if w]
    out = while_p.bind(*cc, *bc, *[t for t in tbc if t is not None], *carry, *zeros,
                       branches=(cond, body), n_cond=n_cond,
                       n_body=n_body + sum(lin), checkpoint=checkpoint)
    out = iter(out)
    prim = [next(out) for _ in carry]
    return prim, [next(out) if w else None for w in carry_t]


def _while_jvp_split(primals, tangents, branches, n_cond, n_body, checkpoint):
    """For reverse mode: the primal loop, which also counts its steps, then
    ``while_tangent``: the tangents carried through that many steps of the body's JVP,
    from the initial carries.  That equation reads primal values (the body's consts, the
    initial carries, the count) and is linear in the tangents; its transpose
    (``while_adjoint``) replays the loop to store the carries (the tape), then runs the
    body's VJP backwards over them."""
    from .. import ops
    cond_graph, body_graph = branches
    cc, bc, carry = (primals[:n_cond], primals[n_cond:n_cond + n_body],
                     primals[n_cond + n_body:])
    tbc, tcarry = tangents[n_cond:n_cond + n_body], tangents[n_cond + n_body:]
    count = ((), np.dtype(np.int64))

    def counted(*vals):
        return list(eval_graph(body_graph, list(vals[:-1]))) + [vals[-1] + np.int64(1)]

    counted_body = _closed(counted, [(v.shape, v.dtype) for v in body_graph.inputs] + [count])
    counted_cond = Graph(cond_graph.inputs + (Var(*count),), cond_graph.eqns,
                         cond_graph.outputs)
    out = while_p.bind(*cc, *bc, *carry, np.int64(0),
                       branches=(counted_cond, counted_body), n_cond=n_cond, n_body=n_body,
                       checkpoint=checkpoint)
    carry_out, steps = list(out[:-1]), out[-1]
    lin = tuple(t is not None for t in tbc)
    carry_t = _float_carries(body_graph, n_body)
    jbody = _tangent_body(body_graph, n_body, lin)
    zeros = [t if t is not None else ops.zeros_like(c)
             for c, t, w in zip(carry, tcarry, carry_t) if w]
    tout = iter(while_tangent_p.bind(
        *bc, *carry, steps, *[t for t in tbc if t is not None], *zeros,
        branches=(body_graph, jbody), n_body=n_body, lin=lin, checkpoint=checkpoint))
    return carry_out, [next(tout) if w else None for w in carry_t]


while_p.jvp = _while_jvp

# while_tangent[branches=(body, jvp of body), n_body, lin, checkpoint]
#     consts... carry0... steps tangents of consts[lin]... tangents of float carry0...
# -> tangents of the float carries after ``steps`` steps of the body
while_tangent_p = Primitive("while_tangent", multiple_results=True)


def _split_tangent_args(args, body, n_body, lin):
    n_carry = len(body.inputs) - n_body
    bc, carry = list(args[:n_body]), list(args[n_body:n_body + n_carry])
    steps = args[n_body + n_carry]
    rest = list(args[n_body + n_carry + 1:])
    n_lin = sum(lin)
    return bc, carry, steps, rest[:n_lin], rest[n_lin:]


def _while_tangent_impl(*args, branches, n_body, lin, checkpoint=None):
    body, jbody = branches
    bc, carry, steps, tbc, tcarry = _split_tangent_args(args, body, n_body, lin)
    n_out = len(body.outputs)
    with no_trace():
        for _ in range(int(steps)):
            got = eval_graph(jbody, bc + tbc + carry + tcarry)
            carry = [np.asarray(c) for c in got[:n_out]]
            tcarry = [np.asarray(t) for t in got[n_out:]]     # (the float carries')
    return tcarry


while_tangent_p.impl = _while_tangent_impl
while_tangent_p.abstract = lambda *args, branches, n_body, lin, checkpoint=None: [
    (tuple(v.shape), v.dtype) for v, f in
    zip(branches[0].outputs, _float_carries(branches[0], n_body)) if f]


def _while_tangent_transpose(cts, *args, branches, n_body, lin, checkpoint=None):
    from .. import ops
    from ..passes.transpose import vjp_graph
    body = branches[0]
    bc, carry, steps, tbc, tcarry = _split_tangent_args(args, body, n_body, lin)
    floats = _float_carries(body, n_body)
    # one step's VJP: (consts, carries, cotangents of the new carries) -> (new carries,
    # cotangents of the consts[lin] and of the float carries)
    step = vjp_graph(body, list(lin) + floats)
    outs = [v for v, f in zip(body.outputs, floats) if f]
    cts = [ops.full(tuple(v.shape), 0, v.dtype) if c is None else c
           for v, c in zip(outs, cts)]
    got = iter(while_adjoint_p.bind(*bc, *carry, steps, *cts, branches=(body, step),
                                    n_body=n_body, lin=lin, checkpoint=checkpoint))
    ct_bc = [next(got) for _ in tbc]
    ct_carry = [next(got) for _ in tcarry]
    undefined = lambda a: isinstance(a, UndefinedPrimal)      # noqa: E731
    return ([None] * (len(bc) + len(carry) + 1)
            + [c if undefined(a) else None for a, c in zip(tbc, ct_bc)]
            + [c if undefined(a) else None for a, c in zip(tcarry, ct_carry)])


def _while_tangent_jvp(primals, tangents, branches, n_body, lin, checkpoint=None):
    """``while_tangent`` is a while loop over (carries, tangents, a step counter) that
    stops at ``steps``: differentiated as one (``_while_jvp``)."""
    from .. import ops
    body, jbody = branches
    bc, carry, steps, tbc, tcarry = _split_tangent_args(primals, body, n_body, lin)
    _, dcarry, _, dtbc, dtcarry = _split_tangent_args(tangents, body, n_body, lin)
    count = ((), np.dtype(np.int64))

    def counted(*vals):
        return list(eval_graph(jbody, list(vals[:-1]))) + [vals[-1] + np.int64(1)]
    counted_body = _closed(counted, [(v.shape, v.dtype) for v in jbody.inputs] + [count])
    state = [(v.shape, v.dtype) for v in jbody.inputs[n_body + sum(lin):]]
    cond = _closed(lambda limit, *vals: [vals[-1] < limit], [count] + state + [count])
    n_in = n_body + sum(lin)
    got_p, got_t = _while_jvp(
        [steps] + bc + tbc + carry + tcarry + [np.int64(0)],
        [None] + tangents[:n_body] + dtbc + dcarry + dtcarry + [None],
        (cond, counted_body), 1, n_in, checkpoint)
    n_carry = len(carry)
    keep = slice(n_carry, n_carry + len(tcarry))
    return got_p[keep], [t if t is not None else ops.zeros_like(p)
                         for p, t in zip(got_p[keep], got_t[keep])]


while_tangent_p.transpose = _while_tangent_transpose
while_tangent_p.jvp = _while_tangent_jvp

# while_adjoint[branches=(body, vjp of body), n_body, lin, checkpoint]
#     consts... carry0... steps cotangents of the final float carries...
# -> cotangents of consts[lin]... and of the float carry0...
while_adjoint_p = Primitive("while_adjoint", multiple_results=True)


def _while_adjoint_impl(*args, branches, n_body, lin, checkpoint=None):
    """The tape: the carries before each step (every ``checkpoint``-th one only, the
    others recomputed from it a segment at a time); then the body's VJP from the last
    step to the first, summing the consts' cotangents."""
    body, step = branches
    n_carry = len(body.inputs) - n_body
    bc = [np.asarray(a) for a in args[:n_body]]
    carry = [np.asarray(a) for a in args[n_body:n_body + n_carry]]
    steps = int(args[n_body + n_carry])
    ct = [np.asarray(a) for a in args[n_body + n_carry + 1:]]
    floats = _float_carries(body, n_body)
    n_lin = sum(lin)
    acc = [np.zeros(v.shape, v.dtype) for v, w in zip(body.inputs[:n_body], lin) if w]
    every = max(1, steps if checkpoint is None else int(checkpoint))
    with no_trace():
        def advance(c, n, tape=None):
            for _ in range(n):
                if tape is not None:
                    tape.append(c)
                c = [np.asarray(x) for x in eval_graph(body, bc + c)]
            return c
        # the carries at the start of each segment (the last one's end is not needed)
        snapshots, c = [carry], carry
        for _ in range(every, steps, every):
            c = advance(c, every)
            snapshots.append(c)
        for k in range(len(snapshots) - 1, -1, -1):
            lo, tape = k * every, []
            advance(snapshots[k], min(every, steps - lo), tape)
            for c in reversed(tape):
                cts = iter(ct)
                full = [next(cts) if f else np.zeros(v.shape, v.dtype)
                        for v, f in zip(body.outputs, floats)]
                got = eval_graph(step, bc + c + full)[len(body.outputs):]
                acc = [a + np.asarray(g) for a, g in zip(acc, got[:n_lin])]
                ct = [np.asarray(g) for g in got[n_lin:]]
    return acc + ct


while_adjoint_p.impl = _while_adjoint_impl
while_adjoint_p.abstract = lambda *args, branches, n_body, lin, checkpoint=None: (
    [(tuple(v.shape), v.dtype) for v, w in zip(branches[0].inputs[:n_body], lin) if w]
    + [(tuple(v.shape), v.dtype) for v, f in
       zip(branches[0].inputs[n_body:], _float_carries(branches[0], n_body)) if f])


def _second_order_loop(body, n_body, lin, lin2):
    """The body over values and tangents of consts[lin2] and float carries, and the VJP
    of its step, as ``while_adjoint`` runs them for second derivatives."""
    from ..passes.transpose import vjp_graph
    big = _tangent_body(body, n_body, lin2)
    big_lin = tuple(lin) + tuple(w for w, w2 in zip(lin, lin2) if w2)
    step = vjp_graph(big, list(big_lin) + _float_carries(big, n_body + sum(lin2)))
    return big, step, big_lin


def _while_adjoint_jvp(primals, tangents, branches, n_body, lin, checkpoint=None):
    """Forward over reverse.  With ``G`` the body over (values, tangents)
    (``_tangent_body``), the VJP of ``G`` at cotangents (u, w) gives, at the tangent
    carries, ``J^T w`` (the adjoint itself) and, at the carries, ``J^T u + (dJ)^T w``
    (its derivative along the tangents, by the symmetry of second derivatives).  So the
    JVP of the adjoint loop is the adjoint loop of ``G``, with u = the cotangents'
    tangents and w = the cotangents.  For reverse mode over it (``splitting``), the
    tangent half is its own equation, ``while_hessian``, linear in (tangents, u)."""
    from .. import ops
    from ..passes.jvp import splitting
    body = branches[0]
    n_carry = len(body.inputs) - n_body
    bc, carry = list(primals[:n_body]), list(primals[n_body:n_body + n_carry])
    steps, ct = primals[n_body + n_carry], list(primals[n_body + n_carry + 1:])
    dbc, dcarry = tangents[:n_body], tangents[n_body:n_body + n_carry]
    dct = tangents[n_body + n_carry + 1:]
    floats = _float_carries(body, n_body)
    lin2 = tuple(w or d is not None for w, d in zip(lin, dbc))
    zeros = ops.zeros_like
    t_bc = [d if d is not None else zeros(b) for b, d, w in zip(bc, dbc, lin2) if w]
    t_carry = [d if d is not None else zeros(c) for c, d, f in zip(carry, dcarry, floats)
               if f]
    u = [d if d is not None else zeros(c) for c, d in zip(ct, dct)]
    big, step, big_lin = _second_order_loop(body, n_body, lin, lin2)
    n_lin, n_float = sum(lin), sum(floats)
    if splitting():
        primal = while_adjoint_p.bind(*primals, branches=branches, n_body=n_body, lin=lin,
                                      checkpoint=checkpoint)
        tangent = while_hessian_p.bind(*bc, *carry, steps, *ct, *t_bc, *t_carry, *u,
                                       branches=(body, big, step), n_body=n_body, lin=lin,
                                       lin2=lin2, checkpoint=checkpoint)
        return list(primal), list(tangent)
    got = while_adjoint_p.bind(*bc, *t_bc, *carry, *t_carry, steps, *u, *ct,
                               branches=(big, step), n_body=n_body + sum(lin2), lin=big_lin,
                               checkpoint=checkpoint)
    d_bc, ct_bc = got[:n_lin], got[n_lin:2 * n_lin]
    d_carry, ct_carry = got[2 * n_lin:2 * n_lin + n_float], got[2 * n_lin + n_float:]
    return list(ct_bc) + list(ct_carry), list(d_bc) + list(d_carry)


# while_hessian[branches=(body, body over values and tangents, VJP of its step), n_body,
#               lin, lin2, checkpoint]
#     consts... carry0... steps cotangents...  tangents of consts[lin2]... tangents of the
#     float carry0... tangents of the cotangents...
# -> the tangents of while_adjoint's results (linear in the last three groups)
while_hessian_p = Primitive("while_hessian", multiple_results=True)


def _split_hessian_args(args, body, n_body, lin2):
    n_carry = len(body.inputs) - n_body
    n_float = sum(_float_carries(body, n_body))
    bc, carry = list(args[:n_body]), list(args[n_body:n_body + n_carry])
    steps = args[n_body + n_carry]
    rest = list(args[n_body + n_carry + 1:])
    ct, rest = rest[:n_float], rest[n_float:]
    t_bc, rest = rest[:sum(lin2)], rest[sum(lin2):]
    return bc, carry, steps, ct, t_bc, rest[:n_float], rest[n_float:]


def _while_hessian_impl(*args, branches, n_body, lin, lin2, checkpoint=None):
    body, big, step = branches
    bc, carry, steps, ct, t_bc, t_carry, u = _split_hessian_args(args, body, n_body, lin2)
    big_lin = tuple(lin) + tuple(w for w, w2 in zip(lin, lin2) if w2)
    got = _while_adjoint_impl(*bc, *t_bc, *carry, *t_carry, steps, *u, *ct,
                              branches=(big, step), n_body=n_body + sum(lin2), lin=big_lin,
                              checkpoint=checkpoint)
    n_lin, n_float = sum(lin), len(ct)
    return got[:n_lin] + got[2 * n_lin:2 * n_lin + n_float]


def _while_hessian_transpose(cts, *args, branches, n_body, lin, lin2, checkpoint=None):
    """The tangent half of ``while_adjoint``'s JVP maps (a, u) to ``H a + J^T u``, H the
    Hessian of <ct, loop(consts, carry0)>; its transpose maps cotangents b to
    ``(H b, J b)``: H is symmetric, so the same adjoint loop over values and tangents
    (u = 0, and the consts' rows wanted over lin2), and ``while_tangent`` for ``J b``."""
    from .. import ops
    body, big, _ = branches
    bc, carry, steps, ct, t_bc, t_carry, u = _split_hessian_args(args, body, n_body, lin2)
    floats = _float_carries(body, n_body)
    n_lin = sum(lin)
    b_bc = [ops.zeros_like(x) if c is None else c for x, c in
            zip([x for x, w in zip(bc, lin) if w], cts[:n_lin])]
    b_carry = [ops.zeros_like(x) if c is None else c for x, c in
               zip([x for x, f in zip(carry, floats) if f], cts[n_lin:])]
    # b in the tangent slots of consts[lin2] (zero where lin2 but not lin)
    given = iter(b_bc)
    slots = [next(given) if w else ops.zeros_like(x)
             for x, w, w2 in zip(bc, lin, lin2) if w2]
    rows = tuple(lin2) + (False,) * sum(lin2)
    from ..passes.transpose import vjp_graph
    step = vjp_graph(big, list(rows) + _float_carries(big, n_body + sum(lin2)))
    zero_u = [ops.zeros_like(c) for c in ct]
    got = while_adjoint_p.bind(*bc, *slots, *carry, *b_carry, steps, *zero_u, *ct,
                               branches=(big, step), n_body=n_body + sum(lin2), lin=rows,
                               checkpoint=checkpoint)
    n_float = len(ct)
    h_bc, h_carry = got[:sum(lin2)], got[sum(lin2):sum(lin2) + n_float]
    jb = list(while_tangent_p.bind(
        *bc, *carry, steps, *b_bc, *b_carry,
        branches=(body, _tangent_body(body, n_body, lin)), n_body=n_body, lin=tuple(lin),
        checkpoint=checkpoint))
    undefined = lambda a: isinstance(a, UndefinedPrimal)      # noqa: E731
    return ([None] * (len(bc) + len(carry) + 1 + len(ct))
            + [c if undefined(a) else None for a, c in zip(t_bc, h_bc)]
            + [c if undefined(a) else None for a, c in zip(t_carry, h_carry)]
            + [c if undefined(a) else None for a, c in zip(u, jb)])


def _third_order(primals, tangents, **params):
    raise GradcError(with_location(
        "third derivatives through while_loop's reverse mode are not implemented yet"))


while_hessian_p.impl = _while_hessian_impl
while_hessian_p.abstract = lambda *args, branches, n_body, lin, lin2, checkpoint=None: (
    [(tuple(v.shape), v.dtype) for v, w in zip(branches[0].inputs[:n_body], lin) if w]
    + [(tuple(v.shape), v.dtype) for v, f in
       zip(branches[0].inputs[n_body:], _float_carries(branches[0], n_body)) if f])
while_hessian_p.transpose = _while_hessian_transpose
while_hessian_p.jvp = _third_order


while_adjoint_p.jvp = _while_adjoint_jvp


def while_loop(cond_fun, body_fun, init_val, checkpoint=None):
    """``while cond_fun(val): val = body_fun(val)`` (JAX's ``lax.while_loop``), as one
    equation: the number of steps is decided when the function runs.

    Both modes differentiate it.  Reverse mode stores the loop value before every step
    (the tape: steps x the size of ``val``) and runs the body's VJP backwards over it;
    with ``checkpoint=k`` it stores every k-th value only and recomputes the k steps
    after one when the backward sweep reaches them: (steps / k + k) values stored, for
    one more forward pass.  The primal loop runs once more than without reverse mode
    (the backward sweep replays it to fill the tape)."""
    check_function(cond_fun, "while_loop: cond_fun(val)", 1)
    check_function(body_fun, "while_loop: body_fun(val)", 1)
    if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(
            checkpoint, (int, np.integer)) or checkpoint < 1):
        raise ArgumentError(with_location(
            f"while_loop: checkpoint must be None or a positive int, got {checkpoint!r}"))
    leaves, tree = flatten(init_val)
    avals = _avals(leaves)
    n = len(leaves)

    def cond_fn(*xs):
        mark_array0d(xs, leaves)
        return [cond_fun(unflatten(tree, xs))]

    def body_fn(*xs):
        mark_array0d(xs, leaves)
        new, new_tree = flatten(body_fun(unflatten(tree, xs)))
        if new_tree != tree:
            raise ArgumentError(with_location(
                f"while_loop: the body returns a value of structure {new_tree}, but the "
                f"initial value has structure {tree}"))
        return list(new)

    cond_graph, _, cond_caps = trace_graph(cond_fn, avals)
    out = cond_graph.outputs[0]
    if tuple(out.shape) != () or np.dtype(out.dtype) != np.bool_:
        raise ArgumentError(with_location(
            f"while_loop: the condition must return a boolean scalar, got "
            f"{type_str(out.shape, out.dtype)}"))
    body_graph, _, body_caps = trace_graph(body_fn, avals)
    _check_kept("while_loop: the body changes leaf", body_graph.outputs, avals,
                "the loop value keeps its shape and dtype")
    cond_graph, body_graph = _consts_first(cond_graph, n), _consts_first(body_graph, n)
    out = while_p.bind(*cond_caps, *body_caps, *leaves, branches=(cond_graph, body_graph),
                       n_cond=len(cond_caps), n_body=len(body_caps),
                       checkpoint=None if checkpoint is None else int(checkpoint))
    mark_array0d(out, leaves)
    return unflatten(tree, out)
