"""Learned pose refinement: per-image position and rotation offsets applied to training rays,
regularised towards zero, strongly early in training (Block-NeRF); plus the known pose noise used
to test it and the pose errors it is scored by."""

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


class PoseRefinement(nn.Module):
    """Offsets (translation, axis-angle rotation) per image. Refined ray: origin + dt, R(dr) direction
    (the rotation acts about the camera centre, i.e. refined c2w = [R(dr) R | t + dt])."""

    def __init__(self, n_images: int, reg_initial: float = 1.0, reg_final: float = 1e-3, reg_steps: int = 500):
        super().__init__()
        self.translation = nn.Parameter(torch.zeros(n_images, 3))
        self.rotation = nn.Parameter(torch.zeros(n_images, 3))
        self.reg_initial, self.reg_final, self.reg_steps = float(reg_initial), float(reg_final), int(reg_steps)

    def apply(self, origins: torch.Tensor, directions: torch.Tensor, image_index: torch.Tensor):
        rot = axis_angle_to_matrix(self.rotation[image_index])
        d = (rot @ directions[..., None])[..., 0]
        return origins + self.translation[image_index], d / d.norm(dim=-1, keepdim=True)

    def reg_weight(self, step: int) -> float:
        """Linear decay from reg_initial to reg_final over reg_steps (strong early, weak later)."""
        f = min(1.0, step / max(1, self.reg_steps))
        return self.reg_initial + (self.reg_final - self.reg_initial) * f

    def regulariser(self, image_index: torch.Tensor, scale: float) -> torch.Tensor:
        """Mean squared offsets of the batch's images (translation in units of `scale`)."""
        t = self.translation[image_index] / scale
        return (t ** 2).sum(-1).mean() + (self.rotation[image_index] ** 2).sum(-1).mean()

    def refined_c2w(self, c2w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            rot = axis_angle_to_matrix(self.rotation.detach().double()).numpy()
            t = self.translation.detach().double().numpy()
        out = c2w.astype(np.float64).copy()
        out[:, :, :3] = rot @ out[:, :, :3]
        out[:, :, 3] += t
        return out


def perturb_poses(c2w: np.ndarray, rotation_deg: float, translation: float, seed: int) -> np.ndarray:
    """Each pose rotated by exactly `rotation_deg` about a random axis through its centre and moved by
    exactly `translation` in a random direction (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    n = c2w.shape[0]
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    moves = rng.normal(size=(n, 3))
    moves /= np.linalg.norm(moves, axis=1, keepdims=True)
    rot = axis_angle_to_matrix(torch.from_numpy(axes * np.deg2rad(rotation_deg))).numpy()
    out = c2w.astype(np.float64).copy()
    out[:, :, :3] = rot @ out[:, :, :3]
    out[:, :, 3] += moves * translation
    return out


def pose_errors(c2w: np.ndarray, true_c2w: np.ndarray) -> dict:
    """Mean rotation error (degrees) and translation error (world units) of poses against the truth."""
    r = np.einsum("nji,njk->nik", c2w[:, :, :3], true_c2w[:, :, :3])
    cos = np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    rot = np.degrees(np.arccos(cos))
    trans = np.linalg.norm(c2w[:, :, 3] - true_c2w[:, :, 3], axis=1)
    return {"rotation_deg": float(rot.mean()), "translation": float(trans.mean())}
