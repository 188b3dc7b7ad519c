"""Helpers the loaders share: typed access to parsed files, pose and image checks, splits, bounds.

Every check raises `DataError` with one line naming the file (and key or frame) at fault, so a
loader never lets a KeyError/ValueError/TypeError from malformed input reach the user.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from harness.core.data.images import composite, downscale, downscale_mask, read_image, read_mask
from harness.core.data.scene import Cameras
from harness.core.errors import DataError


def read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: unreadable ({exc.__class__.__name__})") from None


def require(obj: dict, key: str, where: str):
    if key not in obj:
        raise DataError(f"{where}: missing required key '{key}'")
    return obj[key]


def as_dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def as_list(value, where: str) -> list:
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def as_float(value, where: str, positive: bool = False) -> float:
    """A finite JSON number (bools are not numbers here); `positive` also rejects <= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: expected a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out) or (positive and out <= 0):
        raise DataError(f"{where}: expected a {'positive ' if positive else ''}finite number, got {value!r:.40}")
    return out


def as_int(value, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: expected an integer, got {type(value).__name__}")
    if (minimum is not None and value < minimum) or abs(value) >= 2**62:
        raise DataError(f"{where}: expected an integer >= {minimum} (and < 2**62), got {value!r:.40}")
    return value


def as_str(value, where: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise DataError(f"{where}: expected a non-empty string, got {type(value).__name__}")
    return value


def as_matrix(value, rows: int, cols: int, where: str) -> np.ndarray:
    """A rows x cols nested list of numbers as float64 (non-finite entries are kept for check_pose)."""
    rows_ = as_list(value, where)
    if len(rows_) != rows or any(not isinstance(r, list) or len(r) != cols for r in rows_):
        raise DataError(f"{where}: expected a {rows}x{cols} matrix")
    out = np.empty((rows, cols), dtype=np.float64)
    for i, row in enumerate(rows_):
        for j, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise DataError(f"{where}: entry [{i}][{j}] is not a number")
            try:
                out[i, j] = float(x)
            except OverflowError:
                out[i, j] = math.inf
    return out


def check_pose(c2w: np.ndarray, where: str, tol: float = 1e-3) -> np.ndarray:
    """A finite rigid camera-to-world matrix (3x4, or 4x4 with bottom row 0 0 0 1) as float32 (3, 4)."""
    if not np.all(np.isfinite(c2w)):
        raise DataError(f"{where}: camera pose has non-finite values")
    rot = c2w[:3, :3]
    with np.errstate(over="ignore", invalid="ignore"):  # huge entries: not rigid, reported below
        det = float(np.linalg.det(rot))
        rigid = np.allclose(rot.T @ rot, np.eye(3), atol=tol) and abs(det - 1) <= tol
    if c2w.shape[0] == 4:
        rigid = rigid and np.allclose(c2w[3], (0, 0, 0, 1), atol=tol)
    if not rigid:
        raise DataError(f"{where}: camera pose is not rigid (rotation not orthonormal with det +1; det={det:.4g})")
    with np.errstate(over="ignore"):
        out = c2w[:3, :4].astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise DataError(f"{where}: camera position is too large for float32")
    return out


def load_rgb(path: Path, factor: int, background: np.ndarray, expect_wh: tuple[int, int] | None,
             source: str) -> np.ndarray:
    """An image file as (H, W, 3) float32 composited on `background`, after checking its size against
    `expect_wh` (the full-resolution size stated by `source`) and downscaling by `factor`."""
    try:
        rgba = read_image(path)
    except OSError as exc:  # e.g. a name too long for the file system
        raise DataError(f"{path}: cannot open image ({exc.__class__.__name__})") from None
    h, w = rgba.shape[:2]
    if expect_wh is not None and (w, h) != tuple(expect_wh):
        raise DataError(f"{path}: image is {w}x{h}, but {source} says {expect_wh[0]}x{expect_wh[1]}")
    if factor > 1 and (h % factor or w % factor):
        raise DataError(f"{path}: image of {w}x{h} cannot be downscaled by {factor} (not divisible)")
    return composite(downscale(rgba, factor), background)


def frame_mask(folder: Path, frame: dict, factor: int, image: np.ndarray, image_path: Path,
               where: str) -> np.ndarray | None:
    """The frame's optional `mask_path` (relative to `folder`) as (H, W) bool at the loaded `image`'s size,
    min-pooled by `factor`; None when the frame has no mask."""
    if "mask_path" not in frame:
        return None
    path = folder / as_str(frame["mask_path"], f"{where} 'mask_path'")
    mask = read_mask(path, where)
    h, w = image.shape[0] * factor, image.shape[1] * factor  # the image's size before downscaling
    if mask.shape != (h, w):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is {w}x{h} ({where})")
    if not mask.any():
        raise DataError(f"{path}: mask keeps no pixel (all 0) ({where})")
    small = downscale_mask(mask, factor)
    if not small.any():
        raise DataError(f"{path}: mask keeps no pixel after downscale by {factor} (a pixel counts only where all "
                        f"{factor}x{factor} source pixels do) ({where})")
    return small


def read_npy(path: Path, what: str, where: str) -> np.ndarray:
    """A frame's .npy data file (depth, flow); a missing or unreadable one is a DataError naming the file
    and `where` (the frame)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file is missing ({where})") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable {what} file ({exc.__class__.__name__}) ({where})") from None


def stack_masks(masks: list[np.ndarray | None], hw: tuple[int, int]) -> np.ndarray | None:
    """(N, H, W) bool of a split's frames, all True for frames without a mask; None when no frame has one."""
    if all(m is None for m in masks):
        return None
    return np.stack([np.ones(hw, dtype=bool) if m is None else m for m in masks])


def holdout(n: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: every `every`-th image from the first is held out for testing, the
    convention of NeRF's LLFF experiments (`llffhold = 8`, run_nerf.py); every <= 0 holds out none."""
    idx = np.arange(n)
    if every <= 0:
        return idx, idx[:0]
    test = idx[::every]
    return np.setdiff1d(idx, test), test


def cameras_from_arrays(c2w, fx, fy, cx, cy, width: int, height: int) -> Cameras:
    f32 = lambda a: np.asarray(a, dtype=np.float32).reshape(-1)  # noqa: E731
    return Cameras(np.asarray(c2w, dtype=np.float32).reshape(-1, 3, 4), f32(fx), f32(fy), f32(cx), f32(cy),
                   int(width), int(height))


def bbox_from_cameras(c2w: np.ndarray, pad: float = 0.5, minimum: float = 1.0) -> np.ndarray:
    """A (2, 3) box around the camera centres, grown by `pad` of its extent (at least `minimum`) per side:
    a fallback for formats without a stated scene box."""
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    lo, hi = centres.min(axis=0), centres.max(axis=0)
    grow = np.maximum(pad * (hi - lo), minimum)
    with np.errstate(over="ignore"):
        return np.stack([lo - grow, hi + grow]).astype(np.float32)


def far_from_bbox(c2w: np.ndarray, bbox: np.ndarray) -> float:
    """The largest distance from any camera centre to a corner of `bbox`: every point of the box is nearer."""
    corners = np.array([[bbox[i, 0], bbox[j, 1], bbox[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                       dtype=np.float64)
    centres = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    with np.errstate(over="ignore"):  # absurd coordinates give inf, which callers reject
        return float(np.linalg.norm(centres[:, None, :] - corners[None], axis=-1).max())
