"""``gradc.odeint``: adaptive Dormand-Prince steps, derivatives by the adjoint ODE.

Values against closed forms (a linear system's matrix exponential) and SciPy's
``solve_ivp``; derivatives against the exact ones, central finite differences of SciPy's
solution at tight tolerances, and JAX's ``odeint`` where JAX is installed."""
import warnings

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import gradc
from gradc.errors import ArgumentError, GradcError
from gradc.testing import numerical_grad

RNG = np.random.default_rng(7)


def _system(n=3):
    a = RNG.standard_normal((n, n)) / 2 - np.eye(n)
    return a, RNG.standard_normal(n)


def _linear(y, t, a):
    return a @ y


def _driven(y, t, a, k):
    """Non-autonomous and nonlinear: a damped system forced by sin(k t)."""
    return np.tanh(a @ y) + 0.3 * np.sin(k * t) - 0.1 * y ** 3


def _scipy(fun, y0, ts, *args):
    sol = solve_ivp(lambda t, y: fun(y, t, *args), (ts[0], ts[-1]), y0, t_eval=ts,
                    method="DOP853", rtol=1e-13, atol=1e-13)
    assert sol.success
    return sol.y.T


def _central(fn, x, eps=1e-5):
    return numerical_grad(fn, x, eps)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_linear_system_is_the_matrix_exponential(target):
    a, y0 = _system()
    ts = np.array([0.0, 0.05, 0.4, 0.4, 1.0, 2.5])    # (a repeated time, a short interval)
    w = RNG.standard_normal((len(ts), 3))
    exact = np.stack([expm(a * t) @ y0 for t in ts])

    def loss(y0, a):
        return np.sum(w * gradc.odeint(_linear, y0, ts, a, rtol=1e-11, atol=1e-11))

    ys = gradc.jit(lambda y0, a: gradc.odeint(_linear, y0, ts, a, rtol=1e-11, atol=1e-11),
                   target=target)(y0, a)
    np.testing.assert_allclose(ys, exact, rtol=1e-8, atol=1e-10)
    gy, ga = gradc.grad(loss, argnums=(0, 1), target=target)(y0, a)
    # d/dy0 of sum_i w_i . expm(a t_i) y0 is sum_i expm(a t_i)^T w_i, exactly
    np.testing.assert_allclose(gy, sum(expm(a * t).T @ wi for t, wi in zip(ts, w)),
                               rtol=1e-7)
    fd = _central(lambda a_: np.sum(w * np.stack([expm(a_ * t) @ y0 for t in ts])), a)
    np.testing.assert_allclose(ga, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_gradients_of_a_driven_system_match_finite_differences(target):
    a, y0 = _system()
    ts = np.array([0.0, 0.3, 1.1, 2.0])
    k = 1.7
    w = RNG.standard_normal((len(ts), 3))

    def loss(y0, ts, a, k):
        return np.sum(w * gradc.odeint(_driven, y0, ts, a, k, rtol=1e-10, atol=1e-10))

    got = gradc.grad(loss, argnums=(0, 1, 2, 3), target=target)(y0, ts, a, k)
    ys = _scipy(_driven, y0, ts, a, k)
    np.testing.assert_allclose(gradc.odeint(_driven, y0, ts, a, k, rtol=1e-10, atol=1e-10),
                               ys, rtol=1e-8, atol=1e-9)
    expect = [_central(lambda y: np.sum(w * _scipy(_driven, y, ts, a, k)), y0),
              _central(lambda t: np.sum(w * _scipy(_driven, y0, t, a, k)), ts),
              _central(lambda m: np.sum(w * _scipy(_driven, y0, ts, m, k)), a),
              _central(lambda q: np.sum(w * _scipy(_driven, y0, ts, a, q)), k)]
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


def test_closures_and_pytrees():
    """A traced value that func reads from outside is differentiated like an argument;
    the state and the arguments may be pytrees."""
    ts = np.linspace(0.0, 1.5, 4)

    def loss(omega, damping, p0):
        def oscillator(s, t, c):
            return {"x": s["v"], "v": -omega ** 2 * s["x"] - c["d"] * s["v"]}
        out = gradc.odeint(oscillator, {"x": p0, "v": np.zeros(2)}, ts, {"d": damping})
        return np.sum(out["x"] ** 2) + np.sum(out["v"][-1])

    args = (1.3, 0.2, np.array([1.0, -0.5]))
    got = gradc.grad(loss, argnums=(0, 1, 2))(*args)

    def plain(omega, damping, p0):
        def fun(t, s):
            x, v = s[:2], s[2:]
            return np.concatenate([v, -omega ** 2 * x - damping * v])
        s = solve_ivp(fun, (ts[0], ts[-1]), np.concatenate([p0, np.zeros(2)]), t_eval=ts,
                      method="DOP853", rtol=1e-13, atol=1e-13).y.T
        return np.sum(s[:, :2] ** 2) + np.sum(s[-1, 2:])

    np.testing.assert_allclose(got[0], _central(lambda o: plain(o, *args[1:]), args[0]),
                               rtol=1e-5)
    np.testing.assert_allclose(got[1], _central(lambda d: plain(args[0], d, args[2]),
                                                args[1]), rtol=1e-5)
    np.testing.assert_allclose(got[2], _central(lambda p: plain(*args[:2], p), args[2]),
                               rtol=1e-5)


def test_jacobians_and_vmap():
    """jacrev of the solution (the adjoint vmapped over the output's rows) against finite
    differences, vjp against it, and vmap over initial states (values and gradients)."""
    a, y0 = _system()
    ts = np.array([0.0, 0.7])

    def final(y0):
        return gradc.odeint(_driven, y0, ts, a, 1.0, rtol=1e-10, atol=1e-10)[-1]

    jac = gradc.jacrev(final)(y0)
    fd = np.stack([_central(lambda y: _scipy(_driven, y, ts, a, 1.0)[-1][i], y0)
                   for i in range(3)])
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)
    u = RNG.standard_normal(3)
    out, pull = gradc.vjp(final, y0)
    # (the adjoint's steps follow its cotangent: rows of jacrev took other steps)
    np.testing.assert_allclose(pull(u)[0], u @ jac, rtol=1e-7, atol=1e-9)
    batch = np.stack([y0, 2 * y0, -y0])
    np.testing.assert_allclose(gradc.vmap(final)(batch),
                               np.stack([final(b) for b in batch]), rtol=1e-12)
    grads = gradc.vmap(gradc.grad(lambda y: np.sum(final(y) ** 2)))(batch)
    for b, g in zip(batch, grads):
        np.testing.assert_allclose(g, 2 * gradc.jacrev(final)(b).T @ final(b), rtol=1e-7)


def test_second_derivative_reverse_over_reverse():
    y0, ts = np.array([1.0, 2.0]), np.array([0.0, 1.0])

    def total(a):
        return np.sum(gradc.odeint(lambda y, t, a: -a * y, y0, ts, a, rtol=1e-11,
                                   atol=1e-11)[-1])

    # sum y0 exp(-a): second derivative 3 exp(-a)
    np.testing.assert_allclose(gradc.grad(gradc.grad(total))(0.7), 3 * np.exp(-0.7),
                               rtol=1e-7)


def test_float32_stays_float32():
    y0 = np.array([1.0, 0.5], np.float32)
    ts = np.array([0.0, 0.5, 1.0], np.float32)
    ys = gradc.odeint(lambda y, t: -y, y0, ts)
    assert ys.dtype == np.float32
    np.testing.assert_allclose(ys, np.exp(-ts)[:, None] * y0, rtol=1e-6)
    g = gradc.grad(lambda y: np.sum(gradc.odeint(lambda y, t: -y, y, ts)))(y0)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, np.sum(np.exp(-ts)) * np.ones(2), rtol=1e-5)


def test_cuda_simulator_matches_cpu():
    pytest.importorskip("numba.cuda")
    y0, ts = np.array([1.0, 2.0]), np.array([0.0, 0.5, 1.0])

    def loss(y0, ts, a):
        return np.sum(gradc.odeint(lambda y, t, a: -a * y * np.cos(t), y0, ts, a) ** 2)

    got = gradc.grad(loss, argnums=(0, 1, 2), target="cuda")(y0, ts, 0.8)
    want = gradc.grad(loss, argnums=(0, 1, 2), target="numpy")(y0, ts, 0.8)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10)
    # sum over t of |y0|^2 exp(-2 a sin t): its derivative in y0, exactly
    np.testing.assert_allclose(got[0], 2 * y0 * np.sum(np.exp(-1.6 * np.sin(ts))),
                               rtol=1e-7)


def test_too_few_steps_warn_with_the_time_and_the_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradc.odeint(lambda y, t: -50 * y, np.ones(2), np.array([0.0, 10.0]), mxstep=5)
    messages = [str(w.message) for w in caught
                if isinstance(w.message, gradc.ConvergenceWarning)]
    assert len(messages) == 1
    assert "odeint (mxstep=5) stopped at t = " in messages[0]
    assert "test_ode.py" in messages[0]


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_gradients_warnings_name_the_line_of_the_odeint_call(target):
    """Both solves of a gradient (the forward one and the adjoint), stopped by mxstep,
    warn with the line that called odeint.  (The adjoint's report is made while the
    gradient is derived: it named ``functools.py``, a frame of gradc's machinery.)"""
    def loss(y0):
        ys = gradc.odeint(lambda y, t: -50 * y, y0, np.array([0.0, 10.0]), mxstep=5)
        return np.sum(ys ** 2)
    line = f"test_ode.py:{loss.__code__.co_firstlineno + 1}: ys = gradc.odeint("
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradc.grad(loss, target=target)(np.ones(2))
    messages = [str(w.message) for w in caught
                if isinstance(w.message, gradc.ConvergenceWarning)]
    assert len(messages) == 2, messages
    assert any("odeint (mxstep=5) stopped" in m for m in messages)
    assert any("odeint's adjoint (mxstep=5) stopped" in m for m in messages)
    assert all(line in m and "functools" not in m for m in messages), messages


def test_bad_input_is_a_clear_error():
    f = _linear
    a, y0 = _system()
    with pytest.raises(ArgumentError, match="non-decreasing"):
        gradc.odeint(f, y0, np.array([0.0, 1.0, 0.5]), a)
    with pytest.raises(ArgumentError, match="rtol must be a positive number"):
        gradc.odeint(f, y0, np.array([0.0, 1.0]), a, rtol=0.0)
    with pytest.raises(ArgumentError, match="mxstep must be a positive integer"):
        gradc.odeint(f, y0, np.array([0.0, 1.0]), a, mxstep=2.5)
    with pytest.raises(ArgumentError, match="structure and shapes of y0"):
        gradc.odeint(lambda y, t, a: (a @ y)[:2], y0, np.array([0.0, 1.0]), a)
    with pytest.raises(ArgumentError, match="test_ode.py"):
        gradc.odeint(lambda y: y, y0, np.array([0.0, 1.0]))
    with pytest.raises(GradcError, match="forward mode .* odeint"):
        gradc.jvp(lambda y: gradc.odeint(f, y, np.array([0.0, 1.0]), a), (y0,), (y0,))


def test_as_jax_odeint():
    jax = pytest.importorskip("jax")
    from jax.experimental.ode import odeint as jax_odeint
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    a, y0 = _system()
    ts = np.array([0.0, 0.4, 1.3])

    def loss_np(y0, a, k):
        return np.sum(gradc.odeint(_driven, y0, ts, a, k, rtol=1e-10, atol=1e-10) ** 2)

    def loss_jax(y0, a, k):
        def fun(y, t, a, k):
            return jnp.tanh(a @ y) + 0.3 * jnp.sin(k * t) - 0.1 * y ** 3
        return jnp.sum(jax_odeint(fun, y0, jnp.asarray(ts), a, k, rtol=1e-10,
                                  atol=1e-10) ** 2)

    got = gradc.grad(loss_np, argnums=(0, 1, 2))(y0, a, 1.2)
    want = jax.grad(loss_jax, argnums=(0, 1, 2))(y0, a, 1.2)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-6, atol=1e-9)


def test_edge_cases_from_review():
    """(Review) decreasing times passed traced took no steps and read the last step's
    polynomial backwards; traced integer times were refused; a float32 leaf beside a
    float64 one came back float64; a float32 zero state divided by 1e-300 (0 in
    float32); an empty state warned falsely; 0-d array tolerances were refused."""
    f = lambda y, t: -y                                       # noqa: E731
    for target in ("numpy", "cpu"):
        with pytest.raises(gradc.EvaluationError, match=r"non-decreasing; t\[2\]"):
            gradc.jit(lambda t: gradc.odeint(f, np.ones(1), t), target=target)(
                np.array([0.0, 1.0, 0.5]))
    got = gradc.jit(lambda t: gradc.odeint(f, np.ones(1), t), target="numpy")(
        np.array([0, 1, 1]))
    np.testing.assert_allclose(got[:, 0], np.exp(-np.array([0.0, 1.0, 1.0])), rtol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixed = gradc.odeint(lambda y, t: {"a": -y["a"], "b": -y["b"]},
                             {"a": np.ones(2, np.float32), "b": np.ones(1)}, [0.0, 1.0])
        assert mixed["a"].dtype == np.float32 and mixed["b"].dtype == np.float64
        zero = gradc.odeint(f, np.zeros(2, np.float32), np.array([0.0, 1.0], np.float32))
        assert zero.dtype == np.float32 and not zero.any()
        assert gradc.odeint(f, np.zeros(0), np.array([0.0, 1.0])).shape == (2, 0)
        one = gradc.odeint(f, np.ones(1), [0.0, 1.0], rtol=np.float64(1e-9), atol=np.array(1e-9))
        np.testing.assert_allclose(one[-1], np.exp(-1.0), rtol=1e-8)
