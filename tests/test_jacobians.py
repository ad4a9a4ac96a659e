"""jacfwd, jacrev, hessian and hvp (gradc/jacobians.py): compositions of vmap with jvp,
vjp and grad, against finite differences and against each other."""
from __future__ import annotations

import numpy as np
import pytest

import gradc

RNG = np.random.default_rng(4)
W = RNG.standard_normal((4, 3))


def layer(x):
    return np.tanh(W @ x) * np.sum(x ** 2)


def scalar(x):
    return np.sum(np.sin(x) * x[::-1]) + np.prod(x) + np.log(np.sum(np.exp(x)))


def _fd_jacobian(f, x, h=1e-6):
    cols = []
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        e = e.reshape(x.shape)
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
    return np.moveaxis(np.stack(cols), 0, -1).reshape(np.shape(f(x)) + x.shape)


@pytest.mark.parametrize("f, x", [
    (layer, RNG.standard_normal(3)),
    (lambda M: np.tanh(M @ W.T) ** 2, RNG.standard_normal((2, 3))),
    (lambda x: np.cumsum(x * x[0]), RNG.standard_normal(5)),
    (scalar, RNG.standard_normal(4)),
])
def test_jacfwd_and_jacrev_agree_with_each_other_and_finite_differences(f, x):
    jf, jr = gradc.jacfwd(f)(x), gradc.jacrev(f)(x)
    assert jf.shape == np.shape(f(x)) + x.shape
    np.testing.assert_allclose(jf, jr, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jf, _fd_jacobian(f, x), rtol=1e-6, atol=1e-8)


def test_jacobians_are_one_batched_graph_not_a_loop():
    x = RNG.standard_normal(3)
    for jac in (gradc.jacfwd, gradc.jacrev):
        graph = gradc.make_graph(lambda x: jac(layer)(x))(x)
        assert "scan" not in str(graph), jac.__name__
    # and the second argument, compiled
    f = lambda a, b: np.sin(a * b) * b  # noqa: E731
    a, b = RNG.standard_normal(3), RNG.standard_normal(3)
    np.testing.assert_allclose(gradc.jacfwd(f, argnums=1, target="cpu")(a, b),
                               np.diag(a * np.cos(a * b) * b + np.sin(a * b)), rtol=1e-13)


def test_hessian_and_both_hvps():
    x, v = RNG.standard_normal(4), RNG.standard_normal(4)
    hess = gradc.hessian(scalar)(x)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hess, _fd_jacobian(gradc.grad(scalar), x), rtol=1e-6,
                               atol=1e-8)
    fwd_rev = gradc.hvp(scalar, (x,), (v,))
    rev_rev = gradc.hvp(scalar, (x,), (v,), method="rev-rev")
    np.testing.assert_allclose(fwd_rev, hess @ v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rev_rev, fwd_rev, rtol=1e-12, atol=1e-14)


def test_jacobian_through_a_loop():
    def rnn(h0):
        h, _ = gradc.scan(lambda h, x: (np.tanh(W[:3, :3] @ h + x), None), h0,
                          np.full((6, 3), 0.1))
        return h
    h0 = RNG.standard_normal(3)
    np.testing.assert_allclose(gradc.jacfwd(rnn)(h0), gradc.jacrev(rnn)(h0), rtol=1e-12)
    np.testing.assert_allclose(gradc.jacrev(rnn)(h0), _fd_jacobian(rnn, h0), rtol=1e-6,
                               atol=1e-9)


def test_errors_are_named():
    with pytest.raises(gradc.ArgumentError, match="argnums must be the position"):
        gradc.jacfwd(layer, argnums=3)(np.ones(3))
    with pytest.raises(gradc.ArgumentError, match="must be a float array"):
        gradc.jacrev(lambda n: n * 2.0)(np.arange(3))
    with pytest.raises(gradc.ArgumentError, match="method is 'fwd-rev' or 'rev-rev'"):
        gradc.hvp(scalar, (np.ones(2),), (np.ones(2),), method="fwd-fwd")


def test_integer_inputs_are_refused_by_name():
    """grad, jacfwd, jacrev and hessian with respect to an integer (or bool) argument:
    an ArgumentError naming the argument, its dtype and the user's line (JAX: a
    TypeError, "grad requires real- or complex-valued inputs")."""
    n = np.arange(3, dtype=np.int32)
    for transform, fragment in [(gradc.grad, r"i32\[3\]"), (gradc.jacfwd, "int32"),
                                (gradc.jacrev, "int32"), (gradc.hessian, "int32")]:
        with pytest.raises(gradc.ArgumentError, match=fragment) as info:
            transform(lambda x: np.sum(x * 2.0))(n)
        assert "argument 0" in str(info.value) and "test_jacobians.py" in str(info.value)
    with pytest.raises(gradc.ArgumentError, match="the int 3"):
        gradc.grad(lambda x: x * 2.0)(3)
    with pytest.raises(gradc.ArgumentError, match="bool"):
        gradc.jacfwd(lambda x: x * 2.0)(np.ones(3, bool))


@pytest.mark.parametrize("jac", [gradc.jacfwd, gradc.jacrev, gradc.jacobian,
                                 lambda f: gradc.jacobian(f, mode="fwd"),
                                 lambda f: gradc.jacobian(f, mode="rev")],
                         ids=["jacfwd", "jacrev", "optimal", "fwd", "rev"])
def test_integer_valued_outputs_have_float_zero_jacobians(jac):
    """(jacfwd gave int64 zeros for an integer output, bool False for a comparison,
    where jacrev gave float zeros.)  The Jacobian of an integer- or bool-valued output
    is zeros of shape (output shape + input shape) in the input's dtype, from every
    mode (JAX's jacfwd gives float0 zeros, which NumPy lacks)."""
    x = np.array([0.5, 1.5, 2.5], np.float32)
    for f, out_shape in [(lambda x: np.floor(x).astype(np.int64), (3,)),
                         (lambda x: x > 1.0, (3,)),
                         (lambda x: np.argmax(x), ()),
                         (lambda x: np.sum(x > 1.0), ())]:
        J = jac(f)(x)
        assert J.dtype == np.float32 and J.shape == out_shape + (3,)
        assert not np.any(J)
    if jac in (gradc.jacfwd, gradc.jacrev):
        J, K = jac(lambda x: (x * 2.0, np.argmax(x)))(x)
        np.testing.assert_array_equal(J, 2.0 * np.eye(3))
        assert K.dtype == np.float32 and K.shape == (3,) and not np.any(K)
        H = gradc.hessian(lambda x: np.argmax(x))(x)
        assert H.shape == (3, 3) and not np.any(H)


def test_repeated_calls_reuse_one_compiled_function():
    """hvp keeps one jit per function and method (a call would otherwise trace anew), and
    a jacfwd object traces once per signature."""
    from gradc.jacobians import _hvp_function
    assert _hvp_function(scalar, "fwd-rev", "numpy") is _hvp_function(scalar, "fwd-rev",
                                                                     "numpy")
    jac = gradc.jacfwd(layer)
    x = RNG.standard_normal(3)
    np.testing.assert_allclose(jac(x), jac(x + 0.0), rtol=0)
    assert len(jac._cache.entries) == 1


def test_a_tuple_of_argnums_gives_a_tuple_of_jacobians():
    a, b = RNG.standard_normal(3), RNG.standard_normal((2, 3))
    f = lambda a, b: np.tanh(b @ a) * np.sum(b)      # noqa: E731
    for jac in (gradc.jacfwd, gradc.jacrev, gradc.jacobian):
        ja, jb = jac(f, argnums=(0, 1))(a, b)
        assert ja.shape == (2, 3) and jb.shape == (2, 2, 3)
        np.testing.assert_allclose(ja, gradc.jacfwd(f, argnums=0)(a, b), rtol=1e-12)
        np.testing.assert_allclose(jb, _fd_jacobian(lambda b: f(a, b), b), rtol=1e-6,
                                   atol=1e-8)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_pytree_of_outputs_gives_the_same_pytree_of_jacobians(target):
    """``jacfwd``/``jacrev`` of a function returning a dict of a tuple (JAX's
    convention: each output's Jacobian, shaped output + input, where the output was);
    both modes agree with each other and with finite differences."""
    x = np.array([0.5, 2.0, -3.0])

    def f(x):
        return {"s": np.sin(x), "q": (np.sum(x ** 2), x[:2] * x[1:])}

    def flat(x):
        return np.concatenate([np.sin(x), [np.sum(x ** 2)], x[:2] * x[1:]])
    want = _fd_jacobian(flat, x)
    for jac in (gradc.jacfwd, gradc.jacrev):
        J = jac(f, target=target)(x)
        assert set(J) == {"s", "q"} and isinstance(J["q"], tuple)
        assert [np.shape(J["s"]), np.shape(J["q"][0]), np.shape(J["q"][1])] == \
            [(3, 3), (3,), (2, 3)]
        got = np.concatenate([J["s"], J["q"][0][None], J["q"][1]])
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------- JAX's nesting, pytrees

def _pair(a, b):
    return np.sum(a ** 2 * b[::-1]) + a[0] * b[1] ** 2


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_tuple_argnums_nest_the_output_outside_as_jax(target):
    """(QA: with a tuple of argnums the arguments were the outer level, so hessian's
    H[0][1] was the transpose of ∂²f/∂a∂b, silently when a and b have one shape.)
    JAX's convention: output structure outside, arguments inside; block [i][j] of the
    Hessian is ∂²f/∂x_i∂x_j, shaped x_i's + x_j's."""
    a, b = np.array([0.5, -1.0]), np.array([2.0, 3.0, 4.0])
    H = gradc.hessian(lambda a, b: _pair(a, b[:2]) * np.sum(b), argnums=(0, 1),
                      target=target)(a, b)
    fab = gradc.jacfwd(gradc.grad(lambda a, b: _pair(a, b[:2]) * np.sum(b), 0), 1)(a, b)
    assert H[0][1].shape == (2, 3) and H[1][0].shape == (3, 2)
    np.testing.assert_allclose(H[0][1], fab, rtol=1e-12)
    np.testing.assert_allclose(H[1][0], fab.T, rtol=1e-12)
    b2 = b[:2]
    H = gradc.hessian(_pair, argnums=(0, 1), target=target)(a, b2)
    np.testing.assert_allclose(H[0][1], [[0.0, 2 * a[0] + 2 * b2[1]], [2 * a[1], 0.0]])
    for jac in (gradc.jacfwd, gradc.jacrev):
        J = jac(lambda a, b: (a * b, a ** 2 + 0 * b), argnums=(0, 1), target=target)(a, b2)
        np.testing.assert_allclose(J[0][1], np.diag(a))          # d(a*b)/db
        np.testing.assert_allclose(J[1][0], np.diag(2 * a))      # d(a**2)/da
        np.testing.assert_allclose(J[1][1], np.zeros((2, 2)))
        D = jac(lambda a, b: {"p": a * b, "q": np.sum(a)}, argnums=(0, 1))(a, b2)
        assert set(D) == {"p", "q"} and isinstance(D["p"], tuple)
        np.testing.assert_allclose(D["q"][0], [1.0, 1.0])
        assert D["q"][1].shape == (2,) and not D["q"][1].any()
        np.testing.assert_allclose(D["p"][0], np.diag(b2))


@pytest.mark.parametrize("jac", [gradc.jacfwd, gradc.jacrev])
def test_pytree_arguments_and_has_aux(jac):
    """(QA: a dict or list argument gave "must be a float array, got dtype object" or a
    ConcretizationError, and jacfwd/jacrev took no has_aux.)  Each leaf of the
    differentiated argument gets its block, in the argument's structure, against
    finite differences; has_aux returns (jacobian, aux)."""
    from collections import namedtuple
    P = namedtuple("P", "w b")
    x = RNG.standard_normal(3)
    params = {"W": RNG.standard_normal((2, 3)), "layers": [RNG.standard_normal(2)],
              "p": P(RNG.standard_normal(2), 0.7)}

    def net(params, x):
        h = np.tanh(params["W"] @ x + params["layers"][0])
        return h * params["p"].w + params["p"].b

    J = jac(net)(params, x)
    assert set(J) == {"W", "layers", "p"} and isinstance(J["p"], P)
    assert J["W"].shape == (2, 2, 3) and J["layers"][0].shape == (2, 2)
    assert np.shape(J["p"].b) == (2,)
    fd_W = _fd_jacobian(lambda W: net(dict(params, W=W), x), params["W"])
    np.testing.assert_allclose(J["W"], fd_W, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(J["p"].w, np.diag(np.tanh(params["W"] @ x
                                                         + params["layers"][0])))
    np.testing.assert_allclose(J["p"].b, np.ones(2))
    Jx, Jp = jac(net, argnums=(1, 0))(params, x)
    np.testing.assert_allclose(Jx, _fd_jacobian(lambda x: net(params, x), x), rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(Jp["W"], J["W"])
    Jl = jac(lambda xs: xs[0] * xs[1])([x, 2 * x])
    np.testing.assert_allclose(Jl[0], np.diag(2 * x))
    np.testing.assert_allclose(Jl[1], np.diag(x))
    Ja, aux = jac(lambda x: (np.sin(x), {"n": np.sum(x), "k": 3}), has_aux=True)(x)
    np.testing.assert_allclose(Ja, np.diag(np.cos(x)))
    assert aux["k"] == 3 and np.isclose(aux["n"], np.sum(x))
    with pytest.raises(gradc.ArgumentError, match="has_aux=True requires"):
        jac(lambda x: np.sin(x), has_aux=True)(x)
    with pytest.raises(gradc.ArgumentError, match="argument 0 must be a float array"):
        jac(lambda d: d["n"] * 2.0)({"n": np.arange(3)})


def test_hessian_has_aux_and_repeated_argnums():
    x = RNG.standard_normal(3)
    H, aux = gradc.hessian(lambda x: (np.sum(x ** 3), x * 2), has_aux=True)(x)
    np.testing.assert_allclose(H, np.diag(6 * x))
    np.testing.assert_allclose(aux, 2 * x)
    J0, J1 = gradc.jacfwd(lambda x: x ** 2, argnums=(0, 0))(x)
    np.testing.assert_allclose(J0, np.diag(2 * x))
    np.testing.assert_allclose(J1, J0)
    assert not np.shares_memory(J0, J1)


def test_hvp_rev_rev_of_a_pytree():
    """(QA: method="rev-rev" multiplied the gradient's tuple by v's: a TypeError from
    inside gradc.)"""
    def f(p):
        return np.sum(p[0] ** 2 * p[1])
    x, v = (np.array([1.0, 2.0]), np.array([3.0, 4.0])), (np.ones(2), np.zeros(2))
    for method in ("fwd-rev", "rev-rev"):
        hv = gradc.hvp(f, (x,), (v,), method=method)
        np.testing.assert_allclose(hv[0], [6.0, 8.0])
        np.testing.assert_allclose(hv[1], [2.0, 4.0])
