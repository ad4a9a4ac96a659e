#!/usr/bin/env python
"""Max-aggregation of messages along a graph's edges (a GNN layer's ``scatter max``):
``np.maximum.at`` by an edge list that is an argument (traced indices), its value and
its gradient, on the compiled CPU target, against NumPy (the value only), PyTorch's
``scatter_reduce(..., "amax")`` and JAX's ``h.at[dst].max(m)`` (``jit``; value and
gradient) where installed, in one run (the gradients checked equal).

    PYTHONPATH=. python benchmarks/segment_max.py                   # N=10000, E=100000
    PYTHONPATH=. python benchmarks/segment_max.py --nodes 1000 --edges 20000 --features 8

The layer: ``m = tanh(h[src] @ W)`` (one message per edge), ``z = h.copy()``,
``np.maximum.at(z, dst, m)`` (each node the maximum of itself and its incoming
messages), loss ``sum(z ** 2)``; the gradient is with respect to ``h`` and ``W``.
Times are the minimum over ``--repeats`` calls, after a first call that compiles.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def layer(h, W, src, dst):
    m = np.tanh(h[src] @ W)
    z = h.copy()
    np.maximum.at(z, dst, m)
    return np.sum(z ** 2)


def best(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--edges", type=int, default=100000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    import gradc
    rng = np.random.default_rng(0)
    N, E, F = a.nodes, a.edges, a.features
    h = rng.standard_normal((N, F))
    W = rng.standard_normal((F, F)) / np.sqrt(F)
    src, dst = rng.integers(0, N, E), rng.integers(0, N, E)

    value = gradc.jit(layer, target="cpu")
    grad = gradc.jit(gradc.grad(layer, argnums=(0, 1)), target="cpu")
    rows = []
    t = time.perf_counter()
    got = value(h, W, src, dst)
    first = time.perf_counter() - t
    assert np.isclose(got, layer(h, W, src, dst), rtol=1e-12)
    rows.append(("gradc cpu: value", best(lambda: value(h, W, src, dst), a.repeats), first))
    t = time.perf_counter()
    gh, gW = grad(h, W, src, dst)
    first = time.perf_counter() - t
    rows.append(("gradc cpu: gradient", best(lambda: grad(h, W, src, dst), a.repeats), first))
    rows.append(("NumPy: value", best(lambda: layer(h, W, src, dst), a.repeats), None))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        th, tW = torch.tensor(h, requires_grad=True), torch.tensor(W, requires_grad=True)
        ts, td = torch.tensor(src), torch.tensor(dst)
        index = td[:, None].expand(E, F)

        def torch_loss():
            m = torch.tanh(th[ts] @ tW)
            z = th.scatter_reduce(0, index, m, "amax", include_self=True)
            return torch.sum(z ** 2)

        def torch_grad():
            return torch.autograd.grad(torch_loss(), (th, tW))
        want = torch_grad()
        np.testing.assert_allclose(gh, want[0].numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gW, want[1].numpy(), rtol=1e-9, atol=1e-12)
        with torch.no_grad():
            rows.append(("PyTorch: value", best(torch_loss, a.repeats), None))
        rows.append(("PyTorch: gradient", best(torch_grad, a.repeats), None))
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
    except ImportError:
        jax = None
    if jax is not None:
        def jax_loss(h, W, src, dst):
            m = jnp.tanh(h[src] @ W)
            return jnp.sum(h.at[dst].max(m) ** 2)
        jv = jax.jit(jax_loss)
        jg = jax.jit(jax.grad(jax_loss, argnums=(0, 1)))
        jh, jW, js, jd = (jnp.asarray(x) for x in (h, W, src, dst))
        want = jg(jh, jW, js, jd)
        np.testing.assert_allclose(gh, np.asarray(want[0]), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gW, np.asarray(want[1]), rtol=1e-9, atol=1e-12)
        rows.append(("JAX jit: value", best(
            lambda: jv(jh, jW, js, jd).block_until_ready(), a.repeats), None))
        rows.append(("JAX jit: gradient", best(
            lambda: jax.block_until_ready(jg(jh, jW, js, jd)), a.repeats), None))
    print(f"N={N} nodes, E={E} edges, F={F} features, float64, "
          f"min of {a.repeats} calls")
    print("| function | per call | first call |")
    print("| --- | --- | --- |")
    for name, t, first in rows:
        print(f"| {name} | {t * 1e3:.2f} ms | "
              f"{'' if first is None else f'{first:.2f} s'} |")


if __name__ == "__main__":
    main()
