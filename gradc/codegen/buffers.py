"""Reuse of large output buffers across calls (a caching allocator).

A fresh large NumPy array costs the kernel's zero-filling of its pages at the first
write: at n = 1e7 float64 that is ~4 ms of a 9 ms gradient (docs/benchmarks.md, W1).
Compiled gradc functions write their results into buffers they allocate in Python
(destination passing), so they can take those buffers from a pool instead:

* ``empty(shape, dtype)`` returns an uninitialised array; from ``MIN_BYTES`` on, its
  memory comes from a block a previous result no longer uses, when there is one.
* A block goes back to the pool when the last array that can reach its memory is gone:
  the array handed out is built on a ``memoryview`` of the block, every view of it keeps
  that array (hence the memoryview) alive, and a ``weakref.finalize`` on the memoryview
  returns the block.  A block still reachable from user code is never handed out again.
* The pool keeps at most ``GRADC_POOL_BYTES`` bytes of idle blocks (default 256 MiB);
  ``clear()`` drops them all.

Memory the compiled code allocates itself (Numba's runtime: a loop body's arrays, each
iteration) comes from the C library's ``malloc``; ``keep_heap`` is about that.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref

import numpy as np

MIN_BYTES = 1 << 20
_LIMIT = int(os.environ.get("GRADC_POOL_BYTES", 256 << 20))

_idle: dict[int, list[np.ndarray]] = {}     # nbytes -> idle blocks (uint8, owning)
_held = [0]                                 # bytes in idle blocks
_lock = threading.RLock()    # reentrant: a finalizer may run in a GC inside ``empty``


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised array, its memory reused from the pool when large."""
    dtype = np.dtype(dtype)
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES or dtype.hasobject:
        return np.empty(shape, dtype)
    with _lock:
        blocks = _idle.get(nbytes)
        block = blocks.pop() if blocks else None
        if block is not None:
            _held[0] -= nbytes
    if block is None:
        block = np.empty(nbytes, np.uint8)
    flat = np.frombuffer(memoryview(block), dtype, count)
    # (not at interpreter exit: a block still held must never be handed out again)
    weakref.finalize(flat.base, _give_back, block).atexit = False
    return flat.reshape(shape)


def _give_back(block: np.ndarray) -> None:
    with _lock:
        if _held[0] + block.nbytes <= _LIMIT:
            _idle.setdefault(block.nbytes, []).append(block)
            _held[0] += block.nbytes


def held() -> int:
    """Bytes kept in idle blocks."""
    return _held[0]


def clear() -> None:
    """Drop every idle block."""
    with _lock:
        _idle.clear()
        _held[0] = 0


# glibc's mallopt parameters, and the values its own adaptive rule ends at on a 64-bit
# machine (DEFAULT_MMAP_THRESHOLD_MAX, and twice that)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_")


@functools.cache
def keep_heap() -> bool:
    """Hold glibc's heap at the thresholds its adaptive rule reaches by itself.

    glibc starts with blocks of 128 KiB and more in ``mmap``s of their own, and gives the
    top of its heap back to the system whenever 256 KiB or more of it is free; each
    block freed from an ``mmap`` raises both (to its size, and twice its size).  Where
    they stand depends on what the process did before: the gradient of a neural ODE
    (64 states, 256 hidden units) allocates and frees ~1,700 arrays of 128 KiB to 1.8 MB
    a call in its adjoint loop, and took 8-9 ms in a process that had compiled it but
    35-37 ms in one that loaded it from the disk cache, where the heap grew and shrank
    91 times a call and every page was faulted in again (docs/benchmarks.md,
    thirty-eighth session).  Setting the thresholds to the ceilings of that rule (blocks
    under 32 MiB from the heap; the top given back from 64 MiB free) makes a call's time
    independent of the process's history.

    Once per process, from the first compiled CPU function; only with glibc, and not
    when the user set any of its ``MALLOC_*_`` variables or a ``glibc.malloc`` tunable,
    or set ``GRADC_MALLOPT=0``.  Returns whether the thresholds are set."""
    if (os.environ.get("GRADC_MALLOPT", "1") == "0"
            or any(v in os.environ for v in _USER_SETTINGS)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
            or not _glibc()):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # (the mmap threshold first: setting either stops glibc's rule from moving both)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc() -> bool:
    """Whether the C library is glibc (``os.confstr``: no scan of the executable, as
    ``platform.libc_ver`` makes, ~2 ms)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False

