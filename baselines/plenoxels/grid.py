"""The Plenoxels voxel grid: density and SH coefficients stored only for allocated voxels.

`links` maps every voxel of the (X, Y, Z) grid to its row in the data tensors or -1, like svox2's
SparseGrid (whose LLFF grids are not cubic either, e.g. 1408 x 1156 x 128); absent voxels read as zeros
(density 0, SH 0). A dense grid is the case where every voxel is allocated. Rows are always in increasing
flat-voxel order, so `links` alone fixes them.
"""

from __future__ import annotations

import torch

from kernels.grid import as_resolution, interpolate, trilinear_corners, world_to_grid


class SparseGrid:
    def __init__(self, resolution, bbox_min: torch.Tensor, bbox_max: torch.Tensor,
                 links: torch.Tensor, density: torch.Tensor, sh: torch.Tensor):
        self.resolution = as_resolution(resolution)  # (X, Y, Z)
        self.bbox_min, self.bbox_max = bbox_min, bbox_max
        self.links = links  # (X*Y*Z,) int32, row or -1
        self.density = density  # (N, 1) raw density, world units (before the activation)
        self.sh = sh  # (N, 3 * n_basis), channel-major: [r coeffs, g coeffs, b coeffs]
        self.voxels = torch.nonzero(links >= 0)[:, 0]  # (N,) flat voxel index of each row

    @classmethod
    def dense(cls, resolution, bbox_min: torch.Tensor, bbox_max: torch.Tensor, sh_dim: int,
              init_density: float) -> SparseGrid:
        x, y, z = as_resolution(resolution)
        n = x * y * z
        dev = bbox_min.device
        links = torch.arange(n, dtype=torch.int32, device=dev)
        density = torch.full((n, 1), float(init_density), device=dev)
        return cls(resolution, bbox_min, bbox_max, links, density, torch.zeros(n, sh_dim, device=dev))

    @property
    def n_rows(self) -> int:
        return int(self.density.shape[0])

    @property
    def voxel_size(self) -> torch.Tensor:
        return (self.bbox_max - self.bbox_min) / self.shape_tensor

    @property
    def shape_tensor(self) -> torch.Tensor:
        """(X, Y, Z) as a float tensor on the grid's device."""
        return torch.tensor(self.resolution, dtype=self.bbox_min.dtype, device=self.bbox_min.device)

    def to_grid(self, points: torch.Tensor) -> torch.Tensor:
        return world_to_grid(points, self.bbox_min, self.bbox_max, self.resolution)

    def corners(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data rows (8, S) and trilinear weights (8, S) at grid coordinates (S, 3); absent
        corners get row 0 with weight 0, so they read as zeros and receive no gradient."""
        index, weight = trilinear_corners(coords, self.resolution)
        if self.n_rows == self.links.shape[0]:  # dense: rows are voxel indices
            return index, weight
        rows = self.links.index_select(0, index.view(-1)).view(index.shape)
        weight = weight * (rows >= 0)
        return rows.clamp_(min=0), weight

    def volume(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row `values` (N,) scattered into a dense (X, Y, Z) tensor, zeros where absent."""
        vol = torch.zeros(self.links.shape[0], dtype=values.dtype, device=values.device)
        vol[self.voxels] = values.detach()
        return vol.view(self.resolution)

    def density_volume(self) -> torch.Tensor:
        """Raw density as a dense (X, Y, Z) tensor, zeros where absent."""
        return self.volume(self.density[:, 0])

    @staticmethod
    def _links_for(keep: torch.Tensor) -> torch.Tensor:
        links = torch.full(keep.shape, -1, dtype=torch.int32, device=keep.device)
        links[keep] = torch.arange(int(keep.sum()), dtype=torch.int32, device=keep.device)
        return links

    def pruned(self, keep: torch.Tensor) -> tuple[SparseGrid, torch.Tensor]:
        """The grid restricted to voxels where `keep` (X*Y*Z,) bool is set, and the kept rows (k,)."""
        keep = keep.reshape(-1) & (self.links >= 0)
        rows = self.links[keep].long()
        grid = SparseGrid(self.resolution, self.bbox_min, self.bbox_max, self._links_for(keep),
                          self.density[rows].contiguous(), self.sh[rows].contiguous())
        return grid, rows

    @torch.no_grad()
    def upsampled(self, resolution, keep: torch.Tensor) -> SparseGrid:
        """The grid resampled at `resolution` (int or (X, Y, Z)) over the same box: values
        trilinearly interpolated at the new voxel centres, allocated where the voxel of the old
        grid containing the new centre is set in `keep` (old X*Y*Z,) (svox2's resample)."""
        dev = self.density.device
        new = as_resolution(resolution)
        # old voxel holding each new centre, per axis
        parent = [((torch.arange(n, device=dev, dtype=torch.float32) + 0.5) * (o / n)).long()
                  for n, o in zip(new, self.resolution)]
        keep3 = keep.view(self.resolution)
        new_keep = keep3[parent[0]][:, parent[1]][:, :, parent[2]].reshape(-1)
        idx = torch.nonzero(new_keep)[:, 0]
        cells = torch.stack([idx // (new[1] * new[2]), idx // new[2] % new[1], idx % new[2]], 1)
        scale = torch.tensor([o / n for o, n in zip(self.resolution, new)], device=dev)
        coords = (cells.float() + 0.5) * scale - 0.5  # in old grid units
        rows, weight = self.corners(coords)
        return SparseGrid(new, self.bbox_min, self.bbox_max, self._links_for(new_keep),
                          interpolate(self.density, rows, weight), interpolate(self.sh, rows, weight))

    def state_dict(self) -> dict:
        return {"resolution": list(self.resolution), "links": self.links.clone(),
                "density": self.density.detach().clone(), "sh": self.sh.detach().clone()}

    @classmethod
    def from_state(cls, state: dict, bbox_min: torch.Tensor, bbox_max: torch.Tensor) -> SparseGrid:
        dev = bbox_min.device
        return cls(state["resolution"], bbox_min, bbox_max, state["links"].to(dev),
                   state["density"].to(dev).clone(), state["sh"].to(dev).clone())
