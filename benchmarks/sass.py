#!/usr/bin/env python
"""Machine code of gradc's CUDA kernels for G1-G4, measured without a GPU.

Each kernel of each workload (benchmarks/gpu.py's functions at their sizes, float32 or ``--dtype``)
goes through numba.cuda's compiler to PTX (as ``Compiled.ptx`` does), ``ptxas`` to
an sm_90 cubin and ``nvdisasm`` to SASS.  For each kernel: its registers, its SASS
instructions, its barriers, and, for a one-kernel scan, the instructions of its step
loop (the innermost loop holding a barrier), each loop inside it counted
once: a thread's instructions a step where each of those loops runs once (a stage's
loop over the row's elements does at 256 threads a row of 256 or fewer; a loop LLVM
did not unroll inside a stage runs more).

    CUDA_HOME=/usr/local/cuda python benchmarks/sass.py [--only G4] [--dump DIR]

Needs numba.cuda's NVVM (CUDA's toolkit, or numba-cuda with NVIDIA's wheels), CUDA's
``ptxas`` (``$CUDA_HOME/bin``, or ``--ptxas``) and ``nvdisasm`` (``--nvdisasm``; the
``nvidia-cuda-nvdisasm`` wheel on PyPI has one); no GPU.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
os.environ.setdefault("GRADC_CUDA_CUPY", "0")       # (CuPy's products: no kernels here)

import gpu  # noqa: E402

OP = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)")


def sass_of(compiled, kernel, cc, ptxas, nvdisasm, work):
    """(registers, SASS text) of ``kernel`` of ``compiled``."""
    ptx = compiled.ptx(kernel.name, cc=cc)
    ptx = ptx.split("\n", 1)[1]                         # (its "// kernel" line)
    path = os.path.join(work, kernel.name)
    with open(path + ".ptx", "w") as f:
        f.write(ptx)
    arch = f"sm_{cc[0]}{cc[1]}"
    out = subprocess.run([ptxas, "-v", f"-arch={arch}", path + ".ptx", "-o", path + ".cubin"],
                         capture_output=True, text=True, check=True)
    registers = int(re.findall(r"Used (\d+) registers", out.stderr)[0])
    sass = subprocess.run([nvdisasm, "-c", path + ".cubin"], capture_output=True,
                          text=True, check=True).stdout
    return registers, sass


def step_loop(sass: str):
    """Instructions of the innermost loop holding a barrier (a one-kernel
    scan's step), and the (first, last) instruction of each loop inside it; None for a
    kernel without one."""
    lines = sass.splitlines()
    ops = [k for k, line in enumerate(lines) if OP.match(line)]
    at = {k: n for n, k in enumerate(ops)}
    labels = {}
    for k, line in enumerate(lines):
        m = re.match(r"^(\.L_x_\d+):", line)
        nxt = [j for j in ops if j > k]
        if m and nxt:
            labels[m.group(1)] = at[nxt[0]]
    loops = []                                           # (first, last) instruction
    for k in ops:
        m = re.search(r"BRA `\((\.L_x_\d+)\)", lines[k])
        if m and m.group(1) in labels and labels[m.group(1)] < at[k]:
            loops.append((labels[m.group(1)], at[k]))
    # (a branch back from code placed after the kernel's exit, such as a shuffle's
    # path for a diverged warp, is no loop)
    exits = [at[k] for k in ops if re.search(r"\bEXIT\b", lines[k])]
    loops = [lp for lp in loops if not any(lp[0] <= e <= lp[1] for e in exits)]
    bars = [at[k] for k in ops if "BAR.SYNC" in lines[k]]
    steps = [lp for lp in loops if any(lp[0] <= b <= lp[1] for b in bars)]
    if not steps:
        return None
    step = min(steps, key=lambda lp: lp[1] - lp[0])     # (inside the grid-stride loop)
    inner = [(lo, hi) for lo, hi in loops if step[0] < lo and hi <= step[1]]
    return step[1] - step[0] + 1, inner


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="G1,G2,G3,G4")
    ap.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    ap.add_argument("--ptxas", default=os.path.join(os.environ.get("CUDA_HOME",
                                                                   "/usr/local/cuda"),
                                                    "bin", "ptxas"))
    ap.add_argument("--nvdisasm", default=shutil.which("nvdisasm") or "nvdisasm")
    ap.add_argument("--dump", help="also write each kernel's PTX, cubin and SASS here")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args()
    cc = tuple(int(p) for p in args.cc.split("."))
    work = args.dump or tempfile.mkdtemp(prefix="gradc-sass-")
    os.makedirs(work, exist_ok=True)
    print("| workload | kernel | registers | SASS | barriers | a scan's step | loops in it |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.only.split(","):
        ins, make, _, _ = gpu.cases(name, gpu.SIZES[name], np.dtype(args.dtype),
                                    np.random.default_rng(0), {})
        compiled = make("cuda").compile(*ins)
        for k in compiled.lowered.kernels:
            registers, sass = sass_of(compiled, k, cc, args.ptxas, args.nvdisasm, work)
            if args.dump:
                with open(os.path.join(work, f"{name}_{args.dtype}_{k.name}.sass"), "w") as f:
                    f.write(sass)
            ops = collections.Counter(m.group(1) for m in map(OP.match, sass.splitlines())
                                      if m)
            found = step_loop(sass) if "for _s in range(" in k.source else None
            step, inner = found if found else ("", [])
            sizes = ", ".join(str(hi - lo + 1) for lo, hi in inner)
            print(f"| {name} {args.dtype} | {k.name} | {registers} | {sum(ops.values())} | "
                  f"{ops['BAR']} | {step} | {sizes} |")


if __name__ == "__main__":
    main()
