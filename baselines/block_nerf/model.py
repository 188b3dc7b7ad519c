"""The per-block networks: a mip-NeRF MLP whose colour branch is conditioned on the view direction,
an appearance embedding and the image's exposure, and a separate visibility MLP.

Density depends on position only; appearance and exposure enter the colour branch only (as in
Block-NeRF), so they can change colour but never geometry.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from baselines.block_nerf.encoding import integrated_pos_enc, pos_enc, pos_enc_dim


class MipMLP(nn.Module):
    """IPE(x) -> `depth` ReLU layers of `width` (input re-injected after layer `skip`) -> density and a
    feature; [feature, PE(direction), appearance code, PE(exposure)] -> `colour_width` -> RGB."""

    def __init__(self, pos_freqs: int = 12, dir_freqs: int = 4, depth: int = 4, width: int = 64, skip: int = 2,
                 colour_width: int = 32, appearance_dim: int = 0, exposure_freqs: int | None = None,
                 density_bias: float = -1.0, rgb_padding: float = 0.001):
        super().__init__()
        self.pos_freqs, self.dir_freqs, self.exposure_freqs = pos_freqs, dir_freqs, exposure_freqs
        self.appearance_dim, self.skip, self.rgb_padding = appearance_dim, skip, rgb_padding
        self.density_bias = density_bias
        in_dim = 3 * 2 * pos_freqs
        layers = []
        for i in range(depth):
            d_in = in_dim if i == 0 else width + (in_dim if i == skip else 0)
            layers.append(nn.Linear(d_in, width))
        self.trunk = nn.ModuleList(layers)
        self.density = nn.Linear(width, 1)
        self.bottleneck = nn.Linear(width, width)
        cond = pos_enc_dim(3, dir_freqs) + appearance_dim
        if exposure_freqs is not None:
            cond += pos_enc_dim(1, exposure_freqs)
        self.colour = nn.Sequential(nn.Linear(width + cond, colour_width), nn.ReLU(), nn.Linear(colour_width, 3))

    def features(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density (...,), feature (..., width)) of frustum Gaussians in normalised coordinates."""
        x = integrated_pos_enc(mean, var, self.pos_freqs)
        h = x
        for i, layer in enumerate(self.trunk):
            if i == self.skip and i > 0:
                h = torch.cat([h, x], -1)
            h = torch.relu(layer(h))
        density = nn.functional.softplus(self.density(h)[..., 0] + self.density_bias)
        return density, h

    def colour_of(self, feature: torch.Tensor, directions: torch.Tensor, appearance: torch.Tensor | None,
                  exposure: torch.Tensor | None) -> torch.Tensor:
        """RGB (M, S, 3) from features (M, S, W), unit directions (M, 3), codes (M, A), exposure input (M, 1)."""
        m, s = feature.shape[:2]
        parts = [self.bottleneck(feature), pos_enc(directions, self.dir_freqs)[:, None].expand(m, s, -1)]
        if self.appearance_dim:
            if appearance is None:
                raise ValueError("MipMLP: this model has appearance codes; pass one per ray")
            parts.append(appearance[:, None].expand(m, s, -1))
        if self.exposure_freqs is not None:
            if exposure is None:
                raise ValueError("MipMLP: this model takes exposure; pass one per ray")
            parts.append(pos_enc(exposure, self.exposure_freqs)[:, None].expand(m, s, -1))
        rgb = torch.sigmoid(self.colour(torch.cat(parts, -1)))
        return rgb * (1 + 2 * self.rgb_padding) - self.rgb_padding


class VisibilityMLP(nn.Module):
    """V(x, d) in (0, 1): the transmittance the density network gives point x seen along d (Block-NeRF)."""

    def __init__(self, pos_freqs: int = 8, dir_freqs: int = 4, depth: int = 2, width: int = 32):
        super().__init__()
        self.pos_freqs, self.dir_freqs = pos_freqs, dir_freqs
        dims = [3 * 2 * pos_freqs + pos_enc_dim(3, dir_freqs)] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, mean: torch.Tensor, var: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        m, s = mean.shape[:2]
        x = torch.cat([integrated_pos_enc(mean, var, self.pos_freqs),
                       pos_enc(directions, self.dir_freqs)[:, None].expand(m, s, -1)], -1)
        return torch.sigmoid(self.net(x)[..., 0])


def exposure_input(exposure: torch.Tensor, scale: float) -> torch.Tensor:
    """The exposure as the colour branch sees it: log2(exposure) * scale, shape (M, 1)."""
    return (torch.log2(exposure.clamp(min=1e-8)) * scale)[:, None]


def init_codes(n: int, dim: int, generator: torch.Generator, std: float = 0.01) -> torch.Tensor:
    return torch.randn(n, dim, generator=generator, device=generator.device) * std


def param_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def pixel_radius(fx: float) -> float:
    """mip-NeRF's cone radius per unit distance for a pixel of angular width 1/fx."""
    return 2.0 / math.sqrt(12.0) / float(fx)
