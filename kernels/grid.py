"""Trilinear interpolation of per-voxel features by explicit gathers.

A grid of resolution (X, Y, Z) stores one feature row per voxel; voxel (i, j, k) has flat index
(i * Y + j) * Z + k and its centre at grid coordinate (i, j, k). Points are interpolated from the
8 voxel centres around them. The op is split in two so callers can remap or mask corners
(e.g. sparse grids): `trilinear_corners` (index arithmetic) and `interpolate` (gather + weighted
sum, gradients to the features by index_add). F.grid_sample is avoided on purpose: its CPU
backward is very slow.
"""

from __future__ import annotations

import torch

from kernels._impl import resolve_impl

# corner c = 4 * dx + 2 * dy + dz, offsets along x, y, z
_OFFSETS = [(c >> 2 & 1, c >> 1 & 1, c & 1) for c in range(8)]


def as_resolution(resolution) -> tuple[int, int, int]:
    """(X, Y, Z) from an int or a 3-sequence; every axis needs >= 2 voxels to interpolate."""
    res = (resolution,) * 3 if isinstance(resolution, int) else tuple(int(r) for r in resolution)
    if len(res) != 3 or min(res) < 2:
        raise ValueError(f"grid resolution must be an int or 3 ints, each >= 2, got {resolution!r}")
    return res


def world_to_grid(points: torch.Tensor, bbox_min: torch.Tensor, bbox_max: torch.Tensor,
                  resolution, impl: str = "auto") -> torch.Tensor:
    """Continuous grid coordinates of world points: voxel centres are at integer coordinates,
    the box faces at -0.5 and resolution - 0.5."""
    resolve_impl(impl, "grid.world_to_grid")
    res = torch.tensor(as_resolution(resolution), dtype=points.dtype, device=points.device)
    return (points - bbox_min) * (res / (bbox_max - bbox_min)) - 0.5


def cell_index(coords: torch.Tensor, resolution, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Lower corner (S, 3) of the interpolation cell holding each point (integers, as floats
    of `coords`' dtype) and the fractional position (S, 3) in [0, 1] inside it. Points beyond
    the outermost voxel centres are clamped to the border."""
    resolve_impl(impl, "grid.cell_index")
    hi = torch.tensor(as_resolution(resolution), dtype=coords.dtype, device=coords.device) - 2
    base = torch.minimum(coords.floor().clamp_(min=0), hi)  # the last centre closes the last cell
    return base, (coords - base).clamp_(0, 1)


def flat_index(cells: torch.Tensor, resolution, impl: str = "auto") -> torch.Tensor:
    """Flat int64 index (S,) of integer 3D indices (S, 3) in a grid of `resolution`."""
    resolve_impl(impl, "grid.flat_index")
    X, Y, Z = as_resolution(resolution)
    if cells.is_floating_point():  # a matrix-vector product is the cheapest way on the CPU;
        # float32 holds integers exactly only up to 2^24
        dtype = cells.dtype if X * Y * Z <= 1 << 24 else torch.float64
        strides = torch.tensor([Y * Z, Z, 1], dtype=dtype, device=cells.device)
        return torch.mv(cells.to(dtype), strides).long()
    return (cells.long() * torch.tensor([Y * Z, Z, 1], device=cells.device)).sum(-1)


def trilinear_corners(coords: torch.Tensor, resolution, impl: str = "auto"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat voxel indices (8, S) int64 and weights (8, S) of the 8 corners around each point.

    Corner-major layout so that each corner's gather reads one contiguous index vector."""
    resolve_impl(impl, "grid.trilinear_corners")
    X, Y, Z = as_resolution(resolution)
    base, frac = cell_index(coords, (X, Y, Z))
    flat0 = flat_index(base, (X, Y, Z))
    fx, fy, fz = frac.unbind(-1)
    gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
    step = torch.tensor([Y * Z * dx + Z * dy + dz for dx, dy, dz in _OFFSETS], device=coords.device)
    index = flat0.unsqueeze(0) + step.unsqueeze(1)
    wx, wy, wz = torch.stack([gx, fx]), torch.stack([gy, fy]), torch.stack([gz, fz])
    weight = torch.stack([wx[dx] * wy[dy] * wz[dz] for dx, dy, dz in _OFFSETS])
    return index, weight


class _Interpolate(torch.autograd.Function):
    """sum_c weight[c, s] * features[index[c, s]]; backward scatters with index_add_."""

    @staticmethod
    def forward(ctx, features, index, weight):
        out = torch.index_select(features, 0, index[0]) * weight[0].unsqueeze(1)
        for c in range(1, index.shape[0]):
            out.addcmul_(torch.index_select(features, 0, index[c]), weight[c].unsqueeze(1))
        ctx.save_for_backward(features, index, weight)
        ctx.n_rows = features.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, index, weight = ctx.saved_tensors
        grad_features = grad_weight = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            grad_features = torch.zeros(ctx.n_rows, grad_out.shape[1], dtype=grad_out.dtype,
                                        device=grad_out.device)
            for c in range(index.shape[0]):
                grad_features.index_add_(0, index[c], grad_out * weight[c].unsqueeze(1))
        if ctx.needs_input_grad[2]:
            grad_weight = torch.stack([(torch.index_select(features, 0, index[c]) * grad_out).sum(1)
                                       for c in range(index.shape[0])])
        return grad_features, None, grad_weight


class _InterpolateTriton(torch.autograd.Function):
    """The same op by Triton kernels: gathers forward, atomic scatter-add backward."""

    @staticmethod
    def forward(ctx, features, index, weight):
        from kernels.triton.grid import interpolate_forward

        ctx.save_for_backward(features, index, weight)
        return interpolate_forward(features, index, weight)

    @staticmethod
    def backward(ctx, grad_out):
        from kernels.triton.grid import interpolate_backward

        features, index, weight = ctx.saved_tensors
        d_feat, d_weight = interpolate_backward(features, index, weight, grad_out.contiguous(),
                                                ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return d_feat, None, d_weight


def interpolate(features: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                impl: str = "auto") -> torch.Tensor:
    """Weighted sum of feature rows: features (N, C), index (K, S) int, weight (K, S) -> (S, C).

    With the output of `trilinear_corners` this is trilinear interpolation. Gradients flow to
    `features` (and to `weight` when it requires grad). impl: 'torch', 'triton', 'auto'."""
    impl = resolve_impl(impl, "grid.interpolate", features.device, ("torch", "triton"), features.dtype)
    if features.ndim != 2:
        raise ValueError(f"interpolate: features must be (N, C), got {tuple(features.shape)}")
    if index.shape != weight.shape or index.ndim != 2:
        raise ValueError(f"interpolate: index {tuple(index.shape)} and weight {tuple(weight.shape)} "
                         "must both be (K, S)")
    fn = _Interpolate if impl == "torch" else _InterpolateTriton
    if impl == "triton":
        weight = weight.to(features.dtype)
    return fn.apply(features.contiguous() if impl == "triton" else features, index.contiguous(),
                    weight.contiguous())


def sample_dense(grid: torch.Tensor, coords: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Trilinear samples of a dense grid (X, Y, Z, C) at grid coordinates (S, 3) -> (S, C)."""
    if grid.ndim != 4:
        raise ValueError(f"sample_dense: grid must be (X, Y, Z, C), got {tuple(grid.shape)}")
    index, weight = trilinear_corners(coords, grid.shape[:3], impl=impl)
    return interpolate(grid.reshape(-1, grid.shape[3]), index, weight.to(grid.dtype), impl=impl)
