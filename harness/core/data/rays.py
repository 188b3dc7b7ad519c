"""Ray generation from pinhole cameras (pixel centres, OpenGL camera axes)."""

from __future__ import annotations

import numpy as np
import torch

from harness.core.data.scene import Cameras


def pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v), each (H*W,), row-major like the image array."""
    v, u = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5,
                       np.arange(width, dtype=np.float32) + 0.5, indexing="ij")
    return u.reshape(-1), v.reshape(-1)


def rays_for_pixels(cameras: Cameras, cam_index: np.ndarray, u: np.ndarray, v: np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space origins and unit directions for pixels (u, v) of cameras `cam_index` (all (M,))."""
    fx, fy = cameras.fx[cam_index], cameras.fy[cam_index]
    cx, cy = cameras.cx[cam_index], cameras.cy[cam_index]
    d_cam = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], axis=-1)  # OpenGL: -z forward
    rot = cameras.c2w[cam_index, :, :3]  # (M, 3, 3)
    d_world = np.einsum("mij,mj->mi", rot, d_cam)
    d_world /= np.linalg.norm(d_world, axis=-1, keepdims=True)
    origins = cameras.c2w[cam_index, :, 3]
    return (torch.from_numpy(np.ascontiguousarray(origins, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(d_world, dtype=np.float32)))


def image_rays(cameras: Cameras, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All rays of one image, (H*W, 3) each, in the image's row-major pixel order."""
    u, v = pixel_grid(cameras.width, cameras.height)
    cam = np.full(u.shape, index, dtype=np.int64)
    return rays_for_pixels(cameras, cam, u, v)


class RaySampler:
    """Random training rays from a split, as a pure function of (seed, step).

    Batches do not depend on how many steps ran in this process, so a resumed
    trial sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, images: np.ndarray, cameras: Cameras, seed: int):
        self.images = torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 3), dtype=np.float32))
        self.cameras = cameras
        self.seed = int(seed)
        self.n, self.h, self.w = images.shape[0], images.shape[1], images.shape[2]

    def sample(self, step: int, batch_size: int, patch_size: int = 1) -> dict[str, torch.Tensor]:
        """`batch_size` rays; with patch_size p > 1, batch_size // p^2 square p x p patches
        (patch-major, row-major inside a patch), for losses that need image structure (SSIM)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        if patch_size > 1:
            flat = self._patch_pixels(gen, batch_size, int(patch_size))
        else:
            flat = torch.randint(0, self.n * self.h * self.w, (batch_size,), generator=gen)
        cam = (flat // (self.h * self.w)).numpy()
        pix = (flat % (self.h * self.w)).numpy()
        u = (pix % self.w).astype(np.float32) + 0.5
        v = (pix // self.w).astype(np.float32) + 0.5
        origins, dirs = rays_for_pixels(self.cameras, cam, u, v)
        return {"origins": origins, "directions": dirs, "rgb": self.images[flat],
                "image_index": torch.from_numpy(cam)}

    def _patch_pixels(self, gen: torch.Generator, batch_size: int, p: int) -> torch.Tensor:
        if p > min(self.h, self.w) or batch_size < p * p:
            raise ValueError(f"patch_size {p} does not fit images of {self.w}x{self.h} or a batch of "
                             f"{batch_size} rays")
        n = batch_size // (p * p)
        img = torch.randint(0, self.n, (n,), generator=gen)
        top = torch.randint(0, self.h - p + 1, (n,), generator=gen)
        left = torch.randint(0, self.w - p + 1, (n,), generator=gen)
        dy, dx = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        rows = top[:, None] + dy.reshape(1, -1)
        cols = left[:, None] + dx.reshape(1, -1)
        return ((img[:, None] * self.h + rows) * self.w + cols).reshape(-1)
