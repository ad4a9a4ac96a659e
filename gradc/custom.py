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
function is traced on abstract values into one equation (``prims.custom``), and its rules
(the JVP rule, or ``fwd``/``bwd``) are traced into sub-Graphs of it when a derivative
first needs them.  Every transformation then treats the function by its rule: ``grad``,
``jvp``, ``jacfwd``/``jacrev``, ``hessian`` and ``vmap`` (which batches the function and
its rule alike).  A ``custom_vjp`` gets forward mode too, as ``bwd`` transposed, when
``bwd`` is linear in the cotangents.  ``checkpoint`` (JAX's remat) uses the same
machinery with a rule of its own: recompute, then differentiate.

Arguments are pytrees of arrays and scalars (Python scalars stay constants, as in plain
code); ``nondiff_argnums`` names arguments that are passed unchanged to the rule as its
leading arguments (hashable settings, callables), as in JAX.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from .errors import (ArgumentError, TracerLeakError, UnsupportedError, check_function,
                     user_location, with_location)
from .ir import is_float, type_str
from .prims.custom import (Deferred, avals_of, checkpoint_p, custom_jvp_call_p,
                           custom_vjp_call_p)
from .pytree import flatten, tree_map, unflatten
from .trace import (current_trace, dtype_of, is_tracer, shape_of, stand_ins, standing_in,
                    trace_graph)

__all__ = ["custom_jvp", "custom_vjp", "checkpoint", "remat"]


def _name(fun) -> str:
    return getattr(fun, "__name__", repr(fun))


class _Call:
    """One call's arguments: the settings (``nondiff_argnums``), then the leaves of the
    others, split into traced or array leaves (``dynamic``: inputs of the Graphs) and
    Python or NumPy scalars, which stay constants (as in plain code: a Python float
    keeps float32 float32)."""

    def __init__(self, custom, args):
        self.custom = custom
        n = len(args)
        for i in custom.nondiff_argnums:
            if not -n <= i < n:
                raise ArgumentError(with_location(
                    f"{custom.name}: {custom._static_word} has {i}, but it was called with "
                    f"{n} arguments"))
        self.fixed = {i % n for i in custom.nondiff_argnums}
        self.n = n
        self.static = tuple(args[i] for i in sorted(self.fixed))
        self.args = tuple(a for i, a in enumerate(args) if i not in self.fixed)
        self.leaves, self.treedef = flatten(self.args)
        self.is_dynamic = []
        for x in self.leaves:
            if is_tracer(x) or isinstance(x, np.ndarray):
                kind = np.dtype(dtype_of(x)).kind
            elif isinstance(x, (bool, int, float, np.generic)):
                kind = None
            else:
                kind = "O"
            if kind is not None and kind not in "biuf":
                raise ArgumentError(with_location(
                    f"{custom.name}: an argument leaf of type {type(x).__name__} is not an "
                    f"array; pass settings through {custom._static_word}"))
            self.is_dynamic.append(kind is not None)
        self.dynamic = [x for x, d in zip(self.leaves, self.is_dynamic) if d]
        self.avals = avals_of(self.dynamic)

    def traced(self) -> bool:
        """Whether an argument is traced (inside a trace, the function is recorded with
        its rule even when none is: it may read traced values from outside)."""
        if any(is_tracer(x) for x in flatten(self.static)[0]):
            word = self.custom._static_word
            raise ArgumentError(with_location(
                f"{self.custom.name}: an argument in {word} is a traced array; {word} are "
                "for settings (numbers, strings, functions): pass arrays as ordinary "
                "arguments"))
        return any(is_tracer(x) for x in self.dynamic)

    def tree(self, values, scalar=lambda x: x):
        """The differentiated arguments as a tuple, with ``values`` for the dynamic
        leaves and ``scalar(x)`` for the constant ones."""
        it = iter(values)
        leaves = [next(it) if d else scalar(x) for x, d in zip(self.leaves, self.is_dynamic)]
        return tuple(unflatten(self.treedef, leaves))

    def full(self, values):
        """Every argument, settings included, in the call's order."""
        s, d = iter(self.static), iter(self.tree(values))
        return tuple(next(s) if i in self.fixed else next(d) for i in range(self.n))


def _zero_like_scalar(x):
    return type(x)(0) if isinstance(x, (bool, int, float)) else np.zeros_like(x)


class _Custom:
    """What custom_jvp, custom_vjp and checkpoint share: arguments and tracing."""

    kind = ""
    _static_word = "nondiff_argnums"

    def __init__(self, fun, nondiff_argnums=()):
        check_function(fun, f"gradc.{self.kind}: the function")
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(sorted(int(i) for i in nondiff_argnums))
        self._signature = False

    @property
    def name(self) -> str:
        return f"gradc.{self.kind} function {_name(self.fun)}"

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        missing = self._missing()
        if missing:
            raise ArgumentError(with_location(f"{self.name} {missing}"))
        call = _Call(self, args)
        if not call.traced() and current_trace() is None:
            return self.fun(*args)        # plain NumPy values: the function just runs
        fun, consts, out_tree = self._trace_fun(call)
        outs = self._bind(call, fun, consts, out_tree, user_location())
        return unflatten(out_tree, list(outs))

    def _missing(self):
        """What is missing before the function can be called (a rule), or None."""
        return None

    def _bind(self, call, fun, consts, out_tree, where):
        """The equation for one call, given ``fun`` traced; returns its outputs."""
        raise NotImplementedError

    def _positional(self, args, kwargs) -> tuple:
        """The arguments as positional ones, defaults filled in (as JAX binds them)."""
        if self._signature is False:
            try:
                self._signature = inspect.signature(self.fun)
            except (TypeError, ValueError):
                self._signature = None
        if self._signature is None:
            if kwargs:
                raise ArgumentError(with_location(
                    f"{self.name}: keyword arguments need a function with a signature"))
            return tuple(args)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ArgumentError(with_location(f"{self.name}: {e}")) from None
        given = [k for k in bound.kwargs if k in kwargs]
        if given:
            raise ArgumentError(with_location(
                f"{self.name}: keyword-only arguments ({', '.join(given)}) are not "
                "supported; make them positional"))
        bound.apply_defaults()          # keyword-only ones keep their defaults in the call
        return tuple(bound.args)

    def _fit(self, leaves, avals, what, rule, where, first=0):
        """``leaves`` (a rule's outputs) have the shapes of ``avals`` and their dtypes
        (floating-point ones are cast; integer ones must match)."""
        from .prims.elementwise import convert_element_type
        fixed = []
        for k, (x, (shape, dtype)) in enumerate(zip(leaves, avals), first):
            have = np.dtype(dtype_of(x))
            if tuple(shape_of(x)) != tuple(shape) or (have != dtype and not (
                    is_float(dtype) and have.kind in "biuf")):
                raise ArgumentError(with_location(
                    f"{self.name}: {what} {k} of {_name(rule)} is "
                    f"{type_str(shape_of(x), have)}; it must be "
                    f"{type_str(shape, dtype)}", where))
            if have != dtype:
                x = convert_element_type(x, dtype) if is_tracer(x) else np.asarray(x, dtype)
            fixed.append(x)
        return fixed

    def _trace_fun(self, call: _Call):
        """``fun`` as a Graph of the dynamic leaves then the outer values it reads
        (``consts``); returns ``(fun, consts, out_tree)``."""
        box = {}

        def flat(*xs):
            from .api import _output_leaf
            parts, box["out"] = flatten(self.fun(*call.full(xs)))
            return [_output_leaf(x, self.fun) for x in parts]

        fun, _, consts = trace_graph(flat, call.avals)
        # a call inside a rule being traced reads the user's values through stand-ins:
        # its own rules will need those values' stand-ins too (see _rule_graph)
        call.outer = [(old, new) for old, new in stand_ins()
                      if any(new is c for c in consts)]
        return fun, list(consts), box["out"]

    def _rule_graph(self, flat, avals, consts, rule, where, outer=()):
        """A rule traced (when a derivative first needs it) as a Graph of ``avals`` then
        ``consts``: the values the function read from outside, which the rule (or the
        function, called again in the rule) reads as these inputs.  ``outer``: older
        values the consts stood in for (a call inside a rule), read as the same inputs."""
        n = len(avals)

        def with_consts(*xs):
            pairs = list(zip(consts, xs[n:]))
            pairs += [(old, x) for old, new in outer for c, x in pairs if new is c]
            with standing_in(pairs):
                from .trace import Tracer, _standing_in
                return [_standing_in(o) if isinstance(o, Tracer) else o
                        for o in flat(*xs[:n])]

        try:
            graph, _, captured = trace_graph(with_consts, avals + avals_of(consts))
        except TracerLeakError:
            captured = True
        if captured:
            raise ArgumentError(with_location(
                f"{self.name}: its rule {_name(rule)} reads a traced value from outside its "
                f"arguments that {_name(self.fun)} does not read (a closure); rules are "
                f"traced when a derivative needs them, so pass the value as an argument",
                where))
        return graph


def _fill(td, ct, what):
    """The leaves of cotangent ``ct`` for an argument of structure ``td``, ``None``
    (zero) for each leaf under a ``None`` subtree."""
    if ct is None:
        return [None] * td.num_leaves
    if td.kind == "leaf":
        return [ct]
    if td.kind == "none":
        return []
    try:
        if td.kind == "dict":
            if sorted(ct) != sorted(td.meta):
                raise KeyError
            children = [ct[k] for k in td.meta]
        else:
            children = list(ct)
            if len(children) != len(td.children):
                raise KeyError
    except (KeyError, TypeError):
        raise ArgumentError(what) from None
    return [leaf for c, x in zip(td.children, children) for leaf in _fill(c, x, what)]


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
        check_function(jvp, f"{self.name}.defjvp: the JVP rule")
        self.jvp = jvp
        return jvp

    def defjvps(self, *jvps):
        """One rule per argument, ``rule_i(t_i, out, *primals) -> its part of the output
        tangent``, the parts summed (``None`` for an argument without derivative)."""
        where = user_location()

        def jvp(*args):
            *static, primals, tangents = args
            if len(jvps) != len(primals):       # (zip would drop a derivative silently)
                raise ArgumentError(with_location(
                    f"{self.name}: defjvps got {len(jvps)} rule"
                    f"{'s' if len(jvps) != 1 else ''} for {len(primals)} differentiated "
                    f"argument{'s' if len(primals) != 1 else ''}; give one rule per "
                    "argument, None for an argument without derivative", where))
            fixed = {i % (len(primals) + len(static)) for i in self.nondiff_argnums}
            s, d = iter(static), iter(primals)
            out = self(*[next(s) if i in fixed else next(d)
                         for i in range(len(primals) + len(static))])
            total = None
            for rule, t in zip(jvps, tangents):
                if rule is not None:
                    part = rule(t, out, *primals)
                    total = part if total is None else tree_map(lambda a, b: a + b,
                                                                total, part)
            return out, tree_map(np.zeros_like, out) if total is None else total

        jvp.__name__ = f"{_name(self.fun)}_jvps"
        return self.defjvp(jvp)

    def _missing(self):
        if self.jvp is None:
            return f"has no JVP rule: define one with @{_name(self.fun)}.defjvp"
        return None

    def _bind(self, call, fun, consts, out_tree, where):
        out_avals = avals_of(fun.outputs)
        n = len(call.dynamic)

        def flat_rule(*xs):
            primals = call.tree(xs[:n])
            tangents = call.tree(xs[n:], _zero_like_scalar)
            check_function(self.jvp, f"{self.name}: its JVP rule rule(*nondiff, primals, "
                           "tangents)", len(call.static) + 2, where=where)
            out = self.jvp(*call.static, primals, tangents)
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
            from . import ops
            tangents = [self._fit([x], [(shape, dtype)], "tangent output", self.jvp, where,
                                  first=k)[0] if is_float(dtype)
                        else ops.full(shape, 0, dtype)   # an integer output's: no derivative
                        for k, (x, (shape, dtype)) in enumerate(zip(t[0], out_avals))]
            return self._fit(p[0], out_avals, "primal output", self.jvp, where) + tangents

        rule = Deferred(lambda: self._rule_graph(flat_rule, call.avals + call.avals, consts,
                                                 self.jvp, where, call.outer),
                        f"python:{_name(self.jvp)}")
        return custom_jvp_call_p.bind(*call.dynamic, *consts, fun=fun, rule=rule, n_args=n,
                                      name=_name(self.fun), where=where)


class custom_vjp(_Custom):
    """A function with a reverse-mode rule of its own (``jax.custom_vjp``).

    ``f.defvjp(fwd, bwd)``: ``fwd(*args) -> (out, residuals)`` computes the output and
    whatever ``bwd`` needs (a pytree of arrays); ``bwd(*nondiff, residuals, ct) ->
    tuple of cotangents``, one per differentiated argument of ``f`` (``None``, also for
    a subtree, is a zero), given the cotangent ``ct`` of the output.  Forward mode uses
    ``bwd`` transposed, which needs ``bwd`` linear in ``ct``."""

    kind = "custom_vjp"

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.fwd = self.bwd = None

    def defvjp(self, fwd, bwd):
        # (their arities are checked at a call: nondiff_argnums may be set after this)
        check_function(fwd, f"{self.name}.defvjp: fwd")
        check_function(bwd, f"{self.name}.defvjp: bwd")
        self.fwd, self.bwd = fwd, bwd
        return self

    def _missing(self):
        if self.fwd is None:
            return f"has no VJP rule: define one with {_name(self.fun)}.defvjp(fwd, bwd)"
        return None

    def _bind(self, call, fun, consts, out_tree, where):
        out_avals = avals_of(fun.outputs)
        m, box = len(out_avals), {}

        def flat_fwd(*xs):
            args = call.full(xs)
            check_function(self.fwd, f"{self.name}: fwd", tuple(args), where=where)
            out = self.fwd(*args)
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

        fwd = Deferred(lambda: self._rule_graph(flat_fwd, call.avals, consts, self.fwd,
                                                where, call.outer),
                       f"python:{_name(self.fwd)}")

        def flat_bwd(*xs):
            n_res = len(xs) - m
            res = unflatten(box["res"], list(xs[:n_res]))
            check_function(self.bwd, f"{self.name}: bwd(*nondiff, residuals, ct)",
                           len(call.static) + 2, where=where)
            out = self.bwd(*call.static, res, unflatten(out_tree, list(xs[n_res:])))
            if not isinstance(out, (tuple, list)) or len(out) != len(call.args):
                raise ArgumentError(with_location(
                    f"{self.name}: bwd {_name(self.bwd)} must return a tuple of "
                    f"{len(call.args)} cotangents, one per differentiated argument", where))
            cts = []
            for i, (arg, ct) in enumerate(zip(call.args, out)):
                cts += _fill(flatten(arg)[1], ct, with_location(
                    f"{self.name}: the cotangent of argument {i} from bwd "
                    f"{_name(self.bwd)} has structure {flatten(ct)[1]}; the argument has "
                    f"{flatten(arg)[1]}", where))
            from . import ops
            fitted = []
            for k, (c, d) in enumerate(zip(cts, call.is_dynamic)):
                if not d:
                    continue
                shape, dtype = call.avals[len(fitted)]
                fitted += ([ops.full(shape, 0, dtype)] if c is None or not is_float(dtype)
                           else self._fit([c], [(shape, dtype)], "cotangent leaf",
                                          self.bwd, where, first=k))
            return fitted

        def make_bwd():
            res_avals = avals_of(fwd.graph.outputs[m:])
            traced = self._rule_graph(flat_bwd, res_avals + out_avals, consts, self.bwd,
                                      where, call.outer)
            # inputs: residuals, the function's outside values, then the cotangents
            ins, r = traced.inputs, len(res_avals)
            return traced.replace(inputs=ins[:r] + ins[r + m:] + ins[r:r + m])

        bwd = Deferred(make_bwd, f"python:{_name(self.bwd)}")
        return custom_vjp_call_p.bind(*call.dynamic, *consts, fun=fun, fwd=fwd, bwd=bwd,
                                      n_args=len(call.dynamic), name=_name(self.fun),
                                      where=where)


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

    def __new__(cls, fun=None, *settings, **named):
        if fun is None:     # @gradc.checkpoint(static_argnums=...), as gradc.grad's
            return functools.partial(cls, *settings, **named)
        return super().__new__(cls)

    def __init__(self, fun, prevent_cse=True, policy=None, static_argnums=()):
        # (JAX's signature: prevent_cse is accepted, see above; a policy that saves
        # some intermediates is not what this does)
        if policy is not None:
            raise UnsupportedError(with_location(
                "gradc.checkpoint(policy=...): gradc's checkpoint saves the function's "
                "inputs only and recomputes everything else (JAX's default, "
                "nothing_saveable); to keep some values, checkpoint the parts between "
                "them separately"))
        super().__init__(fun, static_argnums)

    @property
    def name(self) -> str:
        return f"gradc.checkpoint of {_name(self.fun)}"

    def _bind(self, call, fun, consts, out_tree, where):
        return checkpoint_p.bind(*call.dynamic, *consts, fun=fun, name=_name(self.fun),
                                 where=where)


remat = checkpoint
