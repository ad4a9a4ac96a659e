"""Generated helpers compiled once, inside the function that calls them.

Numba compiles every ``@njit`` function into a code library of its own.  When the
library is finalised, Numba links into its LLVM module every library the function calls,
runs the whole module through LLVM's optimiser and emits machine code for all of it.  A
generated module calls its helpers in a tree: the main function calls the bodies of its
structured loops, a body calls the loop nests of its fused equations (and the bodies of
loops nested in it).  Each nest was therefore optimised and turned into machine code once
for every level above it, although only the main function is ever called from Python.
The gradient of a neural ODE (``benchmarks/ode.py``: 35 helpers, bodies three levels
deep) spent 9 of its 15 s of first-call compilation in LLVM, about half of that on
such repeated copies.

``link_only`` gives a helper's compilations a library that stops after lowering: the
function gets Numba's per-function optimisation as usual, but no module passes and no
machine code of its own.  Finalising it only links in the libraries it calls, so that
its caller links one module holding the whole subtree and optimises and emits it once.
The code that runs is the same LLVM IR, optimised by the same passes (the results are
bit-identical); the ODE gradient's first call takes 6.9 s instead of 15.1 s
(``docs/benchmarks.md``, thirty-seventh session).  ``GRADC_LINK_ONLY=0`` (read at
import, ``ENABLED``) turns it off.

Such a helper has no Python entry point: called from Python it raises ``TypeError`` (the
generated code calls it only from compiled code), and it has no C or JIT address as a
first-class function.  A helper whose code reads its Numba environment (an object-mode
block finds its Python objects through it) is finalised the usual way, since its
environment must be installed in the engine before any caller runs; so is one reached
through recursion (Numba resolves such calls only in libraries with machine code), and
one asked to be cached on disk.
On a Numba whose internals differ from those this relies on, ``link_only`` leaves the
decorator as it is: the same code, compiled the slow way.
"""
from __future__ import annotations

import functools
import os

import numba

# On unless GRADC_LINK_ONLY=0 (read at import).  (For one session it was opt-in: a large
# neural ODE's gradient ran 2.7x slower with it, in page faults; the cause was glibc's
# heap, not linking: buffers.keep_heap, docs/benchmarks.md, thirty-eighth session.)
ENABLED = os.environ.get("GRADC_LINK_ONLY", "1") != "0"

try:
    from numba.core import codegen as _codegen
    from numba.core.compiler import CompilerBase, DefaultPassBuilder
    from numba.core.compiler_machinery import LoweringPass, register_pass
    from numba.core.typed_passes import AnnotateTypes
    _LIBRARY = _codegen.JITCodeLibrary
    _SUPPORTED = all(hasattr(_LIBRARY, name) for name in (
        "finalize", "_get_module_for_linking", "_raise_if_finalized",
        "get_pointer_to_function", "codegen"))
except (ImportError, AttributeError):      # pragma: no cover  (another Numba)
    _SUPPORTED = False


def _no_python_entry():
    raise TypeError("a gradc helper runs only from the compiled function that calls it")


@functools.cache
def _entry_address() -> int:
    """The address of ``_no_python_entry``'s CPython wrapper (compiled once)."""
    fn = numba.njit(_no_python_entry)
    fn.compile(())
    cres = fn.overloads[()]
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_cpython_wrapper_name)


def _unresolved(module) -> bool:
    """Whether an LLVM module calls a function through Numba's pointer for symbols not
    compiled yet (recursion), which only a library with machine code gets resolved."""
    return any(gv.name.startswith(".numba.unresolved$") for gv in module.global_variables)


if _SUPPORTED:
    class _EnvironmentKept:
        """The codegen as a link-only library shows it: ``set_env`` is a no-op (its code
        never reads the environment, and its symbol is in no engine yet)."""

        def __init__(self, codegen):
            self._codegen = codegen

        def set_env(self, env_name, env):
            pass

        def __getattr__(self, name):
            return getattr(self._codegen, name)

    class LinkOnlyLibrary(_LIBRARY):
        """A code library finalised by linking only (see the module's docstring)."""

        _link_only = None           # decided when its entry is asked for (lowering's end)

        def _decide(self) -> bool:
            if self._link_only is None:
                # (Numba declares the environment's global in every function's module;
                # code that reads it names it a second time)
                env = [gv.name for gv in self._final_module.global_variables
                       if "NumbaEnv" in gv.name]
                text = str(self._final_module) if env else ""
                self._link_only = (all(text.count(n) == 1 for n in env) and
                                   not _unresolved(self._final_module))
            return self._link_only

        @property
        def codegen(self):
            return _EnvironmentKept(self._codegen) if self._decide() else self._codegen

        def get_pointer_to_function(self, name):
            # only the Python entry is replaced (Numba asks for other symbols: a helper
            # passed as a first-class function has no C or JIT address here, 0)
            entry = name.startswith("_ZN7cpython")
            if self._decide():
                return _entry_address() if entry else 0
            return super().get_pointer_to_function(name) or (_entry_address() if entry else 0)

        def get_llvm_str(self):
            self._ensure_finalized()        # (with its callees, not optimised as a module)
            return super().get_llvm_str()

        def get_asm_str(self):
            self._ensure_finalized()
            return super().get_asm_str()

        def finalize(self):
            if not self._decide():
                return super().finalize()
            self._raise_if_finalized()
            libraries = list(dict.fromkeys(self._linking_libraries))
            modules = [library._get_module_for_linking() for library in libraries]
            if any(_unresolved(m) for m in modules):
                # (a callee calls back into a function compiled after it: recursion)
                self._link_only = False
                return super().finalize()
            for library, module in zip(libraries, modules):
                if hasattr(self, "_reload_init"):      # (Numba >= 0.61)
                    self._reload_init.update(library._reload_init)
                self._final_module.link_in(module, preserve=True)
            self._finalized = True

    @register_pass(mutates_CFG=False, analysis_only=False)
    class _LinkOnlyLowering(LoweringPass):
        """Gives the compilation a ``LinkOnlyLibrary`` and no wrappers for Python or C
        callers (run just before Numba's native lowering)."""
        _name = "gradc_link_only_library"

        def __init__(self):
            LoweringPass.__init__(self)

        def run_pass(self, state):
            codegen = state.targetctx.codegen()
            if state.library is None and getattr(codegen, "_library_class", None) is _LIBRARY:
                state.library = LinkOnlyLibrary(codegen, state.func_id.func_qualname)
                state.library.enable_object_caching()
                state.flags.no_cpython_wrapper = True
                state.flags.no_cfunc_wrapper = True
            return True

    class LinkOnlyCompiler(CompilerBase):
        """Numba's nopython pipeline with ``_LinkOnlyLowering`` before its lowering."""

        def define_pipelines(self):
            pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
            pm.add_pass_after(_LinkOnlyLowering, AnnotateTypes)
            pm.finalize()
            return [pm]


def link_only(enabled=None, **options):
    """``numba.njit(**options)`` whose functions are compiled link-only (see the module's
    docstring), or plain ``numba.njit(**options)`` where this Numba is not supported,
    ``cache=True`` is asked for (a disk cache stores machine code, which a link-only
    function has none of), or ``enabled`` (default ``ENABLED``) is false."""
    if enabled is None:
        enabled = ENABLED
    if enabled and _SUPPORTED and not options.get("cache"):
        options["pipeline_class"] = LinkOnlyCompiler
    return numba.njit(**options)
