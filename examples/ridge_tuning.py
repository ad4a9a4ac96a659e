"""Tune ridge regression's regularisation strength by gradient descent on validation loss.

Run:  python examples/ridge_tuning.py

The weights are ``w(λ) = argmin_w |X w − y|² + λ |w|²`` (``gradc.argmin``: L-BFGS on the
training data, never traced); the validation loss's derivative in ``θ = log λ`` comes
from the optimality condition ``∇_w = 0`` by the implicit function theorem (CG on
Hessian-vector products).  It is checked against the closed form
``w = (XᵀX + λI)⁻¹ Xᵀy``.
"""
import numpy as np

import gradc


def train_objective(w, theta, X, y):
    return np.sum((X @ w - y) ** 2) + np.exp(theta) * np.sum(w ** 2)


def validation_loss(theta, X, y, Xv, yv):
    w = gradc.argmin(train_objective, np.zeros(X.shape[1]), theta, X, y)
    return np.mean((Xv @ w - yv) ** 2)


def closed_form_loss(theta, X, y, Xv, yv):
    w = np.linalg.solve(X.T @ X + np.exp(theta) * np.eye(X.shape[1]), X.T @ y)
    return np.mean((Xv @ w - yv) ** 2)


def main(n=30, m=40, steps=25, verbose=True):
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal(n) * (rng.uniform(size=n) < 0.3)
    X, Xv = rng.standard_normal((m, n)), rng.standard_normal((200, n))
    y = X @ w_true + 0.5 * rng.standard_normal(m)
    yv = Xv @ w_true + 0.5 * rng.standard_normal(200)
    value_and_grad = gradc.value_and_grad(validation_loss)
    theta = np.float64(-3.0)
    g0 = value_and_grad(theta, X, y, Xv, yv)[1]
    eps = 1e-5
    g_exact = (closed_form_loss(theta + eps, X, y, Xv, yv)
               - closed_form_loss(theta - eps, X, y, Xv, yv)) / (2 * eps)
    history = []
    for step in range(steps):
        value, g = value_and_grad(theta, X, y, Xv, yv)
        history.append(float(value))
        theta = theta - 0.5 * np.clip(g, -1, 1) / max(abs(g), 1e-3) * min(abs(g) * 10, 1)
        if verbose and step % 5 == 0:
            print(f"step {step:3d}  lambda {np.exp(theta):9.4f}  validation mse {value:.5f}")
    if verbose:
        print(f"validation mse {history[0]:.5f} -> {history[-1]:.5f} at lambda "
              f"{np.exp(theta):.4f}")
        print(f"d loss / d log(lambda) at theta=-3: gradc {g0:.10f}, closed form "
              f"{g_exact:.10f}")
    return history, g0, g_exact


if __name__ == "__main__":
    main()
