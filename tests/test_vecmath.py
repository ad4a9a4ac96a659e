"""The CPU target's vectorisable ``exp``, ``log`` and ``tanh`` (``gradc.codegen.vecmath``): their
error against NumPy's, their edges, and that a fused loop calls them and vectorises."""
import numba
import numpy as np
import pytest

import gradc
from gradc.codegen import vecmath


def _loop(fn):
    @numba.njit(error_model="numpy")
    def loop(a, out):
        for i in range(a.size):
            out[i] = fn(a[i])
    return loop


_LOOPS = {name: (_loop(getattr(vecmath, name)), getattr(np, name))
          for name in ("exp", "tanh", "log", "log1p")}


def _ulps(got, want):
    """|got - want| in units of ``want``'s last place (where ``want`` is finite)."""
    finite = np.isfinite(want)
    return (np.abs(got[finite].astype(np.float64) - want[finite])
            / np.spacing(np.abs(want[finite]).astype(want.dtype)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, lo, hi, bound", [
    ("exp", -1.0, 1.0, 1), ("exp", -40.0, 40.0, 1), ("exp", -745.0, 709.7, 1),
    ("exp", -760.0, -700.0, 1), ("exp", 700.0, 712.0, 1),
    ("tanh", -0.625, 0.625, 2), ("tanh", 0.6, 1.0, 2), ("tanh", -3.0, 3.0, 2),
    ("tanh", 3.0, 30.0, 2), ("tanh", 1e-9, 1e-3, 2),
    ("log", 0.5, 2.0, 1), ("log", 0.999, 1.001, 1), ("log", 1e-30, 1e30, 1),
    ("log", 1e-300, 1e-290, 1), ("log", 1e290, 1e308, 1),
    ("log1p", -0.5, 0.5, 2), ("log1p", -1e-9, 1e-9, 2), ("log1p", -1.0, -0.9, 2),
    ("log1p", 0.0, 1e6, 2)])
def test_within_a_few_ulps_of_numpy(name, lo, hi, bound, dtype):
    loop, ref = _LOOPS[name]
    rng = np.random.default_rng(7)
    if name == "log":                 # (uniform in the exponent)
        if dtype == np.float32 and (lo < 1e-37 or hi > 1e38):
            return
        x = np.exp(rng.uniform(np.log(lo), np.log(hi), 200_000)).astype(dtype)
    else:
        x = rng.uniform(lo, hi, 200_000).astype(dtype)
    got = np.empty_like(x)
    loop(x, got)
    with np.errstate(over="ignore", under="ignore"):   # (float32: the float64 value,
        want = ref(x.astype(np.float64)).astype(dtype)   # rounded: NumPy's float32 exp
    assert got.dtype == dtype                            # is itself 1 ulp off it)
    if dtype == np.float64 or np.all(np.abs(x) < 80):   # (float32 exp overflows at 88.7)
        assert np.array_equal(np.isinf(got), np.isinf(want))
        assert _ulps(got, want).max() <= bound
    else:
        assert _ulps(got, want).max(initial=0.0) <= bound


def test_edges_as_numpy():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, -5e-324, 1e-310, 0.625,
                  -0.625, 19.0, 20.0, 1000.0, -1000.0, 709.78, 709.79, 709.8, 710.0,
                  -745.13, -745.14, -708.4, -1e-300, 1.0, 2.0, 0.5, 2.2250738585072014e-308,
                  2.225073858507201e-308, 1.7976931348623157e308])
    for name, (loop, ref) in _LOOPS.items():
        got = np.empty_like(x)
        loop(x, got)
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            want = ref(x)
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        with np.errstate(invalid="ignore"):
            near = np.abs(got - want) <= np.spacing(np.abs(want))       # (1 ulp)
        assert np.all(same | near), (name, x[~(same | near)])
        exact = ~np.isfinite(x) | (x == 0)
        if name == "log":
            exact |= (x < 0) | (x == 1)
        elif name == "log1p":
            exact |= (x <= -1) | (np.abs(x) < 1e-300)
        else:
            exact |= (np.abs(x) >= 709.8) | (np.abs(x) < 1e-300)
        assert np.array_equal(got[exact], want[exact], equal_nan=True), name
        numbers = ~np.isnan(want)                                   # (tanh(-0.0))
        assert np.array_equal(np.signbit(got[numbers]), np.signbit(want[numbers])), name
    with np.errstate(under="ignore"):
        assert np.exp(-745.13) == 5e-324      # (the subnormals: rounded once, as NumPy's)
    got = np.empty(1)
    _LOOPS["exp"][0](np.array([-745.13]), got)
    assert got[0] == 5e-324


def test_a_fused_loop_calls_them_and_is_vectorised():
    x = np.linspace(-3.0, 3.0, 256)

    def f(x):
        return (np.tanh(x * 0.7 + 0.1) + np.exp(-x * x) + np.log(x * x + 1.0)
                + np.log1p(x * x))
    fn = gradc.jit(f, target="cpu")
    source = fn.source(x)
    names = ("tanh", "exp", "log", "log1p")
    assert all(f"_k.v{name}(" in source for name in names)
    code = [line for line in source.split('"""')[-1].splitlines()
            if not line.lstrip().startswith("#")]
    assert not any(f"np.{name}(" in line for line in code for name in names)
    np.testing.assert_allclose(fn(x), f(x), rtol=1e-15, atol=1e-15)
    llvm = fn.llvm(x)
    assert "x double>" in llvm         # (packed: <2 x double> or wider)
    assert not any(f"@{name}" in llvm for name in ("tanh", "llvm.exp.", "llvm.log.", "log1p"))


def test_gradient_through_them_matches_the_interpreter():
    rng = np.random.default_rng(3)
    W, b, y = rng.standard_normal((16, 64)) / 4, rng.standard_normal(64), rng.standard_normal(16)

    def loss(W, b, y):
        h = np.tanh(y @ W + b)
        return np.sum(np.exp(-h * h) * h + np.log(h * h + 0.5) + np.logaddexp(h, 0.3))
    want = gradc.grad(loss, argnums=(0, 1), target="numpy")(W, b, y)
    got = gradc.jit(gradc.grad(loss, argnums=(0, 1)), target="cpu")(W, b, y)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)


def test_a_nest_of_many_calls_keeps_libms():
    """Each of vecmath's functions is ~50 LLVM instructions at its call: a nest holding
    more than ``loops.VECMATH_CALLS`` of them (an unrolled chain of 100 tanh took 1.8 s
    to compile against 1.3 s) calls libm's instead, with the same values."""
    from gradc.codegen.loops import VECMATH_CALLS

    def chain(n):
        def f(x):
            for _ in range(n):
                x = np.tanh(x * 1.1 + 0.1)
            return x
        return f
    x = np.linspace(-1.0, 1.0, 8)
    for n, vectorised in ((VECMATH_CALLS, True), (VECMATH_CALLS + 8, False)):
        fn = gradc.jit(chain(n), target="cpu")
        code = [line for line in fn.source(x).split('"""')[-1].splitlines()
                if not line.lstrip().startswith("#")]
        assert sum("_k.vtanh(" in line for line in code) == (n if vectorised else 0)
        assert sum("np.tanh(" in line for line in code) == (0 if vectorised else n)
        np.testing.assert_allclose(fn(x), chain(n)(x), rtol=1e-14, atol=1e-15)
