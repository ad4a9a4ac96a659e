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


def _conv2d_impl(image, kernel, padding):
    kh, kw = kernel.shape[2], kernel.shape[3]
    padded = _pad_or_crop(np.asarray(image), padding)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    return np.einsum("nchwuv,ocuv->nohw", windows, kernel, optimize=True)


def _conv2d_abstract(image, kernel, padding):
    if len(image.shape) != 4 or len(kernel.shape) != 4:
        raise ShapeError(f"conv2d: expected image (N, C, H, W) and kernel (O, C, KH, KW), got "
                         f"{tuple(image.shape)} and {tuple(kernel.shape)}")
    n, c, h, w = image.shape
    o, c2, kh, kw = kernel.shape
    if c != c2:
        raise ShapeError(f"conv2d: image has {c} channels but the kernel expects {c2}")
    (top, bottom), (left, right) = padding
    ho, wo = h + top + bottom - kh + 1, w + left + right - kw + 1
    if ho <= 0 or wo <= 0:
        raise ShapeError(f"conv2d: kernel {kh}x{kw} is larger than the padded image")
    if np.dtype(image.dtype) != np.dtype(kernel.dtype):
        raise DTypeError("conv2d: image and kernel dtypes differ")
    return [((n, o, ho, wo), image.dtype)]


def _transpose_image(ct, image, kernel, padding):
    from .index import slice_
    from .shape import transpose
    kh, kw = kernel.shape[2], kernel.shape[3]
    (top, bottom), (left, right) = padding
    rotated = slice_(kernel, ((0, kernel.shape[0], 1), (0, kernel.shape[1], 1),
                              (kh - 1, None, -1), (kw - 1, None, -1)))
    flipped = transpose(rotated, (1, 0, 2, 3))
    return conv2d(ct, flipped, ((kh - 1 - top, kh - 1 - bottom),
                                (kw - 1 - left, kw - 1 - right)))


def _transpose_kernel(ct, image, kernel, padding):
    from .shape import transpose
    swapped = conv2d(transpose(image, (1, 0, 2, 3)), transpose(ct, (1, 0, 2, 3)), padding)
    return transpose(swapped, (1, 0, 2, 3))


conv2d_p.impl = _conv2d_impl
conv2d_p.abstract = _conv2d_abstract
defbilinear(conv2d_p, _transpose_image, _transpose_kernel)


def conv2d(image, kernel, padding):
    padding = tuple((int(a), int(b)) for a, b in padding)
    return bind(conv2d_p, image, kernel, padding=padding)
