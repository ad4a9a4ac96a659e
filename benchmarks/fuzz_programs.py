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
them (and tries target="parallel" too); ``--big``: 10 to 30 operations;
``--small-buffers``: every array result in a buffer the caller passes, shared by the
memory plan and reused from the pool however small (destination passing at any size).
``NUMBA_DISABLE_JIT=1`` runs the generated CPU code as Python: the lowering's logic,
without Numba's compile time (a few times more programs a minute), not its typing.

More families and checks (flags, combinable):
``--dtype float32``: float32 inputs and weights, Python/NumPy scalars mixed in (NEP 50:
weak Python scalars keep float32, NumPy scalars and arrays of other dtypes promote);
float32 tolerances, and the gradient against the float64 program's.  Every run checks
dtypes: the gradient's are the inputs', every value's (jit(fv)) NumPy's.
``--modes``: jacfwd, jacrev, hessian, jacfwd(grad), vmap(grad) over a batch axis,
jit(grad(<grad, v>)), linearize, value_and_grad against each other, finite differences
and (cpu/cuda tiers) the compiled against the interpreter.
``--control``: gradc.fori_loop (static and traced trip counts), scan (reverse, two
carries, length=), while_loop (fixed and data-dependent trip counts, checkpoint=), cond,
Python if/while on traced values and data-dependent masks, bodies drawn from the op
families; the gradient is checked against the same program unrolled (Python loops and
ifs, traced with guards).
``--index``: gathers, np.take, take_along_axis (argsort, argmax, static), static masks,
sort, cumsum/cumprod/diff, bincount(weights=), multi-axis reductions, broadcast_to,
repeat, tile, moveaxis, tril, index writes into copies, ``ufunc.at`` (add, subtract,
maximum, minimum, fmax, fmin, multiply) by static indices with repeats.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
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
KINKS = ("abs", "where", "maximum", "minimum", "clip", "max(", "sort", "min(", "argm", "cond(",
         "while", "if ", "> 0.1]", "< -0.2]")
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

    def new(self, expr, shape, indent="", unrolled=None):
        """``name = expr``; with ``unrolled``, the line of the unrolled program (``fu``:
        gradc.fori_loop/scan/while_loop/cond written as Python loops and ifs) differs."""
        name = f"v{self.count}"
        self.count += 1
        self.used.update(re.findall(r"\b[vx]\d+\b", expr))
        if unrolled is None:
            self.lines.append(f"{indent}{name} = {expr}")
        else:
            self.lines.append((f"{indent}{name} = {expr}", f"{indent}{name} = {unrolled}"))
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
        if DTYPE != np.float64:     # (0.1 * i is float64: the carry would widen)
            body = body.replace("0.1 * i", "(0.1 * i).astype(u.dtype)")
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

    # -- control flow (--control): gradc.fori_loop/scan/while_loop/cond, Python if/while
    # on traced values and data-dependent masks; bodies drawn from the op families.
    # Each has an unrolled form (U_fori/U_scan/U_while/U_cond: Python loops and ifs,
    # which gradc traces with guards) whose gradient must equal the controlled one's.
    def body(self, u, s, i=None, depth=0):
        """A shape-preserving expression of ``u`` (shape ``s``), reading values of the
        enclosing function (captured); ``(controlled, unrolled)`` source."""
        e = u
        for _ in range(1 + int(self.rng.integers(2))):
            k = int(self.rng.integers(6))
            ax = int(self.rng.integers(len(s))) if s else 0
            if k == 1:
                caps = [b for b, t in self.pool if _bcast(s, t) == tuple(s)]
                if caps:
                    b = self.choice(caps)
                    self.used.add(b)
                    if DTYPE != np.float64:     # (a float64 value would widen the carry)
                        b = f"{b}.astype(DT)"
                    e = self.choice(BINARY).format(a=f"({e})", b=b)
                    continue
            if k == 2 and s:
                e = f"np.roll({e}, {self.choice([1, -1, 2])}, axis={ax})"
            elif k == 3 and s:
                e = f"({e}) - np.mean({e}, axis={ax}, keepdims=True)"
            elif k == 4 and s:
                e = f"np.flip({e}, axis={ax})"
            elif k == 5 and i is not None and DTYPE == np.float64:
                e = f"({e}) * (1.0 + 0.1 * {i})"
            else:
                e = self.choice(UNARY).format(a=f"({e})")
        ctrl = unr = f"0.6 * {u} + 0.3 * np.tanh({e})"
        if depth == 0 and self.rng.random() < 0.15:        # a loop inside the body
            ic, iu = self.body("w", s, depth=1)
            k2 = int(self.rng.integers(1, 4))
            ctrl = f"gradc.fori_loop(0, {k2}, lambda j, w: {ic}, {ctrl})"
            unr = f"U_fori(0, {k2}, lambda j, w: {iu}, {unr})"
        return ctrl, unr

    def c_fori(self):
        a, s = self.pick()
        bc, bu = self.body("u", s, i="i")
        if self.rng.random() < 0.3:     # a traced trip count: fori_loop becomes a while_loop
            b, _ = self.pick(recent=False)
            k = f"np.argmax({b}) % 3 + 1"
        else:
            k = str(int(self.rng.integers(0, 8)))
        return self.new(f"gradc.fori_loop(0, {k}, lambda i, u: {bc}, {a})", s,
                        unrolled=f"U_fori(0, {k}, lambda i, u: {bu}, {a})")

    def c_scan(self):
        a, s = self.pick()
        c = tuple(s[1:])
        rev = bool(self.rng.random() < 0.3)
        kind = int(self.rng.integers(3))
        if kind == 0:                   # one carry, ys stacked
            bc, bu = self.body("c", c)
            y = self.choice(["c * x", "np.sin(c) - x", "c + 0.0 * x", "np.tanh(c * x)"])
            init = self.choice([f"{a}[0]", f"np.zeros_like({a}[0])", f"0.5 * {a}[-1]"])
            fn = "lambda c, x: (0.5 * ({}) + 0.4 * np.tanh(x), {})"
            which = self.choice([0, 1, 1])
            ctrl = f"gradc.scan({fn.format(bc, y)}, {init}, {a}, reverse={rev})[{which}]"
            unr = f"U_scan({fn.format(bu, y)}, {init}, {a}, reverse={rev})[{which}]"
            return self.new(ctrl, s if which else c, unrolled=unr)
        if kind == 1:                   # two carries
            bc, bu = self.body("c[0]", c)
            fn = "lambda c, x: (({}, 0.9 * c[1] + 0.1 * c[0] * x), c[0] - c[1])"
            init = f"({a}[0], np.sin({a}[-1]))"
            ctrl = f"gradc.scan({fn.format(bc)}, {init}, {a}, reverse={rev})[1]"
            unr = f"U_scan({fn.format(bu)}, {init}, {a}, reverse={rev})[1]"
            return self.new(ctrl, s, unrolled=unr)
        k = int(self.rng.integers(1, 5))           # no xs: length=
        if k * int(np.prod(s)) > 60:
            return None
        bc, bu = self.body("c", s)
        fn = "lambda c, _: ({}, np.cos(c))"
        ctrl = f"gradc.scan({fn.format(bc)}, {a}, None, length={k}, reverse={rev})[1]"
        unr = f"U_scan({fn.format(bu)}, {a}, None, length={k}, reverse={rev})[1]"
        return self.new(ctrl, (k,) + tuple(s), unrolled=unr)

    def c_while(self):
        a, s = self.pick()
        bc, bu = self.body("s[1]", s)
        ck = self.choice(["", "", ", checkpoint=1", ", checkpoint=2", ", checkpoint=3"])
        if self.rng.random() < 0.5:     # a fixed trip count
            k = int(self.rng.integers(0, 7))
            cond = f"lambda s: s[0] < {k}"
            body = "lambda s: (s[0] + 1, {})"
        else:                           # a trip count decided by the values
            n = int(np.prod(s))
            cond = f"lambda s: np.logical_and(s[0] < 6, np.sum(s[1] * s[1]) < {0.6 * n})"
            body = "lambda s: (s[0] + 1, 1.3 * ({}) + 0.05)"
        ctrl = f"gradc.while_loop({cond}, {body.format(bc)}, (0, {a}){ck})[1]"
        unr = f"U_while({cond}, {body.format(bu)}, (0, {a}))[1]"
        return self.new(ctrl, s, unrolled=unr)

    def c_cond(self):
        a, s = self.pick()
        b, _ = self.pick(recent=False)
        t1, u1 = self.body("u", s)
        t2, u2 = self.body("u", s)
        pred = self.choice([f"np.sum({b}) > 0.1", f"np.max({b}) < 0.5", f"{b}.mean() > 0"])
        return self.new(f"gradc.cond({pred}, lambda u: {t1}, lambda u: {t2}, {a})", s,
                        unrolled=f"U_cond({pred}, lambda u: {u1}, lambda u: {u2}, {a})")

    def c_pyif(self):
        """A Python if on a traced value: a guard, the other branch traced again."""
        a, s = self.pick()
        b, _ = self.pick(recent=False)
        name = f"v{self.count}"
        t1, u1 = self.body(a, s)
        t2, u2 = self.body(a, s)
        self.lines.append(f"if np.sum({b}) > 0.2:")
        self.new(t1, s, indent="    ", unrolled=u1)
        self.count -= 1
        self.pool.pop()
        self.lines.append("else:")
        self.new(t2, s, indent="    ", unrolled=u2)
        return self.pool[-1] if self.pool[-1][0] == name else None

    def c_mask(self):
        """Masks decided by the values: a[a > t] (its length traced again), a masked
        write, a Python while."""
        a, s = self.pick()
        kind = int(self.rng.integers(3))
        if kind == 0:
            return self.new(f"np.sum(np.sin({a}[{a} > 0.1]) ** 2)", ())
        if kind == 1:
            name, _ = self.new(f"{a}.copy()", s)
            self.lines.append(f"{name}[{a} < -0.2] = -0.2 + 0.1 * {a}[{a} < -0.2]")
            return name, s
        name, _ = self.new(f"{a} * 1.0", s)
        self.lines.append(f"while np.max(np.abs({name})) > 0.5:")
        self.lines.append(f"    {name} = 0.7 * {name}")
        return name, s

    # -- integer and index operations (--index) -----------------------------------------
    def _idx(self, n, m):
        return [int(i) for i in self.rng.integers(-n, n, m)]

    def i_gather(self):
        a, s = self.pick()
        ax = int(self.rng.integers(len(s)))
        m = int(self.rng.integers(1, 6))
        idx = self._idx(s[ax], m)
        t = tuple(s[:ax]) + (m,) + tuple(s[ax + 1:])
        if self.rng.random() < 0.5:
            return self.new(f"{a}[{':, ' * ax}{idx}]", t)
        if self.rng.random() < 0.2:         # flat
            idx = self._idx(int(np.prod(s)), m)
            return self.new(f"np.take({a}, {idx})", (m,))
        return self.new(f"np.take({a}, {idx}, axis={ax})", t)

    def i_take_along(self):
        a, s = self.pick()
        ax = int(self.rng.integers(len(s)))
        kind = int(self.rng.integers(4))
        if kind == 0:
            return self.new(f"np.take_along_axis({a}, np.argsort({a}, axis={ax}), axis={ax})", s)
        if kind == 1:
            t = tuple(1 if i == ax else d for i, d in enumerate(s))
            fn = self.choice(["argmax", "argmin"])
            return self.new(f"np.take_along_axis({a}, np.{fn}({a}, axis={ax}, keepdims=True), "
                            f"axis={ax})", t)
        if kind == 2:
            m = int(self.rng.integers(1, 5))
            t = tuple(m if i == ax else d for i, d in enumerate(s))
            idx = self.rng.integers(0, s[ax], t).tolist()
            return self.new(f"np.take_along_axis({a}, np.array({idx}), axis={ax})", t)
        if len(s) >= 2:                 # the row the largest sum is in
            return self.new(f"{a}[np.argmax(np.sum({a}, axis={tuple(range(1, len(s)))}))]",
                            tuple(s[1:]))
        return self.new(f"{a}[np.argmax({a})] * {a}", s)

    def i_mask(self):
        a, s = self.pick()
        mask = self.rng.random(s) < 0.5
        k = int(mask.sum())
        if k == 0:
            return None
        m = f"np.array({mask.ravel().tolist()}).reshape({tuple(s)})"
        if self.rng.random() < 0.5:
            return self.new(f"{a}[{m}]", (k,))
        b = self.choice([b for b, t in self.pool if _bcast(s, t) == tuple(s)])
        return self.new(f"np.where({m}, {a}, np.cos({b}))", s)

    def i_sortcum(self):
        a, s = self.pick()
        return self._sortcum(a, s, int(self.rng.integers(len(s))))

    def _sortcum(self, a, s, ax):
        kind = int(self.rng.integers(5))
        if kind == 0:
            return self.new(f"np.sort({a}, axis={ax})", s)
        if kind == 1:
            return self.new(f"np.cumsum({a}, axis={ax})", s)
        if kind == 2:
            return self.new(f"np.cumprod(1.0 + 0.3 * {a}, axis={ax})", s)
        if kind == 3 and s[ax] > 1:
            return self.new(f"np.diff({a}, axis={ax})",
                            tuple(d - 1 if i == ax else d for i, d in enumerate(s)))
        return self.new(f"np.flip(np.sort({a}, axis={ax}), axis={ax})", s)

    def i_bincount(self):
        a, s = self.pick()
        n = int(np.prod(s))
        m = int(self.rng.integers(1, 6))
        idx = self.rng.integers(0, m, n).tolist()
        minlength = int(self.rng.integers(0, m + 2))
        out = max(minlength, max(idx) + 1)
        return self.new(f"np.bincount(np.array({idx}), weights={a}.ravel(), "
                        f"minlength={minlength})", (out,))

    def i_reduce(self):
        a, s = self.pick()
        if len(s) < 2:
            return None
        axes = tuple(sorted(int(i) for i in self.rng.choice(len(s), 2, replace=False)))
        keep = bool(self.rng.random() < 0.5)
        fn = self.choice(["np.sum", "np.mean", "np.max", "np.min", "np.prod", "np.var",
                          "np.std"])
        arg = f"{a}" if fn not in ("np.std", "np.prod") else f"(1.2 + {a})"
        if fn == "np.std":      # (std of a constant has no derivative: sqrt at 0, NaN
            #                     as in JAX; a ramp keeps the lines from being constant)
            arg = f"(1.2 + {a} + 0.1 * np.arange({int(np.prod(s))}).reshape({tuple(s)}))"
        t = tuple(1 if i in axes else d for i, d in enumerate(s)) if keep else \
            tuple(d for i, d in enumerate(s) if i not in axes)
        return self.new(f"{fn}({arg}, axis={axes}, keepdims={keep})", t)

    def i_shape(self):
        a, s = self.pick()
        kind = int(self.rng.integers(7))
        ax = int(self.rng.integers(len(s)))
        if kind == 0 and int(np.prod(s)) * 2 <= 60:
            return self.new(f"np.broadcast_to({a}, {(2,) + tuple(s)})", (2,) + tuple(s))
        if kind == 1 and int(np.prod(s)) * 2 <= 60:
            return self.new(f"np.repeat({a}, 2, axis={ax})",
                            tuple(2 * d if i == ax else d for i, d in enumerate(s)))
        if kind == 2 and int(np.prod(s)) * 2 <= 60:
            reps = tuple(2 if i == ax else 1 for i in range(len(s)))
            return self.new(f"np.tile({a}, {reps})",
                            tuple(2 * d if i == ax else d for i, d in enumerate(s)))
        if kind == 3 and len(s) >= 2:
            return self.new(f"np.moveaxis({a}, 0, -1)", tuple(s[1:]) + (s[0],))
        if kind == 4 and len(s) >= 2:
            return self.new(f"np.swapaxes({a}, 0, {len(s) - 1})",
                            (s[-1],) + tuple(s[1:-1]) + (s[0],))
        if kind == 5 and len(s) == 2:
            return self.new(f"np.{self.choice(['tril', 'triu'])}({a}, "
                            f"{int(self.rng.integers(-1, 2))})", s)
        return self.new(f"np.squeeze(np.expand_dims({a}, {ax}), {ax})", s)

    def i_setitem(self):
        """A write into a copy: a slice, static indices (no repeats) or a static mask."""
        a, s = self.pick()
        name, _ = self.new(f"{a}.copy()", s)
        kind = int(self.rng.integers(3))
        if kind == 0:
            self.lines.append(f"{name}[1:] = np.sin({name}[:-1]) * 0.5" if s[0] > 1
                              else f"{name}[0] = 2.0 * {name}[0]")
        elif kind == 1:
            m = int(self.rng.integers(1, s[0] + 1))
            idx = [int(i) for i in self.rng.permutation(s[0])[:m]]
            self.lines.append(f"{name}[{idx}] = np.cos({name}[{idx}]) + {name}[{idx}]")
        else:
            mask = (self.rng.random(s) < 0.5).ravel().tolist()
            self.lines.append(f"{name}[np.array({mask}).reshape({tuple(s)})] *= -1.5")
        return name, s

    def i_ufunc_at(self):
        """``np.<ufunc>.at`` into a copy, by a static index list with repeats along the
        first axis, the updates another window of the same array."""
        a, s = self.pick()
        if not s:
            return None
        name, _ = self.new(f"{a}.copy()", s)
        m = int(self.rng.integers(1, 7))
        idx, other = self._idx(s[0], m), self._idx(s[0], m)
        ufunc = self.choice(["add", "subtract", "maximum", "minimum", "fmax", "fmin",
                             "multiply"])
        self.lines.append(f"np.{ufunc}.at({name}, {idx}, np.cos({a}[{other}]))")
        return name, s

    # -- NEP 50 (--dtype float32): weak Python scalars keep float32, NumPy scalars and
    # arrays of other dtypes promote
    def d_scalar(self):
        a, s = self.pick()
        return self.new(self.choice([
            "{a} * 2", "3 - {a}", "{a} / 3", "np.float32(0.5) * {a}", "{a} + np.float16(1)",
            "{a} * np.float64(0.5)", "{a} + np.int32(1)", "{a} ** 2", "{a}.astype(np.float32)",
            "{a} * np.arange({n})[::-1].reshape({s})", "{a}.sum().astype(np.float64) * {a}",
            "({a} > 0) * {a}", "{a} - True", "np.square({a}) + 1", "{a}.astype(np.float64)",
            "{a}.astype(np.float32, copy=False) * 1.5", "np.int8(2) * {a}",
        ]).format(a=a, n=int(np.prod(s)), s=tuple(s)), s)

    OPS = [("unary", 6), ("binary", 6), ("keep_reduce_bcast", 2), ("reduce", 2),
           ("slice", 4), ("shifted_product", 3), ("pad", 3), ("concat", 2), ("roll", 2),
           ("stack", 1), ("transpose", 2), ("reshape", 1), ("expand", 1), ("matmul", 1),
           ("pyloop", 1), ("pyloop_param", 2), ("fori", 1), ("scan", 1)]

    def build(self, n_ops, loops=True):
        ops = list(self.OPS)
        for fam in ("control", "index", "dtype"):
            if fam in FAMILIES:
                ops += EXTRA[fam]
        names = [n for n, _ in ops if loops or n not in ("fori", "scan")]
        weights = np.array([w for n, w in ops if n in names], float)
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

        def body(which):
            return ["    " + (ln if isinstance(ln, str) else ln[which]) for ln in self.lines]
        src = [f"def f({args}):"] + body(0)
        src.append(f"    return {' + '.join(terms)}")
        vsrc = [f"def fv({args}):"] + body(0)
        vsrc.append(f"    return ({', '.join(n for n, _ in outs)},)")
        usrc = [f"def f({args}):"] + body(1)
        usrc.append(f"    return {' + '.join(terms)}")
        return "\n".join(src), "\n".join(vsrc), "\n".join(usrc)


# new families (flags): --control, --index, --dtype float32 (adds the NEP 50 scalars)
EXTRA = {
    "control": [("c_fori", 2), ("c_scan", 2), ("c_while", 2), ("c_cond", 2), ("c_pyif", 1),
                ("c_mask", 1)],
    "index": [("i_gather", 2), ("i_take_along", 2), ("i_mask", 1), ("i_sortcum", 2),
              ("i_bincount", 1), ("i_reduce", 2), ("i_shape", 2), ("i_setitem", 1),
              ("i_ufunc_at", 1)],
    "dtype": [("d_scalar", 3)],
}
FAMILIES = set()
DTYPE = np.float64     # (--dtype float32: inputs and weights float32)
MODES = False          # (--modes: jacfwd, jacrev, hessian, vmap(grad), linearize, ...)
CPU_TARGETS = ("cpu",)


def W(shape, k):
    n = int(np.prod(shape))
    return np.cos(0.7 * np.arange(n) + 0.3 + k).reshape(shape).astype(DTYPE)


# the unrolled forms of gradc's control flow: Python loops and ifs (traced with guards)
def U_fori(lo, hi, body, val):
    i = lo
    while i < hi:
        val = body(i, val)
        i = i + 1
    return val


def U_scan(f, init, xs, length=None, reverse=False):
    n = length if xs is None else np.shape(xs)[0]
    ys = [None] * n
    c = init
    for k in (range(n - 1, -1, -1) if reverse else range(n)):
        c, ys[k] = f(c, None if xs is None else xs[k])
    return c, np.stack(ys)


def U_while(cond, body, val):
    while cond(val):
        val = body(val)
    return val


def U_cond(pred, true_fun, false_fun, *ops):
    return true_fun(*ops) if pred else false_fun(*ops)


BIG = False        # (--big: programs of 10 to 30 operations)


def make(seed, loops=True):
    """(source of f, of fv (every value nothing else reads), of the unrolled f, inputs,
    the program's Generator)."""
    rng = np.random.default_rng(seed)
    gen = Gen(rng, int(rng.integers(1, 4)))
    src, vsrc, usrc = gen.build(int(rng.integers(10, 31) if BIG else rng.integers(2, 15)),
                                loops=loops)
    xs = [rng.uniform(-1.0, 1.0, s) for s in gen.inputs]
    if DTYPE != np.float64:
        xs = [np.asarray(x, DTYPE) for x in xs]
    return src, vsrc, usrc, xs, rng


def compile_src(src):
    import gradc
    ns = {"np": np, "gradc": gradc, "W": W, "DT": DTYPE, "U_fori": U_fori, "U_scan": U_scan,
          "U_while": U_while, "U_cond": U_cond}
    exec(compile(src, "<fuzz>", "exec"), ns)
    return ns


def close(a, b, rtol=1e-6, atol=1e-9):
    """Equal within the tolerance, float32 programs' looser (2e-3, relative to the
    largest finite value of b); NaN where b is NaN (``np.std`` of a constant: 0 · inf in
    its derivative, as JAX's, on every target alike)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if DTYPE == np.float32:
        rtol = max(rtol, 2e-3)
        top = np.max(np.abs(b[np.isfinite(b)]), initial=0.0)
        atol = max(atol, 2e-4 * max(1.0, float(top)))
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def all_close(xs, ys, **tol):
    return len(xs) == len(ys) and all(close(x, y, **tol) for x, y in zip(xs, ys))


def dtypes_differ(got, want):
    """'' where every leaf of got has want's dtype (NumPy's), else the differences."""
    got, want = np.asarray(got) if not isinstance(got, (tuple, list)) else got, \
        np.asarray(want) if not isinstance(want, (tuple, list)) else want
    if isinstance(got, (tuple, list)):
        return "; ".join(d for g, w in zip(got, want) if (d := dtypes_differ(g, w)))
    return "" if np.asarray(got).dtype == np.asarray(want).dtype else \
        f"{np.asarray(got).dtype} (NumPy's {np.asarray(want).dtype})"


def _blocks(tree):
    """The leaves of a nested tuple of arrays, in order."""
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in _blocks(t)]
    return [np.asarray(tree)]


def _contract(block, d):
    return np.tensordot(np.asarray(block, float), np.asarray(d, float), axes=np.ndim(d))


def _transforms(f, fv, xs, argnums, v, target, rng):
    """The transformations of f (scalar) and fv (its values), each as a list of arrays."""
    import gradc
    t = dict(target=target)
    n = len(xs)
    r = {}
    val, g = gradc.value_and_grad(f, argnums=argnums, **t)(*xs)
    r["value_and_grad"] = [np.asarray(val)] + list(g)
    y, f_jvp = gradc.linearize(f, *xs, **t)
    r["linearize"] = [np.asarray(y), np.asarray(f_jvp(*v))]
    r["jacfwd"] = _blocks(gradc.jacfwd(fv, argnums=argnums, **t)(*xs))
    r["jacrev"] = _blocks(gradc.jacrev(fv, argnums=argnums, **t)(*xs))
    r["hessian"] = _blocks(gradc.hessian(f, argnums=argnums, **t)(*xs))
    r["jacfwd(grad)"] = _blocks(gradc.jacfwd(gradc.grad(f, argnums=argnums, **t),
                                             argnums=argnums, **t)(*xs))

    def gdotv(*a):
        g = gradc.grad(f, argnums=argnums, **t)(*a)
        return sum(np.sum(gi * d) for gi, d in zip(g, v))
    r["jit(grad(grad . v))"] = list(gradc.jit(gradc.grad(gdotv, argnums=argnums), **t)(*xs))
    axes = [int(rng.random() < 0.7) for _ in range(n)]
    axes[int(rng.integers(n))] = 1
    in_axes = tuple(0 if a else None for a in axes)
    batched = [np.stack([x + (0.1 * k * rng.normal(size=np.shape(x))).astype(DTYPE)
                         for k in range(3)]) if a else x for x, a in zip(xs, axes)]
    r["vmap(grad)"] = list(gradc.vmap(gradc.grad(f, argnums=argnums, **t), in_axes=in_axes,
                                      **t)(*batched))
    r["_batched"] = (batched, in_axes)
    return r


def _transform_consistency(r, f, fv, xs, x64, argnums, g_ref, v, want, kinky):
    """The interpreter's transformations against each other, NumPy and the gradient."""
    import gradc
    problems = []
    n = len(xs)
    gv = sum(np.sum(g * d) for g, d in zip(g_ref, v))
    if not close(r["value_and_grad"][0], want, rtol=1e-9) or \
            not all_close(r["value_and_grad"][1:], g_ref, rtol=1e-9, atol=1e-12):
        problems.append("value_and_grad differs from f and grad")
    if not close(r["linearize"][0], want, rtol=1e-9) or \
            not close(r["linearize"][1], gv, rtol=1e-7, atol=1e-9):
        problems.append(f"linearize: {r['linearize']} but f {want!r}, <grad, v> {gv!r}")
    jf, jr = r["jacfwd"], r["jacrev"]
    if not all_close(jf, jr, rtol=1e-7, atol=1e-9):
        problems.append("jacfwd != jacrev")
    outs = fv(*xs)
    for k, (a, b) in enumerate(zip(jf, jr)):
        o, i = divmod(k, n)
        if np.asarray(outs[o]).dtype == xs[i].dtype and not a.dtype == b.dtype == xs[i].dtype:
            problems.append(f"jacobian block ({o}, {i}) dtypes: jacfwd {a.dtype}, jacrev "
                            f"{b.dtype}, values {xs[i].dtype}")
    _, tan = gradc.jvp(fv, tuple(xs), tuple(v), target="numpy")
    jv = [sum(_contract(jf[o * n + i], v[i]) for i in range(n)) for o in range(len(outs))]
    if not all_close(jv, tan, rtol=1e-7, atol=1e-9):
        problems.append("jacfwd . v != jvp")
    h = r["hessian"]
    for i in range(n):
        for j in range(n):
            a = h[i * n + j].reshape(xs[i].size, xs[j].size)
            b = h[j * n + i].reshape(xs[j].size, xs[i].size).T
            if not close(a, b, rtol=1e-7, atol=1e-9):
                problems.append(f"hessian block ({i}, {j}) is not the transpose of ({j}, {i})")
    if len({x.dtype for x in xs}) == 1 and np.asarray(want).dtype == xs[0].dtype and \
            any(b.dtype != xs[0].dtype for b in h):
        problems.append(f"hessian dtypes {[b.dtype for b in h]}, inputs {xs[0].dtype}")
    if not all_close(h, r["jacfwd(grad)"], rtol=1e-7, atol=1e-9):
        problems.append("hessian != jacfwd(grad)")
    hv = [sum(_contract(h[i * n + j], v[j]) for j in range(n)) for i in range(n)]
    if not all_close(hv, r["jit(grad(grad . v))"], rtol=1e-7, atol=1e-9):
        problems.append("hessian . v != jit(grad(<grad, v>))")
    try:
        grad64 = gradc.grad(f, argnums=argnums, target="numpy")

        def fd_at(e):
            up = grad64(*[x + e * d for x, d in zip(x64, v)])
            down = grad64(*[x - e * d for x, d in zip(x64, v)])
            return [(a - b) / (2 * e) for a, b in zip(up, down)]
        d1, d2 = fd_at(1e-5), fd_at(1e-4)
        smooth = all_close(d1, d2, rtol=1e-3, atol=1e-5)
        tol = dict(rtol=1e-3, atol=1e-5) if DTYPE == np.float64 else dict(rtol=1e-2, atol=1e-2)
        if (smooth or not kinky) and not all(
                np.allclose(a, b, **tol) for a, b in zip(hv, d1)):
            problems.append(f"hessian . v differs from finite differences of grad: "
                            f"{max(np.max(np.abs(a - b)) for a, b in zip(hv, d1))}")
    except gradc.GradcError:     # (a float32 program's loop carry made float64, ...)
        pass
    batched, in_axes = r["_batched"]
    want_b = []
    for k in range(3):
        a = [b[k] if ax == 0 else b for b, ax in zip(batched, in_axes)]
        want_b.append(gradc.grad(f, argnums=argnums, target="numpy")(*a))
    want_b = [np.stack([w[i] for w in want_b]) for i in range(n)]
    if not all_close(r["vmap(grad)"], want_b, rtol=1e-7, atol=1e-9):
        problems.append(f"vmap(grad) (in_axes {in_axes}) != grad of each example")
    if d := dtypes_differ(r["vmap(grad)"], want_b):
        problems.append(f"vmap(grad) dtypes: {d}")
    return problems


def _more_checks(seed, f, fv, src, usrc, xs, x64, argnums, g_ref, v, want, kinky, tier):
    """dtypes (NumPy's: every value's, the gradient's the inputs'), the unrolled program's
    gradient, a float32 program's against float64, the transformations (--modes)."""
    import gradc
    problems = []
    targets = ["numpy"] + [t for t in ("cpu", "cuda") if t == tier]
    if d := dtypes_differ(g_ref, xs):
        problems.append(f"dtype of grad: {d}")
    with np.errstate(all="ignore"):
        vals = fv(*xs)
    for t in targets:
        try:
            got = gradc.jit(fv, target=t)(*xs)
            if d := dtypes_differ(got, vals):
                problems.append(f"dtypes of jit(fv, target={t!r}): {d}")
            elif not all_close(got, vals, rtol=1e-9, atol=1e-12):
                problems.append(f"values of jit(fv, target={t!r}) differ from NumPy's")
            got = gradc.jit(f, target=t)(*xs)
            if d := dtypes_differ(got, want):
                problems.append(f"dtype of jit(f, target={t!r}): {d}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"jit {t} crashed: {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc()}")
    if usrc != src:
        try:
            fu = compile_src(usrc)["f"]
            with np.errstate(all="ignore"):
                wu = fu(*xs)
            if not close(wu, want, rtol=1e-9):
                problems.append(f"unrolled program: {wu!r}, controlled {want!r}")
            gu = gradc.grad(fu, argnums=argnums, target="numpy")(*xs)
            if not all_close(gu, g_ref, rtol=1e-7, atol=1e-10):
                problems.append("grad of the unrolled program differs: " + str(
                    max(np.max(np.abs(np.asarray(a, float) - b)) for a, b in zip(gu, g_ref))))
        except Exception as e:  # noqa: BLE001
            problems.append(f"unrolled crashed: {type(e).__name__}: {e}\n"
                            f"{traceback.format_exc()}")
    if DTYPE != np.float64 and not kinky:
        try:
            g64 = gradc.grad(f, argnums=argnums, target="numpy")(*x64)
        except gradc.GradcError:
            g64 = None
        if g64 is not None:
            for a, b in zip(g_ref, g64):
                if not np.allclose(a, b, rtol=3e-3, atol=3e-3 * max(1.0, np.max(np.abs(b)))):
                    problems.append(f"float32 grad vs float64's: {np.max(np.abs(a - b))}")
                    break
    if MODES:
        ref = None
        for t in targets:
            try:
                r = _transforms(f, fv, xs, argnums, v, t, np.random.default_rng([seed, 2]))
            except (gradc.ConcretizationError, gradc.UnsupportedError):
                break
            except Exception as e:  # noqa: BLE001
                if isinstance(e, gradc.ArgumentError) and ("vmap: Python control flow" in str(e)
                                                           or "vmap: a result whose len" in str(e)):
                    break           # (vmap refuses a guard or a length that varies: expected)
                problems.append(f"transformations ({t}) crashed: {type(e).__name__}: {e}\n"
                                f"{traceback.format_exc()}")
                break
            if ref is None:
                ref = r
                try:
                    problems += _transform_consistency(r, f, fv, xs, x64, argnums, g_ref, v,
                                                       want, kinky)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"transformation checks crashed: {type(e).__name__}: "
                                    f"{e}\n{traceback.format_exc()}")
                continue
            for k, val in r.items():
                if k != "_batched" and not all_close(val, ref[k]):
                    problems.append(f"{k} ({t}) differs from the interpreter's")
                if k != "_batched" and (d := dtypes_differ(val, ref[k])):
                    problems.append(f"{k} ({t}) dtypes: {d}")
    return problems


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
    src, vsrc, usrc, xs, rng = make(seed, loops)
    f = compile_src(src)["f"]
    fv = compile_src(vsrc)["fv"]
    try:
        with np.errstate(all="ignore"):
            want = f(*xs)
    except gradc.GradcError as e:   # (e.g. a loop body that changes its carry's dtype)
        SKIPPED.append((seed, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"))
        return None
    if not np.isfinite(want) or abs(want) > 1e6:
        return None
    argnums = tuple(range(len(xs)))
    problems = []
    try:
        g_ref = gradc.grad(f, argnums=argnums, target="numpy")(*xs)
    except gradc.UnsupportedError:
        return None
    v = [rng.normal(size=x.shape).astype(x.dtype) for x in xs]
    gv = sum(np.sum(g * d) for g, d in zip(g_ref, v))
    kinky = any(k in src for k in KINKS)
    x64 = [np.asarray(x, np.float64) for x in xs]
    if DTYPE != np.float64 and kinky:
        # the float64 program may take another branch than the float32 one (a tie
        # broken by float32 rounding): no finite differences, no float64 gradient
        fd = False
    if fd:
        def fd_at(h):
            with np.errstate(all="ignore"):
                return (f(*[x + h * d for x, d in zip(x64, v)])
                        - f(*[x - h * d for x, d in zip(x64, v)])) / (2 * h)
        try:
            d1, d2 = fd_at(1e-6), fd_at(1e-5)
        except gradc.GradcError:     # (a float32 program's loop carry made float64)
            d1 = d2 = gv
        smooth_here = abs(d1 - d2) <= 1e-5 * (1 + abs(d1))
        rtol, atol = (1e-4, 1e-6) if DTYPE == np.float64 else \
            (3e-3, 1e-3 * (1 + sum(float(np.sum(np.abs(g * d))) for g, d in zip(g_ref, v))))
        # (float32 casts in a float32 program make its finite differences noisy)
        if (smooth_here or not (kinky or DTYPE != np.float64)) and \
                not np.isclose(gv, d1, rtol=rtol, atol=atol):
            problems.append(f"FD: <grad, v> = {gv!r}, finite differences {d1!r} ({d2!r})")
    problems += _more_checks(seed, f, fv, src, usrc, xs, x64, argnums, g_ref, v, want, kinky,
                             tier)
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
            u = tuple(rng.normal(size=np.shape(o)).astype(np.result_type(o)) for o in out)
            cts = ct_fn(u)
            _, tan = gradc.jvp(fv, tuple(xs), tuple(v), target="numpy")
            lhs = sum(np.sum(a * b) for a, b in zip(u, tan))
            rhs = sum(np.sum(c * d) for c, d in zip(cts, v))
            if not close(lhs, rhs, rtol=1e-8, atol=1e-10):
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
                if not close(tan, gv, rtol=1e-6, atol=1e-9):
                    problems.append(f"jvp cpu {tan!r} vs interpreter <grad, v> {gv!r}")
            if rng.random() < 0.4:          # the vector-valued program's VJP
                out, fn = gradc.vjp(fv, *xs, target="numpy")
                u = tuple(rng.normal(size=np.shape(o)).astype(np.result_type(o)) for o in out)
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
        if usrc != src:
            src += "\n# unrolled:\n" + usrc
        if DTYPE != np.float64:
            src += f"\n# inputs of dtype {np.dtype(DTYPE)}"
        return src + "\n# inputs: " + repr([x.shape for x in xs]) + "\n" + "\n".join(problems)
    return None


SKIPPED = []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--tier", default="graph", choices=["graph", "cpu", "cuda"])
    p.add_argument("--no-loops", action="store_true")
    p.add_argument("--show", action="store_true")
    p.add_argument("--small-buffers", action="store_true",
                   help="every array result in a buffer the caller passes, every buffer "
                        "in the memory plan and the pool (SMALL_OUT_BYTES, MIN_BYTES 0)")
    p.add_argument("--small-limits", action="store_true",
                   help="fusion's bounds made small, so small programs reach them")
    p.add_argument("--big", action="store_true")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float32: inputs and weights float32, NEP 50 scalar ops, float32 "
                        "tolerances, gradients checked against the float64 program's")
    p.add_argument("--modes", action="store_true",
                   help="also jacfwd, jacrev, hessian, vmap(grad), jit(grad(grad . v)), "
                        "linearize and value_and_grad, against each other")
    p.add_argument("--control", action="store_true",
                   help="gradc.fori_loop/scan/while_loop/cond, Python if/while on traced "
                        "values, data-dependent masks; checked against the unrolled program")
    p.add_argument("--index", action="store_true",
                   help="gathers, take, take_along_axis, masks, argmax, sort, cumsum, "
                        "bincount, multi-axis reductions, shape functions, index writes")
    p.add_argument("--verbose", action="store_true",
                   help="one line per program (seed, seconds, ok/FAIL), so a run cut off by "
                        "a time limit still says how far it got and which seed was slow")
    a = p.parse_args()
    global BIG, CPU_TARGETS, DTYPE, MODES
    BIG = a.big
    DTYPE = np.dtype(a.dtype).type
    MODES = a.modes
    FAMILIES.update(k for k in ("control", "index") if getattr(a, k))
    if DTYPE == np.float32:
        FAMILIES.add("dtype")
    if a.small_limits:
        import gradc.passes.fuse as fuse
        fuse.MAX_BODY, fuse.DUPLICATE_MAX, fuse.UFUNC_ELEMENTS = 30, 3, 8
        import gradc.codegen.loops as loops
        import gradc.codegen.cudarows as cudarows
        loops.PRANGE_MIN, loops.POOL_MIN = 4, 16
        cudarows.ONE_RUN_WORK = 0       # (kernels of their own, as large programs get)
        CPU_TARGETS = ("cpu", "parallel")
    if a.small_buffers:
        import gradc.codegen.buffers as buffers
        import gradc.codegen.memplan as memplan
        import gradc.codegen.pysource as pysource
        pysource.SMALL_OUT_BYTES = buffers.MIN_BYTES = memplan.MIN_BYTES = 0
    bad = 0
    for seed in range(a.seed, a.seed + a.n):
        if a.show:
            print(make(seed)[0])
            continue
        start = time.perf_counter()
        try:
            msg = check(seed, a.tier, loops=not a.no_loops)
        except Exception as e:    # noqa: BLE001
            msg = (make(seed)[0] + f"\ncheck crashed: {type(e).__name__}: {e}\n"
                   + traceback.format_exc())
        if a.verbose:
            print(f"seed {seed}: {time.perf_counter() - start:.1f} s, "
                  f"{'FAIL' if msg else 'ok'}", flush=True)
        elif (seed - a.seed) % 50 == 49:
            print(f"progress: {seed - a.seed + 1} programs, {bad} failing", flush=True)
        if msg:
            bad += 1
            print(f"=== seed {seed} ===\n{msg}\n", flush=True)
    print(f"done: {a.n} programs, tier {a.tier}, {bad} failing, {len(SKIPPED)} skipped "
          f"(NumPy's run refused)", flush=True)
    for seed, why in SKIPPED[:5]:
        print(f"  skipped seed {seed}: {why}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
