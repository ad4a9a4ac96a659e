"""From an optimised Graph to something callable, per target.

* ``"cpu"`` (the default): Numba, nopython, one thread;
* ``"parallel"``: Numba with ``parallel=True`` (fused loop nests use ``prange``);
* ``"cuda"``: numba.cuda kernels on an NVIDIA GPU (``codegen.cuda``; Numba's simulator
  with ``NUMBA_ENABLE_CUDASIM=1``);
* ``"numpy"``: the reference interpreter (``gradc.interpret``), no compilation.

``GRADC_TARGET`` in the environment changes the default (the test suite runs most
derivative tests with ``numpy``, the reference, and checks the compiled targets against
it in ``tests/test_codegen.py`` and ``tests/test_compiled_api.py``).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import ArgumentError, GradcError, GuardFailure, UnsupportedError, with_location
from ..interpret import eval_graph
from ..ir import Graph, subgraphs

TARGETS = ("cpu", "parallel", "cuda", "numpy")


class GradcWarning(UserWarning):
    """A warning from gradc (for example: a compiled target fell back to the interpreter)."""


def default_target() -> str:
    return os.environ.get("GRADC_TARGET", "cpu")


def check_target(target) -> str:
    target = default_target() if target is None else target
    if target not in TARGETS:
        raise ArgumentError(with_location(
            f"target={target!r} is not one of {', '.join(map(repr, TARGETS))}"))
    return target


def optimise(graph: Graph, target: str) -> Graph:
    """The pass pipeline that runs before lowering: simplify (fold, CSE, DCE), then, for the
    compiled targets, sums of one linear map's terms as the map of one sum (``passes.sums``:
    reverse mode's pads, reductions and reshapes, one per use of a value), solver regions
    expanded into their algorithms (``passes.implicit``), kernel gradients of convolutions as
    ``conv2d_over_batch`` and image gradients of strided ones as ``conv2d_dilated_input``
    (``passes.conv``), smaller loop tapes (``passes.remat``: on the GPU
    anything elementwise is recomputed rather than stacked, on the CPU arithmetic and views
    only), a scan's invariant work before the loop and a scan whose carries never change or only
    accumulate as a map over its steps (``passes.licm``; on the CPU not where its step's
    contractions are large), a scan's accumulated contractions as one contraction after it
    (``licm.sums_after_scans``; on the GPU only if asked), on the GPU a loop's ``argmax`` as
    reductions and its outer products as broadcast products (``passes.steps``), concatenations
    of a few operands as selections of pads and, on the CPU, products that sum nothing as
    broadcast products (``passes.steps.selections``), and loop fusion."""
    from ..passes import simplify
    graph = simplify(graph)
    if target != "numpy":
        from ..passes.sums import factor_sums
        graph = factor_sums(graph)
        from ..passes.implicit import expand
        expanded = expand(graph)
        graph = graph if expanded is graph else simplify(expanded)
        from ..passes.conv import dilated_inputs, over_batch
        from ..passes.fuse import fuse
        from ..passes.remat import remat_scans
        from ..passes import licm
        from ..passes.simplify import dce
        graph = remat_scans(graph, cheap=target != "cuda")
        hoisted = licm.hoist_invariants(graph) if licm.enabled() else graph
        graph = graph if hoisted is graph else dce(hoisted)
        # (on the CPU, not where a step's contractions are large: licm.CPU_PRODUCT)
        mapped = licm.maps_of_scans(graph, None if target == "cuda" else licm.CPU_PRODUCT) \
            if licm.enabled() and licm.maps_enabled() else graph
        graph = graph if mapped is graph else simplify(mapped)
        if licm.enabled() and licm.sums_enabled(target):
            summed = licm.sums_after_scans(graph)
            graph = graph if summed is graph else simplify(summed)
        if target == "cuda":
            from ..passes.steps import step_rewrites
            graph = step_rewrites(graph)
        from ..passes.steps import selections
        graph = selections(graph, products=target != "cuda")
        graph = fuse(over_batch(dilated_inputs(graph)), vector_ufuncs=target != "cuda")
    return graph


def _half_precision(graph: Graph):
    """The first float16 value of ``graph`` (its bodies' too) as text, or None."""
    for v in graph.inputs:
        if np.dtype(v.dtype) == np.float16:
            return f"an input of f16{list(v.shape)}"
    for eqn in graph.eqns:
        for v in eqn.outputs:
            if np.dtype(v.dtype) == np.float16:
                return f"{eqn.prim.name} of f16{list(v.shape)}"
        for body in subgraphs(eqn):
            found = _half_precision(body)
            if found is not None:
                return found
    return None


class Executable:
    """An optimised Graph ready to run on one target: ``exe(values) -> list of arrays``.

    Compilation is lazy (at the first call) and a compile that Numba rejects falls back
    to the interpreter with a ``GradcWarning`` naming the problem, so a result is never
    lost to a backend gap."""

    def __init__(self, graph: Graph, target: str, fastmath: bool = False,
                 name: str = "gradc_fn"):
        self.graph = graph
        self.target = target
        self.fastmath = fastmath
        self.name = name
        self._compiled = None
        self._scalar = [v.ndim == 0 for v in graph.inputs]
        # Numba returns rank-0 results as Python scalars: they get their dtype back
        self._scalar_out = [(i, np.dtype(v.dtype).type) for i, v in enumerate(graph.outputs)
                            if v.ndim == 0]
        self._fallback = target == "numpy"

    @property
    def compiled(self):
        """The ``gradc.codegen.Compiled`` (None for the numpy target)."""
        if self._compiled is None and not self._fallback and self.target == "cuda":
            from .cuda import Compiled as CudaCompiled
            self._compiled = CudaCompiled(self.graph, self.name, self.fastmath)
        if self._compiled is None and not self._fallback:
            half = _half_precision(self.graph)
            if half is not None:
                raise UnsupportedError(f"float16 values ({half}): Numba has no half "
                                       "precision on the CPU")
            from .numba_cpu import Compiled
            self._compiled = Compiled(self.graph, self.name,
                                      parallel=self.target == "parallel",
                                      fastmath=self.fastmath)
        return self._compiled

    def __call__(self, values) -> list:
        if self._fallback:
            return _interpreted(self.graph, values)
        if self.target == "cuda":          # (device arrays pass as they are)
            return self.compiled(*values)
        from .cuda import is_device_array
        if any(is_device_array(v) for v in values):     # a CPU target: copied in
            from ..api import _host_copy
            values = [_host_copy(v) if is_device_array(v) else v for v in values]
        args = [np.asarray(v)[()] if s else v for v, s in zip(values, self._scalar)]
        try:
            compiled = self.compiled
        except UnsupportedError as e:   # a primitive without a lowering (a loop: scan)
            return self._interpret(values, f"cannot compile {self.name} yet "
                                           f"({str(e).splitlines()[0]})")
        try:
            results = list(compiled.call_raw(*args))
            for i, scalar in self._scalar_out:
                results[i] = scalar(results[i])
            return results
        except (GuardFailure, GradcError, ArithmeticError, ValueError,
                np.linalg.LinAlgError):
            raise
        except Exception as e:          # Numba could not compile this graph
            from numba.core.errors import NumbaError
            if not isinstance(e, NumbaError):
                raise
            return self._interpret(values, f"could not compile {self.name} "
                                           f"({type(e).__name__}: {str(e).splitlines()[0]})")

    def _interpret(self, values, why: str) -> list:
        """Fall back to the interpreter for good, saying why (a ``GradcWarning``)."""
        warnings.warn(GradcWarning(
            f"gradc: the {self.target!r} target {why}; running it with the interpreter "
            "(target='numpy') instead"), stacklevel=4)
        self._fallback = True
        return _interpreted(self.graph, values)


def _interpreted(graph, values) -> list:
    """The interpreter's results, none sharing memory with an argument or with another
    result (NumPy's own results are often views: ``x.T``, ``x[1:]``, ``x`` itself; the
    compiled targets copy such outputs, and so does this: a caller writing into a
    result, or into an argument after a ``vjp``, must not change the other)."""
    out = eval_graph(graph, values)
    args = [v for v in values if isinstance(v, np.ndarray)]
    seen = {id(v) for v in args}
    for i, o in enumerate(out):
        if not isinstance(o, np.ndarray):
            continue
        # (an argument itself or another result, by identity; a view (a base) compared
        # by memory: fresh arrays, most results, cost nothing)
        if id(o) in seen or o.base is not None and any(np.may_share_memory(o, a)
                                                       for a in args + out[:i]):
            out[i] = o = np.array(o)
        seen.add(id(o))
    return out
