#!/usr/bin/env python
"""W8 of shared/BENCHMARKS.md: the gradient through a solver, implicit vs unrolled.

The solver is the fixed point of ``z = tanh(s·W z + u)`` (a deep-equilibrium layer;
``W`` has spectral norm 1, ``s`` < 1 sets the contraction, so the iteration count is
data: ``s`` is found by bisection so that it takes W8's 500 iterations to a step below
1e-11 (``scale_for``); ``W`` is symmetric and
``u`` small, so that the contraction is ``s`` and not what ``tanh`` saturating adds).  The loss is
``Σ z² + Σ z``; its gradient in ``(W, u)``:

* forward:  ``gradc.jit`` of the loss (the solve alone);
* implicit: ``gradc.value_and_grad`` with ``gradc.fixed_point`` (implicit=True): the solve,
  then one GMRES solve with ``(I − ∂f/∂z)ᵀ`` (matrix-free, VJPs);
* unrolled: the same with ``implicit=False``: reverse mode through the ``while_loop``
  (its tape holds every iterate).

Columns: times (median of 5 calls after warm-up, compiled ``cpu`` target), the extra
time of the gradient over the forward solve as a fraction of the forward solve (target
≤ 0.20), the largest difference between the implicit and unrolled gradients (target
≤ 1e-8), and the peak memory of one gradient call above the memory before it, for three
iteration counts (``ITERATIONS``: 150, 500, 1000) — each in a fresh
process after a warm-up call with the same shapes (``VmHWM`` reset through
``/proc/self/clear_refs``), so that compiled code's own allocations count.

    /work/bench-venv/bin/python benchmarks/implicit.py [--sizes 200 1000 2000] [--markdown]
        [--no-memory] [--solve bicgstab|gmres]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

ITERATIONS = (150, 500, 1000)    # forward iterations; the middle one (W8's) is timed


def problem(n, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W = W + W.T                   # symmetric: spectral radius = norm = 1 after scaling
    W /= np.linalg.norm(W, 2)
    return W, 0.01 * rng.standard_normal(n)


SOLVE = ["bicgstab"]      # the adjoint's method (--solve)


def make(implicit):
    import gradc

    def loss(W, u, s):
        z = gradc.fixed_point(lambda z, W, u, s: np.tanh(s * (W @ z) + u), np.zeros(u.size),
                              W, u, s, tol=1e-11, maxiter=5000, implicit=implicit,
                              solve=SOLVE[0])
        return np.sum(z ** 2) + np.sum(z)
    return loss


def iterations(W, u, s, tol=1e-11):
    z = np.zeros(u.size)
    for k in range(1, 5001):
        new = np.tanh(s * (W @ z) + u)
        step = np.linalg.norm(new - z) / np.sqrt(1 + new @ new)
        z = new
        if step <= tol:
            return k
    return k


def scale_for(W, u, count):
    """The ``s`` at which the forward iteration takes ``count`` steps (bisection: the
    count grows with ``s``)."""
    lo, hi = 0.5, 0.9995         # (nearer 1, tanh saturates: fewer steps again)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        k = iterations(W, u, mid)
        if k == count:
            break
        lo, hi = (mid, hi) if k < count else (lo, mid)
    return np.float64(mid)


def median_time(fn, *args, calls=5):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timing(n):
    import gradc
    W, u = problem(n)
    s = scale_for(W, u, ITERATIONS[1])
    fwd = gradc.jit(make(True))
    imp = gradc.value_and_grad(make(True), argnums=(0, 1))
    unr = gradc.value_and_grad(make(False), argnums=(0, 1))
    for fn in (fwd, imp, unr):
        fn(W, u, s)
    t = {name: median_time(fn, W, u, s) for name, fn in
         (("forward", fwd), ("implicit", imp), ("unrolled", unr))}
    gi, gu = imp(W, u, s)[1], unr(W, u, s)[1]
    t["agreement"] = max(float(np.abs(a - b).max()) for a, b in zip(gi, gu))
    t["scale"] = max(float(np.abs(a).max()) for a in gi)
    t["iterations"] = iterations(W, u, s)
    return t


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_worker(n, implicit, s):
    """Peak memory (kB) of one gradient call above the RSS before it."""
    import gc

    import gradc
    W, u = problem(n)
    grad = gradc.grad(make(implicit), argnums=(0, 1))
    grad(W, u, np.float64(0.1))                 # compiled and warm, few iterations
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    grad(W, u, np.float64(s))
    return _status_kb("VmHWM") - before


def memory(n, scales):
    out = {}
    for implicit in (True, False):
        for s in scales:
            code = (f"import sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
                    f"import implicit as b; print(b.memory_worker({n}, {implicit}, {s}))")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            lines = res.stdout.split()
            out[(implicit, s)] = int(lines[-1]) if res.returncode == 0 and lines else None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 2000])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--solve", default="bicgstab", choices=("bicgstab", "gmres", "cg"),
                    help="the adjoint system's method (memory runs use the default)")
    args = ap.parse_args()
    SOLVE[0] = args.solve
    rows = []
    for n in args.sizes:
        t = timing(n)
        W, u = problem(n)
        scales = [scale_for(W, u, k) for k in ITERATIONS]
        mem = {} if args.no_memory else memory(n, scales)
        its = [iterations(W, u, s) for s in scales]
        rows.append((n, t, mem, its, scales))
        extra = (t["implicit"] - t["forward"]) / t["forward"]
        print(f"n={n}: {t['iterations']} iterations; forward {t['forward']*1e3:.1f} ms, "
              f"implicit grad {t['implicit']*1e3:.1f} ms (+{extra:.1%} of forward), "
              f"unrolled grad {t['unrolled']*1e3:.1f} ms; |implicit - unrolled| "
              f"{t['agreement']:.1e} (gradient entries up to {t['scale']:.2g})", flush=True)
        for implicit in (True, False):
            if mem:
                peaks = ", ".join(f"{i} it: {mem[(implicit, s)] / 1024:.1f} MB"
                                  if mem[(implicit, s)] is not None else f"{i} it: n/a"
                                  for s, i in zip(scales, its))
                print(f"    peak memory {'implicit' if implicit else 'unrolled'}: {peaks}")
    if args.markdown:
        print()
        print("| n | iterations | forward | implicit grad | extra / forward | unrolled grad "
              "| max abs difference | peak MB implicit (" + "/".join(
                  str(i) for i in rows[0][3]) + " it) | peak MB unrolled |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for n, t, mem, its, scales in rows:
            extra = (t["implicit"] - t["forward"]) / t["forward"]

            def peaks(flag):
                return " / ".join("n/a" if mem.get((flag, s)) is None
                                  else f"{mem[(flag, s)] / 1024:.1f}" for s in scales)
            print(f"| {n} | {t['iterations']} | {t['forward']*1e3:.1f} ms | "
                  f"{t['implicit']*1e3:.1f} ms | {extra:.1%} | {t['unrolled']*1e3:.1f} ms | "
                  f"{t['agreement']:.1e} | {peaks(True) if mem else ''} | "
                  f"{peaks(False) if mem else ''} |")
    json.dumps([r[0] for r in rows])


if __name__ == "__main__":
    main()
