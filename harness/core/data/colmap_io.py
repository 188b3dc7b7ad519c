"""COLMAP sparse models (`cameras`, `images`) in .bin and .txt: readers and writers.

Written from COLMAP's documented formats (colmap.github.io, "Output Format"): binary files are
little-endian; cameras.bin = uint64 count, then per camera int32 id, int32 model id, uint64 width,
uint64 height, float64 params[count fixed by the model]; images.bin = uint64 count, then per image
int32 id, float64 qw qx qy qz tx ty tz (world-to-camera), int32 camera id, the name NUL-terminated,
uint64 n_points2D, n x (float64 x, float64 y, int64 point3D id). Text files hold the same fields,
one camera per line; two lines per image (the header, then the x y id triples, possibly empty).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.core.errors import DataError

# id -> (name, number of params), from COLMAP's sensor/models.h.
CAMERA_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}
POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, length fixed by the model


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) qw, qx, qy, qz: world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class _Bytes:
    """Sequential little-endian reads with a DataError naming the file on truncation."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DataError(f"{self.path}: truncated (needed {n} bytes at offset {self.pos}, "
                            f"file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def name(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DataError(f"{self.path}: truncated image name at offset {self.pos}")
        raw, self.pos = self.data[self.pos:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{self.path}: image name at offset {self.pos} is not UTF-8") from None


def _model(model, where: str) -> tuple[str, int]:
    if isinstance(model, int) and model in CAMERA_MODELS:
        return CAMERA_MODELS[model]
    if model in MODEL_IDS:
        return model, MODEL_IDS[model][1]
    raise DataError(f"{where}: unknown camera model {model!r:.40}")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    buf, out = _Bytes(path), {}
    (count,) = buf.unpack("Q")
    for k in range(count):
        cam_id, model_id, width, height = buf.unpack("iiQQ")
        name, n = _model(model_id, f"{path} camera {k}")
        out[cam_id] = ColmapCamera(cam_id, name, width, height, np.array(buf.unpack(f"{n}d")))
    return out


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    buf, out = _Bytes(path), {}
    (count,) = buf.unpack("Q")
    for _ in range(count):
        values = buf.unpack("i7di")
        name = buf.name()
        (n,) = buf.unpack("Q")
        pts = np.frombuffer(buf.take(n * POINT2D.itemsize), dtype=POINT2D)
        out[values[0]] = ColmapImage(values[0], np.array(values[1:5]), np.array(values[5:8]), values[8], name,
                                     np.stack([pts["x"], pts["y"]], axis=-1), pts["id"].astype(np.int64))
    return out


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc.__class__.__name__})") from None


def _parse(convert, token: str, where: str):
    try:
        return convert(token)
    except ValueError:
        raise DataError(f"{where}: cannot read {token!r:.40} as {convert.__name__}") from None


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    out = {}
    for lineno, line in enumerate(_text_lines(path), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path} line {lineno}"
        if len(parts) < 4:
            raise DataError(f"{where}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        name, n = _model(parts[1], where)
        params = [_parse(float, p, where) for p in parts[4:]]
        if len(params) != n:
            raise DataError(f"{where}: camera model {name} has {n} params, line has {len(params)}")
        cam_id = _parse(int, parts[0], where)
        out[cam_id] = ColmapCamera(cam_id, name, _parse(int, parts[2], where), _parse(int, parts[3], where),
                                   np.array(params))
    return out


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    lines, out, i = _text_lines(path), {}, 0
    while i < len(lines):
        parts, where = lines[i].split(), f"{path} line {i + 1}"
        i += 1
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 10:
            raise DataError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        nums = [_parse(float, p, where) for p in parts[1:8]]
        pts = lines[i].split() if i < len(lines) else []  # the points line follows, even when empty
        i += 1
        if len(pts) % 3:
            raise DataError(f"{path} line {i}: POINTS2D must be (X, Y, POINT3D_ID) triples")
        xys = np.array([[_parse(float, pts[j], where), _parse(float, pts[j + 1], where)]
                        for j in range(0, len(pts), 3)]).reshape(-1, 2)
        ids = np.array([_parse(int, pts[j + 2], where) for j in range(0, len(pts), 3)], dtype=np.int64)
        img_id = _parse(int, parts[0], where)
        out[img_id] = ColmapImage(img_id, np.array(nums[:4]), np.array(nums[4:]), _parse(int, parts[8], where),
                                  " ".join(parts[9:]), xys, ids)
    return out


def read_model(model_dir: Path) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], str]:
    """(cameras, images, '.bin' or '.txt') of a model folder; binary is preferred when both exist."""
    for ext in (".bin", ".txt"):
        cams, imgs = model_dir / f"cameras{ext}", model_dir / f"images{ext}"
        if cams.is_file() or imgs.is_file():
            for p in (cams, imgs):
                if not p.is_file():
                    raise DataError(f"{p}: file is missing (COLMAP model in {model_dir})")
            if ext == ".bin":
                return read_cameras_binary(cams), read_images_binary(imgs), ext
            return read_cameras_text(cams), read_images_text(imgs), ext
    raise DataError(f"{model_dir}: no COLMAP model (cameras.bin/.txt and images.bin/.txt)")


def _f(x) -> str:
    return repr(float(x))  # shortest text that reads back to the same float64


def write_colmap_model(model_dir: Path, cameras: list[ColmapCamera], images: list[ColmapImage],
                       binary: bool = True) -> Path:
    """Write cameras, images and an empty points3D (so COLMAP tools open the model) in one format."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if binary:
        cam_bytes = [struct.pack("<Q", len(cameras))]
        for c in cameras:
            model_id, n = MODEL_IDS[c.model]
            cam_bytes.append(struct.pack(f"<iiQQ{n}d", c.id, model_id, c.width, c.height, *c.params))
        img_bytes = [struct.pack("<Q", len(images))]
        for im in images:
            pts = np.zeros(len(im.point3d_ids), dtype=POINT2D)
            pts["x"], pts["y"], pts["id"] = im.xys[:, 0], im.xys[:, 1], im.point3d_ids
            img_bytes += [struct.pack("<i7di", im.id, *im.qvec, *im.tvec, im.camera_id),
                          im.name.encode("utf-8") + b"\0", struct.pack("<Q", len(pts)), pts.tobytes()]
        (model_dir / "cameras.bin").write_bytes(b"".join(cam_bytes))
        (model_dir / "images.bin").write_bytes(b"".join(img_bytes))
        (model_dir / "points3D.bin").write_bytes(struct.pack("<Q", 0))
        return model_dir
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cameras)}"]
    cam_lines += [" ".join([str(c.id), c.model, str(c.width), str(c.height), *map(_f, c.params)]) for c in cameras]
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(images)}"]
    for im in images:
        img_lines.append(" ".join([str(im.id), *map(_f, im.qvec), *map(_f, im.tvec), str(im.camera_id), im.name]))
        img_lines.append(" ".join(f"{_f(x)} {_f(y)} {int(p)}" for (x, y), p in zip(im.xys, im.point3d_ids)))
    (model_dir / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    (model_dir / "images.txt").write_text("\n".join(img_lines) + "\n")
    (model_dir / "points3D.txt").write_text("# 3D point list (empty)\n")
    return model_dir
