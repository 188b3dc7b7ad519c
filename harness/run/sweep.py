"""Expand an experiment into trials: axes (cartesian), zipped groups, scenes, seeds.

A trial is its list of extra bindings on top of the experiment file. Its id is a short sha256 of
its identity (harness/run/identity.py): the operative parameters of its config, bound or defaulted,
and the fingerprint of its scene's data; so the same computation always gets the same id, binding
a parameter to its default keeps it, and changing a default or an input file changes it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import gin

from harness.core.errors import ConfigError, HarnessError
from harness.core.records import binding_label
from harness.run import config as cfg
from harness.run import usage
from harness.run.settings import Sweep


@dataclass
class Trial:
    id: str
    experiment: str
    bindings: dict  # axis name -> value, in axis order; includes the seed and the scene
    gin_bindings: list[str]  # the Gin binding lines that make this trial
    config: str = field(repr=False)  # normalised trial config (config.gin: re-runs the trial alone)
    identity: dict = field(repr=False, default_factory=dict)  # what the id hashes (identity.json)

    @property
    def label(self) -> str:
        return binding_label(self.bindings)


def _binding_line(key: str, value) -> str:
    if isinstance(value, str) and value.startswith("@"):
        return f"{key} = {value}"
    return f"{key} = {value!r}"


def _variants(spec: dict) -> list[dict]:
    """The product of the axes times the zipped group, as ordered {key: value} dicts."""
    for key, values in {**spec["axes"], **spec["zipped"]}.items():
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ConfigError(f"Sweep axis '{key}' must be a non-empty list, got {values!r}")
    zipped = spec["zipped"]
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise ConfigError("Sweep.zipped lists differ in length: "
                          + ", ".join(f"{k}: {len(v)}" for k, v in zipped.items()))
    zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    axes = spec["axes"]
    prod = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else [{}]
    rows = [{**a, **z} for a in prod for z in zip_rows]
    for rule in spec["exclude"]:
        if not isinstance(rule, dict) or not rule or not all(isinstance(v, (list, tuple)) for v in rule.values()):
            raise ConfigError(f"Sweep.exclude entries must be non-empty {{key: [values]}} dicts, got {rule!r}")
        rows = [r for r in rows if not all(k in r and r[k] in v for k, v in rule.items())]
    return rows


def trial_identity(require_data: bool = True, _memo: dict | None = None) -> tuple[str, dict]:
    """(id, identity) of the trial whose config Gin holds now (after trial_config).

    The scene must exist unless `require_data` is False (a dry run): then a missing scene enters the
    identity as {'missing': path} and the id is provisional. `_memo` caches scene fingerprints by
    (path, format, procedural parameters) within one expansion."""
    from harness.core.data.fingerprint import scene_fingerprint
    from harness.run import identity

    path, fmt = cfg.query("load_scene.path", None), cfg.query("load_scene.format", "blender")
    if not isinstance(fmt, str):
        raise ConfigError(f"load_scene.format = {fmt!r:.80}: expected a format name such as 'blender'")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"load_scene.path = {path!r:.80}: expected a folder path, or a procedural scene's name")
    key = (repr(path), repr(fmt), _procedural_key(path, fmt))
    memo = {} if _memo is None else _memo
    if key not in memo:
        if path is None:
            memo[key] = {"missing": None}
        else:
            try:
                memo[key] = scene_fingerprint(path, fmt)
            except HarnessError:
                if require_data:
                    raise
                memo[key] = {"missing": str(path)}
    doc = identity.identity(memo[key])
    return identity.trial_id(doc), doc


def _procedural_key(path, fmt) -> str:
    """The Gin bindings a procedural scene is generated from (they change its data)."""
    if fmt != "procedural":
        return ""
    return repr(sorted((k, repr(v)) for k, v in gin.get_bindings(f"{path}_scene").items())) if path else ""


def read_spec(exp_file: Path, user_bindings: list[str]) -> dict:
    cfg.parse([exp_file], user_bindings)
    try:
        return Sweep()
    except ConfigError as exc:  # gin appends "In call to configurable 'Sweep'" lines: keep the first
        raise ConfigError(f"{exp_file}: {str(exc).splitlines()[0]}") from None


def expand(experiment: str, user_bindings: list[str] | tuple = (), require_data: bool = True,
           spec: dict | None = None) -> list[Trial]:
    """All trials of an experiment, in a stable order; raises ConfigError for an empty sweep, and
    DataError for a scene that does not exist (unless `require_data` is False: provisional ids).
    `spec`: the experiment's Sweep when the caller has read it already (one parse fewer).

    Gin is parsed once per scene when every swept value is a plain literal (`_Base`), else once
    per trial."""
    exp_file = cfg.experiment_path(experiment)
    spec = read_spec(exp_file, list(user_bindings)) if spec is None else spec
    if not spec["seeds"]:
        raise ConfigError(f"{exp_file}: Sweep.seeds is empty: the sweep has no trials")
    scenes = spec["scenes"] or [None]
    trials: list[Trial] = []
    seen: dict[str, dict] = {}  # id -> bindings
    data_memo: dict = {}
    variants = _variants(spec)
    fast = _fast_path_ok(spec, variants)
    never: dict | None = None  # bindings no trial so far calls (harness/run/usage.py)
    for scene in scenes:
        base = None
        scene_lines = [f"include 'base/scenes/{scene}.gin'"] if scene is not None else []
        for variant in variants:
            for seed in spec["seeds"]:
                lines = scene_lines + [_binding_line(k, v) for k, v in variant.items()]
                lines.append(_binding_line(spec["seed_binding"], seed))
                bindings = {**({"scene": scene} if scene is not None else {}), **variant, "seed": seed}
                values = {**variant, spec["seed_binding"]: seed}
                try:
                    if fast:
                        if base is None:
                            base = _Base(exp_file, list(user_bindings), scene_lines, values, require_data, data_memo)
                            never = _still(never, base.unused)
                        config, tid, ident = base.trial(values)
                    else:
                        config = trial_config(exp_file, list(user_bindings), lines)
                        check_settings()
                        never = _still(never, usage.unused())
                        tid, ident = trial_identity(require_data, data_memo)
                except ConfigError as exc:
                    raise ConfigError(f"{exp_file}, trial {bindings}: {exc}") from None
                if tid in seen:
                    raise ConfigError(f"{exp_file}: trials {seen[tid]} and {bindings} have the same "
                                      f"config (an axis binds something no trial uses?)")
                seen[tid] = bindings
                trials.append(Trial(tid, exp_file.stem, bindings, lines, config, ident))
    usage.report(str(exp_file), never or {})
    return trials


def _still(never: dict | None, unused: dict) -> dict:
    """The bindings unused by every trial so far."""
    return dict(unused) if never is None else {k: v for k, v in never.items() if k in unused}


def _fast_path_ok(spec: dict, variants: list[dict]) -> bool:
    """Whether the trials can be derived from one parse per scene (`_Base`): every swept value is a
    plain literal bound to a `Configurable.param` that does not decide the scene's data. Otherwise
    each trial is parsed on its own (the reference path, always correct)."""
    keys = {*(k for v in variants for k in v), spec["seed_binding"]}
    if any("/" in k for k in keys):  # scoped bindings and macros change more than one parameter
        return False
    if any(k.rsplit(".", 1)[0].rsplit(".", 1)[-1] in ("load_scene", "tiny_scene", "street_scene") for k in keys):
        return False  # the data fingerprint would change per trial
    return not any(isinstance(x, str) and x.startswith("@") for v in variants for x in v.values())


class _Base:
    """One parse of the experiment (and scene) from which the scene's trials are derived: each binds
    the same keys, only to other literal values, so its operative identity is the first trial's with
    those values replaced, and its config the experiment's plus its binding lines. The first trial's
    identity is computed in full, with its values bound over the parse; settings are checked per
    trial, with the values bound in Gin. tests/test_identity.py checks that ids equal those of
    parsing every trial on its own (which the job does)."""

    def __init__(self, exp_file: Path, user_bindings: list[str], scene_lines: list[str], first: dict,
                 require_data: bool, data_memo: dict):
        from harness.run import identity

        self.identity_module = identity
        cfg.parse([exp_file], user_bindings + scene_lines)  # without the trial's own bindings
        self.text = cfg.trial_config_str()
        for key, value in first.items():
            gin.bind_parameter(key, value)
        check_settings()
        self.unused = usage.unused()  # the other trials bind only literals: they call the same configurables
        self.first = trial_identity(require_data, data_memo)[1]
        self.slots = {key: self._slot(key) for key in first}

    def _slot(self, key: str) -> tuple[str, str] | None:
        """(configurable, parameter) of a binding key in the identity; None for a bookkeeping one."""
        selector, param = key.rsplit(".", 1)
        name = selector.rsplit(".", 1)[-1]
        if param in self.identity_module.BOOKKEEPING.get(name, ()) or name in self.identity_module.WATCHERS:
            return None
        if name not in self.first["operative"]:
            raise ConfigError(f"{key}: not a parameter of the trial's operative config")
        return name, param

    def trial(self, values: dict) -> tuple[str, str, dict]:
        for key, value in values.items():
            gin.bind_parameter(key, value)
        check_settings()
        doc = {**self.first, "operative": dict(self.first["operative"])}
        for key, value in values.items():
            slot = self.slots[key]
            if slot is not None:
                name, param = slot
                doc["operative"][name] = {**doc["operative"][name], param: self.identity_module.canonical(value)}
        lines = "".join(_binding_line(k, v) + "\n" for k, v in values.items())
        return f"{self.text}\n# Trial bindings\n{lines}", self.identity_module.trial_id(doc), doc


def check_settings() -> None:
    from harness.run.trial import check_settings as check_trainer  # lazy: trial imports torch

    check_trainer()
    check_tracker()
    method = gin.query_parameter("Trainer.method")
    check_method(method)
    check_positive_settings(method)


def check_tracker() -> None:
    """Tracker settings, and that the tracking backends chosen are installed: one line here, not a
    trial failing on the cluster."""
    from harness.run.tracking import Tracker

    try:
        Tracker()
    except ConfigError as exc:  # gin appends "In call to configurable 'Tracker'": keep the first line
        raise ConfigError(str(exc).splitlines()[0]) from None


def check_method(reference) -> None:
    """The method class has the protocol's methods and the members of the capabilities it declares
    (harness.core.method.method_problems): one ConfigError line, before anything is queued."""
    from harness.core.method import method_problems

    problems = method_problems(reference.configurable.wrapped) if hasattr(reference, "configurable") else []
    if problems:
        raise ConfigError(f"Trainer.method = {reference!r}: {problems[0]}")


def check_positive_settings(reference) -> None:
    """A configurable may list settings that must be positive finite numbers (learning rates, batch
    sizes) in an optional class attribute `positive_settings`; check their operative values (Gin
    binding, else the signature's default) when the sweep expands, for the method and every part it
    references (e.g. `BlockNeRF.optimization = @Optimization()`), so a negative learning rate is one
    ConfigError line before anything is queued, not a job failing on the cluster.
    `reference`: Gin's reference to the method (the value of `Trainer.method`)."""
    import inspect
    import math

    from harness.run.identity import configurables, reachable, resolve_macros

    registry = configurables()
    for name, params in reachable([reference.configurable.name], registry).items():
        for key in getattr(registry[name].wrapped, "positive_settings", ()):
            value = resolve_macros(params.get(key))  # absent: a **kwargs setting left unbound
            if value is None or value is inspect.Parameter.empty or isinstance(value, gin.config.ConfigurableReference):
                continue  # optional (e.g. a translation lr defaulting to another), or computed by a call
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            if not ok:
                raise ConfigError(f"{name}.{key} = {value!r}: expected a positive number")


def trial_config(exp_file: Path, user_bindings: list[str], trial_lines: list[str]) -> str:
    """Parse the experiment with a trial's bindings (Gin stays parsed so) and return its normalised config."""
    cfg.parse([exp_file], list(user_bindings) + list(trial_lines))
    return cfg.trial_config_str()
