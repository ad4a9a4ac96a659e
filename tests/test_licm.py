"""Loop-invariant code motion (``passes.licm``): a scan step's work on consts alone runs
once, before the loop, when ``gradc.scan`` is traced (and again on the compiled
targets' graphs, for the loops that differentiation makes).  The same operations on
the same values: results against a plain NumPy loop, gradients against finite
differences and across modes."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc.interpret import eval_graph
from gradc.testing import numerical_grad
from gradc.ir import Graph, Var, make_eqn, verify
from gradc.passes import simplify
from gradc.passes.licm import hoist_invariants, maps_of_scans, split_invariants
from gradc.prims.elementwise import add_p
from gradc.prims.linalg import einsum_p
from gradc.prims.loops import scan_p
from gradc.prims.shape import transpose_p

rng = np.random.default_rng(11)
B, K, T = 3, 4, 5
W = rng.standard_normal((K, K))
U = rng.standard_normal((T, B, K))


def rnn(W, U):
    """A step that transposes and squashes its weight matrix at every step."""
    def step(h, u):
        V = np.tanh(np.transpose(W)) * 0.5
        h = np.tanh(h @ V + u)
        return h, np.sum(h, axis=1)
    h, ys = gradc.scan(step, np.zeros((B, K)), U)
    return np.sum(h) + np.sum(ys ** 2)


def rnn_numpy(W, U):
    h = np.zeros((B, K))
    total = 0.0
    for u in U:
        h = np.tanh(h @ (np.tanh(W.T) * 0.5) + u)
        total += np.sum(np.sum(h, axis=1) ** 2)
    return np.sum(h) + total


def scans(graph):
    return [e for e in graph.eqns if e.prim.name == "scan"]


def names(graph):
    return [e.prim.name for e in graph.eqns]


def test_the_steps_work_on_consts_runs_once_before_the_loop():
    graph = gradc.make_graph(rnn)(W, U)
    verify(graph)
    scan, = scans(graph)
    body = scan.params["body"]
    assert "tanh" in names(graph) and "transpose" in names(graph)
    # the body reads the squashed matrix as a const: one tanh left, the carry's
    assert names(body).count("tanh") == 1 and "transpose" not in names(body)
    assert scan.params["n_consts"] == 1 and tuple(body.inputs[0].shape) == (K, K)
    np.testing.assert_allclose(gradc.jit(rnn, target="numpy")(W, U), rnn_numpy(W, U),
                               rtol=1e-13)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_gradients_through_hoisted_work(target):
    """The weight's gradient: the loop sums the cotangent of the squashed matrix, and
    its pullback runs once after it; against finite differences, forward mode and the
    reference target."""
    g = gradc.grad(rnn, argnums=(0, 1), target=target)(W, U)
    eps = 1e-6
    for arg, k in ((W, 0), (U, 1)):
        d = rng.standard_normal(arg.shape)
        plus = [W, U]
        minus = [W, U]
        plus[k], minus[k] = arg + eps * d, arg - eps * d
        fd = (rnn_numpy(*plus) - rnn_numpy(*minus)) / (2 * eps)
        np.testing.assert_allclose(np.sum(g[k] * d), fd, rtol=1e-6)
        tangents = [np.zeros_like(W), np.zeros_like(U)]
        tangents[k] = d
        _, jv = gradc.jvp(rnn, (W, U), tuple(tangents))
        np.testing.assert_allclose(np.sum(g[k] * d), jv, rtol=1e-10)
    # the backward loop accumulates a plain sum; the weight's pullback follows it
    graph = simplify(gradc.make_graph(gradc.grad(rnn, target="numpy"))(W, U))
    back = scans(graph)[-1].params["body"]
    assert "tanh" not in names(back) and "transpose" not in names(back)


def test_views_and_broadcasts_stay_in_the_step():
    """A reshape or a broadcast of a const costs nothing where it is; work on a broadcast
    const larger than the const would become an array read at every step."""
    def f(W, U):
        def step(h, u):
            grown = np.exp(np.broadcast_to(W, (B, K, K)))      # larger than W
            return h + np.sum(grown * h[:, None, :], axis=2) * 0.1 + u, None
        h, _ = gradc.scan(step, np.zeros((B, K)), U)
        return np.sum(h)
    graph = gradc.make_graph(f)(W, U)
    scan, = scans(graph)
    assert "exp" in names(scan.params["body"]) and "exp" not in names(graph)
    want = np.zeros((B, K))
    for u in U:
        want = want + np.sum(np.exp(np.broadcast_to(W, (B, K, K))) * want[:, None, :],
                             axis=2) * 0.1 + u
    np.testing.assert_allclose(gradc.jit(f, target="cpu")(W, U), np.sum(want), rtol=1e-12)


def test_nothing_moves_out_of_a_loop_that_does_not_run():
    def f(W, U):
        def step(h, u):
            return h + np.tanh(W[0]) + u, None
        h, _ = gradc.scan(step, np.zeros((B, K)), U)
        return h
    graph = gradc.make_graph(f)(W, U[:0])
    assert "tanh" in names(scans(graph)[0].params["body"])
    np.testing.assert_array_equal(gradc.jit(f, target="numpy")(W, U[:0]), np.zeros((B, K)))
    graph = gradc.make_graph(f)(W, U)
    assert "tanh" not in names(scans(graph)[0].params["body"])


def test_a_hoisted_failure_names_the_line_in_the_step():
    S = np.array([[1.0, 2.0], [2.0, 4.0]])

    def f(a, x):
        def step(c, _):
            y = np.linalg.solve(a, np.ones(2))
            return c + y, None
        c, _ = gradc.scan(step, x, None, length=3)
        return np.sum(c)
    graph = gradc.make_graph(f)(np.eye(2), np.zeros(2))
    assert "solve" in names(graph) and "solve" not in names(scans(graph)[0].params["body"])
    with pytest.raises(gradc.EvaluationError,
                       match=r"(?i)singular(.|\n)*test_licm.py:\d+: y = np.linalg.solve"):
        gradc.jit(f, target="cpu")(S, np.zeros(2))


def test_the_compiled_targets_hoist_from_the_loops_differentiation_makes():
    """A scan made by hand (as the passes make them), its step transposing a const:
    ``hoist_invariants`` moves the transpose out, nested scans included, and the
    graph computes what it did."""
    def var(*shape):
        return Var(shape, np.dtype(np.float64))
    w, c, x = var(K, K), var(B, K), var(B, K)
    wt, prod, out = var(K, K), var(B, K), var(B, K)
    body = Graph((w, c, x), (
        make_eqn(transpose_p, (w,), (wt,), {"perm": (1, 0)}),
        make_eqn(einsum_p, (c, wt), (prod,), {"spec": "ij,jk->ik"}),
        make_eqn(add_p, (prod, x), (out,), {})), (out, out))
    split = split_invariants(body, 1)
    assert split is not None
    pre, new_body, keep = split
    assert names(pre) == ["transpose"] and "transpose" not in names(new_body) and keep == []
    W0, C0, X0 = var(K, K), var(B, K), var(T, B, K)
    carry, ys = var(B, K), var(T, B, K)
    outer = Graph((W0, C0, X0), (make_eqn(scan_p, (W0, C0, X0), (carry, ys), {
        "body": body, "n_consts": 1, "n_carry": 1, "length": T, "reverse": False}),),
        (carry, ys))
    hoisted = hoist_invariants(outer)
    verify(hoisted)
    assert names(hoisted) == ["transpose", "scan"]
    args = [W, rng.standard_normal((B, K)), U]
    for a, b in zip(eval_graph(outer, args), eval_graph(hoisted, args)):
        np.testing.assert_array_equal(a, b)
    assert hoist_invariants(hoisted) is hoisted


def test_a_step_on_a_transposed_const_is_one_kernel_on_the_gpu():
    """(The CUDA target's one-kernel scan needs every value of the step to have the
    batch axis: a transposed const inside the step sent both loops to the host.)"""
    script = textwrap.dedent("""
        import os, sys
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        sys.path.insert(0, {tests!r})
        import numpy as np, gradc
        from test_licm import rnn, W, U
        g = gradc.value_and_grad(rnn, argnums=(0, 1), target="cuda")
        src = g.source(W, U)
        (v, (gw, gu)) = g(W, U)
        (vr, (gwr, gur)) = gradc.value_and_grad(rnn, argnums=(0, 1), target="numpy")(W, U)
        np.testing.assert_allclose(v, vr, rtol=1e-12)
        np.testing.assert_allclose(gw, gwr, rtol=1e-10)
        np.testing.assert_allclose(gu, gur, rtol=1e-10)
        print(src.count("the scan as one kernel"))
    """).format(tests=os.path.dirname(__file__))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "2"


def _while_transposed(W, b, n):
    """A while_loop whose body reads W's transpose halved, and a float64 copy of W
    (float32)."""
    def body(c):
        h, k = c
        return np.tanh((W.T / 2.0) @ h + 0.5 * W.astype(np.float64)[0]), k + 1
    h, _ = gradc.while_loop(lambda c: c[1] < n, body, (b, 0))
    return np.sum(h ** 2)


def _while_unsafe(W, b, i, n):
    """A while_loop whose body reads W's rows at indices ``i``: work on consts alone
    that could fail if it ran before a loop of no trip (and the division of what it
    reads)."""
    def body(c):
        h, k = c
        return np.tanh((W[i] / 3.0) @ h), k + 1
    h, _ = gradc.while_loop(lambda c: c[1] < n, body, (b, 0))
    return np.sum(h ** 2)


def test_while_loops_and_their_reverse_mode_hoist_work_that_cannot_fail():
    """``hoist_invariants`` on the compiled targets' graphs: a while_loop's transpose,
    float division and conversion of a const run before it, and in reverse mode (``while_adjoint``)
    before the tape's loop and the backward sweep too, as consts that are not
    differentiated (their cotangents still reach W through the step's own
    equations).  An index stays in the body (and what reads it): it would run before
    the loop even where the loop makes no trip.  Values and gradients as the interpreter's."""
    from gradc.codegen.compile import optimise

    def of(graph, name):
        return [e for e in graph.eqns if e.prim.name == name]
    W32, b = rng.standard_normal((K, K)).astype(np.float32), rng.standard_normal(K)
    f = gradc.grad(_while_transposed, argnums=(0, 1))
    traced = gradc.make_graph(f)(W32, b, 4)
    for target in ("cpu", "cuda"):
        got = optimise(traced, target)
        verify(got)
        loop, = of(got, "while_loop")
        adjoint, = of(got, "while_adjoint")
        assert not {"transpose", "convert_element_type", "div"} & set(
            names(loop.params["branches"][1]))
        assert not {"transpose", "convert_element_type"} & set(
            names(adjoint.params["branches"][0]))
        before = of(traced, "while_adjoint")[0].params
        after = adjoint.params
        assert after["n_body"] > before["n_body"] and \
            after["lin"][:before["n_body"]] == before["lin"] and \
            not any(after["lin"][before["n_body"]:])
        assert names(after["branches"][1]).count("transpose") < \
            names(before["branches"][1]).count("transpose")
    for n in (0, 1, 4):
        for x, y in zip(gradc.grad(_while_transposed, argnums=(0, 1), target="cpu")(W32, b, n),
                        gradc.grad(_while_transposed, argnums=(0, 1), target="numpy")(
                            W32, b, n)):
            assert x.dtype == y.dtype
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    W0, i = rng.standard_normal((K, K)), np.array([1, 0, 3, 2])
    traced = gradc.make_graph(_while_unsafe)(W0, b, i, 3)
    body = of(hoist_invariants(traced), "while_loop")[0].params["branches"][1]
    assert {"gather", "div"} <= set(names(body))
    for target in ("cpu", "cuda"):        # (nothing of them before the loop)
        assert not {"gather", "div"} & set(names(optimise(traced, target)))
    for n in (0, 3):
        np.testing.assert_allclose(gradc.grad(_while_unsafe, target="cpu")(W0, b, i, n),
                                   gradc.grad(_while_unsafe, target="numpy")(W0, b, i, n),
                                   rtol=1e-12, atol=1e-12)


def test_what_may_run_before_a_while_loop():
    """``licm.safe``: arithmetic and transposes of any dtype; division and powers of
    floats (inf or nan, never an error), not of integers; no index."""
    from gradc.passes.licm import safe
    from gradc.prims.elementwise import div_p, pow_p
    from gradc.prims.index import gather_p

    def eqn(prim, dtype, params=None):
        a, b, out = (Var((3,), np.dtype(dtype)) for _ in range(3))
        return make_eqn(prim, (a, b), (out,), params or {})
    assert safe(eqn(add_p, np.int64)) and safe(eqn(add_p, np.float32))
    assert safe(make_eqn(transpose_p, (Var((2, 3), np.dtype(np.int32)),),
                         (Var((3, 2), np.dtype(np.int32)),), {"perm": (1, 0)}))
    for prim in (div_p, pow_p):
        assert safe(eqn(prim, np.float64)) and safe(eqn(prim, np.complex128))
        assert not safe(eqn(prim, np.int64))
    assert not safe(eqn(gather_p, np.float64, {"spec": (("a", 0),)}))


def accumulated(W, U):
    """A carry that only adds a function of each step's operand (``d + g(x_t)``):
    reverse mode's scan hands ``d``'s cotangent to every step unchanged."""
    def step(d, u):
        return d + np.sum(np.tanh(u @ W) ** 2, axis=1) * 0.5, None
    d, _ = gradc.scan(step, np.ones(B), U)
    return np.sum(d ** 2)


def accumulated_numpy(W, U):
    d = np.ones(B)
    for u in U:
        d = d + np.sum(np.tanh(u @ W) ** 2, axis=1) * 0.5
    return np.sum(d ** 2)


@pytest.mark.parametrize("target", ["cpu", "numpy"])
def test_a_scan_whose_carries_never_change_is_a_map(target, monkeypatch):
    """``maps_of_scans``: a carry that only accumulates ``d + g(x_t)`` is a sum over the
    steps of ``g`` batched over them, and its gradient a scan whose carry every step
    hands back unchanged (stacking ``g``'s transposes) while W's cotangent
    accumulates: on the GPU's graphs both are their bodies batched over the steps,
    inlined, with sums over the steps (no loop left), and the gradients are as finite
    differences' and the interpreter's."""
    g = gradc.grad(accumulated, argnums=(0, 1), target=target)
    gw, gu = g(W, U)
    eps = 1e-6
    for k in range(3):
        d = rng.standard_normal(W.shape)
        fd = (accumulated_numpy(W + eps * d, U) - accumulated_numpy(W - eps * d, U)) / (2 * eps)
        np.testing.assert_allclose(np.sum(gw * d), fd, rtol=1e-6, atol=1e-8)
        d = rng.standard_normal(U.shape)
        fd = (accumulated_numpy(W, U + eps * d) - accumulated_numpy(W, U - eps * d)) / (2 * eps)
        np.testing.assert_allclose(np.sum(gu * d), fd, rtol=1e-6, atol=1e-8)
    traced = gradc.make_graph(gradc.grad(accumulated, argnums=(0, 1)))(W, U)
    assert len(scans(traced)) == 2             # (forward, and the map reverse mode makes)
    if target == "cpu":
        # (maps on the GPU's graphs, and on the CPU's where the step's contractions
        # are small: here 3 x 4 x 4 products, not more than licm.CPU_PRODUCT)
        from gradc.codegen.compile import optimise
        from gradc.passes import licm
        mapped = optimise(traced, "cuda")
        assert not scans(mapped) and not scans(g.graph(W, U)), mapped
        np.testing.assert_allclose(eval_graph(mapped, [W, U])[1], gu, rtol=1e-12,
                                   atol=1e-12)
        monkeypatch.setattr(licm, "CPU_PRODUCT", B * K * K - 1)
        assert len(scans(optimise(traced, "cpu"))) == 2
        assert not scans(optimise(traced, "cuda"))
        ref = gradc.grad(accumulated, argnums=(0, 1), target="numpy")(W, U)
        for a, b in zip((gw, gu), ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_maps_of_scans_by_hand():
    """A scan without carries, one whose carry is handed back (read by the step), a
    scan of no steps, and a map inside a loop's body: the first two become their
    bodies over all steps, with the carry's final value its first; the others stay; the
    graph computes what it did."""
    def var(*shape):
        return Var(shape, np.dtype(np.float64))
    w, c, x = var(K, K), var(B, K), var(B, K)
    prod, out = var(B, K), var(B, K)
    body = Graph((w, c, x), (
        make_eqn(einsum_p, (c, w), (prod,), {"spec": "ij,jk->ik"}),
        make_eqn(add_p, (prod, x), (out,), {})), (c, out))
    W0, C0, X0 = var(K, K), var(B, K), var(T, B, K)
    carry, ys = var(B, K), var(T, B, K)
    scan = make_eqn(scan_p, (W0, C0, X0), (carry, ys), {
        "body": body, "n_consts": 1, "n_carry": 1, "length": T, "reverse": True})
    sum_ys = var(B, K)
    again = make_eqn(add_p, (carry, carry), (sum_ys,), {})
    outer = Graph((W0, C0, X0), (scan, again), (carry, ys, sum_ys))
    mapped = maps_of_scans(outer)
    verify(mapped)
    assert "scan" not in names(mapped) and mapped.outputs[0] is C0
    args = [W, rng.standard_normal((B, K)), U]
    for a, b in zip(eval_graph(outer, args), eval_graph(mapped, args)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
    # (no carries at all)
    x2, y2 = var(B, K), var(B, K)
    tanh_body = Graph((x2,), (make_eqn(add_p, (x2, x2), (y2,), {}),), (y2,))
    Y = var(T, B, K)
    none = Graph((X0,), (make_eqn(scan_p, (X0,), (Y,), {
        "body": tanh_body, "n_consts": 0, "n_carry": 0, "length": T, "reverse": False}),),
        (Y,))
    assert "scan" not in names(maps_of_scans(none))
    np.testing.assert_array_equal(eval_graph(maps_of_scans(none), [U])[0], 2 * U)
    # (a scan of no steps, and a carry that changes, stay)
    X00, Y0 = var(0, B, K), var(0, B, K)
    empty = Graph((X00,), (make_eqn(scan_p, (X00,), (Y0,), {
        "body": tanh_body, "n_consts": 0, "n_carry": 0, "length": 0, "reverse": False}),),
        (Y0,))
    assert maps_of_scans(empty) is empty
    changing = Graph(body.inputs, body.eqns, (out, out))
    loop = Graph((W0, C0, X0), (make_eqn(scan_p, (W0, C0, X0), (carry, ys), {
        "body": changing, "n_consts": 1, "n_carry": 1, "length": T, "reverse": False}),),
        (carry, ys))
    assert maps_of_scans(loop) is loop
    # (a map inside a loop's body: rewritten there)
    C2, Z, C1 = var(B, K), var(T, T, B, K), var(B, K)
    nested = Graph((W0, C0, X0), (make_eqn(scan_p, (W0, X0, C0), (C2, Z), {
        "body": Graph((W0, X0, carry), (make_eqn(scan_p, (W0, carry, X0), (C1, ys), {
            "body": body, "n_consts": 1, "n_carry": 1, "length": T, "reverse": False}),
            make_eqn(add_p, (C1, C1), (sum_ys,), {})), (sum_ys, ys)),
        "n_consts": 2, "n_carry": 1, "length": T, "reverse": False}),), (C2, Z))
    verify(nested)
    rewritten = maps_of_scans(nested)
    verify(rewritten)
    (outer_scan,) = scans(rewritten)
    assert "scan" not in names(outer_scan.params["body"])
    args = [W, rng.standard_normal((B, K)), U]
    for a, b in zip(eval_graph(nested, args), eval_graph(rewritten, args)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


def test_what_stays_a_loop(monkeypatch):
    """A carry accumulating a term that reads another accumulating carry is no map;
    nor is a map that would make a value larger than the loop's own arrays and than
    ``MAP_ELEMENTS`` (a step's outer product stacked over the steps); with the limit
    above it, it is one, and computes what the loop did."""
    from gradc.passes import licm

    def chained(x0, xs):
        def step(c, x):
            a, b = c
            return (a + x, b + a * x), None
        (a, b), _ = gradc.scan(step, (x0, x0), xs)
        return a, b

    def outer(xs):
        def step(c, x):
            return c + np.sum(x[:, :, None] * x[:, None, :], axis=0), None
        return gradc.scan(step, np.zeros((K, K)), xs)[0]
    g = gradc.make_graph(chained)(np.ones(K), U[:, 0])
    assert len(scans(licm.maps_of_scans(g))) == 1
    g = gradc.make_graph(outer)(U)
    monkeypatch.setattr(licm, "MAP_ELEMENTS", 1)
    assert len(scans(licm.maps_of_scans(g))) == 1      # ((T, B, K, K) > (T, B, K))
    monkeypatch.setattr(licm, "MAP_ELEMENTS", T * B * K * K)
    mapped = licm.maps_of_scans(g)
    assert not scans(mapped)
    np.testing.assert_allclose(eval_graph(mapped, [U])[0], eval_graph(g, [U])[0],
                               rtol=1e-13, atol=1e-13)
    # (a contraction summed over the steps is one contraction: its (T, K, K) terms are
    # never made, so the limit does not apply to them)

    def gram(xs):
        def step(c, x):
            return c + x.T @ x, None
        return gradc.scan(step, np.zeros((K, K)), xs)[0]
    monkeypatch.setattr(licm, "MAP_ELEMENTS", 1)
    g = gradc.make_graph(gram)(U)
    mapped = licm.maps_of_scans(g)
    assert not scans(mapped), mapped
    (e,) = [e for e in mapped.eqns if e.prim.name == "einsum"]
    assert e.outputs[0].shape == (K, K) and "reduce_sum" not in names(mapped)
    np.testing.assert_allclose(eval_graph(mapped, [U])[0], np.einsum("tbi,tbj->ij", U, U),
                               rtol=1e-13, atol=1e-13)


def test_a_maps_sum_starts_with_the_carrys_first_value():
    """(Review.)  The map's sum over the steps adds the carry's first value to the first
    step's term, as the loop does first: what those first additions cancel or overflow
    stays as the loop had it (``-1e16 + 1e16`` then a hundred ones: 100, not 96;
    ``-3e38 + 3e38`` then ``3e38`` in float32: not inf)."""
    from gradc.codegen.compile import optimise

    def f(c0, xs):
        return gradc.scan(lambda c, x: (c + x, None), c0, xs)[0]
    for c0, xs, want in ((np.array([-1e16]), np.array([[1e16]] + [[1.0]] * 100), 100.0),
                         (np.array([-3e38], np.float32),
                          np.array([[3e38], [3e38]], np.float32), 3e38)):
        mapped = optimise(gradc.make_graph(f)(c0, xs), "cuda")
        assert not scans(mapped)
        got = eval_graph(mapped, [c0, xs])[0]
        np.testing.assert_allclose(got, [want], rtol=1e-7)
        np.testing.assert_array_equal(got, gradc.jit(f, target="numpy")(c0, xs))


def histogram_steps(G0, ts, w):
    """A carry that only adds a scatter of each step's tokens (repeated ones too: two
    window elements to one place), returned beside a sum of its first value."""
    from gradc import ops

    def step(G, t):
        return G + ops.scatter_add(w * 2.0, [t], (6, 3), (("a", 0), ("s", 0, 3, 1))), None
    G, _ = gradc.scan(step, G0, ts)
    return G, np.sum(G0)


def histogram_case(r):
    """``(G0, ts, w, what np.add.at makes of them)`` for ``histogram_steps``: negative
    tokens, and one step with a token twice."""
    G0, w = r.standard_normal((6, 3)), r.standard_normal((4, 3))
    ts = r.integers(-6, 6, (5, 4))
    ts[2] = [1, 1, -5, 0]
    want = G0.copy()
    for t in ts:
        np.add.at(want, t, 2.0 * w)
    return G0, ts, w, want


def test_a_scatter_summed_over_the_steps_is_one_scatter():
    """A carry adding a scatter of each step's values (a histogram over the steps,
    repeated and negative indices): the map is one ``scatter_add`` into the carry's
    shape, the steps' index dropped (``_scatter_over_steps``), no (T, ...) value made;
    the sum as ``np.add.at``'s, on the CPU and in the interpreter."""
    from gradc.codegen.compile import optimise
    G0, ts, w, want = histogram_case(rng)
    mapped = optimise(gradc.make_graph(histogram_steps)(G0, ts, w), "cpu")
    (e,) = [e for e in mapped.eqns if e.prim.name == "scatter_add"]
    assert not scans(mapped) and e.outputs[0].shape == (6, 3)
    assert all(tuple(v.shape) != (5, 6, 3) for q in mapped.eqns for v in q.outputs)
    np.testing.assert_allclose(eval_graph(mapped, [G0, ts, w])[0], want, rtol=1e-13,
                               atol=1e-13)
    np.testing.assert_allclose(gradc.jit(histogram_steps, target="cpu")(G0, ts, w)[0],
                               want, rtol=1e-13, atol=1e-13)


def test_gradc_scan_maps_0_keeps_the_loops(monkeypatch):
    """(The A/B switch of ``benchmarks/scan_maps.py``.)"""
    from gradc.codegen.compile import optimise
    traced = gradc.make_graph(gradc.grad(accumulated, argnums=(0, 1)))(W, U)
    assert not scans(optimise(traced, "cuda"))
    monkeypatch.setenv("GRADC_SCAN_MAPS", "0")
    assert len(scans(optimise(traced, "cuda"))) == 2


def test_gradc_licm_0_leaves_the_step_as_written(monkeypatch):
    """(The A/B switch of ``benchmarks/licm.py``.)"""
    monkeypatch.setenv("GRADC_LICM", "0")
    body = scans(gradc.make_graph(rnn)(W, U))[0].params["body"]
    assert names(body).count("tanh") == 2 and "transpose" in names(body)


def test_review_regressions():
    """(Review of the pass.)  A result of the step that hoisted work reads is computed
    in the step as well (the split read a value it never defined: at trace time, and
    for a ys of differentiation on a compiled target); a guard on a const in the step
    keeps the const it reads (``_prune_scan`` dropped it); a broadcast view that hoisted
    work and the step both read stays a view in the step, not an array of its size
    made before the loop and read at every step."""
    V = np.array([[0.5, -0.2], [0.1, 0.3]])

    def handed(W):
        def step(c, _):
            a = np.tanh(W)
            return c + a * 2, a
        c, ys = gradc.scan(step, np.zeros((2, 2)), None, length=3)
        return np.sum(c) + np.sum(ys)
    want = 3 * np.sum(np.tanh(V) * 2) + 3 * np.sum(np.tanh(V))
    for target in ("numpy", "cpu"):
        np.testing.assert_allclose(gradc.jit(handed, target=target)(V), want, rtol=1e-14)

    def ys_of_a_const(W):
        def step(h, x):
            return h + x, np.tanh(W)
        _, ys = gradc.scan(step, np.ones(2), np.ones((3, 2)))
        return np.sum(ys)
    ref = gradc.jvp(ys_of_a_const, (V,), (np.ones_like(V),), target="numpy")
    np.testing.assert_allclose(
        gradc.jvp(ys_of_a_const, (V,), (np.ones_like(V),), target="cpu"), ref, rtol=1e-13)

    def guarded(W, x):
        def step(c, _):
            z = np.tanh(W) if W[0, 0] > 0 else np.cos(W)
            return np.tanh(z @ c), None
        c, _ = gradc.scan(step, x, None, length=3)
        return np.sum(c)
    M = np.arange(9.0).reshape(3, 3) / 10 + 0.1
    verify(simplify(gradc.make_graph(guarded)(M, np.ones(3))))
    c = np.ones(3)
    for _ in range(3):
        c = np.tanh(np.tanh(M) @ c)
    np.testing.assert_allclose(gradc.jit(guarded, target="numpy")(M, np.ones(3)), np.sum(c),
                               rtol=1e-14)

    def viewed(w, X):
        def step(h, x):
            Bw = np.broadcast_to(w, (50, 4))
            return np.tanh(np.sum(Bw * h) * 1e-3 + Bw[0, 0] * x), None
        h, _ = gradc.scan(step, np.float64(0.1), X)
        return h
    graph = gradc.make_graph(viewed)(np.ones(4), np.ones(5))
    scan, = scans(graph)
    assert all(np.prod(v.shape) <= 4 for v in scan.params["body"].inputs)   # (no (50, 4))
    assert "broadcast_in_dim" in names(scan.params["body"])


# ------------------------------------------- accumulated contractions after the loop

def rnn_sequence(W, xs):
    """An RNN over one sequence: reverse mode accumulates ``outer(d_t, h_{t-1})``
    into W's cotangent at every step."""
    def step(h, x):
        h = np.tanh(W @ h + x)
        return h, np.sum(h * h)
    return np.sum(gradc.scan(step, np.zeros(W.shape[0]), xs)[1])


def _carries(graph):
    return [tuple(v.shape) for e in scans(graph)
            for v in e.outputs[:e.params["n_carry"]]]


def test_an_accumulated_outer_product_is_one_product_after_the_loop(monkeypatch):
    """The backward loop of an RNN over one sequence carries W's cotangent, adding a
    K×K outer product at every step; the CPU target carries only the K-vector and
    makes W's cotangent as one product over the steps after the loop (the loop's
    stacked cotangents with the stacked states).  Same values as the interpreter's
    (itself checked against finite differences), on both float widths;
    ``GRADC_SCAN_SUMS=0`` keeps the carry."""
    from gradc.codegen.compile import optimise
    k, t = 5, 7
    Wk = 0.5 * rng.standard_normal((k, k))
    xs = rng.standard_normal((t, k))
    traced = gradc.make_graph(gradc.grad(rnn_sequence, argnums=(0, 1)))(Wk, xs)
    assert (k, k) in _carries(traced)
    cpu = optimise(traced, "cpu")
    verify(cpu)
    assert (k, k) not in _carries(cpu) and (k,) in _carries(cpu)
    after = [e for e in cpu.eqns if e.prim.name == "einsum"]
    assert [e.params["spec"] for e in after] == ["zi,zj->ij"], cpu
    assert (k, k) in _carries(optimise(traced, "cuda"))   # (the GPU's scans sum rows)
    want = gradc.grad(rnn_sequence, argnums=(0, 1), target="numpy")(Wk, xs)
    dW = numerical_grad(lambda w: rnn_sequence(w, xs), Wk)   # (the interpreter's, checked)
    np.testing.assert_allclose(want[0], dW, rtol=1e-6, atol=1e-8)
    g = gradc.grad(rnn_sequence, argnums=(0, 1), target="cpu")
    for got, ref in zip(g(Wk, xs), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    got32 = g(Wk.astype(np.float32), xs.astype(np.float32))
    for got, ref in zip(got32, want):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    monkeypatch.setenv("GRADC_SCAN_SUMS", "0")
    assert (k, k) in _carries(optimise(traced, "cpu"))


def test_a_batched_rnns_weight_gradient_sums_the_batch_and_the_steps_at_once():
    """``rnn`` (module level: B sequences, a step reading ``tanh(W.T) * 0.5``): the
    weight's cotangent accumulates ``h.T @ d`` over the batch at each step; summed
    after the loop it is one contraction over steps and batch (``zij,zik->jk``),
    and the gradient is the same as the loop's (interpreter) and finite differences'."""
    from gradc.codegen.compile import optimise
    traced = gradc.make_graph(gradc.grad(rnn, argnums=(0, 1)))(W, U)
    cpu = optimise(traced, "cpu")
    verify(cpu)
    assert (K, K) not in _carries(cpu)
    specs = [e.params["spec"] for e in cpu.eqns if e.prim.name == "einsum"]
    # (steps, batch and one of W's axes on each operand; W's two axes out)
    assert [s for s in specs if [len(t) for t in s.split("->")[0].split(",")] == [3, 3]
            and len(s.split("->")[1]) == 2], specs
    want = gradc.grad(rnn, argnums=(0, 1), target="numpy")(W, U)
    for got, ref in zip(gradc.grad(rnn, argnums=(0, 1), target="cpu")(W, U), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(want[0], numerical_grad(lambda w: rnn_numpy(w, U), W),
                               rtol=1e-6, atol=1e-7)


def _hand_scan(body, consts, carries, xs, T, reverse=False):
    """A scan equation over ``body`` (Vars made here), its Graph, and its inputs'
    values; ``consts``, ``carries``, ``xs``: (Var of the body, outer value) pairs."""
    outer_in = [Var(np.shape(v), np.asarray(v).dtype) for _, v in consts + carries + xs]
    ys = [Var((T,) + tuple(o.shape), o.dtype) for o in body.outputs[len(carries):]]
    outs = [Var(tuple(c.shape), c.dtype) for c, _ in carries] + ys
    eqn = make_eqn(scan_p, tuple(outer_in), tuple(outs), {
        "body": body, "n_consts": len(consts), "n_carry": len(carries), "length": T,
        "reverse": reverse})
    return Graph(tuple(outer_in), (eqn,), tuple(outs)), \
        [np.asarray(v) for _, v in consts + carries + xs]


def test_sums_after_scans_by_hand():
    """Each kind of operand: a const (read as it is, the other operand summed over the
    steps first), an xs (read stacked as the loop got it), a recurrent carry and a
    value computed in the step (stacked by the loop as new ys), a reverse loop; a term
    whose step operand is larger than the carry stays in the loop.  Each rewritten
    graph computes what the loop did."""
    from gradc.passes.licm import sums_after_scans
    from gradc.prims.elementwise import mul_p, tanh_p

    def var(*shape):
        return Var(shape, np.dtype(np.float64))
    n, T = 4, 6
    r = np.random.default_rng(3)
    Wv = r.standard_normal((n, n))
    Xs = r.standard_normal((T, n))
    Ms = r.standard_normal((T, n, n))

    def check(graph, args, folded):
        new = sums_after_scans(graph)
        verify(new)
        if not folded:
            assert new is graph
            return
        assert len(_carries(new)) < len(_carries(graph)), new
        for a, b in zip(eval_graph(graph, args), eval_graph(new, args)):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    for reverse in (False, True):
        # h' = tanh(W h + x);  A' = A + outer(h', h);  b' = b + W x
        w, h, a, b, x = var(n, n), var(n), var(n, n), var(n), var(n)
        p, q, hn, o, an, wx, bn = var(n), var(n), var(n), var(n, n), var(n, n), var(n), var(n)
        body = Graph((w, h, a, b, x), (
            make_eqn(einsum_p, (w, h), (p,), {"spec": "ij,j->i"}),
            make_eqn(add_p, (p, x), (q,), {}),
            make_eqn(tanh_p, (q,), (hn,), {}),
            make_eqn(einsum_p, (hn, h), (o,), {"spec": "i,j->ij"}),
            make_eqn(add_p, (a, o), (an,), {}),
            make_eqn(einsum_p, (w, x), (wx,), {"spec": "ij,j->i"}),
            make_eqn(add_p, (b, wx), (bn,), {})), (hn, an, bn, hn))
        graph, args = _hand_scan(body, [(w, Wv)], [(h, np.zeros(n)), (a, np.ones((n, n))),
                                                   (b, np.arange(n) * 1.0)], [(x, Xs)],
                                 T, reverse)
        new = sums_after_scans(graph)
        assert _carries(new) == [(n,)], new
        assert sorted(e.params["spec"] for e in new.eqns if e.prim.name == "einsum") == \
            ["ij,j->i", "zi,zj->ij"]
        assert "reduce_sum" in names(new)
        check(graph, args, True)
    # a term reading a carry that also adds up (a' = a + x, but read by the term too:
    # no accumulator, a value of the step, stacked): c' = c + outer(a, x)
    c2, a2, x2, an2, o2, cn2 = var(n, n), var(n), var(n), var(n), var(n, n), var(n, n)
    body = Graph((a2, c2, x2), (
        make_eqn(add_p, (a2, x2), (an2,), {}),
        make_eqn(einsum_p, (a2, x2), (o2,), {"spec": "i,j->ij"}),
        make_eqn(add_p, (c2, o2), (cn2,), {})), (an2, cn2))
    graph, args = _hand_scan(body, [], [(a2, np.zeros(n)), (c2, np.zeros((n, n)))],
                             [(x2, Xs)], T)
    assert _carries(sums_after_scans(graph)) == [(n,)]
    check(graph, args, True)
    # a step's operand larger than the carry: c' = c + M_t h with M_t computed (n×n)
    h3, c3, m3, mm, o3, cn3 = var(n), var(n), var(n, n), var(n, n), var(n), var(n)
    body = Graph((h3, c3, m3), (
        make_eqn(mul_p, (m3, m3), (mm,), {}),
        make_eqn(einsum_p, (mm, h3), (o3,), {"spec": "ij,j->i"}),
        make_eqn(add_p, (c3, o3), (cn3,), {})), (h3, cn3))
    graph, args = _hand_scan(body, [], [(h3, np.ones(n)), (c3, np.zeros(n))], [(m3, Ms)], T)
    check(graph, args, False)


def _tanh_step(W, z, b, kind):
    return np.tanh(z @ W + b if kind == "batch" else W.T @ z + b if kind == "transposed"
                   else W @ z + b)


def solve_tanh(W, b, limit, checkpoint=None, kind="vector"):
    """``z = tanh(W z + b)`` (``W.T z``; or a batch ``Z = tanh(Z W + b)``) until
    ``limit`` trips: reverse mode accumulates ``outer(d_t, z_t)`` (its transpose;
    ``Z_t.T D_t``) into W's cotangent at every trip."""
    def body(c):
        z, k = c
        return _tanh_step(W, z, b, kind), k + 1
    z, _ = gradc.while_loop(lambda c: c[1] < limit, body, (np.zeros_like(b), 0),
                            checkpoint=checkpoint)
    return np.sum(z ** 2) + np.sum(z)


def solve_tanh_numpy(W, b, limit, kind="vector"):
    z = np.zeros_like(b)
    for _ in range(limit):
        z = _tanh_step(W, z, b, kind)
    return np.sum(z ** 2) + np.sum(z)


@pytest.mark.parametrize("kind", ["vector", "batch", "transposed"])
def test_reverse_mode_through_a_while_loop_sums_its_outer_products_after_the_sweep(
        kind, monkeypatch):
    """The backward sweep of a fixed-point iteration stacks W's cotangent terms' left
    operand (a vector a trip) and makes W's cotangent as one product with the tape
    after the sweep (``np.dot(...T, ...)``), not a K×K product and add at each trip.
    Gradient equal to the interpreter's and finite differences', for 0, 1 and 9 trips
    (one compile: the count is traced), float64 and float32, with a batch
    (``bi,bj->ij``, steps and batch in one product) and transposed (``W.T @ z``: the
    product's transpose, the other way round); ``checkpoint=`` and
    ``GRADC_SCAN_SUMS=0`` keep the sum in the sweep."""
    k = 5
    r = np.random.default_rng(5)
    Wk = 0.4 * r.standard_normal((k, k))
    b = r.standard_normal((3, k) if kind == "batch" else k)
    g = gradc.grad(solve_tanh, argnums=(0, 1), target="cpu")
    src = g.source(Wk, b, np.int64(9), None, kind)
    sweep = src[src.rindex("= while_adjoint["):]
    assert "np.dot(" in sweep and ".reshape((" in sweep
    assert sum(" += " in line for line in sweep.splitlines()) == 1    # (b's alone)
    ref = gradc.grad(solve_tanh, argnums=(0, 1), target="numpy")
    for n in map(np.int64, (0, 1, 9)):
        got = g(Wk, b, n, None, kind)
        for x, y in zip(got, ref(Wk, b, n, None, kind)):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13)
        if n == 0:
            assert not np.any(got[0])
    dW = numerical_grad(lambda w: solve_tanh_numpy(w, b, 9, kind), Wk)
    np.testing.assert_allclose(g(Wk, b, np.int64(9), None, kind)[0], dW, rtol=1e-6,
                               atol=1e-8)
    if kind != "vector":
        return
    got32 = g(Wk.astype(np.float32), b.astype(np.float32), np.int64(9), None, kind)
    assert got32[0].dtype == np.float32
    np.testing.assert_allclose(got32[0], dW, rtol=2e-5, atol=2e-5)
    # (the sweep as before: tested in test_loops.py)
    kept = g.source(Wk, b, np.int64(9), 4, kind)
    assert "np.dot(" not in kept[kept.rindex("= while_adjoint["):]
    monkeypatch.setenv("GRADC_SCAN_SUMS", "0")
    off = gradc.grad(solve_tanh, argnums=(0, 1), target="cpu").source(
        Wk, b, np.int64(9), None, kind)
    assert "np.dot(" not in off[off.rindex("= while_adjoint["):]


def test_a_hessian_through_a_while_loop_with_its_sums_after_the_sweep():
    """``hessian`` through the while loop (``while_hessian``, the same sweep over
    values and tangents): equal to the interpreter's, and symmetric."""
    k = 3
    r = np.random.default_rng(6)
    Wk, b = 0.4 * r.standard_normal((k, k)), r.standard_normal(k)

    def f(w):
        return solve_tanh(w.reshape(k, k), b, 6)
    H = gradc.hessian(f, target="cpu")(Wk.ravel())
    np.testing.assert_allclose(H, gradc.hessian(f, target="numpy")(Wk.ravel()),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-12)


def test_a_maps_contraction_with_an_operand_the_steps_share():
    """A scan that is a map, accumulating ``einsum('i,j->ij', w_t, x)`` with ``x`` the
    same at every step (here an outer scan's value): the steps' letter is on one
    operand only, which no einsum of the primitive sums (``zi,j->ij``): the term stays
    stacked and summed.  It compiled to an invalid einsum: the CPU target fell back to
    the interpreter with a warning, or (``c + W @ x_t``) returned a wrong shape."""
    import warnings
    r = np.random.default_rng(9)
    X, Wm = r.standard_normal((5, 4)), r.standard_normal((4, 4))

    def f(X, W):
        def outer(C, x):
            def inner(D, w):
                return D + np.einsum("i,j->ij", w, x), None
            return C + gradc.scan(inner, np.zeros((4, 4)), W)[0], None
        return gradc.scan(outer, np.zeros((4, 4)), X)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = gradc.jit(f, target="cpu")(X, Wm)
    np.testing.assert_allclose(got, np.einsum("ti,sj->ij", Wm, X), rtol=1e-12, atol=1e-12)
    # c + W @ x_t: the map's contraction ij,zj->i came back (4, 5)-shaped on the CPU
    A = r.standard_normal((4, 3))

    def g(A, X):
        return gradc.scan(lambda c, x: (c + A @ x, None), np.zeros(4), X)[0]
    for target in ("cpu", "numpy"):
        got = gradc.jit(g, target=target)(A, X[:, :3])
        assert got.shape == (4,)
        np.testing.assert_allclose(got, A @ X[:, :3].sum(0), rtol=1e-12, atol=1e-12)
