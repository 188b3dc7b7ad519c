"""The Plenoxels loss family, each term a Gin configurable that a sweep can vary.

- `Reconstruction`: L2 (the paper's Eq. 2) or L1 on the ray colours, plus an optional SSIM term
  computed by the evaluation module's SSIM (harness.core.metrics.ssim, differentiable) on square
  patches of rays (the trainer then samples patches, see RaySampler.sample).
- `TVLoss`: total variation on density and SH (Eq. 3), on a random subset of voxels per step.
- `Sparsity`: Cauchy (the paper's forward-facing / 360 prior, log(1 + 2 sigma^2) over the
  samples of the batch) or L1 on the activated density of the samples.
- `Smoothness`: second-order differences (f(v-a) - 2 f(v) + f(v+a))^2 per axis a on random voxels,
  a curvature prior that, unlike TV, leaves linear ramps of features (consistent gradients) free.

Every term is a mean, so its scale does not depend on batch size, voxel fraction or resolution;
a weight of 0 disables a term (nothing is computed).

The terms are registered with Gin (`gin.register`), not made configurable: Gin's bindings reach a
term only through a reference (`Plenoxels.tv = @TVLoss()`, experiments/base/plenoxels.gin), and
building one in Python never reads them. A binding to a term no reference uses is an error when
the sweep expands (harness.run.usage).
"""

from __future__ import annotations

import math

import gin
import torch

from baselines.plenoxels.grid import SparseGrid
from harness.core.metrics import ssim as image_ssim
from harness.core.metrics.image import SSIM_WINDOW
from kernels.grid import as_resolution
from kernels.tv import NORMS, tv_from_rows, tv_neighbours

RECONSTRUCTIONS = ("l2", "l1")
SPARSITIES = ("cauchy", "l1")


def _check_weight(owner: str, **weights: float) -> None:
    for name, w in weights.items():
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {w}")


def _check_fraction(owner: str, fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ValueError(f"{owner}.fraction must be in (0, 1], got {fraction}")


def draw_voxels(grid: SparseGrid, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Flat voxel indices (M,) of randomly drawn allocated voxels (with replacement)."""
    n = max(1, math.ceil(fraction * grid.n_rows))
    # drawn on the CPU generator whatever the grid's device, so the draws do not depend on it
    rows = torch.randint(0, grid.n_rows, (n,), generator=generator, device="cpu").to(grid.voxels.device)
    return grid.voxels[rows]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)


@gin.register
class Reconstruction:
    """Photometric loss: `weight` * (L2 | L1) + `ssim_weight` * (1 - SSIM over p x p patches).

    With ssim_weight > 0 the batch must be patch-major p x p patches (`patch_size` p >= 11, the
    SSIM window)."""

    def __init__(self, kind: str = "l2", weight: float = 1.0, ssim_weight: float = 0.0,
                 patch_size: int = 16):
        if kind not in RECONSTRUCTIONS:
            raise ValueError(f"Reconstruction.kind must be one of {RECONSTRUCTIONS}, got {kind!r}")
        _check_weight("Reconstruction", weight=weight, ssim_weight=ssim_weight)
        if ssim_weight > 0 and patch_size < SSIM_WINDOW:
            raise ValueError(f"Reconstruction.patch_size must be >= {SSIM_WINDOW} (the SSIM window) "
                             f"when ssim_weight > 0, got {patch_size}")
        self.kind, self.weight, self.ssim_weight = kind, float(weight), float(ssim_weight)
        self.patch_size = int(patch_size) if ssim_weight > 0 else 1

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms; the L2 term is named 'mse' (the value logged for every trial)."""
        out = {}
        if self.weight > 0:
            if self.kind == "l2":
                out["mse"] = self.weight * mse(pred, target)
            else:
                out["l1"] = self.weight * torch.mean((pred - target).abs())
        if self.ssim_weight > 0:
            out["ssim"] = self.ssim_weight * (1.0 - self.ssim(pred, target))
        return out

    def ssim(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean SSIM over the batch's patches (rays (n * p * p, 3), patch-major)."""
        p = self.patch_size
        n = pred.shape[0] // (p * p)
        if n == 0 or n * p * p != pred.shape[0]:
            raise ValueError(f"Reconstruction: SSIM needs a batch of whole {p}x{p} patches, got "
                             f"{pred.shape[0]} rays")
        return image_ssim(pred.view(n, p, p, 3), target.view(n, p, p, 3)).mean()


@gin.register
class TVLoss:
    """Total variation on the grid, with separate weights for density and SH coefficients.

    Each step evaluates TV at a random `fraction` of the allocated voxels (svox2 draws 1%); TV is
    a mean, so its scale does not depend on the fraction or the resolution. Weights of 0 skip
    the term entirely. `norm`: 'l2' (the paper's, sqrt of the summed squared differences) or
    'squared'.
    """

    def __init__(self, weight_density: float = 0.0, weight_sh: float = 0.0, fraction: float = 0.05,
                 norm: str = "l2"):
        _check_weight("TVLoss", weight_density=weight_density, weight_sh=weight_sh)
        _check_fraction("TVLoss", fraction)
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
        return tv_neighbours(grid.resolution, grid.links, draw_voxels(grid, self.fraction, generator))

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


@gin.register
class Sparsity:
    """Sparsity prior on the activated density sigma of the batch's samples:
    'cauchy' mean log(1 + 2 sigma^2) (Plenoxels, Sec. 4), or 'l1' mean |sigma|."""

    def __init__(self, weight: float = 0.0, kind: str = "cauchy"):
        _check_weight("Sparsity", weight=weight)
        if kind not in SPARSITIES:
            raise ValueError(f"Sparsity.kind must be one of {SPARSITIES}, got {kind!r}")
        self.weight, self.kind = float(weight), kind

    @property
    def active(self) -> bool:
        return self.weight > 0

    def __call__(self, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.active:
            return {}
        if sigma.numel() == 0:
            return {"sparsity": sigma.sum() * 0.0}
        value = torch.log1p(2 * sigma * sigma) if self.kind == "cauchy" else sigma.abs()
        return {"sparsity": self.weight * value.mean()}


def axis_neighbours(resolution, links: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """Rows (3, 2, M) of the -a and +a neighbours of `voxels` (M,) along each axis a of a grid of
    `resolution` (int or (X, Y, Z)); -1 where outside the grid or not allocated."""
    X, Y, Z = as_resolution(resolution)
    voxels = voxels.long()
    coords = (voxels // (Y * Z), voxels // Z % Y, voxels % Z)
    out = []
    for coord, stride, size in zip(coords, (Y * Z, Z, 1), (X, Y, Z)):
        pair = []
        for sign, inside in ((-1, coord > 0), (1, coord < size - 1)):
            nb = torch.where(inside, voxels + sign * stride, voxels)
            pair.append(torch.where(inside, links[nb].long(), -1))
        out.append(torch.stack(pair))
    return torch.stack(out)


@gin.register
class Smoothness:
    """Second-order smoothness: mean over drawn voxels, axes with both neighbours allocated and
    channels of (f(v-a) - 2 f(v) + f(v+a))^2; separate weights for density and SH."""

    def __init__(self, weight_density: float = 0.0, weight_sh: float = 0.0, fraction: float = 0.05):
        _check_weight("Smoothness", weight_density=weight_density, weight_sh=weight_sh)
        _check_fraction("Smoothness", fraction)
        self.weight_density, self.weight_sh = float(weight_density), float(weight_sh)
        self.fraction = float(fraction)

    @property
    def active(self) -> bool:
        return self.weight_density > 0 or self.weight_sh > 0

    def draw(self, grid: SparseGrid, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (M,) of drawn voxels and (3, 2, M) of their -a/+a neighbours (see axis_neighbours)."""
        voxels = draw_voxels(grid, self.fraction, generator)
        return grid.links[voxels].long(), axis_neighbours(grid.resolution, grid.links, voxels)

    @staticmethod
    def second_difference(values: torch.Tensor, row: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Mean squared second difference of `values` (N, C) over the complete stencils."""
        complete = (neighbours >= 0).all(dim=1) & (row >= 0)  # (3, M)
        axis, idx = torch.nonzero(complete, as_tuple=True)
        if idx.numel() == 0:
            return values.sum() * 0.0
        lo, hi = neighbours[axis, 0, idx], neighbours[axis, 1, idx]
        d2 = values[lo] - 2 * values[row[idx]] + values[hi]
        return (d2 * d2).mean()

    def __call__(self, density: torch.Tensor, sh: torch.Tensor,
                 rows: tuple[torch.Tensor, torch.Tensor],
                 sh_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = {}
        if self.weight_density > 0:
            out["smooth_density"] = self.weight_density * self.second_difference(density, *rows)
        if self.weight_sh > 0:
            out["smooth_sh"] = self.weight_sh * self.second_difference(sh, *(sh_rows or rows))
        return out
