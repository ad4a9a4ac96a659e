#!/usr/bin/env python
"""Where a GPU workload's time goes: for each of G1-G4 (``benchmarks/gpu.py``'s cases),
the time per call with a device synchronisation, the host's share (the call returning
with the GPU idle before it: Python, numba's launches, allocation), and every kernel's
GPU time per call, read by CUPTI through PyTorch's profiler (which sees the kernels of
every library in the process: numba's, CuPy's cuBLAS, XLA's).  Needs PyTorch with CUDA.

    python benchmarks/gpu_profile.py [--only G1,G4] [--peer]   # --peer: JAX's kernels too
    python benchmarks/gpu_profile.py --host          # + cProfile of gradc's host side
    ncu ... python benchmarks/gpu_profile.py --plain # each workload run twice, no profiler
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu          # noqa: E402  (gradc, numba.cuda after its shim, the workloads)


def host_and_total(fn, sync, repeats=20):
    for _ in range(3):
        fn()
    sync()
    host, total = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        sync()
        host.append(t1 - t0)
        total.append(time.perf_counter() - t0)
    return statistics.median(host), statistics.median(total)


def kernels(torch, fn, sync, calls=10):
    """(name, launches per call, µs per call) of every GPU kernel over ``calls`` calls."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        sync()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            rows.append((e.key[:70], e.count / calls, t / calls))
    return sorted(rows, key=lambda r: -r[2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="G1,G2,G3,G4")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--host", action="store_true", help="cProfile the host side")
    ap.add_argument("--plain", action="store_true", help="no profiler (for ncu)")
    args = ap.parse_args()
    if args.plain:
        rng = np.random.default_rng(0)
        for name in args.only.split(","):
            host, make, _, _ = gpu.cases(name, gpu.SIZES[name], np.float32, rng, {})
            g = make("cuda")
            dev = [gpu.cuda.to_device(v) for v in host]
            for _ in range(2):
                g(*dev)
            gpu.cuda.synchronize()
        return
    import torch
    found = gpu.peers(("jax",) if args.peer else ())
    rng = np.random.default_rng(0)
    for name in args.only.split(","):
        dtype = np.float32
        host, make, peer_fns, _ = gpu.cases(name, gpu.SIZES[name], dtype, rng, found)
        g = make("cuda")
        dev = [gpu.cuda.to_device(v) for v in host]
        runs = [("gradc", lambda: g(*dev), gpu.cuda.synchronize)]
        for label, (fn, inputs) in peer_fns.items():
            jax = found["jax"]
            runs.append((label, lambda fn=fn, inputs=inputs: jax.block_until_ready(
                fn(*inputs)), lambda: None))
        for label, fn, sync in runs:
            h, t = host_and_total(fn, sync)
            rows = kernels(torch, fn, sync)
            gpu_us = sum(r[2] for r in rows)
            print(f"## {name} float32, {label}: {t * 1e3:.3f} ms per call, host "
                  f"{h * 1e3:.3f} ms, kernels {gpu_us / 1e3:.3f} ms "
                  f"({sum(r[1] for r in rows):.0f} launches)")
            for k, n, us in rows[:12]:
                print(f"    {us:9.1f} us  x{n:5.1f}  {k}")
            if label == "gradc":
                print("    " + launch_report(g, dev))
            if args.host and label == "gradc":
                host_profile(fn, sync)
            sys.stdout.flush()


def launch_report(g, dev) -> str:
    """How gradc's kernels launch (directly, or through numba, and why) and how its
    products run (cuBLAS directly, or through CuPy): whether the checks of
    ``DirectKernel`` and ``Gemm`` passed on this GPU."""
    from gradc.codegen import cuda
    compiled = g.compile(*dev)
    states = {}
    for k in compiled.kernels:
        obj = compiled.module.__dict__[k]
        state = getattr(obj, "state", "numba's dispatcher")
        states[str(state)] = states.get(str(state), 0) + 1
    gemm = cuda.cupy_gemm
    plans = "no CuPy" if gemm is None else (
        f"{sum(bool(p) for p in gemm.plans.values())} of {len(gemm.plans)} products "
        "straight to cuBLAS" if gemm.cublas is not None else "products through CuPy")
    return f"launches: {states}; {plans}"


def host_profile(fn, sync, calls=100):
    """The host side of ``calls`` calls by cProfile (the GPU's time is not in it)."""
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    text = out.getvalue()
    print("    host, cProfile of %d calls (seconds in all):" % calls)
    print("\n".join("      " + line for line in text.splitlines()[4:] if line.strip()))


if __name__ == "__main__":
    main()
