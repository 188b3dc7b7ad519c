"""Depth maps of Blender scenes (`depth_path`, harness/core/data/blender.py): .npy in world units, PNGs only
with a stated `depth_scale`; every bad depth file is one DataError line naming the file and the frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.core.data.blender import load_blender
from harness.core.errors import DataError

W, H = 8, 6


def _scene(root: Path, depth_files: list[str | None], depth_scale=None) -> Path:
    """A 2-frame Blender scene (train and test alike) whose frames name `depth_files`."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        frames = []
        for i, depth in enumerate(depth_files):
            Image.fromarray(np.full((H, W, 4), 200, np.uint8)).save(root / f"{split}_{i}.png")
            frame = {"file_path": f"{split}_{i}", "transform_matrix": np.eye(4).tolist()}
            if depth is not None:
                frame["depth_path"] = depth
            frames.append(frame)
        meta = {"camera_angle_x": 0.7, "frames": frames}
        if depth_scale is not None:
            meta["depth_scale"] = depth_scale
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return root


def test_npy_and_scaled_png_depth_load_with_their_units(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    np.save(root / "d0.npy", np.full((H, W), 2.5, np.float32))
    png = np.full((H, W), 1000, np.uint16)
    png[0, 0] = 0  # no depth there
    Image.fromarray(png).save(root / "d1.png")
    scene = load_blender(_scene(root, ["d0.npy", "d1.png"], depth_scale=0.001))
    depth = scene.extras["depth"]["train"]
    assert depth.shape == (2, H, W) and depth.dtype == np.float32
    assert depth[0] == pytest.approx(2.5 * 0.001)  # depth_scale applies to .npy too when given
    assert np.isnan(depth[1, 0, 0]) and depth[1, 1, 1] == pytest.approx(1.0)
    assert "depth" not in load_blender(_scene(tmp_path / "none", [None, None])).extras


def test_bad_depth_files_are_one_line_naming_file_and_frame(tmp_path):
    def refused(depths, scale=None, setup=None) -> str:
        root = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        if setup:
            setup(root)
        with pytest.raises(DataError) as info:
            load_blender(_scene(root, depths, scale))
        assert "\n" not in str(info.value)
        return str(info.value)

    def png8(root):
        Image.fromarray(np.full((H, W), 9, np.uint8)).save(root / "d.png")

    assert "depth in unknown units" in refused(["d.png", "d.png"], setup=png8)
    assert "frame 0" in refused(["d.png", "d.png"], setup=png8)
    assert "missing" in refused(["gone.npy", "gone.npy"])
    assert "missing 'depth_path'" in refused(["d.png", None], scale=1.0, setup=png8)

    def small(root):
        np.save(root / "d.npy", np.ones((H - 1, W), np.float32))

    assert f"its image is {W}x{H}" in refused(["d.npy", "d.npy"], setup=small)

    def rgb(root):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "d.png")

    assert "single-channel" in refused(["d.png", "d.png"], scale=1.0, setup=rgb)

    def garbage(root):
        (root / "d.npy").write_bytes(b"not numpy")

    assert "unreadable depth file" in refused(["d.npy", "d.npy"], setup=garbage)
