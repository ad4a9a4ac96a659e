"""Sparse Jacobians and Hessians: the pattern from the Graph, one JVP per colour.

1. **Pattern.**  Each value's dependence on the input elements is propagated through the
   Graph as a sparse boolean matrix (rows: the value's elements, columns: the input's).
   Primitives that move elements (elementwise with broadcasting, slices, pads,
   transposes, reshapes, concatenation, gathers and scatters with known indices) map
   rows exactly: the primitive is run on *element ids* to see which input element lands
   where.  Reductions map each input element to its output element; ``einsum`` with
   constant operands follows the nonzeros of the constants.  Any other primitive is
   treated conservatively: each output element depends on everything its operands do.
   The Hessian's pattern is the Jacobian pattern of the gradient's Graph.
2. **Colouring.**  Two columns that share a row cannot be recovered from one product;
   the column-intersection graph (an edge per such pair) is coloured greedily by
   networkx (largest degree first).
3. **Compression.**  One JVP (for a Hessian, one HVP) per colour, seeded with the sum
   of the unit vectors of that colour's columns, batched by ``vmap`` into one compiled
   Graph; each nonzero ``J[i, j]`` is entry ``i`` of the product for ``j``'s colour.

The result is a ``scipy.sparse.csr_matrix`` of shape (output size, input size) (the
arrays flattened).  SciPy is one of gradc's dependencies (Numba's ``np.dot`` and
``np.linalg`` need it), so the matrix is always a SciPy one; ``.tocoo()`` gives the
(row, col, value) triplets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedError, with_location
from .ir import Graph, Lit, Var, is_float
from .trace import shape_of

DENSE_LIMIT = 50_000_000     # nonzeros a conservative pattern may have
EINSUM_SPACE = 1 << 23       # index-space size up to which einsum is followed exactly


def _sp():
    import scipy.sparse as sp
    return sp


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _ids(shape):
    """Element ids 1..size (0 means "no element") as float64 (exact to 2**53)."""
    return np.arange(1, _size(shape) + 1, dtype=np.float64).reshape(shape)


def _moved(src, pattern):
    """The pattern of a value whose element ``p`` is input element ``src[p] - 1``
    (``src`` holds ids; 0 where no element lands)."""
    flat = np.asarray(src).reshape(-1).astype(np.int64) - 1
    rows = np.nonzero(flat >= 0)[0]
    select = _sp().csr_matrix((np.ones(rows.size, np.int8), (rows, flat[rows])),
                              shape=(flat.size, pattern.shape[0]))
    return _bool(select @ pattern)


def _bool(m):
    m = _sp().csr_matrix(m)
    m.data = np.ones_like(m.data, dtype=np.int8)
    m.eliminate_zeros()
    return m


def _union(parts, shape):
    out = _sp().csr_matrix(shape, dtype=np.int8)
    for p in parts:
        out = out + p
    return _bool(out)


def _everything(out_size, patterns, n):
    """Each of ``out_size`` elements depends on every column any of ``patterns`` has."""
    cols = np.unique(np.concatenate([p.indices for p in patterns] or [np.zeros(0, np.int32)]))
    if out_size * cols.size > DENSE_LIMIT:
        raise UnsupportedError(with_location(
            f"sparse Jacobian: the pattern would have {out_size * cols.size:,} nonzeros "
            "(a primitive without an exact sparsity rule mixes all elements); use the dense "
            "jacobian"))
    rows = np.repeat(np.arange(out_size), cols.size)
    return _sp().csr_matrix((np.ones(rows.size, np.int8), (rows, np.tile(cols, out_size))),
                            shape=(out_size, n))


# ---------------------------------------------------------------- rules

_MOVES = {"broadcast_in_dim", "reshape", "transpose", "slice", "pad",
          "convert_element_type"}


def _rule(eqn, pats, values, n):
    """Output patterns of ``eqn`` (``pats[i]``: input i's pattern or None if it does not
    depend on the input; ``values[i]``: its concrete value or None if unknown)."""
    from .passes.fuse import ELEMENTWISE
    from .passes.fuse import REDUCTIONS
    name, params = eqn.prim.name, dict(eqn.params)
    outs = eqn.outputs
    active = [i for i, p in enumerate(pats) if p is not None]
    if name == "stop_gradient":
        return [_sp().csr_matrix((_size(outs[0].shape), n), dtype=np.int8)]
    if name == "barrier":       # its values; the other operands are read for their time
        return list(pats[:params["n"]])
    if name == "checkpoint":    # its function (recomputed, but the same values)
        return _propagate(params["fun"], list(pats), dict(zip(params["fun"].inputs, values)),
                          n)
    if name in ELEMENTWISE:
        out = outs[0]
        return [_union([_moved(np.broadcast_to(_ids(eqn.inputs[i].shape), out.shape),
                               pats[i]) for i in active], (_size(out.shape), n))]
    if name in _MOVES:
        return [_moved(eqn.prim.impl(_ids(eqn.inputs[0].shape), **params), pats[0])]
    if name == "concatenate":
        parts = []
        for i in active:
            ops = [_ids(a.shape) if j == i else np.zeros(a.shape)
                   for j, a in enumerate(eqn.inputs)]
            parts.append(_moved(eqn.prim.impl(*ops, **params), pats[i]))
        return [_union(parts, (_size(outs[0].shape), n))]
    if name in REDUCTIONS:
        x, out = eqn.inputs[0], outs[0]
        where = np.arange(_size(out.shape)).reshape(out.shape)
        for ax in sorted(params["axes"]):
            where = np.expand_dims(where, ax)
        where = np.broadcast_to(where, x.shape).reshape(-1)
        mapping = _sp().csr_matrix((np.ones(where.size, np.int8),
                                    (where, np.arange(where.size))),
                                   shape=(_size(out.shape), _size(x.shape)))
        return [_bool(mapping @ pats[0])]
    known_rest = all(values[i] is not None for i in range(1, len(eqn.inputs)))
    if name == "gather" and active == [0] and known_rest:
        return [_moved(eqn.prim.impl(_ids(eqn.inputs[0].shape), *values[1:], **params),
                       pats[0])]
    if name == "scatter_add" and active == [0] and known_rest:
        v = eqn.inputs[0]
        counts = eqn.prim.impl(np.ones(v.shape), *values[1:], **params)
        if np.max(counts, initial=0) <= 1:
            return [_moved(eqn.prim.impl(_ids(v.shape), *values[1:], **params), pats[0])]
    if name == "index_set" and all(values[i] is not None for i in range(2, len(eqn.inputs))):
        x, v = eqn.inputs[0], eqn.inputs[1]
        parts = []
        if pats[0] is not None:
            parts.append(_moved(eqn.prim.impl(_ids(x.shape), np.zeros(v.shape), *values[2:],
                                              **params), pats[0]))
        if pats[1] is not None:
            parts.append(_moved(eqn.prim.impl(np.zeros(x.shape), _ids(v.shape), *values[2:],
                                              **params), pats[1]))
        return [_union(parts, (_size(outs[0].shape), n))]
    if name == "einsum":
        got = _einsum_rule(eqn, pats, values, n)
        if got is not None:
            return [got]
    live = [pats[i] for i in active]
    return [_everything(_size(o.shape), live, n) if is_float(o.dtype) else None
            for o in outs]


def _einsum_rule(eqn, pats, values, n):
    from .prims.linalg import parse_spec
    terms = parse_spec(eqn.params["spec"])
    sa, sb, so = terms
    size = dict(zip(sa, eqn.inputs[0].shape)) | dict(zip(sb, eqn.inputs[1].shape))
    letters = sorted(size)
    if _size([size[c] for c in letters]) > EINSUM_SPACE:
        return None
    grids = np.ix_(*[np.arange(size[c]) for c in letters])
    pos = {c: g for c, g in zip(letters, grids)}
    full = tuple(size[c] for c in letters)

    def flat_index(term):
        idx = np.zeros((1,) * len(letters), np.int64)
        stride = 1
        for c in reversed(term):
            idx = idx + pos[c] * stride
            stride *= size[c]
        return np.broadcast_to(idx, full).reshape(-1)

    def nonzero(term, value):
        if value is None:
            return np.ones(_size(full), bool)
        v = np.asarray(value)
        order = [term.index(c) for c in letters if c in term]
        expanded = np.transpose(v != 0, order).reshape(
            [size[c] if c in term else 1 for c in letters])
        return np.broadcast_to(expanded, full).reshape(-1)

    out_idx = flat_index(so)
    parts = []
    for i, term in enumerate((sa, sb)):
        if pats[i] is None:
            continue
        other = 1 - i
        mask = nonzero((sa, sb)[other], values[other] if pats[other] is None else None)
        rows, cols = out_idx[mask], flat_index(term)[mask]
        mapping = _sp().csr_matrix((np.ones(rows.size, np.int8), (rows, cols)),
                                   shape=(_size(eqn.outputs[0].shape),
                                          _size(eqn.inputs[i].shape)))
        parts.append(_bool(mapping) @ pats[i])
    return _union(parts, (_size(eqn.outputs[0].shape), n))


def jacobian_pattern(graph: Graph, wrt: int = 0, values=None):
    """The sparsity pattern (a boolean ``csr_matrix``, output size x input size) of the
    Jacobian of ``graph``'s first output w.r.t. input ``wrt``.  ``values``: concrete
    values of the other inputs, where known (they make gathers and einsums exact)."""
    x = graph.inputs[wrt]
    n = _size(x.shape)
    known = {v: np.asarray(values[i]) for i, v in enumerate(graph.inputs)
             if i != wrt and values is not None and values[i] is not None}
    pats = [_sp().identity(n, dtype=np.int8, format="csr") if v is x else None
            for v in graph.inputs]
    y = _propagate(graph, pats, known, n)[0]
    return _sp().csr_matrix((_size(graph.outputs[0].shape), n), dtype=np.int8) \
        if y is None else y


def _propagate(graph: Graph, in_pats, known: dict, n: int) -> list:
    """The patterns of ``graph``'s outputs (None: not dependent) from its inputs'
    ``in_pats``; ``known``: concrete values of some Vars."""
    pats = {v: p for v, p in zip(graph.inputs, in_pats) if p is not None}
    known = {v: x for v, x in known.items() if x is not None}

    def value(a):
        return a.value if isinstance(a, Lit) else known.get(a)

    for eqn in graph.eqns:
        ins = [pats.get(a) if isinstance(a, Var) else None for a in eqn.inputs]
        if all(p is None for p in ins):
            vals = [value(a) for a in eqn.inputs]
            if not eqn.prim.effect and all(v is not None for v in vals):
                res = eqn.prim.impl(*vals, **eqn.params)
                res = res if eqn.prim.multiple_results else [res]
                known.update({o: np.asarray(r) for o, r in zip(eqn.outputs, res)})
            continue
        outs = _rule(eqn, ins, [value(a) for a in eqn.inputs], n)
        for o, p in zip(eqn.outputs, outs):
            if p is not None and is_float(o.dtype):
                pats[o] = p
    return [pats.get(y) if isinstance(y, Var) else None for y in graph.outputs]


# ---------------------------------------------------------------- colouring

@dataclass
class Coloring:
    """A sparsity pattern and a colouring of its columns."""
    pattern: object          # scipy.sparse csr_matrix of int8 ones, (m, n)
    colors: np.ndarray       # colour of each column
    ncolors: int

    @property
    def nnz(self) -> int:
        return int(self.pattern.nnz)

    def seeds(self, dtype=np.float64):
        """(ncolors, n): row c is the sum of the unit vectors of the columns of colour c."""
        seeds = np.zeros((self.ncolors, self.colors.size), dtype)
        seeds[self.colors, np.arange(self.colors.size)] = 1.0
        return seeds

    def __str__(self):
        m, n = self.pattern.shape
        return (f"sparsity: {self.nnz:,} nonzeros in {m} x {n} "
                f"({self.nnz / max(m * n, 1):.2%}); {self.ncolors} colours for {n} columns")

    __repr__ = __str__


def color_columns(pattern) -> Coloring:
    """Greedy colouring (networkx, largest degree first) of the column-intersection
    graph: columns sharing a row get different colours."""
    import networkx as nx
    n = pattern.shape[1]
    if pattern.nnz == 0:
        return Coloring(pattern, np.zeros(n, np.int64), 1 if n else 0)
    p = _sp().csr_matrix(pattern, dtype=np.int32)
    overlap = (p.T @ p).tocoo()
    keep = overlap.row < overlap.col
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(overlap.row[keep].tolist(), overlap.col[keep].tolist()))
    colors = nx.greedy_color(graph, strategy="largest_first")
    colors = np.array([colors[j] for j in range(n)], np.int64)
    return Coloring(pattern, colors, int(colors.max()) + 1)


# ---------------------------------------------------------------- the transformation

class SparseJacobian:
    """What ``jacobian(f, sparse=True)`` and ``hessian(f, sparse=True)`` return.

    ``J = sj(*args)`` is the sparse matrix; ``sj.coloring(*args)`` the pattern and its
    colouring (``.ncolors``: the number of products a call costs).  The pattern is
    found once per argument signature and content of the other arguments; the
    compressed products are one compiled function."""

    def __init__(self, fun, argnums=0, hessian=False, target=None):
        self.fun, self.argnums, self.hessian, self.target = fun, argnums, hessian, target
        self._colorings: dict = {}
        self._compressed = None
        from .api import _Cache
        self._reads = _Cache(fun)       # (what tracing fun changes: left out of keys)

    def _key(self, args, k):
        from .api import _fingerprint, _value_key
        parts = []
        for i, a in enumerate(args):
            a = np.asarray(a) if not isinstance(a, (int, float, complex, bool)) else a
            parts.append((np.shape(a), str(np.asarray(a).dtype)) if i == k else _value_key(a))
        return (k, tuple(parts), _fingerprint(self.fun, self._reads))

    def _untraced(self, args):
        """A sparse matrix holds numbers: refuse traced arguments with the reason (not a
        ConcretizationError about np.asarray deep inside)."""
        from .trace import Tracer
        if any(isinstance(a, Tracer) for a in args):
            what = "hessian" if self.hessian else "jacobian"
            raise UnsupportedError(with_location(
                f"gradc.{what}(f, sparse=True) returns a scipy.sparse matrix of numbers, "
                "so gradc cannot trace it (inside jit, grad, vmap or make_graph); use the "
                f"dense gradc.{what}(f) there. gradc.show, gradc.draw and gradc.to_sympy "
                "take it directly (they show its compressed products), and "
                ".coloring(x) gives its pattern"))

    def compressed(self, *args):
        """``(transformation, its arguments)``: the compressed products that a call at
        ``args`` evaluates (one JVP or HVP per colour; ``jit`` of ``(seeds, *args)``),
        for inspection (``gradc.show``, ``gradc.draw``, ``gradc.to_sympy``)."""
        col = self.coloring(*args)
        dtype = np.asarray(args[self.argnums % len(args)]).dtype
        return self._products(), (col.seeds(dtype),) + tuple(args)

    def coloring(self, *args) -> Coloring:
        from .jacobians import _checked, _graph_of
        self._untraced(args)
        k, x = _checked(args, self.argnums, "hessian" if self.hessian else "jacobian")
        key = self._key(args, k)
        if key in self._colorings:
            return self._colorings[key]
        from .api import grad
        fun = grad(self.fun, argnums=k) if self.hessian else self.fun
        (graph, _), grew = self._reads.noting_changes(
            lambda: _graph_of(fun, args, k, x, "sparse jacobian"))
        coloring = color_columns(jacobian_pattern(graph, 0))
        if not graph.guards:    # with Python control flow on x the pattern may change
            self._colorings[key] = coloring
            if grew:            # (and under the key without what the trace changed)
                self._colorings[self._key(args, k)] = coloring
        return coloring

    def _products(self):
        if self._compressed is None:
            from .api import grad, jit, jvp, vmap
            from .jacobians import _with
            fun, k, hess = self.fun, self.argnums, self.hessian

            def compressed(seeds, *args):
                kk = k % len(args)
                x = args[kk]
                g = lambda xx: fun(*_with(args, kk, xx))     # noqa: E731
                inner = grad(g) if hess else g
                shape = shape_of(x)
                out = vmap(lambda t: jvp(inner, (x,), (np.reshape(t, shape),))[1])(seeds)
                return np.reshape(out, (seeds.shape[0], -1))
            compressed.__name__ = compressed.__qualname__ = \
                f"sparse_{'hessian' if hess else 'jacobian'}_{getattr(fun, '__name__', 'f')}"
            self._compressed = jit(compressed, target=self.target)
        return self._compressed

    def __call__(self, *args):
        self._untraced(args)
        col = self.coloring(*args)
        k = self.argnums % len(args)
        dtype = np.asarray(args[k]).dtype
        coo = col.pattern.tocoo()
        rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        if rows.size:
            products = np.asarray(self._products()(col.seeds(dtype), *args))
            values = products[col.colors[cols], rows]
        else:
            values = np.zeros(0, dtype)
        return _sp().csr_matrix((values, (rows, cols)), shape=col.pattern.shape)


def sparse_jacobian(fun, argnums=0, *, target=None) -> SparseJacobian:
    return SparseJacobian(fun, argnums, False, target)


def sparse_hessian(fun, argnums=0, *, target=None) -> SparseJacobian:
    return SparseJacobian(fun, argnums, True, target)
