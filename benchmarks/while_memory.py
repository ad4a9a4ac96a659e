#!/usr/bin/env python
"""Memory (and time) of reverse mode through ``gradc.while_loop``, with and without
checkpointing.

The loop (its trip count is data: ``limit`` is an argument of the function, passed as a
0-d int64 array, so the compiled code cannot know it; a Python or NumPy integer scalar
would be static for gradc, and each new value would compile anew)::

    def loss(p, x0, limit):
        def cond(c):  i, x = c;  return i < limit
        def body(c):  i, x = c;  return i + 1, x * 0.9999 + 1e-4 * np.sin(x) * p
        i, x = gradc.while_loop(cond, body, (0, x0), checkpoint=k)
        return np.sum(x)

with ``x`` a float64 vector of n = 1000 (8 kB) and ``limit`` = 10,000 steps.  Reverse
mode needs the loop value of every step on the way back: stored, that is a tape of
10,000 × 8 kB = 80 MB (``checkpoint=None``).  ``checkpoint=k`` stores the loop value
every k steps and recomputes the k steps in between when it gets there: about
(N/k + k) × 8 kB (≈ 8.1 MB for k = 10, ≈ 1.6 MB for k = 100 = √N, the optimum), for
about one more forward sweep of time.

For each gradc target (default: the compiled ``"cpu"`` and the interpreter ``"numpy"``)
and each checkpoint setting, a fresh Python process

1. builds ``gradc.grad(loss)`` and calls it once with ``limit = 3`` (the same shapes and
   dtypes: everything is compiled and warmed up, at next to no memory);
2. collects garbage, notes ``ru_maxrss`` (``resource.getrusage``) and, where Linux
   allows, resets the high-water mark (``echo 5 > /proc/self/clear_refs``) and notes
   ``VmRSS``;
3. makes one gradient call with ``limit = 10,000``, then reads ``ru_maxrss`` and
   ``VmHWM`` again: the RSS columns are the growth of the high-water marks over that
   one call (``getrusage`` can only see a peak above the process's earlier high-water
   mark, the reset ``VmHWM`` sees the peak above the RSS before the call);
4. times further calls (median), and the function alone (``gradc.jit(loss)``);
5. makes one more call under ``tracemalloc`` (peak of traced memory above the memory
   already traced when the call begins).  tracemalloc sees what NumPy and Python
   allocate, not what compiled (Numba) code allocates for itself: for a compiled target
   the RSS columns are the ones to read.

The gradients of all settings are checked against a hand-written reverse sweep in NumPy
(which stores the whole trajectory) and a central finite difference of a plain NumPy
loop along a random direction.

    python benchmarks/while_memory.py                     # targets cpu and numpy
    python benchmarks/while_memory.py --targets numpy --checkpoints none,100 --markdown
    python benchmarks/while_memory.py --steps 1000        # a quicker look

The table goes to stdout, progress and errors to stderr.  A setting that fails (for
instance ``checkpoint=`` not accepted yet, or reverse mode not written yet) is a row with
its error, never fatal.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

DECAY, RATE = 0.9999, 1e-4
WARM_LIMIT = 3


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.5, 1.5, n)
    x0 = rng.uniform(-2.0, 2.0, n)
    return p, x0


# --------------------------------------------------------------------------- NumPy reference


def loss_np(p, x0, limit):
    x = x0.copy()
    for _ in range(int(limit)):
        x = x * DECAY + RATE * np.sin(x) * p
    return float(np.sum(x))


def grad_np(p, x0, limit):
    """Hand-written reverse sweep; stores the trajectory (limit × n floats)."""
    xs = np.empty((int(limit), x0.size))
    x = x0.copy()
    for k in range(int(limit)):
        xs[k] = x
        x = x * DECAY + RATE * np.sin(x) * p
    gx = np.ones_like(x0)
    gp = np.zeros_like(p)
    for k in range(int(limit) - 1, -1, -1):
        xk = xs[k]
        gp += gx * RATE * np.sin(xk)
        gx = gx * (DECAY + RATE * np.cos(xk) * p)
    return gp


def fd_directional(p, x0, limit, g, seed=1, h=1e-5):
    """|<g, v> - central difference along v| / max(|<g, v>|, |fd|), v random."""
    v = np.random.default_rng(seed).standard_normal(p.shape)
    fd = (loss_np(p + h * v, x0, limit) - loss_np(p - h * v, x0, limit)) / (2 * h)
    an = float(np.dot(g, v))
    return abs(fd - an) / max(abs(fd), abs(an), 1e-300)


def rel_err(got, ref):
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300))


# --------------------------------------------------------------------------- the gradc loss


def make_loss(checkpoint):
    import gradc

    kw = {} if checkpoint is None else {"checkpoint": checkpoint}

    def loss(p, x0, limit):
        def cond(c):
            return c[0] < limit

        def body(c):
            i, x = c
            return i + 1, x * DECAY + RATE * np.sin(x) * p

        _, x = gradc.while_loop(cond, body, (np.int64(0), x0), **kw)
        return np.sum(x)
    return loss


# --------------------------------------------------------------------------- worker process


def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_hwm():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # kB on Linux


def worker(spec):
    """One configuration, in a fresh process.  Writes the gradient to spec['out'] (.npy)
    and returns a dict of measurements."""
    import gradc
    target, checkpoint = spec["target"], spec["checkpoint"]
    n, steps, repeats = spec["n"], spec["steps"], spec["repeats"]
    p, x0 = inputs(n)
    # 0-d int64 arrays: gradc takes Python and NumPy integer scalars (np.int64 too) as
    # static, baked into the trace, so that each new limit would compile anew
    limit = np.array(steps, dtype=np.int64)
    warm_limit = np.array(WARM_LIMIT, dtype=np.int64)
    loss = make_loss(checkpoint)
    res = {"notes": []}
    g = gradc.grad(loss, target=target)
    f = gradc.jit(loss, target=target)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        g(p, x0, warm_limit)                       # compile + warm up, tiny trip count
        res["first_call_s"] = time.perf_counter() - t0
        f(p, x0, warm_limit)
    for w in caught:
        if any(c.__name__ == "GradcWarning" for c in w.category.__mro__):
            msg = str(w.message).splitlines()[0]
            if "no lowering for primitive 'while_loop'" in msg:
                msg = (f"GradcWarning: target {target!r} has no lowering for while_loop "
                       "yet, ran the interpreter")
            else:
                msg = "GradcWarning: " + msg[:160]
            if msg not in res["notes"]:
                res["notes"].append(msg)
    try:
        from gradc.codegen import native
        native.wait()                              # a background build of the disk cache
    except Exception:  # noqa: BLE001
        pass

    # --- RSS: one call at full size
    gc.collect()
    rss_before = _status_kb("VmRSS")
    maxrss0 = _maxrss_kb()
    reset = _reset_hwm()
    hwm0 = _status_kb("VmHWM") if reset else None
    t0 = time.perf_counter()
    grad = g(p, x0, limit)
    t_first_full = time.perf_counter() - t0
    maxrss1 = _maxrss_kb()
    hwm1 = _status_kb("VmHWM") if reset else None
    res["rss_before_kb"] = rss_before
    res["maxrss_delta_kb"] = maxrss1 - maxrss0
    res["maxrss_before_kb"] = maxrss0
    res["hwm_delta_kb"] = (hwm1 - hwm0) if reset and hwm0 is not None else None
    grad = np.asarray(grad)
    np.save(spec["out"], grad)
    del grad

    # --- time: gradient and function alone
    ts = [t_first_full]
    for _ in range(repeats - 1):
        gc.collect()
        t0 = time.perf_counter()
        g(p, x0, limit)
        ts.append(time.perf_counter() - t0)
    res["grad_s"] = float(np.median(ts))
    res["grad_repeats"] = len(ts)
    tf = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        val = f(p, x0, limit)
        tf.append(time.perf_counter() - t0)
    res["fun_s"] = float(np.median(tf))
    res["value"] = float(val)

    # --- tracemalloc: one more call
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = g(p, x0, limit)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del out
    res["tracemalloc_peak_b"] = peak - base
    return res


def run_worker(spec, timeout):
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, json; sys.path.insert(0, {here!r})\n"
            "import while_memory as w\n"
            f"spec = json.loads({json.dumps(spec)!r})\n"
            "try:\n"
            "    r = w.worker(spec)\n"
            "except Exception as e:\n"
            "    import traceback; traceback.print_exc()\n"
            "    r = {'error': (type(e).__name__ + ': ' + str(e)).splitlines()[0][:300]}\n"
            "print('WMRESULT ' + json.dumps(r))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("WMRESULT "):
            r = json.loads(line[len("WMRESULT "):])
            if "error" in r:
                r["traceback"] = p.stderr
            return r
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"worker exited {p.returncode}: {tail}"[:300], "traceback": p.stderr}


# --------------------------------------------------------------------------- report


def fmt_bytes(b):
    if b is None:
        return "—"
    b = float(b)
    if abs(b) >= 1e6:
        return f"{b / 1e6:.1f} MB"
    if abs(b) >= 1e3:
        return f"{b / 1e3:.0f} kB"
    return f"{b:.0f} B"


def fmt_time(s):
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def theory_bytes(steps, n, checkpoint):
    """Loop values (the x vectors) kept alive by the reverse sweep at its peak."""
    vec = n * 8
    if checkpoint is None:
        return steps * vec
    k = int(checkpoint)
    return math.ceil(steps / k) * vec + min(k, steps) * vec


def print_table(header, rows, markdown):
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join("---" for _ in header) + " |")
        for r in rows:
            print("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
        return
    widths = [min(70, max(len(h), *(len(str(r[i])) for r in rows))) if rows else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def parse_checkpoints(s):
    out = []
    for t in s.split(","):
        t = t.strip().lower()
        if not t:
            continue
        out.append(None if t in ("none", "0") else int(t))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000, help="loop trip count (default 10000)")
    ap.add_argument("--n", type=int, default=1000, help="length of the loop vector x")
    ap.add_argument("--checkpoints", default="none,10,100",
                    help="comma-separated checkpoint settings; 'none' stores every step")
    ap.add_argument("--targets", default="cpu,numpy",
                    help="comma-separated gradc targets (default cpu,numpy)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="gradient calls timed per setting (median)")
    ap.add_argument("--timeout", type=float, default=600,
                    help="seconds allowed to each setting's process")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--tol", type=float, default=1e-10,
                    help="max relative error against the hand-written gradient")
    cfg = ap.parse_args(argv)
    checkpoints = parse_checkpoints(cfg.checkpoints)
    targets = [t.strip() for t in cfg.targets.split(",") if t.strip()]

    own_cache = None
    if "GRADC_CACHE_DIR" not in os.environ:
        own_cache = tempfile.mkdtemp(prefix="gradc-while-mem-")
        os.environ["GRADC_CACHE_DIR"] = own_cache
    work = tempfile.mkdtemp(prefix="gradc-while-mem-out-")
    t_start = time.perf_counter()
    try:
        p, x0 = inputs(cfg.n)
        log(f"reference: NumPy loop, hand reverse sweep, finite difference ({cfg.steps} steps)")
        ref_value = loss_np(p, x0, cfg.steps)
        ref = grad_np(p, x0, cfg.steps)
        fd_ref = fd_directional(p, x0, cfg.steps, ref)
        results = []
        for target in targets:
            for ck in checkpoints:
                name = f"{target}-{ck}"
                log(f"== target={target!r} checkpoint={ck}")
                spec = dict(target=target, checkpoint=ck, n=cfg.n, steps=cfg.steps,
                            repeats=max(1, cfg.repeats),
                            out=os.path.join(work, name + ".npy"))
                try:
                    r = run_worker(spec, cfg.timeout)
                except subprocess.TimeoutExpired:
                    r = {"error": f"timed out after {cfg.timeout:g} s"}
                if "error" in r:
                    log(f"   ERROR: {r['error']}")
                    if r.get("traceback"):
                        log(r["traceback"].rstrip())
                    r["grad"] = None
                else:
                    r["grad"] = np.load(spec["out"])
                results.append((target, ck, r))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if own_cache:
            shutil.rmtree(own_cache, ignore_errors=True)

    # agreement across settings: against the first setting that ran
    rows = []
    first = next(((t, c, r["grad"]) for t, c, r in results if r["grad"] is not None), None)
    for target, ck, r in results:
        ck_s = "None (every step)" if ck is None else str(ck)
        theory = fmt_bytes(theory_bytes(cfg.steps, cfg.n, ck))
        if r["grad"] is None:
            rows.append([target, ck_s, f"ERROR: {r['error']}", "", "", "", "", "", theory,
                         "", "", ""])
            continue
        g = r["grad"]
        e_ref = rel_err(g, ref)
        ok = "ok" if e_ref <= cfg.tol else "MISMATCH"
        vs_first = ("(the first)" if first[2] is g else
                    f"{rel_err(g, first[2]):.1e} vs {first[0]}/{first[1]}")
        fd = fd_directional(p, x0, cfg.steps, g)
        val_err = abs(r["value"] - ref_value) / abs(ref_value)
        notes = list(r["notes"])
        if val_err > 1e-10:
            notes.append(f"forward value off by {val_err:.1e}")
        rows.append([
            target, ck_s, fmt_time(r["grad_s"]), fmt_time(r["fun_s"]),
            f"{r['grad_s'] / r['fun_s']:.2f}" if r["fun_s"] else "",
            fmt_bytes(r["tracemalloc_peak_b"]),
            fmt_bytes(r["maxrss_delta_kb"] * 1024),
            fmt_bytes(r["hwm_delta_kb"] * 1024) if r["hwm_delta_kb"] is not None else "n/a",
            theory,
            f"{ok} {e_ref:.1e}",
            vs_first,
            f"FD {fd:.1e}" + ("; " + "; ".join(notes) if notes else ""),
        ])
    header = ["target", "checkpoint", "grad time", "function time", "grad / function",
              "tracemalloc peak", "RSS HWM Δ (getrusage)", "RSS HWM Δ (reset VmHWM)",
              "theory (x per step kept)", "vs hand gradient", "vs first setting", "note"]
    md = cfg.markdown
    elapsed = time.perf_counter() - t_start
    import importlib.metadata as imd
    try:
        gv = imd.version("gradc")
    except Exception:  # noqa: BLE001
        gv = "?"
    print(("**" if md else "") + "Reverse mode through gradc.while_loop: memory and time"
          + ("**" if md else ""))
    print()
    print(f"- date {time.strftime('%Y-%m-%d %H:%M %Z')}; gradc {gv}, numpy {np.__version__}, "
          f"python {platform.python_version()}; {os.cpu_count()} logical CPUs; total "
          f"{elapsed:.0f} s")
    print(f"- loop: {cfg.steps} steps (trip count passed as data), x float64 of n={cfg.n} "
          f"({fmt_bytes(cfg.n * 8)}); x <- {DECAY}*x + {RATE}*sin(x)*p; loss = sum(x); "
          f"gradient w.r.t. p")
    print(f"- tape without checkpointing: {cfg.steps} × {fmt_bytes(cfg.n * 8)} = "
          f"{fmt_bytes(cfg.steps * cfg.n * 8)}; with checkpoint=k about (N/k + k) vectors")
    print(f"- hand-written reverse sweep vs finite difference: {fd_ref:.1e}; gradient "
          f"tolerance {cfg.tol:g} (max abs error / max abs reference)")
    print("- grad time: median of the calls at full size; the memory columns are for one "
          "call, after a warm-up call with limit=3; tracemalloc does not see memory that "
          "compiled code allocates itself; RSS HWM Δ (getrusage) is the growth of the "
          "process's lifetime peak RSS, a lower bound (0 when the call's peak stays under "
          "an earlier one, e.g. from imports and compiling); RSS HWM Δ (reset VmHWM) is the "
          "peak above the RSS at the start of the call")
    print()
    print_table(header, rows, md)
    return 0 if all(r["grad"] is not None for _, _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
