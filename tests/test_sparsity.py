"""Sparse Jacobians and Hessians (gradc/sparsity.py): patterns found from the Graph,
columns coloured with networkx, values from one JVP/HVP per colour; all against the dense
jacfwd/hessian."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

import gradc
from gradc import sparsity

RNG = np.random.default_rng(21)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _contains(pattern, dense):
    """Every nonzero of ``dense`` is in ``pattern`` (a pattern may only over-approximate)."""
    rows, cols = np.nonzero(dense)
    return bool(np.all(pattern.toarray()[rows, cols]))


def test_rosenbrock_hessian_is_tridiagonal_and_three_colours():
    x = RNG.standard_normal(40)
    hess = gradc.hessian(rosen, sparse=True)
    got = hess(x)
    assert isinstance(got, scipy.sparse.csr_matrix) and got.shape == (40, 40)
    np.testing.assert_allclose(got.toarray(), gradc.hessian(rosen)(x), rtol=1e-12, atol=1e-12)
    col = hess.coloring(x)
    assert col.nnz == 3 * 40 - 2 and col.ncolors == 3
    assert "3 colours for 40 columns" in str(col)


def _gathers(x):
    idx = np.array([0, 3, 3, 7, 11])
    y = x[idx] * x[1:6]                     # gather with constant indices
    z = np.concatenate([np.sin(x[::2]), y])
    return np.tanh(z) + 1.0


def _grid(x):
    m = np.reshape(x, (3, 4))
    return np.sum(np.exp(m), axis=1) * m[:, 0]     # a reduction and a column


S = np.zeros((6, 12))
S[np.arange(6), 2 * np.arange(6)] = 1.0
S[np.arange(6), (2 * np.arange(6) + 5) % 12] = -2.0


@pytest.mark.parametrize("f, n, colours", [
    (np.sin, 12, 1),                                 # diagonal
    (_gathers, 12, None),
    (_grid, 12, 4),                                  # rows of 4 inputs each
    (lambda x: np.tanh(S @ x), 12, 2),               # einsum follows S's zeros
    (lambda x: np.cumsum(x)[::3], 12, None),         # conservative (no exact rule)
])
def test_sparse_jacobians_equal_dense_ones(f, n, colours):
    x = RNG.standard_normal(n)
    jac = gradc.jacobian(f, sparse=True)
    got = jac(x)
    dense = gradc.jacfwd(f)(x).reshape(got.shape)
    np.testing.assert_allclose(got.toarray(), dense, rtol=1e-13, atol=1e-14)
    col = jac.coloring(x)
    assert _contains(col.pattern, dense)
    if colours is not None:
        assert col.ncolors == colours
    assert col.ncolors <= n


def test_pattern_is_exact_where_the_rules_are_exact():
    x = RNG.standard_normal(12)
    for f in (_gathers, _grid, lambda x: np.tanh(S @ x)):
        graph = gradc.make_graph(f)(x)
        pattern = sparsity.jacobian_pattern(graph).toarray().astype(bool)
        dense = gradc.jacfwd(f)(x).reshape(pattern.shape) != 0
        np.testing.assert_array_equal(pattern, dense)


def test_sparse_hessian_with_longer_range_coupling_and_a_second_argument():
    def f(a, x):
        return np.sum(x[:-3] * x[3:] * a) + np.sum(np.exp(x) * a)
    x = RNG.standard_normal(30)
    got = gradc.hessian(f, argnums=1, sparse=True)(2.0, x)
    np.testing.assert_allclose(got.toarray(), gradc.hessian(f, argnums=1)(2.0, x),
                               rtol=1e-12, atol=1e-12)
    col = gradc.hessian(f, argnums=1, sparse=True).coloring(2.0, x)
    assert col.nnz == 30 + 2 * 27 and col.ncolors == 3     # j, j+3, j+6 differ


def test_compiled_and_a_dense_fallback():
    x = RNG.standard_normal(8)
    A = RNG.standard_normal((8, 8)) + 8 * np.eye(8)
    f = lambda x: np.linalg.solve(A, x) ** 2      # noqa: E731  (solve: no exact rule)
    got = gradc.jacobian(f, sparse=True, target="cpu")(x)
    np.testing.assert_allclose(got.toarray(), gradc.jacfwd(f)(x), rtol=1e-12, atol=1e-13)
    assert gradc.jacobian(f, sparse=True).coloring(x).ncolors == 8


def test_the_pattern_is_found_once_per_signature():
    calls = []

    def f(x):
        calls.append(1)
        return np.sin(x) * 2.0
    jac = gradc.jacobian(f, sparse=True)
    for _ in range(3):
        jac(RNG.standard_normal(5))
    traced = len(calls)
    jac(RNG.standard_normal(5))
    assert len(calls) == traced


def test_matrix_inputs_and_python_control_flow():
    X = RNG.standard_normal((3, 4))
    f = lambda X: np.tanh(X @ X.T)                         # noqa: E731
    np.testing.assert_allclose(gradc.jacobian(f, sparse=True)(X).toarray(),
                               gradc.jacfwd(f)(X).reshape(9, 12), rtol=1e-13, atol=1e-14)
    h = lambda X: np.sum(X[:, 1:] * X[:, :-1] ** 2)       # noqa: E731
    np.testing.assert_allclose(gradc.hessian(h, sparse=True)(X).toarray(),
                               gradc.hessian(h)(X).reshape(12, 12), rtol=1e-12, atol=1e-13)

    def branchy(x):
        if x[0] > 0:
            return np.sin(x) * 2.0                         # diagonal
        return np.sin(x) * x[::-1]                         # an anti-diagonal too
    jac = gradc.jacobian(branchy, sparse=True)
    for v in (np.array([1.0, 2.0, 3.0, 4.0]), np.array([-1.0, 2.0, 3.0, 4.0])):
        np.testing.assert_allclose(jac(v).toarray(), gradc.jacfwd(branchy)(v), rtol=1e-13)


def test_a_checkpointed_function_keeps_its_pattern():
    # the gradient's Graph holds the checkpoint (its function's pattern) and the
    # recomputation behind a barrier (its values' pattern)
    def f(x):
        return rosen(gradc.checkpoint(lambda x: np.tanh(x) * 2.0)(x))
    x = RNG.standard_normal(30)
    hess = gradc.hessian(f, sparse=True)
    np.testing.assert_allclose(hess(x).toarray(), gradc.hessian(f)(x), rtol=1e-12, atol=1e-12)
    col = hess.coloring(x)
    assert col.nnz == 3 * 30 - 2 and col.ncolors == 3


def test_a_pytree_argument_is_refused_clearly():
    """(Seed QA: a dict argument gave "argument 0 must be a float array, got dtype
    object"; the sparse result is one matrix, so the argument is one array.)"""
    p = {"W": RNG.standard_normal((3, 2)), "x": RNG.standard_normal(2)}
    with pytest.raises(gradc.ArgumentError, match="argument 0 is a dict .*concatenate"):
        gradc.jacobian(lambda p: np.tanh(p["W"] @ p["x"]), sparse=True)(p)
    with pytest.raises(gradc.ArgumentError, match="argument 0 is a dict"):
        gradc.hessian(lambda p: np.sum(p["x"] ** 4), sparse=True)(p)
