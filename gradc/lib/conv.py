"""``gradc.conv2d``: 2-D cross-correlation with 'same' or 'valid' zero padding."""
from __future__ import annotations

from .. import ops
from ..errors import ArgumentError, with_location
from ..numpy_api import operand, promote


def conv2d(image, kernel, padding="valid"):
    """Cross-correlation ``O[n,o,y,x] = Σ_{c,u,v} Î[n,c,y+u,x+v] K[o,c,u,v]``.

    ``image`` has layout (N, C, H, W), ``kernel`` (O, C, KH, KW).  ``padding`` is
    ``"valid"`` (no padding), ``"same"`` (output H×W; for even kernels the extra row
    and column of zeros go at the bottom/right), or explicit ``((top, bottom), (left,
    right))``.  Differentiable in both arguments (a bilinear primitive).
    """
    image, kernel = promote(operand(image), operand(kernel), float_result=True)
    kh, kw = kernel.shape[2], kernel.shape[3]
    if padding == "valid":
        pads = ((0, 0), (0, 0))
    elif padding == "same":
        pads = (((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        pads = tuple(tuple(p) for p in padding)
    else:
        raise ArgumentError(with_location(
            f"conv2d: padding must be 'same', 'valid' or ((top, bottom), (left, right)), "
            f"got {padding!r}"))
    return ops.conv2d(image, kernel, pads)
