"""Loop-invariant code motion for ``scan``: the work of a step that reads only the
loop's consts (and literals) runs once, before the loop, and the body reads its result
as a const of its own.

    s = scan(λ W c x. (tanh(c @ Wᵀ) + x, ...), consts=(W,))
      →  V = transpose(W);  s = scan(λ V c x. (tanh(c @ V) + x, ...), consts=(V,))

The same operations on the same values, so the results are the same (the interpreter's
bit for bit); what changes is how often they run, and what a step's kernel sees: the
CUDA target lowers a scan as one kernel only when every value of the step has the
batch axis (``cudarows``), which a transpose or ``tanh`` of a const does not.

``while_loop``s and reverse mode through them (``while_adjoint``) too, but only work
that cannot fail (``safe``): it runs before the loop even where the loop makes no trip.

What stays in the body:
* views of consts (``reshape``, ``broadcast_in_dim``, ``stop_gradient``), which cost
  nothing where they are;
* work on a broadcast const that is larger than the consts it comes from
  (``exp(broadcast(W))``): computed once, it would be an array of that size read at
  every step, where fused into the step it is a few instructions per element;
* the step's results (a ``y`` that depends on consts alone);
* everything of a scan of length 0 (hoisted work would run where the loop does not)
  and equations with effects.
Hoisted work that reads one of the first three has it computed before the loop too
(and the step keeps its own, never a const of that size).
"""
from __future__ import annotations

import os

import numpy as np

from ..ir import Graph, Lit, Var, make_eqn, map_subgraphs, producers_and_readers, subgraphs
from .fuse import ELEMENTWISE
from .remat import _hoist
from .simplify import dce

# equations that only give another view of their operand
VIEWS = {"reshape", "broadcast_in_dim", "stop_gradient"}
# a map over a scan's steps may make values of this many elements, or as many as the
# scan's largest operand or result (maps_of_scans)
MAP_ELEMENTS = 1 << 20
# on the CPU, a step with a contraction of more products than this stays a loop: its
# compiled loop of small products beat the map's large ones (an accumulator's gradient
# of T = 1000, B = 32, K = 64, 131072 products a step: 78 ms as a loop, 109 ms as a
# map), where for small steps the map won (T = 10000, B = 3, K = 4: 0.51 against 27 ms)
CPU_PRODUCT = 1 << 12


# what may run before a while_loop that might make no trip: no index read, no integer
# division, no reduction that an empty array refuses, no solver (``safe``)
SAFE = (ELEMENTWISE - {"div", "rem", "fmod", "floordiv", "pow", "shl", "shr"}) | \
    VIEWS | {"transpose", "einsum", "reduce_sum", "slice", "pad"}
# ... and these where every operand and result is a float (inf or nan, never an error)
SAFE_ON_FLOATS = {"div", "rem", "fmod", "pow"}


def safe(e) -> bool:
    """Whether equation ``e`` may run before a while_loop that makes no trip."""
    if e.prim.name in SAFE:
        return True
    return e.prim.name in SAFE_ON_FLOATS and all(
        np.dtype(v.dtype).kind in "fc" for v in tuple(e.inputs) + tuple(e.outputs))


def enabled() -> bool:
    """Whether the pass runs (``GRADC_LICM=0`` in the environment: not, for A/B timings;
    read when a function is traced or compiled)."""
    return os.environ.get("GRADC_LICM", "1").strip() != "0"


def hoist_invariants(graph: Graph) -> Graph:
    """``graph`` with the invariant work of each scan (its bodies' scans included)
    moved before the loop; ``graph`` itself when there is none."""
    eqns, changed = [], False
    for eqn in graph.eqns:
        if subgraphs(eqn):
            params = map_subgraphs(eqn, hoist_invariants)
            if any(params[k] is not eqn.params[k] for k in params):
                eqn = make_eqn(eqn.prim, eqn.inputs, eqn.outputs, params, eqn.source)
                changed = True
        if eqn.prim.name in ("scan", "while_loop", "while_adjoint"):
            moved = (_hoisted if eqn.prim.name == "scan" else _hoisted_while)(eqn)
            if moved is not None:
                eqns += moved
                changed = True
                continue
        eqns.append(eqn)
    return graph.replace(eqns=tuple(eqns)) if changed else graph


def _size(v) -> int:
    return int(np.prod(v.shape, dtype=np.int64)) if v.ndim else 1


def _hoisted(eqn):
    """The equations before ``eqn`` and ``eqn`` rewritten, or None."""
    p = eqn.params
    if p["length"] < 1:
        return None
    split = split_invariants(p["body"], p["n_consts"])
    if split is None:
        return None
    pre, body, keep = split
    nc = p["n_consts"]
    before, made = _before(pre, eqn.inputs[:nc])
    ins = [eqn.inputs[k] for k in keep] + made
    scan = make_eqn(eqn.prim, tuple(ins) + tuple(eqn.inputs[nc:]), eqn.outputs,
                    dict(p, body=body, n_consts=len(ins)), eqn.source)
    return before + [scan]


def _before(pre, consts):
    """Copies of ``pre``'s equations (``split_invariants``') on the loop's consts
    ``consts`` (outer values), and the outer values of ``pre``'s outputs."""
    outer = dict(zip(pre.inputs, consts))
    before = []
    for v in pre.outputs:
        before += _hoist(pre, len(consts), v, outer)
    return before, [outer[v] for v in pre.outputs]


def _hoisted_while(eqn):
    """The equations before ``while_loop`` or ``while_adjoint`` equation ``eqn`` and
    ``eqn`` rewritten, or None.  A while_loop's condition and body each have consts of
    their own; a while_adjoint's body and its VJP share theirs, whose cotangents it
    returns (``lin``): both graphs read every const as before, then both graphs'
    hoisted values, which are not differentiated (the VJP's cotangents never flow
    through a primal value it reads)."""
    p = eqn.params
    adjoint = eqn.prim.name == "while_adjoint"
    counts = (p["n_body"],) * 2 if adjoint else (p["n_cond"], p["n_body"])
    starts = (0, 0) if adjoint else (0, p["n_cond"])
    splits = [split_invariants(g, n, safe) for g, n in zip(p["branches"], counts)]
    if all(s is None for s in splits):
        return None
    before, extra = [], []                # (extra: each graph's hoisted values, outer)
    for s, start, n in zip(splits, starts, counts):
        eqns, made = _before(s[0], eqn.inputs[start:start + n]) if s else ([], [])
        before += eqns
        extra.append(made)
    if not adjoint:
        ins, graphs = [], []
        for s, g, start, n, new in zip(splits, p["branches"], starts, counts, extra):
            if s is None:
                ins += eqn.inputs[start:start + n]
                graphs.append(g)
                continue
            ins += [eqn.inputs[start + k] for k in s[2]] + new
            graphs.append(s[1])
        nc_new = len(graphs[0].inputs) - (len(p["branches"][0].inputs) - p["n_cond"])
        nb_new = len(graphs[1].inputs) - (len(p["branches"][1].inputs) - p["n_body"])
        params = dict(p, branches=tuple(graphs), n_cond=nc_new, n_body=nb_new)
        return before + [make_eqn(eqn.prim, tuple(ins) + tuple(
            eqn.inputs[p["n_cond"] + p["n_body"]:]), eqn.outputs, params, eqn.source)]
    nb = p["n_body"]
    graphs = []
    for k, (s, g) in enumerate(zip(splits, p["branches"])):
        mine = [] if s is None else list(s[0].outputs)    # (the new graph's inputs)
        theirs = [Var(tuple(v.shape), v.dtype) for v in extra[1 - k]]   # (unread)
        parts = [mine, theirs] if k == 0 else [theirs, mine]
        new = g if s is None else s[1]
        graphs.append(Graph(tuple(g.inputs[:nb]) + tuple(parts[0]) + tuple(parts[1])
                            + tuple(g.inputs[nb:]), new.eqns, new.outputs))
    added = len(extra[0]) + len(extra[1])
    params = dict(p, branches=tuple(graphs), n_body=nb + added,
                  lin=tuple(p["lin"]) + (False,) * added)
    return before + [make_eqn(eqn.prim, tuple(eqn.inputs[:nb]) + tuple(extra[0])
                              + tuple(extra[1]) + tuple(eqn.inputs[nb:]), eqn.outputs,
                              params, eqn.source)]


def split_invariants(body: Graph, nc: int, allowed=None):
    """``(pre, new_body, keep)`` for a loop body whose first ``nc`` inputs are its
    consts, or None when no work is invariant: ``pre`` computes, from those consts, the
    values the new body reads as consts of its own (its outputs); ``new_body``'s inputs
    are the consts it still reads (``keep``: their positions among the old ones), then
    ``pre``'s outputs, then the other inputs as before.  ``allowed``: whether an
    equation may be hoisted (None: any may)."""
    invariant = set(body.inputs[:nc])
    source = {v: _size(v) for v in body.inputs[:nc]}    # the largest const it comes from
    candidates = []
    for e in body.eqns:
        if e.prim.effect or subgraphs(e) or not e.outputs or not all(
                isinstance(a, Lit) or a in invariant for a in e.inputs) or \
                allowed is not None and not allowed(e):
            continue
        came = max([source[a] for a in e.inputs if isinstance(a, Var)] + [1])
        invariant.update(e.outputs)
        source.update((o, came) for o in e.outputs)
        candidates.append(e)
    if not candidates:
        return None
    # hoisted: work whose results are no larger than the consts they come from, and
    # whatever hoisted work reads (a view, a broadcast, a result of the step)
    users: dict = {}
    for e in body.eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                users.setdefault(a, []).append(e)
    handed = {a for a in body.outputs if isinstance(a, Var)}

    def cheap(e):           # (a view, or work larger than the consts it comes from)
        return e.prim.name in VIEWS or any(_size(o) > source[o] for o in e.outputs)
    hoist = set()
    for e in reversed(candidates):
        if not (cheap(e) or handed.intersection(e.outputs)) or any(
                u in hoist for o in e.outputs for u in users.get(o, [])):
            hoist.add(e)
    # ... and computed in the step as well: a result of the step, and a view or large
    # work that the step reads too (never a const of the loop: an array of that size
    # read at every step)
    both = set()
    for e in reversed(body.eqns):
        if e in hoist and (handed.intersection(e.outputs) or cheap(e) and any(
                u not in hoist or u in both for o in e.outputs for u in users.get(o, []))):
            both.add(e)
    kept = [e for e in body.eqns if e not in hoist or e in both]
    read = {a for e in kept for a in e.inputs if isinstance(a, Var)} | handed
    crossing = [o for e in body.eqns if e in hoist and e not in both
                for o in e.outputs if o in read]
    if not crossing:
        return None
    pre = dce(Graph(tuple(body.inputs[:nc]), tuple(e for e in body.eqns if e in hoist),
                    tuple(crossing)))
    keep = [k for k, v in enumerate(body.inputs[:nc]) if v in read]
    new_body = Graph(tuple(body.inputs[k] for k in keep) + tuple(crossing)
                     + tuple(body.inputs[nc:]), tuple(kept), body.outputs)
    return pre, new_body, keep


def maps_enabled() -> bool:
    """Whether ``maps_of_scans`` runs (``GRADC_SCAN_MAPS=0`` in the environment: not,
    for a GPU session's A/B; read when a function is compiled)."""
    return os.environ.get("GRADC_SCAN_MAPS", "1").strip() != "0"


def maps_of_scans(graph: Graph, largest_product=None) -> Graph:
    """``graph`` with each scan that is a map over its steps written as one: its body
    batched over the steps (the vmap pass's ``batch_graph``) and inlined, whose fused
    regions cover every step at once where the loop ran them a step at a time (on the
    GPU, a launch per region per step).  A scan is a map when each carry either never
    changes (each step hands it back as it got it: its final value is its first) or
    only accumulates, ``c + e_t`` with ``e_t`` of its shape computed without any
    accumulating carry (its final value is ``sum_t e_t`` with ``c`` added to the first
    term, as the loop adds it first: a sum over the steps, reassociated).  Reverse mode
    makes such scans: the transpose of an accumulating carry ``d + g(x_t)`` hands
    ``d``'s cotangent to every step unchanged, stacks what ``g``'s transpose makes of
    it, and accumulates the cotangents of the consts ``g`` reads.  Bodies whose
    batching would itself loop (a primitive without a batching rule), hold loops or
    branches, or have effects, stay scans; so does a scan of no steps, and, with
    ``largest_product``, one whose step has a contraction of more products than that
    (the CPU's: see ``CPU_PRODUCT``)."""
    def rewrite(eqn):
        return _as_map(eqn) if eqn.prim.name == "scan" and (
            largest_product is None or all(_products(e) <= largest_product
                                           for e in eqn.params["body"].eqns)) else None
    return _scans_rewritten(graph, lambda g: maps_of_scans(g, largest_product), rewrite)


def _scans_rewritten(graph: Graph, inner, rewrite) -> Graph:
    """``graph`` with its bodies rewritten by ``inner`` and each equation by ``rewrite``
    (``(equations, {its result: the value it is})``, or None to keep it); ``graph``
    itself when nothing changed."""
    eqns, changed, rename = [], False, {}
    for eqn in graph.eqns:
        if rename:
            eqn = eqn.replace(inputs=tuple(rename.get(v, v) if isinstance(v, Var) else v
                                           for v in eqn.inputs))
        if subgraphs(eqn):
            params = map_subgraphs(eqn, inner)
            if any(params[k] is not eqn.params[k] for k in params):
                eqn = make_eqn(eqn.prim, eqn.inputs, eqn.outputs, params, eqn.source)
                changed = True
        rewritten = rewrite(eqn)
        if rewritten is None:
            eqns.append(eqn)
            continue
        made, bound = rewritten
        eqns += made
        rename.update(bound)
        changed = True
    if not changed:
        return graph
    outputs = tuple(rename.get(v, v) if isinstance(v, Var) else v for v in graph.outputs)
    return graph.replace(eqns=tuple(eqns), outputs=outputs)


def _scatter_over_steps(e, c):
    """The batched ``scatter_add`` ``e`` (the vmap pass's: the steps' arange the last
    index array, pinning the result's first axis) summed over the steps: the same
    scatter into carry ``c``'s shape without that index, where the window and every
    other position stay as they were; else None."""
    from ..codegen.indexing import index_map
    v, *arrays = e.inputs
    shape, spec = tuple(e.params["shape"]), tuple(e.params["spec"])
    steps = arrays[-1] if arrays else None
    if not spec or spec[0] != ("a", len(arrays) - 1) or not isinstance(steps, Lit) or \
            any(x[0] == "a" and x[1] == len(arrays) - 1 for x in spec[1:]) or \
            tuple(shape[1:]) != tuple(c.shape) or not np.array_equal(
                np.asarray(steps.value).reshape(-1), np.arange(shape[0])) or \
            int(np.prod(steps.shape)) != shape[0] or int(steps.shape[0]) != shape[0]:
        return None
    window, positions = index_map(shape, spec, [tuple(a.shape) for a in arrays])
    try:
        new_window, new_positions = index_map(shape[1:], spec[1:],
                                              [tuple(a.shape) for a in arrays[:-1]])
    except Exception:
        return None
    if tuple(window) != tuple(new_window) or list(positions[1:]) != list(new_positions):
        return None
    total = Var(tuple(c.shape), c.dtype)
    return make_eqn(e.prim, (v, *arrays[:-1]), (total,),
                    {**e.params, "shape": tuple(shape[1:]), "spec": spec[1:]}, e.source)


def _products(eqn) -> int:
    """The products a contraction ``eqn`` makes (every index's extent multiplied; 0 for
    any other equation)."""
    if eqn.prim.name != "einsum":
        return 0
    extent = {}
    for term, v in zip(eqn.params["spec"].split("->")[0].split(","), eqn.inputs):
        extent.update(zip(term, (int(d) for d in v.shape)))
    return int(np.prod(list(extent.values()), dtype=np.int64))


def accumulating(body: Graph, nc: int, nk: int) -> dict:
    """The carries of a loop body (consts first, ``nk`` carries after them) that only
    accumulate: ``j -> (e, add)`` where the body's new carry ``j`` is ``add``'s
    ``c + e``, ``c`` the carry read by nothing else, the sum read by nothing in the
    body and handed back once, ``e`` a float Var of ``c``'s shape and dtype."""
    carries, outs = body.inputs[nc:nc + nk], list(body.outputs)
    producer, users = producers_and_readers(body.eqns)
    found = {}
    for j, (c, out) in enumerate(zip(carries, outs)):
        add = producer.get(out) if isinstance(out, Var) else None
        readers = users.get(c, [])
        if out is c or add is None or add.prim.name != "add" or len(readers) != 1 or \
                readers[0] is not add or out in users or sum(o is out for o in outs) != 1:
            continue
        others = [a for a in add.inputs if a is not c]
        if len(others) == 1 and isinstance(others[0], Var) and \
                tuple(others[0].shape) == tuple(c.shape) and \
                np.dtype(others[0].dtype) == np.dtype(c.dtype) and \
                np.dtype(c.dtype).kind in "fc":
            found[j] = (others[0], add)
    return found


def _as_map(eqn):
    """``(equations, {eqn's result: the value it is})`` computing scan ``eqn`` as a
    map over its steps, or None (see ``maps_of_scans``)."""
    from ..prims.elementwise import add_p
    from .batching import batch_graph
    p = eqn.params
    body, nc, nk, T = p["body"], p["n_consts"], p["n_carry"], p["length"]
    if T < 1 or any(e.prim.effect or subgraphs(e) for e in body.eqns):
        return None
    carries, outs = body.inputs[nc:nc + nk], list(body.outputs)
    found = accumulating(body, nc, nk)
    if any(out is not c and j not in found for j, (c, out) in enumerate(zip(carries, outs))):
        return None
    terms = {j: t for j, (t, _) in found.items()}
    adds = {a for _, a in found.values()}
    # (what the terms and the stacked results compute reads no accumulating carry)
    tainted = {carries[j] for j in terms}
    for e in body.eqns:
        if e not in adds and any(isinstance(a, Var) and a in tainted for a in e.inputs):
            tainted.update(e.outputs)
    wanted = outs[nk:] + [terms[j] for j in sorted(terms)]
    if any(isinstance(v, Var) and v in tainted for v in wanted):
        return None
    steps = Graph(body.inputs, tuple(e for e in body.eqns if e not in adds), tuple(wanted))
    try:
        mapped = batch_graph(steps, [False] * (nc + nk) + [True] * (len(body.inputs)
                                                                  - nc - nk), T)
    except Exception:        # (GradcError: a body the vmap pass refuses; the loop runs it)
        return None
    if any(e.prim.effect or subgraphs(e) for e in mapped.eqns):
        return None                  # (a primitive batched by a loop of its own)
    ny = len(outs) - nk
    summed = _summed_over_steps(mapped, ny, [carries[j] for j in sorted(terms)])
    # (no value of the map larger than the loop's own arrays, or than MAP_ELEMENTS: a
    # step's outer product stacked over a thousand steps would be an array the loop
    # never made; one summed over the steps as it is made never is)
    limit = max([MAP_ELEMENTS] + [_size(v) for v in tuple(eqn.inputs) + tuple(eqn.outputs)
                                  if isinstance(v, Var)])
    if any(_size(o) > limit for e in mapped.eqns if e not in summed for o in e.outputs):
        return None
    env = dict(zip(mapped.inputs, eqn.inputs))

    def outer(a):
        return env.get(a, a) if isinstance(a, Var) else a
    made = [summed.get(e, e) for e in mapped.eqns]
    made = [make_eqn(e.prim, tuple(outer(a) for a in e.inputs), e.outputs, e.params,
                     e.source or eqn.source) for e in made]
    bound = {o: eqn.inputs[nc + j] for j, o in enumerate(eqn.outputs[:nk])
             if j not in terms}
    bound.update((o, outer(y)) for o, y in zip(eqn.outputs[nk:], mapped.outputs[:ny]))
    totals = {e.outputs[0]: s.outputs[0] for e, s in summed.items()}
    for j, stacked in zip(sorted(terms), mapped.outputs[ny:]):
        c, c0 = carries[j], eqn.inputs[nc + j]
        final = Var(tuple(c.shape), c.dtype)
        if stacked in totals:               # (c0 + the contraction over the steps)
            made.append(make_eqn(add_p, (c0, totals[stacked]), (final,), {}, eqn.source))
        else:
            made += _first_value_first(c0, outer(stacked), final, T, eqn.source)
        bound[eqn.outputs[j]] = final
    return made, bound


def _first_value_first(c0, stacked, final, T, source) -> list:
    """Equations making ``final = sum over the steps of stacked`` with the carry's first
    value ``c0`` added to the first step's term (where it is no literal zero): the loop
    adds ``c0 + e_0`` first, and a sum starting there as well keeps what its first
    additions cancel or overflow as the loop did (``-1e16 + 1e16``, then the ones)."""
    from ..prims.elementwise import add_p, select_p
    from ..prims.reduce import reduce_sum_p
    from ..prims.shape import broadcast_p
    shape = tuple(stacked.shape)
    if isinstance(c0, Lit) and not np.any(c0.value):
        return [make_eqn(reduce_sum_p, (stacked,), (final,), {"axes": (0,)}, source)]
    c0_all, plus, first, terms = (Var(shape, stacked.dtype), Var(shape, stacked.dtype),
                                  Var(shape, np.dtype(bool)), Var(shape, stacked.dtype))
    mask = Lit(np.arange(T) == 0)
    return [make_eqn(broadcast_p, (c0,), (c0_all,), {"shape": shape,
                                                      "dims": tuple(range(1, len(shape)))},
                     source),
            make_eqn(add_p, (stacked, c0_all), (plus,), {}, source),
            make_eqn(broadcast_p, (mask,), (first,), {"shape": shape, "dims": (0,)}, source),
            make_eqn(select_p, (first, plus, stacked), (terms,), {}, source),
            make_eqn(reduce_sum_p, (terms,), (final,), {"axes": (0,)}, source)]


def _summed_over_steps(mapped: Graph, ny: int, carries) -> dict:
    """The map's accumulator terms (its outputs after the first ``ny``, each to be summed
    over the steps into carry of ``carries``) that an ``einsum`` or a ``scatter_add``
    makes and nothing else reads: each -> the same contraction summing the step's
    letter too (``zij,zik->zjk`` summed over ``z`` is ``zij,zik->jk``), or the same
    scatter without the steps' index (``_scatter_over_steps``): their (T, ...) results
    are never made."""
    from ..prims.linalg import einsum_p
    producer, readers = producers_and_readers(mapped.eqns)
    reads = {v: len(es) for v, es in readers.items()}
    for v in mapped.outputs:
        if isinstance(v, Var):
            reads[v] = reads.get(v, 0) + 1
    out = {}
    for stacked, c in zip(mapped.outputs[ny:], carries):
        e = producer.get(stacked) if isinstance(stacked, Var) else None
        if e is None or reads.get(stacked) != 1 or len(e.outputs) != 1:
            continue
        if e.prim.name == "scatter_add":
            folded = _scatter_over_steps(e, c)
            if folded is not None:
                out[e] = folded
            continue
        if e.prim is not einsum_p:
            continue
        ins, result = e.params["spec"].split("->")
        # (the steps' letter on both operands: on one only, ``zi,j->ij`` is no einsum of
        # the primitive's, which sums such a letter first; the term then stays stacked)
        if not result or result[0] in result[1:] or "." in e.params["spec"] or \
                any(result[0] not in term for term in ins.split(",")):
            continue
        total = Var(tuple(c.shape), c.dtype)
        out[e] = make_eqn(einsum_p, e.inputs, (total,),
                          {**e.params, "spec": f"{ins}->{result[1:]}"}, e.source)
    return out


def sums_enabled(target: str = "cpu") -> bool:
    """Whether ``sums_after_scans`` runs for ``target`` (``GRADC_SCAN_SUMS=0`` in the
    environment: not, for A/B timings; on the GPU only with ``GRADC_CUDA_SCAN_SUMS=1``,
    until a GPU session has timed it; read when a function is compiled)."""
    if target == "cuda" and os.environ.get("GRADC_CUDA_SCAN_SUMS", "0").strip() != "1":
        return False
    return os.environ.get("GRADC_SCAN_SUMS", "1").strip() != "0"


def sums_after_scans(graph: Graph) -> Graph:
    """``graph`` with each scan's accumulating carries whose term is a contraction
    summed after the loop, as one contraction over every step (the other carries may
    change as they like).  Reverse mode through an RNN ``h = tanh(W @ h + x_t)`` makes
    ``dW = dW + outer(d_t, h_t)``: a K×K product written and added to the carry at every
    step.  Summed after the loop, ``dW = dW0 + einsum('ti,tj->ij', D, H)`` is one
    matrix product (BLAS on the CPU) over the stacked operands, which the loop hands
    back as ys (or already has: an ``xs``, a stacked result).  Only where each stacked
    operand's step is no larger than the carry, so the loop writes fewer bytes a step
    than it did, and the stack no larger than the loop's own arrays (or
    ``MAP_ELEMENTS``).  An operand that the step does not change (a const, a literal)
    is read as it is; where only one operand changes, it is summed over the steps
    first (``sum_t W v_t = W sum_t v_t``).  A reassociated sum, as ``maps_of_scans``'
    contractions are."""
    return _scans_rewritten(graph, sums_after_scans,
                            lambda e: _sums_after(e) if e.prim.name == "scan" else None)


def _sums_after(eqn):
    """``(equations, {eqn's result: the value it is})``: scan ``eqn`` without the
    accumulating carries ``sums_after_scans`` sums after it, then those sums; or None."""
    from ..prims.elementwise import add_p
    from ..prims.linalg import einsum_p, parse_spec
    from ..prims.reduce import reduce_sum_p
    p = eqn.params
    body, nc, nk, T = p["body"], p["n_consts"], p["n_carry"], p["length"]
    if T < 1:
        return None
    found = accumulating(body, nc, nk)
    if not found:
        return None
    carries, outs, ny = body.inputs[nc:nc + nk], list(body.outputs), len(body.outputs) - nk
    producer, users = producers_and_readers(body.eqns)
    # (an accumulating carry is read by its add alone, so no term reads one: a carry
    # that a term reads changes otherwise, and is stacked like any value of the step)
    xs_at = {v: nc + nk + i for i, v in enumerate(body.inputs[nc + nk:])}
    ys_at = {}
    for i, v in enumerate(outs[nk:]):
        ys_at.setdefault(v, i)
    limit = max([MAP_ELEMENTS] + [_size(v) for v in tuple(eqn.inputs) + tuple(eqn.outputs)
                                  if isinstance(v, Var)])
    consts = {v: eqn.inputs[i] for i, v in enumerate(body.inputs[:nc])}
    # (folded: j -> (the contraction, each operand: a value the loop does not change,
    # "same"; an xs, "xs", or a ys of the body, "ys", stacked over the steps)
    new_ys, folded = [], {}
    for j in sorted(found):
        term, add = found[j]
        e = producer.get(term)
        if e is None or e.prim is not einsum_p or users.get(term) != [add] or \
                term in outs or "." in e.params["spec"]:
            continue
        how, stack = [], []
        for a in e.inputs:
            if isinstance(a, Lit) or a in consts:
                how.append(("same", a if isinstance(a, Lit) else consts[a]))
            elif a in xs_at:
                how.append(("xs", eqn.inputs[xs_at[a]]))
            elif a in ys_at or a in stack:
                how.append(("ys", a))
            elif _size(a) <= _size(carries[j]) and T * _size(a) <= limit:
                stack.append(a)
                how.append(("ys", a))
            else:
                break
        else:
            if any(k != "same" for k, _ in how):
                for a in stack:
                    ys_at[a] = ny + len(new_ys)
                    new_ys.append(a)
                folded[j] = (e, how)
    if not folded:
        return None
    # the loop without the folded carries, handing back the new ys
    keep = [j for j in range(nk) if j not in folded]
    new_body = Graph(tuple(body.inputs[:nc]) + tuple(carries[j] for j in keep)
                     + tuple(body.inputs[nc + nk:]),
                     tuple(e for e in body.eqns if e not in {found[j][1] for j in folded}),
                     tuple(outs[j] for j in keep) + tuple(outs[nk:]) + tuple(new_ys))
    new_body = dce(new_body)
    stacked = [Var((T,) + tuple(v.shape), v.dtype) for v in new_ys]
    ys_outer = list(eqn.outputs[nk:]) + stacked
    scan = make_eqn(eqn.prim, tuple(eqn.inputs[:nc]) + tuple(eqn.inputs[nc + j] for j in keep)
                    + tuple(eqn.inputs[nc + nk:]),
                    tuple(eqn.outputs[j] for j in keep) + tuple(ys_outer),
                    dict(p, body=new_body, n_carry=len(keep)), eqn.source)
    made, bound = [scan], {}
    for j, (e, how) in folded.items():
        letters = parse_spec(e.params["spec"])
        used = set(e.params["spec"])
        z = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA"
                 if c not in used)
        both = all(k != "same" for k, _ in how)
        ops, terms = [], []
        for (k, v), term in zip(how, letters[:2]):
            if k == "same":
                ops.append(v)
                terms.append(term)
                continue
            v = ys_outer[ys_at[v]] if k == "ys" else v
            if not both:            # (the one changing operand, summed over the steps)
                total = Var(tuple(v.shape[1:]), v.dtype)
                made.append(make_eqn(reduce_sum_p, (v,), (total,), {"axes": (0,)},
                                     eqn.source))
                v = total
            ops.append(v)
            terms.append(z + term if both else term)
        c = carries[j]
        total = Var(tuple(c.shape), c.dtype)
        made.append(make_eqn(einsum_p, tuple(ops), (total,),
                             {**e.params, "spec": f"{terms[0]},{terms[1]}->{letters[2]}"},
                             e.source or eqn.source))
        final = Var(tuple(c.shape), c.dtype)
        made.append(make_eqn(add_p, (eqn.inputs[nc + j], total), (final,), {}, eqn.source))
        bound[eqn.outputs[j]] = final
    return made, bound
