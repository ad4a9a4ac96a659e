#!/usr/bin/env python
"""A scan that is a map over its steps, on the GPU (``passes.licm.maps_of_scans``): the
gradient of an accumulating carry, ``d + sum(tanh(x_t @ W) ** 2, axis=1) / 2`` over
T = 1000 steps of a batch of B = 32 rows, K = 64, float32.  Both its loops (the
forward accumulation, and reverse mode's loop handing ``d``'s cotangent to every step
while W's accumulates) are maps: contractions over all T * B rows and fused regions,
no loop.  Timed as maps (the default), as loops (``GRADC_SCAN_MAPS=0``: the one-kernel
scans), and beside JAX's ``jit(grad)`` of ``lax.scan`` in the same run.  Inputs live on
the device; each time is the median of ``--repeats`` calls with a device
synchronisation; the gradient is checked against gradc's CPU target first.

    python benchmarks/scan_maps.py [--repeats 20] [--no-peers]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/scan_maps.py --quick   # smoke test
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu          # noqa: E402  (gradc, numba.cuda after its shim, timing helpers)

gradc = gpu.gradc
SIZE, QUICK = (1000, 32, 64), (5, 3, 4)
VARIANTS = (("maps", {}), ("loops", {"GRADC_SCAN_MAPS": "0"}))


def accumulated(xp, scan):
    def f(W, xs):
        def step(d, x):
            return d + xp.sum(xp.tanh(x @ W) ** 2, axis=1) * 0.5, None
        d, _ = scan(step, xp.ones(xs.shape[1], xs.dtype), xs)
        return xp.sum(d ** 2)
    return f


def main():
    args, found = gpu.small_args(__doc__, 20)
    T, B, K = QUICK if args.quick else SIZE
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((K, K)) / K).astype(np.float32)
    xs = rng.standard_normal((T, B, K)).astype(np.float32)
    f = accumulated(np, gradc.scan)
    ref = gpu.listed(gradc.grad(f, argnums=(0, 1), target="cpu")(W, xs))
    dev = [gpu.cuda.to_device(v) for v in (W, xs)]
    gpu.print_table_head()
    label = f"accumulator's gradient T={T} B={B} K={K}"
    bad = False
    for variant, env in VARIANTS:
        bad |= not gpu.gradc_row(label, variant, env, lambda: gradc.grad(
            f, argnums=(0, 1), target="cuda"), dev, (W, xs), ref, args.repeats)
    if "jax" in found:
        jax = found["jax"]
        jf = accumulated(jax.numpy, lambda s, c, x: jax.lax.scan(s, c, x))
        gpu.jax_row(label, "jit(grad) lax.scan", jax, jax.jit(jax.grad(jf, argnums=(0, 1))),
                    (W, xs), ref, args.repeats)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
