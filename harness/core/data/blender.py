"""Blender / NeRF-Synthetic loader: transforms_{split}.json + RGBA PNGs.

A frame may name a mask with `mask_path` (relative to the JSON file, as in nerfstudio; docs/data.md "Masks")
and a depth map with `depth_path`: a .npy of distances along the unit ray, or a single-channel 8/16-bit PNG,
whose units the JSON must give as `depth_scale` (world units per stored value; a PNG's 0 is "no depth").
NeRF-Synthetic's own `r_*_depth_0000.png` are visualisations in no stated unit: without `depth_scale`
they are refused, not guessed (docs/data.md "Depth").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.core.data.loader_kit import (
    as_dict,
    as_float,
    as_list,
    as_matrix,
    as_str,
    cameras_from_arrays,
    check_pose,
    frame_mask,
    load_rgb,
    read_json,
    read_npy,
    require,
    stack_masks,
)
from harness.core.data.scene import Scene, Split
from harness.core.errors import DataError

DEPTH_PNG_MODES = ("L", "I;16", "I")


def load_split(root: Path, split: str, factor: int, background: np.ndarray) -> tuple[Split, np.ndarray | None]:
    """(Split, depth (N, H, W) or None: `load_depths`) of one split."""
    meta_path = root / f"transforms_{split}.json"
    meta = as_dict(read_json(meta_path), str(meta_path))
    angle = as_float(require(meta, "camera_angle_x", str(meta_path)), f"{meta_path} camera_angle_x", positive=True)
    frames = as_list(require(meta, "frames", str(meta_path)), f"{meta_path} frames")
    if not frames:
        raise DataError(f"{meta_path}: split '{split}' has no frames")
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    poses, names, checked = [], [], []
    for i, frame in enumerate(frames):
        where = f"{meta_path} frame {i}"
        frame = as_dict(frame, where)
        checked.append(frame)
        rel = as_str(require(frame, "file_path", where), f"{where} file_path")
        path = root / rel
        if path.suffix == "":
            path = path.with_suffix(".png")
        expect = (images[0].shape[1] * factor, images[0].shape[0] * factor) if images else None
        images.append(load_rgb(path, factor, background, expect, f"{path.parent.name}/ (other frames)"))
        masks.append(frame_mask(root, frame, factor, images[-1], path, where))
        poses.append(check_pose(as_matrix(require(frame, "transform_matrix", where), 4, 4,
                                          f"{where} transform_matrix"), where))
        names.append(Path(rel).stem)
    h, w = images[0].shape[:2]
    focal = 0.5 * w / math.tan(0.5 * angle)  # NeRF's convention: camera_angle_x is the horizontal FOV
    n = len(frames)
    cams = cameras_from_arrays(np.stack(poses), np.full(n, focal), np.full(n, focal),
                               np.full(n, w / 2), np.full(n, h / 2), w, h)
    split_out = Split(np.stack(images).astype(np.float32), cams, names, masks=stack_masks(masks, (h, w)))
    return split_out, load_depths(root, meta_path, meta, checked, factor, (h, w))


def load_depths(root: Path, meta_path: Path, meta: dict, frames: list[dict], factor: int,
                hw: tuple[int, int]) -> np.ndarray | None:
    """(N, H, W) float32 depth of a split whose frames all name a `depth_path` (None when none does); NaN
    where a PNG stores 0. Not loaded when downscaled (depth is not box-filterable)."""
    present = ["depth_path" in f for f in frames]
    if not any(present):
        return None
    if not all(present):
        raise DataError(f"{meta_path} frame {present.index(False)}: missing 'depth_path' (other frames have it)")
    if factor != 1:
        return None
    scale = meta.get("depth_scale")
    out = []
    for i, frame in enumerate(frames):
        where = f"{meta_path} frame {i}"
        path = root / as_str(frame["depth_path"], f"{where} 'depth_path'")
        out.append(_depth_map(path, hw, scale, meta_path, where))
    return np.stack(out)


def _depth_map(path: Path, hw: tuple[int, int], scale, meta_path: Path, where: str) -> np.ndarray:
    scale_key = f"{meta_path} depth_scale"
    if not path.is_file():
        raise DataError(f"{path}: depth file is missing ({where})")
    if path.suffix == ".npy":
        depth = np.asarray(read_npy(path, "depth", where), dtype=np.float32)
        unit = 1.0 if scale is None else as_float(scale, scale_key, positive=True)
    elif path.suffix.lower() == ".png":
        if scale is None:
            raise DataError(f"{path}: depth in unknown units ({where}): set 'depth_scale' (world units per stored "
                            f"value) in {meta_path.name}")
        unit = as_float(scale, scale_key, positive=True)
        depth = _depth_png(path, where)
    else:
        raise DataError(f"{path}: depth files must be .npy or .png ({where})")
    if depth.shape != hw:
        raise DataError(f"{path}: depth is {depth.shape[1] if depth.ndim > 1 else '?'}x{depth.shape[0]}, "
                        f"its image is {hw[1]}x{hw[0]} ({where})")
    return depth * np.float32(unit)


def _depth_png(path: Path, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in DEPTH_PNG_MODES:
                raise DataError(f"{path}: depth PNG must be single-channel 8 or 16-bit, got mode {im.mode} ({where})")
            values = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable depth file ({exc.__class__.__name__}; {where})") from None
    return np.where(values > 0, values, np.nan).astype(np.float32)


def load_blender(path: str | Path, splits=("train", "test"), downscale_factor: int = 1,
                 background=(1.0, 1.0, 1.0), near: float = 2.0, far: float = 6.0,
                 bbox=((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))) -> Scene:
    """NeRF-Synthetic scenes: near/far 2/6 and the [-1.5, 1.5]^3 box are the conventions of the
    NeRF and Plenoxels code for these scenes."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: scene folder does not exist")
    bg = np.asarray(background, dtype=np.float32)
    loaded, depth = {}, {}
    for s in splits:
        if not (root / f"transforms_{s}.json").is_file():
            raise DataError(f"{root / f'transforms_{s}.json'}: missing (split '{s}' was asked for)")
        loaded[s], d = load_split(root, s, int(downscale_factor), bg)
        if d is not None:
            depth[s] = d
    return Scene(name=root.name, path=str(root), format="blender", splits=loaded, background=bg,
                 near=float(near), far=float(far), bbox=np.asarray(bbox, dtype=np.float32),
                 extras={"depth": depth} if depth else {})
