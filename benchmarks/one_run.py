#!/usr/bin/env python
"""Where a run of small equations stops paying as one block (``cudarows.one_run``):
the gradient of ``logsumexp(x * s) + 0.5 * mean(x ** 2)`` over one vector of n
float32 elements (a maximum, a sum of exponentials, a mean, the scaled exponentials
and the rank-0 arithmetic between them: four kernels one by one) as one kernel of one
block (``GRADC_CUDA_ONE_RUN_WORK`` above n) and as a kernel each (``=0``), at sizes
around the default limit (2^14 elements), beside JAX's ``jit(grad)`` in the same run.
The crossover sets the default.

    python benchmarks/one_run.py [--repeats 50] [--no-peers]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/one_run.py --quick   # smoke test
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu          # noqa: E402  (gradc, numba.cuda after its shim, timing helpers)

gradc = gpu.gradc
SIZES = (256, 1024, 4096, 16384, 65536, 262144)
QUICK = (8, 40)


def loss(xp, logsumexp):
    def f(x, s):
        return logsumexp(x * s) + 0.5 * xp.mean(x * x)
    return f


def main():
    args, found = gpu.small_args(__doc__, 50)
    print(f"GPU: {gpu.gpu_name()}")
    print()
    print("| n | one block | a kernel each | JAX jit(grad) | kernels (one block / each) |")
    print("| --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    f = loss(np, gradc.logsumexp)
    bad = False
    for n in QUICK if args.quick else SIZES:
        x = rng.standard_normal(n).astype(np.float32)
        ref = gradc.grad(f, target="cpu")(x, np.float32(1.5))
        dev = gpu.cuda.to_device(x)
        times, kernels = [], []
        for work in (str(2 * n), "0"):
            os.environ["GRADC_CUDA_ONE_RUN_WORK"] = work
            try:
                g = gradc.grad(f, target="cuda")
                got = gpu.to_host(g(dev, np.float32(1.5)))
                bad |= not np.allclose(got, ref, rtol=1e-4, atol=1e-6)
                kernels.append(len(g.compile(x, np.float32(1.5)).kernels))
                times.append(gpu.timed(lambda: g(dev, np.float32(1.5)), gpu.cuda.synchronize,
                                       args.repeats))
            finally:
                os.environ.pop("GRADC_CUDA_ONE_RUN_WORK")
        peer = "—"
        if "jax" in found:
            jax = found["jax"]
            jg = jax.jit(jax.grad(loss(jax.numpy, jax.nn.logsumexp)))
            jx = jax.device_put(x)
            t = gpu.timed(lambda: jax.block_until_ready(jg(jx, np.float32(1.5))),
                          lambda: None, args.repeats)
            peer = f"{t * 1e6:.1f} µs"
        print(f"| {n} | {times[0] * 1e6:.1f} µs | {times[1] * 1e6:.1f} µs | {peer} | "
              f"{kernels[0]} / {kernels[1]} |", flush=True)
    if bad:
        print("a gradient disagreed with the CPU target's")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
