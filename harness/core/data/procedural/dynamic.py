"""`dynamic`: three textured objects moving and turning over `n_steps` time steps, seen by a fixed rig of cameras.

A checkered slab (static) carries a cube that circles a loop while spinning about z, a ball that rolls along y
without slipping, and a post that tumbles about a tilted axis while bobbing up and down. Every object keeps
inside `AABB` at every step, for any `motion`. The rig's cameras (on a hemisphere, looking at the scene
centre) are the same at every step, so frame (step, camera) and (step + 1, camera) differ by the motion alone.

The ray caster handles axis-aligned shapes, so an object is one box or sphere in its own frame, centred on
the origin; rays are taken into that frame (rotation keeps their length, hence the hit distance) and the
texture is evaluated there, so it turns with the object. Views are RGBA (transparent where nothing is hit),
like `tiny`'s. Besides images and depth, each frame but those of the last step gets its forward optical flow
(`frame_flow`); docs/data.md "Dynamic scenes" describes the files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gin
import numpy as np
from PIL import Image

from harness.core.data.loader_kit import cameras_from_arrays
from harness.core.data.procedural.raycast import Shapes, build_shapes, cast
from harness.core.data.procedural.shading import albedo, light_direction, srgb_encode
from harness.core.data.procedural.views import ProceduralScene, look_at
from harness.core.data.procedural.writer import encode_view, transforms
from harness.core.data.rays import image_rays
from harness.core.errors import ConfigError

GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))
AABB = [[-1.3, -1.3, -0.2], [1.3, 1.3, 1.0]]  # holds the slab and every object at every step
TARGET = (0.0, 0.0, 0.3)  # where the rig looks
VISIBLE_TOL = 1e-4  # world units: the surface seen at the flow's end point is the moved point itself
FLOW_CONVENTION = ("float32 (H, W, 2): (du, dv) in pixels from a pixel centre of this frame to where the surface "
                   "point it sees projects in the same camera's frame at time_step + 1; NaN: occluded there or "
                   "outside the image")

MATERIALS: list[dict] = [
    {"type": "checker", "size": 0.25, "colours": [[0.75, 0.62, 0.2], [0.8, 0.8, 0.78]]},  # slab
    {"type": "checker", "size": 0.15, "colours": [[0.1, 0.55, 0.15], [0.9, 0.85, 0.3]]},  # cube
    {"type": "checker", "size": 0.14, "colours": [[0.75, 0.08, 0.06], [0.95, 0.9, 0.85]]},  # ball
    {"type": "checker", "size": 0.12, "colours": [[0.08, 0.2, 0.75], [0.85, 0.4, 0.05]]},  # post
]


@gin.configurable
def dynamic_scene(size: int = 100, n_steps: int = 24, n_train: int = 20, n_test: int = 4, radius: float = 4.5,
                  fov_deg: float = 40.0, motion: float = 1.0, shadows: bool = True, light_azimuth_deg: float = -35.0,
                  light_elevation_deg: float = 55.0, ambient: float = 0.3) -> dict:
    """The parameters of the dynamic scene (bind e.g. `dynamic_scene.n_steps = 48`); they name its cache folder.
    `motion` scales every object's path and turn over the sequence (0: nothing moves)."""
    return dict(size=size, n_steps=n_steps, n_train=n_train, n_test=n_test, radius=radius, fov_deg=fov_deg,
                motion=motion, shadows=shadows, light_azimuth_deg=light_azimuth_deg,
                light_elevation_deg=light_elevation_deg, ambient=ambient)


def check_params(p: dict) -> None:
    """One ConfigError line for a parameter set that cannot make a scene."""
    for key, low in (("size", 1), ("n_steps", 2), ("n_train", 1), ("n_test", 1)):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < low:
            raise ConfigError(f"dynamic_scene.{key} must be an integer >= {low}, got {p[key]!r}")
    reach = _reach()
    if not isinstance(p["radius"], (int, float)) or not p["radius"] > reach:
        raise ConfigError(f"dynamic_scene.radius must exceed {reach:.3f} (cameras outside the scene box), "
                          f"got {p['radius']!r}")
    if not isinstance(p["fov_deg"], (int, float)) or not 0 < p["fov_deg"] < 180:
        raise ConfigError(f"dynamic_scene.fov_deg must be in (0, 180), got {p['fov_deg']!r}")
    if isinstance(p["motion"], bool) or not isinstance(p["motion"], (int, float)) or not math.isfinite(p["motion"]):
        raise ConfigError(f"dynamic_scene.motion must be a finite number, got {p['motion']!r}")


def _reach() -> float:
    """The largest distance from TARGET to a point of AABB: cameras farther out are outside the box."""
    corners = np.array([[x, y, z] for x in (AABB[0][0], AABB[1][0]) for y in (AABB[0][1], AABB[1][1])
                        for z in (AABB[0][2], AABB[1][2])])
    return float(np.linalg.norm(corners - TARGET, axis=-1).max())


def rotation(axis, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about `axis` (Rodrigues' formula)."""
    k = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


@dataclass
class Mover:
    """One rigid object: a single box or sphere in its own frame (centred on the origin) and its pose per step;
    a point x of the object is at rotation[s] @ x + centre[s] at step s."""

    shapes: Shapes
    centre: np.ndarray  # (T, 3)
    rotation: np.ndarray  # (T, 3, 3) object-to-world

    def move(self, points: np.ndarray, step: int, to: int) -> np.ndarray:
        """World points (R, 3) on the object at `step` -> where they are at step `to`."""
        local = (points - self.centre[step]) @ self.rotation[step]
        return local @ self.rotation[to].T + self.centre[to]


def _movers(p: dict) -> list[Mover]:
    """The cube, the ball and the post (module doc). Their extents (the cube turns about z only, the ball and the
    post within their bounding spheres) keep them 1 cm or more above the slab and apart from each other, whatever
    `motion` is: positions are periodic in it, and turns do not move a centre."""
    s = np.arange(p["n_steps"]) / (p["n_steps"] - 1)  # time in [0, 1]
    m = float(p["motion"])
    loop = 2 * math.pi * m * s
    cube = Mover(build_shapes([((-0.22, -0.22, -0.22), (0.22, 0.22, 0.22), 1)], []),
                 np.stack([0.5 + 0.3 * np.cos(loop), 0.45 + 0.3 * np.sin(loop), np.full_like(s, 0.23)], axis=-1),
                 np.stack([rotation((0, 0, 1), 1.5 * math.pi * m * x) for x in s]))
    y = -0.65 * np.cos(math.pi * m * s)
    ball = Mover(build_shapes([], [((0.0, 0.0, 0.0), 0.28, 2)]),
                 np.stack([np.full_like(s, -0.55), y, np.full_like(s, 0.29)], axis=-1),
                 np.stack([rotation((1, 0, 0), -(v - y[0]) / 0.28) for v in y]))  # rolling: turn = distance / radius
    post = Mover(build_shapes([((-0.1, -0.1, -0.28), (0.1, 0.1, 0.28), 3)], []),
                 np.stack([np.full_like(s, 0.5), np.full_like(s, -0.55), 0.37 + 0.06 * (1 - np.cos(loop))], axis=-1),
                 np.stack([rotation((1.0, 0.5, 0.3), math.pi * m * x) for x in s]))
    return [cube, ball, post]


@dataclass
class DynamicScene:
    """Frames are step-major: frame i shows rig camera `camera[i]` at time step `step[i]`."""

    base: ProceduralScene  # the static slab, materials, light, and every frame's camera, name and split
    movers: list[Mover]
    step: np.ndarray  # (N,) int64
    camera: np.ndarray  # (N,) int64, index into the rig
    n_steps: int

    @property
    def names(self) -> list[str]:
        return self.base.names

    def frame(self, step: int, camera: int) -> int:
        return step * (len(self.names) // self.n_steps) + camera


def _eye(radius: float, elevation: float, azimuth: float) -> np.ndarray:
    return np.add(TARGET, radius * np.array([math.cos(elevation) * math.cos(azimuth),
                                             math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]))


def _rig(p: dict) -> tuple[np.ndarray, list[str]]:
    """(c2w (C, 3, 4), split per camera): training cameras on a spiral over the upper hemisphere (elevations
    12 to 62 degrees), test cameras on a ring at 35 degrees between them."""
    r = float(p["radius"])
    train = [_eye(r, math.asin(0.2 + 0.7 * (i + 0.5) / p["n_train"]), i * GOLDEN_ANGLE) for i in range(p["n_train"])]
    test = [_eye(r, math.radians(35), 2 * math.pi * (k + 0.5) / p["n_test"] + 0.3) for k in range(p["n_test"])]
    return np.stack([look_at(e, TARGET) for e in train + test]), ["train"] * len(train) + ["test"] * len(test)


def build_dynamic(p: dict) -> DynamicScene:
    rig, rig_splits = _rig(p)
    n_cams, n_steps, size = len(rig), int(p["n_steps"]), int(p["size"])
    step, camera = np.repeat(np.arange(n_steps), n_cams), np.tile(np.arange(n_cams), n_steps)
    n = len(step)
    focal = 0.5 * size / math.tan(math.radians(p["fov_deg"]) / 2)
    cams = cameras_from_arrays(rig[camera], np.full(n, focal), np.full(n, focal), np.full(n, size / 2),
                               np.full(n, size / 2), size, size)
    light = {"light_azimuth_deg": p["light_azimuth_deg"], "light_elevation_deg": p["light_elevation_deg"],
             "light_colour": [0.9, 0.9, 0.9], "ambient": [p["ambient"]] * 3}
    slab = build_shapes([((-1.2, -1.2, -0.1), (1.2, 1.2, 0.0), 0)], [])
    bounds = {"near": max(0.05, p["radius"] - _reach() - 0.2), "far": p["radius"] + _reach() + 0.2, "aabb": AABB}
    base = ProceduralScene(
        slab, MATERIALS, cams, names=[f"{rig_splits[c]}_c{c:02d}_t{s:03d}" for s, c in zip(step, camera)],
        splits=[rig_splits[c] for c in camera], conditions=[light], condition=np.zeros(n, np.int64), exposure=None,
        shadows=bool(p["shadows"]), sky=False, metadata=bounds)
    return DynamicScene(base, _movers(p), step.astype(np.int64), camera.astype(np.int64), n_steps)


@dataclass
class Surface:
    """The first surface along each ray. owner: -1 nothing, 0 the static slab, k + 1 mover k. `local` and
    `local_normal` are in the owner's frame (world for the slab): what its texture is a function of."""

    t: np.ndarray  # (R,) distance along the unit ray, inf where nothing is hit
    owner: np.ndarray  # (R,) int64
    material: np.ndarray  # (R,) int64, -1 where nothing is hit
    local: np.ndarray  # (R, 3)
    local_normal: np.ndarray  # (R, 3)
    normal: np.ndarray  # (R, 3) world


def first_surface(scene: DynamicScene, step: int, origins: np.ndarray, dirs: np.ndarray) -> Surface:
    """Nearest hits of world rays (unit directions) against the slab and every object at `step`."""
    o, d = np.asarray(origins, np.float64), np.asarray(dirs, np.float64)
    hits = cast(o, d, scene.base.shapes)
    hit = hits.prim >= 0
    material = np.where(hit, scene.base.shapes.materials()[np.maximum(hits.prim, 0)], -1)
    surf = Surface(hits.t, np.where(hit, 0, -1), material, o + np.where(hit, hits.t, 0.0)[:, None] * d,
                   hits.normal, hits.normal)
    for k, m in enumerate(scene.movers):
        rot, centre = m.rotation[step], m.centre[step]
        lo, ld = (o - centre) @ rot, d @ rot  # rows times R = R^T applied to each: into the object's frame
        near = cast(lo, ld, m.shapes)
        closer = near.t < surf.t
        surf.t = np.where(closer, near.t, surf.t)
        surf.owner = np.where(closer, k + 1, surf.owner)
        surf.material = np.where(closer, m.shapes.materials()[np.maximum(near.prim, 0)], surf.material)
        surf.local = np.where(closer[:, None], lo + np.where(closer, near.t, 0.0)[:, None] * ld, surf.local)
        surf.local_normal = np.where(closer[:, None], near.normal, surf.local_normal)
        surf.normal = np.where(closer[:, None], near.normal @ rot.T, surf.normal)
    return surf


def _radiance(scene: DynamicScene, step: int, o: np.ndarray, d: np.ndarray, surf: Surface) -> np.ndarray:
    """(R, 3) linear radiance: Lambertian under the light plus ambient (as in shading.radiance), with shadows
    cast by the slab and the objects at this step; 0 where nothing is hit."""
    light = scene.base.conditions[0]
    towards = light_direction(light)
    lit = np.maximum(surf.normal @ towards, 0.0)
    hit = surf.owner >= 0
    if scene.base.shadows:
        facing = hit & (lit > 0)
        start = o[facing] + surf.t[facing, None] * d[facing] + 1e-4 * surf.normal[facing]
        ray = np.broadcast_to(towards, start.shape)
        lit[facing] = np.where(np.isfinite(first_surface(scene, step, start, ray).t), 0.0, lit[facing])
    shade = np.asarray(light["ambient"]) + np.asarray(light["light_colour"]) * lit[:, None]
    return albedo(scene.base.materials, surf.material, surf.local, surf.local_normal) * shade


def _frame_rays(scene: DynamicScene, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The frame's pixel rays as a model casts them (harness.core.data.rays), renormalised in float64: the sphere
    test assumes unit directions, and float32's 1e-7 off puts grazing hits microns off the surface (then a
    visible point's flow would be refused as hidden)."""
    o, d = (x.numpy().astype(np.float64) for x in image_rays(scene.base.cameras, index))
    return o, d / np.linalg.norm(d, axis=-1, keepdims=True)


def render_frame(scene: DynamicScene, index: int) -> dict:
    """Frame `index`: 'linear', 'rgb', 'alpha', 'depth' as `views.render_view` gives them, 'owner' (H, W) int
    (-1 nothing, 0 slab, k + 1 mover k) and 'surface' (the per-ray `Surface`, for `frame_flow`)."""
    o, d = _frame_rays(scene, index)
    step = int(scene.step[index])
    surf = first_surface(scene, step, o, d)
    shape = (scene.base.cameras.height, scene.base.cameras.width)
    linear = _radiance(scene, step, o, d, surf).reshape(*shape, 3)
    return {"linear": linear, "rgb": srgb_encode(linear), "alpha": (surf.owner >= 0).reshape(shape).astype(np.float64),
            "depth": surf.t.astype(np.float32).reshape(shape), "owner": surf.owner.reshape(shape), "surface": surf}


def project(scene: DynamicScene, index: int, vectors: np.ndarray, at_infinity: np.ndarray) -> np.ndarray:
    """(R, 2) continuous pixel coordinates (u, v; pixel centres at +0.5, as in harness.core.data.rays) of world
    points (R, 3) in frame `index`, or of directions where `at_infinity`; NaN behind the camera."""
    cams = scene.base.cameras
    c2w = cams.c2w[index].astype(np.float64)
    rel = np.where(at_infinity[:, None], vectors, vectors - c2w[:, 3])
    x, y, z = np.linalg.solve(c2w[:, :3], rel.T)  # the inverse of rays' camera-to-world, which float32 leaves
    # a little off orthonormal; camera axes: x right, y up, looking down -z
    with np.errstate(divide="ignore", invalid="ignore"):
        u = float(cams.cx[index]) + float(cams.fx[index]) * x / -z
        v = float(cams.cy[index]) - float(cams.fy[index]) * y / -z
    return np.where((z < 0)[:, None], np.stack([u, v], axis=-1), np.nan)


def _rays_through(scene: DynamicScene, index: int, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 rays of frame `index` through continuous pixel coordinates (R, 2)."""
    cams = scene.base.cameras
    c2w = cams.c2w[index].astype(np.float64)
    d_cam = np.stack([(uv[:, 0] - float(cams.cx[index])) / float(cams.fx[index]),
                      -(uv[:, 1] - float(cams.cy[index])) / float(cams.fy[index]), -np.ones(len(uv))], axis=-1)
    d = d_cam @ c2w[:, :3].T
    return np.broadcast_to(c2w[:, 3], d.shape), d / np.linalg.norm(d, axis=-1, keepdims=True)


def frame_flow(scene: DynamicScene, index: int, surface: Surface | None = None) -> np.ndarray | None:
    """(H, W, 2) float32 forward flow of frame `index` to the same camera's frame at the next step (None at the
    last step): the surface point each pixel sees, moved with its object (the slab and the background at
    infinity stay), projected there, minus its projection here. NaN where the moved point is outside that
    image or not what its ray there hits first (occluded, or turned away), to VISIBLE_TOL."""
    step, cams = int(scene.step[index]), scene.base.cameras
    if step + 1 >= scene.n_steps:
        return None
    nxt = scene.frame(step + 1, int(scene.camera[index]))
    o, d = _frame_rays(scene, index)
    surf = first_surface(scene, step, o, d) if surface is None else surface
    background = surf.owner < 0
    points = np.where(background[:, None], d, o + np.where(background, 0.0, surf.t)[:, None] * d)
    moved = points.copy()
    for k, m in enumerate(scene.movers):
        on = surf.owner == k + 1
        moved[on] = m.move(points[on], step, step + 1)
    here, there = project(scene, index, points, background), project(scene, nxt, moved, background)
    inside = np.isfinite(there).all(axis=-1)
    inside &= (there[:, 0] >= 0) & (there[:, 0] < cams.width) & (there[:, 1] >= 0) & (there[:, 1] < cams.height)
    o1, d1 = _rays_through(scene, nxt, there[inside])
    seen = first_surface(scene, step + 1, o1, d1).t
    expected = np.where(background[inside], np.inf, np.linalg.norm(moved[inside] - o1, axis=-1))
    with np.errstate(invalid="ignore"):  # inf - inf where the background stays background
        visible = np.where(np.isinf(expected), np.isinf(seen), np.abs(seen - expected) <= VISIBLE_TOL)
    valid = np.zeros(len(points), dtype=bool)
    valid[np.flatnonzero(inside)[visible]] = True
    flow = np.where(valid[:, None], there - here, np.nan)
    return flow.astype(np.float32).reshape(cams.height, cams.width, 2)


def write_dynamic(scene: DynamicScene, folder: Path, provenance: dict, params: dict) -> None:
    """Render every frame into `folder` (which must exist) as `writer.write_scene` does, plus flow/<name>.npy and
    the per-frame `time`, `time_step`, `camera_id` and `flow_file_path`; transforms.json is written last."""
    for sub in ("images", "depth", "flow"):
        (folder / sub).mkdir()
    for i, name in enumerate(scene.names):
        view = render_frame(scene, i)
        Image.fromarray(encode_view(view, with_alpha=True)).save(folder / "images" / f"{name}.png")
        np.save(folder / "depth" / f"{name}.npy", view["depth"])
        flow = frame_flow(scene, i, view["surface"])
        if flow is not None:
            np.save(folder / "flow" / f"{name}.npy", flow)
    top = transforms(scene.base, provenance)
    top["flow_convention"] = FLOW_CONVENTION
    top["time_steps"] = scene.n_steps
    for i, frame in enumerate(top["frames"]):
        step = int(scene.step[i])
        frame.update(time=step / (scene.n_steps - 1), time_step=step, camera_id=int(scene.camera[i]))
        if step + 1 < scene.n_steps:
            frame["flow_file_path"] = f"flow/{scene.names[i]}.npy"
    (folder / "params.json").write_text(json.dumps({**provenance, "params": params}, indent=2, sort_keys=True) + "\n")
    (folder / "transforms.json").write_text(json.dumps(top, indent=1) + "\n")
