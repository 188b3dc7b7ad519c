"""The doctor (harness/core/data/doctor.py) over the scenes of an experiment's trials: what
`harness doctor EXP` prints and what every sweep's pre-flight (harness/run/driver.py) runs.

Each distinct scene is loaded once, through the Gin config of the first trial that uses it (so
downscale, splits and loader options are the trials' own), and checked once."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import gin

from harness.core.data import doctor
from harness.core.errors import ConfigError
from harness.run.sweep import Trial, trial_config

MAX_STORED = 20  # warning lines kept per trial record (a broken export can warn on every frame)


@dataclass
class SceneCheck:
    target: str  # load_scene.path as the trials give it
    trial_ids: list[str]
    findings: list[doctor.Finding]
    description: str = ""  # doctor.describe() of the loaded scene; '' when it did not load
    load_s: float = 0.0
    check_s: float = 0.0
    warnings: list[str] = field(default_factory=list)  # the warning lines, as stored in trial records


def scene_key(trial: Trial) -> str:
    """What decides the scene a trial loads: its data fingerprint (files, or a procedural scene's
    generator hash) and the parameters of `load_scene` (downscale, splits, options...)."""
    ident = trial.identity or {}
    if not ident:
        return trial.id
    return json.dumps([ident.get("data"), ident.get("operative", {}).get("load_scene")], sort_keys=True, default=repr)


def check_trials(exp_file: Path, user_bindings: list[str], trials: list[Trial]) -> list[SceneCheck]:
    """The doctor's findings for each distinct scene of `trials` (Gin is left parsed for the last)."""
    from harness.core.data.load_scene import load_scene

    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(scene_key(t), []).append(t)
    checks = []
    for group in groups.values():
        trial_config(exp_file, list(user_bindings), group[0].gin_bindings)
        try:
            target = str(gin.query_parameter("load_scene.path"))
        except ValueError:
            raise ConfigError(f"{exp_file}: load_scene.path is not set (include a scene, e.g. "
                              f"base/scenes/lego_100.gin)") from None
        t0 = time.perf_counter()
        scene, findings = doctor.try_load(load_scene, target)
        t1 = time.perf_counter()
        if scene is not None:
            findings += doctor.diagnose(scene, Path(scene.path))
        check = SceneCheck(target, [t.id for t in group], findings, doctor.describe(scene) if scene else "",
                           t1 - t0, time.perf_counter() - t1)
        check.warnings = warning_lines(findings)
        checks.append(check)
    return checks


def warning_lines(findings: list[doctor.Finding], limit: int = MAX_STORED) -> list[str]:
    lines = [f.text() for f in findings if f.severity == "warning"]
    return lines if len(lines) <= limit else lines[:limit] + [f"... and {len(lines) - limit} more"]
