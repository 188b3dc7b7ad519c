"""LLFF loader: `poses_bounds.npy` + `images_N/` (forward-facing captures such as fern).

`poses_bounds.npy` holds one row of 17 numbers per image: a 3x5 matrix flattened row-major
([R | t | hwf], with R's columns the camera's [down, right, back] axes in world space and
hwf = (height, width, focal) of the full-resolution image), then the near and far depth bounds
of that view (LLFF, Mildenhall et al. 2019, `imgs2poses.py`).

Poses are converted to this project's OpenGL axes and then rescaled and recentred the way the
NeRF code prepares LLFF scenes (Mildenhall et al. 2020, `load_llff.py`): scale so that the
smallest near bound becomes 1/bd_factor with bd_factor = 0.75 (the comment there: scene content
then starts just beyond the NDC near plane at 1), and express all poses relative to their average
pose. Test views are every 8th image (`llffhold = 8`, run_nerf.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from harness.core.data.loader_kit import cameras_from_arrays, check_pose, holdout, load_rgb
from harness.core.data.scene import Scene, Split
from harness.core.errors import DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_poses_bounds(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c2w (N, 3, 4) in OpenGL axes, hwf (N, 3), bounds (N, 2)), all float64, checked per row."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npy ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: expected an array of shape (N, 17) (3x5 pose + 2 bounds per image), "
                        f"got shape {arr.shape} ({arr.dtype})")
    arr = arr.astype(np.float64)
    mats = arr[:, :15].reshape(-1, 3, 5)
    down, right, back = mats[:, :, 0], mats[:, :, 1], mats[:, :, 2]
    c2w = np.stack([right, -down, back, mats[:, :, 3]], axis=-1)  # [right, up, back, t]
    for i in range(len(c2w)):
        check_pose(c2w[i], f"{path} row {i}")
    hwf, bounds = mats[:, :, 4], arr[:, 15:17]
    for i in range(len(arr)):
        if not (np.all(np.isfinite(hwf[i])) and np.all(hwf[i] > 0)):
            raise DataError(f"{path} row {i}: height/width/focal must be positive and finite, got {hwf[i].tolist()}")
        if not (np.all(np.isfinite(bounds[i])) and 0 < bounds[i, 0] < bounds[i, 1]):
            raise DataError(f"{path} row {i}: bounds must satisfy 0 < near < far, got {bounds[i].tolist()}")
    return c2w, hwf, bounds


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """A (3, 4) pose at the mean camera centre, looking along the mean back axis, with the mean up
    axis made orthogonal to it (the 'average pose' NeRF's load_llff.py recentres on)."""
    centre = c2w[:, :, 3].mean(axis=0)
    back = c2w[:, :, 2].sum(axis=0)
    back /= np.linalg.norm(back)
    right = np.cross(c2w[:, :, 1].sum(axis=0), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back, centre], axis=-1)


def recentre(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(poses expressed in the frame of their average pose, that frame's (3, 4) world-to-frame map)."""
    avg = average_pose(c2w)
    to_avg = np.concatenate([avg[:, :3].T, -avg[:, :3].T @ avg[:, 3:]], axis=1)  # inverse of a rigid map
    out = np.einsum("ij,njk->nik", to_avg[:, :3], c2w)
    out[:, :, 3] += to_avg[:, 3]
    return out, to_avg


def _image_files(root: Path, factor: int) -> tuple[Path, list[Path], int]:
    """The image folder, its sorted image files, and the factor still to apply in memory
    (when only the full-resolution `images/` exists)."""
    folder = root / (f"images_{factor}" if factor > 1 else "images")
    extra = 1
    if not folder.is_dir() and factor > 1 and (root / "images").is_dir():
        folder, extra = root / "images", factor
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in root.glob("images_*") if p.is_dir())) or "no images_N folder"
        raise DataError(f"{folder}: image folder is missing (downscale {factor} reads images_{factor}/ or "
                        f"downscales images/; found {found}: set load_scene.downscale to match)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return folder, files, extra


def stored_factors(root: Path) -> list[int]:
    """Downscale factors with an image folder of their own (1 for images/), smallest first."""
    found = [1] if (root / "images").is_dir() else []
    found += [int(p.name[7:]) for p in root.glob("images_*") if p.is_dir() and p.name[7:].isdigit()]
    return sorted(found)


def _frustum_bbox(c2w: np.ndarray, fx: float, width: int, height: int, far: float) -> np.ndarray:
    """A (2, 3) box holding every camera's view frustum up to depth `far`."""
    hx, hy = width / (2 * fx), height / (2 * fx)
    corners = np.array([[sx * hx * far, sy * hy * far, -far] for sx in (-1, 1) for sy in (-1, 1)])
    pts = np.einsum("nij,kj->nki", c2w[:, :, :3], corners) + c2w[:, None, :, 3]
    pts = np.concatenate([pts.reshape(-1, 3), c2w[:, :, 3]])
    return np.stack([pts.min(axis=0), pts.max(axis=0)]).astype(np.float32)


def load_llff(root: Path, splits=("train", "test"), downscale_factor: int = 1, background=(1.0, 1.0, 1.0),
              ndc: bool = False, llffhold: int = 8, bd_factor: float = 0.75, recentre_poses: bool = True) -> Scene:
    root = Path(root)
    bounds_path = root / "poses_bounds.npy"
    c2w, hwf, bounds = read_poses_bounds(bounds_path)
    factor = int(downscale_factor)
    folder, files, extra = _image_files(root, factor)
    if len(files) != len(c2w):
        raise DataError(f"{folder}: {len(files)} images, but {bounds_path} has {len(c2w)} poses")
    bg = np.asarray(background, dtype=np.float32)
    images = []
    for path, (h, w, _) in zip(files, hwf):
        expect = (int(round(w)), int(round(h))) if extra > 1 else (int(round(w / factor)), int(round(h / factor)))
        images.append(load_rgb(path, extra, bg, expect, f"{bounds_path} hwf / {factor}"))
        if images[-1].shape != images[0].shape:
            raise DataError(f"{path}: image is {images[-1].shape[1]}x{images[-1].shape[0]}, "
                            f"{files[0].name} is {images[0].shape[1]}x{images[0].shape[0]}")
    height, width = images[0].shape[:2]
    focal = hwf[:, 2] / factor

    scale = 1.0 / (bounds.min() * bd_factor) if bd_factor else 1.0
    c2w[:, :, 3] *= scale
    bounds = bounds * scale
    to_scene = np.eye(3, 4)
    if recentre_poses:
        c2w, to_scene = recentre(c2w)
    # x_scene = world_to_scene @ [x_colmap, 1]: maps the capture's (COLMAP) points into the loaded frame.
    world_to_scene = np.concatenate([to_scene[:, :3] * scale, to_scene[:, 3:]], axis=1)
    extras = {"scale": float(scale), "bounds": bounds.astype(np.float32), "world_to_scene": world_to_scene}
    if ndc:
        # NDC assumes one shared pinhole camera looking down -z (NeRF uses the first view's hwf).
        extras["ndc"] = {"focal": float(focal[0]), "width": int(width), "height": int(height), "near": 1.0}
        near, far = 0.0, 1.0
        bbox = np.array([[-1, -1, -1], [1, 1, 1]], dtype=np.float32)
    else:
        near, far = 0.9 * float(bounds.min()), float(bounds.max())  # NeRF run_nerf.py, llff without NDC
        bbox = _frustum_bbox(c2w, float(focal.min()), width, height, far)

    train, test = holdout(len(files), llffhold)
    index = {"train": train, "test": test, "val": test}
    loaded = {}
    for s in splits:
        if s not in index:
            raise DataError(f"{root}: LLFF scenes have splits train, val (= test), test; '{s}' was asked for")
        idx = index[s]
        if len(idx) == 0:
            raise DataError(f"{root}: split '{s}' is empty ({len(files)} images, llffhold={llffhold})")
        cams = cameras_from_arrays(c2w[idx], focal[idx], focal[idx], np.full(len(idx), width / 2),
                                   np.full(len(idx), height / 2), width, height)
        loaded[s] = Split(np.stack([images[i] for i in idx]).astype(np.float32), cams,
                          [files[i].stem for i in idx])
    log.debug("%s: %d images %dx%d, scale %.4g, ndc=%s", root, len(files), width, height, scale, ndc)
    return Scene(name=root.name, path=str(root), format="llff", splits=loaded, background=bg,
                 near=near, far=far, bbox=bbox, ndc=bool(ndc), extras=extras)
