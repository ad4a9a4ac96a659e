"""``odeint``: an adaptive ODE solver differentiated by the adjoint method.

    ys = gradc.odeint(func, y0, t, *args, rtol=1.4e-8, atol=1.4e-8)

solves ``dy/dt = func(y, t, *args)`` from ``y(t[0]) = y0`` and returns ``y`` at every
time of ``t`` (JAX's ``jax.experimental.ode.odeint``: the same signature and results).

Forward: the Dormand-Prince 5(4) pair with its fourth-order dense output (Hairer,
Norsett and Wanner, *Solving ODEs I*, II.5), steps chosen by the error estimate; each
interval ``[t[i-1], t[i]]`` is a ``while_loop`` of steps inside one ``scan`` over the
times, so the program is the same for any number of steps, and the output times need
not be steps (the dense output is evaluated there).

Reverse mode never differentiates the steps.  It is the continuous adjoint (the
lecture notes' "analytical derivatives with respect to an algorithm's input": ODEs;
Pontryagin, and Chen et al. 2018): with ``a(t) = dL/dy(t)``, the cotangent of the
output, backwards from ``t[-1]`` to ``t[0]``

    dy/dt = f,   da/dt = -a^T df/dy,   dθ̄/dt = -a^T df/dθ

solved by the same integrator in reversed time, one interval at a time, restarting ``y``
from the forward solution at each output time and adding that output's cotangent to
``a``.  The cotangent of an output time is ``g[i] . f(y[i], t[i])``; of the first,
``-a(t[0]) . f(y0, t[0])``.  ``a^T df/dy`` and ``a^T df/dθ`` are one ``gradc.vjp`` of
``func`` per stage.  The backward solve's error control covers ``y``, ``a`` and ``θ̄``.

Values that ``func`` reads from outside (a closure over traced arrays) are found by
tracing it once and become explicit arguments, so their derivatives are exact too.

Forward mode (``jvp``, ``jacfwd``) of ``odeint`` is refused, as in JAX: the adjoint is a
reverse-mode rule, and its step sizes depend on the cotangent.
"""
from __future__ import annotations

import numpy as np

from ..errors import ArgumentError, check_function, with_location
from ..ir import is_float
from ..pytree import flatten, unflatten
from ..trace import dtype_of, is_tracer, shape_of, trace_graph

__all__ = ["odeint"]

# The Dormand-Prince 5(4) tableau: stage nodes, stage weights (the seventh stage's row is
# the fifth-order weights: "first same as last"), the error weights (fifth minus fourth
# order), and Hairer's dense-output weights (DOPRI5's ``d`` coefficients).
_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_A = np.array([[0.0] * 7,
               [1 / 5] + [0.0] * 6,
               [3 / 40, 9 / 40] + [0.0] * 5,
               [44 / 45, -56 / 15, 32 / 9] + [0.0] * 4,
               [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729] + [0.0] * 3,
               [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0, 0.0],
               _B])
_E = np.array([71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40])
_D = np.array([-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799,
               -10690763975 / 1880347072, 701980252875 / 199316789632,
               -1453857185 / 822651844, 69997945 / 29380423])

_SAFETY, _SHRINK, _GROW = 0.9, 0.2, 10.0


def _rms(v):
    return np.sqrt(np.mean(v * v))


def _step(fn, y, f, t, h):
    """One Dormand-Prince step of size ``h`` from ``(t, y)``, ``f = fn(y, t)`` (or
    ``None``: the first stage computed in the loop too, one more evaluation a step): the
    new ``y``, its derivative (the next step's first stage), the error estimate and the
    dense output's five coefficient vectors.  The stages are one loop, so ``fn``
    appears once in the program (a neural ODE's network is compiled once)."""
    from ..api import asarray
    from ..prims.loops import fori_loop
    dtype = y.dtype
    a, c = asarray(_A.astype(dtype)), asarray(_C.astype(dtype))
    ks = np.zeros((7,) + tuple(shape_of(y)), dtype)
    if f is not None:
        ks = np.concatenate([f[None], ks[1:]])

    def stage(s, ks):
        ks[s] = fn(y + h * (a[s] @ ks), t + c[s] * h)   # (in place, compiled)
        return ks

    ks = fori_loop(0 if f is None else 1, 7, stage, ks)
    y1 = y + h * (a[6] @ ks)           # (the seventh stage's input)
    f, f1 = ks[0], ks[6]
    dy = y1 - y
    r3 = h * f - dy
    dense = np.stack([y, dy, r3, dy - h * f1 - r3, h * (_D.astype(dtype) @ ks)])
    return y1, f1, h * (_E.astype(dtype) @ ks), dense


def _dense(coeffs, theta):
    """The dense output at ``theta`` in [0, 1] of the last step (Hairer's form)."""
    r1, r2, r3, r4, r5 = coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4]
    u = 1.0 - theta
    return r1 + theta * (r2 + u * (r3 + theta * (r4 + u * r5)))


def _first_step(fn, y0, f0, t0, rtol, atol, hmax):
    """Hairer's starting step size: from the sizes of ``y0``, ``f0`` and an estimate of
    the second derivative (one more evaluation of ``fn``)."""
    tiny = float(np.finfo(y0.dtype).tiny)     # (1e-300 is 0 in float32)
    scale = atol + rtol * np.abs(y0)
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = np.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / np.maximum(d1, tiny))
    f1 = fn(y0 + h0 * f0, t0 + h0)
    d2 = _rms((f1 - f0) / scale) / h0
    big = np.maximum(d1, d2)
    h1 = np.where(big <= 1e-15, np.maximum(1e-6, h0 * 1e-3),
                  (0.01 / np.maximum(big, tiny)) ** (1 / 5))
    return np.minimum(np.minimum(100 * h0, h1), hmax)


def _advance(fn, state, target, rtol, atol, mxstep, hmax, fsal=True):
    """Steps from ``state`` until its time passes ``target`` (or ``mxstep`` steps, or a
    step size that no longer moves the time); returns the new state and ``y`` at
    ``target`` from the last step's dense output.  ``fsal=False``: the state's ``f`` is
    not used, each step evaluates its first stage."""
    from ..prims.loops import while_loop

    def go(s):
        _, _, t, h, _, _, i = s
        return (t < target) & (i < mxstep) & (t + h > t)

    def step(s):
        y, f, t, h, t_last, coeffs, i = s
        y1, f1, err, dense = _step(fn, y, f if fsal else None, t, h)
        ratio = _rms(err / (atol + rtol * np.maximum(np.abs(y), np.abs(y1))))
        accept = ratio <= 1.0
        factor = np.clip(_SAFETY * np.maximum(ratio, 1e-10) ** -0.2, _SHRINK, _GROW)
        h_new = np.minimum(h * factor, hmax)
        return (np.where(accept, y1, y), np.where(accept, f1, f),
                np.where(accept, t + h, t), h_new, np.where(accept, t, t_last),
                np.where(accept, dense, coeffs), i + 1)

    y, f, t, h, t_last, coeffs, _ = state
    state = while_loop(go, step, (y, f, t, h, t_last, coeffs, np.int64(0)))
    y, f, t, h, t_last, coeffs, _ = state
    span = t - t_last
    theta = (target - t_last) / np.where(span > 0, span, 1.0)
    return state, _dense(coeffs, theta.astype(y.dtype))


def _solve(fn, y0, ts, rtol, atol, mxstep, hmax):
    """``y`` at each time of ``ts`` (``(len(ts), n)``), ``y0`` at ``ts[0]``; whether
    every interval was reached, with the first time at which one was not; and the last
    step size."""
    from ..prims.loops import scan
    t0 = ts[0]
    f0 = fn(y0, t0)
    h0 = _first_step(fn, y0, f0, t0, rtol, atol, hmax)
    coeffs = np.stack([y0] + [np.zeros_like(y0)] * 4)
    state = (y0, f0, t0, h0, t0, coeffs, np.int64(0))

    def interval(carry, target):
        state, ok, stopped = carry
        state, y = _advance(fn, state, target, rtol, atol, mxstep, hmax)
        reached = state[2] >= target
        stopped = np.where(ok & ~reached, state[2], stopped)
        return (state, ok & reached, stopped), y

    (state, ok, stopped), ys = scan(interval, (state, np.asarray(True), t0), ts[1:])
    return np.concatenate([y0[None], ys]), ok, stopped, state[3]


def _check_times(t, dtype):
    """``t`` as a 1-D array of ``dtype``, checked non-decreasing: now if it is known, at
    run time if it is traced (an ``EvaluationError``: a time below the one before it
    would take no steps and read the last step's polynomial backwards)."""
    if is_tracer(t):
        if len(shape_of(t)) != 1 or shape_of(t)[0] == 0 or \
                np.dtype(dtype_of(t)).kind not in "iuf":
            raise ArgumentError(with_location(
                f"odeint: t must be a non-empty 1-D array of times, got shape "
                f"{tuple(shape_of(t))} {np.dtype(dtype_of(t))}"))
        from ..prims.implicit import report
        t = t.astype(dtype) if np.dtype(dtype_of(t)) != dtype else t
        rising = t[1:] >= t[:-1]
        report(np.all(rising), np.argmin(rising) + 1, what="odeint: times")
        return t
    ts = np.asarray(t)
    if ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iuf":
        raise ArgumentError(with_location(
            f"odeint: t must be a non-empty 1-D array of times, got {ts!r}"))
    if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) < 0):
        raise ArgumentError(with_location(
            f"odeint: the times t must be finite and non-decreasing, got {ts!r}"))
    return ts.astype(dtype)


def _state_dtype(leaves):
    dtypes = [np.dtype(dtype_of(x)) for x in leaves]
    bad = [d for d in dtypes if d.kind not in "biuf"]
    if bad:
        raise ArgumentError(with_location(
            f"odeint: y0's leaves must be real arrays, got dtype {bad[0]}"))
    dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


class _Ravel:
    """A pytree of arrays as one vector (in ``dtype``) and back."""

    def __init__(self, avals, dtype):
        self.avals, self.dtype = avals, dtype
        self.sizes = [int(np.prod(shape, dtype=np.int64)) for shape, _ in avals]
        self.size = sum(self.sizes)

    def ravel(self, leaves, batch=None):
        """One vector (or ``(batch, size)`` rows, for leaves with a leading axis)."""
        lead = () if batch is None else (batch,)
        parts = [np.reshape(x, lead + (n,)).astype(self.dtype)
                 for x, n in zip(leaves, self.sizes)]
        if not parts:
            return np.zeros(lead + (0,), self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def unravel(self, v, batch=None, cast=True):
        lead = () if batch is None else (batch,)
        out, k = [], 0
        for (shape, dtype), n in zip(self.avals, self.sizes):
            part = np.reshape(v[..., k:k + n], lead + tuple(shape))
            out.append(part.astype(dtype) if cast and np.dtype(dtype) != self.dtype
                       else part)
            k += n
        return out


def odeint(func, y0, t, *args, rtol=1.4e-8, atol=1.4e-8, mxstep=None, hmax=np.inf):
    """Solve ``dy/dt = func(y, t, *args)`` with ``y(t[0]) = y0``; returns ``y`` at each
    time of ``t`` (a pytree like ``y0``, each leaf with a leading axis of ``len(t)``),
    as ``jax.experimental.ode.odeint``.

    ``rtol``, ``atol``: the local error tolerances of the adaptive Dormand-Prince 5(4)
    steps; ``mxstep``: the most steps between two output times (a ``ConvergenceWarning``
    names the time where the solver stopped; default: no limit); ``hmax``: the largest
    step.  ``t`` must be non-decreasing.  Reverse-mode derivatives with respect to
    ``y0``, ``t``, ``args`` and any traced value ``func`` reads come from the adjoint
    ODE (see ``gradc.lib.ode``); forward mode is refused, as in JAX."""
    from ..custom import custom_vjp
    from ..interpret import eval_graph
    from ..prims.implicit import report
    from ..trace import report_location
    check_function(func, "odeint: func(y, t, *args)", 2 + len(args))
    # (the user's line, for the reports: the adjoint's is made while the gradient is
    # derived, and the forward solve's again there, where no user frame is on the stack)
    where = report_location()
    for name, v in (("rtol", rtol), ("atol", atol), ("hmax", hmax)):
        if is_tracer(v) or np.ndim(v) != 0 or np.asarray(v).dtype.kind not in "iuf" or \
                not float(v) > 0:
            raise ArgumentError(with_location(
                f"odeint: {name} must be a positive number, got {v!r}"))
    unlimited = mxstep is None or mxstep == np.inf
    if unlimited:
        mxstep = np.iinfo(np.int64).max
    if is_tracer(mxstep) or isinstance(mxstep, bool) or int(mxstep) != mxstep or mxstep < 1:
        raise ArgumentError(with_location(
            f"odeint: mxstep must be a positive integer, got {mxstep!r}"))
    mxstep = int(mxstep)

    y_leaves, y_tree = flatten(y0)
    y_leaves = [x if is_tracer(x) else np.asarray(x) for x in y_leaves]
    dtype = _state_dtype(y_leaves)
    # (each leaf in its own floating-point dtype, as func sees it and odeint returns it)
    y_avals = [(tuple(shape_of(x)), np.dtype(dtype_of(x)) if is_float(dtype_of(x))
                else dtype) for x in y_leaves]
    ys_ravel = _Ravel(y_avals, dtype)
    ts = _check_times(t, dtype)
    a_leaves, a_tree = flatten(list(args))
    a_leaves = [x if is_tracer(x) else np.asarray(x) for x in a_leaves]
    a_avals = [(tuple(shape_of(x)), np.dtype(dtype_of(x))) for x in a_leaves]
    for (shape, d) in a_avals:
        if d.kind not in "biuf":
            raise ArgumentError(with_location(
                f"odeint: args must be pytrees of real arrays and numbers, got dtype {d}"))

    # func traced once: the Graph of (y leaves, t, arg leaves, values read from outside)
    def flat_func(*xs):
        ny, na = len(y_leaves), len(a_leaves)
        out = func(unflatten(y_tree, list(xs[:ny])), xs[ny],
                   *unflatten(a_tree, list(xs[ny + 1:ny + 1 + na])))
        leaves, tree = flatten(out)
        if tree != y_tree or any(tuple(shape_of(o)) != shape
                                 for o, (shape, _) in zip(leaves, y_avals)):
            want = [s for s, _ in y_avals]
            got = [tuple(shape_of(o)) for o in leaves]
            if len(want) == len(got) == 1 and tree == y_tree:
                detail = f"shape {want[0]}, got {got[0]}"
            else:
                detail = f"{y_tree} with shapes {want}, got {tree} with shapes {got}"
            raise ArgumentError(with_location(
                f"odeint: func(y, t, *args) must return the structure and shapes of y0: "
                f"{detail}"))
        return [o if is_tracer(o) else np.asarray(o, dtype) for o in leaves]

    graph, _, captured = trace_graph(flat_func, y_avals + [((), dtype)] + a_avals)
    captured = list(captured)
    for o in graph.outputs:
        if not is_float(o.dtype) and o.dtype != dtype:
            raise ArgumentError(with_location(
                f"odeint: func(y, t, *args) must return floating-point values, got "
                f"{o.dtype}"))
    # every parameter of the dynamics, as one flat list: func's args, then its closure
    params = a_leaves + captured
    floats = [is_float(dtype_of(p)) for p in params]
    th_ravel = _Ravel([(tuple(shape_of(p)), np.dtype(dtype_of(p)))
                             for p, f in zip(params, floats) if f], dtype)

    def dynamics(y, t, ps):
        """func on the state vector: f(y, t) as a vector of ``dtype``."""
        outs = eval_graph(graph, ys_ravel.unravel(y) + [t] + list(ps))
        return ys_ravel.ravel(outs)

    label = "odeint" if unlimited else f"odeint (mxstep={mxstep})"

    def solution(y0v, ts, ps):
        ys, ok, stopped, h = _solve(lambda y, t: dynamics(y, t, ps), y0v, ts, rtol, atol,
                                    mxstep, hmax)
        report(ok, stopped, what=label, where=where)
        return ys, h

    def forward(y0v, ts, *ps):
        return solution(y0v, ts, ps)[0]

    def odeint_fwd(y0v, ts, *ps):
        ys, h = solution(y0v, ts, ps)
        return ys, (ys, ts, ps, h)

    def odeint_adjoint(res, g):
        ys, ts, ps, h = res
        return _adjoint(dynamics, ys, ts, ps, floats, th_ravel, g, h, rtol, atol, mxstep,
                        hmax, label, where)

    forward.__name__ = forward.__qualname__ = "odeint"     # (how errors name it)
    solve = custom_vjp(forward)
    solve.defvjp(odeint_fwd, odeint_adjoint)
    n = int(shape_of(ts)[0])
    if ys_ravel.size == 0:                    # (nothing to solve: y0's empty leaves)
        return unflatten(y_tree, [np.zeros((n,) + shape, d) for shape, d in y_avals])
    ps = [p if is_tracer(p) or isinstance(p, np.ndarray) else np.asarray(p) for p in params]
    ys = solve(ys_ravel.ravel(y_leaves), ts, *ps)
    return unflatten(y_tree, ys_ravel.unravel(ys, batch=n))


def _adjoint(dynamics, ys, ts, ps, floats, th_ravel, g, h, rtol, atol, mxstep, hmax,
             label, where):
    """The cotangents of ``(y0, ts, *ps)`` given ``g``, the cotangent of ``ys``: the
    adjoint ODE backwards over each interval (see the module's docstring).  Its first
    step is the forward solve's last (``h``), then each interval starts with the step
    size the last ended with; each step evaluates its first stage, so that the
    augmented dynamics (a VJP of ``func``) appear once in the program, in the loop."""
    from ..api import vjp
    from ..prims.implicit import report
    from ..prims.loops import scan
    n_y = int(shape_of(ys)[1])
    n_th = th_ravel.size
    fixed = [p for p, f in zip(ps, floats) if not f]
    dtype = np.dtype(dtype_of(ys))

    def with_params(float_ps):
        it, other = iter(float_ps), iter(fixed)
        return [next(it) if f else next(other) for f in floats]

    float_ps = [p for p, f in zip(ps, floats) if f]

    def augmented(z, s):
        """d/ds of (y, a, θ̄) in reversed time s = -t."""
        y, a = z[:n_y], z[n_y:2 * n_y]
        t = -s
        f, pull = vjp(lambda y, *fp: dynamics(y, t, with_params(fp)), y, *float_ps)
        cts = pull(a)
        parts = [-f, cts[0]]
        if n_th:
            parts.append(th_ravel.ravel(list(cts[1:])))
        return np.concatenate(parts)

    def interval(carry, x):
        a, th, h, ok, stopped = carry
        y_i, t_i, t_prev, g_i = x
        a = a + g_i
        t_bar = np.dot(dynamics(y_i, t_i, ps), g_i)
        z0 = np.concatenate([y_i, a, th])
        s0, s1 = -t_i, -t_prev
        coeffs = np.stack([z0] + [np.zeros_like(z0)] * 4)
        state = (z0, np.zeros_like(z0), s0, h, s0, coeffs, np.int64(0))
        state, z1 = _advance(augmented, state, s1, rtol, atol, mxstep, hmax, fsal=False)
        reached = state[2] >= s1
        stopped = np.where(ok & ~reached, -state[2], stopped)
        return (z1[n_y:2 * n_y], z1[2 * n_y:], state[3], ok & reached, stopped), t_bar

    a0 = np.zeros(n_y, dtype)
    th0 = np.zeros(n_th, dtype)
    (a, th, _, ok, stopped), t_bars = scan(
        interval, (a0, th0, h, np.asarray(True), ts[-1]),
        (ys[1:], ts[1:], ts[:-1], g[1:]), reverse=True)
    report(ok, stopped, what=label.replace("odeint", "odeint's adjoint", 1), where=where)
    t0_bar = -np.dot(dynamics(ys[0], ts[0], ps), a)
    y0_bar = a + g[0]
    ts_bar = np.concatenate([t0_bar[None], t_bars])
    th_parts = iter(th_ravel.unravel(th))
    ps_bar = tuple(next(th_parts) if f else None for f in floats)
    return (y0_bar, ts_bar) + ps_bar
