"""2-D cross-correlation, the convolution of deep learning (``gradc.conv2d``).

``conv2d(I, K, padding)`` with I of shape (N, C, H, W), K of shape (O, C, KH, KW) and
``padding = ((top, bottom), (left, right))`` (negative entries crop):

    O[n, o, y, x] = Σ_{c,u,v} Î[n, c, y+u, x+v] K[o, c, u, v]

where Î is I zero-padded.  conv2d is bilinear, and both transposes are again conv2d
(the formulas of the lecture notes, ``shared/seeds/003``):

* dL/dI = CC(dL/dO, K rotated by 180° with O and C swapped), padded by KH-1-top,
  KH-1-bottom (and likewise in width): a "full" correlation for a "valid" conv.
* dL/dK = CC(Î, dL/dO) with the batch axis acting as the channel axis: treat Iᵀ
  (C, N, H, W) as the input and (dL/dO)ᵀ (O, N, Ho, Wo) as the kernel.

Options (PyTorch's ``stride``, ``dilation``, ``groups``): params ``stride=(sh, sw)``,
``dilation=(dh, dw)`` and ``groups=G``, each present only when it is not the default
(1), so that the equations, the rules' graphs and the generated code of a plain
convolution are what they were before the options existed.  With K of shape
(O, C/G, KH, KW), Cg = C/G and Og = O/G input and output channels per group:

    O[n, g·Og+o, y, x] = Σ_{c<Cg,u,v} Î[n, g·Cg+c, y·sh + u·dh, x·sw + v·dw] K[g·Og+o, c, u, v]

and the output is Ho = (H + top + bottom - dh·(KH-1) - 1) // sh + 1 rows (Wo alike).
The transposes stay conv2d (as JAX's ``conv_general_dilated`` rules):

* dL/dI: dL/dO with sh-1 (sw-1) zeros between its rows (columns) (a ``pad`` with a
  step), correlated with K rotated by 180° (O and C swapped within each group: shape
  (C, Og, KH, KW)), dilation (dh, dw), G groups, padded by dh·(KH-1)-top on top and
  H + top - (Ho-1)·sh - 1 at the bottom (the rows no output reads get zeros).  The
  compiled targets never form the zeros (``passes.conv.dilated_inputs``).
* dL/dK: Î with its channels of a group as the batch and (group, n) as the channels,
  (Cg, G·N, H, W), correlated with (dL/dO)ᵀ (O, N, Ho, Wo) as the kernel, G groups,
  stride (dh, dw) and dilation (sh, sw), the bottom padding cut so that the result is
  exactly KH rows (Cg, O, KH, KW), then transposed.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Primitive
from ..trace import bind
from .rules import defbilinear

conv2d_p = Primitive("conv2d")


def _pad_or_crop(x, padding):
    (top, bottom), (left, right) = padding
    x = np.pad(x, ((0, 0), (0, 0), (max(top, 0), max(bottom, 0)),
                   (max(left, 0), max(right, 0))))
    h, w = x.shape[2], x.shape[3]
    return x[:, :, max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0)]


DEFAULTS = {"stride": (1, 1), "dilation": (1, 1), "groups": 1}


def options(params) -> tuple:
    """``(stride, dilation, groups)`` of a conv2d equation's params (absent: 1)."""
    return tuple(params.get(k, v) for k, v in DEFAULTS.items())


def is_plain(params) -> bool:
    """Whether a conv2d equation has stride, dilation and groups 1 (no such params)."""
    return options(params) == tuple(DEFAULTS.values())


def output_size(n, pads, k, stride, dilation) -> int:
    """Output rows (or columns) of a convolution along one axis of ``n``."""
    return (n + pads[0] + pads[1] - dilation * (k - 1) - 1) // stride + 1


def _conv2d_impl(image, kernel, padding, **opts):
    kh, kw = kernel.shape[2], kernel.shape[3]
    padded = _pad_or_crop(np.asarray(image), padding)
    if not opts:
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
        return np.einsum("nchwuv,ocuv->nohw", windows, kernel, optimize=True)
    (sh, sw), (dh, dw), groups = options(opts)
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))[
            :, :, ::sh, ::sw, ::dh, ::dw]
    n, c, ho, wo = windows.shape[:4]
    o = kernel.shape[0]
    windows = windows.reshape(n, groups, c // groups, ho, wo, kh, kw)
    kernel = np.asarray(kernel).reshape(groups, o // groups, c // groups, kh, kw)
    out = np.einsum("ngchwuv,gocuv->ngohw", windows, kernel, optimize=True)
    return out.reshape(n, o, ho, wo)


def _conv2d_abstract(image, kernel, padding, **opts):
    if len(image.shape) != 4 or len(kernel.shape) != 4:
        raise ShapeError(f"conv2d: expected image (N, C, H, W) and kernel (O, C, KH, KW), got "
                         f"{tuple(image.shape)} and {tuple(kernel.shape)}")
    n, c, h, w = image.shape
    o, c2, kh, kw = kernel.shape
    (sh, sw), (dh, dw), groups = options(opts)
    if groups == 1 and c != c2:
        raise ShapeError(f"conv2d: image has {c} channels but the kernel expects {c2}")
    if groups != 1:
        if c % groups or o % groups:
            raise ShapeError(
                f"conv2d: groups={groups} must divide the image's {c} channels and the "
                f"kernel's {o} output channels")
        if c != c2 * groups:
            raise ShapeError(
                f"conv2d: image has {c} channels, {c // groups} per group of {groups}, but "
                f"the kernel expects {c2} (kernel shape (O, C/groups, KH, KW))")
    (top, bottom), (left, right) = padding
    ho = output_size(h, (top, bottom), kh, sh, dh)
    wo = output_size(w, (left, right), kw, sw, dw)
    if ho <= 0 or wo <= 0:
        if (dh, dw) == (1, 1):
            raise ShapeError(f"conv2d: kernel {kh}x{kw} is larger than the padded image")
        raise ShapeError(f"conv2d: kernel {kh}x{kw} with dilation ({dh}, {dw}) spans "
                         f"{dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}, larger than the padded "
                         f"image {h + top + bottom}x{w + left + right}")
    if np.dtype(image.dtype) != np.dtype(kernel.dtype):
        raise DTypeError("conv2d: image and kernel dtypes differ")
    return [((n, o, ho, wo), image.dtype)]


def _transpose_image(ct, image, kernel, padding, **opts):
    from .index import pad, slice_
    from .shape import reshape, transpose
    kh, kw = kernel.shape[2], kernel.shape[3]
    (top, bottom), (left, right) = padding
    rotated = slice_(kernel, ((0, kernel.shape[0], 1), (0, kernel.shape[1], 1),
                              (kh - 1, None, -1), (kw - 1, None, -1)))
    if not opts:
        flipped = transpose(rotated, (1, 0, 2, 3))
        return conv2d(ct, flipped, ((kh - 1 - top, kh - 1 - bottom),
                                    (kw - 1 - left, kw - 1 - right)))
    (sh, sw), (dh, dw), groups = options(opts)
    o, cg = kernel.shape[:2]
    # (O, Cg) -> (C, Og): output and input channels swapped within each group
    flipped = transpose(reshape(rotated, (groups, o // groups, cg, kh, kw)), (0, 2, 1, 3, 4))
    flipped = reshape(flipped, (groups * cg, o // groups, kh, kw))
    nn, _, ho, wo = ct.shape
    if (sh, sw) != (1, 1):      # sh-1 zero rows between the rows of the cotangent
        ct = pad(ct, (nn, o, (ho - 1) * sh + 1, (wo - 1) * sw + 1),
                 ((0, nn, 1), (0, o, 1), (0, (ho - 1) * sh + 1, sh),
                  (0, (wo - 1) * sw + 1, sw)))
    h, w = image.shape[2], image.shape[3]
    pads = ((dh * (kh - 1) - top, h + top - (ho - 1) * sh - 1),
            (dw * (kw - 1) - left, w + left - (wo - 1) * sw - 1))
    return conv2d(ct, flipped, pads, dilation=(dh, dw), groups=groups)


def _transpose_kernel(ct, image, kernel, padding, **opts):
    from .shape import reshape, transpose
    if not opts:
        swapped = conv2d(transpose(image, (1, 0, 2, 3)), transpose(ct, (1, 0, 2, 3)),
                         padding)
        return transpose(swapped, (1, 0, 2, 3))
    (sh, sw), (dh, dw), groups = options(opts)
    nn, c, h, w = image.shape
    kh, kw = kernel.shape[2], kernel.shape[3]
    ho, wo = ct.shape[2], ct.shape[3]
    if groups == 1:
        lhs = transpose(image, (1, 0, 2, 3))
    else:                           # (N, G·Cg, H, W) -> (Cg, G·N, H, W)
        lhs = reshape(transpose(reshape(image, (nn, groups, c // groups, h, w)),
                                (2, 1, 0, 3, 4)), (c // groups, groups * nn, h, w))
    (top, _), (left, _) = padding
    # the bottom (right) padding that leaves exactly the rows the taps read
    pads = ((top, dh * (kh - 1) + (ho - 1) * sh + 1 - h - top),
            (left, dw * (kw - 1) + (wo - 1) * sw + 1 - w - left))
    swapped = conv2d(lhs, transpose(ct, (1, 0, 2, 3)), pads, stride=(dh, dw),
                     dilation=(sh, sw), groups=groups)
    return transpose(swapped, (1, 0, 2, 3))


conv2d_p.impl = _conv2d_impl
conv2d_p.abstract = _conv2d_abstract
defbilinear(conv2d_p, _transpose_image, _transpose_kernel)


def conv2d(image, kernel, padding, stride=(1, 1), dilation=(1, 1), groups=1):
    """The primitive; options that are 1 are left out of the params (``is_plain``)."""
    padding = tuple((int(a), int(b)) for a, b in padding)
    given = {"stride": tuple(int(s) for s in stride),
             "dilation": tuple(int(d) for d in dilation), "groups": int(groups)}
    opts = {k: v for k, v in given.items() if v != DEFAULTS[k]}
    return bind(conv2d_p, image, kernel, padding=padding, **opts)
