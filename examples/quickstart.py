"""gradc in one minute: gradients of ordinary NumPy code, and the IR behind them.

Run:  python examples/quickstart.py
"""
import numpy as np

import gradc
from gradc.passes import simplify


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def central_differences(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def main():
    x = np.array([0.5, -1.0, 2.0])

    print("The traced program (SSA graph IR):")
    print(gradc.make_graph(rosen)(x))

    g = gradc.grad(rosen)(x)
    fd = central_differences(rosen, x)
    print("\ngrad rosen(x)      =", g)
    print("finite differences =", fd)
    print("max difference     =", f"{np.max(np.abs(g - fd)):.2e}")

    @gradc.grad
    def energy(a, b):
        return np.sin(a * b) + a ** 2

    print("\nd/da [sin(ab) + a²] at (0.3, 0.5) =", energy(0.3, 0.5),
          " (exact:", 0.5 * np.cos(0.15) + 0.6, ")")

    # forward and reverse mode agree: <u, J v> = <J^T u, v>
    f = lambda w: np.tanh(np.outer(w, w) @ w)  # noqa: E731
    v, u = np.ones(3), np.arange(3.0)
    _, jv = gradc.jvp(f, (x,), (v,))
    _, vjp_fn = gradc.vjp(f, x)
    (jtu,) = vjp_fn(u)
    print("\n<u, J v> =", float(u @ jv), "  <J^T u, v> =", float(jtu @ v))

    # Python control flow is traced through guards; another path re-traces
    def piecewise(t):
        return t ** 3 if t > 0 else np.sin(t)

    dp = gradc.grad(piecewise)
    print("\nd/dt piecewise at 2.0 =", dp(2.0), " at -1.0 =", dp(-1.0),
          " (exact:", 12.0, np.cos(-1.0), ")")
    print("\nThe gradient program of rosen, after simplification:")
    print(simplify(gradc.make_graph(gradc.grad(rosen))(x)))


if __name__ == "__main__":
    main()
