"""Every primitive, one table: values against NumPy, derivatives to second order in both
modes (``gradc.testing.check_grads``), and ``verify()`` on every traced and derived graph.

``ROWS`` has one or more rows per primitive of ``gradc.prims.all_primitives()``
(``test_every_primitive_has_a_row`` fails when one is missing).  A row names the
primitive it exercises, the function (written with ``gradc.ops`` or the NumPy surface),
an input generator that respects the primitive's domain, and the shapes to try:
``ELEMENTWISE`` draws random shapes (rank 0..3, dims 1..4) with hypothesis, otherwise a
fixed list of shape families.  Values come from ``numpy.random.default_rng(seed)`` with
a hypothesis-drawn seed.  Piecewise-constant and integer-valued primitives (comparisons,
``argmax``, ``nonzero``, ``guard``) get rows with ``zero=True``: their values are checked
against NumPy and their tangents and cotangents must be zero.

conv2d is also checked against a direct six-nested-loop cross-correlation, and its two
transposes against the formulas of ``shared/seeds/003`` (dL/dI = CC(dL/dO padded,
rot180(K) with O and C swapped), dL/dK = CC(I, dL/dO)); its options (stride, dilation,
groups) against loops written from their definition (``conv_ref_definition``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import gradc
from gradc import ops
from gradc.errors import GuardFailure
from gradc.interpret import run
from gradc.passes import jvp_graph, vjp_graph
from gradc.prims import all_primitives
from gradc.prims.custom import barrier_p
from gradc.testing import check_grads, numerical_jvp

# deliberate: the isnan row takes logs of negatives, the pow-at-zero test divides by zero
pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning",
                                        "ignore:divide by zero:RuntimeWarning")

ELEMENTWISE = "elementwise"


@dataclass
class Row:
    prim: str                     # the primitive this row exercises
    fn: Callable                  # the function under test
    gen: Callable                 # gen(rng, shape) -> tuple of arguments
    shapes: object = ELEMENTWISE  # ELEMENTWISE or a list of shape families
    ref: Callable | None = None   # NumPy reference of fn, compared on the traced graph
    order: int = 2
    zero: bool = False            # piecewise constant: tangents must be zero
    tol: dict = field(default_factory=dict)  # check_grads overrides (eps/rtol/atol)
    id: str = ""

    def __post_init__(self):
        self.id = self.id or self.prim


# ---------------------------------------------------------------- input generators

def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape, lo=0.5, hi=2.0):
    return rng.uniform(lo, hi, shape)


def away_from_zero(rng, shape, lo=0.3, hi=2.0):
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)


def unary(values):
    return lambda rng, shape: (values(rng, shape),)


def binary(x_values, y_values=normal):
    """Two operands; the second is sometimes rank 0 (elementwise primitives broadcast
    rank-0 operands implicitly), which exercises unbroadcast in the transposes."""
    def gen(rng, shape):
        y_shape = () if rng.random() < 0.3 else shape
        x_shape = () if (y_shape == shape and rng.random() < 0.2) else shape
        return x_values(rng, x_shape), y_values(rng, y_shape)
    return gen


def distinct_pair(rng, shape):
    """x and y at least 0.2 apart, so max/min have no ties within a finite-difference step."""
    x = normal(rng, shape)
    return x, x + away_from_zero(rng, shape, 0.2, 1.0)


def off_integer(rng, shape, lo=0.15, hi=0.85):
    """Values whose fractional part is in (lo, hi): away from the jumps of floor/ceil."""
    return rng.integers(-3, 3, shape) + rng.uniform(lo, hi, shape)


def rem_pair(rng, shape):
    y = rng.uniform(0.5, 2.0, shape)
    return y * off_integer(rng, shape), y


def well_conditioned(rng, shape):
    n = shape[-1]
    return n * np.eye(n) + 0.5 * rng.standard_normal(shape)


def spd(rng, shape):
    """Symmetric positive definite with well-separated eigenvalues."""
    m = rng.standard_normal(shape)
    return m @ m.T + np.diag(np.arange(1.0, shape[-1] + 1) * 2)


def spd_or_not(rng, shape):
    """Well-conditioned, with a negative determinant in half the draws (slogdet's sign)."""
    a = well_conditioned(rng, shape)
    if rng.random() < 0.5:
        a[..., 0, :] *= -1.0
    return a


# ---------------------------------------------------------------- helper functions

def sum_axes(rng, shape):
    """A random non-empty subset of the axes (or None for all)."""
    if not shape or rng.random() < 0.25:
        return None
    axes = tuple(i for i in range(len(shape)) if rng.random() < 0.5)
    return axes or (len(shape) - 1,)


def reduce_row(prim, op, np_op, values=normal):
    # the axes are drawn with the values and passed as a static (int tuple) argument
    def gen(rng, shape):
        axes = sum_axes(rng, shape)
        return values(rng, shape), axes
    return Row(prim, lambda x, axes: op(x, axes), gen,
               ref=lambda x, axes: np_op(x, axis=axes))


IDX = np.array([2, 0, 2, 1])           # with a duplicate: scatter_add must accumulate


def elementwise_unary(prim, op, np_op, values=normal, **kw):
    return Row(prim, op, unary(values), ref=np_op, **kw)


def elementwise_binary(prim, op, np_op, gen=None, **kw):
    return Row(prim, op, gen or binary(normal, normal), ref=np_op, **kw)


def _ints(x, scale=4.0):
    """Integers from a float array (traced or not): floor(scale x) as int64."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.floor(np.asarray(x) * scale).astype(np.int64)
    return ops.convert_element_type(ops.floor(ops.mul(x, scale)), np.int64)


def integer_row(prim, op, np_op, counts=False):
    """An integer primitive on integers made from floats; ``counts``: the second operand
    is a shift count in [-4, 90) (NumPy's edges: negative, and 64 or more)."""
    scale = 30.0 if counts else 4.0
    second = (lambda r, s: r.uniform(-0.1, 3.0, s)) if counts else normal
    return Row(prim, lambda x, y: op(_ints(x), _ints(y, scale)), binary(normal, second),
               ref=lambda x, y: np_op(_ints(x), _ints(y, scale)), zero=True)


def conv_ref_loops(image, kernel, padding):
    """Direct cross-correlation: six nested loops over (n, o, y, x) and (c, u, v)."""
    (top, bottom), (left, right) = padding
    n_, c_, h, w = image.shape
    o_, _, kh, kw = kernel.shape
    padded = np.zeros((n_, c_, h + max(top, 0) + max(bottom, 0),
                       w + max(left, 0) + max(right, 0)))
    padded[:, :, max(top, 0):max(top, 0) + h, max(left, 0):max(left, 0) + w] = image
    padded = padded[:, :, max(-top, 0):padded.shape[2] - max(-bottom, 0),
                    max(-left, 0):padded.shape[3] - max(-right, 0)]
    ho, wo = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    out = np.zeros((n_, o_, ho, wo))
    for n in range(n_):
        for o in range(o_):
            for y in range(ho):
                for x in range(wo):
                    acc = 0.0
                    for c in range(c_):
                        for u in range(kh):
                            for v in range(kw):
                                acc += padded[n, c, y + u, x + v] * kernel[o, c, u, v]
                    out[n, o, y, x] = acc
    return out


def conv_ref_definition(image, kernel, padding, stride=(1, 1), dilation=(1, 1), groups=1):
    """Straight from the definition: O[n, g·O/G+o, y, x] = Σ_{c,u,v} I[n, g·C/G + c,
    y·sh + u·dh - top, x·sw + v·dw - left] K[g·O/G+o, c, u, v], reads outside I zero."""
    (top, bottom), (left, right) = padding
    (sh, sw), (dh, dw) = stride, dilation
    n_, c_, h, w = image.shape
    o_, cg, kh, kw = kernel.shape
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n_, o_, ho, wo))
    for n in range(n_):
        for o in range(o_):
            g = o // (o_ // groups)
            for y in range(ho):
                for x in range(wo):
                    for c in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                iy, ix = y * sh + u * dh - top, x * sw + v * dw - left
                                if 0 <= iy < h and 0 <= ix < w:
                                    out[n, o, y, x] += (image[n, g * cg + c, iy, ix]
                                                        * kernel[o, c, u, v])
    return out


def conv_options_row(id, padding, shapes, pads=None, **options):
    """A conv2d row with stride/dilation/groups (``pads``: the explicit padding that
    ``padding`` stands for, for the reference)."""
    pads = padding if pads is None else pads
    return Row("conv2d", lambda i, k: gradc.conv2d(i, k, padding, **options),
               lambda r, s: (normal(r, s[0]), normal(r, s[1])), shapes,
               ref=lambda i, k: conv_ref_definition(i, k, pads, **{
                   k_: (v, v) if k_ != "groups" and isinstance(v, int) else v
                   for k_, v in options.items()}), id=id)


def conv_gen(padding):
    def gen(rng, shape):
        image_shape, kernel_shape = shape
        return normal(rng, image_shape), normal(rng, kernel_shape), padding
    return gen


CONV_SHAPES = [((1, 1, 4, 4), (1, 1, 3, 3)), ((2, 3, 5, 4), (2, 3, 2, 3)),
               ((1, 2, 3, 5), (3, 2, 1, 2))]


def guarded(x):
    """Python control flow on a traced value: records a guard equation."""
    if np.sum(x) > 0:
        return np.sin(x) * 2.0
    return np.cos(x)


def scanned(x):
    """A loop over the rows of x: the carry starts at x[0], each step reads a row."""
    c, ys = gradc.scan(lambda c, r: (np.sin(c) * r + c, c * r), x[0], x)
    return c * 2.0 + np.sum(ys, axis=0)


def scanned_ref(x):
    c, ys = x[0], []
    for r in x:
        c, y = np.sin(c) * r + c, c * r
        ys.append(y)
    return c * 2.0 + np.sum(ys, axis=0)


def conded(x):
    """Both branches in the graph; the one the values pick runs."""
    return gradc.cond(np.sum(x) > 0, lambda x: np.sin(x) * x, lambda x: np.exp(x) - x, x)


def conded_ref(x):
    return np.sin(x) * x if np.sum(x) > 0 else np.exp(x) - x


def whiled(x):
    """Three steps counted by an integer carry (a fixed count keeps finite differences
    away from a jump in the trip count)."""
    c, _ = gradc.while_loop(lambda s: s[1] < 3, lambda s: (np.sin(s[0]) * x + s[0], s[1] + 1),
                            (x * 0.5, 0))
    return c


def whiled_ref(x):
    c = x * 0.5
    for _ in range(3):
        c = np.sin(c) * x + c
    return c


def not_positive_mask(x, y):
    return ops.logical_not(ops.gt(x, y))


# ---------------------------------------------------------------- the table

ROWS = [
    # arithmetic
    elementwise_unary("neg", ops.neg, np.negative),
    elementwise_binary("add", ops.add, np.add),
    elementwise_binary("sub", ops.sub, np.subtract),
    elementwise_binary("mul", ops.mul, np.multiply),
    Row("mul", lambda x: ops.mul(x, 3.0), unary(normal), ref=lambda x: 3.0 * x, id="mul-literal"),
    elementwise_binary("div", ops.div, np.true_divide, binary(normal, away_from_zero)),
    elementwise_binary("pow", ops.pow, np.power, binary(positive, normal)),
    Row("pow", lambda x: x ** 3, unary(normal), ref=lambda x: x ** 3, id="pow-int-exponent"),
    elementwise_binary("max", ops.maximum, np.maximum, distinct_pair),
    elementwise_binary("min", ops.minimum, np.minimum, distinct_pair),
    elementwise_binary("atan2", ops.atan2, np.arctan2, binary(away_from_zero, away_from_zero)),
    elementwise_binary("rem", ops.rem, np.mod, rem_pair),
    elementwise_binary("fmod", ops.fmod, np.fmod, rem_pair),
    # transcendental
    elementwise_unary("exp", ops.exp, np.exp),
    elementwise_unary("expm1", ops.expm1, np.expm1),
    elementwise_unary("log", ops.log, np.log, positive),
    elementwise_unary("log1p", ops.log1p, np.log1p, lambda r, s: r.uniform(-0.5, 2.0, s)),
    elementwise_unary("log2", ops.log2, np.log2, positive),
    elementwise_unary("log10", ops.log10, np.log10, positive),
    elementwise_unary("exp2", ops.exp2, np.exp2),
    elementwise_unary("sqrt", ops.sqrt, np.sqrt, positive),
    elementwise_unary("cbrt", ops.cbrt, np.cbrt, away_from_zero),
    elementwise_unary("sin", ops.sin, np.sin),
    elementwise_unary("cos", ops.cos, np.cos),
    elementwise_unary("tan", ops.tan, np.tan, lambda r, s: r.uniform(-1.2, 1.2, s)),
    elementwise_unary("asin", ops.asin, np.arcsin, lambda r, s: r.uniform(-0.9, 0.9, s)),
    elementwise_unary("acos", ops.acos, np.arccos, lambda r, s: r.uniform(-0.9, 0.9, s)),
    elementwise_unary("atan", ops.atan, np.arctan),
    elementwise_unary("sinh", ops.sinh, np.sinh),
    elementwise_unary("cosh", ops.cosh, np.cosh),
    elementwise_unary("tanh", ops.tanh, np.tanh),
    elementwise_unary("asinh", ops.asinh, np.arcsinh),
    elementwise_unary("acosh", ops.acosh, np.arccosh, lambda r, s: r.uniform(1.2, 3.0, s)),
    elementwise_unary("atanh", ops.atanh, np.arctanh, lambda r, s: r.uniform(-0.9, 0.9, s)),
    elementwise_unary("abs", ops.abs, np.abs, away_from_zero),
    # special functions (SciPy's values)
    elementwise_unary("erf", ops.erf, scipy.special.erf),
    elementwise_unary("erfc", ops.erfc, scipy.special.erfc),
    elementwise_unary("gamma", ops.gamma, scipy.special.gamma, positive),
    elementwise_unary("gamma", ops.gamma, scipy.special.gamma,
                      lambda r, s: r.uniform(-1.8, -1.2, s), id="gamma-negative"),
    elementwise_unary("lgamma", ops.lgamma, scipy.special.gammaln, positive),
    elementwise_unary("lgamma", ops.lgamma, scipy.special.gammaln,
                      lambda r, s: r.uniform(-2.9, -2.1, s), id="lgamma-negative"),
    elementwise_unary("digamma", ops.digamma, scipy.special.psi, positive),
    elementwise_unary("digamma", ops.digamma, scipy.special.psi,
                      lambda r, s: r.uniform(-1.8, -1.2, s), id="digamma-negative"),
    elementwise_unary("ndtri", ops.ndtri, scipy.special.ndtri,
                      lambda r, s: r.uniform(0.02, 0.98, s)),
    elementwise_unary("erfinv", ops.erfinv, scipy.special.erfinv,
                      lambda r, s: r.uniform(-0.95, 0.95, s)),
    Row("polygamma", lambda x: ops.polygamma(1.0, x), unary(positive),
        ref=lambda x: scipy.special.polygamma(1, x)),
    Row("polygamma", lambda x: ops.polygamma(3.0, x), unary(positive),
        ref=lambda x: scipy.special.polygamma(3, x), id="polygamma-3"),
    # piecewise constant: derivative zero almost everywhere
    elementwise_unary("sign", ops.sign, np.sign, away_from_zero, zero=True),
    elementwise_unary("floor", ops.floor, np.floor, off_integer, zero=True),
    elementwise_unary("ceil", ops.ceil, np.ceil, off_integer, zero=True),
    elementwise_unary("round", ops.round, np.rint, lambda r, s: off_integer(r, s, -0.35, 0.35),
                      zero=True),
    elementwise_unary("trunc", ops.trunc, np.trunc, off_integer, zero=True),
    # comparisons and logic: boolean results, zero tangents
    elementwise_binary("lt", ops.lt, np.less, distinct_pair, zero=True),
    elementwise_binary("le", ops.le, np.less_equal, distinct_pair, zero=True),
    elementwise_binary("gt", ops.gt, np.greater, distinct_pair, zero=True),
    elementwise_binary("ge", ops.ge, np.greater_equal, distinct_pair, zero=True),
    elementwise_binary("eq", ops.eq, np.equal, distinct_pair, zero=True),
    elementwise_binary("ne", ops.ne, np.not_equal, distinct_pair, zero=True),
    elementwise_binary("and", lambda x, y: ops.logical_and(ops.gt(x, 0.0), ops.gt(y, 0.0)),
                       lambda x, y: (x > 0) & (y > 0), binary(away_from_zero, away_from_zero),
                       zero=True),
    elementwise_binary("or", lambda x, y: ops.logical_or(ops.gt(x, 0.0), ops.gt(y, 0.0)),
                       lambda x, y: (x > 0) | (y > 0), binary(away_from_zero, away_from_zero),
                       zero=True),
    elementwise_binary("xor", lambda x, y: ops.logical_xor(ops.gt(x, 0.0), ops.gt(y, 0.0)),
                       lambda x, y: (x > 0) ^ (y > 0), binary(away_from_zero, away_from_zero),
                       zero=True),
    elementwise_binary("not", not_positive_mask, lambda x, y: ~(x > y), distinct_pair,
                       zero=True),
    elementwise_unary("isnan", lambda x: ops.isnan(ops.log(x)), lambda x: np.isnan(np.log(x)),
                      away_from_zero, zero=True),
    elementwise_unary("isfinite", lambda x: ops.isfinite(ops.div(1.0, x)),
                      lambda x: np.isfinite(1.0 / x), away_from_zero, zero=True),
    # integers (from floats, so that every row draws the same way): NumPy's edges, x // 0,
    # shifts by 64 or more
    integer_row("floordiv", ops.floordiv, np.floor_divide),
    integer_row("bitand", ops.bitwise_and, np.bitwise_and),
    integer_row("bitor", ops.bitwise_or, np.bitwise_or),
    integer_row("bitxor", ops.bitwise_xor, np.bitwise_xor),
    Row("bitnot", lambda x: ops.bitwise_not(_ints(x)), unary(normal),
        ref=lambda x: np.invert(_ints(x)), zero=True),
    integer_row("shl", ops.left_shift, np.left_shift, counts=True),
    integer_row("shr", ops.right_shift, np.right_shift, counts=True),
    # select and dtype conversion
    Row("select", lambda p, x, y: ops.select(p, x, y),
        lambda r, s: (r.random(s) < 0.5, normal(r, s), normal(r, () if r.random() < 0.3 else s)),
        ref=np.where),
    Row("select", lambda x, y: ops.select(ops.gt(x, y), ops.sin(x), y), distinct_pair,
        ref=lambda x, y: np.where(x > y, np.sin(x), y), id="select-computed-pred"),
    Row("convert_element_type", lambda x: ops.convert_element_type(x, np.float64),
        lambda r, s: (normal(r, s).astype(np.float32),), ref=lambda x: x.astype(np.float64),
        id="convert-f32-to-f64"),
    Row("convert_element_type", lambda x: ops.convert_element_type(x, np.float32),
        unary(normal), ref=lambda x: x.astype(np.float32),
        tol=dict(eps=1e-2, rtol=2e-2, atol=2e-2), id="convert-f64-to-f32"),
    Row("convert_element_type",
        lambda x: ops.mul(x, ops.convert_element_type(
            ops.convert_element_type(ops.floor(x), np.int64), np.float64)),
        unary(off_integer), ref=lambda x: x * np.floor(x), id="convert-via-floor"),
    Row("convert_element_type", lambda x: ops.convert_element_type(x, np.int64),
        unary(off_integer), ref=lambda x: x.astype(np.int64), zero=True, id="convert-to-int"),
    # reductions and scans
    reduce_row("reduce_sum", ops.reduce_sum, np.sum),
    reduce_row("reduce_max", ops.reduce_max, np.max),
    reduce_row("reduce_min", ops.reduce_min, np.min),
    reduce_row("reduce_prod", ops.reduce_prod, np.prod, lambda r, s: r.uniform(0.5, 1.5, s)),
    Row("reduce_prod", lambda x: ops.reduce_prod(x, (1,)),
        lambda r, s: (np.where(r.random(s) < 0.3, 0.0, normal(r, s)),), [(2, 3), (3, 4)],
        ref=lambda x: np.prod(x, axis=1), id="reduce_prod-with-zeros"),
    Row("cumsum", lambda x, axis, rev: ops.cumsum(x, axis, rev),
        lambda r, s: (normal(r, s), int(r.integers(-len(s), len(s))), bool(r.random() < 0.5)),
        [(4,), (2, 3), (2, 3, 4)],
        ref=lambda x, axis, rev: (np.flip(np.cumsum(np.flip(x, axis), axis), axis) if rev
                                  else np.cumsum(x, axis))),
    Row("argsort", lambda x, axis: ops.argsort(x, axis),
        lambda r, s: (np.round(normal(r, s), 1), int(r.integers(-len(s), len(s)))),
        [(5,), (3, 4), (2, 3, 4)], ref=lambda x, axis: np.argsort(x, axis, kind="stable"),
        zero=True, id="argsort-with-ties"),
    Row("searchsorted", lambda a, v, right: ops.searchsorted(a, v, "right" if right else "left"),
        lambda r, s: (np.sort(np.round(r.standard_normal(6), 1)), np.round(normal(r, s), 1),
                      bool(r.random() < 0.5)),
        [(), (5,), (2, 3)], zero=True, id="searchsorted-with-ties",
        ref=lambda a, v, right: np.searchsorted(a, v, "right" if right else "left")),
    Row("argmax", lambda x: ops.argmax(x, 1), unary(normal), [(3, 4), (2, 3, 2)],
        ref=lambda x: np.argmax(x, 1), zero=True),
    Row("argmin", lambda x: ops.argmin(x, -1), unary(normal), [(3, 4), (2, 3, 2)],
        ref=lambda x: np.argmin(x, -1), zero=True),
    Row("argmax", lambda x: x[np.argmax(x)], unary(normal), [(5,)], ref=np.max,
        id="argmax-selects"),
    # shape
    Row("reshape", lambda x: ops.reshape(x, (x.size,)), unary(normal),
        ref=lambda x: x.reshape(-1)),
    Row("reshape", lambda x: ops.reshape(x, (2, 3, 2)), unary(normal), [(3, 4), (12,)],
        ref=lambda x: x.reshape(2, 3, 2), id="reshape-fixed"),
    Row("broadcast_in_dim", lambda x: ops.broadcast_in_dim(x, (2,) + x.shape + (3,),
                                                           tuple(range(1, x.ndim + 1))),
        unary(normal), ref=lambda x: np.broadcast_to(x[None, ..., None], (2,) + x.shape + (3,))),
    Row("broadcast_in_dim", lambda x: ops.broadcast_in_dim(x, (3, 4, 2), (0, 2)),
        unary(normal), [(3, 1), (1, 2), (1, 1)],
        ref=lambda x: np.broadcast_to(x[:, None, :], (3, 4, 2)), id="broadcast-size-one"),
    Row("transpose", lambda x: ops.transpose(x, tuple(reversed(range(x.ndim)))), unary(normal),
        ref=np.transpose),
    Row("transpose", lambda x: ops.transpose(x, (1, 2, 0)), unary(normal), [(2, 3, 4)],
        ref=lambda x: np.transpose(x, (1, 2, 0)), id="transpose-cycle"),
    Row("concatenate", lambda x, y, z: ops.concatenate([x, y, z], axis=1),
        lambda r, s: (normal(r, (2, 1, 3)), normal(r, (2, 2, 3)), normal(r, (2, 3, 3))),
        [()], ref=lambda x, y, z: np.concatenate([x, y, z], axis=1)),
    Row("concatenate", lambda x: ops.concatenate([x, ops.sin(x)], axis=0), unary(normal),
        [(1,), (3, 2)], ref=lambda x: np.concatenate([x, np.sin(x)]), id="concatenate-reuse"),
    # indexing
    Row("slice", lambda x: ops.slice_(x, ((1, 4, 2), (3, None, -1))), unary(normal), [(5, 4)],
        ref=lambda x: x[1:4:2, 3::-1]),
    Row("slice", lambda x: x[1:, ::-2, 0], unary(normal), [(3, 5, 2)],
        ref=lambda x: x[1:, ::-2, 0], id="slice-numpy"),
    Row("pad", lambda x: ops.pad(x, (5, 4), ((1, 4, 2), (3, None, -1))), unary(normal),
        [(2, 4)], ref=lambda x: _np_pad_window(x)),
    Row("gather", lambda x, i: ops.gather(x, [i], (("s", None, None, None), ("a", 0))),
        lambda r, s: (normal(r, s), IDX), [(3, 3), (2, 4)], ref=lambda x, i: x[:, i]),
    Row("gather", lambda x: x[np.array([[0, 1], [1, 1]]), None, 1:], unary(normal), [(2, 3)],
        ref=lambda x: x[np.array([[0, 1], [1, 1]]), None, 1:], id="gather-numpy"),
    Row("scatter_add", lambda v, i: ops.scatter_add(v, [i], (4, 3), (("a", 0),)),
        lambda r, s: (normal(r, s), IDX), [(4, 3)], ref=lambda v, i: _np_scatter(v, i, (4, 3))),
    Row("scatter_add", lambda v, i: ops.scatter_add(ops.mul(v, v), [i], (2, 3),
                                                    (("i", 1), ("a", 0))),
        lambda r, s: (normal(r, s), IDX[:3]), [(3,)],
        ref=lambda v, i: _np_scatter_row(v * v, i), id="scatter_add-int-index"),
    Row("index_set", lambda x, v: ops.index_set(x, v, [], (("i", 1), ("s", 0, 3, 2))),
        lambda r, s: (normal(r, (3, 3)), normal(r, (2,))), [()], ref=lambda x, v: _np_set(x, v)),
    Row("index_set", lambda x, v: ops.index_set(x, v, [np.array([2, 0])], (("a", 0),)),
        lambda r, s: (normal(r, (3, 2)), normal(r, ())), [()],
        ref=lambda x, v: _np_set_rows(x, v), id="index_set-scalar-value"),
    Row("index_set", lambda x, v, i: ops.index_set(x, v, [i], (("a", 0),)),
        lambda r, s: (normal(r, (4,)), normal(r, s), np.array([2, 0, 2])), [(3,), ()],
        ref=lambda x, v, i: _np_set_rows(x, v, i), id="index_set-repeated-index"),
    Row("index_set", lambda x, v: _add_at_repeated(x, v),
        lambda r, s: (normal(r, (3, 2)), normal(r, (3, 2))), [()],
        ref=lambda x, v: _add_at_repeated(x, v), id="index_set-numpy-repeated-iadd"),
    Row("index_set", lambda x, v: _setitem(x, v),
        lambda r, s: (normal(r, (4,)), normal(r, (2,))), [()],
        ref=lambda x, v: _setitem(x.copy(), v), id="index_set-numpy"),
    Row("scatter_extremum", lambda x, v, i: ops.scatter_extremum(x, v, [i], (("a", 0),),
                                                                  "maximum"),
        lambda r, s: (normal(r, (3, 3)), normal(r, (4, 3)), IDX), [()],
        ref=lambda x, v, i: _np_extremum_at(np.maximum, x, v, i)),
    Row("scatter_extremum", lambda x, v, i: ops.scatter_extremum(
            ops.mul(x, x), ops.sin(v), [i], (("s", None, None, None), ("a", 0)), "fmin"),
        lambda r, s: (normal(r, (2, 3)), normal(r, (2, 4)), IDX), [()],
        ref=lambda x, v, i: _np_extremum_at(np.fmin, x * x, np.sin(v), (slice(None), i)),
        id="scatter_extremum-fmin-columns"),
    Row("scatter_extremum", lambda x, v: _minimum_at(x, v),
        lambda r, s: (normal(r, (3, 2)), normal(r, (4, 2))), [()],
        ref=lambda x, v: _minimum_at(x, v), id="scatter_extremum-numpy"),
    Row("nonzero", lambda x: ops.nonzero(ops.gt(x, 0.0), int(np.sum(_value(x) > 0))),
        unary(away_from_zero), [(4,), (2, 3)], ref=lambda x: list(np.nonzero(x > 0)),
        zero=True),
    # (one element positive at least: with none selected, check_grads has nothing to check)
    Row("nonzero", lambda x: x[x > 0], unary(lambda r, s: np.abs(away_from_zero(r, s)) * np.r_[
        1.0, r.choice([-1.0, 1.0], s[0] - 1)]), [(6,)], ref=lambda x: x[x > 0],
        id="nonzero-mask-index"),
    # linear algebra
    Row("einsum", lambda a, b: ops.einsum2("ij,jk->ik", a, b),
        lambda r, s: (normal(r, (2, 3)), normal(r, (3, 4))), [()],
        ref=lambda a, b: a @ b),
    Row("einsum", lambda a, b: ops.einsum2("bij,bjk->bik", a, b),
        lambda r, s: (normal(r, (2, 2, 3)), normal(r, (2, 3, 2))), [()],
        ref=lambda a, b: a @ b, id="einsum-batched"),
    Row("einsum", lambda a, b: ops.einsum2("ij,ij->j", a, b),
        lambda r, s: (normal(r, (3, 2)), normal(r, (3, 2))), [()],
        ref=lambda a, b: np.sum(a * b, 0), id="einsum-hadamard-sum"),
    Row("einsum", lambda a, b: ops.einsum2("i,jk->kij", a, b),
        lambda r, s: (normal(r, (2,)), normal(r, (3, 2))), [()],
        ref=lambda a, b: np.einsum("i,jk->kij", a, b), id="einsum-outer"),
    Row("einsum", lambda a, b: ops.matmul2(a, b),
        lambda r, s: (normal(r, (3, 3)), normal(r, (3,))), [()], ref=lambda a, b: a @ b,
        id="einsum-matvec"),
    Row("einsum", lambda a: a @ a.T, unary(normal), [(2, 3)], ref=lambda a: a @ a.T,
        id="einsum-gram"),
    Row("solve", ops.solve, lambda r, s: (well_conditioned(r, s[0]), normal(r, s[1])),
        [((3, 3), (3,)), ((3, 3), (3, 2)), ((2, 3, 3), (2, 3, 1))],
        ref=lambda a, b: np.linalg.solve(a, b[..., None])[..., 0] if b.ndim == 1
        else np.linalg.solve(a, b)),
    Row("det", ops.det, unary(spd_or_not), [(1, 1), (3, 3), (2, 2, 2)], ref=np.linalg.det),
    Row("cofactor", ops.cofactor, unary(spd_or_not), [(1, 1), (3, 3), (2, 2, 2)],
        ref=lambda a: np.linalg.det(a)[..., None, None] * np.linalg.inv(a).swapaxes(-1, -2)),
    Row("slogdet", lambda a: ops.slogdet(a)[1], unary(spd_or_not), [(1, 1), (3, 3), (2, 2, 2)],
        ref=lambda a: np.linalg.slogdet(a)[1]),
    Row("slogdet", lambda a: ops.slogdet(a)[0], unary(spd_or_not), [(3, 3), (2, 2, 2)],
        ref=lambda a: np.linalg.slogdet(a)[0], zero=True, id="slogdet-sign"),
    # decompositions (implicit rules: prims/decomp.py)
    Row("cholesky", ops.cholesky, unary(spd), [(1, 1), (3, 3)], ref=np.linalg.cholesky),
    Row("eigh", lambda a: ops.eigh(a)[0], unary(spd), [(3, 3)],
        ref=lambda a: np.linalg.eigh(a)[0], id="eigh-values"),
    Row("eigh", lambda a: ops.eigh(a)[1], unary(spd), [(3, 3)],
        ref=lambda a: np.linalg.eigh(a)[1], id="eigh-vectors"),
    Row("svd", lambda a: ops.svd(a)[1], unary(normal), [(3, 2), (2, 3), (3, 3)],
        ref=lambda a: np.linalg.svd(a, compute_uv=False), id="svd-values"),
    Row("svd", lambda a: ops.svd(a)[0], unary(normal), [(3, 2), (2, 3)],
        ref=lambda a: np.linalg.svd(a, full_matrices=False)[0], id="svd-u"),
    Row("svd", lambda a: ops.svd(a)[2], unary(normal), [(3, 2), (2, 3)],
        ref=lambda a: np.linalg.svd(a, full_matrices=False)[2], id="svd-vt"),
    Row("qr", lambda a: ops.qr(a)[0], unary(normal), [(3, 2), (2, 3), (3, 3)],
        ref=lambda a: np.linalg.qr(a)[0], id="qr-q"),
    Row("qr", lambda a: ops.qr(a)[1], unary(normal), [(3, 2), (2, 3), (3, 3)],
        ref=lambda a: np.linalg.qr(a)[1], id="qr-r"),
    # convolution
    Row("conv2d", lambda i, k, p: ops.conv2d(i, k, p), conv_gen(((0, 0), (0, 0))), CONV_SHAPES,
        ref=conv_ref_loops, id="conv2d-valid"),
    Row("conv2d", lambda i, k, p: ops.conv2d(i, k, p), conv_gen(((1, 0), (2, -1))),
        CONV_SHAPES, ref=conv_ref_loops, id="conv2d-asymmetric-crop"),
    Row("conv2d", lambda i, k: gradc.conv2d(i, k, padding="same"),
        lambda r, s: (normal(r, s[0]), normal(r, s[1])), CONV_SHAPES,
        ref=lambda i, k: conv_ref_loops(i, k, _same_padding(k)), id="conv2d-same"),
    # options (small: these rows run in the CUDA simulator too)
    conv_options_row("conv2d-stride", ((1, 0), (0, 2)), [((1, 2, 5, 4), (2, 2, 2, 2)),
                                                         ((2, 1, 4, 5), (1, 1, 3, 2))],
                     stride=(2, 3)),
    conv_options_row("conv2d-dilation-same", "same", [((1, 2, 5, 4), (2, 2, 2, 3))],
                     pads=((1, 1), (1, 1)), dilation=(2, 1)),
    conv_options_row("conv2d-groups", ((0, 1), (1, 0)), [((1, 4, 3, 3), (2, 2, 2, 2)),
                                                         ((2, 2, 3, 2), (4, 1, 1, 2))],
                     groups=2),
    conv_options_row("conv2d-stride-dilation-groups-crop", ((1, -1), (2, 0)),
                     [((1, 4, 6, 5), (4, 2, 2, 2))], stride=2, dilation=(1, 2), groups=2),
    # control
    Row("guard", guarded, unary(lambda r, s: r.uniform(0.2, 1.0, s) * r.choice([-1, 1])),
        [(3,), (2, 2)], ref=lambda x: np.sin(x) * 2.0 if np.sum(x) > 0 else np.cos(x)),
    Row("stop_gradient", lambda x: ops.stop_gradient(ops.sin(x)), unary(normal),
        ref=np.sin, zero=True),
    Row("barrier", lambda x, y: barrier_p.bind(ops.sin(x), y, n=1)[0] * y,
        lambda r, s: (normal(r, s), normal(r, s)), [(3,), (2, 2)],
        ref=lambda x, y: np.sin(x) * y),
    Row("scan", scanned, unary(normal), [(4, 3), (1, 2)], ref=scanned_ref),
    Row("cond", conded, unary(normal), [(3,), (2, 2)], ref=conded_ref),
    Row("while_loop", whiled, unary(normal), [(3,), (2, 2)], ref=whiled_ref),
]


# definitions used by rows above (kept below the table so it reads first)

def _value(x):
    return x.val if isinstance(x, gradc.trace.Tracer) else np.asarray(x)


def _np_pad_window(x):
    out = np.zeros((5, 4))
    out[1:4:2, 3::-1] = x
    return out


def _np_scatter(v, i, shape):
    out = np.zeros(shape)
    np.add.at(out, i, v)
    return out


def _np_scatter_row(v, i):
    out = np.zeros((2, 3))
    np.add.at(out[1], i, v)
    return out


def _np_set(x, v):
    out = x.copy()
    out[1, 0:3:2] = v
    return out


def _np_set_rows(x, v, i=np.array([2, 0])):
    out = x.copy()
    out[i] = v
    return out


def _np_extremum_at(ufunc, x, v, i):
    out = x.copy()
    ufunc.at(out, i, v)
    return out


def _minimum_at(x, v):
    """np.minimum.at by a NumPy index array with repeats, on a copy of a traced array."""
    out = x.copy()
    np.minimum.at(out, IDX, v)
    return out


def _setitem(x, v):
    x = x * 1.0
    x[1:3] = v * 2.0
    return x


def _add_at_repeated(x, v):
    """``x[i] += v`` with a repeated index: NumPy keeps the last write, no accumulation."""
    x = x * 1.0
    x[np.array([0, 2, 0])] += v
    return x


def _same_padding(kernel):
    kh, kw = kernel.shape[2], kernel.shape[3]
    return (((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))


NOT_DIFFERENTIABLE = {"lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor", "not", "isnan",
                      "isfinite", "argmax", "argmin", "nonzero", "guard", "sign", "floor",
                      "ceil", "round", "trunc", "stop_gradient", "argsort", "searchsorted",
                      "floordiv",
                      "bitand", "bitor", "bitxor", "bitnot", "shl", "shr"}


# ---------------------------------------------------------------- strategies

SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
SEEDS = st.integers(0, 2 ** 32 - 1)


def draw_args(row, data):
    if row.shapes == ELEMENTWISE:
        shape = data.draw(SHAPES, label="shape")
    else:
        shape = data.draw(st.sampled_from(row.shapes), label="shape")
    seed = data.draw(SEEDS, label="seed")
    args = row.gen(np.random.default_rng(seed), shape)
    # NumPy scalars (rank-0 draws) become 0-d arrays: np.bool_ would be a static argument
    return tuple(np.asarray(a) if isinstance(a, np.generic) else a for a in args)


# ---------------------------------------------------------------- the tests

# primitives only reverse mode writes (the while_loop row differentiates through them,
# to second order): tested in tests/test_loops.py
# solver regions hold sub-Graphs: tests/test_implicit.py exercises them; user rules
# (custom_jvp, custom_vjp) hold the user's Graphs: tests/test_custom.py
WITHOUT_ROW = {"while_tangent", "while_adjoint", "while_hessian", "root", "linear_solve",
               "report", "custom_jvp_call", "custom_vjp_call", "custom_lin", "checkpoint"}


def test_every_primitive_has_a_row():
    covered = {row.prim for row in ROWS} | WITHOUT_ROW
    missing = sorted(set(all_primitives()) - covered)
    assert not missing, f"primitives without a row in ROWS: {missing}"
    unknown = sorted(covered - set(all_primitives()))
    assert not unknown, f"rows name unknown primitives: {unknown}"


def test_non_differentiable_rows_are_marked():
    for row in ROWS:
        if row.prim in NOT_DIFFERENTIABLE and row.prim not in ("argmax", "nonzero", "guard"):
            assert row.zero, f"row {row.id}: {row.prim} has zero derivative; mark it zero=True"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
@settings(max_examples=max(25, settings().max_examples))
@given(data=st.data())
def test_rows(row, data):
    args = draw_args(row, data)
    graph = gradc.make_graph(row.fn)(*args)
    graph.verify()
    # (rows drawn at rank 0 may trace to no equation at all: reducing or reshaping a
    # scalar is the identity)
    assert not graph.eqns or any(e.prim.name == row.prim for e in graph.eqns), (
        f"row {row.id} does not exercise {row.prim}:\n{graph}")

    # values: the traced graph, run by the reference interpreter, against NumPy
    if row.ref is not None:
        want = row.ref(*args)
        got = row.fn(*args)
        _assert_tree_equal(got, want)
        dynamic = [a for a in args if not _is_static(a)]
        ran = run(graph, *dynamic)
        _assert_tree_equal(ran if len(ran) > 1 or isinstance(want, list) else ran[0], want)

    # derived graphs are valid and keep the primal outputs
    wrt = [v.dtype.kind == "f" for v in graph.inputs]
    if any(wrt):
        jg = jvp_graph(graph, wrt).verify()
        vg = vjp_graph(graph, wrt).verify()
        if not row.zero:   # second order, as graphs: forward-over-reverse, reverse-over-forward
            jvp_graph(vg).verify()
            vjp_graph(jg).verify()
        dynamic = [a for a in args if not _is_static(a)]
        n_out = len(graph.outputs)
        primal = run(graph, *dynamic)
        tangents = [np.zeros(np.shape(a), np.asarray(a).dtype) for a, w in zip(dynamic, wrt)
                    if w]
        for a, b in zip(run(jg, *dynamic, *tangents)[:n_out], primal):
            np.testing.assert_array_equal(a, b)
        cts = [np.zeros(o.shape, o.dtype) for o in graph.outputs]
        for a, b in zip(run(vg, *dynamic, *cts)[:n_out], primal):
            np.testing.assert_array_equal(a, b)

    if row.zero:
        _check_zero_derivative(row, args)
    else:
        check_grads(row.fn, args, order=row.order, modes=("fwd", "rev"), **row.tol)


def _check_zero_derivative(row, args):
    """jvp tangents and vjp cotangents of a piecewise-constant row are exactly zero."""
    # (an integer or bool argument's tangent is zeros: JAX's float0, a TangentDTypeError
    # otherwise)
    v = tuple(np.ones_like(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
              else np.zeros_like(a)[()] for a in args)
    out, t_out = gradc.jvp(row.fn, args, v)
    for t in _leaves(t_out):
        assert not np.any(np.asarray(t)), f"row {row.id}: nonzero tangent {t!r}"
    out, vjp_fn = gradc.vjp(row.fn, *args)
    # (ones for a float output; an integer or bool output's cotangent must be zeros,
    # as JAX's float0)
    cts = vjp_fn(gradc.pytree.tree_map(
        lambda o: np.ones_like(o) if np.asarray(o).dtype.kind == "f" else np.zeros_like(o),
        out))
    for c in _leaves(cts):
        assert not np.any(np.asarray(c)), f"row {row.id}: nonzero cotangent {c!r}"
    # and finite differences agree that the function is locally constant
    if row.prim != "stop_gradient":
        for n in _leaves(numerical_jvp(row.fn, args, v, 1e-6)):
            assert not np.any(n), f"row {row.id}: inputs are too close to a jump: {n!r}"


FLOAT32_ROWS = ["neg", "mul", "div", "pow", "max", "atan2", "rem", "sin", "log", "tanh",
                "erf", "lgamma", "digamma",
                "select", "convert-f32-to-f64", "reduce_sum", "reduce_max", "reduce_prod",
                "cumsum", "broadcast_in_dim", "concatenate", "slice", "pad", "gather",
                "scatter_add", "index_set-repeated-index", "einsum-batched", "solve", "det",
                "slogdet", "conv2d-same", "eigh-values", "eigh-vectors", "svd-values"]
# (svd's vectors and qr: their second derivatives in float32 are beyond central
# differences at float32's step; their first derivatives' dtypes are checked below)


@pytest.mark.parametrize("row", [r for r in ROWS if r.id in FLOAT32_ROWS], ids=lambda r: r.id)
def test_float32_rows(row):
    """In float32, tangents and cotangents stay float32 (check_grads checks dtypes) and
    agree with finite differences at float32 tolerances."""
    shape = (2, 3) if row.shapes == ELEMENTWISE else row.shapes[0]
    args = row.gen(np.random.default_rng(7), shape)
    args = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
                 else a for a in args)
    for x in _leaves(row.fn(*args)):
        assert np.asarray(x).dtype in (np.float32, np.float64), np.asarray(x).dtype
    check_grads(row.fn, args, order=2)


@pytest.mark.parametrize("which", ["eigh-vectors", "svd-u", "svd-vt", "qr-q", "qr-r"])
def test_float32_decompositions_differentiate_in_float32(which):
    """(Fuzzing helper) eigh's eigenvector tangent was float64 in a float32 program (its
    coupling matrix multiplied by a float64 ``1 - eye``): a gradient through it failed
    to trace with "mul: operands have different dtypes f32, f64".  Every decomposition's
    first derivatives stay float32 and agree with float64's."""
    row = next(r for r in ROWS if r.id == which)
    a = row.gen(np.random.default_rng(7), row.shapes[0])[0]
    u = np.random.default_rng(8).standard_normal(np.shape(row.fn(a)))

    def f(a):
        return np.sum(row.fn(a) * u.astype(a.dtype))
    g32 = gradc.grad(f)(a.astype(np.float32))
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, gradc.grad(f)(a), rtol=2e-3, atol=2e-3)


def test_pow_derivatives_at_zero_base():
    """x**y at x = 0: d/dx is 0 for y = 0 (not 0·inf), and d/dy is 0 (limit for y > 0)."""
    x, y = np.zeros(3), np.array([0.0, 1.0, 2.0])
    _, t = gradc.jvp(ops.pow, (x, y), (np.ones(3), np.zeros(3)))
    np.testing.assert_array_equal(t, [0.0, 1.0, 0.0])
    _, t = gradc.jvp(ops.pow, (x, y), (np.zeros(3), np.ones(3)))
    np.testing.assert_array_equal(t, [0.0, 0.0, 0.0])
    # all derivatives of an integer power stay finite at 0
    g = lambda x: x ** 2.0  # noqa: E731
    assert gradc.grad(gradc.grad(gradc.grad(g)))(0.0) == 0.0
    assert gradc.grad(gradc.grad(g))(0.0) == 2.0


def test_extremum_ties_share_the_tangent():
    """At ties max/min (elementwise and reductions) split the tangent equally (as JAX)."""
    x = np.array([1.0, 3.0, 3.0])
    _, t = gradc.jvp(lambda x: ops.reduce_max(x), (x,), (np.array([1.0, 2.0, 4.0]),))
    assert t == 3.0
    np.testing.assert_array_equal(gradc.grad(lambda x: ops.reduce_max(x))(x), [0.0, 0.5, 0.5])
    _, t = gradc.jvp(ops.maximum, (x, np.full(3, 3.0)), (np.ones(3), np.zeros(3)))
    np.testing.assert_array_equal(t, [0.0, 0.5, 0.5])
    _, t = gradc.jvp(ops.minimum, (x, np.full(3, 3.0)), (np.ones(3), np.zeros(3)))
    np.testing.assert_array_equal(t, [1.0, 0.5, 0.5])


# ---------------------------------------------------------------- conv2d and the seed

@pytest.mark.parametrize("shapes", CONV_SHAPES)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_transposes_follow_the_seed_formulas(shapes, padding):
    rng = np.random.default_rng(3)
    image, kernel = normal(rng, shapes[0]), normal(rng, shapes[1])
    out, vjp_fn = gradc.vjp(lambda i, k: gradc.conv2d(i, k, padding=padding), image, kernel)
    pads = _same_padding(kernel) if padding == "same" else ((0, 0), (0, 0))
    np.testing.assert_allclose(out, conv_ref_loops(image, kernel, pads), rtol=1e-12, atol=1e-12)
    d_out = normal(rng, out.shape)
    d_image, d_kernel = vjp_fn(d_out)
    kh, kw = kernel.shape[2:]
    (top, bottom), (left, right) = pads
    # dL/dI = CC(dL/dO zero-padded by (KH-1-top, KH-1-bottom) x (KW-1-left, KW-1-right),
    #            K rotated by 180° with the O and C axes swapped)
    rotated = kernel[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    full = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    want_image = conv_ref_loops(d_out, rotated, full)
    np.testing.assert_allclose(d_image, want_image, rtol=1e-12, atol=1e-12)
    # dL/dK = CC(Î, dL/dO): the batch axis plays the channel axis
    want_kernel = conv_ref_loops(image.transpose(1, 0, 2, 3), d_out.transpose(1, 0, 2, 3),
                                 pads).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(d_kernel, want_kernel, rtol=1e-12, atol=1e-12)


def test_conv2d_padding_as_an_int_or_pytorchs_pair():
    """``padding=p`` and PyTorch's ``(ph, pw)`` are the explicit pads they stand for
    (values and both gradients); anything else is an ArgumentError naming the line."""
    rng = np.random.default_rng(8)
    image, kernel = normal(rng, (2, 2, 6, 5)), normal(rng, (3, 2, 3, 2))
    for short, pads in ((1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))),
                        ([0, 1], ((0, 0), (1, 1))), (np.int64(1), ((1, 1), (1, 1)))):
        f = lambda i, k, short=short: np.sum(np.tanh(gradc.conv2d(i, k, padding=short)))  # noqa: E731
        g = lambda i, k, pads=pads: np.sum(np.tanh(gradc.conv2d(i, k, padding=pads)))  # noqa: E731
        np.testing.assert_array_equal(f(image, kernel), g(image, kernel))
        for a, b in zip(gradc.grad(f, argnums=(0, 1))(image, kernel),
                        gradc.grad(g, argnums=(0, 1))(image, kernel)):
            np.testing.assert_array_equal(a, b)
    for bad in (-1, (1, -1), True, (1, 2, 3), ((1, 1), 2), "full", 1.5):
        with pytest.raises(gradc.ArgumentError, match=r"conv2d: padding must be(.|\n)*"
                                                      r"test_prims.py"):
            gradc.conv2d(image, kernel, padding=bad)


def test_guard_rejects_the_other_branch():
    x = np.array([0.5, 0.25])
    graph = gradc.make_graph(guarded)(x).verify()
    assert [e.prim.name for e in graph.guards] == ["guard"]
    np.testing.assert_allclose(run(graph, x)[0], np.sin(x) * 2.0)
    with pytest.raises(GuardFailure):
        run(graph, -x)
    jg = jvp_graph(graph).verify()
    assert any(e.prim.name == "guard" for e in jg.eqns)
    with pytest.raises(GuardFailure):
        run(jg, -x, np.ones(2))
    # and the transformation re-traces for the new branch rather than reusing the old one
    np.testing.assert_allclose(gradc.grad(lambda x: np.sum(guarded(x)))(-x), -np.sin(-x))


def test_stop_gradient_cuts_only_its_operand():
    x = np.array([0.3, -1.2, 2.0])
    v = np.array([1.0, 2.0, -1.0])
    f = lambda x: x * ops.stop_gradient(np.sin(x))  # noqa: E731
    _, t = gradc.jvp(f, (x,), (v,))
    np.testing.assert_allclose(t, v * np.sin(x), rtol=1e-14)
    np.testing.assert_allclose(gradc.grad(lambda x: np.sum(f(x)))(x), np.sin(x), rtol=1e-14)


def test_check_grads_catches_a_wrong_rule():
    """The checker is able to fail: a sin whose JVP rule is off by a sign is caught in
    both modes."""
    from gradc.prims import elementwise as ew
    from gradc.prims.rules import defjvp
    x = np.array([0.3, -0.7])
    saved = ew.sin_p.jvp
    try:
        defjvp(ew.sin_p, lambda t, ans, x: ew.neg(ew.mul(t, ew.cos(x))))
        with pytest.raises(AssertionError, match="fwd mode"):
            check_grads(lambda x: ops.sin(x), (x,), modes=("fwd",))
        with pytest.raises(AssertionError, match="rev mode"):
            check_grads(lambda x: ops.sin(x), (x,), modes=("rev",))
    finally:
        ew.sin_p.jvp = saved
    check_grads(lambda x: ops.sin(x), (x,), order=2)


def test_check_grads_catches_a_wrong_second_derivative():
    """Right first derivative, wrong second: only order 2 notices."""
    from gradc.prims import elementwise as ew
    from gradc.prims.rules import defjvp
    x = np.array([0.3, -0.7])
    saved = ew.cos_p.jvp
    try:
        # cos with the wrong sign: sin's first derivative t·cos(x) only evaluates cos,
        # its second derivative differentiates cos
        defjvp(ew.cos_p, lambda t, ans, x: ew.mul(t, ew.sin(x)))
        check_grads(lambda x: ops.sin(x), (x,), order=1)
        with pytest.raises(AssertionError, match="order 2"):
            check_grads(lambda x: ops.sin(x), (x,), order=2)
    finally:
        ew.cos_p.jvp = saved


def test_check_grads_passes_integer_args_through():
    x = np.array([0.5, 1.5])
    check_grads(lambda x, n, flag: x ** n if flag else x, (x, 3, True), order=2)
    check_grads(lambda p: p["w"] * np.sum(p["b"]), ({"w": 2.0, "b": np.ones(2)},), order=2)


# ---------------------------------------------------------------- helpers

def _is_static(a):
    return isinstance(a, (bool, int, tuple, type(None))) and not isinstance(a, float)


def _leaves(tree):
    return gradc.pytree.flatten(tree)[0]


def _assert_tree_equal(got, want):
    got_l, want_l = _leaves(got), _leaves(want)
    assert len(got_l) == len(want_l), (got, want)
    for g, w in zip(got_l, want_l):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        assert g.dtype == w.dtype or (g.dtype.kind == w.dtype.kind == "i"), (g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
