"""Collect trial records into pandas DataFrames; tolerant of running/failed/missing records.

Everything here reads `runs/<exp>/<id>/{status,metrics,progress}.json`, `config.gin` and
`train.jsonl` only. A record that cannot be read becomes a row with the state it has (or
'unknown'), never a dropped one.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.core import gin_text
from harness.core.errors import HarnessError, RecordError
from harness.core.records import TrialRecord, binding_label, read_json

log = logging.getLogger(__name__)
METRICS = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}


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


def parse_gin_bindings(text: str) -> dict[str, str]:
    """`[scope/]Selector.param` -> value text of a saved config.gin, read by Gin's own parser
    (harness.core.gin_text; nothing registered or imported, so it reads without the training code)."""
    return gin_text.bindings(text)


def _literal(text: str | None):
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _trial_dirs(exp_dir: Path) -> list[Path]:
    sweep = _read(exp_dir / "sweep.json")
    if sweep:  # the sweep's own order, its trials not launched yet (no folder) included; trials of an
        ordered = [exp_dir / t["id"] for t in sweep.get("trials", [])]  # older version of it after them
        known = set(ordered)
        extra = sorted(p.parent for p in exp_dir.glob("*/status.json") if p.parent not in known)
        return ordered + extra
    return sorted(p.parent for p in exp_dir.glob("*/status.json"))


def axis_names(runs_dir: Path, experiment: str, trials: pd.DataFrame | None = None) -> list[str]:
    """The swept bindings of an experiment in sweep order, without the seed and the scene."""
    sweep = _read(Path(runs_dir) / experiment / "sweep.json") or {}
    keys: list[str] = []
    entries = sweep.get("trials", [])
    if not entries and trials is not None and "bindings" in trials:
        entries = [{"bindings": b} for b in trials["bindings"] if isinstance(b, dict)]
    for t in entries:
        for k in t.get("bindings", {}):
            if k not in keys and k not in ("seed", "scene"):
                keys.append(k)
    return keys


def fmt_value(v) -> str:
    """A binding value for labels: floats without binary noise (3.0000000000000004e-05 -> 3e-05); a list of
    named dicts (Trainer.stages) by its names (coarse+fine+refine)."""
    if isinstance(v, float):
        return f"{v:.12g}"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) and "name" in x for x in v):
        return "+".join(str(x["name"]) for x in v)  # named items (training stages): their names
    return str(v)


def fmt_or_dash(v) -> str:
    """fmt_value, or '–' for a missing value (None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return fmt_value(v)


def differing_labels(rows: list[dict]) -> list[str]:
    """Per row of bindings, a label of the bindings whose values differ between the rows (a row's
    missing values, absent or NaN, left out; a binding to None, e.g. a part switched off, shown);
    '' where none differ."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    differ = [k for k in keys if len({fmt_value(r[k]) if _present(r, k) else "–" for r in rows}) > 1]
    return [_variant_label("", {k: r[k] for k in differ if _present(r, k)}, differ, several=False) for r in rows]


def _present(row: dict, key: str) -> bool:
    return key in row and not (isinstance(row[key], float) and math.isnan(row[key]))


def _variant_label(experiment: str, bindings: dict, axes: list[str], several: bool) -> str:
    parts = [f"{k.split('.')[-1] if _short_ok(k, axes) else k}={fmt_value(bindings[k])}" for k in axes if k in bindings]
    body = ", ".join(parts)
    if several:
        return f"{experiment}: {body}" if body else experiment
    return body or experiment


ID_VERSION_KEY = "id_version"  # a pseudo-binding in `configs`: the trial-id scheme a record was made with


def split_mixed_variants(rows: list[dict], configs: dict[str, dict[str, str]], experiment: str,
                         several: bool) -> None:
    """Trials share a variant only when their configs are equal apart from the seed and the scene.

    The sweep's label names only the swept bindings, so trials run into one runs folder with
    different `--bind`s (`Trainer.iterations=20`, then `=100`) would share it and be averaged as if
    they were seeds. Such a label is split: each part gets the bindings that tell it apart (a
    binding bound in some trials only reads `key=default` in the others). Left out: bindings
    that follow the seed in every trial of the label, and bindings fixed by the scene (constant
    within each scene, different between scenes)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["variant"], []).append(r)
    for label, group in groups.items():
        cfgs = [configs.get(r["key"]) or {} for r in group]
        keys = sorted(set().union(*cfgs))
        seed_like = {k for k in keys if all(c.get(k) == repr(r["seed"]) for c, r in zip(cfgs, group))}
        differ = [k for k in keys if k not in seed_like and len({c.get(k) for c in cfgs}) > 1
                  and not _scene_determined(k, cfgs, group)]
        if not differ:
            continue
        # a binding absent from a config reads `key=default` (its code default applies there)
        parts = differing_labels([{k: _literal(c[k]) if k in c else "default" for k in differ} for c in cfgs])
        bare = label == experiment  # no swept binding in the label (_variant_label fell back to the name)
        for r, part in zip(group, parts):
            if bare:
                r["variant"] = f"{experiment}: {part}" if several else part
            else:
                r["variant"] = f"{label}, {part}"


def _scene_determined(key: str, cfgs: list[dict], rows: list[dict]) -> bool:
    """The binding has one value per scene and several scenes (e.g. `load_scene.path`)."""
    per_scene: dict[str, set] = {}
    for c, r in zip(cfgs, rows):
        per_scene.setdefault(r["scene"], set()).add(c.get(key))
    return len(per_scene) > 1 and all(len(v) == 1 for v in per_scene.values())


def _short_ok(key: str, axes: list[str]) -> bool:
    """`lr` instead of `ToyColour.lr` when no other axis has the same parameter name."""
    tail = key.split(".")[-1]
    return sum(1 for a in axes if a.split(".")[-1] == tail) == 1


@dataclass
class Collected:
    """What a report is built from."""

    trials: pd.DataFrame  # one row per trial
    views: pd.DataFrame  # one row per (trial, test view)
    curves: pd.DataFrame  # one row per train.jsonl line
    axes: dict[str, list[str]]  # experiment -> swept binding names
    configs: dict[str, dict[str, str]] = field(default_factory=dict)  # trial key -> Gin bindings
    sweeps: dict[str, dict] = field(default_factory=dict)  # experiment -> sweep.json

    @property
    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in self.trials and self.trials[m].notna().any()]

    @property
    def all_axes(self) -> list[str]:
        out: list[str] = []
        for names in self.axes.values():
            out += [a for a in names if a not in out]
        return out


def _trial_row(d: Path, experiment: str, current: dict, status: dict, metrics: dict, config: dict) -> dict:
    progress = _read(d / "progress.json") or {} if status.get("state") == "running" else {}
    # this experiment's bindings (sweep.json): a trial shared with another experiment has the other's in
    # status.json (it was created there first); status.json's when sweep.json does not list the trial
    bindings = current.get(d.name) or status.get("bindings") or {}
    scene = bindings.get("scene") or metrics.get("scene")
    if not scene:
        path = _literal(config.get("load_scene.path"))
        scene = Path(str(path)).name if path else "?"
    seed = bindings.get("seed", _literal(config.get("Trainer.seed")))
    row = {"experiment": experiment, "id": d.name, "key": f"{experiment}/{d.name}",
           "state": status.get("state", "unknown"),
           "label": binding_label(bindings) if d.name in current else status.get("label", ""),
           "attempts": status.get("attempts", 0), "current": (d.name in current) if current else True,
           "error": status.get("error"), "divergence": status.get("divergence"), "host": status.get("host"),
           "gpu": status.get("gpu") or status.get("device") or metrics.get("gpu") or metrics.get("device"),
           "git_commit": status.get("git_commit"), "created": status.get("created"),
           "code": _code_version(status), "code_stale": _code_stale(status),
           "started": status.get("started"), "finished": status.get("finished"),
           "updated": status.get("updated"), "slurm_job_id": status.get("slurm_job_id"),
           "scene": str(scene), "seed": seed, "bindings": bindings, "dir": str(d),
           "has_metrics": bool(metrics), "ground_truth": metrics.get("ground_truth")}
    for key, value in bindings.items():
        if key not in ("seed", "scene"):
            row[key] = value
    for m in METRICS:
        row[m] = _as_float(metrics.get(m))
    for k in ("train_time", "eval_time", "peak_rss_mb"):
        row[k] = _as_float(metrics.get(k))
    row["iterations"] = metrics.get("iterations")
    proto = metrics.get("protocol") or {}
    row["lpips_net"] = (proto.get("lpips") or {}).get("net") if isinstance(proto.get("lpips"), dict) else None
    row["protocol"] = repr(sorted(proto.items())) if proto else None
    row["block"] = metrics.get("block") if isinstance(metrics.get("block"), dict) else None
    if progress:
        row["progress"] = f"{progress.get('phase', '')} {progress.get('step')}/{progress.get('total')}".strip()
    return row


def _code_version(status: dict) -> str:
    """The code a trial was computed by, in short (harness.core.provenance.short_code)."""
    from harness.core.provenance import short_code

    return short_code(status.get("code")) if isinstance(status.get("code"), dict) else "not recorded"


def _code_stale(status: dict) -> bool:
    """A done trial computed by other code than this checkout's (harness/core/staleness.py)."""
    from harness.core.staleness import stale_code

    return status.get("state") == "done" and stale_code(status) is not None


def collect(runs_dir: Path, experiments: list[str], with_curves: bool = True) -> Collected:
    """Every trial record of `experiments` (folders under `runs_dir`)."""
    runs_dir = Path(runs_dir)
    rows, view_rows, curve_rows = [], [], []
    axes, configs, sweeps = {}, {}, {}
    several = len(experiments) > 1
    for exp in experiments:
        exp_dir = runs_dir / exp
        if not exp_dir.is_dir():
            raise HarnessError(f"{exp_dir}: no such experiment folder (run `make sweep EXP={exp}` first, "
                               f"or pass --runs-dir)")
        sweep = _read(exp_dir / "sweep.json") or {}
        sweeps[exp] = sweep
        current = {t["id"]: t.get("bindings") or {} for t in sweep.get("trials", [])}
        exp_rows = []
        for d in _trial_dirs(exp_dir):
            status = _read(d / "status.json") or ({"state": "unknown", "error": "status.json unreadable"}
                                                  if d.exists() else {"state": "pending"})  # not launched yet
            metrics = _read(d / "metrics.json") or {}
            config_path = d / "config.gin"
            config = parse_gin_bindings(config_path.read_text()) if config_path.exists() else {}
            # records made before trial identities (issue 22) have no identity.json: their ids are
            # another scheme's, so they never share a variant with today's (split_mixed_variants)
            config[ID_VERSION_KEY] = repr((_read(d / "identity.json") or {}).get("version", 1))
            row = _trial_row(d, exp, current, status, metrics, config)
            configs[row["key"]] = config
            exp_rows.append(row)
            for view, vals in (metrics.get("per_view") or {}).items():
                if isinstance(vals, dict):
                    view_rows.append({"key": row["key"], "view": str(view),
                                      **{m: _as_float(vals.get(m)) for m in METRICS if m in vals}})
            if with_curves:
                curve_rows += [{"key": row["key"], **e} for e in TrialRecord(d).read_log() if "step" in e]
        frame = pd.DataFrame(exp_rows)
        axes[exp] = axis_names(runs_dir, exp, frame if len(frame) else None)
        for r in exp_rows:
            r["variant"] = _variant_label(exp, r["bindings"], axes[exp], several)
        split_mixed_variants(exp_rows, configs, exp, several)
        rows += exp_rows
    trials = pd.DataFrame(rows)
    if trials.empty:
        raise HarnessError(f"{runs_dir}: no trial records for {', '.join(experiments)} "
                           f"(run `make sweep EXP={experiments[0]}` first)")
    for m in METRICS:
        trials[m] = trials[m].astype(float)
    trials["variant"] = pd.Categorical(trials["variant"], categories=list(dict.fromkeys(trials["variant"])))
    views = pd.DataFrame(view_rows, columns=["key", "view", *METRICS]) if not view_rows else pd.DataFrame(view_rows)
    if len(views):
        info = trials.set_index("key")[["variant", "scene", "seed", "state"]]
        views = views.join(info, on="key")
    curves = pd.DataFrame(curve_rows)
    if len(curves):
        curves = curves.join(trials.set_index("key")[["variant", "scene", "seed"]], on="key")
    return Collected(trials, views, curves, axes, configs, sweeps)


COMPOSED_VALUES = (*METRICS, "blocks_rendered_mean", "seam_psnr_overlap", "seam_psnr_interior",
                   "seam_n_overlap", "seam_n_interior")


def _read_record(path: Path) -> dict | None:
    """A JSON object record, or None (with a warning) when missing, unreadable or not an object."""
    if not path.is_file():
        log.warning("%s: missing; composed record skipped", path)
        return None
    try:
        data = read_json(path)
    except (RecordError, OSError) as exc:
        log.warning("%s; composed record skipped", exc)
        return None
    if not isinstance(data, dict):
        log.warning("%s: not a JSON object; composed record skipped", path)
        return None
    return data


def collect_composed(runs_dir: Path, experiment: str) -> pd.DataFrame:
    """One row per record listed in `runs/EXP/compose/index.json` whose metrics.json can be read.

    Columns: experiment, id, variant (the composition variant), scene when the group has one, the
    group's other bindings under their own names (as in the trial table), seed, psnr/ssim/lpips,
    blocks_rendered_mean, seam_psnr_overlap/interior, seam_n_overlap/interior. No compose folder or
    index gives an empty frame; a listed record without a readable metrics.json is skipped (warning).
    """
    folder = Path(runs_dir) / experiment / "compose"
    index = _read(folder / "index.json") if (folder / "index.json").is_file() else None
    entries = index.get("records") if isinstance(index, dict) else None
    rows = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not entry.get("id"):
            log.warning("%s: index entry without an id skipped: %r", folder / "index.json", entry)
            continue
        metrics = _read_record(folder / str(entry["id"]) / "metrics.json")
        if metrics is None:
            continue
        group = entry.get("group") or metrics.get("group") or {}
        group = group if isinstance(group, dict) else {}
        row: dict = {"experiment": experiment, "id": str(entry["id"]),
               "variant": str(entry.get("variant") or metrics.get("compose_variant") or "default")}
        if "scene" in group:
            row["scene"] = str(group["scene"])
        for key, value in group.items():
            if key not in ("seed", "scene"):
                row[key] = value
        row["seed"] = group.get("seed")
        seam = metrics["seam"] if isinstance(metrics.get("seam"), dict) else {}
        for m in METRICS:
            row[m] = _as_float(metrics.get(m))
        row["blocks_rendered_mean"] = _as_float(metrics.get("blocks_rendered_mean"))
        for k in ("psnr_overlap", "psnr_interior", "n_overlap", "n_interior"):
            row[f"seam_{k}"] = _as_float(seam.get(k))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["experiment", "id", "variant", "seed", *COMPOSED_VALUES])
    frame = pd.DataFrame(rows)
    for k in ("seam_n_overlap", "seam_n_interior"):  # view counts: integers, <NA> when not recorded
        frame[k] = frame[k].round().astype("Int64")
    return frame


# Kept for `harness status` (cli.py) and older callers.
def collect_trials(runs_dir: Path, experiment: str) -> pd.DataFrame:
    """One row per trial of one experiment (an empty frame when it has no records)."""
    try:
        return collect(Path(runs_dir), [experiment], with_curves=False).trials
    except HarnessError:
        return pd.DataFrame()


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def collect_seam(runs_dir: Path, experiment: str) -> list[dict]:
    """The seam checks `scripts/block_nerf_seam.py` wrote (runs/EXP/compose/seam*.json), one dict per file:
    experiment, file, views ('test' | 'novel'), n_views, `groups` rows (label: the group bindings that
    differ between the file's groups; psnr, overlap and interior PSNR with their view counts, gap, and
    over the blended views the blend, nearest block alone and best block alone) and `paired` rows (two
    partitions on the same views: n, PSNR as overlap, as interior, seam). Unreadable files are skipped."""
    out = []
    for path in sorted((Path(runs_dir) / experiment / "compose").glob("seam*.json")):
        data = _read(path)
        if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
            continue
        label = {key: text or "all" for key, text in
                 zip(data["groups"], differing_labels([_group_bindings(key) for key in data["groups"]]))}
        groups = []
        for key, g in data["groups"].items():
            blended = g.get("blended") or {}
            groups.append({"label": label[key], **{k: g.get(k) for k in ("psnr", "psnr_overlap", "n_overlap",
                                                                        "psnr_interior", "n_interior", "gap")},
                           "blend": blended.get("blend"), "nearest_alone": blended.get("nearest_alone"),
                           "best_alone": blended.get("best_alone"), "n_blended": blended.get("n")})
        paired = [{"a": label.get(p.get("a"), "?"), "b": label.get(p.get("b"), "?"),
                   **{k: p.get(k) for k in ("n", "psnr_overlap", "psnr_interior", "seam")}}
                  for p in data.get("paired") or [] if isinstance(p, dict)]
        out.append({"experiment": experiment, "file": path.name, "views": data.get("views"),
                    "n_views": data.get("n_views"), "groups": groups, "paired": paired})
    return out


def _group_bindings(key: str) -> dict:
    try:
        value = json.loads(key)
    except ValueError:
        return {}
    return {k: v for k, v in value.items() if k != "seed"} if isinstance(value, dict) else {}
