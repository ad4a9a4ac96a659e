"""The structured-loop programs of the seed lecture (001, "How to put algorithms inside
neural networks"), written with gradc.scan / fori_loop / while_loop and differentiated:

* sum-product (CRF forward algorithm): log Z against brute force over all K^T labellings,
  d log Z / dU against node marginals from an independent NumPy forward-backward, d log Z
  / dA against the summed pairwise marginals; reverse and forward mode; a batched CRF;
* max-product (Viterbi): the best score against brute force, its gradient is the one-hot
  best labelling and the transition counts of the best path; the structured-SVM loss
  (loss-augmented max-product) against brute force, and a few dozen subgradient steps of
  training on synthetic data;
* a fixed point run to a tolerance with while_loop, reverse mode (also with checkpoint=)
  against central differences and the implicit-function derivative;
* unrolled proximal-gradient denoising (fori_loop, 50 steps): derivatives wrt the
  regularisation weight and the step size against central differences and against the
  same steps unrolled in Python.

Every reference here is plain NumPy written independently of gradc."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import gradc


# ============================================================ NumPy references

def np_logsumexp(x, axis=None):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def np_score(y, U, A):
    """F(y) = sum_t U[t, y_t] + sum_t A[y_t, y_{t+1}]."""
    y = np.asarray(y)
    return U[np.arange(len(y)), y].sum() + A[y[:-1], y[1:]].sum()


def all_labellings(T, K):
    return np.array(list(itertools.product(range(K), repeat=T)))


def brute_scores(U, A):
    T, K = U.shape
    ys = all_labellings(T, K)
    return ys, np.array([np_score(y, U, A) for y in ys])


def brute_log_z(U, A):
    return np_logsumexp(brute_scores(U, A)[1])


def brute_best(U, A):
    ys, s = brute_scores(U, A)
    order = np.argsort(s)
    return ys[order[-1]], s[order[-1]], s[order[-1]] - s[order[-2]]


def np_forward_backward(U, A):
    """Log-space forward-backward for a linear-chain CRF: returns log Z, node marginals
    (T, K) and pairwise marginals summed over t (K, K)."""
    T, K = U.shape
    alpha = np.zeros((T, K))
    beta = np.zeros((T, K))
    alpha[0] = U[0]
    for t in range(1, T):
        alpha[t] = U[t] + np_logsumexp(alpha[t - 1][:, None] + A, axis=0)
    for t in range(T - 2, -1, -1):
        beta[t] = np_logsumexp(A + (U[t + 1] + beta[t + 1])[None, :], axis=1)
    log_z = np_logsumexp(alpha[-1])
    node = np.exp(alpha + beta - log_z)
    pair = np.zeros((K, K))
    for t in range(T - 1):
        pair += np.exp(alpha[t][:, None] + A + (U[t + 1] + beta[t + 1])[None, :] - log_z)
    return log_z, node, pair


def one_hot(y, K):
    return np.eye(K)[np.asarray(y)]


def transition_counts(y, K):
    c = np.zeros((K, K))
    for a, b in zip(y[:-1], y[1:]):
        c[a, b] += 1
    return c


def central_difference(f, x, dx, eps):
    return (f(x + eps * dx) - f(x - eps * dx)) / (2 * eps)


# ============================================================ gradc programs

def crf_log_partition(U, A):
    """Sum-product in log space: a_{t+1}(j) = U[t+1, j] + logsumexp_i (a_t(i) + A[i, j])."""
    def step(a, u):
        return gradc.logsumexp(a[:, None] + A, axis=0) + u, None
    a, _ = gradc.scan(step, U[0], U[1:])
    return gradc.logsumexp(a, axis=0)


def crf_log_partition_batched(U, A):
    """The same recursion for a batch U of shape (B, T, K): returns log Z per sequence."""
    def step(a, u):
        return gradc.logsumexp(a[:, :, None] + A, axis=1) + u, None
    a, _ = gradc.scan(step, U[:, 0], np.transpose(U[:, 1:], (1, 0, 2)))
    return gradc.logsumexp(a, axis=1)


def viterbi_score(U, A):
    """Max-product: V_{t+1}(j) = U[t+1, j] + max_i (A[i, j] + V_t(i)); F* = max_j V_T(j)."""
    def step(v, u):
        return np.max(v[:, None] + A, axis=0) + u, None
    v, _ = gradc.scan(step, U[0], U[1:])
    return np.max(v)


def viterbi_score_batched(U, A):
    def step(v, u):
        return np.max(v[:, :, None] + A, axis=1) + u, None
    v, _ = gradc.scan(step, U[:, 0], np.transpose(U[:, 1:], (1, 0, 2)))
    return np.max(v, axis=1)


def gradc_score(y, U, A):
    y = np.asarray(y)
    return np.sum(U[np.arange(len(y)), y]) + np.sum(A[y[:-1], y[1:]])


def ssvm_loss(U, A, y):
    """Structured SVM: max_y' [F(y') + Hamming(y', y)] - F(y), the max by max-product over
    loss-augmented unaries U + (1 - onehot(y))."""
    K = U.shape[1]
    return viterbi_score(U + (1.0 - one_hot(y, K)), A) - gradc_score(y, U, A)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def crf_problem(rng, T=5, K=3):
    return rng.standard_normal((T, K)), 0.7 * rng.standard_normal((K, K))


# ============================================================ 1. CRF sum-product

def test_reference_forward_backward_agrees_with_brute_force(rng):
    """The NumPy forward-backward the tests rely on, checked against enumeration."""
    U, A = crf_problem(rng, T=4, K=3)
    ys, s = brute_scores(U, A)
    p = np.exp(s - np_logsumexp(s))
    node = sum(pi * one_hot(y, 3) for pi, y in zip(p, ys))
    pair = sum(pi * transition_counts(y, 3) for pi, y in zip(p, ys))
    log_z, node_fb, pair_fb = np_forward_backward(U, A)
    assert log_z == pytest.approx(np_logsumexp(s), rel=1e-13)
    np.testing.assert_allclose(node_fb, node, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pair_fb, pair, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("T, K", [(1, 3), (2, 2), (4, 3), (6, 2), (3, 4)])
def test_crf_log_partition_equals_brute_force(rng, T, K):
    U, A = crf_problem(rng, T, K)
    assert crf_log_partition(U, A) == pytest.approx(brute_log_z(U, A), rel=1e-13)
    # large potentials: the log-space recursion does not overflow
    U2, A2 = 300.0 * U, 300.0 * A
    assert crf_log_partition(U2, A2) == pytest.approx(brute_log_z(U2, A2), rel=1e-13)


def test_crf_grad_gives_node_and_pairwise_marginals(rng):
    U, A = crf_problem(rng, T=5, K=3)
    log_z, node, pair = np_forward_backward(U, A)
    value, (gU, gA) = gradc.value_and_grad(crf_log_partition, argnums=(0, 1))(U, A)
    assert value == pytest.approx(log_z, rel=1e-13)
    np.testing.assert_allclose(gU, node, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gA, pair, rtol=1e-11, atol=1e-14)
    # marginals: each row sums to one, the pairwise counts to T - 1
    np.testing.assert_allclose(gU.sum(axis=1), np.ones(5), rtol=1e-12)
    assert gA.sum() == pytest.approx(4.0, rel=1e-12)


def test_crf_vjp_equals_weighted_marginals(rng):
    U, A = crf_problem(rng, T=4, K=3)
    _, node, pair = np_forward_backward(U, A)
    out, back = gradc.vjp(crf_log_partition, U, A)
    gU, gA = back(2.5)
    assert out == pytest.approx(brute_log_z(U, A), rel=1e-13)
    np.testing.assert_allclose(gU, 2.5 * node, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gA, 2.5 * pair, rtol=1e-11, atol=1e-14)


def test_crf_forward_mode_against_the_brute_force_directional_derivative(rng):
    U, A = crf_problem(rng, T=5, K=3)
    dU, dA = rng.standard_normal(U.shape), rng.standard_normal(A.shape)
    value, tangent = gradc.jvp(crf_log_partition, (U, A), (dU, dA))
    assert value == pytest.approx(brute_log_z(U, A), rel=1e-13)
    # exact: <node marginals, dU> + <pairwise marginals, dA>
    _, node, pair = np_forward_backward(U, A)
    assert tangent == pytest.approx(np.sum(node * dU) + np.sum(pair * dA), rel=1e-12)
    # central differences of the brute-force log Z along (dU, dA)
    eps = 1e-5
    fd = (brute_log_z(U + eps * dU, A + eps * dA)
          - brute_log_z(U - eps * dU, A - eps * dA)) / (2 * eps)
    assert tangent == pytest.approx(fd, rel=1e-8)


def test_batched_crf(rng):
    B, T, K = 3, 4, 3
    U = rng.standard_normal((B, T, K))
    A = 0.7 * rng.standard_normal((K, K))
    got = crf_log_partition_batched(U, A)
    np.testing.assert_allclose(got, [brute_log_z(U[b], A) for b in range(B)], rtol=1e-13)

    def total(U, A):
        return np.sum(crf_log_partition_batched(U, A))

    gU, gA = gradc.grad(total, argnums=(0, 1))(U, A)
    refs = [np_forward_backward(U[b], A) for b in range(B)]
    np.testing.assert_allclose(gU, np.stack([r[1] for r in refs]), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gA, sum(r[2] for r in refs), rtol=1e-11, atol=1e-14)
    # forward mode, one tangent per sequence
    dU = rng.standard_normal(U.shape)
    _, t = gradc.jvp(lambda U: crf_log_partition_batched(U, A), (U,), (dU,))
    np.testing.assert_allclose(t, [np.sum(r[1] * d) for r, d in zip(refs, dU)], rtol=1e-11)


def test_crf_negative_log_likelihood_gradient(rng):
    """-log P(y) = log Z - F(y): its gradient is marginals minus the empirical counts."""
    U, A = crf_problem(rng, T=5, K=3)
    y = np.array([0, 2, 2, 1, 0])

    def nll(U, A):
        return crf_log_partition(U, A) - gradc_score(y, U, A)

    _, node, pair = np_forward_backward(U, A)
    gU, gA = gradc.grad(nll, argnums=(0, 1))(U, A)
    assert nll(U, A) == pytest.approx(brute_log_z(U, A) - np_score(y, U, A), rel=1e-13)
    np.testing.assert_allclose(gU, node - one_hot(y, 3), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(gA, pair - transition_counts(y, 3), rtol=1e-11, atol=1e-13)


def test_crf_grad_on_the_cpu_target_matches_the_interpreter(rng):
    U, A = crf_problem(rng, T=5, K=3)
    want = gradc.grad(crf_log_partition, argnums=(0, 1), target="numpy")(U, A)
    with warnings.catch_warnings():
        # a target without a lowering for scan falls back to the interpreter and warns
        warnings.simplefilter("ignore", gradc.GradcWarning)
        got = gradc.grad(crf_log_partition, argnums=(0, 1), target="cpu")(U, A)
        value, _ = gradc.value_and_grad(crf_log_partition, argnums=(0, 1),
                                        target="cpu")(U, A)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    assert value == pytest.approx(brute_log_z(U, A), rel=1e-10)


# ============================================================ 2. Viterbi / max-product

def test_viterbi_score_and_its_gradient_the_best_labelling(rng):
    for T, K in [(5, 3), (4, 4), (7, 2)]:
        U, A = crf_problem(rng, T, K)
        y_best, s_best, gap = brute_best(U, A)
        assert gap > 1e-3          # no ties: the best labelling is unique
        assert viterbi_score(U, A) == pytest.approx(s_best, rel=1e-13)
        gU, gA = gradc.grad(viterbi_score, argnums=(0, 1))(U, A)
        np.testing.assert_array_equal(gU, one_hot(y_best, K))
        np.testing.assert_array_equal(gA, transition_counts(y_best, K))
        # decoding by the gradient
        np.testing.assert_array_equal(np.argmax(gU, axis=1), y_best)
        # forward mode: the score is linear near the optimum
        dU, dA = rng.standard_normal(U.shape), rng.standard_normal(A.shape)
        _, t = gradc.jvp(viterbi_score, (U, A), (dU, dA))
        assert t == pytest.approx(np_score(y_best, dU, dA), rel=1e-12)


def test_batched_viterbi(rng):
    B, T, K = 4, 5, 3
    U = rng.standard_normal((B, T, K))
    A = 0.7 * rng.standard_normal((K, K))
    best = [brute_best(U[b], A) for b in range(B)]
    assert min(b[2] for b in best) > 1e-3
    np.testing.assert_allclose(viterbi_score_batched(U, A), [b[1] for b in best], rtol=1e-13)
    gU, gA = gradc.grad(lambda U, A: np.sum(viterbi_score_batched(U, A)),
                        argnums=(0, 1))(U, A)
    np.testing.assert_array_equal(np.argmax(gU, axis=2), np.stack([b[0] for b in best]))
    np.testing.assert_array_equal(gA, sum(transition_counts(b[0], K) for b in best))


def brute_ssvm(U, A, y):
    ys, s = brute_scores(U, A)
    hamming = (ys != np.asarray(y)[None, :]).sum(axis=1)
    aug = s + hamming
    return aug.max() - np_score(y, U, A), ys[np.argmax(aug)]


def test_structured_svm_loss_equals_brute_force(rng):
    K = 3
    for T in (3, 5):
        U, A = crf_problem(rng, T, K)
        y = rng.integers(0, K, T)
        want, y_hat = brute_ssvm(U, A, y)
        assert ssvm_loss(U, A, y) == pytest.approx(want, rel=1e-13)
        assert want >= 0.0
        # the labels are data, not traced: a closure
        gU, gA = gradc.grad(lambda U, A: ssvm_loss(U, A, y), argnums=(0, 1))(U, A)
        # subgradient: counts of the loss-augmented best labelling minus those of y
        np.testing.assert_array_equal(gU, one_hot(y_hat, K) - one_hot(y, K))
        np.testing.assert_array_equal(gA, transition_counts(y_hat, K)
                                      - transition_counts(y, K))
    # the true labelling, far ahead of the others: the loss (the hinge) is zero
    y = np.array([1, 0, 2, 2])
    U = 10.0 * one_hot(y, K)
    assert ssvm_loss(U, np.zeros((K, K)), y) == pytest.approx(0.0, abs=1e-12)


def test_structured_svm_training_by_subgradient_descent():
    rng = np.random.default_rng(7)
    N, T, K, D = 12, 5, 3, 4
    W_true = 1.5 * rng.standard_normal((D, K))
    A_true = 1.5 * rng.standard_normal((K, K))
    X = rng.standard_normal((N, T, D))
    Y = np.stack([brute_best(X[n] @ W_true, A_true)[0] for n in range(N)])
    Y1h = one_hot(Y, K)                                       # (N, T, K)
    counts = sum(transition_counts(y, K) for y in Y)           # (K, K)

    def loss(W, A):
        U = X @ W                                              # (N, T, K)
        augmented = viterbi_score_batched(U + (1.0 - Y1h), A)
        return (np.sum(augmented) - np.sum(U * Y1h) - np.sum(A * counts)) / N

    def brute_loss(W, A):
        return np.mean([brute_ssvm(X[n] @ W, A, Y[n])[0] for n in range(N)])

    decode_grad = gradc.grad(lambda U, A: np.sum(viterbi_score_batched(U, A)), argnums=0)

    def accuracy(W, A):
        decoded = np.argmax(decode_grad(X @ W, A), axis=2)
        # the decode by gradient is the brute-force argmax
        brute = np.stack([brute_best(X[n] @ W, A)[0] for n in range(N)])
        np.testing.assert_array_equal(decoded, brute)
        return np.mean(decoded == Y)

    W = 0.1 * rng.standard_normal((D, K))
    A = 0.1 * rng.standard_normal((K, K))
    step = gradc.value_and_grad(loss, argnums=(0, 1))
    loss0, acc0 = loss(W, A), accuracy(W, A)
    assert loss0 == pytest.approx(brute_loss(W, A), rel=1e-12)
    losses = []
    for it in range(40):
        value, (gW, gA) = step(W, A)
        losses.append(value)
        lr = 0.5 / np.sqrt(it + 1.0)
        W, A = W - lr * gW, A - lr * gA
    loss1, acc1 = loss(W, A), accuracy(W, A)
    assert losses[0] == pytest.approx(loss0, rel=1e-13)
    assert loss1 == pytest.approx(brute_loss(W, A), rel=1e-12)
    assert loss1 < 0.3 * loss0, (loss0, loss1)      # 5.31 -> 1.30
    assert acc0 < 0.5 and acc1 >= 0.9, (acc0, acc1)      # 0.42 -> 0.95


# ============================================================ 3. fixed point, while_loop

TOL = 1e-10


def fixed_point_problem(rng, n=4):
    W = rng.standard_normal((n, n))
    W *= 0.5 / np.linalg.norm(W, 2)              # a contraction: ||W||_2 = 0.5
    b = rng.standard_normal(n)
    c = rng.standard_normal(n)
    return W, b, c


def make_fixed_point(checkpoint=None):
    def solve(W, b):
        def cond(carry):
            x, x_prev, _ = carry
            return np.max(np.abs(x - x_prev)) > TOL

        def body(carry):
            x, _, k = carry
            return np.tanh(W @ x + b), x, k + 1

        x0 = np.zeros_like(b)
        init = (x0, x0 + 1.0, 0)
        if checkpoint is None:
            return gradc.while_loop(cond, body, init)
        return gradc.while_loop(cond, body, init, checkpoint=checkpoint)
    return solve


def np_fixed_point(W, b):
    """The fixed point to machine precision (iterate until nothing changes)."""
    x = np.zeros_like(b)
    for _ in range(500):
        x_new = np.tanh(W @ x + b)
        if np.array_equal(x_new, x):
            break
        x = x_new
    return x


def implicit_grads(W, b, c):
    """d(c.x*)/dW and /db by the implicit-function theorem at x* = tanh(W x* + b)."""
    x = np_fixed_point(W, b)
    d = 1.0 - x ** 2
    lam = np.linalg.solve((np.eye(len(b)) - d[:, None] * W).T, c)
    gb = d * lam
    return x, np.outer(gb, x), gb


def fd_grads(W, b, c, eps=1e-5):
    f = lambda W, b: c @ np_fixed_point(W, b)      # noqa: E731
    gW = np.zeros_like(W)
    for idx in np.ndindex(*W.shape):
        E = np.zeros_like(W)
        E[idx] = 1.0
        gW[idx] = central_difference(lambda W: f(W, b), W, E, eps)
    gb = np.array([central_difference(lambda b: f(W, b), b, e, eps)
                   for e in np.eye(len(b))])
    return gW, gb


def test_fixed_point_value_and_forward_mode(rng):
    W, b, c = fixed_point_problem(rng)
    x, x_prev, steps = make_fixed_point()(W, b)
    x_star, gW_ift, gb_ift = implicit_grads(W, b, c)
    np.testing.assert_allclose(x, x_star, rtol=0, atol=1e-10)
    assert np.max(np.abs(x - x_prev)) <= TOL and 10 < steps < 60
    # forward mode through the while loop, against the implicit derivative
    dW, db = rng.standard_normal(W.shape), rng.standard_normal(b.shape)
    _, t = gradc.jvp(lambda W, b: c @ make_fixed_point()(W, b)[0], (W, b), (dW, db))
    assert t == pytest.approx(np.sum(gW_ift * dW) + np.sum(gb_ift * db), rel=1e-8)


def fixed_point_loss(checkpoint=None):
    solve = make_fixed_point(checkpoint)

    def loss(W, b, c):
        return c @ solve(W, b)[0]
    return loss


def test_fixed_point_reverse_mode_against_finite_differences(rng):
    W, b, c = fixed_point_problem(rng)
    gW, gb = gradc.grad(fixed_point_loss(), argnums=(0, 1))(W, b, c)
    fW, fb = fd_grads(W, b, c)
    np.testing.assert_allclose(gW, fW, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gb, fb, rtol=1e-6, atol=1e-9)
    _, iW, ib = implicit_grads(W, b, c)
    np.testing.assert_allclose(gW, iW, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(gb, ib, rtol=1e-8, atol=1e-11)


def test_fixed_point_reverse_mode_with_checkpointing(rng):
    W, b, c = fixed_point_problem(rng)
    plain = make_fixed_point()(W, b)
    ckpt = make_fixed_point(checkpoint=3)(W, b)
    for p, q in zip(plain, ckpt):
        np.testing.assert_array_equal(p, q)
    graph = gradc.make_graph(fixed_point_loss(checkpoint=3))(W, b, c)
    assert [e.params.get("checkpoint") for e in graph.eqns
            if e.prim.name == "while_loop"] == [3]
    gW, gb = gradc.grad(fixed_point_loss(checkpoint=3), argnums=(0, 1))(W, b, c)
    fW, fb = fd_grads(W, b, c)
    np.testing.assert_allclose(gW, fW, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gb, fb, rtol=1e-6, atol=1e-9)
    # recomputing segments of 3 steps gives the same derivative as the full tape
    pW, pb = gradc.grad(fixed_point_loss(), argnums=(0, 1))(W, b, c)
    np.testing.assert_allclose(gW, pW, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gb, pb, rtol=1e-13, atol=1e-15)


# ============================================================ 4. unrolled proximal gradient

N_ITERS = 50
LO, HI = -0.6, 0.6          # the box C of the projection P_C
DELTA = 0.05                # smoothing of |.| in the penalty


def denoising_problem(rng, n=24):
    x_true = np.repeat(rng.uniform(-1.0, 1.0, 4), n // 4)       # piecewise constant
    y = x_true + 0.3 * rng.standard_normal(n)
    return x_true, y


def tv_grad(x):
    """L^T psi(L x) for L the forward difference, psi the derivative of the smoothed
    absolute value sqrt(z^2 + DELTA^2)."""
    z = x[1:] - x[:-1]
    p = z / np.sqrt(z * z + DELTA ** 2)
    zero = np.zeros(1)
    return np.concatenate([zero, p]) - np.concatenate([p, zero])


def prox_step(x, y, lam, alpha):
    """x <- P_C(x - alpha ((x - y) + lam L^T psi(L x))), the seed's update with
    gamma = alpha."""
    return np.clip(x - alpha * ((x - y) + lam * tv_grad(x)), LO, HI)


def denoise_loop(lam, alpha, y):
    return gradc.fori_loop(0, N_ITERS, lambda i, x: prox_step(x, y, lam, alpha), y)


def denoise_unrolled(lam, alpha, y):
    x = y
    for _ in range(N_ITERS):
        x = prox_step(x, y, lam, alpha)
    return x


def soft_threshold(z, t):
    return z - np.clip(z, -t, t)


def ista_loop(lam, alpha, y, H):
    """ISTA for min 0.5 ||H x - y||^2 + lam ||x||_1 (sparse deconvolution)."""
    def body(i, x):
        return soft_threshold(x - alpha * (H.T @ (H @ x - y)), alpha * lam)
    return gradc.fori_loop(0, N_ITERS, body, np.zeros(H.shape[1]))


def ista_unrolled(lam, alpha, y, H):
    x = np.zeros(H.shape[1])
    for _ in range(N_ITERS):
        x = soft_threshold(x - alpha * (H.T @ (H @ x - y)), alpha * lam)
    return x


def np_denoise(lam, alpha, y):
    x = y.copy()
    for _ in range(N_ITERS):
        z = np.diff(x)
        p = z / np.sqrt(z * z + DELTA ** 2)
        g = (x - y) + lam * (np.r_[0.0, p] - np.r_[p, 0.0])
        x = np.minimum(np.maximum(x - alpha * g, LO), HI)
    return x


def np_ista(lam, alpha, y, H):
    x = np.zeros(H.shape[1])
    for _ in range(N_ITERS):
        z = x - alpha * H.T @ (H @ x - y)
        x = np.sign(z) * np.maximum(np.abs(z) - alpha * lam, 0.0)
    return x


def _check_unrolled_program(loop, unrolled, reference, lam, alpha, extra, x_true):
    def loss(run):
        return lambda lam, alpha: np.sum((run(lam, alpha, *extra) - x_true) ** 2)

    # the loop is the algorithm
    np.testing.assert_allclose(loop(lam, alpha, *extra), reference(lam, alpha, *extra),
                               rtol=1e-13, atol=1e-14)
    g_loop = gradc.grad(loss(loop), argnums=(0, 1))(lam, alpha)
    g_unrolled = gradc.grad(loss(unrolled), argnums=(0, 1))(lam, alpha)
    np.testing.assert_allclose(g_loop, g_unrolled, rtol=1e-10, atol=1e-13)
    ref_loss = loss(reference)
    eps = 1e-6
    fd_lam = central_difference(lambda lm: ref_loss(lm, alpha), lam, 1.0, eps)
    fd_alpha = central_difference(lambda a: ref_loss(lam, a), alpha, 1.0, eps)
    assert g_loop[0] == pytest.approx(fd_lam, rel=1e-6)
    assert g_loop[1] == pytest.approx(fd_alpha, rel=1e-6)
    # forward mode through the same loop
    _, t = gradc.jvp(loss(loop), (lam, alpha), (1.0, -2.0))
    assert t == pytest.approx(g_loop[0] - 2.0 * g_loop[1], rel=1e-10)
    return g_loop


def test_unrolled_projected_gradient_denoising(rng):
    x_true, y = denoising_problem(rng)
    lam, alpha = 0.15, 0.4
    x = np_denoise(lam, alpha, y)
    # the projection is active somewhere, and denoising helps
    assert np.any(x == HI) or np.any(x == LO)
    assert np.sum((x - x_true) ** 2) < 0.7 * np.sum((y - x_true) ** 2)
    g = _check_unrolled_program(denoise_loop, denoise_unrolled, np_denoise, lam, alpha,
                                (y,), x_true)
    assert g[0] != 0.0 and g[1] != 0.0


def test_unrolled_ista_with_soft_thresholding(rng):
    n = 16
    H = np.eye(n) + 0.5 * np.eye(n, k=1) + 0.25 * np.eye(n, k=-1)     # a blur
    x_true = np.zeros(n)
    x_true[[2, 7, 11]] = [1.5, -1.0, 0.8]
    y = H @ x_true + 0.05 * rng.standard_normal(n)
    lam, alpha = 0.05, 0.5
    x = np_ista(lam, alpha, y, H)
    assert 0 < np.count_nonzero(x) < n            # some thresholds are active
    g = _check_unrolled_program(ista_loop, ista_unrolled, np_ista, lam, alpha, (y, H),
                                x_true)
    assert g[0] != 0.0 and g[1] != 0.0
