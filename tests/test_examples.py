"""Every script in ``examples/`` runs (here, or in the test named for it)."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# examples whose main() a subject's tests run and check values of
ELSEWHERE = {
    "gaussian_crf.py": "test_implicit.py", "deq.py": "test_implicit.py",
    "ridge_tuning.py": "test_implicit.py", "optnet_qp.py": "test_implicit.py",
    "jacobians.py": "test_chain.py",
}
HERE = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in ELSEWHERE)


def test_every_example_is_run_somewhere():
    tests = Path(__file__).resolve().parent
    for name, test in ELSEWHERE.items():
        assert (EXAMPLES / name).exists()
        assert name.removesuffix(".py") in (tests / test).read_text(), (name, test)


@pytest.mark.filterwarnings("ignore::gradc.GradcWarning")
@pytest.mark.parametrize("name", HERE)
def test_example_runs(name, capsys):
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert capsys.readouterr().out.strip()        # each prints what it shows
