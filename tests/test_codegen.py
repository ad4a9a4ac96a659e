"""The Numba CPU backend against the reference interpreter.

For every row of the primitive table (``tests/test_prims.py``'s ``ROWS``) the traced
primal graph, its forward graph (``jvp_graph``) and its reverse graph (``vjp_graph``)
are optimised as the cpu target does (simplify, fuse), compiled once and run on random
inputs; outputs must equal the interpreter's (on the unoptimised graphs) to
rounding with the same dtypes (f64: rtol 1e-12; rows re-run in float32 stay float32,
rtol 1e-5).  Elementwise rows also run at rank 0, where the generated code works on
scalars.  Compiles are slow (10-30 ms per equation with numba 0.68), so every graph
is compiled exactly once per test session (``_compiled``).
"""
from __future__ import annotations

import functools
import inspect
import linecache
import warnings

import numpy as np
import pytest

import gradc
from gradc.codegen import compile_graph, to_source
from gradc.codegen.compile import optimise
from gradc.codegen.pysource import lowerable
from gradc.errors import GuardFailure, UnsupportedError
from gradc.interpret import run
from gradc.ir import Primitive, Var, make_eqn, pretty
from gradc.passes import jvp_graph, simplify, vjp_graph
from gradc.prims import all_primitives

from test_prims import (ELEMENTWISE, FLOAT32_ROWS, ROWS, _is_static, guarded,
                        pytestmark)  # noqa: F401  (pytestmark: the same warning filters)

# primitives the backend does not lower yet (each skipped row is named in the report);
# graphs with them run on the interpreter, with a GradcWarning
NOT_LOWERED: set = set()

KINDS = ("primal", "jvp", "vjp")


def test_not_lowered_list_is_short():
    assert not NOT_LOWERED, NOT_LOWERED
    assert set(all_primitives()) - NOT_LOWERED <= lowerable()


# ---------------------------------------------------------------- cases

def _case(row, rank0=False, float32=False):
    if row.shapes == ELEMENTWISE:
        shape = () if rank0 else (2, 3)
    else:
        shape = row.shapes[0]
    args = row.gen(np.random.default_rng(11), shape)
    args = tuple(np.asarray(a) if isinstance(a, np.generic) else a for a in args)
    if float32:
        args = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
                     else a for a in args)
    return args


@functools.lru_cache(maxsize=None)
def _graphs(row_id, rank0, float32):
    row = next(r for r in ROWS if r.id == row_id)
    args = _case(row, rank0, float32)
    graph = gradc.make_graph(row.fn)(*args)
    dynamic = [a for a in args if not _is_static(a)]
    wrt = [v.dtype.kind == "f" for v in graph.inputs]
    graphs = {"primal": graph}
    if any(wrt):
        graphs["jvp"] = jvp_graph(graph, wrt)
        graphs["vjp"] = vjp_graph(graph, wrt)
    return graphs, dynamic


@functools.lru_cache(maxsize=None)
def _compiled(row_id, rank0, float32, kind):
    """The graph as the cpu target runs it: simplified and fused, then compiled."""
    graphs, _ = _graphs(row_id, rank0, float32)
    return compile_graph(optimise(graphs[kind], "cpu"),
                         name=f"{kind}_{row_id.replace('-', '_')}")


def _inputs(graph, dynamic, rng):
    """The row's own values for the primal inputs, random tangents/cotangents after."""
    values = list(dynamic)
    for v in graph.inputs[len(dynamic):]:
        if v.dtype.kind == "f":
            values.append(rng.standard_normal(v.shape).astype(v.dtype))
        elif v.dtype == np.bool_:
            values.append(rng.random(v.shape) < 0.5)
        else:
            values.append(np.zeros(v.shape, v.dtype))
    return values


def reference(row, kind, rank0=False, float32=False):
    """``(graph, inputs, the interpreter's results)`` for one row and kind (skips a row
    with nothing to differentiate)."""
    graphs, dynamic = _graphs(row.id, rank0, float32)
    if kind not in graphs:
        pytest.skip("no float inputs: nothing to differentiate")
    graph = graphs[kind]
    args = _inputs(graph, dynamic, np.random.default_rng(5))
    return graph, args, run(graph, *args)


def _check(row, kind, rank0=False, float32=False):
    if row.prim in NOT_LOWERED:
        pytest.skip(f"{row.prim} is not lowered yet")
    graph, args, want = reference(row, kind, rank0, float32)
    got = _compiled(row.id, rank0, float32, kind)(*args)
    assert_outputs_match(got, want, graph.outputs, 1e-5 if float32 else 1e-12)


def assert_outputs_match(got, want, outputs, rtol):
    """A compiled graph's results equal the interpreter's: dtype, shape, and values to
    ``rtol`` relative to the largest finite entry (exactly, for integers and bools)."""
    assert len(got) == len(want)
    for g, w, v in zip(got, want, outputs):
        g = np.asarray(g)
        assert g.dtype == w.dtype == v.dtype, (g.dtype, w.dtype, v.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.kind in "fc":
            scale = float(np.max(np.abs(w), initial=0.0, where=np.isfinite(w)))
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * max(scale, 1e-300))
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_rows_compiled(row, kind):
    _check(row, kind)


# (rank 0 and float32 run fewer kinds: each compile costs ~0.3-1 s, and these variants
# exercise the scalar and float32 paths of the same templates)
@pytest.mark.parametrize("row", [r for r in ROWS if r.shapes == ELEMENTWISE],
                         ids=lambda r: r.id)
def test_rows_compiled_rank0(row):
    _check(row, "primal", rank0=True)


@pytest.mark.parametrize("kind", ("primal", "vjp"))
@pytest.mark.parametrize("row", [r for r in ROWS if r.id in FLOAT32_ROWS], ids=lambda r: r.id)
def test_rows_compiled_float32(row, kind):
    _check(row, kind, float32=True)


# ---------------------------------------------------------------- source, inspection

def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_rosenbrock_source_has_one_commented_equation_per_statement():
    graph = gradc.make_graph(rosen)(np.array([0.5, -1.0, 2.0]))
    source = to_source(graph, name="rosen")
    body = source[source.index("def rosen(a):"):].splitlines()[1:]
    printed = [line.strip().removeprefix("let ") for line in pretty(graph).splitlines()[1:-1]]
    comments = [line.strip()[2:] for line in body if line.strip().startswith("# ")
                and not line.strip().startswith("#   from")]
    assert comments == printed
    code = [line.strip() for line in body if not line.strip().startswith("#")]
    assert len(code) == len(graph.eqns) + 1 and code[-1] == "return (l,)"
    assert code[0] == "b = a[1:3]" and "np.power(c, 2.0)" in code[2]
    # each statement directly follows its comment
    for i, line in enumerate(body[:-1]):
        if line.strip().startswith("# ") and not line.strip().startswith("#   from"):
            following = body[i + 1].strip()
            assert following.startswith("#   from") or not following.startswith("#")


def test_source_is_a_real_file_and_inspectable():
    graph = gradc.make_graph(rosen)(np.array([0.5, -1.0, 2.0]))
    compiled = compile_graph(graph, name="rosen")
    assert open(compiled.path).read() == compiled.source
    assert "def rosen(a):" in inspect.getsource(compiled.py_func)
    assert linecache.getline(compiled.path, 1).startswith('"""Generated by gradc')


def test_llvm_and_asm_are_text():
    compiled = _compiled("sin", False, False, "vjp")
    llvm, asm = compiled.llvm(), compiled.asm()
    assert isinstance(llvm, str) and "define" in llvm
    assert isinstance(asm, str) and len(asm) > 100


def test_float32_literals_stay_float32():
    graph = gradc.make_graph(lambda x: x * np.float32(2.5) + 1.0)(np.ones(3, np.float32))
    assert "np.float32(2.5)" in to_source(graph)
    out = compile_graph(graph)(np.arange(3, dtype=np.float32))
    assert out[0].dtype == np.float32


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_constants_of_one_value_or_of_an_index_are_not_read(target):
    """In a kernel, a constant array whose elements are all equal is that value, and
    one that is 0, 1, 2, ... along one axis (``np.arange(5)`` as a weight) is the
    index: neither is an array the kernel reads.  Zeros of both signs are not one
    value; integer aranges (what ``argmax`` in a scan's step compares against) too."""
    from gradc.codegen.loops import const_element
    iota = np.arange(5).reshape(1, 5)
    signed = np.array([0.0, -0.0, 0.0, 0.0, 0.0])

    def f(x):
        return x * iota + 1.0, x * signed
    x = np.random.default_rng(4).standard_normal((3, 5))
    j = gradc.jit(f, target=target)
    consts = [line for line in j.source(x).splitlines() if line.startswith("#   _c")]
    assert consts == ["#   _c0: float64[5]"], consts          # (the signed zeros only)
    for a, b in zip(j(x), f(x)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
    assert const_element(np.arange(4).reshape(1, 4, 1), ("i0", "i1", "i2")) == "np.int64(i1)"
    assert const_element(np.full((2, 3), 7, np.int32), ("i0", "i1")) == "np.int32(7)"
    assert const_element(np.array([1, 0, 2, 3]), ("i0",)) is None
    assert const_element(np.arange(6).reshape(2, 3), ("i0", "i1")) is None
    window = np.array([True, True, False, False, False]).reshape(5, 1)
    assert const_element(window, ("i0", "i1")) == "(i0 < 2)"
    assert const_element(~window, ("i0", "i1")) == "(i0 >= 2)"
    assert const_element(np.array([True, False, True]), ("i0",)) is None
    # (review: a -0.0 where the arange has its 0 is no index)
    assert const_element(np.array([-0.0, 1.0, 2.0]), ("i0",)) is None
    c = np.array([-0.0, 1.0, 2.0, 3.0])
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(gradc.jit(lambda x: 1.0 / (x * c), target=target)(
            np.ones(4)), [-np.inf, 1.0, 0.5, 1 / 3])


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_maximum_and_minimum_of_equal_zeros_and_their_ties_as_numpy(target):
    """Of equal values NumPy's maximum and minimum give the second (np.maximum(-0.0,
    0.0) is 0.0, np.maximum(0.0, -0.0) is -0.0), a NaN operand wins; the compiled CPU
    code gave the first (Numba's np.maximum: -0.0), unlike the interpreter and CUDA.
    Their derivative at a tie is 1/2 to each operand (JAX's), 0 beside a NaN."""
    a = np.array([-0.0, 0.0, -0.0, 1.0, 2.0, np.nan, 1.0])
    b = np.array([0.0, -0.0, -0.0, 1.0, 1.0, 1.0, np.nan])
    for op in (np.maximum, np.minimum):
        for dt in (np.float64, np.float32):
            x, y = a.astype(dt), b.astype(dt)
            got = gradc.jit(lambda x, y: op(x, y) * 2.0, target=target)(x, y)
            np.testing.assert_array_equal(got, op(x, y) * 2.0)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(op(x, y)))
        got = gradc.jit(lambda x, y: op(x, y), target=target)(-0.0, 0.0)
        assert got == 0.0 and not np.signbit(got)
        gx, gy = gradc.grad(lambda x, y: np.sum(op(x, y)), argnums=(0, 1),
                            target=target)(a, b)
        first = op is np.maximum
        np.testing.assert_array_equal(gx, [0.5, 0.5, 0.5, 0.5, first, 0, 0])
        np.testing.assert_array_equal(gy, [0.5, 0.5, 0.5, 0.5, not first, 0, 0])


def test_guard_failure_raises_from_compiled_code():
    x = np.array([0.5, 0.25])
    compiled = compile_graph(gradc.make_graph(guarded)(x))
    np.testing.assert_allclose(compiled(x)[0], np.sin(x) * 2.0, rtol=1e-15)
    with pytest.raises(GuardFailure):
        compiled(-x)


def test_nonzero_count_mismatch_raises_guard_failure():
    x = np.array([1.0, -2.0, 3.0])
    compiled = compile_graph(gradc.make_graph(lambda x: x[x > 0])(x))
    np.testing.assert_array_equal(compiled(x)[0], [1.0, 3.0])
    with pytest.raises(GuardFailure):
        compiled(np.array([1.0, 2.0, 3.0]))


def test_unlowered_primitive_is_named():
    mystery = Primitive("mystery_op")
    mystery.abstract = lambda x: [(tuple(x.shape), x.dtype)]
    x, y = Var((2,), np.dtype(np.float64)), Var((2,), np.dtype(np.float64))
    graph = gradc.ir.Graph((x,), (make_eqn(mystery, [x], [y]),), (y,))
    with pytest.raises(UnsupportedError, match="mystery_op"):
        compile_graph(graph)


def test_rosenbrock_gradient_n1000_matches_interpreter():
    x = np.random.default_rng(0).uniform(-2.0, 2.0, 1000)
    graph = simplify(gradc.make_graph(gradc.grad(rosen))(x))
    got = compile_graph(graph, name="rosen_grad")(x)[0]
    np.testing.assert_allclose(got, run(graph, x)[0], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got, gradc.grad(rosen)(x), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_float16_runs_on_the_interpreter_with_a_warning(target):
    """Numba has no half precision on the CPU: a graph with float16 values falls back
    to the interpreter with a GradcWarning naming them, not Numba's traceback."""
    x = np.linspace(0.0, 1.0, 40).astype(np.float16)
    with pytest.warns(gradc.GradcWarning, match=r"float16 values \(an input of f16\[40\]\)"):
        got = gradc.jit(lambda x: np.sum(np.sin(x) * x), target=target)(x)
    assert got.dtype == np.float16 and got == np.sum(np.sin(x) * x)
    with pytest.warns(gradc.GradcWarning, match="no half precision"):
        g = gradc.grad(lambda x: np.sum(np.sin(x)), target=target)(x)
    np.testing.assert_array_equal(g, gradc.grad(lambda x: np.sum(np.sin(x)),
                                                target="numpy")(x))


# ------------------------------------------------ Numba lowerings slow to compile

def test_transposed_and_copy_into_kernels_match_numpy():
    """``kernels.transposed`` and ``kernels.copy_into`` (which generated code calls in
    place of ``x.transpose(perm)`` and ``y[t] = x``) against NumPy, jitted and as
    Python, on C-ordered and strided inputs."""
    import numba

    from gradc.codegen import kernels as k

    @numba.njit
    def both(x, y, perm):
        t = k.transposed(x, perm)
        k.copy_into(y[1], t)
        return t

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    for src in (x, x[:, ::2, :, 1:], np.asfortranarray(x)):
        for perm in ((1, 0, 2, 3), (3, 1, 0, 2), (0, 1, 2, 3)):
            want = src.transpose(perm)
            y = np.zeros((3,) + want.shape)
            got = both(src, y, perm)
            assert got.shape == want.shape and np.array_equal(got, want)
            assert np.array_equal(y[1], want) and not y[0].any() and not y[2].any()
            assert np.array_equal(k._transposed_py(src, perm), want)
            y2 = np.zeros(want.shape)
            k.copy_into(y2, want)                    # (as Python)
            assert np.array_equal(y2, want)


_SLOW_LOWERINGS = '''
import sys, numpy as np, gradc
from numba.core import event

def f(x, w):                      # a transpose with explicit axes, a pad, a scan's ys
    y = np.transpose(x, (1, 0, 2)) * w
    z = np.concatenate([np.zeros((1, 2, 4)), np.sin(y)], axis=0)
    def step(c, r):
        c = np.tanh(c * w + r)
        return c, c * c
    c, ys = gradc.scan(step, z[0], z[1:])
    return np.sum(ys) + np.sum(c * z[-1])

x = np.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)
w = np.linspace(0.5, 1.5, 4)
with event.install_recorder("numba:compile") as rec:
    g = gradc.grad(f, argnums=(0, 1))(x, w)
ref = gradc.grad(f, argnums=(0, 1), target="numpy")(x, w)
assert all(np.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(g, ref))
names = {ev.data["dispatcher"].py_func.__qualname__ for _, ev in rec.buffer
         if ev.is_start}
print(sorted(n for n in names if "raise_with_shape" in n or "hash" in n))
'''


def test_generated_code_avoids_numbas_slow_first_compiles(tmp_path):
    """A fresh process compiling a gradient with a 3-D transpose, a pad and a scan's
    stacked ys compiles neither Numba's shape-mismatch message for an array assigned
    into an array nor ``transpose``'s axis set (2-3 s of a cold start before)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, GRADC_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _SLOW_LOWERINGS], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout



def test_numbas_performance_warnings_on_generated_code_are_silenced(tmp_path, monkeypatch):
    """(Composition sweep) eigh's gradient compiled with a NumbaPerformanceWarning on a
    generated line ("np.dot() is faster on contiguous arrays"): the user cannot act on
    it, and a test suite run with warnings as errors failed.  Compiles of generated code
    silence that category (fresh cache: Numba compiles)."""
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path))
    A = np.array([[2.0, 0.5], [0.5, 3.0]])

    def f(A):
        return np.sum(np.linalg.eigh(A)[1] ** 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = gradc.grad(f, target="cpu")(A)
        h = gradc.hessian(f, target="cpu")(A)
    np.testing.assert_allclose(g, gradc.grad(f, target="numpy")(A), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, gradc.hessian(f, target="numpy")(A), rtol=1e-8,
                               atol=1e-10)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_lapack_and_small_products_are_cached_kernels_with_a_status(target):
    """Generated code calls LAPACK and small products through kernels Numba caches on
    disk (``kernels.lapack_*``, ``small_dot``), not np.linalg and np.dot, which it
    compiled into every new module; a failure is a status the code tests, not a
    try/except (0.45 s of compile time each).  Values and every failure's error as
    before, on each decomposition."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 4))
    P = M @ M.T + 4 * np.eye(4)

    def f(A, b):
        x = np.linalg.solve(A, b)
        L = np.linalg.cholesky(A)
        w, V = np.linalg.eigh(A)
        Q, R = np.linalg.qr(A[:, :3])
        s = np.linalg.svd(A[:3], compute_uv=False)
        sign, logdet = np.linalg.slogdet(A)
        return (np.sum(x ** 2) + np.sum(np.diag(L)) + np.sum(w * V[0] ** 2) +
                np.sum(np.abs(np.diag(R))) + np.sum(s) + logdet + np.linalg.det(A) +
                np.sum((A[:2] @ A[:, :2]) ** 2))
    g = gradc.value_and_grad(f, argnums=(0, 1), target=target)
    b = rng.standard_normal(4)
    source = g.source(P, b)
    code = "\n".join(line for line in source.split('"""')[-1].splitlines()
                     if not line.strip().startswith("#") and "Error(" not in line)
    assert "np.linalg." not in code and "np.dot(" not in code and "try:" not in code
    for kernel in ("lapack_solve", "lapack_cholesky", "lapack_eigh", "lapack_qr",
                   "lapack_svd", "lapack_slogdet", "lapack_det", "small_dot"):
        assert f"_k.{kernel}(" in code, kernel
    (value, got), want = g(P, b), gradc.grad(f, argnums=(0, 1), target="numpy")(P, b)
    assert value == pytest.approx(f(P, b), rel=1e-12)
    for a, c in zip(got, want):
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-11)
    with pytest.raises(gradc.EvaluationError, match=r"cholesky: the matrix is not positive"):
        g(-P, b)
    with pytest.raises(gradc.EvaluationError, match=r"infinities or NaNs"):
        g(np.full((4, 4), np.nan), b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_small_matrix_vector_products_are_loops(dtype):
    """A matrix-vector product of at most ``SMALL_MATVEC`` matrix entries is a loop
    (``kernels.matvec``), not a BLAS call: either way round (``A @ v``, ``v @ A`` on the
    matrix as stored), on a transposed or strided matrix, in float32 and float64; a
    larger one stays on BLAS.  (A small neural ODE's solve: 151 products a call, 72 µs
    on BLAS, 64 µs as loops.)  Values and gradients as NumPy's."""
    from gradc.codegen.kernels import matvec
    from gradc.codegen.pysource import SMALL_MATVEC
    rng = np.random.default_rng(11)
    A = rng.standard_normal((6, 9)).astype(dtype)
    u, v = rng.standard_normal(6).astype(dtype), rng.standard_normal(9).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)

    def f(A, u, v):
        return np.sum(np.tanh(A @ v) * u) + np.sum(np.sin(u @ A) * v) + \
            np.sum((A.T @ u) ** 2) + np.sum(A[::2, 1:] @ v[1:])
    g = gradc.value_and_grad(f, argnums=(0, 1, 2), target="cpu")
    source = g.source(A, u, v)
    assert "_k.matvec(" in source and "_k.small_dot(" not in source
    value, grads = g(A, u, v)
    want_value, want = gradc.value_and_grad(f, argnums=(0, 1, 2), target="numpy")(A, u, v)
    assert value == pytest.approx(want_value, rel=tol["rtol"])
    for got, w in zip(grads, want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, w, **tol)
    for m in (A, A.T, A[::2, ::3], np.asfortranarray(A)):      # the kernel on each layout
        x = rng.standard_normal(m.shape[1]).astype(dtype)
        got = matvec(m, x)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, m.astype(np.float64) @ x, **tol)
    assert matvec(np.zeros((3, 0), dtype), np.zeros(0, dtype)).tolist() == [0, 0, 0]
    n = int(np.sqrt(SMALL_MATVEC)) + 1                         # (one entry too many)
    B = rng.standard_normal((n, n)).astype(dtype)
    big = gradc.jit(lambda B, x: B @ x, target="cpu")
    x = rng.standard_normal(n).astype(dtype)
    assert "_k.small_dot(" in big.source(B, x) and "_k.matvec(" not in big.source(B, x)
    np.testing.assert_allclose(big(B, x), B @ x, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


def test_small_output_buffers_are_allocated_by_the_compiled_code():
    """Buffers under ``SMALL_OUT_BYTES`` are allocated by the generated code, larger
    ones by the caller (from its pool): a parameter costs an np.empty and its unboxing
    at every call (an unrolled RK4's gradient of 4 elements: 169 parameters, 42 µs a
    call; 11 µs without them)."""
    from gradc.codegen.pysource import SMALL_OUT_BYTES

    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    small = np.linspace(-1.0, 1.0, 8)
    large = np.linspace(-1.0, 1.0, SMALL_OUT_BYTES // 8)
    for x, head in ((small, "def rosen_grad(a):"), (large, "def rosen_grad(a, _o0):")):
        g = gradc.grad(rosen, target="cpu")
        assert head in g.source(x)
        got = g(x)
        np.testing.assert_allclose(got, gradc.grad(rosen, target="numpy")(x), rtol=1e-13)
        assert got.flags.c_contiguous and got.flags.writeable
    assert len(gradc.grad(rosen, target="cpu").compile(small).signature()) == 1
    assert len(gradc.grad(rosen, target="cpu").compile(large).signature()) == 2


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_large_indexing_results_go_into_the_callers_buffers(target):
    """gather, scatter_add, index_set and scatter_extremum write a result of
    ``SMALL_OUT_BYTES`` or more into a buffer the caller passes (NumPy's huge pages or
    the pool's reused blocks): allocated by Numba, a gather's 12.8 MB result had its
    pages faulted in at every call (a GNN layer's max-aggregation gradient, 100000
    edges: 40 ms, 19 ms with its indexing results passed in)."""
    import re

    from gradc.codegen.pysource import SMALL_OUT_BYTES
    rng = np.random.default_rng(5)
    n, m = SMALL_OUT_BYTES // 8 // 4, SMALL_OUT_BYTES // 8 // 2       # rows of 4 and 2

    def f(h, W, src, dst):
        msg = np.tanh(h[src] @ W)                            # gather of m x 4
        z = h.copy()
        np.maximum.at(z, dst, msg)                           # scatter_extremum
        z[src[:3]] = 0.5 * z[dst[:3]]                        # index_set
        return np.sum(z ** 2) + np.sum(np.sin(msg))

    h, W = rng.standard_normal((n, 4)), rng.standard_normal((4, 4)) / 2
    src, dst = rng.integers(-n, n, m), rng.integers(0, n, m)
    g = gradc.grad(f, argnums=(0, 1), target=target)
    source = g.source(h, W, src, dst)
    main = source[source.index("def f_grad("):]
    # (each indexing helper called with an _o buffer as its last argument)
    calls = re.findall(r"= (_h\d+)\(([^)]*)\)", main)
    helpers = {name: re.search(rf"def {name}\(.*\n    # (\w+)", source).group(1)
               for name, _ in calls if f"def {name}(" in source}
    passed = {helpers[name] for name, args in calls
              if helpers.get(name) in ("gather", "scatter_add", "index_set",
                                       "scatter_extremum")
              and re.search(r"_o\d+$", args)}
    assert {"gather", "scatter_add", "scatter_extremum"} <= passed, (passed, main)
    got = g(h, W, src, dst)
    want = gradc.grad(f, argnums=(0, 1), target="numpy")(h, W, src, dst)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(g(h, W, src[::-1], dst), gradc.grad(f, argnums=(0, 1), target="numpy")(
            h, W, src[::-1], dst)):                         # (the buffers reused)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_direct_convolutions_write_into_the_callers_buffers():
    """A direct convolution (``convgen``, on the thread pool) writes its result into a
    buffer the caller passes, like a fused nest's: the memory plan may give it a dead
    buffer's memory, and it is not allocated by Numba at every call."""
    rng = np.random.default_rng(2)
    img = rng.standard_normal((8, 16, 32, 32))           # (W5's sizes: direct)
    K = rng.standard_normal((32, 16, 3, 3)) / 12

    def f(img, K):
        return np.sum(np.tanh(gradc.conv2d(img, K, padding="same")))
    g = gradc.grad(f, argnums=(0, 1), target="cpu")
    source = g.source(img, K)
    main = source[source.index("def f_grad("):]
    assert "on_threads" in main and "np.empty((8, 32, 32, 32)" not in main and \
        "np.empty((8, 16, 32, 32)" not in main, main
    want = gradc.grad(f, argnums=(0, 1), target="numpy")(img, K)
    for a, b in zip(g(img, K), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_small_buffers_of_threaded_nests_are_still_handed_in(monkeypatch, target):
    """(Program fuzzer, ``--small-limits``) A nest run on the thread pool, or by Numba's
    parallel loops, writes into a buffer it is handed, however small: allocated inside
    the pooled helper, the result never reached the main function, which failed to
    compile (a silent fall-back to the interpreter with a warning)."""
    import gradc.codegen.loops as loops
    monkeypatch.setattr(loops, "POOL_MIN", 16)
    monkeypatch.setattr(loops, "PRANGE_MIN", 4)
    x = np.linspace(0.1, 1.0, 64).reshape(8, 8)

    def f(x):
        return np.sum(np.sin(x) * x + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = gradc.grad(f, target=target)
        assert "_o0" in g.source(x)
        np.testing.assert_allclose(g(x), np.cos(x) * x + np.sin(x), rtol=1e-14)


def test_a_solvers_report_before_an_object_mode_product_compiles():
    """A convergence report (a warning from object mode when the solver stopped at its
    limit) followed by a product large enough for BLAS in object mode: the report was
    an ``if`` around an object-mode block in the generated function, and Numba 0.68's
    LLVM refused the pair ("Instruction does not dominate all uses!"); a deep
    equilibrium model's gradient failed from 100 hidden units on.  It is a call of
    ``kernels.report`` now."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    a = a @ a.T + 5 * np.eye(5)
    b, m = rng.standard_normal(5), rng.standard_normal((60, 60))

    def f(a, b, m):
        x = gradc.linear_solve(lambda v: a @ v, b, solve="cg")
        return (m @ m) * np.sum(x)

    jf = gradc.jit(f, target="cpu")
    src = jf.source(a, b, m)
    assert "_k.report(" in src and "np.matmul(" in src
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # (no fallback to the interpreter)
        got = jf(a, b, m)
    np.testing.assert_allclose(got, (m @ m) * np.sum(np.linalg.solve(a, b)), rtol=1e-12)

    def stopped(a, b, m):           # (one matvec: the report's warning, from there)
        x = gradc.linear_solve(lambda v: a @ v, b, solve="cg", maxiter=1)
        return (m @ m) * np.sum(x)

    with pytest.warns(gradc.ConvergenceWarning, match="cg.*did not converge"):
        gradc.jit(stopped, target="cpu")(a, b, m)


def test_consecutive_object_mode_blocks_merge():
    """``pysource.merge_objmode``: blocks separated by comments and parameter aliases
    become one (aliases above it); another line ends the run; the merged block declares
    only outputs read after it (Numba refuses the others), strings and comments not
    counted as reads."""
    from gradc.codegen.pysource import merge_objmode
    body = ["    c = _o0",
            "    with numba.objmode():",
            "        np.matmul(a, b, out=c)",
            "    # d = tanh c",
            "    e = _o1",
            "    with numba.objmode(d='float64[:, ::1]'):",
            "        d = np.tanh(c)",
            "    with numba.objmode(f='float64[:, ::1]'):",
            "        f = np.exp(d)",
            "        np.matmul(f, b, out=e)",
            "    # f is not read after here",
            "    g, = _h0(e, 'd')",
            "    with numba.objmode():",
            "        np.matmul(g, b, out=e)"]
    got = merge_objmode(body, "e")
    assert got == ["    c = _o0", "    e = _o1",
                   "    with numba.objmode():",
                   "        np.matmul(a, b, out=c)",
                   "        # d = tanh c",
                   "        d = np.tanh(c)",
                   "        f = np.exp(d)",
                   "        np.matmul(f, b, out=e)",
                   "    # f is not read after here",
                   "    g, = _h0(e, 'd')",
                   "    with numba.objmode():",
                   "        np.matmul(g, b, out=e)"]
    assert merge_objmode(body, "f d")[2] == \
        "    with numba.objmode(d='float64[:, ::1]', f='float64[:, ::1]'):"


def test_merged_object_mode_block_does_not_declare_a_name_only_an_attribute_reads():
    """Variables are named a, b, ..., so a large program has ``cos``, ``dot``, ``exp``:
    a merged block's value named ``cos`` that nothing after it reads is not an output
    because a later line calls ``np.cos`` (nor for ``out=``, or a comment): Numba
    refuses a declared output that nothing reads, and the function ran on the
    interpreter (a jit of 576 unrolled ``np.sin`` steps before an MLP layer)."""
    from gradc.codegen.pysource import merge_objmode
    body = ["    cox = _o0",
            "    with numba.objmode():",
            "        np.matmul(a, b, out=cox)",
            "    with numba.objmode(cos='float64[:, ::1]'):",
            "        cos = np.ascontiguousarray(np.exp(cox))",
            "    with numba.objmode(out='float64[:, ::1]'):",
            "        out = np.ascontiguousarray(np.tanh(cos))",
            "    with numba.objmode(dot='float64[:, ::1]'):",
            "        dot = np.ascontiguousarray(np.sin(out))",
            "    cga, = _h2(dot, x.out, cox)    # (cos, not out)",
            "    with numba.objmode(cgc='float64[:, ::1]'):",
            "        cgc = np.ascontiguousarray(np.cos(cga))",
            "        np.matmul(cgc, b, out=cga)"]
    got = merge_objmode(body, "cgc")
    assert got[1] == "    with numba.objmode(dot='float64[:, ::1]'):", got
    assert merge_objmode(body[:-4] + ["    y = cos + out"], "y")[1] == \
        "    with numba.objmode(cos='float64[:, ::1]', out='float64[:, ::1]'):"


@pytest.mark.filterwarnings("error::gradc.GradcWarning")
def test_mlp_and_conv_gradients_with_merged_object_mode_blocks():
    """W3's gradient (BLAS products and ufuncs: seven blocks, four after merging) and a
    convolution's, whose merged block computes a value only its own lines read,
    compile (no fallback) and agree with the interpreter."""
    rng = np.random.default_rng(3)
    X, onehot = rng.standard_normal((512, 784)), np.eye(10)[rng.integers(0, 10, 512)]

    def mlp(W1, W2):
        z = np.tanh(X @ W1) @ W2
        return np.mean(gradc.logsumexp(z, axis=1) - np.sum(z * onehot, axis=1))

    def conv(img, K):
        return np.sum(np.tanh(gradc.conv2d(img, K, padding="same")))

    for f, args in ((mlp, (rng.standard_normal((784, 256)) / 28,
                           rng.standard_normal((256, 10)) / 16)),
                    (conv, (rng.standard_normal((8, 16, 32, 32)),
                            rng.standard_normal((32, 16, 3, 3)) / 12))):
        g = gradc.grad(f, argnums=(0, 1), target="cpu")
        main = g.source(*args).split("\ndef f_")[-1]
        assert main.count("with numba.objmode(") == {mlp: 4, conv: 3}[f]
        got, want = g(*args), gradc.grad(f, argnums=(0, 1), target="numpy")(*args)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_loop_helpers_are_compiled_once_for_integer_and_bool_carries():
    """A loop's counter starting at 0, or a flag starting True, was passed to its body and
    condition as a literal first and as a variable after: Numba compiled those helpers
    twice each (six of the neural ODE gradient's, ~1 s of a 5 s first call).  Integer and
    bool constants passed to helpers are typed values now (``control._typed``)."""
    import sys

    def f(x):
        def cond(c):
            return (c[1] < 5) & c[2]

        def body(c):
            y, i, go = c
            y = np.tanh(y) + 0.1 * x
            return y, i + 1, np.sum(y) < 100.0
        y, _, _ = gradc.while_loop(cond, body, (x, 0, True))

        def step(carry, t):
            z, k = carry
            return (z * 0.9 + t, k + 1), z
        (z, _), _ = gradc.scan(step, (y, 0), np.linspace(0.0, 1.0, 3))
        return np.sum(z ** 2)
    x = np.linspace(-1.0, 1.0, 4)
    g = gradc.jit(f, target="cpu")
    np.testing.assert_allclose(g(x), gradc.jit(f, target="numpy")(x), rtol=1e-14)
    module = sys.modules[f"gradc_generated_{g.compile(x).key}"]
    helpers = [v for k, v in vars(module).items() if k.startswith("_h")
               and hasattr(v, "signatures")]
    assert helpers and all(len(h.signatures) == 1 for h in helpers), \
        [(h.py_func.__name__, h.signatures) for h in helpers if len(h.signatures) != 1]
