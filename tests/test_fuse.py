"""The fusion pass: it never changes results, groups what it should, and the loops it
lowers to are what the design promises (gather form, no zero-filled pads)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradc
from gradc.codegen import compile_graph, to_source
from gradc.interpret import run
from gradc.passes import simplify, vjp_graph
from gradc.passes.fuse import _body_size, _plan, fuse

from test_passes import OPS, make_program, programs


@pytest.fixture(autouse=True)
def compiled_by_default(monkeypatch):
    monkeypatch.setenv("GRADC_TARGET", "cpu")


def _fused(graph):
    return fuse(simplify(graph)).verify()


def _names(graph):
    return [e.prim.name for e in graph.eqns]


@settings(max_examples=40, deadline=None)
@given(programs, st.integers(0, 2**31 - 1))
def test_fusion_preserves_results_bit_for_bit(steps, seed):
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(3, 4))
    graph = gradc.make_graph(make_program(steps))(x)
    for g, args in ((graph, (x,)), (vjp_graph(graph), (x, np.asarray(0.7)))):
        simple = simplify(g)
        fused = fuse(simple).verify()
        assert len(fused.eqns) <= len(simple.eqns)
        for a, b in zip(run(fused, *args), run(simple, *args)):
            assert np.array_equal(a, b)


# a few fixed programs compiled (each compile costs about a second)
FIXED = {
    "elementwise": [("sin", 0, 0), ("mul", 1, 0), ("softexp", 2, 2)],
    "centre-rowmax": [("centre", 0, 0), ("rowmax", 1, 1), ("tanh", 2, 2)],
    "flip-roll": [("flip", 0, 0), ("roll", 1, 1), ("mul", 2, 0)],
    "gram-where": [("gram", 0, 0), ("where", 1, 0), ("dup", 2, 2)],
    "setrow": [("square", 0, 0), ("setrow", 1, 0), ("add", 2, 1)],
}


@functools.lru_cache(maxsize=None)
def _fixed_graph(name):
    x = np.linspace(-0.9, 0.8, 12).reshape(3, 4)
    return _fused(vjp_graph(gradc.make_graph(make_program(FIXED[name]))(x)))


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fused_programs_compile_to_the_interpreters_results(name):
    graph = _fixed_graph(name)
    assert "fused" in _names(graph)
    rng = np.random.default_rng(1)
    x, ct = rng.uniform(-1.0, 1.0, (3, 4)), np.asarray(rng.normal())
    want = run(graph, x, ct)
    got = compile_graph(graph, name=f"fixed_{name.replace('-', '_')}")(x, ct)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_rosenbrock_gradient_is_one_loop_without_zero_filled_pads():
    x = np.linspace(-1.0, 1.0, 10)
    graph = gradc.grad(rosen).graph(x)
    assert _names(graph) == ["fused"]
    (fused,) = graph.eqns
    assert "pad" in _names(fused.params["body"])     # three pads in the body ...
    source = to_source(graph)
    assert "np.zeros" not in source                  # ... none of them materialised
    assert source.count("for i0 in range(") == 3     # edges and interior
    interior = source[source.index("for i0 in range(1, 9):"):]
    interior = interior[:interior.index("for i0 in range(9, 10)")]
    assert " if " not in interior and "else" not in interior


def test_value_and_gradient_share_one_loop():
    f = gradc.value_and_grad(lambda x: np.sum(np.sin(x) * x))
    x = np.linspace(0.0, 1.0, 7)
    graph = f.graph(x)
    assert _names(graph) == ["fused"]
    assert len(graph.eqns[0].outputs) == 2
    v, g = f(x)
    assert v == pytest.approx(np.sum(np.sin(x) * x), rel=1e-14)
    np.testing.assert_allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-14)


def test_a_root_that_reads_another_root_gets_its_own_loop_in_order():
    def softmaxish(x):
        m = np.max(x, axis=1, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=1, keepdims=True)

    x = np.random.default_rng(0).standard_normal((3, 5))
    graph = _fused(gradc.make_graph(softmaxish)(x))
    assert _names(graph).count("fused") == 3          # max, then sum, then the division
    out = compile_graph(graph, name="softmaxish")(x)[0]
    np.testing.assert_allclose(out, softmaxish(x), rtol=1e-14)


def test_shifted_reads_of_shifted_values_stay_bounded(monkeypatch):
    import gradc.passes.fuse as fuse_module
    monkeypatch.setattr(fuse_module, "MAX_BODY", 40)     # small, so the cap is reached

    def smooth(u):
        for _ in range(3):
            u = 0.25 * u[:-2] + 0.5 * u[1:-1] + 0.25 * u[2:]
        return np.sum(u ** 2)

    u = np.random.default_rng(2).standard_normal(64)
    graph = gradc.make_graph(gradc.grad(smooth, target="numpy"))(u)
    fused = _fused(graph)
    for eqn in fused.eqns:
        if eqn.prim.name == "fused":   # each body is under the cap or recomputes nothing
            plan = _plan(eqn.params["body"], set())
            for grp in plan.groups:
                size, counts, _ = _body_size(plan, grp)
                assert size <= fuse_module.MAX_BODY or max(counts.values()) == 1
    assert np.array_equal(run(fused, u)[0], run(simplify(graph), u)[0])
    np.testing.assert_allclose(gradc.grad(smooth)(u), run(graph, u)[0], rtol=1e-12)



def test_a_body_whose_count_stops_before_any_repeat_is_cut_at_its_windows(monkeypatch):
    """(CUDA fuzzer, seed 3063 with --small-limits) the gradient of a chain of two-sided
    rolls fused 842 equations into one body: counting its (value, index) pairs stopped at
    the limit (10 x MAX_BODY) before any value was read twice, so nothing was
    materialised, and the lowering, whose pads' windows each compute their operand in a
    scope of their own, emitted code doubling per level of windows (no end in 10
    minutes).  Such a body is now cut at the operands of the deeper half of its windows,
    until every count ends below the limit."""
    import gradc.passes.fuse as fuse_module
    monkeypatch.setattr(fuse_module, "MAX_BODY", 30)

    def chain(x):
        for _ in range(30):
            x = 0.9 * x + 0.05 * (np.roll(x, 1) + np.roll(x, -1))
        return np.sum(np.sin(x) * np.arange(6.0))

    from gradc.codegen.compile import optimise
    x = np.linspace(-1.0, 1.0, 6)
    graph = gradc.make_graph(gradc.grad(chain, target="numpy"))(x)
    fused = optimise(graph, "cpu")     # (its sums pass and selections make the windows)
    bodies = [e.params["body"] for e in fused.eqns if e.prim.name == "fused"]
    for body in bodies:
        plan = _plan(body, set())
        for grp in plan.groups:
            size, _, _ = _body_size(plan, grp)
            assert size <= 10 * fuse_module.MAX_BODY
    assert max(len(b.eqns) for b in bodies) < 300          # (842 before)
    np.testing.assert_allclose(run(fused, x)[0], run(simplify(graph), x)[0], rtol=1e-13)
    source = gradc.grad(chain).source(x)
    assert len(source.splitlines()) < 20000

def test_strided_slice_transpose_is_a_strided_window():
    f = gradc.grad(lambda x: np.sum(np.sin(x[1::3]) * x[::2][:4]))
    x = np.linspace(0.0, 2.0, 11)
    np.testing.assert_allclose(f(x), gradc.grad(
        lambda x: np.sum(np.sin(x[1::3]) * x[::2][:4]), target="numpy")(x), rtol=1e-14)
    assert "% 3 == 0" in f.source(x)


def test_ops_table_is_covered_by_fixed_programs():
    used = {op for steps in FIXED.values() for op, _, _ in steps}
    assert len(used) >= len(OPS) // 2


def _tanh_chain(steps):
    def f(x, w):
        h = x
        for i in range(steps):
            h = np.tanh(h * w[i % 4] + 0.1)
        return np.sum(h ** 2)
    return f


def test_a_long_unrolled_chain_lowers_without_deep_recursion():
    # a Python loop of 1500 steps is one chain of 4500 inlined equations in one loop
    # nest: the loop lowering emitted it by recursion (RecursionError from 200 steps)
    x, w = np.linspace(-1.0, 1.0, 8), np.array([0.9, 1.1, 0.7, 1.3])
    source = gradc.jit(_tanh_chain(1500), target="cpu").source(x, w)
    assert source.count("np.tanh(") >= 1500


def test_operands_emitted_without_recursion_give_the_same_source(monkeypatch):
    import gradc.codegen.loops as loops

    def smooth(u, w):
        for _ in range(3):
            u = 0.25 * u[:-2] + 0.5 * u[1:-1] + 0.25 * np.pad(u, 1)[2:-2]
        return np.sum(np.tanh(u * w[0]) ** 2 + u[::-1] * w[1])

    rng = np.random.default_rng(5)
    cases = [(smooth, (rng.standard_normal(40), rng.standard_normal(4))),
             (_tanh_chain(30), (rng.standard_normal(8), rng.standard_normal(4)))]
    for fun, args in cases:
        grad = gradc.grad(fun, argnums=(0, 1))
        recursive = gradc.jit(grad, target="cpu").source(*args)
        monkeypatch.setattr(loops, "_DEEP", 0)     # every value by the explicit stack
        iterative = gradc.jit(grad, target="cpu")
        assert iterative.source(*args) == recursive
        for got, want in zip(iterative(*args), gradc.grad(fun, argnums=(0, 1),
                                                           target="numpy")(*args)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        monkeypatch.setattr(loops, "_DEEP", 64)


def _roll_chain(steps):
    def f(x, w):
        for i in range(steps):
            x = np.tanh(np.roll(x, 1) * w[i % 3] + 0.5 * x)
        return np.sum(x ** 2)
    return f


def _fused_eqns(graph):
    return [e for e in graph.eqns if e.prim.name == "fused"]


def test_a_chain_of_rolls_is_not_recomputed_from_its_start_by_every_step():
    # each step's state is read by np.roll's slices (materialised by the concatenate)
    # and by the next step: inlined into every later group, step k's groups recomputed
    # all k steps before it, and then MAX_BODY split the gradient's steps into a loop per
    # equation (67 loops for 10 steps)
    x, w = np.linspace(-1.0, 1.0, 16), np.array([0.9, 1.1, 0.7])
    for steps in (10, 20):
        graph = _fused(gradc.make_graph(_roll_chain(steps))(x, w))
        bodies = [len(e.params["body"].eqns) for e in _fused_eqns(graph)]
        # (before: the largest body 42 and 82 equations, all bodies 424 and 1644)
        assert max(bodies) <= 24 and sum(bodies) <= 12 * steps
        grad = _fused(gradc.make_graph(gradc.grad(_roll_chain(steps), argnums=(0, 1)))(x, w))
        assert len(_fused_eqns(grad)) <= 5 * steps       # (before: 67 and 145 loops)
    fun = _roll_chain(10)
    got = gradc.grad(fun, argnums=(0, 1))(x, w)
    want = gradc.grad(fun, argnums=(0, 1), target="numpy")(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    eps = 1e-6
    fd = [(fun(x, w + eps * e) - fun(x, w - eps * e)) / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(got[1], fd, rtol=1e-6)


def _optimised(fun, *args, target="cpu"):
    from gradc.codegen.compile import optimise
    return optimise(gradc.make_graph(fun)(*args), target).verify()


def test_a_concatenation_fuses_as_a_selection_of_pads():
    # np.roll is a concatenate of two slices: a copy of its own, whose operands (the
    # slices of a computed value) were each a loop, three loops a step (24 for 10 steps,
    # 36 for the gradient); as a select of pads it joins the loops around it
    x, w = np.linspace(-1.0, 1.0, 16), np.array([0.9, 1.1, 0.7])
    fun = _roll_chain(10)
    for f, most in ((fun, 10), (gradc.grad(fun, argnums=(0, 1)), 20)):
        graph = _optimised(f, x, w)
        assert "concatenate" not in _names(graph)
        assert len(_fused_eqns(graph)) <= most
    got = gradc.grad(fun, argnums=(0, 1))(x, w)
    for a, b in zip(got, gradc.grad(fun, argnums=(0, 1), target="numpy")(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gradc.jit(fun)(x, w), fun(x, w), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.bool_])
def test_a_product_that_sums_nothing_fuses_as_a_broadcast_product(dtype):
    """An einsum that sums no index (vmap of a gradient scales rows, ``zi,z->zi``; an
    outer product; a batched outer product) is its operands broadcast and multiplied on
    the CPU targets, in the loops around it: it was a batched product of 1x1 matrices
    (``vmap(grad)`` of a 64x10 per-example loss, 23 µs of 27).  Values as NumPy's in
    every dtype, inside a scan too."""
    rng = np.random.default_rng(5)

    def cast(a):
        return (a > 0) if dtype == np.bool_ else (3 * a).astype(dtype)
    a, b, c = cast(rng.standard_normal((6, 4))), cast(rng.standard_normal(6)), \
        cast(rng.standard_normal((6, 5)))

    def f(a, b, c):
        return (np.einsum("zi,z->zi", a, b), np.einsum("i,j->ij", b, b),
                np.einsum("zi,zj->zij", a, c), np.einsum("zi,z->iz", a, b))
    graph = _optimised(f, a, b, c)
    assert "einsum" not in _names(graph) and "matmul" not in str(graph)
    for got, want in zip(gradc.jit(f, target="cpu")(a, b, c), f(a, b, c)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)

    def scanned(a, b):
        def step(h, row):
            return h + np.einsum("i,j->ij", row, row), np.einsum("i,j->ij", row, b[:4])
        return gradc.scan(step, np.zeros((4, 4), a.dtype), a)
    h, ys = gradc.jit(scanned, target="cpu")(a, b)
    # (the carry's sum is one contraction after the scan: licm.sums_after_scans)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(h, sum(np.outer(r, r) for r in a).astype(h.dtype), rtol=tol)
    np.testing.assert_array_equal(ys, np.stack([np.outer(r, b[:4]) for r in a]))
    if dtype == np.float64:
        def per(w, x, y):
            return (np.tanh(x @ w) - y) ** 2
        g = gradc.vmap(gradc.grad(per), in_axes=(None, 0, 0))
        w, X, y = rng.standard_normal(5), rng.standard_normal((64, 5)), rng.standard_normal(64)
        graph = _optimised(g, w, X, y)
        assert "einsum" in _names(graph)                  # (the matvec: it sums)
        assert all(e.params["spec"] != "zi,z->zi" for e in graph.eqns
                   if e.prim.name == "einsum")
        np.testing.assert_allclose(gradc.jit(g)(w, X, y),
                                   gradc.vmap(gradc.grad(per), in_axes=(None, 0, 0),
                                              target="numpy")(w, X, y),
                                   rtol=1e-12, atol=1e-15)


def test_a_selection_keeps_signed_zeros_and_its_loops_test_no_window():
    def f(x, y):                      # (a sum of the pads would give -0.0 + 0.0 = +0.0)
        return np.concatenate([np.sin(x), y * 2.0, np.roll(x, 2)])

    x, y = np.array([-0.0, 0.5, -1.0]), np.array([-0.0, 2.0])
    got = gradc.jit(f)(x, y)
    np.testing.assert_array_equal(got, f(x, y))
    assert np.signbit(got[[0, 3]]).all() and np.signbit(got[-2])
    assert "concatenate" not in _names(_optimised(f, x, y))
    code = [line for line in gradc.jit(f).source(x, y).split('"""')[-1].splitlines()
            if not line.lstrip().startswith("#")]
    # one loop per window (the loop is split where each operand's window starts): a
    # window's test is known in its loop, and the other operands are not computed there
    assert sum(line.lstrip().startswith("for i0 in range(") for line in code) == 4
    assert not any(" if " in line for line in code)
    assert sum("np.sin(" in line for line in code) == 1
    # (of a matrix: the window's constant is broadcast along the rows)
    m, n = np.linspace(-1.0, 1.0, 12).reshape(3, 4), np.ones((3, 2))
    source = gradc.jit(lambda m, n: np.concatenate([np.exp(m), n * 3.0], axis=1)).source(m, n)
    assert not any(" if " in line for line in source.split('"""')[-1].splitlines()
                   if not line.lstrip().startswith("#"))


def test_a_concatenation_of_many_operands_stays_a_copy():
    # each element of a selection tests every operand's window: np.stack of a list
    # (six operands here) keeps its one copy
    def f(x):
        return np.sum(np.stack([x * k for k in range(6)]) ** 2)

    x = np.linspace(-1.0, 1.0, 5)
    graph = _optimised(gradc.grad(f), x)
    assert "concatenate" in _names(graph) or "concatenate" in _names(
        _optimised(f, x))
    np.testing.assert_allclose(gradc.grad(f)(x), 2 * x * sum(k * k for k in range(6)),
                               rtol=1e-13)


def test_a_concatenation_along_a_later_axis_fuses():
    def f(m):                         # a shift register along axis 1
        h = m
        for _ in range(3):
            h = np.tanh(np.concatenate([h[:, 1:], h[:, :1] * 0.5], axis=1) + m)
        return np.sum(h ** 2)

    m = np.random.default_rng(3).uniform(-1.0, 1.0, (4, 5))
    graph = _optimised(gradc.grad(f), m)
    assert "concatenate" not in _names(graph)
    got = gradc.grad(f)(m)
    np.testing.assert_allclose(got, gradc.grad(f, target="numpy")(m), rtol=1e-12)
    eps, e = 1e-6, np.zeros_like(m)
    e[2, 3] = 1.0
    np.testing.assert_allclose(got[2, 3], (f(m + eps * e) - f(m - eps * e)) / (2 * eps),
                               rtol=1e-6)


def _helpers(source):
    """The generated helper functions' texts, each as its list of nests' comments."""
    code = source.split('"""')[-1]
    code = code[:code.rindex("\ndef ")]             # (the main function, last)
    return [[line.strip() for line in part.splitlines()
             if line.startswith("    # ") and "= fused[" in line]
            for part in code.split("@_k.jit")[1:]]


def test_consecutive_small_nests_share_a_helper_function():
    # Numba spends about 0.1 s on each function besides its code: consecutive nests
    # (nothing between their calls) are one function, at most MERGE_NESTS of them
    from gradc.codegen.loops import MERGE_NESTS
    x, w = np.linspace(-1.0, 1.0, 16), np.array([0.9, 1.1, 0.7])
    fun = gradc.grad(_roll_chain(10), argnums=(0, 1))
    graph = _optimised(fun, x, w)
    helpers = _helpers(gradc.jit(fun).source(x, w))
    assert sum(map(len, helpers)) == len(_fused_eqns(graph))
    assert len(helpers) <= len(_fused_eqns(graph)) // 2
    assert max(map(len, helpers)) <= MERGE_NESTS
    for a, b in zip(gradc.jit(fun)(x, w), gradc.grad(_roll_chain(10), argnums=(0, 1),
                                                     target="numpy")(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_a_nest_whose_buffer_may_share_memory_keeps_its_own_function():
    # the memory plan may put two large buffers in one memory, and the helpers are
    # compiled noalias: a nest writing one (1 MiB and more) is never merged
    def f(x):
        y = x * x + 1.0                    # a nest writing y (8 n bytes)
        return y, y[::2] * 3.0             # and one over half the domain (4 n bytes)

    for n, alone in ((64, False), (1 << 17, True)):
        x = np.linspace(-1.0, 1.0, n)
        helpers = _helpers(gradc.jit(f).source(x))
        assert sorted(map(len, helpers)) == ([1, 1] if alone else [2])
        for a, b in zip(gradc.jit(f)(x), f(x)):
            np.testing.assert_allclose(a, b, rtol=1e-14)


def test_a_root_joins_the_group_it_reads_at_its_own_index_only():
    def f(x):
        y = np.exp(x)                  # an output, read by z element for element
        z = np.sin(y) * 2.0 + y        # ... a root of the same domain: the same loop
        return y, z, np.sum(z)         # (a sum keeps a loop of its own: reassoc)

    def g(x):
        s = np.sum(np.exp(x))          # a reduction's result is known after the loop
        y = np.exp(x) * s              # so y has a loop of its own
        return y, y[1:] * 2.0          # and a shifted read does not join

    x = np.linspace(-1.0, 1.0, 7)
    fused = _fused(gradc.make_graph(f)(x))
    assert sorted(len(e.outputs) for e in _fused_eqns(fused)) == [1, 2]
    fused_g = _fused(gradc.make_graph(g)(x))
    assert len(_fused_eqns(fused_g)) == 3
    for fun in (f, g):
        for a, b in zip(gradc.jit(fun, target="cpu")(x), fun(x)):
            np.testing.assert_allclose(a, b, rtol=1e-14)


def test_views_of_earlier_values_do_not_split_merged_nests():
    """A view between two nests' calls (``f = c[0]``) that does not read the first
    nest's results is written before it, so the nests around it share a helper: the
    10-step roll chain's gradient, 7 helpers before, 5 after; every view left between
    two helper calls reads the first one's results."""
    import re
    x, w = np.linspace(-1.0, 1.0, 16), np.array([0.9, 1.1, 0.7])
    fun = gradc.grad(_roll_chain(10), argnums=(0, 1))
    source = gradc.jit(fun).source(x, w)
    main = [line.strip() for line in source[source.rindex("\ndef "):].splitlines()[1:]
            if line.strip() and not line.strip().startswith("#")]
    made, between = set(), []
    for line in main:
        call = re.match(r"(.*) = _h\d+\(", line)
        if call:
            for view in between:
                assert re.search(r"= (\w+)", view).group(1) in made, (view, main)
            made = {n.strip() for n in call.group(1).split(",") if n.strip()}
            between = []
        elif re.match(r"\w+ = \w+\[", line):
            between.append(line)
    assert len(_helpers(source)) <= 5
    for a, b in zip(gradc.jit(fun)(x, w), gradc.grad(_roll_chain(10), argnums=(0, 1),
                                                     target="numpy")(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def _roll_average(steps):
    def f(x):
        v = x
        for _ in range(steps):
            v = 0.9 * v + 0.05 * (np.roll(v, 1) + np.roll(v, -1))
        return np.sum(np.pad(v, 2, mode="reflect") ** 2)
    return f


def test_identical_loop_nests_share_one_helper_function():
    """A Python loop the trace unrolled lowers to the same loop nest once per step;
    helper functions equal but for their names are generated once and called again
    (``pysource.canonical``), so Numba compiles that code once.  The forward steps of a
    24-step roll chain: 16 of them in two calls of one helper function of 8."""
    import re
    x = np.linspace(0.1, 1.0, 6)
    fun = gradc.grad(_roll_average(24))
    source = fun.source(x)
    calls = re.findall(r"= (_h\d+)\(", source)
    helpers = _helpers(source)
    assert len(helpers) == len(set(calls)) < len(calls)
    shared = [h for h in set(calls) if calls.count(h) > 1]
    assert shared and all(len(helpers[int(h[2:])]) >= 4 for h in shared)
    want = gradc.grad(_roll_average(24), target="numpy")(x)
    np.testing.assert_allclose(fun(x), want, rtol=1e-13)


def test_canonical_source_ignores_local_names_but_not_globals():
    from gradc.codegen.pysource import canonical
    one = "@d\ndef _h0(a, b):\n    c = a + b * k  # note\n    return (c,)\n"
    two = "@d\ndef _h7(x, y):\n    z = x + y * k\n    return (z,)\n"
    assert canonical(one) == canonical(two)
    assert canonical(one) != canonical(two.replace("* k", "* m"))       # a global
    assert canonical(one) != canonical(two.replace("x + y", "y + x"))   # argument order
    assert canonical(one) != canonical(two.replace("@d", "@e"))         # decorator


@pytest.mark.parametrize("reverse", [False, True])
def test_a_selection_in_a_tested_nest_narrows_its_sides(monkeypatch, reverse):
    """In a nest that keeps its tests (too many pieces), a select on a concatenation's
    window (``np.roll``'s) is an ``if``/``else`` whose sides know the loop variable's
    range: the pads under them need no window tests.  Read forwards and reversed (an
    index of step -1)."""
    import gradc.codegen.loops as loops
    monkeypatch.setattr(loops, "MAX_PIECES", 1)

    def f(x, w):
        r = np.roll(x, 2) + np.concatenate([x[3:], np.sin(x[:3])])
        if reverse:
            r = r[::-1]
        return np.sum(r * w)
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(9), rng.standard_normal(9)
    source = gradc.jit(f, target="cpu").source(x, w)
    assert source.count("for i0 in range(") == 1
    assert source.count("if (") == 2 and source.count("else:") == 2
    assert ">= 0" not in source and "< 9:" not in source      # (no pad window tests)
    got = gradc.jit(f, target="cpu")(x, w)
    assert got == pytest.approx(f(x, w), rel=1e-14)
    g = gradc.grad(f, argnums=(0, 1))
    for a, b in zip(g(x, w), gradc.grad(f, argnums=(0, 1), target="numpy")(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
