"""The gradc error hierarchy.

Every error a user can provoke is a subclass of :class:`GradcError`.  Messages say
what went wrong, where in the user's code (``file:line`` and the source text), and
what to do instead.  The user's source line is found by walking the Python stack
to the first frame that is not inside the ``gradc`` package.
"""
from __future__ import annotations

import linecache
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class GradcError(Exception):
    """Base class of every error gradc raises on purpose."""


class UnsupportedError(GradcError, NotImplementedError):
    """A NumPy function, ufunc, method or argument that gradc cannot trace."""


class ConcretizationError(GradcError):
    """A traced value was turned into a Python number (``float()``, ``int()``, ``math.*``)
    or stored into a NumPy array.

    Deliberately not a ``TypeError``: NumPy catches ``TypeError`` from ``__float__`` while
    converting (``z[0] = traced``) and retries in ways that end in an unrelated
    ``ValueError``, which would hide this message.
    """


class UnsupportedAttributeError(UnsupportedError, AttributeError):
    """An ``ndarray`` attribute or method that traced arrays do not provide.  Also an
    ``AttributeError``, so ``hasattr`` and ``getattr(x, name, default)`` keep working."""


class ArgumentError(GradcError, TypeError):
    """Bad arguments to a gradc transformation (e.g. differentiating an integer)."""


class TangentDTypeError(ArgumentError):
    """A tangent (``jvp``, ``linearize``'s function, ``hvp``) or cotangent (``vjp``'s
    function) whose floating-point dtype is not its primal's or output's: gradc does not
    cast it (JAX refuses it too), since either way a precision is lost by mistake."""


class ShapeError(GradcError, ValueError):
    """Operand shapes that do not fit together."""


class ReadOnlyError(GradcError, ValueError):
    """A write into an array NumPy makes read-only (``np.broadcast_to``'s view,
    ``sliding_window_view``'s windows): NumPy raises "assignment destination is
    read-only"."""


class InvalidValueError(GradcError, ValueError):
    """Values NumPy refuses with a ValueError (an all-NaN line for ``nanargmax``, a
    negative count for ``bincount``): checked on every call, through a guard."""


class DTypeError(GradcError, TypeError):
    """Operand dtypes that a primitive does not accept together."""


class ScalarOverflowError(GradcError, OverflowError):
    """A Python integer that does not fit the dtype NumPy's promotion gives it
    (``uint8_array + 300``: NumPy 2 keeps the array's dtype and raises OverflowError)."""


class EvaluationError(GradcError):
    """A NumPy implementation failed on the traced values (e.g. a singular matrix)."""


class NonScalarOutputError(GradcError, TypeError):
    """``grad`` of a function whose output is not a scalar."""


class TracerLeakError(GradcError, RuntimeError):
    """A traced value escaped the function being traced and was used later."""


class GuardFailure(GradcError):
    """Raised inside evaluation when a recorded control-flow guard does not hold.

    Users never see it: transformations catch it and re-trace for the new path.
    """


class IRError(GradcError, AssertionError):
    """A Graph that violates the IR's invariants (raised by ``Graph.verify``)."""


def _in_gradc(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep)


def _gradc_frame(frame) -> bool:
    """Whether ``frame`` runs gradc's code: a file of the package, or code gradc's
    modules generated at run time (a dataclass's ``__init__``, compiled from ``<string>``
    with the module's globals)."""
    filename = frame.f_code.co_filename
    if _in_gradc(filename):
        return True
    return filename.startswith("<") and \
        str(frame.f_globals.get("__name__", "")).split(".")[0] == "gradc"


def _package_dirs(*names) -> tuple:
    """The directories of the installed packages ``names`` (not imported for this)."""
    import importlib.util
    dirs = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            dirs.append(os.path.dirname(os.path.abspath(spec.origin)) + os.sep)
    return tuple(dirs)


_LIBRARIES = _package_dirs("numpy", "scipy")


def _in_library(filename: str) -> bool:
    """Whether ``filename`` is NumPy's or SciPy's (their package directories: a user's
    folder named ``.../numpy/...`` is the user's)."""
    return os.path.abspath(filename).startswith(_LIBRARIES)


def _stdlib_dirs() -> tuple:
    import sysconfig
    paths = sysconfig.get_paths()
    return tuple({os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib")
                  if k in paths})


_STDLIB = _stdlib_dirs()


def _in_stdlib(filename: str) -> bool:
    """Whether ``filename`` is a module of Python's standard library (not a package
    installed beside it, in its ``site-packages``)."""
    path = os.path.abspath(filename)
    return path.startswith(_STDLIB) and "-packages" + os.sep not in path


def user_frame():
    """The innermost stack frame that belongs to user code (not gradc, NumPy or SciPy,
    nor the standard library: ``functools.cached_property`` inside gradc, or
    ``<frozen runpy>`` where ``python -m gradc`` starts)."""
    frame = sys._getframe(1)
    while frame is not None:
        if is_user_frame(frame):
            return frame
        frame = frame.f_back
    return None


def is_user_frame(frame) -> bool:
    """Whether ``frame`` runs user code (``user_frame``'s test)."""
    filename = frame.f_code.co_filename
    return not _gradc_frame(frame) and not _in_library(filename) and \
        not filename.startswith("<frozen ") and not _in_stdlib(filename)


def library_call() -> str | None:
    """``'scipy.special.logsumexp'`` when the user's line called a NumPy or SciPy Python
    function that is running now (the outermost such frame below the user's), else None."""
    frame, outer = sys._getframe(1), None
    while frame is not None:
        filename = frame.f_code.co_filename
        if _in_library(filename):
            outer = frame
        elif not _gradc_frame(frame):
            break
        frame = frame.f_back
    if outer is None:
        return None
    module = outer.f_globals.get("__name__", "")
    name = outer.f_code.co_name
    qualname = getattr(outer.f_code, "co_qualname", name)
    if module.split(".")[0] == "numpy":
        import numpy as np
        if getattr(getattr(np, name, None), "__code__", None) is outer.f_code:
            return f"np.{name}"          # as the user spelled it: np.full, not numpy.numeric
        owner, _, method = qualname.rpartition(".")
        if owner and "<" not in owner and isinstance(getattr(np, owner, None), type):
            # a method of a NumPy class: calling np.vectorize(f) runs its __call__
            return f"np.{owner}" if method == "__call__" else f"np.{owner}.{method}"
    public = ".".join(p for p in module.split(".") if not p.startswith("_"))
    return f"{public}.{name}"


def user_instruction(frame) -> str | None:
    """The name of the bytecode instruction ``frame`` is executing (e.g. ``STORE_SUBSCR``)."""
    import dis
    for ins in dis.get_instructions(frame.f_code):
        if ins.offset == frame.f_lasti:
            return ins.opname
    return None


def user_location() -> str | None:
    """``'file.py:12: y = float(x)'`` for the user's current line, or None."""
    frame = user_frame()
    if frame is None:
        return None
    return format_location(frame.f_code.co_filename, frame.f_lineno)


def format_location(filename: str, lineno: int) -> str:
    text = linecache.getline(filename, lineno).strip()
    where = f"{filename}:{lineno}"
    return f"{where}: {text}" if text else where


def with_location(message: str, location: str | None = None) -> str:
    """Append the user's source line to a message."""
    location = location if location is not None else user_location()
    if location:
        return f"{message}\n  at {location}"
    return message


def check_function(fun, what: str, args=None, kwargs=None, where=None) -> None:
    """An ``ArgumentError`` at the user's line unless ``fun`` is callable and, where its
    signature is known, accepts ``args`` (a tuple of the positional arguments gradc will
    pass, or their count) and ``kwargs``: checked where the function is handed to gradc,
    not as a TypeError from deep inside it when gradc calls it.  ``where``: the user's
    line, if not the current one."""
    if not callable(fun):
        kind = type(fun).__name__
        kind = "a traced array" if kind == "Tracer" else \
            f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        raise ArgumentError(with_location(f"{what} must be a function, got {kind}", where))
    if args is None:
        return
    import inspect
    if isinstance(args, int):
        args = tuple(range(args))
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):         # (a builtin without a signature)
        return
    try:
        signature.bind(*args, **(kwargs or {}))
    except TypeError as e:
        code = getattr(getattr(fun, "__wrapped__", fun), "__code__", None)
        defined = f" (defined at {code.co_filename}:{code.co_firstlineno})" if code else ""
        name = getattr(fun, "__name__", type(fun).__name__)
        n = len(args)
        raise ArgumentError(with_location(
            f"{what} is called with {n} positional argument{'s' if n != 1 else ''}"
            f"{' and keywords ' + ', '.join(kwargs) if kwargs else ''}, but {name}"
            f"{defined} does not take them: {e}", where)) from None
