"""Concrete tracing: Tracer objects stand in for arrays and record a Graph.

A ``Trace`` collects equations.  Traces nest (``grad(grad(f))``, or a pass that
re-traces a graph while its rules call gradc operations); the innermost active
trace records.  A Tracer of an enclosing trace used inside an inner one is
*captured*: it becomes an extra input of the inner graph, so the inner graph stays
closed and the outer trace can later differentiate through it.

Tracers made from example arguments carry their concrete value (``val``), so Python
control flow on them works: ``bool(tracer)`` takes the branch the value dictates
and records a ``guard`` equation, which evaluation checks later.  Tracers made by
passes are abstract (``val is None``); branching on them is an error.

``bind`` is the single entry point that applies a primitive: with no Tracer among
its arguments it simply runs the NumPy implementation (constants fold at trace
time); otherwise it records an equation in the innermost trace.
"""
from __future__ import annotations

import copy

import contextlib
import contextvars
import itertools
import linecache
import re
import sys
import weakref

import numpy as np

from . import errors
from .errors import (ArgumentError, ConcretizationError, GradcError, TracerLeakError,
                     with_location)
from .ir import Graph, Lit, Primitive, Var, make_eqn, type_str

_MATH_TO_NUMPY = {"asin": "arcsin", "acos": "arccos", "atan": "arctan", "asinh": "arcsinh",
                  "acosh": "arccosh", "atanh": "arctanh", "atan2": "arctan2", "pow": "power",
                  "fabs": "abs", "radians": "deg2rad", "degrees": "rad2deg"}

_TRACES: list["Trace"] = []   # the stack of active traces, innermost last
_trace_ids = itertools.count()


class Trace:
    """A recording in progress: the equations of one Graph being built."""

    def __init__(self):
        self.id = next(_trace_ids)
        self.inputs: list[Var] = []
        self.eqns: list = []
        # id(outer Tracer) -> (outer Tracer, inner Var, the outer Tracer as captured)
        self.captures: dict = {}
        self.active = False
        self.concrete = False         # its inputs carry values (concrete tracing)

    # -- life cycle
    def __enter__(self) -> "Trace":
        self.active = True
        _TRACES.append(self)
        return self

    def __exit__(self, *exc) -> None:
        assert _TRACES and _TRACES[-1] is self, "traces must nest"
        _TRACES.pop()
        self.active = False

    # -- building
    def new_input(self, shape, dtype, value=None) -> "Tracer":
        var = Var(tuple(shape), np.dtype(dtype))
        self.inputs.append(var)
        return Tracer(var, value, self)

    def to_atom(self, x):
        """The operand for ``x`` in this trace: a Var, a captured Var, or a Lit."""
        if isinstance(x, Tracer):
            x = _standing_in(x)
            if x.owner is self:
                return x.ir_var
            if not x.owner.active:
                raise TracerLeakError(with_location(
                    "a traced value escaped the function that was being traced "
                    "(e.g. stored in a global or a closure) and is used after its trace "
                    "ended; pass it as an argument instead"))
            key = id(x)
            if key not in self.captures:
                self.captures[key] = (x, Var(x.ir_var.shape, x.ir_var.dtype), copy.copy(x))
            return self.captures[key][1]
        return Lit(np.asarray(x))

    def to_graph(self, outputs) -> tuple[Graph, list]:
        """Close the recording.  Returns the Graph and the captured outer Tracers,
        which are the Graph's trailing inputs."""
        outs = [self.to_atom(o) for o in outputs]
        # an outer Tracer written to after its capture (x = y.copy(); x[k] = v, y outer)
        # stands for a value of this trace now: the graph reads the value it captured
        captured = [t if t.ir_var is was.ir_var and t.owner is was.owner else was
                    for t, _, was in self.captures.values()]
        cap_vars = [v for _, v, _ in self.captures.values()]
        graph = Graph(tuple(self.inputs) + tuple(cap_vars), tuple(self.eqns), tuple(outs))
        return graph, captured


def current_trace() -> Trace | None:
    return _TRACES[-1] if _TRACES else None


class no_trace:
    """Run primitives on NumPy values without recording anything, even while a function
    is being traced (a loop's implementation running its body for the traced values)."""

    def __enter__(self):
        self.saved = _TRACES[:]
        _TRACES.clear()

    def __exit__(self, *exc):
        _TRACES[:] = self.saved


# what a ConcretizationError says of ``table[i] = traced`` into a NumPy array
STORE_HINT = ("storing a traced value into a NumPy array (an array made by np.zeros, "
              "np.empty, ... is a constant, not a traced array) would cut its derivative. "
              "Start from a traced array whose items can be assigned: "
              "z = np.zeros_like(x, shape=shape) (x any traced value; shape= is optional), "
              "or z = x.copy(); or collect the values in a list and combine them with "
              "np.stack/np.concatenate")


class Tracer:
    """Stands in for an array during tracing; reaches gradc through NumPy's protocols."""

    __slots__ = ("ir_var", "val", "owner", "view_of", "views", "read_only", "weak",
                 "array0d", "layout", "__weakref__")
    __array_priority__ = 1000

    def __init__(self, var: Var, val, trace: Trace):
        self.ir_var = var
        self.val = val
        self.owner = trace
        # (base Tracer, write_back, key, read) when this is a view of base (not named
        # ``view``: that is ndarray's method, x.view())
        self.view_of = None
        self.views = None    # weak references to the views made of this Tracer
        # (the NumPy function that made this a read-only view, why) or None
        self.read_only = None
        # weakly typed (NEP 50, JAX's weak types): a Python float argument, or arithmetic
        # of such values and Python numbers; it takes an array operand's dtype
        # (numpy_api.result_dtype), as the Python float would
        self.weak = False
        # a 0-d array made as one (np.copy, np.zeros_like, gradc.asarray), whose in-place
        # operators write into it; other 0-d values are NumPy's scalars (an element, a
        # sum, arithmetic of scalars), which ``s += v`` rebinds to a new value, leaving
        # the other names of the old one as they were (methods._inplace)
        self.array0d = False
        # a view's strides (in elements) in the buffer of the array it views, as NumPy's
        # (a negative step, a transpose, a broadcast's 0): whether a reshape or ravel of
        # it can be a view too, or NumPy copies (``reshape_strides``); None: C order
        self.layout = None

    def numpy_scalar(self) -> bool:
        """Whether this stands for a NumPy scalar (``np.float64``: an element, a sum,
        arithmetic of 0-d values), which is immutable: ``s += v`` rebinds, ``s[...] = v``
        is refused, ``s[...]`` is a new 0-d array.  Not a 0-d array (``array0d``, a 0-d
        argument, a view)."""
        return (len(self.ir_var.shape) == 0 and not self.array0d and self.view_of is None
                and not self.views)

    def fresh(self) -> "Tracer":
        """Another Tracer of this value, with none of this one's view relations or flags:
        a copy (NumPy returns a new array or scalar where this one would alias)."""
        return Tracer(self.ir_var, self.val, self.owner)

    def _rebind(self, new: "Tracer") -> None:
        self.ir_var, self.val, self.owner = new.ir_var, new.val, new.owner

    def assign(self, new: "Tracer", _written_by=None) -> None:
        """An in-place update: this Tracer now stands for ``new``.  As in NumPy, if it is a
        view of another Tracer (a basic slice, reshape or transpose of it), the write goes
        through to the base; and the views made of this Tracer earlier (still alive) see
        the write: each is read again from the new value (``_written_by``: the view the
        write came through, which holds it already).  A read-only view (``read_only``) is
        refused, as NumPy refuses it."""
        if self.read_only is not None:
            made_by, why = self.read_only
            raise errors.ReadOnlyError(with_location(
                f"assignment destination is read-only: the array is a view made by "
                f"{made_by}, {why}. Write into a copy instead: v = {made_by}(...).copy()"))
        self._rebind(new)
        if self.view_of is not None:
            base, write_back = self.view_of[:2]
            base.assign(write_back(self), _written_by=self)
        self._refresh_views(_written_by)

    def _refresh_views(self, skip=None) -> None:
        if not self.views:
            return
        live = []
        for ref in self.views:
            view = ref()
            if view is None or view.view_of is None or view.view_of[0] is not self:
                continue
            live.append(ref)
            if view is not skip:
                view._rebind(view.view_of[3](self))
                view._refresh_views()
        self.views = live

    def as_view_of(self, base: "Tracer", write_back, key=None, read=None) -> "Tracer":
        """Mark this Tracer as a view of ``base``: ``write_back(view)`` gives base's value
        with the view's current contents written into it (``key``: the index spec of a
        sliced view), ``read(base)`` the view's value from base's (after a write to
        base)."""
        if self is not base:
            self.view_of = (base, write_back, key, read)
            base.views = (base.views or []) + [weakref.ref(self)]
            self.read_only = base.read_only     # (a view of a read-only array is one too)
        return self

    def read_only_view_of(self, base: "Tracer", made_by: str, read,
                          why="which NumPy makes read-only") -> "Tracer":
        """A read-only view of ``base`` made by the NumPy function ``made_by`` (e.g.
        ``'np.broadcast_to'``), ``read(base)`` its value from base's: writes to it are
        refused (as NumPy's; ``why`` says so), writes to base reach it.  A new Tracer when
        this is base."""
        view = self.fresh() if self is base else self
        view.as_view_of(base, None, None, read)
        view.read_only = (made_by, why)
        return view

    # -- array attributes
    shape = property(lambda self: self.ir_var.shape)

    @shape.setter
    def shape(self, value):
        raise errors.UnsupportedAttributeError(with_location(
            f"x.shape = {value!r} reshapes the array in place, which gradc does not trace; "
            f"write x = x.reshape({value!r})"))
    dtype = property(lambda self: self.ir_var.dtype)
    ndim = property(lambda self: len(self.ir_var.shape))
    size = property(lambda self: int(np.prod(self.ir_var.shape, dtype=np.int64)))

    # (the errors of a 0-d array are TypeErrors, as NumPy's: ``try: iter(x)`` idioms
    # test for them)
    def __len__(self) -> int:
        if not self.shape:
            raise ArgumentError(with_location(
                "len() of unsized object: a 0-d traced array has no length (as in NumPy)"))
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise ArgumentError(with_location(
                "iteration over a 0-d traced array (as in NumPy, a 0-d array is not a "
                "sequence)"))
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        kind = "abstract" if self.val is None else "concrete"
        return f"Tracer<{type_str(self.shape, self.dtype)}, {kind}>"

    # -- the NumPy protocols; the tables live in numpy_api
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from . import numpy_api
        return numpy_api.dispatch_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from . import numpy_api
        return numpy_api.dispatch_function(func, args, kwargs)

    def __array__(self, dtype=None, copy=None):
        if not getattr(self.owner, "active", True):
            raise TracerLeakError(with_location(
                "a traced value was converted to a NumPy array after the function that "
                "made it returned (it escaped its trace: stored in a global, a list or a "
                "closure); return it from the function instead"))
        library = errors.library_call()
        if library is not None:
            instead = _GRADC_FOR.get(library, "NumPy functions gradc traces")
            raise ConcretizationError(with_location(
                f"{library} converts its arguments with np.asarray, which would cut the "
                f"derivative of a traced array; use {instead} instead, or wrap the "
                "argument in gradc.stop_gradient if no derivative is wanted"))
        if not np.issubdtype(self.dtype, np.inexact):
            raise ConcretizationError(with_location(
                "a traced integer or boolean array was converted to a NumPy array, e.g. to "
                "index a NumPy constant (table[i], np.take(table, i)): NumPy converts the "
                "index with np.asarray, which gradc cannot trace. Make the constant a traced "
                "array first: gradc.asarray(table)[i] (as jnp.asarray(table)[i] in JAX), "
                "or compare instead, e.g. a one-hot (i[:, None] == np.arange(K))"))
        frame = errors.user_frame()
        if frame is not None and errors.user_instruction(frame) == "STORE_SUBSCR":
            raise ConcretizationError(with_location(STORE_HINT))
        raise ConcretizationError(with_location(
            "a traced array was converted to a NumPy array (np.asarray/np.array, or "
            "storing it into a NumPy array), which would cut its derivative. Build arrays "
            "from traced values with np.stack/np.concatenate or functional updates, or "
            "wrap the value in gradc.stop_gradient if no derivative is wanted"))

    # -- concretisation is an error, not a silent constant
    def _concretize(self, what: str, spelling: str):
        if not getattr(self.owner, "active", True):
            raise TracerLeakError(with_location(
                f"{what.split(' (')[0]} on a traced value after the function that made it "
                "returned (it escaped its trace: stored in a global, a list or a closure); "
                "return it from the function instead"))
        frame = errors.user_frame()
        line = ""
        if frame is not None:
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
            if errors.user_instruction(frame) == "STORE_SUBSCR":
                raise ConcretizationError(with_location(STORE_HINT))
        math_call = re.search(r"\bmath\.(\w+)\s*\(", line)
        if math_call and what.startswith("float()"):
            name = math_call.group(1)
            np_name = _MATH_TO_NUMPY.get(name, name)
            suggestion = f"np.{np_name}" if hasattr(np, np_name) else "the NumPy function"
            raise ConcretizationError(with_location(
                f"math.{name} on a traced value converts it to a Python float, which would "
                f"cut its derivative. Use {suggestion} instead, or gradc.stop_gradient(x) if "
                "the value is meant to be a constant"))
        raise ConcretizationError(with_location(
            f"{what} on a traced value would cut its derivative. Use {spelling} instead, "
            f"or gradc.stop_gradient(x) if the value is meant to be a constant"))

    def __float__(self):
        self._concretize("float() (or a math.* function)", "NumPy operations (np.sin, ...) "
                         "on the array")

    def __int__(self):
        self._concretize("int()", "integer NumPy operations, or a static int argument")

    def __index__(self):
        self._concretize("using a traced value as a Python index", "array indexing with "
                         "integer arrays")

    def __complex__(self):
        self._concretize("complex()", "NumPy operations")

    def __format__(self, spec: str) -> str:
        if not spec:                # f"{x}" reads as print(x) does: the Tracer's repr
            return str(self)
        self._concretize(f"formatting (format spec {spec!r}, as in f\"{{x:{spec}}}\")",
                         "the value outside the traced function (return it, then format it)")

    def item(self, *args):
        self._concretize("x.item()", "the 0-d array itself")

    def tolist(self):
        self._concretize("x.tolist()", "the array itself")

    def __bool__(self):
        """Python control flow on a traced value: take the concrete branch, record a guard."""
        if self.size != 1:
            raise GradcError(with_location(
                f"the truth value of a traced array of shape {self.shape} is ambiguous; "
                "use np.any(...) or np.all(...)"))
        if self.val is None:
            raise ConcretizationError(with_location(
                "Python control flow (if/while/and/or) on an abstract traced value; "
                "use np.where or gradc's structured control flow"))
        outcome = bool(np.asarray(self.val).reshape(()))
        from .prims.control import guard
        guard(self, outcome)
        return outcome

    def __hash__(self):
        # (a TypeError, as NumPy's: callers that try hash(x) fall back to id(x))
        raise ArgumentError(with_location(
            "a traced array is unhashable (as NumPy arrays are), so it cannot be a dict key "
            "or a set member; key by a static value (an int or a string), or by id(x)"))

    def __getattr__(self, name):
        # only called for attributes Tracer lacks: name the ndarray ones plainly
        if not name.startswith("__") and hasattr(np.ndarray, name):
            raise errors.UnsupportedAttributeError(with_location(
                f"x.{name} is not supported on traced arrays (gradc traces pure, "
                "differentiable NumPy code); use an equivalent NumPy function or "
                "gradc.stop_gradient"))
        raise AttributeError(f"'Tracer' object has no attribute {name!r}")


# ---------------------------------------------------------------- memory layout of views
# NumPy makes x.reshape(s) and x.ravel() views when the strides allow it, else copies
# (x.T.ravel(), x[::-1].reshape(-1) of a 2-d x): a write to the copy does not reach x.


def c_strides(shape) -> tuple:
    """A C-ordered array's strides, in elements (an axis of length 0 counts as 1, as
    NumPy's)."""
    out, step = [], 1
    for d in reversed(tuple(shape)):
        out.append(step)
        step *= max(int(d), 1)
    return tuple(reversed(out))


def strides_of(x) -> tuple:
    """The strides of ``x``'s elements in its buffer (a fresh array's: C order)."""
    layout = getattr(x, "layout", None)
    return layout if layout is not None else c_strides(shape_of(x))


def c_contiguous(shape, strides) -> bool:
    """NumPy's C_CONTIGUOUS flag (axes of length 1 do not count; empty arrays are)."""
    if 0 in shape:
        return True
    step = 1
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1:
            if s != step:
                return False
            step *= d
    return True


def reshape_strides(shape, strides, new_shape):
    """The strides of ``reshape(new_shape)`` as a view, or None where NumPy copies
    (NumPy's ``_attempt_nocopy_reshape``, C order)."""
    shape, new_shape = tuple(shape), tuple(new_shape)
    if c_contiguous(shape, strides):
        return c_strides(new_shape)
    old = [(d, s) for d, s in zip(shape, strides) if d != 1]
    olddims, oldstrides = [d for d, _ in old], [s for _, s in old]
    new = [0] * len(new_shape)
    oi, oj, ni, nj = 0, 1, 0, 1
    while ni < len(new_shape) and oi < len(olddims):
        np_, op = new_shape[ni], olddims[oi]
        while np_ != op:
            if np_ < op:
                np_ *= new_shape[nj]
                nj += 1
            else:
                op *= olddims[oj]
                oj += 1
        for ok in range(oi, oj - 1):
            if oldstrides[ok] != olddims[ok + 1] * oldstrides[ok + 1]:
                return None
        new[nj - 1] = oldstrides[oj - 1]
        for nk in range(nj - 1, ni, -1):
            new[nk - 1] = new[nk] * new_shape[nk]
        ni, nj = nj, nj + 1
        oi, oj = oj, oj + 1
    last = new[ni - 1] if ni >= 1 else 1
    for nk in range(ni, len(new_shape)):
        new[nk] = last
    return tuple(new)


# operators, methods, indexing and in-place updates are installed by numpy_api


_STAND_INS: contextvars.ContextVar = contextvars.ContextVar("gradc_stand_ins", default=None)


def _standing_in(x):
    table = _STAND_INS.get()
    if not table:
        return x
    entry = table.get(id(x.ir_var))
    return x if entry is None else entry[1]


def stand_ins() -> list:
    """The ``(old, new)`` pairs in force (see ``standing_in``)."""
    table = _STAND_INS.get()
    return list(table.values()) if table else []


class standing_in:
    """Within the block, each Tracer of ``pairs`` ``(old, new)`` is read as ``new``: a
    rule traced after its call's trace ended reads the call's values (``old``, Tracers of
    that trace) as inputs of its own (``new``).  Keyed by the old value's Var, so a copy
    of an old Tracer is read as ``new`` too; the table holds the old Tracers, so no key
    is reused while it lives."""

    def __init__(self, pairs):
        self.pairs = [(old, new) for old, new in pairs]

    def __enter__(self):
        table = dict(_STAND_INS.get() or {})
        table.update({id(old.ir_var): (old, new) for old, new in self.pairs})
        self._token = _STAND_INS.set(table)
        return self

    def __exit__(self, *exc):
        _STAND_INS.reset(self._token)


def bind(prim: Primitive, *args, **params):
    """Apply ``prim``: evaluate it on constants, or record an equation."""
    if _STAND_INS.get():
        args = tuple(_standing_in(a) if isinstance(a, Tracer) else a for a in args)
    trace = current_trace()
    if not any(isinstance(a, Tracer) for a in args):
        # constants are computed now, except in a trace: big results, and broadcasts
        # (a broadcast scalar stays a scalar in fused loops instead of becoming an array)
        if trace is None or not (_is_large(prim, args, params)
                                 or prim.name == "broadcast_in_dim"
                                 and int(np.prod(params["shape"], dtype=np.int64)) > 1):
            return _normalise(prim, _run_impl(prim, args, params))
    elif trace is None:
        raise TracerLeakError(with_location(
            "a traced value was used after the function that made it returned"))
    return _record(trace, prim, args, params)


FOLD_LIMIT = 1 << 16   # constants of more elements stay equations (not literals) in graphs


def _is_large(prim, args, params) -> bool:
    """Whether a constant result would be a big literal (a graph keeps it an equation)."""
    if prim.effect:
        return False
    try:
        avals = prim.abstract(*[Lit(np.asarray(a)) for a in args], **params)
    except Exception:
        return False
    return any(int(np.prod(shape, dtype=np.int64)) > FOLD_LIMIT for shape, _ in avals)


# True while a primitive runs on a trace's values (to give its Tracers values), not
# for a result: effects (a convergence warning) wait for the program's own run
_FOR_A_TRACE = contextvars.ContextVar("gradc_for_a_trace", default=False)


def evaluating_for_a_trace() -> bool:
    return _FOR_A_TRACE.get()


def _record(trace, prim, args, params):
    """Record ``prim`` applied to ``args`` in ``trace``; return Tracers for its outputs
    (with values when the trace is concrete and every traced operand has one)."""
    atoms = [trace.to_atom(a) for a in args]
    try:
        avals = prim.abstract(*atoms, **params)
    except GradcError as e:
        if "\n  at " in str(e):
            raise
        raise type(e)(with_location(str(e))) from None
    outs = [Var(tuple(shape), np.dtype(dtype)) for shape, dtype in avals]
    values = [None] * len(outs)
    tracers_in = [a for a in args if isinstance(a, Tracer)]
    if all(a.val is not None for a in tracers_in) and (tracers_in or trace.concrete):
        concrete = [a.val if isinstance(a, Tracer) else a for a in args]
        token = _FOR_A_TRACE.set(True)
        try:
            result = _normalise(prim, _run_impl(prim, concrete, params))
        finally:
            _FOR_A_TRACE.reset(token)
        values = list(result) if prim.multiple_results else [result]
    source = _SOURCE[-1] if _SOURCE else errors.user_location()
    trace.eqns.append(make_eqn(prim, atoms, outs, params, source))
    tracers = [Tracer(v, val, trace) for v, val in zip(outs, values)]
    if prim.multiple_results:
        return tracers
    return tracers[0] if tracers else None


_SOURCE: list = []   # while re-tracing a graph: the source line of the equation being rewritten
_SOURCE_FRAMES: list = []    # ... and the frame that entered its ``source_line``


class source_line:
    """Equations recorded inside ``with source_line(eqn.source):`` carry that source
    instead of the current Python line: passes keep pointing at the user's code."""

    def __init__(self, source):
        self.source = source

    def __enter__(self):
        if self.source is not None:
            _SOURCE.append(self.source)
            _SOURCE_FRAMES.append(sys._getframe(1))

    def __exit__(self, *exc):
        if self.source is not None:
            _SOURCE.pop()
            _SOURCE_FRAMES.pop()


def rewritten_source():
    """The line of the equation a transformation is rewriting now (``source_line``),
    unless user code runs inside that rewrite (a ``custom_vjp``'s backward function,
    whose own line is the better one: None then, as outside any rewrite)."""
    if not _SOURCE:
        return None
    entry, frame = _SOURCE_FRAMES[-1], sys._getframe(1)
    while frame is not None and frame is not entry:
        if errors.is_user_frame(frame):
            return None
        frame = frame.f_back
    return _SOURCE[-1]


def report_location():
    """The line a report made now names (``prims.implicit.report``, and the solvers'
    run-time warnings): the equation being rewritten (``rewritten_source``), else the
    user's line now."""
    return rewritten_source() or errors.user_location()


def full_traced(shape, fill, dtype, like):
    """An array of ``fill`` as a traced value of ``like``'s trace, so that it can be
    updated in place (``z = np.zeros_like(x); z[0] = x[1]``).  It is recorded as a
    ``broadcast_in_dim`` of a scalar literal.  When ``like`` is not a Tracer: a NumPy array."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    trace = current_trace()
    if not isinstance(like, Tracer) or trace is None:
        return np.full(shape, fill, dtype)
    from .prims.shape import broadcast_p
    var = Var(shape, dtype)
    source = _SOURCE[-1] if _SOURCE else errors.user_location()
    trace.eqns.append(make_eqn(broadcast_p, [Lit(np.asarray(fill, dtype))], [var],
                               {"shape": shape, "dims": ()}, source))
    out = Tracer(var, None if like.val is None else np.full(shape, fill, dtype), trace)
    out.array0d = True
    return out


def is_array0d(x) -> bool:
    """Whether ``x`` is a 0-d array (a 0-d ``np.ndarray``, or a Tracer of one:
    ``Tracer.array0d``), not a NumPy scalar or a Python number."""
    return (isinstance(x, Tracer) and x.array0d
            or isinstance(x, np.ndarray) and x.ndim == 0)


def mark_array0d(tracers, like) -> None:
    """Each Tracer of ``tracers`` a 0-d array where its counterpart in ``like`` is one:
    the inputs of a loop's body or a branch, and the loop's results, are arrays or
    scalars as the initial values are (in NumPy, the loop written out keeps them so)."""
    for t, x in zip(tracers, like):
        if isinstance(t, Tracer) and is_array0d(x):
            t.array0d = True


def constant_traced(value):
    """The NumPy constant ``value`` as a traced value of the innermost trace (outside
    any trace: ``value`` itself).  NumPy converts an index with ``np.asarray``, so a
    traced integer cannot index a NumPy array (``table[i]`` in a loop's body); it can
    index this Tracer, whose equation (a ``broadcast_in_dim`` of the literal onto its
    own shape) simplification folds back into the literal."""
    value = np.asarray(value)
    trace = current_trace()
    if trace is None:
        return value
    from .prims.shape import broadcast_p
    var = Var(value.shape, value.dtype)
    source = _SOURCE[-1] if _SOURCE else errors.user_location()
    trace.eqns.append(make_eqn(broadcast_p, [Lit(value)], [var],
                               {"shape": value.shape, "dims": tuple(range(value.ndim))},
                               source))
    out = Tracer(var, value if trace.concrete else None, trace)
    out.array0d = True
    return out


def _run_impl(prim, args, params):
    """The NumPy implementation; its failures (a singular matrix, an index out of
    bounds) become a GradcError that names the primitive and the user's line."""
    try:
        return prim.impl(*args, **params)
    except GradcError:
        raise
    except Exception as e:
        where = _SOURCE[-1] if _SOURCE else None
        raise errors.EvaluationError(with_location(
            f"{prim.name} failed on these values: {type(e).__name__}: {e}", where)) from e


def _normalise(prim, result):
    if prim.multiple_results:
        return [np.asarray(r) for r in result]
    return None if result is None else np.asarray(result)


def is_tracer(x) -> bool:
    return isinstance(x, Tracer)


def shape_of(x) -> tuple:
    return tuple(np.shape(x)) if not isinstance(x, Tracer) else x.shape


def dtype_of(x) -> np.dtype:
    return x.dtype if isinstance(x, (Tracer, np.ndarray, np.generic)) else np.asarray(x).dtype


# what to call instead of a library's Python function that converts with np.asarray
_GRADC_FOR = {
    "scipy.special.logsumexp": "gradc.logsumexp", "scipy.special.softmax": "gradc.softmax",
    "scipy.special.log_softmax": "gradc.log_softmax",
    "np.full": "np.full_like(x, value) or np.broadcast_to(value, shape)",
    "scipy.special.polygamma": "gradc.ops.polygamma(n, x) (or scipy.special.psi for n = 0)",
    "np.vectorize": "NumPy operations on the whole array (np.where for a branch)",
    "numpy.lib.as_strided": "np.lib.stride_tricks.sliding_window_view (windows) or "
                            "np.broadcast_to (repeated elements)",
}

_ONE_EXAMPLE = contextvars.ContextVar("gradc_one_example", default=False)


@contextlib.contextmanager
def one_example():
    """Tracing with one example's values (``vmap`` traces its function on the first
    example): a guard recorded then would hold for that example only."""
    token = _ONE_EXAMPLE.set(True)
    try:
        yield
    finally:
        _ONE_EXAMPLE.reset(token)


def tracing_one_example() -> bool:
    return _ONE_EXAMPLE.get()


def checkable(x) -> bool:
    """Whether a check of ``x``'s value while tracing (a guard, then an error when it
    fails) covers every call of the traced program: not when the value is abstract, nor
    when it is one example's of a ``vmap``."""
    if not isinstance(x, Tracer):
        return True
    return x.val is not None and not _ONE_EXAMPLE.get()


def trace_graph(fn, avals, values=None):
    """Trace ``fn`` on fresh inputs with the given ``(shape, dtype)`` avals.

    Returns ``(graph, outputs, captured)``: ``outputs`` is what ``fn`` returned (Tracers
    or constants), ``captured`` the outer Tracers that became trailing graph inputs.
    """
    values = values if values is not None else [None] * len(avals)
    with Trace() as trace:
        trace.concrete = any(v is not None for v in values)
        ins = [trace.new_input(s, d, v) for (s, d), v in zip(avals, values)]
        try:
            outs = fn(*ins)
        except Exception as e:
            # NumPy re-raises errors from a Tracer's __float__ as its own ValueError
            # ("setting an array element with a sequence"); surface gradc's message
            cause = e.__cause__
            if not isinstance(e, GradcError) and isinstance(cause, GradcError):
                raise cause.with_traceback(cause.__traceback__) from None
            raise
    graph, captured = trace.to_graph(outs)
    return graph, outs, captured
