"""Encodings: integrated positional encoding of conical frustums (mip-NeRF), plain positional encoding.

A ray r(t) = o + t d (unit d) with a cone of radius `radius * t` at distance t (radius = pixel radius
per unit distance, 2/sqrt(12) of the pixel's angular width, as in mip-NeRF) is cut into frustums
[t0, t1]. Each frustum is approximated by a Gaussian with its exact first and second moments
(mip-NeRF eq. 7, in the numerically stable form using the mid point mu and half width h):
    t_mean = mu + 2 mu h^2 / (3 mu^2 + h^2)
    t_var  = h^2 / 3 - 4/15 * h^4 (12 mu^2 - h^2) / (3 mu^2 + h^2)^2
    r_var  = radius^2 * (mu^2 / 4 + 5/12 h^2 - 4/15 h^4 / (3 mu^2 + h^2))
and its diagonal covariance is t_var d^2 + r_var (1 - d^2). The expected value of sin(2^l x) under
a Gaussian N(m, v) is sin(2^l m) exp(-4^l v / 2), which is the integrated encoding (mip-NeRF eq. 14).
"""

from __future__ import annotations

import torch


def frustum_gaussian(origins: torch.Tensor, directions: torch.Tensor, t_edges: torch.Tensor,
                     radius: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (M, S, 3) and diagonal covariance (M, S, 3) of the S frustums between consecutive
    `t_edges` (M, S+1) of rays (M, 3) with unit `directions`."""
    t0, t1 = t_edges[:, :-1], t_edges[:, 1:]
    mu, hw = (t0 + t1) / 2, (t1 - t0) / 2
    denom = 3 * mu ** 2 + hw ** 2
    t_mean = mu + 2 * mu * hw ** 2 / denom
    t_var = hw ** 2 / 3 - (4.0 / 15.0) * hw ** 4 * (12 * mu ** 2 - hw ** 2) / denom ** 2
    r_var = torch.as_tensor(radius, dtype=t_edges.dtype, device=t_edges.device) ** 2 * (
        mu ** 2 / 4 + (5.0 / 12.0) * hw ** 2 - (4.0 / 15.0) * hw ** 4 / denom)
    d = directions[:, None, :]
    mean = origins[:, None, :] + t_mean[..., None] * d
    d2 = d ** 2
    cov = t_var[..., None] * d2 + r_var[..., None] * (1 - d2)
    return mean, cov


def integrated_pos_enc(mean: torch.Tensor, var: torch.Tensor, n_freqs: int, min_deg: int = 0) -> torch.Tensor:
    """[sin(2^l m) exp(-4^l v / 2), cos(...) ...] for l in [min_deg, min_deg + n_freqs), over the last
    axis of `mean`/`var`; shape (..., 2 * n_freqs * D)."""
    scales = 2.0 ** torch.arange(min_deg, min_deg + n_freqs, dtype=mean.dtype, device=mean.device)
    y = (mean[..., None, :] * scales[:, None]).flatten(-2)
    y_var = (var[..., None, :] * scales[:, None] ** 2).flatten(-2)
    damp = torch.exp(-0.5 * y_var)
    return torch.cat([torch.sin(y) * damp, torch.cos(y) * damp], dim=-1)


def pos_enc(x: torch.Tensor, n_freqs: int, include_input: bool = True) -> torch.Tensor:
    """NeRF positional encoding of the last axis: [x, sin(2^l x), cos(2^l x)] for l < n_freqs."""
    if n_freqs == 0:
        return x if include_input else x[..., :0]
    scales = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)
    y = (x[..., None, :] * scales[:, None]).flatten(-2)
    parts = ([x] if include_input else []) + [torch.sin(y), torch.cos(y)]
    return torch.cat(parts, dim=-1)


def pos_enc_dim(dims: int, n_freqs: int, include_input: bool = True) -> int:
    return dims * (2 * n_freqs + (1 if include_input else 0))
