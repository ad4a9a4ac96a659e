"""Lowering of ``fused`` equations (``gradc.passes.fuse``) to one loop nest each.

The loop runs over the equation's domain in C order.  For each root the body asks for
``value(var, index)``: an operand read from outside is an array element (or a scalar),
an inlined equation is computed from its operands at the indices its structure maps to:

* elementwise, select, convert: the same index;
* ``broadcast_in_dim``: the index with broadcast dimensions dropped (size-1 ones read 0);
* ``slice``: ``start + step * i`` per dimension;
* ``transpose``: the index permuted back; unit-dimension ``reshape``: unit dims dropped;
* ``pad``: a conditional read: ``x[(i - start) / step]`` inside the window, else 0.

Index components are affine in one loop (or window) variable, ``mult * sym + offset``,
so composed slices and pads print as ``i0 + 1``, not nested arithmetic, and bounds that
hold for every iteration are not tested.  Values computed at an index are kept in locals
for the rest of their block (CSE across roots); a value first needed inside a pad's
window is local to that window.  Reductions accumulate in a local (rank-0 result) or
into an array initialised with the identity.
"""
from __future__ import annotations

import numpy as np

from ..ir import Lit
from ..passes.indexmap import Affine as _Affine
from ..passes.indexmap import operand_indices, pad_window
from .pysource import TEMPLATES as ELEMENT_TEMPLATES   # NumPy's ufuncs work on scalars too
from .pysource import SCALAR_TEMPLATES, dtype_expr, eqn_template, narrow, scalar_literal

_DEEP = 64        # value() nesting past which operands are emitted iteratively first
_IDENTITY = {"sum": 0, "prod": 1, "max": -np.inf, "min": np.inf}


class _Emitter:
    def __init__(self, ctx, names, producer, comments):
        self.ctx = ctx
        self.names = names            # Var -> identifier (outer names and body names)
        self.producer = producer      # body Var -> body eqn
        self.comments = comments      # body eqn -> its printed text
        self.lines: list = []
        self.memo: list = [{}]        # a stack of scopes: (var, index key) -> local name
        self.commented: set = set()
        self.counts: dict = {}
        self.breakpoints: dict = {}   # loop variable -> where a pad's window starts/ends
        self.used_consts: list = []   # array constants read (parameters of the helper)
        self.unsigned: set = set()    # loop variables whose indices are cast to uint64
        self.nesting = 0              # compute() calls in progress (see operands_first)
        self.fixed: set = set()       # locals this emitter sets once (not accumulators)
        self.vector_math = True       # exp, log, ... as vecmath's (``VECMATH_CALLS``)

    # -------------------------------------------------------- bookkeeping

    def emit(self, depth, text):
        self.lines.append("    " * depth + text)

    def local(self, var) -> str:
        base = self.names[var]
        k = self.counts.get(var, 0)
        self.counts[var] = k + 1
        return f"{base}_{k}" if k else f"{base}_"

    def lookup(self, key):
        for scope in reversed(self.memo):
            if key in scope:
                return scope[key]
        return None

    # -------------------------------------------------------- values

    def value(self, atom, idx, depth) -> str:
        """An expression for ``atom`` at index ``idx`` (a tuple of _Affine)."""
        if isinstance(atom, Lit):
            if atom.ndim == 0:
                return scalar_literal(atom.value, atom.dtype)
            known = const_element(atom.value, idx)
            if known is not None:
                return known
            name = self.ctx.const(atom.value)
            self.used_consts.append(name)
            return self.read(name, idx)
        if atom.ndim == 0 and atom not in self.producer:
            return self.names[atom]
        if atom not in self.producer:
            return self.read(self.names[atom], idx)
        key = (atom, tuple(c.key() for c in idx))
        found = self.lookup(key)
        if found is not None:
            return found
        eqn = self.producer[atom]
        if self.nesting >= _DEEP:
            self.operands_first(atom, idx, depth)
        self.nesting += 1
        try:
            expr = self.compute(eqn, idx, depth)
        finally:
            self.nesting -= 1
        if eqn.prim.name in ELEMENT_TEMPLATES and eqn.prim.name != "convert_element_type":
            expr = narrow(expr, atom.dtype)
        if expr in ("True", "False"):     # (a window's known test, through a broadcast:
            self.memo[-1][key] = expr     # kept a literal for the select that reads it)
            return expr
        if eqn not in self.commented:
            self.commented.add(eqn)
            for line in self.comments[eqn]:
                self.emit(depth, "# " + line)
        if expr in self.fixed:      # (a pad inside its window, a select known: another
            self.memo[-1][key] = expr   # name for a local set once, not a copy; Numba's
            return expr                 # compile time grows with its statements)
        name = self.local(atom)
        self.fixed.add(name)
        self.emit(depth, f"{name} = {expr}")
        self.memo[-1][key] = name
        return name

    def operands_first(self, atom, idx, depth):
        """Emit the values ``atom`` at ``idx`` depends on, deepest first, without
        recursion: a chain of thousands of inlined equations (a Python loop unrolled by
        the trace) would exceed Python's recursion limit in ``value``.  The order is the
        recursive one's (operands left to right, each before its user), so the source is
        the same; each value is then a local that ``compute`` finds in ``memo``."""
        stack = [(atom, idx, False)]
        while stack:
            a, ix, ready = stack.pop()
            if isinstance(a, Lit) or a not in self.producer or \
                    self.lookup((a, tuple(c.key() for c in ix))) is not None:
                continue
            eqn = self.producer[a]
            if ready or eqn.prim.name == "pad":
                if a is not atom:
                    self.value(a, ix, depth)
                continue
            stack.append((a, ix, True))
            pairs = list(zip(eqn.inputs, operand_indices(eqn, ix)))
            stack.extend((b, sub, False) for b, sub in reversed(pairs))

    def read(self, array, idx) -> str:
        return f"{array}[{self.subscript(idx)}]"

    def subscript(self, idx) -> str:
        """Index components, those in a variable of ``unsigned`` cast to ``np.uint64``: an
        unsigned index has no negative-index test, which LLVM cannot drop when it does
        not know the loop's bounds (``_chunked_prange``)."""
        return ", ".join(f"np.uint64({c})" if getattr(c, "sym", c) in self.unsigned
                         else str(c) for c in idx)

    def compute(self, eqn, idx, depth):
        name, p = eqn.prim.name, eqn.params
        if name == "pad":
            return self.pad(eqn, idx, depth)
        subs = operand_indices(eqn, idx)
        if name == "select":                      # (a known condition: one side only)
            cond = self.value(eqn.inputs[0], subs[0], depth)
            if cond in ("True", "False"):
                k = 1 if cond == "True" else 2
                return self.value(eqn.inputs[k], subs[k], depth)
            sides = self.sides(eqn.inputs[0], subs[0])
            if sides is not None:
                return self.branches(eqn, subs, cond, sides, depth)
        args = [self.value(a, sub, depth) for a, sub in zip(eqn.inputs, subs)]
        if name in ("broadcast_in_dim", "slice", "transpose", "reshape"):
            return args[0]
        if name == "select":
            return f"({args[1]} if {args[0]} else {args[2]})"
        if name == "convert_element_type":
            dtype = np.dtype(p["dtype"])
            return f"({args[0]} != 0)" if dtype == np.bool_ else f"{dtype_expr(dtype)}({args[0]})"
        return eqn_template(eqn, scalar=self.vector_math).format(*args)

    def sides(self, cond, idx):
        """Where ``cond`` at ``idx`` is a window test (a selection's: ``i0 < m``, see
        ``_bool_window``) of a loop variable ``v``, stepping by one: ``(v, true, false)``,
        the ranges ``v`` takes on either side, and the boundary is a breakpoint (the
        domain is split there, as at a pad's window).  Else None."""
        while not isinstance(cond, Lit):           # (through a broadcast of the test)
            eqn = self.producer.get(cond)
            if eqn is None or eqn.prim.name not in ("broadcast_in_dim", "reshape"):
                return None
            cond, idx = eqn.inputs[0], operand_indices(eqn, idx)[0]
        found = _bool_window(cond.value)
        if found is None or not idx:
            return None
        axis, m, first = found
        c = idx[axis]
        if getattr(c, "sym", None) is None or abs(c.mult) != 1:
            return None
        # v's range, and the two sides of c < m as ranges of v (c = ±v + offset)
        lo, hi = sorted(((c.lo - c.offset) * c.mult, (c.hi - c.offset) * c.mult))
        if c.mult == 1:                 # c < m  <=>  v < m - offset
            cut = m - c.offset
            below, above = (lo, cut - 1), (cut, hi)
        else:                           # c < m  <=>  v > offset - m
            cut = c.offset - m + 1
            below, above = (cut, hi), (lo, cut - 1)
        self.breakpoints.setdefault(c.sym, set()).add(cut)
        return (c.sym,) + ((below, above) if first else (above, below))

    def branches(self, eqn, subs, cond, sides, depth) -> str:
        """A select on a window test as ``if``/``else``, each side computed with the loop
        variable's range narrowed to where it is taken: the windows of the pads under
        it (a concatenation's, ``np.roll``'s) hold there, and need no tests of their
        own."""
        sym, true, false = sides
        result = self.ctx.temp()
        self.fixed.add(result)
        self.emit(depth, f"if {cond}:")
        for k, (lo, hi) in ((1, true), (2, false)):
            if k == 2:
                self.emit(depth, "else:")
            sub = tuple(_narrowed(c, sym, lo, hi) for c in subs[k])
            self.emit(depth + 1, f"{result} = {self.window_body(eqn.inputs[k], sub, depth)}")
        return result

    def pad(self, eqn, idx, depth):
        x, out = eqn.inputs[0], eqn.outputs[0]
        zero = scalar_literal(0, out.dtype)
        dims, outside = pad_window(eqn, idx)
        if outside:
            return zero
        conds, sub, pre = [], [], []
        for d, n in zip(dims, x.shape):
            if d[0] == "affine":
                k = d[1]
                if (k.lo < 0 or k.hi > n - 1) and abs(k.mult) == 1:
                    self.breakpoints.setdefault(k.sym, set()).update(
                        (-k.offset, n - k.offset) if k.mult == 1
                        else (k.offset + 1, k.offset - n + 1))
                if k.lo < 0:
                    conds.append(f"{k} >= 0")
                if k.hi > n - 1:
                    conds.append(f"{k} < {n}")
                sub.append(k.clamp(0, n - 1))
            else:
                _, c, start, step = d
                w = self.ctx.temp()
                pre.append("    " * depth + f"{w} = ({c} - {start}) // {step}")
                conds.append(f"({c} - {start}) % {step} == 0 and 0 <= {w} < {n}")
                sub.append(_Affine(w, 1, 0, 0, n - 1))
        if not conds:
            return self.value(x, tuple(sub), depth)
        self.lines.extend(pre)
        return self.window(x, tuple(sub), " and ".join(conds), zero, depth, not pre)

    def window(self, x, sub, cond, zero, depth, affine) -> str:
        """``x`` at ``sub`` where ``cond`` holds (a pad's window), else ``zero``: the
        window's code inside an ``if`` (``affine``: its indices are affine in the loop
        variables)."""
        result = self.ctx.temp()
        start = len(self.lines)
        inner = self.window_body(x, sub, depth)
        return self.guarded(start, result, cond, inner, zero, depth)

    def window_body(self, x, sub, depth) -> str:
        """The lines computing ``x`` at ``sub`` one level in (values local to the
        window); returns its expression."""
        self.memo.append({})
        inner = self.value(x, sub, depth + 1)
        self.memo.pop()
        return inner

    def guarded(self, start, result, cond, inner, zero, depth) -> str:
        """The window's lines from ``start`` on under ``if cond``, ``result`` set to its
        value there and to ``zero`` elsewhere."""
        self.lines.insert(start, "    " * depth + f"if {cond}:")
        self.emit(depth + 1, f"{result} = {inner}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{result} = {zero}")
        self.fixed.add(result)
        return result


def _narrowed(c, sym, lo, hi):
    """Index component ``c`` where loop variable ``sym`` lies in [lo, hi]."""
    if getattr(c, "sym", None) != sym:
        return c
    a, b = c.mult * lo + c.offset, c.mult * hi + c.offset
    return c.clamp(min(a, b), max(a, b))


def _bool_window(value: np.ndarray):
    """``(axis, m, first)`` where boolean array ``value`` changes once along one axis,
    from ``first`` (before index ``m``) to its negation, its other axes of length 1:
    the window of a concatenation's operand (``passes.steps.selection``).  Else None."""
    flat = value.reshape(-1)
    axes = [d for d, n in enumerate(value.shape) if n != 1]
    if value.dtype.kind != "b" or len(axes) != 1:
        return None
    m = int(np.argmin(flat) if flat[0] else np.argmax(flat))
    if m == 0 or not (flat[:m] == flat[0]).all() or not (flat[m:] != flat[0]).all():
        return None
    return axes[0], m, bool(flat[0])


def const_element(value: np.ndarray, idx):
    """An expression for constant array ``value`` at ``idx`` that reads no array, or
    None: its one value where all its elements are equal (and of one sign), the index
    itself where it is 0, 1, 2, ... along one axis, its other axes of length 1
    (``np.arange(n).reshape(1, n, 1)``: what ``argmax`` inside a scan's step compares
    against, ``passes.argreduce``; as floats, a weight ``x * np.arange(n)``), and
    ``index < m`` (or ``>=``) where it is booleans that change once along one axis
    (the window of a concatenation's operand: ``passes.steps.selection``)."""
    flat = value.reshape(-1)
    if flat.size == 0 or value.dtype.kind not in "biuf":
        return None
    if flat[0] == flat[-1] and (flat == flat[0]).all() and (
            value.dtype.kind != "f" or (np.signbit(flat) == np.signbit(flat[0])).all()):
        return scalar_literal(flat[0], value.dtype)
    axes = [d for d, n in enumerate(value.shape) if n != 1]
    if len(axes) == 1 and value.dtype.kind == "b":     # (a window: True, then False)
        found = _bool_window(value)
        if found is not None:
            _, m, first = found
            i = idx[axes[0]]
            lo, hi = getattr(i, "lo", None), getattr(i, "hi", None)
            if lo is not None and (hi < m or lo >= m):   # (one side in this loop's range)
                return str(first == (hi < m))
            return f"({i} {'<' if first else '>='} {m})"
        return None
    if len(axes) != 1 or value.dtype.kind == "b" or flat[0] != 0 or \
            value.dtype.kind == "f" and np.signbit(flat[0]) or \
            flat[-1] != flat.size - 1 or not np.array_equal(flat, np.arange(flat.size)):
        return None
    return f"{dtype_expr(value.dtype)}({idx[axes[0]]})"


class Nest:
    """One ``fused`` equation's loop nest, before it is placed in a helper function: its
    decorator, parameters (operands, array constants, output buffers), results, lines
    and the comment that names the equation."""

    __slots__ = ("decorator", "params", "results", "lines", "comment", "outs", "pooled",
                 "domain", "shareable", "scalars")

    def __init__(self, decorator, params, results, lines, comment, outs, pooled, domain,
                 shareable, scalars):
        self.decorator, self.params, self.results = decorator, params, results
        self.lines, self.comment, self.outs = lines, comment, outs
        self.pooled, self.domain, self.shareable = pooled, domain, shareable
        self.scalars = scalars      # rank-0 operands: name -> dtype expression


def fused_nest(ctx, eqn, names: dict, comments: dict, parallel: bool,
               fastmath: bool = False) -> Nest:
    """The loop nest of one ``fused`` equation (``lower_nests`` places it in a helper
    function, kept out of the main function: Numba's analyses grow quadratically with a
    function's blocks)."""
    from .buffers import MIN_BYTES
    used: list = []
    pooled = not parallel and ctx.pool_loops and _on_pool(eqn)
    nest = _loop_nest(ctx, eqn, names, comments, parallel, used, pooled)
    body = eqn.params["body"]
    params = [names[v] for v in body.inputs] + [c for c in dict.fromkeys(used)]
    starts = tuple(names[r] + f" = {b}" for r in body.outputs for b in ("_o", "_y"))
    outs = [line.split(" = ") for line in nest if line.startswith(starts)]
    params += [buffer for _, buffer in outs]
    uses_prange = any("numba.prange" in line for line in nest)
    decorator = ("@_k.jit_pooled" if pooled else "@_k.jit_loops"
                 + ("_parallel" if uses_prange else "")) + (
        "_fastmath" if fastmath else "_reassoc" if _reassociates(eqn) else "")
    # (a buffer the memory plan may give another's memory, or a loop's destination:
    # such a nest keeps a function of its own, see ``mergeable``)
    buffers = dict(outs)
    shareable = any(b.startswith("_y") for b in buffers.values()) or any(
        names[r] in buffers and int(np.prod(r.shape)) * np.dtype(r.dtype).itemsize
        >= MIN_BYTES for r in body.outputs)
    scalars = {names[v]: dtype_expr(v.dtype) for v in body.inputs if v.ndim == 0}
    return Nest(decorator, params, [names[r] for r in body.outputs], nest,
                comments[eqn][0], outs, pooled, eqn.params["domain"], shareable, scalars)


MERGE_NESTS = 8          # loop nests one helper function may hold (``mergeable``)
MERGE_LINES = 400        # ... and the lines they may take together


def mergeable(nests: list, nest: Nest) -> bool:
    """Whether ``nest`` may join the helper function of ``nests`` (the nests of the
    equations just before it, nothing between them): Numba spends about 0.1 s on each
    function it compiles besides the work its code takes, so an unrolled loop's
    gradient of dozens of small nests compiled mostly that (ten functions of one loop
    each: 1.75 s; one function of ten loops: 0.75 s).  Not a nest run on threads, nor
    one writing a buffer that may share memory with another (``memplan``: the helpers
    are compiled ``noalias``, which two arguments of one function in one memory would
    break) or a loop's destination; at most ``MERGE_NESTS`` nests and ``MERGE_LINES``
    lines a function (Numba's analyses grow faster than its blocks), all of one
    decorator (fast-math flags cover a whole function)."""
    def alone(n):
        return n.pooled or n.shareable or "parallel" in n.decorator
    if alone(nest) or nests and alone(nests[0]):
        return False
    return not nests or (nest.decorator == nests[0].decorator and len(nests) < MERGE_NESTS
                         and sum(len(n.lines) for n in nests) + len(nest.lines) <= MERGE_LINES)


def lower_nests(ctx, nests: list) -> list:
    """``nests`` (consecutive, ``mergeable``) as one jitted helper function, in order,
    and the lines of the main function that call it: the operands a nest takes from an
    earlier one are that nest's locals."""
    params, made = [], set()
    for n in nests:
        params.extend(p for p in n.params if p not in made and p not in params)
        made.update(n.results)
    results = ", ".join(r for n in nests for r in n.results)
    first = nests[0]

    def make(name):
        # (bounds named with an underscore: graph values are named with letters only)
        head = [first.decorator,
                f"def {name}({', '.join(params + ['_lo', '_hi'] * first.pooled)}):"]
        for n in nests:
            head.append(f"    # {n.comment}")
            head.extend("    " + line for line in n.lines)
        return "\n".join(head + [f"    return ({results},)"])
    helper = ctx.helper(make, share=True)
    if first.pooled:   # the outer loop shared out among threads (kernels.on_threads)
        # scalars leave compiled code as Python floats: typed again, or a float32
        # scalar would make the helper compute in float64
        args = [f"{first.scalars[p]}({p})" if p in first.scalars else p for p in params]
        return (["with numba.objmode():",
                 f"    _k.on_threads({helper}, {first.domain[0]}, {', '.join(args)})"]
                + [f"{result} = {buffer}" for result, buffer in first.outs])
    return [f"{results}, = {helper}({', '.join(params)})"]


POOL_MIN = 1 << 18   # elements of a fused nest (target "cpu") run on kernels.on_threads


def _on_pool(eqn) -> bool:
    """Whether a fused nest is large enough, and free of reductions, to be cut into
    ranges of its outer loop that threads run (target="cpu")."""
    domain = eqn.params["domain"]
    return (len(domain) > 0 and domain[0] > 1 and int(np.prod(domain)) >= POOL_MIN
            and not any(_reduction_kind(e) for e in eqn.params["body"].eqns))


# vecmath's functions a nest's code may hold: each is ~50 LLVM instructions where libm's
# is one call, and an unrolled chain of 100 tanh (8 elements) took 1.8 s to compile
# against 1.3 s; beyond this many a nest calls libm's
VECMATH_CALLS = 32


def _loop_nest(ctx, eqn, names, comments, parallel, used, pooled=False) -> list:
    body = eqn.params["body"]
    domain = tuple(eqn.params["domain"])
    producer = {v: e for e in body.eqns for v in e.outputs}
    lines = []
    roots = list(body.outputs)
    reductions, totals = {}, {}
    passed = parallel or pooled     # (buffers handed in: see ``out_buffer``)
    for r in roots:
        e = producer[r]
        kind = _reduction_kind(e)
        if kind is None:
            lines.append(f"{names[r]} = {ctx.out_buffer(r.shape, r.dtype, r, passed)}")
            continue
        init = _init(kind, r)
        reductions[r] = (kind, e)
        if r.ndim == 0:
            lines.append(f"{names[r]} = {_init(kind, r, wide=True)}")
        else:
            lines.append(f"{names[r]} = {ctx.out_buffer(r.shape, r.dtype, r, passed)}")
            if _widened(kind, r) and tuple(e.params["axes"]) != (len(domain) - 1,):
                # (summed over outer loops too: into a float64 array, copied at the end)
                totals[r] = f"{names[r]}_w"
                lines.append(f"{totals[r]} = np.zeros({tuple(r.shape)!r}, "
                             f"{dtype_expr(WIDER[np.dtype(r.dtype)])})")
            else:
                lines.append(f"{names[r]}.fill({init})")
    loop_vars = [f"i{k}" for k in range(len(domain))]
    can_prange = parallel and len(domain) > 0 and all(
        r.ndim == 0 and k in ("sum", "prod") or 0 not in e.params["axes"]
        for r, (k, e) in reductions.items())
    # a first pass over the whole domain finds where pads' windows begin and end; the
    # domain is then split there, so that every nest's body is free of window tests
    probe = _Emitter(ctx, names, producer, comments)
    _emit_body(probe, roots, reductions, names, comments,
               tuple((0, n) for n in domain), loop_vars, {}, totals)
    pieces = _split(domain, loop_vars, probe.breakpoints)
    if len(pieces) * len(probe.lines) > MAX_SPLIT_LINES:      # too much code: keep tests
        pieces = [tuple((0, n) for n in domain)]
    # an array reduced along the innermost loop accumulates in a local over that loop:
    # LLVM keeps it in a register (an array element it must reload after every store
    # through another array that may alias it), and vectorises the sum (``reassoc``:
    # ``_reassociates``)
    last = len(domain) - 1
    accs = {r: f"{names[r]}_acc" for r, (kind, e) in reductions.items()
            if r.ndim > 0 and last in e.params["axes"]}
    # a widened sum along the innermost loop (``_widened``) adds blocks of it in its own
    # dtype (vectorised as before) and each block's total to the wide one
    blocks = {r: f"{names[r]}_blk" for r, (kind, e) in reductions.items()
              if _widened(kind, r) and last in e.params["axes"]}
    shared = set()
    calls = len(pieces) * sum(e.prim.name in SCALAR_TEMPLATES for e in body.eqns)
    for ranges in pieces:
        em = _Emitter(ctx, names, producer, comments)
        em.vector_math = calls <= VECMATH_CALLS
        em.used_consts = used
        em.commented = shared
        chunked = can_prange and _worth_threads(ranges)
        blocked = blocks if not chunked and not pooled else {}
        if chunked or pooled:
            em.unsigned = {loop_vars[0]}
        if blocked:                 # (a block's bounds are not known to be >= 0 either)
            em.unsigned = em.unsigned | {loop_vars[last]}
        if len(pieces) > 1:
            lines.append("# " + ", ".join(f"{v} in [{a}, {b})"
                                          for v, (a, b) in zip(loop_vars, ranges)))
        for depth, (v, (a, b)) in enumerate(zip(loop_vars, ranges)):
            if depth == 0 and chunked:
                lines.extend(_chunked_prange(v, a, b, len(loop_vars)))
                continue
            if depth == 0 and pooled:          # this thread's share: [_lo, _hi)
                lines.append(f"for {v} in range(max({a}, _lo), min({b}, _hi)):")
                continue
            bounds = f"{b}" if a == 0 else f"{a}, {b}"
            pad = "    " * (depth + chunked)
            if depth == last:
                lines.extend(pad + f"{acc} = {_init(*reductions[r][:1], r, wide=True)}"
                             for r, acc in accs.items())
            if depth == last and blocked:
                lines.append(pad + f"for {v}_b in range({a}, {b}, {WIDE_BLOCK}):")
                lines.extend(pad + f"    {blk} = {_init(reductions[r][0], r)}"
                             for r, blk in blocked.items())
                lines.append(pad + f"    for {v} in range({v}_b, min({v}_b + {WIDE_BLOCK}, "
                             f"{b})):")
            else:
                lines.append(pad + f"for {v} in range({bounds}):")
        body = _emit_body(em, roots, reductions, names, comments, ranges, loop_vars,
                          {**accs, **blocked}, totals)
        lines.extend(("    " + line) if chunked or blocked else line for line in body)
        for r, blk in blocked.items():
            total = accs.get(r, names[r])
            lines.append("    " * (last + 1) + f"{total} = {total} + {blk}")
        idx = tuple(_Affine(v, 1, 0, a, max(b - 1, a)) for v, (a, b) in zip(loop_vars, ranges))
        for r, acc in accs.items():
            kind, e = reductions[r]
            kept = [c for k, c in enumerate(idx) if k not in e.params["axes"]]
            target = f"{totals.get(r, names[r])}[{em.subscript(kept)}]"
            lines.append("    " * (last + chunked) + f"{target} = {_combine(kind, target, acc)}")
    # a rank-0 sum or product of narrow integers accumulates as int64 (a prange
    # reduction must be a plain ``+=``); wrapped once at the end, it is NumPy's value
    lines.extend(f"{names[r]} = {narrow(names[r], r.dtype)}" for r in reductions
                 if r.ndim == 0 and narrow("", r.dtype))
    lines.extend(f"{names[r]} = {dtype_expr(r.dtype)}({names[r]})"
                 for r, (kind, _) in reductions.items() if r.ndim == 0 and _widened(kind, r))
    lines.extend(f"{names[r]}[...] = {total}" for r, total in totals.items())
    return lines


def _init(kind, r, wide=False) -> str:
    """The identity of a reduction, in the result's dtype (``wide``: in the dtype it
    accumulates in, ``_widened``)."""
    if kind in ("sum", "prod") or np.dtype(r.dtype).kind == "f":
        return scalar_literal(_IDENTITY[kind], WIDER[np.dtype(r.dtype)]
                              if wide and _widened(kind, r) else r.dtype)
    return _int_extreme(kind, r.dtype)


WIDE_BLOCK = 128           # elements of a widened sum added in its own dtype at a time
WIDER = {np.dtype(np.float32): np.dtype(np.float64),
         np.dtype(np.complex64): np.dtype(np.complex128)}


def _widened(kind, r) -> bool:
    """Whether a sum accumulates in a wider dtype than its result's: a float32 sum adds
    float32 values in blocks of ``WIDE_BLOCK`` along the innermost loop (vectorised:
    several partial sums in each vector register) and each block's total to a float64
    total (a local, or for a sum over outer loops too a float64 array), rounded once at
    the end.  A float32 total of 10⁶ values of 0.1 was off by 2e-4 (NumPy's pairwise
    sum, whose blocks are 128 long too, by 1e-7).  Adding each float32 value to a
    float64 total took 2.6 times as long as a float32 total (10⁷ values: 3.9 ms against
    1.5 ms); blocks cost nothing measurable.  (Blocks of 1024, 32 partial sums of 32
    values each, were off by 3e-7 relative, and by more for large values.)"""
    return kind == "sum" and np.dtype(r.dtype) in WIDER


def _reassociates(eqn) -> bool:
    """Whether a fused nest's results are all float sums or products: it is compiled
    with LLVM's ``reassoc`` flag only (no other fast-math assumption: infinities and
    NaNs keep their meaning), which lets it keep several partial sums in vector
    registers (a 32x32x32 nest reducing along its inner loop: 43 µs without, 6 µs with).
    The flag covers every instruction of the function, so a nest that also writes an
    elementwise result does without it: ``(x * 0.1) * 3.0`` may become ``x * 0.3``,
    which is not the value NumPy computes; a sum's last bits depend on its order
    anyway (NumPy's are pairwise)."""
    body = eqn.params["body"]
    producer = {v: e for e in body.eqns for v in e.outputs}
    return all(_reduction_kind(producer[r]) in ("sum", "prod")
               and np.dtype(r.dtype).kind in "fc" for r in body.outputs)


PRANGE_MIN = 1 << 15       # elements a loop nest needs before it is shared among threads
PRANGE_CHUNKS = 64         # blocks of outer iterations the threads share out


def _worth_threads(ranges) -> bool:
    size = 1
    for a, b in ranges:
        size *= b - a
    return size >= PRANGE_MIN and ranges[0][1] - ranges[0][0] > 1


def _chunked_prange(v, a, b, depth) -> list:
    """The outer loop as ``numba.prange`` over blocks, each running a plain ``range``
    whose start is bounded below by the constant ``a``.  Numba hands a prange body its
    bounds at run time, so LLVM cannot tell that an index such as ``i0 - 1`` is
    non-negative: the test Numba adds for negative indices stays in the loop and keeps
    it from being vectorised (measured: the Rosenbrock gradient over 1e6 elements 2.9 ms
    in a prange, 0.32 ms in a range).  The body therefore indexes with that variable
    cast to ``np.uint64`` (``_Emitter.subscript``): 0.18 ms on two threads."""
    size = -(-(b - a) // PRANGE_CHUNKS)
    count = -(-(b - a) // size)
    base = "" if a == 0 else f"{a} + "
    return [f"for {v}_ in numba.prange({count}):",
            f"    for {v} in range({base}{v}_ * {size}, min({base}({v}_ + 1) * {size}, {b})):"]


MAX_PIECES = 9             # loop nests one fused equation may be split into
MAX_SPLIT_LINES = 1500     # and the lines of code they may take together


def _split(domain, loop_vars, breakpoints) -> list:
    """The domain cut at the breakpoints: a list of per-dimension (start, stop) tuples."""
    import itertools
    per_dim = []
    for v, n in zip(loop_vars, domain):
        cuts = sorted({0, n} | {b for b in breakpoints.get(v, ()) if 0 < b < n})
        per_dim.append(list(zip(cuts[:-1], cuts[1:])) or [(0, n)])
    count = 1
    for d in per_dim:
        count *= len(d)
    if count > MAX_PIECES:
        return [tuple((0, n) for n in domain)]
    return list(itertools.product(*per_dim))


def _emit_body(em, roots, reductions, names, comments, ranges, loop_vars, accs,
               totals) -> list:
    depth = len(ranges)
    idx = tuple(_Affine(v, 1, 0, a, max(b - 1, a)) for v, (a, b) in zip(loop_vars, ranges))
    for r in roots:
        if r in reductions:
            kind, e = reductions[r]
            val = em.value(e.inputs[0], idx, depth)
            axes = e.params["axes"]
            kept = [c for k, c in enumerate(idx) if k not in axes]
            target = (accs[r] if r in accs else names[r] if r.ndim == 0
                      else f"{totals.get(r, names[r])}[{em.subscript(kept)}]")
            if e not in em.commented:
                em.commented.add(e)
                em.emit(depth, f"# {comments[e][0]}")
            em.emit(depth, f"{target} = {_combine(kind, target, val)}")
        else:
            val = em.value(r, idx, depth)
            em.emit(depth, f"{names[r]}[{em.subscript(loop_vars)}] = {val}")
    return em.lines


def _reduction_kind(eqn):
    from ..passes.fuse import REDUCTIONS
    return REDUCTIONS.get(eqn.prim.name)


def _int_extreme(kind, dtype):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        return "True" if kind == "min" else "False"
    return scalar_literal(info.min if kind == "max" else info.max, dtype)


def _combine(kind, acc, val) -> str:
    if kind == "sum":
        return f"{acc} + {val}"
    if kind == "prod":
        return f"{acc} * {val}"
    return f"np.{'maximum' if kind == 'max' else 'minimum'}({acc}, {val})"


