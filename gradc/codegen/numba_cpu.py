"""Compile a Graph for the CPU through Numba.

``compile_graph(graph)`` lowers the graph to Python source (``pysource.lower``), writes
it to a real file in the cache directory (``gradc.cache``) so that tracebacks,
``inspect`` and ``pdb`` show the generated lines, registers it with ``linecache``,
executes it as a module and wraps its main function with ``numba.njit`` (nopython,
``fastmath=False`` unless asked, NumPy's error model so that 1/0 is inf as in the
interpreter, ``cache=True`` so that a new process loads the machine code from disk).

The returned ``Compiled`` takes the graph's inputs (rank-0 inputs as Python or NumPy
scalars or 0-d arrays) and returns a list of NumPy arrays, like ``gradc.interpret.run``.

Numba is imported at the first call, not before: when the cache holds a shared library
of the code (``gradc.codegen.native``, built after the first compile), a new process
runs that, without importing Numba (a few ms instead of ~0.35 s).  Its calls cost ~5 µs
more than the dispatcher's, so after ``NATIVE_CALLS`` calls that took less than
``NATIVE_KEEP_SECONDS`` each on average, calls move to Numba's dispatcher.
It pickles as its Graph and options: the receiving process lowers the Graph again (the
same text, so the same cache key) and loads the machine code from its disk cache.
"""
from __future__ import annotations

import contextlib
import linecache
import os
import sys
import time
import types
import warnings

import numpy as np

from ..ir import Graph
from . import buffers, cache, native
from .pysource import lower

NATIVE_CALLS = 100            # calls run by a cached shared library before deciding
NATIVE_KEEP_SECONDS = 1e-3    # ... to keep it (longer calls) or move to Numba (shorter)
OPENMP_SPIN = "10000"         # GOMP_SPINCOUNT for the parallel target (see below)


def _openmp_yields_to_blas() -> None:
    """Shorten the time the threads of Numba's OpenMP layer spin after a parallel loop.

    By default they spin for about 300,000 iterations before sleeping, and the BLAS
    product that usually follows waits for the core they hold: the W3 and W5 gradients
    on target="parallel" took 12.3 ms against 4.9-5.5 ms on target="cpu" (2 cores).
    With 10,000 spins: 5.2 and 4.9 ms, while back-to-back loops keep most of their
    speed-up (W1 n=1e6: 125 µs, against 156 µs spinning long and 247 µs not spinning).
    Applied only when the user set neither variable, before OpenMP starts (its runtime
    reads them when Numba loads it, at the first parallel call)."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN


@contextlib.contextmanager
def quiet_compile():
    """Numba's performance warnings silenced while it compiles gradc's generated code:
    they point at generated lines the user cannot change (``np.dot() is faster on
    contiguous arrays``: Numba copies such an operand itself), and a test suite run with
    warnings as errors would fail on them."""
    from numba.core.errors import NumbaPerformanceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        yield


class Compiled:
    """A Graph compiled by Numba: call it with the graph's inputs."""

    def __init__(self, graph: Graph, name: str = "gradc_fn", *, parallel: bool = False,
                 fastmath: bool = False):
        self.graph = graph
        self.name = name
        self.options = dict(parallel=bool(parallel), fastmath=bool(fastmath))
        lowered = lower(graph, name, parallel=parallel, fastmath=fastmath)
        self.source = lowered.source
        if "numba.prange(" in self.source:
            _openmp_yields_to_blas()
        buffers.keep_heap()
        self.key = cache.key_of(self.source + repr(sorted(self.options.items())))
        self.path = str(cache.write_source(self.key, self.source))
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.path] = (len(self.source), None, lines, self.path)
        self._consts = tuple(lowered.consts.values())
        # output buffers: large ones come from the pool of reused blocks
        self._outs = tuple(
            (shape, dtype, buffers.empty if np.dtype(dtype).itemsize * int(np.prod(shape))
             >= buffers.MIN_BYTES else np.empty)
            for shape, dtype in lowered.outs.values())
        # a buffer in the memory of an earlier one (memplan): its position, and whether
        # it is seen in another shape
        names = list(lowered.outs)
        self._shares = tuple(
            (names.index(lowered.shares[n]),
             lowered.outs[lowered.shares[n]][0] != lowered.outs[n][0])
            if n in lowered.shares else None for n in names)
        self._sealed = False
        self._inspector = None
        self._py_func = self._dispatcher = None
        self._native, self._native_known = native.load(self)
        self._native_calls, self._native_seconds = 0, 0.0
        self.on_switch = []     # called when calls move from the shared library to Numba

    @property
    def py_func(self):
        """The generated main function (its module is executed at the first use)."""
        if self._py_func is None:
            # a real module, so that Numba's disk cache can find it again by name
            module = sys.modules.get(f"gradc_generated_{self.key}")
            if (module is None or getattr(module, "__gradc_source__", None) != self.source
                    or module.__file__ != self.path):      # (the cache directory moved)
                module = types.ModuleType(f"gradc_generated_{self.key}")
                module.__file__ = self.path
                module.__gradc_source__ = self.source
                exec(compile(self.source, self.path, "exec"), module.__dict__)
                sys.modules[module.__name__] = module
            self._py_func = getattr(module, self.name)
        return self._py_func

    @property
    def dispatcher(self):
        """The Numba dispatcher of the main function (created at the first use)."""
        if self._dispatcher is None:
            import numba
            py_func = self.py_func
            cache.validate(self.key)      # stale or corrupt machine code is dropped
            # (parallel loops live in the helpers the lowering decorates; the main
            # function only calls them, and holds the GIL: large matrix products run in
            # object mode)
            self._dispatcher = numba.njit(py_func, error_model="numpy", cache=True,
                                          fastmath=self.options["fastmath"])
        return self._dispatcher

    # ------------------------------------------------------------ calling

    def _convert(self, args):
        if len(args) != len(self.graph.inputs):
            raise TypeError(f"compiled graph takes {len(self.graph.inputs)} inputs, "
                            f"got {len(args)}")
        out = []
        for i, (a, v) in enumerate(zip(args, self.graph.inputs)):
            x = np.asarray(a)
            if x.shape != tuple(v.shape):
                raise TypeError(f"input {i}: expected shape {tuple(v.shape)}, got {x.shape}")
            if x.dtype != v.dtype:
                if isinstance(a, np.ndarray) and x.ndim:
                    raise TypeError(f"input {i}: expected dtype {v.dtype}, got {x.dtype}")
                x = x.astype(v.dtype)      # Python scalars take the traced dtype
            out.append(x[()] if x.ndim == 0 else x)
        return tuple(out) + self._consts

    def __call__(self, *args) -> list:
        results = self.call_raw(*self._convert(args)[:len(args)])
        return [np.asarray(r, dtype=o.dtype) for r, o in zip(results, self.graph.outputs)]

    def call_raw(self, *args):
        """Call with arguments of exactly the graph's shapes and dtypes (rank-0 ones as
        NumPy scalars): no checks.  Returns Numba's tuple of results."""
        outs = []
        for (shape, dtype, alloc), shared in zip(self._outs, self._shares):
            if shared is None:
                outs.append(alloc(shape, dtype))
            else:
                j, reshaped = shared
                outs.append(outs[j].reshape(shape) if reshaped else outs[j])
        library = self._native          # (read once: another thread may switch)
        if library is not None:
            if self._native_calls == NATIVE_CALLS:
                self._native_calls += 1
                if self._native_seconds < NATIVE_CALLS * NATIVE_KEEP_SECONDS:
                    self._switch()          # short calls: Numba's cost less
                    library = None
            if library is not None:
                self._native_calls += 1
                start = time.perf_counter()
                results = library(args + self._consts, outs)
                self._native_seconds += time.perf_counter() - start
                if results is not None:
                    return results
                self._switch()      # the code raised: Numba's code raises it, with its message
        if self._sealed:
            return self.dispatcher(*args, *self._consts, *outs)
        with quiet_compile():       # (the first call compiles)
            results = self.dispatcher(*args, *self._consts, *outs)
        self._sealed = True
        cache.seal(self.key)
        if not self._native_known:
            self._native_known = True
            native.build_soon(self)
        return results

    def _switch(self):
        self._native = None
        for hook in self.on_switch:
            hook()

    def fast_callable(self):
        """The quickest way to call with exactly-typed arguments: the Numba dispatcher
        itself when the code takes no constants or output buffers (after the first call
        has sealed the disk cache entry), else ``call_raw``."""
        if self._native is None and self._sealed and not self._consts and not self._outs:
            return self.dispatcher
        return self.call_raw

    # ------------------------------------------------------------ inspection

    def example_args(self) -> tuple:
        """Zeros of the graph's input types (C-contiguous): the canonical signature."""
        return tuple(np.zeros(v.shape, v.dtype) for v in self.graph.inputs)

    def signature(self):
        """The Numba signature for C-contiguous inputs."""
        import numba
        args = self._convert(self.example_args()) + tuple(
            np.empty(shape, dtype) for shape, dtype, _ in self._outs)
        return tuple(numba.typeof(a) for a in args)

    def _inspectable(self):
        # code loaded from Numba's disk cache keeps no LLVM IR: inspection compiles a
        # separate, uncached copy once
        if self._inspector is None:
            import numba
            options = {k: v for k, v in self.dispatcher.targetoptions.items()
                       if k not in ("cache", "nopython")}
            self._inspector = numba.njit(self.py_func, **options)
            with quiet_compile():
                self._inspector.compile(self.signature())
        return self._inspector

    def llvm(self) -> str:
        """LLVM IR of the main function for C-contiguous inputs."""
        return self._inspectable().inspect_llvm(self.signature())

    def asm(self) -> str:
        """Machine code (assembly text) of the main function for C-contiguous inputs."""
        return self._inspectable().inspect_asm(self.signature())

    def __repr__(self) -> str:
        return f"<gradc.Compiled {self.name} from {self.path}>"

    # ------------------------------------------------------------ pickling

    def __reduce__(self):
        return (_rebuild, (self.graph, self.name, self.options))


def _rebuild(graph, name, options):
    return Compiled(graph, name, **options)


def compile_graph(graph: Graph, name: str = "gradc_fn", *, parallel: bool = False,
                  fastmath: bool = False) -> Compiled:
    """Compile ``graph`` with Numba (compilation proper happens at the first call)."""
    return Compiled(graph, name, parallel=parallel, fastmath=fastmath)
