"""Rematerialisation: which of a loop step's values reverse mode keeps on its tape.

Reverse mode through ``scan`` splits the step (``linearize_graph``) into a primal part,
which stacks the values the tangent part reads (the residuals: the tape), and a tangent
part that the backward loop runs over them.  Those residuals are whatever the tangent
rules happen to read, and they are not always the cheapest things to keep.  A CRF's
step reads ``exp(alpha[:, :, None] + A - max)``, a (B, K, K) array, where the carry it
comes from is (B, K): kept as it is, the tape is K times larger than the carry (G4:
533 MB of it, written by the forward loop and read back by the backward one).

``remat_scans`` moves the boundary in a compiled graph: where a forward scan's stacked
results are read by a later scan alone (the backward loop of the same derivative, or
any scan of the same length), the forward scan stacks a cheaper set of values and the
later one recomputes the old ones from them at each step.  Both index the stacked
arrays by the step, so the values are the same: bit for bit in the interpreter; a
compiled recomputation may round a last bit differently.  The choice is a minimum cut
(as in AOTAutograd's partitioner), found by ``networkx`` (``tape_cut``):

* every value ``v`` of the step is an edge ``(v, in) -> (v, out)`` whose capacity is its
  size in bytes at every step, the cost of keeping it on the tape; the loop's consts,
  and values computed from them alone, cost their size once (they are the same at
  every step, computed once before the later loop);
* an equation that is cheap to run again (elementwise, select, broadcast, reshape,
  slice, pad, transpose: ``RECOMPUTABLE``) joins its inputs' ``out`` nodes to its
  outputs' ``in`` nodes with unbounded capacity; any other (a reduction, a product, a
  loop, an effect) has its outputs joined to the source: they are kept if needed, never
  recomputed (a reduction again in the backward loop would cost a pass over its operand
  and, on the GPU, a barrier per step);
* the step's inputs hang from the source, the residuals from the sink.

The cut's edges are the values to keep.  A cut is applied only when it shrinks the tape
at least ``SAVING`` times: recomputing costs time, which a small saving does not repay;
or when it recomputes arithmetic alone (``CHEAP``) and shrinks the tape at all: an RNN's
``1 - h * h`` for tanh's derivative, from the ``h`` that the tape keeps anyway.

Whether recomputing beats the memory traffic depends on the machine
(``codegen.compile.optimise`` says which cut each target gets). On the GPU an ``exp``
is a few cycles of a special-function unit and the tape a round trip through device
memory: everything ``RECOMPUTABLE`` is recomputed there.  On the CPU the CRF's cut lost:
W4's gradient (B=32, T=64, K=32) took 7.4 ms with its tape cut against 4.7 ms without
(the exponentials cost more than the 16 MB they replace, which stay in the caches), so
the CPU targets recompute ``CHEAP`` equations only: arithmetic, selects and views.  That
still catches the tape that is pure waste, a broadcast: ``np.sum(h[:, :, None] * W,
axis=1)`` stacked its (B, K, K) broadcast of ``h`` for the product's tangent, and now
stacks ``h``.  ``GRADC_REMAT=0`` in the environment turns the pass off (read when a
graph is compiled): the A/B of the benchmarks.
"""
from __future__ import annotations

import os

import networkx as nx
import numpy as np

from ..ir import Graph, Var, computed_from, free_vars, make_eqn, new_var_like
from .fuse import ELEMENTWISE, EXPENSIVE, STRUCTURAL
from .simplify import dce

RECOMPUTABLE = ELEMENTWISE | STRUCTURAL
CHEAP = RECOMPUTABLE - EXPENSIVE      # (the CPU's: no transcendental, power or division)
SAVING = 4          # apply a cut only when the tape shrinks at least this many times
TIE = 1 << 10       # a byte's weight against the tie-breaking one of a computed value


def _nbytes(v) -> int:
    return int(np.prod(v.shape, dtype=np.int64)) * np.dtype(v.dtype).itemsize


def _recomputable(eqn, cheap=False) -> bool:
    return (eqn.prim.name in (CHEAP if cheap else RECOMPUTABLE) and not eqn.prim.effect
            and bool(eqn.outputs)
            and not any("body" in k or "branches" in k for k in eqn.params))


def tape_cut(primal: Graph, n_out: int, n_free: int, length: int = 1, cheap=False):
    """The values of ``primal`` (a loop step: its first ``n_free`` inputs the loop's
    consts, its outputs ``n_out`` values and then the residuals) to keep so that the
    residuals can be recomputed from them, and the equations recomputing them, in
    order: ``(keep, eqns)``.  A kept value costs its bytes at each of the loop's
    ``length`` steps; the recomputation may also read free values (consts and values of
    consts alone, not in ``keep``), each costing its bytes once: a const rather than
    its broadcast."""
    residuals = [r for r in primal.outputs[n_out:] if isinstance(r, Var)]
    free, _ = computed_from(primal, n_free)
    g = nx.DiGraph()
    g.add_nodes_from(["source", "sink"])

    def value(v, inline):
        # (ties go to a value that is stored anyway, not one a kernel would compute
        # inline: a reduction's result rather than a function of it, a carry rather
        # than its reshape)
        per_step = 1 if v in free else max(1, length) + 1
        g.add_edge((v, "in"), (v, "out"),
                   capacity=_nbytes(v) * per_step * TIE + int(inline))

    for v in primal.inputs:
        value(v, False)
        g.add_edge("source", (v, "in"))          # (no capacity: unbounded)
    for eqn in primal.eqns:
        for o in eqn.outputs:
            value(o, _recomputable(eqn, cheap))
            if _recomputable(eqn, cheap):
                for a in eqn.inputs:
                    if isinstance(a, Var):
                        g.add_edge((a, "out"), (o, "in"))
            else:
                g.add_edge("source", (o, "in"))
    for r in residuals:
        g.add_edge((r, "out"), "sink")
    _, (near, _) = nx.minimum_cut(g, "source", "sink")
    stop = {v for (v, side) in g.nodes - {"source", "sink"}
            if side == "in" and (v, "in") in near and (v, "out") not in near}
    # the equations between the cut's values and the residuals
    wanted = {r for r in residuals if r not in stop}
    eqns = []
    for eqn in reversed(primal.eqns):
        if not wanted.intersection(eqn.outputs):
            continue
        assert _recomputable(eqn, cheap), eqn
        eqns.append(eqn)
        wanted.update(a for a in eqn.inputs if isinstance(a, Var) and a not in stop)
    assert not wanted.intersection(primal.inputs)
    return {v for v in stop if v not in free}, eqns[::-1]


def remat_scans(graph: Graph, cheap: bool = False) -> Graph:
    """``graph`` with each forward loop's tape cut where ``tape_cut`` finds it at least
    ``SAVING`` times smaller (or smaller at all, recomputing arithmetic alone): a scan
    whose stacked results a later scan of the same length alone reads, as xs, stacks
    the cut's values instead, and the later scan recomputes the old ones from them at
    each step.  Values of the loop's consts alone
    that the recomputation reads are computed once, before the later scan, and passed
    to it as consts.  With ``cheap`` (the CPU targets), only arithmetic without a
    transcendental, a power or a division is recomputed (``CHEAP``)."""
    if os.environ.get("GRADC_REMAT", "1") == "0":     # (the A/B of benchmarks)
        return graph
    done = {}                  # id -> scan tried (held, so that no id is reused)
    while True:
        for i, eqn in enumerate(graph.eqns):
            if eqn.prim.name == "scan" and id(eqn) not in done:
                done[id(eqn)] = eqn
                new = _cut_tape(graph, i, cheap)
                if new is not None:
                    graph = new
                    break
        else:
            return graph


def _readers(graph: Graph) -> dict:
    """Each Var -> [(index of the equation reading it, input position)]."""
    readers: dict = {}
    for i, eqn in enumerate(graph.eqns):
        for pos, a in enumerate(eqn.inputs):
            if isinstance(a, Var):
                readers.setdefault(a, []).append((i, pos))
    return readers


def _cut_tape(graph: Graph, i: int, cheap: bool = False):
    """``graph`` with scan ``i``'s tape cut for the later scan reading it, or None."""
    fwd = graph.eqns[i]
    p = fwd.params
    body, nc, nk, length = p["body"], p["n_consts"], p["n_carry"], p["length"]
    readers, outs = _readers(graph), {v for v in graph.outputs if isinstance(v, Var)}
    # the stacked results that one later scan alone reads, each as one of its xs
    tape: dict = {}                       # reader's index -> {stacked result: xs position}
    for j, y in enumerate(fwd.outputs[nk:]):
        uses = readers.get(y, [])
        if y in outs or len(uses) != 1 or not isinstance(body.outputs[nk + j], Var):
            continue
        (b, pos), = uses
        bwd = graph.eqns[b]
        if bwd.prim.name != "scan" or bwd.params["length"] != length \
                or pos < bwd.params["n_consts"] + bwd.params["n_carry"]:
            continue
        tape.setdefault(b, {})[nk + j] = pos
    if not tape:
        return None
    b, positions = max(tape.items(), key=lambda kv: sum(
        _nbytes(body.outputs[k]) for k in kv[1]))
    bwd = graph.eqns[b]
    taped = [body.outputs[k] for k in positions]
    if len(set(taped)) != len(taped):     # (one value stacked twice: left as it is)
        return None
    rest = [o for k, o in enumerate(body.outputs) if k not in positions]
    view = Graph(body.inputs, body.eqns, tuple(rest) + tuple(taped))
    _, recompute = tape_cut(view, len(rest), nc, length, cheap)
    if not recompute:
        return None
    free, _ = computed_from(body, nc)
    defined = {o for e in recompute for o in e.outputs}
    reads = [v for v in free_vars(recompute) if v not in defined]
    reads += [v for v in taped if v not in defined and v not in reads]
    before = sum(_nbytes(v) for v in taped)
    after = sum(_nbytes(v) for v in reads if v not in free)
    # (recomputing arithmetic alone repays any saving: a tanh's derivative 1 - h * h
    # from h, which the tape keeps anyway)
    if after * SAVING > before and not (
            after < before and all(e.prim.name in CHEAP for e in recompute)):
        return None

    # the values the later scan now reads: consts (the loop's, or computed from them
    # before it) and stacked xs (the loop's own xs, its stacked results, or new ones)
    const_in = {v: k for k, v in enumerate(body.inputs[:nc])}
    x_in = {v: k for k, v in enumerate(body.inputs[nc + nk:])}
    stacked = {o: k for k, o in enumerate(body.outputs[nk:], nk) if isinstance(o, Var)}
    hoisted, outer = [], {v: fwd.inputs[k] for v, k in const_in.items()}
    new_consts, new_xs, new_ys = [], [], []         # (value in the body, outer Var)
    taped_at = {v: positions[k] for k, v in zip(positions, taped) if v not in defined}
    for v in reads:
        if v in taped_at:                 # (kept: the later scan reads it already)
            continue
        if v in free:
            if v not in outer:
                hoisted += _hoist(body, nc, v, outer)
            new_consts.append((v, outer[v]))
        elif v in x_in:
            new_xs.append((v, fwd.inputs[nc + nk + x_in[v]]))
        elif v in stacked:
            new_xs.append((v, fwd.outputs[stacked[v]]))
        else:
            o = Var((length,) + tuple(v.shape), v.dtype)
            new_ys.append(v)
            new_xs.append((v, o))
    # the forward loop: the recomputed values no longer stacked, the new ones stacked
    gone = [k for k, v in zip(positions, taped) if v in defined]
    keep_out = [k for k in range(len(fwd.outputs)) if k not in gone]
    new_body = dce(Graph(body.inputs, body.eqns,
                         tuple(body.outputs[k] for k in keep_out) + tuple(new_ys)))
    fwd2 = make_eqn(fwd.prim, fwd.inputs,
                    tuple(fwd.outputs[k] for k in keep_out)
                    + tuple(o for v, o in new_xs if v in new_ys),
                    dict(p, body=new_body), fwd.source)
    # the later loop: the recomputation first, writing the Vars the tape's xs were
    bp = bwd.params
    bbody, bnc, bnk = bp["body"], bp["n_consts"], bp["n_carry"]
    rename = {v: bbody.inputs[positions[k]] for k, v in zip(positions, taped)}
    const_vars = [new_var_like(v) for v, _ in new_consts]
    xs_vars = [new_var_like(v) for v, _ in new_xs]
    rename.update(zip([v for v, _ in new_consts], const_vars))
    rename.update(zip([v for v, _ in new_xs], xs_vars))
    cloned = []
    for e in recompute:
        ins = tuple(rename[a] if isinstance(a, Var) else a for a in e.inputs)
        for o in e.outputs:
            rename.setdefault(o, new_var_like(o))
        cloned.append(make_eqn(e.prim, ins, tuple(rename[o] for o in e.outputs),
                               e.params, e.source))
    dropped = {positions[k] for k, v in zip(positions, taped) if v in defined}
    b_in = list(bbody.inputs)
    ins_x = [(b_in[q], bwd.inputs[q]) for q in range(bnc + bnk, len(b_in))
             if q not in dropped]
    new_bbody = Graph(tuple(b_in[:bnc]) + tuple(const_vars) + tuple(b_in[bnc:bnc + bnk])
                      + tuple(v for v, _ in ins_x) + tuple(xs_vars),
                      tuple(cloned) + tuple(bbody.eqns), bbody.outputs)
    bwd2 = make_eqn(bwd.prim,
                    tuple(bwd.inputs[:bnc]) + tuple(o for _, o in new_consts)
                    + tuple(bwd.inputs[bnc:bnc + bnk]) + tuple(o for _, o in ins_x)
                    + tuple(o for _, o in new_xs),
                    tuple(bwd.outputs), dict(bp, body=new_bbody, n_consts=bnc + len(new_consts)),
                    bwd.source)
    eqns = list(graph.eqns)
    eqns[i] = fwd2
    eqns[b:b + 1] = hoisted + [bwd2]
    return dce(graph.replace(eqns=tuple(eqns)))


def _hoist(body: Graph, nc: int, v, outer: dict) -> list:
    """Copies, for the enclosing graph, of the equations of ``body`` that compute ``v``
    from the loop's consts (``outer``: body Var -> outer Var, extended)."""
    need, eqns = {v}, []
    for e in reversed(body.eqns):
        if need.intersection(e.outputs):
            eqns.append(e)
            need.update(a for a in e.inputs if isinstance(a, Var) and a not in outer)
    copies = []
    for e in reversed(eqns):
        if all(o in outer for o in e.outputs):
            continue
        for o in e.outputs:
            outer[o] = new_var_like(o)
        copies.append(make_eqn(e.prim, tuple(outer[a] if isinstance(a, Var) else a
                                            for a in e.inputs),
                               tuple(outer[o] for o in e.outputs), e.params, e.source))
    return copies
