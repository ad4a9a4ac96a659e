#!/usr/bin/env python
"""Loop-invariant code motion (``passes.licm``), A/B on the CPU: the gradient of an RNN
whose step squashes its weight matrix (``np.tanh(W.T) * 0.5``), with the pass
(default) and without it (``GRADC_LICM=0``), each in a process of its own, alternating.
``--switch GRADC_SCAN_SUMS`` compares the accumulated weight gradient summed after the
loop (``licm.sums_after_scans``, default) with the loop's carry; ``--size 0 K T`` is
an RNN over one sequence (``h = tanh(W @ h + x_t)``, no batch axis, loss
``sum_t |h_t|^2``); ``--size -1 K 0`` a fixed point ``z = tanh(W z + b)`` iterated by
a ``while_loop`` until two iterates agree to 1e-5 (``benchmarks/one_sequence.py``'s
DEQ; reverse mode sums W's outer products after the sweep, ``codegen.control``).

    python benchmarks/licm.py [--size B K T] [--rounds 2] [--target cpu] [--switch NAME]
    python benchmarks/licm.py --size 0 256 1000 --switch GRADC_SCAN_SUMS --dtype float32 --hand
    python benchmarks/licm.py --size -1 256 0 --switch GRADC_SCAN_SUMS
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np


def run(B, K, T, target, calls, dtype):
    import gradc
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((K, K)) / (8 if B > 0 else 2 * np.sqrt(K) if B == 0 else
                                         1.25 * np.sqrt(K))).astype(dtype)
    U = rng.standard_normal((T, B, K) if B > 0 else (T, K) if B == 0 else K).astype(dtype)

    def rnn(W, U):
        def step(h, u):
            V = np.tanh(np.transpose(W)) * 0.5
            return np.tanh(h @ V + u), None
        h, _ = gradc.scan(step, np.zeros((B, K), W.dtype), U)
        return np.sum(h)

    def sequence(W, xs):
        def step(h, x):
            h = np.tanh(W @ h + x)
            return h, np.sum(h * h)
        return np.sum(gradc.scan(step, np.zeros(K, W.dtype), xs)[1])

    def fixed_point(W, b):
        def body(c):
            return np.tanh(W @ c[0] + b), c[0]
        z, _ = gradc.while_loop(lambda c: np.max(np.abs(c[0] - c[1])) > 1e-5, body,
                                (np.zeros_like(b), np.ones_like(b)))
        return np.sum(z ** 2)
    rnn = rnn if B > 0 else sequence if B == 0 else fixed_point
    if os.environ.get("HAND") == "1" and B == 0:      # (--hand: NumPy by hand instead)
        def hand(W, xs):
            hs = [np.zeros(K, W.dtype)]
            for x in xs:
                hs.append(np.tanh(W @ hs[-1] + x))
            dW, dxs, d = np.zeros_like(W), np.zeros_like(xs), np.zeros(K, W.dtype)
            for t in range(len(xs) - 1, -1, -1):
                dz = (d + 2 * hs[t + 1]) * (1 - hs[t + 1] ** 2)
                dxs[t] = dz
                dW += np.outer(dz, hs[t])
                d = W.T @ dz
            return dW, dxs
        return _timed(hand, (W, U), calls)
    g = gradc.grad(rnn, argnums=(0, 1), target=target)
    return _timed(g, (W, U), calls)


def _timed(g, args, calls):
    first = g(*args)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        g(*args)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.sum(first[0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=(64, 64, 200), metavar=("B", "K", "T"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--switch", default="GRADC_LICM",
                    help="the variable set to 1 and 0 in turn (GRADC_LICM, GRADC_SCAN_SUMS)")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--hand", action="store_true",
                    help="one sequence (--size 0 K T): also time NumPy by hand")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        t, check = run(*args.size, args.target, args.calls, np.dtype(args.dtype))
        print(f"{t} {check!r}")
        return
    print(f"| round | {args.switch} | median of {args.calls} calls | sum of dW |")
    print("| --- | --- | --- | --- |")
    for r in range(args.rounds):
        for on in ("1", "0"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--size", *map(str, args.size),
                 "--calls", str(args.calls), "--target", args.target, "--dtype",
                 args.dtype], env={**os.environ, args.switch: on}, capture_output=True, text=True,
                check=True).stdout.split()
            print(f"| {r + 1} | {'on' if on == '1' else 'off'} | "
                  f"{float(out[0]) * 1e3:.2f} ms | {out[1]} |")
        if args.hand and args.size[0] == 0:
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--size", *map(str, args.size),
                 "--calls", str(args.calls), "--dtype", args.dtype],
                env={**os.environ, "HAND": "1"}, capture_output=True, text=True,
                check=True).stdout.split()
            print(f"| {r + 1} | NumPy by hand | {float(out[0]) * 1e3:.2f} ms | {out[1]} |")


if __name__ == "__main__":
    main()
