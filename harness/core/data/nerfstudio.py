"""nerfstudio `transforms.json` loader (also the format of the project's procedural scenes).

Intrinsics `fl_x, fl_y, cx, cy, w, h` and distortion `k1..k4, p1, p2` may be given at the top level
or per frame (a frame's value wins). Each frame has `file_path` (relative to the JSON file) and a
4x4 camera-to-world `transform_matrix` in OpenGL axes; Block-NeRF scenes add `exposure` (positive
float), `appearance_id` (int), `sequence_id` (int: the drive or capture sequence), a top-level `blocks`
list and, for procedural scenes, per-frame `depth_file_path` (.npy, float32 distance along the unit ray,
times `depth_unit_scale_factor`).
A frame's optional `mask_path` (relative to the JSON file) is nerfstudio's mask: a single-channel 8-bit
PNG, 0 = ignore the pixel; frames of a split without one count every pixel (docs/data.md "Masks").
Dynamic scenes add per-frame `time` (in [0, 1]), `time_step`, `camera_id` and `flow_file_path`
(docs/data.md "Dynamic scenes"), checked over every split before any image is read.

Splits, first rule that applies: a per-frame `split` field (frames without one are 'train');
nerfstudio's top-level `train_filenames` / `val_filenames` / `test_filenames`; files
`transforms_{train,val,test}.json` (with a `transforms.json` standing for train when there is no
`transforms_train.json`); otherwise every `llffhold`-th frame is held out as 'test'.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from harness.core.data.loader_kit import (
    as_dict,
    as_float,
    as_int,
    as_list,
    as_matrix,
    as_str,
    bbox_from_cameras,
    cameras_from_arrays,
    check_pose,
    far_from_bbox,
    frame_mask,
    holdout,
    load_rgb,
    read_json,
    read_npy,
    require,
    stack_masks,
)
from harness.core.data.scene import Scene, Split
from harness.core.errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
TIME_KEYS = ("time", "time_step", "camera_id", "flow_file_path")  # any of them makes a scene dynamic


class Frame:
    """One frame with the file it came from and that file's top level (for inherited intrinsics)."""

    def __init__(self, meta_path: Path, top: dict, index: int, data):
        self.meta_path, self.top, self.index = meta_path, top, index
        self.where = f"{meta_path} frame {index}"
        self.data = as_dict(data, self.where)
        self.time: float | None = None  # set by read_times for dynamic scenes
        self.step: int | None = None
        self.camera: int | None = None

    def get(self, key: str, default=None):
        return self.data.get(key, self.top.get(key, default))


def _frames(meta_path: Path) -> tuple[dict, list[Frame]]:
    top = as_dict(read_json(meta_path), str(meta_path))
    frames = as_list(require(top, "frames", str(meta_path)), f"{meta_path} 'frames'")
    return top, [Frame(meta_path, top, i, f) for i, f in enumerate(frames)]


def _by_filenames(top: dict, frames: list[Frame], meta_path: Path) -> dict[str, list[Frame]]:
    groups = {}
    for s in SPLITS:
        names = as_list(top.get(f"{s}_filenames", []), f"{meta_path} '{s}_filenames'")
        wanted = {Path(as_str(n, f"{meta_path} '{s}_filenames'")).as_posix() for n in names}
        groups[s] = [f for f in frames if Path(as_str(require(f.data, "file_path", f.where),
                                                      f"{f.where} 'file_path'")).as_posix() in wanted]
    return groups


def frame_groups(root: Path, llffhold: int = 8) -> tuple[Path, dict, dict[str, list[Frame]]]:
    """(main metadata file, its top level, frames per split) following the rules in the module doc."""
    folder = root if root.is_dir() else root.parent
    main = root if root.is_file() else folder / "transforms.json"
    split_files = {s: folder / f"transforms_{s}.json" for s in SPLITS if (folder / f"transforms_{s}.json").is_file()}
    if not main.is_file() and not split_files:
        raise DataError(f"{root}: no transforms.json (nor transforms_{{train,val,test}}.json) found")
    groups: dict[str, list[Frame]] = {}
    if main.is_file():
        top, frames = _frames(main)
        if any("split" in f.data for f in frames):
            for f in frames:
                groups.setdefault(as_str(f.data.get("split", "train"), f"{f.where} 'split'"), []).append(f)
            return main, top, groups
        if any(f"{s}_filenames" in top for s in SPLITS):
            return main, top, _by_filenames(top, frames, main)
        if not split_files:
            train, test = holdout(len(frames), llffhold)
            return main, top, {"train": [frames[i] for i in train], "test": [frames[i] for i in test]}
        groups["train"] = frames
    for s, path in split_files.items():
        top_s, groups[s] = _frames(path)
        if not main.is_file():
            main, top = path, top_s
    return main, top, groups


def _intrinsics(frame: Frame, image_wh: tuple[int, int]) -> tuple[list[float], np.ndarray]:
    """([fx, fy, cx, cy] at full resolution, distortion (6,)) of a frame."""
    where = frame.where
    model = frame.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        raise DataError(f"{where}: camera_model {model!r:.40} is not supported "
                        f"(supported: {', '.join(PINHOLE_MODELS)})")
    fx = frame.get("fl_x")
    if fx is None:
        angle = frame.get("camera_angle_x")
        if angle is None:
            raise DataError(f"{where}: missing required key 'fl_x' (or 'camera_angle_x')")
        fx = 0.5 * image_wh[0] / np.tan(0.5 * as_float(angle, f"{where} 'camera_angle_x'", positive=True))
    fx = as_float(fx, f"{where} 'fl_x'", positive=True)
    fy = as_float(frame.get("fl_y", fx), f"{where} 'fl_y'", positive=True)
    cx = as_float(frame.get("cx", image_wh[0] / 2), f"{where} 'cx'")
    cy = as_float(frame.get("cy", image_wh[1] / 2), f"{where} 'cy'")
    dist = np.array([as_float(frame.get(k, 0.0), f"{where} '{k}'") for k in DISTORTION_KEYS])
    return [fx, fy, cx, cy], dist


def _size(frame: Frame) -> tuple[int, int] | None:
    w, h = frame.get("w"), frame.get("h")
    if w is None and h is None:
        return None
    return (as_int(w, f"{frame.where} 'w'", minimum=1), as_int(h, f"{frame.where} 'h'", minimum=1))


def _optional_column(frames: list[Frame], key: str, parse, split: str):
    """A per-frame optional field as a list, or None when no frame has it; all-or-none within a split."""
    present = [key in f.data for f in frames]
    if not any(present):
        return None
    if not all(present):
        missing = frames[present.index(False)]
        raise DataError(f"{missing.where}: missing '{key}' (other frames of split '{split}' have it)")
    return [parse(f.data[key], f"{f.where} '{key}'") for f in frames]


def _frame_column(frames: list[Frame], key: str, parse) -> list | None:
    """A per-frame field over frames of every split, or None when no frame has it; all or none."""
    present = [key in f.data for f in frames]
    if not any(present):
        return None
    if not all(present):
        missing = frames[present.index(False)]
        raise DataError(f"{missing.where}: missing '{key}' (other frames have it)")
    return [parse(f.data[key], f"{f.where} '{key}'") for f in frames]


def _unit_time(value, where: str) -> float:
    t = as_float(value, where)
    if not 0.0 <= t <= 1.0:
        raise DataError(f"{where}: expected a time in [0, 1], got {value!r:.40}")
    return t


def read_times(groups: dict[str, list[Frame]]) -> None:
    """Set each frame's `time`, `step` and `camera` from its `time`, `time_step` and `camera_id`, checked over
    the frames of every split: without `time_step`, steps number the distinct times in order. Nothing
    happens for a scene whose frames have none of TIME_KEYS."""
    frames = list({id(f): f for fs in groups.values() for f in fs}.values())  # a frame may be in two splits
    stated = next((f for f in frames if any(k in f.data for k in TIME_KEYS)), None)
    if stated is None:
        return
    times = _frame_column(frames, "time", _unit_time)
    if times is None:
        key = next(k for k in TIME_KEYS if k in stated.data)
        raise DataError(f"{stated.where}: has '{key}' but no frame has 'time'")
    steps = _frame_column(frames, "time_step", lambda v, at: as_int(v, at, minimum=0))
    if steps is None:
        rank = {t: i for i, t in enumerate(sorted(set(times)))}
        steps = [rank[t] for t in times]
    cameras = _frame_column(frames, "camera_id", lambda v, at: as_int(v, at, minimum=0)) or [None] * len(frames)
    _check_steps(frames, times, steps)
    for f, t, step, cam in zip(frames, times, steps, cameras):
        f.time, f.step, f.camera = t, step, cam
    _check_rig(frames)
    trained = {f.step for f in groups.get("train", [])}
    for f in frames:
        if f.step not in trained:
            raise DataError(f"{f.where}: time_step {f.step} has no training view (every step needs one)")


def _check_steps(frames: list[Frame], times: list[float], steps: list[int]) -> None:
    """One time per step, one step per time, steps 0..T-1 without a gap, in the order of their times."""
    by_step: dict[int, tuple[float, Frame]] = {}
    by_time: dict[float, tuple[int, Frame]] = {}
    for f, t, step in zip(frames, times, steps):
        t0, first = by_step.setdefault(step, (t, f))
        if t0 != t:
            raise DataError(f"{f.where}: time_step {step} has time {t!r}, but {first.where} has time {t0!r} at that "
                            f"step (one time per step)")
        step0, first = by_time.setdefault(t, (step, f))
        if step0 != step:
            raise DataError(f"{f.where}: time {t!r} is at time_step {step}, but at time_step {step0} in {first.where} "
                            f"(one step per time)")
    order = sorted(by_step)
    for want, step in enumerate(order):
        if step != want:
            raise DataError(f"{by_step[step][1].where}: time_step {step}, but no frame has time_step {want} (steps "
                            f"must be 0..T-1 without gaps)")
    for a, b in zip(order, order[1:]):
        if by_step[b][0] <= by_step[a][0]:
            raise DataError(f"{by_step[b][1].where}: time_step {b} has time {by_step[b][0]!r}, not later than "
                            f"time_step {a}'s {by_step[a][0]!r}")


def _check_rig(frames: list[Frame]) -> None:
    """At most one frame per camera_id and step (what pairs a frame with its flow's target)."""
    seen: dict[tuple, Frame] = {}
    for f in frames:
        if f.camera is None:
            continue
        first = seen.setdefault((f.camera, f.step), f)
        if first is not f:
            raise DataError(f"{f.where}: camera_id {f.camera} already has a frame at time_step {f.step} "
                            f"({first.where})")


def _flow(frame: Frame, hw: tuple[int, int]) -> np.ndarray:
    path = frame.meta_path.parent / as_str(frame.data["flow_file_path"], f"{frame.where} 'flow_file_path'")
    if path.suffix != ".npy":
        raise DataError(f"{path}: flow files must be .npy (float32 (H, W, 2) pixels, NaN invalid) ({frame.where})")
    flow = read_npy(path, "flow", frame.where)
    if flow.shape != (*hw, 2) or not np.issubdtype(flow.dtype, np.floating):
        raise DataError(f"{path}: flow is {flow.dtype} {flow.shape}, expected float {(*hw, 2)} (H, W, 2) "
                        f"({frame.where})")
    return flow.astype(np.float32)


def read_flow(frames: list[Frame], split: str, factor: int, hw: tuple[int, int]) -> np.ndarray | None:
    """(N, H, W, 2) float32 forward flow of a split's frames, NaN where invalid and for frames without a flow
    file (the last step); None when no frame has one, or at a downscale > 1 (flow is not box-filterable)."""
    if not any("flow_file_path" in f.data for f in frames):
        return None
    if factor > 1:
        log.info("split '%s': flow not loaded at downscale %d (flow is not box-filterable)", split, factor)
        return None
    empty = np.full((*hw, 2), np.nan, dtype=np.float32)
    return np.stack([_flow(f, hw) if "flow_file_path" in f.data else empty for f in frames])


def _times(frames: list[Frame]) -> dict:
    """The Split's time fields of frames that read_times has seen (all None for a static scene)."""
    if frames[0].step is None:
        return {}
    out = {"time": np.array([f.time for f in frames], dtype=np.float32),
           "time_step": np.array([f.step for f in frames], dtype=np.int64)}
    if frames[0].camera is not None:
        out["camera_id"] = np.array([f.camera for f in frames], dtype=np.int64)
    return out


def _depth(frame: Frame, hw: tuple[int, int]) -> np.ndarray:
    path = frame.meta_path.parent / as_str(frame.data["depth_file_path"], f"{frame.where} 'depth_file_path'")
    if path.suffix != ".npy":
        raise DataError(f"{path}: depth files must be .npy (float32 metres along the ray)")
    depth = read_npy(path, "depth", frame.where)
    if depth.shape != hw:
        raise DataError(f"{path}: depth is {depth.shape}, image is {hw}")
    scale = as_float(frame.get("depth_unit_scale_factor", 1.0), f"{frame.where} 'depth_unit_scale_factor'")
    return depth.astype(np.float32) * np.float32(scale)


def load_frames(frames: list[Frame], split: str, factor: int, background: np.ndarray,
                load_depth: bool = True) -> tuple[Split, np.ndarray, np.ndarray | None]:
    """(Split, distortion (N, 6), depth (N, H, W) or None) of one split's frames."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    poses, intr, dist, names = [], [], [], []
    for f in frames:
        rel = as_str(require(f.data, "file_path", f.where), f"{f.where} 'file_path'")
        matrix = as_matrix(require(f.data, "transform_matrix", f.where), 4, 4, f"{f.where} 'transform_matrix'")
        pose = check_pose(matrix, f.where)
        path = f.meta_path.parent / rel
        if path.suffix == "" and path.name not in ("", ".", ".."):
            path = path.with_suffix(".png")  # Blender-style paths leave the extension out
        stated = _size(f)
        img = load_rgb(path, factor, background, stated, f"{f.where} (w, h)")
        if images and img.shape != images[0].shape:
            raise DataError(f"{path}: image is {img.shape[1]}x{img.shape[0]} after downscale {factor}, other images "
                            f"of split '{split}' are {images[0].shape[1]}x{images[0].shape[0]}")
        k, d = _intrinsics(f, stated or (img.shape[1] * factor, img.shape[0] * factor))
        images.append(img)
        masks.append(frame_mask(f.meta_path.parent, f.data, factor, img, path, f.where))
        poses.append(pose)
        intr.append(np.array(k) / factor)
        dist.append(d)
        names.append(Path(rel).stem)
    intr_arr = np.array(intr)
    with np.errstate(over="ignore"):
        fits = np.all(np.isfinite(intr_arr.astype(np.float32)))
    if not fits:
        raise DataError(f"{frames[0].meta_path}: split '{split}' has intrinsics too large for float32")
    h, w = images[0].shape[:2]
    fx, fy, cx, cy = intr_arr.T
    cams = cameras_from_arrays(np.stack(poses), fx, fy, cx, cy, w, h)
    exposure = _optional_column(frames, "exposure", lambda v, at: as_float(v, at, positive=True), split)
    appearance = _optional_column(frames, "appearance_id", lambda v, at: as_int(v, at, minimum=0), split)
    sequence = _optional_column(frames, "sequence_id", lambda v, at: as_int(v, at, minimum=0), split)
    out = Split(np.stack(images).astype(np.float32), cams, names,
                None if exposure is None else np.asarray(exposure, dtype=np.float32),
                None if appearance is None else np.asarray(appearance, dtype=np.int64),
                None if sequence is None else np.asarray(sequence, dtype=np.int64), stack_masks(masks, (h, w)),
                **_times(frames))
    depth = None
    if load_depth and all("depth_file_path" in f.data for f in frames):
        if factor == 1:
            depth = np.stack([_depth(f, (h, w)) for f in frames])
        else:
            log.info("split '%s': depth maps not loaded at downscale %d (depth is not box-filterable)", split, factor)
    return out, np.stack(dist).astype(np.float32), depth


def parse_blocks(top: dict, where: str) -> list[dict]:
    blocks = as_list(top["blocks"], f"{where} 'blocks'")
    out = []
    for i, b in enumerate(blocks):
        at = f"{where} blocks[{i}]"
        b = as_dict(b, at)
        centre = as_list(require(b, "center", at), f"{at} 'center'")
        if len(centre) != 3:
            raise DataError(f"{at} 'center': expected 3 numbers, got {len(centre)}")
        out.append({"center": [as_float(c, f"{at} 'center'") for c in centre],
                    "radius": as_float(require(b, "radius", at), f"{at} 'radius'", positive=True)})
    return out


def _bounds(top: dict, where: str, c2w: np.ndarray, near, far) -> tuple[float, float, np.ndarray]:
    if "aabb" in top:
        bbox = as_matrix(top["aabb"], 2, 3, f"{where} 'aabb'")
        if not (np.all(np.isfinite(bbox)) and np.all(bbox[0] < bbox[1])):
            raise DataError(f"{where} 'aabb': expected [[min x, y, z], [max x, y, z]] with min < max")
        bbox = bbox.astype(np.float32)
    else:
        bbox = bbox_from_cameras(c2w)
    near = as_float(near if near is not None else top.get("near", 0.05), f"{where} 'near'", positive=True)
    far = as_float(far if far is not None else top.get("far", far_from_bbox(c2w, bbox)), f"{where} 'far'",
                   positive=True)
    if near >= far:
        raise DataError(f"{where}: near ({near}) must be smaller than far ({far})")
    return near, far, bbox


def load_nerfstudio(root: Path, splits=("train", "test"), downscale_factor: int = 1, background=(1.0, 1.0, 1.0),
                    near: float | None = None, far: float | None = None, llffhold: int = 8,
                    load_depth: bool = True, load_flow: bool = True) -> Scene:
    root = Path(root)
    main, top, groups = frame_groups(root, llffhold)
    read_times(groups)
    bg = np.asarray(background, dtype=np.float32)
    loaded, distortion, depth, flow = {}, {}, {}, {}
    for s in splits:
        if not groups.get(s):
            raise DataError(f"{main}: split '{s}' has no frames (splits with frames: "
                            f"{', '.join(k for k, v in sorted(groups.items()) if v) or 'none'})")
        loaded[s], distortion[s], d = load_frames(groups[s], s, int(downscale_factor), bg, load_depth)
        if d is not None:
            depth[s] = d
        hw = (loaded[s].images.shape[1], loaded[s].images.shape[2])
        maps = read_flow(groups[s], s, int(downscale_factor), hw) if load_flow else None
        if maps is not None:
            flow[s] = maps
        if np.any(distortion[s] != 0):
            log.warning("%s: split '%s' has non-zero lens distortion (max |k| %.3g); rays here are pinhole, so "
                        "undistort the images first", main, s, float(np.abs(distortion[s]).max()))
    c2w = np.concatenate([sp.cameras.c2w for sp in loaded.values()])
    near, far, bbox = _bounds(top, str(main), c2w, near, far)
    extras = {"distortion": distortion, "metadata": str(main)}
    if depth:
        extras["depth"] = depth
    if flow:
        extras["flow"] = flow
    if "blocks" in top:
        extras["blocks"] = parse_blocks(top, str(main))
    folder = root if root.is_dir() else root.parent
    return Scene(name=folder.name, path=str(root), format="nerfstudio", splits=loaded, background=bg,
                 near=near, far=far, bbox=bbox, extras=extras)


def split_names(root: Path, llffhold: int = 8) -> list[str]:
    """The splits of a nerfstudio scene that have frames (for `scene check`)."""
    _, _, groups = frame_groups(Path(root), llffhold)
    return [s for s, frames in groups.items() if frames]
