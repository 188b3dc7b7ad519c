"""Triton gathers from voxel grids: generic weighted-row interpolation, and trilinear sampling of a
(sparse) density + SH grid fused with SH evaluation for the view direction.

Forward gathers rows; backward scatters gradients to rows with tl.atomic_add (float atomics: the
summation order, hence the last bits, varies between runs on a GPU). Feature tiles are
(BLOCK_S samples, CP columns), CP the next power of two above the feature width.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton import padded_cols, row_block


# ---- generic interpolation: out[s] = sum_k weight[k, s] * features[index[k, s]] -----------------
@triton.jit
def _interp_fwd(feat_ptr, index_ptr, weight_ptr, out_ptr, S, C,
                K: tl.constexpr, BLOCK_S: tl.constexpr, CP: tl.constexpr):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    c = tl.arange(0, CP)
    smask = s < S
    m = smask[:, None] & (c < C)[None, :]
    acc = tl.zeros([BLOCK_S, CP], dtype=feat_ptr.dtype.element_ty)
    for k in tl.static_range(K):
        row = tl.load(index_ptr + k * S + s, mask=smask, other=0).to(tl.int64)
        w = tl.load(weight_ptr + k * S + s, mask=smask, other=0.0)
        acc += w[:, None] * tl.load(feat_ptr + row[:, None] * C + c[None, :], mask=m, other=0.0)
    tl.store(out_ptr + s[:, None] * C + c[None, :], acc, mask=m)


@triton.jit
def _interp_bwd(feat_ptr, index_ptr, weight_ptr, g_ptr, d_feat_ptr, d_weight_ptr, S, C,
                K: tl.constexpr, D_FEAT: tl.constexpr, D_WEIGHT: tl.constexpr,
                BLOCK_S: tl.constexpr, CP: tl.constexpr):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    c = tl.arange(0, CP)
    smask = s < S
    m = smask[:, None] & (c < C)[None, :]
    g = tl.load(g_ptr + s[:, None] * C + c[None, :], mask=m, other=0.0)
    for k in tl.static_range(K):
        row = tl.load(index_ptr + k * S + s, mask=smask, other=0).to(tl.int64)
        ptrs = row[:, None] * C + c[None, :]
        if D_FEAT:
            w = tl.load(weight_ptr + k * S + s, mask=smask, other=0.0)
            tl.atomic_add(d_feat_ptr + ptrs, w[:, None] * g, mask=m)
        if D_WEIGHT:
            f = tl.load(feat_ptr + ptrs, mask=m, other=0.0)
            tl.store(d_weight_ptr + k * S + s, tl.sum(f * g, axis=1), mask=smask)


def interpolate_forward(features, index, weight):
    K, S = index.shape
    C = features.shape[1]
    out = torch.empty(S, C, device=features.device, dtype=features.dtype)
    if S == 0:
        return out
    bs = row_block("samples", features.device, padded_cols(C))
    _interp_fwd[(triton.cdiv(S, bs),)](features, index, weight, out, S, C, K=K, BLOCK_S=bs, CP=padded_cols(C))
    return out


def interpolate_backward(features, index, weight, grad_out, need_features: bool, need_weight: bool):
    K, S = index.shape
    C = features.shape[1]
    d_feat = torch.zeros_like(features) if need_features else None
    d_weight = torch.empty_like(weight) if need_weight else None
    if S == 0:
        return d_feat, d_weight
    bs = row_block("samples", features.device, padded_cols(C))
    _interp_bwd[(triton.cdiv(S, bs),)](
        features, index, weight, grad_out, d_feat if need_features else features,
        d_weight if need_weight else weight, S, C, K=K, D_FEAT=need_features, D_WEIGHT=need_weight,
        BLOCK_S=bs, CP=padded_cols(C))
    return d_feat, d_weight


# ---- trilinear + SH, fused -----------------------------------------------------------------------
@triton.jit
def _sh_tile(x, y, z, kc, NB: tl.constexpr):
    """Tile (BLOCK_S, CP): column j holds basis function kc[j] (= j % NB) at direction (x, y, z)."""
    k = kc[None, :]
    out = tl.where(k == 0, 0.28209479177387814, 0.0) + x[:, None] * 0.0
    if NB > 1:
        out = tl.where(k == 1, (-0.4886025119029199 * y)[:, None], out)
        out = tl.where(k == 2, (0.4886025119029199 * z)[:, None], out)
        out = tl.where(k == 3, (-0.4886025119029199 * x)[:, None], out)
    if NB > 4:
        xx = x * x
        yy = y * y
        zz = z * z
        out = tl.where(k == 4, (1.0925484305920792 * x * y)[:, None], out)
        out = tl.where(k == 5, (-1.0925484305920792 * y * z)[:, None], out)
        out = tl.where(k == 6, (0.31539156525252005 * (2.0 * zz - xx - yy))[:, None], out)
        out = tl.where(k == 7, (-1.0925484305920792 * x * z)[:, None], out)
        out = tl.where(k == 8, (0.5462742152960396 * (xx - yy))[:, None], out)
    if NB > 9:
        out = tl.where(k == 9, (-0.5900435899266435 * y * (3.0 * xx - yy))[:, None], out)
        out = tl.where(k == 10, (2.890611442640554 * x * y * z)[:, None], out)
        out = tl.where(k == 11, (-0.4570457994644658 * y * (4.0 * zz - xx - yy))[:, None], out)
        out = tl.where(k == 12, (0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy))[:, None], out)
        out = tl.where(k == 13, (-0.4570457994644658 * x * (4.0 * zz - xx - yy))[:, None], out)
        out = tl.where(k == 14, (1.445305721320277 * z * (xx - yy))[:, None], out)
        out = tl.where(k == 15, (-0.5900435899266435 * x * (xx - 3.0 * yy))[:, None], out)
    return out


@triton.jit
def _basis(dir_ptr, ray_ptr, s, smask, col, NB: tl.constexpr, HAS_RAY: tl.constexpr):
    """SH basis tile (BLOCK_S, CP) at each sample's direction (its ray's, when HAS_RAY)."""
    if HAS_RAY:
        d_idx = tl.load(ray_ptr + s, mask=smask, other=0).to(tl.int64)
    else:
        d_idx = s.to(tl.int64)
    dx = tl.load(dir_ptr + d_idx * 3, mask=smask, other=0.0)
    dy = tl.load(dir_ptr + d_idx * 3 + 1, mask=smask, other=0.0)
    dz = tl.load(dir_ptr + d_idx * 3 + 2, mask=smask, other=0.0)
    return _sh_tile(dx, dy, dz, col % NB, NB)


@triton.jit
def _cell(coord_ptr, s, smask, axis: tl.constexpr, size):
    c = tl.load(coord_ptr + s * 3 + axis, mask=smask, other=0.0)
    base = tl.minimum(tl.maximum(tl.floor(c), 0.0), (size - 2) * 1.0)
    frac = tl.minimum(tl.maximum(c - base, 0.0), 1.0)
    return base.to(tl.int64), frac


@triton.jit
def _sample_sh(dens_ptr, sh_ptr, links_ptr, coord_ptr, dir_ptr, ray_ptr, out_sigma_ptr, out_rgb_ptr,
               g_sigma_ptr, g_rgb_ptr, d_dens_ptr, d_sh_ptr, S, X, Y, Z,
               NB: tl.constexpr, HAS_LINKS: tl.constexpr, HAS_RAY: tl.constexpr,
               SIGMOID: tl.constexpr, BACKWARD: tl.constexpr, D_DENS: tl.constexpr,
               D_SH: tl.constexpr, BLOCK_S: tl.constexpr, CP: tl.constexpr):
    """Forward (BACKWARD=False): raw density (S,) and colour (S, 3) = [sigmoid](SH . basis(dir)).
    Backward: scatter g_sigma (S,) and g_rgb (S, 3) (already through the sigmoid) to the rows."""
    C: tl.constexpr = 3 * NB
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    smask = s < S
    col = tl.arange(0, CP)
    cmask = col < C
    ch = col // NB
    m2 = smask[:, None] & cmask[None, :]
    bx, fx = _cell(coord_ptr, s, smask, 0, X)
    by, fy = _cell(coord_ptr, s, smask, 1, Y)
    bz, fz = _cell(coord_ptr, s, smask, 2, Z)
    flat0 = (bx * Y + by) * Z + bz
    if BACKWARD:
        g_sig = tl.load(g_sigma_ptr + s, mask=smask, other=0.0)
        g_c = tl.load(g_rgb_ptr + s[:, None] * 3 + ch[None, :], mask=m2, other=0.0)
        g_tile = g_c * _basis(dir_ptr, ray_ptr, s, smask, col, NB, HAS_RAY)
    else:
        dens = tl.zeros([BLOCK_S], dtype=dens_ptr.dtype.element_ty)
        coef = tl.zeros([BLOCK_S, CP], dtype=dens_ptr.dtype.element_ty)
    for corner in tl.static_range(8):
        # corner = 4 dx + 2 dy + dz, as kernels.grid; static: the loop is unrolled
        wx = fx if corner // 4 == 1 else 1.0 - fx
        wy = fy if (corner // 2) % 2 == 1 else 1.0 - fy
        wz = fz if corner % 2 == 1 else 1.0 - fz
        w = wx * wy * wz
        flat = flat0 + ((corner // 4) * Y * Z + ((corner // 2) % 2) * Z + corner % 2)
        if HAS_LINKS:
            row = tl.load(links_ptr + flat, mask=smask, other=-1).to(tl.int64)
            ok = smask & (row >= 0)
            row = tl.maximum(row, 0)
        else:
            row = flat
            ok = smask
        mc = ok[:, None] & cmask[None, :]
        if BACKWARD:
            if D_DENS:
                tl.atomic_add(d_dens_ptr + row, w * g_sig, mask=ok)
            if D_SH:
                tl.atomic_add(d_sh_ptr + row[:, None] * C + col[None, :], w[:, None] * g_tile, mask=mc)
        else:
            dens += tl.where(ok, w * tl.load(dens_ptr + row, mask=ok, other=0.0), 0.0)
            coef += w[:, None] * tl.load(sh_ptr + row[:, None] * C + col[None, :], mask=mc, other=0.0)
    if not BACKWARD:
        tl.store(out_sigma_ptr + s, dens, mask=smask)
        # the basis tile is made after the gathers, so it does not hold registers across them
        prod = coef * _basis(dir_ptr, ray_ptr, s, smask, col, NB, HAS_RAY)
        for c in tl.static_range(3):
            v = tl.sum(tl.where((ch == c)[None, :], prod, 0.0), axis=1)
            if SIGMOID:
                v = 1.0 / (1.0 + tl.exp(-v))
            tl.store(out_rgb_ptr + s * 3 + c, v, mask=smask)


def _launch(density, sh, links, coords, dirs, ray_index, resolution, n_basis, sigmoid, backward,
            out_sigma, out_rgb, g_sigma, g_rgb, d_dens, d_sh):
    S = coords.shape[0]
    X, Y, Z = resolution
    bs = row_block("samples", coords.device, padded_cols(3 * n_basis))
    dummy = density
    _sample_sh[(triton.cdiv(S, bs),)](
        density, sh, links if links is not None else dummy, coords, dirs,
        ray_index if ray_index is not None else dummy,
        out_sigma if out_sigma is not None else dummy, out_rgb if out_rgb is not None else dummy,
        g_sigma if g_sigma is not None else dummy, g_rgb if g_rgb is not None else dummy,
        d_dens if d_dens is not None else dummy, d_sh if d_sh is not None else dummy,
        S, X, Y, Z, NB=n_basis, HAS_LINKS=links is not None, HAS_RAY=ray_index is not None,
        SIGMOID=sigmoid, BACKWARD=backward, D_DENS=d_dens is not None, D_SH=d_sh is not None,
        BLOCK_S=bs, CP=padded_cols(3 * n_basis))


def sample_sh_forward(density, sh, links, coords, dirs, ray_index, resolution, n_basis, sigmoid):
    S = coords.shape[0]
    sigma = torch.empty(S, device=coords.device, dtype=density.dtype)
    rgb = torch.empty(S, 3, device=coords.device, dtype=density.dtype)
    if S:
        _launch(density, sh, links, coords, dirs, ray_index, resolution, n_basis, sigmoid, False,
                sigma, rgb, None, None, None, None)
    return sigma, rgb


def sample_sh_backward(density, sh, links, coords, dirs, ray_index, resolution, n_basis,
                       g_sigma, g_rgb_pre, need_density: bool, need_sh: bool):
    d_dens = torch.zeros_like(density) if need_density else None
    d_sh = torch.zeros_like(sh) if need_sh else None
    if coords.shape[0] and (need_density or need_sh):
        _launch(density, sh, links, coords, dirs, ray_index, resolution, n_basis, False, True,
                None, None, g_sigma, g_rgb_pre, d_dens, d_sh)
    return d_dens, d_sh
