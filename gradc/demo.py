"""``gradc demo``: a tour of gradc on a function shipped with it (no files needed).

It traces :func:`example`, prints its IR, the IR of its gradient after the passes and
the generated code, checks the gradient against SymPy and finite differences, and times
the compiled gradient against NumPy central differences.
"""
from __future__ import annotations

import inspect
import time

import numpy as np


def example(x):
    """Rosenbrock's valley plus a soft penalty: smooth, cheap, and non-trivial."""
    valley = np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return valley + 0.5 * np.sum(np.log1p(x ** 2))


def _best(fn, *args, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def run(out, quick=False) -> int:
    import gradc
    from gradc.testing import numerical_grad      # central differences, one per element
    rule = "=" * 72

    def section(title):
        print(f"\n{rule}\n# {title}\n{rule}", file=out)

    target = "numpy" if quick else "cpu"
    x = np.linspace(-0.8, 1.2, 4)
    section("the function (gradc.demo.example)")
    print(inspect.getsource(example).rstrip(), file=out)
    section("1. traced IR at x: f64[4] (gradc.make_graph(example)(x))")
    print(gradc.make_graph(example)(x), file=out)
    g = gradc.grad(example, target=target)
    section(f"2. the gradient's IR after the passes (gradc.grad(example).graph(x), "
            f"target={target!r})")
    print(g.graph(x), file=out)
    if not quick:
        section("3. the generated code Numba compiles (gradc.grad(example).source(x))")
        print(g.source(x), file=out)
    section("4. checked against SymPy and finite differences (gradc.check)")
    report = gradc.check(example, x, targets=(target,) if quick else ("numpy", "cpu"))
    print(report, file=out)
    section("5. SymPy's view of the gradient (gradc.to_sympy(gradc.grad(example))(x))")
    for i, e in enumerate(gradc.to_sympy(gradc.grad(example))(x)):
        print(f"d/dx_{i} = {e}", file=out)
    section("6. timing at n = 1000: the compiled gradient vs NumPy central differences")
    n = 1000
    xs = np.linspace(-0.8, 1.2, n)
    fast = gradc.grad(example, target=target)
    fast(xs)
    t_gradc = _best(fast, xs)
    t_fd = _best(numerical_grad, example, xs, repeat=1)
    err = float(np.max(np.abs(fast(xs) - numerical_grad(example, xs))))
    print(f"gradc.grad ({target}): {t_gradc * 1e3:.3f} ms; NumPy finite differences "
          f"({2 * n} evaluations): {t_fd * 1e3:.1f} ms; {t_fd / t_gradc:.0f}x faster; "
          f"largest difference {err:.1e} (the differences' own error)", file=out)
    return 0 if report.ok else 1
