"""Code generation: Graph -> readable Python source -> Numba (CPU)."""
from .numba_cpu import Compiled, compile_graph  # noqa: F401
from .pysource import lower, to_source  # noqa: F401
