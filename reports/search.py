"""The "Search" section of a report: an experiment's Optuna studies (runs/EXP/search.json names them,
runs/EXP/study.journal holds them; harness/run/search.py) joined to their trials' records.

Per study: best-so-far against trials and against compute (cumulative training steps, from each
trial's train.jsonl: a pruned trial counts the steps it trained), the best trials' parameters, a
parallel-coordinates plot, parameter importances (Optuna's fANOVA; its default evaluator when
scikit-learn is missing) and the pruned trials with the step they stopped at.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reports import figures

log = logging.getLogger(__name__)
TOP = 5  # best trials listed per study


def _last_step_and_time(trial_dir: Path, upto: int | None = None) -> tuple[int, float]:
    """The last logged step of a trial (at most `upto`: where a study pruned it, although another
    experiment may have trained the same trial on since) and its training seconds then."""
    steps, seconds = 0, 0.0
    try:
        for line in (trial_dir / "train.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = int(row.get("step", 0))
            if (upto is None or step <= upto) and step >= steps:
                steps, seconds = step, max(seconds, float(row.get("time", 0.0)))
    except OSError:
        pass
    return steps, seconds


def collect_studies(runs_dir: Path, experiment: str) -> list[dict]:
    """One dict per study of the experiment's search: name, cell, objective, direction and `trials`, a
    frame (number, state, value, trial id, steps trained, train seconds, pruned_at, params...)."""
    exp_dir = Path(runs_dir) / experiment
    try:
        index = json.loads((exp_dir / "search.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    journal = exp_dir / str(index.get("storage", "study.journal"))
    if not journal.is_file():
        return []
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    out = []
    for entry in index.get("studies", []):
        try:
            study = optuna.load_study(study_name=entry["name"], storage=storage)
        except KeyError:
            continue
        rows = []
        for t in study.get_trials(deepcopy=False):
            tid = t.user_attrs.get("trial_id")
            pruned_at = t.last_step if t.state.name == "PRUNED" else None
            steps, seconds = _last_step_and_time(exp_dir / tid, pruned_at) if tid else (0, 0.0)
            rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "trial_id": tid,
                         "steps": steps, "train_s": seconds, "pruned_at": pruned_at, **t.params})
        frame = pd.DataFrame(rows)
        out.append({"experiment": experiment, "name": entry["name"], "cell": entry.get("cell", {}),
                    "objective": index.get("objective"), "direction": index.get("direction"),
                    "search": index.get("search", ""), "params": list(index.get("space", {})),
                    "study": study, "trials": frame})
    return out


def _best_so_far(frame: pd.DataFrame, maximize: bool) -> pd.Series:
    values = frame["value"].where(frame["state"] == "complete")
    return (values.cummax() if maximize else values.cummin()).ffill()


def section(runs_dir: Path, experiments: list[str], assets: Path) -> dict | None:
    """The template's `search` (None when no experiment has a search): per study, its summary, the
    best and the pruned trials, and the figures."""
    studies = [s for e in experiments for s in collect_studies(runs_dir, e)]
    if not studies:
        return None
    figures._theme()
    out = []
    for k, s in enumerate(studies):
        frame = s["trials"].sort_values("number").reset_index(drop=True)
        if not len(frame):
            continue
        maximize = s["direction"] != "minimize"
        frame["best_so_far"] = _best_so_far(frame, maximize)
        frame["compute_steps"] = frame["steps"].cumsum()
        done = frame[frame["state"] == "complete"].sort_values("value", ascending=not maximize)
        pruned = frame[frame["state"] == "pruned"]
        figs = [f for f in (_progress(s, frame, assets, k), _parallel(s, frame, assets, k),
                            _importances(s, assets, k)) if f is not None]
        out.append({
            "name": s["name"], "search": s["search"], "objective": s["objective"], "direction": s["direction"],
            "counts": frame["state"].value_counts().to_dict(), "steps": int(frame["steps"].sum()),
            "train_s": float(frame["train_s"].sum()), "params": s["params"],
            "best": [{"number": int(r["number"]), "value": r["value"], "id": r["trial_id"], "steps": int(r["steps"]),
                      "params": [r.get(p) for p in s["params"]]} for _, r in done.head(TOP).iterrows()],
            "pruned": [{"number": int(r["number"]), "id": r["trial_id"],
                        "at": int(r["pruned_at"]) if pd.notna(r["pruned_at"]) else None,
                        "value": _intermediate(s["study"], int(r["number"]), r["pruned_at"]),
                        "params": [r.get(p) for p in s["params"]]} for _, r in pruned.iterrows()],
            "figures": figs, "frame": frame.assign(study=s["name"])})
    return {"studies": out} if out else None


def _intermediate(study, number: int, step) -> float | None:
    if step is None or (isinstance(step, float) and math.isnan(step)):
        return None
    return study.get_trials(deepcopy=False)[number].intermediate_values.get(int(step))


def _progress(s: dict, frame: pd.DataFrame, out_dir: Path, k: int) -> figures.Figure | None:
    if frame["best_so_far"].notna().sum() == 0:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.2, 3.3), layout="constrained")
    colours = {"complete": "C0", "pruned": "C1", "fail": "C3"}
    for ax, x, label in ((a, "number", "trial"), (b, "compute_steps", "training steps (cumulative)")):
        ax.step(frame[x], frame["best_so_far"], where="post", color="k", label="best so far")
        for state, part in frame.groupby("state"):
            xs = part[x]
            ys = part["value"] if state == "complete" else [
                _intermediate(s["study"], int(n), st) for n, st in zip(part["number"], part["pruned_at"])]
            ax.scatter(xs, ys, s=14, color=colours.get(str(state), "C7"), label=str(state), zorder=3)
        ax.set_xlabel(label)
        ax.set_ylabel(str(s["objective"]))
    a.legend(fontsize=7)
    return figures._save(fig, out_dir, f"search_{k}_progress", f"{s['name']}: best so far",
                         "against trials and against compute (sum of the training steps the trials ran; "
                         "pruned trials at their last validation value)")


def _parallel(s: dict, frame: pd.DataFrame, out_dir: Path, k: int) -> figures.Figure | None:
    params = [p for p in s["params"] if p in frame]
    done = frame[frame["state"].isin(("complete", "pruned"))].copy()
    if len(done) < 2 or not params:
        return None
    shown = pd.DataFrame(index=done.index)
    for p in params:  # each axis scaled to [0, 1] (categories by their order)
        col = done[p]
        if not pd.api.types.is_numeric_dtype(col) or col.dtype == bool:
            col = col.astype("category").cat.codes.astype(float)
        elif (col > 0).all() and col.max() / max(col.min(), 1e-300) > 100:
            col = col.apply(math.log10)
        span = col.max() - col.min()
        shown[p.rsplit(".", 1)[-1] if p.count(".") else p] = (col - col.min()) / span if span else 0.5
    shown["outcome"] = ["pruned" if st == "pruned" else ("top half" if v is not None and not math.isnan(v) and
                        v >= done["value"].median() else "bottom half") for st, v in zip(done["state"], done["value"])]
    fig, ax = plt.subplots(figsize=(1.6 * len(params) + 2.5, 3.3), layout="constrained")
    colours = {"top half": "C2", "bottom half": "C0", "pruned": "C1"}
    axes = [c for c in shown.columns if c != "outcome"]
    for outcome, part in shown.groupby("outcome"):  # parallel coordinates: a line per trial
        for i, (_, row) in enumerate(part.iterrows()):
            ax.plot(range(len(axes)), row[axes].astype(float), color=colours[str(outcome)], alpha=0.7,
                    label=str(outcome) if i == 0 else None)
    ax.set_xticks(range(len(axes)), axes)
    ax.legend(fontsize=7)
    ax.set_ylabel("parameter (scaled; log10 for wide ranges)")
    return figures._save(fig, out_dir, f"search_{k}_parallel", f"{s['name']}: parameters of the trials",
                         f"coloured by {s['objective']} (top or bottom half of the completed trials) or pruned")


def _importances(s: dict, out_dir: Path, k: int) -> figures.Figure | None:
    import optuna

    study = s["study"]
    if sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) < 3 or len(s["params"]) < 2:
        return None
    try:
        evaluator, how = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except ImportError:  # fANOVA needs scikit-learn
        values, how = optuna.importance.get_param_importances(study), "Optuna's default evaluator"
    except (RuntimeError, ValueError) as exc:
        log.warning("no parameter importances for %s: %s", s["name"], exc)
        return None
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(values) + 1.2), layout="constrained")
    ax.barh(list(values)[::-1], list(values.values())[::-1], color="C0")
    ax.set_xlabel("importance (share of the objective's variance)")
    return figures._save(fig, out_dir, f"search_{k}_importance", f"{s['name']}: parameter importances",
                         f"{how} over the completed trials")
