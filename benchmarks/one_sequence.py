#!/usr/bin/env python
"""Loops over one sequence on the GPU (``cudarows.one_row``, ``one_row_while``): an
RNN's gradient and a CRF's log-partition gradient, each over a single sequence (no
batch axis), and a fixed point's iterations, as one kernel of one block (the
default), with 1024 threads in that block, and as the host loop
(``GRADC_CUDA_ONE_ROW_WORK=0``: a kernel per fused region per step, the condition
copied to the host at each trip), beside JAX's ``jit(grad)`` of ``lax.scan`` (``jit``
of ``lax.while_loop``) in the same run.

* RNN: ``h = tanh(W @ h + x_t)``, loss ``sum_t |h_t|^2``, K = 256, T = 1000, float32;
* CRF: G4's step (``logsumexp(alpha[:, None] + A, axis=0) + u_t``) for B = 1,
  K = 64, T = 128, float32;
* DEQ: a deep equilibrium layer's forward solve, ``z = tanh(W z + b)`` until two
  iterates agree to 1e-5 (about 60 trips), K = 256, float32;
* DEQ-grad: the gradient of ``sum(z ** 2)`` through those trips (reverse mode through
  the while_loop: ``cudarows.one_row_while_adjoint``'s tape and backward sweep, two
  kernels; ``GRADC_CUDA_WHILE_TAPE=0``: the host loop over the trips, the forward loop
  still one kernel), beside JAX's ``jit(grad)`` of a ``lax.scan`` of as many trips
  (``lax.while_loop`` has no reverse mode);
* VIT: Viterbi decoding of one sentence, K = 64, T = 128, float32: the max-product
  scan with its backpointers (``argmax``), then the backtracking scan, which gathers
  the next state by its carry (``y = bp[t][y]``).

A fourth gradc variant keeps the runs of small equations outside the loops apart
(``GRADC_CUDA_ONE_RUN_WORK=0``: a kernel each, as before ``cudarows.one_run``). The
RNN has a fifth: W's cotangent made after the backward scan as one product of the
stacked cotangents with the stacked states (``GRADC_CUDA_SCAN_SUMS=1``,
``licm.sums_after_scans``, the CPU's default), not accumulated in the block.

Inputs live on the device; each time is the median of ``--repeats`` calls with a
device synchronisation; every gradient is checked against gradc's CPU target first.

    python benchmarks/one_sequence.py [--repeats 20] [--no-peers]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/one_sequence.py --quick   # smoke test
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu          # noqa: E402  (gradc, numba.cuda after its shim, timing helpers)

gradc = gpu.gradc
SIZES = {"RNN": (256, 1000), "CRF": (64, 128), "DEQ": (256, 0), "DEQ-grad": (256, 0),
         "VIT": (64, 128)}
QUICK = {"RNN": (6, 5), "CRF": (4, 4), "DEQ": (6, 0), "DEQ-grad": (6, 0), "VIT": (4, 5)}
VARIANTS = (("one block", {}),
            ("one block, 1024 threads", {"GRADC_CUDA_ROW_THREADS": "1024"}),
            ("one block, runs apart", {"GRADC_CUDA_ONE_RUN_WORK": "0"}),
            ("host loop", {"GRADC_CUDA_ONE_ROW_WORK": "0"}))
# (DEQ-grad: the backward trips as the host loop, the rest as above)
TAPE_ON_HOST = ("tape: host loop", {"GRADC_CUDA_WHILE_TAPE": "0"})
# (RNN: W's cotangent as one product after the backward scan, licm.sums_after_scans)
SUMS_AFTER = ("one block, dW after the loop", {"GRADC_CUDA_SCAN_SUMS": "1"})


def rnn(xp, scan):
    def f(W, xs):
        def step(h, x):
            h = xp.tanh(W @ h + x)
            return h, xp.sum(h * h)
        h, ys = scan(step, xp.zeros(W.shape[0], W.dtype), xs)
        return xp.sum(ys)
    return f


def crf(xp, scan, logsumexp):
    def f(U, A):
        def step(alpha, u):
            return logsumexp(alpha[:, None] + A, axis=0) + u, None
        alpha, _ = scan(step, U[0], U[1:])
        return logsumexp(alpha)
    return f


def deq(xp, while_loop):
    def f(W, b):
        def cond(c):
            z, zp = c
            return xp.max(xp.abs(z - zp)) > 1e-5

        def body(c):
            z, zp = c
            return xp.tanh(W @ z + b), z
        z, _ = while_loop(cond, body, (xp.zeros_like(b), xp.ones_like(b)))
        return z
    return f


def deq_loss(xp, while_loop):
    solve = deq(xp, while_loop)
    return lambda W, b: xp.sum(solve(W, b) ** 2)


def trips(W, b) -> int:
    """How many trips ``deq``'s loop makes (NumPy, as gradc's CPU target runs it)."""
    z, zp, n = np.zeros_like(b), np.ones_like(b), 0
    while np.max(np.abs(z - zp)) > 1e-5:
        z, zp, n = np.tanh(W @ z + b), z, n + 1
    return n


def unrolled_loss(xp, scan, n):
    """``deq_loss`` as a scan of ``n`` trips (what JAX can differentiate)."""
    def f(W, b):
        z, _ = scan(lambda c, _: ((xp.tanh(W @ c[0] + b), c[0]), None),
                    (xp.zeros_like(b), xp.ones_like(b)), None, n)
        return xp.sum(z[0] ** 2)
    return f


def viterbi(xp, scan):
    def f(A, U):
        def step(delta, u):
            s = delta[:, None] + A
            return xp.max(s, axis=0) + u, xp.argmax(s, axis=0)

        def back(y, b):
            y = b[y]
            return y, y
        delta, bp = scan(step, U[0], U[1:])
        _, path = scan(back, xp.argmax(delta), bp, reverse=True)
        return path, xp.max(delta)
    return f


def workload(name, size, rng):
    """(inputs, gradc's function, the peer's maker, whether it is differentiated)."""
    K, T = size
    if name in ("DEQ", "DEQ-grad"):
        args = [(0.8 * rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32),
                rng.standard_normal(K).astype(np.float32)]
        if name == "DEQ-grad":
            n = trips(*args)
            return args, deq_loss(np, gradc.while_loop), lambda jax: unrolled_loss(
                jax.numpy, lambda s, c, x, n: jax.lax.scan(s, c, x, length=n), n), True
        return args, deq(np, gradc.while_loop), lambda jax: deq(
            jax.numpy, lambda c, b, x: jax.lax.while_loop(c, b, x)), False
    if name == "VIT":
        args = [(0.5 * rng.standard_normal((K, K))).astype(np.float32),
                rng.standard_normal((T, K)).astype(np.float32)]
        return args, viterbi(np, gradc.scan), lambda jax: viterbi(
            jax.numpy, lambda s, c, x, reverse=False: jax.lax.scan(s, c, x, reverse=reverse)), \
            False
    if name == "RNN":
        args = [(rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32),
                rng.standard_normal((T, K)).astype(np.float32)]
        return args, rnn(np, gradc.scan), lambda jax: rnn(
            jax.numpy, lambda s, c, x: jax.lax.scan(s, c, x)), True
    args = [rng.standard_normal((T, K)).astype(np.float32),
            (0.5 * rng.standard_normal((K, K))).astype(np.float32)]
    return args, crf(np, gradc.scan, gradc.logsumexp), lambda jax: crf(
        jax.numpy, lambda s, c, x: jax.lax.scan(s, c, x), jax.nn.logsumexp), True


def main():
    args, found = gpu.small_args(__doc__, 20)
    rng = np.random.default_rng(0)
    gpu.print_table_head()
    bad = False
    for name, size in (QUICK if args.quick else SIZES).items():
        host, f, peer, differentiated = workload(name, size, rng)
        label = f"{name} K={size[0]}" + (f" T={size[1]}" if size[1] else "")

        def make(target, f=f, differentiated=differentiated):
            return gradc.grad(f, argnums=(0, 1), target=target) if differentiated \
                else gradc.jit(f, target=target)
        ref = gpu.listed(make("cpu")(*host))
        dev = [gpu.cuda.to_device(v) for v in host]
        extra = (TAPE_ON_HOST,) if name == "DEQ-grad" else (SUMS_AFTER,) if name == "RNN" \
            else ()
        for variant, env in VARIANTS + extra:
            bad |= not gpu.gradc_row(label, variant, env, lambda: make("cuda"), dev, host,
                                     ref, args.repeats)
        if "jax" in found:
            jax = found["jax"]
            jg = jax.jit(jax.grad(peer(jax), argnums=(0, 1)) if differentiated else peer(jax))
            what = "jit(grad) lax.scan, as many trips" if name == "DEQ-grad" else \
                "jit(grad) lax.scan" if differentiated else \
                "jit lax.scan" if name == "VIT" else "jit lax.while_loop"
            gpu.jax_row(label, what, jax, jg, host, ref, args.repeats)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
