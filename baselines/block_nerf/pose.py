"""Learned pose refinement: position and rotation offsets per pose group (an image, or a capture
sequence whose images share one offset, as the paper's per-segment offsets) applied to training rays,
regularised towards zero, strongly early in training (Block-NeRF); plus the known pose noise used
to test it and the pose errors it is scored by (raw, and after removing the rigid gauge freedom)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation matrices (..., 3, 3) of axis-angle vectors (..., 3), smooth at zero."""
    theta2 = (v ** 2).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-12)
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(k)
    # sin(t)/t and (1-cos t)/t^2 with their Taylor forms near 0
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta.clamp(min=1e-6) ** 2)
    return eye + a * k + b * (k @ k)


class PoseOffsets(nn.Module):
    """Offsets (translation, axis-angle rotation) per pose group; `apply`, `regulariser` take group
    indices. Refined ray: origin + dt, R(dr) direction (the rotation acts about the camera centre, i.e.
    refined c2w = [R(dr) R | t + dt]). Its settings are the `PoseRefinement` part (parts.py)."""

    def __init__(self, n_groups: int, reg_initial: float = 1.0, reg_final: float = 1e-3, reg_steps: int = 500):
        super().__init__()
        self.translation = nn.Parameter(torch.zeros(n_groups, 3))
        self.rotation = nn.Parameter(torch.zeros(n_groups, 3))
        self.reg_initial, self.reg_final, self.reg_steps = float(reg_initial), float(reg_final), int(reg_steps)

    def apply(self, origins: torch.Tensor, directions: torch.Tensor, group: torch.Tensor):
        rot = axis_angle_to_matrix(self.rotation[group])
        d = (rot @ directions[..., None])[..., 0]
        return origins + self.translation[group], d / d.norm(dim=-1, keepdim=True)

    def reg_weight(self, step: int) -> float:
        """Linear decay from reg_initial to reg_final over reg_steps (strong early, weak later)."""
        f = min(1.0, step / max(1, self.reg_steps))
        return self.reg_initial + (self.reg_final - self.reg_initial) * f

    def regulariser(self, group: torch.Tensor, scale: float) -> torch.Tensor:
        """Mean squared offsets of the batch's rays' groups (translation in units of `scale`)."""
        t = self.translation[group] / scale
        return (t ** 2).sum(-1).mean() + (self.rotation[group] ** 2).sum(-1).mean()

    def refined_c2w(self, c2w: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
        """The poses `c2w` (N, 3, 4) with their groups' offsets applied (`group`: (N,), default one per pose)."""
        group = np.arange(len(c2w)) if group is None else np.asarray(group)
        with torch.no_grad():
            rot = axis_angle_to_matrix(self.rotation.detach().double()).numpy()[group]
            t = self.translation.detach().double().numpy()[group]
        return offset_poses(c2w, rot, t)


def offset_poses(c2w: np.ndarray, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[rot R | c + t] per pose: rotation about each camera's own centre, then a move of the centre."""
    out = c2w.astype(np.float64).copy()
    out[:, :, :3] = rot @ out[:, :, :3]
    out[:, :, 3] += t
    return out


def perturb_poses(c2w: np.ndarray, rotation_deg: float, translation: float, seed: int,
                  group: np.ndarray | None = None) -> np.ndarray:
    """Each pose rotated by exactly `rotation_deg` about a random axis through its centre and moved by
    exactly `translation` in a random direction, one draw per group (`group` (N,) ints; default one per
    pose, so independent noise per image); deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    group = np.arange(c2w.shape[0]) if group is None else np.asarray(group)
    n = int(group.max()) + 1
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    moves = rng.normal(size=(n, 3))
    moves /= np.linalg.norm(moves, axis=1, keepdims=True)
    rot = axis_angle_to_matrix(torch.from_numpy(axes * np.deg2rad(rotation_deg))).numpy()[group]
    return offset_poses(c2w, rot, moves[group] * translation)


def rigid_gauge(c2w: np.ndarray, true_c2w: np.ndarray) -> np.ndarray:
    """(3, 4) world transform G = [R | t] that best maps the true poses onto `c2w` (c2w ~ G true_c2w):
    R the rotation nearest the sum of R_i R_true_i^T (chordal L2 mean), t the mean residual of the
    centres. Photometric refinement cannot see G (the scene can move with the cameras), so errors are
    also reported with it removed, as pose-refinement papers do (BARF aligns with Procrustes)."""
    m = np.einsum("nij,nkj->ik", c2w[:, :, :3], true_c2w[:, :, :3])
    u, _, vt = np.linalg.svd(m)
    r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    t = (c2w[:, :, 3] - true_c2w[:, :, 3] @ r.T).mean(0)
    return np.concatenate([r, t[:, None]], axis=1)


def remove_gauge(c2w: np.ndarray, gauge: np.ndarray) -> np.ndarray:
    """G^-1 applied to poses: R^T R_i and R^T (c_i - t)."""
    r, t = gauge[:, :3], gauge[:, 3]
    out = np.empty_like(c2w, dtype=np.float64)
    out[:, :, :3] = np.einsum("ji,njk->nik", r, c2w[:, :, :3])
    out[:, :, 3] = (c2w[:, :, 3] - t) @ r
    return out


def pose_errors_aligned(c2w: np.ndarray, true_c2w: np.ndarray) -> dict:
    """`pose_errors` after removing the best rigid world transform (`rigid_gauge`)."""
    return pose_errors(remove_gauge(c2w, rigid_gauge(c2w, true_c2w)), true_c2w)


def pose_errors(c2w: np.ndarray, true_c2w: np.ndarray) -> dict:
    """Mean rotation error (degrees) and translation error (world units) of poses against the truth."""
    r = np.einsum("nji,njk->nik", c2w[:, :, :3], true_c2w[:, :, :3])
    cos = np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    rot = np.degrees(np.arccos(cos))
    trans = np.linalg.norm(c2w[:, :, 3] - true_c2w[:, :, 3], axis=1)
    return {"rotation_deg": float(rot.mean()), "translation": float(trans.mean())}
