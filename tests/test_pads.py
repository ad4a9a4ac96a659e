"""``passes.pads.merge_pads``: sums of pads of one window become one pad, with the
values the graph had (the compiled targets run it before fusion)."""
from __future__ import annotations

import numpy as np

import gradc
from gradc.interpret import run
from gradc.passes import simplify
from gradc.passes.pads import merge_pads

from test_fuse import _tanh_chain as _chain


def _pads(graph):
    return sum(e.prim.name == "pad" for e in graph.eqns)


def test_one_pad_per_window_in_an_unrolled_loops_gradient():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(6), rng.uniform(0.5, 1.0, 4)
    graph = simplify(gradc.make_graph(gradc.grad(_chain(40), argnums=1))(x, w))
    merged = merge_pads(graph)
    assert _pads(graph) == 40 and _pads(merged) == 4    # one per weight, not per step
    # (each element receives its own terms in their order: the same bits)
    assert np.array_equal(run(merged, x, w)[0], run(graph, x, w)[0])
    got = gradc.grad(_chain(40), argnums=1, target="cpu")(x, w)
    np.testing.assert_allclose(got, run(graph, x, w)[0], rtol=1e-13)


def test_overlapping_windows_and_other_terms_keep_their_values():
    def f(x):      # windows [0:5] twice, [1:6] twice, [2:7] once, and x itself
        return np.sum(np.sin(x[:5]) * x[1:6] + x[:5] ** 2 * x[2:7]) + \
            np.sum(np.cos(x)) * x[1:6].sum()

    x = np.random.default_rng(1).standard_normal(7)
    graph = simplify(gradc.make_graph(gradc.grad(f))(x))
    merged = merge_pads(graph)
    assert _pads(merged) < _pads(graph)
    np.testing.assert_allclose(run(merged, x)[0], run(graph, x)[0], rtol=1e-14)
    eps = 1e-6
    fd = np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(7)])
    np.testing.assert_allclose(gradc.grad(f, target="cpu")(x), fd, rtol=1e-7, atol=1e-9)


def test_nothing_to_merge_returns_the_graph_itself():
    x = np.arange(5.0)
    graph = simplify(gradc.make_graph(gradc.grad(lambda x: np.sum(x[1:] * x[:-1])))(x))
    assert merge_pads(graph) is graph
