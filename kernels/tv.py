"""Total variation of per-voxel values over a (possibly sparse) grid, as in Plenoxels.

For voxel v and channel d, with Delta_a the difference to the +a neighbour (a in x, y, z):
  'l2'      (the paper's Eq. 3): sqrt(Delta_x^2 + Delta_y^2 + Delta_z^2)
  'squared' (quadratic variant): Delta_x^2 + Delta_y^2 + Delta_z^2
averaged over the chosen voxels and channels, so the value does not depend on how many voxels
are drawn. A neighbour outside the grid or absent from a sparse grid contributes no difference
(svox2 likewise clamps at the border).
"""

from __future__ import annotations

import torch

from kernels._impl import resolve_impl
from kernels.grid import as_resolution

NORMS = ("l2", "squared")


def tv_neighbours(resolution, links: torch.Tensor | None, voxels: torch.Tensor,
                  impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `voxels` (M,) and of their +x, +y, +z neighbours (3, M); -1 where absent.

    Dense grid: `links` None and rows are flat voxel indices. Sparse grid: `links` (X*Y*Z,)
    gives each voxel's row or -1."""
    resolve_impl(impl, "tv.tv_neighbours")
    X, Y, Z = as_resolution(resolution)
    voxels = voxels.long()
    row = voxels if links is None else links[voxels].long()
    coords = (voxels // (Y * Z), voxels // Z % Y, voxels % Z)
    nbs = []
    for coord, size, stride in zip(coords, (X, Y, Z), (Y * Z, Z, 1)):
        inside = coord < size - 1
        nb = torch.where(inside, voxels + stride, voxels)
        nb_row = nb if links is None else links[nb].long()
        nbs.append(torch.where(inside & (row >= 0), nb_row, -1))
    return row, torch.stack(nbs)


class _TVTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, row, neighbours, l2, eps):
        from kernels.triton.tv import tv_sum

        n = int((row >= 0).sum()) * values.shape[1]
        ctx.save_for_backward(values, row, neighbours)
        ctx.l2, ctx.eps, ctx.n = l2, eps, n
        if n == 0:
            return values.new_zeros(())
        return tv_sum(values, row, neighbours, l2, eps) / n

    @staticmethod
    def backward(ctx, grad):
        from kernels.triton.tv import tv_backward

        values, row, neighbours = ctx.saved_tensors
        if ctx.n == 0:
            return torch.zeros_like(values), None, None, None, None
        g = (grad / ctx.n).reshape(1).to(values.dtype).contiguous()
        return tv_backward(values, row, neighbours, ctx.l2, ctx.eps, g), None, None, None, None


def tv_from_rows(values: torch.Tensor, row: torch.Tensor, neighbours: torch.Tensor,
                 norm: str = "l2", eps: float = 1e-12, impl: str = "auto") -> torch.Tensor:
    """Mean TV of `values` (N, C) over centre rows `row` (M,) with neighbour rows (3, M)
    (-1: no difference along that axis); centres with row -1 are ignored.
    impl: 'torch' (reference), 'triton' (one kernel, atomic scatter backward), 'auto'."""
    impl = resolve_impl(impl, "tv.tv_from_rows", values.device, ("torch", "triton"), values.dtype)
    if norm not in NORMS:
        raise ValueError(f"total_variation: norm must be one of {NORMS}, got {norm!r}")
    if impl == "triton":
        return _TVTriton.apply(values.contiguous(), row.contiguous(), neighbours.contiguous(),
                               norm == "l2", float(eps))
    present = row >= 0
    row, neighbours = row[present], neighbours[:, present]
    if row.numel() == 0:
        return values.sum() * 0.0
    centre = values[row]
    total = torch.zeros_like(centre)
    for nb in neighbours:
        valid = (nb >= 0).unsqueeze(1).to(values.dtype)
        diff = (values[nb.clamp(min=0)] - centre) * valid
        total = total + diff * diff
    if norm == "l2":  # sqrt is not differentiable at 0: 0 where flat, clamped just above
        total = torch.where(total > 0, torch.sqrt(total.clamp(min=eps)), torch.zeros_like(total))
    return total.mean()


def total_variation(values: torch.Tensor, resolution, links: torch.Tensor | None = None,
                    voxels: torch.Tensor | None = None, norm: str = "l2", eps: float = 1e-12,
                    impl: str = "auto") -> torch.Tensor:
    """Mean TV (scalar) of `values` (N, C).

    Dense grid: `links` None and N = X*Y*Z rows in flat voxel order (see kernels.grid).
    Sparse grid: `links` (X*Y*Z,) gives each voxel's row in `values`, or -1 when absent.
    `voxels` (M,) flat voxel indices to evaluate (default: all present voxels); absent ones are
    ignored (neighbours are found by the reference `tv_neighbours`, the sum by `impl`). For 'l2', sums of
    squares below `eps` count as `eps` (finite gradients) and a constant grid has TV exactly 0."""
    resolve_impl(impl, "tv.total_variation", values.device, ("torch", "triton"))
    X, Y, Z = as_resolution(resolution)
    n_vox = X * Y * Z
    if links is None and values.shape[0] != n_vox:
        raise ValueError(f"total_variation: dense values need {n_vox} rows, got {values.shape[0]}")
    if voxels is None:
        voxels = (torch.arange(n_vox, device=values.device) if links is None
                  else torch.nonzero(links >= 0)[:, 0])
    row, neighbours = tv_neighbours((X, Y, Z), links, voxels)
    return tv_from_rows(values, row, neighbours, norm=norm, eps=eps, impl=impl)
