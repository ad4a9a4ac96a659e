"""Output buffers sharing memory (``gradc.codegen.memplan``).

A compiled function's large intermediates are buffers its caller allocates; a buffer
takes the memory of an earlier one whose value is dead by then.  Each case compares the
compiled result with the interpreter's (a buffer overwritten while its value, or a view
of it, is still read gives a wrong number), and reads the plan from the lowering."""
from __future__ import annotations

import numpy as np
import pytest

import gradc
from gradc.codegen import buffers, memplan
from gradc.codegen.compile import optimise
from gradc.codegen.pysource import lower

pytestmark = pytest.mark.filterwarnings("ignore::gradc.GradcWarning")

# (256, 512) float64 is buffers.MIN_BYTES: the smallest buffer that takes part
B, D = 256, 512


def _lowered(f, *args):
    return lower(optimise(gradc.make_graph(f)(*args), "cpu"))


def _agree(f, *args, rtol=1e-12):
    got = gradc.jit(f, target="cpu")(*args)
    want = gradc.jit(f, target="numpy")(*args)
    for g, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want))):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-12)


def _disjoint(f, *args):
    """The lowering, checked: buffers sharing memory have the same size and dtype, and
    their live ranges never overlap."""
    lowered = _lowered(f, *args)
    groups = {}
    for name, first in lowered.shares.items():
        groups.setdefault(first, [first]).append(name)
    for members in groups.values():
        assert len({(int(np.prod(lowered.outs[n][0])), lowered.outs[n][1])
                    for n in members}) == 1
        spans = sorted(lowered.ranges[n] for n in members)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end < start, (members, spans)
    return lowered


def _mlp(Ws, x):
    h = x
    for W in Ws:
        h = np.tanh(h @ W)
    return np.sum(h * h)


def test_mlp_gradient_reuses_the_memory_of_dead_values():
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((D, D)) / np.sqrt(D) for _ in range(6)]
    x = rng.standard_normal((B, D))
    lowered = _disjoint(gradc.grad(_mlp), Ws, x)
    big = [n for n, (s, d) in lowered.outs.items() if np.prod(s) * d.itemsize
           >= buffers.MIN_BYTES]
    # forward: the 6 products die in their tanh; backward: 2 (B, D) values a layer
    # take the memory of the forward ones they outlive
    assert len(big) >= 18 and len(lowered.shares) >= 12
    assert all(lowered.outs[n] == lowered.outs[m] for n, m in lowered.shares.items())
    assert "in _o0's memory" in lowered.source
    got = gradc.grad(_mlp, target="cpu")(Ws, x)
    want = gradc.grad(_mlp, target="numpy")(Ws, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)


def test_a_view_keeps_its_buffer_alive():
    # c's last direct reader is tanh; its transpose d is read at the end, so f's buffer
    # must not take c's memory
    def f(x, W):
        c = x @ W
        d = c.T
        g = np.tanh(np.tanh(c) @ W)
        return (g @ W @ d).sum()
    rng = np.random.default_rng(1)
    x, W = rng.standard_normal((B, D)), rng.standard_normal((D, D)) / 20
    graph = optimise(gradc.make_graph(f)(x, W), "cpu")
    assert "transpose" in [e.prim.name for e in graph.eqns]      # the view is there
    lowered = _disjoint(f, x, W)
    assert "_o0" not in lowered.shares.values()
    _agree(f, x, W, rtol=1e-11)


def test_live_ranges_follow_views_and_unknown_holders():
    def f(x, W):
        c = x @ W
        d = c.T
        return np.sum(np.tanh(c) @ W @ d)
    x, W = np.ones((4, 3)), np.ones((3, 3))
    graph = optimise(gradc.make_graph(f)(x, W), "cpu")
    names = [e.prim.name for e in graph.eqns]
    k, last = names.index("einsum"), len(names) - 1       # c's maker; the final sum
    assert names[1] == "transpose" and graph.eqns[last - 1].inputs[1] is graph.eqns[1].outputs[0]
    c = graph.eqns[k].outputs[0]
    # the buffer made for c, or for a value of c's equation not named, is live until
    # the sum: it reads the product of d, the view of c, and a product not known to
    # allocate may be a view of its operands; a buffer returned is live to the end
    for var in (c, None):
        assert memplan.live_ranges(graph, {"_o0": (k, var)}) == {"_o0": (k, last)}
    tail = graph.eqns[-1]
    ranges = memplan.live_ranges(graph, {"_o0": (len(names) - 1, tail.params["body"].outputs[0])})
    assert ranges == {"_o0": (len(names) - 1, len(names))}


def test_returned_values_keep_their_memory():
    def f(x, W):
        a = x @ W
        b = np.tanh(a) @ W
        c = np.tanh(b) @ W
        d = np.tanh(c) @ W
        return a, d
    rng = np.random.default_rng(2)
    x, W = rng.standard_normal((B, D)), rng.standard_normal((D, D)) / 20
    lowered = _disjoint(f, x, W)
    assert "_o0" not in lowered.shares.values()        # a is returned
    assert lowered.shares                              # (b and d may share)
    _agree(f, x, W)
    a, d = gradc.jit(f, target="cpu")(x, W)
    assert not np.shares_memory(a, d)


def test_plain_loops_share_and_the_shared_library_agrees(monkeypatch, tmp_path):
    # no object-mode block: the code may also run from the shared library (native)
    monkeypatch.setenv("GRADC_NATIVE", "1")
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "cache"))
    from gradc.codegen import native
    from gradc.codegen.numba_cpu import Compiled

    def f(x):
        a = x * x + 1.0
        b = np.cumsum(a)
        c = b * 3.0 - x
        d = np.cumsum(c)
        return np.cumsum(d * d - x) * 0.5
    x = np.random.default_rng(3).uniform(-1, 1, B * D)
    lowered = _disjoint(f, x)
    assert lowered.shares
    _agree(f, x)
    compiled = gradc.jit(f, target="cpu").compile(x)
    want = compiled(x)
    native.wait()
    again = Compiled(compiled.graph, compiled.name, **compiled.options)
    if again._native is None:
        pytest.skip("no shared library built on this machine")
    for _ in range(2):
        got = again(x)
        np.testing.assert_array_equal(got[0], want[0])
    assert again._dispatcher is None        # answered by the library


def test_scan_stacked_outputs_take_part():
    def f(x, W):
        def step(h, _):
            h = np.tanh(h @ W)
            return h, h
        h, hs = gradc.scan(step, x, None, length=4)
        return np.sum(hs * hs) + np.sum(h)
    rng = np.random.default_rng(4)
    x, W = rng.standard_normal((B // 4, D)), rng.standard_normal((D, D)) / np.sqrt(D)
    g = gradc.grad(f)
    lowered = _disjoint(g, x, W)
    # the scan's stacked ys are buffers of the plan, one dead before the end
    n_eqns = len(optimise(gradc.make_graph(g)(x, W), "cpu").eqns)
    stacked = [lowered.ranges[n] for n, (s, _) in lowered.outs.items() if s == (4, B // 4, D)]
    assert len(stacked) >= 2 and min(end for _, end in stacked) < n_eqns
    got = gradc.grad(f, target="cpu")(x, W)
    want = gradc.grad(f, target="numpy")(x, W)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


def test_small_buffers_keep_their_own_memory():
    rng = np.random.default_rng(5)
    Ws = [rng.standard_normal((32, 32)) / 6 for _ in range(4)]
    x = rng.standard_normal((16, 32))
    assert not _lowered(gradc.grad(_mlp), Ws, x).shares
