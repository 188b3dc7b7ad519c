"""A tiny in-memory scene for Block-NeRF tests: cameras along x looking at a textured wall (y = 4),
per-image exposure and appearance (a colour tint per appearance_id), exact depth."""

import numpy as np

from harness.core.data.loader_kit import cameras_from_arrays
from harness.core.data.scene import Scene, Split

WALL_Y = 4.0
TINTS = np.array([[1.0, 0.8, 0.6], [0.6, 0.8, 1.0]], dtype=np.float32)
R_LOOK_Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # camera -z -> world +y, up = +z


def texture(x, z):
    return 0.35 + 0.25 * np.stack([np.sin(1.3 * x), np.cos(0.9 * x + 1.1 * z), np.sin(0.7 * z - 0.5 * x)], -1)


def render(c2w, w, h, focal, exposure, tint):
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    d = np.stack([(u - w / 2) / focal, -(v - h / 2) / focal, -np.ones_like(u)], -1) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t = (WALL_Y - c2w[1, 3]) / d[..., 1]
    p = c2w[:3, 3] + t[..., None] * d
    rgb = np.clip(texture(p[..., 0], p[..., 2]) * tint * exposure, 0, 1)
    return rgb.astype(np.float32), t.astype(np.float32)


def toy_scene(n: int = 24, w: int = 16, h: int = 12, length: float = 12.0, test_every: int = 4, seed: int = 0,
              n_appearance: int = 2, exposure_range=(0.5, 2.0)) -> Scene:
    rng = np.random.default_rng(seed)
    xs = np.linspace(0.0, length, n)
    c2w = np.zeros((n, 3, 4))
    c2w[:, :, :3] = R_LOOK_Y
    c2w[:, 0, 3] = xs
    c2w[:, 2, 3] = 0.5 * np.sin(xs)
    exposure = np.exp(rng.uniform(*np.log(exposure_range), n)).astype(np.float32)
    app = (np.arange(n) % n_appearance).astype(np.int64)
    focal = 0.8 * w
    imgs, depth = zip(*[render(c2w[i], w, h, focal, exposure[i], TINTS[app[i]]) for i in range(n)])
    imgs, depth = np.stack(imgs), np.stack(depth)
    test = np.arange(n) % test_every == 0
    splits, depths = {}, {}
    for name, mask in (("train", ~test), ("test", test)):
        idx = np.where(mask)[0]
        cams = cameras_from_arrays(c2w[idx], np.full(len(idx), focal), np.full(len(idx), focal),
                                   np.full(len(idx), w / 2), np.full(len(idx), h / 2), w, h)
        splits[name] = Split(imgs[idx], cams, [f"v{i:03d}" for i in idx], exposure[idx], app[idx])
        depths[name] = depth[idx]
    bbox = np.array([[-2.0, -1.0, -3.0], [length + 2, WALL_Y + 1, 3.0]], dtype=np.float32)
    return Scene("toy_wall", "<memory>", "memory", splits, np.ones(3, np.float32), 0.5, 8.0, bbox,
                 extras={"depth": depths})


def test_toy_scene_is_consistent():
    """The toy's depth is the distance to the wall along each ray, and exposure scales the image."""
    s = toy_scene()
    tr = s.split("train")
    c2w = tr.cameras.c2w[0].astype(np.float64)
    _, depth = render(c2w, 16, 12, 0.8 * 16, 1.0, TINTS[0])
    assert np.allclose(depth, s.extras["depth"]["train"][0])
    assert depth.min() >= WALL_Y - 0.1
    dark, _ = render(c2w, 16, 12, 0.8 * 16, 0.5, TINTS[0])
    bright, _ = render(c2w, 16, 12, 0.8 * 16, 1.0, TINTS[0])
    assert dark.mean() < bright.mean()
