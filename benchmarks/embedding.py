#!/usr/bin/env python
"""The gradient of an embedding RNN on the GPU: each step reads a row of a table
``E`` by its token (a gather), so reverse mode adds, at each step, a ``scatter_add`` of
the step's cotangent into ``E``'s gradient (``cudarows._Rows._scatter_stage``).

* ONE: one sequence, ``h = tanh(E[t] + W @ h)``, loss ``sum_t |h_t|^2``, V = 10000,
  D = 128, T = 256, float32 (the table is 1.28 M elements: larger than a one-block step
  may be, so the one-hot stage could not run it as one block);
* BATCH: B = 64 such sequences sharing ``E`` and ``W`` (``vmap`` inside the loss),
  every row's scatter added into one table (atomic adds of all blocks);
* PER: per-example gradients of ``E`` for B = 8 sequences (``vmap(grad)``), each row
  adding into its own table, V = 2000.

Each gradc time is taken with scatters added in place (the default) and without
(``GRADC_CUDA_ROW_SCATTER=0``: the one-hot stage, which computes the whole table's
row at every step, where it applies, else the host loop), beside JAX's
``jit(grad)`` of ``lax.scan`` in the same run.  Inputs live on the device; each time is
the median of ``--repeats`` calls with a device synchronisation; every gradient is
checked against gradc's CPU target first.

    python benchmarks/embedding.py [--repeats 20] [--no-peers]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/embedding.py --quick   # smoke test
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu          # noqa: E402  (gradc, numba.cuda after its shim, timing helpers)

gradc = gpu.gradc
SIZES = {"ONE": (10000, 128, 256, 1), "BATCH": (10000, 128, 256, 64),
         "PER": (2000, 64, 128, 8)}
QUICK = {"ONE": (40, 6, 5, 1), "BATCH": (40, 6, 5, 3), "PER": (30, 4, 4, 2)}
VARIANTS = (("added in place", {}), ("one-hot or host loop", {"GRADC_CUDA_ROW_SCATTER": "0"}))


def rnn(xp, scan):
    """The loss of one sequence of tokens."""
    def f(E, W, toks):
        def step(h, t):
            h = xp.tanh(E[t] + W @ h)
            return h, xp.sum(h * h)
        _, ys = scan(step, xp.zeros(W.shape[0], W.dtype), toks)
        return xp.sum(ys)
    return f


def workload(name, size, rng):
    """(inputs, gradc's function for a target, JAX's jitted function or None)."""
    V, D, T, B = size
    E = (0.5 * rng.standard_normal((V, D))).astype(np.float32)
    W = (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
    toks = rng.integers(0, V, T if name == "ONE" else (B, T))
    one = rnn(np, gradc.scan)

    def jax_of(jax):
        f = rnn(jax.numpy, lambda s, c, x: jax.lax.scan(s, c, x))
        if name == "ONE":
            return jax.jit(jax.grad(f, argnums=(0, 1)))
        if name == "BATCH":
            return jax.jit(jax.grad(lambda E, W, t: jax.numpy.sum(
                jax.vmap(f, in_axes=(None, None, 0))(E, W, t)), argnums=(0, 1)))
        return jax.jit(jax.vmap(jax.grad(f), in_axes=(None, None, 0)))
    if name == "ONE":
        def make(target):
            return gradc.grad(one, argnums=(0, 1), target=target)
    elif name == "BATCH":
        def batch(E, W, t):
            return np.sum(gradc.vmap(one, in_axes=(None, None, 0))(E, W, t))

        def make(target):
            return gradc.grad(batch, argnums=(0, 1), target=target)
    else:
        def make(target):
            return gradc.jit(gradc.vmap(gradc.grad(one), in_axes=(None, None, 0)),
                             target=target)
    return [E, W, toks], make, jax_of


def main():
    args, found = gpu.small_args(__doc__, 20)
    rng = np.random.default_rng(0)
    gpu.print_table_head()
    bad = False
    for name, size in (QUICK if args.quick else SIZES).items():
        host, make, jax_of = workload(name, size, rng)
        label = f"{name} V={size[0]} D={size[1]} T={size[2]}" + (
            f" B={size[3]}" if name != "ONE" else "")
        ref = gpu.listed(make("cpu")(*host))
        dev = [gpu.cuda.to_device(v) for v in host]
        for variant, env in VARIANTS:
            bad |= not gpu.gradc_row(label, variant, env, lambda: make("cuda"), dev, host,
                                     ref, args.repeats)
        if "jax" in found:
            gpu.jax_row(label, "jit(grad) lax.scan", found["jax"], jax_of(found["jax"]),
                        host, ref, args.repeats)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
