"""Reading images and masks with clear errors, compositing and downscaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.core.errors import DataError


def read_image(path: Path) -> np.ndarray:
    """An image as float32 in [0, 1], (H, W, C) with C = 3 or 4. Raises DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB"
            arr = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None
    return arr.astype(np.float32) / 255.0


MASK_MODES = ("L", "1")  # PIL modes of single-channel 8-bit and 1-bit images


def read_mask(path: Path, where: str) -> np.ndarray:
    """A mask image as (H, W) bool, True where the pixel counts. nerfstudio's convention: a single-channel
    8-bit PNG, 0 = ignore the pixel, nonzero = keep it (1-bit PNGs also accepted). Multi-channel masks are
    refused rather than guessed at: which channel is meant differs between tools. `where` names the frame."""
    if not path.is_file():
        raise DataError(f"{path}: mask file is missing ({where})")
    try:
        with Image.open(path) as im:
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask ({exc.__class__.__name__}: {exc}) ({where})") from None
    if mode not in MASK_MODES:
        raise DataError(f"{path}: mask has image mode {mode}, expected single-channel 8-bit (mode L: 0 = ignore "
                        f"the pixel, nonzero = keep it) or 1-bit ({where})")
    return arr != 0


def downscale_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) bool min-pooled by an integer factor: a pixel counts only if all its source pixels do, so no
    ignored (e.g. transient) content leaks into a kept pixel's box-filtered colour."""
    if factor == 1:
        return mask
    h, w = mask.shape
    if h % factor or w % factor:
        raise DataError(f"mask of {w}x{h} cannot be downscaled by {factor} (not divisible)")
    return np.asarray(mask.reshape(h // factor, factor, w // factor, factor).all(axis=(1, 3)))


def downscale(rgba: np.ndarray, factor: int) -> np.ndarray:
    """Exact box (area) filter by an integer factor, in premultiplied alpha when there is alpha."""
    if factor == 1:
        return rgba
    h, w, c = rgba.shape
    if h % factor or w % factor:
        raise DataError(f"image of {w}x{h} cannot be downscaled by {factor} (not divisible)")
    blocks = rgba.reshape(h // factor, factor, w // factor, factor, c)
    if c == 3:
        return blocks.mean(axis=(1, 3))
    alpha = blocks[..., 3:].mean(axis=(1, 3))
    premult = (blocks[..., :3] * blocks[..., 3:]).mean(axis=(1, 3))
    # premult / alpha is at most 1 in exact arithmetic; float rounding can put it 1 ulp above, which the
    # data checks rightly refuse as a value outside [0, 1]
    colour = np.clip(np.where(alpha > 0, premult / np.maximum(alpha, 1e-12), 0.0), 0.0, 1.0)
    return np.concatenate([colour, alpha], axis=-1).astype(np.float32)


def composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """RGB over a background colour; RGB input is returned unchanged."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:]
    return (rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.float32)
