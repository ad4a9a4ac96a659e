"""Every error a user can provoke is a GradcError whose message names the problem and the
user's source line (file and text), and says what to do instead."""
import math
import os

import numpy as np
import pytest

import gradc

X = np.array([0.5, -1.0, 2.0])


def expect(error, fragments, line, call):
    """``call()`` raises ``error``; the message holds every fragment and the source line."""
    with pytest.raises(error) as info:
        call()
    err = info.value
    assert isinstance(err, gradc.GradcError)
    message = str(err)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert os.path.basename(__file__) in message, message
    assert line in message, f"source line {line!r} not in:\n{message}"
    return message


# ---------------------------------------------------------------- unsupported NumPy

def test_unsupported_function_is_named():
    def f(x):
        return np.sum(np.fft.fft(x).real)

    expect(gradc.UnsupportedError, ["np.fft.fft", "not supported"],
           "return np.sum(np.fft.fft(x).real)", lambda: gradc.grad(f)(X))


def test_library_functions_that_convert_with_asarray_are_named():
    """SciPy's Python functions (not ufuncs) call np.asarray: the error names the one the
    user's line called (not a line inside SciPy) and what to call instead."""
    import scipy.special as sc

    expect(gradc.ConcretizationError, ["scipy.special.logsumexp", "gradc.logsumexp"],
           "return sc.logsumexp(x)", lambda: gradc.grad(lambda x: _logsumexp(sc, x))(X))
    expect(gradc.ConcretizationError, ["scipy.special.polygamma", "gradc.ops.polygamma"],
           "np.sum(sc.polygamma(1, x))",
           lambda: gradc.grad(lambda x: np.sum(sc.polygamma(1, x)))(X))
    expect(gradc.UnsupportedError, ["scipy.special.i0e", "not supported"],
           "np.sum(sc.i0e(x))", lambda: gradc.grad(lambda x: np.sum(sc.i0e(x)))(X))


def test_np_full_of_a_traced_value_names_np_full_and_its_replacements():
    """np.full calls np.asarray on its fill value: the error says np.full (NumPy's own
    module path, numpy._core.numeric, is not what the user wrote) and what works, and
    what it names does work."""
    def f(x):
        return np.sum(np.full(3, x[0]) * x)

    expect(gradc.ConcretizationError, ["np.full converts", "np.full_like(x, value)",
                                       "np.broadcast_to(value, shape)"],
           "return np.sum(np.full(3, x[0]) * x)", lambda: gradc.grad(f)(X))
    for instead in (lambda x: np.sum(np.full_like(x, x[0]) * x),
                    lambda x: np.sum(np.broadcast_to(x[0], (3,)) * x)):
        np.testing.assert_allclose(gradc.grad(instead)(X), X[0] + np.array([np.sum(X), 0, 0]))


def _logsumexp(sc, x):
    return sc.logsumexp(x)


def test_unique_along_an_axis_is_unsupported():
    def f(x):
        return np.sum(np.unique(np.outer(x, x), axis=0))

    expect(gradc.UnsupportedError, ["np.unique", "axis"],
           "return np.sum(np.unique(np.outer(x, x), axis=0))", lambda: gradc.grad(f)(X))


def test_lengths_and_counts_that_are_not_integers():
    expect(gradc.ArgumentError, ["np.linspace: num", "float"], "np.linspace(x[0], x[1], 5.0)",
           lambda: gradc.jit(lambda x: np.linspace(x[0], x[1], 5.0))(X))
    expect(gradc.ArgumentError, ["np.histogram: bins"], "np.histogram(x, 4.0)",
           lambda: gradc.jit(lambda x: np.histogram(x, 4.0))(X))
    expect(gradc.ArgumentError, ["minlength", "NoneType"], "np.bincount(k, minlength=None)",
           lambda: gradc.jit(lambda k: np.bincount(k, minlength=None))(np.arange(3)))
    expect(gradc.ShapeError, ["weights should have the same shape"],
           "np.histogram(x.reshape(3, 1), 2, weights=x)",
           lambda: gradc.jit(lambda x: np.histogram(x.reshape(3, 1), 2, weights=x))(X))
    big = np.array([2**60, 2**60 + 1, 2**60 + 5])
    expect(gradc.ArgumentError, ["too many bins"], "np.histogram(k, 3)",
           lambda: gradc.jit(lambda k: np.histogram(k, 3))(big))


def test_bincount_of_negative_or_float_values():
    expect(gradc.InvalidValueError, ["np.bincount", "negative"], "np.bincount(k - 3)",
           lambda: gradc.jit(lambda k: np.bincount(k - 3))(np.arange(4)))
    expect(gradc.DTypeError, ["np.bincount", "float64"], "np.bincount(x)",
           lambda: gradc.jit(lambda x: np.bincount(x))(X))


def test_python_integer_out_of_bounds_for_a_narrow_array():
    """NumPy 2 raises OverflowError for uint8_array + 300; so does gradc, as its own error
    with the user's line (and still an OverflowError)."""
    def f(x):
        return np.sum(x.astype(np.uint8) + 300)

    expect(OverflowError, ["300", "uint8"], "np.sum(x.astype(np.uint8) + 300)",
           lambda: gradc.jit(f)(X))
    expect(gradc.ScalarOverflowError, ["300"], "np.sum(x.astype(np.uint8) + 300)",
           lambda: gradc.jit(f)(X))
    with pytest.raises(OverflowError):
        np.arange(4, dtype=np.uint8) + 300


def test_unsupported_ufunc_is_named():
    def f(x):
        return np.sum(np.copysign(x, 1.0) ** 2) + np.sum(np.spacing(x))

    expect(gradc.UnsupportedError, ["np.spacing"], "np.sum(np.spacing(x))",
           lambda: gradc.grad(f)(X))


def test_unsupported_ufunc_method_and_out_argument():
    def f(x):
        return np.multiply.outer(x, x).sum()

    expect(gradc.UnsupportedError, ["np.multiply.outer"], "np.multiply.outer(x, x)",
           lambda: gradc.grad(f)(X))

    def g(x):
        out = np.empty(3)
        np.sin(x, out=out)
        return np.sum(out)

    expect(gradc.UnsupportedError, ["np.sin", "out="], "np.sin(x, out=out)",
           lambda: gradc.grad(g)(X))


def test_unsupported_keyword_argument_is_named():
    def f(x):
        return np.sum(np.concatenate([x, x], casting="unsafe"))

    expect(gradc.UnsupportedError, ["np.concatenate", "casting"],
           'np.concatenate([x, x], casting="unsafe")', lambda: gradc.grad(f)(X))


def test_unsupported_ndarray_attribute_is_named():
    def f(x):
        return np.sum(x.nonzero()[0])

    expect(gradc.UnsupportedError, ["nonzero"], "x.nonzero()", lambda: gradc.grad(f)(X))


# ---------------------------------------------------------------- concretisation

def test_float_of_traced_value():
    def f(x):
        scale = float(x[0])
        return np.sum(x) * scale

    expect(gradc.ConcretizationError, ["float()", "cut", "gradc.stop_gradient"],
           "scale = float(x[0])", lambda: gradc.grad(f)(X))


def test_int_of_traced_value():
    def f(x):
        n = int(x[0])
        return np.sum(x) * n

    expect(gradc.ConcretizationError, ["int()", "gradc.stop_gradient"], "n = int(x[0])",
           lambda: gradc.grad(f)(X))


def test_math_function_on_traced_value_suggests_numpy():
    def f(x):
        return math.sin(x) * 2.0

    expect(gradc.ConcretizationError, ["math.sin", "np.sin", "gradc.stop_gradient"],
           "return math.sin(x) * 2.0", lambda: gradc.grad(f)(0.3))


def test_storing_traced_value_into_numpy_array():
    def f(x):
        z = np.zeros(3)
        z[0] = x[1]
        return np.sum(z)

    expect(gradc.ConcretizationError, ["NumPy array", "np.stack",
                                       "np.zeros_like(x, shape=shape)"], "z[0] = x[1]",
           lambda: gradc.grad(f)(X))

    def g(x):                   # (what the message says to write: a traced table)
        z = np.zeros_like(x, shape=(3,))
        z[0] = x[1]
        return np.sum(z * 2.0) + z.size
    np.testing.assert_array_equal(gradc.grad(g)(np.arange(5.0)), [0, 2, 0, 0, 0])
    for like, args in ((np.ones_like, {"shape": (2, 2)}), (np.zeros_like, {"shape": 4}),
                       (np.empty_like, {"shape": (1, 3)})):
        got = gradc.jit(lambda x: like(x, **args) + 0 * np.sum(x))(np.arange(5.0))
        assert got.shape == like(np.arange(5.0), **args).shape


def test_formatting_a_traced_value():
    def f(x):
        label = f"{np.sum(x):.3f}"
        return np.sum(x) * len(label)

    expect(gradc.ConcretizationError, ["formatting", "'.3f'", "cut"],
           'label = f"{np.sum(x):.3f}"', lambda: gradc.grad(f)(X))

    def g(x):
        return np.sum(x) * len(format(x[0], "e"))

    expect(gradc.ConcretizationError, ["formatting", "'e'"],
           'return np.sum(x) * len(format(x[0], "e"))', lambda: gradc.grad(g)(X))


def test_len_iteration_and_hash_of_traced_values():
    """As NumPy's: a 0-d array has no length and is no sequence, an array is no dict
    key; gradc's errors are TypeErrors too (``try: iter(x)`` idioms catch them)."""
    def f(x):
        return np.sum(x) * len(np.sum(x))

    message = expect(gradc.ArgumentError, ["len() of unsized object", "0-d"],
                     "return np.sum(x) * len(np.sum(x))", lambda: gradc.grad(f)(X))
    assert "Tracer" not in message.splitlines()[0]

    def g(x):
        return sum(v for v in np.sum(x))

    expect(gradc.ArgumentError, ["iteration over a 0-d traced array"],
           "return sum(v for v in np.sum(x))", lambda: gradc.grad(g)(X))

    def h(x):
        weights = {x: 1.0}
        return np.sum(x) * len(weights)

    expect(gradc.ArgumentError, ["unhashable", "dict key", "id(x)"], "weights = {x: 1.0}",
           lambda: gradc.grad(h)(X))

    def hashable(v):
        try:
            return hash(v) is not None
        except TypeError:
            return False
    seen = []
    gradc.jit(lambda x: seen.append((np.iterable(np.sum(x)), hashable(x))) or x)(X)
    assert seen == [(False, False)]


def test_axis_that_is_not_an_integer():
    """NumPy takes an axis by ``operator.index``: a string, a float or an array where the
    axis goes is a TypeError, not ``int()`` of it."""
    ones = np.ones((2, 3))
    expect(gradc.ArgumentError, ["axis must be an integer", "'1' of type str"],
           'np.sum(x, axis="1")', lambda: gradc.jit(lambda x: np.sum(x, axis="1"))(ones))
    expect(gradc.ArgumentError, ["axis must be an integer", "1.0 of type float"],
           "np.max(x, axis=(0, 1.0))",
           lambda: gradc.jit(lambda x: np.max(x, axis=(0, 1.0)))(ones))
    expect(gradc.ArgumentError, ["axis must be an integer", "a traced array"],
           "np.concatenate(x, x)", lambda: gradc.grad(lambda x: np.sum(np.concatenate(x, x)))(X))
    np.testing.assert_array_equal(
        gradc.jit(lambda x: np.sum(x, axis=(np.int64(1), np.array(0))))(ones), 6.0)


def test_np_array_of_traced_values():
    def f(x):
        return np.sum(np.array([x[0], x[1]]))

    expect(gradc.ConcretizationError, ["np.stack"], "np.array([x[0], x[1]])",
           lambda: gradc.grad(f)(X))


def test_stop_gradient_is_the_way_out():
    def f(x):
        return np.sum(x) * float(gradc.stop_gradient(x[0]).val)

    # the escape hatch the messages recommend: no error, a derivative without the scale
    def g(x):
        return np.sum(x) * gradc.stop_gradient(x[0])

    np.testing.assert_allclose(gradc.grad(g)(X), np.full(3, X[0]))
    del f


# ---------------------------------------------------------------- arguments

def test_grad_with_respect_to_int():
    def f(x, n):
        return np.sum(x ** n)

    expect(gradc.ArgumentError, ["argument 1", "int", "float"],
           "gradc.grad(f, argnums=1)(X, 2)", lambda: gradc.grad(f, argnums=1)(X, 2))


def test_grad_with_respect_to_bool_and_int_array():
    def f(flag, x):
        return np.sum(x) if flag else np.sum(x ** 2)

    expect(gradc.ArgumentError, ["bool", "argument 0"], "gradc.grad(f)(True, X)",
           lambda: gradc.grad(f)(True, X))
    expect(gradc.ArgumentError, ["i64[3]"], "gradc.grad(np.sum)(np.arange(3))",
           lambda: gradc.grad(np.sum)(np.arange(3)))


def test_argnums_out_of_range():
    expect(gradc.ArgumentError, ["argnums=2"], "gradc.grad(np.dot, argnums=2)(X, X)",
           lambda: gradc.grad(np.dot, argnums=2)(X, X))


def test_non_scalar_output():
    def f(x):
        return np.sin(x)

    message = expect(gradc.NonScalarOutputError, ["scalar", "f64[3]", "vjp"],
                     "gradc.grad(f)(X)", lambda: gradc.grad(f)(X))
    assert "test_errors.py" in message and "f" in message


def test_integer_output_to_grad():
    def f(x):
        return np.argmax(x)

    expect(gradc.NonScalarOutputError, ["floating-point"], "gradc.grad(f)(X)",
           lambda: gradc.grad(f)(X))


def test_has_aux_without_pair():
    def f(x):
        return np.sum(x)

    expect(gradc.ArgumentError, ["has_aux", "pair"], "gradc.grad(f, has_aux=True)(X)",
           lambda: gradc.grad(f, has_aux=True)(X))


def test_returning_a_non_array():
    def f(x):
        return "loss"

    expect(gradc.ArgumentError, ["returned a str"], "gradc.grad(f)(X)",
           lambda: gradc.grad(f)(X))


# ---------------------------------------------------------------- shapes

def test_broadcast_failure():
    def f(x):
        return np.sum(x + np.ones(4))

    expect(gradc.ShapeError, ["broadcast", "(3,)", "(4,)"], "return np.sum(x + np.ones(4))",
           lambda: gradc.grad(f)(X))


def test_matmul_mismatch():
    def f(x):
        return np.sum(np.ones((2, 4)) @ x)

    expect(gradc.ShapeError, ["matmul", "(2, 4)", "(3,)"], "np.ones((2, 4)) @ x",
           lambda: gradc.grad(f)(X))

    def g(x):
        return np.sum(np.dot(x.reshape(3, 1), np.ones((2, 2))))

    expect(gradc.ShapeError, ["(3, 1)", "(2, 2)"], "np.dot(x.reshape(3, 1), np.ones((2, 2)))",
           lambda: gradc.grad(g)(X))


def test_reshape_mismatch():
    def f(x):
        return np.sum(x.reshape(2, 2))

    expect(gradc.ShapeError, ["reshape", "(3,)", "(2, 2)"], "x.reshape(2, 2)",
           lambda: gradc.grad(f)(X))


def test_concatenate_and_stack_mismatch():
    def f(x):
        return np.sum(np.stack([x, x[:2]]))

    expect(gradc.ShapeError, ["same shape"], "np.stack([x, x[:2]])", lambda: gradc.grad(f)(X))

    def g(x):
        return np.sum(np.concatenate([x[None], np.ones((1, 2))]))

    expect(gradc.ShapeError, ["concatenate"], "np.concatenate([x[None], np.ones((1, 2))])",
           lambda: gradc.grad(g)(X))


def test_index_out_of_bounds_and_too_many_indices():
    def f(x):
        return x[5]

    expect(gradc.ShapeError, ["index 5", "size 3"], "return x[5]", lambda: gradc.grad(f)(X))

    def g(x):
        return x[0, 1]

    expect(gradc.ShapeError, ["too many indices"], "return x[0, 1]", lambda: gradc.grad(g)(X))


def test_solve_shape_mismatch():
    def f(x):
        return np.sum(np.linalg.solve(np.eye(2), x))

    expect(gradc.ShapeError, ["solve"], "np.linalg.solve(np.eye(2), x)",
           lambda: gradc.grad(f)(X))


def test_conv2d_options_that_do_not_fit():
    """Bad strides, dilations and groups (ArgumentError), and shapes they do not fit
    (ShapeError, as a kernel that does not fit the image's channels always was): each
    named, with the user's line."""
    image = np.ones((1, 4, 6, 6))

    def check(error, fragments, *args, kernel=np.ones((2, 2, 3, 3)), **options):
        def conv(i, k):
            return np.sum(gradc.conv2d(i, k, *args, **options))
        return expect(error, fragments, "return np.sum(gradc.conv2d(i, k, *args, **options))",
                      lambda: gradc.grad(conv)(image, kernel))

    for name, value in (("stride", 0), ("stride", (1, -2)), ("stride", (1,)), ("stride", 1.5),
                        ("dilation", True), ("dilation", (2, 0)), ("dilation", "2")):
        check(gradc.ArgumentError, [f"conv2d: {name} must be an int >= 1", repr(value)],
              groups=2, **{name: value})
    for value in (0, -1, 2.0, None):
        check(gradc.ArgumentError, ["conv2d: groups must be an int >= 1", repr(value)],
              groups=value)
    message = check(gradc.ArgumentError, ["padding='same' needs stride 1", "stride=2"],
                    "same", stride=2, groups=2)
    assert "PyTorch" in message
    check(gradc.ShapeError, ["groups=3 must divide", "4 channels", "3 output channels"],
          kernel=np.ones((3, 1, 3, 3)), groups=3)
    check(gradc.ShapeError, ["groups=4 must divide", "2 output channels"],
          kernel=np.ones((2, 1, 3, 3)), groups=4)
    check(gradc.ShapeError, ["4 channels, 2 per group of 2", "expects 1",
                             "(O, C/groups, KH, KW)"], kernel=np.ones((2, 1, 3, 3)), groups=2)
    check(gradc.ShapeError, ["image has 4 channels but the kernel expects 2"])
    check(gradc.ShapeError, ["kernel 3x3 with dilation (3, 1) spans 7x3",
                             "larger than the padded image 6x6"], dilation=(3, 1), groups=2)
    check(gradc.ShapeError, ["kernel 3x3 is larger than the padded image"],
          ((-2, -2), (0, 0)), stride=2, groups=2)


def test_jvp_tangent_mismatch():
    expect(gradc.ArgumentError, ["tangent"], "gradc.jvp(np.sin, (X,), (np.ones(2),))",
           lambda: gradc.jvp(np.sin, (X,), (np.ones(2),)))


def test_tangent_and_cotangent_dtype_mismatches():
    """(jvp cast a float32 tangent to its float64 primal, and a float64 one to float32,
    silently; JAX refuses both.)  The message names the argument, both dtypes and the
    line; linearize's function, hvp and vjp's function check the same."""
    x32 = X.astype(np.float32)
    expect(gradc.TangentDTypeError, ["jvp", "argument 1", "float32", "float64"],
           "gradc.jvp(np.multiply, (X, X), (X, x32))",
           lambda: gradc.jvp(np.multiply, (X, X), (X, x32)))
    expect(gradc.TangentDTypeError, ["jvp", "argument 0", "float64", "float32"],
           "gradc.jvp(np.sin, (x32,), (X,))", lambda: gradc.jvp(np.sin, (x32,), (X,)))
    _, f_jvp = gradc.linearize(np.sin, x32)
    expect(gradc.TangentDTypeError, ["f_jvp", "argument 0", "float64", "float32"],
           "f_jvp(X)", lambda: f_jvp(X))
    _, vjp_fn = gradc.vjp(np.sin, x32)
    expect(gradc.TangentDTypeError, ["vjp_fn", "cotangent of output 0", "float64",
                                     "float32"], "vjp_fn(X)", lambda: vjp_fn(X))
    for method in ("fwd-rev", "rev-rev"):
        expect(gradc.TangentDTypeError, ["hvp", "float64", "float32"],
               "gradc.hvp(lambda x: np.sum(x ** 3), (x32,), (X,), method=method)",
               lambda: gradc.hvp(lambda x: np.sum(x ** 3), (x32,), (X,), method=method))
    # inside a transformation: the tangent a Tracer, the same error (not re-wrapped)
    expect(gradc.TangentDTypeError, ["jvp", "float32", "float64"],
           "gradc.jit(lambda x, t: gradc.jvp(np.sin, (x,), (t,))[1])(X, x32)",
           lambda: gradc.jit(lambda x, t: gradc.jvp(np.sin, (x,), (t,))[1])(X, x32))
    assert issubclass(gradc.TangentDTypeError, gradc.ArgumentError)
    assert issubclass(gradc.TangentDTypeError, TypeError)


def _sum_and_argmax(x):
    return np.sum(x ** 2), np.argmax(x), x > 0


def test_the_cotangent_of_an_integer_or_bool_output_is_zeros():
    """(QA: vjp_fn cast any cotangent of an integer output to its dtype: 2.5 silently
    became 2, NaN or 1e30 a bare ValueError/OverflowError.)  Such an output has no
    derivative; JAX wants float0 zeros there.  gradc takes zeros of any dtype (and a
    float0-like structured array), and refuses anything else, naming the output."""
    _, vjp_fn = gradc.vjp(_sum_and_argmax, X)
    float0 = [("float0", "V")]
    for ct in ((1.0, 0, np.zeros(3, bool)), (1.0, 0.0, np.zeros(3)),
               (1.0, np.zeros((), float0), np.zeros(3, float0))):
        np.testing.assert_allclose(vjp_fn(ct)[0], 2 * X)
    for ct, fragments in (
            ((1.0, 2.5, np.zeros(3)), ["output leaf 1 is a nonzero float64 cotangent",
                                       "output of type i64[]", "must be zeros", "float0"]),
            ((1.0, np.nan, np.zeros(3)), ["output leaf 1 is a nonzero float64"]),
            ((1.0, "a", np.zeros(3)), ["output leaf 1 is a <U1 cotangent"]),
            ((1.0, 0, np.ones(3, bool)), ["output leaf 2 is a nonzero bool cotangent",
                                          "bool[3]"])):
        expect(gradc.TangentDTypeError, ["vjp_fn: the cotangent of "] + fragments,
               "lambda: vjp_fn(ct))", lambda: vjp_fn(ct))
    # jacrev's rows pass zeros for its integer outputs: unchanged
    jac = gradc.jacrev(_sum_and_argmax)(X)
    np.testing.assert_allclose(jac[0], 2 * X)
    assert not np.any(jac[1]) and not np.any(jac[2])


def test_ambiguous_truth_value():
    def f(x):
        if x > 0:
            return np.sum(x)
        return 0.0

    expect(gradc.GradcError, ["ambiguous", "np.any"], "if x > 0:", lambda: gradc.grad(f)(X))


def test_leaked_tracer():
    leaked = []

    def f(x):
        leaked.append(x)
        return np.sum(x)

    gradc.grad(f)(X)

    def g(y):
        return np.sum(y * leaked[0])

    expect(gradc.TracerLeakError, ["escaped"], "return np.sum(y * leaked[0])",
           lambda: gradc.grad(g)(X))
    # (converted outside any trace: was a ConcretizationError about cutting derivatives)
    expect(gradc.TracerLeakError, ["after the function that made it returned"],
           "lambda: np.asarray(leaked[0])", lambda: np.asarray(leaked[0]))


def gather(i, x):
    return x[i] * 2


def assign(i, x):
    y = x.copy()
    y[i] = 1.0
    return y


def picked(y, x):
    return x[np.argmax(y) + 5]


def test_an_index_out_of_bounds_on_a_later_call_is_a_gradc_error():
    """A compiled gather, its gradient's scatter and an item assignment check the values
    of their index arrays as NumPy does: a later call with an index out of bounds (the
    graph was traced with valid ones) raises gradc's error naming the line, where the
    CPU target read outside the array or crashed the process; negative indices in
    bounds still count from the end.  (``test_cuda`` runs the same programs.)"""
    x = np.arange(8.0)
    for f, good, bad in ((gather, np.array([1, 2]), np.array([8, 1])),
                         (gather, np.array([1, 2]), np.array([0, -9])),
                         (assign, np.array([1, 2]), np.array([1000000, 1])),
                         (picked, np.array([1.0, 0, 0, 0]), np.array([0.0, 0, 0, 1]))):
        fn = gradc.jit(f, target="cpu")
        np.testing.assert_array_equal(fn(good, x), gradc.jit(f, target="numpy")(good, x))
        with pytest.raises(gradc.EvaluationError, match="out of bounds for an axis of size 8"
                           r"(.|\n)*test_errors.py:\d+: (return x|y\[i\] = )"):
            fn(bad, x)
    g = gradc.grad(lambda x, i: np.sum(gather(i, x) ** 2), target="cpu")
    np.testing.assert_array_equal(g(x, np.array([1, 1])), [0, 16, 0, 0, 0, 0, 0, 0])
    with pytest.raises(gradc.EvaluationError, match="out of bounds"):
        g(x, np.array([1, 9]))
    np.testing.assert_array_equal(gradc.jit(gather, target="cpu")(np.array([-8, -1]), x),
                                  [0.0, 14.0])


@pytest.mark.parametrize("target", ["numpy", "cpu", "parallel"])
def test_a_linalg_failure_on_a_later_call_is_a_gradc_error(target):
    """A singular matrix in a solve (the second derivatives of ``det`` go through one; a
    stack of systems with one singular) and a matrix that is not positive definite in a
    Cholesky factorization raise gradc's error naming the line on every target, where
    the CPU target let NumPy's ``LinAlgError`` through from inside the compiled code;
    a valid call after it runs.  ``det``'s gradient at the singular matrix is its
    cofactor matrix (adj(S)ᵀ), as JAX's and PyTorch's."""
    B = np.array([[1.0, 2.0], [3.0, 4.0]])
    S = np.array([[1.0, 2.0], [2.0, 4.0]])

    def det(a):
        return np.linalg.det(a)

    def solve(a, b):
        return np.linalg.solve(a, b[..., None])[..., 0]

    def chol(a):
        return np.sum(np.linalg.cholesky(a))
    g = gradc.grad(det, target=target)
    np.testing.assert_allclose(g(B), [[4.0, -3.0], [-2.0, 1.0]], rtol=1e-12)
    np.testing.assert_allclose(g(S), [[4.0, -2.0], [-2.0, 1.0]], rtol=1e-12)
    h = gradc.hessian(det, target=target)
    h(B)
    with pytest.raises(gradc.EvaluationError, match=r"(?i)solve.*singular"
                       r"(.|\n)*test_errors.py:\d+: return np.linalg.det"):
        h(S)
    np.testing.assert_allclose(h(2 * B)[0, 0], [[0.0, 0.0], [0.0, 1.0]], atol=1e-12)
    s = gradc.jit(solve, target=target)
    np.testing.assert_allclose(s(np.stack([B, B]), np.ones((2, 2))), [[-1.0, 1.0]] * 2)
    with pytest.raises(gradc.EvaluationError, match=r"(?i)singular(.|\n)*return np.linalg"):
        s(np.stack([B, S]), np.ones((2, 2)))
    c = gradc.grad(chol, target=target)
    P = B @ B.T
    np.testing.assert_allclose(c(P), gradc.grad(chol, target="numpy")(P), rtol=1e-10)
    with pytest.raises(gradc.EvaluationError, match=r"(?i)cholesky.*positive definite"
                       r"(.|\n)*return np.sum\(np.linalg.cholesky"):
        c(-P)
    # (Numba's LAPACK calls refuse infinities and NaNs, which NumPy's take: said so)
    N = np.array([[1.0, np.nan], [3.0, 4.0]])
    if target != "numpy":
        for f in (gradc.jit(det, target=target), g):
            with pytest.raises(gradc.EvaluationError, match="infinities or NaNs"
                               r"(.|\n)*return np.linalg.det"):
                f(N)


def test_python_internals_are_never_the_users_line():
    """A frame of Python's frozen modules (``python -m gradc`` starts in ``<frozen
    runpy>``) is not the user's line: the location skips to the caller's."""
    code = compile("import gradc\ngradc.vmap(lambda a: a, out_axes=1.5)\n",
                   "<frozen fake>", "exec")
    with pytest.raises(gradc.ArgumentError) as info:
        exec(code, {})
    assert "<frozen" not in str(info.value) and "test_errors.py" in str(info.value)


def test_average_weights_that_fit_no_axis():
    with pytest.raises(gradc.ShapeError, match=r"weights of shape \(4,\) fit neither a of "
                                               r"shape \(3, 4\) nor its axis 0"):
        gradc.jit(lambda x: np.average(x, axis=0, weights=np.ones(4)))(np.ones((3, 4)))


def test_in_place_operator_that_numpy_refuses_to_cast():
    """``int_array += 1.5`` (or ``/= 2``, or through ``y[...]``) is NumPy's UFuncTypeError,
    not a silent truncation; within a kind (float64 into float32) it is allowed."""
    def f(i):
        y = i.copy()
        y += 1.5
        return y

    def g(i):
        y = i.copy()
        y[...] /= 2
        return y

    ints = np.array([1, 2])
    expect(gradc.DTypeError, ["np.add in place", "float64", "int64", "same_kind"],
           "y += 1.5", lambda: gradc.jit(f)(ints))
    expect(gradc.DTypeError, ["np.divide in place", "same_kind"], "y[...] /= 2",
           lambda: gradc.jit(g)(ints))

    def h(x):
        y = x.astype(np.float32)
        y += np.float64(1.5)
        y *= 2
        return y
    got = gradc.jit(h)(ints)
    assert got.dtype == np.float32 and got.tolist() == h(ints).tolist()


def test_a_users_folder_named_numpy_is_the_users(tmp_path):
    """(QA: any path containing ``numpy/`` was taken for NumPy's code, so errors from a
    checkout at ``/tmp/wt_numpy/`` named no line.)"""
    import importlib.util
    folder = tmp_path / "numpy"
    folder.mkdir()
    (folder / "user_code.py").write_text(
        "import numpy as np\n\ndef f(x):\n    return float(np.sum(x))\n")
    spec = importlib.util.spec_from_file_location("user_code", folder / "user_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(gradc.ConcretizationError) as e:
        gradc.grad(module.f)(np.ones(2))
    assert f"{folder / 'user_code.py'}:4" in str(e.value)


def test_the_view_method_of_a_traced_array():
    """(QA: the Tracer's record of what it is a view of was an attribute named ``view``,
    which hid ndarray's method: ``x.view(...)`` raised "'NoneType' object is not
    callable".)  ``x.view()`` is a view, as NumPy's: writes reach x; a view as another
    dtype reinterprets bytes, which is named as unsupported."""
    def f(x):
        y = x * 1.0
        v = y.view()
        v[0] = 5.0
        return np.sum(y ** 2)

    np.testing.assert_array_equal(gradc.grad(f)(X), [0.0, -2.0, 4.0])
    np.testing.assert_array_equal(gradc.jit(lambda x: x.view(np.float64) * 2)(X), 2 * X)

    def g(x):
        return np.sum(x[1:].view(np.int64) * 1.0)

    expect(gradc.UnsupportedError, ["x.view(int64)", "x.astype(np.int64)"],
           "return np.sum(x[1:].view(np.int64) * 1.0)", lambda: gradc.grad(g)(X))


def _view_then_write_to_base(x):
    y = x * 1.0
    v = y[:2]
    y[0] = 9.0
    return np.sum(v ** 2)


def _sibling_views(x):
    y = x * 1.0
    a, b = y[:2], y[1:]
    a[1] = 7.0
    return np.sum(b ** 2)


def _transposed_view_then_scaled_base(x):
    y = np.outer(x, x[:2])
    t = y.T
    y *= 2.0
    return np.sum(t[0] ** 3)


def _rows_kept_while_the_table_is_updated(x):
    y = np.outer(x[:2], x)
    rows = [y[i] for i in range(2)]
    for i in range(2):
        y[i] = y[i] * (i + 2)
    return np.sum(rows[0] * rows[1])


@pytest.mark.parametrize("f", [_view_then_write_to_base, _sibling_views,
                               _transposed_view_then_scaled_base,
                               _rows_kept_while_the_table_is_updated])
def test_a_write_to_an_array_reaches_the_views_made_of_it_earlier(f):
    """(QA: a silent wrong derivative.)  As in NumPy, a view made before a write to its
    base (or to a sibling view) sees the write; it kept the old values, so value and
    gradient were those of another program."""
    from gradc.testing import numerical_grad
    expected = f(X.copy())                      # NumPy's own semantics
    assert np.isclose(gradc.jit(f)(X), expected)
    np.testing.assert_allclose(gradc.grad(f)(X), numerical_grad(lambda z: f(z.copy()), X),
                               rtol=1e-6, atol=1e-8)


def test_defjvps_with_a_rule_per_argument_missing_or_extra():
    """(QA: a silent wrong derivative: the rules were zipped with the arguments, so a
    missing rule dropped its argument's part of the derivative.)  JAX's defjvps wants
    one rule per argument, None for one without derivative: the count is checked."""
    @gradc.custom_jvp
    def scaled_sin(x, y):
        return np.sin(x) * y

    scaled_sin.defjvps(lambda t, out, x, y: np.cos(x) * y * t)

    def f(x):
        return np.sum(scaled_sin(x, x))

    expect(gradc.ArgumentError, ["defjvps got 1 rule for 2 differentiated arguments",
                                 "None for an argument without derivative"],
           "scaled_sin.defjvps(lambda t, out, x, y: np.cos(x) * y * t)",
           lambda: gradc.grad(f)(X))
    scaled_sin.defjvps(lambda t, out, x, y: np.cos(x) * y * t, None)
    np.testing.assert_allclose(gradc.grad(f)(X), np.cos(X) * X)


def test_matrix_and_masked_array_arguments():
    """(QA: silent wrong derivatives.)  gradc traced an np.matrix argument as an ndarray,
    where m * m is elementwise (np.matrix's is a matrix product), and a masked array's
    data with its mask ignored (np.ma's sum skips masked entries)."""
    S = np.matrix([[2.0, 1.0], [1.0, 3.0]])
    expect(gradc.ArgumentError, ["np.matrix", "np.asarray(m)", "@"],
           "gradc.grad(lambda m: np.sum(m * m))(S)",
           lambda: gradc.grad(lambda m: np.sum(m * m))(S))
    masked = np.ma.masked_array(X, mask=[0, 1, 0])
    expect(gradc.ArgumentError, ["masked array", "ignore the mask", "np.where(mask"],
           "gradc.jit(lambda p: p[0] * 2)((masked,))",
           lambda: gradc.jit(lambda p: p[0] * 2)((masked,)))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_fixed_point_iteration_that_diverges(target):
    """(QA: x = 2x + t overflowed to ~1e154, where a step below tol * |x|² (inf) passed
    for convergence: the value came back with no warning.)  Iterates that overflow are
    not a fixed point: an error naming the line."""
    def f(t):
        return np.sum(gradc.fixed_point(lambda x, t: 2.0 * x + t, np.zeros(3), t))

    with np.errstate(all="ignore"):
        for call in (gradc.value_and_grad(f, target=target), gradc.jit(f, target=target)):
            expect(gradc.EvaluationError, ["fixed_point diverged", "overflowed",
                                           "contraction"],
                   "return np.sum(gradc.fixed_point(lambda x, t: 2.0 * x + t",
                   lambda: call(X))
    value, _ = gradc.value_and_grad(lambda t: np.sum(gradc.fixed_point(
        lambda x, t: 0.5 * x + t, np.zeros(3), t)), target=target)(X)
    assert np.isclose(value, 2 * np.sum(X))


def test_code_gradc_generates_is_not_the_users_line():
    """(QA: an error raised in a dataclass's generated ``__init__`` (a linear solve's
    settings) named ``<string>:8`` as the user's line.)"""
    def f(b):
        return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, solve="bogus"))

    expect(gradc.ArgumentError, ["solve='bogus'"],
           'return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, solve="bogus"))',
           lambda: gradc.grad(f)(X))
    def g(b):
        return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, tol=-1.0))

    message = expect(gradc.ArgumentError, ["tol must be > 0"],
                     "return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, tol=-1.0))",
                     lambda: gradc.grad(g)(X))
    assert "<string>" not in message


def _plain_sum(x):
    return np.sum(x)


def test_functions_handed_to_gradc_are_checked_where_they_are_handed_over():
    """(QA: a value where a function goes, or a function of the wrong arity, was a
    TypeError from deep inside gradc ("'Tracer' object is not callable", "takes 1
    positional argument but 2 were given") naming no line of the user's.)"""
    def f(x):
        c, _ = gradc.scan(np.sum(x), 0.0, x)
        return c

    expect(gradc.ArgumentError, ["scan: the body f(carry, x) must be a function",
                                 "a traced array"], "c, _ = gradc.scan(np.sum(x), 0.0, x)",
           lambda: gradc.grad(f)(X))

    def g(x):
        return gradc.fori_loop(0, 3, lambda acc: acc * 2, x[0])

    expect(gradc.ArgumentError, ["fori_loop: body_fun(i, val) is called with 2 positional",
                                 "<lambda> (defined at", "too many positional arguments"],
           "return gradc.fori_loop(0, 3, lambda acc: acc * 2, x[0])",
           lambda: gradc.grad(g)(X))

    def h(x):       # (JAX's old cond took the operands as one tuple)
        return np.sum(gradc.cond(x[0] > 0, lambda a, b: a * b, lambda a, b: a + b, (x, x)))

    expect(gradc.ArgumentError, ["cond: true_fun takes 2 arguments and is given one tuple",
                                 "cond(pred, true_fun, false_fun, *operands)"],
           "gradc.cond(x[0] > 0, lambda a, b: a * b, lambda a, b: a + b, (x, x))",
           lambda: gradc.grad(h)(X))
    expect(gradc.ArgumentError, ["while_loop: body_fun(val) must be a function"],
           "gradc.while_loop(lambda v: v[0] > 9, 2.0, v)",
           lambda: gradc.jit(lambda v: gradc.while_loop(lambda v: v[0] > 9, 2.0, v))(X))
    expect(gradc.ArgumentError, ["gradc.jacfwd: the function must be a function, got",
                                 "ndarray"], "gradc.jacfwd(X)", lambda: gradc.jacfwd(X))
    expect(gradc.ArgumentError, ["gradc.hessian: the function must be a function"],
           'gradc.hessian("loss")', lambda: gradc.hessian("loss"))

    @gradc.custom_vjp
    def sin(x):
        return np.sin(x)

    sin.defvjp(lambda x: (np.sin(x), np.cos(x)), lambda g: (g,))
    expect(gradc.ArgumentError, ["bwd(*nondiff, residuals, ct) is called with 2",
                                 "<lambda> (defined at", "too many positional arguments"],
           "lambda: gradc.grad(lambda v: np.sum(sin(v)))(X))",
           lambda: gradc.grad(lambda v: np.sum(sin(v)))(X))
    expect(gradc.ArgumentError, ["defvjp: bwd must be a function, got a NoneType"],
           "lambda: sin.defvjp(np.sin, None))", lambda: sin.defvjp(np.sin, None))
    expect(gradc.ArgumentError, ["gradc.checkpoint: the function must be a function"],
           "gradc.checkpoint(X)", lambda: gradc.checkpoint(X))
    expect(gradc.ArgumentError, ["linear_solve: matvec must be a function v -> A @ v",
                                 "lambda v: A @ v"], "gradc.linear_solve(np.eye(3), X)",
           lambda: gradc.linear_solve(np.eye(3), X))
    expect(gradc.ArgumentError, ["argmin: objective(x, *params) is called with 2"],
           "gradc.argmin(_plain_sum, np.zeros(3), X)",
           lambda: gradc.argmin(_plain_sum, np.zeros(3), X))


def test_implicit_diff_without_its_optimality_function():
    """(QA: ``@gradc.implicit_diff`` without ``(optimality_fn)`` made the solver the
    optimality function; calling the solver was "decorate() takes 1 positional argument
    but 2 were given".)"""
    @gradc.implicit_diff
    def solver(init, theta):
        return theta * 1.0

    expect(gradc.ArgumentError, ["@gradc.implicit_diff(optimality_fn) above the solver"],
           "@gradc.implicit_diff", lambda: solver(X, X))

    def opt(y):
        return y - 1.0

    @gradc.implicit_diff(opt)
    def solver2(init, theta):
        return init * 0 + theta

    expect(gradc.ArgumentError, ["the optimality function of solver2 is called with 2",
                                 "opt (defined at"],
           "lambda: gradc.grad(lambda t: np.sum(solver2(X, t)))(X)",
           lambda: gradc.grad(lambda t: np.sum(solver2(X, t)))(X))


def test_checkpoint_with_settings_as_a_decorator():
    """``@gradc.checkpoint(static_argnums=...)`` (as ``@gradc.grad(argnums=...)``) was
    "missing 1 required positional argument: 'fun'"."""
    @gradc.checkpoint(static_argnums=(1,))
    def scaled(x, n):
        return np.sin(x) * n

    np.testing.assert_allclose(gradc.grad(lambda v: np.sum(scaled(v, 2)))(X), 2 * np.cos(X))


def test_operands_that_are_not_numbers():
    """(QA: ``x + "1"`` made a traced string array, which failed later, inside np.sum,
    with NumPy's "the resolved dtypes are not compatible with add.reduce"; a ragged list
    was NumPy's ValueError from inside gradc.)"""
    expect(gradc.DTypeError, ["a string ('1') where gradc traces numbers"],
           'gradc.grad(lambda x: np.sum(x + "1"))(X)',
           lambda: gradc.grad(lambda x: np.sum(x + "1"))(X))
    expect(gradc.DTypeError, ["a date", "datetime64"],
           'gradc.jit(lambda x: x + np.datetime64("2020-01-01"))(X)',
           lambda: gradc.jit(lambda x: x + np.datetime64("2020-01-01"))(X))
    image = np.full((1, 1, 2, 2), None)
    expect(gradc.DTypeError, ["a Python object", "dtype object"],
           "gradc.jit(lambda k: gradc.conv2d(image, k))(np.ones((1, 1, 1, 1)))",
           lambda: gradc.jit(lambda k: gradc.conv2d(image, k))(np.ones((1, 1, 1, 1))))
    expect(gradc.ShapeError, ["a list operand that is not an array of numbers",
                              "inhomogeneous"], "gradc.grad(lambda x: np.sum(x + [1.0, [2.0]]))",
           lambda: gradc.grad(lambda x: np.sum(x + [1.0, [2.0]]))(X))


def test_a_slice_with_a_zero_step_or_a_float_bound():
    """(QA: NumPy's ValueError "slice step cannot be zero" came from inside gradc with no
    line of the user's; a float bound was its TypeError.)"""
    expect(gradc.ShapeError, ["slice ::0", "step cannot be zero"], "np.sum(x[::0])",
           lambda: gradc.grad(lambda x: np.sum(x[::0]))(X))
    expect(gradc.ArgumentError, ["slice 0.5:2", "integers"], "np.sum(x[0.5:2])",
           lambda: gradc.grad(lambda x: np.sum(x[0.5:2]))(X))


def test_pad_repeat_and_diff_arguments_numpy_refuses():
    """(QA: np.pad's pad_width for another dimension and np.repeat's repeats of the wrong
    length were NumPy's ValueError from inside gradc, naming no line; np.diff(x, n=-1)
    returned x where NumPy refuses it.)"""
    expect(gradc.ShapeError, ["np.pad: pad_width ((1, 1), (1, 1))", "dimension 1"],
           "np.sum(np.pad(x, ((1, 1), (1, 1))))",
           lambda: gradc.grad(lambda x: np.sum(np.pad(x, ((1, 1), (1, 1)))))(X))
    expect(gradc.ShapeError, ["np.repeat: repeats of shape (2,)", "axis of size 3"],
           "np.sum(np.repeat(x, [1, 2]))",
           lambda: gradc.grad(lambda x: np.sum(np.repeat(x, [1, 2])))(X))
    expect(gradc.InvalidValueError, ["np.diff: order must be non-negative"],
           "np.sum(np.diff(x, n=-1))", lambda: gradc.grad(lambda x: np.sum(np.diff(x, n=-1)))(X))


def test_assigning_to_the_shape_of_a_traced_array():
    """(QA: Python's AttributeError "property 'shape' of 'Tracer' object has no setter",
    naming neither the problem nor the line.)"""
    def f(x):
        y = x * 1.0
        y.shape = (3, 1)
        return np.sum(y @ y.T)

    expect(gradc.UnsupportedError, ["x.shape = (3, 1)", "x = x.reshape((3, 1))"],
           "y.shape = (3, 1)", lambda: gradc.grad(f)(X))


def test_in_place_operator_on_a_numpy_array_with_a_traced_operand():
    """(QA: ``z += x`` with z a NumPy array said "np.add(..., out=...) on a traced array:
    ... write the result to a new variable", though z is not traced.)"""
    def f(x):
        z = np.zeros(3)
        z += x
        return np.sum(z ** 2)

    expect(gradc.UnsupportedError, ["np.add(..., out=a NumPy array)", "z = z + x",
                                    "np.zeros_like(x, shape=shape)"], "z += x",
           lambda: gradc.grad(f)(X))


def test_a_leaked_tracer_turned_into_a_number():
    """(QA: float() of a traced value kept after its trace said it "would cut its
    derivative", where np.asarray of it says it escaped.)"""
    saved = []

    def f(x):
        saved.append(x[0])
        return np.sum(x)

    gradc.grad(f)(X)
    expect(gradc.TracerLeakError, ["float() on a traced value after the function",
                                   "escaped"], "lambda: float(saved[0])",
           lambda: float(saved[0]))
    expect(gradc.TracerLeakError, ["int()"], "lambda: int(saved[0])", lambda: int(saved[0]))


def test_eval_graph_with_arguments_the_graph_was_not_traced_for():
    """(QA: the wrong number of arguments was a bare TypeError from inside gradc; an
    argument of another shape was evaluated silently, the Graph's sum over 3 elements
    summing 4.)"""
    graph = gradc.make_graph(lambda x: np.sum(np.sin(x) ** 2))(X)
    expect(gradc.ArgumentError, ["the Graph takes 1 input (f64[3]), got 2"],
           "gradc.eval_graph(graph, [X, X])", lambda: gradc.eval_graph(graph, [X, X]))
    expect(gradc.ShapeError, ["input 0 has shape (4,)", "traced for f64[3]"],
           "gradc.eval_graph(graph, [np.ones(4)])",
           lambda: gradc.eval_graph(graph, [np.ones(4)]))
    assert np.isclose(gradc.eval_graph(graph, [X])[0], np.sum(np.sin(X) ** 2))


def test_static_argnames_that_name_no_parameter():
    """(QA: a misspelt static_argnames was ignored: the argument it meant was traced.)"""
    def f(x, scale=1.0):
        return x * scale

    expect(gradc.ArgumentError, ["static_argnames has 'scal'", "no parameter of that name",
                                 "scale, x"], 'gradc.jit(f, static_argnames="scal")',
           lambda: gradc.jit(f, static_argnames="scal"))
    np.testing.assert_array_equal(gradc.jit(f, static_argnames="scale")(X, scale=2.0), 2 * X)


def test_loop_lengths_and_bounds_that_are_not_counts():
    """(QA: scan(length=2.5) ran 2 steps and length=-2 none, fori_loop(0, 2.5, ...) ran 2:
    int() truncated them silently; a fori_loop body changing its value's shape was
    reported as scan's.)"""
    def steps(n):
        return lambda x: gradc.scan(lambda c, _: (c * 2, None), np.sum(x), length=n)[0]

    for n in (2.5, -2):
        expect(gradc.ArgumentError, ["scan: length is a count of steps", repr(n)],
               "return lambda x: gradc.scan(lambda c, _: (c * 2, None), np.sum(x), length=n)",
               lambda: gradc.grad(steps(n))(X))
    def truncated(x):
        return gradc.fori_loop(0, 2.5, lambda i, acc: acc + x[i], 0.0)

    expect(gradc.ArgumentError, ["fori_loop: the bounds are integers, got 2.5"],
           "return gradc.fori_loop(0, 2.5, lambda i, acc: acc + x[i], 0.0)",
           lambda: gradc.grad(truncated)(X))

    def grows(x):
        return np.sum(gradc.fori_loop(0, 3, lambda i, acc: acc + x, 0.0))

    expect(gradc.ArgumentError, ["fori_loop: the body changes carry leaf 0 from f64[] to "
                                 "f64[3]"], "gradc.fori_loop(0, 3, lambda i, acc: acc + x, 0.0)",
           lambda: gradc.grad(grows)(X))
    np.testing.assert_array_equal(
        gradc.grad(lambda x: gradc.fori_loop(0, np.array(2), lambda i, acc: acc + x[i], 0.0))(X),
        [1.0, 1.0, 0.0])


def test_conv2d_with_a_kernel_that_is_not_4_d():
    """(QA: ``IndexError: tuple index out of range`` from inside gradc.conv2d.)"""
    image = np.ones((1, 2, 5, 5))
    expect(gradc.ShapeError, ["conv2d: expected image (N, C, H, W) and kernel (O, C, KH, KW)",
                              "(3, 3)"], "np.sum(gradc.conv2d(i, np.ones((3, 3))))",
           lambda: gradc.grad(lambda i: np.sum(gradc.conv2d(i, np.ones((3, 3)))))(image))


def test_check_and_check_grads_arguments():
    """(QA: gradc.check(f) without arguments was the function's own TypeError from inside
    gradc, rtol="tight" a TypeError in its arithmetic, modes="rev" read as ('r', 'e',
    'v'); check_grads' refusals named no line, and check_grads(f, x) spread x's rows as
    arguments.)"""
    from gradc.testing import check_grads

    def loss(x):
        return np.sum(np.sin(x) ** 2)

    expect(gradc.ArgumentError, ["gradc.check: the function is called with 0 positional",
                                 "missing a required argument: 'x'"], "gradc.check(loss)",
           lambda: gradc.check(loss))
    expect(gradc.ArgumentError, ["rtol is a number >= 0", "'tight'"],
           'gradc.check(loss, X, rtol="tight")', lambda: gradc.check(loss, X, rtol="tight"))
    assert gradc.check(loss, X, modes="rev", against="fd", targets="numpy").ok
    expect(gradc.ArgumentError, ["args is the tuple of f's positional arguments", "(x,)"],
           "check_grads(loss, X)", lambda: check_grads(loss, X))
    expect(gradc.InvalidValueError, ["check_grads: order must be 1 or 2, got 3"],
           "check_grads(loss, (X,), order=3)", lambda: check_grads(loss, (X,), order=3))
    check_grads(loss, (X,), modes="rev")


def test_linear_solve_settings_that_are_not_numbers():
    """(QA: ridge="small" was float()'s ValueError from inside gradc; maxiter=0 ran the
    default number of iterations.)"""
    def f(b):
        return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, ridge="small"))

    expect(gradc.ArgumentError, ["tol and ridge are numbers", "ridge='small'"],
           'return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, ridge="small"))',
           lambda: gradc.grad(f)(X))

    def g(b):
        return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, maxiter=0))

    expect(gradc.ArgumentError, ["maxiter is a count of matrix-vector products, >= 1"],
           "return np.sum(gradc.linear_solve(lambda v: 2.0 * v, b, maxiter=0))",
           lambda: gradc.grad(g)(X))


def test_np_vectorize_is_named_as_the_user_wrote_it():
    """(QA: the error named "numpy.lib.__call__", the method np.vectorize runs.)"""
    def step(v):
        return v * 2.0 if v > 0 else v

    doubled = np.vectorize(step)
    expect(gradc.ConcretizationError, ["np.vectorize converts its arguments",
                                       "np.where for a branch"],
           "gradc.grad(lambda x: np.sum(doubled(x)))(X)",
           lambda: gradc.grad(lambda x: np.sum(doubled(x)))(X))


def test_the_command_line_names_the_line_of_an_error_in_the_users_function(tmp_path, capsys):
    """(QA: ``gradc check`` of a function NumPy itself fails on (the reference run) printed
    "ValueError: operands could not be broadcast ..." with no line; so did the
    function's own exceptions.)"""
    from gradc import cli
    path = tmp_path / "funcs.py"
    path.write_text("import numpy as np\n\n\ndef two(x, y):\n    return np.sum(x * y)\n\n\n"
                    "def broken(x):\n    raise RuntimeError('user bug')\n")
    assert cli.main(["check", f"{path}:two", "--args", "f64[3], f64[4]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradc: error: ValueError: operands could not be broadcast"), err
    assert err.endswith(f"(at {path}:5: return np.sum(x * y))"), err
    assert cli.main(["show", f"{path}:broken", "--args", "f64[3]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"user bug (at {path}:9: raise RuntimeError('user bug'))"), err


def test_a_boolean_scalar_as_an_index():
    """(QA: a silent wrong value: x[True], a Python bool being an int, read as x[1]; NumPy
    gives x[None].  A traced boolean scalar was "nonzero failed ... Calling nonzero on 0d
    arrays", np.True_ "arrays used as indices must be of integer or boolean type, got
    bool".)"""
    for true in (True, np.True_):
        np.testing.assert_array_equal(gradc.jit(lambda x: x[true] * 2)(X), X[None] * 2)
    expect(gradc.UnsupportedError, ["x[cond] with a traced boolean scalar", "np.where"],
           "gradc.grad(lambda x: np.sum(x[x[0] > 0]))(X)",
           lambda: gradc.grad(lambda x: np.sum(x[x[0] > 0]))(X))


def test_one_hot_with_a_number_of_classes_that_is_not_an_int():
    """(QA: num_classes=2.5 gave 3 classes, np.arange(2.5)'s, silently.)"""
    expect(gradc.ArgumentError, ["one_hot: num_classes is an int, got 2.5"],
           "gradc.nn.one_hot(k, 2.5)",
           lambda: gradc.jit(lambda k: gradc.nn.one_hot(k, 2.5))(np.array([0, 1])))


def _write_into_broadcast_to(x):
    v = np.broadcast_to(x, (2, 3))
    v[0, 0] = 1.0
    return np.sum(v)


def _add_into_broadcast_to(x):
    v = np.broadcast_to(x, (2, 3))
    v += 1.0
    return np.sum(v)


def _write_into_same_shape_broadcast_to(x):
    v = np.broadcast_to(x, (3,))
    v[0] = 1.0
    return np.sum(v)


def _write_into_a_row_of_broadcast_to(x):
    v = np.broadcast_to(x, (2, 3)).T
    v[0] = 1.0
    return np.sum(v)


def _write_into_windows(x):
    v = np.lib.stride_tricks.sliding_window_view(x, 2)
    v[0, 1] = 1.0
    return np.sum(v)


def _write_into_broadcast_arrays(x):
    v, _ = np.broadcast_arrays(x, np.ones((2, 1)))
    v[0, 0] = 1.0
    return np.sum(v)


def _write_into_meshgrid_views(x):
    v, _ = np.meshgrid(x, x[:2], copy=False)
    v[0, 0] = 1.0
    return np.sum(v)


@pytest.mark.parametrize("f, made_by, line", [
    (_write_into_broadcast_to, "np.broadcast_to", "v[0, 0] = 1.0"),
    (_add_into_broadcast_to, "np.broadcast_to", "v += 1.0"),
    (_write_into_same_shape_broadcast_to, "np.broadcast_to", "v[0] = 1.0"),
    (_write_into_a_row_of_broadcast_to, "np.broadcast_to", "v[0] = 1.0"),
    (_write_into_windows, "np.lib.stride_tricks.sliding_window_view", "v[0, 1] = 1.0"),
    (_write_into_broadcast_arrays, "np.broadcast_arrays", "v[0, 0] = 1.0"),
    (_write_into_meshgrid_views, "np.meshgrid(copy=False)", "v[0, 0] = 1.0")])
def test_a_write_into_a_read_only_view_is_refused_as_numpy(f, made_by, line):
    """(QA: broadcast_to's and sliding_window_view's views took writes, which NumPy
    refuses; broadcast_arrays's, which NumPy deprecates, wrote one element where NumPy
    writes every element the broadcast repeats: a silent other value.)"""
    if made_by in ("np.broadcast_arrays", "np.meshgrid(copy=False)"):
        with pytest.warns(DeprecationWarning):      # NumPy: a write it will refuse
            f(X.copy())
    else:
        with pytest.raises(ValueError, match="read-only"):
            f(X.copy())
    for call in (lambda: gradc.jit(f)(X), lambda: gradc.grad(f)(X)):
        message = expect(gradc.ReadOnlyError, ["assignment destination is read-only",
                                               f"made by {made_by}", ".copy()"], line, call)
        assert message.splitlines()[-1].strip().endswith(line)
    assert issubclass(gradc.ReadOnlyError, ValueError)      # (NumPy's is a ValueError)


def _read_only_views_then_write_to_base(x):
    y = x * 1.0
    b = np.broadcast_to(y, (2, 3))
    w = np.lib.stride_tricks.sliding_window_view(y, 2)
    y[1] = y[0] * y[2]
    return np.sum(b[1] * np.arange(3.0)) + np.sum(w ** 2)


def _written_copies_of_read_only_views(x):
    b = np.broadcast_to(x, (2, 3)).copy()
    b[0, 0] = 5.0 * x[1]
    w = np.lib.stride_tricks.sliding_window_view(x, 2).copy()
    w[0] *= x[2]
    g, _ = np.meshgrid(x, x[:2])                 # (copy=True: arrays of its own)
    g[1, 1] = 0.0
    return np.sum(b ** 2) + np.sum(w ** 3) + np.sum(g * x)


@pytest.mark.parametrize("f", [_read_only_views_then_write_to_base,
                               _written_copies_of_read_only_views])
def test_read_only_views_see_writes_to_their_base_and_copies_of_them_take_writes(f):
    from gradc.testing import numerical_grad
    expected = f(X.copy())
    assert np.isclose(gradc.jit(f)(X), expected)
    np.testing.assert_allclose(gradc.grad(f)(X), numerical_grad(lambda z: f(z.copy()), X),
                               rtol=1e-6, atol=1e-8)


def test_as_strided_names_what_to_use_instead():
    def f(x):
        return np.sum(np.lib.stride_tricks.as_strided(x, (2, 2), (8, 8)))

    expect(gradc.ConcretizationError, ["as_strided", "sliding_window_view",
                                       "np.broadcast_to"],
           "return np.sum(np.lib.stride_tricks.as_strided(x, (2, 2), (8, 8)))",
           lambda: gradc.grad(f)(X))


def test_transformations_check_their_primals_tangents_cotangents_and_functions():
    """(QA: hvp of a float or 0-d array was a bare TypeError from len(), and a 1-element
    array x was taken as the tuple (x[0],): a silently different result; vjp_fn(a, b) a
    bare TypeError; jvp/vjp/linearize of an array "'numpy.ndarray' object is not
    callable"; hessian(f)(x, y) of a one-argument f a bare TypeError.)"""
    def f(x):
        return np.sum(x ** 3)

    one = np.array([2.0])
    for primals, got in ((1.0, "got float and float"), (one, "got ndarray and ndarray"),
                         (None, "got NoneType and NoneType")):
        expect(gradc.ArgumentError, ["hvp(f, primals, tangents): primals and tangents must "
                                     "be tuples of one argument each", got],
               "lambda: gradc.hvp(f, primals, primals))",
               lambda: gradc.hvp(f, primals, primals))
    np.testing.assert_allclose(gradc.hvp(f, (one,), (np.ones(1),)), [12.0])
    expect(gradc.ArgumentError, ["hvp(f, (x,), (v,)): one primal and one tangent"],
           "gradc.hvp(f, (X,), (X, X))", lambda: gradc.hvp(f, (X,), (X, X)))
    out, vjp_fn = gradc.vjp(f, X)
    expect(gradc.ArgumentError, ["vjp_fn takes one cotangent", "got 2 arguments"],
           "lambda: vjp_fn(1.0, 2.0))", lambda: vjp_fn(1.0, 2.0))
    expect(gradc.ArgumentError, ["vjp_fn takes one cotangent", "got 0 arguments"],
           "lambda: vjp_fn())", lambda: vjp_fn())
    np.testing.assert_allclose(vjp_fn(1.0)[0], 3 * X ** 2)
    for name, call in (("jvp", lambda: gradc.jvp(X, (X,), (X,))),
                       ("vjp", lambda: gradc.vjp(X, X)),
                       ("linearize", lambda: gradc.linearize(X, X))):
        expect(gradc.ArgumentError, [f"gradc.{name}: the function must be a function, got",
                                     "ndarray"], f"gradc.{name}(X, ", call)
    expect(gradc.ArgumentError, ["gradc.jacrev: the function is called with 2 positional",
                                 "f (defined at", "too many positional arguments"],
           "gradc.hessian(f)(X, X)", lambda: gradc.hessian(f)(X, X))
