"""Implicit differentiation (issue 6): linear_solve, custom_root, implicit_diff,
fixed_point, argmin (with and without constraints), the decompositions, and the errors
for singular, indefinite and unconverged systems.  References: closed forms, NumPy's
dense solves, finite differences of the full solve, and the unrolled iterations."""
import io
import inspect
import warnings

import numpy as np
import pytest
import scipy.optimize

import gradc
from gradc.errors import ArgumentError, EvaluationError
from gradc.testing import numerical_grad


fd = numerical_grad       # central differences, one coordinate at a time


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def spd(rng, n):
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


# ---------------------------------------------------------------- linear_solve

@pytest.mark.parametrize("solve", ["cg", "gmres", "bicgstab", "dense"])
def test_linear_solve_gradients_equal_numpy_solve(rng, solve):
    n = 6
    A, b = spd(rng, n), rng.standard_normal(n)

    def f(A, b):
        x = gradc.linear_solve(lambda v: A @ v, b, solve=solve, symmetric=solve == "cg")
        return np.sum(np.sin(x))

    def ref(A, b):
        return np.sum(np.sin(np.linalg.solve(A, b)))

    assert abs(f(A, b) - ref(A, b)) < 1e-10
    gA, gb = gradc.grad(f, argnums=(0, 1))(A, b)
    assert np.abs(gA - fd(lambda A: ref(A, b), A)).max() < 1e-7
    assert np.abs(gb - fd(lambda b: ref(A, b), b)).max() < 1e-7


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_bicgstab_solved_in_a_half_step(rng, target):
    """A system BiCGSTAB solves exactly in its first half step (A = 2I: alpha = 1/2 and
    s = b - Ab/2 = 0 with no rounding): omega would be 0/0; the solution must come back,
    with its gradient (this happened by rounding to a random 4x4 system on one CPU)."""
    b = rng.standard_normal(5)

    def f(b):
        return np.sum(np.sin(gradc.linear_solve(lambda v: 2.0 * v, b, solve="bicgstab")))

    x = gradc.jit(lambda b: gradc.linear_solve(lambda v: 2.0 * v, b, solve="bicgstab"),
                  target=target)(b)
    np.testing.assert_array_equal(x, b / 2)
    np.testing.assert_allclose(gradc.grad(f, target=target)(b), np.cos(b / 2) / 2,
                               rtol=1e-14)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_bicgstab_restarts_where_it_breaks_down(target):
    """A symmetric indefinite (KKT) system whose first step leaves the residual
    orthogonal to its image (omega = 0, then rho = 0: 0/0 everywhere after): BiCGSTAB
    restarts with a new shadow residual and solves it; as argmin's adjoint solve (a QP
    with one scalar equality constraint), the gradient is the closed form's."""
    y = np.array([0.38333333, 0.33333333, 0.28333333])
    K = np.zeros((4, 4))
    K[:3, :3], K[:3, 3], K[3, :3] = 2 * np.eye(3), 1.0, 1.0
    b = np.concatenate([2 * y, [0.0]])
    x = gradc.jit(lambda b: gradc.linear_solve(lambda v: K @ v, b, solve="bicgstab"),
                  target=target)(b)
    np.testing.assert_allclose(x, np.linalg.solve(K, b), rtol=1e-9, atol=1e-12)
    Q = 2.0 * np.eye(3)

    def loss(q):
        y = gradc.argmin(lambda x, q: 0.5 * x @ Q @ x + q @ x, np.zeros(3), q,
                         constraints=dict(eq=lambda x, q: np.sum(x) - 1.0))
        return np.sum(y ** 2)
    q = np.array([0.1, 0.2, 0.3])
    y = -q / 2 + (1 + np.sum(q) / 2) / 3            # (the solution; its gradient below)
    np.testing.assert_allclose(gradc.grad(loss, target=target)(q), -y + np.sum(y) / 3,
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_bicgstab_restarts_where_the_shadow_is_orthogonal_to_a_p(target):
    """(Seed QA: a KKT system with b in its constraint rows alone has bᵀ A b = 0, so the
    first step's alpha = rho / (r̂ᵀ A p) was inf: "broke down ... the system is singular"
    on a regular system.  That is the forward-mode derivative of a QP w.r.t. the
    right-hand side of its constraints.)"""
    K = np.zeros((4, 4))
    K[:3, :3], K[:3, 3], K[3, :3] = 2 * np.eye(3), 1.0, 1.0
    b = np.array([0.0, 0.0, 0.0, 1.0])
    x = gradc.jit(lambda b: gradc.linear_solve(lambda v: K @ v, b, solve="bicgstab"),
                  target=target)(b)
    np.testing.assert_allclose(x, np.linalg.solve(K, b), rtol=1e-9, atol=1e-12)
    Q, q = 2.0 * np.eye(3), np.array([0.1, 0.2, 0.3])

    def qp(c):
        return gradc.argmin(lambda x, c: 0.5 * x @ Q @ x + q @ x, np.zeros(3), c,
                            constraints=dict(eq=lambda x, c: np.sum(x) - c))
    _, dx = gradc.jvp(qp, (1.0,), (1.0,), target=target)
    np.testing.assert_allclose(dx, np.full(3, 1 / 3), rtol=1e-8)


def test_bicgstab_says_when_it_diverges():
    """A skew-symmetric system (eigenvalues on the imaginary axis), where BiCGSTAB
    diverges: the warning says so and names the methods that solve it; GMRES does."""
    A, b = np.array([[0.0, -1.0], [1.0, 0.0]]), np.array([0.3, -1.2])
    with pytest.warns(gradc.ConvergenceWarning, match="diverged(.|\n)*solve='gmres'"):
        gradc.jit(lambda b: gradc.linear_solve(lambda x: A @ x, b, solve="bicgstab",
                                               maxiter=20), target="numpy")(b)
    x = gradc.jit(lambda b: gradc.linear_solve(lambda x: A @ x, b, solve="gmres"),
                  target="numpy")(b)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-12)


def test_linear_solve_unsymmetric_forward_equals_reverse(rng):
    n = 5
    A = rng.standard_normal((n, n)) + 4 * np.eye(n)
    b = rng.standard_normal(n)

    def f(A, b):
        return np.tanh(gradc.linear_solve(lambda v: A @ v + 0.1 * v ** 1, b, solve="gmres"))

    tA, tb = rng.standard_normal((n, n)), rng.standard_normal(n)
    u = rng.standard_normal(n)
    _, jv = gradc.jvp(f, (A, b), (tA, tb))
    _, vjp_fn = gradc.vjp(f, A, b)
    cA, cb = vjp_fn(u)
    assert abs(np.dot(u, jv) - (np.sum(cA * tA) + np.dot(cb, tb))) < 1e-10
    # and the values: x = (A + 0.1 I)^-1 b
    x = np.linalg.solve(A + 0.1 * np.eye(n), b)
    assert np.abs(f(A, b) - np.tanh(x)).max() < 1e-10


@pytest.mark.parametrize("restart", [3, 20, 200])
def test_gmres_restarts_and_full_krylov(rng, restart):
    """Short cycles (restarts from the true residual), and a basis as large as the
    system (the Krylov space fills up: a lucky breakdown, no NaN)."""
    from gradc.lib.solvers import Method
    n = 40
    A = rng.standard_normal((n, n)) / np.sqrt(n) + 2 * np.eye(n)
    b = rng.standard_normal(n)
    x = gradc.linear_solve(lambda v: A @ v, b, solve=Method("gmres", 1e-12, restart=restart))
    assert np.abs(x - np.linalg.solve(A, b)).max() < 1e-10


def test_linear_solve_matrix_shaped_unknown_and_user_solve(rng):
    """x of any shape; a user's solve function (reverse mode reuses it on Aᵀ)."""
    A = spd(rng, 4)
    B = rng.standard_normal((4, 3))

    def user_solve(matvec, b):        # three Jacobi-preconditioned... dense, by hand
        return gradc.lib.solvers.Method("dense")(matvec, b)

    def f(A, B):
        X = gradc.linear_solve(lambda V: A @ V, B, solve=user_solve)
        return np.sum(X ** 3)

    def ref(A, B):
        return np.sum(np.linalg.solve(A, B) ** 3)

    gA, gB = gradc.grad(f, argnums=(0, 1))(A, B)
    assert np.abs(gA - fd(lambda A: ref(A, B), A)).max() < 1e-7
    assert np.abs(gB - fd(lambda B: ref(A, B), B)).max() < 1e-7


def test_linear_solve_compiled(rng):
    n = 8
    A, b = spd(rng, n), rng.standard_normal(n)

    def f(A, b):
        x = gradc.linear_solve(lambda v: A @ v, b, symmetric=True)
        return np.sum(x ** 2)

    g_numpy = gradc.grad(f, argnums=(0, 1), target="numpy")(A, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.GradcWarning)   # no fallback to the interpreter
        g_cpu = gradc.grad(f, argnums=(0, 1), target="cpu")(A, b)
    for a, c in zip(g_numpy, g_cpu):
        assert np.abs(a - c).max() < 1e-12


def test_singular_and_indefinite_systems_are_clear_errors_or_ridge(rng):
    n = 4
    A = np.zeros((n, n))
    A[:3, :3] = spd(rng, 3)                    # singular
    b = rng.standard_normal(n)
    with pytest.raises(EvaluationError, match="singular|Singular"):
        gradc.linear_solve(lambda v: A @ v, b, solve="dense")
    with pytest.raises(EvaluationError, match="broke down.*ridge="):
        gradc.linear_solve(lambda v: -A @ v + np.diag([1., 1., 1., -1.]) @ v * 0, b,
                           solve="cg", symmetric=True)
    # ridge: the documented regularised answer (A + ridge I) x = b
    x = gradc.linear_solve(lambda v: A @ v, b, solve="cg", symmetric=True, ridge=1e-3)
    assert np.abs(x - np.linalg.solve(A + 1e-3 * np.eye(n), b)).max() < 1e-8
    with pytest.raises(ArgumentError, match="solve='qr'"):
        gradc.linear_solve(lambda v: A @ v, b, solve="qr")
    with pytest.raises(ArgumentError, match="matvec returns shape"):
        gradc.linear_solve(lambda v: v[:2], b)


def test_unconverged_solver_warns(rng):
    A, b = spd(rng, 30), rng.standard_normal(30)
    with pytest.warns(gradc.ConvergenceWarning, match="did not converge"):
        gradc.linear_solve(lambda v: A @ v, b, solve="cg", symmetric=True, maxiter=2)


# ---------------------------------------------------------------- roots

_A3 = np.array([[3.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 5.0]])
_B3 = np.array([1.0, -2.0, 0.5])


def _with_first(w, value):
    w[0] = value
    return w


# (matvec, what the error says, the matvec's source text)
NOT_LINEAR = {
    "square": (lambda v: _A3 @ v + v ** 2, "applies pow to a value that depends on v",
               "lambda v: _A3 @ v + v ** 2"),
    "constant": (lambda v: _A3 @ v + 1.0, "adds a term that does not depend on v (add)",
                 "lambda v: _A3 @ v + 1.0"),
    "closure-constant": (lambda v: _A3 @ v - _B3, "does not depend on v (sub)",
                         "lambda v: _A3 @ v - _B3"),
    "product": (lambda v: v * (_A3 @ v), "multiplies two values that both depend on v",
                "lambda v: v * (_A3 @ v)"),
    "divide": (lambda v: _A3 @ v / np.sum(v), "divides by a value that depends on v",
               "lambda v: _A3 @ v / np.sum(v)"),
    "branch-on-v": (lambda v: np.where(v > 0, _A3 @ v, 2 * v), "applies gt",
                    "lambda v: np.where(v > 0, _A3 @ v, 2 * v)"),
    "relu": (lambda v: np.maximum(_A3 @ v, 0.0), "applies max", "np.maximum(_A3 @ v, 0.0)"),
    "to-integers": (lambda v: _A3 @ v.astype(int) * 1.0, "into int64",
                    "lambda v: _A3 @ v.astype(int) * 1.0"),
    "constant-entry": (lambda v: _with_first(_A3 @ v, 1.0), "(index_set)", "w[0] = value"),
    "constant-padding": (lambda v: np.concatenate([np.ones(1), (_A3 @ v)[1:]]),
                         "(concatenate)", "np.concatenate([np.ones(1), (_A3 @ v)[1:]])"),
}


@pytest.mark.parametrize("name", NOT_LINEAR)
def test_a_matvec_that_is_not_linear_is_refused(name):
    """(QA: linear_solve linearised such a matvec silently: its derivative, A⁻¹ (db − dA
    x) with the transposed matvec, was that of another system.)  The error says why and
    names the matvec's line and the user's call."""
    matvec, why, source = NOT_LINEAR[name]
    calls = [(lambda: gradc.linear_solve(matvec, _B3, solve="dense"),
              "gradc.linear_solve(matvec, _B3, solve=\"dense\")"),
             (lambda: gradc.grad(lambda b: np.sum(gradc.linear_solve(matvec, b)))(_B3),
              "np.sum(gradc.linear_solve(matvec, b))")]
    for call, line in calls:
        with pytest.raises(ArgumentError) as info:
            call()
        message = str(info.value)
        assert message.startswith("linear_solve: matvec must be linear in its argument v"), \
            message
        assert why in message and "gradc.custom_root" in message, message
        assert "in matvec at " in message and source in message, message
        assert "test_implicit.py" in message and line in message.splitlines()[-1], message
    with pytest.raises(ArgumentError, match="result does not depend on v"):
        gradc.linear_solve(lambda v: _B3, _B3)


LINEAR = {
    "scaled": lambda v: 2.0 * v - v / 3.0,
    "times-one": lambda v: _A3 @ v + 0.5 * v ** 1,
    "shifts": lambda v: 4 * v - np.concatenate([np.zeros(1), v[:-1]])
                        - np.concatenate([v[1:], np.zeros(1)]),
    "padded": lambda v: 3 * v - np.pad(v, 1)[:-2] - np.pad(v, 1)[2:],
    "filled-zeros": lambda v: _with_first(np.zeros_like(v) + _A3 @ v, 2 * v[0] + v[1]),
    "constant-mask": lambda v: np.where(_B3 > 0, _A3 @ v, 0.0) + 3 * v,
    "transposed": lambda v: _A3.T @ v + np.einsum("ij,j->i", _A3, v),
    "cumsums": lambda v: np.cumsum(v) + np.cumsum(v[::-1])[::-1] + v,
    "reductions": lambda v: 5 * v + np.sum(v) - np.mean(v) * _B3,
    "solves": lambda v: np.linalg.solve(_A3, v) + gradc.linear_solve(lambda u: _A3 @ u, v),
    "reshaped-float32": lambda v: (_A3 @ v.reshape(3, 1).astype(np.float32)).ravel() + v,
    "times-zero": lambda v: _A3 @ v + 0.0 * _B3,
    "gathered": lambda v: _A3 @ v + v[[2, 1, 0]],
}


@pytest.mark.parametrize("name", LINEAR)
def test_linear_matvecs_are_accepted(name):
    matvec = LINEAR[name]
    A = np.stack([matvec(e) for e in np.eye(3)], axis=1)         # (NumPy's own)
    x = gradc.jit(lambda b: gradc.linear_solve(matvec, b, solve="dense"))(_B3)
    np.testing.assert_allclose(x, np.linalg.solve(A, _B3), rtol=1e-6)


def test_custom_root_newton_sqrt():
    def sqrt(a):
        def f(x):
            return x * x - a

        def solve(f, x0):
            return gradc.fori_loop(0, 40, lambda i, x: x - f(x) / (2 * x), x0)

        return gradc.custom_root(f, np.ones(()), solve, lambda g, y: y / g(np.ones(())))

    for a in (2.0, 9.0, 0.25):
        assert abs(sqrt(np.float64(a)) - np.sqrt(a)) < 1e-14
        assert abs(gradc.grad(sqrt)(np.float64(a)) - 0.5 / np.sqrt(a)) < 1e-12
        assert abs(gradc.grad(gradc.grad(sqrt))(np.float64(a)) + 0.25 * a ** -1.5) < 1e-10


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_a_user_solve_that_does_not_solve_is_warned_of(target):
    """(QA) custom_root's solve stopping after one Newton step gave y = 5 for sqrt(9) and
    dy/da = 0.1, and a linear_solve solve function returning b / 2 gave its x, silently;
    a wrong tangent_solve gave a wrong derivative.  Each is now a ConvergenceWarning at
    run time naming the user's line; a solve that converges gives none."""
    import warnings

    def sqrt(a, steps, tangent=lambda g, v: v / g(np.ones_like(v))):
        def newton(f, y0):
            return gradc.fori_loop(0, steps, lambda i, y: y - f(y) / (2 * y), y0)
        return gradc.custom_root(lambda y: y * y - a, np.ones_like(a), newton, tangent)
    a = np.array([9.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(gradc.jit(lambda a: sqrt(a, 40), target=target)(a),
                                   np.sqrt(a), rtol=1e-14)
        np.testing.assert_allclose(gradc.grad(lambda a: np.sum(sqrt(a, 40)), target=target)(a),
                                   0.5 / np.sqrt(a), rtol=1e-12)
    with pytest.warns(gradc.ConvergenceWarning, match="custom_root: solve.*does not solve"
                      ) as caught:
        gradc.jit(lambda a: sqrt(a, 1), target=target)(a)
    assert all(w.filename == __file__ for w in caught)
    with pytest.warns(gradc.ConvergenceWarning, match="does not solve matvec"):
        gradc.grad(lambda a: np.sum(sqrt(a, 40, lambda g, v: v)), target=target)(a)

    A, b = np.array([[4.0, 1.0], [0.5, 3.0]]), np.array([1.0, 2.0])
    with pytest.warns(gradc.ConvergenceWarning, match="solve function.*does not solve"):
        gradc.jit(lambda b: gradc.linear_solve(lambda v: A @ v, b, solve=lambda mv, c: c / 2),
                  target=target)(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = gradc.jit(lambda b: gradc.linear_solve(
            lambda v: A @ v, b, solve=lambda mv, c: np.linalg.solve(A, c)), target=target)(b)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-14)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_symmetric_true_with_a_matvec_that_is_not_is_warned_of(target):
    """(QA) symmetric=True with a non-symmetric matvec solved right and gave the gradient
    of Aᵀ's system, silently: a ConvergenceWarning now; a symmetric one gives none."""
    import warnings
    A = np.array([[4.0, 1.5, 0.0], [0.2, 3.0, 0.7], [0.0, 0.1, 5.0]])
    b = np.array([1.0, 2.0, 3.0])

    def loss(A, b):
        return np.sum(np.sin(gradc.linear_solve(lambda v: A @ v, b, symmetric=True,
                                                solve="gmres")))
    with pytest.warns(gradc.ConvergenceWarning, match="matvec is not symmetric"):
        gradc.grad(loss, argnums=1, target=target)(A, b)
    S = A + A.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = gradc.grad(loss, argnums=1, target=target)(S, b)
    want = gradc.grad(lambda b: np.sum(np.sin(np.linalg.solve(S, b))), target="numpy")(b)
    np.testing.assert_allclose(got, want, rtol=1e-8)


def ridge_problem(rng, n=5, m=20):
    X, y = rng.standard_normal((m, n)), rng.standard_normal(m)
    return X, y


def test_implicit_diff_untraceable_solver(rng):
    X, y = ridge_problem(rng)
    n = X.shape[1]
    calls = []

    def optimality(w, lam):
        return X.T @ (X @ w - y) + lam * w

    @gradc.implicit_diff(optimality, solve="cg")
    def ridge(init, lam):
        calls.append(type(lam))
        lam = float(lam)                       # untraceable on purpose
        w = np.array(init, float)
        for _ in range(2000):                  # plain gradient descent, in Python
            w -= 0.01 * (X.T @ (X @ w - y) + lam * w)
        return w

    def loss(lam):
        return np.sum(ridge(np.zeros(n), lam) ** 2)

    def exact(lam):
        return np.sum(np.linalg.solve(X.T @ X + lam * np.eye(n), X.T @ y) ** 2)

    for lam in (0.3, 2.0):
        g = gradc.grad(loss)(np.float64(lam))
        assert abs(g - fd(exact, np.float64(lam))) < 1e-7
    assert all(t is not gradc.trace.Tracer for t in calls)       # never traced
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.GradcWarning)
        g_cpu = gradc.grad(loss, target="cpu")(np.float64(0.3))
    assert abs(g_cpu - fd(exact, np.float64(0.3))) < 1e-7


def deq_setup(rng, n=6):
    W = rng.standard_normal((n, n)) * 0.5 / np.sqrt(n)
    U = rng.standard_normal((n, 3))
    return W, U, rng.standard_normal(3)


def deq(W, U, x, implicit=True):
    z = gradc.fixed_point(lambda z, W, b: np.tanh(W @ z + b), np.zeros(W.shape[0]), W,
                          U @ x, implicit=implicit, tol=1e-13)
    return np.sum(z ** 2) + np.sum(z)


def test_fixed_point_implicit_equals_unrolled_and_fd(rng):
    W, U, x = deq_setup(rng)
    implicit = gradc.grad(deq, argnums=(0, 1, 2))(W, U, x)
    unrolled = gradc.grad(lambda W, U, x: deq(W, U, x, False), argnums=(0, 1, 2))(W, U, x)
    for a, b in zip(implicit, unrolled):
        assert np.abs(a - b).max() < 1e-8
    assert np.abs(implicit[2] - fd(lambda x: deq(W, U, x), x)).max() < 1e-7


def test_fixed_point_second_order(rng):
    """hvp through the implicit rule: the JVP of linear_solve in its matvec's values."""
    W, U, x = deq_setup(rng, 4)
    v = rng.standard_normal(3)
    hv = gradc.hvp(lambda x: deq(W, U, x), (x,), (v,))
    g = gradc.grad(lambda x: deq(W, U, x))
    ref = (g(x + 1e-5 * v) - g(x - 1e-5 * v)) / 2e-5
    assert np.abs(np.asarray(hv).ravel() - ref).max() < 1e-6


def test_fixed_point_that_does_not_converge_warns():
    with pytest.warns(gradc.ConvergenceWarning, match="fixed_point"):
        gradc.fixed_point(lambda z, a: a * np.cos(3 * z) + 0.0, np.zeros(2),
                          np.float64(2.0), maxiter=50)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_grad_of_a_diverging_affine_fixed_point_warns(target):
    """An affine map's implicit derivative does not read the solution, so ``grad``
    needed none of the forward iteration, and dead-code elimination dropped it with its
    report: the derivative at the true fixed point, without the warning that
    ``value_and_grad`` gives.  A loop holding an effect is kept now (as JAX keeps
    equations whose jaxprs have effects)."""
    A = np.diag([1.5, 0.2])

    def loss(b):
        x = gradc.fixed_point(lambda x, b: A @ x + b, np.zeros(2), b, maxiter=50)
        return np.sum(x)
    with pytest.warns(gradc.ConvergenceWarning, match="fixed_point after 50 steps"):
        g = gradc.grad(loss, target=target)(np.ones(2))
    np.testing.assert_allclose(g, 1.0 / (1.0 - np.diag(A)), rtol=1e-12)   # (I - A)^-T 1


# ---------------------------------------------------------------- argmin

def test_argmin_unconstrained_matches_closed_form_derivative():
    # x* solves (x - t)^3 + x = 0 elementwise: dx/dt = 3(x-t)^2 / (3(x-t)^2 + 1)
    def obj(x, t):
        return np.sum((x - t) ** 4) / 4 + np.sum(x ** 2) / 2

    t = np.array([0.3, -0.5, 1.2])
    w = np.arange(1.0, 4.0)
    x = gradc.argmin(obj, np.zeros(3), t)
    assert np.abs((x - t) ** 3 + x).max() < 1e-10
    d = 3 * (x - t) ** 2
    g = gradc.grad(lambda t: np.sum(gradc.argmin(obj, np.zeros(3), t) * w))(t)
    assert np.abs(g - w * d / (d + 1)).max() < 1e-9


def qp_setup(rng, n=4, m=3):
    L = rng.standard_normal((n, n))
    Q = L @ L.T + np.eye(n)
    G, h = rng.standard_normal((m, n)), rng.standard_normal(m) * 0.1 + 0.2
    A, b = rng.standard_normal((1, n)), rng.standard_normal(1)
    return Q, G, h, A, b


def test_argmin_qp_equals_kkt_of_the_active_set():
    rng = np.random.default_rng(1)
    Q, G, h, A, b = qp_setup(rng)
    n = Q.shape[0]
    q0 = rng.standard_normal(n) * 3
    w = np.arange(1.0, n + 1)

    def qp(q, h):
        return gradc.argmin(lambda x, q, h: 0.5 * x @ Q @ x + q @ x, np.zeros(n), q, h,
                            constraints=dict(eq=lambda x, q, h: A @ x - b,
                                             ineq=lambda x, q, h: G @ x - h))

    x = qp(q0, h)
    assert (G @ x - h).max() < 1e-10 and abs(A @ x - b).max() < 1e-10
    active = np.abs(G @ x - h) < 1e-9
    assert 0 < active.sum() < len(h)              # a real inequality constraint is active
    C = np.vstack([A, G[active]])
    K = np.block([[Q, C.T], [C, np.zeros((len(C), len(C)))]])

    def exact(q, hh):
        rhs = np.concatenate([-q, b, hh[active]])
        return np.linalg.solve(K, rhs)[:n] @ w

    assert np.abs(np.linalg.solve(K, np.concatenate([-q0, b, h[active]]))[:n] - x).max() < 1e-9
    gq, gh = gradc.grad(lambda q, h: qp(q, h) @ w, argnums=(0, 1))(q0, h)
    assert np.abs(gq - fd(lambda q: exact(q, h), q0)).max() < 1e-7
    assert np.abs(gh - fd(lambda hh: exact(q0, hh), h)).max() < 1e-7
    assert np.abs(gh[~active]).max() == 0.0        # inactive constraints: no influence
    ref = scipy.optimize.minimize(lambda x: 0.5 * x @ Q @ x + q0 @ x, np.zeros(n),
                                  constraints=[dict(type="eq", fun=lambda x: A @ x - b),
                                               dict(type="ineq", fun=lambda x: h - G @ x)])
    assert np.abs(ref.x - x).max() < 1e-5


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_qp_with_a_constraint_at_its_boundary_and_no_force(target):
    """(Seed QA: an inequality active with multiplier 0, x* on its boundary exactly where
    the unconstrained minimum is, made the KKT row λ ∇g dy + g dλ zero: a singular system,
    BiCGSTAB unconverged, a gradient that was neither one-sided derivative.)  Such a
    constraint counts as inactive: the derivative of the directions that keep it so."""
    Q, q = 2.0 * np.eye(3), np.array([-1.0, 0.5, 0.2])     # unconstrained x = -q / 2
    c = np.array([0.3, -1.0, 0.7])

    def loss(q, h):
        x = gradc.argmin(lambda x, q: 0.5 * x @ Q @ x + q @ x, np.zeros(3), q,
                         constraints=dict(ineq=lambda x, q: x[:2] - h))
        return x @ c
    h = np.array([0.5, 1.0])            # x0 <= 0.5: on the boundary, no force; x1 inactive
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.ConvergenceWarning)
        g = gradc.grad(loss, target=target)(q, h)
        _, t = gradc.jvp(lambda q: loss(q, h), (q,), (c,), target=target)
    np.testing.assert_allclose(g, -c / 2, rtol=1e-8)
    np.testing.assert_allclose(t, -c @ c / 2, rtol=1e-8)
    # one-sided: the direction that moves the unconstrained minimum inside the constraint
    e = np.array([1e-6, 0.0, 0.0])
    assert abs((loss(q + e, h) - loss(q, h)) / 1e-6 - g[0]) < 1e-6


def test_argmin_bad_constraints():
    with pytest.raises(ArgumentError, match="'eq'.*'ineq'"):
        gradc.argmin(lambda x: np.sum(x ** 2), np.ones(2), constraints=dict(le=None))
    # (QA: Python's TypeErrors from inside the solver, no line)
    with pytest.raises(ArgumentError, match=r"constraints\['eq'\] must be a function") as e:
        gradc.argmin(lambda x: np.sum(x ** 2), np.ones(2), constraints={"eq": 3})
    assert __file__ in str(e.value)
    with pytest.raises(ArgumentError, match="constraints must be a dict.*got a list"):
        gradc.argmin(lambda x: np.sum(x ** 2), np.ones(2), constraints=[lambda x: x])


def test_fixed_point_bad_function_and_maxiter():
    """(QA) f returning a tuple was a TracerLeakError ("escaped its trace"); maxiter=0
    said the iteration diverged."""
    with pytest.raises(ArgumentError, match="returns a tuple; it must return one array"):
        gradc.fixed_point(lambda x: (x, x), np.zeros(2))
    for bad in (0, -1, 2.5, None):
        with pytest.raises(ArgumentError, match="maxiter is the most iterations"):
            gradc.fixed_point(np.cos, np.zeros(2), maxiter=bad)


# ---------------------------------------------------------------- decompositions

def _decomp_cases(rng):
    S = spd(rng, 4)
    W = rng.standard_normal((4, 4))
    return {
        "cholesky": (lambda A: np.sum(np.sin(np.linalg.cholesky(A)) * W), S),
        "eigh": (lambda A: np.sum(np.linalg.eigh(A)[0] ** 3)
                 + np.sum(np.linalg.eigh(A)[1] ** 4 * W), S + np.diag(np.arange(4.0))),
        "svd tall": (lambda A: np.sum(np.linalg.svd(A, full_matrices=False)[1] ** 3)
                     + np.sum(np.linalg.svd(A, full_matrices=False)[0] ** 4)
                     + np.sum(np.linalg.svd(A, full_matrices=False)[2] ** 4),
                     rng.standard_normal((5, 3))),
        "svd wide": (lambda A: np.sum(np.linalg.svd(A, full_matrices=False)[0] ** 4)
                     + np.sum(np.linalg.svd(A, full_matrices=False)[2] ** 4)
                     + np.sum(np.linalg.svd(A, compute_uv=False)),
                     rng.standard_normal((3, 5))),
        "svd square": (lambda A: np.sum(np.linalg.svd(A)[0] ** 4 * W), rng.standard_normal((4, 4))),
        "qr tall": (lambda A: np.sum(np.linalg.qr(A).Q ** 3) + np.sum(np.linalg.qr(A).R ** 3),
                    rng.standard_normal((5, 3))),
        "qr wide": (lambda A: np.sum(np.linalg.qr(A)[0] ** 3) + np.sum(np.linalg.qr(A)[1] ** 3),
                    rng.standard_normal((3, 5))),
        "qr square": (lambda A: np.sum(np.linalg.qr(A)[0] * W) + np.sum(np.linalg.qr(A)[1] ** 2),
                      rng.standard_normal((4, 4))),
        "inv": (lambda A: np.sum(np.linalg.inv(A) * W), S),
        "det": (lambda A: np.linalg.det(A), S / 4),
        "slogdet": (lambda A: np.linalg.slogdet(A)[1], S),
        "solve": (lambda A: np.sum(np.linalg.solve(A, W[0]) ** 2), S),
    }


@pytest.mark.parametrize("name", ["cholesky", "eigh", "svd tall", "svd wide", "svd square",
                                  "qr tall", "qr wide", "qr square", "inv", "det", "slogdet",
                                  "solve"])
def test_decompositions_against_fd_and_forward_mode(rng, name):
    f, A = _decomp_cases(rng)[name]
    g = gradc.grad(f)(A)
    assert np.abs(g - fd(f, A, 1e-5)).max() < 1e-6 * max(1.0, np.abs(g).max())
    u = rng.standard_normal(A.shape)
    _, jv = gradc.jvp(f, (A,), (u,))
    assert abs(jv - np.sum(g * u)) < 1e-10 * max(1.0, abs(jv))


def _cofactors_by_minors(m):
    n = len(m)
    if n == 1:
        return np.ones((1, 1))
    return np.array([[(-1) ** (i + j) * np.linalg.det(np.delete(np.delete(m, i, 0), j, 1))
                      for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("target", ["numpy", "cpu", "parallel"])
def test_det_gradient_at_singular_matrices_is_the_cofactor_matrix(rng, target):
    """d det A = Σ cof(A) ∘ dA holds at singular A too (JAX's and PyTorch's gradients):
    rank n − 1 gives the adjugate's rank-one matrix (from the SVD where det A is exactly
    0), lower ranks zero; near-singular matrices (det A · A⁻ᵀ) agree with the minors, and
    so does a stack with one singular matrix, jvp as well as grad."""
    cases = [np.array([[1.0, 2.0], [2.0, 4.0]]),
             np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]]),    # rank 2
             np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 2.0]),                       # rank 1
             np.zeros((3, 3)), np.zeros((1, 1)),
             rng.standard_normal((4, 3)) @ rng.standard_normal((3, 4))]         # ≈ rank 3
    g = gradc.grad(lambda a: np.linalg.det(a), target=target)
    for a in cases:
        want = _cofactors_by_minors(a)
        np.testing.assert_allclose(g(a), want, rtol=0, atol=1e-13 * max(1, np.abs(a).max()) ** 3)
        u = rng.standard_normal(a.shape)
        _, jv = gradc.jvp(lambda a: np.linalg.det(a), (a,), (u,), target=target)
        assert abs(jv - np.sum(want * u)) < 1e-12 * max(1.0, np.abs(want).max()) * a.size
    stack = np.stack([cases[1], rng.standard_normal((3, 3)), cases[2]])
    got = gradc.grad(lambda a: np.sum(np.linalg.det(a)), target=target)(stack)
    np.testing.assert_allclose(got, [_cofactors_by_minors(m) for m in stack], atol=1e-12)


def test_decompositions_compiled(rng):
    cases = _decomp_cases(rng)
    for name in ("cholesky", "eigh", "svd tall", "qr tall", "qr wide"):
        f, A = cases[name]
        with warnings.catch_warnings():
            warnings.simplefilter("error", gradc.GradcWarning)
            g = gradc.grad(f, target="cpu")(A)
        assert np.abs(g - gradc.grad(f, target="numpy")(A)).max() < 1e-10


def _named_results(A):
    q, e = np.linalg.qr(A), np.linalg.eigh(A.T @ A)
    s, d = np.linalg.svd(A, full_matrices=False), np.linalg.slogdet(A.T @ A)
    return (q.Q, q.R, e.eigenvalues, e.eigenvectors, s.U, s.S, s.Vh, d.sign, d.logabsdet)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_decompositions_give_numpys_named_results(rng, target):
    A = rng.standard_normal((5, 3))
    got, want = gradc.jit(_named_results, target=target)(A), _named_results(A)
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, err_msg=f"result {k}")
    assert type(gradc.jit(np.linalg.qr)(A)) is type(np.linalg.qr(A))


def test_qr_second_derivatives_batches_and_float32(rng):
    A = rng.standard_normal((4, 3))

    def f(A):
        return np.sum(np.linalg.qr(A).R ** 3) + np.sum(np.linalg.qr(A).Q[:, :2] ** 3)

    g = gradc.grad(f)
    h = gradc.hessian(f)(A).reshape(12, 12)
    assert np.abs(h - h.T).max() < 1e-9 * np.abs(h).max()
    v = rng.standard_normal(A.shape)
    hv_fd = (g(A + 1e-5 * v) - g(A - 1e-5 * v)) / 2e-5
    assert np.abs(h @ v.ravel() - hv_fd.ravel()).max() < 1e-6 * np.abs(h).max()
    stack = rng.standard_normal((3, 4, 3))
    batched = gradc.vmap(g)(stack)
    assert np.abs(batched - np.stack([g(a) for a in stack])).max() < 1e-12
    a32 = A.astype(np.float32)
    q, r = gradc.jit(np.linalg.qr, target="cpu")(a32)
    assert q.dtype == r.dtype == np.float32
    np.testing.assert_allclose(q @ r, a32, atol=1e-5)
    np.testing.assert_allclose(gradc.grad(f, target="cpu")(a32), g(A), rtol=1e-3, atol=1e-3)


def test_qr_refuses_non_unique_modes():
    with pytest.raises(gradc.UnsupportedError, match="mode='reduced'"):
        gradc.grad(lambda A: np.sum(np.linalg.qr(A, mode="complete")[0]))(np.ones((3, 2)))
    with pytest.raises(gradc.UnsupportedError, match="'raw' is LAPACK"):
        gradc.jit(lambda A: np.linalg.qr(A, mode="raw"))(np.ones((3, 2)))
    with pytest.raises(gradc.ShapeError, match="expected matrices"):
        gradc.jit(np.linalg.qr)(np.ones(3))


def test_repeated_eigenvalues_give_finite_basis_independent_derivatives():
    A = np.diag([1.0, 2.0, 2.0, 3.0])
    P = np.zeros((4, 4))
    P[1:3, 1:3] = 1.0

    def f(A):               # the projector onto the repeated eigenspace: basis-independent
        w, V = np.linalg.eigh(A)
        return np.sum(w ** 2) + np.sum((V[:, 1:3] @ V[:, 1:3].T) * P)

    g = gradc.grad(f)(A)
    assert np.all(np.isfinite(g))
    assert np.abs(g - np.diag([2.0, 4.0, 4.0, 6.0])).max() < 1e-12
    s_only = gradc.grad(lambda A: np.sum(np.linalg.svd(A, compute_uv=False)))(np.eye(3))
    assert np.abs(s_only - np.eye(3)).max() < 1e-12
    with pytest.raises(gradc.UnsupportedError, match="full_matrices=False"):
        gradc.grad(lambda A: np.sum(np.linalg.svd(A)[0]))(np.ones((3, 2)))


# ---------------------------------------------------------------- inspection

def test_show_lists_the_solver_regions(rng):
    W, U, x = deq_setup(rng, 3)
    out = io.StringIO()
    gradc.show(gradc.grad(lambda x: deq(W, U, x), target="numpy"), x, file=out)
    text = out.getvalue()
    assert "# solver regions" in text
    assert "root[fixed_point]" in text and "implicit function theorem" in text
    assert "linear_solve by bicgstab" in text
    assert "linear_solve[" in text and "matvec=" in text        # in the derivative IR
    out = io.StringIO()
    A = spd(rng, 3)
    gradc.show(gradc.grad(lambda b: np.sum(np.linalg.solve(A, b) ** 2), target="numpy"),
               np.ones(3), file=out)
    assert "solve (np.linalg.solve)" in out.getvalue()


# ---------------------------------------------------------------- the examples

def _example(name):
    import runpy
    from pathlib import Path
    return runpy.run_path(str(Path(__file__).parent.parent / "examples" / f"{name}.py"))


def test_example_gaussian_crf():
    history, g, g_dense = _example("gaussian_crf")["main"](n=120, steps=8, verbose=False)
    assert history[-1] < history[0]
    assert abs(g - g_dense) < 1e-8


def test_example_deq():
    history, gap = _example("deq")["main"](hidden=4, steps=4, verbose=False)
    assert history[-1] < history[0] and gap < 1e-8


def test_example_ridge_tuning():
    history, g, g_exact = _example("ridge_tuning")["main"](n=8, m=12, steps=4, verbose=False)
    assert history[-1] < history[0]
    assert abs(g - g_exact) < 1e-7 * max(1.0, abs(g_exact))


def test_example_optnet_qp():
    history, g, g_exact = _example("optnet_qp")["main"](steps=4, verbose=False)
    assert history[-1] < history[0]
    assert np.abs(g - g_exact).max() < 1e-8


def test_implicit_gradient_memory_does_not_grow_with_the_iterations():
    """W8's memory point, with the interpreter (tracemalloc sees NumPy's allocations):
    exactly K iterations (tol unreachable); the implicit gradient's peak is the same for
    K = 50 and 400, the unrolled one stores a vector per iteration."""
    import tracemalloc
    from gradc.lib.solvers import Method
    n = 50
    rng = np.random.default_rng(0)
    W = rng.standard_normal((n, n))
    W = (W + W.T) / np.linalg.norm(W + W.T, 2)
    u = 0.1 * rng.standard_normal(n)

    def peak(K, implicit):
        def loss(W, u):
            z = gradc.fixed_point(lambda z, W, u: np.tanh(0.9 * (W @ z) + u), np.zeros(n),
                                  W, u, tol=1e-300, maxiter=K, implicit=implicit,
                                  solve=Method("bicgstab", 1e-10))
            return np.sum(z ** 2)
        g = gradc.grad(loss, target="numpy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gradc.ConvergenceWarning)
            g(W, u)
            tracemalloc.start()
            g(W, u)
            top = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return top

    implicit = [peak(K, True) for K in (50, 400)]
    unrolled = [peak(K, False) for K in (50, 400)]
    assert abs(implicit[1] - implicit[0]) < 0.05 * implicit[0]
    assert unrolled[1] - unrolled[0] > 350 * n * 8 * 0.9      # a vector per extra step


def test_vmap_of_solver_regions_and_decompositions(rng):
    """vmap batches linear_solve and the decompositions (by a loop over the examples)."""
    A = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    B = rng.standard_normal((3, 4))
    xs = gradc.vmap(lambda b: gradc.linear_solve(lambda v: A @ v, b))(B)
    assert np.abs(xs - np.linalg.solve(A, B.T).T).max() < 1e-10

    def g(b):
        return np.sum(np.linalg.svd(np.outer(b, b) + A, compute_uv=False))

    per_example = np.stack([gradc.grad(g)(b) for b in B])
    assert np.abs(gradc.vmap(gradc.grad(g))(B) - per_example).max() < 1e-12


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_cholesky_upper_reads_the_upper_triangle_and_stacks_factor(rng, target):
    """(QA: cholesky(a, upper=True) factored the lower triangle and transposed it: wrong
    where the triangles differ, with the gradient in the lower triangle; stacks of
    matrices were refused by cholesky and eigh.)"""
    S = spd(rng, 3)
    N = S.copy()
    N[2, 0] = 9.0                          # (the lower triangle is not positive definite)
    up = gradc.jit(lambda a: np.linalg.cholesky(a, upper=True), target=target)
    np.testing.assert_allclose(up(N), np.linalg.cholesky(N, upper=True), rtol=1e-12)

    def f(a):
        return np.sum(np.sin(np.linalg.cholesky(a, upper=True)))
    g = gradc.grad(f, target=target)(S)
    np.testing.assert_allclose(g, fd(f, S, 1e-6), rtol=1e-6, atol=1e-9)
    assert not np.tril(g, -1).any()
    B = np.stack([S, 2 * S + np.eye(3)])
    np.testing.assert_allclose(gradc.jit(np.linalg.cholesky, target=target)(B),
                               np.linalg.cholesky(B), rtol=1e-12)
    np.testing.assert_allclose(gradc.jit(np.linalg.eigvalsh, target=target)(B),
                               np.linalg.eigvalsh(B), rtol=1e-12)
    np.testing.assert_allclose(
        gradc.jit(lambda a: np.linalg.eigvalsh(a, UPLO="U"), target=target)(N),
        np.linalg.eigvalsh(N, UPLO="U"), rtol=1e-12)


@pytest.mark.parametrize("solve", ["cg", "bicgstab", "gmres"])
def test_float32_solves_of_moderate_condition_do_not_warn(solve):
    """(QA) BiCGSTAB and GMRES in float32 stall at about eps |A| |x|, above float32's
    10 eps |b| on any system of condition 100 or more: they warned "did not converge"
    at every call (BiCGSTAB in 5 of 5 systems of condition 100) with results as good as
    float32 allows.  The report now allows 10 eps (|A| |x| + |b|), |A| estimated from
    the iterations' products (the normwise backward error); a solve that really stopped
    short still warns."""
    rng = np.random.default_rng(3)
    n = 30
    for cond in (1e2, 1e3):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        a = (q @ np.diag(np.logspace(0, np.log10(cond), n)) @ q.T).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        exact = np.linalg.solve(a.astype(float), b.astype(float))
        with warnings.catch_warnings():
            warnings.simplefilter("error", gradc.ConvergenceWarning)
            x = gradc.linear_solve(lambda v: a @ v, b, solve=solve, symmetric=True)
        assert x.dtype == np.float32
        assert np.abs(x - exact).max() <= 30 * cond * 1.2e-7 * np.abs(exact).max()
    with pytest.warns(gradc.ConvergenceWarning, match="did not converge"):
        gradc.linear_solve(lambda v: a @ v, b, solve=solve, symmetric=True, maxiter=3)


def test_convergence_warnings_point_at_the_users_line():
    """(QA) A ConvergenceWarning was attributed to gradc's own file (prims/implicit.py,
    or kernels.py from compiled code), so Python showed gradc's line under it and
    ``filterwarnings(module=...)`` could not select the user's module."""
    a = np.array([[3.0, 1.0], [1.0, 2.0]])
    for target in ("numpy", "cpu"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = inspect.currentframe().f_lineno + 1
            gradc.jit(lambda b: gradc.linear_solve(lambda v: a @ v, b, maxiter=1),
                      target=target)(np.ones(2))
        found = [w for w in caught if issubclass(w.category, gradc.ConvergenceWarning)]
        assert len(found) == 1
        assert found[0].filename == __file__ and found[0].lineno == line, (
            target, found[0].filename, found[0].lineno)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_the_transposed_solves_warning_points_at_the_users_solve(target):
    """A gradient's transposed solve is made while the gradient is derived: its warning
    named the line that asked for the gradient (or a frame of ``functools`` inside
    gradc), not the user's ``linear_solve``, as the forward solve's does."""
    a = np.array([[3.0, 1.0], [1.0, 2.0]])

    def loss(b):
        return np.sum(gradc.linear_solve(lambda v: a @ v, b, maxiter=1) ** 2)
    line = loss.__code__.co_firstlineno + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradc.grad(loss, target=target)(np.ones(2))
    found = [w for w in caught if issubclass(w.category, gradc.ConvergenceWarning)]
    assert len(found) == 2
    assert [(w.filename, w.lineno) for w in found] == [(__file__, line)] * 2


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_argmins_warning_points_at_the_users_argmin(target):
    """(QA) argmin's ConvergenceWarning comes at run time from its callback: it was
    attributed to gradc's prims/implicit.py and named the jit or grad call's line."""
    def loss(p):
        return np.sum(gradc.argmin(lambda x, p: np.sum((x - p) ** 4), np.zeros(2), p,
                                   maxiter=2) ** 2)
    line = loss.__code__.co_firstlineno + 1
    for make in (gradc.jit, gradc.grad):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make(loss, target=target)(np.ones(2))
        found = [w for w in caught if issubclass(w.category, gradc.ConvergenceWarning)]
        assert found and all((w.filename, w.lineno) == (__file__, line) for w in found)
        assert all(f"test_implicit.py:{line}:" in str(w.message) for w in found)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_gmres_on_an_inconsistent_singular_system_names_gmres(target):
    """(QA) GMRES on a singular, inconsistent system (a Gaussian CRF from a bare graph
    Laplacian) failed inside its small triangular solve with LAPACK's "Singular
    matrix", naming neither GMRES nor ridge=; now it stalls and warns, and an enormous
    x (a small backward error on a singular system) does not pass as converged."""
    s = np.array([[1.0, 2.0], [2.0, 4.0]])
    b = np.array([1.0, 1.0])
    with pytest.warns(gradc.ConvergenceWarning, match="gmres(.|\n)*ridge="):
        gradc.jit(lambda b: gradc.linear_solve(lambda v: s @ v, b, solve="gmres"),
                  target=target)(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.ConvergenceWarning)
        x = gradc.linear_solve(lambda v: s @ v + 0.1 * v, b, solve="gmres")
    np.testing.assert_allclose(x, np.linalg.solve(s + 0.1 * np.eye(2), b), rtol=1e-9)


def test_solver_diagnostics_from_the_qa_sweep():
    """(QA) GMRES in float32 crashed (a float64 term promoted its small solve); the
    default tol 1e-10, below float32's precision, warned at every float32 call; an
    unbounded argmin returned -8e12 without a warning (converged relative to |x|); an
    implicit_diff solver returning a non-root gave its derivative silently; keyword
    arguments of an implicit_diff solver were a TypeError."""
    A = np.array([[3.0, 1.0], [0.5, 2.0]], np.float32)
    b = np.array([1.0, 2.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.ConvergenceWarning)
        for solve in ("gmres", "bicgstab"):
            x = gradc.jit(lambda b: gradc.linear_solve(lambda v: A @ v, b, solve=solve))(b)
            assert x.dtype == np.float32
            np.testing.assert_allclose(x, np.linalg.solve(A.astype(float), b), atol=1e-6)
        x = gradc.fixed_point(lambda x, b: 0.5 * x + b, np.zeros(2, np.float32), b)
        np.testing.assert_allclose(x, 2 * b, rtol=1e-6)
    with pytest.warns(gradc.ConvergenceWarning, match="may be unbounded below"):
        gradc.argmin(lambda x: np.sum(x), np.zeros(2))

    @gradc.implicit_diff(lambda y, a: y ** 3 + y - a)
    def halves(y0, a):
        return a / 2                     # not a root of y³ + y − a

    @gradc.implicit_diff(lambda y, a: y ** 3 + y - a)
    def newton(y0, a):
        y = np.array(y0, float)
        for _ in range(50):
            y = y - (y ** 3 + y - a) / (3 * y ** 2 + 1)
        return y
    a = np.array([1.0, 2.0])
    with pytest.warns(gradc.ConvergenceWarning, match="optimality function is not 0"):
        gradc.grad(lambda a: np.sum(halves(np.zeros(2), a)))(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.ConvergenceWarning)
        g = gradc.grad(lambda a: np.sum(newton(np.zeros(2), a=a)))(a)
    y = newton(np.zeros(2), a)
    np.testing.assert_allclose(g, 1 / (3 * y ** 2 + 1), rtol=1e-10)


def test_fixed_point_says_when_f_changes_the_shape_or_dtype():
    """(Seed QA: the error named gradc's inside, "while_loop: the body changes leaf 0 from
    f64[2] to f32[2]" or "the optimality function returns shape (1, 2)", not f; a
    float32 x0 with float64 weights in f is the common case.)"""
    x = np.ones(2)
    with pytest.raises(ArgumentError, match=r"fixed_point: f\(x, \*params\) returns shape "
                       r"\(2,\) float32; it must return \(2,\) float64"):
        gradc.fixed_point(lambda z, x: np.tanh(0.5 * z + x).astype(np.float32), np.zeros(2), x)
    with pytest.raises(ArgumentError, match=r"fixed_point: f\(x, \*params\) returns shape "
                       r"\(1, 2\) float64"):
        gradc.grad(lambda x: np.sum(gradc.fixed_point(lambda z, x: np.tanh(0.5 * z + x)[None],
                                                      np.zeros(2), x)))(x)
    W = np.eye(2) * 0.5
    with pytest.raises(ArgumentError, match=r"returns shape \(2,\) float64; it must return "
                       r"\(2,\) float32"):
        gradc.fixed_point(lambda z: np.tanh(W @ z + 1.0), np.zeros(2, np.float32),
                          implicit=False)


def test_constrained_argmin_inside_a_scan():
    """(QA: an OptNet QP inside gradc.scan was "argmin with constraints needs concrete
    values": the number of constraints is now found from shapes.)  Values and gradient
    through the loop against the per-step calls and central differences."""
    Q = np.array([[2.0, 0.5], [0.5, 1.0]])

    def qp(p):
        return gradc.argmin(lambda x, p: 0.5 * x @ Q @ x + p @ x, np.zeros(2), p,
                            constraints={"eq": lambda x, p: np.sum(x) - 1.0,
                                         "ineq": lambda x, p: -x})

    def loop(ps):
        return gradc.scan(lambda c, p: (c + np.sum(qp(p) ** 2), None), 0.0, ps)[0]
    ps = np.array([[1.0, -1.0], [0.2, 0.3]])
    f = gradc.jit(loop)
    np.testing.assert_allclose(f(ps), sum(np.sum(qp(q) ** 2) for q in ps), rtol=1e-10)
    g = gradc.grad(loop)(ps)
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        e = np.zeros_like(ps)
        e[i, j] = 1e-6
        assert abs((f(ps + e) - f(ps - e)) / 2e-6 - g[i, j]) < 1e-7


def test_a_convergence_warning_is_given_once_per_call():
    """(QA: the first call of a jit warned twice: once while tracing, when the trace's
    values are computed, and once when the program ran.)"""
    A = np.array([[3.0, 1.0], [0.5, 2.0]])
    b = np.ones(2)
    for target in ("cpu", "numpy"):
        f = gradc.jit(lambda b: gradc.linear_solve(lambda v: A @ v, b, maxiter=1),
                      target=target)
        for _ in range(2):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                f(b)
            assert len([w for w in caught if issubclass(w.category,
                                                        gradc.ConvergenceWarning)]) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradc.jit(lambda: gradc.argmin(lambda x: np.sum(x), np.zeros(2)))()
    assert len(caught) == 1 and "unbounded" in str(caught[0].message)


def test_implicit_diff_keywords_bind_as_the_solvers_signature():
    """(Review: keywords were bound by position up to the first one not given, so
    solver(y0, a, c=1.0) dropped c: wrong value, zero gradient; keyword-only ones were
    a TypeError.)"""
    opt = lambda y, a, b=1.0, c=0.0: b * (y - a) + c          # noqa: E731

    @gradc.implicit_diff(opt)
    def solver(y0, a, b=1.0, c=0.0):
        return a - c / b

    @gradc.implicit_diff(lambda y, a, *, s: s * y - a)
    def scaled(y0, a, *, s):
        return a / s
    a = np.array([1.0, 2.0])
    np.testing.assert_allclose(solver(np.zeros(2), a, c=1.0), a - 1.0)
    assert gradc.grad(lambda c: np.sum(solver(np.zeros(2), a, c=c)))(1.0) == -2.0
    np.testing.assert_allclose(scaled(np.zeros(2), a, s=4.0), a / 4)
    np.testing.assert_allclose(gradc.grad(lambda s: np.sum(scaled(np.zeros(2), a, s=s)))(4.0),
                               -np.sum(a) / 16)
    with pytest.raises(gradc.ArgumentError, match="solver: .*unexpected keyword"):
        solver(np.zeros(2), a, d=1.0)
    # (a root rounded correctly, far from 1, is not reported: the check's scale is F's)
    @gradc.implicit_diff(lambda y, p: y * y - p)
    def root2(y0, p):
        return np.sqrt(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = np.array([2e8, 3e8, 5e8, 7e8])
        np.testing.assert_allclose(root2(np.sqrt(p), p), np.sqrt(p))


def test_implicit_diff_solver_given_the_same_array_twice():
    """(Seed QA: the root's inputs are its parameters without repeats, so a solver called
    as solver(y0, a, a) was given one a: "root failed on these values: StopIteration".)"""
    @gradc.implicit_diff(lambda y, a, b: y - np.tanh(a * y + b))
    def solve(y0, a, b):
        y = np.array(y0, float)
        for _ in range(200):
            y = np.tanh(a * y + b)
        return y

    def loss(a):
        return np.sum(solve(np.zeros(2), a, a))
    a = np.array([0.3, 0.5])
    np.testing.assert_allclose(gradc.grad(loss)(a), fd(loss, a), rtol=1e-7)


def test_argmin_objective_and_constraints_may_read_traced_values(rng):
    """(Seed QA: an objective or constraint closing over a value being differentiated,
    lambda x: 0.5 * x @ Q @ x + q @ x in grad w.r.t. Q, was given to the SciPy solver
    with the traced values appended to its parameters: "root failed on these values:
    unflatten: 1 leaves left over".)  They become parameters of the solver region."""
    n = 3
    Q, q = spd(rng, n), rng.standard_normal(n)

    def loss(Q):
        return np.sum(gradc.argmin(lambda x: 0.5 * x @ Q @ x + q @ x, np.zeros(n)))
    x = -np.linalg.solve(Q, q)
    w = np.linalg.solve(Q, np.ones(n))
    # (only Q's symmetric part enters the objective)
    np.testing.assert_allclose(gradc.grad(loss)(Q), -0.5 * (np.outer(w, x) + np.outer(x, w)),
                               rtol=1e-7, atol=1e-9)
    # the right-hand side of active inequalities, read by the constraint: x* moves with it
    G = np.eye(n)[:2]
    h = x[:2] - 1.0

    def qp(h):
        return gradc.argmin(lambda x: 0.5 * x @ Q @ x + q @ x, np.zeros(n),
                            constraints=dict(ineq=lambda x: G @ x - h))
    C = np.block([[Q, G.T], [G, np.zeros((2, 2))]])
    dx_dh = np.linalg.inv(C)[:n, n:]                 # both constraints active
    np.testing.assert_allclose(gradc.jit(qp)(h)[:2], h, atol=1e-9)
    np.testing.assert_allclose(gradc.jacrev(qp)(h), dx_dh, rtol=1e-6, atol=1e-9)


def test_argmin_of_a_scalar_or_a_matrix():
    """(Seed QA: x0 of any shape but a vector was refused, "argmin: x0 must be a
    vector": a scalar threshold, a matrix of weights.)  Solved as a vector, returned in
    x0's shape; the derivative is the implicit one."""
    def g(a):
        return gradc.argmin(lambda x, a: (x - a) ** 2 + x ** 4, 0.0, a)
    x = g(0.5)
    assert np.shape(x) == () and abs(2 * (x - 0.5) + 4 * x ** 3) < 1e-8
    assert abs(gradc.grad(g)(0.5) - 2 / (2 + 12 * x ** 2)) < 1e-8

    def h(A):
        X = gradc.argmin(lambda X, A: np.sum((X - A) ** 2) + np.sum(X ** 4), np.zeros((2, 2)),
                         A, constraints=dict(ineq=lambda X, A: X[0] - 0.1))
        return np.sum(X * np.arange(4.0).reshape(2, 2))
    A = np.array([[1.0, 0.05], [0.3, -0.2]])        # X[0, 0] held at 0.1, the rest free
    np.testing.assert_allclose(gradc.grad(h)(A), fd(h, A), rtol=1e-6, atol=1e-6)


def test_a_zero_d_python_solver_result_compiles():
    """``implicit_diff`` with a 0-d result on the CPU target: the callback's result is a
    scalar for its object-mode block (``np.ascontiguousarray`` made it shape (1,), which
    the block's declared float refused: a fallback to the interpreter, or a TypeError)."""
    def opt(y, a):
        return y * y - a

    @gradc.implicit_diff(opt, solve="dense")
    def sqrt_solver(init, a):
        return np.sqrt(a)

    def f(a):
        return np.tanh(sqrt_solver(np.ones(()), a) * 3.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error", gradc.GradcWarning)
        value = gradc.jit(f, target="cpu")(np.array(4.0))
        slope = gradc.grad(f, target="cpu")(np.array(4.0))
    assert value == pytest.approx(np.tanh(6.0), rel=1e-14)
    assert slope == pytest.approx(3.0 / (2.0 * 2.0) / np.cosh(6.0) ** 2, rel=1e-10)


def test_float32_argmin_converges_without_a_warning():
    """(Composition sweep) argmin in float32 warned "did not converge" at the default tol:
    the gradient it stopped at (6e-8 of 2.2 at the start) was float32's rounding, below
    its 1e-8 relative floor.  The floor is now what the dtype reaches, as the linear
    solvers' (``solvers.reachable``); the derivative matches float64's."""
    p = np.linspace(0.2, 0.8, 4)

    def f(p, constrained):
        kw = dict(constraints=dict(eq=lambda z, p: np.sum(z) - 1.0)) if constrained else {}
        z = gradc.argmin(lambda z, p: np.sum((z - p) ** 2) + 0.1 * np.sum(z ** 4),
                         np.zeros_like(p), p, **kw)
        return np.sum(np.sin(z))

    for constrained in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", gradc.ConvergenceWarning)
            g32 = gradc.grad(f)(p.astype(np.float32), constrained)
        g64 = gradc.grad(f)(p, constrained)
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, atol=1e-5)
