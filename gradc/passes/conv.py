"""Kernel gradients of convolutions, and image gradients of strided ones, as primitives
of their own, for the compiled targets.

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
(integer ones run as direct loops, with no patch matrix to share).  The kernel gradient
of a convolution with options is a conv2d of the (regrouped) transposed image with
stride and dilation exchanged (``_transpose_kernel``); it becomes a
``conv2d_over_batch`` with the forward convolution's options, which the CPU computes
from the forward form's strided patch matrix (``kernels.conv2d_general_kernel_grad``).

The image gradient of a strided convolution is, by its transpose rule, a ``conv2d`` of
the cotangent with sh-1 (sw-1) zeros inserted between its rows (columns), a ``pad``
with a step: sh·sw times the multiply-adds it needs, all but one in sh·sw by zeros.
``dilated_inputs`` replaces such an equation by ``conv2d_dilated_input(Ȳ, K', padding,
input_dilation=(sh, sw), ...)``, the same value (XLA's ``lhs_dilation``)::

    out[n, g·Cg+c, Y, X] = Σ_{o<Og,u,v} Ȳ[n, g·Og+o, y, x] K'[g·Cg+c, o, u, v]
        over Y = y·sh + top - u·dh, X = x·sw + left - v·dw

with the pad's own offset and trailing zeros folded into ``padding``: the lowering
computes only the products of the cotangent's entries (``kernels.conv2d_dilated_input``
on the CPU, a tap test per thread on the GPU).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Primitive, Var, make_eqn
from ..prims.conv import _conv2d_abstract, _conv2d_impl
from ..prims.conv import options as conv_options
from .simplify import dce

SWAP = (1, 0, 2, 3)

conv2d_over_batch_p = Primitive("conv2d_over_batch")


def _over_batch_operands(image, other, opts):
    """The operands and options of the ``conv2d`` that a ``conv2d_over_batch`` of
    ``image`` and ``other`` with options ``opts`` stands for (as the transpose rule
    writes it: ``prims.conv._transpose_kernel``), as functions of their shapes:
    stride and dilation exchanged, with groups (group, example) as the channels."""
    (sh, sw), (dh, dw), groups = conv_options(opts)
    n, c, h, w = image.shape
    lhs = (c // groups, groups * n, h, w)
    rhs = tuple(other.shape[i] for i in SWAP)
    swapped = {k: v for k, v in (("stride", (dh, dw)), ("dilation", (sh, sw)),
                                 ("groups", groups)) if v not in ((1, 1), 1)}
    return lhs, rhs, swapped


def _over_batch_impl(image, other, padding, **opts):
    image, other = np.asarray(image), np.asarray(other)
    if not opts:
        return _conv2d_impl(image.transpose(SWAP), other.transpose(SWAP), padding)
    lhs, _, swapped = _over_batch_operands(image, other, opts)
    groups = conv_options(opts)[2]
    n, c, h, w = image.shape
    lhs = image.reshape(n, groups, c // groups, h, w).transpose(2, 1, 0, 3, 4).reshape(lhs)
    return _conv2d_impl(lhs, other.transpose(SWAP), padding, **swapped)


conv2d_over_batch_p.impl = _over_batch_impl


def _abstract(image, other, padding, **opts):
    class _S:       # the shapes of the operands of the conv2d it stands for
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, dtype
    lhs, rhs, swapped = _over_batch_operands(image, other, opts)
    return _conv2d_abstract(_S(lhs, image.dtype), _S(rhs, other.dtype), padding, **swapped)


conv2d_over_batch_p.abstract = _abstract


def over_batch(graph: Graph) -> Graph:
    """Replace ``conv2d(transpose(I), transpose(Ȳ))`` (batch and channel axes swapped in
    both) by ``conv2d_over_batch(I, Ȳ)``; with options, stride and dilation exchanged
    back, and with groups the images' transpose the one of ``_transpose_kernel``."""
    producer = {v: e for e in graph.eqns for v in e.outputs}

    def made(atom, name):
        e = producer.get(atom) if isinstance(atom, Var) else None
        return e if e is not None and e.prim.name == name else None

    def swapped(atom):
        e = made(atom, "transpose")
        if e is not None and tuple(e.params["perm"]) == SWAP:
            return e.inputs[0]
        return None

    def regrouped(atom, groups):
        """I when ``atom`` is I (N, G·Cg, H, W) as (Cg, G·N, H, W)."""
        if groups == 1:
            return swapped(atom)
        outer = made(atom, "reshape")
        middle = None if outer is None else made(outer.inputs[0], "transpose")
        if middle is None or tuple(middle.params["perm"]) != (2, 1, 0, 3, 4):
            return None
        inner = made(middle.inputs[0], "reshape")
        if inner is None:
            return None
        image = inner.inputs[0]
        if image.ndim != 4:
            return None
        n, c, h, w = image.shape
        if tuple(inner.outputs[0].shape) != (n, groups, c // groups, h, w):
            return None
        return image

    eqns, changed = [], False
    for eqn in graph.eqns:
        if eqn.prim.name == "conv2d" and np.dtype(eqn.outputs[0].dtype).kind in "fc":
            (sh, sw), (dh, dw), groups = conv_options(eqn.params)
            image, other = regrouped(eqn.inputs[0], groups), swapped(eqn.inputs[1])
            if image is not None and other is not None:
                params = {"padding": eqn.params["padding"]} | {
                    k: v for k, v in (("stride", (dh, dw)), ("dilation", (sh, sw)),
                                      ("groups", groups)) if v not in ((1, 1), 1)}
                eqn = make_eqn(conv2d_over_batch_p, (image, other), eqn.outputs, params,
                               eqn.source)
                changed = True
        eqns.append(eqn)
    return dce(graph.replace(eqns=tuple(eqns))) if changed else graph


# ---------------------------------------------------------------- strided image gradients

conv2d_dilated_input_p = Primitive("conv2d_dilated_input")


def dilate(x, input_dilation):
    """``x`` (N, C, h, w) with sh-1 (sw-1) zeros between its rows (columns)."""
    sh, sw = input_dilation
    x = np.asarray(x)
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), x.dtype)
    out[:, :, ::sh, ::sw] = x
    return out


conv2d_dilated_input_p.impl = lambda x, kernel, padding, input_dilation, **opts: \
    _conv2d_impl(dilate(x, input_dilation), kernel, padding, **opts)


def _dilated_abstract(x, kernel, padding, input_dilation, **opts):
    class _D:       # the shape of the dilated operand
        def __init__(self, a):
            n, c, h, w = a.shape
            self.shape = (n, c, (h - 1) * input_dilation[0] + 1,
                          (w - 1) * input_dilation[1] + 1)
            self.dtype = a.dtype
    return _conv2d_abstract(_D(x), kernel, padding, **opts)


conv2d_dilated_input_p.abstract = _dilated_abstract


def _spread(eqn):
    """``(x, ((before, after) per spatial axis), (sh, sw))`` when ``eqn`` is a ``pad``
    that places ``x`` (N, C, h, w) with steps in its last two axes and whole in the
    first two, a step > 1 among them; else None."""
    if eqn.prim.name != "pad" or len(eqn.params["shape"]) != 4:
        return None
    x, shape, index = eqn.inputs[0], eqn.params["shape"], eqn.params["index"]
    if any(tuple(index[i]) != (0, shape[i], 1) for i in (0, 1)):
        return None
    pads, steps = [], []
    for axis in (2, 3):
        start, _, step = index[axis]
        if start is None or start < 0 or step is None or step < 1:
            return None
        last = start + (x.shape[axis] - 1) * step
        pads.append((start, shape[axis] - last - 1))
        steps.append(step)
    if steps == [1, 1] or min(p for pair in pads for p in pair) < 0:
        return None
    return x, tuple(pads), tuple(steps)


def dilated_inputs(graph: Graph) -> Graph:
    """Replace ``conv2d(pad(x, steps), K)`` (stride 1, float) by
    ``conv2d_dilated_input(x, K)``, the pad's offsets added to the padding."""
    producer = {v: e for e in graph.eqns for v in e.outputs}
    eqns, changed = [], False
    for eqn in graph.eqns:
        source = producer.get(eqn.inputs[0]) if eqn.prim.name == "conv2d" and \
            isinstance(eqn.inputs[0], Var) else None
        if source is not None and np.dtype(eqn.outputs[0].dtype).kind in "fc" \
                and conv_options(eqn.params)[0] == (1, 1):
            spread = _spread(source)
            if spread is not None:
                x, pads, steps = spread
                padding = tuple((a + p, b + q) for (a, b), (p, q)
                                in zip(eqn.params["padding"], pads))
                params = {k: v for k, v in eqn.params.items() if k != "padding"}
                eqn = make_eqn(conv2d_dilated_input_p, (x, eqn.inputs[1]), eqn.outputs,
                               dict(padding=padding, input_dilation=steps, **params),
                               eqn.source)
                changed = True
        eqns.append(eqn)
    return dce(graph.replace(eqns=tuple(eqns))) if changed else graph
