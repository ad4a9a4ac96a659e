"""``np.lib.stride_tricks.sliding_window_view`` on traced arrays: one gather
(``lib/numpy_composites.py``), its values NumPy's, differentiable (its transpose a
scatter_add: each element's cotangent the sum over the windows that hold it)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import gradc
from gradc.testing import check_grads

swv = np.lib.stride_tricks.sliding_window_view

# (x's shape, window_shape, axis)
CASES = {
    "1d": ((7,), 3, None),
    "last-axis": ((3, 5), (2,), -1),
    "first-axis-int": ((4, 3), 2, 0),
    "image-windows": ((2, 5, 6), (2, 3), (1, 2)),
    "all-axes": ((3, 4, 5), (2, 1, 3), None),
    "an-axis-twice": ((3, 6), (2, 3), (1, 1)),
    "whole-axis": ((3, 4), (4,), 1),
    "empty-window": ((3, 4), (0,), 1),
}


def _case(name):
    shape, window, axis = CASES[name]
    x = np.random.default_rng(len(name)).standard_normal(shape)
    if axis is None:
        return (lambda a: swv(a, window)), x
    return (lambda a: swv(a, window, axis=axis)), x


@pytest.mark.parametrize("name", CASES)
def test_values_and_shapes_are_numpys(name):
    f, x = _case(name)
    want = f(x)
    for target in ("numpy", "cpu"):
        got = gradc.jit(f, target=target)(x)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", [n for n in CASES if n != "empty-window"])
def test_derivatives_against_finite_differences(name):
    """Central differences (``check_grads``, forward and reverse, second order), and
    the gradient of a weighted sum by its definition: each element of x collects the
    weights of the window positions that read it."""
    f, x = _case(name)
    check_grads(lambda a: np.tanh(f(a)), (x,), order=2)
    weights = np.random.default_rng(1).standard_normal(f(x).shape)
    want = np.zeros_like(x)
    # the positions the windows read: the window view of x's own element numbers
    np.add.at(want.reshape(-1), f(np.arange(x.size).reshape(x.shape)).reshape(-1),
              weights.reshape(-1))
    for target in ("numpy", "cpu"):
        got = gradc.grad(lambda a: np.sum(f(a) * weights), target=target)(x)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_windows_times_a_kernel_are_a_convolution():
    """The im2col way to write a convolution, through the windows, agrees with
    ``gradc.conv2d``, in value and in both gradients."""
    rng = np.random.default_rng(2)
    image, kernel = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2))

    def by_windows(i, k):
        return np.sum(np.tanh(np.einsum("nchwuv,ocuv->nohw", swv(i, (3, 2), axis=(2, 3)), k)))

    def by_conv2d(i, k):
        return np.sum(np.tanh(gradc.conv2d(i, k)))
    np.testing.assert_allclose(gradc.jit(by_windows)(image, kernel), by_conv2d(image, kernel),
                               rtol=1e-12)
    for a, b in zip(gradc.grad(by_windows, argnums=(0, 1))(image, kernel),
                    gradc.grad(by_conv2d, argnums=(0, 1))(image, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_vmap_of_windows():
    xs = np.random.default_rng(3).standard_normal((3, 6))
    got = gradc.vmap(lambda a: swv(a, 4))(xs)
    np.testing.assert_array_equal(got, np.stack([swv(a, 4) for a in xs]))


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and
                    not os.path.exists("/dev/nvidia0"), reason="no CUDA")
def test_on_the_cuda_target():
    x = np.random.default_rng(4).standard_normal((2, 5))
    f = lambda a: np.sum(np.sin(swv(a, (2, 2))) ** 2)  # noqa: E731
    np.testing.assert_allclose(gradc.jit(f, target="cuda")(x), gradc.jit(f, target="numpy")(x),
                               rtol=1e-12)
    np.testing.assert_allclose(gradc.grad(f, target="cuda")(x),
                               gradc.grad(f, target="numpy")(x), rtol=1e-12, atol=1e-12)


def test_bad_windows_are_named_with_the_users_line():
    x = np.ones((3, 4))
    for kwargs, error, fragment in (
            (dict(window_shape=5, axis=1), gradc.ShapeError, "larger than the input"),
            (dict(window_shape=(2,)), gradc.ShapeError, "since axis is None"),
            (dict(window_shape=(2, 2), axis=0), gradc.ShapeError, "same length"),
            (dict(window_shape=-1, axis=0), gradc.ShapeError, "negative"),
            (dict(window_shape=2, axis=2), gradc.ShapeError, "out of bounds"),
            (dict(window_shape=1.5, axis=0), gradc.ArgumentError, "must be ints"),
            (dict(window_shape=2, axis=0, writeable=True), gradc.UnsupportedError,
             "several windows")):
        with pytest.raises(error) as info:
            gradc.grad(lambda a: np.sum(swv(a, **kwargs)))(x)
        message = str(info.value)
        assert fragment in message and "sliding_window_view" in message.split("\n")[0], \
            message
        assert "test_sliding_window_view.py" in message
        assert "gradc.grad(lambda a: np.sum(swv(a, **kwargs)))(x)" in message, message
        if error is not gradc.ArgumentError and error is not gradc.UnsupportedError:
            with pytest.raises(ValueError):    # (what NumPy raises too)
                swv(x, **kwargs)


def test_an_axis_that_is_not_an_integer_is_an_argument_error():
    """(QA: axis=True, 1.0 or 'a' were "out of bounds" ShapeErrors, and a 0-d integer
    array, which NumPy takes, was refused.)  As every axis in gradc (operator.index, no
    bool): an ArgumentError naming sliding_window_view and the user's line."""
    x = np.arange(12.0).reshape(3, 4)
    for axis, got in ((True, "True of type bool"), (np.True_, "of type bool"),
                      (1.0, "1.0 of type float"), ("a", "'a' of type str"),
                      ([[0]], "[0] of type list"), ((0, False), "False of type bool")):
        window = (2, 2) if isinstance(axis, tuple) else 2
        with pytest.raises(gradc.ArgumentError) as info:
            gradc.jit(lambda a: swv(a, window, axis=axis))(x)
        message = str(info.value)
        assert message.startswith("sliding_window_view: axis must be an integer"), message
        assert got in message, message
        assert "gradc.jit(lambda a: swv(a, window, axis=axis))(x)" in message, message
    for axis in (np.array(1), np.int64(-1)):
        np.testing.assert_array_equal(gradc.jit(lambda a: swv(a, 2, axis=axis))(x),
                                      swv(x, 2, axis=axis))
    with pytest.raises(gradc.ShapeError, match="axis -3 is out of bounds"):
        gradc.jit(lambda a: swv(a, 2, axis=-3))(x)
