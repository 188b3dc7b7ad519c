"""A trial's identity: the computation it stands for, resolved (docs/design.md, "Trial identity").

The trial id is the first 12 hex digits of the sha256 of a canonical JSON document (`identity()`):

- `operative`: every parameter of every configurable the trial's code path can read, bound or left at
  its default, with its resolved value. Which configurables: the harness's roots (`Trainer`,
  `load_scene`, `Evaluation`), every configurable bound in the config or referenced by a bound value,
  and every configurable of the method's package (so `TVLoss.weight_sh` bound to its default and left
  unbound give one id, whichever loss terms an experiment happens to bind). Values are canonical:
  macros resolved, floats by `repr` (`1e-5` and `0.00001` agree), tuples as lists, references by
  name. Parameters in `BOOKKEEPING` (how a trial is logged and checkpointed) are left out.
- `data`: the scene's data fingerprint (`harness.core.data.fingerprint`): a procedural scene's generator
  hash, else the names, sizes and sha256 of the files under the scene folder.
- `version`: ID_VERSION, bumped when this document changes shape.

Launch settings (`Sweep`, `launch`) are not configurables a trial reads, so they never enter the id.
Code changes enter through provenance instead: each record keeps the source fingerprint it was
computed with, and the sweep reports done trials computed by other code (harness/core/staleness.py).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from typing import Any

import gin

from harness.core.errors import ConfigError
from harness.run import config as cfg
from harness.run.config import NON_TRIAL_CONFIGURABLES

ID_VERSION = 2
ROOTS = ("Trainer", "load_scene", "Evaluation")  # what the trial runner calls by name (and Tracker, a watcher)
# Parameters that change how a trial is run and recorded, never what it computes (the one place
# they are declared; tests/test_identity.py checks that changing them leaves metrics and weights
# bit-identical). Launch settings are not here: they are not trial configurables at all.
BOOKKEEPING = {"Trainer": ("keep_checkpoints", "log_every", "checkpoint_every", "progress_every")}
# Parameters added after trials existed, left out at the value that computes what the code did before they
# existed, so those trials keep their ids (at any other value they enter the id as usual): training
# stages, the centre precrop and masked rays (harness/run/stages.py; no dataset had masks before).
NEUTRAL = {"Trainer": {"stages": None, "precrop_steps": 0, "precrop_frac": 0.5, "use_masks": True}}
# Configurables that only watch a trial (live tracking, harness/run/tracking.py; gradient health,
# harness/run/gradients.py): none of their parameters enters the id (tests/test_tracking.py and
# tests/test_gradients.py check that metrics are the same with them off).
WATCHERS = ("Tracker", "GradientHealth")
_GIN_INTERNAL = ("macro", "constant", "singleton")
REQUIRED = "<required>"


def configurables() -> dict[str, Any]:
    """{name: gin Configurable} of every registered configurable (gin keeps them in a private map;
    gin-config 0.5's, stable since 2019)."""
    return {c.name: c for _, c in gin.config._REGISTRY.items() if c.name not in _GIN_INTERNAL}


def _bound_names(registry: dict) -> list[str]:
    """Configurables with a binding in the current config (unscoped; macros are resolved where used)."""
    names = []
    for scope, selector in gin.config._CONFIG:
        name = selector.rsplit(".", 1)[-1]
        if not scope and name in registry and name not in NON_TRIAL_CONFIGURABLES:
            names.append(name)
    return names


def _scoped_bindings() -> dict[str, dict]:
    """Bindings under a Gin scope (`scope/Configurable.param`), kept as written: they apply only where
    the code enters that scope, which a signature cannot tell."""
    out = {}
    for (scope, selector), params in gin.config._CONFIG.items():
        if scope and not selector.startswith("gin."):
            out[f"{scope}/{selector}"] = {k: canonical(v) for k, v in sorted(params.items())}
    return out


def resolve_macros(value):
    """A `%MACRO` binding's value (a macro is a plain value, so evaluating it has no side effects);
    other values as they are."""
    while isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value


def canonical(value):
    """A JSON value that is equal for equal computations: macros resolved, floats by repr, tuples as
    lists, dict keys sorted, references by name."""
    value = resolve_macros(value)
    if isinstance(value, gin.config.ConfigurableReference):
        return repr(value)  # '@Name' or '@Name()'; the configurable's own parameters are listed apart
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else float(repr(value))
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if value is gin.REQUIRED or value is inspect.Parameter.empty:
        return REQUIRED
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def parameters(configurable) -> dict:
    """Every parameter of a gin Configurable, bookkeeping ones left out: its Gin binding (raw: macros
    and references unevaluated), else its signature default."""
    fn = configurable.wrapped
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = {}
    for name, p in inspect.signature(target).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[name] = p.default
    # bound values win (also **kwargs ones); gin's raw bindings, not get_bindings(), which would
    # evaluate `@X()` references into objects whose repr holds a memory address
    params.update(gin.config._CONFIG.get(("", configurable.selector), {}))
    skip = BOOKKEEPING.get(configurable.name, ())
    return {k: v for k, v in params.items() if k not in skip}


def _is_neutral(value, neutral) -> bool:
    value = resolve_macros(value)
    return value is None if neutral is None else (type(value) is type(neutral) and value == neutral)


def references(value, registry: dict) -> list[str]:
    if isinstance(value, gin.config.ConfigurableReference):
        name = value.configurable.name
        return [name] if name in registry else []
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in references(v, registry)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in references(v, registry)]
    return []


def reachable(start, registry: dict, skip=()) -> dict[str, dict]:
    """{configurable: its parameters (parameters())} of `start` and of every configurable their
    values reference (`@X`, `@X()`), transitively; names not registered and those in `skip` left out.
    The identity (operative), the unused-binding check (harness/run/usage.py) and the positive
    settings check (harness/run/sweep.py) all walk the config this way."""
    queue, out = list(start), {}
    while queue:
        name = queue.pop(0)
        if name in out or name in skip or name not in registry:
            continue
        out[name] = parameters(registry[name])
        for value in out[name].values():
            queue += references(value, registry)
    return out


def operative() -> dict[str, dict]:
    """{configurable: {parameter: canonical value}} of the parsed config (see the module docstring)."""
    registry = configurables()
    queue = [*ROOTS, *_bound_names(registry)]
    method = cfg.query("Trainer.method", None)
    if isinstance(method, gin.config.ConfigurableReference):  # the method's package: all its configurables
        package = method.configurable.module.rsplit(".", 1)[0]
        queue += [n for n, c in registry.items() if c.module == package or c.module.startswith(package + ".")]
    walked = reachable(queue, registry, skip=WATCHERS)
    return {name: {k: canonical(v) for k, v in sorted(walked[name].items())
                   if not (k in NEUTRAL.get(name, {}) and _is_neutral(v, NEUTRAL[name][k]))}
            for name in sorted(walked)}


def operative_modules() -> list[str]:
    """The modules that define the configurables of the parsed config's operative set (for the code
    fingerprint: a method defined outside the project's folders is hashed too)."""
    registry = configurables()
    return sorted({registry[name].module for name in operative() if name in registry})


def identity(data: dict) -> dict:
    """The document a trial id hashes: the operative parameters of the parsed config, any scoped
    bindings, the scene's data fingerprint `data`, and ID_VERSION."""
    try:
        doc = {"version": ID_VERSION, "operative": operative(), "scoped": _scoped_bindings(), "data": data}
    except (TypeError, ValueError) as exc:  # a signature or value gin cannot resolve
        raise ConfigError(f"cannot resolve the trial's operative config: {exc}") from None
    return doc


def identity_text(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


def trial_id(doc: dict) -> str:
    return hashlib.sha256(identity_text(doc).encode()).hexdigest()[:12]
