"""`harness compose EXP`: evaluate trials that only make sense together (e.g. Block-NeRF blocks).

An experiment declares it in its Sweep (so it is not part of any trial's id):
    Sweep.compose = {'over': 'BlockNeRF.block',                      # the axis whose trials go together
                     'run': 'baselines.block_nerf.compose:Composition',
                     'options': {...},                               # passed to `run`
                     'variants': {'full': {}, 'other': {...}}}       # option overrides, one record each
Trials are grouped by their bindings without `over` (i.e. per variant and seed). For each group whose
trials are all done, each trial's method is rebuilt from its config and latest checkpoint, and
`run(methods, scene, options)` composes the test views (an object with `views()`, yielding (name, image,
target), and `record(scores)`); the harness saves and scores them (harness.run.evaluation). Each
(group, variant) gets runs/EXP/compose/<id>/metrics.json (+ renders/); the id
hashes the member trial ids, the variant and its options. runs/EXP/compose/index.json lists them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from harness.core.errors import ConfigError, RecordError
from harness.core.records import TrialRecord, atomic_write_json, now_iso, read_json
from harness.run import checkpoints
from harness.run import config as cfg
from harness.run.sweep import expand, read_spec

log = logging.getLogger(__name__)
KEYS = ("over", "run", "options", "variants")


def declared(spec: dict) -> dict | None:
    """The experiment's compose declaration, checked, or None."""
    comp = spec.get("compose")
    if not comp:
        return None
    if not isinstance(comp, dict) or "over" not in comp or "run" not in comp or set(comp) - set(KEYS):
        raise ConfigError(f"Sweep.compose must be a dict with 'over' and 'run' (and optional 'options', "
                          f"'variants'), got {comp!r}")
    return comp


def _function(path: str):
    module, _, name = str(path).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"Sweep.compose['run'] = {path!r}: cannot import ({exc})") from None


def groups(trials, over: str) -> dict[str, list]:
    """Trials grouped by their bindings without the `over` axis, in sweep order."""
    out: dict[str, list] = {}
    for t in trials:
        if over not in t.bindings:
            raise ConfigError(f"Sweep.compose['over'] = {over!r} is not a swept axis (axes: {list(t.bindings)})")
        key = json.dumps({k: v for k, v in t.bindings.items() if k != over}, sort_keys=True, default=str)
        out.setdefault(key, []).append(t)
    return out


def load_member(exp_file: Path, user_bindings: list[str], trial, runs_dir: Path):
    """(method with the trial's latest checkpoint loaded, scene) under the trial's own config."""
    import gin

    from harness.core.data.load_scene import load_scene
    from harness.run.trial import Trainer

    cfg.parse([exp_file], list(user_bindings) + list(trial.gin_bindings))
    record = TrialRecord(Path(runs_dir) / trial.experiment / trial.id)
    found = checkpoints.load_latest(record.checkpoint_dir)
    if found is None:
        raise RecordError(f"{record.dir}: trial is done but has no checkpoint to compose from")
    trainer = Trainer()
    scene = load_scene()
    with gin.unlock_config():
        method = trainer.method_cls(scene=scene, seed=trainer.seed)
    method.load_state_dict(found[1]["method"])
    return method, scene


def compose_experiment(experiment: str, user_bindings: list[str], runs_dir: Path) -> dict[str, str]:
    """Compose every group of finished trials; returns {record folder: outcome}."""
    from harness.run.evaluation import Evaluation

    exp_file = cfg.experiment_path(experiment)
    comp = declared(read_spec(exp_file, list(user_bindings)))
    if comp is None:
        raise ConfigError(f"{exp_file}: the experiment declares no composition (Sweep.compose)")
    run = _function(comp["run"])
    variants = comp.get("variants") or {"default": {}}
    trials = expand(experiment, user_bindings)
    out_dir = Path(runs_dir) / trials[0].experiment / "compose"
    outcome, index = {}, []
    for key, members in groups(trials, comp["over"]).items():
        states = {t.id: TrialRecord(Path(runs_dir) / t.experiment / t.id).state for t in members}
        if any(s != "done" for s in states.values()):
            outcome[key] = "waiting for trials: " + ", ".join(f"{k} {s}" for k, s in states.items() if s != "done")
            continue
        t0 = time.perf_counter()
        methods: dict = {}
        scene: Any = None  # every member has the same scene
        for t in members:
            method, scene = load_member(exp_file, user_bindings, t, runs_dir)
            methods[t.bindings[comp["over"]]] = method
        evaluation = Evaluation()  # the experiment's protocol (Gin is parsed with the last member's config)
        load_time = time.perf_counter() - t0
        for name, overrides in variants.items():
            options = {**(comp.get("options") or {}), **(overrides or {})}
            described = {"members": sorted(t.id for t in members), "variant": name, "options": options}
            ident = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]
            folder = out_dir / ident
            if (folder / "metrics.json").exists():
                outcome[str(folder)] = "done (kept)"
            else:
                t1 = time.perf_counter()
                composed = run(methods, scene, dict(options))  # it composes; the harness saves and scores
                result = evaluation.score_views(composed.views(), renders_dir=folder / "renders",
                                                background=scene.background)
                result.update(composed.record(result))
                result.update(experiment=trials[0].experiment, compose_variant=name, group=json.loads(key),
                              members={str(t.bindings[comp["over"]]): t.id for t in members},
                              eval_time=round(time.perf_counter() - t1, 3), load_time=round(load_time, 3),
                              created=now_iso())
                atomic_write_json(folder / "metrics.json", result)
                outcome[str(folder)] = f"done: psnr {result.get('psnr', float('nan')):.2f}"
                log.info("composed %s %s (%s): %s", trials[0].experiment, key, name, outcome[str(folder)])
            index.append({"id": ident, "variant": name, "group": json.loads(key),
                          "members": {str(t.bindings[comp["over"]]): t.id for t in members}})
    listed = {r["id"] for r in index}  # keep records of earlier compose runs (other variants or options)
    earlier = [r for r in (read_json(out_dir / "index.json") or {}).get("records", []) if r.get("id") not in listed]
    atomic_write_json(out_dir / "index.json", {"experiment": trials[0].experiment, "updated": now_iso(),
                                               "records": earlier + index})
    return outcome


def compose_if_declared(experiment: str, user_bindings: list[str], runs_dir: Path) -> dict[str, str]:
    """compose_experiment when the experiment declares a composition, else nothing (after `sweep`)."""
    if declared(read_spec(cfg.experiment_path(experiment), list(user_bindings))) is None:
        return {}
    return compose_experiment(experiment, user_bindings, runs_dir)
