"""The transformations on the compiled targets: results equal the interpreter's, the
inspection methods, guards, the in-memory and on-disk caches, pickling."""
from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc.codegen import cache
from gradc.errors import ArgumentError


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def mlp(w1, w2, x, onehot):
    z = np.tanh(x @ w1) @ w2
    return np.mean(gradc.logsumexp(z, axis=1) - np.sum(z * onehot, axis=1))


def stencil(u):
    # shifted reads of shifted values: pads inside pads after differentiation
    v = u[1:] * u[:-1]
    w = np.sin(v[1:]) - v[:-1] ** 2
    return np.sum(w * np.exp(-u[2:]))


def masked(x, y):
    return np.sum(np.where(x > 0, x * y, np.maximum(x, -1.0) ** 2)) + np.max(y)


@pytest.fixture(autouse=True)
def compiled_by_default(monkeypatch):
    # conftest makes the interpreter the default for the suite; here it is the compiler
    monkeypatch.setenv("GRADC_TARGET", "cpu")


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(3)


def _close(a, b, rtol=1e-12):
    """Whole arrays (or tuples of them, part by part), shapes included."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        assert isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, rtol)
        return
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------- results

@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_grad_matches_interpreter(rng, target):
    x = rng.uniform(-2, 2, 50)
    _close(gradc.grad(rosen, target=target)(x), gradc.grad(rosen, target="numpy")(x))
    u = rng.uniform(0.1, 1.0, 40)
    _close(gradc.grad(stencil, target=target)(u), gradc.grad(stencil, target="numpy")(u))


def flipped_product(x):
    # a 2-D domain whose reads run backwards along one axis, and a full reduction
    return np.sum(np.sin(x)[:, ::-1] * x[::-1, :] + np.cos(x[:, 1:]).sum(axis=1)[:, None])


@pytest.mark.parametrize("n", [40_000, 100_003])
def test_parallel_loops_shared_among_threads(rng, n):
    # large loop nests: the outer loop is a prange over blocks with unsigned indices
    # (loops._chunked_prange); block edges fall inside the pads' windows for odd n
    x = rng.uniform(-2, 2, n)
    g = gradc.grad(rosen, target="parallel")
    assert "numba.prange(" in g.source(x) and "np.uint64(i0" in g.source(x)
    _close(g(x), gradc.grad(rosen, target="numpy")(x))
    u = rng.uniform(0.1, 1.0, n)
    _close(gradc.grad(stencil, target="parallel")(u), gradc.grad(stencil, target="numpy")(u))
    v, gv = gradc.value_and_grad(flipped_product, target="parallel")(x[:n // 200 * 200]
                                                                        .reshape(200, -1))
    vr, gr = gradc.value_and_grad(flipped_product, target="numpy")(x[:n // 200 * 200]
                                                                     .reshape(200, -1))
    assert v == pytest.approx(vr, rel=1e-12)
    _close(gv, gr)


@pytest.mark.parametrize("n", [5_000, 10_007])
def test_large_loops_on_the_thread_pool(rng, monkeypatch, n):
    # target="cpu": a large reduction-free nest runs in ranges of its outer loop on
    # kernels.on_threads; the ranges cut through the pads' windows
    from gradc.codegen import kernels, loops
    monkeypatch.setattr(loops, "POOL_MIN", 1000)
    monkeypatch.setattr(kernels, "threads", lambda: 4)   # a pool even on one CPU
    x = rng.uniform(-2, 2, n)
    g = gradc.grad(rosen)
    assert "_k.on_threads(" in g.source(x) and "np.uint64(i0" in g.source(x)
    _close(g(x), gradc.grad(rosen, target="numpy")(x))
    _close(gradc.grad(stencil)(x), gradc.grad(stencil, target="numpy")(x))
    # beside a product on NumPy's BLAS (whose threads spin after each call) the loops
    # stay on one thread
    w = rng.standard_normal((64, 64))
    mixed = gradc.grad(lambda u, w: np.sum(np.sin(u) * 2.0) + np.sum(np.tanh(w @ w)),
                       argnums=(0, 1))
    assert "_k.on_threads(" not in mixed.source(x, w) and "np.matmul(" in mixed.source(x, w)
    m = x[:n // 50 * 50].reshape(50, -1)
    v, gv = gradc.value_and_grad(flipped_product)(m)
    vr, gr = gradc.value_and_grad(flipped_product, target="numpy")(m)
    assert v == pytest.approx(vr, rel=1e-12)
    _close(gv, gr)


def test_pooled_loops_keep_names_and_scalar_types(rng, monkeypatch):
    from gradc.codegen import kernels, loops, pysource
    monkeypatch.setattr(loops, "POOL_MIN", 1000)
    monkeypatch.setattr(kernels, "threads", lambda: 4)
    real = pysource.pretty_parts

    def renamed(graph):        # values named like the loop bounds (as in big graphs)
        namer, printed = real(graph)
        for v, name in list(namer.names.items()):
            namer.names[v] = {"a": "hi", "b": "lo", "c": "hi_"}.get(name, name)
        return namer, printed
    monkeypatch.setattr(pysource, "pretty_parts", renamed)
    x = rng.uniform(-1, 1, 5000).astype(np.float32)
    s = np.float32(0.1)
    f = gradc.jit(lambda x, s: x * s + x)
    source = f.source(x, s)
    assert "_k.on_threads(" in source and "def _h0(hi, lo" in source
    # the scalar reaches the helper as float32: float32 arithmetic, NumPy's results
    np.testing.assert_array_equal(f(x, s), x * s + x)


def _count_calls(out, lo, hi):
    for i in range(lo, hi):
        out[i] += 1


def _nogil(fn):
    """A kernel like those ``on_threads`` runs (``jit_pooled``'s options, no disk cache)."""
    import numba
    return numba.njit(nogil=True, error_model="numpy")(fn)


def _pool_in_child():
    from gradc.codegen import kernels
    out = np.zeros(100)
    kernels.on_threads(_nogil(_count_calls), 100, out)
    return float(out.sum())


def test_thread_pool_runs_every_item_once_and_survives_fork(monkeypatch):
    from gradc.codegen import kernels
    monkeypatch.setattr(kernels, "threads", lambda: 4)   # a pool even on one CPU
    mark = _nogil(_count_calls)
    for count in (1, 2, 7, 100):
        out = np.zeros(count)
        kernels.on_threads(mark, count, out)
        assert (out == 1).all()
    # a child forked after the pool started makes a pool of its own
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_pool_in_child) == 100.0


def test_small_parallel_loops_stay_on_one_thread(rng):
    x = rng.uniform(-2, 2, 1000)         # below loops.PRANGE_MIN: no thread launch
    assert "prange" not in gradc.grad(rosen, target="parallel").source(x)


def test_value_and_grad_of_mlp_two_arguments(rng):
    w1, w2 = rng.standard_normal((6, 5)), rng.standard_normal((5, 3))
    x, onehot = rng.standard_normal((4, 6)), np.eye(3)[[0, 2, 1, 2]]
    v, (g1, g2) = gradc.value_and_grad(mlp, argnums=(0, 1))(w1, w2, x, onehot)
    vr, (r1, r2) = gradc.value_and_grad(mlp, argnums=(0, 1), target="numpy")(w1, w2, x,
                                                                             onehot)
    assert v == pytest.approx(vr, rel=1e-13)
    _close(g1, r1)
    _close(g2, r2)


def test_where_max_and_select(rng):
    x, y = rng.standard_normal(30), rng.standard_normal(30)
    got = gradc.grad(masked, argnums=(0, 1))(x, y)
    want = gradc.grad(masked, argnums=(0, 1), target="numpy")(x, y)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_jvp_and_vjp_compiled(rng):
    x, t = rng.uniform(-1, 1, 20), rng.standard_normal(20)
    y, ty = gradc.jvp(rosen, (x,), (t,))
    yr, tyr = gradc.jvp(rosen, (x,), (t,), target="numpy")
    assert y == pytest.approx(yr, rel=1e-13) and ty == pytest.approx(tyr, rel=1e-12)
    out, back = gradc.vjp(lambda u: np.sin(u[1:]) * u[:-1], x)
    ct = rng.standard_normal(19)
    (g,) = back(ct)
    # <u, J v> = <J^T u, v>
    _, jv = gradc.jvp(lambda u: np.sin(u[1:]) * u[:-1], (x,), (t,))
    assert np.dot(ct, jv) == pytest.approx(np.dot(g, t), rel=1e-12)


def test_float32_stays_float32(rng):
    x = rng.uniform(-1, 1, 16).astype(np.float32)
    g = gradc.grad(rosen)(x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, gradc.grad(rosen, target="numpy")(x), rtol=1e-5,
                               atol=1e-5)


def test_python_floats_in_float_out():
    @gradc.grad
    def energy(a, b):
        return np.sin(a * b) + a ** 2
    d = energy(0.3, 0.5)
    assert isinstance(d, float) and d == pytest.approx(0.5 * np.cos(0.15) + 0.6, rel=1e-15)


def test_results_do_not_alias_inputs_or_constants():
    g = gradc.grad(lambda x: np.sum(x * 3.0))
    a = g(np.ones(4))
    a *= 7
    np.testing.assert_array_equal(g(np.ones(4)), 3.0)
    ident = gradc.jit(lambda x: x[1:])
    x = np.arange(4.0)
    y = ident(x)
    y[:] = -1
    np.testing.assert_array_equal(x, np.arange(4.0))


def test_bad_target_is_a_gradc_error():
    with pytest.raises(ArgumentError, match="target='gpu'"):
        gradc.grad(rosen, target="gpu")


# ---------------------------------------------------------------- guards

def piecewise(x):
    if np.sum(x) > 0:
        return np.sum(np.sin(x))
    return np.sum(x ** 3)


def test_guard_failure_retraces_and_cache_keeps_both_paths():
    g = gradc.grad(piecewise)
    up, down = np.array([0.5, 0.25]), np.array([-0.5, -0.25])
    np.testing.assert_allclose(g(up), np.cos(up), rtol=1e-15)
    np.testing.assert_allclose(g(down), 3 * down ** 2, rtol=1e-15)
    np.testing.assert_allclose(g(up * 2), np.cos(up * 2), rtol=1e-15)
    (specs,) = g._cache.entries.values()
    assert len(specs) == 2
    assert "raise GuardFailure" in g.source(up)


# ---------------------------------------------------------------- inspection

def test_inspection_methods():
    x = np.linspace(-1.0, 1.0, 8)
    g = gradc.grad(rosen)
    graph = g.graph(x)
    assert [e.prim.name for e in graph.eqns] == ["fused"]
    src = g.source(x)
    assert "def rosen_grad(a):" in src and "np.zeros" not in src   # (a small buffer:
    assert "= np.empty((8,), np.float64)" in src                     # allocated in it)
    assert "for i0 in range(1, 7):" in src           # the pad windows split the loop
    assert "define" in g.llvm(x)
    assert len(g.asm(x)) > 200


def test_inspection_never_runs_the_function(monkeypatch):
    """source/graph/compile/llvm trace and lower, and never run (a large program in the
    CUDA simulator took minutes just to be shown; on a GPU, ptx() must need none).  A
    new signature's specialisation is the one the next call runs; a signature with
    several paths, or whose values are checked (a branch, a mask's count), gets a
    specialisation traced from the values asked about."""
    from gradc.codegen import compile as compile_mod
    x = np.linspace(-1.0, 1.0, 8)
    want = gradc.grad(rosen, target="numpy")(x)
    calls = []
    run = compile_mod.Executable.__call__
    monkeypatch.setattr(compile_mod.Executable, "__call__",
                        lambda self, values: calls.append(1) or run(self, values))
    g = gradc.grad(rosen)
    assert "def rosen_grad(" in g.source(x)
    assert [e.prim.name for e in g.graph(x).eqns] == ["fused"]
    assert "define" in g.llvm(x)
    assert calls == []
    (specs,) = g._cache.entries.values()
    assert len(specs) == 1
    np.testing.assert_allclose(g(x), want, rtol=1e-13)
    assert calls == [1]
    (again,) = g._cache.entries.values()
    assert again == specs and len(again) == 1
    assert g.compile(x) is specs[0].executable.compiled      # (the one calls run)

    # a branch on a traced value: each inspection shows the path of its own values
    h = gradc.jit(piecewise)
    assert "sin" not in h.source(x - 2.0)
    h(x + 2.0)
    calls.clear()
    assert "sin" in h.source(x + 2.0) and "sin" not in h.source(x - 2.0)
    assert "raise GuardFailure" in h.source(x + 2.0)
    assert calls == []
    (paths,) = h._cache.entries.values()
    assert len(paths) == 2

    # a mask's count of True entries: checked when the code runs, so a cached
    # specialisation of the signature is not taken for other values
    def masked(v):
        return np.sum(v[v > 0] ** 2)
    m = gradc.jit(masked)
    a, b = np.array([1.0, -1.0, 2.0, -3.0]), np.array([1.0, 2.0, 3.0, -3.0])
    assert m(a) == 5.0
    c = m.compile(b)
    assert [float(r) for r in c(b)] == [14.0]
    assert m(b) == 14.0


def test_show_prints_every_stage():
    out = io.StringIO()
    gradc.show(gradc.grad(rosen), np.ones(5), file=out)
    text = out.getvalue()
    assert text.count("{ lambda") >= 3
    for heading in ("# traced IR of rosen", "# grad after the passes", "# generated source"):
        assert heading in text
    out = io.StringIO()
    gradc.show(rosen, np.ones(5), file=out)         # a plain function: its primal
    assert "# jit after the passes" in out.getvalue()


# ---------------------------------------------------------------- disk cache

_CHILD = textwrap.dedent("""
    import time, numpy as np, gradc
    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g = gradc.grad(rosen)
    x = np.linspace(-1.0, 1.0, 64)
    t = time.perf_counter()
    r = g(x)
    dt = time.perf_counter() - t
    c = g.compile(x)
    hits = sum(c.dispatcher.stats.cache_hits.values())
    print(repr(float(np.sum(r * np.arange(64)))), hits, dt)
""")


def _child(cache_dir):
    env = dict(os.environ, GRADC_CACHE_DIR=str(cache_dir), GRADC_TARGET="cpu")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    value, hits, seconds = out.stdout.split()
    return float(value), int(hits), float(seconds)


def test_disk_cache_survives_a_new_process_and_ignores_corrupt_entries(tmp_path):
    want = float(np.sum(gradc.grad(rosen, target="numpy")(np.linspace(-1.0, 1.0, 64))
                        * np.arange(64)))
    cold = _child(tmp_path)
    assert cold[1] == 0 and cold[0] == pytest.approx(want, rel=1e-12)
    warm = _child(tmp_path)
    assert warm[1] == 1 and warm[0] == pytest.approx(want, rel=1e-12)
    # corrupt every machine-code file: the entry is rebuilt, the result still right
    pycache = tmp_path / "src" / "__pycache__"
    files = [p for p in pycache.iterdir() if p.suffix in (".nbi", ".nbc")]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2] + b"garbage")
    rebuilt = _child(tmp_path)
    assert rebuilt[1] == 0 and rebuilt[0] == pytest.approx(want, rel=1e-12)
    again = _child(tmp_path)
    assert again[1] == 1 and again[0] == pytest.approx(want, rel=1e-12)


def test_cache_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "c"))
    gradc.grad(lambda x: np.sum(np.cos(x) * 2.5))(np.ones(3))
    assert cache.entries()
    gradc.cache.clear()
    assert not cache.entries() and not (tmp_path / "c").exists()


# ---------------------------------------------------------------- pickling

def _run_compiled(job):
    compiled, x = job
    return compiled(x)[0]


def test_compiled_function_pickles_and_runs_in_worker_processes():
    x = np.linspace(-1.0, 1.0, 12)
    compiled = gradc.grad(rosen).compile(x)
    clone = pickle.loads(pickle.dumps(compiled))
    np.testing.assert_array_equal(clone(x)[0], compiled(x)[0])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map_async(_run_compiled, [(compiled, x), (compiled, 2 * x)]).get(
            timeout=240)
    np.testing.assert_allclose(results[0], gradc.grad(rosen, target="numpy")(x), rtol=1e-13)
    np.testing.assert_allclose(results[1], gradc.grad(rosen, target="numpy")(2 * x),
                               rtol=1e-13)


def test_transformed_function_pickles_by_function():
    g = gradc.grad(rosen, target="cpu")
    clone = pickle.loads(pickle.dumps(g))
    x = np.linspace(0.0, 1.0, 5)
    np.testing.assert_array_equal(clone(x), g(x))
    assert clone.target == "cpu"


# ---------------------------------------------------------------- the per-call fast path

SCALE = 2.0


def scaled(a, b):
    return np.sin(a * b) * SCALE + a ** 2


def test_fast_path_gives_the_general_paths_results_and_sees_rebinding(monkeypatch):
    g = gradc.grad(scaled, argnums=(0, 1))
    first = g(0.3, 0.5)
    assert g._fast                                  # the fast table was filled
    assert g(0.3, 0.5) == first                     # ... and gives the same answer
    assert all(isinstance(v, float) for v in first)
    want = (0.5 * np.cos(0.15) * 2.0 + 0.6, 0.3 * np.cos(0.15) * 2.0)
    assert first == pytest.approx(want, rel=1e-15)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)
    assert g(0.3, 0.5)[1] == pytest.approx(0.3 * np.cos(0.15) * 3.0, rel=1e-15)


def test_fast_path_falls_back_on_a_failed_guard():
    g = gradc.value_and_grad(piecewise)
    up, down = np.array([0.5, 0.25]), np.array([-0.5, -0.25])
    g(up)
    g(up)
    v, d = g(down)                                   # same key, other branch
    assert v == pytest.approx(np.sum(down ** 3), rel=1e-15)
    np.testing.assert_allclose(d, 3 * down ** 2, rtol=1e-15)


def test_fast_path_checks_what_a_read_array_holds(monkeypatch):
    """A function that reads an array takes the fast path while the array holds what it
    held (its content is the key, as on the general path); written in place, reshaped
    in place or rebound, the next call sees it.  (A closed-over array sent every call to
    the general path: a neural ODE's solve over closed-over output times, 108 µs
    against 71 µs with the times passed as an argument.)"""
    weights = np.array([1.0, 2.0])
    big = np.ones(4096)                              # 32 KiB: digested, not copied
    g = gradc.grad(lambda x: np.sum(weights * x ** 2) + np.sum(big[:2] * x))
    x = np.array([1.0, 1.0])
    np.testing.assert_allclose(g(x), [3.0, 5.0])
    assert g._fast
    general = g._prepare
    _general_path_refused(monkeypatch, g)
    np.testing.assert_allclose(g(x), [3.0, 5.0])     # (unchanged: the fast path)
    monkeypatch.setattr(g, "_prepare", general)
    weights[1] = 5.0                                 # mutated in place: re-traced
    np.testing.assert_allclose(g(x), [3.0, 11.0])
    big[0] = -1.0                                    # (the large one too)
    np.testing.assert_allclose(g(x), [1.0, 11.0])
    _general_path_refused(monkeypatch, g)
    np.testing.assert_allclose(g(x), [1.0, 11.0])
    monkeypatch.setattr(g, "_prepare", general)
    weights.shape = (2, 1)            # reshaped in place: a (2, 2) sum, 2 x (1 + 5)
    np.testing.assert_allclose(g(x), [11.0, 13.0])
    weights = np.array([3.0, 3.0])                   # rebound (the cell): re-traced
    np.testing.assert_allclose(g(x), [5.0, 7.0])


@pytest.mark.parametrize("target", ["cpu", "numpy"])
def test_what_a_function_reads_is_seen_at_every_call(target):
    """(QA) A function that writes into an array it reads (a count) is traced at every
    call, as before the fast path read arrays (it kept the first trace: 1, 1, 1); data
    under a masked array's mask, the mask itself, an object array's items and an array
    held by a ``functools.partial`` in a closure are part of the key (they were not, on
    either path)."""
    import functools
    count = np.zeros(1)

    def counted(x):
        count[0] += 1
        return x * count[0]
    x = np.ones(2)
    for make in (gradc.jit, lambda f, target: gradc.grad(lambda x: np.sum(f(x)),
                                                          target=target)):
        count[:] = 0
        f = make(counted, target=target)
        assert [float(f(x)[0]) for _ in range(4)] == [1.0, 2.0, 3.0, 4.0]
    masked = np.ma.array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    items = np.array([1.0, 2.0, 3.0], dtype=object)
    held = np.array([1.0, 2.0, 3.0])
    scaled = functools.partial(np.multiply, held)
    cases = [(lambda v: v * masked.data.copy(), lambda: masked.data.__setitem__(1, 10.0)),
             (lambda v: v * masked.filled(0.0), lambda: setattr(masked, "mask", [1, 0, 0])),
             (lambda v: v * items.astype(float), lambda: items.__setitem__(0, 5.0)),
             (lambda v: scaled(v), lambda: held.__setitem__(0, 5.0))]
    for fun, change in cases:
        f = gradc.jit(fun, target=target)
        v = np.ones(3)
        np.testing.assert_array_equal(f(v), fun(v))
        np.testing.assert_array_equal(f(v), fun(v))
        change()
        np.testing.assert_array_equal(f(v), fun(v))


def test_jit_fast_path_gives_the_general_paths_results(monkeypatch):
    """``jit``'s table: the same results of the same types (rank-0 results as NumPy
    scalars, ints static), a rebound global seen, a failed guard taking the general
    path, and no table for a function that reads an array."""
    f = gradc.jit(lambda a, b, n: (np.sin(a * b) * SCALE * n, a + b))
    x = np.array([0.25, 0.5, 0.75])
    first = f(x, 0.5, 2)
    assert f._fast
    again = f(x, 0.5, 2)
    assert [type(v) for v in again] == [type(v) for v in first]
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(f(x, 0.5, 3)[0], first[0] * 1.5)   # (n is static)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)
    np.testing.assert_allclose(f(x, 0.5, 2)[0], first[0] * 1.5, rtol=1e-15)
    p = gradc.jit(lambda v: piecewise(v) * 2.0)
    up, down = np.array([0.5, 0.25]), np.array([-0.5, -0.25])
    p(up)
    p(up)
    assert p(down) == pytest.approx(2 * np.sum(down ** 3), rel=1e-15)
    weights = np.array([1.0, 2.0])
    w = gradc.jit(lambda v: weights * v)
    np.testing.assert_array_equal(w(np.ones(2)), [1.0, 2.0])
    assert w._fast                                   # (its content checked per call)
    weights[1] = 5.0
    np.testing.assert_array_equal(w(np.ones(2)), [1.0, 5.0])


def _general_path_refused(monkeypatch, f):
    """Make ``f``'s general path (``_prepare``) an error: a call that still succeeds took
    the fast path."""
    def refuse(args, kwargs):
        raise AssertionError("took the general path")
    monkeypatch.setattr(f, "_prepare", refuse)


def test_jit_with_static_arguments_takes_the_fast_path(monkeypatch):
    """(A jit with static_argnums/static_argnames took the general path at every call,
    four times the cost of one without.)  The fast key holds the static values (by hash
    and ==, as JAX's): the same value, or an equal one, takes the fast path; a new value
    traces again; static keywords are keyed by name; results are the general path's."""
    traces = []

    def f(x, scale, shift=(0.0,), mode="mul"):
        traces.append((scale, shift, mode))
        y = x * scale if mode == "mul" else x + scale
        return y + shift[0]

    j = gradc.jit(f, static_argnums=(1, 2), static_argnames="mode")
    x = np.array([0.25, 0.5, 0.75])
    first = j(x, 2.0)
    np.testing.assert_array_equal(first, x * 2.0)
    assert j._fast
    np.testing.assert_array_equal(j(x, 3.0), x * 3.0)             # a new value: traced
    np.testing.assert_array_equal(j(x, 2.0, (1.0,)), x * 2.0 + 1.0)
    np.testing.assert_array_equal(j(x, 2.0, mode="add"), x + 2.0)
    np.testing.assert_array_equal(j(x, scale=2.0, mode="add"), x + 2.0)  # (by keyword)
    n_traces = len(traces)
    assert n_traces == 5          # (by keyword: a signature of its own, as in JAX)
    with monkeypatch.context() as m:
        _general_path_refused(m, j)
        again = j(x, 2.0)
        assert type(again) is type(first)
        np.testing.assert_array_equal(again, first)
        np.testing.assert_array_equal(j(x, 3.0), x * 3.0)
        np.testing.assert_array_equal(j(x, 2.0, (1.0,)), x * 2.0 + 1.0)   # (an equal tuple)
        np.testing.assert_array_equal(j(x, 2.0, mode="add"), x + 2.0)
        np.testing.assert_array_equal(j(x + 1.0, 2.0, mode="add"), x + 3.0)  # new values
        np.testing.assert_array_equal(j(x, scale=2.0, mode="add"), x + 2.0)
    assert len(traces) == n_traces
    np.testing.assert_array_equal(j(x, 4.0), x * 4.0)
    assert len(traces) == n_traces + 1
    # an unhashable static value is the general path's clear error, table filled or not
    with pytest.raises(ArgumentError, match="static argument must be hashable"):
        j(x, 2.0, [1.0])
    # a dynamic argument by keyword, a float or a 0-d array: the general path, same results
    np.testing.assert_array_equal(j(x=x, scale=2.0), x * 2.0)
    k = gradc.jit(lambda a, n, b: a * n + b, static_argnums=1)
    assert k(x, 2.0, 0.5) == pytest.approx(x * 2.0 + 0.5) and k._fast
    with monkeypatch.context() as m:
        _general_path_refused(m, k)
        np.testing.assert_array_equal(k(x, 2.0, 0.5), x * 2.0 + 0.5)
    np.testing.assert_array_equal(k(x, 2.0, np.asarray(0.5)), x * 2.0 + 0.5)


def test_jit_static_fast_path_keeps_its_guards_and_its_limit(monkeypatch):
    """A failed guard behind a static fast-path entry takes the general path; the table
    holds at most MAX_SIGNATURES entries however many static values come."""
    j = gradc.jit(lambda v, c: piecewise(v) * c, static_argnums=1)
    up, down = np.array([0.5, 0.25]), np.array([-0.5, -0.25])
    j(up, 2.0)
    j(up, 2.0)
    assert j(down, 2.0) == pytest.approx(2 * np.sum(down ** 3), rel=1e-15)
    monkeypatch.setattr(gradc.api, "MAX_SIGNATURES", 4)
    s = gradc.jit(lambda v, c: v * c, static_argnums=1)
    for c in range(1, 11):
        np.testing.assert_array_equal(s(up, float(c)), up * c)
        assert 0 < len(s._fast) <= 5


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_jit_static_values_equal_by_eq_but_not_alike_trace_apart(target):
    """(The static key was (type, value) at the top level: (1, 0.0), (1.0, -0.0) and
    (True, 0.0) are equal tuples, so the second and third calls returned the first's
    cached int result with a + sign, by the general path (numpy) and the fast path
    (cpu).)  A tuple's items are keyed by type too, a float zero by its sign."""
    j = gradc.jit(lambda x, s: (x, np.full(2, s[0]), np.copysign(1.0, s[1])),
                  static_argnums=1, target=target)
    x = np.array([1.0, 2.0])
    for _ in range(2):          # (again: from the fast path's table)
        for s in [(1, 0.0), (1.0, -0.0), (True, 0.0), (1, -0.0)]:
            _, full, sign = j(x, s)
            want = np.full(2, s[0])
            assert full.dtype == want.dtype and np.array_equal(full, want), s
            assert sign == np.copysign(1.0, s[1]), s
    k = gradc.jit(lambda x, *, s: x * np.copysign(1.0, s), static_argnames="s",
                  target=target)
    for _ in range(2):          # (static keywords alike)
        np.testing.assert_array_equal(k(x, s=0.0), x)
        np.testing.assert_array_equal(k(x, s=-0.0), -x)


def test_fastmath_reaches_the_loop_helpers(rng):
    g = gradc.grad(rosen, fastmath=True)
    x = rng.uniform(-1, 1, 30)
    assert "@_k.jit_loops_fastmath" in g.source(x)
    np.testing.assert_allclose(g(x), gradc.grad(rosen, target="numpy")(x), rtol=1e-10)


def test_large_matrix_products_use_numpys_blas(rng):
    # past OBJMODE_FLOPS multiply-adds a product runs in an object-mode block on NumPy's
    # BLAS (one thread pool with the caller's NumPy); results as the interpreter's
    w1, w2 = rng.standard_normal((64, 48)) * 0.1, rng.standard_normal((48, 3))
    x, onehot = rng.standard_normal((40, 64)), np.eye(3)[rng.integers(0, 3, 40)]
    g = gradc.grad(mlp, argnums=(0, 1))
    assert "numba.objmode" in g.source(w1, w2, x, onehot)
    got, want = g(w1, w2, x, onehot), gradc.grad(mlp, argnums=(0, 1), target="numpy")(
        w1, w2, x, onehot)
    _close(got[0], want[0])
    _close(got[1], want[1])


@pytest.mark.parametrize("spec, shapes", [
    ("zbi,zbj->ij", ((5, 3, 4), (5, 3, 6))),          # steps and batch contracted
    ("zbi,zbj->ji", ((5, 3, 4), (5, 3, 6))),          # the output the other way round
    ("izb,zbj->ij", ((4, 5, 3), (5, 3, 6))),          # contracted last in one operand
    ("abk,kc->abc", ((2, 3, 5), (5, 4))),             # own letters two axes: out rank 3
    ("zbi,zbj->ij", ((300, 40, 8), (300, 40, 9))),    # past OBJMODE_FLOPS: NumPy's BLAS
])
def test_a_contraction_over_runs_of_axes_is_one_matrix_product(rng, spec, shapes):
    """An einsum whose operands are each a run of own letters and a run of contracted
    ones (a sum after a scan: ``zbi,zbj->ij``) is one BLAS product of matrix views
    (``_k.as_matrix``), no regrouping copy; values as NumPy's, from contiguous
    arguments and from Fortran-ordered and reversed ones."""
    a, b = (rng.standard_normal(s) for s in shapes)
    f = gradc.jit(lambda a, b: np.einsum(spec, a, b))
    src = f.source(a, b)
    assert "_k.as_matrix(" in src and "_k.regroup(" not in src
    np.testing.assert_allclose(f(a, b), np.einsum(spec, a, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f(np.asfortranarray(a), b[..., ::-1][..., ::-1]),
                               np.einsum(spec, a, b), rtol=1e-12, atol=1e-12)


def test_large_results_reuse_blocks_but_never_ones_still_in_use(rng):
    from gradc.codegen import buffers
    buffers.clear()
    n = buffers.MIN_BYTES // 8 + 10          # a gradient just over the pool's threshold
    g, want_of = gradc.grad(rosen), gradc.grad(rosen, target="numpy")
    xs = [rng.uniform(-1, 1, n) for _ in range(4)]
    kept = g(xs[0])                          # held by the caller
    view = g(xs[1])[5:]                      # only a view of the result is held
    address = g(xs[2]).ctypes.data           # dropped at once: its block goes back
    assert buffers.held() == n * 8
    again = g(xs[3])
    assert again.ctypes.data == address      # ... and is handed out again
    assert buffers.held() == 0
    # the results still reachable were never written over
    _close(kept, want_of(xs[0]))
    _close(view, want_of(xs[1])[5:])
    _close(again, want_of(xs[3]))
    del kept, view, again
    assert buffers.held() == 3 * n * 8
    buffers.clear()
    assert buffers.held() == 0


_HEAP_CHILD = textwrap.dedent("""
    import ctypes, numpy as np, gradc
    from gradc.codegen import buffers

    class Info(ctypes.Structure):       # glibc's struct mallinfo2
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    gradc.grad(lambda x: np.sum(x ** 2))(np.ones(3))     # a compiled CPU function
    before = libc.mallinfo2()
    block = libc.malloc(8 << 20)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    print(buffers.keep_heap(), during.hblkhd - before.hblkhd, after.arena - before.arena)
""")


def _heap_child(**settings):
    """The child's report, in an environment without the caller's malloc settings
    (glibc's variables, ``GRADC_MALLOPT``) but with ``settings``."""
    mine = ("GRADC_MALLOPT", "GLIBC_TUNABLES")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in mine}
    env.update(GRADC_TARGET="cpu", **settings)
    out = subprocess.run([sys.executable, "-c", _HEAP_CHILD], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    kept, mapped, kept_bytes = out.stdout.split()
    return kept == "True", int(mapped), int(kept_bytes)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or sys.maxsize < 2 ** 32,
                    reason="glibc's malloc on a 64-bit machine")
def test_the_heap_keeps_blocks_below_glibcs_adaptive_ceilings():
    """After the first compiled CPU function, an 8 MB block comes from glibc's heap and
    stays there when freed (as glibc itself does once a block that large was freed), so
    a loop body's arrays are not faulted in again at each call; not when the user set
    glibc's variables or ``GRADC_MALLOPT=0``: then the block is an ``mmap`` of its own,
    as at glibc's start."""
    from gradc.codegen import buffers
    assert (buffers.MMAP_THRESHOLD, buffers.TRIM_THRESHOLD) == (32 << 20, 64 << 20)
    kept, mapped, kept_bytes = _heap_child()
    assert kept and mapped == 0 and kept_bytes >= 8 << 20
    for env in ({"GRADC_MALLOPT": "0"}, {"MALLOC_TRIM_THRESHOLD_": str(128 << 10)}):
        kept, mapped, kept_bytes = _heap_child(**env)
        assert not kept and mapped >= 8 << 20 and kept_bytes < 8 << 20


@pytest.mark.parametrize("image_shape, kernel_shape, padding", [
    ((2, 8, 16, 16), (8, 8, 3, 3), (1, 1, 1, 1)),      # im2col rows along output rows
    ((2, 8, 16, 16), (8, 8, 3, 3), (0, 2, -1, 1)),     # asymmetric, one side cropped
    ((8, 2, 16, 16), (4, 2, 16, 16), (1, 1, 1, 1)),    # kernel wider than the output
    ((3, 2, 5, 7), (2, 2, 3, 3), (1, 1, 1, 1)),        # small: Numba's own np.dot
    ((4, 2, 12, 12), (3, 2, 10, 10), (0, 0, 1, 1)),    # wider than the output, not the image
    ((2, 16, 16, 16), (4, 16, 3, 3), (2, 0, 1, -1)),   # fewer outputs, one side cropped
    ((2, 16, 16, 16), (4, 16, 3, 3), (2, 0, 0, 2)),    # shift-sum: fewer outputs than inputs
    ((2, 8, 10, 10), (3, 8, 3, 3), (1, 1, 1, 1)),      # shift-sum, small product
])
def test_conv2d_kernel_layouts_agree_with_direct_loops(rng, image_shape, kernel_shape,
                                                       padding):
    from gradc.codegen import kernels
    image, kernel = rng.standard_normal(image_shape), rng.standard_normal(kernel_shape)
    got = kernels.conv2d(image, kernel, *padding)
    want = kernels.conv2d_loops(image, kernel, *padding)
    assert got.shape == want.shape and got.flags.c_contiguous
    _close(got, want)


@pytest.mark.parametrize("padding, kernel_shape", [
    ("same", (8, 8, 3, 3)), ("valid", (8, 8, 3, 3)), ("same", (5, 8, 5, 3))])
def test_conv_gradient_on_numpys_blas_matches_interpreter(rng, padding, kernel_shape):
    def loss(img, k):
        return np.sum(np.tanh(gradc.conv2d(img, k, padding=padding)))
    img, k = rng.standard_normal((4, 8, 12, 12)), rng.standard_normal(kernel_shape) * 0.2
    g = gradc.grad(loss, argnums=(0, 1))
    # the kernel gradient reuses the forward convolution's patch matrix
    assert "_k.conv2d_kernel_grad_from_cols(" in g.source(img, k)
    got = g(img, k)
    want = gradc.grad(loss, argnums=(0, 1), target="numpy")(img, k)
    _close(got[0], want[0])
    _close(got[1], want[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_convolution_over_the_batch_axis_standalone(rng, dtype):
    # conv2d of batch-and-channel-swapped operands (the kernel gradient's form) becomes
    # conv2d_over_batch, with its own patch matrix when no forward convolution has one
    def f(a, b):
        return gradc.conv2d(a.transpose(1, 0, 2, 3), b.transpose(1, 0, 2, 3), padding="same")
    a = (rng.standard_normal((6, 4, 9, 9)) * 3).astype(dtype)
    b = (rng.standard_normal((6, 5, 3, 3)) * 3).astype(dtype)
    jf = gradc.jit(f)
    assert "conv2d_over_batch" in str(jf.graph(a, b))
    got, want = jf(a, b), gradc.jit(f, target="numpy")(a, b)
    assert got.dtype == want.dtype
    # a sum of 54 products of size ~10 may cancel to ~0.04: its rounding error scales
    # with the terms, not with the result (summation orders differ between BLAS builds)
    eps = 1e-6 if dtype == "float32" else 1e-14
    tol = dict(rtol=10 * eps, atol=eps * np.abs(want).max())
    np.testing.assert_allclose(got, want, **tol)
    # the primitive's own implementation (what the interpreter runs in a fused graph)
    from gradc.passes.conv import conv2d_over_batch_p
    np.testing.assert_allclose(conv2d_over_batch_p.impl(a, b, padding=((1, 1), (1, 1))),
                               want, **tol)


@pytest.fixture
def direct_convolutions(monkeypatch):
    # small problems take the direct loop nests too (codegen.convgen), so that these
    # tests compile quickly; rows must still be wide enough to vectorise
    from gradc.codegen import convgen
    monkeypatch.setattr(convgen, "MIN_FLOPS", 0)


@pytest.mark.parametrize("dtype, padding, image_shape, kernel_shape", [
    ("float64", "same", (2, 3, 6, 26), (5, 3, 3, 3)),            # odd O: a remainder block
    ("float64", "valid", (1, 2, 5, 28), (4, 2, 3, 3)),
    ("float32", ((2, 0), (1, 3)), (2, 2, 4, 24), (3, 2, 3, 2)),  # asymmetric, float32
    ("float64", ((1, -1), (0, 1)), (2, 2, 5, 25), (2, 2, 2, 2)),  # one side cropped
])
def test_direct_convolution_and_both_gradients(rng, direct_convolutions, dtype, padding,
                                               image_shape, kernel_shape):
    def loss(img, k):
        return np.sum(np.tanh(gradc.conv2d(img, k, padding=padding)))
    img = rng.standard_normal(image_shape).astype(dtype)
    k = (rng.standard_normal(kernel_shape) * 0.3).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    def conv(a, b):
        return gradc.conv2d(a, b, padding=padding)
    compiled = gradc.jit(conv)
    assert "direct convolution" in compiled.source(img, k)
    got, want = compiled(img, k), gradc.jit(conv, target="numpy")(img, k)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    g = gradc.grad(loss, argnums=(0, 1))
    source = g.source(img, k)
    # the kernel gradient reads the padded images the forward convolution made
    assert source.count("_k.padded_image(") == 2 and "direct kernel gradient" in source
    got, want = g(img, k), gradc.grad(loss, argnums=(0, 1), target="numpy")(img, k)
    for a, b in zip(got, want):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_padded_image_crops_and_pads(rng):
    from gradc.codegen import kernels
    image = rng.standard_normal((2, 3, 5, 6))
    for pads in [(1, 2, 0, 3), (-1, 2, 2, -3), (0, 0, -6, 1), (-5, 1, 1, 1)]:
        top, bottom, left, right = pads
        want = np.pad(image[:, :, max(0, -top):5 - max(0, -bottom),
                            max(0, -left):6 - max(0, -right)],
                      ((0, 0), (0, 0), (max(0, top), max(0, bottom)),
                       (max(0, left), max(0, right))))
        got = kernels.padded_image(image, *pads)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_kernel_gradient_without_a_forward_convolution(rng):
    def loss(img, k, w):      # linear in k: the forward convolution is not needed
        return np.sum(gradc.conv2d(img, k, padding="valid") * w)
    img, w = rng.standard_normal((3, 4, 10, 10)), rng.standard_normal((3, 6, 8, 8))
    k = rng.standard_normal((6, 4, 3, 3))
    g = gradc.grad(loss, argnums=1)
    source = g.source(img, k, w)
    assert "conv2d_cols" in source and "conv2d_from_cols" not in source
    _close(g(img, k, w), gradc.grad(loss, argnums=1, target="numpy")(img, k, w))


def test_float32_sums_are_as_accurate_as_numpys():
    """(QA: a float32 total of 10⁶ values of 0.1 was 100022.35 on the cpu target, NumPy's
    pairwise sum 100000.01.)  Sums into a local add to a float64 total."""
    x = np.full(10 ** 6, 0.1, np.float32)

    def f(x):
        return np.sum(x), np.var(x + 1000), np.sum(x.reshape(4, -1), axis=1)
    got, want = gradc.jit(f, target="cpu")(x), f(x)
    exact = np.float64(np.float32(0.1))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.float32
    assert abs(got[0] - 10 ** 6 * exact) <= abs(want[0] - 10 ** 6 * exact) + 0.01
    assert got[1] == 0.0 and abs(want[1]) < 1e-5      # (NumPy 2.4: 0.0; 2.1: 1.2e-6)
    np.testing.assert_allclose(got[2], 250000 * exact, rtol=1e-7)
    y = x.reshape(4, 500, 500)               # (summed over outer loops: a float64 array)
    for axes in ((0, 2), (0, 1), (1,)):
        got = gradc.jit(lambda y: np.sum(y.transpose(2, 1, 0), axis=axes), target="cpu")(y)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, 10 ** 6 / got.size * exact, rtol=1e-7)


def test_a_square_root_by_power_is_numpys():
    """``x ** 0.5`` is NumPy's square root at -inf and -0.0 (``pow`` gives inf, 0.0)."""
    x = np.array([-np.inf, -0.0, 0.0, 4.0, 2.0])
    with np.errstate(invalid="ignore"):
        want = x ** 0.5
        for target in ("numpy", "cpu"):
            got = gradc.jit(lambda x: x ** 0.5, target=target)(x)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_strided_operands_of_a_product_give_no_numba_warning():
    # A strided argument (A[::2], v[::2]) reaches the compiled function as a Numba
    # array of layout 'A', on which np.dot warned at compile time
    # (NumbaPerformanceWarning: "np.dot() is faster on contiguous arrays"), a warning
    # about gradc's generated code that its user cannot act on.
    import warnings

    rng = np.random.default_rng(7)
    a, b, v = rng.normal(size=(14, 5)), rng.normal(size=(5, 6)), rng.normal(size=(28,))

    def product(a, b):
        return np.tanh(a @ b)

    def matvec(a, v):
        return np.sin(a.T @ v)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = gradc.jit(product, target="cpu")(a[::2], b[:, ::2])
        got_v = gradc.jit(matvec, target="cpu")(a[:, ::2], v[::2])
    assert [str(w.message) for w in caught] == []
    np.testing.assert_allclose(got, np.tanh(a[::2] @ b[:, ::2]), rtol=1e-12)
    np.testing.assert_allclose(got_v, np.sin(a[:, ::2].T @ v[::2]), rtol=1e-12)


def test_jvp_takes_a_fast_path_with_the_general_paths_results(monkeypatch):
    """``gradc.jvp`` of float arrays and floats (each tangent of its primal's dtype)
    goes from a cheap key to the compiled code: 0.1 ms a call on the general path,
    8 µs on the fast one.  Same results and types; a changed closed-over array, a new
    dtype, an int argument and a failed guard take the general path, right."""
    from gradc import api
    w = np.array([1.0, 2.0, 3.0])

    def f(x, s):
        y = np.sin(x) * w * s
        return y if np.sum(x) > 0 else -y
    x, v = np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.5, 0.25])
    want = (np.sin(x) * w * 2.0, np.cos(x) * v * w * 2.0 + np.sin(x) * w * 0.5)
    first = gradc.jvp(f, (x, 2.0), (v, 0.5), target="cpu")
    for got, ref in zip(first, want):
        np.testing.assert_allclose(got, ref, rtol=1e-14)
    assert api._JVP_FAST.tables.get(f)
    monkeypatch.setattr(api, "_trace", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("traced again")))
    again = gradc.jvp(f, (x, 2.0), (v, 0.5), target="cpu")       # (the fast path)
    for a, b in zip(again, first):
        assert type(a) is type(b)
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    w[0] = -1.0                                       # (mutated in place: traced again)
    got = gradc.jvp(f, (x, 2.0), (v, 0.5), target="cpu")
    np.testing.assert_allclose(got[0], np.sin(x) * w * 2.0, rtol=1e-14)
    down = gradc.jvp(f, (-x, 2.0), (v, 0.5), target="cpu")        # (the guard fails)
    np.testing.assert_allclose(down[0], -(np.sin(-x) * w * 2.0), rtol=1e-14)
    x32, v32 = x.astype(np.float32), v.astype(np.float32)
    for got, ref in zip(gradc.jvp(f, (x32, 2.0), (v32, 0.5), target="cpu"),
                        gradc.jvp(f, (x32, 2.0), (v32, 0.5), target="numpy")):
        assert got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    with pytest.raises(gradc.GradcError, match="tangent"):          # (still checked)
        gradc.jvp(f, (x, 2.0), (v.astype(np.float32), 0.5), target="cpu")


def test_a_keyword_call_fills_no_fast_entry_and_results_are_the_callers_own():
    """(QA) A call with keyword arguments filled the fast table under its positional
    arguments' key: ``t(x, s=3)`` then ``t(x)`` gave x * 3 (jit and vmap), or a
    TypeError for a float keyword.  And one value returned twice (``(a * 2, a * 2)``,
    one value after CSE) came back as two arrays of one buffer: writing one changed
    the other."""
    x = np.arange(3.0)
    for make in (gradc.jit, gradc.vmap):
        for s in (3, 3.0) if make is gradc.jit else (3,):   # (vmap maps a float keyword)
            def hv(x, s=2 if isinstance(s, int) else 2.0):
                return x * s
            t = make(hv)
            np.testing.assert_array_equal(t(x, s=s), x * 3)
            np.testing.assert_array_equal(t(x), x * 2)
            np.testing.assert_array_equal(t(x), x * 2)
        twice = make(lambda a: (a * 2, a * 2))
        for _ in range(3):
            r0, r1 = twice(x)
            r0[0] = 100.0
            np.testing.assert_array_equal(r1, x * 2)


def test_vjp_and_linearize_take_a_fast_path_with_the_general_paths_results(monkeypatch):
    """``vjp`` and ``linearize`` share their forward pass; of arrays and floats it goes
    from a cheap key to the compiled code (41 and 27 µs a call on the general path, 11
    and 9 µs).  Same values and cotangents as the first call and as NumPy's; a changed
    closed-over array and a failed guard take the general path; the entry keeps no
    caller's array alive."""
    import gc
    import weakref

    from gradc import api
    w = np.array([1.0, 2.0, 3.0])

    def f(x, s):
        y = np.sin(x) * w * s
        return y if np.sum(x) > 0 else -y
    x = np.array([0.1, 0.2, 0.3])
    ct = np.array([1.0, -1.0, 0.5])
    out, back = gradc.vjp(f, x, 2.0, target="cpu")
    assert api._FORWARD_FAST.tables.get(f)
    monkeypatch.setattr(api, "_trace", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("traced again")))
    out2, back2 = gradc.vjp(f, x, 2.0, target="cpu")                  # (the fast path)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_allclose(out2, np.sin(x) * w * 2.0, rtol=1e-15)
    for got, want in zip(back2(ct), (np.cos(x) * w * 2.0 * ct, np.sum(np.sin(x) * w * ct))):
        np.testing.assert_allclose(got, want, rtol=1e-14)
    assert type(back2(ct)[1]) is type(back(ct)[1])
    y, f_jvp = gradc.linearize(f, x, 2.0, target="cpu")
    np.testing.assert_allclose(f_jvp(ct, 0.0), np.cos(x) * w * 2.0 * ct, rtol=1e-14)
    monkeypatch.undo()
    w[0] = -1.0                                           # (mutated: traced again)
    np.testing.assert_allclose(gradc.vjp(f, x, 2.0, target="cpu")[0], np.sin(x) * w * 2.0,
                               rtol=1e-15)
    np.testing.assert_allclose(gradc.vjp(f, -x, 2.0, target="cpu")[0],     # (the guard)
                               -(np.sin(-x) * w * 2.0), rtol=1e-15)
    big = np.ones(3)

    def kept(v):
        return np.sin(v) * 2.0
    gradc.vjp(kept, big, target="cpu")
    assert api._FORWARD_FAST.tables.get(kept)
    gone = weakref.ref(big)
    del big
    gc.collect()
    assert gone() is None


def test_vjp_fn_takes_a_direct_path_with_the_general_paths_results(monkeypatch):
    """After its first call, ``vjp_fn`` of a NumPy cotangent of the output's dtype and
    shape calls the compiled backward pass directly (10.5 against 1.2 µs a call here):
    the same cotangents, fresh arrays each call (not the caller's cotangent, not one
    another's), and the general path's errors for anything else."""
    from gradc import api
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal(5), rng.standard_normal(5)
    for f in (lambda x, y: np.tanh(x) * y, lambda x, y: x + y, lambda x, y: x):
        out, back = gradc.vjp(f, x, y, target="cpu")
        ct = rng.standard_normal(5)
        first = back(ct)                                  # (the general path)
        monkeypatch.setattr(api.pytree, "flatten", lambda *a: (_ for _ in ()).throw(
            AssertionError("the general path")))
        second = back(ct)
        monkeypatch.undo()
        want = gradc.vjp(f, x, y, target="numpy")[1](ct)
        for a, b, w in zip(first, second, want):
            np.testing.assert_allclose(b, w, rtol=1e-15, atol=0)
            np.testing.assert_array_equal(a, b)
            assert not np.shares_memory(b, ct) and not np.shares_memory(a, b)
        assert not np.shares_memory(second[0], second[1])
        second[0][...] = 7.0                              # (not a buffer used again)
        np.testing.assert_allclose(back(ct)[0], want[0], rtol=1e-15, atol=0)
        with pytest.raises(gradc.TangentDTypeError):
            back(ct.astype(np.float32))
        with pytest.raises(gradc.ArgumentError, match="shape"):
            back(np.ones(4))
        np.testing.assert_allclose(back(np.ones(5, np.int64))[1], gradc.vjp(   # (general:
            f, x, y, target="numpy")[1](np.ones(5))[1], rtol=1e-15)    # an int cotangent)


def test_f_jvp_takes_a_direct_path_with_the_general_paths_results(monkeypatch):
    """``linearize``'s ``f_jvp`` of NumPy tangents of the primals' dtypes and shapes calls
    the compiled tangent map directly after its first call (10.9 against 1.5 µs a call
    here), with fresh results, and the general path's errors otherwise."""
    from gradc import api
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal(4), rng.standard_normal(4)
    for f in (lambda x, y: np.tanh(x) * y, lambda x, y: x, lambda x, y: x * 0.0 + 3.0):
        _, f_jvp = gradc.linearize(f, x, y, target="cpu")
        tx, ty = rng.standard_normal(4), rng.standard_normal(4)
        first = f_jvp(tx, ty)
        monkeypatch.setattr(api.pytree, "flatten", lambda *a: (_ for _ in ()).throw(
            AssertionError("the general path")))
        second = f_jvp(tx, ty)
        monkeypatch.undo()
        want = gradc.linearize(f, x, y, target="numpy")[1](tx, ty)
        np.testing.assert_allclose(second, want, rtol=1e-15, atol=0)
        np.testing.assert_array_equal(first, second)
        assert not any(np.shares_memory(second, a) for a in (tx, ty, first))
        second[...] = 7.0
        np.testing.assert_allclose(f_jvp(tx, ty), want, rtol=1e-15, atol=0)
        with pytest.raises(gradc.TangentDTypeError):
            f_jvp(tx.astype(np.float32), ty)
        with pytest.raises(gradc.ArgumentError, match="shape"):
            f_jvp(np.ones(3), ty)
        with pytest.raises(gradc.ArgumentError):
            f_jvp(tx)
