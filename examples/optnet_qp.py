"""An OptNet-style layer: the solution of a quadratic program, differentiated through
its KKT conditions.

Run:  python examples/optnet_qp.py

``x*(q) = argmin ½ xᵀQx + qᵀx  s.t.  G x <= h,  A x = b`` (``gradc.argmin`` with
``constraints=``; SLSQP then Newton polish on the KKT conditions).  The layer's input
``q`` is fitted by gradient descent so that ``x*`` lands on a target that the
constraints partly forbid; the derivative (BiCGSTAB on the KKT system's Jacobian-vector
products) is checked against the exact derivative on the active set.
"""
import numpy as np

import gradc


def make_problem(rng, n=6, m=4):
    L = rng.standard_normal((n, n))
    Q = L @ L.T + np.eye(n)
    G, h = rng.standard_normal((m, n)), np.abs(rng.standard_normal(m)) * 0.5
    A, b = np.ones((1, n)), np.array([1.0])
    return Q, G, h, A, b


def qp_layer(q, Q, G, h, A, b):
    return gradc.argmin(lambda x, q: 0.5 * x @ Q @ x + q @ x, np.zeros(q.size), q,
                        constraints=dict(ineq=lambda x, q: G @ x - h,
                                         eq=lambda x, q: A @ x - b))


def main(steps=30, verbose=True):
    rng = np.random.default_rng(3)
    Q, G, h, A, b = make_problem(rng)
    target = rng.standard_normal(Q.shape[0])
    target = target - (target.sum() - 1.0) / target.size

    def loss(q):
        return np.sum((qp_layer(q, Q, G, h, A, b) - target) ** 2)

    value_and_grad = gradc.value_and_grad(loss)
    q = np.zeros(Q.shape[0])
    x = qp_layer(q, Q, G, h, A, b)
    active = np.abs(G @ x - h) < 1e-8
    C = np.vstack([A, G[active]])
    K = np.block([[Q, C.T], [C, np.zeros((len(C), len(C)))]])
    dx_dq = -np.linalg.inv(K)[:q.size, :q.size]
    g_exact = dx_dq.T @ (2 * (x - target))
    g0 = value_and_grad(q)[1]
    history = []
    for step in range(steps):
        value, g = value_and_grad(q)
        history.append(float(value))
        q = q - 1.0 * g
        if verbose and step % 10 == 0:
            print(f"step {step:3d}  loss {value:.5f}")
    if verbose:
        print(f"loss {history[0]:.5f} -> {history[-1]:.5f}; {int(active.sum())} "
              f"inequalities active at q=0")
        print(f"gradient at q=0 vs exact on the active set: max difference "
              f"{np.abs(g0 - g_exact).max():.2e}")
    return history, g0, g_exact


if __name__ == "__main__":
    main()
