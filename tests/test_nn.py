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


@pytest.mark.filterwarnings("error::RuntimeWarning")   # (log(0) of the empty row warned)
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_softmax_where_masked_padding_and_empty_rows_give_no_nan(target):
    """(Sharp edge: softmax(x, where=mask) selected exp(x - lse) away at the masked
    terms, but its derivative was 0 · exp(x - lse): NaN where masked padding was large,
    inf or NaN, and in every term of a row with nothing unmasked.)  As jax.nn.softmax:
    0 at masked terms, the unmasked ones' softmax, finite gradients; log_softmax -inf."""
    x = np.array([[1.0, 2.0, 1000.0, 0.5], [np.inf, 0.5, np.nan, -1.0],
                  [3.0, np.nan, np.inf, -2.0]])
    mask = np.array([[True, True, False, True], [False, True, False, True],
                     [False, False, False, False]])
    w = np.array([[1.0, -2.0, 3.0, 0.5], [0.5, 1.0, 2.0, -1.0], [1.0, 1.0, 1.0, 1.0]])

    def softmax_np(x):        # each row's unmasked terms only (a row of none: zeros)
        out = np.zeros_like(x)
        for r in range(len(x)):
            e = np.exp(x[r, mask[r]] - np.max(x[r, mask[r]], initial=0.0))
            out[r, mask[r]] = e / np.sum(e)
        return out
    want = softmax_np(x)
    # d/dx Σ w·s = s · (w - Σ w·s) on the unmasked terms, 0 elsewhere
    want_grad = want * (w - np.sum(w * want, axis=1, keepdims=True))
    sm = gradc.jit(lambda x: gradc.softmax(x, where=mask), target=target)(x)
    np.testing.assert_allclose(sm, want, rtol=1e-14)
    g = gradc.grad(lambda x: np.sum(w * gradc.softmax(x, where=mask)), target=target)(x)
    np.testing.assert_allclose(g, want_grad, rtol=1e-13, atol=1e-15)
    t = np.where(mask, 0.1 * w, 0.0)
    _, jt = gradc.jvp(lambda x: gradc.softmax(x, where=mask), (x,), (t,), target=target)
    np.testing.assert_allclose(jt, want * (t - np.sum(want * t, axis=1, keepdims=True)),
                               rtol=1e-13, atol=1e-15)

    ls = gradc.jit(lambda x: gradc.log_softmax(x, where=mask), target=target)(x)
    np.testing.assert_allclose(ls[mask], np.log(want[mask]), rtol=1e-14)
    assert np.all(ls[~mask] == -np.inf)
    g = gradc.grad(lambda x: np.sum(np.where(mask, w * gradc.log_softmax(x, where=mask), 0)),
                   target=target)(x)
    # d/dx Σ_unmasked w·log s = w - s·Σ_unmasked w, 0 at masked terms
    np.testing.assert_allclose(
        g, np.where(mask, w - want * np.sum(np.where(mask, w, 0), axis=1, keepdims=True), 0),
        rtol=1e-13, atol=1e-15)


def test_logsumexp_weight_zero_is_no_term():
    """(Review: a term of weight 0 still set the shift: logsumexp([1000, 0], b=[0, 1])
    was -inf (SciPy: 0) and its gradient NaN.)"""
    from scipy.special import logsumexp as scipy_lse
    x, b = np.array([1000.0, 0.0]), np.array([0.0, 1.0])
    assert gradc.logsumexp(x, b=b) == scipy_lse(x, b=b) == 0.0
    assert gradc.jit(lambda x: gradc.logsumexp(x, b=b))(x) == 0.0
    np.testing.assert_array_equal(gradc.grad(lambda x: gradc.logsumexp(x, b=b))(x), [0.0, 1.0])
    assert gradc.logsumexp(np.array([np.inf, 0.0]), b=b) == 0.0



# ------------------------------------------------- logsumexp of no terms (all −inf)

NEG = -np.inf


def _lse_np(v, axis=None, keepdims=False):
    """logsumexp in NumPy over the terms there are: −inf for a slice of none (an empty
    sum, dropped from every derivative)."""
    m = np.max(v, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    s = np.sum(np.exp(v - m), axis=axis, keepdims=True)
    out = np.where(s > 0, np.log(np.where(s > 0, s, 1.0)), NEG) + m
    if keepdims:
        return out
    return np.reshape(out, ()) if axis is None else np.squeeze(out, axis=axis)


def _softmax_np(v, axis):
    """exp(v - logsumexp(v)): 0 for each term of an empty sum."""
    lse = _lse_np(v, axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(lse), np.exp(v - lse), 0.0)


def _crf(U, A):
    """A CRF's log-partition function summed over the batch (forward algorithm through
    ``scan``), ``U`` (B, T, K) the emissions, ``A`` (K, K) the transitions."""
    def step(alpha, u):
        return gradc.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
    xs = np.transpose(U, (1, 0, 2))
    alpha, _ = gradc.scan(step, xs[0], xs[1:])
    return np.sum(gradc.logsumexp(alpha, axis=1))


def _crf_np(U, A):
    alpha = U[:, 0]
    for t in range(1, U.shape[1]):
        alpha = _lse_np(alpha[:, :, None] + A[None], 1) + U[:, t]
    return np.sum(_lse_np(alpha, 1))


def _crf_grad_np(U, A):
    """Forward-backward in NumPy: dU the node marginals, dA the pairwise marginals
    summed over the steps and the batch; a path through a forbidden transition (−inf)
    has probability exp(−inf) = 0, and an empty sum contributes nothing."""
    B, T, K = U.shape
    alpha, beta = np.empty((T, B, K)), np.zeros((T, B, K))
    alpha[0] = U[:, 0]
    for t in range(1, T):
        alpha[t] = _lse_np(alpha[t - 1][:, :, None] + A[None], 1) + U[:, t]
    for t in range(T - 2, -1, -1):
        beta[t] = _lse_np(A[None] + (U[:, t + 1] + beta[t + 1])[:, None, :], 2)
    logz = _lse_np(alpha[-1], 1)[None, :, None]                      # (1, B, 1)
    dU = np.exp(alpha + beta - logz).transpose(1, 0, 2)
    after = U.transpose(1, 0, 2)[1:] + beta[1:]                       # (T-1, B, K)
    dA = np.sum(np.exp(alpha[:-1, :, :, None] + A + after[:, :, None, :]
                       - logz[..., None]), axis=(0, 1))
    return dU, dA


def _unreachable_crf(seed):
    """Emissions and transitions with state 2 reachable only at the first step (no
    transition into it: from the second step on, each of its forward sums has no term)
    and one forbidden transition besides."""
    rng = np.random.default_rng(seed)
    U, A = rng.standard_normal((3, 6, 4)), rng.standard_normal((4, 4))
    A[:, 2] = NEG
    A[1, 3] = NEG
    return U, A


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_crf_with_a_state_reachable_only_at_the_start_has_a_gradient(target):
    """(QA: a column of −inf transitions gave NaN gradients for every parameter, log Z
    being finite: the state's forward sums have no terms after the first step, and
    log's derivative 1/total times their zero weights was 0/0, as JAX's logsumexp
    gives.)  Against forward-backward in NumPy and central differences."""
    U, A = _unreachable_crf(11)
    np.testing.assert_allclose(gradc.jit(_crf, target=target)(U, A), _crf_np(U, A),
                               rtol=1e-13)
    with np.errstate(invalid="raise"):          # (no NaN made on the way)
        dU, dA = gradc.grad(_crf, argnums=(0, 1), target=target)(U, A)
    want_U, want_A = _crf_grad_np(U, A)
    np.testing.assert_allclose(dU, want_U, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dA, want_A, rtol=1e-12, atol=1e-15)
    assert np.all(dU[:, 1:, 2] == 0) and np.all(dA[:, 2] == 0) and dA[1, 3] == 0
    assert np.all(dU[:, 0, 2] > 0)                 # (the first step can be in state 2)
    np.testing.assert_allclose(dU, numerical_grad(lambda u: _crf_np(u, A), U),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dA, numerical_grad(lambda a: _crf_np(U, a), A),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_a_crf_with_an_unreachable_state_has_hessian_vector_products():
    """Second derivatives through the scan (reverse then forward, and reverse twice):
    against central differences of the NumPy forward-backward gradient.  (The
    interpreter only: the compiled hvp of a scan takes a minute to build.)"""
    U, A = _unreachable_crf(12)
    rng = np.random.default_rng(12)
    v = rng.standard_normal(U.shape)
    h = 1e-5
    want = (_crf_grad_np(U + h * v, A)[0] - _crf_grad_np(U - h * v, A)[0]) / (2 * h)
    for method in ("fwd-rev", "rev-rev"):
        got = gradc.hvp(lambda u: _crf(u, A), (U,), (v,), method=method, target="numpy")
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    w = rng.standard_normal(A.shape)
    w[np.isinf(A)] = 0.0                       # (a forbidden transition stays one)
    want = (_crf_grad_np(U, A + h * w)[1] - _crf_grad_np(U, A - h * w)[1]) / (2 * h)
    got = gradc.hvp(lambda a: _crf(U, a), (A,), (w,), target="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_logsumexp_of_no_terms_is_minus_inf_with_a_zero_gradient(target):
    """A slice of −inf only: the value −inf (as SciPy's) and a zero gradient (softmax's
    weights of an empty sum are 0; it was NaN); the other slices' gradients unchanged.
    Along either axis, kept dimensions, all of one array, masked by ``where=`` or by
    weights 0, and float32."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 5))
    x[1] = NEG                        # no terms
    x[2, :3] = NEG                    # two terms
    mask = np.isfinite(x)
    cases = [  # (function, its NumPy value, the NumPy gradient of <u, value>)
        (lambda x: gradc.logsumexp(x, axis=1), x, 1, False),
        (lambda x: gradc.logsumexp(x.T, axis=0, keepdims=True), x, 1, True),
        (lambda x: gradc.logsumexp(np.full((2, 3), NEG) + x[0, :3]), None, None, None),
    ]
    for f, v, axis, keep in cases:
        with np.errstate(invalid="raise"):
            out, back = gradc.vjp(f, x, target=target)
            u = rng.standard_normal(np.shape(out))
            g, = back(u)
        if v is None:                             # (all of an array of −inf)
            assert out == NEG
            np.testing.assert_array_equal(g, 0.0)
            continue
        want = _lse_np(v, axis)
        np.testing.assert_allclose(np.reshape(out, want.shape), want, rtol=1e-14)
        assert out.shape == ((1, 4) if keep else (4,))
        np.testing.assert_array_equal(g[1], 0.0)
        np.testing.assert_allclose(g, np.reshape(u, (4, 1)) * _softmax_np(v, axis),
                                   rtol=1e-13, atol=1e-300)
    finite = np.where(mask, x, 0.0)
    for f in (lambda x: gradc.logsumexp(x, axis=1, where=mask),
              lambda x: gradc.logsumexp(x, axis=1, b=mask.astype(float)),
              lambda x: gradc.logsumexp(x, axis=1, b=mask.astype(float),
                                        return_sign=True)[0]):
        out, back = gradc.vjp(f, finite, target=target)
        g, = back(np.ones(4))
        np.testing.assert_allclose(out, _lse_np(x, 1), rtol=1e-14)
        np.testing.assert_allclose(g, _softmax_np(x, 1), rtol=1e-13, atol=1e-300)
    x32 = x.astype(np.float32)
    g = gradc.grad(lambda x: np.sum(gradc.logsumexp(x, axis=1)[[0, 2, 3]]),
                   target=target)(x32)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g[1], 0.0)
    np.testing.assert_allclose(g, _softmax_np(x, 1) * [[1], [0], [1], [1]], rtol=1e-6)
    # (a sum of no terms alone: NaN, +inf, and weights cancelling to 0 keep log's
    # derivative, NaN and ±inf, not a finite value)
    y = np.array([[np.inf, 0.0], [np.nan, 0.0], [0.0, 0.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        _, back = gradc.vjp(lambda y: gradc.logsumexp(y, axis=1, b=np.array([1.0, -1.0])),
                            y, target=target)
        g, = back(np.ones(3))
    assert np.isnan(g[0, 0]) and np.all(np.isnan(g[1])) and list(g[2]) == [np.inf, -np.inf]


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_logsumexp_second_derivatives_beside_a_sum_of_no_terms(target):
    """logsumexp's JVP rule is differentiated again: the Hessian (forward over
    reverse), both hvps and forward over forward, against central differences of the
    NumPy gradient; a row of no terms has zero second derivatives, and weights ``b``
    take part."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 4))
    x[1] = NEG
    x[2, 0] = NEG
    c, w = rng.standard_normal(3), rng.uniform(0.5, 2.0, (3, 4))
    keep = np.array([True, False, True])

    def f(x):                     # (a function of the rows that have terms)
        return np.sum(c * np.where(keep, gradc.logsumexp(x, axis=1, b=w), 0.0) ** 2)

    def grad_np(x):
        lse = _lse_np(x + np.log(w), 1)
        return np.where(keep, 2 * c * np.where(keep, lse, 0.0), 0.0)[:, None] \
            * _softmax_np(x + np.log(w), 1)
    h = 1e-6
    want = np.zeros((3, 4, 3, 4))
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        want[(...,) + i] = (grad_np(x + e) - grad_np(x - e)) / (2 * h)
    with np.errstate(invalid="raise"):
        H = gradc.hessian(f, target=target)(x)
    np.testing.assert_allclose(H, want, rtol=1e-6, atol=1e-9)
    assert np.all(H[1] == 0) and np.all(H[:, :, 1] == 0)
    v = rng.standard_normal(x.shape)
    for method in ("fwd-rev", "rev-rev"):
        np.testing.assert_allclose(gradc.hvp(f, (x,), (v,), method=method, target=target),
                                   np.einsum("ijkl,kl->ij", H, v), rtol=1e-12, atol=1e-14)

    def lse_jvp(x):               # J v, each row's directional derivative
        return gradc.jvp(lambda x: gradc.logsumexp(x, axis=1), (x,), (v,))[1]
    second = gradc.jvp(lse_jvp, (x,), (v,), target=target)[1]      # vᵀ H_r v per row
    sm = lambda x: _softmax_np(x, 1)                                  # noqa: E731
    want = (np.sum(sm(x + h * v) * v, 1) - np.sum(sm(x - h * v) * v, 1)) / (2 * h)
    np.testing.assert_allclose(second, want, rtol=1e-6, atol=1e-9)
    assert second[1] == 0


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_logsumexp_forward_and_reverse_mode_agree_beside_no_terms(target):
    """⟨u, J v⟩ = ⟨Jᵀ u, v⟩ with a row of no terms (both were NaN), and J v against
    central differences on the rows with terms."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, 5))
    x[1] = NEG
    x[0, 1:3] = NEG
    u, v = rng.standard_normal(3), rng.standard_normal(x.shape)

    def f(x):
        return gradc.logsumexp(x, axis=1)
    with np.errstate(invalid="raise"):
        out, jv = gradc.jvp(f, (x,), (v,), target=target)
        _, back = gradc.vjp(f, x, target=target)
        ju, = back(u)
    assert jv[1] == 0 and np.all(ju[1] == 0) and np.all(np.isfinite(ju))
    np.testing.assert_allclose(np.dot(u, jv), np.sum(ju * v), rtol=1e-13)
    h = 1e-6
    with np.errstate(invalid="ignore"):
        fd = (_lse_np(x + h * v, 1) - _lse_np(x - h * v, 1)) / (2 * h)
    np.testing.assert_allclose(jv[[0, 2]], fd[[0, 2]], rtol=1e-6)
