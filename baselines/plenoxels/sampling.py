"""Empty-space skipping and fixed-step sample placement.

Occupancy is kept at two levels, both conservative for trilinear interpolation:
- fine: an interpolation cell (the cube between 8 voxel centres) is occupied when any corner's
  raw density exceeds a threshold; with a ReLU activation and threshold 0, a skipped sample
  would have had density exactly 0;
- coarse: fine cells max-pooled by `factor` and dilated by one coarse cell, tested once per block
  of BLOCK consecutive samples (at the block's midpoint) before the block is expanded.
Rays are clipped to the box around all occupied cells. Samples sit at
t = t_near + (k + 1/2) * step, with t_near where the ray enters that box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baselines.plenoxels.grid import SparseGrid
from kernels.grid import flat_index
from kernels.render import ray_aabb, segment_starts

BLOCK = 8  # samples per coarse test


@dataclass
class Occupancy:
    fine: torch.Tensor  # ((X-1)(Y-1)(Z-1),) bool
    coarse: torch.Tensor  # (Rc^3,) bool
    factor: int  # fine cells per coarse cell along each axis
    box_min: torch.Tensor  # (3,) world box around the occupied cells
    box_max: torch.Tensor
    resolution: tuple  # (X, Y, Z) of the grid (cells per axis: resolution - 1)

    @classmethod
    def build(cls, grid: SparseGrid, threshold: float, step_voxels: float) -> Occupancy:
        r = grid.resolution
        cells = tuple(n - 1 for n in r)
        vol = grid.density_volume().view(1, 1, *r)
        fine = F.max_pool3d(vol, 2, stride=1).view(cells) > threshold
        # a block's samples lie within BLOCK/2 steps of its midpoint along each axis
        factor = int(math.floor(BLOCK / 2 * step_voxels)) + 1
        coarse = F.max_pool3d(fine.float().view(1, 1, *cells), factor, stride=factor,
                              ceil_mode=True)
        coarse = F.max_pool3d(coarse, 3, stride=1, padding=1)[0, 0] > 0
        box_min, box_max = cls._box(fine, grid)
        return cls(fine.reshape(-1), coarse.reshape(-1), factor, box_min, box_max, r)

    @staticmethod
    def _box(fine: torch.Tensor, grid: SparseGrid) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.nonzero(fine)
        if idx.numel() == 0:  # nothing occupied: an empty box that no ray hits
            return grid.bbox_min.clone(), grid.bbox_min.clone()
        cells = torch.tensor(fine.shape, dtype=torch.float32, device=fine.device)
        lo = idx.amin(0).float()
        hi = idx.amax(0).float() + 1
        # border cells also hold the clamped half-voxel margin up to the box face
        lo = torch.where(lo == 0, torch.full_like(lo, -0.5), lo)
        hi = torch.where(hi == cells, cells + 0.5, hi)
        vs = grid.voxel_size
        return grid.bbox_min + (lo + 0.5) * vs, grid.bbox_min + (hi + 0.5) * vs

    def occupied(self, coords: torch.Tensor, coarse: bool = False) -> torch.Tensor:
        """Whether grid coordinates (S, 3) fall in an occupied fine (or coarse) cell."""
        cells = tuple(n - 1 for n in self.resolution)
        top = torch.tensor(cells, dtype=coords.dtype, device=coords.device) - 1
        base = torch.minimum(coords.floor().clamp_(min=0), top)
        if coarse:
            base = base.div_(self.factor).floor_()
            cells = tuple(-(-c // self.factor) for c in cells)
        return (self.coarse if coarse else self.fine).index_select(0, flat_index(base, cells))

    def state_dict(self) -> dict:
        return {"fine": self.fine.clone(), "coarse": self.coarse.clone(), "factor": self.factor,
                "box_min": self.box_min.clone(), "box_max": self.box_max.clone(),
                "resolution": list(self.resolution)}

    @classmethod
    def from_state(cls, state: dict, device) -> Occupancy:
        return cls(state["fine"].to(device), state["coarse"].to(device), int(state["factor"]),
                   state["box_min"].to(device), state["box_max"].to(device), _shape(state["resolution"]))


def _shape(resolution) -> tuple:
    """(X, Y, Z) from a stored resolution (an int in checkpoints written before non-cubic grids)."""
    return (int(resolution),) * 3 if isinstance(resolution, int) else tuple(int(r) for r in resolution)


def _packed_arange(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment id, position within segment) for segments of the given lengths."""
    seg = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    pos = torch.arange(seg.shape[0], device=counts.device) - segment_starts(counts)[seg]
    return seg, pos


def sample_rays(grid: SparseGrid, occ: Occupancy, origins: torch.Tensor, directions: torch.Tensor,
                step: float, near: float, far: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed samples in occupied cells: (ray_index (S,), t (S,), grid coordinates (S, 3)),
    ordered by ray and front to back."""
    t_near, t_far, hit = ray_aabb(origins, directions, occ.box_min, occ.box_max, near, far)
    n_fine = torch.where(hit, torch.ceil((t_far - t_near) / step), torch.zeros_like(t_far)).long()
    # blocks of BLOCK samples; a block starts at t_near + BLOCK * j * step
    ray_b, j = _packed_arange((n_fine + BLOCK - 1) // BLOCK)
    g0 = grid.to_grid(origins)  # grid coordinates at t = 0 and per unit of t
    gd = directions * (grid.shape_tensor / (grid.bbox_max - grid.bbox_min))
    t0 = t_near.index_select(0, ray_b) + (j * (BLOCK * step)).to(t_near.dtype)
    g0, gd = g0.index_select(0, ray_b), gd.index_select(0, ray_b)
    mid = torch.addcmul(g0, gd, (t0 + BLOCK / 2 * step).unsqueeze(1))
    blocks = torch.nonzero(occ.occupied(mid, coarse=True))[:, 0]
    ray_b, t0 = ray_b.index_select(0, blocks), t0.index_select(0, blocks)
    g0, gd = g0.index_select(0, blocks), gd.index_select(0, blocks)
    n_valid = n_fine.index_select(0, ray_b) - j.index_select(0, blocks) * BLOCK
    # expand kept blocks to their samples by broadcasting: (blocks, BLOCK)
    offsets = (torch.arange(BLOCK, device=t0.device, dtype=t0.dtype) + 0.5) * step
    t = (t0.unsqueeze(1) + offsets).view(-1)
    coords = torch.addcmul(g0.unsqueeze(1), gd.unsqueeze(1), t.view(-1, BLOCK, 1)).view(-1, 3)
    valid = torch.arange(BLOCK, device=t0.device) < n_valid.unsqueeze(1)
    keep = torch.nonzero(valid.view(-1) & occ.occupied(coords))[:, 0]
    return ray_b.index_select(0, keep // BLOCK), t.index_select(0, keep), coords.index_select(0, keep)
