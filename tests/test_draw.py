"""``gradc.draw``: the Graph as networkx, DOT text, SVG and PNG files that parse."""
from __future__ import annotations

import importlib.util
import xml.dom.minidom

import numpy as np
import pytest

import gradc
from gradc.drawing import to_dot, drawing_graph
from gradc.errors import ArgumentError


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def looped(x):
    return gradc.while_loop(lambda c: c[1] < 3, lambda c: (np.sin(c[0]), c[1] + 1),
                            (x, 0))[0].sum()


def test_networkx_model_follows_the_ir():
    x = np.array([0.5, -1.0, 2.0])
    graph = gradc.make_graph(rosen)(x)
    g = drawing_graph(graph)
    kinds = [d["kind"] for _, d in g.nodes(data=True)]
    assert kinds.count("input") == 1 and kinds.count("output") == 1
    assert kinds.count("eqn") == len(graph.eqns)
    labels = " ".join(d["label"] for _, d in g.nodes(data=True))
    for eqn in graph.eqns:
        assert eqn.prim.name in labels
    # every value read is an edge from the equation that makes it
    reads = sum(1 for e in graph.eqns for v in e.inputs if isinstance(v, gradc.Var))
    assert g.number_of_edges() == reads + 1           # + the result


def test_dot_has_clusters_for_loop_bodies(tmp_path):
    x = np.array([0.5, -1.0, 2.0])
    path = gradc.draw(looped, x, path=tmp_path / "loop.dot")
    text = path.read_text()
    assert text.startswith("digraph gradc {") and text.rstrip().endswith("}")
    assert text.count("subgraph cluster_") == 2          # the condition and the body
    assert "while_loop: branches[1]" in text and "sin" in text
    assert text.count("{") == text.count("}")


def test_svg_and_png_files_parse(tmp_path):
    x = np.array([0.5, -1.0, 2.0])
    svg = gradc.draw(rosen, x, path=tmp_path / "g.svg", grad=True)
    doc = xml.dom.minidom.parse(str(svg))
    assert doc.documentElement.tagName == "svg"
    texts = [t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild]
    assert any("gradient of rosen" in t for t in texts)
    assert (tmp_path / "g.svg.dot").read_text().startswith("digraph")
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(gradc.UnsupportedError, match="matplotlib"):
            gradc.draw(rosen, x, path=tmp_path / "g.png")
        return
    png = gradc.draw(rosen, x, path=tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_of_a_transformation_and_bad_paths(tmp_path):
    x = np.array([0.5, -1.0, 2.0])
    dot = to_dot(drawing_graph(gradc.grad(rosen, target="numpy").graph(x)), "t")
    assert "pad" in dot and "result 0" in dot
    with pytest.raises(ArgumentError, match=".svg, .png or .dot"):
        gradc.draw(rosen, x, path=tmp_path / "g.gif")


def test_draw_creates_missing_folders(tmp_path):
    """(QA: a path in a folder that does not exist was a FileNotFoundError.)"""
    x = np.array([0.5, -1.0, 2.0])
    for name in ("g.svg", "g.dot"):
        path = gradc.draw(rosen, x, path=tmp_path / "new" / "deeper" / name)
        assert path == tmp_path / "new" / "deeper" / name
        text = (path if name.endswith(".dot") else path.with_name(name + ".dot")).read_text()
        assert text.startswith("digraph gradc {") and "reduce_sum" in text
    assert "<svg" in (tmp_path / "new" / "deeper" / "g.svg").read_text()[:500]


def test_titles_name_the_users_function(tmp_path):
    """(QA: ``draw(gradc.jit(f), grad=True)`` drew f's primal Graph titled "derivative
    (jit) of f"; jacfwd's title was "jit of jacfwd_f".)"""
    def energy(x):
        return np.sum(np.sin(x))

    def title(f, grad=False):
        text = gradc.draw(f, np.array([0.5, 1.0]), path=tmp_path / "t.dot", grad=grad
                          ).read_text()
        return text.split('label="', 1)[1].split('"', 1)[0], text
    got, text = title(gradc.jit(energy), grad=True)
    assert got == "gradient of energy"
    assert "cos" in text                    # the derivative's Graph, not the primal's
    assert title(energy, grad=True)[0] == "gradient of energy"
    assert title(gradc.jit(energy))[0] == "jit of energy"
    assert title(gradc.grad(energy))[0] == "grad of energy"
    got, text = title(gradc.grad(energy), grad=True)     # the derivative of grad(f)
    assert got == "Jacobian of grad of energy" and "cos" in text and "sin" in text
    assert title(gradc.jacfwd(np.sin))[0] == "jacfwd of sin"
    assert title(gradc.hessian(energy))[0] == "jacfwd of jacrev of energy"


def test_draw_the_derivative_with_pytree_and_keyword_arguments(tmp_path):
    """(QA: ``grad=True`` with a dict argument found "no floating-point argument", and a
    keyword argument was dropped: "missing 1 required positional argument".)"""
    def loss(p, *, scale):
        return scale * np.sum(np.sin(p["a"]) * p["b"])
    x = np.array([0.5, 1.0])
    text = gradc.draw(loss, {"a": x, "b": x + 1}, scale=2.0, path=tmp_path / "g.dot",
                      grad=True).read_text()
    assert 'label="gradient of loss"' in text and "cos" in text
    # three inputs (p['a'], p['b'], scale) and the gradient's three results
    assert text.count("shape=invhouse") == 3 and text.count("shape=house") == 3

    def vec(x, *, s):
        return np.tanh(x) * s
    text = gradc.draw(vec, x, s=3.0, path=tmp_path / "j.dot", grad=True).read_text()
    assert 'label="Jacobian of vec"' in text and text.count("shape=house") == 2


def test_inspecting_a_sparse_jacobian(tmp_path):
    """(QA: show, draw, make_graph and to_sympy of ``gradc.jacobian(f, sparse=True)``
    failed with a ConcretizationError advising stop_gradient.)  The inspectors show its
    compressed products, to_sympy gives the sparse matrix's expressions, and tracing it
    says why it cannot be traced."""
    import io

    import sympy as sp

    def f(x):
        return np.sin(x) * x[::-1]
    x = np.array([0.5, 1.0, 2.0])
    sj = gradc.jacobian(f, sparse=True)
    M = gradc.to_sympy(sj)(x)
    x0, x1, x2 = gradc.to_sympy(sj).symbols(x)[0]
    assert isinstance(M, sp.SparseMatrix) and M.shape == (3, 3)
    assert M == sp.Matrix([[x2 * sp.cos(x0), 0, sp.sin(x0)],
                           [0, x1 * sp.cos(x1) + sp.sin(x1), 0],
                           [sp.sin(x2), 0, x0 * sp.cos(x2)]])
    at_x = np.array(M.subs({x0: x[0], x1: x[1], x2: x[2]}).evalf(), float)
    np.testing.assert_allclose(at_x, sj(x).toarray(), rtol=1e-14)

    rosen_h = gradc.hessian(rosen, sparse=True)
    H = gradc.to_sympy(rosen_h)(np.ones(4))
    a = gradc.to_sympy(rosen_h).symbols(np.ones(4))[0]
    assert H[1, 1] == 1200 * a[1] ** 2 - 400 * a[2] + 202 and H[0, 2] == 0
    assert H == sp.hessian(sp.Add(*[100 * (a[i + 1] - a[i] ** 2) ** 2 + (1 - a[i]) ** 2
                                    for i in range(3)]), list(a))
    text = gradc.draw(rosen_h, np.ones(5), path=tmp_path / "h.dot").read_text()
    assert 'label="sparse hessian of rosen: 3 compressed products"' in text
    assert 'label="a\\nf64[3,5]"' in text         # the seeds: 3 colours of 5 columns
    out = io.StringIO()
    gradc.show(rosen_h, np.ones(5), file=out)
    assert "3 colours for 5 columns" in out.getvalue()
    assert "{ lambda a:f64[3,5] b:f64[5] ." in out.getvalue()
    for trace in (lambda: gradc.make_graph(sj)(x), lambda: gradc.jit(lambda x: sj(x))(x)):
        with pytest.raises(gradc.UnsupportedError, match="returns a scipy.sparse matrix"):
            trace()
    with pytest.raises(gradc.UnsupportedError, match="does not differentiate a sparse"):
        gradc.draw(sj, x, path=tmp_path / "j.dot", grad=True)
