"""The public transformations: grad, value_and_grad, jvp, vjp, make_graph, stop_gradient.

Every transformation follows the same path:

1. flatten the arguments (pytrees) into leaves; Python ints/bools and non-array objects
   are *static* (baked into the trace and part of the cache key), floats and arrays are
   *dynamic* (graph inputs);
2. trace the user's function on the concrete dynamic leaves into a Graph, recording
   guards for Python control flow;
3. run passes (linearize, transpose, jvp, simplify) to build the derived Graph;
4. evaluate it (the NumPy interpreter for now; compiled backends later).

Derived Graphs are cached per argument signature.  A signature may hold several
specialisations, one per path through the user's Python control flow: evaluation tries
them in turn and a failed guard moves on, or re-traces when none fits.  Called with
Tracers (inside another transformation), the derived Graph is inlined into the outer
trace, which is how ``grad(grad(f))`` works.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import math
import numbers
import types
import weakref

import numpy as np

from . import ops, pytree
from .errors import (ArgumentError, GradcError, GuardFailure, NonScalarOutputError,
                     TangentDTypeError, check_function, with_location)
from .codegen.compile import Executable, GradcWarning, check_target, optimise
from .codegen.cuda import NUMBA_ARRAYS, is_device_array
from .interpret import eval_graph
from .ir import Graph, dtype_name, is_float, type_str
from .passes import jvp_graph, linearize_graph, simplify
from .passes.transpose import backward_pass, transpose_graph
from .trace import Tracer, is_array0d, trace_graph
from .transformed import Transformed

MAX_SPECIALISATIONS = 32   # paths kept per argument signature
MAX_SIGNATURES = 256       # argument signatures kept per transformed function
RETRACE_WARN = 8           # traces of one transformed function before RetraceWarning


# ---------------------------------------------------------------- argument handling

def _is_static(leaf) -> bool:
    if isinstance(leaf, Tracer):
        return False
    if isinstance(leaf, (bool, np.bool_)) or isinstance(leaf, numbers.Integral):
        return True
    return not isinstance(leaf, (float, complex, np.ndarray, np.generic)) \
        and not is_device_array(leaf)


def _device_dtype(x):
    """A device array's dtype as NumPy's (a PyTorch tensor's ``dtype`` is torch's)."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype):
        return dtype
    return np.dtype(x.__cuda_array_interface__["typestr"])


def _host_copy(x):
    """A device array's values on the host (for tracing: Python control flow may read
    them; the compiled code reads the device array itself)."""
    from .codegen.cuda import as_numba, host, import_cuda
    import_cuda()
    return host(as_numba(x))


def _numba_view(x):
    """An object exposing ``__cuda_array_interface__`` and nothing else (no ``shape``,
    which NumPy would then take to be ``()``) as numba's view of its memory."""
    from .codegen.cuda import as_numba, import_cuda
    import_cuda()
    return as_numba(x)


class _Args:
    """Flattened arguments: the dynamic leaves and everything needed to rebuild them."""

    def __init__(self, args):
        self.leaves, self.treedef = pytree.flatten(list(args))
        self.leaves = [_numba_view(x) if is_device_array(x) and not hasattr(x, "shape")
                       else x for x in self.leaves]
        self.static = [_is_static(x) for x in self.leaves]
        self.dynamic = [self._as_array(x) for x, s in zip(self.leaves, self.static) if not s]
        self.pyfloat = [isinstance(x, (float, complex)) and not isinstance(x, np.generic)
                        for x, s in zip(self.leaves, self.static) if not s]
        # weakly typed leaves (``Tracer.weak``): Python floats, and weak Tracers of an
        # enclosing trace (``jit(grad(f))(x, 3.0)``)
        self.weak = [p or isinstance(x, Tracer) and x.weak
                     for x, p in zip(self.dynamic, self.pyfloat)]
        # 0-d arrays (not NumPy scalars nor Python numbers): written in place by y += v
        # (``Tracer.array0d``), so the function's other names of the array see it
        self.array0d = [is_array0d(x) for x, s in zip(self.leaves, self.static) if not s]
        # which argument each leaf came from (``owner``: each dynamic leaf)
        self.leaf_owner = []
        for i, arg in enumerate(args):
            n = pytree.flatten(arg)[0]
            self.leaf_owner += [i] * len(n)
        self.owner = [o for o, s in zip(self.leaf_owner, self.static) if not s]

    @staticmethod
    def _as_array(x):
        if isinstance(x, Tracer) or is_device_array(x):
            return x
        if isinstance(x, np.matrix):
            raise ArgumentError(with_location(
                "an argument of type np.matrix: gradc traces it as a plain ndarray, whose * "
                "and ** are elementwise (np.matrix's are matrix products), so the function "
                "would compute something else; pass np.asarray(m) and write @ for matrix "
                "products"))
        if isinstance(x, np.ma.MaskedArray):
            raise ArgumentError(with_location(
                "an argument that is a masked array (np.ma): gradc traces its data as a "
                "plain ndarray and would ignore the mask (NumPy's np.ma operations skip "
                "masked entries); pass the data and the mask as two arrays and use "
                "np.where(mask, ...), or np.ma.filled(x, value)"))
        x = np.asarray(x)
        if x.dtype.kind not in "biufc":
            raise ArgumentError(with_location(
                f"an argument of dtype {x.dtype} (gradc traces arrays of booleans, "
                "integers and floats; pass other values as Python objects the function "
                "closes over, or convert them)"))
        return x

    def key(self):
        parts = []
        for x, s in zip(self.leaves, self.static):
            if s:
                try:
                    hash(x)
                    parts.append(("static", type(x), x))
                except TypeError:
                    parts.append(("static-id", id(x)))
            else:
                # (weakly typed or not: a Python float, or a weak Tracer, is traced
                # otherwise than an np.float64, which is a float too)
                parts.append(("dyn", tuple(np.shape(x)), _leaf_dtype(x).str,
                              isinstance(x, float) and not isinstance(x, np.generic),
                              isinstance(x, Tracer) and x.weak,
                              isinstance(x, np.ndarray) and x.ndim == 0
                              or isinstance(x, Tracer) and x.array0d))
        return (self.treedef, tuple(parts))

    def rebuild(self, dynamic):
        it = iter(dynamic)
        leaves = [x if s else next(it) for x, s in zip(self.leaves, self.static)]
        return pytree.unflatten(self.treedef, leaves)

    def avals(self):
        return [(tuple(np.shape(x)), _leaf_dtype(x)) for x in self.dynamic]

    def values(self):
        return [x.val if isinstance(x, Tracer) else _host_copy(x) if is_device_array(x)
                else x for x in self.dynamic]


def _fun_name(fun) -> str:
    return getattr(fun, "__qualname__", getattr(fun, "__name__", repr(fun)))


def _fun_location(fun) -> str:
    where = _defined_at(fun)
    return f" (defined at {where})" if where else ""


def _defined_at(fun) -> str | None:
    code = getattr(getattr(fun, "__wrapped__", fun), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else None


def _trace(fun, args: _Args, kwargs, has_aux=False):
    """Trace ``fun`` on the dynamic leaves.  Returns (graph, out_treedef, captured, n_aux)."""
    box = {}

    def flat_fun(*dynamic):
        for t, weak, array0d in zip(dynamic, args.weak, args.array0d):
            t.weak = weak           # (a Python float takes an array operand's dtype)
            t.array0d = array0d
        before = [t.ir_var for t in dynamic]
        randomness = _random_states(fun)
        try:
            out = fun(*args.rebuild(dynamic), **kwargs)
        except TypeError as e:
            if isinstance(e, GradcError):       # (a nested transformation's, as it is)
                raise
            last = e.__traceback__
            while last.tb_next is not None:
                last = last.tb_next
            if last.tb_frame.f_code.co_filename != __file__:     # (raised inside fun)
                raise
            # (by the call itself, here or in _positional's: arguments that do not
            # match fun's parameters)
            raise ArgumentError(with_location(f"{e}{_fun_location(fun)}")) from None
        _warn_of_side_effects(fun, dynamic, before, randomness)
        aux = None
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ArgumentError(with_location(
                    f"has_aux=True requires {_fun_name(fun)} to return a pair (output, aux)"))
            out, aux = out
        leaves, box["treedef"] = pytree.flatten(out)
        aux_leaves, box["aux_treedef"] = pytree.flatten(aux)
        box["n_out"] = len(leaves)
        return [_output_leaf(x, fun) for x in leaves + aux_leaves]

    graph, _, captured = trace_graph(flat_fun, args.avals(), args.values())
    return graph, box, captured


def _random_states(fun) -> list:
    """NumPy's global random state and that of each ``Generator`` ``fun`` reads."""
    states = [np.random.get_state()[1:3]]
    return states + [v.bit_generator.state for _, _, v in _reads(fun)
                     if isinstance(v, np.random.Generator)]


def _warn_of_side_effects(fun, dynamic, before, randomness) -> None:
    """Warn of what tracing ``fun`` did that its compiled form will not do again: draw
    random numbers (they are fixed in the traced program, the same at every call), and
    write into an argument array (the caller's array is not changed, as NumPy's would
    be: the write is seen inside ``fun`` only)."""
    from .trace import _TRACES, current_trace
    after = _random_states(fun)
    drew = len(after) != len(randomness) or any(
        not _same_state(a, b) for a, b in zip(after, randomness))
    if drew and len(_TRACES) == 1:          # (once: by the outermost trace)
        user = _users_function(fun)
        _warn_user(with_location(
            f"{_fun_name(user)} drew random numbers (np.random) while gradc traced it: "
            "they are constants of the traced program, the same at every call.  Pass "
            "random arrays as arguments instead", _defined_at(user)))
    trace = current_trace()
    for t, v in zip(dynamic, before):
        if t.ir_var is not v:
            where = next((e.source for e in reversed(trace.eqns) if t.ir_var in e.outputs
                          and e.source), None) if trace is not None else None
            _warn_user(with_location(
                f"{_fun_name(_users_function(fun))} writes into an argument array: gradc "
                "does not change the caller's array (NumPy would), the write is seen "
                "inside the function only.  Return the new value, or write into a copy "
                "(x = x.copy())", where))
            break


def _users_function(fun):
    """``fun``, or where ``fun`` is gradc's own wrapper (``jacfwd``'s), the first user
    function it reads (``_reads``)."""
    from .errors import _in_gradc
    for f in [fun] + [v for _, _, v in _reads(fun)]:
        code = getattr(getattr(f, "__wrapped__", f), "__code__", None)
        if code is not None and not _in_gradc(code.co_filename):
            return f
    return fun


def _warn_user(message: str, category=GradcWarning) -> None:
    """A ``GradcWarning`` (or ``category``) attributed to the user's line that called
    gradc."""
    import warnings
    from .errors import user_frame
    frame = user_frame()
    if frame is None:
        warnings.warn(category(message), stacklevel=2)
        return
    g = frame.f_globals
    warnings.warn_explicit(category(message), category, frame.f_code.co_filename,
                           frame.f_lineno, module=g.get("__name__"),
                           registry=g.setdefault("__warningregistry__", {}))


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else a == b


def _output_leaf(x, fun):
    if isinstance(x, Tracer) or isinstance(x, (np.ndarray, np.generic, float, int, bool, complex)):
        return x
    raise ArgumentError(with_location(
        f"{_fun_name(fun)} returned a {type(x).__name__}; gradc functions return arrays, "
        "floats, or tuples/lists/dicts of them"))


class _Cache:
    """Derived graphs per argument signature, several per signature (one per path).  A
    key ends with the fingerprint of what ``fun`` reads (``_fingerprint``); a function
    that changes what it reads while it is traced (appends to a list it closes over) is
    found under the fingerprint after its trace too, not traced again at every call."""

    def __init__(self, fun=None):
        self.entries: dict = {}
        try:                            # (weakly: jvp's table of caches is keyed by fun)
            self.fun = weakref.ref(fun) if fun is not None else lambda: None
        except TypeError:
            self.fun = lambda: fun
        self.volatile: set = set()      # (id(holder), name) of reads the trace changes
        self.traces, self.last_key = 0, None

    def run(self, key, build, dynamic, extra=()):
        """Evaluate the first specialisation whose guards hold; build a new one if none.
        A derived graph takes ``dynamic + captured + extra`` as inputs."""
        specs = self._specs(key)
        for spec in specs:
            try:
                return spec, spec.evaluate(dynamic, extra)
            except GuardFailure:
                continue
        spec = self._built(key, specs, build)
        return spec, spec.evaluate(dynamic, extra)

    def find(self, key, build):
        """The specialisation that these arguments run, for inspection: never run (a
        CUDA program needs no GPU to be shown, nor minutes of the simulator).  A
        signature's only specialisation is it when nothing in it checks values; else a
        new one is traced from these values, which its checks then hold for (kept in
        the cache when the signature had none, else not: it repeats a cached path)."""
        specs = self._specs(key)
        if not specs:
            return self._built(key, specs, build)
        if len(specs) == 1 and not _checks_values(specs[0].graph):
            return specs[0]
        return build()

    def _specs(self, key) -> list:
        """The specialisations of one signature.  Traces made while ``vmap`` traces one
        example leave out value checks (``trace.checkable``), so they are kept apart
        from the others."""
        from .trace import tracing_one_example
        specs = self.entries.setdefault((key, tracing_one_example()), [])
        while len(self.entries) > MAX_SIGNATURES:      # forget the oldest signature
            del self.entries[next(iter(self.entries))]
        return specs

    def _built(self, key, specs, build):
        spec, grew = self.noting_changes(build)
        if spec.cacheable:
            # (not one made inside another trace, of its tracers: inlined, not compiled)
            self.traces += 1
            if self.traces == RETRACE_WARN + 1:
                _warn_retraces(self.fun(), self.traces, self.last_key, key)
            self.last_key = key
            specs.append(spec)
            del specs[:-MAX_SPECIALISATIONS]
            if grew:            # (found under the key without what the trace changed)
                from .trace import tracing_one_example
                after = key[:-1] + (_fingerprint(self.fun(), self),)
                self.entries[(after, tracing_one_example())] = specs
        return spec

    def noting_changes(self, build):
        """``(build(), whether it changed more of what fun reads)``: what the trace
        changes (a list of calls the function appends to) is left out of keys from
        then on (``volatile``, read by ``_fingerprint``)."""
        fun = self.fun()
        before = _reads(fun) if fun is not None else []
        out = build()
        changed = {(id(h), _ANY if n is _LENGTH else n) for h, n, v in before
                   if not _read_unchanged(h, n, v)}
        grew = bool(changed - self.volatile)
        self.volatile |= changed
        return out, grew


class RetraceWarning(GradcWarning):
    """A transformed function traced (and compiled) again and again: each new argument
    signature (a Python int's value, an array's shape or dtype) or new path through
    Python control flow on traced values costs a trace and a compile.  Shown once per
    function, at its ``RETRACE_WARN + 1``-th trace, saying what changed last."""


def _warn_retraces(fun, traces, before, after) -> None:
    _warn_user(f"gradc: {_fun_name(fun) if fun is not None else 'a function'} was traced "
               f"{traces} times (a trace and a compile each); the last time because "
               f"{_key_change(before, after)}", RetraceWarning)


def _key_change(before, after) -> str:
    """What differs between two cache keys (``_Args.key`` first), in words, with what to
    do about it."""
    def leaves(key):
        try:
            treedef, parts = key[0]
            if all(isinstance(p, tuple) and p[0] in ("static", "static-id", "dyn")
                   for p in parts):
                return treedef, parts
        except (TypeError, ValueError, IndexError):
            pass
        return None
    if before == after:
        return ("Python control flow on traced values (an if, a while, a mask's count) took "
                "a path not traced before; gradc.cond, gradc.while_loop or np.where keep "
                "one program for all paths")
    old, new = leaves(before) if before is not None else None, leaves(after)
    if old is None or new is None or old[0] != new[0] or len(old[1]) != len(new[1]):
        return ("the arguments' structure (pytree, static arguments) or the function's "
                "closure changed")
    for k, (a, b) in enumerate(zip(old[1], new[1])):
        if a == b:
            continue
        if a[0] == "static" and b[0] == "static" and a[1] is b[1] is int:
            return (f"argument leaf {k}, a Python int, changed from {a[2]} to {b[2]}: Python "
                    "ints are static (a value each); pass np.asarray(n) to trace it, "
                    "unless it sets a shape or a loop count")
        if a[0] == "dyn" and b[0] == "dyn":
            if a[1] != b[1]:
                return (f"argument leaf {k}'s shape changed from {a[1]} to {b[1]}: shapes "
                        "are static (a trace each); pad to a few sizes, or batch with "
                        "gradc.vmap")
            return (f"argument leaf {k}'s dtype or kind changed ({np.dtype(a[2])} to "
                    f"{np.dtype(b[2])}{', Python float' if b[3] else ''})")
        return f"argument leaf {k} changed ({a[0]} to {b[0]})"
    return "the function's closure or globals changed"


def _checks_values(graph: Graph) -> bool:
    """Whether ``graph`` (or a loop body or branch in it) holds only for some values of
    its inputs' signature (``Primitive.checks_values``: a guard, a mask's count)."""
    from .ir import subgraphs
    return any(e.prim.checks_values or any(_checks_values(b) for b in subgraphs(e))
               for e in graph.eqns)


class _Spec:
    """One derived Graph with the output structure needed to unflatten its results.

    ``graph`` is the derived Graph as the passes built it; ``optimised`` is what runs
    (after ``codegen.optimise``), compiled for ``target`` at its first concrete call.
    Called with Tracers (inside an outer transformation), the derived graph is inlined
    into the outer trace instead."""

    def __init__(self, graph: Graph, info: dict, captured, target="numpy", fastmath=False,
                 name="gradc_fn"):
        self.graph = graph
        self.info = info
        self.captured = list(captured)
        self.cacheable = not captured
        self.target = target
        self.fastmath = fastmath
        self.name = name
        self._exe = None

    @property
    def executable(self) -> Executable:
        if self._exe is None:
            self._exe = Executable(optimise(self.graph, self.target), self.target,
                                   self.fastmath, self.name)
        return self._exe

    def evaluate(self, dynamic, extra=()):
        values = list(dynamic) + self.captured + list(extra)
        if any(isinstance(v, Tracer) for v in values):
            return eval_graph(self.graph, values)
        return self.executable(values)


# ---------------------------------------------------------------- output conversion

def _to_user(x, like=None, pyfloat=False):
    """Results leave gradc as NumPy values (Tracers stay Tracers inside a trace)."""
    if isinstance(x, Tracer) or is_device_array(x):
        return x
    x = np.asarray(x)
    if x.dtype == object:           # (SymPy's expressions: gradc.to_sympy)
        return x[()] if x.ndim == 0 else x
    if pyfloat:
        return float(x) if not np.iscomplexobj(x) else complex(x)
    if x.ndim == 0:
        return x[()]
    return x


def _check_wrt(args: _Args, argnums, fun, what="grad", n_positional=None):
    """Which dynamic leaves to differentiate: the floating-point leaves of the ``argnums``
    arguments.  Static leaves (ints, bools) inside a pytree argument are skipped (their
    gradient is None); an argument with no floating-point leaf at all is an error."""
    n_args = len(args.treedef.children) if n_positional is None else n_positional
    arg_trees = pytree.unflatten(args.treedef, list(args.leaves))
    for i in argnums:
        if not -n_args <= i < n_args:
            raise ArgumentError(with_location(
                f"{what}: argnums={i} but {_fun_name(fun)} was called with "
                f"{n_args} positional arguments"))
        leaves = pytree.flatten(arg_trees[i])[0]
        if not any(not _is_static(x) and is_float(_leaf_dtype(x)) for x in leaves):
            bad = next((x for x in leaves if _is_static(x) or not is_float(_leaf_dtype(x))),
                       arg_trees[i])
            raise ArgumentError(with_location(
                f"{what} of {_fun_name(fun)} with respect to argument {i}, which "
                f"{'is' if bad is arg_trees[i] else 'holds'} {_describe(bad)}: only "
                f"floating-point values (floats, float arrays) can be differentiated; "
                f"integers and bools are static. Pass a float (e.g. {_as_float_hint(bad)}) "
                "or a float array (np.asarray(x, dtype=float))"))
        if any(not _is_static(x) and np.iscomplexobj(np.empty(0, _leaf_dtype(x)))
               for x in leaves):
            raise ArgumentError(with_location(
                f"{what} of {_fun_name(fun)} with respect to argument {i}, which is complex: "
                "gradc differentiates real-valued inputs only; split it into real and "
                "imaginary parts"))
    nums = {i % n_args for i in argnums}
    return [o in nums and is_float(_leaf_dtype(x)) for o, x in zip(args.owner, args.dynamic)]


def _leaf_dtype(x):
    if isinstance(x, (Tracer, np.ndarray, np.generic)):
        return np.dtype(x.dtype)
    return _device_dtype(x) if is_device_array(x) else np.asarray(x).dtype


def _describe(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return f"the bool {x!r}"
    if isinstance(x, numbers.Integral):
        return f"the int {x!r}"
    if isinstance(x, (np.ndarray, Tracer)):
        return f"an array of type {type_str(x.shape, x.dtype)}"
    return f"a {type(x).__name__}"


def _as_float_hint(x):
    return f"{float(x)!r}" if isinstance(x, numbers.Number) else "1.0"


def _normalise_argnums(argnums):
    def position(i):
        return isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
    if position(argnums):
        return (int(argnums),), True
    if isinstance(argnums, (tuple, list)) and argnums and all(map(position, argnums)):
        return tuple(int(i) for i in argnums), False
    raise ArgumentError(with_location(
        f"argnums must be an argument's position or a non-empty tuple of them, got "
        f"{argnums!r} (an argument passed by keyword is differentiated when passed by "
        "position)"))


# ---------------------------------------------------------------- grad, value_and_grad

def _fast_reads(fun, cache, spec):
    """``(reads, executable)`` for a fast-path entry of ``spec`` (what ``fun`` reads, each
    array's content after it, ``_reads_unchanged`` checks them per call), or None where
    ``spec`` cannot be run that way (it captured traced values; the interpreter)."""
    if not spec.cacheable or spec.target == "numpy":
        return None
    skip = cache.volatile
    reads = [r for r in _reads(fun) if not skip or not _skipped(r[0], r[1], skip)]
    # (an array is keyed by content, as in _fingerprint: after the read of the array
    # object, a read of what it holds now)
    reads += [(v, _CONTENT, _content(v)) for _, _, v in reads if isinstance(v, np.ndarray)]
    exe = spec.executable
    if exe.compiled is None or exe._fallback:
        return None
    return tuple(reads), exe


def _arrays_read(fun) -> list:
    """The arrays ``fun`` reads, with their content: a call that changes one (a count it
    keeps there) must not fill a fast-path entry, whose check holds the state after it
    (``_changed``)."""
    return [(v, _content(v)) for _, _, v in _reads(fun) if isinstance(v, np.ndarray)]


def _changed(arrays) -> bool:
    """Whether an array of ``_arrays_read`` holds something else now."""
    return any(_content(v) != c for v, c in arrays)


class _FastTable:
    """The fast-path entries of a transformation that is a plain function (``jvp``; the
    forward pass of ``vjp`` and ``linearize``), per user function (weakly) and fast key:
    ``get`` gives an entry's value while what the function reads is unchanged."""

    def __init__(self):
        self.tables: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def get(self, fun, fkey):
        try:
            entry = self.tables.get(fun, {}).get(fkey)
        except TypeError:                   # (a function that cannot be weakly referenced)
            return None
        if entry is not None and (not entry[0] or _reads_unchanged(entry[0])):
            return entry[1]
        return None

    def put(self, fun, fkey, reads, value) -> None:
        try:
            table = self.tables.setdefault(fun, {})
        except TypeError:
            return
        if len(table) > MAX_SIGNATURES:
            table.clear()
        table[fkey] = (reads, value)


class _FastPath:
    """The per-call fast path of a transformation: a call whose arguments are plain
    floats, ints, non-scalar ndarrays and numba.cuda device arrays is looked up by a
    cheap key (types, shapes, dtypes, int values) and, while what the function reads is
    unchanged (the same objects; arrays holding the same bytes), goes straight to the
    compiled code; everything else, and any miss or failed guard, takes the general
    path, which then fills the table through the subclass's ``_remember``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fast: dict = {}               # fast key -> (what fun reads, runner)

    def __call__(self, *args, **kwargs):
        fast = self._fast
        if fast and not kwargs:
            entry = fast.get(tuple(map(type, args)))        # all-float signatures
            if entry is None:
                entry = fast.get(_fast_key(args))
            if entry is not None and (not entry[0] or _reads_unchanged(entry[0])):
                try:
                    return entry[1](args)
                except GuardFailure:
                    pass
        out, spec, state = self._general(args, kwargs, checked=not kwargs)
        if spec is not None and not kwargs:     # (keyed by the positional arguments)
            self._remember(args, spec, state)
        return out

    def _general(self, args, kwargs, checked=False):
        """The call by the general path (``_prepare``, the signature cache): ``(the
        result, its spec, the call's state)``, what ``_remember`` keeps.  ``checked``: the
        spec is None where the call wrote into an array the function reads (a count it
        keeps there): the next call's key differs (arrays are keyed by content; a rebound
        name is left out of keys instead, ``_Cache.volatile``), and the fast path, whose
        check holds the state after this call, must not take it."""
        arrays = _arrays_read(self.fun) if checked else ()
        key, build, dynamic, state = self._prepare(args, kwargs)
        spec, results = self._cache.run(key, build, dynamic)
        out = self._finish(spec, results, state)
        if _changed(arrays):
            spec = None
        return out, spec, state

    def _remember(self, args, spec, state):
        raise NotImplementedError

    def _fast_entry(self, args, spec, fkey=None):
        """(key, reads, executable) when calls like ``args`` may take the fast path
        (``fkey``: their key, where it is not ``_fast_key(args)``)."""
        fkey = _fast_key(args) if fkey is None else fkey
        if fkey is None:
            return None
        found = _fast_reads(self.fun, self._cache, spec)
        return None if found is None else (fkey,) + found

    def _store(self, fkey, reads, runner, exe):
        if len(fast := self._fast) > MAX_SIGNATURES:
            fast.clear()
        fast[fkey] = (reads, runner)
        if fast.clear not in exe.compiled.on_switch:
            # calls moved from a cached shared library to Numba: runners are made anew
            exe.compiled.on_switch.append(fast.clear)


class ValueAndGrad(_FastPath, Transformed):
    """What ``value_and_grad(f)`` returns (see there)."""

    kind = "value_and_grad"
    with_value = True

    def __init__(self, fun, argnums=0, has_aux=False, **options):
        super().__init__(fun, **options)
        self.argnums = argnums
        self.nums, self.single = _normalise_argnums(argnums)
        self.has_aux = has_aux

    def _options(self):
        return dict(super()._options(), argnums=self.argnums, has_aux=self.has_aux)

    def _remember(self, args, spec, state):
        if self.has_aux or len({i % len(args) for i in self.nums}) < len(self.nums) or \
                (found := self._fast_entry(args, spec)) is None:
            return                          # (repeated argnums: _finish copies repeats)
        fkey, reads, exe = found
        flat, wrt = state
        if len(flat.leaves) != len(args):
            return                                  # pytrees
        dyn = [i for i, st in enumerate(flat.static) if not st]
        where, k = {}, 0                            # argument -> its gradient's position
        for j, i in enumerate(dyn):
            if wrt[j]:
                where[i] = k
                k += 1
        picks = [where[i % len(args)] for i in self.nums]
        if all(t is float for t in fkey):
            fkey = tuple(float for _ in args)
        self._store(fkey, reads, self._runner(exe, dyn, len(args), picks), exe)

    def _runner(self, exe, dyn, n_args, picks):
        """A function of the argument tuple for one signature: the compiled call and the
        conversion of its results, specialised to the common shapes of the problem.
        Numba returns float64 scalars as Python floats, as gradc returns them for
        Python-float arguments; array results are fresh NumPy arrays."""
        call = exe.compiled.fast_callable()
        off = 1 if self.with_value else 0
        n = len(picks)
        all_dynamic = len(dyn) == n_args
        value_type = dict(exe._scalar_out).get(0, np.asarray)

        def inputs(args):
            return args if all_dynamic else [args[i] for i in dyn]

        if not self.with_value and picks == list(range(n)) and not self.single:
            if all_dynamic:                 # the commonest case: no argument is static
                return lambda args: call(*args)
            return lambda args: call(*inputs(args))
        if not self.with_value and self.single:
            k = picks[0]
            if all_dynamic:
                return lambda args: call(*args)[k]
            return lambda args: call(*inputs(args))[k]

        def run(args):
            r = call(*inputs(args))
            g = r[off + picks[0]] if self.single else tuple(r[off + k] for k in picks)
            return (value_type(r[0]), g) if self.with_value else g
        return run


    def _prepare(self, args, kwargs):
        fun = self.fun
        call, all_args, names = _positional(fun, args, kwargs)
        flat = _Args(all_args)
        wrt = _check_wrt(flat, self.nums, fun, n_positional=len(args))
        key = (flat.key(), names, _fingerprint(fun, self._cache))

        def build():
            return _build_grad(call, flat, {}, wrt, self.has_aux, self.target,
                               self.fastmath, self.with_value)
        return key, build, flat.dynamic, (flat, wrt)

    def _finish(self, spec, results, state):
        flat, wrt = state
        info = spec.info
        n_out = 1 if info["with_value"] else 0
        n_aux = info["n_aux"]
        value = _to_user(results[0]) if n_out else None
        aux = pytree.unflatten(info["aux_treedef"], [_to_user(r) for r in
                                                     results[n_out:n_out + n_aux]])
        grads = iter(results[n_out + n_aux:])
        dyn_iter = iter(zip(flat.pyfloat, wrt))
        leaves = []
        for static in flat.static:
            if static:
                leaves.append(None)
                continue
            pyf, w = next(dyn_iter)
            leaves.append(_to_user(next(grads), pyfloat=pyf) if w else None)
        rebuilt = pytree.unflatten(flat.treedef, leaves)
        if self.single:
            g = rebuilt[self.nums[0]]
        else:          # (argnums=(0, 0): two gradients, not one array twice)
            at = [i % len(rebuilt) for i in self.nums]
            g = tuple(rebuilt[i] if at.index(i) == k else
                      pytree.tree_map(lambda x: x.copy() if isinstance(x, np.ndarray) else x,
                                      rebuilt[i])
                      for k, i in enumerate(at))
        if self.has_aux:
            return (value, aux), g
        return value, g


class Grad(ValueAndGrad):
    """What ``grad(f)`` returns (see there)."""

    kind = "grad"
    with_value = False       # the value is not computed at all

    def _finish(self, spec, results, state):
        out = super()._finish(spec, results, state)
        if self.has_aux:
            (_, aux), g = out
            return g, aux
        return out[1]

    @property
    def value_and_grad(self):
        return ValueAndGrad(self.fun, **self._options())


class Evaluate(_FastPath, Transformed):
    """What ``jit(f)`` returns: ``f`` itself, traced once per signature and compiled."""

    kind = "jit"

    def __init__(self, fun, static_argnums=(), static_argnames=(), **options):
        super().__init__(fun, **options)
        nums = (static_argnums,) if _is_axis(static_argnums) else tuple(static_argnums)
        names = (static_argnames,) if isinstance(static_argnames, str) else \
            tuple(static_argnames)
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                   for n in nums) or not all(isinstance(n, str) for n in names):
            raise ArgumentError(with_location(
                f"jit: static_argnums are argument positions and static_argnames "
                f"parameter names, got {static_argnums!r} and {static_argnames!r}"))
        self.static_argnums, self.static_argnames = tuple(int(n) for n in nums), names
        # (JAX's rule: a static parameter is static however it is passed; the signature
        # maps positions to names and back)
        self._static_positions, self._static_names = set(self.static_argnums), set(names)
        self._layouts: dict = {}        # number of positional arguments -> (static, rest)
        import inspect
        try:
            params = list(inspect.signature(fun).parameters.values())
        except (TypeError, ValueError):
            return
        positional = [q.name for q in params
                      if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
        varargs = any(q.kind is q.VAR_POSITIONAL for q in params)
        for i in self.static_argnums:
            if -len(positional) <= i < len(positional):
                self._static_names.add(positional[i])
            elif not varargs:
                raise ArgumentError(with_location(
                    f"jit: static_argnums={static_argnums!r}, but "
                    f"{_fun_name(fun)} takes {len(positional)} positional arguments"))
        takes_keywords = any(q.kind is q.VAR_KEYWORD for q in params)
        known = {q.name for q in params if q.kind is not q.VAR_POSITIONAL}
        for k in names:
            if k not in known and not takes_keywords:
                raise ArgumentError(with_location(
                    f"jit: static_argnames has {k!r}, but {_fun_name(fun)} has no parameter "
                    f"of that name (it takes {', '.join(sorted(known)) or 'none'})"))
            if k in positional:
                self._static_positions.add(positional.index(k))

    def _options(self):
        return dict(super()._options(), static_argnums=self.static_argnums,
                    static_argnames=self.static_argnames)

    def _split_static(self, args, kwargs):
        """``(call, args, kwargs, key)``: the static arguments (``static_argnums``,
        ``static_argnames``) taken out and bound into ``call`` as constants of the trace
        (any Python value; a new value, by type and ``==``, traces again, as JAX's;
        ``_static_key``)."""
        n = len(args)
        at = sorted({i % n for i in self._static_positions if -n <= i < n})
        named = sorted(k for k in self._static_names if k in kwargs)
        fixed = tuple(args[i] for i in at) + tuple(kwargs[k] for k in named)
        try:
            hash(fixed)
        except TypeError:
            raise ArgumentError(with_location(
                "jit: a static argument must be hashable (it is part of the cache key), "
                f"got {', '.join(type(v).__name__ for v in fixed)}; pass arrays as "
                "ordinary (traced) arguments, or a tuple for a list")) from None
        rest = [a for i, a in enumerate(args) if i not in at]
        fun = self.fun

        def call(*dynamic, **kw):
            full, it = [], iter(dynamic)
            for i in range(n):
                full.append(args[i] if i in at else next(it))
            return fun(*full, *it, **kw, **{k: kwargs[k] for k in named})
        call.__qualname__ = _fun_name(fun)
        call.__wrapped__ = fun
        key = (tuple(at), tuple(named), tuple(_static_key(v) for v in fixed))
        return call, rest, {k: v for k, v in kwargs.items() if k not in named}, key

    def __new__(cls, fun=None, static_argnums=(), static_argnames=(), **options):
        # (with static arguments, the subclass whose __call__ keys them: a jit without
        # any keeps _FastPath's, with no call in between)
        if cls is Evaluate and not (_empty(static_argnums) and _empty(static_argnames)):
            cls = _StaticEvaluate
        return super().__new__(cls)

    def _call_with_static(self, *args, **kwargs):
        """``__call__`` with static arguments: the fast key is theirs (``_static_key``, as
        in the general path's key) beside the
        dynamic arguments' ``_fast_key``; static keyword arguments are keyed by name."""
        fkey, at = self._static_fast_key(args, kwargs)
        if fkey is not None and self._fast:
            try:
                entry = self._fast.get(fkey)
            except TypeError:           # (an unhashable static value: the general
                entry = fkey = None     # path says so)
            # (the entry's check and run as in _FastPath.__call__, written out rather
            # than a shared method: a call more per call is ~5% of W2's 900 ns)
            if entry is not None and (not entry[0] or _reads_unchanged(entry[0])):
                try:
                    return entry[1](args)
                except GuardFailure:
                    pass
        out, spec, state = self._general(args, kwargs, checked=fkey is not None)
        if fkey is not None and spec is not None:
            self._remember(args, spec, state, fkey, at)
        return out

    def _static_fast_key(self, args, kwargs):
        """``(fast key, static positions)`` of a call with static arguments, or
        ``(None, None)`` where it cannot take the fast path (a dynamic argument passed by
        keyword, or one ``_fast_key`` does not take)."""
        n = len(args)
        layout = self._layouts.get(n)
        if layout is None:
            at = tuple(sorted({i % n for i in self._static_positions if -n <= i < n}))
            layout = self._layouts[n] = (at, tuple(i for i in range(n) if i not in at))
        at, rest = layout
        kw = ()
        if kwargs:
            names = self._static_names
            if any(k not in names for k in kwargs):
                return None, None
            kw = tuple(sorted((k, _static_key(v)) for k, v in kwargs.items()))
        dyn = _fast_key([args[i] for i in rest])
        if dyn is None:
            return None, None
        return (n, dyn, tuple([_static_key(args[i]) for i in at]), kw), at

    def _remember(self, args, spec, state, fkey=None, at=()):
        if (self._static_positions or self._static_names) and fkey is None or \
                (found := self._fast_entry(args, spec, fkey)) is None:
            return
        fkey, reads, exe = found
        dyn = [i for i, a in enumerate(args) if i not in at and type(a) not in (int, bool)]
        finish = self._finish
        td, n_out = spec.info["treedef"], spec.info["n_out"]
        flat = td.kind == "leaf" or td.kind == "tuple" and all(
            c.kind == "leaf" for c in td.children)

        def run(args):           # (the general path's conversions: a float as a 0-d array)
            return finish(spec, exe([args[i] if type(args[i]) is not float
                                     else np.asarray(args[i]) for i in dyn]), None)
        outs = spec.graph.outputs[:n_out]
        if flat and all(type(args[i]) is not float for i in dyn) and \
                len(set(outs)) == len(outs):
            # (arrays in, a result or a tuple of them out: the same, with less on the way)
            everything = len(dyn) == len(args)
            if exe.target != "cuda" and not exe._scalar_out and \
                    all(type(args[i]) is np.ndarray for i in dyn):
                # NumPy arrays in and out: straight to the compiled function, which
                # returns arrays as the user gets them (~1.5 µs a call less than through
                # the Executable's checks and _to_user)
                call = exe.compiled.fast_callable()
                if td.kind == "leaf":
                    def run(args):      # noqa: F811
                        return call(*[args[i] for i in dyn])[0]
                else:
                    def run(args):      # noqa: F811
                        return call(*[args[i] for i in dyn])[:n_out]
                self._store(fkey, reads, run, exe)
                return
            if td.kind == "leaf" and everything:
                def run(args):      # noqa: F811
                    return _to_user(exe(args)[0])
            elif td.kind == "leaf":
                def run(args):      # noqa: F811
                    return _to_user(exe([args[i] for i in dyn])[0])
            elif everything:
                def run(args):      # noqa: F811
                    return tuple([_to_user(r) for r in exe(args)[:n_out]])
            else:
                def run(args):      # noqa: F811
                    return tuple([_to_user(r) for r in exe([args[i] for i in dyn])[:n_out]])
        self._store(fkey, reads, run, exe)

    def _prepare(self, args, kwargs):
        fun, static = self.fun, None
        if self._static_positions or self._static_names:
            fun, args, kwargs, static = self._split_static(args, kwargs)
        call, all_args, names = _positional(fun, args, kwargs)
        flat = _Args(all_args)
        key = (flat.key(), names, static, _fingerprint(self.fun, self._cache))

        def build():
            graph, info, captured = _trace(call, flat, {})
            return _Spec(graph, dict(info, primal=graph), captured, self.target,
                         self.fastmath, _code_name(self.fun, "fn"))
        return key, build, flat.dynamic, None

    def _finish(self, spec, results, state):
        info = spec.info
        n_out = info["n_out"]
        return pytree.unflatten(info["treedef"],
                                [_to_user(r) for r in _distinct(results[:n_out])])


class _StaticEvaluate(Evaluate):
    """What ``jit(f, static_argnums=..., static_argnames=...)`` returns."""

    __call__ = Evaluate._call_with_static


_PLAIN_STATIC = frozenset({int, bool, str, bytes, type(None)})


def _static_key(v):
    """A static argument's part of a cache key: its type and value, compared by hash and
    ``==`` (JAX's rule), and what ``==`` does not tell apart but a trace may read: the
    items' types of a tuple or frozenset ((1,), (1.0,) and (True,) are equal, but
    ``np.full(2, s[0])`` has three dtypes, as for 1, 1.0 and True), and the sign of a
    float zero (0.0 == -0.0, but ``np.copysign(1.0, s)`` is not)."""
    t = type(v)
    if t in _PLAIN_STATIC or t is float and v:     # (the common cases first: per call)
        return (t, v)
    if isinstance(v, tuple):
        return (t, tuple([_static_key(e) for e in v]))
    if isinstance(v, frozenset):
        return (t, frozenset([_static_key(e) for e in v]))
    if isinstance(v, (float, np.floating)) and v == 0:
        return (t, v, math.copysign(1.0, v) < 0)
    return (t, v)


def _empty(v) -> bool:
    return isinstance(v, (tuple, list)) and not v


def _distinct(results) -> list:
    """``results`` with an array that appears again (one value returned twice: a
    Jacobian for repeated argnums) copied, so that each result is the caller's own."""
    seen, out = set(), list(results)
    for i, r in enumerate(out):
        if isinstance(r, np.ndarray):
            if id(r) in seen:
                out[i] = r = r.copy()
            seen.add(id(r))
    return out


def _fast_key(args):
    """A cheap key for the fast path, or None: per argument its type, and its shape and
    dtype (non-scalar arrays, numba.cuda's device arrays) or value (ints and bools,
    which are static)."""
    key = []
    for a in args:
        t = type(a)
        if t is float:
            key.append(t)
        elif t is np.ndarray and a.ndim:
            key.append((a.shape, a.dtype, a.flags.c_contiguous))
        elif t is int or t is bool:
            key.append((t, a))
        elif t.__name__ in NUMBA_ARRAYS:    # (numba.cuda's device arrays: traced by
            key.append((t, a.shape, a.dtype))  # shape and dtype alone, as ndarrays)
        else:
            return None
    return tuple(key)


def _code_name(fun, suffix) -> str:
    """A Python identifier for generated code: ``<function name>_<suffix>``."""
    import re
    base = re.sub(r"\W", "_", getattr(fun, "__name__", "f")).strip("_") or "f"
    if base[0].isdigit() or base == "lambda":
        base = "f_" + base
    return f"{base}_{suffix}"


def jit(fun=None, *, static_argnums=(), static_argnames=(), target=None, fastmath=False):
    """Compile ``fun`` itself (no derivative): traced once per argument signature, run as
    generated code on ``target`` ("cpu", "parallel", "cuda" or "numpy").  Python ints,
    bools, strings and functions are static already (a new value traces again);
    ``static_argnums``/``static_argnames`` make any hashable argument so, a float or a
    tuple included (JAX's)."""
    if fun is None:
        return functools.partial(jit, static_argnums=static_argnums,
                                 static_argnames=static_argnames, target=target,
                                 fastmath=fastmath)
    return Evaluate(fun, static_argnums, static_argnames, target=target, fastmath=fastmath)


def value_and_grad(fun=None, argnums=0, has_aux=False, *, target=None, fastmath=False):
    """``value_and_grad(f)(*args) -> (f(*args), ∇f(*args))`` (JAX's conventions).

    ``argnums`` (an int or a tuple of ints) picks the arguments to differentiate; the
    gradient has their structure (a tuple of them for a tuple ``argnums``).  With
    ``has_aux=True``, ``f`` returns ``(output, aux)`` and the result is
    ``((output, aux), grad)``.  ``target`` is "cpu" (Numba, the default), "parallel",
    "cuda" or "numpy" (the reference interpreter); ``fastmath`` lets Numba reassociate
    (and, on the GPU, use approximate float32 division, ``exp``, ``log``, ``sin``, ``cos``).
    """
    if fun is None:
        return functools.partial(value_and_grad, argnums=argnums, has_aux=has_aux,
                                 target=target, fastmath=fastmath)
    return ValueAndGrad(fun, argnums, has_aux, target=target, fastmath=fastmath)


def _positional(fun, args, kwargs):
    """Keyword arguments become trailing positional ones (so arrays and floats passed by
    keyword are traced like any argument).  Returns (callable, all args, keyword names)."""
    if not kwargs:
        return fun, tuple(args), ()
    names = tuple(sorted(kwargs))
    n = len(args)

    def call(*all_args):
        return fun(*all_args[:n], **dict(zip(names, all_args[n:])))
    call.__qualname__ = _fun_name(fun)
    call.__wrapped__ = fun                       # (for _defined_at)
    return call, tuple(args) + tuple(kwargs[k] for k in names), names


_MISSING = object()
_LENGTH = object()          # (a read's name: the holder's length, compared by value)
_ANY = object()             # (in _Cache.volatile: every read of a holder)
_CONTENT = object()         # (a fast-path read: an array's content, compared by value)
MAX_ITEMS = 256             # a container's items read one by one, up to this many


def _reads(fun, depth=4, seen=None) -> list:
    """What ``fun`` reads besides its arguments: ``(holder, name, value)`` for each of its
    closure cells (``name`` None), each module global its code names (``holder`` the
    globals dict; ``value`` ``_MISSING`` if not defined yet) and each of its defaults;
    for a bound method, a callable object or a ``functools.partial``, the object's
    attributes and arguments too.  What those values read is followed ``depth`` levels
    deep: functions' reads, and containers' and objects' items (``_contents``), so that
    a model's ``self.w``, a global ``params["w"]`` or a default array changed between
    calls re-traces too."""
    seen = set() if seen is None else seen
    if id(fun) in seen or depth == 0:
        return []
    seen.add(id(fun))
    if isinstance(fun, Transformed):             # (gradc.grad(f) inside another)
        return _reads(fun.fun, depth, seen)
    if isinstance(fun, functools.partial):
        out = [(fun.args, i, v) for i, v in enumerate(fun.args)]
        out += [(fun.keywords, k, v) for k, v in fun.keywords.items()]
        out += _reads(fun.func, depth, seen)
    elif getattr(fun, "__code__", None) is None:     # (an object with a __call__ method)
        call = getattr(type(fun), "__call__", None)
        if not isinstance(call, types.FunctionType):
            return []
        out = _contents(fun) + _class_reads(fun, call.__code__) + _reads(call, depth, seen)
    else:
        out = [(c, None, c.cell_contents) for c in (fun.__closure__ or ()) if _cell_filled(c)]
        glob = getattr(fun, "__globals__", {})
        if _is_gradc(glob):     # gradc's own globals are code, not user state
            return _within(out, depth, seen)
        for n, loaded in _global_names(fun.__code__):
            v = glob.get(n, _MISSING)
            out.append((glob, n, v))
            if isinstance(v, types.ModuleType) and not _is_library_module(v):
                attrs = vars(v)           # (``config.SCALE``: the attributes the code loads)
                out += [(attrs, a, attrs.get(a, _MISSING)) for a in loaded]
        defaults = fun.__defaults__ or ()
        out += [(defaults, i, v) for i, v in enumerate(defaults)]
        out += [(kw, k, v) for kw in [fun.__kwdefaults__ or {}] for k, v in kw.items()]
        if getattr(fun, "__self__", None) is not None:   # (a bound method)
            out += _contents(fun.__self__) + _class_reads(fun.__self__, fun.__code__)
    return _within(out, depth, seen)


def _within(reads, depth, seen) -> list:
    """``reads`` and what their values read (``_reads``: functions; ``_contents``:
    containers and objects), ``depth`` levels deep."""
    out = list(reads)
    for _, _, v in reads:
        if id(v) in seen or depth <= 1:
            continue
        if callable(v) and hasattr(v, "__code__") or isinstance(v, functools.partial):
            out += _reads(v, depth - 1, seen)
        elif isinstance(v, (staticmethod, classmethod, property)):    # (a class's)
            for f in (v.fget,) if isinstance(v, property) else (v.__func__,):
                out += _reads(f, depth - 1, seen) if hasattr(f, "__code__") else []
        elif items := _contents(v):
            seen.add(id(v))
            out += _within(items, depth - 1, seen)
    return out


def _contents(v) -> list:
    """The items of a list, tuple or dict, or the attributes of an instance of a user's
    class, as reads (``(holder, name, value)``; a list's length as ``(list, _LENGTH,
    n)``), if there are at most ``MAX_ITEMS``; else none (the object is keyed by
    identity alone)."""
    t = type(v)
    if isinstance(v, (list, tuple, dict)):        # (namedtuples, OrderedDicts too)
        if len(v) > MAX_ITEMS:
            return []
        items = v.items() if isinstance(v, dict) else enumerate(v)
        return [(v, k, x) for k, x in items] + ([(v, _LENGTH, len(v))]
                                                  if not isinstance(v, tuple) else [])
    if isinstance(v, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType,
                      types.MethodType, functools.partial)) \
            or not isinstance(getattr(v, "__dict__", None), dict) or _is_library(t):
        return []
    attrs = vars(v)
    return [] if len(attrs) > MAX_ITEMS else [(attrs, k, x) for k, x in attrs.items()]


def _class_reads(obj, code) -> list:
    """The attributes of the user's classes of ``obj`` (not a library's, nor ``object``)
    that ``code`` (a method's) names, and those that the methods among them name, as
    reads: methods, which ``_within`` follows to what they read (``self.act`` reading a
    global), and class-level values (``Model.scale``)."""
    classes = [vars(c) for c in type(obj).__mro__ if c is not object and not _is_library(c)]
    out, names, done = [], list(code.co_names), set()
    while names:
        name = names.pop()
        if name in done:
            continue
        done.add(name)
        for attrs in classes:
            if name in attrs:
                v = attrs[name]
                out.append((attrs, name, v))
                f = v.fget if isinstance(v, property) else getattr(v, "__func__", v)
                names.extend(getattr(getattr(f, "__code__", None), "co_names", ()))
                break
    return out


def _is_library_module(module) -> bool:
    """Whether ``module`` is a library's (NumPy's, the standard library's, an installed
    package's), whose attributes are not the user's state."""
    import sys
    root = (getattr(module, "__name__", None) or "").split(".")[0]
    return (root in _LIBRARY_MODULES or root in sys.stdlib_module_names
            or "site-packages" in (getattr(module, "__file__", None) or ""))


# packages whose objects' state is not the user's model (SciPy's objects, an
# interpolator's data, are read), and those whose modules' attributes are not either
_LIBRARY_TYPES = ("numpy", "gradc", "numba", "builtins", "functools", "collections",
                  "cupy", "torch", "jax", "sympy", "networkx")
_LIBRARY_MODULES = _LIBRARY_TYPES + ("scipy",)


def _is_library(t) -> bool:
    """Whether ``t`` is NumPy's, gradc's, Numba's or the standard library's (objects
    whose state is not the user's model)."""
    root = (getattr(t, "__module__", None) or "").split(".")[0]
    return root in _LIBRARY_TYPES


def _read_now(holder, name):
    """What ``holder`` holds at ``name`` now (see ``_reads``; an array's content for the
    fast path's ``_CONTENT`` reads)."""
    if name is None:
        return holder.cell_contents
    if name is _LENGTH:
        return len(holder)
    if name is _CONTENT:
        return _content(holder)
    if isinstance(holder, (dict, types.MappingProxyType)):    # (a class's attributes)
        return holder.get(name, _MISSING)
    return holder[name] if name < len(holder) else _MISSING


def _is_gradc(glob) -> bool:
    name = glob.get("__name__", "")
    return name == "gradc" or name.startswith("gradc.")


@functools.lru_cache(maxsize=1024)
def _global_names(code) -> tuple:
    """The global names ``code`` loads (``LOAD_GLOBAL``: not attribute names such as the
    ``sin`` of ``np.sin``), each with the attribute names loaded right after it
    (``config.SCALE``: ``("config", ("SCALE",))``; ``_reads`` reads those where the
    global is a user's module), with those of the lambdas and comprehensions inside."""
    import dis
    found: dict = {}
    last = None
    for i in dis.get_instructions(code):
        if last is not None and i.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            found[last].add(i.argval)
        last = i.argval if i.opname in ("LOAD_GLOBAL", "LOAD_NAME") else None
        if last is not None:
            found.setdefault(last, set())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            for k, attrs in _global_names(const):
                found.setdefault(k, set()).update(attrs)
    return tuple((k, tuple(sorted(found[k]))) for k in sorted(found))


def _fingerprint(fun, cache=None):
    """The part of the cache key for what ``fun`` reads (``_reads``): arrays by content
    (a hash of their bytes), scalars by value, other objects by identity, so rebinding
    or mutating a closed-over array re-traces instead of reusing a stale derivative.
    Reads that tracing ``fun`` changed (``cache.volatile``) are left out."""
    skip = cache.volatile if cache is not None else ()
    return tuple(("fn", id(v)) if callable(v) and hasattr(v, "__code__") else
                 ("missing",) if v is _MISSING else _value_key(v)
                 for h, n, v in _reads(fun) if not skip or not _skipped(h, n, skip))


def _skipped(holder, name, skip) -> bool:
    return (id(holder), _ANY) in skip or (id(holder), name) in skip


def _read_unchanged(holder, name, value) -> bool:
    now = _read_now(holder, name)
    return now is value or name is _LENGTH and now == value


def _reads_unchanged(reads) -> bool:
    """Whether everything in ``reads`` is still the same object, and each array holds
    what it held (the fast path's check: lengths and contents compare by value)."""
    for holder, name, value in reads:       # (cells and dicts inline: this is per call)
        now = holder.cell_contents if name is None else holder.get(name, _MISSING) \
            if type(holder) is dict else _read_now(holder, name)
        if now is not value and (name is not _LENGTH and name is not _CONTENT
                                 or now != value):
            return False
    return True


def _content(v: np.ndarray):
    """What an array holds, compared by ``==`` per call on the fast path: its shape,
    dtype and bytes (a digest, ``_digest``, from ``DIGEST_KERNEL_BYTES`` on).  A copy of
    the bytes compares in ~0.2 µs for a small array, a fifth of a blake2b digest."""
    if type(v) is not np.ndarray or v.dtype == object:   # (as the key has it: a masked
        return _value_key(v)            # array's tobytes fills what its mask hides)
    if v.nbytes < DIGEST_KERNEL_BYTES:
        return v.shape, v.dtype.str, v.tobytes()
    return v.shape, v.dtype.str, _digest(v)


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


DIGEST_KERNEL_BYTES = 1 << 14     # larger arrays are digested by kernels.digest_words


def _digest(v: np.ndarray):
    """The content of ``v`` for a cache key: blake2b for small arrays, a compiled
    128-bit mix for large ones (blake2b runs at ~0.8 GB/s: 0.4 ms per call for W7's four
    closed-over matrices)."""
    data = np.ascontiguousarray(v).view(np.uint8).reshape(-1)
    if data.size < DIGEST_KERNEL_BYTES:
        return hashlib.blake2b(data.data, digest_size=16).digest()
    from .codegen.kernels import digest_words
    n = data.size - data.size % 8
    head = digest_words(data[:n].view(np.uint64))
    return (int(head[0]), int(head[1]), bytes(data[n:]))


def _value_key(v):
    if isinstance(v, np.ma.MaskedArray):        # (the data under the mask, and the mask)
        return ("ma", v.shape, v.dtype.str, _digest(v.data),
                _digest(np.ma.getmaskarray(v)))
    if isinstance(v, np.ndarray) and v.dtype == object:  # (its items', up to MAX_ITEMS)
        return ("ob", v.shape, tuple([_value_key(x) for x in v.flat])) \
            if v.size <= MAX_ITEMS else ("id", id(v))
    if isinstance(v, np.ndarray):
        return ("nd", v.shape, v.dtype.str, _digest(v))
    if isinstance(v, (int, float, complex, str, bool, bytes, type(None), np.generic)):
        return ("val", type(v), v)
    if isinstance(v, Tracer):
        return ("tracer", id(v))
    return ("id", id(v))


def _build_grad(fun, flat: _Args, kwargs, wrt, has_aux, target="numpy",
                fastmath=False, with_value=True) -> _Spec:
    """The derived graph of (value, aux..., gradients...); without ``with_value`` the
    value is left out (and whatever only it needed is dropped by DCE)."""
    graph, info, captured = _trace(fun, flat, kwargs, has_aux)
    n_out = info["n_out"]
    if n_out != 1 or graph.outputs[0].shape != () or not is_float(graph.outputs[0].dtype):
        got = ", ".join(type_str(o.shape, o.dtype) for o in graph.outputs[:n_out]) or "nothing"
        raise NonScalarOutputError(with_location(
            f"grad requires {_fun_name(fun)}{_fun_location(fun)} to return a floating-point "
            f"scalar (shape ()), but it returned {got}. Reduce it to a scalar (e.g. np.sum), "
            "or use gradc.vjp / gradc.jvp for non-scalar outputs"))
    n_aux = len(graph.outputs) - n_out
    wrt_full = list(wrt) + [False] * len(captured)
    primal, linear = linearize_graph(graph, wrt_full)
    n_outs = len(graph.outputs)
    n_res = len(primal.outputs) - n_outs

    def grad_fn(*xs):
        outs_res = eval_graph(primal, list(xs))
        outs, res = outs_res[:n_outs], outs_res[n_outs:]
        one = np.ones((), dtype=graph.outputs[0].dtype)
        cts = backward_pass(linear, res, [one] + [None] * n_aux)
        wrt_vars = [v for v, w in zip(graph.inputs, wrt_full) if w]
        return outs[0 if with_value else 1:] + [ops.full(v.shape, 0, v.dtype) if c is None
                                               else c for v, c in zip(wrt_vars, cts)]

    del n_res
    avals = [(v.shape, v.dtype) for v in graph.inputs]
    derived, _, inner = trace_graph(grad_fn, avals)
    assert not inner
    info = dict(info, n_aux=n_aux, primal=graph, with_value=with_value)
    return _Spec(simplify(derived), info, captured, target, fastmath, _code_name(fun, "grad"))


def grad(fun=None, argnums=0, has_aux=False, *, target=None, fastmath=False):
    """The gradient of a scalar function (JAX's ``grad``); also usable as a decorator.

    >>> gradc.grad(lambda x: np.sum(x ** 2))(np.array([1.0, 2.0]))
    array([2., 4.])

    Options as for ``value_and_grad``.  The result also shows what it runs:
    ``.graph(*args)``, ``.source(*args)``, ``.llvm(*args)``, ``.asm(*args)``.
    """
    if fun is None:
        return functools.partial(grad, argnums=argnums, has_aux=has_aux, target=target,
                                 fastmath=fastmath)
    return Grad(fun, argnums, has_aux, target=target, fastmath=fastmath)


# ---------------------------------------------------------------- jvp

_JVP_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cache_for(table, fun) -> _Cache:
    """The cache of ``fun`` in ``table`` (a WeakKeyDictionary); a fresh one, not kept,
    for a function that cannot be weakly referenced."""
    try:
        return table.setdefault(fun, _Cache(fun))
    except TypeError:
        return _Cache(fun)


def _tangent_leaves(flat: "_Args", tangents, what) -> list:
    """The tangents of ``flat``'s dynamic leaves, checked against their primals (same
    structure, shapes and floating-point dtypes, ``_tangent_like``)."""
    tflat, ttree = pytree.flatten(list(tangents))
    if ttree != flat.treedef:
        raise ArgumentError(with_location(
            f"{what}: tangents have structure {ttree}, primals have {flat.treedef}"))
    tdyn = []
    for k, (p, t, s) in enumerate(zip(flat.leaves, tflat, flat.static)):
        where = _leaf_place(flat, k)
        if not s and tuple(np.shape(t)) != tuple(np.shape(p)):
            raise ArgumentError(with_location(
                f"{what}: a tangent of shape {np.shape(t)} for a primal of shape "
                f"{np.shape(p)} ({where})"))
        _check_integer_tangent(p, t, what, where)
        if s:
            continue
        tdyn.append(_tangent_like(t, _leaf_dtype(p), what, f"the tangent of {where}",
                                  "its primal"))
    return tdyn


def _leaf_place(flat: "_Args", k) -> str:
    """'argument 1' or 'a leaf of argument 1' for ``flat``'s leaf ``k``."""
    i = flat.leaf_owner[k]
    return f"{'' if flat.treedef.children[i].kind == 'leaf' else 'a leaf of '}argument {i}"


def _check_integer_tangent(p, t, what, where):
    """An integer or bool primal has no derivative; its tangent is not read, so it must
    be zeros (JAX asks for its ``float0`` zeros).  A nonzero one is an error: silently
    dropped, it made ``jvp(f, (np.arange(3),), (v,))`` (an integer ``x`` by mistake)
    return a zero derivative."""
    if isinstance(p, Tracer) or isinstance(t, Tracer) or t is None:
        return
    kind = p.dtype.kind if isinstance(p, (np.ndarray, np.generic)) else \
        "b" if isinstance(p, bool) else "i" if isinstance(p, numbers.Integral) else None
    if kind not in ("b", "i", "u"):
        return
    try:
        tangent = np.asarray(t)
    except Exception:
        return
    if tangent.dtype.kind in "biufc" and bool(np.any(tangent != 0)):
        raise TangentDTypeError(with_location(
            f"{what}: the tangent of {where} is nonzero, but its primal is "
            f"{'a bool' if kind == 'b' else 'an integer'} ({_dtype_or_type(p)}), which has no "
            "derivative: its tangent is not read (JAX asks for float0 zeros). Pass zeros "
            "as its tangent, or make the primal a float (np.asarray(x, dtype=float)) to "
            "differentiate with respect to it"))


def _dtype_or_type(x) -> str:
    """'int64' for an array or NumPy scalar, 'Python int' for a Python number."""
    if isinstance(x, (np.ndarray, np.generic)):
        return str(x.dtype)
    return f"Python {type(x).__name__}"


def _tangent_like(t, dtype, what, name, of="its primal"):
    """``t`` as the tangent (or cotangent) of a value of ``dtype``: a Python float or int
    (weakly typed, as JAX's) or an integer array is converted to ``dtype``; an array of
    another floating-point dtype, or of bools, is an error, not cast (float64 to float32
    loses precision by mistake; float32 to float64 hides a float32 computation).  The
    tangent of a non-float value is not read, and is taken as it is."""
    if not is_float(dtype):
        return t if isinstance(t, Tracer) else np.asarray(t)
    if isinstance(t, numbers.Number) and not isinstance(t, (np.generic, bool)) and \
            not isinstance(t, complex):
        return np.asarray(t, dtype=dtype)
    td = np.dtype(t.dtype) if isinstance(t, Tracer) else _leaf_dtype(t)
    if td == dtype:
        return t if isinstance(t, Tracer) else np.asarray(t)
    if td.kind in "iu":
        return t.astype(dtype) if isinstance(t, Tracer) else np.asarray(t, dtype=dtype)
    raise TangentDTypeError(with_location(
        f"{what}: {name} has dtype {td}, {of} {np.dtype(dtype)}: gradc does not cast "
        f"{'tangents' if 'cotangent' not in name else 'cotangents'} between "
        f"floating-point dtypes (JAX refuses them too). Pass "
        f"{'it' if td.kind != 'b' else 'a float array'} as "
        f"{np.dtype(dtype)} (x.astype(np.{np.dtype(dtype).name}))"))


def jvp(fun, primals, tangents, has_aux=False, *, target=None, fastmath=False):
    """Forward mode: ``(f(*primals), J·tangents)`` (JAX's ``jvp``).

    ``primals`` and ``tangents`` are tuples of arguments with the same structure,
    shapes and dtypes.  Integer and bool arguments have no derivative: their tangents
    are not read and must be zeros, of any dtype (JAX asks for ``float0``); a nonzero
    one is a ``TangentDTypeError``.  A Python number or an integer array is taken as the
    tangent of a float primal (converted to its dtype); a float tangent of another
    dtype is a ``TangentDTypeError``, not cast.
    The forward graph is cached per function and argument signature and runs on
    ``target``.
    """
    target = check_target(target)
    fkey = None
    if type(primals) is tuple and type(tangents) is tuple:
        fkey = (_fast_key(primals), _fast_key(tangents), has_aux, target, bool(fastmath))
        run = _JVP_FAST.get(fun, fkey)
        if run is not None:
            try:
                return run(primals, tangents)
            except GuardFailure:
                pass
    check_function(fun, "gradc.jvp: the function")
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise ArgumentError(with_location(
            "jvp(f, primals, tangents): primals and tangents must be tuples of arguments"))
    flat = _Args(primals)
    tdyn = _tangent_leaves(flat, tangents, "jvp")
    wrt = [is_float(x.dtype) for x in flat.dynamic]
    cache = _cache_for(_JVP_CACHE, fun)
    key = (flat.key(), has_aux, target, bool(fastmath), _fingerprint(fun, cache))

    def build():
        graph, info, captured = _trace(fun, flat, {}, has_aux)
        jg = simplify(jvp_graph(graph, wrt + [False] * len(captured)))
        return _Spec(jg, dict(info, primal=graph), captured, target, fastmath,
                     _code_name(fun, "jvp"))

    # the jvp graph takes (primals..., captured..., tangents...)
    tangent_args = [t for t, w in zip(tdyn, wrt) if w]
    # (arguments the fast path takes: float arrays and Python floats, each tangent of
    # its primal's type, dtype and shape, so that no conversion or check is left to do)
    fast = fkey is not None and None not in fkey[:2] and all(
        type(t) is type(p) and (type(p) is float or type(p) is np.ndarray and
                                p.dtype.kind == "f" and t.dtype == p.dtype)
        for p, t in zip(primals, tangents))
    arrays = _arrays_read(fun) if fast else ()
    spec, results = cache.run(key, build, flat.dynamic, tangent_args)
    out = _jvp_results(spec, results, has_aux)
    if fast and not _changed(arrays) and \
            (found := _fast_reads(fun, cache, spec)) is not None:
        reads, exe = found

        def run(primals, tangents):
            return _jvp_results(spec, exe(list(primals) + list(tangents)), has_aux)
        _JVP_FAST.put(fun, fkey, reads, run)
    return out


_JVP_FAST = _FastTable()


def _jvp_results(spec, results, has_aux):
    """jvp's ``(primal out, tangent out[, aux])`` from its graph's results."""
    n = len(spec.graph.outputs) // 2
    outs, touts = results[:n], results[n:]
    info = spec.info
    n_out = info["n_out"]
    primal_out = pytree.unflatten(info["treedef"], [_to_user(o) for o in outs[:n_out]])
    tangent_out = pytree.unflatten(info["treedef"], [_to_user(o) for o in touts[:n_out]])
    if has_aux:
        aux = pytree.unflatten(info["aux_treedef"], [_to_user(o) for o in outs[n_out:]])
        return primal_out, tangent_out, aux
    return primal_out, tangent_out


# ---------------------------------------------------------------- vjp

_VJP_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _VjpSpec:
    """The two halves of reverse mode for one signature: the primal graph extended with
    the residuals (``forward``), and the transposed linear graph (``backward``, built at
    the first cotangent), each run on the target like any derived graph."""

    def __init__(self, graph, info, captured, target, fastmath, name):
        self.graph = graph
        self.info = info
        self.captured = list(captured)
        self.cacheable = not captured
        wrt = info["wrt"] + [False] * len(captured)
        primal, self.linear = linearize_graph(graph, wrt)
        self.n_res = len(primal.outputs) - len(graph.outputs)
        self.forward = _Spec(primal, info, (), target, fastmath, name + "_fwd")
        self.target, self.fastmath, self.name = target, fastmath, name
        self._backward = self._tangent = None

    def evaluate(self, dynamic, extra=()):
        return self.forward.evaluate(list(dynamic) + self.captured)

    @property
    def backward(self) -> _Spec:
        if self._backward is None:
            n_aux = len(self.graph.outputs) - self.info["n_out"]
            back = simplify(_transpose_with_aux(self.linear, self.n_res, n_aux))
            self._backward = _Spec(back, self.info, (), self.target, self.fastmath,
                                   self.name + "_bwd")
        return self._backward

    @property
    def tangent(self) -> _Spec:
        """The linear graph itself (``linearize``): residuals and input tangents to the
        main outputs' tangents."""
        if self._tangent is None:
            linear = self.linear.replace(outputs=self.linear.outputs[:self.info["n_out"]])
            self._tangent = _Spec(simplify(linear), self.info, (), self.target,
                                  self.fastmath, self.name + "_lin")
        return self._tangent


def vjp(fun, *primals, has_aux=False, target=None, fastmath=False):
    """Reverse mode: ``(f(*primals), vjp_fn)`` where ``vjp_fn(ct)`` returns a tuple with
    one cotangent per primal argument (JAX's ``vjp``).  Both halves are cached per
    function and argument signature and run on ``target``.  The cotangent of an integer
    or bool output must be zeros, of any dtype (JAX's are of dtype ``float0``)."""
    flat, wrt, spec, res, out_tree, aux = _forward_pass(fun, primals, has_aux, target,
                                                        fastmath, "vjp")
    graph, info = spec.graph, spec.info
    fast = []               # (the direct call, once the general path has compiled it)

    def vjp_fn(*ct):
        if fast and len(ct) == 1:
            c = ct[0]
            if type(c) is np.ndarray and c.dtype == fast[1] and c.shape == fast[2]:
                return fast[0](c)
        if len(ct) != 1:
            raise ArgumentError(with_location(
                f"vjp_fn takes one cotangent, shaped like the output ({info['treedef']}; a "
                f"tuple for several outputs), got {len(ct)} arguments"))
        cts, tree = pytree.flatten(ct[0])
        if tree != info["treedef"]:
            raise ArgumentError(with_location(
                f"vjp_fn: cotangent has structure {tree}, the output has {info['treedef']}"))
        many = len(cts) > 1
        for j, (c, o) in enumerate(zip(cts, graph.outputs)):
            if tuple(np.shape(c)) != tuple(o.shape):
                raise ArgumentError(with_location(
                    f"vjp_fn: a cotangent of shape {np.shape(c)} for an output of type "
                    f"{type_str(o.shape, o.dtype)}"))
        cts = [_tangent_like(c, o.dtype, "vjp_fn", f"the cotangent of output "
                             f"{'leaf ' if many else ''}{j}", "the output")
               if is_float(o.dtype) else
               _zero_cotangent(c, o, f"the cotangent of output {'leaf ' if many else ''}{j}")
               for j, (c, o) in enumerate(zip(cts, graph.outputs))]
        in_cts = iter(spec.backward.evaluate(list(res) + cts))
        leaves = []
        dyn = iter(zip(flat.pyfloat, wrt))
        for static in flat.static:
            if static:
                leaves.append(None)
                continue
            pyf, w = next(dyn)
            leaves.append(_to_user(next(in_cts), pyfloat=pyf) if w else None)
        if not fast:
            fast.extend(_vjp_direct(spec, flat, wrt, res, info))
        return tuple(pytree.unflatten(flat.treedef, leaves))

    return (out_tree, vjp_fn, aux) if has_aux else (out_tree, vjp_fn)


def _vjp_direct(spec, flat, wrt, res, info) -> tuple:
    """``(call, dtype, shape)``: ``vjp_fn``'s path for a NumPy array of the output's
    dtype and shape, where the function has one floating-point output and ``_direct``
    allows: the compiled function called directly (8-10 µs a call less than the
    checks, the Executable and the output conversions on the way); else ``()``."""
    out = spec.graph.outputs[0]
    call = _direct(spec.backward, flat, wrt, res)
    if call is None or info["treedef"].kind != "leaf" or not is_float(out.dtype):
        return ()
    head, tail = list(res), list(spec.backward.captured)
    return (lambda c: tuple(call(*head, c, *tail)), np.dtype(out.dtype), tuple(out.shape))


def _zero_cotangent(c, out, name):
    """The cotangent of an integer or bool output (no derivative): zeros, of any dtype
    (JAX wants zeros of its dtype float0; NumPy has none: a structured ``V`` array such
    as JAX's float0 is taken too), as zeros of the output's dtype.  Anything else is a
    ``TangentDTypeError``, not cast (``2.5`` was silently 2; NaN a bare ValueError).  A
    traced cotangent (vjp_fn inside a transformation) is not read."""
    if isinstance(c, Tracer):
        return c
    a = np.asarray(c) if not isinstance(c, np.ndarray) else c
    if a.dtype.kind == "V" or a.dtype.kind in "biufc" and not np.any(a):
        return np.zeros(tuple(out.shape), out.dtype)
    kind = f"a nonzero {a.dtype}" if a.dtype.kind in "biufc" else f"a {a.dtype}"
    raise TangentDTypeError(with_location(
        f"vjp_fn: {name} is {kind} cotangent, for an output of type "
        f"{type_str(out.shape, out.dtype)}, which has no derivative: its cotangent must "
        f"be zeros (np.zeros_like of the output; JAX wants zeros of dtype float0)"))


def _forward_pass(fun, primals, has_aux, target, fastmath, what):
    """Reverse mode's first half, shared by ``vjp`` and ``linearize`` (one cache entry):
    ``(flat args, wrt, spec, residuals, output tree, aux tree or None)``."""
    target = check_target(target)
    fkey = (_fast_key(primals), has_aux, target, bool(fastmath))
    entry = _FORWARD_FAST.get(fun, fkey) if fkey[0] is not None else None
    if entry is not None:
        flat, wrt, spec, exe, dyn = entry             # (flat: the arguments' structure)
        try:
            return (flat, wrt, spec) + _forward_results(
                spec, exe([primals[i] for i in dyn]), has_aux)
        except GuardFailure:
            pass
    check_function(fun, f"gradc.{what}: the function")
    flat = _Args(primals)
    wrt = [is_float(x.dtype) for x in flat.dynamic]
    cache = _cache_for(_VJP_CACHE, fun)
    key = (flat.key(), has_aux, target, bool(fastmath), _fingerprint(fun, cache))

    def build():
        graph, info, captured = _trace(fun, flat, {}, has_aux)
        return _VjpSpec(graph, dict(info, wrt=wrt, primal=graph), captured, target,
                        fastmath, _code_name(fun, "vjp"))

    fast = fkey[0] is not None and type(primals) is tuple
    arrays = _arrays_read(fun) if fast else ()
    spec, outs_res = cache.run(key, build, flat.dynamic)
    out = (flat, wrt, spec) + _forward_results(spec, outs_res, has_aux)
    if fast and spec.cacheable and not _changed(arrays) and \
            (found := _fast_reads(fun, cache, spec.forward)) is not None:
        # (what ``vjp_fn`` and ``f_jvp`` read of ``flat`` is its structure, the same for
        # every call of this key)
        dyn = [i for i, a in enumerate(primals) if type(a) not in (int, bool)]
        _FORWARD_FAST.put(fun, fkey, found[0], (_structure(flat), wrt, spec, found[1], dyn))
    return out


_FORWARD_FAST = _FastTable()


def _structure(flat: _Args) -> _Args:
    """``flat`` with each array leaf replaced by a stand-in of its shape and dtype that
    holds no memory (a broadcast zero): what a fast-path entry keeps of the call that
    made it, without keeping the caller's arrays alive."""
    out = copy.copy(flat)

    def standin(x):
        if type(x) is np.ndarray:
            return np.broadcast_to(np.zeros((), x.dtype), x.shape)
        return x
    out.leaves = [standin(x) for x in flat.leaves]
    out.dynamic = [standin(x) for x in flat.dynamic]
    return out


def _forward_results(spec, outs_res, has_aux):
    """``(residuals, output tree, aux tree or None)`` from the forward graph's results."""
    info, n_outs = spec.info, len(spec.graph.outputs)
    outs, res = outs_res[:n_outs], outs_res[n_outs:]
    n_out = info["n_out"]
    out_tree = pytree.unflatten(info["treedef"], [_to_user(o) for o in outs[:n_out]])
    aux = pytree.unflatten(info["aux_treedef"], [_to_user(o) for o in outs[n_out:]]) \
        if has_aux else None
    return res, out_tree, aux


def linearize(fun, *primals, has_aux=False, target=None, fastmath=False):
    """``(f(*primals), f_jvp)`` where ``f_jvp(*tangents)`` is the JVP at ``primals``
    (JAX's ``linearize``), taking one tangent per primal argument.  The primal work and
    the values the tangent map reads (residuals) are computed once, here; each call of
    ``f_jvp`` runs only the linear part, compiled for ``target``.  It shares its trace and
    forward pass with ``vjp``."""
    flat, wrt, spec, res, out_tree, aux = _forward_pass(fun, primals, has_aux, target,
                                                        fastmath, "linearize")
    info = spec.info
    fast = []               # (the direct call, once the general path has compiled it)

    def f_jvp(*tangents):
        if fast and len(tangents) == len(fast[1]) and all(
                type(t) is np.ndarray and t.dtype == d and t.shape == shape
                for t, (d, shape) in zip(tangents, fast[1])):
            return fast[0](tangents)
        tdyn = _tangent_leaves(flat, tangents, "linearize's f_jvp")
        touts = spec.tangent.evaluate(list(res) + [t for t, w in zip(tdyn, wrt) if w])
        if not fast:
            fast.extend(_linear_direct(spec, flat, wrt, res))
        return pytree.unflatten(info["treedef"], [_to_user(t) for t in touts])

    return (out_tree, f_jvp, aux) if has_aux else (out_tree, f_jvp)


def _direct(linear, flat, wrt, res):
    """The compiled function of ``linear`` (a tangent or backward pass) to call directly
    with NumPy arrays, where every argument is an array differentiated (``wrt``), the
    residuals and captured values are NumPy arrays and the code is compiled for the CPU
    with no scalar operands or results; else None."""
    exe = linear.executable
    td = flat.treedef
    if (not all(wrt) or any(flat.static) or any(flat.pyfloat)
            or not all(type(r) is np.ndarray for r in res)
            or not all(type(v) is np.ndarray for v in linear.captured)
            or exe.target not in ("cpu", "parallel") or exe._fallback
            or any(exe._scalar) or exe._scalar_out
            or td.kind != "list" or not all(c.kind == "leaf" for c in td.children)):
        return None
    return exe.compiled.fast_callable()


def _linear_direct(spec, flat, wrt, res) -> tuple:
    """``(call, [(dtype, shape) of each tangent])``: ``f_jvp``'s path for NumPy tangents
    of their primals' dtypes and shapes, where the function has one output and
    ``_direct`` allows (6-8 µs a call less than the checks and conversions); else
    ``()``."""
    call = _direct(spec.tangent, flat, wrt, res)
    if call is None or spec.info["treedef"].kind != "leaf":
        return ()
    head, tail = list(res), list(spec.tangent.captured)
    kinds = [(np.dtype(v.dtype), tuple(v.shape)) for v in flat.dynamic]
    return (lambda ts: call(*head, *ts, *tail)[0], kinds)


def _transpose_with_aux(linear, n_res, n_aux):
    """The transposed linear graph, taking cotangents for the main outputs only."""
    if n_aux:
        linear = linear.replace(outputs=linear.outputs[:len(linear.outputs) - n_aux])
    return transpose_graph(linear, n_res)


# ---------------------------------------------------------------- graphs, stop_gradient

def make_graph(fun):
    """``make_graph(f)(*args, **kwargs)`` returns the traced primal Graph of ``f``.

    Its inputs are the floating-point and array leaves of the arguments, in order
    (keyword arguments last, by name); Python ints and bools are static and baked in."""
    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        call, all_args, _ = _positional(fun, args, kwargs)
        graph, _, _ = _trace(call, _Args(all_args), {})
        return graph
    return wrapper


def stop_gradient(x):
    """The identity on a pytree, with a zero derivative (JAX's ``lax.stop_gradient``)."""
    from .ops import stop_gradient as _sg
    return pytree.tree_map(_sg, x)


def asarray(a, dtype=None):
    """``a`` as an array that traced integers can index (JAX's ``jnp.asarray``).

    A NumPy constant indexed by a traced integer, ``table[i]`` in a ``fori_loop``'s body,
    never reaches gradc: NumPy converts the index with ``np.asarray`` (a
    ``ConcretizationError``).  ``gradc.asarray(table)[i]`` first makes the constant a
    traced value of the function being traced, which gathers from it.  A traced ``a``
    is returned as it is (converted to ``dtype``), a list of traced values stacked;
    outside any trace the result is ``np.asarray(a, dtype)``."""
    from .numpy_api import operand
    from .trace import constant_traced
    x = operand(a)
    if isinstance(x, Tracer):
        return x if dtype is None or np.dtype(dtype) == x.dtype else x.astype(dtype)
    return constant_traced(np.asarray(x, dtype))


__all__ = ["grad", "value_and_grad", "jvp", "vjp", "linearize", "jit", "make_graph",
           "stop_gradient", "asarray", "GradcError", "dtype_name"]


# ---------------------------------------------------------------- vmap

def _is_axis(a) -> bool:
    return a is None or isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def _prefix_axes(tree, spec, where: str, what: str) -> list:
    """One axis (an int or None) per leaf of ``tree`` from ``spec``, a pytree prefix of
    it (JAX's ``in_axes``/``out_axes``): an int or None covers a whole subtree; a tuple,
    list or dict follows the tree's own containers."""
    if _is_axis(spec):
        return [None if spec is None else int(spec)] * len(pytree.flatten(tree)[0])
    if isinstance(spec, dict) and isinstance(tree, dict) and set(spec) == set(tree):
        return [a for k in sorted(tree)
                for a in _prefix_axes(tree[k], spec[k], f"{where}[{k!r}]", what)]
    if isinstance(spec, (tuple, list)) and isinstance(tree, (tuple, list)) and \
            not isinstance(spec, dict) and len(spec) == len(tree):
        return [a for i, (t, sp) in enumerate(zip(tree, spec))
                for a in _prefix_axes(t, sp, f"{where}[{i}]", what)]
    kind = type(tree).__name__ if isinstance(tree, (tuple, list, dict)) else "an array"
    raise ArgumentError(with_location(
        f"vmap: {what} for {where} is {spec!r}, which does not fit it ({kind}"
        + (f" of {len(tree)} items" if isinstance(tree, (tuple, list, dict)) else "")
        + "): give an int, None, or the same structure with an int or None at each leaf"))


def _frozen(spec):
    """A hashable copy of an axes spec (for the cache key)."""
    if isinstance(spec, dict):
        return ("dict",) + tuple((k, _frozen(spec[k])) for k in sorted(spec))
    if isinstance(spec, (tuple, list)):
        return (type(spec).__name__,) + tuple(_frozen(a) for a in spec)
    return None if spec is None else int(spec)


class Batched(_FastPath, Transformed):
    """What ``vmap(f)`` returns: ``f`` over a batch of examples, as one Graph (the
    batching pass, ``passes.batching``), compiled like any other."""

    kind = "vmap"

    def __init__(self, fun, in_axes=0, out_axes=0, axis_size=None, **options):
        super().__init__(fun, **options)
        self.in_axes, self.out_axes, self.axis_size = in_axes, out_axes, axis_size

    def _remember(self, args, spec, state):
        """The fast path of calls whose arguments are mapped over their first axis or
        not at all (the arrays go to the compiled code as they are; ``_finish`` puts
        the results' axes): the general path's keying, tracing and axis checks cost
        ~0.1 ms a call, 20 times the compiled per-example gradient of 64 examples."""
        if (found := self._fast_entry(args, spec)) is None:
            return
        fkey, reads, exe = found
        try:
            axes = self._leaf_axes(args, len(args))
        except GradcError:
            return
        if len(axes) != len(args) or any(
                ax is not None and (type(a) is not np.ndarray or ax % a.ndim)
                for a, ax in zip(args, axes)):
            return                          # (pytrees, a moved axis: the general path)
        dyn = [i for i, a in enumerate(args) if type(a) not in (int, bool)]
        finish = self._finish

        def run(args):           # (the general path's conversions: a float as a 0-d array)
            return finish(spec, exe([args[i] if type(args[i]) is not float
                                     else np.asarray(args[i]) for i in dyn]), None)
        self._store(fkey, reads, run, exe)

    def _leaf_axes(self, args, n_positional) -> list:
        """The example axis of each leaf of ``args`` (an int or None): ``in_axes`` for
        the positional arguments, 0 for those passed by keyword (JAX's rule)."""
        axes = self.in_axes
        if _is_axis(axes):
            per_arg = [axes] * n_positional
        elif isinstance(axes, (tuple, list)):
            if len(axes) != n_positional:
                raise ArgumentError(with_location(
                    f"vmap: in_axes has {len(axes)} entries for {n_positional} arguments"))
            per_arg = list(axes)
        else:
            raise ArgumentError(with_location(
                f"vmap: in_axes is an int, None, or a tuple with one entry per argument "
                f"(each an int, None, or a pytree of them shaped like the argument), got "
                f"{axes!r}"))
        per_arg += [0] * (len(args) - n_positional)
        out = []
        for i, (a, spec) in enumerate(zip(args, per_arg)):
            leaf_axes = _prefix_axes(a, spec, f"argument {i}", "in_axes")
            if not _is_axis(axes) and i < n_positional:   # (an axis named for a Python
                # int has no axis there; keywords, mapped by JAX's rule, are not named)
                for leaf, ax in zip(pytree.flatten(a)[0], leaf_axes):
                    if ax is not None and _is_static(leaf):
                        raise ArgumentError(with_location(
                            f"vmap: in_axes maps argument {i} ({leaf!r}, a Python "
                            f"{type(leaf).__name__}) over axis {ax}, but it has no axes; "
                            "give None for it, or pass an array"))
            out += leaf_axes
        return out

    def _prepare(self, args, kwargs):
        call, all_args, names = _positional(self.fun, args, kwargs)
        flat = _Args(all_args)
        leaf_axes = [ax for ax, st in zip(self._leaf_axes(all_args, len(args)), flat.static)
                     if not st]
        moved, sizes = [], {}
        for i, (x, ax) in enumerate(zip(flat.dynamic, leaf_axes)):
            if ax is None:
                moved.append(x)
                continue
            ndim = len(np.shape(x))
            if not -ndim <= ax < ndim:
                raise ArgumentError(with_location(
                    f"vmap: argument {flat.owner[i]} of shape {tuple(np.shape(x))} has no "
                    f"axis {ax} to map over"))
            ax %= ndim
            sizes.setdefault(np.shape(x)[ax], []).append(flat.owner[i])
            if ax and is_device_array(x) and self.target == "cuda":
                from .codegen.cuda import moveaxis     # (a contiguous copy on the device:
                x = moveaxis(x, ax, 0)                 # its own transpose is a strided view)
            elif ax:
                x = np.moveaxis(_host_copy(x) if is_device_array(x) else x, ax, 0)
            moved.append(x)
        if self.axis_size is not None and (len(sizes) > 1 or sizes and
                                           self.axis_size not in sizes):
            sizes.setdefault(self.axis_size, []).append("axis_size")
        if len(sizes) > 1 or not sizes and self.axis_size is None:
            raise ArgumentError(with_location(
                "vmap: the mapped axes must have one size; got " + (", ".join(
                    f"{n} ({'axis_size' if o == ['axis_size'] else f'arguments {sorted(set(o))}'})"
                    for n, o in sizes.items())
                    or "no mapped argument (give axis_size)")))
        size = next(iter(sizes)) if sizes else int(self.axis_size)
        batched = [ax is not None for ax in leaf_axes]
        example = _Args(all_args)       # one example's leaves, for tracing
        # (a batch of none: traced at zeros of an example's shape, which no example
        # computes with)
        example.dynamic = [x if not b else x[0] if size or isinstance(x, Tracer) else
                           np.zeros(np.shape(x)[1:], np.asarray(x).dtype)
                           for x, b in zip(moved, batched)]
        key = (flat.key(), names, tuple(leaf_axes), _frozen(self.out_axes), size,
               _fingerprint(self.fun, self._cache))

        def build():
            from .trace import one_example
            with one_example():
                graph, info, captured = _trace(call, example, {})
            outs = pytree.unflatten(info["treedef"], list(graph.outputs[:info["n_out"]]))
            out_axes = _prefix_axes(outs, self.out_axes, "the result", "out_axes")
            from .passes.batching import batch_graph
            bg = simplify(batch_graph(graph, batched + [False] * len(captured), size,
                                      unbatched=[a is None for a in out_axes]))
            return _Spec(bg, dict(info, primal=graph, out_axes=out_axes), captured,
                         self.target, self.fastmath, _code_name(self.fun, "vmap"))
        return key, build, moved, None

    def _finish(self, spec, results, state):
        info = spec.info
        outs = [_to_user(r) for r in results[:info["n_out"]]]
        for i, (o, axis) in enumerate(zip(outs, info["out_axes"])):
            if not axis:                # (0, or None: the result of one example)
                continue
            shape = tuple(o.shape) if isinstance(o, Tracer) else np.shape(o)
            if not -len(shape) <= axis < len(shape):
                raise ArgumentError(with_location(
                    f"vmap: out_axes={axis}, but result {i} has shape "
                    f"{shape} (the mapped axis first): no such axis"))
            if isinstance(o, Tracer):
                outs[i] = ops.transpose(o, _moved_perm(len(o.shape), axis))
            elif is_device_array(o):
                from .codegen.cuda import moveaxis
                outs[i] = moveaxis(o, 0, axis)
            else:
                outs[i] = np.moveaxis(o, 0, axis)
        return pytree.unflatten(info["treedef"], outs)


def _moved_perm(ndim, axis) -> tuple:
    axis %= ndim
    rest = list(range(1, ndim))
    return tuple(rest[:axis] + [0] + rest[axis:])


def vmap(fun=None, in_axes=0, out_axes=0, *, axis_size=None, target=None, fastmath=False):
    """``f`` mapped over an axis of its arguments (JAX's ``vmap``).  ``in_axes`` is an int
    or None (every argument), or a tuple with one entry per positional argument, each an
    int, None (not mapped) or a pytree of them shaped like that argument (a prefix of
    it); arguments passed by keyword are mapped over axis 0.  ``out_axes`` (an int, None
    or a pytree prefix of the result) puts the example axis of each result; None returns
    a result that does not depend on the mapped arguments once.  ``axis_size`` is the
    number of examples when no argument is mapped.  Not a Python loop: the function is
    traced once, for one example, and the batching pass rewrites its Graph for the whole
    batch."""
    def check(spec):
        if _is_axis(spec):
            return
        if isinstance(spec, dict):
            return [check(a) for a in spec.values()]
        if isinstance(spec, (tuple, list)):
            return [check(a) for a in spec]
        raise ArgumentError(with_location(
            f"vmap: out_axes is an int, None, or a pytree of them shaped like the result, "
            f"got {out_axes!r}"))
    check(out_axes)
    if axis_size is not None and (not _is_axis(axis_size) or axis_size < 0):
        raise ArgumentError(with_location(
            f"vmap: axis_size is a number of examples (an int >= 0), got {axis_size!r}"))
    if fun is None:
        return functools.partial(vmap, in_axes=in_axes, out_axes=out_axes,
                                 axis_size=axis_size, target=target, fastmath=fastmath)
    return Batched(fun, in_axes, out_axes, axis_size, target=target, fastmath=fastmath)
