"""Comparison grids: ground truth | each variant's render | its error heat-map, on chosen test views.

Renders come from each trial's `renders/<view>.png` and ground truth from the PNGs its metrics.json lists
under `ground_truth` (both written by harness.run.evaluation at scoring time), so a runs folder copied
without the datasets builds the same grids; views without recorded ground truth show renders only, and
the grid says so. Error maps are harness.core.metrics.error_map.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.core.errors import HarnessError
from harness.core.records import atomic_write_bytes
from reports.collect import natural_key

log = logging.getLogger(__name__)
THUMB = 160  # thumbnail width in pixels; views at most this wide are shown as they are
DEFAULT_VIEWS = 3
MAX_VARIANTS = 8


def _png(path: Path, img: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    atomic_write_bytes(path, buf.getvalue())


def _to_u8(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _save_pair(img: np.ndarray, out_dir: Path, stem: str) -> dict:
    """Full-size PNG plus a thumbnail (the same file when the image is small); paths relative to out_dir."""
    img = _to_u8(img)
    h, w = img.shape[:2]
    full = f"{stem}.png"
    _png(out_dir / full, img)
    thumb = full
    if w > THUMB:
        th = max(1, round(h * THUMB / w))
        small = Image.fromarray(img).resize((THUMB, th), Image.Resampling.LANCZOS)
        _png(out_dir / f"{stem}_thumb.png", np.asarray(small))
        thumb = f"{stem}_thumb.png"
    return {"full": full, "thumb": thumb, "w": w, "h": h}


def ground_truth(reps: list, names: list[str]) -> tuple[dict[str, np.ndarray], str]:
    """{view: image} of `names` as the trials scored them (their metrics.json `ground_truth`: PNGs in the
    runs folder), and a note naming the views without one."""
    from harness.core.data.images import read_image

    out = {}
    for name in names:
        for _, r in reps:
            rel = r.get("ground_truth")
            path = Path(r["dir"]) / rel[name] if isinstance(rel, dict) and name in rel else None
            if path is not None and path.is_file():
                out[name] = read_image(path)[..., :3]
                break
    missing = [n for n in names if n not in out]
    return out, (f"no ground truth recorded for {', '.join(missing)} (trials scored before records kept it, "
                 f"or its PNG is missing from the runs folder)" if missing else "")


def choose_views(available: list[str], wanted: list[str] | None, n_default: int = DEFAULT_VIEWS) -> list[str]:
    """Names from `wanted` (view names, or integer positions in the naturally sorted list), else
    `n_default` views spread evenly over the test split."""
    ordered = sorted(available, key=natural_key)
    if not ordered:
        return []
    if not wanted:
        idx = np.unique(np.linspace(0, len(ordered) - 1, min(n_default, len(ordered))).round().astype(int))
        return [ordered[i] for i in idx]
    out = []
    for w in wanted:
        if w in ordered:
            out.append(w)
        elif w.lstrip("-").isdigit() and -len(ordered) <= int(w) < len(ordered):
            out.append(ordered[int(w)])
        else:
            raise HarnessError(f"--views: no test view '{w}' (views are {', '.join(ordered[:8])}"
                               f"{', ...' if len(ordered) > 8 else ''}; or give positions 0..{len(ordered) - 1})")
    return list(dict.fromkeys(out))


def _representative(g: pd.DataFrame) -> pd.Series | None:
    """The done trial with the lowest seed that has renders."""
    done = g[g["state"] == "done"]
    order = sorted(range(len(done)), key=lambda i: natural_key(done["seed"].iat[i]))
    for i in order:
        d = Path(done["dir"].iat[i]) / "renders"
        if d.is_dir() and any(d.glob("*.png")):
            return done.iloc[i]
    return None


def comparison_grids(trials: pd.DataFrame, views: pd.DataFrame, out_dir: Path,
                     wanted: list[str] | None, metric: str | None) -> list[dict]:
    """One grid per scene: rows = chosen views; columns = GT then each variant (render over error map)."""
    grids = []
    for s_i, (scene, sg) in enumerate(trials.groupby("scene", sort=False)):
        reps = []
        for variant, g in sg.groupby("variant", observed=True, sort=False):
            r = _representative(g)
            if r is not None:
                reps.append((str(variant), r))
        note = []
        if len(reps) > MAX_VARIANTS:
            note.append(f"first {MAX_VARIANTS} of {len(reps)} variants with renders shown")
            reps = reps[:MAX_VARIANTS]
        if not reps:
            grids.append({"scene": scene, "rows": [], "variants": [], "note": "no done trial has saved renders"})
            continue
        available = set.intersection(*({p.stem for p in (Path(r["dir"]) / "renders").glob("*.png")} for _, r in reps))
        names = choose_views(sorted(available), wanted)
        if not names:
            grids.append({"scene": scene, "rows": [], "variants": [],
                          "note": "the variants' trials have no rendered test view in common"})
            continue
        gt, missing = ground_truth(reps, names)
        if missing:
            note.append(missing)
        scene_dir = out_dir / f"grid_{s_i}"
        scene_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for v_i, name in enumerate(names):
            cells: list[dict] = []
            row: dict = {"view": name, "gt": None, "cells": cells}
            if name in gt:
                row["gt"] = _prefix(_save_pair(gt[name], scene_dir, f"v{v_i}_gt"), scene_dir.name)
            for c_i, (variant, r) in enumerate(reps):
                from harness.core.data.images import read_image

                pred = read_image(Path(r["dir"]) / "renders" / f"{name}.png")[..., :3]
                cell = {"variant": variant, "seed": r["seed"],
                        "render": _prefix(_save_pair(pred, scene_dir, f"v{v_i}_c{c_i}"), scene_dir.name),
                        "error": None, "score": ""}
                if name in gt and gt[name].shape == pred.shape:
                    from harness.core.metrics import error_map  # imports torch/lpips: only when drawing maps

                    err = error_map(pred, gt[name])
                    cell["error"] = _prefix(_save_pair(err, scene_dir, f"v{v_i}_c{c_i}_err"), scene_dir.name)
                if metric and len(views):
                    hit = views[(views["key"] == r["key"]) & (views["view"] == name)]
                    if len(hit) and metric in hit and np.isfinite(hit[metric].iloc[0]):
                        cell["score"] = f"{metric.upper()} {hit[metric].iloc[0]:.2f}"
                cells.append(cell)
            rows.append(row)
        grids.append({"scene": scene, "rows": rows, "variants": [v for v, _ in reps], "note": "; ".join(note)})
    return grids


def _prefix(img: dict, folder: str) -> dict:
    return {**img, "full": f"{folder}/{img['full']}", "thumb": f"{folder}/{img['thumb']}"}
