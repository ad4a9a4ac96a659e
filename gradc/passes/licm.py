"""Loop-invariant code motion for ``scan``: the work of a step that reads only the
loop's consts (and literals) runs once, before the loop, and the body reads its result
as a const of its own.

    s = scan(λ W c x. (tanh(c @ Wᵀ) + x, ...), consts=(W,))
      →  V = transpose(W);  s = scan(λ V c x. (tanh(c @ V) + x, ...), consts=(V,))

The same operations on the same values, so the results are the same (the interpreter's
bit for bit); what changes is how often they run, and what a step's kernel sees: the
CUDA target lowers a scan as one kernel only when every value of the step has the
batch axis (``cudarows``), which a transpose or ``tanh`` of a const does not.

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

from ..ir import Graph, Lit, Var, make_eqn, map_subgraphs, subgraphs
from .remat import _hoist
from .simplify import dce

# equations that only give another view of their operand
VIEWS = {"reshape", "broadcast_in_dim", "stop_gradient"}


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
        if eqn.prim.name == "scan":
            moved = _hoisted(eqn)
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
    outer = dict(zip(pre.inputs, eqn.inputs[:nc]))
    before = []
    for v in pre.outputs:           # (copies of pre's equations, on the outer values)
        before += _hoist(pre, nc, v, outer)
    ins = [eqn.inputs[k] for k in keep] + [outer[o] for o in pre.outputs]
    scan = make_eqn(eqn.prim, tuple(ins) + tuple(eqn.inputs[nc:]), eqn.outputs,
                    dict(p, body=body, n_consts=len(ins)), eqn.source)
    return before + [scan]


def split_invariants(body: Graph, nc: int):
    """``(pre, new_body, keep)`` for a loop body whose first ``nc`` inputs are its
    consts, or None when no work is invariant: ``pre`` computes, from those consts, the
    values the new body reads as consts of its own (its outputs); ``new_body``'s inputs
    are the consts it still reads (``keep``: their positions among the old ones), then
    ``pre``'s outputs, then the other inputs as before."""
    invariant = set(body.inputs[:nc])
    source = {v: _size(v) for v in body.inputs[:nc]}    # the largest const it comes from
    candidates = []
    for e in body.eqns:
        if e.prim.effect or subgraphs(e) or not e.outputs or not all(
                isinstance(a, Lit) or a in invariant for a in e.inputs):
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
