"""Rendering a split with a method and scoring it through harness.metrics (the only scorer)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import gin
import numpy as np
import torch
from PIL import Image

from harness.data.rays import image_rays
from harness.data.scene import Split

log = logging.getLogger(__name__)


def render_view(method, split: Split, index: int, chunk: int) -> np.ndarray:
    """One image (H, W, 3) float32 in [0, 1], rendered in chunks of rays."""
    origins, dirs = image_rays(split.cameras, index)
    out = []
    with torch.no_grad():
        for start in range(0, origins.shape[0], chunk):
            out.append(method.render(origins[start:start + chunk], dirs[start:start + chunk])["rgb"])
    rgb = torch.cat(out).clamp(0, 1).reshape(split.cameras.height, split.cameras.width, 3)
    return rgb.cpu().numpy().astype(np.float32)


def save_png(path: Path, img: np.ndarray) -> None:
    """Write an image as 8-bit PNG (atomically); the same rounding the scores use."""
    from harness.metrics import to_uint8
    from harness.records import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(img if img.dtype == np.uint8 else to_uint8(img)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@gin.configurable
class Evaluation:
    """How a trial is scored; every field is part of the recorded protocol."""

    def __init__(self, metrics=("psnr", "ssim", "lpips"), lpips_net: str = "vgg", chunk: int = 16384,
                 save_renders: bool = True, error_maps: bool = False, lpips_weights_dir: str | None = None):
        self.metrics = tuple(metrics)
        self.lpips_net = lpips_net
        self.chunk = int(chunk)
        self.save_renders = save_renders
        self.error_maps = error_maps
        self.lpips_weights_dir = lpips_weights_dir

    def preflight(self) -> None:
        """Fail before any training if LPIPS weights are missing (never a random backbone)."""
        if "lpips" in self.metrics:
            from harness.metrics import check_lpips_weights

            check_lpips_weights(self.lpips_net, self.lpips_weights_dir)

    def views(self, method, split: Split, indices, renders_dir: Path | None, progress=None):
        """Yield (name, prediction as saved in 8 bits, ground truth) for `indices`, saving PNGs."""
        from harness.metrics import error_map, to_8bit

        for i in indices:
            pred = to_8bit(render_view(method, split, int(i), self.chunk))
            name = split.names[int(i)]
            if renders_dir is not None and self.save_renders:
                save_png(renders_dir / f"{name}.png", pred)
                if self.error_maps:
                    save_png(renders_dir / "errors" / f"{name}.png", error_map(pred, split.images[int(i)]))
            if progress is not None:
                progress()
            yield name, pred, split.images[int(i)]

    def score(self, method, split: Split, indices=None, renders_dir: Path | None = None,
              metrics=None, progress=None, background=(1.0, 1.0, 1.0)) -> dict:
        from harness.metrics import score_images

        indices = range(len(split)) if indices is None else indices
        return score_images(self.views(method, split, indices, renders_dir, progress),
                            metrics=tuple(metrics or self.metrics), lpips_net=self.lpips_net,
                            weights_dir=self.lpips_weights_dir, background=tuple(float(c) for c in background))
