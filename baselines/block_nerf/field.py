"""One block's radiance field: sampling, networks and volume rendering of rays, in block coordinates.

Positions are normalised as (x - block centre) / scale, where scale = (far + radius) / pi, so every
sample a camera of the block can see lies within the lowest encoding frequency's period.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from baselines.block_nerf.encoding import frustum_gaussian
from baselines.block_nerf.model import MipMLP, VisibilityMLP
from baselines.block_nerf.sampling import coarse_edges, composite, fine_edges


class BlockField(nn.Module):
    def __init__(self, centre, radius: float, near: float, far: float, pixel_radius: float, n_coarse: int,
                 n_fine: int, spacing: str, mlp: MipMLP, visibility: VisibilityMLP | None):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(3))
        self.scale = (far + radius) / math.pi
        self.near, self.far, self.pixel_radius = float(near), float(far), float(pixel_radius)
        self.n_coarse, self.n_fine, self.spacing = int(n_coarse), int(n_fine), spacing
        self.mlp, self.visibility = mlp, visibility

    def gaussians(self, origins, directions, edges):
        mean, cov = frustum_gaussian(origins, directions, edges, self.pixel_radius)
        return (mean - self.centre) / self.scale, cov / self.scale ** 2

    def _level(self, origins, directions, edges, appearance, exposure, want_visibility: bool):
        mean, var = self.gaussians(origins, directions, edges)
        density, feat = self.mlp.features(mean, var)
        rgb = self.mlp.colour_of(feat, directions, appearance, exposure)
        weights, trans = composite(density, edges)
        out = {"rgb": (weights[..., None] * rgb).sum(1), "weights": weights, "trans": trans, "edges": edges,
               "density": density, "sample_rgb": rgb}  # per-sample colours: harness inspect shows them
        if want_visibility and self.visibility is not None:
            out["visibility"] = self.visibility(mean.detach(), var.detach(), directions)
        return out

    def forward(self, origins, directions, appearance=None, exposure=None, generator=None,
                want_visibility: bool = False, coarse_only: bool = False) -> dict:
        """{'coarse': {...}, 'fine': {...}} with 'rgb' (M, 3), 'weights'/'trans' (M, S), 'edges' (M, S+1);
        stratified/jittered samples when `generator` is given (training), deterministic otherwise."""
        edges = coarse_edges(origins.shape[0], self.n_coarse, self.near, self.far, self.spacing, generator,
                             origins.device)
        coarse = self._level(origins, directions, edges, appearance, exposure, want_visibility and coarse_only)
        if coarse_only or self.n_fine == 0:
            return {"coarse": coarse, "fine": coarse}
        edges_f = fine_edges(edges, coarse["weights"], self.n_fine, generator)
        fine = self._level(origins, directions, edges_f, appearance, exposure, want_visibility)
        return {"coarse": coarse, "fine": fine}

    @staticmethod
    def depth_acc(level: dict) -> tuple[torch.Tensor, torch.Tensor]:
        e = level["edges"]
        mids = (e[:, 1:] + e[:, :-1]) / 2
        acc = level["weights"].sum(1)
        return (level["weights"] * mids).sum(1) / acc.clamp(min=1e-8), acc
