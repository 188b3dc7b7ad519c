"""Trilinear sampling of a (sparse) density + SH voxel grid fused with SH evaluation.

At grid coordinates `coords` (S, 3) (voxel centres at integers, see kernels.grid) and unit view
directions, returns the raw density (S,) and the colour (S, 3) = sigmoid(sum_b k_{c,b} Y_b(dir))
of the trilinearly interpolated coefficients k (as Plenoxels/svox2), or the pre-sigmoid value with
`sigmoid=False`. The grid: `density` (N, 1) and `sh` (N, 3 * B) rows (channel-major: the B
coefficients of red, then green, then blue), `links` (X*Y*Z,) the row of each voxel or -1 (absent
voxels read as 0 and get no gradient), or None for a dense grid (row = flat voxel index).
Gradients flow to `density` and `sh` only (sample positions and directions are constants, as in
svox2's fused kernels).
"""

from __future__ import annotations

import torch

from kernels._impl import resolve_impl
from kernels.grid import as_resolution, interpolate, trilinear_corners
from kernels.sh import sh_basis

DEGREE_OF = {1: 0, 4: 1, 9: 2, 16: 3}


def _check(density, sh, links, coords, dirs, ray_index, n_vox):
    if density.ndim != 2 or density.shape[1] != 1:
        raise ValueError(f"sample_grid_sh: density must be (N, 1), got {tuple(density.shape)}")
    if sh.ndim != 2 or sh.shape[0] != density.shape[0] or sh.shape[1] % 3 or sh.shape[1] // 3 not in DEGREE_OF:
        raise ValueError(f"sample_grid_sh: sh must be (N, 3 * B) with B in {sorted(DEGREE_OF)}, "
                         f"got {tuple(sh.shape)}")
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"sample_grid_sh: coords must be (S, 3), got {tuple(coords.shape)}")
    want = coords.shape[0] if ray_index is None else None
    if dirs.ndim != 2 or dirs.shape[1] != 3 or (want is not None and dirs.shape[0] != want):
        raise ValueError(f"sample_grid_sh: dirs must be (S, 3), or (R, 3) with ray_index, got "
                         f"{tuple(dirs.shape)}")
    if links is None and density.shape[0] != n_vox:
        raise ValueError(f"sample_grid_sh: a dense grid needs {n_vox} rows, got {density.shape[0]}")
    if links is not None and links.shape != (n_vox,):
        raise ValueError(f"sample_grid_sh: links must be ({n_vox},), got {tuple(links.shape)}")


def _reference(density, sh, links, coords, dirs, ray_index, res, sigmoid):
    index, weight = trilinear_corners(coords.detach(), res)
    weight = weight.to(density.dtype)
    if links is not None:
        rows = links.index_select(0, index.view(-1)).view(index.shape).long()
        weight = weight * (rows >= 0)
        index = rows.clamp(min=0)
    sigma = interpolate(density, index, weight, impl="torch")[:, 0]
    n_basis = sh.shape[1] // 3
    coeffs = interpolate(sh, index, weight, impl="torch").view(-1, 3, n_basis)
    basis = sh_basis(dirs.detach().to(sh.dtype), DEGREE_OF[n_basis], impl="torch")
    if ray_index is not None:
        basis = basis[ray_index]
    rgb = torch.bmm(coeffs, basis.unsqueeze(2)).squeeze(2)
    return sigma, torch.sigmoid(rgb) if sigmoid else rgb


class _SampleTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, density, sh, links, coords, dirs, ray_index, res, sigmoid):
        from kernels.triton.grid import sample_sh_forward

        n_basis = sh.shape[1] // 3
        sigma, rgb = sample_sh_forward(density, sh, links, coords, dirs, ray_index, res, n_basis, sigmoid)
        ctx.res, ctx.sigmoid, ctx.n_basis = res, sigmoid, n_basis
        ctx.save_for_backward(density, sh, links, coords, dirs, ray_index, rgb)
        return sigma, rgb

    @staticmethod
    def backward(ctx, g_sigma, g_rgb):
        from kernels.triton.grid import sample_sh_backward

        density, sh, links, coords, dirs, ray_index, rgb = ctx.saved_tensors
        g_sigma = torch.zeros_like(rgb[:, 0]) if g_sigma is None else g_sigma.contiguous()
        g_rgb = torch.zeros_like(rgb) if g_rgb is None else g_rgb
        if ctx.sigmoid:
            g_rgb = g_rgb * rgb * (1.0 - rgb)
        d_dens, d_sh = sample_sh_backward(density, sh, links, coords, dirs, ray_index, ctx.res,
                                          ctx.n_basis, g_sigma, g_rgb.contiguous(),
                                          ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return d_dens, d_sh, None, None, None, None, None, None


def sample_grid_sh(density: torch.Tensor, sh: torch.Tensor, coords: torch.Tensor, dirs: torch.Tensor,
                   resolution, links: torch.Tensor | None = None, ray_index: torch.Tensor | None = None,
                   sigmoid: bool = True, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(raw density (S,), colour (S, 3)) of the grid at `coords` (S, 3) seen along `dirs`: (S, 3),
    or (R, 3) per ray with `ray_index` (S,) giving each sample's ray. SH degree = sqrt(B) - 1.
    impl: 'torch' (reference: kernels.grid + kernels.sh), 'triton' (one fused kernel), 'auto'."""
    res = as_resolution(resolution)
    _check(density, sh, links, coords, dirs, ray_index, res[0] * res[1] * res[2])
    impl = resolve_impl(impl, "sample.sample_grid_sh", density.device, ("torch", "triton"), density.dtype)
    if impl == "torch":
        return _reference(density, sh, links, coords, dirs, ray_index, res, sigmoid)
    dt = density.dtype
    return _SampleTriton.apply(
        density.contiguous(), sh.to(dt).contiguous(), links.contiguous() if links is not None else None,
        coords.detach().to(dt).contiguous(), dirs.detach().to(dt).contiguous(),
        ray_index.contiguous() if ray_index is not None else None, res, bool(sigmoid))
