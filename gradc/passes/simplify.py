"""Simplification: constant folding, algebraic identities, common subexpressions, and
dead-code elimination.  Every rewrite preserves results exactly (to the bit): identities
that change NaN/Inf behaviour, like ``x * 0 -> 0``, are not applied.

``simplify(g)`` runs the named pipeline ``fold_cse`` then ``dce``.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Lit, Var, atoms_key, has_effect, make_eqn, params_key
from ..trace import FOLD_LIMIT  # fold constants of at most this many elements


def _is_literal(atom, value, splats=None) -> bool:
    """Whether ``atom`` is a constant equal to ``value`` everywhere: a literal, or a
    broadcast of a scalar literal (``splats``: Var -> that literal)."""
    if splats and atom in splats:
        atom = splats[atom]
    return isinstance(atom, Lit) and atom.value.size > 0 and bool(np.all(atom.value == value))


def _same_type(atom, out) -> bool:
    return tuple(atom.shape) == tuple(out.shape) and np.dtype(atom.dtype) == np.dtype(out.dtype)


def _identity(eqn, ins, splats=None):
    """The operand an equation reduces to by an exact algebraic identity, or None."""
    name = eqn.prim.name

    def _is_const(atom, value):
        return _is_literal(atom, value, splats)
    out = eqn.outputs[0] if len(eqn.outputs) == 1 else None
    if out is None:
        return None
    candidate = None
    if name == "add":
        candidate = ins[0] if _is_const(ins[1], 0) else ins[1] if _is_const(ins[0], 0) else None
    elif name == "sub" and _is_const(ins[1], 0):
        candidate = ins[0]
    elif name == "mul":
        candidate = ins[0] if _is_const(ins[1], 1) else ins[1] if _is_const(ins[0], 1) else None
    elif name == "div" and _is_const(ins[1], 1):
        candidate = ins[0]
    elif name == "pow" and _is_const(ins[1], 1):
        candidate = ins[0]
    elif name in ("reshape", "convert_element_type", "broadcast_in_dim"):
        candidate = ins[0]
    if candidate is not None and _same_type(candidate, out):
        return candidate
    return None


_ELEMENTWISE = _broadcast_p = None


def _elementwise_names():
    from .fuse import ELEMENTWISE
    return ELEMENTWISE - {"select"}


def fold_cse(graph: Graph) -> Graph:
    subst: dict = {}
    seen: dict = {}
    producers: dict = {}     # Var -> the equation that defines it (after rewriting)
    splats: dict = {}        # Var -> the scalar literal it is a broadcast of
    eqns = []
    global _ELEMENTWISE, _broadcast_p
    if _ELEMENTWISE is None:
        from ..prims.shape import broadcast_p
        _ELEMENTWISE, _broadcast_p = _elementwise_names(), broadcast_p

    def read(a):
        return subst.get(a, a) if isinstance(a, Var) else a

    for eqn in graph.eqns:
        ins = tuple(read(a) for a in eqn.inputs)
        prim = eqn.prim
        # neg(neg(x)) -> x
        if prim.name == "neg" and isinstance(ins[0], Var) and ins[0] in producers \
                and producers[ins[0]].prim.name == "neg":
            subst[eqn.outputs[0]] = producers[ins[0]].inputs[0]
            continue
        # transpose(transpose(x, p), q) -> transpose(x, p[q]), and the identity -> x (vmap
        # moves a loop's batch axis out of its stacked results and back in again)
        if prim.name == "transpose" and isinstance(ins[0], Var) and ins[0] in producers \
                and producers[ins[0]].prim.name == "transpose":
            inner = producers[ins[0]]
            perm = tuple(inner.params["perm"][i] for i in eqn.params["perm"])
            ins = (inner.inputs[0],)
            eqn = make_eqn(prim, ins, eqn.outputs, dict(eqn.params, perm=perm), eqn.source)
        if prim.name == "transpose" and tuple(eqn.params["perm"]) == tuple(
                range(len(eqn.params["perm"]))) and _same_type(ins[0], eqn.outputs[0]):
            subst[eqn.outputs[0]] = ins[0]
            continue
        # (a broadcast of a constant stays symbolic: folding it would only grow the graph)
        if not has_effect(eqn) and all(isinstance(a, Lit) for a in ins) \
                and prim.name != "broadcast_in_dim" \
                and all(int(np.prod(v.shape)) <= FOLD_LIMIT for v in eqn.outputs):
            result = prim.impl(*[a.value for a in ins], **eqn.params)
            results = result if prim.multiple_results else [result]
            for v, r in zip(eqn.outputs, results):
                subst[v] = Lit(np.asarray(r, dtype=v.dtype))
            continue
        # an elementwise equation of splats is a splat: compute the scalar once
        if prim.name in _ELEMENTWISE and any(a in splats for a in ins) and all(
                a in splats or isinstance(a, Lit) and a.ndim == 0 for a in ins):
            scalars = [splats[a].value if a in splats else a.value for a in ins]
            value = np.asarray(prim.impl(*scalars, **eqn.params), eqn.outputs[0].dtype)
            out = eqn.outputs[0]
            ins = (Lit(value),)
            prim = _broadcast_p
            eqn = make_eqn(prim, ins, eqn.outputs, {"shape": tuple(out.shape), "dims": ()},
                           eqn.source)
        # a splat operand beside a full-shape one is just its scalar (rank-0 operands
        # broadcast implicitly in elementwise equations)
        elif prim.name in _ELEMENTWISE and any(a in splats for a in ins) and any(
                isinstance(a, Var) and a not in splats and a.shape == eqn.outputs[0].shape
                for a in ins):
            ins = tuple(splats.get(a, a) if isinstance(a, Var) else a for a in ins)
        same = _identity(eqn, ins, splats)
        if same is not None:
            subst[eqn.outputs[0]] = same
            continue
        key = (prim, atoms_key(ins), params_key(eqn.params))
        if key in seen:
            for v, w in zip(eqn.outputs, seen[key]):
                subst[v] = w
            continue
        new = make_eqn(prim, ins, eqn.outputs, eqn.params, eqn.source)
        if prim.name == "broadcast_in_dim" and isinstance(ins[0], Lit) and ins[0].ndim == 0:
            splats[eqn.outputs[0]] = ins[0]
        seen[key] = eqn.outputs
        for v in eqn.outputs:
            producers[v] = new
        eqns.append(new)
    return Graph(graph.inputs, tuple(eqns), tuple(read(a) for a in graph.outputs))


def dce(graph: Graph) -> Graph:
    live = {a for a in graph.outputs if isinstance(a, Var)}
    kept = []
    for eqn in reversed(graph.eqns):
        if has_effect(eqn) or any(v in live for v in eqn.outputs):
            if eqn.prim.name == "scan":
                eqn = _prune_scan(eqn, live)
            kept.append(eqn)
            live.update(a for a in eqn.inputs if isinstance(a, Var))
    return graph.replace(eqns=tuple(reversed(kept)))


def _reached(graph: Graph, outputs) -> set:
    """The inputs of ``graph`` that ``outputs`` depend on, or its equations with effects
    (a guard, which ``dce`` keeps) read."""
    live = {a for a in outputs if isinstance(a, Var)}
    for eqn in reversed(graph.eqns):
        if has_effect(eqn) or any(v in live for v in eqn.outputs):
            live.update(a for a in eqn.inputs if isinstance(a, Var))
    return live.intersection(graph.inputs)


def _prune_scan(eqn, live):
    """A scan without the ys nobody reads, the carries neither read afterwards nor
    needed by a kept output, and the consts and xs its remaining body does not read (so
    that a residual reverse mode stacks but its backward loop never reads costs
    nothing).  Returns ``eqn`` itself when nothing goes."""
    p = eqn.params
    body, n_consts, n_carry = p["body"], p["n_consts"], p["n_carry"]
    n_y = len(eqn.outputs) - n_carry
    keep_y = [eqn.outputs[n_carry + j] in live for j in range(n_y)]
    keep_k = [eqn.outputs[j] in live for j in range(n_carry)]
    while True:     # a kept carry keeps the carries its next value reads
        wanted = ([o for o, k in zip(body.outputs[:n_carry], keep_k) if k]
                  + [o for o, k in zip(body.outputs[n_carry:], keep_y) if k])
        reads = _reached(body, wanted)
        grown = [k or v in reads for k, v in zip(keep_k, body.inputs[n_consts:n_consts + n_carry])]
        if grown == keep_k:
            break
        keep_k = grown
    keep_in = ([v in reads for v in body.inputs[:n_consts]] + keep_k
               + [v in reads for v in body.inputs[n_consts + n_carry:]])
    if all(keep_in) and all(keep_k) and all(keep_y):
        return eqn
    keep_out = keep_k + keep_y
    pick = lambda xs, ks: tuple(x for x, k in zip(xs, ks) if k)     # noqa: E731
    new_body = dce(Graph(pick(body.inputs, keep_in), body.eqns, pick(body.outputs, keep_out)))
    params = dict(p, body=new_body, n_consts=sum(keep_in[:n_consts]), n_carry=sum(keep_k))
    return make_eqn(eqn.prim, pick(eqn.inputs, keep_in), pick(eqn.outputs, keep_out), params,
                    eqn.source)


PIPELINE = (fold_cse, dce)


def simplify(graph: Graph) -> Graph:
    for rewrite in PIPELINE:
        graph = rewrite(graph)
    return graph
