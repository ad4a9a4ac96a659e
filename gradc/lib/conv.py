"""``gradc.conv2d``: 2-D cross-correlation with zero padding, strides, dilation and groups
(PyTorch's ``conv2d`` options)."""
from __future__ import annotations

from .. import ops
from ..errors import ArgumentError, ShapeError, with_location
from ..numpy_api import operand, promote
from ..trace import shape_of


def conv2d(image, kernel, padding="valid", *, stride=1, dilation=1, groups=1, bias=None,
           padding_mode="zeros"):
    """Cross-correlation ``O[n,o,y,x] = Σ_{c,u,v} Î[n,c,y+u,x+v] K[o,c,u,v]``.

    ``image`` has layout (N, C, H, W), ``kernel`` (O, C, KH, KW).  ``padding`` is
    ``"valid"`` (no padding), ``"same"`` (output H×W; for even kernels the extra row
    and column of zeros go at the bottom/right), an int ``p`` (p rows and columns of
    zeros on every side), ``(ph, pw)`` (PyTorch's: ph rows at the top and bottom, pw
    columns left and right), or explicit ``((top, bottom), (left, right))`` (a negative
    count crops).

    The keyword options are PyTorch's (``torch.nn.functional.conv2d``), each an int or
    an ``(h, w)`` pair of ints >= 1:

    * ``stride=(sh, sw)``: the window moves sh rows (sw columns) between outputs;
    * ``dilation=(dh, dw)``: the kernel's taps are dh rows (dw columns) apart;
    * ``groups=G``: the channels split into G groups convolved separately; G divides C
      and O, and the kernel has shape (O, C/G, KH, KW) (``groups=C``: a depthwise
      convolution).

    With them ``O[n, g·O/G+o, y, x] = Σ_{c<C/G,u,v} Î[n, g·C/G+c, y·sh+u·dh, x·sw+v·dw]
    K[g·O/G+o, c, u, v]``, and the output has ``(H + top + bottom - dh·(KH-1) - 1) // sh
    + 1`` rows (columns alike).  ``"same"`` pads dh·(KH-1) rows in all (the odd one at
    the bottom) and, as in PyTorch, is refused with a stride other than 1.
    Differentiable in both arguments (a bilinear primitive).

    Also PyTorch's (``torch.nn.Conv2d``): ``bias`` (shape (O,), added to each output
    channel) and ``padding_mode``: ``"zeros"``, or the padded rows and columns copied
    from the image, ``"reflect"`` (mirrored without the edge, ``np.pad``'s
    ``"reflect"``), ``"replicate"`` (the edge repeated, ``"edge"``) or ``"circular"``
    (wrapped around, ``"wrap"``); these pad with ``np.pad`` and convolve without padding.
    """
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if not _count(groups) or groups < 1:
        raise ArgumentError(with_location(
            f"conv2d: groups must be an int >= 1; got {groups!r}"))
    image, kernel = promote(operand(image), operand(kernel), float_result=True)
    if len(shape_of(image)) != 4 or len(shape_of(kernel)) != 4:
        raise ShapeError(with_location(
            f"conv2d: expected image (N, C, H, W) and kernel (O, C, KH, KW), got "
            f"{tuple(shape_of(image))} and {tuple(shape_of(kernel))}"))
    kh, kw = shape_of(kernel)[2], shape_of(kernel)[3]
    if isinstance(padding, str) and padding == "valid":
        pads = ((0, 0), (0, 0))
    elif isinstance(padding, str) and padding == "same":
        if (sh, sw) != (1, 1):
            raise ArgumentError(with_location(
                f"conv2d: padding='same' needs stride 1 (as in PyTorch: with a stride the "
                f"output cannot keep the input's size); got stride={stride!r}. Give the "
                f"padding as numbers instead"))
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
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
    mode = _PADDING_MODES.get(padding_mode) if isinstance(padding_mode, str) else None
    if mode is None:
        raise ArgumentError(with_location(
            f"conv2d: padding_mode must be one of {', '.join(map(repr, _PADDING_MODES))}; "
            f"got {padding_mode!r}"))
    if mode != "constant" and any(p > 0 for side in pads for p in side):
        import numpy as np
        grown = tuple((max(a, 0), max(b, 0)) for a, b in pads)
        h, w = shape_of(image)[2], shape_of(image)[3]
        if mode == "reflect" and any(p >= n for (a, b), n in zip(grown, (h, w))
                                     for p in (a, b)):
            raise ArgumentError(with_location(
                f"conv2d: padding_mode='reflect' pads {grown} but the image is {h}x{w}: a "
                f"reflection pads fewer rows (columns) than the image has (as in PyTorch)"))
        image = np.pad(image, ((0, 0), (0, 0)) + grown, mode=mode)
        pads = tuple((min(a, 0), min(b, 0)) for a, b in pads)   # (cropping stays)
    out = ops.conv2d(image, kernel, pads, stride=(sh, sw), dilation=(dh, dw),
                     groups=int(groups))
    if bias is None:
        return out
    bias = operand(bias)
    if tuple(shape_of(bias)) != (shape_of(kernel)[0],):
        raise ShapeError(with_location(
            f"conv2d: bias must have shape ({shape_of(kernel)[0]},), one value per output "
            f"channel; got {tuple(shape_of(bias))}"))
    return out + ops.reshape(bias, (1, shape_of(kernel)[0], 1, 1))


# PyTorch's padding modes and np.pad's names for them
_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
                  "circular": "wrap"}


def _pair(value, name) -> tuple:
    """An int or an (h, w) pair of ints, each >= 1, as a pair."""
    if _count(value) and value >= 1:
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and \
            all(_count(v) and v >= 1 for v in value):
        return int(value[0]), int(value[1])
    raise ArgumentError(with_location(
        f"conv2d: {name} must be an int >= 1 or an (h, w) pair of them; got {value!r}"))


def _count(p, signed=False) -> bool:
    """Whether ``p`` is a count of rows or columns (an int, not a bool; >= 0 unless
    ``signed``: explicit pads may crop)."""
    import numpy as np
    return isinstance(p, (int, np.integer)) and not isinstance(p, bool) and (signed or p >= 0)
