"""W6 of shared/BENCHMARKS.md: Hessian-vector products of W1 (Rosenbrock, n = 1e6) and W3
(the MLP loss, w.r.t. its first weight matrix), against the gradient's time, gradc and JAX
side by side.  Target: HVP <= 2.5x the gradient's time.

    /work/bench-venv/bin/python benchmarks/hvp.py [--markdown]

Each HVP is checked against a central difference of the gradient along v.  Times are
medians of 30 calls after warm-up calls; gradc runs on target "cpu" (gradc.hvp's default
method, forward over reverse, and "rev-rev").
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import gradc


def median_ms(fn, calls=30, warm=5):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def mlp(X, W2, onehot):
    def loss(W1):
        z = np.tanh(X @ W1) @ W2
        m = np.max(z, axis=1, keepdims=True)
        lse = np.log(np.sum(np.exp(z - m), axis=1)) + m[:, 0]
        return np.mean(lse - np.sum(z * onehot, axis=1))
    return loss


def cases(rng):
    """(name, gradc function, JAX twin (given jax.numpy), x, v)."""
    x = rng.standard_normal(10 ** 6)

    def rosen_jax(jnp):
        return lambda x: jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    yield "W1 n=1e6", rosen, rosen_jax, x, rng.standard_normal(x.shape)
    B, D, H, C = 512, 784, 256, 10
    X, W2 = rng.standard_normal((B, D)), rng.standard_normal((H, C)) * 0.1
    onehot = np.eye(C)[rng.integers(0, C, B)]
    W1 = rng.standard_normal((D, H)) * 0.05

    def mlp_jax(jnp):
        import jax

        def loss(W1):
            z = jnp.tanh(X @ W1) @ W2
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(z * onehot, axis=1))
        return loss
    yield "W3 (w.r.t. W1)", mlp(X, W2, onehot), mlp_jax, W1, rng.standard_normal(W1.shape)


def jax_pair(make, x, v):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    jfun = make(jnp)
    grad = jax.jit(jax.grad(jfun))
    hvp = jax.jit(lambda y, w: jax.jvp(jax.grad(jfun), (y,), (w,))[1])
    xj, vj = jnp.asarray(x), jnp.asarray(v)
    return (median_ms(lambda: grad(xj).block_until_ready()),
            median_ms(lambda: hvp(xj, vj).block_until_ready()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name, fun, make_jax, x, v in cases(rng):
        grad = gradc.grad(fun, target="cpu")
        t_grad = median_ms(lambda: grad(x))
        hv = gradc.hvp(fun, (x,), (v,), target="cpu")
        eps = 1e-6
        fd = (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)
        err = float(np.max(np.abs(hv - fd)) / np.max(np.abs(fd)))
        t_fr = median_ms(lambda: gradc.hvp(fun, (x,), (v,), target="cpu"))
        t_rr = median_ms(lambda: gradc.hvp(fun, (x,), (v,), method="rev-rev", target="cpu"))
        jax_times = jax_pair(make_jax, x, v)
        rows.append((name, t_grad, t_fr, t_rr, err, jax_times))
    print("| workload | gradc grad | gradc hvp fwd-rev | ratio | gradc hvp rev-rev | ratio "
          "| vs FD | JAX grad | JAX hvp | JAX ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, tg, tfr, trr, err, jt in rows:
        jax_cols = (f"{jt[0]:.3g} ms | {jt[1]:.3g} ms | {jt[1] / jt[0]:.2f}" if jt
                    else "- | - | -")
        print(f"| {name} | {tg:.3g} ms | {tfr:.3g} ms | {tfr / tg:.2f} | {trr:.3g} ms | "
              f"{trr / tg:.2f} | {err:.1e} | {jax_cols} |")
    print()
    for name, tg, tfr, trr, _, _ in rows:
        verdict = "meets" if tfr <= 2.5 * tg else "MISSES"
        print(f"- {name}: HVP {tfr:.3g} ms / gradient {tg:.3g} ms = {tfr / tg:.2f} "
              f"(target <= 2.5): {verdict}")


if __name__ == "__main__":
    main()
