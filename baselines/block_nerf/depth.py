"""Depth supervision of the rendering weights (issue #28): a true depth per ray, the distance along
the unit-length ray direction to the first surface (the units of the sample `edges`), is compared
with the weights that `sampling.composite` gives the ray's intervals.

Depth values: finite and > 0, a surface; +inf, nothing hit (sky); NaN or <= 0, no measurement (the
ray is skipped). A depth map in camera z must be divided by the ray's cos(angle to the optical axis)
first.

- 'l1': |sum_i w_i t_i - z|, t_i the interval midpoints (the expected termination depth, not divided
  by the opacity, so it also asks for an opaque surface), as in DS-NeRF (Deng et al., CVPR 2022)'s
  depth term with an L1 instead of their KL.
- 'line_of_sight': the line-of-sight prior of Urban Radiance Fields (Rematas et al., CVPR 2022),
  int_{t_n}^{z-eps} w(t)^2 dt + int_{z-eps}^{z+eps} (w(t) - K_eps(t - z))^2 dt, K_eps a Gaussian of
  standard deviation eps/3 truncated to [-eps, eps] (renormalised to mass 1). Discretised exactly for a
  piecewise-constant w(t) = w_i / d_i on interval i (d_i its length) against the kernel's mass k_i in
  interval i: sum over intervals ending before z - eps of w_i^2 / d_i, plus sum over intervals
  overlapping (z - eps, z + eps) of (w_i - k_i)^2 / d_i; intervals after z + eps are free. It is zero
  iff w_i = k_i (units 1/length; independent of the sampling density as intervals shrink). URF's
  expected-depth term and its eps decay over training are not part of it (`epsilon` is fixed).
- sky rays (+inf) under `sky='free_space'`: the ray's opacity sum_i w_i (an L1 to 0, whose gradient
  does not vanish near 0, so faint haze is still pushed out), whatever the kind; `sky='skip'`: ignored.
"""

from __future__ import annotations

import math

import gin
import torch

from baselines.block_nerf.parts import _choice, _number, _Part

DEPTH_KINDS = ("l1", "line_of_sight")
SKY_RULES = ("far", "free_space", "skip")
_KERNEL_SIGMAS = 3.0  # K_eps: eps is 3 standard deviations (URF)


@gin.register
class DepthLoss(_Part):
    """Depth supervision of weight `weight` in the training loss (Block-NeRF design's depth_loss_weight):
    `kind` 'l1' (expected depth) or 'line_of_sight' (URF, kernel half-width `epsilon` in scene units),
    sky rays (depth +inf) pushed to zero opacity (`sky='free_space'`), to terminate at their far end
    ('far': a model without a background colour must put the sky there) or ignored ('skip'). Depths
    enter the loss in units of `unit` (world units; None: the method's far distance), so that its weight
    means the same in any scene: an error of one unit costs `weight`."""

    positive_settings = ("epsilon",)  # checked when the sweep expands (harness.run.sweep.check_positive_settings)

    def __init__(self, weight: float = 0.1, kind: str = "l1", epsilon: float = 0.5, sky: str = "far",
                 unit: float | None = None):
        p = "DepthLoss"
        self.weight, self.kind = _number(p, "weight", weight), _choice(p, "kind", kind, DEPTH_KINDS)
        self.epsilon = _number(p, "epsilon", epsilon, positive=True)
        self.sky = _choice(p, "sky", sky, SKY_RULES)
        self.unit = None if unit is None else _number(p, "unit", unit, positive=True)


def midpoints(edges: torch.Tensor) -> torch.Tensor:
    return (edges[:, 1:] + edges[:, :-1]) / 2


def expected_depth(weights: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(M,) sum_i w_i t_i: not divided by the opacity (unlike BlockField.depth_acc)."""
    return (weights * midpoints(edges)).sum(1)


def kernel_masses(edges: torch.Tensor, depth: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(M, S) mass of the truncated Gaussian K_eps around each ray's depth (M,) within each interval."""
    x = ((edges - depth[:, None]) / epsilon).clamp(-1.0, 1.0) * (_KERNEL_SIGMAS / math.sqrt(2))
    cdf = torch.erf(x)  # 2 Phi - 1 of the clipped, standardised edges
    return (cdf[:, 1:] - cdf[:, :-1]) / (2 * math.erf(_KERNEL_SIGMAS / math.sqrt(2)))


def line_of_sight(weights: torch.Tensor, edges: torch.Tensor, depth: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(M,) URF's empty-space plus near-surface terms (module docstring) for finite depths (M,)."""
    length = (edges[:, 1:] - edges[:, :-1]).clamp(min=1e-10)  # an empty interval has w_i = k_i = 0
    lo, hi = (depth - epsilon)[:, None], (depth + epsilon)[:, None]
    empty = edges[:, 1:] <= lo
    near = (edges[:, :-1] < hi) & ~empty
    target = kernel_masses(edges, depth, epsilon)
    per_interval = torch.where(empty, weights ** 2, torch.where(near, (weights - target) ** 2, 0.0))
    return (per_interval / length).sum(1)


def _check_shapes(weights: torch.Tensor, edges: torch.Tensor, depth: torch.Tensor) -> None:
    m, s = weights.shape
    if tuple(edges.shape) != (m, s + 1) or tuple(depth.shape) != (m,):
        raise ValueError(f"BlockNeRF depth loss: weights {tuple(weights.shape)} need edges ({m}, {s + 1}) "
                         f"and depth ({m},), got {tuple(edges.shape)} and {tuple(depth.shape)}")


def depth_loss(weights: torch.Tensor, edges: torch.Tensor, depth: torch.Tensor,
               settings: DepthLoss, unit: float = 1.0) -> tuple[torch.Tensor, dict]:
    """(term, statistics) for a batch of M rays: weights (M, S), edges (M, S + 1), true depth (M,).

    term: sum of the per-ray losses over the rays it applies to, divided by M, every ray of the batch
    counted, skipped ones (NaN or <= 0 depth; +inf under sky='skip') as 0 with no gradient. A batch
    split in shards thus gives sum(term_shard * M_shard / M) == term of the whole batch, as the
    data-parallel step's weighting by the rank's share needs. Not multiplied by `settings.weight`
    (the caller does: loss + weight * term). Computed in float32 whatever the weights' dtype. Depths,
    edges and epsilon are divided by `unit` (the caller's `settings.unit`, or its default) first.

    statistics (floats): 'depth_l1', mean |sum_i w_i t_i - z| over the rays with a finite depth (0.0
    when there is none, so the logged values stay finite); 'depth_rays', the fraction of rays with a
    finite depth; 'depth_sky', the fraction with depth +inf."""
    _check_shapes(weights, edges, depth)
    w, e = weights.float(), edges.float() / unit
    z = depth.to(device=w.device, dtype=torch.float32) / unit
    surface = torch.isfinite(z) & (z > 0)
    sky = torch.isposinf(z)
    supervised = surface | sky if settings.sky == "far" else surface
    # no NaN/inf into the graph (masked rows get a 0 gradient); sky rays under 'far': the ray's far end
    z = torch.where(surface, z, e[:, -1].detach() if settings.sky == "far" else torch.ones_like(z))
    error = (expected_depth(w, e) - z).abs()
    per_ray = error if settings.kind == "l1" else line_of_sight(w, e, z, settings.epsilon / unit)
    per_ray = torch.where(supervised, per_ray, 0.0)
    if settings.sky == "free_space":
        per_ray = torch.where(sky, w.sum(1), per_ray)
    term = per_ray.sum() / max(w.shape[0], 1)
    n_surface = int(surface.sum())
    stats = {"depth_l1": float(error.detach()[surface].sum()) * unit / max(n_surface, 1),
             "depth_rays": n_surface / max(w.shape[0], 1), "depth_sky": int(sky.sum()) / max(w.shape[0], 1)}
    return term, stats


def depth_error(expected: torch.Tensor, depth: torch.Tensor) -> float:
    """Mean |expected - depth| over the rays with a finite depth > 0 (scene units, e.g. metres), for
    the test views' depth error; NaN when no ray has one (an average over views can skip it)."""
    if expected.shape != depth.shape:
        raise ValueError(f"BlockNeRF depth error: expected {tuple(expected.shape)} and depth "
                         f"{tuple(depth.shape)} differ in shape")
    z = depth.detach().to(device=expected.device, dtype=torch.float32)
    surface = torch.isfinite(z) & (z > 0)
    if not bool(surface.any()):
        return float("nan")
    return float((expected.detach().float()[surface] - z[surface]).abs().mean())
