"""gradc.vmap: the batching pass against a Python loop over the examples, for every row of
the primitive table (tests/test_prims.py), batched twice, composed with grad both ways,
compiled, and its errors."""
from __future__ import annotations

import numpy as np
import pytest

import gradc
from test_prims import ELEMENTWISE, ROWS, _assert_tree_equal, _is_static

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning",
                                        "ignore:divide by zero:RuntimeWarning")


def _examples(row, count=3):
    """Inputs for ``count`` examples, of one signature (a generator may draw a shape: the
    seeds that draw another are passed over)."""
    shape = (2, 3) if row.shapes == ELEMENTWISE else row.shapes[0]

    def signature(args):
        # (nonzero's result size is the mask's count: the same in every example, or the
        # examples' results would not stack)
        return [(np.shape(a), np.asarray(a).dtype,
                 int(np.sum(np.asarray(a) > 0)) if row.prim == "nonzero" else None)
                if not _is_static(a) else a for a in args]
    found = []
    for seed in range(200):
        args = row.gen(np.random.default_rng(seed), shape)
        if not found or signature(args) == signature(found[0]):
            found.append(args)
        if len(found) == count:
            return found
    raise AssertionError(f"row {row.id}: no {count} examples of one signature")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_vmap_of_every_row_equals_a_loop_over_the_examples(row):
    examples = _examples(row)
    first = examples[0]
    axes = tuple(None if _is_static(a) else 0 for a in first)
    stacked = tuple(a if ax is None else np.stack([np.asarray(e[i]) for e in examples])
                    for i, (a, ax) in enumerate(zip(first, axes)))
    batched = gradc.vmap(row.fn, in_axes=axes)
    if row.prim in ("guard", "nonzero"):    # control flow, or a length, from batched values
        with pytest.raises(gradc.ArgumentError, match="vmap: (Python control flow|a result "
                                                       "whose length depends on values)"):
            batched(*stacked)
        return
    want = [row.fn(*e) for e in examples]
    got = batched(*stacked)
    for k, w in enumerate(want):
        _assert_tree_equal(gradc.pytree.tree_map(lambda g: np.asarray(g)[k], got), w)


def test_vmap_of_vmap_axes_and_unmapped_arguments():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal(4)
    f = lambda x, w: np.sin(x) * np.sum(x * w)  # noqa: E731
    got = gradc.vmap(gradc.vmap(f, in_axes=(0, None)), in_axes=(0, None))(x, w)
    want = np.array([[f(r, w) for r in m] for m in x])
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # the example axis elsewhere, in and out
    got = gradc.vmap(f, in_axes=(1, None), out_axes=1)(x, w)
    want = np.stack([f(x[:, j], w) for j in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # one Graph, not a loop: no scan for elementwise work and an einsum
    def layer(x, W):
        return gradc.vmap(lambda x: np.tanh(W @ x))(x)
    graph = gradc.make_graph(layer)(x[0], rng.standard_normal((5, 4)))
    assert "scan" not in str(graph) and "einsum" in str(graph)


def test_vmap_composes_with_grad_both_ways():
    rng = np.random.default_rng(1)
    X, W = rng.standard_normal((6, 3)), rng.standard_normal((4, 3))
    f = lambda x, W: np.sum(np.tanh(W @ x) ** 2) + np.max(x) * x[0]  # noqa: E731
    per_example = gradc.vmap(gradc.grad(f), in_axes=(0, None))(X, W)
    np.testing.assert_allclose(per_example, [gradc.grad(f)(x, W) for x in X], rtol=1e-13)
    # the gradient of a batched sum: each example's gradient w.r.t. W, summed
    total = gradc.grad(lambda W: np.sum(gradc.vmap(f, in_axes=(0, None))(X, W)))(W)
    np.testing.assert_allclose(total, sum(gradc.grad(f, argnums=1)(x, W) for x in X),
                               rtol=1e-13)


def test_vmap_compiles_and_batches_loops():
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((4, 5, 3))

    def run(x):
        c, ys = gradc.scan(lambda c, r: (np.tanh(c + r), np.sum(c)), np.zeros(3), x)
        return c, ys
    want = [run(x) for x in xs]
    for target in ("numpy", "cpu"):
        got = gradc.vmap(run, target=target)(xs)
        for k, (c, ys) in enumerate(want):
            np.testing.assert_allclose(got[0][k], c, rtol=1e-13)
            np.testing.assert_allclose(got[1][k], ys, rtol=1e-13)


def test_vmap_errors_are_named():
    with pytest.raises(gradc.ArgumentError, match=r"one size; got 3 \(arguments \[0\]\), "
                                                  r"4 \(arguments \[1\]\)"):
        gradc.vmap(lambda a, b: a + b[:3])(np.ones(3), np.ones(4))
    with pytest.raises(gradc.ArgumentError, match="has no axis 2"):
        gradc.vmap(np.sin, in_axes=2)(np.ones((2, 2)))
    with pytest.raises(gradc.ArgumentError, match="in_axes has 1 entries for 2"):
        gradc.vmap(lambda a, b: a, in_axes=(0,))(np.ones(2), np.ones(2))
    # (out_axes past the result's rank, in a call and inside grad; not an int)
    with pytest.raises(gradc.ArgumentError, match=r"out_axes=3, but result 0 has shape "
                                                  r"\(2, 3\)[^\n]*\n +at .*test_vmap.py"):
        gradc.vmap(lambda a: a * 2.0, out_axes=3)(np.ones((2, 3)))
    with pytest.raises(gradc.ArgumentError, match="out_axes=-4"):
        gradc.grad(lambda x: np.sum(gradc.vmap(np.sin, out_axes=-4)(x)))(np.ones((2, 3)))
    with pytest.raises(gradc.ArgumentError, match="out_axes is an int, None, or a pytree"):
        gradc.vmap(np.sin, out_axes="0")
    # (the examples' counts differ here; equal ones would not be a reason to batch)
    for f in (lambda x: np.sum(x[x > 1]), lambda x: np.unique(x)):
        with pytest.raises(gradc.ArgumentError, match="np.where.mask, x, 0."):
            gradc.vmap(f)(np.array([[1.0, 2.0, 2.0], [3.0, 4.0, 4.5]]))


def test_linear_algebra_batches_without_a_loop():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 3, 3)) + 3.0 * np.eye(3)
    b, B = rng.standard_normal((4, 3)), rng.standard_normal((4, 3, 2))
    shared = b[0]
    for rhs, axes, per_example in ((b, 0, b), (B, 0, B), (shared, (0, None), [shared] * 4)):
        f = gradc.vmap(np.linalg.solve, in_axes=axes)
        want = [np.linalg.solve(a, r) for a, r in zip(A, per_example)]
        np.testing.assert_allclose(f(A, rhs), want, rtol=1e-12)
        assert "scan" not in str(f.graph(A, rhs))
    logdet = gradc.vmap(lambda a: np.linalg.slogdet(a)[1] + np.linalg.det(a))
    np.testing.assert_allclose(logdet(A), [np.linalg.slogdet(a)[1] + np.linalg.det(a)
                                           for a in A], rtol=1e-12)
    assert "scan" not in str(logdet.graph(A))


def test_conv2d_batches_images_natively_and_kernels_by_a_loop():
    rng = np.random.default_rng(5)
    images, kernel = rng.standard_normal((3, 2, 2, 5, 5)), rng.standard_normal((4, 2, 3, 3))
    f = gradc.vmap(lambda i, k: gradc.conv2d(i, k, padding="same"), in_axes=(0, None))
    want = [gradc.conv2d(i, kernel, padding="same") for i in images]
    np.testing.assert_allclose(f(images, kernel), want, rtol=1e-12)
    assert "scan" not in str(f.graph(images, kernel))
    # per-example gradients w.r.t. the kernel: a loop over the examples, same values
    loss = lambda k, i: np.sum(np.tanh(gradc.conv2d(i, k, padding="same")))  # noqa: E731
    per_example = gradc.vmap(gradc.grad(loss), in_axes=(None, 0))(kernel, images)
    np.testing.assert_allclose(per_example, [gradc.grad(loss)(kernel, i) for i in images],
                               rtol=1e-12)


IDX = np.array([2, 0, 2, 1])
IDX2 = np.array([[0, 3], [1, 1]])


@pytest.mark.parametrize("f", [
    lambda x: x[IDX] * 2.0,                       # gather, advanced index first
    lambda x: x[:, IDX2],                         # a 2-D index array after a slice
    lambda x: x[IDX, :, IDX[::-1]] + 1.0,         # advanced indices apart: moved first
    lambda x: x[1, :, IDX],                       # an integer and an array, apart
    lambda x: x[IDX, 1:3],                        # an array and a slice
    lambda x: x[..., 1][IDX],
], ids=["first", "2d-after-slice", "apart", "int-apart", "array-slice", "ellipsis"])
def test_indexing_with_shared_indices_batches_without_a_loop(f):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4, 4))
    got = gradc.vmap(f)(x)
    np.testing.assert_array_equal(got, np.stack([f(e) for e in x]))
    graph = gradc.make_graph(gradc.vmap(f))(x)
    assert "scan" not in str(graph) and "gather" in str(graph)
    # its gradient scatters (scatter_add), batched too
    g = gradc.vmap(gradc.grad(lambda e: np.sum(np.sin(f(e)))))
    want = np.stack([gradc.grad(lambda e: np.sum(np.sin(f(e))))(e) for e in x])
    np.testing.assert_allclose(g(x), want, rtol=1e-14)
    assert "scan" not in str(gradc.make_graph(g)(x))


@pytest.mark.parametrize("f, n, ishape", [
    (lambda x, i: x[i], 5, (3,)),
    (lambda x, i: x[:, i], 4, (2, 3)),
    (lambda x, i: x[1:3, i, ::2], 4, (2,)),
    (lambda x, i: x[i, 2], 5, (3,)),
    (lambda x, i: x[i, :, 1], 5, (2,)),            # an array and an integer, apart
    (lambda x, i: x[:, 1, i], 6, (3,)),            # adjacent, after a slice
    (lambda x, i: x[i, i[::-1] % 4], 5, (2, 2)),  # two arrays, one of them computed
    (lambda x, i: x[-1, :, i], 6, ()),             # a scalar index per example
    (lambda x, i: x[i, IDX[:2]], 5, (2, 1)),       # beside a shared index array
], ids=["first", "after-slice", "between-slices", "array-int", "apart", "adjacent-late",
        "two-arrays", "scalar", "shared-beside"])
def test_indexing_with_batched_indices_batches_without_a_loop(f, n, ishape):
    """Each example's own index arrays (an embedding's rows per example, a backpointer
    per sequence), into a shared array or each example's own (an arange over the
    examples then indexes the example axis): NumPy's result for every example, with
    negative indices, and no scan over the examples; and the gradient through them
    (a ``scatter_add`` through batched indices, batched without a scan too)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4, 6))
    i = rng.integers(-n, n, (3,) + ishape)
    xs = np.stack([x + k for k in range(3)])
    for axes, xin in (((None, 0), x), ((0, 0), xs)):
        g = gradc.vmap(f, in_axes=axes)
        want = np.stack([f(xin[k] if axes[0] == 0 else xin, i[k]) for k in range(3)])
        np.testing.assert_array_equal(g(xin, i), want)
        assert "scan" not in str(gradc.make_graph(g)(xin, i))
        h = gradc.vmap(gradc.grad(lambda e, j: np.sum(np.sin(f(e, j)))), in_axes=axes)
        got = h(xin, i)
        assert "scan" not in str(gradc.make_graph(h)(xin, i))     # (a scatter_add)
        for k in range(3):
            e = xin[k] if axes[0] == 0 else xin
            w = gradc.grad(lambda e, j: np.sum(np.sin(f(e, j))))(e, i[k])
            np.testing.assert_allclose(got[k], w, rtol=1e-12, atol=1e-14)


def _set_rows(x, v):
    y = x * 1.0
    y[IDX[1:]] = v
    return y


def _set_apart(x, v):
    y = x * 1.0
    y[IDX, :, IDX] = v
    return y


@pytest.mark.parametrize("f, v_shape", [
    (_set_rows, (3, 4)), (_set_rows, ()), (_set_apart, (4, 3)), (_set_apart, ()),
])
def test_index_set_batches_for_either_operand(f, v_shape):
    rng = np.random.default_rng(6)
    x, v = rng.standard_normal((5, 4, 3, 4)), rng.standard_normal((5,) + v_shape)
    for axes in ((0, 0), (0, None), (None, 0)):
        xs = x if axes[0] == 0 else x[0]
        vs = v if axes[1] == 0 else v[0]
        got = gradc.vmap(f, in_axes=axes)(xs, vs)
        want = np.stack([f(xs[k] if axes[0] == 0 else xs, vs[k] if axes[1] == 0 else vs)
                         for k in range(5)])
        np.testing.assert_array_equal(got, want)
        assert "scan" not in str(gradc.make_graph(gradc.vmap(f, in_axes=axes))(xs, vs))


def test_scan_and_cond_batch_without_a_loop_over_the_examples():
    rng = np.random.default_rng(8)
    xs, w = rng.standard_normal((4, 6, 3)), rng.standard_normal(3)

    def f(seq, w):
        def step(h, x):
            h = np.tanh(h * w + x)
            return h, np.sum(h)
        h, ys = gradc.scan(step, np.zeros(3), seq)
        return h * 2.0, ys
    got = gradc.vmap(f, in_axes=(0, None))(xs, w)
    for k in range(4):
        want = f(xs[k], w)
        np.testing.assert_allclose(got[0][k], want[0], rtol=1e-14)
        np.testing.assert_allclose(got[1][k], want[1], rtol=1e-14)
    graph = str(gradc.make_graph(gradc.vmap(f, in_axes=(0, None)))(xs, w))
    assert graph.count("scan") == 1          # the loop over steps; none over examples
    # the batched scan differentiates
    g = gradc.vmap(gradc.grad(lambda s: np.sum(f(s, w)[1] ** 2)))(xs)
    want = [gradc.grad(lambda s: np.sum(f(s, w)[1] ** 2))(s) for s in xs]
    np.testing.assert_allclose(g, want, rtol=1e-13)

    def c(x, flag):
        return gradc.cond(flag, lambda v: np.sin(v) * 2.0, lambda v: v ** 2, x)
    x, flags = rng.standard_normal((5, 3)), np.array([True, False, True, True, False])
    for axes, fl in (((0, None), True), ((0, 0), flags)):
        got = gradc.vmap(c, in_axes=axes)(x, fl)
        want = [c(x[k], fl if axes[1] is None else fl[k]) for k in range(5)]
        np.testing.assert_allclose(got, want, rtol=1e-14)
        assert "scan" not in str(gradc.make_graph(gradc.vmap(c, in_axes=axes))(x, fl))


def test_while_loop_batches_examples_that_stop_at_different_steps():
    def newton_sqrt(a):
        def body(s):
            x, k = s
            return 0.5 * (x + a / x), k + 1
        return gradc.while_loop(lambda s: np.abs(s[0] * s[0] - a) > 1e-12 * a, body,
                                (a * 1.0, 0))
    a = np.array([2.0, 9.0, 1e6, 0.25])
    x, steps = gradc.vmap(newton_sqrt)(a)
    np.testing.assert_allclose(x, np.sqrt(a), rtol=1e-12)
    np.testing.assert_array_equal(steps, [newton_sqrt(v)[1] for v in a])
    assert len(set(steps.tolist())) > 1           # they did stop at different steps
    graph = str(gradc.make_graph(gradc.vmap(newton_sqrt))(a))
    assert graph.count("while_loop") == 1 and "scan" not in graph
    # per-example gradients through the batched loop
    g = gradc.vmap(gradc.grad(lambda a: newton_sqrt(a)[0]))(a)
    np.testing.assert_allclose(g, 0.5 / np.sqrt(a), rtol=1e-8)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_vmap_over_a_batch_of_none(target):
    """(Review.)  A batch of 0 examples gives empty results of the batched shapes, as
    NumPy's loop and JAX's vmap do (tracing read the first example, which is not
    there)."""
    f = gradc.vmap(lambda x, i: x[i] * 2.0, in_axes=(None, 0), target=target)
    assert f(np.ones((5, 4)), np.zeros((0, 3), np.int64)).shape == (0, 3, 4)
    assert gradc.vmap(lambda x: np.sum(x[1] * 2), target=target)(np.ones((0, 4))).shape == (0,)
    g = gradc.vmap(gradc.grad(lambda x: np.sum(np.sin(x))), target=target)
    assert g(np.ones((0, 4))).shape == (0, 4)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_while_loop_over_no_examples(target):
    """``vmap`` of a while loop over a batch of 0 (and ``jacfwd`` of one at an empty
    input, which batches over its 0 tangents): no trip, the empty results (the
    condition's "any example" had no example to reduce over)."""
    f = gradc.vmap(lambda c: gradc.while_loop(lambda s: np.sum(s) < 1.0,
                                              lambda s: s + 0.3, c), target=target)
    out = f(np.zeros((0, 3)))
    assert out.shape == (0, 3)
    np.testing.assert_allclose(f(np.zeros((2, 3))), np.full((2, 3), 0.6), rtol=1e-15)
    g = gradc.jacfwd(lambda x: gradc.fori_loop(0, (np.sum(x) > 0) * 2 + 1,
                                               lambda i, c: c * 0.5, x), target=target)
    assert g(np.zeros(0)).shape == (0, 0)
    np.testing.assert_allclose(g(np.ones(2)), np.eye(2) * 0.125, rtol=1e-15)


def _piecewise(a):
    if a > 0:                                   # (the line the error names)
        return a ** 3
    return -a


def test_a_batched_branch_names_the_if_not_the_call():
    """vmap of Python control flow on a batched value: the error names the ``if`` in
    the user's function (the guard's line), not the line calling vmap; also under
    grad, and for a result whose length depends on the values."""
    for f in (gradc.vmap(_piecewise), gradc.vmap(gradc.grad(_piecewise))):
        with pytest.raises(gradc.ArgumentError, match=r"control flow(.|\n)*  at .*"
                                                      r"test_vmap.py:\d+: if a > 0:"):
            f(np.array([2.0, -1.0]))
    with pytest.raises(gradc.ArgumentError, match=r"np.where(.|\n)*  at .*test_vmap.py:"
                                                  r"\d+: .*x\[x > 1\]"):
        gradc.vmap(lambda x: np.sum(x[x > 1]))(np.array([[1.0, 2.0, 2.0], [3.0, 4.0, 4.5]]))


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_per_leaf_axes_out_axes_none_axis_size_and_keywords(target):
    """(QA: JAX's per-leaf in_axes, out_axes=None or a pytree, axis_size and keyword
    arguments were refused.)  Each against a Python loop over the examples."""
    X = np.arange(6.0).reshape(3, 2)
    W = np.array([[1.0, 2.0], [-1.0, 0.5]])
    B = np.arange(6.0).reshape(3, 2) * 0.1

    def f(p, x):
        return np.tanh(p["W"] @ x + p["b"])

    got = gradc.vmap(f, in_axes=({"W": None, "b": 0}, 0), target=target)({"W": W, "b": B}, X)
    np.testing.assert_allclose(got, [f({"W": W, "b": B[i]}, X[i]) for i in range(3)])
    g = gradc.vmap(lambda x, w: (x * 2, np.sum(w * w)), in_axes=(0, None),
                   out_axes=(1, None), target=target)
    a, b = g(X, W)
    np.testing.assert_allclose(a, 2 * X.T)
    np.testing.assert_allclose(b, np.sum(W * W))
    assert np.shape(b) == ()
    with pytest.raises(gradc.ArgumentError, match="out_axes is None for result 0, but it "
                                                  "depends on the mapped arguments"):
        gradc.vmap(lambda x: x * 2, out_axes=None, target=target)(X)
    r = gradc.vmap(lambda x: {"a": x, "s": np.sum(x)}, out_axes={"a": 1, "s": 0},
                   target=target)(X)
    np.testing.assert_allclose(r["a"], X.T)
    np.testing.assert_allclose(r["s"], X.sum(1))
    np.testing.assert_allclose(
        gradc.vmap(lambda w: w * 2, in_axes=None, axis_size=4, target=target)(W),
        np.broadcast_to(2 * W, (4, 2, 2)))
    with pytest.raises(gradc.ArgumentError, match=r"no mapped argument \(give axis_size\)"):
        gradc.vmap(lambda w: w * 2, in_axes=None)(W)
    with pytest.raises(gradc.ArgumentError, match=r"got 3 \(arguments \[0\]\), 4 \(axis_size"):
        gradc.vmap(lambda x: x * 2, axis_size=4)(X)
    np.testing.assert_allclose(                      # keywords: mapped over axis 0
        gradc.vmap(lambda x, *, s: x * s, target=target)(X, s=np.arange(3.0)),
        X * np.arange(3.0)[:, None])
    with pytest.raises(gradc.ArgumentError, match="argument 1 .2, a Python int. over axis 0"):
        gradc.vmap(lambda x, n: x * n, in_axes=(0, 0))(X, 2)
    with pytest.raises(gradc.ArgumentError, match=r"in_axes for argument 0 is \{'W': None\}"):
        gradc.vmap(f, in_axes=({"W": None}, 0))({"W": W, "b": B}, X)
    grads = gradc.vmap(gradc.grad(lambda p, x: np.sum(f(p, x))),
                       in_axes=({"W": None, "b": 0}, 0), target=target)({"W": W, "b": B}, X)
    for i in range(3):
        gi = gradc.grad(lambda p, x: np.sum(f(p, x)))({"W": W, "b": B[i]}, X[i])
        np.testing.assert_allclose(grads["W"][i], gi["W"], rtol=1e-12)
        np.testing.assert_allclose(grads["b"][i], gi["b"], rtol=1e-12)


def test_vmap_takes_the_fast_path_and_gives_the_general_paths_results(monkeypatch):
    """Calls mapped over the first axis (or not mapped) go from a cheap key straight to
    the compiled code (``vmap(grad)`` of a 64-example loss: 0.2 ms a call on the general
    path, 7 µs on the fast one), with the same results, out_axes applied, a changed
    closed-over array and a new static int seen; an argument mapped over another axis
    keeps the general path."""
    rng = np.random.default_rng(8)
    scale = np.array([2.0])

    def per(w, x, y, n):
        return n * scale[0] * (np.tanh(x @ w) - y) ** 2
    w, X, y = rng.standard_normal(5), rng.standard_normal((64, 5)), rng.standard_normal(64)
    ref = gradc.vmap(gradc.grad(per), in_axes=(None, 0, 0, None), target="numpy")
    for out_axes in (0, 1):
        g = gradc.vmap(gradc.grad(per), in_axes=(None, 0, 0, None), out_axes=out_axes,
                       target="cpu")
        first = g(w, X, y, 3)
        assert g._fast
        want = ref(w, X, y, 3)
        # (tanh(x @ w) - y cancels: the loop's sums and NumPy's differ in the last bits)
        np.testing.assert_allclose(first, want if out_axes == 0 else want.T, rtol=1e-10,
                                   atol=1e-12)
        general = g._prepare

        def refuse(args, kwargs):
            raise AssertionError("took the general path")
        monkeypatch.setattr(g, "_prepare", refuse)
        np.testing.assert_array_equal(g(w, X, y, 3), first)
        monkeypatch.setattr(g, "_prepare", general)
        np.testing.assert_allclose(g(w, X, y, 2), first * 2 / 3, rtol=1e-14)   # (static)
        scale[0] = 4.0                                    # (written in place: re-traced)
        np.testing.assert_allclose(g(w, X, y, 3), first * 2, rtol=1e-14)
        scale[0] = 2.0
    h = gradc.vmap(lambda a, b: a * b, in_axes=(1, 0), target="cpu")
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((4, 3))
    np.testing.assert_array_equal(h(A, B), A.T * B)
    assert not h._fast                                # (axis 1: moved on the general path)
    np.testing.assert_array_equal(h(A, B), A.T * B)
