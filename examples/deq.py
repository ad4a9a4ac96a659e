"""A deep-equilibrium layer: the output is the fixed point z = tanh(W z + U x + b).

Run:  python examples/deq.py

``gradc.fixed_point`` finds z by iteration and differentiates it implicitly
(``(I − ∂f/∂z) dz = ∂f/∂θ dθ``, solved by BiCGSTAB with Jacobian-vector products), so
training never stores the iterations.  A few steps of gradient descent fit the layer
(read out by ``c·z``) to a smooth target; the implicit gradient is compared with the
gradient through the unrolled iterations.
"""
import numpy as np

import gradc


def equilibrium(params, xs, implicit=True):
    """The fixed points of the whole batch at once: Z (batch, hidden)."""
    W, U, b, c = params
    return gradc.fixed_point(lambda Z, W, inj: np.tanh(Z @ W.T + inj),
                             np.zeros((xs.shape[0], W.shape[0])), W, xs @ U.T + b,
                             tol=1e-12, implicit=implicit)


def loss(params, xs, ys, implicit=True):
    Z = equilibrium(params, xs, implicit)
    return np.mean((Z @ params[3] - ys) ** 2)


def main(hidden=8, steps=30, verbose=True):
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, (16, 2))
    ys = np.sin(2 * xs[:, 0]) * np.cos(xs[:, 1])
    params = (0.3 * rng.standard_normal((hidden, hidden)) / np.sqrt(hidden),
              rng.standard_normal((hidden, 2)), np.zeros(hidden),
              0.5 * rng.standard_normal(hidden))
    grad = gradc.value_and_grad(loss)
    first = grad(params, xs, ys)[1]
    unrolled = gradc.grad(lambda p, xs, ys: loss(p, xs, ys, implicit=False))(params, xs, ys)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(first, unrolled))
    history = []
    for step in range(steps):
        value, g = grad(params, xs, ys)
        history.append(float(value))
        params = tuple(p - 0.2 * gp for p, gp in zip(params, g))
        W = params[0]                          # keep the map a contraction
        scale = max(1.0, np.linalg.norm(W, 2) / 0.9)
        params = (W / scale,) + params[1:]
        if verbose and step % 10 == 0:
            print(f"step {step:3d}  loss {value:.5f}")
    if verbose:
        print(f"loss {history[0]:.5f} -> {history[-1]:.5f}; implicit vs unrolled gradient: "
              f"max difference {gap:.2e}")
    return history, gap


if __name__ == "__main__":
    main()
