"""The compiled code as a shared library in the disk cache (gradc.codegen.native): a new
process runs it without importing Numba; results equal Numba's; graphs that need Python
at run time are not built; a damaged library is ignored and rebuilt; an exception in the
library's code hands over to Numba, which raises it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import gradc
from gradc.codegen import native, numba_cpu
from gradc.codegen.numba_cpu import Compiled
from gradc.errors import GuardFailure


@pytest.fixture(autouse=True)
def native_on(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADC_NATIVE", "1")
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GRADC_TARGET", "cpu")


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def scalars(x, y, z):
    return np.sin(x * y) + np.exp(z) * y


def reductions(a, b):
    return np.max(a * b, axis=0) - np.sum(np.pad(a, 1) ** 2, axis=1)[1:-1, None] * 0.5


def with_constant(x):
    return np.sum(np.tanh(x) * np.linspace(0.0, 1.0, 7)) + np.sum(x > 0.5)


def piecewise(x):
    if x[0] > 0:
        return np.sum(x ** 2)
    return np.sum(np.cos(x))


def _fresh(compiled) -> Compiled:
    """The same graph compiled anew, as a new process would (the cache decides)."""
    native.wait()
    return Compiled(compiled.graph, compiled.name, **compiled.options)


def _manifest(compiled) -> dict:
    native.wait()                 # libraries are built in a background thread
    return json.loads(native._paths(compiled.key)[1].read_text())


CASES = [
    ("rosen gradient", lambda: gradc.grad(rosen), lambda r: (r.uniform(-1, 1, 50),)),
    ("scalars in and out", lambda: gradc.value_and_grad(scalars, argnums=(0, 1, 2)),
     lambda r: (0.3, 0.5, 0.7)),
    ("reductions, pad, two outputs", lambda: gradc.value_and_grad(
        lambda a, b: np.sum(reductions(a, b) ** 2), argnums=(0, 1)),
     lambda r: (r.standard_normal((4, 3)), r.standard_normal((4, 3)))),
    ("an array constant, a count", lambda: gradc.value_and_grad(with_constant),
     lambda r: (r.uniform(0, 1, 7),)),
    ("float32", lambda: gradc.grad(rosen), lambda r: (r.uniform(-1, 1, 9).astype("f4"),)),
]


@pytest.mark.parametrize("name, make, args", CASES, ids=[c[0] for c in CASES])
def test_library_results_equal_numbas(name, make, args):
    xs = args(np.random.default_rng(7))
    compiled = make().compile(*xs)
    want = compiled(*xs)                      # Numba; builds the library after the call
    assert "entry" in _manifest(compiled)
    again = _fresh(compiled)
    assert again._native is not None and again._dispatcher is None
    got = again(*xs)
    assert again._dispatcher is None          # answered by the library, Numba untouched
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_code_with_python_calls_is_not_built():
    # a large matrix product runs in an object-mode block on NumPy's BLAS
    def loss(w, x):
        return np.sum(np.tanh(x @ w))
    w, x = np.ones((64, 48)) * 0.01, np.ones((40, 64))
    compiled = gradc.grad(loss).compile(w, x)
    compiled(w, x)
    assert "object-mode" in _manifest(compiled)["none"]
    again = _fresh(compiled)
    assert again._native is None and again._native_known    # not tried again


def test_a_solvers_report_is_known_not_to_build_without_compiling(monkeypatch):
    """A convergence report is a call of ``kernels.report``, which warns from an
    object-mode block: known from the source, with no background build that compiles
    an entry to find it out (that build took seconds of a second thread during the
    first calls: W8's implicit gradient measured 40% over its forward solve, not 20%)."""
    a = np.array([[3.0, 1.0], [1.0, 2.0]])

    def solve(b):
        return gradc.linear_solve(lambda v: a @ v, b, solve="cg")

    compiled = gradc.jit(solve).compile(np.ones(2))
    assert "_k.report(" in compiled.source and "numba.objmode(" not in compiled.source
    monkeypatch.setattr(numba, "cfunc", lambda *a, **k: pytest.fail("an entry was built"))
    assert "object-mode" in native._build(compiled)


def test_threaded_code_is_not_built():
    # loops on Numba's threading layer (target="parallel"), which only Numba starts
    x = np.linspace(-1.0, 1.0, 40_000)
    compiled = gradc.grad(rosen, target="parallel").compile(x)
    assert "numba.prange(" in compiled.source
    compiled(x)
    native.wait()
    assert not native._paths(compiled.key)[1].exists()     # nothing built, nothing noted
    again = _fresh(compiled)
    assert again._native is None and again._native_known     # and never tried


def test_direct_convolutions_are_not_built(monkeypatch):
    # they run on a thread pool from an object-mode block: known from the source alone
    from gradc.codegen import convgen
    monkeypatch.setattr(convgen, "MIN_FLOPS", 0)
    img, k = np.ones((1, 1, 3, 26)), np.ones((2, 1, 3, 3))
    compiled = gradc.jit(lambda a, b: gradc.conv2d(a, b)).compile(img, k)
    compiled(img, k)
    assert "object-mode" in _manifest(compiled)["none"]


def test_damaged_library_is_ignored_and_rebuilt(rng=np.random.default_rng(3)):
    x = rng.uniform(-1, 1, 20)
    compiled = gradc.grad(rosen).compile(x)
    want = compiled(x)[0]
    native.wait()
    path = native._paths(compiled.key)[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\0" * 64)
    damaged = _fresh(compiled)
    assert damaged._native is None and not damaged._native_known
    np.testing.assert_array_equal(damaged(x)[0], want)        # Numba, then a rebuild
    assert _manifest(compiled)["digest"] == native.hashlib.blake2b(
        path.read_bytes(), digest_size=16).hexdigest()
    rebuilt = _fresh(compiled)
    assert rebuilt._native is not None
    np.testing.assert_array_equal(rebuilt(x)[0], want)


def test_a_failed_guard_in_the_library_is_raised_by_numba():
    x = np.array([0.5, -1.0, 2.0])
    compiled = gradc.grad(piecewise).compile(x)
    compiled(x)
    again = _fresh(compiled)
    assert again._native is not None
    np.testing.assert_array_equal(again(x)[0], 2 * x)
    with pytest.raises(GuardFailure):
        again(-x)
    assert again._native is None                  # handed over to Numba for good


def test_short_calls_move_to_numba_long_ones_stay(monkeypatch):
    monkeypatch.setattr(numba_cpu, "NATIVE_CALLS", 3)
    x = np.linspace(-1.0, 1.0, 30)
    compiled = gradc.grad(rosen).compile(x)
    want = compiled(x)[0]
    for keep, stays in ((1e3, False), (0.0, True)):
        monkeypatch.setattr(numba_cpu, "NATIVE_KEEP_SECONDS", keep)
        again = _fresh(compiled)
        switched = []
        again.on_switch.append(lambda: switched.append(True))
        for _ in range(6):
            np.testing.assert_array_equal(again(x)[0], want)
        assert (again._native is not None) == stays and bool(switched) != stays


_CHILD = textwrap.dedent("""
    import sys, time, numpy as np, gradc
    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g = gradc.grad(rosen)
    x = np.linspace(-1.0, 1.0, 64)
    t = time.perf_counter()
    first = g(x)
    dt = time.perf_counter() - t
    numba_after_first = "numba" in sys.modules
    for _ in range(200):
        last = g(x)
    print(repr(float(np.sum(first * np.arange(64)))), numba_after_first,
          "numba" in sys.modules, bool(np.array_equal(first, last)), dt)
""")


def test_a_new_process_runs_the_library_without_importing_numba(tmp_path):
    env = dict(os.environ, GRADC_CACHE_DIR=str(tmp_path), GRADC_TARGET="cpu",
               GRADC_NATIVE="1")

    def child():
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        value, first_numba, later_numba, same, seconds = out.stdout.split()
        return float(value), first_numba == "True", later_numba == "True", same == "True"

    want = float(np.sum(gradc.grad(rosen, target="numpy")(np.linspace(-1.0, 1.0, 64))
                        * np.arange(64)))
    cold = child()
    assert cold[0] == pytest.approx(want, rel=1e-12) and cold[1] and cold[3]
    assert list((tmp_path / "native").glob("*.so"))
    warm = child()
    # the first call ran without Numba; 200 short calls later, Numba's dispatcher took
    # over; every result the same
    assert warm[0] == pytest.approx(want, rel=1e-12)
    assert warm[1] is False and warm[2] is True and warm[3]


def test_one_build_per_key_however_often_the_function_is_remade(monkeypatch):
    started = []
    real_build = native.build

    def slow_build(compiled):
        started.append(compiled.key)
        import time
        time.sleep(0.3)
        return real_build(compiled)
    monkeypatch.setattr(native, "build", slow_build)
    x = np.linspace(-1.0, 1.0, 40)
    for _ in range(5):                      # a new transformation each time, as in a loop
        gradc.grad(rosen)(x)
    native.wait()
    assert len(started) == 1


def test_building_keeps_numbas_cache_entry_valid():
    # the first call takes a non-contiguous array; the library's entry adds a
    # C-contiguous overload of the main function to Numba's cache, sealed afterwards
    from gradc.codegen import cache
    x = np.linspace(-1.0, 1.0, 80)[::2]
    compiled = gradc.grad(rosen).compile(x)
    compiled(x)
    native.wait()
    assert cache.validate(compiled.key)


def test_pool_blocks_are_not_handed_out_again_at_exit(tmp_path):
    script = textwrap.dedent("""
        import atexit, numpy as np
        from gradc.codegen import buffers
        keep = buffers.empty((1 << 18,), np.float64)
        keep[:] = 1.0
        def late():
            other = buffers.empty((1 << 18,), np.float64)
            other[:] = 7.0
            print(bool(np.shares_memory(keep, other)), keep[0])
        atexit.register(late)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1.0"]
