#!/usr/bin/env python
"""conv2d with stride, dilation or groups on the compiled CPU target: the forward
convolution, the gradient with respect to the image and with respect to the kernel.

    PYTHONPATH=. python benchmarks/conv_options.py                  # this checkout
    PYTHONPATH=. python benchmarks/conv_options.py --against /work/main --rounds 5

Each case is N=8 images of 16 channels, 32x32, a 3x3 kernel to 32 channels, padding 1,
with one option set.  The timed functions are ``jit(conv)``, ``grad(loss, argnums=0)``
and ``grad(loss, argnums=1)`` of ``loss = sum(conv(I, K) * W)`` (so that a gradient is
one convolution's transpose and an elementwise product).  A worker process times
every function in repeats of batches of calls (round-robin over the functions) and
prints min and median per call.  With ``--against DIR`` the driver runs workers
alternately on this checkout and on DIR's (``PYTHONPATH``), ``--rounds`` times each,
and reports for each function the median over rounds of the workers' medians (and the
smallest minimum).  ``--threads 1`` runs the workers on one thread (steadier on a
loaded machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "stride2": dict(stride=(2, 2)),
    "dilation2": dict(dilation=(2, 2)),
    "groups4": dict(groups=4),
}


def _worker(cases, dtype, repeats):
    import numpy as np

    import gradc
    rng = np.random.default_rng(0)
    image = rng.standard_normal((8, 16, 32, 32)).astype(dtype)
    fns = {}
    for name in cases:
        opts = CASES[name]
        kernel = rng.standard_normal((32, 16 // opts.get("groups", 1), 3, 3)).astype(dtype)

        def conv(i, k, opts=opts):
            return gradc.conv2d(i, k, 1, **opts)
        weights = rng.standard_normal(np.shape(conv(image, kernel))).astype(dtype)

        def loss(i, k, conv=conv, weights=weights):
            return np.sum(conv(i, k) * weights)
        fns[f"{name} forward"] = (gradc.jit(conv, target="cpu"), (image, kernel))
        fns[f"{name} d/dimage"] = (gradc.grad(loss, argnums=0, target="cpu"), (image, kernel))
        fns[f"{name} d/dkernel"] = (gradc.grad(loss, argnums=1, target="cpu"), (image, kernel))
    number = {}
    for key, (fn, args) in fns.items():
        fn(*args)
        start = time.perf_counter()
        fn(*args)
        number[key] = max(1, int(0.004 / max(time.perf_counter() - start, 1e-7)))
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, (fn, args) in fns.items():
            for _ in range(number[key]):       # untimed: settle clocks, caches, threads
                fn(*args)
            start = time.perf_counter()
            for _ in range(number[key]):
                fn(*args)
            times[key].append((time.perf_counter() - start) / number[key])
    return {key: (min(t), statistics.median(t)) for key, t in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--against", help="another gradc checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int,
                        help="NUMBA_NUM_THREADS and the BLAS threads of the workers")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.worker:
        print(json.dumps(_worker(cases, args.dtype, args.repeats)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here} | ({"against": os.path.abspath(args.against)}
                              if args.against else {})
    results = {tree: [] for tree in trees}
    for r in range(args.rounds):
        for tree, path in trees.items():          # alternately, so drifting load hits both
            env = dict(os.environ, PYTHONPATH=path)
            if args.threads:
                env.update({k: str(args.threads) for k in (
                    "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS")})
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", "--cases",
                 args.cases, "--dtype", args.dtype, "--repeats", str(args.repeats)],
                env=env, check=True, capture_output=True, text=True).stdout
            results[tree].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {tree} done", file=sys.stderr)
    keys = list(results["this"][0])
    header = f"{'function (' + args.dtype + ')':28s}" + "".join(
        f"{tree + ' min':>14s}{tree + ' median':>16s}" for tree in trees)
    print(header)
    for key in keys:
        row = f"{key:28s}"
        for tree in trees:
            mins = [run[key][0] for run in results[tree]]
            meds = [run[key][1] for run in results[tree]]
            row += f"{min(mins) * 1e3:11.3f} ms{statistics.median(meds) * 1e3:13.3f} ms"
        print(row)


if __name__ == "__main__":
    main()
