"""Differential fuzzing of gradc: random small NumPy programs, their derivatives compared
across the interpreter, the optimised (fused) graph run by the interpreter, the compiled
CPU code, the CUDA code (Numba's simulator without a GPU) and finite differences.

    PYTHONPATH=. python benchmarks/fuzz_programs.py --seed 0 --n 200 --tier graph
    PYTHONPATH=. python benchmarks/fuzz_programs.py --seed 0 --n 50 --tier cpu
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=. python benchmarks/fuzz_programs.py --tier cuda

Tiers: ``graph`` (no compiling: the traced graph's gradient by the interpreter against
the one after ``optimise(graph, "cpu"/"cuda")``, finite differences, and JVP against
VJP), ``cpu`` (adds jit(f), grad(f) and jvp/vjp compiled for the CPU), ``cuda`` (grad
compiled for CUDA).  Each failing program is printed as Python source with its seed; a
compiled target falling back to the interpreter (Numba could not compile) is a failure.
``--small-limits`` makes fusion's bounds (MAX_BODY, DUPLICATE_MAX, UFUNC_ELEMENTS), the
threading thresholds and CUDA's one-block runs small enough for small programs to reach
them (and tries target="parallel" too); ``--big``: 10 to 30 operations.
``NUMBA_DISABLE_JIT=1`` runs the generated CPU code as Python: the lowering's logic,
without Numba's compile time (a few times more programs a minute), not its typing.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import traceback

os.environ.setdefault("GRADC_NATIVE", "0")
os.environ.setdefault("GRADC_CACHE_DIR", tempfile.mkdtemp(prefix="gradc-fuzz-cache-"))

import numpy as np  # noqa: E402

SHAPES = [(5,), (4, 3), (2, 3, 4), (3,), (3, 4), (6,), (1,), (1, 4), (3, 1), (2, 1, 3), ()]

UNARY = [
    "np.sin({a})", "np.cos({a})", "np.tanh({a})", "np.exp(np.tanh({a}))",
    "np.log(1.0 + {a} * {a})", "np.sqrt(1.0 + {a} * {a})", "{a} * {a}",
    "{a} / (2.0 + np.cos({a}))", "1.0 / (1.0 + {a} * {a})", "0.5 * {a} + 1.0", "-{a}",
    "{a} - 0.3", "np.abs({a})", "np.where({a} > 0.1, {a}, np.sin({a}))",
    "np.maximum({a}, 0.2 * {a})", "{a} ** 3", "np.clip({a}, -0.6, 0.6)",
]
KINKS = ("abs", "where", "maximum", "minimum", "clip", "max(", "sort")
BINARY = [
    "{a} + {b}", "{a} - {b}", "{a} * {b}", "{a} / (1.5 + {b} * {b})",
    "np.maximum({a}, {b})", "np.minimum({a}, {b})", "np.where({a} > {b}, {a}, {b} * {b})",
    "0.5 * {a} - 2.0 * {b}",
]


def _bcast(s, t):
    try:
        return tuple(np.broadcast_shapes(s, t))
    except ValueError:
        return None


class Gen:
    def __init__(self, rng, n_inputs):
        self.rng = rng
        self.lines = []
        self.pool = []        # (name, shape)
        self.used = set()
        self.count = 0
        self.inputs = []
        for i in range(n_inputs):
            shape = SHAPES[rng.integers(len(SHAPES))]
            if i == 0 and shape == ():
                shape = (4,)
            self.inputs.append(shape)
            self.pool.append((f"x{i}", shape))

    def new(self, expr, shape, indent=""):
        name = f"v{self.count}"
        self.count += 1
        self.used.update(re.findall(r"\b[vx]\d+\b", expr))
        self.lines.append(f"{indent}{name} = {expr}")
        self.pool.append((name, shape))
        return name, shape

    def pick(self, recent=True):
        pool = [p for p in self.pool if p[1] != ()]
        if recent and self.rng.random() < 0.6:
            return pool[-1 - self.rng.integers(min(3, len(pool)))]
        return pool[self.rng.integers(len(pool))]

    def choice(self, seq):
        return seq[self.rng.integers(len(seq))]

    # -- ops --------------------------------------------------------------------------
    def unary(self):
        a, s = self.pick()
        return self.new(self.choice(UNARY).format(a=a), s)

    def binary(self):
        a, s = self.pick()
        partners = [(b, t) for b, t in self.pool if _bcast(s, t) is not None
                    and len(_bcast(s, t)) <= 3 and np.prod(_bcast(s, t)) <= 40]
        b, t = self.choice(partners)
        return self.new(self.choice(BINARY).format(a=a, b=b), _bcast(s, t))

    def keep_reduce_bcast(self):
        """a op reduce(a, axis, keepdims): a broadcast against (1,n)/(n,1)."""
        a, s = self.pick()
        ax = int(self.rng.integers(len(s)))
        red = self.choice(["np.sum", "np.mean", "np.max"])
        op = self.choice(["-", "*", "+"])
        return self.new(f"{a} {op} {red}({a}, axis={ax}, keepdims=True)", s)

    def reduce(self):
        a, s = self.pick()
        if len(s) == 1 and self.rng.random() < 0.7:
            return self.unary()
        ax = int(self.rng.integers(len(s)))
        keep = bool(self.rng.random() < 0.4)
        red = self.choice(["np.sum", "np.mean", "np.max", "np.min", "np.cumsum"])
        if red == "np.cumsum":
            return self.new(f"np.cumsum({a}, axis={ax})", s)
        t = tuple(1 if i == ax else d for i, d in enumerate(s)) if keep else \
            tuple(d for i, d in enumerate(s) if i != ax)
        return self.new(f"{red}({a}, axis={ax}, keepdims={keep})", t)

    SLICES = [("1:", lambda n: n - 1, 2), (":-1", lambda n: n - 1, 2),
              ("::2", lambda n: (n + 1) // 2, 2), ("1:-1", lambda n: n - 2, 3),
              ("::-1", lambda n: n, 1), ("2:", lambda n: n - 2, 3),
              (":-2", lambda n: n - 2, 3), ("1::2", lambda n: n // 2, 2),
              ("-3:", lambda n: 3, 4), ("::-2", lambda n: (n + 1) // 2, 2),
              ("-2::-1", lambda n: n - 1, 2)]

    def slice(self):
        a, s = self.pick()
        idx, shape = [], []
        for d in s:
            opts = [sl for sl in self.SLICES if d >= sl[2]]
            if self.rng.random() < 0.5 and opts:
                txt, f, _ = self.choice(opts)
                idx.append(txt)
                shape.append(f(d))
            else:
                idx.append(":")
                shape.append(d)
        while idx and idx[-1] == ":":
            idx.pop()
        if not idx:
            return None
        return self.new(f"{a}[{', '.join(idx)}]", tuple(shape))

    def shifted_product(self):
        """x[1:]*x[:-1] along an axis, values read at several offsets."""
        a, s = self.pick()
        ax = int(self.rng.integers(len(s)))
        if s[ax] < 3:
            return None
        pre = ":, " * ax
        kind = self.rng.integers(3)
        t = list(s)
        if kind == 0:
            t[ax] -= 1
            return self.new(f"{a}[{pre}1:] * {a}[{pre}:-1]", tuple(t))
        if kind == 1:
            t[ax] -= 2
            return self.new(f"0.25 * {a}[{pre}:-2] + 0.5 * {a}[{pre}1:-1] + 0.25 * "
                            f"{a}[{pre}2:]", tuple(t))
        t[ax] -= 1
        return self.new(f"{a}[{pre}1:] - {a}[{pre}:-1] ** 2", tuple(t))

    def pad(self):
        a, s = self.pick()
        widths = [(int(self.rng.integers(3)), int(self.rng.integers(3))) for _ in s]
        mode = self.choice(["", "", "", ", mode='edge'", ", mode='reflect'", ", mode='wrap'",
                            ", constant_values=0.5"])
        if "reflect" in mode or "wrap" in mode:
            widths = [(min(lo, d - 1), min(hi, d - 1)) for (lo, hi), d in zip(widths, s)]
        t = tuple(d + lo + hi for d, (lo, hi) in zip(s, widths))
        if np.prod(t) > 60:
            return None
        return self.new(f"np.pad({a}, {tuple(widths)}{mode})", t)

    def concat(self):
        a, s = self.pick()
        ax = int(self.rng.integers(len(s)))
        pre = ":, " * ax
        others = [b for b, t in self.pool if len(t) == len(s)
                  and all(t[i] == s[i] for i in range(len(s)) if i != ax)]
        kind = self.rng.integers(3)
        t = list(s)
        if kind == 0 and s[ax] >= 2:
            t[ax] = s[ax]
            return self.new(f"np.concatenate([{a}[{pre}1:], {a}[{pre}:1]], axis={ax})",
                            tuple(t))
        b = self.choice(others)
        bt = dict(self.pool)[b]
        t[ax] = s[ax] + bt[ax]
        if np.prod(t) > 60:
            return None
        return self.new(f"np.concatenate([{a}, {self.choice(['', '-', '0.5 * '])}{b}], "
                        f"axis={ax})", tuple(t))

    def roll(self):
        a, s = self.pick()
        shift = int(self.choice([1, -1, 2, -2, 3]))
        if self.rng.random() < 0.2:
            return self.new(f"np.roll({a}, {shift})", s)
        ax = int(self.rng.integers(len(s)))
        if self.rng.random() < 0.3:
            return self.new(f"np.roll(np.roll({a}, {shift}, axis={ax}), 1, axis={ax})", s)
        return self.new(f"np.roll({a}, {shift}, axis={ax})", s)

    def stack(self):
        a, s = self.pick()
        if len(s) >= 3:
            return None
        ax = int(self.rng.integers(len(s) + 1))
        b = self.choice([b for b, t in self.pool if t == s])
        t = list(s)
        t.insert(ax, 2)
        return self.new(f"np.stack([{a}, np.sin({b})], axis={ax})", tuple(t))

    def transpose(self):
        a, s = self.pick()
        if len(s) == 1:
            return self.new(f"{a}[::-1]", s)
        perm = [int(p) for p in self.rng.permutation(len(s))]
        kind = self.rng.integers(3)
        if kind == 0:
            return self.new(f"{a}.T", tuple(reversed(s)))
        if kind == 1:
            return self.new(f"np.flip({a}, axis={int(self.rng.integers(len(s)))})", s)
        return self.new(f"np.transpose({a}, {tuple(perm)})", tuple(s[p] for p in perm))

    def reshape(self):
        a, s = self.pick()
        n = int(np.prod(s))
        opts = [(n,)] + [(p, n // p) for p in range(2, n) if n % p == 0]
        opts += [(p, q, n // p // q) for p in range(2, n) for q in range(2, n)
                 if n % (p * q) == 0 and n // p // q >= 2]
        t = self.choice(opts)
        return self.new(f"{a}.reshape({tuple(t)})", tuple(t))

    def expand(self):
        """outer broadcast: a[:, None] * b[None, :] of two vectors."""
        vecs = [(b, t) for b, t in self.pool if len(t) == 1]
        if not vecs:
            return None
        a, s = self.choice(vecs)
        b, t = self.choice(vecs)
        return self.new(f"{a}[:, None] * np.cos({b})[None, :]", (s[0], t[0]))

    def matmul(self):
        a, s = self.pick()
        if len(s) == 1:
            return self.new(f"{a} @ np.sin({a})", ())
        if len(s) == 2:
            kind = self.rng.integers(4)
            if kind == 0:
                return self.new(f"{a} @ {a}.T / 4.0", (s[0], s[0]))
            if kind == 1:
                return self.new(f"np.tanh({a}.T @ {a})", (s[1], s[1]))
            if kind == 2:
                return self.new(f"np.einsum('ij,ij->i', {a}, np.cos({a}))", (s[0],))
            vecs = [b for b, t in self.pool if t == (s[1],)]
            if vecs:
                return self.new(f"{a} @ {self.choice(vecs)}", (s[0],))
            return self.new(f"np.einsum('ij,kj->ik', {a}, np.sin({a}))", (s[0], s[0]))
        return self.new(f"np.einsum('ijk,ij->ik', {a}, {a}[:, :, 0])", (s[0], s[2]))

    def pyloop(self):
        a, s = self.pick()
        k = int(self.rng.integers(5, 31))
        ax = int(self.rng.integers(len(s)))
        pre = ":, " * ax
        name, _ = self.new(f"{a}", s)
        bodies = [
            f"{name} = 0.9 * {name} + 0.05 * (np.roll({name}, 1, axis={ax}) + "
            f"np.roll({name}, -1, axis={ax}))",
            f"{name} = np.tanh({name} + 0.1 * np.roll({name}, 1, axis={ax}))",
        ]
        if s[ax] >= 3:
            bodies += [
                f"{name} = np.concatenate([{name}[{pre}:1], 0.25 * {name}[{pre}:-2] + 0.5 * "
                f"{name}[{pre}1:-1] + 0.25 * {name}[{pre}2:], {name}[{pre}-1:]], axis={ax})",
                f"{name} = {name} + 0.1 * np.pad({name}[{pre}1:] * {name}[{pre}:-1], "
                f"{tuple((0, 1) if i == ax else (0, 0) for i in range(len(s)))})",
                f"{name} = np.sin({name}) * 0.5 + 0.5 * np.pad({name}[{pre}1:-1], "
                f"{tuple((1, 1) if i == ax else (0, 0) for i in range(len(s)))}, mode='edge')",
            ]
        self.lines.append(f"for _ in range({k}):")
        self.lines.append("    " + self.choice(bodies))
        return name, s

    def pyloop_param(self):
        """An unrolled loop reading a parameter at a step-dependent index (w[k % n]):
        reverse mode sums one pad/reshape/broadcast per step (``passes.sums``)."""
        a, s = self.pick()
        params = [(b, t) for b, t in self.pool if len(t) >= 1 and
                  _bcast(s, t[1:]) == s]
        if not params:
            return None
        b, t = self.choice(params)
        k = int(self.rng.integers(5, 31))
        name, _ = self.new(f"{a}", s)
        self.used.add(b)
        m = t[0]
        ax = int(self.rng.integers(len(s)))
        body = self.choice([
            f"{name} = np.tanh({name} * {b}[k % {m}] + 0.1)",
            f"{name} = 0.9 * {name} + 0.1 * np.sin({b}[k % {m}])",
            f"{name} = {name} + 0.05 * np.sum({b}[k % {m}] * {name}, axis={ax}, keepdims=True)",
            f"{name} = {name} * (1.0 + 0.1 * {b}[(k * 3) % {m}]) - 0.05 * {b}[k % {m}]",
            f"{name} = 0.8 * {name} + 0.1 * np.roll({name}, k % 3, axis={ax}) * {b}[k % {m}]",
        ])
        self.lines.append(f"for k in range({k}):")
        self.lines.append("    " + body)
        return name, s

    def fori(self):
        a, s = self.pick()
        k = int(self.rng.integers(3, 12))
        ax = int(self.rng.integers(len(s)))
        body = self.choice([
            "0.8 * u + 0.1 * np.sin(np.roll(u, 1, axis={ax}))",
            "np.tanh(u * 0.9 + 0.1 * i)",
            "u + 0.05 * (np.roll(u, 1, axis={ax}) - u) ** 2",
        ]).format(ax=ax)
        return self.new(f"gradc.fori_loop(0, {k}, lambda i, u: {body}, {a})", s)

    def scan(self):
        a, s = self.pick()
        if len(s) < 2:
            return None
        c = s[1:]
        body = self.choice([
            "lambda c, x: (0.9 * c + np.sin(x), c * x)",
            "lambda c, x: (np.tanh(c + x), c + x * x)",
            "lambda c, x: (c * 0.5 + x, np.cos(c))",
        ])
        init = f"np.zeros({c})" if self.rng.random() < 0.5 else f"{a}[0]"
        return self.new(f"gradc.scan({body}, {init}, {a})[1]", s)

    OPS = [("unary", 6), ("binary", 6), ("keep_reduce_bcast", 2), ("reduce", 2),
           ("slice", 4), ("shifted_product", 3), ("pad", 3), ("concat", 2), ("roll", 2),
           ("stack", 1), ("transpose", 2), ("reshape", 1), ("expand", 1), ("matmul", 1),
           ("pyloop", 1), ("pyloop_param", 2), ("fori", 1), ("scan", 1)]

    def build(self, n_ops, loops=True):
        names = [n for n, _ in self.OPS if loops or n not in ("fori", "scan")]
        weights = np.array([w for n, w in self.OPS if n in names], float)
        while self.count < n_ops:
            op = names[self.rng.choice(len(names), p=weights / weights.sum())]
            try:
                r = getattr(self, op)()
            except (ValueError, IndexError):
                r = None
            if r is not None and (len(r[1]) > 3 or np.prod(r[1]) > 60):
                r = None
            if r is None:
                continue
            if self.pool[-1][1] == ():          # a scalar: use it and go on
                pass
        # the result: weighted sums of every value nothing else reads (all stay live)
        outs = [(name, shape) for name, shape in self.pool if name.startswith("v")
                and name not in self.used]
        outs = outs or [self.pool[-1]]
        terms = []
        for k, (name, shape) in enumerate(outs):
            terms.append(f"np.sum(W({shape!r}, {k}) * {name})")
        args = ", ".join(f"x{i}" for i in range(len(self.inputs)))
        src = [f"def f({args}):"] + ["    " + ln for ln in self.lines]
        src.append(f"    return {' + '.join(terms)}")
        vsrc = [f"def fv({args}):"] + ["    " + ln for ln in self.lines]
        vsrc.append(f"    return ({', '.join(n for n, _ in outs)},)")
        return "\n".join(src), "\n".join(vsrc), None


CPU_TARGETS = ("cpu",)


def W(shape, k):
    n = int(np.prod(shape))
    return np.cos(0.7 * np.arange(n) + 0.3 + k).reshape(shape)


BIG = False        # (--big: programs of 10 to 30 operations)


def make(seed, loops=True):
    rng = np.random.default_rng(seed)
    gen = Gen(rng, int(rng.integers(1, 4)))
    src, vsrc, vshape = gen.build(int(rng.integers(10, 31) if BIG else rng.integers(2, 15)),
                                  loops=loops)
    xs = [rng.uniform(-1.0, 1.0, s) for s in gen.inputs]
    return src, vsrc, vshape, xs, rng


def compile_src(src):
    import gradc
    ns = {"np": np, "gradc": gradc, "W": W}
    exec(compile(src, "<fuzz>", "exec"), ns)
    return ns


def close(a, b, rtol=1e-6, atol=1e-9):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def check(seed, tier, loops=True, fd=True):
    """None if fine, else a description of the failure (a compiled target falling back
    to the interpreter because Numba could not compile its code is one)."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _check(seed, tier, loops, fd)
    fallbacks = [str(w.message) for w in caught if "could not compile" in str(w.message)]
    if fallbacks:
        msg = (msg or make(seed, loops)[0]) + "\nFALLBACK: " + "\n".join(fallbacks)
    return msg


def _check(seed, tier, loops=True, fd=True):
    import gradc
    from gradc.interpret import run
    from gradc.codegen.compile import optimise
    src, vsrc, vshape, xs, rng = make(seed, loops)
    f = compile_src(src)["f"]
    fv = compile_src(vsrc)["fv"]
    with np.errstate(all="ignore"):
        want = f(*xs)
    if not np.isfinite(want) or abs(want) > 1e6:
        return None
    argnums = tuple(range(len(xs)))
    problems = []
    try:
        g_ref = gradc.grad(f, argnums=argnums, target="numpy")(*xs)
    except gradc.UnsupportedError:
        return None
    v = [rng.normal(size=x.shape) for x in xs]
    gv = sum(np.sum(g * d) for g, d in zip(g_ref, v))
    if fd:
        kinky = any(k in src for k in KINKS)

        def fd_at(h):
            return (f(*[x + h * d for x, d in zip(xs, v)])
                    - f(*[x - h * d for x, d in zip(xs, v)])) / (2 * h)
        d1, d2 = fd_at(1e-6), fd_at(1e-5)
        smooth_here = abs(d1 - d2) <= 1e-5 * (1 + abs(d1))
        if (smooth_here or not kinky) and not np.isclose(gv, d1, rtol=1e-4, atol=1e-6):
            problems.append(f"FD: <grad, v> = {gv!r}, finite differences {d1!r} ({d2!r})")
    if tier in ("graph", "cpu"):
        graph = gradc.make_graph(gradc.grad(f, argnums=argnums, target="numpy"))(*xs)
        for target in ("cpu", "cuda"):
            try:
                opt = optimise(graph, target)
                got = run(opt, *xs)
            except Exception as e:   # noqa: BLE001
                problems.append(f"optimise({target}) crashed: {type(e).__name__}: {e}")
                continue
            for g, r in zip(got, g_ref):
                if not close(g, r):
                    problems.append(f"optimise({target}) + interpreter: {np.max(np.abs(g - r))}")
                    break
        # jvp against vjp on the vector-valued program, by the interpreter
        try:
            out, ct_fn = gradc.vjp(fv, *xs, target="numpy")
            u = tuple(rng.normal(size=np.shape(o)) for o in out)
            cts = ct_fn(u)
            _, tan = gradc.jvp(fv, tuple(xs), tuple(v), target="numpy")
            lhs = sum(np.sum(a * b) for a, b in zip(u, tan))
            rhs = sum(np.sum(c * d) for c, d in zip(cts, v))
            if not np.isclose(lhs, rhs, rtol=1e-8, atol=1e-10):
                problems.append(f"<u, J v> = {lhs!r} but <J^T u, v> = {rhs!r}")
            nx = len(xs)
            vgraph = gradc.make_graph(lambda *a: gradc.vjp(fv, *a[:nx], target="numpy")[1](
                tuple(a[nx:])))(*xs, *u)
            for target in ("cpu", "cuda"):
                got = run(optimise(vgraph, target), *xs, *u)
                if not all(close(g, c) for g, c in zip(got, cts)):
                    problems.append(f"vjp: optimise({target}) + interpreter differ")
        except gradc.UnsupportedError:
            pass
    if tier == "cpu":
        cpu = CPU_TARGETS[rng.integers(len(CPU_TARGETS))]
        try:
            got = gradc.jit(f, target=cpu)(*xs)
            if not close(got, want, rtol=1e-9):
                problems.append(f"jit(f) = {got!r}, NumPy {want!r}")
            got = gradc.grad(f, argnums=argnums, target=cpu)(*xs)
            for g, r in zip(got, g_ref):
                if not close(g, r):
                    problems.append(f"grad cpu: max diff {np.max(np.abs(g - r))}")
                    break
            if rng.random() < 0.3:
                _, tan = gradc.jvp(f, tuple(xs), tuple(v), target=cpu)
                if not np.isclose(tan, gv, rtol=1e-6, atol=1e-9):
                    problems.append(f"jvp cpu {tan!r} vs interpreter <grad, v> {gv!r}")
            if rng.random() < 0.4:          # the vector-valued program's VJP
                out, fn = gradc.vjp(fv, *xs, target="numpy")
                u = tuple(rng.normal(size=np.shape(o)) for o in out)
                want_ct = fn(u)
                got_ct = gradc.vjp(fv, *xs, target=cpu)[1](u)
                if not all(close(a, b) for a, b in zip(got_ct, want_ct)):
                    problems.append("vjp cpu differs from the interpreter's")
            if rng.random() < 0.3:          # Hessian-vector products, reverse over reverse
                def gdotv(*a, target):
                    g = gradc.grad(f, argnums=argnums, target=target)(*a)
                    return sum(np.sum(gi * d) for gi, d in zip(g, v))
                hv_ref = gradc.grad(lambda *a: gdotv(*a, target="numpy"), argnums=argnums,
                                    target="numpy")(*xs)
                hv = gradc.grad(lambda *a: gdotv(*a, target=cpu), argnums=argnums,
                                target=cpu)(*xs)
                if not all(close(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(hv, hv_ref)):
                    problems.append("hvp cpu differs from the interpreter's")
        except Exception as e:   # noqa: BLE001
            problems.append(f"cpu crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    if tier == "cuda":
        try:
            got = gradc.grad(f, argnums=argnums, target="cuda")(*xs)
            for g, r in zip(got, g_ref):
                if not close(np.asarray(g), r):
                    problems.append(f"grad cuda: max diff {np.max(np.abs(np.asarray(g) - r))}")
                    break
        except Exception as e:   # noqa: BLE001
            problems.append(f"cuda crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    if problems:
        return src + "\n# inputs: " + repr([x.shape for x in xs]) + "\n" + "\n".join(problems)
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--tier", default="graph", choices=["graph", "cpu", "cuda"])
    p.add_argument("--no-loops", action="store_true")
    p.add_argument("--show", action="store_true")
    p.add_argument("--small-limits", action="store_true",
                   help="fusion's bounds made small, so small programs reach them")
    p.add_argument("--big", action="store_true")
    a = p.parse_args()
    global BIG, CPU_TARGETS
    BIG = a.big
    if a.small_limits:
        import gradc.passes.fuse as fuse
        fuse.MAX_BODY, fuse.DUPLICATE_MAX, fuse.UFUNC_ELEMENTS = 30, 3, 8
        import gradc.codegen.loops as loops
        import gradc.codegen.cudarows as cudarows
        loops.PRANGE_MIN, loops.POOL_MIN = 4, 16
        cudarows.ONE_RUN_WORK = 0       # (kernels of their own, as large programs get)
        CPU_TARGETS = ("cpu", "parallel")
    bad = 0
    for seed in range(a.seed, a.seed + a.n):
        if a.show:
            print(make(seed)[0])
            continue
        try:
            msg = check(seed, a.tier, loops=not a.no_loops)
        except Exception as e:    # noqa: BLE001
            msg = (make(seed)[0] + f"\ncheck crashed: {type(e).__name__}: {e}\n"
                   + traceback.format_exc())
        if (seed - a.seed) % 50 == 49:
            print(f"progress: {seed - a.seed + 1} programs, {bad} failing", flush=True)
        if msg:
            bad += 1
            print(f"=== seed {seed} ===\n{msg}\n", flush=True)
    print(f"done: {a.n} programs, tier {a.tier}, {bad} failing", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
