"""Numba kernels that the generated code calls where Numba's NumPy support lacks a
feature (reductions and scans over chosen axes, batched BLAS/LAPACK, conv2d).

Conventions: a reduction or scan over an arbitrary set of axes is brought to a 2-D
problem by the generated code (transpose the reduced axes to the end, make the array
C-contiguous, reshape to ``(kept, reduced)``); the kernels here then work on rows.
Batched linear algebra takes ``(batch, n, m)`` C-contiguous arrays.  Every kernel
allocates its result in the dtype of its operand, so float32 stays float32.

Specialised code (gather, scatter_add, index_set, which depend on an index spec)
is generated per equation by ``gradc.codegen.indexing`` instead of living here.
"""
from __future__ import annotations

import numba
import numba.extending
import numpy as np
from numba.cpython.unsafe.tuple import tuple_setitem as _tuple_setitem

from ..errors import EvaluationError, GuardFailure  # noqa: F401  (_k.EvaluationError)
from .linking import link_only
from .pysource import OBJMODE_FLOPS
from .special import (digamma, erf, erfc, erfinv, gamma, lgamma,  # noqa: F401  (_k.erf ...)
                      ndtri, polygamma)
from .vecmath import exp as vexp  # noqa: F401  (_k.vexp ...: pysource.SCALAR_TEMPLATES)
from .vecmath import log as vlog  # noqa: F401
from .vecmath import log1p as vlog1p  # noqa: F401
from .vecmath import tanh as vtanh  # noqa: F401



def _numpy_support_without_scipy_linalg() -> None:
    """Load Numba's NumPy support module without its start-up SciPy check.

    When first imported (at the first compile or cache load of a process), that module
    asks ``scipy.linalg`` whether a BLAS exists, to set one flag for an inner-product
    helper: an import of 0.2-0.4 s here (measured: first ``njit`` call in a fresh
    process 0.56-0.70 s with this, 0.76-1.1 s without).  Numba imports
    ``scipy.linalg`` again when it compiles a BLAS or LAPACK call, so the check is
    answered "available" (SciPy is a dependency of gradc) while the module loads."""
    import sys
    if "numba.np.arraymath" in sys.modules:
        return
    try:
        import numba.np.linalg as linalg
        real = linalg.ensure_blas
    except (ImportError, AttributeError):
        return
    linalg.ensure_blas = lambda: None
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        linalg.ensure_blas = real


_numpy_support_without_scipy_linalg()

njit = numba.njit(cache=True, nogil=True, error_model="numpy")
# kernels with an object-mode block (NumPy's BLAS) hold the GIL
njit_gil = numba.njit(cache=True, error_model="numpy")


# ---------------------------------------------------------------- layout

# for functions generated per equation (no on-disk cache: they live in generated modules;
# link-only, unless GRADC_LINK_ONLY=0: compiled into the machine code of the function
# that calls them, see codegen.linking)
jit_helper = link_only(nogil=True, error_model="numpy")


def _noalias(decorator):
    """``decorator`` compiling with Numba's ``noalias`` flag (see ``jit_noalias``).  A
    fused nest writes only arrays it allocates or that its caller allocated for it
    (``_o``, ``_y`` buffers), which no argument overlaps: the flag lets LLVM keep a
    reduction's element in a register across the loop's reads (a 32x32x32 max over the
    middle axis: 8.4 -> 6.0 µs)."""
    def wrap(fn):
        dispatcher = decorator(fn)
        compiler = getattr(dispatcher, "_compiler", None)
        if compiler is not None and hasattr(compiler, "_customize_flags"):
            def customize(flags):
                flags.noalias = True
                return flags
            compiler._customize_flags = customize
        return dispatcher
    return wrap


# the loop nests of fused equations (codegen.loops), one thread or several
jit_loops = _noalias(link_only(nogil=True, error_model="numpy"))
jit_loops_parallel = link_only(nogil=True, error_model="numpy", parallel=True)
jit_loops_fastmath = _noalias(link_only(nogil=True, error_model="numpy", fastmath=True))
jit_loops_parallel_fastmath = link_only(nogil=True, error_model="numpy", parallel=True,
                                        fastmath=True)
# nests whose results are all float sums: LLVM may reassociate their arithmetic (several
# partial sums), nothing more (see codegen.loops._reassociates)
jit_loops_reassoc = _noalias(link_only(nogil=True, error_model="numpy",
                                       fastmath={"reassoc"}))
jit_loops_parallel_reassoc = link_only(nogil=True, error_model="numpy", parallel=True,
                                       fastmath={"reassoc"})
# the body of a structured loop (codegen.control): it calls the nests (an object-mode
# block in it holds the GIL anyway)
jit_body = link_only(error_model="numpy")
# loop nests run from object-mode blocks (on_threads) are compiled on their own, not into
# the main function's machine code: they get disk-cache entries of their own, beside it
# (named after the generated module, so cache.seal covers them)
jit_pooled = numba.njit(cache=True, nogil=True, error_model="numpy")
jit_pooled_fastmath = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=True)


def jit_noalias(fn):
    """``jit_pooled`` for a function whose array arguments never overlap one another,
    compiled with Numba's ``noalias`` flag (which ``parallel=True`` sets for the bodies
    it outlines, but no option exposes): LLVM may then keep values read or written
    through one argument in registers across writes through another.  The flag is set
    through the dispatcher's compiler hook; where a Numba version lacks the hook the
    function is compiled without it (same results, slower)."""
    return _noalias(jit_pooled)(fn)


_POOL = None        # (pid, ThreadPoolExecutor) for on_threads
CHUNKS_PER_THREAD = 4


def threads() -> int:
    """Threads that split a kernel's work: Numba's thread count (``NUMBA_NUM_THREADS``,
    else the CPUs)."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def on_threads(fn, count, *args):
    """``fn(*args, lo, hi)`` over ``[0, count)``: this thread and a pool's threads (``fn``
    releases the GIL) take contiguous chunks, four per thread, until none is left.
    Taking chunks rather than one range each keeps a thread that shares its core with
    another library's busy threads (OpenBLAS's idle threads spin for ~0.1 s after a
    product) from holding up the rest.  Called from object-mode blocks, like NumPy's
    BLAS; a pool made before a fork is not used by the child (its threads are gone)."""
    global _POOL
    parts = min(threads(), count)
    if parts <= 1:
        fn(*args, 0, count)
        return
    import os
    import threading
    if _POOL is None or _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor
        _POOL = (os.getpid(), ThreadPoolExecutor(threads() - 1,
                                                 thread_name_prefix="gradc-kernel"))
    chunks = min(count, CHUNKS_PER_THREAD * parts)
    cuts = [count * k // chunks for k in range(chunks + 1)]
    order, lock = iter(range(chunks)), threading.Lock()

    def work():
        while True:
            with lock:
                k = next(order, None)
            if k is None:
                return
            fn(*args, cuts[k], cuts[k + 1])

    futures = []
    try:
        for _ in range(parts - 1):
            futures.append(_POOL[1].submit(work))
    except RuntimeError:        # no new threads at interpreter exit: this thread does it
        pass
    try:
        work()
    finally:                    # the pool's threads still write into the arrays: wait
        for f in futures:
            f.exception()
    for f in futures:
        f.result()


@njit
def regroup(x, perm, shape):
    """``x`` with its axes permuted by ``perm``, C-contiguous, reshaped to ``shape``
    (e.g. ``(kept, reduced)`` for a reduction, ``(batch, m, k)`` for a contraction)."""
    return np.ascontiguousarray(transposed(x, perm)).reshape(shape)


@njit
def contiguous(x):
    return np.ascontiguousarray(x)


# Two of Numba's own lowerings cost seconds of compile time the first time a process
# uses them, which a generated function (not cached on disk) pays at every cold start:
# an array assigned into an array (``y[t] = x``, ``out[1:4] = x``) compiles the
# formatting of its shape-mismatch message (str, join: 2.5-3 s), and
# ``x.transpose(perm)`` with explicit axes does that too (it writes its shape with
# ``shape[:] = shape[perm]``) and hashes a set besides (2.2 s against 0.5 s below).
# Generated code calls these instead.

def _transposed(x, perm):
    """``x.transpose(perm)``: a view with its shape and strides permuted (``perm`` is
    gradc's, already checked)."""
    shape, strides = x.shape, x.strides
    for i in range(len(perm)):
        shape = _tuple_setitem(shape, i, x.shape[perm[i]])
        strides = _tuple_setitem(strides, i, x.strides[perm[i]])
    return np.lib.stride_tricks.as_strided(x, shape, strides)


def _transposed_py(x, perm):
    return x.transpose(perm)


# (run as Python, NUMBA_DISABLE_JIT=1, the tuple intrinsic above does not exist)
transposed = _transposed_py if numba.config.DISABLE_JIT else njit(_transposed)


def copy_into(dst, src):
    """``dst[...] = src`` for two arrays of one shape (checked) that do not partly
    overlap (a fresh buffer and a value, a tape's step and the carry it records)."""
    dst[...] = src


_COPY_LOOPS: dict = {}


@numba.extending.overload(copy_into, jit_options={"nogil": True})
def _copy_into(dst, src):
    # (a loop nest per rank, compiled into its caller: 0.2-0.5 s the first time, and
    # 3x faster than Numba's general assignment on a 32x32 step)
    if not (isinstance(dst, numba.types.Array) and isinstance(src, numba.types.Array)
            and dst.ndim == src.ndim):
        return None
    n = dst.ndim
    if n not in _COPY_LOOPS:
        at = ", ".join(f"i{k}" for k in range(n)) or "()"
        lines = ["def impl(dst, src):",
                 "    if dst.shape != src.shape:",
                 "        raise ValueError('copy_into: the shapes differ')"]
        lines += ["    " * (k + 1) + f"for i{k} in range(src.shape[{k}]):" for k in range(n)]
        lines.append("    " * (n + 1) + f"dst[{at}] = src[{at}]")
        scope: dict = {}
        exec("\n".join(lines), scope)
        _COPY_LOOPS[n] = scope["impl"]
    return _COPY_LOOPS[n]


def blas_operand(x):
    """``x`` as BLAS takes it: itself when C- or F-contiguous (a transposed matrix
    included), else a C-contiguous copy."""
    return x if x.flags.c_contiguous or x.flags.f_contiguous else np.ascontiguousarray(x)


@numba.extending.overload(blas_operand)
def _blas_operand(x):
    # (decided by the type's layout: Numba's np.dot takes 'C' and 'F' arrays, not 'A')
    if isinstance(x, numba.types.Array) and x.layout in "CF":
        return lambda x: x
    return lambda x: np.ascontiguousarray(x)


def as_matrix(x, rows, cols):
    """``x`` (C-contiguous, or made so) as a ``rows`` x ``cols`` matrix: a view of a
    contiguous array, no copy (a contraction over leading axes as one BLAS product)."""
    return np.ascontiguousarray(x).reshape((rows, cols))


@numba.extending.overload(as_matrix)
def _as_matrix(x, rows, cols):
    if isinstance(x, numba.types.Array) and x.layout == "C":
        return lambda x, rows, cols: x.reshape((rows, cols))
    return lambda x, rows, cols: np.ascontiguousarray(x).reshape((rows, cols))


@njit
def broadcast(x, expanded, shape):
    """``x`` reshaped to ``expanded`` (size-1 axes where it has none), then broadcast to
    ``shape`` and materialised."""
    out = np.empty(shape, x.dtype)
    out[...] = np.ascontiguousarray(x).reshape(expanded)
    return out


@njit
def full(shape, value):
    out = np.empty(shape, np.asarray(value).dtype)
    out[...] = value
    return out


# ---------------------------------------------------------------- reductions over rows

@njit
def sum_rows(x):
    out = np.zeros(x.shape[0], x.dtype)
    for k in range(x.shape[0]):
        acc = out[k]
        for r in range(x.shape[1]):
            acc += x[k, r]
        out[k] = acc
    return out


@njit
def prod_rows(x):
    out = np.ones(x.shape[0], x.dtype)
    for k in range(x.shape[0]):
        acc = out[k]
        for r in range(x.shape[1]):
            acc *= x[k, r]
        out[k] = acc
    return out


@njit
def max_rows(x):
    # NaN propagates, as in np.max
    out = np.empty(x.shape[0], x.dtype)
    for k in range(x.shape[0]):
        m = x[k, 0]
        for r in range(1, x.shape[1]):
            if m != m:
                break
            v = x[k, r]
            if v > m or v != v:
                m = v
        out[k] = m
    return out


@njit
def min_rows(x):
    out = np.empty(x.shape[0], x.dtype)
    for k in range(x.shape[0]):
        m = x[k, 0]
        for r in range(1, x.shape[1]):
            if m != m:
                break
            v = x[k, r]
            if v < m or v != v:
                m = v
        out[k] = m
    return out


@njit
def argmax_rows(x):
    # the first maximum; the first NaN if there is one (np.argmax)
    out = np.empty(x.shape[0], np.int64)
    for k in range(x.shape[0]):
        best, m = 0, x[k, 0]
        if m == m:
            for r in range(1, x.shape[1]):
                v = x[k, r]
                if v != v:
                    best = r
                    break
                if v > m:
                    best, m = r, v
        out[k] = best
    return out


@njit
def argmin_rows(x):
    out = np.empty(x.shape[0], np.int64)
    for k in range(x.shape[0]):
        best, m = 0, x[k, 0]
        if m == m:
            for r in range(1, x.shape[1]):
                v = x[k, r]
                if v != v:
                    best = r
                    break
                if v < m:
                    best, m = r, v
        out[k] = best
    return out


@njit
def cumsum_rows(x, reverse):
    out = np.empty_like(x)
    n = x.shape[1]
    zero = np.zeros(1, x.dtype)[0]
    for k in range(x.shape[0]):
        acc = zero
        for j in range(n):
            r = n - 1 - j if reverse else j
            acc += x[k, r]
            out[k, r] = acc
    return out


@njit
def argsort_rows(x):
    """Each row's stable argsort (Numba's mergesort: NaNs last, as NumPy's)."""
    out = np.empty(x.shape, np.int64)
    for k in range(x.shape[0]):
        out[k] = np.argsort(x[k], kind="mergesort")
    return out


# ---------------------------------------------------------------- linear algebra

@njit
def small_dot(a, b):
    """``np.dot(a, b)`` of a product below ``OBJMODE_FLOPS`` (generated code calls this
    rather than np.dot itself: Numba compiled its implementation, 0.2 s for each pair of
    layouts, into every new module; from here, once, then from its cache on disk)."""
    return np.dot(a, b)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def matvec(m, v):
    """``m @ v`` of a small matrix (``pysource.SMALL_MATVEC``) as a loop: without
    BLAS's ~0.1 µs per call and Numba's checks around it (18 reference-count updates a
    call).  A column-major ``m`` (``a.T``: the product ``v @ a``) is run by columns, the
    inner loop over contiguous entries; each row's sum of a row-major one may be
    reassociated into vector lanes, as BLAS's is."""
    rows, cols = m.shape
    out = np.zeros(rows, m.dtype)
    if m.strides[0] < m.strides[1]:
        for j in range(cols):
            vj = v[j]
            for i in range(rows):
                out[i] += m[i, j] * vj
    else:
        for i in range(rows):
            s = out[i]
            for j in range(cols):
                s += m[i, j] * v[j]
            out[i] = s
    return out


@njit_gil
def dot(a, b, out):
    """``out[...] = a @ b`` for 2-D float operands (``out`` C-contiguous, of their dtype);
    ``a`` and ``b`` may be transposed views."""
    if a.shape[0] * a.shape[1] * b.shape[1] < OBJMODE_FLOPS:
        out[...] = np.dot(a, b)
    else:
        with numba.objmode():
            np.dot(a, b, out=out)
    return out


@njit_gil
def matmul_batched(a, b):
    """``(B, M, K) @ (B, K, N)`` on BLAS (floats)."""
    nb, m, n = a.shape[0], a.shape[1], b.shape[2]
    out = np.empty((nb, m, n), a.dtype)
    if nb * m * a.shape[2] * n < OBJMODE_FLOPS:
        for i in range(nb):
            out[i] = np.dot(a[i], b[i])
    else:
        with numba.objmode():
            np.matmul(a, b, out=out)
    return out


@njit
def matmul_batched_loops(a, b):
    """The same for integer and boolean operands (no BLAS)."""
    nb, m, kk, n = a.shape[0], a.shape[1], a.shape[2], b.shape[2]
    out = np.zeros((nb, m, n), a.dtype)
    for i in range(nb):
        for p in range(m):
            for q in range(kk):
                s = a[i, p, q]
                for r in range(n):
                    out[i, p, r] += s * b[i, q, r]
    return out


# LAPACK's calls, as cached kernels that return a status beside their results: 0, 1
# (LAPACK failed: NumPy's LinAlgError, ``pysource.LINALG_FAILURES``), 2 (an operand holds
# infinities or NaNs, which Numba's wrappers refuse).  Generated code that called
# np.linalg itself compiled Numba's implementation into every new module, and the
# try/except around it (0.45 s each): a solve's gradient took 8.2 s on its first call,
# 3.4 s with the call here, 1.7 s without the try/except too.  Numba compiles these once
# per signature and then loads them from its cache on disk.

@njit
def _failure(failed, finite):
    return 0 if not failed else (1 if finite else 2)


@njit
def lapack_solve(a, b):
    failed = False
    try:
        x = np.ascontiguousarray(np.linalg.solve(a, b))
    except Exception:
        failed = True
        x = np.empty_like(b)
    return x, _failure(failed, failed and np.isfinite(a).all() and np.isfinite(b).all())


@njit
def lapack_det(a):
    failed = False
    try:
        d = np.linalg.det(a)
    except Exception:
        failed = True
        d = 0.0
    return d, _failure(failed, failed and np.isfinite(a).all())


@njit
def lapack_slogdet(a):
    failed = False
    try:
        s, v = np.linalg.slogdet(a)
    except Exception:
        failed = True
        s, v = 0.0, 0.0
    return s, v, _failure(failed, failed and np.isfinite(a).all())


@njit
def lapack_cholesky(a):
    failed = False
    try:
        c = np.ascontiguousarray(np.linalg.cholesky(a))
    except Exception:
        failed = True
        c = np.empty_like(a)
    return c, _failure(failed, failed and np.isfinite(a).all())


@njit
def lapack_eigh(a):
    failed = False
    try:
        w, v = np.linalg.eigh(a)
        v = np.ascontiguousarray(v)
    except Exception:
        failed = True
        w, v = np.empty(a.shape[0], a.dtype), np.empty_like(a)
    return w, v, _failure(failed, failed and np.isfinite(a).all())


@njit
def lapack_svd(a):
    failed = False
    k = min(a.shape[0], a.shape[1])
    try:
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        u, vt = np.ascontiguousarray(u), np.ascontiguousarray(vt)
    except Exception:
        failed = True
        u, s = np.empty((a.shape[0], k), a.dtype), np.empty(k, a.dtype)
        vt = np.empty((k, a.shape[1]), a.dtype)
    return u, s, vt, _failure(failed, failed and np.isfinite(a).all())


@njit
def lapack_qr(a):
    failed = False
    k = min(a.shape[0], a.shape[1])
    try:
        q, r = np.linalg.qr(a)
        q, r = np.ascontiguousarray(q), np.ascontiguousarray(r)
    except Exception:
        failed = True
        q, r = np.empty((a.shape[0], k), a.dtype), np.empty((k, a.shape[1]), a.dtype)
    return q, r, _failure(failed, failed and np.isfinite(a).all())


@njit
def solve_batched(a, b):
    out = np.empty_like(b)
    failed = False
    try:
        for i in range(a.shape[0]):
            out[i] = np.linalg.solve(a[i], b[i])
    except Exception:
        failed = True
    return out, _failure(failed, failed and np.isfinite(a).all() and np.isfinite(b).all())


@njit
def det_batched(a):
    out = np.empty(a.shape[0], a.dtype)
    failed = False
    try:
        for i in range(a.shape[0]):
            out[i] = np.linalg.det(a[i])
    except Exception:
        failed = True
    return out, _failure(failed, failed and np.isfinite(a).all())


@njit
def cofactor_batched(a):
    """``prims.linalg.cofactor_matrix`` of each matrix: det A · A⁻ᵀ, or at det A = 0
    det U det V · U diag(Π_{j≠i} s_j) Vᵀ from the SVD."""
    out = np.empty_like(a)
    failed = False
    try:
        _cofactors(a, out)
    except Exception:
        failed = True
    return out, _failure(failed, failed and np.isfinite(a).all())


@njit
def _cofactors(a, out):
    n = a.shape[1]
    for i in range(a.shape[0]):
        m = np.ascontiguousarray(a[i])
        d = np.linalg.det(m)
        if d != 0.0:
            out[i] = (d * np.linalg.inv(m)).T
            continue
        u, s, vt = np.linalg.svd(m)
        sign = np.linalg.det(u) * np.linalg.det(vt)
        for k in range(n):
            p = sign
            for j in range(n):
                if j != k:
                    p *= s[j]
            for r in range(n):
                u[r, k] *= p
        out[i] = u @ vt


@njit
def slogdet_batched(a):
    sign = np.empty(a.shape[0], a.dtype)
    logabs = np.empty(a.shape[0], a.dtype)
    failed = False
    try:
        for i in range(a.shape[0]):
            s, v = np.linalg.slogdet(a[i])
            sign[i] = s
            logabs[i] = v
    except Exception:
        failed = True
    return sign, logabs, _failure(failed, failed and np.isfinite(a).all())


# ---------------------------------------------------------------- conv2d

# Runs over flat arrays with unsigned indices: Numba wraps negative signed indices
# around, and that test keeps LLVM from vectorising a loop (measured: a 1,024-element
# copy loop 4x faster with uint64 indices).

@njit
def _copy_run(dst, d, src, s, length):
    """``dst[d:d+length] = src[s:s+length]`` (flat arrays, non-negative offsets)."""
    d, s = np.uint64(d), np.uint64(s)
    for j in range(np.uint64(length)):
        dst[d + j] = src[s + j]


@njit
def _add_run(dst, d, src, s, length):
    """``dst[d:d+length] += src[s:s+length]`` (flat arrays, non-negative offsets)."""
    d, s = np.uint64(d), np.uint64(s)
    for j in range(np.uint64(length)):
        dst[d + j] += src[s + j]


@njit
def _zero_run(dst, d, length):
    d = np.uint64(d)
    for j in range(np.uint64(length)):
        dst[d + j] = 0


@njit
def _window_run(dst, d, src, plane, iy, h, w, shift, length, lo, hi):
    """``dst[d + t] = src[plane + iy*w + t + shift]`` for ``lo <= t < hi`` when row ``iy``
    of the ``h x w`` plane exists, 0 elsewhere in ``[0, length)``: one row of a patch
    matrix (``lo``/``hi`` bound the positions that fall inside the row)."""
    if iy < 0 or iy >= h:
        _zero_run(dst, d, length)
        return
    _zero_run(dst, d, lo)
    _copy_run(dst, d + lo, src, plane + iy * w + shift + lo, hi - lo)
    _zero_run(dst, d + hi, length - hi)


@njit
def _shifted_plane(dst, d0, src, s0, rows, src_rows, width, dr, dx):
    """``dst[d0 + r*width + x] = src[s0 + (r+dr)*width + (x+dx)]`` for r < rows and
    x < width where the source position lies inside the ``src_rows x width`` plane at
    ``s0``, else 0.  Rows of the destination and the plane have the same width, so the
    copy is one long contiguous run (its few wrapped edge elements zeroed after)."""
    r0, r1 = max(0, -dr), min(rows, src_rows - dr)
    if r0 >= r1 or dx >= width or -dx >= width:
        _zero_run(dst, d0, rows * width)
        return
    _zero_run(dst, d0, r0 * width)
    _zero_run(dst, d0 + r1 * width, (rows - r1) * width)
    a, b = r0 * width + max(0, -dx), r1 * width - max(0, dx)
    _copy_run(dst, d0 + a, src, s0 + dr * width + dx + a, b - a)
    for r in range(r0, r1):            # columns whose source lies beside the plane
        if dx < 0:
            _zero_run(dst, d0 + r * width, -dx)
        elif dx > 0:
            _zero_run(dst, d0 + r * width + width - dx, dx)


@njit
def _im2col(image, kh, kw, top, left, ho, wo):
    """The patches of all images side by side: rows (c, u, v), columns (n, y, x); reads
    outside the image are zeros.  The inner loop runs along an output row (long when the
    kernel is small), or along a whole output plane when it is as wide as the image."""
    nn, cc, h, w = image.shape
    cols = np.empty((cc * kh * kw, nn * ho * wo), image.dtype)
    if wo == w:
        flat, src = cols.ravel(), image.ravel()
        for c in range(cc):
            for u in range(kh):
                for v in range(kw):
                    r = (c * kh + u) * kw + v
                    for n in range(nn):
                        _shifted_plane(flat, (r * nn + n) * ho * wo, src, (n * cc + c) * h * w,
                                       ho, h, w, u - top, v - left)
        return cols
    flat, src, ncol = cols.ravel(), image.ravel(), nn * ho * wo
    for c in range(cc):
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                x0 = min(max(0, left - v), wo)
                x1 = max(min(wo, w + left - v), x0)
                for n in range(nn):
                    for y in range(ho):
                        _window_run(flat, r * ncol + (n * ho + y) * wo, src,
                                    (n * cc + c) * h * w, y + u - top, h, w,
                                    v - left, wo, x0, x1)
    return cols


@njit
def _im2col_t(image, kh, kw, top, left, ho, wo):
    """The transpose of ``_im2col``: rows (n, y, x), columns (c, u, v).  The inner loop
    runs along a kernel row (long when the kernel is wider than the output, as in the
    kernel gradient of a convolution), or along a whole kernel plane when the kernel is
    as wide as the image."""
    nn, cc, h, w = image.shape
    cols = np.empty((nn * ho * wo, cc * kh * kw), image.dtype)
    if kw == w:
        flat, src = cols.ravel(), image.ravel()
        for n in range(nn):
            for y in range(ho):
                for x in range(wo):
                    r = (n * ho + y) * wo + x
                    for c in range(cc):
                        _shifted_plane(flat, (r * cc + c) * kh * kw, src,
                                       (n * cc + c) * h * w, kh, h, w, y - top, x - left)
        return cols
    flat, src, ckk = cols.ravel(), image.ravel(), cc * kh * kw
    for n in range(nn):
        for y in range(ho):
            for x in range(wo):
                r = (n * ho + y) * wo + x
                v0 = min(max(0, left - x), kw)
                v1 = max(min(kw, w + left - x), v0)
                for c in range(cc):
                    for u in range(kh):
                        _window_run(flat, r * ckk + (c * kh + u) * kw, src,
                                    (n * cc + c) * h * w, y + u - top, h, w,
                                    x - left, kw, v0, v1)
    return cols


@njit
def _columns_padded(image, left, wp):
    """The images as a (C, N·h·wp) matrix, each row zero-padded to ``wp`` columns with
    ``left`` zeros in front."""
    nn, cc, h, w = image.shape
    out = np.empty((cc, nn * h * wp), image.dtype)
    flat, src = out.ravel(), image.ravel()
    for c in range(cc):
        for n in range(nn):
            for y in range(h):
                row = c * nn * h * wp + (n * h + y) * wp
                _zero_run(flat, row, left)
                _copy_run(flat, row + left, src, ((n * cc + c) * h + y) * w, w)
                _zero_run(flat, row + left + w, wp - left - w)
    return out


@njit
def _shift_sum(z, nn, oo, kh, kw, h, wp, top, ho, wo):
    """out[n,o,y,x] = Σ_{u,v} Z[(o,u,v), (n, y+u-top, x+v)] over the rows inside the image,
    Z's rows ``wp`` wide (the images zero-padded in x): the second half of a convolution
    computed as Z = K·I first.  The sums run over padded rows, in one contiguous run per
    (n, o, u, v); the columns past ``wo`` collect junk and are cropped."""
    acc = np.zeros(nn * oo * ho * wp, z.dtype)
    flat = z.ravel()
    plane = h * wp
    for n in range(nn):
        for o in range(oo):
            a0 = (n * oo + o) * ho * wp
            for u in range(kh):
                y0, y1 = max(0, top - u), min(ho, h + top - u)
                if y0 >= y1:
                    continue
                for v in range(kw):
                    s0 = ((o * kh + u) * kw + v) * nn * plane + n * plane + (u - top) * wp + v
                    _add_run(acc, a0 + y0 * wp, flat, s0 + y0 * wp, (y1 - y0) * wp - (wp - wo))
    out = np.empty((nn, oo, ho, wo), z.dtype)
    cropped = out.ravel()
    for r in range(nn * oo * ho):
        _copy_run(cropped, r * wo, acc, r * wp, wo)
    return out


@njit_gil
def _per_image_product(flat_kernel, cols, nn):
    """``out[n] = flat_kernel @ cols[:, n·m:(n+1)·m]`` for the n images side by side in
    ``cols`` (C-contiguous or its transpose): (O, N·m) products laid out (N, O, m)."""
    oo, m = flat_kernel.shape[0], cols.shape[1] // nn
    out = np.empty((nn, oo, m), cols.dtype)
    if oo * flat_kernel.shape[1] * cols.shape[1] < OBJMODE_FLOPS:
        flat = np.dot(flat_kernel, cols)
        src, dst = flat.ravel(), out.ravel()
        for n in range(nn):
            for o in range(oo):
                _copy_run(dst, (n * oo + o) * m, src, (o * nn + n) * m, m)
    else:
        with numba.objmode():
            if cols.flags.c_contiguous:       # one batched product, written in place
                np.matmul(flat_kernel, cols.reshape(-1, nn, m).transpose(1, 0, 2), out=out)
            else:                             # (a transposed view: one plain product)
                out[...] = np.dot(flat_kernel, cols).reshape(oo, nn, m).transpose(1, 0, 2)
    return out


@njit_gil
def conv2d(image, kernel, top, bottom, left, right):
    """O[n,o,y,x] = Σ_{c,u,v} Î[n,c,y+u,x+v] K[o,c,u,v], Î zero-padded by (top, bottom,
    left, right); negative entries crop.  Reads outside the padded window are zeros.

    As one BLAS product, in whichever of two forms materialises less:

    * im2col: the kernel as an (O, C·kh·kw) matrix times the patches of all images
      (C·kh·kw, N·ho·wo), laid out so that the copy loop runs along the longer of an
      output row and a kernel row;
    * shift-sum (fewer output than input channels, as in the image gradient; padding
      that keeps the width): Z = the kernel as an (O·kh·kw, C) matrix times the images,
      zero-padded in x, as (C, N·h·wp), then each output sums its kh·kw shifted entries
      of Z."""
    nn, cc, h, w = image.shape
    oo, _, kh, kw = kernel.shape
    ho, wo = h + top + bottom - kh + 1, w + left + right - kw + 1
    if oo * h * w < cc * ho * wo and left >= 0 and right >= 0:
        wp = w + left + right
        flat_kernel = np.ascontiguousarray(transposed(kernel, (0, 2, 3, 1))).reshape(
            oo * kh * kw, cc)
        z = np.empty((oo * kh * kw, nn * h * wp), image.dtype)
        dot(flat_kernel, _columns_padded(image, left, wp), z)
        return _shift_sum(z, nn, oo, kh, kw, h, wp, top, ho, wo)
    flat_kernel = np.ascontiguousarray(kernel).reshape(oo, cc * kh * kw)
    if kw > wo:
        out = _per_image_product(flat_kernel, _im2col_t(image, kh, kw, top, left, ho, wo).T,
                                 nn)
    else:
        out = _per_image_product(flat_kernel, _im2col(image, kh, kw, top, left, ho, wo), nn)
    return out.reshape(nn, oo, ho, wo)


@njit
def padded_image(image, top, bottom, left, right):
    """``image`` (N, C, h, w) zero-padded by (top, bottom, left, right), C-contiguous;
    negative entries crop."""
    nn, cc, h, w = image.shape
    hp, wp = h + top + bottom, w + left + right
    out = np.empty((nn, cc, hp, wp), image.dtype)
    flat, src = out.ravel(), image.ravel()
    y0, y1 = min(max(0, top), hp), max(min(hp, h + top), 0)
    x0, x1 = min(max(0, left), wp), max(min(wp, w + left), 0)
    for p in range(nn * cc):
        base = p * hp * wp
        _zero_run(flat, base, y0 * wp)
        for y in range(y0, max(y0, y1)):
            row = base + y * wp
            _zero_run(flat, row, x0)
            if x1 > x0:
                _copy_run(flat, row + x0, src, (p * h + y - top) * w + x0 - left, x1 - x0)
            _zero_run(flat, row + max(x0, x1), wp - max(x0, x1))
        _zero_run(flat, base + max(y0, y1) * wp, (hp - max(y0, y1)) * wp)
    return out


@njit
def channels_last(kernel):
    """A (O, C, kh, kw) kernel as a flat (C, kh, kw, O) array."""
    return np.ascontiguousarray(transposed(kernel, (1, 2, 3, 0))).ravel()


@njit
def conv2d_cols(image, kh, kw, top, bottom, left, right):
    """The im2col matrix of ``image`` for a (kh, kw) kernel and this padding: shared by a
    convolution and the gradient with respect to its kernel (``pysource._conv_plan``)."""
    h, w = image.shape[2], image.shape[3]
    return _im2col(image, kh, kw, top, left, h + top + bottom - kh + 1,
                   w + left + right - kw + 1)


@njit_gil
def conv2d_from_cols(cols, kernel, nn, ho, wo):
    """``conv2d`` of the images whose im2col matrix is ``cols``."""
    oo = kernel.shape[0]
    flat_kernel = np.ascontiguousarray(kernel).reshape(oo, cols.shape[0])
    return _per_image_product(flat_kernel, cols, nn).reshape(nn, oo, ho, wo)


@njit_gil
def conv2d_kernel_grad_from_cols(cols, cot, cc, kh, kw):
    """G[c,o,u,v] = Σ_{n,y,x} Î[n,c,y+u,x+v] cot[n,o,y,x], the images given by their
    im2col matrix ``cols`` (rows (c,u,v), columns (n,y,x)): ``conv2d`` of the images and
    the cotangent with batch and channel axes swapped, as one product cot · colsᵀ."""
    nn, oo, ho, wo = cot.shape
    flat = np.ascontiguousarray(transposed(cot, (1, 0, 2, 3))).reshape(oo, nn * ho * wo)
    out = np.empty((oo, cols.shape[0]), cot.dtype)
    dot(flat, cols.T, out)
    return np.ascontiguousarray(transposed(out.reshape(oo, cc, kh, kw), (1, 0, 2, 3)))


@njit
def conv2d_loops(image, kernel, top, bottom, left, right):
    """The same by direct loops (integer operands: no BLAS)."""
    nn, cc, h, w = image.shape
    oo, _, kh, kw = kernel.shape
    ho, wo = h + top + bottom - kh + 1, w + left + right - kw + 1
    out = np.zeros((nn, oo, ho, wo), image.dtype)
    for n in range(nn):
        for o in range(oo):
            for y in range(ho):
                for x in range(wo):
                    acc = out[n, o, y, x]
                    for c in range(cc):
                        for u in range(kh):
                            iy = y + u - top
                            if iy < 0 or iy >= h:
                                continue
                            for v in range(kw):
                                ix = x + v - left
                                if 0 <= ix < w:
                                    acc += image[n, c, iy, ix] * kernel[o, c, u, v]
                    out[n, o, y, x] = acc
    return out


@njit
def _general_cols(cols, padded, first, cg, kh, kw, ho, wo, sh, sw, dh, dw):
    """The patch matrix of channels ``first`` to ``first + cg`` of the padded images for
    a strided, dilated kernel: rows (c, u, v), columns (n, y, x), entries
    padded[n, first+c, y·sh+u·dh, x·sw+v·dw]."""
    nn, cc, hp, wp = padded.shape
    m = ho * wo
    flat, src = cols.ravel(), padded.ravel()
    for c in range(cg):
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                for n in range(nn):
                    plane = (n * cc + first + c) * hp * wp
                    for y in range(ho):
                        s0 = plane + (y * sh + u * dh) * wp + v * dw
                        d0 = r * nn * m + (n * ho + y) * wo
                        if sw == 1:
                            _copy_run(flat, d0, src, s0, wo)
                        else:
                            for x in range(wo):
                                flat[d0 + x] = src[s0 + x * sw]


@njit_gil
def conv2d_general(image, kernel, top, bottom, left, right, sh, sw, dh, dw, groups):
    """``conv2d`` with strides (sh, sw), dilation (dh, dw) and ``groups`` (floats):
    O[n, g·Og+o, y, x] = Σ_{c<Cg,u,v} Î[n, g·Cg+c, y·sh+u·dh, x·sw+v·dw] K[g·Og+o, c, u, v],
    Î zero-padded (negative entries crop).  Per group one BLAS product: the group's
    kernel as an (Og, Cg·kh·kw) matrix times the patches of its channels
    (Cg·kh·kw, N·ho·wo), read from the padded images at the strided, dilated taps.
    With stride 1 and fewer output than input channels (as in the image gradient of a
    dilated convolution) the product is the kernel as an (O·kh·kw, Cg) matrix times
    the images, each entry then added at its output (``conv2d_dilated_input``), as the
    shift-sum form of ``conv2d``: a smaller matrix (measured on one thread, N=8, 32 -> 16
    channels, 32x32, 3x3, dilation 2: 2.45 against 3.79 ms)."""
    nn, cc, h, w = image.shape
    oo, cg, kh, kw = kernel.shape
    og = oo // groups
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if sh == 1 and sw == 1 and oo * h * w < cc * ho * wo:
        return conv2d_dilated_input(image, kernel, top, bottom, left, right, 1, 1, dh, dw,
                                    groups)
    padded = padded_image(image, top, bottom, left, right)
    m = ho * wo
    cols = np.empty((cg * kh * kw, nn * m), image.dtype)
    prod = np.empty((og, nn * m), image.dtype)
    out = np.empty((nn, oo, ho, wo), image.dtype)
    dst = out.ravel()
    flat_kernel = np.ascontiguousarray(kernel).reshape(oo, cg * kh * kw)
    for g in range(groups):
        _general_cols(cols, padded, g * cg, cg, kh, kw, ho, wo, sh, sw, dh, dw)
        dot(flat_kernel[g * og:(g + 1) * og], cols, prod)
        products = prod.ravel()
        for n in range(nn):
            for o in range(og):
                _copy_run(dst, (n * oo + g * og + o) * m, products, (o * nn + n) * m, m)
    return out


@njit_gil
def conv2d_general_kernel_grad(image, cot, top, bottom, left, right, sh, sw, dh, dw,
                               groups, kh, kw):
    """The kernel gradient of ``conv2d_general`` as (Cg, O, kh, kw)
    (``passes.conv.over_batch``): G[c, g·Og+o, u, v] = Σ_{n,y,x} Î[n, g·Cg+c, y·sh+u·dh,
    x·sw+v·dw] cot[n, g·Og+o, y, x].  Per group the forward form's patch matrix
    (Cg·kh·kw, N·ho·wo) and one BLAS product with the group's cotangent, cot · colsᵀ."""
    nn, cc = image.shape[0], image.shape[1]
    oo, ho, wo = cot.shape[1], cot.shape[2], cot.shape[3]
    og, cg = oo // groups, cc // groups
    padded = padded_image(image, top, bottom, left, right)
    m = ho * wo
    cols = np.empty((cg * kh * kw, nn * m), image.dtype)
    prod = np.empty((og, cg * kh * kw), image.dtype)
    out = np.empty((cg, oo, kh, kw), image.dtype)
    flat_cot = np.ascontiguousarray(transposed(cot, (1, 0, 2, 3))).reshape(oo, nn * m)
    for g in range(groups):
        _general_cols(cols, padded, g * cg, cg, kh, kw, ho, wo, sh, sw, dh, dw)
        dot(flat_cot[g * og:(g + 1) * og], cols.T, prod)
        out[:, g * og:(g + 1) * og] = transposed(prod.reshape(og, cg, kh, kw), (1, 0, 2, 3))
    return out


@njit
def _add_strided(dst, d, step, src, s, length):
    """``dst[d + j*step] += src[s + j]`` for j < length (flat arrays, non-negative
    offsets)."""
    d, s, step = np.uint64(d), np.uint64(s), np.uint64(step)
    for j in range(np.uint64(length)):
        dst[d + j * step] += src[s + j]


@njit_gil
def conv2d_dilated_input(x, kernel, top, bottom, left, right, sh, sw, dh, dw, groups):
    """``conv2d`` of ``x`` with sh-1 (sw-1) zeros between its rows (columns), the zeros
    never formed (``passes.conv.dilated_inputs``: the image gradient of a strided
    convolution, a transposed convolution): with x (N, G·Og, ho, wo) and the kernel
    (C, Og, kh, kw), Cg = C/G,

        out[n, g·Cg+c, Y, X] = Σ x[n, g·Og+o, y, x] K[g·Cg+c, o, u, v]
            over o < Og and the taps with Y = y·sh + top - u·dh, X = x·sw + left - v·dw.

    Per group one BLAS product: the kernel as a (Cg·kh·kw, Og) matrix times x's channels
    as (Og, N·ho·wo); each entry of the product is then added at its output position
    (col2im), (C·kh·kw)·(N·ho·wo) additions.  The multiply-adds are the forward
    convolution's, where the convolution of the dilated x does sh·sw times as many."""
    nn, _, ho, wo = x.shape
    cc, og, kh, kw = kernel.shape
    cg = cc // groups
    hout = (ho - 1) * sh + 1 + top + bottom - dh * (kh - 1)
    wout = (wo - 1) * sw + 1 + left + right - dw * (kw - 1)
    m = ho * wo
    rows = cg * kh * kw
    xt = np.ascontiguousarray(transposed(x, (1, 0, 2, 3))).reshape(groups * og, nn * m)
    flat_kernel = np.ascontiguousarray(transposed(kernel, (0, 2, 3, 1))).reshape(cc * kh * kw, og)
    z = np.empty((rows, nn * m), x.dtype)
    out = np.zeros((nn, cc, hout, wout), x.dtype)
    src, dst = z.ravel(), out.ravel()
    for g in range(groups):
        dot(flat_kernel[g * rows:(g + 1) * rows], xt[g * og:(g + 1) * og], z)
        for c in range(cg):
            for n in range(nn):
                plane = (n * cc + g * cg + c) * hout * wout
                for u in range(kh):
                    shift = top - u * dh            # Y = y·sh + shift
                    y0 = max(0, -(shift // sh))     # the first y with Y >= 0
                    y1 = min(ho, -((shift - hout) // sh))
                    for v in range(kw):
                        offset = left - v * dw      # X = x·sw + offset
                        x0 = max(0, -(offset // sw))
                        x1 = min(wo, -((offset - wout) // sw))
                        if x0 >= x1:
                            continue
                        r = ((c * kh + u) * kw + v) * nn + n
                        for y in range(y0, y1):
                            d = plane + (y * sh + shift) * wout + x0 * sw + offset
                            if sw == 1:
                                _add_run(dst, d, src, r * m + y * wo + x0, x1 - x0)
                            else:
                                _add_strided(dst, d, sw, src, r * m + y * wo + x0, x1 - x0)
    return out


@njit
def conv2d_general_loops(image, kernel, top, bottom, left, right, sh, sw, dh, dw, groups):
    """The same by direct loops (integer operands: no BLAS)."""
    nn, cc, h, w = image.shape
    oo, cg, kh, kw = kernel.shape
    og = oo // groups
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((nn, oo, ho, wo), image.dtype)
    for n in range(nn):
        for o in range(oo):
            first = (o // og) * cg
            for y in range(ho):
                for x in range(wo):
                    acc = out[n, o, y, x]
                    for c in range(cg):
                        for u in range(kh):
                            iy = y * sh + u * dh - top
                            if iy < 0 or iy >= h:
                                continue
                            for v in range(kw):
                                ix = x * sw + v * dw - left
                                if 0 <= ix < w:
                                    acc += image[n, first + c, iy, ix] * kernel[o, c, u, v]
                    out[n, o, y, x] = acc
    return out


# ---------------------------------------------------------------- nonzero

@njit
def nonzero_checked(mask, size):
    found = np.nonzero(mask)
    if found[0].shape[0] != size:
        raise GuardFailure("nonzero: the mask has a different number of True entries "
                           "than when traced")
    return found


@njit
def wrap_index(i, n):
    """A possibly negative index into an axis of length n (NumPy's convention)."""
    return i + n if i < 0 else i


# ---------------------------------------------------------------- content digests

@njit
def _mix(h, x, p, s):
    u = (h ^ x) * p
    return u ^ (u >> s)


@njit
def digest_words(w):
    """A 128-bit digest of ``w`` (uint64 words) for cache keys: eight interleaved lanes
    of a multiply-xorshift mix, folded by two different mixes (not cryptographic; it
    tells an array whose contents changed from the one a graph was traced with).
    0.43 ns per word, 8-9x faster than blake2b: closed-over arrays are digested on every
    call of a transformed function."""
    p1 = np.uint64(0x9E3779B97F4A7C15)
    p2 = np.uint64(0xC2B2AE3D27D4EB4F)
    s1 = np.uint64(31)
    s2 = np.uint64(29)
    h = np.empty(8, np.uint64)
    for k in range(8):
        h[k] = p2 * np.uint64(2 * k + 1)
    n = w.shape[0]
    stop = n - n % 8
    for i in range(0, stop, 8):
        for k in range(8):          # independent lanes: LLVM keeps them in registers
            u = (h[k] ^ w[i + k]) * p1
            h[k] = u ^ (u >> s1)
    for i in range(stop, n):
        h[0] = _mix(h[0], w[i], p1, s1)
    ha = np.uint64(n)
    hb = np.uint64(n) ^ p2
    for k in range(8):
        ha = _mix(ha, h[k], p2, s2)
        hb = _mix(hb, h[k], p1, s1)
    return ha, hb


# ---------------------------------------------------------------- Python solvers

# solver regions whose solver is Python (prims.implicit.PyCallback), by the key the
# generated source names them with; the key holds the process id, so a disk-cached
# module of another process never finds (or calls) a callback it does not own
_CALLBACKS: dict = {}


def register_callback(callback) -> str:
    import os
    key = f"{callback.name}@{os.getpid()}:{id(callback):x}"
    _CALLBACKS[key] = callback
    return key


def run_callback(key, *args):
    # (a 0-d result as a scalar: np.ascontiguousarray makes it shape (1,), which the
    # object-mode block's declared float refuses)
    result = np.asarray(_CALLBACKS[key](*args))
    return np.ascontiguousarray(result) if result.ndim else result[()]


def warn_unconverged(what, where, residual):
    from ..prims.implicit import warn_unconverged
    warn_unconverged(what, where, residual)


# calls in generated source of kernels that run Python (an object-mode block inside):
# such a program is not built as a native library (codegen.native)
OBJECT_MODE_CALLS = ("_k.report(",)


@njit_gil
def report(ok, residual, what, where):
    """A solver's convergence report (``prims.implicit.report``): the warning from an
    object-mode block in a function of its own.  Written in the generated function
    itself, an ``if`` around an object-mode block followed by another object-mode
    block (a large product's) made LLVM refuse the function ("Instruction does not
    dominate all uses!", Numba 0.68): a deep equilibrium model's gradient from 100
    hidden units on."""
    if not ok:
        with numba.objmode():
            warn_unconverged(what, where, residual)
