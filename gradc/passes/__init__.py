"""Graph → Graph passes.  Each is a plain function that returns a new, valid Graph."""
from .jvp import jvp_graph  # noqa: F401
from .linearize import linearize_graph  # noqa: F401
from .simplify import simplify  # noqa: F401
from .transpose import transpose_graph, vjp_graph  # noqa: F401
