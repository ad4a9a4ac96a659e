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
"""
from __future__ import annotations

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
