"""Operators and ndarray methods on Tracer, written in terms of the NumPy layer.

In-place operators (``x += y``) and item assignment (``x[i] = v``) are functionalised:
the Tracer object is rebound to the updated value (an ``index_set`` equation), which
is what NumPy code that mutates its own arrays expects.  Basic slices, reshapes and
transposes are views, as in NumPy: a write through one reaches its base, and a write to
the base reaches the views made of it earlier (``Tracer.assign``).
"""
from __future__ import annotations

import builtins

import numpy as np

from . import numpy_api as npa
from . import numpy_funcs as npf
from . import numpy_linalg as npl
from .errors import UnsupportedError, with_location
from .trace import Tracer


def _binary(ufunc):
    impl = npa.weakly(npa.UFUNCS[ufunc])
    return (lambda self, other: impl(self, other)), (lambda self, other: impl(other, self))


def _inplace(ufunc):
    impl = npa.UFUNCS[ufunc]

    def op(self, other):
        result = impl(self, other)
        if self.numpy_scalar():
            # a NumPy scalar (an element, a sum, s = 0.0; s += x[i]): immutable, so
            # ``s += v`` is ``s = s + v`` (its other names keep the old value; no cast)
            return result
        # NumPy writes the result back under its same_kind rule (float into an integer
        # array, or anything into a bool one, is refused, not truncated), and does not
        # grow the array: y += v with v of a bigger broadcast shape is refused
        npa.write_result(self, result, npa._ufunc_name(ufunc), "in place")
        return self
    return op


_OPERATORS = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
    "lshift": np.left_shift, "rshift": np.right_shift,
}
for _name, _uf in _OPERATORS.items():
    _fwd, _rev = _binary(_uf)
    setattr(Tracer, f"__{_name}__", _fwd)
    setattr(Tracer, f"__r{_name}__", _rev)
    setattr(Tracer, f"__i{_name}__", _inplace(_uf))

for _name, _uf in {"lt": np.less, "le": np.less_equal, "gt": np.greater,
                   "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal}.items():
    setattr(Tracer, f"__{_name}__", _binary(_uf)[0])

Tracer.__neg__ = npa.weakly(lambda self: npa.UFUNCS[np.negative](self))
Tracer.__pos__ = lambda self: self
Tracer.__abs__ = npa.weakly(lambda self: npa.UFUNCS[np.absolute](self))
Tracer.__invert__ = lambda self: npa.UFUNCS[np.invert](self)
Tracer.__round__ = lambda self, ndigits=None: npf.round(self, ndigits or 0)
Tracer.__divmod__ = lambda self, other: (self // other, self % other)
Tracer.__rdivmod__ = lambda self, other: (other // self, other % self)
Tracer.__getitem__ = npa.getitem
Tracer.__setitem__ = npa.setitem

Tracer.T = property(lambda self: npf.transpose(self))
Tracer.mT = property(lambda self: npf.swapaxes(self, -1, -2))


def _method(func):
    def method(self, *args, **kwargs):
        return func(self, *args, **kwargs)
    method.__name__ = func.__name__
    return method


for _name in ("sum", "mean", "var", "std", "max", "min", "prod", "any", "all", "cumsum",
              "ravel", "squeeze", "swapaxes", "clip", "diagonal", "trace", "round",
              "repeat", "take"):
    setattr(Tracer, _name, _method(getattr(npf, _name)))

def _late_method(func):
    """A method whose NumPy function is registered after this module (gradc.lib)."""
    def method(self, *args, **kwargs):
        return npa.FUNCTIONS[func](self, *args, **kwargs)
    method.__name__ = func.__name__
    return method


for _name in ("cumprod", "argsort", "searchsorted"):
    setattr(Tracer, _name, _late_method(getattr(np, _name)))


def _sort_in_place(self, axis=-1, kind=None, order=None, *, stable=None):
    """``x.sort()``: x becomes its sorted copy (as NumPy's, in place; returns None)."""
    self.assign(npa.FUNCTIONS[np.sort](self, axis, kind, order))


Tracer.sort = _sort_in_place

Tracer.argmax = lambda self, axis=None, out=None, keepdims=False: \
    npa.FUNCTIONS[np.argmax](self, axis, out, keepdims)
Tracer.argmin = lambda self, axis=None, out=None, keepdims=False: \
    npa.FUNCTIONS[np.argmin](self, axis, out, keepdims)


def _reshape(self, *shape, order="C"):
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = shape[0]
    return npf.reshape(self, tuple(shape), order=order)


def _transpose(self, *axes):
    if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
        axes = axes[0]
    return npf.transpose(self, axes or None)


def _astype(self, dtype, *args, **kwargs):
    return npf.copy(npa.astype(self, dtype))


def _view(self, dtype=None, type=None):
    """``x.view()``: the same values, a view (writes reach x); ``x.view(dtype)`` of
    another dtype reinterprets the bytes, which a derivative cannot follow."""
    if dtype is not None and isinstance(dtype, builtins.type) and issubclass(dtype, np.ndarray):
        dtype, type = None, dtype
    if type is not None and type is not np.ndarray:
        raise UnsupportedError(with_location(
            f"x.view(type={type.__name__}) on a traced array: gradc traces plain ndarrays; "
            "use x itself"))
    if dtype is not None and np.dtype(dtype) != self.dtype:
        raise UnsupportedError(with_location(
            f"x.view({np.dtype(dtype)}) on a traced {self.dtype} array reinterprets its "
            "bytes, which gradc cannot trace or differentiate; convert the values with "
            f"x.astype(np.{np.dtype(dtype)}) instead"))
    return npf._reshape_view(self, self.shape)


Tracer.view = _view
Tracer.dot = _method(npl.dot)
Tracer.reshape = _reshape
Tracer.transpose = _transpose
Tracer.astype = _astype
def _copy_method(self, order="C"):
    out = npf.copy(self)
    out.array0d = self.ndim > 0 or self.array0d   # (a NumPy scalar's copy is a scalar)
    return out


Tracer.copy = _copy_method
Tracer.flatten = lambda self, order="C": npf.copy(npf.ravel(self, order))
Tracer.real = property(lambda self: npa.UFUNCS[np.conjugate](self))
Tracer.imag = property(lambda self: np.zeros(self.shape, self.dtype))
Tracer.conj = Tracer.conjugate = lambda self: npa.UFUNCS[np.conjugate](self)
Tracer.nbytes = property(lambda self: self.size * self.dtype.itemsize)
Tracer.itemsize = property(lambda self: self.dtype.itemsize)
