"""Scene formats beyond Blender: the loaders `load_scene` picks up (LOADERS), and format detection.

Each loader has the signature `loader(root, splits=(...), downscale_factor=1, background=(1, 1, 1),
**options) -> Scene`; `load_scene.options` reach it as keyword arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.core.data.blender import load_blender
from harness.core.data.colmap import find_model_dir, load_colmap
from harness.core.data.llff import load_llff
from harness.core.data.nerfstudio import load_nerfstudio, split_names
from harness.core.data.procedural import KINDS, load_procedural
from harness.core.errors import DataError

LOADERS = {"llff": load_llff, "nerfstudio": load_nerfstudio, "colmap": load_colmap, "procedural": load_procedural}


def all_loaders() -> dict:
    return {"blender": load_blender, **LOADERS}


def _is_blender(meta_path: Path) -> bool:
    """Blender files state `camera_angle_x` and no per-pixel focal length."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "camera_angle_x" in meta and "fl_x" not in meta


def detect_format(path: Path) -> str:
    """The format of a scene folder (or a transforms JSON file), from the files it holds."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return "nerfstudio"
    if not path.is_dir():
        if path.name in KINDS and not path.exists():
            return "procedural"
        raise DataError(f"{path}: not a scene folder")
    if (path / "transforms.json").is_file():
        return "nerfstudio"
    if (path / "transforms_train.json").is_file():
        return "blender" if _is_blender(path / "transforms_train.json") else "nerfstudio"
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    try:
        find_model_dir(path)
        return "colmap"
    except DataError:
        pass
    raise DataError(f"{path}: cannot tell the scene format (expected transforms.json, transforms_train.json, "
                    f"poses_bounds.npy or a COLMAP sparse model); pass the format explicitly")


def available_splits(path: Path, fmt: str) -> tuple[str, ...]:
    """The splits a scene has, without loading its images."""
    if fmt == "blender":
        return tuple(s for s in ("train", "val", "test") if (Path(path) / f"transforms_{s}.json").is_file())
    if fmt == "nerfstudio":
        found = split_names(Path(path))
        return tuple(sorted(found, key=lambda s: (("train", "val", "test") + (s,)).index(s)))
    return ("train", "test")


def load_folder(path: Path, format: str | None = None):
    """Every split of a scene folder (format detected unless given), for `scene check` and `doctor`;
    LLFF folders often ship only downscaled images_N/: the largest stored is loaded."""
    path = Path(path)
    fmt = format or detect_format(path)
    loaders = all_loaders()
    if fmt not in loaders:
        raise DataError(f"unknown scene format '{fmt}' (supported: {', '.join(sorted(loaders))})")
    splits = available_splits(path, fmt)
    if not splits:
        raise DataError(f"{path}: no splits found")
    options = {}
    if fmt == "llff":
        from harness.core.data.llff import stored_factors

        options["downscale_factor"] = (stored_factors(path) or [1])[0]
    return loaders[fmt](path, splits=splits, **options)
