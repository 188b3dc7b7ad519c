"""Compositing over packed rays: the reference (gradcheck) and each fast impl against it (values
and gradients of rgb, acc, depth, weights; early termination), on random packs, a structured
grid and a Plenoxels grid trained on lego_100. Triton runs in interpreter mode on the CPU."""

from __future__ import annotations

import pytest
import torch

from kernels.render import composite, early_termination, transmittance
from kernels.sample import sample_grid_sh
from tests.test_kernels_fixtures import DEVICE, ball_grid, ball_rays, fast_impls, lego_grid, march_grid, random_packed

# rays with no samples (first, middle, last), one sample, and long rays over several chunks
COUNTS = [0, 3, 37, 0, 1, 16, 17, 64, 0, 5, 70, 2, 0]
OUTS = ("rgb", "acc", "depth", "weights")


def _outputs_and_grads(impl, sigma, rgb, delta, t, ray, n_rays, bg, seed=3):
    leaves = [x.detach().to(DEVICE).requires_grad_() for x in (sigma, rgb, t, bg)]
    d = delta.detach().to(DEVICE).requires_grad_() if isinstance(delta, torch.Tensor) else delta
    out = composite(leaves[0], leaves[1], d, ray.to(DEVICE), n_rays, t=leaves[2], background=leaves[3],
                    impl=impl)
    g = torch.Generator().manual_seed(seed)
    loss = sum((out[k] * torch.randn(out[k].shape, generator=g, dtype=out[k].dtype).to(DEVICE)).sum()
               for k in OUTS)
    wrt = leaves + ([d] if isinstance(d, torch.Tensor) else [])
    grads = torch.autograd.grad(loss, wrt)
    return {k: out[k].detach().cpu() for k in OUTS}, [x.cpu() for x in grads]


def _assert_same(ref, got, rtol, atol):
    for k in OUTS:
        torch.testing.assert_close(got[0][k], ref[0][k], rtol=rtol, atol=atol, msg=f"output {k}")
    for i, (a, b) in enumerate(zip(ref[1], got[1])):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=f"gradient {i}")


def test_reference_gradcheck_float64_with_empty_rays():
    sigma, rgb, delta, t, ray = random_packed([2, 0, 4, 1, 0], seed=1)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)

    def f(s, c, dl, tt, b):
        out = composite(s, c, dl, ray, 5, t=tt, background=b, impl="torch")
        return out["rgb"], out["acc"], out["depth"], out["weights"]

    args = [x.clone().requires_grad_() for x in (sigma, rgb, delta, t, bg)]
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("impl", fast_impls())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("delta_kind", ["tensor", "float"])
def test_fast_matches_reference_on_random_packs(impl, dtype, delta_kind, small_blocks):
    sigma, rgb, delta, t, ray = random_packed(COUNTS, dtype=dtype, seed=2)
    if delta_kind == "float":
        delta = 0.07
    bg = torch.tensor([0.3, 0.6, 1.0], dtype=dtype)
    ref = _outputs_and_grads("torch", sigma, rgb, delta, t, ray, len(COUNTS), bg)
    got = _outputs_and_grads(impl, sigma, rgb, delta, t, ray, len(COUNTS), bg)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    _assert_same(ref, got, **tol)
    # empty rays: background, zero acc and depth
    empty = torch.tensor([i for i, c in enumerate(COUNTS) if c == 0])
    assert (got[0]["acc"][empty] == 0).all() and (got[0]["depth"][empty] == 0).all()


@pytest.mark.parametrize("impl", fast_impls())
def test_fast_gradcheck_float64(impl, small_blocks):
    """The closed-form backward of the fast kernel, checked against finite differences directly."""
    sigma, rgb, delta, t, ray = random_packed([3, 0, 20, 1], seed=4)
    sigma, rgb, delta, t, ray = (x.to(DEVICE) for x in (sigma, rgb, delta, t, ray))

    def f(s, c, dl, tt):
        out = composite(s, c, dl, ray, 4, t=tt, impl=impl)
        return out["rgb"], out["acc"], out["depth"], out["weights"]

    args = [x.clone().requires_grad_() for x in (sigma, rgb, delta, t)]
    assert torch.autograd.gradcheck(f, args, fast_mode=True)  # random projections: few launches


@pytest.mark.parametrize("impl", fast_impls())
def test_fast_outputs_without_depth_or_background(impl):
    sigma, rgb, _, _, ray = random_packed([4, 0, 9], dtype=torch.float32, seed=5)
    sigma, rgb, ray = sigma.to(DEVICE).requires_grad_(), rgb.to(DEVICE), ray.to(DEVICE)
    ref = composite(sigma, rgb, 0.1, ray, 3, impl="torch")
    got = composite(sigma, rgb, 0.1, ray, 3, impl=impl)
    assert "depth" not in got
    for k in ("rgb", "acc", "weights"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    g_ref, = torch.autograd.grad(ref["acc"].sum(), sigma)  # only one output used: others get no grad
    g_got, = torch.autograd.grad(got["acc"].sum(), sigma)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", fast_impls())
def test_early_termination_matches_reference_and_truncated_render(impl, small_blocks):
    grid = ball_grid()
    o, d = ball_rays()
    ray, t, coords = march_grid(grid, o, d, 0.02)
    sigma, rgb = sample_grid_sh(grid["density"], grid["sh"], coords, d, grid["resolution"],
                                links=grid["links"], ray_index=ray, impl="torch")
    sigma = torch.relu(sigma)
    n = o.shape[0]
    sd = (sigma * 0.02).to(DEVICE)
    keep_ref = early_termination(sd, ray.to(DEVICE), n, 1e-3, impl="torch").cpu()
    keep = early_termination(sd, ray.to(DEVICE), n, 1e-3, impl=impl).cpu()
    # transmittance compared as values; the mask may differ only where T sits at the threshold
    T_ref = transmittance(sigma * 0.02, ray, n)
    differ = keep != keep_ref
    if differ.any():
        assert (T_ref[differ] - 1e-3).abs().max().item() < 1e-6
    assert (~keep).sum() > 100  # many samples are cut
    k = keep_ref
    full = composite(sigma, rgb, 0.02, ray, n, t=t, impl="torch")
    cut = composite(sigma[k].to(DEVICE), rgb[k].to(DEVICE), 0.02, ray[k].to(DEVICE), n,
                    t=t[k].to(DEVICE), impl=impl)
    assert (full["rgb"] - cut["rgb"].cpu()).abs().max() < 1e-3
    cut_ref = composite(sigma[k], rgb[k], 0.02, ray[k], n, t=t[k], impl="torch")
    for key in ("rgb", "acc", "depth"):
        torch.testing.assert_close(cut[key].cpu(), cut_ref[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", fast_impls())
def test_fast_matches_reference_on_trained_lego_grid(impl):
    grid, o, d, step = lego_grid()
    d = d.clone()
    d[::16] = -d[::16]  # looking away from the object: these rays leave the box at once
    ray, t, coords = march_grid(grid, o, d, step)
    sigma, rgb = sample_grid_sh(grid["density"], grid["sh"], coords, d, grid["resolution"],
                                links=grid["links"], ray_index=ray, impl="torch")
    sigma = torch.relu(sigma)
    assert ray.shape[0] > 1000 and (torch.bincount(ray, minlength=256) == 0).any()
    bg = torch.ones(3)
    ref = _outputs_and_grads("torch", sigma, rgb, step, t, ray, 256, bg)
    got = _outputs_and_grads(impl, sigma, rgb, step, t, ray, 256, bg)
    _assert_same(ref, got, rtol=1e-4, atol=1e-5)


def test_auto_is_the_reference_on_cpu_and_bad_impls_are_clear():
    sigma, rgb, delta, t, ray = random_packed([3, 2], dtype=torch.float32)
    a = composite(sigma, rgb, delta, ray, 2, impl="auto")
    b = composite(sigma, rgb, delta, ray, 2, impl="torch")
    for k in ("rgb", "acc", "weights"):
        assert torch.equal(a[k], b[k])
    with pytest.raises(ValueError, match="unknown impl"):
        composite(sigma, rgb, delta, ray, 2, impl="jax")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            composite(sigma, rgb, delta, ray, 2, impl="cuda")


@pytest.mark.parametrize("impl", fast_impls())
def test_fast_with_no_samples_at_all(impl):
    sigma = torch.zeros(0, device=DEVICE, requires_grad=True)
    rgb = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    ray = torch.zeros(0, dtype=torch.long, device=DEVICE)
    bg = torch.tensor([0.1, 0.2, 0.3], device=DEVICE)
    out = composite(sigma, rgb, 0.1, ray, 4, t=torch.zeros(0, device=DEVICE), background=bg, impl=impl)
    torch.testing.assert_close(out["rgb"].cpu(), bg.cpu().expand(4, 3))
    assert out["acc"].abs().sum() == 0 and out["depth"].abs().sum() == 0
    g_sigma, g_rgb = torch.autograd.grad(out["rgb"].sum(), [sigma, rgb])
    assert g_sigma.shape == (0,) and g_rgb.shape == (0, 3)


def test_impl_switch_rules():
    from kernels._impl import resolve_impl, triton_available

    both = ("torch", "triton")
    # 'auto': Triton for float32/float64 CUDA tensors (when triton imports), else the reference
    assert resolve_impl("auto", "op", "cpu", both, torch.float32) == "torch"
    assert resolve_impl("auto", "op", "cuda", both, torch.float16) == "torch"
    assert resolve_impl("auto", "op", "cuda", ("torch",), torch.float32) == "torch"
    assert resolve_impl("auto", "op", "cuda", both, torch.float32) == ("triton" if triton_available() else "torch")
    with pytest.raises(ValueError, match="float32 or float64"):
        resolve_impl("triton", "op", "cuda", both, torch.bfloat16)
    with pytest.raises(ValueError, match="not provided"):
        resolve_impl("cuda", "op", "cuda", both, torch.float32)
    sigma, rgb, delta, t, ray = random_packed([3, 2], dtype=torch.float32)
    half = composite(sigma.half(), rgb.half(), 0.1, ray, 2, impl="auto")  # reference, in float16
    assert half["rgb"].dtype == torch.float16


def test_a_failed_cuda_build_is_reported_again_not_rebuilt(monkeypatch):
    """Each impl='cuda' test or benchmark case asks for the extension; a build that failed once must
    raise its error again at once, not compile for minutes per case."""
    import torch.utils.cpp_extension as ext

    from kernels.cuda import composite as cuda_composite

    calls = []

    def failing_load(**kw):
        calls.append(kw["name"])
        raise RuntimeError("nvcc: error: planted")

    monkeypatch.setattr(ext, "load", failing_load)
    cuda_composite.module.cache_clear()
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="planted"):
                cuda_composite.module()
    finally:
        cuda_composite.module.cache_clear()
    assert calls == ["nerf_harness_composite"]
