"""Batching: the vmap pass.

``batch_graph(g, batched, size)`` returns a Graph computing ``g`` for ``size`` examples
at once: each input marked in ``batched`` gains a leading axis of ``size`` (the example
index), and every output has it.  Each equation with a batched operand is replaced by its
primitive's batching rule; an equation reading no batched value is copied as it is
(computed once for all examples).

A rule has the signature ``rule(prim, args, batched, count, **params) -> outputs`` where
``args`` are the operands (batched ones with the example axis first) and every output
is batched, example axis first (unless the rule returns a ``_Partly``, which says which
are).  Rules are written with gradc operations, so a batched
Graph can be differentiated and batched again.  Most rules move the example axis through
the primitive's params (``axes`` + 1, a new einsum letter, ...); a primitive without
such a rule is batched by ``_by_scan``: a ``scan`` over the examples, one call of the
primitive per example, which is correct for every primitive and compiles to a loop.
"""
from __future__ import annotations

import numpy as np

from ..errors import ArgumentError, with_location
from ..ir import Graph, Lit
from ..trace import bind, shape_of, source_line, trace_graph


def batch_graph(graph: Graph, batched, size: int, unbatched=None) -> Graph:
    """``graph`` over a batch of ``size`` examples: the inputs marked ``batched`` get a
    leading example axis, and so does every output, except those marked ``unbatched``
    (``vmap``'s ``out_axes=None``), which must not depend on a batched input."""
    batched = [bool(b) for b in batched]
    unbatched = list(unbatched or []) + [False] * len(graph.outputs)
    avals = [(((size,) if b else ()) + tuple(v.shape), v.dtype)
             for v, b in zip(graph.inputs, batched)]

    def fn(*args):
        env = dict(zip(graph.inputs, args))
        marked = {v for v, b in zip(graph.inputs, batched) if b}

        def read(a):
            return a.value if isinstance(a, Lit) else env[a]

        for eqn in graph.eqns:
            xs = [read(a) for a in eqn.inputs]
            bs = [not isinstance(a, Lit) and a in marked for a in eqn.inputs]
            with source_line(eqn.source):
                if not any(bs):
                    outs = bind(eqn.prim, *xs, **eqn.params)
                    outs = outs if eqn.prim.multiple_results else [outs]
                else:
                    rule = RULES.get(eqn.prim.name, _by_scan)
                    outs = rule(eqn.prim, xs, bs, size, **eqn.params)
                    flags = getattr(outs, "batched", [True] * len(eqn.outputs))
                    marked.update(v for v, b in zip(eqn.outputs, flags) if b)
            env.update(zip(eqn.outputs, outs))
        for i, o in enumerate(graph.outputs):
            if unbatched[i] and not isinstance(o, Lit) and o in marked:
                raise ArgumentError(with_location(
                    f"vmap: out_axes is None for result {i}, but it depends on the mapped "
                    "arguments (only a result that is the same for every example can be "
                    "returned once)"))
        return [read(o) if unbatched[i] or not isinstance(o, Lit) and o in marked
                else _batched(read(o), o.shape, size) for i, o in enumerate(graph.outputs)]

    new, _, captured = trace_graph(fn, avals)
    assert not captured, "batch_graph of a closed graph captured a value"
    return new


def _batched(x, shape, size):
    """An unbatched value repeated for every example."""
    from ..prims.shape import broadcast_in_dim
    shape = tuple(shape)
    return broadcast_in_dim(x, (size,) + shape, tuple(range(1, len(shape) + 1)))


def _single(prim, args, params):
    return [bind(prim, *args, **params)]


# ---------------------------------------------------------------- rules

def _elementwise(prim, args, batched, count, **params):
    """Operands of one shape (rank-0 ones broadcast implicitly): an unbatched operand of
    rank > 0, or a batched one of rank 0 beside larger ones, is broadcast to the batched
    output shape."""
    from ..prims.shape import broadcast_in_dim
    shapes = [tuple(shape_of(a))[1:] if b else tuple(shape_of(a))
              for a, b in zip(args, batched)]
    out = max(shapes, key=len)
    full = (count,) + out
    fixed = []
    for a, b, s in zip(args, batched, shapes):
        if b and s != out:
            a = broadcast_in_dim(a, full, (0,))
        elif not b and s:
            a = _batched(a, s, count)
        fixed.append(a)
    return _single(prim, fixed, params)


def _shifted(name):
    """A primitive whose ``name`` param is an axis or a tuple of axes: each moves by one."""
    def rule(prim, args, batched, count, **params):
        value = params[name]
        params = dict(params, **{name: tuple(a + 1 for a in value) if isinstance(value, tuple)
                                 else value + 1})
        return _single(prim, args, params)
    return rule


def _broadcast_rule(prim, args, batched, count, shape, dims):
    return _single(prim, args, dict(shape=(count,) + tuple(shape),
                                    dims=(0,) + tuple(d + 1 for d in dims)))


def _reshape_rule(prim, args, batched, count, shape):
    return _single(prim, args, dict(shape=(count,) + tuple(shape)))


def _transpose_rule(prim, args, batched, count, perm):
    return _single(prim, args, dict(perm=(0,) + tuple(p + 1 for p in perm)))


def _slice_rule(prim, args, batched, count, index):
    return _single(prim, args, dict(index=((0, count, 1),) + tuple(index)))


def _pad_rule(prim, args, batched, count, index, shape):
    return _single(prim, args, dict(index=((0, count, 1),) + tuple(index),
                                    shape=(count,) + tuple(shape)))


def _concatenate_rule(prim, args, batched, count, axis):
    args = [a if b else _batched(a, shape_of(a), count) for a, b in zip(args, batched)]
    return _single(prim, args, dict(axis=axis + 1))


def _einsum_rule(prim, args, batched, count, spec):
    """A new letter for the example index, on the batched operands and the output."""
    from ..prims.linalg import parse_spec
    sa, sb, so = parse_spec(spec)
    used = set(sa + sb + so)
    z = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in used)
    sa, sb = (z + sa if batched[0] else sa), (z + sb if batched[1] else sb)
    return _single(prim, args, dict(spec=f"{sa},{sb}->{z}{so}"))


def _leading_batch(prim, args, batched, count, **params):
    """A primitive that maps over leading axes of its one operand already (det,
    slogdet): the example axis is one more."""
    out = bind(prim, *args, **params)
    return list(out) if prim.multiple_results else [out]


def _searchsorted_rule(prim, args, batched, count, **params):
    """Values batched, sorted array shared: elementwise in the values.  A sorted array
    per example is a loop over the examples (``_by_scan``)."""
    if batched[0]:
        return _by_scan(prim, args, batched, count, **params)
    return _single(prim, args, params)


def _solve_rule(prim, args, batched, count, **params):
    """solve maps over leading axes shared by the matrix and the right-hand sides; a
    vector right-hand side becomes a one-column matrix for the batch."""
    from ..prims.shape import reshape
    a, b = [x if bt else _batched(x, shape_of(x), count) for x, bt in zip(args, batched)]
    if len(shape_of(b)) == 2:          # one example: a (n, n) and b (n,)
        n = shape_of(b)[1]
        return [reshape(bind(prim, a, reshape(b, (count, n, 1)), **params), (count, n))]
    return _single(prim, [a, b], params)


def _conv2d_rule(prim, args, batched, count, **params):
    """Images batched, kernel shared: the examples' images are one larger batch of
    images.  A kernel per example is a loop over the examples (``_by_scan``)."""
    from ..prims.shape import reshape
    if batched[1]:
        return _by_scan(prim, args, batched, count, **params)
    image = args[0]
    _, n, c, h, w = shape_of(image)
    out = bind(prim, reshape(image, (count * n, c, h, w)), args[1], **params)
    return [reshape(out, (count, n) + tuple(shape_of(out))[1:])]


_FULL = ("s", None, None, None)


def _example_axis(spec, idx):
    """Where the example axis lands in ``x[:, *spec]``: 0, unless the spec's advanced
    indices (arrays, and integers beside them) are not adjacent, when NumPy puts their
    broadcast dimensions first and the example axis after them; None (left to the scan)
    for a spec mixing newaxis with index arrays."""
    kinds = [e[0] for e in spec]
    if "a" not in kinds:
        return 0
    if "n" in kinds:
        return None
    adv = [i for i, k in enumerate(kinds) if k in ("a", "i")]
    if adv == list(range(adv[0], adv[-1] + 1)):
        return 0
    return len(np.broadcast_shapes(*[tuple(shape_of(idx[e[1]])) for e in spec if e[0] == "a"]))


def _moved(x, src, dst):
    """``x`` with its axis ``src`` moved to ``dst``."""
    from ..prims.shape import transpose
    if src == dst:
        return x
    perm = [i for i in range(len(shape_of(x))) if i != src]
    perm.insert(dst, src)
    return transpose(x, tuple(perm))


def _gather_rule(prim, args, batched, count, spec):
    """Examples batched, indices shared: a leading full slice (``x[:, *spec]``).
    Index arrays batched (an embedding's rows, a backpointer followed by each
    sequence): each example's indices into its own example of ``x`` (``x`` broadcast
    where it is shared), an ``arange`` over the examples as the first index array."""
    if not any(batched[1:]):
        where = _example_axis(spec, args[1:])
        if where is None:
            return _by_scan(prim, args, batched, count, spec=spec)
        out = bind(prim, *args, spec=(_FULL,) + tuple(spec))
        return [_moved(out, where, 0)]
    if any(e[0] == "n" for e in spec):
        return _by_scan(prim, args, batched, count, spec=spec)
    return [_gather_batched_indices(prim, args, batched, count, spec)]


def _scatter_batched_indices(prim, args, batched, count, shape, spec):
    """The transpose of ``_gather_batched_indices``: each example's values added into
    its own example of the result at its own indices (what reverse mode makes of a
    gather through batched indices), the values' window axes in the order of that
    gather's window, an arange over the examples the first index."""
    from ..prims.shape import transpose
    v, idx = args[0], list(args[1:])
    if not batched[0]:
        v = _batched(v, shape_of(v), count)
    idx, r, p = _aligned_indices(idx, batched[1:], count, tuple(shape), spec)
    rest = len(shape_of(v)) - 1 - r
    perm = _window_order(r, p, rest)
    inverse = tuple(int(k) for k in np.argsort(perm))
    if inverse != tuple(range(len(inverse))):
        v = transpose(v, inverse)
    iota = np.arange(count, dtype=np.int64).reshape((count,) + (1,) * r)
    return bind(prim, v, *idx, iota, shape=(count,) + tuple(shape),
                spec=(("a", len(idx)),) + tuple(spec))


def _aligned_indices(idx, batched, count, x_shape, spec):
    """``(index arrays, r, p)``: the batched index arrays with their example axes
    aligned (first, ones padded after them, to the rank ``r`` of the broadcast index
    axes of one example), and where those axes stand in one example's window of
    ``x[spec]`` (``p``: after ``p`` sliced axes when the advanced indices are
    adjacent, else first)."""
    from ..codegen.indexing import _entries
    from ..prims.shape import reshape
    idx = list(idx)
    shapes = [tuple(shape_of(i))[1:] if b else tuple(shape_of(i))
              for i, b in zip(idx, batched)]
    r = len(np.broadcast_shapes(*shapes))
    for k, (i, b, s) in enumerate(zip(idx, batched, shapes)):
        if b and len(s) < r:
            idx[k] = reshape(i, (count,) + (1,) * (r - len(s)) + s)
    entries = _entries(x_shape, spec)
    advanced = [j for j, e in enumerate(entries) if e[0] in "ia"]
    adjacent = advanced[-1] - advanced[0] + 1 == len(advanced)
    p = sum(1 for e in entries[:advanced[0]] if e[0] == "s") if adjacent else 0
    return idx, r, p


def _window_order(r, p, rest):
    """The permutation taking a window ``(example, r index axes, rest other axes)``
    (an arange over the examples first) to ``(example, p other axes, the index
    axes, the other axes after them)``."""
    return [0] + [1 + r + j for j in range(p)] + [1 + j for j in range(r)] + \
        [1 + r + j for j in range(p, rest)]


def _gather_batched_indices(prim, args, batched, count, spec):
    """Each example's index arrays into ``x``: with ``x`` batched,
    ``x[arange(count)[:, None...], *spec]``, else ``x[spec]`` (the example axis then
    leads the index axes); then the example axis first and the window's other axes in
    NumPy's order for one example (``_aligned_indices``)."""
    from ..prims.shape import transpose
    x = args[0]
    x_shape = tuple(shape_of(x))[1 if batched[0] else 0:]
    idx, r, p = _aligned_indices(args[1:], batched[1:], count, x_shape, spec)
    if not batched[0]:
        return _moved(bind(prim, x, *idx, spec=tuple(spec)), p, 0)
    iota = np.arange(count, dtype=np.int64).reshape((count,) + (1,) * r)
    out = bind(prim, x, *idx, iota, spec=(("a", len(idx)),) + tuple(spec))
    perm = _window_order(r, p, len(shape_of(out)) - 1 - r)
    return out if perm == list(range(len(perm))) else transpose(out, tuple(perm))


def _scatter_add_rule(prim, args, batched, count, shape, spec):
    if any(batched[1:]) and not any(e[0] == "n" for e in spec):
        return [_scatter_batched_indices(prim, args, batched, count, shape, spec)]
    where = _example_axis(spec, args[1:])
    if any(batched[1:]) or where is None:
        return _by_scan(prim, args, batched, count, shape=shape, spec=spec)
    return _single(prim, [_moved(args[0], 0, where)] + list(args[1:]),
                   dict(shape=(count,) + tuple(shape), spec=(_FULL,) + tuple(spec)))


def _index_set_rule(prim, args, batched, count, spec, **params):
    """``index_set`` and ``scatter_extremum`` (``params``: its ``op``): updates of x."""
    from ..prims.index import _indexed_shape
    x, v, idx = args[0], args[1], args[2:]
    where = _example_axis(spec, idx)
    if any(batched[2:]) or where is None:
        return _by_scan(prim, args, batched, count, spec=spec, **params)
    if not batched[0]:
        x = _batched(x, shape_of(x), count)
    window = tuple(_indexed_shape(tuple(shape_of(x))[1:], spec, idx))
    # (scatter_extremum takes values of the window's shape only, index_set also one)
    if batched[1] or len(shape_of(v)) > 0 or prim.name == "scatter_extremum":
        from ..prims.shape import broadcast_in_dim
        if not batched[1]:
            v = _batched(v, shape_of(v), count)
        if tuple(shape_of(v))[1:] != window:          # a scalar per example
            v = broadcast_in_dim(v, (count,) + window, (0,))
        v = _moved(v, 0, where)
    return _single(prim, [x, v] + list(idx), dict(spec=(_FULL,) + tuple(spec), **params))


def _scan_rule(prim, args, batched, count, body, n_consts, n_carry, length, reverse):
    """The body batched (``batch_graph``), every carry batched (an unbatched one is
    repeated: the body may make it differ between examples); batched xs and the ys
    carry the example axis second, after the step axis."""
    consts, carry, xs = args[:n_consts], args[n_consts:n_consts + n_carry], \
        args[n_consts + n_carry:]
    flags = list(batched)
    carry = [c if b else _batched(c, shape_of(c), count)
             for c, b in zip(carry, flags[n_consts:n_consts + n_carry])]
    xs = [_moved(x, 0, 1) if b else x for x, b in zip(xs, flags[n_consts + n_carry:])]
    flags[n_consts:n_consts + n_carry] = [True] * n_carry
    new_body = batch_graph(body, flags, count)
    out = prim.bind(*consts, *carry, *xs, body=new_body, n_consts=n_consts,
                    n_carry=n_carry, length=length, reverse=reverse)
    return list(out[:n_carry]) + [_moved(y, 1, 0) for y in out[n_carry:]]


def _cond_rule(prim, args, batched, count, branches):
    """A shared predicate: both branches batched, one cond.  A predicate per example:
    both branches run for every example and ``select`` picks each one's (JAX's rule)."""
    from ..prims.elementwise import select
    from ..prims.shape import broadcast_in_dim
    pred, ops_, flags = args[0], list(args[1:]), list(batched[1:])
    new = tuple(batch_graph(b, flags, count) for b in branches)
    if not batched[0]:
        return list(prim.bind(pred, *ops_, branches=new))
    if np.dtype(_dtype(pred)) != np.bool_:
        return _by_scan(prim, args, batched, count, branches=branches)
    from ..interpret import eval_graph
    outs = []
    for no, yes in zip(eval_graph(new[0], ops_), eval_graph(new[1], ops_)):
        shape = tuple(shape_of(yes))
        outs.append(select(broadcast_in_dim(pred, shape, (0,)), yes, no))
    return outs


def _while_rule(prim, args, batched, count, branches, n_cond, n_body, checkpoint=None):
    """JAX's rule: every carry batched; the loop runs while any example's condition
    holds, and the body keeps the carries of the examples whose condition is false as
    they are (``select``).  The body reads the condition's consts too."""
    from ..interpret import eval_graph
    from ..prims.elementwise import select
    from ..prims.reduce import reduce_max
    from ..prims.shape import broadcast_in_dim
    cond_graph, body_graph = branches
    cc, bc, carry = args[:n_cond], args[n_cond:n_cond + n_body], args[n_cond + n_body:]
    fc, fb, fk = batched[:n_cond], batched[n_cond:n_cond + n_body], batched[n_cond + n_body:]
    carry = [c if b else _batched(c, shape_of(c), count) for c, b in zip(carry, fk)]
    if count == 0:           # (no example: no trip, and no condition to take the any of)
        return carry
    n_carry = len(carry)
    bcond = batch_graph(cond_graph, list(fc) + [True] * n_carry, count)
    bbody = batch_graph(body_graph, list(fb) + [True] * n_carry, count)
    c_avals = [(tuple(shape_of(a)), _dtype(a)) for a in cc]
    b_avals = [(tuple(shape_of(a)), _dtype(a)) for a in bc]
    k_avals = [(tuple(shape_of(a)), _dtype(a)) for a in carry]

    def keep_going(*vals):
        pred = eval_graph(bcond, list(vals))[0]
        return [reduce_max(pred, (0,))]

    def step(*vals):
        c, b, k = vals[:n_cond], vals[n_cond:n_cond + n_body], list(vals[n_cond + n_body:])
        pred = eval_graph(bcond, list(c) + k)[0]
        new = eval_graph(bbody, list(b) + k)
        return [select(broadcast_in_dim(pred, tuple(shape_of(v)), (0,)), v, old)
                for v, old in zip(new, k)]
    new_cond, _, cap1 = trace_graph(keep_going, c_avals + k_avals)
    new_body, _, cap2 = trace_graph(step, c_avals + b_avals + k_avals)
    assert not cap1 and not cap2
    return list(prim.bind(*cc, *cc, *bc, *carry, branches=(new_cond, new_body),
                          n_cond=n_cond, n_body=n_cond + n_body, checkpoint=checkpoint))


def _custom_jvp_rule(prim, args, batched, count, fun, rule, n_args, name, where):
    """The function and its rule batched alike (the rule's tangents as their primals)."""
    flags = list(batched)
    return list(prim.bind(*args, fun=batch_graph(fun, flags, count),
                          rule=rule.batched(flags[:n_args] * 2 + flags[n_args:], count),
                          n_args=n_args, name=name, where=where))


def _all_batched(args, batched, count):
    return [a if b else _batched(a, shape_of(a), count) for a, b in zip(args, batched)]


def _custom_vjp_rule(prim, args, batched, count, fun, fwd, bwd, n_args, name, where):
    """Every argument batched (``bwd`` batched returns batched cotangents), then ``fun``,
    ``fwd`` and ``bwd`` batched; ``fwd``'s residuals are all batched, the function's
    outside values as they are."""
    from ..prims.custom import Deferred
    consts = list(batched[n_args:])
    flags = [True] * n_args + consts
    args = _all_batched(args[:n_args], batched[:n_args], count) + list(args[n_args:])
    new_fwd = fwd.batched(flags, count)

    def make_bwd():
        n_res = len(fwd.graph.outputs) - len(fun.outputs)
        return batch_graph(bwd.graph, [True] * n_res + consts + [True] * len(fun.outputs),
                           count)

    new_bwd = Deferred(make_bwd, f"{bwd} (batched)")
    return list(prim.bind(*args, fun=batch_graph(fun, flags, count), fwd=new_fwd,
                          bwd=new_bwd, n_args=n_args, name=name, where=where))


def _custom_lin_rule(prim, args, batched, count, bwd, n_res, name, where):
    """Every tangent batched, and ``bwd`` batched with its residuals as they are."""
    flags = list(batched[:n_res]) + [True] * (len(bwd.inputs) - n_res)
    args = list(args[:n_res]) + _all_batched(args[n_res:], batched[n_res:], count)
    return list(prim.bind(*args, bwd=batch_graph(bwd, flags, count), n_res=n_res,
                          name=name, where=where))


def _checkpoint_rule(prim, args, batched, count, fun, name, where):
    return list(prim.bind(*args, fun=batch_graph(fun, batched, count), name=name,
                          where=where))


class _Partly(list):
    """A rule's outputs of which only those flagged in ``batched`` are batched."""

    def __init__(self, outs, batched):
        super().__init__(outs)
        self.batched = list(batched)


def _barrier_rule(prim, args, batched, count, n):
    # each value keeps its batching (a weight stays one weight, not one per example)
    return _Partly(prim.bind(*args, n=n), batched[:n])


def _here():
    """The user's line of the equation being batched (the ``if``, not the vmap call)."""
    from ..trace import _SOURCE
    return _SOURCE[-1] if _SOURCE else None


def _guard_rule(prim, args, batched, count, **params):
    raise ArgumentError(with_location(
        "vmap: Python control flow (if, while, bool()) on a value that differs between "
        "the examples; use np.where or gradc.cond, which batch", _here()))


def _nonzero_rule(prim, args, batched, count, **params):
    raise ArgumentError(with_location(
        "vmap: a result whose length depends on values that differ between the examples "
        "(boolean-mask indexing, np.nonzero, np.unique); use np.where(mask, x, 0), which "
        "keeps the shape", _here()))


def _by_scan(prim, args, batched, count, **params):
    """Any primitive: a scan over the examples calling it once per example."""
    from ..prims.loops import _closed, scan_p
    consts = [a for a, b in zip(args, batched) if not b]
    xs = [a for a, b in zip(args, batched) if b]
    avals = ([(tuple(shape_of(a)), _dtype(a)) for a in consts]
             + [(tuple(shape_of(a))[1:], _dtype(a)) for a in xs])

    def body(*vals):
        c, x = iter(vals[:len(consts)]), iter(vals[len(consts):])
        out = bind(prim, *[next(x) if b else next(c) for b in batched], **params)
        return list(out) if prim.multiple_results else [out]

    graph = _closed(body, avals)
    return list(scan_p.bind(*consts, *xs, body=graph, n_consts=len(consts), n_carry=0,
                            length=count, reverse=False))


def _dtype(x):
    from ..trace import dtype_of
    return np.dtype(dtype_of(x))


def _rules() -> dict:
    from .fuse import ELEMENTWISE
    rules = {name: _elementwise for name in ELEMENTWISE}
    rules.update({
        "reduce_sum": _shifted("axes"), "reduce_max": _shifted("axes"),
        "reduce_min": _shifted("axes"), "reduce_prod": _shifted("axes"),
        "argmax": _shifted("axis"), "argmin": _shifted("axis"), "cumsum": _shifted("axis"),
        "argsort": _shifted("axis"), "searchsorted": _searchsorted_rule,
        "broadcast_in_dim": _broadcast_rule, "reshape": _reshape_rule,
        "transpose": _transpose_rule, "slice": _slice_rule, "pad": _pad_rule,
        "concatenate": _concatenate_rule, "einsum": _einsum_rule, "guard": _guard_rule,
        "nonzero": _nonzero_rule, "solve": _solve_rule, "det": _leading_batch,
        "slogdet": _leading_batch, "cofactor": _leading_batch,
        "conv2d": _conv2d_rule, "gather": _gather_rule, "scatter_add": _scatter_add_rule,
        "index_set": _index_set_rule, "scatter_extremum": _index_set_rule,
        "scan": _scan_rule, "cond": _cond_rule,
        "while_loop": _while_rule, "custom_jvp_call": _custom_jvp_rule,
        "custom_vjp_call": _custom_vjp_rule, "custom_lin": _custom_lin_rule,
        "checkpoint": _checkpoint_rule, "barrier": _barrier_rule,
    })
    return rules


RULES = _rules()
