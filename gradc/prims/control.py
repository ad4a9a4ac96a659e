"""Control primitives: ``guard`` (a recorded Python branch) and ``stop_gradient``.

A ``guard`` equation has one boolean operand and no outputs; it is an *effect*, kept
by dead-code elimination.  Evaluating it checks that the predicate still has the
value it had when the function was traced, and raises ``GuardFailure`` otherwise, so
the transformation re-traces for the new path instead of returning the derivative of
the wrong one.  Guards live in the primal part of every derived graph.
"""
from __future__ import annotations

import numpy as np

from ..errors import GuardFailure
from ..ir import Primitive
from ..trace import bind
from .rules import defzero

guard_p = Primitive("guard", effect=True, multiple_results=True, checks_values=True)


def _guard_impl(pred, expected):
    if bool(np.asarray(pred).reshape(())) != expected:
        raise GuardFailure(f"branch predicate is now {not expected}, traced with {expected}")
    return []


guard_p.impl = _guard_impl
guard_p.abstract = lambda pred, expected: []


def _guard_jvp(primals, tangents, expected):
    guard(primals[0], expected)
    return [], []


guard_p.jvp = _guard_jvp


def guard(pred, expected: bool):
    return bind(guard_p, pred, expected=bool(expected))


stop_gradient_p = Primitive("stop_gradient")
stop_gradient_p.impl = lambda x: np.asarray(x)
stop_gradient_p.abstract = lambda x: [(tuple(x.shape), x.dtype)]
defzero(stop_gradient_p)


def stop_gradient(x):
    """The identity, with a zero derivative (JAX's ``lax.stop_gradient``)."""
    from ..trace import Tracer
    if not isinstance(x, Tracer):
        return x
    return bind(stop_gradient_p, x)
