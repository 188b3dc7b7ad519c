"""Ray-box intersection, fixed-step marching and volume-rendering compositing on packed samples.

Packed layout: the samples of all rays are concatenated, grouped by ray (nondecreasing
`ray_index`) and ordered front to back within a ray, as in nerfacc. Compositing follows the
NeRF quadrature used by Plenoxels: alpha_i = 1 - exp(-sigma_i * delta_i),
T_i = exp(-sum_{j<i} sigma_j * delta_j), w_i = T_i * alpha_i, C = sum_i w_i c_i + (1 - sum_i w_i) bg.
"""

from __future__ import annotations

import math

import torch

from kernels._impl import resolve_impl


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, bbox_min: torch.Tensor,
             bbox_max: torch.Tensor, near: float = 0.0, far: float = math.inf, impl: str = "auto"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test: (t_near, t_far, hit), each (R,); the segment is also clipped to [near, far]."""
    resolve_impl(impl, "render.ray_aabb")
    # a zero direction component must give +-inf slab distances, not NaN: nudge it
    tiny = torch.finfo(directions.dtype).tiny
    d = torch.where(directions.abs() < tiny, torch.full_like(directions, tiny), directions)
    t0 = (bbox_min - origins) / d
    t1 = (bbox_max - origins) / d
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=near)
    t_far = torch.maximum(t0, t1).amin(dim=-1).clamp(max=far)
    return t_near, t_far, t_far > t_near


def segment_starts(counts: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Index of the first packed element of each segment, given segment lengths (R,)."""
    resolve_impl(impl, "render.segment_starts")
    return torch.cumsum(counts, 0) - counts


def march(t_near: torch.Tensor, t_far: torch.Tensor, step: float, impl: str = "auto"
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-step samples on each ray's [t_near, t_far) at t_near + (k + 1/2) * step.

    Returns packed (ray_index (S,) int64, t (S,)); rays with t_far <= t_near get no sample."""
    resolve_impl(impl, "render.march")
    if not step > 0:
        raise ValueError(f"march: step must be > 0, got {step}")
    counts = torch.ceil((t_far - t_near) / step).clamp(min=0).long()
    ray_index = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    k = torch.arange(ray_index.shape[0], device=counts.device) - segment_starts(counts)[ray_index]
    return ray_index, t_near[ray_index] + (k.to(t_near.dtype) + 0.5) * step


def transmittance(sigma_delta: torch.Tensor, ray_index: torch.Tensor, n_rays: int,
                  impl: str = "auto") -> torch.Tensor:
    """Exclusive transmittance T_i = exp(-sum_{j<i, same ray} sigma_j delta_j), packed (S,).

    The prefix sum runs once over all samples in float64 (so long packs lose no precision) and
    each ray subtracts its value at its first sample; autograd flows through both."""
    resolve_impl(impl, "render.transmittance")
    counts = torch.bincount(ray_index, minlength=n_rays)
    x = sigma_delta.double()
    exclusive = torch.cumsum(x, 0) - x
    first = segment_starts(counts)[ray_index]  # each sample's ray's first sample
    return torch.exp(exclusive[first] - exclusive).to(sigma_delta.dtype)


def ray_offsets(ray_index: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First packed sample (R,) int64 and sample count (R,) int64 of each ray, from a
    nondecreasing `ray_index` (S,)."""
    counts = torch.bincount(ray_index, minlength=n_rays)
    return segment_starts(counts), counts


class _Composite(torch.autograd.Function):
    """Fast compositing (impl 'triton' or 'cuda'): outputs rgb without background, acc, depth,
    weights; backward by the closed form in kernels/triton/composite.py."""

    @staticmethod
    def forward(ctx, sigma, rgb, delta, t, ray_index, start, count, delta_val, impl):
        fwd = _fast(impl).composite_forward
        color, acc, depth, weights = fwd(sigma, rgb, delta if delta is not None else delta_val, t,
                                         start, count)
        ctx.impl, ctx.delta_val, ctx.has_t = impl, delta_val, t is not None
        ctx.save_for_backward(sigma, rgb, delta, t, ray_index, start, count, color, acc, depth, weights)
        if depth is None:
            depth = acc.new_zeros(0)
        return color, acc, depth, weights

    @staticmethod
    def backward(ctx, g_rgb, g_acc, g_depth, g_w):
        sigma, rgb, delta, t, ray_index, start, count, color, acc, depth, weights = ctx.saved_tensors
        g_rgb = torch.zeros_like(color) if g_rgb is None else g_rgb.contiguous()
        g_acc = torch.zeros_like(acc) if g_acc is None else g_acc.contiguous()
        total = (g_rgb * color).sum(1) + g_acc * acc
        if ctx.has_t:
            g_depth = torch.zeros_like(acc) if g_depth is None else g_depth.contiguous()
            total = total + g_depth * depth
        else:
            g_depth = None
        if g_w is not None:
            g_w = g_w.contiguous()
            total = total.index_add(0, ray_index, g_w * weights)
        need_delta = delta is not None and ctx.needs_input_grad[2]
        need_t = ctx.has_t and ctx.needs_input_grad[3]
        d_sigma, d_rgb, d_delta, d_t = _fast(ctx.impl).composite_backward(
            sigma, rgb, delta if delta is not None else ctx.delta_val, t, start, count, g_rgb, g_acc,
            g_depth, g_w, total.contiguous(), need_delta, need_t)
        return d_sigma, d_rgb, d_delta, d_t, None, None, None, None, None


def _fast(impl: str):
    if impl == "triton":
        from kernels.triton import composite as mod
    else:
        from kernels.cuda import composite as mod
    return mod


def composite(sigma: torch.Tensor, rgb: torch.Tensor, delta: torch.Tensor | float,
              ray_index: torch.Tensor, n_rays: int, t: torch.Tensor | None = None,
              background: torch.Tensor | None = None, impl: str = "auto") -> dict[str, torch.Tensor]:
    """Volume-render packed samples: sigma (S,), rgb (S, 3), delta (S,) or a float.

    Returns 'rgb' (R, 3) (blended over `background` (3,) with 1 - acc when given), 'acc' (R,),
    'depth' (R,) (sum of w_i t_i, when `t` is given; 0 for empty rays) and 'weights' (S,).
    Gradients flow to sigma, rgb, a tensor delta, t and background, for every impl.
    impl: 'torch' (reference), 'triton', 'cuda' (CUDA C++), 'auto' (triton on CUDA tensors)."""
    impl = resolve_impl(impl, "render.composite", sigma.device, ("torch", "triton", "cuda"), sigma.dtype)
    if impl == "torch":
        return _composite_torch(sigma, rgb, delta, ray_index, n_rays, t, background)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"composite: impl={impl!r} takes rgb (S, 3), got {tuple(rgb.shape)}")
    dt = sigma.dtype
    delta_t, delta_val = None, 0.0
    if isinstance(delta, torch.Tensor):
        delta_t = delta.to(dt).expand(sigma.shape[0]).contiguous()
    else:
        delta_val = float(delta)
    start, count = ray_offsets(ray_index, n_rays)
    color, acc, depth, weights = _Composite.apply(
        sigma.contiguous(), rgb.to(dt).contiguous(), delta_t,
        t.to(dt).contiguous() if t is not None else None, ray_index, start, count, delta_val, impl)
    if background is not None:
        color = color + (1.0 - acc).unsqueeze(1) * background.to(color)
    out = {"rgb": color, "acc": acc, "weights": weights}
    if t is not None:
        out["depth"] = depth
    return out


def _composite_torch(sigma, rgb, delta, ray_index, n_rays, t, background):
    sigma_delta = sigma * delta
    alpha = 1.0 - torch.exp(-sigma_delta)
    weights = transmittance(sigma_delta, ray_index, n_rays) * alpha
    zeros = sigma.new_zeros(n_rays)
    acc = zeros.index_add(0, ray_index, weights)
    color = rgb.new_zeros(n_rays, rgb.shape[1]).index_add(0, ray_index, weights.unsqueeze(1) * rgb)
    if background is not None:
        color = color + (1.0 - acc).unsqueeze(1) * background.to(color)
    out = {"rgb": color, "acc": acc, "weights": weights}
    if t is not None:
        out["depth"] = zeros.index_add(0, ray_index, weights * t)
    return out


def early_termination(sigma_delta: torch.Tensor, ray_index: torch.Tensor, n_rays: int,
                      threshold: float, impl: str = "auto") -> torch.Tensor:
    """Mask (S,) of samples still worth shading: transmittance in front of them >= threshold.

    The kept samples are a prefix of each ray, so compositing only them changes each ray's colour
    by less than `threshold` (times the largest colour)."""
    impl = resolve_impl(impl, "render.early_termination", sigma_delta.device,
                        ("torch", "triton", "cuda"), sigma_delta.dtype)
    with torch.no_grad():
        if impl == "torch":
            return transmittance(sigma_delta, ray_index, n_rays) >= threshold
        start, count = ray_offsets(ray_index, n_rays)
        return _fast(impl).transmittance(sigma_delta.contiguous(), start, count) >= threshold
