"""Shorthands for writing primitive rules (JAX's ``defjvp``/``deflinear`` in gradc's words).

Conventions shared by every rule:

* A JVP rule has the signature ``jvp(primals, tangents, **params) -> (out, tangent_out)``;
  a tangent is ``None`` where it is a symbolic zero, and the rule returns ``None`` for a
  zero output tangent.  Rules are written with gradc operations (``gradc.ops``), so the
  JVP of a JVP is again a traced program and derivatives of any order compose.
* A transpose rule has the signature ``transpose(ct, *args, **params) -> cotangents``;
  ``args`` holds ``UndefinedPrimal`` markers for the inputs the primitive is linear in,
  and values for the others.  It returns one cotangent (or ``None``) per argument, each
  with the exact shape and dtype of that argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UndefinedPrimal:
    """Marks a linear input of an equation during transposition."""
    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def is_undefined(x) -> bool:
    return isinstance(x, UndefinedPrimal)


def add_tangents(a, b):
    """Sum of two tangents where ``None`` is zero."""
    if a is None:
        return b
    if b is None:
        return a
    from .. import ops
    return ops.add(a, b)


def defjvp(prim, *rules):
    """One rule per argument: ``rule(t, ans, *primals, **params)`` is the contribution of
    that argument's tangent ``t``; contributions are summed.  ``None`` marks an argument
    with no derivative (an index, a predicate)."""
    def jvp(primals, tangents, **params):
        ans = prim.bind(*primals, **params)
        out = None
        for rule, t in zip(rules, tangents):
            if t is not None and rule is not None:
                out = add_tangents(out, rule(t, ans, *primals, **params))
        return ans, out
    prim.jvp = jvp


def defzero(prim):
    """The primitive is piecewise constant (or returns integers): its tangent is zero."""
    def jvp(primals, tangents, **params):
        return prim.bind(*primals, **params), None
    prim.jvp = jvp


def deflinear(prim, transpose):
    """A primitive linear in all of its (array) arguments: its JVP is itself applied to
    the tangents (zeros materialised where some but not all are zero)."""
    def jvp(primals, tangents, **params):
        from .. import ops
        ans = prim.bind(*primals, **params)
        if all(t is None for t in tangents):
            return ans, None
        ts = [ops.zeros_like(p) if t is None else t for p, t in zip(primals, tangents)]
        return ans, prim.bind(*ts, **params)
    prim.jvp = jvp
    prim.transpose = transpose


def defbilinear(prim, transpose_lhs, transpose_rhs):
    """A primitive linear in each of its two arguments separately (mul, einsum, conv2d):
    d(x∘y) = dx∘y + x∘dy.  ``transpose_lhs(ct, x, y)`` gives the cotangent of x when x is
    the linear one, ``transpose_rhs(ct, x, y)`` that of y."""
    defjvp(prim,
           lambda t, ans, x, y, **p: prim.bind(t, y, **p),
           lambda t, ans, x, y, **p: prim.bind(x, t, **p))

    def transpose(ct, x, y, **params):
        if is_undefined(x) and is_undefined(y):
            raise ValueError(f"{prim.name} is bilinear, not linear in both arguments at once")
        if is_undefined(x):
            return [transpose_lhs(ct, x, y, **params), None]
        return [None, transpose_rhs(ct, x, y, **params)]
    prim.transpose = transpose


def unbroadcast(ct, shape):
    """Sum a cotangent down to ``shape`` (elementwise primitives broadcast rank-0 operands
    implicitly; the cotangent of such an operand is the sum over the broadcast)."""
    from .. import ops
    if ct is None or tuple(np.shape(ct)) == tuple(shape):
        return ct
    assert tuple(shape) == (), (np.shape(ct), shape)
    return ops.reduce_sum(ct, axes=tuple(range(len(np.shape(ct)))))
