"""`harness doctor`: data checks on a loaded scene, before anything trains (docs/design.md, "Doctor").

`diagnose(scene, root)` runs every check on a `Scene` and returns `Finding`s: an 'error' stops a
sweep (the pre-flight in harness/run/driver.py), a 'warning' is listed once and kept in the records
of the trials that use the scene. Each finding names the file and the frame at fault.

The loaders already refuse what cannot be read (a NaN or non-rigid pose, a non-positive
camera_angle_x or exposure, a negative appearance id): `try_load` turns that refusal into an
error finding, and the checks here repeat those tests on the Scene itself, for loaders and
in-memory scenes that do not make them. They look at what a loader cannot see frame by frame:
rays, value ranges, duplicates across frames and splits, metadata across splits, the scene box, and
for dynamic scenes (splits with `time_step`) the time steps, the rig and the flow.

Cheap by construction (seconds for 1,000 images; loading costs more): 5 x 5 rays per camera,
reductions over each image, a strided hash per image confirmed by comparing the arrays, and image
files read again only for the few constant images (to tell an all-transparent RGBA).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from harness.core.data.scene import Cameras, Scene, Split
from harness.core.errors import DataError

ROTATION_TOL = 1e-3  # |R^T R - I|, as the loaders' check_pose
UNIT_TOL = 1e-4  # | |d| - 1 | of a float32 ray direction
GRID = 5  # rays per image side for the ray and scene-box checks (corners and centre included)
HASH_SAMPLES = 8192  # values per image hashed to find duplicate candidates (then compared in full)


@dataclass(frozen=True)
class Finding:
    severity: str  # 'error' | 'warning'
    check: str  # which check: load, pose, intrinsics, rays, images, alpha, bounds, duplicates, leak, metadata,
    # time, flow
    where: str  # the file and frame (or the scene) at fault
    message: str

    def text(self) -> str:
        return f"{self.where}: {self.message}"

    def line(self) -> str:
        return f"{self.severity} [{self.check}] {self.text()}"


def summary(findings: list[Finding]) -> str:
    """'N errors, M warnings'."""
    n = sum(f.severity == "error" for f in findings)
    m = len(findings) - n
    return f"{n} error{'s' * (n != 1)}, {m} warning{'s' * (m != 1)}"


def errors_message(findings: list[Finding], limit: int = 5) -> str:
    """The errors, one line each (the first `limit`), for a DataError that stops a sweep."""
    errors = [f for f in findings if f.severity == "error"]
    lines = [f.text() for f in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more (python -m harness doctor lists them all)")
    return "\n".join(lines)


def try_load(load: Callable[[], Scene], target: str) -> tuple[Scene | None, list[Finding]]:
    """(scene, []) or, when the loader refuses the data, (None, [its one-line error as a finding])."""
    try:
        return load(), []
    except DataError as exc:  # Gin appends "In call to configurable ..." lines to a configurable's errors
        text = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        where, sep, message = text.partition(": ")
        return None, [Finding("error", "load", where if sep else target, message if sep else text)]


def describe(scene: Scene) -> str:
    """'blender, train 100, test 200 images, 100x100' (one line about what was checked), then for a dynamic
    scene ', dynamic: 24 time steps, 24 cameras per step, flow yes'."""
    counts = ", ".join(f"{name} {len(split)}" for name, split in scene.splits.items())
    sizes = " / ".join(sorted({f"{s.cameras.width}x{s.cameras.height}" for s in scene.splits.values()}))
    dynamic = dynamic_summary(scene)
    return f"{scene.format}, {counts} images, {sizes}" + (", NDC" if scene.ndc else "") + (
        f", {dynamic}" if dynamic else "")


def diagnose(scene: Scene, root: Path | None = None) -> list[Finding]:
    """Every check on `scene`; `root` is its folder (default: scene.path), read only to name files
    and to look at the alpha of constant images."""
    loc = Locator(scene, Path(root) if root is not None else Path(scene.path))
    found: list[Finding] = []
    for check in CHECKS:
        found += check(scene, loc)
    return found


# ---- where a frame comes from ---------------------------------------------------------------------------

Index = int | np.integer  # a frame's position in its split


class Locator:
    """Names a frame by the metadata file and index it came from, and finds its image file. Built
    from the scene's metadata only when a finding needs it (a clean scene never reads it)."""

    def __init__(self, scene: Scene, root: Path):
        self.scene, self.root = scene, root

    @cached_property
    def _sources(self) -> dict[str, list[Source]]:
        try:
            sources = _frame_sources(self.scene, self.root)
        except (DataError, OSError, ValueError, KeyError, TypeError):  # metadata unreadable: plain names
            sources = {}
        return {s: v for s, v in sources.items() if s in self.scene.splits and len(v) == len(self.scene.splits[s])}

    def frame(self, split: str, i: Index) -> str:
        """'x/transforms_train.json frame 3 (r_3)'."""
        name = self.scene.splits[split].names[i]
        if split in self._sources:
            file, label, _ = self._sources[split][i]
            return f"{file} {label} ({name})"
        return f"{self.scene.path} split '{split}' frame {i} ({name})"

    def image(self, split: str, i: Index) -> Path | None:
        return self._sources[split][i][2] if split in self._sources else None

    def image_frame(self, split: str, i: Index) -> str:
        """The image file, then the frame: 'x/train/r_3.png (x/transforms_train.json frame 3)'."""
        path = self.image(split, i)
        if path is None:
            return self.frame(split, i)
        file, label, _ = self._sources[split][i]
        return f"{path} ({file} {label})"

    def split_file(self, split: str) -> str:
        """The metadata file a split comes from (the scene folder when unknown)."""
        return self._sources[split][0][0] if split in self._sources else self.scene.path


Source = tuple[str, str, Path | None]  # (metadata file, 'frame 3' / 'row 3' in it, image file)


def _with_png(path: Path) -> Path:
    return path.with_suffix(".png") if path.suffix == "" else path  # Blender-style paths leave it out


def _frame_sources(scene: Scene, root: Path) -> dict[str, list[Source]]:
    """{split: [Source]} in each split's order, for the formats whose metadata names frames."""
    out: dict[str, list[Source]] = {}
    if scene.format == "blender":
        for split in scene.splits:
            meta = root / f"transforms_{split}.json"
            frames = json.loads(meta.read_text())["frames"]
            out[split] = [(str(meta), f"frame {i}", _with_png(root / f["file_path"])) for i, f in enumerate(frames)]
    elif scene.format == "nerfstudio":
        from harness.core.data.nerfstudio import frame_groups

        _, _, groups = frame_groups(root)
        for s, frames in groups.items():
            out[s] = [(str(f.meta_path), f"frame {f.index}", _with_png(f.meta_path.parent / f.data["file_path"]))
                      for f in frames]
    elif scene.format == "llff":  # one row of poses_bounds.npy per image, images sorted by name
        rows = {n: i for i, n in enumerate(sorted({n for sp in scene.splits.values() for n in sp.names}))}
        npy = str(root / "poses_bounds.npy")
        for s, sp in scene.splits.items():
            out[s] = [(npy, f"row {rows[n]}", None) for n in sp.names]
    return out


# ---- cameras: poses, intrinsics, rays ------------------------------------------------------------------

def _pose_problems(c2w: np.ndarray) -> list[str | None]:
    """Per camera: why its pose is unusable, or None."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(c2w).all(axis=(1, 2))
        rot = np.where(finite[:, None, None], c2w[:, :, :3], 0).astype(np.float64)
        err = np.abs(np.einsum("nji,njk->nik", rot, rot) - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(rot)
    out: list[str | None] = []
    for ok, e, d in zip(finite, err, det):
        if not ok:
            out.append("camera pose has non-finite values")
        elif e > ROTATION_TOL:
            out.append(f"rotation is not orthonormal (max |R^T R - I| = {e:.3g})")
        elif d < 0:
            out.append(f"rotation has determinant {d:.3g}: a flipped axis (a left-handed camera frame)")
        else:
            out.append(None)
    return out


def _intrinsics_problems(cams: Cameras) -> list[str | None]:
    out: list[str | None] = []
    for fx, fy, cx, cy in zip(cams.fx, cams.fy, cams.cx, cams.cy):
        if not (np.isfinite(fx) and np.isfinite(fy) and fx > 0 and fy > 0):
            out.append(f"focal length must be positive and finite, got fx={fx:.4g}, fy={fy:.4g}")
        elif not (np.isfinite(cx) and np.isfinite(cy) and 0 <= cx <= cams.width and 0 <= cy <= cams.height):
            out.append(f"principal point ({cx:.4g}, {cy:.4g}) is outside the {cams.width}x{cams.height} image")
        else:
            out.append(None)
    return out


def _usable(cams: Cameras) -> np.ndarray:
    """Cameras whose pose and intrinsics pass (the ray and box checks look only at these)."""
    return np.array([p is None and k is None for p, k in zip(_pose_problems(cams.c2w), _intrinsics_problems(cams))],
                    dtype=bool)


def check_poses(scene: Scene, loc: Locator) -> list[Finding]:
    return [Finding("error", "pose", loc.frame(s, i), why)
            for s, sp in scene.splits.items() for i, why in enumerate(_pose_problems(sp.cameras.c2w)) if why]


def check_intrinsics(scene: Scene, loc: Locator) -> list[Finding]:
    return [Finding("error", "intrinsics", loc.frame(s, i), why)
            for s, sp in scene.splits.items() for i, why in enumerate(_intrinsics_problems(sp.cameras)) if why]


def _split_rays(scene: Scene):
    """Per split with usable cameras: (name, split, their indices, sampled origins, directions)."""
    for s, sp in scene.splits.items():
        idx = np.flatnonzero(_usable(sp.cameras))
        if len(idx):
            yield (s, sp, idx, *_sample_rays(sp.cameras, idx))


def _sample_rays(cams: Cameras, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GRID x GRID rays (corners and centre among them) of each camera in `index`: (len, K, 3) each."""
    from harness.core.data.rays import rays_for_pixels

    side_u = np.linspace(0.5, cams.width - 0.5, GRID, dtype=np.float32)
    side_v = np.linspace(0.5, cams.height - 0.5, GRID, dtype=np.float32)
    u, v = (a.reshape(-1) for a in np.meshgrid(side_u, side_v))
    k = len(u)
    with np.errstate(all="ignore"):  # degenerate cameras give NaN rays: that is what is checked
        o, d = rays_for_pixels(cams, np.repeat(index, k), np.tile(u, len(index)), np.tile(v, len(index)))
    return o.numpy().reshape(len(index), k, 3), d.numpy().reshape(len(index), k, 3)


def check_rays(scene: Scene, loc: Locator) -> list[Finding]:
    """Origins and directions finite, directions unit; for NDC scenes, rays that look down -z (the
    NDC map is defined for those only) and finite after the map."""
    found = []
    for s, _, idx, o, d in _split_rays(scene):
        with np.errstate(all="ignore"):
            finite = np.isfinite(o).all(axis=(1, 2)) & np.isfinite(d).all(axis=(1, 2))
            unit = (np.abs(np.linalg.norm(d, axis=-1) - 1) <= UNIT_TOL).all(axis=1)
        for j, i in enumerate(idx):
            if not finite[j]:
                found.append(Finding("error", "rays", loc.frame(s, i), "rays have non-finite origins or directions"))
            elif not unit[j]:
                found.append(Finding("error", "rays", loc.frame(s, i), "ray directions are not unit length"))
            elif scene.ndc:
                why = _ndc_problem(scene, o[j], d[j])
                if why:
                    found.append(Finding("error", "rays", loc.frame(s, i), why))
    return found


def _ndc_problem(scene: Scene, o: np.ndarray, d: np.ndarray) -> str | None:
    from harness.core.data.ndc import ndc_rays

    if not (d[:, 2] < 0).all():
        return "a ray does not look down -z: NDC needs forward-facing cameras"
    ndc = scene.extras.get("ndc") or {}
    if not {"focal", "width", "height"} <= set(ndc):
        return None
    with np.errstate(all="ignore"):
        o2, d2 = ndc_rays(o, d, ndc["focal"], ndc["width"], ndc["height"], ndc.get("near", 1.0))
    return None if np.isfinite(o2).all() and np.isfinite(d2).all() else "rays are not finite after the NDC map"


# ---- the scene's range: near/far and the box -----------------------------------------------------------

def _box_spans(o: np.ndarray, d: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test: where each ray (..., 3) is inside the box, [t0, t1] with t0 >= 0; empty when t0 > t1."""
    inside = (o >= box[0]) & (o <= box[1])
    with np.errstate(all="ignore"):
        ta, tb = (box[0] - o) / d, (box[1] - o) / d
    parallel = d == 0  # inside that slab for every t, or never
    lo = np.where(parallel, np.where(inside, -np.inf, np.inf), np.minimum(ta, tb))
    hi = np.where(parallel, np.where(inside, np.inf, -np.inf), np.maximum(ta, tb))
    return np.maximum(lo.max(axis=-1), 0.0), hi.min(axis=-1)


def _corner_distances(cams: Cameras, idx: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Per camera, the distance to each box corner it images (in front, inside the image), else NaN:
    a small box can fall between the sampled rays."""
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                       dtype=np.float64)
    c2w = cams.c2w[idx].astype(np.float64)
    rel = corners[None] - c2w[:, None, :, 3]  # (n, 8, 3)
    local = np.einsum("nji,nkj->nki", c2w[:, :, :3], rel)  # camera axes: x right, y up, -z forward
    depth = -local[..., 2]
    with np.errstate(all="ignore"):
        u = cams.cx[idx, None] + cams.fx[idx, None] * local[..., 0] / depth
        v = cams.cy[idx, None] - cams.fy[idx, None] * local[..., 1] / depth
    seen = (depth > 0) & (u >= 0) & (u <= cams.width) & (v >= 0) & (v <= cams.height)
    return np.where(seen, np.linalg.norm(rel, axis=-1), np.nan)


def check_bounds(scene: Scene, loc: Locator) -> list[Finding]:
    """0 <= near < far; then (not NDC: its box is the NDC cube) each camera sees the scene box, and
    some of the box lies between near and far along its rays."""
    near, far = float(scene.near), float(scene.far)
    if not (np.isfinite(near) and np.isfinite(far) and 0 <= near < far):
        return [Finding("error", "bounds", scene.path, f"need 0 <= near < far, got near={near:g}, far={far:g}")]
    box = np.asarray(scene.bbox, dtype=np.float64)
    if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[0] < box[1]).all():
        return [Finding("error", "bounds", scene.path, f"scene box must be [[min x, y, z], [max x, y, z]] with "
                                                       f"min < max, got {np.asarray(scene.bbox).tolist()}")]
    if scene.ndc:
        return []
    found = []
    for s, sp, idx, o, d in _split_rays(scene):
        t0, t1 = _box_spans(o.astype(np.float64), d.astype(np.float64), box)  # (n, K) each
        hit = t0 <= t1
        corner = _corner_distances(sp.cameras, idx, box)  # (n, 8), NaN where not imaged
        imaged = np.isfinite(corner)
        seen = hit.any(axis=1) | imaged.any(axis=1)
        with np.errstate(invalid="ignore"):
            in_range = ((hit & (t0 <= far) & (t1 >= near)).any(axis=1)
                        | (imaged & (corner >= near) & (corner <= far)).any(axis=1))
        for j in np.flatnonzero(~seen):
            found.append(Finding("warning", "bounds", loc.frame(s, idx[j]),
                                 f"camera does not see the scene box {box.round(3).tolist()} at all"))
        for j in np.flatnonzero(seen & ~in_range):
            lo = np.nanmin(np.concatenate([t0[j][hit[j]], corner[j]]))
            hi = np.nanmax(np.concatenate([t1[j][hit[j]], corner[j]]))
            found.append(Finding("warning", "bounds", loc.frame(s, idx[j]),
                                 f"the scene box is {lo:.3g}..{hi:.3g} away along this camera's rays, "
                                 f"outside near..far = {near:g}..{far:g}"))
    return found


# ---- images: values, alpha, duplicates, leaks ----------------------------------------------------------

def _all_transparent(path: Path | None) -> bool:
    """Whether an image file has an alpha channel that is 0 everywhere (read only for constant images)."""
    if path is None or not path.is_file():
        return False
    from harness.core.data.images import read_image

    try:
        rgba = read_image(path)
    except DataError:
        return False
    return rgba.shape[-1] == 4 and not rgba[..., 3].any()


def _constant(image: np.ndarray) -> bool:
    """Every pixel the same colour: a strided sample of pixels first (a full pass only when it is)."""
    pixels = image.reshape(-1, image.shape[-1])
    sample = pixels[:: max(1, len(pixels) // 4096)]
    return bool((sample == sample[0]).all() and (pixels == pixels[0]).all())


def check_images(scene: Scene, loc: Locator) -> list[Finding]:
    """Values finite and in [0, 1]; an image of one colour is a warning, or an error when its file is an
    RGBA with alpha 0 everywhere (nothing to learn; usually a broken export)."""
    found = []
    for s, sp in scene.splits.items():
        flat = sp.images.reshape(len(sp), -1)  # contiguous rows: one fast pass each for min and max
        lo, hi = flat.min(axis=1), flat.max(axis=1)  # min/max propagate NaN
        for i in range(len(sp)):
            if not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
                found.append(Finding("error", "images", loc.image_frame(s, i), "image has non-finite values"))
            elif lo[i] < 0 or hi[i] > 1:
                found.append(Finding("error", "images", loc.image_frame(s, i),
                                     f"values outside [0, 1] ({lo[i]:.4g}..{hi[i]:.4g})"))
            elif _constant(sp.images[i]):
                if _all_transparent(loc.image(s, i)):
                    found.append(Finding("error", "alpha", loc.image_frame(s, i),
                                         "image is fully transparent (alpha 0 everywhere)"))
                else:
                    colour = sp.images[i].reshape(-1, sp.images.shape[-1])[0].round(4).tolist()
                    found.append(Finding("warning", "images", loc.image_frame(s, i),
                                         f"image is one constant colour {colour}"))
    return found


def _image_key(image: np.ndarray) -> bytes:
    """A hash of a strided sample of the image's float bytes: equal images have equal keys; equal
    keys are confirmed by comparing the arrays."""
    flat = image.reshape(-1)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // HASH_SAMPLES)])
    return hashlib.blake2b(sample.tobytes(), digest_size=16).digest()


def _identical(split: Split) -> dict[int, int]:
    """{frame: the first earlier frame with identical image content} within a split."""
    first: dict[bytes, list[int]] = {}
    out = {}
    for i, image in enumerate(split.images):
        reps = first.setdefault(_image_key(image), [])
        same = next((r for r in reps if np.array_equal(split.images[r], image)), None)
        if same is None:
            reps.append(i)
        else:
            out[i] = same
    return out


def check_duplicates(scene: Scene, loc: Locator) -> list[Finding]:
    """Identical frames within a split (a warning: the view counts twice); a frame of another split
    identical to a train frame: the same pose too is a test leak (error), another pose a warning."""
    found = []
    for s, sp in scene.splits.items():
        for i, j in _identical(sp).items():
            found.append(Finding("warning", "duplicates", loc.frame(s, i),
                                 f"same image as frame {j} ({sp.names[j]}) of split '{s}'"))
    train = scene.splits.get("train")
    if train is None:
        return found
    keys: dict[bytes, list[int]] = {}
    for j, image in enumerate(train.images):
        keys.setdefault(_image_key(image), []).append(j)
    for s, sp in scene.splits.items():
        if s == "train":
            continue
        for i, image in enumerate(sp.images):
            match = next((k for k in keys.get(_image_key(image), []) if np.array_equal(train.images[k], image)), None)
            if match is None:
                continue
            j = match
            same_pose = np.allclose(sp.cameras.c2w[i], train.cameras.c2w[j], atol=1e-6)
            if same_pose:
                found.append(Finding("error", "leak", loc.frame(s, i),
                                     f"identical to train frame {j} ({train.names[j]}), image and pose: "
                                     f"a {s} view the model trains on"))
            else:
                found.append(Finding("warning", "leak", loc.frame(s, i),
                                     f"same image as train frame {j} ({train.names[j]}) under another pose"))
    return found


# ---- per-frame metadata: exposure, appearance, sequence ------------------------------------------------

META_FIELDS = ("exposure", "appearance_id", "sequence_id", "time_step", "camera_id")


def check_metadata(scene: Scene, loc: Locator) -> list[Finding]:
    """Block-NeRF metadata and a dynamic scene's `time_step` and `camera_id`: present in every split or in
    none, one value per frame, exposure positive and finite, ids and steps non-negative; an appearance id
    no train frame has is a warning (its code is never trained)."""
    found = []
    for field in META_FIELDS:
        have = [s for s, sp in scene.splits.items() if getattr(sp, field) is not None]
        for s, sp in scene.splits.items():
            values = getattr(sp, field)
            if values is None:
                if have:
                    found.append(Finding("error", "metadata", loc.split_file(s),
                                         f"split '{s}' has no '{field}', split(s) {', '.join(have)} have it"))
                continue
            values = np.asarray(values)
            if values.shape != (len(sp),):
                found.append(Finding("error", "metadata", loc.split_file(s),
                                     f"'{field}' has shape {values.shape}, split '{s}' has {len(sp)} frames"))
                continue
            lowest, want = (0, "a positive finite number") if field == "exposure" else (-1, "a non-negative integer")
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(values) | (values <= lowest)
            for i in np.flatnonzero(bad):
                found.append(Finding("error", "metadata", loc.frame(s, i),
                                     f"'{field}' = {values[i].item()!r}: expected {want}"))
    found += _unseen_appearance(scene, loc)
    return found


def _unseen_appearance(scene: Scene, loc: Locator) -> list[Finding]:
    train = scene.splits.get("train")
    if train is None or train.appearance_id is None:
        return []
    known = set(np.asarray(train.appearance_id).tolist())
    found = []
    for s, sp in scene.splits.items():
        if s == "train" or sp.appearance_id is None or np.shape(sp.appearance_id) != (len(sp),):
            continue
        for a in sorted({a for a in np.asarray(sp.appearance_id).tolist() if a >= 0} - known):  # < 0: an error
            i = int(np.flatnonzero(np.asarray(sp.appearance_id) == a)[0])
            found.append(Finding("warning", "metadata", loc.frame(s, i),
                                 f"appearance id {a} is in no train frame (its appearance code is never trained)"))
    return found


# ---- dynamic scenes: time steps, the rig, flow ----------------------------------------------------------

def _per_frame_ints(split: Split, field: str) -> np.ndarray | None:
    """`field` of `split` as int64 when it is one non-negative integer per frame, else None (a missing or
    malformed field: check_metadata reports the latter)."""
    values = getattr(split, field)
    if values is None or np.shape(values) != (len(split),):
        return None
    values = np.asarray(values)
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(values).all() and (values >= 0).all() and (values == np.round(values)).all()):
            return None
    return values.astype(np.int64)


def _time_steps(scene: Scene) -> dict[str, np.ndarray]:
    """{split: time_step} of the splits with a usable `time_step` (none for a static scene)."""
    steps = {s: _per_frame_ints(sp, "time_step") for s, sp in scene.splits.items()}
    return {s: v for s, v in steps.items() if v is not None}


def _n_steps(steps: dict[str, np.ndarray]) -> int:
    """T: the steps are 0..T-1 (the loaders refuse a gap; one here is a step that nothing has)."""
    return 1 + max((int(v.max()) for v in steps.values() if len(v)), default=-1)


def _has_flow(scene: Scene) -> bool:
    return bool(scene.extras.get("flow"))


def _spans(values: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out: list[str] = []
    for v in values:
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def dynamic_summary(scene: Scene) -> str:
    """'dynamic: 24 time steps, 24 cameras per step, flow yes' ('2-3 cameras per step' when the count varies;
    cameras are distinct `camera_id`s, or frames without them), or '' for a static scene."""
    steps = _time_steps(scene)
    if not steps:
        return ""
    n_steps = _n_steps(steps)
    per_step: list[set] = [set() for _ in range(n_steps)]
    for s, t in steps.items():
        cams = _per_frame_ints(scene.splits[s], "camera_id")
        for i, step in enumerate(t):
            per_step[step].add(int(cams[i]) if cams is not None else (s, i))
    counts = [len(c) for c in per_step]
    lo, hi = min(counts, default=0), max(counts, default=0)
    return (f"dynamic: {n_steps} time step{'s' * (n_steps != 1)}, {lo if lo == hi else f'{lo}-{hi}'} "
            f"camera{'s' * (hi != 1)} per step, flow {'yes' if _has_flow(scene) else 'no'}")


def check_time_steps(scene: Scene, loc: Locator) -> list[Finding]:
    """Dynamic scenes: every step 0..T-1 has a train frame (error: nothing fits the scene at that time; the
    nerfstudio loader refuses it too); every `camera_id` of another split (test, val) has a frame at every
    step (warning: flicker compares consecutive steps of one camera, so it is not measured across the gap)."""
    steps = _time_steps(scene)
    if not steps:
        return []
    n_steps = _n_steps(steps)
    found = []
    if "train" in steps:
        for t in sorted(set(range(n_steps)) - set(steps["train"].tolist())):
            other = next(((s, int(np.flatnonzero(v == t)[0])) for s, v in steps.items() if (v == t).any()), None)
            where = loc.frame(*other) if other else loc.split_file("train")
            found.append(Finding("error", "time", where, f"time_step {t} has no training view (every step needs "
                                                         f"one: nothing fits the scene at that time)"))
    for s, split_steps in steps.items():
        cams = _per_frame_ints(scene.splits[s], "camera_id")
        if s == "train" or cams is None:
            continue
        for c in np.unique(cams):
            missing = sorted(set(range(n_steps)) - set(split_steps[cams == c].tolist()))
            if missing:
                found.append(Finding("warning", "time", loc.frame(s, int(np.flatnonzero(cams == c)[0])),
                                     f"{s} camera_id {c} has no frame at time_step {_spans(missing)} (of "
                                     f"0..{n_steps - 1}): its flicker cannot be measured across "
                                     f"{'that step' if len(missing) == 1 else 'those steps'}"))
    return found


def check_flow(scene: Scene, loc: Locator) -> list[Finding]:
    """Dynamic scenes with flow (scene.extras['flow'] for some split): every split has it (warning), as an
    (N, H, W, 2) array (error), and every frame but those of the last step has a flow with a finite pixel
    (warning: no `flow_file_path`, or NaN everywhere; its step's flicker and flow terms skip the frame)."""
    steps = _time_steps(scene)
    if not steps or not _has_flow(scene):
        return []
    flows = scene.extras["flow"]
    last = _n_steps(steps) - 1
    found = []
    for s, t in steps.items():
        sp = scene.splits[s]
        flow = flows.get(s)
        if flow is None:
            have = ", ".join(k for k in flows if k in scene.splits)
            found.append(Finding("warning", "flow", loc.split_file(s),
                                 f"split '{s}' has no flow, split(s) {have} have it"))
            continue
        want = (len(sp), sp.cameras.height, sp.cameras.width, 2)
        if np.shape(flow) != want:
            found.append(Finding("error", "flow", loc.split_file(s),
                                 f"flow of split '{s}' has shape {np.shape(flow)}, expected (N, H, W, 2) = {want}"))
            continue
        for i in np.flatnonzero(t < last):
            if not np.isfinite(flow[i]).all(axis=-1).any():
                found.append(Finding("warning", "flow", loc.frame(s, i),
                                     f"no flow to time_step {t[i] + 1} (no flow file, or NaN everywhere) though "
                                     f"the scene has flow: flicker and flow terms skip this frame"))
    return found


CHECKS: tuple[Callable[[Scene, Locator], list[Finding]], ...] = (
    check_poses, check_intrinsics, check_rays, check_bounds, check_images, check_duplicates, check_metadata,
    check_time_steps, check_flow)
