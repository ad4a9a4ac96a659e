"""Which functional updates may write into their operand's buffer (buffer ownership).

``index_set`` is a value: ``y = index_set(x, v, i)`` leaves ``x`` as it was, so its
lowering copies ``x`` before writing ``v`` (``indexing.index_function``).  In a loop that
fills an array one row per step (a Krylov basis, a dynamic-programming table) that copy
costs a whole array per step.  The copy is needless when nothing reads ``x``'s buffer
afterwards; this module finds those updates, the analysis of XLA's buffer donation and
of Futhark's uniqueness types, done on one Graph at a time:

* Every array value has *roots*: the buffers it may share memory with.  A value made by
  a primitive known to allocate (``FRESH``: a fused loop nest's results, an indexing
  helper's ``np.empty``/``np.zeros``) is its own root; an input is its own root; any other
  primitive's result may be (a view of) any of its inputs, so it has all their roots.
  This is conservative: an unknown primitive never makes a write unsafe, only a copy
  necessary.
  The results of a primitive with sub-Graphs (a loop, a branch) may also be an array
  constant of a body, memory the function does not see: they are never owned.
* A buffer is *owned* when the function may overwrite it: a fresh value, or an input
  the caller says it owns (``mutable``: a ``while_loop`` carry that the loop driver
  copied once before the loop).
* ``y = index_set(x, v, ...)`` writes in place when ``x`` is an owned root (or an
  in-place update of one), ``v`` and the indices do not share its buffer, and no value
  sharing that buffer and defined before the update is used after it (nor is a result).
  ``y`` then has ``x``'s root.  ``scatter_extremum(x, v, ...)`` likewise.
* A ``while_loop``'s or ``scan``'s body may mutate a carry in place when the value it
  returns for that carry is owned and shares its buffer with no other result (so each
  step hands the next an unaliased buffer; a scan's slices of its ``xs`` are never
  owned): ``body_slots`` finds the largest such set of carries by fixed point.  The
  driver copies once, before the loop, the initial value of every carry whose buffer
  may be written (``written_carries``: buffers move between carries, and an inner loop
  may take a carry's buffer without copying it), unless that value is itself owned
  and dead after the loop (``Plan.free_inits``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, Var

FRESH = {"fused", "index_set", "scatter_extremum", "scatter_add", "gather"}
UPDATES = {"index_set", "scatter_extremum"}    # functional updates of their first operand
LOOPS = {"while_loop", "scan"}
FOREIGN = object()      # the root of memory the function does not see (a body's constants)


@dataclass
class Plan:
    inplace: set = field(default_factory=set)       # ids of UPDATES eqns writing in place
    free_inits: dict = field(default_factory=dict)  # id(while eqn) -> carry positions not copied
    roots: dict = field(default_factory=dict)       # Var -> frozenset of root Vars


def _fresh(eqn) -> bool:
    """Whether ``eqn``'s array results are buffers it makes (or its caller's arrays it
    writes into: see ``plan``'s ``exclude``), none of them a view of an operand."""
    name = eqn.prim.name
    if name not in FRESH:
        return False
    # (a gather of a scalar window returns the element itself)
    return name != "gather" or all(v.ndim > 0 for v in eqn.outputs)


def carry_inputs(eqn) -> tuple:
    """``(first, count)``: where a loop equation's initial carries are among its inputs
    (a ``while_loop``'s after its condition's and body's constants, a ``scan``'s after
    its constants and before its ``xs``)."""
    p = eqn.params
    if eqn.prim.name == "scan":
        return p["n_consts"], p["n_carry"]
    first = p.get("n_cond", 0) + p.get("n_body", 0)
    return first, len(eqn.inputs) - first


def allocates(eqn, p: Plan) -> bool:
    """Whether ``eqn``'s array results are memory of their own under plan ``p`` (a
    fresh-allocating primitive, not an update written into its operand)."""
    return _fresh(eqn) and id(eqn) not in p.inplace


def plan(graph: Graph, mutable=frozenset(), exclude=frozenset()) -> Plan:
    """The in-place updates of ``graph``'s equations (in their order of execution).

    ``mutable``: inputs whose buffers the function owns; ``exclude``: values whose
    buffers belong to someone else although a fresh-allocating primitive makes them
    (a body's outputs written into its caller's arrays)."""
    eqns = list(graph.eqns)
    last = {}                               # Var -> index of its last use (len = a result)
    for k, e in enumerate(eqns):
        for x in e.inputs:
            if isinstance(x, Var):
                last[x] = k
    for x in graph.outputs:
        if isinstance(x, Var):
            last[x] = len(eqns)

    out = Plan()
    roots = out.roots
    owned = set(v for v in mutable if v.ndim > 0)
    for v in graph.inputs:
        roots[v] = frozenset([v]) if v.ndim > 0 else frozenset()
    # values sharing each root, in order of definition: (index, Var)
    sharing: dict = {v: [(-1, v)] for v in graph.inputs if v.ndim > 0}

    def roots_of(x):
        return roots.get(x, frozenset()) if isinstance(x, Var) else frozenset()

    def dead_after(r, k, keep=()) -> bool:
        """No value sharing root r, defined before equation k, is used after it."""
        return all(last.get(v, -1) <= k or v in keep for d, v in sharing.get(r, ()) if d < k)

    for k, e in enumerate(eqns):
        name = e.prim.name
        if name in UPDATES:
            x, v, *idx = e.inputs
            rs = roots_of(x)
            r = next(iter(rs)) if len(rs) == 1 else None
            if (r is not None and r in owned and isinstance(x, Var) and x.ndim > 0
                    and not any(r in roots_of(a) for a in [v, *idx])
                    and dead_after(r, k)):
                out.inplace.add(id(e))
                y = e.outputs[0]
                roots[y] = rs
                sharing[r].append((k, y))
                continue
        if name in LOOPS:
            n_skip, n_carry = carry_inputs(e)
            inits = e.inputs[n_skip:n_skip + n_carry]
            free = set()
            for j, x in enumerate(inits):
                rs = roots_of(x)
                if len(rs) != 1 or not isinstance(x, Var):
                    continue
                r = next(iter(rs))
                others = [a for i, a in enumerate(e.inputs) if i != n_skip + j]
                if (r in owned and not any(r in roots_of(a) for a in others)
                        and dead_after(r, k)):
                    free.add(j)
            if free:
                out.free_inits[id(e)] = free
        nested = any(isinstance(v, Graph) or isinstance(v, (tuple, list)) and
                     any(isinstance(w, Graph) for w in v) for v in e.params.values())
        fresh = _fresh(e)
        for y in e.outputs:
            if y.ndim == 0:
                roots[y] = frozenset()
            elif fresh:
                # (one written into its caller's array, a scan's row of ys, is memory of
                # its own too, but not this function's to write)
                roots[y] = frozenset([y])
                if y not in exclude:
                    owned.add(y)
                sharing[y] = [(k, y)]
            else:
                rs = frozenset().union(*(roots_of(a) for a in e.inputs))
                if nested:
                    # a loop's or branch's result may also be an array constant of its
                    # body (a parameter of the main function): never owned
                    rs = rs | {FOREIGN}
                roots[y] = rs
                for r in rs:
                    sharing.setdefault(r, []).append((k, y))
    return out


def body_slots(graph: Graph, n_body: int, exclude=frozenset(), n_carry=None):
    """``(slots, plan)`` for a loop body ``(consts..., carries..., xs...) -> (carries...,
    ys...)`` (``n_body`` constants; ``n_carry`` carries, default all the other inputs:
    a ``while_loop``'s): the carry positions it may update in place (with the driver's
    promise that each arrives in a buffer of its own), and the plan that does."""
    carries = _carries(graph, n_body, n_carry)
    slots = {j for j, v in enumerate(carries) if v.ndim > 0}
    while True:
        p = plan(graph, {carries[j] for j in slots}, exclude)
        keep = set()
        for j in slots:
            y = graph.outputs[j]
            rs = p.roots.get(y, frozenset()) if isinstance(y, Var) else frozenset()
            if len(rs) != 1:
                continue
            r = next(iter(rs))
            fresh = r is not FOREIGN and (r not in graph.inputs
                                          or r in {carries[i] for i in slots})
            alone = not any(r in p.roots.get(o, ()) for i, o in enumerate(graph.outputs)
                            if i != j and isinstance(o, Var))
            if fresh and alone:
                keep.add(j)
        if keep == slots:
            return slots, p
        slots = keep


def _carries(graph: Graph, n_body: int, n_carry) -> list:
    inputs = list(graph.inputs[n_body:])
    return inputs if n_carry is None else inputs[:n_carry]


def written_carries(graph: Graph, p: Plan, n_body: int, n_carry=None) -> set:
    """The carry positions whose initial buffers the loop may write: those an in-place
    update of ``p`` writes, and those whose buffer the body passes on (as the value of
    another carry) towards one of them."""
    carries = _carries(graph, n_body, n_carry)
    written = set()
    for e in graph.eqns:
        if id(e) in p.inplace:
            written |= p.roots[e.inputs[0]]
        # an inner loop that takes a carry's buffer without copying it may write it
        if e.prim.name in LOOPS:
            n_skip = carry_inputs(e)[0]
            for j in p.free_inits.get(id(e), ()):
                written |= p.roots[e.inputs[n_skip + j]]
    flows = {}                          # carry i -> the carries its buffer moves to
    for j, y in enumerate(graph.outputs[:len(carries)]):
        for r in p.roots.get(y, ()) if isinstance(y, Var) else ():
            if r in carries:
                flows.setdefault(carries.index(r), set()).add(j)
    hit = {j for j, v in enumerate(carries) if v in written}
    grew = True
    while grew:
        grew = False
        for i, targets in flows.items():
            if i not in hit and targets & hit:
                hit.add(i)
                grew = True
    return hit
