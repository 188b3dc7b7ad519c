"""Dynamic scenes in a report: scores per time step, each test camera's sequence animated beside its
ground truth, and the flicker (warping error) per variant.

Reads each done trial's metrics.json `temporal` entry, written when a trial is scored on a scene with
time steps: `per_time_step` (scores per step, in time order), `sequences` (camera id -> view names in
time order) and, when the scene has flow, `flicker` (harness.core.metrics.temporal.flicker; else why
not in `flicker_skipped`). Trials without it add nothing, so a static experiment's report has no such
section.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from PIL import Image

from harness.core.data.images import read_image
from harness.core.errors import DataError, RecordError
from harness.core.records import atomic_write_bytes, read_json
from reports import figures, images
from reports.aggregate import t_interval
from reports.collect import METRICS, fmt_value, natural_key

log = logging.getLogger(__name__)
FRAME_MS = 150  # per time step: ~7 steps a second, slow enough to see flicker
ANIM_WIDTH = 256  # each panel (render, truth) at most this wide, so embedded reports stay small
GAP = 4  # white pixels between render and truth
STRIP = 4  # rows under the frames with a bar as long as the time elapsed
STRIP_COLOUR = (9, 105, 218)
MAX_CAMERAS = 8
FLICKER_VALUES = ("warp_error", "warp_error_truth", "excess", "ratio", "num_cameras")
# table columns: (key, header, format of a value)
FLICKER_COLUMNS = (("warp_error", "warp error (render) ↓", "{:.4g}"),
                   ("warp_error_truth", "floor: warp error (truth)", "{:.4g}"),
                   ("ratio", "ratio (render / truth) ↓", "{:.3f}"),
                   ("psnr", "PSNR ↑", "{:.2f}"))


def section(trials: pd.DataFrame, out_dir: Path) -> dict | None:
    """The report's "Dynamic scenes" section, or None when no done trial has a `temporal` record."""
    found = temporal_records(trials)
    if not found:
        return None
    info = trials.set_index("key")
    steps = step_frame(info, found)
    flicker = flicker_frame(info, found)
    variants = [str(v) for v in trials["variant"].cat.categories]
    curves = step_curves(steps, variants, out_dir)
    points = tradeoff_points(flicker, variants)
    tradeoff = tradeoff_figure(points, variant_bindings(trials[trials["key"].isin(found)]), out_dir)
    return {"figures": [f for f in (curves, tradeoff) if f], "flicker": flicker_rows(flicker, variants),
            "flicker_headers": [header for _, header, _ in FLICKER_COLUMNS],
            "scenes": animations(trials[trials["key"].isin(found)], found, out_dir),
            "n_trials": len(found), "frame_ms": FRAME_MS, "steps": steps, "flicker_frame": flicker,
            "tradeoff_points": points,
            "flicker_skipped": "; ".join(sorted({str(e["flicker_skipped"]) for e in found.values()
                                                 if e.get("flicker_skipped")}))}


def temporal_records(trials: pd.DataFrame) -> dict[str, dict]:
    """Trial key -> its metrics.json `temporal` entry, for the done trials that have one."""
    out = {}
    for r in trials[trials["state"] == "done"].to_dict("records"):
        try:
            metrics = read_json(Path(r["dir"]) / "metrics.json")
        except RecordError:
            continue  # collect() has already warned about it
        entry = metrics.get("temporal") if isinstance(metrics, dict) else None
        if isinstance(entry, dict):
            out[r["key"]] = entry
    return out


def _about(info: pd.DataFrame, key: str) -> dict:
    r = info.loc[key]
    return {"experiment": r["experiment"], "id": r["id"], "variant": str(r["variant"]), "scene": r["scene"],
            "seed": r["seed"]}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def step_frame(info: pd.DataFrame, found: dict[str, dict]) -> pd.DataFrame:
    """One row per (trial, time step): time_step, views and the scores recorded for the step."""
    rows = []
    for key, entry in found.items():
        for s in entry.get("per_time_step") or []:
            if isinstance(s, dict) and "time_step" in s:
                rows.append({**_about(info, key), "time_step": int(s["time_step"]), "views": s.get("views"),
                             **{m: _float(s[m]) for m in METRICS if m in s}})
    return pd.DataFrame(rows)


def flicker_frame(info: pd.DataFrame, found: dict[str, dict]) -> pd.DataFrame:
    """One row per trial with a flicker record: its values as recorded and the trial's mean PSNR."""
    rows = []
    for key, entry in found.items():
        f = entry.get("flicker")
        if isinstance(f, dict):
            rows.append({**_about(info, key), **{k: _float(f.get(k)) for k in FLICKER_VALUES},
                         "psnr": _float(info.loc[key, "psnr"])})
    return pd.DataFrame(rows)


def step_curves(steps: pd.DataFrame, variants: list[str], out_dir: Path) -> figures.Figure | None:
    """A panel per (scene, metric): the score of each time step, mean over seeds per variant."""
    metrics = [m for m in METRICS if m in steps and steps[m].notna().any()]
    if steps.empty or not metrics:
        return None
    scenes = list(dict.fromkeys(steps["scene"]))
    panels = [(scene, m) for scene in scenes for m in metrics]
    present = [v for v in variants if v in set(steps["variant"])]
    shown = present[:figures.MAX_HUES]
    figures._theme()
    fig, axs = figures._panels(len(panels), width=4.8, height=3.2)
    palette = sns.color_palette("colorblind", len(shown))
    for ax, (scene, m) in zip(axs, panels):
        d = steps[(steps["scene"] == scene) & steps[m].notna()]
        for color, v in zip(palette, shown):
            g = d[d["variant"] == v]
            if len(g):
                figures._mean_band(ax, g["time_step"], [(t, g.loc[g["time_step"] == t, m])
                                                        for t in g["time_step"].unique()], color, v[:40])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("time step")
        ax.set_ylabel(figures._label(m))
        ax.set_title(f"{scene}: {m.upper()} per time step" if len(scenes) > 1 else f"{m.upper()} per time step",
                     fontsize=9)
    if len(shown) > 1:
        handles, labels = axs[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    caption = "each point: the test views of one time step; mean over seeds, band: 95% t-interval"
    if len(present) > len(shown):
        caption += f"; first {len(shown)} of {len(present)} variants"
    return figures._save(fig, out_dir, "temporal_per_step", "scores per time step", caption)


def flicker_rows(flicker: pd.DataFrame, variants: list[str]) -> list[dict]:
    """Per (scene, variant): each column's mean over seeds ± half-width of the 95% t-interval."""
    if flicker.empty:
        return []
    rows = []
    for scene, sg in flicker.groupby("scene", sort=False):
        for v in (v for v in variants if v in set(sg["variant"])):
            g = sg[sg["variant"] == v]
            rows.append({"scene": scene, "variant": v, "n": len(g),
                         "cells": [_mean_text(g[key], fmt) for key, _, fmt in FLICKER_COLUMNS]})
    return rows


TRADEOFF_VALUES = ("warp_error", "psnr", "warp_error_truth")


def tradeoff_points(flicker: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """The trade-off figure's points: per (scene, variant) with a flicker record, n (trials) and the mean
    over seeds and half-width of the 95% t-interval (nan for one seed) of the render's warping error, the
    trial's mean PSNR and the truth's warping error (the floor): columns `<value>` and `<value>_ci`."""
    columns = ["scene", "variant", "n", *(c for v in TRADEOFF_VALUES for c in (v, f"{v}_ci"))]
    rows = []
    if not flicker.empty:
        for scene, sg in flicker.groupby("scene", sort=False):
            for v in (v for v in variants if v in set(sg["variant"])):
                g = sg[sg["variant"] == v]
                row = {"scene": scene, "variant": v, "n": len(g)}
                for value in TRADEOFF_VALUES:
                    row[value], row[f"{value}_ci"], _ = t_interval(g[value])
                rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def variant_bindings(trials: pd.DataFrame) -> dict[str, dict]:
    """Variant -> the bindings of its first trial, without the seed and the scene, plus the experiment
    (so that the variants of two experiments with equal bindings are told apart)."""
    out: dict[str, dict] = {}
    for r in trials.to_dict("records"):
        b = r.get("bindings")
        out.setdefault(str(r["variant"]), {**{k: x for k, x in (b.items() if isinstance(b, dict) else ())
                                              if k not in ("seed", "scene")},
                                           "experiment": r.get("experiment")})
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


_MISSING = object()


def tradeoff_lines(bindings: dict[str, dict]) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """How to connect a scene's variants (variant -> bindings): (the binding connected along, lines), each
    line (label: the bindings the line's points share, the variants in increasing order of the binding's
    value). A line joins the variants that differ in this one numeric binding only; the binding is the
    first (in binding order) that gives such a line. When none does but every binding that differs is
    numeric and all of them order the variants alike (a zipped sweep), the variants form one line along
    the first of them. Otherwise, or when a line would have two points at one value: (None, [])."""
    names = list(bindings)
    keys = list(dict.fromkeys(k for b in bindings.values() for k in b))
    value = {v: {k: bindings[v].get(k, _MISSING) for k in keys} for v in names}
    varying = [k for k in keys if len({repr(value[v][k]) for v in names}) > 1]
    numeric = [k for k in varying if all(_number(value[v][k]) for v in names)]
    for axis in numeric:
        groups: dict[tuple, list[str]] = {}
        for v in names:
            groups.setdefault(tuple(repr(value[v][k]) for k in varying if k != axis), []).append(v)
        if any(len({value[v][axis] for v in g}) < len(g) for g in groups.values()):
            continue  # two variants at one value along the axis: which to join is ambiguous
        lines = [(_shared_label(members, value, varying, axis), sorted(members, key=lambda v: value[v][axis]))
                 for members in groups.values() if len(members) > 1]
        if lines:
            return axis, lines
    if len(names) > 1 and varying and numeric == varying:
        orders = {tuple(sorted(names, key=lambda v: value[v][k])) for k in varying}
        distinct = all(len({value[v][k] for v in names}) == len(names) for k in varying)
        if len(orders) == 1 and distinct:
            return varying[0], [("", list(orders.pop()))]
    return None, []


def _shared_label(members: list[str], value: dict, varying: list[str], axis: str) -> str:
    v = members[0]
    return ", ".join(str(value[v][k]) if k == "experiment" else f"{k.split('.')[-1]}={fmt_value(value[v][k])}"
                     for k in varying if k != axis and value[v][k] is not _MISSING)


def tradeoff_figure(points: pd.DataFrame, bindings: dict[str, dict], out_dir: Path) -> figures.Figure | None:
    """A panel per scene: mean PSNR against the render's warping error, a point per variant with its label
    and 95% t-intervals over seeds as bars; the truth's warping error as a dashed line; the variants of
    one numeric sweep axis joined in the order of its value (tradeoff_lines)."""
    points = points.dropna(subset=["warp_error", "psnr"]) if len(points) else points
    if points.empty:
        return None
    scenes = list(dict.fromkeys(points["scene"]))
    figures._theme()
    fig, axs = figures._panels(len(scenes), width=5.4, height=3.9)
    joined = set()
    for ax, scene in zip(axs, scenes):
        d = points[points["scene"] == scene].set_index("variant", drop=False)
        axis, lines = tradeoff_lines({v: bindings.get(v, {}) for v in d["variant"]})
        palette = sns.color_palette("colorblind", max(1, len(lines)))
        for color, (label, members) in zip(palette, lines):
            ax.plot(d.loc[members, "warp_error"], d.loc[members, "psnr"], "-", color=color, lw=1.3, zorder=2,
                    label=label[:40] or None)
        if axis:
            joined.add(axis)
        on_line = {v: color for color, (_, members) in zip(palette, lines) for v in members}
        ax.errorbar(d["warp_error"], d["psnr"], xerr=np.nan_to_num(d["warp_error_ci"]),
                    yerr=np.nan_to_num(d["psnr_ci"]), fmt="none", ecolor="#bbb", lw=1, zorder=1)
        ax.scatter(d["warp_error"], d["psnr"], s=24, zorder=3,
                   color=[on_line.get(v, "#5a6b7b") for v in d["variant"]])
        for _, r in d.iterrows():
            ax.annotate(str(r["variant"])[:28], (r["warp_error"], r["psnr"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        floors = sorted({float(f"{x:.6g}") for x in d["warp_error_truth"] if np.isfinite(x)})
        for floor in floors:
            ax.axvline(floor, color="#444", ls="--", lw=1, zorder=0)
            ax.text(floor, 0.98, "truth floor ", rotation=90, fontsize=7, color="#444", ha="right", va="top",
                    transform=ax.get_xaxis_transform())
        if ax.get_xlim()[0] < 0:  # wide intervals of few seeds: no negative warping errors
            ax.set_xlim(left=0)
        ax.set_xlabel("flicker: warp error (render) ↓")
        ax.set_ylabel(figures._label("psnr"))
        ax.set_title(f"{scene}: flicker vs PSNR" if len(scenes) > 1 else "flicker vs PSNR", fontsize=9)
        if axis and any(label for label, _ in lines):
            ax.legend(fontsize=7, title=f"along {axis.split('.')[-1]}", title_fontsize=7)
    caption = ("each point: a variant, mean over seeds, bars: 95% t-interval; further left (lower warp error) is "
               "better in flicker, higher is better in PSNR, so upper left is best; dashed: the truth floor, the "
               "ground truth's own warping error")
    if joined:
        caption += f"; lines join the variants along {', '.join(sorted(joined))} in the order of its value"
    return figures._save(fig, out_dir, "temporal_tradeoff", "flicker vs PSNR", caption)


def _mean_text(values: pd.Series, fmt: str) -> str:
    mean, half, n = t_interval(values)
    if n == 0:
        return "–"
    return fmt.format(mean) if np.isnan(half) else f"{fmt.format(mean)} ± {fmt.format(half)}"


def animations(trials: pd.DataFrame, found: dict[str, dict], out_dir: Path) -> list[dict]:
    """Per scene: rows = test cameras, columns = variants; each cell an animation of the camera's
    sequence (render | ground truth) from the variant's representative trial (lowest seed)."""
    scenes = []
    for s_i, (scene, sg) in enumerate(trials.groupby("scene", sort=False)):
        reps = [(str(v), r) for v, g in sg.groupby("variant", observed=True, sort=False)
                if (r := images._representative(g)) is not None]
        note = []
        if len(reps) > images.MAX_VARIANTS:
            note.append(f"first {images.MAX_VARIANTS} of {len(reps)} variants with renders shown")
            reps = reps[:images.MAX_VARIANTS]
        cameras = sorted({str(c) for _, r in reps for c in _sequences(found[r["key"]])}, key=natural_key)
        if len(cameras) > MAX_CAMERAS:
            note.append(f"first {MAX_CAMERAS} of {len(cameras)} test cameras shown")
            cameras = cameras[:MAX_CAMERAS]
        folder = out_dir / f"temporal_{s_i}"
        rows = []
        for c_i, cam in enumerate(cameras):
            cells = []
            for v_i, (_, r) in enumerate(reps):
                names = _sequences(found[r["key"]]).get(cam)
                cells.append(_cell(r, names, folder, f"cam{c_i}_v{v_i}") if names else
                             {"file": None, "note": "no sequence recorded"})
            rows.append({"camera": cam, "cells": cells})
        if not reps:
            note.append("no done trial has saved renders")
        scenes.append({"scene": scene, "variants": [v for v, _ in reps],
                       "seeds": [r["seed"] for _, r in reps], "rows": rows, "note": "; ".join(note)})
    return scenes


def _sequences(entry: dict) -> dict[str, list[str]]:
    """Camera id -> its view names in time order (ids as text: JSON keys are)."""
    seqs = entry.get("sequences")
    if not isinstance(seqs, dict):
        return {}
    return {str(c): [str(n) for n in names] for c, names in seqs.items() if isinstance(names, list)}


def _cell(trial: pd.Series, names: list[str], folder: Path, stem: str) -> dict:
    """Write one camera's animation of `trial`; the cell says what is missing when it cannot."""
    renders = []
    for n in names:
        try:
            renders.append(_fit(images._to_u8(read_image(Path(trial["dir"]) / "renders" / f"{n}.png")[..., :3])))
        except DataError as exc:
            log.warning("%s; its camera's animation is left out", exc)
            return {"file": None, "note": f"renders/{n}.png missing or unreadable"}
    truth, _ = images.ground_truth([("", trial)], names)
    shown = [_fit(images._to_u8(truth[n])) for n in names if n in truth]
    with_truth = len(shown) == len(names) and all(t.shape == r.shape for t, r in zip(shown, renders))
    frames = [_frame(r, shown[t] if with_truth else None, t, len(names)) for t, r in enumerate(renders)]
    folder.mkdir(parents=True, exist_ok=True)
    write_animation(folder / f"{stem}.webp", frames)
    return {"file": f"{folder.name}/{stem}.webp", "frames": len(frames), "truth": with_truth,
            "note": "" if with_truth else "render only: ground truth not recorded for every step, or of another size"}


def _fit(img: np.ndarray) -> np.ndarray:
    """At most ANIM_WIDTH wide (aspect kept)."""
    h, w = img.shape[:2]
    if w <= ANIM_WIDTH:
        return img
    small = Image.fromarray(img).resize((ANIM_WIDTH, max(1, round(h * ANIM_WIDTH / w))), Image.Resampling.LANCZOS)
    return np.asarray(small)


def _frame(render: np.ndarray, truth: np.ndarray | None, t: int, n: int) -> Image.Image:
    """render | truth, over a bar as long as the time elapsed. The bar also keeps consecutive frames
    distinct (while the frame is wider than the steps are many): the encoder merges identical ones, and
    the file should have one frame per time step."""
    h, w = render.shape[:2]
    width = w if truth is None else 2 * w + GAP
    canvas = np.full((h + STRIP, width, 3), 255, np.uint8)
    canvas[:h, :w] = render
    if truth is not None:
        canvas[:h, w + GAP:] = truth
    canvas[h + 1:, :max(1, round(width * (t + 1) / n))] = STRIP_COLOUR
    return Image.fromarray(canvas)


def write_animation(path: Path, frames: list[Image.Image]) -> None:
    """Lossless animated WebP (exact colours, unlike GIF's 256), FRAME_MS per frame, looping forever."""
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0,
                   lossless=True)
    atomic_write_bytes(path, buf.getvalue())
