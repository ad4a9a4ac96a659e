"""The CUDA target: a Graph lowered by ``cudagen`` to numba.cuda kernels and a host
function that launches them, run on an NVIDIA GPU (or in Numba's simulator).

Importing numba.cuda
    ``import_cuda()`` imports it once, after one compatibility shim: numba-cuda
    releases up to at least 0.30 call ``np.row_stack``, which NumPy 2.5 removed; it is
    put back as ``np.vstack`` (the function it was an alias of) when missing.  With
    ``NUMBA_ENABLE_CUDASIM=1`` in the environment (read by Numba at import), kernels run
    in Numba's simulator on the CPU: slow, but the same kernels, indexing and thread
    organisation, which is how the test suite checks this target without a GPU.

Arguments and results
    Arrays may be NumPy arrays (copied to the device, results copied back) or device
    arrays: numba.cuda's, or anything with ``__cuda_array_interface__`` (CuPy arrays,
    PyTorch tensors on the GPU); when any argument is a device array, array results stay
    on the device (numba.cuda device arrays, which CuPy and PyTorch take without a
    copy).  Rank-0 results come back as NumPy scalars.

Device memory
    Every result and temporary is a fresh numba.cuda device array.  Numba's own
    allocator calls ``cuMemAlloc`` for each (and ``cuMemFree``, deferred, for each
    array that dies): on a large array a cost of the order of the kernel's own (on an
    H200, G1's gradient took 0.665 ms with it and 0.494 ms without).  So, as JAX and
    PyTorch do, gradc caches device memory by default: the first ``import_cuda()``
    installs ``CachingMemoryManager``, a numba EMM plugin that keeps blocks of every
    size it has handed out and hands them out again once every array and view on them
    has died, for the CUDA contexts created afterwards.  ``GRADC_CUDA_POOL=0`` in the
    environment leaves numba's allocator in place; ``release_memory()`` gives the idle
    blocks back to the driver.

Matrix products in float32
    ``gradc.set_float32_matmul_precision`` (PyTorch's names): "highest", the default,
    computes float32 products in float32; "high" lets cuBLAS use TensorFloat-32 tensor
    cores (10-bit mantissas in, float32 sums: JAX's default on such GPUs), "medium"
    bfloat16 ones.  Read at each call, for the products CuPy computes (cuBLAS); the
    generated tiled kernels and the CPU targets always compute in float32.

Inside kernels
    The functions a kernel calls through ``_d`` (this module) are libdevice's or
    ``math``'s under CUDA and NumPy's ufuncs under the simulator, so that a NaN or an
    infinity comes out as NumPy gives it in both (Python's ``math.sqrt(-1.0)`` raises).
"""
from __future__ import annotations

import contextlib
import functools
import linecache
import math
import os
import re
import sys
import threading
import types

import numpy as np

from ..errors import ArgumentError, GradcError, with_location
from ..ir import Graph
from . import cache

_CUDA = None
_DEVICE_ARRAY = None


def import_cuda():
    """``numba.cuda``, imported after the NumPy 2.5 shim (see the module docstring)."""
    global _CUDA
    if _CUDA is None:
        if not hasattr(np, "row_stack"):
            np.row_stack = np.vstack          # numba-cuda <= 0.30 on NumPy >= 2.5
        from numba import cuda
        _CUDA = cuda
        global _DEVICE_ARRAY       # (Compiled's fast path: arrays of this class)
        if simulator():
            _DEVICE_ARRAY = type(cuda.device_array(1))
        else:
            from numba.cuda.cudadrv.devicearray import DeviceNDArray as _DEVICE_ARRAY
        _quiet_occupancy_warnings()
        _define_device_functions(cuda)
        if os.environ.get("GRADC_CUDA_POOL", "1") != "0" and not simulator():
            from numba.cuda.cudadrv import driver
            driver.set_memory_manager(caching_memory_manager())
    return _CUDA


_DEVICE_OK = None


def _require_a_device(cuda) -> None:
    """A gradc error, once checked, where there is neither a GPU with a CUDA driver nor
    the simulator (numba.cuda's own error comes from deep inside a launch)."""
    global _DEVICE_OK
    if _DEVICE_OK is None:
        try:
            _DEVICE_OK = simulator() or bool(cuda.is_available())
        except Exception:
            _DEVICE_OK = False
    if not _DEVICE_OK:
        from ..errors import UnsupportedError
        raise UnsupportedError(with_location(
            "target='cuda' found no CUDA GPU (numba.cuda.is_available() is False: no "
            "NVIDIA driver or device).  Run on a machine with one, or in numba.cuda's "
            "simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported); "
            ".source(), .ptx() and .compile() work without a GPU"))


def _quiet_occupancy_warnings() -> None:
    """numba.cuda warns at every launch of fewer than 128 blocks; gradc sizes its grids
    itself (a block per row of a small batch, one block for a short reduction), and the
    warning, issued on each call, costs host time.  Left alone when the user has set
    ``NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS``."""
    if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" in os.environ:
        return
    for name in ("numba.cuda.core.config", "numba.core.config"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "CUDA_LOW_OCCUPANCY_WARNINGS"):
            module.CUDA_LOW_OCCUPANCY_WARNINGS = 0


# ---------------------------------------------------------------- device memory

_POOL_CLASS = None


def caching_memory_manager():
    """The class of gradc's numba.cuda EMM plugin (defined on first use: it subclasses
    numba's own manager).

    A block is one allocation of numba's manager, kept alive by the pool.  Each request
    of a size the pool has a free block of gets that block, wrapped in a pointer of its
    own (``PoolBlock``) that gives the block back when numba's reference count on it
    reaches zero, that is when the array *and every view of it* have died (views count
    references on the pointer that owns the memory), so a block is never handed out
    while anything can still read it.  The array holds the pointer through ``_Owned``,
    numba's ``OwnedPointer`` without a ``weakref.finalize`` (with numba-cuda 0.30.4 on
    this machine's CPU, an array's allocation and release took 3.8 us through numba's
    ``AutoFreePointer`` and ``OwnedPointer``; G4 makes 9 arrays a call, G2 3).  Out of
    memory, the free blocks are released and the allocation tried again."""
    global _POOL_CLASS
    if _POOL_CLASS is not None:
        return _POOL_CLASS
    import itertools
    import weakref
    from numba.cuda.cudadrv.driver import (CudaAPIError, MemoryPointer,
                                           NumbaCUDAMemoryManager)

    class PoolBlock(MemoryPointer):
        """A block handed out (MemoryPointer's attributes, set here: no finalizer).
        ``free``, which numba's references call at the count's zero, gives it back."""

        def __init__(self, manager, context, block, size, key):
            self.context = context
            self.device_pointer = self.handle = block.device_pointer
            self.size = self._cuda_memsize_ = size
            self.is_managed = False
            self.refct = 0
            self._owner = None
            self._pool = (manager, manager.generation, key, size, block)

        def free(self):
            manager, generation, key, size, block = self._pool
            manager._give_back(generation, key, size, block)

    class _Owned:
        """An array's reference to its ``PoolBlock``: numba's ``OwnedPointer`` (a count
        on the block while it lives, the block's attributes through it) with ``__del__``
        for its ``weakref.finalize``."""
        __slots__ = ("_mem", "_view", "device_ctypes_pointer")

        def __init__(self, mem):
            self._mem = self._view = mem
            mem.refct += 1
            self.device_ctypes_pointer = mem.device_ctypes_pointer

        def __del__(self):
            try:
                mem = self._mem
            except AttributeError:
                return
            mem.refct -= 1
            if mem.refct == 0:
                mem.free()

        def __getattr__(self, name):
            if name in ("_mem", "_view"):
                raise AttributeError(name)
            return getattr(self._view, name)

        def at(self, start):
            """The memory from byte ``start`` on, for a view (``cuda.view``)."""
            return _OwnedAt(self._mem, start)

    class _OwnedAt(_Owned):
        """A view's reference to its array's ``PoolBlock`` from byte ``start`` on: a count
        on the block while it lives, as numba's views count.  (numba's ``view`` and the
        ``OwnedPointer`` it wraps took 2.7 us a view with numba-cuda 0.30.4 on this
        machine's CPU, a ``weakref.finalize`` each; a G4 gradient makes four views.)
        What else a numba pointer has comes from a numba view made when first asked."""
        __slots__ = ("_start",)

        def __init__(self, mem, start):
            self._mem, self._start = mem, start
            mem.refct += 1
            self.device_ctypes_pointer = type(mem.device_ctypes_pointer)(
                mem.device_ctypes_pointer.value + start)

        def __getattr__(self, name):
            if name == "_view":              # (numba's own view, made once, when needed)
                view = self._view = self._mem.view(self._start)
                return view
            return super().__getattr__(name)

        def view(self, start, stop=None):
            return self._mem.view(self._start + start,
                                  None if stop is None else self._start + stop)

        def at(self, start):
            return _OwnedAt(self._mem, self._start + start)

    class CachingMemoryManager(NumbaCUDAMemoryManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.free_blocks: dict = {}      # size -> [block nobody uses]
            self.handed_out: dict = {}       # key -> its PoolBlock (views hold proxies)
            self.pending: list = []          # given back inside ``cuda.defer_cleanup()``
            self.generation = 0              # (a reset forgets what was handed out)
            self._keys = itertools.count()
            self.hits = self.misses = 0
            self._context = None if self.context is None else weakref.proxy(self.context)

        def memalloc(self, size):
            if size == 0:
                return super().memalloc(size)
            if self.pending and not self.deallocations.is_disabled:
                for size_, block in self.pending:
                    self.free_blocks.setdefault(size_, []).append(block)
                self.pending.clear()
            free = self.free_blocks.setdefault(size, [])
            try:
                block = free.pop()            # (atomic: two threads never get one block)
                self.hits += 1
            except IndexError:
                block = self._allocate(size)
                self.misses += 1
            key = next(self._keys)
            mem = self.handed_out[key] = PoolBlock(self, self._context, block, size, key)
            return _Owned(mem)

        def _give_back(self, generation, key, size, block):
            self.handed_out.pop(key, None)
            if generation != self.generation:
                return                       # (its memory went with a reset)
            if self.deallocations.is_disabled:
                self.pending.append((size, block))    # (a kernel may still read it)
            else:
                self.free_blocks.setdefault(size, []).append(block)

        def _allocate(self, size):
            try:
                return super().memalloc(size)
            except CudaAPIError as e:       # (out of memory after numba's own retry)
                if int(getattr(e, "code", 0)) != 2:       # CUDA_ERROR_OUT_OF_MEMORY
                    raise
                self.release()
                cupy = sys.modules.get("cupy")   # (CuPy's pool may hold idle memory too)
                if cupy is not None:
                    cupy.get_default_memory_pool().free_all_blocks()
                return super().memalloc(size)

        def release(self):
            """Give every free block back to the driver."""
            for free in self.free_blocks.values():
                free.clear()
            self.deallocations.clear()

        def reset(self):
            self.release()
            super().reset()
            self.generation += 1
            self.free_blocks, self.handed_out, self.pending = {}, {}, []

    _POOL_CLASS = CachingMemoryManager
    return _POOL_CLASS


def use_memory_pool() -> bool:
    """Route numba.cuda's device allocations through ``CachingMemoryManager`` (see the
    module docstring).  It applies to CUDA contexts created afterwards: call it before
    the process's first CUDA call.  Returns whether the current context uses it (False
    under the simulator, which allocates NumPy arrays)."""
    cuda = import_cuda()
    if simulator():
        return False
    from numba.cuda.cudadrv import driver
    cls = caching_memory_manager()
    driver.set_memory_manager(cls)
    return isinstance(cuda.current_context().memory_manager, cls)


def release_memory() -> None:
    """Give the device memory that gradc's caching allocator keeps for reuse back to
    the driver (as ``torch.cuda.empty_cache()``); arrays still alive keep theirs."""
    cuda = import_cuda()
    if simulator():
        return
    manager = cuda.current_context().memory_manager
    if isinstance(manager, caching_memory_manager()):
        manager.release()


def simulator() -> bool:
    """Whether numba.cuda runs kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


# ---------------------------------------------------------------- device functions

def _define_device_functions(cuda) -> None:
    g = globals()
    names = {"exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p",
             "sqrt": "sqrt", "sin": "sin", "cos": "cos", "tan": "tan", "asin": "arcsin",
             "acos": "arccos", "atan": "arctan", "sinh": "sinh", "cosh": "cosh",
             "tanh": "tanh", "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh",
             "atan2": "arctan2", "log2": "log2", "log10": "log10"}
    complex_names = ("exp", "log", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan",
                     "sinh", "cosh", "tanh", "asinh", "acosh", "atanh")
    if simulator():
        for ours, numpys in names.items():
            g[ours] = getattr(np, numpys)
        for ours in complex_names:          # (cudagen._COMPLEX: complex arguments)
            g["c" + ours] = getattr(np, names[ours])
        for ours in ("floor", "ceil", "rint", "trunc", "cbrt", "exp2"):
            g[ours] = g[ours + "_f32"] = getattr(np, ours)
        g["fmod"], g["copysign"] = np.fmod, np.copysign
        import scipy.special        # (math.lgamma and math.gamma raise at their poles)
        g["erf"], g["erfc"], g["lgamma"], g["gamma"] = (
            math.erf, math.erfc, scipy.special.gammaln, scipy.special.gamma)
        for ours in ("ndtri", "erfinv"):
            g[ours] = g[ours + "_f32"] = getattr(scipy.special, ours)
        g["mul_rn"] = g["mul_rn_f32"] = np.multiply
        for lanes in VECTOR_LANES:
            g[f"vload{lanes}"], g[f"vstore{lanes}"], g[f"valigned{lanes}"] = \
                _simulated_vectors(lanes)
        g["flat"] = _simulated_flat
        g["shfl_xor"] = _simulated_shfl_xor
        return
    from numba.cuda import libdevice
    for ours in names:
        g[ours] = getattr(math, ours)
    import cmath
    for ours in complex_names:
        g["c" + ours] = getattr(cmath, ours)
    for ours in ("floor", "ceil", "rint", "trunc", "cbrt", "exp2"):
        g[ours] = getattr(libdevice, ours)
        g[ours + "_f32"] = getattr(libdevice, ours + "f")
    g["fmod"], g["copysign"] = math.fmod, math.copysign
    g["erf"], g["erfc"], g["lgamma"], g["gamma"] = math.erf, math.erfc, math.lgamma, math.gamma
    for ours, name in (("ndtri", "normcdfinv"), ("erfinv", "erfinv")):
        g[ours], g[ours + "_f32"] = getattr(libdevice, name), getattr(libdevice, name + "f")
    # (a product rounded on its own: never contracted into a fused multiply-add)
    g["mul_rn"], g["mul_rn_f32"] = libdevice.dmul_rn, libdevice.fmul_rn
    for lanes in VECTOR_LANES:
        g[f"vload{lanes}"], g[f"vstore{lanes}"], g[f"valigned{lanes}"] = \
            _vector_intrinsics(lanes)
    g["flat"] = _flat_intrinsic()
    g["shfl_xor"] = _shfl_xor_intrinsic()


def _shfl_xor_intrinsic():
    """``shfl_xor(value, offset)``: ``value`` of the lane ``offset`` away in a butterfly
    (lane ``l`` reads lane ``l ^ offset``), every lane of the warp taking part: how a
    reduction's partials in adjacent lanes combine without shared memory or a barrier
    (``cudarows._shuffle_stage``).  NVVM's ``shfl.sync.bfly`` moves 32 bits, so an 8-byte
    value moves as two halves.  (numba.cuda's own ``shfl_xor_sync`` is, in Numba 0.68,
    a device function whose compilation asks the driver for the device: ``ptx()``
    works without a GPU, so this intrinsic does not.)"""
    from llvmlite import ir
    from numba import types as nt
    from numba.core import cgutils
    from numba.cuda.extending import intrinsic

    @intrinsic
    def shfl_xor(typingctx, value, offset):
        if value not in (nt.int32, nt.int64, nt.float32, nt.float64):
            raise TypeError(f"shfl_xor of {value}: 4- and 8-byte ints and floats only")

        def codegen(context, builder, sig, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i32, [i32] * 4), "llvm.nvvm.shfl.sync.bfly.i32")
            lane = context.cast(builder, args[1], sig.args[1], nt.int32)

            def moved(bits):
                return builder.call(fn, [i32(0xFFFFFFFF), bits, lane, i32(0x1F)])
            v = args[0]
            if sig.args[0].bitwidth == 32:
                return builder.bitcast(moved(builder.bitcast(v, i32)), v.type)
            bits = builder.bitcast(v, i64)
            low = moved(builder.trunc(bits, i32))
            high = moved(builder.trunc(builder.lshr(bits, i64(32)), i32))
            both = builder.or_(builder.zext(low, i64), builder.shl(builder.zext(high, i64),
                                                                    i64(32)))
            return builder.bitcast(both, v.type)
        return value(value, offset), codegen
    return shfl_xor


def _simulated_shfl_xor(value, offset):
    """The simulator's ``shfl_xor`` (it has no shuffles).  Each thread is a Python
    thread: the lanes of a warp (32 threads of the block, by thread index) exchange
    their values through a table of the warp's, between two waits on a barrier of the
    warp's.  The simulator's own barrier needs the whole block, this one the warp, as
    a GPU's shuffle does: a warp some of whose lanes never call it fails here (after
    ``SIMULATED_WAIT`` seconds) where a GPU's result is undefined."""
    thread = threading.current_thread()
    manager, tid = thread._manager, thread.thread_id
    with _simulated_warps_lock:
        warps = manager.__dict__.setdefault("_gradc_warps", {})
        if tid // 32 not in warps:
            lanes = min(32, int(np.prod(manager._block_dim)) - tid // 32 * 32)
            warps[tid // 32] = (threading.Barrier(lanes), {})
    barrier, values = warps[tid // 32]
    values[tid] = value
    try:
        barrier.wait(SIMULATED_WAIT)
        other = values[tid ^ offset]
        barrier.wait(SIMULATED_WAIT)
    except threading.BrokenBarrierError:
        raise RuntimeError("gradc: a shuffle that not every lane of its warp took part "
                           "in (the simulator waited for them)") from None
    return other


_simulated_warps_lock = threading.Lock()
SIMULATED_WAIT = 60.0


def _flat_intrinsic(intrinsic=None):
    """``flat(a, shape)``: C-contiguous array ``a`` (of ``shape``, which the kernel's
    source states: see ``cudagen.flat_subscripts``) as a one-dimensional array of its
    elements, on the same memory: no copy, no call (Numba's ``reshape`` calls a C helper
    that a GPU does not have).  Indexed with offsets whose strides are constants of the
    source, an unrolled loop's loads take immediate offsets.  ``intrinsic``:
    numba.cuda's decorator by default (the tests compile it on the CPU with Numba's)."""
    from numba import types as nt
    from numba.core import cgutils
    from numba.core.imputils import impl_ret_borrowed
    if intrinsic is None:
        from numba.cuda.extending import intrinsic

    @intrinsic
    def flat(typingctx, a, shape):
        if not isinstance(a, nt.Array) or a.layout != "C":
            raise TypeError(f"flat of {a}: a C-contiguous array only")

        def codegen(context, builder, sig, args):
            from numba.np.arrayobj import make_array, populate_array
            arr = make_array(sig.args[0])(context, builder, value=args[0])
            out = make_array(sig.return_type)(context, builder)
            populate_array(out, data=arr.data,
                           shape=cgutils.pack_array(builder, [arr.nitems]),
                           strides=cgutils.pack_array(builder, [arr.itemsize]),
                           itemsize=arr.itemsize, meminfo=arr.meminfo, parent=arr.parent)
            # (a reference of its own to the memory where there are references: Numba's
            # CPU runtime; kernels have none)
            return impl_ret_borrowed(context, builder, sig.return_type, out._getvalue())
        return nt.Array(a.dtype, 1, "C")(a, shape), codegen
    return flat


def _simulated_flat(a, shape):
    """The simulator's ``flat``: checks that ``a`` is C-contiguous of ``shape``, the
    shape the generated source assumes for it (a wrong one would read other elements
    on a GPU), and returns its elements as a view."""
    try:
        arr = a._ary                      # (numba's simulated device arrays)
    except (AttributeError, IndexError):  # (numba-cuda's answer IndexError)
        arr = a
    arr = np.asarray(arr)
    if tuple(arr.shape) != tuple(shape) or not arr.flags.c_contiguous:
        raise AssertionError(f"gradc: a kernel assumed an array of shape {tuple(shape)}, "
                             f"C-contiguous; it got {arr.shape} with strides {arr.strides}")
    return arr.reshape(-1)


# ---------------------------------------------------------------- vector loads and stores

VECTOR_LANES = (2, 4)      # elements per vector access (8 or 16 bytes: see cudagen)


def _vector_intrinsics(lanes: int, intrinsic=None):
    """``vload{lanes}(a, index)``, ``vstore{lanes}(a, index, values)`` and
    ``valigned{lanes}(a)`` for kernels: ``lanes`` consecutive elements of ``a`` along its
    last axis, from the element at the tuple ``index`` on, read or written by one vector
    instruction (``ld.global.v4.f32``: a map kernel then issues one load where it
    issued four, and a warp reads 512 contiguous bytes).  Valid only where
    ``valigned{lanes}(a)`` holds (the data pointer and every stride but the last, which
    must be the item size, multiples of the vector's bytes) and the last index is a
    multiple of ``lanes``: the kernel tests that once, and takes its scalar loop
    otherwise.  Written as Numba intrinsics (LLVM IR through llvmlite): Numba has no
    vector loads of its own.  ``intrinsic``: numba.cuda's decorator by default (the
    tests run the same IR on the CPU with Numba's own)."""
    from llvmlite import ir
    from numba import types as nt
    if intrinsic is None:
        from numba.cuda.extending import intrinsic

    def address(context, builder, aryty, ary, idxty, idx, vec):
        """A pointer to ``vec`` at ``ary[idx]`` (a GEP in bytes, so that NVVM still
        knows the global address space of a kernel's array)."""
        arr = context.make_array(aryty)(context, builder, value=ary)
        offset = ir.Constant(ir.IntType(64), 0)
        for d in range(aryty.ndim):
            i = context.cast(builder, builder.extract_value(idx, d), idxty[d], nt.intp)
            offset = builder.add(offset, builder.mul(i, builder.extract_value(arr.strides, d)))
        base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
        return builder.bitcast(builder.gep(base, [offset], inbounds=True), vec.as_pointer())

    def vector_of(context, aryty):
        return ir.VectorType(context.get_data_type(aryty.dtype), lanes)

    def check(aryty, idxty):
        if not isinstance(aryty, nt.Array) or \
                not isinstance(aryty.dtype, (nt.Integer, nt.Float)) or \
                not isinstance(idxty, nt.BaseTuple) or len(idxty) != aryty.ndim or \
                not all(isinstance(t, nt.Integer) for t in idxty):
            raise TypeError(f"vector access to {aryty} at {idxty}")

    @intrinsic
    def vload(typingctx, a, index):
        check(a, index)

        def codegen(context, builder, sig, args):
            vec = vector_of(context, sig.args[0])
            ptr = address(context, builder, sig.args[0], args[0], sig.args[1], args[1], vec)
            loaded = builder.load(ptr, align=lanes * sig.args[0].dtype.bitwidth // 8)
            parts = [builder.extract_element(loaded, ir.Constant(ir.IntType(32), k))
                     for k in range(lanes)]
            return context.make_tuple(builder, sig.return_type, parts)
        return nt.UniTuple(a.dtype, lanes)(a, index), codegen

    @intrinsic
    def vstore(typingctx, a, index, values):
        check(a, index)
        if not isinstance(values, nt.BaseTuple) or len(values) != lanes:
            raise TypeError(f"{lanes} values to store, not {values}")

        def codegen(context, builder, sig, args):
            vec = vector_of(context, sig.args[0])
            ptr = address(context, builder, sig.args[0], args[0], sig.args[1], args[1], vec)
            packed = ir.Constant(vec, ir.Undefined)
            for k in range(lanes):
                value = context.cast(builder, builder.extract_value(args[2], k),
                                     sig.args[2][k], sig.args[0].dtype)
                packed = builder.insert_element(packed, value, ir.Constant(ir.IntType(32), k))
            builder.store(packed, ptr, align=lanes * sig.args[0].dtype.bitwidth // 8)
            return context.get_dummy_value()
        return nt.void(a, index, values), codegen

    @intrinsic
    def valigned(typingctx, a):
        if not isinstance(a, nt.Array):
            raise TypeError(f"alignment of {a}")

        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            arr = context.make_array(aryty)(context, builder, value=args[0])
            i64 = ir.IntType(64)
            size = aryty.dtype.bitwidth // 8
            mask = ir.Constant(i64, lanes * size - 1)
            zero = ir.Constant(i64, 0)
            bits = builder.and_(builder.ptrtoint(arr.data, i64), mask)
            ok = builder.icmp_unsigned("==", bits, zero)
            for d in range(aryty.ndim):
                stride = builder.extract_value(arr.strides, d)
                if d == aryty.ndim - 1:
                    this = builder.icmp_signed("==", stride, ir.Constant(i64, size))
                else:
                    this = builder.icmp_unsigned("==", builder.and_(stride, mask), zero)
                ok = builder.and_(ok, this)
            return ok
        return nt.boolean(a), codegen

    return vload, vstore, valigned


def _simulated_vectors(lanes: int):
    """The simulator's ``vload``, ``vstore`` and ``valigned`` (see ``_vector_intrinsics``):
    element by element, with the alignment test on the array's own pointer and strides,
    so that the simulator takes the same path as the GPU would."""
    def vload(a, index):
        head, last = tuple(index[:-1]), int(index[-1])
        return tuple(a[head + (last + k,)] for k in range(lanes))

    def vstore(a, index, values):
        head, last = tuple(index[:-1]), int(index[-1])
        for k in range(lanes):
            a[head + (last + k,)] = values[k]

    def valigned(a):
        size = np.dtype(a.dtype).itemsize
        try:            # (numba-cuda's in-kernel arrays raise IndexError for a
            #             missing attribute, so no hasattr)
            data = a.__cuda_array_interface__["data"][0]
        except (AttributeError, IndexError):
            data = np.asarray(a).ctypes.data
        strides = a.strides
        return (data % (lanes * size) == 0 and strides[-1] == size and
                all(s % (lanes * size) == 0 for s in strides[:-1]))
    return vload, vstore, valigned

# ---------------------------------------------------------------- host-side helpers

_EMPTY: dict = {}        # (shape, dtype) -> a prototype (see _prototype), or False


def empty(shape, dtype):
    """A new device array.  After the first of a shape and dtype, a copy of that one's
    attributes with memory of its own: numba's constructor (under a context guard)
    works out the strides, a dummy array of the layout and the size again at each of
    the tens of arrays a call may make."""
    proto = _EMPTY.get((shape, dtype))
    if proto:
        cls, attrs, size, context = proto
        return _like(cls, attrs, context().memalloc(size))
    out = _CUDA.device_array(shape, dtype)
    if proto is None:
        _EMPTY[(shape, dtype)] = _prototype(out)
    return out


_ARRAY_ATTRIBUTES = frozenset(("ndim", "_dummy", "shape", "strides", "dtype", "size",
                               "alloc_size", "gpu_data", "stream"))


def _prototype(out, context=None, contiguous=True):
    """``(class, attributes but the memory, bytes, context getter)`` to make arrays like
    ``out`` from, if ``out`` is a numba device array with exactly the attributes
    numba-cuda's constructor sets (its memory from the current context's
    ``memalloc``, on the default stream); else False (numba's constructor each time)."""
    if type(out).__name__ != "DeviceNDArray" or set(vars(out)) != _ARRAY_ATTRIBUTES or \
            out.stream != 0 or not out.size or \
            contiguous and not getattr(out._dummy, "is_c_contig", False):
        return False
    if context is None:
        try:
            from numba.cuda.cudadrv.devices import get_context as context
        except ImportError:
            return False
    attrs = {k: v for k, v in vars(out).items() if k != "gpu_data"}
    return type(out), attrs, out.alloc_size, context


def _like(cls, attrs, gpu_data):
    """A numba device array of class ``cls`` with a prototype's ``attrs`` (see
    ``_prototype``) on memory ``gpu_data``."""
    out = cls.__new__(cls)
    out.__dict__.update(attrs)
    out.gpu_data = gpu_data
    return out


_VIEWS: dict = {}        # (shape, dtype) -> a prototype of a C-contiguous view, or False


def reshape(x, shape):
    """``x.reshape(shape)``.  A C-contiguous numba device array's reshape, after the
    first of a shape and dtype, is a copy of that one's attributes on ``x``'s memory:
    numba's own works out a dummy array's reshape and the view's layout again (6.2 us
    against 1.2 us with numba-cuda 0.30.4 on this machine's CPU; a G4 gradient makes
    three at every call).  Anything else (a
    NumPy array, the simulator's arrays, a strided view) is reshaped by its own
    method."""
    c_contiguous = getattr(getattr(x, "_dummy", None), "is_c_contig", False)
    key = (shape, x.dtype)
    proto = _VIEWS.get(key) if c_contiguous else False
    if proto and type(x) is proto[0] and x.size == proto[1]["size"]:
        return _like(*proto, x.gpu_data)
    out = x.reshape(shape)
    if proto is None and x.size:
        made = _prototype(out, context=_no_context)
        _VIEWS[key] = made and made[:2]
    return out


_STRIDED: dict = {}      # (class, dtype, shape, strides) -> a view's attributes, or False


def view(x, offset, shape, strides):
    """A view of C-contiguous device array ``x``: ``shape`` and ``strides`` (in
    elements) from element ``offset``.  A one-kernel scan reads a time-major
    rearrangement of its operand (``np.transpose(U, (1, 0, 2))[1:]``) through one,
    where a kernel would copy it.  After the first of a layout, a copy of that one's
    attributes on a pointer into ``x``'s memory (numba's constructor works out the
    layout again: 7 against 3 us with numba-cuda 0.30.4 on this machine's CPU)."""
    item = x.dtype.itemsize
    if hasattr(x, "_ary"):                  # (the simulator's arrays wrap NumPy's)
        return type(x)(np.lib.stride_tricks.as_strided(
            x._ary.reshape(-1)[offset:], shape, tuple(int(s) * item for s in strides)))
    at = getattr(x.gpu_data, "at", None)    # (gradc's pool: a view without numba's)
    memory = at(int(offset) * item) if at is not None else x.gpu_data.view(int(offset) * item)
    key = (type(x), x.dtype, shape, strides)
    proto = _STRIDED.get(key)
    if proto:
        return _like(key[0], proto, memory)
    out = type(x)(shape, tuple(int(s) * item for s in strides), x.dtype, stream=x.stream,
                  gpu_data=memory)
    if proto is None:
        made = _prototype(out, context=_no_context, contiguous=False)
        _STRIDED[key] = made and made[1]
    return out


def _no_context():          # (views take their memory from the array they view)
    raise AssertionError("a view allocates nothing")


def zeros(shape, dtype):
    """A zero-filled device array (a scatter's destination)."""
    out = _CUDA.device_array(shape, dtype)
    if hasattr(out, "gpu_data") and out.size:
        from numba.cuda.cudadrv.driver import device_memset
        device_memset(out, 0, out.size * out.dtype.itemsize)
    else:                                        # (the simulator's arrays)
        out.copy_to_device(np.zeros(shape, dtype))
    return out


class Checks:
    """The errors a program's kernels may flag, by number from 1: an index array's value
    out of bounds (``cudagen._indexing``: the graph was traced with valid ones; the
    kernel then reads or writes nothing there), a zero pivot in ``solve`` (``_solve``:
    a singular matrix).  A kernel stores the check's number in one device cell if it
    holds none (the first failure is reported); the host function reads the cell before
    it returns, or before another exception leaves it (one 4-byte copy, which waits for
    the kernels), and raises gradc's error of that check, where NumPy raises
    ``IndexError`` or ``LinAlgError`` and the CPU target ``EvaluationError``.  A
    ``while_loop`` whose kernels check reads it at every trip too (a value left unread
    could keep it going).  Each thread calling the program has a cell of its own: calls
    from several threads at once report their own errors."""

    def __init__(self, messages):
        self.messages = tuple(messages)
        self._mine = threading.local()

    @property
    def cell(self):
        """The calling thread's device cell (allocated, zero, at the first launch of the
        thread that takes it)."""
        cell = getattr(self._mine, "cell", None)
        if cell is None:
            cell = self._mine.cell = zeros((1,), np.int32)
        return cell

    def check(self) -> None:
        """Raise the flagged check's error, if any (clearing the cell)."""
        cell = getattr(self._mine, "cell", None)
        if cell is None:
            return
        code = int(cell.copy_to_host()[0])
        if code:
            cell.copy_to_device(np.zeros(1, np.int32))
            from ..errors import EvaluationError
            raise EvaluationError(self.messages[code - 1])

    def passed(self, value):
        """``value`` (a loop's condition) once ``check`` has passed."""
        self.check()
        return value


def dev(x):
    """A host array's device copy."""
    return _CUDA.to_device(np.ascontiguousarray(x))


def host(x, scalar=False):
    """A device array's host copy (a cell's as a NumPy scalar with ``scalar``)."""
    out = x.copy_to_host()
    return out.reshape(-1)[0] if scalar else out


def put(dest, t, value):
    """``dest[t] = value`` on the device (a scan's stacked results)."""
    dest[t].copy_to_device(value)


def run_host(graph: Graph, args):
    """An equation without a CUDA lowering, run by the interpreter on the host (rank-0
    results as NumPy scalars, which kernels take as scalar arguments)."""
    from ..interpret import eval_graph
    out = [np.asarray(r) for r in eval_graph(graph, list(args))]
    return [r[()] if r.ndim == 0 else r for r in out]


def copy(x):
    """A fresh copy of a result that the program would otherwise hand out by reference
    (a constant, an argument passed through, a view of one)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.array(x, copy=True)
    out = _CUDA.device_array(x.shape, x.dtype)
    if x.size:               # (nothing to copy; the simulator's check of an empty view's
        out.copy_to_device(x)                         # strides (0, 0) would refuse it)
    return out


_MOVES: dict = {}     # (source, destination) -> gradc.jit of that np.moveaxis on the GPU


def moveaxis(x, source: int, destination: int):
    """``np.moveaxis`` of device array ``x`` as a C-contiguous device array, copied by a
    kernel (``vmap``'s ``in_axes`` and ``out_axes`` on device arrays).  ``np.moveaxis``
    of the array itself is its ``transpose``: numba's copies 2-D arrays only (and raises
    ``NotImplementedError`` for more axes), the simulator's and CuPy's are strided views,
    and a compiled program takes no strided device array."""
    fn = _MOVES.get((source, destination))
    if fn is None:
        from ..api import jit
        fn = _MOVES[source, destination] = jit(
            lambda a: np.moveaxis(a, source, destination), target="cuda")
    return fn(x)


NUMBA_ARRAYS = frozenset(("DeviceNDArray", "FakeCUDAArray", "MappedNDArray"))


def as_numba(x):
    """Device array ``x`` as numba's: its own as it is, anything else exposing
    ``__cuda_array_interface__`` (CuPy, PyTorch) as a view of its memory
    (``cuda.as_cuda_array``).  The simulator has no ``as_cuda_array``: its device
    memory is the host's, so there the interface's pointer is a host array's."""
    if hasattr(x, "copy_to_host"):
        return x
    if not simulator():
        return _CUDA.as_cuda_array(x)
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    desc = x.__cuda_array_interface__
    shape, dtype = tuple(desc["shape"]), np.dtype(desc["typestr"])
    if not int(np.prod(shape)):
        return FakeCUDAArray(np.empty(shape, dtype))

    class View:                          # (keeps x alive as the array's base)
        owner = x
        __array_interface__ = {"shape": shape, "typestr": dtype.str, "version": 3,
                               "data": (desc["data"][0], False),
                               "strides": desc.get("strides")}
    return FakeCUDAArray(np.asarray(View()))


def is_device_array(x) -> bool:
    """A device array: numba.cuda's, or one exposing ``__cuda_array_interface__``.
    (numba's own are known by their class first: their interface is a property that
    builds a dict, and a call asks about every argument more than once.)"""
    if isinstance(x, (np.ndarray, np.generic)):
        return False
    return type(x).__name__ in NUMBA_ARRAYS or hasattr(x, "__cuda_array_interface__")


def _cupy():
    if os.environ.get("GRADC_CUDA_CUPY", "1") == "0":
        return None
    try:
        import cupy
    except Exception:           # not installed, or no CUDA libraries for it
        return None
    return cupy


cupy_einsum = None
cupy_solve = None
cupy_library = None
cupy_gemm = None        # (the Gemm cupy_einsum tries first: its plans, for inspection)

# primitives CuPy computes on the device with NumPy's semantics, by name: decompositions
# (cuSOLVER) and the stable argsort (CuPy's stable sort: ties keep their order, NaNs go
# last; checked against the interpreter by benchmarks/gpu_session.sh on a GPU); the
# lowering calls ``cupy_library(name, a, **params)`` for these when CuPy is installed
# (codegen.cudagen)
LIBRARY = {
    "cholesky": lambda xp, a: [xp.linalg.cholesky(a)],
    "eigh": lambda xp, a: list(xp.linalg.eigh(a)),
    "svd": lambda xp, a: list(xp.linalg.svd(a, full_matrices=False)),
    "qr": lambda xp, a: list(xp.linalg.qr(a)),
    "det": lambda xp, a: [xp.linalg.det(a)],
    "slogdet": lambda xp, a: list(xp.linalg.slogdet(a)),
    "cofactor": lambda xp, a: [_cofactor(xp, a)],
    "argsort": lambda xp, a, axis: [xp.argsort(a, axis=axis, kind="stable").astype(np.int64)],
}


def _cofactor(xp, a):
    """``prims.linalg.cofactor_matrix`` by array module ``xp``, batched: det A · A⁻ᵀ, and
    for the matrices with det A = 0, det U det V · U diag(Π_{j≠i} s_j) Vᵀ (their SVD)."""
    eye = xp.eye(a.shape[-1], dtype=a.dtype)
    d = xp.linalg.det(a)
    singular = d == 0
    inv = xp.linalg.inv(xp.where(singular[..., None, None], eye, a))
    cof = d[..., None, None] * xp.swapaxes(inv, -1, -2)
    if bool(xp.any(singular)):
        u, s, vt = xp.linalg.svd(a)
        others = xp.prod(xp.where(eye.astype(bool), 1, s[..., None, :]), axis=-1)
        sign = xp.linalg.det(u) * xp.linalg.det(vt)
        by_svd = sign[..., None, None] * ((u * others[..., None, :]) @ vt)
        cof = xp.where(singular[..., None, None], by_svd, cof)
    return cof


def library_call(xp, name, a, **params) -> list:
    """Primitive ``name`` of ``a`` by array module ``xp`` (CuPy on the GPU, NumPy in the
    tests): C-contiguous arrays (cuSOLVER's are column-major), in the primitive's order
    of results (a rank-0 one as it is: ``ascontiguousarray`` would make it 1-D)."""
    return [xp.ascontiguousarray(r) if r.ndim else r for r in LIBRARY[name](xp, a, **params)]


def matmul_einsum(xp, spec, x, y):
    """A two-operand einsum as one (batched) ``xp.matmul``, or None when it is not one
    (a letter summed within one operand).  The operands are permuted (views) to
    (batch, M, K) and (batch, K, N); without batch letters they stay 2-D, which a BLAS
    takes transposed or not without copying; the result comes back permuted to the
    output's letters.  ``xp`` is CuPy on the GPU (cuBLAS without ``einsum``'s planning)
    and NumPy in the tests."""
    from ..prims.linalg import parse_spec
    sa, sb, so = parse_spec(spec)
    if any(c not in so and c not in sb for c in sa) or \
            any(c not in so and c not in sa for c in sb):
        return None
    size = dict(zip(sa, x.shape)) | dict(zip(sb, y.shape))
    batch = [c for c in so if c in sa and c in sb]
    m = [c for c in so if c in sa and c not in sb]
    n = [c for c in so if c in sb and c not in sa]
    k = [c for c in sa if c in sb and c not in so]
    prod = lambda letters: int(np.prod([size[c] for c in letters]))   # noqa: E731
    xt = x.transpose([sa.index(c) for c in batch + m + k])
    yt = y.transpose([sb.index(c) for c in batch + k + n])
    if batch:
        xt = xt.reshape(prod(batch), prod(m), prod(k))
        yt = yt.reshape(prod(batch), prod(k), prod(n))
    else:
        xt, yt = xt.reshape(prod(m), prod(k)), yt.reshape(prod(k), prod(n))
    out = xp.matmul(xt, yt).reshape([size[c] for c in batch + m + n])
    return out.transpose([(batch + m + n).index(c) for c in so])


_PRECISIONS = {"highest": None, "high": "COMPUTE_TYPE_TF32", "medium": "COMPUTE_TYPE_BF16"}
_precision = "highest"


def set_float32_matmul_precision(precision: str) -> None:
    """How float32 matrix products on the GPU are computed: "highest" (float32, the
    default), "high" (TensorFloat-32 tensor cores where the GPU has them: about 3
    decimal digits per product, float32 sums; JAX's default on such GPUs) or "medium"
    (bfloat16).  As ``torch.set_float32_matmul_precision``: it applies to the products
    cuBLAS computes for ``target="cuda"`` (with CuPy installed), read at each call;
    the CPU targets and float64 always compute exactly as NumPy does."""
    global _precision
    if precision not in _PRECISIONS:
        raise ArgumentError(f"gradc.set_float32_matmul_precision: {precision!r} is not "
                            f"one of {', '.join(map(repr, _PRECISIONS))}")
    _precision = precision


def get_float32_matmul_precision() -> str:
    return _precision


class _ComputeType:
    """CuPy's cuBLAS compute type for float32 products set to the chosen precision's
    for the duration of one call, then put back (it is CuPy's process-wide setting)."""

    def __init__(self, cp, dtype):
        name = _PRECISIONS[_precision] if np.dtype(dtype) == np.float32 else None
        self.linalg = getattr(getattr(cp, "_core", None), "_routines_linalg", None)
        self.wanted = None if name is None or self.linalg is None \
            else getattr(self.linalg, name, None)
        self.dtype = dtype

    def __enter__(self):
        if self.wanted is not None:
            self.old = self.linalg.get_compute_type(self.dtype)
            self.linalg.set_compute_type(self.dtype, self.wanted)

    def __exit__(self, *exc):
        if self.wanted is not None:
            self.linalg.set_compute_type(self.dtype, self.old)


def from_cupy(cp, out):
    """A numba view of CuPy's result ``out``, without a host wait where none is needed.
    CuPy's array interface names the stream that wrote ``out``, and a consumer imports
    it by synchronising that stream: the host would wait for every cuBLAS product
    before launching the next kernel.  On CuPy's null stream, the legacy default
    stream that numba's launches use too, the GPU already runs the work in order: the
    view is made as of the default stream (no ``stream`` entry), so neither numba now
    nor CuPy, reading the view back for a next product, waits.  From any other stream
    the import waits, as the protocol asks."""
    desc = out.__cuda_array_interface__
    if cp.cuda.get_current_stream().ptr == 0:
        desc = {k: v for k, v in desc.items() if k != "stream"}
    return _CUDA.from_cuda_array_interface(desc, owner=out)


def gemm_plan(spec, xshape, yshape):
    """How cuBLAS (column-major) computes the 2-D einsum ``spec`` of C-contiguous
    operands of these shapes into a C-contiguous result: ``(op_y, op_x, m, n, k,
    ld_y, ld_x, ld_out)`` for ``gemm(op_y, op_x, m, n, k, 1, y, ld_y, x, ld_x, 0, out,
    ld_out)`` (a row-major ``out = A @ B`` is the column-major ``out^T = B^T A^T``,
    and a row-major array is the transpose of the column-major one of the same bytes),
    or None when the einsum is not one such product (batch letters, a letter summed
    within one operand, the result's letters in the other order, an empty axis)."""
    from ..prims.linalg import parse_spec
    sa, sb, so = parse_spec(spec)
    if len(sa) != 2 or len(sb) != 2 or len(so) != 2 or len(set(sa + sb)) != 3:
        return None
    summed = [c for c in sa if c in sb]
    if len(summed) != 1 or summed[0] in so:
        return None
    kc = summed[0]
    mc, nc = (c for c in so)
    if mc not in sa or nc not in sb:
        return None
    size = dict(zip(sa, xshape)) | dict(zip(sb, yshape))
    M, N, K = int(size[mc]), int(size[nc]), int(size[kc])
    if min(M, N, K) < 1:
        return None
    # y stored (k, n): column-major (n, k) = B^T as it is; stored (n, k): its transpose
    op_y, ld_y = (0, N) if sb == kc + nc else (1, K)
    # x stored (m, k): column-major (k, m) = A^T as it is; stored (k, m): transposed
    op_x, ld_x = (0, K) if sa == mc + kc else (1, M)
    return op_y, op_x, N, M, K, ld_y, ld_x, N


class Gemm:
    """Two-dimensional products of numba device arrays straight through cuBLAS, by
    CuPy's bindings on CuPy's handle and the arrays' pointers (``gemm_plan``): CuPy's
    own path makes a CuPy array of each operand, views of them and a numba view of the
    result, some 50 µs of host time a product (G3 makes five a call).

    **Checked against CuPy:** before its first use, each plan (einsum, shapes, dtype,
    float32 precision) computes a product of small random operands both ways (the same
    planning for sizes capped at 37, 41 and 43); a plan whose result differs (or a
    binding that fails) is not used again, and CuPy computes those products, as it does
    while CuPy's current stream is not the default one (numba's kernels run there, and
    only CuPy's path waits for them).  ``plans`` holds each plan, or False.
    ``GRADC_CUDA_GEMM=0`` in the environment leaves every product to CuPy."""

    def __init__(self, cp):
        self.cp = cp
        self.plans: dict = {}
        self.cublas = None
        if os.environ.get("GRADC_CUDA_GEMM", "1") == "0":    # (CuPy's path, to compare)
            return
        try:
            from cupy_backends.cuda.libs import cublas
            self.cublas = cublas
            from numba.cuda.cudadrv.devicearray import DeviceNDArray
            self.array_type = DeviceNDArray
        except Exception:
            self.cublas = None

    def __call__(self, spec, x, y, shape):
        if self.cublas is None or type(x) is not self.array_type or \
                type(y) is not self.array_type or x.dtype != y.dtype or \
                self.cp.cuda.get_current_stream().ptr != 0:
            return None          # (CuPy on a stream of its own: its path, which waits)
        key = (spec, x.shape, y.shape, x.dtype.char, _precision)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self._checked(spec, x, y, shape)
        if plan is False or not (x.is_c_contiguous() and y.is_c_contiguous()):
            return None
        out = empty(shape, x.dtype)
        self._run(plan, x.device_ctypes_pointer.value, y.device_ctypes_pointer.value,
                  out.device_ctypes_pointer.value)
        return out

    def _call_for(self, dtype):
        """(the cuBLAS call, alpha, beta) for ``dtype`` at the chosen precision."""
        import ctypes
        cublas = self.cublas
        if dtype == np.float64:
            return cublas.dgemm, ctypes.c_double(1.0), ctypes.c_double(0.0), None
        if dtype != np.float32:
            return None
        compute = {"highest": None, "high": 77, "medium": 75}[_precision]
        # (CUBLAS_COMPUTE_32F_FAST_TF32 = 77, _FAST_16BF = 75; CUDA_R_32F = 0)
        return cublas.sgemm, ctypes.c_float(1.0), ctypes.c_float(0.0), compute

    def _run(self, plan, xp, yp, outp):
        import ctypes
        op_y, op_x, m, n, k, ld_y, ld_x, ld_out, dtype = plan
        fn, alpha, beta, compute = self._call_for(dtype)
        cublas = self.cublas
        handle = self.cp.cuda.device.get_cublas_handle()
        mode = cublas.getPointerMode(handle)
        cublas.setPointerMode(handle, 0)          # (CUBLAS_POINTER_MODE_HOST)
        try:
            a, b = ctypes.addressof(alpha), ctypes.addressof(beta)
            if compute is None:
                fn(handle, op_y, op_x, m, n, k, a, yp, ld_y, xp, ld_x, b, outp, ld_out)
            else:
                cublas.gemmEx(handle, op_y, op_x, m, n, k, a, yp, 0, ld_y, xp, 0, ld_x,
                              b, outp, 0, ld_out, compute, -1)
        finally:
            cublas.setPointerMode(handle, mode)

    def _checked(self, spec, x, y, shape):
        plan = gemm_plan(spec, x.shape, y.shape)
        dtype = np.dtype(x.dtype)
        if plan is None or self._call_for(dtype) is None:
            return False
        # (the check runs the same plan on operands of at most 37, 41 and 43 along the
        # three letters: a few µs, and no symmetry to hide a transposition)
        from ..prims.linalg import parse_spec
        sa, sb, so = parse_spec(spec)
        size = dict(zip(sa, x.shape)) | dict(zip(sb, y.shape))
        caps = dict(zip(list(so) + [c for c in sa if c not in so], (37, 41, 43)))
        small = {c: min(int(n), caps[c]) for c, n in size.items()}
        sx, sy = tuple(small[c] for c in sa), tuple(small[c] for c in sb)
        trial = gemm_plan(spec, sx, sy)
        cp = self.cp
        try:
            rng = cp.random.default_rng(0)
            rx = rng.standard_normal(sx, dtype=np.float64).astype(dtype)
            ry = rng.standard_normal(sy, dtype=np.float64).astype(dtype)
            with _ComputeType(cp, dtype):
                want = cp.asnumpy(cp.einsum(spec, rx, ry)).astype(np.float64)
            got = cp.empty(tuple(small[c] for c in so), dtype)
            self._run(trial + (dtype,), rx.data.ptr, ry.data.ptr, got.data.ptr)
            got = cp.asnumpy(got).astype(np.float64)
        except Exception:
            return False
        plan = plan + (dtype,)
        tol = {"d": 1e-9, "f": 1e-3 if _precision == "highest" else 5e-2}[np.dtype(x.dtype).char]
        scale = max(1.0, float(np.abs(want).max()))
        if got.shape != want.shape or not np.all(np.abs(got - want) <= tol * scale):
            return False
        return plan


def _set_cupy() -> None:
    """CuPy's ``einsum`` (cuBLAS), ``linalg.solve`` (cuSOLVER's LU) and decompositions
    and argsort (``LIBRARY``) for the generated code when CuPy is installed (None otherwise: the
    generated kernels, or for decompositions the host, run instead)."""
    global cupy_einsum, cupy_solve, cupy_library, cupy_gemm
    cp = None if simulator() else _cupy()
    if cp is None:
        cupy_einsum = cupy_solve = cupy_library = cupy_gemm = None
        return

    gemm = cupy_gemm = Gemm(cp)

    def einsum(spec, x, y, shape):
        out = gemm(spec, x, y, shape)
        if out is not None:
            return out
        x, y = cp.asarray(x), cp.asarray(y)
        with _ComputeType(cp, x.dtype):
            out = matmul_einsum(cp, spec, x, y)
            if out is None:
                out = cp.einsum(spec, x, y)
        return from_cupy(cp, cp.ascontiguousarray(out).reshape(shape))

    import cupyx
    errstate = functools.partial(cupyx.errstate, linalg="raise")

    def solve(a, b, failure):
        with raising(failure, errstate):
            x = cp.linalg.solve(cp.asarray(a), cp.asarray(b))
        return from_cupy(cp, cp.ascontiguousarray(x))

    def library(name, a, failure=None, **params):
        # (rank-0 results, a single matrix's det, come back as NumPy scalars: kernels
        # take them as scalar arguments)
        with raising(failure, errstate):
            out = library_call(cp, name, cp.asarray(a), **params)
        return [r.get()[()] if r.ndim == 0 else from_cupy(cp, r) for r in out]
    cupy_einsum, cupy_solve, cupy_library = einsum, solve, library


@contextlib.contextmanager
def raising(failure, errstate=contextlib.nullcontext):
    """A library's ``LinAlgError`` (LAPACK's or cuSOLVER's ``info > 0``: a singular
    matrix, one not positive definite) as gradc's error ``failure``, which names the
    line; ``failure`` None: not checked.  ``errstate``: the context that makes the
    library raise (CuPy's default ignores them: infinities and NaNs; its check reads
    the status back, one wait for the device)."""
    if failure is None:
        yield
        return
    try:
        with errstate():
            yield
    except np.linalg.LinAlgError:
        from ..errors import EvaluationError
        raise EvaluationError(failure) from None


# ---------------------------------------------------------------- the compiled program

def simulated(source: str, path: str):
    """The code of a generated module for the simulator, and the globals it reads: in
    each kernel (a function decorated ``cuda.jit``, and its inner functions) every
    float literal, ``np.inf`` and ``np.nan``, is a NumPy float64 (a global of the
    module), as the GPU computes with it.  The simulator runs a kernel as Python, where
    a literal is a Python float: a select's ``0.0`` divided into ``1.0`` (``1 /
    np.maximum(x, 0)``, arctan2's gradient at the origin) raised ZeroDivisionError,
    and ``(-8.0) ** 1.5`` made a complex number, where numba's kernels (NumPy's error
    model) give inf and NaN.  The source, the GPU's code and ``.ptx()`` are
    unchanged."""
    import ast
    tree = ast.parse(source, path)
    typed: dict = {}

    def constant(value, node):
        key = repr(float(value))                      # (-0.0 apart from 0.0; nan)
        name = typed.setdefault(key, (f"_sim_f64_{len(typed)}", np.float64(value)))[0]
        return ast.copy_location(ast.Name(name, ast.Load()), node)

    class Typed(ast.NodeTransformer):
        def visit_Constant(self, node):
            return constant(node.value, node) if type(node.value) is float else node

        def visit_Attribute(self, node):
            if isinstance(node.value, ast.Name) and node.value.id == "np" and \
                    node.attr in ("inf", "nan") and isinstance(node.ctx, ast.Load):
                return constant(getattr(np, node.attr), node)
            return self.generic_visit(node)

    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                ast.unparse(d).startswith("cuda.jit") for d in node.decorator_list):
            Typed().visit(node)
    return compile(tree, path, "exec"), dict(typed.values())


class Compiled:
    """A Graph lowered for the GPU: call it with the graph's inputs."""

    def __init__(self, graph: Graph, name: str = "gradc_fn", fastmath: bool = False):
        from . import cudagen
        import_cuda()
        _set_cupy()
        self.graph = graph
        self.name = name
        self.fastmath = bool(fastmath)
        self.simulator = simulator()
        lowered = cudagen.lower(graph, name, self.simulator, self.fastmath)
        self.lowered = lowered
        self.source = lowered.source
        self.key = cache.key_of(self.source + f"cuda sim={self.simulator} fast={self.fastmath}")
        self.path = str(cache.write_source(self.key, self.source))
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.path] = (len(self.source), None, lines, self.path)
        module = types.ModuleType(f"gradc_cuda_{self.key}")
        module.__file__ = self.path
        if self.simulator:
            code, typed = simulated(self.source, self.path)
            module.__dict__.update(typed)
        else:
            code = compile(self.source, self.path, "exec")
        exec(code, module.__dict__)
        sys.modules[module.__name__] = module
        self.module = module
        self._uploaded = not lowered.consts     # (constants go to the device at the first
        for k, v in lowered.host_globals.items():  # call: lowering and PTX need no GPU)
            module.__dict__[k] = v
        self._fn = getattr(module, name)
        self.on_switch = []        # (numba_cpu.Compiled's interface; nothing switches here)
        # kernels not yet launched once (see _specialize; none under the simulator)
        self._unspecialized = [] if self.simulator else [k.name for k in lowered.kernels]
        # (the per-call fast path: device arrays of the traced shapes and dtypes)
        self._shapes = None if any(v.ndim == 0 for v in graph.inputs) else [
            (tuple(int(d) for d in v.shape), np.dtype(v.dtype)) for v in graph.inputs]
        self._results = [(v.ndim == 0, np.dtype(v.dtype), place)
                         for v, place in zip(graph.outputs, lowered.outputs)]

    @property
    def kernels(self) -> list:
        """The names of the generated kernels, in launch order."""
        return [k.name for k in self.lowered.kernels]

    @property
    def on_host(self) -> list:
        """Primitives of the Graph that run on the host (no CUDA lowering)."""
        return list(self.lowered.on_host)

    # ------------------------------------------------------------ calling

    def __call__(self, *args) -> list:
        shapes = self._shapes
        if shapes is not None and len(args) == len(shapes):
            for a, (shape, dtype) in zip(args, shapes):      # (numba's own arrays, as
                if type(a) is not _DEVICE_ARRAY or a.shape != shape or \
                        a.dtype != dtype or not a.is_c_contiguous():    # checked below)
                    break
            else:
                return self._run(args, True)
        cuda = _CUDA
        if len(args) != len(self.graph.inputs):
            raise TypeError(f"compiled graph takes {len(self.graph.inputs)} inputs, "
                            f"got {len(args)}")
        _require_a_device(cuda)
        device = [is_device_array(a) for a in args]
        on_device = any(device)
        converted = []
        for i, (a, v) in enumerate(zip(args, self.graph.inputs)):
            dtype = np.dtype(v.dtype)
            if v.ndim == 0:
                if device[i]:
                    x = host(as_numba(a))
                else:
                    x = a
                converted.append(np.asarray(x, dtype).reshape(())[()])
                continue
            if device[i]:
                d = a if type(a).__name__ in ("DeviceNDArray", "FakeCUDAArray") \
                    else as_numba(a)
                if tuple(d.shape) != tuple(v.shape) or np.dtype(d.dtype) != dtype:
                    raise ArgumentError(with_location(
                        f"gradc: argument {i} is a device array of shape {tuple(d.shape)} "
                        f"and dtype {np.dtype(d.dtype)}; the traced function takes "
                        f"{tuple(v.shape)} {dtype}"))
                if not d.is_c_contiguous():
                    raise ArgumentError(with_location(
                        f"gradc: argument {i} is a device array that is not C-contiguous "
                        f"(strides {tuple(d.strides)} for shape {tuple(d.shape)}); pass a "
                        "contiguous copy (CuPy's ascontiguousarray, PyTorch's contiguous)"))
                converted.append(d)
            else:
                converted.append(cuda.to_device(np.ascontiguousarray(a, dtype)))
        return self._run(converted, on_device)

    def _run(self, converted, on_device) -> list:
        if not self._uploaded:
            for k, v in self.lowered.consts.items():
                self.module.__dict__[k] = _CUDA.to_device(np.ascontiguousarray(v))
            self._uploaded = True
        try:
            results = self._fn(*converted)
        except GradcError:
            raise
        except Exception as e:
            if type(e).__name__ == "CudaSupportError":
                raise GradcError(
                    "gradc: target='cuda' needs an NVIDIA GPU and its driver, which "
                    f"numba.cuda did not find ({str(e).strip().splitlines()[0]}); set "
                    "NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's simulator") from e
            raise
        if self._unspecialized:
            self._specialize()
        out = []
        for r, (scalar, dtype, place) in zip(results, self._results):
            if scalar:
                x = host(r, scalar=True) if place == "dev" else r
                out.append(np.asarray(x, dtype).reshape(())[()])
            elif on_device:
                out.append(r if place == "dev" else dev(np.asarray(r, dtype)))
            else:
                out.append(r.copy_to_host() if place == "dev" else np.asarray(r, dtype))
        return out

    call_raw = __call__

    def _specialize(self) -> None:
        """Mark each kernel that has been launched, with one set of argument types,
        specialized: numba then launches its one compiled definition without working
        out the arguments' numba types again (``typeof`` of every argument, then a
        lookup: most of a launch's host time).  Sound because the generated host code
        passes a kernel the same types at every call: inputs become C-contiguous
        arrays of the traced dtypes and rank-0 inputs NumPy scalars of theirs, and every
        other argument is made by the same code from them.  A kernel not launched yet
        (a branch not taken) waits for its first launch."""
        left = []
        for name in self._unspecialized:
            kernel = self.module.__dict__.get(name)
            overloads = getattr(kernel, "overloads", None)
            if overloads is None or getattr(kernel, "specialized", True):
                continue                   # (not numba's CUDA dispatcher, or already so)
            if len(overloads) == 1:
                kernel._specialized = True
                if direct_launches():
                    self.module.__dict__[name] = direct_kernel(kernel)
            elif not overloads:
                left.append(name)
        self._unspecialized = left

    def fast_callable(self):
        """(The interface of ``numba_cpu.Compiled`` that gradc's fast call path uses: a
        tuple of results, rank-0 ones boxed as Numba boxes them, as Python numbers.)"""
        call = self.__call__

        def fast(*args):
            return tuple(r.item() if isinstance(r, np.generic) else r for r in call(*args))
        return fast

    # ------------------------------------------------------------ inspection

    def ptx(self, kernel=None, cc=None) -> str:
        """PTX of the generated kernels (or of the one named ``kernel``), compiled by
        numba.cuda for compute capability ``cc`` (default: the GPU's, else
        ``GRADC_CUDA_CC`` or 8.0).  Needs CUDA's NVVM, not a GPU; not in the simulator."""
        if self.simulator:
            raise ArgumentError(
                "gradc: PTX needs numba.cuda's compiler, which the simulator "
                "(NUMBA_ENABLE_CUDASIM=1) replaces; run without it (no GPU is needed)")
        import numba
        cuda = _CUDA
        cc = cc or _compute_capability(cuda)
        parts = []
        for k in self.lowered.kernels:
            if kernel is not None and k.name != kernel:
                continue
            sig = []
            for name, dtype, ndim in k.params:
                t = numba.from_dtype(np.dtype(dtype))
                layout = "A" if name in k.strided else "C"
                sig.append(t if ndim == 0 else numba.types.Array(t, ndim, layout))
            ptx, _ = cuda.compile_ptx(getattr(self.module, k.name).py_func, tuple(sig),
                                      cc=cc, fastmath=k.fastmath)
            if k.max_registers:     # (numba gives the limit to the linker: written here
                #                     as PTX's directive, which ptxas applies too)
                ptx = re.sub(r"(\.entry[^{]*?\)\s*)\{",
                             lambda m: f"{m.group(1)}.maxnreg {k.max_registers}\n{{",
                             ptx, count=1)
            parts.append(f"// kernel {k.name}\n{ptx}")
        if not parts and kernel is None:
            return "// no kernels: every equation of this graph runs on the host\n"
        if not parts:
            raise ArgumentError(f"gradc: no kernel named {kernel!r} "
                                f"(kernels: {', '.join(self.kernels) or 'none'})")
        return "\n".join(parts)

    def llvm(self) -> str:
        raise ArgumentError("gradc: target='cuda' compiles to PTX: use .ptx(...)")

    asm = llvm

    def __repr__(self) -> str:
        return f"<gradc.codegen.cuda.Compiled {self.name} from {self.path}>"

    def __reduce__(self):
        return (Compiled, (self.graph, self.name, self.fastmath))


# ---------------------------------------------------------------- direct launches

def direct_launches() -> bool:
    """Whether specialized kernels launch through ``DirectKernel`` (the default;
    ``GRADC_CUDA_DIRECT=0`` in the environment keeps numba's launch path)."""
    return os.environ.get("GRADC_CUDA_DIRECT", "1") != "0"


def direct_kernel(dispatcher):
    """``dispatcher`` (numba.cuda's, specialized: one compiled definition) as a
    ``DirectKernel`` when this numba-cuda launches through cuda.core (numba-cuda 0.2x
    and later) and every parameter is of a kind it flattens; else ``dispatcher``."""
    import ctypes
    try:
        from cuda.core import LaunchConfig, launch
        from numba.cuda.cudadrv import driver
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        overload = next(iter(dispatcher.overloads.values()))
        kernel = overload._codelibrary.get_cufunc().kernel
        stream = driver._to_core_stream(0)
        types_ = list(overload.argument_types)
        overload._prepare_args                 # noqa: B018 (the check calls it)
    except Exception:                         # (an older numba.cuda: its own path)
        return dispatcher
    try:                                      # (the types numba-cuda's launch path tests)
        from numba.cuda import types as nt
        nt.Array, nt.Integer                   # noqa: B018
    except (ImportError, AttributeError):
        from numba.core import types as nt
    kinds = []
    for ty in types_:
        if isinstance(ty, nt.Array):
            kinds.append(None)
        elif isinstance(ty, nt.Integer):
            kinds.append(getattr(ctypes, f"c_{ty}"))
        elif ty == nt.float64:
            kinds.append(ctypes.c_double)
        elif ty == nt.float32:
            kinds.append(ctypes.c_float)
        elif ty == nt.boolean:
            kinds.append(_same)
        else:
            return dispatcher
    return DirectKernel(dispatcher, overload, kernel, kinds, launch, LaunchConfig, stream,
                        DeviceNDArray)


def _same(x):
    return x


class DirectKernel:
    """A specialized kernel launched straight through cuda.core's ``launch``, its
    arguments flattened here: numba's launch path costs tens of µs a launch on a
    GPU's host (a launch configuration with a new stream object, the arguments'
    conversion, a strided memory view of each array), the most of a small kernel's time
    and, with a dozen launches, milliseconds of G4's.

    Used in place of numba's dispatcher as ``kernel[grid, block](*args)``.  Each
    array argument becomes numba's array parameters (meminfo, parent, size, itemsize,
    data pointer, shape, strides: numba's data model), each scalar the ctypes value
    numba passes.  **Checked against numba:** the first launch compares the flattened
    arguments with those numba's own ``_prepare_args`` makes of the same arguments;
    if they differ, or an argument is not a numba device array (numba would convert
    it), or the launch comes from another thread than the first (whose CUDA context
    is current there), numba launches it, as before; so it does when the first direct
    launch fails.  ``state`` says which: None before the first launch, True once a
    launch went directly, else why not."""

    def __init__(self, dispatcher, overload, kernel, kinds, launch, config_type, stream,
                 array_type):
        import threading
        self.dispatcher, self.overload, self.kernel = dispatcher, overload, kernel
        self.kinds, self.launch, self.config_type = kinds, launch, config_type
        self.stream, self.array_type = stream, array_type
        self.thread = threading.get_ident()
        self._ident = threading.get_ident
        self.state = None
        self.launchers: dict = {}

    @property
    def py_func(self):
        return self.dispatcher.py_func

    def __getitem__(self, config):
        run = self.launchers.get(config)
        if run is None:
            grid, block = config
            run = _Launcher(self, self.dispatcher[config],
                            self.config_type(grid=grid, block=block, shmem_size=0))
            if len(self.launchers) < 64:       # (a grid sized at run time: a few kept)
                self.launchers[config] = run
        return run

    def flatten(self, args):
        """The kernel's parameters for ``args``, None if one is not a numba device
        array where the kernel takes an array."""
        flat = []
        array_type = self.array_type
        for kind, a in zip(self.kinds, args):
            if kind is None:
                if type(a) is not array_type:
                    return None
                flat += (0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value or 0)
                flat += a.shape
                flat += a.strides
            else:
                flat.append(kind(a))
        return flat

    def check(self, args):
        """"checked" if ``flatten(args)`` is what numba passes for ``args``, else why
        not."""
        flat = self.flatten(args)
        if flat is None:
            return "an argument that is not a numba device array"
        theirs, retr = [], []
        for ty, a in zip(self.overload.argument_types, args):
            self.overload._prepare_args(ty, a, self.stream, retr, theirs)
        if retr:
            return "numba copies an argument back after the launch"
        if _plain(flat) != _plain(theirs):
            return "numba flattens the arguments otherwise"
        return "checked"


class _Launcher:
    """``DirectKernel[grid, block]``: launches the kernel with that configuration."""
    __slots__ = ("direct", "slow", "config")

    def __init__(self, direct, slow, config):
        self.direct, self.slow, self.config = direct, slow, config

    def __call__(self, *args):
        d = self.direct
        if d.state is not True or d._ident() != d.thread:
            if d._ident() != d.thread:
                return self.slow(*args)
            if d.state is None:
                d.state = d.check(args)
            if d.state != "checked":
                return self.slow(*args)
            try:                                # (the first direct launch: numba's if
                d.launch(d.stream, self.config, d.kernel, *d.flatten(args))   # it fails)
            except Exception as e:
                d.state = f"cuda.core's launch failed ({type(e).__name__}: {e})"
                return self.slow(*args)
            d.state = True
            return
        flat = d.flatten(args)
        if flat is None:
            return self.slow(*args)
        try:
            d.launch(d.stream, self.config, d.kernel, *flat)
        except Exception:       # (another device's context current: numba loads the
            return self.slow(*args)     # module there; a real error, it raises again)


def _plain(flat) -> list:
    """Kernel parameters as comparable (type name, value) pairs."""
    return [(type(x).__name__, x.value if hasattr(x, "_type_") else x) for x in flat]


def _compute_capability(cuda) -> tuple:
    text = os.environ.get("GRADC_CUDA_CC")
    if text:
        major, minor = text.split(".")
        return int(major), int(minor)
    try:
        if cuda.is_available():
            return tuple(cuda.get_current_device().compute_capability)
    except Exception:
        pass
    return (8, 0)
