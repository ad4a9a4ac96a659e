"""Kernel gradients of convolutions as one primitive, for the compiled targets.

The transpose rule of ``conv2d`` with respect to the kernel (``prims/conv.py``) writes
the kernel gradient as a convolution of the transposed image with the transposed
cotangent::

    s = conv2d(transpose(I, (1,0,2,3)), transpose(Ȳ, (1,0,2,3)), padding)   # (C, O, kh, kw)

which is right, and which every backend can run.  Its patch matrix holds the same
numbers as the forward convolution's ``im2col(I)``, laid out differently.  This pass
replaces such an equation by ``conv2d_over_batch(I, Ȳ, padding)`` — the same value,
defined directly on I and Ȳ (a convolution contracting over the batch axis)::

    s[c, o, u, v] = Σ_{n,y,x} Î[n, c, y+u, x+v] Ȳ[n, o, y, x]

so that the lowering can compute it from the forward convolution's patch matrix when
the graph has one (``codegen.pysource._conv_plan``), as one product Ȳ · im2col(I)ᵀ.
The transposes it no longer reads are dropped.  Runs after differentiation (like
fusion), so the primitive needs no derivative rules; floating-point convolutions only
(integer ones run as direct loops, with no patch matrix to share), and only those with
stride, dilation and groups 1 (the kernel gradient of a strided, dilated or grouped
convolution is a conv2d with options, lowered as such).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Primitive, Var, make_eqn
from ..prims.conv import _conv2d_abstract, _conv2d_impl, is_plain
from .simplify import dce

SWAP = (1, 0, 2, 3)

conv2d_over_batch_p = Primitive("conv2d_over_batch")
conv2d_over_batch_p.impl = lambda image, other, padding: _conv2d_impl(
    image.transpose(SWAP), other.transpose(SWAP), padding)


def _abstract(image, other, padding):
    class _T:       # the shapes of the transposed operands
        def __init__(self, a):
            self.shape = tuple(a.shape[i] for i in SWAP)
            self.dtype = a.dtype
    return _conv2d_abstract(_T(image), _T(other), padding)


conv2d_over_batch_p.abstract = _abstract


def over_batch(graph: Graph) -> Graph:
    """Replace ``conv2d(transpose(I), transpose(Ȳ))`` (batch and channel axes swapped in
    both) by ``conv2d_over_batch(I, Ȳ)``."""
    producer = {v: e for e in graph.eqns for v in e.outputs}

    def swapped(atom):
        e = producer.get(atom) if isinstance(atom, Var) else None
        if e is not None and e.prim.name == "transpose" and tuple(e.params["perm"]) == SWAP:
            return e.inputs[0]
        return None

    eqns, changed = [], False
    for eqn in graph.eqns:
        if eqn.prim.name == "conv2d" and np.dtype(eqn.outputs[0].dtype).kind in "fc" \
                and is_plain(eqn.params):
            image, other = (swapped(a) for a in eqn.inputs)
            if image is not None and other is not None:
                eqn = make_eqn(conv2d_over_batch_p, (image, other), eqn.outputs,
                               dict(eqn.params), eqn.source)
                changed = True
        eqns.append(eqn)
    return dce(graph.replace(eqns=tuple(eqns))) if changed else graph
