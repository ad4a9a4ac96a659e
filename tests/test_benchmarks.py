"""The benchmark scripts still run and check what they time: ``benchmarks/cpu.py
--quick`` (W1, W2, W3, W5 at small sizes, each gradient checked against the hand-written
one before it is timed) and ``benchmarks/segment_max.py`` at a small size.  The
scripts record a failing case as an ERROR row rather than stopping, so only a test
that reads their tables finds one (W3 and W5 timed the CRF loss from ``b0d596c`` on,
a rename gone too far, until this test)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "GRADC_TARGET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_cpu_benchmarks_quick_run_without_errors():
    out = _run("benchmarks/cpu.py", "--quick", "--markdown")
    assert "ERROR" not in out, out
    rows = [line for line in out.splitlines() if line.startswith("| W")]
    for w in ("W1", "W2", "W3", "W5"):
        gradc_rows = [r for r in rows if r.startswith(f"| {w} ") and "| gradc |" in r]
        assert gradc_rows, (w, out)
        assert all("| ok " in r for r in gradc_rows), gradc_rows


def test_segment_max_benchmark_runs():
    out = _run("benchmarks/segment_max.py", "--nodes", "40", "--edges", "300",
               "--features", "3", "--repeats", "2")
    assert "| gradc cpu: gradient |" in out and "| NumPy: value |" in out, out
