"""Direct convolutions: loop nests generated for one equation's shapes.

A convolution with wide output rows runs as a loop nest of its own instead of a patch
matrix and a BLAS product. Every extent is a literal in the generated source, so LLVM
unrolls the innermost loop (one output row) and keeps a block of output rows in vector
registers while it sums over channels and kernel taps. That needs two things LLVM is
not told by default: that the arrays do not overlap (the functions are compiled with
``noalias`` arguments, ``kernels.jit_noalias``; without it the accumulators are stored
and reloaded at every tap: 3.8 ms against 1.0 ms on one thread), and that indices are
non-negative (flat arrays indexed with unsigned integers). The work is split into
contiguous ranges of output rows (or kernel-gradient items) run on a thread pool
(``kernels.on_threads``), as BLAS would.

Measured on 2 cores (AMD EPYC, AVX-512), float64, 'same' padding:

* forward, N=8 C=16 32x32 O=32 3x3: 0.60 ms (127 GFLOP/s), against 1.65 ms for the
  patch matrix (0.45 ms) and OpenBLAS's product (1.2 ms);
* image gradient (C=32 -> 16): 0.99 ms, against 2.0 ms;
* kernel gradient: 1.14 ms, against 1.86 ms with its patch matrix.

Narrow rows do not fill a vector register (W=14: 0.11 ms direct, 0.07 ms with BLAS),
so the lowering keeps the BLAS form below ``MIN_WIDTH`` and for small problems.
Two output channels per block was the fastest choice in every case measured
(3, 4 and 8 were up to 3x slower: the accumulators no longer stay in registers).

Convolutions with options (``prims.conv``) take this form when grouped, of stride 1
(``direct_options``): the BLAS form's products, one per group of an (O/G, C/G·kh·kw)
matrix, are small.  Measured on 2 loaded cores (Intel Xeon, AVX-512; ymm code), N=8,
16 -> 32 channels, 32x32, 3x3, float64, one thread, direct against
``kernels.conv2d_general``: 4 groups 1.13 against 1.47 ms, 8 groups 0.63 against 0.89,
depthwise (16 -> 16) 0.35 against 0.68 (float32: 0.38 against 0.76 ms for 4 groups),
N=1 depthwise 8 channels 24x24 (41k multiply-adds): 0.033 against 0.024 ms on 2
threads (the thread pool's start), hence ``GROUPED_MIN_FLOPS``.  Strides read every
sh-th input (stride 2, 16 -> 32: 2.1 against 0.79 ms) and stay on BLAS, as do
ungrouped dilated convolutions (on that machine the direct float64 loops trailed
OpenBLAS for the plain convolution too: 4.1 against 2.7 ms).
"""
from __future__ import annotations

import numpy as np

MIN_WIDTH = 24          # output row length from which the direct form is used
MIN_FLOPS = 1 << 22     # ... and multiply-adds (below, thread start-up dominates)
BLOCK = 2               # output channels whose rows accumulate together
GROUPED_MIN_FLOPS = 1 << 19     # MIN_FLOPS of grouped convolutions (see below)


def direct(nn, cc, oo, ho, wo, kh, kw, dtype) -> bool:
    """Whether a convolution with these extents runs as a direct loop nest."""
    return (np.dtype(dtype) in (np.float32, np.float64) and wo >= MIN_WIDTH
            and nn * cc * oo * ho * wo * kh * kw >= MIN_FLOPS)


def direct_options(nn, cg, oo, ho, wo, kh, kw, dtype, stride, groups) -> bool:
    """Whether a convolution with options (``prims.conv``; ``cg`` input channels per
    group) runs as a direct loop nest: grouped ones of stride 1 (any dilation)."""
    return (groups > 1 and tuple(stride) == (1, 1)
            and np.dtype(dtype) in (np.float32, np.float64) and wo >= MIN_WIDTH
            and nn * cg * oo * ho * wo * kh * kw >= GROUPED_MIN_FLOPS)


def _dtype(dtype) -> str:
    return f"np.{np.dtype(dtype).name}"


def _u(expr) -> str:
    return f"np.uint64({expr})"


def rows(nn, ho) -> int:
    """The work items of a forward function: output rows."""
    return nn * ho


def items(nn, cc, oo, kh) -> int:
    """The work items of a kernel-gradient function: (channel, kernel row, block)."""
    return cc * kh * -(-oo // BLOCK)


def forward_function(name, nn, cc, hp, wp, oo, kh, kw, dtype, stride=(1, 1),
                     dilation=(1, 1), groups=1) -> str:
    """``name(ip, kt, out, lo, hi)``: out[n,o,y,x] = Σ ip[n,c,y+u,x+v] kt[c,u,v,o] for
    the output rows (n, y) numbered lo to hi; arrays flat: ``ip`` (N, C, hp, wp) already
    padded, ``kt`` the kernel as (C, kh, kw, O), ``out`` (N, O, ho, wo).  With options
    (``prims.conv``): the taps at ip[n, g·Cg+c, y·sh+u·dh, x·sw+v·dw], ``kt`` then
    (Cg, kh, kw, O), the output channels of group g in blocks of their own."""
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    cg, og = cc // groups, oo // groups
    full = og - og % BLOCK
    first_channel = "" if groups == 1 else f" + g * {cg}"
    first_block = "" if groups == 1 else f"g * {og}"

    def times(a, b):
        return a if b == 1 else f"{a} * {b}"
    row = f"{times('y', sh)} + {times('u', dh)}"      # y + u for a plain convolution
    column, step = times("v", dw), times("x", sw)

    def block(width, first, ind):
        taps = "; ".join(f"k{i} = kt[kb + {_u(i)}]" if i else "k0 = kt[kb]"
                         for i in range(width))
        sums = "\n".join(f"{ind}                acc[{i}, x] += k{i} * p" for i in range(width))
        stores = "\n".join(f"{ind}    out[dst + {_u(f'{i * ho * wo} + x' if i else 'x')}]"
                           f" = acc[{i}, x]" for i in range(width))
        return f"""{ind}acc[:] = 0
{ind}for c in range({cg}):
{ind}    for u in range({kh}):
{ind}        row = {_u(f'((n * {cc}{first_channel} + c) * {hp} + {row}) * {wp}')}
{ind}        for v in range({kw}):
{ind}            kb = {_u(f'((c * {kh} + u) * {kw} + v) * {oo} + {first}')}
{ind}            {taps}
{ind}            src = row + {_u(column)}
{ind}            for x in range({wo}):
{ind}                p = ip[src + {_u(step)}]
{sums}
{ind}dst = {_u(f'((n * {oo} + {first}) * {ho} + y) * {wo}')}
{ind}for x in range({wo}):
{stores}"""

    options = "" if (stride, dilation, groups) == ((1, 1), (1, 1), 1) else \
        f", stride {stride}, dilation {dilation}, {groups} groups"
    lines = ["@_k.jit_noalias",
             f"def {name}(ip, kt, out, lo, hi):",
             f"    # direct convolution: N={nn} C={cc} padded {hp}x{wp} -> O={oo} "
             f"{ho}x{wo}, kernel {kh}x{kw}{options}; output rows [lo, hi) of {nn * ho}",
             "    for r in range(lo, hi):",
             f"        n = r // {ho}",
             f"        y = r - n * {ho}",
             f"        acc = np.empty(({BLOCK}, {wo}), {_dtype(dtype)})"]
    ind = " " * 8
    if groups != 1:
        lines.append(f"        for g in range({groups}):")
        ind = " " * 12
    if full:
        lines.append(f"{ind}for ob in range({first_block}, {first_block} + {full}, {BLOCK}):"
                     if groups != 1 else f"{ind}for ob in range(0, {full}, {BLOCK}):")
        lines.append(block(BLOCK, "ob", ind + " " * 4))
    if og % BLOCK:
        rest = str(full) if groups == 1 else first_block + (f" + {full}" if full else "")
        lines.append(block(og % BLOCK, rest, ind))
    return "\n".join(lines)


def kernel_grad_function(name, nn, cc, hp, wp, oo, kh, kw, dtype) -> str:
    """``name(ip, e, g, lo, hi)``: g[c,o,u,v] = Σ_{n,y,x} ip[n,c,y+u,x+v] e[n,o,y,x] for
    the items lo to hi, each one (c, u, block of output channels); arrays flat: ``ip``
    (N, C, hp, wp) padded, ``e`` (N, O, ho, wo), ``g`` (C, O, kh, kw).  The sums over
    rows run in vectors along x, reduced once at the end."""
    ho, wo = hp - kh + 1, wp - kw + 1
    blocks = -(-oo // BLOCK)

    def block(width, ind):
        reads = "; ".join(f"e{i} = e[eb + {_u(f'{i * ho * wo} + x' if i else 'x')}]"
                          for i in range(width))
        sums = "\n".join(f"{ind}                acc[{i}, v, x] += e{i} * ip[row + {_u('v + x')}]"
                         for i in range(width))
        return f"""{ind}acc[:] = 0
{ind}for n in range({nn}):
{ind}    for y in range({ho}):
{ind}        row = {_u(f'((n * {cc} + c) * {hp} + y + u) * {wp}')}
{ind}        eb = {_u(f'((n * {oo} + ob) * {ho} + y) * {wo}')}
{ind}        for v in range({kw}):
{ind}            for x in range({wo}):
{ind}                {reads}
{sums}
{ind}for i in range({width}):
{ind}    for v in range({kw}):
{ind}        s = 0.0
{ind}        for x in range({wo}):
{ind}            s += acc[i, v, x]
{ind}        g[{_u(f'((c * {oo} + ob + i) * {kh} + u) * {kw} + v')}] = s"""

    lines = ["@_k.jit_noalias",
             f"def {name}(ip, e, g, lo, hi):",
             f"    # direct kernel gradient: N={nn} C={cc} padded {hp}x{wp}, O={oo} "
             f"{ho}x{wo} -> kernel {kh}x{kw}; items [lo, hi) of {items(nn, cc, oo, kh)}",
             "    for item in range(lo, hi):",
             f"        c = item // {kh * blocks}",
             f"        u = (item - c * {kh * blocks}) // {blocks}",
             f"        ob = (item - c * {kh * blocks} - u * {blocks}) * {BLOCK}",
             f"        acc = np.empty(({BLOCK}, {kw}, {wo}), {_dtype(dtype)})"]
    if oo % BLOCK:
        lines.append(f"        if ob + {BLOCK} <= {oo}:")
        lines.append(block(BLOCK, " " * 12))
        lines.append("        else:")
        lines.append(block(oo % BLOCK, " " * 12))
    else:
        lines.append(block(BLOCK, " " * 8))
    return "\n".join(lines)
