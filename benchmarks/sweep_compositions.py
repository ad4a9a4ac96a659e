"""Transformations composed over control flow, implicit layers and custom rules.

    PYTHONPATH=. python benchmarks/sweep_compositions.py                  # float64, CPU
    PYTHONPATH=. python benchmarks/sweep_compositions.py --float32
    PYTHONPATH=. python benchmarks/sweep_compositions.py --vmap
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=. python benchmarks/sweep_compositions.py --cuda
    PYTHONPATH=. python benchmarks/sweep_compositions.py --only fixed_point scan

Each case is a scalar function of a float vector built on one of gradc's higher-order
pieces: ``fixed_point``, ``argmin`` (with and without constraints), ``linear_solve``,
``while_loop`` (fixed and data-dependent trip counts, ``checkpoint=``), ``scan``,
``fori_loop``, ``cond``, ``checkpoint``, ``custom_vjp``, ``custom_jvp``, ``logsumexp``.

* default: ``grad`` against central differences of the function; ``hessian``,
  ``jacfwd(grad)``, ``jacrev(grad)``, ``hvp`` (both methods), ``jvp(grad)``,
  ``linearize(grad)`` against central differences of ``grad``; ``jit(grad)``,
  ``vmap(grad)`` and ``vjp`` against ``grad``.
* ``--float32``: each transformation on float32 inputs against the same on float64
  (relative 2e-3), the result float32, and no warning raised.
* ``--vmap``: ``vmap`` with ``in_axes`` (0, 1, None) and ``out_axes``, ``vmap(hessian)``,
  ``jacfwd``/``jacrev`` of ``vmap``, ``vmap(vmap(grad))``, each against a Python loop.
* ``--cuda``: ``grad``, ``hvp`` and ``vmap(grad)`` on ``target="cuda"`` against the CPU
  target (1e-9).

Prints a line per check and the number that failed (the exit status is 1 if any did).
See docs/benchmarks.md (thirty-third session).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings

os.environ.setdefault("GRADC_CACHE_DIR", tempfile.mkdtemp(prefix="gradc-sweep-cache-"))

import numpy as np  # noqa: E402

import gradc  # noqa: E402

N = 4


def _cases():
    """name -> f(x), a float vector of N entries in (0.2, 0.8)."""
    def fixed_point(x):
        z = gradc.fixed_point(lambda z, p: 0.5 * np.tanh(z * p) + 0.1 * p, np.zeros_like(x), x)
        return np.sum(z ** 2) + np.sum(z * x)

    def argmin(x):
        z = gradc.argmin(lambda z, p: np.sum((z - p) ** 2) + 0.1 * np.sum(z ** 4),
                         np.zeros_like(x), x)
        return np.sum(np.sin(z))

    def argmin_constrained(x):
        z = gradc.argmin(lambda z, p: np.sum((z - p) ** 2) + 0.1 * np.sum(z ** 4),
                         np.zeros_like(x), x,
                         constraints=dict(eq=lambda z, p: np.sum(z) - 1.0))
        return np.sum(np.sin(z) * x)

    def linear_solve(x):
        y = gradc.linear_solve(lambda v: (2 + x ** 2) * v + 0.1 * x * np.dot(x, v), np.cos(x))
        return np.sum(y * x)

    def linear_solve_symmetric(x):
        y = gradc.linear_solve(lambda v: (2 + x ** 2) * v + 0.1 * x * np.dot(x, v), np.cos(x),
                               symmetric=True)
        return np.sum(y * x)

    def while_loop(x):
        return np.sum(gradc.while_loop(lambda s: s[0] < 5,
                                       lambda s: (s[0] + 1, np.tanh(s[1] * 1.1 + x)),
                                       (0, x))[1] ** 2)

    def while_checkpointed(x):
        return np.sum(gradc.while_loop(lambda s: s[0] < 6,
                                       lambda s: (s[0] + 1, np.sin(s[1]) + 0.3 * x),
                                       (0, x), checkpoint=2)[1] ** 2)

    def while_data_dependent(x):
        return gradc.while_loop(lambda s: s[1] < 10.0,
                                lambda s: (s[0] + 1, s[1] * 1.5 + np.sum(x ** 2)),
                                (0, 1.0 + 0.1 * np.sum(x)))[1]

    def scan(x):
        def step(c, xi):
            c2 = np.sin(c) * xi + c
            return c2, c2 ** 2
        c, ys = gradc.scan(step, x, np.stack([x, x ** 2, x * 3]))
        return np.sum(c) + np.sum(ys)

    def fori_loop(x):
        return np.sum(gradc.fori_loop(0, 4, lambda i, v: np.sin(v) * x + i * 0.1, x))

    def cond(x):
        return gradc.cond(np.sum(x) > 0, lambda y: np.sum(y ** 3), lambda y: np.sum(np.cos(y)), x)

    def checkpoint(x):
        g = gradc.checkpoint(lambda y: np.exp(np.sin(y)) * y)
        return np.sum(g(g(x)))

    @gradc.custom_vjp
    def cube_vjp(x):
        return x ** 3
    cube_vjp.defvjp(lambda x: (x ** 3, x), lambda r, g: (3 * r ** 2 * g,))

    def custom_vjp(x):
        return np.sum(np.sin(cube_vjp(x)))

    @gradc.custom_jvp
    def cube_jvp(x):
        return x ** 3

    @cube_jvp.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return x ** 3, 3 * x ** 2 * t

    def custom_jvp(x):
        return np.sum(np.sin(cube_jvp(x)) * x)

    def logsumexp(x):
        return gradc.logsumexp(x * np.arange(1.0, N + 1)) + np.sum(gradc.softmax(x) ** 2)

    return {k: v for k, v in locals().items() if callable(v) and not k.startswith("cube")
            and k != "_"}


def _fd(f, x, eps=1e-5):
    """Central differences of f (any output shape) w.r.t. vector x: out shape + (N,)."""
    cols = [(np.asarray(f(x + eps * e)) - np.asarray(f(x - eps * e))) / (2 * eps)
            for e in np.eye(len(x))]
    return np.stack(cols, axis=-1)


class Report:
    def __init__(self):
        self.failed = 0
        self.checks = 0

    def __call__(self, case, what, run, tol):
        """run() -> (error, note); prints a line, counts a failure."""
        self.checks += 1
        try:
            err, note = run()
            ok = err < tol and not note
            text = f"{err:.1e} {note}".rstrip()
        except Exception as e:            # a failure of this check, reported as such
            ok, text = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        self.failed += not ok
        print(f"{case:24s} {what:20s} {'ok ' if ok else 'BAD'} {text}", flush=True)


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def sweep_float64(cases, x, v, X, report):
    for name, f in cases.items():
        g = gradc.grad(f)
        report(name, "grad vs fd", lambda: (_max_err(g(x), _fd(f, x)), ""), 1e-5)
        H = _fd(g, x)
        second = {
            "hessian": lambda: gradc.hessian(f)(x),
            "jacfwd(grad)": lambda: gradc.jacfwd(g)(x),
            "jacrev(grad)": lambda: gradc.jacrev(g)(x),
        }
        for what, run in second.items():
            report(name, what, lambda run=run: (_max_err(run(), H), ""), 1e-5)
        along = {
            "hvp fwd-rev": lambda: gradc.hvp(f, (x,), (v,)),
            "hvp rev-rev": lambda: gradc.hvp(f, (x,), (v,), method="rev-rev"),
            "jvp(grad)": lambda: gradc.jvp(g, (x,), (v,))[1],
            "linearize(grad)": lambda: gradc.linearize(g, x)[1](v),
        }
        for what, run in along.items():
            report(name, what, lambda run=run: (_max_err(run(), H @ v), ""), 1e-5)
        same = {
            "jit(grad)": lambda: (gradc.jit(g)(x), g(x)),
            "vjp": lambda: (gradc.vjp(f, x)[1](1.0)[0], g(x)),
            "vmap(grad)": lambda: (gradc.vmap(g)(X), np.stack([g(r) for r in X])),
        }
        for what, run in same.items():
            report(name, what, lambda run=run: (_max_err(*run()), ""), 1e-10)


def sweep_float32(cases, x, v, X, report):
    x32, v32, X32 = (a.astype(np.float32) for a in (x, v, X))
    for name, f in cases.items():
        runs = {
            "grad": lambda x, v, X: gradc.grad(f)(x),
            "hessian": lambda x, v, X: gradc.hessian(f)(x),
            "hvp": lambda x, v, X: gradc.hvp(f, (x,), (v,)),
            "jvp(grad)": lambda x, v, X: gradc.jvp(gradc.grad(f), (x,), (v,))[1],
            "vmap(grad)": lambda x, v, X: gradc.vmap(gradc.grad(f))(X),
            "jacrev(grad)": lambda x, v, X: gradc.jacrev(gradc.grad(f))(x),
        }
        for what, run in runs.items():
            def check(run=run):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    got = np.asarray(run(x32, v32, X32))
                want = np.asarray(run(x, v, X))
                note = "" if got.dtype == np.float32 else f"dtype {got.dtype}"
                if caught:
                    note += " warned: " + str(caught[0].message).splitlines()[0][:100]
                return _max_err(got, want) / max(1e-3, float(np.max(np.abs(want)))), note
            report(name, what + " f32", check, 2e-3)


def sweep_vmap(cases, x, v, X, report):
    B = X.shape[0]
    P = np.random.default_rng(3).uniform(0.2, 0.8, (N, B))
    for name, f1 in cases.items():
        def f(x, p, f1=f1):                   # two arguments: batched on different axes
            return f1(x * p)
        g = gradc.grad(f, argnums=(0, 1))
        loop = [g(X[b], P[:, b]) for b in range(B)]

        def both(vg):
            return np.concatenate([np.ravel(vg[0]), np.ravel(vg[1])])
        want = both((np.stack([r[0] for r in loop]), np.stack([r[1] for r in loop])))
        hess = gradc.hessian(f)
        checks = {
            "in_axes=(0, 1)": lambda: _max_err(both(gradc.vmap(g, in_axes=(0, 1))(X, P)), want),
            "in_axes=(0, None)": lambda: _max_err(
                gradc.vmap(g, in_axes=(0, None))(X, P[:, 0])[0],
                np.stack([g(X[b], P[:, 0])[0] for b in range(B)])),
            "out_axes=1": lambda: _max_err(
                gradc.vmap(gradc.grad(f), in_axes=(0, 1), out_axes=1)(X, P),
                np.stack([r[0] for r in loop], axis=1)),
            "vmap(hessian)": lambda: _max_err(
                gradc.vmap(hess, in_axes=(0, 1))(X, P),
                np.stack([hess(X[b], P[:, b]) for b in range(B)])),
            "jacfwd(vmap)": lambda: _max_err(
                gradc.jacfwd(lambda X: gradc.vmap(f, in_axes=(0, 1))(X, P))(X),
                np.einsum("ab,bn->abn", np.eye(B), np.stack([r[0] for r in loop]))),
            "jacrev(vmap)": lambda: _max_err(
                gradc.jacrev(lambda X: gradc.vmap(f, in_axes=(0, 1))(X, P))(X),
                np.einsum("ab,bn->abn", np.eye(B), np.stack([r[0] for r in loop]))),
            "vmap(vmap(grad))": lambda: _max_err(
                gradc.vmap(gradc.vmap(gradc.grad(f), in_axes=(0, None)),
                           in_axes=(None, 1))(X, P),
                np.stack([np.stack([gradc.grad(f)(X[a], P[:, b]) for a in range(B)])
                          for b in range(B)])),
        }
        for what, run in checks.items():
            report(name, what, lambda run=run: (run(), ""), 1e-8)


def sweep_cuda(cases, x, v, X, report):
    for name, f in cases.items():
        runs = {
            "grad": lambda t: gradc.grad(f, target=t)(x),
            "hvp": lambda t: gradc.hvp(f, (x,), (v,), target=t),
            "vmap(grad)": lambda t: gradc.vmap(gradc.grad(f), target=t)(X),
        }
        for what, run in runs.items():
            report(name, what + " cuda", lambda run=run: (
                _max_err(np.asarray(run("cuda")), run("cpu")), ""), 1e-9)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--float32", action="store_true")
    mode.add_argument("--vmap", action="store_true")
    mode.add_argument("--cuda", action="store_true")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x, v = rng.uniform(0.2, 0.8, N), rng.standard_normal(N)
    X = rng.uniform(0.2, 0.8, (3, N))
    cases = _cases()
    if args.only:
        unknown = set(args.only) - set(cases)
        if unknown:
            parser.error(f"unknown cases {sorted(unknown)}; known: {sorted(cases)}")
        cases = {k: f for k, f in cases.items() if k in args.only}
    sweep = (sweep_float32 if args.float32 else sweep_vmap if args.vmap
             else sweep_cuda if args.cuda else sweep_float64)
    report = Report()
    with warnings.catch_warnings():
        if not args.float32:
            warnings.simplefilter("ignore", gradc.GradcWarning)
        sweep(cases, x, v, X, report)
    print(f"{report.failed} of {report.checks} checks failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
