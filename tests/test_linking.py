"""codegen.linking: a generated module's helpers are compiled into the machine code of
the function that calls them, once, instead of once per level of the call tree."""
from __future__ import annotations

import numpy as np
import pytest

import gradc
from gradc.codegen import linking
from gradc.codegen.numba_cpu import compile_graph

pytestmark = pytest.mark.skipif(not linking._SUPPORTED,
                                reason="this Numba's internals are not those linking expects")
# (the generated helpers are link-only unless GRADC_LINK_ONLY=0 was set at import)
programs = pytest.mark.skipif(not linking.ENABLED, reason="GRADC_LINK_ONLY=0")


def _libraries(compiled):
    """{helper name: [its code libraries, one per signature]} of a compiled program."""
    names = compiled.py_func.__globals__
    return {k: [cres.library for cres in v.overloads.values()]
            for k, v in names.items() if k.startswith("_h") and hasattr(v, "overloads")}


def _loop(x, w):
    def body(i, carry):
        return np.tanh(carry * w + np.sin(carry[::-1]))
    return np.sum(gradc.fori_loop(0, 4, body, x) ** 2)


@programs
def test_nested_helpers_are_linked_into_the_main_function_only(monkeypatch):
    emitted = []                    # the libraries that get machine code of their own
    real = linking._LIBRARY._finalize_specific

    def finalize_specific(self):
        emitted.append(self.name)
        return real(self)

    monkeypatch.setattr(linking._LIBRARY, "_finalize_specific", finalize_specific)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(8), rng.standard_normal(8)
    graph = gradc.make_graph(gradc.grad(_loop, argnums=(0, 1)))(x, w)
    compiled = compile_graph(graph, name="loop_grad")
    got = compiled(x, w)
    want = gradc.grad(_loop, argnums=(0, 1))(x, w)           # (the interpreter)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-13)
    libraries = _libraries(compiled)
    assert any("@_k.jit_body\ndef " + k + "(" in compiled.source for k in libraries)
    assert sum(len(v) for v in libraries.values()) >= 3
    for name, libs in libraries.items():
        for lib in libs:
            assert isinstance(lib, linking.LinkOnlyLibrary) and lib._link_only, name
    assert "loop_grad" in emitted
    assert not set(emitted) & set(libraries), emitted


@programs
def test_a_helper_has_no_python_entry():
    x, w = np.arange(4.0), np.ones(4)
    compiled = compile_graph(gradc.make_graph(_loop)(x, w), name="loop")
    np.testing.assert_allclose(compiled(x, w)[0], _loop(x, w), rtol=1e-14)
    name, helper = next((k, v) for k, v in compiled.py_func.__globals__.items()
                        if k.startswith("_h") and hasattr(v, "overloads") and v.overloads)
    sig = next(iter(helper.overloads))
    args = [np.zeros(4) if getattr(t, "ndim", 0) else 0 for t in sig]
    with pytest.raises(TypeError):
        helper(*args)


@programs
def test_a_body_with_an_object_mode_block_is_compiled_on_its_own():
    """A product large enough for NumPy's BLAS runs in an object-mode block, which reads
    the function's Numba environment: that helper is finalised the usual way (its
    environment installed) and the program still runs."""
    rng = np.random.default_rng(1)
    m, x = rng.standard_normal((70, 70)) / 9, rng.standard_normal((70, 70))

    def f(m, x):
        def body(i, c):
            return np.tanh(m @ c)
        return np.sum(gradc.fori_loop(0, 3, body, x))

    compiled = compile_graph(gradc.make_graph(f)(m, x), name="products")
    assert "numba.objmode" in compiled.source
    np.testing.assert_allclose(compiled(m, x)[0], f(m, x), rtol=1e-12)
    kinds = {lib._link_only for libs in _libraries(compiled).values() for lib in libs}
    assert False in kinds, compiled.source


def test_link_only_is_off_with_gradc_link_only_0(tmp_path):
    """``GRADC_LINK_ONLY=0``: the helpers are plain ``njit``, each library finalised
    the usual way, with the same results."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np, gradc\n"
            "from gradc.codegen import linking\n"
            "from gradc.codegen.numba_cpu import compile_graph\n"
            "from tests.test_linking import _loop, _libraries\n"
            "x, w = np.arange(8.0) / 8, np.ones(8)\n"
            "c = compile_graph(gradc.make_graph(_loop)(x, w), name='loop')\n"
            "print(linking.ENABLED, repr(float(c(x, w)[0])), sorted({type(l).__name__"
            " for v in _libraries(c).values() for l in v}))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for flag, kind in (("0", "JITCodeLibrary"), ("1", "LinkOnlyLibrary")):
        # (an empty cache: code loaded from the disk compiles no helper)
        env = dict(os.environ, GRADC_LINK_ONLY=flag, GRADC_NATIVE="0",
                   GRADC_CACHE_DIR=str(tmp_path / flag))
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        enabled, value, kinds = done.stdout.split(" ", 2)
        assert enabled == str(flag == "1") and kinds.strip() == repr([kind])
        x, w = np.arange(8.0) / 8, np.ones(8)
        assert float(value) == pytest.approx(_loop(x, w), rel=1e-14)


def test_link_only_without_support_is_plain_njit(monkeypatch):
    monkeypatch.setattr(linking, "_SUPPORTED", False)
    jitted = linking.link_only(enabled=True, nogil=True)(lambda a: a + 1)
    assert jitted(1) == 2                     # (a Python entry: compiled the usual way)


# (from the review: link-only functions used the ways Numba allows beyond gradc's own)

def test_a_helper_passed_as_a_first_class_function_is_refused_not_a_crash():
    import numba
    from numba import types

    @linking.link_only(enabled=True, error_model="numpy")
    def twice(x):
        return 2.0 * x

    sig = types.float64(types.float64)

    @numba.njit(types.float64(types.FunctionType(sig), types.float64))
    def apply(f, x):
        return f(x)

    with pytest.raises(ValueError):          # (a segmentation fault before)
        apply(twice, 1.5)

    @numba.njit
    def caller(x):
        return twice(x) + 1.0
    assert caller(1.5) == 4.0


def test_mutually_recursive_helpers_are_compiled_the_usual_way():
    import numba

    @linking.link_only(enabled=True, error_model="numpy")
    def is_even(n):
        return True if n == 0 else is_odd(n - 1)

    @linking.link_only(enabled=True, error_model="numpy")
    def is_odd(n):
        return False if n == 0 else is_even(n - 1)

    @numba.njit
    def main(n):
        return is_even(n)
    assert main(10) and not main(7)          # (an unresolved-symbol abort before)


def test_a_disk_cached_function_is_compiled_the_usual_way():
    jitted = linking.link_only(enabled=True, cache=True)(_plus_one)
    assert jitted._compiler.pipeline_class is not linking.LinkOnlyCompiler
    assert jitted(1) == 2                     # (no machine code to cache: it failed)


def _plus_one(a):
    return a + 1
