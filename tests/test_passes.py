"""Passes never change results: random programs (hypothesis) before and after each pass.

Each program is a random sequence of NumPy operations on a (3, 4) input, mixing
elementwise maths, reductions, slicing, contractions, reused subexpressions and
constants.  For each we check:

* ``simplify`` gives bit-identical results and a valid graph with no more equations;
* the primal outputs of ``jvp_graph`` and ``vjp_graph`` are bit-identical to the graph's;
* forward mode matches central finite differences, and ⟨u, J v⟩ = ⟨Jᵀu, v⟩ between
  ``jvp_graph`` and ``vjp_graph``;
* every derived graph passes ``verify()``.
"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gradc
from gradc.interpret import run
from gradc.passes import jvp_graph, linearize_graph, simplify, transpose_graph, vjp_graph
from gradc.passes.simplify import dce, fold_cse

W = np.linspace(-1.0, 1.0, 12).reshape(3, 4)

OPS = {
    "sin": (1, lambda a: np.sin(a)),
    "tanh": (1, lambda a: np.tanh(a)),
    "softexp": (1, lambda a: np.exp(np.tanh(a))),
    "square": (1, lambda a: a * a),
    "const": (1, lambda a: 2.0 * a + 1.0),
    "dup": (1, lambda a: np.cos(a) + np.cos(a)),          # common subexpression
    "centre": (1, lambda a: a - np.mean(a, axis=0, keepdims=True)),
    "roll": (1, lambda a: np.concatenate([a[:, 1:], a[:, :1]], axis=1)),
    "flip": (1, lambda a: a[::-1, :]),
    "gram": (1, lambda a: (a @ a.T) @ a / 10.0),
    "rowmax": (1, lambda a: a * np.max(a, axis=1, keepdims=True)),
    "add": (2, lambda a, b: a + b),
    "mul": (2, lambda a, b: a * b),
    "sub": (2, lambda a, b: a - b),
    "where": (2, lambda a, b: np.where(a > b, a, 0.5 * b)),
    "setrow": (2, lambda a, b: _setrow(a, b)),
}


def _setrow(a, b):
    a = a.copy()
    a[1] = b[0] * 0.5
    return a


def make_program(steps):
    def program(x):
        values = [x]
        for name, i, j in steps:
            arity, op = OPS[name]
            args = [values[i % len(values)], values[j % len(values)]][:arity]
            values.append(op(*args))
        return np.sum(values[-1] * W)
    return program


programs = st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(0, 20),
                              st.integers(0, 20)), min_size=1, max_size=8)


def fd_jvp(f, x, v, eps=1e-6):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@settings(max_examples=40, deadline=None)
@given(programs, st.integers(0, 2**31 - 1))
def test_passes_preserve_results(steps, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(3, 4))
    f = make_program(steps)
    graph = gradc.make_graph(f)(x).verify()
    (expected,) = run(graph, x)
    assert np.array_equal(expected, f(x))

    simple = simplify(graph).verify()
    assert len(simple.eqns) <= len(graph.eqns)
    assert np.array_equal(run(simple, x)[0], expected)

    v = rng.normal(size=x.shape)
    jg = jvp_graph(graph).verify()
    out, tangent = run(jg, x, v)
    assert np.array_equal(out, expected)
    assert np.allclose(tangent, fd_jvp(f, x, v), rtol=1e-5, atol=1e-6)
    out_s, tangent_s = run(simplify(jg).verify(), x, v)
    assert np.array_equal(out_s, out) and np.array_equal(tangent_s, tangent)

    u = rng.normal()
    vg = vjp_graph(graph).verify()
    out, ct = run(vg, x, u)
    assert np.array_equal(out, expected)
    assert np.isclose(u * tangent, np.sum(ct * v), rtol=1e-9, atol=1e-12)
    assert np.array_equal(run(simplify(vg).verify(), x, u)[1], ct)


def test_linearize_splits_primal_and_linear():
    f = make_program([("sin", 0, 0), ("mul", 0, 1)])
    x = np.linspace(0.1, 1.2, 12).reshape(3, 4)
    graph = gradc.make_graph(f)(x)
    primal, linear = linearize_graph(graph)
    primal.verify()
    linear.verify()
    # the linear part contains no transcendental functions: they are residuals
    assert {e.prim.name for e in linear.eqns} <= {"mul", "add", "reduce_sum", "neg"}
    outs = run(primal, x)
    residuals = outs[1:]
    v = np.ones_like(x)
    (t,) = run(linear, *residuals, v)
    assert np.isclose(t, fd_jvp(f, x, v))
    back = transpose_graph(linear, len(residuals)).verify()
    (ct,) = run(back, *residuals, np.asarray(1.0))
    assert np.isclose(np.sum(ct * v), t)


def test_simplify_rewrites():
    def f(x):
        a = np.sin(x) * 1.0 + 0.0          # identities
        b = np.sin(x)                      # CSE with the sin above
        c = -(-b)                          # double negation
        unused = np.exp(x)                 # dead code  # noqa: F841
        k = np.ones(3) * 2.0 + 1.0         # constant folding (no tracer: folded at trace)
        return np.sum(a + c * k)

    x = np.array([0.1, 0.2, 0.3])
    graph = gradc.make_graph(f)(x)
    simple = simplify(graph).verify()
    names = [e.prim.name for e in simple.eqns]
    assert names.count("sin") == 1
    assert "exp" not in names and "neg" not in names
    assert np.array_equal(run(simple, x)[0], run(graph, x)[0])
    assert len(fold_cse(graph).eqns) < len(graph.eqns)


def test_transposes_of_transposes_fold():
    """transpose(transpose(x, p), q) is one transpose by p[q], and none when that is the
    identity (vmap moving a loop's batch axis out and back in)."""
    def f(x):
        back = np.transpose(np.transpose(x, (1, 0, 2)), (1, 0, 2))          # identity
        turned = np.transpose(np.transpose(x, (1, 2, 0)), (1, 2, 0))       # (2, 0, 1)
        return back * 2.0, turned + 1.0

    x = np.arange(24.0).reshape(2, 3, 4)
    graph = gradc.make_graph(f)(x)
    simple = simplify(graph).verify()
    perms = [e.params["perm"] for e in simple.eqns if e.prim.name == "transpose"]
    assert perms == [(2, 0, 1)]
    for got, want in zip(run(simple, x), f(x)):
        np.testing.assert_array_equal(got, want)


def test_dce_keeps_guards():
    def f(x):
        if x > 0:
            return x * 2.0
        return x

    graph = gradc.make_graph(f)(1.5)
    assert [e.prim.name for e in dce(graph).eqns].count("guard") == 1
    assert [e.prim.name for e in simplify(graph).eqns].count("guard") == 1


def test_dce_keeps_a_loop_whose_body_has_an_effect():
    """A while loop whose results nobody reads is dropped, unless its body has an
    effect: then the loop is kept, the effect with it."""
    from gradc.prims.implicit import report

    def f(x, with_effect):
        def body(s):
            y, k = s
            if with_effect:
                report(k < 100, y[0], what="a test")
            return y * 0.5, k + 1
        gradc.while_loop(lambda s: s[1] < 3, body, (x, 0))
        return x * 2.0

    x = np.ones(2)
    for with_effect, kept in ((False, 0), (True, 1)):
        graph = gradc.make_graph(lambda x: f(x, with_effect))(x)
        names = [e.prim.name for e in dce(graph).eqns]
        assert names.count("while_loop") == kept, names


def test_folding_uses_exact_arithmetic():
    # x * 0 is not folded to 0 (it is NaN for x = inf)
    with np.errstate(invalid="ignore"):
        graph = gradc.make_graph(lambda x: x * 0.0)(np.inf)
        assert np.isnan(run(simplify(graph), np.inf)[0])
