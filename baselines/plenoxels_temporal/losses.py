"""Temporal consistency losses for dynamic Plenoxels (issue #29), each a Gin part with its own weight.

- `FeatureTemporal`: mean squared difference of the voxel features (density, SH) of consecutive
  time steps over the voxels occupied in either step (`feature_temporal`).
- `FlowConsistency`: the rendered frame t+1, warped back onto frame t with the forward optical flow
  (docs/data.md "Dynamic scenes": (du, dv) in pixels from the pixel centre, NaN = invalid), must
  match the rendered frame t (`flow_consistency`). `source='scene'` uses the dataset's flow;
  `source='depth'` the flow that the rendered depth and the known camera motion give
  (`flow_from_depth`), which is right for static points only: moving objects need the scene's flow.

Like the terms of losses.py these are registered with Gin (`gin.register`), so only a reference
(`... = @FeatureTemporal()`) reads their bindings; a weight of 0 disables a term (nothing computed).
"""

from __future__ import annotations

import math

import gin
import torch

from harness.core.errors import ConfigError

FLOW_SOURCES = ("scene", "depth")


def _check_weight(owner: str, **weights: float) -> None:
    for name, w in weights.items():
        try:
            ok = w >= 0 and math.isfinite(w)
        except TypeError:  # a string or None bound by mistake
            ok = False
        if not ok:
            raise ConfigError(f"{owner}.{name} must be a finite number >= 0, got {w!r}")


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that is still part of the graph (an empty selection must not break backward())."""
    return like.sum() * 0.0


# ---- feature temporal -------------------------------------------------------------------------
def feature_temporal(density_a: torch.Tensor, sh_a: torch.Tensor, density_b: torch.Tensor, sh_b: torch.Tensor,
                     occupied_a: torch.Tensor, occupied_b: torch.Tensor, density_weight: float = 1.0,
                     sh_weight: float = 1.0) -> torch.Tensor:
    """Squared feature change between steps t (a) and t+1 (b) of the same cells (rows aligned).

    With S = {i : occupied_a[i] or occupied_b[i]}, N = |S| and C = sh.shape[1]:

        density_weight * sum_{i in S} (db_i - da_i)^2 / N
      + sh_weight * sum_{i in S, c < C} (shb_ic - sha_ic)^2 / (N C)

    i.e. each tensor's mean over the occupied-in-either rows and its channels, so density (1 channel)
    and SH (27) count equally at equal weights. d/d(db_i) = 2 density_weight (db_i - da_i) / N.
    Cells empty at both steps are free (they render nothing); 0 when S is empty.
    """
    n = density_a.shape[0]
    shapes = (density_a.shape == density_b.shape and sh_a.shape == sh_b.shape and sh_a.shape[0] == n
              and density_a.dim() == sh_a.dim() == 2 and occupied_a.shape == occupied_b.shape == (n,))
    if not shapes:
        raise ValueError(f"feature_temporal: need density (N, 1), sh (N, C) and occupied (N,) alike at both steps, "
                         f"got {tuple(density_a.shape)}, {tuple(sh_a.shape)}, {tuple(occupied_a.shape)} and "
                         f"{tuple(density_b.shape)}, {tuple(sh_b.shape)}, {tuple(occupied_b.shape)}")
    either = occupied_a.bool() | occupied_b.bool()
    return (density_weight * occupied_mean_square(density_b, density_a, either)
            + sh_weight * occupied_mean_square(sh_b, sh_a, either))


def occupied_mean_square(b: torch.Tensor, a: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
    """Mean over the rows where `occupied` (N,) and the channels of (b - a)^2 (N, C); a graph-connected 0
    when no row is occupied."""
    rows = torch.nonzero(occupied.bool())[:, 0]
    if rows.numel() == 0:
        return _zero(b) + _zero(a)
    return (b[rows] - a[rows]).square().mean()


@gin.register
class FeatureTemporal:
    """`weight` * feature_temporal(...) between consecutive time steps; `density_weight` and
    `sh_weight` split it between the two tensors (see feature_temporal)."""

    def __init__(self, weight: float = 1e-3, density_weight: float = 1.0, sh_weight: float = 1.0):
        _check_weight("FeatureTemporal", weight=weight, density_weight=density_weight, sh_weight=sh_weight)
        self.weight, self.density_weight, self.sh_weight = float(weight), float(density_weight), float(sh_weight)

    @property
    def active(self) -> bool:
        return self.weight > 0 and (self.density_weight > 0 or self.sh_weight > 0)

    def __call__(self, density_a, sh_a, density_b, sh_b, occupied_a, occupied_b) -> dict[str, torch.Tensor]:
        if not self.active:
            return {}
        value = feature_temporal(density_a, sh_a, density_b, sh_b, occupied_a, occupied_b,
                                 self.density_weight, self.sh_weight)
        return {"feature_temporal": self.weight * value}


# ---- flow -------------------------------------------------------------------------------------
def _intrinsics(K) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from a 3x3 matrix or the four numbers."""
    k = torch.as_tensor(K, dtype=torch.float64).cpu()
    if k.shape == (3, 3):
        return float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    if k.shape == (4,):
        return tuple(float(x) for x in k)  # type: ignore[return-value]
    raise ValueError(f"flow_from_depth: K must be a 3x3 matrix or (fx, fy, cx, cy), got shape {tuple(k.shape)}")


def _pose(c2w, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation (3, 3) and centre (3,) of a (3, 4) or (4, 4) camera-to-world matrix."""
    m = torch.as_tensor(c2w, dtype=like.dtype, device=like.device)
    if m.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"flow_from_depth: c2w must be (3, 4) or (4, 4), got {tuple(m.shape)}")
    return m[:3, :3], m[:3, 3]


def flow_from_depth(depth: torch.Tensor, K, c2w_t, c2w_t1) -> torch.Tensor:
    """Forward flow (H, W, 2) in pixels of static points seen by a camera that moves rigidly from
    c2w_t to c2w_t1 (same intrinsics), in the dataset's convention (docs/data.md "Dynamic scenes").

    Each pixel centre's ray (OpenGL camera axes, as harness/core/data/rays.py) is followed `depth`
    (distance along the unit ray, docs/data.md "Depth maps") to its point, which is projected into
    the camera at t+1 (u = cx + fx x / -z, v = cy - fy y / -z); flow = projection - pixel centre.
    +inf depth (nothing hit) is a point at infinity: only the rotation moves it. NaN where the depth
    is NaN, the point is behind the camera at t+1, or projects outside the image. Occlusion at t+1
    is not detected (that needs the depth at t+1), and points that move themselves are wrong: for
    moving objects use the scene's flow. Differentiable in `depth` (detach it to use as a target).
    """
    if depth.dim() != 2:
        raise ValueError(f"flow_from_depth: depth must be (H, W), got {tuple(depth.shape)}")
    fx, fy, cx, cy = _intrinsics(K)
    rot_t, centre_t = _pose(c2w_t, depth)
    rot_t1, centre_t1 = _pose(c2w_t1, depth)
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5,
                          torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5, indexing="ij")
    ray = torch.stack([(u - cx) / fx, -(v - cy) / fy, -torch.ones_like(u)], dim=-1)
    ray = ray / ray.norm(dim=-1, keepdim=True)
    # camera t+1 coordinates: R1^T (c_t + depth R_t ray - c_t1) = depth (R1^T R_t) ray + R1^T (c_t - c_t1)
    direction = ray @ (rot_t1.T @ rot_t).T
    offset = rot_t1.T @ (centre_t - centre_t1)
    finite = torch.isfinite(depth)[..., None]
    point = torch.where(finite, direction * torch.where(finite, depth[..., None], 0.0) + offset, direction)
    x, y, z = point.unbind(-1)
    ahead = z < 0
    z = torch.where(ahead, z, -1.0)  # keeps the division finite where the result is NaN anyway
    pu, pv = cx + fx * x / -z, cy - fy * y / -z
    valid = ahead & ~torch.isnan(depth) & (pu >= 0) & (pu <= w) & (pv >= 0) & (pv <= h)
    flow = torch.stack([pu - u, pv - v], dim=-1)
    return torch.where(valid[..., None], flow, torch.nan)


def warp_back(image_t1: torch.Tensor, flow: torch.Tensor, pixels: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """`image_t1` (H, W, C) sampled bilinearly where frame t's pixels (flat row-major indices
    `pixels` (M,), default all) land at t+1: pixel centre (x + 0.5, y + 0.5) + flow.

    Returns the samples (M, C) and a valid mask (M,): flow finite and the target between the outer
    pixel centres, so every sample interpolates 4 real pixels (no padding). Invalid samples are 0.
    Differentiable in the image and the flow."""
    h, w = image_t1.shape[:2]
    flow = flow.reshape(h * w, 2)
    if pixels is not None:
        flow = flow[pixels]
        y, x = pixels // w, pixels % w
    else:
        y, x = (t.reshape(-1) for t in torch.meshgrid(torch.arange(h, device=flow.device),
                                                      torch.arange(w, device=flow.device), indexing="ij"))
    # position in index units, where pixel i's centre i + 0.5 sits at i
    px, py = x + flow[:, 0], y + flow[:, 1]
    valid = torch.isfinite(flow).all(dim=1) & (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    px, py = torch.where(valid, px, 0.0), torch.where(valid, py, 0.0)  # no NaN into the graph
    x0 = px.detach().floor().clamp(max=max(w - 2, 0)).long()
    y0 = py.detach().floor().clamp(max=max(h - 2, 0)).long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    ax, ay = (px - x0)[:, None], (py - y0)[:, None]
    flat = image_t1.reshape(h * w, -1)
    top = flat[y0 * w + x0] * (1 - ax) + flat[y0 * w + x1] * ax
    bottom = flat[y1 * w + x0] * (1 - ax) + flat[y1 * w + x1] * ax
    sample = top * (1 - ay) + bottom * ay
    return sample * valid[:, None], valid


def flow_consistency(rendered_t: torch.Tensor, rendered_t1: torch.Tensor, flow: torch.Tensor,
                     pixels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid pixels and channels of (rendered_t - warp_back(rendered_t1, flow))^2.

    rendered_t: (H, W, 3), or (M, 3) at the flat row-major `pixels` (M,) of frame t (all H*W in order
    when not given); rendered_t1 (H, W, 3); flow (H, W, 2), frame t's forward flow (NaN = invalid).
    Validity as warp_back; 0 when no pixel is valid. Gradients reach both frames (and the flow)."""
    h, w = rendered_t1.shape[:2]
    if rendered_t1.dim() != 3 or flow.shape != (h, w, 2):
        raise ValueError(f"flow_consistency: need rendered_t1 (H, W, C) and flow (H, W, 2), got "
                         f"{tuple(rendered_t1.shape)} and {tuple(flow.shape)}")
    colours = rendered_t.reshape(-1, rendered_t1.shape[2])
    m = colours.shape[0] if pixels is None else pixels.shape[0]
    if colours.shape[0] != m or (pixels is None and m != h * w):
        raise ValueError(f"flow_consistency: rendered_t {tuple(rendered_t.shape)} does not match "
                         f"{'the H*W pixels' if pixels is None else f'{m} pixels'} of a {h}x{w} frame")
    warped, valid = warp_back(rendered_t1, flow, pixels)
    if not bool(valid.any()):
        return _zero(colours) + _zero(rendered_t1)
    return (colours[valid] - warped[valid]).square().mean()


@gin.register
class FlowConsistency:
    """`weight` * flow_consistency(rendered t, rendered t+1, flow). `source`: where the flow comes
    from, 'scene' (the dataset's, scene.extras['flow']) or 'depth' (flow_from_depth of the rendered
    depth and the camera motion; static points only)."""

    def __init__(self, weight: float = 1e-2, source: str = "scene"):
        _check_weight("FlowConsistency", weight=weight)
        if source not in FLOW_SOURCES:
            raise ConfigError(f"FlowConsistency.source must be one of {FLOW_SOURCES}, got {source!r}")
        self.weight, self.source = float(weight), source

    @property
    def active(self) -> bool:
        return self.weight > 0

    def flow(self, scene_flow: torch.Tensor | None = None, depth: torch.Tensor | None = None, K=None,
             c2w_t=None, c2w_t1=None) -> torch.Tensor:
        """The flow (H, W, 2) this term uses: `scene_flow` for 'scene'; for 'depth' flow_from_depth of
        the rendered `depth` (detached: the flow is a target, not a path to the geometry)."""
        if self.source == "scene":
            if scene_flow is None:
                raise ValueError("FlowConsistency(source='scene'): the scene has no flow (load_flow off?)")
            return scene_flow
        if depth is None or K is None or c2w_t is None or c2w_t1 is None:
            raise ValueError("FlowConsistency(source='depth'): needs depth, K, c2w_t and c2w_t1")
        return flow_from_depth(depth.detach(), K, c2w_t, c2w_t1)

    def __call__(self, rendered_t: torch.Tensor, rendered_t1: torch.Tensor, flow: torch.Tensor,
                 pixels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if not self.active:
            return {}
        return {"flow_consistency": self.weight * flow_consistency(rendered_t, rendered_t1, flow, pixels)}
