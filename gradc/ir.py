"""gradc's intermediate representation: an SSA graph of primitive applications.

Conventions
-----------
* ``Var`` is a value defined exactly once, either as a graph input or as an output of
  one ``Eqn``.  Vars compare by identity; they carry only a shape and a dtype.  Names
  (``a``, ``b``, ...) are made up when a graph is printed, never stored.
* ``Lit`` is a constant operand (a NumPy scalar or array), written inline.
* ``Eqn`` applies one ``Primitive`` to atoms (Vars or Lits) and defines its outputs.
  ``params`` are static (hashable-ish Python values: ints, tuples, strings, dtypes).
  ``source`` is the user's ``file:line: code`` the equation was traced from.
* ``Graph`` is a closed function: inputs, equations in dependency order, outputs.
  An equation with no outputs is an effect (a control-flow *guard*) and is never
  removed by dead-code elimination.

The text form (``str(graph)``) is specified in ``docs/ir.md``.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np

from .errors import IRError

# ---------------------------------------------------------------- dtypes

_SHORT = {
    "float64": "f64", "float32": "f32", "float16": "f16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8",
    "bool": "bool", "complex128": "c128", "complex64": "c64",
}


def dtype_name(dtype) -> str:
    dtype = np.dtype(dtype)
    return _SHORT.get(dtype.name, dtype.name)


def type_str(shape: tuple, dtype) -> str:
    return f"{dtype_name(dtype)}[{','.join(str(d) for d in shape)}]"


def is_float(dtype) -> bool:
    """True for dtypes that carry derivatives (real or complex floating point)."""
    return np.issubdtype(np.dtype(dtype), np.inexact)


# ---------------------------------------------------------------- atoms

@dataclass(frozen=True, eq=False, slots=True)
class Var:
    """An SSA value: defined once, used any number of times."""
    shape: tuple       # tuple of ints
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Var({type_str(self.shape, self.dtype)} @{id(self) & 0xFFFF:x})"


@dataclass(frozen=True, eq=False, slots=True)
class Lit:
    """A constant operand, printed inline."""
    value: np.ndarray  # always an ndarray (0-d for scalars)

    @staticmethod
    def of(value, dtype=None) -> "Lit":
        return Lit(np.asarray(value, dtype=dtype))

    @property
    def shape(self) -> tuple:
        return self.value.shape

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return self.value.ndim

    def __repr__(self) -> str:
        return f"Lit({_lit_str(self)})"


Atom = Union[Var, Lit]


# ---------------------------------------------------------------- primitives

def _primitive_named(name: str) -> "Primitive":
    from .passes.conv import conv2d_dilated_input_p, conv2d_over_batch_p
    from .passes.fuse import fused_p
    from .prims import all_primitives
    lowering = {p.name: p for p in (fused_p, conv2d_over_batch_p,  # made by passes
                                    conv2d_dilated_input_p)}
    return lowering[name] if name in lowering else all_primitives()[name]


class Primitive:
    """A named operation of the closed primitive set, with its rules attached.

    Rules (each optional except ``impl`` and ``abstract``):

    * ``impl(*values, **params)``: NumPy implementation; returns an array, or a tuple
      of arrays when ``multiple_results``.
    * ``abstract(*avals, **params)``: shape/dtype rule; receives objects with
      ``.shape``/``.dtype`` and returns a list of ``(shape, dtype)``.
    * ``jvp(primals, tangents, **params) -> (primal_outs, tangent_outs)``: tangents are
      ``None`` for symbolic zeros; written with gradc operations so it can be traced.
    * ``transpose(cts, *args, **params) -> cotangents``: for primitives linear in the
      arguments that are ``UndefinedPrimal``; returns one entry per argument.
    """

    def __init__(self, name: str, *, multiple_results: bool = False, effect: bool = False,
                 checks_values: bool = False):
        self.name = name
        self.multiple_results = multiple_results
        self.effect = effect           # kept by DCE even when its outputs are unused
        # raises GuardFailure when a value differs from the traced one (a branch's
        # guard, a mask's count): its graph holds for some values of a signature only
        self.checks_values = checks_values
        self.impl: Callable | None = None
        self.abstract: Callable | None = None
        self.jvp: Callable | None = None
        self.transpose: Callable | None = None

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self):
        # pickled by name: the receiving process has the same closed primitive set
        return (_primitive_named, (self.name,))

    def bind(self, *args, **params):
        from .trace import bind
        return bind(self, *args, **params)


# ---------------------------------------------------------------- equations, graphs

@dataclass(frozen=True, eq=False, slots=True)
class Eqn:
    prim: Primitive
    inputs: tuple            # of Atom
    outputs: tuple           # of Var
    params: types.MappingProxyType = field(default_factory=lambda: types.MappingProxyType({}))
    source: str | None = None  # the user's "file:line: code" this was traced from

    def replace(self, **changes) -> "Eqn":
        return dataclasses.replace(self, **changes)

    def __reduce__(self):
        return (make_eqn, (self.prim, self.inputs, self.outputs, dict(self.params),
                           self.source))


def make_eqn(prim, inputs, outputs, params=None, source=None) -> Eqn:
    return Eqn(prim, tuple(inputs), tuple(outputs),
               types.MappingProxyType(dict(params or {})), source)


@dataclass(frozen=True, eq=False, slots=True)
class Graph:
    """A closed, pure function in SSA form."""
    inputs: tuple            # of Var
    eqns: tuple              # of Eqn, in dependency order
    outputs: tuple           # of Atom

    def replace(self, **changes) -> "Graph":
        return dataclasses.replace(self, **changes)

    @property
    def guards(self) -> tuple:
        return tuple(e for e in self.eqns if e.prim.effect)

    def __str__(self) -> str:
        return pretty(self)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))

    def verify(self) -> "Graph":
        verify(self)
        return self

    def to_networkx(self):
        return to_networkx(self)


def subgraphs(eqn: Eqn) -> list:
    """The Graphs ``eqn`` holds in its params (a loop's body, a cond's branches, a
    function with a rule), in the order of its params."""
    found = []
    for value in eqn.params.values():
        if isinstance(value, Graph):
            found.append(value)
        elif isinstance(value, tuple):
            found.extend(v for v in value if isinstance(v, Graph))
    return found


def has_effect(eqn: Eqn) -> bool:
    """Whether ``eqn`` has an effect or holds a Graph with one (a loop whose body
    reports, a solver's custom rule whose forward pass does): dead-code elimination keeps
    such equations, as JAX keeps those whose jaxprs have effects."""
    return eqn.prim.effect or any(has_effect(e) for g in subgraphs(eqn) for e in g.eqns)


def map_subgraphs(eqn: Eqn, fn) -> dict:
    """``eqn``'s params with each Graph among them replaced by ``fn(graph)``."""
    def one(value):
        if isinstance(value, Graph):
            return fn(value)
        if isinstance(value, tuple) and any(isinstance(v, Graph) for v in value):
            return tuple(fn(v) if isinstance(v, Graph) else v for v in value)
        return value
    return {k: one(v) for k, v in eqn.params.items()}


# ---------------------------------------------------------------- printing

def _names():
    """a, b, ..., z, ba, bb, ... (base 26 with 'a' as zero; skips the keywords)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = 0
    while True:
        k, s = n, ""
        while True:
            k, r = divmod(k, 26)
            s = letters[r] + s
            if k == 0:
                break
        if s not in ("in", "let"):
            yield s
        n += 1


def _format_number(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "True" if x else "False"
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    return repr(x.item() if hasattr(x, "item") else x)


def _lit_str(lit: Lit) -> str:
    v = lit.value
    if v.ndim == 0:
        return f"{_format_number(v[()])}:{dtype_name(v.dtype)}"
    if v.size <= 6:
        # (NumPy's default print options, whatever the user's program has set)
        with np.printoptions(precision=8, suppress=False, floatmode="maxprec", sign="-",
                             threshold=1000, edgeitems=3, linewidth=75, formatter=None,
                             legacy=False):
            body = np.array2string(v, separator=",").replace("\n", "").replace(" ", "")
        return f"{body}:{type_str(v.shape, v.dtype)}"
    return f"const:{type_str(v.shape, v.dtype)}"


def _param_str(value) -> str:
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return dtype_name(value)
    if isinstance(value, Graph):
        return "{ graph }"
    if isinstance(value, tuple):
        inner = ",".join(_param_str(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, slice):
        parts = ["" if p is None else str(p) for p in (value.start, value.stop, value.step)]
        return ":".join(parts).rstrip(":") or ":"
    if isinstance(value, np.ndarray):
        return f"const:{type_str(value.shape, value.dtype)}"
    if isinstance(value, str):
        return value if value.isidentifier() else repr(value)
    return str(value)


class _Namer:
    """Names variables in order of first appearance (a, b, ..., z, ba, ...)."""

    def __init__(self):
        self.names: dict = {}
        self._gen = _names()

    def __call__(self, atom) -> str:
        if isinstance(atom, Lit):
            return _lit_str(atom)
        if atom not in self.names:
            self.names[atom] = next(self._gen)
        return self.names[atom]

    def binder(self, v) -> str:
        return f"{self(v)}:{type_str(v.shape, v.dtype)}"


def _eqn_head(eqn, name: _Namer) -> str:
    """``lhs = prim[params] args`` (binding the outputs' names first)."""
    lhs = " ".join(name.binder(v) for v in eqn.outputs) if eqn.outputs else "_"
    params = " ".join(f"{k}={_param_str(v)}" for k, v in sorted(eqn.params.items())
                      if k not in ("body", "branches", "where")   # below; the source line
                      and not isinstance(v, Graph))
    head = eqn.prim.name + (f"[{params}]" if params else "")
    args = " ".join(name(a) for a in eqn.inputs)
    return f"{lhs} = {head} {args}".rstrip()


def _eqn_text(eqn, name: _Namer, pad: str) -> list:
    """An equation's lines: the head, then a nested body (``fused``) indented below."""
    lines = [_eqn_head(eqn, name)]
    body = eqn.params.get("body")
    if isinstance(body, Graph):
        lines += _graph_lines(body, name, pad + "    ")
    for graph in eqn.params.get("branches", ()):    # cond: the false branch, then the true
        lines += _graph_lines(graph, name, pad + "    ")
    for key, graph in sorted(eqn.params.items()):    # other sub-Graphs, named
        if key != "body" and isinstance(graph, Graph):
            lines.append(f"{pad}    {key}=")
            lines += _graph_lines(graph, name, pad + "    ")
    return lines


def _graph_lines(graph: Graph, name: _Namer, pad: str) -> list:
    lines = [pad + "{ lambda " + " ".join(name.binder(v) for v in graph.inputs) + " ."]
    for i, eqn in enumerate(graph.eqns):
        lead = "let " if i == 0 else "    "
        text = _eqn_text(eqn, name, pad + "      ")
        lines.append(f"{pad}  {lead}{text[0]}")
        lines += text[1:]
    outs = ", ".join(name(a) for a in graph.outputs)
    lines.append(f"{pad}  in ({outs}) }}")
    return lines


def pretty(graph: Graph, indent: int = 0) -> str:
    return "\n".join(_graph_lines(graph, _Namer(), " " * indent))


def pretty_parts(graph: Graph):
    """``(namer, [lines of each equation])`` with the names ``pretty`` uses."""
    name = _Namer()
    for v in graph.inputs:
        name(v)
    return name, [_eqn_text(eqn, name, "") for eqn in graph.eqns]


# ---------------------------------------------------------------- verification

def verify(graph: Graph) -> None:
    """Check SSA form, dependency order, and every equation's shape/dtype rule, in
    ``graph`` and in the Graphs its equations hold (loop bodies, branches, fused
    regions)."""
    defined: set = set()
    for v in graph.inputs:
        if not isinstance(v, Var):
            raise IRError(f"graph input {v!r} is not a Var")
        if v in defined:
            raise IRError(f"graph input {v!r} appears twice")
        defined.add(v)

    def check_use(atom, where):
        if isinstance(atom, Lit):
            return
        if not isinstance(atom, Var):
            raise IRError(f"{where}: operand {atom!r} is neither Var nor Lit")
        if atom not in defined:
            raise IRError(f"{where}: {atom!r} used before it is defined")

    for i, eqn in enumerate(graph.eqns):
        where = f"equation {i} ({eqn.prim.name})"
        for a in eqn.inputs:
            check_use(a, where)
        expected = eqn.prim.abstract(*eqn.inputs, **eqn.params)
        if len(expected) != len(eqn.outputs):
            raise IRError(f"{where}: {len(eqn.outputs)} outputs, shape rule gives {len(expected)}")
        for v, (shape, dtype) in zip(eqn.outputs, expected):
            if tuple(v.shape) != tuple(shape) or np.dtype(v.dtype) != np.dtype(dtype):
                raise IRError(f"{where}: output is {type_str(v.shape, v.dtype)}, "
                              f"shape rule gives {type_str(shape, dtype)}")
            if v in defined:
                raise IRError(f"{where}: {v!r} defined twice (not SSA)")
            defined.add(v)
        for sub in subgraphs(eqn):
            try:
                verify(sub)
            except IRError as e:
                raise IRError(f"{where}, in its sub-Graph: {e}") from None
    for a in graph.outputs:
        check_use(a, "graph output")


# ---------------------------------------------------------------- utilities

def to_networkx(graph: Graph):
    """A ``networkx.DiGraph``: one node per input, equation and output; edges carry vars."""
    import networkx as nx

    g = nx.DiGraph()
    producer: dict = {}
    for i, v in enumerate(graph.inputs):
        node = ("in", i)
        g.add_node(node, kind="input", label=f"in{i}: {type_str(v.shape, v.dtype)}")
        producer[v] = node
    for i, eqn in enumerate(graph.eqns):
        node = ("eqn", i)
        shapes = ", ".join(type_str(v.shape, v.dtype) for v in eqn.outputs)
        g.add_node(node, kind="eqn", prim=eqn.prim.name, label=f"{eqn.prim.name}: {shapes}",
                   eqn=eqn)
        for a in eqn.inputs:
            if isinstance(a, Var):
                g.add_edge(producer[a], node, var=a)
        for v in eqn.outputs:
            producer[v] = node
    for i, a in enumerate(graph.outputs):
        node = ("out", i)
        g.add_node(node, kind="output", label=f"out{i}: {type_str(a.shape, a.dtype)}")
        if isinstance(a, Var):
            g.add_edge(producer[a], node, var=a)
    return g


def free_vars(eqns: Iterable[Eqn]) -> list:
    """Vars used by ``eqns`` but not defined by them, in first-use order."""
    defined, free, seen = set(), [], set()
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var) and a not in defined and a not in seen:
                seen.add(a)
                free.append(a)
        defined.update(e.outputs)
    return free


def producers_and_readers(eqns: Iterable[Eqn]):
    """``(producer, readers)`` of ``eqns``: each value they compute -> the equation
    computing it; each Var they read -> the equations reading it, in order (one entry
    per read)."""
    producer, readers = {}, {}
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                readers.setdefault(a, []).append(e)
        producer.update((v, e) for v in e.outputs)
    return producer, readers


def computed_from(graph: Graph, n_inputs: int):
    """The values of ``graph`` computed from its first ``n_inputs`` inputs alone (those
    inputs included) and the equations computing them, in order: a loop body's values
    of its consts, the same at every step.  Equations with effects are left out."""
    known = set(graph.inputs[:n_inputs])
    eqns = []
    for eqn in graph.eqns:
        if has_effect(eqn) or not eqn.outputs:
            continue
        if all(not isinstance(a, Var) or a in known for a in eqn.inputs):
            known.update(eqn.outputs)
            eqns.append(eqn)
    return known, eqns


def new_var_like(atom: Atom) -> Var:
    return Var(tuple(atom.shape), np.dtype(atom.dtype))


def params_key(params) -> Any:
    """A hashable key for equation params (used by CSE and caches)."""
    items = []
    for k, v in sorted(params.items()):
        items.append((k, _hashable(v)))
    return tuple(items)


def _hashable(v):
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, slice):
        return ("slice", v.start, v.stop, v.step)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    try:
        hash(v)
        return v
    except TypeError:
        return ("id", id(v))


def atoms_key(atoms: Sequence) -> tuple:
    out = []
    for a in atoms:
        if isinstance(a, Lit):
            out.append(("lit", a.dtype.str, a.shape, a.value.tobytes()))
        else:
            out.append(("var", id(a)))
    return tuple(out)
