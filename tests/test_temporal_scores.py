"""A dynamic split's scores over time (harness/run/temporal_scores.py): per-time-step means of the per-view
metrics, the cameras' sequences in time order (only cameras seen at every step), and the flicker of those
sequences, which is the metrics module's `flicker` of the same frames; no flow or no complete sequence is said."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.data.scene import Cameras, Split
from harness.core.metrics.temporal import flicker
from harness.run.temporal_scores import per_time_step, sequences, temporal_scores

H = W = 6


def _split(steps: list[int], cams: list[int]) -> Split:
    n = len(steps)
    c2w = np.tile(np.eye(4, dtype=np.float32)[:3], (n, 1, 1))
    f = np.full(n, 5.0, np.float32)
    images = np.random.default_rng(1).random((n, H, W, 3)).astype(np.float32)
    names = [f"c{c}_t{t}" for t, c in zip(steps, cams)]
    return Split(images, Cameras(c2w, f, f, np.full(n, 3.0, np.float32), np.full(n, 3.0, np.float32), W, H), names,
                 time_step=np.array(steps, np.int64), camera_id=np.array(cams, np.int64))


def test_per_step_means_sequences_and_flicker():
    # frames out of time order on purpose; camera 9 misses step 1, so it is no sequence
    split = _split([1, 0, 2, 0, 1, 2, 0, 2], [4, 4, 4, 7, 7, 7, 9, 9])
    per_view = {name: {"psnr": float(i), "ssim": i / 10} for i, name in enumerate(split.names)}
    rows = per_time_step(split, per_view)
    assert [r["time_step"] for r in rows] == [0, 1, 2] and [r["views"] for r in rows] == [3, 2, 3]
    assert rows[0]["psnr"] == pytest.approx((1 + 3 + 6) / 3) and rows[1]["ssim"] == pytest.approx((0 + 4) / 20)
    assert sequences(split) == {"4": [1, 0, 2], "7": [3, 4, 5]}

    rng = np.random.default_rng(2)
    renders = {i: (rng.integers(0, 256, (H, W, 3)) / 255).astype(np.float32) for i in range(len(split))}  # as scored
    flows = rng.uniform(-1, 1, (len(split), H, W, 2)).astype(np.float32)
    out = temporal_scores(split, per_view, renders, flows)
    assert out["sequences"] == {"4": ["c4_t0", "c4_t1", "c4_t2"], "7": ["c7_t0", "c7_t1", "c7_t2"]}
    expected = flicker({"4": [renders[1], renders[0], renders[2]], "7": [renders[3], renders[4], renders[5]]},
                       {"4": [split.images[1], split.images[0], split.images[2]],
                        "7": [split.images[3], split.images[4], split.images[5]]},
                       {"4": [flows[1], flows[0]], "7": [flows[3], flows[4]]})
    assert out["flicker"]["warp_error"] == expected["warp_error"] > 0
    assert out["flicker"]["warp_error_truth"] == expected["warp_error_truth"]


def test_no_flow_or_no_complete_camera_is_said():
    split = _split([0, 1, 0], [0, 0, 1])
    per_view = {name: {"psnr": 20.0} for name in split.names}
    out = temporal_scores(split, per_view, {}, None)
    assert "flicker" not in out and out["flicker_skipped"] == "the split has no flow"
    flows = np.zeros((3, H, W, 2), np.float32)
    skipped = temporal_scores(split, per_view, {}, flows)["flicker_skipped"]
    assert skipped == "not every view of the sequences was rendered"
    lonely = _split([0, 1], [0, 1])
    out = temporal_scores(lonely, {n: {"psnr": 1.0} for n in lonely.names}, {}, np.zeros((2, H, W, 2), np.float32))
    assert out["sequences"] == {} and out["flicker_skipped"] == "no camera is seen at every time step"
