"""Structured loops (gradc.scan, gradc.fori_loop): one equation in the Graph however many
steps, the same values as the unrolled Python loop, forward and reverse mode through the
loop against gradc's own derivatives of the unrolled loop, finite differences and the
adjoint identity, second order by composition, clear errors for what is not allowed."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradc
from gradc.pytree import flatten


def rnn(h0, xs, W):
    def step(h, x):
        h = np.tanh(W @ h + x)
        return h, np.sum(h ** 2)
    return gradc.scan(step, h0, xs)


def rnn_unrolled(h0, xs, W):
    h, ys = h0, []
    for x in xs:
        h = np.tanh(W @ h + x)
        ys.append(np.sum(h ** 2))
    return h, np.stack(ys)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _args(rng, steps=7):
    return (rng.standard_normal(4), rng.standard_normal((steps, 4)),
            rng.standard_normal((4, 4)) * 0.5)


def test_scan_equals_the_unrolled_loop_and_stays_one_equation(rng):
    args = _args(rng, steps=300)
    h, ys = rnn(*args)
    hu, ysu = rnn_unrolled(*args)
    np.testing.assert_allclose(h, hu, rtol=1e-13)
    np.testing.assert_allclose(ys, ysu, rtol=1e-13)
    graph = gradc.make_graph(lambda *a: rnn(*a)[0])(*args)
    assert [e.prim.name for e in graph.eqns] == ["scan"]
    assert "scan[length=300 n_carry=1 n_consts=1 reverse=False]" in str(graph)


def test_pytree_carry_reverse_and_length_without_xs():
    def body(c, x):
        return {"a": c["a"] * 2.0 + x, "n": (c["n"][0] + 1,)}, c["a"]
    carry, ys = gradc.scan(body, {"a": 1.0, "n": (np.int64(0),)}, np.arange(4.0),
                           reverse=True)
    # reverse: x = 3, 2, 1, 0 in that order; ys stacked in the order of xs
    a, seen = 1.0, []
    for x in [3.0, 2.0, 1.0, 0.0]:
        seen.append(a)
        a = a * 2.0 + x
    assert carry["a"] == a and carry["n"][0] == 4
    np.testing.assert_array_equal(ys, seen[::-1])
    total, none = gradc.scan(lambda c, _: (c + 1.5, None), 0.0, None, length=5)
    assert total == 7.5 and none is None


def test_fori_loop_and_zero_iterations():
    assert gradc.fori_loop(0, 5, lambda i, v: v * 2.0 + i, 1.0) == 58.0
    x = np.array([1.0, -2.0])
    np.testing.assert_array_equal(gradc.fori_loop(3, 3, lambda i, v: v * 0.0, x), x)
    np.testing.assert_array_equal(gradc.fori_loop(5, 2, lambda i, v: v * 0.0, x), x)


def test_forward_mode_through_the_loop(rng):
    args = _args(rng)
    v = _args(rng)

    def f(h0, xs, W):
        h, ys = rnn(h0, xs, W)
        return np.sum(h ** 3) + np.sum(np.sin(ys))

    def f_unrolled(h0, xs, W):
        h, ys = rnn_unrolled(h0, xs, W)
        return np.sum(h ** 3) + np.sum(np.sin(ys))

    y, ty = gradc.jvp(f, args, v, target="numpy")
    yu, tyu = gradc.jvp(f_unrolled, args, v, target="numpy")
    assert y == pytest.approx(yu, rel=1e-13) and ty == pytest.approx(tyu, rel=1e-12)
    eps = 1e-6
    plus = f(*[a + eps * t for a, t in zip(args, v)])
    minus = f(*[a - eps * t for a, t in zip(args, v)])
    assert ty == pytest.approx((plus - minus) / (2 * eps), rel=1e-7)


def nested(x):
    """A scan of scans (4 x 3 steps); the carry starts as a constant and x enters through
    the inner body only."""
    def outer(c, _):
        inner, _ = gradc.scan(lambda d, __: (np.sin(d) * x + 0.1, None), c, None, length=3)
        return inner, None
    return gradc.scan(outer, np.ones(3), None, length=4)[0]


def nested_unrolled(x):
    c = np.ones(3)
    for _ in range(12):
        c = np.sin(c) * x + 0.1
    return c


def test_forward_mode_of_a_loop_in_a_loop_and_a_carry_that_starts_constant(rng):
    x0 = rng.standard_normal(3)

    def f(x):
        return np.sum(nested(x))

    def f_unrolled(x):
        return np.sum(nested_unrolled(x))

    t = rng.standard_normal(3)
    _, ty = gradc.jvp(f, (x0,), (t,), target="numpy")
    _, tyu = gradc.jvp(f_unrolled, (x0,), (t,), target="numpy")
    assert ty == pytest.approx(tyu, rel=1e-12)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_compiled_targets_run_the_loops_as_loops(rng, target):
    """No fallback: the generated source holds a for loop calling the body, the backward
    sweep a loop running the other way, and the values agree with the interpreter."""
    args = _args(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.GradcWarning)
        f = gradc.jit(lambda *a: rnn(*a)[0], target=target)
        np.testing.assert_allclose(f(*args), rnn_unrolled(*args)[0], rtol=1e-13)
        assert "for _t2 in range(7):" in f.source(*args)
        g = gradc.grad(_loss(rnn), argnums=(0, 1, 2), target=target)
        want = gradc.grad(_loss(rnn), argnums=(0, 1, 2), target="numpy")(*args)
        for a, b in zip(g(*args), want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert "in range(7 - 1, -1, -1):" in g.source(*args)


def test_compiled_while_adjoint_with_and_without_checkpoints(rng):
    W, b = rng.standard_normal((5, 5)) * 0.25, rng.standard_normal(5)
    want = gradc.grad(_fixed_point_loss, argnums=(0, 1), target="numpy")(W, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.GradcWarning)
        for checkpoint in (None, 7):
            g = gradc.grad(_fixed_point_loss, argnums=(0, 1), target="cpu")
            for a, w in zip(g(W, b, checkpoint), want):
                np.testing.assert_allclose(a, w, rtol=1e-12, atol=1e-15)
        source = g.source(W, b, 7)
    # the snapshots every 7 steps and a segment of 7 carries, refilled backwards
    assert "// 7" in source and ", 7), 5,), np.float64)" in source
    # zero steps: the tape is empty and the gradient is the identity's
    f = lambda v: np.sum(gradc.while_loop(lambda c: np.sum(c) < 0.0,  # noqa: E731
                                          lambda c: c * 1.5, v) * np.array([3.0, 4.0]))
    np.testing.assert_array_equal(gradc.grad(f, target="cpu")(np.ones(2)), [3.0, 4.0])


def _loss(run):
    def f(h0, xs, W):
        h, ys = run(h0, xs, W)
        return np.sum(h ** 3) + np.sum(np.sin(ys))
    return f


def test_reverse_mode_through_the_loop_equals_the_unrolled_loop(rng):
    args = _args(rng)
    got = gradc.grad(_loss(rnn), argnums=(0, 1, 2), target="numpy")(*args)
    want = gradc.grad(_loss(rnn_unrolled), argnums=(0, 1, 2), target="numpy")(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    # the backward pass is a loop too: two scans (forward with its tape, backward)
    graph = gradc.make_graph(gradc.grad(_loss(rnn), argnums=(0, 1, 2)))(*args)
    scans = [e for e in graph.eqns if e.prim.name == "scan"]
    assert [e.params["reverse"] for e in scans] == [False, True]
    # W is the same at every step: a const of the backward loop, not stacked 7 times
    assert scans[1].params["n_consts"] == 1


def test_residuals_computed_from_consts_alone_are_computed_once(rng):
    """A residual that depends on the loop's consts only (here w broadcast to the
    carry's shape, which the product's derivative reads) is the same at every step:
    computed once before the loop and handed to the backward loop as a const, not
    stacked per step."""
    steps = rng.standard_normal(6)

    def f(h0, w):
        h, _ = gradc.scan(lambda h, x: (np.tanh(h * w + x) + 0.1 * h[:, ::-1], None),
                          h0, steps)
        return np.sum(h ** 2)
    h0, w = rng.standard_normal((3, 4)), rng.standard_normal(4)
    graph = gradc.make_graph(gradc.grad(f, argnums=(0, 1)))(h0, w)
    forward, backward = [e for e in graph.eqns if e.prim.name == "scan"]
    stacked = [tuple(o.shape) for o in forward.outputs[forward.params["n_carry"]:]]
    assert stacked == [(6, 3, 4)] * 2      # (tanh's derivative, and h for w's: not w)
    assert backward.params["n_consts"] == 1
    got = gradc.grad(f, argnums=(0, 1), target="numpy")(h0, w)
    eps, d = 1e-6, rng.standard_normal(4)
    fd = (f(h0, w + eps * d) - f(h0, w - eps * d)) / (2 * eps)
    assert np.dot(got[1], d) == pytest.approx(fd, rel=1e-7)
    for a, b in zip(gradc.grad(f, argnums=(0, 1))(h0, w), got):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_adjoint_identity_and_finite_differences(rng):
    args = _args(rng)
    ys = lambda h0, xs, W: rnn(h0, xs, W)[1]          # noqa: E731
    v = _args(rng)
    u = rng.standard_normal(7)
    _, jv = gradc.jvp(ys, args, v, target="numpy")
    _, back = gradc.vjp(ys, *args, target="numpy")
    jtu = back(u)
    # <u, J v> = <J^T u, v>
    assert np.dot(u, jv) == pytest.approx(sum(np.sum(a * b) for a, b in zip(jtu, v)),
                                          rel=1e-12)
    g = gradc.grad(_loss(rnn), argnums=2, target="numpy")(*args)
    eps, (i, j) = 1e-6, (1, 2)
    plus, minus = args[2].copy(), args[2].copy()
    plus[i, j] += eps
    minus[i, j] -= eps
    fd = (_loss(rnn)(args[0], args[1], plus) - _loss(rnn)(args[0], args[1], minus)) / (2 * eps)
    assert g[i, j] == pytest.approx(fd, rel=1e-7)


def test_reverse_mode_with_pytrees_counters_reverse_and_fori_loop(rng):
    a0, w = rng.standard_normal(3), rng.standard_normal(3)

    def f(a0, w):
        def body(c, x):
            a, n = c["a"], c["n"]
            return {"a": np.sin(a) * w + x * n, "n": n + 1.0}, np.sum(a * x)
        c, ys = gradc.scan(body, {"a": a0, "n": 1.0}, np.linspace(0, 1, 5)[:, None]
                           * np.ones(3), reverse=True)
        return np.sum(c["a"] ** 2) + np.sum(ys) + gradc.fori_loop(
            0, 4, lambda i, v: np.cos(v) * w + i, a0).sum()

    def f_unrolled(a0, w):
        xs = np.linspace(0, 1, 5)[:, None] * np.ones(3)
        a, n, ys = a0, 1.0, []
        for x in xs[::-1]:
            ys.append(np.sum(a * x))
            a, n = np.sin(a) * w + x * n, n + 1.0
        v = a0
        for i in range(4):
            v = np.cos(v) * w + i
        return np.sum(a ** 2) + sum(ys) + v.sum()

    assert f(a0, w) == pytest.approx(f_unrolled(a0, w), rel=1e-13)
    got = gradc.grad(f, argnums=(0, 1), target="numpy")(a0, w)
    want = gradc.grad(f_unrolled, argnums=(0, 1), target="numpy")(a0, w)
    for g, wt in zip(got, want):
        np.testing.assert_allclose(g, wt, rtol=1e-12, atol=1e-14)


def test_second_order_and_nested_loops(rng):
    x0, t = rng.standard_normal(3), rng.standard_normal(3)

    def f(x):
        return np.sum(nested(x) ** 2)

    def f_unrolled(x):
        return np.sum(nested_unrolled(x) ** 2)

    np.testing.assert_allclose(gradc.grad(f, target="numpy")(x0),
                               gradc.grad(f_unrolled, target="numpy")(x0), rtol=1e-12)
    # Hessian-vector product, forward over reverse, through both loops
    _, hv = gradc.jvp(gradc.grad(f, target="numpy"), (x0,), (t,), target="numpy")
    _, hvu = gradc.jvp(gradc.grad(f_unrolled, target="numpy"), (x0,), (t,), target="numpy")
    np.testing.assert_allclose(hv, hvu, rtol=1e-11)


@pytest.mark.parametrize("body, message", [
    (lambda c, x: (np.concatenate([c, x]), None), r"changes carry leaf 0 from f64\[2\]"),
    (lambda c, x: (c.astype(np.float32), None), r"from f64\[2\] to f32\[2\]"),
    (lambda c, x: ((c, c), None), "structure"),
    (lambda c, x: c, "pair"),
])
def test_bad_bodies_are_named(body, message):
    with pytest.raises(gradc.ArgumentError, match=message):
        gradc.scan(body, np.zeros(2), np.ones((3, 2)))


def test_bad_lengths_and_bounds_are_named():
    with pytest.raises(gradc.ArgumentError, match="leading axis"):
        gradc.scan(lambda c, x: (c, x), 0.0, 1.0)
    with pytest.raises(gradc.ArgumentError, match="leading lengths"):
        gradc.scan(lambda c, x: (c, x), 0.0, (np.ones(3), np.ones(4)))
    with pytest.raises(gradc.ArgumentError, match="length=2"):
        gradc.scan(lambda c, x: (c, x), 0.0, np.ones(3), length=2)
    with pytest.raises(gradc.ArgumentError, match=r"bound must be an integer scalar, got f64"):
        gradc.jvp(lambda n: gradc.fori_loop(0, n, lambda i, v: v + 1.0, 0.0),
                  (np.float64(3.0),), (np.float64(1.0),), target="numpy")


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_fori_loop_with_a_traced_bound_is_a_while_loop_both_modes_go_through(target):
    def f(x, n):
        return gradc.fori_loop(0, n, lambda i, v: v * x + i, 1.0)

    def f_np(x, n):
        v = 1.0
        for i in range(n):
            v = v * x + i
        return v
    n = np.asarray(4)             # a 0-d array is data, not a static int
    graph = gradc.make_graph(f)(0.7, n)
    assert [e.prim.name for e in graph.eqns] == ["while_loop"]
    for k in (0, 4, 6):
        assert f(0.7, np.asarray(k)) == pytest.approx(f_np(0.7, k), rel=1e-14)
        g = gradc.grad(f, target=target)(0.7, np.asarray(k))
        fd = (f_np(0.7 + 1e-6, k) - f_np(0.7 - 1e-6, k)) / 2e-6
        assert g == pytest.approx(fd, rel=1e-7, abs=1e-12)
        _, t = gradc.jvp(lambda x: f(x, np.asarray(k)), (0.7,), (1.0,), target=target)
        assert t == pytest.approx(g, rel=1e-13, abs=1e-15)



def test_fori_loop_index_is_weakly_typed_as_a_python_int():
    """(Composition sweep) ``v = sin(v) * x + 0.1 * i`` on a float32 carry failed: the
    index was an ``np.int64``, so ``0.1 * i`` was float64 and the body changed the
    carry's dtype.  In the loop written out ``i`` is a Python int (and JAX's index is
    weakly typed): the carry stays float32, with static and traced bounds."""
    x = np.array([0.2, 0.4, 0.6, 0.8], np.float32)

    def f(x, n):
        return np.sum(gradc.fori_loop(0, n, lambda i, v: np.sin(v) * x + 0.1 * i, x))

    def f_np(x, n):
        v = x
        for i in range(n):
            v = np.sin(v) * x + 0.1 * i
        return np.sum(v)
    assert f_np(x, 4).dtype == np.float32
    for n in (4, np.asarray(4)):
        value, g = gradc.value_and_grad(f)(x, n)
        assert value.dtype == g.dtype == np.float32
        assert value == pytest.approx(f_np(x, 4), rel=1e-6)
        np.testing.assert_allclose(g, gradc.grad(f)(x.astype(np.float64), n), rtol=1e-5)

TABLE = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5], [1.0, 3.0]])


def _table_loop(x):
    # a NumPy constant indexed by the loop's traced counter: NumPy converts the index
    # with np.asarray (a ConcretizationError); gradc.asarray makes the table traced
    return gradc.fori_loop(
        0, 4, lambda i, c: c + np.sin(gradc.asarray(TABLE)[i] * x), np.zeros(2))


def test_fori_loop_body_gathers_from_a_numpy_constant_with_gradc_asarray():
    from gradc.testing import numerical_grad

    def f_np(x):
        return sum(np.sin(row * x) for row in TABLE)
    x = np.array([0.3, -1.2])
    expected_jac = np.diag(np.sum(TABLE * np.cos(TABLE * x), axis=0))
    for k in range(2):
        assert np.allclose(numerical_grad(lambda z: f_np(z)[k], x), expected_jac[k],
                           atol=1e-7)
    for target in ("numpy", "cpu"):
        assert np.allclose(gradc.jit(_table_loop, target=target)(x), f_np(x), rtol=1e-14)
        assert np.allclose(gradc.jacrev(_table_loop, target=target)(x), expected_jac,
                           rtol=1e-13)
        assert np.allclose(gradc.jacfwd(_table_loop, target=target)(x), expected_jac,
                           rtol=1e-13)

    def unwrapped(x):
        return gradc.fori_loop(0, 4, lambda i, c: c + TABLE[i] * x, np.zeros(2))
    with pytest.raises(gradc.ConcretizationError,
                       match=r"gradc\.asarray\(table\)\[i\](.|\n)*c \+ TABLE\[i\] \* x"):
        gradc.grad(lambda x: np.sum(unwrapped(x)))(x)
    assert type(gradc.asarray(TABLE)) is np.ndarray       # outside a trace: NumPy's


# ---------------------------------------------------------------- cond

W3 = np.array([1.0, 2.0, -0.5])


def branchy(x, a):
    return gradc.cond(np.sum(x) > a, lambda x: np.sin(x) * W3, lambda x: np.cos(x) ** 2 + a, x)


@pytest.mark.parametrize("a", [0.0, 5.0])
def test_cond_values_and_derivatives_follow_the_branch_taken(rng, a):
    x = np.array([0.3, -0.2, 0.9])
    taken = (lambda x, a: np.sin(x) * W3) if a == 0.0 else (lambda x, a: np.cos(x) ** 2 + a)
    np.testing.assert_array_equal(branchy(x, a), taken(x, a))
    graph = gradc.make_graph(branchy)(x, a)
    assert [e.prim.name for e in graph.eqns][-1] == "cond" and not graph.guards
    loss = lambda f: (lambda x, a: np.sum(f(x, a) ** 2))     # noqa: E731
    got = gradc.grad(loss(branchy), argnums=(0, 1), target="numpy")(x, a)
    want = gradc.grad(loss(taken), argnums=(0, 1), target="numpy")(x, a)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-13)
    assert got[1] == pytest.approx(want[1], rel=1e-13, abs=1e-15)
    t = rng.standard_normal(3)
    _, jv = gradc.jvp(lambda x: branchy(x, a), (x,), (t,), target="numpy")
    _, jvu = gradc.jvp(lambda x: taken(x, a), (x,), (t,), target="numpy")
    np.testing.assert_allclose(jv, jvu, rtol=1e-13)


def test_cond_inside_scan_with_a_pytree_result(rng):
    xs = rng.standard_normal((6, 2))

    def f(w):
        def step(c, x):
            out = gradc.cond(np.sum(x) > 0, lambda c: {"v": c * w}, lambda c: {"v": c + w}, c)
            return out["v"], np.sum(out["v"])
        c, ys = gradc.scan(step, np.ones(2), xs)
        return np.sum(c) + np.sum(ys)

    def f_unrolled(w):
        c, ys = np.ones(2), []
        for x in xs:
            c = c * w if np.sum(x) > 0 else c + w
            ys.append(np.sum(c))
        return np.sum(c) + sum(ys)

    w = rng.uniform(0.5, 1.5, 2)
    assert f(w) == pytest.approx(f_unrolled(w), rel=1e-13)
    np.testing.assert_allclose(gradc.grad(f, target="numpy")(w),
                               gradc.grad(f_unrolled, target="numpy")(w), rtol=1e-12)


@pytest.mark.parametrize("false_fun, message", [
    (lambda x: x[:2], r"output 0 is f64\[3\] in the true branch and f64\[2\]"),
    (lambda x: x.astype(np.float32), r"f32\[3\] in the false branch"),
    (lambda x: (x, x), "different structures"),
])
def test_cond_branches_that_disagree_are_named(false_fun, message):
    with pytest.raises(gradc.ArgumentError, match=message):
        gradc.cond(True, lambda x: x * 2.0, false_fun, np.ones(3))


def test_cond_predicate_must_be_a_scalar():
    with pytest.raises(gradc.ArgumentError, match="scalar"):
        gradc.cond(np.ones(2) > 0, lambda x: x, lambda x: x, np.ones(2))


# ---------------------------------------------------------------- while_loop

def newton_sqrt(a):
    def body(c):
        x, i = c
        return 0.5 * (x + a / x), i + 1
    return gradc.while_loop(lambda c: np.abs(c[0] * c[0] - a) > 1e-12, body, (a, 0))


def test_while_loop_runs_to_its_condition_and_forward_mode_goes_through():
    x, steps = newton_sqrt(2.0)
    assert x == pytest.approx(np.sqrt(2.0), rel=1e-15) and steps == 5
    graph = gradc.make_graph(lambda a: newton_sqrt(a)[0])(2.0)
    assert [e.prim.name for e in graph.eqns] == ["while_loop"]
    # the same graph at another value takes another number of steps
    assert newton_sqrt(9.0)[0] == pytest.approx(3.0, rel=1e-15)
    for a in (2.0, 9.0):
        _, t = gradc.jvp(lambda a: newton_sqrt(a)[0], (a,), (1.0,), target="numpy")
        assert t == pytest.approx(0.5 / np.sqrt(a), rel=1e-10)


def test_while_loop_with_zero_steps_and_arrays():
    v = np.array([1.0, 2.0])
    np.testing.assert_array_equal(
        gradc.while_loop(lambda c: np.sum(c) > 100.0, lambda c: c * 2.0, v), v)
    out = gradc.while_loop(lambda c: np.sum(c) < 100.0, lambda c: c * 2.0, v)
    np.testing.assert_array_equal(out, v * 64.0)


def test_while_loop_errors_are_named():
    with pytest.raises(gradc.ArgumentError, match="boolean scalar"):
        gradc.while_loop(lambda c: c, lambda c: c, np.ones(2))
    with pytest.raises(gradc.ArgumentError, match=r"changes leaf 0 from f64\[2\]"):
        gradc.while_loop(lambda c: np.sum(c) < 1.0, lambda c: c[:1], np.zeros(2))
    with pytest.raises(gradc.ArgumentError, match="checkpoint must be None or a positive"):
        gradc.while_loop(lambda c: np.sum(c) < 1.0, lambda c: c, np.zeros(2), checkpoint=0)


def fixed_point(W, b, checkpoint=None, tol=1e-12):
    """x = tanh(W x + b) iterated until it moves less than tol: the step count depends on
    W and b."""
    def body(s):
        x, _, i = s
        return np.tanh(W @ x + b), x, i + 1
    x, _, steps = gradc.while_loop(lambda s: np.max(np.abs(s[0] - s[1])) > tol, body,
                                   (np.zeros(b.shape), np.ones(b.shape), 0),
                                   checkpoint=checkpoint)
    return x, steps


def _fixed_point_loss(W, b, checkpoint=None):
    x, _ = fixed_point(W, b, checkpoint)
    return np.sum(x ** 2) + x[0]


@pytest.mark.parametrize("checkpoint", [None, 1, 4, 1000])
def test_while_loop_reverse_mode_against_finite_differences(rng, checkpoint):
    W, b = rng.standard_normal((5, 5)) * 0.25, rng.standard_normal(5)
    steps = fixed_point(W, b)[1]
    assert 20 < steps < 200
    gW, gb = gradc.grad(_fixed_point_loss, argnums=(0, 1), target="numpy")(W, b, checkpoint)
    h = 1e-6
    for k in range(5):
        e = np.eye(5)[k]
        fd = (_fixed_point_loss(W, b + h * e) - _fixed_point_loss(W, b - h * e)) / (2 * h)
        assert gb[k] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    E = np.zeros((5, 5))
    E[1, 3] = 1.0
    fd = (_fixed_point_loss(W + h * E, b) - _fixed_point_loss(W - h * E, b)) / (2 * h)
    assert gW[1, 3] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # the same tape in every checkpointing scheme: the same numbers
    gW0, gb0 = gradc.grad(_fixed_point_loss, argnums=(0, 1), target="numpy")(W, b)
    np.testing.assert_allclose(gb, gb0, rtol=1e-13)
    np.testing.assert_allclose(gW, gW0, rtol=1e-13)


def test_while_loop_reverse_mode_with_zero_steps_and_the_adjoint_identity(rng):
    v = np.array([1.0, 2.0])
    f = lambda v, s: gradc.while_loop(lambda c: np.sum(c) < s, lambda c: c * 1.5, v)  # noqa
    # zero steps: the identity
    np.testing.assert_array_equal(gradc.grad(lambda v: np.sum(f(v, 0.0) * [3.0, 4.0]),
                                             target="numpy")(v), [3.0, 4.0])
    # <u, J t> = <J^T u, t>, with 5 steps
    u, t = rng.standard_normal(2), rng.standard_normal(2)
    _, jt = gradc.jvp(lambda v: f(v, 20.0), (v,), (t,), target="numpy")
    _, vjp_fn = gradc.vjp(lambda v: f(v, 20.0), v, target="numpy")
    assert np.dot(u, jt) == pytest.approx(np.dot(vjp_fn(u)[0], t), rel=1e-14)
    np.testing.assert_allclose(jt, t * 1.5 ** 5, rtol=1e-14)


def test_while_loop_second_order_three_ways(rng):
    W, b = rng.standard_normal((4, 4)) * 0.3, rng.standard_normal(4)
    v = rng.standard_normal(4)
    g = lambda b: _fixed_point_loss(W, b)  # noqa: E731
    _, fwd_rev = gradc.jvp(gradc.grad(g, target="numpy"), (b,), (v,), target="numpy")
    rev_fwd = gradc.grad(lambda b: gradc.jvp(g, (b,), (v,))[1], target="numpy")(b)
    # reverse over reverse: the Hessian's rows, one grad of a grad each
    hessian = np.stack([gradc.grad(lambda b, k=k: gradc.grad(g)(b)[k], target="numpy")(b)
                        for k in range(4)])
    grad = gradc.grad(g, target="numpy")
    fd = (grad(b + 1e-5 * v) - grad(b - 1e-5 * v)) / 2e-5
    np.testing.assert_allclose(fwd_rev, rev_fwd, rtol=1e-10)
    np.testing.assert_allclose(fwd_rev, fd, rtol=1e-6)
    np.testing.assert_allclose(hessian @ v, fwd_rev, rtol=1e-10)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-10)
    # compiled (while_hessian lowered): a row of the Hessian
    row = gradc.grad(lambda b: gradc.grad(g)(b)[2], target="cpu")(b)
    np.testing.assert_allclose(row, hessian[2], rtol=1e-12)
    # mixed second derivatives, d/dW of d/db, against finite differences
    mixed = gradc.grad(lambda W: gradc.grad(_fixed_point_loss, argnums=1)(W, b)[2],
                       target="numpy")(W)
    E = np.zeros((4, 4))
    E[1, 2] = 1.0
    grad_b = gradc.grad(_fixed_point_loss, argnums=1, target="numpy")
    fd = (grad_b(W + 1e-5 * E, b)[2] - grad_b(W - 1e-5 * E, b)[2]) / 2e-5
    assert mixed[1, 2] == pytest.approx(fd, rel=1e-6)


def test_while_loop_reverse_graph_holds_the_tape_equation():
    W, b = np.eye(3) * 0.2, np.ones(3)
    graph = gradc.make_graph(gradc.grad(_fixed_point_loss, argnums=1))(W, b)
    names = [e.prim.name for e in graph.eqns]
    assert names.count("while_loop") == 1 and names.count("while_adjoint") == 1
    assert "while_adjoint[checkpoint=None lin=(False,True) n_body=2]" in str(graph)



def test_nested_while_inside_scan_reverse(rng):
    """A while loop (Newton's square root) inside a scan body, reverse mode through both,
    interpreted and compiled."""
    def f(a):
        def step(c, x):
            r, _ = newton_sqrt(x * x + c)
            return c + r, r
        c, ys = gradc.scan(step, 1.0, a)
        return c + np.sum(ys ** 2)

    def f_np(a):
        c, total = 1.0, 0.0
        for x in a:
            r = np.sqrt(x * x + c)
            c, total = c + r, total + r * r
        return c + total
    a = rng.standard_normal(4)
    assert f(a) == pytest.approx(f_np(a), rel=1e-12)
    g = gradc.grad(f, target="numpy")(a)
    h = 1e-6
    fd = [(f_np(a + h * e) - f_np(a - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    np.testing.assert_allclose(gradc.grad(f, target="cpu")(a), g, rtol=1e-13)


def test_simplify_drops_what_a_scan_stacks_but_nobody_reads(rng):
    """stop_gradient(max) in a scan body: the JVP of the max (a tie mask as large as the
    step's input) is a residual the backward loop never reads; the scan stops stacking
    it, and ys nobody asked for (the xs' cotangents, when only A's is wanted) go too."""
    def lse(x):
        m = gradc.stop_gradient(np.max(x, axis=1, keepdims=True))
        return np.log(np.sum(np.exp(x - m), axis=1)) + m[:, 0]

    def f(A, xs):
        a, _ = gradc.scan(lambda a, u: (lse(a[:, :, None] + A[None]) + u, None), xs[0], xs[1:])
        return np.sum(a)

    def f_unrolled(A, xs):
        a = xs[0]
        for u in xs[1:]:
            a = lse(a[:, :, None] + A[None]) + u
        return np.sum(a)
    A, xs = rng.standard_normal((3, 3)), rng.standard_normal((5, 2, 3))
    g = gradc.grad(f, target="numpy")
    np.testing.assert_allclose(g(A, xs), gradc.grad(f_unrolled, target="numpy")(A, xs),
                               rtol=1e-13)
    scans = [e for e in g.graph(A, xs).eqns if e.prim.name == "scan"]
    # forward: the carry, exp(x - m) and its sums (what the backward loop reads);
    # backward: the carry's cotangent and A's
    assert [tuple(v.shape) for v in scans[0].outputs] == [(2, 3), (4, 2, 3, 3), (4, 2, 3)]
    assert [tuple(v.shape) for v in scans[1].outputs] == [(2, 3), (3, 3)]


def test_review_regressions_for_loops():
    """Found in review: (1) a compiled checkpointed adjoint sized its segment buffer by
    checkpoint, not by the step count; (2) the interpreter's while_tangent misread the
    tangents when an integer carry came first; (3) a scan's stacked ys are its own
    arrays, returned without a copy (no aliasing to guard against)."""
    f = lambda v: np.sum(gradc.while_loop(  # noqa: E731
        lambda c: np.sum(c) < 10.0, lambda c: c * 1.5, v, checkpoint=10 ** 9) ** 2)
    v = np.full(1000, 0.005)
    np.testing.assert_allclose(gradc.grad(f, target="cpu")(v), gradc.grad(f, target="numpy")(v),
                               rtol=1e-13)

    def h(x):
        _, y = gradc.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, np.sin(c[1])),
                                (np.int64(0), x))
        return np.sum(y ** 2)
    x = np.array([0.7, -0.2])
    hess_row = {t: gradc.grad(lambda x: gradc.grad(h)(x)[0], target=t)(x)
                for t in ("numpy", "cpu")}
    np.testing.assert_allclose(hess_row["numpy"], hess_row["cpu"], rtol=1e-12)
    g = gradc.grad(h, target="numpy")
    e = np.array([1.0, 0.0])
    column = (g(x + 1e-6 * e) - g(x - 1e-6 * e)) / 2e-6     # = the row: H is symmetric
    np.testing.assert_allclose(hess_row["numpy"], column, rtol=1e-6, atol=1e-9)

    xs = np.arange(4.0)
    stacked = gradc.jit(lambda xs: gradc.scan(lambda c, x: (c + x, c * x), 0.0, xs)[1],
                        target="cpu")
    np.testing.assert_array_equal(stacked(xs), [0.0, 0.0, 2.0, 9.0])
    assert ".copy()" not in stacked.source(xs).rsplit("return", 1)[1]


def test_sums_may_reassociate_but_elementwise_results_do_not():
    """A nest writing an elementwise result beside a sum keeps IEEE order: the same bits
    as NumPy (reassociation would fold (x * 0.1) * 3.0 into x * 0.3)."""
    f = gradc.jit(lambda x: ((x * 0.1) * 3.0, np.sum(x, axis=1)), target="cpu")
    x = np.array([[-0.7], [1.3], [2.9], [-4.1]])
    np.testing.assert_array_equal(f(x)[0], (x * 0.1) * 3.0)


def test_forward_mode_through_cond_is_one_cond():
    f = lambda x: gradc.cond(np.sum(x) > 0, lambda x: np.sin(x) * x,  # noqa: E731
                             lambda x: np.exp(x) - x, x)
    graph = gradc.make_graph(lambda x, t: gradc.jvp(f, (x,), (t,))[1])(np.ones(3), np.ones(3))
    assert [e.prim.name for e in graph.eqns].count("cond") == 1
    for x in (np.ones(3), -np.ones(3)):
        _, t = gradc.jvp(f, (x,), (np.arange(3.0),), target="numpy")
        want = (np.cos(x) * x + np.sin(x) if x[0] > 0 else np.exp(x) - 1.0) * np.arange(3.0)
        np.testing.assert_allclose(t, want, rtol=1e-14)


def test_while_hessian_runs_interpreted_and_compiled(rng):
    """while_hessian (the tangent half of while_adjoint's JVP) is usually transposed
    away; evaluated as it is, in a linearised VJP graph, it gives the JVP of the VJP."""
    from gradc.codegen.compile import Executable, optimise
    from gradc.passes import linearize_graph, vjp_graph
    W, b = rng.standard_normal((4, 4)) * 0.3, rng.standard_normal(4)
    graph = gradc.make_graph(lambda W, b: _fixed_point_loss(W, b))(W, b)
    primal, linear = linearize_graph(vjp_graph(graph))      # inputs (W, b, ct)
    assert "while_hessian" in str(linear)
    dW, db = rng.standard_normal((4, 4)), rng.standard_normal(4)
    outs = gradc.eval_graph(primal, [W, b, 1.0])
    n_out = len(linear.outputs)
    residuals = outs[n_out:]
    want = gradc.jvp(lambda W, b: gradc.grad(_fixed_point_loss, argnums=(0, 1))(W, b),
                     (W, b), (dW, db), target="numpy")[1]
    for target in ("numpy", "cpu"):
        got = Executable(optimise(linear, target), target)(residuals + [dW, db, 0.0])
        np.testing.assert_allclose(got[1], want[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got[2], want[1], rtol=1e-10, atol=1e-13)


def test_large_products_in_loop_bodies(rng):
    # from OBJMODE_FLOPS multiply-adds on a product runs on NumPy's BLAS, written into a
    # buffer; in a body that buffer was an np.empty(...) written twice, so the body read
    # a second, uninitialised array (wrong values, both directions, on target="cpu")
    from gradc.codegen.pysource import OBJMODE_FLOPS
    W = rng.standard_normal((64, 64)) / 8
    x = rng.standard_normal((32, 64))
    assert 32 * 64 * 64 >= OBJMODE_FLOPS

    def f(x, W):
        def step(h, _):
            h = np.tanh(h @ W)
            return h, np.sum(h)
        h, s = gradc.scan(step, x, None, length=3)
        h = gradc.while_loop(lambda c: c[1] < 2, lambda c: (np.sin(c[0] @ W), c[1] + 1),
                             (h, 0))[0]
        return gradc.cond(np.sum(h) > 0, lambda h: h @ W, lambda h: (h @ W) * 2, h), s

    def loss(x, W):
        return np.sum(f(x, W)[0] ** 2)

    for make in (lambda t: gradc.jit(f, target=t),
                 lambda t: gradc.value_and_grad(loss, argnums=(0, 1), target=t)):
        got = flatten(make("cpu")(x, W))[0]
        want = flatten(make("numpy")(x, W))[0]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_scan_takes_jaxs_unroll_hint():
    """(QA: scan(unroll=) was a TypeError.)  JAX's hint is accepted and changes nothing;
    a bad value is named."""
    def f(xs, unroll):
        return gradc.scan(lambda c, x: (c * x + 1.0, c), 1.0, xs, unroll=unroll)[0]
    xs = np.array([0.5, 2.0, -1.0, 3.0])
    want = gradc.jit(lambda xs: f(xs, 1))(xs)
    for unroll in (2, 8, True, False):
        assert gradc.jit(lambda xs: f(xs, unroll))(xs) == want
    np.testing.assert_allclose(gradc.grad(lambda xs: f(xs, 4))(xs),
                               gradc.grad(lambda xs: f(xs, 1))(xs))
    with pytest.raises(gradc.ArgumentError, match="unroll is a positive int or a bool"):
        gradc.jit(lambda xs: f(xs, 0))(xs)
