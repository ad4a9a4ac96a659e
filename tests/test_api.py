"""The public API: grad, value_and_grad, jvp, vjp, stop_gradient, make_graph, pytrees,
higher order, nesting with closures, and caching."""
import re
import warnings

import numpy as np
import pytest

import gradc
from gradc.testing import numerical_grad as fd_grad

RNG = np.random.default_rng(1)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


# ---------------------------------------------------------------- grad

def test_grad_of_rosenbrock_matches_analytic():
    x = np.array([0.5, -1.0, 2.0])
    g = gradc.grad(rosen)(x)
    expected = np.zeros(3)
    expected[:-1] += -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    expected[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    np.testing.assert_allclose(g, expected, rtol=1e-12)
    assert isinstance(g, np.ndarray) and g.shape == (3,)


def test_grad_as_decorator_and_with_arguments():
    @gradc.grad
    def energy(a, b):
        return np.sin(a * b) + a ** 2

    assert energy(0.3, 0.5) == pytest.approx(0.5 * np.cos(0.15) + 0.6, rel=1e-12)

    @gradc.grad(argnums=1)
    def energy_b(a, b):
        return np.sin(a * b) + a ** 2

    assert energy_b(0.3, 0.5) == pytest.approx(0.3 * np.cos(0.15), rel=1e-12)


def test_argnums_int_and_tuple():
    def f(x, y, z):
        return np.sum(x * y ** 2) + np.sum(z) * x[0]

    x, y, z = RNG.normal(size=3), RNG.normal(size=3), RNG.normal(size=2)
    gy = gradc.grad(f, argnums=1)(x, y, z)
    np.testing.assert_allclose(gy, 2 * x * y)
    gx, gz = gradc.grad(f, argnums=(0, 2))(x, y, z)
    np.testing.assert_allclose(gx, y ** 2 + np.array([np.sum(z), 0, 0]))
    np.testing.assert_allclose(gz, np.full(2, x[0]))
    (g1,) = gradc.grad(f, argnums=(1,))(x, y, z)
    np.testing.assert_allclose(g1, gy)


def test_has_aux():
    def loss(w, x):
        pred = x @ w
        return np.sum(pred ** 2), {"pred": pred, "n": 3}

    w, x = RNG.normal(size=2), RNG.normal(size=(3, 2))
    g, aux = gradc.grad(loss, has_aux=True)(w, x)
    np.testing.assert_allclose(g, 2 * x.T @ (x @ w))
    np.testing.assert_allclose(aux["pred"], x @ w)
    assert aux["n"] == 3
    (value, aux2), g2 = gradc.value_and_grad(loss, has_aux=True)(w, x)
    assert value == pytest.approx(np.sum((x @ w) ** 2))
    np.testing.assert_allclose(g2, g)
    np.testing.assert_allclose(aux2["pred"], x @ w)


def test_value_and_grad():
    x = RNG.normal(size=4)
    v, g = gradc.value_and_grad(rosen)(x)
    assert v == pytest.approx(rosen(x), rel=1e-14)
    np.testing.assert_allclose(g, fd_grad(rosen, x), rtol=1e-6, atol=1e-6)
    v, g = gradc.value_and_grad(lambda a: a ** 3)(2.0)
    assert type(v) in (float, np.float64) and v == 8.0
    assert type(g) is float and g == 12.0


def test_pytree_arguments():
    params = {"w": RNG.normal(size=(3, 2)), "b": [RNG.normal(size=2), 0.5],
              "meta": (RNG.normal(size=3), 4)}

    def f(p):
        h = np.tanh(p["meta"][0] @ p["w"] + p["b"][0]) * p["b"][1]
        return np.sum(h ** 2) * p["meta"][1]

    g = gradc.grad(f)(params)
    assert set(g) == {"w", "b", "meta"}
    assert isinstance(g["b"], list) and isinstance(g["meta"], tuple)
    assert g["meta"][1] is None                     # an int leaf is static: no gradient
    assert type(g["b"][1]) is float

    def along(path, x):
        p = {"w": params["w"], "b": list(params["b"]), "meta": params["meta"]}
        if path == "w":
            p["w"] = x
        elif path == "b0":
            p["b"][0] = x
        elif path == "b1":
            p["b"][1] = float(x)
        else:
            p["meta"] = (x, 4)
        return f(p)

    np.testing.assert_allclose(g["w"], fd_grad(lambda x: along("w", x), params["w"]), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(g["b"][0], fd_grad(lambda x: along("b0", x), params["b"][0]),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g["b"][1], fd_grad(lambda x: along("b1", x), 0.5), rtol=1e-6)
    np.testing.assert_allclose(g["meta"][0],
                               fd_grad(lambda x: along("meta", x), params["meta"][0]), rtol=1e-6,
                               atol=1e-9)


def test_pytree_outputs_with_jvp_and_vjp():
    def f(x, y):
        return {"s": np.sin(x) * y, "pair": (x ** 2, [np.sum(y)])}

    x, y = RNG.normal(size=3), RNG.normal(size=3)
    tx, ty = RNG.normal(size=3), RNG.normal(size=3)
    out, tout = gradc.jvp(f, (x, y), (tx, ty))
    np.testing.assert_allclose(out["s"], np.sin(x) * y)
    np.testing.assert_allclose(tout["s"], np.cos(x) * tx * y + np.sin(x) * ty)
    np.testing.assert_allclose(tout["pair"][0], 2 * x * tx)
    np.testing.assert_allclose(tout["pair"][1][0], np.sum(ty))

    out, vjp_fn = gradc.vjp(f, x, y)
    ct = {"s": RNG.normal(size=3), "pair": (RNG.normal(size=3), [1.5])}
    cx, cy = vjp_fn(ct)
    np.testing.assert_allclose(cx, ct["s"] * np.cos(x) * y + ct["pair"][0] * 2 * x)
    np.testing.assert_allclose(cy, ct["s"] * np.sin(x) + 1.5)
    # <ct, J t> == <J^T ct, t>
    lhs = np.sum(ct["s"] * tout["s"]) + np.sum(ct["pair"][0] * tout["pair"][0]) + \
        1.5 * tout["pair"][1][0]
    assert lhs == pytest.approx(np.sum(cx * tx) + np.sum(cy * ty), rel=1e-12)


def test_vjp_rejects_cotangent_of_wrong_structure():
    _, vjp_fn = gradc.vjp(lambda x: (x, x * 2), np.ones(2))
    with pytest.raises(gradc.ArgumentError, match="structure"):
        vjp_fn(np.ones(2))
    with pytest.raises(gradc.ArgumentError, match="shape"):
        vjp_fn((np.ones(2), np.ones(3)))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_linearize_is_jvp_at_the_point(target):
    """linearize's f_jvp agrees with jvp for every tangent, reuses one forward pass (the
    same cache entry as vjp) and is the transpose of vjp's map."""
    def f(x, n, y):
        return {"s": np.sin(x) * y ** n, "t": np.sum(np.exp(x) * y)}

    x, y = RNG.normal(size=4), RNG.normal(size=4)
    out, f_jvp = gradc.linearize(f, x, 2, y, target=target)
    np.testing.assert_allclose(out["s"], np.sin(x) * y ** 2, rtol=1e-15)
    _, pull = gradc.vjp(f, x, 2, y, target=target)
    for _ in range(3):
        tx, ty = RNG.normal(size=4), RNG.normal(size=4)
        t = f_jvp(tx, 0, ty)
        want = gradc.jvp(f, (x, 2, y), (tx, 0, ty), target=target)[1]
        np.testing.assert_allclose(t["s"], want["s"], rtol=1e-14)
        assert t["t"] == pytest.approx(want["t"], rel=1e-14)
        ct = {"s": RNG.normal(size=4), "t": 0.7}
        cx, _, cy = pull(ct)
        assert np.sum(ct["s"] * t["s"]) + 0.7 * t["t"] == pytest.approx(
            np.sum(cx * tx) + np.sum(cy * ty), rel=1e-12)
    # f_jvp batches: the Jacobian of f["t"] in x by one vmap over the basis
    rows = gradc.vmap(lambda tx: f_jvp(tx, 0, np.zeros(4))["t"])(np.eye(4))
    np.testing.assert_allclose(rows, np.exp(x) * y, rtol=1e-14)
    with pytest.raises(gradc.ArgumentError, match="f_jvp: a tangent of shape"):
        f_jvp(np.ones(3), 0, ty)

    val, f_jvp, aux = gradc.linearize(lambda x: (np.sum(x ** 3), {"x": x}), x, has_aux=True)
    assert f_jvp(np.ones(4)) == pytest.approx(np.sum(3 * x ** 2), rel=1e-14)
    np.testing.assert_array_equal(aux["x"], x)


def test_jvp_with_python_floats_and_static_ints():
    def f(a, n, x):
        return a ** n * np.sum(x)

    out, t = gradc.jvp(f, (2.0, 3, np.ones(2)), (1.0, 0, np.array([0.5, 0.5])))
    assert out == pytest.approx(16.0)
    assert t == pytest.approx(3 * 4.0 * 2.0 + 8.0 * 1.0)


def test_tangents_that_are_taken_and_converted():
    """A Python float or int, or an integer array, as the tangent of a float primal is
    converted to the primal's dtype (weakly typed, as JAX's Python scalars); a tangent of
    an integer primal is not read, whatever its dtype; cotangents likewise."""
    x32 = np.array([0.5, 1.0, 2.0], np.float32)
    _, t = gradc.jvp(lambda x: np.sin(x) * 2, (x32,), (np.array([1, 0, 2]),))
    assert t.dtype == np.float32
    np.testing.assert_allclose(t, 2 * np.cos(x32) * [1, 0, 2], rtol=1e-6)
    _, t = gradc.jvp(lambda a: a * 3.0, (np.float32(2.0),), (1.0,))
    assert t == 3.0 and t.dtype == np.float32
    _, t = gradc.jvp(lambda a: a * 3.0, (2.0,), (1,))
    assert t == 3.0
    _, t = gradc.jvp(lambda x, n: x * np.sum(n), (x32, np.arange(3)),
                     (np.ones(3, np.float32), np.zeros(3, np.float64)))
    np.testing.assert_array_equal(t, [3.0, 3.0, 3.0])
    _, f_jvp = gradc.linearize(lambda x: x * 2.0, x32)
    assert f_jvp(np.ones(3, np.int64)).dtype == np.float32
    _, pull = gradc.vjp(lambda x: np.sum(x * 2.0), x32)
    assert pull(1.0)[0].dtype == np.float32
    with pytest.raises(gradc.TangentDTypeError, match="bool"):
        gradc.jvp(np.sin, (x32,), (np.ones(3, bool),))
    with pytest.raises(gradc.TangentDTypeError, match="complex128"):
        gradc.jvp(np.sin, (np.ones(3),), (np.ones(3) * 1j,))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_numpy_scalars_as_arguments_and_constants_keep_numpy_dtypes(target):
    """np.float32/np.float64/np.int64 scalars work as 0-d arrays do, with NumPy's
    (NEP 50) dtypes: a float32 scalar's value and derivatives stay float32; a captured
    np.float64 is not weak (float32 * np.float64 is float64, as in NumPy)."""
    def f(x):
        return x * x + np.sin(x)

    for x in (np.float64(0.7), np.float32(0.7), np.array(0.7, np.float32)):
        want, dwant = f(x), 2 * x + np.cos(x)
        for got in (gradc.jit(f, target=target)(x), gradc.grad(f, target=target)(x),
                    *gradc.jvp(f, (x,), (np.ones_like(x),), target=target),
                    gradc.vjp(f, x, target=target)[1](np.ones_like(want))[0]):
            assert np.asarray(got).dtype == x.dtype
        assert gradc.jit(f, target=target)(x) == pytest.approx(want, rel=1e-6)
        assert gradc.grad(f, target=target)(x) == pytest.approx(dwant, rel=1e-6)
    assert gradc.jit(f, target=target)(np.int64(2)) == pytest.approx(f(2.0))
    c64, x32 = np.float64(3.0), np.ones(2, np.float32)
    assert gradc.jit(lambda x: x * c64, target=target)(x32).dtype == (x32 * c64).dtype
    assert gradc.jit(lambda x: x * np.float32(3.0), target=target)(x32).dtype == np.float32
    g = gradc.grad(lambda x: np.sum(x * c64), target=target)(x32)
    assert g.dtype == np.float32 and np.all(g == 3.0)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_python_float_argument_is_weakly_typed_as_numpy_s(target):
    """A Python float argument takes a float32 array's dtype, as the same float does in
    NumPy (NEP 50) and JAX (its weak types): ``x * y`` of a float32 ``x`` and ``y = 3.0``
    is float32 (it was float64: the argument was traced as a float64 array).  Python's
    arithmetic of such values stays weak (``y * 2.0``); NumPy's functions of them
    (``np.sin(y)``) and NumPy scalars (``np.float64(3.0)``) do not, as in NumPy."""
    x = np.linspace(0.1, 1.0, 4, dtype=np.float32)
    cases = [lambda x, y: x * y, lambda x, y: x * (y * 2.0 - abs(-y)),
             lambda x, y: x * np.sin(y), lambda x, y: y * y]
    for f in cases:
        for y in (3.0, np.float64(3.0), np.float32(3.0)):
            want = np.asarray(f(x, y))
            got = gradc.jit(f, target=target)(x, y)
            assert got.dtype == want.dtype, (f, y)
            np.testing.assert_allclose(got, want, rtol=1e-6)

    def loss(x, y):
        return np.sum(np.tanh(x * y) + y * 2.0 * x)

    for g in (gradc.grad(loss, target=target), gradc.jit(gradc.grad(loss), target=target)):
        got = g(x, 0.5)
        assert got.dtype == np.float32
        want = (1 - np.tanh(0.5 * x.astype(np.float64)) ** 2) * 0.5 + 1.0
        np.testing.assert_allclose(got, want, rtol=1e-5)
    dy = gradc.grad(loss, argnums=1, target=target)(x, 0.5)
    assert isinstance(dy, float)
    eps = 1e-4
    fd = (loss(x.astype(np.float64), 0.5 + eps) - loss(x.astype(np.float64), 0.5 - eps)) / (2 * eps)
    assert dy == pytest.approx(fd, rel=1e-5)
    primal, tangent = gradc.jvp(lambda x, y: x * y, (x, 3.0), (np.ones_like(x), 1.0),
                                target=target)
    assert primal.dtype == tangent.dtype == np.float32
    np.testing.assert_allclose(tangent, 3.0 + x, rtol=1e-6)
    batched = gradc.vmap(lambda x, y: x * y, in_axes=(0, None), target=target)(x, 3.0)
    assert batched.dtype == np.float32
    # the signature tells a Python float from a NumPy one: each has its own trace
    f = gradc.jit(cases[0], target=target)
    assert [f(x, y).dtype for y in (3.0, np.float64(3.0), 3.0)] == \
        [np.float32, np.float64, np.float32]


def test_a_nonzero_tangent_of_an_integer_primal_is_an_error():
    """(Sharp edge: the tangent of an integer primal was dropped whatever its value, so
    jvp(f, (np.arange(3),), (v,)), an integer x by mistake, gave a zero derivative.)
    Zeros of any dtype are its tangent (JAX asks for float0 zeros); a nonzero one is a
    TangentDTypeError that says so, for arrays, NumPy and Python ints, and bools."""
    def f(x, n):
        return np.sin(x) * n

    x = np.array([0.5, 1.0, 2.0])
    for n, zero, one in [(np.arange(3), np.zeros(3, np.int64), np.ones(3)),
                         (np.int64(2), np.int64(0), np.float64(1.0)), (2, 0, 1),
                         (np.array([True, False, True]), np.zeros(3, bool), np.ones(3, bool))]:
        out, t = gradc.jvp(f, (x, n), (np.ones(3), zero))
        np.testing.assert_allclose(out, np.sin(x) * n, rtol=1e-15)
        np.testing.assert_allclose(t, np.cos(x) * n, rtol=1e-15)
        with pytest.raises(gradc.TangentDTypeError,
                           match=r"tangent of argument 1 is nonzero, but its primal is an? "
                                 r"(integer|bool)(.|\n)*Pass zeros"):
            gradc.jvp(f, (x, n), (np.ones(3), one))
    with pytest.raises(gradc.TangentDTypeError, match=r"argument 0 is nonzero(.|\n)*float"):
        gradc.jvp(lambda n: np.sum(n * 2.5), (np.arange(3),), (np.ones(3),))
    _, f_jvp = gradc.linearize(f, x, np.arange(3))
    with pytest.raises(gradc.TangentDTypeError, match="linearize's f_jvp"):
        f_jvp(np.ones(3), np.ones(3))


def test_stop_gradient():
    def f(x):
        return np.sum(x * gradc.stop_gradient(x ** 2))

    x = RNG.normal(size=3)
    np.testing.assert_allclose(gradc.grad(f)(x), x ** 2)
    tree = gradc.stop_gradient({"a": 1.0, "b": (np.ones(2),)})
    assert tree["a"] == 1.0 and np.array_equal(tree["b"][0], np.ones(2))
    _, t = gradc.jvp(lambda x: gradc.stop_gradient(x) * x, (2.0,), (1.0,))
    assert t == pytest.approx(2.0)


# ---------------------------------------------------------------- higher order, nesting

def test_third_derivative_of_scalar_function():
    def f(x):
        return np.sin(x) * x ** 3

    d1 = gradc.grad(f)
    d2 = gradc.grad(d1)
    d3 = gradc.grad(d2)
    x = 0.7
    s, c = np.sin(x), np.cos(x)
    assert d1(x) == pytest.approx(c * x ** 3 + 3 * x ** 2 * s, rel=1e-12)
    assert d2(x) == pytest.approx(-s * x ** 3 + 6 * x ** 2 * c + 6 * x * s, rel=1e-12)
    assert d3(x) == pytest.approx(-c * x ** 3 - 9 * x ** 2 * s + 18 * x * c + 6 * s, rel=1e-12)


def test_hessian_vector_product_by_jvp_of_grad():
    def f(x):
        return np.sum(np.exp(x[:-1]) * x[1:] ** 2)

    x, v = RNG.normal(size=4), RNG.normal(size=4)
    _, hv = gradc.jvp(gradc.grad(f), (x,), (v,))
    eps = 1e-5
    numeric = (gradc.grad(f)(x + eps * v) - gradc.grad(f)(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, numeric, rtol=1e-6, atol=1e-8)
    _, vjp_fn = gradc.vjp(gradc.grad(f), x)
    np.testing.assert_allclose(vjp_fn(v)[0], hv, rtol=1e-10)      # the Hessian is symmetric


def test_no_perturbation_confusion():
    # d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1, at any y
    def outer(x):
        inner = gradc.grad(lambda y: x + y)
        return x * inner(3.0)

    assert gradc.grad(outer)(2.0) == pytest.approx(1.0)
    _, t = gradc.jvp(outer, (2.0,), (1.0,))
    assert t == pytest.approx(1.0)

    # a closure whose inner derivative does depend on x: d/dx [x * d/dy (x*y)] = 2x
    def outer2(x):
        return x * gradc.grad(lambda y: x * y)(3.0)

    assert gradc.grad(outer2)(2.5) == pytest.approx(5.0)


def test_grad_inside_grad_with_array_closure():
    a = RNG.normal(size=3)

    def outer(w):
        def inner(v):
            return np.sum(np.sin(w * v) * a)
        g = gradc.grad(inner)(np.ones(3))                 # a * w * cos(w)
        return np.sum(g ** 2)

    w = RNG.normal(size=3)
    expected = fd_grad(lambda w: np.sum((a * w * np.cos(w)) ** 2), w)
    np.testing.assert_allclose(gradc.grad(outer)(w), expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- graphs

def test_make_graph_prints_one_equation_per_line():
    x = np.array([0.5, -1.0, 2.0])
    graph = gradc.make_graph(rosen)(x)
    assert isinstance(graph, gradc.Graph)
    text = str(graph)
    lines = text.splitlines()
    eqn_lines = [line for line in lines if " = " in line]
    assert len(eqn_lines) == len(graph.eqns) > 0
    for line, eqn in zip(eqn_lines, graph.eqns):
        assert eqn.prim.name in line
    assert "f64[3]" in lines[0]
    assert "reduce_sum" in text and "f64[]" in text
    graph.verify()
    assert gradc.eval_graph(graph, [x])[0] == pytest.approx(rosen(x))


def test_to_networkx():
    import networkx as nx

    graph = gradc.make_graph(lambda x, y: np.sum(np.sin(x) * y))(np.ones(2), np.ones(2))
    g = graph.to_networkx()
    assert isinstance(g, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(g)
    prims = [d.get("prim") for _, d in g.nodes(data=True) if d.get("kind") == "eqn"]
    assert sorted(prims) == sorted(e.prim.name for e in graph.eqns)
    inputs = [n for n, d in g.nodes(data=True) if d.get("kind") == "input"]
    assert len(inputs) == 2
    assert all(nx.has_path(g, i, ("eqn", len(graph.eqns) - 1)) for i in inputs)


def test_make_graph_static_ints_are_constants():
    graph = gradc.make_graph(lambda x, n: x * n)(np.ones(2), 3)
    assert len(graph.inputs) == 1
    assert "3" in str(graph)


# ---------------------------------------------------------------- caching

def test_grad_does_not_retrace_for_same_signature():
    calls = []

    def f(x):
        calls.append(1)
        return np.sum(np.sin(x) ** 2)

    df = gradc.grad(f)
    x = RNG.normal(size=5)
    g1 = df(x)
    n = len(calls)
    g2 = df(x + 1.0)
    g3 = df(x - 1.0)
    assert len(calls) == n                         # cached: the Python function is not called
    np.testing.assert_allclose(g2, np.sin(2 * (x + 1.0)))
    np.testing.assert_allclose(g3, np.sin(2 * (x - 1.0)))
    np.testing.assert_allclose(g1, np.sin(2 * x))
    df(np.ones(3))                                 # another shape: a new trace
    assert len(calls) == n + 1
    df(np.ones(3, np.float32))                     # another dtype: a new trace
    assert len(calls) == n + 2
    df(np.ones(3) * 2)
    assert len(calls) == n + 2


def test_static_int_argument_is_part_of_the_cache_key():
    calls = []

    def f(x, n):
        calls.append(n)
        return np.sum(x ** n)

    df = gradc.grad(f)
    x = np.array([1.5, 2.0])
    np.testing.assert_allclose(df(x, 2), 2 * x)
    np.testing.assert_allclose(df(x, 3), 3 * x ** 2)
    np.testing.assert_allclose(df(x * 2, 2), 4 * x)
    assert calls == [2, 3]


def test_python_float_and_array_do_not_share_cache_entry_wrongly():
    df = gradc.grad(lambda a: a ** 2)
    assert type(df(3.0)) is float
    g = df(np.float64(3.0))
    assert g == 6.0 and not isinstance(g, float) or type(g) is np.float64
    assert np.asarray(df(np.array(3.0))).shape == ()


def test_complex_values_are_evaluated_but_not_differentiated():
    """(QA: a product with a complex constant went through grad and jacrev, which dropped
    the imaginary parts: |x (1 + 2j)|² gave -6 for 10.)  jit evaluates complex
    arithmetic, ``np.abs`` of it real as NumPy's; the derivatives name the line."""
    x = np.array([1.0, 2.0])

    def f(x):
        return np.sum(np.abs(x * (1 + 2j)) ** 2)
    value = gradc.jit(f)(x)
    assert value.dtype == np.float64 and value == pytest.approx(25.0)
    line = f.__code__.co_firstlineno + 1
    for derivative in (lambda: gradc.grad(f)(x), lambda: gradc.jvp(f, (x,), (x,)),
                       lambda: gradc.jacrev(lambda x: x * 1j)(x),
                       lambda: gradc.vjp(lambda x: x * 1j, x)):
        with pytest.raises(gradc.UnsupportedError, match="real-valued") as e:
            derivative()
        assert "test_api.py:" in str(e.value)
    with pytest.raises(gradc.UnsupportedError, match=f"test_api.py:{line}"):
        gradc.grad(f)(x)


def test_random_draws_and_writes_into_arguments_while_tracing_warn():
    """(QA: both were silent.)  Random numbers drawn during the trace are constants of
    the traced program; a write into an argument array does not reach the caller's."""
    rng = np.random.default_rng(0)

    def noisy(x):
        return np.sum(x * np.random.normal(size=3))

    def noisy_generator(x):
        return np.sum(x * rng.normal(size=3))

    def fill(x, out):
        out[:] = x * 2

    def copied(x):
        y = x.copy()
        y[0] = 5.0
        return np.sum(y ** 2)
    x = np.ones(3)
    for f in (noisy, noisy_generator):
        j = gradc.jit(f)
        with pytest.warns(gradc.GradcWarning, match="random numbers") as w:
            first = j(x)
        assert j(x) == first
        assert f"test_api.py:{f.__code__.co_firstlineno}" in str(w[0].message)
        assert w[0].filename == __file__
    with pytest.warns(gradc.GradcWarning, match="writes into an argument") as w:
        assert gradc.jit(fill)(x, np.zeros(3)) is None
    assert f"test_api.py:{fill.__code__.co_firstlineno + 1}" in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(gradc.grad(copied)(x), [0.0, 2.0, 2.0])


def test_argnums_that_are_not_positions_are_argument_errors():
    """(QA: ``argnums="y"`` failed with a TypeError from inside gradc at the call.)"""
    x = np.ones(2)

    def f(x, y):
        return np.sum(x * y)
    for bad in ("y", (), 1.0, True, (0, "x")):
        with pytest.raises(gradc.ArgumentError, match="argnums") as e:
            gradc.grad(f, argnums=bad)
        assert "test_api.py:" in str(e.value)
    np.testing.assert_allclose(gradc.grad(f, argnums=np.int64(1))(x, 2 * x), x)
    np.testing.assert_allclose(gradc.grad(f, argnums=[0, 1])(x, 2 * x)[0], 2 * x)


def test_arguments_that_do_not_match_the_parameters_are_argument_errors():
    """(QA: Python's TypeError, raised inside gradc, named neither gradc nor the line.)"""
    x = np.ones(2)

    def f(x, y):
        return np.sum(x * y)

    def g(x):
        return np.sum(len(3) * x)       # (a TypeError inside the function stays one)
    for call in (lambda: gradc.grad(f)(x), lambda: gradc.jit(f)(x, x, x),
                 lambda: gradc.grad(f)(x, x, z=1.0)):
        with pytest.raises(gradc.ArgumentError, match=r"f\(\) .*argument") as e:
            call()
        assert f"test_api.py:{f.__code__.co_firstlineno}" in str(e.value)
    with pytest.raises(TypeError, match="len"):
        gradc.grad(g)(x)


def test_arguments_of_other_dtypes_are_argument_errors():
    """(QA: a datetime64 argument failed inside NumPy's type promotion.)"""
    for a in (np.array(["2020-01-01"], dtype="datetime64[D]"), np.array(["a", "b"]),
              np.array([1.0, None], dtype=object)):
        with pytest.raises(gradc.ArgumentError, match=re.escape(f"dtype {a.dtype}")) as e:
            gradc.jit(lambda d: d)(a)
        assert "test_api.py:" in str(e.value)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_results_never_share_memory_with_arguments(target):
    """(QA: on the numpy target, results were the caller's arrays or views of them:
    writing into ``jit(lambda a: a)(x)`` changed x, and a ``vjp`` whose residual is its
    argument saw the caller's later writes into it.)  Every result is the caller's to
    keep, as on the compiled targets; and repeated argnums give two arrays."""
    x, w = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 5.0, 6.0, 7.0])
    keep = x.copy()
    results = [gradc.jit(lambda a: a, target=target)(x),
               gradc.jit(lambda a: (a.reshape(2, 2), a[1:], a.reshape(2, 2).T),
                         target=target)(x),
               gradc.grad(lambda a, b: np.sum(a * b), argnums=1, target=target)(x, w),
               gradc.jvp(lambda a: a, (w,), (x,), target=target),
               gradc.vjp(lambda a: a * 1.0, x, target=target)[0],
               gradc.vmap(lambda a: a, target=target)(x.reshape(2, 2))]
    for r in gradc.pytree.flatten(results)[0]:
        if isinstance(r, np.ndarray):
            assert not np.shares_memory(r, x), r
            r[...] = -1.0
    np.testing.assert_array_equal(x, keep)
    out, pull = gradc.vjp(lambda a: np.sin(a) * a, x, target=target)
    x[:] = 7.0
    np.testing.assert_allclose(pull(np.ones(4))[0],
                               np.cos(keep) * keep + np.sin(keep), rtol=1e-12)
    g = gradc.grad(lambda a: np.sum(a * a), argnums=(0, -1), target=target)
    for _ in range(2):             # (the first call, then the fast path's)
        g0, g1 = g(keep)
        assert not np.shares_memory(g0, g1)
        np.testing.assert_array_equal(g0, 2 * keep)
        np.testing.assert_array_equal(g1, g0)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_jit_static_argnums_and_argnames(target):
    """(QA: JAX's static_argnums/static_argnames were refused.)  A static float is a
    constant of the trace (a new value traces again, the same one does not); a tuple
    can carry a slice length; an unhashable static argument is a clear error."""
    traces = []

    def f(x, scale, mode="mul"):
        traces.append(scale)
        return x * scale if mode == "mul" else x + scale

    j = gradc.jit(f, static_argnums=1, static_argnames="mode", target=target)
    x = np.arange(3.0)
    np.testing.assert_array_equal(j(x, 2.0), 2 * x)
    np.testing.assert_array_equal(j(x + 1, 2.0), 2 * (x + 1))
    np.testing.assert_array_equal(j(x, 3.0), 3 * x)
    np.testing.assert_array_equal(j(x, 3.0, mode="add"), x + 3)
    assert traces == [2.0, 3.0, 3.0]
    assert "2.5" in str(j.graph(x, 2.5))            # (a literal of the Graph)
    with pytest.raises(gradc.ArgumentError, match="static argument must be hashable"):
        j(x, [1.0])
    take = gradc.jit(lambda v, s: v[:s[0]] * s[1], static_argnums=(1,), target=target)
    np.testing.assert_array_equal(take(np.arange(5.0), (3, 2.0)), [0.0, 2.0, 4.0])
    with pytest.raises(gradc.ArgumentError, match="static_argnums are argument positions"):
        gradc.jit(f, static_argnums="scale")


def test_static_arguments_follow_the_signature():
    """(Review: static_argnums=1 did not cover the same parameter passed by keyword, nor
    static_argnames one passed by position; an out-of-range position was ignored.)"""
    import math

    def f(x, s):
        return x * math.sqrt(s)
    x = np.ones(2)
    np.testing.assert_array_equal(gradc.jit(f, static_argnums=1)(x, s=4.0), [2.0, 2.0])
    np.testing.assert_array_equal(gradc.jit(f, static_argnames="s")(x, 4.0), [2.0, 2.0])
    with pytest.raises(gradc.ArgumentError, match="static_argnums=5, but .*f takes 2"):
        gradc.jit(f, static_argnums=5)


def test_vmap_static_keywords_beside_tuple_in_axes():
    """(Review: with a tuple in_axes, a Python int or str passed by keyword was refused
    as "mapped", with no way to give None for it.)"""
    def f(x, y, n=1, mode="x"):
        return x * y * n * (2.0 if mode == "y" else 1.0)
    np.testing.assert_array_equal(
        gradc.vmap(f, in_axes=(0, None))(np.ones(3), 2.0, n=3, mode="y"), [12.0] * 3)


@pytest.mark.parametrize("f", [np.linalg.cholesky, np.linalg.eigh, np.linalg.eigvalsh,
                               np.linalg.qr, lambda a: np.linalg.svd(a, full_matrices=False)])
def test_decompositions_of_an_empty_stack(f):
    """(Review: an empty stack of matrices was an IndexError.)"""
    z = np.zeros((0, 3, 3))
    got, want = gradc.jit(f)(z), f(z)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert [np.shape(g) for g in got] == [np.shape(w) for w in want]


def test_retrace_warning_says_what_changed_once_per_function():
    """The ninth trace of one transformed function warns once (``RetraceWarning``, at
    the user's line) with what changed the last time: a Python int's value, an array's
    shape, a new path through Python control flow.  Traced ints (np.asarray(n)) and
    repeated calls do not trace again, so do not warn."""
    import warnings
    x = np.linspace(0.1, 1.0, 4)

    def power(x, n):
        return np.sum(x ** n)

    def signs(x):
        s = 0.0
        for v in x:
            s = s + v if v > 0.5 else s - v
        return s

    g, h, q = (gradc.grad(power, target="numpy"), gradc.jit(np.sum, target="numpy"),
               gradc.grad(signs, target="numpy"))
    traced = gradc.grad(power, target="numpy")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for n in range(12):
            g(x, n)
            traced(x, np.asarray(n))
        for k in range(1, 12):
            h(np.ones(k))
        for bits in range(16):              # the 16 paths of 4 comparisons
            q(np.array([0.9 if bits >> i & 1 else 0.1 for i in range(4)]))
            q(np.array([0.8 if bits >> i & 1 else 0.2 for i in range(4)]))   # (same path)
    retraces = [w for w in seen if issubclass(w.category, gradc.RetraceWarning)]
    assert len(retraces) == 3, [str(w.message) for w in retraces]
    texts = [str(w.message) for w in retraces]
    assert "power was traced 9 times" in texts[0] and "changed from 7 to 8" in texts[0]
    assert "np.asarray(n)" in texts[0]
    assert "shape changed from (8,) to (9,)" in texts[1]
    assert "signs was traced 9 times" in texts[2] and "took a path" in texts[2]
    assert all(w.filename == __file__ for w in retraces)
    assert issubclass(gradc.RetraceWarning, gradc.GradcWarning)
