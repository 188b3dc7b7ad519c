"""Blender / NeRF-Synthetic loader: transforms_{split}.json + RGBA PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from harness.data.images import composite, downscale, read_image
from harness.data.scene import Cameras, Scene, Split
from harness.errors import DataError


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _require(obj: dict, key: str, where: str):
    if key not in obj:
        raise DataError(f"{where}: missing required key '{key}'")
    return obj[key]


def _pose(frame: dict, where: str) -> np.ndarray:
    m = np.asarray(_require(frame, "transform_matrix", where), dtype=np.float64)
    if m.shape != (4, 4):
        raise DataError(f"{where}: transform_matrix has shape {m.shape}, expected (4, 4)")
    if not np.all(np.isfinite(m)):
        raise DataError(f"{where}: transform_matrix has non-finite values")
    rot = m[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) or abs(np.linalg.det(rot) - 1) > 1e-3:
        raise DataError(f"{where}: transform_matrix rotation is not rigid (det={np.linalg.det(rot):.4g})")
    return m[:3, :4].astype(np.float32)


def load_split(root: Path, split: str, factor: int, background: np.ndarray) -> Split:
    meta_path = root / f"transforms_{split}.json"
    meta = _read_json(meta_path)
    angle = float(_require(meta, "camera_angle_x", str(meta_path)))
    frames = _require(meta, "frames", str(meta_path))
    if not frames:
        raise DataError(f"{meta_path}: split '{split}' has no frames")
    images, poses, names = [], [], []
    for i, frame in enumerate(frames):
        where = f"{meta_path} frame {i}"
        rel = _require(frame, "file_path", where)
        path = root / rel
        if path.suffix == "":
            path = path.with_suffix(".png")
        rgba = downscale(read_image(path), factor)
        if images and rgba.shape[:2] != images[0].shape[:2]:
            raise DataError(f"{path}: image is {rgba.shape[1]}x{rgba.shape[0]}, "
                            f"others in the split are {images[0].shape[1]}x{images[0].shape[0]}")
        images.append(composite(rgba, background))
        poses.append(_pose(frame, where))
        names.append(Path(rel).stem)
    h, w = images[0].shape[:2]
    focal = 0.5 * w / math.tan(0.5 * angle)
    n = len(frames)
    cams = Cameras(np.stack(poses), np.full(n, focal, np.float32), np.full(n, focal, np.float32),
                   np.full(n, w / 2, np.float32), np.full(n, h / 2, np.float32), w, h)
    return Split(np.stack(images).astype(np.float32), cams, names)


def load_blender(path: str | Path, splits=("train", "test"), downscale_factor: int = 1,
                 background=(1.0, 1.0, 1.0), near: float = 2.0, far: float = 6.0,
                 bbox=((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))) -> Scene:
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
