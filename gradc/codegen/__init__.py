"""Code generation: Graph -> readable Python source -> Numba (CPU).

Numba is imported on first use (``compile_graph``, ``Compiled``), not with gradc."""


def __getattr__(name):
    if name in ("Compiled", "compile_graph"):
        from . import numba_cpu
        return getattr(numba_cpu, name)
    if name in ("lower", "to_source"):
        from . import pysource
        return getattr(pysource, name)
    raise AttributeError(f"module 'gradc.codegen' has no attribute {name!r}")


__all__ = ["Compiled", "compile_graph", "lower", "to_source"]
