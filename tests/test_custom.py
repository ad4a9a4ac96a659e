"""User-defined derivative rules: ``gradc.custom_jvp`` and ``gradc.custom_vjp``.

Each rule is checked three ways: that it is the rule gradc uses (a rule that differs
from the function's true derivative on purpose gives its own answer), that a correct
rule agrees with central differences and forward mode with reverse mode, and that it
holds through ``vmap``, ``jit`` on the compiled target, loops, implicit solves and
second derivatives.  Errors name the function and the user's line."""
import numpy as np
import pytest

import gradc
from gradc.errors import ArgumentError, UnsupportedError
from gradc.testing import check_grads, numerical_grad

fd = numerical_grad


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@gradc.custom_jvp
def log1pexp(x):
    return np.log1p(np.exp(x))


@log1pexp.defjvp
def _log1pexp_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return log1pexp(x), t * gradc.sigmoid(x)


@gradc.custom_vjp
def square(x):
    return x * x


def _square_fwd(x):
    return square(x), x


def _square_bwd(x, ct):
    return (2.0 * x * ct,)


square.defvjp(_square_fwd, _square_bwd)


@gradc.custom_vjp
def clip_gradient(x, lo, hi):
    return x


def _clip_fwd(x, lo, hi):
    return x, (lo, hi)


def _clip_bwd(res, ct):
    lo, hi = res
    return np.clip(ct, lo, hi), None, None


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


@pytest.fixture
def rng():
    return np.random.default_rng(3)


# ---------------------------------------------------------------- custom_jvp

@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # CUDA sim
@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_custom_jvp_rule_is_used_where_autodiff_overflows(target):
    """d/dx log(1 + e^x) by autodiff is e^x / (1 + e^x) = inf/inf = NaN at x = 1000; the
    rule gives sigmoid(x) = 1."""
    x = np.array([-30.0, -1.0, 0.5, 40.0, 1000.0])
    f = lambda x: np.sum(log1pexp(x))              # noqa: E731
    plain = lambda x: np.sum(np.log1p(np.exp(x)))  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isnan(gradc.grad(plain)(x)[-1])
        g = gradc.grad(f, target=target)(x)
        _, t = gradc.jvp(f, (x,), (np.ones_like(x),), target=target)
    np.testing.assert_allclose(g, sigmoid(x), rtol=1e-15, atol=0)
    assert abs(t - sigmoid(x).sum()) < 1e-12


def test_custom_jvp_rule_that_differs_from_the_function_wins():
    @gradc.custom_jvp
    def f(x):
        return np.sin(x)

    @f.defjvp
    def f_jvp(primals, tangents):
        return f(primals[0]), 3.0 * tangents[0]

    x = np.array([0.3, 1.2])
    np.testing.assert_array_equal(gradc.grad(lambda x: np.sum(f(x)))(x), [3.0, 3.0])
    np.testing.assert_array_equal(gradc.jacfwd(f)(x), 3.0 * np.eye(2))
    np.testing.assert_array_equal(gradc.jacrev(f)(x), 3.0 * np.eye(2))
    np.testing.assert_array_equal(f(x), np.sin(x))       # not traced: the function runs


def test_custom_jvp_matches_finite_differences_and_reverse_mode(rng):
    x = rng.standard_normal(6) * 3
    check_grads(lambda x: log1pexp(x) * np.cos(x), (x,), order=2)
    u, v = rng.standard_normal(6), rng.standard_normal(6)
    _, jv = gradc.jvp(log1pexp, (x,), (v,))
    _, pull = gradc.vjp(log1pexp, x)
    (ju,) = pull(u)
    assert abs(u @ jv - ju @ v) < 1e-13


def test_custom_jvp_second_derivative_uses_the_rule_again():
    """The rule calls log1pexp, whose JVP is the rule: the Hessian is sigmoid'(x), finite
    even at x = 1000 where autodiff of log1p(exp(x)) is NaN."""
    x = np.array([-2.0, 0.0, 1.5, 1000.0])
    with np.errstate(over="ignore"):                  # the value log1p(e^1000) is inf
        h = gradc.hessian(lambda x: np.sum(log1pexp(x)))(x)
    s = sigmoid(x)
    np.testing.assert_allclose(np.diag(h), s * (1 - s), rtol=1e-12, atol=1e-300)
    assert np.count_nonzero(h - np.diag(np.diag(h))) == 0


def test_custom_jvp_pytrees_nondiff_argnums_and_keywords(rng):
    @gradc.custom_jvp
    def scaled(p, power, x):
        return {"y": p["a"] * x ** power, "z": np.sum(p["b"] * x)}

    @scaled.defjvp
    def scaled_jvp(power, primals, tangents):
        (p, x), (tp, tx) = primals, tangents
        y = p["a"] * x ** power
        ty = tp["a"] * x ** power + p["a"] * power * x ** (power - 1) * tx
        tz = np.sum(tp["b"] * x + p["b"] * tx)
        return {"y": y, "z": np.sum(p["b"] * x)}, {"y": ty, "z": tz}

    scaled_nd = gradc.custom_jvp(scaled.fun, nondiff_argnums=(1,))
    scaled_nd.defjvp(scaled.jvp)
    p = {"a": rng.standard_normal(3), "b": rng.standard_normal(3)}
    x = rng.standard_normal(3) + 2.0

    def f(p, x):
        out = scaled_nd(p, 3, x=x)
        return np.sum(out["y"] ** 2) + out["z"]

    def ref(p, x):
        return np.sum((p["a"] * x ** 3) ** 2) + np.sum(p["b"] * x)

    assert abs(f(p, x) - ref(p, x)) < 1e-12
    gp, gx = gradc.grad(f, argnums=(0, 1))(p, x)
    np.testing.assert_allclose(gx, fd(lambda x: ref(p, x), x), rtol=1e-7)
    np.testing.assert_allclose(gp["a"], fd(lambda a: ref(dict(p, a=a), x), p["a"]), rtol=1e-7,
                               atol=1e-8)
    np.testing.assert_allclose(gp["b"], x, rtol=1e-12)


def test_defjvps_sums_one_rule_per_argument(rng):
    @gradc.custom_jvp
    def f(x, y):
        return np.sin(x) * y

    f.defjvps(lambda tx, out, x, y: np.cos(x) * y * tx, lambda ty, out, x, y: np.sin(x) * ty)
    x, y = rng.standard_normal(4), rng.standard_normal(4)
    check_grads(f, (x, y), order=2)
    gx, gy = gradc.grad(lambda x, y: np.sum(f(x, y)), argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx, np.cos(x) * y, rtol=1e-15)
    np.testing.assert_allclose(gy, np.sin(x), rtol=1e-15)

    g = gradc.custom_jvp(lambda x, y: x * y)
    g.defjvps(None, lambda ty, out, x, y: 5.0 * ty)          # no derivative in x
    np.testing.assert_array_equal(gradc.grad(lambda x: g(x, 2.0))(3.0), 0.0)
    np.testing.assert_array_equal(gradc.grad(lambda y: g(3.0, y))(2.0), 5.0)


def test_custom_jvp_float32_stays_float32():
    x = np.linspace(-3, 3, 5, dtype=np.float32)
    g = gradc.grad(lambda x: np.sum(log1pexp(x)))(x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, sigmoid(x.astype(np.float64)), rtol=1e-6)


# ---------------------------------------------------------------- custom_vjp

@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_custom_vjp_gradient_is_bwd(target):
    w = np.array([3.0, -0.1, 0.2, -2.0])
    x = np.array([1.0, 2.0, 3.0, 4.0])
    g = gradc.grad(lambda x: np.sum(clip_gradient(x, -0.5, 0.5) * w), target=target)(x)
    np.testing.assert_array_equal(g, np.clip(w, -0.5, 0.5))
    # the primal is the function's
    np.testing.assert_array_equal(gradc.jit(lambda x: clip_gradient(x, -0.5, 0.5) * w,
                                            target=target)(x), x * w)


def test_custom_vjp_rule_that_differs_from_the_function_wins():
    """A straight-through estimator: round forward, identity backward (and forward mode,
    as the identity transposed)."""
    @gradc.custom_vjp
    def round_ste(x):
        return np.round(x)

    round_ste.defvjp(lambda x: (round_ste(x), None), lambda res, ct: (ct,))
    x = np.array([0.2, 1.7, -2.6])
    f = lambda x: np.sum(round_ste(x) * x)                      # noqa: E731
    np.testing.assert_array_equal(gradc.grad(f)(x), np.round(x) + x)
    np.testing.assert_array_equal(gradc.jacfwd(round_ste)(x), np.eye(3))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_custom_vjp_matches_finite_differences_in_both_modes(rng, target):
    x = rng.standard_normal(5)
    f = lambda x: np.sin(square(x)) * x                          # noqa: E731
    check_grads(f, (x,), order=2)
    g = gradc.grad(lambda x: np.sum(f(x)), target=target)(x)
    np.testing.assert_allclose(g, fd(lambda x: np.sum(np.sin(x * x) * x), x), rtol=1e-7)
    u, v = rng.standard_normal(5), rng.standard_normal(5)
    _, jv = gradc.jvp(f, (x,), (v,), target=target)
    _, pull = gradc.vjp(f, x, target=target)
    assert abs(u @ jv - pull(u)[0] @ v) < 1e-13


def test_custom_vjp_hessian_is_forward_over_bwd():
    x = np.array([1.0, -0.7, 2.0])
    h = gradc.hessian(lambda x: np.sum(np.sin(square(x))))(x)
    want = 2 * np.cos(x * x) - 4 * x * x * np.sin(x * x)
    np.testing.assert_allclose(np.diag(h), want, rtol=1e-13)
    assert np.count_nonzero(h - np.diag(np.diag(h))) == 0


def test_custom_vjp_residual_pytree_and_several_outputs(rng):
    @gradc.custom_vjp
    def polar(x, y):
        return np.hypot(x, y), np.arctan2(y, x)

    def polar_fwd(x, y):
        r = np.hypot(x, y)
        return polar(x, y), {"x": x, "y": y, "r2": r * r}

    def polar_bwd(res, cts):
        cr, ct = cts
        x, y, r2 = res["x"], res["y"], res["r2"]
        r = np.sqrt(r2)
        return cr * x / r - ct * y / r2, cr * y / r + ct * x / r2

    polar.defvjp(polar_fwd, polar_bwd)
    x, y = rng.standard_normal(4), rng.standard_normal(4)
    check_grads(lambda x, y: polar(x, y)[0] * 2 + polar(x, y)[1], (x, y))
    # only one output differentiated: the other's cotangent is a zero
    gx = gradc.grad(lambda x: np.sum(polar(x, y)[1]))(x)
    np.testing.assert_allclose(gx, -y / (x * x + y * y), rtol=1e-13)


# ---------------------------------------------------------------- through the transformations

@pytest.mark.parametrize("fn", [log1pexp, square], ids=["custom_jvp", "custom_vjp"])
def test_vmap_of_grad_and_grad_of_vmap(rng, fn):
    x = rng.standard_normal((4, 3))
    w = rng.standard_normal(3)
    one = lambda x, w: np.sum(np.sin(fn(x * w)))                 # noqa: E731
    ref = np.stack([gradc.grad(one)(row, w) for row in x])
    np.testing.assert_allclose(gradc.vmap(gradc.grad(one), in_axes=(0, None))(x, w), ref,
                               rtol=1e-14)
    batched = lambda x: np.sum(gradc.vmap(one, in_axes=(0, None))(x, w))  # noqa: E731
    np.testing.assert_allclose(gradc.grad(batched)(x), ref, rtol=1e-14)
    # the weights, unbatched inside vmap, still get their gradient
    gw = gradc.grad(lambda w: np.sum(gradc.vmap(one, in_axes=(0, None))(x, w)))(w)
    np.testing.assert_allclose(gw, sum(gradc.grad(one, argnums=1)(row, w) for row in x),
                               rtol=1e-13)
    _, t = gradc.jvp(batched, (x,), (np.ones_like(x),))
    assert abs(t - ref.sum()) < 1e-12


def test_compiled_source_inlines_the_function():
    x = np.linspace(-2, 2, 7)
    f = gradc.jit(lambda x: log1pexp(x) + square(x), target="cpu")
    np.testing.assert_allclose(f(x), np.log1p(np.exp(x)) + x * x, rtol=1e-15)
    graph = gradc.make_graph(lambda x: log1pexp(x) + square(x))(x)
    text = str(graph)
    assert "custom_jvp_call[" in text and "rule=python:_log1pexp_jvp" in text
    assert "custom_vjp_call[" in text and "bwd=python:_square_bwd" in text
    source = f.source(x)
    assert "custom_" not in source and "log1p" in source


def test_inside_scan_and_while_loop(rng):
    x0 = rng.standard_normal(3) * 0.5

    def unrolled(x):
        for _ in range(4):
            x = 0.5 * square(x) + log1pexp(x) * 0.1
        return np.sum(x)

    def scanned(x):
        def body(c, _):
            return 0.5 * square(c) + log1pexp(c) * 0.1, None
        return np.sum(gradc.scan(body, x, None, length=4)[0])

    def reference(x):
        for _ in range(4):
            x = 0.5 * x * x + np.log1p(np.exp(x)) * 0.1
        return np.sum(x)

    want = fd(reference, x0)
    np.testing.assert_allclose(gradc.grad(unrolled)(x0), want, rtol=1e-7)
    np.testing.assert_allclose(gradc.grad(scanned)(x0), want, rtol=1e-7)
    np.testing.assert_allclose(gradc.grad(scanned, target="cpu")(x0), want, rtol=1e-7)


def test_inside_an_implicit_solve(rng):
    """A fixed point whose map calls a custom_vjp function: the implicit derivative's
    matvec holds custom_lin, which runs forward as bwd transposed."""
    a = rng.uniform(0.1, 0.3, 3)

    def solve(a):
        return gradc.fixed_point(lambda x, a: 0.5 * square(x) * a + a, np.zeros(3), a)

    def reference(a):
        x = np.zeros(3)
        for _ in range(200):
            x = 0.5 * x * x * a + a
        return x

    np.testing.assert_allclose(solve(a), reference(a), rtol=1e-10)
    g = gradc.grad(lambda a: np.sum(solve(a) ** 2))(a)
    np.testing.assert_allclose(g, fd(lambda a: np.sum(reference(a) ** 2), a), rtol=1e-6)


def test_to_sympy_sees_the_function():
    import sympy as sp
    expr = gradc.to_sympy(lambda x: square(x) + log1pexp(x))(1.0)
    x = sorted(expr.free_symbols, key=str)[0]
    assert sp.simplify(expr - (x ** 2 + sp.log(1 + sp.exp(x)))) == 0


# ---------------------------------------------------------------- errors

def test_forward_mode_of_a_nonlinear_bwd_is_a_named_error():
    f = lambda x: clip_gradient(x, -1.0, 1.0)                    # noqa: E731
    with pytest.raises(UnsupportedError, match="forward mode .* clip_gradient: its bwd is "
                       r"not linear[\s\S]*test_custom.py"):
        gradc.jvp(f, (np.ones(2),), (np.ones(2),))


def test_rule_errors_name_the_rule():
    @gradc.custom_jvp
    def f(x):
        return np.sin(x)

    x = np.ones(3)
    with pytest.raises(ArgumentError, match="has no JVP rule: define one with @"):
        gradc.grad(lambda x: np.sum(f(x)))(x)

    f.defjvp(lambda primals, tangents: (f(primals[0]), np.sum(tangents[0])))
    with pytest.raises(ArgumentError, match=r"tangent output 0 of <lambda> is f64\[\]; it "
                       r"must be f64\[3\][\s\S]*test_custom.py"):
        gradc.grad(lambda x: np.sum(f(x)))(x)

    f.defjvp(lambda primals, tangents: f(primals[0]))
    with pytest.raises(ArgumentError, match="must return a pair"):
        gradc.grad(lambda x: np.sum(f(x)))(x)

    g = gradc.custom_vjp(lambda x, y: x * y)
    g.defvjp(lambda x, y: (x * y, (x, y)), lambda res, ct: (ct * res[1],))
    with pytest.raises(ArgumentError, match="must return a tuple of 2 cotangents"):
        gradc.grad(lambda x: np.sum(g(x, 2.0 * x)))(x)


def test_closures_over_differentiated_values_are_named():
    def f(x, w):
        @gradc.custom_jvp
        def scaled(x):
            return x * w

        scaled.defjvp(lambda p, t: (p[0] * 2.0, t[0] * 2.0))
        return np.sum(scaled(x))

    x = np.ones(3)
    with pytest.raises(ArgumentError, match="reads a value being differentiated from "
                       "outside its arguments"):
        gradc.grad(f, argnums=1)(x, 2.0)
    # not differentiated in w: the closure is a constant, and the rule is used
    np.testing.assert_array_equal(gradc.grad(f)(x, 2.0), [2.0, 2.0, 2.0])

    def h(x, w):
        @gradc.custom_jvp
        def scaled(x):
            return x * 2.0

        scaled.defjvp(lambda p, t: (p[0] * 2.0, t[0] * w))      # the rule reads w
        return np.sum(scaled(x))

    with pytest.raises(ArgumentError, match="its rule <lambda> reads a traced value"):
        gradc.grad(h)(x, 2.0)


def test_nondiff_argnums_must_not_be_traced():
    @gradc.custom_jvp
    def f(x, n):
        return x * n

    f = gradc.custom_jvp(f.fun, nondiff_argnums=(1,))
    f.defjvp(lambda n, p, t: (p[0] * n, t[0] * n))
    x = np.ones(2)
    np.testing.assert_array_equal(gradc.grad(lambda x: np.sum(f(x, 3.0)))(x), [3.0, 3.0])
    with pytest.raises(ArgumentError, match="nondiff_argnums is a traced array"):
        gradc.grad(lambda x: np.sum(f(x, x)))(x)


# ---------------------------------------------------------------- checkpoint

def _layers(x, w):
    for _ in range(10):
        x = np.tanh(x * w + 0.1)
    return x


def _residual_elements(f, *args):
    """Elements stored between reverse mode's forward and backward passes."""
    from gradc.passes import linearize_graph
    graph = gradc.make_graph(f)(*args)
    primal, _ = linearize_graph(graph)
    return sum(int(np.prod(v.shape)) for v in primal.outputs[len(graph.outputs):])


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_checkpoint_keeps_only_inputs_and_changes_no_derivative(rng, target):
    x, w = rng.standard_normal(1000), 0.9
    plain = lambda x, w: np.sum(_layers(x, w) ** 2)                       # noqa: E731
    remat = lambda x, w: np.sum(gradc.checkpoint(_layers)(x, w) ** 2)     # noqa: E731
    # ten tanh layers keep ten arrays (and the last output); checkpointed, the inputs
    assert _residual_elements(plain, x, w) == 21001
    assert _residual_elements(remat, x, w) == 2001
    g_plain = gradc.grad(plain, argnums=(0, 1), target=target)(x, w)
    g_remat = gradc.grad(remat, argnums=(0, 1), target=target)(x, w)
    np.testing.assert_allclose(g_remat[0], g_plain[0], rtol=1e-14)
    assert g_remat[1] == pytest.approx(g_plain[1], rel=1e-14)
    out, pull = gradc.vjp(remat, x, w, target=target)
    assert out == pytest.approx(plain(x, w), rel=1e-15)
    np.testing.assert_allclose(pull(1.0)[0], g_plain[0], rtol=1e-14)
    t = gradc.jvp(remat, (x, w), (np.ones(1000), 1.0), target=target)[1]
    assert t == pytest.approx(gradc.jvp(plain, (x, w), (np.ones(1000), 1.0))[1], rel=1e-13)


def test_checkpoint_recomputes_inside_one_compiled_gradient(rng):
    """In one ``grad`` Graph the recomputation starts from the inputs passed through a
    ``barrier`` on the cotangents: CSE keeps it apart from the forward pass, and it runs
    in the backward pass, where the forward pass's inner buffers are dead and lend it
    their memory."""
    W = [rng.standard_normal((512, 512)) / 23 for _ in range(4)]
    x = rng.standard_normal((256, 512))

    def block(W, h):
        for w in W:
            h = np.tanh(h @ w)
        return h

    def loss(W, x, ck):
        h = block(W[:2], x)
        h = gradc.checkpoint(block)(W[2:], h) if ck else block(W[2:], h)
        return np.sum(h ** 2)

    graphs, grads = [], []
    for ck in (False, True):
        g = gradc.grad(lambda W, x: loss(W, x, ck), target="cpu")
        graphs.append(str(g.graph(W, x)))
        grads.append(g(W, x))
    assert "barrier" in graphs[1] and "barrier" not in graphs[0]
    # two products more: the checkpointed layers' forward pass, run again
    assert graphs[1].count("einsum") == graphs[0].count("einsum") + 2
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    want = gradc.grad(lambda W, x: loss(W, x, True), target="numpy")(W, x)
    for a, b in zip(grads[1], want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loop", ["scan", "fori_loop", "cond"])
def test_checkpoint_of_a_loop_holding_a_checkpoint_has_forward_mode(rng, loop):
    # (review: the inner recomputation's barrier, inside the loop's body, made the
    # outer bwd look nonlinear in its cotangents: linearize raised NoForwardMode)
    x, W = rng.standard_normal(5), rng.standard_normal((5, 5)) / 3
    layer = gradc.checkpoint(lambda h, W: np.tanh(h @ W))

    def block(h, W):
        if loop == "scan":
            return gradc.scan(lambda h, _: (layer(h, W), None), h, None, length=2)[0]
        if loop == "fori_loop":
            return gradc.fori_loop(0, 2, lambda i, h: layer(h, W), h)
        return gradc.cond(np.sum(h) > -100.0, lambda h: layer(h, W), lambda h: h, h)

    def loss(x, W):
        return np.sum(gradc.checkpoint(block)(x, W) ** 2)

    dx, dW = rng.standard_normal(5), rng.standard_normal((5, 5))
    want = gradc.jvp(loss, (x, W), (dx, dW))[1]
    for target in ("numpy", "cpu"):
        _, f_jvp = gradc.linearize(loss, x, W, target=target)
        assert f_jvp(dx, dW) == pytest.approx(want, rel=1e-13)


def test_vmap_keeps_unbatched_values_of_a_barrier_unbatched(rng):
    # (review: the barrier's batching rule broadcast every weight to the batch, so the
    # recomputation ran batched products over copies of each weight, 2.2x slower)
    W = [rng.standard_normal((6, 6)) / 3 for _ in range(2)]
    xs = rng.standard_normal((4, 3, 6))

    def loss(x, W):
        return np.sum(gradc.checkpoint(lambda W, h: np.tanh(np.tanh(h @ W[0]) @ W[1]))(W, x)
                      ** 2)

    g = gradc.vmap(gradc.grad(loss), in_axes=(0, None))
    graph = gradc.make_graph(g)(xs, W)
    barriers = [e for e in graph.eqns if e.prim.name == "barrier"]
    shapes = sorted(tuple(v.shape) for e in barriers for v in e.outputs)
    assert shapes == [(4, 3, 6), (6, 6), (6, 6)]          # the weights stay unbatched
    want = np.stack([gradc.grad(loss)(x, W) for x in xs])
    np.testing.assert_allclose(g(xs, W), want, rtol=1e-13, atol=1e-15)


def test_checkpoint_second_order_vmap_closures_and_static_args(rng):
    x = rng.standard_normal(4)
    scale = 1.7

    def f(x, n):
        return np.sin(x * scale) ** n        # reads scale from outside: a constant

    ck = gradc.checkpoint(f, static_argnums=(1,))
    check_grads(lambda x: ck(x, 3), (x,), order=2)
    np.testing.assert_allclose(gradc.hessian(lambda x: np.sum(ck(x, 3)))(x),
                               gradc.hessian(lambda x: np.sum(f(x, 3)))(x), rtol=1e-13)
    xs = rng.standard_normal((3, 4))
    np.testing.assert_allclose(
        gradc.vmap(gradc.grad(lambda x: np.sum(ck(x, 2))))(xs),
        gradc.vmap(gradc.grad(lambda x: np.sum(f(x, 2))))(xs), rtol=1e-14)

    def g(x, w):                             # the closure is differentiated: allowed here
        return np.sum(gradc.checkpoint(lambda x: np.tanh(x * w))(x))

    gw = gradc.grad(g, argnums=1)(x, 0.3)
    assert gw == pytest.approx(fd(lambda w: g(x, w), np.array(0.3)), rel=1e-7)
    assert gradc.remat is gradc.checkpoint


# ---------------------------------------------------------------- review regressions

def test_bwd_not_linear_in_its_cotangent_has_no_forward_mode():
    """A bwd that ignores the cotangent, or adds a term without it, is the adjoint of no
    JVP: forward mode says so instead of dropping the term (it gave 0 and I)."""
    @gradc.custom_vjp
    def loss(x):
        return np.sum(x * x)

    loss.defvjp(lambda x: (loss(x), x), lambda x, ct: (2.0 * x,))

    @gradc.custom_vjp
    def decay(x):
        return x

    decay.defvjp(lambda x: (x, x), lambda x, ct: (ct + 0.1 * x,))
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(gradc.grad(loss)(x), 2 * x)
    for f in (loss, decay):
        with pytest.raises(UnsupportedError, match="bwd is not linear"):
            gradc.jacfwd(f)(x)
    # jacobian's optimal plan falls back on reverse mode: row i is bwd(e_i)
    np.testing.assert_allclose(gradc.jacobian(decay)(x), np.eye(3) + 0.1 * x[None, :],
                               rtol=1e-15)
    np.testing.assert_array_equal(
        gradc.jacobian(lambda x: clip_gradient(x, -0.5, 0.5))(x), 0.5 * np.eye(3))


def test_custom_jvp_applied_to_a_tangent_transposes_as_its_function(rng):
    """JAX's idiom for a linear function: the rule is the function of the tangents, so
    in reverse mode the equation is transposed as the function itself."""
    @gradc.custom_jvp
    def double(x):
        return 2.0 * x

    double.defjvp(lambda p, t: (double(*p), double(*t)))
    x = rng.standard_normal(3)
    np.testing.assert_allclose(gradc.grad(lambda x: np.sum(np.sin(double(x))))(x),
                               2 * np.cos(2 * x), rtol=1e-15)
    A = np.diag([3.0, 4.0, 5.0])
    g = gradc.grad(lambda b: np.sum(gradc.linear_solve(lambda v: double(A @ v), b)))(x)
    np.testing.assert_allclose(g, 1 / (2 * np.diag(A)), rtol=1e-12)


def test_arguments_as_plain_code_sees_them(rng):
    """Python scalars stay Python scalars (float32 stays float32), defaults are bound
    before the rule sees the arguments, and a rule gets zero tangents for them."""
    @gradc.custom_jvp
    def scale(x, s=2.0):
        return x * s

    seen = []

    @scale.defjvp
    def scale_jvp(primals, tangents):
        seen.append(len(primals))
        x, s = primals
        tx, ts = tangents
        return scale(x, s), tx * s + x * ts

    x32 = rng.standard_normal(3).astype(np.float32)
    assert gradc.jit(lambda x: scale(x, 0.5))(x32).dtype == np.float32
    assert gradc.vmap(lambda x: scale(x, 3))(x32).dtype == np.float32
    np.testing.assert_array_equal(gradc.grad(lambda x: np.sum(scale(x)))(np.ones(2)), [2, 2])
    assert seen and set(seen) == {2}


def test_function_closing_over_a_traced_value_with_a_rule_that_calls_it():
    def run(x, w):
        @gradc.custom_jvp
        def f(x):
            return x * w

        f.defjvp(lambda p, t: (f(p[0]), 2.0 * t[0]))
        return np.sum(f(x))

    x = np.ones(2)
    np.testing.assert_array_equal(gradc.grad(run)(x, 3.0), [2.0, 2.0])
    np.testing.assert_array_equal(gradc.jit(gradc.grad(run))(x, 3.0), [2.0, 2.0])
    np.testing.assert_array_equal(
        gradc.vmap(gradc.grad(run), in_axes=(None, 0))(x, np.array([1.0, 5.0])),
        [[2.0, 2.0], [2.0, 2.0]])


def test_bwd_cotangent_structure_errors_and_none_subtrees():
    @gradc.custom_vjp
    def f(p):
        return p["a"] * 2.0 + p["b"]

    f.defvjp(lambda p: (f(p), None), lambda res, ct: ({"a": 3.0 * ct, "b": None},))
    p = {"a": np.ones(3), "b": np.ones(3)}
    g = gradc.grad(lambda p: np.sum(f(p)))(p)
    np.testing.assert_array_equal(g["a"], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(g["b"], [0.0, 0.0, 0.0])

    h = gradc.custom_vjp(lambda x, y: x * y)
    h.defvjp(lambda x, y: (h(x, y), None), lambda res, ct: (None, np.ones(3)))
    with pytest.raises(ArgumentError, match=r"cotangent leaf 1 of <lambda> is f64\[3\]; it "
                       r"must be f64\[\]"):
        gradc.grad(lambda y: np.sum(h(np.ones(3), y)))(2.0)


def test_integer_outputs_and_traced_settings():
    @gradc.custom_jvp
    def f(x):
        return np.sin(x), np.argmax(x)

    f.defjvp(lambda p, t: ((np.sin(p[0]), np.argmax(p[0])), (np.cos(p[0]) * t[0], 0.0)))
    x = np.array([0.3, 1.2, -0.4])
    g = gradc.grad(lambda x: np.sum(f(x)[0]) + x[f(x)[1]])(x)
    np.testing.assert_allclose(g, np.cos(x) + [0, 1, 0], rtol=1e-15)

    f.defjvp(lambda p, t: ((np.sin(p[0]), np.argmax(p[0]) * 1.0), (t[0], 0.0)))
    with pytest.raises(ArgumentError, match=r"primal output 1 of <lambda> is f64\[\]; it "
                       r"must be i64\[\]"):
        gradc.grad(lambda x: np.sum(f(x)[0]))(x)

    k = gradc.custom_jvp(lambda x, n: x * n, nondiff_argnums=(1,))
    k.defjvp(lambda n, p, t: (p[0] * n, t[0] * n))
    with pytest.raises(ArgumentError, match="nondiff_argnums is a traced array"):
        gradc.grad(lambda n: np.sum(k(np.ones(2), n)))(3.0)


def test_second_derivatives_of_a_closure_whose_rule_calls_the_function():
    """The rule's call of f reads the outside value through the rule's stand-in; the
    nested rule, traced later, reads it through its own (chained stand-ins)."""
    def run(x, w):
        @gradc.custom_jvp
        def f(x):
            return np.sin(x) * w

        f.defjvp(lambda p, t: (f(p[0]), np.cos(p[0]) * w * t[0]))

        @gradc.custom_vjp
        def g(x):
            return np.sin(x) * w

        g.defvjp(lambda x: (g(x), (x, w)), lambda r, ct: (np.cos(r[0]) * r[1] * ct,))
        return np.sum(f(x)) + np.sum(g(x))

    x, w = np.array([0.1, 0.5, 1.2]), 2.0
    want = np.diag(-2 * np.sin(x) * w)
    np.testing.assert_allclose(gradc.hessian(run)(x, w), want, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(gradc.jit(gradc.hessian(run), target="cpu")(x, w), want,
                               rtol=1e-14, atol=1e-300)


def test_rules_may_return_the_outside_value_itself():
    def run(x, w):
        @gradc.custom_vjp
        def f(x):
            return x * w

        f.defvjp(lambda x: (f(x), w), lambda w_, ct: (w_ * ct,))     # residual: w itself
        return np.sum(f(x))

    np.testing.assert_array_equal(gradc.grad(run)(np.ones(3), np.full(3, 3.0)), [3, 3, 3])


def test_linearity_check_sees_into_subgraphs_and_products():
    """An affine term inside a cond, a loop or a nested custom function, and a product
    of two cotangents, all leave forward mode unavailable (it gave wrong values);
    zeros made from residuals (0 * r) are still zeros."""
    x = np.array([0.3, -0.2, 0.9])
    bwds = {
        "cond": lambda r, ct: (gradc.cond(True, lambda c: c + 1.0, lambda c: c - 1.0, ct),),
        "loop": lambda r, ct: (gradc.fori_loop(0, 2, lambda i, c: c + 1.0, ct),),
        "product": lambda r, ct: (np.sign(ct) * ct,),
    }
    for name, bwd in bwds.items():
        f = gradc.custom_vjp(lambda x: np.sin(x))
        f.defvjp(lambda x: (f(x), x), bwd)
        with pytest.raises(UnsupportedError, match="bwd is not linear"):
            gradc.jacfwd(f)(x)
        np.testing.assert_allclose(gradc.jacobian(f)(x), gradc.jacrev(f)(x))
    m = gradc.custom_vjp(lambda x: np.sin(x))
    m.defvjp(lambda x: (m(x), x), lambda r, ct: (np.where(r > 0, ct, 0.0 * r),))
    np.testing.assert_array_equal(gradc.jacfwd(m)(x), np.diag(x > 0).astype(float))


def test_checkpoint_applied_to_tangents_transposes_as_its_function():
    lin = gradc.checkpoint(lambda a, b: a * b)

    @gradc.custom_jvp
    def f(x):
        return np.sin(x)

    f.defjvp(lambda p, t: (f(p[0]), lin(t[0], np.cos(p[0]))))
    x = np.array([0.3, 1.2, 2.0])
    np.testing.assert_allclose(gradc.grad(lambda x: np.sum(f(x)))(x), np.cos(x), rtol=1e-15)


def test_check_skips_forward_mode_where_a_rule_has_none():
    report = gradc.check(lambda x: np.sin(clip_gradient(x, -1.0, 1.0)), np.array([0.3, 0.5]))
    assert report.ok
    skipped = [r for r in report.rows if r.ok is None]
    assert skipped and all(r.mode == "fwd" for r in skipped)
    assert "no forward mode for gradc.custom_vjp function clip_gradient" in str(report)
    assert all(r.ok for r in report.rows if r.mode == "rev")


def test_inside_a_trace_the_rule_holds_even_for_constant_arguments():
    """Called with constants only, a custom function may still read a traced value
    from outside: it is recorded (and its closure checked), not run past its rule."""
    def run(w):
        @gradc.custom_jvp
        def f(x):
            return x * w

        f.defjvp(lambda p, t: (f(p[0]), 2.0 * t[0]))
        return np.sum(f(np.ones(2)))

    with pytest.raises(ArgumentError, match="reads a value being differentiated"):
        gradc.grad(run)(3.0)
    assert gradc.jit(run)(3.0) == 6.0
    # a ufunc (keyword-only parameters with defaults) checkpointed
    np.testing.assert_allclose(gradc.grad(lambda x: np.sum(gradc.checkpoint(np.sin)(x)))(
        np.ones(2)), np.cos(np.ones(2)), rtol=1e-15)


def test_checkpoint_takes_jaxs_signature():
    """(QA: checkpoint(f, prevent_cse=..., policy=...) was a TypeError.)  JAX's
    arguments are taken; a saving policy, which gradc's checkpoint does not have, is a
    clear error."""
    f = gradc.checkpoint(lambda x: np.sin(x) * x, prevent_cse=False)
    np.testing.assert_allclose(gradc.grad(f)(1.0), np.cos(1.0) + np.sin(1.0))
    g = gradc.checkpoint(lambda x, n: np.sin(x) * n, True, None, (1,))
    np.testing.assert_allclose(gradc.grad(lambda x: g(x, 3))(1.0), 3 * np.cos(1.0))
    with pytest.raises(gradc.UnsupportedError, match="policy=.*inputs only"):
        gradc.checkpoint(np.sin, policy=lambda *a, **k: True)
