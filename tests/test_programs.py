"""Composite programs written in plain NumPy, differentiated in both modes and compared
with central finite differences."""
import numpy as np
import pytest

import gradc
from gradc.testing import numerical_grad as fd

RNG = np.random.default_rng(7)


def check_program(f, args, rtol=1e-6, atol=1e-8):
    """Reverse mode on every float argument, and forward mode along a random direction."""
    grads = gradc.grad(f, argnums=tuple(range(len(args))))(*args)
    value = gradc.value_and_grad(f, argnums=tuple(range(len(args))))(*args)[0]
    assert value == pytest.approx(f(*args), rel=1e-12, abs=1e-12)
    for i, g in enumerate(grads):
        def along(x, i=i):
            return f(*args[:i], x, *args[i + 1:])
        np.testing.assert_allclose(g, fd(along, args[i]), rtol=rtol, atol=atol)
    tangents = tuple(RNG.normal(size=np.shape(a)) for a in args)
    _, t = gradc.jvp(f, tuple(args), tangents)
    expected = sum(np.sum(g * t) for g, t in zip(grads, tangents))
    assert t == pytest.approx(expected, rel=1e-9, abs=1e-12)


def rosenbrock(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_rosenbrock():
    check_program(rosenbrock, [RNG.normal(size=6)], rtol=1e-6, atol=1e-5)


def mlp_loss(w1, b1, w2, b2, x, labels):
    hidden = np.tanh(x @ w1 + b1)
    logits = hidden @ w2 + b2
    logz = gradc.logsumexp(logits, axis=1)
    picked = logits[np.arange(logits.shape[0]), labels]
    return np.mean(logz - picked)


def test_mlp_cross_entropy():
    x = RNG.normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    w1, b1 = RNG.normal(size=(3, 4)), RNG.normal(size=4)
    w2, b2 = RNG.normal(size=(4, 3)), RNG.normal(size=3)

    def loss(w1, b1, w2, b2):
        return mlp_loss(w1, b1, w2, b2, x, labels)

    check_program(loss, [w1, b1, w2, b2])
    # the same loss written with an explicit softmax agrees with the logsumexp one
    def loss_plain(w1, b1, w2, b2):
        logits = np.tanh(x @ w1 + b1) @ w2 + b2
        p = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
        return -np.mean(np.log(p[np.arange(5), labels]))

    g1 = gradc.grad(loss, argnums=(0, 2))(w1, b1, w2, b2)
    g2 = gradc.grad(loss_plain, argnums=(0, 2))(w1, b1, w2, b2)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_logsumexp_and_softmax():
    x = RNG.normal(size=(3, 4)) * 3.0
    check_program(lambda x: gradc.logsumexp(x), [x])
    check_program(lambda x: np.sum(gradc.logsumexp(x, axis=0) ** 2), [x])
    w = RNG.normal(size=(3, 4))
    check_program(lambda x: np.sum(gradc.softmax(x, axis=1) * w), [x])
    check_program(lambda x: np.sum(gradc.log_softmax(x, axis=0) * w), [x])
    # gradient of logsumexp is softmax, also with huge inputs (stability)
    big = x + 1000.0
    g = gradc.grad(lambda x: gradc.logsumexp(x))(big)
    e = np.exp(big - big.max())
    np.testing.assert_allclose(g, e / e.sum(), rtol=1e-12)
    assert gradc.logsumexp(big) == pytest.approx(np.log(np.sum(e)) + big.max())


def test_loop_with_data_dependent_if():
    def f(x):
        y = x.copy()
        for i in range(4):
            if np.sum(y) > 0.5:
                y = np.sin(y) * 0.9
            else:
                y = y + 0.3 * np.cos(y)
        return np.sum(y ** 2)

    for _ in range(3):
        check_program(f, [RNG.normal(size=3)])


def test_in_place_updates_in_a_loop():
    def f(x, y):
        z = x.copy()
        for i in range(1, 5):
            z[i] = z[i - 1] * 0.5 + np.sin(x[i])
        z[1:] += y
        z[::2] *= x[:3]
        w = z.copy()
        w[[0, 4]] -= 1.0
        w[w > 1.0] = 1.0
        return np.sum(w ** 2) + np.sum(z)

    check_program(f, [RNG.normal(size=5), RNG.normal(size=4)])


def test_in_place_on_argument_does_not_touch_the_callers_array():
    def f(x):
        x[0] = x[0] * 3.0
        x += 1.0
        return np.sum(x ** 2)

    x = np.array([1.0, 2.0])
    g = gradc.grad(f)(x)
    np.testing.assert_allclose(g, [2 * 4.0 * 3.0, 2 * 3.0])
    np.testing.assert_array_equal(x, [1.0, 2.0])


def test_gaussian_crf_linear_solve_loss():
    # a Gaussian CRF: A = λI + L(w) with L a weighted graph Laplacian; mean μ = A⁻¹ b;
    # loss = ½‖μ − target‖² + ½ log det A
    n = 4
    edges = [(0, 1), (1, 2), (2, 3), (0, 3), (0, 2)]
    target = RNG.normal(size=n)

    incidence = np.zeros((len(edges), n))
    for k, (i, j) in enumerate(edges):
        incidence[k, i], incidence[k, j] = 1.0, -1.0

    def loss(w, b):
        lap = incidence.T @ (np.exp(w)[:, None] * incidence)
        a = lap + 0.5 * np.eye(n)
        mu = np.linalg.solve(a, b)
        sign, logdet = np.linalg.slogdet(a)
        return 0.5 * np.sum((mu - target) ** 2) + 0.5 * logdet

    check_program(loss, [RNG.normal(size=len(edges)) * 0.3, RNG.normal(size=n)])


def test_conv2d_tanh_sum():
    image = RNG.normal(size=(2, 3, 5, 6))
    kernel = RNG.normal(size=(4, 3, 3, 3)) * 0.3
    weights = RNG.normal(size=(2, 4, 5, 6))

    def f(image, kernel):
        return np.sum(np.tanh(gradc.conv2d(image, kernel, padding="same")) * weights)

    check_program(f, [image, kernel], rtol=1e-5, atol=1e-7)

    def g(image, kernel):
        return np.sum(gradc.conv2d(image, kernel, padding="valid") ** 2)

    check_program(g, [image[:1], kernel[:2]], rtol=1e-5, atol=1e-6)


def test_conv2d_matches_direct_loop():
    image = RNG.normal(size=(1, 2, 4, 5))
    kernel = RNG.normal(size=(3, 2, 3, 3))
    out = gradc.conv2d(image, kernel, padding="valid")
    ref = np.zeros((1, 3, 2, 3))
    for o in range(3):
        for y in range(2):
            for x in range(3):
                ref[0, o, y, x] = np.sum(image[0, :, y:y + 3, x:x + 3] * kernel[o])
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    same = gradc.conv2d(image, kernel, padding="same")
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
    np.testing.assert_allclose(same, gradc.conv2d(padded, kernel, padding="valid"), rtol=1e-12)


def test_second_order_of_a_program():
    # Hessian-vector product of the MLP loss w.r.t. w2 by jvp of grad, against FD of grad
    x = RNG.normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    w1, b1 = RNG.normal(size=(3, 4)), RNG.normal(size=4)
    b2 = RNG.normal(size=3)
    w2, v = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    g = gradc.grad(lambda w2: mlp_loss(w1, b1, w2, b2, x, labels))
    _, hv = gradc.jvp(g, (w2,), (v,))
    numeric = (g(w2 + 1e-5 * v) - g(w2 - 1e-5 * v)) / 2e-5
    np.testing.assert_allclose(hv, numeric, rtol=1e-6, atol=1e-9)


def test_inplace_writes_into_zeros_like():
    def f(x):
        z = np.zeros_like(x)
        z[0] = x[1] ** 2
        z[1:] += x[:-1]
        w = np.ones_like(x)
        w[2] = np.sin(x[0])
        return np.sum(z * z * w)

    x = np.array([1.0, 2.0, 3.0])
    g = gradc.grad(f)(x)
    eps = 1e-6
    fd = np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(3)])
    assert np.allclose(g, fd, rtol=1e-6)
