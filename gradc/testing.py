"""Gradient checking: ``check_grads`` and ``numerical_jvp`` (users can call them too).

``check_grads(f, args, order, modes)`` tests gradc's derivatives of ``f`` at ``args``
against central finite differences:

* forward mode: ``gradc.jvp(f, args, v)`` against the numerical ``J v`` along a random
  direction ``v``;
* reverse mode: the adjoint identity ``<u, J v> = <Jᵀ u, v>`` for a random cotangent
  ``u``, where ``Jᵀ u`` comes from ``gradc.vjp`` and ``J v`` both from finite
  differences and from ``gradc.jvp`` (so the two modes are also checked against each
  other);
* ``order=2`` repeats the checks on the derivative functions ``x -> jvp(f, x, v)`` and
  ``x -> vjp(f, x)(u)``: jvp-of-jvp, vjp-of-jvp, jvp-of-vjp and vjp-of-vjp.

Only floating-point leaves of ``args`` are perturbed; integer and bool leaves are passed
through unchanged.  Non-floating outputs (indices, masks) must have zero tangents.
"""
from __future__ import annotations

import numpy as np

from . import pytree
from .errors import ArgumentError, InvalidValueError, check_function, with_location
from .ir import is_float

__all__ = ["check_grads", "numerical_grad", "numerical_jvp"]

# (eps, rtol, atol) per precision: central differences have truncation error O(eps²)
# and rounding error O(ulp / eps); these keep both well below the tolerance.
_DEFAULTS = {
    np.dtype(np.float64): (1e-6, 1e-5, 1e-5),
    np.dtype(np.float32): (1e-3, 2e-2, 2e-2),
    np.dtype(np.float16): (1e-2, 1e-1, 1e-1),
}


def _float_leaf(x) -> bool:
    return is_float(np.asarray(x).dtype) if not hasattr(x, "dtype") else is_float(x.dtype)


def _leaf_dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _perturb(x, t, step):
    """``x + step * t`` keeping ``x``'s type (a Python float stays a float)."""
    if isinstance(x, float):
        return float(x + step * float(np.asarray(t)))
    x = np.asarray(x)
    return (x + step * np.asarray(t, dtype=np.float64)).astype(x.dtype)


def numerical_grad(f, x, eps=1e-6):
    """Central finite-difference gradient of a scalar function of one array (or float),
    one coordinate at a time: ``g[i] = (f(x + eps e_i) - f(x - eps e_i)) / 2eps``."""
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def numerical_jvp(f, args, tangents, eps):
    """Central finite-difference estimate of ``J v``: ``(f(x + eps v) - f(x - eps v)) / 2eps``.

    ``args`` is a tuple of positional arguments (pytrees allowed) and ``tangents`` has
    the same structure.  Only floating-point leaves are perturbed (the tangents of
    integer/bool leaves are ignored).  Returns a pytree shaped like ``f(*args)`` whose
    floating-point leaves hold the estimate (as float64) and whose other leaves hold
    zeros, since integer outputs are piecewise constant.
    """
    leaves, tree = pytree.flatten(list(args))
    tleaves, ttree = pytree.flatten(list(tangents))
    if ttree != tree:
        raise ValueError(f"numerical_jvp: tangents have structure {ttree}, args have {tree}")

    def shifted(step):
        moved = [_perturb(x, t, step) if _float_leaf(x) else x for x, t in zip(leaves, tleaves)]
        return f(*pytree.unflatten(tree, moved))

    plus, out_tree = pytree.flatten(shifted(eps))
    minus, _ = pytree.flatten(shifted(-eps))
    out = []
    for p, m in zip(plus, minus):
        if _float_leaf(p):
            diff = np.asarray(p, dtype=np.float64) - np.asarray(m, dtype=np.float64)
            out.append(diff / (2.0 * eps))
        else:
            out.append(np.zeros(np.shape(p)))
    return pytree.unflatten(out_tree, out)


# ---------------------------------------------------------------- helpers

def _random_like(leaves, rng):
    """Standard normal values for the float leaves, zeros for the others."""
    out = []
    for x in leaves:
        if _float_leaf(x):
            r = rng.standard_normal(np.shape(x))
            out.append(float(r) if isinstance(x, float) else r.astype(_leaf_dtype(x)))
        else:
            out.append(np.zeros(np.shape(x), dtype=_leaf_dtype(x)))
    return out


def _inner(a_leaves, b_leaves, like_leaves):
    """Σ over the float leaves of ``like`` of <a, b>, in float64."""
    total = 0.0
    for a, b, like in zip(a_leaves, b_leaves, like_leaves):
        if _float_leaf(like):
            a64 = np.asarray(a, dtype=np.float64).ravel()
            b64 = np.asarray(b, dtype=np.float64).ravel()
            total += float(np.dot(a64, b64))
    return total


def _tolerances(leaves, eps, rtol, atol):
    dtypes = [_leaf_dtype(x) for x in leaves if _float_leaf(x)]
    widest = min(dtypes, key=lambda d: d.itemsize) if dtypes else np.dtype(np.float64)
    d_eps, d_rtol, d_atol = _DEFAULTS.get(widest, _DEFAULTS[np.dtype(np.float64)])
    return (d_eps if eps is None else eps, d_rtol if rtol is None else rtol,
            d_atol if atol is None else atol)


def _close(what, got, want, rtol, atol):
    got64 = np.asarray(got, dtype=np.float64)
    want64 = np.asarray(want, dtype=np.float64)
    if got64.shape != want64.shape:
        raise AssertionError(f"{what}: shapes differ, {got64.shape} vs {want64.shape}")
    bad = ~(np.abs(got64 - want64) <= atol + rtol * np.abs(want64))
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0]) if got64.ndim else ()
        raise AssertionError(
            f"{what}: {int(np.sum(bad))} of {got64.size} values differ "
            f"(rtol={rtol:g}, atol={atol:g}); first at {where}: gradc gives "
            f"{got64[where]!r}, reference {want64[where]!r}\n  gradc:     {got64!r}\n"
            f"  reference: {want64!r}")


def _same_dtype(what, got, like):
    """A tangent has its primal's dtype (a Python float's may be any float64 scalar)."""
    if isinstance(like, float):
        return
    if _leaf_dtype(got) != _leaf_dtype(like):
        raise AssertionError(f"{what} has dtype {_leaf_dtype(got)}, its primal has "
                             f"{_leaf_dtype(like)}")


def _same_structure(what, a_tree, b_tree):
    if a_tree != b_tree:
        raise AssertionError(f"{what}: output structure {a_tree}, expected {b_tree}")


# ---------------------------------------------------------------- the checks

def _check_jvp(f, args, v, eps, rtol, atol, label):
    import gradc
    out, t_out = gradc.jvp(f, args, v)
    ref_out, ref_tree = pytree.flatten(f(*args))
    out_l, out_tree = pytree.flatten(out)
    t_l, t_tree = pytree.flatten(t_out)
    _same_structure(f"{label}, fwd mode: jvp primal output", out_tree, ref_tree)
    _same_structure(f"{label}, fwd mode: jvp tangent output", t_tree, ref_tree)
    num_l, _ = pytree.flatten(numerical_jvp(f, args, v, eps))
    for i, (o, r, t, n) in enumerate(zip(out_l, ref_out, t_l, num_l)):
        _close(f"{label}, fwd mode: primal output {i} of jvp vs f", o, r, rtol, atol)
        if np.shape(t) != np.shape(r):
            raise AssertionError(f"{label}, fwd mode: tangent {i} has shape {np.shape(t)}, "
                                 f"output has {np.shape(r)}")
        if _float_leaf(r):
            _same_dtype(f"{label}, fwd mode: tangent {i} of jvp", t, r)
            _close(f"{label}, fwd mode: tangent {i} of jvp vs central differences",
                   t, n, rtol, atol)
        elif np.any(np.asarray(t) != 0):
            raise AssertionError(f"{label}, fwd mode: tangent {i} of a non-float output is "
                                 f"not zero: {np.asarray(t)!r}")
    return t_l, num_l, ref_out


def _check_vjp(f, args, v, rng, eps, rtol, atol, label, jvp_tangents=None):
    import gradc
    out, vjp_fn = gradc.vjp(f, *args)
    out_l, out_tree = pytree.flatten(out)
    ref_l, ref_tree = pytree.flatten(f(*args))
    _same_structure(f"{label}, rev mode: vjp primal output", out_tree, ref_tree)
    for i, (o, r) in enumerate(zip(out_l, ref_l)):
        _close(f"{label}, rev mode: primal output {i} of vjp vs f", o, r, rtol, atol)
    u = _random_like(out_l, rng)
    cts = vjp_fn(pytree.unflatten(out_tree, u))
    ct_l, ct_tree = pytree.flatten(list(cts))
    arg_l, arg_tree = pytree.flatten(list(args))
    float_args = [x for x in arg_l if _float_leaf(x)]
    v_l, _ = pytree.flatten(list(v))
    float_v = [t for x, t in zip(arg_l, v_l) if _float_leaf(x)]
    if len(ct_l) != len(float_args):
        raise AssertionError(f"{label}, rev mode: vjp gave {len(ct_l)} cotangents for "
                             f"{len(float_args)} floating-point argument leaves")
    for i, (c, x) in enumerate(zip(ct_l, float_args)):
        if np.shape(c) != np.shape(x):
            raise AssertionError(f"{label}, rev mode: cotangent {i} has shape {np.shape(c)}, "
                                 f"argument has {np.shape(x)}")
        _same_dtype(f"{label}, rev mode: cotangent {i} of vjp", c, x)
    lhs_rev = _inner(ct_l, float_v, float_args)             # <Jᵀu, v>
    num_l, _ = pytree.flatten(numerical_jvp(f, args, v, eps))
    rhs_num = _inner(u, num_l, out_l)                       # <u, J v>, numerically
    # the tolerance of an inner product scales with the size of its terms
    scale = max(1.0, _inner([np.abs(np.asarray(x, dtype=np.float64)) for x in u],
                            [np.abs(n) for n in num_l], out_l))
    _close(f"{label}, rev mode: <Jᵀu, v> (vjp) vs <u, Jv> (central differences)",
           lhs_rev, rhs_num, rtol, atol * scale)
    if jvp_tangents is not None:
        rhs_fwd = _inner(u, jvp_tangents, out_l)
        _close(f"{label}, rev mode: <Jᵀu, v> (vjp) vs <u, Jv> (jvp)",
               lhs_rev, rhs_fwd, rtol, atol * scale)
    return pytree.unflatten(out_tree, u)


def check_grads(f, args, order=1, modes=("fwd", "rev"), eps=None, atol=None, rtol=None,
                seed=0):
    """Check gradc's derivatives of ``f`` at ``args`` against finite differences.

    ``f`` takes the positional ``args`` (arrays, floats, ints, or pytrees of them) and
    returns an array or a pytree of arrays.  ``modes`` picks forward mode (``"fwd"``,
    ``gradc.jvp``) and/or reverse mode (``"rev"``, ``gradc.vjp``); with ``order=2`` the
    derivative functions are checked again, which exercises the composition of the
    transformations (second derivatives).  ``eps`` is the finite-difference step and
    ``rtol``/``atol`` the tolerances; by default all three follow the lowest floating
    precision among the arguments (float64: 1e-6 and 1e-5).  Random directions come
    from ``np.random.default_rng(seed)``.

    Raises ``AssertionError`` naming the mode, the order and the two disagreeing numbers,
    and ``gradc.InvalidValueError`` (a ``ValueError``) when there is nothing to check:
    no mode, no floating-point argument or output (``f`` returned ``None``, an empty
    tuple, only integers) or only empty ones.
    """
    if not isinstance(args, (tuple, list)):
        raise ArgumentError(with_location(
            f"check_grads(f, args): args is the tuple of f's positional arguments, got "
            f"{'an' if type(args).__name__[0] in 'aeiou' else 'a'} {type(args).__name__}; "
            "write (x,) for one argument"))
    check_function(f, "check_grads: f", tuple(args))
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes:
        raise _invalid("check_grads: modes is empty, so nothing would be checked "
                                "(use 'fwd' and/or 'rev')")
    for m in modes:
        if m not in ("fwd", "rev"):
            raise _invalid(
                f"check_grads: unknown mode {m!r} (use 'fwd' and/or 'rev')")
    if order not in (1, 2):
        raise _invalid(f"check_grads: order must be 1 or 2, got {order!r}")
    args = tuple(args)
    _something_to_check(f, args)
    rng = np.random.default_rng(seed)
    _check_grads(f, args, order, modes, eps, atol, rtol, rng, level=1, name="f")


def _invalid(message: str) -> InvalidValueError:
    """A check that would compare nothing, named at the user's line."""
    return InvalidValueError(with_location(message))


def _something_to_check(f, args):
    """Refuse, loudly, a check that would compare nothing and pass."""
    arg_l, _ = pytree.flatten(list(args))
    floats = [x for x in arg_l if _float_leaf(x)]
    if not floats:
        raise _invalid("check_grads: no floating-point argument to differentiate")
    if not any(np.size(x) for x in floats):
        raise _invalid("check_grads: every floating-point argument is empty "
                                "(size 0): nothing to check")
    out = f(*args)
    out_l, _ = pytree.flatten(out)
    what = "None" if out is None else f"{type(out).__name__} {pytree.flatten(out)[1]}"
    if not out_l:
        raise _invalid(f"check_grads: f returned {what}, no output to "
                                "differentiate: nothing to check")
    float_out = [o for o in out_l if _float_leaf(o)]
    if not float_out:
        raise _invalid(
            f"check_grads: f returned no floating-point output (dtypes "
            f"{', '.join(str(_leaf_dtype(o)) for o in out_l)}): nothing to check")
    if not any(np.size(o) for o in float_out):
        raise _invalid("check_grads: every floating-point output of f is empty "
                                "(size 0): nothing to check")


def _check_grads(f, args, order, modes, eps, atol, rtol, rng, level, name):
    import gradc
    arg_l, arg_tree = pytree.flatten(list(args))
    eps_, rtol_, atol_ = _tolerances(arg_l, eps, rtol, atol)
    # at order 2 the finite differences of a derivative carry more rounding error
    if level > 1 and eps is None:
        eps_ = eps_ * 10
    v_l = _random_like(arg_l, rng)
    v = tuple(pytree.unflatten(arg_tree, v_l))
    label = f"order {level} ({name})"
    jvp_t = None
    if "fwd" in modes:
        jvp_t, _, _ = _check_jvp(f, args, v, eps_, rtol_, atol_, label)
    u = None
    if "rev" in modes:
        u = _check_vjp(f, args, v, rng, eps_, rtol_, atol_, label, jvp_t)
    if level >= order:
        return

    def f_jvp(*xs):
        return gradc.jvp(f, xs, v)[1]

    _check_grads(f_jvp, args, order, modes, eps, atol, rtol, rng, level + 1,
                 f"x -> jvp({name}, x, v)")
    if u is not None:
        def f_vjp(*xs):
            return [c for c in pytree.flatten(list(gradc.vjp(f, *xs)[1](u)))[0]]

        _check_grads(f_vjp, args, order, modes, eps, atol, rtol, rng, level + 1,
                     f"x -> vjp({name}, x)(u)")
