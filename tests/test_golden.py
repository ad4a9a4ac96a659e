"""Golden tests of printed IR and generated source: a change to tracing, a rule, a pass
or the lowering that changes the graphs or the code of these functions shows up in review
as a diff of tests/golden/*.txt (IR) and tests/golden/*.py.txt (generated source).

To accept intended changes:  python tests/test_golden.py --update
"""
import pathlib
import sys

import numpy as np
import pytest

import gradc
from gradc.codegen import to_source
from gradc.codegen.compile import optimise
from gradc.passes import jvp_graph, simplify

GOLDEN = pathlib.Path(__file__).parent / "golden"


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def mlp_loss(W1, W2, X, labels):
    hidden = np.tanh(X @ W1)
    logits = hidden @ W2
    return np.mean(gradc.logsumexp(logits, axis=1) - np.sum(logits * labels, axis=1))


def branchy(x):
    if x > 0:
        return x * np.sin(x)
    return -x


def running_update(x):
    y = x.copy()
    for i in range(1, 3):
        y[i] = y[i - 1] * y[i]
    y[1:] += x[:-1]
    return np.sum(y)


X = np.linspace(-1.0, 1.0, 8).reshape(4, 2)
LABELS = np.eye(3)[[0, 1, 2, 1]]
W1 = np.linspace(-0.5, 0.5, 10).reshape(2, 5)
W2 = np.linspace(-0.5, 0.5, 15).reshape(5, 3)

CASES = {
    "rosen": lambda: gradc.make_graph(rosen)(np.array([0.5, -1.0, 2.0])),
    "rosen_grad": lambda: simplify(gradc.make_graph(gradc.grad(rosen))(
        np.array([0.5, -1.0, 2.0]))),
    "mlp_loss": lambda: gradc.make_graph(mlp_loss)(W1, W2, X, LABELS),
    "mlp_grad": lambda: simplify(gradc.make_graph(gradc.grad(mlp_loss, argnums=(0, 1)))(
        W1, W2, X, LABELS)),
    "branchy_positive": lambda: gradc.make_graph(branchy)(0.5),
    "branchy_jvp": lambda: simplify(jvp_graph(gradc.make_graph(branchy)(0.5))),
    "running_update": lambda: gradc.make_graph(running_update)(np.arange(1.0, 4.0)),
}


def softmax_rows(x):
    e = np.exp(x - np.max(x, axis=1, keepdims=True))
    return np.sum(e / np.sum(e, axis=1, keepdims=True) * X[:, :1])


# generated source, as the cpu target lowers it (optimised: simplified and fused)
SOURCES = {
    "rosen_grad": lambda: to_source(optimise(CASES["rosen_grad"](), "cpu"), "rosen_grad"),
    "mlp_grad": lambda: to_source(optimise(CASES["mlp_grad"](), "cpu"), "mlp_grad"),
    "softmax_rows_grad": lambda: to_source(optimise(gradc.make_graph(
        gradc.grad(softmax_rows))(X[:, :1] * X), "cpu"), "softmax_rows_grad"),
    "branchy_jvp": lambda: to_source(optimise(CASES["branchy_jvp"](), "cpu"), "branchy_jvp"),
}


def _source(name) -> str:
    # the generated comments name the user's file by its absolute path: made relative
    return SOURCES[name]().replace(str(pathlib.Path(__file__).parent) + "/", "tests/")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_golden_source(name):
    text = _source(name)
    expected = (GOLDEN / f"{name}.py.txt").read_text()
    assert text == expected, (f"generated source of {name} changed; "
                              "run python tests/test_golden.py --update")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = str(CASES[name]().verify()) + "\n"
    expected = (GOLDEN / f"{name}.txt").read_text()
    assert text == expected, f"IR of {name} changed; run python tests/test_golden.py --update"


if __name__ == "__main__" and "--update" in sys.argv:
    GOLDEN.mkdir(exist_ok=True)
    for name, make in CASES.items():
        (GOLDEN / f"{name}.txt").write_text(str(make()) + "\n")
        print("wrote", GOLDEN / f"{name}.txt")
    for name, make in SOURCES.items():
        (GOLDEN / f"{name}.py.txt").write_text(_source(name))
        print("wrote", GOLDEN / f"{name}.py.txt")
