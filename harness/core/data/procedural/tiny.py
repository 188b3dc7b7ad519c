"""`tiny`: a few coloured shapes on a checkered slab, seen from a sphere of cameras (a seconds-to-fit scene).

Views are RGBA (transparent where no shape is hit), so the loader composites them on the scene's
background colour (white or black) like NeRF-Synthetic. World z is up; everything lies in [-1, 1]^3.
"""

from __future__ import annotations

import math

import gin
import numpy as np

from harness.core.data.loader_kit import cameras_from_arrays
from harness.core.data.procedural.raycast import build_shapes
from harness.core.data.procedural.views import ProceduralScene, look_at

GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))  # even azimuth spread of a spiral (Vogel 1979)


@gin.configurable
def tiny_scene(size: int = 64, n_train: int = 40, n_test: int = 10, radius: float = 4.0, fov_deg: float = 40.0,
               shadows: bool = True, light_azimuth_deg: float = -35.0, light_elevation_deg: float = 55.0,
               ambient: float = 0.3) -> dict:
    """The parameters of the tiny scene (bind e.g. `tiny_scene.size = 128`); they name its cache folder."""
    return dict(size=size, n_train=n_train, n_test=n_test, radius=radius, fov_deg=fov_deg, shadows=shadows,
                light_azimuth_deg=light_azimuth_deg, light_elevation_deg=light_elevation_deg, ambient=ambient)


MATERIALS: list[dict] = [
    {"type": "checker", "size": 0.25, "colours": [[0.75, 0.62, 0.2], [0.8, 0.8, 0.78]]},  # slab
    {"type": "checker", "size": 0.2, "colours": [[0.1, 0.55, 0.15], [0.05, 0.25, 0.08]]},  # cube
    {"type": "solid", "colour": [0.75, 0.08, 0.06]},  # red sphere
    {"type": "solid", "colour": [0.08, 0.2, 0.75]},  # blue sphere
    {"type": "solid", "colour": [0.85, 0.4, 0.05]},  # orange pillar
]


def _eye(radius: float, elevation: float, azimuth: float) -> np.ndarray:
    return radius * np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                              math.sin(elevation)])


def build_tiny(p: dict) -> ProceduralScene:
    shapes = build_shapes(
        boxes=[((-1.0, -1.0, -0.75), (1.0, 1.0, -0.55), 0), ((-0.8, -0.8, -0.55), (-0.2, -0.2, 0.05), 1),
               ((0.35, -0.75, -0.55), (0.65, -0.45, 0.45), 4)],
        spheres=[((0.4, 0.35, -0.1), 0.45, 2), ((-0.45, 0.5, -0.3), 0.25, 3)])
    target = (0.0, 0.0, -0.2)
    train = [_eye(p["radius"], math.asin(0.1 + 0.8 * (i + 0.5) / p["n_train"]), i * GOLDEN_ANGLE)
             for i in range(p["n_train"])]
    test = [_eye(p["radius"], math.radians(30), 2 * math.pi * (k + 0.5) / p["n_test"] + 0.12)
            for k in range(p["n_test"])]
    c2w = np.stack([look_at(e, target) for e in train + test])
    n, size = len(c2w), int(p["size"])
    focal = 0.5 * size / math.tan(math.radians(p["fov_deg"]) / 2)
    cams = cameras_from_arrays(c2w, np.full(n, focal), np.full(n, focal), np.full(n, size / 2),
                               np.full(n, size / 2), size, size)
    light = {"light_azimuth_deg": p["light_azimuth_deg"], "light_elevation_deg": p["light_elevation_deg"],
             "light_colour": [0.9, 0.9, 0.9], "ambient": [p["ambient"]] * 3}
    return ProceduralScene(
        shapes, MATERIALS, cams,
        names=[f"train_{i:03d}" for i in range(len(train))] + [f"test_{k:03d}" for k in range(len(test))],
        splits=["train"] * len(train) + ["test"] * len(test), conditions=[light], condition=np.zeros(n, np.int64),
        exposure=None, shadows=bool(p["shadows"]), sky=False,
        metadata={"near": 2.0, "far": 6.0, "aabb": [[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]})
