"""Test-time appearance protocol.

- 'appearance_id': the view uses the code learned for its `appearance_id` (same capture conditions).
- 'left_half': the code is unknown (per-image codes); it is fitted with the networks frozen on the left
  half of the test image and the right half is scored (NeRF-W's and Block-NeRF's protocol).
- 'none': the model has no appearance codes.
The protocol name, and for 'left_half' which columns were fitted and which scored, go in metrics.json.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

PROTOCOLS = ("appearance_id", "left_half", "none")


def halves(width: int) -> tuple[slice, slice]:
    """(columns the code is fitted on, columns that are scored): left = [0, W//2), right = [W//2, W)."""
    return slice(0, width // 2), slice(width // 2, width)


def half_pixels(width: int, height: int, which: str) -> np.ndarray:
    """Flat row-major pixel indices of the left or right half of an image."""
    cols = halves(width)[0 if which == "left" else 1]
    grid = np.arange(height * width).reshape(height, width)
    return grid[:, cols].reshape(-1)


def choose(mode: str, requested: str) -> str:
    """The protocol for appearance `mode` ('appearance_id', 'image', 'none') and a request ('auto' or a
    protocol name); raises ValueError for combinations that have no meaning."""
    auto = {"appearance_id": "appearance_id", "image": "left_half", "none": "none"}[mode]
    if requested == "auto":
        return auto
    if requested not in PROTOCOLS:
        raise ValueError(f"Appearance.test_protocol must be 'auto' or one of {PROTOCOLS}, got {requested!r}")
    if mode == "none" and requested != "none":
        raise ValueError(f"Appearance.test_protocol = {requested!r} needs appearance codes (Appearance.mode = 'none')")
    if mode == "image" and requested == "appearance_id":
        raise ValueError("Appearance.test_protocol = 'appearance_id' needs Appearance.mode = 'appearance_id' "
                         "(per-image codes have no code for a test image)")
    return requested


@contextlib.contextmanager
def frozen(*modules):
    """Parameters of `modules` do not require grad inside the block (networks frozen)."""
    params = [p for m in modules for p in m.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)


def fit_code(render_fn, init: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor, target: torch.Tensor,
             steps: int, lr: float, rays_per_step: int, seed: int) -> torch.Tensor:
    """Optimise one appearance code so `render_fn(origins, directions, code)` matches `target` (M, 3)
    on random subsets of the given rays; the caller freezes the networks."""
    code = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([code], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = origins.shape[0]
    for _ in range(int(steps)):
        pick = torch.randint(0, n, (min(rays_per_step, n),), generator=gen, device="cpu")
        rgb = render_fn(origins[pick], directions[pick], code)
        loss = ((rgb - target[pick].to(rgb.device)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return code.detach()
