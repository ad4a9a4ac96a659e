"""Host time of gradc's CUDA calls, measured without a GPU.

A call of G1-G4 (benchmarks/gpu.py's functions at their sizes) on device inputs, with
numba.cuda's real array classes on made-up device addresses, gradc's caching allocator
(its blocks handed out and given back as on a GPU), and every kernel launched through
gradc's ``DirectKernel`` with cuda.core's ``launch`` replaced by a function that does
nothing.  So the figure is the Python gradc and numba run per call: what a GPU's host
adds before and between its launches, less the driver's own calls (the launches, and
the synchronisation the benchmark waits for).  CuPy is turned off (its cuBLAS calls would
run on the made-up addresses): G3's products are gradc's tiled kernels here.

    python benchmarks/cuda_host.py [--only G1,G2,G4] [--repeats 3000] [--parts]

Needs numba.cuda with NVIDIA's bindings (numba-cuda, as on the GPU images); no GPU, no
NVVM (nothing is compiled).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import os
import sys
import time
import timeit

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack              # numba-cuda <= 0.30 on NumPy >= 2.5
os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
os.environ["GRADC_CUDA_CUPY"] = "0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu  # noqa: E402

from gradc.codegen import cuda as d  # noqa: E402
from gradc.codegen.cudagen import _c_strides  # noqa: E402


def fake_device():
    """numba.cuda with made-up memory and launches that do nothing; returns the pool."""
    cuda = d.import_cuda()
    import numba.cuda.cudadrv.devices as devices
    from numba.cuda.cudadrv import driver
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.dispatcher import CUDADispatcher

    addresses = itertools.count(1 << 32, 1 << 30)

    def block(size):                      # (a block of numba's manager)
        return driver.MemoryPointer(None, driver.binding.CUdeviceptr(next(addresses)), size)

    class Deallocations:
        is_disabled = False

        def clear(self):
            pass
    cls = d.caching_memory_manager()
    pool = cls.__new__(cls)               # (numba's constructor needs a context)
    pool.free_blocks, pool.handed_out, pool.pending = {}, {}, []
    pool.generation, pool._keys, pool.hits, pool.misses = 0, itertools.count(), 0, 0
    pool.deallocations, pool.context, pool._context = Deallocations(), None, None
    pool._allocate = block

    class Context:
        memalloc = staticmethod(pool.memalloc)
    context = Context()
    devices.get_context = lambda devnum=None: context

    def device_array(shape, dtype):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = np.dtype(dtype)
        return DeviceNDArray(shape, tuple(s * dtype.itemsize for s in _c_strides(shape)),
                             dtype)
    cuda.device_array = device_array
    DeviceNDArray.copy_to_host = lambda self, *a, **k: np.zeros(self.shape, self.dtype)

    def specialize(self):                 # every kernel a DirectKernel, launching nothing
        for k in self.lowered.kernels:
            kinds = [None if ndim else {"float64": ctypes.c_double,
                                        "float32": ctypes.c_float}.get(
                                            np.dtype(dtype).name, ctypes.c_int64)
                     for _, dtype, ndim in k.params]
            direct = d.DirectKernel(self.module.__dict__[k.name], None, None, kinds,
                                    lambda *args: None, lambda **kw: kw, None, DeviceNDArray)
            direct.state = True
            self.module.__dict__[k.name] = direct
        self._unspecialized = []
    d.Compiled._specialize = specialize
    CUDADispatcher.__getitem__ = lambda self, config: (lambda *args: None)
    return pool, device_array


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="G1,G2,G3,G4")
    ap.add_argument("--repeats", type=int, default=3000)
    ap.add_argument("--parts", action="store_true",
                    help="also time an allocation and the layers of a call")
    args = ap.parse_args()
    pool, device_array = fake_device()
    print("| workload | host per call | launches | arrays made |")
    print("| --- | --- | --- | --- |")
    seen = set()
    for name in args.only.split(","):
        size = gpu.SIZES[name]
        rng = np.random.default_rng(0)
        ins, make, _, _ = gpu.cases(name, size if name in ("G3", "G4") else 64, np.float32,
                                    rng, {})
        if name in ("G1", "G2"):
            ins = [np.zeros(size, np.float32) for _ in ins]
        fn = make("cuda")
        dins = [device_array(x.shape, x.dtype) for x in ins]
        fn(*dins)
        fn(*dins)
        compiled = [o for o in gc.get_objects() if isinstance(o, d.Compiled) and
                    id(o) not in seen and len(o.graph.inputs) == len(dins)][-1]
        seen.add(id(compiled))
        before = pool.hits + pool.misses
        t = time.perf_counter()
        for _ in range(args.repeats):
            fn(*dins)
        per = (time.perf_counter() - t) / args.repeats * 1e6
        made = (pool.hits + pool.misses - before) / args.repeats
        print(f"| {name} float32 | {per:.1f} us | {len(compiled.kernels)} | {made:g} |")
        if args.parts:
            n = 20000
            shape = tuple(dins[0].shape)
            alloc = timeit.timeit(lambda: d.empty(shape, np.float32), number=n) / n
            raw = timeit.timeit(lambda: compiled._fn(*dins), number=n // 4) / (n // 4)
            whole = timeit.timeit(lambda: compiled(*dins), number=n // 4) / (n // 4)
            print(f"|   (an array made and released {alloc * 1e6:.2f} us; the generated "
                  f"function {raw * 1e6:.1f} us, with Compiled's checks {whole * 1e6:.1f} "
                  "us) | | | |")


if __name__ == "__main__":
    main()
