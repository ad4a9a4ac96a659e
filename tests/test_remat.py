"""The tape cut (``passes.remat``): which values of a loop's step reverse mode keeps (on
the GPU anything elementwise is recomputed, on the CPU arithmetic and views only), and
the backward loop recomputing the rest.  Each rewritten graph is checked
(``verify``, bodies included) and run by the reference interpreter against the graph
before the rewrite."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gradc
from gradc.interpret import eval_graph
from gradc.ir import verify
from gradc.passes import simplify
from gradc.passes.linearize import linearize_graph
from gradc.passes.remat import remat_scans, tape_cut

rng = np.random.default_rng(7)


def crf(U, A):
    def step(alpha, u):
        return gradc.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
    xs = np.transpose(U, (1, 0, 2))
    alpha, _ = gradc.scan(step, xs[0], xs[1:])
    return np.sum(gradc.logsumexp(alpha, axis=1))


def grad_graph(f, *args):
    g = gradc.grad(f, argnums=tuple(range(len(args))), target="numpy")
    return simplify(gradc.make_graph(g)(*args))


def scans(graph):
    return [e for e in graph.eqns if e.prim.name == "scan"]


def tape(graph):
    """The shapes the first scan stacks for the second."""
    fwd, bwd = scans(graph)[:2]
    n = fwd.params["n_carry"]
    return sorted(tuple(y.shape) for y in fwd.outputs[n:] if y in bwd.inputs)


def test_the_crf_step_keeps_its_carry_its_max_and_its_sum():
    B, K = 3, 16
    U, A = rng.standard_normal((B, 6, K)), rng.standard_normal((K, K))
    scan = scans(gradc.make_graph(crf)(U, A))[0]
    body = scan.params["body"]
    primal, _ = linearize_graph(body, [True, True, True])
    keep, eqns = tape_cut(primal, len(body.outputs), 1, 5)
    carry = primal.inputs[1]
    assert carry in keep
    made_by = {o: e.prim.name for e in primal.eqns for o in e.outputs}
    assert sorted(made_by.get(v, "input") for v in keep) == ["input", "reduce_max",
                                                             "reduce_sum"]
    assert all(tuple(v.shape) in ((B, K), (B, 1, K), (B, K, 1)) for v in keep)
    # what the backward step computes again: no reduction, and the exponentials
    names = [e.prim.name for e in eqns]
    assert "exp" in names and not any(n.startswith("reduce") for n in names)


@pytest.mark.parametrize("K", [12, 16, 33])
def test_the_crf_gradient_with_its_tape_cut_is_the_same(K):
    U, A = rng.standard_normal((4, 5, K)), rng.standard_normal((K, K))
    graph = grad_graph(crf, U, A)
    cut = remat_scans(graph)
    verify(cut)
    assert tape(graph) == sorted([(4, 4, K, K), (4, 4, 1, K)])
    assert tape(cut) == [(4, 4, K)] * 3           # (the carry, its max, its sum)
    want, got = eval_graph(graph, [U, A]), eval_graph(cut, [U, A])
    for w, g in zip(want, got):                   # (the same operations, in order)
        np.testing.assert_array_equal(g, w)


def test_a_small_saving_leaves_the_tape_alone():
    # K = 3: the (B, K, K) tape is 3x the carry, under the 4x the cut must save
    U, A = rng.standard_normal((4, 5, 3)), rng.standard_normal((3, 3))
    graph = grad_graph(crf, U, A)
    assert remat_scans(graph) is graph


def _rnn(W, xs):
    def step(h, x):
        h = np.tanh(h @ W + x)
        return h, np.sum(h * h)
    h, ys = gradc.scan(step, np.zeros(xs.shape[1:]), xs)
    return np.sum(ys)


@pytest.mark.parametrize("cheap", [False, True])
def test_arithmetic_alone_is_recomputed_for_any_saving(cheap):
    """An RNN's step stacks its old state, tanh's result and tanh's derivative
    ``1 - h * h``: the cut keeps the first two and recomputes the third, a saving of a
    third (under ``SAVING``), since recomputing arithmetic costs less than the tape's
    round trip on either machine."""
    args = (rng.standard_normal((6, 6)) / 3, rng.standard_normal((7, 2, 6)))
    graph = grad_graph(_rnn, *args)
    assert tape(graph) == [(7, 2, 6)] * 3
    cut = remat_scans(graph, cheap=cheap)
    verify(cut)
    assert tape(cut) == [(7, 2, 6)] * 2
    for a, b in zip(eval_graph(graph, list(args)), eval_graph(cut, list(args))):
        np.testing.assert_array_equal(a, b)


def test_remat_off_by_the_environment(monkeypatch):
    U, A = rng.standard_normal((2, 4, 12)), rng.standard_normal((12, 12))
    graph = grad_graph(crf, U, A)
    monkeypatch.setenv("GRADC_REMAT", "0")
    assert remat_scans(graph) is graph


def test_a_product_is_kept_not_recomputed():
    """The step's (B, K, K) outer product comes from a matmul: not recomputed, so the
    tape keeps what the tangent rules read."""
    xs = rng.standard_normal((4, 3, 12))

    def f(h0, w):
        def step(h, x):
            m = np.matmul(h[:, :, None], h[:, None, :])         # (B, K, K)
            return np.tanh(np.sum(np.sin(m) * w, axis=2)) + x, None
        h, _ = gradc.scan(step, h0, xs)
        return np.sum(h)
    h0, w = rng.standard_normal((3, 12)), rng.standard_normal((12, 12))
    graph = grad_graph(f, h0, w)
    cut = remat_scans(graph)
    assert (4, 3, 12, 12) in tape(cut)
    for a, b in zip(eval_graph(graph, [h0, w]), eval_graph(cut, [h0, w])):
        np.testing.assert_array_equal(a, b)


def test_a_tape_read_elsewhere_stays():
    """The forward scan's stacked result is also the function's output (through
    ``vjp``'s residuals, read by the user): not the backward scan's alone."""
    U, A = rng.standard_normal((2, 4, 12)), rng.standard_normal((12, 12))
    graph = grad_graph(crf, U, A)
    fwd = scans(graph)[0]
    stacked = fwd.outputs[fwd.params["n_carry"]:]
    exposed = graph.replace(outputs=tuple(graph.outputs) + tuple(stacked))
    assert remat_scans(exposed) is exposed


def test_free_values_are_computed_once_before_the_backward_loop():
    """A recomputation reading a function of the loop's consts (here ``A * 2``, the
    same at every step) gets it as a const of the backward loop, not a stacked one."""
    def f(U, A):
        def step(alpha, u):
            return gradc.logsumexp(alpha[:, :, None] + 2.0 * A[None], axis=1) + u, None
        alpha, _ = gradc.scan(step, U[0], U[1:])
        return np.sum(alpha)
    U, A = rng.standard_normal((5, 3, 12)), rng.standard_normal((12, 12))
    graph = grad_graph(f, U, A)
    cut = remat_scans(graph)
    bwd = scans(cut)[1]
    assert bwd.params["n_consts"] > scans(graph)[1].params["n_consts"]
    for a, b in zip(eval_graph(graph, [U, A]), eval_graph(cut, [U, A])):
        np.testing.assert_array_equal(a, b)


UNARY = {"exp": np.exp, "tanh": np.tanh, "sin": np.sin, "square": np.square}


@settings(max_examples=12, deadline=None)
@given(first=st.sampled_from(sorted(UNARY)), second=st.sampled_from(sorted(UNARY)),
       reduce=st.sampled_from(["sum", "max", "logsumexp"]), K=st.integers(8, 14),
       reverse=st.booleans())
def test_random_steps_cut_or_not_give_the_same_gradient(first, second, reduce, K, reverse):
    f1, f2 = UNARY[first], UNARY[second]
    red = {"sum": np.sum, "max": np.max, "logsumexp": gradc.logsumexp}[reduce]

    def f(h0, A, xs):
        def step(h, x):
            z = f2(f1(h[:, :, None] * 0.5 + A[None]) * 0.3)
            return 0.5 * np.tanh(red(z, axis=1)) + x, np.sum(h * h, axis=1)
        h, ys = gradc.scan(step, h0, xs, reverse=reverse)
        return np.sum(h) + np.sum(ys * ys)

    args = (rng.standard_normal((3, K)), rng.standard_normal((K, K)) * 0.5,
            rng.standard_normal((4, 3, K)))
    graph = grad_graph(f, *args)
    cut = remat_scans(graph)
    verify(cut)
    for a, b in zip(eval_graph(graph, list(args)), eval_graph(cut, list(args))):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-13)
    before = sum(int(np.prod(s)) for s in tape(graph))    # ((B, K, K) arrays: at least 2)
    assert sum(int(np.prod(s)) for s in tape(cut)) * 4 <= before


def test_a_kept_residual_is_read_once():
    """The sum of exponentials is a residual as it is (the tangent of its log reads it)
    and is kept; the (B, K, K) exponentials are recomputed.  The backward scan reads the
    kept sum through its old operand, not a second time."""
    def f(h0, A, xs):
        def step(h, x):
            s = np.sum(np.exp(h[:, :, None] * A[None]), axis=1)
            return 0.5 * h + np.log(s) + x, None
        h, _ = gradc.scan(step, h0, xs)
        return np.sum(h)
    args = (rng.standard_normal((3, 12)) * 0.3, rng.standard_normal((12, 12)) * 0.3,
            rng.standard_normal((4, 3, 12)))
    graph = grad_graph(f, *args)
    cut = remat_scans(graph)
    assert cut is not graph and all(len(s) == 3 for s in tape(cut))
    bwd = scans(cut)[1]
    operands = [a for a in bwd.inputs if isinstance(a, gradc.ir.Var)]
    assert len(operands) == len(set(operands))
    for a, b in zip(eval_graph(graph, list(args)), eval_graph(cut, list(args))):
        np.testing.assert_array_equal(a, b)


def bilinear(h0, W, xs):
    def step(h, x):
        return np.tanh(np.sum(h[:, :, None] * W[None], axis=1) * 0.1 + x), None
    h, _ = gradc.scan(step, h0, xs)
    return np.sum(h)


def test_the_cpu_cut_recomputes_arithmetic_only():
    """On the CPU (``cheap``) a broadcast is recomputed, an ``exp`` is not: the bilinear
    step stacks ``h`` instead of its (B, K, K) broadcast, the CRF keeps its tape."""
    args = (rng.standard_normal((3, 12)), rng.standard_normal((12, 12)),
            rng.standard_normal((4, 3, 12)))
    graph = grad_graph(bilinear, *args)
    assert (4, 3, 12, 12) in tape(graph)
    cut = remat_scans(graph, cheap=True)
    assert tape(cut) == [(4, 3, 12)] * 2                  # (h, and tanh's result)
    for a, b in zip(eval_graph(graph, list(args)), eval_graph(cut, list(args))):
        np.testing.assert_array_equal(a, b)
    U, A = rng.standard_normal((4, 5, 16)), rng.standard_normal((16, 16))
    crf_graph = grad_graph(crf, U, A)
    assert remat_scans(crf_graph, cheap=True) is crf_graph


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_compiled_cpu_gradients_with_the_cut_match_finite_differences(target):
    args = (rng.standard_normal((3, 12)), rng.standard_normal((12, 12)),
            rng.standard_normal((4, 3, 12)))
    g = gradc.grad(bilinear, argnums=(0, 1), target=target)
    optimised = g.specialise(*args).executable.graph      # (after the pass pipeline)
    fwd = scans(optimised)[0]
    assert [tuple(y.shape) for y in fwd.outputs[1:]] == [(4, 3, 12)] * 2
    got = g(*args)
    eps = 1e-6
    for k, x in enumerate(args[:2]):
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            up, down = [np.array(a) for a in args], [np.array(a) for a in args]
            up[k][idx] += eps
            down[k][idx] -= eps
            fd[idx] = (bilinear(*up) - bilinear(*down)) / (2 * eps)
        np.testing.assert_allclose(got[k], fd, rtol=1e-6, atol=1e-7)


def test_a_value_stacked_twice_is_left_alone():
    """A step returning one value twice, both read by the next scan (review
    regression: the rewrite left one of the later scan's operands undefined)."""
    def f(h0, A):
        def s1(h, _):
            e = h[:, :, None] * A                    # (3, 8, 8), a broadcast product
            return np.tanh(np.sum(e, axis=1)), (e, e)
        _, (e1, e2) = gradc.scan(s1, h0, length=4)
        c, _ = gradc.scan(lambda c, ee: (c + np.sum(ee[0] * ee[1], axis=2), None),
                          np.zeros((3, 8)), (e1, e2))
        return np.sum(c)
    args = (np.ones((3, 8)) * 0.1, np.eye(8) + 0.1)
    graph = simplify(gradc.make_graph(f)(*args))
    verify(remat_scans(graph))
    verify(remat_scans(graph, cheap=True))
    want = gradc.jit(f, target="numpy")(*args)
    np.testing.assert_allclose(gradc.jit(f, target="cpu")(*args), want, rtol=1e-13)


def test_a_vmapped_crf_gradient_gets_its_tape_cut():
    """vmap moves the batch axis out of the forward scan's stacked results and back in
    (two transposes that simplify folds away); the backward scan then reads the tape
    directly and the cut applies (review: it did not)."""
    U, A = rng.standard_normal((2, 3, 5, 16)), rng.standard_normal((16, 16))
    vg = gradc.vmap(gradc.grad(crf, argnums=(0, 1)), in_axes=(0, None))
    graph = simplify(gradc.make_graph(vg)(U, A))
    cut = remat_scans(graph)
    assert tape(cut) == [(4, 2, 3, 16)] * 3
    for a, b in zip(eval_graph(graph, [U, A]), eval_graph(cut, [U, A])):
        np.testing.assert_array_equal(a, b)
