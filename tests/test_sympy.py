"""Scalar expressions differentiated by gradc and by SymPy, evaluated at the same points.

Each expression is written once as a SymPy expression in ``a`` and ``b`` and once as
NumPy code; first derivatives come from both reverse (``grad``) and forward (``jvp``)
mode, second derivatives from grad-of-grad and jvp-of-grad.
"""
import numpy as np
import pytest
import scipy.special as sc
import sympy as sp

import gradc

a, b = sp.symbols("a b", real=True)

EXPRESSIONS = {   # name: (sympy expression, NumPy function, domain of a, domain of b)
    "sin_ab_plus_a2": (sp.sin(a * b) + a ** 2,
                       lambda a, b: np.sin(a * b) + a ** 2, (-2, 2), (-2, 2)),
    "exp_log": (sp.exp(a) * sp.log(b), lambda a, b: np.exp(a) * np.log(b), (-1, 1), (0.5, 3)),
    "sqrt_quotient": (sp.sqrt(a ** 2 + b ** 2 + 1) / (1 + b ** 2),
                      lambda a, b: np.sqrt(a ** 2 + b ** 2 + 1) / (1 + b ** 2), (-2, 2), (-2, 2)),
    "tanh_mix": (sp.tanh(a - 2 * b) * b, lambda a, b: np.tanh(a - 2 * b) * b, (-1, 1), (-1, 1)),
    "arctan": (sp.atan(a * b + 1), lambda a, b: np.arctan(a * b + 1), (-2, 2), (-2, 2)),
    "arcsinh": (sp.asinh(a ** 3 - b), lambda a, b: np.arcsinh(a ** 3 - b), (-1, 1), (-1, 1)),
    "hypot": (sp.sqrt(a ** 2 + b ** 2), lambda a, b: np.hypot(a, b), (0.3, 2), (-2, -0.3)),
    "atan2": (sp.atan2(a, b), lambda a, b: np.arctan2(a, b), (-2, 2), (0.3, 2)),
    "pow_both": (a ** b, lambda a, b: a ** b, (0.5, 2), (-1.5, 1.5)),
    "pow_float": (sp.Pow(a, sp.Rational(5, 2)) * b, lambda a, b: a ** 2.5 * b, (0.5, 2), (-1, 1)),
    "division": ((a - b) / (a * b + 3), lambda a, b: (a - b) / (a * b + 3), (-1, 1), (-1, 1)),
    "nested": (sp.sin(sp.cos(sp.exp(a * b / 2))) * sp.log(1 + a ** 2),
               lambda a, b: np.sin(np.cos(np.exp(a * b / 2))) * np.log1p(a ** 2), (-1, 1), (-1, 1)),
    "logistic": (1 / (1 + sp.exp(-a * b)), lambda a, b: 1 / (1 + np.exp(-a * b)), (-2, 2), (-2, 2)),
    "cosh_sinh": (sp.cosh(a) ** 2 - sp.sinh(b) * a, lambda a, b: np.cosh(a) ** 2 - np.sinh(b) * a,
                  (-1, 1), (-1, 1)),
    "tan_arcsin": (sp.tan(a / 2) + sp.asin(b / 2), lambda a, b: np.tan(a / 2) + np.arcsin(b / 2),
                   (-1, 1), (-1, 1)),
    "arccos_arctanh": (sp.acos(a / 3) * sp.atanh(b / 2),
                       lambda a, b: np.arccos(a / 3) * np.arctanh(b / 2), (-1, 1), (-1, 1)),
    "cbrt_expm1": (sp.cbrt(a) * (sp.exp(b) - 1),
                   lambda a, b: np.cbrt(a) * np.expm1(b), (0.5, 2), (-1, 1)),
    "log_base": (sp.log(a, 2) + sp.log(b, 10),
                 lambda a, b: np.log2(a) + np.log10(b), (0.5, 3), (0.5, 3)),
    "logaddexp": (sp.log(sp.exp(a) + sp.exp(b)), lambda a, b: np.logaddexp(a, b), (-2, 2), (-2, 2)),
    "arccosh": (sp.acosh(a ** 2 + 1.5) * b,
                lambda a, b: np.arccosh(a ** 2 + 1.5) * b, (-1, 1), (-1, 1)),
    "square_recip": (a ** 2 / b + 1 / (a + 3), lambda a, b: np.square(a) / b + np.reciprocal(a + 3),
                     (-1, 1), (0.5, 2)),
    # scipy.special's ufuncs (gradc's erf/erfc/lgamma/digamma primitives)
    "erf_erfc": (sp.erf(a * b) + sp.erfc(a - b) ** 2,
                 lambda a, b: sc.erf(a * b) + sc.erfc(a - b) ** 2, (-1, 1), (-1, 1)),
    "gammaln_psi": (sp.loggamma(a ** 2 + b) * sp.digamma(b),
                    lambda a, b: sc.gammaln(a ** 2 + b) * sc.psi(b), (-1, 1), (0.5, 3)),
    "gammaln_negative": (sp.log(-sp.gamma(a - 2.5)) + b * sp.loggamma(b),   # (Γ < 0 there)
                         lambda a, b: sc.gammaln(a - 2.5) + b * sc.gammaln(b),
                         (0.1, 0.4), (0.5, 3)),
    "expit_ndtr": (1 / (1 + sp.exp(-a)) * (1 + sp.erf(b / sp.sqrt(2))) / 2,
                   lambda a, b: sc.expit(a) * sc.ndtr(b), (-3, 3), (-3, 3)),
    "gamma": (sp.gamma(a * b + 2) + sp.gamma(a - 1.5), lambda a, b: sc.gamma(a * b + 2)
              + sc.gamma(a - 1.5), (-0.4, 0.4), (-1, 1)),
    "ndtri_erfinv": (sp.sqrt(2) * sp.erfinv(2 * a - 1) + sp.erfinv(a * b),
                     lambda a, b: sc.ndtri(a) + sc.erfinv(a * b), (0.1, 0.9), (-0.9, 0.9)),
    "logit_xlogy": (sp.log(a / (1 - a)) + a * sp.log(b),
                    lambda a, b: sc.logit(a) + sc.xlogy(a, b), (0.1, 0.9), (0.5, 2)),
}


def _points(da, db, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return list(zip(rng.uniform(*da, n), rng.uniform(*db, n)))


def _sympy_at(expr, pa, pb):
    return float(expr.evalf(subs={a: pa, b: pb}, n=30))


@pytest.mark.parametrize("name", list(EXPRESSIONS))
def test_first_derivatives(name):
    expr, f, da, db = EXPRESSIONS[name]
    grads = [sp.diff(expr, v) for v in (a, b)]
    for pa, pb in _points(da, db):
        assert f(pa, pb) == pytest.approx(_sympy_at(expr, pa, pb), rel=1e-12)
        exact = [_sympy_at(g, pa, pb) for g in grads]
        reverse = gradc.grad(f, argnums=(0, 1))(pa, pb)
        np.testing.assert_allclose(reverse, exact, rtol=1e-10, atol=1e-12)
        for i in range(2):
            tangents = (1.0, 0.0) if i == 0 else (0.0, 1.0)
            _, forward = gradc.jvp(f, (pa, pb), tangents)
            assert forward == pytest.approx(exact[i], rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", list(EXPRESSIONS))
def test_second_derivatives(name):
    expr, f, da, db = EXPRESSIONS[name]
    hess = [[sp.diff(expr, u, v) for v in (a, b)] for u in (a, b)]
    for pa, pb in _points(da, db, n=2, seed=1):
        exact = np.array([[_sympy_at(h, pa, pb) for h in row] for row in hess])
        # reverse over reverse: each row is the gradient of one partial derivative
        for i in range(2):
            partial = gradc.grad(f, argnums=i)
            row = gradc.grad(partial, argnums=(0, 1))(pa, pb)
            np.testing.assert_allclose(row, exact[i], rtol=1e-9, atol=1e-10)
        # forward over reverse: the Hessian times each unit vector
        full = gradc.grad(f, argnums=(0, 1))
        for j in range(2):
            tangents = (1.0, 0.0) if j == 0 else (0.0, 1.0)
            _, column = gradc.jvp(full, (pa, pb), tangents)
            np.testing.assert_allclose(column, exact[:, j], rtol=1e-9, atol=1e-10)


def test_there_are_enough_expressions():
    assert len(EXPRESSIONS) >= 15


def test_symbols_are_named_after_the_traced_parameters():
    """(QA: a static int before an array took the array's name: ``f(n, x)`` gave n_0.)"""
    def f(n, x):
        return np.sum(x ** n)

    def h(x, n, y):
        return np.sum(x ** n) * y
    assert str(gradc.to_sympy(f)(3, np.array([0.5, 2.0]))) == "x_0**3 + x_1**3"
    assert str(gradc.to_sympy(h)(np.ones(2), 2, 0.5)) == "y*(x_0**2 + x_1**2)"


def test_a_python_if_gives_the_branch_taken():
    """(QA: a guard had no SymPy form, so a Python ``if`` dropped the SymPy rows of
    ``gradc.check`` with a reason about decompositions and solvers.)"""
    def f(x):
        return x[0] ** 2 if x[0] > 0 else -x[0]
    assert str(gradc.to_sympy(f)(np.array([0.5, 2.0]))) == "x_0**2"
    assert str(gradc.to_sympy(f)(np.array([-0.5, 2.0]))) == "-x_0"
    report = gradc.check(f, np.array([0.5, 2.0]), targets=("numpy",))
    assert report.ok and "sympy" in [row.reference for row in report.rows]


def test_keyword_arguments_are_symbols_by_their_names():
    """(QA: to_sympy took no keyword arguments, where .graph and make_graph do.)"""
    assert str(gradc.to_sympy(lambda x, s=1.0: x * s)(1.5, s=2.0)) == "s*x"
    grad = gradc.grad(lambda x, s=1.0: np.sum(x ** 2) * s)
    assert str(gradc.to_sympy(grad)(np.ones(2), s=2.0)) == "[2*s*x_0, 2*s*x_1]"


def test_to_sympy_keeps_the_structure_of_the_results():
    """(QA: the results came back flat, in the Graph's order: grad with has_aux gave
    (aux, grad), a dict of results a tuple, a 1-tuple its element.)"""
    x0, x1 = sp.symbols("x_0 x_1", real=True)

    def loss(x):
        return np.sum(x ** 2), {"first": 2.0 * x[0]}
    g, aux = gradc.to_sympy(gradc.grad(loss, has_aux=True))(np.array([1.0, 2.0]))
    assert g == sp.Array([2 * x0, 2 * x1])
    assert aux == {"first": 2 * x0}
    (value, aux2), g2 = gradc.to_sympy(gradc.value_and_grad(loss, has_aux=True))(
        np.array([1.0, 2.0]))
    assert value == x0 ** 2 + x1 ** 2 and aux2 == {"first": 2 * x0} and g2 == g

    x, y = sp.symbols("x y", real=True)
    out = gradc.to_sympy(lambda x, y: {"s": x * y, "t": (x + y, [x - y])})(1.0, 2.0)
    assert out == {"s": x * y, "t": (x + y, [x - y])}
    assert gradc.to_sympy(lambda x: (np.sin(x),))(1.0) == (sp.sin(x),)
    assert gradc.to_sympy(gradc.jit(lambda x: [x, 2.0 * x]))(1.0) == [x, 2 * x]
    # vmap's out_axes move the expressions too
    out = gradc.to_sympy(gradc.vmap(lambda x: {"a": np.sin(x)}, out_axes=1))(np.ones((2, 3)))
    assert out["a"].shape == (3, 2)
    assert out["a"][2, 1] == sp.sin(sp.Symbol("x_1_2", real=True))


def test_symbols_under_jacobians_are_named_after_the_parameters():
    """(QA: jacfwd, jacrev with a tuple of argnums and hessian wrap the function in a
    ``jac(*args)`` of their own, so their symbols were x0_0, x1_0, ... where grad's
    are x_0, w_0.)"""
    def f(x, w):
        return np.sin(x) * w

    def s(x, w):
        return np.sum(np.sin(x) * w)
    x = np.array([1.0, 2.0])
    x0, x1, w0, w1 = sp.symbols("x_0 x_1 w_0 w_1", real=True)
    for jac in (gradc.jacfwd(f), gradc.jacrev(f), gradc.jacobian(f),
                gradc.jit(gradc.jacfwd(f))):
        assert gradc.to_sympy(jac)(x, x) == sp.Array([[w0 * sp.cos(x0), 0],
                                                      [0, w1 * sp.cos(x1)]])
    jx, jw = gradc.to_sympy(gradc.jacfwd(f, argnums=(0, 1)))(x, x)
    assert jw == sp.Array([[sp.sin(x0), 0], [0, sp.sin(x1)]])
    assert gradc.to_sympy(gradc.hessian(s))(x, x) == sp.Array(
        [[-w0 * sp.sin(x0), 0], [0, -w1 * sp.sin(x1)]])
    assert [str(v) for v in gradc.to_sympy(gradc.hessian(s)).symbols(x, x)[1]] == \
        ["w_0", "w_1"]


def test_symbols_of_pytree_leaves_are_named_after_their_place():
    """(Symbols of pytree arguments were x0, x1, ...: every leaf was named by its
    position among all leaves.)  A leaf's symbols carry its place: params["W"] ->
    params_W_i_j, pair[1] -> pair_1, a namedtuple's field -> pt_x, a keyword by name."""
    from collections import namedtuple
    P = namedtuple("P", "x y")

    def loss(params, pair, pt, *, scale):
        return scale * np.sum(params["W"] @ pair[0]) + pair[1] ** 2 + pt.x * pt.y

    args = ({"W": np.ones((2, 2))}, (np.ones(2), 1.5), P(2.0, 3.0))
    conv = gradc.to_sympy(loss)
    names = [str(np.asarray(s, object).reshape(-1)[0])
             for s in conv.symbols(*args, scale=0.5)]
    assert names == ["params_W_0_0", "pair_0_0", "pair_1", "pt_x", "pt_y", "scale"]
    s = {str(v): v for v in conv(*args, scale=0.5).free_symbols}
    expr = conv(*args, scale=0.5)
    assert sp.simplify(sp.diff(expr, s["pt_x"]) - s["pt_y"]) == 0
    assert sp.diff(expr, s["params_W_1_0"]) == s["scale"] * s["pair_0_0"]
    grads = gradc.to_sympy(gradc.grad(loss))(*args, scale=0.5)
    assert grads["W"][1][1] == s["pair_0_1"] * s["scale"]


def test_symbol_names_never_merge_two_inputs():
    """(Review: p["a"][0] and p["a_0"] were both named p_a_0, one symbol for two
    inputs, a wrong expression.)  Names that would meet fall back to x0, x1, ..."""
    expr = gradc.to_sympy(lambda p: p["a"][0] * 2 + p["a_0"] ** 2)({"a": np.ones(1),
                                                                    "a_0": 3.0})
    assert len(expr.free_symbols) == 2
    expr = gradc.to_sympy(lambda x, x_0: x[0] * 2 + x_0)(np.ones(2), 3.0)
    assert len(expr.free_symbols) == 2
    assert {str(s) for s in gradc.to_sympy(lambda x, y: x[0] + y)(np.ones(2), 3.0)
            .free_symbols} == {"x_0", "y"}
