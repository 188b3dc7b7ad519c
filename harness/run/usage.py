"""Bindings no trial reads. Gin ignores a binding to a configurable nothing calls: an experiment that
sets `TVLoss.weight_density` but never references `@TVLoss()` trains without TV and says nothing.
Here a binding that no trial of a sweep reads is a ConfigError when the sweep expands.

What a trial calls: the harness's roots (`Trainer`, `load_scene`, `Evaluation`, `Tracker`), the procedural
scene generator `load_scene.path` names (`street_scene`), and every configurable referenced
(`@Name` / `@Name()`) from a parameter of something it calls. A method's parts are registered with
`gin.register`, so Python code building one never reads Gin: a reference is the only way in.
"""

from __future__ import annotations

import gin

from harness.core.errors import ConfigError
from harness.run.config import NON_TRIAL_CONFIGURABLES, query
from harness.run.identity import ROOTS, WATCHERS, configurables, reachable, resolve_macros


def reached() -> set[str]:
    """Names of the configurables the parsed config's trial calls."""
    start = [*ROOTS, *WATCHERS]
    if resolve_macros(query("load_scene.format", "blender")) == "procedural":
        start.append(f"{resolve_macros(query('load_scene.path', ''))}_scene")
    return set(reachable(start, configurables()))


def unused() -> dict[str, str]:
    """{configurable: one of its bound parameters} for each unscoped binding whose configurable the
    parsed config's trial never calls. A sweep reports those no trial calls (`report`): a part that
    only some trials reference (e.g. `BlockNeRF.pose_refinement = None` in one ablation row) is used."""
    registry, calls, out = configurables(), None, {}
    for scope, selector in gin.config._CONFIG:
        name = selector.rsplit(".", 1)[-1]
        if scope or name not in registry or name in NON_TRIAL_CONFIGURABLES:
            continue
        calls = reached() if calls is None else calls
        if name not in calls:
            out[name] = sorted(gin.config._CONFIG[(scope, selector)])[0]
    return out


def report(where: str, never: dict[str, str]) -> None:
    """One ConfigError line for the first binding no trial of a sweep uses."""
    if never:
        name, param = next(iter(never.items()))
        raise ConfigError(f"{where}: {name}.{param} is bound but no trial uses {name}: no reference @{name}() "
                          f"reaches it (e.g. bind <Method>.<part> = @{name}())")
