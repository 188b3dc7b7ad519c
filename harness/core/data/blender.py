"""Blender / NeRF-Synthetic loader: transforms_{split}.json + RGBA PNGs.

A frame may name a mask with `mask_path` (relative to the JSON file, as in nerfstudio; docs/data.md "Masks").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.core.data.loader_kit import (as_dict, as_float, as_list, as_matrix, as_str, cameras_from_arrays,
                                          check_pose, frame_mask, load_rgb, read_json, require, stack_masks)
from harness.core.data.scene import Scene, Split
from harness.core.errors import DataError


def load_split(root: Path, split: str, factor: int, background: np.ndarray) -> Split:
    meta_path = root / f"transforms_{split}.json"
    meta = as_dict(read_json(meta_path), str(meta_path))
    angle = as_float(require(meta, "camera_angle_x", str(meta_path)), f"{meta_path} camera_angle_x", positive=True)
    frames = as_list(require(meta, "frames", str(meta_path)), f"{meta_path} frames")
    if not frames:
        raise DataError(f"{meta_path}: split '{split}' has no frames")
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    poses, names = [], []
    for i, frame in enumerate(frames):
        where = f"{meta_path} frame {i}"
        frame = as_dict(frame, where)
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
    return Split(np.stack(images).astype(np.float32), cams, names, masks=stack_masks(masks, (h, w)))


def load_blender(path: str | Path, splits=("train", "test"), downscale_factor: int = 1,
                 background=(1.0, 1.0, 1.0), near: float = 2.0, far: float = 6.0,
                 bbox=((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))) -> Scene:
    """NeRF-Synthetic scenes: near/far 2/6 and the [-1.5, 1.5]^3 box are the conventions of the
    NeRF and Plenoxels code for these scenes."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: scene folder does not exist")
    bg = np.asarray(background, dtype=np.float32)
    loaded = {}
    for s in splits:
        if not (root / f"transforms_{s}.json").is_file():
            raise DataError(f"{root / f'transforms_{s}.json'}: missing (split '{s}' was asked for)")
        loaded[s] = load_split(root, s, int(downscale_factor), bg)
    return Scene(name=root.name, path=str(root), format="blender", splits=loaded, background=bg,
                 near=float(near), far=float(far), bbox=np.asarray(bbox, dtype=np.float32))
