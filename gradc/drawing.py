"""``gradc.draw``: a picture of a traced Graph (or of its derivative).

The Graph becomes a ``networkx.MultiDiGraph``: a node per input, per equation (labelled by
its primitive and result shape, with the printer's names of its results) and per
result; an edge per value flowing from the equation that makes it to each one that
reads it, labelled by the value's name as ``print(graph)`` shows it.  The sub-Graphs of
control-flow and solver primitives (a loop's body, a cond's branches, a solver's
``matvec``) are drawn as clusters beside the equation that owns them, joined to it by
dashed edges.

Output, chosen by the suffix of ``path``:

* ``.dot``: Graphviz text, always written (beside any picture, as ``<path>.dot``);
* ``.svg``: rendered by Graphviz's ``dot`` when installed, else laid out by networkx
  (one row per topological generation) and written directly as SVG;
* ``.png``: rendered by ``dot``, else by matplotlib; with neither installed a clear
  error says so.
"""
from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

import networkx as nx

from .errors import ArgumentError, UnsupportedError, with_location
from .ir import Graph, Lit, Var, pretty_parts, type_str

__all__ = ["draw", "drawing_graph", "to_dot"]

_SHAPES = {"input": "invhouse", "output": "house", "eqn": "box"}
_FILL = {"input": "#dbe9f6", "output": "#fde3c8", "eqn": "#f2f2f2"}


def _label_type(v) -> str:
    return type_str(tuple(v.shape), v.dtype)


def drawing_graph(graph: Graph) -> nx.MultiDiGraph:
    """The Graph as a ``networkx.MultiDiGraph`` (node attributes ``label``, ``kind``,
    ``cluster``; edge attributes ``label``, ``style``); clusters are named by the
    graph attribute ``clusters``: cluster id -> its title."""
    namer, _ = pretty_parts(graph)
    g = nx.MultiDiGraph()      # (an equation may read two results of another)
    g.graph["clusters"] = {}
    counter = [0]

    def new(label, kind, cluster):
        counter[0] += 1
        node = f"n{counter[0]}"
        g.add_node(node, label=label, kind=kind, cluster=cluster)
        return node

    def name(v):
        return namer(v) if isinstance(v, Var) else "lit"

    def add(graph, cluster, inputs_from=None):
        where = {}
        for k, v in enumerate(graph.inputs):
            if inputs_from is None:
                where[v] = new(f"{name(v)}\n{_label_type(v)}", "input", cluster)
            else:
                where[v] = new(f"{name(v)}\n{_label_type(v)}", "input", cluster)
                g.add_edge(inputs_from, where[v], label="", style="dashed")
        for eqn in graph.eqns:
            outs = ", ".join(name(v) for v in eqn.outputs)
            types = ", ".join(_label_type(v) for v in eqn.outputs)
            node = new(f"{eqn.prim.name}\n{outs}: {types}" if outs else eqn.prim.name,
                       "eqn", cluster)
            for x in eqn.inputs:
                if isinstance(x, Var) and x in where:
                    g.add_edge(where[x], node, label=name(x), style="solid")
            for v in eqn.outputs:
                where[v] = node
            subs = [(k, s) for k, s in eqn.params.items() if isinstance(s, Graph)]
            subs += [(f"{k}[{i}]", s) for k, s in eqn.params.items()
                     if isinstance(s, (tuple, list))
                     for i, s in enumerate(s) if isinstance(s, Graph)]
            for key, sub in subs:
                cid = f"c{len(g.graph['clusters']) + 1}"
                g.graph["clusters"][cid] = f"{eqn.prim.name}: {key}"
                add(sub, cluster + (cid,), inputs_from=node)
        for k, x in enumerate(graph.outputs):
            if inputs_from is not None:
                continue
            out = new(f"result {k}\n{_label_type(x)}", "output", cluster)
            if isinstance(x, Var) and x in where:
                g.add_edge(where[x], out, label=name(x), style="solid")
            elif isinstance(x, Lit):
                g.nodes[out]["label"] += f"\n= {x.value!r}"
        if inputs_from is not None:        # a sub-Graph's results: one node, its outputs
            node = new("in (" + ", ".join(name(x) for x in graph.outputs) + ")", "output",
                       cluster)
            for x in graph.outputs:
                if isinstance(x, Var) and x in where:
                    g.add_edge(where[x], node, label=name(x), style="solid")
        return where
    add(graph, ())
    return g


def to_dot(g: nx.DiGraph, title: str = "") -> str:
    """Graphviz text for a ``drawing_graph`` graph, clusters as ``subgraph cluster_*``."""
    def q(s):
        return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = ["digraph gradc {", "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10, style=filled];',
             '  edge [fontname="Helvetica", fontsize=8];']
    if title:
        lines.append(f"  label={q(title)}; labelloc=t;")
    tree: dict = {}
    for node, data in g.nodes(data=True):
        tree.setdefault(data["cluster"], []).append(node)
    paths = sorted(tree, key=len)

    def emit(prefix, pad):
        for node in tree.get(prefix, []):
            d = g.nodes[node]
            lines.append(f"{pad}{node} [label={q(d['label'])}, shape={_SHAPES[d['kind']]}, "
                         f"fillcolor={q(_FILL[d['kind']])}];")
        children = [p for p in paths if len(p) == len(prefix) + 1 and p[:len(prefix)] == prefix]
        for child in children:
            cid = child[-1]
            lines.append(f"{pad}subgraph cluster_{cid} {{")
            lines.append(f"{pad}  label={q(g.graph['clusters'][cid])}; style=dashed;")
            emit(child, pad + "  ")
            lines.append(f"{pad}}}")
    # every cluster path's ancestors must exist for emit to reach it
    for p in list(paths):
        for k in range(len(p)):
            tree.setdefault(p[:k], [])
    paths = sorted(tree, key=len)
    emit((), "  ")
    for a, b, d in g.edges(data=True):
        attrs = [f"label={q(d['label'])}"] if d.get("label") else []
        if d.get("style") == "dashed":
            attrs.append("style=dashed")
        lines.append(f"  {a} -> {b}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layout(g: nx.DiGraph) -> dict:
    """Positions: one row per topological generation, nodes spread along it."""
    pos = {}
    for row, nodes in enumerate(nx.topological_generations(g)):
        nodes = sorted(nodes, key=lambda n: int(n[1:]))
        for col, node in enumerate(nodes):
            pos[node] = (col - (len(nodes) - 1) / 2, row)
    return pos


def _svg(g: nx.DiGraph, title: str) -> str:
    pos = _layout(g)
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    W, H, mx, my = 170, 70, 100, 60
    ox, oy = -min(xs) * W + mx, my + 20

    def at(node):
        x, y = pos[node]
        return x * W + ox, y * H * 1.5 + oy
    width = (max(xs) - min(xs)) * W + 2 * mx
    height = (max(ys) - min(ys)) * H * 1.5 + 2 * my + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
           'font-family="Helvetica, Arial, sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
           'markerWidth="6" markerHeight="6" orient="auto-start-reverse">'
           '<path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>',
           f'<text x="10" y="20" font-size="13">{html.escape(title)}</text>']
    for cid, ctitle in g.graph.get("clusters", {}).items():
        members = [n for n, d in g.nodes(data=True) if cid in d["cluster"]]
        if not members:
            continue
        pts = [at(n) for n in members]
        x0, y0 = min(p[0] for p in pts) - 78, min(p[1] for p in pts) - 38
        x1, y1 = max(p[0] for p in pts) + 78, max(p[1] for p in pts) + 30
        out.append(f'<rect x="{x0:.0f}" y="{y0:.0f}" width="{x1 - x0:.0f}" '
                   f'height="{y1 - y0:.0f}" fill="none" stroke="#888" '
                   'stroke-dasharray="5,3"/>')
        out.append(f'<text x="{x0 + 4:.0f}" y="{y0 + 11:.0f}" font-size="9" '
                   f'fill="#555">{html.escape(ctitle)}</text>')
    for a, b, d in g.edges(data=True):
        (x0, y0), (x1, y1) = at(a), at(b)
        dash = ' stroke-dasharray="4,3"' if d.get("style") == "dashed" else ""
        out.append(f'<line x1="{x0:.0f}" y1="{y0 + 18:.0f}" x2="{x1:.0f}" y2="{y1 - 20:.0f}" '
                   f'stroke="#444"{dash} marker-end="url(#arrow)"/>')
        if d.get("label"):
            out.append(f'<text x="{(x0 + x1) / 2 + 4:.0f}" y="{(y0 + y1) / 2:.0f}" '
                       f'font-size="8" fill="#336">{html.escape(d["label"])}</text>')
    for node, d in g.nodes(data=True):
        x, y = at(node)
        out.append(f'<rect x="{x - 75:.0f}" y="{y - 18:.0f}" width="150" height="36" rx="4" '
                   f'fill="{_FILL[d["kind"]]}" stroke="#333"/>')
        for k, line in enumerate(d["label"].split("\n")[:3]):
            text = line if len(line) <= 30 else line[:29] + "…"
            out.append(f'<text x="{x:.0f}" y="{y - 5 + 11 * k:.0f}" font-size="9" '
                       f'text-anchor="middle">{html.escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _matplotlib_png(g: nx.DiGraph, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    pos = _layout(g)
    pos = {n: (x, -y) for n, (x, y) in pos.items()}
    rows = max((-y for _, y in pos.values()), default=0) + 1
    cols = max((len(r) for r in nx.topological_generations(g)), default=1)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * cols), max(4, 1.0 * rows)))
    colours = [_FILL[d["kind"]] for _, d in g.nodes(data=True)]
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, node_size=1800,
                           style=[d.get("style", "solid") for *_, d in g.edges(data=True)])
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_shape="s",
                           node_size=1800, edgecolors="#333")
    nx.draw_networkx_labels(g, pos, ax=ax, labels={n: d["label"] for n, d in g.nodes(data=True)},
                            font_size=6)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)


def derivative_of(f, args, target="cpu", kwargs=None):
    """``(transformation, "gradient" | "Jacobian", its arguments)``: the gradient of
    ``f`` for a scalar result, else its Jacobian by reverse mode, w.r.t. every
    floating-point argument.  With keyword arguments, or pytrees among the arguments,
    it is taken of ``f`` as a function of their leaves (``checking.flat_call``), whose
    values are the arguments to call it with (the same Graph inputs as ``f``'s)."""
    import numpy as np

    from . import api, jacobians, pytree
    from .checking import _is_leaf, flat_call
    kwargs = kwargs or {}
    if kwargs or not all(_is_leaf(a) for a in args):
        f, args, _ = flat_call(f, args, kwargs)
    args = tuple(args)
    wrt = tuple(i for i, a in enumerate(args)
                if not api._is_static(a) and np.asarray(a).dtype.kind == "f")
    if not wrt:
        raise ArgumentError(with_location(
            "no floating-point argument to differentiate with respect to"))
    argnums = wrt if len(wrt) > 1 else wrt[0]
    out = pytree.flatten(api.jit(f, target="numpy")(*args))[0]
    if len(out) == 1 and not np.ndim(out[0]):
        return api.grad(f, argnums=argnums, target=target), "gradient", args
    return jacobians.jacrev(f, argnums=argnums, target=target), "Jacobian", args


def describe(f, derivative=False) -> str:
    """What a title calls ``f``: the user's function by its name, under the
    transformations gradc wraps it in (``grad of loss``, ``vmap of f``, ``jacfwd of
    f``, ``jacfwd of jacrev of f`` for ``hessian``); ``jit`` is left out of what a
    derivative is taken of (it compiles, it does not change the function)."""
    from .symbolic import _only_star_args, users_function
    from .transformed import Transformed
    if isinstance(f, Transformed):
        inner = describe(f.fun)
        internal = _gradc_wrapper(f.fun)
        if f.kind == "jit" and (derivative or internal):
            return inner
        return f"{f.kind} of {inner}"
    if _gradc_wrapper(f) and _only_star_args(f):
        user = users_function(f)
        name = getattr(f, "__name__", "")
        base = getattr(user, "__name__", "f")
        kinds = name[:-len(base) - 1] if name.endswith("_" + base) else name
        return " of ".join(kinds.split("_") + [describe(user)])
    if hasattr(f, "fun") and callable(f.fun):        # (a sparse Jacobian)
        return describe(f.fun)
    name = getattr(f, "__qualname__", getattr(f, "__name__", type(f).__name__))
    return name.rsplit("<locals>.", 1)[-1]         # (a function defined in another)


def _gradc_wrapper(f) -> bool:
    """A function gradc defined around the user's (``jacfwd``'s ``jac``)."""
    from .errors import _in_gradc
    code = getattr(f, "__code__", None)
    return code is not None and _in_gradc(code.co_filename)


def _graph_of(f, args, kwargs, grad):
    from . import api
    from .transformed import Transformed
    from .sparsity import SparseJacobian
    if isinstance(f, Graph):
        return f, "graph"
    if not callable(f):
        raise ArgumentError(with_location(
            f"gradc.draw expects a function or a Graph, got a {type(f).__name__}"))
    if isinstance(f, SparseJacobian):       # (what it runs: its compressed products)
        what = "hessian" if f.hessian else "jacobian"
        if grad:
            raise UnsupportedError(with_location(
                f"gradc.draw: gradc does not differentiate a sparse {what} (a scipy.sparse "
                f"matrix of numbers); draw it without grad=True, or the dense "
                f"gradc.{what}(f) with it"))
        if kwargs:
            raise ArgumentError(with_location(
                f"gradc.draw: a sparse {what} takes its arguments positionally"))
        col = f.coloring(*args)
        fn, f_args = f.compressed(*args)
        return fn.specialise(*f_args).graph, (
            f"sparse {what} of {describe(f.fun)}: {col.ncolors} compressed products")
    if grad:
        # (the derivative of f, whatever f is: a plain function, jit(f), or a
        # transformation, whose derivative is the next order)
        d, what, d_args = derivative_of(f, args, "numpy", kwargs)
        return d.specialise(*d_args).graph, f"{what} of {describe(f, True)}"
    if isinstance(f, Transformed):
        return f.specialise(*args, **kwargs).graph, describe(f)
    return api.make_graph(f)(*args, **kwargs), describe(f)


def draw(f, *args, path="graph.svg", grad=False, **kwargs) -> Path:
    """Draw the Graph of ``f`` at ``args`` (its derivative with ``grad=True``: of
    ``jit(f)``, ``f``'s; of a transformation, the next order; ``f`` may also be a
    Graph) to ``path`` (``.svg``, ``.png`` or
    ``.dot``; missing folders are created); the Graphviz text is written beside a
    picture as ``<path>.dot``.  Returns the path of the picture."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png", ".dot"):
        raise ArgumentError(with_location(
            f"gradc.draw: path must end in .svg, .png or .dot, got {str(path)!r}"))
    graph, title = _graph_of(f, args, kwargs, grad)
    g = drawing_graph(graph)
    dot_text = to_dot(g, title)
    path.parent.mkdir(parents=True, exist_ok=True)      # (as the user would expect)
    dot_path = path if suffix == ".dot" else path.with_name(path.name + ".dot")
    dot_path.write_text(dot_text)
    if suffix == ".dot":
        return path
    exe = shutil.which("dot")
    if exe:
        done = subprocess.run([exe, f"-T{suffix[1:]}", "-o", str(path)], input=dot_text,
                              text=True, capture_output=True)
        if done.returncode == 0:
            return path
    if suffix == ".svg":
        path.write_text(_svg(g, title))
        return path
    try:
        _matplotlib_png(g, title, path)
    except ImportError:
        raise UnsupportedError(with_location(
            f"gradc.draw: a .png needs Graphviz's dot program or matplotlib (pip install "
            f"matplotlib); the Graphviz text is in {dot_path}, or draw to .svg")) from None
    return path
