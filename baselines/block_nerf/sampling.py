"""Samples along rays (coarse: stratified in linear, disparity or log distance; fine: inverse transform
of the coarse weights, blurred as in mip-NeRF) and volume rendering of frustum densities."""

from __future__ import annotations

import torch

SPACINGS = ("linear", "disparity", "log")


class ShardedDraws:
    """A step's per-ray uniform draws when the step's global batch of `total` rays is split over
    processes (data-parallel training): each draw is made for the whole global batch, as one process
    would make it, and the rows [start, stop) of this process's rays are kept, so every ray gets the
    numbers it gets in a one-process run."""

    def __init__(self, generator: torch.Generator, start: int, stop: int, total: int):
        self.generator, self.start, self.stop, self.total = generator, int(start), int(stop), int(total)
        self.device = generator.device

    def rand(self, shape) -> torch.Tensor:
        if shape[0] != self.stop - self.start:
            raise ValueError(f"BlockNeRF: {shape[0]} rays drawn for a slice of {self.stop - self.start}")
        full = torch.rand((self.total, *shape[1:]), generator=self.generator, device=self.generator.device)
        return full[self.start:self.stop]


def uniform(shape, generator) -> torch.Tensor:
    """U[0, 1) draws of `shape` (rays first) from a torch.Generator or a ShardedDraws."""
    if isinstance(generator, ShardedDraws):
        return generator.rand(tuple(shape))
    return torch.rand(shape, generator=generator, device=generator.device)


def coarse_edges(n_rays: int, n_samples: int, near: float, far: float, spacing: str,
                 generator: torch.Generator | None, device=None) -> torch.Tensor:
    """(n_rays, n_samples + 1) interval edges between near and far; jittered when `generator` is given."""
    if spacing not in SPACINGS:
        raise ValueError(f"BlockNeRF: spacing must be one of {SPACINGS}, got {spacing!r}")
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=device).expand(n_rays, n_samples + 1)
    if generator is not None:
        mids = (u[:, 1:] + u[:, :-1]) / 2
        lower = torch.cat([u[:, :1], mids], -1)
        upper = torch.cat([mids, u[:, -1:]], -1)
        u = lower + (upper - lower) * uniform(u.shape, generator).to(u.device)
    if spacing == "linear":
        return near + (far - near) * u
    if spacing == "disparity":
        return 1.0 / (1.0 / near * (1 - u) + 1.0 / far * u)
    return near * (far / near) ** u


def fine_edges(t_edges: torch.Tensor, weights: torch.Tensor, n_samples: int, generator: torch.Generator | None,
               blur_padding: float = 0.01) -> torch.Tensor:
    """(M, n_samples + 1) edges drawn from the piecewise-constant pdf of `weights` over `t_edges`
    (weights max-blurred over neighbours plus `blur_padding`, mip-NeRF's resampling)."""
    w = weights.detach()
    padded = torch.cat([w[:, :1], w, w[:, -1:]], -1)
    w = torch.maximum(padded[:, :-1], padded[:, 1:])
    w = (w[:, :-1] + w[:, 1:]) / 2 + blur_padding
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1).clamp(max=1.0)], -1)
    m = n_samples + 1
    if generator is None:
        u = torch.linspace(0.0, 1.0, m, device=w.device).expand(w.shape[0], m).contiguous()
    else:
        jitter = uniform((w.shape[0], m), generator).to(w.device)
        u = (torch.arange(m, device=w.device) + jitter) / m
        u = u.clamp(max=1.0 - 1e-6)
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = torch.gather(cdf, 1, idx - 1), torch.gather(cdf, 1, idx)
    t0, t1 = torch.gather(t_edges, 1, idx - 1), torch.gather(t_edges, 1, idx)
    frac = ((u - c0) / (c1 - c0).clamp(min=1e-10)).clamp(0, 1)
    edges = t0 + frac * (t1 - t0)
    return torch.sort(edges, -1).values.detach()


def composite(density: torch.Tensor, t_edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (M, S), transmittance before each interval (M, S)) of frustum densities (M, S)."""
    delta = t_edges[:, 1:] - t_edges[:, :-1]
    tau = density * delta
    alpha = 1 - torch.exp(-tau)
    trans = torch.exp(-torch.cat([torch.zeros_like(tau[:, :1]), torch.cumsum(tau[:, :-1], -1)], -1))
    return alpha * trans, trans
