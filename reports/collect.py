"""Collect trial records into pandas DataFrames; tolerant of running/failed/missing records."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from harness.errors import RecordError
from harness.records import TrialRecord, read_json

log = logging.getLogger(__name__)
METRICS = ("psnr", "ssim", "lpips")


def _read(path: Path) -> dict | None:
    try:
        return read_json(path)
    except RecordError as exc:
        log.warning("%s; shown as missing", exc)
        return None


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _trial_dirs(exp_dir: Path) -> list[Path]:
    sweep = _read(exp_dir / "sweep.json")
    if sweep:  # the sweep's own order; trials of an older version of the sweep are kept after it
        ordered = [exp_dir / t["id"] for t in sweep["trials"]]
        extra = sorted(p.parent for p in exp_dir.glob("*/status.json") if p.parent not in ordered)
        return [d for d in ordered if d.exists()] + extra
    return sorted(p.parent for p in exp_dir.glob("*/status.json"))


def collect_trials(runs_dir: Path, experiment: str) -> pd.DataFrame:
    """One row per trial: id, experiment, state, each swept binding, metrics, times, error."""
    exp_dir = Path(runs_dir) / experiment
    current = {t["id"] for t in (_read(exp_dir / "sweep.json") or {}).get("trials", [])}
    rows = []
    for d in _trial_dirs(exp_dir):
        status = _read(d / "status.json") or {"state": "unknown"}
        metrics = _read(d / "metrics.json") or {}
        progress = _read(d / "progress.json") or {}
        row = {"experiment": experiment, "id": d.name, "state": status.get("state", "unknown"),
               "label": status.get("label", ""), "attempts": status.get("attempts", 0),
               "current": (d.name in current) if current else True,
               "error": status.get("error"), "host": status.get("host"),
               "git_commit": status.get("git_commit"), "started": status.get("started"),
               "finished": status.get("finished"), "slurm_job_id": status.get("slurm_job_id")}
        for key, value in (status.get("bindings") or {}).items():
            row[key] = value
        for m in METRICS:
            row[m] = _as_float(metrics.get(m))
        row["train_time"] = _as_float(metrics.get("train_time"))
        row["iterations"] = metrics.get("iterations")
        if progress and row["state"] == "running":
            row["progress"] = f"{progress.get('phase', '')} {progress.get('step')}/{progress.get('total')}"
        rows.append(row)
    return pd.DataFrame(rows)


def collect_views(runs_dir: Path, experiment: str) -> pd.DataFrame:
    """One row per (trial, test view) with the per-view metrics."""
    exp_dir = Path(runs_dir) / experiment
    rows = []
    for d in _trial_dirs(exp_dir):
        per_view = (_read(d / "metrics.json") or {}).get("per_view", {})
        for view, vals in per_view.items():
            rows.append({"experiment": experiment, "id": d.name, "view": view,
                         **{m: _as_float(vals.get(m)) for m in METRICS if m in vals}})
    return pd.DataFrame(rows)


def axis_columns(df: pd.DataFrame, runs_dir: Path, experiment: str) -> list[str]:
    """The swept bindings of an experiment (from sweep.json), in order, without the seed."""
    sweep = _read(Path(runs_dir) / experiment / "sweep.json") or {}
    keys = []
    for t in sweep.get("trials", []):
        for k in t["bindings"]:
            if k not in keys and k != "seed":
                keys.append(k)
    return [k for k in keys if k in df.columns]


def training_curves(runs_dir: Path, experiment: str) -> pd.DataFrame:
    """train.jsonl of every trial, concatenated (one row per logged step)."""
    rows = [{"id": d.name, **entry} for d in _trial_dirs(Path(runs_dir) / experiment)
            for entry in TrialRecord(d).read_log()]
    return pd.DataFrame(rows)
