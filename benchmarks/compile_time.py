"""Compile time of an unrolled Python loop's gradient on the CPU target.

    python benchmarks/compile_time.py --loop tanh --steps 100 300
    python benchmarks/compile_time.py --loop roll --steps 25
    python benchmarks/compile_time.py --loop W4      # a workload's gradient, cold
    python benchmarks/compile_time.py --loop gp      # also linalg, rk4 and average
    python benchmarks/compile_time.py --loop ode     # a neural ODE's adjoint gradient

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


def program(kind: str, steps: int):
    """Programs of linear algebra and stencils (thirty-fourth session): a Gaussian
    process's likelihood (Cholesky, solves), a matrix's determinants and decompositions,
    an unrolled RK4 of a stencil (``steps`` steps), a roll average (``steps`` steps)."""
    rng = np.random.default_rng(0)
    if kind == "gp":
        y = rng.standard_normal(8)

        def gp(p, X):
            d2 = np.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
            K = np.exp(-d2 / (2 * np.exp(p[0]) ** 2)) + np.exp(p[1]) * np.eye(len(y))
            L = np.linalg.cholesky(K)
            return 0.5 * y @ np.linalg.solve(K, y) + np.sum(np.log(np.diag(L)))
        return gp, (np.array([0.5, 0.3]), rng.standard_normal((8, 2)))
    if kind == "linalg":
        def decompositions(A, B):
            S = A @ A.T + 4 * np.eye(4)
            Q, R = np.linalg.qr(B)
            return (np.linalg.slogdet(S)[1] + np.trace(np.linalg.inv(S)) +
                    np.sum(np.linalg.eigh(S)[0] ** 2) + np.sum(np.abs(np.diag(R))) +
                    np.sum(np.linalg.svd(B, compute_uv=False)))
        return decompositions, (rng.standard_normal((4, 4)), rng.standard_normal((6, 3)))
    if kind == "rk4":
        def rk4(y0, w):
            def f(y):
                return np.tanh(np.roll(y, 1) * w) - 0.5 * y
            y, h = y0, 0.1
            for _ in range(steps):
                k1 = f(y)
                k2 = f(y + h / 2 * k1)
                k3 = f(y + h / 2 * k2)
                k4 = f(y + h * k3)
                y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            return np.sum(y ** 2)
        return rk4, (rng.standard_normal(4), np.array(0.9))

    def average(x, c):          # (tests/test_fuse.py: _roll_average)
        v = x
        for _ in range(steps):
            v = c * v + 0.05 * (np.roll(v, 1) + np.roll(v, -1))
        return np.sum(np.pad(v, 2, mode="reflect") ** 2)
    return average, (np.linspace(0.1, 1.0, 6), np.array(0.9))


def neural_ode():
    """benchmarks/ode.py's neural ODE (state 16, hidden 64, 5 times), its gradient with
    respect to the initial state and the first layer: nested structured loops (a scan
    over the times, the adaptive steps' while loop, the stages' fori_loop) forward and
    in the adjoint."""
    import gradc
    rng = np.random.default_rng(0)
    n, H = 16, 64
    b, W2 = 0.1 * rng.standard_normal(H), rng.standard_normal((H, n)) / np.sqrt(H)
    ts = np.linspace(0.0, 1.0, 5)

    def dynamics(y, t, W1):
        return np.tanh(y @ W1 + b) @ W2

    def loss(y0, W1):
        return np.sum(gradc.odeint(dynamics, y0, ts, W1, rtol=1e-7, atol=1e-7) ** 2)
    return loss, (rng.standard_normal(n), rng.standard_normal((n, H)) / np.sqrt(n))


def loop(kind: str, steps: int):
    if kind in ("W3", "W4", "W5"):
        return workload(kind)
    if kind == "ode":
        return neural_ode()
    if kind in ("gp", "linalg", "rk4", "average"):
        return program(kind, steps)
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
    ap.add_argument("--loop", choices=("tanh", "roll", "average", "rk4", "gp", "linalg",
                                       "W3", "W4", "W5", "ode"), default="tanh",
                    help="an unrolled loop, or a program (gp, linalg, W3-W5, ode: --steps "
                         "is ignored)")
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
