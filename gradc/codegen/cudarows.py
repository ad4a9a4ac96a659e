"""A ``scan`` whose rows are independent, as one CUDA kernel for the whole loop.

A scan lowered as a host loop launches the kernels of its body at every step: with
numba.cuda's dispatcher (tens of µs a launch) a CRF's 128 steps forward and back cost
milliseconds in launches alone.  Most scans that reach a GPU are batched, though: every
carry has a leading batch axis, every step of the body computes row ``b`` of its results
from row ``b`` of its operands (a ``vmap`` of a sequence model, a CRF over a batch of
sequences).  Such a scan needs no grid-wide synchronisation between steps, only a
block-wide one: this module lowers it as **one kernel**, a block per row (grid-stride
over rows), the loop over the steps inside the kernel, the body's fused regions as
*stages* separated by ``cuda.syncthreads()``:

* a map stage: the block's threads stride over the row's elements of the domain;
* a reduction stage (axes other than the batch axis): a thread per kept element of the
  row, the reduced elements in order (the per-element code is the fusion pass's, emitted
  by the same ``_Emitter`` as every other kernel);
* an elementwise stage whose results the next stage reduces over the same domain is
  merged into it: the reduction computes the elements as it sums them (and writes them
  where they are needed too: the CRF's ``exp`` scores, stacked for reverse mode),
  one barrier and a round trip through memory fewer;
* the scan's carries live in buffers of their own (copied in once, updated in place at
  the end of each step); stacked results are written straight into their ``(T, B, ...)``
  arrays when a stage computes them, else copied there;
* the block's row of each carry and of each of the step's temporaries lives in shared
  memory while it fits (a carry's row read in before the row's first step and written
  back after its last): every stage reads what an earlier one wrote, and a read from
  global memory after a barrier waits for L2 (hundreds of cycles, at each of a few
  hundred steps), one from shared memory tens;
* an *accumulating* carry ``c' = c + sum over the batch of e`` (what reverse mode makes
  of a parameter shared by all rows: the CRF's transition matrix) cannot be updated by
  one block; each block adds its rows' terms into a ``(B, ...)`` array of partial sums
  instead, and after the kernel one reduction over the batch and the body's own update
  equation give the carry's final value (the sum is linear, so the order does not
  matter mathematically; the result is deterministic);
* a stacked result that sums over the batch (a per-step loss ``sum(h ** 2)``, or what
  reverse mode makes of a per-step operand every row reads) is written as the rows'
  partial sums into a ``(T, B, ...)`` array and summed over the batch after the kernel;
  stacked operands are only read, so any block may read any element of them (a
  per-step vector every row shares);
* a rank-0 value of per-step scalars and constants alone (a step size ``2 * dt``) is
  the same for every row: every thread computes it into a local (no barrier), and if it
  is stacked, the block on row 0 writes it;
* stacked results computed from batch sums, per-step operands and constants alone (a
  per-step ``mean``, ``log`` of a sum) are an *epilogue*: the kernel writes the sums'
  per-row partials, and after it the epilogue's equations, batched over the steps by
  the vmap pass, run once on the ``(T, ...)`` sums.

Whether a scan qualifies is decided while its kernel is written: every read of a row
value must be at the block's row (the first index ``i0``), every result must keep the
batch axis first.  When anything fails, ``rows`` returns False having changed nothing,
and ``cudagen`` lowers the scan as a host loop.
"""
from __future__ import annotations

import os
import re
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from ..errors import GradcError
from ..ir import Graph, Lit, Var, make_eqn, producers_and_readers
from ..passes.fuse import ELEMENTWISE, REDUCTIONS
from ..passes.indexmap import Affine
from . import cudagen as cg
from . import loops
from .pysource import dtype_expr, scalar_literal, text_of_body

ROW_BLOCKS = 65535       # at most this many blocks (each strides over rows)
ROW_SHARED = 16 * 1024   # a row of a carry or temporary up to this size: in shared memory
RESERVE = 4 * 1024       # ... leaving this much for the reductions' per-thread partials
PAD = 4                  # elements added to each row of a per-row accumulator (_padded)
WARP = cg.WARP
REGISTERS = 65536        # registers of an SM (every GPU since compute capability 5.0)


class _Merge(NamedTuple):
    """What a reduction stage tells a later stage joining its loop (``_merged``,
    ``_merge_pointwise``): how many of its lines every thread runs before its share,
    how a reduction reads each result at the element's own index (text, local), the
    index of the kept element (``_kk``, or ``_k``), each result's
    kernel names (and its reshapes') -> (the local holding it, the row's shape), the
    indentation of the lines writing the results, and which of those results are
    elementwise stages' locals, set in those lines only (not for a reduction after)."""
    prefix: int
    binds: list
    kept: str
    results: dict
    indent: str
    held: frozenset = frozenset()
    sub: tuple = ()      # (the kept element's subscript, and the kept axes' extents:
    dims: tuple = ()     # their product, the kept elements)
    tail: int = 0        # (the lines writing the results, last: a reduction joining the
    #                      loop runs before them; 0 once an elementwise stage joined)


class NotPlaced(Exception):
    """A result of the scan cannot be written into a view of the array that an equation
    after it places it in (``cudagen._destinations``): lowered again without views."""


class Undoubled(Exception):
    """No barrier went away for a double-buffered carry row (``_Rows._double``), or a
    line outside the steps names one of its halves: lowered again without it."""


class NotRows(Exception):
    """The scan's rows are not independent (or the body has an equation this lowering
    does not handle): lower it as a host loop."""


class _RowEmitter(cg._Emitter):
    """Per-element code of a stage: row values must be read at the block's row;
    stacked arrays (a scan's xs and ys) are indexed by the step first."""

    def __init__(self, ctx, names, producer, comments, rows, stepped, shared, mirrors,
                 prefetched=None, single=False):
        super().__init__(ctx, names, producer, comments)
        self.rows, self.stepped, self.shared, self.mirrors = rows, stepped, shared, mirrors
        # (one row: an index into the batch axis, of length 1, may have become 0)
        self.at_row = {("i0", 1, 0), (None, 0, 0)} if single else {("i0", 1, 0)}
        self.prefetched = prefetched or {}
        self.registers = {}   # kernel array -> (local, its row's shape): read at the stage's
        self.own = None       # own element (``own``: its terms) as that local (_merge_pointwise)

    def compute(self, eqn, idx, depth):
        if eqn.prim.name == "gather":
            return self._gather(eqn, idx, depth)
        if eqn.prim.name == "scatter_add":
            return self._scatter(eqn, idx, depth)
        return super().compute(eqn, idx, depth)

    def _gather(self, eqn, idx, depth):
        """``x[spec]`` at ``idx``: each index array's value at its element of the window
        read into a local, NumPy's negative indices wrapped, a value out of bounds
        flagged in the program's error cell (``Checks``, as the gather kernel does) and
        read at 0 instead; ``x`` read at those positions.  An index array that is an
        ``arange`` along one axis (the vmap pass's over the examples) is that axis's
        index itself: the block's row, for a batched gather."""
        from .indexing import index_map
        x, *arrays = eqn.inputs
        _, positions = index_map(tuple(x.shape), tuple(eqn.params["spec"]),
                                 [tuple(a.shape) for a in arrays])
        sub = []
        for p in positions:
            if p[0] == "slice":
                sub.append(idx[p[1]].map(p[3], p[2]))
                continue
            if p[0] == "int":
                sub.append(Affine.const(p[1]))
                continue
            _, k, axes, n = p
            a = arrays[k]
            at = tuple(Affine.const(0) if d is None else idx[d] for d in axes)
            along = _arange_axis(a)
            if along is not None and int(np.prod(a.shape)) <= n:
                sub.append(at[along] if along >= 0 else Affine.const(0))
                continue
            local = self._index(eqn, a, at, n, depth)
            sub.append(Affine(local, 1, 0, 0, n - 1))
        return self.value(x, tuple(sub), depth)

    def _index(self, eqn, array, at, n, depth) -> str:
        """A local holding index array ``array``'s value at ``at``, NumPy's negative
        indices wrapped, one out of ``[-n, n)`` flagged in the error cell and 0."""
        from .indexing import bounds_message
        value = self.value(array, at, depth)
        local = self.ctx.temp()
        self.ctx.checks.append(bounds_message(eqn, n))
        self.emit(depth, f"{local} = numba.int64({value})")
        self.emit(depth, f"if {local} < 0:")
        self.emit(depth + 1, f"{local} += {n}")
        self.emit(depth, f"if {local} < 0 or {local} >= {n}:")
        self.emit(depth + 1, cg._flag(len(self.ctx.checks)))
        self.emit(depth + 1, f"{local} = 0")
        return local

    def _scatter(self, eqn, idx, depth):
        """``scatter_add`` of one element of each index array per example (what reverse
        mode makes of a gather by the step's carry, ``_one_hot``) at output element
        ``idx``: the value at the window element that the examples' ``arange`` and the
        sliced axes pin, where the other index arrays' values (checked as a gather's)
        are this element's positions, else 0."""
        v, *arrays = eqn.inputs
        plan = _one_hot(eqn)
        window = [None] * len(plan["window"])
        for a, d in plan["pinned"].items():
            window[a] = idx[d]
        for a in range(len(window)):
            if window[a] is None:
                window[a] = Affine.const(0)
        tests = []
        for p in plan["positions"]:
            if p[0] == "slice":                     # (a window of the axis: inside it)
                _, a, start, n, d = p
                window[a] = idx[d].map(1, -start).clamp(0, n - 1)
                if start > 0:
                    tests.append(f"{idx[d]} >= {start}")
                if start + n < int(eqn.params["shape"][d]):
                    tests.append(f"{idx[d]} < {start + n}")
            elif p[0] == "int":
                tests.append(f"{idx[p[2]]} == {p[1]}")
            elif p[0] == "array":
                _, k, axes, n, d = p
                at = tuple(Affine.const(0) if a is None else window[a] for a in axes)
                tests.append(f"{idx[d]} == {self._index(eqn, arrays[k], at, n, depth)}")
        zero = scalar_literal(0, eqn.outputs[0].dtype)
        if not tests:
            return self.value(v, tuple(window), depth)
        return self.window(v, tuple(window), " and ".join(tests), zero, depth, False)

    def read(self, array, idx):
        if array in self.rows:
            first = idx[0] if idx else None
            if not (isinstance(first, Affine) and first.key() in self.at_row):
                raise NotRows(f"{array} read away from the block's row")
        if array in self.registers:
            local, dims = self.registers[array]
            if len(idx) == len(dims) + 1 and _terms(idx[1:], dims, self.own[1]) == \
                    self.own[0]:
                return local
        if array in self.shared:             # (the block's row of it, in shared memory)
            return f"{array}[{_linear([str(c) for c in idx[1:]], self.shared[array])}]"
        if array in self.mirrors:            # (a stacked result's copy there)
            mirror, dims = self.mirrors[array]
            return f"{mirror}[{_linear([str(c) for c in idx[1:]], dims)}]"
        first = idx[0] if idx else None
        if array in self.prefetched and isinstance(first, Affine) and \
                first.key() in self.at_row:     # (the step's row of an xs, prefetched)
            buf, dims, size = self.prefetched[array]
            return f"{buf}[_pb * {size} + {_linear([str(c) for c in idx[1:]], dims)}]"
        sub = self.subscript(idx)
        return f"{array}[_t, {sub}]" if array in self.stepped else f"{array}[{sub}]"


def row_run(ctx, eqns, text_of, outputs) -> bool:
    """Lower a run of equations (``cudagen._row_run``: fused equations over ``(B, ...)``
    domains, reductions over other axes than the first, reshapes) as one kernel with a
    block per row, their fused regions as stages, if every value the run computes is
    read at the block's row (a softmax's maximum, its sum of exponentials, the
    normalised row: one launch instead of one per reduction).  ``outputs``: the values
    read after the run.  It is the one-kernel lowering of a scan of one step, without
    carries, the values read from outside the run its constants and ``outputs`` its
    stacked results.  False (``ctx`` unchanged) when the rows are not independent."""
    consts = _operands(eqns)
    if not outputs:
        return False
    body = Graph(tuple(consts), tuple(eqns), tuple(outputs))
    return _one_step(ctx, consts, body, outputs, text_of,
                     batch=int(eqns[0].params["domain"][0]))


def _operands(eqns) -> list:
    """The values a run of equations reads from outside it, in order of first use."""
    made = {v for e in eqns for v in e.outputs}
    return list(dict.fromkeys(v for e in eqns for v in e.inputs
                              if isinstance(v, Var) and v not in made))


def _one_step(ctx, ins, body, outputs, text_of, batch, one=False) -> bool:
    """``body`` (its inputs ``ins``' values) lowered by ``rows`` as a scan of one step
    without carries (``row_run``, ``one_run``): its results stacked over that step,
    then ``outputs`` bound to them reshaped.  False if ``rows`` refuses it."""
    stacked = [Var((1,) + tuple(r.shape), r.dtype) for r in body.outputs]
    for w in stacked:
        ctx.names[w] = ctx.temp()
    eqn = SimpleNamespace(inputs=tuple(ins), outputs=tuple(stacked), params={
        "n_consts": len(ins), "n_carry": 0, "length": 1, "reverse": False, "body": body})
    if not rows(ctx, eqn, body, text_of, batch=batch, one=one):
        return False
    _bind_reshaped(ctx, outputs, stacked)
    return True


def _bind_reshaped(ctx, values, results) -> None:
    """Each of ``values`` as a reshape of the kernel's result of the same index (a row
    kernel's results have a batch or step axis more)."""
    for v, r in zip(values, results):
        ctx.lines.append(f"{ctx.names[v]} = _d.reshape({ctx.names[r]}, "
                         f"{tuple(v.shape) or (1,)!r})")
        ctx.place[v] = "dev"
        if r in ctx.fresh:
            ctx.fresh.add(v)


def rows(ctx, eqn, body: Graph, text_of, batch=None, one=False) -> bool:
    """Lower ``scan`` equation ``eqn`` (``body``: its body, optimised for the target) as
    one kernel if its rows are independent; False (``ctx`` unchanged but for a comment
    when the lowering failed unexpectedly) if not.  ``batch``: the number of rows of a
    scan without carries (``row_run``'s); ``one``: ``eqn`` is ``one_row``'s scan."""
    snapshot = _snapshot(ctx)
    note = None
    # (GRADC_CUDA_ROW_DOUBLE=0: no double-buffered carry rows, for a GPU session's A/B)
    places, double = True, os.environ.get("GRADC_CUDA_ROW_DOUBLE", "1").strip() != "0"
    while True:
        try:
            _Rows(ctx, eqn, body, text_of, batch, places, double, one).lower()
            return True
        except NotPlaced:             # (again, results in arrays of their own)
            _restore(ctx, snapshot)
            if not places:
                break
            places = False
            continue
        except Undoubled:             # (again, without rows double-buffered for nothing)
            _restore(ctx, snapshot)
            double = False
            continue
        except NotRows:
            pass
        except Exception as e:   # (a case this lowering misjudged: the host loop is correct)
            first = str(e).splitlines()[0] if str(e) else ""
            note = (f"# the one-kernel lowering of this scan failed ({type(e).__name__}: "
                    f"{first}): the host loop instead") if batch is None else None
        break
    _restore(ctx, snapshot)
    if note:
        ctx.lines.append(note)
    return False


ONE_ROW_WORK = 1 << 18    # a one-row scan's step of at most this many elements: one block
#                           (GRADC_CUDA_ONE_ROW_WORK in the environment, for a GPU's A/B)
ONE_BLOCK_THREADS = 512   # ... of this many threads (GRADC_CUDA_ROW_THREADS overrides it)


def one_row(ctx, eqn) -> bool:
    """Lower ``scan`` equation ``eqn``, whose rows are not independent (one sequence:
    carries without a batch axis, a batch of one, or rows that a step mixes), as one
    kernel of a single block if its step is small: no value or product of more than
    ``ONE_ROW_WORK`` elements (``GRADC_CUDA_ONE_ROW_WORK`` in the environment; 0:
    never).  Its body is batched over a new leading axis of one row (``batch_graph``),
    and ``rows`` lowers that scan, the whole step being its row.  One block uses one
    multiprocessor, but the host loop launches a kernel for each fused region at each
    step, tens of µs each: an RNN over one sequence of a thousand steps spends tens of
    milliseconds in launches alone.  False (``ctx`` unchanged) if it does not qualify."""
    from ..passes.batching import batch_graph
    from .compile import optimise
    p = eqn.params
    nc, nk, body = p["n_consts"], p["n_carry"], p["body"]
    if p["length"] < 1 or not _small_step(body):
        return False
    try:
        lifted_body = batch_graph(body, [False] * nc + [True] * (len(body.inputs) - nc), 1)
    except GradcError:         # (a body the batching pass refuses: the host loop runs it)
        return False
    optimised = optimise(lifted_body, "cuda")
    if any(e.prim.name in ("scan", "while_loop", "cond") for e in optimised.eqns):
        return False
    return _lower_lifted(ctx, eqn, eqn.replace(params={**p, "body": lifted_body}), nc, nk,
                         optimised)


def one_row_while(ctx, eqn) -> bool:
    """``while_loop`` equation ``eqn`` as one kernel of a single block, if its
    condition and body are small (as ``one_row``'s step): both batched over a new
    leading axis of one row, the condition's stages first, then, after a barrier, the
    loop left when the condition is false, then the body's stages.  The host loop
    launches the body's kernels at each trip and copies the condition to the host
    (a fixed point's iterations, a solver's); this waits for nothing until the loop is
    done.  False (``ctx`` unchanged) if it does not qualify."""
    from ..passes.batching import batch_graph
    from .compile import optimise
    p = eqn.params
    n_cond, n_body = p["n_cond"], p["n_body"]
    cond_g, body_g = p["branches"]
    nc = n_cond + n_body
    nk = len(eqn.inputs) - nc
    if not nk or not _small_step(cond_g) or \
            not _small_step(body_g):
        return False
    try:
        oc = optimise(batch_graph(cond_g, [False] * n_cond + [True] * nk, 1), "cuda")
        ob = optimise(batch_graph(body_g, [False] * n_body + [True] * nk, 1), "cuda")
    except GradcError:
        return False
    if any(e.prim.name in ("scan", "while_loop", "cond") for e in oc.eqns + ob.eqns):
        return False
    # one graph on the body's carries: the condition's equations, then the body's
    carries = ob.inputs[n_body:]
    rename = dict(zip(oc.inputs[n_cond:], carries))
    test = oc.outputs[0]
    if not isinstance(test, Var) or test in oc.inputs[:n_cond]:
        return False
    tests = []
    if test in rename:          # (a flag carried: ``while not done``, its copy the test)
        flag, test = rename[test], Var(tuple(test.shape), test.dtype)
        tests.append(_copy_stage(flag, test)[0])
    graph = Graph(tuple(oc.inputs[:n_cond]) + tuple(ob.inputs),
                  tuple(q.replace(inputs=tuple(rename.get(v, v) if isinstance(v, Var) else v
                                               for v in q.inputs)) for q in oc.eqns)
                  + tuple(tests) + tuple(ob.eqns), tuple(ob.outputs))
    lifted = SimpleNamespace(inputs=eqn.inputs, outputs=eqn.outputs, params={
        "n_consts": nc, "n_carry": nk, "length": 1, "reverse": False, "body": graph,
        "test": test})
    return _lower_lifted(ctx, eqn, lifted, nc, nk, graph)


ONE_BLOCK_TAPE = ("# the while_loop's tape as one kernel of one block: the trips again, "
                  "each one's carries stacked (its body batched over a row of one)")
ONE_BLOCK_SWEEP = ("# reverse mode through the while_loop as one kernel of one block: "
                   "its body's VJP from the last trip to the first, along the tape")
TAPE_STEPS = 2            # the stand-in for a tape's count in its Vars' shapes (one of
#                           two or more: the kernels' prefetch is written as for a loop)


def one_row_while_adjoint(ctx, eqn) -> bool:
    """Reverse mode through a ``while_loop`` (``while_adjoint``: the count of trips, the
    body, the body's VJP) as two kernels of one block each, if both steps are small (as
    ``one_row``'s): the loop again from its first carries for that many trips, each
    trip's carries (those the VJP reads) stacked on a tape, an ``(n, 1, ...)`` array
    each; then the VJP from the last trip to the first along the tape, the consts'
    cotangents summed as accumulators.  The count is known on the host before the first
    kernel (the host loop's ``range`` needs it too) and is each kernel's argument
    ``_n``, so the kernels are compiled once for every count.  The host loop launches
    the body's kernels at each trip forward, and the VJP's and two adds at each trip
    back: a fixed point's two hundred trips are about eight hundred launches.  Not with
    ``checkpoint`` (the tape would hold every trip, which the user asked not to).
    False (``ctx`` unchanged) if it does not qualify."""
    from ..passes.batching import batch_graph
    from ..prims.elementwise import add_p
    from ..prims.loops import _float_carries
    from ..passes.simplify import dce
    from ..prims.shape import broadcast_p
    from .compile import optimise
    p = eqn.params
    body, step = p["branches"]
    nb, lin = p["n_body"], p["lin"]
    nk = len(body.inputs) - nb
    # (GRADC_CUDA_WHILE_TAPE=0: the host loop, for a GPU session's A/B)
    if p["checkpoint"] is not None or not nk or not eqn.outputs or \
            os.environ.get("GRADC_CUDA_WHILE_TAPE", "1").strip() == "0":
        return False
    floats, n_lin = _float_carries(body, nb), sum(lin)
    consts, carries, cts = step.inputs[:nb], step.inputs[nb:nb + nk], step.inputs[nb + nk:]
    # the backward step: (consts, cotangents of the float carries, the carries before
    # the trip) -> (each accumulator plus the trip's term, the float carries' cotangents
    # before it); the other carries' cotangents zeros, the new carries left out
    zero = {v: Lit(np.zeros(tuple(v.shape), v.dtype)) for v, f in zip(cts, floats) if not f}

    def sub(v):
        return zero.get(v, v) if isinstance(v, Var) else v
    terms = [sub(v) for v in step.outputs[len(body.outputs):]]
    eqns = list(dce(Graph(step.inputs, tuple(e.replace(inputs=tuple(sub(v) for v in e.inputs))
                                             for e in step.eqns), tuple(terms))).eqns)
    live = {v for e in eqns for v in e.inputs if isinstance(v, Var)} | \
        {v for v in terms if isinstance(v, Var)}
    # (a carry the body hands back unchanged is its first value at every trip: read by
    # the sweep as a const, not stacked)
    fixed = {j for j in range(nk) if body.outputs[j] is body.inputs[nb + j]}
    taped = [j for j in range(nk) if carries[j] in live and j not in fixed]
    held = [j for j in range(nk) if carries[j] in live and j in fixed]
    accs = [Var(tuple(v.shape), v.dtype) for v, w in zip(consts, lin) if w]
    summed = []
    for a, t in zip(accs, terms[:n_lin]):
        summed.append(Var(tuple(a.shape), a.dtype))
        eqns.append(make_eqn(add_p, (a, t), (summed[-1],), {}))
    ct_in = [v for v, f in zip(cts, floats) if f]
    back = Graph(tuple(consts) + tuple(carries[j] for j in held) + tuple(accs) + tuple(ct_in)
                 + tuple(carries[j] for j in taped), tuple(eqns),
                 tuple(summed) + tuple(terms[n_lin:]))
    nbr = nb + len(held)                     # (the sweep's consts)
    forward = Graph(body.inputs, body.eqns,
                    tuple(body.outputs) + tuple(body.inputs[nb + j] for j in taped))
    if not _small_step(forward) or not _small_step(back):
        return False
    nr = len(accs) + len(ct_in)
    try:
        lifted = [batch_graph(forward, [False] * nb + [True] * nk, 1),
                  batch_graph(back, [False] * nbr + [True] * (len(back.inputs) - nbr), 1)]
    except GradcError:
        return False
    optimised = [optimise(g, "cuda") for g in lifted]
    if any(e.prim.name in ("scan", "while_loop", "cond") for g in optimised for e in g.eqns):
        return False
    snapshot = _snapshot(ctx)
    steps = ctx.on_host_value(eqn.inputs[nb + nk])
    finals = [Var(tuple(v.shape), v.dtype) for v in body.inputs[nb:]]
    tape = [Var((TAPE_STEPS, 1) + tuple(carries[j].shape), carries[j].dtype) for j in taped]
    for v in finals + tape:
        ctx.names[v] = ctx.temp()
    scan = SimpleNamespace(inputs=tuple(eqn.inputs[:nb + nk]), outputs=tuple(finals + tape),
                           params={"n_consts": nb, "n_carry": nk, "length": TAPE_STEPS,
                                   "reverse": False, "steps": steps, "body": lifted[0],
                                   "comment": ONE_BLOCK_TAPE})
    if not _lower_lifted(ctx, scan, scan, nb, nk, optimised[0]):
        _restore(ctx, snapshot)
        return False
    # (the accumulators' first values: zeros, a deferred fill that _lower_lifted makes
    # the kernel's literal, or, too large for one, leaves unfilled at the row's shape)
    zeros = []
    for a in accs:
        zeros.append(Var(tuple(a.shape), a.dtype))
        ctx.names[zeros[-1]] = ctx.temp()
        fill = make_eqn(broadcast_p, (Lit.of(0, a.dtype),), (zeros[-1],),
                        {"shape": tuple(a.shape), "dims": ()})
        ctx.deferred[zeros[-1]] = (fill, [f"let {ctx.names[zeros[-1]]} = zeros "
                                          f"{tuple(a.shape)!r} (a cotangent's sum)"])
    scan = SimpleNamespace(
        inputs=tuple(eqn.inputs[:nb]) + tuple(eqn.inputs[nb + j] for j in held) + tuple(zeros)
        + tuple(eqn.inputs[nb + nk + 1:]) + tuple(tape), outputs=tuple(eqn.outputs),
        params={"n_consts": nbr, "n_carry": nr, "length": TAPE_STEPS, "reverse": True,
                "steps": steps, "body": lifted[1], "comment": ONE_BLOCK_SWEEP})
    if not _lower_lifted(ctx, scan, scan, nbr, nr, optimised[1]):
        _restore(ctx, snapshot)
        return False
    for z in zeros:                          # (lowered in their place, if at all)
        ctx.deferred.pop(z, None)
    return True


def _lower_lifted(ctx, eqn, lifted, nc, nk, optimised) -> bool:
    """``one_row``'s and ``one_row_while``'s lowering of ``lifted`` (``eqn`` with its
    body batched over a row of one; ``optimised``: that body for the target): the
    carries and stacked operands reshaped to a row of one, the loop's kernel, its
    results reshaped back.  (With a count known when the program runs,
    ``lifted.params["steps"]``, the stacked operands and results are a row's already:
    ``one_row_while_adjoint``'s tape.)"""
    snapshot = _snapshot(ctx)
    steps = lifted.params.get("steps")
    ins = []
    for k, v in enumerate(eqn.inputs):
        if k < nc:
            ins.append(ctx.fill_literal(v) or v)
            continue
        if k >= nc + nk and steps is not None:
            ins.append(v)
            continue
        shape = (1,) + tuple(v.shape) if k < nc + nk else \
            (int(v.shape[0]), 1) + tuple(v.shape[1:])
        if k < nc + nk and isinstance(v, Var) and v in ctx.deferred and \
                ctx.fill_literal(v) is None and ctx.zero_fill(v):
            # (zeros too large for a literal, a carry's: deferred still, at the row's
            # shape, so that an accumulator starts from them without a fill kernel)
            fill, _ = ctx.deferred[v]
            w = Var(shape, v.dtype)
            ctx.names[w] = ctx.temp()
            ctx.deferred[w] = (fill.replace(outputs=(w,), params={**fill.params,
                                                                   "shape": shape}),
                               [f"{ctx.names[w]} = zeros {shape!r} (a row of "
                                f"{ctx.names[v]})"])
            ins.append(w)
            continue
        v = ctx.fill_literal(v) or v      # (a fill: the kernel's constant, no launch)
        if isinstance(v, Lit):
            ins.append(Lit(np.reshape(v.value, shape)))
            continue
        viewed = _lifted_view(ctx, v, shape, k < nc + nk, eqn, lifted, k)
        if viewed is not None:            # (a slice or transpose of an array: read in
            ins.append(viewed)            # place through strides, not copied)
            continue
        ctx.materialize(v)
        w = Var(shape, v.dtype)
        ctx.names[w] = ctx.temp()
        ctx.place[w] = "dev"
        value = ctx.names[v] if ctx.place[v] == "dev" else \
            f"_d.dev(np.asarray({ctx.names[v]}, {dtype_expr(v.dtype)}))"
        ctx.lines.append(f"{ctx.names[w]} = _d.reshape({value}, {shape!r})")
        if v in ctx.dying:                # (the same storage: nothing reads it after)
            ctx.dying = ctx.dying | {w}
        ins.append(w)
    outs = [Var((1,) + tuple(v.shape), v.dtype) if k < nk else v if steps is not None else
            Var((int(v.shape[0]), 1) + tuple(v.shape[1:]), v.dtype)
            for k, v in enumerate(eqn.outputs)]
    for w in outs:
        ctx.names[w] = ctx.temp()
    lifted = SimpleNamespace(inputs=tuple(ins), outputs=tuple(outs), params=lifted.params)
    printed = cg._register_names(ctx, optimised)
    if not rows(ctx, lifted, optimised, printed, one=True):
        _restore(ctx, snapshot)
        return False
    _bind_reshaped(ctx, eqn.outputs[:nk] if steps is not None else eqn.outputs, outs)
    return True


ONE_RUN_WORK = 1 << 14    # a run of equations outside loops whose values have at most
#                           this many elements: one block (GRADC_CUDA_ONE_RUN_WORK)


def one_run_work() -> int:
    """``ONE_RUN_WORK``, or ``GRADC_CUDA_ONE_RUN_WORK`` from the environment (0: off)."""
    limit = os.environ.get("GRADC_CUDA_ONE_RUN_WORK", "").strip()
    return int(limit) if limit.isdigit() else ONE_RUN_WORK


def one_run(ctx, eqns, outputs) -> bool:
    """Lower a run of small equations (``cudagen._one_run``: fused regions, contractions
    and reshapes, none with a value of more than ``one_run_work()`` elements) as one
    kernel of a single block: a logsumexp's maximum, its sum of exponentials and its
    log, then the gradient's scaling, one launch instead of four.  The run's regions,
    their bodies inlined, are batched over a new leading axis of one row
    (``batch_graph``, as ``one_row`` does for a step), optimised, and lowered by
    ``rows`` as a scan of one step without carries, its stages separated by barriers.
    Its operands are read whole (rank-0 values on the host as kernel arguments),
    ``outputs`` (the values read after the run) are its results.  False (``ctx``
    unchanged) if it does not qualify."""
    from ..passes.batching import batch_graph
    from .compile import optimise
    inlined = _inlined(eqns)
    if inlined is None or not outputs:
        return False
    consts = _operands(eqns)
    # (a rank-0 value on the host is a kernel argument, the same for the row of one)
    batched = [not (v.ndim == 0 and ctx.place.get(v) == "host") for v in consts]
    try:
        lifted = batch_graph(Graph(tuple(consts), tuple(inlined), tuple(outputs)),
                             batched, 1)
    except GradcError:         # (an equation the batching pass refuses: one by one)
        return False
    optimised = optimise(lifted, "cuda")
    if any(e.prim.name in ("scan", "while_loop", "cond") for e in optimised.eqns):
        return False
    snapshot = _snapshot(ctx)
    ins = []
    for v, b in zip(consts, batched):
        if not b:
            ins.append(v)
            continue
        ctx.materialize(v)
        w = Var((1,) + tuple(v.shape), v.dtype)
        ctx.names[w], ctx.place[w] = ctx.temp(), "dev"
        ctx.lines.append(f"{ctx.names[w]} = _d.reshape({ctx.on_device(v)}, {w.shape!r})")
        ins.append(w)
    printed = cg._register_names(ctx, optimised)
    # (not if it launches more kernels than the run's equations would, one each: an
    # epilogue of rows the kernel leaves to kernels of its own)
    if not _one_step(ctx, ins, optimised, outputs, printed, batch=1, one=True) or \
            len(ctx.kernels) - snapshot[0] > kernel_count(eqns):
        _restore(ctx, snapshot)
        return False
    return True


def kernel_count(eqns) -> int:
    """The kernels ``eqns`` launch when lowered one by one (``one_run``'s runs)."""
    return sum(e.prim.name in ("fused", "einsum") for e in eqns)


def _lifted_view(ctx, v, shape, carry, eqn, lifted, k):
    """Operand ``k`` of loop ``eqn``, ``v``, as a strided view of ``shape`` (``v``'s
    with the row axis of one: first for a carry, after the step axis for a stacked
    operand; a stride of 0) of the array it rearranges, if ``v`` is a deferred view
    (``cudagen._deferrable_view``: ``U[0]`` as the initial carry, ``U[1:]`` as the
    steps) that the loop's body does not hand back; else None."""
    found = ctx.deferred.get(v) if isinstance(v, Var) else None
    layout = found and cg._view_layout(found[0])
    body = lifted.params["body"]
    if not layout or body.inputs[k] in body.outputs:
        return None
    offset, _, strides = layout
    strides = (0,) + tuple(strides) if carry else \
        (strides[0], 0) + tuple(strides[1:])
    w = Var(shape, v.dtype)
    ctx.names[w], ctx.place[w] = ctx.temp(), "dev"
    ctx.lines.append(f"# {ctx.names[v]}: a view of {ctx.names[found[0].inputs[0]]} "
                     "(the kernel reads it through strides)")
    ctx.lines.append(f"{ctx.names[w]} = _d.view({ctx.names[found[0].inputs[0]]}, "
                     f"{offset}, {tuple(shape)!r}, {strides!r})")
    ctx.views[w] = ctx.names[w]
    return w


def _small_step(body: Graph) -> bool:
    """Whether every value of the step, and every product of its contractions, has at
    most ``ONE_ROW_WORK`` elements (``GRADC_CUDA_ONE_ROW_WORK``; 0: none is small)."""
    limit = os.environ.get("GRADC_CUDA_ONE_ROW_WORK", "").strip()
    limit = int(limit) if limit.isdigit() else ONE_ROW_WORK
    # (an added scatter and the add: the window's elements, in place)
    added = {}
    for e, update in _added_scatters(body).items():
        added[e] = added[update] = max(added.get(update, 0), int(np.prod(e.inputs[0].shape)))
    return bool(limit) and all(added.get(e, work_of(e)) <= limit for e in body.eqns)


def _in_place_scatters() -> bool:
    """Whether scatters added into a carry are added in place (``_scatter_stage``);
    ``GRADC_CUDA_ROW_SCATTER=0`` in the environment turns it off, for a GPU session's
    A/B (then a one-hot stage where it applies, else the host loop)."""
    return os.environ.get("GRADC_CUDA_ROW_SCATTER", "1").strip() != "0"


def _added_scatters(body: Graph) -> dict:
    """The ``scatter_add`` equations of scan body ``body`` whose result is only added
    into a carry that nothing else reads (``c' = c + scatter_add(...)``: reverse mode's
    gradient of a gather from a table, an embedding's), each -> the add: the rows add
    them in place (``_Rows._scatter_stage``), a step's work the window's, not the
    table's.  (What ``_Rows._accumulator`` then checks exactly.)"""
    if not _in_place_scatters():
        return {}
    producer, uses = producers_and_readers(body.eqns)
    inputs, found = set(body.inputs), {}
    for c_out in body.outputs:
        update = producer.get(c_out) if isinstance(c_out, Var) else None
        if update is None or c_out in uses:
            continue
        inner = [update] if update.prim.name == "add" else \
            update.params["body"].eqns if update.prim.name == "fused" else [None]
        if any(q is None or q.prim.name not in ("add", "reshape") for q in inner):
            continue
        if sum(v in inputs and len(uses[v]) == 1 for v in update.inputs) != 1:
            continue                         # (the carry, read by its update alone)
        for v in update.inputs:
            e = producer.get(v)
            if e is not None and e.prim.name == "scatter_add" and \
                    len(uses.get(v, [])) == 1 and v not in body.outputs and \
                    _scattered(e) is not None:
                found[e] = update
    return found


def work_of(eqn) -> int:
    """The elements of ``eqn``'s largest result, or of its product where it is an
    ``einsum`` (every index's extent multiplied)."""
    sizes = [int(np.prod(v.shape)) for v in eqn.outputs]
    if eqn.prim.name == "einsum":
        ins, _ = eqn.params["spec"].split("->")
        extent = {}
        for term, v in zip(ins.split(","), eqn.inputs):
            extent.update(zip(term, (int(d) for d in v.shape)))
        sizes.append(int(np.prod(list(extent.values()))))
    return max(sizes, default=0)


def _copy_stage(src, dst):
    """``(a stage writing dst = src, its one equation)``: a value a loop hands over as
    it is, computed by a stage of its own (a conversion to its own dtype)."""
    from ..prims.elementwise import convert_p
    copy = make_eqn(convert_p, [src], [dst], {"dtype": np.dtype(src.dtype)})
    return cg._fused_of_one(copy), copy


def _snapshot(ctx) -> tuple:
    return (len(ctx.kernels), len(ctx.lines), dict(ctx.consts), ctx.temps, set(ctx.fresh),
            dict(ctx.place), dict(ctx.copies), dict(ctx.host_globals), dict(ctx.deferred),
            dict(ctx.views), dict(ctx.placed), len(ctx.functions))


def _restore(ctx, snapshot) -> None:
    n_kernels, n_lines, consts, temps, fresh, place, copies, globs, deferred, views, \
        placed, n_functions = snapshot
    del ctx.kernels[n_kernels:]
    del ctx.lines[n_lines:]
    del ctx.functions[n_functions:]
    ctx.temps = temps
    for mine, saved in ((ctx.consts, consts), (ctx.fresh, fresh), (ctx.place, place),
                        (ctx.copies, copies), (ctx.host_globals, globs),
                        (ctx.deferred, deferred), (ctx.views, views),
                        (ctx.placed, placed)):
        mine.clear()
        mine.update(saved)


class _Rows:
    def __init__(self, ctx, eqn, body, text_of, batch=None, places=True, double=True,
                 one=False):
        self.batch, self.one = batch, one
        self.double = double           # carry rows may be double buffered (_double)
        self.halved = False            # ... and a barrier went away for one
        self.halving = set()           # new carry values that need a half of their own
        self.places = places           # results may go into views of a later array
        self.merge_target = None       # the last reduction stage's _Merge (see _stage)
        self.swaps = []                # double-buffered carry rows (see _double)
        # contractions as fused sums of products (a stage like any other)
        self.comments_of = {}
        # (a gather's index arrays are checked: ``_RowEmitter._gather``, ``_leave``)
        self.checked = any(e.prim.name in ("gather", "scatter_add") for e in body.eqns)
        eqns = []
        added = _added_scatters(body)     # (added in place, atomically: _scatter_stage)
        for e, text in zip(body.eqns, text_of):
            fused = _einsum_as_fused(e) if e.prim.name == "einsum" else \
                _gather_as_fused(e) if e.prim.name == "gather" else \
                _scatter_as_fused(e) if e.prim.name == "scatter_add" and \
                e not in added else None
            if fused is not None:
                line = text[0].strip().removeprefix("let ")
                self.comments_of[fused] = {q: [f"{line}   ({q.prim.name})"]
                                           for q in fused.params["body"].eqns}
                e = fused
            eqns.append(e)
        text_of = list(text_of)
        # (a carry's new value that is another carry's old one, ``z_prev = z``, or a
        # reshape of a carry's old one: a copy stage at the end of the step, which reads
        # the old value before the other carry's new one replaces it)
        nc, nk = eqn.params["n_consts"], eqn.params["n_carry"]
        carries, outputs = body.inputs[nc:nc + nk], list(body.outputs)
        made = {v: e for e in eqns for v in e.outputs}

        def viewed(v):                       # (what v is a reshape of, if anything)
            while v in made and _reshape_source(made[v]) is not None:
                v = _reshape_source(made[v])
            return v
        for j in range(nk):
            o = outputs[j]
            if isinstance(o, Var) and (o in carries and o is not carries[j] or
                                       o not in carries and viewed(o) in carries):
                outputs[j] = Var(tuple(o.shape), o.dtype)
                ctx.names[outputs[j]] = f"{ctx.names[o]}_c{j}"
                stage, copy = _copy_stage(o, outputs[j])
                eqns.append(stage)
                line = f"{ctx.names[outputs[j]]} = {ctx.names[o]}   (a carry's old value " \
                       "as another's new one)" if o in carries else \
                    f"{ctx.names[outputs[j]]} = {ctx.names[o]}   (a view of a carry's " \
                    "old value as a carry's new one)"
                text_of.append([line])
                self.comments_of[eqns[-1]] = {copy: [line]}
            elif isinstance(o, Lit) and o.shape == carries[j].shape:
                # (a constant new value: reverse mode's cotangent of a carry the step
                # overwrites, a residual the condition reads; a stage filling it)
                outputs[j] = Var(tuple(o.shape), o.dtype)
                ctx.names[outputs[j]] = f"{ctx.names[carries[j]]}_c{j}"
                stage, copy = _copy_stage(o, outputs[j])
                eqns.append(stage)
                line = f"{ctx.names[outputs[j]]} = {o!r}   (a constant as a " \
                       "carry's new value)"
                text_of.append([line])
                self.comments_of[eqns[-1]] = {copy: [line]}
        eqns, text_of = _merge_into_reductions(eqns, text_of, self.comments_of)
        body = body.replace(eqns=tuple(eqns), outputs=tuple(outputs))
        self.ctx, self.eqn, self.body, self.text_of = ctx, eqn, body, text_of
        p = eqn.params
        self.n_consts, self.n_carry, self.length = p["n_consts"], p["n_carry"], p["length"]
        self.test = p.get("test")          # (a while_loop's condition: one_row_while)
        # (a count known when the program runs: the host's expression for it, the
        # kernel's parameter ``_n``; ``self.length`` only stands in for it in the Vars'
        # shapes: one_row_while_adjoint)
        self.steps = p.get("steps")
        if self.steps is not None:
            self.places = False            # (no view's shape to compute: own arrays)
        self.reverse = p["reverse"]
        self.producer = {v: e for e in body.eqns for v in e.outputs}
        self.uses: dict = {}
        for e in body.eqns:
            for v in e.inputs:
                if isinstance(v, Var):
                    self.uses.setdefault(v, []).append(e)

    # ------------------------------------------------------------ analysis

    def _accumulator(self, j):
        """``(update equation, [e1, e2, ...])`` if carry ``j`` is updated as
        ``c + sum_b e1_b + sum_b e2_b + ...`` (see the module docstring), else None."""
        body = self.body
        c_in, c_out = body.inputs[self.n_consts + j], body.outputs[j]
        update = self.producer.get(c_out) if isinstance(c_out, Var) else None
        users = self.uses.get(c_in, [])
        if update is None or len(users) != 1 or users[0] is not update or \
                c_in in body.outputs:
            return None
        if sum(o is c_out for o in body.outputs) != 1 or c_out in self.uses:
            return None
        if np.dtype(c_out.dtype).kind != "f" or c_out.shape != c_in.shape:
            return None
        if update.prim.name == "add":
            inner = [update]
        elif update.prim.name == "fused":
            inner = update.params["body"].eqns
        else:
            return None
        # a tree of adds (and reshapes) using every operand once: the sum of them all
        if any(q.prim.name not in ("add", "reshape") for q in inner):
            return None
        reads = [v for q in inner for v in q.inputs]
        if any(isinstance(v, Lit) for v in reads) or len(reads) != len(set(reads)):
            return None
        ins = list(update.inputs)
        es = [v for v in ins if v is not c_in]
        if len(es) != len(ins) - 1 or not es:
            return None
        for e in es:
            source = self.producer.get(e)
            users = self.uses.get(e, [])
            if source is None or len(users) != 1 or users[0] is not update or \
                    e in body.outputs:
                return None
            if source.prim.name == "scatter_add" and _scattered(source) is not None and \
                    _in_place_scatters():
                continue                     # (a term the rows add in place: _scatter_stage)
            if source.prim.name != "fused":
                return None
            fbody = source.params["body"]
            root = fbody.outputs[list(source.outputs).index(e)]
            red = {v: q for q in fbody.eqns for v in q.outputs}.get(root)
            if red is None or red.prim.name != "reduce_sum" or \
                    tuple(red.params["axes"]) != (0,):
                return None
        return update, es

    def analyse(self):
        body, nc, nk = self.body, self.n_consts, self.n_carry
        if self.length < 1:
            raise NotRows("an empty scan")
        carries = body.inputs[nc:nc + nk]
        self.acc = {}                      # carry index -> (update eqn, [its terms])
        for j in range(nk):
            found = self._accumulator(j)
            if found is not None:
                self.acc[j] = found
        # carries the step hands back unchanged (a cotangent that only accumulates
        # elsewhere): read like constants
        self.fixed = {j for j in range(nk) if body.outputs[j] is carries[j]}
        self.row_carries = row_carries = [j for j in range(nk)
                                          if j not in self.acc and j not in self.fixed]
        if not row_carries and self.batch is None and not (self.one and self.acc):
            raise NotRows("no carry with a batch axis")
        if row_carries:
            first = carries[row_carries[0]]
            if first.ndim == 0:
                raise NotRows("a rank-0 carry")
            self.B = int(first.shape[0])
        else:                 # (a run of equations: row_run; one_row's accumulators alone)
            self.B = 1 if self.batch is None else self.batch
        if self.B == 0:
            raise NotRows("no rows")      # (a grid of no blocks is no launch)
        self._batch_sums()
        body = self.body
        self.rows = set()
        for j in row_carries:
            self._row(carries[j])
        # (the stacked operands are only read, which any block may do anywhere: a
        # per-step vector every row shares as well as the block's own row)
        xs = set(body.inputs[nc + nk:])
        updates = {u for u, _ in self.acc.values()}
        contributions = {e for _, es in self.acc.values() for e in es}
        # (terms that are scatters: added in place, _scatter_stage)
        self.scatters = {e for e in contributions
                         if self.producer[e].prim.name == "scatter_add"}
        self.direct = set()               # ... into one array, not per-row partials
        self.seeded = set()               # ... which starts as the carry's initial value
        # rank-0 values of per-step scalars and constants alone (a step size ``2 * x``):
        # the same for every row, so every thread computes them into a local
        self.uniform = set()
        shared = set(body.inputs[:nc]) | {carries[j] for j in self.fixed} | xs
        for e in body.eqns:
            if e in updates:
                continue
            if e.outputs and all(v.ndim == 0 and v not in contributions for v in e.outputs) \
                    and _scalar_fused(e) is not None and _reshape_source(e) is None and \
                    all(isinstance(v, Lit) or v.ndim == 0 and (v in shared or v in self.uniform)
                        for v in e.inputs):
                self.uniform.update(e.outputs)
                continue
            for v in e.outputs:     # (of constants alone: computed row by row too)
                if v not in contributions:
                    self._row(v)
        carry_ins = set(carries)
        for j in row_carries:
            out = body.outputs[j]
            if isinstance(out, Lit) or out in carry_ins or not (
                    out in self.rows or out in xs and out.shape == carries[j].shape):
                raise NotRows("a carry's new value is not computed by the step")
            if self._source(out) in carry_ins:
                # (a view of a carry's buffer, which the end of the step overwrites)
                raise NotRows("a carry's new value is a reshape of a carry")
        for j, y in enumerate(body.outputs[nk:]):
            if j in self.after:              # (computed after the kernel)
                continue
            if not (isinstance(y, Var) and (y in self.rows or y in xs or y in self.uniform)):
                raise NotRows("a stacked result without a batch axis")

    def _batch_sums(self):
        """Sums over the batch that only stacked results need (a per-step loss
        ``sum(h ** 2)``, its ``mean``, reverse mode's gradient of a per-step operand
        every row reads): their reduction keeps the batch axis instead, and the kernel
        writes the rows' partial sums into ``(T, B, ...)`` arrays; what the results
        compute from them runs after the kernel (``_find_epilogue``)."""
        body = self.body
        new_of, dropped = self._find_epilogue()   # (sum -> per-row partials, left out)
        if not new_of:
            return
        eqns, texts = [], []
        for e, text in zip(body.eqns, self.text_of):
            if e in dropped:
                continue
            texts.append(text)
            if not any(o in new_of for o in e.outputs):
                eqns.append(e)
                continue
            fbody = e.params["body"]
            comments = self.comments_of.get(e) or dict(zip(fbody.eqns,
                                                            text_of_body(e, text)))
            roots = list(fbody.outputs)
            fe = list(fbody.eqns)
            for k, o in enumerate(e.outputs):
                if o not in new_of:
                    continue
                red = next(q for q in fe if roots[k] in q.outputs)
                if not any(red.outputs[0] in q.inputs for q in fe) and \
                        sum(r is red.outputs[0] for r in roots) == 1:
                    fe.remove(red)          # (no other use of the sum over the batch)
                axes = tuple(a for a in red.params["axes"] if a != 0)
                if axes:                    # the other axes still summed, row by row
                    part = Var(tuple(new_of[o].shape), o.dtype)
                    fe.append(make_eqn(red.prim, list(red.inputs), [part], {"axes": axes}))
                    comments[fe[-1]] = [f"{line}   (each row's part)"
                                        for line in comments.get(red, [])]
                    roots[k] = part
                else:                       # the summand itself
                    roots[k] = red.inputs[0]
            fused = e.replace(outputs=tuple(new_of.get(o, o) for o in e.outputs),
                              params={**e.params,
                                      "body": fbody.replace(eqns=tuple(fe),
                                                            outputs=tuple(roots))})
            self.comments_of[fused] = comments
            eqns.append(fused)
        self.text_of = texts
        self.body = body.replace(eqns=tuple(eqns))
        self.producer = {v: e for e in self.body.eqns for v in e.outputs}
        self.uses = {}
        for e in self.body.eqns:
            for v in e.inputs:
                if isinstance(v, Var):
                    self.uses.setdefault(v, []).append(e)

    def _find_epilogue(self):
        """Stacked results computed from sums over the batch, per-step operands and
        constants alone (a sum itself, a reshape of it, a per-step ``mean``,
        ``2 * sum_b ...``): no row computes them,
        so they run after the kernel, for all steps at once (the vmap pass batches their
        equations over the steps), on the batch sums, which the kernel writes as per-row
        partial sums (``self.hidden``: sum -> its per-row value).  Sets ``self.after``
        (output index -> result) and ``self.epilogue``; returns ``self.hidden`` and the
        equations that leave the kernel."""
        body, nc, nk, B = self.body, self.n_consts, self.n_carry, self.B
        self.after, self.hidden, self.epilogue = {}, {}, None
        if self.steps is not None:          # (its (T, ...) arrays' T unknown here)
            return {}, set()
        carries = body.inputs[nc:nc + nk]
        shared = set(body.inputs[:nc]) | {carries[j] for j in self.fixed} | \
            set(body.inputs[nc + nk:])
        contributions = {e for _, es in self.acc.values() for e in es}
        sums = {}                           # a sum over the batch -> its fused equation
        for e in body.eqns:
            domain = e.params.get("domain") if e.prim.name == "fused" else None
            if not domain or int(domain[0]) != B:
                continue
            red_of = {v: q for q in e.params["body"].eqns for v in q.outputs}
            for o, r in zip(e.outputs, e.params["body"].outputs):
                red = red_of.get(r)
                if o not in contributions and red is not None and \
                        red.prim.name == "reduce_sum" and 0 in red.params["axes"] and \
                        tuple(red.inputs[0].shape) == tuple(domain) and \
                        np.dtype(o.dtype).kind in "fc":
                    sums[o] = e
        nonrow, dep = set(shared) | set(sums), set(sums)
        for e in body.eqns:
            if any(o in sums for o in e.outputs):
                continue
            vins = [v for v in e.inputs if isinstance(v, Var)]
            if e.outputs and all(v in nonrow for v in vins):
                nonrow.update(e.outputs)
                if any(v in dep for v in vins):
                    dep.update(e.outputs)
        targets = {j: y for j, y in enumerate(body.outputs[nk:])
                   if isinstance(y, Var) and y in dep}
        if not targets:
            return {}, set()
        # the equations the targets need (back to the sums, operands and constants)
        needed, todo = set(), list(targets.values())
        while todo:
            v = todo.pop()
            if v in shared or v in sums or v not in self.producer:
                continue
            e = self.producer[v]
            if e not in needed:
                needed.add(e)
                todo += [u for u in e.inputs if isinstance(u, Var)]
        used_sums = [v for v in sums if v in targets.values() or
                     any(v in e.inputs for e in needed)]
        for e in needed | {sums[v] for v in used_sums}:
            for v in e.outputs:
                if e in needed and v not in dep:
                    continue                # (of operands alone: may stay in the kernel)
                if v not in sums and e not in needed:
                    continue
                if any(u not in needed for u in self.uses.get(v, [])) or \
                        v in body.outputs[:nk] or (v in body.outputs[nk:] and
                                                   v not in targets.values()):
                    return {}, set()        # (a row or a carry reads it: the host loop)
        ins = self.eqn.inputs
        outer = dict(zip(body.inputs, ins))
        operands = [v for v in dict.fromkeys(u for e in self.body.eqns if e in needed
                                             for u in e.inputs if isinstance(u, Var))
                    if v in shared]
        eqns = _inlined([e for e in body.eqns if e in needed])
        if eqns is None or any(isinstance(outer[v], Lit) for v in operands):
            return {}, set()
        inputs = used_sums + operands
        graph = Graph(tuple(inputs), tuple(eqns), tuple(targets.values()))
        xs = set(body.inputs[nc + nk:])
        self.epilogue = (graph, [v in xs or v in sums for v in inputs],
                         [v if v in sums else outer[v] for v in inputs])
        self.after = targets
        for v in used_sums:
            self.hidden[v] = Var((B,) + tuple(v.shape), v.dtype)
            self.ctx.names[self.hidden[v]] = (self.ctx.names.get(v) or
                                              self.ctx.temp().lstrip("_")) + "_rows"
        # (what only the epilogue reads leaves the kernel: its own equations, and those
        # of operands alone that nothing left in the kernel reads)
        drop = {e for e in needed if any(o in dep for o in e.outputs)}
        changed = True
        while changed:
            changed = False
            for e in needed - drop:
                if all(o not in body.outputs and
                       all(u in drop for u in self.uses.get(o, [])) for o in e.outputs):
                    drop.add(e)
                    changed = True
        return self.hidden, drop

    def _row(self, v):
        if v.ndim == 0 or int(v.shape[0]) != self.B:
            raise NotRows(f"a value of shape {tuple(v.shape)} in a scan over {self.B} rows")
        self.rows.add(v)

    # ------------------------------------------------------------ lowering

    def lower(self):
        dying = set(self.ctx.dying)        # (read before anything lowers another equation)
        self.analyse()
        ctx, eqn, body = self.ctx, self.eqn, self.body
        ctx.exact |= cg.exact_values(body)    # (products a bit of which matters)
        nc, nk, T, B = self.n_consts, self.n_carry, self.length, self.B
        ins = eqn.inputs
        for j in range(nk):       # (an accumulator's deferred zeros: see _finish_accumulator)
            ov, bv = ins[nc + j], body.inputs[nc + j]
            # (a row carry of (B, K) may start from a view: the kernel copies its rows in)
            if j not in self.acc and not (j in self.row_carries and bv.ndim == 2 and
                                          ctx.view(ov)):
                ctx.materialize(ov)
        handed_back = set(body.outputs)
        for bv, ov in list(zip(body.inputs[:nc], ins[:nc])) + list(zip(
                body.inputs[nc + nk:], ins[nc + nk:])):
            if bv in handed_back or not ctx.view(ov):      # (a view read in place)
                ctx.materialize(ov)
        carries = body.inputs[nc:nc + nk]
        updates = {u for u, _ in self.acc.values()}
        ctx.lines.append(
            self.eqn.params["comment"] if "comment" in self.eqn.params else
            "# the while_loop as one kernel of one block, its trips inside it (its "
            "condition and body batched over a row of one)" if self.test is not None else
            f"# the scan as one kernel of one block, the {self.steps or T} steps inside it "
            "(its step batched over a row of one)" if self.one and self.batch is None else
            f"# the scan as one kernel: a block per row of {B}, the {T} steps inside it "
            "(its rows are independent)" if self.batch is None else
            f"# these {len(body.eqns)} equations as one kernel of one block (batched over a "
            "row of one)" if self.one else
            f"# rows: these {len(body.eqns)} equations as one kernel, a block per row of {B}")
        self.params, self.args, self.kinds = [], [], []
        # threads per block (a block per row: how many share a row's work; the
        # environment's GRADC_CUDA_ROW_THREADS, a multiple of 32, lets a GPU session
        # compare sizes)
        # (one block, on a GPU: twice the threads, and a register limit for one block
        # to an SM, not two; the simulator's count is kept, each thread a Python one)
        self.threads = _row_threads() or (
            ONE_BLOCK_THREADS if self.one and ctx.threads == cg.THREADS else ctx.threads)
        self.names = {}                   # body value -> how the kernel reads it
        self.stepped = set()              # kernel arrays indexed by the step first
        self.row_arrays = set()           # kernel arrays holding row values
        self.buffers = {}                 # body value -> host name of its array
        self.row_start = []               # lines run before a row's first step
        self.flush = []                   # lines run after a row's last step
        self.head = []                    # the kernel's shared arrays (and their aliases)
        self.shared_rows = {}             # kernel name -> its row's shape (shared memory)
        self.mirrors = {}                 # stacked result's kernel name -> (its row's
        #                                   copy in shared memory, the row's shape)
        self.shapes = {}                  # kernel parameter -> the shape it is passed
        self.strided = {}                 # host name -> (array, offset, shape, strides):
        #                                   views of an array a later equation places
        #                                   results in (``_place_results``)
        places = self._place_results()
        param = self._param
        # shared memory: an accumulator's partial sums first (see below), then the rows
        # of the carries and of the step's temporaries, smallest first, each while it
        # fits (a reduction's partials per thread need some of what is left)
        contributions = [e for _, es in self.acc.values() for e in es]
        shared, self.room = set(), cg.SHARED_BYTES
        for e in contributions:
            size = _row_bytes((1,) + _padded(e.shape), e.dtype)
            if e in self.scatters and e.ndim and int(e.shape[0]) == B:
                continue           # (a scatter each row adds into its own: _scatter_stage)
            if size <= self.room:
                self.room -= size
                shared.add(e)

        # the scan's constants (and unchanged carries), read whole
        fixed = [(carries[j], ins[nc + j]) for j in sorted(self.fixed)]
        for bv, ov in list(zip(body.inputs[:nc], ins[:nc])) + fixed:
            if isinstance(ov, Lit):
                self.names[bv] = (scalar_literal(ov.value, ov.dtype) if ov.ndim == 0
                                  else ctx.const(ov.value))
            elif ov.ndim == 0:
                cell = ctx.place[ov] == "dev"
                param(bv, ctx.names[ov], 1 if cell else 0)
                self.names[bv] += "[0]" if cell else ""
            else:
                param(bv, ctx.on_device(ov), ov.ndim)
        # carries: buffers of their own, updated in place (the block's row of one in
        # shared memory while the block works on the row: read in before the first step,
        # written back after the last)
        for j, (bv, ov) in enumerate(zip(carries, ins[nc:nc + nk])):
            if j in self.row_carries:
                size = int(np.prod(bv.shape[1:]))

                def rows_of(array):           # (the array as (B, size): C-contiguous, or
                    return array if tuple(bv.shape) == (B, size) else \
                        self._reshaped(array, (B, size))          # a view of (B, size))
                # an operand nothing reads afterwards is updated in place; any other is
                # copied in by the kernel, each row before its first step, into an array
                # of the carry's own (no copy on the host, no launch), or into the view
                # of a later array that holds its final value
                init = None
                if j in places:
                    buf = self._view(places[j])
                    init = rows_of(ctx.on_device(ov))
                elif ov in dying and ctx.place.get(ov) == "dev" and ov not in ctx.views:
                    buf = ctx.names[ov]
                else:
                    buf = self._host(f"_d.empty({tuple(bv.shape)!r}, "
                                     f"{dtype_expr(bv.dtype)})")
                    init = rows_of(ctx.on_device(ov))
                self.buffers[bv] = buf
                if self._share(bv):
                    name = self.names[bv]
                    self._extra(f"{name}_g", rows_of(buf), bv.dtype, 2, (B, size))
                    source = f"{name}_g"
                    if init is not None:
                        source = f"{name}_i"
                        self._extra(source, init, bv.dtype, 2, (B, size))
                    self.row_start += [f"for _e in range(_tid, {size}, _nt):",
                                       f"    {name}[_e] = {source}[i0, _e]"]
                    self.flush += [f"for _e in range(_tid, {size}, _nt):",
                                   f"    {name}_g[i0, _e] = {name}[_e]"]
                else:
                    name = param(bv, buf, bv.ndim)
                    if init is not None:
                        self._extra(f"{name}_w", rows_of(buf), bv.dtype, 2, (B, size))
                        self._extra(f"{name}_i", init, bv.dtype, 2, (B, size))
                        self.row_start += [f"for _e in range(_tid, {size}, _nt):",
                                           f"    {name}_w[i0, _e] = {name}_i[i0, _e]"]
        # xs: the step's row read from the stacked array (a scalar per step as x[_t])
        for bv, ov in zip(body.inputs[nc + nk:], ins[nc + nk:]):
            name = param(bv, ctx.on_device(ov), ov.ndim, stepped=True)
            if bv.ndim == 0:
                self.stepped.discard(name)
                self.names[bv] = f"{name}[_t]"

        # where the step's results go: a stacked result straight into its (T, B, ...)
        # array from the stage computing it; a carry's new value into the carry's
        # buffer when no later stage reads the old one; the rest copied at the end
        order = {e: k for k, e in enumerate(body.eqns)}
        ys, copies_early, copies_late, into, uniform_ys = [], [], [], {}, []
        xs = dict(zip(body.inputs[nc + nk:], ins[nc + nk:]))
        for j, (y, oy) in enumerate(zip(body.outputs[nk:], eqn.outputs[nk:])):
            if j in self.after:              # (the epilogue's, after the kernel)
                ys.append(None)
                continue
            if y in xs:                      # a stacked operand handed back: itself
                ys.append(ctx.on_device(xs[y]))
                continue
            arr = self._view(places[nk + j]) if nk + j in places else \
                self._host(f"_d.empty({self._dims(oy.shape, True)}, "
                           f"{dtype_expr(oy.dtype)})")
            ys.append(arr)
            src = self._source(y)
            if y in self.uniform:            # (written once a step: see below)
                uniform_ys.append((j, y, arr))
            elif src in self.producer and src not in into:
                shape = (T,) + tuple(src.shape)
                into[src] = arr if shape == tuple(oy.shape) else \
                    self._reshaped(arr, shape, stepped=True)
            else:
                (copies_late if src in self.producer else copies_early).append((j, y, arr))
        hidden = {}                          # the epilogue's sums: per-row partials
        for v, rows_of in self.hidden.items():
            hidden[v] = self._host(f"_d.empty({(T,) + tuple(rows_of.shape)!r}, "
                                   f"{dtype_expr(v.dtype)})")
            into[rows_of] = f"_d.reshape({hidden[v]}, {(T,) + tuple(rows_of.shape)!r})"
        # (the stage computing a carry's new value, or what it is a reshape of, writes
        # it into the carry's buffer when no later stage reads the old value)
        carry_into = {}
        self.stacked_carry = {}           # stacked new carry -> the carry's index
        for j in range(nk):
            out = body.outputs[j]
            if j not in self.row_carries or isinstance(out, Lit):
                continue
            src = self._source(out)
            if src in into and src in self.producer and src not in self.stacked_carry \
                    and self.double and self.names.get(carries[j]) in self.shared_rows \
                    and sum(isinstance(o, Var) and self._source(o) is src
                            for o in body.outputs[:nk]) == 1 and self._fits(src):
                # (a new carry that is stacked too, ``return h, h``: its stage writes the
                # stacked row and the other half of the carry's double row, not the
                # stacked row alone, copied into the carry after a barrier)
                self.stacked_carry[src] = j
                self.halving.add(src)
                continue
            if src in into or src in carry_into or src not in self.producer or \
                    sum(isinstance(o, Var) and self._source(o) is src
                        for o in body.outputs) != 1:
                continue
            last = max((order[u] for a in self._aliases(carries[j])
                        for u in self.uses.get(a, [])), default=-1)
            if last < order[self.producer[src]]:
                carry_into[src] = j
            elif self.double and self.names.get(carries[j]) in self.shared_rows and \
                    self._fits(src):
                # (read by its own stage or later ones too: into the other half of a
                # double row, not copied there after a barrier at the end of the step)
                carry_into[src] = j
                self.halving.add(src)
            elif last == order[self.producer[src]] and \
                    _in_place(self.producer[src], carries[j], src,
                              self._aliases(carries[j])):
                # (read by its own stage alone, each element by the thread writing it,
                # before it writes it: an accumulator's c + e)
                carry_into[src] = j

        # the body's values: arrays of their own (or a result's), reshapes as views;
        # an accumulator's partial sums in shared memory while the block works on a row
        # (written out once per row) when they fit, else in the (B, ...) array itself
        parts = {}
        temps = sorted((v for e in body.eqns if e not in updates and
                        _reshape_source(e) is None for v in e.outputs
                        if v in self.rows and v not in into and v not in carry_into and
                        v not in contributions),
                       key=lambda v: _row_bytes(v.shape, v.dtype))
        # (a while_loop's condition in shared memory whatever GRADC_CUDA_ROW_SHARED
        # says: an element, which every thread reads)
        tested = {self.test} - self.uniform if self.test is not None else set()
        if tested - set(temps):
            raise NotRows("a while_loop's condition not computed by a stage")
        self.room -= sum(_row_bytes(v.shape, v.dtype) for v in tested)
        share_temps = {v for v in temps if v not in tested and self._fits(v)} | tested
        for e in body.eqns:
            if e in updates:
                continue
            src = _reshape_source(e)
            for v in e.outputs:
                if v in self.uniform:       # (a local of every thread)
                    self.names[v] = f"{ctx.names[v]}_u"
                elif v in contributions:
                    alloc = "_d.empty" if v in shared else "_d.zeros"
                    rows_of = (B,)
                    if v in self.scatters and v not in shared:
                        # (a scatter's term too large for shared memory, or with the
                        # batch axis, each row adding into its own (per-example
                        # gradients; a row of one): every block adds into one array,
                        # atomically; no partials to sum)
                        self.direct.add(v)
                        rows_of = ()
                        seed = self._seed(v, dying)
                        if seed is not None:
                            parts[v] = (seed, len(parts))
                            continue
                    parts[v] = (self._host(f"{alloc}({rows_of + tuple(v.shape)!r}, "
                                           f"{dtype_expr(v.dtype)})"), len(parts))
                elif v in into:
                    self.buffers[v] = self._host(into[v])
                    param(v, self.buffers[v], v.ndim + 1, stepped=True)
                    if v in self.stacked_carry:
                        half = f"{self.names[v]}_n"
                        self._double(v, carries[self.stacked_carry[v]], half)
                        self.mirrors[self.names[v]] = (half, tuple(int(d)
                                                                   for d in v.shape[1:]))
                    elif self._read_in_the_step(v) and self._fits(v):
                        self._mirror(v)
                elif v in carry_into:
                    carry = carries[carry_into[v]]
                    self.buffers[v] = self.buffers[carry]
                    if self.names[carry] in self.shared_rows:
                        if not self._double(v, carry):
                            self._alias(v, carry)
                    else:
                        if tuple(v.shape) != tuple(carry.shape):
                            self.buffers[v] = self._host(self._reshaped(self.buffers[carry],
                                                                        tuple(v.shape)))
                        param(v, self.buffers[v], v.ndim)
                elif src is not None:
                    outer = dict(zip(body.inputs[:nc], ins[:nc]))
                    if src not in self.buffers and isinstance(outer.get(src), Var) and \
                            src.ndim and int(src.shape[0]) == B and v in self.rows:
                        # (a constant read whole, reshaped: the array's view, passed too)
                        self.buffers[v] = self._host(self._reshaped(
                            ctx.on_device(outer[src]), tuple(v.shape)))
                        param(v, self.buffers[v], v.ndim)
                        continue
                    if src not in self.buffers:
                        raise NotRows("a reshape of a stacked operand, a constant or an "
                                      "unchanged carry")
                    if self.names[src] in self.shared_rows:
                        self.buffers[v] = self.buffers[src]
                        self._alias(v, src)
                        continue
                    stepped = self.names[src] in self.stepped
                    shape = ((T,) if stepped else ()) + tuple(v.shape)
                    self.buffers[v] = self._host(self._reshaped(self.buffers[src], shape,
                                                                stepped=stepped))
                    param(v, self.buffers[v], len(shape), stepped=stepped)
                    if self.names[src] in self.mirrors:
                        self.mirrors[self.names[v]] = (self.mirrors[self.names[src]][0],
                                                       tuple(int(d) for d in v.shape[1:]))
                elif v in share_temps:
                    self.buffers[v] = "(in shared memory)"
                    self._share(v, checked=True)
                else:
                    self.buffers[v] = self._host(f"_d.empty({tuple(v.shape)!r}, "
                                                 f"{dtype_expr(v.dtype)})")
                    param(v, self.buffers[v], v.ndim)
        part_names, flush = {}, self.flush
        for v, (part, j) in parts.items():
            size = int(np.prod(v.shape))
            if v in shared:
                dims = _padded(v.shape)
                part_names[v] = (f"_ps{j}", dims)
                self._extra(f"_p{j}", f"_d.reshape({part}, ({B}, {size}))", v.dtype, 2,
                            (B, size))
                padded = int(np.prod(dims))
                self.head.append(f"_ps{j} = cuda.shared.array({padded}, "
                                 f"{cg._numba_type(v.dtype)})")
                zero = scalar_literal(0, v.dtype)
                self.row_start += [f"for _e in range(_tid, {padded}, _nt):",
                                   f"    _ps{j}[_e] = {zero}"]
                at = "_e" if dims == tuple(v.shape) else \
                    f"{cg.floordiv('_e', v.shape[-1])} * {dims[-1]} + " \
                    f"{cg.mod('_e', v.shape[-1])}"
                flush += [f"for _e in range(_tid, {size}, _nt):",
                          f"    _p{j}[i0, _e] = _ps{j}[{at}]"]
            elif v in self.direct:
                part_names[v] = (f"_p{j}", None)
                self._extra(f"_p{j}", part, v.dtype, v.ndim, tuple(v.shape))
            else:
                part_names[v] = (f"_p{j}", None)
                self._extra(f"_p{j}", part, v.dtype, v.ndim + 1, (B,) + tuple(v.shape))
        for j, y, arr in copies_early + copies_late + uniform_ys:
            self._extra(f"_y{j}", arr, y.dtype, y.ndim + 1,
                        None if self.steps else (T,) + tuple(y.shape))
        if self.steps is not None:          # (the count, when the program runs)
            self._extra("_n", self.steps, np.int64, 0)

        prefetch, stored = self._prefetch(body.inputs[nc + nk:], T)

        # the kernel: a block per row, the steps inside
        # (a while_loop: no step index)
        last = "_n - 1" if self.steps else T - 1
        step = ["_t = 0" if self.test is not None else
                f"_t = {last} - _s" if self.reverse else "_t = _s"] + prefetch
        for j, y, _ in copies_early:         # (from the step's operands: before anything)
            step += self._copy(f"_y{j}", y, stepped=True)
        # (a barrier between those copies and a stage writing a carry in place, unless
        # another stage's barrier comes first)
        early = bool(copies_early)
        widest, last = 1, None
        for e, text in zip(body.eqns, self.text_of):
            if e in updates or _reshape_source(e) is not None:
                continue
            if e.outputs[0] in self.scatters:      # (an accumulator's scatter term)
                self.merge_info = self.merged_pointwise = None
                lines, width = self._scatter_stage(e, text, part_names)
            else:
                fused = _scalar_fused(e) if e.outputs[0] in self.uniform else _as_fused(e)
                if fused is None:
                    raise NotRows(f"no row lowering of {e.prim.name}")
                comments = (self.comments_of.get(e) if fused is e else
                            {e: [text[0].strip().removeprefix("let ")]})
                if all(v in self.uniform for v in e.outputs):
                    # (per-step scalars, locals of every thread reading no row: placed
                    # before a reduction stage that a later one may join, not between
                    # them)
                    uniform = self._uniform(fused, text, comments)
                    if last is None:
                        step += uniform
                    else:
                        step[last[0]:last[0]] = uniform
                        last = (last[0] + len(uniform),) + last[1:]
                    continue
                self.merge_target = last[1] if last else None
                lines, width = self._stage(fused, text, comments, part_names, order[e])
            widest = max(widest, width)
            merged, info = None, None
            if last and self.merge_info:    # (one loop, no barrier between: _merged)
                merged = self._merged(last, lines, self.merge_info)
                kept = {k: v for k, v in last[1].results.items() if k not in last[1].held}
                info = last[1]._replace(binds=last[1].binds + self.merge_info.binds,
                                        results={**kept, **self.merge_info.results},
                                        held=frozenset(),
                                        tail=last[1].tail + self.merge_info.tail)
            elif last and self.merged_pointwise:
                joining, held = self.merged_pointwise
                merged = self._merge_pointwise(last, joining)
                # (its results, in locals of the writing lines: for a stage joining them;
                # with a thread per kept element, those lines are no branch, and a
                # reduction joining them reads them there too)
                info = last[1]._replace(results={**last[1].results, **held},
                                        held=last[1].held | held.keys(), tail=0)
                if merged is not None and info.indent == "    ":
                    em = self._emitter({}, {}, {})
                    info = info._replace(binds=info.binds + [
                        (em.read(name, info.sub), local)
                        for name, (local, dims) in held.items() if dims == info.dims])
            if merged is not None:
                self.halved |= bool(self._doubled(e, carry_into))
                start = last[0]
                step[start:] = merged + ["cuda.syncthreads()"]
                last = (start, info, merged, last[3])
                if self._leave(e, step):
                    last = None
                continue
            if early and carry_into.keys() & set(e.outputs):
                if self._doubled(e, carry_into) == carry_into.keys() & set(e.outputs):
                    self.halved = True
                else:
                    step.append("cuda.syncthreads()")
            early = False
            # (a stage apart from all that runs since the barrier before the last one
            # (``_apart``: it reads nothing they write, writes nothing they touch) needs
            # no barrier after them: the RNN's gradient, ``W.T @ d`` beside W's
            # gradient's ``+ outer(h, d)``)
            if step and step[-1] == "cuda.syncthreads()" and \
                    "cuda.syncthreads()" not in lines:
                prev = len(step) - 1 - step[-2::-1].index("cuda.syncthreads()") \
                    if "cuda.syncthreads()" in step[:-1] else 0
                if self._apart(step[prev:-1], lines):
                    step.pop()
            # (with what runs before it since the last barrier: the step's early copies)
            since = len(step) - step[::-1].index("cuda.syncthreads()") \
                if "cuda.syncthreads()" in step else 0
            last = (len(step), self.merge_info, lines, step[since:]) \
                if self.merge_info else None
            step += lines + ["cuda.syncthreads()"]
            if self._leave(e, step):
                last = None
        tail = [] if not early else ["cuda.syncthreads()"]
        for j, y, _ in copies_late:
            tail += self._copy(f"_y{j}", y, stepped=True)
        for j, y, _ in uniform_ys:           # (the same in every block: row 0's writes it)
            tail += ["if i0 == 0 and _tid == 0:", f"    _y{j}[_t] = {self.names[y]}"]
        for j in range(nk):
            out = body.outputs[j]
            if j in self.row_carries and self._source(out) not in carry_into and \
                    self._source(out) not in self.stacked_carry:
                tail += self._copy(self.names[carries[j]], out)
                widest = max(widest, int(np.prod(out.shape[1:])))
        if tail:
            step += tail + ["cuda.syncthreads()"]
        if stored:      # (the next step's rows, stored before the step's last barrier)
            if step[-1] == "cuda.syncthreads()":
                step[-1:] = stored + ["cuda.syncthreads()"]
            else:
                step += stored + ["cuda.syncthreads()"]
            widest = max([widest] + [size for _, _, size in self.prefetched.values()])
        if self.swaps and not self.halved:
            raise Undoubled()
        if self.swaps:      # (the halves of double-buffered rows: the other one next)
            step = step[:1] + self._halves() + step[1:] + [
                f"_o{k} = {size} - _o{k}" for k, (_, _, size) in enumerate(self.swaps)]
            # (a row's copy in and its write back after the last step index the
            # double row itself: a half's name carried from a loop's last trip is one
            # NVVM addresses as generic memory)
            for k, (old, _, _) in enumerate(self.swaps):
                at = re.compile(rf"\b{old}\[_e\]")
                for part in (self.row_start, flush):
                    part[:] = [at.sub(f"{old}_2[_o{k} + _e]", line) for line in part]
            # (a line there naming a half otherwise would read a stale one: lowered
            # again without double rows)
            names = {line.split(" = ")[0] for line in self._halves()}
            if any(re.search(rf"\b{n}\b", line) for n in names
                   for line in self.row_start + flush):
                raise Undoubled()
        # (whole warps on a GPU; under the simulator, each thread a Python thread, no more
        # than the widest stage uses)
        threads = min(self.threads, widest if self.threads < 32 else -(-widest // 32) * 32)
        # (the block's size read when the kernel runs: as a constant, LLVM unrolls every
        # stage's loop over the row, and G4's backward scan took 137 registers, not 56)
        lines = self.head + ["_tid = cuda.threadIdx.x",
                             "_nt = cuda.blockDim.x",
                             f"for i0 in range(cuda.blockIdx.x, {B}, cuda.gridDim.x):"]
        if self.row_start:
            lines += ["    " + s for s in self.row_start + ["cuda.syncthreads()"]]
        lines.append(f"    for _s in range({'_n' if self.steps else T}):" if self.test is None
                     else "    while True:")
        lines += ["        " + s for s in step]
        lines += ["    " + s for s in flush + (["cuda.syncthreads()"] if flush else [])]
        lines = _unread_shared(_share_loops(lines))
        # (parameters no line reads: a stacked result's views that later stages read
        # through its copy in shared memory)
        text = "\n".join(line.split("#")[0] for line in lines)      # (not comments)
        used = [k for k, name in enumerate(self.params) if re.search(rf"\b{name}\b", text)]
        dropped = [a for k, a in enumerate(self.args) if k not in used]
        self.params = [self.params[k] for k in used]
        self.args = [self.args[k] for k in used]
        self.kinds = [self.kinds[k] for k in used]
        # (a carry handed back unchanged is its first value after the kernel, even where
        # no stage reads it: a trip limit only a while_loop's condition reads, which the
        # tape's loop does not have)
        # (and a stacked operand handed back as a stacked result, read by no stage)
        results = {ctx.names.get(v) for j in self.fixed for v in [ins[nc + j]]
                   if isinstance(v, Var)} | {arr for arr in ys if arr is not None}
        if self.epilogue is not None:       # (the epilogue's kernels, lowered after this,
            results |= {ctx.names.get(x) for x in self.epilogue[2]   # read operands too)
                        if isinstance(x, Var)}
        for arg in reversed(dropped):        # (and the host's views made for them alone)
            mine = [j for j, line in enumerate(ctx.lines) if line.startswith(f"{arg} = ")]
            if len(mine) == 1 and arg.startswith("_t") and arg not in results and not any(
                    re.search(rf"\b{arg}\b", line) for j, line in enumerate(ctx.lines)
                    if j != mine[0]) and not any(re.search(rf"\b{arg}\b", a)
                                                 for a in self.args):
                del ctx.lines[mine[0]]
        if any("_chk" in line for line in lines):     # (a gather's indices checked)
            self._extra("_chk", "_checks.cell", np.int32, 1)
        kname = ctx.kernel_name()
        # (two blocks to an SM: a batch of a few hundred rows on a GPU of a hundred-odd
        # SMs in one wave; unrolled sums would take more registers than that allows)
        consts = cg._finish_kernel(ctx, kname, self.params, lines, self.kinds,
                                   max_registers=min(255, REGISTERS // (
                                       threads if self.one else 2 * threads)),
                                   strided={n for n, a in zip(self.params, self.args)
                                            if a in ctx.views.values() or a in self.strided},
                                   shapes=self.shapes)
        ctx.lines.append(cg._launch(ctx, kname, min(B, ROW_BLOCKS), threads,
                                    self.args + consts))

        # results: the carries' buffers, the stacked arrays, the accumulators' sums
        for j, o in enumerate(eqn.outputs[:nk]):
            if j in self.row_carries:
                self._result(o, self.buffers[carries[j]], fresh=j not in places)
            elif j in self.fixed:             # (the value it came in with)
                ctx.lines.append(f"{ctx.names[o]} = {cg._canonical(ctx, ins[nc + j])}")
                ctx.place[o] = "dev" if o.ndim else "host"
        for j, (arr, y, o) in enumerate(zip(ys, body.outputs[nk:], eqn.outputs[nk:])):
            if j in self.after:
                continue
            self._result(o, arr, fresh=nk + j not in places)
            if y in xs:
                ctx.fresh.discard(o)          # (not a new array: copied if returned)
        for j in self.acc:
            self._finish_accumulator(j, {e: parts[e][0] for e in self.acc[j][1]})
        if self.epilogue is not None:
            self._run_epilogue(hidden)
        for target, *_, through in places.values():
            ctx.placed[target] = True
            if through is not None:
                ctx.placed[through] = False

    def _emitter(self, names, producer, comments):
        """A stage's per-element code generator, reading the kernel's arrays where they
        are placed (rows, stacked, shared, mirrored, prefetched)."""
        return _RowEmitter(self.ctx, names, producer, comments, self.row_arrays,
                           self.stepped, self.shared_rows, self.mirrors, self.prefetched,
                           self.B == 1)

    def _leave(self, e, step) -> bool:
        """After the stage of equation ``e``, if it computes a while_loop's condition:
        the lines leaving the loop when it is false (read by every thread after the
        stage's barrier: the same in all, so the block leaves together)."""
        if self.test is None or self.test not in e.outputs:
            return False
        test = self.names[self.test]
        test = test if self.test in self.uniform else f"{test}[0]"
        if self.checked:
            # (an index out of bounds leaves the loop too: its element read at 0 instead
            # may keep the condition true for ever; each thread reads the error cell
            # before any goes on to the body, which may flag it, so all agree)
            step += [f"_go = {test} and _chk[0] == 0", "cuda.syncthreads()"]
            test = "_go"
        step += [f"if not {test}:", "    break"]
        return True

    def _place_results(self) -> dict:
        """Where the scan's results that a later equation only places into its own
        result (``cudagen._destinations``) go: result index -> ``(that result, offset,
        shape, strides)``, and that result's array made here; for all of them or none
        (the later equation then runs as a kernel).  A carry's final value is its
        buffer, a view then (the kernel copies the first value in); a stacked result is
        written into a view by the stage computing it (or copied there)."""
        ctx, eqn, nc, nk = self.ctx, self.eqn, self.n_consts, self.n_carry
        found = {k: ctx.destinations[o] for k, o in enumerate(eqn.outputs)
                 if o in ctx.destinations} if self.places else {}
        xs = set(self.body.inputs[nc + nk:])
        for k in found:
            if k < nk and k not in self.row_carries or k >= nk and (
                    k - nk in self.after or self.body.outputs[k] in xs):
                return {}
        for target in dict.fromkeys(t for t, *_ in found.values()):
            ctx.lines.append(f"{ctx.names[target]} = _d.empty({tuple(target.shape)!r}, "
                             f"{dtype_expr(target.dtype)})")
        return found

    def _view(self, place) -> str:
        """A host name for the view ``place`` of a later equation's result."""
        target, offset, shape, strides, _ = place
        return self._strided(self.ctx.names[target], offset, tuple(shape), tuple(strides))

    def _strided(self, array, offset, shape, strides) -> str:
        name = self._host(f"_d.view({array}, {offset}, {shape!r}, {strides!r})")
        self.strided[name] = (array, offset, shape, strides)
        return name

    def _reshaped(self, array, shape, stepped=False) -> str:
        """A host expression for ``array`` reshaped to ``shape`` (``stepped``: stacked,
        its first axis the steps): a view of a view (``_view``) where the strides allow
        it (else the scan is lowered again without views), ``_d.reshape`` of anything
        else."""
        shape = tuple(int(d) for d in shape)
        if array not in self.strided:
            return f"_d.reshape({array}, {self._dims(shape, stepped)})"
        base, offset, old, strides = self.strided[array]
        new = cg._reshaped_strides(old, strides, shape)
        if new is None:
            raise NotPlaced(f"a view of shape {old} reshaped to {shape}")
        return self._strided(base, offset, shape, new)

    def _run_epilogue(self, hidden):
        """The epilogue (``_find_epilogue``) for all steps at once: each batch sum is its
        partials summed over the batch, a ``(T, ...)`` array; the epilogue's Graph,
        batched over the steps by the vmap pass, is a host function of its own."""
        from ..passes.batching import batch_graph
        ctx, T, nk = self.ctx, self.length, self.n_carry
        graph, batched, outer = self.epilogue
        bg = batch_graph(graph, batched, T)
        for bv, v, x in zip(bg.inputs, graph.inputs, outer):
            if v in hidden:
                ctx.names[bv] = ctx.temp()
                self._sum_rows(hidden[v], (T, self.B) + tuple(v.shape), 1, bv)
            else:
                ctx.names[bv], ctx.place[bv] = ctx.names[x], ctx.place[x]
        # (a host function of the module, optimised: fused again, where the batching
        # pass writes the epilogue's regions out equation by equation, a kernel each)
        args = ", ".join(cg._canonical(ctx, v) for v in bg.inputs)   # (before _nested
        fn = cg._nested(ctx, bg, "the epilogue of rows (after the scan, every step at once)")
        outs = [ctx.temp() for _ in bg.outputs]              # names them for its own body)
        ctx.lines.append(f"{''.join(o + ', ' for o in outs)}= {fn}({args})")
        for j, r in zip(self.after, outs):
            o = self.eqn.outputs[nk + j]
            ctx.lines.append(f"{ctx.names[o]} = {r}")
            ctx.place[o] = "dev"

    def _fits(self, v) -> bool:
        """Whether the block's row of body value ``v`` fits in the shared memory left
        (taking it if so)."""
        return self._take(_row_bytes(v.shape, v.dtype))

    def _take(self, size) -> bool:
        """Whether ``size`` bytes of shared memory a row are left (taking them if so)."""
        limit = int(os.environ.get("GRADC_CUDA_ROW_SHARED", ROW_SHARED))  # (0: none)
        if size > min(limit, self.room - RESERVE):
            return False
        self.room -= size
        return True

    def _prefetch(self, xs, T):
        """Double buffers in shared memory for the step's rows of the stacked operands
        ``xs`` that stages read, while they fit (a stage reading another row reads the
        array itself).  The row of step 0 is read before the first step; each step
        loads the next step's row into registers first (a row of at most one element per
        thread) and stores it into the other buffer last, so that the load's latency
        overlaps the step's work instead of holding up the stage that reads the row.
        Returns the lines a step starts and ends with; ``self.prefetched`` says how
        stages read the buffers."""
        self.prefetched = {}
        if T < 2 and self.steps is None:
            return [], []
        if self.steps is not None:          # (a count known when the kernel runs: none
            T = "_n"                        # to read before the first step if it is 0)
        first, nxt = (f"{T} - 1" if self.steps else T - 1, "_t - 1") if self.reverse else \
            (0, "_t + 1")
        elements = f"{{size}} if {T} > 0 else 0" if self.steps else "{size}"
        start, end = [], []
        for bv in xs:
            name = self.names.get(bv)
            size = int(np.prod(bv.shape[1:]))
            if bv.ndim == 0 or int(bv.shape[0]) != self.B or name not in self.stepped \
                    or size > self.threads or not self._read_in_the_step(bv):
                continue
            if not self._take(2 * _row_bytes(bv.shape, bv.dtype)):
                continue
            k = len(self.prefetched)
            buf, reg = f"{name}_pf", f"_pf{k}"
            self.head.append(f"{buf} = cuda.shared.array({2 * size}, "
                             f"{cg._numba_type(bv.dtype)})")
            for a in self._aliases(bv):          # (and its reshapes)
                if self.names.get(a) in self.stepped:
                    self.prefetched[self.names[a]] = (buf, tuple(int(d) for d in a.shape[1:]),
                                                      size)
            jvars = [f"_j{d}" for d in range(1, bv.ndim)]
            sub = ", ".join(["i0"] + jvars)
            self.row_start += [f"for _e in range(_tid, {elements.format(size=size)}, _nt):",
                               *cg._decode("_e", tuple(bv.shape[1:]), jvars, "    "),
                               f"    {buf}[_e] = {name}[{first}, {sub}]"]
            start += [f"{reg} = {scalar_literal(0, bv.dtype)}",
                      f"if _s + 1 < {T} and _tid < {size}:",
                      *cg._decode("_tid", tuple(bv.shape[1:]), jvars, "    "),
                      f"    {reg} = {name}[{nxt}, {sub}]"]
            end += [f"if _s + 1 < {T} and _tid < {size}:",
                    f"    {buf}[(1 - _pb) * {size} + _tid] = {reg}"]
        if start:
            start.insert(0, "_pb = _s & 1")
        return start, end

    def _share(self, v, checked=False) -> bool:
        """Give row value ``v`` a shared array for the block's row (its own kernel
        name, indexed by the row's linear index) if it fits."""
        if not checked and not self._fits(v):
            return False
        name = self.ctx.names[v]
        size = max(1, int(np.prod(v.shape[1:])))
        self.head.append(f"{name} = cuda.shared.array({size}, {cg._numba_type(v.dtype)})")
        self.names[v] = name
        self.shared_rows[name] = tuple(int(d) for d in v.shape[1:])
        self.row_arrays.add(name)
        return True

    def _read_in_the_step(self, v) -> bool:
        """Whether a stage reads stacked result ``v`` (or a reshape of it) after the
        stage computing it."""
        return any(_reshape_source(u) is None for a in self._aliases(v)
                   for u in self.uses.get(a, []))

    def _mirror(self, v):
        """A shared array holding the block's row of stacked result ``v`` too: the stage
        computing ``v`` writes both, later stages read the copy."""
        name = self.names[v]
        size = max(1, int(np.prod(v.shape[1:])))
        self.head.append(f"{name}_s = cuda.shared.array({size}, "
                         f"{cg._numba_type(v.dtype)})")
        self.mirrors[name] = (f"{name}_s", tuple(int(d) for d in v.shape[1:]))

    def _double(self, v, carry, half=None) -> bool:
        """Give ``v``, a carry's new value that its stage would write into the carry's
        row in shared memory, a row of its own (if it fits): the two are the halves of
        one shared array, which swap at the end of each step (``_halves``).  A stage may
        then write the new value while other threads still read the old one, with no
        barrier between (``_merge_pointwise``, and the step's copies of the old row).
        ``half``: the new half's name, where ``v`` keeps its own (a stacked result that
        the half mirrors)."""
        if v in self.halving:               # (its room taken: it must be)
            self.halved = True
        elif not self.double or not any(self.uses.get(a) for a in self._aliases(carry)) \
                or not self._fits(v):
            return False
        old, name = self.names[carry], half or self.ctx.names[v]
        size = max(1, int(np.prod(v.shape[1:])))
        k = len(self.swaps)
        at = self.head.index(f"{old} = cuda.shared.array({size}, {cg._numba_type(v.dtype)})")
        self.head[at:at + 1] = [
            f"{old}_2 = cuda.shared.array({2 * size}, {cg._numba_type(v.dtype)})",
            f"_o{k} = 0", f"{old} = {old}_2[:{size}]", f"{name} = {old}_2[{size}:]"]
        if half is None:
            self.names[v] = name
        self.shared_rows[name] = tuple(int(d) for d in v.shape[1:])
        self.row_arrays.add(name)
        self.swaps.append((old, name, size))
        return True

    def _doubled(self, e, carry_into) -> set:
        """The new values of double-buffered carries that equation ``e`` computes."""
        halves = {name for _, name, _ in self.swaps}
        return {o for o in carry_into.keys() & set(e.outputs) if self.names.get(o) in halves} \
            | (self.stacked_carry.keys() & set(e.outputs))

    def _halves(self) -> list:
        """Lines naming the halves of each double-buffered carry row (``_double``) at the
        step's parity: the carry's name the half holding its value, and the new value's
        name the other; then the other names of either.  (Slices of
        the shared array at an offset the loop carries, not names swapped: NVVM loses
        a swapped pointer's address space and loads the rows as generic memory.)"""
        lines, names = [], set()
        for k, (old, name, size) in enumerate(self.swaps):
            lines += [f"{old} = {old}_2[_o{k}:_o{k} + {size}]",
                      f"{name} = {old}_2[{size} - _o{k}:{2 * size} - _o{k}]"]
            names |= {old, name}
        for line in self.head:              # (aliases, in the order they were made)
            m = re.fullmatch(r"(\w+) = (\w+)", line.strip())
            if m and m.group(2) in names:
                names.add(m.group(1))
                lines.append(line.strip())
        return lines

    def _alias(self, v, root):
        """Body value ``v`` (a reshape of ``root``, or a carry's new value written into
        the carry's buffer) as another name of ``root``'s shared array."""
        name = self.ctx.names[v]
        self.head.append(f"{name} = {self.names[root]}")
        self.names[v] = name
        self.shared_rows[name] = tuple(int(d) for d in v.shape[1:])
        self.row_arrays.add(name)

    def _param(self, v, arg, ndim, stepped=False):
        """A kernel parameter for body value ``v`` (passed ``arg`` by the host: of
        ``v``'s shape, or stacked, of ``(T,) + v.shape``)."""
        name = self.ctx.names[v]
        self._extra(name, arg, v.dtype, ndim, None if stepped and self.steps else
                    ((self.length,) if stepped else ()) + tuple(v.shape))
        self.names[v] = name
        if stepped:
            self.stepped.add(name)
        if v in self.rows:
            self.row_arrays.add(name)
        return name

    def _extra(self, name, arg, dtype, ndim, shape=None):
        self.params.append(name)
        self.args.append(arg)
        self.kinds.append((name, dtype, ndim))
        if shape is not None and len(shape) == ndim:
            self.shapes[name] = tuple(int(d) for d in shape)

    def _dims(self, shape, stepped=False) -> str:
        """The host's text for ``shape``; ``stepped``: a stacked one, its first axis the
        steps (the count when the program runs, ``self.steps``, where there is one)."""
        if not (stepped and self.steps):
            return repr(tuple(int(d) for d in shape))
        return f"({', '.join([self.steps] + [str(int(d)) for d in shape[1:]])},)"

    def _host(self, expr) -> str:
        name = self.ctx.temp()
        self.ctx.lines.append(f"{name} = {expr}")
        if expr in self.strided:            # (another name of a view)
            self.strided[name] = self.strided[expr]
        return name

    def _result(self, o, name, fresh=True):
        self.ctx.lines.append(f"{self.ctx.names[o]} = {name}")
        self.ctx.place[o] = "dev"
        if fresh:                           # (a view of a later array is not)
            self.ctx.fresh.add(o)

    def _source(self, v):
        """``v``, or what it is a reshape of (through any chain of reshapes)."""
        while v in self.producer and _reshape_source(self.producer[v]) is not None:
            v = _reshape_source(self.producer[v])
        return v

    def _aliases(self, v) -> list:
        """``v`` and every reshape of it (views of one array)."""
        out, todo = [], [v]
        while todo:
            a = todo.pop()
            out.append(a)
            todo += [w for u in self.uses.get(a, []) if _reshape_source(u) is a
                     for w in u.outputs]
        return out

    def _copy(self, dst, v, stepped=False) -> list:
        """Lines copying the block's row of body value ``v`` into array ``dst`` (a carry's
        buffer, or with ``stepped`` ``_y{j}``: a stacked result, indexed by the step)."""
        src = self.names[v]
        size = int(np.prod(v.shape[1:]))
        jvars = [f"_j{d}" for d in range(1, v.ndim)]
        sub = ", ".join(["i0"] + jvars)
        lines = [f"for _e in range(_tid, {size}, _nt):"]
        if dst not in self.shared_rows or src not in self.shared_rows:
            lines += cg._decode("_e", tuple(v.shape[1:]), jvars, "    ")

        def at(name, step):
            if name in self.shared_rows:        # (a row of v's shape: _e is its index)
                assert self.shared_rows[name] == tuple(v.shape[1:])
                return f"{name}[_e]"
            return f"{name}[{'_t, ' if step else ''}{sub}]"
        lines.append(f"    {at(dst, stepped)} = {at(src, src in self.stepped)}")
        return lines

    def _names(self, fused):
        """How the code of fused equation ``fused`` names its body's values and reads
        its operands."""
        ctx, body = self.ctx, fused.params["body"]
        names = {v: f"{ctx.names.get(v, ctx.temp().lstrip('_'))}" for e in body.eqns
                 for v in e.outputs}
        for bv, ov in zip(body.inputs, fused.inputs):
            if isinstance(ov, Lit):
                names[bv] = (scalar_literal(ov.value, ov.dtype) if ov.ndim == 0
                             else ctx.const(ov.value))
            elif ov in self.names:
                names[bv] = self.names[ov]
            else:
                raise NotRows("a stage reads what no kernel array holds")
        return names

    def _seed(self, v, dying):
        """The array a scatter term ``v`` that every block adds into (``self.direct``)
        starts as, if it is the carry's initial value: where the carry's update is
        ``c + v`` alone, of one shape and dtype, and ``c`` starts from an array no
        kernel knows to be zeros (a fill the vmap pass made of ``zeros_like``: per-example
        gradients), that array if nothing reads it afterwards, else a copy: no zeros
        and no add after the kernel (``_finish_accumulator``).  None for any other."""
        ctx, nc = self.ctx, self.n_consts
        j = next(j for j, (_, es) in self.acc.items() if v in es)
        update, es = self.acc[j]
        init, c = self.eqn.inputs[nc + j], self.body.inputs[nc + j]
        inner = update.params["body"].eqns if update.prim.name == "fused" else [update]
        if es != [v] or [q.prim.name for q in inner] != ["add"] or isinstance(init, Lit) or \
                ctx.zero_fill(init) or tuple(v.shape) != tuple(c.shape) or \
                np.dtype(v.dtype) != np.dtype(c.dtype) or \
                np.dtype(init.dtype) != np.dtype(c.dtype) or not init.ndim:
            return None
        ctx.materialize(init)
        self.seeded.add(v)
        if init in dying and ctx.place.get(init) == "dev" and init not in ctx.views:
            return self._host(ctx.names[init])
        return self._host(f"_d.copy({ctx.on_device(init)})")

    def _scatter_stage(self, eqn, text, part_names):
        """The lines of an accumulator's term that is a ``scatter_add`` (``_scattered``:
        what reverse mode makes of a batched gather from a table every row shares, an
        embedding's): the block's threads stride over the window elements of the
        block's row, each computes where its element goes (index arrays read and checked
        as a gather's) and adds it there atomically, since two elements may go to one
        place: into the block's partial sums in shared memory, or, where those do not
        fit, into one array for all blocks (``self.direct``); and how many threads it
        can use."""
        v, *arrays = eqn.inputs
        out = eqn.outputs[0]
        window, positions = _scattered(eqn)
        if window[0] != self.B:
            raise NotRows("a scatter whose window does not start with the batch axis")
        fused = _map_stage(eqn)
        em = self._emitter(self._names(fused), {}, {})
        ivars = [f"i{d}" for d in range(len(window))]
        idx = tuple(Affine(n, 1, 0, 0, m - 1) for n, m in zip(ivars, window))
        sub = []
        for p in positions:
            if p[0] == "slice":
                sub.append(str(idx[p[1]].map(p[3], p[2])))
            elif p[0] == "int":
                sub.append(str(p[1]))
            else:
                _, k, axes, n = p
                at = tuple(Affine.const(0) if a is None else idx[a] for a in axes)
                sub.append(em._index(eqn, arrays[k], at, n, 0))
        value = em.value(v, idx, 0)
        name, dims = part_names[out]
        at = _linear(sub, dims) if dims is not None else \
            f"({', '.join(sub)},)" if out in self.direct else f"(i0, {', '.join(sub)})"
        line = text[0].strip().removeprefix("let ")
        size = int(np.prod(window[1:]))
        lines = [f"# {line}   (added where it points, atomically)",
                 f"for _e in range(_tid, {size}, _nt):"]
        lines += cg._decode("_e", window[1:], ivars[1:], "    ")
        lines += ["    " + s for s in em.lines]
        lines.append(f"    cuda.atomic.add({name}, {at}, {value})")
        return lines, size

    def _uniform(self, fused, text, comments):
        """Lines computing rank-0 values the same for every row (``self.uniform``) into
        locals, run by every thread (no barrier after them)."""
        body = fused.params["body"]
        if comments is None:
            comments = dict(zip(body.eqns, text_of_body(fused, text)))
        producer = {v: e for e in body.eqns for v in e.outputs}
        em = self._emitter(self._names(fused), producer, comments)
        for r, o in zip(body.outputs, fused.outputs):
            em.emit(0, f"{self.names[o]} = {em.value(r, (), 0)}")
        return em.lines

    def _stage(self, fused, text, comments, part_names, k):
        """The lines of one stage (a fused equation for the block's row) and how many
        threads it can use."""
        B = self.B
        body = fused.params["body"]
        domain = tuple(int(d) for d in fused.params["domain"])
        if not domain or domain[0] != B:
            raise NotRows("a stage whose domain does not start with the batch axis")
        producer = {v: e for e in body.eqns for v in e.outputs}
        if comments is None:
            comments = dict(zip(body.eqns, text_of_body(fused, text)))
        names = self._names(fused)
        groups: dict = {}
        for r, o in zip(body.outputs, fused.outputs):
            e = producer.get(r)
            kind = REDUCTIONS.get(e.prim.name) if e is not None else None
            axes = tuple(sorted(e.params["axes"])) if kind else None
            if o in part_names:
                groups.setdefault(None, []).append((r, o, "acc"))
                continue
            if kind and 0 in axes:
                raise NotRows("a reduction over the batch axis")
            groups.setdefault(axes, []).append((r, o, kind))
        ivars = [f"i{d}" for d in range(len(domain))]
        idx = tuple(Affine(v, 1, 0, 0, n - 1) for v, n in zip(ivars, domain))

        def write(o, sub):
            if o in part_names:             # an accumulator's partial sums
                name, dims = part_names[o]
                if dims is not None:        # (in shared memory, rows padded)
                    return f"{name}[{_linear(sub[1:], dims)}]"
                return f"{name}[{', '.join(sub)}]"
            name = self.names[o]
            if name in self.shared_rows:
                return f"{name}[{_linear(sub[1:], self.shared_rows[name])}]"
            step = "_t, " if name in self.stepped else ""
            if name in self.mirrors:           # (both: the copy, then the stacked array)
                mirror, dims = self.mirrors[name]
                return f"{mirror}[{_linear(sub[1:], dims)}] = {name}[{step}{', '.join(sub)}]"
            return f"{name}[{step}{', '.join(sub)}]"

        def emitter():
            return self._emitter(names, producer, comments)

        def pointwise(em, roots, idx=idx, ivars=ivars):
            values = {}                     # (result -> the local or literal holding it)
            for r, o, kind in roots:
                if kind == "acc":
                    val = em.value(producer[r].inputs[0], idx, 0)
                    em.emit(0, f"{write(o, ivars)} += {val}")
                else:
                    if tuple(o.shape) != domain:
                        raise NotRows("a result of another shape than its domain")
                    values[o] = em.value(r, idx, 0)
                    em.emit(0, f"{write(o, ivars)} = {values[o]}")
            return values

        pointwise_roots = groups.pop(None, [])
        lines, widest = [], 1
        self.merge_info = self.merged_pointwise = None
        if not groups:
            em = emitter()
            pointwise(em, pointwise_roots)
            size = int(np.prod(domain[1:]))
            lines.append(f"for _e in range(_tid, {size}, _nt):")
            lines += cg._decode("_e", domain[1:], ivars[1:], "    ")
            lines += ["    " + s for s in em.lines]
            target = self.merge_target
            if target is not None and int(np.prod(target.dims)) == size:
                # (the same stage for the thread holding the previous reduction's kept
                # element of the same linear index, reading its results there from
                # registers: _merge_pointwise; its indices named apart from the
                # reduction's, which a reduction joining the loop after it reads)
                em = emitter()
                em.registers = target.results
                jvars = ivars[:1] + [f"_pi{d}" for d in range(1, len(domain))]
                jdx = tuple(Affine(v, 1, 0, 0, n - 1) for v, n in zip(jvars, domain))
                zero = frozenset(v for v, n in zip(jvars[1:], domain[1:]) if n == 1)
                em.own = (_terms(jdx[1:], domain[1:], zero), zero)
                values = pointwise(em, pointwise_roots, jdx, jvars)
                # (and its own results, for an elementwise stage after it in the same
                # lines: those held in locals)
                held = {self.names[a]: (text, tuple(int(d) for d in a.shape[1:]))
                        for o, text in values.items() if re.fullmatch(r"[A-Za-z_]\w*", text)
                        for a in self._aliases(o) if a in self.names}
                self.merged_pointwise = (cg._decode(target.kept, domain[1:], jvars[1:], "")
                                         + em.lines, held)
            return lines, size
        for g, (axes, roots) in enumerate(groups.items()):
            em = emitter()
            accs = [f"_a{k}_{g}_{j}" for j in range(len(roots))]
            for (r, o, kind), acc in zip(roots, accs):
                val = em.value(producer[r].inputs[0], idx, 0)
                cg._reduce_step(em, kind, acc, val, o.dtype)
            if g == 0:
                pointwise(em, pointwise_roots)
            kept = [d for d in range(1, len(domain)) if d not in axes]
            Kr = int(np.prod([domain[d] for d in kept]))
            R = int(np.prod([domain[d] for d in axes]))
            for r, o, _ in roots:
                if tuple(o.shape) != tuple(domain[d] for d in [0] + kept):
                    raise NotRows("a reduction whose result is not its kept axes")
            kept_dims, kept_vars = [domain[d] for d in kept], [ivars[d] for d in kept]
            out_sub = ["i0"] + kept_vars
            # S threads per kept element when there are few kept elements and long sums
            # (each takes every S-th reduced element; the S partials combined after a
            # barrier, in a fixed order)
            S, T = 1, self.threads
            need = sum(np.dtype(o.dtype).itemsize for _, o, _ in roots) * Kr
            # (neighbouring threads read neighbouring elements: along the kept axes, or,
            # when the innermost axis is summed, along it)
            inner = len(domain) - 1 in axes
            while Kr * S * 2 <= T and R >= 16 * S and (
                    self._shuffled(roots, S * 2, inner) or need * S * 2 <= self.room):
                S *= 2
            shuffled = S > 1 and self._shuffled(roots, S, inner)
            decode = cg._decode("_kk" if S > 1 else "_k", kept_dims, kept_vars, "    ")
            if len(groups) == 1 and (shuffled or S == 1):
                # (the lines every thread runs before its share, and how a later stage
                # reads each result at the element's own index: see _merged)
                sub = (idx[0],) + tuple(idx[d] for d in kept)
                self.merge_info = _Merge(
                    len(decode) + (3 if shuffled else 1),
                    [(emitter().read(self.names[o], sub), acc)
                     for (r, o, kind), acc in zip(roots, accs)],
                    "_kk" if shuffled else "_k",
                    {self.names[a]: (acc, tuple(int(d) for d in a.shape[1:]))
                     for (r, o, kind), acc in zip(roots, accs) for a in self._aliases(o)
                     if a in self.names},
                    "        " if shuffled else "    ", sub=sub, dims=tuple(kept_dims),
                    tail=len(roots) + (1 if shuffled else 0))
            if shuffled:
                lines += self._shuffle_stage(em, roots, accs, write, out_sub, Kr, S, R,
                                             axes, domain, ivars, decode)
                widest = max(widest, -(-Kr * S // WARP) * WARP)
                continue
            if S > 1:
                self.room -= need * S
            lines.append(f"for _k in range(_tid, {Kr * S}, _nt):")
            if S > 1 and inner:
                lines += [f"    _kk = {cg.floordiv('_k', S)}", f"    _q = _k - _kk * {S}"]
            elif S > 1:
                lines += [f"    _q = {cg.floordiv('_k', Kr)}", f"    _kk = _k - _q * {Kr}"]
            lines += decode
            lines += [f"    {acc} = {loops._init(kind, r)}"
                      for (r, o, kind), acc in zip(roots, accs)]
            lines += ["    " + s for s in _share_of(R, S)]
            lines += cg._decode("_r", [domain[d] for d in axes], [ivars[d] for d in axes],
                                "        ")
            lines += ["        " + s for s in em.lines]
            if S == 1:
                lines += [f"    {write(o, out_sub)} = {acc}"
                          for (r, o, kind), acc in zip(roots, accs)]
            else:
                for (r, o, kind), acc in zip(roots, accs):
                    self.head.append(f"{acc}_s = cuda.shared.array({Kr * S}, "
                                     f"{cg._numba_type(o.dtype)})")
                    lines.append(f"    {acc}_s[_k] = {acc}")
                lines += ["cuda.syncthreads()", f"for _k in range(_tid, {Kr}, _nt):"]
                lines += cg._decode("_k", kept_dims, kept_vars, "    ")
                first, other = (f"_k * {S}", f"_k * {S} + _q") if inner else \
                    ("_k", f"_q * {Kr} + _k")
                for (r, o, kind), acc in zip(roots, accs):
                    lines += [f"    {acc} = {acc}_s[{first}]", f"    for _q in range(1, {S}):"]
                    lines += ["        " + line for line in cg._steps(
                        kind, acc, acc, f"{acc}_s[{other}]", o.dtype)]
                    lines += [f"    {write(o, out_sub)} = {acc}"]
            widest = max(widest, Kr * S)
        return lines, widest

    def _merged(self, last, lines, info):
        """The lines of two consecutive reduction stages as one loop, without the
        barrier between them, or None (``last``: the first's start in the step, its
        ``merge_info``, its lines, and the lines that run before it since the last
        barrier: the step's early copies).  Both must give each thread the same kept
        elements (the same lines before its share: the same loop, threads per element
        and decoding), and the second must read the first's results only at the
        element's own index: every thread of the element then holds that value in its
        accumulator (S = 1: its own; shuffled: each lane after the butterfly), which
        the second reads instead.  Neither may write what the other (or what runs
        before the first) reads or writes, in any of its names: aliases in the kernel,
        parameters on the same array.
        G4's forward step: its maximum and its sum of exponentials.  The first's lines
        writing its results move after the second's loop
        (neither touches what the other writes): a store to global memory between the
        two loops would keep the compiler from reusing the first's loads of the same
        elements in the second (G4: the 16 elements of the transition matrix each lane
        reads, loaded again)."""
        start, mine, prev, before = last
        n = mine.prefix
        if info is None or info.prefix != n or lines[:n] != prev[:n] or any(
                "syncthreads" in line for line in prev + lines):
            return None
        body = lines[n:]
        for text, acc in mine.binds:
            at = re.compile(r"(?<![\w.])" + re.escape(text))
            body = [at.sub(acc, line) for line in body]
        if not self._apart(before + prev, body):
            return None
        if mine.tail:       # (the first's stores after the second's loads: see below)
            return prev[:-mine.tail] + body[:-info.tail] + prev[-mine.tail:] + \
                body[-info.tail:]
        return prev + body

    def _merge_pointwise(self, last, lines):
        """The lines of a reduction stage (``last``, as for ``_merged``; with the
        reductions merged into it) and of the elementwise stage after it as one loop, or
        None: the thread writing a kept element's results (the first lane of its
        warp's, or its only thread) also computes the elementwise stage's element of the
        same linear index (``lines``: its per-element code, the reduction's results read
        there from the locals that hold them).  The elementwise stage must read nothing
        that the reduction's stage (or what runs before it since the last barrier)
        writes, in any of its names, and write nothing that they read or write.
        G4's forward step: the new carry, log of the sum + the maximum + the step's
        scores, written by the lane that has just summed it (with the carry's row double
        buffered, ``_double``): 1 barrier a step, not 2."""
        start, info, prev, before = last
        if len(prev[-1]) - len(prev[-1].lstrip()) != len(info.indent) or \
                not self._apart(before + prev, lines):
            return None
        return prev + [info.indent + line for line in lines]

    def _apart(self, first, second) -> bool:
        """Whether lines ``second`` read nothing that lines ``first`` write and write
        nothing that they read or write, in any name of the memory (``_memory``): the
        condition for running them in one loop, no barrier between."""
        memory = self._memory()
        written = [_written(first, memory), _written(second, memory)]
        read = [_subscripted(first, memory), _subscripted(second, memory)]
        return not (written[0] & read[1] or written[1] & (read[0] | written[0]))

    def _memory(self) -> dict:
        """Kernel name -> the memory it names: a shared array's aliases (``k = b``)
        and parameters passed the same host array (or views of it) are one."""
        host = {}           # (another name, a reshape or a view of the same array)
        for line in self.ctx.lines:
            m = re.fullmatch(r"(\w+) = (\w+)|(\w+) = _d\.(?:reshape|view)\((\w+),.*",
                             line.strip())
            if m:
                host[m.group(1) or m.group(3)] = m.group(2) or m.group(4)

        def root(name, alias):
            seen = set()
            while name in alias and name not in seen:
                seen.add(name)
                name = alias[name]
            return name
        memory = {}
        for param, arg in zip(self.params, self.args):
            base = re.sub(r"^_d\.(?:reshape|view)\(", "", arg)
            memory[param] = "host:" + root(re.match(r"\w+", base).group(0), host)
        kernel = {}
        for line in self.head:
            m = re.fullmatch(r"(\w+) = (\w+)", line.strip())
            if m:
                kernel[m.group(1)] = m.group(2)
        for name in kernel:
            memory[name] = memory.get(root(name, kernel), root(name, kernel))
        return memory

    def _shuffled(self, roots, S, inner) -> bool:
        """Whether a reduction's ``S`` partials per kept element combine across the lanes
        of a warp (``_shuffle_stage``): ``S`` adjacent lanes, at most a warp, of a block
        of whole warps (or, under the simulator, of a power of two threads), values
        a shuffle moves (``cudagen.shuffles``, which ``GRADC_CUDA_SHUFFLE=0`` turns
        off).  When the kept axes are the innermost, lanes next to each other read S
        rows of 32 / S kept elements: only where those runs fill 32-byte sectors."""
        T = self.threads
        dtypes = [o.dtype for _, o, _ in roots]
        if not cg.shuffles(dtypes) or S > min(WARP, T) or \
                not (T % WARP == 0 or T & (T - 1) == 0):
            return False
        sizes = {np.dtype(d).itemsize for d in dtypes}
        return inner or (WARP // S) * min(sizes) >= 32

    def _shuffle_stage(self, em, roots, accs, write, out_sub, Kr, S, R, axes, domain,
                       ivars, decode) -> list:
        """A reduction stage whose ``S`` threads per kept element are ``S`` adjacent
        lanes of a warp: each accumulates every S-th reduced element, then the S
        partials combine through the warp's registers (``_d.shfl_xor``, a butterfly:
        every lane ends with the same value) and the first lane writes it.  No shared
        memory, no barrier and no second loop, where the combine in shared memory took
        a barrier and a pass of its own (G4's forward scan: 5 barriers a step -> 3).
        The loop over kept elements runs over whole warps (threads past the last kept
        element read nothing and write nothing, but take part in the shuffles).
        ``decode``: the lines naming the kept element's indices from ``_kk``."""
        n = Kr * S
        padded = -(-n // WARP) * WARP
        lines = [f"for _k in range(_tid, {padded}, _nt):",
                 f"    _kk = {cg.floordiv('_k', S)}", f"    _q = _k - _kk * {S}"]
        lines += decode
        lines += [f"    {acc} = {loops._init(kind, r)}"
                  for (r, o, kind), acc in zip(roots, accs)]
        body = _share_of(R, S)
        body += cg._decode("_r", [domain[d] for d in axes], [ivars[d] for d in axes],
                           "    ")
        body += ["    " + s for s in em.lines]
        if padded != n:
            lines += [f"    if _k < {n}:"] + ["        " + s for s in body]
        else:
            lines += ["    " + s for s in body]
        # (every lane ends with the same value: a later stage in the same loop reads
        # each lane's own, _merged)
        lines += ["    " + s for s in cg.butterfly(
            [(acc, kind, o.dtype) for (r, o, kind), acc in zip(roots, accs)], S, lane="_q")]
        lines.append("    if _q == 0:" if padded == n else f"    if _q == 0 and _k < {n}:")
        lines += [f"        {write(o, out_sub)} = {acc}" for (r, o, kind), acc in zip(roots, accs)]
        return lines

    def _finish_accumulator(self, j, parts):
        """Carry ``j``'s final value: the body's update equation applied to the carry's
        initial value and, for each of its terms, the sum over the batch of every
        block's partial sums (``parts``: term -> the (B, ...) array of them)."""
        ctx, eqn, body = self.ctx, self.eqn, self.body
        update, _ = self.acc[j]
        init, out = eqn.inputs[self.n_consts + j], eqn.outputs[j]
        seeded = len(parts) == 1 and set(parts) <= self.seeded
        if (ctx.zero_fill(init) or seeded) and len(parts) == 1 and \
                set(parts) <= self.direct:
            (e, part), = parts.items()
            if np.dtype(e.dtype) == np.dtype(out.dtype) and \
                    int(np.prod(e.shape)) == int(np.prod(out.shape)):
                # (from zeros, or from the initial value it started as, a scatter's one
                # array is the carry's final value)
                start = f"{ctx.names[init]}: no add" if seeded else "zeros" \
                    if isinstance(init, Lit) else f"{ctx.names[init]}, zeros"
                ctx.lines.append(f"# {ctx.names[out]}: what the rows added in place (from "
                                 f"{start}{'' if seeded else ': neither filled nor added'})")
                self._result(out, part if tuple(e.shape) == tuple(out.shape) else
                             f"_d.reshape({part}, {tuple(out.shape)!r})")
                return
        if ctx.zero_fill(init) and len(parts) == 1 and not set(parts) & self.direct:
            # (from zeros, a tree of adds and reshapes of one term is that term's sum
            # over the batch, reshaped: no fill, no add; a term broadcast into the
            # carry needs both)
            (e, part), = parts.items()
            if np.dtype(e.dtype) == np.dtype(out.dtype) and \
                    int(np.prod(e.shape)) == int(np.prod(out.shape)):
                shape = (self.B,) + tuple(out.shape)
                if tuple(e.shape) != tuple(out.shape):
                    view = ctx.temp()
                    ctx.lines.append(f"{view} = _d.reshape({part}, {shape!r})")
                    part = view
                start = "zeros" if isinstance(init, Lit) else f"{ctx.names[init]}, zeros"
                ctx.lines.append(f"# {ctx.names[out]}: the sum of the rows' partials (from "
                                 f"{start}: neither filled nor added)")
                self._sum_rows(part, shape, 0, out)
                return
        ctx.materialize(init)
        new = {body.inputs[self.n_consts + j]: init}
        for e, part in parts.items():
            total = Var(tuple(e.shape), e.dtype)
            ctx.names[total] = ctx.temp()
            if e in self.direct:              # (the rows' sum already)
                ctx.lines.append(f"{ctx.names[total]} = {part}")
                ctx.place[total] = "dev"
            else:
                self._sum_rows(part, (self.B,) + tuple(e.shape), 0, total)
            new[e] = total
        finish = update.replace(inputs=tuple(new.get(v, v) for v in update.inputs),
                                outputs=(eqn.outputs[j],))
        text = self.text_of[list(body.eqns).index(update)]
        cg._lower_eqn(ctx, finish, text)


    def _sum_rows(self, arr, shape, axis, out):
        """``out`` (named already, or a result of the scan) = the sum of device array
        ``arr`` (of ``shape``) over its batch axis ``axis``, by the target's reduction."""
        from ..prims.reduce import reduce_sum_p
        ctx = self.ctx
        whole = Var(tuple(shape), out.dtype)
        ctx.names[whole] = arr
        ctx.place[whole] = "dev"
        red = make_eqn(reduce_sum_p, [whole], [out], {"axes": (axis,)})
        cg._lower_eqn(ctx, red, [f"{ctx.names[out]} = reduce_sum[axes=({axis},)] {arr}"])


def _in_place(e, carry, out, aliases) -> bool:
    """Whether stage ``e`` (a fused equation) may write its result ``out``, the new
    value of ``carry``, over the carry: a map (no reduction) over the carry's own
    shape, which reads none of the carry's other names (``aliases``: its reshapes),
    whose results other than ``out`` do not depend on the carry, and in which
    everything depending on the carry is elementwise on that shape (so each element of
    the carry is read only by the thread computing the same element of ``out``, and
    before that thread writes it)."""
    if e.prim.name != "fused" or carry not in e.inputs or \
            any(a in e.inputs for a in aliases if a is not carry) or \
            tuple(int(d) for d in e.params["domain"]) != tuple(carry.shape) or \
            tuple(out.shape) != tuple(carry.shape):
        return False
    body = e.params["body"]
    tainted = {body.inputs[list(e.inputs).index(carry)]}
    for q in body.eqns:
        if any(isinstance(v, Var) and v in tainted for v in q.inputs):
            if q.prim.name not in ELEMENTWISE or \
                    any(tuple(v.shape) != tuple(carry.shape) for v in q.outputs):
                return False
            tainted.update(q.outputs)
    return out in e.outputs and all(r not in tainted for r, o in zip(body.outputs,
                                                                   e.outputs) if o is not out)


def _as_fused(eqn):
    """``eqn`` as a fused equation (itself, or a fused equation of one for an
    elementwise or structural equation), None if it is neither."""
    if eqn.prim.name == "fused":
        return eqn
    if not cg._kernel_alone(eqn):
        return None
    return cg._fused_of_one(eqn)


def _merge_into_reductions(eqns, texts, comments_of):
    """``eqns`` (and their texts) with each elementwise stage whose results the next
    stage reduces, over the same domain, merged into that stage: the reduction computes
    the elements as it sums them (and writes them, where they are needed as well),
    instead of reading them back from memory after a barrier.  ``comments_of`` gets the
    merged equations' comments."""
    from ..passes.fuse import ELEMENTWISE, fused_p
    out, out_texts = [], []
    k = 0
    while k < len(eqns):
        e1, t1 = eqns[k], texts[k]
        e2 = eqns[k + 1] if k + 1 < len(eqns) else None
        merged = None
        if e2 is not None and e1.prim.name == "fused" and e2.prim.name == "fused" and \
                _reshape_source(e1) is None and \
                tuple(e1.params["domain"]) == tuple(e2.params["domain"]):
            merged = _merged(e1, e2, ELEMENTWISE, fused_p)
        if merged is None:
            out.append(e1)
            out_texts.append(t1)
            k += 1
            continue
        c1 = comments_of.get(e1) or dict(zip(e1.params["body"].eqns, text_of_body(e1, t1)))
        c2 = comments_of.get(e2) or dict(zip(e2.params["body"].eqns,
                                             text_of_body(e2, texts[k + 1])))
        fused, renamed = merged
        comments_of[fused] = {q: c1.get(q, []) for q in e1.params["body"].eqns} | \
            {new: c2.get(old, []) for old, new in renamed.items()}
        eqns = eqns[:k] + [fused] + eqns[k + 2:]     # (and perhaps into the next one)
        texts = texts[:k] + [texts[k + 1]] + texts[k + 2:]
    return out, out_texts


def _merged(e1, e2, elementwise, fused_p):
    """``(fused equation, {e2's body equation: its copy})`` computing ``e1`` (elementwise
    alone) inside ``e2`` (reductions over axes other than the batch axis) when ``e2``
    reads a result of ``e1`` at each of its own elements; else None."""
    b1, b2 = e1.params["body"], e2.params["body"]
    domain = tuple(e1.params["domain"])
    if any(q.prim.name in REDUCTIONS for q in b1.eqns):
        return None
    reds = [q for q in b2.eqns if q.prim.name in REDUCTIONS]
    if not reds or any(0 in q.params["axes"] for q in reds):
        return None
    if any(tuple(o.shape) != domain for o in e1.outputs):
        return None
    root_of = dict(zip(e1.outputs, b1.outputs))
    sub = {}
    for bv, ov in zip(b2.inputs, e2.inputs):
        if isinstance(ov, Var) and ov in root_of:
            sub[bv] = root_of[ov]
    if not sub:
        return None
    # (read where it is computed: by elementwise equations and the reductions alone)
    for q in b2.eqns:
        if any(isinstance(v, Var) and v in sub for v in q.inputs) and \
                q.prim.name not in elementwise and q.prim.name not in REDUCTIONS:
            return None
    inputs, body_inputs = list(e1.inputs), list(b1.inputs)
    outer_of = {}
    for bv, ov in zip(b1.inputs, e1.inputs):
        if isinstance(ov, Var):
            outer_of.setdefault(ov, bv)
    for bv, ov in zip(b2.inputs, e2.inputs):
        if bv in sub:
            continue
        if isinstance(ov, Var) and ov in outer_of:
            sub[bv] = outer_of[ov]
        else:
            inputs.append(ov)
            body_inputs.append(bv)
    if any(isinstance(r, Var) and r in sub for r in b2.outputs):
        return None                 # (an operand handed through: it would dangle)
    renamed = {}
    for q in b2.eqns:
        renamed[q] = q.replace(inputs=tuple(sub.get(v, v) if isinstance(v, Var) else v
                                            for v in q.inputs))
    body = Graph(tuple(body_inputs), tuple(b1.eqns) + tuple(renamed.values()),
                 tuple(b1.outputs) + tuple(b2.outputs))
    fused = make_eqn(fused_p, inputs, list(e1.outputs) + list(e2.outputs),
                     {**e2.params, "body": body})
    return fused, renamed


def _inlined(eqns):
    """``eqns`` with each fused equation replaced by its body's equations (operands and
    results renamed to the outer values); None if a fused result is not computed in its
    body (an operand handed through)."""
    out = []
    for q in eqns:
        if q.prim.name != "fused":
            out.append(q)
            continue
        fb = q.params["body"]
        if any(not isinstance(r, Var) or r in fb.inputs for r in fb.outputs) or \
                len(set(fb.outputs)) != len(fb.outputs):
            return None
        sub = dict(zip(fb.inputs, q.inputs)) | dict(zip(fb.outputs, q.outputs))
        for inner in fb.eqns:
            out.append(inner.replace(
                inputs=tuple(sub.get(v, v) if isinstance(v, Var) else v
                             for v in inner.inputs),
                outputs=tuple(sub.get(v, v) for v in inner.outputs)))
    return out


def _scalar_fused(eqn):
    """A rank-0 fused (over no axes: no reductions) or elementwise equation as a fused
    equation, else None."""
    from ..passes.fuse import ELEMENTWISE
    if eqn.prim.name == "fused":
        return eqn if tuple(eqn.params["domain"]) == () else None
    if len(eqn.outputs) == 1 and eqn.prim.name in ELEMENTWISE:
        return cg._fused_of_one(eqn)
    return None


def _gather_as_fused(eqn):
    """A ``gather`` through index arrays as a fused equation of one (a map stage over
    its window: ``_RowEmitter._gather``), None for any other."""
    x, *arrays = eqn.inputs
    if not arrays or not isinstance(x, Var) or not x.ndim or not eqn.outputs[0].ndim or \
            any(e[0] == "n" for e in eqn.params["spec"]):
        return None
    return _map_stage(eqn)


def _map_stage(eqn):
    """Indexing equation ``eqn`` as a fused equation of one over its result (the row
    emitter computes it element by element)."""
    from ..passes.fuse import fused_p
    ins = list(dict.fromkeys(v for v in eqn.inputs if isinstance(v, Var)))
    body = Graph(tuple(ins), (eqn,), tuple(eqn.outputs))
    return make_eqn(fused_p, ins, eqn.outputs, {"body": body,
                                                 "domain": tuple(eqn.outputs[0].shape)})


def _arange_axis(a):
    """The one axis along which literal index array ``a`` is 0, 1, 2, ... (its others
    of length 1; -1 for a single 0), or None."""
    if not isinstance(a, Lit) or not a.ndim:
        return None
    flat = np.asarray(a.value).reshape(-1)
    along = [d for d, m in enumerate(a.shape) if m != 1]
    if len(along) > 1 or not np.array_equal(flat, np.arange(flat.size)):
        return None
    return along[0] if along else -1


def _one_hot(eqn):
    """How ``_RowEmitter._scatter`` computes ``scatter_add`` equation ``eqn`` at an
    element of its result, or None if it cannot: every window axis of index arrays
    pinned by an ``arange`` (the examples') or of length 1, every slice of step 1, so
    that each result element receives at most one value (no sum of repeated indices).
    ``{"window": its shape, "pinned": window axis -> result axis, "positions":
    ("slice", window axis, start, length, result axis) (a step of 1) | ("int", i,
    result axis) | ("array", k, its window axes, n, result axis)}``."""
    from .indexing import index_map
    v, *arrays = eqn.inputs
    shape, spec = tuple(eqn.params["shape"]), tuple(eqn.params["spec"])
    if not arrays or any(e[0] == "n" for e in spec) or not isinstance(v, Var):
        return None
    window, positions = index_map(shape, spec, [tuple(a.shape) for a in arrays])
    if tuple(window) != tuple(v.shape):
        return None
    pinned, out = {}, []
    for d, p in enumerate(positions):
        if p[0] == "array":
            _, k, axes, n = p
            along = _arange_axis(arrays[k])
            # (the whole axis, and a window axis no other arange pins: each result
            # element inverts to one window element; an arange shorter than the axis
            # would leave elements without one, two on one window axis a diagonal)
            if along is not None and along >= 0 and int(arrays[k].shape[along]) == n \
                    and axes[along] not in pinned:
                pinned[axes[along]] = d
                continue
            out.append(("array", k, axes, n, d))
        elif p[0] == "slice":
            _, a, start, step = p
            if step != 1:
                return None
            out.append(("slice", a, start, window[a], d))
        else:
            out.append(("int", p[1], d))
    block = {a for p in positions if p[0] == "array" for a in p[2] if a is not None}
    if any(a not in pinned and window[a] != 1 for a in block):
        return None
    return {"window": tuple(window), "pinned": pinned, "positions": out}


def _scattered(eqn):
    """``(window, positions)`` (``indexing.index_map``'s) of ``scatter_add`` equation
    ``eqn`` if ``_Rows._scatter_stage`` can add its value in place as an accumulator's
    term: its value a Var of the window's shape (whose first axis the stage requires to
    be the batch), no new axes, float32 or float64 (atomic adds); else None."""
    from .indexing import index_map
    v, *arrays = eqn.inputs
    spec = tuple(eqn.params["spec"])
    if not isinstance(v, Var) or not v.ndim or any(e[0] == "n" for e in spec) or \
            np.dtype(v.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)) or \
            np.dtype(eqn.outputs[0].dtype) != np.dtype(v.dtype):
        return None
    window, positions = index_map(tuple(eqn.params["shape"]), spec,
                                  [tuple(a.shape) for a in arrays])
    window = tuple(int(n) for n in window)
    if window != tuple(int(d) for d in v.shape):
        return None
    return window, positions


def _scatter_as_fused(eqn):
    """A ``scatter_add`` that ``_one_hot`` can compute element by element as a fused
    equation of one (a map stage over its result), None for any other."""
    return None if _one_hot(eqn) is None else _map_stage(eqn)


def _einsum_as_fused(eqn):
    """A two-operand ``einsum`` as a fused equation: both operands broadcast over the
    letters (the output's, then the summed ones), multiplied, and summed.  A summed
    letter leading both operands (a batch the contraction sums over: what reverse mode
    makes of ``x @ W`` for ``W``) goes first, so that the sum is over axis 0."""
    from ..passes.fuse import fused_p
    from ..prims.elementwise import mul_p
    from ..prims.linalg import parse_spec
    from ..prims.reduce import reduce_sum_p
    from ..prims.shape import broadcast_p, transpose_p
    x, y = eqn.inputs
    out = eqn.outputs[0]
    if not (np.dtype(x.dtype) == np.dtype(y.dtype) == np.dtype(out.dtype)):
        return None
    sa, sb, so = parse_spec(eqn.params["spec"])
    summed = [c for c in dict.fromkeys(sa + sb) if c not in so]
    letters = list(so) + summed
    if sa and sb and sa[0] == sb[0] and sa[0] in summed:
        letters = [sa[0]] + [c for c in letters if c != sa[0]]
    size = dict(zip(sa, x.shape)) | dict(zip(sb, y.shape))
    domain = tuple(int(size[c]) for c in letters)
    eqns, operands = [], []
    for v, s in ((x, sa), (y, sb)):
        if s:
            order = sorted(range(len(s)), key=lambda k: letters.index(s[k]))
            if order != list(range(len(s))):
                t = Var(tuple(v.shape[k] for k in order), out.dtype)
                eqns.append(make_eqn(transpose_p, [v], [t], {"perm": tuple(order)}))
                v = t
            dims = tuple(sorted(letters.index(c) for c in s))
        else:
            dims = ()
        b = Var(domain, out.dtype)
        eqns.append(make_eqn(broadcast_p, [v], [b], {"shape": domain, "dims": dims}))
        operands.append(b)
    product = Var(domain, out.dtype)
    eqns.append(make_eqn(mul_p, operands, [product]))
    root = product
    if summed:
        axes = tuple(k for k, c in enumerate(letters) if c in summed)
        kept = tuple(int(size[c]) for c in letters if c not in summed)
        root = Var(kept, out.dtype)
        eqns.append(make_eqn(reduce_sum_p, [product], [root], {"axes": axes}))
        if [c for c in letters if c not in summed] != list(so):
            return None            # (the kept letters out of the output's order)
    ins = list(dict.fromkeys(v for v in (x, y) if isinstance(v, Var)))
    body = Graph(tuple(ins), tuple(eqns), (root,))
    return make_eqn(fused_p, ins, [out], {"body": body, "domain": domain})


def _row_bytes(shape, dtype) -> int:
    """The bytes of one row (everything but the leading axis) of an array."""
    return max(1, int(np.prod(shape[1:]))) * np.dtype(dtype).itemsize


_SHARE = re.compile(r"^(\s*)for (\w+) in range\(_tid, (\d+), _nt\):$")


def _share_of(R, S) -> list:
    """The loop over a thread's share of ``R`` reduced elements, every ``S``-th from its
    ``_q`` (the element ``_r`` for the lines after it, indented by four).  With a
    constant trip count LLVM unrolls it: each thread's loads issued ``cg.UNROLL`` at a
    time, not one by one."""
    if S > 1 and R % S == 0 and (R // S) % cg.UNROLL == 0:
        n, u = R // S // cg.UNROLL, cg.UNROLL
        return [f"for _u in range({n}):", f" for _v in range({u}):",
                f"    _r = (_u * {u} + _v) * {S} + _q"]
    if S > 1 and R % S == 0:
        return [f"for _u in range({R // S}):", f"    _r = _u * {S} + _q"]
    return [f"for _r in range(_q, {R}, {S}):" if S > 1 else f"for _r in range({R}):"]


def _subscripted(lines, memory) -> set:
    """The memory of every array the lines subscript (read or written, atomically too;
    not in comments)."""
    return {memory.get(n, n) for line in lines
            for n in re.findall(r"(\w+)\[|cuda\.atomic\.\w+\((\w+),", line.split("#")[0])
            for n in n if n}


def _written(lines, memory) -> set:
    """The memory of every array the lines assign to (``a[...] = ``, ``+=``, chained,
    ``cuda.atomic.add(a, ...)``)."""
    return {memory.get(n, n) for line in lines
            for n in re.findall(r"(\w+)\[[^\]]*\]\s*\+?=(?!=)|cuda\.atomic\.\w+\((\w+),",
                                line.split("#")[0]) for n in n if n}


def _unread_shared(lines: list) -> list:
    """The kernel body ``lines`` without the shared arrays that nothing reads and the
    stores into them: rows that a stage joining the loop of the stage writing them
    reads from registers instead (the CRF's maximum, and the copy of its stacked sum
    of exponentials; ``_merge_pointwise``).  A store alone on its line becomes
    ``pass``; one of a chain (``a[i] = b[j] = v``) leaves the chain."""
    import ast
    lines = [part for line in lines for part in line.split("\n")]    # (a line each)
    tree = ast.parse("\n".join(lines))
    made = {n.targets[0].id: n for n in ast.walk(tree) if isinstance(n, ast.Assign) and
            len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) and
            isinstance(n.value, ast.Call) and ast.unparse(n.value.func) == "cuda.shared.array"}
    stores = {}                      # (id of a store's Name node -> its statement)
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                    stores[id(t.value)] = n
    unread = set(made)
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id in unread and id(n) not in stores and \
                n is not made[n.id].targets[0]:
            unread.discard(n.id)
    if not unread:
        return lines
    out = list(lines)
    for stmt in {id(s): s for s in stores.values()}.values():
        dead = [t for t in stmt.targets if isinstance(t, ast.Subscript) and
                isinstance(t.value, ast.Name) and t.value.id in unread]
        if not dead:
            continue
        assert stmt.lineno == stmt.end_lineno
        k = stmt.lineno - 1
        indent = out[k][:len(out[k]) - len(out[k].lstrip())]
        kept = [ast.unparse(t) for t in stmt.targets if t not in dead]
        out[k] = indent + (" = ".join(kept + [ast.unparse(stmt.value)]) if kept else "pass")
    drop = {made[name].lineno - 1 for name in unread}
    return [line for k, line in enumerate(out) if k not in drop]


def _share_loops(lines: list) -> list:
    """Each thread's share of a row, ``for _e in range(_tid, N, _nt)``, as a ``while``
    loop (``_e = _tid``, then ``_e += _nt`` after the body).  Numba's ``range`` with a
    step known only when the kernel runs divides to count the trips at every entry to
    the loop (a 64-bit division with LLVM's 32-bit bypass), and a scan's step enters
    one such loop a stage: 7 divisions a step in G4's forward scan; LLVM also copied
    the loops for their trip counts.  As ``while`` loops, G4's forward and backward
    scans compile to 981 and 706 lines of PTX (2387 and 2600 before) and 70 and 80
    registers (76 and 96), with no division left in them.  (The bodies have no
    ``continue``, which would skip the increment.)"""
    out, k = [], 0
    while k < len(lines):
        m = _SHARE.match(lines[k])
        if m is None:
            out.append(lines[k])
            k += 1
            continue
        indent, var, n = m.groups()
        end = k + 1
        while end < len(lines) and (not lines[end].strip() or
                                    len(lines[end]) - len(lines[end].lstrip()) > len(indent)):
            end += 1
        body = lines[k + 1:end]
        assert not any(line.strip() == "continue" for line in body)
        out += [f"{indent}{var} = _tid", f"{indent}while {var} < {n}:"] + \
            _share_loops(body) + [f"{indent}    {var} += _nt"]
        k = end
    return out


def _row_threads() -> int:
    """``GRADC_CUDA_ROW_THREADS`` (0 when unset): a multiple of 32 up to 1024."""
    text = os.environ.get("GRADC_CUDA_ROW_THREADS", "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) % 32 or not 32 <= int(text) <= 1024:
        from ..errors import ArgumentError
        raise ArgumentError(f"gradc: GRADC_CUDA_ROW_THREADS={text!r} should be a multiple "
                            "of 32 from 32 to 1024 (threads per block of a row kernel)")
    return int(text)


def _padded(shape) -> tuple:
    """The shape of a per-row accumulator in shared memory: rows of a multiple of 32
    elements get ``PAD`` more.  A stage summing its last axis gives S neighbouring
    threads one kept element (its index the row) and the S residues of the summed
    index (its column): unpadded, a warp's 32 threads touched S banks, each 32 / S times.
    With rows PAD = 4 elements longer they touch 32 different banks when S = 4 (G4's
    backward scan), at most two threads share a bank when S = 2 or 8, four when S = 1."""
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2 and shape[-1] % 32 == 0:
        return shape[:-1] + (shape[-1] + PAD,)
    return shape


def _terms(idx, dims, zero=frozenset()):
    """The C-order linear position of subscripts ``idx`` (``Affine``) over ``dims``, as
    (its terms ``{(index name, multiplier)}``, its constant), the indices named in
    ``zero`` taken as 0 (a stage's indices over axes of extent 1); None when a subscript
    is not affine."""
    terms, const, stride = {}, 0, 1
    for c, n in zip(reversed(idx), reversed(dims)):
        if not isinstance(c, Affine):
            return None
        if c.sym is not None and c.mult and c.sym not in zero:
            terms[c.sym] = terms.get(c.sym, 0) + c.mult * stride
        const += c.offset * stride
        stride *= int(n)
    return frozenset((k, m) for k, m in terms.items() if m), const


def _linear(names, dims) -> str:
    """The C-order linear index of ``names`` over ``dims``."""
    if not names:
        return "0"
    text = names[0]
    for name, n in zip(names[1:], dims[1:]):
        text = f"({text}) * {n} + {name}"
    return text


def _reshape_source(eqn):
    """The operand ``eqn`` is a reshape of (a ``reshape``, or a fused equation of
    reshapes alone), else None."""
    if eqn.prim.name == "reshape":
        return eqn.inputs[0] if isinstance(eqn.inputs[0], Var) else None
    if eqn.prim.name != "fused" or len(eqn.inputs) != 1 or len(eqn.outputs) != 1 or \
            not isinstance(eqn.inputs[0], Var):
        return None
    eqns = eqn.params["body"].eqns
    if eqns and all(e.prim.name == "reshape" for e in eqns):
        return eqn.inputs[0]
    return None                     # (no equations: a copy, e.g. per-row sums of an operand)
