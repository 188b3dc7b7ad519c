"""Triton volume-rendering compositing over packed rays (forward, backward, transmittance).

Each program owns BLOCK_R rays and walks their samples in chunks of BLOCK_S (a 2D tile: loads
are contiguous along a ray). Within a chunk the optical depth a_i = sigma_i * delta_i is
prefix-summed with tl.cumsum and carried to the next chunk, so T_i = exp(-sum_{j<i} a_j) costs
one pass. Accumulation is in the inputs' dtype (float32 or float64).

Backward (per ray, with u_i = dL/dw_i = g_rgb . c_i + g_acc + g_depth t_i + g_w_i):
  dL/da_i = u_i T_{i+1} - sum_{k>i} u_k w_k,
and sum_{k>i} u_k w_k = total - sum_{k<=i} u_k w_k where total = sum_k u_k w_k is computed from
the forward outputs (g_rgb . rgb + g_acc acc + g_depth depth [+ sum g_w w]), so one pass suffices.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton import block


@triton.jit
def _fwd(sigma_ptr, rgb_ptr, delta_ptr, delta_val, t_ptr, start_ptr, count_ptr,
         out_rgb_ptr, out_acc_ptr, out_depth_ptr, out_w_ptr, out_T_ptr, n_rays,
         HAS_DELTA: tl.constexpr, HAS_T: tl.constexpr, WRITE_W: tl.constexpr,
         WRITE_T: tl.constexpr, SHADE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    rays = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rays < n_rays
    start = tl.load(start_ptr + rays, mask=rmask, other=0)
    count = tl.load(count_ptr + rays, mask=rmask, other=0)
    dt = sigma_ptr.dtype.element_ty
    carry = tl.zeros([BLOCK_R], dtype=dt)
    acc = tl.zeros([BLOCK_R], dtype=dt)
    depth = tl.zeros([BLOCK_R], dtype=dt)
    cr = tl.zeros([BLOCK_R], dtype=dt)
    cg = tl.zeros([BLOCK_R], dtype=dt)
    cb = tl.zeros([BLOCK_R], dtype=dt)
    cols = tl.arange(0, BLOCK_S)
    n_max = tl.max(count, axis=0)
    for j in range(0, n_max, BLOCK_S):
        m = (j + cols)[None, :] < count[:, None]
        idx = start[:, None] + j + cols[None, :]
        sig = tl.load(sigma_ptr + idx, mask=m, other=0.0)
        if HAS_DELTA:
            a = sig * tl.load(delta_ptr + idx, mask=m, other=0.0)
        else:
            a = sig * delta_val
        incl = tl.cumsum(a, axis=1) + carry[:, None]
        T = tl.exp(-(incl - a))
        if WRITE_T:
            tl.store(out_T_ptr + idx, T, mask=m)
        if SHADE:
            w = T * (1.0 - tl.exp(-a))
            w = tl.where(m, w, 0.0)
            if WRITE_W:
                tl.store(out_w_ptr + idx, w, mask=m)
            acc += tl.sum(w, axis=1)
            if HAS_T:
                depth += tl.sum(w * tl.load(t_ptr + idx, mask=m, other=0.0), axis=1)
            cr += tl.sum(w * tl.load(rgb_ptr + idx * 3, mask=m, other=0.0), axis=1)
            cg += tl.sum(w * tl.load(rgb_ptr + idx * 3 + 1, mask=m, other=0.0), axis=1)
            cb += tl.sum(w * tl.load(rgb_ptr + idx * 3 + 2, mask=m, other=0.0), axis=1)
        carry += tl.sum(a, axis=1)
    if SHADE:
        tl.store(out_acc_ptr + rays, acc, mask=rmask)
        if HAS_T:
            tl.store(out_depth_ptr + rays, depth, mask=rmask)
        tl.store(out_rgb_ptr + rays * 3, cr, mask=rmask)
        tl.store(out_rgb_ptr + rays * 3 + 1, cg, mask=rmask)
        tl.store(out_rgb_ptr + rays * 3 + 2, cb, mask=rmask)


@triton.jit
def _bwd(sigma_ptr, rgb_ptr, delta_ptr, delta_val, t_ptr, start_ptr, count_ptr,
         g_rgb_ptr, g_acc_ptr, g_depth_ptr, g_w_ptr, total_ptr,
         d_sigma_ptr, d_rgb_ptr, d_delta_ptr, d_t_ptr, n_rays,
         HAS_DELTA: tl.constexpr, HAS_T: tl.constexpr, HAS_GW: tl.constexpr,
         D_DELTA: tl.constexpr, D_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    rays = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rays < n_rays
    start = tl.load(start_ptr + rays, mask=rmask, other=0)
    count = tl.load(count_ptr + rays, mask=rmask, other=0)
    g_r = tl.load(g_rgb_ptr + rays * 3, mask=rmask, other=0.0)
    g_g = tl.load(g_rgb_ptr + rays * 3 + 1, mask=rmask, other=0.0)
    g_b = tl.load(g_rgb_ptr + rays * 3 + 2, mask=rmask, other=0.0)
    g_acc = tl.load(g_acc_ptr + rays, mask=rmask, other=0.0)
    total = tl.load(total_ptr + rays, mask=rmask, other=0.0)
    if HAS_T:
        g_dep = tl.load(g_depth_ptr + rays, mask=rmask, other=0.0)
    dt = sigma_ptr.dtype.element_ty
    carry = tl.zeros([BLOCK_R], dtype=dt)
    carry_uw = tl.zeros([BLOCK_R], dtype=dt)
    cols = tl.arange(0, BLOCK_S)
    n_max = tl.max(count, axis=0)
    for j in range(0, n_max, BLOCK_S):
        m = (j + cols)[None, :] < count[:, None]
        idx = start[:, None] + j + cols[None, :]
        sig = tl.load(sigma_ptr + idx, mask=m, other=0.0)
        if HAS_DELTA:
            dl = tl.load(delta_ptr + idx, mask=m, other=0.0)
            a = sig * dl
        else:
            a = sig * delta_val
        incl = tl.cumsum(a, axis=1) + carry[:, None]
        T_next = tl.exp(-incl)
        T = tl.exp(-(incl - a))
        w = tl.where(m, T * (1.0 - tl.exp(-a)), 0.0)
        c_r = tl.load(rgb_ptr + idx * 3, mask=m, other=0.0)
        c_g = tl.load(rgb_ptr + idx * 3 + 1, mask=m, other=0.0)
        c_b = tl.load(rgb_ptr + idx * 3 + 2, mask=m, other=0.0)
        u = c_r * g_r[:, None] + c_g * g_g[:, None] + c_b * g_b[:, None] + g_acc[:, None]
        if HAS_T:
            tv = tl.load(t_ptr + idx, mask=m, other=0.0)
            u += tv * g_dep[:, None]
            if D_T:
                tl.store(d_t_ptr + idx, w * g_dep[:, None], mask=m)
        if HAS_GW:
            u += tl.load(g_w_ptr + idx, mask=m, other=0.0)
        uw = u * w
        after = total[:, None] - (tl.cumsum(uw, axis=1) + carry_uw[:, None])
        d_a = u * T_next - after
        if HAS_DELTA:
            tl.store(d_sigma_ptr + idx, d_a * dl, mask=m)
        else:
            tl.store(d_sigma_ptr + idx, d_a * delta_val, mask=m)
        if D_DELTA:
            tl.store(d_delta_ptr + idx, d_a * sig, mask=m)
        tl.store(d_rgb_ptr + idx * 3, w * g_r[:, None], mask=m)
        tl.store(d_rgb_ptr + idx * 3 + 1, w * g_g[:, None], mask=m)
        tl.store(d_rgb_ptr + idx * 3 + 2, w * g_b[:, None], mask=m)
        carry += tl.sum(a, axis=1)
        carry_uw += tl.sum(uw, axis=1)


def _grid(n_rays: int, device) -> tuple[int, int, tuple[int]]:
    br, bs = block("composite_rays", device), block("composite_samples", device)
    return br, bs, (triton.cdiv(max(n_rays, 1), br),)


def composite_forward(sigma, rgb, delta, t, start, count, write_weights: bool = True):
    """(rgb (R, 3) without background, acc (R,), depth (R,) or None, weights (S,) or None)."""
    n_rays, dev, dt = count.shape[0], sigma.device, sigma.dtype
    out_rgb = torch.empty(n_rays, 3, device=dev, dtype=dt)
    acc = torch.empty(n_rays, device=dev, dtype=dt)
    depth = torch.empty(n_rays, device=dev, dtype=dt) if t is not None else None
    weights = torch.empty_like(sigma) if write_weights else None
    if n_rays == 0:
        return out_rgb, acc, depth, weights
    has_delta = isinstance(delta, torch.Tensor)
    br, bs, grid = _grid(n_rays, dev)
    _fwd[grid](sigma, rgb, delta if has_delta else sigma, 0.0 if has_delta else float(delta),
               t if t is not None else sigma, start, count, out_rgb, acc,
               depth if depth is not None else acc, weights if write_weights else sigma, sigma, n_rays,
               HAS_DELTA=has_delta, HAS_T=t is not None, WRITE_W=write_weights, WRITE_T=False,
               SHADE=True, BLOCK_R=br, BLOCK_S=bs)
    return out_rgb, acc, depth, weights


def composite_backward(sigma, rgb, delta, t, start, count, g_rgb, g_acc, g_depth, g_w, total,
                       need_delta: bool, need_t: bool):
    """(d_sigma (S,), d_rgb (S, 3), d_delta (S,) or None, d_t (S,) or None)."""
    n_rays, dev = count.shape[0], sigma.device
    d_sigma, d_rgb = torch.empty_like(sigma), torch.empty_like(rgb)
    has_delta = isinstance(delta, torch.Tensor)
    d_delta = torch.empty_like(sigma) if need_delta else None
    d_t = torch.empty_like(sigma) if need_t else None
    if n_rays == 0 or sigma.numel() == 0:
        return d_sigma.zero_(), d_rgb.zero_(), d_delta, d_t
    br, bs, grid = _grid(n_rays, dev)
    _bwd[grid](sigma, rgb, delta if has_delta else sigma, 0.0 if has_delta else float(delta),
               t if t is not None else sigma, start, count, g_rgb, g_acc,
               g_depth if g_depth is not None else g_acc, g_w if g_w is not None else sigma, total,
               d_sigma, d_rgb, d_delta if need_delta else sigma, d_t if need_t else sigma, n_rays,
               HAS_DELTA=has_delta, HAS_T=t is not None, HAS_GW=g_w is not None,
               D_DELTA=need_delta, D_T=need_t, BLOCK_R=br, BLOCK_S=bs)
    return d_sigma, d_rgb, d_delta, d_t


def transmittance(sigma_delta, start, count):
    """Exclusive transmittance (S,) of packed optical depths (no gradient)."""
    n_rays, dev = count.shape[0], sigma_delta.device
    T = torch.empty_like(sigma_delta)
    if n_rays == 0 or sigma_delta.numel() == 0:
        return T
    br, bs, grid = _grid(n_rays, dev)
    _fwd[grid](sigma_delta, sigma_delta, sigma_delta, 1.0, sigma_delta, start, count, T, T, T, T, T,
               n_rays, HAS_DELTA=False, HAS_T=False, WRITE_W=False, WRITE_T=True, SHADE=False,
               BLOCK_R=br, BLOCK_S=bs)
    return T
