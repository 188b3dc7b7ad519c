"""Block partition: block centres and radii, and which images belong to which block.

Centres come from the scene's `blocks` list (source='scene') or are spaced evenly along the camera
trajectory's principal axis (source='trajectory'; `shift` moves them along it by that fraction of their
spacing, e.g. 0.5 puts centres where the unshifted blocks meet, for a seam check). Block-NeRF places one
block per intersection, reaching 75% of the way to each neighbour, which gives adjacent blocks a 50% overlap; here
`reach` sets radius = reach * (distance to the nearest neighbouring centre), so the overlap of two
neighbours is (2 * reach - 1) of their spacing. A single block covers every camera (its radius is the
largest camera distance from its centre times `single_margin`).

An image belongs to every block whose region it sees: its camera centre, or the point
`look_distance` ahead along its optical axis, lies within the block's radius. With `cover_all`,
an image that no block claims goes to the nearest block, so every training image is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import gin
import numpy as np

from harness.core.errors import ConfigError

SOURCES = ("trajectory", "scene")


@dataclass
class Block:
    index: int
    center: np.ndarray  # (3,)
    radius: float

    def as_record(self) -> dict:
        return {"index": self.index, "center": [float(c) for c in self.center], "radius": float(self.radius)}


@gin.register
class BlockPartition:
    def __init__(self, source: str = "trajectory", n_blocks: int = 4, reach: float | None = 0.75,
                 look_distance: float = 0.0, cover_all: bool = True, single_margin: float = 1.05, shift: float = 0.0):
        if source not in SOURCES:
            raise ConfigError(f"BlockPartition.source must be one of {SOURCES}, got {source!r}")
        if n_blocks < 1:
            raise ConfigError(f"BlockPartition.n_blocks must be >= 1, got {n_blocks}")
        if reach is not None and not 0.5 <= reach <= 2.0:
            raise ConfigError(f"BlockPartition.reach must be in [0.5, 2] (0.5: blocks just touch), got {reach}")
        if not -1.0 < shift < 1.0:
            raise ConfigError(f"BlockPartition.shift must be in (-1, 1) block spacings, got {shift}")
        if look_distance < 0:
            raise ConfigError(f"BlockPartition.look_distance must be >= 0, got {look_distance}")
        self.source, self.n_blocks, self.reach = source, int(n_blocks), reach
        self.look_distance, self.cover_all, self.single_margin = float(look_distance), bool(cover_all), single_margin
        self.shift = float(shift)

    def blocks(self, positions: np.ndarray, scene_blocks: list[dict] | None = None) -> list[Block]:
        """The blocks for cameras at `positions` (N, 3)."""
        if self.source == "scene":
            if not scene_blocks:
                raise ConfigError("BlockPartition.source = 'scene' but the scene has no 'blocks' list")
            centres = np.array([b["center"] for b in scene_blocks], dtype=np.float64)
            radii = np.array([b["radius"] for b in scene_blocks], dtype=np.float64)
            if self.reach is not None and len(centres) > 1:
                radii = self.reach * _neighbour_distance(centres)
            return [Block(i, c, float(r)) for i, (c, r) in enumerate(zip(centres, radii))]
        centres = trajectory_centres(positions, self.n_blocks, self.shift)
        if self.n_blocks == 1:
            radius = float(np.linalg.norm(positions - centres[0], axis=1).max()) * self.single_margin
            return [Block(0, centres[0], max(radius, 1e-6))]
        radii = (self.reach if self.reach is not None else 0.75) * _neighbour_distance(centres)
        return [Block(i, c, float(r)) for i, (c, r) in enumerate(zip(centres, radii))]

    def assign(self, blocks: list[Block], c2w: np.ndarray, cover: bool | None = None) -> list[np.ndarray]:
        """Per block, the sorted indices of the images (poses c2w (N, 3, 4)) that belong to it."""
        cover = self.cover_all if cover is None else cover
        positions = c2w[:, :, 3].astype(np.float64)
        ahead = positions - self.look_distance * c2w[:, :, 2]  # OpenGL cameras look down -z
        members = []
        for b in blocks:
            near = np.linalg.norm(positions - b.center, axis=1) <= b.radius
            if self.look_distance > 0:
                near |= np.linalg.norm(ahead - b.center, axis=1) <= b.radius
            members.append(near)
        table = np.stack(members)  # (B, N)
        if cover:
            orphans = np.where(~table.any(0))[0]
            if len(orphans):
                dist = np.linalg.norm(positions[orphans, None] - np.stack([b.center for b in blocks])[None], axis=-1)
                table[dist.argmin(1), orphans] = True
        return [np.where(row)[0] for row in table]


def trajectory_centres(positions: np.ndarray, n_blocks: int, shift: float = 0.0) -> np.ndarray:
    """`n_blocks` centres evenly spaced along the principal axis of the camera positions (the segment
    between the extreme projections is cut into equal parts; each centre is a part's middle, moved by
    `shift` parts along the axis)."""
    mean = positions.mean(0)
    centred = positions - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = vt[0] * (1.0 if vt[0][np.argmax(np.abs(vt[0]))] > 0 else -1.0)  # a stable sign
    proj = centred @ axis
    lo, hi = float(proj.min()), float(proj.max())
    ts = lo + (np.arange(n_blocks) + 0.5 + shift) * (hi - lo) / n_blocks
    return mean[None] + ts[:, None] * axis[None]


def _neighbour_distance(centres: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.min(1)


def overlap_fraction(a: Block, b: Block) -> float:
    """Length of the overlap of two blocks along the line joining their centres, over their spacing."""
    spacing = float(np.linalg.norm(a.center - b.center))
    return (a.radius + b.radius - spacing) / spacing
