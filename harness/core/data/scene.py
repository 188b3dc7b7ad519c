"""The one camera/scene representation every loader produces.

Conventions (all loaders convert to these):
- camera-to-world matrices `c2w` of shape (N, 3, 4), OpenGL/Blender camera axes
  (x right, y up, looking down -z);
- pinhole intrinsics per image in pixels (`fx`, `fy`, `cx`, `cy`, shape (N,));
- images float32 in [0, 1], shape (N, H, W, 3), already composited on the
  scene's background colour (identically for every consumer, DESIGN.md "Evaluation protocol");
- masks, when a split has them, bool (N, H, W): True where a pixel shows static content and counts
  for training and scoring, False where it is ignored (e.g. a transient car); None: every pixel counts;
- dynamic scenes (docs/data.md "Dynamic scenes"): `time` (N,) float32 in [0, 1], `time_step` (N,) int64
  (0..T-1, one time per step) and, when the capture states it, `camera_id` (N,) int64 (the rig camera, so
  frames of one camera at consecutive steps can be paired); None for static scenes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Cameras:
    c2w: np.ndarray  # (N, 3, 4) float32
    fx: np.ndarray  # (N,) float32
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def subset(self, index) -> Cameras:
        idx = np.asarray(index)
        return Cameras(self.c2w[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
                       self.width, self.height)


@dataclass
class Split:
    """One split (train/val/test) of a scene."""

    images: np.ndarray  # (N, H, W, 3) float32 in [0, 1]
    cameras: Cameras
    names: list[str]  # one per image, used to name renders and per-view metrics
    exposure: np.ndarray | None = None  # (N,) positive floats, Block-NeRF scenes
    appearance_id: np.ndarray | None = None  # (N,) ints, Block-NeRF scenes
    sequence_id: np.ndarray | None = None  # (N,) ints: the capture sequence (drive), Block-NeRF scenes
    masks: np.ndarray | None = None  # (N, H, W) bool, True where a pixel counts; None: every pixel counts
    time: np.ndarray | None = None  # (N,) float32 in [0, 1], dynamic scenes
    time_step: np.ndarray | None = None  # (N,) int64, the time step 0..T-1 of `time`, dynamic scenes
    camera_id: np.ndarray | None = None  # (N,) int64, the rig camera, dynamic scenes

    def __post_init__(self) -> None:
        # a mask that does not line up with its image would silently train on the wrong pixels
        if self.masks is not None and (self.masks.dtype != np.bool_ or self.masks.shape != self.images.shape[:3]):
            raise ValueError(f"Split.masks must be bool {self.images.shape[:3]}, got {self.masks.dtype} "
                             f"{self.masks.shape}")

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index) -> Split:
        """The images at `index` with their cameras, names and every per-image field (masks, times included)."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Split(self.images[idx], self.cameras.subset(idx), [self.names[i] for i in idx], pick(self.exposure),
                     pick(self.appearance_id), pick(self.sequence_id), pick(self.masks), pick(self.time),
                     pick(self.time_step), pick(self.camera_id))


@dataclass
class Scene:
    name: str
    path: str
    format: str  # 'blender', 'llff', 'nerfstudio', 'colmap', ...
    splits: dict[str, Split]
    background: np.ndarray  # (3,) float32, the colour images were composited on
    near: float
    far: float
    bbox: np.ndarray  # (2, 3) world-space axis-aligned box holding the scene
    ndc: bool = False
    extras: dict = field(default_factory=dict)  # format-specific (e.g. Block-NeRF 'blocks')

    def split(self, name: str) -> Split:
        from harness.core.errors import DataError

        if name not in self.splits:
            raise DataError(f"{self.path}: scene has no '{name}' split (has: {', '.join(sorted(self.splits))})")
        return self.splits[name]
