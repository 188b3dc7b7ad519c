"""Build the HTML report of one or more experiments from their records only.

Writes <out>/index.html (+ assets/ with the figures and images, or everything inlined as data URIs
with embed=True), trials.csv, views.csv, summary.csv, differences.csv, results.tex and bench.csv; plus
composed.csv and a "Composed results" section when the experiments have compose records
(runs/EXP/compose/, see harness/run/composition.py); plus temporal.csv, flicker.csv and a "Dynamic
scenes" section when trials were scored on a scene with time steps (reports/temporal.py).
"""

from __future__ import annotations

import base64
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from harness.core.paths import PROJECT_ROOT
from harness.core.records import atomic_write_bytes, now_iso
from reports import aggregate, bench, collect, figures, images, provenance, tables, temporal
from reports import search as search_report

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".webp": "image/webp"}


def default_bench_paths() -> list[Path]:
    """bench.json in the project root, as `make bench` writes it, when present."""
    p = PROJECT_ROOT / "bench.json"
    return [p] if p.is_file() else []


def _results_rows(summary: pd.DataFrame, metrics: list[str]) -> dict[str, list[dict]]:
    by_scene: dict[str, list[dict]] = {}
    for _, r in summary.iterrows():
        states = {k: r["states"][k] for k in sorted(r["states"]) if k != "done"}
        cells = []
        for m in metrics:
            n = int(r[f"{m}_n"])
            cells.append({"text": tables.mean_ci(r[f"{m}_mean"], r[f"{m}_ci"], tables.DIGITS[m]),
                          "best": bool(r[f"{m}_best"]), "metric": m, "n": n,
                          "missing": n < r["n_done"], "mean": r[f"{m}_mean"], "ci": r[f"{m}_ci"]})
        by_scene.setdefault(r["scene"], []).append({
            "variant": str(r["variant"]), "n_done": int(r["n_done"]), "n_total": int(r["n_total"]),
            "others": ", ".join(f"{v} {k}" for k, v in states.items()), "cells": cells,
            "time": tables.mean_ci(r["train_time_mean"], r["train_time_ci"], 1),
            "seeds": ", ".join(map(str, r["seeds"]))})
    return by_scene


def _diff_rows(diffs: pd.DataFrame, metrics: list[str]) -> list[dict]:
    rows = []
    for _, r in diffs.iterrows():
        cells = []
        for m in metrics:
            d = tables.DIGITS[m]
            delta = r[f"{m}_delta"]
            sign = "+" if isinstance(delta, float) and delta > 0 else ""
            text = tables.mean_ci(delta, r[f"{m}_ci"], d)
            p = r[f"{m}_p"]
            cells.append({"text": (sign + text) if text != "–" else text, "verdict": r[f"{m}_verdict"],
                          "test": r[f"{m}_test"], "p": tables.num(p, 3) if not math.isnan(p) else "–"})
        rows.append({"scene": r["scene"], "variant": str(r["variant"]), "cells": cells})
    return rows


def _trial_rows(trials: pd.DataFrame, axes: list[str], metrics: list[str]) -> list[dict]:
    rows = []
    for r in trials.to_dict("records"):
        state = r["state"]
        shown = state
        if state == "running" and isinstance(r.get("progress"), str):
            shown = f"running ({r['progress']})"
        cells = []
        for m in metrics:
            v = r[m]
            if state == "done" and (v is None or math.isnan(v)):
                cells.append({"text": "missing", "cls": "missing"})
            else:  # values of a trial that is not done (e.g. from an earlier attempt) are greyed
                cells.append({"text": tables.num(v, tables.DIGITS[m]), "cls": "" if state == "done" else "old"})
        rows.append({"id": r["id"], "experiment": r["experiment"], "state": state, "shown": shown,
                     "variant": str(r["variant"]), "scene": r["scene"], "seed": r["seed"],
                     "axes": [collect.fmt_or_dash(r.get(a)) for a in axes],
                     "cells": cells, "time": tables.num(r["train_time"], 1),
                     "error": (r["error"] or "").splitlines()[0][:200] if isinstance(r["error"], str) else "",
                     "stale": not bool(r["current"]), "code_stale": bool(r.get("code_stale")),
                     "code": r.get("code") or ""})
    return rows


COMPOSED_EXTRA = {"blocks_rendered_mean": ("blocks / view", 2), "seam_psnr_overlap": ("seam PSNR overlap", 2),
                  "seam_psnr_interior": ("seam PSNR interior", 2)}


def _composed_frame(runs_dir: Path, experiments: list[str]) -> pd.DataFrame:
    """Every experiment's compose records (collect.collect_composed), with a `label` column: the group
    bindings that differ between rows (seed left out) and the composition variant."""
    frames = [f for e in experiments if len(f := collect.collect_composed(runs_dir, e))]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    fixed = {"experiment", "id", "variant", "seed", *collect.COMPOSED_VALUES}
    keys = [c for c in frame.columns if c not in fixed]
    several = len(experiments) > 1
    labels = []
    for r, body in zip(frame.to_dict("records"), collect.differing_labels(frame[keys].to_dict("records"))):
        label = f"{body} · {r['variant']}" if body else r["variant"]
        labels.append(f"{r['experiment']}: {label}" if several else label)
    frame.insert(2, "label", labels)
    return frame


def _composed_section(frame: pd.DataFrame) -> dict | None:
    """Rows of the composed table: per label, mean ± 95% t-interval over seeds and the best per metric,
    as the results table (aggregate.summarize, every row in one table)."""
    if frame.empty:
        return None
    metrics = [m for m in collect.METRICS if frame[m].notna().any()]
    extra = [k for k in COMPOSED_EXTRA if frame[k].notna().any()]
    records = frame.rename(columns={"variant": "compose_variant"}).assign(scene="", variant=frame["label"],
                                                                          state="done")
    summary = aggregate.summarize(records, metrics, extra=extra)
    columns = [(m, tables.metric_header(m), tables.DIGITS[m]) for m in metrics]
    columns += [(k, *COMPOSED_EXTRA[k]) for k in extra]
    by_label = dict(tuple(records.groupby("label", sort=False)))
    rows = []
    for _, r in summary.iterrows():
        g = by_label[r["variant"]]
        cells = [{"key": key, "mean": r[f"{key}_mean"], "ci": r[f"{key}_ci"], "n": int(r[f"{key}_n"]),
                  "best": bool(r.get(f"{key}_best", False)),  # extra columns are not ranked
                  "text": tables.mean_ci(r[f"{key}_mean"], r[f"{key}_ci"], digits)}
                 for key, _, digits in columns]
        seam_n = [f"{int(v)}" for v in (g["seam_n_overlap"].max(), g["seam_n_interior"].max())
                  if collect.finite(v)]
        rows.append({"label": r["variant"], "variant": str(g["compose_variant"].iloc[0]), "n": len(g),
                     "seeds": ", ".join(collect.fmt_or_dash(s) for s in g["seed"].tolist()), "cells": cells,
                     "ids": ", ".join(g["id"]), "seam_n": "/".join(seam_n) if len(seam_n) == 2 else "–"})
    return {"columns": [{"key": k, "header": h} for k, h, _ in columns], "rows": rows, "n_records": len(frame)}


def _figures(col: collect.Collected, summary: pd.DataFrame, assets: Path) -> list[figures.Figure]:
    metrics = col.metrics
    figs: list[figures.Figure] = []
    for exp, exp_axes in col.axes.items():
        sub = col.trials[col.trials["experiment"] == exp]
        for axis in exp_axes:
            for m in metrics:
                if (f := figures.metric_vs_axis(sub, axis, m, assets, exp_axes)):
                    figs.append(f)
    primary = metrics[0] if metrics else None
    if primary and (f := figures.quality_vs_time(summary, primary, assets)):
        figs.append(f)
    for m in metrics:
        if (f := figures.per_view(col.views, m, assets)):
            figs.append(f)
    figs += figures.training_curves(col.curves, assets)
    if primary and (f := figures.block_map(col.trials, assets, primary)):
        figs.append(f)
    return figs


class _Assets:
    """Turns an asset path into what the page links to: 'assets/x' or a data URI."""

    def __init__(self, folder: Path, embed: bool):
        self.folder, self.embed = folder, embed

    def __call__(self, rel: str) -> str:
        if not self.embed:
            return f"assets/{rel}"
        data = (self.folder / rel).read_bytes()
        return f"data:{MIME.get(Path(rel).suffix, 'application/octet-stream')};base64,{base64.b64encode(data).decode()}"


def build_report(experiments: list[str], runs_dir: Path, out_dir: Path | None = None, *, embed: bool = False,
                 baseline: str | None = None, views: list[str] | None = None,
                 bench_paths: list[Path] | None = None) -> Path:
    """Write the report of `experiments` (records under `runs_dir`) and return the HTML path.

    bench_paths None: the project's bench.json when present; [] for none.
    """
    t0 = time.perf_counter()
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir) if out_dir else runs_dir / experiments[0] / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    col = collect.collect(runs_dir, experiments)
    trials, metrics = col.trials, col.metrics
    summary = aggregate.summarize(trials, metrics)
    variants = [str(v) for v in trials["variant"].cat.categories]
    base = aggregate.pick_baseline(variants, baseline)
    diffs = aggregate.baseline_differences(trials, metrics, base)
    composed = _composed_frame(runs_dir, experiments)
    log.info("collected %d trials and %d composed records in %.1f s", len(trials), len(composed),
             time.perf_counter() - t0)

    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir)) if embed else None
    assets = tmp if tmp is not None else out_dir / "assets"
    if not embed and assets.exists():
        shutil.rmtree(assets)  # the report's own folder: no figure of an older build survives
    assets.mkdir(parents=True, exist_ok=True)
    try:
        figs = _figures(col, summary, assets)
        grids = images.comparison_grids(trials, col.views, assets, views,
                                        metrics[0] if metrics else None)
        paths = default_bench_paths() if bench_paths is None else list(bench_paths)
        bench_section = bench.section(paths, assets) if paths else None
        searches = search_report.section(runs_dir, experiments, assets)  # Sweep.search studies, if any
        dynamic = temporal.section(trials, assets)  # trials with a `temporal` record only
        all_axes = col.all_axes
        env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters["num"] = tables.num
        html = env.get_template("report.html.j2").render(
            title=" vs ".join(experiments), generated=now_iso(), asset=_Assets(assets, embed), embed=embed,
            metrics=metrics, headers={m: tables.metric_header(m) for m in metrics},
            overview=provenance.overview(trials, col.sweeps), code=provenance.code_versions(trials),
            results=_results_rows(summary, metrics), baseline=base,
            diffs=_diff_rows(diffs, metrics), ranking=aggregate.ranking(summary, metrics),
            composed=_composed_section(composed), search=searches, temporal=dynamic,
            seams=[x for e in experiments for x in collect.collect_seam(runs_dir, e)],
            n_scenes=trials["scene"].nunique(), figures=figs, grids=grids, bench=bench_section,
            variants=provenance.per_variant(trials, col.configs), unfinished=provenance.unfinished(trials),
            protocols=provenance.protocols(trials), axes=all_axes,
            trials=_trial_rows(trials, all_axes, metrics), n_trials=len(trials),
            counts=trials["state"].value_counts().to_dict())
        out = out_dir / "index.html"
        atomic_write_bytes(out, html.encode())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    tables.write_csv(out_dir / "trials.csv", trials[tables.trial_columns(trials, all_axes, metrics)])
    if len(col.views):
        tables.write_csv(out_dir / "views.csv", col.views)
    tables.write_csv(out_dir / "summary.csv", summary.drop(columns=["states"]))
    if len(composed):
        tables.write_csv(out_dir / "composed.csv", composed)
    if searches:
        tables.write_csv(out_dir / "search.csv", pd.concat([s["frame"] for s in searches["studies"]]))
    if dynamic is not None:
        tables.write_csv(out_dir / "temporal.csv", dynamic["steps"])
        if len(dynamic["flicker_frame"]):
            tables.write_csv(out_dir / "flicker.csv", dynamic["flicker_frame"])
    if len(diffs):
        tables.write_csv(out_dir / "differences.csv", diffs.assign(baseline=base))
    atomic_write_bytes(out_dir / "results.tex", tables.latex_results(summary, metrics).encode())
    if bench_section is not None and len(bench_section["frame"]):
        tables.write_csv(out_dir / "bench.csv", bench_section["frame"])
    log.info("report of %d trials written in %.1f s: %s", len(trials), time.perf_counter() - t0, out)
    return out
