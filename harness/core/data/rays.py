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

    `masks` ((N, H, W) bool, True where a pixel counts, e.g. not a transient object): only those pixels
    are drawn, so masked pixels never enter a loss. `depth` ((N, H, W) float, distance along the unit
    ray; NaN: not measured, inf: nothing hit): each ray's depth is in the batch as 'depth'. Without
    either, the draws are those of before they existed (same numbers, same order).
    """

    def __init__(self, images: np.ndarray, cameras: Cameras, seed: int, masks: np.ndarray | None = None,
                 depth: np.ndarray | None = None):
        self.images = torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 3), dtype=np.float32))
        self.cameras = cameras
        self.seed = int(seed)
        self.n, self.h, self.w = images.shape[0], images.shape[1], images.shape[2]
        self.masks = None if masks is None else np.asarray(masks, dtype=bool).reshape(self.n, self.h, self.w)
        self.depth = None if depth is None else torch.from_numpy(
            np.ascontiguousarray(depth, dtype=np.float32).reshape(-1))
        # (crop fraction, image subset or None) -> flat indices of the pixels drawn from
        self._pools: dict[tuple, torch.Tensor] = {}

    def sample(self, step: int, batch_size: int, patch_size: int = 1, crop: float = 1.0,
               images: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """`batch_size` rays; with patch_size p > 1, batch_size // p^2 square p x p patches
        (patch-major, row-major inside a patch), for losses that need image structure (SSIM).
        `crop` < 1: only from the central crop x crop of each image (the precrop of early steps).
        `images`: only from these images (indices into the split; e.g. one time step's views)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        subset = None if images is None else self._images(images)
        if patch_size > 1:
            if self.masks is not None or crop < 1.0:
                raise ValueError("patch sampling with masks or a centre crop is not supported")
            flat = self._patch_pixels(gen, batch_size, int(patch_size), subset)
        elif self.masks is None and crop >= 1.0 and subset is None:
            flat = torch.randint(0, self.n * self.h * self.w, (batch_size,), generator=gen)
        else:
            pool = self._pool(crop, subset)
            flat = pool[torch.randint(0, len(pool), (batch_size,), generator=gen)]
        cam = (flat // (self.h * self.w)).numpy()
        pix = (flat % (self.h * self.w)).numpy()
        u = (pix % self.w).astype(np.float32) + 0.5
        v = (pix // self.w).astype(np.float32) + 0.5
        origins, dirs = rays_for_pixels(self.cameras, cam, u, v)
        batch = {"origins": origins, "directions": dirs, "rgb": self.images[flat], "image_index": torch.from_numpy(cam)}
        if self.depth is not None:
            batch["depth"] = self.depth[flat]
        return batch

    def _images(self, images) -> tuple[int, ...]:
        subset = tuple(int(i) for i in np.asarray(images).reshape(-1))
        if not subset or min(subset) < 0 or max(subset) >= self.n:
            raise ValueError(f"images to draw rays from must be a non-empty selection of 0..{self.n - 1}, "
                             f"got {list(subset)[:8]}")
        return subset

    def _pool(self, crop: float, subset: tuple[int, ...] | None = None) -> torch.Tensor:
        """Flat indices of the pixels that may be drawn: of the `subset` images (all when None), inside
        the centre crop and kept by the masks."""
        key = (crop, subset)
        if key not in self._pools:
            keep = np.ones((self.n, self.h, self.w), bool) if self.masks is None else self.masks.copy()
            if subset is not None:
                chosen = np.zeros(self.n, bool)
                chosen[list(subset)] = True
                keep &= chosen[:, None, None]
            if crop < 1.0:
                region = np.zeros((self.h, self.w), bool)
                dh, dw = int(round(self.h * (1 - crop) / 2)), int(round(self.w * (1 - crop) / 2))
                region[dh:self.h - dh, dw:self.w - dw] = True
                keep = keep & region[None]
            flat = np.flatnonzero(keep.reshape(-1))
            if not len(flat):
                where = " inside the centre crop" if crop < 1 else ""
                raise ValueError(f"no pixel to draw rays from (the masks keep none{where})")
            self._pools[key] = torch.from_numpy(flat.astype(np.int64))
        return self._pools[key]

    def _patch_pixels(self, gen: torch.Generator, batch_size: int, p: int,
                      subset: tuple[int, ...] | None = None) -> torch.Tensor:
        if p > min(self.h, self.w) or batch_size < p * p:
            raise ValueError(f"patch_size {p} does not fit images of {self.w}x{self.h} or a batch of "
                             f"{batch_size} rays")
        n = batch_size // (p * p)
        if subset is None:
            img = torch.randint(0, self.n, (n,), generator=gen)
        else:
            img = torch.tensor(subset)[torch.randint(0, len(subset), (n,), generator=gen)]
        top = torch.randint(0, self.h - p + 1, (n,), generator=gen)
        left = torch.randint(0, self.w - p + 1, (n,), generator=gen)
        dy, dx = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        rows = top[:, None] + dy.reshape(1, -1)
        cols = left[:, None] + dx.reshape(1, -1)
        return ((img[:, None] * self.h + rows) * self.w + cols).reshape(-1)
