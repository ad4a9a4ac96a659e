"""``gradc.check``: gradc's derivatives against SymPy's and against finite differences.

``report = gradc.check(f, *args)`` computes the Jacobian of ``f``'s result with respect
to each floating-point argument in every requested mode (``modes``: reverse, forward)
on every requested backend (``targets``: the NumPy interpreter, the compiled CPU code),
and compares each with each reference (``against``):

* ``"sympy"``: ``gradc.to_sympy(f)`` turned into expressions, differentiated by
  ``sympy.diff`` and evaluated at ``args`` with mpmath at 30 significant digits: exact
  up to the float64 rounding of the inputs.  Skipped (with the reason in the table) for
  programs SymPy cannot express (a data-dependent loop, a decomposition) or too large
  (``SYMPY_MAX`` derivative entries, or ``SYMPY_MAX_OPS`` operations in the
  expression: SymPy's time grows with it, a minute for seven dense tanh layers), and
  for one argument alone when SymPy cannot differentiate or evaluate with respect to
  it.  The finite-difference rows run regardless.
* ``"fd"``: the complex step ``Im f(x + ih e_k) / h`` where the function allows it
  (evaluated in NumPy with a complex input, it must give a complex result and agree
  with the next method along a random direction), else central differences with a step
  chosen per element, ``h = ε^(1/3) max(1, |x_k|)``, improved by one Richardson
  extrapolation ``(4 D(h/2) - D(h)) / 3`` (truncation error O(h⁴)).

Errors are normwise over each Jacobian: ``abs = max |J - R|``, ``rel = abs / max |R|``;
a row passes when ``abs <= atol + rtol * max |R|``, the tolerances set per reference
(``TOLERANCES``; float32 inputs get looser ones).  ``print(report)`` shows the table;
``report.ok`` is True when every row that ran passed.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import ArgumentError, GradcError, check_function, with_location

SYMPY_MAX = 2000        # derivative entries SymPy is asked for, at most
# operations in the function's SymPy expressions, at most (their trees' size, a shared
# subexpression counted each time it occurs): SymPy's derivative and its printing work
# on the trees, ~0.4 ms per operation (4 tanh layers of 4x4: 2,043 operations, 1 s;
# 5: 8,187, 3 s; 6: 32,761, 15 s; 7: 131k, a minute). Raise it to compare larger
# functions with SymPy anyway.
SYMPY_MAX_OPS = 10_000
FD_MAX = 4000           # input elements finite differences perturb, at most

# reference -> (rtol, atol) for float64; float32 inputs use FLOAT32
TOLERANCES = {"sympy": (1e-9, 1e-12), "complex step": (1e-9, 1e-12),
              "central + Richardson": (1e-6, 1e-9)}
FLOAT32 = (2e-3, 1e-5)

__all__ = ["check", "CheckReport", "Row"]


@dataclass
class Row:
    """One comparison: the derivative w.r.t. ``input`` from ``mode`` on ``target``
    against ``reference``."""
    input: str
    mode: str
    target: str
    reference: str
    abs_err: float = math.nan
    rel_err: float = math.nan
    rtol: float = math.nan
    atol: float = math.nan
    ok: bool | None = None          # None: skipped (see note)
    note: str = ""


@dataclass
class CheckReport:
    """The rows of a ``gradc.check`` call; prints as a table, ``ok`` for scripts."""
    function: str
    rows: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        ran = [r for r in self.rows if r.ok is not None]
        return bool(ran) and all(r.ok for r in ran)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.ok is False]

    def __str__(self) -> str:
        head = ("input", "mode", "target", "reference", "max abs err", "max rel err",
                "tolerance", "result")
        lines = []
        for r in self.rows:
            if r.ok is None:
                lines.append((r.input, r.mode, r.target, r.reference, "-", "-", "-",
                               f"skipped: {r.note}"))
                continue
            lines.append((r.input, r.mode, r.target, r.reference, f"{r.abs_err:.2e}",
                          f"{r.rel_err:.2e}", f"rtol {r.rtol:.0e}, atol {r.atol:.0e}",
                          "pass" if r.ok else f"FAIL: {r.note}" if r.note else "FAIL"))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]

        def fmt(cells):
            return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
        verdict = "all checks passed" if self.ok else (
            f"{len(self.failures)} check(s) FAILED" if self.failures else "nothing was checked")
        return "\n".join([f"gradc.check of {self.function}: {verdict}", fmt(head),
                          fmt(["-" * w for w in widths])] + [fmt(x) for x in lines])

    __repr__ = __str__


# ---------------------------------------------------------------- gradc's Jacobians

def _jacobians(f, args, wrt, mode, target):
    """Jacobians ``out_shape + in_shape`` of ``f`` w.r.t. the arguments ``wrt``."""
    import gradc
    out = np.asarray(f(*args))
    argnums = tuple(wrt)
    if mode == "rev" and out.ndim == 0:
        got = gradc.grad(f, argnums=argnums, target=target)(*args)
    elif mode == "rev":
        got = gradc.jacrev(f, argnums=argnums, target=target)(*args)
    else:
        got = gradc.jacfwd(f, argnums=argnums, target=target)(*args)
    return [np.asarray(g, dtype=np.float64) for g in got]


# ---------------------------------------------------------------- references

def _call(f, args, i, x):
    a = list(args)
    a[i] = x if np.ndim(args[i]) else x.reshape(())[()]
    return np.asarray(f(*a))


def _sample(size):
    if size <= FD_MAX:
        return np.arange(size)
    return np.random.default_rng(0).choice(size, FD_MAX, replace=False)


def _directional(f, args, i, d, complex_step, h=None):
    """The derivative of ``f`` along ``d`` in argument ``i``: by the complex step, or by
    central differences with one Richardson extrapolation, ``(4 D(h/2) - D(h)) / 3``
    (``h``: by default ``ε^(1/3) max(1, max |x|)``).  None when the complex step gives
    a real result (the function dropped the imaginary part)."""
    x = np.array(args[i], dtype=np.complex128 if complex_step else np.float64)
    if complex_step:
        y = _call(f, args, i, x + 1j * 1e-30 * d)
        return None if not np.iscomplexobj(y) else np.imag(y) / 1e-30
    if h is None:
        h = np.finfo(np.float64).eps ** (1 / 3) * max(1.0, float(np.max(np.abs(x), initial=0.0)))

    def central(step):
        return (_call(f, args, i, x + step * d).astype(np.float64)
                - _call(f, args, i, x - step * d).astype(np.float64)) / (2 * step)
    return (4 * central(h / 2) - central(h)) / 3


def _columns(f, args, i, elements, complex_step):
    """The Jacobian's columns ``k`` (derivatives along ``e_k``); central differences take
    a step per element, ``ε^(1/3) max(1, |x_k|)``.  None when the complex step fails."""
    x = np.asarray(args[i], dtype=np.float64)
    cols = {}
    for k in elements:
        e = np.zeros(x.size)
        e[k] = 1.0
        h = None if complex_step else (
            np.finfo(np.float64).eps ** (1 / 3) * max(1.0, abs(x.reshape(-1)[k])))
        col = _directional(f, args, i, e.reshape(x.shape), complex_step, h)
        if col is None:
            return None
        cols[k] = col
    return cols


def _complex_allowed(f, args, i, elements):
    """The complex-step columns when ``f`` runs on complex input and agrees with central
    differences along a random direction (every element at once: a function that drops
    the imaginary part for one element only, ``x[0] * abs(x[1])``, disagrees); else
    None."""
    d = np.random.default_rng(1).standard_normal(np.shape(args[i]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise"):
                probe = _directional(f, args, i, d, True)
    except Exception:          # noqa: BLE001  (any failure: the function is not analytic here)
        return None
    if probe is None:
        return None
    ref = _directional(f, args, i, d, False)
    if not np.allclose(probe, ref, rtol=1e-5, atol=1e-7):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _columns(f, args, i, elements, True)
    except Exception:          # noqa: BLE001
        return None


def _fd(f, args, i, out_shape):
    """(method name, Jacobian estimate, mask of the columns computed)."""
    size = int(np.size(args[i]))
    elements = _sample(size)
    cols = _complex_allowed(f, args, i, list(elements))
    name = "complex step"
    if cols is None:
        cols, name = _columns(f, args, i, elements, False), "central + Richardson"
    J = np.zeros(tuple(out_shape) + (size,))
    for k, c in cols.items():
        J[..., k] = c
    mask = np.zeros(size, bool)
    mask[list(cols)] = True
    return name, J.reshape(tuple(out_shape) + np.shape(args[i])), mask.reshape(np.shape(args[i]))


def _failure(e) -> str:
    """Why SymPy could not, in one line (a skipped row's note)."""
    if isinstance(e, (GradcError, _TooLarge)):
        return str(e).splitlines()[0].removeprefix("to_sympy: ")
    return f"SymPy failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"


def operations(exprs) -> int:
    """The size of SymPy expressions as trees: their operations, a subexpression shared
    by several counted each time it occurs (as ``sympy.count_ops`` counts, and as
    ``sympy.diff`` and the printers walk them); computed once per distinct
    subexpression, so a tree of billions costs no more than its DAG."""
    size: dict = {}
    total = 0
    for root in exprs:
        stack = [(root, False)]
        while stack:
            e, ready = stack.pop()
            if e in size:
                continue
            children = getattr(e, "args", ())
            if not children:
                size[e] = 0
            elif ready:
                size[e] = 1 + sum(size[c] for c in children)
            else:
                stack.append((e, True))
                stack.extend((c, False) for c in children if c not in size)
        total += size[root]
    return total


class _TooLarge(Exception):
    pass


def _sympy_jacobians(f, args, wrt, out_shape):
    """Jacobians from SymPy, one per argument in ``wrt`` (float64 arrays), or for an
    argument whose derivative SymPy cannot give or evaluate, the reason (a string): one
    argument's failure skips its rows only.  Raises when there is no expression at all
    (``to_sympy`` cannot express ``f``): every argument's rows are skipped then."""
    import mpmath
    import sympy as sp

    from .api import _is_static
    from .symbolic import to_sympy
    conv = to_sympy(f)
    expr = conv(*args)
    syms = conv.symbols(*args)
    exprs = np.asarray(expr.tolist() if isinstance(expr, sp.Array) else expr, object)
    ops = operations(exprs.reshape(-1))
    if ops > SYMPY_MAX_OPS:
        raise _TooLarge(f"SymPy's expression has {ops:,} operations (more than "
                        f"gradc.checking.SYMPY_MAX_OPS = {SYMPY_MAX_OPS:,}; raise it to "
                        "compare anyway)")
    flat_syms = [s for group in syms for s in np.asarray(group, object).reshape(-1)]
    # (ints and bools, Python's or NumPy's, are static: no symbols; their values are in
    # the expression)
    dynamic = [i for i, a in enumerate(args) if not _is_static(a)]
    values = [v for i in dynamic for v in np.asarray(args[i], np.float64).reshape(-1)]
    subs_syms = list(flat_syms)
    out = []
    for i in wrt:
        group = np.asarray(syms[dynamic.index(i)], object).reshape(-1)
        try:
            # (every entry's derivative in one function, common subexpressions once: a
            # function per entry printed and compiled the whole expression again each
            # time, minutes for a few layers of tanh)
            derivatives = [_steps_flat(sp.diff(_mod_by_floor(exprs[o]), s))
                           for o in np.ndindex(exprs.shape) for s in group]
            left = [d for e in derivatives for d in e.atoms(sp.Derivative)]
            if left:
                out.append(f"SymPy leaves {left[0]} unevaluated")
                continue
            fn = sp.lambdify(subs_syms, derivatives,
                             modules=[{"DiracDelta": _zero}, "mpmath"], cse=True)
            with mpmath.workdps(30):
                point = [mpmath.mpf(float(v)) for v in values]
                J = np.array([float(mpmath.re(d)) for d in fn(*point)], np.float64)
        except Exception as e:      # noqa: BLE001  (SymPy or mpmath could not: a skip)
            out.append(_failure(e))
            continue
        out.append(J.reshape(tuple(out_shape) + np.shape(args[i])))
    return out


def _mod_by_floor(e):
    """``Mod(p, q)`` as ``p − q floor(p/q)`` (the same values: both take the divisor's
    sign), whose derivative SymPy evaluates once floor's is 0 (``_steps_flat``)."""
    import sympy as sp
    return e.replace(sp.Mod, lambda p, q: p - q * sp.floor(p / q)) if e.has(sp.Mod) else e


def _steps_flat(d):
    """``d`` with the derivatives SymPy leaves unevaluated of piecewise-constant functions
    (``floor``, ``ceiling``, ``sign``; also as ``Subs(Derivative(floor(ξ), ξ), ξ, g)``
    under the chain rule) set to 0, their value away from the steps (finite differences
    and gradc agree there)."""
    import sympy as sp
    steps = (sp.floor, sp.ceiling, sp.sign)

    def flat(e):
        inner = e.expr if isinstance(e, sp.Subs) else e
        return isinstance(inner, sp.Derivative) and isinstance(inner.expr, steps)
    return d.replace(flat, lambda e: sp.S.Zero) if d.has(sp.Derivative) else d


def _zero(*_):
    """SymPy's derivative of a step (``sign``, ``floor``: a ``DiracDelta``) away from it."""
    return 0


# ---------------------------------------------------------------- pytrees, keywords

def _is_leaf(a) -> bool:
    return not isinstance(a, (tuple, list, dict)) and a is not None


def flat_call(f, args, kwargs):
    """``(g, leaves, labels)``: ``g(*leaves)`` is ``f(*args, **kwargs)`` with the traced
    leaves of the arguments (arrays and floats, in gradc's order: the positional
    arguments', then the keyword arguments' by name) as positional arguments, and the
    static ones (ints, bools, other objects) kept as they are.  ``labels`` name each
    leaf by its place: ``x``, ``params['W']``, ``pair[1]``, ``point.x``."""
    from . import pytree
    from .api import _is_static
    from .symbolic import _names
    names = _names(f, len(args))
    keys = sorted(kwargs)
    step = {"field": ".{}".format, "index": "[{}]".format, "key": lambda k: f"[{k!r}]"}
    labels = [name + "".join(step[kind](k) for kind, k in path)
              for name, a in list(zip(names, args)) + [(k, kwargs[k]) for k in keys]
              for path in pytree.leaf_paths(a)]
    leaves, tree = pytree.flatten((list(args), [kwargs[k] for k in keys]))
    dynamic = [i for i, x in enumerate(leaves) if not _is_static(x)]

    def g(*xs):
        full = list(leaves)
        for i, x in zip(dynamic, xs):
            full[i] = x
        positional, by_name = pytree.unflatten(tree, full)
        return f(*positional, **dict(zip(keys, by_name)))
    g.__name__ = g.__qualname__ = getattr(f, "__name__", "f")
    return g, [leaves[i] for i in dynamic], [labels[i] for i in dynamic]


# ---------------------------------------------------------------- the entry

def _one_output(result) -> np.ndarray:
    """``f``'s result as an array, or an error saying why it cannot be checked (never a
    check that compares nothing and passes)."""
    must = "gradc.check: f must return one floating-point array or number"
    if result is None:
        raise ArgumentError(with_location(f"{must}, it returned None: nothing to check"))
    if isinstance(result, (tuple, list, dict)):
        raise ArgumentError(with_location(
            f"{must}, it returned a {type(result).__name__}: check one output at a time "
            "(gradc.check(lambda *a: f(*a)[0], *args)), or use "
            "gradc.testing.check_grads, which takes pytrees of outputs"))
    if type(result).__module__.startswith("scipy.sparse"):
        raise ArgumentError(with_location(
            f"{must}, it returned a {type(result).__name__} (a sparse Jacobian or "
            "Hessian, gradc.jacobian/hessian(..., sparse=True), which gradc does not "
            "differentiate): check the function itself, or its dense gradc.jacobian"))
    out = np.asarray(result)
    if out.dtype.kind != "f":
        raise ArgumentError(with_location(
            f"{must}, got {type(result).__name__} of dtype {out.dtype} and shape "
            f"{out.shape}"))
    return out



def _describe(name, a):
    a = np.asarray(a)
    return f"{name}: {a.dtype.name}{list(a.shape)}" if a.ndim else f"{name}: {a.dtype.name}"


_OPTIONS = ("against", "modes", "targets", "rtol", "atol")


def _check_keywords(f, kwargs):
    """Keyword arguments that are not ``check``'s options go to ``f``: one that ``f``
    does not take is most likely a misspelled option (``target=``, ``mode=``)."""
    import difflib
    import inspect
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(key, _OPTIONS, n=1)
            hint = f"; did you mean gradc.check's option {close[0]}=?" if close else ""
            raise ArgumentError(with_location(
                f"gradc.check: {getattr(f, '__name__', 'the function')} has no parameter "
                f"{key!r} (keyword arguments other than {', '.join(_OPTIONS)} are passed "
                f"to the function){hint}"))


def check(f, *args, against=("sympy", "fd"), modes=("rev", "fwd"), targets=("numpy", "cpu"),
          rtol=None, atol=None, **kwargs) -> CheckReport:
    """Compare gradc's derivatives of ``f`` at ``args`` (and keyword arguments
    ``kwargs``) with SymPy's and with finite differences (see the module docstring).
    ``f`` takes NumPy arrays, numbers or pytrees of them (tuples, lists, dicts) and
    returns one floating-point array or scalar; each floating-point leaf is checked on
    its own rows.  ``rtol``/``atol`` override the per-reference tolerances."""
    from .symbolic import _names
    # (one name alone is a tuple of one: tuple("rev") would be ('r', 'e', 'v'))
    against, modes, targets = ((x,) if isinstance(x, str) else tuple(x)
                               for x in (against, modes, targets))
    for name, given, allowed in (("against", against, ("sympy", "fd")),
                                 ("modes", modes, ("rev", "fwd")),
                                 ("targets", targets, ("numpy", "cpu", "parallel", "cuda"))):
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            raise ArgumentError(with_location(
                f"gradc.check: {name} must be some of {allowed}, got {given}"))
    if not callable(f):
        raise ArgumentError(with_location(
            f"gradc.check expects a function, got a {type(f).__name__}"))
    _check_keywords(f, kwargs)
    check_function(f, "gradc.check: the function", tuple(args), kwargs)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and (isinstance(tol, bool) or not isinstance(
                tol, (int, float, np.integer, np.floating)) or not tol >= 0):
            raise ArgumentError(with_location(
                f"gradc.check: {name} is a number >= 0 (or None for the per-reference "
                f"default), got {tol!r}"))
    from . import pytree
    for a in pytree.flatten((list(args), kwargs))[0]:
        if not isinstance(a, (float, int, np.ndarray, np.generic)):
            raise ArgumentError(with_location(
                f"gradc.check takes NumPy arrays and numbers (or tuples, lists and dicts "
                f"of them) as arguments, got a {type(a).__name__}"))
    name = getattr(f, "__qualname__", repr(f))
    if kwargs or not all(_is_leaf(a) for a in args):
        f, args, names = flat_call(f, args, kwargs)     # (a function of the leaves)
    else:
        names = _names(f, len(args))
    out = _one_output(f(*args))
    wrt = [i for i, a in enumerate(args) if np.asarray(a).dtype.kind == "f"]
    if not wrt:
        raise ArgumentError(with_location(
            "gradc.check: no floating-point argument to differentiate with respect to"))
    report = CheckReport(name)

    refs = {}                          # (reference, i) -> (name, J, mask) or a reason
    if "sympy" in against:
        size = out.size * sum(np.size(args[i]) for i in wrt)
        if size > SYMPY_MAX:
            reason = f"{size} derivative entries (more than {SYMPY_MAX})"
            refs.update({("sympy", i): reason for i in wrt})
        else:
            try:
                Js = _sympy_jacobians(f, args, wrt, out.shape)
                for i, J in zip(wrt, Js):       # (a reason skips that argument's rows)
                    refs[("sympy", i)] = J if isinstance(J, str) else ("sympy", J, None)
            except Exception as e:      # noqa: BLE001  (no expression: every row skipped)
                reason = _failure(e)
                refs.update({("sympy", i): reason for i in wrt})
    if "fd" in against:
        for i in wrt:
            refs[("fd", i)] = _fd(f, args, i, out.shape)

    from .prims.custom import NoForwardMode
    for mode in modes:
        for target in targets:
            try:
                got = _jacobians(f, args, wrt, mode, target)
            except NoForwardMode as e:      # a custom_vjp rule with reverse mode only
                note = f"no forward mode for {e.who}"
                report.rows += [Row(_describe(names[i], args[i]), mode, target, ref,
                                    note=note) for i in wrt for ref in against]
                continue
            for i, J in zip(wrt, got):
                label = _describe(names[i], args[i])
                f32 = np.asarray(args[i]).dtype == np.float32
                for ref in against:
                    r = refs[(ref, i)]
                    if isinstance(r, str):
                        report.rows.append(Row(label, mode, target, ref, note=r))
                        continue
                    rname, R, mask = r
                    rt, at = FLOAT32 if f32 else TOLERANCES[rname]
                    rt, at = rtol if rtol is not None else rt, atol if atol is not None else at
                    shown = "fd: " + rname if ref == "fd" else rname
                    if J.shape != R.shape:          # (never broadcast: that hides a bug)
                        report.rows.append(Row(label, mode, target, shown, rtol=rt, atol=at,
                                               ok=False, note=f"gradc's Jacobian has shape "
                                               f"{J.shape}, the reference {R.shape}"))
                        continue
                    G = J
                    if mask is not None and not mask.all():
                        G, R = G[..., mask], R[..., mask]
                    if not R.size:                  # (nothing to compare is no pass)
                        report.rows.append(Row(label, mode, target, shown, note=(
                            f"nothing to compare: the Jacobian {R.shape} is empty")))
                        continue
                    err = float(np.max(np.abs(G - R)))
                    scale = float(np.max(np.abs(R)))
                    ok = bool(np.isfinite(err) and err <= at + rt * scale)
                    report.rows.append(Row(label, mode, target, shown, err,
                                           err / scale if scale > 0 else err, rt, at, ok))
    return report
