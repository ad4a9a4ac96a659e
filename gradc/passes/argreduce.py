"""``argmax`` and ``argmin`` inside a scan's step, for the CUDA target, as two
reductions the one-kernel scan lowers (``codegen.cudarows``), where it has no lowering
of the primitives themselves (the step then ran as a host loop, a launch or more a
step):

    argmax(x, axis) = min over axis of where((x == max(x, axis)) | (x != x), iota, n)

The first index of the maximum, or, when ``x`` holds a NaN (the maximum is then NaN,
and no element equals it), the first NaN's: NumPy's ties and NaNs.  The second
reduction reads the first's result at its own kept element, so the two merge into one
loop (``cudarows._merged``).  ``passes.steps`` applies it inside scans' bodies.
"""
from __future__ import annotations

import numpy as np

ARG = {"argmax": np.max, "argmin": np.min}


def decomposable(eqn) -> bool:
    """Whether ``eqn`` is an ``argmax``/``argmin`` of real numbers (``passes.steps``
    rewrites those inside a scan's body)."""
    return eqn.prim.name in ARG and eqn.inputs[0].ndim > 0 and \
        np.dtype(eqn.inputs[0].dtype).kind in "biuf"


def first_index(v, name: str, axis: int):
    """``argmax``/``argmin`` (``name``) of traced ``v`` along ``axis`` as reductions."""
    n = int(v.shape[axis])
    iota = np.arange(n, dtype=np.int64).reshape(
        [n if d == axis else 1 for d in range(len(v.shape))])
    hit = v == ARG[name](v, axis=axis, keepdims=True)
    if np.dtype(v.dtype).kind == "f":
        hit = hit | (v != v)
    return np.min(np.where(hit, iota, np.int64(n)), axis=axis)
