"""``gradc.conv2d``: 2-D cross-correlation with 'same' or 'valid' zero padding."""
from __future__ import annotations

from .. import ops
from ..errors import ArgumentError, ShapeError, with_location
from ..numpy_api import operand, promote
from ..trace import shape_of


def conv2d(image, kernel, padding="valid"):
    """Cross-correlation ``O[n,o,y,x] = Σ_{c,u,v} Î[n,c,y+u,x+v] K[o,c,u,v]``.

    ``image`` has layout (N, C, H, W), ``kernel`` (O, C, KH, KW).  ``padding`` is
    ``"valid"`` (no padding), ``"same"`` (output H×W; for even kernels the extra row
    and column of zeros go at the bottom/right), an int ``p`` (p rows and columns of
    zeros on every side), ``(ph, pw)`` (PyTorch's: ph rows at the top and bottom, pw
    columns left and right), or explicit ``((top, bottom), (left, right))`` (a negative
    count crops).
    Differentiable in both arguments (a bilinear primitive).
    """
    image, kernel = promote(operand(image), operand(kernel), float_result=True)
    if len(shape_of(image)) != 4 or len(shape_of(kernel)) != 4:
        raise ShapeError(with_location(
            f"conv2d: expected image (N, C, H, W) and kernel (O, C, KH, KW), got "
            f"{tuple(shape_of(image))} and {tuple(shape_of(kernel))}"))
    kh, kw = shape_of(kernel)[2], shape_of(kernel)[3]
    if isinstance(padding, str) and padding == "valid":
        pads = ((0, 0), (0, 0))
    elif isinstance(padding, str) and padding == "same":
        pads = (((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))
    elif _count(padding):
        pads = ((int(padding),) * 2,) * 2
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and \
            all(_count(p) for p in padding):
        pads = tuple((int(p), int(p)) for p in padding)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(_count(q, True) for q in p)
            for p in padding):
        pads = tuple((int(p[0]), int(p[1])) for p in padding)
    else:
        raise ArgumentError(with_location(
            f"conv2d: padding must be 'same', 'valid', an int >= 0, (rows, columns) >= 0 or "
            f"((top, bottom), (left, right)) (negative: cropped); got {padding!r}"))
    return ops.conv2d(image, kernel, pads)


def _count(p, signed=False) -> bool:
    """Whether ``p`` is a count of rows or columns (an int, not a bool; >= 0 unless
    ``signed``: explicit pads may crop)."""
    import numpy as np
    return isinstance(p, (int, np.integer)) and not isinstance(p, bool) and (signed or p >= 0)
