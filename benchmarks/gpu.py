#!/usr/bin/env python
"""GPU benchmarks (G1-G4 of shared/BENCHMARKS.md): gradc's CUDA target side by side
with JAX and PyTorch in one run, and a device-to-device copy of the same bytes as the
bandwidth reference.

* G1: Rosenbrock gradient, n = 2^26 (float64 and float32);
* G2: W2's scalar function ``sin(ab) + exp(c / (1 + a²)) log(1 + b²) - abc``, its
  gradient at each of n = 2^24 independent points (``vmap(grad)``; one gradc kernel);
* G3: the W3 MLP loss gradient, float32, B=4096, D=1024, H=1024, C=10, twice: with
  float32 products for everyone ("highest": gradc's default, PyTorch's, JAX's
  ``jax_default_matmul_precision="float32"``), and with TensorFloat-32 products for
  everyone ("high": ``gradc.set_float32_matmul_precision("high")``, JAX's default on
  these GPUs, PyTorch's ``allow_tf32``);
* G4: the W4 CRF log-partition gradient through ``scan``, float32, B=256, T=128, K=64.

Inputs live on the device for every implementation (numba.cuda device arrays for
gradc, ``jax.device_put`` arrays, CUDA tensors), so no transfer is timed.  Each time is
the median of ``--repeats`` calls, each followed by a device synchronisation; every
result is checked against gradc's CPU target (relative to the largest entry; the
peers' differences go to stderr) before anything is timed.  ``copy`` is a
device-to-device copy that moves as many bytes as the gradient must (G1: x read, the
gradient written, so a copy of x; G2: a copy of a, b and c), the fastest of numba's,
PyTorch's and CuPy's; "of copy" is copy time / gradc time, the fraction of copy
bandwidth gradc reaches.

    python benchmarks/gpu.py [--only G1,G2] [--repeats 30]      # prints a Markdown table
    python benchmarks/gpu.py --only G1,G2 --fastmath          # gradc with fastmath=True
    GRADC_CUDA_POOL=0 python benchmarks/gpu.py                # numba's allocator, no cache
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu.py --quick   # smoke test, no GPU
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradc                                              # noqa: E402
from gradc.codegen.cuda import import_cuda, simulator    # noqa: E402

cuda = import_cuda()          # (numba.cuda after the NumPy 2.5 shim)

SIZES = {"G1": 1 << 26, "G2": 1 << 24, "G3": (4096, 1024, 1024, 10), "G4": (256, 128, 64)}
QUICK = {"G1": 1 << 8, "G2": 1 << 6, "G3": (8, 8, 8, 3), "G4": (2, 4, 3)}


def peers(wanted):
    found = {}
    if "jax" in wanted:
        try:
            import jax
            jax.config.update("jax_enable_x64", True)
            if any(d.platform == "gpu" for d in jax.devices()):
                found["jax"] = jax
        except Exception:
            pass
    if "torch" in wanted:
        try:
            import torch
            if torch.cuda.is_available():
                found["torch"] = torch
        except Exception:
            pass
    return found


def small_args(doc, repeats):
    """The command line of a benchmark of small workloads (``one_sequence.py``,
    ``one_run.py``): ``--repeats``, ``--quick`` (tiny sizes, a smoke test), ``--no-peers``;
    returns (the arguments, the peers found: JAX unless ``--no-peers``)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    return args, peers(() if args.no_peers else ("jax",))


TABLE = ("| workload | variant | time | kernels compiled | agrees |\n"
         "| --- | --- | --- | --- | --- |")


def print_table_head():
    """The GPU's name, then the head of ``TABLE``."""
    print(f"GPU: {gpu_name()}")
    print()
    print(TABLE)


def listed(r):
    """A function's result as a list of its arrays."""
    return list(r) if isinstance(r, (tuple, list)) else [r]


def relative_error(got, ref) -> float:
    """The largest difference of ``got`` from ``ref``, each array's relative to its
    largest entry (or 1)."""
    return max(float(np.max(np.abs(np.asarray(a) - b)) / max(1.0, float(np.max(np.abs(b)))))
               for a, b in zip(got, ref))


def gradc_row(label, variant, env, make, dev, host, ref, repeats) -> bool:
    """Print the table row (``TABLE``) of gradc's function ``make()`` compiled and run
    with ``env`` set in the environment (a variant, e.g. an A/B switch), on device
    inputs ``dev`` (``host``: the same on the host); whether it agrees with ``ref``."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        g = make()
        err = relative_error([to_host(r) for r in listed(g(*dev))], ref)
        kernels = len(g.compile(*host).kernels)
        t = timed(lambda: g(*dev), cuda.synchronize, repeats)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print(f"| {label} | gradc, {variant} | {t * 1e3:.3f} ms | {kernels} | "
          f"{'yes' if err <= 1e-3 else 'NO'} ({err:.0e}) |", flush=True)
    return err <= 1e-3


def jax_row(label, what, jax, fn, host, ref, repeats) -> bool:
    """Print the table row of JAX's jitted ``fn`` on ``host``'s arrays put on the
    device (``what``: how it is made); whether it agrees with ``ref``."""
    jin = [jax.device_put(v) for v in host]
    err = relative_error([np.asarray(r) for r in listed(fn(*jin))], ref)
    t = timed(lambda: jax.block_until_ready(fn(*jin)), lambda: None, repeats)
    print(f"| {label} | JAX {what} | {t * 1e3:.3f} ms | — | "
          f"{'yes' if err <= 1e-3 else 'NO'} ({err:.0e}) |", flush=True)
    return err <= 1e-3


def timed(fn, sync, repeats):
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def to_host(x):
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "block_until_ready"):
        return np.asarray(x)
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def copy_time(nbytes, repeats, found=None):
    """A device-to-device copy moving ``nbytes`` (half of them read, half written): the
    fastest of numba's ``copy_to_device`` (one ``cuMemcpyDtoD`` behind tens of µs of
    Python) and PyTorch's ``copy_`` and CuPy's ``copyto`` where installed, so that
    "of copy" compares with the GPU's bandwidth rather than with a library's overhead."""
    n = nbytes // 16
    src = cuda.device_array(n, np.float64)
    dst = cuda.device_array(n, np.float64)
    best = timed(lambda: dst.copy_to_device(src), cuda.synchronize, repeats)
    torch = (found or {}).get("torch")
    if torch is not None:
        a, b = torch.empty(n, dtype=torch.float64, device="cuda"), \
            torch.empty(n, dtype=torch.float64, device="cuda")
        best = min(best, timed(lambda: b.copy_(a), torch.cuda.synchronize, repeats))
    try:
        import cupy
        a, b = cupy.empty(n, np.float64), cupy.empty(n, np.float64)
        best = min(best, timed(lambda: cupy.copyto(b, a), cupy.cuda.Device().synchronize,
                               repeats))
    except Exception:                   # (no CuPy, or none that works here)
        pass
    return best


# ---------------------------------------------------------------- workloads

def rosen(xp):
    def f(x):
        return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    return f


def w2(xp):
    def f(a, b, c):
        return xp.sin(a * b) + xp.exp(c / (1 + a * a)) * xp.log(1 + b * b) - a * b * c
    return f


def mlp(xp):
    def f(W1, W2, X, onehot):
        z = xp.tanh(X @ W1) @ W2
        m = xp.amax(z, axis=1, keepdims=True)     # (torch.max gives values and indices)
        lse = xp.log(xp.sum(xp.exp(z - m), axis=1)) + m[:, 0]
        return xp.mean(lse - xp.sum(z * onehot, axis=1))
    return f


def crf_gradc(U, A):
    def step(alpha, u):
        return gradc.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
    xs = np.transpose(U, (1, 0, 2))
    alpha, _ = gradc.scan(step, xs[0], xs[1:])
    return np.sum(gradc.logsumexp(alpha, axis=1))


def with_precision(jax, fn, precision):
    """A JAX function traced and run with float32 products at ``precision``."""
    level = {"highest": "float32", "high": "tensorfloat32"}[precision]

    def run(*args):
        with jax.default_matmul_precision(level):
            return fn(*args)
    return run


def cases(name, size, dtype, rng, found, precision="highest"):
    """(inputs on the host, gradc's function for a target (and options: fastmath),
    {peer: (function, inputs on its device)}, bytes moved) for one workload."""
    out = {}
    if name == "G1":
        x = (rng.standard_normal(size) * 0.5).astype(dtype)
        g = lambda target, **kw: gradc.grad(rosen(np), target=target, **kw)  # noqa: E731
        if "jax" in found:
            jax = found["jax"]
            out["JAX jit(grad)"] = (jax.jit(jax.grad(rosen(jax.numpy))), [jax.device_put(x)])
        if "torch" in found:
            torch = found["torch"]
            tx = torch.tensor(x, device="cuda", requires_grad=True)
            out["PyTorch autograd"] = (
                lambda t: torch.autograd.grad(rosen(torch)(t), t)[0], [tx])
        return [x], g, out, 2 * x.nbytes
    if name == "G2":
        a, b, c = (rng.uniform(-1, 1, size).astype(dtype) for _ in range(3))
        g = lambda target, **kw: gradc.jit(  # noqa: E731
            gradc.vmap(gradc.grad(w2(np), argnums=(0, 1, 2))), target=target, **kw)
        if "jax" in found:
            jax = found["jax"]
            jg = jax.jit(jax.vmap(jax.grad(w2(jax.numpy), argnums=(0, 1, 2))))
            out["JAX jit(vmap(grad))"] = (jg, [jax.device_put(v) for v in (a, b, c)])
        if "torch" in found:
            torch = found["torch"]
            tf = torch.func.vmap(torch.func.grad(w2(torch), argnums=(0, 1, 2)))
            out["PyTorch func.vmap(grad)"] = (
                tf, [torch.tensor(v, device="cuda") for v in (a, b, c)])
        return [a, b, c], g, out, 6 * a.nbytes
    if name == "G3":
        B, D, H, C = size
        X = rng.standard_normal((B, D)).astype(dtype)
        W1 = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(dtype)
        W2 = (rng.standard_normal((H, C)) / np.sqrt(H)).astype(dtype)
        onehot = np.eye(C, dtype=dtype)[rng.integers(0, C, B)]
        g = lambda target, **kw: gradc.grad(mlp(np), argnums=(0, 1), target=target,  # noqa
                                            **kw)
        if "jax" in found:
            jax = found["jax"]
            out["JAX jit(grad)"] = (with_precision(jax, jax.jit(jax.grad(
                mlp(jax.numpy), argnums=(0, 1))), precision),
                [jax.device_put(v) for v in (W1, W2, X, onehot)])
        if "torch" in found:
            torch = found["torch"]
            torch.backends.cuda.matmul.allow_tf32 = precision == "high"
            ts = [torch.tensor(v, device="cuda") for v in (W1, W2, X, onehot)]
            ts[0].requires_grad_(True)
            ts[1].requires_grad_(True)
            out["PyTorch autograd"] = (
                lambda *t: torch.autograd.grad(mlp(torch)(*t), t[:2]), ts)
        return [W1, W2, X, onehot], g, out, None
    if name == "G4":
        B, T, K = size
        U = rng.standard_normal((B, T, K)).astype(dtype)
        A = (0.5 * rng.standard_normal((K, K))).astype(dtype)
        g = lambda target, **kw: gradc.grad(crf_gradc, argnums=(0, 1),  # noqa: E731
                                            target=target, **kw)
        if "jax" in found:
            jax = found["jax"]
            jnp = jax.numpy

            def crf_jax(U, A):
                def step(alpha, u):
                    return jax.nn.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
                xs = jnp.transpose(U, (1, 0, 2))
                alpha, _ = jax.lax.scan(step, xs[0], xs[1:])
                return jnp.sum(jax.nn.logsumexp(alpha, axis=1))
            out["JAX jit(grad) lax.scan"] = (jax.jit(jax.grad(crf_jax, argnums=(0, 1))),
                                             [jax.device_put(U), jax.device_put(A)])
        if "torch" in found:
            torch = found["torch"]

            def crf_torch(U, A):
                alpha = U[:, 0]
                for t in range(1, U.shape[1]):
                    alpha = torch.logsumexp(alpha[:, :, None] + A[None], dim=1) + U[:, t]
                return torch.sum(torch.logsumexp(alpha, dim=1))
            tu = torch.tensor(U, device="cuda", requires_grad=True)
            ta = torch.tensor(A, device="cuda", requires_grad=True)
            out["PyTorch eager"] = (lambda u, a: torch.autograd.grad(crf_torch(u, a),
                                                                     (u, a)), [tu, ta])
        return [U, A], g, out, None
    raise ValueError(name)


def sync_for(label, found):
    if label.startswith("JAX"):
        return lambda: None           # (the call blocks: see run)
    if label.startswith("PyTorch"):
        return found["torch"].cuda.synchronize
    return cuda.synchronize


def run(args):
    found = peers(() if args.no_peers else ("jax", "torch"))
    sizes = QUICK if args.quick else SIZES
    rng = np.random.default_rng(0)
    rows = []
    for name in args.only:
        variants = [(np.float64, "highest"), (np.float32, "highest")] \
            if name in ("G1", "G2") else [(np.float32, "highest")]
        if name == "G3":
            variants.append((np.float32, "high"))
        for dtype, precision in variants:
            label = np.dtype(dtype).name + ("" if precision == "highest" else " (TF32)") \
                + (" fastmath" if args.fastmath else "")
            try:
                rows.append(one_row(name, label, dtype, precision, sizes, rng, found,
                                    args))
            except Exception:           # (one workload failing must not hide the others)
                traceback.print_exc()
                print(f"{name} {label}: FAILED (traceback above)", file=sys.stderr,
                      flush=True)
                rows.append((name, label, None, None, None, float("nan"), False))
    return rows


def one_row(name, label, dtype, precision, sizes, rng, found, args):
    """One table row: gradc's CUDA target checked against its CPU target, then timed
    beside each peer (a peer that fails is reported and left out of the row)."""
    gradc.set_float32_matmul_precision(precision)
    host, make, peer_fns, nbytes = cases(name, sizes[name], dtype, rng, found, precision)
    g = make("cuda", fastmath=True) if args.fastmath else make("cuda")
    dev = [cuda.to_device(v) for v in host]
    ours = g(*dev)
    ours = [to_host(o) for o in (ours if isinstance(ours, tuple) else (ours,))]
    ref = make("cpu")(*host)                    # the reference: gradc's CPU target
    ref = [np.asarray(r) for r in (ref if isinstance(ref, tuple) else (ref,))]
    tol = 1e-9 if dtype == np.float64 else 1e-3 if precision == "highest" else 2e-2
    err = max(float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
              for a, b in zip(ours, ref))
    times = {"gradc cuda": timed(lambda: g(*dev), cuda.synchronize, args.repeats)}
    again = g(*dev)                             # (the launch path after warm-up, checked too)
    again = [to_host(o) for o in (again if isinstance(again, tuple) else (again,))]
    err = max([err] + [float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
                       for a, b in zip(again, ref)])
    peer_err = {}
    for label, (fn, inputs) in peer_fns.items():
        try:
            result = fn(*inputs)
            result = [to_host(r) for r in (result if isinstance(result, tuple)
                                            else (result,))]
            peer_err[label] = max(float(np.max(np.abs(a - b))) for a, b in
                                  zip(result, ref))
            if label.startswith("JAX"):
                times[label] = timed(lambda: found["jax"].block_until_ready(
                    fn(*inputs)), lambda: None, args.repeats)
            else:
                times[label] = timed(lambda: fn(*inputs), sync_for(label, found),
                                     args.repeats)
        except Exception:
            traceback.print_exc()
            print(f"{name}: peer {label} failed", file=sys.stderr, flush=True)
    copy = copy_time(nbytes, args.repeats, found) if nbytes else None
    print(f"{name} {label}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items())
          + (f", copy {copy * 1e3:.3f} ms" if copy else "")
          + f"; max rel difference {err:.1e}; peers' max abs differences "
          + ", ".join(f"{k} {v:.1e}" for k, v in peer_err.items()),
          file=sys.stderr, flush=True)
    return (name, label, times, copy, nbytes, err, err <= tol)


def table(rows):
    pool = "off" if os.environ.get("GRADC_CUDA_POOL") == "0" else "on"
    print(f"GPU: {gpu_name()}; Python {platform.python_version()}, NumPy {np.__version__}; "
          f"gradc's memory pool (GRADC_CUDA_POOL): {pool}")
    print()
    print("| workload | dtype | gradc | JAX | PyTorch | gradc / JAX | copy | of copy "
          "| agrees |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, dtype, times, copy, nbytes, err, ok in rows:
        if times is None:
            print(f"| {name} | {dtype} | failed | | | | | | NO |")
            continue
        ours = times["gradc cuda"]
        jax = next((v for k, v in times.items() if k.startswith("JAX")), None)
        torch = next((v for k, v in times.items() if k.startswith("PyTorch")), None)

        def ms(t):
            return "—" if t is None else f"{t * 1e3:.3f} ms"
        ratio = "—" if jax is None else f"{ours / jax:.2f}"
        frac = "—" if copy is None else f"{copy / ours:.0%}"
        print(f"| {name} | {dtype} | {ms(ours)} | {ms(jax)} | {ms(torch)} | {ratio} | "
              f"{ms(copy)} | {frac} | {'yes' if ok else 'NO'} ({err:.0e}) |")


def gpu_name():
    if simulator():
        return "numba.cuda simulator (no GPU: times mean nothing)"
    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="G1,G2,G3,G4")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--fastmath", action="store_true",
                    help="gradc's functions with fastmath=True (approximate float32 "
                         "division and functions; the peers unchanged)")
    args = ap.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.quick:
        args.repeats = min(args.repeats, 2)
    rows = run(args)
    table(rows)
    bad = [r for r in rows if not r[6]]
    if bad:
        print(f"gradc disagrees with the reference on {[r[0] for r in bad]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
