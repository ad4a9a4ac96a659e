"""``Transformed``: what ``gradc.grad`` and ``gradc.value_and_grad`` return.

A callable that wraps the user's function, keeps the cache of its specialisations and
exposes every stage for given example arguments: ``.graph(*args)`` (the IR that runs,
after the passes), ``.source(*args)`` (the generated Python), ``.llvm(*args)``,
``.asm(*args)``, and ``.compile(*args)`` (a picklable ``Compiled``).  ``gradc.show``
prints the stages one after the other.

Subclasses say how to turn the call's arguments into a cache key and a builder
(``_prepare``) and how to turn the derived graph's results into the user's result
(``_finish``).
"""
from __future__ import annotations

import functools

from .codegen.compile import check_target
from .errors import ArgumentError, with_location


class Transformed:
    kind = "transformed"

    def __init__(self, fun, *, target=None, fastmath=False):
        from .api import _Cache
        if not callable(fun):
            raise ArgumentError(with_location(
                f"gradc.{self.kind} expects a function, got a {type(fun).__name__}"))
        # name, docstring and module of ``fun``; not its __dict__ (a Transformed's
        # attributes would overwrite ours)
        functools.update_wrapper(self, fun, updated=())
        self.fun = fun
        self.target = check_target(target)
        self.fastmath = bool(fastmath)
        self._cache = _Cache(fun)

    # -------------------------------------------------------- subclass interface

    def _prepare(self, args, kwargs):
        """-> (key, build, dynamic inputs, state for _finish)."""
        raise NotImplementedError

    def _finish(self, spec, results, state):
        raise NotImplementedError

    # -------------------------------------------------------- calling

    def __call__(self, *args, **kwargs):
        key, build, dynamic, state = self._prepare(args, kwargs)
        spec, results = self._cache.run(key, build, dynamic)
        return self._finish(spec, results, state)

    def __get__(self, obj, objtype=None):         # works as a method, like a function
        return self if obj is None else functools.partial(self, obj)

    def specialise(self, *args, **kwargs):
        """The specialisation that these arguments run, traced and optimised but not
        run: inspecting a program (``source``, ``graph``, ``compile``, ``ptx``) costs a
        trace and the passes, never a call (none on a GPU, none in the simulator)."""
        key, build, _, _ = self._prepare(args, kwargs)
        return self._cache.find(key, build)

    # -------------------------------------------------------- inspection

    def traced(self, *args, **kwargs):
        """The traced primal Graph of the user's function (before any pass)."""
        return self.specialise(*args, **kwargs).info["primal"]

    def graph(self, *args, **kwargs):
        """The Graph that runs for these arguments: derived, then optimised."""
        return self.specialise(*args, **kwargs).executable.graph

    def compile(self, *args, **kwargs):
        """The compiled code for these arguments, as a picklable ``gradc.codegen.Compiled``
        that takes the flattened dynamic arguments and returns a list of arrays."""
        exe = self.specialise(*args, **kwargs).executable
        if exe.compiled is None:
            raise ArgumentError(with_location(
                f"{self.__name__} runs on target={self.target!r}, which compiles nothing; "
                "use target='cpu' or 'parallel'"))
        return exe.compiled

    def source(self, *args, **kwargs) -> str:
        """The generated Python source (the text Numba compiles)."""
        return self.compile(*args, **kwargs).source

    def ptx(self, *args, kernel=None, **kwargs) -> str:
        """target='cuda': the PTX of the generated kernels (numba.cuda's compiler; needs
        CUDA's NVVM but no GPU: the function is traced and lowered, not run)."""
        if self.target != "cuda":
            raise ArgumentError(with_location(
                f"{self.__name__} runs on target={self.target!r}; PTX is generated for "
                "target='cuda'"))
        return self.specialise(*args, **kwargs).executable.compiled.ptx(kernel)

    def llvm(self, *args, **kwargs) -> str:
        """The LLVM IR Numba produced for the main function."""
        return self.compile(*args, **kwargs).llvm()

    def asm(self, *args, **kwargs) -> str:
        """The machine code (assembly text) of the main function."""
        return self.compile(*args, **kwargs).asm()

    # -------------------------------------------------------- pickling, printing

    def __reduce__(self):
        # a decorated module-level function pickles by reference (its module is imported
        # again on the other side); otherwise by its function and options
        import sys
        module = sys.modules.get(getattr(self, "__module__", None) or "")
        if getattr(module, getattr(self, "__qualname__", ""), None) is self:
            return self.__qualname__
        return (self._rebuild, (self.fun, self._options()))

    def _options(self) -> dict:
        return dict(target=self.target, fastmath=self.fastmath)

    @classmethod
    def _rebuild(cls, fun, options):
        return cls(fun, **options)

    def __repr__(self) -> str:
        return f"<gradc.{self.kind} of {getattr(self.fun, '__qualname__', self.fun)!r}>"


def show(f, *args, file=None, **kwargs) -> None:
    """Print every stage of ``f`` at these arguments: the traced IR, the IR after the
    passes, and the generated source.  ``f`` is a gradc-transformed function
    (``gradc.grad(g)``) or a plain function (then its primal is shown)."""
    import sys

    from . import api
    from .sparsity import SparseJacobian
    out = file or sys.stdout
    rule = "=" * 72
    if isinstance(f, SparseJacobian):       # (its compressed products: what it runs)
        print(f"{rule}\n# {f.coloring(*args, **kwargs)}: one product per colour\n{rule}",
              file=out)
        f, args = f.compressed(*args, **kwargs)
    if not isinstance(f, Transformed):
        f = api.Evaluate(f)
    spec = f.specialise(*args, **kwargs)
    exe = spec.executable
    print(f"{rule}\n# traced IR of {getattr(f.fun, '__qualname__', f.fun)}\n{rule}",
          file=out)
    print(spec.info["primal"], file=out)
    from .passes.implicit import regions
    found = regions(spec.graph)
    if found:
        print(f"{rule}\n# solver regions: differentiated implicitly, not through their "
              f"iterations\n{rule}", file=out)
        print("\n".join(found), file=out)
    print(f"{rule}\n# {f.kind} after the passes (target={f.target!r})\n{rule}", file=out)
    print(exe.graph, file=out)
    if exe.compiled is not None:
        print(f"{rule}\n# generated source ({exe.compiled.path})\n{rule}", file=out)
        print(exe.compiled.source, file=out)
