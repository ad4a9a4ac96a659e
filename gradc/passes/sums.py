"""Sums of one linear map, factored: ``L(a) + L(b) -> L(a + b)``.

Reverse mode accumulates a value's cotangent as a sum with one term per use, and each
term is the transpose of what the use did: a slice's is a ``pad``, a broadcast's a
``reduce_sum``, a reshape's a ``reshape``.  An unrolled loop of N steps that reads
``w[i % 4]`` gives ``w``'s cotangent as N pads, each placing its piece in a window of
zeros (N·n work, and N branches in the fused loop), and each piece is the reshape of a
reduction: N accumulators in one loop nest, whose compile time in Numba grows with the
product of accumulators and statements (a 300-step loop's gradient with respect to four
weights compiled in minutes).  These maps are linear, so the terms of one map (the same
primitive and parameters, operands of one type) are summed first, at the operand's size,
and mapped once; the merged sum is again a sum of one map's terms (pads of reshapes of
reductions), so the rewrite runs until nothing is left to merge: four pads, four
reductions, whatever the number of steps.

The maps: ``pad`` (one window: ``shape`` and ``index``), ``reduce_sum`` (one set of
axes), ``reshape``, ``transpose`` and ``broadcast_in_dim``.  The rewrite takes maximal
trees of ``add`` (each inner sum used once, by the next one, all of one shape and dtype)
and, within each, the terms of one map used once.  The merged map takes the place of the
first such term; the others' operands are added into its operand in their order.  The
order of additions changes where the maps overlap (windows, reductions: a rounding
difference, as any reassociation), so the pass runs for the compiled targets only
(``codegen.compile.optimise``), not in ``simplify``, whose rewrites are exact.
"""

from __future__ import annotations

from ..ir import Graph, Var


LINEAR_MAPS = frozenset(("pad", "reduce_sum", "reshape", "transpose", "broadcast_in_dim"))
ROUNDS = 16                     # (a bound on the layers of maps peeled, pad of reshape of ...)


def factor_sums(graph: Graph) -> Graph:
    """``graph`` with its sums of one linear map's terms factored, until none is left;
    ``graph`` itself when it has none (nested graphs are left as they are)."""
    for _ in range(ROUNDS):
        factored = _factor_once(graph)
        if factored is graph:
            break
        graph = factored
    return graph


def _key(params) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _factor_once(graph: Graph) -> Graph:
    uses: dict = {}
    producer: dict = {}
    for eqn in graph.eqns:
        for a in eqn.inputs:
            if isinstance(a, Var):
                uses[a] = uses.get(a, 0) + 1
        for v in eqn.outputs:
            producer[v] = eqn
    for a in graph.outputs:
        if isinstance(a, Var):
            uses[a] = uses.get(a, 0) + 2          # (never inner: it is a result)

    def summable(eqn) -> bool:
        if eqn.prim.name != "add":
            return False
        out = eqn.outputs[0]
        return all(
            isinstance(a, Var) and a.shape == out.shape and a.dtype == out.dtype
            for a in eqn.inputs)

    def inner(a) -> bool:
        e = producer.get(a)
        return e is not None and uses.get(a) == 1 and summable(e)

    def window(a):               # (the map of a term that may merge, as a key)
        e = producer.get(a)
        if e is None or e.prim.name not in LINEAR_MAPS or uses.get(a) != 1 or \
                len(e.inputs) != 1 or not isinstance(e.inputs[0], Var):
            return None
        x = e.inputs[0]
        return (e.prim.name, _key(e.params), tuple(x.shape), str(x.dtype))

    inner_sums = {a for e in graph.eqns if summable(e) for a in e.inputs if inner(a)}
    trees: dict = {}                  # root sum's output -> its terms, in order
    for eqn in graph.eqns:
        out = eqn.outputs[0] if eqn.outputs else None
        if out is None or out in inner_sums or not summable(eqn):
            continue
        terms, stack = [], [eqn.outputs[0]]
        while stack:                  # depth first, left to right (without recursion)
            a = stack.pop()
            if a is out or a in inner_sums:
                stack.extend(reversed(producer[a].inputs))
            else:
                terms.append(a)
        seen: dict = {}
        for t in terms:
            key = window(t)
            if key is not None:
                seen[key] = seen.get(key, 0) + 1
        if any(n > 1 for n in seen.values()):
            trees[out] = terms
    if not trees:
        return graph
    from ..interpret import rewrite_graph
    from ..prims.elementwise import add
    from ..trace import bind
    from .simplify import dce

    pieces: dict = {}                 # a merged map's output -> its operand (traced)
    merged = {t for terms in trees.values() for t in terms if window(t) is not None}

    def rewrite(eqn, xs):
        if eqn.prim.name in LINEAR_MAPS and eqn.outputs[0] in merged:
            pieces[eqn.outputs[0]] = xs[0]
        for a, x in zip(eqn.inputs, xs):
            if isinstance(a, Var):
                values[a] = x
        terms = trees.get(eqn.outputs[0] if eqn.outputs else None)
        if terms is None:
            return None
        sums: dict = {}               # window -> [the running sum of its pieces, params]
        order: list = []              # terms, or windows, in order of first appearance
        for t in terms:
            key = window(t)
            if key is None:
                order.append(("term", t))
            elif key in sums:
                sums[key][0] = add(sums[key][0], pieces[t])
            else:
                sums[key] = [pieces[t], producer[t]]
                order.append(("window", key))
        total = None
        for kind, item in order:
            if kind == "term":
                value = values[item]
            else:
                piece, e = sums[item]
                value = bind(e.prim, piece, **e.params)
            total = value if total is None else add(total, value)
        return [total]

    values: dict = {}                 # Var -> its traced value, as read by a sum
    return dce(rewrite_graph(graph, rewrite))
