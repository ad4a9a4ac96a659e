#!/usr/bin/env python
"""Small programs of the kinds the lecture notes use, gradc against JAX in one run: the
per-call time of a compiled derivative when the arithmetic is small, so that call paths,
loop lowering and small products show.

    PYTHONPATH=. python benchmarks/small_programs.py            # JAX rows where installed
    PYTHONPATH=. python benchmarks/small_programs.py --repeats 3

Each row: gradc's ``jit`` of the transformation (target cpu) and ``jax.jit`` of JAX's,
float64, the results checked equal (rtol 1e-6) before timing; the minimum over repeated
batches of about 20 ms.  Without JAX, gradc's times alone.
"""
from __future__ import annotations

import argparse
import time
import timeit

import numpy as np


def best(f, repeats):
    f()
    t = time.perf_counter()
    f()
    n = max(1, int(0.02 / max(time.perf_counter() - t, 1e-7)))
    return min(timeit.repeat(f, number=n, repeat=repeats)) / n


def cases(rng):
    """(name, function of the array module, arguments, how to transform it) rows; the
    transformation is named so that gradc and JAX build the same derivative."""
    X = rng.standard_normal((200, 10))
    y = (rng.random(200) > 0.5).astype(float)
    w = rng.standard_normal(10)

    def logreg(xp, w, X, y):
        z = X @ w
        return xp.mean(xp.logaddexp(0.0, z) - y * z)

    T, H, D = 50, 32, 8
    Wh = rng.standard_normal((H, H)) / np.sqrt(H)
    Wx = rng.standard_normal((D, H)) / np.sqrt(D)
    xs = rng.standard_normal((T, D))

    def rnn(xp, scan, Wh, Wx, xs):
        def step(h, x):
            h = xp.tanh(h @ Wh + x @ Wx)
            return h, xp.sum(h)
        h, s = scan(step, xp.zeros(H), xs)
        return xp.sum(s) + xp.sum(h ** 2)

    W1 = rng.standard_normal((16, 64)) * 0.2
    W2 = rng.standard_normal((64, 4)) * 0.2
    Xb, Yb = rng.standard_normal((32, 16)), rng.standard_normal((32, 4))

    def mlp(xp, W1, W2, X, Y):
        return xp.mean((xp.tanh(X @ W1) @ W2 - Y) ** 2)

    def f5(xp, x):
        return xp.sum(xp.sin(x) * xp.cos(x[::-1])) + xp.sum(x ** 4)

    Xe, ye = rng.standard_normal((64, 10)), rng.standard_normal(64)

    def per(xp, w, x, y):
        return (xp.tanh(x @ w) - y) ** 2

    A10 = rng.standard_normal((10, 10))

    def g10(xp, x):
        return xp.tanh(A10 @ x) * x

    av = rng.random(100) + 1

    def newton(xp, while_loop, a):
        def body(c):
            x, i = c
            return 0.5 * (x + a / x), i + 1
        x, _ = while_loop(lambda c: c[1] < 20, body, (a, 0))
        return xp.sum(x)

    return [
        ("logistic regression gradient (200x10)",
         lambda t, xp: t.grad(lambda w, X, y: logreg(xp, w, X, y)), (w, X, y)),
        ("RNN through scan, gradient (T=50, H=32)",
         lambda t, xp: t.grad(lambda a, b, c: rnn(xp, t.scan, a, b, c), argnums=(0, 1)),
         (Wh, Wx, xs)),
        ("MLP gradient (32x16x64x4)",
         lambda t, xp: t.grad(lambda a, b, c, d: mlp(xp, a, b, c, d), argnums=(0, 1)),
         (W1, W2, Xb, Yb)),
        ("Hessian of a 5-vector function",
         lambda t, xp: t.hessian(lambda x: f5(xp, x)), (w[:5],)),
        ("vmap(grad) per-example (64x10)",
         lambda t, xp: t.vmap(t.grad(lambda w, x, y: per(xp, w, x, y)),
                              in_axes=(None, 0, 0)), (w, Xe, ye)),
        ("jacfwd (10 -> 10)", lambda t, xp: t.jacfwd(lambda x: g10(xp, x)), (w,)),
        ("jacrev (10 -> 10)", lambda t, xp: t.jacrev(lambda x: g10(xp, x)), (w,)),
        ("Hessian-vector product of the logistic loss",
         lambda t, xp: (lambda w, v: t.jvp(t.grad(lambda w: logreg(xp, w, X, y)), (w,),
                                           (v,))[1]), (w, w)),
        ("while_loop Newton iteration (20 steps, 100 values)",
         lambda t, xp: (lambda a: newton(xp, t.while_loop, a)), (av,)),
    ]


class _Jax:
    """JAX's transformations under the names gradc uses."""

    def __init__(self, jax):
        self.jax = jax
        self.grad, self.hessian, self.vmap = jax.grad, jax.hessian, jax.vmap
        self.jacfwd, self.jacrev, self.jvp = jax.jacfwd, jax.jacrev, jax.jvp
        self.scan, self.while_loop = jax.lax.scan, jax.lax.while_loop


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import gradc
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        peer = _Jax(jax)
    except ImportError:
        jax = None
    rng = np.random.default_rng(0)
    print("| program | gradc | JAX | gradc / JAX |")
    print("| --- | --- | --- | --- |")
    for name, make, args in cases(rng):
        f = gradc.jit(make(gradc, np), target="cpu")
        got = f(*args)
        tg = best(lambda: f(*args), a.repeats)
        if jax is None:
            print(f"| {name} | {tg * 1e6:.1f} µs | | |")
            continue
        jf = jax.jit(make(peer, jnp))
        want = jf(*args)
        same = all(np.allclose(np.asarray(p), np.asarray(q), rtol=1e-6, atol=1e-9)
                   for p, q in zip(jax.tree_util.tree_leaves(got),
                                   jax.tree_util.tree_leaves(want)))
        tj = best(lambda: jax.block_until_ready(jf(*args)), a.repeats)
        note = "" if same else " (MISMATCH)"
        print(f"| {name} | {tg * 1e6:.1f} µs | {tj * 1e6:.1f} µs | {tg / tj:.2f}{note} |")


if __name__ == "__main__":
    main()
