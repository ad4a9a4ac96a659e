"""W7 of shared/BENCHMARKS.md: the full Jacobian of a chain of layers ``x -> tanh(W_i x)``,
gradc's ``jacobian(f, mode="optimal")`` against all-forward and all-reverse (gradc's
``jacfwd``/``jacrev`` and JAX's ``jit(jacfwd)``/``jit(jacrev)``), side by side.

* the hourglass of the workload table, dims 1000 -> 10 -> 1000 -> 10 -> 1000;
* random chains (seeded), to check that the optimal plan is never slower than either pure
  mode by more than noise.

    /work/bench-venv/bin/python benchmarks/jacobian_chain.py [--markdown] [--chains N]

Timing: each function is called in rounds, the functions interleaved (so a slow spell of
the machine falls on all of them); a round takes the fastest of 10 calls, and the figure
is the median over the rounds.  Every Jacobian is checked against gradc's ``jacfwd``.
Target: optimal >= 4x faster than the better of the pure modes (gradc's and JAX's) on the
hourglass, and never slower than either on any chain.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import gradc


def layers(dims, rng):
    return [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(dims, dims[1:])]


def chain_fn(mats, xp=np):
    def f(x):
        for W in mats:
            x = xp.tanh(W @ x)
        return x
    return f


def hand_hourglass(mats):
    """The hourglass Jacobian bracketed by hand in NumPy (orientation only)."""
    def jac(x):
        zs = [x]
        for W in mats:
            zs.append(np.tanh(W @ zs[-1]))
        d = [1.0 - z * z for z in zs[1:]]
        inner = (d[2][:, None] * mats[2]) @ (d[1][:, None] * mats[1]) * d[0][None, :]
        return ((d[3][:, None] * mats[3]) @ inner) @ mats[0]
    return jac


def contenders(dims, rng, with_hand=False):
    mats = layers(dims, rng)
    f = chain_fn(mats)
    out = {"gradc optimal": gradc.jacobian(f, target="cpu"),
           "gradc jacfwd": gradc.jacfwd(f, target="cpu"),
           "gradc jacrev": gradc.jacrev(f, target="cpu")}
    try:
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        jf = chain_fn([jnp.asarray(m) for m in mats], jnp)
        for name, mode in (("JAX jacfwd", jax.jacfwd), ("JAX jacrev", jax.jacrev)):
            compiled = jax.jit(mode(jf))
            out[name] = (lambda c: lambda x: c(x).block_until_ready())(compiled)
    except ImportError:
        pass
    if with_hand:
        out["NumPy by hand"] = hand_hourglass(mats)
    return f, out


def measure(fns, x, rounds=9, calls=10):
    for fn in fns.values():
        fn(x)
        fn(x)
    best = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - start)
            best[name].append(min(times))
    return {name: float(np.median(t)) * 1e3 for name, t in best.items()}


def run_chain(dims, rng, with_hand=False):
    f, fns = contenders(dims, rng, with_hand)
    x = rng.standard_normal(dims[0])
    reference = np.asarray(fns["gradc jacfwd"](x))
    for name, fn in fns.items():
        got = np.asarray(fn(x) if not name.startswith("JAX") else _jax_value(fn, x))
        err = np.max(np.abs(got - reference)) / max(np.max(np.abs(reference)), 1e-300)
        assert err < 1e-10, (name, err)
    plan = gradc.jacobian_plan(f)(x)
    return measure(fns, x), plan


def _jax_value(fn, x):
    # the timed JAX callable blocks and returns the array
    return fn(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--chains", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    rows = []
    times, plan = run_chain([1000, 10, 1000, 10, 1000], rng, with_hand=True)
    rows.append(("hourglass 1000-10-1000-10-1000", times, plan))
    for _ in range(args.chains):
        length = int(rng.integers(3, 6))
        dims = [int(d) for d in rng.choice([5, 20, 100, 300, 1000], size=length + 1)]
        times, plan = run_chain(dims, rng)
        rows.append(("chain " + "-".join(map(str, dims)), times, plan))
    names = list(rows[0][1])
    if args.markdown:
        print("| chain | " + " | ".join(names) + " | optimal vs best pure | bracketing |")
        print("| --- " * (len(names) + 3) + "|")
    for label, times, plan in rows:
        pure = min(t for n, t in times.items() if "jacfwd" in n or "jacrev" in n)
        ratio = pure / times["gradc optimal"]
        if args.markdown:
            cells = " | ".join(f"{times[n]:.3g} ms" if n in times else "" for n in names)
            print(f"| {label} | {cells} | {ratio:.2f}x | `{plan.bracketing()}` |")
        else:
            print(label)
            for n, t in times.items():
                print(f"  {n:<16} {t:8.3f} ms")
            print(f"  optimal vs the best pure mode: {ratio:.2f}x   {plan.bracketing()}")
    print()
    hour = rows[0][1]
    best = min(t for n, t in hour.items() if "jacfwd" in n or "jacrev" in n)
    print(f"- hourglass: optimal {hour['gradc optimal']:.3f} ms, best pure mode {best:.3f} ms: "
          f"{best / hour['gradc optimal']:.2f}x (target >= 4)")
    own = [min(times["gradc jacfwd"], times["gradc jacrev"]) / times["gradc optimal"]
           for _, times, _ in rows[1:]]
    if own:
        print(f"- random chains: optimal vs gradc's better pure mode (the same engine, so "
              f"the ordering alone): worst {min(own):.2f}x, best {max(own):.2f}x "
              "(target >= 1 up to noise)")
        with_jax = [min(t for n, t in times.items() if "jac" in n) / times["gradc optimal"]
                    for _, times, _ in rows[1:]]
        print(f"- random chains: optimal vs the best of all four pure modes: worst "
              f"{min(with_jax):.2f}x, best {max(with_jax):.2f}x")

if __name__ == "__main__":
    main()
