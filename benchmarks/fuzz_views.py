"""Differential fuzzing of gradc's aliasing, views and in-place semantics against NumPy.

    PYTHONPATH=. python benchmarks/fuzz_views.py --seed 0 --n 300 --targets numpy
    PYTHONPATH=. python benchmarks/fuzz_views.py --seed 0 --n 30 --targets cpu
    PYTHONPATH=. python benchmarks/fuzz_views.py --seed 17 --n 1 --show

Each program is a random straight-line ``f(x0, x1)`` over small float64 arrays that makes
arrays (copies, ``zeros_like``, arithmetic), takes views and non-views of them (basic
slices, elements, ``x[None]``, ``x.T``, ``reshape``/``ravel`` (a view or a copy by
NumPy's rule), ``flatten``, fancy and boolean indexing, ``np.broadcast_to`` and
``diagonal`` (read-only views), ...), writes through them (``v[k] = e``, ``v += e``,
``np.add(v, e, out=v)``, ``np.add.at``), aliases names (``a = b``), collects values in a
list and returns the raveled values of every name (so each alias's later reads are
checked).  The program is built line by line against NumPy itself (a candidate line
NumPy rejects is dropped), except that some programs end on a line NumPy rejects (a write
into a read-only view, a shape mismatch): gradc must then raise a ``gradc.GradcError``.

Checks: ``gradc.jit(f, target=t)`` against NumPy for each target (allclose 1e-12), and
``gradc.grad(lambda *a: np.sum(np.sin(f(*a))), argnums=(0, 1), target="numpy")``
against central finite differences of the NumPy program (skipped for data-dependent
masks).  Failures are printed as source with their seed; ``--minimise`` removes lines
while the failure stays the same.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
import warnings

os.environ.setdefault("GRADC_NATIVE", "0")
os.environ.setdefault("GRADC_CACHE_DIR", tempfile.mkdtemp(prefix="gradc-viewfuzz-cache-"))

import numpy as np  # noqa: E402

SHAPES = [(4,), (3, 4), (2, 3, 4), (), (3,), (4, 1), (1, 3), (2, 2)]
SLICES = ["1:", ":-1", "::2", "::-1", "-2::-1", "1:3", "::-2", "1::2", ":2", "-3:"]


def _values(shape, rng):
    return np.array(np.round(rng.uniform(-1.5, 1.5, size=shape), 3), dtype=np.float64)


def run_numpy(body, args, upto=None):
    """Run ``body`` (lines) on copies of ``args``; returns the namespace."""
    ns = {"np": np, "hist": []}
    for i, a in enumerate(args):
        ns[f"x{i}"] = np.array(a, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile("\n".join(body[:upto]), "<viewfuzz-step>", "exec"), ns)
    return ns


class Gen:
    def __init__(self, rng, args):
        self.rng = rng
        self.args = args
        self.body = []
        self.names = [f"x{i}" for i in range(len(args))]
        self.count = 0

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def fresh(self):
        name = f"v{self.count}"
        self.count += 1
        return name

    # -- picking operands from the values NumPy computed so far
    def pick(self, ns, pred=lambda v: True, recent=0.6):
        names = [n for n in self.names if pred(ns[n])]
        if not names:
            return None
        if self.rng.random() < recent:
            return names[-1 - int(self.rng.integers(min(3, len(names))))]
        return self.choice(names)

    def rint(self, d):
        return str(int(self.rng.integers(-d, d))) if d > 0 else "0"

    def basic_index(self, shape):
        parts = []
        for d in shape:
            r = self.rng.random()
            if r < 0.35:
                parts.append(":")
            elif r < 0.75:
                parts.append(self.choice(SLICES))
            else:
                parts.append(self.rint(d))
        if shape and self.rng.random() < 0.5:
            parts = parts[: int(self.rng.integers(1, len(shape) + 1))]
        if self.rng.random() < 0.15:
            parts.insert(int(self.rng.integers(len(parts) + 1)), "None")
        if self.rng.random() < 0.15:
            parts.insert(0, "...")
            parts = parts[: len(shape) + 1]
        return ", ".join(parts) if parts else "..."

    def fancy_index(self, shape):
        if not shape:
            return "..."
        d = shape[0]
        kind = self.rng.integers(4)
        ints = [int(self.rint(d)) for _ in range(int(self.rng.integers(1, 4)))]
        if kind == 0:
            return str(ints)
        if kind == 1:
            mask = [bool(b) for b in self.rng.random(d) < 0.5]
            return f"np.array({mask})"
        if kind == 2 and len(shape) > 1:
            return f"{ints}, {self.choice(SLICES)}"
        if kind == 3 and len(shape) > 1:
            cols = [int(self.rint(shape[1])) for _ in ints]
            return f"{ints}, {cols}"
        return str(ints)

    def expr(self, ns):
        """A value to write or combine: a constant, a name or a function of one."""
        r = self.rng.random()
        if r < 0.25:
            return self.choice(["0.5", "2.0", "-1.25", "3.0"])
        a = self.pick(ns, recent=0.4)
        if r < 0.55:
            return a
        if r < 0.75:
            return self.choice(["np.sin({a})", "0.5 * {a}", "np.tanh({a}) + 1.0",
                                "{a} * {a}"]).format(a=a)
        v = ns[a]
        if isinstance(v, np.ndarray) and v.ndim:
            return f"{a}[{self.basic_index(v.shape)}]"
        return a

    # -- candidate lines
    def create(self, ns):
        a = self.pick(ns)
        n = self.fresh()
        forms = ["{a}.copy()", "np.copy({a})", "np.zeros_like({a})",
                 "np.ones_like({a}, shape={s})", "np.sin({a}) * 0.5 + {e}", "{a} * {e}",
                 "{a}[...]", "np.zeros_like({a}, shape=())", "np.sum({a})",
                 "{a} - {e}"]
        line = self.choice(forms).format(a=a, e=self.expr(ns),
                                         s=self.choice(SHAPES))
        return f"{n} = {line}", n

    def view(self, ns):
        a = self.pick(ns)
        v = ns[a]
        shape = np.shape(v)
        n = self.fresh()
        nd = len(shape)
        forms = [f"{a}[{self.basic_index(shape)}]" if nd else f"{a}[...]",
                 f"{a}[{self.basic_index(shape)}]" if nd else f"{a}[()]",
                 f"{a}[{', '.join(self.rint(d) for d in shape)}]"
                 if nd else f"{a}[None]",
                 f"{a}[{self.choice(['0', '-1', '1'])}]",
                 f"{a}[..., {self.choice(['0', '-1', '1'])}]",
                 f"{a}[None]", f"{a}[True]", f"{a}.T", f"{a}.ravel()", f"np.ravel({a})",
                 f"{a}.flatten()", f"np.transpose({a})", f"{a}.reshape(-1)",
                 f"{a}.reshape({self.reshape_target(shape)})",
                 f"np.swapaxes({a}, 0, -1)", f"np.broadcast_to({a}, {self.bshape(shape)})",
                 f"{a}[{self.fancy_index(shape)}]",
                 f"{a}[{a} > 0.3]" if nd else f"{a}[True]", f"{a}.real",
                 f"np.atleast_2d({a})", f"np.squeeze({a})",
                 f"np.expand_dims({a}, {int(self.rng.integers(-1, nd + 1))})",
                 f"{a}.diagonal()", f"np.moveaxis({a}, 0, -1)", f"{a}.T.ravel()",
                 f"{a}[::-1].reshape(-1)", f"{a}.T.reshape({self.reshape_target(shape)})",
                 f"{a}[{self.basic_index(shape)}].ravel()" if nd else f"{a}.ravel()",
                 f"{a}"]
        return f"{n} = {self.choice(forms)}", n

    def reshape_target(self, shape):
        size = int(np.prod(shape))
        opts = [(size,), (1, size), (size, 1)]
        for d in (2, 3, 4, 6):
            if size % d == 0:
                opts.append((d, size // d))
        if size == 24:
            opts += [(4, 6), (2, 12), (4, 3, 2)]
        return self.choice(opts)

    def bshape(self, shape):
        return self.choice([(2,) + tuple(shape), tuple(shape), (3,) + tuple(shape)])

    def mutate(self, ns):
        t = self.pick(ns, recent=0.7)
        v = ns[t]
        shape = np.shape(v)
        e = self.expr(ns)
        idx = self.basic_index(shape) if shape else "..."
        forms = [f"{t}[...] = {e}", f"{t}[{idx}] = {e}", f"{t} += {e}", f"{t} *= {e}",
                 f"{t} -= {e}", f"np.add({t}, {e}, out={t})",
                 f"np.multiply({t}, {e}, out={t})",
                 f"{t}[{self.fancy_index(shape)}] = {e}",
                 f"np.add.at({t}, {self.fancy_index(shape)}, {e})",
                 f"{t}[{idx}] += {e}", f"{t}[{idx}] *= {e}",
                 f"{t} = {e}",                          # rebinding (aliases keep the old)
                 f"hist.append({t})", f"hist.append({t}.copy())"]
        return self.choice(forms), None

    def program(self, n_lines, error_ending):
        ns = run_numpy(self.body, self.args)
        tries = 0
        while len(self.body) < n_lines and tries < 6 * n_lines:
            tries += 1
            r = self.rng.random()
            count = self.count
            if r < 0.2:
                line, name = self.create(ns)
            elif r < 0.55:
                line, name = self.view(ns)
            else:
                line, name = self.mutate(ns)
            try:
                ns = run_numpy(self.body + [line], self.args)
            except Exception:
                if error_ending and len(self.body) >= 3:
                    self.body.append(line)
                    return True
                self.count = count
                continue
            self.body.append(line)
            if name is not None:
                self.names.append(name)
        # the result: the raveled values of (a selection of) the names, and the list
        names = list(self.names)
        if self.rng.random() < 0.3:
            keep = self.rng.random(len(names)) < 0.5
            names = [n for n, k in zip(names, keep) if k] or names[-1:]
        parts = [f"np.ravel({n})" for n in names]
        if ns["hist"]:
            try:
                run_numpy(self.body + ["np.stack(hist)"], self.args)
                parts.append("np.ravel(np.stack(hist))")
            except Exception:
                pass
        self.body.append(f"return np.concatenate([{', '.join(parts)}])")
        return False


def make(seed):
    rng = np.random.default_rng(seed)
    shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(2)]
    if shapes[0] == ():
        shapes[0] = (3, 4)
    args = [_values(s, rng) for s in shapes]
    gen = Gen(rng, args)
    error_ending = rng.random() < 0.2
    gen.program(int(rng.integers(3, 11)), error_ending)
    return gen.body, args


def source(body, seed=None):
    head = f"# seed {seed}\n" if seed is not None else ""
    lines = ["def f(x0, x1):", "    hist = []"] + [f"    {line}" for line in body]
    return head + "\n".join(lines) + "\n"


_FILES = {}


def load(body):
    """``f`` from its source, in a file (gradc's messages and linecache read it)."""
    src = source(body)
    path = _FILES.get(src)
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".py", prefix="viewfuzz_")
        with os.fdopen(fd, "w") as fh:
            fh.write(src)
        _FILES[src] = path
    ns = {"np": np}
    exec(compile(src, path, "exec"), ns)
    return ns["f"]


def _numpy_call(f, args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return np.asarray(f(*[np.array(a, copy=True) for a in args]))


def _describe(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def check(body, args, targets, fd=True):
    """The first failure of the program as ``(kind, message)``, or None."""
    import gradc
    from gradc.errors import GradcError
    f = load(body)
    try:
        want = _numpy_call(f, args)
        numpy_error = None
    except (NameError, UnboundLocalError) as e:
        return "invalid", _describe(e)         # (a minimisation step dropped a name)
    except Exception as e:
        want, numpy_error = None, e
    for t in targets:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = gradc.jit(f, target=t)(*args)
        except GradcError as e:
            if numpy_error is None and "np.add.at" in "".join(body) \
                    and type(e).__name__ == "ReadOnlyError":
                return None     # (NumPy's ufunc.at writes into some read-only views)
            if numpy_error is None:
                return f"gradc-error[{t}]", f"{_describe(e)}"
            continue
        except Exception as e:
            if numpy_error is not None and type(e) is type(numpy_error) \
                    and str(e) == str(numpy_error):
                continue        # (NumPy's own error, on values gradc never saw traced)
            return f"raw-error[{t}]", ("numpy: " + _describe(numpy_error) + "\n"
                                       if numpy_error else "") + traceback.format_exc()[-1500:]
        if numpy_error is not None:
            return f"missing-error[{t}]", f"numpy raised {_describe(numpy_error)}"
        fallbacks = [str(w.message) for w in caught if "could not compile" in str(w.message)]
        if fallbacks:
            return f"fallback[{t}]", fallbacks[0][:300]
        got = np.asarray(got)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-12, atol=1e-12):
            return f"value[{t}]", f"numpy {want}\ngradc {got}"
    if numpy_error is not None:
        return None

    def loss(*a):
        return np.sum(np.sin(f(*a)))
    try:
        g = gradc.grad(loss, argnums=(0, 1), target="numpy")(*args)
    except GradcError as e:
        return "grad-gradc-error", _describe(e)
    except Exception:
        return "grad-raw-error", traceback.format_exc()[-1500:]
    if not fd or any(" > 0.3]" in line for line in body):
        return None
    h = 1e-6
    for i, a in enumerate(args):
        num = np.zeros(a.shape)
        for k in np.ndindex(*a.shape):
            vals = []
            for s in (h, -h):
                b = [np.array(c, copy=True) for c in args]
                b[i][k] += s
                vals.append(float(np.sum(np.sin(_numpy_call(f, b)))))
            num[k] = (vals[0] - vals[1]) / (2 * h)
        if np.shape(g[i]) != a.shape or not np.allclose(g[i], num, rtol=1e-5, atol=1e-5):
            return "grad", f"argument {i}: gradc {np.asarray(g[i]).ravel()}\nFD    " \
                           f"{num.ravel()}"
    return None


def minimise(body, args, targets, kind):
    """Drop lines (and returned names) while the failure's kind stays the same."""
    def same(b):
        try:
            r = check(b, args, targets)
        except Exception:
            return False
        return r is not None and r[0] == kind
    changed = True
    while changed:
        changed = False
        for i in range(len(body) - 1):
            trial = body[:i] + body[i + 1:]
            if same(trial):
                body, changed = trial, True
                break
        ret = body[-1]
        inner = ret[len("return np.concatenate(["):-2]
        parts = [p.strip() for p in inner.split(", np.ravel")]
        parts = [parts[0]] + ["np.ravel" + p for p in parts[1:]]
        if len(parts) > 1:
            for j in range(len(parts)):
                rest = parts[:j] + parts[j + 1:]
                trial = body[:-1] + [f"return np.concatenate([{', '.join(rest)}])"]
                if same(trial):
                    body, changed = trial, True
                    break
    return body


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--targets", default="numpy", help="comma-separated: numpy,cpu")
    p.add_argument("--no-fd", action="store_true", help="skip the gradient check")
    p.add_argument("--minimise", action="store_true")
    p.add_argument("--show", action="store_true", help="print each program")
    p.add_argument("--quiet", action="store_true", help="one line per failure")
    opts = p.parse_args(argv)
    targets = [t for t in opts.targets.split(",") if t]
    warnings.simplefilter("ignore")
    failures, errors_expected = [], 0
    for seed in range(opts.seed, opts.seed + opts.n):
        body, args = make(seed)
        if opts.show:
            print(source(body, seed), "x0, x1 =", [a.tolist() for a in args])
        try:
            result = check(body, args, targets, fd=not opts.no_fd)
        except Exception:
            result = ("harness", traceback.format_exc()[-1500:])
        try:
            _numpy_call(load(body), args)
        except Exception:
            errors_expected += 1
        if result is None:
            continue
        kind, msg = result
        if opts.minimise:
            body = minimise(body, args, targets, kind)
            msg = (check(body, args, targets) or (kind, msg))[1]
        failures.append((seed, kind))
        if opts.quiet:
            print(f"FAIL seed {seed}: {kind}: {msg.splitlines()[0] if msg else ''}")
        else:
            print(f"==== FAIL seed {seed}: {kind}\n{source(body, seed)}"
                  f"x0, x1 = {[a.tolist() for a in args]}\n{msg}\n", flush=True)
    kinds = {}
    for _, k in failures:
        kinds[k] = kinds.get(k, 0) + 1
    print(f"{opts.n} programs (seeds {opts.seed}..{opts.seed + opts.n - 1}, targets "
          f"{','.join(targets)}; {errors_expected} end on a line NumPy rejects): "
          f"{len(failures)} failures {kinds}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
