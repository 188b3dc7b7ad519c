"""An exact, vectorised ray caster for analytic shapes: axis-aligned boxes, spheres, the ground plane z = 0.

Each ray gets the nearest hit (distance along the unit direction, primitive index, outward normal);
rays are tested against every primitive at once with numpy broadcasting (rays x primitives), which
is fast for the few dozen primitives the procedural scenes hold. Intersections follow the textbook
slab method for boxes (Kay & Kajiya, SIGGRAPH 1986) and the quadratic for spheres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T_MIN = 1e-6  # hits nearer than this are ignored (shadow rays start on a surface)


@dataclass
class Shapes:
    """Primitives with one material index each. Primitive ids: boxes first, then spheres, then the ground."""

    box_lo: np.ndarray  # (B, 3)
    box_hi: np.ndarray  # (B, 3)
    box_material: np.ndarray  # (B,) int
    sphere_centre: np.ndarray  # (S, 3)
    sphere_radius: np.ndarray  # (S,)
    sphere_material: np.ndarray  # (S,) int
    ground_material: int = -1  # -1: no ground plane

    @property
    def n_boxes(self) -> int:
        return len(self.box_lo)

    @property
    def ground_id(self) -> int:
        return self.n_boxes + len(self.sphere_radius)

    def materials(self) -> np.ndarray:
        """Material index per primitive id (the ground last)."""
        return np.concatenate([self.box_material, self.sphere_material, [self.ground_material]]).astype(np.int64)


def build_shapes(boxes: list[tuple], spheres: list[tuple], ground_material: int = -1) -> Shapes:
    """Shapes from lists of (lo, hi, material) boxes and (centre, radius, material) spheres."""
    lo = np.array([b[0] for b in boxes], dtype=np.float64).reshape(-1, 3)
    hi = np.array([b[1] for b in boxes], dtype=np.float64).reshape(-1, 3)
    return Shapes(lo, hi, np.array([b[2] for b in boxes], dtype=np.int64),
                  np.array([s[0] for s in spheres], dtype=np.float64).reshape(-1, 3),
                  np.array([s[1] for s in spheres], dtype=np.float64),
                  np.array([s[2] for s in spheres], dtype=np.int64), ground_material)


def with_boxes(shapes: Shapes, lo: np.ndarray, hi: np.ndarray, material: np.ndarray) -> Shapes:
    """`shapes` plus boxes (K, 3) appended after its own: existing box ids stay, sphere and ground ids shift by K."""
    return Shapes(np.concatenate([shapes.box_lo, np.asarray(lo, np.float64).reshape(-1, 3)]),
                  np.concatenate([shapes.box_hi, np.asarray(hi, np.float64).reshape(-1, 3)]),
                  np.concatenate([shapes.box_material, np.asarray(material, np.int64).reshape(-1)]),
                  shapes.sphere_centre, shapes.sphere_radius, shapes.sphere_material, shapes.ground_material)


@dataclass
class Hits:
    t: np.ndarray  # (R,) distance along the unit ray, inf where nothing is hit
    prim: np.ndarray  # (R,) primitive id, -1 where nothing is hit
    normal: np.ndarray  # (R, 3) outward unit normal (zeros where nothing is hit)


def _boxes(o, d, shapes: Shapes):
    """(t (R,), index (R,), normal (R, 3)) of the nearest box hit per ray."""
    r = len(o)
    if shapes.n_boxes == 0:
        return np.full(r, np.inf), np.zeros(r, np.int64), np.zeros((r, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0 = (shapes.box_lo[None] - o[:, None]) * inv[:, None]
        t1 = (shapes.box_hi[None] - o[:, None]) * inv[:, None]
    # fmin/fmax skip the NaN of 0 * inf (a ray parallel to a slab, starting on its plane).
    t_lo, t_hi = np.fmin(t0, t1), np.fmax(t0, t1)
    t_near, t_far = t_lo.max(axis=-1), t_hi.min(axis=-1)
    t = np.where((t_near <= t_far) & (t_near > T_MIN), t_near, np.inf)
    idx = np.argmin(t, axis=1)
    rows = np.arange(r)
    axis = np.argmax(t_lo[rows, idx], axis=-1)  # the slab entered last is the face hit
    normal = np.zeros((r, 3))
    normal[rows, axis] = -np.sign(d[rows, axis])
    return t[rows, idx], idx, normal


def _spheres(o, d, shapes: Shapes):
    r = len(o)
    if len(shapes.sphere_radius) == 0:
        return np.full(r, np.inf), np.zeros(r, np.int64)
    oc = o[:, None] - shapes.sphere_centre[None]  # (R, S, 3)
    b = np.einsum("rsk,rk->rs", oc, d)
    c = np.einsum("rsk,rsk->rs", oc, oc) - shapes.sphere_radius[None] ** 2
    disc = b * b - c
    root = np.sqrt(np.maximum(disc, 0.0))
    near, far = -b - root, -b + root
    t = np.where(near > T_MIN, near, np.where(far > T_MIN, far, np.inf))
    t = np.where(disc >= 0, t, np.inf)
    idx = np.argmin(t, axis=1)
    return t[np.arange(r), idx], idx


def cast(origins: np.ndarray, directions: np.ndarray, shapes: Shapes) -> Hits:
    """Nearest hits of rays (R, 3) with unit directions against all shapes."""
    o, d = np.asarray(origins, np.float64), np.asarray(directions, np.float64)
    r = len(o)
    t_box, i_box, n_box = _boxes(o, d, shapes)
    t_sph, i_sph = _spheres(o, d, shapes)
    t_gnd = np.full(r, np.inf)
    if shapes.ground_material >= 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            tg = -o[:, 2] / d[:, 2]
        t_gnd = np.where(np.isfinite(tg) & (tg > T_MIN), tg, np.inf)
    stack = np.stack([t_box, t_sph, t_gnd])
    which = np.argmin(stack, axis=0)
    t = stack[which, np.arange(r)]
    prim = np.select([which == 0, which == 1], [i_box, shapes.n_boxes + i_sph], shapes.ground_id)
    normal = np.where((which == 0)[:, None], n_box, 0.0)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    sph = np.clip(i_sph, 0, max(len(shapes.sphere_radius) - 1, 0))
    if len(shapes.sphere_radius):
        n_sph = (p - shapes.sphere_centre[sph]) / shapes.sphere_radius[sph, None]
        normal = np.where((which == 1)[:, None], n_sph, normal)
    n_gnd = np.zeros((r, 3))
    n_gnd[:, 2] = np.where(o[:, 2] >= 0, 1.0, -1.0)
    normal = np.where((which == 2)[:, None], n_gnd, normal)
    hit = np.isfinite(t)
    return Hits(t, np.where(hit, prim, -1), np.where(hit[:, None], normal, 0.0))


def shadowed(points: np.ndarray, normals: np.ndarray, light_dir: np.ndarray, shapes: Shapes) -> np.ndarray:
    """(R,) bool: whether anything blocks the way from each surface point towards a directional light."""
    start = points + 1e-4 * normals  # off the surface, so a point does not shadow itself
    d = np.broadcast_to(np.asarray(light_dir, np.float64), points.shape)
    return np.isfinite(cast(start, d, shapes).t)


def signed_distance(points: np.ndarray, shapes: Shapes) -> np.ndarray:
    """(R,) signed distance to the union of all solids (negative inside; the ground is solid below z = 0),
    from each primitive's distance function (as in Quilez's catalogue): zero on every visible surface,
    positive in free space, so depths can be checked independently of `cast`."""
    p = np.asarray(points, np.float64)
    dist = [np.full(len(p), np.inf)]
    if shapes.n_boxes:
        centre, half = (shapes.box_lo + shapes.box_hi) / 2, (shapes.box_hi - shapes.box_lo) / 2
        q = np.abs(p[:, None] - centre[None]) - half[None]
        dist.append((np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(axis=-1), 0.0)).min(axis=1))
    if len(shapes.sphere_radius):
        dist.append((np.linalg.norm(p[:, None] - shapes.sphere_centre[None], axis=-1)
                     - shapes.sphere_radius[None]).min(axis=1))
    if shapes.ground_material >= 0:
        dist.append(p[:, 2])
    return np.min(np.stack(dist), axis=0)
