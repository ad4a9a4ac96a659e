"""A scan's step rewritten for the CUDA target, where the one-kernel scan
(``codegen.cudarows``) lowers it: primitives it has no stage for, or lowers as a stage
of their own, written with primitives the fusion pass joins to their neighbours.

* ``argmax``/``argmin`` as two reductions (``passes.argreduce``): a step holding one
  otherwise ran as a host loop, a launch or more a step;
* a product that sums nothing (an ``einsum`` whose every index is in its result: an
  outer product, ``dW += outer(h, d)`` in the step of an RNN's gradient over one
  sequence) as its operands broadcast and multiplied: one stage with the sum that
  accumulates it, not a stage writing the product to memory and another reading it;
* a concatenation (``np.roll``, a shift register ``np.concatenate([h[:, 1:], x])``) as
  a selection among its operands padded into the result, by the index along the axis:
  pads and selections fuse (with the slices that feed them), a concatenation has no
  stage in the one-kernel scan.

The last rewrite also runs outside scans, on every compiled target (``selections``): a
concatenation of a few operands is the select of pads that fusion joins to its neighbours,
where it was a copy of its own (``np.roll`` in an unrolled loop: three loops a step).

The graph is traced again with the rewrites (``interpret.eval_graph``'s ``rewrite``);
outside the bodies of scans and while_loops (``cudarows.one_row_while``) only a small
``argmax`` changes (of at most ``cudarows.one_run_work()`` elements: its reductions join
the run of small equations around it as one block, ``cudarows.one_run``; a large one
keeps its kernel, which reads its operand once).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, map_subgraphs, subgraphs
from ..prims.linalg import parse_spec
from .argreduce import decomposable, first_index

LOOPS = ("scan", "while_loop", "while_adjoint")    # (whose bodies the one-kernel loops lower)


def step_rewrites(graph: Graph, in_loop: bool = False) -> Graph:
    """``graph`` with the rewrites above applied inside each scan's body (at any
    depth); ``graph`` itself when there is nothing to rewrite."""
    if not _needs(graph, in_loop):
        return graph
    from ..interpret import rewrite_graph
    from ..trace import bind

    def rewrite(eqn, xs):
        if (in_loop or _small(eqn)) and decomposable(eqn):
            return [first_index(xs[0], eqn.prim.name, eqn.params["axis"])]
        if in_loop and _outer(eqn):
            return [outer_product(xs[0], xs[1], eqn.params["spec"])]
        if in_loop and _concatenation(eqn):
            return [selection(xs, eqn.params["axis"], eqn.outputs[0].shape)]
        if not subgraphs(eqn):
            return None
        inner = in_loop or eqn.prim.name in LOOPS
        out = bind(eqn.prim, *xs, **map_subgraphs(eqn, lambda g: step_rewrites(g, inner)))
        return out if eqn.prim.multiple_results else [out]

    return rewrite_graph(graph, rewrite)


SELECT_MAX = 4    # operands of a concatenation rewritten as a selection outside loops


def selections(graph: Graph, products: bool = False) -> Graph:
    """``graph`` with each concatenation of 2 to ``SELECT_MAX`` operands (``np.roll``, a
    shift register, ``np.concatenate([x, f(x[:1])])``), at any depth, rewritten as a
    ``selection``, on every compiled target: pads and selects fuse with the loops that
    compute the operands and with those that read the result, where a concatenation
    materialises its result and usually each operand.  One of more operands (``np.stack``
    of a list) stays a copy: each element of a selection tests every operand's window.
    So does a concatenation of loops' results (``np.concatenate([h[None], ys])`` of a
    scan's): the GPU's one-kernel scan writes them into views of it, no copy at all
    (``codegen.cudagen._destinations``).

    With ``products`` (the CPU targets), each product that sums no index (``_outer``:
    an outer product, the row scaling ``zi,z->zi`` that ``vmap`` of a gradient makes)
    is its operands broadcast and multiplied (``outer_product``), a loop that fuses with
    its neighbours, where the CPU lowering made it a batched product of 1x1 matrices
    (``vmap(grad)`` of a 64x10 problem: 27 µs a call, 10 µs with the loop fused).
    ``graph`` itself when there is nothing to rewrite."""
    if not _has_selection(graph, products):
        return graph
    from ..interpret import rewrite_graph
    from ..trace import bind
    producer = {v: e for e in graph.eqns for v in e.outputs}

    def rewrite(eqn, xs):
        if _selectable(eqn, producer):
            return [selection(xs, eqn.params["axis"], eqn.outputs[0].shape)]
        if products and _outer(eqn):
            return [outer_product(xs[0], xs[1], eqn.params["spec"])]
        inner = _products_inside(eqn, products)
        if not any(_has_selection(g, inner) for g in subgraphs(eqn)):
            return None
        out = bind(eqn.prim, *xs, **map_subgraphs(eqn, lambda g: selections(g, inner)))
        return out if eqn.prim.multiple_results else [out]

    return rewrite_graph(graph, rewrite)


def _selectable(eqn, producer: dict) -> bool:
    if not _concatenation(eqn) or len(eqn.inputs) > SELECT_MAX:
        return False

    def looped(v) -> bool:              # (a loop's result, or a reshape of one)
        e = producer.get(v)
        if e is not None and e.prim.name == "reshape":
            e = producer.get(e.inputs[0])
        return e is not None and e.prim.name in LOOPS
    return not all(looped(v) for v in eqn.inputs)


def _has_selection(graph: Graph, products: bool = False) -> bool:
    producer = {v: e for e in graph.eqns for v in e.outputs}
    return any(_selectable(e, producer) or products and _outer(e) or
               any(_has_selection(g, _products_inside(e, products)) for g in subgraphs(e))
               for e in graph.eqns)


def _products_inside(eqn, products: bool) -> bool:
    """Whether ``selections`` rewrites products in ``eqn``'s bodies: not in a
    ``while_adjoint``'s, whose lowering sums its outer products after the sweep, as one
    product with the tape (``codegen.control._summed_after``)."""
    return products and eqn.prim.name != "while_adjoint"


def _outer(eqn) -> bool:
    if eqn.prim.name != "einsum":
        return False
    a, b, out = parse_spec(eqn.params["spec"])
    return set(a) | set(b) == set(out)


def _concatenation(eqn) -> bool:
    return eqn.prim.name == "concatenate" and len(eqn.inputs) > 1 and \
        all(v.ndim for v in eqn.inputs)


def _small(eqn) -> bool:
    """An operand of at most ``cudarows.one_run_work()`` elements (0: none is small)."""
    from ..codegen.cudarows import one_run_work
    return bool(eqn.inputs) and 0 < int(np.prod(eqn.inputs[0].shape)) <= one_run_work()


def _needs(graph: Graph, in_loop: bool) -> bool:
    return any(in_loop and (decomposable(e) or _outer(e) or _concatenation(e)) or
               decomposable(e) and _small(e) or any(
        _needs(g, in_loop or e.prim.name in LOOPS) for g in subgraphs(e))
        for e in graph.eqns)


def outer_product(a, b, spec: str):
    """``einsum(spec, a, b)`` of traced ``a`` and ``b`` when it sums no index: each
    operand's axes put in the result's order, size-1 axes for the result's other
    indices, and the product broadcast."""
    ta, tb, out = parse_spec(spec)

    def aligned(x, letters):
        order = sorted(range(len(letters)), key=lambda k: out.index(letters[k]))
        x = np.transpose(x, order) if order != list(range(len(letters))) else x
        shape = [int(x.shape[order.index(letters.index(c))]) if c in letters else 1
                 for c in out]
        return np.reshape(x, shape)
    return aligned(a, ta) * aligned(b, tb)


def selection(xs, axis: int, shape):
    """``np.concatenate(xs, axis)`` of traced ``xs`` (of result ``shape``): each operand
    padded into the result, the one whose window holds an element selected by its
    index along the axis (0, 1, 2, ... as a constant, which a kernel reads as the index
    itself: ``codegen.loops.const_element``).  Selected, not added: a sum of the pads
    would turn a -0.0 into +0.0."""
    from ..prims.index import pad_p
    from ..trace import bind
    shape = tuple(int(d) for d in shape)
    axis = int(axis) % len(shape)
    iota = np.arange(shape[axis], dtype=np.int64).reshape(
        [n if d == axis else 1 for d, n in enumerate(shape)])
    parts, at = [], 0
    for x in xs:
        n = int(np.shape(x)[axis])
        index = tuple((at, at + n, 1) if d == axis else (0, m, 1)
                      for d, m in enumerate(shape))
        at += n
        parts.append((at, bind(pad_p, x, shape=shape, index=index)))
    out = parts[-1][1]
    for end, part in reversed(parts[:-1]):
        out = np.where(iota < end, part, out)
    return out
