"""A seeded sample of benchmarks/fuzz_views.py: random straight-line programs that take
views and copies (slices, elements, reshape/ravel by NumPy's view-or-copy rule, fancy
indexing, broadcast_to and diagonal's read-only views) and write through them, compared
with NumPy (values, errors NumPy raises as gradc errors, gradients against finite
differences)."""
from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::gradc.GradcWarning")

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "fuzz_views.py")
_spec = importlib.util.spec_from_file_location("fuzz_views", _PATH)
fuzz_views = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_views)


@pytest.mark.parametrize("block", range(3))
def test_random_view_programs_match_numpy(block):
    failures = []
    for seed in range(block * 10, block * 10 + 10):
        body, args = fuzz_views.make(seed)
        result = fuzz_views.check(body, args, ["numpy"])
        if result is not None:
            failures.append(f"seed {seed}: {result[0]}: {result[1]}\n"
                            + fuzz_views.source(body, seed))
    assert not failures, "\n".join(failures)
