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

from .errors import ArgumentError, with_location
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
    """``argnums`` a tuple: a tuple of Jacobians, one per argument (JAX's convention)."""
    from .api import jit
    parts = [make(fun, k, target=target) for k in argnums]

    def jac(*args):
        return tuple(p(*args) for p in parts)
    jac.__name__ = jac.__qualname__ = f"{make.__name__}_{getattr(fun, '__name__', 'f')}"
    return jit(jac, target=target)


def jacfwd(fun, argnums=0, *, target=None):
    """The Jacobian of ``fun`` w.r.t. argument ``argnums`` by forward mode, batched (a
    tuple of them for a tuple of argnums)."""
    from .api import jit
    if isinstance(argnums, (tuple, list)):
        return _each(jacfwd, fun, argnums, target)

    def jac(*args):
        k, x = _checked(args, argnums, "jacfwd")
        return _forward(lambda xx: fun(*_with(args, k, xx)), x)
    jac.__name__ = jac.__qualname__ = f"jacfwd_{getattr(fun, '__name__', 'f')}"
    return jit(jac, target=target)


def _forward(g, x):
    """The Jacobian of ``g`` at ``x`` (out shape + in shape; a pytree of them for a
    pytree of outputs): vmap of jvp."""
    from .api import jvp, vmap
    from .pytree import flatten, unflatten
    in_shape = tuple(shape_of(x))
    stacked = vmap(lambda t: jvp(g, (x,), (t,))[1])(_basis(in_shape, np.dtype(dtype_of(x))))
    leaves, tree = flatten(stacked)
    return unflatten(tree, [_columns_last(s, tuple(shape_of(s))[1:], in_shape)
                            for s in leaves])


def _reverse(g, x):
    """The Jacobian of ``g`` at ``x`` (out shape + in shape; a pytree of them for a
    pytree of outputs): vmap of the VJP, over the rows of each output in turn (the
    other outputs' cotangents zeros)."""
    from .api import vjp, vmap
    from .pytree import flatten, unflatten
    y, pull = vjp(g, x)
    leaves, tree = flatten(y)
    jacobians = []
    for j, leaf in enumerate(leaves):
        out_shape = tuple(shape_of(leaf))

        def row(u, j=j):
            cts = [u if i == j else np.zeros(shape_of(v), dtype_of(v))
                   for i, v in enumerate(leaves)]
            return pull(unflatten(tree, cts))[0]
        stacked = vmap(row)(_basis(out_shape, np.dtype(dtype_of(leaf))))
        # (m, *in): row i is the gradient of output component i
        jacobians.append(np.reshape(stacked, out_shape + tuple(shape_of(x))))
    return unflatten(tree, jacobians)


def jacrev(fun, argnums=0, *, target=None):
    """The Jacobian of ``fun`` w.r.t. argument ``argnums`` by reverse mode, batched (a
    tuple of them for a tuple of argnums)."""
    from .api import jit
    if isinstance(argnums, (tuple, list)):
        return _each(jacrev, fun, argnums, target)

    def jac(*args):
        k, x = _checked(args, argnums, "jacrev")
        return _reverse(lambda xx: fun(*_with(args, k, xx)), x)
    jac.__name__ = jac.__qualname__ = f"jacrev_{getattr(fun, '__name__', 'f')}"
    return jit(jac, target=target)


def hessian(fun, argnums=0, *, sparse=False, target=None):
    """``jacfwd(jacrev(fun))``: the dense Hessian of a scalar function.  With
    ``sparse=True`` the pattern is found from the gradient's Graph and the Hessian is
    recovered from one HVP per colour of its columns, as a ``scipy.sparse`` matrix
    (``gradc.sparsity``)."""
    if sparse:
        from .sparsity import sparse_hessian
        return sparse_hessian(fun, argnums, target=target)
    return jacfwd(jacrev(fun, argnums, target=target), argnums, target=target)


def hvp(fun, primals, tangents, method="fwd-rev", *, target=None):
    """``∇²f(x) v`` for a scalar ``f`` of one array ``x`` (``primals = (x,)``,
    ``tangents = (v,)``).  ``method="fwd-rev"``: the JVP of the gradient (one forward
    pass over the reverse pass); ``"rev-rev"``: the gradient of ``<v, ∇f(x)>``."""
    if len(primals) != 1 or len(tangents) != 1:
        raise ArgumentError(with_location(
            "hvp(f, (x,), (v,)): one primal and one tangent (differentiate w.r.t. x)"))
    if method not in ("fwd-rev", "rev-rev"):
        raise ArgumentError(with_location(
            f"hvp: method is 'fwd-rev' or 'rev-rev', got {method!r}"))
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
                return grad(lambda x: np.sum(grad(fun)(x) * v))(x)
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
    _check_mode(mode, "jacobian_plan")

    def planner(*args):
        k, x = _checked(args, argnums, "jacobian_plan")
        graph, _ = _graph_of(fun, args, k, x, "jacobian_plan")
        return plan_graph(graph, 0, mode, getattr(fun, "__name__", "f"))
    return planner


def jacobian(fun, argnums=0, *, mode="optimal", sparse=False, target=None):
    """The Jacobian of ``fun`` w.r.t. argument ``argnums`` (shape: out shape + in shape).

    ``mode="fwd"`` is ``jacfwd``, ``"rev"`` is ``jacrev``; ``"optimal"`` cuts the Graph
    into a chain of stages and evaluates the chain product in the order of least
    estimated cost (``gradc.chain``; see ``jacobian_plan``).  ``sparse=True``: the
    sparsity pattern is detected from the Graph and the matrix recovered from one JVP per
    colour of its columns (``gradc.sparsity``)."""
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
        k, x = _checked(args, argnums, "jacobian")
        graph, inputs = _graph_of(fun, args, k, x, "jacobian")
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
