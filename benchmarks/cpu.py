#!/usr/bin/env python
"""CPU benchmarks: gradc side by side with its peers, in one run.

Workloads (see BENCHMARKS.md): W1 Rosenbrock gradient, W2 scalar-function gradient
(per-call latency), W3 MLP-loss gradient, W4 CRF log-partition gradient (reverse mode
through a loop: gradc.scan / lax.scan / a Python loop), W5 conv2d gradient, C1 compile
latency.

Peers, each an optional import (a missing one is skipped): JAX (``jax.jit(jax.grad(f))``
with float64), PyTorch eager (``torch.autograd.grad``), HIPS ``autograd``, and a
hand-written gradient (Numba loop for W1/W2, NumPy/BLAS for W3/W5, NumPy
forward-backward for W4) that is both the
practical floor and the reference every gradient is checked against before it is
timed.  The hand-written gradients are themselves checked against central finite
differences of the NumPy forward function.

    python benchmarks/cpu.py                    # full run (a few minutes on 2 cores)
    python benchmarks/cpu.py --quick            # smoke test: small sizes, few repeats
    python benchmarks/cpu.py --only W1,C1 --markdown
    python benchmarks/cpu.py --only W4          # the CRF workload alone

Times are medians over repeats; each repeat times a batch of calls (sized so that a
batch takes a few ms) and reports the time per call.  Repeats of the implementations
of one case are interleaved round-robin, so drifting machine load hits all of them
alike, with untimed calls before each batch so that one library's idle threads have
stopped spinning, and the clock and caches have settled, when the next is timed.  The
ratio column is ``gradc time / this implementation's time`` for the same case in the
same run (< 1: gradc is faster).  A failure (an exception, a gradient
mismatch, a fallback to gradc's interpreter) is recorded in the table, never fatal.
Progress goes to stderr, the tables to stdout.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings


def _early_threads(argv):
    """--threads must act before NumPy/BLAS, Numba, JAX and PyTorch are imported."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


_THREADS = _early_threads(sys.argv[1:]) if __name__ == "__main__" else None
if _THREADS:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "NUMBA_NUM_THREADS"):
        os.environ[_var] = _THREADS
    if _THREADS == "1":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- peers

PEERS: dict[str, object] = {}
PEER_ERRORS: dict[str, str] = {}


def _load_peers():
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp  # noqa: F401
        PEERS["jax"] = jax
    except Exception as e:  # noqa: BLE001  (any import failure: skip the peer)
        PEER_ERRORS["jax"] = f"{type(e).__name__}: {e}"
    try:
        import torch
        if _THREADS:
            torch.set_num_threads(int(_THREADS))
        PEERS["torch"] = torch
    except Exception as e:  # noqa: BLE001
        PEER_ERRORS["torch"] = f"{type(e).__name__}: {e}"
    try:
        import autograd  # noqa: F401
        import autograd.numpy  # noqa: F401
        import autograd.scipy.special  # noqa: F401
        PEERS["autograd"] = autograd
    except Exception as e:  # noqa: BLE001
        PEER_ERRORS["autograd"] = f"{type(e).__name__}: {e}"
    try:
        import numba
        PEERS["numba"] = numba
    except Exception as e:  # noqa: BLE001
        PEER_ERRORS["numba"] = f"{type(e).__name__}: {e}"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine load
# These machines are shared: another process (a test suite, a build) competing for the
# two cores skews the multi-threaded peers (JAX, PyTorch, BLAS) most.  Before timing a
# case we wait (a bounded time) for the machine to be idle, and every case records the
# cores that *other* processes used while it was timed (the "bg load" column).


def _proc_stat():
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]   # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Average number of cores used by other processes between start() and stop()."""

    def start(self):
        self.b0, self.p0, self.w0 = _proc_stat(), time.process_time(), time.perf_counter()
        return self

    def stop(self):
        b1, p1, w1 = _proc_stat(), time.process_time(), time.perf_counter()
        if self.b0 is None or b1 is None or w1 - self.w0 <= 0:
            return None
        return max(0.0, ((b1 - self.b0) - (p1 - self.p0)) / (w1 - self.w0))


def wait_for_idle(max_wait_s, threshold=0.2):
    """Wait up to max_wait_s for other processes to use less than `threshold` cores."""
    if max_wait_s <= 0:
        return None
    t_end = time.perf_counter() + max_wait_s
    warned = False
    while True:
        m = LoadMeter().start()
        time.sleep(0.5)
        load = m.stop()
        if load is None or load < threshold or time.perf_counter() >= t_end:
            return load
        if not warned:
            log(f"    machine busy (other processes use {load:.2f} cores); waiting up to "
                f"{max_wait_s:.0f} s for it to be idle")
            warned = True
        time.sleep(2.0)


# --------------------------------------------------------------------------- timing


# Before each batch, untimed calls for WARM_S.  The implementation timed before may have
# left idle threads spinning (OpenBLAS spins for ~0.1 s after a product: 0.10 s of CPU
# time in the 0.5 s after one np.dot), which share the cores with the next one and hurt
# it in proportion to the threads it runs; and the first calls after another library's
# work run slower (clock and caches: gradc's W5 forward convolution took 240 µs per
# chunk in the first call after the hand-written gradient, 125 µs in the next ones).
# A batch of a few calls would count both.  Measured on W5: gradc / JAX 1.13-1.26 with
# no warm-up, 1.0 with 0.03 s, 0.76 with 0.1 s.
WARM_S = 0.12


def _warm(fn, args, seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn(*args)


def _batch_time(fn, args, number):
    gcold = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        t1 = time.perf_counter()
    finally:
        if gcold:
            gc.enable()
    return (t1 - t0) / number


def measure(impls, cfg):
    """impls: list of (name, fn, args), already warmed up.  Returns {name: (median s,
    repeats, calls per repeat)}; repeats are interleaved round-robin."""
    plan = {}
    for name, fn, args in impls:
        t1 = _batch_time(fn, args, 1)                 # one more warm call, also a probe
        t1 = min(t1, _batch_time(fn, args, 1))
        number = max(1, math.ceil(cfg.min_batch_s / max(t1, 1e-9)))
        if number > 1:                                # refine with a short batch
            t1 = _batch_time(fn, args, min(number, 100))
            number = max(1, math.ceil(cfg.min_batch_s / max(t1, 1e-9)))
        reps = int(cfg.max_impl_s / max(t1 * number, 1e-9))
        reps = max(cfg.min_repeats, min(cfg.repeats, reps))
        plan[name] = (number, reps)
    times = {name: [] for name, _, _ in impls}
    for r in range(max(reps for _, reps in plan.values())):
        for name, fn, args in impls:
            number, reps = plan[name]
            if r < reps:
                _warm(fn, args, cfg.warm_s)
                times[name].append(_batch_time(fn, args, number))
    return {name: (float(np.median(ts)), len(ts), plan[name][0]) for name, ts in times.items()}


# --------------------------------------------------------------------------- results


class Row:
    def __init__(self, workload, size, impl, seconds=None, check="", note="", error=None,
                 is_gradc=False, key=None):
        self.workload, self.size, self.impl = workload, size, impl
        self.seconds, self.check, self.note, self.error = seconds, check, note, error
        self.is_gradc = is_gradc
        self.key = key or impl          # short id used by the targets table
        self.ratio = None               # gradc time / this time
        self.load = None                # cores used by other processes while timed

    def as_dict(self):
        return dict(workload=self.workload, size=self.size, impl=self.impl, key=self.key,
                    seconds=self.seconds, ratio_gradc_over_this=self.ratio,
                    check=self.check, note=self.note, error=self.error,
                    background_load_cores=self.load)


ROWS: list[Row] = []
FULL_ERRORS: list[tuple[str, str, str]] = []     # (case, impl, traceback)


def fmt_time(s):
    if s is None:
        return "—"
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


def rel_err(got, ref):
    """max |got - ref| / max |ref| over all gradient components."""
    num, den = 0.0, 0.0
    if len(got) != len(ref):
        raise ValueError(f"{len(got)} gradient components, expected {len(ref)}")
    for g, r in zip(got, ref):
        g = np.asarray(g, dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        if g.shape != r.shape:
            raise ValueError(f"gradient shape {g.shape}, expected {r.shape}")
        num = max(num, float(np.max(np.abs(g - r))) if g.size else 0.0)
        den = max(den, float(np.max(np.abs(r))) if r.size else 0.0)
    return num / den if den > 0 else num


def fd_check(f, args, grads, rng, h=1e-6):
    """Relative error of <grad, v> against a central difference of f along a random v
    (v scaled per argument to its magnitude)."""
    dirs = [rng.standard_normal(np.shape(a)) * (np.max(np.abs(a)) + 1.0) for a in args]
    plus = [a + h * d for a, d in zip(args, dirs)]
    minus = [a - h * d for a, d in zip(args, dirs)]
    fd = (f(*plus) - f(*minus)) / (2 * h)
    an = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads, dirs))
    return abs(fd - an) / max(abs(an), abs(fd), 1e-300)


# --------------------------------------------------------------------------- runner


def run_case(workload, size, ref, impls, cfg, extra_rows=()):
    """Check then time one case.  impls: list of (name, builder, is_gradc, key) where
    builder() -> (fn, args, to_numpy); fn(*args) computes the gradient in the peer's own
    types and to_numpy(result) -> list of NumPy arrays for the check."""
    ready, rows = [], []
    for name, builder, is_gradc, key in impls:
        row = Row(workload, size, name, is_gradc=is_gradc, key=key)
        rows.append(row)
        log(f"  [{workload} {size}] {name}: build + first call")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                fn, args, to_numpy = builder()
                result = fn(*args)
                first = time.perf_counter() - t0
            fallbacks = [str(w.message) for w in caught
                         if any(c.__name__ == "GradcWarning" for c in w.category.__mro__)]
            if fallbacks:
                row.note = "GradcWarning: " + fallbacks[0].splitlines()[0][:250]
                FULL_ERRORS.append((f"{workload} {size}", name, "\n".join(fallbacks)))
            if is_gradc:
                row.note = (row.note + "; " if row.note else "") + f"first call {first:.2f} s"
                # a first compile goes on in the background (the shared library of the
                # disk cache, codegen.native): once per cache entry, not per call (C1
                # times it), so it is let finish before the timing
                from gradc.codegen import native
                native.wait()
            if ref is not None and to_numpy is not None:
                err = rel_err(to_numpy(result), ref)
                ok = err <= cfg.tol
                row.check = f"{'ok' if ok else 'MISMATCH'} {err:.1e}"
                if not ok:
                    log(f"    GRADIENT MISMATCH: {name} rel err {err:.3e} (tol {cfg.tol:g})")
            ready.append((name, fn, args))
        except Exception as e:  # noqa: BLE001  (record, never crash the run)
            row.error = short_error(e)
            FULL_ERRORS.append((f"{workload} {size}", name, traceback.format_exc()))
            log(f"    ERROR {name}: {row.error}")
    load = None
    if ready:
        try:
            best = None
            for attempt in range(1 + cfg.load_retries):
                wait_for_idle(cfg.idle_wait)
                log(f"  [{workload} {size}] timing {', '.join(n for n, _, _ in ready)}")
                meter = LoadMeter().start()
                med = measure(ready, cfg)
                load = meter.stop()
                if best is None or (load or 0.0) < best[1]:
                    best = (med, load or 0.0)
                if load is None or load < cfg.busy or attempt == cfg.load_retries:
                    break
                log(f"    other processes used {load:.2f} cores while timing; timing again")
            med, load = best
        except Exception as e:  # noqa: BLE001
            med = {}
            for r in rows:
                r.error = r.error or f"timing failed: {short_error(e)}"
            FULL_ERRORS.append((f"{workload} {size}", "timing", traceback.format_exc()))
        for r in rows:
            if r.impl in med:
                r.seconds = med[r.impl][0]
                r.load = load
    rows.extend(extra_rows)
    gradc_rows = [r for r in rows if r.is_gradc and r.key == "gradc" and r.seconds]
    if gradc_rows:
        g = gradc_rows[0].seconds
        for r in rows:
            if r.seconds:
                r.ratio = g / r.seconds
    ROWS.extend(rows)
    return rows


def to_np_list(res):
    if isinstance(res, (tuple, list)):
        return [np.asarray(r) for r in res]
    return [np.asarray(res)]


def jax_jit_grad(loss, args, argnums=0, on_device=True):
    """JAX's peer entry: ``jax.jit(jax.grad(loss))``, the arguments put on the device
    first (Python floats stay floats), each call waited for with ``block_until_ready``."""
    jax = PEERS["jax"]
    g = jax.jit(jax.grad(loss, argnums=argnums))
    args = tuple(jax.device_put(a) for a in args) if on_device else tuple(args)
    return (lambda *s: jax.block_until_ready(g(*s))), args, to_np_list


# --------------------------------------------------------------------------- W1


def rosen_np(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _make_rosen(xp):
    def rosen(x):
        return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return rosen


_HAND_W1 = {}


def hand_rosen_grad():
    """Numba loop in gather form: each g[i] from x[i-1], x[i], x[i+1], one pass."""
    if "grad" not in _HAND_W1:
        numba = PEERS["numba"]

        @numba.njit(cache=False)
        def rosen_grad(x):
            return rosen_grad_out(x, np.empty(x.shape[0]))

        @numba.njit(cache=False)
        def rosen_grad_out(x, g):
            n = x.shape[0]
            if n == 1:
                g[0] = 0.0
                return g
            x0, x1 = x[0], x[1]
            g[0] = -400.0 * x0 * (x1 - x0 * x0) - 2.0 * (1.0 - x0)
            for i in range(1, n - 1):
                xm, xi, xp = x[i - 1], x[i], x[i + 1]
                g[i] = (200.0 * (xi - xm * xm) - 400.0 * xi * (xp - xi * xi)
                        - 2.0 * (1.0 - xi))
            xm, xi = x[n - 2], x[n - 1]
            g[n - 1] = 200.0 * (xi - xm * xm)
            return g
        _HAND_W1["grad"] = rosen_grad
        _HAND_W1["out"] = rosen_grad_out
    return _HAND_W1["grad"]


def hand_rosen_grad_out():
    hand_rosen_grad()
    return _HAND_W1["out"]


def rosen_grad_numpy(x):
    g = np.zeros_like(x)
    d = x[1:] - x[:-1] ** 2
    g[1:] += 200.0 * d
    g[:-1] += -400.0 * x[:-1] * d - 2.0 * (1.0 - x[:-1])
    return g


def bench_w1(cfg, rng):
    import gradc
    sizes = cfg.w1_sizes
    for n in sizes:
        label = f"n={n:.0e}".replace("e+0", "e")
        x = rng.uniform(-1.5, 1.5, n)
        if "numba" in PEERS:
            hand = hand_rosen_grad()
            ref = hand(x)
            ref_np = rosen_grad_numpy(x)
            hand_note = f"vs NumPy formula {rel_err([ref], [ref_np]):.1e}"
        else:
            ref = rosen_grad_numpy(x)
            hand_note = "NumPy (numba missing)"
        if n <= 10 ** 6:
            fd = fd_check(rosen_np, [x], [ref], rng)
            hand_note += f"; FD check {fd:.1e}"
        impls = []

        def b_gradc(x=x):
            g = gradc.grad(rosen_np, target=cfg.target)
            return g, (x,), to_np_list
        impls.append(("gradc", b_gradc, True, "gradc"))
        if cfg.parallel:
            def b_gradc_par(x=x):
                g = gradc.grad(rosen_np, target="parallel")
                return g, (x,), to_np_list
            impls.append(("gradc (parallel)", b_gradc_par, True, "gradc-parallel"))

        def b_gradc_fn(x=x):
            f = gradc.jit(rosen_np, target=cfg.target)
            return f, (x,), None
        if "jax" in PEERS:
            def b_jax(x=x):
                import jax.numpy as jnp
                return jax_jit_grad(_make_rosen(jnp), (x,))
            impls.append(("JAX jit(grad)", b_jax, False, "jax"))
        if "torch" in PEERS:
            def b_torch(x=x):
                torch = PEERS["torch"]
                xt = torch.from_numpy(x).requires_grad_(True)
                f = _make_rosen(torch)

                def g(a):
                    return torch.autograd.grad(f(a), a)[0]
                return g, (xt,), lambda r: [r.detach().numpy()]
            impls.append(("PyTorch eager", b_torch, False, "torch"))
        if "autograd" in PEERS and n <= cfg.autograd_max_n:
            def b_ag(x=x):
                ag = PEERS["autograd"]
                import autograd.numpy as anp
                return ag.grad(_make_rosen(anp)), (x,), to_np_list
            impls.append(("autograd", b_ag, False, "autograd"))
        if "numba" in PEERS:
            impls.append(("hand Numba loop", lambda x=x: (hand_rosen_grad(), (x,), to_np_list),
                          False, "hand"))
            if n == max(sizes):
                # where the time goes at large n: Numba's own allocator (NRT) gets 4 KiB
                # pages and first-touch faults on every call, while NumPy's np.empty asks
                # for transparent huge pages (madvise) for large arrays
                def b_np_alloc():
                    out_ = hand_rosen_grad_out()
                    return (lambda a: out_(a, np.empty(a.shape[0]))), (x,), to_np_list
                impls.append(("hand Numba loop, out=np.empty(n) from NumPy", b_np_alloc,
                              False, "hand-npalloc"))

                def b_prealloc():
                    buf = np.empty_like(x)
                    return hand_rosen_grad_out(), (x, buf), to_np_list
                impls.append(("hand Numba loop, preallocated out", b_prealloc, False,
                              "hand-prealloc"))
        # function-only time (gradc.jit) and, at the largest size, memory copies: timed
        # in the same round-robin as the gradients, not checked (to_numpy is None)
        impls.append(("gradc.jit (function only)", b_gradc_fn, True, "gradc-fn"))
        if n == max(sizes):
            out = np.empty_like(x)
            impls.append(("memory copy np.copyto(out, x)",
                          lambda x=x, out=out: (np.copyto, (out, x), None), False, "copy"))
            impls.append(("allocating copy np.copy(x)",
                          lambda x=x: (np.copy, (x,), None), False, "copy-alloc"))
        rows = run_case("W1", label, [ref], impls, cfg)
        gr = [r for r in rows if r.key == "gradc" and r.seconds]
        for r in rows:
            if r.key == "hand":
                r.note = (r.note + "; " if r.note else "") + hand_note
            if r.key == "gradc-fn" and gr and r.seconds:
                r.note = (r.note + "; " if r.note else "") + \
                    f"gradc grad / function = {gr[0].seconds / r.seconds:.2f}"
            if r.key in ("copy", "copy-alloc") and r.seconds:
                gbps = 2 * x.nbytes / r.seconds / 1e9
                r.note = f"{gbps:.1f} GB/s (x read + out written)"


# --------------------------------------------------------------------------- W2


def w2_np(a, b, c):
    return np.sin(a * b) + np.exp(c / (1 + a * a)) * np.log(1 + b * b) - a * b * c


def _make_w2(xp):
    def f(a, b, c):
        return xp.sin(a * b) + xp.exp(c / (1 + a * a)) * xp.log(1 + b * b) - a * b * c
    return f


def w2_grad_py(a, b, c):
    q = 1.0 + a * a
    e = math.exp(c / q)
    L = math.log(1.0 + b * b)
    cab = math.cos(a * b)
    return (b * cab - e * L * c * 2.0 * a / (q * q) - b * c,
            a * cab + e * 2.0 * b / (1.0 + b * b) - a * c,
            e * L / q - a * b)


def bench_w2(cfg, rng):
    import gradc
    a, b, c = 0.3, 0.5, 0.7
    ref = [np.float64(v) for v in w2_grad_py(a, b, c)]
    fds = []
    for i in range(3):
        h = 1e-6
        p = [a, b, c]
        m = [a, b, c]
        p[i] += h
        m[i] -= h
        fds.append((w2_np(*p) - w2_np(*m)) / (2 * h))
    fd = rel_err(fds, ref)
    impls = []

    def b_gradc():
        return gradc.grad(w2_np, argnums=(0, 1, 2), target=cfg.target), (a, b, c), to_np_list
    impls.append(("gradc", b_gradc, True, "gradc"))
    if "jax" in PEERS:
        def b_jax():
            import jax.numpy as jnp
            return jax_jit_grad(_make_w2(jnp), (a, b, c), (0, 1, 2), on_device=False)
        impls.append(("JAX jit(grad)", b_jax, False, "jax"))
    if "torch" in PEERS:
        def b_torch():
            torch = PEERS["torch"]
            f = _make_w2(torch)
            f64 = torch.float64

            def g(a_, b_, c_):
                at = torch.tensor(a_, dtype=f64, requires_grad=True)
                bt = torch.tensor(b_, dtype=f64, requires_grad=True)
                ct = torch.tensor(c_, dtype=f64, requires_grad=True)
                return torch.autograd.grad(f(at, bt, ct), (at, bt, ct))
            return g, (a, b, c), lambda r: [t.detach().numpy() for t in r]
        impls.append(("PyTorch eager", b_torch, False, "torch"))
    if "autograd" in PEERS:
        def b_ag():
            import autograd.numpy as anp
            return PEERS["autograd"].grad(_make_w2(anp), argnum=(0, 1, 2)), (a, b, c), \
                to_np_list
        impls.append(("autograd", b_ag, False, "autograd"))
    if "numba" in PEERS:
        def b_hand():
            hand = PEERS["numba"].njit(cache=False)(w2_grad_py)
            return hand, (a, b, c), to_np_list
        impls.append(("hand Numba", b_hand, False, "hand"))
    impls.append(("hand pure Python (math)",
                  lambda: (w2_grad_py, (a, b, c), to_np_list), False, "hand-py"))
    rows = run_case("W2", "scalars", ref, impls, cfg)
    for r in rows:
        if r.key == "hand-py":
            r.note = f"the reference; FD check {fd:.1e}"
        if r.seconds:
            r.note = (r.note + "; " if r.note else "") + "per call"


# --------------------------------------------------------------------------- W3


def mlp_loss_np(W1, W2, X, onehot):
    z = np.tanh(X @ W1) @ W2
    m = np.max(z, axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(z - m), axis=1)) + m[:, 0]
    return np.mean(lse - np.sum(z * onehot, axis=1))


def mlp_grad_np(W1, W2, X, onehot):
    """Hand-written reverse mode with NumPy/BLAS."""
    Hh = np.tanh(X @ W1)
    z = Hh @ W2
    m = np.max(z, axis=1, keepdims=True)
    p = np.exp(z - m)
    p /= np.sum(p, axis=1, keepdims=True)        # softmax = d lse / dz
    dz = (p - onehot) * (1.0 / X.shape[0])
    dW2 = Hh.T @ dz
    dA = (dz @ W2.T) * (1.0 - Hh * Hh)
    dW1 = X.T @ dA
    return dW1, dW2


def bench_w3(cfg, rng):
    import gradc
    B, D, H, C = cfg.w3_sizes
    X = rng.standard_normal((B, D))
    W1 = rng.standard_normal((D, H)) / np.sqrt(D)
    W2 = rng.standard_normal((H, C)) / np.sqrt(H)
    onehot = np.eye(C)[rng.integers(0, C, B)]
    ref = list(mlp_grad_np(W1, W2, X, onehot))
    fd = fd_check(lambda a, b: mlp_loss_np(a, b, X, onehot), [W1, W2], ref, rng)
    label = f"B={B} D={D} H={H} C={C}"

    def loss_gradc(W1, W2, X, onehot):
        z = np.tanh(X @ W1) @ W2
        return np.mean(gradc.logsumexp(z, axis=1) - np.sum(z * onehot, axis=1))

    args = (W1, W2, X, onehot)
    impls = [("gradc", lambda: (gradc.grad(loss_gradc, argnums=(0, 1), target=cfg.target),
                                args, to_np_list), True, "gradc")]
    if cfg.parallel:
        impls.append(("gradc (parallel)",
                      lambda: (gradc.grad(loss_gradc, argnums=(0, 1), target="parallel"),
                               args, to_np_list), True, "gradc-parallel"))
    if "jax" in PEERS:
        def b_jax():
            jax = PEERS["jax"]
            import jax.numpy as jnp

            def loss(W1, W2, X, onehot):
                z = jnp.tanh(X @ W1) @ W2
                return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(z * onehot, axis=1))
            return jax_jit_grad(loss, args, (0, 1))
        impls.append(("JAX jit(grad)", b_jax, False, "jax"))
    if "torch" in PEERS:
        def b_torch():
            torch = PEERS["torch"]
            tW1 = torch.from_numpy(W1).requires_grad_(True)
            tW2 = torch.from_numpy(W2).requires_grad_(True)
            tX, toh = torch.from_numpy(X), torch.from_numpy(onehot)

            def g(W1, W2, X, onehot):
                z = torch.tanh(X @ W1) @ W2
                loss = torch.mean(torch.logsumexp(z, dim=1) - torch.sum(z * onehot, dim=1))
                return torch.autograd.grad(loss, (W1, W2))
            return g, (tW1, tW2, tX, toh), lambda r: [t.detach().numpy() for t in r]
        impls.append(("PyTorch eager", b_torch, False, "torch"))
    if "autograd" in PEERS:
        def b_ag():
            import autograd.numpy as anp
            from autograd.scipy.special import logsumexp

            def loss(W1, W2, X, onehot):
                z = anp.tanh(X @ W1) @ W2
                return anp.mean(logsumexp(z, axis=1) - anp.sum(z * onehot, axis=1))
            return PEERS["autograd"].grad(loss, argnum=(0, 1)), args, to_np_list
        impls.append(("autograd", b_ag, False, "autograd"))
    impls.append(("hand NumPy/BLAS", lambda: (mlp_grad_np, args, to_np_list), False, "hand"))
    rows = run_case("W3", label, ref, impls, cfg)
    for r in rows:
        if r.key == "hand":
            r.note = f"the reference; FD check {fd:.1e}"


# --------------------------------------------------------------------------- W4


def _lse_np(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m, axis=axis)


def crf_logz_np(U, A):
    """Sum over the batch of the CRF log-partition log Z (forward algorithm, NumPy):
    alpha_0 = U[:, 0], alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + A[i, j]) + U[:, t, j],
    log Z = logsumexp_j(alpha_{T-1}[j])."""
    alpha = U[:, 0]
    for t in range(1, U.shape[1]):
        alpha = _lse_np(alpha[:, :, None] + A[None], 1) + U[:, t]
    return np.sum(_lse_np(alpha, 1))


def crf_gradc(U, A):
    """``crf_logz_np`` for gradc: the recursion as one ``gradc.scan`` over the time axis
    (also the W4 of ``benchmarks/compile_time.py``)."""
    import gradc

    def step(alpha, u):
        return gradc.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
    xs = np.transpose(U, (1, 0, 2))                           # (T, B, K): loop axis first
    alpha, _ = gradc.scan(step, xs[0], xs[1:])
    return np.sum(gradc.logsumexp(alpha, axis=1))


def crf_grad_np(U, A):
    """Hand-written forward-backward: d(sum log Z)/dU = node marginals
    p(y_t = j), d/dA = pairwise marginals p(y_{t-1} = i, y_t = j) summed over t and batch."""
    B, T, K = U.shape
    alpha = np.empty((T, B, K))
    beta = np.empty((T, B, K))
    alpha[0] = U[:, 0]
    for t in range(1, T):
        alpha[t] = _lse_np(alpha[t - 1][:, :, None] + A[None], 1) + U[:, t]
    beta[T - 1] = 0.0
    for t in range(T - 2, -1, -1):
        beta[t] = _lse_np(A[None] + (U[:, t + 1] + beta[t + 1])[:, None, :], 2)
    logz = _lse_np(alpha[T - 1], 1)                               # (B,)
    dU = np.exp(alpha + beta - logz[None, :, None]).transpose(1, 0, 2)
    # dA[i, j] = sum over t = 1..T-1 and b of exp(a[t,b,i] + A[i,j] + c[t,b,j]) with
    # a = alpha_{t-1} - log Z and c = U_t + beta_t.  Each (t, b) row is shifted by its
    # maximum before exp(); the shifts go into one weight per row, which stays in
    # [1/K^2, exp(max A - min A)] because each pairwise marginal sums to 1.
    a = (alpha[:-1] - logz[None, :, None]).reshape(-1, K)
    c = (U.transpose(1, 0, 2)[1:] + beta[1:]).reshape(-1, K)
    sa, sc, sA = np.max(a, axis=1), np.max(c, axis=1), np.max(A)
    wa = np.exp(a - sa[:, None]) * np.exp(sa + sc + sA)[:, None]
    dA = (wa.T @ np.exp(c - sc[:, None])) * np.exp(A - sA)
    return dU, dA


def crf_grad_np_matmul(U, A):
    """The same forward-backward with each step's logsumexp as a matrix product in
    exp space, rows shifted by their maximum (``log(exp(alpha - m) @ exp(A - max A)) + m +
    max A``): BLAS instead of a (B, K, K) temporary; exact while exp(A - max A) does not
    underflow (A's range below ~700)."""
    B, T, K = U.shape
    sA = np.max(A)
    eA = np.exp(A - sA)
    alpha = np.empty((T, B, K))
    beta = np.empty((T, B, K))
    alpha[0] = U[:, 0]
    for t in range(1, T):
        m = np.max(alpha[t - 1], axis=1, keepdims=True)
        alpha[t] = np.log(np.exp(alpha[t - 1] - m) @ eA) + (m + sA) + U[:, t]
    beta[T - 1] = 0.0
    for t in range(T - 2, -1, -1):
        c = U[:, t + 1] + beta[t + 1]
        m = np.max(c, axis=1, keepdims=True)
        beta[t] = np.log(np.exp(c - m) @ eA.T) + (m + sA)
    logz = _lse_np(alpha[T - 1], 1)
    dU = np.exp(alpha + beta - logz[None, :, None]).transpose(1, 0, 2)
    a = (alpha[:-1] - logz[None, :, None]).reshape(-1, K)
    c = (U.transpose(1, 0, 2)[1:] + beta[1:]).reshape(-1, K)
    sa, sc = np.max(a, axis=1), np.max(c, axis=1)
    wa = np.exp(a - sa[:, None]) * np.exp(sa + sc + sA)[:, None]
    dA = (wa.T @ np.exp(c - sc[:, None])) * eA
    return dU, dA


def bench_w4(cfg, rng):
    import gradc
    B, T, K = cfg.w4_sizes
    U = rng.standard_normal((B, T, K))
    A = 0.5 * rng.standard_normal((K, K))
    ref = list(crf_grad_np(U, A))
    fd = fd_check(crf_logz_np, [U, A], ref, rng)
    label = f"B={B} T={T} K={K}"

    args = (U, A)
    impls = [("gradc (scan)", lambda: (gradc.grad(crf_gradc, argnums=(0, 1),
                                                  target=cfg.target), args, to_np_list),
              True, "gradc")]
    if cfg.parallel:
        impls.append(("gradc (scan, parallel)",
                      lambda: (gradc.grad(crf_gradc, argnums=(0, 1), target="parallel"),
                               args, to_np_list), True, "gradc-parallel"))
    if "jax" in PEERS:
        def b_jax():
            jax = PEERS["jax"]
            import jax.numpy as jnp

            def loss(U, A):
                def step(alpha, u):
                    return jax.nn.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
                xs = jnp.transpose(U, (1, 0, 2))
                alpha, _ = jax.lax.scan(step, xs[0], xs[1:])
                return jnp.sum(jax.nn.logsumexp(alpha, axis=1))
            return jax_jit_grad(loss, args, (0, 1))
        impls.append(("JAX jit(grad) lax.scan", b_jax, False, "jax"))
    if "torch" in PEERS:
        def b_torch():
            torch = PEERS["torch"]
            tU = torch.from_numpy(U).requires_grad_(True)
            tA = torch.from_numpy(A).requires_grad_(True)

            def g(U, A):
                alpha = U[:, 0]
                for t in range(1, U.shape[1]):
                    alpha = torch.logsumexp(alpha[:, :, None] + A[None], dim=1) + U[:, t]
                loss = torch.sum(torch.logsumexp(alpha, dim=1))
                return torch.autograd.grad(loss, (U, A))
            return g, (tU, tA), lambda r: [t.detach().numpy() for t in r]
        impls.append(("PyTorch eager (Python loop)", b_torch, False, "torch"))
    if "autograd" in PEERS:
        def b_ag():
            import autograd.numpy as anp
            from autograd.scipy.special import logsumexp

            def loss(U, A):
                alpha = U[:, 0]
                for t in range(1, U.shape[1]):
                    alpha = logsumexp(alpha[:, :, None] + A[None], axis=1) + U[:, t]
                return anp.sum(logsumexp(alpha, axis=1))
            return PEERS["autograd"].grad(loss, argnum=(0, 1)), args, to_np_list
        impls.append(("autograd (Python loop)", b_ag, False, "autograd"))
    impls.append(("hand NumPy forward-backward", lambda: (crf_grad_np, args, to_np_list),
                  False, "hand"))
    impls.append(("hand NumPy forward-backward, exp-space matmuls",
                  lambda: (crf_grad_np_matmul, args, to_np_list), False, "hand-matmul"))
    rows = run_case("W4", label, ref, impls, cfg)
    for r in rows:
        if r.key == "hand":
            r.note = f"the reference; FD check {fd:.1e}"


# --------------------------------------------------------------------------- W5


def _im2col_same(img, kh, kw):
    N, C, H, W = img.shape
    pt, pl = (kh - 1) // 2, (kw - 1) // 2
    Ip = np.zeros((N, C, H + kh - 1, W + kw - 1))
    Ip[:, :, pt:pt + H, pl:pl + W] = img
    cols = np.empty((N, C, kh, kw, H, W))
    for u in range(kh):
        for v in range(kw):
            cols[:, :, u, v] = Ip[:, :, u:u + H, v:v + W]
    return cols.reshape(N, C * kh * kw, H * W)


def conv_same_np(img, K):
    """Cross-correlation, 'same' zero padding, NCHW input, OIHW kernel (as gradc.conv2d)."""
    N, C, H, W = img.shape
    n_out, _, kh, kw = K.shape
    cols = _im2col_same(img, kh, kw)
    return (K.reshape(n_out, -1) @ cols).reshape(N, n_out, H, W)


def conv_loss_np(img, K):
    return np.sum(np.tanh(conv_same_np(img, K)))


def conv_grad_np(img, K):
    """Hand-written gradient of sum(tanh(conv2d(img, K, 'same'))): im2col + BLAS."""
    N, C, H, W = img.shape
    n_out, _, kh, kw = K.shape
    pt, pl = (kh - 1) // 2, (kw - 1) // 2
    cols = _im2col_same(img, kh, kw)                       # (N, C*kh*kw, H*W)
    K2 = K.reshape(n_out, -1)
    t = np.tanh(K2 @ cols)                               # (N, n_out, H*W)
    dout = 1.0 - t * t
    dK = np.tensordot(dout, cols, axes=([0, 2], [0, 2])).reshape(K.shape)
    dcols = (K2.T @ dout).reshape(N, C, kh, kw, H, W)
    dIp = np.zeros((N, C, H + kh - 1, W + kw - 1))
    for u in range(kh):
        for v in range(kw):
            dIp[:, :, u:u + H, v:v + W] += dcols[:, :, u, v]
    return dIp[:, :, pt:pt + H, pl:pl + W].copy(), dK


def bench_w5(cfg, rng):
    import gradc
    N, C, H, n_out, k = cfg.w5_sizes
    img = rng.standard_normal((N, C, H, H))
    K = rng.standard_normal((n_out, C, k, k)) / np.sqrt(C * k * k)
    ref = list(conv_grad_np(img, K))
    fd = fd_check(conv_loss_np, [img, K], ref, rng)
    label = f"N={N} C={C} H=W={H} O={n_out} {k}x{k}"

    def loss_gradc(img, K):
        return np.sum(np.tanh(gradc.conv2d(img, K, padding="same")))

    impls = [("gradc", lambda: (gradc.grad(loss_gradc, argnums=(0, 1), target=cfg.target),
                                (img, K), to_np_list), True, "gradc")]
    if cfg.parallel:
        impls.append(("gradc (parallel)",
                      lambda: (gradc.grad(loss_gradc, argnums=(0, 1), target="parallel"),
                               (img, K), to_np_list), True, "gradc-parallel"))
    if "jax" in PEERS:
        def b_jax():
            jax = PEERS["jax"]
            import jax.numpy as jnp

            def loss(img, K):
                out = jax.lax.conv_general_dilated(
                    img, K, window_strides=(1, 1), padding="SAME",
                    dimension_numbers=("NCHW", "OIHW", "NCHW"),
                    precision=jax.lax.Precision.HIGHEST)
                return jnp.sum(jnp.tanh(out))
            return jax_jit_grad(loss, (img, K), (0, 1))
        impls.append(("JAX jit(grad)", b_jax, False, "jax"))
    if "torch" in PEERS:
        def b_torch():
            torch = PEERS["torch"]
            tI = torch.from_numpy(img).requires_grad_(True)
            tK = torch.from_numpy(K).requires_grad_(True)

            def g(img, K):
                loss = torch.sum(torch.tanh(torch.nn.functional.conv2d(img, K, padding="same")))
                return torch.autograd.grad(loss, (img, K))
            return g, (tI, tK), lambda r: [t.detach().numpy() for t in r]
        impls.append(("PyTorch eager", b_torch, False, "torch"))
    if "autograd" in PEERS:
        def b_ag():
            import autograd.numpy as anp

            def loss(img, K):       # sum over the k*k taps of a channel contraction
                n, c, h, w = img.shape
                kh, kw = K.shape[2], K.shape[3]
                pt, pl = (kh - 1) // 2, (kw - 1) // 2
                Ip = anp.pad(img, ((0, 0), (0, 0), (pt, kh - 1 - pt), (pl, kw - 1 - pl)),
                             mode="constant")
                out = 0.0
                for u in range(kh):
                    for v in range(kw):
                        out = out + anp.einsum("nchw,oc->nohw",
                                               Ip[:, :, u:u + h, v:v + w], K[:, :, u, v])
                return anp.sum(anp.tanh(out))
            return PEERS["autograd"].grad(loss, argnum=(0, 1)), (img, K), to_np_list
        impls.append(("autograd (shifted einsums)", b_ag, False, "autograd"))
    impls.append(("hand NumPy/BLAS (im2col)", lambda: (conv_grad_np, (img, K), to_np_list),
                  False, "hand"))
    rows = run_case("W5", label, ref, impls, cfg)
    for r in rows:
        if r.key == "hand":
            r.note = f"the reference; FD check {fd:.1e}"


# --------------------------------------------------------------------------- C1

_C1_PRELUDE = """
import json, time
t0 = time.perf_counter()
"""

_C1_BODIES = {
    "gradc": """
import numpy as np
import gradc
t1 = time.perf_counter()
def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
x = np.linspace(-1.0, 1.0, N)
t2 = time.perf_counter()
g = gradc.grad(rosen, target=TARGET)(x)
t3 = time.perf_counter()
""",
    "jax": """
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
t1 = time.perf_counter()
def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
x = jax.device_put(np.linspace(-1.0, 1.0, N))
t2 = time.perf_counter()
g = jax.block_until_ready(jax.jit(jax.grad(rosen))(x))
t3 = time.perf_counter()
""",
    "torch": """
import numpy as np
import torch
t1 = time.perf_counter()
def rosen(x):
    return torch.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
x = torch.from_numpy(np.linspace(-1.0, 1.0, N)).requires_grad_(True)
t2 = time.perf_counter()
g = torch.autograd.grad(rosen(x), x)[0]
t3 = time.perf_counter()
""",
    "numba": """
import numpy as np
import numba
t1 = time.perf_counter()
x = np.linspace(-1.0, 1.0, N)
t2 = time.perf_counter()
@numba.njit(cache=NUMBA_CACHE)
def rosen_grad(x):
    n = x.shape[0]
    g = np.empty(n)
    x0, x1 = x[0], x[1]
    g[0] = -400.0 * x0 * (x1 - x0 * x0) - 2.0 * (1.0 - x0)
    for i in range(1, n - 1):
        xm, xi, xp = x[i - 1], x[i], x[i + 1]
        g[i] = 200.0 * (xi - xm * xm) - 400.0 * xi * (xp - xi * xi) - 2.0 * (1.0 - xi)
    xm, xi = x[n - 2], x[n - 1]
    g[n - 1] = 200.0 * (xi - xm * xm)
    return g
g = rosen_grad(x)
t3 = time.perf_counter()
""",
}

_C1_EPILOGUE = """
print("C1RESULT " + json.dumps({"import_s": t1 - t0, "first_call_s": t3 - t2}))
"""


def _c1_subprocess(kind, n, env_extra, target, workdir, numba_cache=False):
    code = (f"N = {n}\nTARGET = {target!r}\nNUMBA_CACHE = {numba_cache!r}\n" + _C1_PRELUDE
            + _C1_BODIES[kind] + _C1_EPILOGUE)
    # a real file: Numba's disk cache needs the function's source file
    script = os.path.join(workdir, f"c1_{kind}.py")
    with open(script, "w") as f:
        f.write(code)
    env = dict(os.environ)
    env.update(env_extra)
    p = subprocess.run([sys.executable, script], env=env, capture_output=True,
                       text=True, timeout=600, cwd=workdir)
    for line in p.stdout.splitlines():
        if line.startswith("C1RESULT "):
            return json.loads(line[len("C1RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"subprocess exited {p.returncode}: {tail}")


def bench_c1(cfg, rng):
    n = 10 ** 4
    label = f"W1 n={n:.0e}".replace("e+0", "e")
    kinds = [("gradc cold (empty GRADC_CACHE_DIR)", "gradc", "cold", True, "gradc-cold"),
             ("gradc warm (same GRADC_CACHE_DIR)", "gradc", "warm", True, "gradc-warm"),
             # gradc's own helper kernels (gradc/codegen/kernels.py) are cached by Numba
             # next to the package, not under GRADC_CACHE_DIR: an empty NUMBA_CACHE_DIR
             # as well gives the first call after a fresh install
             ("gradc coldest (empty GRADC_CACHE_DIR and NUMBA_CACHE_DIR)", "gradc",
              "coldest", True, "gradc-coldest")]
    if "jax" in PEERS:
        kinds.append(("JAX jit(grad), fresh process", "jax", None, False, "jax"))
    if "torch" in PEERS:
        kinds.append(("PyTorch eager, fresh process", "torch", None, False, "torch"))
    if "numba" in PEERS:
        kinds.append(("hand Numba njit(cache=True), cold", "numba", "cold", False, "hand"))
        kinds.append(("hand Numba njit(cache=True), warm disk cache", "numba", "warm", False,
                      "hand-warm"))
    results = {k[0]: [] for k in kinds}
    errors = {}
    for rep in range(cfg.c1_repeats):
        cache_dir = tempfile.mkdtemp(prefix="gradc-bench-c1-")
        try:
            for name, kind, mode, _, _ in kinds:
                if name in errors:
                    continue
                log(f"  [C1] {name} (repeat {rep + 1}/{cfg.c1_repeats})")
                env = {"GRADC_CACHE_DIR": cache_dir} if kind == "gradc" else {}
                if kind == "numba":
                    env = {"NUMBA_CACHE_DIR": os.path.join(cache_dir, "hand-numba")}
                if mode == "coldest":
                    env = {"GRADC_CACHE_DIR": os.path.join(cache_dir, "coldest-gradc"),
                           "NUMBA_CACHE_DIR": os.path.join(cache_dir, "coldest-numba")}
                try:
                    results[name].append(_c1_subprocess(kind, n, env, cfg.target,
                                                        cache_dir, kind == "numba"))
                except Exception as e:  # noqa: BLE001
                    errors[name] = short_error(e)
                    FULL_ERRORS.append(("C1", name, traceback.format_exc()))
                    log(f"    ERROR {name}: {errors[name]}")
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    rows = []
    for name, kind, mode, is_gradc, key in kinds:
        r = Row("C1", label, name, is_gradc=is_gradc, key=key)
        if name in errors:
            r.error = errors[name]
        if results[name]:
            r.seconds = float(np.median([d["first_call_s"] for d in results[name]]))
            imp = float(np.median([d["import_s"] for d in results[name]]))
            r.note = (f"first call after imports; import {imp:.2f} s; "
                      f"median of {len(results[name])} processes")
        rows.append(r)
    cold = [r for r in rows if r.key == "gradc-cold" and r.seconds]
    for r in rows:
        if cold and r.seconds:
            r.ratio = cold[0].seconds / r.seconds
    ROWS.extend(rows)


# --------------------------------------------------------------------------- report


def md_escape(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def table_rows():
    out = []
    for r in ROWS:
        if r.error and r.seconds is None:
            med = f"ERROR: {r.error}"
        else:
            med = fmt_time(r.seconds)
            if r.error:
                med += f" (ERROR: {r.error})"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        if r.workload == "C1" and r.ratio is not None:
            ratio = f"{r.ratio:.2f} (cold/this)"
        load = f"{r.load:.2f}" if r.load is not None else ""
        out.append([r.workload, r.size, r.impl, med, ratio, r.check, load, r.note])
    return out


HEADER = ["workload", "size", "implementation", "median", "gradc / this", "gradient check",
          "bg load", "note"]


def print_table(rows, header, markdown, file=sys.stdout):
    if markdown:
        print("| " + " | ".join(header) + " |", file=file)
        print("| " + " | ".join("---" for _ in header) + " |", file=file)
        for row in rows:
            print("| " + " | ".join(md_escape(c) for c in row) + " |", file=file)
    else:
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
                  for i, h in enumerate(header)]
        widths = [min(w, 70) for w in widths]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
        print(line, file=file)
        print("-" * len(line), file=file)
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)), file=file)


def _find(workload, key, size=None):
    for r in ROWS:
        if r.workload == workload and r.key == key and (size is None or r.size == size):
            return r
    return None


def _verdict(value, limit, unit=""):
    if value is None:
        return "not measured"
    if value <= limit:
        return f"meets ({value:.3g}{unit} ≤ {limit:g}{unit})"
    return f"MISSES by {value / limit:.2f}× ({value:.3g}{unit} > {limit:g}{unit})"


def targets():
    """[target, measured, verdict] from the rows of this run."""
    out = []
    sizes_w1 = [r.size for r in ROWS if r.workload == "W1" and r.key == "gradc"]
    for size in sizes_w1:
        g, j = _find("W1", "gradc", size), _find("W1", "jax", size)
        if g and g.seconds and j and j.seconds:
            out.append([f"W1 {size}: gradc ≤ JAX", f"{fmt_time(g.seconds)} vs "
                        f"{fmt_time(j.seconds)}", _verdict(g.seconds / j.seconds, 1.0, "×")])
        elif g:
            out.append([f"W1 {size}: gradc ≤ JAX", g.error or "no JAX", "not measured"])
        fn = _find("W1", "gradc-fn", size)
        if g and g.seconds and fn and fn.seconds:
            out.append([f"W1 {size}: gradient / function-only ≤ 3",
                        f"{fmt_time(g.seconds)} / {fmt_time(fn.seconds)}",
                        _verdict(g.seconds / fn.seconds, 3.0, "")])
        cp = _find("W1", "copy", size)
        if g and g.seconds and cp and cp.seconds:
            out.append([f"W1 {size}: ≤ 1.1× memory copy", f"{fmt_time(g.seconds)} vs copy "
                        f"{fmt_time(cp.seconds)}", _verdict(g.seconds / cp.seconds, 1.1, "×")])
        ca = _find("W1", "copy-alloc", size)
        if g and g.seconds and ca and ca.seconds:
            out.append([f"W1 {size}: (for information) ≤ 1.1× an allocating copy",
                        f"{fmt_time(g.seconds)} vs np.copy {fmt_time(ca.seconds)}",
                        _verdict(g.seconds / ca.seconds, 1.1, "×")])
    g, j = _find("W2", "gradc"), _find("W2", "jax")
    if g and g.seconds:
        out.append(["W2: ≤ 1 µs per call", fmt_time(g.seconds),
                    _verdict(g.seconds * 1e6, 1.0, " µs")])
        if j and j.seconds:
            speedup = j.seconds / g.seconds
            out.append(["W2: ≥ 10× faster than JAX", f"JAX / gradc = {speedup:.2f}",
                        f"meets ({speedup:.3g}× ≥ 10×)" if speedup >= 10 else
                        f"MISSES by {10 / speedup:.2f}× ({speedup:.3g}× < 10×)"])
    elif g:
        out.append(["W2: ≤ 1 µs per call", g.error or "", "not measured"])
    for w in ("W3", "W5"):
        g = _find(w, "gradc")
        peers = [r for r in (_find(w, "jax"), _find(w, "torch")) if r and r.seconds]
        if g and g.seconds and peers:
            best = min(peers, key=lambda r: r.seconds)
            out.append([f"{w}: ≤ 1.1× faster of JAX, PyTorch",
                        f"{fmt_time(g.seconds)} vs {best.impl} {fmt_time(best.seconds)}",
                        _verdict(g.seconds / best.seconds, 1.1, "×")])
        elif g:
            out.append([f"{w}: ≤ 1.1× faster of JAX, PyTorch", g.error or "no peer",
                        "not measured"])
    g, j = _find("W4", "gradc"), _find("W4", "jax")
    if g and g.seconds and j and j.seconds:
        out.append(["W4: ≤ 0.5× JAX's time", f"{fmt_time(g.seconds)} vs JAX "
                    f"{fmt_time(j.seconds)}", _verdict(g.seconds / j.seconds, 0.5, "×")])
    elif g:
        out.append(["W4: ≤ 0.5× JAX's time", g.error or "no JAX", "not measured"])
    cold, warm = _find("C1", "gradc-cold"), _find("C1", "gradc-warm")
    if cold:
        out.append(["C1: cold first call ≤ 1 s", fmt_time(cold.seconds) if cold.seconds else
                    (cold.error or ""), _verdict(cold.seconds, 1.0, " s")])
    if warm:
        out.append(["C1: warm first call ≤ 0.1 s", fmt_time(warm.seconds) if warm.seconds else
                    (warm.error or ""), _verdict(warm.seconds, 0.1, " s")])
    return out


def versions():
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("gradc", "numpy", "scipy", "numba", "llvmlite", "jax", "jaxlib", "torch",
                "autograd"):
        try:
            out[pkg] = md.version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = "not installed"
    return out


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def git_rev():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", ":/gradc"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (gradc/ has uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: smaller sizes, fewer repeats")
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W2")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument("--parallel", action="store_true",
                    help="also time gradc target='parallel' (W1, W3, W4, W5)")
    ap.add_argument("--target", default="cpu", help="gradc target for the main rows")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    ap.add_argument("--threads", default=None,
                    help="threads for BLAS, OpenMP, Numba, PyTorch (and XLA when 1); "
                         "default: each library's own default")
    ap.add_argument("--skip", default="",
                    help="comma-separated peers to leave out: jax,torch,autograd,numba")
    ap.add_argument("--idle-wait", type=float, default=None,
                    help="seconds to wait, before timing each case, for other processes to "
                         "leave the CPUs idle (default 60, --quick 0)")
    ap.add_argument("--load-retries", type=int, default=None,
                    help="time a case again (at most this many times) when other processes "
                         "used more than --busy cores meanwhile; the least loaded attempt is "
                         "kept (default 2, --quick 0)")
    ap.add_argument("--busy", type=float, default=0.3,
                    help="cores used by other processes above which a timing is retried")
    ap.add_argument("--tol", type=float, default=1e-8,
                    help="max relative gradient error against the hand-written gradient")
    cfg = ap.parse_args(argv)

    if cfg.quick:
        cfg.w1_sizes = [10 ** 4, 10 ** 6]
        cfg.w3_sizes = (128, 196, 64, 10)
        cfg.w4_sizes = (8, 16, 8)
        cfg.w5_sizes = (2, 4, 16, 8, 3)
        cfg.repeats, cfg.min_repeats, cfg.min_batch_s, cfg.max_impl_s = 5, 3, 0.002, 0.5
        cfg.warm_s = 0.0
        cfg.c1_repeats = 1
        cfg.autograd_max_n = 10 ** 6
    else:
        cfg.w1_sizes = [10 ** 4, 10 ** 6, 10 ** 7]
        cfg.w3_sizes = (512, 784, 256, 10)
        cfg.w4_sizes = (32, 64, 32)
        cfg.w5_sizes = (8, 16, 32, 32, 3)
        cfg.repeats, cfg.min_repeats, cfg.min_batch_s, cfg.max_impl_s = 21, 5, 0.02, 4.0
        cfg.warm_s = WARM_S
        cfg.c1_repeats = 3
        cfg.autograd_max_n = 10 ** 7

    if cfg.idle_wait is None:
        cfg.idle_wait = 0.0 if cfg.quick else 60.0
    if cfg.load_retries is None:
        cfg.load_retries = 0 if cfg.quick else 2

    all_w = ["W1", "W2", "W3", "W4", "W5", "C1"]
    only = [w.strip().upper() for w in cfg.only.split(",") if w.strip()] or all_w
    bad = [w for w in only if w not in all_w]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {all_w}")

    # the main run's compiled code goes to a fresh cache directory (C1 makes its own)
    own_cache = None
    if "GRADC_CACHE_DIR" not in os.environ:
        own_cache = tempfile.mkdtemp(prefix="gradc-bench-")
        os.environ["GRADC_CACHE_DIR"] = own_cache

    import signal

    def _on_term(signum, frame):          # so that the temporary cache dir is removed
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _on_term)

    t_start = time.perf_counter()
    _load_peers()
    for p in [p.strip() for p in cfg.skip.split(",") if p.strip()]:
        if PEERS.pop(p, None) is not None:
            PEER_ERRORS[p] = "left out with --skip"
    for p, e in PEER_ERRORS.items():
        log(f"peer {p} skipped: {e}")
    rng = np.random.default_rng(0)
    benches = {"W1": bench_w1, "W2": bench_w2, "W3": bench_w3, "W4": bench_w4,
               "W5": bench_w5, "C1": bench_c1}
    try:
        for w in all_w:
            if w in only:
                log(f"== {w}")
                try:
                    benches[w](cfg, rng)
                except Exception as e:  # noqa: BLE001  (a setup failure: record it)
                    ROWS.append(Row(w, "", "(setup)", error=short_error(e)))
                    FULL_ERRORS.append((w, "(setup)", traceback.format_exc()))
                    log(f"   SETUP ERROR {w}: {short_error(e)}")
    finally:
        if own_cache:
            shutil.rmtree(own_cache, ignore_errors=True)
    elapsed = time.perf_counter() - t_start

    vers = versions()
    md = cfg.markdown
    print(("**" if md else "") + "gradc CPU benchmarks" + (" (--quick)" if cfg.quick else "")
          + ("**" if md else ""))
    print()
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; gradc commit {git_rev()}; "
          f"gradc target {cfg.target!r}")
    print(f"- machine: {machine()}")
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    torch = PEERS.get("torch")
    print(f"- threads: --threads {cfg.threads or 'not given (library defaults)'}; torch "
          f"{torch.get_num_threads() if torch else '-'}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', 'unset')}")
    if PEER_ERRORS:
        print("- skipped peers: " + "; ".join(f"{k} ({v})" for k, v in PEER_ERRORS.items()))
    print(f"- total run time {elapsed:.0f} s; gradient check tolerance {cfg.tol:g} "
          "(max abs error / max abs reference)")
    print("- median: per call; gradc / this: gradc's median over this row's (< 1: gradc "
          "faster); bg load: cores used by other processes while the case was timed (this "
          "machine is shared; above ~0.3 the multi-threaded peers are hurt most)")
    print()
    print_table(table_rows(), HEADER, md)
    print()
    print(("**Targets**" if md else "Targets"))
    print()
    print_table(targets(), ["target", "measured", "verdict"], md)
    if FULL_ERRORS:
        print()
        print("Errors and warnings (full text on stderr):")
        for case, impl, _ in FULL_ERRORS:
            print(f"- {case} / {impl}")
        for case, impl, tb in FULL_ERRORS:
            log(f"\n---- {case} / {impl}\n{tb}")
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"rows": [r.as_dict() for r in ROWS], "targets": targets(),
                       "versions": vers, "machine": machine(), "commit": git_rev(),
                       "quick": cfg.quick, "errors": FULL_ERRORS, "elapsed_s": elapsed},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
