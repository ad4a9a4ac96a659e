"""Structured control flow as real loops in the generated source.

Each body (a scan's step, a cond's branches, a while loop's condition and body, the
steps of reverse mode through a while loop) becomes a jitted function of the module
(``pysource.body_function``), optimised and fused like a whole graph; the equation
becomes a Python ``for``/``while``/``if`` in the calling function that calls it.

* ``scan``: ``for t in range(length)`` (or backwards) over the carries, each y written
  into a stacked array allocated before the loop.  The backward sweep of a scan (its
  transpose, see ``prims.loops``) is a scan with ``reverse`` flipped, so it is the same
  loop run backwards over the stored residuals.
* ``cond``: ``if pred: outs = true(...) else: outs = false(...)``.
* ``while_loop``: ``while cond(...)[0]: carries = body(...)``.
* ``while_tangent``: ``for _ in range(steps)`` over values and tangents.
* ``while_adjoint``: the tape (``np.empty((steps,) + shape)`` per carry, or every
  ``checkpoint``-th carry and a segment buffer of ``checkpoint`` carries), a forward loop
  that fills it, and a backward loop over the body's VJP; ``while_hessian`` is the same
  over the body's JVP.
"""
from __future__ import annotations

import re

import numpy as np

from ..ir import Graph

# primitives whose results may be one of their inputs (a carry passed through): the
# main function copies such results before returning them (``passing``)
PASSING = {"scan", "cond", "while_loop", "while_tangent", "while_adjoint", "while_hessian"}


def passing(eqn) -> tuple:
    """The results of a loop equation that may be one of its inputs: all but a scan's
    stacked ys, which are arrays of its own."""
    if eqn.prim.name == "scan":
        return eqn.outputs[:eqn.params["n_carry"]]
    return eqn.outputs if eqn.prim.name in PASSING else ()


def _fn(ctx, graph, what):
    """``pysource.body_function``: its name and constants."""
    from .pysource import body_function
    name, consts, _, _ = body_function(ctx, graph, what)
    return name, consts


def _empty(shape, dtype, lead: str) -> str:
    from .pysource import dtype_expr
    dims = ", ".join([lead] + [str(int(n)) for n in shape])
    return f"np.empty(({dims},), {dtype_expr(dtype)})"


def _zero(v) -> str:
    from .pysource import _tuple, dtype_expr, scalar_literal
    if len(v.shape) == 0:
        return scalar_literal(0, v.dtype)
    return f"np.zeros({_tuple(v.shape)}, {dtype_expr(v.dtype)})"


def _call(fn, args, consts) -> str:
    return f"{fn}({', '.join([_typed(x) for x in args] + list(consts))})"


_INT_LITERAL = re.compile(r"^\(?-?\d+\)?$")


def _typed(value: str) -> str:
    """An integer or bool constant (``0``, ``True``) as ``np.int64(0)``, ``np.bool_(True)``:
    Numba types a bare one as a literal, and a helper called with a literal and then
    with a variable (a loop's counter starting at 0) is compiled twice (six of the ODE
    gradient's helpers were: ~1 s of its 5 s first call)."""
    if _INT_LITERAL.match(value):
        return f"np.int64({value})"
    return f"np.bool_({value})" if value in ("True", "False") else value


def _unpack(names) -> str:
    return "".join(n + ", " for n in names).rstrip()


def _scan(ctx, eqn, a, outs):
    p = eqn.params
    n_consts, n_carry, length = p["n_consts"], p["n_carry"], p["length"]
    n_ys = len(eqn.outputs) - n_carry
    from .pysource import body_function
    fn, extra, written, mutated = body_function(
        ctx, p["body"], f"scan body, {length} steps", range(n_carry, n_carry + n_ys),
        n_body=n_consts, n_carry=n_carry)
    consts, carry, xs = a[:n_consts], a[n_consts:n_consts + n_carry], a[n_consts + n_carry:]
    k = [ctx.temp() for _ in carry]
    t = ctx.temp()
    # the carries the body updates in place start in buffers of their own
    free = ctx.inplace.free_inits.get(id(eqn), ())
    lines = [f"{kk} = {c}.copy()" if j in mutated and j not in free else f"{kk} = {_typed(c)}"
             for j, (kk, c) in enumerate(zip(k, carry))]
    # (the stacked ys, a tape in reverse mode, come from the caller's pool of large
    # buffers: a fresh 16 MB array costs ~1 ms of page faults at each call)
    # (in a body, not its caller's destination: the body returns the ys as a value)
    lines += [f"{o} = {ctx.out_buffer(v.shape, v.dtype, None if ctx.inner else v)}"
              for o, v in zip(outs[n_carry:], eqn.outputs[n_carry:])]
    steps = f"range({length} - 1, -1, -1)" if p["reverse"] else f"range({length})"
    r = ctx.temp()
    step_args = consts + k + [f"{x}[{t}]" for x in xs]
    dests = [f"{o}[{t}]" for o in outs[n_carry:]]
    lines += [f"for {t} in {steps}:", f"    {r} = {_call(fn, step_args, dests + extra)}"]
    lines += [f"    {kk} = {r}[{j}]" for j, kk in enumerate(k)]
    # (the ys the body wrote in place are not copied)
    lines += ["    " + _store(f"{o}[{t}]", f"{r}[{n_carry + j}]", v.ndim - 1)
              for j, (o, v) in enumerate(zip(outs[n_carry:], eqn.outputs[n_carry:]))
              if n_carry + j not in written]
    return lines + [f"{o} = {kk}" for o, kk in zip(outs, k)]


def _store(target: str, value: str, ndim: int) -> str:
    """``target = value``, an element or (``ndim`` > 0) an array's entries: see
    ``kernels.copy_into`` for why not ``target = value`` then."""
    return f"_k.copy_into({target}, {value})" if ndim else f"{target} = {value}"


def _cond(ctx, eqn, a, outs):
    false, true = eqn.params["branches"]
    f_fn, f_extra = _fn(ctx, false, "cond: the false branch")
    t_fn, t_extra = _fn(ctx, true, "cond: the true branch")
    return [f"if {a[0]}:",
            f"    {_unpack(outs)} = {_call(t_fn, a[1:], t_extra)}",
            "else:",
            f"    {_unpack(outs)} = {_call(f_fn, a[1:], f_extra)}"]


def _while(ctx, eqn, a, outs):
    p = eqn.params
    n_cond, n_body = p["n_cond"], p["n_body"]
    cond, body = p["branches"]
    from .pysource import body_function
    c_fn, c_extra = _fn(ctx, cond, "while_loop: the condition")
    b_fn, b_extra, _, mutated = body_function(ctx, body, "while_loop: the body",
                                              n_body=n_body)
    cc, bc, carry = a[:n_cond], a[n_cond:n_cond + n_body], a[n_cond + n_body:]
    k = [ctx.temp() for _ in carry]
    # the carries the body updates in place start in buffers of their own
    free = ctx.inplace.free_inits.get(id(eqn), ())
    init = [f"{c}.copy()" if j in mutated and j not in free else _typed(c)
            for j, c in enumerate(carry)]
    return ([f"{kk} = {c}" for kk, c in zip(k, init)]
            + [f"while {_call(c_fn, cc + k, c_extra)}[0]:",
               f"    {_unpack(k)} = {_call(b_fn, bc + k, b_extra)}"]
            + [f"{o} = {kk}" for o, kk in zip(outs, k)])


def _floats(body, n_body):
    from ..ir import is_float
    return [is_float(v.dtype) for v in body.inputs[n_body:]]


def _while_tangent(ctx, eqn, a, outs):
    p = eqn.params
    body, jbody = p["branches"]
    n_body, lin = p["n_body"], p["lin"]
    n_carry = len(body.inputs) - n_body
    fn, extra = _fn(ctx, jbody, "while_tangent: a step of the values and their tangents")
    bc, carry, steps = a[:n_body], a[n_body:n_body + n_carry], a[n_body + n_carry]
    tbc, tcarry = a[n_body + n_carry + 1:][:sum(lin)], a[n_body + n_carry + 1 + sum(lin):]
    k = [ctx.temp() for _ in carry]
    tk = [ctx.temp() for _ in tcarry]
    return ([f"{kk} = {_typed(c)}" for kk, c in zip(k + tk, carry + tcarry)]
            + [f"for _ in range({steps}):",
               f"    {_unpack(k + tk)} = {_call(fn, bc + tbc + k + tk, extra)}"]
            + [f"{o} = {kk}" for o, kk in zip(outs, tk)])


def _summed_after(step, n_body, n_carry, n_out, n_lin):
    """The accumulators of reverse mode through a ``while_loop`` summed after the
    backward sweep, not at each trip, and what the sweep stacks for them:
    ``({accumulator: (operands, rows, widths, swap, shape)}, [values stacked])``.

    An RNN-like body ``z = tanh(W @ z + b)`` makes W's cotangent ``outer(d_t, z_t)`` at
    every trip: a K×K product, then a K×K add.  Summed after the sweep it is one matrix
    product of the stacked ``d`` (a vector a trip) with the tape of ``z`` (the carries
    before each trip, kept anyway): ``D.T @ Z``.  A term qualifies when it is such a
    contraction of two values that change at every trip (a carry, read from the tape;
    or a value of the backward step no larger than the term or the largest carry,
    stacked): its operands' shared letters contracted and leading both, the output one
    operand's other letters then the other's (``i,j->ij``; ``bi,bj->ij`` for a batch),
    or a transpose of such a product (``W.T @ z``).
    ``operands``: ``("tape", carry)`` or ``("stack", position in the values stacked)``;
    ``rows``: the contracted letters' extent; ``widths``: each operand's other extent;
    ``swap``: the output starts with the second operand's letters."""
    from ..ir import Var, producers_and_readers
    from ..prims.linalg import einsum_p, parse_spec

    def size(v):
        return int(np.prod(v.shape, dtype=np.int64))
    producer, readers = producers_and_readers(step.eqns)
    outs = list(step.outputs)
    consts = set(step.inputs[:n_body])
    carries = list(step.inputs[n_body:n_body + n_carry])
    largest = max([size(v) for v in carries] + [1])
    folded, stacked = {}, []
    for m, t in enumerate(outs[n_out:n_out + n_lin]):
        e = producer.get(t) if isinstance(t, Var) else None
        perm = None                 # (a transposed contraction: its output's letters moved)
        if e is not None and e.prim.name == "transpose" and \
                isinstance(e.inputs[0], Var) and len(readers.get(e.inputs[0], ())) == 1:
            perm, e = tuple(e.params["perm"]), producer.get(e.inputs[0])
        if e is None or e.prim is not einsum_p or t in readers or \
                sum(o is t for o in outs) != 1 or np.dtype(t.dtype).kind not in "fc":
            continue
        la, lb, lo = parse_spec(e.params["spec"])
        lo = lo if perm is None else "".join(lo[q] for q in perm)
        shared = "".join(c for c in la if c in lb)
        a_only, b_only = la[len(shared):], lb[len(shared):]
        if any(c in lo for c in shared) or not la.startswith(shared) or \
                not lb.startswith(shared) or lo not in (a_only + b_only, b_only + a_only):
            continue
        extent = dict(zip(la, e.inputs[0].shape))
        extent.update(zip(lb, e.inputs[1].shape))
        operands, new = [], []
        for v in e.inputs:
            if not isinstance(v, Var) or v in consts:
                break
            if any(v is c for c in carries):
                operands.append(("tape", next(j for j, c in enumerate(carries) if c is v)))
            elif any(v is x for x in stacked + new):
                operands.append(("stack", next(j for j, x in enumerate(stacked + new)
                                               if x is v)))
            elif size(v) <= min(size(t), largest):
                operands.append(("stack", len(stacked) + len(new)))
                new.append(v)
            else:
                break
        else:
            stacked += new
            rows = int(np.prod([extent[c] for c in shared], dtype=np.int64))
            widths = [int(np.prod([extent[c] for c in x], dtype=np.int64))
                      for x in (a_only, b_only)]
            folded[m] = (operands, rows, widths, lo != a_only + b_only, tuple(t.shape))
    return folded, stacked


def _while_adjoint(ctx, eqn, a, outs):
    p = eqn.params
    lines, results = _adjoint(ctx, *p["branches"], p["n_body"], p["lin"], p["checkpoint"], a)
    return lines + [f"{o} = {r}" for o, r in zip(outs, results)]


def _while_hessian(ctx, eqn, a, outs):
    """The adjoint loop of the body over values and tangents (``prims.loops``), keeping
    the tangent half of its results."""
    p = eqn.params
    body, big, step = p["branches"]
    n_body, lin, lin2 = p["n_body"], p["lin"], p["lin2"]
    n_carry = len(body.inputs) - n_body
    n_float = sum(_floats(body, n_body))
    bc, carry, steps = a[:n_body], a[n_body:n_body + n_carry], a[n_body + n_carry]
    rest = a[n_body + n_carry + 1:]
    ct, t_bc = rest[:n_float], rest[n_float:n_float + sum(lin2)]
    t_carry, u = rest[n_float + sum(lin2):][:n_float], rest[n_float + sum(lin2):][n_float:]
    big_lin = tuple(lin) + tuple(w for w, w2 in zip(lin, lin2) if w2)
    lines, results = _adjoint(ctx, big, step, n_body + sum(lin2), big_lin, p["checkpoint"],
                              bc + t_bc + carry + t_carry + [steps] + u + ct)
    n_lin = sum(lin)
    kept = results[:n_lin] + results[2 * n_lin:2 * n_lin + n_float]
    return lines + [f"{o} = {r}" for o, r in zip(outs, kept)]


def _adjoint(ctx, body, step, n_body, lin, every, a):
    """The lines of a ``while_adjoint`` and the names of its results."""
    n_carry = len(body.inputs) - n_body
    n_out = len(body.outputs)
    floats = _floats(body, n_body)
    b_fn, b_extra = _fn(ctx, body, "while_adjoint: a step of the loop (to fill the tape)")
    # the VJP of a step, without the step's own results (nor the terms of the
    # accumulators summed after the sweep: the values they contract instead)
    n_lin = sum(lin)
    from ..passes import licm
    folded, stacked = ({}, []) if every is not None or not licm.sums_enabled() else \
        _summed_after(step, n_body, n_carry, n_out, n_lin)
    back = Graph(step.inputs, step.eqns,
                 tuple(v for m, v in enumerate(step.outputs[n_out:n_out + n_lin])
                       if m not in folded) + tuple(step.outputs[n_out + n_lin:])
                 + tuple(stacked))
    v_fn, v_extra = _fn(ctx, back, "while_adjoint: a step of the backward sweep")
    bc, carry, n = a[:n_body], a[n_body:n_body + n_carry], a[n_body + n_carry]
    ct_in = iter(a[n_body + n_carry + 1:])
    carries = body.inputs[n_body:]
    lines = []
    # cotangents of the carries (zeros for the integer ones, which have none)
    ct = []
    for v, f in zip(carries, floats):
        name = ctx.temp()
        lines.append(f"{name} = {next(ct_in) if f else _zero(v)}")
        ct.append(name)
    acc = []
    for v, w in zip(body.inputs[:n_body], lin):
        if w:
            acc.append(ctx.temp())
            lines.append(f"{acc[-1]} = {_zero(v)}")
    k = [ctx.temp() for _ in carry]
    tape = [ctx.temp() for _ in carry]
    lines += [f"{kk} = {_typed(c)}" for kk, c in zip(k, carry)]
    i, r = ctx.temp(), ctx.temp()
    step_k = f"    {_unpack(k)} = {_call(b_fn, bc + k, b_extra)}"

    summed = [m for j, m in enumerate(acc) if j not in folded]
    stacks = [ctx.temp() for _ in stacked]
    floats_ct = [c for c, f in zip(ct, floats) if f]

    def backward(at, pad):
        cur = [f"{t}[{at}]" for t in tape]
        body_lines = [f"{r} = {_call(v_fn, bc + cur + ct, v_extra)}"]
        body_lines += [f"{m} += {r}[{j}]" for j, m in enumerate(summed)]
        body_lines += [f"{c} = {r}[{len(summed) + j}]" for j, c in enumerate(floats_ct)]
        body_lines += [_store(f"{sk}[{at}]", f"{r}[{len(summed) + len(floats_ct) + j}]", v.ndim)
                       for j, (sk, v) in enumerate(zip(stacks, stacked))]
        return [pad + x for x in body_lines]

    if every is None:
        lines += [f"{t} = {_empty(v.shape, v.dtype, n)}" for t, v in zip(tape, carries)]
        lines += [f"{sk} = {_empty(v.shape, v.dtype, n)}" for sk, v in zip(stacks, stacked)]
        lines += [f"for {i} in range({n}):"]
        lines += ["    " + _store(f"{t}[{i}]", kk, v.ndim) for t, kk, v in zip(tape, k, carries)]
        lines += [step_k, f"for {i} in range({n} - 1, -1, -1):"] + backward(i, "    ")
        from .pysource import _tuple
        for j, (operands, rows, cols, swap, shape) in folded.items():
            mats = []
            for (kind, at), width in zip(operands, cols):
                arr = tape[at] if kind == "tape" else stacks[at]
                mats.append(f"{arr}.reshape(({n} * {rows}, {width}))")
            lhs, rhs = (mats[1], mats[0]) if swap else (mats[0], mats[1])
            lines += [f"if {n} > 0:",
                      f"    {acc[j]} = np.dot({lhs}.T, {rhs}).reshape({_tuple(shape)})"]
    else:
        snaps = [ctx.temp() for _ in carry]
        count, s, lo, hi, j = (ctx.temp() for _ in range(5))
        lines += [f"{count} = ({n} + {every - 1}) // {every}"]
        lines += [f"{sn} = {_empty(v.shape, v.dtype, count)}" for sn, v in zip(snaps, carries)]
        lines += [f"{t} = {_empty(v.shape, v.dtype, f'min({n}, {every})')}"
                  for t, v in zip(tape, carries)]
        # (the snapshots' loop stops where the last segment starts)
        lines += [f"for {i} in range(({count} - 1) * {every}):",
                  f"    if {i} % {every} == 0:"]
        lines += ["        " + _store(f"{sn}[{i} // {every}]", kk, v.ndim)
                  for sn, kk, v in zip(snaps, k, carries)]
        lines += [step_k, f"if {count} > 0:"]
        lines += ["    " + _store(f"{sn}[{count} - 1]", kk, v.ndim)
                  for sn, kk, v in zip(snaps, k, carries)]
        lines += [f"for {s} in range({count} - 1, -1, -1):",
                  f"    {lo} = {s} * {every}",
                  f"    {hi} = min({n}, {lo} + {every})"]
        lines += [f"    {kk} = {sn}[{s}]" for kk, sn in zip(k, snaps)]
        lines += [f"    for {j} in range({hi} - {lo}):"]
        lines += ["        " + _store(f"{t}[{j}]", kk, v.ndim)
                  for t, kk, v in zip(tape, k, carries)]
        lines += ["    " + step_k]
        lines += [f"    for {j} in range({hi} - {lo} - 1, -1, -1):"] + backward(j, "        ")
    return lines, acc + [c for c, f in zip(ct, floats) if f]


HANDLERS = {"scan": _scan, "cond": _cond, "while_loop": _while,
            "while_tangent": _while_tangent, "while_adjoint": _while_adjoint,
            "while_hessian": _while_hessian}
