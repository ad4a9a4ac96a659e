"""The ``gradc`` command (also ``python -m gradc``).

    gradc show  FILE.py:FUNC --args "f64[5]" [--emit ir,grad,source,llvm,asm,ptx]
                                             [--target cpu|parallel|cuda|numpy]
    gradc check FILE.py:FUNC --args "f64[5], f64[]" [--against sympy,fd] [--modes rev,fwd]
                                                    [--targets numpy,cpu]
    gradc draw  FILE.py:FUNC --args "f64[3]" [--grad] [-o graph.svg]
    gradc demo

``--args`` is a comma-separated list of specs, one per positional argument: a dtype and
a shape (``f64[5]``, ``f32[2,3]``, ``f64[]`` for a scalar: random numbers, uniform in
``--range`` (default 0.5..1.5), seeded by ``--seed``), or a Python number (``2``,
``0.5``, ``nan``, ``inf``, ``-inf``); ``NAME=SPEC`` passes a keyword argument.
``--args @FILE.py`` reads the arguments from a file instead: a Python expression (a
tuple of them; tuples, lists and dicts are pytree arguments), or code that defines
``args`` and/or ``kwargs``; ``np`` is available in it.  Errors print one line
(``gradc: error: ...``) and exit with status 2; ``check`` exits with 1 when a
comparison fails.  ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np

EMITS = ("ir", "grad", "source", "llvm", "asm", "ptx")
_DTYPES = {"f64": np.float64, "f32": np.float32, "i64": np.int64, "i32": np.int32,
           "bool": np.bool_, "float64": np.float64, "float32": np.float32,
           "int64": np.int64, "int32": np.int32}
_SPEC = re.compile(r"^\s*([a-z0-9]+)\[([0-9,\s]*)\]\s*$")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# ---------------------------------------------------------------- loading

def load_function(target: str):
    """``path/to/file.py:name`` -> the function (``name`` may be dotted: ``Cls.f``)."""
    if ":" not in target:
        raise CliError(f"expected FILE.py:FUNCTION, got {target!r}")
    file, _, name = target.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise CliError(f"no such file: {file}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    # (as ``python FILE.py`` would see it: its folder first on the path for the rest of
    # the run, the module registered, so that dataclasses and late imports work)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules.setdefault(path.stem, module)
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:         # (sys.exit() while it is imported)
        raise CliError(f"{file} called sys.exit({e.code!r}) while it was imported") from e
    except Exception as e:          # noqa: BLE001  (the user's module failed to import)
        raise CliError(f"{file} failed to import: {type(e).__name__}: {e}") from e
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{file} has no function {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        kind = type(obj).__name__
        raise CliError(f"{file}:{name} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                       "not a function")
    return obj


def _split_specs(text: str) -> list:
    """Split at commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


_KEYWORD = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)\s*(.*)$")


def parse_args_spec(text: str, seed: int = 0, lo: float = 0.5, hi: float = 1.5) -> tuple:
    """The positional arguments a spec string describes (see the module docstring);
    ``parse_call_spec`` also gives the keyword arguments."""
    args, kwargs = parse_call_spec(text, seed, lo, hi)
    if kwargs:
        raise CliError(f"keyword arguments in --args ({', '.join(kwargs)}): use "
                       "parse_call_spec")
    return args


def parse_call_spec(text: str, seed: int = 0, lo: float = 0.5, hi: float = 1.5):
    """``(args, kwargs)`` a spec string describes: ``NAME=SPEC`` is a keyword argument
    (after the positional ones, as in Python), ``@FILE.py`` reads them from a file."""
    if text.startswith("@"):
        return _args_from_file(Path(text[1:]))
    rng = np.random.default_rng(seed)
    out, kwargs = [], {}
    for part in _split_specs(text):
        keyword = _KEYWORD.match(part)
        if keyword:
            name, part = keyword.groups()
            if name in kwargs:
                raise CliError(f"keyword argument {name!r} given twice in --args")
        elif kwargs:
            raise CliError(f"positional argument spec {part!r} after a keyword one in "
                           "--args (as in Python, keywords come last)")
        value = _value(part, rng, lo, hi)
        if keyword:
            kwargs[name] = value
        else:
            out.append(value)
    if not out and not kwargs:
        raise CliError("--args is empty")
    return tuple(out), kwargs


def _value(part: str, rng, lo, hi):
    """One spec's value: random numbers of a dtype and shape, or a number."""
    m = _SPEC.match(part)
    if not m:
        return _number(part)
    kind, dims = m.groups()
    if kind not in _DTYPES:
        raise CliError(f"unknown dtype {kind!r} in argument spec {part!r} "
                       f"(use one of f64, f32, i64, i32, bool)")
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise CliError(f"bad shape in argument spec {part!r}") from None
    dt = np.dtype(_DTYPES[kind])
    if dt.kind == "f":
        value = rng.uniform(lo, hi, shape).astype(dt)
    elif dt.kind == "b":
        value = rng.integers(0, 2, shape).astype(bool)
    else:
        value = rng.integers(0, 10, shape).astype(dt)
    return value if shape else (float(value) if dt == np.float64 else value[()])


def _number(part: str):
    """An int (a static argument), else a float: ``0.5``, ``1e-3``, ``nan``, ``inf``,
    ``-inf``, as Python's ``float`` reads them."""
    try:
        return int(part)
    except ValueError:
        pass
    try:
        return float(part)
    except ValueError:
        raise CliError(f"bad argument spec {part!r}: expected a dtype and shape like "
                       f"f64[5] or f32[2,3] or f64[], or a number") from None


def _args_from_file(path: Path):
    """``(args, kwargs)`` from a file: one Python expression (a tuple for several
    positional arguments), or code that sets ``args`` and/or ``kwargs`` (a dict)."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    text = path.read_text()
    scope = {"np": np, "numpy": np}
    kwargs = {}
    try:
        try:
            value = eval(compile(text, str(path), "eval"), scope)    # noqa: S307
        except SyntaxError:
            exec(compile(text, str(path), "exec"), scope)              # noqa: S102
            if "args" not in scope and "kwargs" not in scope:
                raise CliError(f"{path} must be a Python expression or define `args` "
                               "and/or `kwargs`")
            value = scope.get("args", ())
            kwargs = scope.get("kwargs", {})
            if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise CliError(f"{path}: `kwargs` must be a dict of names to values")
    except CliError:
        raise
    except Exception as e:          # noqa: BLE001
        raise CliError(f"{path} failed: {type(e).__name__}: {e}") from e
    return (tuple(value) if isinstance(value, (tuple, list)) else (value,)), dict(kwargs)


# ---------------------------------------------------------------- subcommands

def cmd_show(ns, out):
    import gradc

    from .drawing import derivative_of
    fn = load_function(ns.function)
    args, kwargs = parse_call_spec(ns.args, ns.seed, *ns.range)
    emit = ns.emit if ns.emit is not None else \
        "ir,grad" if ns.target == "numpy" else "ir,grad,source"   # (the interpreter: no code)
    emits = [e.strip() for e in emit.split(",") if e.strip()]
    bad = [e for e in emits if e not in EMITS]
    if bad:
        raise CliError(f"--emit: unknown stage {bad[0]!r} (choose from {', '.join(EMITS)})")
    rule = "=" * 72
    if ns.target == "numpy" and set(emits) & {"source", "llvm", "asm", "ptx"}:
        raise CliError("--emit source/llvm/asm/ptx needs a compiled --target "
                       "(cpu, parallel or cuda)")
    if "ptx" in emits and ns.target != "cuda":
        raise CliError("--emit ptx needs --target cuda")
    if ns.target == "cuda" and set(emits) & {"llvm", "asm"}:
        raise CliError("--target cuda compiles to PTX: use --emit ptx, not llvm/asm")
    derived, d_args = (derivative_of(fn, args, ns.target, kwargs)[::2]
                       if set(emits) & {"grad", "source", "llvm", "asm", "ptx"} else (None, ()))
    for what in emits:
        if what == "ir":
            print(f"{rule}\n# traced IR of {ns.function}\n{rule}", file=out)
            print(gradc.make_graph(fn)(*args, **kwargs), file=out)
        elif what == "grad":
            print(f"{rule}\n# derivative IR after the passes\n{rule}", file=out)
            print(derived.graph(*d_args), file=out)
        elif what == "source":
            print(f"{rule}\n# generated source of the derivative\n{rule}", file=out)
            print(derived.source(*d_args), file=out)
        elif what == "ptx":
            print(f"{rule}\n# PTX of the derivative's kernels\n{rule}", file=out)
            print(derived.ptx(*d_args), file=out)
        elif what == "llvm":
            print(f"{rule}\n# LLVM IR of the derivative's main function\n{rule}", file=out)
            print(derived.llvm(*d_args), file=out)
        else:
            print(f"{rule}\n# assembly of the derivative's main function\n{rule}", file=out)
            print(derived.asm(*d_args), file=out)
    return 0


def cmd_check(ns, out):
    import gradc
    fn = load_function(ns.function)
    args, kwargs = parse_call_spec(ns.args, ns.seed, *ns.range)
    report = gradc.check(fn, *args, against=_list(ns.against), modes=_list(ns.modes),
                         targets=_list(ns.targets), **kwargs)
    print(report, file=out)
    return 0 if report.ok else 1


def cmd_draw(ns, out):
    import gradc
    fn = load_function(ns.function)
    args, kwargs = parse_call_spec(ns.args, ns.seed, *ns.range)
    path = gradc.draw(fn, *args, path=ns.output, grad=ns.grad, **kwargs)
    extra = "" if path.suffix == ".dot" else f" (Graphviz text: {path}.dot)"
    print(f"wrote {path}{extra}", file=out)
    return 0


def cmd_demo(ns, out):
    from . import demo
    return demo.run(out, quick=ns.quick)


def _list(text):
    return tuple(x.strip() for x in text.split(",") if x.strip())


# ---------------------------------------------------------------- the parser

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradc", description="Look inside gradc's derivatives of a function in your "
        "file, check them against SymPy and finite differences, or draw them.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_function(sp):
        sp.add_argument("function", help="FILE.py:FUNCTION")
        sp.add_argument("--args", required=True,
                        help='argument specs, e.g. "f64[5], f64[]", "2.5", "f64[3], s=0.5" '
                             '(a keyword argument), or @FILE.py')
        sp.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
        sp.add_argument("--range", type=float, nargs=2, default=(0.5, 1.5),
                        metavar=("LO", "HI"), help="interval of the random inputs")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")

    s = sub.add_parser("show", help="print the IR, the derivative IR, the generated code")
    with_function(s)
    s.add_argument("--emit", default=None,
                   help=f"stages to print, comma-separated: {','.join(EMITS)} (default "
                        "ir,grad,source; ir,grad with --target numpy)")
    s.add_argument("--target", default="cpu", choices=("cpu", "parallel", "cuda", "numpy"),
                   help="backend of the derivative (numpy: the interpreter, no code)")
    s.set_defaults(run=cmd_show)
    c = sub.add_parser("check", help="compare derivatives with SymPy and finite differences")
    with_function(c)
    c.add_argument("--against", default="sympy,fd")
    c.add_argument("--modes", default="rev,fwd")
    c.add_argument("--targets", default="numpy,cpu")
    c.set_defaults(run=cmd_check)
    d = sub.add_parser("draw", help="draw the Graph (.svg, .png or .dot)")
    with_function(d)
    d.add_argument("-o", "--output", default="graph.svg")
    d.add_argument("--grad", action="store_true", help="draw the derivative's Graph")
    d.set_defaults(run=cmd_draw)
    m = sub.add_parser("demo", help="a tour on an example shipped with gradc")
    m.add_argument("--quick", action="store_true", help="skip the compiled backend")
    m.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks of errors")
    m.set_defaults(run=cmd_demo)
    return p


def main(argv=None) -> int:
    p = parser()
    ns = p.parse_args(argv)
    if ns.command is None:
        p.print_help()
        return 2
    try:
        return ns.run(ns, sys.stdout)
    except KeyboardInterrupt:
        return 130
    except Exception as e:          # noqa: BLE001  (one line unless --debug)
        if ns.debug:
            raise
        from .errors import GradcError
        kind = "" if isinstance(e, (CliError, GradcError)) else f"{type(e).__name__}: "
        message = " ".join(str(e).split("\n")[0:1]) or type(e).__name__
        where = [line.strip() for line in str(e).split("\n")[1:] if line.strip().startswith("at ")]
        if not where and not isinstance(e, CliError):
            where = _users_line(e)
        print(f"gradc: error: {kind}{message}" + (f" ({where[0]})" if where else ""),
              file=sys.stderr)
        return 2


def _users_line(e) -> list:
    """``["at FILE:LINE: text"]`` for the innermost frame of the user's code (not gradc's,
    NumPy's, SciPy's or Python's own) in ``e``'s traceback, where an exception that is
    not gradc's (a NumPy error in the function, or the function's own) came from."""
    import sysconfig
    import traceback
    from .errors import _in_gradc, _in_library, format_location
    python = tuple(str(Path(p).resolve()) + "/" for p in
                   {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not (_in_gradc(f.filename) or _in_library(f.filename)
                      or f.filename.startswith("<")
                      or str(Path(f.filename).resolve()).startswith(python))]
    return [f"at {format_location(frames[-1].filename, frames[-1].lineno)}"] if frames else []


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
