"""Algorithms inside differentiable programs, with gradc's structured loops.

* CRF sum-product (gradc.scan): log Z, and its gradient = the node / pairwise marginals.
* Viterbi max-product (gradc.scan): the best score, and its gradient = the best labelling.
* A fixed point x = tanh(W x + b) run to a tolerance (gradc.while_loop), differentiated
  in reverse mode, against the implicit-function-theorem derivative.

Run:  python examples/structured_loops.py
"""
import itertools

import numpy as np

import gradc

# The reference interpreter: starts at once.  target="cpu" compiles with Numba.
TARGET = "numpy"


def crf_log_partition(U, A):
    """a_{t+1}(j) = U[t+1, j] + logsumexp_i (a_t(i) + A[i, j]);  log Z = logsumexp a_T."""
    def step(a, u):
        return gradc.logsumexp(a[:, None] + A, axis=0) + u, None
    a, _ = gradc.scan(step, U[0], U[1:])
    return gradc.logsumexp(a, axis=0)


def viterbi_score(U, A):
    """V_{t+1}(j) = U[t+1, j] + max_i (A[i, j] + V_t(i));  F* = max V_T."""
    def step(v, u):
        return np.max(v[:, None] + A, axis=0) + u, None
    v, _ = gradc.scan(step, U[0], U[1:])
    return np.max(v)


def fixed_point(W, b, tol=1e-10):
    """Iterate x <- tanh(W x + b) until a step moves x by less than tol."""
    def cond(carry):
        x, x_prev, _ = carry
        return np.max(np.abs(x - x_prev)) > tol

    def body(carry):
        x, _, k = carry
        return np.tanh(W @ x + b), x, k + 1

    x0 = np.zeros_like(b)
    return gradc.while_loop(cond, body, (x0, x0 + 1.0, 0), checkpoint=4)


def score(y, U, A):
    return U[np.arange(len(y)), y].sum() + A[y[:-1], y[1:]].sum()


def main():
    with np.printoptions(precision=4, suppress=True):
        _main()


def _main():
    rng = np.random.default_rng(0)
    T, K = 6, 3
    U = rng.standard_normal((T, K))
    A = rng.standard_normal((K, K))

    print("== CRF: log-partition by sum-product, marginals by reverse mode")
    log_z, (node, pair) = gradc.value_and_grad(crf_log_partition, argnums=(0, 1),
                                               target=TARGET)(U, A)
    labellings = np.array(list(itertools.product(range(K), repeat=T)))
    scores = np.array([score(y, U, A) for y in labellings])
    brute = np.log(np.sum(np.exp(scores - scores.max()))) + scores.max()
    print(f"log Z = {log_z:.12f}   brute force over {K}^{T} labellings: {brute:.12f}")
    print("P(y_t = k) = d log Z / dU (rows sum to 1):\n", node)
    print("expected transition counts = d log Z / dA (sum = T - 1 =",
          f"{pair.sum():.6f}):\n", pair)

    print("\n== Viterbi: best score by max-product, best labelling by reverse mode")
    best, gU = gradc.value_and_grad(viterbi_score, target=TARGET)(U, A)
    decoded = np.argmax(gU, axis=1)
    print(f"F* = {best:.12f}   brute force: {scores.max():.12f}")
    print("decoded (argmax of the one-hot gradient):", decoded,
          "  brute force:", labellings[np.argmax(scores)])

    print("\n== Fixed point x = tanh(W x + b) with while_loop (checkpoint=4)")
    n = 5
    W = rng.standard_normal((n, n))
    W *= 0.6 / np.linalg.norm(W, 2)
    b, c = rng.standard_normal(n), rng.standard_normal(n)
    x, _, steps = fixed_point(W, b)
    gW, gb = gradc.grad(lambda W, b: c @ fixed_point(W, b)[0], argnums=(0, 1),
                        target=TARGET)(W, b)
    # implicit function theorem: dL/db = D (I - D W)^-T c, dL/dW = (dL/db) x^T
    d = 1.0 - x ** 2
    gb_ift = d * np.linalg.solve((np.eye(n) - d[:, None] * W).T, c)
    print(f"converged in {steps} steps; dL/db =", gb)
    print("implicit-function derivative      =", gb_ift)
    print(f"max |difference|: db {np.max(np.abs(gb - gb_ift)):.1e}, "
          f"dW {np.max(np.abs(gW - np.outer(gb_ift, x))):.1e}")


if __name__ == "__main__":
    main()
