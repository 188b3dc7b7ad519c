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
from typing import NamedTuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox
from PIL import Image

from harness.core.data.images import read_image
from harness.core.errors import DataError, RecordError
from harness.core.records import atomic_write_bytes, read_json
from reports import figures, images
from reports.aggregate import t_interval
from reports.collect import METRICS, _short_ok, fmt_value, natural_key

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
    bindings = variant_bindings(trials[trials["key"].isin(found)])
    labels = variant_labels(bindings, [v for v in variants if v in bindings])
    curves = step_curves(steps, variants, out_dir, labels)
    points = tradeoff_points(flicker, variants)
    tradeoff = tradeoff_figure(points, bindings, out_dir, labels)
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


def step_curves(steps: pd.DataFrame, variants: list[str], out_dir: Path,
                labels: dict[str, str] | None = None) -> figures.Figure | None:
    """A panel per (scene, metric): the score of each time step, mean over seeds per variant, named in the
    legend by `labels` (variant_labels; else its name)."""
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
                groups = [(t, g.loc[g["time_step"] == t, m]) for t in g["time_step"].unique()]
                figures._mean_band(ax, g["time_step"], groups, color, (labels or {}).get(v, v))
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


def _text(value) -> str:
    return "default" if value is _MISSING else fmt_value(value)


def _binding_text(key: str, value, names: list[str]) -> str:
    """`key=value` (the experiment by its name; `lr` for `M.lr` when no other of `names` ends in `lr`)."""
    if key == "experiment":
        return str(value)
    return f"{key.split('.')[-1] if _short_ok(key, names) else key}={_text(value)}"


def _table(bindings: dict[str, dict], names: list[str]) -> tuple[dict[str, dict], list[str]]:
    """(variant -> binding -> value, _MISSING where the variant lacks it; the bindings whose values differ
    between the variants, the experiment first)."""
    keys = list(dict.fromkeys(k for v in names for k in bindings[v]))
    keys.sort(key=lambda k: k != "experiment")
    value = {v: {k: bindings[v].get(k, _MISSING) for k in keys} for v in names}
    return value, [k for k in keys if len({repr(value[v][k]) for v in names}) > 1]


def variant_labels(bindings: dict[str, dict], variants: list[str]) -> dict[str, str]:
    """Variant -> its compact label for the temporal figures. The first variant (of `variants` with
    bindings: the reference row) gets every binding that varies across them ("FeatureTemporal.weight=0,
    FlowConsistency.weight=0"); each other variant the varying bindings whose value differs from the
    reference's ("FlowConsistency.weight=0.3"). A variant without bindings, or whose label another variant
    also gets, keeps its name."""
    names = [v for v in variants if v in bindings]
    out = {v: v for v in variants}
    if len(names) > 1:
        value, varying = _table(bindings, names)
        ref = value[names[0]]
        for i, v in enumerate(names):
            shown = [k for k in varying if i == 0 or _text(value[v][k]) != _text(ref[k])]
            out[v] = ", ".join(_binding_text(k, value[v][k], varying) for k in shown) or v
    taken: dict[str, int] = {}
    for label in out.values():
        taken[label] = taken.get(label, 0) + 1
    return {v: label if taken[label] == 1 else v for v, label in out.items()}


class Line(NamedTuple):
    """A line of the trade-off figure."""
    axis: str  # the binding it runs along
    label: str  # its legend entry: "along <axis>", plus what tells it from the axis's other lines
    members: list[str]  # its variants, in increasing order of the axis's value


def tradeoff_lines(bindings: dict[str, dict]) -> list[Line]:
    """How to connect a scene's variants (variant -> bindings): the lines, each joining the variants that
    differ in one numeric binding only (the line's axis), in increasing order of its value. Every numeric
    binding along which the variants form such lines is an axis, in binding order (unless two variants of
    one of its lines share its value: which to join is ambiguous); its lines are one per combination of the
    other bindings' values with two variants or more, labelled "along <axis>", plus those values
    ("along M.w, lr=0.01") when the axis has several lines.

    Which axes are drawn: all of them when the lines of different axes meet in at most one variant per
    line, as in a sweep of one binding at a time around a reference (the zipped sweep (0, 0), (0.1, 0),
    (1, 0), (0, 1e-4): a line along each weight, both through the reference (0, 0)); otherwise (a grid,
    whose lines along one axis cross those along another at several variants, a mesh too busy to read)
    only the first axis's, a line per value of the other bindings. When no binding gives a line but every
    binding that differs is numeric and all of them order the variants alike (a sweep zipping them
    together), the variants form one line along the first of them ("along A and B"). Else, or with fewer
    than two variants: []."""
    names = list(bindings)
    if len(names) < 2:
        return []
    value, varying = _table(bindings, names)
    numeric = [k for k in varying if all(_number(value[v][k]) for v in names)]
    per_axis: list[list[Line]] = []
    for axis in numeric:
        groups: dict[tuple, list[str]] = {}
        for v in names:
            groups.setdefault(tuple(repr(value[v][k]) for k in varying if k != axis), []).append(v)
        if any(len({value[v][axis] for v in g}) < len(g) for g in groups.values()):
            continue  # two variants at one value along the axis: which to join is ambiguous
        joined = [g for g in groups.values() if len(g) > 1]
        lines = [Line(axis, f"along {axis}" + (f", {_shared_label(g[0], value, varying, axis)}" if len(joined) > 1
                                               else ""), sorted(g, key=lambda v: value[v][axis])) for g in joined]
        if lines:
            per_axis.append(lines)
    if per_axis:
        return [line for lines in per_axis for line in lines] if _meet_once(per_axis) else per_axis[0]
    if varying and numeric == varying:
        orders = {tuple(sorted(names, key=lambda v: value[v][k])) for k in varying}
        distinct = all(len({value[v][k] for v in names}) == len(names) for k in varying)
        if len(orders) == 1 and distinct:
            return [Line(varying[0], " and ".join(f"along {k}" if i == 0 else k for i, k in enumerate(varying)),
                         list(orders.pop()))]
    return []


def _meet_once(per_axis: list[list[Line]]) -> bool:
    """Each line has at most one variant that is also on a line of another axis."""
    axes: dict[str, set[str]] = {}
    for lines in per_axis:
        for line in lines:
            for v in line.members:
                axes.setdefault(v, set()).add(line.axis)
    return all(sum(len(axes[v]) > 1 for v in line.members) <= 1 for lines in per_axis for line in lines)


def _shared_label(v: str, value: dict, varying: list[str], axis: str) -> str:
    """The values of `v`'s varying bindings other than `axis` (those the variants of its line share)."""
    return ", ".join(_binding_text(k, value[v][k], varying) for k in varying if k != axis)


def tradeoff_figure(points: pd.DataFrame, bindings: dict[str, dict], out_dir: Path,
                    labels: dict[str, str] | None = None) -> figures.Figure | None:
    """A panel per scene: mean PSNR against the render's warping error, a point per variant with its label
    (`labels`, else variant_labels) and 95% t-intervals over seeds as bars; the truth's warping error as a
    dashed line; the lines of tradeoff_lines, each in its own colour with a legend entry naming the binding
    it runs along (a point on several lines, such as the reference they share, dark)."""
    points = points.dropna(subset=["warp_error", "psnr"]) if len(points) else points
    if points.empty:
        return None
    labels = labels or variant_labels(bindings, list(dict.fromkeys(points["variant"])))
    scenes = {scene: points[points["scene"] == scene].set_index("variant", drop=False)
              for scene in dict.fromkeys(points["scene"])}
    drawn = {scene: tradeoff_lines({v: bindings.get(v, {}) for v in d["variant"]}) for scene, d in scenes.items()}
    legend = max((len(line.label) for lines in drawn.values() for line in lines), default=0)
    figures._theme()  # a panel wider by its legend (beside it, at 7 pt: ~0.055 in a character)
    fig, axs = figures._panels(len(scenes), width=5.4 + (0.5 + 0.055 * legend if legend else 0), height=3.9)
    joined: dict[str, None] = {}
    shared = False  # a point on several lines
    placing = []
    for ax, (scene, d) in zip(axs, scenes.items()):
        lines = drawn[scene]
        palette = sns.color_palette("colorblind", max(1, len(lines)))
        on_line: dict[str, list] = {}
        for color, line in zip(palette, lines):
            ax.plot(d.loc[line.members, "warp_error"], d.loc[line.members, "psnr"], "-", color=color, lw=1.4,
                    zorder=2, label=line.label)
            joined.setdefault(line.axis)
            for v in line.members:
                on_line.setdefault(v, []).append(color)
        shared = shared or any(len(c) > 1 for c in on_line.values())
        ax.errorbar(d["warp_error"], d["psnr"], xerr=np.nan_to_num(d["warp_error_ci"]),
                    yerr=np.nan_to_num(d["psnr_ci"]), fmt="none", ecolor="#bbb", lw=1, zorder=1)
        ax.scatter(d["warp_error"], d["psnr"], s=24, zorder=3,
                   color=[on_line[v][0] if len(on_line.get(v, ())) == 1 else "#222" if v in on_line else "#5a6b7b"
                          for v in d["variant"]])
        floors = sorted({float(f"{x:.6g}") for x in d["warp_error_truth"] if np.isfinite(x)})
        notes = [ax.text(floor, 0.98, "truth floor ", rotation=90, fontsize=7, color="#444", ha="right", va="top",
                         transform=ax.get_xaxis_transform()) for floor in floors]
        for floor in floors:
            ax.axvline(floor, color="#444", ls="--", lw=1, zorder=0)
        if ax.get_xlim()[0] < 0:  # wide intervals of few seeds: no negative warping errors
            ax.set_xlim(left=0)
        ax.set_xlabel("flicker: warp error (render) ↓")
        ax.set_ylabel(figures._label("psnr"))
        ax.set_title(f"{scene}: flicker vs PSNR" if len(scenes) > 1 else "flicker vs PSNR", fontsize=9)
        if lines:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
        placing.append((ax, d, notes, lines))
    fig.canvas.draw()  # lays the panels out: the labels are placed where they neither overlap nor leave a panel
    for ax, d, notes, lines in placing:
        _place_labels(fig, ax, d, labels, notes, [line.members for line in lines])
    caption = ("each point: a variant, mean over seeds, bars: 95% t-interval, labelled by the bindings in which it "
               "differs from the first variant (that one by all the bindings that vary); further left (lower warp "
               "error) is better in flicker, higher is better in PSNR, so upper left is best; dashed: the truth "
               "floor, the ground truth's own warping error")
    if joined:
        caption += ("; each coloured line joins, in the order of its value, the variants that differ only in the "
                    f"binding it runs along, named in the legend ({', '.join(joined)})")
    if shared:
        caption += "; a dark point lies on several lines (the reference they share)"
    return figures._save(fig, out_dir, "temporal_tradeoff", "flicker vs PSNR", caption)


# where a point's label may go, in order of preference: (x, y) offset in points, alignment
LABEL_SPOTS = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
               (-4, -3, "right", "top"), (6, 0, "left", "center"), (-6, 0, "right", "center"),
               (0, 6, "center", "bottom"), (0, -6, "center", "top"))


def _place_labels(fig, ax, d: pd.DataFrame, labels: dict[str, str], notes: list, lines: list[list[str]]) -> None:
    """Label each point at the first of LABEL_SPOTS where its text stays in the panel and overlaps no point,
    note, label placed before it or line (of `lines`' variants); else where it overlaps least."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    at = {v: ax.transData.transform((x, y)) for v, x, y in zip(d["variant"], d["warp_error"], d["psnr"])}
    r = 4 * fig.dpi / 72  # a marker's half-width in pixels
    taken = [Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r) for x, y in at.values()]
    taken += [n.get_window_extent(renderer) for n in notes]
    # the lines as points 3 pixels apart
    track = np.concatenate([np.linspace(at[a], at[b], max(2, int(np.hypot(*(at[b] - at[a])) / 3)))
                            for members in lines for a, b in zip(members, members[1:])] or [np.empty((0, 2))])
    for v, x, y in zip(d["variant"], d["warp_error"], d["psnr"]):
        best = None
        for dx, dy, ha, va in LABEL_SPOTS:
            text = ax.annotate(labels.get(v, v), (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                               ha=ha, va=va, zorder=4)
            box = text.get_window_extent(renderer)
            crossed = int(np.count_nonzero((track[:, 0] >= box.x0) & (track[:, 0] <= box.x1)
                                           & (track[:, 1] >= box.y0) & (track[:, 1] <= box.y1)))
            cost = (10 * (_area(box) - _area(Bbox.intersection(box, frame))) + 30 * crossed
                    + sum(_area(Bbox.intersection(box, t)) for t in taken))
            if best is None or cost < best[0]:
                if best:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        assert best is not None
        taken.append(best[2])


def _area(box) -> float:
    return 0.0 if box is None else float(box.width * box.height)


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
