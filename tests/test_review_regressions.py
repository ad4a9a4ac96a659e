"""Regression tests for defects found in review: stale caches, aliasing of results,
keyword arguments, big literals, and error types."""
import numpy as np
import pytest

import gradc

X = np.array([1.0, 2.0])


def test_cache_sees_rebound_and_mutated_globals():
    global W_GLOBAL
    W_GLOBAL = np.array([1.0, 1.0])
    g = gradc.grad(lambda x: np.sum(W_GLOBAL * x ** 2))
    assert np.allclose(g(X), [2.0, 4.0])
    W_GLOBAL[:] = 10.0                      # mutated in place
    assert np.allclose(g(X), [20.0, 40.0])
    W_GLOBAL = np.full(2, 100.0)            # rebound
    assert np.allclose(g(X), [200.0, 400.0])


def test_cache_sees_closures_and_helpers():
    scale = 1.0

    def helper(x):
        return np.sum(scale * x ** 2)

    g = gradc.grad(lambda x: helper(x))
    assert np.allclose(g(X), [2.0, 4.0])
    scale = 5.0
    assert np.allclose(g(X), [10.0, 20.0])
    _, t = gradc.jvp(helper, (X,), (np.ones(2),))
    assert np.isclose(t, 30.0)


def test_mutating_a_result_does_not_change_the_next_one():
    g = gradc.grad(lambda x: np.sum(x * 3.0))
    a = g(np.ones(3))
    a *= 100
    assert np.allclose(g(np.ones(3)), 3.0)


def test_keyword_arguments_are_traced():
    calls = []

    def f(a, w=None, c=1.0):
        calls.append(1)
        return c * np.sum(a * w)

    g = gradc.grad(f)
    assert np.allclose(g(X, w=np.array([2.0, 3.0])), [2.0, 3.0])
    for c in (0.5, 1.5, 2.5):
        assert np.allclose(g(X, w=np.array([2.0, 3.0]), c=c), [2.0 * c, 3.0 * c])
    assert len(calls) == 2        # one trace without c, one with c (a traced float)


def test_derived_graphs_hold_no_big_literals():
    x = np.ones(200_000)
    for f in (lambda x: np.sum(x * 3.0), lambda x: np.mean(x),
              lambda x: np.sum(np.concatenate([x, np.ones(5)]))):
        graph = gradc.make_graph(gradc.grad(f))(x)
        sizes = [a.value.size for e in graph.eqns for a in e.inputs
                 if isinstance(a, gradc.Lit)]
        sizes += [a.value.size for a in graph.outputs if isinstance(a, gradc.Lit)]
        assert max(sizes, default=0) < 1000
    assert np.allclose(gradc.grad(lambda x: np.sum(x * 3.0))(x), 3.0)


def test_float32_constant_functions_keep_dtype():
    g = gradc.grad(lambda x: np.sum(np.log2(x) + np.log10(x) + np.exp2(x)))(
        np.ones(2, np.float32))
    assert g.dtype == np.float32
    assert np.allclose(g, 1 / np.log(2) + 1 / np.log(10) + 2 * np.log(2), rtol=1e-6)


def test_einsum_implicit_output_keeps_ellipsis():
    s = np.random.default_rng(0).normal(size=(2, 3, 3))
    out = gradc.make_graph(lambda a: np.einsum("...ij,...jk", a, a))(s).outputs[0]
    assert out.shape == (2, 3, 3)


def test_fmax_ignores_nan():
    x = np.array([np.nan, 1.0])
    assert np.allclose(gradc.grad(lambda x: np.sum(np.fmax(x, 0.5)))(x), [0.0, 1.0])
    graph = gradc.make_graph(lambda x: np.sum(np.fmax(x, 0.5)))(x)
    assert np.isclose(gradc.eval_graph(graph, [x])[0], 1.5)


@pytest.mark.parametrize("f, arg, error", [
    (lambda x: np.sum(x[np.array([10])]), np.ones(3), gradc.EvaluationError),
    (lambda x: np.sum(np.linalg.inv(x)), np.ones((2, 3)), gradc.ShapeError),
    (lambda x: np.sum(np.linalg.solve(x, np.ones(2))), np.ones((2, 2)), gradc.EvaluationError),
    (lambda x: np.sum(np.einsum("i->j", x)), np.ones(3), gradc.ShapeError),
    (lambda z: np.abs(z) ** 2, 1 + 2j, gradc.ArgumentError),
])
def test_bad_input_raises_a_gradc_error_with_the_line(f, arg, error):
    with pytest.raises(error) as info:
        gradc.grad(f)(arg)
    assert "test_review_regressions.py" in str(info.value)


def test_round_and_divmod_on_traced_values():
    g = gradc.grad(lambda x: round(x) * x + divmod(x, 2.5)[1])(3.2)
    assert np.isclose(g, 4.0)


def _through_slice(x):
    y = x[1:]
    y[0] = 10.0
    return np.sum(x ** 2)


def _through_reshape(x):
    a = x.reshape(2, 2)
    a[0, 0] = 0.0
    return np.sum(x ** 2 * np.arange(1, 5))


def _through_transpose_and_row(x):
    a = x.reshape(2, 2)
    a.T[0, 1] = 3.0 * x[0]
    row = a[1]
    row += 1.0
    return np.sum(x ** 3)


@pytest.mark.parametrize("f", [_through_slice, _through_reshape, _through_transpose_and_row])
def test_writes_through_views_reach_the_base(f):
    from gradc.testing import numerical_grad
    x = np.array([1.0, 2.0, 3.0, 4.0])
    expected = f(x.copy())                       # NumPy's own semantics
    graph = gradc.make_graph(f)(x)
    assert np.isclose(gradc.eval_graph(graph, [x])[0], expected)
    assert np.allclose(gradc.grad(f)(x), numerical_grad(lambda z: f(z.copy()), x))


def test_traced_labels_indexing_a_constant_explains_the_fix():
    def loss(w, y):
        return np.sum(w * np.eye(3)[y])

    with pytest.raises(gradc.ConcretizationError, match="one-hot"):
        gradc.grad(loss)(np.ones((2, 3)), np.array([0, 2]))

    def fixed(w, y):
        return np.sum(w * (y[:, None] == np.arange(3)))

    assert np.allclose(gradc.grad(fixed)(np.ones((2, 3)), np.array([0, 2])),
                       [[1, 0, 0], [0, 0, 1]])
