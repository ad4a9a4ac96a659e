"""Python control flow on traced values: guards, re-tracing, and static loop counts.

A transformed function must never return the derivative of the path it was traced
on when new inputs take another one.  Each test counts the traces (calls of the
Python function) and checks derivatives of every path against finite differences.
"""
import numpy as np
import pytest

import gradc
from gradc.testing import numerical_grad as fd


class Counted:
    """Wraps a function and counts how often Python runs it (i.e. how often it traces)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_if_on_scalar_takes_the_right_branch_and_retraces():
    def f(x):
        if x > 0:
            return np.sin(x) * x
        return x ** 3 - 2.0 * x

    cf = Counted(f)
    df = gradc.grad(cf)
    for x in (0.7, 1.3):
        assert df(x) == pytest.approx(float(fd(f, x)), rel=1e-7)
    assert cf.calls == 1                     # the positive path, traced once
    for x in (-0.4, -1.1):
        assert df(x) == pytest.approx(float(fd(f, x)), rel=1e-7)
    assert cf.calls == 2                     # the negative path, one more trace
    assert df(0.5) == pytest.approx(float(fd(f, 0.5)), rel=1e-7)
    assert df(-0.5) == pytest.approx(float(fd(f, -0.5)), rel=1e-7)
    assert cf.calls == 2                     # both paths are cached now


def test_if_on_array_reduction_in_jvp_and_vjp():
    def f(x):
        if np.sum(x) > 1.0:
            y = x * np.exp(-x)
        else:
            y = np.tanh(x) * 2.0
        return y

    cf = Counted(f)
    t = np.array([0.3, -0.2, 0.5])
    for x in (np.array([1.0, 0.5, 0.2]), np.array([-1.0, 0.5, 0.2]), np.array([2.0, 1.0, 0.0])):
        _, tout = gradc.jvp(cf, (x,), (t,))
        expected = (f(x + 1e-6 * t) - f(x - 1e-6 * t)) / 2e-6
        np.testing.assert_allclose(tout, expected, rtol=1e-6, atol=1e-9)
        _, vjp_fn = gradc.vjp(f, x)
        np.testing.assert_allclose(vjp_fn(t)[0] @ t, expected @ t, rtol=1e-6)
    assert cf.calls == 2


def newton_sqrt(a, tol=1e-12):
    x = a
    err = abs(x * x - a)
    while err > tol:
        x = 0.5 * (x + a / x)
        err = abs(x * x - a)
    return x


def test_while_loop_newton_sqrt():
    cf = Counted(newton_sqrt)
    d = gradc.grad(cf)
    for a in (2.0, 9.0, 0.3):
        # the derivative of the converged iteration is that of sqrt
        assert d(a) == pytest.approx(0.5 / np.sqrt(a), rel=1e-8)
        assert newton_sqrt(a) == pytest.approx(np.sqrt(a))
    n_traces = cf.calls
    assert n_traces >= 2                    # different iteration counts are different paths
    d(2.0)
    d(9.0)
    assert cf.calls == n_traces             # ...which are cached


def test_while_loop_iteration_count_changes_with_value():
    def f(x):
        # halve until below 1: the number of halvings is data-dependent
        while x > 1.0:
            x = x * 0.5
        return x ** 2

    cf = Counted(f)
    d = gradc.grad(cf)
    assert d(0.8) == pytest.approx(1.6)
    assert d(1.5) == pytest.approx(2 * 0.75 * 0.5)
    assert d(3.5) == pytest.approx(2 * 0.875 * 0.25)
    assert d(1.9) == pytest.approx(2 * 0.95 * 0.5)
    assert cf.calls == 3


def test_for_range_with_static_int_argument():
    def f(x, n):
        y = x
        for _ in range(n):
            y = np.sin(y) + x
        return np.sum(y)

    cf = Counted(f)
    d = gradc.grad(cf)
    x = np.array([0.2, -0.4])
    for n in (1, 3, 5):
        np.testing.assert_allclose(d(x, n), fd(lambda x: f(x, n), x), rtol=1e-7)
    assert cf.calls == 3
    np.testing.assert_allclose(d(x * 2, 3), fd(lambda x: f(x, 3), x * 2), rtol=1e-7)
    assert cf.calls == 3
    with pytest.raises(gradc.ArgumentError, match="int"):
        gradc.grad(f, argnums=1)(x, 3)


def test_data_dependent_if_inside_loop():
    def f(x):
        total = 0.0
        for i in range(x.shape[0]):
            if x[i] > 0:
                total = total + x[i] ** 2
            else:
                total = total - np.sin(x[i])
        return total

    cf = Counted(f)
    d = gradc.grad(cf)
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(6):
        x = rng.normal(size=3)
        np.testing.assert_allclose(d(x), fd(f, x), rtol=1e-7, atol=1e-10)
        seen.add(tuple(x > 0))
    assert cf.calls == len(seen)


def test_elementwise_path_choice_by_where_needs_no_retrace():
    cf = Counted(lambda x: np.sum(np.where(x > 0, x ** 2, -x)))
    d = gradc.grad(cf)
    np.testing.assert_allclose(d(np.array([1.0, -2.0])), [2.0, -1.0])
    np.testing.assert_allclose(d(np.array([-1.0, 2.0])), [-1.0, 4.0])
    assert cf.calls == 1


def test_boolean_mask_with_another_count_retraces():
    def f(x):
        return np.sum(x[x > 0] ** 3)

    cf = Counted(f)
    d = gradc.grad(cf)
    x1 = np.array([1.0, -2.0, 3.0, -0.5])
    np.testing.assert_allclose(d(x1), np.where(x1 > 0, 3 * x1 ** 2, 0.0))
    assert cf.calls == 1
    x2 = np.array([-1.0, 2.0, 3.0, -0.5])           # same count: mask indices are recomputed
    np.testing.assert_allclose(d(x2), np.where(x2 > 0, 3 * x2 ** 2, 0.0))
    assert cf.calls == 1
    x3 = np.array([1.0, 2.0, 3.0, -0.5])            # another count: another output shape
    np.testing.assert_allclose(d(x3), np.where(x3 > 0, 3 * x3 ** 2, 0.0))
    assert cf.calls == 2
    x4 = np.array([-1.0, -2.0, -3.0, -0.5])         # nothing selected
    np.testing.assert_allclose(d(x4), np.zeros(4))
    assert cf.calls == 3


def test_mask_write_in_place():
    def f(x):
        y = x.copy()
        y[y < 0] = 0.0
        return np.sum(y ** 2)

    d = gradc.grad(f)
    for x in (np.array([1.0, -2.0, 3.0]), np.array([-1.0, -2.0, 3.0])):
        np.testing.assert_allclose(d(x), np.where(x > 0, 2 * x, 0.0))


def test_guards_inside_inner_transformation():
    # grad of a function that itself calls grad of a branching function
    def inner(y):
        if y > 0:
            return y ** 3
        return -y ** 2

    def outer(x):
        return gradc.grad(inner)(x) * x

    d = gradc.grad(outer)
    assert d(2.0) == pytest.approx(9 * 4.0)          # d/dx 3x^3 = 9x^2
    assert d(-2.0) == pytest.approx(4 * 2.0)         # d/dx (-2x)x = -4x
    assert d(1.0) == pytest.approx(9.0)


def test_ambiguous_truth_value_is_an_error():
    with pytest.raises(gradc.GradcError, match="ambiguous"):
        gradc.grad(lambda x: np.sum(x) if x > 0 else 0.0)(np.ones(3))


def test_nonzero_count_is_guarded():
    traces = []

    def f(x):
        traces.append(1)
        (idx,) = np.nonzero(x > 0)
        return np.sum(x[idx] ** 2) + np.sum(np.argwhere(x < 0)) * 0.0

    g = gradc.grad(f)
    x = np.array([1.0, -2.0, 3.0])
    assert np.allclose(g(x), [2.0, 0.0, 6.0])
    assert np.allclose(g(np.array([2.0, -1.0, 1.0])), [4.0, 0.0, 2.0])   # same count
    assert len(traces) == 1
    assert np.allclose(g(np.array([2.0, 1.0, 1.0])), [4.0, 2.0, 2.0])    # new count
    assert len(traces) == 2
    assert np.array_equal(np.flatnonzero(np.array([0.0, 1.0])), [1])
