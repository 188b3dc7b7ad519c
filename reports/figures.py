"""Seaborn/matplotlib figures of a report, each saved as PNG and SVG; functions return a `Figure`.

Intervals drawn here are the same Student-t 95% intervals over seeds as in the tables
(reports.aggregate.t_interval), not seaborn's bootstrap.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from reports.aggregate import pareto_front, t_interval
from reports.collect import HIGHER_IS_BETTER, fmt_value

MAX_HUES = 8  # lines per panel before the rest are left out (said in the caption)
MAX_BOXES = 24


@dataclass
class Figure:
    name: str  # file stem under the assets folder
    title: str
    caption: str = ""

    @property
    def png(self) -> str:
        return f"{self.name}.png"

    @property
    def svg(self) -> str:
        return f"{self.name}.svg"


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)[:80]


def _save(fig, out_dir: Path, name: str, title: str, caption: str = "") -> Figure:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=100)
    fig.set_layout_engine("none")  # laid out (constrained) by the first save; the SVG reuses it
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text: smaller, faster, editable
        fig.savefig(out_dir / f"{name}.svg")
    plt.close(fig)
    return Figure(name, title, caption)


def _label(metric: str) -> str:
    return f"{metric.upper()} {'↑' if HIGHER_IS_BETTER.get(metric, True) else '↓'}"


def _panels(n: int, width: float = 4.6, height: float = 3.3, cols: int = 3):
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax in axs.flat[n:]:
        ax.set_visible(False)
    return fig, list(axs.flat[:n])


def _numeric(series: pd.Series) -> bool:
    if not len(series) or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                  for v in series):
        return False  # strings, Gin references, tuples: categorical
    return bool(pd.to_numeric(series, errors="coerce").notna().all())


def _mean_band(ax, x, groups, color, label):
    """Mean line with a t-interval band; `groups` is an iterable of (x value, values)."""
    pts = [(xv, *t_interval(v)[:2]) for xv, v in groups]
    pts.sort(key=lambda p: p[0])
    xs = np.array([p[0] for p in pts], dtype=float)
    m = np.array([p[1] for p in pts])
    h = np.nan_to_num(np.array([p[2] for p in pts]), nan=0.0)
    ax.plot(xs, m, marker="o", ms=4, color=color, label=label, lw=1.5)
    ax.fill_between(xs, m - h, m + h, color=color, alpha=0.2, lw=0)
    return float(np.nanmin(m - h)) if len(m) else float("nan")


def metric_vs_axis(trials: pd.DataFrame, axis: str, metric: str, out_dir: Path,
                   axes: list[str] | tuple = ()) -> Figure | None:
    """Mean metric against one swept axis per scene; lines per combination of the other `axes`."""
    data = trials[(trials["state"] == "done") & trials[metric].notna()]
    if axis not in data or data[axis].isna().all():
        return None
    data = data[data[axis].notna()]
    exp_axes = [a for a in axes if a != axis and a in data]
    data = data.assign(_other=data[exp_axes].map(fmt_value).agg(", ".join, axis=1) if exp_axes else "")
    scenes = list(dict.fromkeys(data["scene"]))
    if not scenes:
        return None
    _theme()
    fig, axs = _panels(len(scenes))
    numeric = _numeric(data[axis])
    hues = list(dict.fromkeys(data["_other"]))
    shown = hues[:MAX_HUES]
    palette = sns.color_palette("colorblind", len(shown))
    for ax, scene in zip(axs, scenes):
        d = data[data["scene"] == scene]
        for color, hue in zip(palette, shown):
            h = d[d["_other"] == hue]
            if h.empty:
                continue
            if numeric:
                x = pd.to_numeric(h[axis])
                _mean_band(ax, x, [(xv, h.loc[x == xv, metric]) for xv in x.unique()], color, hue or None)
            else:
                cats = list(dict.fromkeys(data[axis].astype(str)))
                pos = {c: i for i, c in enumerate(cats)}
                xs = h[axis].astype(str)
                pts = [(pos[c], *t_interval(h.loc[xs == c, metric])[:2]) for c in xs.unique()]
                pts.sort()
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                            yerr=np.nan_to_num([p[2] for p in pts]), fmt="o-", color=color, capsize=3,
                            label=hue or None, ms=4)
                ax.set_xticks(range(len(cats)), cats, rotation=30 if max(map(len, cats)) > 6 else 0)
        if numeric:
            x = pd.to_numeric(d[axis])
            pos = x[x > 0]
            if len(pos) and pos.max() / pos.min() >= 100 and (x >= 0).all():
                ax.set_xscale("symlog", linthresh=float(pos.min()))
        ax.set_xlabel(axis)
        ax.set_ylabel(_label(metric))
        ax.set_title(scene if len(scenes) > 1 else f"{metric.upper()} vs {axis}")
    if len(shown) > 1:
        handles, labels = axs[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, title_fontsize=7,
                   title=", ".join(a.split(".")[-1] for a in exp_axes))
        w, h = fig.get_size_inches()
        fig.set_size_inches(w + 0.06 * max(map(len, labels + [""])) + 0.8, h)  # room for the legend
    caption = "mean over seeds, band: 95% t-interval"
    if len(hues) > len(shown):
        caption += f"; first {len(shown)} of {len(hues)} combinations of the other axes shown"
    return _save(fig, out_dir, _safe(f"{metric}_vs_{axis}"), f"{metric.upper()} vs {axis}", caption)


def quality_vs_time(summary: pd.DataFrame, metric: str, out_dir: Path) -> Figure | None:
    """Variant means of `metric` against training time, per scene, with the Pareto front marked."""
    s = summary.dropna(subset=[f"{metric}_mean", "train_time_mean"])
    if s.empty:
        return None
    scenes = list(dict.fromkeys(s["scene"]))
    _theme()
    fig, axs = _panels(len(scenes), width=5.2, height=3.6)
    hib = HIGHER_IS_BETTER[metric]
    for ax, scene in zip(axs, scenes):
        d = s[s["scene"] == scene].reset_index(drop=True)
        front = pareto_front(d["train_time_mean"], d[f"{metric}_mean"], hib)
        ax.errorbar(d["train_time_mean"], d[f"{metric}_mean"], xerr=np.nan_to_num(d["train_time_ci"]),
                    yerr=np.nan_to_num(d[f"{metric}_ci"]), fmt="none", ecolor="#bbb", lw=1, zorder=1)
        ax.scatter(d.loc[~front, "train_time_mean"], d.loc[~front, f"{metric}_mean"], s=22, color="#7a8a99",
                   label="dominated", zorder=2)
        f = d[front].sort_values("train_time_mean")
        ax.plot(f["train_time_mean"], f[f"{metric}_mean"], "-o", color="#d1495b", ms=6, lw=1.5,
                drawstyle="steps-post", label="Pareto front", zorder=3)
        if len(d) <= 12:
            for _, r in d.iterrows():
                ax.annotate(str(r["variant"])[:28], (r["train_time_mean"], r[f"{metric}_mean"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        times = d["train_time_mean"]
        if (times > 0).all() and times.max() / times.min() > 20:
            ax.set_xscale("log")
        elif ax.get_xlim()[0] < 0:  # wide intervals of few seeds: no negative times
            ax.set_xlim(left=0)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(_label(metric))
        ax.set_title(scene)
        ax.legend(fontsize=7)
    return _save(fig, out_dir, _safe(f"{metric}_vs_train_time"), f"{metric.upper()} vs training time",
                 "variant means, bars: 95% t-intervals over seeds; red: not dominated in (time, quality)")


def per_view(views: pd.DataFrame, metric: str, out_dir: Path) -> Figure | None:
    """Distribution of per-view scores per variant (all seeds' views pooled), one panel per scene."""
    if views.empty or metric not in views:
        return None
    data = views[(views["state"] == "done") & views[metric].notna() & np.isfinite(views[metric])]
    if data.empty:
        return None
    scenes = list(dict.fromkeys(data["scene"]))
    _theme()
    variants = [v for v in data["variant"].cat.categories if v in set(data["variant"])]
    shown = variants[:MAX_BOXES]
    height = max(2.2, 0.28 * len(shown) + 1.0)
    fig, axs = plt.subplots(len(scenes), 1, figsize=(7.5, height * len(scenes)), squeeze=False, layout="constrained")
    for ax, scene in zip(axs.flat, scenes):
        d = data[(data["scene"] == scene) & data["variant"].isin(shown)].copy()
        d["variant"] = d["variant"].astype(str)
        order = [v for v in shown if v in set(d["variant"])]
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            sns.boxplot(data=d, y="variant", x=metric, order=order, ax=ax, color="#9ecae1", fliersize=2,
                        linewidth=0.8)
        ax.set_xlabel(_label(metric))
        ax.set_ylabel("")
        ax.set_title(f"{scene}: per-view {metric.upper()}")
        ax.tick_params(axis="y", labelsize=7)
    caption = "each box: the test views of all seeds of a variant"
    if len(variants) > len(shown):
        caption += f"; first {len(shown)} of {len(variants)} variants"
    return _save(fig, out_dir, _safe(f"per_view_{metric}"), f"per-view {metric.upper()}", caption)


CURVE_META = ("key", "step", "time", "variant", "scene", "seed")
LR_PREFIX = "lr/"
GRAD_PREFIX = "grad/"  # gradient health, grad/<group>/<statistic> (harness/run/gradients.py)
# train.jsonl columns that are not the training log's terms
NOT_TERMS = ("lr/", "grad_norm", GRAD_PREFIX, "model/", "val_")


def curve_columns(curves: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(the training log's terms: 'loss' first, then every other logged value such as each loss term,
    then validation scores; the learning rates 'lr/<group>'), among the columns with numbers."""
    cols = [c for c in curves.columns if c not in CURVE_META and curves[c].notna().any()
            and pd.api.types.is_numeric_dtype(curves[c])]
    terms = [c for c in cols if not c.startswith(NOT_TERMS)]
    terms = sorted(terms, key=lambda c: (c != "loss", c)) + sorted(c for c in cols if c.startswith("val_"))
    return terms, sorted(c for c in cols if c.startswith(LR_PREFIX))


def training_curves(curves: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Every term of the training log (the total loss, each loss term, validation scores), every
    learning rate and every parameter group's gradient norm against step, mean over seeds per variant:
    up to three figures, a panel per value."""
    if curves.empty or "step" not in curves:
        return []
    terms, rates = curve_columns(curves)
    norms = sorted(c for c in curves.columns if c.startswith(GRAD_PREFIX) and c.endswith("/norm")
                   and curves[c].notna().any())
    figs = [_curve_grid(curves, terms, out_dir, "training_curves", "training curves"),
            _curve_grid(curves, rates, out_dir, "learning_rates", "learning rates"),
            _curve_grid(curves, norms, out_dir, "gradient_norms", "gradient norms")]
    return [f for f in figs if f is not None]


def _curve_grid(curves: pd.DataFrame, columns: list[str], out_dir: Path, name: str, title: str) -> Figure | None:
    """A panel per (scene, column): mean over seeds per variant with a t-interval band."""
    if not columns:
        return None
    scenes = list(dict.fromkeys(curves["scene"]))
    panels = [(scene, col) for scene in scenes for col in columns]
    _theme()
    fig, axs = _panels(len(panels), width=4.8, height=3.2, cols=min(4, len(panels)))
    variants = [v for v in curves["variant"].cat.categories if v in set(curves["variant"])]
    shown = variants[:MAX_HUES]
    palette = sns.color_palette("colorblind", len(shown))
    for ax, (scene, col) in zip(axs, panels):
        d = curves[(curves["scene"] == scene) & curves[col].notna()]
        lows = []
        for color, v in zip(palette, shown):
            g = d[d["variant"] == v]
            if len(g):
                lows.append(_mean_band(ax, g["step"], [(s, g.loc[g["step"] == s, col]) for s in g["step"].unique()],
                                       color, str(v)[:40]))
        positive = lows and min(lows) > 0 and float(d[col].max()) / max(float(d[col].min()), 1e-30) > 20
        if positive and not col.startswith("val_"):  # log when the values span decades and no band reaches 0
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(_curve_label(col))
        ax.set_title(f"{scene}: {_curve_label(col)}" if len(scenes) > 1 else _curve_label(col), fontsize=9)
    if len(shown) > 1:
        handles, labels = axs[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    caption = "mean over seeds, band: 95% t-interval; from each trial's train.jsonl"
    if len(variants) > len(shown):
        caption += f"; first {len(shown)} of {len(variants)} variants"
    return _save(fig, out_dir, name, title, caption)


def _curve_label(col: str) -> str:
    return {"loss": "training loss (total)", "val_psnr": "validation PSNR", "val_ssim": "validation SSIM",
            "val_lpips": "validation LPIPS"}.get(col, col)


def _separate_partitions(key: tuple, blocks: dict) -> tuple:
    """Records without the partition's centres: a block whose index its panel already shows at another
    place belongs to another partition, so it goes to the first panel of that scene and size that shows
    its index at its place or not at all."""
    base, rest = key[0], key[1:]
    for n in range(len(blocks) + 1):
        panel = base if n == 0 else (*base, n)
        same = [k for k in blocks if k[0] == panel and k[1] == key[1]]
        if not same or (panel, *rest) in blocks:
            return (panel, *rest)
    raise AssertionError("unreachable: more panels than blocks")


def block_map(trials: pd.DataFrame, out_dir: Path, metric: str = "psnr") -> Figure | None:
    """Top-down (x, y) map of Block-NeRF blocks: circles of each block's radius coloured by its
    mean metric over trials, and the cameras assigned to each block. Needs metrics.json 'block'."""
    rows = trials[trials["block"].notna()] if "block" in trials else trials.iloc[:0]
    blocks: dict[tuple, dict] = {}
    for _, r in rows.iterrows():
        b = r["block"]
        try:
            center = [float(c) for c in b["center"]][:2]
            radius = float(b["radius"])
            # one panel per scene and partition: blocks of different partitions (n_blocks, or the
            # centres of all blocks where the record lists them) differ
            panel = (str(r["scene"]), str(b.get("n_blocks", "")), json.dumps(b.get("partition")))
            key = (panel, int(b["index"]), round(center[0], 3), round(center[1], 3), round(radius, 3))
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if key not in blocks:
            key = _separate_partitions(key, blocks)
        entry = blocks.setdefault(key, {"center": center, "radius": radius, "values": [], "cameras": []})
        if r["state"] == "done" and np.isfinite(r[metric]):
            entry["values"].append(r[metric])
        if not entry["cameras"]:
            entry["cameras"] = [c[:2] for c in b.get("cameras") or [] if isinstance(c, (list, tuple)) and len(c) >= 2]
    if not blocks:
        return None
    panels = list(dict.fromkeys(k[0] for k in blocks))
    _theme()
    sns.set_style("white")
    pts = []
    for b in blocks.values():
        c, r = np.asarray(b["center"]), b["radius"]
        pts += [c - r, c + r, *np.asarray(b["cameras"], dtype=float).reshape(-1, 2)]
    span = np.ptp(np.asarray(pts), axis=0) + 1e-9
    aspect = float(np.clip(span[1] / span[0], 0.15, 3.0))  # height / width of the map
    wide = aspect < 0.7
    width = 8.0 if wide else 5.6
    fig, axs = _panels(len(panels), width=width, height=width * aspect + 1.6, cols=1 if wide else 2)
    means = [np.mean(b["values"]) for b in blocks.values() if b["values"]]
    norm = matplotlib.colors.Normalize(min(means, default=0), max(means, default=1) + 1e-9)
    cmap = matplotlib.colormaps["viridis"]
    for ax, panel in zip(axs, panels):
        mine = sorted(((k[1], b) for k, b in blocks.items() if k[0] == panel), key=lambda x: x[0])
        for idx, b in mine:
            val = np.mean(b["values"]) if b["values"] else None
            face = cmap(norm(val)) if val is not None else (0.85, 0.85, 0.85, 1)
            ax.add_patch(plt.Circle(b["center"], b["radius"], facecolor=(*face[:3], 0.35), edgecolor=face,
                                    lw=1.5))
            cams = np.asarray(b["cameras"], dtype=float).reshape(-1, 2)
            if len(cams):
                ax.scatter(cams[:, 0], cams[:, 1], s=7, color=face, edgecolor="#333", linewidth=0.3, zorder=3)
            ax.annotate(f"block {idx}\n{val:.2f}" if val is not None else f"block {idx}\n–", b["center"],
                        ha="center", va="center", fontsize=8, weight="bold", zorder=4,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.autoscale_view()
        ax.set_aspect("equal", adjustable="datalim")  # fill the panel; the limits grow instead
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        part = f", {panel[1]}-block partition" if panel[1] else ""
        siblings = [p for p in panels if p[:2] == panel[:2]]
        part += f" {siblings.index(panel) + 1}" if len(siblings) > 1 else ""
        ax.set_title(f"{panel[0]}{part}: top view")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axs, label=f"block {metric.upper()}",
                 shrink=0.8, location="bottom" if wide else "right", aspect=40 if wide else 20)
    return _save(fig, out_dir, "block_map", "Block-NeRF blocks",
                 f"circles: block centre and radius coloured by mean {metric.upper()} over done trials; dots: cameras")
