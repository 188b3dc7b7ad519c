"""`street`: a straight street of city blocks for Block-NeRF experiments.

World z is up and the street runs along +x: blocks of buildings (boxes with window facades) line both
sides, separated by cross streets; cars, trees and bollards stand along the kerbs; the ground has road
markings, sidewalks and zebra crossings. Each lighting condition is captured by `drives_per_condition`
drives along the street, alternating direction and lane, so that a condition cannot be told from the
heading (a real fleet drives both ways at every time of day); cameras sit at several heights and
headings. Every image has its own exposure (log-uniform in `exposure_range`), the condition's index as
`appearance_id` and its drive's index as `sequence_id` (what per-sequence pose offsets are shared by).
Every `test_every`-th image is held out for testing. All randomness comes from `seed`.

`transients` = K > 0 adds K cars driving along the street (transient content, Block-NeRF's masked
objects): car k is at x0_k + speed_k * v in view v (file order), wrapped over the scene box's length, in a
lane of its direction, so every view sees them elsewhere; a car that would come within `CLEARANCE` of
that view's camera is moved out along the street to that distance. They cast no shadow onto static
surfaces, so each view's mask (writer: masks/<name>.png) removes every pixel they change.
"""

from __future__ import annotations

import dataclasses
import math

import gin
import numpy as np

from harness.core.data.loader_kit import cameras_from_arrays
from harness.core.data.procedural.raycast import build_shapes
from harness.core.data.procedural.views import ProceduralScene, Transients, heading_pose
from harness.core.errors import ConfigError

CONDITIONS = (
    {"name": "morning", "light_azimuth_deg": 60.0, "light_elevation_deg": 25.0, "light_colour": [1.05, 0.85, 0.6],
     "ambient": [0.18, 0.2, 0.27], "sky_horizon": [0.85, 0.72, 0.55], "sky_zenith": [0.4, 0.55, 0.85]},
    {"name": "noon", "light_azimuth_deg": 200.0, "light_elevation_deg": 65.0, "light_colour": [1.0, 1.0, 0.95],
     "ambient": [0.25, 0.27, 0.3], "sky_horizon": [0.75, 0.85, 0.95], "sky_zenith": [0.3, 0.5, 0.9]},
    {"name": "dusk", "light_azimuth_deg": 290.0, "light_elevation_deg": 12.0, "light_colour": [0.9, 0.5, 0.3],
     "ambient": [0.2, 0.18, 0.26], "sky_horizon": [0.9, 0.5, 0.35], "sky_zenith": [0.2, 0.25, 0.45]},
)
WALLS = ([0.55, 0.35, 0.25], [0.7, 0.65, 0.55], [0.45, 0.45, 0.48], [0.6, 0.5, 0.35], [0.35, 0.4, 0.5],
         [0.75, 0.72, 0.68], [0.5, 0.28, 0.22])
CAR_COLOURS = ([0.6, 0.05, 0.05], [0.05, 0.1, 0.5], [0.7, 0.7, 0.72], [0.08, 0.08, 0.08], [0.1, 0.4, 0.15])
LANE_Y = 1.5  # |y| of the moving cars' lanes: clear of the centre line and of the parked cars (|y| >= 2.9)
CLEARANCE = 3.0  # metres kept between a moving car's end and the camera of the view (no camera inside a car)


@gin.configurable
def street_scene(n_blocks: int = 4, block_length: float = 30.0, cross_street_width: float = 10.0,
                 road_half_width: float = 5.0, sidewalk_width: float = 3.0, buildings_per_side: int = 3,
                 building_height=(8.0, 24.0), building_depth=(8.0, 14.0), n_images: int = 200, width: int = 96,
                 height: int = 64, fov_x_deg: float = 75.0, camera_heights=(1.6, 3.2),
                 yaw_offsets_deg=(-25.0, 0.0, 25.0), pitch_deg: float = 4.0, test_every: int = 8,
                 exposure_range=(0.5, 2.0), conditions=CONDITIONS, drives_per_condition: int = 2, shadows: bool = True,
                 seed: int = 0, transients: int = 0) -> dict:
    """The parameters of the street scene (bind e.g. `street_scene.n_blocks = 6`); they name its cache folder."""
    p = {k: v for k, v in locals().items()}
    if p["transients"] == 0:  # a street without traffic keeps the parameters, cache folder and trial ids it had
        del p["transients"]
    return p


def _buildings(p: dict, rng, boxes: list, materials: list) -> None:
    front = p["road_half_width"] + p["sidewalk_width"]
    for k in range(p["n_blocks"]):
        x0 = k * (p["block_length"] + p["cross_street_width"])
        for side in (-1, 1):
            cuts = np.sort(rng.uniform(0.2, 0.8, p["buildings_per_side"] - 1)) * p["block_length"]
            edges = np.concatenate([[0.0], cuts, [p["block_length"]]]) + x0
            for a, b in zip(edges[:-1], edges[1:]):
                depth, tall = rng.uniform(*p["building_depth"]), rng.uniform(*p["building_height"])
                y_near, y_far = side * front, side * (front + depth)
                materials.append({"type": "facade", "wall": WALLS[rng.integers(len(WALLS))],
                                  "window": [0.12, 0.16, 0.22], "roof": [0.2, 0.2, 0.22], "seed": len(materials),
                                  "bay": float(rng.uniform(2.6, 3.6)), "floor_height": float(rng.uniform(3.0, 3.6))})
                boxes.append(((a + 0.3, min(y_near, y_far), 0.0), (b - 0.3, max(y_near, y_far), tall),
                              len(materials) - 1))


def _objects(p: dict, rng, boxes: list, spheres: list, materials: list) -> int:
    """Parked cars, trees and bollards; returns the index of the first car material."""
    materials += [{"type": "solid", "colour": c} for c in CAR_COLOURS]
    car0 = len(materials) - len(CAR_COLOURS)
    materials += [{"type": "solid", "colour": [0.3, 0.2, 0.1]}, {"type": "solid", "colour": [0.12, 0.35, 0.1]},
                  {"type": "checker", "size": 0.2, "colours": [[0.8, 0.8, 0.1], [0.1, 0.1, 0.1]]}]
    trunk, crown, ball = len(materials) - 3, len(materials) - 2, len(materials) - 1
    kerb = p["road_half_width"]
    for k in range(p["n_blocks"]):
        x0 = k * (p["block_length"] + p["cross_street_width"])
        for side in (-1, 1):
            cx = x0 + rng.uniform(4, p["block_length"] - 4)  # a parked car
            y = side * (kerb - 1.2)
            colour = car0 + int(rng.integers(len(CAR_COLOURS)))
            boxes.append(((cx - 2.1, y - 0.9, 0.0), (cx + 2.1, y + 0.9, 1.4), colour))
            tx, ty = x0 + rng.uniform(2, p["block_length"] - 2), side * (kerb + 1.0)  # a tree on the sidewalk
            boxes.append(((tx - 0.15, ty - 0.15, 0.0), (tx + 0.15, ty + 0.15, 2.6), trunk))
            spheres.append(((tx, ty, 3.3), 1.1, crown))
        spheres.append(((x0 + rng.uniform(2, p["block_length"] - 2), -(kerb + 2.2), 0.4), 0.4, ball))
    return car0


def _traffic(p: dict, c2w: np.ndarray, car0: int, street_end: float) -> Transients:
    """`p['transients']` cars driving along the street (module doc), one box per car and view. Lanes at
    negative y head +x, like the drives; a separate random stream leaves the static street's draws as they were."""
    rng = np.random.default_rng([p["seed"], 1])
    k, n = p["transients"], len(c2w)
    side = rng.choice([-1.0, 1.0], k)
    y = side * LANE_Y + rng.uniform(-0.2, 0.2, k)
    speed = -side * rng.uniform(2.0, 8.0, k)  # metres per view
    start, span = -10.0, street_end + 20.0  # cars wrap over the scene box's length
    x0 = rng.uniform(start, start + span, k)
    half = np.stack([rng.uniform(1.9, 2.3, k), np.full(k, 0.9)], axis=-1)  # half length, half width
    height = rng.uniform(1.3, 1.6, k)
    material = car0 + rng.integers(len(CAR_COLOURS), size=k)
    x = start + np.mod(x0 + speed * np.arange(n)[:, None] - start, span)  # (N, K)
    x = _keep_clear(x, y, half, c2w[:, :2, 3])
    centre = np.stack([x, np.broadcast_to(y, x.shape)], axis=-1)  # (N, K, 2)
    lo = np.concatenate([centre - half, np.zeros((n, k, 1))], axis=-1)
    hi = np.concatenate([centre + half, np.broadcast_to(height[:, None], (n, k, 1))], axis=-1)
    return Transients(lo, hi, material)


def _keep_clear(x: np.ndarray, y: np.ndarray, half: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """Car centres x (N, K) moved along the street to CLEARANCE from the view's camera `eye` (N, 2) where
    they would come nearer (within 0.6 m sideways), so no camera sits inside or against a car."""
    dx = x - eye[:, :1]
    near = (np.abs(dx) < half[:, 0] + CLEARANCE) & (np.abs(y - eye[:, 1:]) < half[:, 1] + 0.6)
    away = np.where(dx < 0, -1.0, 1.0) * (half[:, 0] + CLEARANCE)
    return np.where(near, eye[:, :1] + away, x)


def _cameras(p: dict, rng, street_end: float):
    """Poses, condition, drive (sequence) and exposure per image. Drive d has condition d % C and heads
    +x on even rounds (d // C), -x on odd ones, so every condition is seen in both directions once
    drives_per_condition >= 2; images are shared out evenly over the drives."""
    n_cond = len(p["conditions"])
    n_drives = n_cond * p["drives_per_condition"]
    poses, cond, drive = [], [], []
    for d in range(n_drives):
        c, forward = d % n_cond, (d // n_cond) % 2 == 0
        count = p["n_images"] // n_drives + (1 if d < p["n_images"] % n_drives else 0)
        lane = (-1.0 if forward else 1.0) * (2.5 if c % 2 == 0 else 1.0)
        xs = np.linspace(2.0, street_end - 2.0, count) + rng.uniform(-0.5, 0.5, count)
        for j, x in enumerate(xs if forward else xs[::-1]):
            yaw = (0.0 if forward else 180.0) + p["yaw_offsets_deg"][j % len(p["yaw_offsets_deg"])]
            z = p["camera_heights"][(j + d) % len(p["camera_heights"])]
            eye = (float(x), lane + float(rng.uniform(-0.4, 0.4)), z)
            poses.append(heading_pose(eye, yaw + float(rng.uniform(-3, 3)), p["pitch_deg"] + float(rng.uniform(-2, 2))))
            cond.append(c)
            drive.append(d)
    lo, hi = np.log(p["exposure_range"][0]), np.log(p["exposure_range"][1])
    exposure = np.exp(rng.uniform(lo, hi, len(poses))).astype(np.float32)
    return np.stack(poses), np.array(cond, dtype=np.int64), np.array(drive, dtype=np.int64), exposure


def _street_end(p: dict) -> float:
    return p["n_blocks"] * (p["block_length"] + p["cross_street_width"]) - p["cross_street_width"]


def _intrinsics(p: dict, c2w: np.ndarray):
    n, w, h = len(c2w), int(p["width"]), int(p["height"])
    focal = 0.5 * w / math.tan(math.radians(p["fov_x_deg"]) / 2)
    return cameras_from_arrays(c2w, np.full(n, focal), np.full(n, focal), np.full(n, w / 2), np.full(n, h / 2), w, h)


def street_views(p: dict, n_images: int, seed: int) -> ProceduralScene:
    """The street of `p` seen by `n_images` new cameras, drawn as its own are (every drive, both
    directions, lanes, heights, headings, exposures) but from `seed`: novel views with exact ground
    truth, all in split 'test' (e.g. a dense track across block boundaries, scripts/block_nerf_seam.py).
    They show the static street only (no moving cars): the ground truth a transient-free model should render."""
    if not isinstance(n_images, int) or n_images < len(p["conditions"]) * p["drives_per_condition"]:
        raise ConfigError(f"street_views: n_images must be an integer >= the number of drives, got {n_images!r}")
    scene = build_street(p)
    c2w, cond, drive, exposure = _cameras({**p, "n_images": n_images}, np.random.default_rng(seed), _street_end(p))
    return dataclasses.replace(scene, cameras=_intrinsics(p, c2w), names=[f"novel_{i:05d}" for i in range(n_images)],
                               splits=["test"] * n_images, condition=cond, exposure=exposure, sequence=drive,
                               transients=None)


def build_street(p: dict) -> ProceduralScene:
    rng = np.random.default_rng(p["seed"])
    spacing = p["block_length"] + p["cross_street_width"]
    street_end = _street_end(p)
    crossings = [[k * spacing - p["cross_street_width"], k * spacing] for k in range(1, p["n_blocks"])]
    materials = [{"type": "street", "road_half_width": p["road_half_width"], "sidewalk_width": p["sidewalk_width"],
                  "crossings": crossings, "asphalt": [0.07, 0.07, 0.08], "paint": [0.85, 0.85, 0.8],
                  "sidewalk": [0.45, 0.44, 0.42], "grass": [0.12, 0.3, 0.08]}]
    boxes: list[tuple] = []
    spheres: list[tuple] = []
    _buildings(p, rng, boxes, materials)
    car0 = _objects(p, rng, boxes, spheres, materials)
    shapes = build_shapes(boxes, spheres, ground_material=0)
    c2w, cond, drive, exposure = _cameras(p, rng, street_end)
    traffic = _traffic(p, c2w, car0, street_end) if p.get("transients", 0) else None
    n, cams = len(c2w), _intrinsics(p, c2w)
    reach = p["road_half_width"] + p["sidewalk_width"] + p["building_depth"][1] + 2.0
    aabb = [[-10.0, -reach, -1.0], [street_end + 10.0, reach, p["building_height"][1] + 5.0]]
    mean_height = round(float(np.mean(p["camera_heights"])), 6)
    blocks = [{"center": [k * spacing + p["block_length"] / 2, 0.0, mean_height], "radius": spacing}
              for k in range(p["n_blocks"])]
    diagonal = float(np.linalg.norm(np.subtract(aabb[1], aabb[0])))
    return ProceduralScene(
        shapes, materials, cams, names=[f"frame_{i:05d}" for i in range(n)],
        splits=["test" if i % p["test_every"] == 0 else "train" for i in range(n)],
        conditions=[dict(c) for c in p["conditions"]], condition=cond, exposure=exposure, sequence=drive,
        shadows=bool(p["shadows"]), sky=True,
        metadata={"near": 0.1, "far": diagonal, "aabb": aabb, "blocks": blocks}, transients=traffic)
