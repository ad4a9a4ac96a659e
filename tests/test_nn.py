"""gradc.nn (jax.nn's activations): values against their formulas on plain NumPy, the
interpreter and the compiled code; derivatives against central differences away from
the kinks; the slopes at 0 that JAX gives (checked by hand against jax.nn); finite
values and derivatives at ±1000; float32 kept."""
import math

import numpy as np
import pytest
import scipy.special as sc

import gradc
from gradc import nn
from gradc.testing import numerical_grad

ALPHA, SCALE = 1.6732632423543772, 1.0507009873554805
REFERENCE = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "selu": lambda x: SCALE * np.where(x > 0, x, ALPHA * np.expm1(np.minimum(x, 0))),
    "silu": lambda x: x * sc.expit(x),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "softplus": lambda x: np.logaddexp(x, 0),
    "log_sigmoid": lambda x: sc.log_expit(x),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
}
# the slope each has at 0 (JAX's and PyTorch's conventions: relu'(0) = 0, and the ELUs
# take their x ≤ 0 branch there)
AT_ZERO = {"relu": 0.0, "relu6": 0.0, "leaky_relu": 1.0, "elu": 1.0, "celu": 1.0,
           "selu": SCALE * ALPHA, "silu": 0.5, "gelu": 0.5, "softplus": 0.5, "log_sigmoid": 0.5,
           "softsign": 1.0, "hard_tanh": 1.0}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_activation_values_and_slopes(name, target):
    f, ref = getattr(nn, name), REFERENCE[name]
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-8, 8, 50), [-1000.0, -30.0, 30.0, 1000.0]])
    x = x[np.abs(np.abs(x) - 1) > 1e-3]          # off the kinks at 0, ±1 and 6
    x = x[(np.abs(x) > 1e-3) & (np.abs(x - 6) > 1e-3)]
    # absolute 1e-15 too: the tanh form of gelu cancels (1 + tanh) below -5, in NumPy
    # as in compiled code, each rounding its own way
    np.testing.assert_allclose(f(x), ref(x), rtol=1e-14, atol=1e-15)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_allclose(gradc.jit(f, target=target)(x), ref(x), rtol=1e-14,
                                   atol=1e-15)
        slope = gradc.vmap(gradc.grad(f), target=target)(x)
    assert np.all(np.isfinite(slope))
    inner = np.abs(x) < 20
    want = np.array([numerical_grad(ref, np.array(v)) for v in x[inner]])
    np.testing.assert_allclose(slope[inner], want, rtol=1e-6, atol=1e-9)
    assert gradc.grad(f)(0.0) == pytest.approx(AT_ZERO[name], rel=1e-15)


def test_exact_gelu_float32_and_one_hot():
    x = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(nn.gelu(x, approximate=False), x * sc.ndtr(x), rtol=1e-14,
                               atol=1e-300)
    g = gradc.vmap(gradc.grad(lambda x: nn.gelu(x, approximate=False)))(x)
    np.testing.assert_allclose(g, sc.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
                               rtol=1e-13, atol=1e-300)
    x32 = x.astype(np.float32)
    for name in REFERENCE:
        f = getattr(nn, name)
        assert gradc.jit(f)(x32).dtype == np.float32, name
        assert gradc.vmap(gradc.grad(f))(x32).dtype == np.float32, name
    labels = np.array([0, 3, 5, -1])
    want = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], float)
    np.testing.assert_array_equal(nn.one_hot(labels, 4), want)
    np.testing.assert_array_equal(gradc.jit(lambda i: nn.one_hot(i, 4))(labels), want)
    assert nn.swish is nn.silu and nn.soft_sign is nn.softsign


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_logsumexp_weights_sign_and_where_as_scipy(target):
    """(QA: JAX's/SciPy's b=, return_sign= and where= were refused.)  Values against
    SciPy's, gradients against central differences, and masked-out terms get a zero
    (finite) gradient; softmax/log_softmax with where are 0 / -inf outside the mask."""
    from scipy.special import logsumexp as scipy_lse
    rng = np.random.default_rng(5)
    x, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    mask = x > -0.5
    lse, sign = gradc.jit(lambda x, b: gradc.logsumexp(x, axis=1, b=b, return_sign=True),
                          target=target)(x, b)
    want, want_sign = scipy_lse(x, axis=1, b=b, return_sign=True)
    np.testing.assert_allclose(lse, want, rtol=1e-13)
    np.testing.assert_array_equal(sign, want_sign)
    masked = [scipy_lse(x[i][mask[i]]) for i in range(3)]
    np.testing.assert_allclose(
        gradc.jit(lambda x: gradc.logsumexp(x, axis=1, where=mask), target=target)(x),
        masked, rtol=1e-13)
    sm = gradc.jit(lambda x: gradc.softmax(x, where=mask), target=target)(x)
    np.testing.assert_allclose(sm, np.where(mask, np.exp(x - np.array(masked)[:, None]), 0),
                               rtol=1e-13)
    assert np.all(gradc.jit(lambda x: gradc.log_softmax(x, where=mask))(x)[~mask] == -np.inf)
    w = np.abs(b)

    def loss(x):
        return np.sum(gradc.logsumexp(x, axis=0, b=w) ** 2)
    g = gradc.grad(loss, target=target)(x)
    h = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        e = np.zeros_like(x)
        e[i, j] = h
        fd = (np.sum(scipy_lse(x + e, axis=0, b=w) ** 2)
              - np.sum(scipy_lse(x - e, axis=0, b=w) ** 2)) / (2 * h)
        assert abs(g[i, j] - fd) < 1e-7
    g = gradc.grad(lambda x: np.sum(gradc.logsumexp(x, axis=1, where=mask)), target=target)(x)
    assert np.all(g[~mask] == 0) and np.all(np.isfinite(g))
    np.testing.assert_allclose(g.sum(axis=1), np.ones(3), rtol=1e-12)


def test_logsumexp_weight_zero_is_no_term():
    """(Review: a term of weight 0 still set the shift: logsumexp([1000, 0], b=[0, 1])
    was -inf (SciPy: 0) and its gradient NaN.)"""
    from scipy.special import logsumexp as scipy_lse
    x, b = np.array([1000.0, 0.0]), np.array([0.0, 1.0])
    assert gradc.logsumexp(x, b=b) == scipy_lse(x, b=b) == 0.0
    assert gradc.jit(lambda x: gradc.logsumexp(x, b=b))(x) == 0.0
    np.testing.assert_array_equal(gradc.grad(lambda x: gradc.logsumexp(x, b=b))(x), [0.0, 1.0])
    assert gradc.logsumexp(np.array([np.inf, 0.0]), b=b) == 0.0

