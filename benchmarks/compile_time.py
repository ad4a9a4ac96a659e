"""Compile time of an unrolled Python loop's gradient on the CPU target.

    python benchmarks/compile_time.py --loop tanh --steps 100 300
    python benchmarks/compile_time.py --loop roll --steps 25

Each run times ``.source()`` (tracing, passes, code generation) and the first call (all
Numba; wall-clock, and the process's CPU time, which a busy machine inflates less) of
``gradc.jit(gradc.grad(f, argnums=(0, 1)), target="cpu")`` in a fresh process with a
fresh ``GRADC_CACHE_DIR`` (gradc's on-disk cache would otherwise serve it), and checks
the gradient against the interpreter's.  See docs/benchmarks.md (thirtieth and
thirty-first sessions).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def loop(kind: str, steps: int):
    if kind == "tanh":               # (tests/test_fuse.py: _tanh_chain)
        def f(x, w):
            h = x
            for i in range(steps):
                h = np.tanh(h * w[i % 4] + 0.1)
            return np.sum(h ** 2)
        return f, (np.linspace(-1.0, 1.0, 8), np.array([0.9, 1.1, 0.7, 1.3]))

    def g(x, w):                     # (tests/test_fuse.py: _roll_chain)
        for i in range(steps):
            x = np.tanh(np.roll(x, 1) * w[i % 3] + 0.5 * x)
        return np.sum(x ** 2)
    return g, (np.linspace(-1.0, 1.0, 16), np.array([0.9, 1.1, 0.7]))


def one(kind: str, steps: int) -> str:
    import gradc
    f, args = loop(kind, steps)
    g = gradc.jit(gradc.grad(f, argnums=(0, 1)), target="cpu")
    t = time.perf_counter()
    source = g.source(*args)
    t_source = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    got = g(*args)
    t_first, c_first = time.perf_counter() - t, time.process_time() - c
    want = gradc.grad(f, argnums=(0, 1), target="numpy")(*args)
    err = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
    return (f"| {kind} | {steps} | {t_source:.2f} s | {t_first:.2f} s | {c_first:.2f} s | "
            f"{source.count('@_k.jit')} | {err:.1e} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", choices=("tanh", "roll"), default="tanh")
    ap.add_argument("--steps", type=int, nargs="+", default=[100])
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(one(a.loop, a.steps[0]))
        return
    print("| loop | steps | source | first call | its CPU time | helper functions | error |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in a.steps:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, GRADC_CACHE_DIR=cache)
            out = subprocess.run([sys.executable, __file__, "--one", "--loop", a.loop,
                                  "--steps", str(n)], env=env, capture_output=True,
                                 text=True, check=True)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
