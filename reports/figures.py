"""Seaborn figures for reports, each saved as PNG (and SVG) and returned as a relative path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _save(fig, out_dir: Path, name: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out_dir / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)
    return f"{out_dir.name}/{name}.png"


def _numeric(series: pd.Series) -> bool:
    return pd.to_numeric(series, errors="coerce").notna().all()


def metric_vs_axis(df: pd.DataFrame, axis: str, metric: str, out_dir: Path) -> str | None:
    """Mean metric against one swept axis, 95% CI band over the other trials (seeds)."""
    data = df[df["state"] == "done"].dropna(subset=[metric])
    if data.empty or axis not in data.columns:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if _numeric(data[axis]):
        x = pd.to_numeric(data[axis])
        sns.lineplot(x=x, y=data[metric], marker="o", errorbar=("ci", 95), ax=ax)
        positive = x[x > 0]
        if len(positive) and positive.max() / positive.min() >= 100:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
            ax.set_xlim(left=-0.3 * float(positive.min()) if (x == 0).any() else None)  # no empty negative side
    else:
        sns.pointplot(x=data[axis].astype(str), y=data[metric], errorbar=("ci", 95), ax=ax)
    ax.set_xlabel(axis)
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} vs {axis}")
    safe = "".join(c if c.isalnum() else "_" for c in f"{metric}_vs_{axis}")
    return _save(fig, out_dir, safe)


def training_curves(curves: pd.DataFrame, labels: dict, out_dir: Path) -> str | None:
    if curves.empty or "loss" not in curves.columns:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 3.4))
    data = curves.dropna(subset=["loss"]).copy()
    data["trial"] = data["id"].map(lambda i: labels.get(i, i))
    sns.lineplot(data=data, x="step", y="loss", hue="trial", ax=ax, linewidth=1)
    ax.set_yscale("log")
    ax.legend(fontsize=6, loc="upper right")
    ax.set_title("training loss")
    return _save(fig, out_dir, "training_loss")


def mean_ci(values: pd.Series) -> tuple[float, float]:
    """Mean and the half-width of the 95% t-interval (nan with fewer than 2 values)."""
    from scipy import stats

    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy()
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) < 2:
        return float(v.mean()), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half)
