"""Functional updates written in place (``gradc.codegen.inplace``).

``x[i] = v`` on a traced array is a value (``index_set``); the compiled code writes into
``x``'s buffer only when nothing reads that buffer afterwards.  Each case compares the
compiled result with the interpreter's, checks that the caller's arrays are untouched,
and reads the generated source to see which updates went in place."""
from __future__ import annotations

import numpy as np
import pytest

import gradc
from gradc.codegen import inplace
from gradc.codegen.compile import optimise

pytestmark = pytest.mark.filterwarnings("ignore::gradc.GradcWarning")


def _both(f, *args):
    """Compiled and interpreted results (the inputs checked unchanged by the call)."""
    saved = [np.array(a, copy=True) for a in args]
    got = gradc.jit(f, target="cpu")(*args)
    for a, s in zip(args, saved):
        np.testing.assert_array_equal(a, s)
    want = gradc.jit(f, target="numpy")(*args)
    return got, want


def _in_place(f, *args) -> int:
    """How many update helpers of the generated source write in place."""
    return gradc.jit(f, target="cpu").source(*args).count(", in place")


def _table(x):
    """Row i of a table from row i - 1, in a while loop (a DP table's shape)."""
    def body(s):
        T, i = s
        T[i] = np.tanh(T[i - 1] + x)
        return T, i + 1
    T0 = np.concatenate([x[None], np.zeros((5, x.size))])
    return gradc.while_loop(lambda s: s[1] < 6, body, (T0, np.int64(1)))[0]


def test_loop_filling_a_table_updates_it_in_place():
    x = np.linspace(-1, 1, 5)
    got, want = _both(_table, x)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    ref = np.zeros((6, 5))
    ref[0] = x
    for i in range(1, 6):
        ref[i] = np.tanh(ref[i - 1] + x)
    np.testing.assert_allclose(got, ref, rtol=1e-14)
    assert _in_place(_table, x) >= 1


def test_initial_carry_from_the_caller_is_copied_once():
    def f(T, x):
        def body(s):
            T, i = s
            T[i] = T[i] + x
            return T, i + 1
        return gradc.while_loop(lambda s: s[1] < 4, body, (T, np.int64(0)))[0]
    T, x = np.arange(12.0).reshape(4, 3), np.ones(3)
    got, want = _both(f, T, x)             # (_both checks that T is unchanged)
    np.testing.assert_array_equal(got, T + 1)
    src = gradc.jit(f, target="cpu").source(T, x)
    assert ", in place" in src and ".copy()" in src


def test_old_value_read_after_the_update_forces_a_copy():
    def f(x):
        def body(s):
            T, i = s
            new = T * 1.0 if False else T      # (the same traced value)
            new[i] = 7.0
            return new + T, i + 1                # reads the old T after the update
        return gradc.while_loop(lambda s: s[1] < 3, body, (x * 1.0, np.int64(0)))[0]
    x = np.arange(4.0)
    got, want = _both(f, x)
    np.testing.assert_allclose(got, want)


def test_two_carries_starting_from_one_buffer_do_not_share_it():
    def f(x):
        z = x * 2.0

        def body(s):
            A, B, i = s
            A[i] = 1.0
            B[i] = -1.0
            return A, B, i + 1
        A, B, _ = gradc.while_loop(lambda s: s[2] < 3, body, (z, z, np.int64(0)))
        return A - B
    x = np.arange(1.0, 5.0)
    got, want = _both(f, x)
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(got, [2.0, 2.0, 2.0, 0.0])


def test_swapped_carries_stay_correct():
    def f(x):
        def body(s):
            A, B, i = s
            B[i] = A[i] + B[i]
            return B, A, i + 1                   # the updated buffer changes slot
        A, B, _ = gradc.while_loop(lambda s: s[2] < 4, body, (x * 1.0, x * 3.0, np.int64(0)))
        return A * 10 + B
    x = np.arange(1.0, 5.0)
    got, want = _both(f, x)
    np.testing.assert_allclose(got, want)


def test_updates_of_a_fresh_array_chain_in_place_and_inputs_are_copied():
    def f(x):
        y = np.exp(x)              # fresh (a fused loop): updated in place
        y[0] = 1.0
        y[2] = x[1]
        x2 = x * 1.0
        z = x                      # the caller's array: copied before the update
        z[1] = 5.0
        return y + z + x2
    x = np.arange(4.0)
    got, want = _both(f, x)
    np.testing.assert_allclose(got, want)
    assert _in_place(f, x) >= 2


def test_gradient_through_a_table_loop_is_unchanged():
    x = np.linspace(-1, 1, 4)

    def loss(x):
        return np.sum(_table(x) ** 2)
    g = gradc.grad(loss, target="cpu")(x)
    h = 1e-6
    fd = np.array([(loss(x + h * e) - loss(x - h * e)) / (2 * h) for e in np.eye(4)])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_plan_refuses_a_view_of_the_buffer_used_later():
    def f(x):
        y = np.exp(x)
        # the transpose of y before the update, read after it (NumPy's y.T is a view
        # that sees the update: the primitive is not)
        t = gradc.ops.transpose(y, (1, 0))
        y[0, 0] = 0.0
        return t + y
    x = np.arange(9.0).reshape(3, 3) / 9
    graph = optimise(gradc.make_graph(f)(x), "cpu")
    names = [e.prim.name for e in graph.eqns]
    assert "index_set" in names and "fused" in names     # y is fresh: only the view stops it
    assert not inplace.plan(graph).inplace
    got, want = _both(f, x)
    np.testing.assert_allclose(got, want)


def test_nested_loops_never_write_the_callers_array():
    def f(T):
        def outer(s):
            U, i = s

            def inner(t):
                V, j = t
                V[j] = V[j] + 1.0
                return V, j + 1
            U, _ = gradc.while_loop(lambda t: t[1] < 2, inner, (U, np.int64(0)))
            return U, i + 1
        return gradc.while_loop(lambda s: s[1] < 3, outer, (T, np.int64(0)))[0]
    T = np.zeros(4)
    got, want = _both(f, T)                # (_both checks that T is unchanged)
    np.testing.assert_array_equal(got, [3.0, 3.0, 0.0, 0.0])


C = np.array([10.0, 20.0, 30.0])


def test_a_branch_returning_a_constant_is_not_updated_in_place():
    def f(x, p):
        y = np.exp(x)
        z = gradc.cond(p > 0, lambda y: y * 2.0, lambda y: C, y)
        z[0] = -1.0
        return z
    x = np.zeros(3)
    got, want = _both(f, x, -1.0)
    np.testing.assert_array_equal(got, [-1.0, 20.0, 30.0])
    np.testing.assert_array_equal(C, [10.0, 20.0, 30.0])
    got = gradc.jit(f, target="cpu")(x, -1.0)     # and again, from the compiled code
    np.testing.assert_array_equal(C, [10.0, 20.0, 30.0])


def test_a_copy_of_an_outer_value_written_in_an_inner_trace_does_not_leak():
    """x0.copy() of the enclosing trace's value, written to inside jvp's trace: the
    capture is the value before the write (it was the rebound Tracer, of the inner
    trace, which leaked: TracerLeakError when jacfwd's vmap evaluated the cached jvp)."""
    def g(x0, x1):
        v0 = x0.copy()
        v0[[1]] = np.cos(v0[[1]])
        return v0 * x1

    x0, x1 = np.linspace(-1.0, 1.0, 3), 2.0
    want = np.array([-1.0, np.cos(0.0), 1.0])
    np.testing.assert_allclose(gradc.jacfwd(g, argnums=1)(x0, x1), want)
    jx, j1 = gradc.jacfwd(g, argnums=(0, 1))(x0, x1)
    np.testing.assert_allclose(j1, want)
    np.testing.assert_allclose(jx, np.diag([2.0, 0.0, 2.0]), atol=1e-15)

    def outer(x0, a):
        return gradc.grad(lambda a: np.sum(g(x0, a)))(a)
    for _ in range(2):
        assert gradc.jit(outer)(x0, x1) == pytest.approx(np.sum(want))


def test_an_element_read_before_a_write_keeps_its_value():
    """``b = z[0]`` is a scalar in NumPy (a copy): a later ``z[0] = v`` or ``z += 1``
    leaves it as it was.  ``z[1, ...]`` and ``z[...]`` on a 0-d array stay views, as in
    NumPy.  (gradc made every basic index a view: b followed the write.)"""
    def f(x, s):
        z = x * 1.0
        b = z[0]
        z[0] = 5.0 * x[2]
        c = z[1, ...]
        z += 1.0
        w = s.copy()
        e, v = w[()], w[...]
        w[...] = 3.0 * s
        return np.stack([b, c, z[0], z[1], e, v])

    x, s = np.array([1.0, 2.0, 3.0]), np.array(0.5)
    want = f(x, s)
    np.testing.assert_array_equal(want, [1.0, 3.0, 16.0, 3.0, 0.5, 1.5])
    for target in ("numpy", "cpu"):
        np.testing.assert_array_equal(gradc.jit(f, target=target)(x, s), want)
    jac = gradc.jacfwd(f, argnums=(0, 1), target="numpy")(x, s)
    np.testing.assert_array_equal(jac[0], [[1, 0, 0], [0, 1, 0], [0, 0, 5], [0, 1, 0],
                                           [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(jac[1], [0, 0, 0, 0, 1, 3])


def test_in_place_operators_on_numpy_scalars_rebind():
    """An element, a sum and arithmetic of 0-d values are NumPy scalars, immutable:
    ``s *= v`` makes a new value, so a list that recorded ``s`` keeps the old one (gradc
    updated the shared Tracer: [6, 6, 6] for [1, 2, 6], and the gradient [18, 9, 6] for
    [9, 4, 2]); no same_kind refusal (an int scalar += 0.5 is a float).  0-d arrays
    (np.zeros_like, np.copy, a view x[...]) are still written in place, and a NumPy
    scalar's .copy() is a scalar."""
    def history(x):
        s, hist = x[0], []
        for i in range(1, 3):
            hist.append(s)
            s *= x[i]
        t = np.sum(x)
        also = [t]
        t += x[0]
        b = np.arange(3)[0]
        b += 0.5
        return np.stack(hist + [s] + also + [t, b * x[0]])

    def arrays(x):
        t = np.zeros_like(x, shape=())
        a = t
        a += x[0]
        c = np.copy(x[1])
        d = c
        d *= 3.0
        u = x[2].copy()
        v = u
        v *= 5.0
        w = x.copy()
        e = w[0, ...]
        e += 1.0
        return np.stack([t, a, c, d, u, v, w[0]])

    x = np.array([1.0, 2.0, 3.0])
    for f, want in ((history, [1, 2, 6, 6, 7, 0.5]), (arrays, [1, 1, 6, 6, 3, 15, 2])):
        np.testing.assert_array_equal(f(x), want)
        for target in ("numpy", "cpu"):
            np.testing.assert_array_equal(gradc.jit(f, target=target)(x), want)
    g = gradc.grad(lambda x: np.sum(history(x)[:3]), target="numpy")(x)
    np.testing.assert_array_equal(g, [9, 4, 2])


def test_a_boolean_scalar_index_is_a_copy():
    """``z[True]`` is advanced indexing in NumPy (a copy, shape (1, 3)): a write to it
    does not reach z (gradc made it a view, x[None])."""
    def f(x):
        z = x.copy()
        b = z[True]
        b += 1.0
        c = z[True, 0]
        c *= 3.0
        return np.concatenate([z, b[0], c])

    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(f(x), [1, 2, 3, 2, 3, 4, 3])
    for target in ("numpy", "cpu"):
        np.testing.assert_array_equal(gradc.jit(f, target=target)(x), f(x))


# ---------------------------------------------------------------- found by benchmarks/fuzz_views.py

def _numpy_and_gradc(f, *args):
    want = f(*[np.array(a, copy=True) for a in args])
    got = gradc.jit(f, target="numpy")(*args)
    return np.asarray(want), np.asarray(got)


def test_ufunc_out_writes_into_a_traced_array_and_its_base():
    def f(x, v):
        y = x.copy()
        row = y[1]
        np.add(row, v, out=row)           # through a view: reaches y
        np.multiply(y, 2.0, out=y)
        return np.concatenate([y.ravel(), row])
    x, v = np.arange(12.).reshape(3, 4), np.linspace(0, 1, 4)
    want, got = _numpy_and_gradc(f, x, v)
    np.testing.assert_array_equal(got, want)
    g = gradc.grad(lambda x, v: np.sum(np.sin(f(x, v))), argnums=1)(x, v)
    np.testing.assert_allclose(g, 4 * np.cos(want[4:8]), rtol=1e-12)   # (row is y[1])


def test_in_place_operator_does_not_grow_the_array():
    def f(x, v):
        y = v.copy()
        y += x                             # (4,) += (3, 4): NumPy refuses
        return y
    with pytest.raises(gradc.ShapeError, match="non-broadcastable output"):
        gradc.jit(f, target="numpy")(np.ones((3, 4)), np.ones(4))


def test_diagonal_is_a_read_only_view():
    def follows(x):
        y = x.copy()
        d = y.diagonal()
        y[0, 0] = 7.0                      # reaches d
        return d

    x = np.arange(12.).reshape(3, 4)
    want, got = _numpy_and_gradc(follows, x)
    np.testing.assert_array_equal(got, want)

    def writes(x):
        d = x.copy().diagonal()
        d[0] = 5.0
        return d
    with pytest.raises(gradc.errors.ReadOnlyError):
        gradc.jit(writes, target="numpy")(x)


def test_reshape_and_ravel_copy_where_numpy_copies():
    def f(x):
        y = x.copy()
        a = y.T.ravel()                    # a copy (not contiguous)
        b = y[::-1].reshape(-1)            # a copy (negative stride across the merge)
        c = y[:, ::2].reshape(-1)          # a view (the strides merge)
        d = y[:, 0].ravel()                # a copy (ravel: not C-contiguous)
        e = y.reshape(2, 6)                # a view
        a[0] = 100.0
        b[1] = 200.0
        c[2] = 300.0
        d[0] = 400.0
        e[1, 1] = 500.0
        return np.concatenate([y.ravel(), a, b, c, d, e.ravel()])
    want, got = _numpy_and_gradc(f, np.arange(12.).reshape(3, 4))
    np.testing.assert_array_equal(got, want)


def test_element_of_a_numpy_scalar_is_not_writable_and_its_0d_copy_is_separate():
    def writes(x):
        s = x[0, 0]
        s[...] = 3.0                       # NumPy: TypeError (a np.float64)
        return s
    with pytest.raises(gradc.GradcError, match="does not support item assignment"):
        gradc.jit(writes, target="numpy")(np.ones((2, 2)))

    def copies(x):
        s = np.sum(x)
        a = s[...]                         # a new 0-d array
        a += 1.0
        return np.stack([s, a])
    want, got = _numpy_and_gradc(copies, np.ones((2, 2)))
    np.testing.assert_array_equal(got, want)


def test_0d_array_argument_is_written_in_place():
    def f(x):
        a = x
        x += 1.0                           # a 0-d array: a sees the write
        return a
    np.testing.assert_array_equal(gradc.jit(f, target="numpy")(np.array(2.0)), 3.0)
    # a NumPy scalar argument is immutable: x += 1 rebinds x only
    np.testing.assert_array_equal(gradc.jit(f, target="numpy")(np.float64(2.0)), 2.0)


def test_assigning_a_value_with_extra_leading_unit_axes_differentiates():
    def f(x):
        y = x[:2, :]
        y[-1, :] = x                       # (1, 3) into a (3,) window
        return np.sum(np.sin(x[::-1].reshape(-1)))
    x = np.array([[0.978, -1.149, -0.368]])
    np.testing.assert_allclose(gradc.grad(f)(x), np.cos(x), rtol=1e-12)


def test_reshape_of_a_numpy_scalar_is_a_new_array():
    def f(x):
        s = np.copy(x)[-1, 1]              # an element: a NumPy scalar
        r = s.ravel()
        r -= 0.5                           # does not reach s
        e = np.expand_dims(s, 0)
        e *= 3.0
        return np.stack([s, r[0], e[0]])
    want, got = _numpy_and_gradc(f, np.array([[-0.513, -0.47, -0.07]]))
    np.testing.assert_array_equal(got, want)


def test_broadcast_of_a_numpy_scalar_does_not_follow_its_rebinding():
    def f(x):
        s = np.sin(x[..., 0]) * 0.5 + x[..., 0]   # arithmetic of 0-d views: a scalar
        b = np.broadcast_to(s, (3,))
        s += 1.0                                   # rebinds s; b keeps the old value
        return np.concatenate([b, np.ravel(s)])
    want, got = _numpy_and_gradc(f, np.array([0.446, -1.178, 0.228]))
    np.testing.assert_array_equal(got, want)


def test_ufunc_at_refuses_a_numpy_scalar():
    def f(x):
        s = x[1, 0]
        np.add.at(s, ..., 1.0)             # NumPy: TypeError, first operand must be array
        return s
    with pytest.raises(gradc.GradcError, match="not an array"):
        gradc.jit(f, target="numpy")(np.ones((2, 2)))


def test_a_0d_array_carried_by_a_loop_stays_an_array():
    """A loop's value starting as a 0-d array is one in the body and after the loop, as
    in the loop written out in Python: ``c[()] = v`` writes into it, ``r += v`` reaches
    its other names.  (A NumPy scalar carry refuses the item assignment.)"""
    def body(i, c):
        c = c.copy()
        c[()] = c * 1.5 + i
        return c

    def written_out(x):
        c = np.copy(x)
        for i in range(3):
            c = body(i, c)
        return c

    def by_fori(x):
        r = gradc.fori_loop(0, 3, body, np.copy(x))
        alias = r
        alias += 1.0                       # r is a 0-d array: r sees it
        return np.stack([r, alias])

    def by_scan_and_while(x):
        c, _ = gradc.scan(lambda c, i: (body(i, c), None), np.copy(x),
                          np.arange(3))
        n, w = gradc.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, body(s[0], s[1])),
                                (0, np.copy(x)))
        w += 0.0
        return np.stack([c, w])

    x = np.array(0.7)
    want = written_out(x)
    np.testing.assert_allclose(gradc.jit(by_fori, target="numpy")(x), [want + 1] * 2)
    np.testing.assert_allclose(gradc.jit(by_scan_and_while, target="numpy")(x), [want] * 2)
    # d/dx of 1.5 (1.5 (1.5 x + 0) + 1) + 2 = 1.5**3
    np.testing.assert_allclose(gradc.grad(lambda x: by_fori(x)[0])(0.7), 1.5 ** 3)
    np.testing.assert_allclose(gradc.grad(lambda x: np.sum(by_scan_and_while(x)))(0.7),
                               2 * 1.5 ** 3)

    def scalar_carry(x):
        return gradc.fori_loop(0, 2, body, np.sum(x))   # a sum: a NumPy scalar
    with pytest.raises(gradc.GradcError, match="does not support item assignment"):
        gradc.jit(scalar_carry, target="numpy")(np.ones(2))


# ---------------------------------------------------------------- scan carries


def _scan_table(x, T0):
    """Row i of a table carried by a scan, from row i - 1 and the step's x."""
    def body(s, xt):
        T, i = s
        T[i] = np.tanh(T[i - 1] * xt + 0.5)
        return (T, i + 1), T[i - 1] * 2.0
    (T, _), ys = gradc.scan(body, (T0, np.int64(1)), x)
    return T, ys


def _scan_table_reference(x, T0):
    T, ys = np.array(T0, copy=True), []
    for i, xt in enumerate(x, start=1):
        ys.append(T[i - 1] * 2.0)
        T[i] = np.tanh(T[i - 1] * xt + 0.5)
    return T, np.array(ys)


def test_a_scan_carry_is_updated_in_place_and_the_callers_init_copied_once():
    rng = np.random.default_rng(0)
    x, T0 = rng.standard_normal(5), rng.standard_normal((6, 3))
    got, want = _both(_scan_table, x, T0)        # (_both checks that T0 is unchanged)
    for g, w, r in zip(got, want, _scan_table_reference(x, T0)):
        np.testing.assert_allclose(g, r, rtol=1e-14)
        np.testing.assert_allclose(g, w, rtol=1e-14)
    src = gradc.jit(_scan_table, target="cpu").source(x, T0)
    assert ", in place" in src
    assert src.count(".copy()") >= 1                # T0, once, before the loop
    # a fresh initial table is neither copied nor written anywhere else
    f = gradc.jit(lambda x, T0: _scan_table(x, np.exp(T0)), target="cpu")
    for g, r in zip(f(x, T0), _scan_table_reference(x, np.exp(T0))):
        np.testing.assert_allclose(g, r, rtol=1e-14)


def test_a_scan_carry_whose_old_value_is_a_y_is_copied():
    def f(x, T0):
        def body(T, xt):
            old = T.copy()                          # returned as this step's y
            T[0] = T[0] + xt
            return T, old
        return gradc.scan(body, T0, x)
    x, T0 = np.arange(1.0, 4.0), np.zeros(2)
    got, want = _both(f, x, T0)
    np.testing.assert_array_equal(got[0], [6.0, 0.0])
    np.testing.assert_array_equal(got[1], [[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_scan_carry_also_returned_as_its_y_or_swapped_stays_correct():
    def f(x, A0, B0):
        def body(s, xt):
            A, B = s
            A[0] = A[0] + xt
            B[1] = B[1] - xt
            return (B, A), A                    # the buffers change slots; A is a y too
        return gradc.scan(body, (A0 * 1.0, B0 * 1.0), x)
    x, A0, B0 = np.arange(1.0, 5.0), np.zeros(2), np.ones(2)
    (A, B), ys = gradc.jit(f, target="cpu")(x, A0, B0)
    (wA, wB), wys = gradc.jit(f, target="numpy")(x, A0, B0)
    np.testing.assert_array_equal(A, wA)
    np.testing.assert_array_equal(B, wB)
    np.testing.assert_array_equal(ys, wys)


def test_a_slice_of_a_scans_xs_is_never_written_in_place():
    def f(X):
        def body(c, xt):
            xt[0] = 0.0                              # a step's row of X: a view
            return c + xt, xt
        return gradc.scan(body, np.zeros(3), X)
    X = np.arange(12.0).reshape(4, 3) + 1.0
    got, want = _both(f, X)                          # (_both checks that X is unchanged)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_gradient_through_a_scan_table_is_unchanged():
    rng = np.random.default_rng(1)
    x, T0 = rng.standard_normal(4), rng.standard_normal((5, 2))

    def loss(x, T0):
        T, ys = _scan_table(x, T0)
        return np.sum(T ** 2) + np.sum(np.sin(ys))
    g = gradc.grad(loss, argnums=(0, 1), target="cpu")(x, T0)
    want = gradc.grad(loss, argnums=(0, 1), target="numpy")(x, T0)
    for a, b in zip(g, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    h = 1e-6
    fd = np.array([(loss(x + h * e, T0) - loss(x - h * e, T0)) / (2 * h) for e in np.eye(4)])
    np.testing.assert_allclose(g[0], fd, rtol=1e-6, atol=1e-9)


def test_a_scan_y_written_into_the_stacked_array_lets_the_carry_update_in_place():
    """A y a loop nest writes straight into its row of the stacked ys is memory of its
    own, so the carry it was computed from may still be updated in place (it was
    assumed to share the carry's buffer: a copy of the table at every step)."""
    def f(x, T0):
        def body(T, xt):
            T[0] = T[0] + xt
            return T, np.tanh(T[1] * 2.0 + T[0])
        return gradc.scan(body, T0, x)
    x, T0 = np.linspace(-1.0, 1.0, 5), np.arange(8.0).reshape(2, 4) / 8
    got, want = _both(f, x, T0)
    T, ys = T0.copy(), []
    for xt in x:
        T[0] = T[0] + xt
        ys.append(np.tanh(T[1] * 2.0 + T[0]))
    for g, w, r in zip(got, want, (T, np.array(ys))):
        np.testing.assert_allclose(g, r, rtol=1e-14)
        np.testing.assert_allclose(g, w, rtol=1e-14)
    assert _in_place(f, x, T0) >= 1
