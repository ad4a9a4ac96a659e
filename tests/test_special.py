"""scipy.special's ufuncs on traced arrays: values against SciPy (edges included) on every
target, derivatives against finite differences and forward against reverse mode, and the
compiled digamma/polygamma against SciPy over a wide range."""
import warnings

import numpy as np
import pytest
import scipy.special as sc

import gradc
from gradc import ops
from gradc.codegen import special
from gradc.testing import numerical_grad

RNG = np.random.default_rng(2026)
EDGES = np.array([0.0, -0.0, 0.3, 0.65, 0.5, 1.0, -1.0, 1e-300, -700.5, -710.0, 710.0,
                  np.inf, -np.inf, np.nan])
X = np.concatenate([RNG.uniform(-30, 30, 40), RNG.uniform(-3, 3, 40), EDGES])
P = np.concatenate([RNG.uniform(0, 1, 40), [0.0, 1.0, 0.3, 0.65, 0.5, -0.1, 1.1, np.nan]])
Y = np.concatenate([RNG.uniform(-1, 3, 40), [0.0, 0.0, -1.0, np.inf, np.nan, 1.0, 2.0, 0.0]])
XX = np.concatenate([RNG.uniform(-1, 3, 40), [0.0, 1.0, 0.0, 0.0, 0.0, np.nan, 0.0, -1.0]])
Q = np.concatenate([RNG.uniform(0, 1, 40), 10.0 ** -np.arange(1, 324, 17.0),
                    1.0 - 10.0 ** -np.arange(1, 16, 2.0),
                    [0.0, 1.0, 0.5, 0.25, 0.02425, 0.5 - 2.0 ** -54, -0.1, 1.1, np.nan]])

# name: (arguments, whether the interpreter gives SciPy's values to the bit)
UFUNCS = {
    "erf": ((X,), True), "erfc": ((X,), True), "gammaln": ((X,), True),
    "gamma": ((np.concatenate([X, [171.5, 172.0, -180.5, -1e-310]]),), True),
    "psi": ((X,), True), "expit": ((X[X > -709],), False), "log_expit": ((X,), False),
    "logit": ((P,), False), "ndtr": ((X,), True), "xlogy": ((XX, Y), True),
    "xlog1py": ((XX, Y), False), "entr": ((Y,), True), "rel_entr": ((XX, Y), False),
    "kl_div": ((XX, Y), True), "ndtri": ((Q,), True), "erfinv": ((2.0 * Q - 1.0,), True),
    "erfcinv": ((2.0 * Q,), True), "log_ndtr": ((np.concatenate([X, [-20.0, 6.0]]),), False),
}


def test_every_registered_ufunc_has_a_case():
    from gradc.lib import scipy_special
    from gradc.numpy_api import UFUNCS as TABLE
    scipy_special.register()
    registered = {u.__name__ for u in TABLE if getattr(sc, u.__name__, None) is u}
    assert registered == set(UFUNCS), registered ^ set(UFUNCS)


def _host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
@pytest.mark.parametrize("name", list(UFUNCS))
def test_values_as_scipy(name, target):
    """Every finite value within a few ulps of SciPy's (the interpreter's to the bit
    where SciPy's formula uses SciPy's own pieces), and every inf, NaN and signed zero
    SciPy's."""
    f = getattr(sc, name)
    args, exact = UFUNCS[name]
    with np.errstate(all="ignore"):
        want = f(*args)
        got = _host(gradc.jit(lambda *a: f(*a), target=target)(*args))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])
    if exact and target == "numpy":
        np.testing.assert_array_equal(got, want)
    # (subnormal tails: libm's erfc, SciPy's 0; psi: as conditioned, see below)
    finite = np.isfinite(want)
    with np.errstate(all="ignore"):
        slope = np.abs(X * sc.polygamma(1, X)) if name == "psi" else 0.0
        # (log_ndtr near 6 is log of a number within 1e-9 of 1, as SciPy computes it:
        # one ulp of that number apart)
        tol = 5e-14 * (np.abs(want) + slope) + (3e-16 if name == "log_ndtr" else 1e-300)
        assert np.all(np.abs(got - want)[finite] <= tol[finite]), name


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_float32_stays_float32(target):
    x = np.linspace(0.2, 3.0, 7).astype(np.float32)
    fns = (sc.erf, sc.erfc, sc.gammaln, sc.psi, sc.expit, sc.ndtr, sc.entr, sc.logit,
           sc.log_expit, sc.log_ndtr, sc.gamma, lambda x: sc.xlogy(x, x),
           lambda x: sc.kl_div(x, x * x), lambda x: sc.ndtri(x / 4.0),
           lambda x: sc.erfinv(x / 4.0))
    got = gradc.jit(lambda x: tuple(f(x) for f in fns), target=target)(x)
    for f, g in zip(fns, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, f(x), rtol=2e-6, atol=1e-7)
    g = gradc.grad(lambda x: np.sum(sc.gammaln(x) * sc.erf(x)), target=target)(x)
    assert g.dtype == np.float32


def _mixed(x, y):
    return (sc.erf(x) * sc.erfc(y) + sc.gammaln(y + 2.0) * sc.psi(y + 1.5)
            + sc.expit(x) * sc.log_expit(y) + sc.logit(sc.expit(x - y))
            + sc.ndtr(x) + sc.xlogy(x, y + 1.2) + sc.xlog1py(y, x + 2.0) + sc.entr(y + 1.1)
            + sc.rel_entr(x + 2.0, y + 1.5) + sc.kl_div(y + 1.2, x + 2.5)
            + sc.ndtri(sc.expit(y)) * sc.erfinv(0.9 * x) + sc.erfcinv(1.0 + 0.5 * y)
            + sc.log_ndtr(8.0 * x) + sc.gamma(x + 1.5) * sc.gamma(y - 1.5))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_derivatives_against_finite_differences(target):
    x, y = RNG.uniform(-1, 1, 6), RNG.uniform(-1, 1, 6)

    def f(x, y):
        return np.sum(_mixed(x, y) ** 2)

    gx, gy = (_host(g) for g in gradc.grad(f, argnums=(0, 1), target=target)(x, y))
    np.testing.assert_allclose(gx, numerical_grad(lambda x: f(x, y), x), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gy, numerical_grad(lambda y: f(x, y), y), rtol=1e-7, atol=1e-8)
    u, v = RNG.standard_normal(6), RNG.standard_normal(6)
    _, jv = gradc.jvp(f, (x, y), (u, v), target=target)
    assert float(_host(jv)) == pytest.approx(gx @ u + gy @ v, rel=1e-12)


def test_every_derivative_of_gammaln_is_a_polygamma():
    x = np.array([0.3, 1.0, 2.5, 7.0, -1.5, -2.25])
    d1 = gradc.grad(lambda x: np.sum(sc.gammaln(x)))
    d2 = gradc.grad(lambda x: np.sum(d1(x)))
    d3 = gradc.grad(lambda x: np.sum(d2(x)))
    for n, d in ((0, d1), (1, d2), (2, d3)):
        for target in ("numpy", "cpu"):
            np.testing.assert_allclose(
                gradc.jit(d, target=target)(x) if target == "cpu" else d(x),
                sc.polygamma(n, x), rtol=1e-13)
    h = gradc.hessian(lambda x: np.sum(sc.gammaln(x)), target="cpu")(x)
    np.testing.assert_allclose(np.diag(h), sc.polygamma(1, x), rtol=1e-13)
    assert np.count_nonzero(h - np.diag(np.diag(h))) == 0


def test_compiled_digamma_and_polygamma_as_scipy():
    """codegen.special's series against SciPy, to a few ulps of the value or of the
    rounding of x, and SciPy's poles and limits exactly."""
    xs = np.concatenate([np.linspace(-20.3, 40.0, 3001), 10.0 ** np.arange(-300, 301, 25.0),
                         -(10.0 ** np.arange(-300, 0, 25.0)), [-1e-8, -1e-12, -2.5, -0.5],
                         [0.0, -0.0, -1.0, -3.0, -1e300, np.inf, -np.inf, np.nan,
                          1.4616321449683622]])
    with np.errstate(all="ignore"):
        for n in (0, 1, 2, 3, 6):
            got = np.array([special.polygamma(float(n), x) for x in xs])
            want = sc.polygamma(n, xs)
            edge = ~np.isfinite(want)
            np.testing.assert_array_equal(got[edge], want[edge])
            # both within a few ulps of the value, and of the rounding of x (near the
            # poles and zeros, where SciPy is off by as much: 4e-14 at x = -15.9986)
            slope = np.nan_to_num(np.abs(xs * sc.polygamma(n + 1, xs)), nan=0.0)
            tol = 8e-16 * (4 * np.abs(want) + 64 * slope)
            assert np.all(np.abs(got - want)[~edge] <= tol[~edge]), n
        assert np.isnan(special.polygamma(1.5, 2.0)) and np.isnan(special.polygamma(-1.0, 2.0))
    # far below 0, orders 1 and 2 by reflection (SciPy sums for |x| steps there):
    # ψ′(x) = π² csc²(πx) − ψ′(1 − x), 2π² at x = 1/4 − 10¹⁵ up to ψ′(10¹⁵) ≈ 1e-15
    assert special.polygamma(1.0, 0.25 - 1e15) == pytest.approx(2 * np.pi ** 2, rel=1e-14)
    # orders from 171 on: n! overflows, as in SciPy
    for n, x in ((200, 2.0), (171, 0.5), (200, 200.0), (1e300, 2.0)):
        np.testing.assert_array_equal(special.polygamma(float(n), x), sc.polygamma(n, x))


def test_small_negative_arguments_of_the_compiled_digamma():
    """The reflection reads cot(πx) at x minus its nearest whole number: ψ(−1e-8) is
    1e8 + ..., not the 9.9999998e7 of 1 − 1e-8 rounded."""
    x = np.array([-1e-8, -1e-12, -1e-200, -2.5, -0.25])
    for target in ("cpu", "cuda"):
        got = _host(gradc.jit(lambda a: sc.psi(a), target=target)(x))
        np.testing.assert_allclose(got, sc.psi(x), rtol=4e-15)
        g = _host(gradc.grad(lambda a: np.sum(sc.gammaln(a)), target=target)(x))
        np.testing.assert_allclose(g, sc.psi(x), rtol=4e-15)


def test_integer_arguments_of_polygamma_are_floats():
    got = gradc.jit(lambda a: ops.polygamma(1, a))(np.array([1, 2, 3]))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, sc.polygamma(1, [1, 2, 3]), rtol=1e-15)


def test_polygamma_order_has_no_derivative():
    x = np.array([1.5, 2.5])
    with pytest.raises(gradc.UnsupportedError, match="order n"):
        gradc.grad(lambda n: np.sum(ops.polygamma(n, x)))(np.array([1.0, 2.0]))
    g = gradc.grad(lambda x: np.sum(ops.polygamma(2.0, x)))(x)
    np.testing.assert_allclose(g, sc.polygamma(3, x), rtol=1e-13)


def test_branches_not_taken_give_no_nan_derivatives():
    """expit far in the tails, xlogy at x = 0, entr at 0 and logit near 0 and 1: the
    derivatives are finite (each branch reads inputs made safe for it)."""
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    g = gradc.grad(lambda x: np.sum(sc.expit(x) + sc.log_expit(x) + sc.ndtr(x)))(x)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [1.0, 1.0, 0.75 + 1.0 / np.sqrt(2.0 * np.pi), 0.0, 0.0],
                               rtol=1e-15, atol=1e-15)
    gx, gy = gradc.grad(lambda x, y: np.sum(sc.xlogy(x, y) + sc.xlog1py(x, y)),
                        argnums=(0, 1))(np.array([0.0, 0.0, 2.0]), np.array([0.0, 3.0, 3.0]))
    np.testing.assert_allclose(gx, [0.0, np.log(3.0) + np.log(4.0), np.log(3.0) + np.log(4.0)])
    np.testing.assert_allclose(gy, [0.0, 0.0, 2.0 / 3.0 + 2.0 / 4.0])
    ge = gradc.grad(lambda y: np.sum(sc.entr(y)))(np.array([0.0, 0.5]))
    np.testing.assert_allclose(ge, [0.0, -np.log(0.5) - 1.0])
    with np.errstate(divide="ignore"):       # logit′ = 1/(x(1 − x)): inf at 0 and 1
        gl = gradc.grad(lambda p: np.sum(sc.logit(p)))(np.array([0.0, 1.0, 0.2]))
    np.testing.assert_allclose(gl, [np.inf, np.inf, 1.0 / (0.2 * 0.8)], rtol=1e-15)


def test_vmap_and_unsupported_ufuncs():
    x = RNG.uniform(0.5, 2.0, (4, 3))
    got = gradc.vmap(gradc.grad(lambda r: np.sum(sc.gammaln(r) * sc.erf(r))))(x)
    want = sc.psi(x) * sc.erf(x) + sc.gammaln(x) * 2 / np.sqrt(np.pi) * np.exp(-x * x)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    with pytest.raises(gradc.UnsupportedError, match="scipy.special.i0e is not supported"):
        gradc.grad(lambda x: np.sum(sc.i0e(x)))(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(gradc.ConcretizationError):     # (np.asarray inside SciPy)
            gradc.grad(lambda x: sc.polygamma(1, x).sum())(x)


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_sigmoid_is_accurate_in_both_tails(target):
    """gradc.sigmoid against SciPy's expit: (1 + tanh(x/2)) / 2, its old formula, was off
    by 1.7e-4 relative at x = -30 and 0 below -38; e^x / (1 + e^x) there is not."""
    x = np.concatenate([np.linspace(-700, 700, 2001), [-30.0, -0.0, 0.0, 1e-300]])
    want = sc.expit(x)
    got = gradc.jit(gradc.sigmoid, target=target)(x)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    slope = gradc.vmap(gradc.grad(gradc.sigmoid), target=target)(x)
    np.testing.assert_allclose(slope, sc.expit(x) * sc.expit(-x), rtol=2e-15, atol=0)
