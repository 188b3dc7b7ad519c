"""Comparison grids: ground truth | each variant's render | its error heat-map, on chosen test views.

Renders come from each trial's `renders/<view>.png` (written by harness.evaluate at scoring time).
Trials do not store ground truth, so it is read from the scene named in the trial's config.gin
(`load_scene.*`) with the project's own loaders (same compositing as scoring); when the scene is
not reachable the grid shows renders only and says why. Error maps are harness.metrics.error_map.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.errors import HarnessError
from harness.records import atomic_write_bytes
from reports.collect import _literal, natural_key

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
        _png(out_dir / f"{stem}_thumb.png", np.asarray(Image.fromarray(img).resize((THUMB, th), Image.LANCZOS)))
        thumb = f"{stem}_thumb.png"
    return {"full": full, "thumb": thumb, "w": w, "h": h}


class GroundTruth:
    """Test-split ground truth per scene config, loaded once per (path, format, downscale, background)."""

    def __init__(self):
        self.cache: dict[tuple, dict[str, np.ndarray] | str] = {}

    def views(self, config: dict[str, str], names: list[str]) -> dict[str, np.ndarray] | str:
        """{view name: float image} for `names`, or a string saying why there is none."""
        path = _literal(config.get("load_scene.path"))
        if not path:
            return "the trial config has no load_scene.path"
        fmt = _literal(config.get("load_scene.format")) or "blender"
        factor = int(_literal(config.get("load_scene.downscale")) or 1)
        bg = np.asarray(_literal(config.get("load_scene.background")) or (1.0, 1.0, 1.0), dtype=np.float32)
        options = _literal(config.get("load_scene.options")) or {}
        key = (str(path), fmt, factor, tuple(bg.tolist()), repr(options), tuple(names))
        if key not in self.cache:
            try:
                self.cache[key] = self._load(str(path), fmt, factor, bg, options, names)
            except (HarnessError, OSError, ValueError, TypeError) as exc:
                self.cache[key] = f"ground truth not available ({exc})"
                log.warning("%s", self.cache[key])
        return self.cache[key]

    @staticmethod
    def _load(path, fmt, factor, bg, options, names) -> dict[str, np.ndarray]:
        from harness.data.load import loader_for, scene_root

        root = scene_root(path, fmt)
        if fmt == "blender":  # only the asked views, not the whole test split
            from harness.data.loading import load_rgb

            meta = json.loads((Path(root) / "transforms_test.json").read_text())
            files = {Path(f["file_path"]).stem: f["file_path"] for f in meta.get("frames", [])}
            out = {}
            for n in names:
                if n in files:
                    p = Path(root) / files[n]
                    out[n] = load_rgb(p if p.suffix else p.with_suffix(".png"), factor, bg, None, str(root))
            return out
        scene = loader_for(fmt)(root, splits=("test",), downscale_factor=factor, background=bg, **options)
        split = scene.split("test")
        return {n: split.images[i] for i, n in enumerate(split.names) if n in set(names)}


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


def comparison_grids(trials: pd.DataFrame, views: pd.DataFrame, configs: dict, out_dir: Path,
                     wanted: list[str] | None, metric: str | None) -> list[dict]:
    """One grid per scene: rows = chosen views; columns = GT then each variant (render over error map)."""
    gt_source = GroundTruth()
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
        gt = gt_source.views(configs.get(reps[0][1]["key"], {}), names)
        if isinstance(gt, str):
            note.append(gt)
            gt = {}
        scene_dir = out_dir / f"grid_{s_i}"
        scene_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for v_i, name in enumerate(names):
            row = {"view": name, "gt": None, "cells": []}
            if name in gt:
                row["gt"] = _prefix(_save_pair(gt[name], scene_dir, f"v{v_i}_gt"), scene_dir.name)
            for c_i, (variant, r) in enumerate(reps):
                from harness.data.images import read_image

                pred = read_image(Path(r["dir"]) / "renders" / f"{name}.png")[..., :3]
                cell = {"variant": variant, "seed": r["seed"],
                        "render": _prefix(_save_pair(pred, scene_dir, f"v{v_i}_c{c_i}"), scene_dir.name),
                        "error": None, "score": ""}
                if name in gt and gt[name].shape == pred.shape:
                    from harness.metrics import error_map  # imports torch/lpips: only when drawing maps

                    err = error_map(pred, gt[name])
                    cell["error"] = _prefix(_save_pair(err, scene_dir, f"v{v_i}_c{c_i}_err"), scene_dir.name)
                if metric and len(views):
                    hit = views[(views["key"] == r["key"]) & (views["view"] == name)]
                    if len(hit) and metric in hit and np.isfinite(hit[metric].iloc[0]):
                        cell["score"] = f"{metric.upper()} {hit[metric].iloc[0]:.2f}"
                row["cells"].append(cell)
            rows.append(row)
        grids.append({"scene": scene, "rows": rows, "variants": [v for v, _ in reps], "note": "; ".join(note)})
    return grids


def _prefix(img: dict, folder: str) -> dict:
    return {**img, "full": f"{folder}/{img['full']}", "thumb": f"{folder}/{img['thumb']}"}
