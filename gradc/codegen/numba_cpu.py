"""Compile a Graph for the CPU through Numba.

``compile_graph(graph)`` lowers the graph to Python source (``pysource.lower``), writes
it to a real file in the per-user cache directory (``$GRADC_CACHE_DIR``, else
``~/.cache/gradc``, under ``src/<sha256 of the source>.py``) so that tracebacks,
``inspect`` and ``pdb`` show the generated lines, registers it with ``linecache``,
executes it and wraps its main function with ``numba.njit`` (nopython,
``fastmath=False``, NumPy's error model so that 1/0 is inf as in the interpreter).

The returned ``Compiled`` takes the graph's inputs (rank-0 inputs as Python or NumPy
scalars or 0-d arrays) and returns a list of NumPy arrays, like ``gradc.interpret.run``.
"""
from __future__ import annotations

import hashlib
import linecache
import os
import pathlib
import tempfile

import numba
import numpy as np

from ..ir import Graph
from .pysource import lower


def cache_dir() -> pathlib.Path:
    root = os.environ.get("GRADC_CACHE_DIR")
    if root:
        return pathlib.Path(root)
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "gradc"


def write_source(source: str) -> str:
    """Write ``source`` to ``<cache>/src/<sha256>.py`` (atomically; an existing file with
    that name already holds that text) and return the path."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    folder = cache_dir() / "src"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.py"
    if not path.exists() or path.read_text() != source:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    return str(path)


class Compiled:
    """A Graph compiled by Numba: call it with the graph's inputs."""

    def __init__(self, graph: Graph, name: str = "gradc_fn"):
        self.graph = graph
        lowered = lower(graph, name)
        self.source = lowered.source
        self.path = write_source(self.source)
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.path] = (len(self.source), None, lines, self.path)
        namespace = {"__name__": f"gradc_generated_{name}", "__file__": self.path}
        exec(compile(self.source, self.path, "exec"), namespace)
        self.py_func = namespace[name]
        self.dispatcher = numba.njit(self.py_func, fastmath=False, error_model="numpy",
                                     nogil=True)
        self._consts = tuple(lowered.consts.values())

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
        results = self.dispatcher(*self._convert(args))
        return [np.asarray(r, dtype=o.dtype) for r, o in zip(results, self.graph.outputs)]

    # ------------------------------------------------------------ inspection

    def example_args(self) -> tuple:
        """Zeros of the graph's input types (C-contiguous): the canonical signature."""
        return tuple(np.zeros(v.shape, v.dtype) for v in self.graph.inputs)

    def signature(self):
        """The Numba signature compiled for C-contiguous inputs (compiling it if needed)."""
        types = tuple(numba.typeof(a) for a in self._convert(self.example_args()))
        self.dispatcher.compile(types)
        return types

    def llvm(self) -> str:
        """LLVM IR of the main function for C-contiguous inputs."""
        return self.dispatcher.inspect_llvm(self.signature())

    def asm(self) -> str:
        """Machine code (assembly text) of the main function for C-contiguous inputs."""
        return self.dispatcher.inspect_asm(self.signature())

    def __repr__(self) -> str:
        return f"<gradc.Compiled {self.py_func.__name__} from {self.path}>"


def compile_graph(graph: Graph, name: str = "gradc_fn") -> Compiled:
    """Compile ``graph`` with Numba (compilation proper happens at the first call)."""
    return Compiled(graph, name)
