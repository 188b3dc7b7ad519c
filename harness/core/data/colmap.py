"""COLMAP loader: a sparse model (`cameras`, `images` in .bin or .txt) plus its image folder.

COLMAP stores world-to-camera poses (quaternion qw qx qy qz and translation t: x_cam = R x_world + t)
in a camera frame with x right, y down, z forward; this loader turns them into the project's
camera-to-world OpenGL frame (x right, y up, z back): c2w = [R^T | -R^T t] with its y and z columns
negated. COLMAP's pixel coordinates put the centre of the top-left pixel at (0.5, 0.5), the same
convention as harness.core.data.rays, so cx, cy are used unchanged. Images are ordered by name and every
`llffhold`-th one is the test split, as for LLFF.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from harness.core.data.colmap_io import ColmapCamera, ColmapImage, read_model, write_colmap_model  # noqa: F401
from harness.core.data.loader_kit import (
    bbox_from_cameras,
    cameras_from_arrays,
    check_pose,
    far_from_bbox,
    holdout,
    load_rgb,
)
from harness.core.data.scene import Cameras, Scene, Split
from harness.core.errors import DataError

log = logging.getLogger(__name__)
GL_FROM_CV = np.diag([1.0, -1.0, -1.0])  # flips camera y (down -> up) and z (forward -> back)


def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a Hamilton quaternion (w, x, y, z), COLMAP's convention; not normalised, so a
    non-unit quaternion gives a non-rigid matrix that check_pose reports."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rot_to_quat(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, of a rotation matrix; branch on the largest of the four
    |components| for numerical stability (Shepperd, J. Guidance and Control 1978)."""
    t = np.trace(r)
    k = int(np.argmax([t, r[0, 0], r[1, 1], r[2, 2]]))
    if k == 0:
        s = 2 * np.sqrt(1 + t)
        q: list | np.ndarray = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i, j, m = k - 1, k % 3, (k + 1) % 3
        s = 2 * np.sqrt(1 + r[i, i] - r[j, j] - r[m, m])
        q = np.empty(4)
        q[0] = (r[m, j] - r[j, m]) / s
        q[1 + i], q[1 + j], q[1 + m] = s / 4, (r[j, i] + r[i, j]) / s, (r[m, i] + r[i, m]) / s
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q) * (1 if q[0] >= 0 else -1)


def c2w_from_colmap(image: ColmapImage) -> np.ndarray:
    """(3, 4) OpenGL camera-to-world of a COLMAP image (unchecked)."""
    rot = quat_to_rot(image.qvec)
    c2w = np.empty((3, 4))
    c2w[:, :3] = rot.T @ GL_FROM_CV
    c2w[:, 3] = -rot.T @ image.tvec
    return c2w


def pinhole(camera: ColmapCamera, where: str) -> tuple[list[float], np.ndarray]:
    """([fx, fy, cx, cy], distortion (k1, k2, k3, k4, p1, p2)) of the models this loader supports."""
    p, d = camera.params, np.zeros(6)
    if camera.model == "SIMPLE_PINHOLE":
        k = [p[0], p[0], p[1], p[2]]
    elif camera.model == "PINHOLE":
        k = list(p[:4])
    elif camera.model in ("SIMPLE_RADIAL", "RADIAL"):
        k, d[: len(p) - 3] = [p[0], p[0], p[1], p[2]], p[3:]
    elif camera.model == "OPENCV":
        k, d[[0, 1, 4, 5]] = list(p[:4]), p[4:8]
    else:
        raise DataError(f"{where}: camera model {camera.model} is not supported "
                        f"(SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV)")
    return [float(x) for x in k], d


def colmap_from_cameras(cameras: Cameras, names: list[str]) -> tuple[list[ColmapCamera], list[ColmapImage]]:
    """A COLMAP model (PINHOLE cameras, one per distinct intrinsics) of project cameras; image ids from 1."""
    cams: dict[tuple, ColmapCamera] = {}
    images = []
    for i, name in enumerate(names):
        key = (float(cameras.fx[i]), float(cameras.fy[i]), float(cameras.cx[i]), float(cameras.cy[i]))
        if key not in cams:
            cams[key] = ColmapCamera(len(cams) + 1, "PINHOLE", cameras.width, cameras.height, np.array(key))
        c2w = cameras.c2w[i].astype(np.float64)
        rot = (c2w[:, :3] @ GL_FROM_CV).T  # world-to-camera rotation in COLMAP axes
        images.append(ColmapImage(i + 1, rot_to_quat(rot), -rot @ c2w[:, 3], cams[key].id, name))
    return list(cams.values()), images


def find_model_dir(root: Path) -> Path:
    for d in (root / "sparse" / "0", root / "sparse", root):
        if any((d / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return d
    raise DataError(f"{root}: no COLMAP model found (looked in sparse/0, sparse and the folder itself)")


def _image_dir(root: Path, images_dir: str | None, factor: int) -> tuple[Path, int]:
    """The image folder and the factor still to apply in memory."""
    if images_dir is not None:
        return root / images_dir, factor
    if factor > 1 and (root / f"images_{factor}").is_dir():
        return root / f"images_{factor}", 1
    return root / "images", factor


def load_colmap(root: Path, splits=("train", "test"), downscale_factor: int = 1, background=(1.0, 1.0, 1.0),
                model_dir: str | None = None, images_dir: str | None = None, llffhold: int = 8,
                near: float = 0.05, far: float | None = None) -> Scene:
    root = Path(root)
    mdir = root / model_dir if model_dir else find_model_dir(root)
    cameras, images, ext = read_model(mdir)
    if not images:
        raise DataError(f"{mdir / ('images' + ext)}: the model has no images")
    factor = int(downscale_factor)
    folder, extra = _image_dir(root, images_dir, factor)
    bg = np.asarray(background, dtype=np.float32)
    ordered = sorted(images.values(), key=lambda im: im.name)
    train, test = holdout(len(ordered), llffhold)
    index = {"train": train, "test": test, "val": test}
    loaded, distortion = {}, {}
    for s in splits:
        if s not in index or len(index[s]) == 0:
            raise DataError(f"{mdir}: split '{s}' is empty ({len(ordered)} images, llffhold={llffhold})")
        rows, dists = [], []
        pics: list[np.ndarray] = []
        for im in (ordered[i] for i in index[s]):
            where = f"{mdir / ('images' + ext)} image {im.id} ({im.name})"
            if im.camera_id not in cameras:
                raise DataError(f"{where}: camera {im.camera_id} is not in cameras{ext}")
            cam = cameras[im.camera_id]
            k, d = pinhole(cam, f"{mdir / ('cameras' + ext)} camera {cam.id}")
            scale = factor if extra == 1 else 1
            expect = (round(cam.width / scale), round(cam.height / scale))
            pic = load_rgb(folder / im.name, extra, bg, expect, f"{mdir / ('cameras' + ext)} camera {cam.id} / {scale}")
            if pics and pic.shape != pics[0].shape:
                raise DataError(f"{folder / im.name}: image is {pic.shape[1]}x{pic.shape[0]}, others in split "
                                f"'{s}' are {pics[0].shape[1]}x{pics[0].shape[0]}")
            pics.append(pic)
            rows.append((check_pose(c2w_from_colmap(im), where), np.array(k) / factor))
            dists.append(d)
        fx, fy, cx, cy = np.array([r[1] for r in rows]).T
        cams = cameras_from_arrays(np.stack([r[0] for r in rows]), fx, fy, cx, cy, pics[0].shape[1], pics[0].shape[0])
        names = [(Path(ordered[i].name).parent / Path(ordered[i].name).stem).as_posix().replace("/", "_")
                 for i in index[s]]
        loaded[s] = Split(np.stack(pics).astype(np.float32), cams, names)
        distortion[s] = np.stack(dists).astype(np.float32)
        if np.any(distortion[s] != 0):
            log.warning("%s: split '%s' has non-zero lens distortion; rays here are pinhole, so undistort the "
                        "images first (COLMAP image_undistorter)", mdir, s)
    c2w = np.concatenate([sp.cameras.c2w for sp in loaded.values()])
    bbox = bbox_from_cameras(c2w)
    far = float(far) if far is not None else far_from_bbox(c2w, bbox)
    return Scene(name=root.name, path=str(root), format="colmap", splits=loaded, background=bg, near=float(near),
                 far=far, bbox=bbox, extras={"distortion": distortion, "model": str(mdir)})
