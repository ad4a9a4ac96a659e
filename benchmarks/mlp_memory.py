#!/usr/bin/env python
"""Peak memory (and time) of one compiled MLP gradient, with and without checkpointing.

The loss is a tanh MLP of ``L`` square layers on a batch ``x`` of B × D float64::

    def loss(Ws, x):
        h = x
        for W in Ws:  h = np.tanh(h @ W)
        return np.sum(h * h)

With ``--segment k`` the layers are grouped k at a time and each group is wrapped in
``gradc.checkpoint`` (``jax.checkpoint`` for JAX): reverse mode keeps the group's input
and recomputes its layers in the backward pass.  Each row runs in a fresh Python process,
which builds the gradient, calls it once (compiling it), resets the RSS high-water mark
(``echo 5 > /proc/self/clear_refs``), calls it again and reports how far the high-water
mark rose above the RSS before that call (the memory the call needs beyond its inputs),
and the median time of three more calls.  For that call gradc's pool of idle buffers
(``codegen/buffers.py``, which keeps up to 256 MiB of dropped results for the next call)
is off, and ``malloc_trim`` gives the heap memory freed so far back to the system, so
that the second call's needs show as a rise (not hidden in memory the first call, or
compiling, left behind); the timed calls use the pool, as gradc does by default.

The activations reverse mode keeps are L × B × D × 8 bytes without checkpointing
(16 × 32 MB = 512 MB at the defaults), about (L/k + k) × B × D × 8 with groups of k.

    python benchmarks/mlp_memory.py [--layers 16 --batch 4000 --width 1000]
                                    [--segments 0,4] [--skip jax]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import ctypes, gc, json, os, statistics, sys, time
import numpy as np
L, B, D, SEG, WHO = {L}, {B}, {D}, {SEG}, {WHO!r}
rng = np.random.default_rng(0)
Ws = [rng.standard_normal((D, D)) / np.sqrt(D) for _ in range(L)]
x = rng.standard_normal((B, D))

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

if WHO == "gradc":
    import gradc
    from gradc.codegen import buffers
    pool, buffers._LIMIT = buffers._LIMIT, 0     # (no idle blocks kept: see the docstring)
    tanh, total, ck = np.tanh, np.sum, gradc.checkpoint
else:
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    tanh, total, ck = jnp.tanh, jnp.sum, jax.checkpoint

def block(Wseg, h):
    for W in Wseg:
        h = tanh(h @ W)
    return h

def loss(Ws, x):
    h = x
    step = SEG or L
    for i in range(0, L, step):
        h = (ck(block) if SEG else block)(Ws[i:i + step], h)
    return total(h * h)

if WHO == "gradc":
    g = gradc.grad(loss, target="cpu")
    run = lambda: g(Ws, x)
else:
    g = jax.jit(jax.grad(loss))
    Wj, xj = [jnp.asarray(W) for W in Ws], jnp.asarray(x)
    run = lambda: jax.block_until_ready(g(Wj, xj))
out = run()
del out
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)     # (heap memory freed so far back to the system)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kb("VmRSS")
out = run()
peak = kb("VmHWM")
check = float(np.sum(np.asarray(out[0])))
del out
if WHO == "gradc":
    buffers._LIMIT = pool           # timed with the pool, as gradc runs by default
times = []
for _ in range(4):
    t = time.perf_counter(); out = run(); times.append(time.perf_counter() - t); del out
times = times[1:]                   # (the first fills the pool)
print(json.dumps(dict(rise_mb=(peak - before) / 1e3, before_mb=before / 1e3,
                      time_s=statistics.median(times),
                      check=check)))
"""


def measure(who, layers, batch, width, segment):
    code = CHILD.format(L=layers, B=batch, D=width, SEG=segment, WHO=who)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=1800)
    if p.returncode:
        raise RuntimeError(f"{who} segment={segment}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--segments", default="0,4", help="checkpoint group sizes (0: none)")
    ap.add_argument("--skip", default="", help="comma-separated: jax")
    a = ap.parse_args(argv)
    act = a.layers * a.batch * a.width * 8 / 1e6
    rows = []
    for who in ("gradc", "jax"):
        if who in a.skip.split(","):
            continue
        if who == "jax":
            try:
                import jax  # noqa: F401
            except ImportError:
                continue
        for seg in (int(s) for s in a.segments.split(",")):
            r = measure(who, a.layers, a.batch, a.width, seg)
            kept = act if not seg else (a.layers // seg + seg) * act / a.layers
            rows.append((who, seg, r, kept))
    print("| implementation | checkpoint | RSS before the call | peak rise in the call "
          "| time per call | activations kept (theory) | sum of dW₀ |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for who, seg, r, kept in rows:
        name = "gradc grad (cpu)" if who == "gradc" else "JAX jit(grad)"
        print(f"| {name} | {f'every {seg} layers' if seg else 'none'} "
              f"| {r['before_mb']:.0f} MB | {r['rise_mb']:.0f} MB | {r['time_s']:.2f} s "
              f"| {kept:.0f} MB "
              f"| {r['check']:.10e} |")


if __name__ == "__main__":
    main()
