"""Loop fusion: chains of elementwise, broadcast, slice, pad, transpose, select and
reduction equations become single ``fused`` equations, each lowered to one loop nest.

The fused form is *gather* form: a ``fused`` equation's outputs (its *roots*) are
computed element by element, each output element in one place, reading the
equation's operands at the indices the chain of slices, pads, broadcasts and
transposes maps it to.  Values inside the chain are never stored: a pad is a
conditional read, a broadcast a read that ignores an index, a reduction an
accumulator in the loop.

How equations are grouped
-------------------------
1. A value is *inlined* into its consumers when it is produced by a fusible
   equation (elementwise, select, convert, broadcast_in_dim, slice, pad, transpose,
   unit-dimension reshape; not a transcendental function of 4096 or more elements,
   which runs as one SIMD NumPy call: ``VECTOR_UFUNCS``), has rank >= 1, is not an
   output of the graph, and every consumer is fusible; an ``EXPENSIVE`` function (a
   transcendental, a power, a division) only when no consumer reads it in a larger
   loop domain (through a broadcast it would be recomputed for every element).  Inlined
   values are recomputed by each consumer that reads them (cheap: a few flops against a
   memory round trip).
2. Every other value produced by a fusible or reduction equation is a *root*: it is
   materialised.  A root's loop *domain* is its shape, or for a reduction the shape
   of the reduced operand.
3. Roots with the same domain share one loop nest (one ``fused`` equation) unless one
   depends on another; equations are then re-ordered topologically.  A root that reads
   a group of its domain only element for element, at its own index, through
   elementwise equations of one shape (not a reduction's result, not a shifted read,
   not through another group), and is itself elementwise, joins it: the value is
   computed earlier in the same iteration.
4. A body that would evaluate more than ``MAX_BODY`` (value, index) pairs per element
   (recomputation through many shifted reads) materialises its most-read inlined
   values instead and tries again; where the count stops at its limit before any value
   is read twice (a long chain of pads' windows, each a scope of its own in the
   lowering), it materialises the operands of the deeper half of the windows reached.
5. A value inlined into several groups is recomputed by each, and so is everything it
   inlines: in a chain of steps whose every state is read by a materialised consumer
   as well as by the next step (``np.roll`` in an unrolled loop), step k's group
   recomputed all k steps before it (quadratic work and code, and then rule 4 split
   the steps into a loop per equation).  A value whose inlined cone (itself and what
   it inlines, up to the materialised values) times the groups beyond the first that
   recompute it exceeds ``DUPLICATE_MAX`` is materialised instead (``_duplicated``).

The ``fused`` primitive holds its equations as a Graph (``body``) whose inputs are
the operands read from outside; the interpreter runs it by evaluating the body, so a
fused graph still runs on every target, and the printer shows the body indented
under the equation.
"""
from __future__ import annotations

import heapq
import types

import numpy as np

from ..interpret import eval_graph
from ..ir import Graph, Primitive, Var, make_eqn
from . import indexmap
from .indexmap import Affine

MAX_BODY = 400
DUPLICATE_MAX = 32     # equations recomputed for a value by groups beyond the first

ELEMENTWISE = {
    "neg", "add", "sub", "mul", "div", "pow", "max", "min", "atan2", "rem", "fmod", "exp",
    "expm1", "exp2", "log2", "log10",
    "log", "log1p", "sqrt", "cbrt", "sin", "cos", "tan", "asin", "acos", "atan", "sinh",
    "cosh", "tanh", "asinh", "acosh", "atanh", "abs", "sign", "floor", "ceil", "round",
    "trunc", "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor", "not", "isnan",
    "isfinite", "stop_gradient", "select", "convert_element_type", "floordiv", "bitand",
    "bitor", "bitxor", "bitnot", "shl", "shr",
    "erf", "erfc", "gamma", "lgamma", "digamma", "polygamma", "ndtri", "erfinv",  # special.py
}
STRUCTURAL = {"broadcast_in_dim", "slice", "pad", "transpose", "reshape"}
REDUCTIONS = {"reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min",
              "reduce_prod": "prod"}

# Transcendental functions that NumPy evaluates with SIMD kernels and Numba with scalar
# libm calls (measured on W5's 262,144 elements: np.tanh 0.21 ms, Numba's loop 4.0 ms).
# From UFUNC_ELEMENTS elements on they are not fused, and the lowering runs each as one
# NumPy ufunc call in an object-mode block (``codegen.pysource``): bit for bit the
# interpreter's results.
VECTOR_UFUNCS = {"exp", "expm1", "exp2", "log", "log1p", "log2", "log10", "sin", "cos",
                 "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
                 "atanh", "cbrt"}
UFUNC_ELEMENTS = 1 << 12
# not recomputed for every element of a larger loop domain (see ``_plan``'s ``reach``)
EXPENSIVE = VECTOR_UFUNCS | {"pow", "sqrt", "div", "atan2", "rem", "fmod", "erf", "erfc",
                             "gamma", "lgamma", "digamma", "polygamma", "ndtri", "erfinv"}
RECOMPUTE = 4      # ... in a domain this many times its size (a pad or slice is not)


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def numpy_ufunc_call(eqn) -> bool:
    """Whether ``eqn`` runs as a NumPy ufunc call (see ``VECTOR_UFUNCS``)."""
    out = eqn.outputs[0] if eqn.outputs else None
    return (eqn.prim.name in VECTOR_UFUNCS and out is not None and out.ndim >= 1
            and int(np.prod(out.shape)) >= UFUNC_ELEMENTS
            and np.dtype(out.dtype) in (np.float32, np.float64)
            and np.dtype(eqn.inputs[0].dtype) == np.dtype(out.dtype))


# ---------------------------------------------------------------- the fused primitive

fused_p = Primitive("fused", multiple_results=True)
fused_p.impl = lambda *args, body, domain: eval_graph(body, list(args))
fused_p.abstract = lambda *args, body, domain: [(v.shape, v.dtype) for v in body.outputs]


def _unit_reshape(eqn) -> bool:
    """A reshape that only inserts or removes dimensions of size 1."""
    src = [d for d in eqn.inputs[0].shape if d != 1]
    dst = [d for d in eqn.params["shape"] if d != 1]
    return src == dst


def _fusible(eqn, vector_ufuncs=True) -> bool:
    name = eqn.prim.name
    if vector_ufuncs and numpy_ufunc_call(eqn):
        return False        # a large transcendental: one SIMD NumPy call beats the loop
    if name in REDUCTIONS:
        return eqn.inputs[0].ndim >= 1
    if len(eqn.outputs) != 1 or eqn.outputs[0].ndim == 0:
        return False
    if name == "reshape":
        return _unit_reshape(eqn)
    return name in ELEMENTWISE or name in STRUCTURAL


def _domain(eqn):
    return tuple(eqn.inputs[0].shape) if eqn.prim.name in REDUCTIONS \
        else tuple(eqn.outputs[0].shape)


# ---------------------------------------------------------------- the pass

def fuse(graph: Graph, vector_ufuncs: bool = True) -> Graph:
    """Group fusible equations into ``fused`` equations (see the module docstring).
    ``vector_ufuncs=False`` fuses large transcendental functions too (the CUDA target:
    a GPU thread evaluates them as fast as any library call would)."""
    materialise: set = set()
    while True:
        plan = _plan(graph, materialise, vector_ufuncs)
        extra = _oversized(plan) or _duplicated(plan)
        if not extra:
            return _rebuild(graph, plan)
        materialise |= extra


def _plan(graph: Graph, materialise: set, vector_ufuncs: bool = True):
    producer = {}
    consumers: dict = {}
    for i, eqn in enumerate(graph.eqns):
        for v in eqn.outputs:
            producer[v] = i
        for a in eqn.inputs:
            if isinstance(a, Var):
                consumers.setdefault(a, []).append(i)
    outputs = {a for a in graph.outputs if isinstance(a, Var)}
    fusible = [_fusible(e, vector_ufuncs) for e in graph.eqns]

    # the largest loop domain each value may be read in through fusible consumers: a
    # transcendental function inlined into a bigger domain (through a broadcast) would
    # be recomputed for every element of it (tanh of 1000 values, in a 1000 x 1000
    # reverse-mode Jacobian, took 10 ms instead of 10 us), so it is materialised
    reach: dict = {}
    for i in range(len(graph.eqns) - 1, -1, -1):
        for v in graph.eqns[i].outputs:
            r = _size(v.shape)
            for j in consumers.get(v, ()):
                if fusible[j]:
                    r = max([r, _size(_domain(graph.eqns[j]))]
                            + [reach.get(o, 0) for o in graph.eqns[j].outputs])
            reach[v] = r

    def inlined(v) -> bool:
        i = producer.get(v)
        return (i is not None and fusible[i] and graph.eqns[i].prim.name not in REDUCTIONS
                and v.ndim >= 1 and v not in outputs and v not in materialise
                and all(fusible[j] for j in consumers.get(v, ()))
                and not (graph.eqns[i].prim.name in EXPENSIVE
                         and reach[v] >= RECOMPUTE * _size(v.shape)))

    inline = {v for v in producer if inlined(v)}

    # group roots by domain; a root joins a group it does not depend on, even through
    # other groups (gdeps[g]: every group g depends on, transitively).  Sets of groups
    # are bit masks (Python ints): with a group per step of an unrolled loop, unions of
    # Python sets made this cubic (a 1000-step loop's gradient: a minute).  An inlined
    # value depends on what its operands depend on: a root's dependencies are its
    # operands', without walking the (possibly long) chain of inlined values it reads
    depends: dict = {}          # var -> mask of the groups it depends on (directly)
    group_of: dict = {}         # root eqn index -> group id
    groups: list = []           # group id -> dict(domain, roots, eqns)
    gdeps: list = []

    def closure(mask: int) -> int:
        out, rest = mask, mask
        while rest:
            low = rest & -rest
            out |= gdeps[low.bit_length() - 1]
            rest ^= low
        return out

    # aligned[v]: the groups v reads only element for element, at its own index, through
    # elementwise equations of one shape (a root that reads a group so may join it: the
    # value is computed in the same iteration, before it is read; see rule 3)
    aligned: dict = {}
    for i, eqn in enumerate(graph.eqns):
        direct = apart = near = 0
        for a in eqn.inputs:
            if isinstance(a, Var):
                direct |= depends.get(a, 0)
                near |= aligned.get(a, 0)
                apart |= depends.get(a, 0) & ~aligned.get(a, 0)
        pointwise = fusible[i] and _pointwise(eqn)
        if _all_inlined(graph, inline, i):
            for v in eqn.outputs:
                depends[v] = direct
                aligned[v] = near & ~apart if pointwise else 0
            continue
        deps = closure(direct)
        if fusible[i]:
            dom = _domain(eqn)
            gid = next((g for g, grp in enumerate(groups)
                        if grp["domain"] == dom and not deps >> g & 1), None)
            if gid is None and pointwise:       # a group it reads at its own index only
                joinable = near & ~apart
                while joinable and gid is None:
                    low = joinable & -joinable
                    g = low.bit_length() - 1
                    if groups[g]["domain"] == dom and not closure(direct & ~low) & low:
                        gid = g
                    joinable ^= low
                if gid is not None:
                    deps = closure(direct & ~(1 << gid))
            if gid is None:
                gid = len(groups)
                groups.append({"domain": dom, "roots": [], "eqns": set()})
                gdeps.append(0)
            groups[gid]["roots"].append(i)
            group_of[i] = gid
            gdeps[gid] |= deps
            for h in range(len(groups)):
                if gdeps[h] >> gid & 1:
                    gdeps[h] |= gdeps[gid]
            deps = 1 << gid
        for v in eqn.outputs:
            depends[v] = deps
            aligned[v] = deps if fusible[i] and eqn.prim.name not in REDUCTIONS else 0
    for grp in groups:          # each group's equations: its roots and what they inline
        seen, stack = set(grp["roots"]), list(grp["roots"])
        while stack:
            for a in graph.eqns[stack.pop()].inputs:
                if a in inline and producer[a] not in seen:
                    seen.add(producer[a])
                    stack.append(producer[a])
        grp["eqns"] = seen
    return types.SimpleNamespace(graph=graph, inline=inline, groups=groups,
                                 group_of=group_of, producer=producer)


def _pointwise(eqn) -> bool:
    """Whether ``eqn`` reads each operand of rank >= 1 at its own element index: an
    elementwise equation whose operands have its shape.  (Not a reduction, though it
    reads its domain so: a nest of sums alone is compiled to keep partial sums in vector
    registers, ``loops._reassociates``, which a nest writing elementwise results too
    does without.)"""
    if eqn.prim.name not in ELEMENTWISE or len(eqn.outputs) != 1:
        return False
    shape = eqn.outputs[0].shape
    return all(a.shape == shape or a.ndim == 0 for a in eqn.inputs if isinstance(a, Var))


def _all_inlined(graph, inline, i) -> bool:
    """Whether every output of equation i is inlined (it has no place of its own)."""
    outs = graph.eqns[i].outputs
    return bool(outs) and all(v in inline for v in outs)


def _external_inputs(graph, eqn_ids) -> list:
    inside = {v for i in eqn_ids for v in graph.eqns[i].outputs}
    found: dict = {}        # (a dict: ordered, and a constant-time membership test)
    for i in eqn_ids:
        for a in graph.eqns[i].inputs:
            if isinstance(a, Var) and a not in inside:
                found[a] = None
    return list(found)


def _oversized(plan) -> set:
    """Inlined values to materialise because a body reads too many (value, index) pairs:
    of the values read at more indices than any of their consumers in the body is
    evaluated at (where the reads multiply: the operand of a shifted read, ``np.roll``'s
    transpose in a chain of steps; a value computed along a chain of elementwise
    consumers is read as often as they are, and storing it would cut nothing), the half
    read most.  (Materialising the most-read values of all stored every equation of such
    a chain, each in a loop of its own.)"""
    graph = plan.graph
    extra = set()
    for grp in plan.groups:
        count, reads, windows = _body_size(plan, grp)
        if count > MAX_BODY:
            most: dict = {}          # value -> the most indices a consumer reads it at
            for i in grp["eqns"]:
                eqn = graph.eqns[i]
                n = max(reads.get(v, 1) for v in eqn.outputs)
                for a in eqn.inputs:
                    if isinstance(a, Var) and a in reads:
                        most[a] = max(most.get(a, 0), n)
            points = [(n, v) for v, n in reads.items() if n > 1 and n > most.get(v, 0)]
            ranked = sorted(points or [(n, v) for v, n in reads.items() if n > 1],
                            key=lambda t: -t[0])
            if ranked:
                extra.update(v for _, v in ranked[:max(1, len(ranked) // 2)])
            elif count > 10 * MAX_BODY:
                # the count stopped at its limit before any value was read twice: a
                # long chain of steps, each opening pads' windows (a window computes
                # its operand in a scope of its own, so the code doubles per level of
                # windows, and the repeats lie past the limit): the operands of the
                # deeper half of the windows seen
                extra.update(windows[len(windows) // 2:])
    return extra


def _duplicated(plan) -> set:
    """Inlined values whose recomputation by several groups costs more than
    ``DUPLICATE_MAX`` equations (see rule 5): in the graph's order, each value's cone is
    one plus its inlined operands' cones (an over-count where the cones share values;
    capped), and a value taken resets its cone for the values after it."""
    graph = plan.graph
    shared: dict = {}              # eqn index -> the number of groups that compute it
    for grp in plan.groups:
        for i in grp["eqns"]:
            shared[i] = shared.get(i, 0) + 1
    cone: dict = {}
    extra = set()
    for i, eqn in enumerate(graph.eqns):
        if shared.get(i, 0) == 0 or not _all_inlined(graph, plan.inline, i):
            continue
        size = 1 + sum(cone.get(a, 0) for a in eqn.inputs if isinstance(a, Var))
        size = min(size, 1 << 20)
        for v in eqn.outputs:
            if size * (shared[i] - 1) > DUPLICATE_MAX:
                extra.add(v)
            else:
                cone[v] = size
    return extra


def _body_size(plan, grp, limit=None):
    """How many values one element of the group computes, counted as the loop lowering
    emits them (CSE per index, but a value first needed inside a pad's window is local
    to that window), stopping past ``limit`` (10 x ``MAX_BODY``: far enough to see which
    values are recomputed); how often each inlined value is computed; and the inlined
    operands of the tested pads' windows reached."""
    graph = plan.graph
    limit = 10 * MAX_BODY if limit is None else limit
    counts: dict = {}
    total = 0
    scopes: list = [set()]
    windows: list = []      # the operands of tested pads' windows, as first reached

    def visit(reads):
        """Depth first through the inlined producers, by an explicit stack (a chain of
        a thousand inlined steps, an unrolled loop's, overflowed Python's recursion);
        a tested pad's reads get a scope of their own, popped after them."""
        nonlocal total
        stack = [("visit", a, sub) for a, sub in reversed(reads) if isinstance(a, Var)]
        while stack:
            item = stack.pop()
            if item[0] == "pop":
                scopes.pop()
                continue
            _, v, idx = item
            if v not in plan.inline or total > limit:
                continue
            key = (v, tuple(c.key() for c in idx))
            if any(key in scope for scope in scopes):
                continue
            scopes[-1].add(key)
            total += 1
            counts[v] = counts.get(v, 0) + 1
            eqn = graph.eqns[plan.producer[v]]
            if eqn.prim.name == "pad" and _window_tested(eqn, idx):
                scopes.append(set())
                stack.append(("pop",))
                if isinstance(eqn.inputs[0], Var) and eqn.inputs[0] in plan.inline:
                    windows.append(eqn.inputs[0])
            stack.extend(("visit", a, sub) for a, sub in reversed(indexmap.reads(eqn, idx))
                         if isinstance(a, Var))

    for r in grp["roots"]:
        eqn = graph.eqns[r]
        idx = tuple(Affine(f"i{k}", 1, 0, 0, max(n - 1, 0))
                    for k, n in enumerate(grp["domain"]))
        visit(list(indexmap.reads(eqn, idx)))
    return total, counts, list(dict.fromkeys(windows))


def _window_tested(eqn, idx) -> bool:
    """Whether the loop lowering tests the pad's window at this index (needs a branch)."""
    dims, outside = indexmap.pad_window(eqn, idx)
    if outside:
        return False
    return any(d[0] != "affine" or d[1].lo < 0 or d[1].hi > n - 1
               for d, n in zip(dims, eqn.inputs[0].shape))


def _rebuild(graph: Graph, plan) -> Graph:
    """The graph with one ``fused`` equation per group, in a topological order that
    keeps the original order where it can."""
    units = []          # (position, eqn)
    placed_groups = set()
    for i, eqn in enumerate(graph.eqns):
        if i in plan.group_of:
            gid = plan.group_of[i]
            if gid in placed_groups:
                continue
            placed_groups.add(gid)
            units.append((i, _fused_eqn(graph, plan.groups[gid])))
        elif not _all_inlined(graph, plan.inline, i):
            units.append((i, eqn))
    return graph.replace(eqns=tuple(_toposort(graph, units)))


def _fused_eqn(graph: Graph, grp):
    ids = sorted(grp["eqns"])
    roots = [v for r in grp["roots"] for v in graph.eqns[r].outputs]
    if len(ids) == 1 and graph.eqns[ids[0]].prim.name in STRUCTURAL | {"stop_gradient"}:
        return graph.eqns[ids[0]]          # a lone slice or transpose is a view: keep it
    inputs = _external_inputs(graph, ids)
    body = Graph(tuple(inputs), tuple(graph.eqns[i] for i in ids), tuple(roots))
    sources = [graph.eqns[i].source for i in ids if graph.eqns[i].source]
    return make_eqn(fused_p, inputs, roots, {"body": body, "domain": grp["domain"]},
                    sources[-1] if sources else None)


def _toposort(graph: Graph, units):
    defined = {v for v in graph.inputs}
    produced_by = {}
    for k, (_, eqn) in enumerate(units):
        for v in eqn.outputs:
            produced_by[v] = k
    waiting = {}
    blockers = []
    for k, (_, eqn) in enumerate(units):
        need = {produced_by[a] for a in eqn.inputs
                if isinstance(a, Var) and a not in defined and a in produced_by}
        need.discard(k)
        blockers.append(len(need))
        for j in need:
            waiting.setdefault(j, []).append(k)
    ready = [(units[k][0], k) for k in range(len(units)) if blockers[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(units[k][1])
        for j in waiting.get(k, ()):
            blockers[j] -= 1
            if blockers[j] == 0:
                heapq.heappush(ready, (units[j][0], j))
    assert len(order) == len(units), "fusion created a cycle"
    return order

