"""Compile time of an unrolled Python loop's gradient on the CPU target.

    python benchmarks/compile_time.py --loop tanh --steps 100 300
    python benchmarks/compile_time.py --loop roll --steps 25
    python benchmarks/compile_time.py --loop W4      # a workload's gradient, cold

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


def workload(kind: str):
    """W3, W4, W5 of shared/BENCHMARKS.md at their sizes (as benchmarks/cpu.py)."""
    import gradc
    rng = np.random.default_rng(0)
    if kind == "W3":
        def mlp(W1, W2, X, onehot):
            z = np.tanh(X @ W1) @ W2
            return np.mean(gradc.logsumexp(z, axis=1) - np.sum(z * onehot, axis=1))
        return mlp, (rng.standard_normal((784, 256)) / 28, rng.standard_normal((256, 10)) / 16,
                     rng.standard_normal((512, 784)), np.eye(10)[rng.integers(0, 10, 512)])
    if kind == "W4":
        from cpu import crf_gradc          # (benchmarks/cpu.py: this script's directory)
        return crf_gradc, (rng.standard_normal((32, 64, 32)), 0.5 * rng.standard_normal((32, 32)))

    def conv(img, K):
        return np.sum(np.tanh(gradc.conv2d(img, K, padding="same")))
    return conv, (rng.standard_normal((8, 16, 32, 32)),
                  rng.standard_normal((32, 16, 3, 3)) / 12)


def loop(kind: str, steps: int):
    if kind in ("W3", "W4", "W5"):
        return workload(kind)
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
    ap.add_argument("--loop", choices=("tanh", "roll", "W3", "W4", "W5"), default="tanh",
                    help="an unrolled loop, or a workload (W3-W5: --steps is ignored)")
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
