#!/usr/bin/env python
"""The tape cut (``gradc/passes/remat.py``) on the CPU: the gradient of a bilinear RNN
step, ``tanh(0.1 * sum(h[:, :, None] * W, axis=1) + x)``, whose product's tangent made
reverse mode stack a (B, K, K) broadcast of ``h`` at every step.  Each setting runs in a
process of its own (``GRADC_REMAT=1``: the cut, the default; ``0``: the whole tape) and
reports the median time per call and the process's peak resident memory.

    python benchmarks/scan_tape.py [--B 64] [--K 64] [--T 100] [--target cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import numpy as np
import gradc
B, K, T, target = {B}, {K}, {T}, {target!r}

def f(h0, W, xs):
    def step(h, x):
        return np.tanh(np.sum(h[:, :, None] * W[None], axis=1) * 0.1 + x), None
    h, _ = gradc.scan(step, h0, xs)
    return np.sum(h)

rng = np.random.default_rng(0)
args = (rng.standard_normal((B, K)), rng.standard_normal((K, K)),
        rng.standard_normal((T, B, K)))
g = gradc.grad(f, argnums=(0, 1), target=target)
first = g(*args)
times = []
for _ in range(15):
    t0 = time.perf_counter()
    g(*args)
    times.append(time.perf_counter() - t0)
graph = g.specialise(*args).executable.graph
fwd = [e for e in graph.eqns if e.prim.name == "scan"][0]
tape = sum(int(np.prod(y.shape)) * y.dtype.itemsize for y in fwd.outputs[1:])
print(json.dumps({{"median_ms": 1e3 * float(np.median(times)), "tape_MB": tape / 1e6,
                  "maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "check": float(np.abs(first[1]).sum())}}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--target", default="cpu")
    a = ap.parse_args()
    code = CHILD.format(B=a.B, K=a.K, T=a.T, target=a.target)
    print(f"bilinear RNN gradient, B={a.B} K={a.K} T={a.T}, target={a.target!r}")
    print("| tape | median | forward scan's stacked results | peak RSS | check |")
    print("| --- | --- | --- | --- | --- |")
    for remat, label in (("0", "whole (GRADC_REMAT=0)"), ("1", "cut (default)")):
        env = dict(os.environ, GRADC_REMAT=remat)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {label} | {r['median_ms']:.2f} ms | {r['tape_MB']:.1f} MB | "
              f"{r['maxrss_MB']:.0f} MB | {r['check']:.10g} |")


if __name__ == "__main__":
    main()
