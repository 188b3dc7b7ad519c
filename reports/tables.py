"""Number formatting shared by the HTML page, and the CSV / LaTeX exports."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.core.records import atomic_write_bytes
from reports.collect import HIGHER_IS_BETTER

DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "train_time": 1}


def num(value, digits: int) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}f}"


def mean_ci(mean, ci, digits: int) -> str:
    """'25.12 ± 0.34', or just the mean when there is no interval (one seed)."""
    m = num(mean, digits)
    c = num(ci, digits)
    return m if m == "–" or c == "–" else f"{m} ± {c}"


def metric_header(metric: str) -> str:
    return f"{metric.upper()} {'↑' if HIGHER_IS_BETTER.get(metric, True) else '↓'}"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


def latex_results(summary: pd.DataFrame, metrics: list[str]) -> str:
    """One booktabs tabular per scene: variant, mean ± 95% CI per metric (best in bold)."""
    parts = []
    for scene, s in summary.groupby("scene", sort=False):
        cols = "l" + "c" * (len(metrics) + 1)
        head = " & ".join(["Variant", *(f"{m.upper()} $\\{'uparrow' if HIGHER_IS_BETTER[m] else 'downarrow'}$"
                                        for m in metrics), "Train time (s)"])
        lines = [f"% scene: {scene}; mean $\\pm$ 95\\% t-interval over seeds",
                 f"\\begin{{tabular}}{{{cols}}}", "\\toprule", head + " \\\\", "\\midrule"]
        for _, r in s.iterrows():
            cells = [_latex_escape(str(r["variant"]))]
            for m in metrics:
                d = DIGITS[m]
                txt = mean_ci(r[f"{m}_mean"], r[f"{m}_ci"], d).replace(" ± ", " \\pm ").replace("–", "--")
                txt = f"${txt}$" if txt != "--" else txt
                cells.append(f"\\textbf{{{txt}}}" if r[f"{m}_best"] else txt)
            cells.append(num(r["train_time_mean"], 1).replace("–", "--"))
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def trial_columns(trials: pd.DataFrame, axes: list[str], metrics: list[str]) -> list[str]:
    first = ["experiment", "id", "state", "variant", "scene", "seed", *axes, *metrics, "train_time",
             "eval_time", "iterations", "attempts", "error", "host", "gpu", "git_commit", "code", "code_stale",
             "started", "finished"]
    return [c for c in dict.fromkeys(first) if c in trials]
