#!/usr/bin/env python
"""A neural ODE's solve and its gradient by the adjoint: ``gradc.odeint`` against JAX's
``jax.experimental.ode.odeint`` (``jit``) where installed, in one run, the results
checked equal before timing.

    PYTHONPATH=. python benchmarks/ode.py                      # state 16, hidden 64
    PYTHONPATH=. python benchmarks/ode.py --state 64 --hidden 256 --times 10

The dynamics: ``dy/dt = tanh(y @ W1 + b) @ W2`` over ``t`` in [0, 1] (``--times`` output
times), rtol = atol = 1e-7; the loss is ``sum(ys ** 2)``, its gradient with respect to
``y0``, ``W1``, ``b`` and ``W2``.  Times are the minimum over ``--repeats`` calls after a
first call that compiles (reported as "first call").  Both solvers are the same
Dormand-Prince 5(4) pair with the same error norm and step-size rule, so they take
nearly the same steps.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from segment_max import best        # (benchmarks/: this script's directory)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--times", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    import gradc
    rng = np.random.default_rng(0)
    n, H = a.state, a.hidden
    params = (rng.standard_normal((n, H)) / np.sqrt(n), 0.1 * rng.standard_normal(H),
              rng.standard_normal((H, n)) / np.sqrt(H))
    y0 = rng.standard_normal(n)
    ts = np.linspace(0.0, 1.0, a.times)
    tol = 1e-7

    def dynamics(y, t, W1, b, W2):
        return np.tanh(y @ W1 + b) @ W2

    def loss(y0, W1, b, W2):
        return np.sum(gradc.odeint(dynamics, y0, ts, W1, b, W2, rtol=tol, atol=tol) ** 2)

    rows = []
    solve = gradc.jit(lambda y0, *p: gradc.odeint(dynamics, y0, ts, *p, rtol=tol, atol=tol),
                      target="cpu")
    grad = gradc.jit(gradc.grad(loss, argnums=(0, 1, 2, 3)), target="cpu")
    t = time.perf_counter()
    ys = solve(y0, *params)
    first_solve = time.perf_counter() - t
    t = time.perf_counter()
    g = grad(y0, *params)
    first_grad = time.perf_counter() - t
    rows.append(("gradc (cpu)", best(lambda: solve(y0, *params), a.repeats),
                 best(lambda: grad(y0, *params), a.repeats),
                 f"first call {first_solve:.2f} s / {first_grad:.2f} s"))
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax.experimental.ode import odeint as jodeint
    except ImportError:
        jax = None
    if jax is not None:
        def jdyn(y, t, W1, b, W2):
            return jnp.tanh(y @ W1 + b) @ W2

        jts = jnp.asarray(ts)
        jsolve = jax.jit(lambda y0, *p: jodeint(jdyn, y0, jts, *p, rtol=tol, atol=tol))
        jgrad = jax.jit(jax.grad(lambda y0, *p: jnp.sum(
            jodeint(jdyn, y0, jts, *p, rtol=tol, atol=tol) ** 2), argnums=(0, 1, 2, 3)))
        t = time.perf_counter()
        jys = jsolve(y0, *params)
        jys.block_until_ready()
        first_solve = time.perf_counter() - t
        t = time.perf_counter()
        jg = jgrad(y0, *params)
        jax.block_until_ready(jg)
        first_grad = time.perf_counter() - t
        # (equal to the tolerances: relative to each result's largest entry)
        for x, y in zip((ys,) + tuple(g), (jys,) + tuple(jg)):
            y = np.asarray(y)
            assert np.abs(x - y).max() <= 1e-4 * np.abs(y).max(), np.abs(x - y).max()
        rows.append((f"JAX {jax.__version__} (jit)",
                     best(lambda: jsolve(y0, *params).block_until_ready(), a.repeats),
                     best(lambda: jax.block_until_ready(jgrad(y0, *params)), a.repeats),
                     f"first call {first_solve:.2f} s / {first_grad:.2f} s"))
    print(f"neural ODE: state {n}, hidden {H}, {a.times} output times on [0, 1], "
          f"rtol = atol = {tol}, float64; min of {a.repeats} calls\n")
    print("| implementation | solve | gradient (adjoint) | notes |")
    print("| --- | --- | --- | --- |")
    for name, s, gr, note in rows:
        print(f"| {name} | {s * 1e3:.3f} ms | {gr * 1e3:.3f} ms | {note} |")


if __name__ == "__main__":
    main()
