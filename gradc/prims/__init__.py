"""The closed primitive set.  Each module holds one stanza per primitive: its NumPy
implementation, shape/dtype rule, JVP rule and (for linear primitives) transpose rule,
followed by the function users of ``gradc.ops`` call to apply it."""
from . import (control, conv, custom, decomp, elementwise, implicit, index, linalg,  # noqa: F401
               loops, reduce, shape, special)
from .rules import UndefinedPrimal  # noqa: F401


def all_primitives():
    """Every Primitive object defined in gradc.prims, by name."""
    from ..ir import Primitive
    found = {}
    for module in (elementwise, reduce, shape, index, linalg, conv, control, loops,
                   implicit, decomp, special, custom):
        for value in vars(module).values():
            if isinstance(value, Primitive):
                found[value.name] = value
    return found
