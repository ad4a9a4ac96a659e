"""Sums of zero-padded values, merged: ``pad(a, w) + pad(b, w) -> pad(a + b, w)``.

Reverse mode through an index or slice of an array, ``w[i % 4]`` in an unrolled loop,
gives the array's cotangent as a sum of one ``pad`` per use (the transpose of a slice
is a pad), each placing its piece in a window of zeros.  A sum of N such pads into an
array of n elements computes N windows' tests per element (N·n work), and the fused
loop that evaluates it has N branches: a 300-step loop's gradient with respect to four
weights compiled in minutes.  Padding is linear, so pads of one window are summed
first, at the size of their window, and padded once: four pads, whatever the number of
steps.

The rewrite takes maximal trees of ``add`` (each inner sum used once, by the next one,
all of one shape and dtype) and, within each, the pads of one window (``shape``,
``index``, operand type), used once.  The merged pad takes the place of the window's
first one; the others' pieces are added into it in their order.  Where windows overlap
or other terms share an element, the order of additions at that element changes (a
rounding difference, as any reassociation), so the pass runs for the compiled targets
only (``codegen.compile.optimise``), not in ``simplify``, whose rewrites are exact.
"""
from __future__ import annotations

from ..ir import Graph, Var


def merge_pads(graph: Graph) -> Graph:
    """``graph`` with the sums of same-window pads merged; ``graph`` itself when it has
    none (nested graphs are left as they are)."""
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

    def window(a):
        e = producer.get(a)
        if e is None or e.prim.name != "pad" or uses.get(a) != 1:
            return None
        x = e.inputs[0]
        return (e.params["shape"], e.params["index"], tuple(x.shape), str(x.dtype))

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
    from ..interpret import eval_graph
    from ..prims.elementwise import add
    from ..prims.index import pad
    from ..trace import trace_graph
    from .simplify import dce

    pieces: dict = {}                 # a merged pad's output -> its operand (traced)
    merged = {t for terms in trees.values() for t in terms if window(t) is not None}

    def rewrite(eqn, xs):
        if eqn.prim.name == "pad" and eqn.outputs[0] in merged:
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
                sums[key] = [pieces[t], producer[t].params]
                order.append(("window", key))
        total = None
        for kind, item in order:
            if kind == "term":
                value = values[item]
            else:
                value = pad(sums[item][0], sums[item][1]["shape"], sums[item][1]["index"])
            total = value if total is None else add(total, value)
        return [total]

    values: dict = {}                 # Var -> its traced value, as read by a sum
    new, _, captured = trace_graph(lambda *args: eval_graph(graph, list(args), rewrite),
                                   [(v.shape, v.dtype) for v in graph.inputs])
    assert not captured
    return dce(new)
