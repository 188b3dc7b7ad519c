"""The Gin entry point for scenes: `load_scene.path`, `load_scene.format`, ..."""

from __future__ import annotations

from pathlib import Path

import gin

from harness.core.data.scene import Scene
from harness.core.errors import DataError
from harness.core.paths import resolve_project_path


def loader_for(format: str):
    from harness.core.data.formats import all_loaders

    loaders = all_loaders()
    if format not in loaders:
        raise DataError(f"load_scene.format = '{format}' is not supported (supported: {', '.join(sorted(loaders))})")
    return loaders[format]


def scene_root(path: str, format: str) -> Path:
    """The scene's folder, checked to exist (procedural scenes are named, not found: they are generated)."""
    loader = loader_for(format)
    if getattr(loader, "takes_scene_name", False):
        return Path(path)
    root = resolve_project_path(path)
    if not root.exists():
        raise DataError(f"{root}: scene path does not exist (load_scene.path = '{path}')")
    return root


@gin.configurable
def load_scene(path: str = gin.REQUIRED, format: str = "blender", downscale: int = 1,
               background=(1.0, 1.0, 1.0), splits=("train", "test"), options: dict | None = None) -> Scene:
    """Load a scene folder; relative paths are resolved against the project root.

    `options` are passed to the format's loader (e.g. {'ndc': True} for LLFF).
    """
    root = scene_root(path, format)
    return loader_for(format)(root, splits=tuple(splits), downscale_factor=int(downscale),
                              background=background, **(options or {}))
