"""NumPy's unbuffered in-place ``ufunc.at`` (``np.add.at(y, idx, v)``) on traced arrays.

Values against NumPy's own ``ufunc.at`` on copies of the same inputs; derivatives
against central finite differences of NumPy's function, and forward mode against
reverse mode (``<u, J t> == <J^T u, t>``).  The interpreter (``target="numpy"``, the
test default) checks the rules; a few cases run compiled (``target="cpu"``) and one in
the CUDA simulator."""
from __future__ import annotations

import numpy as np
import pytest

import gradc
from gradc.errors import (ConcretizationError, EvaluationError, ReadOnlyError, ShapeError,
                          UnsupportedError)

RNG = np.random.default_rng(0)

# name: (y's shape, the index, v's shape)
CASES = {
    "repeats": ((6,), [0, 0, 1, 5, 0], (5,)),
    "negative": ((6,), np.array([-1, 2, 2, -4, 0]), (5,)),
    "scalar-v": ((6,), [1, 1, 3, -1], ()),
    "broadcast-v": ((4, 3), [0, 0, 2], (3,)),
    "tuple": ((4, 3), (np.array([0, 0, 3, 1]), np.array([2, 2, 0, -1])), (4,)),
    "slice-then-array": ((4, 3), (slice(None), [0, 0, 2]), (4, 3)),
    "array-then-slice": ((4, 5), ([1, 1, 3], slice(1, 4)), (3, 3)),
    "broadcast-indices": ((4, 3), (np.array([[0], [0]]), np.array([1, 1, 2])), (2, 3)),
    "int": ((4, 3), 2, (3,)),
    "slice": ((6,), slice(1, 6, 2), (3,)),
    "mask": ((5,), np.array([True, False, True, True, False]), (3,)),
}
UFUNCS = {"add": np.add, "subtract": np.subtract, "maximum": np.maximum,
          "minimum": np.minimum, "multiply": np.multiply, "divide": np.divide}


def _inputs(case, dtype=np.float64):
    yshape, idx, vshape = CASES[case]
    y = RNG.uniform(0.5, 2.0, yshape).astype(dtype)
    v = RNG.uniform(0.5, 2.0, vshape).astype(dtype)
    return y, idx, v


def _updated(ufunc, idx):
    """``f(y, v)``: ``ufunc.at`` into a copy of y, then a nonlinear read of it (in NumPy
    the copy keeps the caller's array unchanged)."""
    def f(y, v):
        z = y.copy()
        assert ufunc.at(z, idx, v) is None
        return np.sin(z) * z
    return f


def _numpy(f, *args):
    return f(*[np.array(a, copy=True) for a in args])


def _weights(f, args):
    return RNG.standard_normal(np.shape(_numpy(f, *args)))


def _fd_grad(f, args, argnum, eps=1e-6):
    """Central differences of ``sum(w * f(*args))`` w.r.t. argument ``argnum``."""
    x = np.array(args[argnum], dtype=np.float64)
    out = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[k] += eps
        lo[k] -= eps
        fh = f(*[hi if i == argnum else a for i, a in enumerate(args)])
        fl = f(*[lo if i == argnum else a for i, a in enumerate(args)])
        out[k] = (fh - fl) / (2 * eps)
    return out


@pytest.mark.parametrize("name", list(UFUNCS))
@pytest.mark.parametrize("case", list(CASES))
def test_values_match_numpy(case, name):
    y, idx, v = _inputs(case)
    f = _updated(UFUNCS[name], idx)
    got = gradc.jit(f)(y, v)
    np.testing.assert_allclose(got, _numpy(f, y, v), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", list(UFUNCS))
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_finite_differences(case, name):
    y, idx, v = _inputs(case)
    f = _updated(UFUNCS[name], idx)
    w = _weights(f, (y, v))

    def loss(y, v):
        return np.sum(w * f(y, v))
    gy, gv = gradc.grad(loss, argnums=(0, 1))(y, v)
    np.testing.assert_allclose(gy, _fd_grad(lambda *a: _numpy(loss, *a), (y, v), 0),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gv, _fd_grad(lambda *a: _numpy(loss, *a), (y, v), 1),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["add", "subtract", "maximum", "multiply"])
@pytest.mark.parametrize("case", ["repeats", "tuple", "slice-then-array", "scalar-v"])
def test_jvp_agrees_with_vjp(case, name):
    y, idx, v = _inputs(case)
    f = _updated(UFUNCS[name], idx)
    ty, tv = RNG.standard_normal(y.shape), RNG.standard_normal(v.shape)
    out, jt = gradc.jvp(f, (y, v), (ty, tv))
    np.testing.assert_allclose(out, _numpy(f, y, v), rtol=1e-13)
    u = RNG.standard_normal(np.shape(out))
    _, vjp_fn = gradc.vjp(f, y, v)
    cy, cv = vjp_fn(u)
    assert abs(np.sum(u * jt) - (np.sum(cy * ty) + np.sum(cv * tv))) < 1e-10
    # and both against finite differences along (ty, tv)
    eps = 1e-6
    fd = (_numpy(f, y + eps * ty, v + eps * tv) - _numpy(f, y - eps * ty, v - eps * tv)) \
        / (2 * eps)
    np.testing.assert_allclose(jt, fd, rtol=1e-6, atol=1e-7)


def test_later_reads_see_the_update_and_views_write_through():
    idx = np.array([0, 2, 2])

    def f(x, v):
        z = x * 1.0
        before = z[0] * 1.0     # (a copy: gradc's z[0] is a view, NumPy's a scalar)
        head = z[:3]                        # a view of z: writes through it reach z
        np.add.at(head, idx, v)
        np.subtract.at(z, [3, 3], v[0])
        return np.stack([before, z[0], z[2], z[3], head[2], np.sum(z)])

    x, v = RNG.standard_normal(5), RNG.standard_normal(3)
    want = _numpy(f, x, v)
    np.testing.assert_allclose(gradc.jit(f)(x, v), want, rtol=1e-13)
    np.testing.assert_allclose(gradc.jit(f, target="cpu")(x, v), want, rtol=1e-13)
    w = RNG.standard_normal(6)
    gx, gv = gradc.grad(lambda x, v: np.sum(w * f(x, v)), argnums=(0, 1))(x, v)
    loss = lambda *a: np.sum(w * _numpy(f, *a))             # noqa: E731
    np.testing.assert_allclose(gx, _fd_grad(loss, (x, v), 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gv, _fd_grad(loss, (x, v), 1), rtol=1e-6, atol=1e-8)


def test_the_brief_example_from_zeros_like():
    def f(x):
        y = np.zeros_like(x)
        np.add.at(y, [0, 0, 1], x[:3])
        return np.sum(y ** 2)

    x = RNG.standard_normal(5)
    want = _fd_grad(lambda x: _numpy(f, x), (x,), 0)
    for target in ("numpy", "cpu"):
        np.testing.assert_allclose(gradc.grad(f, target=target)(x), want, rtol=1e-6,
                                   atol=1e-8)
        np.testing.assert_allclose(gradc.jit(f, target=target)(x), f(x.copy()), rtol=1e-13)


@pytest.mark.parametrize("name", ["add", "subtract", "maximum"])
@pytest.mark.parametrize("case", ["negative", "array-then-slice", "mask"])
def test_compiled_cpu(case, name):
    y, idx, v = _inputs(case)
    f = _updated(UFUNCS[name], idx)
    np.testing.assert_allclose(gradc.jit(f, target="cpu")(y, v), _numpy(f, y, v),
                               rtol=1e-13, atol=1e-13)
    w = _weights(f, (y, v))

    def loss(y, v):
        return np.sum(w * f(y, v))
    got = gradc.grad(loss, argnums=(0, 1), target="cpu")(y, v)
    want = gradc.grad(loss, argnums=(0, 1), target="numpy")(y, v)
    for k in range(2):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(got[k], _fd_grad(lambda *b: _numpy(loss, *b), (y, v), k),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["maximum", "minimum", "multiply", "divide"])
def test_many_repeats(name):
    """Many repeats of one index: combined by doubling steps (multiply), one round per
    repeat (divide), or one ``scatter_extremum`` (maximum, minimum)."""
    ufunc = UFUNCS[name]
    idx = np.r_[np.zeros(37, np.int64), [3, 1, 3, 2], np.full(20, 2), [1]]
    v = RNG.uniform(0.9, 1.1, idx.size)
    y = RNG.uniform(0.5, 2.0, 5)
    f = _updated(ufunc, idx)
    np.testing.assert_allclose(gradc.jit(f)(y, v), _numpy(f, y, v), rtol=1e-13)
    w = _weights(f, (y, v))

    def loss(y, v):
        return np.sum(w * f(y, v))
    got = gradc.grad(loss, argnums=(0, 1))(y, v)
    for k in range(2):
        np.testing.assert_allclose(got[k], _fd_grad(lambda *a: _numpy(loss, *a), (y, v), k),
                                   rtol=1e-6, atol=1e-7)


def test_traced_index_arrays():
    """Indices that are arguments (traced): add/subtract are a scatter_add of them,
    negative ones included; a later call with other indices reuses the code."""
    def f(y, i, v):
        z = y.copy()
        np.add.at(z, i, v)
        np.subtract.at(z, i[::-1], 0.5 * v)
        return z ** 2

    y, v = RNG.standard_normal(6), RNG.standard_normal(5)
    for i in (np.array([0, 0, -1, 3, 3]), np.array([5, -6, 1, 1, 1])):
        want = _numpy(f, y, i, v)
        for target in ("numpy", "cpu"):
            np.testing.assert_allclose(gradc.jit(f, target=target)(y, i, v), want,
                                       rtol=1e-13)
        gy, gv = gradc.grad(lambda y, i, v: np.sum(f(y, i, v)), argnums=(0, 2))(y, i, v)
        loss = lambda y, v: np.sum(_numpy(f, y, i, v))      # noqa: E731
        np.testing.assert_allclose(gy, _fd_grad(loss, (y, v), 0), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gv, _fd_grad(loss, (y, v), 1), rtol=1e-6, atol=1e-8)


def test_float32():
    y, idx, v = _inputs("tuple", np.float32)
    for vv in (v, v.astype(np.float64), 1.25):          # float64 values are cast back
        f = _updated(np.add, idx)
        want = _numpy(f, y, vv)
        assert want.dtype == np.float32
        for target in ("numpy", "cpu"):
            got = gradc.jit(f, target=target)(y, vv)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-6)
    f = _updated(np.maximum, idx)
    np.testing.assert_allclose(gradc.jit(f)(y, v), _numpy(f, y, v), rtol=1e-6)
    g = gradc.grad(lambda y, v: np.sum(_updated(np.add, idx)(y, v)), argnums=(0, 1))(y, v)
    assert g[0].dtype == g[1].dtype == np.float32
    g64 = gradc.grad(lambda y, v: np.sum(_updated(np.add, idx)(y, v)), argnums=(0, 1))(
        y.astype(np.float64), v.astype(np.float64))
    np.testing.assert_allclose(g[0], g64[0], rtol=1e-5)
    np.testing.assert_allclose(g[1], g64[1], rtol=1e-5)


@pytest.mark.parametrize("ydtype, values", [
    (np.int64, np.array([-0.5, -0.5, 0.6, 0.6])),       # truncated at every step
    (np.int64, np.array([2, -7, 3, 1])),
    (np.int32, np.array([2 ** 40, -7, 3, 2 ** 35])),     # wraps, as NumPy's
    (np.uint8, np.array([200, 100, -1, 300])),
    (np.bool_, np.array([0, 2, 0, 0])),
    (np.bool_, np.array([False, True, False, False])),
    (np.float32, np.array([1, 2, 3, 4], np.int64)),
])
@pytest.mark.parametrize("name", ["add", "subtract", "maximum"])
def test_dtypes_as_numpy(ydtype, values, name):
    """NumPy's ufunc.at computes in the promoted dtype and casts back unsafely."""
    ufunc = UFUNCS[name]
    if ydtype is np.bool_ and name == "subtract":
        pytest.skip("NumPy refuses boolean subtraction")
    y = np.array([1, 0, 5, 3], dtype=ydtype)
    idx = [0, 0, 2, 2]

    def f(y, v):
        z = y.copy()
        ufunc.at(z, idx, v)
        return z

    with np.errstate(all="ignore"):
        want = f(y, values)
    for target in ("numpy", "cpu"):
        got = gradc.jit(f, target=target)(y, values)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_hessian():
    idx = np.array([0, 0, 2, 1])

    def f(x):
        z = x[:3] * x[1:4]
        np.add.at(z, idx, x[:4] ** 2)
        np.maximum.at(z, [1, 1], x[3:5])
        return np.sum(z ** 3)

    x = RNG.uniform(0.5, 1.5, 5)
    grad = gradc.grad(f)
    want = np.stack([_fd_grad(lambda x, k=k: grad(x)[k], (x,), 0) for k in range(5)])
    np.testing.assert_allclose(gradc.hessian(f)(x), want, rtol=1e-5, atol=1e-6)


def test_vmap():
    idx = np.array([1, 1, 0, 3])

    def f(y, v):
        z = y.copy()
        np.add.at(z, idx, v)
        np.minimum.at(z, [2, 2], v[:2])
        return np.tanh(z)

    ys, vs = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    want = np.stack([_numpy(f, a, b) for a, b in zip(ys, vs)])
    np.testing.assert_allclose(gradc.vmap(f)(ys, vs), want, rtol=1e-13)
    np.testing.assert_allclose(gradc.vmap(f, in_axes=(None, 0))(ys[0], vs),
                               np.stack([_numpy(f, ys[0], b) for b in vs]), rtol=1e-13)

    def g(y, i, v):                          # indices that differ per example
        z = y.copy()
        np.add.at(z, i, v)
        return z * z

    iss = np.array([[0, 0, 1, 3], [3, 2, 2, 2], [-1, 0, -1, 0]])
    want = np.stack([_numpy(g, a, i, b) for a, i, b in zip(ys, iss, vs)])
    np.testing.assert_allclose(gradc.vmap(g)(ys, iss, vs), want, rtol=1e-13)
    # the batched gradient w.r.t. v, a gather of each example's cotangent
    gv = gradc.vmap(gradc.grad(lambda y, i, v: np.sum(g(y, i, v)), argnums=2))(ys, iss, vs)
    for a, i, b, got in zip(ys, iss, vs, gv):
        np.testing.assert_allclose(
            got, _fd_grad(lambda b: np.sum(_numpy(g, a, i, b)), (b,), 0), rtol=1e-6,
            atol=1e-8)


def test_cuda_simulator():
    pytest.importorskip("numba.cuda")
    y, idx, v = _inputs("tuple")
    f = _updated(np.add, idx)
    np.testing.assert_allclose(gradc.jit(f, target="cuda")(y, v), _numpy(f, y, v),
                               rtol=1e-12)
    w = _weights(f, (y, v))

    def loss(y, v):
        return np.sum(w * f(y, v))
    got = gradc.grad(loss, argnums=(0, 1), target="cuda")(y, v)
    want = gradc.grad(loss, argnums=(0, 1), target="numpy")(y, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_nothing_traced_is_numpy():
    """A NumPy array updated by NumPy values inside a traced function is NumPy's own
    np.add.at (a constant of the trace); outside any trace gradc is not involved."""
    def f(x):
        c = np.zeros(3)
        np.add.at(c, [0, 0, 2], np.array([1.0, 2.0, 4.0]))
        return x * c

    x = RNG.standard_normal(3)
    np.testing.assert_array_equal(gradc.jit(f)(x), x * np.array([3.0, 0.0, 4.0]))
    np.testing.assert_array_equal(gradc.grad(lambda x: np.sum(f(x)))(x), [3.0, 0.0, 4.0])
    a = np.zeros(3)
    np.add.at(a, [1, 1], 1.0)
    np.testing.assert_array_equal(a, [0.0, 2.0, 0.0])


# ---------------------------------------------------------------- errors

def test_numpy_target_array_is_refused_like_setitem():
    def f(x):
        y = np.zeros(3)
        np.add.at(y, [0, 0, 1], x[:3])  # the line the error names
        return np.sum(y ** 2)

    def g(x):
        y = np.zeros(3)
        y[0] = x[0]
        return np.sum(y ** 2)

    x = RNG.standard_normal(5)
    with pytest.raises(ConcretizationError) as info:
        gradc.grad(f)(x)
    message = str(info.value)
    assert "np.add.at(y, indices, v) where y is a NumPy array" in message
    assert "y = gradc.asarray(y)" in message and "np.zeros_like(x, shape=shape)" in message
    assert "test_ufunc_at.py" in message and "# the line the error names" in message
    with pytest.raises(ConcretizationError):         # as y[i] = x is refused
        gradc.grad(g)(x)

    # the two suggested fixes work
    def fixed_asarray(x):
        y = gradc.asarray(np.zeros(3))
        np.add.at(y, [0, 0, 1], x[:3])
        return np.sum(y ** 2)

    def fixed_zeros_like(x):
        y = np.zeros_like(x, shape=3)
        np.add.at(y, [0, 0, 1], x[:3])
        return np.sum(y ** 2)

    want = _fd_grad(lambda x: _numpy(f, x), (x,), 0)
    for fixed in (fixed_asarray, fixed_zeros_like):
        np.testing.assert_allclose(gradc.grad(fixed)(x), want, rtol=1e-6, atol=1e-8)


def test_numpy_target_with_a_traced_index():
    def f(i, x):
        y = np.zeros(3)
        np.add.at(y, i, 1.0)
        return x * y

    with pytest.raises(ConcretizationError, match="y is a NumPy array"):
        gradc.jit(f)(np.array([0, 1]), 1.0)


def test_other_ufuncs_need_indices_known_when_tracing():
    def f(y, i, v):
        z = y.copy()
        np.multiply.at(z, i, v)  # the line the error names
        return z

    with pytest.raises(UnsupportedError) as info:
        gradc.jit(f)(np.zeros(3), np.array([0, 0]), np.ones(2))
    message = str(info.value)
    assert "np.multiply.at with a traced index array" in message
    assert "make them a NumPy array" in message and "# the line the error names" in message


def test_bad_arguments():
    def wrong_shape(y):
        z = y.copy()
        np.add.at(z, [0, 1, 1], np.ones(2))
        return z

    with pytest.raises(ShapeError, match=r"np.add.at: values of shape \(2,\) do not "
                       r"broadcast to the indexed shape \(3,\)"):
        gradc.jit(wrong_shape)(np.zeros(3))
    with pytest.raises(ValueError):                  # as NumPy
        wrong_shape(np.zeros(3))

    def missing(y):
        z = y.copy()
        np.add.at(z, [0])
        return z

    with pytest.raises(ValueError, match="second operand needed"):     # NumPy's own
        gradc.jit(missing)(np.zeros(3))

    def out_of_bounds(y):
        z = y.copy()
        np.add.at(z, [0, 3], 1.0)
        return z

    with pytest.raises(EvaluationError, match="out of bounds"):     # as z[[0, 3]] = 1.0
        gradc.jit(out_of_bounds)(np.zeros(3))

    def read_only(y):
        z = np.broadcast_to(y, (2, 3))
        np.add.at(z, 0, 1.0)
        return z

    with pytest.raises(ReadOnlyError):
        gradc.jit(read_only)(np.zeros(3))

    def no_rule(y):
        z = y.copy()
        np.gcd.at(z, [0], 2)
        return z

    with pytest.raises(UnsupportedError, match="np.gcd.at is not supported"):
        gradc.jit(no_rule)(np.zeros(3, np.int64))


def test_too_many_rounds():
    def f(y, v):
        z = y.copy()
        np.divide.at(z, np.zeros(65, np.int64), v)  # the line the error names
        return z

    with pytest.raises(UnsupportedError) as info:
        gradc.jit(f)(np.ones(2), np.ones(65))
    assert "np.divide.at: an index repeats 65 times" in str(info.value)
    assert "# the line the error names" in str(info.value)


def test_unary_ufunc_at():
    def f(y):
        z = y.copy()
        np.negative.at(z, [0, 0, 1, 2])       # position 0 negated twice
        np.exp.at(z, [2, 2])
        return z

    # Its own generator: with the module's RNG the draw depends on which tests ran
    # before in the worker, and a y[2] near -2.5 makes exp(exp(-y[2])) ~ 1e5, whose
    # rounding swamps the finite differences of the other entries.
    rng = np.random.default_rng(464)
    y = rng.standard_normal(4)
    np.testing.assert_allclose(gradc.jit(f)(y), _numpy(f, y), rtol=1e-13)
    w = rng.standard_normal(4)
    g = gradc.grad(lambda y: np.sum(w * f(y)))(y)
    # z = (y0, -y1, exp(exp(-y2)), y3) exactly
    inner = np.exp(-y[2])
    exact = np.array([w[0], -w[1], -w[2] * np.exp(inner) * inner, w[3]])
    np.testing.assert_allclose(g, exact, rtol=1e-12)
    np.testing.assert_allclose(g, _fd_grad(lambda y: np.sum(w * _numpy(f, y)), (y,), 0),
                               rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- extrema, traced indices

EXTREMA = ["maximum", "minimum", "fmax", "fmin"]


def _extremum_at(name):
    ufunc = getattr(np, name)

    def f(y, i, v):
        z = y.copy()
        ufunc.at(z, i, v)
        return np.sin(z) * z
    return f


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
@pytest.mark.parametrize("name", EXTREMA)
def test_extrema_with_traced_indices(name, target):
    """np.maximum.at (minimum, fmax, fmin) with index arrays that are arguments: NumPy's
    values, NaNs included (maximum/minimum propagate them, fmax/fmin skip them); the
    gradient against central differences (no ties) and forward mode against reverse."""
    if target == "cuda":
        pytest.importorskip("numba.cuda")
    f = _extremum_at(name)
    rng = np.random.default_rng(EXTREMA.index(name))
    y, v = rng.standard_normal(6), rng.standard_normal(9)
    jf = gradc.jit(f, target=target)
    for i in (np.array([0, 0, -1, 3, 3, 3, 1, -6, 2]), rng.integers(-6, 6, 9)):
        np.testing.assert_allclose(jf(y, i, v), _numpy(f, y, i, v), rtol=1e-13)
        yn, vn = y.copy(), v.copy()
        yn[2], vn[[1, 4]] = np.nan, np.nan
        np.testing.assert_allclose(jf(yn, i, vn), _numpy(f, yn, i, vn), rtol=1e-13)

        w = rng.standard_normal(6)
        loss = lambda y, v: np.sum(w * f(y, i, v))            # noqa: E731
        gy, gv = gradc.grad(lambda y, i, v: np.sum(w * f(y, i, v)), argnums=(0, 2),
                            target=target)(y, i, v)
        np.testing.assert_allclose(gy, _fd_grad(lambda y, v: _numpy(loss, y, v), (y, v), 0),
                                   rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gv, _fd_grad(lambda y, v: _numpy(loss, y, v), (y, v), 1),
                                   rtol=1e-6, atol=1e-8)
        # each element of the result is one of the values: its derivative picks that one
        assert np.count_nonzero(gy) + np.count_nonzero(gv) == np.count_nonzero(w)
        ty, tv = rng.standard_normal(6), rng.standard_normal(9)
        _, jv = gradc.jvp(lambda y, v: f(y, i, v), (y, v), (ty, tv), target=target)
        _, back = gradc.vjp(lambda y, v: f(y, i, v), y, v, target=target)
        uy, uv = back(w)
        assert np.isclose(np.dot(w, jv), np.dot(uy, ty) + np.dot(uv, tv), rtol=1e-12)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_ties_share_the_derivative(target):
    """Values equal to the result share its derivative equally (JAX's ``x.at[i].max``,
    PyTorch's ``scatter_reduce(..., "amax")``); NaN results have none."""
    def f(y, i, v):
        z = y.copy()
        np.maximum.at(z, i, v)
        return z

    y, v = np.array([1.0, -2.0, 0.5, np.nan]), np.array([1.0, 1.0, 0.0, -3.0, 7.0])
    i = np.array([0, 0, 1, 1, 3])
    w = np.array([3.0, 5.0, 7.0, 11.0])
    gy, gv = gradc.grad(lambda y, i, v: np.sum(w * f(y, i, v)), argnums=(0, 2),
                        target=target)(y, i, v)
    # position 0: y and two updates tie at 1 (a third each); 1: the update 0.0 wins;
    # 2: y untouched; 3: NaN (no value equals it)
    np.testing.assert_allclose(gy, [1.0, 0.0, 7.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(gv, [1.0, 1.0, 5.0, 0.0, 0.0], rtol=1e-15)


def test_extrema_with_traced_indices_batch_and_cast():
    """vmap over the array, the indices or both, as a loop over examples; float32 arrays
    keep their dtype (float64 updates are cast first, as NumPy's result is)."""
    def f(y, i, v):
        z = y.copy()
        np.minimum.at(z, i, v)
        return z

    rng = np.random.default_rng(3)
    ys, vs, iss = rng.standard_normal((3, 5)), rng.standard_normal((3, 7)), \
        rng.integers(-5, 5, (3, 7))
    for axes in [(0, 0, 0), (0, None, 0), (None, 0, 0)]:
        args = [a if ax == 0 else a[0] for a, ax in zip((ys, iss, vs), axes)]
        want = np.stack([_numpy(f, *[a[b] if ax == 0 else a for a, ax in zip(args, axes)])
                         for b in range(3)])
        for target in ("numpy", "cpu"):
            got = gradc.jit(gradc.vmap(f, in_axes=axes), target=target)(*args)
            np.testing.assert_array_equal(got, want)
    y32 = ys[0].astype(np.float32)
    for target in ("numpy", "cpu"):
        got = gradc.jit(f, target=target)(y32, iss[0], vs[0])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _numpy(f, y32, iss[0], vs[0]))
        g = gradc.grad(lambda y, i, v: np.sum(f(y, i, v) ** 2), target=target)(
            y32, iss[0], vs[0].astype(np.float32))
        assert g.dtype == np.float32


def test_extrema_at_ties_as_jax_and_pytorch():
    """The tie rule against the peers where installed (JAX's ``x.at[i].max``, PyTorch's
    ``scatter_reduce(..., "amax", include_self=True)``), ties and NaN-free."""
    y = np.array([1.0, -2.0, 0.5, 3.0])
    v = np.array([1.0, 1.0, 0.0, -3.0, 3.0, 0.25])
    i = np.array([0, 0, 1, 1, 3, 2])
    w = np.array([3.0, 5.0, 7.0, 11.0])

    def f(y, i, v):
        z = y.copy()
        np.maximum.at(z, i, v)
        return np.sum(w * z ** 2)
    got = gradc.grad(f, argnums=(0, 2))(y, i, v)
    peers = 0
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        want = jax.grad(lambda y, v: jnp.sum(w * y.at[i].max(v) ** 2), argnums=(0, 1))(y, v)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-14)
        peers += 1
    except ImportError:
        pass
    try:
        import torch
        ty, tv = torch.tensor(y, requires_grad=True), torch.tensor(v, requires_grad=True)
        z = ty.scatter_reduce(0, torch.tensor(i), tv, "amax", include_self=True)
        want = torch.autograd.grad(torch.sum(torch.tensor(w) * z ** 2), (ty, tv))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-14)
        peers += 1
    except ImportError:
        pass
    if not peers:
        pytest.skip("neither JAX nor PyTorch is installed")


def test_extrema_at_one_element_batched_and_integer_updates_of_floats():
    """(Review) A window of one element (v 0-d) under vmap with v not batched: the
    values broadcast over the examples; integer updates of a float32 array go through
    NumPy's loop dtype (float64) first, as NumPy computes them (a direct cast rounds
    2**55 + 2**31 + 1 up where NumPy's two casts round it down)."""
    def f(y, v):
        z = y.copy()
        np.maximum.at(z, 2, v)
        return z

    ys = np.random.default_rng(0).standard_normal((3, 5))
    for axes, v in (((0, None), np.float64(0.3)), ((0, 0), np.array([0.3, -5.0, 9.0]))):
        want = np.stack([_numpy(f, y, v if axes[1] is None else v[k])
                         for k, y in enumerate(ys)])
        for target in ("numpy", "cpu"):
            got = gradc.jit(gradc.vmap(f, in_axes=axes), target=target)(ys, v)
            np.testing.assert_array_equal(got, want)

    def g(y, v, i):
        z = y.copy()
        np.maximum.at(z, i, v)
        return z

    y = np.zeros(2, np.float32)
    v, i = np.array([2 ** 55 + 2 ** 31 + 1, 0], np.int64), np.array([0, 1])
    for target in ("numpy", "cpu"):
        for h in (g, lambda y, v, i: g(y, v, np.array([0, 1]))):
            got = gradc.jit(h, target=target)(y, v, i)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, _numpy(g, y, v, i))
