"""Kernel benchmarks: each op x implementation x size, timed by pytest-benchmark (`make bench`).

Ops (one call = what a Plenoxels training step does with the op):
- composite_fwd_bwd: packed compositing of R rays x N samples (rgb, acc, depth, weights) with a
  float step, then gradients to sigma and rgb from random output gradients.
- sample_grid_sh_fwd / sample_grid_sh_fwd_bwd: trilinear density + SH (degree 2, 27 + 1 channels)
  of a dense G^3 grid at R rays x 128 samples marched along random lines (8192 x 128 = 1M
  samples; 512 x 128 on a CPU), fused with SH evaluation and the sigmoid; fwd_bwd adds the
  scatter of gradients to density and SH.
- tv_fwd_bwd: TV (l2) of the 27 SH channels of a dense G^3 grid over every voxel, or over 131072
  voxels drawn at random (as the Plenoxels loss draws a fraction each step); rows and neighbour
  rows precomputed, as the loss passes them; value and gradient.

Implementations: torch (the reference, eager), compile (torch.compile of the reference), triton,
cuda (compositing only), nerfacc (compositing only, GPU). Every case records
`extra_info` = {op, impl, size, bytes, device}: `bytes` is what must move (inputs read once + outputs
written, forward and backward; for grids, the distinct rows touched), so bytes / time is the
effective bandwidth. On a machine without CUDA only torch and compile run, at the smallest size
of each op; every other case is skipped with its reason.
"""

from __future__ import annotations

import functools
import os
import platform

import pytest
import torch

from kernels import _impl
from kernels.render import composite
from kernels.sample import sample_grid_sh
from kernels.tv import tv_from_rows, tv_neighbours
from tests.bench.nerfacc_peer import load_nerfacc

pytestmark = pytest.mark.bench

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
IMPLS = ("torch", "compile", "triton", "cuda", "nerfacc")
RAYS_SAMPLES = [(4096, 64), (65536, 128), (262144, 128), (1048576, 128)]
SAMPLE_STEPS = 128
# (grid resolution, rays of SAMPLE_STEPS samples): 1M samples on a GPU; the first also on a CPU
SAMPLE_SIZES = [(128, 512), (128, 8192), (256, 8192), (512, 8192)]
# (grid resolution, voxels drawn, None = every voxel): the first also on a CPU
TV_SIZES = [(128, 131072), (128, None), (256, None), (512, None)]
F32, I64 = 4, 8


def _device_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} thread(s)"


def _skip_reason(impl: str, op: str, smallest: bool) -> str | None:
    if impl in ("cuda", "nerfacc") and not op.startswith("composite"):
        return f"impl {impl!r} has no {op} kernel"
    if not CUDA:
        if impl in ("torch", "compile"):
            return None if smallest else "CPU-only machine: torch and compile run at the smallest size only"
        if impl == "triton":
            return "impl 'triton' needs a CUDA GPU (the Triton interpreter checks correctness, not speed)"
        return f"impl {impl!r} needs a CUDA GPU"
    if impl == "triton" and not _impl.triton_available():
        return "triton does not import"
    if impl == "cuda":
        from kernels.cuda.composite import unavailable_reason

        return unavailable_reason()
    if impl == "nerfacc":
        try:
            load_nerfacc()  # builds its extension before any timing (tests/bench/nerfacc_peer.py)
        except RuntimeError as exc:  # not installed, or its CUDA build failed
            return f"nerfacc is not usable here: {exc}"
    return None


@pytest.fixture(scope="module", autouse=True)
def threads():
    # explicit: oversubscribed threads distort CPU timings (BENCH_THREADS, default 1)
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _run(benchmark, fn, op, impl, size, nbytes):
    benchmark.group = f"{op} {size}"
    benchmark.extra_info.update(op=op, impl=impl, size=size, bytes=int(nbytes), device=_device_name())

    def timed():
        fn()
        _sync()

    rounds = 10 if CUDA else 3
    try:
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=2 if impl == "compile" else 1)
    except torch.cuda.OutOfMemoryError as exc:  # e.g. the reference's gathers for TV over all of 512^3
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} runs out of GPU memory at {size} ({nbytes / 1e9:.1f} GB must move): "
                    f"{str(exc).splitlines()[0][:200]}")


def _maybe_compile(impl, fn):
    return torch.compile(fn, dynamic=False) if impl == "compile" else fn


# ---- compositing ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _packed(n_rays: int, n_samples: int):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    S = n_rays * n_samples
    sigma = torch.rand(S, device=DEVICE, generator=g) * 2.0
    rgb = torch.rand(S, 3, device=DEVICE, generator=g)
    ray = torch.arange(n_rays, device=DEVICE).repeat_interleave(n_samples)
    t = (torch.arange(S, device=DEVICE) % n_samples).float() * 0.01 + 2.0
    grads = [torch.randn(n_rays, 3, device=DEVICE, generator=g), torch.randn(n_rays, device=DEVICE, generator=g),
             torch.randn(n_rays, device=DEVICE, generator=g)]
    return sigma, rgb, ray, t, grads


def composite_bytes(R: int, S: int) -> int:
    """Forward: read sigma, rgb, t (5 floats/sample) and the ray boundaries (2 int64/ray); write
    rgb, acc, depth (5/ray) and weights (1/sample). Backward: read sigma, rgb, t, the output
    gradients and saved outputs (10/ray), the boundaries; write d_sigma and d_rgb (4/sample)."""
    fwd = F32 * (5 * S + 5 * R + S) + 2 * I64 * R
    bwd = F32 * (5 * S + 10 * R + 4 * S) + 2 * I64 * R
    return fwd + bwd


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rays_samples", RAYS_SAMPLES, ids=lambda rs: f"{rs[0]}x{rs[1]}")
def test_bench_composite_fwd_bwd(benchmark, impl, rays_samples):
    R, N = rays_samples
    reason = _skip_reason(impl, "composite_fwd_bwd", rays_samples == RAYS_SAMPLES[0])
    if reason:
        pytest.skip(reason)
    sigma0, rgb0, ray, t, (g_rgb, g_acc, g_depth) = _packed(R, N)
    sigma, rgb = sigma0.clone().requires_grad_(), rgb0.clone().requires_grad_()
    step = 0.01

    if impl == "nerfacc":
        nerfacc = load_nerfacc()
        packed_info = torch.stack([torch.arange(R, device=DEVICE) * N, torch.full((R,), N, device=DEVICE)], 1)
        t_starts, t_ends = t - step / 2, t + step / 2

        def render(s, c):
            w, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, s, packed_info=packed_info)
            return (nerfacc.accumulate_along_rays(w, c, ray, R),
                    nerfacc.accumulate_along_rays(w, None, ray, R)[:, 0],
                    nerfacc.accumulate_along_rays(w, t[:, None], ray, R)[:, 0])

        # the peer must compute what the reference does, or its time means nothing
        ref = composite(sigma0, rgb0, step, ray, R, t=t, impl="torch")
        with torch.no_grad():
            for got, key in zip(render(sigma0, rgb0), ("rgb", "acc", "depth")):
                torch.testing.assert_close(got, ref[key], rtol=1e-4, atol=1e-4,
                                           msg=lambda m, k=key: f"nerfacc {k}: {m}")
    else:
        kernel_impl = "torch" if impl == "compile" else impl

        def render(s, c):
            out = composite(s, c, step, ray, R, t=t, impl=kernel_impl)
            return out["rgb"], out["acc"], out["depth"]

    render = _maybe_compile(impl, render)

    def step_fn():
        out = render(sigma, rgb)
        torch.autograd.grad(out, [sigma, rgb], [g_rgb, g_acc, g_depth])

    _run(benchmark, step_fn, "composite_fwd_bwd", impl, f"{R}x{N}", composite_bytes(R, R * N))


# ---- trilinear + SH sampling ---------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _grid_and_samples(res: int, n_rays: int):
    g = torch.Generator(device=DEVICE).manual_seed(1)
    n = res ** 3
    density = torch.rand(n, 1, device=DEVICE, generator=g)
    sh = torch.randn(n, 27, device=DEVICE, generator=g) * 0.3
    # coherent samples: SAMPLE_STEPS half-voxel steps along random lines through the grid
    start = torch.rand(n_rays, 3, device=DEVICE, generator=g) * (res - 1)
    dirs = torch.nn.functional.normalize(torch.randn(n_rays, 3, device=DEVICE, generator=g), dim=1)
    k = torch.arange(SAMPLE_STEPS, device=DEVICE, dtype=torch.float32) * 0.5
    coords = (start[:, None, :] + dirs[:, None, :] * k[None, :, None]).remainder(res - 1).view(-1, 3)
    ray = torch.arange(n_rays, device=DEVICE).repeat_interleave(SAMPLE_STEPS)
    # distinct rows the samples read (the minimum a gather must fetch)
    base = coords.floor().long().clamp(0, res - 2)
    flat0 = (base[:, 0] * res + base[:, 1]) * res + base[:, 2]
    offs = torch.tensor([dx * res * res + dy * res + dz for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)],
                        device=DEVICE)
    touched = torch.unique(flat0[:, None] + offs[None, :]).numel()
    grads = (torch.randn(coords.shape[0], device=DEVICE, generator=g),
             torch.randn(coords.shape[0], 3, device=DEVICE, generator=g))
    return density, sh, coords, dirs, ray, touched, grads


def sample_bytes(S: int, R: int, touched: int, backward: bool) -> int:
    """Forward: coords (3 floats) + ray index (int64) per sample, directions (3 floats) per ray,
    28 floats of each distinct touched row; writes sigma + rgb (4 floats/sample). Backward reads
    the same plus the output gradients (4/sample) and writes 28 floats per touched row."""
    fwd = F32 * (3 * S + 3 * R + 28 * touched + 4 * S) + I64 * S
    if not backward:
        return fwd
    return fwd + F32 * (3 * S + 3 * R + 4 * S + 28 * touched) + I64 * S


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SAMPLE_SIZES, ids=lambda s: f"{s[0]}^3-{s[1] * SAMPLE_STEPS}")
def test_bench_sample_grid_sh(benchmark, impl, size, backward):
    op = "sample_grid_sh_fwd_bwd" if backward else "sample_grid_sh_fwd"
    reason = _skip_reason(impl, op, size == SAMPLE_SIZES[0])
    if reason:
        pytest.skip(reason)
    res, n_rays = size
    density0, sh0, coords, dirs, ray, touched, (g_sigma, g_rgb) = _grid_and_samples(res, n_rays)
    density, sh = density0.clone().requires_grad_(backward), sh0.clone().requires_grad_(backward)
    kernel_impl = "torch" if impl == "compile" else impl
    fn = _maybe_compile(impl, lambda d, s: sample_grid_sh(d, s, coords, dirs, res, ray_index=ray,
                                                          impl=kernel_impl))

    def step_fn():
        if backward:
            torch.autograd.grad(fn(density, sh), [density, sh], [g_sigma, g_rgb])
        else:
            with torch.no_grad():
                fn(density, sh)

    S = coords.shape[0]
    _run(benchmark, step_fn, op, impl, f"{res}^3 grid, {S} samples",
         sample_bytes(S, n_rays, touched, backward))


# ---- total variation -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _tv_inputs(res: int, n_draw: int | None):
    g = torch.Generator(device=DEVICE).manual_seed(2)
    values = torch.randn(res ** 3, 27, device=DEVICE, generator=g)
    voxels = (torch.arange(res ** 3, device=DEVICE) if n_draw is None
              else torch.randint(0, res ** 3, (n_draw,), device=DEVICE, generator=g))
    row, nbs = tv_neighbours(res, None, voxels)
    touched = torch.unique(torch.cat([row, nbs[nbs >= 0]])).numel()
    return values, row, nbs, touched


def tv_bytes(n_centres: int, touched: int, channels: int) -> int:
    """Forward: the values of each distinct row read (centres and neighbours) once and 4 int64
    row indices per centre; backward: the same reads, plus the gradient of every row written
    (the zero-filled gradient tensor, N rows, is counted as written by the caller: not here)."""
    fwd = F32 * channels * touched + 4 * I64 * n_centres
    return 2 * fwd + F32 * channels * touched


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", TV_SIZES, ids=lambda s: f"{s[0]}^3-{s[1] or 'all'}")
def test_bench_tv_fwd_bwd(benchmark, impl, size):
    reason = _skip_reason(impl, "tv_fwd_bwd", size == TV_SIZES[0])
    if reason:
        pytest.skip(reason)
    res, n_draw = size
    values0, row, nbs, touched = _tv_inputs(res, n_draw)
    values = values0.clone().requires_grad_()
    kernel_impl = "torch" if impl == "compile" else impl
    fn = _maybe_compile(impl, lambda v: tv_from_rows(v, row, nbs, norm="l2", impl=kernel_impl))

    def step_fn():
        torch.autograd.grad(fn(values), [values])

    which = "all voxels" if n_draw is None else f"{n_draw} random voxels"
    _run(benchmark, step_fn, "tv_fwd_bwd", impl, f"{res}^3 grid, 27 ch, {which}",
         tv_bytes(row.shape[0], touched, 27))
