"""Fuzzing the nerfstudio parser: any JSON-ish transforms.json loads or raises DataError, nothing else.

Inputs are valid files with a few mutations (a key deleted or set to an arbitrary JSON value, at the
top level or in a frame), plus some arbitrary JSON, so every check of the parser is reached.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from harness.core.data.nerfstudio import load_nerfstudio
from harness.core.errors import DataError

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
identity = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 4.0], [0.0, 0.0, 0.0, 1.0]]
turned = [[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
positive = st.floats(0.01, 1e3) | st.integers(1, 100)
near_miss = st.sampled_from([0, -1, 0.0, 1e308, 2**64, "", "a.png", "d.npy", "/", "..", [], {}, [1, 2, 3],
                             [[1, 0, 0], [0, 1, 0]], [[float("nan")] * 4] * 4,
                             [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], [{"center": [0, 0]}]])
DELETE = object()

frames = st.fixed_dictionaries(
    {"file_path": st.sampled_from(["a.png", "b.png", "a"]), "transform_matrix": st.sampled_from([identity, turned])},
    optional={"split": st.sampled_from(["train", "test", "val"]), "exposure": positive,
              "appearance_id": st.integers(0, 3), "w": st.just(8), "h": st.just(6), "k1": st.floats(-0.1, 0.1),
              "depth_file_path": st.just("d.npy")})
valid = st.fixed_dictionaries(
    {"frames": st.lists(frames, min_size=1, max_size=5), "fl_x": positive},
    optional={"fl_y": positive, "w": st.just(8), "h": st.just(6),
              "camera_model": st.sampled_from(["OPENCV", "PINHOLE"]),
              "aabb": st.just([[-1, -1, -1], [1, 1, 1]]), "near": st.just(0.1), "far": st.just(50.0),
              "blocks": st.just([{"center": [0, 0, 0], "radius": 2}]), "train_filenames": st.just(["a.png", "a"])})
KEYS = ["frames", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "camera_model", "camera_angle_x", "aabb", "near", "far",
        "blocks", "train_filenames", "test_filenames", "depth_unit_scale_factor", "file_path", "transform_matrix",
        "split", "exposure", "appearance_id", "depth_file_path"]
mutations = st.lists(st.tuples(st.booleans(), st.sampled_from(KEYS), st.integers(0, 4),
                               st.one_of(st.just(DELETE), near_miss, anything)), min_size=1, max_size=3)


def _mutate(meta: dict, changes) -> dict:
    for in_frame, key, index, value in changes:
        target = meta
        if in_frame and isinstance(meta.get("frames"), list) and meta["frames"]:
            target = meta["frames"][index % len(meta["frames"])]
        if not isinstance(target, dict):
            continue
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return meta


def _assets(folder: Path) -> None:
    Image.new("RGB", (8, 6), (10, 20, 30)).save(folder / "a.png")
    Image.new("RGBA", (8, 6)).save(folder / "b.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    np.save(folder / "d.npy", np.ones((6, 8), np.float32))


def _load(meta, splits):
    """Load `meta` as transforms.json beside valid assets: the scene, or the DataError's message."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _assets(folder)
        (folder / "transforms.json").write_text(json.dumps(meta))
        try:
            return load_nerfstudio(folder, splits=splits, llffhold=3)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc)
            return str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.one_of(st.builds(_mutate, valid, mutations), valid, anything),
       splits=st.sampled_from([("train",), ("train", "test"), ("val",)]))
def test_nerfstudio_parser_raises_only_data_errors(meta, splits):
    scene = _load(meta, splits)
    if not isinstance(scene, str):
        for split in scene.splits.values():
            assert np.isfinite(split.cameras.c2w).all() and (split.cameras.fx > 0).all()


def test_fuzz_inputs_reach_deep_checks():
    """Mutations of a valid file reach checks past the file's structure (poses, images, splits)."""
    base = {"fl_x": 10, "w": 8, "h": 6, "frames": [{"file_path": "a.png", "transform_matrix": identity,
                                                    "depth_file_path": "d.npy"}] * 4}
    assert not isinstance(_load(base, ("train", "test")), str)
    for change, message in [((True, "transform_matrix", 1, [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
                             "not rigid"), ((False, "h", 0, 12), "says 8x12"), ((True, "file_path", 2, "bad.png"),
                                                                                "unreadable image")]:
        assert message in _load(_mutate(json.loads(json.dumps(base)), [change]), ("train", "test"))
