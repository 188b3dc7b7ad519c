"""The Gin entry point for scenes: `load_scene.path`, `load_scene.format`, ..."""

from __future__ import annotations

import gin

from harness.data.scene import Scene
from harness.errors import DataError
from harness.paths import resolve_project_path


def _loaders():
    from harness.data.blender import load_blender

    loaders = {"blender": load_blender}
    try:  # formats added by later issues register here
        from harness.data import formats  # noqa: F401
        loaders.update(formats.LOADERS)
    except ImportError:
        pass
    return loaders


@gin.configurable
def load_scene(path: str = gin.REQUIRED, format: str = "blender", downscale: int = 1,
               background=(1.0, 1.0, 1.0), splits=("train", "test"), options: dict | None = None) -> Scene:
    """Load a scene folder; relative paths are resolved against the project root.

    `options` are passed to the format's loader (e.g. near/far/bbox for Blender).
    """
    loaders = _loaders()
    if format not in loaders:
        raise DataError(f"load_scene.format = '{format}' is not supported (supported: {', '.join(sorted(loaders))})")
    root = resolve_project_path(path)
    if not root.exists():
        raise DataError(f"{root}: scene path does not exist (load_scene.path = '{path}')")
    return loaders[format](root, splits=tuple(splits), downscale_factor=int(downscale),
                           background=background, **(options or {}))
