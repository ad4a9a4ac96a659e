"""Jacobian chains (gradc/chain.py, gradc.jacobian, gradc.jacobian_plan): the DP against
brute force over every evaluation order, and every plan's Jacobian against jacfwd and
finite differences."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gradc
from gradc import chain

RNG = np.random.default_rng(11)


# ---------------------------------------------------------------- brute force

def all_plans(n, m, c, lo, hi):
    """Every way to make J_{lo..hi} dense (an independent statement of the options in
    the chain module's docstring), as (cost, description) pairs."""
    seg = sum(c[lo:hi + 1])
    out = [(n[lo] * seg, f"fwd{lo}{hi}"), (m[hi] * seg, f"rev{lo}{hi}")]
    for k in range(lo, hi):
        inner = all_plans(n, m, c, lo, k)
        outer = all_plans(n, m, c, k + 1, hi)
        for ci, di in inner:
            for co, do in outer:
                out.append((ci + co + m[hi] * m[k] * n[lo], f"({do}@{di})"))
            out.append((ci + n[lo] * sum(c[k + 1:hi + 1]), f"tan{k + 1}{hi}@{di}"))
        for co, do in outer:
            out.append((co + m[hi] * sum(c[lo:k + 1]), f"{do}@adj{lo}{k}"))
    return out


def _random_chain(q, rng):
    dims = [int(rng.choice([1, 2, 3, 5, 8, 20, 100, 1000])) for _ in range(q + 1)]
    n, m = dims[:-1], dims[1:]
    # a stage's cost per vector is at least the size of its output or its input
    c = [float(rng.integers(1, 4) * max(a, b) * (rng.integers(1, 6) if a != b else 1))
         for a, b in zip(n, m)]
    return n, m, c


@pytest.mark.parametrize("q", [1, 2, 3, 4, 5, 6, 7])
def test_dp_equals_brute_force_and_never_costs_more_than_a_pure_mode(q):
    rng = np.random.default_rng(100 + q)
    for _ in range(6 if q < 7 else 2):
        n, m, c = _random_chain(q, rng)
        costs = [cost for cost, _ in all_plans(n, m, c, 0, q - 1)]
        plan = chain.optimal_plan(n, m, c)
        assert plan.cost == pytest.approx(min(costs), rel=1e-12)
        # the plan's cost is the sum of its steps' own costs
        assert sum(s.own_cost for s in plan.steps()) == pytest.approx(plan.cost, rel=1e-12)
        assert plan.cost <= n[0] * sum(c) and plan.cost <= m[-1] * sum(c)
    if q == 7:
        assert len(costs) == 433474     # every plan of a 7-stage chain was costed


def test_dp_on_the_hourglass_brackets_through_the_narrow_values():
    n, m = [1000, 10, 10, 1000, 1000, 10, 10, 1000], [10, 10, 1000, 1000, 10, 10, 1000, 1000]
    c = [1e4, 10, 1e4, 1e3, 1e4, 10, 1e4, 1e3]
    plan = chain.optimal_plan(n, m, c)
    pure = min(n[0], m[-1]) * sum(c)
    assert pure / plan.cost > 4
    assert str(plan) == "(fwd[J8 J7 J6 J5 J4 J3 J2] @ adj[J1])"


# ---------------------------------------------------------------- cutting Graphs

W1 = RNG.standard_normal((6, 9)) / 3
W2 = RNG.standard_normal((2, 6))
W3 = RNG.standard_normal((7, 2))


def hourglass(x):
    h = np.tanh(W1 @ x)
    h = np.sin(W2 @ h) * 2.0
    return np.tanh(W3 @ h) ** 2


def test_the_chain_is_cut_at_every_dominating_value():
    x = RNG.standard_normal(9)
    plan = gradc.jacobian_plan(hourglass)(x)
    shapes = [(s.n, s.m) for s in plan.stages]
    assert shapes == [(9, 6), (6, 6), (6, 2), (2, 2), (2, 2), (2, 7), (7, 7), (7, 7)]
    assert plan.stages[0].ops == "einsum" and plan.stages[1].ops == "tanh"
    assert plan.cost <= min(plan.cost_fwd, plan.cost_rev)
    text = str(plan)
    assert "J1" in text and "bracketing:" in text and "all-forward" in text
    assert plan.bracketing().count("J") >= len(plan.stages)


def test_a_graph_with_branches_is_one_stage_and_says_so():
    x = RNG.standard_normal(5)
    plan = gradc.jacobian_plan(lambda x: np.sin(x) * np.cos(x[::-1]))(x)
    assert len(plan.stages) == 1 and "no value cuts" in plan.note
    assert plan.root.kind in ("fwd", "rev")
    # a value reached by two paths is still a cut where both paths meet again
    plan = gradc.jacobian_plan(lambda x: np.tanh(np.sin(x) * np.cos(x)) @ W1)(
        RNG.standard_normal((4, 6)))
    assert [s.ops for s in plan.stages] == ["sin, cos, mul", "tanh", "einsum"]


# ---------------------------------------------------------------- evaluating plans

def _fd(f, x, h=1e-6):
    cols = []
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        cols.append((f(x + e.reshape(x.shape)) - f(x - e.reshape(x.shape))).ravel() / (2 * h))
    return np.stack(cols, axis=1)


def _trees(lo, hi):
    """Every Step tree over stages lo..hi (costs are irrelevant here)."""
    yield chain.Step("fwd", lo, hi, 0.0)
    yield chain.Step("rev", lo, hi, 0.0)
    for k in range(lo, hi):
        for inner in _trees(lo, k):
            for outer in _trees(k + 1, hi):
                yield chain.Step("mul", lo, hi, 0.0, k, outer, inner)
            yield chain.Step("tan", lo, hi, 0.0, k, None, inner)
        for outer in _trees(k + 1, hi):
            yield chain.Step("adj", lo, hi, 0.0, k, outer, None)


def _small_chain(x):
    y = np.tanh(W1[:4, :5] @ x)             # 5 -> 4
    y = np.reshape(y, (2, 2))               # a cut of another shape
    return np.sum(y, axis=0)                # 4 -> 2


def test_every_evaluation_order_gives_the_same_jacobian():
    x = RNG.standard_normal(5)
    graph = gradc.make_graph(_small_chain)(x)
    plan = chain.plan_graph(graph)
    q = len(plan.stages)
    assert q == 4
    expected = gradc.jacfwd(_small_chain)(x).reshape(2, 5)
    np.testing.assert_allclose(expected, _fd(_small_chain, x), rtol=1e-7, atol=1e-9)
    count = 0
    for tree in _trees(0, q - 1):
        got = chain.evaluate(dataclasses.replace(plan, root=tree), graph, [x])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14, err_msg=str(tree))
        count += 1
    assert count == 522


@pytest.mark.parametrize("mode", ["optimal", "fwd", "rev"])
def test_jacobian_modes_agree_with_jacfwd_and_finite_differences(mode):
    x = RNG.standard_normal(9)
    jac = gradc.jacobian(hourglass, mode=mode)(x)
    assert jac.shape == (7, 9)
    np.testing.assert_allclose(jac, gradc.jacfwd(hourglass)(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jac, _fd(hourglass, x), rtol=1e-6, atol=1e-8)


def test_random_chains_of_layers():
    rng = np.random.default_rng(3)
    for trial in range(6):
        dims = [int(d) for d in rng.choice([1, 2, 3, 8, 30], size=rng.integers(2, 6))]
        mats = [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(dims, dims[1:])]
        acts = [np.tanh, np.sin, lambda v: v * v, np.exp]

        def f(x, mats=mats, trial=trial):
            for i, M in enumerate(mats):
                x = acts[(i + trial) % 4](M @ x)
            return x
        x = rng.standard_normal(dims[0])
        plan = gradc.jacobian_plan(f)(x)
        assert plan.cost <= min(plan.cost_fwd, plan.cost_rev) + 1e-9
        np.testing.assert_allclose(gradc.jacobian(f)(x), gradc.jacfwd(f)(x),
                                   rtol=1e-11, atol=1e-13, err_msg=str(plan))


def test_matrix_arguments_other_arguments_and_compiled():
    A = RNG.standard_normal((3, 4))
    B = RNG.standard_normal((4, 2))

    def f(a, b):
        return np.tanh(a @ b) @ b.T
    for argnums in (0, 1):
        want = gradc.jacfwd(f, argnums=argnums)(A, B)
        got = gradc.jacobian(f, argnums=argnums)(A, B)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    got = gradc.jacobian(hourglass, target="cpu")(np.linspace(-1, 1, 9))
    np.testing.assert_allclose(got, gradc.jacfwd(hourglass)(np.linspace(-1, 1, 9)),
                               rtol=1e-12, atol=1e-14)


def test_jacobian_of_a_constant_function_is_zero_and_errors_are_named():
    x = RNG.standard_normal(3)
    np.testing.assert_array_equal(gradc.jacobian(lambda x: W1 @ np.ones(9))(x),
                                  np.zeros((6, 3)))
    assert "does not depend" in gradc.jacobian_plan(lambda x: np.ones(2))(x).note
    with pytest.raises(gradc.ArgumentError, match="mode is one of"):
        gradc.jacobian(np.sin, mode="sideways")
    with pytest.raises(gradc.ArgumentError, match="must return one array"):
        gradc.jacobian(lambda x: (x, x))(x)
    with pytest.raises(gradc.ArgumentError, match="float array"):
        gradc.jacobian(lambda i: i * 2.0)(np.arange(3))


def test_plan_draws_a_picture(tmp_path):
    pytest.importorskip("matplotlib")
    plan = gradc.jacobian_plan(hourglass)(RNG.standard_normal(9))
    path = tmp_path / "plan.png"
    plan.draw(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_draw_without_matplotlib_names_what_it_needs(monkeypatch):
    """(QA) a bare ModuleNotFoundError from inside gradc before."""
    import builtins
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)
    plan = gradc.jacobian_plan(hourglass)(RNG.standard_normal(9))
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(gradc.UnsupportedError, match=r"needs matplotlib.*gradc\[draw\]"):
        plan.draw("plan.svg")


def test_the_example_runs():
    import runpy
    module = runpy.run_path(str(__import__("pathlib").Path(__file__).parent.parent
                                / "examples" / "jacobians.py"))
    plan, hess = module["main"]()
    assert plan.cost < min(plan.cost_fwd, plan.cost_rev) / 4
    assert hess.shape == (10_000, 10_000) and hess.nnz == 3 * 10_000 - 2


def test_review_cases_identity_mixed_precision_and_python_control_flow():
    x = RNG.standard_normal(4)
    for f in (lambda x: x * 1.0, lambda x: x.reshape(4), lambda x: x + 0.0):
        np.testing.assert_array_equal(gradc.jacobian(f)(x), np.eye(4))
    W1 = RNG.standard_normal((3, 40)).astype(np.float32)
    W2 = RNG.standard_normal((40, 3))
    g = lambda x: np.tanh(W2 @ np.tanh(W1 @ x))        # noqa: E731
    x32 = RNG.standard_normal(40).astype(np.float32)
    got, want = gradc.jacobian(g)(x32), gradc.jacfwd(g)(x32)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def branchy(x):
        if x[0] > 0:
            return np.tanh(W2[:5, :3] @ x) * 2.0
        return np.sin(W2[:5, :3] @ x) * x[::-1][0]
    jac = gradc.jacobian(branchy)
    for v in (np.array([1.0, 2.0, 3.0]), np.array([-1.0, 2.0, 3.0])):
        np.testing.assert_allclose(jac(v), gradc.jacfwd(branchy)(v), rtol=1e-12)
        assert gradc.jacobian_plan(branchy)(v).stages      # planned on either path


def test_optimal_jacobian_and_plan_of_a_pytree_argument():
    """(Seed QA: gradc.jacobian's default mode and jacobian_plan refused a dict of
    parameters, "argument 0 must be a float array, got dtype object", where jacfwd and
    jacrev take it.)  The leaves are raveled into one vector for the chain; the blocks
    come back in the argument's structure, as jacfwd's."""
    from collections import namedtuple
    P = namedtuple("P", "w b")
    x = RNG.standard_normal(3)
    params = {"W": RNG.standard_normal((2, 3)), "layers": [RNG.standard_normal(2)],
              "p": P(RNG.standard_normal(2).astype(np.float32), 0.7)}

    def net(params, x):
        h = np.tanh(params["W"] @ x + params["layers"][0])
        return h * params["p"].w + params["p"].b

    J, ref = gradc.jacobian(net)(params, x), gradc.jacfwd(net)(params, x)
    assert isinstance(J["p"], P) and J["W"].shape == (2, 2, 3) and np.shape(J["p"].b) == (2,)
    for a, b in zip(gradc.pytree.flatten(J)[0], gradc.pytree.flatten(ref)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    plan = gradc.jacobian_plan(net)(params, x)
    assert "f64[11] -> f64[2]" in str(plan)          # (6 + 2 + 2 + 1 leaves)
    with pytest.raises(gradc.ArgumentError, match="argument 0 must be a float array"):
        gradc.jacobian(lambda d: d["n"] * 2.0)({"n": np.arange(3)})
