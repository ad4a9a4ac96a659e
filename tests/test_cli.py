"""The ``gradc`` command, run as ``python -m gradc`` in a subprocess: each subcommand,
and every error path printing one line and exiting non-zero (no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROSEN = f"{ROOT / 'examples' / 'rosenbrock.py'}:rosen"


def gradc(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gradc", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "funcs.py").write_text(
        "import numpy as np\n"
        "def energy(x, s):\n"
        "    return s * np.sum(np.sin(x) ** 2)\n"
        "def untraceable(x):\n"
        "    y = np.asarray(x) * 2.0\n"
        "    return np.sum(y)\n"
        "from gradc.ir import Primitive\n"
        "from gradc.prims.rules import defjvp\n"
        "from gradc.trace import bind\n"
        "bad = Primitive('bad_sin')\n"
        "bad.impl = np.sin\n"
        "bad.abstract = lambda x: [(tuple(x.shape), x.dtype)]\n"
        "defjvp(bad, lambda t, ans, x: t * np.cos(x) * 2.0)    # wrong: d sin = cos\n"
        "def wrong(x):\n"
        "    return np.sum(bind(bad, x))\n"
        "NOT_A_FUNCTION = 3\n")
    (d / "args.py").write_text("(np.linspace(0.1, 0.9, 4), 2.0)\n")
    (d / "broken.py").write_text("import numpy as np\nraise RuntimeError('boom')\n")
    return d


def test_show_prints_ir_derivative_and_source():
    r = gradc("show", ROSEN, "--args", "f64[5]")
    assert r.returncode == 0, r.stderr
    assert "# traced IR" in r.stdout and "reduce_sum" in r.stdout
    assert "# derivative IR after the passes" in r.stdout and "fused" in r.stdout
    assert "def rosen_grad(" in r.stdout or "@_k.jit" in r.stdout
    r = gradc("show", ROSEN, "--args", "f64[5]", "--emit", "llvm,asm")
    assert r.returncode == 0, r.stderr
    assert "# LLVM IR" in r.stdout and "define " in r.stdout
    assert "# assembly" in r.stdout and ("ret" in r.stdout or "call" in r.stdout)


def test_show_on_the_interpreter_and_args_from_a_file(user_file):
    r = gradc("show", f"{user_file / 'funcs.py'}:energy", "--args", f"@{user_file / 'args.py'}",
              "--emit", "ir,grad", "--target", "numpy")
    assert r.returncode == 0, r.stderr
    assert "a:f64[4] b:f64[]" in r.stdout
    # (QA: the default --emit asked the interpreter for source and failed)
    r = gradc("show", ROSEN, "--args", "f64[5]", "--target", "numpy")
    assert r.returncode == 0, r.stderr
    assert "derivative" in r.stdout and "generated" not in r.stdout.lower()


def test_check_passes_and_exits_zero(user_file):
    r = gradc("check", f"{user_file / 'funcs.py'}:energy", "--args", "f64[3], 2.5",
              "--targets", "numpy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout and "sympy" in r.stdout


def test_check_exits_one_when_a_check_fails(user_file):
    r = gradc("check", f"{user_file / 'funcs.py'}:wrong", "--args", "f64[3]",
              "--targets", "numpy")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "check(s) FAILED" in r.stdout


def test_draw_of_a_jacobian_with_a_static_argument(user_file, tmp_path):
    (user_file / "vec.py").write_text("import numpy as np\n"
                                      "def f(x, n):\n    return np.tanh(x) * n\n")
    out = tmp_path / "j.dot"
    r = gradc("draw", f"{user_file / 'vec.py'}:f", "--args", "f64[3], 2", "--grad",
              "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "Jacobian of f" in out.read_text()


def test_draw_writes_the_picture_and_dot(tmp_path):
    out = tmp_path / "g.svg"
    r = gradc("draw", ROSEN, "--args", "f64[3]", "--grad", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().lstrip().startswith("<svg") or "<svg" in out.read_text()[:500]
    assert (tmp_path / "g.svg.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("args, message", [
    (("show", "nowhere.py:f", "--args", "f64[3]"), "no such file: nowhere.py"),
    (("show", "just_a_name", "--args", "f64[3]"), "expected FILE.py:FUNCTION"),
    (("show", ROSEN.replace(":rosen", ":nope"), "--args", "f64[3]"), "has no function 'nope'"),
    (("show", ROSEN, "--args", "f65[3]"), "unknown dtype 'f65'"),
    (("show", ROSEN, "--args", "f64[3"), "bad argument spec"),
    (("show", ROSEN, "--args", "f64[3]", "--emit", "ir,bogus"), "unknown stage 'bogus'"),
    (("show", ROSEN, "--args", "@missing_args.py"), "no such file: missing_args.py"),
    (("draw", ROSEN, "--args", "f64[3]", "-o", "picture.gif"), "must end in .svg, .png or .dot"),
])
def test_errors_print_one_line(args, message, tmp_path):
    r = gradc(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("gradc: error:") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_user_file_errors(user_file):
    f = user_file / "funcs.py"
    r = gradc("check", f"{f}:untraceable", "--args", "f64[3]", "--targets", "numpy")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "gradc: error:" in r.stderr and "funcs.py:5" in r.stderr, r.stderr
    r = gradc("show", f"{f}:NOT_A_FUNCTION", "--args", "f64[3]")
    assert r.returncode == 2 and "not a function" in r.stderr
    r = gradc("show", f"{user_file / 'broken.py'}:f", "--args", "f64[3]")
    assert r.returncode == 2 and "failed to import: RuntimeError: boom" in r.stderr
    for debug in (("show", f"{user_file / 'broken.py'}:f", "--args", "f64[3]", "--debug"),
                  ("--debug", "show", f"{user_file / 'broken.py'}:f", "--args", "f64[3]")):
        r = gradc(*debug)
        assert r.returncode != 0 and "Traceback" in r.stderr
    (user_file / "exits.py").write_text("import sys\nsys.exit(3)\n")   # (QA: exited 3)
    r = gradc("show", f"{user_file / 'exits.py'}:f", "--args", "f64[3]")
    assert r.returncode == 2 and "called sys.exit(3)" in r.stderr, r.stderr


def test_demo_runs_quick():
    r = gradc("demo", "--quick")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    for part in ("traced IR", "after the passes", "all checks passed", "d/dx_0 =",
                 "faster"):
        assert part in r.stdout


def test_no_command_prints_help():
    r = gradc()
    assert r.returncode == 2 and "usage: gradc" in r.stdout


def test_show_cuda_source_and_ptx_errors():
    """--target cuda: the kernels' source (under the simulator without a GPU); --emit ptx
    needs --target cuda, and llvm/asm are refused for it, each in one line."""
    r = gradc("show", ROSEN, "--args", "f64[5]", "--target", "cuda", "--emit", "source")
    assert r.returncode == 0, r.stderr
    assert "@cuda.jit" in r.stdout and "cuda.grid(1)" in r.stdout
    r = gradc("show", ROSEN, "--args", "f64[5]", "--emit", "ptx")
    assert r.returncode != 0 and "needs --target cuda" in r.stderr
    assert "Traceback" not in r.stderr
    r = gradc("show", ROSEN, "--args", "f64[5]", "--target", "cuda", "--emit", "llvm")
    assert r.returncode != 0 and "use --emit ptx" in r.stderr


def test_args_take_nan_and_infinities(user_file):
    """(QA: ``--args "nan"`` was a bad spec: only numbers with ``.``/``e`` were floats.)"""
    import math

    from gradc.cli import CliError, parse_args_spec
    got = parse_args_spec("nan, inf, -inf, 2, 0.5, 1e-3, -Infinity, f64[2]")
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf
    assert [type(v) for v in got[:6]] == [float, float, float, int, float, float]
    assert got[3:7] == (2, 0.5, 1e-3, -math.inf) and got[7].shape == (2,)
    with pytest.raises(CliError, match="bad argument spec 'nano'"):
        parse_args_spec("nano")
    r = gradc("show", f"{user_file / 'funcs.py'}:energy", "--args", "f64[3], -inf",
              "--emit", "ir")
    assert r.returncode == 0, r.stderr
    assert "{ lambda a:f64[3] b:f64[] ." in r.stdout


def test_keyword_and_pytree_arguments(user_file, tmp_path):
    """(QA: show/draw/check refused dicts and tuples from @FILE, and --args had no way
    to pass a keyword argument.)"""
    from gradc.cli import CliError, parse_call_spec
    args, kwargs = parse_call_spec("f64[2], s=2.5, w=f64[3], n=3")
    assert len(args) == 1 and args[0].shape == (2,)
    assert kwargs["s"] == 2.5 and kwargs["w"].shape == (3,) and kwargs["n"] == 3
    with pytest.raises(CliError, match="after a keyword"):
        parse_call_spec("s=1.0, f64[2]")
    (user_file / "trees.py").write_text(
        "import numpy as np\n"
        "def scaled(x, *, s):\n"
        "    return s * np.sum(np.sin(x) ** 2)\n"
        "def tree(p, pair):\n"
        "    return np.sum(p['W'] @ pair[0]) * pair[1]\n")
    (user_file / "tree_args.py").write_text(
        "args = ({'W': np.ones((2, 3)) * 0.5}, (np.linspace(0.1, 0.9, 3), 2.0))\n")
    (user_file / "kw_args.py").write_text("args = (np.ones(3),)\nkwargs = dict(s=1.5)\n")
    trees = user_file / "trees.py"
    r = gradc("check", f"{trees}:scaled", "--args", "f64[3], s=2.5", "--targets", "numpy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout and "s: float64" in r.stdout
    r = gradc("check", f"{trees}:tree", "--args", f"@{user_file / 'tree_args.py'}",
              "--targets", "numpy", "--modes", "rev")
    assert r.returncode == 0, r.stdout + r.stderr
    for label in ("p['W']: float64[2, 3]", "pair[0]: float64[3]", "pair[1]: float64"):
        assert label in r.stdout
    r = gradc("show", f"{trees}:tree", "--args", f"@{user_file / 'tree_args.py'}",
              "--emit", "ir,grad", "--target", "numpy")
    assert r.returncode == 0, r.stderr
    assert "{ lambda a:f64[2,3] b:f64[3] c:f64[] ." in r.stdout
    assert "in (h, g, e) }" in r.stdout or r.stdout.count("einsum") >= 3
    out = tmp_path / "new_folder" / "kw.dot"
    r = gradc("draw", f"{trees}:scaled", "--args", f"@{user_file / 'kw_args.py'}",
              "--grad", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert 'label="gradient of scaled"' in out.read_text()
