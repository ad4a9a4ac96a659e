"""User-defined derivative rules: ``custom_jvp`` and ``custom_vjp`` (JAX's API).

    @gradc.custom_jvp
    def log1pexp(x):
        return np.log1p(np.exp(x))

    @log1pexp.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return log1pexp(x), t * gradc.sigmoid(x)

    @gradc.custom_vjp
    def clip_gradient(x, lo, hi):
        return x

    def fwd(x, lo, hi):
        return x, (lo, hi)              # the output, and residuals for bwd

    def bwd(res, g):
        lo, hi = res
        return np.clip(g, lo, hi), None, None   # one cotangent per argument (None: zero)

    clip_gradient.defvjp(fwd, bwd)

Called on NumPy values, the function simply runs.  Called while gradc traces, the
function, its rule (and ``fwd``/``bwd``) are traced on abstract values into sub-Graphs of
one equation (``prims.custom``), which every transformation then treats by the rule:
``grad``, ``jvp``, ``jacfwd``/``jacrev``, ``hessian`` and ``vmap`` (which batches the
function and its rule alike).  A ``custom_vjp`` gets forward mode too, as ``bwd``
transposed, when ``bwd`` is linear in the cotangents.

Arguments are pytrees of arrays; ``nondiff_argnums`` names arguments that are passed
unchanged to the rule as its leading arguments (hashable settings, callables), as in JAX.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from .errors import ArgumentError, TracerLeakError, user_location, with_location
from .ir import is_float, type_str
from .prims.custom import Deferred, checkpoint_p, custom_jvp_call_p, custom_vjp_call_p
from .pytree import flatten, tree_map, unflatten
from .trace import dtype_of, is_tracer, shape_of, trace_graph

__all__ = ["custom_jvp", "custom_vjp", "checkpoint", "remat"]


def _name(fun) -> str:
    return getattr(fun, "__name__", repr(fun))


class _Custom:
    """What custom_jvp and custom_vjp share: argument handling and tracing."""

    kind = ""
    _static_word = "nondiff_argnums"

    def __init__(self, fun, nondiff_argnums=()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(sorted(int(i) for i in nondiff_argnums))
        self._signature = None

    @property
    def name(self) -> str:
        return f"gradc.{self.kind} function {_name(self.fun)}"

    def _positional(self, args, kwargs) -> tuple:
        if not kwargs:
            return tuple(args)
        try:
            self._signature = self._signature or inspect.signature(self.fun)
            bound = self._signature.bind(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise ArgumentError(with_location(f"{self.name}: {e}")) from None
        bound.apply_defaults()
        if bound.kwargs:
            raise ArgumentError(with_location(
                f"{self.name}: keyword-only arguments ({', '.join(bound.kwargs)}) are not "
                "supported; make them positional"))
        return tuple(bound.args)

    def _split(self, args):
        n = len(args)
        for i in self.nondiff_argnums:
            if not -n <= i < n:
                raise ArgumentError(with_location(
                    f"{self.name}: nondiff_argnums has {i}, but it was called with {n} "
                    "arguments"))
        fixed = self._fixed(n)
        static = tuple(args[i] for i in sorted(fixed))
        dynamic = tuple(a for i, a in enumerate(args) if i not in fixed)
        return static, dynamic, fixed

    def _fixed(self, n) -> set:
        return {i % n for i in self.nondiff_argnums}

    @staticmethod
    def _merge(static, dynamic, fixed):
        s, d = iter(static), iter(dynamic)
        return tuple(next(s) if i in fixed else next(d)
                     for i in range(len(static) + len(dynamic)))

    def _leaves(self, dynamic):
        leaves, treedef = flatten(dynamic)
        out = []
        for x in leaves:
            if is_tracer(x):
                out.append(x)
                continue
            try:
                a = np.asarray(x)
            except Exception:
                a = np.asarray(None)
            if a.dtype == object or a.dtype.kind not in "biuf":
                raise ArgumentError(with_location(
                    f"{self.name}: an argument leaf of type {type(x).__name__} is not an "
                    "array; pass settings through nondiff_argnums"))
            out.append(a)
        return out, treedef

    def _fit(self, leaves, avals, what, rule, where):
        """``leaves`` (a rule's outputs) have the shapes of ``avals``; floating-point
        dtypes are cast to them."""
        from .prims.elementwise import convert_element_type
        fixed = []
        for k, (x, (shape, dtype)) in enumerate(zip(leaves, avals)):
            if tuple(shape_of(x)) != tuple(shape):
                raise ArgumentError(with_location(
                    f"{self.name}: {what} {k} of {_name(rule)} is "
                    f"{type_str(shape_of(x), dtype_of(x))}; it must be "
                    f"{type_str(shape, dtype)}", where))
            if np.dtype(dtype_of(x)) != np.dtype(dtype) and is_float(dtype):
                x = convert_element_type(x, dtype) if is_tracer(x) else np.asarray(x, dtype)
            fixed.append(x)
        return fixed

    def _call(self, args):
        """None when no argument is traced (the function just runs); else ``(static,
        fixed, treedef, leaves, avals, fun, consts, out_tree)`` with ``fun`` traced as a
        Graph of the leaves then the outer values it reads (``consts``)."""
        static, dynamic, fixed = self._split(args)
        leaves, treedef = self._leaves(dynamic)
        if not any(is_tracer(x) for x in leaves):
            return None
        if any(is_tracer(x) for x in flatten(static)[0]):
            raise ArgumentError(with_location(
                f"{self.name}: an argument in {self._static_word} is a traced array; "
                f"{self._static_word} are for settings (numbers, strings, functions): pass "
                "arrays as ordinary arguments"))
        avals = [(tuple(shape_of(x)), np.dtype(dtype_of(x))) for x in leaves]
        box = {}

        def flat(*xs):
            out = self.fun(*self._merge(static, unflatten(treedef, list(xs)), fixed))
            parts, box["out"] = flatten(out)
            return parts

        fun, _, consts = trace_graph(flat, avals)
        return static, fixed, treedef, leaves, avals, fun, list(consts), box["out"]

    def _rule_graph(self, flat, avals, rule, where):
        """A rule traced (when a derivative first needs it) as a closed Graph."""
        try:
            graph, _, captured = trace_graph(flat, avals)
        except TracerLeakError:
            captured = True
        if captured:
            raise ArgumentError(with_location(
                f"{self.name}: its rule {_name(rule)} reads a traced value from outside its "
                "arguments (a closure); rules are traced when a derivative needs them, so "
                f"pass the value as an argument of {_name(self.fun)}", where))
        return graph


class custom_jvp(_Custom):
    """A function with a forward-mode rule of its own (``jax.custom_jvp``).

    ``@f.defjvp`` takes ``rule(*nondiff, primals, tangents) -> (primal_out,
    tangent_out)``, with ``primals`` and ``tangents`` tuples of ``f``'s (differentiated)
    arguments; ``tangent_out`` has the structure and shapes of ``f``'s output and is linear
    in ``tangents`` (reverse mode transposes it).  The rule may call ``f``; it is
    differentiated like ordinary code for higher derivatives, by the rule again where it
    calls ``f``."""

    kind = "custom_jvp"

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.jvp = None

    def defjvp(self, jvp):
        self.jvp = jvp
        return jvp

    def defjvps(self, *jvps):
        """One rule per argument, ``rule_i(t_i, out, *primals) -> its part of the output
        tangent``, the parts summed (``None`` for an argument without derivative)."""
        def jvp(*args):
            *static, primals, tangents = args
            out = self(*self._merge(tuple(static), primals, self._fixed(len(primals)
                                                                        + len(static))))
            total = None
            for rule, t in zip(jvps, tangents):
                if rule is not None:
                    part = rule(t, out, *primals)
                    total = part if total is None else tree_map(lambda a, b: a + b,
                                                                total, part)
            return out, tree_map(np.zeros_like, out) if total is None else total

        jvp.__name__ = f"{_name(self.fun)}_jvps"
        return self.defjvp(jvp)

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        if self.jvp is None:
            raise ArgumentError(with_location(
                f"{self.name} has no JVP rule: define one with @{_name(self.fun)}.defjvp"))
        call = self._call(args)
        if call is None:
            return self.fun(*args)
        static, fixed, treedef, leaves, avals, fun, consts, out_tree = call
        out_avals = _graph_avals(fun.outputs)
        n, where = len(leaves), user_location()

        def flat_rule(*xs):
            primals = unflatten(treedef, list(xs[:n]))
            tangents = unflatten(treedef, list(xs[n:]))
            out = self.jvp(*static, tuple(primals), tuple(tangents))
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ArgumentError(with_location(
                    f"{self.name}: its JVP rule {_name(self.jvp)} must return a pair "
                    "(primal_out, tangent_out)", where))
            p, t = (flatten(o) for o in out)
            for what, (parts, tree) in (("primal output", p), ("tangent output", t)):
                if tree != out_tree:
                    raise ArgumentError(with_location(
                        f"{self.name}: the {what} of its JVP rule {_name(self.jvp)} has "
                        f"structure {tree}; {_name(self.fun)} returns {out_tree}", where))
            return (self._fit(p[0], out_avals, "primal output", self.jvp, where)
                    + self._fit(t[0], out_avals, "tangent output", self.jvp, where))

        rule = Deferred(lambda: self._rule_graph(flat_rule, avals + avals, self.jvp, where),
                        f"python:{_name(self.jvp)}")
        outs = custom_jvp_call_p.bind(*leaves, *consts, fun=fun, rule=rule, n_args=n,
                                      name=_name(self.fun), where=where)
        return unflatten(out_tree, list(outs))


class custom_vjp(_Custom):
    """A function with a reverse-mode rule of its own (``jax.custom_vjp``).

    ``f.defvjp(fwd, bwd)``: ``fwd(*args) -> (out, residuals)`` computes the output and
    whatever ``bwd`` needs (a pytree of arrays); ``bwd(*nondiff, residuals, ct) ->
    tuple of cotangents``, one per differentiated argument of ``f`` (``None`` for a
    zero), given the cotangent ``ct`` of the output.  Forward mode uses ``bwd``
    transposed, which needs ``bwd`` linear in ``ct``."""

    kind = "custom_vjp"

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.fwd = self.bwd = None

    def defvjp(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd
        return self

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        if self.fwd is None:
            raise ArgumentError(with_location(
                f"{self.name} has no VJP rule: define one with "
                f"{_name(self.fun)}.defvjp(fwd, bwd)"))
        call = self._call(args)
        if call is None:
            return self.fun(*args)
        static, fixed, treedef, leaves, avals, fun, consts, out_tree = call
        out_avals = _graph_avals(fun.outputs)
        dynamic = unflatten(treedef, leaves)
        where, box = user_location(), {}

        def flat_fwd(*xs):
            out = self.fwd(*self._merge(static, unflatten(treedef, list(xs)), fixed))
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ArgumentError(with_location(
                    f"{self.name}: fwd {_name(self.fwd)} must return a pair "
                    "(output, residuals)", where))
            parts, tree = flatten(out[0])
            if tree != out_tree:
                raise ArgumentError(with_location(
                    f"{self.name}: the output of fwd {_name(self.fwd)} has structure "
                    f"{tree}; {_name(self.fun)} returns {out_tree}", where))
            res, box["res"] = flatten(out[1])
            return self._fit(parts, out_avals, "output", self.fwd, where) + res

        fwd = Deferred(lambda: self._rule_graph(flat_fwd, avals, self.fwd, where),
                       f"python:{_name(self.fwd)}")

        def flat_bwd(*xs):
            n_res = len(xs) - len(out_avals)
            res = unflatten(box["res"], list(xs[:n_res]))
            out = self.bwd(*static, res, unflatten(out_tree, list(xs[n_res:])))
            if not isinstance(out, (tuple, list)) or len(out) != len(dynamic):
                raise ArgumentError(with_location(
                    f"{self.name}: bwd {_name(self.bwd)} must return a tuple of "
                    f"{len(dynamic)} cotangents, one per differentiated argument", where))
            cts = []
            for arg, ct in zip(dynamic, out):
                arg_leaves, arg_tree = flatten(arg)
                if ct is None:
                    cts += [None] * len(arg_leaves)
                    continue
                parts, tree = flatten(ct)
                if tree != arg_tree:
                    raise ArgumentError(with_location(
                        f"{self.name}: a cotangent from bwd {_name(self.bwd)} has "
                        f"structure {tree}; its argument has {arg_tree}", where))
                cts += parts
            from . import ops
            return [ops.full(shape, 0, dtype) if c is None or not is_float(dtype)
                    else self._fit([c], [(shape, dtype)], "cotangent", self.bwd, where)[0]
                    for c, (shape, dtype) in zip(cts, avals)]

        def make_bwd():
            res_avals = _graph_avals(fwd.graph.outputs[len(out_avals):])
            return self._rule_graph(flat_bwd, res_avals + out_avals, self.bwd, where)

        bwd = Deferred(make_bwd, f"python:{_name(self.bwd)}")
        outs = custom_vjp_call_p.bind(*leaves, *consts, fun=fun, fwd=fwd, bwd=bwd,
                                      n_args=len(leaves), name=_name(self.fun), where=where)
        return unflatten(out_tree, list(outs))


def _graph_avals(vs):
    return [(tuple(v.shape), np.dtype(v.dtype)) for v in vs]


class checkpoint(_Custom):
    """``f`` whose inner values are recomputed in reverse mode instead of kept (JAX's
    ``checkpoint``, or ``remat``): the values stored between the forward and the
    backward pass are ``f``'s inputs, not everything its derivative reads, at the cost
    of running ``f`` again.  Values and derivatives are unchanged; forward mode is
    ``f``'s own.  ``static_argnums`` are settings passed through unchanged.

    The saving is in what ``vjp`` and ``linearize`` keep between their two passes.  In
    ``grad``, forward and backward are one Graph, and common-subexpression elimination
    merges the recomputation back into the forward pass (JAX's ``prevent_cse`` barrier
    is not implemented)."""

    kind = "checkpoint"
    _static_word = "static_argnums"

    def __init__(self, fun, static_argnums=()):
        super().__init__(fun, static_argnums)

    @property
    def name(self) -> str:
        return f"gradc.checkpoint of {_name(self.fun)}"

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        call = self._call(args)
        if call is None:
            return self.fun(*args)
        _, _, _, leaves, _, fun, consts, out_tree = call
        outs = checkpoint_p.bind(*leaves, *consts, fun=fun, name=_name(self.fun),
                                 where=user_location())
        return unflatten(out_tree, list(outs))


remat = checkpoint
