"""Index algebra of gather-form fusion: where an element of an equation's output reads
its operands.

An index is a tuple with one ``Affine`` per dimension, ``mult * sym + offset`` in one
loop (or window) variable ``sym``, with the range ``[lo, hi]`` its values take.  The
fusion pass uses it to count a fused body's work; the loop lowering (``codegen.loops``)
uses it to print reads such as ``a[i0 + 1]`` and to drop window tests that always hold.
"""
from __future__ import annotations


class Affine:
    """``mult * sym + offset`` (``sym`` None: the constant ``offset``), in [lo, hi]."""

    __slots__ = ("sym", "mult", "offset", "lo", "hi")

    def __init__(self, sym, mult, offset, lo, hi):
        self.sym, self.mult, self.offset, self.lo, self.hi = sym, mult, offset, lo, hi

    @classmethod
    def const(cls, c):
        return cls(None, 0, c, c, c)

    def map(self, mult, offset) -> "Affine":
        """``mult * self + offset``."""
        if mult == 0 or self.sym is None:
            return Affine.const(self.offset * mult + offset)
        lo, hi = self.lo * mult + offset, self.hi * mult + offset
        return Affine(self.sym, self.mult * mult, self.offset * mult + offset,
                      min(lo, hi), max(lo, hi))

    def clamp(self, lo, hi) -> "Affine":
        return Affine(self.sym, self.mult, self.offset, max(self.lo, lo), min(self.hi, hi))

    def key(self):
        return (self.sym, self.mult, self.offset)

    def __str__(self):
        if self.sym is None or self.mult == 0:
            return str(self.offset)
        if self.mult == 1:
            term = self.sym
        elif self.mult == -1:
            term = f"-{self.sym}"
        else:
            term = f"{self.mult} * {self.sym}"
        if self.offset == 0:
            return term
        return f"{term} + {self.offset}" if self.offset > 0 else f"{term} - {-self.offset}"


def window(index_entry, n_out):
    """``(start, step)`` of a slice/pad entry ``(start, stop, step)`` over ``n_out``."""
    a, b, s = index_entry
    start, _, step = slice(a, b, s).indices(n_out)
    return start, step


def operand_indices(eqn, idx):
    """For an element ``idx`` of the output of a fusible, non-pad equation: the index
    each operand is read at (``()`` for rank-0 operands)."""
    name, p = eqn.prim.name, eqn.params
    x = eqn.inputs[0]
    if name == "broadcast_in_dim":
        if x.ndim == 0:
            return [()]
        return [tuple(idx[d] if x.shape[k] != 1 else Affine.const(0)
                      for k, d in enumerate(p["dims"]))]
    if name == "slice":
        sub = []
        for c, entry, n in zip(idx, p["index"], x.shape):
            start, step = window(entry, n)
            sub.append(c.map(step, start))
        return [tuple(sub)]
    if name == "transpose":
        inv = [0] * len(p["perm"])
        for k, d in enumerate(p["perm"]):
            inv[d] = k
        return [tuple(idx[inv[d]] for d in range(x.ndim))]
    if name == "reshape":
        kept = iter(c for c, n in zip(idx, eqn.outputs[0].shape) if n != 1)
        return [tuple(Affine.const(0) if n == 1 else next(kept) for n in x.shape)]
    return [idx if a.ndim else () for a in eqn.inputs]


def pad_window(eqn, idx):
    """For an element ``idx`` of a ``pad``'s output: per dimension either
    ``("affine", k)`` (the operand index ``k``, an Affine, valid when 0 <= k < n) or
    ``("strided", c, start, step)`` (|step| > 1: valid when (c - start) % step == 0),
    and whether the element lies outside the window everywhere (then it is zero)."""
    x, p = eqn.inputs[0], eqn.params
    dims = []
    for c, entry, n_out, n in zip(idx, p["index"], eqn.outputs[0].shape, x.shape):
        start, step = window(entry, n_out)
        if abs(step) == 1:
            k = c.map(step, -start * step)            # (c - start) / step
            if k.hi < 0 or k.lo > n - 1:
                return dims, True
            dims.append(("affine", k))
        else:
            dims.append(("strided", c, start, step))
    return dims, False


def reads(eqn, idx):
    """``[(operand, index)]``: what one element ``idx`` of a fusible equation reads (for a
    reduction, ``idx`` ranges over the reduced operand; a strided pad window reads at a
    fresh window variable)."""
    if eqn.prim.name.startswith("reduce_"):
        return [(eqn.inputs[0], idx)]
    if eqn.prim.name == "pad":
        dims, outside = pad_window(eqn, idx)
        if outside:
            return []
        sub = tuple(d[1].clamp(0, n - 1) if d[0] == "affine"
                    else Affine(f"w{id(d)}", 1, 0, 0, n - 1)
                    for d, n in zip(dims, eqn.inputs[0].shape))
        return [(eqn.inputs[0], sub)]
    return list(zip(eqn.inputs, operand_indices(eqn, idx)))
