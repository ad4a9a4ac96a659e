"""The bridge to SymPy: a traced Graph evaluated on symbols.

``gradc.to_sympy(f)(*args)`` traces ``f`` at ``args`` (for their shapes) and runs the
Graph with SymPy expressions in place of numbers: a scalar argument becomes one real
symbol named after its parameter (``a``), an array argument one symbol per element
(``x_0, x_1, ...``; ``W_0_1`` for ``W[0, 1]``).  The result has the structure ``f``
returns, with one expression per scalar and a ``sympy.Array`` per array: a tuple, list
or dict of them as ``f`` gives them, ``(grad, aux)`` for ``gradc.grad(g,
has_aux=True)``.  ``f`` may be a gradc transformation (``gradc.grad(g)``): its
derivative Graph is evaluated, so its expressions can be compared with ``sympy.diff``.

How each primitive maps: the elementwise ones to SymPy functions (``expm1(x)`` is
``exp(x) - 1``, ``max`` is ``Max``, ``select`` a ``Piecewise``); structural ones
(reshape, transpose, slices, pads, concatenation, broadcasts, static indexing, sums,
``einsum``) run their NumPy implementation on object arrays of expressions; ``solve``
and ``det`` use SymPy's matrices; a ``scan`` is unrolled, and so is a ``while_loop``
whose condition reads no value of the inputs' symbols, or a ``cond`` whose condition
is decided.  A primitive with no closed
form (a decomposition, a solver's iterations whose count depends on the inputs) raises
``UnsupportedError`` naming it.  Literal floats become exact rationals of their decimal
form (``0.1`` is ``1/10``), except the floats of a few constants (``π``, ``e``,
``log 2``, ``log 10``, ``√2``, and simple multiples and reciprocals), which become them.
"""
from __future__ import annotations

import functools
import inspect
import math

import numpy as np

from .errors import ArgumentError, UnsupportedError, with_location
from .ir import Graph, Lit

MAX_ELEMENTS = 4096      # symbols per call (SymPy is slow beyond small problems)
MAX_STEPS = 10_000       # steps of an unrolled loop

__all__ = ["to_sympy", "symbols_for", "evaluate"]


def _sympy():
    try:
        import sympy
    except ImportError:           # pragma: no cover - sympy is a dependency
        raise UnsupportedError("gradc.to_sympy needs SymPy (pip install sympy)") from None
    return sympy


# ---------------------------------------------------------------- numbers

def number(value):
    """A NumPy scalar as an exact SymPy number."""
    sp = _sympy()
    arr = np.asarray(value)
    v = arr.item()
    if arr.dtype == np.float32 and math.isfinite(v) and v != int(v):
        return sp.Rational(str(np.float32(v)))       # the float32's shortest decimal
    if isinstance(v, (bool, np.bool_)):
        return sp.true if v else sp.false
    if isinstance(v, int):
        return sp.Integer(v)
    if isinstance(v, complex):
        return number(v.real) + sp.I * number(v.imag)
    if math.isnan(v):
        return sp.nan
    if math.isinf(v):
        return sp.oo if v > 0 else -sp.oo
    if v == int(v) and abs(v) < 2 ** 53:
        return sp.Integer(int(v))
    for const in _constants():
        c = float(const)
        for k in (1, -1, 2, -2, sp.Rational(1, 2), -sp.Rational(1, 2)):
            if v == float(k * c):
                return k * const
            if v == float(k / c):
                return k / const
    return sp.Rational(repr(float(v)))


@functools.lru_cache(maxsize=None)
def _constants():
    """Constants a literal may be the float of (π, e, log 2, log 10, √2, √π, ...)."""
    sp = _sympy()
    return (sp.pi, sp.E, sp.log(2), sp.log(10), sp.sqrt(2), sp.sqrt(3), sp.sqrt(sp.pi),
            sp.sqrt(2 * sp.pi), sp.pi / 4)


def _obj(x):
    """An object array of expressions (rank 0 included)."""
    if isinstance(x, np.ndarray) and x.dtype == object:
        return x
    if isinstance(x, np.ndarray):
        out = np.empty(x.shape, object)
        for i in np.ndindex(x.shape):
            out[i] = number(x[i])
        return out
    out = np.empty((), object)
    out[()] = x
    return out


# ---------------------------------------------------------------- primitives

@functools.lru_cache(maxsize=None)
def _table():
    """Elementwise primitive name -> the SymPy function of its operands."""
    sp = _sympy()

    def cbrt(x):
        return sp.real_root(x, 3) if not x.is_nonnegative else sp.cbrt(x)

    def select(p, a, b):
        if p is sp.true or p is True:
            return a
        if p is sp.false or p is False:
            return b
        return sp.Piecewise((a, p), (b, True))

    def lgamma(x):          # SciPy's gammaln: log |Γ(x)|, real for negative x too
        return sp.log(sp.Abs(sp.gamma(x)))

    def trunc(x):
        return sp.Piecewise((sp.floor(x), x >= 0), (sp.ceiling(x), True))

    def rint(x):            # NumPy rounds half to even
        return sp.Piecewise((2 * sp.floor(x / 2 + sp.Rational(1, 4)),
                             sp.Eq(x - sp.floor(x), sp.Rational(1, 2))),
                            (sp.floor(x + sp.Rational(1, 2)), True))

    return {
        "neg": lambda x: -x, "add": lambda x, y: x + y, "sub": lambda x, y: x - y,
        "mul": lambda x, y: x * y, "div": lambda x, y: x / y, "pow": lambda x, y: x ** y,
        "max": sp.Max, "min": sp.Min, "atan2": sp.atan2, "rem": sp.Mod,
        "exp": sp.exp, "expm1": lambda x: sp.exp(x) - 1, "log": sp.log,
        "log1p": lambda x: sp.log(1 + x), "log2": lambda x: sp.log(x, 2),
        "log10": lambda x: sp.log(x, 10), "exp2": lambda x: 2 ** x, "sqrt": sp.sqrt, "cbrt": cbrt,
        "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "asin": sp.asin, "acos": sp.acos,
        "atan": sp.atan, "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh,
        "asinh": sp.asinh, "acosh": sp.acosh, "atanh": sp.atanh, "abs": sp.Abs,
        "sign": sp.sign, "floor": sp.floor, "ceil": sp.ceiling, "trunc": trunc, "round": rint,
        "lt": sp.Lt, "le": sp.Le, "gt": sp.Gt, "ge": sp.Ge, "eq": sp.Eq, "ne": sp.Ne,
        "and": sp.And, "or": sp.Or, "xor": sp.Xor, "not": sp.Not,
        "isnan": lambda x: sp.false, "isfinite": lambda x: sp.true,
        "select": select, "stop_gradient": lambda x: x,
        "erf": sp.erf, "erfc": sp.erfc, "gamma": sp.gamma, "lgamma": lgamma,
        "digamma": sp.digamma, "polygamma": sp.polygamma, "erfinv": sp.erfinv,
        "ndtri": lambda p: sp.sqrt(2) * sp.erfinv(2 * p - 1),
    }


def _elementwise(name, args):
    fn = np.frompyfunc(_table()[name], len(args), 1)
    return _obj(fn(*args))


# primitives whose NumPy implementation works on object arrays as it is
_STRUCTURAL = {"reshape", "broadcast_in_dim", "transpose", "concatenate", "slice", "pad",
               "reduce_sum", "reduce_prod", "cumsum"}


def _concrete(x, what):
    """An index array's numbers (indices must not depend on the inputs)."""
    sp = _sympy()
    try:
        return np.vectorize(lambda e: int(e) if isinstance(e, (int, np.integer))
                            else int(sp.Integer(e)), otypes=[np.int64])(x)
    except (TypeError, ValueError):
        raise UnsupportedError(with_location(
            f"to_sympy: {what} with indices that depend on the inputs has no closed form"
        )) from None


def _indicator(e):
    """A boolean as 1 or 0."""
    sp = _sympy()
    if e in (True, sp.true):
        return sp.Integer(1)
    if e in (False, sp.false):
        return sp.Integer(0)
    return sp.Piecewise((1, e), (0, True))


def _reduce_extreme(x, axes, fn):
    x = _obj(x)
    axes = tuple(axes)
    moved = np.moveaxis(x, axes, range(x.ndim - len(axes), x.ndim)) if axes else x
    lead = moved.shape[:x.ndim - len(axes)]
    flat = moved.reshape(lead + (-1,))
    out = np.empty(lead, object)
    for i in np.ndindex(lead):
        out[i] = fn(*flat[i])
    return out


def _truth(v):
    """True/False when ``v`` is decided, else None."""
    sp = _sympy()
    v = v[()] if isinstance(v, np.ndarray) else v
    if v in (True, sp.true) or (isinstance(v, (int, np.integer)) and v):
        return True
    if v in (False, sp.false) or (isinstance(v, (int, np.integer)) and not v):
        return False
    if isinstance(v, sp.Basic) and v.is_number:
        return bool(v != 0)
    return None


def _has_symbols(values) -> bool:
    """Whether any of ``values`` (expressions, or object arrays of them) has a symbol."""
    for v in values:
        for e in (v.flat if isinstance(v, np.ndarray) else (v,)):
            if getattr(e, "free_symbols", None):
                return True
    return False


def _apply(eqn, ins):
    name = eqn.prim.name
    p = eqn.params
    sp = _sympy()
    if name in _table():
        return [_elementwise(name, ins)]
    if name == "convert_element_type":
        dt = np.dtype(p.get("new_dtype", p.get("dtype", np.float64)))
        if np.dtype(eqn.inputs[0].dtype) == np.bool_ and dt.kind != "b":
            return [_obj(np.frompyfunc(_indicator, 1, 1)(ins[0]))]
        if dt.kind in "fc":
            return [ins[0]]
        if dt.kind == "b":
            return [_elementwise("ne", [ins[0], _obj(sp.Integer(0))])]
        return [_obj(np.vectorize(lambda e: sp.Integer(int(e)) if getattr(e, "is_number", True)
                                  else sp.Piecewise((sp.floor(e), e >= 0),
                                                    (sp.ceiling(e), True)),
                                  otypes=[object])(ins[0]))]
    if name in _STRUCTURAL:
        return [_obj(eqn.prim.impl(*ins, **p))]
    if name == "gather":
        x, *idx = ins
        return [_obj(eqn.prim.impl(x, *[_concrete(i, "indexing") for i in idx], **p))]
    if name == "index_set":
        x, v, *idx = ins
        v = v[()] if v.ndim == 0 else v            # (an element, not a 0-d array in it)
        return [_obj(eqn.prim.impl(x, v, *[_concrete(i, "indexing") for i in idx], **p))]
    if name == "scatter_add":
        v, *idx = ins
        return [_obj(eqn.prim.impl(v, *[_concrete(i, "indexing") for i in idx], **p))]
    if name == "einsum":
        return [_obj(np.einsum(p["spec"], *ins, optimize=False))]
    if name in ("reduce_max", "reduce_min"):
        return [_reduce_extreme(ins[0], p["axes"], sp.Max if name == "reduce_max" else sp.Min)]
    if name == "solve":
        a, b = ins
        A = sp.Matrix(a.tolist())
        B = sp.Matrix(b.reshape(b.shape[0], -1).tolist())
        return [_obj(np.array(A.LUsolve(B).tolist(), object).reshape(b.shape))]
    if name == "cofactor":
        return [_obj(np.array(sp.Matrix(ins[0].tolist()).adjugate().T.tolist(), object))]
    if name in ("det", "slogdet"):
        det = sp.Matrix(ins[0].tolist()).det()
        if name == "det":
            return [_obj(det)]
        return [_obj(sp.sign(det)), _obj(sp.log(sp.Abs(det)))]
    if name in ("report", "guard"):     # (a guard: the branch the trace took, which
        return []                        # holds at the values it was traced at)
    if name == "scan":
        return _scan(eqn, ins)
    if name == "while_loop":
        return _while(eqn, ins)
    if name == "cond":
        return _cond(eqn, ins)
    if name == "barrier":
        return list(ins[:p["n"]])
    if name in ("custom_jvp_call", "custom_vjp_call", "checkpoint"):
        return evaluate(p["fun"], ins)      # the function itself (its rule is a derivative's)
    raise UnsupportedError(with_location(      # (the line that made it, else the call's)
        f"to_sympy: primitive {name!r} has no SymPy form", eqn.source or None))


def _scan(eqn, ins):
    p = eqn.params
    n_consts, n_carry, length = p["n_consts"], p["n_carry"], p["length"]
    consts, carry, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
    steps = range(length - 1, -1, -1) if p["reverse"] else range(length)
    ys = []
    for t in steps:
        out = evaluate(p["body"], consts + list(carry) + [_obj(x[t]) for x in xs])
        carry, y = out[:n_carry], out[n_carry:]
        ys.append(y)
    if p["reverse"]:
        ys.reverse()
    n_ys = len(eqn.outputs) - n_carry
    stacked = [_obj(np.stack([y[k] for y in ys])) if ys else
               np.empty(tuple(eqn.outputs[n_carry + k].shape), object)
               for k in range(n_ys)]
    return list(carry) + stacked


def _while(eqn, ins):
    p = eqn.params
    n_cond, n_body = p["n_cond"], p["n_body"]
    cond, body = p["branches"]
    cc, bc, carry = ins[:n_cond], ins[n_cond:n_cond + n_body], list(ins[n_cond + n_body:])
    read = {id(x) for e in cond.eqns for x in e.inputs} | {id(x) for x in cond.outputs}
    for _ in range(MAX_STEPS):
        # (a condition reading a value of the inputs' symbols: even where SymPy decides
        # it, under the symbols' assumptions, the trip count is theirs: an adaptive
        # solver's steps unrolled symbolically grew without end)
        go = None if _has_symbols([v for x, v in zip(cond.inputs, cc + carry)
                                   if id(x) in read]) else _truth(evaluate(cond, cc + carry)[0])
        if go is None:
            raise UnsupportedError(with_location(
                "to_sympy: a while_loop whose condition depends on the inputs has no closed "
                "form" + (f"\n  at {eqn.source}" if eqn.source else "")))
        if not go:
            return carry
        carry = evaluate(body, bc + carry)
    raise UnsupportedError(with_location(
        f"to_sympy: a while_loop ran more than {MAX_STEPS} steps"))


def _cond(eqn, ins):
    sp = _sympy()
    false, true = eqn.params["branches"]
    pred, args = ins[0], list(ins[1:])
    decided = _truth(pred)
    if decided is not None:
        return evaluate(true if decided else false, args)
    t, f = evaluate(true, args), evaluate(false, args)
    c = pred[()]
    return [_obj(np.frompyfunc(lambda a, b: sp.Piecewise((a, c), (b, True)), 2, 1)(x, y))
            for x, y in zip(t, f)]


def evaluate(graph: Graph, args) -> list:
    """Run ``graph`` on object arrays of SymPy expressions; returns object arrays."""
    env = dict(zip(graph.inputs, (_obj(a) for a in args)))

    def read(atom):
        return _obj(atom.value) if isinstance(atom, Lit) else env[atom]

    for eqn in graph.eqns:
        out = _apply(eqn, [read(a) for a in eqn.inputs])
        env.update(zip(eqn.outputs, out))
    return [read(a) for a in graph.outputs]


# ---------------------------------------------------------------- the user's entry

def _only_star_args(fun) -> bool:
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return False
    return [q.kind for q in params] == [inspect.Parameter.VAR_POSITIONAL]


def users_function(fun):
    """The user's function under gradc's wrappers, whose parameters the arguments fill:
    a transformation's ``fun`` (``grad``, ``jit``, ``vmap``, a sparse Jacobian), and the
    function that ``jacfwd``/``jacrev``/``hessian``/``jacobian`` wrap in a ``jac(*args)``
    of their own."""
    from .api import _reads
    from .errors import _in_gradc
    seen = set()
    while id(fun) not in seen:
        seen.add(id(fun))
        inner = getattr(fun, "fun", None)
        if callable(inner):
            fun = inner
            continue
        code = getattr(fun, "__code__", None)
        if code is not None and _in_gradc(code.co_filename) and _only_star_args(fun):
            # (the function it wraps: its closure's ``fun``, else the first function it
            # reads, as ``jacfwd(f, argnums=(0, 1))`` reads its parts)
            cells = dict(zip(code.co_freevars, fun.__closure__ or ()))
            found = cells["fun"].cell_contents if "fun" in cells else next(
                (v for _, _, v in _reads(fun) if callable(v) and not isinstance(v, type)),
                None)
            if found is not None:
                fun = found
                continue
        break
    return fun


def _names(fun, count):
    """Parameter names for ``count`` inputs (``x0, x1, ...`` when they do not fit)."""
    target = users_function(fun)
    try:
        params = [q.name for q in inspect.signature(target).parameters.values()
                  if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"x{i}" for i in range(count)]


def symbols_for(name, shape):
    """The symbols of one input: a real symbol (rank 0) or an object array of them."""
    sp = _sympy()
    if not shape:
        return sp.Symbol(name, real=True)
    out = np.empty(shape, object)
    for i in np.ndindex(*shape):
        out[i] = sp.Symbol(f"{name}_{'_'.join(map(str, i))}", real=True)
    return out


def _transformation(f):
    """``f`` as a gradc transformation: itself, or ``jit(f)`` on the interpreter for a
    plain function (its Graph is the traced one; ``_finish`` gives the output's
    structure)."""
    from . import api
    from .transformed import Transformed
    if isinstance(f, Transformed):
        return f
    if callable(f):
        return api.Evaluate(f, target="numpy")
    raise ArgumentError(with_location(
        f"gradc.to_sympy expects a function, got a {type(f).__name__}"))


def _specialised(f, args, kwargs=None):
    """(transformation, its specialisation at ``args``, the state ``_finish`` needs,
    the Graph's input names)."""
    kwargs = kwargs or {}
    tf = _transformation(f)
    key, build, _, state = tf._prepare(args, kwargs)
    spec = tf._cache.find(key, build)
    return tf, spec, state, _dynamic_names(f, args, kwargs, len(spec.graph.inputs))


def _graph_and_names(f, args, kwargs=None):
    _, spec, _, names = _specialised(f, args, kwargs)
    return spec.graph, names


def _dynamic_names(f, args, kwargs, count):
    """The parameter names of the traced arguments among ``args`` and ``kwargs`` (after
    the positional ones, by name, as gradc traces them; static ints are no inputs of the
    Graph: ``f(n, x)`` names its inputs ``x``, not ``n``)."""
    from .api import _is_static
    names = _names(f, len(args))
    if len(names) != len(args):
        return _names(f, count)
    import re

    from . import pytree
    names += sorted(kwargs)
    values = list(args) + [kwargs[k] for k in sorted(kwargs)]
    # (a pytree's leaves after their place: params["W"] -> params_W, pair[1] -> pair_1)
    traced, shapes = [], []
    for n, a in zip(names, values):
        for leaf, path in zip(pytree.flatten(a)[0], pytree.leaf_paths(a)):
            if not _is_static(leaf):
                traced.append(n + "".join("_" + re.sub(r"\W", "_", str(k)) for _, k in path))
                shapes.append(np.shape(leaf))
    # (every symbol a name of its own: p["a"][0] and p["a_0"] would both be p_a_0, an
    # array x's x_0 a parameter x_0; then x0, x1, ..., which cannot meet)
    symbols = [n + "".join(f"_{i}" for i in index) for n, shape in zip(traced, shapes)
               for index in np.ndindex(*shape)]
    if len(traced) != count or len(set(symbols)) != len(symbols):
        return _names(f, count) if len(traced) != count else [f"x{i}" for i in range(count)]
    return traced


def _dynamic_leaves(args):
    """The argument leaves that are graph inputs (arrays and floats; Python ints and
    bools are static)."""
    from . import pytree
    from .api import _is_static
    leaves, _ = pytree.flatten(list(args))
    return [x for x in leaves if not _is_static(x)]


def _as_user(x):
    sp = _sympy()
    x = _obj(x)
    if x.ndim == 0:
        return x[()]
    return sp.Array(x.tolist())


def _as_result(x):
    """A result leaf as the user sees it: an expression, or a ``sympy.Array``."""
    sp = _sympy()
    if isinstance(x, np.ndarray) and x.dtype == object:
        return _as_user(x)
    if isinstance(x, np.ndarray):
        return _as_user(_obj(x))
    return x if isinstance(x, sp.Basic) else number(x)


def to_sympy(f):
    """``to_sympy(f)(*args)``: the SymPy expressions of ``f``'s results at ``args``'
    shapes, in the structure ``f`` returns them (see the module docstring);
    ``to_sympy(f).symbols(*args)`` the symbols used for each input."""
    from .sparsity import SparseJacobian
    if isinstance(f, SparseJacobian):
        return _sparse_to_sympy(f)

    def convert(*args, **kwargs):
        from . import pytree
        tf, spec, state, names = _specialised(f, args, kwargs)
        graph = spec.graph
        size = sum(int(np.prod(v.shape)) for v in graph.inputs)
        if size > MAX_ELEMENTS:
            raise ArgumentError(with_location(
                f"gradc.to_sympy: the inputs have {size} elements; SymPy is practical up to "
                f"{MAX_ELEMENTS} (one symbol per element)"))
        syms = [symbols_for(n, tuple(v.shape)) for n, v in zip(names, graph.inputs)]
        values = _dynamic_leaves(list(args) + [kwargs[k] for k in sorted(kwargs)])
        if len(values) == len(graph.inputs):      # integer inputs (indices) keep their values
            syms = [s if np.dtype(v.dtype).kind in "fc" else np.asarray(x)
                    for s, v, x in zip(syms, graph.inputs, values)]
        # (the transformation's own _finish puts the results in the structure it
        # returns: has_aux's pair, a dict, a tuple of gradients, vmap's axes)
        out = tf._finish(spec, evaluate(graph, syms), state)
        return pytree.tree_map(_as_result, out)

    def symbols(*args, **kwargs):
        graph, names = _graph_and_names(f, args, kwargs)
        return tuple(symbols_for(n, tuple(v.shape)) for n, v in zip(names, graph.inputs))

    convert.symbols = symbols
    convert.__name__ = f"to_sympy({getattr(f, '__name__', 'f')})"
    return convert


def _sparse_to_sympy(sj):
    """``to_sympy`` of ``gradc.jacobian(f, sparse=True)`` (or ``hessian``): a
    ``sympy.SparseMatrix`` shaped like the scipy matrix it returns, (outputs, inputs)
    flattened, whose entries are the expressions of the compressed products it runs
    (one JVP or HVP per colour of the pattern's columns), at the pattern's places."""
    sp = _sympy()

    def products(args, kwargs):
        if kwargs:
            raise ArgumentError(with_location(
                "gradc.to_sympy: a sparse Jacobian takes its arguments positionally"))
        fn, (seeds, *rest) = sj.compressed(*args)

        def compressed(*xs):            # (the seeds are constants, not symbols)
            return fn(seeds, *xs)
        compressed.__wrapped__ = users_function(sj)         # (its parameters' names)
        return compressed

    def convert(*args, **kwargs):
        col = sj.coloring(*args)
        values = to_sympy(products(args, kwargs))(*args)    # (colours, outputs)
        coo = col.pattern.tocoo()
        m, n = col.pattern.shape
        return sp.SparseMatrix(m, n, {(int(r), int(c)): values[int(col.colors[c]), int(r)]
                                      for r, c in zip(coo.row, coo.col)})

    def symbols(*args, **kwargs):
        return to_sympy(products(args, kwargs)).symbols(*args)

    convert.symbols = symbols
    convert.__name__ = f"to_sympy({getattr(sj.fun, '__name__', 'f')})"
    return convert
