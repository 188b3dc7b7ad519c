"""A procedural scene as shapes + materials + cameras, and rendering one of its views.

Rays come from harness.core.data.rays (pixel centres, OpenGL axes), the same function baselines use, so
a stored depth is exactly the distance along the ray a model will cast for that pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.core.data.procedural.raycast import Hits, Shapes, build_shapes, cast, with_boxes
from harness.core.data.procedural.shading import radiance, srgb_encode
from harness.core.data.rays import image_rays
from harness.core.data.scene import Cameras, Split
from harness.core.metrics.image import to_uint8


@dataclass
class Transients:
    """Boxes that move from view to view (cars driving along the street). They show in the views but cast no
    shadow onto the static shapes, so the pixels they cover first are all a static model cannot explain."""

    lo: np.ndarray  # (N, K, 3) lower corner of each box in each view
    hi: np.ndarray  # (N, K, 3) upper corner
    material: np.ndarray  # (K,) material index per box

    def shapes(self, index: int) -> Shapes:
        """View `index`'s boxes alone (no ground): what the transient map is cast against."""
        return build_shapes([(lo, hi, int(m)) for lo, hi, m in zip(self.lo[index], self.hi[index], self.material)],
                            [])


@dataclass
class ProceduralScene:
    shapes: Shapes
    materials: list[dict]
    cameras: Cameras  # every view, in file order
    names: list[str]
    splits: list[str]  # 'train' / 'test' per view
    conditions: list[dict]  # lighting per capture condition
    condition: np.ndarray  # (N,) index into `conditions` per view (the appearance id)
    exposure: np.ndarray | None  # (N,) factor multiplying linear radiance, or None (= 1)
    shadows: bool
    sky: bool  # False: transparent background (RGBA images)
    metadata: dict = field(default_factory=dict)  # top-level transforms.json keys (near, far, aabb, blocks)
    sequence: np.ndarray | None = None  # (N,) capture sequence (drive) per view, or None
    transients: Transients | None = None  # moving objects, or None (a static scene)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(3, 4) OpenGL camera-to-world at `eye` looking at `target` (camera -z towards it, +y towards `up`)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back, eye], axis=-1)


def heading_pose(eye, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """(3, 4) camera-to-world looking along yaw (from +x towards +y) and pitch (up positive), z up."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    return look_at(eye, np.asarray(eye, np.float64) + forward)


def render_view(scene: ProceduralScene, index: int, exposure: float | None = None) -> dict[str, np.ndarray]:
    """One view: 'linear' radiance times exposure (H, W, 3, unclipped), 'rgb' (sRGB-encoded, clipped,
    float64 in [0, 1]), 'alpha' (H, W: 1 where a surface is hit), 'depth' (H, W float32 distance
    along the unit ray to the first hit, transient or not; inf where nothing is hit) and 'transient'
    (H, W bool: the first hit is a transient object). `exposure` defaults to the view's own."""
    cams = scene.cameras
    origins, dirs = (x.numpy().astype(np.float64) for x in image_rays(cams, index))
    hits = cast(origins, dirs, scene.shapes)
    cond = scene.conditions[int(scene.condition[index])]
    # static surfaces are lit against the static shapes only: transients cast no shadow on them
    rad = radiance(origins, dirs, hits, scene.shapes, scene.materials, cond, scene.shadows, scene.sky)
    t, hit = hits.t, hits.prim >= 0
    transient = np.zeros(len(origins), dtype=bool)
    if scene.transients is not None:
        movers = scene.transients.shapes(index)
        transient, t_near = _shade_transients(scene, movers, origins, dirs, hits, cond, rad)
        t, hit = np.where(transient, t_near, t), hit | transient
    if exposure is None:
        exposure = 1.0 if scene.exposure is None else float(scene.exposure[index])
    shape = (cams.height, cams.width)
    linear = (rad * exposure).reshape(*shape, 3)
    return {"linear": linear, "rgb": srgb_encode(linear), "alpha": hit.reshape(shape).astype(np.float64),
            "depth": t.astype(np.float32).reshape(shape), "transient": transient.reshape(shape)}


def _shade_transients(scene: ProceduralScene, movers: Shapes, origins, dirs, hits: Hits, cond: dict,
                      rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite `rad` where the view's transient boxes `movers` are hit before any static shape; returns
    that (R,) bool map and the distances to the transient hits. Transient surfaces are lit against every
    shape (a building shades a car), which changes only pixels that are masked anyway."""
    near = cast(origins, dirs, movers)
    transient = near.t < hits.t
    if transient.any():
        both = with_boxes(scene.shapes, movers.box_lo, movers.box_hi, movers.box_material)
        sub = Hits(near.t[transient], near.prim[transient] + scene.shapes.n_boxes, near.normal[transient])
        rad[transient] = radiance(origins[transient], dirs[transient], sub, both, scene.materials, cond,
                                  scene.shadows, scene.sky)
    return transient, near.t


def render_split(scene: ProceduralScene) -> Split:
    """Every view of an opaque-sky `scene` rendered and quantised to 8 bits, as the written scene's
    images are read back: the form a model is scored on (views never written to disk, e.g. novel views)."""
    if not scene.sky:
        raise ValueError("render_split: scenes with a transparent background are scored against RGBA files")
    views = [render_view(scene, i) for i in range(len(scene.names))]
    images = np.stack([to_uint8(v["rgb"]) for v in views])
    masks = None if scene.transients is None else ~np.stack([v["transient"] for v in views])
    return Split(images=images.astype(np.float32) / 255.0, cameras=scene.cameras, names=list(scene.names),
                 exposure=None if scene.exposure is None else np.asarray(scene.exposure, np.float32),
                 appearance_id=np.asarray(scene.condition, np.int64) if len(scene.conditions) > 1 else None,
                 sequence_id=None if scene.sequence is None else np.asarray(scene.sequence, np.int64), masks=masks)
