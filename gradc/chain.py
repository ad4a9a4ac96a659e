"""Jacobian chains: cut a Graph into stages, cost them, bracket the chain product by DP.

A function ``y = f(x)`` whose Graph has values that every path from ``x`` to ``y`` passes
through (the *cuts*: the dominators of ``y`` in the data-flow graph of the values that
depend on ``x``) is a chain ``y = F_q(... F_2(F_1(x)))`` and its Jacobian is the product
``J = J_q ... J_2 J_1``.  Each stage's Jacobian ``J_k`` (``m_k x n_k``) is available
matrix-free, as tangent products ``J_k v`` and adjoint products ``u J_k``, each costing
``c_k`` multiply-adds per vector (the stage's linearised FLOP count, ``tangent_cost``).
The product can be evaluated in many ways (Naumann, "Matrix-Free Jacobian Chaining",
2024); for a segment ``J_{i..j} = J_j ... J_i`` the options are

* ``fwd``  -- ``n_i`` tangents through the whole segment:        ``n_i * sum(c_i..c_j)``
* ``rev``  -- ``m_j`` adjoints through the whole segment:         ``m_j * sum(c_i..c_j)``
* ``mul``  -- split at ``k``, both halves dense, one matrix product:
  ``cost(k+1..j) + cost(i..k) + m_j * m_k * n_i``
* ``tan``  -- the right half dense, the left half applied to its ``n_i`` columns
  by tangents: ``cost(i..k) + n_i * sum(c_k+1..c_j)``
* ``adj``  -- the left half dense, its ``m_j`` rows pulled back through the right
  half by adjoints: ``cost(k+1..j) + m_j * sum(c_i..c_k)``

and ``optimal_plan`` finds the cheapest by dynamic programming over segments (O(q^3)).
All-forward and all-reverse are two of the candidates, so the plan never costs more than
either.  ``evaluate`` turns a plan into gradc operations (``vmap`` of ``jvp``/``vjp`` of
the segments, matrix products), so under ``jit`` the whole plan is one compiled Graph.
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass

import numpy as np

from .ir import Graph, Lit, Var, is_float, type_str
from .trace import bind, dtype_of, source_line

# ---------------------------------------------------------------- the cost model

_FREE = {"reshape", "stop_gradient", "convert_element_type"}


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def tangent_cost(eqn, active) -> float:
    """Multiply-adds to push one tangent through ``eqn`` (``active[i]``: whether input
    ``i`` carries one).  The same count serves an adjoint: a transposed linear map does
    the same arithmetic."""
    n_active = sum(bool(a) for a in active)
    if n_active == 0:
        return 0.0
    name = eqn.prim.name
    out = sum(_size(v.shape) for v in eqn.outputs)
    ins = [_size(a.shape) for a in eqn.inputs]
    if name in _FREE:
        return 0.0
    if name == "einsum":
        dims = {}
        for term, a in zip(eqn.params["spec"].split("->")[0].split(","), eqn.inputs):
            dims.update(zip(term, a.shape))
        return float(n_active * _size(tuple(dims.values())))
    if name == "conv2d":
        _, c, kh, kw = eqn.inputs[1].shape
        return float(n_active * out * c * kh * kw)
    if name == "solve":
        n = eqn.inputs[0].shape[-1]
        return float(2 * n * ins[1] + (n * ins[1] if active[0] else 0))
    if name in ("det", "slogdet", "cofactor"):
        return float(ins[0])
    if name.startswith("reduce_") or name in ("cumsum", "argmax", "argmin"):
        return float(ins[0])
    if name == "scan":
        return eqn.params["length"] * graph_cost(eqn.params["body"])
    if name == "cond":
        return max(graph_cost(b) for b in eqn.params["branches"])
    if name == "while_loop":        # one step's (the trip count is known only when it runs)
        return graph_cost(eqn.params["branches"][1])
    return float(n_active * out)


def graph_cost(graph: Graph) -> float:
    """``tangent_cost`` summed over a whole Graph, every float input active."""
    return sum(tangent_cost(e, [isinstance(a, Var) and is_float(a.dtype) for a in e.inputs])
               for e in graph.eqns)


# ---------------------------------------------------------------- cutting the Graph

@dataclass
class Stage:
    """One link ``z_k = F_k(z_{k-1})`` of the chain."""
    index: int               # 1-based: J1 is applied first
    source: Var              # z_{k-1}
    target: Var              # z_k
    eqns: tuple              # the equations that compute z_k from z_{k-1}
    cost: float              # multiply-adds per tangent (and per adjoint)

    @property
    def n(self) -> int:
        return _size(self.source.shape)

    @property
    def m(self) -> int:
        return _size(self.target.shape)

    @property
    def ops(self) -> str:
        names = []
        for e in self.eqns:
            if e.prim.name not in names:
                names.append(e.prim.name)
        return ", ".join(names)


def split_chain(graph: Graph, wrt: int = 0, max_stages: int = 48):
    """The stages of ``graph`` (one output) w.r.t. input ``wrt``.

    Returns ``(stages, note)``: ``stages`` is empty when the output does not depend on
    the input; ``note`` says why the chain has one stage when no value cuts the Graph."""
    import networkx as nx

    x, y = graph.inputs[wrt], graph.outputs[0]
    flow = nx.DiGraph()
    flow.add_node(x)
    active = {x}
    for eqn in graph.eqns:
        ins = [a for a in eqn.inputs if isinstance(a, Var) and a in active]
        if not ins:
            continue
        for o in eqn.outputs:
            if is_float(o.dtype):
                active.add(o)
                flow.add_edges_from((a, o) for a in ins)
    if y is x:
        return [Stage(1, x, x, (), 0.0)], "the output is the input"
    if not isinstance(y, Var) or y not in active:
        return [], "the output does not depend on the input"
    relevant = nx.ancestors(flow, y) | {y}
    idom = nx.immediate_dominators(flow.subgraph(relevant), x)
    cuts = [y]
    while cuts[-1] is not x:
        cuts.append(idom[cuts[-1]])
    cuts.reverse()
    position = {v: k for k, v in enumerate(cuts)}
    stage_of = {}
    members = [[] for _ in range(len(cuts) - 1)]
    for eqn in graph.eqns:
        outs = [o for o in eqn.outputs if o in relevant]
        if not outs:
            continue
        for o in outs:
            d = idom[o]
            stage_of[o] = position[d] if d in position else stage_of[d]
        members[stage_of[outs[0]]].append(eqn)
    stages = []
    for k, eqns in enumerate(members):
        cost = sum(tangent_cost(e, [isinstance(a, Var) and a in relevant for a in e.inputs])
                   for e in eqns)
        stages.append(Stage(k + 1, cuts[k], cuts[k + 1], tuple(eqns), cost))
    note = "" if len(stages) > 1 else "no value cuts the Graph: one stage, by the better " \
                                      "pure mode"
    while len(stages) > max_stages:         # merge at the widest cut: the DP stays cheap
        k = max(range(len(stages) - 1), key=lambda i: stages[i].m)
        a, b = stages[k], stages[k + 1]
        stages[k:k + 2] = [Stage(0, a.source, b.target, a.eqns + b.eqns, a.cost + b.cost)]
        note = f"merged at the widest cuts to {max_stages} stages"
    for k, s in enumerate(stages):
        s.index = k + 1
    return stages, note


# ---------------------------------------------------------------- the DP

@dataclass(frozen=True)
class Step:
    """How ``J_{lo..hi}`` (stages ``lo..hi``, 0-based, inclusive) is made dense."""
    kind: str               # "fwd" | "rev" | "mul" | "tan" | "adj"
    lo: int
    hi: int
    cost: float             # of this step and everything below it
    split: int = -1         # mul/tan/adj: the left part is lo..split, the right split+1..hi
    outer: "Step | None" = None   # the dense J_{split+1..hi} (mul, adj)
    inner: "Step | None" = None   # the dense J_{lo..split} (mul, tan)

    @property
    def own_cost(self) -> float:
        """The cost of this step alone (its parts' excluded)."""
        below = (self.outer.cost if self.outer else 0.0) + (self.inner.cost if self.inner else 0.0)
        return self.cost - below

    def __str__(self) -> str:
        return _bracket(self)

    def steps(self):
        """This step and those below it, in the order they are evaluated."""
        for part in (self.inner, self.outer):
            if part is not None:
                yield from part.steps()
        yield self


def _segment_cost(c):
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(c, dtype=float))])
    return lambda lo, hi: float(prefix[hi + 1] - prefix[lo])


def optimal_plan(n, m, c) -> Step:
    """The cheapest evaluation of ``J_{q-1} ... J_0`` where stage ``k`` maps ``n[k]``
    values to ``m[k]`` (``n[k+1] == m[k]``) and costs ``c[k]`` per tangent or adjoint."""
    q = len(c)
    seg = _segment_cost(c)
    best = {}
    for length in range(1, q + 1):
        for lo in range(q - length + 1):
            hi = lo + length - 1
            cands = [Step("fwd", lo, hi, n[lo] * seg(lo, hi)),
                     Step("rev", lo, hi, m[hi] * seg(lo, hi))]
            for k in range(lo, hi):
                inner, outer = best[lo, k], best[k + 1, hi]
                cands.append(Step("mul", lo, hi, outer.cost + inner.cost
                                  + float(m[hi]) * m[k] * n[lo], k, outer, inner))
                cands.append(Step("tan", lo, hi, inner.cost + n[lo] * seg(k + 1, hi), k,
                                  None, inner))
                cands.append(Step("adj", lo, hi, outer.cost + m[hi] * seg(lo, k), k,
                                  outer, None))
            chosen = cands[0]
            for cand in cands[1:]:
                if cand.cost < chosen.cost * (1 - 1e-12):
                    chosen = cand
            best[lo, hi] = chosen
    return best[0, q - 1]


# ---------------------------------------------------------------- the plan

@dataclass
class JacobianPlan:
    """How ``jacobian(f, mode=...)`` evaluates the Jacobian: printable, drawable."""
    name: str
    in_type: str
    out_type: str
    stages: list
    root: Step | None
    mode: str
    note: str = ""
    cost_fwd: float = 0.0
    cost_rev: float = 0.0

    @property
    def cost(self) -> float:
        return self.root.cost if self.root is not None else 0.0

    def bracketing(self) -> str:
        return str(self.root) if self.root is not None else "0"

    def __str__(self) -> str:
        lines = [f"Jacobian plan for {self.name}: {self.in_type} -> {self.out_type} "
                 f"(mode={self.mode!r}, {len(self.stages)} stage"
                 f"{'s' if len(self.stages) != 1 else ''})"]
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.stages:
            lines.append(f"  {'stage':<6} {'maps':<28} {'FMA/vector':>12}  ops")
            for s in self.stages:
                maps = f"{type_str(s.source.shape, s.source.dtype)} -> " \
                       f"{type_str(s.target.shape, s.target.dtype)}"
                lines.append(f"  J{s.index:<5} {maps:<28} {_num(s.cost):>12}  {s.ops}")
            lines.append(f"  bracketing: {self.bracketing()}")
            lines.append("  steps, in order:")
            n = [s.n for s in self.stages]
            m = [s.m for s in self.stages]
            for st in self.root.steps():
                lines.append(f"    {_describe(st, n, m):<52} {_num(st.own_cost):>14} FMA")
        best = min(self.cost_fwd, self.cost_rev)
        lines.append(f"  estimated cost: {_num(self.cost)} FMA; all-forward {_num(self.cost_fwd)}, "
                     f"all-reverse {_num(self.cost_rev)}"
                     + (f" ({best / self.cost:.2f}x fewer than the better)"
                        if self.cost > 0 else ""))
        return "\n".join(lines)

    __repr__ = __str__

    def draw(self, path=None, ax=None):
        """A picture of the chain (one box per stage, sized by its cost) with the chosen
        bracketing drawn as nested spans below it (matplotlib: the ``draw`` extra)."""
        try:
            import matplotlib
        except ImportError:
            from .errors import UnsupportedError, with_location
            raise UnsupportedError(with_location(
                "JacobianPlan.draw needs matplotlib (pip install 'gradc[draw]'); "
                "print(plan) shows the same plan as text")) from None
        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        q = len(self.stages)
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(max(6, 1.4 * q + 2), 3.5))
        # J_q ... J_1 left to right, as the product is written
        xs = {s.index - 1: q - s.index for s in self.stages}
        for s in self.stages:
            x0 = xs[s.index - 1]
            ax.add_patch(matplotlib.patches.Rectangle((x0 + 0.08, 0), 0.84, 1, fill=True,
                                                      alpha=0.25))
            ax.text(x0 + 0.5, 0.62, f"J{s.index}", ha="center", va="center", fontsize=11)
            ax.text(x0 + 0.5, 0.3, f"{s.m}x{s.n}", ha="center", va="center", fontsize=8)
        if self.root is not None:
            depth = _depths(self.root)
            for st in self.root.steps():
                left, right = xs[st.hi], xs[st.lo] + 1
                y = -0.35 - 0.45 * depth[id(st)]
                ax.plot([left + 0.1, left + 0.1, right - 0.1, right - 0.1],
                        [y + 0.15, y, y, y + 0.15], color="k", lw=1)
                ax.text((left + right) / 2, y - 0.17, f"{st.kind}  {_num(st.own_cost)} FMA",
                        ha="center", va="center", fontsize=8)
        ax.set_xlim(-0.2, q + 0.2)
        ax.set_ylim(-0.8 - 0.45 * (max(_depths(self.root).values()) if self.root else 0), 1.2)
        ax.set_axis_off()
        ax.set_title(f"{self.name}: {self.bracketing()}", fontsize=9)
        if own and path is not None:
            fig.savefig(path, bbox_inches="tight")
            plt.close(fig)
        return ax


def _depths(root):
    """Depth of each step below the root (the root is deepest-drawn last: depth = height)."""
    out = {}

    def height(st):
        h = 0
        for part in (st.inner, st.outer):
            if part is not None:
                h = max(h, height(part) + 1)
        out[id(st)] = h
        return h
    height(root)
    return out


def _num(x) -> str:
    return f"{x:,.0f}"


def _span(lo, hi) -> str:
    return " ".join(f"J{k + 1}" for k in range(hi, lo - 1, -1))


def _bracket(st: Step) -> str:
    if st.kind in ("fwd", "rev"):
        return f"{st.kind}[{_span(st.lo, st.hi)}]"
    if st.kind == "mul":
        return f"({_bracket(st.outer)} @ {_bracket(st.inner)})"
    if st.kind == "tan":
        return f"(tan[{_span(st.split + 1, st.hi)}] @ {_bracket(st.inner)})"
    return f"({_bracket(st.outer)} @ adj[{_span(st.lo, st.split)}])"


def _describe(st: Step, n, m) -> str:
    if st.kind == "fwd":
        return f"fwd[{_span(st.lo, st.hi)}]: {n[st.lo]} tangents"
    if st.kind == "rev":
        return f"rev[{_span(st.lo, st.hi)}]: {m[st.hi]} adjoints"
    if st.kind == "mul":
        return f"product {m[st.hi]}x{m[st.split]} @ {m[st.split]}x{n[st.lo]}"
    if st.kind == "tan":
        return f"tan[{_span(st.split + 1, st.hi)}] on {n[st.lo]} columns"
    return f"adj[{_span(st.lo, st.split)}] on {m[st.hi]} rows"


def plan_graph(graph: Graph, wrt: int = 0, mode: str = "optimal", name: str = "f") -> JacobianPlan:
    """The plan for the Jacobian of ``graph``'s one output w.r.t. input ``wrt``."""
    x, y = graph.inputs[wrt], graph.outputs[0]
    in_type, out_type = type_str(x.shape, x.dtype), type_str(y.shape, y.dtype)
    stages, note = split_chain(graph, wrt)
    if not stages:
        return JacobianPlan(name, in_type, out_type, [], None, mode, note)
    n = [s.n for s in stages]
    m = [s.m for s in stages]
    c = [s.cost for s in stages]
    q = len(stages)
    total = float(sum(c))
    fwd = Step("fwd", 0, q - 1, n[0] * total)
    rev = Step("rev", 0, q - 1, m[-1] * total)
    if mode == "fwd":
        root = fwd
    elif mode == "rev":
        root = rev
    else:
        root = optimal_plan(n, m, c)
    return JacobianPlan(name, in_type, out_type, stages, root, mode, note, fwd.cost, rev.cost)


# ---------------------------------------------------------------- evaluating a plan

def _run(eqns, env):
    """Apply ``eqns`` through ``bind``, reading and writing ``env``; returns it."""
    for eqn in eqns:
        with source_line(eqn.source):
            res = bind(eqn.prim, *[a.value if isinstance(a, Lit) else env[a]
                                   for a in eqn.inputs], **eqn.params)
        env.update(zip(eqn.outputs, res if eqn.prim.multiple_results else [res]))
    return env


def _segment(stages, lo, hi, env):
    """``z_{lo-1} -> z_hi`` (flat vectors) evaluating stages lo..hi; every other value
    (constants, integer results) is read from the primal ``env``."""
    eqns = [e for s in stages[lo:hi + 1] for e in s.eqns]
    src, dst = stages[lo].source, stages[hi].target

    def segment(z):
        local = _run(eqns, ChainMap({src: np.reshape(z, src.shape)}, env))
        return np.reshape(local[dst], (-1,))
    return segment


def evaluate(plan: JacobianPlan, graph: Graph, args, wrt: int = 0):
    """The Jacobian as gradc operations on ``args`` (the Graph's inputs): a matrix of
    shape ``(size of output, size of input)``."""
    from .api import jvp, vjp, vmap
    stages = plan.stages
    env = _run(graph.eqns, dict(zip(graph.inputs, args)))
    x = graph.inputs[wrt]
    y = graph.outputs[0]
    if plan.root is None:
        return np.zeros((_size(y.shape), _size(x.shape)), y.dtype)

    def point(k):        # z_{k-1}, flat: the input of stage k (0-based)
        return np.reshape(env[stages[k].source], (-1,))

    def cast(a, dtype):  # stages of a mixed-precision chain: each in its own dtype
        return a if np.dtype(dtype_of(a)) == np.dtype(dtype) else a.astype(dtype)

    def tangents(lo, hi, columns):      # columns: (count, n_lo) -> (m_hi, count)
        seg, z = _segment(stages, lo, hi, env), point(lo)
        columns = cast(columns, stages[lo].source.dtype)
        return np.transpose(vmap(lambda t: jvp(seg, (z,), (t,))[1])(columns))

    def adjoints(lo, hi, rows):         # rows: (count, m_hi) -> (count, n_lo)
        _, pull = vjp(_segment(stages, lo, hi, env), point(lo))
        return vmap(lambda u: pull(u)[0])(cast(rows, stages[hi].target.dtype))

    def dense(st: Step):
        lo, hi, k = st.lo, st.hi, st.split
        if st.kind == "fwd":
            return tangents(lo, hi, np.eye(stages[lo].n, dtype=stages[lo].source.dtype))
        if st.kind == "rev":
            return adjoints(lo, hi, np.eye(stages[hi].m, dtype=stages[hi].target.dtype))
        if st.kind == "mul":
            a, b = dense(st.outer), dense(st.inner)
            common = np.result_type(dtype_of(a), dtype_of(b))
            return cast(a, common) @ cast(b, common)
        if st.kind == "tan":
            return tangents(k + 1, hi, np.transpose(dense(st.inner)))
        return adjoints(lo, k, dense(st.outer))
    # the dtype jacfwd gives: the output's tangents'
    return cast(dense(plan.root), y.dtype)
