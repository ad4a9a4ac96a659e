"""Lower a Graph to readable Python source for Numba's nopython mode.

Conventions of the generated code
---------------------------------
* One statement (rarely a few) per equation, with the equation as ``pretty`` prints it
  (and the user's source line, where known and different from the previous equation's)
  in a comment above it.  Variables keep the
  printer's names (``a``, ``b``, ...); a name that is a Python keyword or would shadow
  a name the code uses (``np``) gets a trailing underscore.
* A rank-0 value is a NumPy *scalar* of its dtype, never a 0-d array (Numba supports
  0-d arrays poorly); every other value is an ndarray, possibly a strided view.
  Generated code never writes into an array it does not own: one it allocated, or a
  loop carry its driver copied for it (``inplace``: functional updates ``index_set``
  write into their operand when nothing reads it afterwards).
* Scalar literals are written inline in their dtype (``2.0`` for f64,
  ``np.float32(2.0)`` for f32); array literals become trailing parameters ``_c0, _c1,
  ...`` that the caller passes (``Lowered.consts``), so large constants are not frozen
  into the compiled module.
* Lowering is the table ``TEMPLATES`` (primitive -> expression, ``{0}``, ``{1}`` the
  operands) with functions in ``HANDLERS`` for the primitives whose code depends on
  their params or on ranks.  Helpers for what Numba lacks live in
  ``gradc.codegen.kernels`` (imported as ``_k``); indexing code is generated per
  equation as a small jitted function above the main one.
"""
from __future__ import annotations

import ast
import builtins
import keyword
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import UnsupportedError, with_location
from ..ir import Graph, Lit, Var, pretty, pretty_parts
from ..passes.fuse import numpy_ufunc_call
from ..prims.conv import is_plain
from ..prims.conv import options as conv_options
from . import control, convgen, inplace, memplan
from .indexing import index_function

# ---------------------------------------------------------------- the template table

# NumPy's float remainder (npy_divmod): C's fmod moved into the divisor's sign, and a
# zero remainder signed as the divisor (Numba's np.mod gives +0.0 for 1.0 % -1.0)
FLOAT_REM = ("({fmod}({{0}}, {{1}}) + {{1}} if ({fmod}({{0}}, {{1}}) != 0 and "
             "(({fmod}({{0}}, {{1}}) < 0) != ({{1}} < 0))) else "
             "{copysign}({fmod}({{0}}, {{1}}), {{1}}))")

TEMPLATES = {
    "neg": "np.negative({0})", "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}",
    "div": "np.true_divide({0}, {1})", "pow": "np.power({0}, {1})",
    "max": "np.maximum({0}, {1})", "min": "np.minimum({0}, {1})",
    "atan2": "np.arctan2({0}, {1})", "fmod": "np.fmod({0}, {1})",
    "rem": FLOAT_REM.format(fmod="np.fmod", copysign="np.copysign"),
    "exp": "np.exp({0})", "expm1": "np.expm1({0})", "log": "np.log({0})",
    "log1p": "np.log1p({0})", "log2": "np.log2({0})", "log10": "np.log10({0})",
    "exp2": "np.exp2({0})", "sqrt": "np.sqrt({0})", "cbrt": "np.cbrt({0})",
    "sin": "np.sin({0})", "cos": "np.cos({0})", "tan": "np.tan({0})",
    "asin": "np.arcsin({0})", "acos": "np.arccos({0})", "atan": "np.arctan({0})",
    "sinh": "np.sinh({0})", "cosh": "np.cosh({0})", "tanh": "np.tanh({0})",
    "asinh": "np.arcsinh({0})", "acosh": "np.arccosh({0})", "atanh": "np.arctanh({0})",
    "abs": "np.abs({0})", "sign": "np.sign({0})", "floor": "np.floor({0})",
    "ceil": "np.ceil({0})", "round": "np.rint({0})", "trunc": "np.trunc({0})",
    "lt": "np.less({0}, {1})", "le": "np.less_equal({0}, {1})",
    "gt": "np.greater({0}, {1})", "ge": "np.greater_equal({0}, {1})",
    "eq": "np.equal({0}, {1})", "ne": "np.not_equal({0}, {1})",
    "and": "np.logical_and({0}, {1})", "or": "np.logical_or({0}, {1})",
    "xor": "np.logical_xor({0}, {1})", "not": "np.logical_not({0})",
    "isnan": "np.isnan({0})", "isfinite": "np.isfinite({0})",
    # special functions (codegen.special: float64, rounded back for float32 below)
    "erf": "_k.erf({0})", "erfc": "_k.erfc({0})", "lgamma": "_k.lgamma({0})",
    "gamma": "_k.gamma({0})",
    "digamma": "_k.digamma({0})", "polygamma": "_k.polygamma({0}, {1})",
    "ndtri": "_k.ndtri({0})", "erfinv": "_k.erfinv({0})",
    "stop_gradient": "{0}",
    # integers (NumPy's edges: Numba's ``x // 0`` is already 0 under error_model="numpy";
    # shifts by 64 or more, or by a negative count, are undefined in LLVM: written out)
    "floordiv": "({0} // {1} if {1} != -1 else ({0} - {0} - {0}))",
    "bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})",
    "bitnot": "(~{0})",
    "shl": "(({0} << {1}) if 0 <= {1} < 64 else ({0} - {0}))",
    "shr": "(({0} >> {1}) if 0 <= {1} < 64 else (({0} >> 63) >> 1))",
}

# integer forms: x86's division traps on INT_MIN % -1, whose NumPy value is 0
SPECIAL = {"erf", "erfc", "gamma", "lgamma", "digamma", "polygamma", "ndtri",   # (in float64)
           "erfinv"}
# NumPy's fmod of integers: truncated, the sign of the dividend, x fmod 0 and INT_MIN
# fmod -1 are 0 (Numba's np.fmod of signed integers is not: fmod(-7, 3) gave 0), from
# Python's floored %
INT_FMOD = ("(((({0} % {1}) - {1}) if (({0} % {1}) != 0 and ((({0} % {1}) < 0) != ({0} < 0)))"
            " else ({0} % {1})) if {1} != 0 and {1} != -1 else ({0} - {0}))")
_INTEGER_TEMPLATES = {"rem": "({0} % {1} if {1} != -1 else ({0} - {0}))",
                      "fmod": INT_FMOD}


def element_template(name: str, dtype) -> str:
    """The template of elementwise primitive ``name`` with a result of ``dtype``."""
    if np.dtype(dtype).kind in "iu" and name in _INTEGER_TEMPLATES:
        return _INTEGER_TEMPLATES[name]
    if np.dtype(dtype) == np.float32 and name in SPECIAL:
        return f"np.float32({TEMPLATES[name]})"
    if np.dtype(dtype).kind == "f" and name == "sign":     # (Numba's sign(-0.0) is -0.0)
        return f"(np.sign({{0}}) + np.{np.dtype(dtype).name}(0.0))"
    if np.dtype(dtype).kind == "f" and name in _FLOAT_CHOICE:
        return _FLOAT_CHOICE[name]
    return TEMPLATES[name]


# NumPy's maximum and minimum of floats: a NaN operand wins, and of equal values the
# second (np.maximum(-0.0, 0.0) is 0.0, np.maximum(0.0, -0.0) is -0.0); Numba's
# np.maximum gives the first, so the compiled code and the interpreter disagreed on
# the sign of a zero (as cudagen.TEMPLATES says it)
_FLOAT_CHOICE = {"max": "({0} if ({0} > {1} or {0} != {0}) else {1})",
                 "min": "({0} if ({0} < {1} or {0} != {0}) else {1})"}


# a float scalar's exp, log, log1p and tanh inside a loop: ``codegen.vecmath``'s, which
# vectorise
SCALAR_TEMPLATES = {"exp": "_k.vexp({0})", "log": "_k.vlog({0})", "log1p": "_k.vlog1p({0})",
                    "tanh": "_k.vtanh({0})"}


def eqn_template(eqn, scalar: bool = False) -> str:
    """``element_template`` of ``eqn``'s primitive and result; ``x ** 0.5`` as a square
    root, as NumPy's ``power`` computes a scalar exponent of 0.5 (``sqrt(-inf)`` is NaN
    and ``sqrt(-0.0)`` is -0.0, where ``pow`` gives inf and 0.0).  ``scalar``: the
    operands are scalars (a loop's elements), where ``SCALAR_TEMPLATES``' functions of floats are
    ``vecmath``'s, which vectorise, rather than libm's."""
    name, dtype = eqn.prim.name, eqn.outputs[0].dtype
    if name == "pow" and isinstance(eqn.inputs[1], Lit) and eqn.inputs[1].ndim == 0 \
            and np.dtype(dtype).kind == "f" and float(eqn.inputs[1].value) == 0.5:
        name = "sqrt"
    if scalar and name in SCALAR_TEMPLATES and np.dtype(dtype) in (np.float32, np.float64) \
            and np.dtype(eqn.inputs[0].dtype) == np.dtype(dtype):
        return SCALAR_TEMPLATES[name]
    return element_template(name, dtype)


_RESERVED = {"np", "numba", "GuardFailure"} | set(dir(builtins))


def dtype_expr(dtype) -> str:
    dtype = np.dtype(dtype)
    return "np.bool_" if dtype == np.bool_ else f"np.{dtype.name}"


def scalar_literal(value, dtype) -> str:
    """A rank-0 constant as a Python expression of exactly ``dtype`` inside Numba."""
    dtype = np.dtype(dtype)
    value = np.asarray(value, dtype).item()
    if dtype == np.bool_:
        return repr(bool(value))
    if dtype.kind == "f":
        text = repr(float(value))
        text = {"inf": "np.inf", "-inf": "-np.inf", "nan": "np.nan"}.get(text, text)
        if dtype == np.float64:
            return f"({text})" if text.startswith("-") else text
        return f"{dtype_expr(dtype)}({text})"
    if dtype == np.int64:
        return f"({value})" if value < 0 else repr(value)
    return f"{dtype_expr(dtype)}({value})"


def narrow(expr: str, dtype) -> str:
    """``expr`` cast back to ``dtype`` when that is an integer narrower than 64 bits:
    Numba computes with those as int64 where NumPy wraps them at their own width, so a
    value kept in a local (a loop's element, a rank-0 result) must wrap where NumPy's
    would (int8 ``100 * 3`` is 44, and ``np.sum`` of int8 products adds the 44s)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and dtype.itemsize < 8:
        return f"{dtype_expr(dtype)}({expr})"
    return expr


def _tuple(values) -> str:
    values = tuple(int(v) for v in values)
    return repr(values)


def _slices(index) -> str:
    parts = []
    for start, stop, step in index:
        text = f"{start}:{'' if stop is None else stop}"
        parts.append(text if step == 1 else f"{text}:{step}")
    return ", ".join(parts)


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


# ---------------------------------------------------------------- lowering state

def _ufunc_objmode(ctx, eqn, a, outs) -> list:
    out = eqn.outputs[0]
    dest = ctx.dest.pop(out, None)
    call = TEMPLATES[eqn.prim.name].format(*a)
    if dest is not None:        # written where the loop keeps it (see body_function)
        return ["with numba.objmode():", f"    {call[:-1]}, out={dest})", f"{outs[0]} = {dest}"]
    ctx.fresh.add(out)          # (the ufunc's own result: memory no other value has)
    kind = f"{np.dtype(out.dtype).name}[{', '.join([':'] * (out.ndim - 1) + ['::1'])}]"
    return [f"with numba.objmode({outs[0]}={kind!r}):",
            f"    {outs[0]} = np.ascontiguousarray({call})"]


# Output buffers smaller than this are allocated by the generated code (Numba's
# allocator), not passed in by the caller (``_Context.out_buffer``)
SMALL_OUT_BYTES = 1 << 16

# From this many multiply-adds on, a matrix product runs on NumPy's BLAS in an
# object-mode block (~2 µs to enter): Numba's np.dot calls SciPy's OpenBLAS, a second
# thread pool that spins against NumPy's when both are used in one process (measured:
# 4.0 ms instead of 1.9 ms for 512x784 @ 784x256 beside NumPy matmuls).
OBJMODE_FLOPS = 1 << 16
# a matrix-vector product of at most this many matrix entries is a loop (kernels.matvec),
# not a BLAS call: 0.08 against 0.19 µs for 16x64, even at 256x256 (4.0 µs, one thread),
# while BLAS's threads win from about 1000x1000 on
SMALL_MATVEC = 1 << 16


@dataclass
class Lowered:
    source: str
    name: str
    inputs: list             # parameter names of the graph inputs
    consts: dict = field(default_factory=dict)   # parameter name -> ndarray (trailing)
    outs: dict = field(default_factory=dict)     # parameter name -> (shape, dtype), last
    shares: dict = field(default_factory=dict)   # out name -> the earlier one whose memory
                                                 # it takes (``memplan.share``)
    ranges: dict = field(default_factory=dict)   # out name -> the equations it is live over


class Symbols:
    """Fresh temporaries and the array constants a generated module reads (shared by
    this lowering and ``cudagen``'s)."""

    def __init__(self):
        self.consts: dict = {}
        self.temps = 0

    def temp(self) -> str:
        self.temps += 1
        return f"_t{self.temps}"

    def const(self, value) -> str:
        """The parameter name of an array constant (passed in by the caller)."""
        for name, known in self.consts.items():
            if known is value:
                return name
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return name


class _Context(Symbols):
    def __init__(self):
        super().__init__()
        self.helpers: list[str] = []   # source of generated helper functions
        self.shared: dict = {}         # canonical source -> the helper of that code
        self.producer: dict = {}  # Var -> the name of the primitive that defines it
        self.outs: dict = {}      # output buffers the caller allocates (with NumPy)
        self.made: dict = {}      # out name -> (index of its equation, Var) (``memplan``)
        self.at = None            # index of the main function's equation being lowered
        self.fresh: set = set()   # Vars a NumPy call allocates (``memplan``)
        self.conv_plan: dict = {}  # see _conv_plan
        self.pool_loops = True     # large fused loops may use the thread pool (_calls_blas)
        self.inner = False         # lowering a loop's body (a function called per step)
        self.dest = {}             # body output Var -> parameter it is written into
        self.parallel = self.fastmath = False
        self.status = None         # a LAPACK call's status (``kernels.lapack_solve``)
        self.inplace = inplace.Plan()  # the updates that write into their operand

    def out_buffer(self, shape, dtype, var=None, passed=False) -> str:
        """A parameter for an array the caller allocates with NumPy and the code fills:
        NumPy's allocator asks the kernel for huge pages, Numba's does not, and a fresh
        80 MB array costs 4x less to fault in that way (under ``SMALL_OUT_BYTES``: an
        ``np.empty`` expression, allocated by the code itself, unless ``passed``: a
        nest run on threads, or by Numba's parallel loops, and an object-mode block
        write into a buffer they are handed).  ``var``: the value it will
        hold (the memory plan, ``memplan``, reads when it is dead; without it, any
        result of the equation may be in it)."""
        if self.inner:      # a loop body's: its destination, or allocated here
            return self.dest.pop(var, None) or f"np.empty({_tuple(shape)}, {dtype_expr(dtype)})"
        if not passed and int(np.prod(shape)) * np.dtype(dtype).itemsize < SMALL_OUT_BYTES:
            # (a small one is allocated here: each parameter costs its np.empty and its
            # unboxing at every call, and Numba compiles a wrapper of every one; an
            # unrolled RK4's gradient had 169 of 32 bytes)
            return f"np.empty({_tuple(shape)}, {dtype_expr(dtype)})"
        name = f"_o{len(self.outs)}"
        self.outs[name] = (tuple(int(n) for n in shape), np.dtype(dtype))
        self.made[name] = (self.at, var)
        return name

    def helper(self, make, share=False) -> str:
        """The name of a new helper function, ``make(name)`` its source.  ``share``:
        an earlier helper whose source is the same but for the names of its locals and
        parameters is returned instead, so Numba compiles that code once (a Python loop
        the trace unrolled makes the same loop nests again and again: ``canonical``)."""
        name = f"_h{len(self.helpers)}"
        source = make(name)
        if share:
            key = canonical(source)
            if key in self.shared:
                return self.shared[key]
            self.shared[key] = name
        self.helpers.append(source)
        return name


def canonical(source: str) -> str:
    """A function's source with its name, comments and formatting dropped and the names
    it binds (parameters, locals) renamed in order of appearance: equal for two
    functions that compute the same from arguments in the same places."""
    tree = ast.parse(source)
    fn = tree.body[0]
    bound = {a.arg for a in fn.args.args} | {
        n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    renamed: dict = {}

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id in bound:
                node.id = renamed.setdefault(node.id, f"v{len(renamed)}")
            return node

        def visit_arg(self, node):
            node.arg = renamed.setdefault(node.arg, f"v{len(renamed)}")
            return node
    fn.name = "_"
    return ast.unparse(Rename().visit(tree))


def _identifier(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) or name in _RESERVED else name


# ---------------------------------------------------------------- handlers (hard cases)

def _convert(ctx, eqn, a, outs):
    (x,), dtype = eqn.inputs, np.dtype(eqn.params["dtype"])
    if dtype == np.bool_:
        return f"{a[0]} != 0"
    if x.ndim == 0:
        return f"{dtype_expr(dtype)}({a[0]})"
    return f"{a[0]}.astype({dtype_expr(dtype)})"


def _select(ctx, eqn, a, outs):
    if eqn.outputs[0].ndim == 0:
        return f"{a[1]} if {a[0]} else {a[2]}"
    return f"np.where({a[0]}, {a[1]}, {a[2]})"


def _reshape(ctx, eqn, a, outs):
    (x,), shape = eqn.inputs, eqn.params["shape"]
    if len(shape) == 0:
        return f"{a[0]}[{', '.join(['0'] * x.ndim)}]"
    if x.ndim == 0:
        return f"_k.full({_tuple(shape)}, {a[0]})"
    return f"_k.contiguous({a[0]}).reshape({_tuple(shape)})"


def _broadcast(ctx, eqn, a, outs):
    (x,), shape, dims = eqn.inputs, eqn.params["shape"], eqn.params["dims"]
    if x.ndim == 0:
        return f"_k.full({_tuple(shape)}, {a[0]})"
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = x.shape[i]
    return f"_k.broadcast({a[0]}, {_tuple(expanded)}, {_tuple(shape)})"


def _transpose(ctx, eqn, a, outs):
    perm = tuple(eqn.params["perm"])
    if perm == tuple(range(len(perm) - 1, -1, -1)):
        # (``.T`` keeps the layout known to Numba: a C array's is an F array, which BLAS
        # calls take as it is; ``.transpose(perm)`` gives an 'A' array they must copy)
        return f"{a[0]}.T"
    return f"_k.transposed({a[0]}, {_tuple(perm)})"       # (see kernels.transposed)


def _concatenate(ctx, eqn, a, outs):
    parts = ", ".join(f"_k.contiguous({x})" for x in a)
    return f"np.concatenate(({parts},), axis={eqn.params['axis']})"


def _slice(ctx, eqn, a, outs):
    return f"{a[0]}[{_slices(eqn.params['index'])}]"


def _pad(ctx, eqn, a, outs):
    out = eqn.outputs[0]
    window = f"{outs[0]}[{_slices(eqn.params['index'])}]"
    return [f"{outs[0]} = np.zeros({_tuple(eqn.params['shape'])}, {dtype_expr(out.dtype)})",
            f"_k.copy_into({window}, {a[0]})" if eqn.inputs[0].ndim else f"{window} = {a[0]}"]


def _rows(x: Var, axes, operand: str) -> str:
    """``operand`` as a C-contiguous (kept, reduced) 2-D array."""
    kept = tuple(i for i in range(x.ndim) if i not in axes)
    perm = kept + tuple(axes)
    shape = (_prod([x.shape[i] for i in kept]), _prod([x.shape[i] for i in axes]))
    return f"_k.regroup({operand}, {_tuple(perm)}, {_tuple(shape)})"


def _over_rows(kernel, axes_of):
    def handler(ctx, eqn, a, outs):
        x, out = eqn.inputs[0], eqn.outputs[0]
        call = f"_k.{kernel}({_rows(x, axes_of(eqn.params), a[0])})"
        return f"{call}[0]" if out.ndim == 0 else f"{call}.reshape({_tuple(out.shape)})"
    return handler


def _cumsum(ctx, eqn, a, outs):
    x, axis, reverse = eqn.inputs[0], eqn.params["axis"], eqn.params["reverse"]
    kept = tuple(i for i in range(x.ndim) if i != axis)
    perm = kept + (axis,)
    moved = tuple(x.shape[i] for i in perm)
    rows = _rows(x, (axis,), a[0])
    if np.dtype(x.dtype) != np.dtype(eqn.outputs[0].dtype):   # (bool, small ints: NumPy's)
        rows = f"{rows}.astype({dtype_expr(eqn.outputs[0].dtype)})"
    call = f"_k.cumsum_rows({rows}, {reverse}).reshape({_tuple(moved)})"
    if perm == tuple(range(x.ndim)):
        return call
    return f"_k.transposed({call}, {_tuple(np.argsort(perm))})"


def _argsort(ctx, eqn, a, outs):
    x, axis = eqn.inputs[0], eqn.params["axis"]
    kept = tuple(i for i in range(x.ndim) if i != axis)
    perm = kept + (axis,)
    call = (f"_k.argsort_rows({_rows(x, (axis,), a[0])})"
            f".reshape({_tuple(x.shape[i] for i in perm)})")
    if perm == tuple(range(x.ndim)):
        return call
    return f"_k.transposed({call}, {_tuple(np.argsort(perm))})"


def _searchsorted(ctx, eqn, a, outs):
    # (Numba's np.searchsorted: NumPy's order, NaNs last; an array or one position)
    return f"np.searchsorted({a[0]}, {a[1]}, side={eqn.params['side']!r})"


def _einsum(ctx, eqn, a, outs):
    # Σ over contracted letters as one batched matmul: A (batch, a-only, contracted) @
    # B (batch, contracted, b-only) -> (batch, a-only, b-only), then to the output order.
    from ..prims.linalg import parse_spec
    sa, sb, so = parse_spec(eqn.params["spec"])
    x, y = eqn.inputs
    size = dict(zip(sa, x.shape)) | dict(zip(sb, y.shape))
    batch = [c for c in so if c in sa and c in sb]
    a_only = [c for c in sa if c not in sb]
    b_only = [c for c in sb if c not in sa]
    contracted = [c for c in sa if c in sb and c not in so]

    def grouped(letters, operand, var, groups):
        shape = tuple(_prod([size[c] for c in g]) for g in groups)
        if var.ndim == 0:
            return f"_k.full({_tuple(shape)}, {operand})"
        perm = [letters.index(c) for g in groups for c in g]
        return f"_k.regroup({operand}, {_tuple(perm)}, {_tuple(shape)})"

    if _matrix_product(sa, sb, so, a_only, b_only, contracted, batch) and \
            np.dtype(x.dtype).kind in "fc" and np.dtype(x.dtype) == np.dtype(y.dtype):
        # a plain matrix product: one BLAS call on (possibly transposed) views; an
        # operand that may be strided (a view, or an input: the caller's ``A[::2]``) is
        # made contiguous first unless BLAS takes it as it is (``_k.blas_operand``: a
        # transposed matrix is F-contiguous; decided by Numba's type, so free for a
        # contiguous one).  Operands of
        # more axes, each a run of its own letters and a run of the contracted ones (in
        # the same order in both: ``zbi,zbj->ij``), are such matrices too, as views
        # (``_k.as_matrix``)
        ops = []
        for t, v, letters, own in zip(a, (x, y), (sa, sb), (a_only, b_only)):
            if v.ndim == 2:
                ops.append(f"_k.blas_operand({t})" if _may_be_strided(ctx, v) else t)
                continue
            first, second = (own, contracted) if letters[0] in own else (contracted, own)
            ops.append(f"_k.as_matrix({t}, {_prod([size[c] for c in first])}, "
                       f"{_prod([size[c] for c in second])})")
        if list(so) == a_only + b_only:         # A (a, k) @ B (k, b)
            lhs = ops[0] if list(sa) == a_only + contracted else f"{ops[0]}.T"
            rhs = ops[1] if list(sb) == contracted + b_only else f"{ops[1]}.T"
        else:                                   # the output is (b, a): B (b, k) @ A (k, a)
            lhs = ops[1] if list(sb) == b_only + contracted else f"{ops[1]}.T"
            rhs = ops[0] if list(sa) == contracted + a_only else f"{ops[0]}.T"
        # (the product is written in the output's order: a C-contiguous result, no copy)
        call = f"_k.small_dot({lhs}, {rhs})"
        out = eqn.outputs[0]
        if out.ndim != 2:
            call += f".reshape({_tuple(out.shape)})"
        if _prod(x.shape) * _prod([size[c] for c in b_only]) < OBJMODE_FLOPS:
            return call
        # a large product goes to NumPy's own BLAS (see OBJMODE_FLOPS), through matmul:
        # np.dot took 0.52-0.66 ms for 1000x10 @ 10x1000 where matmul took 0.40-0.53
        # written into a buffer the caller allocates (from the pool of dropped results:
        # a fresh 8 MB result costs its page faults at every call)
        # (named first: in a loop's body the buffer is an expression, np.empty(...))
        dest = ctx.out_buffer(out.shape, out.dtype, out, passed=True)
        rows, cols = (a_only, b_only) if list(so) == a_only + b_only else (b_only, a_only)
        matrix = outs[0] if out.ndim == 2 else \
            f"{outs[0]}.reshape(({_prod([size[c] for c in rows])}, " \
            f"{_prod([size[c] for c in cols])}))"
        return [f"{outs[0]} = {dest}", "with numba.objmode():",
                f"    np.matmul({lhs}, {rhs}, out={matrix})"]
    if (not batch and len(contracted) == 1 and sorted((x.ndim, y.ndim)) == [1, 2]
            and np.dtype(x.dtype).kind == "f" and np.dtype(x.dtype) == np.dtype(y.dtype)):
        # a matrix-vector product, either way round: one BLAS gemv on the matrix as it
        # is stored (M v, or v M = Mᵀ v); regrouping the matrix would copy it at every
        # call (a transposed matvec in a solver's loop: n² bytes per iteration)
        mat, vec = (0, 1) if x.ndim == 2 else (1, 0)
        letters = (sa, sb)[mat]
        m_op, v_op = (f"_k.blas_operand({a[k]})" if _may_be_strided(ctx, (x, y)[k])
                      else a[k] for k in (mat, vec))
        kernel = "matvec" if _prod((x, y)[mat].shape) <= SMALL_MATVEC else "small_dot"
        if letters.index(contracted[0]) == 1:
            return f"_k.{kernel}({m_op}, {v_op})"
        return f"_k.{kernel}({m_op}.T, {v_op})"
    kernel = "matmul_batched" if np.dtype(x.dtype).kind in "fc" else "matmul_batched_loops"
    call = (f"_k.{kernel}({grouped(sa, a[0], x, (batch, a_only, contracted))}, "
            f"{grouped(sb, a[1], y, (batch, contracted, b_only))})")
    if not so:
        return f"{call}[0, 0, 0]"
    order = batch + a_only + b_only
    call += f".reshape({_tuple(size[c] for c in order)})"
    perm = tuple(order.index(c) for c in so)
    return call if perm == tuple(range(len(so))) else f"_k.transposed({call}, {_tuple(perm)})"


def _may_be_strided(ctx, v) -> bool:
    """Whether operand ``v`` of a BLAS call may reach Numba as a strided array (layout
    'A'): a view, or what the function is handed (an input, a constant).  Numba's
    np.dot copies such an operand anyway, and warns at compile time
    (NumbaPerformanceWarning) where the user cannot act on it."""
    return not isinstance(v, Var) or ctx.producer.get(v, "input") in _VIEWS | {"input"}


def _matrix_product(sa, sb, so, a_only, b_only, contracted, batch) -> bool:
    """Whether einsum ``sa,sb->so`` is one matrix product: no batch letter; each
    operand its own letters and the contracted ones, each a run (``ik,kj``, ``zbi,zbj``),
    the contracted ones in the same order in both; the output one operand's letters
    then the other's."""
    if batch or not (a_only and b_only and contracted):
        return False
    runs_a = (a_only + contracted, contracted + a_only)
    runs_b = ([c for c in contracted] + b_only, b_only + [c for c in contracted])
    return list(sa) in runs_a and list(sb) in runs_b and \
        list(so) in (a_only + b_only, b_only + a_only)


def _batched(operand, var, core):
    """``operand`` of shape (..., *core) as a C-contiguous (batch, *core) array."""
    batch = _prod(var.shape[:var.ndim - core])
    shape = (batch,) + tuple(var.shape[var.ndim - core:])
    return f"_k.regroup({operand}, {_tuple(range(var.ndim))}, {_tuple(shape)})"


def _as(var, expr):
    """``expr`` converted to ``var``'s dtype where Numba's LAPACK wrappers return float64
    (det and slogdet of float32 matrices)."""
    if np.dtype(var.dtype) == np.float64:
        return expr
    if var.ndim == 0:
        return f"{dtype_expr(var.dtype)}({expr})"
    return f"({expr}).astype({dtype_expr(var.dtype)})"


def _solve(ctx, eqn, a, outs):
    m, b = eqn.inputs
    if m.ndim == 2:
        return [f"{outs[0]}, {ctx.status} = _k.lapack_solve(_k.contiguous({a[0]}), "
                f"_k.contiguous({a[1]}))"]
    t = ctx.temp()
    return [f"{t}, {ctx.status} = _k.solve_batched({_batched(a[0], m, 2)}, "
            f"{_batched(a[1], b, 2)})",
            f"{outs[0]} = {t}.reshape({_tuple(b.shape)})"]


def _det(ctx, eqn, a, outs):
    m, t = eqn.inputs[0], ctx.temp()
    if m.ndim == 2:
        return [f"{t}, {ctx.status} = _k.lapack_det(_k.contiguous({a[0]}))",
                f"{outs[0]} = {_as(eqn.outputs[0], t)}"]
    return [f"{t}, {ctx.status} = _k.det_batched({_batched(a[0], m, 2)})",
            f"{outs[0]} = {t}.reshape({_tuple(m.shape[:-2])})"]


def _cofactor(ctx, eqn, a, outs):
    m, t = eqn.inputs[0], ctx.temp()
    return [f"{t}, {ctx.status} = _k.cofactor_batched({_batched(a[0], m, 2)})",
            f"{outs[0]} = {t}.reshape({_tuple(m.shape)})"]


def _slogdet(ctx, eqn, a, outs):
    m = eqn.inputs[0]
    t1, t2 = ctx.temp(), ctx.temp()
    if m.ndim == 2:
        return [f"{t1}, {t2}, {ctx.status} = _k.lapack_slogdet(_k.contiguous({a[0]}))",
                f"{outs[0]} = {_as(eqn.outputs[0], t1)}",
                f"{outs[1]} = {_as(eqn.outputs[1], t2)}"]
    batch = _tuple(m.shape[:-2])
    return [f"{t1}, {t2}, {ctx.status} = _k.slogdet_batched({_batched(a[0], m, 2)})",
            f"{outs[0]} = {t1}.reshape({batch})",
            f"{outs[1]} = {t2}.reshape({batch})"]


def _conv_direct(eqn) -> bool:
    """Whether a conv2d or conv2d_over_batch equation runs as a direct loop nest."""
    image, other, out = eqn.inputs[0], eqn.inputs[1], eqn.outputs[0]
    nn, cc = image.shape[:2]
    if eqn.prim.name == "conv2d_over_batch" and not is_plain(eqn.params):
        return False            # (conv2d_general_kernel_grad)
    if eqn.prim.name == "conv2d" and not is_plain(eqn.params):
        stride, _, groups = conv_options(eqn.params)   # (else conv2d_general)
        oo, cg, kh, kw = other.shape
        return convgen.direct_options(nn, cg, oo, *out.shape[2:], kh, kw, out.dtype,
                                      stride, groups)
    if eqn.prim.name == "conv2d":
        oo, _, kh, kw = other.shape
        ho, wo = out.shape[2:]
    else:
        _, oo, ho, wo = other.shape
        kh, kw = out.shape[2:]
    return convgen.direct(nn, cc, oo, ho, wo, kh, kw, out.dtype)


def _padded_image(name, image, eqn) -> str:
    (top, bottom), (left, right) = eqn.params["padding"]
    return (f"{name} = _k.padded_image(_k.contiguous({image}), {top}, {bottom}, {left}, "
            f"{right})")


def _direct(ctx, fn, items, padded, other, result, out) -> list:
    """A direct-convolution function (``convgen``) over its work items on the thread
    pool, writing into a result array the caller passes (``out_buffer``: NumPy's
    huge pages or the pool's reused blocks, not Numba's allocator).  Not in a loop
    body: there it would be the loop's destination, which ``ravel`` must not copy."""
    buffer = f"np.empty({_tuple(out.shape)}, {dtype_expr(out.dtype)})" if ctx.inner else \
        ctx.out_buffer(out.shape, out.dtype, out, passed=True)
    return [f"{result} = {buffer}",
            "with numba.objmode():",
            f"    _k.on_threads({fn}, {items}, {padded}.ravel(), {other}, {result}.ravel())"]


def _conv2d(ctx, eqn, a, outs):
    (top, bottom), (left, right) = eqn.params["padding"]
    image, kernel, out = eqn.inputs[0], eqn.inputs[1], eqn.outputs[0]
    if not is_plain(eqn.params) and _conv_direct(eqn):     # grouped, stride 1
        stride, dilation, groups = conv_options(eqn.params)
        oo, _, kh, kw = kernel.shape
        padded, flat_kernel = ctx.temp(), ctx.temp()
        fn = ctx.helper(lambda name: convgen.forward_function(
            name, image.shape[0], image.shape[1], image.shape[2] + top + bottom,
            image.shape[3] + left + right, oo, kh, kw, out.dtype, stride, dilation, groups))
        return ([_padded_image(padded, a[0], eqn),
                 f"{flat_kernel} = _k.channels_last({a[1]})"]
                + _direct(ctx, fn, convgen.rows(image.shape[0], out.shape[2]), padded,
                          flat_kernel, outs[0], out))
    if not is_plain(eqn.params):    # strides, dilation, groups: patch matrices per group
        (sh, sw), (dh, dw), groups = conv_options(eqn.params)
        kind = "conv2d_general" if np.dtype(image.dtype).kind in "fc" \
            else "conv2d_general_loops"
        return (f"_k.{kind}(_k.contiguous({a[0]}), _k.contiguous({a[1]}), {top}, {bottom}, "
                f"{left}, {right}, {sh}, {sw}, {dh}, {dw}, {groups})")
    nn, cc, h, w = image.shape
    oo, _, kh, kw = kernel.shape
    ho, wo = out.shape[2:]
    shared = ctx.conv_plan.get(id(eqn))   # kept for the kernel gradient (_conv_plan)
    if _conv_direct(eqn):
        padded = shared or ctx.temp()
        fn = ctx.helper(lambda name: convgen.forward_function(
            name, nn, cc, h + top + bottom, w + left + right, oo, kh, kw, out.dtype))
        flat_kernel = ctx.temp()
        return ([_padded_image(padded, a[0], eqn),
                 f"{flat_kernel} = _k.channels_last({a[1]})"]
                + _direct(ctx, fn, convgen.rows(nn, ho), padded, flat_kernel, outs[0], out))
    if shared is not None:          # the patch matrix is kept for a kernel gradient
        return [f"{shared} = _k.conv2d_cols(_k.contiguous({a[0]}), {kh}, {kw}, {top}, "
                f"{bottom}, {left}, {right})",
                f"{outs[0]} = _k.conv2d_from_cols({shared}, _k.contiguous({a[1]}), {nn}, "
                f"{ho}, {wo})"]
    kind = "conv2d" if np.dtype(image.dtype).kind in "fc" else "conv2d_loops"
    return (f"_k.{kind}(_k.contiguous({a[0]}), _k.contiguous({a[1]}), "
            f"{top}, {bottom}, {left}, {right})")


def _conv2d_dilated_input(ctx, eqn, a, outs):
    """The image gradient of a strided convolution (``passes.conv.dilated_inputs``)."""
    (top, bottom), (left, right) = eqn.params["padding"]
    sh, sw = eqn.params["input_dilation"]
    _, (dh, dw), groups = conv_options(eqn.params)
    return (f"_k.conv2d_dilated_input(_k.contiguous({a[0]}), _k.contiguous({a[1]}), {top}, "
            f"{bottom}, {left}, {right}, {sh}, {sw}, {dh}, {dw}, {groups})")


def _conv2d_over_batch(ctx, eqn, a, outs):
    (top, bottom), (left, right) = eqn.params["padding"]
    image, other, out = eqn.inputs[0], eqn.inputs[1], eqn.outputs[0]
    nn, cc, h, w = image.shape
    _, oo, ho, wo = other.shape
    kh, kw = out.shape[2:]
    if not is_plain(eqn.params):    # strides, dilation, groups: patch matrices per group
        (sh, sw), (dh, dw), groups = conv_options(eqn.params)
        return (f"_k.conv2d_general_kernel_grad(_k.contiguous({a[0]}), "
                f"_k.contiguous({a[1]}), {top}, {bottom}, {left}, {right}, {sh}, {sw}, "
                f"{dh}, {dw}, {groups}, {kh}, {kw})")
    shared = ctx.conv_plan.get(id(eqn))
    lines = []
    if _conv_direct(eqn):
        padded = shared
        if padded is None:
            padded = ctx.temp()
            lines.append(_padded_image(padded, a[0], eqn))
        fn = ctx.helper(lambda name: convgen.kernel_grad_function(
            name, nn, cc, h + top + bottom, w + left + right, oo, kh, kw, out.dtype))
        flat_other = ctx.temp()
        return (lines + [f"{flat_other} = _k.contiguous({a[1]}).ravel()"]
                + _direct(ctx, fn, convgen.items(nn, cc, oo, kh), padded, flat_other, outs[0],
                          out))
    cols = shared
    if cols is None:
        cols = ctx.temp()
        lines.append(f"{cols} = _k.conv2d_cols(_k.contiguous({a[0]}), {kh}, {kw}, {top}, "
                     f"{bottom}, {left}, {right})")
    return lines + [f"{outs[0]} = _k.conv2d_kernel_grad_from_cols({cols}, "
                    f"_k.contiguous({a[1]}), {cc}, {kh}, {kw})"]


def _conv_plan(ctx, graph) -> dict:
    """Convolutions that share their input with the gradient of their kernel
    (``passes.conv``): a ``conv2d_over_batch(I, Ȳ)`` after a ``conv2d(I, K)`` with the
    same padding, K as large as its output, Ȳ of the forward output's shape.  Returns
    ``id(eqn) -> name of the shared array`` for both equations: the padded images when
    both run as direct loop nests (``convgen``), else the patch matrix."""
    forward, plan = {}, {}
    for e in graph.eqns:
        if e.prim.name == "conv2d" and isinstance(e.inputs[0], Var) \
                and np.dtype(e.inputs[0].dtype).kind in "fc" and is_plain(e.params):
            key = (e.inputs[0], e.params["padding"], tuple(e.inputs[1].shape[2:]))
            forward.setdefault(key, e)
        elif e.prim.name == "conv2d_over_batch" and is_plain(e.params):
            image, other = e.inputs
            f = forward.get((image, e.params["padding"], tuple(e.outputs[0].shape[2:])))
            if f is not None and tuple(other.shape) == tuple(f.outputs[0].shape):
                plan[id(e)] = plan.setdefault(id(f), ctx.temp())
    return plan


def _calls_blas(graph) -> bool:
    """Whether a product of the graph runs on NumPy's BLAS (``OBJMODE_FLOPS``).  Its
    threads spin for ~0.1 s after each product, on the cores that gradc's thread pool
    would use: W3's gradient took 6.8-8.1 ms with two of its products on the pool beside
    BLAS calls, 4.7 ms with all of them on BLAS.  Such graphs keep their fused loops on
    one thread (``loops.POOL_MIN``)."""
    from ..prims.linalg import parse_spec
    for e in graph.eqns:
        if e.prim.name in ("conv2d", "conv2d_over_batch") and not _conv_direct(e) \
                or e.prim.name == "conv2d_dilated_input":
            return True
        if e.prim.name == "einsum":
            sa, sb, _ = parse_spec(e.params["spec"])
            size = dict(zip(sa, e.inputs[0].shape)) | dict(zip(sb, e.inputs[1].shape))
            if _prod(list(size.values())) >= OBJMODE_FLOPS:
                return True
    return False


def _nonzero(ctx, eqn, a, outs):
    t = ctx.temp()
    lines = [f"{t} = _k.nonzero_checked({a[0]}, {eqn.params['size']})"]
    return lines + [f"{o} = {t}[{i}]" for i, o in enumerate(outs)]


def _barrier(ctx, eqn, a, outs):
    # (the other operands are computed before this line: that is the barrier)
    return [f"{o} = {x}" for o, x in zip(outs, a)]


def _guard(ctx, eqn, a, outs):
    pred = eqn.inputs[0]
    value = a[0] if pred.ndim == 0 else f"{a[0]}[{', '.join(['0'] * pred.ndim)}]"
    expected = bool(eqn.params["expected"])
    return [f"if {value} != {expected}:",
            f"    raise GuardFailure(\"branch predicate is now {not expected}, "
            f"traced with {expected}\")"]


def _decomposition(kernel):
    """A decomposition of one matrix (``kernels.lapack_*``: C-ordered results and a
    status)."""
    def handler(ctx, eqn, a, outs):
        return [f"{', '.join(outs)}, {ctx.status} = {kernel}(_k.contiguous({a[0]}))"]
    return handler


def _root_callback(ctx, eqn, a, outs):
    """A solver region whose solver is Python (``implicit_diff``, ``argmin``): called
    from an object-mode block (expanded traced solvers never reach code generation)."""
    from ..prims.implicit import PyCallback
    solver, out = eqn.params["solver"], eqn.outputs[0]
    if not isinstance(solver, PyCallback):
        raise UnsupportedError("a traced solver region reached code generation unexpanded")
    from . import kernels
    key = kernels.register_callback(solver)
    kind = np.dtype(out.dtype).name + (
        f"[{', '.join([':'] * (out.ndim - 1) + ['::1'])}]" if out.ndim else "")
    return [f"with numba.objmode({outs[0]}={kind!r}):",
            f"    {outs[0]} = _k.run_callback({key!r}, {', '.join(a)})"]


def _report(ctx, eqn, a, outs):
    what, where = eqn.params["what"], eqn.params["where"]
    # (a call: see kernels.report for why the object-mode block is not written here)
    return [f"_k.report({a[0]}, {a[1]}, {what!r}, {where!r})"]


def _indexing(kind):
    def handler(ctx, eqn, a, outs):
        inplace = id(eqn) in ctx.inplace.inplace
        out = eqn.outputs[0]
        # (a large result into a buffer the caller allocates: NumPy's huge pages or the
        # pool's reused blocks, not Numba's allocator faulting its pages in at each call)
        dest = not inplace and not ctx.inner and out.ndim > 0 and \
            int(np.prod(out.shape)) * np.dtype(out.dtype).itemsize >= SMALL_OUT_BYTES
        name = ctx.helper(lambda name: index_function(name, kind, eqn, inplace, dest))
        if dest:
            a = list(a) + [ctx.out_buffer(out.shape, out.dtype, var=out)]
        return f"{name}({', '.join(a)})"
    return handler


HANDLERS = {
    "convert_element_type": _convert, "select": _select, "reshape": _reshape,
    "broadcast_in_dim": _broadcast, "transpose": _transpose, "concatenate": _concatenate,
    "slice": _slice, "pad": _pad,
    "reduce_sum": _over_rows("sum_rows", lambda p: p["axes"]),
    "reduce_max": _over_rows("max_rows", lambda p: p["axes"]),
    "reduce_min": _over_rows("min_rows", lambda p: p["axes"]),
    "reduce_prod": _over_rows("prod_rows", lambda p: p["axes"]),
    "argmax": _over_rows("argmax_rows", lambda p: (p["axis"],)),
    "argsort": _argsort, "searchsorted": _searchsorted,
    "argmin": _over_rows("argmin_rows", lambda p: (p["axis"],)),
    "cumsum": _cumsum, "einsum": _einsum, "solve": _solve, "det": _det,
    "slogdet": _slogdet, "cofactor": _cofactor, "conv2d": _conv2d,
    "conv2d_over_batch": _conv2d_over_batch,
    "conv2d_dilated_input": _conv2d_dilated_input, "nonzero": _nonzero, "guard": _guard,
    "root": _root_callback, "report": _report, "barrier": _barrier,
    "cholesky": _decomposition("_k.lapack_cholesky"),
    "eigh": _decomposition("_k.lapack_eigh"),
    "svd": _decomposition("_k.lapack_svd"),
    "qr": _decomposition("_k.lapack_qr"),
    "gather": _indexing("gather"), "scatter_add": _indexing("scatter_add"),
    "index_set": _indexing("index_set"),
    "scatter_extremum": _indexing("scatter_extremum"),
    **control.HANDLERS,
}


_VIEWS = {"slice", "transpose", "reshape", "broadcast_in_dim", "stop_gradient", "barrier"}
# views that may run before the loop nests just above them (which do not make their
# operand), so that those nests and the ones after the view share one helper
_HOISTED = _VIEWS - {"barrier"}


def lowerable() -> set:
    """Names of the primitives this module can lower (those of
    ``passes.implicit.EXPANDED`` reach it expanded: a solver's algorithm, a function
    with a user rule as the function itself)."""
    from ..passes.implicit import EXPANDED
    return set(TEMPLATES) | set(HANDLERS) | set(EXPANDED)


def _atom(ctx, names, x) -> str:
    if isinstance(x, Var):
        return names[x]
    if x.ndim == 0:
        return scalar_literal(x.value, x.dtype)
    return ctx.const(x.value)


def _statements(ctx, graph: Graph, names: dict, printed) -> list:
    """The lines of a function body computing ``graph``'s equations (indented once)."""
    from .loops import fused_nest, lower_nests, mergeable
    body, last_source, nests = [], None, []     # (nests: consecutive ones, one helper)

    def place_nests():
        body.extend("    " + c for c in (lower_nests(ctx, nests) if nests else ()))
        nests.clear()

    def pending_reads(eqn) -> bool:
        made = {r for n in nests for r in n.results}
        return any(isinstance(x, Var) and names[x] in made for x in eqn.inputs)

    for k, (eqn, text) in enumerate(zip(graph.eqns, printed)):
        if not ctx.inner:
            ctx.at = k
        line = text[0]
        prim = eqn.prim.name
        nest = None
        if prim == "fused":
            inner = {e: t for e, t in zip(eqn.params["body"].eqns, text_of_body(eqn, text))}
            inner[eqn] = [line]
            nest = fused_nest(ctx, eqn, names, inner, ctx.parallel and not ctx.inner,
                              ctx.fastmath)
        if nest is None and nests and prim in _HOISTED and not pending_reads(eqn):
            pass        # (a view of a value made before the nests: written before them)
        elif nest is None or not mergeable(nests, nest):
            place_nests()
        if prim not in TEMPLATES and prim not in HANDLERS and prim != "fused":
            where = f"\n  at {eqn.source}" if eqn.source else ""
            raise UnsupportedError(f"the numba backend has no lowering for primitive "
                                   f"{prim!r} (equation: {line.strip()}){where}")
        args = [_atom(ctx, names, x) for x in eqn.inputs]
        outs = [names[v] for v in eqn.outputs]
        body.append("    # " + line.strip().removeprefix("let "))
        if eqn.source and eqn.source != last_source:
            body.append(f"    #   from {eqn.source}")
        last_source = eqn.source
        if prim in TEMPLATES and numpy_ufunc_call(eqn):
            code = _ufunc_objmode(ctx, eqn, args, outs)
        elif prim in TEMPLATES:
            code = eqn_template(eqn).format(*args)
            if eqn.outputs[0].ndim == 0 and prim != "convert_element_type":
                code = narrow(code, eqn.outputs[0].dtype)
        elif prim == "fused":
            nests.append(nest)          # (placed with those after it, ``place_nests``)
            continue
        else:
            ctx.status = ctx.temp() if prim in LINALG_CALLS else None
            code = HANDLERS[prim](ctx, eqn, args, outs)
        if isinstance(code, str):
            code = [f"{', '.join(outs)} = {code}" if outs else code]
        if prim in LINALG_CALLS:        # (Numba raises NumPy's LinAlgError, no line: the
            # kernels catch it, and say what failed; ``kernels.lapack_solve``)
            code += [f"if {ctx.status} == 1:",
                     f"    raise _k.EvaluationError({linalg_failure(eqn)!r})",
                     f"if {ctx.status} == 2:",
                     f"    raise _k.EvaluationError({linalg_failure(eqn, finite=False)!r})"]
        body.extend("    " + c for c in code)
    place_nests()
    return body


_OBJMODE = re.compile(r"    with numba\.objmode\((.*)\):$")
_ALIAS = re.compile(r"    \w+ = _[ocy]\d+$")    # a name for a buffer or constant parameter
_DECLARED = re.compile(r"(\w+)='([^']*)'")
_STRINGS = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_COMMENT = re.compile(r"#[^\n]*")


def _reads(name: str, text: str) -> bool:
    """Whether ``text`` (code, its strings and comments taken out) reads the variable
    ``name``: an identifier of its own, not an attribute (``np.cos``, ``x.T``) nor a
    keyword argument's name (``out=``)."""
    return re.search(rf"(?<![\w.]){name}\b(?!\s*=(?!=))", text) is not None


def merge_objmode(body: list, tail: str) -> list:
    """``body``'s consecutive object-mode blocks (at the function's top level) as one.

    Numba compiles each block as a function of its own, ~0.15 s each at a first call
    (W3's gradient has seven: BLAS products, NumPy's ufuncs), and each costs ~2 µs to
    enter.  Blocks merge across comments and lines naming a parameter (``c = _o0``, a
    product's destination), which move above the merged block; any other line ends a
    run.  The merged block declares the outputs of its blocks that a later line or
    ``tail`` (the function's results) reads: Numba refuses a declared output that nothing
    after the block reads."""
    out, k = [], 0
    while k < len(body):
        m = _OBJMODE.match(body[k])
        if m is None:
            out.append(body[k])
            k += 1
            continue
        blocks, hoisted, pending, j = [], [], [], k
        while j < len(body):
            m = _OBJMODE.match(body[j])
            if m is not None:
                end = j + 1
                while end < len(body) and body[end].startswith("        "):
                    end += 1
                comments = [line for line in pending if line.startswith("    #")]
                hoisted += [line for line in pending if not line.startswith("    #")]
                blocks.append((m.group(1), ["    " + c for c in comments] + body[j + 1:end]))
                pending, j = [], end
            elif body[j].startswith("    #") or _ALIAS.match(body[j]):
                pending.append(body[j])
                j += 1
            else:
                break
        if len(blocks) == 1:
            out.extend(body[k:j - len(pending)])
        else:
            after = _COMMENT.sub("", _STRINGS.sub("", "\n".join(
                body[j - len(pending):] + [tail])))
            declared = ", ".join(
                f"{name}={kind!r}" for d, _ in blocks for name, kind in _DECLARED.findall(d)
                if _reads(name, after))
            out += hoisted + [f"    with numba.objmode({declared}):"]
            for _, lines in blocks:
                out += lines
        k = j - len(pending)
    return out


# What NumPy's LinAlgError of each primitive means (LAPACK's ``info > 0``)
LINALG_FAILURES = {"solve": "the matrix is singular",
                   "cholesky": "the matrix is not positive definite",
                   "eigh": "the eigenvalue algorithm did not converge",
                   "svd": "the SVD did not converge"}
# Numba's LAPACK calls, which also refuse infinities and NaNs (where NumPy's return NaNs
# or values)
LINALG_CALLS = {"det", "slogdet", "cofactor", "qr", *LINALG_FAILURES}


def linalg_failure(eqn, finite: bool = True) -> str:
    """The error of ``eqn`` failing on a later call's values: LAPACK's failure
    (``LINALG_FAILURES``; the CPU and CUDA targets raise it as the interpreter raises
    its own, naming the line), or, not ``finite``, Numba's refusal of infinities and
    NaNs in its operands, which NumPy's LAPACK takes."""
    if finite:
        what = LINALG_FAILURES.get(eqn.prim.name, "LAPACK failed") + \
            " (NumPy raises LinAlgError)"
    else:
        what = ("an operand holds infinities or NaNs, which the CPU target's LAPACK calls "
                "(through Numba) refuse (NumPy returns NaNs or values: target='numpy' "
                "computes as NumPy does)")
    return with_location(f"gradc: {eqn.prim.name}: {what}", eqn.source or "")


def body_function(ctx, graph: Graph, what: str, dests=(), n_body=None, n_carry=None):
    """A loop's body (or a branch) as a jitted function of the module, optimised like a
    whole graph (``compile.optimise``: simplified, fused) and lowered like one.

    ``dests``: positions of outputs the caller stores in arrays of its own (a scan's ys);
    the function takes a destination for each (after its inputs), and a loop nest or
    NumPy call computing such an output writes it there, sparing the copy.  Returns the
    function's name, the array constants it reads (parameters of the main function,
    passed last), the positions written in place, and, for a loop's body (``n_body``:
    its leading constant inputs; ``n_carry``: its carries after them, for a scan), the
    carries it updates in place (``inplace.body_slots``: the driver must hand it buffers
    of their own)."""
    from .compile import optimise
    graph = optimise(graph, "cpu")
    saved = ctx.producer, ctx.conv_plan, ctx.pool_loops, ctx.inner, ctx.dest, ctx.inplace
    ctx.producer = {v: e.prim.name for e in graph.eqns for v in e.outputs}
    ctx.conv_plan = _conv_plan(ctx, graph)
    ctx.pool_loops, ctx.inner = False, True     # (called once a step: no thread pool)
    made = {v for e in graph.eqns for v in e.outputs if e.prim.name not in _VIEWS}
    dest_of = {k: f"_y{j}" for j, k in enumerate(dests)}
    ctx.dest = {graph.outputs[k]: name for k, name in dest_of.items()
                if graph.outputs[k] in made and list(graph.outputs).count(graph.outputs[k]) == 1}
    wanted = dict(ctx.dest)
    if n_body is None:
        ctx.inplace, mutated = inplace.plan(graph, exclude=set(wanted)), set()
    else:
        _, ctx.inplace = inplace.body_slots(graph, n_body, set(wanted), n_carry)
        mutated = inplace.written_carries(graph, ctx.inplace, n_body, n_carry)
    try:
        namer, printed = pretty_parts(graph)
        names = {v: _identifier(n) for v, n in namer.names.items()}
        body = _statements(ctx, graph, names, printed)
        results = [_atom(ctx, names, x) for x in graph.outputs]
        body = merge_objmode(body, " ".join(results))
        written = {k for k, name in dest_of.items()
                   if graph.outputs[k] in wanted and graph.outputs[k] not in ctx.dest}
    finally:
        ctx.producer, ctx.conv_plan, ctx.pool_loops, ctx.inner, ctx.dest, ctx.inplace = saved
    text = "\n".join(body + results)
    consts = [c for c in ctx.consts if re.search(rf"\b{c}\b", text)]
    params = [names[v] for v in graph.inputs] + list(dest_of.values()) + consts

    def make(name):
        head = ["@_k.jit_body", f"def {name}({', '.join(params)}):", f"    # {what}"]
        return "\n".join(head + body + [f"    return ({''.join(r + ', ' for r in results)})"])
    return ctx.helper(make), consts, written, mutated


# ---------------------------------------------------------------- the driver

def lower(graph: Graph, name: str = "gradc_fn", parallel: bool = False,
          fastmath: bool = False) -> Lowered:
    """The generated module's source, its main function's name, and its constants.
    With ``parallel``, fused loop nests run their outer loop with ``numba.prange``;
    with ``fastmath``, their helpers are compiled with Numba's ``fastmath``."""
    ctx = _Context()
    ctx.parallel, ctx.fastmath = parallel, fastmath
    ctx.producer = {v: e.prim.name for e in graph.eqns for v in e.outputs}
    namer, printed = pretty_parts(graph)
    names = {v: _identifier(n) for v, n in namer.names.items()}
    ctx.conv_plan = _conv_plan(ctx, graph)
    ctx.pool_loops = not _calls_blas(graph)
    ctx.inplace = inplace.plan(graph)
    body = _statements(ctx, graph, names, printed)

    def atom(x) -> str:
        return _atom(ctx, names, x)

    # results never alias the caller's inputs, the constants or each other's storage
    # through a view, nor each other (one value returned twice: ``(a * 2, a * 2)`` after
    # CSE, which Numba returns as two arrays of one buffer): those are copied (a caller
    # may mutate what it gets back)
    producer = {v: e.prim.name for e in graph.eqns for v in e.outputs}
    passing = {v for e in graph.eqns for v in control.passing(e)}
    results, returned = [], set()
    for x in graph.outputs:
        text = atom(x)
        aliased = x.ndim > 0 and (not isinstance(x, Var) or x not in producer
                                  or producer[x] in _VIEWS or x in passing or x in returned)
        if isinstance(x, Var):
            returned.add(x)
        results.append(f"np.ascontiguousarray({text}).copy()" if aliased else text)
    body = merge_objmode(body, " ".join(results))
    body.append(f"    return ({''.join(r + ', ' for r in results).rstrip()})")
    params = [names[v] for v in graph.inputs] + list(ctx.consts) + list(ctx.outs)
    header = [
        '"""Generated by gradc from a Graph; one statement per equation.',
        "",
        pretty(graph, indent=4),
        '"""',
        "import numba",
        "import numpy as np",
        "",
        "from gradc.codegen import kernels as _k",
        "from gradc.errors import GuardFailure",
        "",
    ]
    if ctx.consts:
        header.append("# array constants, passed in by the caller after the inputs:")
        header += [f"#   {k}: {v.dtype}{list(v.shape)}" for k, v in ctx.consts.items()]
        header.append("")
    fresh = ctx.fresh | {v for e in graph.eqns if inplace.allocates(e, ctx.inplace)
                         for v in e.outputs}
    ranges = memplan.live_ranges(graph, ctx.made, fresh)
    shares = memplan.share(ranges, ctx.outs)
    if ctx.outs:
        header.append("# output buffers, allocated by the caller (np.empty) after those:")
        if shares:
            header.append("# (one \"in _oK's memory\" is passed _oK's array: _oK's value is "
                          "dead by then)")
        header += [f"#   {k}: {d}{list(s)}" + (f" in {shares[k]}'s memory" if k in shares
                                                    else "")
                   for k, (s, d) in ctx.outs.items()]
        header.append("")
    helpers = [h + "\n" for h in ctx.helpers]
    main = [f"def {name}({', '.join(params)}):"] + body
    source = "\n".join(header + helpers + main) + "\n"
    return Lowered(source, name, [names[v] for v in graph.inputs], dict(ctx.consts),
                   dict(ctx.outs), shares, ranges)


def text_of_body(eqn, text) -> list:
    """The printed lines of each equation of a ``fused`` equation's body, from the lines
    ``pretty_parts`` gave the fused equation (head, ``{ lambda``, equations, ``in``)."""
    lines = [t.strip() for t in text[2:-1]]
    return [[line.removeprefix("let ")] for line in lines]


def to_source(graph: Graph, name: str = "gradc_fn") -> str:
    """Readable Python source for ``graph``: one statement per equation, the equation as
    a comment above it.  Array constants are trailing parameters (see ``lower``)."""
    return lower(graph, name).source
