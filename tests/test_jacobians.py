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
