"""`Sweep.search`: what a search over an experiment's settings is, checked when the sweep expands.

    Sweep.search = {'sampler': 'tpe', 'trials': 16, 'objective': 'val_psnr', 'direction': 'maximize',
                    'parallel': 2, 'seed': 0, 'pruner': 'asha', 'min_steps': 500, 'reduction_factor': 3,
                    'space': {'TVLoss.weight_density': ('loguniform', 1e-6, 1e-2),
                              'Plenoxels.lr_sh': ('uniform', 0.01, 0.1),
                              'Plenoxels.sh_degree': ('int', 1, 3),
                              'Plenoxels.optimizer': ('choice', ['rmsprop', 'adam'])}}

Every bad setting is one ConfigError line here, before anything is made or submitted. The settings
that need a trial's config (the objective, validation for the pruner) are checked by
`check_against_config` on a probe trial of each grid cell (harness/run/search.py). This module does
not import Optuna: `harness sweep --dry-run` and the expansion of plain grids never pay for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from harness.core.errors import ConfigError

SAMPLERS = ("random", "qmc", "tpe")  # optuna.samplers.RandomSampler, QMCSampler(qmc_type='sobol'), TPESampler
PRUNERS = (None, "asha", "hyperband")  # SuccessiveHalvingPruner, HyperbandPruner
KINDS = ("uniform", "loguniform", "int", "choice")
KEYS = ("sampler", "trials", "objective", "direction", "parallel", "seed", "space", "pruner", "min_steps",
        "reduction_factor", "startup_trials")
_SELECTOR = re.compile(r"[A-Za-z_][\w./]*\.[A-Za-z_]\w*")
# objectives beside the test metrics of metrics.json (`Evaluation.metrics`): the validation scores at the
# last validation (train.jsonl, what the pruner saw last), the best validation PSNR, the training time
LOWER_IS_BETTER = ("lpips", "val_lpips", "train_time")


@dataclass(frozen=True)
class Param:
    """One searched binding: `kind` in KINDS; `low`/`high` for ranges, `choices` for 'choice'."""

    key: str
    kind: str
    low: Any = None  # float, int for 'int'
    high: Any = None
    choices: tuple = ()

    def as_json(self) -> list:
        return [self.kind, list(self.choices)] if self.kind == "choice" else [self.kind, self.low, self.high]

    def probe(self):
        """A value of the space, for checking a cell's config before anything is suggested."""
        return self.choices[0] if self.kind == "choice" else self.low

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        return self.low <= value <= self.high

    def distribution(self):
        """The Optuna distribution (imports Optuna)."""
        from optuna import distributions as d

        if self.kind == "uniform":
            return d.FloatDistribution(self.low, self.high)
        if self.kind == "loguniform":
            return d.FloatDistribution(self.low, self.high, log=True)
        if self.kind == "int":
            return d.IntDistribution(self.low, self.high)
        return d.CategoricalDistribution(self.choices)


@dataclass(frozen=True)
class SearchSpec:
    sampler: str
    trials: int
    objective: str
    direction: str
    parallel: int | None  # None: launch.parallel
    seed: int
    space: tuple[Param, ...]
    pruner: str | None
    min_steps: int | None  # the first rung, in training steps (None: Trainer.validate_every)
    reduction_factor: int
    startup_trials: int = 10  # TPE: trials sampled at random before it models (Optuna's n_startup_trials)

    def study_key(self, cell_id: str) -> str:
        """What a study is: the cell's config (its grid trial's id) and everything that decides what is
        suggested and how it is judged. `trials` and `parallel` are not in it: raising `trials`
        continues the study."""
        doc = {"cell": cell_id, "space": {p.key: p.as_json() for p in self.space}, "objective": self.objective,
               "direction": self.direction, "sampler": self.sampler, "seed": self.seed, "pruner": self.pruner,
               "min_steps": self.min_steps, "reduction_factor": self.reduction_factor}
        if self.sampler == "tpe":
            doc["startup_trials"] = self.startup_trials
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]

    def describe(self) -> str:
        pruner = (f"{self.pruner} (first rung {self.min_steps or 'validate_every'} steps, "
                  f"reduction factor {self.reduction_factor})" if self.pruner else "no pruning")
        space = ", ".join(f"{p.key} {p.kind}{list(p.choices) if p.kind == 'choice' else (p.low, p.high)}"
                          for p in self.space)
        return (f"{self.sampler} search, {self.trials} trials per cell, {self.direction} {self.objective}, "
                f"{pruner}, seed {self.seed}; space: {space}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"Sweep.search['{name}'] = {value!r:.80}: expected an integer >= {minimum}")
    return value


def parse_param(key: str, value) -> Param:
    where = f"Sweep.search space '{key}'"
    if not isinstance(key, str) or not _SELECTOR.fullmatch(key):
        raise ConfigError(f"Sweep.search space key {key!r:.80}: expected a binding name like 'Configurable.param'")
    if not isinstance(value, (list, tuple)) or not value or value[0] not in KINDS:
        kind = value[0] if isinstance(value, (list, tuple)) and value else value
        raise ConfigError(f"{where} = {value!r:.80}: unknown kind {kind!r:.40}; expected ('uniform'|'loguniform'|"
                          "'int', low, high) or ('choice', [values])")
    kind = value[0]
    if kind == "choice":
        if len(value) != 2 or not isinstance(value[1], (list, tuple)) or len(value[1]) < 2:
            raise ConfigError(f"{where} = {value!r:.80}: expected ('choice', [at least two values])")
        choices = tuple(value[1])
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: choices must be numbers, strings, booleans or None, got {choices!r:.80}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: repeated choices in {choices!r:.80}")
        return Param(key, kind, choices=choices)
    if len(value) != 3 or not _number(value[1]) or not _number(value[2]):
        raise ConfigError(f"{where} = {value!r:.80}: expected ('{kind}', low, high) with finite numbers")
    low, high = value[1], value[2]
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where} = {value!r:.80}: an 'int' range needs integer bounds")
    if not low < high:
        raise ConfigError(f"{where} = {value!r:.80}: {'empty' if low == high else 'inverted'} range "
                          f"(low must be below high)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where} = {value!r:.80}: a log range must be above 0 (low = {low!r})")
    return Param(key, kind, low=float(low) if kind != "int" else low, high=float(high) if kind != "int" else high)


def parse(search, axes: dict | None = None, seed_binding: str = "Trainer.seed") -> SearchSpec | None:
    """The checked `Sweep.search` (None: the experiment is a grid). `axes`: the grid's keys (axes
    and zipped), which a space may not also bind."""
    if search is None:
        return None
    if not isinstance(search, dict):
        raise ConfigError(f"Sweep.search = {search!r:.80}: expected a dict {{'sampler': ..., 'space': {{...}}}}")
    unknown = sorted(set(search) - set(KEYS), key=str)
    if unknown:
        raise ConfigError(f"Sweep.search: unknown setting {unknown[0]!r:.40}; expected some of {', '.join(KEYS)}")
    sampler = search.get("sampler", "tpe")
    sampler = "qmc" if sampler == "sobol" else sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"Sweep.search['sampler'] = {sampler!r:.80}: unknown sampler; expected "
                          f"{', '.join(repr(s) for s in SAMPLERS)} (or 'sobol')")
    pruner = search.get("pruner")
    pruner = None if pruner in ("none", "None") else pruner
    if pruner not in PRUNERS:
        raise ConfigError(f"Sweep.search['pruner'] = {pruner!r:.80}: unknown pruner; expected None, 'asha' or "
                          "'hyperband'")
    trials = _int("trials", search.get("trials", 16), 1)
    parallel = search.get("parallel")
    parallel = None if parallel is None else _int("parallel", parallel, 1)
    seed = _int("seed", search.get("seed", 0), 0)
    objective = search.get("objective", "val_psnr" if pruner else "psnr")
    if not isinstance(objective, str) or not objective:
        raise ConfigError(f"Sweep.search['objective'] = {objective!r:.80}: expected a metric name such as 'psnr'")
    direction = search.get("direction", "minimize" if objective in LOWER_IS_BETTER else "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"Sweep.search['direction'] = {direction!r:.80}: expected 'maximize' or 'minimize'")
    if pruner and direction != "maximize":
        raise ConfigError(f"Sweep.search: the pruner stops trials on validation PSNR (higher is better), so the "
                          f"objective must be maximised too, not {direction!r} {objective!r}")
    min_steps = search.get("min_steps")
    min_steps = None if min_steps is None else _int("min_steps", min_steps, 1)
    reduction_factor = _int("reduction_factor", search.get("reduction_factor", 3), 2)
    startup_trials = _int("startup_trials", search.get("startup_trials", 10), 0)
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"Sweep.search['space'] = {space!r:.80}: expected a non-empty dict "
                          "{'Configurable.param': ('uniform', low, high), ...}")
    params = tuple(parse_param(k, v) for k, v in space.items())
    for p in params:
        if p.key in (axes or {}) or p.key == seed_binding:
            raise ConfigError(f"Sweep.search space '{p.key}' is also a grid axis (Sweep.axes/zipped/seeds): "
                              "search it or sweep it, not both")
    return SearchSpec(sampler, trials, objective, direction, parallel, seed, params, pruner, min_steps,
                      reduction_factor, startup_trials)


def objectives(metrics: tuple, validate_every: int) -> tuple[str, ...]:
    """The objectives a trial with these settings records: its test metrics (metrics.json), the
    training time, and with validation the last validation scores and the best validation PSNR."""
    names = [*metrics, "train_time"]
    if validate_every:
        names += [f"val_{m}" for m in ("psnr", "ssim", "lpips") if m == "psnr" or m in metrics] + ["best_val_psnr"]
    return tuple(names)


def check_against_config(spec: SearchSpec, metrics: tuple, validate_every: int, iterations: int) -> None:
    """What needs a trial's config: the objective is something the trials record, and a pruner has
    validations to judge (rungs are validation steps)."""
    known = objectives(metrics, validate_every)
    if spec.objective not in known:
        why = " (validation objectives need Trainer.validate_every > 0)" if spec.objective.startswith(
            ("val_", "best_val")) and not validate_every else ""
        raise ConfigError(f"Sweep.search['objective'] = {spec.objective!r}: no trial records it{why}; expected one "
                          f"of {', '.join(known)}")
    if spec.pruner:
        if not validate_every:
            raise ConfigError(f"Sweep.search['pruner'] = {spec.pruner!r} needs validation to judge trials: set "
                              "Trainer.validate_every > 0")
        first = spec.min_steps or validate_every
        if first % validate_every:
            raise ConfigError(f"Sweep.search['min_steps'] = {first}: rungs are validation steps, so it must be a "
                              f"multiple of Trainer.validate_every ({validate_every})")
        if first >= iterations:
            raise ConfigError(f"Sweep.search['min_steps'] = {first}: the first rung must come before the end of "
                              f"training (Trainer.iterations = {iterations})")


def objective_value(objective: str, metrics: dict | None, log_rows: list[dict]) -> float | None:
    """The objective of a finished trial from its records (None when it has none)."""
    value = None
    if objective == "best_val_psnr":
        value = ((metrics or {}).get("best_validation") or {}).get("psnr")
    elif objective.startswith("val_"):
        rows = [r for r in log_rows if objective in r]
        value = rows[-1][objective] if rows else None
    elif metrics is not None:
        value = metrics.get(objective)
    return float(value) if value is not None and _number(value) else None


def open_storage(path):
    """The experiment's study store: Optuna's JournalStorage on a JournalFileBackend at `path`
    (runs/EXP/study.journal). Not SQLite: SQLite relies on fcntl locks, which are unreliable on
    NFS/Lustre, where the driver on a login node and trials on compute nodes share the runs folder;
    the journal file backend appends operations to one log under its own lock (a symlink made
    atomically, which works on network file systems), and every process replays the log."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def make_pruner(info: dict | None):
    """Optuna's pruner for a search's pruner settings (`pruner_settings`); NopPruner for None."""
    import optuna

    if not info:
        return optuna.pruners.NopPruner()
    if info["kind"] == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=info["min_steps"],
                                                      reduction_factor=info["reduction_factor"])
    return optuna.pruners.HyperbandPruner(min_resource=info["min_steps"], max_resource=info["max_steps"],
                                          reduction_factor=info["reduction_factor"])
