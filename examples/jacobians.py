"""Jacobians three ways: the best bracketing of a chain, a sparse Hessian, batching.

Run:  python examples/jacobians.py [plan.png]

1. An hourglass network 300 -> 5 -> 300 -> 5 -> 300: all-forward and all-reverse both
   push 300 vectors through every layer; the optimal plan goes through the narrow
   values (5 tangents) and multiplies once at the end.
2. Rosenbrock's Hessian at n = 10,000: tridiagonal, recovered from 3 Hessian-vector
   products (one per colour of its columns) instead of 10,000.
3. ``vmap`` of a gradient: per-example gradients of a loss, one Graph.
"""
import sys
import time

import numpy as np

import gradc


def hourglass(mats):
    def f(x):
        for W in mats:
            x = np.tanh(W @ x)
        return x
    return f


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def timed(fn, *args, repeat=5):
    fn(*args)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(picture=None):
    rng = np.random.default_rng(0)
    dims = [300, 5, 300, 5, 300]
    f = hourglass([rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(dims, dims[1:])])
    x = rng.standard_normal(dims[0])

    plan = gradc.jacobian_plan(f)(x)
    print(plan)
    if picture:
        plan.draw(picture)
        print(f"(drawn to {picture})")
    J = gradc.jacobian(f)(x)
    err = np.max(np.abs(J - gradc.jacfwd(f)(x)))
    print(f"\njacobian(f) == jacfwd(f): max difference {err:.1e}")
    for name, jac in (("optimal", gradc.jacobian(f)), ("jacfwd", gradc.jacfwd(f)),
                      ("jacrev", gradc.jacrev(f))):
        print(f"  {name:<8} {timed(jac, x):7.3f} ms")

    n = 10_000
    z = rng.uniform(-1, 1, n)
    sparse_hessian = gradc.hessian(rosen, sparse=True)
    H = sparse_hessian(z)
    print(f"\nRosenbrock, n = {n:,}: {sparse_hessian.coloring(z)}")
    v = rng.standard_normal(n)
    err = np.max(np.abs(H @ v - gradc.hvp(rosen, (z,), (v,))))
    print(f"  H @ v == hvp(rosen, z, v): max difference {err:.1e}")

    X, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    w = rng.standard_normal(3)
    per_example = gradc.vmap(gradc.grad(lambda w, x, t: (np.tanh(x @ w) - t) ** 2),
                             in_axes=(None, 0, 0))(w, X, y)
    mean_grad = gradc.grad(lambda w: np.mean((np.tanh(X @ w) - y) ** 2))(w)
    print(f"\nper-example gradients of a loss: shape {per_example.shape}, their mean equals "
          f"the mean loss's gradient: {np.allclose(per_example.mean(0), mean_grad)}")
    return plan, H


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
