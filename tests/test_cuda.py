"""The CUDA target (``gradc.codegen.cuda``) against the CPU backend and the interpreter.

Without a GPU these run in numba.cuda's simulator (``tests/conftest.py``), with the same
generated kernels; with one, on it.  Sizes are small: the simulator runs each GPU thread
as a Python thread.  ``test_kernels_compile_to_ptx`` compiles the generated kernels with
numba.cuda's real compiler in a subprocess (CUDA's NVVM, no GPU needed) so that what the
simulator accepts but the GPU compiler would not (an unsupported function, a type that
does not unify) is caught too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc.codegen import cudagen, cudarows
from gradc.codegen.compile import optimise

from test_codegen import assert_outputs_match, reference
from test_licm import histogram_case, histogram_steps
from test_prims import ELEMENTWISE, FLOAT32_ROWS, ROWS, pytestmark  # noqa: F401

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
KINDS = ("primal", "jvp", "vjp")
ONE_RUN_WORK = cudarows.ONE_RUN_WORK


@pytest.fixture(autouse=True)
def _no_one_block_runs(monkeypatch):
    """This module's small programs stand for large ones (the simulator runs each thread
    as a Python thread): runs of small equations outside loops are not one block here
    (``cudarows.one_run``), so that each test sees the kernels a program of real size
    gets.  The tests of that lowering turn it back on (``_one_runs``)."""
    monkeypatch.setattr(cudarows, "ONE_RUN_WORK", 0)


def _one_runs(monkeypatch, work=ONE_RUN_WORK):
    monkeypatch.setattr(cudarows, "ONE_RUN_WORK", work)


def _compile(graph, name):
    from gradc.codegen.cuda import Compiled
    return Compiled(optimise(graph, "cuda"), name)


def _check_row(row, kind, float32=False):
    graph, args, want = reference(row, kind, float32=float32)
    got = _compile(graph, f"{kind}_{row.id.replace('-', '_')}")(*args)
    if row.id == "eigh-vectors":
        got, want = _in_the_same_eigenbasis(row, kind, graph, args, got, want, float32)
    assert_outputs_match(got, want, graph.outputs, 1e-5 if float32 else 1e-12)


def _in_the_same_eigenbasis(row, kind, graph, args, got, want, float32):
    """cuSOLVER (on a GPU with CuPy) and LAPACK may choose opposite signs for an
    eigenvector, both right: the interpreter's results are compared in the GPU's basis.
    A column's sign flips its tangent, and the VJP of ``V diag(s)`` at a cotangent is
    the VJP of ``V`` at the cotangent times ``diag(s)``."""
    from gradc.interpret import run
    pgraph, pargs, pwant = reference(row, "primal", float32=float32)
    s = np.sign(np.sum(np.asarray(_compile(pgraph, "signs")(*pargs)[0]) * pwant[0], axis=0))
    assert np.all(np.abs(s) == 1), s
    if kind == "vjp":                            # (outputs: V, then the cotangent of A)
        want = run(graph, args[0], args[1] * s)
        return [np.asarray(got[0]) * s, got[1]], want
    return [np.asarray(g) * s for g in got], want


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_rows_on_cuda(row, kind):
    """Every primitive row: the traced graph, its JVP and its VJP."""
    _check_row(row, kind)


@pytest.mark.parametrize("row", [r for r in ROWS if r.id in FLOAT32_ROWS], ids=lambda r: r.id)
def test_rows_on_cuda_float32(row):
    _check_row(row, "vjp", float32=True)


# ---------------------------------------------------------------- whole programs

rng = np.random.default_rng(0)
A = rng.standard_normal((6, 5))
B = rng.standard_normal((5, 7))
V5 = rng.standard_normal(5)
X3 = rng.standard_normal((4, 6, 5))
Y3 = rng.standard_normal((4, 5, 3))
THREADS = cudagen.THREADS_SIM if SIMULATOR else cudagen.THREADS     # (per block)
BIG = rng.standard_normal(44 * THREADS)  # (> threads x 8 per thread: a two-pass reduction)
M32 = rng.standard_normal((8, 12)).astype(np.float32)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def crf_logz(theta, trans):
    def step(alpha, th):
        s = alpha[:, None] + trans
        m = np.max(s, axis=0)
        a = m + np.log(np.sum(np.exp(s - m), axis=0)) + th
        return a, np.sum(a)
    alpha, ys = gradc.scan(step, theta[0], theta[1:])
    m = np.max(alpha)
    return m + np.log(np.sum(np.exp(alpha - m))) + 0.01 * np.sum(ys)


def newton_sqrt(a):
    x, _ = gradc.while_loop(lambda s: s[1] < 8, lambda s: (0.5 * (s[0] + a / s[0]), s[1] + 1),
                            (np.ones_like(a), 0))
    return np.sum(x)


def fixed_point(W, b, tol=1e-10):
    """A deep equilibrium layer's forward solve: ``z = tanh(W z + b)`` iterated until
    two iterates agree (the previous one a carry too), at most 200 times."""
    def cond(c):
        z, zp, k = c
        return (np.max(np.abs(z - zp)) > tol) & (k < 200)

    def body(c):
        z, zp, k = c
        return np.tanh(W @ z + b), z, k + 1
    z, _, k = gradc.while_loop(cond, body, (np.zeros(b.shape), np.ones(b.shape), 0))
    return z * (1.0 + 0.0 * k)


def newton_checkpointed(a, W):
    def body(s):
        x, k = s
        return 0.5 * (x + a / x) + 0.01 * np.tanh(W @ x), k + 1
    x, _ = gradc.while_loop(lambda s: s[1] < 7, body, (np.ones_like(a), 0), checkpoint=3)
    return np.sum(x ** 2)


def branchy(x):
    return gradc.cond(np.sum(x) > 0, lambda x: np.sum(np.sin(x)), lambda x: np.sum(x ** 2), x)


def _setitem_repeated(m, v):
    y = m * 2.0
    y[np.array([2, 0, 2]), 1:3] = v         # row 2 twice: the last write wins
    return y ** 2


def _setitem(x):
    y = x * 2.0
    y[1:3] = np.sin(x[:2])
    y[0] = 7.0
    return np.sum(y ** 2)


def mlp(W1, W2, x):
    h = np.tanh(x @ W1)
    z = h @ W2
    z = z - np.max(z, axis=1, keepdims=True)
    return -np.mean(z[:, 0] - np.log(np.sum(np.exp(z), axis=1)))


PROGRAMS = {
    "sum-axis0": (lambda a: np.sum(np.tanh(a), axis=0), (A,)),
    "sum-axis1": (lambda a: np.sum(np.exp(a) * 2, axis=1), (A,)),
    "sum-long": (lambda x: np.sum(np.sin(x) ** 2), (BIG,)),       # two-pass reduction
    "max-min": (lambda a: np.max(a, axis=1) + np.min(a, axis=0).sum(), (A,)),
    "prod": (lambda a: np.prod(a[:3, :2] * 0.5 + 1), (A,)),
    "matmul": (lambda a, b: a @ b, (A, B)),
    "matvec": (lambda a, x: a @ x, (A, V5)),
    "vecmat-transposed": (lambda a, x: np.tanh(x @ a.T), (A, V5)),
    "dot-long": (lambda x: x @ x, (BIG,)),                       # a contraction as a sum
    "batched": (lambda x, y: np.einsum("bij,bjk->bik", x, y), (X3, Y3)),
    "float32": (lambda m: np.sum(np.log1p(m * m), axis=1), (M32,)),
    "float32-matmul": (lambda m: (m @ m.T).sum(0), (M32,)),
    # (QA: a one-block run whose epilogue read the (1, 1, 4) view of an operand of one
    # row, whose line the run had dropped: NameError in the generated module)
    "row-of-one": (lambda x: np.log1p(x ** 2) + np.sum(x), (rng.standard_normal((1, 4)),)),
    "scalars": (lambda a, s: np.sum(a) * s + s ** 2, (A, 1.5)),
    "mean-var": (lambda a: ((a - a.mean(0)) ** 2).mean(), (A,)),
    "where": (lambda a: np.where(a > 0, a, 0.1 * a).sum(1), (A,)),
    "gather-concat": (lambda x: np.concatenate([x[::2], x[[0, 3, 1]]]).sum(), (V5,)),
    "rosenbrock": (rosen, (rng.standard_normal(50),)),
    "crf-scan": (crf_logz, (rng.standard_normal((6, 4)), rng.standard_normal((4, 4)))),
    "while": (newton_sqrt, (rng.uniform(1, 3, 5),)),
    "while-checkpointed": (newton_checkpointed, (rng.uniform(1, 3, 3),
                                                 rng.standard_normal((3, 3)))),
    "cond-true": (branchy, (rng.uniform(1, 3, 5),)),
    "cond-false": (branchy, (-rng.uniform(1, 3, 5),)),
    "mlp": (mlp, (0.3 * rng.standard_normal((8, 6)), 0.3 * rng.standard_normal((6, 3)),
                  rng.standard_normal((5, 8)))),
    # NumPy's semantics written inline in kernels (NaN-propagating max/min, the
    # remainder's sign, sign, a fractional power)
    "numpy-semantics": (lambda x: np.maximum(x, 0.2) + np.sign(x) + np.mod(x, 0.3)
                        + np.abs(x) ** 2.5 + np.minimum(x, -0.1) + np.round(3 * x), (V5,)),
    # a rank-0 value computed on the host (det) read by a kernel
    "host-scalar-into-kernel": (lambda x: np.sum(x * np.linalg.det(np.outer(x, x)
                                                                 + np.eye(5))), (V5,)),
    # argmax's result (a device cell) as a gather's index; prefix sums
    "argmax-gather": (lambda x: np.sum(x * x[np.argmax(x)]), (V5,)),
    "cumsum": (lambda m: np.cumsum(m, axis=1) * np.cumsum(m[::-1], axis=0), (A,)),
    # indexing kernels: gathers (their gradients: scatter_add with repeated indices,
    # atomics), a set item, concatenations
    "gather-repeated": (lambda x: np.sum(x[[0, 3, 3, -1]] ** 2), (V5,)),
    "gather-2d": (lambda m: np.sum(m[np.array([1, 4, 1]), 1:3] * 2), (A,)),
    "setitem": (_setitem, (V5,)),
    "setitem-repeated-indices": (_setitem_repeated, (A[:4, :3], rng.standard_normal((3, 2)))),
    "concat-axis1": (lambda m: np.sum(np.concatenate([m, np.tanh(m[:, :1])], axis=1) ** 3),
                     (A,)),
}


def crf_batched(U, A):
    """G4's CRF log-partition function: a batch of sequences, ``U`` (B, T, K)."""
    def step(alpha, u):
        return gradc.logsumexp(alpha[:, :, None] + A[None], axis=1) + u, None
    xs = np.transpose(U, (1, 0, 2))
    alpha, _ = gradc.scan(step, xs[0], xs[1:])
    return np.sum(gradc.logsumexp(alpha, axis=1))


STEPS = rng.standard_normal(4)


def rows_reverse(h0, w):
    """A reverse scan over a batch: a scalar per step, a stacked result read from the
    carry, a parameter shared by all rows (its gradient: an accumulating carry)."""
    def step(h, x):
        h2 = np.tanh(h * w + x) + 0.1 * h[:, ::-1]
        return h2, h[:, :2] * 2.0
    h, ys = gradc.scan(step, h0, STEPS, reverse=True)
    return np.sum(h ** 2) + np.sum(ys ** 2)


def rows_loss(h0, w):
    """A rank-0 carry summing over the batch at every step (an accumulator forward)."""
    def step(c, x):
        h, s = c
        h2 = np.sin(h * w + x)
        return (h2, s + np.sum(h2[:, 0])), h2 * x
    (h, s), ys = gradc.scan(step, (h0, 0.0), STEPS)
    return s + np.sum(h) + 0.1 * np.sum(ys)


def rows_long(h0, w):
    """Few kept elements, long sums per row: several threads per kept element (neighbours
    on neighbouring summed elements when the innermost axis is summed)."""
    def step(h, x):
        z = np.tanh(h[:, :, None] * w + x)
        s = np.sum(z, axis=2)
        t = np.sum(np.transpose(np.sin(z), (0, 2, 1)), axis=1)
        return 0.5 * h + 0.1 * s + 0.01 * t, None
    h, _ = gradc.scan(step, h0, STEPS)
    return np.sum(h ** 2)


def rnn_rows(h0, W, xs):
    """An RNN over a batch: contractions in the step (``h @ W``), W's gradient a sum
    over the batch at every step."""
    h, _ = gradc.scan(lambda h, x: (np.tanh(h @ W + x), None), h0, xs)
    return np.sum(h ** 2)


def rnn_one(W, xs):
    """An RNN over one sequence (no batch axis: ``W @ h``), its per-step losses summed."""
    def step(h, x):
        h = np.tanh(W @ h + x)
        return h, np.sum(h * h)
    h, ys = gradc.scan(step, np.zeros(W.shape[0], W.dtype), xs)
    return np.sum(ys) + np.sum(h)


def euler_scalars(W, xs, dts):
    """An unrolled integrator over one sequence: a rank-0 carry (the running loss), a
    step size per step (a rank-1 stacked operand)."""
    def step(c, inp):
        h, s = c
        x, dt = inp
        h = h + dt * np.tanh(W @ h + x)
        return (h, s + dt * np.sum(h * h)), s
    (h, s), ss = gradc.scan(step, (np.zeros(W.shape[0]), np.float64(0.0)), (xs, dts))
    return s + 0.5 * np.sum(ss) + np.sum(h)


def rows_step_losses(h0, s, w):
    """Stacked results summed over the batch (per-step losses); reverse mode adds the
    gradient of ``s``, a per-step scalar every row reads: per-row partial sums, summed
    over the batch after the kernel."""
    def step(h, x):
        z = np.tanh(h * w + x)
        return z, (np.sum(z ** 2), np.sum(np.sin(h), axis=0))
    h, (loss, mean) = gradc.scan(step, h0, s)
    return np.sum(h) + np.sum(loss * s) + np.sum(mean ** 2)


XS4 = rng.standard_normal((3, 2, 3, 4))


def rows_early_copy(h0, s0):
    """A stacked result is the old carry, which a reduction stage then writes in place
    (a barrier between them: review regression)."""
    def step(c, x):
        h, s = c
        return (np.tanh(x), s + np.sum(x * x, axis=2)), h
    (h, s), ys = gradc.scan(step, (h0, s0), XS4)
    return np.sum(h) + np.sum(s) + np.sum(ys ** 2)


def carry_reshaped(a0, b0):
    """A carry's new value is a view of another carry (a copy stage at the end of the
    step: review regression)."""
    def step(c, x):
        a, b = c
        return (np.tanh(a + x), a.reshape(2, 2, 2)), None
    (a, b), _ = gradc.scan(step, (a0, b0), XS4[:, :, 0, :])
    return np.sum(a) + np.sum(b ** 2)


def carry_is_x(h0):
    """A carry's new value is the step's operand (review regression)."""
    h, ys = gradc.scan(lambda h, x: (x, h * 2.0), h0, XS4[:, :, 0, :])
    return np.sum(h) + np.sum(ys ** 2)


def scan_chain(h0, A, xs):
    """Three scans, each reading the last one's stacked results; reverse mode's host
    loop hands a carry back unchanged, which a later scan's initial carry must not
    overwrite in place (review regression)."""
    def s1(h, x):
        e = h[:, :, None] * A[None] + x[:, None, :]
        return np.tanh(np.sum(e, axis=1) * 0.1), e
    h, es = gradc.scan(s1, h0, xs)

    def s2(c, e):
        f = e * c[:, :, None] + e
        return np.tanh(np.sum(f, axis=2) * 0.1) + c, f
    c, fs = gradc.scan(s2, h0 * 0.5, es, reverse=True)
    d, _ = gradc.scan(lambda d, f: (d + np.sum(f * f, axis=1) * 0.01, None), h0, fs)
    return np.sum(d) + np.sum(c) + np.sum(h)


PROGRAMS.update({
    "scan-chain": (scan_chain, (rng.standard_normal((3, 6)), 0.5 * rng.standard_normal((6, 6)),
                                rng.standard_normal((4, 3, 6)))),
    "crf-batched": (crf_batched, (rng.standard_normal((3, 5, 4)),
                                  rng.standard_normal((4, 4)))),
    "crf-batched-float32": (crf_batched, (rng.standard_normal((3, 5, 4)).astype(np.float32),
                                          rng.standard_normal((4, 4)).astype(np.float32))),
    # K = 16: the tape cut (passes.remat) keeps the carry, the max and the sum, and the
    # backward scan recomputes the (B, K, K) exponentials
    "crf-batched-wide": (crf_batched, (rng.standard_normal((3, 4, 16)),
                                       rng.standard_normal((16, 16)))),
    "rows-reverse": (rows_reverse, (rng.standard_normal((3, 4)), rng.standard_normal(4))),
    "rows-loss": (rows_loss, (rng.standard_normal((3, 4)), rng.standard_normal(4))),
    "rows-long": (rows_long, (rng.standard_normal((3, 2)), rng.standard_normal((2, 40)))),
    # solve (CuPy's when installed; else a block per system, partial pivoting: the
    # matrix's leading entry is 0, so the first pivot must come from another row)
    "solve": (lambda a, b: np.sum(np.linalg.solve(a, b) ** 2),
              (np.array([[0.0, 2, 1, 0.5], [1, 0.3, 0, 2], [2, 1, 4, 0], [0.5, 1, 0, 3]]),
               rng.standard_normal(4))),
    "solve-batched": (lambda a, b: np.tanh(np.linalg.solve(a, b)),
                      (rng.standard_normal((2, 3, 3)) + 3 * np.eye(3),
                       rng.standard_normal((2, 3, 2)))),
    "rows-early-copy": (rows_early_copy, (rng.standard_normal((2, 3, 4)),
                                          rng.standard_normal((2, 3)))),
    "carry-reshaped": (carry_reshaped, (rng.standard_normal((2, 4)),
                                        rng.standard_normal((2, 2, 2)))),
    "carry-is-x": (carry_is_x, (rng.standard_normal((2, 4)),)),
    # w's gradient: a carry adding two sums over the batch at every step
    "rows-two-terms": (lambda h0, w: np.sum(gradc.scan(
        lambda h, x: (np.tanh(h * w + x) * np.cos(w * h), None), h0, STEPS)[0]),
        (rng.standard_normal((3, 4)), rng.standard_normal(4))),
    # convolutions (the image gradient a conv2d too; the kernel gradient a sum over
    # the batch: segmented when long)
    "conv": (lambda i, k: np.tanh(gradc.conv2d(i, k, ((1, 1), (0, 2)))),
             (rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 3)))),
    "conv-long-kernel-sum": (lambda i, k: gradc.conv2d(i, k, ((0, 0), (0, 0))) ** 2,
                             (rng.standard_normal((2, 1, 17, 17)),
                              rng.standard_normal((1, 1, 2, 2)))),
    # strides, dilation and groups: the taps at y·sh + u·dh - top, the group's channels;
    # the image gradient reads a zero-inserted cotangent, the kernel gradient is a conv2d
    # with stride and dilation exchanged
    "conv-options": (lambda i, k: np.tanh(gradc.conv2d(i, k, ((1, 0), (0, 1)), stride=(2, 1),
                                                       dilation=(1, 2), groups=2)),
                     (rng.standard_normal((1, 4, 5, 4)), rng.standard_normal((2, 2, 2, 2)))),
    "rows-step-losses": (rows_step_losses, (rng.standard_normal((3, 4)),
                                            rng.standard_normal(5), rng.standard_normal(4))),
    # a per-step vector all rows read: its gradient a batch sum, then reshapes
    "rows-shared-vector": (lambda h0, vs: np.sum(gradc.scan(
        lambda h, v: (np.tanh(h * v[None, :]) + 0.1, None), h0, vs)[0] ** 2),
        (rng.standard_normal((3, 5)), rng.standard_normal((4, 5)))),
    # an unrolled integrator with a step size per step (dt's gradient: a batch sum)
    "rows-euler-dt": (lambda h0, dts, w: np.sum(gradc.scan(
        lambda h, dt: (h + dt * np.tanh(h * w), None), h0, dts)[0] ** 2),
        (rng.standard_normal((3, 4)), rng.uniform(0.05, 0.15, 6), rng.standard_normal(4))),
    # per-step results after a sum over the batch (the epilogue, after the kernel)
    "rows-step-mean": (lambda h0, xs, w: (lambda m, g: m + g)(*gradc.scan(
        lambda h, x: (np.tanh(h * w + x), (np.mean(h ** 2), np.log(np.sum(h ** 2)) * x)),
        h0, xs)[1]), (rng.standard_normal((3, 4)), rng.standard_normal(5),
                      rng.standard_normal(4))),
    "rnn-rows": (rnn_rows, (rng.standard_normal((3, 4)), 0.5 * rng.standard_normal((4, 4)),
                            rng.standard_normal((4, 3, 4)))),
    "rnn-one": (rnn_one, (0.4 * rng.standard_normal((6, 6)), rng.standard_normal((9, 6)))),
    "rnn-one-float32": (rnn_one, ((0.4 * rng.standard_normal((6, 6))).astype(np.float32),
                                  rng.standard_normal((9, 6)).astype(np.float32))),
    "euler-scalars": (euler_scalars, (0.3 * rng.standard_normal((5, 5)),
                                      rng.standard_normal((7, 5)),
                                      rng.uniform(0.1, 0.2, 7))),
    "crf-one-row": (crf_batched, (rng.standard_normal((1, 5, 4)),
                                  rng.standard_normal((4, 4)))),
    # concatenations in the step: a shift register of the previous state and the input
    # (a stage of its own, each operand read in its window), and a rotation
    "rows-concatenate": (lambda h0, xs: np.sum(gradc.scan(lambda h, x: (np.tanh(
        np.concatenate([h[:, 2:], x[:, :2]], axis=1) + 0.5 * np.roll(h, 1, axis=1)),
        None), h0, xs)[0] ** 2), (rng.standard_normal((3, 5)),
                                  rng.standard_normal((4, 3, 5)))),
    "while-fixed-point": (fixed_point, (0.3 * rng.standard_normal((5, 5)),
                                        rng.standard_normal(5))),
    "roll-one": (lambda h0, xs: np.sum(gradc.scan(lambda h, x: (np.tanh(
        np.roll(h, 1) * 0.5 + h + x), None), h0, xs)[0] ** 2),
        (rng.standard_normal(5), rng.standard_normal((4, 5)))),
})
# scans whose rows are independent: one kernel per scan (cudarows)
ROW_SCANS = ("crf-batched", "crf-batched-float32", "crf-batched-wide", "rows-reverse",
             "rows-loss", "rows-long", "rnn-rows", "rows-early-copy", "rows-two-terms",
             "rows-step-losses", "rows-shared-vector", "rows-euler-dt", "rows-step-mean",
             "rows-concatenate")
ONE_KERNEL = "# the scan as one kernel"
ROW_BLOCKS = "# the scan as one kernel: a block per row"
ONE_BLOCK = "# the scan as one kernel of one block"
# scans of one sequence: one kernel of one block per scan (cudarows.one_row)
ONE_BLOCK_SCANS = ("crf-scan", "rnn-one", "rnn-one-float32", "euler-scalars", "roll-one")
# while_loops: one kernel of one block (cudarows.one_row_while)
ONE_BLOCK_WHILES = ("while", "while-fixed-point")
ONE_BLOCK_WHILE = "# the while_loop as one kernel of one block"
# ... and reverse mode through it (while_adjoint): two kernels of one block
ONE_BLOCK_TAPE = "# the while_loop's tape as one kernel of one block"
ONE_BLOCK_SWEEP = "# reverse mode through the while_loop as one kernel of one block"


def _closing(src: str, j: int) -> int:
    """The index of the parenthesis closing the one open before ``src[j]``."""
    depth = 0
    while not (src[j] == ")" and depth == 0):
        depth += {"(": 1, ")": -1}.get(src[j], 0)
        j += 1
    return j


def _uncast(src: str) -> str:
    """``src`` as its kernels were written before ``cudagen.flat_subscripts`` and
    ``unsigned_subscripts``: ``a[i, j]`` for ``a_f[np.uint64((i) * 4 + (j))]``, without
    the ``a_f = _d.flat(...)`` lines and the ``np.uint64(...)`` casts."""
    src = re.sub(r"\n *\w+_f = _d\.flat\(\w+, \([\d, ]*\)\)", "", src)
    while (m := re.search(r"(\w+)_f\[np\.uint64\(", src)):
        end = _closing(src, m.end())
        terms, depth, cur = [], 0, ""
        for c in src[m.end():end]:
            depth += {"(": 1, ")": -1}.get(c, 0)
            if c == "+" and depth == 0:
                terms.append(cur.strip())
                cur = ""
            else:
                cur += c
        terms.append(cur.strip())
        parts = []
        for t in terms:                     # "(expr) * stride" or "(expr)"
            close = _closing(t, 1)
            parts.append(t[1:close])
        src = f"{src[:m.start()]}{m.group(1)}[{', '.join(parts)}]{src[end + 2:]}"
    while "np.uint64(" in src:
        start = src.index("np.uint64(")
        j = _closing(src, start + len("np.uint64("))
        src = src[:start] + src[start + len("np.uint64("):j] + src[j + 1:]
    return src


ON_DEVICE = ("gather-repeated", "gather-2d", "setitem", "setitem-repeated-indices",
             "concat-axis1", "gather-concat", "rosenbrock", "crf-scan", "mlp", "batched",
             "sum-long", "while", "argmax-gather", "cumsum",
             "while-checkpointed", "crf-batched", "crf-batched-float32", "crf-batched-wide",
             "rows-reverse",
             "rows-loss", "rows-long", "rnn-rows", "rows-step-losses",
             "rows-shared-vector", "rows-euler-dt", "rows-step-mean", "solve",
             "solve-batched", "conv", "conv-long-kernel-sum", "conv-options", "rnn-one",
             "rnn-one-float32",
             "euler-scalars", "crf-one-row", "rows-concatenate", "roll-one")


def _summed(f):
    return lambda *a: np.sum(f(*a))


@pytest.mark.parametrize("one_runs", [False, True], ids=["", "one-runs"])
@pytest.mark.parametrize("name", PROGRAMS)
def test_programs_match_the_interpreter(name, one_runs, monkeypatch):
    """Each program and its gradient on the device against the reference interpreter
    (``target="numpy"``; the CPU target agrees with it by ``test_codegen.py``); and
    again with the runs of small equations outside loops as one block each, what a
    program of these sizes gets on a GPU (``cudarows.one_run``)."""
    if one_runs:
        _one_runs(monkeypatch)
    f, args = PROGRAMS[name]
    tol = 1e-4 if any(getattr(a, "dtype", None) == np.float32 for a in args) else 1e-12
    jitted = gradc.jit(f, target="cuda")
    got = jitted(*args)
    want = gradc.jit(f, target="numpy")(*args)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    wrt = tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
    grad = gradc.grad(_summed(f), argnums=wrt, target="cuda")
    g = grad(*args)
    gc = gradc.grad(_summed(f), argnums=wrt, target="numpy")(*args)
    for a, b in zip(g, gc):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    if name in ON_DEVICE:           # nothing of these runs on the host
        assert grad.compile(*args).on_host == []
    if name in ROW_SCANS:           # the scan as one kernel, forward and backward
        assert jitted.source(*args).count(ONE_KERNEL) == 1
        assert grad.source(*args).count(ONE_KERNEL) == 2
    if name in ONE_BLOCK_SCANS:     # ... of one block
        assert jitted.source(*args).count(ONE_BLOCK) == 1
        assert grad.source(*args).count(ONE_BLOCK) == 2
    if name in ONE_BLOCK_WHILES:    # (the forward loop, the tape, the backward sweep)
        assert jitted.source(*args).count(ONE_BLOCK_WHILE) == 1
        src = grad.source(*args)
        assert src.count(ONE_BLOCK_WHILE) == src.count(ONE_BLOCK_TAPE) == \
            src.count(ONE_BLOCK_SWEEP) == 1
        assert not re.search(r"^ +for \w+ in range\(", src.split("\ndef ")[-1], re.M)
    if one_runs:                    # (never more launches than without the runs)
        kernels = len(grad.compile(*args).kernels)
        _one_runs(monkeypatch, 0)
        assert kernels <= len(gradc.grad(_summed(f), argnums=wrt, target="cuda").compile(
            *args).kernels)
        return
    if name == "crf-one-row":       # (a batch of one: forward a block per row of one;
        #                              the backward's sum over the batch folded away)
        src = grad.source(*args)
        assert src.count(ROW_BLOCKS + " of 1,") == 1 and src.count(ONE_BLOCK) == 1
    if name == "conv-long-kernel-sum":     # (the kernel gradient: partial sums)
        assert "_part" in grad.source(*args)
    if name == "rows-long":         # (threads split the long sums: partials combined)
        src = jitted.source(*args)
        # (summing axis 2, then 1: four lanes of a warp per kept element, a power of
        # two, as shifts; their partials combined in two shuffles each)
        assert "_kk = (_k >> 2)" in src and src.count("shfl_xor") == 4


@pytest.mark.parametrize("name", ROW_SCANS)
def test_row_scans_with_their_rows_in_global_memory(name, monkeypatch):
    """Rows too large for shared memory stay in global memory (the carries' buffers,
    the step's temporaries, a carry's new value written into its buffer through a
    reshape): each one-kernel scan and its gradient, with no row in shared memory."""
    from gradc.codegen import cudarows
    monkeypatch.setattr(cudarows, "ROW_SHARED", 0)
    f, args = PROGRAMS[name]
    tol = 1e-4 if any(getattr(a, "dtype", None) == np.float32 for a in args) else 1e-12
    wrt = tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
    grad = gradc.grad(_summed(f), argnums=wrt, target="cuda")
    src = grad.source(*args)
    assert src.count(ONE_KERNEL) == 2
    assert re.search(r"\n +[a-z]\w* = cuda\.shared\.array", src) is None   # (no row's)
    for a, b in zip(grad(*args), gradc.grad(_summed(f), argnums=wrt, target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_an_rnns_weight_gradient_after_the_loop_when_asked(monkeypatch):
    """``GRADC_CUDA_SCAN_SUMS=1`` (the GPU session's A/B; the CPU's default): W's
    cotangent is no carry of the one-block backward scan but one product after it (a
    third kernel or a library call), with the values the loop gave."""
    f, args = PROGRAMS["rnn-one"]
    want = gradc.grad(_summed(f), argnums=(0, 1), target="cuda")(*args)
    monkeypatch.setenv("GRADC_CUDA_SCAN_SUMS", "1")
    g = gradc.grad(_summed(f), argnums=(0, 1), target="cuda")
    scans = [e for e in g.graph(*args).eqns if e.prim.name == "scan"]
    assert [tuple(v.shape) for e in scans for v in e.outputs[:e.params["n_carry"]]] == \
        [(6,), (6,)]
    assert g.source(*args).count(ONE_KERNEL) == 2
    for a, b in zip(g(*args), want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_large_step_of_one_sequence_keeps_the_host_loop():
    """One block runs a scan over one sequence only while its step is small
    (``ONE_ROW_WORK`` elements in any value or product: a 600 x 600 matrix-vector
    product is more): a larger one is the host loop, its products on the whole GPU."""
    W = 0.05 * rng.standard_normal((600, 600))
    xs = rng.standard_normal((3, 600))
    assert 600 * 600 > cudarows.ONE_ROW_WORK >= 6 * 6
    g = gradc.grad(rnn_one, argnums=(0, 1), target="cuda")
    src = g.source(W, xs)
    assert ONE_KERNEL not in src and re.search(r"\n +for _t\d+ in range\(", src)


@pytest.mark.parametrize("K,threads,dtype,nan", [
    (16, 64, np.float64, False),     # S = 2 lanes a column, 32 lanes: whole warps
    (20, 128, np.float64, False),    # 40 lanes: a warp and a part, the rest idle
    (20, 128, np.float32, False),
    (16, 64, np.float64, True),      # a NaN through the shuffled maximum
])
def test_row_reductions_combined_across_a_warp(K, threads, dtype, nan, monkeypatch):
    """The CRF's logsumexp (a maximum, then a sum) and its gradient (a sum and an
    accumulator) with S threads per kept element as adjacent lanes: the partials
    combine by shuffles, not in shared memory after a barrier; lanes past the last
    element take part in the shuffles and write nothing (the accumulator added once).
    The same with GRADC_CUDA_SHUFFLE=0 (shared memory), both against the CPU."""
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", str(threads))
    U = rng.standard_normal((3, 4, K)).astype(dtype)
    A = (0.5 * rng.standard_normal((K, K))).astype(dtype)
    if nan:
        U[1, 2, 3] = np.nan
    tol = 2e-4 if dtype == np.float32 else 1e-11
    want = gradc.grad(crf_batched, argnums=(0, 1))(U, A)
    for shuffle in ("1", "0"):
        monkeypatch.setenv("GRADC_CUDA_SHUFFLE", shuffle)
        grad = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
        src = grad.source(U, A)
        assert ("shfl_xor" in src) == (shuffle == "1")
        if shuffle == "1" and K * 2 % 32:
            assert re.search(r"if _q == 0 and _k < \d+:", src)
        for a, b in zip(grad(U, A), want):
            assert np.isnan(a).any() == nan
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


BIG_NAN = BIG.copy()
BIG_NAN[BIG.size // 3] = np.nan
LONG_REDUCTIONS = {
    "max-long": (lambda x: np.max(np.cos(x)) - np.min(x * x), (BIG,)),
    "max-long-nan": (lambda x: np.max(x) + np.sum(x), (BIG_NAN,)),
    "sum-long-float32": (lambda x: np.sum(np.sin(x) ** 2), (BIG.astype(np.float32),)),
}


@pytest.mark.parametrize("name", ["sum-long", "dot-long", "conv-long-kernel-sum",
                                  *LONG_REDUCTIONS])
@pytest.mark.parametrize("shuffle", ["1", "0"])
def test_block_reductions_combined_by_warps(name, shuffle, monkeypatch):
    """A block's partial sums (segmented reductions, contractions as sums) combine in
    each warp by shuffles, then across the warps' totals in warp 0: at 64 threads a
    block, two warps, so both levels run; the same values as a tree in shared memory
    (GRADC_CUDA_SHUFFLE=0) and as the CPU."""
    monkeypatch.setattr(cudagen, "THREADS_SIM", 64)
    monkeypatch.setenv("GRADC_CUDA_SHUFFLE", shuffle)
    f, args = PROGRAMS[name] if name in PROGRAMS else LONG_REDUCTIONS[name]
    tol = 1e-5 if args[0].dtype == np.float32 else 1e-12
    wrt = tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
    both = False
    for fn, ref in ((gradc.jit(f, target="cuda"), gradc.jit(f, target="numpy")),
                    (gradc.grad(_summed(f), argnums=wrt, target="cuda"),
                     gradc.grad(_summed(f), argnums=wrt, target="numpy"))):
        src = fn.source(*args)
        if shuffle == "0":
            assert "shfl_xor" not in src
        elif "if _tid == 0:" in src:          # (a block's combine: both levels)
            assert "_d.shfl_xor(" in src and "if _tid < 32:" in src
        got, want = fn(*args), ref(*args)
        for a, b in zip(*((r if isinstance(r, tuple) else (r,)) for r in (got, want))):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        both = both or "if _tid < 32:" in src
    assert both == (shuffle == "1")         # (each program has one: a long sum)


_X = rng.standard_normal((50, 3, 24))
_X[7, 1, 5] = np.nan
COLUMN_SUMS = {      # reductions over outer axes, the innermost kept: a thread per column
    "sum-axis0-long": (lambda x: np.sum(np.sin(x), axis=0), (rng.standard_normal((300, 40)),)),
    "max-two-axes-nan": (lambda x: np.max(x, axis=(0, 1)), (_X,)),
    "sum-middle-axis": (lambda x: np.sum(x * x, axis=1), (rng.standard_normal((20, 70, 9)),)),
    "min-axis0-float32": (lambda x: np.min(x, axis=0),
                          (rng.standard_normal((90, 33)).astype(np.float32),)),
    "bias-gradient": (lambda x, w, b: np.tanh(x @ w + b),
                      (rng.standard_normal((48, 3)), rng.standard_normal((3, 16)),
                       rng.standard_normal(16))),
}


@pytest.mark.parametrize("threads", [16, 64])
@pytest.mark.parametrize("name", COLUMN_SUMS)
def test_column_reductions(name, threads, monkeypatch):
    """A reduction over outer axes with the innermost axis kept (a bias's gradient, a
    sum over a batch) is a thread per kept element, neighbouring threads on
    neighbouring elements; at 64 threads a block, two warps each sum every other
    reduced element and warp 0 adds them; long sums are split over blocks (partials,
    then a second pass).  Against the CPU, and the gradients too."""
    monkeypatch.setattr(cudagen, "THREADS_SIM", threads)
    f, args = COLUMN_SUMS[name]
    tol = 1e-5 if args[0].dtype == np.float32 else 1e-12
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(*args) if name != "bias-gradient" else \
        gradc.grad(_summed(f), argnums=2, target="cuda").source(*args)
    assert "_l = " in src
    if name == "sum-axis0-long" and threads == 16:      # (300 > 64 a thread: partials)
        assert "_part" in src
    if threads == 64:
        assert "for _q in range(1, 2):" in src
    np.testing.assert_allclose(jitted(*args), gradc.jit(f, target="numpy")(*args),
                               rtol=tol, atol=tol)
    wrt = tuple(range(len(args)))
    for a, b in zip(gradc.grad(_summed(f), argnums=wrt, target="cuda")(*args),
                    gradc.grad(_summed(f), argnums=wrt, target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_float16_reductions():
    """float16 sums and maxima (their kernels' shared arrays of numba.types.float16),
    against NumPy's."""
    x = np.linspace(0.25, 1.0, 44 * 16).astype(np.float16)
    for f in (lambda x: np.sum(x), lambda x: np.max(x, keepdims=True) * x,
              lambda x: np.sum(x.reshape(22, 32) ** 2, axis=0)):
        got = gradc.jit(f, target="cuda")(x)
        assert np.asarray(got).dtype == np.float16
        np.testing.assert_allclose(np.asarray(got, float), f(x).astype(float), rtol=1e-2)


def test_a_transposed_sum_is_no_column_reduction():
    """``np.sum(x.T, axis=0)``: the domain's innermost axis is kept, but it is x's
    first: threads on neighbouring kept elements would read a row apart, so the
    threads of a block stride over x's rows instead (as before the columns)."""
    from gradc.passes.indexmap import Affine
    x = rng.standard_normal((12, 300))
    jitted = gradc.jit(lambda x: np.sum(x.T, axis=0), target="cuda")
    assert "_l = " not in jitted.source(x)
    np.testing.assert_allclose(jitted(x), x.sum(axis=1), rtol=1e-12)
    i0, i1 = Affine("i0", 1, 0, 0, 9), Affine("i1", 1, 0, 0, 9)
    assert cudagen._along_last([("a", (i0, i1)), ("b", (i0,))], "i1")
    assert not cudagen._along_last([("a", (i1, i0))], "i1")
    assert not cudagen._along_last([("a", (i0, i1.map(2, 0)))], "i1")
    assert cudagen._along_last([("a", (Affine.const(3), i1.map(-1, 9)))], "i1")


def test_simulated_shuffle_needs_every_lane(monkeypatch):
    """The simulator's shuffle waits for every lane of the warp, as a GPU needs them:
    a warp half of whose lanes skip it fails with gradc's error, not a wrong value."""
    from gradc.codegen import cuda as _d
    if not _d.simulator():
        pytest.skip("the simulator's emulation")
    cuda = _d.import_cuda()          # (and gradc's device functions defined)
    monkeypatch.setattr(_d, "SIMULATED_WAIT", 0.5)
    scope = {"cuda": cuda, "np": np, "_d": _d}
    exec(textwrap.dedent("""
        def k(out):
            t = cuda.threadIdx.x
            if t < 8:
                out[t] = _d.shfl_xor(np.float64(t), 1)
        """), scope)
    with pytest.raises(Exception, match="not every lane of its warp"):
        cuda.jit(scope["k"])[1, 16](np.zeros(16))


def _max_then_sum(scale):
    """A step whose maximum (reading the carry) feeds a sum (reading the maximum at
    its own element only): one loop for both, unless the sum writes the new carry in
    place (``scale=None``, its row not double buffered), which the maximum's other
    warps may still be reading."""
    def f(h0, W):
        def step(h, _):
            m = np.max(h[:, :, None] + W[None], axis=1)
            new = np.sum(np.exp(W[None] - m[:, None, :]), axis=1)
            return (new if scale is None else scale * new), None
        h, _ = gradc.scan(step, h0, None, length=3)
        return h
    return f


@pytest.mark.parametrize("scale,double", [(0.1, "1"), (None, "1"), (None, "0")])
def test_consecutive_row_reductions_in_one_loop(scale, double, monkeypatch):
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    monkeypatch.setenv("GRADC_CUDA_ROW_DOUBLE", double)
    f = _max_then_sum(scale)
    h0, W = rng.standard_normal((3, 16)), 0.3 * rng.standard_normal((16, 16))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(h0, W)
    kernel = src[src.index("def _k"):src.index("def f_fn")]
    # (the sum reads the maximum from the register its lanes hold it in; written in
    # place, the new carry needs its own half of the carry's double row, and so does
    # the scaled sum's product, computed by the lanes that hold the sum)
    in_place = scale is None
    assert bool(re.search(r"\n +\w+_ = _a0_0_0\n", kernel)) == (not in_place or
                                                                 double == "1")
    assert ("_2 = cuda.shared.array(32," in kernel) == (double == "1")
    step = kernel[kernel.index("for _s in range(3)"):kernel.index("_o0 = 16 - _o0")] \
        if double == "1" else ""
    assert step.count("cuda.syncthreads()") == (double == "1")
    np.testing.assert_allclose(jitted(h0, W), gradc.jit(f, target="numpy")(h0, W),
                               rtol=1e-12, atol=1e-12)
    g = gradc.grad(_summed(f), argnums=(0, 1), target="cuda")
    for a, b in zip(g(h0, W), gradc.grad(_summed(f), argnums=(0, 1), target="numpy")(h0, W)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def test_reductions_stay_apart_from_an_early_copy_of_the_carry(monkeypatch):
    """A step handing back its old carry (copied into the stacked result at the top of
    the step) whose sum writes the new carry in place: the maximum before it reads
    only the step's operand, but the copy that runs with it reads the carry, so the
    two reductions keep their barrier (one loop would let the sum overwrite rows
    other warps are still copying)."""
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")

    def f(h0, W, xs):
        def step(h, x):
            m = np.max(x[:, :, None] + W[None], axis=1)
            return np.sum(np.exp(W[None] - m[:, None, :]), axis=1), h
        return gradc.scan(step, h0, xs)
    args = (rng.standard_normal((3, 16)), rng.standard_normal((16, 16)),
            rng.standard_normal((4, 3, 16)))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(*args)
    kernel = src[src.index("def _k"):src.index("def f_fn")]
    steps = kernel[kernel.index("for _s in range"):]
    assert re.search(r"\n +\w+_ = _a0_0_0\n", kernel) is None
    assert steps.count("cuda.syncthreads()") == 3     # (+ one after the write-back)
    for a, b in zip(jitted(*args), gradc.jit(f, target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sign_of_infinities_zeros_and_nan_as_numpy(dtype):
    """``np.sign`` on the device: ±1 at ±inf (it was inf / inf: NaN), +0 at -0, NaN at
    NaN; and so ``logaddexp``'s gradient, which takes the sign of a difference, where
    an operand is -inf."""
    x = np.array([-np.inf, -2.0, -0.0, 0.0, 3.0, np.inf, np.nan], dtype=dtype)
    got = gradc.jit(np.sign, target="cuda")(x)
    np.testing.assert_array_equal(got, np.sign(x))
    assert not np.signbit(got[2:4]).any() and got.dtype == dtype
    y = np.array([0.0, -np.inf, 5.0])
    g = gradc.grad(lambda a: np.sum(np.logaddexp(a, y)), target="cuda")(np.arange(3.0))
    np.testing.assert_allclose(g, [0.5, 1.0, 1.0 / (1.0 + np.exp(3.0))], rtol=1e-12)


def test_float_literals_compute_as_the_gpus_doubles():
    """(CUDA QA.)  A kernel's float literal is a double on the GPU; the simulator ran it
    as a Python float (``cuda.simulated`` makes it a NumPy float64 there): the ``0.0``
    a ``maximum`` selects, divided into ``1.0``, raised ZeroDivisionError instead of
    giving inf, ``(-8.0) ** 1.5`` was a complex number (TypeError), and arctan2's
    gradient at the origin raised too.  The source keeps its literals."""
    x = np.array([-1.0, 2.0, 0.0, 3.0, -0.0])
    progs = [lambda x: 1.0 / np.maximum(x, 0.0), lambda x: 1.0 / np.clip(x, -0.0, 1.0),
             lambda x: np.minimum(x, -8.0) ** 1.5 + x,
             gradc.grad(lambda x: np.sum(np.arctan2(np.maximum(x, 0.0), np.minimum(x, 0.0))))]
    with np.errstate(all="ignore"):
        for f in progs:
            want = gradc.jit(f, target="numpy")(x)
            np.testing.assert_array_equal(gradc.jit(f, target="cuda")(x), want)
            assert np.signbit(want).any() or not np.isfinite(want).all()
    assert "else 0.0)" in gradc.jit(progs[0], target="cuda").source(x)


def test_complex_numbers_to_a_constant_power():
    """(CUDA QA.)  ``z ** 2`` and ``z ** 2.5`` of complex ``z`` (which ``jit``
    evaluates): the exponent is a complex literal, which the lowering of small whole
    powers as products converted with ``float`` (TypeError, in the simulator too)."""
    x = np.linspace(-1, 1, 7)
    f = lambda x: ((x + 1j) ** 2, (x - 0.5j) ** 2.5, (x + 1j) ** (0.5 + 1j))  # noqa: E731
    for got, want in zip(gradc.jit(f, target="cuda")(x), gradc.jit(f, target="numpy")(x)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16])
def test_sign_of_integers(dtype):
    """(CUDA QA.)  ``np.sign`` of integers, ``(x > 0) - (x < 0)`` in the kernel: the
    simulator's comparisons are NumPy bools, which do not subtract (TypeError)."""
    x = np.array([-3, 0, 2, 7, -1, 0]).astype(dtype)
    got = gradc.jit(lambda x: np.sign(x) * x, target="cuda")(x)
    np.testing.assert_array_equal(got, np.sign(x) * x)
    assert got.dtype == dtype


def _complex_functions(x):
    """(Those whose GPU code compiles without a CUDA driver: numba's cmath.sin, cos,
    tan, sinh, cosh, tanh and acosh need one even for ``.ptx()``.)"""
    z = x + 1j
    return (np.exp(z), np.log(z), np.sqrt(z), np.arcsin(z / 4), np.arctan(z), np.arcsinh(z),
            np.arctanh(z / 4), np.log2(z), np.log10(z), np.exp2(z), np.expm1(z), np.log1p(z),
            z ** 0.5, np.maximum(z, 0.5 - z[::-1]), np.minimum(z, 1j), np.clip(z, -1, 0.5 + 2j))


def test_complex_functions_as_numpys():
    """(CUDA QA.)  Complex exp, log, sqrt, trigonometric and hyperbolic functions
    (which ``jit`` evaluates) run as NumPy's under the simulator and as cmath's on the
    GPU (``cudagen._COMPLEX``); log2, log10, exp2, expm1 and log1p from their parts as
    NumPy computes them.  They ran in the simulator (``_d.exp`` is NumPy's there) but were
    libdevice's real functions on the GPU, which numba refused for complex arguments
    (TypingError; ``test_kernels_compile_to_ptx`` compiles them).  So were ``maximum``,
    ``minimum`` and ``clip`` of complex numbers (``>``, which the GPU has not for them):
    now ``np.maximum``'s order, NaNs first."""
    x = np.linspace(-2, 2, 7)
    extra = lambda x: (np.sin(x + 1j), np.cos(x - 1j), np.tan(x + 0.5j),    # noqa: E731
                       np.sinh(x + 1j), np.cosh(x + 1j), np.tanh(x - 1j), np.arccosh(x + 2j),
                       np.arccos((x + 1j) / 4))
    with np.errstate(invalid="ignore"):                 # (NaNs win, as NumPy's)
        z = np.array([np.nan + 1j, 1 + 1j, 2 + np.nan * 1j, 1 - 1j])
        m = lambda z: (np.maximum(z, z[::-1]), np.minimum(z, z[::-1]))   # noqa: E731
        for g, w in zip(gradc.jit(m, target="cuda")(z), m(z)):
            np.testing.assert_array_equal(g, w)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        for f in (_complex_functions, extra):
            got = gradc.jit(f, target="cuda")(x.astype(dt))
            for g, w in zip(got, f(x.astype(dt))):
                assert np.asarray(g).dtype == w.dtype
                np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    src = gradc.jit(_complex_functions, target="cuda").source(x)
    assert "_d.cexp(" in src and "_d.csqrt(" in src and "_d.clog(" in src


def _merged_steps(case):
    """Steps whose elementwise stage after a reduction may run in the reduction's loop
    (``cudarows._Rows._merge_pointwise``), the new carry written into the other half of
    its double row while other threads read the old one: reading the old carry at the
    element's own index ("own") or at others ("other"), the reduction at another
    element ("flipped": no register holds it), two carries ("two"), a carry of rank 3
    ("rank3"), a reverse scan ("reverse")."""
    def f(h0, W, xs):
        def step(h, x):
            s = gradc.logsumexp(h[:, :, None] + W[None], axis=1)
            if case == "own":
                return s + 0.5 * h + x, None
            if case == "other":
                return s + 0.5 * h[:, ::-1] + x, None
            if case == "flipped":
                m = np.max(h[:, :, None] + W[None], axis=1)
                return 0.5 * m[:, ::-1] + x, None
            if case == "reverse":
                return s - 0.25 * h + x, s
            raise AssertionError(case)
        return gradc.scan(step, h0, xs, reverse=case == "reverse")

    def two(h0, W, xs):
        def step(c, x):
            h, g = c
            a = gradc.logsumexp(h[:, :, None] + W[None], axis=1)
            b = np.max(g[:, :, None] - W[None], axis=1)
            return (a + 0.1 * g + x, np.tanh(b) + 0.2 * h), None
        return gradc.scan(step, (h0, 0.5 * h0), xs)

    def rank3(h0, W, xs):
        def step(h, x):
            flat = np.reshape(h, (h.shape[0], -1))
            s = gradc.logsumexp(flat[:, :, None] + W[None], axis=1)
            return np.reshape(s + x, h.shape) - 0.3 * h, None
        return gradc.scan(step, np.reshape(h0, (h0.shape[0], 4, 4)), xs)
    return {"two": two, "rank3": rank3}.get(case, f)


@pytest.mark.parametrize("case", ["own", "other", "flipped", "two", "rank3", "reverse"])
def test_a_step_merged_into_its_reduction_writes_the_other_half(case, monkeypatch):
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    f = _merged_steps(case)
    h0, W = rng.standard_normal((3, 16)), 0.3 * rng.standard_normal((16, 16))
    xs = rng.standard_normal((5, 3, 16))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(h0, W, xs)
    kernel = src[src.rindex("def _k", 0, src.index("for _s in range")):]
    steps = kernel[kernel.index("for _s in range"):kernel.index("_o0 = 16 - _o0")] \
        if "_o0 = 16 - _o0" in kernel else kernel[kernel.index("for _s in range"):]
    if case == "two":                   # (each carry's rows in a double row)
        assert kernel.count("_2 = cuda.shared.array(32,") == 2
    elif case == "flipped":             # (the flipped maximum: read after a barrier)
        assert "_2 = cuda.shared.array(32," not in kernel
        steps = steps[:steps.index("\n        _e = _tid\n")]    # (the write-back after)
        assert steps.count("cuda.syncthreads()") == 2
    else:
        assert kernel.count("_2 = cuda.shared.array(32,") == 1
        assert steps.count("cuda.syncthreads()") == 1
    want = gradc.jit(f, target="numpy")(h0, W, xs)
    for a, b in zip(gradc.pytree.flatten(jitted(h0, W, xs))[0], gradc.pytree.flatten(want)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    loss = lambda *a: sum(np.sum(v ** 2) for v in gradc.pytree.flatten(f(*a))[0])   # noqa: E731
    g = gradc.grad(loss, argnums=(0, 1, 2), target="cuda")(h0, W, xs)
    for a, b in zip(g, gradc.grad(loss, argnums=(0, 1, 2), target="numpy")(h0, W, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_a_new_carry_written_in_place_keeps_its_barrier(monkeypatch):
    """Without double rows (``GRADC_CUDA_ROW_DOUBLE=0``) the CRF's new carry is written
    over the carry the reductions read: its stage keeps the barrier before it."""
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    monkeypatch.setenv("GRADC_CUDA_ROW_DOUBLE", "0")
    U, A = rng.standard_normal((3, 6, 16)), 0.3 * rng.standard_normal((16, 16))
    jitted = gradc.jit(crf_batched, target="cuda")
    src = jitted.source(U, A)
    kernel = src[src.rindex("def _k", 0, src.index("for _s in range")):]
    steps = kernel[kernel.index("for _s in range"):]
    steps = steps[:steps.index("\n        _e = _tid\n")]
    assert "_2 = cuda.shared.array" not in kernel and steps.count("cuda.syncthreads()") == 2
    np.testing.assert_allclose(jitted(U, A), gradc.jit(crf_batched, target="numpy")(U, A),
                               rtol=1e-12)


def _joined_then_reduced(case):
    """A reduction, an elementwise stage joining its loop, then a second reduction
    joining it too, where the elementwise stage's indices are not the reduction's kept
    ones: a rank-3 carry whose maximum keeps axes 2 and 3 ("rank3"), a stage on a
    reshape of the maximum ("reshaped"), 4 lanes a kept element ("lanes"), and a row
    run, without a scan ("rows")."""
    if case == "rows":
        def f(x, y, z):
            p = np.max(x, axis=1) * 2.0 + y
            return np.sum(z * p[:, None], axis=1), p
        return f, (rng.standard_normal((4, 4, 4, 4)), rng.standard_normal((4, 4, 4)),
                   rng.standard_normal((4, 3, 4, 4)))
    if case == "reshaped":
        W, V = 0.3 * rng.standard_normal((32, 4)), 0.3 * rng.standard_normal((32, 4))
        C3 = rng.standard_normal((4, 8))

        def step(h, x):
            m = np.max(h[:, :, None] * W[None], axis=2)
            p = np.reshape(np.reshape(m, (h.shape[0], 4, 8)) * 2.0 + C3, (h.shape[0], 32))
            return np.sum(p[:, :, None] * V[None] + h[:, :, None], axis=2) * 0.5 + x, p
        shape = (32,)
    else:
        M, M2, shape = (4, 4, (4, 4)) if case == "rank3" else (32, 48, (2, 4))
        A1 = 0.3 * rng.standard_normal((M,) + shape)
        A2 = 0.3 * rng.standard_normal((M2,) + shape)

        def step(h, x):
            p = np.max(A1[None] * h[:, None], axis=1) * 2.0 + x
            if case == "rank3":
                return np.sum(A2[None] * p[:, None] + h[:, None], axis=1) * 0.5, p
            return np.sum(A2[None] * h[:, None], axis=1) * 0.5 + p, p
    return (lambda h0, xs: gradc.scan(step, h0, xs)), (
        rng.standard_normal((3,) + shape), rng.standard_normal((4, 3) + shape))


@pytest.mark.parametrize("case", ["rank3", "reshaped", "lanes", "rows"])
def test_a_reduction_after_a_joined_stage_keeps_its_indices(case, monkeypatch):
    """The joined elementwise stage names its indices apart from the reduction's, so the
    reduction joining after it reads and writes its own kept element (they were
    overwritten: wrong values, and an index out of a shared row with 4 lanes an
    element)."""
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    monkeypatch.setattr(cudagen, "ROW_RUN_BATCH", 1)
    f, args = _joined_then_reduced(case)
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(*args)
    assert "_pi1 = " in src and ("# rows: these" in src or "as one kernel" in src)
    for a, b in zip(jitted(*args), gradc.jit(f, target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    loss = lambda *a: sum(np.sum(v ** 2) for v in f(*a))     # noqa: E731
    wrt = tuple(range(len(args)))
    for a, b in zip(gradc.grad(loss, argnums=wrt, target="cuda")(*args),
                    gradc.grad(loss, argnums=wrt, target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_shared_rows_nothing_reads_are_dropped():
    """``_unread_shared``: a shared array that is only stored into goes, with its
    stores (a lone store becomes ``pass``, one of a chain leaves it); one read anywhere
    (a subscript, another name for it, a slice, ``+=``) keeps it."""
    from gradc.codegen.cudarows import _unread_shared
    lines = ["a = cuda.shared.array(4, numba.float32)",
             "b = cuda.shared.array(4, numba.float32)",
             "c = cuda.shared.array(8, numba.float32)",
             "d = cuda.shared.array(4, numba.float32)",
             "e = cuda.shared.array(4, numba.float32)",
             "h = c[:4]",
             "g = d",
             "for i in range(4):",
             "    if i == 0:",
             "        a[i] = 1.0",
             "    b[i] = out[i] = a[0] * 0.0 + 2.0",
             "    h[i] = 3.0",
             "    g[i] = 4.0",
             "    e[i] += 5.0",
             "    out[i] = h[i]"]
    assert _unread_shared(lines) == \
        lines[:1] + lines[2:10] + ["    out[i] = a[0] * 0.0 + 2.0"] + lines[11:]
    lines[10] = "    b[i] = 2.0"
    assert "    pass" in _unread_shared(lines)


def test_double_rows_keep_their_parity_from_row_to_row(monkeypatch):
    """A block that strides over several rows carries the halves' parity from one
    row to the next: an odd number of steps, five rows on two blocks."""
    from gradc.codegen import cudarows
    monkeypatch.setattr(cudarows, "ROW_BLOCKS", 2)
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    f = _merged_steps("own")
    h0, W = rng.standard_normal((5, 16)), 0.3 * rng.standard_normal((16, 16))
    xs = rng.standard_normal((3, 5, 16))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(h0, W, xs)
    assert "_k0[2, " in src and "_o0 = 16 - _o0" in src
    np.testing.assert_allclose(jitted(h0, W, xs)[0], gradc.jit(f, target="numpy")(h0, W, xs)[0],
                               rtol=1e-12, atol=1e-12)


def _through_reshapes(case):
    """Steps whose two reductions touch one array under two names of the host's (a
    reshape): the new carry, a reshape of the sum, written in place over the carry the
    maximum reads ("carry"); the sum reading the maximum, reshaped, at other elements
    ("temp")."""
    def f(h0, W, V):
        def step(h, _):
            m = np.max(h[:, :, None, None] + W[None], axis=1)
            if case == "carry":
                return np.reshape(np.sum(np.exp(W[None] - m[:, None]), axis=1), (-1, 6)), None
            s = np.sum(V[None] * np.reshape(m, (-1, 6))[:, :, None, None], axis=1)
            return h + 0.1 * np.reshape(s, (-1, 6)), None
        h, _ = gradc.scan(step, h0, None, length=3)
        return h
    return f


@pytest.mark.parametrize("case", ["carry", "temp"])
def test_reductions_apart_where_a_reshape_names_the_same_rows(case, monkeypatch):
    """With the rows in global memory, a reshape is another parameter on the same
    array: the two stages keep their barrier (review: merged, the simulator's values
    were off by 4.8 and 0.59)."""
    from gradc.codegen import cudarows
    monkeypatch.setattr(cudarows, "ROW_SHARED", 0)
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    f = _through_reshapes(case)
    args = (rng.standard_normal((3, 6)), 0.3 * rng.standard_normal((6, 2, 3)),
            rng.standard_normal((6, 2, 3)))
    jitted = gradc.jit(f, target="cuda")
    kernel = jitted.source(*args)
    kernel = kernel[kernel.index("def _k"):]
    assert re.search(r"\n +\w+_ = _a0_0_0\n", kernel) is None
    np.testing.assert_allclose(jitted(*args), gradc.jit(f, target="numpy")(*args),
                               rtol=1e-12, atol=1e-12)


def test_a_shuffled_maximum_is_the_same_in_every_lane(monkeypatch):
    """Of a +0 and a -0, a maximum's pick depends on the order of its operands; the
    butterfly gives every lane (lower lane's, upper lane's), so that a later stage in
    the same loop, reading each lane's own register, sees one value per element: the
    sign of arctan2(m, negative) is the same for all of a row's elements."""
    monkeypatch.setattr(cudagen, "ROW_RUN_BATCH", 1)
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    x = -np.ones((2, 64))
    x[:, 0], x[:, 1] = -0.0, 0.0

    def f(x):
        m = np.max(x, axis=1)
        return np.arctan2(m[:, None], x - 2.0).sum(axis=1)
    jitted = gradc.jit(f, target="cuda")
    assert re.search(r"\n +\w+_ = _a0_0_0\n", jitted.source(x))       # (merged)
    got = jitted(x)
    np.testing.assert_allclose(np.abs(got), 64 * np.pi, rtol=1e-12)


def test_the_crf_gradients_forward_scan_merges_its_reductions(monkeypatch):
    """G4's forward scan (in reverse mode: its maximum and its sum stacked for the
    backward scan, in arrays of their own) shares one loop for the two reductions;
    the host's other arrays (made by ``_d.empty``) are not one memory."""
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")
    U, A = rng.standard_normal((3, 4, 16)), 0.5 * rng.standard_normal((16, 16))
    src = gradc.grad(crf_batched, argnums=(0, 1), target="cuda").source(U, A)
    forward = _kernel_text(src, "_k0")
    assert re.search(r"\n +\w+_ = _a0_0_0\n", forward), forward


def test_a_per_step_scalar_between_two_reductions(monkeypatch):
    """A step's scalar arithmetic (every thread's local) written between the maximum and
    the sum runs before both, which then share a loop."""
    monkeypatch.setenv("GRADC_CUDA_ROW_THREADS", "64")

    def f(h0, A, xs, scales):
        def step(h, inp):
            x, s = inp
            m = np.max(h[:, :, None] + A[None], axis=1)
            c = np.exp(s) * 2.0
            z = np.sum(np.exp(h[:, :, None] + A[None] - m[:, None, :]) * c, axis=1)
            return 0.5 * np.tanh(z) + x, None
        h, _ = gradc.scan(step, h0, (xs, scales))
        return np.sum(h ** 2)
    args = (rng.standard_normal((3, 16)), 0.3 * rng.standard_normal((16, 16)),
            rng.standard_normal((4, 3, 16)), rng.standard_normal(4))
    jitted = gradc.jit(f, target="cuda")
    assert re.search(r"\n +\w+_ = _a0_0_0\n", jitted.source(*args))
    np.testing.assert_allclose(jitted(*args), gradc.jit(f, target="numpy")(*args),
                               rtol=1e-12)
    for a, b in zip(gradc.grad(f, argnums=(0, 1), target="cuda")(*args),
                    gradc.grad(f, argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def test_simulated_shuffle_exchanges_across_the_block():
    """The simulator's shfl_xor: each thread gets the value of the thread ``offset``
    away in a butterfly, for every offset of a 16-thread block, and of each warp of a
    64-thread block."""
    from gradc.codegen import cuda as _d
    if not _d.simulator():
        pytest.skip("the simulator's emulation")
    cuda = _d.import_cuda()          # (and gradc's device functions defined)
    scope = {"cuda": cuda, "np": np, "_d": _d}      # (a module's globals: the simulator
    exec(textwrap.dedent("""                         # swaps its cuda in them)
        def k(out):
            t = cuda.threadIdx.x
            for j in range(4):
                out[j, t] = _d.shfl_xor(np.float64(t * 10 + j), 1 << j)
        """), scope)
    for threads in (16, 64):
        out = np.zeros((4, threads))
        cuda.jit(scope["k"])[2, threads](out)
        t = np.arange(threads)
        for j in range(4):
            np.testing.assert_array_equal(out[j], (t ^ (1 << j)) * 10 + j)


def test_gradient_against_finite_differences():
    x = rng.standard_normal(20)
    g = gradc.grad(rosen, target="cuda")(x)
    eps = 1e-6
    fd = np.array([(rosen(x + eps * e) - rosen(x - eps * e)) / (2 * eps) for e in np.eye(20)])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-5)


def w2(p):
    x, y = p[0], p[1]
    return np.sin(x) * np.exp(-y * y) + x ** 3 / (1 + y * y) + np.tanh(x * y)


def test_vmap_of_grad_is_one_kernel():
    """G2's shape: the per-point gradient over many points, one thread per point."""
    pts = rng.standard_normal((300, 2))
    f = gradc.jit(gradc.vmap(gradc.grad(w2)), target="cuda")
    np.testing.assert_allclose(f(pts), gradc.jit(gradc.vmap(gradc.grad(w2)))(pts),
                               rtol=1e-13, atol=1e-13)
    compiled = f.compile(pts)
    assert compiled.kernels == ["_k0"] and compiled.on_host == []
    assert f.source(pts).count("@cuda.jit") == 1 and f.source(pts).count("def _at(") == 1


@pytest.mark.parametrize("work", [cudarows.ONE_ROW_WORK, 0])
def test_scan_whose_rows_mix_is_one_block(work, monkeypatch):
    """A step reading another row (``h[::-1]``) cannot be one block per row: the scan
    is one kernel of one block, or the host loop where its step is larger than
    ``ONE_ROW_WORK`` elements."""
    monkeypatch.setattr(cudarows, "ONE_ROW_WORK", work)

    def f(h0, w):
        h, _ = gradc.scan(lambda h, x: (np.tanh(h[::-1] * w + x), None), h0, STEPS)
        return np.sum(h ** 2)
    args = (rng.standard_normal((3, 4)), rng.standard_normal(4))
    g = gradc.grad(f, argnums=(0, 1), target="cuda")
    src = g.source(*args)
    assert ROW_BLOCKS not in src
    assert src.count(ONE_BLOCK) == (2 if work else 0), src
    for a, b in zip(g(*args), gradc.grad(f, argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_the_next_steps_rows_are_loaded_while_a_step_runs():
    """A one-kernel scan loads the next step's row of each stacked operand into a
    register at the top of a step and stores it into shared memory at its end; a stage
    reading the operand at another row (``x[::-1]``) reads the array itself."""
    def f(h0, xs):
        h, _ = gradc.scan(lambda h, x: (np.tanh(h * x + 0.5 * x[::-1]), None), h0, xs)
        return np.sum(h ** 2)
    args = (rng.standard_normal((3, 4)), rng.standard_normal((5, 3, 4)))
    for fn in (gradc.jit(f, target="cuda"), gradc.grad(f, argnums=(0, 1), target="cuda")):
        src = _uncast(fn.source(*args))
        assert src.count(ONE_KERNEL) >= 1
        assert "_pf0 = " in src and "_pf[(1 - _pb) * " in src and "_pf[_pb * " in src
        assert "[_t, -i0 + 2, i1]" in src        # (x[::-1]: the row 2 - i0)
    want = gradc.grad(f, argnums=(0, 1), target="numpy")(*args)
    for a, b in zip(gradc.grad(f, argnums=(0, 1), target="cuda")(*args), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gradc.jit(f, target="cuda")(*args),
                               gradc.jit(f, target="numpy")(*args), rtol=1e-12)


def test_per_row_sums_in_shared_memory_have_padded_rows():
    """The CRF's transition gradient, summed per row in shared memory: rows of 32
    columns are laid out 36 apart (no bank conflicts among the threads summing a row),
    and written out unpadded."""
    U, A = rng.standard_normal((2, 3, 32)), rng.standard_normal((32, 32))
    g = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
    src = _uncast(g.source(U, A))
    assert "_ps0 = cuda.shared.array(1152," in src          # (32 rows of 36)
    assert "_ps0[(_e >> 5) * 36 + (_e & 31)]" in src
    assert re.search(r"_ps0\[\(i1\) \* 36 \+ i2\] \+=", src)
    for a, b in zip(g(U, A), gradc.grad(crf_batched, argnums=(0, 1), target="numpy")(U, A)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_the_crf_transition_gradient_starts_from_zeros_without_a_fill():
    """Reverse mode's gradient of the CRF's transitions is a carry of the backward scan
    that starts from zeros and adds a sum over the batch at each step: with the scan one
    kernel, it is the sum of the blocks' partial sums, with no kernel filling the zeros
    before the scan and none adding them after (G4: 7 launches, was 9)."""
    U, A = rng.standard_normal((2, 3, 32)), rng.standard_normal((32, 32))
    g = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
    src = g.source(U, A)
    host = src[src.rindex("\ndef "):]
    assert host.count(ONE_KERNEL) == 2
    zeros = re.search(r"\(from (\w+), zeros: neither filled nor added\)", host).group(1)
    assert re.search(rf"\n +{zeros} = ", host) is None and f"{zeros})" not in host
    # (12 with the fill, the add, and copies of xs[0] and xs[1:]: views now; and the
    # gradient of U transposed back: the backward scan writes into views of it)
    assert len(g.compile(U, A).kernels) == 7
    for a, b in zip(g(U, A), gradc.grad(crf_batched, argnums=(0, 1), target="numpy")(U, A)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["argument", "new-array", "reshaped", "handed-back",
                                  "rows-mix", "also-the-carry"])
def test_a_scan_reads_its_time_major_operand_through_a_view(case):
    """``np.transpose(U, (1, 0, 2))[1:]`` read only by a one-kernel scan is a strided
    view of ``U`` (no kernel copies it), of an argument or of a kernel's new array,
    also where the scan's rows mix (one block: the view over a row of one, a stride of
    0 for it); where the scan hands it back, it is a kernel's copy; where
    the scan's carry is the viewed array itself, the carry is copied (the loop
    updates it in place otherwise, under the view)."""
    def f(U, w):
        def step(h, x):
            h = np.tanh((h[::-1] if case == "rows-mix" else h) * w + x)
            return h, (x if case == "handed-back" else None)
        if case == "also-the-carry":
            base = np.cumsum(U[:, 0, :], axis=1)          # (a kernel's new (3, 4) array)
            return gradc.scan(step, base, np.transpose(base)[:, :, None])[0]
        base = np.cumsum(U, axis=1) if case == "new-array" else U
        xs = np.transpose(base, (1, 0, 2))
        if case == "reshaped":
            xs = xs.reshape(5, 3, 1, 4)[:, :, 0, :]
        h, ys = gradc.scan(step, xs[0] * 0.5, xs[1:])
        return (h, ys) if case == "handed-back" else h
    U, w = rng.standard_normal((3, 5, 4)), rng.standard_normal(4)
    jitted = gradc.jit(f, target="cuda")
    host = jitted.source(U, w)
    host = host[host.rindex("\ndef "):]
    viewed = case in ("argument", "new-array", "reshaped", "also-the-carry", "rows-mix")
    assert ("_d.view(" in host) == viewed, host
    scan = host.split(ONE_KERNEL)[1] if ONE_KERNEL in host else ""   # (the carry's own
    scan = re.split(r"_k\d+\[", scan)[0]         # array, filled by the kernel from the operand)
    copied = re.search(r"\n +\w+ = _d\.empty\(\(3, 4\), np\.float64\)", scan) is not None
    assert copied == (case == "also-the-carry"), host
    got, want = jitted(U, w), gradc.jit(f, target="numpy")(U, w)
    for a, b in zip(*((x if isinstance(x, tuple) else (x,)) for x in (got, want))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if case == "also-the-carry":
        assert ", (4, 3, 1), (1, 4, 0))" in host
    elif viewed:               # (the kernel reads it with a stride of 4 x 5 per row; one
        #                        block, over a row of one, with a stride of 0 for it)
        assert (", (4, 1, 3, 4), (4, 0, 20, 1))" if case == "rows-mix" else
                ", (4, 3, 4), (4, 20, 1))") in host
        g = gradc.grad(lambda U, w: np.sum(f(U, w) ** 2), argnums=(0, 1), target="cuda")
        want = gradc.grad(lambda U, w: np.sum(f(U, w) ** 2), argnums=(0, 1),
                          target="numpy")(U, w)
        for a, b in zip(g(U, w), want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("second", ["host-loop", "hands-it-back"])
def test_a_view_read_by_a_second_scan_that_needs_an_array_is_copied_there(second):
    """Review regression: the first scan (one kernel) reads ``xs`` through a view; a
    second scan that runs as a host loop (its body reshapes a step of it: numba cannot
    reshape a strided view), or that hands it back as its stacked result, gets a
    kernel's contiguous copy, made where it reads it."""
    w = np.linspace(0.1, 0.5, 4)

    def f(U, h0):
        xs = np.transpose(U, (1, 0, 2))[1:]
        a, _ = gradc.scan(lambda h, x: (np.tanh(h * w + x), None), h0, xs)
        if second == "host-loop":
            b, _ = gradc.scan(lambda h, x: (np.tanh(h[::-1] * w + x.reshape(12).reshape(
                3, 4)), None), h0, xs)
            return a, b
        b, ys = gradc.scan(lambda h, x: (np.tanh(h * w + x), x), h0, xs)
        return a, b, ys
    U, h0 = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 4))
    jitted = gradc.jit(f, target="cuda")
    host = jitted.source(U, h0)
    host = host[host.rindex("\ndef "):]
    view = re.search(r"\n +(\w+) = _d\.view\(a, 4, \(5, 3, 4\), \(4, 24, 1\)\)", host)
    assert view is not None, host
    copy = host.index(f"\n    {view.group(1)} = _d.empty((5, 3, 4), np.float64)")
    assert view.start() < copy and host.count("_d.view(") == 1
    for got, want in zip(jitted(U, h0), gradc.jit(f, target="numpy")(U, h0)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_an_accumulator_adding_a_broadcast_sum_from_zeros_is_filled_and_added():
    """Review regression: a carry of 6 that adds one sum over the batch at each step
    (broadcast into all 6) starts from a fill of zeros and an add, not the partial
    sums' total alone (5 rows, not 5 x 6)."""
    def f(h0, W):
        def step(c, x):
            h, a = c
            hn = np.tanh(h * W + x)
            return (hn, a + np.sum(hn[:, 0])), None
        (h, a), _ = gradc.scan(step, (h0, np.zeros_like(W)), XS6)
        return a
    args = (rng.standard_normal((5, 6)), rng.standard_normal(6))
    np.testing.assert_allclose(gradc.jit(f, target="cuda")(*args),
                               gradc.jit(f, target="numpy")(*args), rtol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("start", ["view", "argument", "literal"])
def test_a_one_kernel_scan_copies_its_carrys_first_value_in_itself(start, shared,
                                                                    monkeypatch):
    """A carry that starts from a view (``xs[0]`` of a time-major transpose), from an
    argument read again afterwards, or from a literal gets an array of its own, which the
    kernel fills row by row before the row's first step, into shared memory or (rows
    too large for it) global memory: no copy on the host, and no kernel for ``xs[0]``."""
    from gradc.codegen import cudarows
    if not shared:
        monkeypatch.setattr(cudarows, "ROW_SHARED", 0)

    def f(U, h0):
        xs = np.transpose(U, (1, 0, 2))
        init = {"view": xs[0], "argument": h0, "literal": np.ones((3, 4))}[start]
        h, _ = gradc.scan(lambda h, x: (np.tanh(h * 0.9 + x), None), init, xs[1:])
        return h, h + h0                        # (h0 read after the loop)
    U, h0 = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 4))
    jitted = gradc.jit(f, target="cuda")
    src = _uncast(jitted.source(U, h0))
    host = src[src.rindex("\ndef "):]
    assert ONE_KERNEL in host and "_d.copy(" not in host.split(ONE_KERNEL)[1].split("_k")[0]
    # (into its row in global memory, or in shared memory: a double row's half)
    assert re.search(r"\w+_[wg]?\[i0, _e\] = \w+_i\[i0, _e\]|\w+\[_e\] = \w+_i\[i0, _e\]|"
                     r"\w+_2\[_o0 \+ _e\] = \w+_i\[i0, _e\]", src), src
    assert host.count("_d.view(") == (2 if start == "view" else 1)
    for got, want in zip(jitted(U, h0), gradc.jit(f, target="numpy")(U, h0)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    loss = lambda U, h0: np.sum(f(U, h0)[0] ** 2)       # noqa: E731
    for got, want in zip(gradc.grad(loss, argnums=(0, 1), target="cuda")(U, h0),
                         gradc.grad(loss, argnums=(0, 1), target="numpy")(U, h0)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


XS6 = rng.standard_normal((4, 5, 6))


@pytest.mark.parametrize("init", ["zeros", "ones", "zeros_like"])
@pytest.mark.parametrize("terms", [1, 2])
def test_an_accumulating_carry_from_a_constant(init, terms):
    """A forward scan's carry adding sums over the batch (one term or two), starting
    from zeros (a literal), ones, or ``zeros_like`` (a fill the lowering defers to the
    scan): the same values as NumPy, forward and reverse; from zeros the carry is the
    partial sums' total alone (two sums over one axis are one sum of the two terms:
    ``passes.sums``)."""
    def f(h0, W):
        def step(carry, x):
            h, acc = carry
            hn = np.tanh(h * W + x)
            extra = np.sum(hn * x, axis=0)
            if terms == 2:
                extra = extra + np.sum(hn ** 2, axis=0)
            return (hn, acc + extra), None
        start = {"zeros": np.zeros(6), "ones": np.ones(6),
                 "zeros_like": np.zeros_like(W)}[init]
        (h, acc), _ = gradc.scan(step, (h0, start), XS6)
        return np.sum(h ** 2) + np.sum(acc * W)
    args = (rng.standard_normal((5, 6)), rng.standard_normal(6))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(*args)
    assert src.count(ONE_KERNEL) == 1
    assert ("neither filled nor added" in src) == (init != "ones")
    np.testing.assert_allclose(jitted(*args), gradc.jit(f, target="numpy")(*args),
                               rtol=1e-12)
    g = gradc.grad(f, argnums=(0, 1), target="cuda")
    for a, b in zip(g(*args), gradc.grad(f, argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mixes", [False, True])
def test_a_deferred_fill_as_a_rows_carry_is_lowered_where_the_scan_reads_it(mixes):
    """``zeros_like`` as a scan's initial carry is filled where the scan needs it: by a
    kernel just before the one-kernel scan, which then updates it in place (no copy);
    where the scan's rows mix (one block), the kernel copies the carry in from a
    constant instead (``fill_literal``: no fill kernel)."""
    def f(W, xs):
        def step(h, x):
            return np.tanh((h[::-1] if mixes else h) * W + x), None
        h, _ = gradc.scan(step, np.zeros_like(xs[0]), xs)
        return h
    args = (rng.standard_normal(7), rng.standard_normal((4, 5, 7)))
    jitted = gradc.jit(f, target="cuda")
    host = jitted.source(*args)
    host = host[host.rindex("\ndef "):]
    assert (ROW_BLOCKS in host) != mixes and (ONE_BLOCK in host) == mixes
    assert ("= broadcast_in_dim[dims=() shape=(5,7)] 0.0" in host) != mixes
    assert re.search(r"\n +\w+ = _d\.copy\(", host) is None
    np.testing.assert_allclose(jitted(*args), gradc.jit(f, target="numpy")(*args),
                               rtol=1e-12, atol=1e-12)


PLACED = "(no kernel: the scan's kernel wrote it in place)"
W4 = np.linspace(0.1, 0.5, 4)


def _placing(case):
    """A scan whose results an equation after it only places into its own result."""
    def f(h0, xs):
        def step(h, x):
            hn = np.tanh(h * W4 + x)
            return hn, hn * 2.0
        h, ys = gradc.scan(step, h0, xs)
        if case == "transpose":                   # (batch-major stacked results)
            return np.transpose(ys, (1, 0, 2))
        if case == "concatenate":                 # (with the final carry, reshaped)
            return np.concatenate([h[None], ys])
        if case == "both":                        # (the carry returned as it is too)
            return np.transpose(ys, (1, 0, 2)), h
        if case == "two-placings":                # (a placing of a placing: one only)
            return np.transpose(np.concatenate([ys, h[None]]), (1, 0, 2))
        if case == "read-again":                  # (ys read twice: no placing)
            return np.transpose(ys, (1, 0, 2)), np.sum(ys)
        if case == "rows-mix":                    # (one block: the placing a kernel)
            h, ys = gradc.scan(lambda h, x: (np.tanh(h[::-1] * W4 + x), h), h0, xs)
            return np.transpose(ys, (1, 0, 2))
        raise AssertionError(case)
    return f


@pytest.mark.parametrize("case", ["transpose", "concatenate", "both", "two-placings",
                                  "read-again", "rows-mix"])
def test_a_scan_writes_its_results_into_the_array_that_places_them(case):
    """``np.transpose(ys, (1, 0, 2))`` or ``np.concatenate([h[None], ys])`` of a one-kernel
    scan's results, read nowhere else: the scan's kernel writes them into strided views
    of that array, and neither the placing nor the reshape is a kernel; values as
    NumPy's, forward and reverse."""
    f = _placing(case)
    h0, xs = rng.standard_normal((3, 4)), rng.standard_normal((5, 3, 4))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(h0, xs)
    host = src[src.rindex("\ndef "):]
    placed = {"transpose": 1, "concatenate": 2, "both": 1, "two-placings": 2}.get(case, 0)
    assert host.count(PLACED) == placed, host
    kernels = {"transpose": 1, "concatenate": 1, "both": 1, "two-placings": 2,
               "read-again": 3}                      # (the scan's, and each placing's)
    if case in kernels:
        assert len(jitted.compile(h0, xs).kernels) == kernels[case], host
    assert (ROW_BLOCKS in host) == (case != "rows-mix")
    if case == "transpose":
        assert re.search(r"= _d\.view\(\w+, 0, \(5, 3, 4\), \(4, 20, 1\)\)", host), host
    if case == "concatenate":            # (the carry first, then the five steps)
        assert ", 0, (3, 4), (4, 1))" in host and ", 12, (5, 3, 4), (12, 4, 1))" in host
    got, want = jitted(h0, xs), gradc.jit(f, target="numpy")(h0, xs)
    for a, b in zip(*((x if isinstance(x, tuple) else (x,)) for x in (got, want))):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-13, atol=0)
    loss = lambda h0, xs: sum(np.sum(np.sin(r)) for r in (lambda o: o if isinstance(     # noqa: E731
        o, tuple) else (o,))(f(h0, xs)))
    for a, b in zip(gradc.grad(loss, argnums=(0, 1), target="cuda")(h0, xs),
                    gradc.grad(loss, argnums=(0, 1), target="numpy")(h0, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("perm", [(1, 0, 2, 3), (1, 0, 3, 2)])
def test_reverse_modes_transpose_of_a_time_major_operand_is_written_by_the_scan(perm):
    """Reverse mode's gradient of ``np.transpose(U, perm)`` read as ``xs[0]`` and
    ``xs[1:]`` by a CRF-like scan with carries of rank 3 (G4's pattern): the backward
    scan writes its stacked cotangent and final carry into views of the gradient of
    ``U``, with no kernel to transpose them back.  With the last two axes swapped, the
    carry's rows are not one stride apart (a view cannot be reshaped to rows): the
    scan is lowered again with arrays of its own, and the transpose is a kernel."""
    M = rng.standard_normal((3, 3))

    def f(U):
        xs = np.transpose(U, perm)
        h, _ = gradc.scan(lambda h, u: (np.tanh(h @ M) + u, None), xs[0], xs[1:])
        return np.sum(h ** 2)
    U = rng.standard_normal((2, 5, 4, 3) if perm == (1, 0, 2, 3) else (2, 5, 3, 4))
    g = gradc.grad(f, target="cuda")
    src = g.source(U)
    host = src[src.rindex("\ndef "):]
    assert host.count(ONE_KERNEL) == 2, host
    assert (PLACED in host) == (perm == (1, 0, 2, 3)), host
    np.testing.assert_allclose(g(U), gradc.grad(f, target="numpy")(U), rtol=1e-12,
                               atol=1e-12)


def test_the_crf_gradient_of_U_is_written_by_the_backward_scan():
    """G4: the backward scan writes its stacked cotangent (steps 1..T-1) and its final
    carry (step 0) into views of the gradient of ``U`` (B, T, K): no kernel transposes
    them back and pads them (7 kernels, was 8); ``GRADC_CUDA_VIEWS=0`` restores it."""
    U, A = rng.standard_normal((3, 6, 4)), rng.standard_normal((4, 4))
    host = gradc.grad(crf_batched, argnums=(0, 1), target="cuda").source(U, A)
    host = host[host.rindex("\ndef "):]
    assert PLACED in host
    assert ", 0, (3, 4), (24, 1))" in host and ", 4, (5, 3, 4), (4, 24, 1))" in host, host
    code = textwrap.dedent(f"""
        import numpy as np, gradc, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_cuda import crf_batched
        U, A = np.ones((3, 6, 4)), np.eye(4)
        g = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
        print(g.source(U, A).count("(no kernel:"), len(g.compile(U, A).kernels))
    """)
    for env, want in (({}, "1 7"), ({"GRADC_CUDA_VIEWS": "0"}, "0 10")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, **env, "GRADC_CUDA_ONE_RUN_WORK": "0"},
                             timeout=600)
        assert out.stdout.split() == want.split(), out.stderr[-2000:]


def test_reshaped_strides_is_numpys_rule_for_a_reshape_without_a_copy():
    """``_reshaped_strides`` gives a view exactly where NumPy's reshape would not copy,
    and its strides read the same elements, on random transposed and sliced views."""
    r = np.random.default_rng(5)
    checked = 0
    for _ in range(3000):
        a = np.arange(int(np.prod(shape := tuple(r.integers(1, 5, size=r.integers(2, 5))))))
        v = a.reshape(shape).transpose(r.permutation(len(shape)))
        v = v[tuple(slice(int(r.integers(0, d)), None, int(r.integers(1, 3)))
                    if r.random() < 0.3 else slice(None) for d in v.shape)]
        sizes, rem = [], v.size
        while rem > 1:
            d = int(r.choice([d for d in range(2, rem + 1) if rem % d == 0]))
            sizes += [d] + ([1] if r.random() < 0.2 else [])
            rem //= d
        new = tuple(r.permutation(sizes).tolist()) or (1,)
        got = cudagen._reshaped_strides(v.shape, tuple(s // 8 for s in v.strides), new)
        w = v.view()
        try:
            w.shape = new               # (NumPy refuses where a copy is needed)
        except AttributeError:
            assert got is None, (v.shape, v.strides, new, got)
            continue
        assert got is not None, (v.shape, v.strides, new)
        offset = (v.ctypes.data - a.ctypes.data) // 8
        seen = np.lib.stride_tricks.as_strided(a[offset:], new, tuple(8 * s for s in got))
        np.testing.assert_array_equal(seen, w)
        checked += 1
    assert checked > 1000


def _step_loop(h, n=3):
    return gradc.scan(lambda c, x: (np.tanh(c * 0.9 + x), None), h,
                      np.linspace(-0.5, 0.5, n))[0]


@pytest.mark.parametrize("case", ["dead", "read-after", "view-read-after", "also-a-const",
                                  "handed-back-by-cond"])
def test_a_one_kernel_scan_updates_a_dying_initial_carry_in_place(case):
    """A carry's initial value that a kernel of this function made and nothing reads
    after the loop is the loop's buffer (no copy); read afterwards (itself, through a
    reshape, by the loop as a constant too, or through a branch that may hand the same
    array back: review regression) it is copied first."""
    def f(x):
        h = np.tanh(x * 2.0)                 # (a kernel's new array)
        if case == "handed-back-by-cond":
            k = gradc.cond(x[0, 0] > -10.0, lambda h: h, lambda h: h * 2.0, h)
            return _step_loop(h), k
        if case == "also-a-const":
            # (h itself read at every step: 0.1 * h alone would run once, before it)
            out = gradc.scan(lambda c, t: (np.tanh(c * 0.9 + t) + h * c * 0.1, None), h,
                             np.linspace(-0.5, 0.5, 3))[0]
        else:
            out = _step_loop(h)
        extra = {"dead": 0.0, "read-after": np.sum(h ** 3),
                 "view-read-after": np.sum(h.reshape(-1) ** 3)}.get(case, 0.0)
        return out, extra
    x = rng.standard_normal((3, 4))
    jitted = gradc.jit(f, target="cuda")
    src = jitted.source(x)
    assert src.count(ONE_KERNEL) == 1
    host = src[src.rindex("\ndef "):]       # (the host function)
    # (a copy: an array of the carry's own, which the kernel fills from the operand)
    scan = host[host.index(ONE_KERNEL):]
    scan = scan[:re.search(r"_k\d+\[", scan).start()]
    assert ("_d.empty((3, 4), np.float64)" in scan) == (case != "dead"), host
    assert "_d.copy(" not in scan
    for a, b in zip(jitted(x), gradc.jit(f, target="numpy")(x)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_products_a_bit_of_which_matters_are_not_fused_into_fmas():
    """Products whose rounding reaches a floor (through a sum, in a one-kernel scan's
    step, as a power) are ``_d.mul_rn`` (never an FMA on a GPU); a float result that
    nothing rounds or compares keeps plain products."""
    x = rng.standard_normal((130, 8))
    cases = {
        "sum": lambda x: np.floor(np.sum(x * x[::-1] + 1.0, axis=1)),
        "power": lambda x: np.floor(x ** 3 + 0.5),
        "scan": lambda x: gradc.scan(
            lambda h, t: (np.tanh(h) + 0.1 * np.floor(h * 3.0 + t), None), x[:3],
            np.linspace(0.0, 1.0, 4))[0],
        "float": lambda x: x * x[::-1] + 1.0,
    }
    for name, f in cases.items():
        src = gradc.jit(f, target="cuda").source(x)
        assert ("_d.mul_rn(" in src) == (name != "float"), name
        np.testing.assert_allclose(gradc.jit(f, target="cuda")(x),
                                   gradc.jit(f, target="numpy")(x), rtol=1e-13)


def test_a_per_step_vector_as_long_as_the_batch_is_read_whole():
    """A per-step vector every row reads along its own axis, of the batch's length (4
    rows of 4): stacked operands are only read, so the scan stays one kernel."""
    def f(h0, s, w):
        def step(h, x):
            z = np.tanh(h * w + x)
            return z, np.sum(z, axis=0)
        h, ys = gradc.scan(step, h0, s)
        return np.sum(h ** 2) + np.sum(ys * s)
    args = (rng.standard_normal((4, 4)).astype(np.float32),
            rng.standard_normal((3, 4)).astype(np.float32),
            rng.standard_normal(4).astype(np.float32))
    g = gradc.grad(f, argnums=(0, 1, 2), target="cuda")
    assert g.source(*args).count(ONE_KERNEL) == 2
    for a, b in zip(g(*args), gradc.grad(f, argnums=(0, 1, 2), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_arithmetic_on_per_step_scalars_is_done_by_every_thread():
    """Rank-0 values of per-step scalars and constants alone (``2 * x``; a mean's
    cotangent going back) are the same for every row: each thread computes them into a
    local, and the scan stays one kernel; arithmetic after a sum over the batch (a
    per-step mean; ``x``'s gradient, a batch sum times ``4 x``) runs after the kernel."""
    h0, xs, w = rng.standard_normal((3, 4)), rng.standard_normal(5), rng.standard_normal(4)

    def scaled(h0, xs, w):
        h, _ = gradc.scan(lambda h, x: (np.tanh(h * w + 2.0 * x * x), None), h0, xs)
        return np.sum(h ** 2)

    def mean_loss(h0, xs, w):
        return np.sum(gradc.scan(lambda h, x: (np.tanh(h * w + x), np.mean(h ** 2)),
                                 h0, xs)[1])
    for f, forward, backward in ((scaled, 1, 2), (mean_loss, 1, 2)):
        j = gradc.jit(f, target="cuda")
        assert j.source(h0, xs, w).count(ONE_KERNEL) == forward
        np.testing.assert_allclose(j(h0, xs, w), gradc.jit(f, target="numpy")(h0, xs, w),
                                   rtol=1e-12)
        g = gradc.grad(f, argnums=(0, 1, 2), target="cuda")
        src = g.source(h0, xs, w)
        assert src.count(ONE_KERNEL) == backward and "_u = " in src
        want = gradc.grad(f, argnums=(0, 1, 2), target="numpy")(h0, xs, w)
        for a, b in zip(g(h0, xs, w), want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_epilogue_sums_of_operands_and_values_the_kernel_also_reads():
    """Review regressions: a per-step sum of an operand alone (the per-row partials are
    a copy of it: an empty fused body, which is not a reshape) and a value of per-step
    scalars read both by the kernel and by the epilogue (its inputs stay in the
    kernel)."""
    h0, w = rng.standard_normal((3, 4)), rng.standard_normal(4)
    xb, xs, v = rng.standard_normal((5, 3)), rng.standard_normal(5), rng.standard_normal(3)
    cases = [
        (lambda h0, xs, w: gradc.scan(lambda h, x: (np.tanh(h * w + x[:, None]),
                                                    np.mean(h) * np.sum(x)), h0, xs)[1],
         (h0, xb, w)),
        (lambda h0, xs, w, v: gradc.scan(lambda h, x: (np.tanh(h * w + x),
                                                       np.mean(h) + np.sum(v)), h0, xs)[1],
         (h0, xs, w, v)),
        (lambda h0, xs, w: gradc.scan(lambda h, x: (np.tanh(h * w + (2 * x + 1)),
                                                    np.sum(h) * (2 * x + 1)), h0, xs)[1],
         (h0, xs, w)),
    ]
    c = np.array([1.0, 2.0, 3.0])       # (a reduction of per-step scalars: the host loop)
    cases.append((lambda h0, xs, w: np.sum(gradc.scan(
        lambda h, x: (np.tanh(h * w + np.sum(c * x)), None), h0, xs)[0] ** 2), (h0, xs, w)))
    for f, args in cases:
        j = gradc.jit(f, target="cuda")
        np.testing.assert_allclose(j(*args), gradc.jit(f, target="numpy")(*args),
                                   rtol=1e-12, atol=1e-12)
    assert ONE_KERNEL in gradc.jit(cases[2][0], target="cuda").source(*cases[2][1])


def test_an_unexpected_failure_of_the_one_kernel_lowering_keeps_the_host_loop(monkeypatch):
    """A case the row lowering misjudges (here: any error inside it) must not break the
    program: the host loop runs, and the source says why."""
    from gradc.codegen import cudarows

    def broken(self):
        raise KeyError("made up")
    monkeypatch.setattr(cudarows._Rows, "lower", broken)
    f, args = PROGRAMS["rows-loss"]
    g = gradc.grad(_summed(f), argnums=(0, 1), target="cuda")
    src = g.source(*args)
    assert "one-kernel lowering of this scan failed (KeyError: 'made up')" in src
    assert ONE_KERNEL not in src
    for a, b in zip(g(*args), gradc.grad(_summed(f), argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_map_kernels_load_each_element_once_before_computing():
    """A map kernel reads each array element it needs once, at the top of its
    per-element code: Rosenbrock's gradient reads x[i], x[i + 1] and x[i - 1] (the
    last two clamped into the array), and its pads' windows become selects, with no
    branch left to hold a load up.  The gradient is still the CPU's (ends included)."""
    x = rng.standard_normal(37)
    g = gradc.grad(rosen, target="cuda")
    src = g.source(x)
    at = src[src.index("def _at("):src.index("_g = cuda.gridsize")]
    loads = re.findall(r"(_h\d+) = a\[(.*)\]", at)
    assert [index for _, index in loads] == [
        "np.uint64(i0)", "np.uint64((i0 + 1 if i0 + 1 < 36 else 36))",
        "np.uint64((i0 - 1 if i0 - 1 > 0 else 0))"]
    code = [line.strip() for line in at.splitlines()[1:] if not line.strip().startswith("#")]
    assert not [line for line in code if line.startswith(("if ", "else"))]
    assert sum("a[" in line for line in code) == 3
    np.testing.assert_allclose(g(x), gradc.grad(rosen, target="numpy")(x), rtol=1e-12,
                               atol=1e-12)


def _device(x, offset=0):
    """``x`` on the device; with ``offset``, a view starting ``offset`` elements into a
    larger array (its data pointer then off the 16-byte alignment of vectors)."""
    from numba import cuda
    if not offset:
        return cuda.to_device(x)
    flat = cuda.to_device(np.concatenate([np.zeros(offset, x.dtype), x.ravel()]))
    return flat[offset:].reshape(x.shape)


def _counting_vectors(monkeypatch):
    """Calls of the device functions' vector loads and stores, counted (the simulator
    looks them up in ``gradc.codegen.cuda`` at each call); None on a GPU, whose
    kernels compile the intrinsics in."""
    from gradc.codegen import cuda as gcuda
    gcuda.import_cuda()
    if not SIMULATOR:
        return None
    calls = {"vload": 0, "vstore": 0}
    for lanes in gcuda.VECTOR_LANES:
        for kind in ("vload", "vstore"):
            def counted(*args, _f=getattr(gcuda, f"{kind}{lanes}"), _k=kind):
                calls[_k] += 1
                return _f(*args)
            monkeypatch.setattr(gcuda, f"{kind}{lanes}", counted)
    return calls


@pytest.mark.parametrize("dtype,lanes", [(np.float32, 4), (np.float64, 2)])
def test_map_kernels_read_and_write_vectors(dtype, lanes, monkeypatch):
    """Where the last axis splits into 16-byte vectors, a map kernel computes a vector's
    elements per call: Rosenbrock's gradient loads x[i:i + lanes] with one vector load,
    its two neighbours outside the vector with scalar loads (clamped), and stores the
    vector at once.  Aligned arrays take that path; a view one element into an array
    (misaligned) takes the scalar loop; both give the CPU's gradient."""
    calls = _counting_vectors(monkeypatch)
    x = rng.standard_normal(64).astype(dtype)
    g = gradc.grad(rosen, target="cuda")
    src = g.source(x)
    vat = src[src.index("def _vat("):src.index("_g = cuda.gridsize")]
    assert f"_d.vload{lanes}(a, (np.uint64(i0),))" in vat
    assert vat.count("_d.vload") == 1 and vat.count(" = a[") == 2, vat
    assert "np.uint64((i0 - 1 if i0 - 1 > 0 else 0))" in vat
    assert f"np.uint64((i0 + {lanes} if i0 + {lanes} < 63 else 63))" in vat
    assert f"if _d.valigned{lanes}(a) and _d.valigned{lanes}(b):" in src
    assert f"_d.vstore{lanes}(b, " in src
    want = gradc.grad(rosen, target="numpy")(x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    if calls is not None:
        calls.update(vload=0, vstore=0)        # (``source`` ran the function once)
    np.testing.assert_allclose(g(x), want, rtol=tol, atol=tol)
    if calls is not None:
        assert calls["vload"] == 64 // lanes and calls["vstore"] == 64 // lanes
        calls.update(vload=0, vstore=0)
    np.testing.assert_allclose(g(_device(x, offset=1)).copy_to_host(), want, rtol=tol,
                               atol=tol)
    if calls is not None:
        assert calls == {"vload": 0, "vstore": 0}


def test_vector_lanes_of_broadcast_transposed_and_mixed_operands(monkeypatch):
    """Operands of every kind in one vector kernel: one read along the last axis (a
    vector), one broadcast along it (one load for every lane), one transposed (the
    last axis is its first: a load per lane), one float32 among float64 (lanes of
    the widest item: two, as one 8-byte vector).  Values and gradients are the CPU's.
    (16-byte vectors asked for: a kernel reading four arrays gets 8-byte ones.)"""
    monkeypatch.setenv("GRADC_CUDA_VECTOR", "16")
    calls = _counting_vectors(monkeypatch)
    x, z = rng.standard_normal((6, 8)), rng.standard_normal((8, 6))
    w, y = rng.standard_normal((6, 1)), rng.standard_normal(8).astype(np.float32)

    def f(x, z, w, y):
        return np.sin(x) * z.T + np.exp(w * x) * y - x[:, ::-1] * x
    j = gradc.jit(f, target="cuda")
    src = j.source(x, z, w, y)
    vat = src[src.index("def _vat("):src.index("_g = cuda.gridsize")]
    assert "_v0 = _d.vload2(a, (np.uint64(i0), np.uint64(i1),))" in vat
    assert "_v1 = _d.vload2(d, (np.uint64(i1),))" in vat and vat.count("vload") == 2
    assert vat.count(" = b[") == 2 and vat.count(" = c[") == 1    # (per lane; shared)
    assert "if _d.valigned2(a) and _d.valigned2(d) and _d.valigned2(e):" in src
    if calls is not None:
        calls.update(vload=0, vstore=0)
    np.testing.assert_allclose(j(x, z, w, y), gradc.jit(f, target="numpy")(x, z, w, y),
                               rtol=1e-6)
    if calls is not None:
        assert calls == {"vload": 2 * 6 * 8 // 2, "vstore": 6 * 8 // 2}
    g = gradc.grad(lambda *a: np.sum(f(*a)), argnums=(0, 1, 2, 3), target="cuda")
    want = gradc.grad(lambda *a: np.sum(f(*a)), argnums=(0, 1, 2, 3), target="numpy")
    for a, b in zip(g(x, z, w, y), want(x, z, w, y)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    j = gradc.jit(lambda x, y: (x * y, x > 0.5, (x * 3).astype(np.int32)), target="cuda")
    for a, b in zip(j(x, y), gradc.jit(lambda x, y: (x * y, x > 0.5, (x * 3).astype(
            np.int32)), target="numpy")(x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_flat_intrinsic_ir_on_the_cpu():
    """``_d.flat``'s LLVM IR (the GPU's, compiled here by Numba's CPU target): a
    C-contiguous array's elements as one axis on the same memory, read and written at
    constant-stride offsets."""
    import numba
    from numba.core.extending import intrinsic

    from gradc.codegen.cuda import _flat_intrinsic
    flat = _flat_intrinsic(intrinsic)

    @numba.njit
    def doubled_transpose(a, out):
        a_f, out_f = flat(a, (3, 4)), flat(out, (4, 3))
        for i in range(3):
            for j in range(4):
                out_f[np.uint64(j * 3 + i)] = 2.0 * a_f[np.uint64(i * 4 + j)]
        return a_f.size, a_f.shape[0]
    a, out = np.arange(12.0).reshape(3, 4), np.zeros((4, 3))
    assert doubled_transpose(a, out) == (12, 12)
    np.testing.assert_array_equal(out, 2.0 * a.T)


def test_vector_intrinsics_ir_on_the_cpu():
    """The LLVM IR of ``vload``, ``vstore`` and ``valigned`` run by Numba's CPU target
    (the GPU's is the same IR through NVVM): addresses through every stride, lanes in
    order, and the alignment test on pointers and strides."""
    import numba
    from numba.core.extending import intrinsic

    from gradc.codegen.cuda import _vector_intrinsics
    vload4, vstore4, valigned4 = _vector_intrinsics(4, intrinsic)
    _, _, valigned2 = _vector_intrinsics(2, intrinsic)

    @numba.njit
    def reversed_vectors(a, b):
        if not (valigned4(a) and valigned4(b)):
            return False
        for i in range(a.shape[0]):
            for j in range(0, a.shape[1], 4):
                v = vload4(a, (np.uint64(i), np.uint64(j)))
                vstore4(b, (np.uint64(i), np.uint64(j)), (v[3], v[2], v[1], v[0]))
        return True
    a = np.arange(96, dtype=np.float32).reshape(8, 12)[::2]      # (rows 96 bytes apart)
    b = np.zeros((4, 12), np.float32)
    assert reversed_vectors(a, b)
    np.testing.assert_array_equal(b, a.reshape(4, 3, 4)[:, :, ::-1].reshape(4, 12))
    aligned2 = numba.njit(lambda a: valigned2(a))
    flat = np.zeros(64)
    base = flat.ctypes.data % 16 // 8           # (the first element 16-byte aligned)
    assert [aligned2(flat[base + k:base + k + 8]) for k in range(4)] == [
        True, False, True, False]
    m = flat[base:base + 48].reshape(6, 8)
    assert [aligned2(m), aligned2(m[:, 1:]), aligned2(m[:, ::2]), aligned2(m.T),
            aligned2(m[::3]), aligned2(m[:, :6])] == [True, False, False, False, True,
                                                      True]
    assert not reversed_vectors(a[:, 1:9], b[:, :8])


def _code(src: str) -> str:
    """Generated source without its comments (which quote the user's lines)."""
    return "\n".join(line for line in src.splitlines() if not line.strip().startswith("#"))


def test_no_vectors_of_complex_numbers_or_booleans():
    """Only integers and floats of 4 or 8 bytes are vector elements: a complex64 array
    (8 bytes, but a pair of floats) keeps scalar accesses, beside float32 ones that get
    vectors; booleans too."""
    z = (np.arange(16) + 1j * np.arange(16)).astype(np.complex64)
    x = rng.standard_normal(16).astype(np.float32)
    cases = [(lambda z, x: z * x, (z, x), 0), (lambda z: z * 2, (z,), 0),
             (lambda x: (x > 0) & (x < 1), (x,), 0),
             (lambda z, x: (z * x, x * 2.0, x > 0), (z, x), 1)]
    for f, args, vectors in cases:
        j = gradc.jit(f, target="cuda")
        code = _code(j.source(*args))
        assert code.count("_d.vload4(b, ") == vectors and code.count("_d.vload") == vectors
        assert code.count("_d.vstore4(d, ") == vectors and code.count("_d.vstore") == vectors
        assert ("if _d.valigned4(b) and _d.valigned4(d):" in code) == bool(vectors)
        want = gradc.jit(f, target="numpy")(*args)
        for a, b in zip(*(((r,) if isinstance(r, np.ndarray) else r) for r in (j(*args),
                                                                              want))):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vector_width_from_the_environment(monkeypatch):
    """A kernel reading three arrays gets 8-byte vectors (each lane a copy of its code
    in registers): two float32 lanes, and none in float64.  ``GRADC_CUDA_VECTOR`` sets
    the vectors' bytes (0: scalar accesses only); any other value is refused with the
    variable's name."""
    def three(a, b, c):
        return np.sum(np.exp(a * b) / (1.0 + c * c))
    for dt, lanes in ((np.float32, 2), (np.float64, 0)):
        abc = [rng.standard_normal(64).astype(dt) for _ in range(3)]
        src = gradc.grad(three, argnums=(0, 1, 2), target="cuda").source(*abc)
        assert src.count(f"_d.vload{lanes}(") == (3 if lanes else 0), src
    x = rng.standard_normal(64).astype(np.float32)
    monkeypatch.setenv("GRADC_CUDA_VECTOR", "0")
    assert "_vat" not in gradc.grad(rosen, target="cuda").source(x)
    monkeypatch.setenv("GRADC_CUDA_VECTOR", "8")
    g = gradc.grad(rosen, target="cuda")
    assert "_d.vload2(a" in g.source(x)
    np.testing.assert_allclose(g(x), gradc.grad(rosen, target="numpy")(x), rtol=1e-5)
    monkeypatch.setenv("GRADC_CUDA_VECTOR", "12")
    with pytest.raises(gradc.ArgumentError, match="GRADC_CUDA_VECTOR='12'"):
        gradc.grad(rosen, target="cuda").source(x)


ROW_RUNS = ("crf-scan", "mlp", "crf-batched", "crf-batched-float32")


@pytest.mark.parametrize("name", ROW_RUNS)
def test_row_runs_match_the_interpreter(name, monkeypatch):
    """Runs of row-wise equations (a softmax's maximum, its sum of exponentials, what
    reverse mode makes of them) as one kernel with a block per row: the programs'
    values and gradients, with the least batch a run needs lowered to these tests'
    (and the CRF's scan over one sequence a host loop, not one block)."""
    monkeypatch.setattr(cudagen, "ROW_RUN_BATCH", 1)
    monkeypatch.setattr(cudarows, "ONE_ROW_WORK", 0)
    f, args = PROGRAMS[name]
    tol = 1e-4 if any(getattr(a, "dtype", None) == np.float32 for a in args) else 1e-12
    wrt = tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
    grad = gradc.grad(_summed(f), argnums=wrt, target="cuda")
    assert "# rows: these" in grad.source(*args)
    for a, b in zip(grad(*args), gradc.grad(_summed(f), argnums=wrt, target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    np.testing.assert_allclose(gradc.jit(f, target="cuda")(*args),
                               gradc.jit(f, target="numpy")(*args), rtol=tol, atol=tol)


def test_a_softmax_cross_entropy_row_reads_its_stages_from_registers(monkeypatch):
    """G3's loss (an MLP's mean softmax cross-entropy; rows of 10 classes): its
    gradient's row kernel has a thread per row's sums; the step after the sums (1 / the
    sum) runs in their loop, and the next sum reads it from the local holding it, as it
    reads the maximum: 2 barriers a row (5 when each stage waited for the one before)."""
    monkeypatch.setattr(cudagen, "ROW_RUN_BATCH", 1)

    def loss(W1, W2, X, onehot):
        z = np.tanh(X @ W1) @ W2
        m = np.max(z, axis=1, keepdims=True)
        lse = np.log(np.sum(np.exp(z - m), axis=1)) + m[:, 0]
        return np.mean(lse - np.sum(z * onehot, axis=1))
    args = (rng.standard_normal((5, 4)), rng.standard_normal((4, 10)),
            rng.standard_normal((6, 5)), np.eye(10)[rng.integers(0, 10, 6)])
    grad = gradc.grad(loss, argnums=(0, 1), target="cuda")
    src = grad.source(*args)
    start = src.index("for i0 in range(cuda.blockIdx.x")
    kernel = src[src.rindex("def _k", 0, start):src.index("\n\n\n", start)]
    assert kernel.count("cuda.syncthreads()") == 2
    for a, b in zip(grad(*args), gradc.grad(loss, argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _layer_norm_softmax(x, w):
    mu = np.mean(x, axis=1, keepdims=True)
    h = (x - mu) / np.sqrt(np.mean((x - mu) ** 2, axis=1, keepdims=True) + 1e-5)
    z = h * w
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return np.sum(e / np.sum(e, axis=1, keepdims=True) * np.cos(x))


def test_layer_norm_and_softmax_rows_are_one_kernel():
    """A layer norm then a softmax over 130 rows: the forward pass's four reductions
    and the backward pass's are each one kernel with a block per row; the gradient is
    the CPU's."""
    x, w = rng.standard_normal((130, 7)), rng.standard_normal(7)
    g = gradc.grad(_layer_norm_softmax, argnums=(0, 1), target="cuda")
    src = g.source(x, w)
    assert src.count("# rows: these") >= 2
    for a, b in zip(g(x, w), gradc.grad(_layer_norm_softmax, argnums=(0, 1),
                                        target="numpy")(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_run_reading_other_rows_keeps_its_kernels(monkeypatch):
    """A run whose stage reads another row's value (each row shifted by the maximum of
    the row mirrored to it) is not one kernel: its equations are lowered one by one."""
    def f(x):
        m = np.max(x, axis=1)[::-1]
        return np.sum(np.exp(x - m[:, None]) / np.sum(np.exp(x), axis=1, keepdims=True))
    from gradc.codegen import cudarows
    tried = []

    def spy(*args):
        tried.append(row_run(*args))
        return tried[-1]
    row_run = cudarows.row_run
    monkeypatch.setattr(cudarows, "row_run", spy)
    x = rng.standard_normal((130, 5))
    g = gradc.grad(f, target="cuda")
    assert "# rows: these" not in g.source(x)
    assert tried and not any(tried)             # (runs were found, and turned down)
    np.testing.assert_allclose(g(x), gradc.grad(f, target="numpy")(x), rtol=1e-12,
                               atol=1e-12)


def test_unsigned_subscripts_casts_every_index_of_an_arrays_subscript():
    """Each index of a subscript of a parameter array, a shared or local array or
    another name of one is cast to ``np.uint64`` (Numba drops its negative-index test);
    literals, slices, indices already cast, other subscripts (a tuple's) and comments
    are left as they are."""
    lines = ["s = cuda.shared.array(64, numba.float32)",
             "r = s",
             "t = (1, 2)",
             "# a[i] = b[i - 1]   (a comment)",
             "a[i, j + 1] = b[k - 1] + r[c[i]] + t[i] + a[0, j] + b[np.uint64(k)]",
             "s[(i1) * 36 + i2] += a[i:, j]"]
    got = cudagen.unsigned_subscripts(lines, ["a", "b", "c"])
    assert got[:4] == lines[:4]
    assert got[4] == ("a[np.uint64(i), np.uint64(j + 1)] = b[np.uint64(k - 1)] + "
                      "r[np.uint64(c[np.uint64(i)])] + t[i] + a[0, np.uint64(j)] + "
                      "b[np.uint64(k)]")
    assert got[5] == "s[np.uint64((i1) * 36 + i2)] += a[i:, np.uint64(j)]"


@pytest.mark.parametrize("shape,axis", [((0, 40), 1), ((40, 0), 0), ((0, 3, 40), (0, 2)),
                                        ((3, 0), 1)])
def test_a_sum_over_an_empty_kept_extent(shape, axis):
    """Review regression: a reduction keeping no elements (``np.sum`` of a (0, 40)
    array along axis 1) divided by zero while its kernel was sized; it is an empty
    result, as NumPy's, forward and reverse."""
    x = np.ones(shape)
    f = lambda a: np.sum(np.sin(a), axis=axis)      # noqa: E731
    got, want = gradc.jit(f, target="cuda")(x), gradc.jit(f, target="numpy")(x)
    assert np.asarray(got).shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), want)
    g = gradc.grad(lambda a: np.sum(f(a) ** 2), target="cuda")(x)
    assert np.asarray(g).shape == shape


@pytest.mark.parametrize("n", [5, 37, 3 * THREADS * 9])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_max_and_min_reductions_are_numpys_with_nans(n, dtype):
    """A maximum or minimum reduction's step is the elementwise ``max``'s conditional
    expression (``cudagen._combine``): NumPy's values, a NaN anywhere in a row winning,
    in thread-per-element, segmented and one-kernel-scan reductions alike."""
    x = rng.standard_normal((4, n)) * 10
    if dtype != np.int64:
        x[1, n // 2] = np.nan
        x[2, 0] = np.nan
        x[3, -1] = -np.inf
    x = x.astype(dtype)
    f = lambda x: (np.max(x, axis=1), np.min(x, axis=1), np.max(x[:, ::-1], axis=0))  # noqa: E731
    for got, want in zip(gradc.jit(f, target="cuda")(x), f(x)):
        np.testing.assert_array_equal(np.asarray(got), want)
    if dtype == np.int64 or n > 64:
        return
    h0 = np.zeros((4, 3), dtype)

    def g(h0, xs):                      # (a one-kernel scan's maximum stage)
        return gradc.scan(lambda h, x: (np.maximum(h, np.max(x, axis=1)[:, None]) + 0 * h,
                                        np.min(x, axis=1)), h0, xs)
    xs = np.stack([x, x[::-1]]).reshape(2, 4, n)
    src = gradc.jit(g, target="cuda").source(h0, xs)
    assert ONE_KERNEL in src and " != _a" in src
    for got, want in zip(gradc.jit(g, target="cuda")(h0, xs), gradc.jit(g, target="numpy")(h0, xs)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_kernel_floor_division_by_a_power_of_two_is_a_shift():
    """``cudagen.floordiv`` and ``mod`` write ``x // n`` and ``x % n`` as a shift and a
    mask where ``n`` is a power of two, with NumPy's values for every int64, negative
    ones included."""
    assert cudagen.floordiv("_k", 64) == "(_k >> 6)" and cudagen.mod("_k", 64) == "(_k & 63)"
    assert cudagen.floordiv("_k", 36) == "(_k // 36)" and cudagen.mod("_k", 1) == "0"
    # (an empty domain's loops, which never run: no shift by -1, review)
    assert ">>" not in cudagen.floordiv("_k", 0) and "&" not in cudagen.mod("_k", 0)
    x = np.concatenate([np.arange(-300, 300), [np.iinfo(np.int64).min,
                                               np.iinfo(np.int64).max]]).astype(np.int64)
    for n in range(1, 70):
        np.testing.assert_array_equal(eval(cudagen.floordiv("x", n)), x // n)
        np.testing.assert_array_equal(eval(cudagen.mod("x", n)) + 0 * x, x % n)


def test_signed_indices_come_back_for_ab_timings(monkeypatch):
    """``GRADC_CUDA_UNSIGNED=0``: the kernels' subscripts and index arithmetic as
    before (signed, floor division), the same values."""
    U, A = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 4))

    def kernels(g):
        src = g.source(U, A)
        return src[src.index("@cuda.jit"):src.rindex("\ndef ")]
    unsigned = kernels(gradc.grad(lambda U, A: crf_batched(U, A), argnums=(0, 1),
                                  target="cuda"))
    monkeypatch.setenv("GRADC_CUDA_UNSIGNED", "0")
    g = gradc.grad(lambda U, A: crf_batched(U, A), argnums=(0, 1), target="cuda")
    signed = kernels(g)
    # (map kernels cast the indices of their loads themselves, as before)
    assert unsigned.count("np.uint64(") > 3 * signed.count("np.uint64(")
    assert ">>" in unsigned and ">>" not in signed and "_r // 4)" in signed
    assert "_d.flat(" in unsigned and "_d.flat(" not in signed
    for a, b in zip(g(U, A), gradc.grad(crf_batched, argnums=(0, 1), target="numpy")(U, A)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_flat_subscripts_index_c_arrays_with_constant_strides():
    """A full subscript of a C-contiguous parameter of known shape reads its elements
    as one axis at an offset with constant strides (``_d.flat``, defined at the top of
    each function that reads it); fewer indices, slices, unknown shapes, a subscript
    inside another's index, and rank-1 arrays stay as they are; the simulator's
    ``flat`` checks the shape."""
    lines = ["s = cuda.shared.array(64, numba.float32)",
             "x = a[np.uint64(i), np.uint64(j)] + b[np.uint64(i)] + a[np.uint64(i)]",
             "def _at(_i, a):",
             "    # a[i, j]   (a comment)",
             "    return a[np.uint64(_i), np.uint64(k + 1)] + c[np.uint64(_i), 0, 0]",
             "y = a[b[np.uint64(a[np.uint64(i), np.uint64(j)])], np.uint64(j)]"]
    got = cudagen.flat_subscripts(lines, {"a": (5, 4), "c": (2, 3, 6)})
    assert got == [
        "a_f = _d.flat(a, (5, 4))",
        "s = cuda.shared.array(64, numba.float32)",
        "x = a_f[np.uint64((i) * 4 + (j))] + b[np.uint64(i)] + a[np.uint64(i)]",
        "def _at(_i, a):",
        "    # a[i, j]   (a comment)",
        "    a_f = _d.flat(a, (5, 4))",
        "    c_f = _d.flat(c, (2, 3, 6))",
        "    return a_f[np.uint64((_i) * 4 + (k + 1))] + c_f[np.uint64((_i) * 18 + (0) * 6 + "
        "(0))]",
        "y = a[b[np.uint64(a_f[np.uint64((i) * 4 + (j))])], np.uint64(j)]"]
    from gradc.codegen.cuda import _simulated_flat
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(_simulated_flat(x, (3, 4)), np.arange(12.0))
    for wrong in ((4, 3), (12,)):
        with pytest.raises(AssertionError, match="assumed an array of shape"):
            _simulated_flat(x, wrong)
    with pytest.raises(AssertionError, match="assumed an array of shape"):
        _simulated_flat(x[:, ::2], (3, 2))


def test_every_kernels_array_subscripts_are_unsigned():
    """No kernel of any program's gradient indexes an array with a signed index (each
    would cost Numba's negative-index test), but for literals."""
    import ast
    for name, (f, args) in PROGRAMS.items():
        wrt = tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
        compiled = gradc.grad(_summed(f), argnums=wrt, target="cuda").compile(*args)
        for k in compiled.lowered.kernels:
            arrays = {p for p, _, ndim in k.params if ndim}
            tree = ast.parse(k.source)
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                        ast.unparse(node.value.func) in ("cuda.shared.array",
                                                         "cuda.local.array"):
                    arrays.add(node.targets[0].id)
            for node in ast.walk(tree):
                if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                        and node.value.id in arrays:
                    idx = node.slice
                    for part in idx.elts if isinstance(idx, ast.Tuple) else [idx]:
                        assert isinstance(part, (ast.Constant, ast.Slice)) or \
                            ast.unparse(part).startswith("np.uint64("), \
                            (name, k.name, ast.unparse(node))


def _kernel_text(src, name):
    start = src.index(f"def {name}(")
    end = src.find("@cuda.jit", start)
    return src[start:end if end >= 0 else None]


def test_a_row_kernel_keeps_its_rows_in_shared_memory_and_sums_what_it_computes():
    """The CRF's forward scan as one kernel: the block's row of the carry lives in
    shared memory (read in before the first step and written back after the last),
    with the step's row of the scores (prefetched); ``exp`` of the scores
    is computed by the stage that sums it, which also writes it where reverse mode
    needs it (three stages a step: the maximum, the sum, the new carry, in one loop:
    the lane holding an element's sum computes its new carry, into the other half of
    the carry's double row).  The gradient is still the CPU's."""
    U, A = rng.standard_normal((6, 5, 4)), rng.standard_normal((4, 4))
    g = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
    src = g.source(U, A)
    forward = _uncast(_kernel_text(src, "_k0"))     # (xs[0] and xs[1:] are views)
    assert "for _s in range(4):" in forward
    # (the carry's double row; the maximum's row and the copy of the sum's, read from
    # registers now, are gone)
    assert re.findall(r"(\w+) = cuda\.shared\.array\((\d+), numba\.float64\)",
                      forward) == [("b_2", "8"), ("c_pf", "8")]
    # (what reverse mode reads, written from the registers: the sum, or 1 where the
    # maximum is -inf, a sum of no terms, whose derivative is 0, not 0/0; and the log
    # of that same value, -inf selected where there are no terms)
    assert re.search(r"\n +(\w+)_ = _a0_0_0\n +# .*\n +(\w+)_ = \(\1_ == \(-np\.inf\)\)\n +# .*"
                     r"\n +(\w+)_ = _a1_0_0\n +# .* = select \2 1\.0:f64 \3\n"
                     r" +(\w+)_ = \(1\.0 if \2_ else \3_\)\n +\4\[_t, i0, _pi1, _pi2\] = \4_\n",
                     forward)
    assert re.search(r"\n +(\w+)_ = \(1\.0 if (\w+)_ else \w+_\)\n(?:.*\n)*? +# .* = log \1\n"
                     r" +(\w+)_ = _d\.log\(\1_\)\n +# .* = select \2 -inf:f64 \3\n", forward)
    steps = forward[forward.index("for _s in range"):]
    # (the maximum, the sum and the new carry in one loop, each thread's maximum and
    # sum read from its registers: one barrier a step, + one after the write-back)
    assert steps.count("cuda.syncthreads()") == 1 + 1
    summed = steps[steps.index("_a1_0_0 = 0.0"):]
    summed = summed[:summed.index("cuda.syncthreads()")]
    assert re.search(r"\n +\w+_ = _a0_0_0\n", summed)
    assert "_d.exp(" in summed and "_a1_0_0 = _a1_0_0 + k_" in summed
    assert "k[_t, i0, i1, i2] = k_" in summed
    for a, b in zip(g(U, A), gradc.grad(crf_batched, argnums=(0, 1), target="numpy")(U, A)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, dtype", [((6, 5, 4), np.float64), ((6, 5, 4), np.float32),
                                          ((3, 4, 16), np.float64)])
def test_a_crf_state_reachable_only_at_the_start_has_a_gradient_on_the_gpu(shape, dtype):
    """A column of −inf transitions: the state's forward sums have no terms after the
    first step, and logsumexp's derivative there is 0 (``gradc.nn``), not 0/0.  The
    row kernels give the CPU's finite gradient: K = 4, the forward kernel writing the
    sum or 1 for the backward one; K = 16, the tape cut (``passes.remat``), the
    backward kernel computing it again from the sum and the maximum."""
    B, T, K = shape
    U = rng.standard_normal(shape).astype(dtype)
    A = rng.standard_normal((K, K)).astype(dtype)
    A[:, 1] = -np.inf
    g = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
    src = g.source(U, A)
    assert src.count(ROW_BLOCKS) == 2
    kind = "f64" if dtype == np.float64 else "f32"           # (the tape: cut or not)
    assert (f"{kind}[{T - 1},{B},{K},{K}]" in src) == (K == 4)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(g(U, A), gradc.grad(crf_batched, argnums=(0, 1), target="numpy")(U, A)):
        assert a.dtype == dtype and np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    dU, dA = g(U, A)
    assert np.all(dU[:, 1:, 1] == 0) and np.all(dA[:, 1] == 0)


def test_a_batch_sum_the_step_reads_is_one_block():
    """A per-step sum over the batch that the next step reads mixes the rows (only a
    sum that is only stacked becomes per-row partial sums): one block."""
    def f(h0, w):
        def step(h, x):
            total = np.sum(h ** 2)
            return np.tanh(h * w + x * total), total
        h, ys = gradc.scan(step, h0, STEPS)
        return np.sum(h) + np.sum(ys)
    args = (0.5 * rng.standard_normal((3, 4)), rng.standard_normal(4))
    j = gradc.jit(f, target="cuda")
    assert ONE_BLOCK in j.source(*args) and ROW_BLOCKS not in j.source(*args)
    np.testing.assert_allclose(j(*args), gradc.jit(f, target="numpy")(*args), rtol=1e-12)
    g = gradc.grad(f, argnums=(0, 1), target="cuda")
    for a, b in zip(g(*args), gradc.grad(f, argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_vmap_of_a_scan_is_one_kernel():
    def logz(u, A):                 # one sequence: u (T, K)
        def step(alpha, x):
            return gradc.logsumexp(alpha[:, None] + A, axis=0) + x, None
        alpha, _ = gradc.scan(step, u[0], u[1:])
        return gradc.logsumexp(alpha)
    U, A = PROGRAMS["crf-batched"][1]
    f = gradc.jit(gradc.vmap(gradc.grad(logz, argnums=(0, 1)), in_axes=(0, None)),
                  target="cuda")
    assert f.source(U, A).count(ONE_KERNEL) == 2
    want = gradc.jit(gradc.vmap(gradc.grad(logz, argnums=(0, 1)), in_axes=(0, None)))(U, A)
    for a, b in zip(f(U, A), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_argmax_and_cumsum_over_a_few_long_lines(dtype):
    """A block per line (chunks scanned, strides combined in shared memory) with NumPy's
    semantics: the first NaN, the first of equal maxima, prefix and suffix sums."""
    m = rng.standard_normal((3, 8 * THREADS))     # (the shortest such line)
    m[1, 50] = m[1, 100] = np.nan
    m[2, 10] = m[2, 120] = 9.0
    m[0, 30] = m[0, 31] = -9.0
    m = m.astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for f in (lambda m: np.argmax(m, axis=1), lambda m: np.argmin(m, axis=1),
              lambda m: np.argmax(m[0]),
              lambda m: np.cumsum(m, axis=1) + gradc.ops.cumsum(m, 1, reverse=True)):
        jitted = gradc.jit(f, target="cuda")
        got, want = jitted(m), gradc.jit(f, target="numpy")(m)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 100)
        assert "_tot" in jitted.source(m) or "_bk" in jitted.source(m)


def test_argmax_of_complex_numbers_stays_on_the_host():
    """(The kernel's comparison has no complex form on the GPU: review regression.)"""
    z = np.array([[1 + 2j, 3 - 1j], [3 + 0j, 0j]])
    f = gradc.jit(lambda z: np.argmax(z, axis=1), target="cuda")
    assert f.compile(z).on_host == ["argmax"]
    np.testing.assert_array_equal(f(z), np.argmax(z, axis=1))


def test_an_index_out_of_bounds_on_a_later_call_is_a_gradc_error_on_the_gpu():
    """The kernels of a gather, its gradient's scatter and an item assignment check the
    values of their index arrays: one out of bounds on a later call (the graph was traced
    with valid ones) flags the program's error cell and reads or writes nothing, and the
    host function raises gradc's error naming the line before it returns (under the
    simulator the kernel raised a bare IndexError; a GPU read or wrote out of bounds).
    Negative indices in bounds count from the end; a valid call after an error runs.
    (``test_errors``'s programs, and one with the gather in a loop.)"""
    from test_errors import assign, gather, picked
    x = np.arange(8.0)

    def looped(i, x):               # (in a loop body: the error surfaces after the loop)
        return gradc.fori_loop(0, 3, lambda k, c: c + x[i + k], np.zeros(2))
    for f, good, bad in ((gather, np.array([1, 2]), np.array([8, 1])),
                         (gather, np.array([1, 2]), np.array([0, -9])),
                         (assign, np.array([1, 2]), np.array([1000000, 1])),
                         (picked, np.array([1.0, 0, 0, 0]), np.array([0.0, 0, 0, 1])),
                         (looped, np.array([0, 5]), np.array([0, 6]))):
        fn = gradc.jit(f, target="cuda")
        want = gradc.jit(f, target="numpy")(good, x)
        np.testing.assert_array_equal(fn(good, x), want)
        assert "_checks.check()" in fn.source(good, x)
        with pytest.raises(gradc.EvaluationError, match="out of bounds for an axis of size 8"
                           r"(.|\n)*test_(errors|cuda).py:\d+: (return|y\[i\] = )"):
            fn(bad, x)
        np.testing.assert_array_equal(fn(good, x), want)
    g = gradc.grad(lambda x, i: np.sum(gather(i, x) ** 2), target="cuda")
    np.testing.assert_array_equal(g(x, np.array([1, 1])), [0, 16, 0, 0, 0, 0, 0, 0])
    with pytest.raises(gradc.EvaluationError, match="gather: an index is out of bounds"):
        g(x, np.array([1, 9]))          # (the first check failing: the forward gather's)
    np.testing.assert_array_equal(gradc.jit(gather, target="cuda")(np.array([-8, -1]), x),
                                  [0.0, 14.0])
    # (a program without index arrays reads no cell)
    assert "Checks" not in gradc.jit(_double_the_tail, target="cuda").source(x)


def _double_the_tail(x):
    return x[2:] * 2


def test_the_first_failed_check_is_reported_and_cleared():
    """(Review of the error cell.)  Of two failing checks the first is reported, as
    NumPy raises at the first: two gathers, and a gather and its gradient's scatter (the
    later check used to overwrite the earlier's number); a flagged check is read when
    another exception leaves the function too (a guard's, before a retrace), so the next
    valid call does not raise it; a ``while_loop`` reads it at every trip, where a
    condition on the element left unread looped for ever."""
    x = np.arange(8.0)
    two = gradc.jit(_two_gathers, target="cuda")
    two(np.array([3, 4]), x)
    with pytest.raises(gradc.EvaluationError, match=r"test_cuda.py:\d+: a = x\[i\] \* 2"):
        two(np.array([10, 11]), x)
    rev = gradc.jit(_jacobian_of_a_gather, target="cuda")
    rev(x, np.array([1, 2]))
    with pytest.raises(gradc.EvaluationError, match="gradc: gather: "):
        rev(x, np.array([1, 8]))
    guarded = gradc.jit(_guarded_gather, target="cuda")
    np.testing.assert_array_equal(guarded(np.array([1, 2]), x), [2.0, 4.0])
    with pytest.raises(gradc.EvaluationError, match="gather: an index is out of bounds"):
        guarded(np.array([9, 2]), -x)
    np.testing.assert_array_equal(guarded(np.array([1, 2]), x), [2.0, 4.0])
    w = np.zeros(8)
    w[7] = 1000.0
    for work, check in (("0", "_checks.passed("), ("", "_go = e[0] and _chk[0] == 0")):
        # (a host loop reads the cell with the condition; one block leaves its loop
        # when the cell is flagged)
        os.environ["GRADC_CUDA_ONE_ROW_WORK"] = work
        try:
            walk = gradc.jit(_walk, target="cuda")
            np.testing.assert_array_equal(walk(np.array([3]), w), [7])
            assert check in walk.source(np.array([3]), w)
            with pytest.raises(gradc.EvaluationError,
                               match="gather: an index is out of bounds"):
                walk(np.array([3]), np.zeros(8))
        finally:
            os.environ.pop("GRADC_CUDA_ONE_ROW_WORK")


def test_each_thread_has_its_own_error_cell():
    """A check flagged in one thread's cell is not another thread's error: each thread
    calling a program has a cell of its own (``cuda.Checks``), and, on a GPU, calls
    from two threads at once, one failing, each get their own result."""
    import threading
    from gradc.codegen import cuda as dcuda
    x = np.arange(8.0)
    fn = gradc.jit(_two_gathers, target="cuda")
    fn(np.array([3, 4]), x)
    checks = dcuda.Checks(["gradc: the first check failed"])
    flagged = threading.Thread(target=lambda: checks.cell.copy_to_device(
        np.ones(1, np.int32)))
    flagged.start()
    flagged.join()
    checks.check()                  # (this thread's cell: none, or zero)
    assert int(checks.cell.copy_to_host()[0]) == 0
    if dcuda.simulator():           # (which runs one kernel at a time)
        return
    outcome = {}

    def calls(name, i):
        try:
            outcome[name] = [fn(i, x) for _ in range(3)]
        except gradc.EvaluationError as e:
            outcome[name] = e
    threads = [threading.Thread(target=calls, args=("bad", np.array([10, 11]))),
               threading.Thread(target=calls, args=("good", np.array([3, 4])))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcome["bad"], gradc.EvaluationError)
    for got in outcome["good"]:
        np.testing.assert_array_equal(got, _two_gathers(np.array([3, 4]), x))


def _two_gathers(i, x):
    a = x[i] * 2
    b = x[i - 3] * 3
    return a + b


def _jacobian_of_a_gather(x, i):
    return gradc.jacrev(lambda x: x[i] * x[i])(x)


def _guarded_gather(i, x):
    y = x[i] * 2
    if np.sum(x) > 0:
        return y
    return -y


def _walk(k, x):
    return gradc.while_loop(lambda c: np.sum(x[c]) < 100.0, lambda c: c + 1, k)


def test_a_singular_matrix_is_a_gradc_error_on_the_gpu():
    """The solve kernel flags a zero pivot (LAPACK's ``info > 0``, where NumPy raises
    ``LinAlgError``): the second derivatives of ``det`` at a singular matrix, which go
    through a solve, and a stack of systems with one singular raise gradc's error naming
    the line (the CPU target's, and the interpreter's own), where the kernel gave NaNs;
    a valid call after it runs.  The gradient of ``det`` there is the cofactor matrix."""
    B = np.array([[1.0, 2.0], [3.0, 4.0]])
    S = np.array([[1.0, 2.0], [2.0, 4.0]])
    g = gradc.grad(_det_of, target="cuda")
    np.testing.assert_allclose(g(B), [[4.0, -3.0], [-2.0, 1.0]], rtol=1e-12)
    np.testing.assert_allclose(g(S), [[4.0, -2.0], [-2.0, 1.0]], rtol=1e-12)
    h = gradc.hessian(_det_of, target="cuda")
    h(B)
    with pytest.raises(gradc.EvaluationError, match=r"solve.*(singular|Singular)"
                       r"(.|\n)*test_cuda.py:\d+: return np.linalg.det"):
        h(S)
    np.testing.assert_allclose(h(B)[0, 0], [[0.0, 0.0], [0.0, 1.0]], atol=1e-12)
    solve = gradc.jit(_solve_of, target="cuda")
    b = np.ones((3, 2))
    assert "compare_and_swap(_chk, 0, 1)" in solve.source(np.stack([B, B, B]), b)
    np.testing.assert_allclose(solve(np.stack([B, 2 * B, B]), b),
                               np.linalg.solve(np.stack([B, 2 * B, B]), b[..., None])[..., 0])
    with pytest.raises(gradc.EvaluationError, match=r"singular(.|\n)*return np.linalg.solve"):
        solve(np.stack([B, S, B]), b)


def _det_of(a):
    return np.linalg.det(a)


def _solve_of(a, b):
    return np.linalg.solve(a, b[..., None])[..., 0]


def viterbi_scan(A, U, Ui, reverse=False):
    def step(delta, x):
        u, ui = x
        s = delta[:, :, None] + A[None]
        si = ui[:, :, None] + ui[:, None, :]
        return np.max(s, axis=1) + u, (np.argmax(s, axis=1), np.argmin(s, axis=2),
                                       np.argmax(si, axis=2), np.argmax(s[:, :1, :], axis=1))
    return gradc.scan(step, np.zeros(U.shape[1:]), (U, Ui), reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_steps_argmax_is_two_reductions_in_the_one_kernel_scan(reverse):
    """Viterbi's step: a maximum and its argmax over the previous state. The step's
    ``argmax``/``argmin`` become a maximum (minimum) and the smallest index that holds
    it, or a NaN (``passes.argreduce``): the scan is one kernel, where it ran as a host
    loop, and the indices are NumPy's, ties (the first) and NaNs (the first NaN)
    included; integer scores and an axis of length 1 too."""
    B, K, T = 3, 5, 4
    r = np.random.default_rng(5)
    A = np.round(r.standard_normal((K, K)), 1)      # (rounded: ties)
    U = np.round(r.standard_normal((T, B, K)), 1)
    U[1, 0, 2] = np.nan
    Ui = r.integers(-2, 3, (T, B, K))

    def viterbi(A, U, Ui):
        return viterbi_scan(A, U, Ui, reverse)
    jitted = gradc.jit(viterbi, target="cuda")
    src = jitted.source(A, U, Ui)
    assert src.count(ONE_KERNEL) == 1 and "argmax" not in src.split('"""')[2]
    got, want = jitted(A, U, Ui), gradc.jit(viterbi, target="numpy")(A, U, Ui)
    for a, b in zip(gradc.pytree.flatten(got)[0], gradc.pytree.flatten(want)[0]):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(want[0][0]).all()       # (the NaN reached the indices)


@pytest.mark.parametrize("spec", ["i,j->ij", "j,i->ij", "zi,zj->zij", "ij,k->kji",
                                  "ab,b->ab", "ba,c->acb"])
def test_an_outer_product_as_a_broadcast_product(spec):
    """``passes.steps.outer_product``: an einsum that sums no index as its operands'
    axes in the result's order, broadcast, and multiplied: NumPy's einsum."""
    from gradc.passes.steps import outer_product
    a_terms, out = spec.split("->")
    sizes = {"i": 3, "j": 4, "z": 1, "k": 2, "a": 3, "b": 5, "c": 2}
    a, b = (rng.standard_normal([sizes[c] for c in t]) for t in a_terms.split(","))
    got = gradc.jit(lambda a, b: outer_product(a, b, spec), target="numpy")(a, b)
    np.testing.assert_allclose(got, np.einsum(spec, a, b), rtol=1e-15)


def _step_kernels(compiled):
    """The sources of a program's one-kernel scans, in the order they run."""
    return [k.source for k in compiled.lowered.kernels if "for _s in range(" in k.source]


@pytest.mark.parametrize("double", ["1", "0"])
def test_a_new_carry_also_stacked_is_written_by_its_stage_alone(double, monkeypatch):
    """``return h, h``: the stage computing the new carry writes it into its stacked
    row and into the other half of the carry's double row in shared memory, so no
    stage copies the stacked row into the carry after a barrier: one barrier a step
    (two with ``GRADC_CUDA_ROW_DOUBLE=0``).  Values and gradients as the
    interpreter's."""
    monkeypatch.setenv("GRADC_CUDA_ROW_DOUBLE", double)

    def f(h0, W, xs):
        def step(h, x):
            n = np.tanh(h @ W + x)
            return n, n
        h, ys = gradc.scan(step, h0, xs)
        return np.sum(ys ** 2) + np.sum(h)
    args = (rng.standard_normal((3, 4)), 0.5 * rng.standard_normal((4, 4)),
            rng.standard_normal((5, 3, 4)))
    j = gradc.jit(f, target="cuda")
    (step,) = _step_kernels(j.compile(*args))
    step = step[step.index("for _s in range("):]
    assert step.count("\n            cuda.syncthreads()") == (1 if double == "1" else 2), step
    np.testing.assert_allclose(j(*args), gradc.jit(f, target="numpy")(*args), rtol=1e-12)
    g = gradc.grad(f, argnums=(0, 1, 2), target="cuda")
    for a, b in zip(g(*args), gradc.grad(f, argnums=(0, 1, 2), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _flagged(W, b):
    """A while_loop whose condition is a carried flag (``while going``)."""
    def body(c):
        h, going, k = c
        h = np.tanh(W @ h + b)
        return h, (np.max(np.abs(h)) < 0.9) & (k < 20), k + 1
    h, _, k = gradc.while_loop(lambda c: c[1], body, (0.1 * b, np.bool_(True), 0))
    return h, k


def _rolled(W, b):
    """A while_loop whose body rotates its carry and takes an argmax (``passes.steps``
    rewrites both in while_loops' bodies as in scans')."""
    def body(c):
        h, k, best = c
        h = np.tanh(np.roll(h, 1) * 0.9 + 0.1 * (W @ h))
        return h, k + 1, np.argmax(h)
    return gradc.while_loop(lambda c: c[1] < 7, body, (b, 0, np.int64(0)))


@pytest.mark.parametrize("env", [{}, {"GRADC_CUDA_ROW_SHARED": "0"},
                                 {"GRADC_CUDA_ROW_DOUBLE": "0"}])
def test_a_while_loop_is_one_block(env, monkeypatch):
    """A fixed point's iterations (``fixed_point``: its previous iterate a carry too,
    which the body hands over as a copy stage at the end of the trip) as one kernel
    of one block: the condition's stages, the loop left when it is false, the body's.
    No trip (a condition false at once), ``vmap`` (the rows' carries, the condition
    a reduction over them), ``jvp``, a carried flag as the condition, and a body with
    ``np.roll`` and ``argmax`` too; with rows
    in shared memory, in global memory, and without double rows.  Values as the
    interpreter's."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    W, b = 0.3 * rng.standard_normal((5, 5)), rng.standard_normal(5)
    cases = [(fixed_point, (W, b)), (lambda W, b: fixed_point(W, b, tol=1e9), (W, b)),
             (gradc.vmap(fixed_point, in_axes=(None, 0)),
              (W, rng.standard_normal((3, 5)))),
             (lambda W, b: gradc.jvp(lambda b: fixed_point(W, b), (b,), (np.ones(5),)),
              (W, b)), (_flagged, (W, b)), (_rolled, (W, b))]
    for f, args in cases:
        j = gradc.jit(f, target="cuda")
        assert j.source(*args).count(ONE_BLOCK_WHILE) == 1
        for a, b_ in zip(gradc.pytree.flatten(j(*args))[0],
                         gradc.pytree.flatten(gradc.jit(f, target="numpy")(*args))[0]):
            np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)


def _newton_to(a, lim):
    x, _ = gradc.while_loop(lambda s: s[1] < lim, lambda s: (0.5 * (s[0] + a / s[0]), s[1] + 1),
                            (np.ones_like(a), 0))
    return np.sum(x)


def _counted_carries(a, c):
    """A while_loop with a rank-0 const, an integer array carry and a count that
    depends on the values."""
    def body(s):
        x, m, k = s
        return x * c + np.sin(a * x), m + 1, k + 1
    x, m, k = gradc.while_loop(lambda s: s[2] < 3 + (np.sum(s[0]) > 100), body,
                               (a, np.zeros(3, np.int64), 0))
    return np.sum(x * x) + np.sum(m)


@pytest.mark.parametrize("env", [{}, {"GRADC_CUDA_ROW_SHARED": "0"},
                                 {"GRADC_CUDA_ROW_DOUBLE": "0"}])
def test_reverse_mode_through_a_while_loop_is_two_kernels(env, monkeypatch):
    """``while_adjoint`` (``grad`` of a while_loop) as two kernels of one block: the
    trips again, each one's carries stacked on an ``(n, 1, ...)`` tape, then the body's
    VJP backwards along it, the consts' cotangents accumulated.  The count ``n`` is an
    argument of both kernels: one compiled function for a fixed point of few trips, of
    many, for a loop of no trip, one trip, and for a count that depends on the values.
    Only the carries the VJP reads are stacked.  Values as the interpreter's."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    W, b = 0.3 * rng.standard_normal((5, 5)), rng.standard_normal(5)
    g = gradc.grad(lambda W, b: np.sum(fixed_point(W, b) ** 2), argnums=(0, 1),
                   target="cuda")
    want = gradc.grad(lambda W, b: np.sum(fixed_point(W, b) ** 2), argnums=(0, 1),
                      target="numpy")
    src = g.source(W, b)
    assert src.count(ONE_BLOCK_TAPE) == src.count(ONE_BLOCK_SWEEP) == 1
    assert "_n" in src and src.count("for _s in range(_n):") == 2
    # (the tape: the iterate z alone; not its previous value nor the counter)
    assert len(re.findall(r"_d\.empty\(\(\w+_host, 1, 5,\), np\.float64\)", src)) == 1
    compiled = g.compile(W, b)
    counts = set()
    for scale in (1.0, 0.05, 2.0):           # (few trips, many, the limit of 200)
        args = (scale * W, b)
        assert g.compile(*args) is compiled
        counts.add(int(gradc.jit(_fixed_point_count, target="numpy")(*args)))
        for x, y in zip(g(*args), want(*args)):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-11)
    assert len(counts) == 3, counts
    a = rng.uniform(1, 3, 5)
    g = gradc.grad(_newton_to, target="cuda")
    for lim in (0, 1, 4, 9):                 # (no trip: zeros and the cotangent itself)
        np.testing.assert_allclose(g(a, lim), gradc.grad(_newton_to, target="numpy")(a, lim),
                                   rtol=1e-12, atol=1e-12)
    g = gradc.grad(_counted_carries, argnums=(0, 1), target="cuda")
    assert ONE_BLOCK_SWEEP in g.source(rng.standard_normal(3), 0.7)
    for a, c in ((rng.standard_normal(3), 0.7), (10 * rng.standard_normal(3) + 50, 0.9)):
        for x, y in zip(g(a, c), gradc.grad(_counted_carries, argnums=(0, 1),
                                            target="numpy")(a, c)):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-11)


def _carried_limit(a, n):
    """A trip limit carried (read by the condition alone: the tape's loop reads it
    nowhere)."""
    x, _, _ = gradc.while_loop(lambda c: c[2] < c[1],
                               lambda c: (np.tanh(c[0] * a + 0.1), c[1], c[2] + 1), (a, n, 0))
    return np.sum(x ** 2)


def _carried_tolerance(a, t):
    x, _, _ = gradc.while_loop(
        lambda c: (np.max(np.abs(c[0] * c[0] - a)) > c[1]) & (c[2] < 50),
        lambda c: (0.5 * (c[0] + a / c[0]), c[1], c[2] + 1), (np.ones_like(a), t, 0))
    return np.sum(x)


def _residual_carry(a, n):
    """A rank-0 residual the body overwrites (its cotangent before the trip: zeros, a
    constant carry of the backward sweep) and the condition reads."""
    def body(c):
        x, e, k = c
        new = np.tanh(x * a)
        return new, np.sum((new - x) ** 2), k + 1
    return np.sum(gradc.while_loop(lambda c: (c[2] < n) & (c[1] > 1e-20), body,
                                   (a, 1.0, 0))[0])


def _step_size(a, lr):
    """A carry handed back unchanged that the body reads (the sweep reads it as a
    const), and one whose first value is a literal."""
    def body(c):
        x, s, m, k = c
        return x - s * m * (x - a) ** 3, s, m, k + 1
    return np.sum(gradc.while_loop(lambda c: c[3] < 6, body,
                                   (np.zeros_like(a), lr, 0.5, 0))[0] ** 2)


def _rolled_outer(a, u, n):
    """``np.roll`` and an outer product of consts in the body (``passes.steps``
    rewrites while_adjoint's graphs too)."""
    def body(c):
        X, k = c
        return np.tanh(np.roll(X, 1, axis=1) * 0.5 + np.outer(a, u) * 0.1), k + 1
    return np.sum(gradc.while_loop(lambda c: c[1] < n, body,
                                   (np.zeros((3, 2)), 0))[0] ** 2)


def test_reverse_mode_through_while_loops_of_every_kind_of_carry():
    """(Review.)  Two kernels, and the interpreter's values, for a carried trip limit or
    tolerance that only the condition reads (the tape's kernel read it nowhere, and
    the host code bound its final value to a name it never defined: a NameError), a
    residual the body overwrites, a carry handed back unchanged that the body reads,
    ``np.roll`` and outer products in the body."""
    a = np.array([0.5, -0.25, 0.75])
    cases = [(_carried_limit, (a, np.array(4)), (0,)),
             (_carried_tolerance, (np.array([1.5, 2.0, 2.5]), 1e-6), (0,)),
             (_residual_carry, (a, np.array(5)), (0,)),
             (_residual_carry, (a, np.array(0)), (0,)),
             (_step_size, (a, 0.3), (0, 1)),
             (_rolled_outer, (a, np.array([0.2, -0.4]), np.array(3)), (0, 1))]
    for f, args, wrt in cases:
        g = gradc.grad(f, argnums=wrt, target="cuda")
        src = g.source(*args)
        assert src.count(ONE_BLOCK_TAPE) == src.count(ONE_BLOCK_SWEEP) == 1, f.__name__
        for x, y in zip(g(*args), gradc.grad(f, argnums=wrt, target="numpy")(*args)):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    f = lambda a, lim: np.sum(gradc.while_loop(         # noqa: E731
        lambda c: c[2] < 5, lambda c: (np.tanh(c[0] * a), c[1], c[2] + 1), (a, lim, 0))[1])
    for make in (gradc.jit, gradc.grad):  # (a carry nothing reads, forward: the same)
        np.testing.assert_allclose(make(f, target="cuda")(a, np.ones(3)),
                                   make(f, target="numpy")(a, np.ones(3)), rtol=1e-12)


def test_a_stacked_operand_handed_back_as_a_stacked_result():
    """(Review.)  A one-block scan that hands one of its stacked operands back as a
    stacked result and reads it nowhere else (a second derivative of an RNN over one
    sequence makes one): the kernel has no parameter for it, and the host line that
    made its row view was dropped with the parameter while the result still named it
    (a NameError).  One sequence and a batch, and the second derivative; values as the
    interpreter's."""
    r = np.random.default_rng(5)
    W = 0.5 * r.standard_normal((4, 4))

    def one(v0, xs, zs):
        return gradc.scan(lambda h, x: (np.tanh(W @ h + x[0]), x[1]), v0, (xs, zs))

    def rows(h0, xs, zs):
        return gradc.scan(lambda h, x: (np.tanh(h @ W + x[0]), x[1]), h0, (xs, zs))

    def rnn(W, v0, xs):
        return np.sum(gradc.scan(lambda h, x: (np.tanh(W @ h + x), None), v0, xs)[0] ** 2)

    V = r.standard_normal((4, 4))
    second = lambda W, v0, xs: np.sum(gradc.grad(rnn)(W, v0, xs) * V)    # noqa: E731
    for f, args in ((one, (r.standard_normal(4), r.standard_normal((5, 4)),
                           r.standard_normal((5, 4)))),
                    (rows, (r.standard_normal((3, 4)), r.standard_normal((5, 3, 4)),
                            r.standard_normal((5, 3, 4)))),
                    (gradc.grad(second), (W, r.standard_normal(4),
                                          r.standard_normal((5, 4))))):
        j = gradc.jit(f, target="cuda")
        assert "# the scan as one kernel" in j.source(*args)
        for x, y in zip(gradc.pytree.flatten(j(*args))[0],
                        gradc.pytree.flatten(gradc.jit(f, target="numpy")(*args))[0]):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def _fixed_point_count(W, b, tol=1e-10):
    def body(c):
        z, zp, k = c
        return np.tanh(W @ z + b), z, k + 1
    return gradc.while_loop(lambda c: (np.max(np.abs(c[0] - c[1])) > tol) & (c[2] < 200),
                            body, (np.zeros(b.shape), np.ones(b.shape), 0))[2]


def test_reverse_mode_through_a_while_loop_where_not_one_block(monkeypatch):
    """The host loop where the one-block kernels do not apply: a checkpointed loop (the
    tape would hold every trip), a step larger than ``GRADC_CUDA_ONE_ROW_WORK``.  Else
    two kernels, also for float32 weights and float64 carries (the weights' conversion
    runs before the loops: ``licm.hoist_invariants``).  Values as the interpreter's
    either way."""
    a, W = rng.uniform(1, 3, 3), rng.standard_normal((3, 3))
    g = gradc.grad(newton_checkpointed, argnums=(0, 1), target="cuda")
    # (the primal loop, which counts the trips, is one kernel all the same)
    assert ONE_BLOCK_TAPE not in g.source(a, W) and ONE_BLOCK_WHILE in g.source(a, W)
    for x, y in zip(g(a, W), gradc.grad(newton_checkpointed, argnums=(0, 1),
                                        target="numpy")(a, W)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    W, b = 0.3 * rng.standard_normal((5, 5)), rng.standard_normal(5)
    f = lambda W, b: np.sum(fixed_point(W, b, tol=1e-5))        # noqa: E731
    for limit, one in (("0", False), ("", True)):
        monkeypatch.setenv("GRADC_CUDA_ONE_ROW_WORK", limit)
        for dt, tol in ((np.float64, 1e-11), (np.float32, 1e-5)):
            args = (W.astype(dt), b.astype(dt))
            g = gradc.grad(f, argnums=(0, 1), target="cuda")
            assert (ONE_BLOCK_SWEEP in g.source(*args)) == one
            for x, y in zip(g(*args), gradc.grad(f, argnums=(0, 1), target="numpy")(*args)):
                assert x.dtype == dt
                np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


ONE_RUN = "equations as one kernel of one block"


def test_a_run_of_small_equations_is_one_kernel_of_one_block(monkeypatch):
    """A logsumexp's gradient over one vector (its maximum, its sum of exponentials,
    1 / the sum, the scaled exponentials: four kernels one by one) as one kernel of
    one block (``cudarows.one_run``), in float64 and float32; not where a value has
    more elements than ``GRADC_CUDA_ONE_RUN_WORK`` (or it is 0).  Values as the
    interpreter's."""
    _one_runs(monkeypatch)

    def f(x, s):
        return gradc.logsumexp(x * s) + np.max(x) * s
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x = rng.standard_normal(40).astype(dt)
        g = gradc.grad(f, argnums=(0, 1), target="cuda")
        assert ONE_RUN in g.source(x, 1.5)
        assert len(g.compile(x, 1.5).kernels) == 1
        for a, b in zip(g(x, 1.5), gradc.grad(f, argnums=(0, 1), target="numpy")(x, 1.5)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for limit in ("39", "0"):
        monkeypatch.setenv("GRADC_CUDA_ONE_RUN_WORK", limit)
        g = gradc.grad(f, argnums=(0, 1), target="cuda")
        assert ONE_RUN not in g.source(x, 1.5) and len(g.compile(x, 1.5).kernels) >= 3
        for a, b in zip(g(x, 1.5), gradc.grad(f, argnums=(0, 1), target="numpy")(x, 1.5)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_an_empty_result_of_a_run_returned_twice(monkeypatch):
    """(Review.)  A run's empty result returned twice: the second is a copy of the
    first, of nothing (the simulator refused the copy of an empty view)."""
    _one_runs(monkeypatch)

    def f(x):
        y = np.exp(x - np.sum(x, axis=1, keepdims=True))
        return y, y
    j = gradc.jit(f, target="cuda")
    assert ONE_RUN in j.source(np.zeros((0, 3)))
    assert [np.asarray(r).shape for r in j(np.zeros((0, 3)))] == [(0, 3), (0, 3)]


@pytest.mark.parametrize("shape", [(0, 3), (0, 40)])
def test_a_mean_over_an_empty_axis_is_nan(shape, monkeypatch):
    """(CUDA QA.)  ``np.mean`` and ``np.var`` over an axis of length 0 are NaN, as
    NumPy's, and ``1 / np.sum`` of no elements is inf: in a one-block run the sum's
    accumulator never leaves its start, the literal ``0.0``, which the simulator divided
    as a Python float (ZeroDivisionError; see
    ``test_float_literals_compute_as_the_gpus_doubles``)."""
    _one_runs(monkeypatch)
    x = np.zeros(shape)
    f = lambda a: (np.mean(a, axis=0), np.var(a, axis=0), 1.0 / np.sum(a, axis=0),  # noqa
                   np.prod(a, axis=0) ** -1.0)
    with np.errstate(all="ignore"):
        want = gradc.jit(f, target="numpy")(x)
        got = gradc.jit(f, target="cuda")(x)
    assert ONE_RUN in gradc.jit(f, target="cuda").source(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)
    assert np.all(np.isnan(want[0])) and np.all(np.isinf(want[2]))


def _arg_extremes(x):
    return np.argmax(x, axis=1), np.argmin(x * 2.0, axis=0), np.argmax(x), np.max(x)


def test_a_small_argmax_outside_loops_joins_the_run(monkeypatch):
    """An ``argmax``/``argmin`` of a small operand outside loops is its two reductions
    (``passes.steps``), which join the run around it: one kernel of one block.  Ties
    (the first index), NaNs (the first NaN) and signed zeros as NumPy's; with the runs
    off it keeps its own kernel."""
    x = np.array([[0.5, 2.0, 2.0, -1.0], [np.nan, 1.0, np.nan, 3.0],
                  [-0.0, 0.0, -1.0, -1.0]])
    for work, fused in ((ONE_RUN_WORK, True), (0, False)):
        _one_runs(monkeypatch, work)
        j = gradc.jit(_arg_extremes, target="cuda")
        host = j.source(x)
        host = host[host.rindex("\ndef "):]
        assert ("argm" not in host) == fused and (ONE_RUN in host) == fused, host
        for a, b in zip(j(x), _arg_extremes(x)):
            np.testing.assert_array_equal(a, b)


def _gathered_step(P, xs):
    """A scan whose step gathers a row by its integer carry (a host loop): a softmax of
    it, a sum of squares stacked."""
    def step(c, x):
        h, i = c
        z = P[i] * h + x
        z = np.exp(z - np.max(z))
        return (z / np.sum(z), (i + 1) % 3), np.sum(z * z)
    (h, i), ys = gradc.scan(step, (np.ones(P.shape[1]), 0), xs)
    return np.sum(h) + np.sum(ys)


def test_a_host_loops_step_runs_its_small_equations_as_one_block(monkeypatch):
    """A scan lowered as a host loop (one-block loops turned off) launches, at each
    step, the gather and one kernel of one block for the softmax's reductions and
    normalisation (two launches a step, not four); its gradient's steps too.  Values
    and gradients as the interpreter's."""
    _one_runs(monkeypatch)
    monkeypatch.setenv("GRADC_CUDA_ONE_ROW_WORK", "0")
    P, xs = rng.standard_normal((3, 6)), rng.standard_normal((4, 6))
    j = gradc.jit(_gathered_step, target="cuda")
    src = j.source(P, xs)
    step = src[src.index("def _b0("):src.index("\n\n\n", src.index("def _b0("))]
    assert ONE_RUN in step and len(re.findall(r"\n +_k\d+\[", step)) == 2, step
    np.testing.assert_allclose(j(P, xs), gradc.jit(_gathered_step, target="numpy")(P, xs),
                               rtol=1e-12)
    g = gradc.grad(_gathered_step, argnums=(0, 1), target="cuda")
    assert ONE_RUN in g.source(P, xs)
    for a, b in zip(g(P, xs), gradc.grad(_gathered_step, argnums=(0, 1),
                                         target="numpy")(P, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _run_mix(x, k, s):
    """Integers, booleans, a host scalar and results returned from a run."""
    m = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - m) * s
    big = np.sum(e > 0.5, axis=1)
    return e / np.sum(e, axis=1, keepdims=True), big * k, np.argmax(x, axis=0), m


def test_one_block_runs_of_integers_booleans_and_host_scalars(monkeypatch):
    """A run with integer and boolean values, an argmax, a rank-0 operand on the host
    (a kernel argument of the row of one) and several of its values returned: as the
    interpreter's, exactly for the integers."""
    _one_runs(monkeypatch)
    x, k = rng.standard_normal((5, 7)), np.int64(3)
    j = gradc.jit(_run_mix, target="cuda")
    assert ONE_RUN in j.source(x, k, 0.7)
    for a, b in zip(j(x, k, 0.7), gradc.jit(_run_mix, target="numpy")(x, k, 0.7)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def backtrack(bp, last):
    """Viterbi's backtracking: each step's state the backpointer of the next one's."""
    def step(y, b):
        y = b[y]
        return y, y
    return gradc.scan(step, last, bp, reverse=True)[1]


def viterbi_decode(A, U):
    def step(delta, u):
        s = delta[:, None] + A
        return np.max(s, axis=0) + u, np.argmax(s, axis=0)
    delta, bp = gradc.scan(step, U[0], U[1:])
    return backtrack(bp, np.argmax(delta)), np.max(delta)


def test_a_steps_gather_by_its_carry_is_one_block():
    """A step that gathers by its carry (Viterbi's backtracking: a backpointer followed
    from step to step; a row of a matrix picked by an integer carry) was a host loop, a
    launch and a copy of the index to the host at each step.  The gather is a stage of
    the one-kernel scan now (the vmap pass batches it: an ``arange`` over the rows the
    first index), over one sequence (one block) and over a batch (a block per row);
    negative indices wrap as NumPy's, and one out of bounds is the gather's error."""
    r = np.random.default_rng(11)
    T, K, B = 6, 5, 3
    A, U = r.standard_normal((K, K)), r.standard_normal((T, K))
    bp = r.integers(-K, K, (T, K))
    cases = [(backtrack, (bp, np.int64(2)), ONE_BLOCK, 1),
             (viterbi_decode, (A, U), ONE_BLOCK, 4),
             (gradc.vmap(viterbi_decode, in_axes=(None, 0)),
              (A, r.standard_normal((B, T, K))), ROW_BLOCKS, None),
             (gradc.vmap(backtrack), (r.integers(-K, K, (B, T, K)), r.integers(0, K, B)),
              ROW_BLOCKS, None),
             (_gathered_step, (r.standard_normal((3, 6)), r.standard_normal((4, 6))),
              ONE_BLOCK, None)]
    for f, args, lowering, kernels in cases:
        j = gradc.jit(f, target="cuda")
        src = j.source(*args)
        assert lowering in src and "scan body" not in src, src
        if kernels is not None:
            assert len(j.compile(*args).kernels) == kernels
        for a, b in zip(gradc.pytree.flatten(j(*args))[0],
                        gradc.pytree.flatten(gradc.jit(f, target="numpy")(*args))[0]):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-12)
    j = gradc.jit(backtrack, target="cuda")
    np.testing.assert_array_equal(j(bp, np.int64(2)), backtrack(bp, np.int64(2)))
    bad = np.full((T, K), 7)
    bad[-1] = 1
    with pytest.raises(gradc.EvaluationError, match="gather: an index is out of bounds "
                       r"for an axis of size 5(.|\n)*test_cuda.py:\d+: y = b\[y\]"):
        j(bad, np.int64(2))
    np.testing.assert_array_equal(j(bp, np.int64(2)), backtrack(bp, np.int64(2)))


def _embedded_rnn(E, W, toks):
    """An RNN over one sequence of tokens, each step's input a row of ``E``."""
    def step(h, t):
        h = np.tanh(E[t] + W @ h)
        return h, np.sum(h * h)
    h, ys = gradc.scan(step, np.zeros(W.shape[0]), toks)
    return np.sum(ys) + np.sum(h)


def _windowed(E, toks):
    """A step gathering a window of a matrix by its token: ``E[t, :, 1:]``."""
    def step(h, t):
        return np.tanh(h[:2] @ E[t, :, 1:] + h), None
    return np.sum(gradc.scan(step, np.ones(3), toks)[0] ** 2)


def _diagonal_step(E3, W, toks):
    """(Review.)  Two aranges on one window axis: a diagonal gathered per step."""
    def step(h, t):
        return np.tanh(E3[t][np.arange(3), np.arange(3)] + W @ h), None
    return np.sum(gradc.scan(step, np.zeros(3), toks)[0] ** 2)


def _short_arange_step(E, W, toks):
    """(Review.)  An arange shorter than the axis it indexes (3 of E's 5 rows)."""
    def step(h, t):
        h = np.tanh(E[np.arange(3), t] * E[np.arange(3), (t + 1) % 6] + W @ h)
        return h, np.sum(h * h)
    h, ys = gradc.scan(step, np.zeros(3), toks)
    return np.sum(ys) + np.sum(h)


def test_a_gathers_gradient_in_a_step_is_a_stage_too(monkeypatch):
    """Reverse mode makes a step's gather a ``scatter_add`` of one row (or window) per
    step into the gradient: a map stage over the gradient's row (``_one_hot``), each
    element the value where the index points at it, else 0 (the index checked as the
    gather's).  The gradient of an embedding RNN over one sequence (negative tokens
    too), of a row picked by the carry, and of a window (``E[t, :, 1:]``) have both
    scans one block (and at most one kernel between them); values as the
    interpreter's, and a token out of
    bounds on a later call is the gather's error."""
    _one_runs(monkeypatch)
    r = np.random.default_rng(13)
    E, W = r.standard_normal((7, 5)), 0.3 * r.standard_normal((5, 5))
    cases = [(_embedded_rnn, (E, W, r.integers(-7, 7, 9)), (0, 1)),
             (_gathered_step, (r.standard_normal((3, 6)), r.standard_normal((4, 6))),
              (0, 1)),
             (_windowed, (r.standard_normal((6, 2, 4)), r.integers(-6, 6, 5)), (0,))]
    for f, args, wrt in cases:
        g = gradc.grad(f, argnums=wrt, target="cuda")
        src = g.source(*args)
        assert src.count(ONE_BLOCK) == 2 and "scan body" not in src
        assert "scatter_add" in src and len(g.compile(*args).kernels) <= 3
        for a, b in zip(g(*args), gradc.grad(f, argnums=wrt, target="numpy")(*args)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # (review: a scatter each element of which does not invert to one window element
    # keeps the host loop, with the interpreter's values)
    W3 = 0.3 * r.standard_normal((3, 3))
    for f, args in ((_diagonal_step, (r.standard_normal((4, 3, 3)), W3,
                                      r.integers(0, 4, 5))),
                    (_short_arange_step, (r.standard_normal((5, 6)), W3,
                                          np.array([1, -2, 3, 1, 5])))):
        for a, b in zip(gradc.grad(f, argnums=(0, 1), target="cuda")(*args),
                        gradc.grad(f, argnums=(0, 1), target="numpy")(*args)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    g = gradc.grad(_embedded_rnn, target="cuda")
    g(*cases[0][1])
    with pytest.raises(gradc.EvaluationError, match="gather: an index is out of bounds"):
        g(E, W, np.array([1, 2, 9, 0, 0, 0, 0, 0, 0]))


def _batched_embedding(E, W, toks):
    """The loss of a batch of sequences through one embedding RNN (``vmap`` over the
    sequences, ``E`` and ``W`` shared): reverse mode sums every row's scatter into
    ``E``'s gradient."""
    return np.sum(gradc.vmap(_embedded_rnn, in_axes=(None, None, 0))(E, W, toks))


def _windowed_embedding(E, toks):
    """Each step sums the rows of a window of tokens (repeated ones too)."""
    def one(toks):
        def step(h, t):
            return np.tanh(np.sum(E[t], axis=0) + 0.5 * h), None
        return np.sum(gradc.scan(step, np.zeros(E.shape[1]), toks)[0] ** 2)
    return np.sum(gradc.vmap(one)(toks))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_batched_gathers_gradient_is_added_in_place(dtype):
    """``vmap`` of an embedding RNN over a batch of sequences: the gradient of the shared
    table is a carry of the backward scan adding, at each step, a ``scatter_add`` of
    every row's token (two rows may hold one token).  It is an accumulator's term
    (``_Rows._scatter_stage``): each block adds its row's elements where they point,
    atomically, into its partial sums in shared memory, or, for a table too large for
    them, into one array for all blocks.  Both scans are one kernel each (the backward
    one was a host loop launching the step at every step); values as the CPU's, and a
    token out of bounds is the gather's error."""
    r = np.random.default_rng(21)
    W = (0.3 * r.standard_normal((5, 5))).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12,
                                                                      atol=1e-12)
    for V, direct in ((7, False), (2200, True)):      # (2200 x 5 floats: no shared room)
        E = r.standard_normal((V, 5)).astype(dtype)
        toks = r.integers(-V, V, (6, 8))
        toks[:, 0] = 3                              # (every row: one token at a step)
        g = gradc.grad(_batched_embedding, argnums=(0, 1), target="cuda")
        src = g.source(E, W, toks)
        assert "scan body" not in src and src.count("a block per row of 6") == 2, src
        assert src.count("cuda.atomic.add(") == 1 and \
            ("what the rows added in place" in src) == direct
        for a, b in zip(g(E, W, toks), gradc.grad(_batched_embedding, argnums=(0, 1),
                                                  target="numpy")(E, W, toks)):
            np.testing.assert_allclose(a, b, **tol)
    toks[2, 5] = V
    with pytest.raises(gradc.EvaluationError, match="out of bounds"):
        g(E, W, toks)
    # a window of tokens a step, repeated within a row: added atomically too
    E = r.standard_normal((4, 3)).astype(dtype)
    toks = np.array([[[1, 1, 2], [0, 3, 3]], [[2, 2, 2], [1, 0, 1]]])
    g = gradc.grad(_windowed_embedding, target="cuda")
    src = g.source(E, toks)
    assert "scan body" not in src and "cuda.atomic.add(" in src
    np.testing.assert_allclose(g(E, toks), gradc.grad(_windowed_embedding,
                                                      target="numpy")(E, toks), **tol)


def test_a_gathers_gradient_from_a_large_table_is_added_in_place(monkeypatch):
    """One sequence through an embedding RNN whose table is larger than a one-block
    step may be (``GRADC_CUDA_ONE_ROW_WORK``, 1000 here for a table of 60 x 20): its
    gradient's scatter, added into a carry that nothing else reads, is added in place
    (``_added_scatters``; the step's work is the window's, 20, where the one-hot stage
    computed the table's at every step, which sent the backward scan to a host loop).
    Both scans are one block, two kernels in all, and the table's gradient starts from
    zeros no kernel fills (the fill stays deferred at the row's shape).  Per-example
    gradients (``vmap`` of ``grad``) add each row's scatter into its own row of the
    result, in place in the carry's first value (``_Rows._seed``).  Values as the
    CPU's."""
    monkeypatch.setenv("GRADC_CUDA_ONE_ROW_WORK", "1000")
    r = np.random.default_rng(22)
    E, W = r.standard_normal((60, 20)), 0.2 * r.standard_normal((20, 20))
    toks = r.integers(-60, 60, 7)
    toks[3] = toks[5]
    g = gradc.grad(_embedded_rnn, argnums=(0, 1), target="cuda")
    src = g.source(E, W, toks)
    host = src[src.rindex("\ndef "):]
    assert host.count(ONE_BLOCK) == 2 and "scan body" not in src, host
    assert "broadcast_in_dim" not in host and len(g.compile(E, W, toks).kernels) == 2, host
    for a, b in zip(g(E, W, toks), gradc.grad(_embedded_rnn, argnums=(0, 1),
                                              target="numpy")(E, W, toks)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    batch = r.integers(0, 60, (3, 7))
    per = gradc.vmap(gradc.grad(_embedded_rnn), in_axes=(None, None, 0))
    j = gradc.jit(per, target="cuda")
    src = j.source(E, W, batch)
    host = src[src.rindex("\ndef "):]
    assert src.count("a block per row of 3") == 2 and "cuda.atomic.add(" in src
    # (the rows add into the carry's first value, a fill no later equation reads: no
    # zeros of their own, no add after the kernel)
    assert "_d.zeros(" not in host and re.search(r"\(from \w+: no add\)", host), host
    np.testing.assert_allclose(j(E, W, batch), gradc.jit(per, target="numpy")(E, W, batch),
                               rtol=1e-12, atol=1e-12)


def test_a_carry_that_only_adds_scatters_is_one_block(monkeypatch):
    """A scan whose one carry adds a scatter of each step's operands is a map over the
    steps (``passes.licm.maps_of_scans``: no loop).  Where the map would be too large
    (``MAP_ELEMENTS``, 1 here), it has no carry with a batch axis once that carry is an
    accumulator: over one sequence it is one block all the same (the row of one).  It
    starts from a copy of the caller's array (which stays as it was), and under
    ``vmap`` from the broadcast of it, which nothing reads afterwards, in place: no
    zeros, no add.  Values as NumPy's (``np.add.at``)."""
    from gradc.passes import licm
    G0, ts, w, want = histogram_case(np.random.default_rng(23))
    kept = G0.copy()
    many = np.stack([ts, ts[::-1], np.zeros_like(ts)])
    for limit in (licm.MAP_ELEMENTS, 1):
        monkeypatch.setattr(licm, "MAP_ELEMENTS", limit)
        j = gradc.jit(histogram_steps, target="cuda")
        host = j.source(G0, ts, w)
        host = host[host.rindex("\ndef "):]
        if limit > 1:
            assert "for _t" not in host and "one kernel" not in host, host
        else:
            assert host.count(ONE_BLOCK) == 1 and "_d.copy(" in host and "no add" in host, \
                host
        G, _ = j(G0, ts, w)
        np.testing.assert_allclose(G, want, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(G0, kept)
        jv = gradc.jit(gradc.vmap(histogram_steps, in_axes=(None, 0, None)), target="cuda")
        host = jv.source(G0, many, w)
        host = host[host.rindex("\ndef "):]
        if limit == 1:
            assert "_d.copy(" not in host.split(ONE_BLOCK)[1] and "no add" in host, host
        Gs, _ = jv(G0, many, w)
        np.testing.assert_allclose(Gs[0], want, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(Gs, gradc.jit(gradc.vmap(histogram_steps, in_axes=(
            None, 0, None)), target="numpy")(G0, many, w)[0], rtol=1e-13, atol=1e-13)


def _accumulated(W, xs):
    """A carry that only accumulates ``d + g(x_t)``."""
    def step(d, x):
        return d + np.sum(np.tanh(x @ W) ** 2, axis=1) * 0.5, None
    d, _ = gradc.scan(step, np.ones(xs.shape[1]), xs)
    return np.sum(d ** 2)


def test_a_scan_that_is_a_map_is_no_loop():
    """``passes.licm.maps_of_scans``: the accumulating loop and its gradient's loop
    (the carry's cotangent handed to every step unchanged, W's accumulating) are maps
    over the steps: no host loop and no scan kernel, each region one launch for all
    steps (they were two host loops, a launch per region per step); ``scan-chain``'s
    gradient has none left either.  Values as the interpreter's."""
    r = np.random.default_rng(24)
    W, xs = 0.5 * r.standard_normal((4, 4)), r.standard_normal((6, 3, 4))
    g = gradc.grad(_accumulated, argnums=(0, 1), target="cuda")
    host = g.source(W, xs)
    host = host[host.rindex("\ndef "):]
    assert "for _t" not in host and "the scan as one kernel" not in host, host
    for a, b in zip(g(W, xs), gradc.grad(_accumulated, argnums=(0, 1),
                                         target="numpy")(W, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    f, args = PROGRAMS["scan-chain"]
    host = gradc.grad(_summed(f), argnums=(0, 1, 2), target="cuda").source(*args)
    assert "for _t" not in host[host.rindex("\ndef "):]


def _views_swapped(a0, b0):
    """Two carries, each one's new value read from a view of the other's old one
    (``b' = a.reshape(...)``, ``a'`` reads ``b.reshape(...)``), ``a`` stacked too."""
    xs = np.linspace(-1.0, 1.0, 24).reshape(3, 2, 4)

    def step(c, x):
        a, b = c
        return (np.tanh(a + x) + 0.5 * b.reshape(2, 4), a.reshape(2, 2, 2)), a
    (a, b), ys = gradc.scan(step, (a0, b0), xs)
    return np.sum(a) + np.sum(b ** 2) + np.sum(ys ** 3)


def test_a_carrys_new_value_a_view_of_a_carry_is_a_copy_stage():
    """A carry whose new value is a reshape of a carry's old value (a view of a buffer
    the end of the step overwrites) gets a copy stage at the end of the step, as a
    carry's old value handed to another does: the scans are one kernel each, no host
    loop (``carry-reshaped`` kept one).  Values as the interpreter's."""
    r = np.random.default_rng(25)
    f, args = PROGRAMS["carry-reshaped"]
    for fn, args in ((_summed(f), args),
                     (_views_swapped, (r.standard_normal((2, 4)),
                                       r.standard_normal((2, 2, 2))))):
        g = gradc.grad(fn, argnums=(0, 1), target="cuda")
        host = g.source(*args)
        host = host[host.rindex("\ndef "):]
        assert "for _t" not in host and "a view of a carry's old value" in g.source(*args), \
            host
        for a, b in zip(g(*args), gradc.grad(fn, argnums=(0, 1), target="numpy")(*args)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_viterbi_over_one_sentence_is_three_kernels(monkeypatch):
    """Viterbi decoding of one sentence: the max-product scan (one block, its first
    carry ``U[0]`` and its steps ``U[1:]`` read through views of ``U``, not copied by
    kernels), the best last state and score (one block: the argmax as reductions), and
    the backtracking scan (one block).  The path and score as NumPy's."""
    _one_runs(monkeypatch)
    r = np.random.default_rng(12)
    A, U = r.standard_normal((6, 6)), r.standard_normal((9, 6))
    j = gradc.jit(viterbi_decode, target="cuda")
    host = j.source(A, U)
    host = host[host.rindex("\ndef "):]
    assert host.count("_d.view(b, ") == 2 and len(j.compile(A, U).kernels) == 3, host
    for a, b in zip(j(A, U), gradc.jit(viterbi_decode, target="numpy")(A, U)):
        np.testing.assert_array_equal(a, b)


def test_a_one_block_loop_starts_from_fills_without_kernels():
    """An RNN over one sequence: its forward scan starts from ``zeros``, its backward
    scan from zeros for two cotangents and reads a per-step cotangent of ones.  These
    fills are literals of the one-block loops (``fill_literal``), copied in by the
    kernel: the gradient is two launches, not five."""
    f, args = PROGRAMS["rnn-one"]
    g = gradc.grad(_summed(f), argnums=(0, 1), target="cuda")
    host = g.source(*args)
    host = host[host.rindex("\ndef "):]
    assert "broadcast_in_dim" not in host and len(g.compile(*args).kernels) == 2, host
    for a, b in zip(g(*args), gradc.grad(_summed(f), argnums=(0, 1),
                                         target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_steps_concatenation_is_a_selection_fused_with_its_slices():
    """A shift register in the step (``np.concatenate([h[:, 1:], x[:, :1]])``): each
    operand padded into the result and the one whose window holds the element selected
    by its index (``passes.steps.selection``; the window a comparison of the index, not
    a constant read), fused with the slices and the arithmetic around it: one stage,
    one barrier a step.  Signed zeros come through as NumPy's (a sum of the pads would
    turn -0.0 into +0.0)."""
    def f(h0, xs):
        def step(h, x):
            n = np.concatenate([h[:, 1:], x[:, :1]], axis=1) * 1.0
            return n, n
        return gradc.scan(step, h0, xs)
    h0 = np.array([[-0.0, 1.0, -0.0, 2.0], [0.0, -0.0, -0.0, 3.0]])
    xs = np.array([[[-0.0, 5.0], [0.0, 6.0]]] * 5)
    j = gradc.jit(f, target="cuda")
    (step,) = _step_kernels(j.compile(h0, xs))
    step = step[step.index("for _s in range("):]
    assert step.count("\n            cuda.syncthreads()") == 1, step
    assert "concatenate" not in step and "(i1 < 3)" in step
    for a, b in zip(gradc.pytree.flatten(j(h0, xs))[0],
                    gradc.pytree.flatten(gradc.jit(f, target="numpy")(h0, xs))[0]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def test_a_steps_outer_product_accumulates_in_place(monkeypatch):
    """An RNN over one sequence: reverse mode adds ``outer(h, d)`` to W's gradient, a
    (K, K) carry, at each step.  The product is no stage of its own but a broadcast
    product in the stage of the sum (``passes.steps``), and that stage, which reads
    each element of the carry only where it writes it, writes the new value over the
    carry (its row in global memory here): no copy of it into the carry at the end
    of the step.  A step reading its carry at other elements (``h[::-1]``) keeps the
    copy.  Stages apart from each other (neither reads what the other writes) run
    between the same two barriers."""
    monkeypatch.setattr(cudarows, "ROW_SHARED", 0)
    copy = re.compile(r"\n +\w+_f\[[^\n]*\] = \w+_f\[[^\n]*\]\n")
    f, args = PROGRAMS["rnn-one"]
    g = gradc.grad(_summed(f), argnums=(0, 1), target="cuda")
    forward, backward = _step_kernels(g.compile(*args))
    assert "spec='zi,zj->zij'" not in backward and "mul" in backward
    step = backward[backward.index("for _s in range("):]
    assert copy.search(step) is None, step
    # (and the sum of the product, W.T @ d, needs no barrier before that stage: the
    # two are apart, so the step has two barriers, not three)
    assert step.count("\n            cuda.syncthreads()") == 2, step
    for a, b in zip(g(*args), gradc.grad(_summed(f), argnums=(0, 1), target="numpy")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    def aliased(w, h0, xs):         # (review: the carry read through its reshape too)
        def step(h, x):
            a = h[:, None]
            y = w @ a                   # (the view's other reader: before the new carry)
            return h * 0.5 + a[::-1, 0] + x, y[0]
        h, ys = gradc.scan(step, h0, xs)
        return h + 0.0 * np.sum(ys)
    args = (rng.standard_normal((1, 4)), rng.standard_normal(4), rng.standard_normal((2, 4)))
    np.testing.assert_allclose(gradc.jit(aliased, target="cuda")(*args),
                               gradc.jit(aliased, target="numpy")(*args), rtol=1e-12)

    def mixed(h0, xs):
        h, _ = gradc.scan(lambda h, x: (np.tanh(h + 0.5 * h[::-1] + x), None), h0, xs)
        return np.sum(h ** 2)
    args = (rng.standard_normal(5), rng.standard_normal((4, 5)))
    j = gradc.jit(mixed, target="cuda")
    (step,) = _step_kernels(j.compile(*args))
    assert copy.search(step[step.index("for _s in range("):]) is not None
    np.testing.assert_allclose(j(*args), gradc.jit(mixed, target="numpy")(*args),
                               rtol=1e-12)


@pytest.mark.parametrize("target", ["numpy", "cpu", "cuda"])
def test_cumsum_of_booleans_and_small_integers_sums_as_numpy(target):
    """NumPy accumulates booleans and small integers in its default integer (review:
    the CPU target ORed booleans and wrapped int8)."""
    b = np.array([[True, False, True], [True, True, False]])
    i8 = np.array([100, 100, 100], np.int8)
    for f, x in ((lambda x: np.cumsum(x, axis=1), b), (lambda x: np.cumsum(x), i8)):
        got = gradc.jit(f, target=target)(x)
        assert got.dtype == f(x).dtype
        np.testing.assert_array_equal(got, f(x))


def _narrow(x):
    u = x.astype(np.uint8)
    return (np.sum(x * x), np.sum(x * 3, dtype=np.int8), (x * x) > 0, x[0] * x[1] + x[2],
            np.prod(x[:40].astype(np.int16) + 3, dtype=np.int16), u * u, np.sum(u > 100),
            np.max(np.outer(x[:5], x[:5]) * 2, axis=1))


@pytest.mark.parametrize("target", ["numpy", "cpu", "parallel", "cuda"])
def test_narrow_integers_wrap_and_widen_as_numpy(target):
    """Integers narrower than 64 bits wrap at their own width (Numba computes with them
    as int64: int8 ``100 * 3`` must be 44 before it is compared or summed), and
    ``np.sum``/``np.prod`` widen them to the default integer unless given a dtype (a
    review found int8 kept: wrong sums, and an OverflowError from a rank-0 result)."""
    import warnings
    n = 20_000 if target == "parallel" else 300                # (prange-sized)
    x = (np.arange(n) % 251 - 120).astype(np.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # NumPy's overflow warnings
        want = _narrow(x)
        f = gradc.jit(_narrow, target=target)
        got = f(x)
    for g, w in zip(got, want):
        g = g.copy_to_host() if hasattr(g, "copy_to_host") else np.asarray(g)
        assert g.dtype == np.asarray(w).dtype
        np.testing.assert_array_equal(g, w)
    if target == "cuda":               # (the simulator wraps anyway: the casts are there)
        assert "np.int8((a[" in f.source(x)


def test_solve_of_no_systems():
    f = gradc.jit(lambda a, b: np.linalg.solve(a, b), target="cuda")
    assert f(np.zeros((0, 2, 2)), np.zeros((0, 2, 1))).shape == (0, 2, 1)
    assert "_k0[1, " in f.source(np.zeros((0, 2, 2)), np.zeros((0, 2, 1)))


def test_reductions_are_segmented_with_a_second_pass():
    f = gradc.jit(lambda x: np.sum(np.sin(x) ** 2), target="cuda")
    src = f.source(BIG)
    assert "cuda.shared.array" in src and "cuda.syncthreads()" in src
    assert len(f.compile(BIG).kernels) == 2          # partials, then their sum


def test_device_arrays_stay_on_the_device():
    from gradc.codegen.cuda import import_cuda, is_device_array
    cuda = import_cuda()
    x = rng.standard_normal(40)
    dx = cuda.to_device(x)
    g = gradc.grad(rosen, target="cuda")
    out = g(dx)
    assert is_device_array(out)
    np.testing.assert_allclose(out.copy_to_host(), g(x), rtol=1e-14)
    value, grad = gradc.value_and_grad(rosen, target="cuda")(dx)
    assert isinstance(value, (float, np.floating)) and is_device_array(grad)
    # a CPU target takes device arrays too (copied to the host)
    np.testing.assert_allclose(gradc.grad(rosen, target="cpu")(dx), g(x), rtol=1e-14)


class _Interface:
    """Only a device array's ``__cuda_array_interface__``, as CuPy's and PyTorch's
    arrays are seen: numba's own on a GPU; under the simulator, whose device memory is
    the host's, the interface of the array it simulates the device's with."""

    def __init__(self, d):
        self.d = d

    @property
    def __cuda_array_interface__(self):
        if not SIMULATOR:
            return self.d.__cuda_array_interface__
        a = self.d._ary
        return {"shape": a.shape, "typestr": a.dtype.str, "version": 3, "strides": None,
                "data": (a.__array_interface__["data"][0], False)}


def test_arrays_exposing_the_cuda_array_interface():
    """(CUDA QA.)  An argument exposing ``__cuda_array_interface__`` (CuPy's, PyTorch's)
    gives device results as numba's arrays do, ``vmap`` over another axis of it too.  In
    the simulator it raised AttributeError (numba's simulator has no
    ``cuda.as_cuda_array``: ``cuda.as_numba``), and one without a ``shape`` (the
    interface is all the protocol asks for) was traced as a rank-0 value."""
    from gradc.codegen.cuda import import_cuda, is_device_array
    cuda = import_cuda()
    x = rng.standard_normal(40)
    g = gradc.grad(rosen, target="cuda")
    out = g(_Interface(cuda.to_device(x)))
    assert is_device_array(out)
    np.testing.assert_allclose(out.copy_to_host(), g(x), rtol=1e-14)
    s = gradc.jit(lambda a, s: a * s, target="cuda")(x, _Interface(cuda.to_device(np.ones(1))
                                                                   [0:1].reshape(())))
    np.testing.assert_array_equal(s.copy_to_host(), x)
    m = x.reshape(5, 8)
    v = gradc.vmap(rosen, in_axes=1, target="cuda")(_Interface(cuda.to_device(m)))
    np.testing.assert_allclose(v.copy_to_host(), [rosen(c) for c in m.T], rtol=1e-14)


def test_vmap_over_another_axis_of_device_arrays():
    """(CUDA QA.)  ``vmap`` with ``in_axes``/``out_axes`` other than 0 on device arrays:
    the mapped axis is moved by a kernel's copy (``cuda.moveaxis``).  It was the array's
    own ``transpose``: a strided view in the simulator (then refused as not
    C-contiguous) and numba's ``NotImplementedError`` past two axes on a GPU."""
    from gradc.codegen.cuda import import_cuda, is_device_array
    cuda = import_cuda()
    x, w = rng.standard_normal((3, 2, 4)), rng.standard_normal(3)

    def f(v, w):
        return np.tanh(w @ v) * v[0]
    want = gradc.vmap(f, in_axes=(2, None), out_axes=1, target="numpy")(x, w)
    for target in ("cuda", "cpu"):
        got = gradc.vmap(f, in_axes=(2, None), out_axes=1, target=target)(
            cuda.to_device(x), w)
        assert is_device_array(got) == (target == "cuda")
        if target == "cuda":
            assert got.is_c_contiguous()
            got = got.copy_to_host()
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_strided_device_array_is_refused_at_the_users_line():
    """A device array that is not C-contiguous (every other element) gets a gradc
    error naming the argument, its strides and the calling line; the compiled function
    itself refuses a device array of another shape."""
    from gradc.codegen.cuda import import_cuda
    cuda = import_cuda()
    g = gradc.grad(rosen, target="cuda")
    x = rng.standard_normal(40)
    g(x[::2].copy())
    with pytest.raises(gradc.ArgumentError, match=r"argument 0 is a device array that is not "
                       r"C-contiguous \(strides \(16,\)[\s\S]*test_cuda\.py"):
        g(cuda.to_device(x)[::2])
    compiled = g.compile(x[::2].copy())
    with pytest.raises(gradc.ArgumentError, match=r"of shape \(40,\) and dtype float64; the "
                       r"traced function takes \(20,\)"):
        compiled(cuda.to_device(x))


def test_host_equations_are_named_in_the_source(monkeypatch):
    monkeypatch.setenv("GRADC_CUDA_CUPY", "0")    # (with CuPy, det runs on cuSOLVER)
    f = gradc.grad(lambda x: np.sum(np.linalg.det(np.outer(x, x) + np.eye(5)) * x),
                   target="cuda")
    x = rng.uniform(1, 3, 5)
    assert "det" in f.compile(x).on_host
    assert "# on the host: no CUDA lowering of det" in f.source(x)


def test_fastmath_reaches_every_kernel():
    """``fastmath=True`` on the CUDA target compiles every kernel with numba.cuda's
    ``fastmath`` (the simulator ignores it: the same values there); ``ptx`` honours it
    too (checked in test_kernels_compile_to_ptx)."""
    import pickle

    def f(x):
        return np.sum(np.exp(x) / (1 + x * x) + np.sqrt(x))
    x = np.linspace(0.5, 2.0, 40)
    g = gradc.grad(f, target="cuda", fastmath=True)
    c = g.compile(x)
    assert c.fastmath and c.lowered.kernels
    assert all(k.fastmath for k in c.lowered.kernels)
    want = gradc.grad(f, target="numpy")(x)
    np.testing.assert_allclose(g(x), want, rtol=1e-6)
    decorators = [line for line in c.source.splitlines() if line.startswith("@cuda.jit")]
    assert decorators and all(("fastmath=True" in d) != SIMULATOR for d in decorators)
    assert pickle.loads(pickle.dumps(c)).fastmath is True
    plain = gradc.grad(f, target="cuda").compile(x)
    assert not plain.fastmath and not any(k.fastmath for k in plain.lowered.kernels)
    assert plain.key != c.key


def test_numpy_shim_restores_row_stack(monkeypatch):
    import gradc.codegen.cuda as gcuda
    monkeypatch.delattr(np, "row_stack", raising=False)
    monkeypatch.setattr(gcuda, "_CUDA", None)
    gcuda.import_cuda()
    assert np.row_stack is np.vstack


def test_ptx_needs_the_real_compiler_under_the_simulator():
    if not SIMULATOR:
        pytest.skip("runs on a GPU")
    with pytest.raises(gradc.ArgumentError, match="simulator"):
        gradc.grad(rosen, target="cuda").ptx(np.ones(5))


PTX_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import gradc
    from test_cuda import (PROGRAMS, _batched_embedding, _complex_functions, _embedded_rnn,
                           _placing, _summed, rosen, viterbi_decode, viterbi_scan, w2)
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as e:
        print(json.dumps({{"skip": str(e).splitlines()[0] if str(e) else type(e).__name__}}))
        raise SystemExit
    MISSING = ("DynamicLibNotFoundError", "NvvmSupportError", "NvrtcSupportError")
    done = {{}}
    try:
        for name, (f, args) in PROGRAMS.items():
            wrt = tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
            ptx = gradc.grad(_summed(f), argnums=wrt, target="cuda").ptx(*args)
            done[name] = ptx.count(".entry")
        from test_numpy_surface import _integers, integer_inputs
        done["integers"] = gradc.jit(_integers, target="cuda").ptx(
            *integer_inputs()).count(".entry")
        for dt in (np.float32, np.float64):      # (fmod, copysign, log2/log10, exp2(f))
            x = np.linspace(-3, 3, 7).astype(dt)
            done["float-division-" + np.dtype(dt).name] = gradc.jit(
                lambda x, y: (x // y, x % y), target="cuda").ptx(x, x[::-1]).count(".entry")
            done["log10-log2-exp2-" + np.dtype(dt).name] = gradc.jit(
                lambda x: (np.log10(x), np.log2(x), np.exp2(x)), target="cuda").ptx(
                    np.abs(x) + 1).count(".entry")
            done["complex-functions-" + np.dtype(dt).name] = gradc.jit(     # (cmath's;
                _complex_functions, target="cuda").ptx(x).count(".entry")  # see below)
            import scipy.special as sc      # (libdevice's erf/lgamma/normcdfinv/erfinv,
            #                                  digamma as an inner function)
            done["special-" + np.dtype(dt).name] = gradc.grad(
                lambda x: np.sum(sc.gammaln(x) * sc.psi(x) + sc.erfc(x)
                                 + sc.ndtri(x / 5.0) * sc.erfinv(x / 5.0)),
                target="cuda").ptx(np.abs(x) + 1).count(".entry")
        pts = np.zeros((300, 2))
        done["vmap-grad"] = gradc.jit(gradc.vmap(gradc.grad(w2)),
                                      target="cuda").ptx(pts).count(".entry")
        # (a linspace floored to integers: its products rounded on their own, no FMA;
        # x * y + 1 as a float keeps its FMA)
        ptx = gradc.jit(lambda a: np.linspace(a[0], 10.0, 6, dtype=int),
                        target="cuda").ptx(np.linspace(-1.0, 1.0, 5))
        done["linspace-int-mul-rn"] = ptx.count("mul.rn.f64")
        done["linspace-int-no-fma"] = int("fma.rn" not in ptx)
        done["axpy-fma"] = gradc.jit(lambda x, y: x * y + 1.0, target="cuda").ptx(
            np.ones(50), np.ones(50)).count("fma.rn.f64")
        # (ptx() never runs the function: with paths cached, no GPU is needed either)
        pw = gradc.jit(lambda x: np.sin(x) if np.sum(x) > 0 else x ** 3, target="cuda")
        done["ptx-guarded-again"] = sum(".entry" in pw.ptx(v)
                                        for v in (np.ones(8), np.ones(8), -np.ones(8)))
        # (fastmath: float32 division and exp by approximate instructions)
        x = np.linspace(0.5, 2.0, 64).astype(np.float32)
        h = lambda x: np.sum(np.exp(x) / (1 + x * x))    # noqa: E731
        fast = gradc.grad(h, target="cuda", fastmath=True).ptx(x)
        exact = gradc.grad(h, target="cuda").ptx(x)
        done["fastmath"] = [fast.count("div.rn.f32"), fast.count("div.approx"),
                            exact.count("div.rn.f32"), exact.count("div.approx")]
        # (map kernels' 16-byte vector loads and stores: vload4/vstore4 in float32,
        # vload2/vstore2 in float64)
        for dt, v in ((np.float32, "v4.f32"), (np.float64, "v2.f64")):
            ptx = gradc.grad(rosen, target="cuda").ptx(np.ones(64, dt))
            done["vector-" + v] = [ptx.count("ld.global." + v), ptx.count("st.global." + v)]
        # (an index array's values checked in the kernel: its error cell an int32[1])
        done["index-checks"] = gradc.jit(lambda i, x: x[i] * 2, target="cuda").ptx(
            np.array([1, -2]), np.ones(8)).count(".entry")
        # (a step's argmax as two reductions in the one-kernel scan: passes.argreduce)
        done["scan-argmax"] = gradc.jit(viterbi_scan, target="cuda").ptx(
            np.ones((4, 4)), np.ones((3, 130, 4)), np.ones((3, 130, 4), np.int64)).count(
                ".maxnreg ")
        # (float16 reductions: shared arrays of numba.types.float16)
        done["float16-sum"] = gradc.jit(lambda x: np.sum(x * x), target="cuda").ptx(
            np.ones(44 * 256, np.float16)).count(".entry")
        # (complex numbers are no vector elements: their arrays keep scalar accesses)
        z = (np.arange(16) + 1j).astype(np.complex64)
        done["complex64-beside-float32"] = gradc.jit(lambda z, x: z * x, target="cuda").ptx(
            z, np.ones(16, np.float32)).count(".entry")
        # (a one-kernel scan's register limit, numba's link option, as PTX's directive;
        # G4's kernels, with its runs outside the scans of real size: not one block)
        from gradc.codegen import cudarows
        f, args = PROGRAMS["mlp"]          # (its gradient: one block, one kernel)
        done["one-run-mlp"] = gradc.grad(_summed(f), argnums=(0, 1, 2),
                                         target="cuda").ptx(*args).count(".entry")
        # (a gather by the carry, its indices checked, in a one-block scan)
        done["gather-by-carry"] = gradc.jit(viterbi_decode, target="cuda").ptx(
            np.ones((5, 5)), np.ones((6, 5))).count(".entry")
        # (and its gradient's scatter, a stage of the backward scan)
        done["scatter-by-token"] = gradc.grad(_embedded_rnn, target="cuda").ptx(
            np.ones((7, 5)), np.eye(5), np.arange(6) % 7).count(".entry")
        # (a batch's scatter into a shared table: atomic adds into shared memory, or
        # into one global array for a table too large for it)
        for V, dt in ((7, np.float64), (2200, np.float64), (7, np.float32),
                      (2200, np.float32)):
            ptx = gradc.grad(_batched_embedding, target="cuda").ptx(
                np.ones((V, 5), dt), np.eye(5, dtype=dt), np.arange(24).reshape(4, 6) % 7)
            where = "shared" if V == 7 else "global"
            done[f"atom-{{where}}-{{dt.__name__}}"] = len(re.findall(
                rf"(?:atom|red)\\.{{where}}(?:\\.\\w+)*\\.add\\.f{{8 * dt().itemsize}}", ptx))
        # (np.maximum.at / np.fmin.at by traced indices: atomic max and min, and the
        # atomic or of the NaN flags of floats)
        def extrema_at(y, i, v):
            z = y.copy()
            np.maximum.at(z, i, v)
            np.fmin.at(z, i[::-1], v)
            return np.sum(np.sin(z) * z)
        for dt in (np.float32, np.float64, np.int32, np.int64):
            y, v = np.ones(5, dt), np.ones(7, dt)
            i = np.array([0, 1, 1, 3, 0, -1, 1])
            ptx = gradc.jit(extrema_at, target="cuda").ptx(y, i, v)
            done["extrema-at-" + np.dtype(dt).name] = [
                len(re.findall(r"atom\\.global(?:\\.\\w+)*\\.(?:max|min)", ptx)),
                len(re.findall(r"atom\\.global(?:\\.\\w+)*\\.or", ptx)) +
                len(re.findall(r"red\\.global(?:\\.\\w+)*\\.or", ptx))]
        done["extrema-at-grad"] = gradc.grad(extrema_at, argnums=(0, 2), target="cuda").ptx(
            np.ones(5), np.array([0, 1, 1, 3, 0, -1, 1]), np.ones(7)).count(".entry")
        cudarows.ONE_RUN_WORK = 0
        f, args = PROGRAMS["crf-batched-wide"]
        ptx = gradc.grad(_summed(f), argnums=(0, 1), target="cuda").ptx(*args)
        done["scan-maxnreg"] = ptx.count(".maxnreg ")
        # (its reductions' partials combined across a warp's lanes: shuffles, no barrier)
        done["scan-shuffles"] = ptx.count("shfl.sync.bfly")
        # (a block's partial sums by warps: 5 shuffles, then 3 over 8 warps' totals; an
        # 8-byte value moves as two 32-bit halves)
        n = 44 * 256
        for dt in (np.float64, np.float32, np.int64, np.int32):
            done["block-shuffles-" + np.dtype(dt).name] = gradc.jit(
                lambda x: (np.sum(x), np.max(x)), target="cuda").ptx(
                    np.arange(n).astype(dt)).count("shfl.sync.bfly")
        # (a thread's share of a row as a while loop: no division to count its trips
        # at each stage of each step; one per kernel is left, for its rows)
        scans = [k for k in ptx.split("// kernel ") if ".maxnreg " in k]
        # (a scan's results written into strided views of the array placing them)
        for case in ("transpose", "concatenate"):
            done["placed-" + case] = gradc.jit(_placing(case), target="cuda").ptx(
                np.ones((3, 4)), np.ones((5, 3, 4))).count(".entry")
        done["scan-divisions"] = [sum(k.count("div.s64") for k in scans),
                                  sum(k.count("bar.sync") for k in scans)]
        # (the forward scan's loads of C arrays at constant-stride offsets: most of
        # them at an immediate offset from one address, flat_subscripts)
        load = r"ld\\.global(?:\\.nc)?\\.f64"
        done["scan-immediate-loads"] = [
            len(re.findall(load + r"\\s+%fd\\d+, \\[%rd\\d+\\+\\d+\\]", scans[0])),
            len(re.findall(load, scans[0]))]
    except Exception as e:      # a CUDA library this numba.cuda needs is not installed
        if type(e).__name__ not in MISSING:
            raise
        print(json.dumps({{"skip": type(e).__name__ + ": " + str(e).splitlines()[0]}}))
        raise SystemExit
    print(json.dumps(done))
""")


def test_kernels_compile_to_ptx():
    """The generated kernels through numba.cuda's real compiler (NVVM), not the
    simulator: every program's gradient."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    script = PTX_SCRIPT.format(tests=os.path.dirname(__file__))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"no CUDA NVVM on this machine: {out['skip']}")
    assert out["vmap-grad"] == 1
    assert out["linspace-int-no-fma"] == 1 and out["linspace-int-mul-rn"] >= 2
    assert out["scan-maxnreg"] == 2              # (the forward and the backward scan)
    assert out["one-run-mlp"] == 1
    assert out["gather-by-carry"] == 3          # (both scans one kernel each, a run)
    assert out["scatter-by-token"] <= 3
    assert out["scan-argmax"] == 1               # (one kernel, its argmax included)
    assert out["scan-shuffles"] >= 2, out["scan-shuffles"]
    # (8 shuffles each for the sum and the max, of 32-bit halves: an int32's sum is
    # an int64, as NumPy's)
    for dt, halves in (("float64", 4), ("float32", 2), ("int64", 4), ("int32", 3)):
        assert out.pop("block-shuffles-" + dt) == 8 * halves, dt
    assert out["ptx-guarded-again"] == 3
    assert out["placed-transpose"] == out["placed-concatenate"] == 1
    fast_rn, fast_approx, exact_rn, exact_approx = out.pop("fastmath")
    assert fast_rn == 0 and fast_approx >= 1 and exact_rn >= 1 and exact_approx == 0
    immediate, loads = out.pop("scan-immediate-loads")
    assert 2 * immediate > loads, (immediate, loads)
    divisions, barriers = out.pop("scan-divisions")
    assert divisions <= 2 and barriers >= 6, (divisions, barriers)
    for v in ("v4.f32", "v2.f64"):
        loads, stores = out.pop("vector-" + v)
        assert loads >= 1 and stores >= 1, (v, loads, stores)
    for dt in ("float32", "float64", "int32", "int64"):
        extrema, ors = out.pop("extrema-at-" + dt)
        # (float atomic max/min are compare-and-swap loops in numba.cuda: counted in the
        # integers only; the floats' NaN flags are atomic ors, two per update)
        if dt.startswith("int"):
            assert extrema >= 2 and ors == 0, (dt, extrema, ors)
        else:
            assert ors == 4, (dt, extrema, ors)
    assert all(n >= 1 for n in out.values()), out


POOL_SCRIPT = textwrap.dedent("""
    import ctypes, gc, json, types
    from gradc.codegen.cuda import caching_memory_manager

    class Pointer(int):            # (what numba's ctypes and NVIDIA-binding paths read)
        value = property(int)

    class Fake(caching_memory_manager()):      # (numba's allocation replaced: no GPU)
        made = 0

        def _allocate(self, size):
            self.made += 1
            return types.SimpleNamespace(device_pointer=Pointer(4096 * self.made))

    m = Fake(context=None)
    p = m.memalloc(64)
    first = p.device_pointer.value
    view = p.view(8)                    # (an array's slice holds the memory too)
    del p
    gc.collect()
    out = {"free_while_viewed": len(m.free_blocks[64])}
    q = m.memalloc(64)
    out["second_is_new"] = q.device_pointer.value != first
    del view
    gc.collect()
    out["free_after"] = len(m.free_blocks[64])
    r = m.memalloc(64)
    out["reused"] = r.device_pointer.value == first
    out["other_size_new"] = m.memalloc(128).device_pointer.value not in (first,)
    out["hits"], out["misses"] = m.hits, m.misses
    import numpy as np             # (numba's arrays and gradc's views of them)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from gradc.codegen.cuda import view
    a = DeviceNDArray((16,), (4,), np.float32, gpu_data=m.memalloc(64))
    at = a.device_ctypes_pointer.value
    part = view(a, 4, (6,), (2,))
    out["slice_at"] = part.device_ctypes_pointer.value - at
    sub = DeviceNDArray((2,), (8,), np.float32,      # (what numba's slice part[1:3]
                        gpu_data=part.gpu_data.view(8, 24))      # makes, without a GPU)
    out["sub_at"] = sub.device_ctypes_pointer.value - at
    out["numba_view_at"] = part.gpu_data.device_pointer_value - at   # (numba's, made late)
    del a
    gc.collect()
    out["free_while_sliced"] = at in [b.device_pointer.value for b in m.free_blocks[64]]
    del part
    gc.collect()
    out["free_while_subsliced"] = at in [b.device_pointer.value for b in m.free_blocks[64]]
    del sub
    gc.collect()
    out["free_after_slice"] = at in [b.device_pointer.value for b in m.free_blocks[64]]
    live = m.memalloc(256)
    m.reset()                           # (the context's memory goes: live's too)
    del live
    gc.collect()
    out["kept_after_reset"] = len(m.free_blocks.get(256, []))
    print(json.dumps(out))
""")


def test_memory_pool_hands_a_block_out_again_once_every_view_has_died():
    """``CachingMemoryManager`` (on by default; ``GRADC_CUDA_POOL=0`` turns it off) with
    numba's allocation replaced by a fake, outside the simulator (numba's real memory
    classes)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-c", POOL_SCRIPT], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"free_while_viewed": 0, "second_is_new": True, "free_after": 1,
                   "reused": True, "other_size_new": True, "hits": 1, "misses": 3,
                   "slice_at": 16, "sub_at": 24, "numba_view_at": 16,
                   "free_while_sliced": False, "free_while_subsliced": False,
                   "free_after_slice": True,
                   "kept_after_reset": 0}


def test_memory_pool_is_a_no_op_in_the_simulator():
    from gradc.codegen.cuda import use_memory_pool
    if not SIMULATOR:
        pytest.skip("a GPU: the pool applies to contexts created afterwards")
    assert use_memory_pool() is False


@pytest.mark.parametrize("spec", ["ij,jk->ik", "ji,jk->ik", "ij,kj->ik", "ij,jk->ki",
                                  "bij,bjk->bik", "bji,bkj->bki", "i,i->", "i,j->ij",
                                  "ij,j->i", "abc,bcd->ad", "bij,jk->bik", "ijk,ik->ij"])
def test_einsum_as_one_matmul(spec):
    """The CuPy path's einsum as a (batched) matmul of permuted views, run here with
    NumPy in CuPy's place; a letter summed within one operand is not a matmul."""
    from gradc.codegen.cuda import matmul_einsum
    sa, sb, _ = spec.replace("->", ",").split(",")
    size = {c: 2 + k for k, c in enumerate(sorted(set(sa + sb)))}
    x = rng.standard_normal([size[c] for c in sa])
    y = rng.standard_normal([size[c] for c in sb])
    np.testing.assert_allclose(matmul_einsum(np, spec, x, y), np.einsum(spec, x, y),
                               rtol=1e-13, atol=1e-13)
    assert matmul_einsum(np, "ij,jk->", np.ones((2, 3)), np.ones((3, 2))) is None


def _spd(n, batch=()):
    m = rng.standard_normal(batch + (n, n))
    return m @ np.swapaxes(m, -1, -2) + n * np.eye(n)


DECOMPOSITIONS = {
    "cholesky": (lambda a: np.sum(np.log(np.diagonal(np.linalg.cholesky(a)))), _spd(4)),
    "eigh": (lambda a: np.sum(np.linalg.eigh(a)[0] ** 2) + np.sum(np.linalg.eigh(a)[1][0] ** 2),
             _spd(4)),
    "svd": (lambda a: np.sum(np.linalg.svd(a, full_matrices=False)[1])
            + np.sum(np.linalg.svd(a, full_matrices=False)[0][:, 0] ** 2),
            rng.standard_normal((5, 3))),
    "qr": (lambda a: np.sum(np.linalg.qr(a).Q[:, 0] ** 3) + np.sum(np.linalg.qr(a).R ** 2),
           rng.standard_normal((5, 3))),
    "det": (lambda a: np.sum(np.linalg.det(a) ** 2), rng.standard_normal((2, 3, 3))),
    "det-one": (lambda a: np.linalg.det(a) * np.sum(a), rng.standard_normal((3, 3))),
    # a stack with a singular matrix: the cofactor of that one from its SVD
    "det-singular": (lambda a: np.sum(np.linalg.det(a) ** 2 + np.linalg.det(a)),
                     np.stack([[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]],
                               rng.standard_normal((3, 3))])),
    "slogdet": (lambda a: np.linalg.slogdet(a)[1] * 2.0, _spd(3)),
    # (not a decomposition: the other primitive CuPy computes, with a sort's derivative)
    "argsort": (lambda a: np.sum(np.sort(a, axis=0)[-2:] ** 2) + np.median(a),
                rng.standard_normal((5, 3))),
}


@pytest.mark.parametrize("name", DECOMPOSITIONS)
def test_decompositions_through_cupy_stay_on_the_device(monkeypatch, name):
    """With CuPy, decompositions are ``cupy.linalg`` calls on device arrays (no host
    equations left); here NumPy stands in for CuPy (``library_call``), the results moved to
    the device as CuPy's would be."""
    from gradc.codegen import cuda
    dev = cuda.import_cuda()
    calls = []

    def fake(op, a, failure=None, **params):
        calls.append(op)
        with cuda.raising(failure):
            out = cuda.library_call(np, op, a.copy_to_host(), **params)
        return [r[()] if r.ndim == 0 else dev.to_device(r) for r in out]

    def with_fake():
        cuda.cupy_einsum = cuda.cupy_solve = None
        cuda.cupy_library = fake
    monkeypatch.setattr(cuda, "_set_cupy", with_fake)
    monkeypatch.setattr(cuda, "cupy_library", None)
    f, a = DECOMPOSITIONS[name]
    g = gradc.value_and_grad(f, target="cuda")
    assert g.compile(a).on_host == [] and "_d.cupy_library(" in g.source(a)
    (v, d), (vw, dw) = g(a), gradc.value_and_grad(f, target="numpy")(a)
    assert calls and set(calls) <= {name.split("-")[0], "det", "cofactor"}
    np.testing.assert_allclose(v, vw, rtol=1e-12)
    np.testing.assert_allclose(d, dw, rtol=1e-10, atol=1e-12)
    if name == "cholesky":      # (the library's failure: gradc's error, naming the line)
        with pytest.raises(gradc.EvaluationError, match="cholesky: the matrix is not "
                           r"positive definite(.|\n)*test_cuda.py:\d+"):
            g(-a)


@pytest.mark.parametrize("stream, waits", [(0, False), (7, True)])
def test_cupy_results_are_imported_without_a_host_wait_on_the_null_stream(
        monkeypatch, stream, waits):
    """CuPy's products come back as numba views; on the legacy default stream (shared
    with numba's launches) the view drops the ``stream`` entry, so that importing it
    does not synchronise (a host wait after every cuBLAS call); on another stream the
    entry stays and the import waits for it."""
    import types

    from gradc.codegen import cuda
    seen = []
    fake_cuda = types.SimpleNamespace(from_cuda_array_interface=lambda desc, owner: (
        seen.append(desc) or ("view", owner)))
    fake_cp = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=stream)))
    out = types.SimpleNamespace(__cuda_array_interface__={
        "shape": (2, 3), "typestr": "<f4", "data": (1234, False), "version": 3,
        "strides": None, "stream": stream or 1})
    monkeypatch.setattr(cuda, "_CUDA", fake_cuda)
    assert cuda.from_cupy(fake_cp, out) == ("view", out)
    assert ("stream" in seen[0]) == waits
    assert seen[0]["data"] == (1234, False) and seen[0]["shape"] == (2, 3)


def test_float32_matmul_precision_sets_cublas_compute_type_for_one_call():
    """``set_float32_matmul_precision("high")``: CuPy's float32 products use
    TensorFloat-32 during gradc's call (what cuBLAS reads when the product is
    launched), and CuPy's own setting is back afterwards; float64 is untouched.  A
    stand-in records the compute type each product saw."""
    import types

    from gradc.codegen import cuda
    state = {np.dtype(np.float32): 1, np.dtype(np.float64): 1}
    seen = []
    lin = types.SimpleNamespace(
        COMPUTE_TYPE_TF32=7, COMPUTE_TYPE_BF16=6,
        get_compute_type=lambda dt: state[np.dtype(dt)],
        set_compute_type=lambda dt, ct: state.__setitem__(np.dtype(dt), ct))
    fake_cp = types.SimpleNamespace(
        _core=types.SimpleNamespace(_routines_linalg=lin),
        matmul=lambda x, y: seen.append(state[x.dtype]) or x @ y)
    a32, a64 = np.ones((2, 3), np.float32), np.ones((2, 3))
    assert gradc.get_float32_matmul_precision() == "highest"
    try:
        for precision, want in (("highest", [1, 1]), ("high", [7, 1]), ("medium", [6, 1])):
            gradc.set_float32_matmul_precision(precision)
            seen.clear()
            for a in (a32, a64):
                with cuda._ComputeType(fake_cp, a.dtype):
                    out = cuda.matmul_einsum(fake_cp, "ij,kj->ik", a, a)
                np.testing.assert_array_equal(out, a @ a.T)
            assert seen == want and set(state.values()) == {1}
        with pytest.raises(gradc.ArgumentError, match="'low' is not one of"):
            gradc.set_float32_matmul_precision("low")
    finally:
        gradc.set_float32_matmul_precision("highest")


def test_decompositions_without_cupy_run_on_the_host(monkeypatch):
    monkeypatch.setenv("GRADC_CUDA_CUPY", "0")    # (a machine without CuPy)
    f, a = DECOMPOSITIONS["eigh"]
    g = gradc.grad(f, target="cuda")
    assert "eigh" in g.compile(a).on_host
    np.testing.assert_allclose(g(a), gradc.grad(f, target="numpy")(a), rtol=1e-10,
                               atol=1e-12)


def test_check_runs_the_cuda_target():
    report = gradc.check(rosen, rng.uniform(0.5, 1.5, 6), targets=("cuda",),
                         against=("fd",))
    assert report.ok and len(report.rows) == 2
    assert all(row.target == "cuda" for row in report.rows)


# ---------------------------------------------------------------- review regressions

def test_host_results_reach_kernels_as_scalars():
    """A rank-0 result of a host equation is a NumPy scalar: a 0-d array would make a
    GPU kernel's argument an array type (a TypingError on the device; the simulator
    does not care)."""
    from gradc.codegen.cuda import run_host
    graph = gradc.make_graph(lambda x: x[np.argmax(x)])(V5)
    (out,) = run_host(graph, [V5])
    assert isinstance(out, np.generic) and not isinstance(out, np.ndarray)


def test_many_reductions_split_to_fit_shared_memory():
    from gradc.codegen import cudagen

    def f(x):
        return tuple(np.sum(np.sin(x * (k + 1.0)), axis=1) for k in range(30))
    x = rng.standard_normal((4, 4096))
    graph = optimise(gradc.make_graph(f)(x), "cuda")
    lowered = cudagen.lower(graph, "f", simulator=False)      # (GPU block sizes)
    per_kernel = [k.source.count("cuda.shared.array") * cudagen.THREADS * 8
                  for k in lowered.kernels]
    assert sum(1 for b in per_kernel if b) >= 2
    assert max(per_kernel) <= cudagen.SHARED_BYTES


def test_split_reductions_run(monkeypatch):
    """The split above, run (small: a budget of 4 roots' shared arrays per kernel)."""
    from gradc.codegen import cudagen
    monkeypatch.setattr(cudagen, "SHARED_BYTES", 4 * cudagen.THREADS_SIM * 8)

    def f(x):
        return tuple(np.sum(np.sin(x * (k + 1.0)), axis=1) for k in range(10))
    x = rng.standard_normal((3, 200))
    g = gradc.jit(f, target="cuda")
    assert len(g.compile(x).kernels) >= 3 * 2        # 3 kernels, each with a second pass
    np.testing.assert_allclose(np.array(g(x)), np.array(gradc.jit(f)(x)), rtol=1e-12)


def test_results_are_fresh_arrays():
    """A constant, an argument passed through or a branch's constant comes back as a
    copy: writing into a result does not change the next call's."""
    from gradc.codegen.cuda import import_cuda
    f = gradc.jit(lambda x: (x * 2, np.arange(3.0), x), target="cuda")
    x = np.ones(3)
    a, b, c = f(x)
    b[:] = -1
    c[:] = -1
    assert np.array_equal(f(x)[1], [0.0, 1.0, 2.0]) and np.array_equal(x, np.ones(3))
    g = gradc.jit(lambda x: gradc.cond(np.sum(x) > 0, lambda x: np.arange(3.0),
                                       lambda x: x * 2, x), target="cuda")
    dx = import_cuda().to_device(np.ones(3))
    r = g(dx)
    r.copy_to_device(np.full(3, -1.0))
    assert np.array_equal(g(dx).copy_to_host(), [0.0, 1.0, 2.0])


def test_repeated_calls_return_what_the_first_returns():
    """gradc's fast call path (the second call on) gives the same types."""
    f = gradc.grad(lambda a, b: np.sum(a * b), argnums=(0, 1), target="cuda")
    a, b = rng.standard_normal(4), rng.standard_normal(4)
    first, second = f(a, b), f(a, b)
    assert type(first) is type(second) is tuple
    v = gradc.value_and_grad(lambda a, s: np.sum(a) * s, argnums=1, target="cuda")
    assert [type(x) for x in v(a, 2.0)] == [type(x) for x in v(a, 2.0)]


def test_rank0_device_argument():
    from gradc.codegen.cuda import import_cuda
    cuda = import_cuda()
    f = gradc.jit(lambda x, s: x * s, target="cuda")
    s = cuda.to_device(np.array([2.0]))[0:1].reshape(())
    np.testing.assert_array_equal(f(np.ones(3), s), np.full(3, 2.0))


def test_float32_rounding_stays_float32():
    from gradc.codegen.cudagen import template
    assert "_f32(" in template("round", np.float32)
    assert "_f32(" not in template("round", np.float64)


def test_kernels_are_specialized_after_their_first_launch():
    """``Compiled._specialize``: a kernel with one compiled definition is marked
    specialized (numba skips typing its arguments at later launches); one not launched
    yet waits; anything else is left alone.  With fake dispatchers: the simulator has
    none."""
    import types as pytypes
    from gradc.codegen.cuda import Compiled
    compiled = Compiled(optimise(gradc.make_graph(rosen)(np.ones(5)), "cuda"), "f")

    def fake(n_overloads):
        return pytypes.SimpleNamespace(overloads=dict.fromkeys(range(n_overloads)),
                                       specialized=False, _specialized=False)
    launched, waiting, twice = fake(1), fake(0), fake(2)
    compiled.module.__dict__.update(_ka=launched, _kb=waiting, _kc=twice, _kd=object())
    compiled._unspecialized = ["_ka", "_kb", "_kc", "_kd"]
    compiled._specialize()
    assert launched._specialized and not waiting._specialized and not twice._specialized
    assert compiled._unspecialized == ["_kb"]


class _FakeDeviceArray:
    """What ``DirectKernel.flatten`` reads of a numba device array."""

    def __init__(self, shape, dtype, pointer):
        import ctypes
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.size = int(np.prod(shape))
        self.strides = tuple(int(s) for s in np.empty(shape, dtype).strides)
        self.device_ctypes_pointer = ctypes.c_size_t(pointer)


def _direct(kinds, prepare):
    """A ``DirectKernel`` over fakes: ``prepare`` stands for numba's ``_prepare_args``;
    returns it, the launches it made and those numba made."""
    import types as pytypes
    from gradc.codegen.cuda import DirectKernel
    direct_calls, numba_calls = [], []

    class Dispatcher:
        def __getitem__(self, config):
            return lambda *args: numba_calls.append((config, args))
    overload = pytypes.SimpleNamespace(argument_types=list(range(len(kinds))),
                                       _prepare_args=prepare)
    d = DirectKernel(Dispatcher(), overload, "kernel", kinds,
                     lambda stream, config, kernel, *flat: direct_calls.append(
                         (stream, config, kernel, flat)),
                     lambda **kw: kw, "stream", _FakeDeviceArray)
    return d, direct_calls, numba_calls


def _numbas_way(ty, a, stream, retr, out):
    """numba-cuda's ``_prepare_args`` for a device array or a float32 (its data model:
    meminfo, parent, size, itemsize, data, shape, strides)."""
    import ctypes
    if isinstance(a, _FakeDeviceArray):
        out += [0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value]
        out += list(a.shape) + list(a.strides)
    else:
        out.append(ctypes.c_float(a))


def test_direct_launches_flatten_arguments_as_numba_does():
    """``DirectKernel``: once its flattening of the first launch's arguments equals
    numba's, launches go straight to cuda.core's ``launch`` with numba's array
    parameters (here of a (3, 4) float64 array at 4096 and a (5,) int32 one) and the
    scalar's ctypes value; a launch of other arguments, or from another thread, goes
    through numba."""
    import ctypes
    import threading
    d, direct, slow = _direct([None, ctypes.c_float, None], _numbas_way)
    x, y = _FakeDeviceArray((3, 4), np.float64, 4096), _FakeDeviceArray((5,), np.int32, 8192)
    d[8, 256](x, np.float32(1.5), y)
    assert d.state is True and not slow
    (stream, config, kernel, flat), = direct
    flat = list(flat)
    assert (stream, config, kernel) == ("stream", {"grid": 8, "block": 256, "shmem_size": 0},
                                        "kernel")
    assert flat[:9] == [0, 0, 12, 8, 4096, 3, 4, 32, 8]
    assert isinstance(flat[9], ctypes.c_float) and flat[9].value == 1.5
    assert flat[10:] == [0, 0, 5, 4, 8192, 5, 4]
    assert d[8, 256] is d[8, 256]                       # (one launcher per configuration)
    d[8, 256](np.zeros((3, 4)), np.float32(1.5), y)     # (a host array: numba copies it)
    assert len(direct) == 1 and len(slow) == 1
    t = threading.Thread(target=lambda: d[8, 256](x, np.float32(1.5), y))
    t.start()
    t.join()
    assert len(direct) == 1 and len(slow) == 2


def test_empty_arrays_after_the_first_copy_its_attributes(monkeypatch):
    """``_d.empty``: the first array of a shape and dtype comes from numba's
    constructor; later ones copy its attributes and take memory of their own from the
    context's ``memalloc``.  Anything but numba's device array with numba's attributes
    (the simulator's) is made by numba each time."""
    import types as pytypes
    from gradc.codegen import cuda

    class DeviceNDArray:
        def __init__(self, shape, dtype, pointer):
            self.ndim, self.shape = len(shape), shape
            self._dummy = pytypes.SimpleNamespace(is_c_contig=True)     # (numba's layout)
            self.strides, self.dtype = np.empty(shape, dtype).strides, np.dtype(dtype)
            self.size = int(np.prod(shape))
            self.alloc_size, self.gpu_data, self.stream = self.size * 4, pointer, 0
    if SIMULATOR:                         # (the simulator's arrays are no prototype)
        assert cuda._prototype(cuda.import_cuda().device_array((2,), np.float32)) is False
    made, given = [], []

    def device_array(shape, dtype):
        made.append(shape)
        return DeviceNDArray(shape, dtype, f"numba's {len(made)}")

    def memalloc(size):
        given.append(size)
        return f"pool's {len(given)}"
    monkeypatch.setattr(cuda, "_CUDA", pytypes.SimpleNamespace(device_array=device_array))
    monkeypatch.setattr(cuda, "_EMPTY", {})
    first = cuda.empty((3, 4), np.float32)
    cuda._EMPTY[(3, 4), np.float32] = cuda._prototype(
        first, lambda: pytypes.SimpleNamespace(memalloc=memalloc))
    second = cuda.empty((3, 4), np.float32)
    assert made == [(3, 4)] and given == [48]
    assert type(second) is DeviceNDArray and second.gpu_data == "pool's 1"
    assert {k: v for k, v in vars(second).items() if k != "gpu_data"} == \
        {k: v for k, v in vars(first).items() if k != "gpu_data"}
    strided = DeviceNDArray((2,), np.float32, "x")
    strided._dummy = pytypes.SimpleNamespace(is_c_contig=False)
    assert cuda._prototype(strided, lambda: None) is False       # (C-contiguous only)
    other = DeviceNDArray((2,), np.float32, "x")
    other.extra = 1                       # (not numba's attributes: numba each time)
    assert cuda._prototype(other, lambda: None) is False
    assert cuda._prototype(pytypes.SimpleNamespace(), lambda: None) is False


def test_reshapes_after_the_first_copy_its_attributes(monkeypatch):
    """``_d.reshape``: the first view of a shape and dtype is numba's reshape; later
    views of C-contiguous arrays copy its attributes onto the viewed array's memory.
    A strided array, a NumPy array or the simulator's are reshaped by their own
    method every time."""
    import types as types_

    from gradc.codegen import cuda
    made = []

    class DeviceNDArray:
        def __init__(self, shape, dtype, pointer, c_contig=True):
            self.ndim, self.shape = len(shape), shape
            self._dummy = types_.SimpleNamespace(is_c_contig=c_contig)
            self.strides, self.dtype = np.empty(shape, dtype).strides, np.dtype(dtype)
            self.size = int(np.prod(shape))
            self.alloc_size, self.gpu_data, self.stream = self.size * 4, pointer, 0

        def reshape(self, shape):
            made.append((shape, self.gpu_data))
            return DeviceNDArray(shape, self.dtype, self.gpu_data)
    monkeypatch.setattr(cuda, "_VIEWS", {})
    first = cuda.reshape(DeviceNDArray((4, 6), np.float32, "x's"), (2, 12))
    second = cuda.reshape(DeviceNDArray((24,), np.float32, "y's"), (2, 12))
    assert made == [((2, 12), "x's")] and first.gpu_data == "x's"
    assert type(second) is DeviceNDArray and second.gpu_data == "y's"
    assert {k: v for k, v in vars(second).items() if k != "gpu_data"} == \
        {k: v for k, v in vars(first).items() if k != "gpu_data"}
    strided = DeviceNDArray((24,), np.float32, "z's", c_contig=False)
    assert cuda.reshape(strided, (2, 12)).gpu_data == "z's" and len(made) == 2
    cuda.reshape(DeviceNDArray((25,), np.float32, "w's"), (2, 12))     # (numba raises)
    assert made[-1] == ((2, 12), "w's")
    np.testing.assert_array_equal(cuda.reshape(np.arange(6.0), (2, 3)),
                                  np.arange(6.0).reshape(2, 3))
    if SIMULATOR:
        x = cuda.import_cuda().to_device(np.arange(6.0))
        np.testing.assert_array_equal(cuda.reshape(x, (3, 2)).copy_to_host(),
                                      np.arange(6.0).reshape(3, 2))


def test_direct_launches_left_to_numba_when_the_first_fails():
    """A cuda.core whose ``launch`` rejects the flattened arguments: that launch and
    every later one go through numba, and ``state`` says why."""
    d, direct, slow = _direct([None], _numbas_way)

    def failing(*args):
        raise TypeError("made up")
    d.launch = failing
    x = _FakeDeviceArray((4,), np.float32, 64)
    for _ in range(2):
        d[1, 32](x)
    assert len(slow) == 2
    assert d.state == "cuda.core's launch failed (TypeError: made up)"


def test_direct_launches_left_to_numba_when_it_flattens_otherwise():
    """A numba that passes other parameters (here: strides in elements) keeps every
    launch, and ``state`` says why."""
    def otherwise(ty, a, stream, retr, out):
        _numbas_way(ty, a, stream, retr, out)
        out[-1] //= a.dtype.itemsize
    d, direct, slow = _direct([None], otherwise)
    x = _FakeDeviceArray((4,), np.float32, 64)
    for _ in range(2):
        d[1, 32](x)
    assert not direct and len(slow) == 2
    assert d.state == "numba flattens the arguments otherwise"


@pytest.mark.skipif(SIMULATOR, reason="numba's launch path on a GPU")
def test_direct_launches_on_a_gpu():
    """On a GPU, every kernel of a CRF gradient (map kernels, reductions, a one-kernel
    scan) launches directly after its first launch, with the results of numba's path."""
    from gradc.codegen.cuda import DirectKernel
    U, A = rng.standard_normal((6, 5, 4)), rng.standard_normal((4, 4))
    g = gradc.grad(crf_batched, argnums=(0, 1), target="cuda")
    first = g(U, A)
    again = g(U, A)
    compiled = g.compile(U, A)
    kernels = [compiled.module.__dict__[k] for k in compiled.kernels]
    assert kernels and all(isinstance(k, DirectKernel) and k.state is True for k in kernels), \
        [getattr(k, "state", type(k).__name__) for k in kernels]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def _column_major(buf, rows, cols, ld):
    """The rows x cols matrix a BLAS reads from ``buf`` with leading dimension ld."""
    return buf[:ld * cols].reshape(cols, ld)[:, :rows].T


def _blas_gemm(op_a, op_b, m, n, k, a, lda, b, ldb, ldc):
    """What cuBLAS's gemm writes (column-major, leading dimension ldc) for
    ``C = op(A) op(B)`` of the flat buffers ``a`` and ``b``."""
    A = _column_major(a, m, k, lda) if op_a == 0 else _column_major(a, k, m, lda).T
    B = _column_major(b, k, n, ldb) if op_b == 0 else _column_major(b, n, k, ldb).T
    out = np.zeros(ldc * n)
    out.reshape(n, ldc)[:, :m] = (A @ B).T
    return out


@pytest.mark.parametrize("spec", ["ij,jk->ik", "ji,jk->ik", "ij,kj->ik", "ji,kj->ik",
                                  "ij,ik->jk", "ik,jk->ij"])
def test_gemm_plans_compute_the_einsum(spec):
    """``gemm_plan`` (2-D products straight through cuBLAS, column-major): the call it
    plans, run by a NumPy model of BLAS's gemm on the operands' C-order bytes, gives
    the einsum, for each placement of the summed letter (G3's three among them)."""
    from gradc.codegen.cuda import gemm_plan
    from gradc.prims.linalg import parse_spec
    sa, sb, so = parse_spec(spec)
    size = dict(zip(sorted(set(sa + sb)), (3, 5, 4)))
    x = rng.standard_normal([size[c] for c in sa])
    y = rng.standard_normal([size[c] for c in sb])
    op_y, op_x, m, n, k, ld_y, ld_x, ld_out = gemm_plan(spec, x.shape, y.shape)
    out = _blas_gemm(op_y, op_x, m, n, k, y.ravel(), ld_y, x.ravel(), ld_x, ld_out)
    want = np.einsum(spec, x, y)
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-12, atol=1e-12)


class _FakeBlas:
    """Just enough of CuPy and of its cuBLAS bindings for ``Gemm``, on NumPy buffers
    addressed by made-up device pointers: ``sgemm``/``dgemm``/``gemmEx`` compute as
    column-major BLAS does (``_blas_gemm``)."""

    def __init__(self, wrong=False):
        import types as pytypes
        self.memory, self.calls, self.wrong, self.mode = {}, [], wrong, 1
        blas = self

        class Array:
            def __init__(self, a):
                self.a = np.ascontiguousarray(a)
                self.data = pytypes.SimpleNamespace(ptr=blas.put(self.a))

            def astype(self, dtype):
                return Array(self.a.astype(dtype))
        self.Array = Array
        rng_ = np.random.default_rng(1)
        self.cuda = pytypes.SimpleNamespace(
            get_current_stream=lambda: pytypes.SimpleNamespace(ptr=0),
            device=pytypes.SimpleNamespace(get_cublas_handle=lambda: 7))
        self.random = pytypes.SimpleNamespace(default_rng=lambda seed: pytypes.SimpleNamespace(
            standard_normal=lambda shape, dtype: Array(rng_.standard_normal(shape))))
        self.einsum = lambda spec, x, y: Array(np.einsum(spec, x.a, y.a))
        self.asnumpy = lambda x: x.a.copy()
        self.empty = lambda shape, dtype: Array(np.zeros(shape, dtype))

    def put(self, a):
        ptr = 4096 * (len(self.memory) + 1)
        self.memory[ptr] = a
        return ptr

    def getPointerMode(self, handle):
        return self.mode

    def setPointerMode(self, handle, mode):
        self.mode = mode

    def _gemm(self, ctype, handle, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
              ldc):
        assert handle == 7 and self.mode == 0
        assert ctype.from_address(alpha).value == 1 and ctype.from_address(beta).value == 0
        out = _blas_gemm(op_a, op_b, m, n, k, self.memory[a].ravel(), lda,
                         self.memory[b].ravel(), ldb, ldc)
        if self.wrong:
            out = out[::-1]
        self.memory[c].reshape(-1)[:] = out[:self.memory[c].size]
        self.calls.append((m, n, k))

    def sgemm(self, *args):
        import ctypes
        self._gemm(ctypes.c_float, *args)

    def dgemm(self, *args):
        import ctypes
        self._gemm(ctypes.c_double, *args)


@pytest.mark.parametrize("wrong", [False, True])
def test_gemm_checks_each_plan_against_cupy(wrong):
    """``Gemm`` on a model of CuPy and cuBLAS: a plan passes its check (a product of
    small random operands computed both ways) and then computes the product into a
    new array straight through the binding; a binding that computes something else
    fails the check, and the product is left to CuPy (None)."""
    import types as pytypes
    from gradc.codegen import cuda
    blas = _FakeBlas(wrong)
    gemm = cuda.Gemm(blas)
    gemm.cublas = blas
    gemm.array_type = blas.Array
    x, y = blas.Array(rng.standard_normal((50, 60))), blas.Array(rng.standard_normal((70, 60)))
    for a in (x, y):
        a.dtype, a.shape = a.a.dtype, a.a.shape
        a.is_c_contiguous = lambda: True
        a.device_ctypes_pointer = pytypes.SimpleNamespace(value=a.data.ptr)

    def empty(shape, dtype):
        out = blas.Array(np.zeros(shape, dtype))
        out.device_ctypes_pointer = pytypes.SimpleNamespace(value=out.data.ptr)
        return out
    old = cuda.empty
    cuda.empty = empty
    try:
        out = gemm("ik,jk->ij", x, y, (50, 70))
    finally:
        cuda.empty = old
    plan = gemm.plans[("ik,jk->ij", (50, 60), (70, 60), "d", "highest")]
    if wrong:
        assert out is None and plan is False
        return
    assert blas.calls == [(41, 37, 43), (70, 50, 60)]       # (the check's, the product)
    np.testing.assert_allclose(out.a, x.a @ y.a.T, rtol=1e-12)
    assert blas.mode == 1                                   # (the handle's mode restored)


def test_gemm_plans_only_plain_products():
    from gradc.codegen.cuda import gemm_plan
    assert gemm_plan("ij,jk->ki", (2, 3), (3, 4)) is None        # (the result transposed)
    assert gemm_plan("bij,bjk->bik", (2, 2, 3), (2, 3, 4)) is None
    assert gemm_plan("ij,jk->ijk", (2, 3), (3, 4)) is None
    assert gemm_plan("ij,jk->ik", (2, 0), (0, 4)) is None        # (an empty sum)


@pytest.mark.skipif(SIMULATOR, reason="cuBLAS on a GPU")
def test_gemm_plans_checked_on_a_gpu():
    """On a GPU with CuPy, an MLP's products (three placements of the summed letter)
    go straight to cuBLAS: every plan passes its check against CuPy, and the gradient
    is the CPU's."""
    pytest.importorskip("cupy")
    from gradc.codegen import cuda
    f = lambda W1, W2, X: np.sum(np.tanh(X @ W1) @ W2)          # noqa: E731
    args = [rng.standard_normal(s) for s in ((5, 7), (7, 3), (6, 5))]
    got = gradc.grad(f, argnums=(0, 1), target="cuda")(*args)
    want = gradc.grad(f, argnums=(0, 1), target="numpy")(*args)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    plans = cuda.cupy_gemm.plans
    assert len(plans) >= 3 and all(plans.values()), plans


def test_repeated_calls_give_each_inputs_gradient():
    """The second and later calls (on a GPU, with the kernels specialized) compute from
    their own inputs: map kernels, a reduction and a scan."""
    def f(x, w):
        h, _ = gradc.scan(lambda h, x: (np.tanh(h * w + x), None), x[0], x[1:])
        return np.sum(h ** 2) + np.sum(np.sin(x) * x)
    g = gradc.grad(f, argnums=(0, 1), target="cuda")
    ref = gradc.grad(f, argnums=(0, 1), target="numpy")
    for seed in range(4):
        r = np.random.default_rng(seed)
        x, w = r.standard_normal((6, 5)), r.standard_normal(5)
        for got, want in zip(g(x, w), ref(x, w)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_device_array_calls_take_the_fast_path():
    """numba.cuda's device arrays are keyed like ndarrays (type, shape, dtype): later
    calls skip the general argument handling (about 50 µs of Python before, under 10
    after, launches aside) and still compute from their own inputs, for ``grad`` and
    ``jit``."""
    from gradc.codegen.cuda import import_cuda
    cuda = import_cuda()
    g = gradc.grad(rosen, target="cuda")
    j = gradc.jit(lambda x: (np.sin(x) * 2.0, np.sum(x)), target="cuda")
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(-1, 1, 40)
        d = cuda.to_device(x)
        np.testing.assert_allclose(g(d).copy_to_host(), gradc.grad(rosen)(x), rtol=1e-12)
        s, t = j(d)
        np.testing.assert_allclose(s.copy_to_host(), np.sin(x) * 2.0, rtol=1e-13)
        assert t == pytest.approx(np.sum(x), rel=1e-13)
    assert g._fast and j._fast


def test_no_gpu_and_no_simulator_is_a_gradc_error(monkeypatch):
    """(QA: numba.cuda's CudaSupportError came from inside the first launch.)"""
    import gradc.codegen.cuda as gcuda
    monkeypatch.setattr(gcuda, "_DEVICE_OK", False)
    with pytest.raises(gradc.UnsupportedError, match="found no CUDA GPU") as e:
        gradc.grad(rosen, target="cuda")(np.linspace(0.1, 0.9, 7))
    assert "test_cuda.py:" in str(e.value)
