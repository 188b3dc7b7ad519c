"""Build the HTML report of one or more experiments from their records only."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from harness.errors import HarnessError
from harness.records import atomic_write_bytes, now_iso
from reports import collect, figures

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _experiment_section(runs_dir: Path, experiment: str, assets: Path) -> dict:
    df = collect.collect_trials(runs_dir, experiment)
    if df.empty:
        raise HarnessError(f"{Path(runs_dir) / experiment}: no trial records (run `make sweep EXP={experiment}` first)")
    axes = collect.axis_columns(df, runs_dir, experiment)
    metrics = [m for m in collect.METRICS if df[m].notna().any()]
    best = {}
    for m in metrics:
        col = df.loc[df["state"] == "done", m]
        if col.notna().any():
            best[m] = col.min() if m == "lpips" else col.max()
    rows = []
    for _, r in df.iterrows():
        rows.append({"id": r["id"], "state": r["state"], "axes": [_fmt(r.get(a), 6) for a in axes],
                     "seed": r.get("seed", ""),
                     "metrics": [(_fmt(r[m], 4 if m != "psnr" else 2), m in best and r[m] == best[m]) for m in metrics],
                     "train_time": _fmt(r["train_time"], 1), "error": r.get("error") or "",
                     "current": bool(r.get("current", True))})
    figs = [f for a in axes for m in metrics if (f := figures.metric_vs_axis(df, a, m, assets))]
    curves = collect.training_curves(runs_dir, experiment)
    labels = dict(zip(df["id"], df["label"]))
    if (f := figures.training_curves(curves, labels, assets)):
        figs.append(f)
    counts = df["state"].value_counts().to_dict()
    return {"name": experiment, "axes": axes, "metrics": metrics, "rows": rows, "figures": figs,
            "counts": counts, "n": len(df), "table": df}


def build_report(experiments: list[str], runs_dir: Path, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir) if out_dir else Path(runs_dir) / experiments[0] / "report"
    assets = out_dir / "assets"
    sections = [_experiment_section(Path(runs_dir), e, assets) for e in experiments]
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html.j2").render(sections=sections, generated=now_iso(),
                                                      title=" vs ".join(experiments))
    out = out_dir / "index.html"
    atomic_write_bytes(out, html.encode())
    table = pd.concat([s["table"] for s in sections], ignore_index=True)
    atomic_write_bytes(out_dir / "trials.csv", table.to_csv(index=False).encode())
    return out
