"""``gradc.conv2d``'s PyTorch options: ``stride``, ``dilation``, ``groups``.

Values against loops written from the definition (``test_prims.conv_ref_definition``:
O[n, g·O/G+o, y, x] = Σ_{c,u,v} I[n, g·C/G + c, y·sh + u·dh − top, x·sw + v·dw − left]
K[g·O/G+o, c, u, v]), gradients in both arguments against central differences of that
reference (not of gradc), jvp against vjp (⟨u, J v⟩ = ⟨Jᵀ u, v⟩), vmap, the CPU
target's code for them (``kernels.conv2d_general``), and the plain convolution's IR,
which the options must leave as it was.  (The CUDA target: the option rows of
``test_prims.ROWS`` run in ``test_cuda.py``, with a program in its ``PROGRAMS``.  Bad
options: ``test_errors.py``.)
"""
from __future__ import annotations

import numpy as np
import pytest

import gradc
from test_prims import conv_ref_definition

# (image shape, kernel shape, padding as given, explicit pads, stride, dilation, groups)
CASES = {
    "stride": ((2, 3, 7, 6), (4, 3, 3, 2), ((1, 0), (2, 1)), None, (2, 1), (1, 1), 1),
    "stride-3-valid": ((1, 2, 8, 9), (2, 2, 2, 3), "valid", ((0, 0), (0, 0)), (3, 2),
                       (1, 1), 1),
    "dilation-same": ((1, 2, 6, 7), (3, 2, 3, 2), "same", ((2, 2), (1, 2)), (1, 1), (2, 3),
                      1),
    "dilation-same-even": ((1, 1, 6, 5), (2, 1, 2, 4), "same", ((1, 1), (1, 2)), (1, 1),
                           (2, 1), 1),
    "groups": ((2, 4, 5, 5), (6, 2, 3, 3), 1, ((1, 1), (1, 1)), (1, 1), (1, 1), 2),
    "depthwise": ((1, 3, 5, 4), (3, 1, 2, 2), (1, 0), ((1, 1), (0, 0)), (1, 1), (1, 1), 3),
    "all": ((2, 4, 9, 8), (6, 2, 2, 3), ((1, -1), (0, 2)), None, (2, 3), (3, 1), 2),
    "stride-pair-pytorch-padding": ((1, 2, 7, 7), (2, 2, 3, 3), (1, 2), ((1, 1), (2, 2)),
                                    (2, 2), (1, 1), 1),
}


def _case(name, rng):
    image_shape, kernel_shape, padding, pads, stride, dilation, groups = CASES[name]
    pads = padding if pads is None else pads
    image, kernel = rng.standard_normal(image_shape), rng.standard_normal(kernel_shape)

    def f(i, k):
        return gradc.conv2d(i, k, padding, stride=stride, dilation=dilation, groups=groups)

    def ref(i, k):
        return conv_ref_definition(i, k, pads, stride, dilation, groups)
    return f, ref, image, kernel


@pytest.mark.parametrize("name", CASES)
def test_values_against_the_definition(name):
    rng = np.random.default_rng(1)
    f, ref, image, kernel = _case(name, rng)
    want = ref(image, kernel)
    np.testing.assert_allclose(f(image, kernel), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gradc.jit(f, target="cpu")(image, kernel), want,
                               rtol=1e-12, atol=1e-12)


def _central_differences(fn, x, eps=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        g[idx] = (fn(up) - fn(down)) / (2 * eps)
    return g


@pytest.mark.parametrize("name", CASES)
def test_gradients_against_central_differences(name):
    rng = np.random.default_rng(2)
    f, ref, image, kernel = _case(name, rng)
    weights = rng.standard_normal(ref(image, kernel).shape)

    def loss(i, k):
        return np.sum(np.tanh(f(i, k)) * weights)

    def loss_ref(i, k):
        return np.sum(np.tanh(ref(i, k)) * weights)
    want_image = _central_differences(lambda i: loss_ref(i, kernel), image)
    want_kernel = _central_differences(lambda k: loss_ref(image, k), kernel)
    for target in ("numpy", "cpu"):
        d_image, d_kernel = gradc.grad(loss, argnums=(0, 1), target=target)(image, kernel)
        np.testing.assert_allclose(d_image, want_image, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(d_kernel, want_kernel, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["stride", "dilation-same", "groups", "all"])
def test_jvp_agrees_with_vjp(name):
    """⟨u, J v⟩ = ⟨Jᵀ u, v⟩ for random directions v in (image, kernel) and u in the
    output, to rounding."""
    rng = np.random.default_rng(3)
    f, _, image, kernel = _case(name, rng)
    vi, vk = rng.standard_normal(image.shape), rng.standard_normal(kernel.shape)
    out, jv = gradc.jvp(f, (image, kernel), (vi, vk))
    u = rng.standard_normal(np.shape(out))
    _, vjp_fn = gradc.vjp(f, image, kernel)
    ui, uk = vjp_fn(u)
    lhs = np.sum(u * jv)
    rhs = np.sum(ui * vi) + np.sum(uk * vk)
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs)), (lhs, rhs)


def test_vmap_over_images_and_over_kernels():
    """Images batched: one larger batch (the options carried along); kernels batched:
    a loop.  Both against the examples one by one."""
    rng = np.random.default_rng(4)
    images = rng.standard_normal((3, 2, 4, 7, 6))
    kernels = rng.standard_normal((3, 6, 2, 2, 3))

    def conv(i, k):
        return gradc.conv2d(i, k, ((1, 0), (0, 2)), stride=(2, 1), dilation=(1, 2), groups=2)
    want = np.stack([conv_ref_definition(i, kernels[0], ((1, 0), (0, 2)), (2, 1), (1, 2), 2)
                     for i in images])
    np.testing.assert_allclose(gradc.vmap(conv, in_axes=(0, None))(images, kernels[0]), want,
                               rtol=1e-12, atol=1e-12)
    want = np.stack([conv_ref_definition(images[0], k, ((1, 0), (0, 2)), (2, 1), (1, 2), 2)
                     for k in kernels])
    np.testing.assert_allclose(gradc.vmap(conv, in_axes=(None, 0))(images[0], kernels), want,
                               rtol=1e-12, atol=1e-12)
    # per-example kernel gradients (vmap of grad)
    loss = lambda k, i: np.sum(np.tanh(conv(i, k)))  # noqa: E731
    got = gradc.vmap(gradc.grad(loss), in_axes=(None, 0))(kernels[0], images)
    for g, i in zip(got, images):
        np.testing.assert_allclose(g, gradc.grad(loss)(kernels[0], i), rtol=1e-12, atol=1e-12)


def test_integer_convolutions_with_options_on_the_cpu_target():
    """(``gradc.conv2d`` computes in floats; the primitive keeps integers: direct loops.)"""
    rng = np.random.default_rng(5)
    image = rng.integers(-4, 5, (2, 4, 7, 6))
    kernel = rng.integers(-4, 5, (2, 2, 2, 3))
    f = lambda i, k: gradc.ops.conv2d(i, k, ((1, 0), (0, 1)), stride=(1, 2),  # noqa: E731
                                      dilation=(2, 2), groups=2)
    want = conv_ref_definition(image, kernel, ((1, 0), (0, 1)), (1, 2), (2, 2), 2)
    got = gradc.jit(f, target="cpu")(image, kernel)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert "_k.conv2d_general_loops(" in gradc.jit(f, target="cpu").source(image, kernel)


def test_same_padding_keeps_the_size_with_dilation():
    """PyTorch's 'same': dh·(KH-1) rows of zeros, the odd one at the bottom."""
    rng = np.random.default_rng(6)
    for kh, kw, dh, dw in ((3, 3, 2, 2), (2, 4, 3, 1), (1, 2, 1, 5)):
        image, kernel = rng.standard_normal((1, 1, 9, 8)), rng.standard_normal((1, 1, kh, kw))
        out = gradc.conv2d(image, kernel, "same", dilation=(dh, dw))
        assert out.shape == image.shape
        th, tw = dh * (kh - 1), dw * (kw - 1)
        want = conv_ref_definition(image, kernel, ((th // 2, th - th // 2),
                                                   (tw // 2, tw - tw // 2)), (1, 1), (dh, dw))
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_options_of_one_leave_the_plain_convolution_as_it_was():
    """stride=1, dilation=(1, 1), groups=1 given explicitly trace to the equation of a
    plain convolution (no option params), and so do its derivatives' convolutions:
    their graphs and generated code are those of before the options existed."""
    rng = np.random.default_rng(7)
    image, kernel = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3))

    def loss(i, k, **options):
        return np.sum(np.tanh(gradc.conv2d(i, k, "same", **options)))
    plain = gradc.grad(loss, argnums=(0, 1), target="cpu")
    explicit = gradc.grad(lambda i, k: loss(i, k, stride=1, dilation=(1, 1), groups=1),
                          argnums=(0, 1), target="cpu")
    graph = explicit.graph(image, kernel)
    convs = [e for e in graph.eqns if e.prim.name.startswith("conv2d")]
    assert len(convs) == 3 and all(set(e.params) == {"padding"} for e in convs)
    assert str(graph) == str(plain.graph(image, kernel))
    assert "conv2d_over_batch" in str(graph)      # (the kernel gradient's rewrite)


@pytest.mark.parametrize("groups", [1, 2])
def test_kernel_gradients_with_options_are_rewritten_over_the_batch(groups):
    """``passes.conv.over_batch`` on the kernel gradient of a strided, dilated (grouped)
    convolution: a ``conv2d_over_batch`` with the forward convolution's options (the
    transpose rule's conv2d has stride and dilation exchanged), computed by
    ``kernels.conv2d_general_kernel_grad``; the primitive's own implementation (what
    the interpreter would run) gives the same."""
    from gradc.passes.conv import conv2d_over_batch_p
    rng = np.random.default_rng(8)
    image = rng.standard_normal((2, 4, 7, 8))
    kernel = rng.standard_normal((4, 4 // groups, 3, 2))
    options = dict(stride=(2, 3), dilation=(1, 2), groups=groups)
    g = gradc.grad(lambda i, k: np.sum(np.tanh(gradc.conv2d(i, k, 1, **options))),
                   argnums=1, target="cpu")
    graph = g.graph(image, kernel)
    (eqn,) = [e for e in graph.eqns if e.prim.name == "conv2d_over_batch"]
    assert eqn.params == {"padding": ((1, 1), (1, 0)), "stride": (2, 3),
                          "dilation": (1, 2)} | ({"groups": 2} if groups == 2 else {})
    assert [e.prim.name for e in graph.eqns].count("conv2d") == 1     # (the forward one)
    assert "_k.conv2d_general_kernel_grad(" in g.source(image, kernel)
    want = gradc.grad(lambda i, k: np.sum(np.tanh(gradc.conv2d(i, k, 1, **options))),
                      argnums=1, target="numpy")(image, kernel)
    np.testing.assert_allclose(g(image, kernel), want, rtol=1e-12, atol=1e-12)
    cot = rng.standard_normal((2, 4, 4, 3))
    direct = conv2d_over_batch_p.impl(image, cot, **eqn.params)
    _, vjp_fn = gradc.vjp(lambda k: gradc.conv2d(image, k, 1, **options), kernel,
                          target="numpy")
    np.testing.assert_allclose(np.transpose(direct, (1, 0, 2, 3)), vjp_fn(cot)[0],
                               rtol=1e-12, atol=1e-12)


def test_against_torch_when_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    image, kernel = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 2, 3))
    options = dict(stride=(2, 3), dilation=(3, 1), groups=2)
    ti = torch.from_numpy(image).requires_grad_(True)
    tk = torch.from_numpy(kernel).requires_grad_(True)
    tout = torch.nn.functional.conv2d(ti, tk, padding=(1, 2), **options)
    weights = rng.standard_normal(tuple(tout.shape))
    torch.sum(torch.tanh(tout) * torch.from_numpy(weights)).backward()
    np.testing.assert_allclose(gradc.conv2d(image, kernel, (1, 2), **options),
                               tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    grads = gradc.grad(lambda i, k: np.sum(np.tanh(gradc.conv2d(i, k, (1, 2), **options))
                                           * weights), argnums=(0, 1))(image, kernel)
    np.testing.assert_allclose(grads[0], ti.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[1], tk.grad.numpy(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------ image gradients of strided convs

def _image_gradient_definition(cot, kernel, image_shape, padding, stride, dilation, groups):
    """dI[n, g·C/G + c, iy, ix] = Σ cot[n, o, y, x] K[o, c, u, v] over the (o, y, x, u, v)
    with iy = y·sh + u·dh - top, ix = x·sw + v·dw - left (the transpose of
    ``conv_ref_definition``, from the definition)."""
    (top, _), (left, _) = padding
    (sh, sw), (dh, dw) = stride, dilation
    out = np.zeros(image_shape)
    n_, o_, ho, wo = cot.shape
    _, cg, kh, kw = kernel.shape
    h, w = image_shape[2:]
    for n in range(n_):
        for o in range(o_):
            g = o // (o_ // groups)
            for y in range(ho):
                for x in range(wo):
                    for u in range(kh):
                        for v in range(kw):
                            iy, ix = y * sh + u * dh - top, x * sw + v * dw - left
                            if 0 <= iy < h and 0 <= ix < w:
                                out[n, g * cg:(g + 1) * cg, iy, ix] += (cot[n, o, y, x]
                                                                        * kernel[o, :, u, v])
    return out


# (image shape, kernel shape, pads, stride, dilation, groups): strides that do not divide
# the padded size, negative (cropping) and uneven padding, dilation with stride, groups
STRIDED = {
    "2x2-same": ((2, 3, 8, 8), (4, 3, 3, 3), ((1, 1), (1, 1)), (2, 2), (1, 1), 1),
    "3x2-odd": ((1, 2, 11, 9), (3, 2, 3, 2), ((2, 0), (1, 2)), (3, 2), (1, 1), 1),
    "2x3-remainder": ((2, 2, 10, 13), (2, 2, 2, 3), ((0, 1), (0, 0)), (2, 3), (1, 1), 1),
    "stride-dilation": ((1, 2, 12, 11), (3, 2, 3, 3), ((2, 1), (3, 0)), (2, 3), (2, 1), 1),
    "stride-groups": ((2, 6, 9, 7), (4, 3, 2, 3), ((1, 0), (1, 1)), (2, 2), (1, 2), 2),
    "depthwise-stride": ((1, 4, 7, 8), (8, 1, 3, 3), ((1, 1), (1, 1)), (3, 2), (1, 1), 4),
    "crop": ((1, 2, 9, 10), (2, 2, 3, 2), ((-1, 2), (2, -2)), (2, 2), (1, 2), 1),
    "kernel-wider-than-stride": ((1, 1, 9, 9), (2, 1, 5, 4), ((2, 2), (1, 3)), (2, 3),
                                 (1, 1), 1),
    "stride-larger-than-kernel": ((2, 2, 10, 11), (2, 2, 2, 2), ((0, 0), (1, 0)), (4, 3),
                                  (1, 1), 1),
    "one-row-out": ((1, 2, 3, 9), (2, 2, 3, 2), ((0, 0), (0, 0)), (2, 2), (1, 1), 1),
}


def _strided(name, rng, dtype=np.float64):
    image_shape, kernel_shape, pads, stride, dilation, groups = STRIDED[name]
    image = rng.standard_normal(image_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)

    def f(i, k):
        return gradc.conv2d(i, k, pads, stride=stride, dilation=dilation, groups=groups)
    return f, image, kernel, (pads, stride, dilation, groups)


@pytest.mark.parametrize("name,dtype", [(name, np.float64) for name in STRIDED] + [
    (name, np.float32) for name in ("3x2-odd", "stride-groups", "crop")])
def test_image_gradients_of_strided_convolutions(name, dtype):
    """vjp with respect to the image and the kernel on both targets against the
    definition; on the CPU target the image gradient is a ``conv2d_dilated_input`` (no
    zero-inserted cotangent: no ``pad`` with a step left in the graph)."""
    rng = np.random.default_rng(10)
    f, image, kernel, (pads, stride, dilation, groups) = _strided(name, rng, dtype)
    out = conv_ref_definition(image.astype(np.float64), kernel.astype(np.float64), pads,
                              stride, dilation, groups)
    cot = rng.standard_normal(out.shape).astype(dtype)
    want_image = _image_gradient_definition(cot, kernel, image.shape, pads, stride,
                                            dilation, groups)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for target in ("numpy", "cpu"):
        value, vjp_fn = gradc.vjp(f, image, kernel, target=target)
        d_image, d_kernel = vjp_fn(cot)
        assert d_image.dtype == dtype and d_kernel.dtype == dtype
        np.testing.assert_allclose(value, out, rtol=tol, atol=tol * 10)
        np.testing.assert_allclose(d_image, want_image, rtol=tol, atol=tol * 10)
    # (the cotangent computed, not a constant: a small pad of one would be folded)
    graph = gradc.grad(lambda i, k: np.sum(np.tanh(f(i, k)) * cot), target="cpu")
    source = graph.source(image, kernel)
    assert "_k.conv2d_dilated_input(" in source
    assert not any(e.prim.name == "pad" for e in graph.graph(image, kernel).eqns)


@pytest.mark.parametrize("name", ["2x2-same", "stride-dilation", "crop",
                                  "depthwise-stride"])
def test_strided_image_gradients_against_central_differences(name):
    rng = np.random.default_rng(11)
    f, image, kernel, (pads, stride, dilation, groups) = _strided(name, rng)
    weights = rng.standard_normal(conv_ref_definition(image, kernel, pads, stride,
                                                      dilation, groups).shape)
    want = _central_differences(lambda i: np.sum(np.tanh(conv_ref_definition(
        i, kernel, pads, stride, dilation, groups)) * weights), image)
    got = gradc.grad(lambda i, k: np.sum(np.tanh(f(i, k)) * weights), target="cpu")(
        image, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["3x2-odd", "stride-groups", "kernel-wider-than-stride"])
def test_strided_jvp_agrees_with_vjp_on_the_cpu_target(name):
    """⟨u, J v⟩ = ⟨Jᵀ u, v⟩, the vjp's image gradient a ``conv2d_dilated_input``."""
    rng = np.random.default_rng(12)
    f, image, kernel, _ = _strided(name, rng)
    vi, vk = rng.standard_normal(image.shape), rng.standard_normal(kernel.shape)
    out, jv = gradc.jvp(f, (image, kernel), (vi, vk), target="cpu")
    u = rng.standard_normal(np.shape(out))
    ui, uk = gradc.vjp(f, image, kernel, target="cpu")[1](u)
    lhs, rhs = np.sum(u * jv), np.sum(ui * vi) + np.sum(uk * vk)
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs)), (lhs, rhs)


def test_second_derivatives_through_a_strided_convolution():
    """A Hessian-vector product (the strided image gradient differentiated again) on
    the CPU target against the interpreter."""
    rng = np.random.default_rng(13)
    f, image, kernel, _ = _strided("stride-dilation", rng)

    def loss(i):
        return np.sum(np.tanh(f(i, kernel)) ** 2)
    v = rng.standard_normal(image.shape)
    got = gradc.hvp(loss, (image,), (v,), target="cpu")
    want = gradc.hvp(loss, (image,), (v,), target="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_a_dilated_input_with_offsets_is_folded_into_the_padding():
    """``passes.conv.dilated_inputs`` on a pad written by hand: the operand placed at an
    offset with steps, trailing zeros, then a (dilated, grouped) conv2d that crops."""
    from gradc.prims.index import pad
    rng = np.random.default_rng(14)
    x, kernel = rng.standard_normal((2, 4, 4, 5)), rng.standard_normal((6, 2, 3, 2))

    def f(x, k):
        spread = pad(x, (2, 4, 13, 12), ((0, 2, 1), (0, 4, 1), (2, 12, 3), (1, 10, 2)))
        return gradc.conv2d(spread, k, ((-1, 2), (1, -2)), dilation=(2, 1), groups=2)
    want = f(x, kernel)
    compiled = gradc.jit(f, target="cpu")
    np.testing.assert_allclose(compiled(x, kernel), want, rtol=1e-12, atol=1e-12)
    assert "_k.conv2d_dilated_input(" in compiled.source(x, kernel)


# ------------------------------------------------------ grouped convolutions as loop nests

# (image shape, kernel shape, pads, dilation, groups): large enough for the direct form
# (``convgen.direct_options``); an odd number of output channels per group (a block of
# one after the pairs), dilation, cropping
GROUPED = {
    "groups-4": ((8, 8, 24, 26), (8, 2, 3, 3), ((1, 1), (1, 1)), (1, 1), 4),
    "odd-per-group-dilated": ((8, 6, 30, 33), (9, 2, 3, 2), ((2, 0), (1, 3)), (2, 3), 3),
    "depthwise-cropped": ((10, 8, 30, 32), (8, 1, 3, 3), ((-1, 2), (2, -1)), (1, 1), 8),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", GROUPED)
def test_grouped_convolutions_as_direct_loop_nests(name, dtype):
    """Forward and both gradients on the CPU target against the interpreter, the forward
    convolution and the image gradient (a grouped convolution too) as direct loop nests
    (``convgen.forward_function`` with groups and dilation)."""
    from gradc.codegen import convgen
    rng = np.random.default_rng(15)
    image_shape, kernel_shape, pads, dilation, groups = GROUPED[name]
    image = rng.standard_normal(image_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)

    def f(i, k):
        return gradc.conv2d(i, k, pads, dilation=dilation, groups=groups)
    weights = rng.standard_normal(np.shape(f(image, kernel))).astype(dtype)

    def loss(i, k):
        return np.sum(np.tanh(f(i, k)) * weights)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    want = conv_ref_definition(image, kernel, pads, (1, 1), dilation, groups)
    compiled = gradc.jit(f, target="cpu")
    np.testing.assert_allclose(compiled(image, kernel), want, rtol=tol, atol=tol)
    assert "direct convolution:" in compiled.source(image, kernel)
    grad = gradc.grad(loss, argnums=(0, 1), target="cpu")
    for got, ref in zip(grad(image, kernel),
                        gradc.grad(loss, argnums=(0, 1), target="numpy")(image, kernel)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    assert grad.source(image, kernel).count("direct convolution:") == 2
    # the plain convolution's loop nest is what it was before the options
    plain = convgen.forward_function("f", 2, 3, 30, 34, 5, 3, 3, dtype)
    assert plain == convgen.forward_function("f", 2, 3, 30, 34, 5, 3, 3, dtype, (1, 1),
                                             (1, 1), 1)
    assert "g * " not in plain and "x * " not in plain


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_forms_of_kernels_conv2d_general(dtype):
    """``kernels.conv2d_general`` against the interpreter's convolution: patch matrices
    (more output than input channels, or strides) and, for stride 1 with fewer output
    channels, a product with the images added at the taps (``conv2d_dilated_input``),
    with cropping, uneven padding, dilation and groups."""
    from gradc.codegen import kernels
    from gradc.prims.conv import _conv2d_impl
    rng = np.random.default_rng(16)
    for image_shape, kernel_shape, pads, stride, dilation, groups in [
            ((2, 6, 9, 11), (2, 6, 3, 2), ((2, 1), (0, 3)), (1, 1), (2, 3), 1),
            ((2, 6, 9, 11), (3, 2, 3, 3), ((-1, 2), (2, -1)), (1, 1), (2, 1), 3),
            ((1, 4, 7, 8), (2, 4, 2, 3), ((0, 0), (1, 1)), (1, 2), (2, 1), 1),
            ((1, 2, 7, 8), (6, 2, 2, 3), ((1, 1), (1, 1)), (1, 1), (2, 2), 1)]:
        image = rng.standard_normal(image_shape).astype(dtype)
        kernel = rng.standard_normal(kernel_shape).astype(dtype)
        (top, bottom), (left, right) = pads
        got = kernels.conv2d_general(image, kernel, top, bottom, left, right, *stride,
                                     *dilation, groups)
        want = _conv2d_impl(image, kernel, pads, stride=stride, dilation=dilation,
                            groups=groups)
        assert got.dtype == dtype
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ------------------------------------------------------ bias and padding modes (PyTorch's)

_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", ["zeros", *_MODES])
def test_bias_and_padding_modes_against_the_definition(mode):
    """``padding_mode`` pads the image as ``np.pad``'s reflect / edge / wrap (PyTorch's
    reflect / replicate / circular) before a convolution without padding, cropping
    kept; ``bias`` adds one value per output channel.  Values (interpreter and CPU),
    gradients in the image, kernel and bias against central differences."""
    rng = np.random.default_rng(11)
    image, kernel = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((6, 2, 3, 2))
    bias = rng.standard_normal(6)
    padding, stride, dilation = ((2, -1), (1, 1)), (2, 1), (1, 2)

    def f(i, k, b):
        return gradc.conv2d(i, k, padding, stride=stride, dilation=dilation, groups=2,
                            bias=b, padding_mode=mode)

    def ref(i, k, b):
        grown = np.pad(i, ((0, 0), (0, 0), (2, 0), (1, 1)),
                       mode=_MODES.get(mode, "constant"))
        out = conv_ref_definition(grown, k, ((0, -1), (0, 0)), stride, dilation, 2)
        return out + b[None, :, None, None]

    want = ref(image, kernel, bias)
    target = "cpu" if mode == "reflect" else "numpy"    # (one mode compiled: CI's time)
    np.testing.assert_allclose(gradc.jit(f, target=target)(image, kernel, bias), want,
                               rtol=1e-12, atol=1e-12)
    weights = rng.standard_normal(want.shape)

    def loss(i, k, b):
        return np.sum(np.tanh(f(i, k, b)) * weights)

    grads = gradc.grad(loss, argnums=(0, 1, 2), target=target)(image, kernel, bias)
    args = [image, kernel, bias]
    for j, g in enumerate(grads):
        def partial(v, j=j):
            a = list(args)
            a[j] = v
            return np.sum(np.tanh(ref(*a)) * weights)
        np.testing.assert_allclose(g, _central_differences(partial, args[j]),
                                   rtol=1e-6, atol=1e-8)


def test_bias_and_padding_mode_errors():
    image, kernel = np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))
    with pytest.raises(gradc.ShapeError, match=r"bias must have shape \(3,\)"):
        gradc.conv2d(image, kernel, 1, bias=np.ones(2))
    with pytest.raises(gradc.ArgumentError, match="padding_mode must be one of"):
        gradc.conv2d(image, kernel, 1, padding_mode="mirror")
    with pytest.raises(gradc.ArgumentError, match="reflection pads fewer rows"):
        gradc.conv2d(image, kernel, 4, padding_mode="reflect")
