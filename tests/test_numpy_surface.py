"""The NumPy surface: every ufunc and function gradc registers, traced and differentiated.

For each case we check that

* the traced Graph, evaluated by the reference interpreter, gives NumPy's values
  (shapes and dtypes included);
* reverse mode (``gradc.vjp``) and forward mode (``gradc.jvp``) agree with central
  finite differences along random directions.

``test_tables_are_covered`` fails when a new entry is added to ``numpy_api.UFUNCS`` or
``numpy_api.FUNCTIONS`` without a case here.
"""
import os
import warnings
import zlib

import itertools

import numpy as np
import pytest

import gradc
from gradc import numpy_api

RNG = np.random.default_rng(0)


def rand(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, size=shape)


def pos(*shape):
    return rand(*shape, low=0.5, high=2.0)


# ---------------------------------------------------------------- checkers

def _leaves(x):
    return gradc.pytree.flatten(x)[0]


def _is_float_array(x):
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def check_values(f, *args):
    """The traced graph, run by the interpreter, reproduces NumPy's results."""
    expected = _leaves(f(*args))
    graph = gradc.make_graph(f)(*args)
    dynamic = [np.asarray(a) for a in _leaves(list(args))
               if not isinstance(a, (bool, int, np.integer))]
    got = gradc.eval_graph(graph, dynamic)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g, e = np.asarray(g), np.asarray(e)
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def _fd_jvp(f, args, tangents, eps=1e-6):
    plus = [a + eps * t if t is not None else a for a, t in zip(args, tangents)]
    minus = [a - eps * t if t is not None else a for a, t in zip(args, tangents)]
    return [(np.asarray(p, float) - np.asarray(m, float)) / (2 * eps)
            for p, m in zip(_leaves(f(*plus)), _leaves(f(*minus)))]


def check_grads(f, *args, rtol=1e-5, atol=1e-6):
    """jvp and vjp against central finite differences along random directions."""
    args = list(args)
    wrt = [_is_float_array(a) and not isinstance(a, (bool, int)) for a in args]
    tangents = [rand(*np.shape(a)) if w else None for a, w in zip(args, wrt)]
    numeric = _fd_jvp(f, args, tangents)
    float_out = [_is_float_array(o) for o in _leaves(f(*args))]
    # forward mode
    jvp_tangents = [t if w else np.zeros(np.shape(a)) for a, t, w in zip(args, tangents, wrt)]
    _, tout = gradc.jvp(f, tuple(args), tuple(jvp_tangents))
    for t, n, fl in zip(_leaves(tout), numeric, float_out):
        if fl:
            np.testing.assert_allclose(t, n, rtol=rtol, atol=atol)
    # reverse mode: <u, J t> computed as <J^T u, t>
    out, vjp_fn = gradc.vjp(f, *args)
    outs, treedef = gradc.pytree.flatten(out)
    # (a cotangent has its output's dtype: a float32 result takes a float32 one)
    cts = [rand(*np.shape(o)).astype(np.asarray(o).dtype) if fl
           else np.zeros(np.shape(o), np.asarray(o).dtype) for o, fl in zip(outs, float_out)]
    in_cts = vjp_fn(gradc.pytree.unflatten(treedef, cts))
    lhs = sum(float(np.sum(c * n)) for c, n, fl in zip(cts, numeric, float_out) if fl)
    rhs = sum(float(np.sum(np.asarray(c) * t)) for c, t, w in zip(in_cts, tangents, wrt) if w)
    assert np.isclose(lhs, rhs, rtol=rtol, atol=atol), (lhs, rhs)


def check(f, *args, grads=True, **tol):
    check_values(f, *args)
    if grads:
        check_grads(f, *args, **tol)


# ---------------------------------------------------------------- ufuncs

UNARY = [  # (ufunc, input maker)
    (np.sin, rand), (np.cos, rand), (np.tan, rand),
    (np.arcsin, lambda *s: rand(*s, low=-0.9, high=0.9)),
    (np.arccos, lambda *s: rand(*s, low=-0.9, high=0.9)),
    (np.arctan, rand), (np.sinh, rand), (np.cosh, rand), (np.tanh, rand),
    (np.arcsinh, rand), (np.arccosh, lambda *s: rand(*s, low=1.2, high=3.0)),
    (np.arctanh, lambda *s: rand(*s, low=-0.9, high=0.9)),
    (np.exp, rand), (np.exp2, rand), (np.expm1, rand), (np.log, pos), (np.log2, pos),
    (np.log10, pos), (np.log1p, pos), (np.sqrt, pos), (np.cbrt, pos), (np.square, rand),
    (np.reciprocal, pos), (np.negative, rand), (np.positive, rand), (np.absolute, rand),
    (np.fabs, rand), (np.sign, rand), (np.deg2rad, rand), (np.rad2deg, rand),
    (np.radians, rand), (np.degrees, rand),
    # piecewise constant: zero derivative away from the jumps
    (np.floor, lambda *s: rand(*s, low=0.1, high=0.9)),
    (np.ceil, lambda *s: rand(*s, low=0.1, high=0.9)),
    (np.rint, lambda *s: rand(*s, low=0.1, high=0.4)),
    (np.trunc, lambda *s: rand(*s, low=0.1, high=0.9)),
]

BINARY = [  # (ufunc, first input maker, second input maker)
    (np.add, rand, rand), (np.subtract, rand, rand), (np.multiply, rand, rand),
    (np.divide, rand, pos), (np.power, pos, rand), (np.float_power, pos, rand),
    (np.maximum, rand, rand), (np.minimum, rand, rand), (np.fmax, rand, rand),
    (np.fmin, rand, rand), (np.arctan2, rand, rand), (np.hypot, rand, rand),
    (np.logaddexp, rand, rand), (np.logaddexp2, rand, rand),
    (np.remainder, lambda *s: rand(*s, low=0.1, high=0.9), lambda *s: rand(*s, low=1, high=2)),
    (np.floor_divide, lambda *s: rand(*s, low=0.1, high=0.9), lambda *s: rand(*s, low=1, high=2)),
    (np.heaviside, rand, rand),
]

COMPARE = [np.less, np.less_equal, np.greater, np.greater_equal, np.equal, np.not_equal]
LOGICAL = [np.logical_and, np.logical_or, np.logical_xor, np.bitwise_and, np.bitwise_or,
           np.bitwise_xor]


@pytest.mark.parametrize("ufunc,make", UNARY, ids=lambda u: getattr(u, "__name__", ""))
def test_unary_ufunc(ufunc, make):
    check(lambda x: ufunc(x), make(3, 4))
    check(lambda x: ufunc(x), make())                    # 0-d


@pytest.mark.parametrize("ufunc,make_x,make_y", BINARY, ids=lambda u: getattr(u, "__name__", ""))
def test_binary_ufunc(ufunc, make_x, make_y):
    check(lambda x, y: ufunc(x, y), make_x(3, 4), make_y(3, 4))
    check(lambda x, y: ufunc(x, y), make_x(2, 1, 4), make_y(3, 1))   # broadcasting
    check(lambda x: ufunc(x, 0.7), make_x(5))                          # Python float
    c = make_x()
    check(lambda y: ufunc(c, y), make_y(2, 3))                         # 0-d array first


def test_heaviside_at_zero_takes_h0():
    x = np.array([-1.0, 0.0, 2.0])
    check(lambda h: np.heaviside(x, h), np.array([0.3, 0.6, 0.9]))


@pytest.mark.parametrize("ufunc", COMPARE, ids=lambda u: u.__name__)
def test_comparison(ufunc):
    x = rand(3, 4)
    y = x.copy()
    y[0] = rand(4)
    check(lambda x, y: ufunc(x, y), x, y, grads=False)
    # used to select, a comparison differentiates through np.where (away from ties)
    y = x + np.where(rand(3, 4) > 0, 0.5, -0.5)
    check(lambda x, y: np.where(ufunc(x, y), x * y, np.sin(x)), x, y)


@pytest.mark.parametrize("ufunc", LOGICAL, ids=lambda u: u.__name__)
def test_logical(ufunc):
    check(lambda x, y: ufunc(x > 0, y > 0), rand(6), rand(6), grads=False)


def test_logical_not_invert_isnan_isfinite():
    x = np.array([1.0, -2.0, np.inf, np.nan, 0.0])
    check(lambda x: np.logical_not(x > 0), x, grads=False)
    check(lambda x: ~(x > 0), x, grads=False)
    check(lambda x: np.isnan(x), x, grads=False)
    check(lambda x: np.isfinite(x), x, grads=False)


def test_bitwise_on_floats_is_rejected():
    x = rand(3)
    for f in (lambda x: np.bitwise_and(x, x), lambda x: ~x, lambda x: x << 1):
        with pytest.raises(gradc.DTypeError, match="needs integer or boolean operands"):
            gradc.make_graph(f)(x)


I64 = np.iinfo(np.int64)


def _integers(a, b, s, a8, b8, u8, ua, ub):
    """Floor division, remainders, bits and shifts at NumPy's edges: x // 0 and x % 0
    are 0, INT_MIN // -1 wraps, shifts by the width or more (or a negative count) give
    0, or -1 for a right shift of a negative number; int8 wraps, uint8 too; uint64
    keeps all 64 bits (a review found % and << going through float64)."""
    return (a // b, a % b, np.divmod(a, b), a & b, a | b, a ^ b, ~a, a << s, a >> s,
            1 << s[:3], a8 // b8, a8 % b8, a8 << 5, a8 >> 9, ~a8, a8 ^ b8,
            u8 // 3, u8 << 4, ~u8, u8 >> 10, ua % ub, ua // ub, ua << (ub % 70), ua >> 3)


def integer_inputs():
    return (np.array([7, -7, 5, 0, -9, I64.min, I64.max, 12345, -1, 64]),
            np.array([2, 2, 0, 0, -2, -1, 3, -100, 7, 5]),
            np.array([0, 1, 63, 64, 65, -1, 200, 3, 62, 2]),
            np.array([100, -100, -128, 127, 3, -1, 0, 55, -7, 9], np.int8),
            np.array([3, -3, -1, 0, 7, 2, 5, -6, 0, 1], np.int8),
            np.array([0, 1, 255, 128, 200, 17, 3, 99, 250, 7], np.uint8),
            # (above 2**53: a float64 on the way would round them)
            np.array([2**63 + 1, 2**64 - 3, 5, 7, 0, 1, 2**64 - 1, 3, 99, 2**60], np.uint64),
            np.array([2**64 - 1, 2**64 - 1, 0, 2, 3, 1, 2**62 + 1, 64, 70, 5], np.uint64))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_integer_division_bits_and_shifts_as_numpy(target):
    """(The CUDA kernels also go through NVVM: ``test_cuda.test_kernels_compile_to_ptx``.)"""
    import warnings
    args = integer_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # NumPy's x // 0 warnings
        want = gradc.pytree.flatten(_integers(*args))[0]
        got = gradc.pytree.flatten(gradc.jit(_integers, target=target)(*args))[0]
    for k, (g, w) in enumerate(zip(got, want)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else g
        assert np.asarray(g).dtype == w.dtype, k
        np.testing.assert_array_equal(g, w, err_msg=f"output {k}")


def test_random_einsums_with_repeated_and_broadcast_indices_as_numpy():
    """200 random one- and two-operand specs over i, j, k (indices repeated within an
    operand anywhere, ``'iij->j'``, ``'k,kik->'``; an index of extent 1 in one operand
    broadcasting, ``'ij,j->ij'``): values as NumPy's, gradients against the spec's
    own transpose by NumPy (``einsum`` is linear in each operand)."""
    r = np.random.default_rng(12)
    sizes = dict(zip("ijk", [2, 3, 4]))
    for trial in range(200):
        terms = ["".join(r.choice(list("ijk"), int(r.integers(1, 4))))
                 for _ in range(int(r.integers(1, 3)))]
        letters = sorted(set("".join(terms)))
        out = "".join(r.permutation(letters)[:int(r.integers(0, len(letters) + 1))])
        spec = ",".join(terms) + "->" + out
        xs = [r.uniform(-1, 1, tuple(sizes[c] for c in t)) for t in terms]
        if len(xs) == 2 and trial % 4 == 0:        # (one index of extent 1 in operand 2)
            shape = list(xs[1].shape)
            shape[int(r.integers(len(shape)))] = 1
            xs[1] = r.uniform(-1, 1, tuple(shape))
        try:
            want = np.einsum(spec, *xs)
        except ValueError:                  # (NumPy refuses it too: a repeated index)
            continue
        got = gradc.jit(lambda *a: np.einsum(spec, *a), target="numpy")(*xs)
        assert np.shape(got) == want.shape, spec
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=spec)
        w = r.uniform(-1, 1, want.shape)
        g = gradc.grad(lambda a: np.sum(np.einsum(spec, a, *xs[1:]) * w),
                       target="numpy")(xs[0])
        eye = np.eye(xs[0].size).reshape((xs[0].size,) + xs[0].shape)
        ref = np.array([np.sum(np.einsum(spec, e, *xs[1:]) * w) for e in eye])
        np.testing.assert_allclose(g.ravel(), ref, rtol=1e-12, atol=1e-12, err_msg=spec)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_pad_with_a_traced_constant(target):
    """(QA) a learned padding value, ``constant_values=x[3]``, was a ConcretizationError
    blaming the user's code; it is a select, differentiated in the value too."""
    def f(x):
        return np.sum(np.pad(x[:3], 2, constant_values=x[3]) ** 2)
    x = np.arange(1.0, 5.0)
    assert gradc.jit(f, target=target)(x) == f(x) == 78.0
    np.testing.assert_allclose(gradc.grad(f, target=target)(x), [2.0, 4.0, 6.0, 32.0])

    def g(x):                       # (a float64 value into a float32 array: cast, as NumPy)
        return np.pad(x[:3].astype(np.float32), (1, 2), constant_values=x[3] / 3)
    got = gradc.jit(g, target=target)(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, g(x))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_pad_modes_of_any_width_as_numpy(target):
    """``np.pad``'s copying modes at widths up to three times the axis (wider than the
    axis was refused for wrap and reflect, and symmetric was missing): values as
    NumPy's, gradients the sum of each element's copies' cotangents."""
    x = np.arange(1.0, 13.0).reshape(3, 4)
    r = np.random.default_rng(2)
    for mode in ("symmetric", "wrap", "reflect", "edge"):
        widths = ((1, 2), ((5, 1), (0, 9)), 2, ((0, 0), (3, 0)))
        for width in widths if target == "numpy" else widths[1:2]:    # (compiles)
            def f(x, mode=mode, width=width):
                return np.pad(x, width, mode=mode)
            want = f(x)
            np.testing.assert_array_equal(gradc.jit(f, target=target)(x), want)
            w = r.standard_normal(want.shape)
            ref = np.zeros(x.size)
            np.add.at(ref, f(np.arange(x.size).reshape(x.shape)).ravel(), w.ravel())
            got = gradc.grad(lambda x: np.sum(f(x) * w), target=target)(x)
            np.testing.assert_allclose(got.ravel(), ref, rtol=1e-14, atol=1e-14)


def test_every_basic_slice_as_numpy():
    """Every slice of an axis of 4 with starts and stops from -7 to 6 (and None), steps
    +-1..3: read, assigned and differentiated as NumPy does.  A negative step with a
    start before the first element is empty (``[-5::-2]``), which the canonical form
    once read as starting at the last element."""
    x = np.arange(1.0, 5.0)
    bounds = [None] + list(range(-7, 7))
    for start, stop, step in itertools.product(bounds, bounds, (1, 2, 3, -1, -2, -3)):
        s = slice(start, stop, step)
        ref = x[s]
        np.testing.assert_array_equal(gradc.jit(lambda a: a[s] * 2.0, target="numpy")(x),
                                      ref * 2.0, err_msg=str(s))

        def put(a):
            b = a.copy()
            b[s] = b[s] * 10.0
            return b
        np.testing.assert_array_equal(gradc.jit(put, target="numpy")(x), put(x),
                                      err_msg=str(s))
        w = np.arange(1.0, 1.0 + ref.size)
        want = np.zeros(4)
        want[s] = w
        np.testing.assert_array_equal(
            gradc.grad(lambda a: np.sum(a[s] * w), target="numpy")(x), want, err_msg=str(s))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_empty_slices_with_negative_steps_on_every_target(target):
    slices = (slice(-5, None, -2), slice(-5, None, -1), slice(-7, 2, -1), slice(-5, -9, -1),
              slice(None, -6, -2), slice(10, None, -1))

    def f(a):
        b = a.copy()
        b[slices[1]] = 7.0
        return [a[s] * 2.0 for s in slices] + [b]
    x = np.arange(1.0, 5.0)
    for g, w in zip(gradc.jit(f, target=target)(x), f(x)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else g
        assert np.shape(g) == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_float_floor_division_is_numpys_exact_one(target):
    """np.floor_divide of floats is exact (1.0 // 0.1 is 9.0, where floor(1.0 / 0.1) is
    10.0), x // 0 is x / 0, a zero quotient keeps its sign; its derivative is zero.  The
    remainder too, bit for bit: a zero remainder has the divisor's sign (1.0 % -1.0 is
    -0.0), an infinite divisor of the other sign gives it (-1.0 % inf is inf)."""
    import warnings
    x = np.array([1.0, -7.5, 5.0, 0.3, 9.0, -3.0, 1e300, 7.0, -0.0, 0.0, 0.5, -0.5, 2.9,
                  1.0, -1.0, 0.0, -0.0, -1.0, 1.0, -5.0, 6.0, np.inf, np.nan])
    y = np.array([0.1, 2.0, 0.0, -0.1, -3.0, 0.0, 1e-300, np.inf, 3.0, 0.0, -np.inf, 3.0, 0.1,
                  -1.0, 1.0, -1.0, 1.0, np.inf, -np.inf, -np.inf, -3.0, 2.0, 1.0])
    for dtype in (np.float64, np.float32):
        xd, yd = x.astype(dtype), y.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = (np.floor_divide(xd, yd), np.remainder(xd, yd))
            got = gradc.jit(lambda x, y: (x // y, x % y), target=target)(xd, yd)
        for g, w in zip(got, want):
            g = g.copy_to_host() if hasattr(g, "copy_to_host") else g
            assert g.dtype == dtype
            np.testing.assert_array_equal(g, w)
            number = ~np.isnan(w)                   # (a NaN's sign bit means nothing)
            np.testing.assert_array_equal(np.signbit(g[number]), np.signbit(w[number]))
    g = gradc.grad(lambda x: np.sum(x // 0.1 + x), target=target)(x[:5])
    np.testing.assert_array_equal(g, np.ones(5))


def test_matmul_ufunc_and_operator():
    a, b = rand(3, 4), rand(4, 2)
    check(lambda a, b: np.matmul(a, b), a, b)
    check(lambda a, b: a @ b, a, b)
    check(lambda a, b: a @ b, rand(2, 3, 4), rand(4, 5))        # batched, broadcast
    check(lambda a, b: a @ b, rand(2, 1, 3, 4), rand(5, 4, 2))  # batch dims broadcast
    check(lambda a, b: a @ b, rand(4), rand(4, 3))              # 1-d on the left
    check(lambda a, b: a @ b, rand(3, 4), rand(4))              # 1-d on the right
    check(lambda a, b: a @ b, rand(4), rand(4))                 # 1-d · 1-d
    check(lambda a, b: a @ b, rand(4), rand(2, 4, 3))           # 1-d with a batch
    check(lambda a, b: b.T @ a, rand(4, 2), b)                  # constant on the left


def test_operators():
    x, y = rand(3, 4), pos(3, 4)
    check(lambda x, y: (x + y, x - y, x * y, x / y, y ** x, x ** 2, -x, +x, abs(x)), x, y)
    check(lambda x, y: (2.0 - x, 3.0 / y, 2.0 ** x, 1 + x, x // 1.5, x % 0.7), x, y)
    check(lambda x, y: (x < y, x <= y, x > y, x >= y, x == x, x != y), x, y, grads=False)


# ---------------------------------------------------------------- functions

def _aug(x):
    """Makes a well-conditioned matrix from a random one."""
    return x + 3.0 * np.eye(x.shape[-1])


FUNCTION_CASES = {
    np.sum: [lambda x: np.sum(x, where=x > 0),
             lambda x: np.sum(x, axis=1, where=[True, False, True, True]),
             lambda x: np.sum(x), lambda x: np.sum(x, axis=0),
             lambda x: np.sum(x, 1, keepdims=True),
             lambda x: np.sum(x, axis=(0, 1)), lambda x: np.sum(x, axis=-1),
             lambda x: np.sum(x > 0), lambda x: np.sum(x, initial=1.5)],
    np.mean: [lambda x: np.mean(x, where=x > 0),     # (no column without a True entry:)
              lambda x: np.mean(x, axis=0, where=x > np.min(x, axis=0)),
              lambda x: np.mean(x), lambda x: np.mean(x, axis=1),
              lambda x: np.mean(x, axis=0, keepdims=True)],
    np.var: [lambda x: np.var(x), lambda x: np.var(x, axis=0), lambda x: np.var(x, 1, ddof=1),
             lambda x: np.var(x, axis=1, keepdims=True)],
    np.std: [lambda x: np.std(x), lambda x: np.std(x, axis=1), lambda x: np.std(x, ddof=1)],
    np.max: [lambda x: np.max(x, where=x < 0.5, initial=-2.0), lambda x: np.max(x),
             lambda x: np.max(x, axis=0), lambda x: np.max(x, 1, keepdims=True)],
    np.amax: [lambda x: np.amax(x, axis=1)],
    np.min: [lambda x: np.min(x), lambda x: np.min(x, axis=1),
             lambda x: np.min(x, 0, keepdims=True)],
    np.amin: [lambda x: np.amin(x, axis=0)],
    np.prod: [lambda x: np.prod(x, where=x > 0), lambda x: np.prod(x), lambda x: np.prod(x, axis=0),
              lambda x: np.prod(x, axis=1, keepdims=True)],
    np.any: [lambda x: np.any(x > 0.5, where=x < 0.9), lambda x: np.any(x > 0.5),
             lambda x: np.any(x > 0.5, axis=1)],
    np.all: [lambda x: np.all(x > -0.5), lambda x: np.all(x > -0.5, axis=0, keepdims=True)],
    np.argmax: [lambda x: np.argmax(x), lambda x: np.argmax(x, axis=1),
                lambda x: np.argmax(x, axis=-1, keepdims=True),
                lambda x: np.argmax(x, keepdims=True), lambda x: x.argmax(0, keepdims=True)],
    np.argmin: [lambda x: np.argmin(x), lambda x: np.argmin(x, axis=0),
                lambda x: np.argmin(x, axis=0, keepdims=True)],
    np.cumsum: [lambda x: np.cumsum(x), lambda x: np.cumsum(x, axis=0),
                lambda x: np.cumsum(x, axis=1)],
    np.average: [lambda x: np.average(x), lambda x: np.average(x, axis=0),
                 lambda x: np.average(x, axis=1, weights=x * x + 1.0),
                 lambda x: np.average(x, axis=1, weights=np.array([1.0, 2.0, 3.0, 4.0])),
                 lambda x: np.average(x, axis=-2, weights=x[:, 0] ** 2 + 1, keepdims=True),
                 lambda x: np.average(x, axis=0, weights=x[:, 1] + 2, returned=True),
                 lambda x: np.average(x, axis=1, returned=True)],
    np.where: [lambda x: np.where(x > 0, x, -2.0 * x), lambda x: np.where(x > 0, np.sin(x), 1.0),
               lambda x: np.where(x[0] > 0, x, x[1])],
    np.clip: [lambda x: np.clip(x, -0.5, 0.5), lambda x: np.clip(x, None, 0.3),
              lambda x: np.clip(x, x[0], 0.7), lambda x: x.clip(min=-0.2)],
    np.round: [lambda x: np.round(x * 3.0 + 0.25), lambda x: np.round(x, 1)],
    np.around: [lambda x: np.around(x, 2)],
    np.sinc: [lambda x: np.sinc(x), lambda x: np.sinc(x * 0.0)],
    np.isclose: [lambda x: np.isclose(x, x + 1e-9)],
    np.allclose: [lambda x: np.allclose(x, x * 1.5)],
    np.reshape: [lambda x: np.reshape(x, (4, 3)), lambda x: np.reshape(x, -1),
                 lambda x: np.reshape(x, (2, -1)), lambda x: x.reshape(2, 6),
                 lambda x: x.reshape((-1, 2, 2)), lambda x: np.reshape(x, (1, 12, 1))],
    np.ravel: [lambda x: np.ravel(x), lambda x: x.ravel(), lambda x: x.flatten()],
    np.transpose: [lambda x: np.transpose(x), lambda x: x.T, lambda x: x.transpose(1, 0),
                   lambda x: np.transpose(x[None], (2, 0, 1))],
    np.swapaxes: [lambda x: np.swapaxes(x, 0, 1), lambda x: x[None].swapaxes(0, 2)],
    np.moveaxis: [lambda x: np.moveaxis(x[None], 0, -1),
                  lambda x: np.moveaxis(x[None], [0, 1], [2, 0])],
    np.squeeze: [lambda x: np.squeeze(x[None, :, None]), lambda x: np.squeeze(x[None], axis=0),
                 lambda x: x[:, None].squeeze(1)],
    np.expand_dims: [lambda x: np.expand_dims(x, 0), lambda x: np.expand_dims(x, -1),
                     lambda x: np.expand_dims(x, (0, 2))],
    np.atleast_1d: [lambda x: np.atleast_1d(x[0, 0]), lambda x: np.atleast_1d(x)],
    np.atleast_2d: [lambda x: np.atleast_2d(x[0]), lambda x: np.atleast_2d(x)],
    np.broadcast_to: [lambda x: np.broadcast_to(x, (2, 3, 4)),
                      lambda x: np.broadcast_to(x[0, 0], (5,)),
                      lambda x: np.broadcast_to(x[:, :1], (3, 4))],
    np.concatenate: [lambda x: np.concatenate([x, x * 2.0]),
                     lambda x: np.concatenate([x, x[:, :2]], axis=1),
                     lambda x: np.concatenate([x, np.ones((1, 4))], axis=0),
                     lambda x: np.concatenate([x, x[:2]], axis=None)],
    np.stack: [lambda x: np.stack([x, x ** 2]), lambda x: np.stack([x[0], x[1]], axis=1),
               lambda x: np.stack([x, x], axis=-1), lambda x: np.stack([x[0, 0], 2.0, x[1, 1]])],
    np.hstack: [lambda x: np.hstack([x, x]), lambda x: np.hstack([x[0], x[1, :2]])],
    np.vstack: [lambda x: np.vstack([x, x[0]])],
    np.column_stack: [lambda x: np.column_stack([x[0], x[1]]),
                      lambda x: np.column_stack([x, x[:, 0]])],
    np.flip: [lambda x: np.flip(x), lambda x: np.flip(x, 0), lambda x: np.flip(x, axis=1)],
    np.fliplr: [lambda x: np.fliplr(x)],
    np.flipud: [lambda x: np.flipud(x)],
    np.roll: [lambda x: np.roll(x, 1), lambda x: np.roll(x, -2, axis=1),
              lambda x: np.roll(x, (1, 3), axis=(0, 1)), lambda x: np.roll(x, 5, axis=0)],
    np.tile: [lambda x: np.tile(x, 2), lambda x: np.tile(x, (2, 1)),
              lambda x: np.tile(x[0], (3, 2))],
    np.repeat: [lambda x: np.repeat(x, 2), lambda x: np.repeat(x, 3, axis=1),
                lambda x: np.repeat(x, [1, 0, 2], axis=0), lambda x: x.repeat(2, axis=0)],
    np.take: [lambda x: np.take(x, [0, 2, 2]), lambda x: np.take(x, [3, 0], axis=1),
              lambda x: x.take(np.array([[1, 0], [2, 2]]), axis=0)],
    np.diagonal: [lambda x: np.diagonal(x), lambda x: np.diagonal(x, 1),
                  lambda x: np.diagonal(x, -1),
                  lambda x: x.diagonal()],
    np.diag: [lambda x: np.diag(x), lambda x: np.diag(x, 1), lambda x: np.diag(x[0]),
              lambda x: np.diag(x[0], -1), lambda x: np.diag(x[1], 2)],
    np.trace: [lambda x: np.trace(x), lambda x: np.trace(x, 1), lambda x: x.trace()],
    np.tril: [lambda x: np.tril(x), lambda x: np.tril(x, -1), lambda x: np.tril(x, 1)],
    np.triu: [lambda x: np.triu(x), lambda x: np.triu(x, 1), lambda x: np.triu(x[None], -1)],
    np.zeros_like: [lambda x: np.zeros_like(x) + x],
    np.empty_like: [lambda x: np.empty_like(x).shape == x.shape],
    np.ones_like: [lambda x: np.ones_like(x) * x, lambda x: np.ones_like(x, dtype=np.float32)],
    np.full_like: [lambda x: np.full_like(x, 2.5) * x, lambda x: np.full_like(x, x[0, 0])],
    np.copy: [lambda x: np.copy(x), lambda x: x.copy()],
    np.shape: [lambda x: np.reshape(x, np.shape(x)[::-1])],
    np.ndim: [lambda x: x * np.ndim(x)],
    np.size: [lambda x: x / np.size(x), lambda x: x * np.size(x, 1)],
    np.result_type: [lambda x: x.astype(np.result_type(x, np.float32))],
    np.dot: [lambda x: np.dot(x, x.T), lambda x: np.dot(x[0], x[1]), lambda x: np.dot(x, x[0]),
             lambda x: np.dot(x, 2.0), lambda x: x.dot(x[1]),
             lambda x: np.dot(np.stack([x, x * x]), x.T)],
    np.vdot: [lambda x: np.vdot(x, x * x)],
    np.inner: [lambda x: np.inner(x, x), lambda x: np.inner(x[0], x[1])],
    np.outer: [lambda x: np.outer(x[0], x[1]), lambda x: np.outer(x, x[0])],
    np.tensordot: [lambda x: np.tensordot(x, x, 2), lambda x: np.tensordot(x, x.T, axes=1),
                   lambda x: np.tensordot(x, x, axes=([1], [1]))],
    np.einsum: [lambda x: np.einsum("ij,kj->ik", x, x), lambda x: np.einsum("ij,ij", x, x),
                lambda x: np.einsum("ij->ji", x), lambda x: np.einsum("ij", x),
                lambda x: np.einsum("ij,jk", x, x.T), lambda x: np.einsum("ii", x[:, :3]),
                lambda x: np.einsum("ii->i", x[:, :3]), lambda x: np.einsum("...j,j->...", x, x[0]),
                lambda x: np.einsum("i...,i->...", x, x[:, 0]),
                lambda x: np.einsum("ij,ij,ij->i", x, x, x),
                lambda x: np.einsum("bi,bj->bij", x, x), lambda x: np.einsum("ij->", x),
                lambda x: np.einsum("ij, jk -> ik", x, np.ones((4, 2))),
                lambda x: np.einsum("...ij,...jk->...ik", x[None], x.T[None])],
    np.linalg.solve: [lambda x: np.linalg.solve(_aug(x[:, :3]), x[:, 3]),
                      lambda x: np.linalg.solve(_aug(x[:, :3]), x[:, 1:]),
                      lambda x: np.linalg.solve(np.stack([_aug(x[:, :3]), _aug(x[:, 1:])]),
                                                x[:, 0]),
                      lambda x: np.linalg.solve(np.stack([_aug(x[:, :3])] * 2), x[None, :, :2])],
    np.linalg.inv: [lambda x: np.linalg.inv(_aug(x[:, :3])),
                    lambda x: np.linalg.inv(np.stack([_aug(x[:, :3]), _aug(x[:, 1:])]))],
    np.linalg.det: [lambda x: np.linalg.det(_aug(x[:, :3])), lambda x: np.linalg.det(x[:, :3]),
                    lambda x: np.linalg.det(np.stack([_aug(x[:, :3]), x[:, 1:]]))],
    np.linalg.cholesky: [lambda x: np.linalg.cholesky(_aug(x[:, :3] @ x[:, :3].T)),
                         lambda x: np.linalg.cholesky(_aug(x[:, :3] @ x[:, :3].T), upper=True)],
    np.linalg.eigh: [lambda x: np.linalg.eigh(_aug(x[:, :3] + x[:, :3].T))[0],
                     lambda x: np.linalg.eigh(_aug(x[:, :3] + x[:, :3].T), UPLO="U")[0]],
    np.linalg.eigvalsh: [lambda x: np.linalg.eigvalsh(_aug(x[:, :3] + x[:, :3].T))],
    np.linalg.svd: [lambda x: np.linalg.svd(x, compute_uv=False),
                    lambda x: np.linalg.svd(x, full_matrices=False)[1]],
    np.linalg.qr: [lambda x: np.linalg.qr(x), lambda x: np.linalg.qr(x.T),
                   lambda x: np.linalg.qr(x[:, :3], mode="complete").Q,
                   lambda x: np.linalg.qr(x, mode="r"),
                   lambda x: np.linalg.qr(np.stack([x.T, x.T ** 2 + 1.0])).R],
    np.linalg.slogdet: [lambda x: np.linalg.slogdet(x[:, :3]),
                        lambda x: np.linalg.slogdet(-_aug(x[:, :3]))[1]],
    np.diff: [lambda x: np.diff(x), lambda x: np.diff(x, axis=0), lambda x: np.diff(x, n=2),
              lambda x: np.diff(x, prepend=0.5), lambda x: np.diff(x, append=x[:, :1])],
    np.ediff1d: [lambda x: np.ediff1d(x),
                 lambda x: np.ediff1d(x[0], to_begin=x[1, :1], to_end=[2.0])],
    np.pad: [lambda x: np.pad(x, 1), lambda x: np.pad(x, ((0, 1), (2, 0)), constant_values=1.5),
             lambda x: np.pad(x, 2, mode="edge"), lambda x: np.pad(x, (1, 2), mode="reflect"),
             lambda x: np.pad(x, ((2, 0), (3, 1)), mode="reflect"),
             lambda x: np.pad(x, 1, mode="wrap")],
    np.split: [lambda x: np.split(x, 2, axis=1), lambda x: np.split(x, [1, 2])],
    np.array_split: [lambda x: np.array_split(x, 3, axis=1), lambda x: np.array_split(x, 2)],
    np.append: [lambda x: np.append(x, x[0]), lambda x: np.append(x, x[:1], axis=0)],
    np.ptp: [lambda x: np.ptp(x), lambda x: np.ptp(x, axis=1)],
    np.nonzero: [lambda x: x[np.nonzero(x > 0)] * 2.0, lambda x: np.nonzero(x)[1] * 1.0],
    np.flatnonzero: [lambda x: np.ravel(x)[np.flatnonzero(x > 0)] ** 2],
    np.argwhere: [lambda x: np.argwhere(x > 0) * 1.0],
    np.count_nonzero: [lambda x: np.count_nonzero(x > 0),
                       lambda x: np.count_nonzero(x > 0, axis=0)],
    np.select: [lambda x: np.select([x > 0.3, x < -0.3], [x ** 2, np.sin(x)], 0.1)],
    np.real: [lambda x: np.real(x), lambda x: x.real],
    np.imag: [lambda x: np.imag(x) + x, lambda x: x.imag + x],
    np.conjugate: [lambda x: np.conj(x), lambda x: x.conj(), lambda x: x.conjugate()],
    np.cross: [lambda x: np.cross(x[0, :3], x[1, 1:]), lambda x: np.cross(x[:, :3], x[0, 1:])],
    np.kron: [lambda x: np.kron(x, x[:2, :2]), lambda x: np.kron(x[0], x[1])],
    np.trapezoid: [lambda x: np.trapezoid(x), lambda x: np.trapezoid(x, dx=0.5, axis=0),
                   lambda x: np.trapezoid(x, x=np.array([0.0, 0.5, 1.5, 3.0]))],
    np.polyval: [lambda x: np.polyval(x[0], x[1]), lambda x: np.polyval([1.0, -2.0, 0.5], x)],
    np.polyfit: [lambda x: np.polyfit(x[0], x[1], 2), lambda x: np.polyfit(x[0], x.T, 1),
                 lambda x: np.polyfit(x[0], x[1], 2, w=x[2] ** 2 + 1.0),
                 lambda x: np.polyfit(x[0], x[1:].T, 1, cov=True),
                 lambda x: np.polyfit(x[0], x[1], 1, full=True)[:2]],
    np.linalg.multi_dot: [lambda x: np.linalg.multi_dot([x, x.T, x])],
    np.linalg.matrix_power: [lambda x: np.linalg.matrix_power(x[:, :3], 3),
                             lambda x: np.linalg.matrix_power(_aug(x[:, :3]), -2),
                             lambda x: np.linalg.matrix_power(x[:, :3], 0)],
    np.nan_to_num: [lambda x: np.nan_to_num(np.log(x)),
                    lambda x: np.nan_to_num(x * 2.0, posinf=5.0)],
    np.isinf: [lambda x: np.isinf(x / (x > 0))],
    np.linalg.norm: [lambda x: np.linalg.norm(x), lambda x: np.linalg.norm(x[0]),
                     lambda x: np.linalg.norm(x, axis=1), lambda x: np.linalg.norm(x, "fro"),
                     lambda x: np.linalg.norm(x[0], 1), lambda x: np.linalg.norm(x[0], np.inf),
                     lambda x: np.linalg.norm(x[0], 3), lambda x: np.linalg.norm(x[0], -np.inf),
                     lambda x: np.linalg.norm(x, 1), lambda x: np.linalg.norm(x, np.inf),
                     lambda x: np.linalg.norm(x, axis=0, keepdims=True),
                     lambda x: np.linalg.norm(x, ord=2, axis=1), lambda x: np.linalg.norm(x, 2),
                     lambda x: np.linalg.norm(x, "nuc"), lambda x: np.linalg.norm(x, -2),
                     lambda x: np.linalg.norm(x, -1), lambda x: np.linalg.norm(x, -np.inf),
                     lambda x: np.linalg.norm(x[None], 2, axis=(2, 1), keepdims=True),
                     lambda x: np.linalg.norm(np.round(x[0]), 0),
                     # (axes out of order: rows, then columns, as given; QA found
                     # ord 1 and inf swapped)
                     lambda x: np.linalg.norm(x, 1, axis=(1, 0)),
                     lambda x: np.linalg.norm(x, -1, axis=(-1, -2)),
                     lambda x: np.linalg.norm(x[None], np.inf, axis=(2, 1), keepdims=True),
                     lambda x: np.linalg.norm(x, -np.inf, axis=(1, 0))],
    np.linalg.vector_norm: [lambda x: np.linalg.vector_norm(x),
                            lambda x: np.linalg.vector_norm(x, axis=(0, 1), ord=3),
                            lambda x: np.linalg.vector_norm(x, axis=1, keepdims=True, ord=1)],
    np.linalg.matrix_norm: [lambda x: np.linalg.matrix_norm(x),
                            lambda x: np.linalg.matrix_norm(np.stack([x, 2 * x]), ord="nuc")],
    np.linalg.svdvals: [lambda x: np.linalg.svdvals(x),
                        lambda x: np.linalg.svdvals(np.stack([x, x[::-1] ** 2]))],
    np.linalg.cond: [lambda x: np.linalg.cond(x), lambda x: np.linalg.cond(x, -2),
                     lambda x: np.linalg.cond(_aug(x[:, :3]), "fro"),
                     lambda x: np.linalg.cond(_aug(x[:, 1:]), 1)],
    np.linalg.matrix_rank: [lambda x: np.linalg.matrix_rank(x) * x,
                            lambda x: np.linalg.matrix_rank(x[:, :1] * x[:1])],
    np.linalg.pinv: [lambda x: np.linalg.pinv(x), lambda x: np.linalg.pinv(x.T),
                     lambda x: np.linalg.pinv(np.stack([x, x + 1.0]))],
    np.linalg.lstsq: [lambda x: np.linalg.lstsq(x.T, x[0])[:2],
                      lambda x: np.linalg.lstsq(x, x[:, :2] ** 2, rcond=None)[0]],
    np.linalg.tensorinv: [lambda x: np.linalg.tensorinv(np.kron(_aug(x[:, :3]), np.eye(2))
                                                        .reshape(3, 2, 3, 2))],
    np.linalg.tensorsolve: [lambda x: np.linalg.tensorsolve(
        np.kron(_aug(x[:, :3]), np.eye(2)).reshape(3, 2, 6), x[:, :2])],
    np.linalg.outer: [lambda x: np.linalg.outer(x[0], x[1])],
    np.linalg.diagonal: [lambda x: np.linalg.diagonal(x[None], offset=1)],
    np.linalg.trace: [lambda x: np.linalg.trace(x[None], offset=-1)],
    np.linalg.cross: [lambda x: np.linalg.cross(x[:, :3], x[:, 1:])],
    # sorting: values move with their elements (distinct random values: no ties)
    np.sort: [lambda x: np.sort(x), lambda x: np.sort(x, axis=0), lambda x: np.sort(x, None),
              lambda x: np.sort(x, axis=1)[:, -2:] ** 2],
    np.argsort: [lambda x: np.argsort(x), lambda x: np.argsort(x, axis=0),
                 lambda x: x[0][np.argsort(x[1])]],
    np.take_along_axis: [lambda x: np.take_along_axis(x, np.argmax(x, 1)[:, None], 1),
                         lambda x: np.take_along_axis(x, np.array([[2, -1]]), 1),
                         lambda x: np.take_along_axis(x[0], np.array([3, 3, 0]), None)],
    np.partition: [lambda x: np.partition(x, 1, axis=0), lambda x: np.partition(x, -1)],
    np.argpartition: [lambda x: x[0][np.argpartition(x[0], 2)]],
    np.median: [lambda x: np.median(x), lambda x: np.median(x, axis=1),
                lambda x: np.median(x, axis=0, keepdims=True)],
    np.quantile: [lambda x: np.quantile(x, 0.3), lambda x: np.quantile(x, [0.1, 0.5, 1.0], 1),
                  lambda x: np.quantile(x, [[0.25], [0.75]], axis=0, method="nearest")],
    np.percentile: [lambda x: np.percentile(x, 40, axis=1, keepdims=True),
                    lambda x: np.percentile(x, [0, 35, 50], method="midpoint")],
    np.searchsorted: [lambda x: np.searchsorted(np.sort(x[0]), x[1:]),
                      lambda x: x[0][np.searchsorted([-0.5, 0.0, 0.5], x[1], side="right")]],
    np.digitize: [lambda x: np.digitize(x, [-0.5, 0.0, 0.5]),
                  lambda x: np.digitize(x, [0.5, 0.0, -0.5], right=True)],
    # (distinct values: finite differences do not split a run of equal ones)
    np.unique: [lambda x: np.unique(x), lambda x: np.unique(x, return_index=True),
                lambda x: np.unique(np.round(x * 2), return_inverse=True)[1] * x],
    np.bincount: [lambda x: np.bincount(np.array([3, 0, 3, 1]), weights=x[0]),
                  lambda x: np.bincount((x[1] > 0).astype(np.int64), x[2] ** 2, minlength=3)],
    np.linspace: [lambda x: np.linspace(x[0, 0], x[1, 1], 5),
                  lambda x: np.linspace(x[0], x[1], 3, axis=1, endpoint=False, retstep=True)],
    np.geomspace: [lambda x: np.geomspace(np.exp(x[0, 0]), 8.0, 4),
                   lambda x: np.geomspace(-np.exp(x[0]), -2.0, 3, endpoint=False, axis=1)],
    # element rearrangements (NumPy's own on element numbers, then a gather)
    np.delete: [lambda x: np.delete(x, 1, axis=1), lambda x: np.delete(x, [0, 5, 11]),
                lambda x: np.delete(x, slice(0, 3, 2), axis=0)],
    np.insert: [lambda x: np.insert(x, 1, x[0] * 2, axis=0),
                lambda x: np.insert(x, [1, 1, 3], 7.0), lambda x: np.insert(x, 2, x[:, 0], 1)],
    np.resize: [lambda x: np.resize(x, (5, 3)), lambda x: np.resize(x[0], 6)],
    np.rollaxis: [lambda x: np.rollaxis(x[None], 2)],
    np.diagflat: [lambda x: np.diagflat(x[0]), lambda x: np.diagflat(x[:, :2], k=-1)],
    np.matrix_transpose: [lambda x: np.matrix_transpose(x[None])],
    np.hsplit: [lambda x: np.hsplit(x, 2), lambda x: np.hsplit(x[0], [1, 3])],
    np.vsplit: [lambda x: np.vsplit(x, [1])],
    np.dsplit: [lambda x: np.dsplit(x.reshape(3, 2, 2), 2)],
    np.atleast_3d: [lambda x: np.atleast_3d(x), lambda x: np.atleast_3d(x[0], x[0, 0])],
    np.dstack: [lambda x: np.dstack([x, x * 2]), lambda x: np.dstack([x[0], x[1]])],
    np.broadcast_arrays: [lambda x: np.broadcast_arrays(x, x[0], x[:, :1])],
    np.unstack: [lambda x: np.unstack(x, axis=1)],
    np.astype: [lambda x: np.astype(x, np.float64, copy=False) * 1.5,
                lambda x: np.astype(x * 4, np.int32)],
    np.block: [lambda x: np.block([[x, x[:, :1]], [x[:1], x[:1, :1]]]),
               lambda x: np.block([x[0], 2.0, x[1]])],
    np.cumulative_sum: [lambda x: np.cumulative_sum(x, axis=1, include_initial=True),
                        lambda x: np.cumulative_sum(x[0])],
    np.cumulative_prod: [lambda x: np.cumulative_prod(x, axis=0, include_initial=True)],
    np.vander: [lambda x: np.vander(x[0]), lambda x: np.vander(x[1], 3, increasing=True)],
    np.lexsort: [lambda x: x[0][np.lexsort((x[1], np.round(x[0])))],
                 lambda x: np.lexsort(np.round(x[:2] * 2), axis=0)],
    np.apply_along_axis: [lambda x: np.apply_along_axis(lambda v: v[1:] * v[0], 1, x),
                          lambda x: np.apply_along_axis(np.sum, 0, x)],
    np.piecewise: [lambda x: np.piecewise(x, [x < 0, x >= 0], [lambda v: v ** 2,
                                                                lambda v: np.sqrt(v)]),
                   lambda x: np.piecewise(x, [x < -0.5], [lambda v: -v, 0.25])],
    np.isin: [lambda x: np.where(np.isin(np.round(x * 3), [0.0, 1.0]), x, -x),
              lambda x: np.isin(np.round(x), np.round(x[0]), invert=True)],
    np.extract: [lambda x: np.extract(x > 0, x * 2)],
    np.array_equal: [lambda x: np.array_equal(x, x) * x, lambda x: np.array_equal(x, x[0]),
                     lambda x: np.array_equal(x / 0.0 * 0.0, x * np.nan, equal_nan=True)],
    np.fix: [lambda x: np.fix(x * 3) + x],
    np.isposinf: [lambda x: np.isposinf(x / x[0, 0] / 0.0)],
    np.isneginf: [lambda x: np.isneginf(x / x[0, 0] / 0.0)],
    np.isreal: [lambda x: np.isreal(x)], np.iscomplex: [lambda x: np.iscomplex(x)],
    np.real_if_close: [lambda x: np.real_if_close(x) * 2],
    np.signbit: [lambda x: np.signbit(x), lambda x: np.signbit(x * 0.0),
                 lambda x: np.signbit(np.round(x * 2).astype(np.int8))],
    np.vecdot: [lambda x: np.vecdot(x, x[0])],
    np.matvec: [lambda x: np.matvec(x, x[0]), lambda x: np.matvec(x[None], x[:2, 0:4])],
    np.vecmat: [lambda x: np.vecmat(x[:, 0], x)],
    np.logspace: [lambda x: np.logspace(x[0, 0], x[1, 1], 4),
                  lambda x: np.logspace(x[0], x[1], 3, base=2.0, axis=-1)],
    np.histogram: [lambda x: np.histogram(x, 3)[1],
                   lambda x: np.histogram(x[0], 3, range=(-1, 1), weights=np.exp(x[1])),
                   lambda x: np.histogram(x, [-1.0, 0.0, 0.5, 1.0], weights=x, density=True)],
    # NaN-ignoring reductions (no NaNs here: their values and derivatives; NaNs below)
    np.nansum: [lambda x: np.nansum(x), lambda x: np.nansum(x, axis=1, keepdims=True)],
    np.nanprod: [lambda x: np.nanprod(x, axis=0)],
    np.nancumsum: [lambda x: np.nancumsum(x, axis=1)],
    np.nanmean: [lambda x: np.nanmean(x), lambda x: np.nanmean(x, axis=0)],
    np.nanvar: [lambda x: np.nanvar(x, axis=1), lambda x: np.nanvar(x, ddof=1)],
    np.nanstd: [lambda x: np.nanstd(x, axis=0, keepdims=True)],
    np.nanmax: [lambda x: np.nanmax(x, axis=1), lambda x: np.nanmax(x)],
    np.nanmin: [lambda x: np.nanmin(x, axis=0)],
    np.nanargmax: [lambda x: np.nanargmax(x, axis=1)],
    np.nanargmin: [lambda x: np.nanargmin(x, axis=0)],
    np.nanmedian: [lambda x: np.nanmedian(x, axis=1), lambda x: np.nanmedian(x)],
    np.nanquantile: [lambda x: np.nanquantile(x, [0.2, 0.7], axis=0)],
    np.nanpercentile: [lambda x: np.nanpercentile(x, 65, axis=1, keepdims=True)],
    np.cumprod: [lambda x: np.cumprod(x), lambda x: np.cumprod(x, axis=0),
                 lambda x: np.cumprod(x[:, :1], axis=1)],
    np.nancumprod: [lambda x: np.nancumprod(x, axis=1)],
    np.copysign: [lambda x: np.copysign(x[0], x[1]), lambda x: np.copysign(2.0, x)],
    np.fmod: [lambda x: np.fmod(x, 0.3), lambda x: np.fmod(x[0] * 3, x[1] + 2.0)],
    np.modf: [lambda x: np.modf(x * 3)],
    np.ldexp: [lambda x: np.ldexp(x, np.array([[1], [-2], [3]]))],
    np.rot90: [lambda x: np.rot90(x), lambda x: np.rot90(x, 3), lambda x: np.rot90(x, 2, (1, 0))],
    np.meshgrid: [lambda x: np.meshgrid(x[0], x[1, :2]),
                  lambda x: np.meshgrid(x[0], x[1, :2], indexing="ij", sparse=True)],
    np.cov: [lambda x: np.cov(x), lambda x: np.cov(x, rowvar=False, bias=True),
             lambda x: np.cov(x[0], x[1])],
    np.corrcoef: [lambda x: np.corrcoef(x), lambda x: np.corrcoef(x[0], x[2])],
    np.gradient: [lambda x: np.gradient(x), lambda x: np.gradient(x, 0.5, axis=1, edge_order=2)],
    np.convolve: [lambda x: np.convolve(x[0], x[1, :3]),
                  lambda x: np.convolve(x[0, :2], x[1], "same"),
                  lambda x: np.convolve(x[0], x[1, :2], "valid")],
    np.correlate: [lambda x: np.correlate(x[0], x[1, :3]),
                   lambda x: np.correlate(x[0, :3], x[1], "full")],
    np.lib.stride_tricks.sliding_window_view: [
        lambda x: np.lib.stride_tricks.sliding_window_view(x, (2, 3)),
        lambda x: np.lib.stride_tricks.sliding_window_view(x, 2, axis=-1),
        lambda x: np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 1))],
    # (derivatives in x, in the sample points and in the values)
    np.interp: [lambda x: np.interp(x, np.linspace(-1, 1, 5), np.sin(np.linspace(-1, 1, 5))),
                lambda x: np.interp(x[0], np.sort(x[1]) * 2, x[2]),
                lambda x: np.interp(x, [-0.5, 0.5], [0.0, 1.0], left=x[0, 0], right=-1.0)],
}


def _cases():
    for func, fs in FUNCTION_CASES.items():
        for i, f in enumerate(fs):
            yield pytest.param(f, id=f"{getattr(func, '__name__', func)}-{i}")


@pytest.mark.parametrize("f", list(_cases()))
def test_function(f, request):
    # (an input of the case's own, whatever ran before it on this worker)
    seed = zlib.crc32(request.node.callspec.id.encode())
    check(f, np.random.default_rng(seed).uniform(-1.0, 1.0, (3, 4)))


def _sorting(x):
    return (np.sort(x, axis=1), np.argsort(x, axis=0, kind="stable"), np.median(x, axis=1),
            np.quantile(x, [0.0, 0.3, 1.0], axis=0), np.percentile(x, 75, keepdims=True),
            np.take_along_axis(x, np.argmin(x, 1)[:, None], 1))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_sorting_with_ties_and_nans_as_numpy(target):
    """Ties keep their order (a stable sort), NaNs sort last, and a NaN in a line makes
    its median and quantiles NaN, on every target (the CUDA target sorts on the host)."""
    x = np.round(np.random.default_rng(3).standard_normal((4, 6)), 1)
    x[1, 2] = x[1, 4] = x[1, 0]
    x[2, 3] = np.nan
    want = _sorting(x)
    got = gradc.jit(_sorting, target=target)(x)
    for k, (g, w) in enumerate(zip(got, want)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
        assert g.dtype == w.dtype and g.shape == w.shape, k
        np.testing.assert_allclose(g, w, rtol=1e-14, err_msg=f"output {k}")


XP = np.array([-1.0, -0.2, 0.0, 0.0, 0.5, 2.0])
FP = np.array([1.0, 3.0, -1.0, 4.0, 0.5, 0.5])


def _lookups(x):
    return (np.interp(x, XP, FP), np.interp(x, XP, FP, left=-7.0, right=9.0),
            np.interp(x, [0.5], [2.0]), np.searchsorted(XP, x),
            np.searchsorted(XP, x, side="right"), np.digitize(x, XP[::-1], right=True),
            np.interp(x.astype(np.float32), XP, FP))


_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_interp_and_searchsorted_at_numpys_edges(target):
    """Outside the sample points, at them (the last one, a repeated one), NaN and
    infinite x, one sample point: NumPy's values exactly, on every target."""
    x = np.array([-2.0, -1.0, -0.6, -0.2, 0.0, 0.3, 0.5, 1.0, 2.0, 2.5, np.nan, np.inf, -np.inf])
    for g, w in zip(gradc.jit(_lookups, target=target)(x), _lookups(x)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
        assert g.dtype == w.dtype
        _equal_or_fused(g, w, target)


def _equal_or_fused(g, w, target):
    """Equal to NumPy's bits; on a GPU, within 2 ulp where the result is a float: NVVM
    contracts ``a * b + c`` into one fused multiply-add (as XLA and nvcc do), which
    rounds once where NumPy rounds twice (a linspace point, an interpolated value)."""
    if target == "cuda" and g.dtype.kind == "f" and not _SIMULATOR:
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        ok = ~np.isnan(w)
        np.testing.assert_array_max_ulp(g[ok], w[ok], maxulp=2)
    else:
        np.testing.assert_array_equal(g, w)


def test_searchsorted_compares_a_python_scalar_at_its_own_precision():
    """NumPy compares 0.1 with a float32 array as float64 (0.1f > 0.1), and 300 with a
    uint8 array without overflow; traced arrays give the same answers."""
    a32, u8 = np.array([0.1, 0.5], np.float32), np.array([1, 7, 200], np.uint8)

    def f(a, u):
        return (np.searchsorted(a, 0.1, side="right"), np.searchsorted(u, 300),
                np.searchsorted(u, -1), np.searchsorted(a, np.float32(0.1), side="right"),
                np.digitize(0.1, np.array([0.1, 0.5], np.float32)))

    got = gradc.jit(f, target="numpy")(a32, u8)
    want = f(a32, u8)
    assert [int(g) for g in got] == [int(w) for w in want] == [0, 3, 0, 1, 0]


def _distinct(x, k, w):
    return (np.unique(x, return_index=True, return_inverse=True, return_counts=True),
            np.unique(k), np.unique(x, equal_nan=False), np.bincount(k),
            np.bincount(k, weights=w, minlength=9), np.bincount(k[:0], minlength=2),
            np.unique(x[0, 0], return_inverse=True), np.bincount(k[:0], w[:0], minlength=3),
            np.bincount(k.astype(np.uint64)), np.clip(k.astype(np.uint8), 0, 300),
            k.astype(np.uint8) < 300, k.astype(np.uint8) == -1, k.astype(np.int8) >= 2**70)


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_unique_and_bincount_as_numpy(target):
    """Values, first indices, inverse (the input's shape) and counts; NaNs as one value or
    several; -0.0 and 0.0 equal.  Their lengths depend on the values: a call whose values
    give other lengths is traced again."""
    x = np.array([[1.5, np.nan, -0.0, 2.0], [0.0, 2.0, np.nan, 1.5], [7.0, -1.0, 1.5, 0.0]])
    k, w = np.array([3, 0, 3, 5, 1], np.int32), np.linspace(-1.0, 1.0, 5)
    f = gradc.jit(_distinct, target=target)
    for args in ((x, k, w), (x[:2], k[:3], w[:3]), (x[::-1], k + 2, w)):
        got, want = _leaves(f(*args)), _leaves(_distinct(*args))
        assert len(got) == len(want)
        for n, (g, e) in enumerate(zip(got, want)):
            g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
            assert (g.dtype, g.shape) == (e.dtype, e.shape), n
            np.testing.assert_array_equal(g, e, err_msg=str(n))
            if n == 0:      # (-0.0 or 0.0: NumPy's sort is stable only with return_index)
                np.testing.assert_array_equal(np.signbit(g), np.signbit(e))


def _histograms(a, w):
    return (np.histogram(a), np.histogram(a, 7, range=(-1, 1)), np.histogram(a, 5, weights=w),
            np.histogram(a, 5, density=True), np.histogram(a.astype(np.float32), 4, (-1, 1)),
            np.histogram(np.round(a * 3).astype(np.int64), 6), np.histogram(a * 0 + 1, 3),
            np.histogram(a, [-2, -0.5, 0, 0.3, 2]), np.linspace(a[0], a[1], 7),
            np.linspace(a[:3], a[3:6], 5, axis=1, endpoint=False, retstep=True),
            np.linspace(0, a[0] * 1e-320, 4), np.linspace(a[0], 10.0, 6, dtype=int),
            np.logspace(a[:2], 3.0, 5, base=2.0, axis=1),
            # (review: NumPy scalars in range keep their dtype; float32 weights summed in
            # float64; given edges with weights as NumPy's running sums; one edge)
            np.histogram(a.astype(np.float32), 2, range=(np.float64(0), np.float64(0.3))),
            np.histogram(a, 3, weights=w.astype(np.float32)),
            np.histogram(a, [-2, -0.5, 0, 0.3, 2], weights=w), np.histogram(a, [0.0]),
            np.histogram(a.reshape(6, 10), 4, range=np.array([-1.0, 0.3])))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_histogram_and_linspace_as_numpy(target):
    """NumPy's edges and counts exactly: equal bins over the data or a range (float32
    edges for float32 data), integer data, data of one value, given edges (a value on
    the last edge in the last bin, values outside dropped), weights, density; linspace's
    points to the last bit (subnormal steps, integer dtype, arrays of endpoints), and
    logspace's."""
    rng = np.random.default_rng(4)
    a, w = np.round(rng.standard_normal(60), 1), rng.uniform(size=60)
    a[:3] = [-0.5, 2.0, 0.3]        # (on edges)
    got = _leaves(gradc.jit(_histograms, target=target)(a, w))
    want = _leaves(_histograms(a, w))
    assert len(got) == len(want)
    for n, (g, e) in enumerate(zip(got, want)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
        assert (g.dtype, g.shape) == (e.dtype, e.shape), n
        if (target == "cuda" and n in (4, 22)) or n == 26:
            # (CUDA sums weights by atomics, in any order; NumPy's sort for given edges
            # is not stable: the order of equal values' weights is its own)
            np.testing.assert_allclose(g, e, rtol=1e-6 if n == 22 else 1e-14)
        else:
            _equal_or_fused(g, e, target)


def _assorted(x):
    return (np.piecewise(x, [x < 0, x >= 0], [lambda v: v ** 2, np.sqrt]),
            np.insert(x, [1, 1, 3], 7.0), np.delete(x, 1, axis=1), np.resize(x[0], 7),
            np.lexsort((x[1], np.round(x[0]))), np.vander(x[0], 3),
            np.block([[x, x[:, :1]], [x[:1], x[:1, :1]]]), np.isin(np.round(x), [0.0, 1.0]),
            np.geomspace(np.exp(x[0, :2]), 5.0, 4, axis=1), np.signbit(x * 0.0),
            np.matvec(x, x[0]), np.cumulative_sum(x, axis=1, include_initial=True),
            np.diagflat(x[0], 1), np.fix(x * 3), np.log10(np.abs(x) * 100.0),
            np.exp2(x), np.log2(np.abs(x) + 1.0))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_assorted_functions_on_every_target(target):
    x = np.round(np.random.default_rng(9).uniform(-1.0, 1.0, (3, 4)), 2)
    x[0, 2], x[1, 1] = -0.0, 0.1
    got = _leaves(gradc.jit(_assorted, target=target)(x))
    want = _leaves(_assorted(x))
    for n, (g, e) in enumerate(zip(got, want)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
        assert (g.dtype, g.shape) == (e.dtype, e.shape), n
        np.testing.assert_allclose(g, e, rtol=1e-15, atol=0, err_msg=str(n))
        np.testing.assert_array_equal(np.signbit(g), np.signbit(e), err_msg=str(n))


def _through_the_svd(x):
    return (np.linalg.pinv(x), np.linalg.lstsq(x.T, x[0]), np.linalg.norm(x, 2),
            np.linalg.norm(x, "nuc"), np.linalg.cond(x), np.linalg.matrix_rank(x),
            np.linalg.svdvals(np.stack([x, x ** 2])))


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_svd_based_functions_on_every_target(target):
    """pinv, lstsq, the spectral and nuclear norms, cond, matrix_rank (LAPACK's results
    to rounding: NumPy's lstsq is gelsd, gradc's the SVD)."""
    x = np.random.default_rng(10).uniform(-1.0, 1.0, (3, 4))
    got = _leaves(gradc.jit(_through_the_svd, target=target)(x))
    want = _leaves(_through_the_svd(x))
    assert len(got) == len(want)
    for n, (g, e) in enumerate(zip(got, want)):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
        assert (g.dtype, g.shape) == (e.dtype, e.shape), n
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14, err_msg=str(n))


def test_histogram_in_blocks_as_numpy():
    """Over 65536 values NumPy sums block by block (float32 weights: each block's float64
    sum cast to float32, then added in float32); so does gradc."""
    rng = np.random.default_rng(6)
    a, w = rng.standard_normal(70000), rng.uniform(size=70000).astype(np.float32)
    for bins in (5, [-3.0, -1.0, 0.0, 0.5, 3.0]):
        got = gradc.jit(lambda a, w: np.histogram(a, bins, weights=w))(a, w)
        want = np.histogram(a, bins, weights=w)
        for g, e in zip(got, want):
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)


def test_lstsq_residuals_follow_the_rank_of_each_call():
    """NumPy gives residuals only for a full-rank tall matrix: a later call of lower rank
    must not reuse the first call's trace (its residuals' shape)."""
    rng = np.random.default_rng(11)
    f = gradc.jit(lambda a, b: np.linalg.lstsq(a, b)[1:3])
    full, low = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    low[:, 2] = low[:, 0] + low[:, 1]
    b = rng.standard_normal(5)
    for a in (full, low, full):
        (got_res, got_rank), (want_res, want_rank) = f(a, b), np.linalg.lstsq(a, b)[1:3]
        assert got_res.shape == want_res.shape and int(got_rank) == int(want_rank)
        np.testing.assert_allclose(got_res, want_res, rtol=1e-10)


def test_unique_and_bincount_derivatives():
    """A distinct value's derivative goes to its first occurrence; bincount's weights
    are summed per bin."""
    check(lambda x: np.unique(x) ** 2, rand(6))       # (distinct: finite differences
    check(lambda x: np.unique(x, return_counts=True)[0] * np.arange(5), rand(5))  # hold)
    x = np.array([0.3, -1.2, 0.3, 2.0, -1.2])
    k = np.array([2, 0, 2, 4])
    check(lambda w: np.bincount(k, weights=np.sin(w)), rand(4))
    g = gradc.grad(lambda x: np.sum(np.unique(x) * np.array([1.0, 2.0, 3.0])))(x)
    np.testing.assert_array_equal(g, [2.0, 1.0, 0.0, 3.0, 0.0])


def _with_nans(x):
    return (np.nansum(x, axis=1), np.nanmean(x, axis=0), np.nanvar(x, axis=1),
            np.nanmax(x, axis=1), np.nanmin(x), np.nanmedian(x, axis=1),
            np.nanquantile(x, [0.25, 0.9], axis=1), np.nancumsum(x, axis=1),
            np.nanprod(x, axis=0), np.nanargmax(x[[0, 1, 3]], axis=1))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_nan_reductions_skip_nans_as_numpy(target):
    """NaNs skipped; a line of NaNs only gives NaN (nanargmax of one raises, as NumPy)."""
    x = np.round(np.random.default_rng(5).standard_normal((4, 5)), 1)
    x[0, 1] = x[3, 0] = x[3, 4] = np.nan
    x[2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = gradc.jit(_with_nans, target=target)(x)
        want = [f(x) for f in (lambda x: np.nansum(x, axis=1), lambda x: np.nanmean(x, axis=0),
                               lambda x: np.nanvar(x, axis=1), lambda x: np.nanmax(x, axis=1),
                               np.nanmin, lambda x: np.nanmedian(x, axis=1),
                               lambda x: np.nanquantile(x, [0.25, 0.9], axis=1),
                               lambda x: np.nancumsum(x, axis=1), lambda x: np.nanprod(x, axis=0))]
    want.append(np.nanargmax(x[[0, 1, 3]], axis=1))
    for k, (g, w) in enumerate(zip(got, want)):
        assert np.asarray(g).dtype == w.dtype, k
        np.testing.assert_allclose(g, w, rtol=1e-13, err_msg=f"output {k}")
    # a line of NaNs only: NumPy's error, on the first call and after a call without one
    fn = gradc.jit(lambda x: np.nanargmin(x, axis=1), target=target)
    np.testing.assert_array_equal(fn(x[[0, 1, 3]]), np.nanargmin(x[[0, 1, 3]], axis=1))
    for bad in (x, x[2:3]):
        with pytest.raises(ValueError, match="nanargmin: All-NaN slice"):
            fn(bad)
    inside_vmap = gradc.vmap(lambda r: np.nanargmax(r), target=target)(x)
    np.testing.assert_array_equal(inside_vmap, [np.nanargmax(x[k]) if k != 2 else -1
                                                for k in range(4)])


def test_nan_reductions_have_zero_derivative_at_nans():
    """The NaNs are replaced before any arithmetic, so their derivative is 0, not NaN,
    and the others' derivatives are those of the numbers alone."""
    x = rand(3, 4)
    x[1, 2] = np.nan
    keep = ~np.isnan(x)
    for f, g in ((np.nansum, np.sum), (np.nanmean, np.mean), (np.nanvar, np.var),
                 (np.nanstd, np.std), (np.nanmax, np.max), (np.nanmedian, np.median)):
        d = gradc.grad(lambda x: f(x) ** 2)(x)
        assert d[1, 2] == 0.0, f.__name__
        ref = gradc.grad(lambda v: g(v) ** 2)(x[keep])
        np.testing.assert_allclose(d[keep], ref, rtol=1e-12, err_msg=f.__name__)


def test_float_edges_of_copysign_fmod_modf_as_numpy():
    s = np.array([1.5, -2.5, 0.0, -0.0, np.inf, -np.inf, np.nan, 7.0, -7.0, 3.0, 1e-300])
    y = np.array([2.0, 2.0, -1.0, 3.0, 2.0, 5.0, 1.0, np.inf, np.inf, -0.0, -np.inf])
    for f in (lambda s, y: np.copysign(s, y), lambda s, y: np.fmod(s, y),
              lambda s, y: np.modf(s), lambda s, y: np.fmod(s.astype(int)[7:], [3, -3, 0, 2])):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got, want = gradc.jit(f)(s, y), f(s, y)
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(g, w)
            np.testing.assert_array_equal(np.signbit(g), np.signbit(w))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_integer_fmod_as_numpy(target):
    """(QA) ``np.fmod`` of signed integers on the cpu target returned the dividend:
    Numba's own np.fmod of integers is wrong (fmod(-7, 3) gave 0).  Truncated, of the
    dividend's sign, 0 for a divisor 0 and for INT_MIN fmod -1, as NumPy."""
    import itertools
    import warnings
    for dt in (np.int8, np.int64, np.uint8):
        info = np.iinfo(dt)
        vals = {0, 1, 2, 3, 7, info.max, info.max - 1}
        if info.min < 0:
            vals |= {-1, -2, -3, -7, info.min, info.min + 1}
        a, b = (np.array(v, dt) for v in zip(*itertools.product(sorted(vals), repeat=2)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = gradc.jit(lambda x, y: np.fmod(x, y), target=target)(a, b)
            want = np.fmod(a, b)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=str(dt))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_whole_functions_of_integers_in_numpy_dtype_and_new_arrays(target):
    """(QA) floor, ceil and trunc of integers and booleans in the installed NumPy's dtype
    (their own from NumPy 2.3; gradc gave float64), and the functions whose value is
    their operand's (fix, positive, conjugate, and those three of integers) return a new
    array: a write into the result reached the operand."""
    import warnings
    cases = [np.array([7, -7, 5]), np.array([True, False]), np.array([3, 250], np.uint8),
             np.int64(5), np.array(4, np.int16), np.array([1.5, -2.5])]
    for f in (np.floor, np.ceil, np.trunc, np.fix, np.positive, np.conjugate):
        for x in cases:
            if f is np.positive and x.dtype == np.bool_:
                continue            # (NumPy has no positive of booleans)
            got, want = gradc.jit(lambda a: f(a), target=target)(x), f(x)
            assert np.asarray(got).dtype == np.asarray(want).dtype, (f, x)
            np.testing.assert_array_equal(got, want)

        def write(a):
            b = f(a)
            b[0] = 100
            return a, b
        for x in (np.array([1, 2]), np.array([1.0, 2.0])):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a, b = gradc.jit(write, target=target)(x)
            assert a[0] == 1 and b[0] == 100, f


def test_accumulate_of_ufuncs_and_cumprod_through_zeros():
    """ufunc.accumulate as a scan, in NumPy's dtype (sums and products of int8 widen, a
    running maximum stays int8), and a product's derivative through zeros is exact."""
    x = rand(3, 5)
    x[1, 2] = 0.0
    check(lambda x: (np.maximum.accumulate(x, axis=1), np.minimum.accumulate(x),
                     np.logaddexp.accumulate(x, axis=1), np.cumprod(x, axis=1)), x)
    i8 = np.array([100, 100, 3, -128], np.int8)
    for f in (lambda v: np.add.accumulate(v), lambda v: np.cumsum(v), lambda v: np.cumprod(v),
              lambda v: np.maximum.accumulate(v), lambda v: np.multiply.accumulate(v)):
        got, want = gradc.jit(f)(i8), f(i8)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


REVIEW_EDGES = [   # (function, arguments): each found wrong by a review, NumPy's value now
    (lambda a: np.quantile(a, .5, method="lower"), (np.array([1., np.inf, np.inf]),)),
    (lambda a: np.percentile(a, 0, method="nearest"), (np.array([-0., 1.]),)),
    (lambda a: np.quantile(a, [.5, 1.], method="higher"), (np.array([1, 2, 3], np.int8),)),
    (lambda a: np.median(a), (np.array([1., 2., np.inf]),)),
    (lambda a: np.median(a), (np.array([1., np.inf]),)),
    (lambda a: np.median(a), (np.array([-0.1, 0.3]),)),          # (the mean of the two)
    (lambda a: np.nanmedian(a, axis=1), (np.array([[-0.1, np.nan, 0.3], [1., 2., 4.]]),)),
    (lambda x, xp, fp: np.interp(x, xp, fp), ([1.], [0., 1., 1.], [0., 1., 2.])),
    (lambda x, xp, fp: np.interp(x, xp, fp),
     ([-np.inf, np.inf, .5], [-np.inf, 0., 1., 2., np.inf], [5., 1., 2., 3., 4.])),
    (lambda x, xp, fp: np.interp(x, xp, fp), ([0., 1.], [0., 1.], [-0., -0.])),
    (lambda x, xp, fp: np.interp(x, xp, fp), ([2., 1.5], [0., 1., 2.], [0., np.inf, 3.])),
    (lambda a: np.cumsum(a, dtype=np.uint8), (np.array([200, 100, 3, 255], np.uint8),)),
    (lambda a: (a << a, a >> a), (np.array([True, False, True]),)),
    (lambda x, y: x // y, ([1e16, -1e16, 2**53 + 2.0], [3.0, 3.0, 3.0])),
    (lambda x, y: x // y, (np.float32([2**24 + 2, -1e7]), np.float32([3, 3]))),
]


def _review_edges(*flat):
    """Every REVIEW_EDGES case in one function (one compile)."""
    out, k = [], 0
    for f, args in REVIEW_EDGES:
        result = f(*flat[k:k + len(args)])
        out.extend(result if isinstance(result, tuple) else (result,))
        k += len(args)
    return tuple(out)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_review_edges_match_numpy_exactly(target):
    """Values (NaN, infinities, signed zeros) and dtypes exactly NumPy's."""
    import warnings
    flat = [np.asarray(a) for _, args in REVIEW_EDGES for a in args]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want, got = _review_edges(*flat), gradc.jit(_review_edges, target=target)(*flat)
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, (k, g.dtype, w.dtype)
        np.testing.assert_array_equal(g, w, err_msg=str(k))
        np.testing.assert_array_equal(np.signbit(g), np.signbit(w), err_msg=str(k))


def test_interp_derivative_at_a_knot_is_the_slope_on_its_right():
    """At a knot the value is fp exactly (NumPy's) and the derivative in x is the slope
    of the interval starting there (at the last knot, the last interval's)."""
    xp, fp = np.array([0., 1., 2.]), np.array([1., -2., 5.])
    d = gradc.grad(lambda x: np.sum(np.interp(x, xp, fp)))(np.array([0., 1., 0.5, 2.]))
    np.testing.assert_array_equal(d, [-3., 7., -3., 7.])


def test_quantile_dtype_follows_numpys_promotion():
    """float32 data: a Python q keeps float32, a float64 q (array, list, NumPy scalar)
    gives float64, as NumPy's."""
    x = np.random.default_rng(3).uniform(-1, 1, (3, 4)).astype(np.float32)
    for q in (0.3, 1, np.float32(0.3), np.float64(0.3), [0.3], np.array(0.3)):
        for f in (lambda x: np.quantile(x, q), lambda x: np.percentile(x, np.multiply(q, 100))):
            got, want = gradc.jit(f)(x), f(x)
            assert got.dtype == want.dtype, (q, got.dtype, want.dtype)
            # (float32 rounding of an interpolation, relative to the data's scale: a
            # quantile near 0 has no relative accuracy to speak of)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.max(np.abs(x)))


def test_sorting_errors_name_the_problem():
    x = rand(3, 4)
    with pytest.raises(gradc.UnsupportedError, match="q must be a constant"):
        gradc.make_graph(lambda x, q: np.quantile(x, q))(x, 0.5 * np.ones(()))
    with pytest.raises(gradc.ArgumentError, match=r"in the range \[0, 100\]"):
        gradc.make_graph(lambda x: np.percentile(x, 120))(x)
    with pytest.raises(gradc.UnsupportedError, match="method='weibull'"):
        gradc.make_graph(lambda x: np.quantile(x, 0.5, method="weibull"))(x)
    with pytest.raises(gradc.UnsupportedError, match="order="):
        gradc.make_graph(lambda x: np.sort(x, order="a"))(x)
    with pytest.raises(gradc.ShapeError, match="same number of dimensions"):
        gradc.make_graph(lambda x: np.take_along_axis(x, np.array([0, 1]), 1))(x)


def test_tables_are_covered():
    ufuncs = {u for u, _ in UNARY} | {u for u, _, _ in BINARY} | set(COMPARE) | set(LOGICAL)
    ufuncs |= {np.logical_not, np.invert, np.isnan, np.isfinite, np.matmul, np.left_shift,
               np.right_shift, np.divmod}   # (test_integer_division_bits_and_shifts_as_numpy)
    ufuncs |= {f for f in FUNCTION_CASES if isinstance(f, np.ufunc)}
    import scipy.special          # (scipy.special's, once registered: tests/test_special.py)
    ufuncs |= {u for u in numpy_api.UFUNCS if getattr(scipy.special, u.__name__, None) is u}
    missing = [u.__name__ for u in numpy_api.UFUNCS if u not in ufuncs]
    assert not missing, f"ufuncs without a test case: {missing}"
    missing = [f.__name__ for f in numpy_api.FUNCTIONS if f not in FUNCTION_CASES]
    assert not missing, f"functions without a test case: {missing}"


# ---------------------------------------------------------------- indexing

INDEX_CASES = [
    lambda x: x[1], lambda x: x[-1], lambda x: x[1, 2], lambda x: x[:, 1], lambda x: x[1:],
    lambda x: x[:-1], lambda x: x[::-1], lambda x: x[::2, 1::2], lambda x: x[-1::-2],
    lambda x: x[3:0:-1, ::-3], lambda x: x[None], lambda x: x[:, None, 1:3],
    lambda x: x[..., 0], lambda x: x[0, ...], lambda x: x[..., None], lambda x: x[1:1],
    lambda x: x[[0, 2, 2]], lambda x: x[np.array([[0, 1], [3, 3]])], lambda x: x[:, [3, 0]],
    lambda x: x[[0, 1], [2, 3]], lambda x: x[[0, 3], 1:], lambda x: x[1:, [0, 0, 2]],
    lambda x: x[[-1, 0]], lambda x: x[np.array([0, 2]), None], lambda x: x[..., [1, 2]],
    lambda x: x[[[0], [2]], [1, 3]], lambda x: x[[1], [0, 2]],
    lambda x: x[x[:, 0] > 0], lambda x: x[x > 0], lambda x: x[:, x[0] > 0],
    lambda x: x[np.array([True, False, True, True])], lambda x: x[0][1:3][::-1],
    lambda x: x[np.int64(2)], lambda x: x[np.array(1)],
]


@pytest.mark.parametrize("i", range(len(INDEX_CASES)))
def test_indexing(i):
    x = rand(4, 5)
    x[0, 0], x[2, 0] = 0.5, -0.5                      # a fixed mix of signs for the masks
    check(INDEX_CASES[i], x)


def test_integer_indices_from_traced_computation():
    x = rand(6)
    check(lambda x: x[np.argmax(x)], x)
    check(lambda x: x[np.argmax(x) - 1] * x[np.argmin(x)], x)


SETITEM_CASES = [
    ("x[1] = 0", lambda x, y: _set(x, 1, 0.0)),
    ("x[1:3] = y", lambda x, y: _set(x, slice(1, 3), y[:5])),
    ("x[:, 0] = y", lambda x, y: _set(x, (slice(None), 0), y[:4])),
    ("x[[0, 2]] = y row", lambda x, y: _set(x, [0, 2], y[:5])),
    ("x[x > 0] = y scalar", lambda x, y: _set(x, x > 0, y[0])),
    ("x[::-1, 1] *= y", lambda x, y: _iop(x, (slice(None, None, -1), 1), y[:4])),
    ("x[1:] += y", lambda x, y: _iop(x, slice(1, None), y[:5])),
]


def _set(x, key, value):
    x = x.copy()
    x[key] = value
    return x


def _iop(x, key, value):
    x = x.copy()
    if isinstance(key, tuple) and isinstance(key[0], slice) and key[0].step == -1:
        x[key] *= value
    else:
        x[key] += value
    return x


@pytest.mark.parametrize("name,f", SETITEM_CASES, ids=[n for n, _ in SETITEM_CASES])
def test_setitem(name, f):
    x = rand(4, 5)
    x[0, 0], x[2, 0] = 0.5, -0.5
    check(f, x, rand(5))


# ---------------------------------------------------------------- methods, dtypes, scalars

def _sorted_copy(x):
    y = x * 1.0
    y.sort(axis=1)              # (in place, as NumPy's: returns None)
    return y


METHOD_CASES = [
    lambda x: x.sum(), lambda x: x.sum(axis=0), lambda x: x.sum(1, keepdims=True),
    lambda x: x.mean(), lambda x: x.mean(0), lambda x: x.var(), lambda x: x.std(axis=1),
    lambda x: x.max(), lambda x: x.min(axis=1), lambda x: x.prod(), lambda x: x.prod(axis=0),
    lambda x: x.cumsum(axis=1), lambda x: x.T, lambda x: x.mT, lambda x: x.reshape(-1),
    lambda x: x.reshape(2, 2, 3), lambda x: x.transpose(), lambda x: x.transpose((1, 0)),
    lambda x: x.ravel(), lambda x: x.flatten(), lambda x: x.squeeze(), lambda x: x.copy(),
    lambda x: x.astype(float), lambda x: x.round(1),
    lambda x: x.clip(-0.3, 0.3), lambda x: x.dot(x.T), lambda x: x.argmax(), lambda x: x.argmin(1),
    lambda x: (x > 0).any(), lambda x: (x > -2).all(axis=0), lambda x: x.take([1, 2], axis=1),
    lambda x: x.diagonal(1), lambda x: x.trace(), lambda x: x.repeat(2),
    lambda x: x.swapaxes(0, 1), lambda x: (x.shape, x.ndim, x.size, len(x), x * 1.0)[4],
    lambda x: [row.sum() for row in x],
    lambda x: x.cumprod(axis=1), lambda x: x.argsort(axis=0), lambda x: x[0].searchsorted(0.1),
    lambda x: _sorted_copy(x),
]


@pytest.mark.parametrize("i", range(len(METHOD_CASES)))
def test_method(i):
    check(METHOD_CASES[i], rand(3, 4))


def test_astype_float32():
    x = rand(3, 4)
    check_values(lambda x: x.astype(np.float32), x)
    g = gradc.grad(lambda x: np.sum(x.astype(np.float32) * np.float32(3.0)))(x)
    assert g.dtype == np.float64
    np.testing.assert_array_equal(g, np.full((3, 4), 3.0))


def test_astype_int_has_zero_derivative():
    x = rand(3, 4) * 5
    check(lambda x: x.astype(np.int64), x, grads=False)
    g = gradc.grad(lambda x: np.sum(x.astype(np.int32) * x))(x)
    np.testing.assert_array_equal(g, x.astype(np.int32))


def test_float32_stays_float32():
    x = rand(3, 4).astype(np.float32)

    def f(x):
        return np.sum(np.sin(x) * 2.0 + x ** 2 / 3.0 + np.exp(x) @ np.ones((4, 4), np.float32))

    graph = gradc.make_graph(f)(x)
    assert all(v.dtype == np.float32 for e in graph.eqns for v in e.outputs
               if np.issubdtype(v.dtype, np.floating))
    out = gradc.eval_graph(graph, [x])[0]
    assert out.dtype == np.float32
    g = gradc.grad(f)(x)
    assert g.dtype == np.float32
    expected = gradc.grad(f)(x.astype(np.float64))
    np.testing.assert_allclose(g, expected, rtol=1e-4)
    v, gv = gradc.value_and_grad(f)(x)
    assert np.asarray(v).dtype == np.float32


def test_python_floats_in_floats_out():
    def f(a, b):
        return np.sin(a * b) + a ** 2

    g = gradc.grad(f)(0.3, 0.5)
    assert type(g) is float
    assert g == pytest.approx(0.5 * np.cos(0.15) + 0.6, rel=1e-12)
    g = gradc.grad(f, argnums=(0, 1))(0.3, 0.5)
    assert all(type(v) is float for v in g)
    np.testing.assert_allclose(g[1], 0.3 * np.cos(0.15))
    g32 = gradc.grad(f)(np.float32(0.3), np.float32(0.5))
    assert np.asarray(g32).dtype == np.float32


def test_integer_inputs_promote_to_float():
    x = rand(3)
    check(lambda x: x * np.arange(3) + np.sin(np.arange(3)), x)
    check(lambda x: x / 2 + np.array([1, 2, 3]) / 2, x)
    check(lambda x: np.sqrt(np.arange(3)) * x, x)


def test_broadcasting_in_arithmetic():
    check(lambda x, y: x * y + y, rand(3, 1, 4), rand(2, 1))
    check(lambda x, y: x[:, None] - y[None, :], rand(3), rand(4))
    check(lambda x, y: np.maximum(x, y.T), rand(3, 4), rand(4, 1))


def test_sum_of_list_of_tracers_and_builtin_sum():
    check(lambda x: sum(x[i] * i for i in range(4)), rand(4))
    check(lambda x: np.array([1.0, 2.0]) * 3.0 + x, rand(2))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_polyfit_warns_of_a_deficient_rank_once_per_rank(target):
    """A rank-deficient fit warns as NumPy does; the rank is guarded, so the next full-rank
    call is traced again and gives NumPy's coefficients (no stale trace, no warning)."""
    fit = gradc.jit(lambda x, y: np.polyfit(x, y, 2), target=target)
    y = np.arange(5.0) ** 2
    with pytest.warns(np.exceptions.RankWarning, match="poorly conditioned"):
        got = fit(np.ones(5), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        np.testing.assert_allclose(got, np.polyfit(np.ones(5), y, 2), rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = np.linspace(0.0, 1.0, 5)
        np.testing.assert_allclose(fit(x, y), np.polyfit(x, y, 2), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="np.polyfit: expected y of shape"):
        fit(np.ones(5), np.ones(4))


def test_polyfit_and_lstsq_batch_under_vmap():
    """One trace serves every example (the rank's guard is not recorded inside vmap)."""
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    got = gradc.vmap(lambda x, y: np.polyfit(x, y, 2, full=True)[:2], target="cpu")(x, y)
    for k in range(5):
        c, res = np.polyfit(x[k], y[k], 2, full=True)[:2]
        np.testing.assert_allclose(got[0][k], c, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[1][k], res, rtol=1e-10)
    g = gradc.vmap(gradc.grad(lambda x, y: np.sum(np.polyfit(x, y, 1) ** 2), argnums=1))(x, y)
    for k in range(5):
        fd = [(np.sum(np.polyfit(x[k], y[k] + e, 1) ** 2)
               - np.sum(np.polyfit(x[k], y[k] - e, 1) ** 2)) / 2e-6 for e in 1e-6 * np.eye(7)]
        np.testing.assert_allclose(g[k], fd, rtol=1e-6, atol=1e-8)


def test_checks_traced_inside_vmap_do_not_leak_into_direct_calls():
    """A jitted function first traced inside vmap (where value checks are left out) is
    traced again for a direct call, which checks; and the reverse order batches."""
    g = gradc.jit(lambda a: np.nanargmax(a))
    np.testing.assert_array_equal(gradc.vmap(lambda a: g(a))(np.array([[1., 2.], [3., 1.]])),
                                  [1, 0])
    with pytest.raises(gradc.InvalidValueError, match="All-NaN"):
        g(np.array([np.nan, np.nan]))
    h = gradc.jit(lambda a: np.nanargmax(a))
    assert h(np.array([1.0, 3.0])) == 1
    np.testing.assert_array_equal(
        gradc.vmap(lambda a: h(a))(np.array([[1.0, 2.0], [np.nan, np.nan]])), [1, -1])


def test_empty_inputs_as_numpy():
    e = np.ones((0, 3))
    got = gradc.jit(lambda a: (np.nanargmax(a, axis=1), np.any(a > 0, axis=1), np.all(a > 0)))(e)
    for g, w in zip(got, (np.nanargmax(e, axis=1), np.any(e > 0, axis=1), np.all(e > 0))):
        assert np.asarray(g).shape == np.shape(w) and np.asarray(g).dtype == np.asarray(w).dtype
        np.testing.assert_array_equal(g, w)
    for shape in ((0, 3), (3, 0), (2, 0, 3), (0, 3, 3)):
        a = np.ones(shape)
        got = gradc.jit(lambda a: (*np.linalg.qr(a), *np.linalg.svd(a, full_matrices=False)))(a)
        want = (*np.linalg.qr(a), *np.linalg.svd(a, full_matrices=False))
        assert [g.shape for g in got] == [w.shape for w in want], shape


def test_polyfit_of_float32_is_float64_as_numpy():
    x, y = np.float32([0, 1, 2, 3]), np.float32([1, 2, 4, 3])
    got = gradc.jit(lambda x, y: np.polyfit(x, y, 1))(x, y)
    assert got.dtype == np.float64 and np.vander(x).dtype == np.float64
    np.testing.assert_allclose(got, np.polyfit(x, y, 1), rtol=1e-12)
    with pytest.raises(ValueError, match="deg >= 0"):
        gradc.jit(lambda x, y: np.polyfit(x, y, -1))(x, y)


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_logaddexp_and_heaviside_at_special_values_as_numpy(target):
    """``logaddexp`` of two equal infinities is that infinity (its difference, NaN, is
    not used: NumPy's ``x + log 2`` where ``x == y``), of ``-inf`` and a number that
    number, with the gradient of the finite entries; ``logaddexp2`` too; ``heaviside``
    of NaN is NaN, with a zero gradient."""
    ninf, inf = -np.inf, np.inf
    x = np.array([ninf, inf, 0.3, 1.0, ninf, 2.0])
    y = np.array([ninf, inf, 0.3, -1.0, 0.5, ninf])
    with np.errstate(all="ignore"):
        for fn in (np.logaddexp, np.logaddexp2):
            np.testing.assert_array_equal(gradc.jit(fn, target=target)(x, y), fn(x, y))
        gx, gy = gradc.grad(lambda a, b: np.sum(np.logaddexp(a, b)), argnums=(0, 1),
                            target=target)(x, y)
    e = 1.0 / (1.0 + np.exp(-2.0))
    np.testing.assert_allclose(gx[2:], [0.5, e, 0.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(gy[2:], [0.5, 1.0 - e, 1.0, 0.0], rtol=1e-12)
    v, h = np.array([np.nan, -1.0, 0.0, 2.0, ninf, inf]), np.full(6, 0.5)
    np.testing.assert_array_equal(gradc.jit(np.heaviside, target=target)(v, h),
                                  np.heaviside(v, h))
    gv, gh = gradc.grad(lambda a, b: np.sum(np.heaviside(a, b)[1:]), argnums=(0, 1),
                        target=target)(v, h)
    np.testing.assert_array_equal(gv, np.zeros(6))
    np.testing.assert_array_equal(gh, [0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sign_of_negative_zero_is_positive_zero(target, dtype):
    """``np.sign(-0.0)`` is ``+0.0`` in NumPy (Numba's is ``-0.0``), ±1 at ±inf, NaN at
    NaN, in the argument's dtype."""
    x = np.array([-np.inf, -2.0, -0.0, 0.0, 3.0, np.inf, np.nan], dtype=dtype)
    got = gradc.jit(np.sign, target=target)(x)
    np.testing.assert_array_equal(got, np.sign(x))
    assert got.dtype == dtype and np.signbit(got).tolist() == np.signbit(np.sign(x)).tolist()


def _exactly_as_numpy(f, args, target):
    """``f`` compiled for ``target`` gives NumPy's values (NaN, infinities and signed zeros
    included; not the sign of NaN), dtypes and shapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want, got = _leaves(f(*args)), _leaves(gradc.jit(f, target=target)(*args))
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), (k, g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_array_equal(g, w, err_msg=str(k))
        numbers = ~np.isnan(w) if w.dtype.kind == "f" else np.ones(w.shape, bool)
        np.testing.assert_array_equal(np.signbit(g[numbers]), np.signbit(w[numbers]),
                                      err_msg=str(k))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_var_and_std_with_ddof_at_least_n_as_numpy(target):
    """NumPy divides by ``max(n - ddof, 0)``: inf (NaN for a constant line) when
    ``ddof >= n``, not a negative variance; ``nanvar``/``nanstd`` give NaN where the count
    of numbers is at most ``ddof``."""
    x = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    y = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan], [np.nan, 2.0, np.nan]])
    _exactly_as_numpy(lambda x, y: (np.var(x, axis=1, ddof=4), np.std(x, axis=1, ddof=3),
                                    np.var(x, ddof=6), np.nanvar(y, axis=1, ddof=1),
                                    np.nanstd(y, axis=1, ddof=2), np.nanvar(y, ddof=3)),
                      (x, y), target)
    # the lines with too few numbers do not put NaN into the others' derivatives
    with np.errstate(invalid="ignore"):          # (the all-NaN line's mean is 0 / 0)
        g = gradc.grad(lambda y: np.nansum(np.nanvar(y, axis=1, ddof=1)[:1]),
                       target=target)(y)
    np.testing.assert_array_equal(g, [[-2.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_isclose_of_infinities_and_nans_as_numpy(target):
    """An infinity is close to itself (not to a number, nor to the other infinity); NaN
    is close to NaN only under ``equal_nan``, which ``allclose`` passes on."""
    x = np.array([1.0, np.nan, np.inf, -np.inf, 1.0, np.inf])
    y = np.array([1.0, np.nan, np.inf, -np.inf, np.inf, -np.inf])
    _exactly_as_numpy(lambda x, y: (np.isclose(x, y), np.isclose(x, y, equal_nan=True),
                                    np.isclose(y, x), np.allclose(x[:4], y[:4]),
                                    np.allclose(x[:4], y[:4], equal_nan=True)),
                      (x, y), target)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_integer_reciprocal_and_round_and_float64_results_as_numpy(target):
    """``reciprocal`` and ``round`` of integers stay integers (1/x truncated toward zero;
    rounding to tens, half to even, for negative ``decimals``), ``reciprocal`` of bool is
    int8; ``float_power``, ``cov`` and ``corrcoef`` compute float32 in float64."""
    i = np.array([1, 2, -1, 15, 25, -35, 149])
    u, b = np.array([1, 2, 15, 149], np.uint8), np.array([True, True])
    f = np.float32([[1.0, 2.0, 4.0], [3.0, 1.0, 0.5]])
    _exactly_as_numpy(lambda i, u, b, f: (
        np.reciprocal(i[:4]), np.reciprocal(u), np.reciprocal(b), np.round(i, -1),
        np.round(i, -2), np.round(i, 2), np.round(u, -1), np.round(i * 1.0, -1),
        np.float_power(f, 2), np.float_power(f, f), np.cov(f), np.corrcoef(f),
        np.cov(f, dtype=np.float32)), (i, u, b, f), target)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_empty_reductions_bool_diff_and_1d_triangles_as_numpy(target):
    """``max``/``min`` over an empty axis give ``initial``; ``median`` over one NaN;
    ``diff`` of booleans is ``!=``; ``tril``/``triu`` of a 1-d array fill an (n, n)
    triangle with its copies."""
    e, b, v = np.zeros((0, 3)), np.array([[True, False, False], [True, True, False]]), \
        np.arange(1.0, 4.0)
    _exactly_as_numpy(lambda e, b, v: (
        np.max(e, axis=0, initial=0.5), np.min(e, axis=0, initial=-2, keepdims=True),
        np.max(e.astype(np.int64), axis=(0, 1), initial=3), np.median(e, axis=0),
        np.median(e), np.median(e, axis=0, keepdims=True), np.diff(b), np.diff(b, axis=0),
        np.diff(b, n=2), np.tril(v), np.triu(v, 1), np.tril(v, -1), np.tril(v * b)),
        (e, b, v), target)


def test_triangle_of_a_0d_array_is_a_gradc_error():
    where = r"(?s)np\.tril of a 0-d array.*test_numpy_surface.py:\d+: +gradc.jit"
    with pytest.raises(gradc.ShapeError, match=where):
        gradc.jit(lambda x: np.tril(np.sum(x)))(np.ones(3))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_hypot_of_an_infinity_is_inf_and_stack_converts_python_scalars(target):
    """(QA fuzzing: ``hypot(inf, ±inf)`` and ``hypot(inf, nan)`` were NaN, the scaled
    ratio inf/inf; ``np.stack([x32, 1.5])`` was float32, where NumPy converts 1.5 to a
    float64 array.)"""
    a = np.array([np.inf, np.inf, np.inf, -np.inf, 3.0, np.nan, 0.0, 1e308])
    b = np.array([-np.inf, np.inf, np.nan, 2.0, 4.0, 1.0, 0.0, 1e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = gradc.jit(lambda x, y: np.hypot(x, y), target=target)(a, b)
    np.testing.assert_array_equal(got, np.hypot(a, b))
    np.testing.assert_allclose(gradc.grad(lambda x: np.hypot(x, 4.0), target=target)(3.0), 0.6)
    x32 = np.array(0.25, np.float32)
    got = gradc.jit(lambda x: np.stack([x, 1.5]), target=target)(x32)
    assert got.dtype == np.float64 and got.tolist() == [0.25, 1.5]
    got = gradc.jit(lambda x: np.stack([x, x], axis=-1, dtype=np.float64),
                    target=target)(np.ones(2, np.float32))
    assert got.dtype == np.float64 and got.shape == (2, 2)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_norm_of_order_below_one_at_a_zero_component(target):
    """(QA sweep) ``norm(x, 0.5)`` had a NaN derivative where a component is 0 (|x|^p's
    derivative there is inf, times sign(0) = 0); the central difference and PyTorch give
    0 there, and the other components are unchanged."""
    from gradc.testing import numerical_grad
    x = np.array([0.0, 1.5, -2.0, 0.3])
    for p in (0.5, 0.25):
        def f(x):
            return np.linalg.norm(x, p)
        g = gradc.grad(f, target=target)(x)
        assert g[0] == 0.0
        np.testing.assert_allclose(g, numerical_grad(f, x, 1e-7), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gradc.jit(f, target=target)(x), f(x), rtol=1e-14)


def test_a_function_this_numpy_lacks_is_not_registered():
    """``implements(getattr(np, name, None))``: on a NumPy without the function (np.unstack
    before 2.1) gradc still imports, and nothing is registered under ``None``."""
    from gradc.numpy_api import FUNCTIONS, UFUNCS, implements

    def impl(x):
        return x
    before = (dict(FUNCTIONS), dict(UFUNCS))
    assert implements(None, np.sin)(impl) is impl
    assert None not in FUNCTIONS and None not in UFUNCS
    assert UFUNCS[np.sin] is impl
    FUNCTIONS.clear(), FUNCTIONS.update(before[0])
    UFUNCS.clear(), UFUNCS.update(before[1])
    assert UFUNCS[np.sin] is not impl
