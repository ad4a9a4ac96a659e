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


# -- the newer families (benchmarks/fuzz_programs.py --dtype float32, --modes, --control,
# --index), a few examples each

def _body(a, k, c):
    """A shape-preserving loop or branch body drawn from the element-wise and rolling
    ops, reading ``c`` (a value of the enclosing function)."""
    return 0.6 * a + 0.3 * np.tanh([np.sin(a) * c, np.roll(a, 1, axis=0) - c,
                                    a - np.mean(a, axis=0, keepdims=True)][k % 3])


CONTROL = {
    "fori": (lambda a, k, c: gradc.fori_loop(0, 1 + k % 4, lambda i, u: _body(u, k, c), a),
             lambda a, k, c: _unrolled_fori(a, 1 + k % 4, k, c)),
    "scan": (lambda a, k, c: gradc.scan(lambda s, x: (_body(s, k, c) + 0.2 * x, s * x), a[0],
                                        a, reverse=bool(k % 2))[1],
             lambda a, k, c: _unrolled_scan(a, k, c)),
    "while": (lambda a, k, c: gradc.while_loop(lambda s: s[0] < k % 4,
                                               lambda s: (s[0] + 1, _body(s[1], k, c)),
                                               (0, a))[1],
              lambda a, k, c: _unrolled_fori(a, k % 4, k, c)),
    "cond": (lambda a, k, c: gradc.cond(np.sum(a) > 0.0, lambda u: _body(u, k, c),
                                        lambda u: _body(u, k + 1, c), a),
             lambda a, k, c: _body(a, k, c) if np.sum(a) > 0.0 else _body(a, k + 1, c)),
    "gather": (lambda a, k, c: a[[k % 4, 0, -1, 1]] * c, None),
    "take_along": (lambda a, k, c: np.take_along_axis(a, np.argsort(a, axis=0), axis=0), None),
    "bincount": (lambda a, k, c: np.bincount(np.arange(a.size) % 3, weights=a.ravel()), None),
    "cumsum": (lambda a, k, c: np.cumsum(a, axis=k % a.ndim) * c, None),
    "setitem": (lambda a, k, c: _written(a, k), None),
}


def _unrolled_fori(a, n, k, c):
    for _ in range(n):
        a = _body(a, k, c)
    return a


def _unrolled_scan(a, k, c):
    s, ys = a[0], []
    for i in (range(len(a) - 1, -1, -1) if k % 2 else range(len(a))):
        s, y = _body(s, k, c) + 0.2 * a[i], s * a[i]
        ys.append((i, y))
    return np.stack([y for _, y in sorted(ys, key=lambda t: t[0])])


def _written(a, k):
    b = a.copy()
    b[[k % 4, -1]] = np.sin(b[[k % 4, -1]])
    return b


def control_program(steps, unrolled=False):
    def program(x, c):
        values = [x]
        for name, k in steps:
            controlled, plain = CONTROL[name]
            fn = plain if unrolled and plain is not None else controlled
            v = fn(values[-1], k, c)
            values.append(v if v.ndim == 2 and v.shape[0] >= 4 else values[-1] + 0.0 * c)
        return sum(np.sum(np.cos(np.arange(v.size) + n).reshape(v.shape) * v)
                   for n, v in enumerate(values[1:]))
    return program


control_programs = st.lists(st.tuples(st.sampled_from(sorted(CONTROL)), st.integers(0, 7)),
                            min_size=1, max_size=4)


@settings(max_examples=20, deadline=None)
@given(control_programs, st.integers(0, 2**31 - 1))
def test_control_flow_and_index_programs_match_their_unrolled_form(steps, seed):
    """gradc.fori_loop/scan/while_loop/cond against Python loops and ifs (traced with
    guards), with gathers, sorts, bincounts and index writes between them."""
    rng = np.random.default_rng(seed)
    x, c = rng.uniform(-1.0, 1.0, (4, 3)), rng.uniform(0.5, 1.0)
    f, fu = control_program(steps), control_program(steps, unrolled=True)
    assert f(x, c) == pytest.approx(fu(x, c), rel=1e-12)
    want = gradc.grad(fu, argnums=(0, 1), target="numpy")(x, c)
    for a, b in zip(gradc.grad(f, argnums=(0, 1), target="numpy")(x, c), want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    graph = gradc.make_graph(gradc.grad(f, argnums=(0, 1), target="numpy"))(x, c)
    for a, b in zip(run(optimise(graph, "cpu"), x, c), want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(programs, st.integers(0, 2**31 - 1))
def test_transformations_agree(steps, seed):
    """jacfwd == jacrev, the Hessian symmetric and jacfwd(grad), vmap(grad) a loop of
    grads, linearize and value_and_grad the JVP and the gradient (on a smaller x)."""
    rng = np.random.default_rng(seed)
    x, w = rng.uniform(-1.0, 1.0, (3, 4)), rng.uniform(0.5, 1.2, 3)
    f = make_program(steps)
    g = gradc.grad(f, target="numpy")(x, w)
    np.testing.assert_allclose(gradc.jacfwd(f)(x, w), gradc.jacrev(f)(x, w), rtol=1e-9,
                               atol=1e-12)
    h = gradc.hessian(f)(x, w).reshape(12, 12)
    np.testing.assert_allclose(h, h.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(h, gradc.jacfwd(gradc.grad(f))(x, w).reshape(12, 12),
                               rtol=1e-8, atol=1e-10)
    xs = np.stack([x, x + 0.1, x - 0.2])
    np.testing.assert_allclose(gradc.vmap(gradc.grad(f), in_axes=(0, None))(xs, w),
                               np.stack([gradc.grad(f)(a, w) for a in xs]), rtol=1e-9,
                               atol=1e-12)
    v = rng.normal(size=x.shape)
    y, f_jvp = gradc.linearize(lambda a: f(a, w), x)
    assert f_jvp(v) == pytest.approx(np.sum(g * v), rel=1e-8, abs=1e-12)
    val, g2 = gradc.value_and_grad(f)(x, w)
    assert val == pytest.approx(f(x, w), rel=1e-12) and y == pytest.approx(val, rel=1e-12)
    np.testing.assert_allclose(g2, g, rtol=1e-12)


@settings(max_examples=8, deadline=None)
@given(programs, st.integers(0, 2**31 - 1))
def test_float32_programs_keep_float32(steps, seed):
    """float32 inputs (Python float constants are weak, NEP 50): the value, every
    gradient and the optimised graph's stay float32, close to the float64 program's."""
    x, w, _ = _args(seed)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    f = make_program(steps)
    want = f(x32, w32)
    got = gradc.jit(f, target="numpy")(x32, w32)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    g = gradc.grad(f, argnums=(0, 1), target="numpy")(x32, w32)
    g64 = gradc.grad(f, argnums=(0, 1), target="numpy")(x, w)
    graph = gradc.make_graph(gradc.grad(f, argnums=(0, 1), target="numpy"))(x32, w32)
    for a, b, c in zip(g, g64, run(optimise(graph, "cpu"), x32, w32)):
        assert a.dtype == np.float32 and np.asarray(c).dtype == np.float32
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=3e-3, atol=3e-3 * scale)
        np.testing.assert_allclose(c, a, rtol=2e-3, atol=2e-4 * scale)
