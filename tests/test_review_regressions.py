"""Regression tests for defects found in review: stale caches, aliasing of results,
keyword arguments, big literals, and error types."""
import collections
import functools

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

    with pytest.raises(gradc.ConcretizationError, match=r"gradc\.asarray\(table\)\[i\]"):
        gradc.grad(loss)(np.ones((2, 3)), np.array([0, 2]))

    def fixed(w, y):
        return np.sum(w * (y[:, None] == np.arange(3)))

    def gathered(w, y):
        return np.sum(w * gradc.asarray(np.eye(3))[y])

    for f in (fixed, gathered):
        assert np.allclose(gradc.grad(f)(np.ones((2, 3)), np.array([0, 2])),
                           [[1, 0, 0], [0, 0, 1]])


class _Model:
    def __init__(self):
        self.w, self.layers = np.ones(2), [np.ones(2)]

    def loss(self, x):
        return np.sum(x * self.w) + np.sum(x * self.layers[0])

    def __call__(self, x):
        return 2.0 * np.sum(x * self.w)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_cache_sees_objects_containers_defaults_and_partials(target):
    """(QA: a model's attributes, a global dict's items, a default array and a partial's
    arguments were keyed by identity alone: changing them gave the old derivative.)"""
    m = _Model()
    g = gradc.grad(m.loss, target=target)
    np.testing.assert_allclose(g(X), [2.0, 2.0])
    m.w = np.full(2, 3.0)                                   # an attribute rebound
    np.testing.assert_allclose(g(X), [4.0, 4.0])
    m.layers[0][:] = 5.0                                    # an array in a list mutated
    np.testing.assert_allclose(g(X), [8.0, 8.0])
    c = gradc.grad(m, target=target)                        # a callable object
    np.testing.assert_allclose(c(X), [6.0, 6.0])
    m.w = np.full(2, 7.0)
    np.testing.assert_allclose(c(X), [14.0, 14.0])

    params = {"a": {"w": 1.0}}
    d = gradc.grad(lambda x: np.sum(x * params["a"]["w"]), target=target)
    np.testing.assert_allclose(d(X), [1.0, 1.0])
    np.testing.assert_allclose(d(X), [1.0, 1.0])            # (the fast path, if any)
    params["a"]["w"] = 6.0                                   # a nested dict's item
    np.testing.assert_allclose(d(X), [6.0, 6.0])

    def h(x, w=np.ones(2)):
        return np.sum(x * w)
    e = gradc.grad(h, target=target)
    np.testing.assert_allclose(e(X), [1.0, 1.0])
    h.__defaults__[0][:] = 2.0                              # a default array mutated
    np.testing.assert_allclose(e(X), [2.0, 2.0])

    p = functools.partial(lambda w, x: np.sum(w * x), np.ones(2))
    q = gradc.grad(p, target=target)
    np.testing.assert_allclose(q(X), [1.0, 1.0])
    p.args[0][:] = 9.0                                       # a partial's argument
    np.testing.assert_allclose(q(X), [9.0, 9.0])

    pair = collections.namedtuple("Pair", "w b")(np.ones(2), collections.OrderedDict(b=1.0))
    t = gradc.grad(lambda x: np.sum(x * pair.w) * pair.b["b"], target=target)
    np.testing.assert_allclose(t(X), [1.0, 1.0])
    pair.w[:] = 2.0                                          # a namedtuple's array
    pair.b["b"] = 3.0                                        # an OrderedDict's item
    np.testing.assert_allclose(t(X), [6.0, 6.0])

    scales = [1.0, 2.0]
    s = gradc.grad(lambda x: sum(np.sum(x * c) for c in scales), target=target)
    np.testing.assert_allclose(s(X), [3.0, 3.0])
    np.testing.assert_allclose(s(X), [3.0, 3.0])
    scales.append(3.0)                                       # a list iterated grew
    np.testing.assert_allclose(s(X), [6.0, 6.0])


TEMPERATURE = 1.0


class _Tempered:
    scale = 1.0                                   # (a class attribute)

    def __init__(self):
        self.w = np.ones(2)

    def act(self, z):
        return np.tanh(z / TEMPERATURE)           # (a method reading a global)

    @staticmethod
    def shift():
        return 2.0 * TEMPERATURE

    def loss(self, x):
        return np.sum(self.act(self.w * x)) * self.scale + self.shift() * np.sum(x)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_cache_sees_class_attributes_methods_globals_and_module_attributes(target):
    """(QA) what a method reads through its class (a class attribute, another method
    reading a global, a static method) and the attributes of a user's module
    (``config.SCALE``) were not in the key: changing them gave the old derivative."""
    import sys
    import types
    global TEMPERATURE
    m = _Tempered()
    g = gradc.grad(m.loss, target=target)

    def want():
        return (1 - np.tanh(X / TEMPERATURE) ** 2) / TEMPERATURE * _Tempered.scale \
            + 2.0 * TEMPERATURE
    try:
        np.testing.assert_allclose(g(X), want())
        np.testing.assert_allclose(g(X), want())            # (the fast path, if any)
        TEMPERATURE = 0.5
        np.testing.assert_allclose(g(X), want())
        _Tempered.scale = 3.0
        np.testing.assert_allclose(g(X), want())
    finally:
        TEMPERATURE, _Tempered.scale = 1.0, 1.0

    config = types.ModuleType("gradc_test_config")
    config.SCALE, config.W = 1.0, np.ones(2)
    sys.modules["gradc_test_config"] = config
    try:
        exec("import gradc_test_config as cfg", globals())
        h = gradc.grad(lambda x: np.sum(x * cfg.W) * cfg.SCALE, target=target)  # noqa: F821
        np.testing.assert_allclose(h(X), [1.0, 1.0])
        np.testing.assert_allclose(h(X), [1.0, 1.0])
        config.SCALE = 3.0                                   # a module attribute rebound
        np.testing.assert_allclose(h(X), [3.0, 3.0])
        config.W[0] = 9.0                                    # ... and one mutated
        np.testing.assert_allclose(h(X), [27.0, 3.0])
    finally:
        del sys.modules["gradc_test_config"]
        globals().pop("cfg", None)


def test_a_list_the_function_appends_to_does_not_retrace_it():
    """What tracing changes (a log of calls) is left out of the key: traced once per
    signature still, on the general path and the fast one."""
    calls, log = [], {}

    def f(x):
        calls.append(1)
        log["last"] = len(calls)
        return np.sum(x ** 2)
    g = gradc.grad(f, target="cpu")
    for _ in range(4):
        np.testing.assert_allclose(g(X), 2 * X)
    assert len(calls) == 1
