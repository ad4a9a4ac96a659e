"""The documentation's lists that must follow the code."""
import importlib
import pathlib
import pkgutil
import re

import gradc.prims
from gradc.ir import Primitive

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_ir_doc_lists_every_primitive_under_its_module():
    table = {}
    for line in (DOCS / "ir.md").read_text().splitlines():
        m = re.match(r"\| `(\w+)\.py` \| `([^`]*)`", line)
        if m:
            table[m.group(1)] = set(m.group(2).split())
    seen = set()
    for info in pkgutil.iter_modules(gradc.prims.__path__):
        module = importlib.import_module(f"gradc.prims.{info.name}")
        prims = {v.name for v in vars(module).values() if isinstance(v, Primitive)}
        if prims:
            seen.add(info.name)
            assert table.get(info.name) == prims, (info.name, prims ^ table.get(info.name, set()))
    assert len(seen) >= 10
