"""Procedural textures, Lambertian shading under one directional light plus ambient, sky, sRGB encoding.

Radiance at a surface point is albedo * (ambient + light_colour * max(0, n.l) * visible), all in
linear RGB; cameras multiply it by their exposure and encode the clipped result with the sRGB curve
(IEC 61966-2-1). Textures are pure functions of the hit point, so renders are exact and repeatable.
"""

from __future__ import annotations

import numpy as np

from harness.core.data.procedural.raycast import Hits, Shapes, shadowed


def hash01(*ints: np.ndarray) -> np.ndarray:
    """A repeatable pseudo-random value in [0, 1) per integer tuple (integer arithmetic only, so it is
    identical on every platform)."""
    h = np.zeros(np.broadcast(*ints).shape, dtype=np.uint64)
    for k, v in zip((0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F), ints):
        h = (h ^ (np.asarray(v).astype(np.int64).astype(np.uint64) * np.uint64(k))) * np.uint64(0x165667B1)
        h ^= h >> np.uint64(15)
    return (h % np.uint64(4096)).astype(np.float64) / 4096.0


def _in_plane(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two coordinates along a surface: drop the axis the normal points along most."""
    axis = np.argmax(np.abs(n), axis=-1)
    u = np.where(axis == 0, p[:, 1], p[:, 0])
    v = np.where(axis == 2, p[:, 1], p[:, 2])
    return u, v


def _solid(m: dict, p, n):
    return np.broadcast_to(np.asarray(m["colour"], np.float64), p.shape)


def _checker(m: dict, p, n):
    u, v = _in_plane(p, n)
    odd = (np.floor(u / m["size"]) + np.floor(v / m["size"])) % 2 == 1
    return np.where(odd[:, None], np.asarray(m["colours"][1]), np.asarray(m["colours"][0]))


def _facade(m: dict, p, n):
    """Walls with a grid of windows (one per bay and floor), a shop-window band on the ground floor,
    a darker band between floors, and a flat roof."""
    horizontal = np.abs(n[:, 2]) < 0.5
    u = np.where(np.abs(n[:, 1]) >= np.abs(n[:, 0]), p[:, 0], p[:, 1])
    z = p[:, 2]
    bay, floor = np.floor(u / m["bay"]), np.floor(z / m["floor_height"])
    fu, fz = u / m["bay"] - bay, z / m["floor_height"] - floor
    window = (np.abs(fu - 0.5) < 0.28) & (fz > 0.3) & (fz < 0.82) & (floor >= 1)
    shop = (floor == 0) & (np.abs(fu - 0.5) < 0.42) & (fz > 0.15) & (fz < 0.75)
    wall = np.asarray(m["wall"], np.float64)
    colour = np.where((fz < 0.06)[:, None], wall * 0.7, wall)
    glass = np.asarray(m["window"], np.float64) * (0.6 + 0.8 * hash01(bay, floor, m["seed"]))[:, None]
    colour = np.where((window | shop)[:, None], glass, colour)
    return np.where(horizontal[:, None], colour, np.asarray(m["roof"], np.float64))


def _street(m: dict, p, n):
    """Ground: asphalt road along x with a dashed centre line and edge lines, sidewalks with tiles,
    cross streets with zebra crossings, grass beyond the buildings."""
    x, y = p[:, 0], np.abs(p[:, 1])
    road, side = m["road_half_width"], m["road_half_width"] + m["sidewalk_width"]
    colour = np.broadcast_to(np.asarray(m["grass"], np.float64), p.shape).copy()
    tiles = (np.mod(x, 1.5) < 0.06) | (np.mod(y, 1.5) < 0.06)
    colour[y < side] = np.where(tiles[y < side, None], np.asarray(m["sidewalk"]) * 0.8, np.asarray(m["sidewalk"]))
    asphalt = y < road
    for x0, x1 in m["crossings"]:
        asphalt |= (x >= x0) & (x <= x1)
    colour[asphalt] = m["asphalt"]
    paint = asphalt & (y < road) & (
        ((y < 0.12) & (np.mod(x, 6.0) < 3.0)) | (np.abs(y - (road - 0.3)) < 0.1))
    for x0, x1 in m["crossings"]:
        band = ((x > x0 - 3.5) & (x < x0 - 0.5)) | ((x > x1 + 0.5) & (x < x1 + 3.5))
        paint |= band & (y < road) & (np.mod(p[:, 1], 1.2) < 0.6)
        paint &= ~((x >= x0) & (x <= x1) & (y < road) & (y < 0.12))  # no centre line across the junction
    colour[paint] = m["paint"]
    return colour


TEXTURES = {"solid": _solid, "checker": _checker, "facade": _facade, "street": _street}


def albedo(materials: list[dict], material_index: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    out = np.zeros(points.shape)
    for m in np.unique(material_index[material_index >= 0]):
        mask = material_index == m
        out[mask] = TEXTURES[materials[m]["type"]](materials[m], points[mask], normals[mask])
    return out


def light_direction(condition: dict) -> np.ndarray:
    """Unit vector towards the light from its azimuth (from +x towards +y) and elevation, z up."""
    az, el = np.radians(condition["light_azimuth_deg"]), np.radians(condition["light_elevation_deg"])
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def sky(directions: np.ndarray, condition: dict) -> np.ndarray:
    """A vertical gradient from the horizon colour to the zenith colour."""
    w = np.sqrt(np.clip(directions[:, 2], 0.0, 1.0))[:, None]
    return (1 - w) * np.asarray(condition["sky_horizon"]) + w * np.asarray(condition["sky_zenith"])


def radiance(origins, directions, hits: Hits, shapes: Shapes, materials: list[dict], condition: dict,
             shadows: bool, with_sky: bool) -> np.ndarray:
    """(R, 3) linear radiance towards the camera: shaded surfaces, sky (or 0) where nothing is hit."""
    hit = hits.prim >= 0
    points = origins + np.where(hit, hits.t, 0.0)[:, None] * directions
    mat = np.where(hit, shapes.materials()[np.maximum(hits.prim, 0)], -1)
    light = light_direction(condition)
    lit = np.maximum(hits.normal @ light, 0.0)
    if shadows and hit.any():
        blocked = np.zeros(len(hit), dtype=bool)
        facing = hit & (lit > 0)
        blocked[facing] = shadowed(points[facing], hits.normal[facing], light, shapes)
        lit = np.where(blocked, 0.0, lit)
    shade = np.asarray(condition["ambient"]) + np.asarray(condition["light_colour"]) * lit[:, None]
    out = albedo(materials, mat, points, hits.normal) * shade
    background = sky(directions, condition) if with_sky else np.zeros_like(out)
    return np.where(hit[:, None], out, background)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 transfer function of values in [0, 1]."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    x = np.asarray(encoded, np.float64)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))
