"""A dynamic scene's test scores over time (issue #29): per-time-step means of the per-view metrics, and the
flicker of each test camera's sequence (harness.core.metrics.temporal) against the ground truth's."""

from __future__ import annotations

import numpy as np

from harness.core.data.scene import Split
from harness.core.metrics.temporal import flicker


def sequences(split: Split) -> dict[str, list[int]]:
    """{camera id: the split's view indices in time order}, for cameras seen at consecutive time steps
    0..T-1 with one view each (the others cannot be read as a video); {} without camera ids."""
    if split.time_step is None or split.camera_id is None:
        return {}
    steps = int(np.max(split.time_step)) + 1
    out = {}
    for cam in np.unique(split.camera_id):
        idx = np.flatnonzero(split.camera_id == cam)
        idx = idx[np.argsort(split.time_step[idx], kind="stable")]
        if list(split.time_step[idx]) == list(range(steps)):
            out[str(int(cam))] = [int(i) for i in idx]
    return out


def per_time_step(split: Split, per_view: dict[str, dict[str, float]]) -> list[dict]:
    """[{'time_step', 'views', <metric>: mean over the step's views}] in time order."""
    steps = np.asarray(split.time_step)
    rows = []
    for k in range(int(steps.max()) + 1):
        names = [split.names[i] for i in np.flatnonzero(steps == k) if split.names[i] in per_view]
        row: dict = {"time_step": k, "views": len(names)}
        if names:
            for metric in per_view[names[0]]:
                row[metric] = float(np.mean([per_view[n][metric] for n in names]))
        rows.append(row)
    return rows


def temporal_scores(split: Split, per_view: dict, renders: dict[int, np.ndarray], flows: np.ndarray | None) -> dict:
    """metrics.json's 'temporal': per-time-step means, the test cameras' sequences (view names), and, when the
    split has flow, the flicker of the renders (`renders`: view index -> image as scored) against the truth."""
    seqs = sequences(split)
    out: dict = {"per_time_step": per_time_step(split, per_view),
                 "sequences": {cam: [split.names[i] for i in idx] for cam, idx in seqs.items()}}
    if flows is None or not seqs:
        out["flicker_skipped"] = "the split has no flow" if flows is None else "no camera is seen at every time step"
        return out
    if any(i not in renders for idx in seqs.values() for i in idx):
        out["flicker_skipped"] = "not every view of the sequences was rendered"
        return out
    out["flicker"] = flicker({cam: [renders[i] for i in idx] for cam, idx in seqs.items()},
                             {cam: [split.images[i] for i in idx] for cam, idx in seqs.items()},
                             {cam: [flows[i] for i in idx[:-1]] for cam, idx in seqs.items()})
    return out
