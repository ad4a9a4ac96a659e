"""``passes.sums.factor_sums``: sums of one linear map's terms (pads of one window,
reductions over the same axes, ...) become the map of one sum, with the values the graph
had (the compiled targets run it before fusion)."""
from __future__ import annotations

import numpy as np

import gradc
from gradc.interpret import run
from gradc.passes import simplify
from gradc.passes.sums import factor_sums

from test_fuse import _tanh_chain as _chain


def _pads(graph):
    return _count(graph, "pad")


def _count(graph, name):
    return sum(e.prim.name == name for e in graph.eqns)


def test_one_pad_per_window_in_an_unrolled_loops_gradient():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(6), rng.uniform(0.5, 1.0, 4)
    graph = simplify(gradc.make_graph(gradc.grad(_chain(40), argnums=1))(x, w))
    merged = factor_sums(graph)
    assert _pads(graph) == 40 and _pads(merged) == 4    # one per weight, not per step
    # each piece was a reduction (w[i % 4] is broadcast against the state): one
    # reduction per weight too, not one accumulator per step in the fused loop
    assert _count(graph, "reduce_sum") == 40 and _count(merged, "reduce_sum") == 4
    np.testing.assert_allclose(run(merged, x, w)[0], run(graph, x, w)[0], rtol=1e-14)
    got = gradc.grad(_chain(40), argnums=1, target="cpu")(x, w)
    np.testing.assert_allclose(got, run(graph, x, w)[0], rtol=1e-13)


def test_overlapping_windows_and_other_terms_keep_their_values():
    def f(x):      # windows [0:5] twice, [1:6] twice, [2:7] once, and x itself
        return np.sum(np.sin(x[:5]) * x[1:6] + x[:5] ** 2 * x[2:7]) + \
            np.sum(np.cos(x)) * x[1:6].sum()

    x = np.random.default_rng(1).standard_normal(7)
    graph = simplify(gradc.make_graph(gradc.grad(f))(x))
    merged = factor_sums(graph)
    assert _pads(merged) < _pads(graph)
    np.testing.assert_allclose(run(merged, x)[0], run(graph, x)[0], rtol=1e-14)
    eps = 1e-6
    fd = np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(7)])
    np.testing.assert_allclose(gradc.grad(f, target="cpu")(x), fd, rtol=1e-7, atol=1e-9)


def test_nothing_to_merge_returns_the_graph_itself():
    x = np.arange(5.0)
    graph = simplify(gradc.make_graph(gradc.grad(lambda x: np.sum(x[1:] * x[:-1])))(x))
    assert factor_sums(graph) is graph


def test_reductions_transposes_and_broadcasts_of_one_kind_are_summed_first():
    def f(x, a, b):
        # a and b are broadcast against x (their cotangents: reductions over axis 0),
        # x.T is read twice (transposes), and the two x[:, :1] broadcasts' cotangent
        return np.sum(np.sin(x * a) + np.cos(x * b) * a + (x.T @ x.T.T) * x[:, :1]
                      + np.tanh(x[:, :1] + b))

    rng = np.random.default_rng(3)
    x, a, b = rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4)
    grad = gradc.grad(f, argnums=(0, 1, 2))
    graph = simplify(gradc.make_graph(grad)(x, a, b))
    merged = factor_sums(graph)
    assert _count(merged, "reduce_sum") < _count(graph, "reduce_sum")
    for got, want in zip(run(merged, x, a, b), run(graph, x, a, b)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    eps = 1e-6
    for i, arg in enumerate((x, a, b)):
        def partial(v, i=i):
            args = [x, a, b]
            args[i] = v
            return f(*args)
        fd = np.array([(partial(arg + eps * e) - partial(arg - eps * e)) / (2 * eps)
                       for e in np.eye(arg.size).reshape((arg.size,) + arg.shape)])
        np.testing.assert_allclose(gradc.grad(f, argnums=(0, 1, 2), target="cpu")(x, a, b)[i],
                                   fd.reshape(arg.shape), rtol=1e-6, atol=1e-8)


def test_maps_of_other_operand_types_or_parameters_stay_apart():
    # reductions of a (3,) and of a (2,) value, and over different axes: nothing merges
    def f(x, y):
        return np.sum(x) + np.sum(y) + np.sum(x * x, axis=0).sum()

    x, y = np.arange(6.0).reshape(2, 3), np.arange(2.0)
    graph = simplify(gradc.make_graph(f)(x, y))
    assert factor_sums(graph) is graph      # (sum(y) and .sum(): axes (0,), of (2,), (3,))
    np.testing.assert_allclose(run(graph, x, y)[0], f(x, y), rtol=1e-15)
