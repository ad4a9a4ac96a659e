"""Which output buffers of a compiled function may share memory (a liveness plan).

The compiled CPU code writes every array a fused loop nest, a large matrix product or a
scan's stacked ys makes into a buffer its caller allocates (``pysource.out_buffer``:
destination passing; buffers under ``SMALL_OUT_BYTES``, far below ``MIN_BYTES``, are
allocated by the code itself).  Without a plan each such value has memory of its own for the
whole call, so a gradient's peak is the sum of all its intermediates.  This module lets
a buffer take the memory of one whose value is dead by then, the static plan of XLA's
buffer assignment and of TVM's storage rewrite, on one Graph:

* A buffer is *made* by one equation (the one whose lowering asked for it) and holds
  the value of some of its outputs (``backed``; when the lowering does not say which,
  any of them may be in it, besides the roots below).
* Every array value has *roots*: the buffers it may share memory with.  A value a buffer
  holds has that buffer; a value its primitive is known to allocate (``fresh``: a NumPy
  ufunc's result, those of ``inplace.allocates``) has none; any other array value may be
  (a view of) any of its equation's inputs, so it has all their roots (conservative, as
  in ``inplace``: an unknown primitive never makes sharing unsafe, only less frequent);
  a ``barrier``'s results have their values' roots only (its other operands are read
  for their time).
  A rank-0 value is a number, with no memory.
* A buffer is *live* from the equation that makes it to the last equation reading a
  value with that root; a value the function returns keeps it live to the end.
* Buffers of the same dtype and size share memory when their live ranges are disjoint
  (strictly: the equation making the second reads nothing of the first), first fit in
  the order they are made.  Only buffers of ``MIN_BYTES`` and more (the threshold of
  the pool in ``buffers``) take part; smaller ones free little and stay NumPy's.

The caller (``numba_cpu.Compiled``) then passes one array, or a reshaped view of it, as
every parameter of a group.  Two parameters of the generated function may be the same
memory, but one of them is never read after the other is made, so no loop nest sees
both; the generated source's header says which buffer lives in which one's memory.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Var
from . import buffers

MIN_BYTES = buffers.MIN_BYTES       # the smallest buffer that takes part


def _held(eqn, var) -> list:
    """The outputs of ``eqn`` whose value the buffer made for ``var`` holds: ``var``
    itself, or the results of a fused nest whose body computes it (empty: not known)."""
    outs = [v for v in eqn.outputs if v is var]
    if not outs and eqn.prim.name == "fused":
        body = eqn.params["body"]
        outs = [v for v, r in zip(eqn.outputs, body.outputs) if r is var]
    return outs


def live_ranges(graph: Graph, made: dict, fresh=frozenset()) -> dict:
    """``name -> (first, last)``: the equations over which each buffer is live (``last``
    is ``len(graph.eqns)`` for memory the function returns).  ``made``: buffer name ->
    (index of the equation making it, the Var it was made for, or None); ``fresh``: the
    values known to be memory of their own."""
    eqns = list(graph.eqns)
    backed: dict = {}           # Var -> the buffers holding its value
    maybe: dict = {}            # Var -> buffers its equation made for a value not known
    for name, (k, var) in made.items():
        held = _held(eqns[k], var)
        for v in held or eqns[k].outputs:
            (backed if held else maybe).setdefault(v, set()).add(name)
    roots: dict = {}
    first = {name: k for name, (k, _) in made.items()}
    last = dict(first)

    def read(x, k):
        for name in roots.get(x, ()) if isinstance(x, Var) else ():
            last[name] = max(last[name], k)

    for k, e in enumerate(eqns):
        for x in e.inputs:
            read(x, k)
        if e.prim.name == "barrier":        # its values, as they are (the rest: deps)
            roots.update((y, roots.get(x, frozenset()) if isinstance(x, Var)
                          else frozenset()) for y, x in zip(e.outputs, e.inputs))
            continue
        union = frozenset().union(*(roots.get(x, ()) for x in e.inputs
                                    if isinstance(x, Var)))
        for y in e.outputs:
            if y in backed:
                roots[y] = frozenset(backed[y])
            elif y in fresh and y not in maybe:
                roots[y] = frozenset()
            elif y.ndim > 0 or y in maybe:
                roots[y] = union | maybe.get(y, set())
    for x in graph.outputs:
        read(x, len(eqns))
    return {name: (first[name], last[name]) for name in made}


def share(ranges: dict, outs: dict) -> dict:
    """``name -> name``: the buffers that take the memory of an earlier one (the earliest
    buffer of their group), from their ``live_ranges`` (in the order the buffers are
    made, which is their equations' order).  ``outs``: buffer name -> (shape, dtype)."""
    free: dict = {}            # (size, dtype) -> [[end of the last user, first name]]
    shared = {}
    for name in ranges:
        shape, dtype = outs[name]
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        if size * dtype.itemsize < MIN_BYTES:
            continue
        start, end = ranges[name]
        slots = free.setdefault((size, dtype), [])
        slot = next((s for s in slots if s[0] < start), None)
        if slot is None:
            slots.append([end, name])
            continue
        slot[0] = end
        shared[name] = slot[1]
    return shared
