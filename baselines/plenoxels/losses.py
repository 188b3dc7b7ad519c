"""Losses: photometric MSE and the total-variation prior on density and SH (Plenoxels Eq. 3)."""

from __future__ import annotations

import math

import gin
import torch

from kernels.tv import NORMS, tv_from_rows, tv_neighbours

from baselines.plenoxels.grid import SparseGrid


@gin.configurable
class TVLoss:
    """Total variation on the grid, with separate weights for density and SH coefficients.

    Each step evaluates TV at a random `fraction` of the allocated voxels (svox2 draws 1%); TV is
    a mean, so its scale does not depend on the fraction or the resolution. Weights of 0 skip
    the term entirely. `norm`: 'l2' (the paper's, sqrt of the summed squared differences) or
    'squared'.
    """

    def __init__(self, weight_density: float = 0.0, weight_sh: float = 0.0, fraction: float = 0.05,
                 norm: str = "l2"):
        if weight_density < 0 or weight_sh < 0:
            raise ValueError(f"TVLoss weights must be >= 0, got weight_density={weight_density}, "
                             f"weight_sh={weight_sh}")
        if not 0 < fraction <= 1:
            raise ValueError(f"TVLoss.fraction must be in (0, 1], got {fraction}")
        if norm not in NORMS:
            raise ValueError(f"TVLoss.norm must be one of {NORMS}, got {norm!r}")
        self.weight_density = float(weight_density)
        self.weight_sh = float(weight_sh)
        self.fraction = float(fraction)
        self.norm = norm

    @property
    def active(self) -> bool:
        return self.weight_density > 0 or self.weight_sh > 0

    def draw(self, grid: SparseGrid, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of randomly drawn allocated voxels (M,) (with replacement) and of their +x, +y, +z
        neighbours (3, M), -1 where absent."""
        n = max(1, math.ceil(self.fraction * grid.n_rows))
        rows = torch.randint(0, grid.n_rows, (n,), generator=generator).to(grid.voxels.device)
        return tv_neighbours(grid.resolution, grid.links, grid.voxels[rows])

    def __call__(self, density: torch.Tensor, sh: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor],
                 sh_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Weighted TV terms {'tv_density', 'tv_sh'} of the data tensors at `rows` (from draw(),
        possibly remapped); `sh_rows` when the SH tensor is indexed differently."""
        out = {}
        if self.weight_density > 0:
            out["tv_density"] = self.weight_density * tv_from_rows(density, *rows, norm=self.norm)
        if self.weight_sh > 0:
            out["tv_sh"] = self.weight_sh * tv_from_rows(sh, *(sh_rows or rows), norm=self.norm)
        return out


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)
