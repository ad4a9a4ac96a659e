"""Gaussian CRF denoising: the MAP estimate is a linear solve, learned through it.

Run:  python examples/gaussian_crf.py

A noisy 1-D signal ``x`` is denoised by the Gaussian CRF whose energy is
``E(y) = ½|y − x|² + ½ λ Σ (y_{i+1} − y_i)²``; its minimiser solves ``(I + λ L) y = x``
(``L`` the chain's graph Laplacian).  gradc solves it matrix-free with CG
(``gradc.linear_solve``: ``L`` is never built) and differentiates the solution by
another solve (the seed's formula: ``dΨ/dx = A⁻ᵀ dΨ/dy``, ``dΨ/dA = −(dΨ/dx) yᵀ``), so
the smoothing strength ``λ = exp(θ)`` is learned by gradient descent on the error
against the clean signal.  The gradient is checked against NumPy's dense solve.
"""
import numpy as np

import gradc


def laplacian_apply(v):
    """L v for the chain graph (free ends), without building L."""
    d = v[1:] - v[:-1]
    return np.concatenate([-d[:1], d[:-1] - d[1:], d[-1:]])


def denoise(theta, x):
    lam = np.exp(theta)
    return gradc.linear_solve(lambda v: v + lam * laplacian_apply(v), x, symmetric=True)


def loss(theta, x, clean):
    return np.mean((denoise(theta, x) - clean) ** 2)


def dense_loss(theta, x, clean):
    n = x.size
    L = np.diag(np.r_[1.0, 2.0 * np.ones(n - 2), 1.0]) - np.eye(n, k=1) - np.eye(n, k=-1)
    return np.mean((np.linalg.solve(np.eye(n) + np.exp(theta) * L, x) - clean) ** 2)


def main(n=400, steps=40, verbose=True):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, n)
    clean = np.sin(t) + 0.5 * np.sign(np.sin(0.5 * t))
    x = clean + 0.3 * rng.standard_normal(n)
    value_and_grad = gradc.value_and_grad(loss)
    theta = np.float64(-2.0)
    g_check = value_and_grad(theta, x, clean)[1]
    eps = 1e-5
    g_dense = (dense_loss(theta + eps, x, clean) - dense_loss(theta - eps, x, clean)) / (2 * eps)
    history = []
    for step in range(steps):
        value, g = value_and_grad(theta, x, clean)
        history.append(float(value))
        theta = theta - 2.0 * g / max(1.0, abs(g) * 20)
        if verbose and step % 10 == 0:
            print(f"step {step:3d}  lambda {np.exp(theta):8.3f}  mse {value:.5f}")
    if verbose:
        print(f"noisy mse {np.mean((x - clean) ** 2):.5f} -> denoised mse {history[-1]:.5f} "
              f"at lambda {np.exp(theta):.3f}")
        print(f"gradient check at theta=-2: gradc {g_check:.10f}, dense finite "
              f"difference {g_dense:.10f}")
    return history, g_check, g_dense


if __name__ == "__main__":
    main()
