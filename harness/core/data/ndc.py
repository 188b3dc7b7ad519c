"""Normalised device coordinates for forward-facing scenes (LLFF with `ndc=True`).

The mapping is the one derived in the NeRF paper (Mildenhall et al. 2020, appendix C,
"NDC ray space derivation"): a pinhole camera looking down -z with focal `f` and image
`W x H` maps the frustum z in (-inf, -near] to the cube [-1, 1]^3 by

    (x, y, z) -> (-f/(W/2) * x/z,  -f/(H/2) * y/z,  1 + 2*near/z).

A ray o + t d (o moved first to the near plane z = -near) becomes o' + t' d' with

    o' = (-f/(W/2) ox/oz,  -f/(H/2) oy/oz,  1 + 2 near/oz)
    d' = (-f/(W/2) (dx/dz - ox/oz),  -f/(H/2) (dy/dz - oy/oz),  -2 near/oz),

and t' in [0, 1) covers the ray from the near plane to infinity. The result is independent of
the length of d, so unit directions (harness.core.data.rays) may be passed as they are.
"""

from __future__ import annotations

import numpy as np
import torch


def ndc_rays(origins, directions, focal: float, width: int, height: int, near: float = 1.0):
    """NDC origins and directions for world-space rays (torch tensors or numpy arrays, (..., 3)).

    `focal`, `width`, `height` are the values a loader stores in `scene.extras['ndc']`; the world
    frame must be the recentred one the loader produced (cameras looking down -z).
    """
    lib = torch if isinstance(origins, torch.Tensor) else np
    t = -(near + origins[..., 2]) / directions[..., 2]
    o = origins + t[..., None] * directions
    ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
    dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]
    sx, sy = -focal / (width / 2.0), -focal / (height / 2.0)
    o_ndc = lib.stack([sx * ox / oz, sy * oy / oz, 1.0 + 2.0 * near / oz], -1)
    d_ndc = lib.stack([sx * (dx / dz - ox / oz), sy * (dy / dz - oy / oz), -2.0 * near / oz], -1)
    return o_ndc, d_ndc


def to_ndc(points, focal: float, width: int, height: int, near: float = 1.0):
    """The NDC image of world points (..., 3): used to check `ndc_rays` and to map boxes."""
    lib = torch if isinstance(points, torch.Tensor) else np
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return lib.stack([-focal / (width / 2.0) * x / z, -focal / (height / 2.0) * y / z, 1.0 + 2.0 * near / z], -1)
