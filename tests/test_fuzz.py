"""Random programs differentiated every way (a compact form of
``benchmarks/fuzz_programs.py``): slices with steps and negative ends, pads, rolls,
concatenations, reductions with keepdims broadcast back, transposes and unrolled loops
that read a weight at a step-dependent index (``w[k % 3]``: ``passes.sums``), every
intermediate value read again by the result.  The gradient by the interpreter is
checked against finite differences, and the graphs the compiled targets run
(``optimise``: ``factor_sums``, fusion) against it, by the interpreter (cheap) and, for a
few programs, compiled for the CPU and for CUDA (the simulator without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradc
from gradc.codegen.compile import optimise
from gradc.interpret import run


def _axis(a, k):
    return k % a.ndim


def _cut(a, k, sl):
    """``a[sl]`` along axis ``k`` (or ``a`` itself where that axis is too short)."""
    ax = _axis(a, k)
    if a.shape[ax] < 3:
        return a
    return a[(slice(None),) * ax + (sl,)]


OPS = {
    "sin": lambda a, b, k, w: np.sin(a),
    "softexp": lambda a, b, k, w: np.exp(np.tanh(a)) * 0.5,
    "shift": lambda a, b, k, w: _cut(a, k, slice(1, None)) * _cut(a, k, slice(None, -1)),
    "stencil": lambda a, b, k, w: 0.25 * _cut(a, k, slice(None, -2)) + 0.5 * _cut(
        a, k, slice(1, -1)) + 0.25 * _cut(a, k, slice(2, None)),
    "stride": lambda a, b, k, w: _cut(a, k, slice(None, None, 2 if k % 2 else -1)),
    "interior": lambda a, b, k, w: _cut(_cut(a, k, slice(1, -1)), k + 1, slice(None, None, -1)),
    "pad": lambda a, b, k, w: np.pad(a, [(1, 0), (0, 2)][:a.ndim] + [(0, 0)] * (a.ndim - 2)),
    "pad-edge": lambda a, b, k, w: np.pad(a, [(0, 1)] * a.ndim, mode="edge"),
    "roll": lambda a, b, k, w: np.roll(a, 1 + k % 2, axis=_axis(a, k)),
    "concat": lambda a, b, k, w: np.concatenate([a, a[::-1]], axis=_axis(a, k)),
    "centre": lambda a, b, k, w: a - np.mean(a, axis=_axis(a, k), keepdims=True),
    "rowmax": lambda a, b, k, w: a * np.max(a, axis=_axis(a, k), keepdims=True),
    "sum": lambda a, b, k, w: np.sum(a, axis=_axis(a, k)) if a.ndim > 1 else np.cumsum(a),
    "T": lambda a, b, k, w: a.T,
    "mix": lambda a, b, k, w: a + b if a.shape == b.shape else a * np.sum(np.sin(b)),
    "loop": lambda a, b, k, w: _loop(a, k, w),
}


def _loop(a, k, w):
    for s in range(5 + k % 4):
        a = np.tanh(a * w[s % 3] + 0.1 * np.roll(a, 1, axis=_axis(a, k)))
    return a


def make_program(steps):
    def program(x, w):
        values = [x]
        for name, i, k in steps:
            values.append(OPS[name](values[-1 - i % len(values)], values[-1], k, w))
        total = 0.0
        for n, v in enumerate(values[1:]):        # every value read again by the result
            total = total + np.sum(np.cos(np.arange(v.size) + n).reshape(v.shape) * v)
        return total
    return program


programs = st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(0, 3),
                              st.integers(0, 3)), min_size=1, max_size=7)


def _args(seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (4, 5)), rng.uniform(0.5, 1.2, 3), rng


@settings(max_examples=30, deadline=None)
@given(programs, st.integers(0, 2**31 - 1))
def test_optimised_gradients_match_the_interpreter_and_finite_differences(steps, seed):
    x, w, rng = _args(seed)
    f = make_program(steps)
    graph = gradc.make_graph(gradc.grad(f, argnums=(0, 1), target="numpy"))(x, w)
    want = run(graph, x, w)
    dx, dw = rng.normal(size=x.shape), rng.normal(size=w.shape)
    h = 1e-6
    fd = (f(x + h * dx, w + h * dw) - f(x - h * dx, w - h * dw)) / (2 * h)
    kinks = any(name == "rowmax" for name, _, _ in steps)
    if not kinks:
        assert np.sum(want[0] * dx) + np.sum(want[1] * dw) == pytest.approx(fd, rel=1e-4,
                                                                            abs=1e-6)
    for target in ("cpu", "cuda"):
        for got, ref in zip(run(optimise(graph, target), x, w), want):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@settings(max_examples=4, deadline=None)
@given(programs, st.integers(0, 2**31 - 1))
def test_compiled_gradients_match_the_interpreter(target, steps, seed):
    x, w, _ = _args(seed)
    f = make_program(steps)
    want = gradc.grad(f, argnums=(0, 1), target="numpy")(x, w)
    got = gradc.grad(f, argnums=(0, 1), target=target)(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gradc.jit(f, target=target)(x, w), f(x, w), rtol=1e-12)
