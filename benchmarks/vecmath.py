#!/usr/bin/env python
"""The CPU target's vectorised ``exp``, ``log``, ``log1p`` and ``tanh``
(``gradc.codegen.vecmath``) against the libm calls Numba makes for ``np.exp`` ... of a
scalar, and against NumPy's own ufuncs: nanoseconds an element of a loop over 10⁶
float64s (minimum of ``--repeats`` runs, one thread), and the largest difference from
NumPy's values in ulps (for each, the libm loop's too).

    PYTHONPATH=. python benchmarks/vecmath.py
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from gradc.codegen import vecmath

RANGES = {"exp": (-30.0, 30.0), "log": (1e-3, 1e3), "log1p": (-0.5, 2.0), "tanh": (-4.0, 4.0)}


def _loop(fn):
    @numba.njit(error_model="numpy")
    def loop(a, out):
        for i in range(a.size):
            out[i] = fn(a[i])
    return loop


def _ulps(got, want) -> float:
    return float(np.max(np.abs(got - want) / np.spacing(np.abs(want))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| function | range | vecmath loop | libm loop | NumPy ufunc | vecmath ulps | "
          "libm ulps |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (lo, hi) in RANGES.items():
        x = rng.uniform(lo, hi, a.n)
        ufunc = getattr(np, name)
        mine, libm = _loop(getattr(vecmath, name)), _loop(ufunc)
        times = {}
        for label, run in (("vecmath", lambda o: mine(x, o)), ("libm", lambda o: libm(x, o)),
                           ("numpy", lambda o: ufunc(x, out=o))):
            out = np.empty_like(x)
            run(out)
            best = min(_timed(run, out) for _ in range(a.repeats))
            times[label] = best / a.n * 1e9
        got, base, want = np.empty_like(x), np.empty_like(x), ufunc(x)
        mine(x, got)
        libm(x, base)
        print(f"| {name} | [{lo:g}, {hi:g}] | {times['vecmath']:.2f} ns | {times['libm']:.2f} ns "
              f"| {times['numpy']:.2f} ns | {_ulps(got, want):.0f} | {_ulps(base, want):.0f} |")


def _timed(run, out) -> float:
    t = time.perf_counter()
    run(out)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
