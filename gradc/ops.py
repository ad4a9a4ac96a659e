"""gradc's operation namespace (like ``jax.lax``): one function per primitive, plus a few
helpers.  Rules are written with these, so every derivative is itself traceable.

Operands are arrays or Tracers.  Elementwise operations accept equal shapes or rank-0
operands; Python scalars take the dtype of the array they meet.
"""
from __future__ import annotations

import numpy as np

from .trace import dtype_of

from .prims.control import guard, stop_gradient  # noqa: F401
from .prims.conv import conv2d  # noqa: F401
from .prims.decomp import cholesky, eigh, qr, svd  # noqa: F401
from .prims.special import (digamma, erf, erfc, erfinv, gamma, lgamma, ndtri,  # noqa: F401
                            polygamma)
from .prims.elementwise import (  # noqa: F401
    abs, acos, acosh, add, asin, asinh, atan, atan2, atanh, bitwise_and, bitwise_not,
    bitwise_or, bitwise_xor, cbrt, ceil, convert_element_type, cos, cosh, div, eq, exp, exp2,
    expm1, floor, floordiv, fmod, ge, gt, isfinite, isnan, le, left_shift, log, log1p, log2,
    log10, logical_and,
    logical_not, logical_or, logical_xor, lt, maximum, minimum, mul, ne, neg, pow, rem,
    right_shift, round, select, sign, sin, sinh, sqrt, sub, tan, tanh, trunc,
)
from .prims.index import (gather, index_set, nonzero, pad, scatter_add,  # noqa: F401
                          scatter_extremum, slice_)
from .prims.linalg import cofactor, det, einsum2, matmul2, slogdet, solve  # noqa: F401
from .prims.reduce import (  # noqa: F401
    argmax, argmin, argsort, cumsum, reduce_max, reduce_min, reduce_prod, reduce_sum,
    searchsorted,
)
from .prims.shape import (  # noqa: F401
    broadcast_in_dim, broadcast_to, concatenate, reshape, transpose,
)


def full(shape, value, dtype):
    """A constant array: a broadcast of a scalar.  Evaluated at once when small or when
    nothing is being traced; recorded as an equation when large, so derived graphs do not
    carry big literals."""
    return broadcast_in_dim(np.asarray(value, dtype=dtype), tuple(shape), ())


def zeros_like(x):
    return full(np.shape(x), 0, dtype_of(x))


def ones_like(x):
    return full(np.shape(x), 1, dtype_of(x))
