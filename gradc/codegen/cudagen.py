"""Lowering of an optimised Graph to a CUDA program: numba.cuda kernels and the host
function that launches them (``gradc.codegen.cuda`` runs it).

Every value of the Graph lives in one place, known when the source is generated:

* arrays (rank >= 1) computed by kernels, and every array input, on the **device**;
* rank-0 results of reductions on the device too, as one-element arrays ("cells"):
  kernels read them as ``x[0]``, so a sum feeding the next kernel never visits the host;
* rank-0 inputs and the results of equations without a CUDA lowering on the **host**
  (NumPy scalars and arrays); a host value a kernel reads is copied to the device once
  (``_d.dev``), a device value a host equation reads is copied back once (``_d.host``).

What becomes a kernel:

* a ``fused`` equation (``passes.fuse`` with ``vector_ufuncs=False``: transcendental
  functions fuse too) without reductions: one kernel in gather form, a grid-stride loop
  over its domain, each thread computing its elements of every root from the operands
  (the same per-element code as the CPU loop nests, ``loops._Emitter``, with CUDA's
  spellings of the functions: ``TEMPLATES``), a 16-byte vector of elements per thread
  where the arrays are aligned for it (``_vector_at``);
* a fused equation with reductions: per set of reduced axes, a *segmented* reduction:
  K kept elements × P blocks per kept element; each block's threads stride over the
  reduced elements, accumulate in registers, combine by warp shuffles (then warp 0 over
  the warps' totals: ``_block_combine``), and thread 0 writes the block's partial; a
  second kernel combines the P partials of each kept element (no atomics: the result
  does not depend on the order blocks run in).  When the reduced extent is small
  (<= ``THREAD_REDUCE``) one thread reduces one element.  When the innermost axis is
  kept (a sum over a batch), a block's lanes take neighbouring kept elements and its
  warps every W-th reduced one, so that a warp reads whole sectors (*columns*);
* ``einsum``: CuPy's ``einsum`` (cuBLAS) when CuPy is installed and the operands are
  floats, else a tiled contraction kernel (``TILE`` x ``TILE`` threads, both operands'
  tiles staged in shared memory) that reads the operands where they are, through
  their index maps (no transposed copies); a contraction with a small result and a long
  sum runs as a segmented reduction instead;
* ``gather``, ``scatter_add`` (atomic adds), ``scatter_extremum`` (atomic max, min),
  ``index_set`` (through index arrays: the last write wins, found with an atomic max)
  and ``concatenate``: a grid-stride loop over the window or the result;
* ``argmax``, ``argmin``, ``cumsum``: a thread per line along the axis (a block per
  line for a few long lines);
* ``conv2d``, ``conv2d_over_batch``, ``conv2d_dilated_input``: a thread per output
  element, or a segmented reduction (few outputs, long sums);
* ``solve``: CuPy's ``linalg.solve`` when installed, else a block per system (Gaussian
  elimination with partial pivoting, back substitution);
* a batched ``scan`` (rows independent): one kernel for the whole loop
  (``cudarows``);
* ``reshape`` of a device value: a view;
* other ``scan``s, ``while_loop``, ``cond``, ``while_adjoint``: Python loops and
  branches in the host function, their bodies lowered as host functions of their own.

Every other equation (sorting, decompositions, ``while_tangent``, ...) runs on
the host through the interpreter (``gradc.interpret``), and the generated source says
so on its line: the program is always complete and correct; ``Lowered.on_host`` lists
them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph, Lit, Var, make_eqn
from ..passes.fuse import REDUCTIONS
from ..passes.indexmap import Affine, operand_indices
from ..prims.conv import is_plain
from ..prims.conv import options as conv_options
from ..prims.linalg import parse_spec
from ..trace import c_strides
from . import loops, special
from .pysource import FLOAT_REM, INT_FMOD, Symbols, dtype_expr, scalar_literal

THREADS = 256          # threads per block (one dimension)
THREADS_SIM = 16       # ... under the simulator (each thread a Python thread: a barrier costs ms)
TILE = 16              # contraction tiles (TILE x TILE threads)
TILE_SIM = 4
MAX_BLOCKS = 8192      # grid-stride loops: at most this many blocks per launch
UNROLL = 4             # map kernels: loads in flight per thread (one 4-byte load per thread
#                        leaves HBM idle; see _map_kernel); GRADC_CUDA_UNROLL=n sets the
#                        elements per thread per trip instead, for measuring
WARP = 32              # threads of a warp (the lanes a shuffle reaches)
TARGET_BLOCKS = 1024   # blocks a segmented reduction aims for (K x P)
PER_THREAD = 8         # reduced elements per thread before another block helps
THREAD_REDUCE = 32     # reduced extents up to this: one thread per kept element
COLUMN_ROWS = 64       # a reduction over outer axes: reduced elements per thread before
#                        another block (and a second pass) helps
SMALL_OUTPUT = 1024    # contractions with at most this many results and ...
LONG_SUM = 512         # ... at least this long a sum: a segmented reduction
DIRECT_SUM = 8         # sums this short: one thread per result, no tiles

# elementwise primitives in numba.cuda's spelling; ``_d`` is the module of device
# functions (``gradc.codegen.cuda.device_functions``): libdevice's under CUDA, NumPy's
# under the simulator (where ``math.sqrt(-1.0)`` would raise instead of giving NaN)
TEMPLATES = {
    "neg": "(-{0})", "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
    "div": "({0} / {1})", "pow": "({0} ** {1})",
    # (NumPy's semantics inline: a NaN operand wins, the remainder takes the divisor's
    # sign as pysource.FLOAT_REM says; no device functions, whose compilation would need
    # a GPU for ``.ptx()``)
    "max": "({0} if ({0} > {1} or {0} != {0}) else {1})",
    "min": "({0} if ({0} < {1} or {0} != {0}) else {1})",
    "atan2": "_d.atan2({0}, {1})", "fmod": "_d.fmod({0}, {1})",
    "rem": FLOAT_REM.format(fmod="_d.fmod", copysign="_d.copysign"),
    "exp": "_d.exp({0})", "expm1": "_d.expm1({0})", "log": "_d.log({0})",
    "log1p": "_d.log1p({0})", "log2": "_d.log2({0})", "log10": "_d.log10({0})",
    "exp2": "_d.exp2({0})", "sqrt": "_d.sqrt({0})", "cbrt": "_d.cbrt({0})",
    "sin": "_d.sin({0})", "cos": "_d.cos({0})", "tan": "_d.tan({0})",
    "asin": "_d.asin({0})", "acos": "_d.acos({0})", "atan": "_d.atan({0})",
    "sinh": "_d.sinh({0})", "cosh": "_d.cosh({0})", "tanh": "_d.tanh({0})",
    "asinh": "_d.asinh({0})", "acosh": "_d.acosh({0})", "atanh": "_d.atanh({0})",
    "abs": "abs({0})",        # (sign: complex's; real dtypes' in _Emitter.compute)
    "sign": "({0} if ({0} == 0 or {0} != {0}) else {0} / abs({0}))",
    "floor": "_d.floor({0})", "ceil": "_d.ceil({0})", "round": "_d.rint({0})",
    "trunc": "_d.trunc({0})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})",
    "and": "({0} and {1})", "or": "({0} or {1})", "xor": "({0} != {1})",
    "not": "(not {0})", "isnan": "({0} != {0})", "isfinite": "({0} - {0} == 0)",
    "stop_gradient": "{0}",
    # integers, with NumPy's edges written out (x // 0 is 0; see pysource.TEMPLATES)
    "floordiv": "(({0} // {1} if {1} != -1 else ({0} - {0} - {0})) if {1} != 0 else ({0} - {0}))",
    # special functions: libdevice's erf/erfc/lgamma; digamma and polygamma as inner
    # functions of the kernel (``codegen.special.DEVICE_SOURCE``, see ``_finish_kernel``)
    "erf": "_d.erf({0})", "erfc": "_d.erfc({0})", "lgamma": "_d.lgamma({0})",
    "gamma": "_d.gamma({0})",
    "digamma": "_sp_digamma({0})", "polygamma": "_sp_polygamma({0}, {1})",
    "ndtri": "_d.ndtri({0})", "erfinv": "_d.erfinv({0})",
    "bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})",
    "bitnot": "(~{0})",
    "shl": "(({0} << {1}) if 0 <= {1} < 64 else ({0} - {0}))",
    "shr": "(({0} >> {1}) if 0 <= {1} < 64 else (({0} >> 63) >> 1))",
    # (no primitive: a product never contracted into an FMA, see exact_values)
    "mul_rn": "_d.mul_rn({0}, {1})",
}
# libdevice functions whose float32 form has its own name (``_d.floor_f32`` ...)
_PER_DTYPE = {"floor", "ceil", "rint", "trunc", "cbrt", "exp2", "ndtri", "erfinv", "mul_rn"}


# complex functions: cmath's on the GPU (libdevice's ``math`` functions take real
# numbers only: a complex ``np.exp`` ran in the simulator, whose ``_d.exp`` is NumPy's,
# and failed numba's typing on the GPU), NumPy's under the simulator; log2, log10 and
# exp2 from log and exp as NumPy computes them, expm1 and log1p from the real and
# imaginary parts as NumPy does (to the last bit or so)
_COMPLEX = {"exp", "log", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "sinh",
            "cosh", "tanh", "asinh", "acosh", "atanh"}
_COMPLEX_TEMPLATES = {
    "log2": "(_d.clog({0}) * 1.4426950408889634)",
    "log10": "(_d.clog({0}) * 0.4342944819032518)",
    "exp2": "_d.cexp({0} * 0.6931471805599453)",
    "expm1": "(_d.expm1({0}.real) * _d.cos({0}.imag) - 2.0 * _d.sin({0}.imag * 0.5) ** 2"
             " + 1j * (_d.exp({0}.real) * _d.sin({0}.imag)))",
    "log1p": "(_d.log(math.hypot({0}.real + 1.0, {0}.imag))"
             " + 1j * _d.atan2({0}.imag, {0}.real + 1.0))",
    # (NumPy's order of complex numbers, as numba implements it: the GPU has no `>`
    # between complex numbers, which the simulator's NumPy scalars have)
    "max": "np.maximum({0}, {1})", "min": "np.minimum({0}, {1})"}


def template(name: str, dtype) -> str:
    text = TEMPLATES[name]
    if np.dtype(dtype).kind == "c":
        if name in _COMPLEX_TEMPLATES:
            return _COMPLEX_TEMPLATES[name]
        for f in _COMPLEX:
            text = text.replace(f"_d.{f}(", f"_d.c{f}(")
    if np.dtype(dtype) == np.float32:
        for f in _PER_DTYPE:
            text = text.replace(f"_d.{f}(", f"_d.{f}_f32(")
    return text


@dataclass
class Kernel:
    name: str
    params: list           # (name, dtype, ndim): ndim 0 = a scalar argument
    source: str
    max_registers: int | None = None    # (per thread; numba hands it to the linker)
    strided: frozenset = frozenset()    # parameters passed strided views (layout 'A')
    fastmath: bool = False              # (numba.cuda's: see lower)


@dataclass
class Lowered:
    source: str
    name: str
    inputs: list
    kernels: list = field(default_factory=list)      # Kernel
    consts: dict = field(default_factory=dict)       # name -> ndarray (uploaded once)
    host_globals: dict = field(default_factory=dict)  # name -> one-equation Graph or array
    on_host: list = field(default_factory=list)      # primitive names run on the host
    outputs: list = field(default_factory=list)      # (name, place) per graph output


def _numba_type(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.float16:              # (not an attribute of numba itself)
        return "numba.types.float16"
    return "numba.boolean" if dtype == np.bool_ else f"numba.{dtype.name}"


class _Emitter(loops._Emitter):
    """The CPU loop nests' per-element code generator, with CUDA's function names.

    With ``hoist`` (loop variable -> its range; map kernels set it), every read of an
    array at affine indices in those variables is one load at the top of the
    per-element code, shared by every use: inside a pad's window too, at indices
    clamped into the array (the window's test then only selects the value).  A load in
    a window waits for the test and holds up what follows it, and the same element read
    in two windows was loaded twice: G1's gradient loaded x[i] three times, one load
    after another."""

    hoist = None
    reads = None          # (a list: every array read, as (array, idx), appended to it)

    def read(self, array, idx) -> str:
        if self.reads is not None:
            self.reads.append((array, idx))
        return super().read(array, idx)

    def value(self, atom, idx, depth) -> str:
        if self.hoist is not None and atom.ndim > 0 and (
                isinstance(atom, Lit) and loops.const_element(atom.value, idx) is None or
                not isinstance(atom, Lit) and atom not in self.producer):
            got = self._hoisted(atom, idx)
            if got is not None:
                return got
        return super().value(atom, idx, depth)

    def window(self, x, sub, cond, zero, depth, affine) -> str:
        """With ``hoist``: a window whose code reads nothing but hoisted loads and
        branches nowhere is computed unconditionally and then selected, so that LLVM
        cannot sink the loads back into a branch (a load used in one branch only goes
        there)."""
        if self.hoist is None or not affine:
            return super().window(x, sub, cond, zero, depth, affine)
        start = len(self.lines)
        inner = self.window_body(x, sub, depth)
        body = self.lines[start:]
        code = [line.strip() for line in body if not line.strip().startswith("#")]
        # (and only a short one of floating-point arithmetic: every element computes it
        # now, and an integer division at an index outside the window is none of its
        # business; inner functions of loops, like digamma's, stay behind the test)
        if len(code) > WINDOW_SELECT or any(
                "[" in line or line.endswith(":") or "//" in line or "%" in line or
                "np.int" in line or "np.uint" in line or
                any(f + "(" in line for f in special.DEVICE_FUNCTIONS) for line in code):
            return self.guarded(start, self.ctx.temp(), cond, inner, zero, depth)
        self.lines[start:] = [line[4:] for line in body]       # (one level out)
        return f"({inner} if {cond} else {zero})"

    def _hoisted(self, atom, idx):
        """The local holding ``atom`` (an operand or constant array) at ``idx``, loaded
        before any other line; None when an index is not affine in a loop variable."""
        shape = tuple(int(n) for n in atom.shape)
        if 0 in shape or len(idx) != len(shape) or not all(
                isinstance(c, Affine) and (c.sym is None or c.mult == 0 or
                                           c.sym in self.hoist) for c in idx):
            return None
        if isinstance(atom, Lit):
            name = self.ctx.const(atom.value)
            self.used_consts.append(name)
        else:
            name = self.names[atom]
        key = (name, tuple(c.key() for c in idx))
        found = self.hoisted.get(key)
        if found is not None:
            return found
        sub = []
        for c, n in zip(idx, shape):
            if c.sym is None or c.mult == 0:
                sub.append(str(min(max(c.offset, 0), n - 1)))
                continue
            lo, hi = self.hoist[c.sym]
            ends = (c.mult * lo + c.offset, c.mult * hi + c.offset)
            text = str(c)
            # (conditional expressions, which LLVM makes selects: numba.cuda's typing of
            # the min and max builtins asks the GPU about half precision)
            if min(ends) < 0:
                text = f"({text} if {text} > 0 else 0)"
            if max(ends) > n - 1:
                text = f"({text} if {text} < {n - 1} else {n - 1})"
            sub.append(f"np.uint64({text})")
        local = f"_h{len(self.hoisted)}"
        self.hoisted[key] = local
        self.hoisted_lines.append(f"{local} = {name}[{', '.join(sub)}]")
        self.hoisted_reads.append((local, atom, name, idx, sub))   # (for _vector_at)
        return local

    def compute(self, eqn, idx, depth):
        name = eqn.prim.name
        if name not in TEMPLATES:
            return super().compute(eqn, idx, depth)
        subs = operand_indices(eqn, idx)
        args = [self.value(a, sub, depth) for a, sub in zip(eqn.inputs, subs)]
        dtype = eqn.outputs[0].dtype
        if name == "mul" and eqn.outputs[0] in self.ctx.exact:    # (see exact_values)
            return template("mul_rn", dtype).format(*args)
        if name == "pow" and isinstance(eqn.inputs[1], Lit) and eqn.inputs[1].ndim == 0 \
                and np.isreal(eqn.inputs[1].value):   # (a complex power's is complex)
            power = float(np.real(eqn.inputs[1].value))   # small whole powers as products
            if power in (1.0, 2.0, 3.0, 4.0):
                if eqn.outputs[0] in self.ctx.exact and power > 1:   # (see exact_values)
                    text = args[0]
                    for _ in range(int(power) - 1):
                        text = template("mul_rn", dtype).format(text, args[0])
                    return text
                return "(" + " * ".join([args[0]] * int(power)) + ")"
            if power == 0.5:
                return template("sqrt", dtype).format(args[0])
        if np.dtype(dtype).kind in "iub" and name in ("floor", "ceil", "round", "trunc"):
            return args[0]
        if np.dtype(dtype).kind in "iu" and name == "rem":   # (NumPy's x % 0, INT_MIN % -1)
            return (f"({args[0]} % {args[1]} if {args[1]} != 0 and {args[1]} != -1 "
                    f"else ({args[0]} - {args[0]}))")
        if np.dtype(dtype).kind in "iu" and name == "fmod":   # (truncated; x % 0 is 0)
            return INT_FMOD.format(*args)
        if np.dtype(dtype).kind in "iu" and name == "sign":    # (the simulator's NumPy
            return f"(({args[0]} > 0) * 1 - ({args[0]} < 0) * 1)"    # bools don't subtract)
        if np.dtype(dtype).kind == "f" and name == "sign":    # (±1 at ±inf, +0 at ±0, NaN)
            x, one = args[0], scalar_literal(1, dtype)
            return (f"({one} if {x} > 0 else (-{one} if {x} < 0 else "
                    f"({x} if {x} != {x} else {scalar_literal(0, dtype)})))")
        return template(name, dtype).format(*args)


class _Context(Symbols):
    """What the lowering accumulates: kernels, constants, host globals, names, places."""

    def __init__(self, simulator: bool, fastmath: bool = False):
        super().__init__()
        self.simulator = simulator
        self.fastmath = fastmath
        self.threads = THREADS_SIM if simulator else THREADS
        self.tile = TILE_SIM if simulator else TILE
        self.kernels: list = []
        self.host_globals: dict = {}
        self.names: dict = {}
        self.place: dict = {}          # Var -> "dev" | "host"
        self.copies: dict = {}         # (Var, place) -> name of the copy there
        self.lines: list = []
        self.on_host: list = []
        self.functions: list = []      # host functions of loop bodies and branches
        self.fresh: set = set()        # arrays written by a kernel into a new allocation
        self.dying: set = set()        # the equation being lowered's operands it may
        #                                overwrite (``_function``)
        self.exact: set = set()        # float values rounded as NumPy does (exact_values)
        self.deferred: dict = {}       # equations lowered where a scan reads their value
        #                                (``_deferrable``): Var -> (equation, printed text)
        self.views: dict = {}          # deferred views named so far (``view``): Var ->
        #                                the host name, until ``materialize`` copies them
        self.destinations: dict = {}   # a scan's result that an equation only places
        #                                into its own (``_destinations``): Var -> (that
        #                                result, offset, shape, strides)
        self.checks: list = []         # the errors kernels may flag (``Checks``)
        self.placed: dict = {}         # results whose array a one-kernel scan has
        #                                filled through views: Var -> True (False: a
        #                                reshape only the placing reads); no kernel

    def kernel_name(self) -> str:
        return f"_k{len(self.kernels)}"

    def materialize(self, v) -> None:
        """Lower ``v``'s deferred equation (see ``_deferrable``, ``_deferrable_view``)
        here, if it was deferred and is not lowered yet: from here on ``v``'s name is
        the kernel's new array, also where a one-kernel scan read a view of it before."""
        found = self.deferred.pop(v, None) if isinstance(v, Var) else None
        if found is not None:
            eqn, text = found
            self.views.pop(v, None)
            self.lines.append("# " + text[0].strip().removeprefix("let "))
            _lower_eqn(self, eqn, text)

    def view(self, v) -> bool:
        """Name ``v``, if it is a deferred view (``_view_layout``) not yet lowered, as a
        strided view of its operand's array (once) instead of a kernel's copy; whether
        it is one.  (Only a one-kernel scan that does not hand it back may read it so:
        any other reader materializes it.)"""
        if v in self.views:
            return True
        found = self.deferred.get(v) if isinstance(v, Var) else None
        layout = found and _view_layout(found[0])
        if not layout:
            return False
        eqn, text = found
        offset, shape, strides = layout
        self.lines.append("# " + text[0].strip().removeprefix("let ") +
                          "   (a view: the kernel reads the operand through strides)")
        self.lines.append(f"{self.names[v]} = _d.view({self.names[eqn.inputs[0]]}, "
                          f"{offset}, {shape!r}, {strides!r})")
        self.place[v] = "dev"
        self.views[v] = self.names[v]
        return True

    def fill_literal(self, v):
        """``v`` as a literal array, if it is a deferred fill not lowered yet of at most
        ``FILL_LITERAL`` elements (a loop's initial carry, a per-step operand of ones):
        a one-block loop reads it as a constant, without a fill kernel; else None."""
        found = self.deferred.get(v) if isinstance(v, Var) else None
        if found is None or found[0].prim.name != "broadcast_in_dim" or \
                int(np.prod(v.shape)) > FILL_LITERAL:
            return None
        return Lit(np.full(tuple(v.shape), found[0].inputs[0].value, np.dtype(v.dtype)))

    def zero_fill(self, v) -> bool:
        """Whether ``v`` is zeros that no kernel has written: a literal, or a deferred
        fill not lowered yet (whose reader may then go without it)."""
        if isinstance(v, Lit):
            return not np.any(v.value)
        found = self.deferred.get(v)
        return found is not None and found[0].prim.name == "broadcast_in_dim" and \
            not np.any(found[0].inputs[0].value)

    # values where a consumer needs them
    def on_device(self, v) -> str:
        """The name of ``v``'s device copy (arrays) or of ``v`` itself (host scalars and
        device cells, which kernels take as they are)."""
        if isinstance(v, Lit):
            return scalar_literal(v.value, v.dtype) if v.ndim == 0 else self.const(v.value)
        if self.place[v] == "dev" or v.ndim == 0:
            return self.names[v]
        key = (v, "dev")
        if key not in self.copies:
            self.copies[key] = f"{self.names[v]}_dev"
            self.lines.append(f"{self.copies[key]} = _d.dev({self.names[v]})")
        return self.copies[key]

    def on_host_value(self, v) -> str:
        if isinstance(v, Lit):
            if v.ndim == 0:
                return scalar_literal(v.value, v.dtype)
            name = f"_lit{self.temp()}"
            self.host_globals[name] = np.asarray(v.value, v.dtype)
            return name
        if self.place[v] == "host":
            return self.names[v]
        key = (v, "host")
        if key not in self.copies:
            self.copies[key] = f"{self.names[v]}_host"
            scalar = ", scalar=True" if v.ndim == 0 else ""
            self.lines.append(f"{self.copies[key]} = _d.host({self.names[v]}{scalar})")
        return self.copies[key]

    def element(self, v, sub: str) -> str:
        """How a kernel reads ``v`` at subscript ``sub``: an array parameter or constant
        indexed, a rank-0 value as ``scalar_read`` gives it."""
        if v.ndim == 0:
            return self.scalar_read(v)
        array = self.const(v.value) if isinstance(v, Lit) else self.names[v]
        return f"{array}[{sub}]"

    def scalar_read(self, v) -> str:
        """How a kernel reads rank-0 ``v``: a host scalar as it is, a cell as ``[0]``."""
        if isinstance(v, Lit):
            return scalar_literal(v.value, v.dtype)
        return self.names[v] + ("[0]" if self.place[v] == "dev" else "")


def lower(graph: Graph, name: str, simulator: bool, fastmath: bool = False) -> Lowered:
    """The module for ``graph``: its kernels and the host function launching them.
    ``fastmath``: every kernel compiled with numba.cuda's ``fastmath`` (float32
    division, square roots and ``exp``, ``log``, ``sin``, ``cos`` by the GPU's
    approximate instructions, denormals flushed to zero, and LLVM free to assume no
    NaNs or infinities), as ``jit(fastmath=True)`` asks of Numba on the CPU."""
    from ..ir import pretty
    ctx = _Context(simulator, bool(fastmath))
    main, outputs = _function(ctx, graph, name, canonical=False)
    head = [
        '"""Generated by gradc from a Graph for target="cuda": '
        f'{len(ctx.kernels)} kernels, {len(ctx.on_host)} equations on the host.',
        "", pretty(graph, indent=4), '"""',
        "import math", "", "import numba", "import numpy as np", "from numba import cuda",
        "", "from gradc.codegen import cuda as _d", "", ""]
    if ctx.consts:
        head.insert(-2, "# array constants (uploaded once): " + ", ".join(
            f"{k}: {v.dtype}{list(v.shape)}" for k, v in ctx.consts.items()))
    if ctx.checks:      # (the errors kernels flag in one device cell, by number)
        head[-2:-2] = ["_checks = _d.Checks(["] + [
            f"    {m!r}," for m in ctx.checks] + ["])", ""]
    parts = [k.source for k in ctx.kernels] + ctx.functions + [main]
    source = "\n".join(head) + "\n\n\n".join(parts) + "\n"
    return Lowered(source, name, [ctx.names[v] for v in graph.inputs], ctx.kernels,
                   ctx.consts, ctx.host_globals, ctx.on_host, outputs)


# Where a float's last bit can change a result: rounding to an integer, comparisons,
# remainders, searches, sorts.  Values that reach such an operation through these
# (whose result moves with each operand's rounding) are computed as NumPy does.
_DISCONTINUOUS = {"floor", "ceil", "round", "trunc", "rem", "fmod", "floordiv", "sign",
                  "lt", "le", "gt", "ge", "eq", "ne", "searchsorted", "argsort", "argmax",
                  "argmin"}
_CARRIES_ROUNDING = {"add", "sub", "neg", "mul", "div", "pow", "select", "max", "min",
                     "abs", "stop_gradient", "broadcast_in_dim", "reshape", "slice", "pad",
                     "transpose", "concatenate", "convert_element_type", "reduce_sum",
                     "reduce_max", "reduce_min", "reduce_prod", "cumsum"}


def exact_values(graph: Graph) -> set:
    """The float values of ``graph`` (and of its fused equations' bodies) whose rounding
    reaches a discontinuous operation: there, a product must not be contracted into a
    fused multiply-add with the sum it feeds (one rounding where NumPy makes two),
    which NVVM does by default.  ``np.linspace(a, b, n, dtype=int)`` flooring
    ``a + i * step`` computed with an FMA gave other integers than NumPy; so would a
    histogram's bin edges.  The emitter writes those products as ``_d.mul_rn``."""
    feeds: dict = {}                        # value -> values its rounding comes from
    seeds = []

    def walk(g):
        for e in g.eqns:
            name = e.prim.name
            ins = [a for a in e.inputs if isinstance(a, Var)]
            if name == "fused":
                body = e.params["body"]
                walk(body)
                for o, r in zip(e.outputs, body.outputs):
                    feeds.setdefault(o, []).append(r)
                for a, b in zip(e.inputs, body.inputs):
                    if isinstance(a, Var):
                        feeds.setdefault(b, []).append(a)
            elif name in _DISCONTINUOUS or name == "convert_element_type" and \
                    np.dtype(e.params["dtype"]).kind != "f":
                seeds.extend(ins)
            elif name in _CARRIES_ROUNDING:
                for o in e.outputs:
                    feeds.setdefault(o, []).extend(ins)

    walk(graph)
    exact, todo = set(), [v for v in seeds if np.dtype(v.dtype).kind == "f"]
    while todo:
        v = todo.pop()
        if v in exact:
            continue
        exact.add(v)
        todo += [a for a in feeds.get(v, []) if np.dtype(a.dtype).kind == "f"]
    return exact


class _Storages:
    """Which values of a function may share a device array, as far as the equations
    lowered so far go: a reshape, a barrier's value and anything a loop or branch
    returns (an unchanged carry, a branch handing its operand back) may be any of their
    operands' arrays, so each such equation joins its operands and results into one
    storage (a union-find, conservative).  A fused equation's results are new arrays.
    A storage dies with the last use of any of its values."""

    def __init__(self, graph: Graph, last_use: dict):
        self.parent: dict = {}
        self.derived: set = set()         # results of the equations that join storages
        self.inputs = set(graph.inputs)
        self.last_use = last_use

    def find(self, v):
        while self.parent.get(v, v) is not v:
            v = self.parent[v]
        return v

    def lowered(self, eqn):
        if eqn.prim.name in ("reshape", "barrier") or eqn.prim.name != "fused" and any(
                isinstance(p, Graph) or isinstance(p, (tuple, list)) and
                any(isinstance(q, Graph) for q in p) for p in eqn.params.values()):
            vs = [a for a in eqn.inputs if isinstance(a, Var)] + list(eqn.outputs)
            self.derived.update(eqn.outputs)
            for v in vs[1:]:
                a, b = self.find(vs[0]), self.find(v)
                if a is not b:
                    self.parent[b] = a

    def join(self, a, b) -> None:
        """``b`` is a view of ``a``'s array."""
        self.derived.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra

    def dying(self, eqn, k, fresh) -> set:
        """The operands of equation ``k`` that it may overwrite: each the one value of its
        storage among the operands, the storage made by this function's kernels (no
        input of the function in it; every value in it a kernel's new array or a view
        or result made from one) and read by nothing after equation ``k``."""
        reads = [a for a in eqn.inputs if isinstance(a, Var)]
        out = set()
        for a in reads:
            r = self.find(a)
            if sum(self.find(b) is r for b in reads) != 1:
                continue
            group = [v for v in self.last_use if self.find(v) is r]
            if all(v not in self.inputs and self.last_use[v] <= k and
                   (v in fresh or v in self.derived) for v in group) and \
                    any(v in fresh for v in group):
                out.add(a)
        return out


def _function(ctx, graph: Graph, fname: str, canonical: bool, what: str = ""):
    """The host function computing ``graph``: its source and the place of each result.
    Inputs arrive in the canonical places (arrays on the device, rank-0 values on the
    host); with ``canonical``, results leave in them too (loop bodies and branches:
    each iteration hands its results to the next as its inputs)."""
    saved = ctx.lines, ctx.copies
    ctx.lines, ctx.copies = [], {}
    ctx.exact |= exact_values(graph)
    printed = _register_names(ctx, graph)
    for v in graph.inputs:
        ctx.place[v] = "dev" if v.ndim else "host"
    last_source = None
    eqns = list(graph.eqns)
    last_use = {}                   # value -> the last equation reading it (outputs: all)
    for k, eqn in enumerate(eqns):
        for v in eqn.inputs:
            last_use[v] = k
    for v in graph.outputs:
        last_use[v] = len(eqns)
    storages = _Storages(graph, last_use)
    users: dict = {}
    for e in eqns:
        for v in set(e.inputs):
            users.setdefault(v, []).append(e)
    ctx.destinations.update(_destinations(graph, users))
    k, tried, tried_one = 0, 0, 0
    while k < len(eqns):
        v = eqns[k].outputs[0] if eqns[k].outputs else None
        if v in ctx.placed:
            # (a scan's kernel wrote its operands into views of its result, or of a
            # reshape that only that placing reads)
            ctx.lines.append("# " + printed[k][0].strip().removeprefix("let ") +
                             "   (no kernel: the scan's kernel wrote it in place)")
            if ctx.placed[v]:
                ctx.place[v] = "dev"
                ctx.fresh.add(v)
            k += 1
            continue
        end = _row_run(eqns, k, ctx.placed) if k >= tried else k
        if end - k >= 2:            # (a run of row-wise equations: try one kernel; if it
            # fails, its tails too, unless it is long: each try lowers the whole run)
            tried = end if end - k > ROW_RUN_RETRIES else k + 1
            from .cudarows import row_run
            for eqn, text in zip(eqns[k:end], printed[k:end]):
                ctx.lines.append("# " + text[0].strip().removeprefix("let "))
            if row_run(ctx, eqns[k:end], printed[k:end],
                       [v for e in eqns[k:end] for v in e.outputs
                        if last_use.get(v, -1) >= end]):
                k = end
                continue
            del ctx.lines[len(ctx.lines) - (end - k):]

        def deferrable(eqn):
            return _deferrable(eqn, users, graph.outputs) or not canonical and \
                _deferrable_view(eqn, users, graph, ctx.fresh)
        end = _one_run(eqns, k, ctx.placed, deferrable, last_use) if k >= tried_one else k
        if end > k:                 # (a run of small equations: try one block)
            tried_one = end if end - k > ROW_RUN_RETRIES else k + 1
            from .cudarows import one_run
            for eqn, text in zip(eqns[k:end], printed[k:end]):
                ctx.lines.append("# " + text[0].strip().removeprefix("let "))
            if one_run(ctx, eqns[k:end], [v for e in eqns[k:end] for v in e.outputs
                                          if last_use.get(v, -1) >= end]):
                k = end
                continue
            del ctx.lines[len(ctx.lines) - (end - k):]
        eqn, text = eqns[k], printed[k]
        if deferrable(eqn):
            ctx.deferred[eqn.outputs[0]] = (eqn, text)
            if eqn.prim.name in ("fused", "slice", "transpose"):   # (a view: of its
                storages.join(eqn.inputs[0], eqn.outputs[0])        # operand's storage)
            k += 1
            continue
        ctx.lines.append("# " + text[0].strip().removeprefix("let "))
        if eqn.source and eqn.source != last_source:
            ctx.lines.append(f"#   from {eqn.source}")
        last_source = eqn.source
        # (operands whose storage a kernel made for this function and nothing reads
        # after this equation: a loop may update them in place instead of a copy)
        # (a deferred fill becomes a new array where it is lowered)
        ctx.dying = storages.dying(eqn, k, ctx.fresh | set(ctx.deferred)) \
            if eqn.prim.name == "scan" else set()
        _lower_eqn(ctx, eqn, text)
        ctx.dying = set()
        storages.lowered(eqn)
        k += 1
    places, results, seen = [], [], set()
    for v in graph.outputs:
        if not canonical and v.ndim and (v not in ctx.fresh or v in seen):
            # a constant, an argument or a view of one, a loop's or branch's result that
            # may be either, or a result returned twice: a copy of its own, so that
            # the caller can write into what it gets back
            value = ctx.on_host_value(v) if isinstance(v, Lit) else ctx.names[v]
            results.append(f"_d.copy({value})")
            places.append("host" if isinstance(v, Lit) else ctx.place[v])
            continue
        seen.add(v)
        if canonical:
            results.append(ctx.on_device(v) if v.ndim else ctx.on_host_value(v))
            places.append("dev" if v.ndim else "host")
        elif isinstance(v, Lit):
            results.append(ctx.on_host_value(v))
            places.append("host")
        else:
            results.append(ctx.names[v])
            places.append(ctx.place[v])
    body = ctx.lines + [f"return ({''.join(r + ', ' for r in results).rstrip()})"]
    if not canonical and ctx.checks:
        # (the kernels' flagged error, if any, before the function returns; and before
        # any other exception leaves it: the check failed first, and the cell is clear
        # for the next call)
        body = ["try:"] + ["    " + line for line in ctx.lines] + [
            "except BaseException:", "    _checks.check()", "    raise",
            "_checks.check()"] + body[len(ctx.lines):]
    ctx.lines, ctx.copies = saved
    head = [f"def {fname}({', '.join(ctx.names[v] for v in graph.inputs)}):"]
    if what:
        head.append(f"    # {what}")
    return "\n".join(head + ["    " + line for line in body]), places


WINDOW_SELECT = 24         # a pad's window of at most this many lines: a select

ROW_RUN_RETRIES = 16       # a run of at most this many equations that is not one
#                            kernel: its tails are tried
ROW_RUN_BATCH = 128        # row runs: at least this many rows (a block each) ...
ROW_RUN_ELEMENTS = 8192    # ... of at most this many elements each (fewer rows, or
#                            longer ones, leave an H200's 132 SMs underused: segmented
#                            reductions spread one row over several blocks)


FILL_LITERAL = 1 << 16     # a fill a loop reads, of at most this many elements, may be
#                            a literal of a one-block loop (``_Context.fill_literal``)


def _deferrable(eqn, users, outputs) -> bool:
    """Whether ``eqn`` fills an array with a constant that one loop alone reads:
    lowered when the loop reads it (``_Context.materialize``), and not at all when the
    scan is one kernel and the carry an accumulator of sums over the batch
    (``cudarows``), which then starts from zero without a fill kernel and an add
    (reverse mode's gradient of a scan's weights starts so), or when the loop is one
    block and the fill small (``_Context.fill_literal``: a constant of the kernel).
    A large fill a scan reads otherwise than as its initial carry is not deferred."""
    if eqn.prim.name != "broadcast_in_dim" or not isinstance(eqn.inputs[0], Lit) or \
            eqn.inputs[0].ndim or not eqn.outputs[0].ndim:
        return False
    v = eqn.outputs[0]
    readers = users.get(v, [])
    if len(readers) != 1 or v in outputs or readers[0].prim.name not in ("scan",
                                                                          "while_loop"):
        return False
    if readers[0].prim.name == "while_loop" or int(np.prod(v.shape)) <= FILL_LITERAL:
        return True             # (a one-block loop takes it as a literal: ``fill_literal``)
    scan = readers[0]
    n_consts, n_carry = scan.params["n_consts"], scan.params["n_carry"]
    places = [k for k, x in enumerate(scan.inputs) if x is v]
    return all(n_consts <= k < n_consts + n_carry for k in places)


def _deferrable_view(eqn, users, graph, fresh) -> bool:
    """Whether ``eqn`` is a fused equation that only rearranges one array (transposes,
    slices, reshapes: ``_view_layout``), read only by scans (a time-major
    ``np.transpose(U, (1, 0, 2))``, its first step as the initial carry): a one-kernel
    scan reads it through a strided view of the array (a constant, the stacked operand,
    a (B, K) carry's first value), and any other lowering has it lowered where it reads
    it.  The array must be C-contiguous: an argument of the
    compiled function (``Compiled`` makes them so) or a kernel's new array."""
    if eqn.prim.name not in ("fused", "slice", "transpose") or \
            os.environ.get("GRADC_CUDA_VIEWS") == "0" or \
            _view_layout(eqn) is None:        # (0: a kernel's copy, for A/B timings)
        return False
    x, v = eqn.inputs[0], eqn.outputs[0]
    if not (x in graph.inputs or x in fresh) or v in graph.outputs:
        return False
    readers = users.get(v, [])
    return bool(readers) and all(r.prim.name == "scan" for r in readers)


def _view_layout(eqn):
    """``(offset, shape, strides)``, in elements, of fused equation ``eqn``'s one result
    as a view of its one array operand laid out C-contiguously, if its body only
    transposes, slices (forward) and reshapes (where strides allow), or is a slice or
    transpose itself; else None."""
    if eqn.prim.name in ("slice", "transpose") and isinstance(eqn.inputs[0], Var) and \
            eqn.outputs[0].ndim:
        eqn = _fused_of_one(eqn)
    if eqn.prim.name != "fused" or len(eqn.outputs) != 1 or len(eqn.inputs) != 1 or \
            not isinstance(eqn.inputs[0], Var) or not eqn.inputs[0].ndim:
        return None
    body = eqn.params["body"]
    x = body.inputs[0]
    shape = tuple(int(d) for d in x.shape)
    layout = {x: (0, shape, c_strides(shape))}
    for q in body.eqns:
        if len(q.inputs) != 1 or q.inputs[0] not in layout or len(q.outputs) != 1:
            return None
        offset, shape, strides = layout[q.inputs[0]]
        new = tuple(int(d) for d in q.outputs[0].shape)
        if q.prim.name == "transpose":
            perm = tuple(q.params["perm"])
            shape, strides = tuple(shape[p] for p in perm), tuple(strides[p] for p in perm)
        elif q.prim.name == "slice":
            sizes, steps = [], []
            for (start, stop, step), n, st in zip(q.params["index"], shape, strides):
                if step < 1 or not 0 <= start <= n:
                    return None
                offset += start * st
                sizes.append(len(range(start, min(stop, n), step)))
                steps.append(st * step)
            shape, strides = tuple(sizes), tuple(steps)
        elif q.prim.name == "reshape":
            strides = _reshaped_strides(shape, strides, new)
            if strides is None:
                return None
            shape = new
        else:
            return None
        if shape != new:
            return None
        layout[q.outputs[0]] = (offset, shape, strides)
    found = layout.get(body.outputs[0])
    return found if found is not None and body.outputs[0] is not x else None


def _destinations(graph: Graph, users: dict) -> dict:
    """The results of scans that an equation only places into its own result
    (``_placements``: a concatenation, a transpose, pads added), each read by that
    equation alone (directly, or through a reshape read by it alone), all of one scan:
    result -> ``(the placing equation's result, offset, shape, strides, the reshape's
    result or None)``.  A one-kernel scan (``cudarows``) makes that array and writes
    them into views of it, and neither the placing equation nor the reshape is lowered:
    ``np.transpose(ys, (1, 0, 2))`` of a stacked result, ``np.concatenate([h[None],
    ys])``, and reverse mode's gradient of ``np.transpose(U, (1, 0, 2))`` (the
    backward scan's stacked cotangent and final carry, transposed back: G4's last
    kernel, 16.7 MB read and written)."""
    if os.environ.get("GRADC_CUDA_VIEWS") == "0":       # (0: kernels' copies, for timings)
        return {}
    producer = {v: e for e in graph.eqns for v in e.outputs}

    def only_for(v, e) -> bool:
        return isinstance(v, Var) and users.get(v) == [e] and v not in graph.outputs
    found = {}
    for e in graph.eqns:
        if not e.inputs or not all(only_for(v, e) for v in e.inputs):
            continue
        if e.prim.name == "transpose":
            places = _placements(_fused_of_one(e))
        elif e.prim.name in ("fused", "concatenate"):
            places = _placements(e)
        else:
            continue
        if places is None:
            continue
        mine, scans = {}, set()
        for v, (offset, shape, strides) in zip(e.inputs, places):
            via = producer.get(v)
            if via is not None and via.prim.name == "reshape" and only_for(via.inputs[0], via):
                x = via.inputs[0]
                strides = _reshaped_strides(shape, strides, tuple(int(d) for d in x.shape))
                if strides is None:
                    break
                mine[x] = (e.outputs[0], offset, tuple(int(d) for d in x.shape), strides, v)
                v = x
            else:
                mine[v] = (e.outputs[0], offset, shape, strides, None)
            scans.add(producer.get(v))
        else:
            scan = scans.pop() if len(scans) == 1 else None
            if scan is not None and scan.prim.name == "scan":
                found.update(mine)
    return found


def _placements(eqn):
    """Where each operand of ``eqn`` lands in its one result, if ``eqn`` only places its
    operands there, each element of the result one operand's element: a concatenation,
    or a fused equation whose body pads its operands into disjoint windows that cover
    the result and adds the pads (concatenation as reverse mode writes it), transposes
    and reshapes (the fusion pass fuses no concatenation).  For each operand,
    ``(offset, shape, strides)`` in elements: its elements as a view of the result laid
    out C-contiguously; else None."""
    out = eqn.outputs[0] if len(eqn.outputs) == 1 else None
    ins = eqn.inputs
    if out is None or not out.ndim or len(set(ins)) != len(ins) or \
            any(not isinstance(v, Var) or not v.ndim or v.dtype != out.dtype for v in ins):
        return None
    shape = tuple(int(d) for d in out.shape)
    top = (0, shape, c_strides(shape))
    if eqn.prim.name == "concatenate":
        return _concatenated(top, ins, eqn.params["axis"])
    if eqn.prim.name != "fused" or len(eqn.params["body"].outputs) != 1:
        return None
    body = eqn.params["body"]
    producer = {v: q for q in body.eqns for v in q.outputs}
    placed, todo, visits = {}, [(body.outputs[0], top)], 0
    while todo:
        v, (offset, shape, strides) = todo.pop()
        if v in body.inputs:
            if v in placed:
                return None
            placed[v] = (offset, shape, strides)
            continue
        q = producer.get(v) if isinstance(v, Var) else None
        if q is None or len(q.outputs) != 1:
            return None
        visits += 1
        name = q.prim.name
        x = q.inputs[0]
        if name == "transpose":
            new = [0] * len(strides)
            for k, p in enumerate(q.params["perm"]):
                new[p] = strides[k]
            todo.append((x, (offset, tuple(int(d) for d in x.shape), tuple(new))))
        elif name == "reshape":
            xshape = tuple(int(d) for d in x.shape)
            new = _reshaped_strides(shape, strides, xshape)
            if new is None:
                return None
            todo.append((x, (offset, xshape, new)))
        elif name == "add":             # (a sum of pads into disjoint windows)
            pads, adds = [], [q]
            while adds:
                a = adds.pop()
                for u in a.inputs:
                    pu = producer.get(u) if isinstance(u, Var) else None
                    if pu is None:
                        return None
                    if pu.prim.name == "add":
                        visits += 1
                        adds.append(pu)
                    elif pu.prim.name == "pad":
                        pads.append(pu)
                    else:
                        return None
            boxes = []
            for pu in pads:
                visits += 1
                begin, off = [], offset
                y = pu.inputs[0]
                for (a, b, c), n, st, m in zip(pu.params["index"], shape, strides, y.shape):
                    start, _, step = slice(a, b, c).indices(n)
                    if step != 1:
                        return None
                    begin.append(start)
                    off += start * st
                if tuple(int(d) for d in pu.outputs[0].shape) != shape:
                    return None
                boxes.append((begin, [int(d) for d in y.shape]))
                todo.append((y, (off, tuple(int(d) for d in y.shape), strides)))
            if sum(int(np.prod(m)) for _, m in boxes) != int(np.prod(shape)) or any(
                    all(b1 < b2 + m2 and b2 < b1 + m1
                        for b1, m1, b2, m2 in zip(p1, s1, p2, s2))
                    for i, (p1, s1) in enumerate(boxes) for p2, s2 in boxes[:i]):
                return None
        else:
            return None
    if visits != len(body.eqns) or len(placed) != len(body.inputs):
        return None
    return [placed[v] for v in body.inputs]


def _concatenated(layout, parts, axis):
    """The layouts of ``parts`` concatenated along ``axis`` into an array of ``layout``."""
    offset, shape, strides = layout
    axis = int(axis) % len(shape)
    out, at = [], 0
    for x in parts:
        if not isinstance(x, Var) or x.ndim != len(shape):
            return None
        xshape = tuple(int(d) for d in x.shape)
        out.append((offset + at * strides[axis], xshape, strides))
        at += xshape[axis]
    return out if at == shape[axis] else None


def _reshaped_strides(shape, strides, new):
    """The strides of a reshape of a view to ``new``, if it stays a view (NumPy's rule
    for a reshape without a copy): the view is C-contiguous, or the reshape adds or
    drops axes of length 1 (stride 0), or it merges axes that are contiguous among
    themselves and splits axes."""
    shape, new = tuple(int(d) for d in shape), tuple(int(d) for d in new)
    if tuple(strides) == c_strides(shape) or 0 in shape:
        return c_strides(new)
    kept = [(d, s) for d, s in zip(shape, strides) if d != 1]
    dims, steps = [d for d, _ in kept], [s for _, s in kept]
    wanted = [d for d in new if d != 1]
    if int(np.prod(dims)) != int(np.prod(wanted)):
        return None
    out, i, j = [], 0, 0
    while i < len(dims) and j < len(wanted):     # (groups of axes of equal size)
        a, b, i2, j2 = dims[i], wanted[j], i + 1, j + 1
        while a != b:
            if a < b:
                a *= dims[i2]
                i2 += 1
            else:
                b *= wanted[j2]
                j2 += 1
        if any(steps[k] != dims[k + 1] * steps[k + 1] for k in range(i, i2 - 1)):
            return None                          # (the old group is not contiguous)
        step, group = steps[i2 - 1], []
        for d in reversed(wanted[j:j2]):
            group.append(step)
            step *= d
        out += reversed(group)
        i, j = i2, j2
    it = iter(out)
    return tuple(next(it) if d != 1 else 0 for d in new)


def _row_run(eqns, k, placed=()) -> int:
    """The end of the run of equations from ``k`` that may be one kernel with a block
    per row (``cudarows.row_run``): fused equations over domains with the same first
    axis, none reducing over it, at least one reducing over another (elementwise runs
    the fusion pass has fused already), and reshapes keeping that axis; ``k`` when
    there is none.  It stops at the equations a scan's kernel did (``placed``)."""
    B, end, reduces = None, k, False
    while end < len(eqns):
        e = eqns[end]
        if e.outputs and e.outputs[0] in placed:
            break
        if e.prim.name == "fused":
            domain = tuple(int(d) for d in e.params["domain"])
            if not domain or (B is not None and domain[0] != B) or \
                    domain[0] < ROW_RUN_BATCH or int(np.prod(domain[1:])) > ROW_RUN_ELEMENTS:
                break
            reds = [q for q in e.params["body"].eqns if q.prim.name in REDUCTIONS]
            if any(0 in q.params["axes"] for q in reds) or \
                    any(o.ndim == 0 or int(o.shape[0]) != domain[0] for o in e.outputs):
                break
            B, reduces = domain[0], reduces or bool(reds)
        elif not (e.prim.name == "reshape" and B is not None and
                  isinstance(e.inputs[0], Var) and e.outputs[0].ndim and
                  int(e.outputs[0].shape[0]) == B):
            break
        end += 1
    while end > k and eqns[end - 1].prim.name == "reshape":
        end -= 1
    return end if reduces else k


def _one_run(eqns, k, placed, deferrable, last_use) -> int:
    """The end of the run of equations from ``k`` that may be one kernel of one block
    (``cudarows.one_run``): fused equations and two-operand contractions whose values
    (and products) have at most ``cudarows.one_run_work()`` elements, reshapes, and
    rank-0 arithmetic (on what the run computes, which the host would otherwise copy
    back to compute it, or on host scalars that only the run reads: ``last_use``),
    at least two of them kernels; ``k`` when there is none.  It stops at the equations
    a scan's kernel did (``placed``) and at those lowered where they are read
    (``deferrable``)."""
    from ..passes.fuse import ELEMENTWISE
    from .cudarows import kernel_count, one_run_work, work_of
    limit, end, made, host = one_run_work(), k, set(), []
    while end < len(eqns):
        e = eqns[end]
        if e.outputs and e.outputs[0] in placed or deferrable(e):
            break
        if e.prim.name in ELEMENTWISE and len(e.outputs) == 1 and \
                e.outputs[0].ndim == 0 and all(v.ndim == 0 for v in e.inputs
                                               if isinstance(v, Var)):
            if not any(v in made for v in e.inputs if isinstance(v, Var)):
                host.append(end)    # (of operands alone: in the run if only it reads it)
        elif e.prim.name == "fused":
            if int(np.prod(e.params["domain"])) > limit or work_of(e) > limit:
                break
        elif e.prim.name == "einsum" and len(e.inputs) == 2 and \
                all(isinstance(v, Var) for v in e.inputs):
            if work_of(e) > limit:
                break
        elif not (e.prim.name == "reshape" and isinstance(e.inputs[0], Var)):
            break
        made.update(e.outputs)
        end += 1
    for m in host:          # (read after the run too: it stays on the host, and the run
        if last_use.get(eqns[m].outputs[0], -1) >= end:          # ends before it)
            end = m
            break
    while end > k and (eqns[end - 1].prim.name == "reshape" or end - 1 in host):
        end -= 1
    kernels = kernel_count(eqns[k:end])
    return end if kernels >= 2 and limit else k


def _register_names(ctx, graph: Graph) -> list:
    """Name ``graph``'s values (nested bodies' too) as ``pretty`` prints them; returns
    the printed lines of each equation."""
    from ..ir import pretty_parts
    from .pysource import _identifier
    namer, printed = pretty_parts(graph)
    ctx.names.update({v: _identifier(n) + ("_" if n in ("cuda", "math") else "")
                      for v, n in namer.names.items()})
    return printed


def _nested(ctx, graph: Graph, what: str, optimised: bool = False) -> str:
    """A sub-Graph (a loop's body, a branch) as a host function of the module,
    optimised for the target first (fused like a whole graph)."""
    from .compile import optimise
    fname = f"_b{len(ctx.functions)}"
    ctx.functions.append(None)                  # (reserve the name: bodies nest)
    graph = graph if optimised else optimise(graph, "cuda")
    text, _ = _function(ctx, graph, fname, canonical=True, what=what)
    ctx.functions[int(fname[2:])] = text
    return fname


# ---------------------------------------------------------------- equations

def _lower_eqn(ctx, eqn, text):
    name = eqn.prim.name
    if name == "fused":
        _fused(ctx, eqn, text)
    elif name == "einsum" and _contractible(eqn):
        _einsum(ctx, eqn)
    elif name == "reshape" and not isinstance(eqn.inputs[0], Lit) and \
            ctx.place[eqn.inputs[0]] == "dev":
        x, out = eqn.inputs[0], eqn.outputs[0]
        shape = tuple(out.shape) or (1,)
        ctx.place[out] = "dev"
        ctx.lines.append(f"{ctx.names[out]} = _d.reshape({ctx.names[x]}, {shape!r})")
    elif name == "barrier":       # its values, named once its other operands exist
        for x, out in zip(eqn.inputs, eqn.outputs):
            ctx.place[out] = "host" if isinstance(x, Lit) else ctx.place[x]
            value = ctx.on_host_value(x) if isinstance(x, Lit) else ctx.names[x]
            ctx.lines.append(f"{ctx.names[out]} = {value}")
    elif name in ("scan", "while_loop", "cond", "while_adjoint"):
        {"scan": _scan, "while_loop": _while, "cond": _cond,
         "while_adjoint": _while_adjoint}[name](ctx, eqn)
    elif name in ("argmax", "argmin", "cumsum") and eqn.inputs[0].ndim and \
            np.dtype(eqn.inputs[0].dtype).kind in ("biuf" if name != "cumsum" else "biufc"):
        _along_axis(ctx, eqn)
    elif name in ("conv2d", "conv2d_over_batch", "conv2d_dilated_input") and \
            all(isinstance(v, Var) for v in eqn.inputs):
        _conv(ctx, eqn)
    elif name == "solve" and np.dtype(eqn.outputs[0].dtype).kind == "f" and \
            all(isinstance(v, Var) for v in eqn.inputs):
        _solve(ctx, eqn)
    elif _on_cupy(eqn):
        _library(ctx, eqn)
    elif name == "searchsorted" and np.dtype(eqn.inputs[0].dtype).kind in "biuf":
        _search(ctx, eqn)
    elif name in ("gather", "scatter_add", "index_set", "scatter_extremum") and \
            _indexable(eqn):
        _indexing(ctx, eqn)
    elif name == "concatenate" and all(v.ndim for v in eqn.inputs):
        _concatenate(ctx, eqn)
    elif _kernel_alone(eqn):
        # an elementwise or structural equation the fusion pass left alone (a slice
        # feeding a loop, a broadcast of a constant): a fused equation of one
        _fused(ctx, _fused_of_one(eqn), None, {eqn: [text[0].strip().removeprefix("let ")]})
    elif eqn.outputs and all(v.ndim == 0 for v in eqn.outputs) and len(eqn.outputs) == 1 \
            and _host_scalar(eqn) is not None:
        out = eqn.outputs[0]
        args = [ctx.on_host_value(v) for v in eqn.inputs]
        ctx.place[out] = "host"
        ctx.lines.append(f"{ctx.names[out]} = {_host_scalar(eqn).format(*args)}")
    else:
        _host(ctx, eqn)


def _kernel_alone(eqn) -> bool:
    from ..passes.fuse import ELEMENTWISE, STRUCTURAL
    name = eqn.prim.name
    if len(eqn.outputs) != 1:
        return False
    if name in REDUCTIONS:
        return eqn.inputs[0].ndim >= 1
    if eqn.outputs[0].ndim == 0 or name == "reshape":
        return False
    return name in ELEMENTWISE or name in STRUCTURAL


def _fused_of_one(eqn):
    """A fused equation whose body is ``eqn`` alone (see ``_kernel_alone``)."""
    from ..passes.fuse import fused_p
    ins = list(dict.fromkeys(v for v in eqn.inputs if not isinstance(v, Lit)))
    body = Graph(tuple(ins), (eqn,), tuple(eqn.outputs))
    domain = tuple(eqn.inputs[0].shape) if eqn.prim.name in REDUCTIONS else tuple(
        eqn.outputs[0].shape)
    return make_eqn(fused_p, ins, eqn.outputs, {"body": body, "domain": domain})


def _host_scalar(eqn):
    """A rank-0 elementwise equation as a NumPy expression on host scalars (its operands
    are read on the host anyway: a branch or loop condition, a solver's step size)."""
    from .pysource import TEMPLATES as NUMPY
    name = eqn.prim.name
    if name == "select":
        return "({1} if {0} else {2})"
    if name == "convert_element_type":
        dtype = np.dtype(eqn.params["dtype"])
        return "({0} != 0)" if dtype == np.bool_ else f"{dtype_expr(dtype)}({{0}})"
    text = NUMPY.get(name)
    if text is None or text.startswith("_k."):     # (the CPU kernels': the interpreter)
        return None
    return f"{dtype_expr(eqn.outputs[0].dtype)}({text})"


def _canonical(ctx, v) -> str:
    """``v`` in its canonical place (arrays on the device, rank-0 values on the host)."""
    return ctx.on_device(v) if v.ndim else ctx.on_host_value(v)


def _bind(ctx, eqn, results, places=None):
    for k, (v, r) in enumerate(zip(eqn.outputs, results)):
        ctx.place[v] = places[k] if places else "dev" if v.ndim else "host"
        ctx.lines.append(f"{ctx.names[v]} = {r}")


def _scan(ctx, eqn):
    from .compile import optimise
    from .cudarows import one_row, rows
    p = eqn.params
    n_consts, n_carry, length = p["n_consts"], p["n_carry"], p["length"]
    optimised = optimise(p["body"], "cuda")
    printed = _register_names(ctx, optimised)
    if rows(ctx, eqn, optimised, printed):       # one kernel for the whole loop
        return
    if one_row(ctx, eqn):                        # ... of one block
        return
    for v in eqn.inputs:
        ctx.materialize(v)
    body = _nested(ctx, optimised, f"scan body, {length} steps", optimised=True)
    ins = eqn.inputs
    consts = [_canonical(ctx, v) for v in ins[:n_consts]]
    carry = [_canonical(ctx, v) for v in ins[n_consts:n_consts + n_carry]]
    # xs: stepped along their first axis (rank-1 ones on the host: a scalar per step)
    xs = [ctx.on_device(v) if v.ndim > 1 else ctx.on_host_value(v)
          for v in ins[n_consts + n_carry:]]
    k = [ctx.temp() for _ in carry]
    t, r = ctx.temp(), ctx.temp()
    ys, places = [], ["dev" if v.ndim else "host" for v in eqn.outputs[:n_carry]]
    for v in eqn.outputs[n_carry:]:      # (a scalar per step: stacked on the host)
        y = ctx.temp()
        alloc = "_d.empty" if v.ndim > 1 else "np.empty"
        ctx.lines.append(f"{y} = {alloc}({tuple(v.shape)!r}, {dtype_expr(v.dtype)})")
        ys.append(y)
        places.append("dev" if v.ndim > 1 else "host")
    ctx.lines += [f"{kk} = {c}" for kk, c in zip(k, carry)]
    steps = f"range({length} - 1, -1, -1)" if p["reverse"] else f"range({length})"
    args = consts + k + [f"{x}[{t}]" for x in xs]
    ctx.lines.append(f"for {t} in {steps}:")
    ctx.lines.append(f"    {r} = {body}({', '.join(args)})")
    ctx.lines += [f"    {kk} = {r}[{j}]" for j, kk in enumerate(k)]
    ctx.lines += [f"    _d.put({y}, {t}, {r}[{n_carry + j}])" if pl == "dev"
                  else f"    {y}[{t}] = {r}[{n_carry + j}]"
                  for j, (y, pl) in enumerate(zip(ys, places[n_carry:]))]
    _bind(ctx, eqn, k + ys, places)


def _while(ctx, eqn):
    from .cudarows import one_row_while
    if one_row_while(ctx, eqn):                  # one kernel of one block
        return
    for v in eqn.inputs:
        ctx.materialize(v)
    p = eqn.params
    n_cond, n_body = p["n_cond"], p["n_body"]
    cond_graph, body_graph = p["branches"]
    checks = len(ctx.checks)
    cond = _nested(ctx, cond_graph, "while_loop: the condition")
    body = _nested(ctx, body_graph, "while_loop: the body")
    ins = [_canonical(ctx, v) for v in eqn.inputs]
    cc, bc, carry = ins[:n_cond], ins[n_cond:n_cond + n_body], ins[n_cond + n_body:]
    k = [ctx.temp() for _ in carry]
    ctx.lines += [f"{kk} = {c}" for kk, c in zip(k, carry)]
    test = f"{cond}({', '.join(cc + k)})[0]"
    if len(ctx.checks) > checks:
        # (a check its kernels flag is read at every trip, with the condition: a value
        # an index out of bounds left unread could otherwise keep the loop going)
        test = f"_checks.passed({test})"
    ctx.lines.append(f"while {test}:")
    ctx.lines.append(f"    {''.join(kk + ', ' for kk in k)}= {body}({', '.join(bc + k)})")
    _bind(ctx, eqn, k)


def _zeros(ctx, v) -> str:
    if v.ndim == 0:
        return scalar_literal(0, v.dtype)
    return f"_d.zeros({tuple(v.shape)!r}, {dtype_expr(v.dtype)})"


def _accumulate(ctx, acc: str, v, value: str) -> list:
    """Lines adding ``value`` into the accumulator ``acc`` (a device array of its own,
    updated in place by a kernel; a rank-0 one on the host)."""
    if v.ndim == 0:
        return [f"{acc} = {acc} + {value}"]
    size = int(np.prod(v.shape))
    kname = ctx.kernel_name()
    lines = [f"for _i in range(cuda.grid(1), {size}, cuda.gridsize(1)):",
             "    a[_i] += b[_i]"]
    _finish_kernel(ctx, kname, ["a", "b"], lines, [("a", v.dtype, 1), ("b", v.dtype, 1)])
    blocks = max(1, min(-(-size // ctx.threads), MAX_BLOCKS))
    return [f"{kname}[{blocks}, {ctx.threads}](_d.reshape({acc}, ({size},)), "
            f"_d.reshape({value}, ({size},)))"]


def _while_adjoint(ctx, eqn):
    """Reverse mode through a ``while_loop`` (``prims.loops``): the forward steps again,
    their carries kept on a tape (a Python list of device arrays: values are never
    written in place, so keeping a reference keeps the value), then the VJP of a step
    backwards along it; with ``checkpoint=k``, every k-th carry and the segments
    recomputed from it.  The same algorithm as ``codegen.control._adjoint``."""
    from ..ir import is_float
    from .cudarows import one_row_while_adjoint
    if one_row_while_adjoint(ctx, eqn):          # two kernels of one block
        return
    p = eqn.params
    body, step = p["branches"]
    n_body, lin, every = p["n_body"], p["lin"], p["checkpoint"]
    n_carry = len(body.inputs) - n_body
    carries = body.inputs[n_body:]
    floats = [is_float(v.dtype) for v in carries]
    b_fn = _nested(ctx, body, "while_adjoint: a step of the loop (to fill the tape)")
    back = Graph(step.inputs, step.eqns, step.outputs[len(body.outputs):])
    v_fn = _nested(ctx, back, "while_adjoint: a step of the backward sweep")
    a = [_canonical(ctx, v) for v in eqn.inputs]
    bc, carry, n = a[:n_body], a[n_body:n_body + n_carry], a[n_body + n_carry]
    ct_in = iter(a[n_body + n_carry + 1:])
    lines = ctx.lines
    ct = []
    for v, f in zip(carries, floats):
        ct.append(ctx.temp())
        lines.append(f"{ct[-1]} = {next(ct_in) if f else _zeros(ctx, v)}")
    acc, acc_vars = [], []
    for v, w in zip(body.inputs[:n_body], lin):
        if w:
            acc.append(ctx.temp())
            acc_vars.append(v)
            lines.append(f"{acc[-1]} = {_zeros(ctx, v)}")
    k = [ctx.temp() for _ in carry]
    tape = [ctx.temp() for _ in carry]
    lines += [f"{kk} = {c}" for kk, c in zip(k, carry)]
    i, r = ctx.temp(), ctx.temp()
    unpack = "".join(kk + ", " for kk in k)
    step_k = f"{unpack}= {b_fn}({', '.join(bc + k)})"
    floats_ct = [c for c, f in zip(ct, floats) if f]

    def backward(at, pad):
        cur = [f"{t}[{at}]" for t in tape]
        out = [f"{r} = {v_fn}({', '.join(bc + cur + ct)})"]
        for j, (m, v) in enumerate(zip(acc, acc_vars)):
            out += _accumulate(ctx, m, v, f"{r}[{j}]")
        out += [f"{c} = {r}[{len(acc) + j}]" for j, c in enumerate(floats_ct)]
        return [pad + x for x in out]

    lines += [f"{t} = []" for t in tape]
    if every is None:
        lines.append(f"for {i} in range({n}):")
        lines += [f"    {t}.append({kk})" for t, kk in zip(tape, k)]
        lines += ["    " + step_k, f"for {i} in range({n} - 1, -1, -1):"]
        lines += backward(i, "    ")
    else:
        snaps = [ctx.temp() for _ in carry]
        count, s, lo, hi, j = (ctx.temp() for _ in range(5))
        lines += [f"{count} = ({n} + {every - 1}) // {every}"]
        lines += [f"{sn} = []" for sn in snaps]
        # (the snapshots' loop stops where the last segment starts)
        lines += [f"for {i} in range(({count} - 1) * {every}):",
                  f"    if {i} % {every} == 0:"]
        lines += [f"        {sn}.append({kk})" for sn, kk in zip(snaps, k)]
        lines += ["    " + step_k, f"if {count} > 0:"]
        lines += [f"    {sn}.append({kk})" for sn, kk in zip(snaps, k)]
        lines += [f"for {s} in range({count} - 1, -1, -1):",
                  f"    {lo} = {s} * {every}", f"    {hi} = min({n}, {lo} + {every})"]
        lines += [f"    {kk} = {sn}[{s}]" for kk, sn in zip(k, snaps)]
        lines += [f"    {t} = []" for t in tape]
        lines += [f"    for {j} in range({hi} - {lo}):"]
        lines += [f"        {t}.append({kk})" for t, kk in zip(tape, k)]
        lines += ["        " + step_k]
        lines += [f"    for {j} in range({hi} - {lo} - 1, -1, -1):"] + backward(j, "        ")
    _bind(ctx, eqn, acc + floats_ct)


def _cond(ctx, eqn):
    false, true = eqn.params["branches"]
    f_fn = _nested(ctx, false, "cond: the false branch")
    t_fn = _nested(ctx, true, "cond: the true branch")
    pred = ctx.on_host_value(eqn.inputs[0])
    ops = [_canonical(ctx, v) for v in eqn.inputs[1:]]
    r = ctx.temp()
    ctx.lines += [f"if {pred}:", f"    {r} = {t_fn}({', '.join(ops)})", "else:",
                  f"    {r} = {f_fn}({', '.join(ops)})"]
    _bind(ctx, eqn, [f"{r}[{j}]" for j in range(len(eqn.outputs))])


def _host(ctx, eqn):
    """An equation without a CUDA lowering: the interpreter runs it on the host."""
    ins = list(dict.fromkeys(v for v in eqn.inputs if not isinstance(v, Lit)))
    args = [ctx.on_host_value(v) for v in ins]
    graph = Graph(tuple(ins), (eqn,), tuple(eqn.outputs))
    key = f"_h{len(ctx.host_globals)}"
    ctx.host_globals[key] = graph
    ctx.on_host.append(eqn.prim.name)
    outs = [ctx.names[v] for v in eqn.outputs]
    for v in eqn.outputs:
        ctx.place[v] = "host"
    call_args = ", ".join(args)
    ctx.lines.append(f"{', '.join(outs)}{',' if outs else '_'} = _d.run_host({key}, "
                     f"[{call_args}])   # on the host: no CUDA lowering of "
                     f"{eqn.prim.name}")


# ---------------------------------------------------------------- kernel text helpers

def _decode(var, dims, names, indent) -> list:
    """Lines setting ``names`` (C order) from the linear index ``var`` over ``dims``."""
    lines = []
    if not dims:
        return lines
    if len(dims) == 1:
        return [indent + f"{names[0]} = {var}"]
    rest = f"{var}_r"
    lines.append(indent + f"{rest} = {var}")
    for k in range(len(dims) - 1, 0, -1):
        lines.append(indent + f"{names[k]} = {mod(rest, dims[k])}")
        lines.append(indent + f"{rest} = {floordiv(rest, dims[k])}")
    lines.append(indent + f"{names[0]} = {rest}")
    return lines


def flat_subscripts(lines: list, shapes: dict) -> list:
    """The kernel body ``lines`` (after ``unsigned_subscripts``) with each subscript of
    a C-contiguous array parameter of rank 2 or more whose shape is known (``shapes``)
    at every axis written as a subscript of ``name_f``, its elements as one axis
    (``_d.flat(name, shape)``, defined at the top of each function reading it), at the
    offset with the strides as constants: ``a_f[np.uint64((r) * 64 + (i2))]``.  Numba
    computes a multi-axis address from the shape the array carries at run time, so
    each load of an unrolled loop takes its own 64-bit address arithmetic; with
    constant strides it is one load with an immediate offset.  (The simulator's ``flat``
    checks the shape.)  Subscripts spanning lines, holding another such subscript, or
    taking fewer indices than axes, stay as they are."""
    import ast
    if not shapes:
        return lines
    text = "\n".join(lines)
    tree = ast.parse(text)

    def unwrap(node):                   # (np.uint64(x) -> x: int64 arithmetic inside)
        while isinstance(node, ast.Call) and ast.unparse(node.func) == "np.uint64" and \
                len(node.args) == 1:
            node = node.args[0]
        return node

    def eligible(node):
        if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and
                node.value.id in shapes and node.lineno == node.end_lineno):
            return None
        idx = node.slice
        parts = idx.elts if isinstance(idx, ast.Tuple) else [idx]
        if len(parts) != len(shapes[node.value.id]) or \
                any(isinstance(p, ast.Slice) for p in parts):
            return None
        if any(eligible(q) is not None for p in parts for q in ast.walk(p)):
            return None
        return [unwrap(p) for p in parts]

    def scope_walk(scope):              # (not into nested functions)
        todo = list(ast.iter_child_nodes(scope))
        while todo:
            node = todo.pop()
            yield node
            if not isinstance(node, ast.FunctionDef):
                todo += list(ast.iter_child_nodes(node))

    edits: dict = {}                    # line -> [(start, end, replacement)]
    defines: dict = {}                  # line -> [(indent, name)]
    for scope in [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        used = []
        for node in sorted(scope_walk(scope), key=lambda n: (getattr(n, "lineno", 0),
                                                            getattr(n, "col_offset", 0))):
            parts = eligible(node)
            if parts is None:
                continue
            name = node.value.id
            strides = c_strides(shapes[name])
            terms = [f"({ast.get_source_segment(text, p)})" + (f" * {st}" if st != 1 else "")
                     for p, st in zip(parts, strides)]
            edits.setdefault(node.lineno - 1, []).append(
                (node.col_offset, node.end_col_offset,
                 f"{name}_f[np.uint64({' + '.join(terms)})]"))
            if name not in used:
                used.append(name)
        if used:
            first = scope.body[0]
            at = first.lineno - 1 if isinstance(scope, ast.FunctionDef) else 0
            indent = first.col_offset if isinstance(scope, ast.FunctionDef) else 0
            defines.setdefault(at, []).extend((indent, name) for name in used)
    out = _edited(lines, edits)
    for k in sorted(defines, reverse=True):
        out[k:k] = [" " * indent + f"{name}_f = _d.flat({name}, {shapes[name]!r})"
                    for indent, name in defines[k]]
    return out


def _unsigned() -> bool:
    """Whether kernels index unsigned and divide by powers of two with shifts
    (``GRADC_CUDA_UNSIGNED=0`` in the environment: signed, as before, for A/B timings)."""
    return os.environ.get("GRADC_CUDA_UNSIGNED") != "0"


def floordiv(x: str, n) -> str:
    """Kernel source for ``x // n`` (``n`` a positive constant): a shift where ``n`` is
    a power of two, which is the same for every integer ``x`` (Numba's floor division of
    a 64-bit integer by 64 took 11 SASS instructions, its fix-ups for negative ``x``
    included: G4's reductions decode their index so at every stage of every step)."""
    n = int(n)
    if n > 0 and n & (n - 1) == 0 and _unsigned():
        return x if n == 1 else f"({x} >> {n.bit_length() - 1})"
    return f"({x} // {n})"


def mod(x: str, n) -> str:
    """Kernel source for ``x % n`` (``n`` a positive constant): a mask where ``n`` is a
    power of two (see ``floordiv``)."""
    n = int(n)
    if n > 0 and n & (n - 1) == 0 and _unsigned():
        return "0" if n == 1 else f"({x} & {n - 1})"
    return f"({x} % {n})"


def _launch(ctx, kname, blocks, threads, args) -> str:
    return f"{kname}[{blocks}, {threads}]({', '.join(args)})"


def _kernel_params(ctx, operands) -> tuple:
    """Kernel parameter names and the host expressions passed for them."""
    params, args, kinds = [], [], []
    for v in operands:
        pname = ctx.names[v]
        params.append(pname)
        if v.ndim == 0:
            args.append(ctx.names[v])
            kinds.append((pname, v.dtype, 1 if ctx.place[v] == "dev" else 0))
        else:
            args.append(ctx.on_device(v))
            kinds.append((pname, v.dtype, v.ndim))
    return params, args, kinds


# ---------------------------------------------------------------- fused equations

def _fused(ctx, eqn, text, comments=None):
    from .pysource import text_of_body
    body = eqn.params["body"]
    domain = tuple(int(d) for d in eqn.params["domain"])
    producer = {v: e for e in body.eqns for v in e.outputs}
    if comments is None:
        comments = dict(zip(body.eqns, text_of_body(eqn, text)))
    outer = dict(zip(body.inputs, eqn.inputs))
    # body values by their printed names; operands read from outside by their kernel
    # parameters (a rank-0 cell as ``x[0]``, a literal as a constant)
    names = {v: ctx.names[v] for e in body.eqns for v in e.outputs}
    for bv, ov in outer.items():
        if isinstance(ov, Lit):
            names[bv] = (scalar_literal(ov.value, ov.dtype) if ov.ndim == 0
                         else ctx.const(ov.value))
        else:
            names[bv] = ctx.scalar_read(ov) if bv.ndim == 0 else ctx.names[ov]
    groups: dict = {}
    for r, o in zip(body.outputs, eqn.outputs):
        e = producer.get(r)
        kind = REDUCTIONS.get(e.prim.name) if e is not None else None
        axes = tuple(sorted(e.params["axes"])) if kind else None
        groups.setdefault(axes, []).append((r, o, kind))
    elementwise = groups.pop(None, [])
    for o in eqn.outputs:
        ctx.place[o] = "dev"
        ctx.fresh.add(o)
    for r, o, _ in elementwise:
        ctx.lines.append(f"{ctx.names[o]} = _d.empty({tuple(o.shape)!r}, "
                         f"{dtype_expr(o.dtype)})")
    if not groups:
        _map_kernel(ctx, eqn, domain, elementwise, names, producer, comments, outer)
        return
    first = True
    for axes, roots in groups.items():
        for chunk in _within_shared_memory(roots, ctx.threads):
            _reduce_kernel(ctx, eqn, domain, axes, chunk, elementwise if first else [],
                           names, producer, comments, outer)
            first = False


SHARED_BYTES = 40 * 1024    # a kernel's shared arrays (static limit: 48 KiB per block)


def _within_shared_memory(roots, threads) -> list:
    """The reduction roots of one kernel, split so that each kernel's shared arrays (one
    of ``threads`` elements per root) fit in ``SHARED_BYTES``."""
    chunks, size = [[]], 0
    for root in roots:
        need = threads * np.dtype(root[1].dtype).itemsize
        if chunks[-1] and size + need > SHARED_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(root)
        size += need
    return chunks


def _operands(ctx, outer):
    return [ov for ov in outer.values() if not isinstance(ov, Lit)]


def _finish_kernel(ctx, kname, head_params, lines, kinds, max_registers=None,
                   strided=frozenset(), shapes=None):
    """Record kernel ``kname``; returns the array constants it reads (parameters after
    ``head_params``, passed by the host function).  ``max_registers``: a limit on the
    registers per thread (not under the simulator, whose ``jit`` takes none);
    ``strided``: the parameters given strided views (``_Context.view``); ``shapes``:
    the shapes of the arrays the host passes for parameters (``flat_subscripts``)."""
    text = "\n".join(lines)
    consts = [c for c in ctx.consts if re.search(rf"\b{c}\b", text)]
    params = head_params + consts
    kinds = kinds + [(c, ctx.consts[c].dtype, ctx.consts[c].ndim) for c in consts]
    if _unsigned():
        lines = unsigned_subscripts(lines, [name for name, _, ndim in kinds if ndim])
        # (the shapes the caller states, and the constants'; a parameter named after a
        # Graph's value may hold another array: "a" of a solve's kernel)
        shapes = {**(shapes or {}), **{c: ctx.consts[c].shape for c in consts}}
        lines = flat_subscripts(lines, {
            name: tuple(int(d) for d in shapes[name]) for name, _, ndim in kinds
            if ndim >= 2 and name not in strided and name in shapes and
            len(shapes[name]) == ndim})
    if any(f + "(" in text for f in special.DEVICE_FUNCTIONS):
        # (inner functions, which Numba inlines; both, as polygamma calls digamma)
        lines = special.DEVICE_SOURCE.splitlines() + lines
    options = []                # (the simulator's jit takes neither)
    if ctx.fastmath and not ctx.simulator:
        options.append("fastmath=True")
    if max_registers is not None and not ctx.simulator:
        options.append(f"max_registers={max_registers}")
    jit = f"@cuda.jit({', '.join(options)})" if options else "@cuda.jit"
    text = "\n".join([jit, f"def {kname}({', '.join(params)}):"] +
                     ["    " + line for line in lines])
    ctx.kernels.append(Kernel(kname, kinds, text, max_registers, frozenset(strided),
                              ctx.fastmath))
    return consts


def _combine(kind, acc, val, dtype) -> str:
    """A reduction's step in a kernel.  Of real numbers held in two names, a maximum or
    minimum is the conditional expression of the elementwise ``max`` and ``min``
    (``TEMPLATES``: NumPy's ``np.maximum``, NaN first, of equal values the second), which
    NVVM makes two comparisons and a select; Numba's ``np.maximum`` took five SASS
    instructions an element (three comparisons, two selects)."""
    if kind in ("max", "min") and np.dtype(dtype).kind in "biuf" and \
            re.fullmatch(r"\w+", acc) and re.fullmatch(r"\w+", val):
        return TEMPLATES[kind].format(acc, val)
    return loops._combine(kind, acc, val)


def _reduce_step(em, kind, acc, val, dtype) -> None:
    """Emit ``acc``'s step by ``val`` (``_steps``)."""
    for line in _steps(kind, acc, acc, val, dtype):
        em.emit(0, line)


def _steps(kind, target, acc, val, dtype) -> list:
    """Lines setting ``target`` to ``acc`` combined with ``val`` (``_combine``): a
    maximum's or minimum's operands that are not names are read into names first
    (``{target}_x``, ``{target}_v``: its conditional expression reads them twice)."""
    lines = []
    if kind in ("max", "min"):
        base = re.sub(r"\W", "", target.split("[")[0])
        if not re.fullmatch(r"\w+", acc):
            lines.append(f"{base}_x = {acc}")
            acc = f"{base}_x"
        if not re.fullmatch(r"\w+", val):
            lines.append(f"{base}_v = {val}")
            val = f"{base}_v"
    return lines + [f"{target} = {_combine(kind, acc, val, dtype)}"]


def shuffles(dtypes) -> bool:
    """Whether values of ``dtypes`` combine across a warp's lanes in registers
    (``_d.shfl_xor``: 4- and 8-byte signed integers and floats), not through shared
    memory between barriers.  ``GRADC_CUDA_SHUFFLE=0`` in the environment (read at
    lowering): never, as before, for A/B timings."""
    if os.environ.get("GRADC_CUDA_SHUFFLE") == "0":
        return False
    return all(np.dtype(d).kind in "fi" and np.dtype(d).itemsize in (4, 8) for d in dtypes)


def _block_combine(roots, T):
    """Lines after each thread of a block of ``T`` threads has accumulated its share in
    ``acc`` (``roots``: (acc, kind, dtype, init)) that leave the block's total in thread
    0's ``acc``: a butterfly of shuffles in each warp, each warp's first lane writing
    its total to ``{acc}_s`` in shared memory, one barrier, then warp 0 combining those
    the same way.  Two barriers a block (with the one before the next use of
    ``{acc}_s``), where a tree in shared memory took log2(T) + 2.  None where shuffles
    do not apply: other dtypes, a block size not a power of two."""
    if not shuffles([dt for _, _, dt, _ in roots]) or T & (T - 1):
        return None
    W = min(WARP, T)
    accs = [(acc, kind, dt) for acc, kind, dt, _ in roots]
    lines = butterfly(accs, W)
    if T > W:
        lines.append(f"if (_tid & {W - 1}) == 0:")
        lines += [f"    {acc}_s[_tid >> {W.bit_length() - 1}] = {acc}" for acc, *_ in roots]
        lines += ["cuda.syncthreads()", f"if _tid < {W}:"]
        lines += [f"    {acc} = {acc}_s[_tid] if _tid < {T // W} else {init}"
                  for acc, _, _, init in roots]
        lines += ["    " + s for s in butterfly(accs, T // W)]
    return lines


def butterfly(accs, width, lane=None) -> list:
    """Lines combining each accumulator of ``accs`` ((acc, kind, dtype)) across
    ``width`` adjacent lanes (a power of two, at most a warp) by ``_d.shfl_xor``: every
    lane ends with the total.  With ``lane`` (an expression: the lane's place among the
    ``width``), a maximum's or minimum's pair combines (lower lane's, upper lane's) in
    both lanes, so that every lane ends with the same value: of a +0 and a -0 the pick
    depends on the order (without it, only one lane's value is to be used).  IEEE
    addition and multiplication are commutative."""
    out, offset = [], width // 2
    while offset:
        for acc, kind, dt in accs:
            out.append(f"{acc}_o = _d.shfl_xor({acc}, {offset})")
            if lane is not None and kind in ("max", "min"):
                out += [f"{acc}_h = {lane} & {offset}",
                        f"{acc}_l = {acc}_o if {acc}_h else {acc}",
                        f"{acc}_o = {acc} if {acc}_h else {acc}_o"]
                out += _steps(kind, acc, f"{acc}_l", f"{acc}_o", dt)
            else:
                out += _steps(kind, acc, acc, f"{acc}_o", dt)
        offset //= 2
    return out


def unsigned_subscripts(lines: list, arrays) -> list:
    """The kernel body ``lines`` with each index of each subscript of an array (the
    parameters ``arrays``, and the body's shared and local arrays and other names of
    them) cast to ``np.uint64``, as map kernels' reads already are (``_Emitter.hoist``).
    Numba makes a signed index ``i`` into ``i + n if i < 0 else i`` (Python's negative
    indices); the kernels' indices are never negative (NumPy's negative indices are
    resolved where the source is generated, or in the kernel for index arrays), and
    that test and the 64-bit arithmetic around it were most of the instructions of a
    one-kernel scan's reductions: G4's forward scan took 27 SASS instructions an element
    in its maximum and 32 in its sum of exponentials, 12 and 16 with the casts.  (The
    simulator's ``np.uint64`` of a negative index raises.)"""
    import ast
    tree = ast.parse("\n".join(lines))
    names = set(arrays)
    assigned = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)]
    for _ in range(3):            # (shared arrays, names given to them and their slices)
        for n in assigned:
            v = n.value
            if isinstance(v, ast.Name) and v.id in names or \
                    isinstance(v, ast.Subscript) and isinstance(v.value, ast.Name) and \
                    v.value.id in names and isinstance(v.slice, ast.Slice) or \
                    isinstance(v, ast.Call) and ast.unparse(v.func) in (
                        "cuda.shared.array", "cuda.local.array"):
                names.add(n.targets[0].id)
    at: dict = {}                       # line -> [(column, column, text inserted)]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and
                node.value.id in names):
            continue
        index = node.slice
        for part in index.elts if isinstance(index, ast.Tuple) else [index]:
            if isinstance(part, (ast.Slice, ast.Constant)) or \
                    isinstance(part, ast.Call) and ast.unparse(part.func) == "np.uint64":
                continue                # (a literal is no test: LLVM folds it)
            at.setdefault(part.lineno - 1, []).append(
                (part.col_offset, part.col_offset, "np.uint64("))
            at.setdefault(part.end_lineno - 1, []).append(
                (part.end_col_offset, part.end_col_offset, ")"))
    return _edited(lines, at)


def _edited(lines: list, edits: dict) -> list:
    """``lines`` with ``edits`` (line -> [(start, end, text)]: the columns, as Python's
    ``ast`` counts them, in bytes, of a span replaced by ``text``; an insertion where
    ``start == end``) made; the spans of a line do not overlap."""
    out = list(lines)
    for k, changes in edits.items():
        line = out[k].encode()
        for start, end, text in sorted(changes, reverse=True):
            line = line[:start] + text.encode() + line[end:]
        out[k] = line.decode()
    return out


def _map_kernel(ctx, eqn, domain, roots, names, producer, comments, outer):
    """An elementwise kernel in gather form.  The value of every output at one linear
    index is an inner function of the kernel, ``_at(_i, operands...)`` (Numba inlines
    it), that reads and computes but stores nothing.  The kernel's grid-stride loop
    calls it at ``UNROLL // arrays read`` indices one grid apart (each coalesced across
    a warp) and only then stores the results, so that the compiler can issue all of
    their loads before the first store (a store might alias any load after it).  One
    4-byte load in flight per thread keeps a third of an H200's bandwidth busy (G1 in
    float32 ran at 1.4 TB/s so); a body reading several arrays has several in flight
    already, and its copies would cost registers instead.  Indices are cast to
    ``uint64`` where arrays are read and written: every index here is in bounds, and
    Numba then drops its negative-index test (three 64-bit instructions a read).  Each
    array element ``_at`` needs is loaded once, before anything is computed, pads'
    windows included (``_Emitter.hoist``).  The tail runs one index per trip.

    Where the last axis allows, the kernel first tries 16-byte vectors (``_vector_at``):
    when every array it reads or writes that way is aligned for them (tested once, at
    the top), each thread computes ``lanes`` consecutive elements per call, reading and
    writing them with one instruction per array; otherwise it runs the loop above."""
    kname = ctx.kernel_name()
    params, args, kinds = _kernel_params(ctx, _operands(ctx, outer))
    # about UNROLL loads in flight per thread: a kernel reading several arrays has
    # that many already (G2's three need 34 registers at 1, 66 at 4, on sm_90)
    streams = sum(1 for _, _, ndim in kinds if ndim > 0)
    unroll = max(1, int(os.environ.get("GRADC_CUDA_UNROLL", UNROLL // max(1, streams))))
    outs = [ctx.names[o] for _, o, _ in roots]
    kinds += [(ctx.names[o], o.dtype, o.ndim) for _, o, _ in roots]
    size = int(np.prod(domain))
    em, ivars, vals = _map_at(ctx, domain, roots, names, producer, comments, 1)
    at = _define_at(ctx, "_at", params, em, ivars, vals, domain, em.hoisted_lines)

    def call(at, index, k):
        got = ", ".join(f"_w{k}_{n}" for n in range(len(roots) * at.lanes))
        return [f"{got} = {at.fn}({', '.join([index] + params + at.consts)})"]

    def store(at, index, k):
        where = [f"_s{k}_{d}" for d in range(len(domain))]
        head = [f"np.uint64({w})" for w in where[:-1]]
        lines = _decode(index, domain, where, "")
        for n, o in enumerate(outs):
            values = [f"_w{k}_{n * at.lanes + lane}" for lane in range(at.lanes)]
            if o in at.arrays:
                sub = ", ".join(head + [f"np.uint64({where[-1]})"])
                lines.append(f"_d.vstore{at.lanes}({o}, ({sub},), ({', '.join(values)},))")
                continue
            for lane, value in enumerate(values):
                last = f"{where[-1]} + {lane}" if lane else where[-1]
                lines.append(f"{o}[{', '.join(head + [f'np.uint64({last})'])}] = {value}")
        return lines

    def grid_loop(at, unroll):
        """A grid-stride loop over the domain, ``at.lanes`` elements per call of ``at``,
        ``unroll`` calls one grid apart before their stores."""
        step = at.lanes
        first = "cuda.grid(1)" if step == 1 else f"cuda.grid(1) * {step}"
        stride = "_g" if step == 1 else f"{step} * _g"
        if unroll == 1:
            return [f"for _i in range({first}, {size}, {stride}):"] + [
                "    " + line for line in call(at, "_i", 0) + store(at, "_i", 0)]
        lines = [f"for _j in range({first}, {size}, {unroll * step} * _g):",
                 f"    if _j + {unroll - 1} * {stride} < {size}:", "        _j0 = _j"]
        lines += [f"        _j{k} = _j{k - 1} + {stride}" for k in range(1, unroll)]
        for k in range(unroll):
            lines += ["        " + line for line in call(at, f"_j{k}", k)]
        for k in range(unroll):
            lines += ["        " + line for line in store(at, f"_j{k}", k)]
        lines += ["    else:", f"        for _i in range(_j, {size}, {stride}):"]
        lines += ["            " + line for line in call(at, "_i", 0) + store(at, "_i", 0)]
        return lines

    lines = at.define + ["_g = cuda.gridsize(1)"]
    vector = _vector_at(ctx, domain, roots, names, producer, comments, params, outs,
                        streams)
    if vector is None:
        lines += grid_loop(at, unroll)
    else:
        tests = " and ".join(f"_d.valigned{vector.lanes}({a})" for a in vector.arrays)
        lines[len(at.define):len(at.define)] = vector.define
        lines += [f"if {tests}:"] + [
            "    " + line for line in grid_loop(vector, max(1, unroll // vector.lanes))] + \
            ["else:"] + ["    " + line for line in grid_loop(at, unroll)]
    consts = _finish_kernel(ctx, kname, params + outs, lines, kinds)
    blocks = max(1, min(-(-size // (ctx.threads * unroll)), MAX_BLOCKS))
    ctx.lines.append(_launch(ctx, kname, blocks, ctx.threads, args + outs + consts))


class _At:
    """An inner function of a map kernel: its name and lines, the constants it takes,
    and (for ``_vector_at``) the lanes and the arrays accessed as vectors."""

    def __init__(self, fn, define, consts, lanes=1, arrays=()):
        self.fn, self.define, self.consts = fn, define, consts
        self.lanes, self.arrays = lanes, arrays


def _map_at(ctx, domain, roots, names, producer, comments, lanes):
    """The emitter holding the code of the values of every root at the linear index
    ``_i`` and, with ``lanes`` > 1, at the ``lanes - 1`` indices after it along the last
    axis (root 0's lanes, then root 1's), with the index variables and the values'
    names.  Its ``hoisted_reads`` are the loads (``_vector_at`` rewrites them)."""
    ivars = [f"i{k}" for k in range(len(domain))]
    em = _Emitter(ctx, names, producer, comments)
    em.unsigned = set(ivars)    # (in-bounds reads by construction: no negative-index test)
    em.hoist = {v: (0, n - 1) for v, n in zip(ivars, domain)}
    em.hoist[ivars[-1]] = (0, domain[-1] - lanes)   # (a multiple of lanes: their first)
    em.hoisted, em.hoisted_lines, em.hoisted_reads = {}, [], []
    head = tuple(Affine(v, 1, 0, 0, n - 1) for v, n in zip(ivars[:-1], domain[:-1]))
    vals = []
    for r, o, _ in roots:
        for lane in range(lanes):
            last = Affine(ivars[-1], 1, lane, lane, domain[-1] - lanes + lane)
            val = em.value(r, head + (last,), 0)
            vals.append(f"_val{len(vals)}")
            em.emit(0, f"{vals[-1]} = {val}")
    return em, ivars, vals


def _define_at(ctx, fn, params, em, ivars, vals, domain, hoisted_lines, lanes=1,
               arrays=()) -> _At:
    """The inner function ``fn(_i, params..., consts...)`` of ``_map_at``'s code."""
    body = _decode("_i", domain, ivars, "") + hoisted_lines + em.lines
    consts = [c for c in ctx.consts if re.search(rf"\b{c}\b", "\n".join(body))]
    define = [f"def {fn}({', '.join(['_i'] + params + consts)}):"] + [
        "    " + line for line in body + [f"return {', '.join(vals)}"]]
    return _At(fn, define, consts, lanes, arrays)


VECTOR_BYTES = 16       # map kernels' vector accesses: ld.global.v4.f32 / v2.f64 ...
VECTOR_STREAMS = 2      # ... in kernels reading at most this many arrays; 8 bytes in others


def _vector_bytes(streams: int) -> int:
    """The bytes of a map kernel's vector accesses, for a kernel reading ``streams``
    arrays.  Each lane is a copy of the per-element code, live at once, as unrolled
    copies were: a body reading one or two arrays gets 16-byte vectors; one reading
    more gets 8 (G2 reads three: 42 registers at two float32 lanes, 56 at four, for
    the 36 of its scalar loop, on sm_90), and in float64 none.
    ``GRADC_CUDA_VECTOR`` (read at lowering, for measuring) sets the bytes instead: 0
    (scalar accesses only), 8 or 16."""
    text = os.environ.get("GRADC_CUDA_VECTOR", "").strip()
    if not text:
        return VECTOR_BYTES if streams <= VECTOR_STREAMS else VECTOR_BYTES // 2
    if text not in ("0", "8", "16"):
        from ..errors import ArgumentError
        raise ArgumentError(f"gradc: GRADC_CUDA_VECTOR={text!r} should be 0, 8 or 16 "
                            "(bytes per vector access of a map kernel; 0: none)")
    return int(text)


def _vector_item(dtype) -> int:
    """The bytes of an element of ``dtype`` that vector accesses take (4 or 8: integers
    and floats), else 0 (booleans, complex numbers, half precision)."""
    dtype = np.dtype(dtype)
    return dtype.itemsize if dtype.kind in "iuf" and dtype.itemsize in (4, 8) else 0


def _vector_at(ctx, domain, roots, names, producer, comments, params, outs, streams):
    """``_vat``: ``_map_at`` for the ``lanes`` elements of a vector (of
    ``_vector_bytes``) of the kernel's widest item, its reads of ``lanes`` consecutive
    elements of an array (one per lane, the same other indices) made one vector load
    each.  A stencil's neighbours outside the vector (G1's ``x[i - 1]`` and
    ``x[i + 4]``) stay scalar loads, clamped as before.  None where the last axis does
    not split into vectors, where no output or read is of 4 or 8 bytes, and under
    ``GRADC_CUDA_VECTOR=0``."""
    vector_bytes = _vector_bytes(streams)
    if vector_bytes == 0:
        return None
    sizes = [_vector_item(o.dtype) for _, o, _ in roots]
    if not any(sizes):
        return None
    sizes += [_vector_item(v.dtype) for v in names if v.ndim > 0 and v not in producer]
    widest = max(sizes)
    lanes = vector_bytes // widest
    if lanes < 2 or domain[-1] % lanes:
        return None
    em, ivars, vals = _map_at(ctx, domain, roots, names, producer, comments, lanes)
    last_var = ivars[-1]
    groups: dict = {}
    for local, atom, name, idx, sub in em.hoisted_reads:
        last = idx[-1]
        if not _vector_item(atom.dtype) or \
                lanes * _vector_item(atom.dtype) > vector_bytes or \
                last.sym != last_var or last.mult != 1 or not 0 <= last.offset < lanes or \
                int(atom.shape[-1]) < domain[-1] or \
                any(c.sym == last_var and c.mult != 0 for c in idx[:-1]):
            continue
        groups.setdefault((name, tuple(sub[:-1])), []).append((last.offset, local))
    loads, arrays = {}, []
    for (name, head), members in groups.items():
        if len(members) < 2:
            continue
        vec = f"_v{len(arrays)}"
        sub = ", ".join(head + (f"np.uint64({last_var})",))
        loads[members[0][1]] = [f"{vec} = _d.vload{lanes}({name}, ({sub},))"] + [
            f"{local} = {vec}[{offset}]" for offset, local in members]
        for _, local in members[1:]:
            loads[local] = []
        arrays.append(name)
    arrays = list(dict.fromkeys(arrays))
    arrays += [o for (_, v, _), o in zip(roots, outs)
               if _vector_item(v.dtype) * lanes == vector_bytes]
    if not arrays:
        return None
    lines = []
    for (local, *_), line in zip(em.hoisted_reads, em.hoisted_lines):
        lines += loads.get(local, [line])
    return _define_at(ctx, "_vat", params, em, ivars, vals, domain, lines, lanes, arrays)


def _along_last(reads, last) -> bool:
    """Whether every array read ``reads`` ((array, idx) pairs) either has the domain's
    innermost variable ``last`` in its own innermost index, one element apart (threads
    on neighbouring elements of that axis read neighbouring memory), or does not
    depend on it at all (they read one element); a transposed read (``x.T`` summed
    over its first axis) has it elsewhere, and neighbours would be a row apart."""
    for _, idx in reads:
        if not idx:
            continue
        if not all(isinstance(c, Affine) for c in idx):
            return False
        uses = [c.sym == last and c.mult != 0 for c in idx]
        if any(uses[:-1]) or (uses[-1] and abs(idx[-1].mult) != 1):
            return False
    return True


def _reduce_kernel(ctx, eqn, domain, axes, roots, elementwise, names, producer, comments,
                   outer):
    """A segmented reduction over ``axes`` of ``domain`` (see the module docstring)."""
    kname = ctx.kernel_name()
    params, args, kinds = _kernel_params(ctx, _operands(ctx, outer))
    kept = [d for d in range(len(domain)) if d not in axes]
    K = int(np.prod([domain[d] for d in kept]))
    R = int(np.prod([domain[d] for d in axes]))
    ivars = [f"i{k}" for k in range(len(domain))]
    idx = tuple(Affine(v, 1, 0, 0, n - 1) for v, n in zip(ivars, domain))
    T = ctx.threads
    thread_mode = R <= THREAD_REDUCE
    em = _Emitter(ctx, names, producer, comments)
    em.reads = []
    accs = [f"_a{j}" for j in range(len(roots))]
    for (r, o, kind), acc in zip(roots, accs):
        e = producer[r]
        val = em.value(e.inputs[0], idx, 0)
        _reduce_step(em, kind, acc, val, o.dtype)
    for r, o, _ in elementwise:
        val = em.value(r, idx, 0)
        em.emit(0, f"{ctx.names[o]}[{', '.join(ivars)}] = {val}")
    # (the innermost axis kept, and long enough that a warp's neighbouring threads on
    # neighbouring kept elements read whole sectors: a thread per kept element, each
    # summing every P-th reduced element: the sum over a batch of a (B, H) gradient;
    # threads striding over the reduced elements would read one element a sector)
    column = not thread_mode and len(domain) - 1 not in axes and domain[-1] >= 8 and \
        _along_last(em.reads, ivars[-1])
    L = min(WARP, T)                    # (columns: a warp's lanes on L kept elements,
    W = T // L                          # the block's W warps on every W-th reduced one)
    CB = -(-K // L)
    if column:
        P = 1 if -(-R // W) <= COLUMN_ROWS else \
            max(1, min(-(-R // (W * COLUMN_ROWS)), TARGET_BLOCKS // CB))
    else:
        P = 1 if thread_mode else max(1, min(-(-R // (T * PER_THREAD)),
                                             max(1, TARGET_BLOCKS // max(K, 1))))
    # outputs: reductions as flat (K,) arrays (cells when K == 1), partials (K, P), or
    # (P, K) for columns (their second pass reads neighbouring kept elements)
    red_outs, part_names = [], []
    for j, (r, o, kind) in enumerate(roots):
        flat = f"{ctx.names[o]}_flat"
        ctx.lines.append(f"{flat} = _d.empty(({K},), {dtype_expr(o.dtype)})")
        red_outs.append(flat)
        if P > 1:
            part = f"{ctx.names[o]}_part"
            shape = (P, K) if column else (K, P)
            ctx.lines.append(f"{part} = _d.empty({shape}, {dtype_expr(o.dtype)})")
            part_names.append(part)
    ew_outs = [ctx.names[o] for _, o, _ in elementwise]
    dest = part_names if P > 1 else red_outs
    kinds += [(n, o.dtype, 2 if P > 1 else 1) for n, (_, o, _) in zip(dest, roots)]
    kinds += [(ctx.names[o], o.dtype, o.ndim) for _, o, _ in elementwise]
    kept_vars = [ivars[d] for d in kept]
    red_vars = [ivars[d] for d in axes]
    kept_dims = [domain[d] for d in kept]
    red_dims = [domain[d] for d in axes]
    inits = [f"{acc} = {loops._init(kind, r)}" for (r, o, kind), acc in zip(roots, accs)]
    lines = []
    if column:
        # a block per L kept elements (and per P-th of the reduced ones): lane l of
        # warp w sums kept element l's reduced elements w, w + W, ...; warp 0 adds the W
        # warps' sums from shared memory (one barrier) and writes them
        at = f"{'_p, ' if P > 1 else ''}_k"
        lines += ["_tid = cuda.threadIdx.x", f"_l = {mod('_tid', L)}",
                  f"_w = {floordiv('_tid', L)}"]
        if W > 1:
            lines += [f"{acc}_s = cuda.shared.array({T}, {_numba_type(o.dtype)})"
                      for (r, o, kind), acc in zip(roots, accs)]
        lines += [f"for _b in range(cuda.blockIdx.x, {CB * P}, cuda.gridDim.x):",
                  f"    _p = {floordiv('_b', CB)}",
                  f"    _k = (_b - _p * {CB}) * {L} + _l"]
        lines += ["    " + s for s in inits]
        lines.append(f"    if _k < {K}:")
        lines += _decode("_k", kept_dims, kept_vars, "        ")
        lines.append(f"        for _r in range(_p * {W} + _w, {R}, {P * W}):")
        lines += _decode("_r", red_dims, red_vars, "            ")
        lines += ["            " + s for s in em.lines]
        if W > 1:
            lines += [f"    {acc}_s[_tid] = {acc}" for acc in accs]
            lines += ["    cuda.syncthreads()", f"    if _w == 0 and _k < {K}:"]
            lines.append(f"        for _q in range(1, {W}):")
            lines += ["            " + line for (r, o, kind), acc in zip(roots, accs)
                      for line in _steps(kind, acc, acc, f"{acc}_s[_q * {L} + _l]",
                                         o.dtype)]
            lines += [f"        {d}[{at}] = {acc}" for d, acc in zip(dest, accs)]
            lines.append("    cuda.syncthreads()")
        else:
            lines.append(f"    if _k < {K}:")
            lines += [f"        {d}[{at}] = {acc}" for d, acc in zip(dest, accs)]
        blocks = max(1, min(CB * P, MAX_BLOCKS))
    elif thread_mode:
        lines.append(f"for _k in range(cuda.grid(1), {K}, cuda.gridsize(1)):")
        lines += _decode("_k", kept_dims, kept_vars, "    ")
        lines += ["    " + s for s in inits]
        lines.append(f"    for _r in range({R}):")
        lines += _decode("_r", red_dims, red_vars, "        ")
        lines += ["        " + s for s in em.lines]
        lines += [f"    {out}[_k] = {acc}" for out, acc in zip(red_outs, accs)]
        blocks = max(1, min(-(-K // T), MAX_BLOCKS))
    else:
        for (r, o, kind), acc in zip(roots, accs):
            lines.append(f"{acc}_s = cuda.shared.array({T}, {_numba_type(o.dtype)})")
        lines += ["_tid = cuda.threadIdx.x",
                  f"for _b in range(cuda.blockIdx.x, {K * P}, cuda.gridDim.x):",
                  f"    _k = {floordiv('_b', P)}", f"    _p = _b - _k * {P}"]
        lines += _decode("_k", kept_dims, kept_vars, "    ")
        lines += ["    " + s for s in inits]
        lines.append(f"    for _r in range(_p * {T} + _tid, {R}, {P * T}):")
        lines += _decode("_r", red_dims, red_vars, "        ")
        lines += ["        " + s for s in em.lines]
        warps = _block_combine([(acc, kind, o.dtype, loops._init(kind, r))
                                for (r, o, kind), acc in zip(roots, accs)], T)
        if warps is not None:
            lines += ["    " + s for s in warps] + ["    if _tid == 0:"]
            lines += [f"        {d}[_k{', _p' if P > 1 else ''}] = {acc}"
                      for d, acc in zip(dest, accs)]
        else:
            lines += [f"    {acc}_s[_tid] = {acc}" for acc in accs]
            lines += ["    cuda.syncthreads()", f"    _w = {T // 2}", "    while _w > 0:",
                      "        if _tid < _w:"]
            lines += ["            " + line for (r, o, kind), acc in zip(roots, accs)
                      for line in _steps(kind, f"{acc}_s[_tid]", f"{acc}_s[_tid]",
                                         f"{acc}_s[_tid + _w]", o.dtype)]
            lines += ["        cuda.syncthreads()", "        _w //= 2", "    if _tid == 0:"]
            lines += [f"        {d}[_k{', _p' if P > 1 else ''}] = {acc}_s[0]"
                      for d, acc in zip(dest, accs)]
        lines.append("    cuda.syncthreads()")
        blocks = max(1, min(K * P, MAX_BLOCKS))
    consts = _finish_kernel(ctx, kname, params + dest + ew_outs, lines, kinds)
    ctx.lines.append(_launch(ctx, kname, blocks, T, args + dest + ew_outs + consts))
    if P > 1:                       # the second pass: each kept element's P partials
        fname = ctx.kernel_name()
        flines = [f"for _k in range(cuda.grid(1), {K}, cuda.gridsize(1)):"]
        fkinds = []
        for j, ((r, o, kind), part, out) in enumerate(zip(roots, part_names, red_outs)):
            at = (lambda p: f"{part}[{p}, _k]") if column else (lambda p: f"{part}[_k, {p}]")
            flines.append(f"    _a = {at(0)}")
            flines.append(f"    for _p in range(1, {P}):")
            flines += ["        " + line
                       for line in _steps(kind, "_a", "_a", at("_p"), o.dtype)]
            flines.append(f"    {out}[_k] = _a")
            fkinds += [(part, o.dtype, 2), (out, o.dtype, 1)]
        fparams = [n for pair in zip(part_names, red_outs) for n in pair]
        _finish_kernel(ctx, fname, fparams, flines, fkinds)
        ctx.lines.append(_launch(ctx, fname, max(1, min(-(-K // T), MAX_BLOCKS)), T,
                                 fparams))
    for (r, o, kind), flat in zip(roots, red_outs):
        shape = tuple(o.shape)
        ctx.lines.append(f"{ctx.names[o]} = {flat}" if shape in ((), (K,))
                         else f"{ctx.names[o]} = _d.reshape({flat}, {shape!r})")


# ---------------------------------------------------------------- contractions

def _contractible(eqn) -> bool:
    x, y = eqn.inputs
    out = eqn.outputs[0]
    return (np.dtype(out.dtype).kind in "fiu" and np.dtype(x.dtype) == np.dtype(y.dtype)
            == np.dtype(out.dtype))


def _einsum(ctx, eqn):
    x, y = eqn.inputs
    out = eqn.outputs[0]
    spec = eqn.params["spec"]
    sa, sb, so = parse_spec(spec)
    size = dict(zip(sa, x.shape)) | dict(zip(sb, y.shape))
    batch = [c for c in so if c in sa and c in sb]
    m_letters = [c for c in so if c in sa and c not in sb]
    n_letters = [c for c in so if c in sb and c not in sa]
    k_letters = [c for c in dict.fromkeys(sa + sb) if c not in so]
    B = int(np.prod([size[c] for c in batch]))
    M = int(np.prod([size[c] for c in m_letters]))
    N = int(np.prod([size[c] for c in n_letters]))
    K = int(np.prod([size[c] for c in k_letters]))
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    oname = ctx.names[out]
    shape = tuple(out.shape) or (1,)
    operands = [v for v in (x, y) if not isinstance(v, Lit)]
    for v in operands:
        if v.ndim:
            ctx.on_device(v)                    # (copies made before the branch below)
    if np.dtype(out.dtype).kind == "f" and x.ndim and y.ndim and len(operands) == 2:
        # CuPy's einsum (cuBLAS) when installed; the kernel below otherwise
        fallback_line = len(ctx.lines)
    else:
        fallback_line = None
    letter_var = {c: f"_l{k}" for k, c in enumerate(dict.fromkeys(sa + sb))}

    def read(v, letters):
        return ctx.element(v, ", ".join(letter_var[c] for c in letters))

    params, args, kinds = _kernel_params(ctx, list(dict.fromkeys(operands)))
    ctx.lines.append(f"{oname} = _d.empty({shape!r}, {dtype_expr(out.dtype)})")
    kinds.append((oname, out.dtype, len(shape)))
    kname = ctx.kernel_name()
    zero = scalar_literal(0, out.dtype)
    out_index = ", ".join(letter_var[c] for c in so) if so else "0"
    dims = lambda letters: [size[c] for c in letters]          # noqa: E731
    names = lambda letters: [letter_var[c] for c in letters]   # noqa: E731
    outs = batch + m_letters + n_letters
    if B * M * N <= SMALL_OUTPUT and K >= LONG_SUM or K <= DIRECT_SUM:
        # a segmented reduction (each output element's sum split over P blocks), or a
        # short sum (an outer product, a scaling): one thread per result element
        _sum_kernel(ctx, kname, oname, out.dtype, len(shape), params, args, kinds[:-1],
                    dims(outs), names(outs), out_index, dims(k_letters), names(k_letters),
                    [f"_a += {read(x, sa)} * {read(y, sb)}"], segmented=K > DIRECT_SUM)
    else:
        # tiled: a (TILE x TILE) block computes a tile of the (B, M, N) result, staging
        # TILE-wide slabs of both operands (read through their index maps) in shared memory
        t = ctx.tile
        TM, TN = -(-M // t), -(-N // t)
        nt = _numba_type(out.dtype)
        lines = [f"_sx = cuda.shared.array(({t}, {t}), {nt})",
                 f"_sy = cuda.shared.array(({t}, {t}), {nt})",
                 "_tx = cuda.threadIdx.x", "_ty = cuda.threadIdx.y",
                 f"for _b in range(cuda.blockIdx.x, {B * TM * TN}, cuda.gridDim.x):",
                 f"    _z = {floordiv('_b', TM * TN)}", f"    _q = _b - _z * {TM * TN}",
                 f"    _m = {floordiv('_q', TN)} * {t} + _ty",
                 f"    _n = {mod('_q', TN)} * {t} + _tx",
                 f"    _a = {zero}"]
        lines += _decode("_z", dims(batch), names(batch), "    ")

        def stage(tile, k, by, outer, outer_letters, bound, value):
            """Load this thread's element of an operand's tile (zero outside it)."""
            pad = "            "
            return ([f"        {k} = _k0 + {by}", f"        if {outer} < {bound} and {k} < {K}:"]
                    + _decode(outer, dims(outer_letters), names(outer_letters), pad)
                    + _decode(k, dims(k_letters), names(k_letters), pad)
                    + [f"{pad}{tile}[_ty, _tx] = {value}", "        else:",
                       f"{pad}{tile}[_ty, _tx] = {zero}"])
        lines.append(f"    for _k0 in range(0, {K}, {t}):")
        lines += stage("_sx", "_kx", "_tx", "_m", m_letters, M, read(x, sa))
        lines += stage("_sy", "_ky", "_ty", "_n", n_letters, N, read(y, sb))
        lines += ["        cuda.syncthreads()",
                  f"        for _kk in range({t}):",
                  "            _a += _sx[_ty, _kk] * _sy[_kk, _tx]",
                  "        cuda.syncthreads()",
                  f"    if _m < {M} and _n < {N}:"]
        lines += _decode("_m", dims(m_letters), names(m_letters), "        ")
        lines += _decode("_n", dims(n_letters), names(n_letters), "        ")
        lines += [f"        {oname}[{out_index}] = _a"]
        consts = _finish_kernel(ctx, kname, params + [oname], lines, kinds)
        blocks = max(1, min(B * TM * TN, MAX_BLOCKS))
        ctx.lines.append(_launch(ctx, kname, blocks, f"({t}, {t})",
                                 args + [oname] + consts))
    if fallback_line is not None:
        # the kernel launches above become the fallback of a CuPy call
        launches = ctx.lines[fallback_line + 1:]
        alloc = ctx.lines[fallback_line]
        ctx.lines[fallback_line:] = [
            "if _d.cupy_einsum is not None:",
            f"    {oname} = _d.cupy_einsum({spec!r}, {ctx.on_device(x)}, "
            f"{ctx.on_device(y)}, {shape!r})",
            "else:", "    " + alloc] + ["    " + s for s in launches]


def _sum_kernel(ctx, kname, oname, dtype, out_ndim, params, args, kinds, out_dims,
                out_vars, out_index, sum_dims, sum_vars, terms, segmented):
    """Kernels computing ``oname[out_index] = sum of the terms`` (lines adding to ``_a``,
    reading the variables ``out_vars`` and ``sum_vars``) for every output element: with
    ``segmented``, each element's sum split over P blocks (a shared-memory tree, then a
    second kernel over the P partials), else a thread per element."""
    T = ctx.threads
    NO, K = int(np.prod(out_dims)), int(np.prod(sum_dims))
    zero = scalar_literal(0, dtype)
    out_kind = (oname, dtype, out_ndim)
    if not segmented:
        lines = [f"for _o in range(cuda.grid(1), {NO}, cuda.gridsize(1)):"]
        lines += _decode("_o", out_dims, out_vars, "    ")
        lines.append(f"    _a = {zero}")
        if sum_dims:
            lines.append(f"    for _r in range({K}):")
            lines += _decode("_r", sum_dims, sum_vars, "        ")
            lines += ["        " + t for t in terms]
        else:
            lines += ["    " + t for t in terms]
        lines.append(f"    {oname}[{out_index}] = _a")
        consts = _finish_kernel(ctx, kname, params + [oname], lines, kinds + [out_kind])
        ctx.lines.append(_launch(ctx, kname, max(1, min(-(-NO // T), MAX_BLOCKS)), T,
                                 args + [oname] + consts))
        return
    P = max(1, min(-(-K // (T * PER_THREAD)), max(1, TARGET_BLOCKS // max(NO, 1))))
    part = f"{oname}_part"
    ctx.lines.append(f"{part} = _d.empty(({NO}, {P}), {dtype_expr(dtype)})")
    lines = [f"_a_s = cuda.shared.array({T}, {_numba_type(dtype)})",
             "_tid = cuda.threadIdx.x",
             f"for _b in range(cuda.blockIdx.x, {NO * P}, cuda.gridDim.x):",
             f"    _o = {floordiv('_b', P)}", f"    _p = _b - _o * {P}"]
    lines += _decode("_o", out_dims, out_vars, "    ")
    lines += [f"    _a = {zero}", f"    for _r in range(_p * {T} + _tid, {K}, {P * T}):"]
    lines += _decode("_r", sum_dims, sum_vars, "        ")
    lines += ["        " + t for t in terms]
    warps = _block_combine([("_a", "sum", dtype, zero)], T)
    if warps is not None:
        lines += ["    " + s for s in warps] + ["    if _tid == 0:",
                                                 f"        {part}[_o, _p] = _a"]
    else:
        lines += ["    _a_s[_tid] = _a", "    cuda.syncthreads()", f"    _w = {T // 2}",
                  "    while _w > 0:", "        if _tid < _w:",
                  "            _a_s[_tid] += _a_s[_tid + _w]", "        cuda.syncthreads()",
                  "        _w //= 2", "    if _tid == 0:", f"        {part}[_o, _p] = _a_s[0]"]
    lines.append("    cuda.syncthreads()")
    consts = _finish_kernel(ctx, kname, params + [part], lines, kinds + [(part, dtype, 2)])
    ctx.lines.append(_launch(ctx, kname, max(1, min(NO * P, MAX_BLOCKS)), T,
                             args + [part] + consts))
    fname = ctx.kernel_name()
    flines = [f"for _o in range(cuda.grid(1), {NO}, cuda.gridsize(1)):"]
    flines += _decode("_o", out_dims, out_vars, "    ")
    flines += ["    _a = " + zero, f"    for _p in range({P}):",
               f"        _a += {part}[_o, _p]", f"    {oname}[{out_index}] = _a"]
    _finish_kernel(ctx, fname, [part, oname], flines, [(part, dtype, 2), out_kind])
    ctx.lines.append(_launch(ctx, fname, max(1, min(-(-NO // T), MAX_BLOCKS)), T,
                             [part, oname]))


# ---------------------------------------------------------------- along an axis

def _along_axis(ctx, eqn):
    """``argmax``, ``argmin``, ``cumsum`` along ``axis`` (NumPy's ties and NaNs: the first
    maximum, the first NaN; a prefix or, with ``reverse``, a suffix sum): a thread per
    line, walking it in order; for a few long lines, a block per line (the threads'
    chunks or strides combined in shared memory)."""
    x = eqn.inputs[0]
    out = eqn.outputs[0]
    axis, n = eqn.params["axis"], int(x.shape[eqn.params["axis"]])
    kept = [int(d) for k, d in enumerate(x.shape) if k != axis]
    lines_n = int(np.prod(kept))
    kvars = [f"_m{k}" for k in range(len(kept))]

    def at(j):
        sub = kvars[:axis] + [j] + kvars[axis:]
        return ctx.element(x, ", ".join(sub))
    oname = ctx.names[out]
    name = eqn.prim.name
    T = ctx.threads
    block = n >= 8 * T and lines_n < 4096
    here = ", ".join(kvars[:axis] + ["_j"] + kvars[axis:])
    zero = f"{dtype_expr(out.dtype)}(0)"        # (typed: a bool or int8 sums as NumPy's)
    reverse = name == "cumsum" and eqn.params["reverse"]
    head = []
    if block:
        lines = ["_tid = cuda.threadIdx.x",
                 f"for _l in range(cuda.blockIdx.x, {lines_n}, cuda.gridDim.x):"]
    else:
        lines = [f"for _l in range(cuda.grid(1), {lines_n}, cuda.gridsize(1)):"]
    lines += _decode("_l", kept, kvars, "    ")
    if name == "cumsum" and block:
        # each thread sums a chunk, the chunks' totals are scanned, then added back
        chunk = -(-n // T)
        j = f"{n - 1} - _q" if reverse else "_q"
        head.append(f"_tot = cuda.shared.array({T}, {_numba_type(out.dtype)})")
        lines += [f"    _lo = _tid * {chunk}", f"    _hi = min({n}, _lo + {chunk})",
                  f"    _a = {zero}", "    for _q in range(_lo, _hi):", f"        _j = {j}",
                  f"        _a += {at('_j')}", f"        {oname}[{here}] = _a",
                  "    _tot[_tid] = _a", "    cuda.syncthreads()", "    if _tid == 0:",
                  f"        _run = {zero}", f"        for _p in range({T}):",
                  "            _v = _tot[_p]", "            _tot[_p] = _run",
                  "            _run += _v", "    cuda.syncthreads()", "    _off = _tot[_tid]",
                  "    for _q in range(_lo, _hi):", f"        _j = {j}",
                  f"        {oname}[{here}] += _off", "    cuda.syncthreads()"]
        shape = tuple(out.shape)
    elif name == "cumsum":
        steps = f"range({n} - 1, -1, -1)" if reverse else f"range({n})"
        lines += [f"    _a = {zero}", f"    for _j in {steps}:",
                  f"        _a += {at('_j')}", f"        {oname}[{here}] = _a"]
        shape = tuple(out.shape)
    else:
        better = ">" if name == "argmax" else "<"
        # (v, j) beats (best, k) when v is larger (smaller), or NaN where best is not;
        # scanning j upwards keeps the first of equals
        beats = f"_v {better} _best or (_v != _v and _best == _best)"
        where = f"{oname}[{', '.join(kvars) or '0'}]"
        if block:
            dt = _numba_type(x.dtype)
            head += [f"_bv = cuda.shared.array({T}, {dt})",
                     f"_bk = cuda.shared.array({T}, numba.int64)"]
            lines += [f"    _best = {at('_tid')}", "    _k = _tid",
                      f"    for _j in range(_tid + {T}, {n}, {T}):",
                      f"        _v = {at('_j')}", f"        if {beats}:",
                      "            _best = _v", "            _k = _j",
                      "    _bv[_tid] = _best", "    _bk[_tid] = _k", "    cuda.syncthreads()",
                      f"    _w = {T // 2}", "    while _w > 0:", "        if _tid < _w:",
                      "            _best, _k = _bv[_tid], _bk[_tid]",
                      "            _v, _j = _bv[_tid + _w], _bk[_tid + _w]",
                      f"            if {beats} or (_v == _best and _j < _k) or "
                      "(_v != _v and _best != _best and _j < _k):",
                      "                _bv[_tid] = _v", "                _bk[_tid] = _j",
                      "        cuda.syncthreads()", "        _w //= 2",
                      "    if _tid == 0:", f"        {where} = _bk[0]", "    cuda.syncthreads()"]
        else:
            lines += [f"    _best = {at('0')}", "    _k = 0", f"    for _j in range(1, {n}):",
                      f"        _v = {at('_j')}", f"        if {beats}:",
                      "            _best = _v", "            _k = _j", f"    {where} = _k"]
        shape = tuple(out.shape) or (1,)
    operands = [x] if not isinstance(x, Lit) else []
    params, args, kinds = _kernel_params(ctx, operands)
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    ctx.lines.append(f"{oname} = _d.empty({shape!r}, {dtype_expr(out.dtype)})")
    kname = ctx.kernel_name()
    consts = _finish_kernel(ctx, kname, params + [oname], head + lines,
                            kinds + [(oname, out.dtype, len(shape))])
    blocks = lines_n if block else -(-lines_n // T)
    ctx.lines.append(_launch(ctx, kname, max(1, min(blocks, MAX_BLOCKS)), T,
                             args + [oname] + consts))


def _search(ctx, eqn):
    """``searchsorted``: a thread per value, a binary search in the sorted array.  It moves
    past ``a[mid]`` when that comes before the value (``side="left"``) or not after it
    (``"right"``), in NumPy's order, where NaNs come last."""
    a, v = eqn.inputs
    out = eqn.outputs[0]
    oname = ctx.names[out]
    vvars = [f"_m{k}" for k in range(v.ndim)]
    here = ", ".join(vvars) or "0"
    size = int(np.prod(v.shape, dtype=np.int64))
    before = "_a < _x or (_x != _x and _a == _a)" if eqn.params["side"] == "left" else \
        "not (_x < _a or (_a != _a and _x == _x))"
    lines = [f"for _i in range(cuda.grid(1), {size}, cuda.gridsize(1)):"]
    lines += _decode("_i", [int(d) for d in v.shape], vvars, "    ")
    lines += [f"    _x = {ctx.element(v, here)}", "    _lo = 0", f"    _hi = {int(a.shape[0])}",
              "    while _lo < _hi:", "        _mid = (_lo + _hi) // 2",
              f"        _a = {ctx.element(a, '_mid')}", f"        if {before}:",
              "            _lo = _mid + 1", "        else:", "            _hi = _mid",
              f"    {oname}[{here}] = _lo"]
    shape = tuple(out.shape) or (1,)
    params, args, kinds = _kernel_params(ctx, [x for x in (a, v) if not isinstance(x, Lit)])
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    ctx.lines.append(f"{oname} = _d.empty({shape!r}, np.int64)")
    kname = ctx.kernel_name()
    consts = _finish_kernel(ctx, kname, params + [oname], lines,
                            kinds + [(oname, out.dtype, len(shape))])
    blocks = max(1, min(-(-size // ctx.threads), MAX_BLOCKS))
    ctx.lines.append(_launch(ctx, kname, blocks, ctx.threads, args + [oname] + consts))


# ---------------------------------------------------------------- convolutions

def _conv(ctx, eqn):
    """``conv2d`` (each output element a sum over channels and the kernel window) and
    ``conv2d_over_batch`` (the kernel's gradient: a sum over the batch and the output
    positions), read in place with the padding as bounds tests: a thread per output
    element, or a segmented reduction when there are few outputs and long sums."""
    image, other = eqn.inputs
    out = eqn.outputs[0]
    (top, _), (left, _) = eqn.params["padding"]
    _, _, H, W = image.shape
    ctx.on_device(image), ctx.on_device(other)
    params, args, kinds = _kernel_params(ctx, list(dict.fromkeys([image, other])))
    i, k = ctx.names[image], ctx.names[other]
    oname = ctx.names[out]
    if eqn.prim.name != "conv2d_over_batch":
        # out[n, o, y, x] = sum over c, u, v of I[n, c, y+u-top, x+v-left] K[o, c, u, v]
        out_vars, sum_vars = ["_n", "_f", "_y", "_x"], ["_c", "_u", "_v"]
        sum_dims = list(other.shape[1:])
        term = f"_a += {i}[_n, _c, _ih, _iw] * {k}[_f, _c, _u, _v]"
    else:
        # out[c, o, u, v] = sum over n, y, x of I[n, c, y+u-top, x+v-left] G[n, o, y, x]
        out_vars, sum_vars = ["_c", "_f", "_u", "_v"], ["_n", "_y", "_x"]
        sum_dims = [other.shape[0], other.shape[2], other.shape[3]]
        term = f"_a += {i}[_n, _c, _ih, _iw] * {k}[_n, _f, _y, _x]"
    terms = [f"_ih = _y + _u - {top}", f"_iw = _x + _v - {left}",
             f"if 0 <= _ih < {H} and 0 <= _iw < {W}:", "    " + term]
    if eqn.prim.name in ("conv2d", "conv2d_over_batch") and not is_plain(eqn.params):
        # strides, dilation, groups: the taps at y·sh + u·dh - top, the input channels of
        # the output channel's group
        (sh, sw), (dh, dw), groups = conv_options(eqn.params)
        if eqn.prim.name == "conv2d":
            cg, og = other.shape[1], other.shape[0] // groups
            term = f"{k}[_f, _c, _u, _v]"
        else:
            cg, og = out.shape[0], other.shape[1] // groups
            term = f"{k}[_n, _f, _y, _x]"
        group = "_f" if og == 1 else f"(_f // {og})"
        channel = "_c" if groups == 1 else f"{group} * {cg} + _c"
        terms = [f"_ih = _y * {sh} + _u * {dh} - {top}", f"_iw = _x * {sw} + _v * {dw} - {left}",
                 f"if 0 <= _ih < {H} and 0 <= _iw < {W}:",
                 f"    _a += {i}[_n, {channel}, _ih, _iw] * {term}"]
    if eqn.prim.name == "conv2d_dilated_input":
        # the image gradient of a strided convolution (passes.conv.dilated_inputs): the
        # taps that meet an entry of I, I[.., (y+u·dh-top)/sh, (x+v·dw-left)/sw], only
        sh, sw = eqn.params["input_dilation"]
        _, (dh, dw), groups = conv_options(eqn.params)
        cg, og = out.shape[1] // groups, other.shape[1]
        group = "_f" if cg == 1 else f"(_f // {cg})"
        channel = "_c" if groups == 1 else f"{group} * {og} + _c"
        on_grid = " and ".join([f"_ih * {sh} == _ty"] * (sh > 1) + [f"_iw * {sw} == _tx"] *
                               (sw > 1) + [f"_ih < {H}", f"_iw < {W}"])
        terms = [f"_ty = _y + _u * {dh} - {top}", f"_tx = _x + _v * {dw} - {left}",
                 "if _ty >= 0 and _tx >= 0:",
                 f"    _ih = {floordiv('_ty', sh)}", f"    _iw = {floordiv('_tx', sw)}",
                 f"    if {on_grid}:",
                 f"        _a += {i}[_n, {channel}, _ih, _iw] * {k}[_f, _c, _u, _v]"]
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    ctx.lines.append(f"{oname} = _d.empty({tuple(out.shape)!r}, {dtype_expr(out.dtype)})")
    NO, K = int(np.prod(out.shape)), int(np.prod(sum_dims))
    _sum_kernel(ctx, ctx.kernel_name(), oname, out.dtype, 4, params, args, kinds,
                list(out.shape), out_vars, ", ".join(out_vars), sum_dims, sum_vars,
                terms, segmented=K >= LONG_SUM and NO < 65536)


# ---------------------------------------------------------------- solve

def _solve(ctx, eqn):
    """``solve(a, b)``: CuPy's ``linalg.solve`` (cuSOLVER) when installed, else a kernel
    with a block per system: Gaussian elimination with partial pivoting (thread 0 picks
    the pivot, the block swaps the rows and updates the trailing rows of the matrix and
    of the right-hand sides together; the multipliers by the pivot's reciprocal, as
    LAPACK's ``getf2`` scales the column), then column-oriented back substitution.  A
    singular matrix (a zero pivot, LAPACK's ``info > 0``; cuSOLVER's status) raises
    gradc's error as NumPy raises ``LinAlgError`` (``Checks``), where JAX gives
    infinities or NaNs.  (Whether rounding makes a pivot of a nearly singular matrix
    exactly zero depends on the order of operations, which differs between LAPACKs
    too: such a matrix may raise here and not in NumPy, or the other way round.)"""
    from .pysource import linalg_failure
    a, b = eqn.inputs
    out = eqn.outputs[0]
    n = int(a.shape[-1])
    systems = int(np.prod(a.shape[:-2]))
    k = 1 if b.ndim == 1 else int(b.shape[-1])
    oname = ctx.names[out]
    da, db = ctx.on_device(a), ctx.on_device(b)
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    kname = ctx.kernel_name()
    ctx.checks.append(linalg_failure(eqn))
    code = len(ctx.checks)
    lines = [
        "_piv = cuda.shared.array(1, numba.int64)",
        "_tid = cuda.threadIdx.x", "_nt = cuda.blockDim.x",
        f"for _b in range(cuda.blockIdx.x, {systems}, cuda.gridDim.x):",
        f"    for _c in range({n}):",
        "        if _tid == 0:",                    # the pivot: the largest |a[r, c]|, r >= c
        "            _p = _c",
        "            _best = abs(a[_b, _c, _c])",
        f"            for _r in range(_c + 1, {n}):",
        "                if abs(a[_b, _r, _c]) > _best:",
        "                    _best = abs(a[_b, _r, _c])",
        "                    _p = _r",
        "            _piv[0] = _p",
        "            if _best == 0:",              # (exactly: NaNs go through, as LAPACK's)
        f"                {_flag(code)}",
        "        cuda.syncthreads()",
        "        _p = _piv[0]",
        "        if _p != _c:",
        f"            for _j in range(_c + _tid, {n}, _nt):",
        "                _v = a[_b, _c, _j]",
        "                a[_b, _c, _j] = a[_b, _p, _j]",
        "                a[_b, _p, _j] = _v",
        f"            for _j in range(_tid, {k}, _nt):",
        "                _v = x[_b, _c, _j]",
        "                x[_b, _c, _j] = x[_b, _p, _j]",
        "                x[_b, _p, _j] = _v",
        "        cuda.syncthreads()",
        f"        _w = {n} - _c - 1",
        "        _inv = 1 / a[_b, _c, _c]",
        f"        for _e in range(_tid, _w * (_w + {k}), _nt):",
        f"            _r = _c + 1 + _e // (_w + {k})",
        f"            _q = _e % (_w + {k})",
        "            _f = a[_b, _r, _c] * _inv",
        "            if _q < _w:",
        "                a[_b, _r, _c + 1 + _q] -= _f * a[_b, _c, _c + 1 + _q]",
        "            else:",
        "                x[_b, _r, _q - _w] -= _f * x[_b, _c, _q - _w]",
        "        cuda.syncthreads()",
        f"    for _c in range({n} - 1, -1, -1):",
        f"        for _j in range(_tid, {k}, _nt):",
        "            x[_b, _c, _j] = x[_b, _c, _j] / a[_b, _c, _c]",
        "        cuda.syncthreads()",
        f"        for _e in range(_tid, _c * {k}, _nt):",
        f"            _r = {floordiv('_e', k)}",
        f"            _j = _e - _r * {k}",
        "            x[_b, _r, _j] -= a[_b, _r, _c] * x[_b, _c, _j]",
        "        cuda.syncthreads()",
    ]
    _finish_kernel(ctx, kname, ["a", "x", "_chk"], lines,
                   [("a", out.dtype, 3), ("x", out.dtype, 3), ("_chk", np.int32, 1)])
    threads = min(ctx.threads, max(32, -(-(n * (n + k)) // 32) * 32)) \
        if ctx.threads >= 32 else ctx.threads
    work = ctx.temp()
    launch = _launch(ctx, kname, max(1, min(systems, MAX_BLOCKS)), threads,
                     [work, f"_d.reshape({oname}, ({systems}, {n}, {k}))", "_checks.cell"])
    ctx.lines += [
        "if _d.cupy_solve is not None:",
        f"    {oname} = _d.cupy_solve({da}, {db}, _checks.messages[{code - 1}])",
        "else:",
        f"    {work} = _d.reshape(_d.copy({da}), ({systems}, {n}, {n}))",
        f"    {oname} = _d.copy({db})", "    " + launch]


def _flag(code: int) -> str:
    """The line flagging check ``code`` in the program's error cell (``Checks``) unless
    an earlier one is there: the first failure is the one reported, as NumPy raises at
    the first (kernels run in the program's order)."""
    return f"cuda.atomic.compare_and_swap(_chk, 0, {code})"


def _on_cupy(eqn) -> bool:
    """A primitive CuPy computes on the device (``cuda.LIBRARY``: decompositions of float
    matrices, argsort of real arrays), CuPy installed."""
    from . import cuda
    if cuda.cupy_library is None or eqn.prim.name not in cuda.LIBRARY or \
            not isinstance(eqn.inputs[0], Var) or not eqn.inputs[0].ndim:
        return False
    kinds = "biuf" if eqn.prim.name == "argsort" else "f"
    return np.dtype(eqn.inputs[0].dtype).kind in kinds and \
        np.dtype(eqn.inputs[0].dtype) != np.float16


def _library(ctx, eqn):
    """``cholesky``, ``eigh``, ``svd``, ``qr``, ``det``, ``slogdet``, ``cofactor`` (det's
    gradient) by CuPy (cuSOLVER), and ``argsort`` (its stable sort), on the device: arrays
    stay there, rank-0 results (one matrix's determinant) come back as host scalars.
    Without CuPy these run on the host (``_host``)."""
    from .pysource import LINALG_FAILURES, linalg_failure
    a = eqn.inputs[0]
    outs = [ctx.names[v] for v in eqn.outputs]
    params = "".join(f", {k}={v!r}" for k, v in eqn.params.items())
    if eqn.prim.name in LINALG_FAILURES:    # (cuSOLVER's status checked: ``_raising``)
        ctx.checks.append(linalg_failure(eqn))
        params = f", _checks.messages[{len(ctx.checks) - 1}]" + params
    ctx.lines.append(f"{', '.join(outs)}, = _d.cupy_library({eqn.prim.name!r}, "
                     f"{ctx.on_device(a)}{params})   # CuPy")
    for v in eqn.outputs:
        ctx.place[v] = "dev" if v.ndim else "host"
        if v.ndim:
            ctx.fresh.add(v)


# ---------------------------------------------------------------- indexing

def _indexable(eqn) -> bool:
    """Indexing equations with a kernel: ``gather`` always; ``scatter_add`` of floats
    (repeated indices add up with atomics); ``index_set`` of an array (with index
    arrays, NumPy's last write wins: see ``_indexing``)."""
    name = eqn.prim.name
    if name == "gather":
        return eqn.inputs[0].ndim > 0
    if name == "scatter_add":
        return np.dtype(eqn.inputs[0].dtype) in (np.float32, np.float64)
    if name == "scatter_extremum":            # (the dtypes of CUDA's atomic max and min)
        return eqn.inputs[0].ndim > 0 and np.dtype(eqn.inputs[0].dtype) in (
            np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64)
    return eqn.inputs[0].ndim > 0


def _indexing(ctx, eqn):
    """``gather``, ``scatter_add``, ``index_set`` as a grid-stride loop over the window
    ``x[spec]`` (``codegen.indexing``'s plan of NumPy's indexing rules).  An
    ``index_set`` through index arrays may write one element several times, and NumPy
    keeps the last write (in the window's C order): a first kernel takes, per element,
    the largest window position writing it (an atomic max), a second writes only
    from that position.  ``scatter_extremum`` combines with CUDA's atomic max or min
    into a copy of ``x``; for floats the atomics only ever see numbers (their NaN rules
    have changed between versions): a first kernel puts the identity (-inf for a
    maximum) where ``x`` is NaN, the window's kernel records in flags which positions
    saw a NaN update or a number, and a last kernel writes NumPy's NaNs
    (``maximum``/``minimum``: any NaN; ``fmax``/``fmin``: NaN and no number)."""
    from ..prims.index import _indexed_shape
    from .indexing import _index_plan, bounds_message
    name, spec = eqn.prim.name, tuple(eqn.params["spec"])
    out = eqn.outputs[0]
    if name == "gather":
        x, *idx = eqn.inputs
        x_shape = tuple(x.shape)
    elif name == "scatter_add":
        v, *idx = eqn.inputs
        x_shape = tuple(eqn.params["shape"])
    else:
        x, v, *idx = eqn.inputs
        x_shape = tuple(x.shape)
    after = None                        # a kernel after the window's (scatter_extremum)
    loops, position = _index_plan(x_shape, spec, [tuple(i.shape) for i in idx])
    window = tuple(n for _, n in loops)
    assert window == tuple(_indexed_shape(x_shape, spec, idx))
    # index arrays are parameters ``i0, i1 ...`` in the plan: here, their kernel names
    operands = [a for a in eqn.inputs if not isinstance(a, Lit)]
    params, args, kinds = _kernel_params(ctx, list(dict.fromkeys(operands)))

    operand = ctx.element
    checks = []             # each index array's element read: (local, its read, axis size)

    def resolve(text: str) -> str:
        def index_ref(m):
            k, sub = int(m.group(1)), m.group(2)
            return operand(idx[k], sub[1:-1]) if sub else operand(idx[k], "")
        text = re.sub(r"\bi(\d+)(\[[^\]]*\])?", index_ref, text)
        while "_k.wrap_index(" in text:         # NumPy's negative indices, inline
            start = text.index("_k.wrap_index(")
            depth, j = 0, start + len("_k.wrap_index(")
            while not (text[j] == ")" and depth == 0):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            ref, n = text[start + len("_k.wrap_index("):j].rsplit(", ", 1)
            local = f"_x{len(checks)}"
            checks.append((local, ref, int(n)))
            text = f"{text[:start]}({local} + {n} if {local} < 0 else {local}){text[j + 1:]}"
        return text

    pos = resolve(", ".join(position)) if x_shape else "0"
    here = ", ".join(o for o, _ in loops) if window else "0"
    oname = ctx.names[out]
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    shape = tuple(out.shape) or (1,)
    size = int(np.prod(window)) if window else 1
    T = ctx.threads
    blocks = max(1, min(-(-size // T), MAX_BLOCKS))
    lines = [f"for _i in range(cuda.grid(1), {size}, cuda.gridsize(1)):"]
    lines += _decode("_i", list(window), [o for o, _ in loops], "    ")
    if checks:
        # (an index array's values were valid when the graph was traced; a later call's
        # value out of bounds flags the program's error cell, which the host function
        # reads before it returns (``Checks``), and reads or writes nothing)
        for local, ref, n in checks:
            ctx.checks.append(bounds_message(eqn, n))
            lines += [f"    {local} = {ref}", f"    if {local} < {-n} or {local} >= {n}:",
                      f"        {_flag(len(ctx.checks))}", "        continue"]
        params, args = params + ["_chk"], args + ["_checks.cell"]
        kinds = kinds + [("_chk", np.int32, 1)]
    if name == "gather":
        ctx.lines.append(f"{oname} = _d.empty({shape!r}, {dtype_expr(out.dtype)})")
        lines.append(f"    {oname}[{here}] = {operand(x, pos)}")
    else:
        value = operand(v, here) if v.ndim else operand(v, "")
        if name == "scatter_add":
            ctx.lines.append(f"{oname} = _d.zeros({shape!r}, {dtype_expr(out.dtype)})")
            where = pos if len(shape) == 1 else f"({pos})"     # (a 1-tuple does not lower)
            lines.append(f"    cuda.atomic.add({oname}, {where}, {value})")
        elif name == "scatter_extremum":
            after, extra = _extremum_kernels(ctx, eqn, lines, value, pos, params, args,
                                             kinds)
            params = params + [k[0] for k in extra]
            args, kinds = args + [k[0] for k in extra], kinds + extra
        elif any(e[0] == "a" for e in spec):
            ctx.lines.append(f"{oname} = _d.copy({ctx.on_device(x)})")
            last = f"{oname}_last"                # 1 + the last position writing there
            ctx.lines.append(f"{last} = _d.zeros({shape!r}, np.int64)")
            where = pos if len(shape) == 1 else f"({pos})"
            first = lines + [f"    cuda.atomic.max({last}, {where}, _i + 1)"]
            kname = ctx.kernel_name()
            consts = _finish_kernel(ctx, kname, params + [last], first,
                                    kinds + [(last, np.int64, len(shape))])
            ctx.lines.append(_launch(ctx, kname, blocks, T, args + [last] + consts))
            lines += [f"    if {last}[{pos}] == _i + 1:", f"        {oname}[{pos}] = {value}"]
            params, args = params + [last], args + [last]
            kinds = kinds + [(last, np.int64, len(shape))]
        else:
            ctx.lines.append(f"{oname} = _d.copy({ctx.on_device(x)})")
            lines.append(f"    {oname}[{pos}] = {value}")
    kname = ctx.kernel_name()
    kinds.append((oname, out.dtype, len(shape)))
    consts = _finish_kernel(ctx, kname, params + [oname], lines, kinds)
    ctx.lines.append(_launch(ctx, kname, blocks, T, args + [oname] + consts))
    if after is not None:
        after()


def _extremum_kernels(ctx, eqn, lines, value, pos, params, args, kinds):
    """``scatter_extremum``'s copy of ``x`` and the window kernel's ``lines`` (extended
    here); for floats, also the kernel before (NaNs of ``x`` set aside).  Returns a
    function recording the kernel after (NaN results; None for integers) and the
    window kernel's extra parameters, ``(name, dtype, ndim)`` (the flags)."""
    x, out = eqn.inputs[0], eqn.outputs[0]
    oname, op = ctx.names[out], eqn.params["op"]
    shape = tuple(out.shape)
    largest = op in ("maximum", "fmax")
    atomic = "cuda.atomic.max" if largest else "cuda.atomic.min"
    where = pos if len(shape) == 1 else f"({pos})"
    ctx.lines.append(f"{oname} = _d.copy({ctx.on_device(x)})")
    if np.dtype(out.dtype).kind != "f":
        lines.append(f"    {atomic}({oname}, {where}, {value})")
        return None, []
    # flags: 1 x is NaN there, 2 an update is NaN, 4 an update is a number
    flags = f"{oname}_flags"
    flag_kind = (flags, np.int32, len(shape))
    ctx.lines.append(f"{flags} = _d.zeros({shape!r}, np.int32)")
    size = int(np.prod(shape))
    blocks = max(1, min(-(-size // ctx.threads), MAX_BLOCKS))
    names = [f"_q{d}" for d in range(len(shape))]
    sub = ", ".join(names)
    over_x = [f"for _j in range(cuda.grid(1), {size}, cuda.gridsize(1)):"] + \
        _decode("_j", list(shape), names, "    ")
    head = params + [flags, oname]
    head_kinds = kinds + [flag_kind, (oname, out.dtype, len(shape))]

    def launch(body):
        kname = ctx.kernel_name()
        consts = _finish_kernel(ctx, kname, head, over_x + body, head_kinds)
        ctx.lines.append(_launch(ctx, kname, blocks, ctx.threads,
                                 args + [flags, oname] + consts))

    fill = "-math.inf" if largest else "math.inf"
    launch([f"    if {oname}[{sub}] != {oname}[{sub}]:",
            f"        {oname}[{sub}] = {fill}", f"        {flags}[{sub}] = 1"])
    lines += [f"    _e = {value}", "    if _e != _e:",
              f"        cuda.atomic.or_({flags}, {where}, 2)", "    else:",
              f"        cuda.atomic.or_({flags}, {where}, 4)",
              f"        {atomic}({oname}, {where}, _e)"]
    nan = f"({flags}[{sub}] & 3) != 0" if op in ("maximum", "minimum") else \
        f"({flags}[{sub}] & 5) == 1"
    return lambda: launch([f"    if {nan}:", f"        {oname}[{sub}] = math.nan"]), [flag_kind]


def _concatenate(ctx, eqn):
    """A gather-form kernel over the result: each element reads the operand its
    position along ``axis`` falls in."""
    axis = eqn.params["axis"]
    out = eqn.outputs[0]
    operands = [a for a in eqn.inputs if not isinstance(a, Lit)]
    params, args, kinds = _kernel_params(ctx, list(dict.fromkeys(operands)))
    ivars = [f"i{k}" for k in range(out.ndim)]
    lines = [f"for _i in range(cuda.grid(1), {int(np.prod(out.shape))}, cuda.gridsize(1)):"]
    lines += _decode("_i", list(out.shape), ivars, "    ")
    oname = ctx.names[out]
    start = 0
    for k, a in enumerate(eqn.inputs):
        n = a.shape[axis]
        sub = list(ivars)
        sub[axis] = f"{ivars[axis]} - {start}" if start else ivars[axis]
        test = "if" if k == 0 else "elif"
        last = k == len(eqn.inputs) - 1
        lines.append("    else:" if last and k else f"    {test} {ivars[axis]} < {start + n}:")
        lines.append(f"        {oname}[{', '.join(ivars)}] = {ctx.element(a, ', '.join(sub))}")
        start += n
    ctx.place[out] = "dev"
    ctx.fresh.add(out)
    ctx.lines.append(f"{oname} = _d.empty({tuple(out.shape)!r}, {dtype_expr(out.dtype)})")
    kname = ctx.kernel_name()
    kinds.append((oname, out.dtype, out.ndim))
    consts = _finish_kernel(ctx, kname, params + [oname], lines, kinds)
    size = int(np.prod(out.shape))
    blocks = max(1, min(-(-size // ctx.threads), MAX_BLOCKS))
    ctx.lines.append(_launch(ctx, kname, blocks, ctx.threads, args + [oname] + consts))
