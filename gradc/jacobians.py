"""Jacobians and Hessian-vector products by composition (JAX's conventions).

* ``jacfwd(f)``: ``vmap`` of ``jvp`` over the columns of the identity: one batched
  forward pass, as many tangents as inputs.
* ``jacrev(f)``: ``vmap`` of the VJP over the rows of the identity: one forward pass and
  one batched backward pass, as many cotangents as outputs.
* ``hessian(f)``: ``jacfwd(jacrev(f))``.
* ``hvp(f, primals, tangents)``: forward over reverse (``J_{∇f} v``), or with
  ``method="rev-rev"`` the gradient of ``<v, ∇f(x)>``; both give ``∇²f(x) v``.

The Jacobian of ``f: R^(in shape) -> R^(out shape)`` has shape ``out shape + in shape``.
Each is a ``jit`` of the composition: traced once per argument signature into one Graph
(the inner transformations inline theirs) and compiled for ``target``.
"""
from __future__ import annotations

import weakref

import numpy as np

from .errors import ArgumentError, check_function, with_location
from .trace import Tracer, dtype_of, shape_of


def _with(args, argnums, x):
    return tuple(args[:argnums]) + (x,) + tuple(args[argnums + 1:])


def _checked(args, argnums, what):
    if not isinstance(argnums, int) or not -len(args) <= argnums < len(args):
        raise ArgumentError(with_location(
            f"{what}: argnums must be the position of one argument, got {argnums!r} for "
            f"{len(args)} arguments"))
    argnums %= len(args)
    x = args[argnums]
    if not _is_array(x):      # (only sparse=True gets here with a pytree)
        raise ArgumentError(with_location(
            f"{what}: argument {argnums} is a {type(x).__name__} (a pytree); with "
            "sparse=True the argument is one array (the result is one scipy.sparse "
            "matrix): concatenate its raveled leaves, or use sparse=False"))
    x = x if isinstance(x, Tracer) else np.asarray(x)
    if np.dtype(dtype_of(x)).kind != "f":
        raise ArgumentError(with_location(
            f"{what}: argument {argnums} must be a float array, got dtype {dtype_of(x)}"))
    return argnums, x


def _basis(shape, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    return np.eye(n, dtype=dtype).reshape((n,) + tuple(shape))


def _columns_last(stacked, out_shape, in_shape):
    """(n, *out) stacked by input component -> (*out, *in)."""
    moved = np.moveaxis(stacked, 0, -1)
    return np.reshape(moved, tuple(out_shape) + tuple(in_shape))


def _each(make, fun, argnums, target):
    """``argnums`` a tuple, ``fun`` returning one array: a tuple of Jacobians, one per
    argument (``jacobian``'s modes, each its own chain)."""
    from .api import jit
    parts = [make(fun, k, target=target) for k in argnums]

    def jac(*args):
        return tuple(p(*args) for p in parts)
    jac.__name__ = jac.__qualname__ = f"{make.__name__}_{getattr(fun, '__name__', 'f')}"
    return jit(jac, target=target)


# ---------------------------------------------------------------- jacfwd, jacrev

def _wrt(args, argnums, what):
    """The differentiated arguments: ``(positions, many, leaves, tree)``.  ``argnums`` is
    a position or a tuple of them (``many``); each argument is a float array or a pytree
    of them, whose leaves (in ``tree``'s order: the distinct positions' arguments, a
    tuple of them when ``many``) are the inputs of the Jacobian."""
    from .pytree import flatten
    many = isinstance(argnums, (tuple, list))
    asked = tuple(argnums) if many else (argnums,)
    if not asked:
        raise ArgumentError(with_location(f"{what}: argnums is empty"))
    positions = []
    for k in asked:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or \
                not -len(args) <= k < len(args):
            raise ArgumentError(with_location(
                f"{what}: argnums must be the position of an argument (or a tuple of "
                f"them), got {argnums!r} for {len(args)} arguments"))
        positions.append(int(k) % len(args))
    unique = tuple(dict.fromkeys(positions))
    for k in unique:
        for leaf in flatten(args[k])[0]:
            x = leaf if isinstance(leaf, Tracer) else np.asarray(leaf)
            if np.dtype(dtype_of(x)).kind != "f":
                raise ArgumentError(with_location(
                    f"{what}: argument {k} must be a float array (or a pytree of them), "
                    f"got {'a leaf of ' if not _is_array(args[k]) else ''}dtype "
                    f"{dtype_of(x)}"))
    leaves, tree = flatten(tuple(args[k] for k in unique) if many else args[unique[0]])
    xs = [leaf if isinstance(leaf, Tracer) else np.asarray(leaf) for leaf in leaves]
    if not xs:
        raise ArgumentError(with_location(
            f"{what}: argument{'s' if many else ''} {argnums!r} hold{'' if many else 's'} "
            "no arrays to differentiate"))
    return (tuple(positions), unique), many, xs, tree


def _is_array(x) -> bool:
    return isinstance(x, (Tracer, np.ndarray, np.generic, float, int, complex))


def _restricted(fun, args, where, many, tree, has_aux, what):
    """``fun`` as a function of the differentiated leaves (the other arguments fixed),
    returning its output (and, ``has_aux``, the pair ``(output, aux)``)."""
    from .pytree import unflatten
    _, unique = where

    def g(*xs):
        dyn = unflatten(tree, list(xs))
        new = list(args)
        for k, d in zip(unique, dyn if many else (dyn,)):
            new[k] = d
        out = fun(*new)
        if has_aux and not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ArgumentError(with_location(
                f"{what}: has_aux=True requires {getattr(fun, '__name__', 'f')} to return "
                f"a pair (output, aux), got {type(out).__name__}"))
        return tuple(out) if has_aux else out
    return g


def _assemble(out_tree, per_out, where, many, tree):
    """JAX's nesting: the output's structure outside, the arguments' inside (a tuple
    over ``argnums`` when it is a tuple); ``per_out[j][i]`` is output leaf j's Jacobian
    w.r.t. input leaf i."""
    from .pytree import unflatten
    positions, unique = where

    def inner(blocks):
        dyn = unflatten(tree, blocks)
        return tuple(dyn[unique.index(k)] for k in positions) if many else dyn
    return unflatten(out_tree, [inner(blocks) for blocks in per_out])


def _forward_leaves(g, xs):
    """``(out tree, per_out)``: the Jacobian of ``g(*xs)`` by a vmap of jvp over the
    columns of the identity, one per input (the other inputs' tangents are no tangents,
    not zeros: a basis of all the inputs together would push dense zero blocks through
    every term); ``per_out[j][i]`` has shape (output leaf j's shape + input i's)."""
    from .api import jvp, vmap
    from .pytree import flatten
    per_out, out_tree = None, None
    for i, x in enumerate(xs):
        shape = tuple(shape_of(x))

        def g_i(xi, i=i):
            return g(*xs[:i], xi, *xs[i + 1:])
        stacked = vmap(lambda t, g_i=g_i, x=x: jvp(g_i, (x,), (t,))[1])(
            _basis(shape, np.dtype(dtype_of(x))))
        leaves, out_tree = flatten(stacked)
        blocks = [_columns_last(s, tuple(shape_of(s))[1:], shape) if _inexact(s) else
                  _zero_block(tuple(shape_of(s))[1:], x) for s in leaves]
        per_out = [[b] for b in blocks] if per_out is None else \
            [row + [b] for row, b in zip(per_out, blocks)]
    return out_tree, per_out


def _reverse_leaves(g, xs, has_aux=False):
    """``(out tree, per_out, aux)``: the Jacobian of ``g(*xs)`` by one forward pass and a
    vmap of the VJP over the rows of each output in turn (the other outputs' cotangents
    zeros)."""
    from .api import vjp, vmap
    from .pytree import flatten, unflatten
    result = vjp(g, *xs, has_aux=has_aux)
    y, pull = result[0], result[1]
    leaves, out_tree = flatten(y)
    per_out = []
    for j, leaf in enumerate(leaves):
        out_shape = tuple(shape_of(leaf))
        if not _inexact(leaf):
            per_out.append([_zero_block(out_shape, x) for x in xs])
            continue

        def row(u, j=j):
            cts = [u if i == j else np.zeros(shape_of(v), dtype_of(v))
                   for i, v in enumerate(leaves)]
            return tuple(pull(unflatten(out_tree, cts)))
        stacked = vmap(row)(_basis(out_shape, np.dtype(dtype_of(leaf))))
        # (m, *in_i): row r is the gradient of output component r
        per_out.append([np.reshape(st, out_shape + tuple(shape_of(x)))
                        for st, x in zip(stacked, xs)])
    return out_tree, per_out, (result[2] if has_aux else None)


def _inexact(y) -> bool:
    return np.issubdtype(np.dtype(dtype_of(y)), np.inexact)


def _zero_block(out_shape, x):
    """The Jacobian block of an integer or bool output (``argmax``, a comparison) with
    respect to ``x``: zeros of shape (output shape + x's), in x's dtype.  A piecewise
    constant output's derivative is zero wherever it has one; JAX's ``jacfwd`` gives
    zeros of its dtype ``float0`` there, which NumPy lacks, and float zeros keep
    ``jacfwd``, ``jacrev`` and ``jacobian`` in agreement (``jvp`` of such an output gives
    zeros of the output's own dtype, ``vjp`` float zeros in the inputs' dtypes)."""
    return np.zeros(tuple(out_shape) + tuple(shape_of(x)), np.dtype(dtype_of(x)))


def _forward(g, x):
    """The Jacobian of ``g`` at one array ``x`` (out shape + in shape; a pytree of them
    for a pytree of outputs)."""
    from .pytree import unflatten
    out_tree, per_out = _forward_leaves(g, [x])
    return unflatten(out_tree, [blocks[0] for blocks in per_out])


def _reverse(g, x):
    from .pytree import unflatten
    out_tree, per_out, _ = _reverse_leaves(g, [x])
    return unflatten(out_tree, [blocks[0] for blocks in per_out])


def _jacobian_function(kind, fun, argnums, has_aux, target):
    from .api import jit
    what = "jacfwd" if kind == "fwd" else "jacrev"
    check_function(fun, f"gradc.{what}: the function")

    def jac(*args):
        check_function(fun, f"gradc.{what}: the function", args)
        where, many, xs, tree = _wrt(args, argnums, what)
        g = _restricted(fun, args, where, many, tree, has_aux, what)
        if kind == "fwd":
            out_tree, per_out = _forward_leaves((lambda *v: g(*v)[0]) if has_aux else g, xs)
            aux = g(*xs)[1] if has_aux else None     # (the same equations: CSE'd)
        else:
            out_tree, per_out, aux = _reverse_leaves(g, xs, has_aux)
        jacobian = _assemble(out_tree, per_out, where, many, tree)
        return (jacobian, aux) if has_aux else jacobian
    jac.__name__ = jac.__qualname__ = f"{what}_{getattr(fun, '__name__', 'f')}"
    return jit(jac, target=target)


def jacfwd(fun, argnums=0, *, has_aux=False, target=None):
    """The Jacobian of ``fun`` w.r.t. argument ``argnums`` (a position, or a tuple of
    them; each argument an array or a pytree of arrays) by forward mode: one vmap of jvp
    over the columns of the identity.  JAX's nesting: output structure outside, the
    arguments' inside; each block has shape (output shape + input shape).  With
    ``has_aux``, ``fun`` returns ``(output, aux)`` and the result is ``(jacobian, aux)``.
    The block of an integer or bool output (``argmax``, a comparison) is zeros in the
    input's dtype (JAX's are of dtype ``float0``), from every mode; an integer argument
    cannot be differentiated (an ``ArgumentError``)."""
    return _jacobian_function("fwd", fun, argnums, has_aux, target)


def jacrev(fun, argnums=0, *, has_aux=False, target=None):
    """``jacfwd``'s Jacobian by reverse mode: one forward pass and a vmap of the VJP over
    the rows of each output."""
    return _jacobian_function("rev", fun, argnums, has_aux, target)


def hessian(fun, argnums=0, *, has_aux=False, sparse=False, target=None):
    """``jacfwd(jacrev(fun))``: the dense Hessian of a scalar function (with a tuple of
    argnums, ``H[i][j]`` is the block ∂²f/∂x_i∂x_j of shape x_i's + x_j's, as JAX's).
    With ``sparse=True`` the pattern is found from the gradient's Graph and the Hessian
    is recovered from one HVP per colour of its columns, as a ``scipy.sparse`` matrix
    (``gradc.sparsity``)."""
    check_function(fun, "gradc.hessian: the function")
    if sparse:
        if has_aux:
            raise ArgumentError(with_location("hessian: sparse=True takes no has_aux"))
        from .sparsity import sparse_hessian
        return sparse_hessian(fun, argnums, target=target)
    return jacfwd(jacrev(fun, argnums, has_aux=has_aux, target=target), argnums,
                  has_aux=has_aux, target=target)


def hvp(fun, primals, tangents, method="fwd-rev", *, target=None):
    """``∇²f(x) v`` for a scalar ``f`` of one array ``x`` (``primals = (x,)``,
    ``tangents = (v,)``).  ``method="fwd-rev"``: the JVP of the gradient (one forward
    pass over the reverse pass); ``"rev-rev"``: the gradient of ``<v, ∇f(x)>``."""
    check_function(fun, "gradc.hvp: the function")
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        # (an array has a len too: a 1-element x was taken as the primal x[0])
        raise ArgumentError(with_location(
            f"hvp(f, primals, tangents): primals and tangents must be tuples of one "
            f"argument each, (x,) and (v,); got {type(primals).__name__} and "
            f"{type(tangents).__name__}"))
    if len(primals) != 1 or len(tangents) != 1:
        raise ArgumentError(with_location(
            "hvp(f, (x,), (v,)): one primal and one tangent (differentiate w.r.t. x)"))
    if method not in ("fwd-rev", "rev-rev"):
        raise ArgumentError(with_location(
            f"hvp: method is 'fwd-rev' or 'rev-rev', got {method!r}"))
    from .api import _Args, _tangent_leaves
    _tangent_leaves(_Args(primals), tangents, "hvp")    # (structure, shapes, dtypes)
    (x,), (v,) = primals, tangents
    return _hvp_function(fun, method, target)(x, v)


_HVP: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _hvp_function(fun, method, target):
    """``(x, v) -> ∇²f(x) v`` compiled once per function, method and target (a call of
    ``hvp`` would otherwise trace anew each time)."""
    from .api import grad, jit, jvp
    try:
        table = _HVP.setdefault(fun, {})
    except TypeError:           # (not weakly referenceable: not kept)
        table = {}
    key = (method, target)
    if key not in table:
        if method == "fwd-rev":
            def product(x, v):
                return jvp(grad(fun), (x,), (v,))[1]
        else:
            def product(x, v):
                from .pytree import flatten

                def inner(x):      # <∇f(x), v>, over the leaves of a pytree x
                    gs, vs = flatten(grad(fun)(x))[0], flatten(v)[0]
                    return sum(np.sum(g * w) for g, w in zip(gs, vs))
                return grad(inner)(x)
        product.__name__ = product.__qualname__ = f"hvp_{getattr(fun, '__name__', 'f')}"
        table[key] = jit(product, target=target)
    return table[key]


# ---------------------------------------------------------------- Jacobian chains

_MODES = ("fwd", "rev", "optimal")


def _graph_of(fun, args, k, x, what):
    """The Graph of ``fun`` as a function of argument ``k`` alone (the other arguments,
    Tracers of an enclosing trace, become its trailing inputs) and those inputs."""
    from .passes.simplify import simplify
    from .trace import trace_graph

    def g(xx):
        out = fun(*_with(args, k, xx))
        if not (isinstance(out, Tracer) or isinstance(out, (np.ndarray, np.generic, float, int))):
            raise ArgumentError(with_location(
                f"{what}: the function must return one array, got {type(out).__name__} "
                "(use jacfwd/jacrev for pytrees of outputs)"))
        return [out]
    # traced with x's value where it has one (Python control flow on it is decided, and
    # recorded as guards: the enclosing jit re-traces on another path)
    value = x.val if isinstance(x, Tracer) else np.asarray(x)
    graph, outs, captured = trace_graph(g, [(tuple(shape_of(x)), dtype_of(x))], [value])
    graph = simplify(graph)
    return graph, [x] + list(captured)


def _check_mode(mode, what):
    if mode not in _MODES:
        raise ArgumentError(with_location(
            f"{what}: mode is one of {', '.join(map(repr, _MODES))}, got {mode!r}"))


def jacobian_plan(fun, argnums=0, *, mode="optimal"):
    """``jacobian_plan(f)(*args)``: how ``jacobian(f, mode=mode)`` evaluates the
    Jacobian at these arguments' shapes: the chain's stages, the bracketing and mode of
    every product, its estimated cost and those of all-forward and all-reverse.  The
    plan prints as a table and ``plan.draw(path)`` draws it."""
    from .chain import plan_graph
    check_function(fun, "gradc.jacobian_plan: the function")
    _check_mode(mode, "jacobian_plan")

    def planner(*args):
        if _pytree_at(args, argnums):
            k = argnums % len(args)
            flat, vec, _ = _raveled(fun, args, k)
            return jacobian_plan(flat, k, mode=mode)(*_with(args, k, vec))
        k, x = _checked(args, argnums, "jacobian_plan")
        graph, _ = _graph_of(fun, args, k, x, "jacobian_plan")
        return plan_graph(graph, 0, mode, getattr(fun, "__name__", "f"))
    return planner


def _raveled(fun, args, k):
    """A pytree argument (a dict of parameters) as one vector, for the chain planner:
    ``(flat, vec, split)``, where ``flat`` is ``fun`` with the argument's float leaves
    raveled into ``vec`` and ``split`` turns a Jacobian w.r.t. ``vec`` into one block
    per leaf (out shape + the leaf's shape) in the argument's structure, as ``jacfwd``
    nests them."""
    from .pytree import flatten, unflatten
    tree = flatten(args[k])[1]
    xs = _wrt(args, k, "jacobian")[2]                   # (float leaves, checked)
    shapes = [tuple(shape_of(x)) for x in xs]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    dtypes = [np.dtype(dtype_of(x)) for x in xs]
    vec = np.concatenate([np.reshape(x, (-1,)).astype(np.result_type(*dtypes)) for x in xs])
    ends = np.cumsum(sizes)

    def flat(*a):
        v = a[k]
        return fun(*_with(a, k, unflatten(tree, [
            np.reshape(v[e - n:e], s).astype(d) for e, n, s, d in zip(ends, sizes, shapes,
                                                                     dtypes)])))
    flat.__name__ = getattr(fun, "__name__", "f")

    def split(J):
        out = tuple(shape_of(J))[:-1]
        return unflatten(tree, [np.reshape(J[..., e - n:e], out + s)
                                for e, n, s in zip(ends, sizes, shapes)])
    return flat, vec, split


def _pytree_at(args, argnums) -> bool:
    return isinstance(argnums, int) and -len(args) <= argnums < len(args) and \
        not _is_array(args[argnums])


def jacobian(fun, argnums=0, *, mode="optimal", sparse=False, target=None):
    """The Jacobian of ``fun`` w.r.t. argument ``argnums`` (shape: out shape + in shape).

    ``mode="fwd"`` is ``jacfwd``, ``"rev"`` is ``jacrev``; ``"optimal"`` cuts the Graph
    into a chain of stages and evaluates the chain product in the order of least
    estimated cost (``gradc.chain``; see ``jacobian_plan``); a pytree argument's leaves
    are raveled into one vector for the chain, and the result has one block per leaf in
    the argument's structure, as ``jacfwd``'s.  ``sparse=True``: the
    sparsity pattern is detected from the Graph and the matrix recovered from one JVP per
    colour of its columns (``gradc.sparsity``)."""
    check_function(fun, "gradc.jacobian: the function")
    _check_mode(mode, "jacobian")
    if isinstance(argnums, (tuple, list)) and not sparse:
        def one(f, k, target=None):
            return jacobian(f, k, mode=mode, target=target)
        one.__name__ = "jacobian"
        return _each(one, fun, argnums, target)
    if sparse:
        from .sparsity import sparse_jacobian
        return sparse_jacobian(fun, argnums, target=target)
    if mode == "fwd":
        return jacfwd(fun, argnums, target=target)
    if mode == "rev":
        return jacrev(fun, argnums, target=target)
    from .api import jit
    from .chain import evaluate, plan_graph

    def jac(*args):
        from .prims.custom import NoForwardMode
        if _pytree_at(args, argnums):
            k = argnums % len(args)
            flat, vec, split = _raveled(fun, args, k)
            return split(jacobian(flat, k, mode=mode)(*_with(args, k, vec)))
        k, x = _checked(args, argnums, "jacobian")
        graph, inputs = _graph_of(fun, args, k, x, "jacobian")
        y = graph.outputs[0]
        if not np.issubdtype(np.dtype(y.dtype), np.inexact):   # (an integer or bool output)
            return _zero_block(y.shape, x)
        plan = plan_graph(graph, 0, "optimal", getattr(fun, "__name__", "f"))
        g = lambda xx: fun(*_with(args, k, xx))                # noqa: E731
        try:
            if plan.root is not None and plan.root.kind in ("fwd", "rev") \
                    and plan.root.hi == len(plan.stages) - 1:  # a pure mode: jacfwd's code
                return (_forward if plan.root.kind == "fwd" else _reverse)(g, x)
            matrix = evaluate(plan, graph, inputs)
        except NoForwardMode:           # a custom_vjp rule without forward mode
            return _reverse(g, x)
        y = graph.outputs[0]
        return np.reshape(matrix, tuple(y.shape) + tuple(shape_of(x)))
    jac.__name__ = jac.__qualname__ = f"jacobian_{getattr(fun, '__name__', 'f')}"
    return jit(jac, target=target)
