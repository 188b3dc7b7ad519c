"""The two settings an experiment gives besides its trials' config: what it varies (`Sweep`) and how
it runs (`launch`). Neither is a trial configurable (harness.run.config.NON_TRIAL_CONFIGURABLES), so
neither enters a trial's id. Their Python names are their Gin names."""

from __future__ import annotations

import re

import gin

from harness.core.errors import ConfigError
from harness.core.staleness import check_policy

_SELECTOR = re.compile(r"[A-Za-z_][\w./]*\.[A-Za-z_]\w*")  # [scope/][module.]Configurable.param
_SCENE = re.compile(r"[\w-]+(/[\w-]+)*")


@gin.configurable
class Sweep(dict):
    """What an experiment varies: a dict of these settings, checked and normalised.

    axes:   {'Selector.param': [values...]}: cartesian product over all axes.
    zipped: {'Selector.param': [values...]}: varied together (all lists the same length).
    seeds:  seed values, bound to `seed_binding` in every trial.
    scenes: names of experiments/base/scenes/<name>.gin, included one per trial.
    exclude: [{'Selector.param': [values...], ...}, ...]: a variant matching every key of one of
            these (its value in the list) is left out (e.g. blocks 1-3 of a one-block variant).
    compose: how trials that only make sense together are evaluated together (harness/run/composition.py).
    search: a search (random, Sobol or TPE through Optuna, with early stopping) in each grid cell
            (harness/run/search_space.py, harness/run/search.py); None: the grid alone.
    A string value starting with '@' is bound as a Gin reference (e.g. '@Adam').
    """

    def __init__(self, axes: dict | None = None, zipped: dict | None = None, seeds=(0,), scenes=(),
                 seed_binding: str = "Trainer.seed", exclude=(), compose: dict | None = None,
                 search: dict | None = None):
        for name, value in (("axes", axes), ("zipped", zipped)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"Sweep.{name} = {value!r:.80}: expected a dict {{'Configurable.param': [values]}}")
            for key in value or {}:
                if not isinstance(key, str) or not _SELECTOR.fullmatch(key):
                    raise ConfigError(f"Sweep.{name} key {key!r:.80}: expected a binding name "
                                      "like 'Configurable.param'")
        for name, value in (("seeds", seeds), ("scenes", scenes)):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"Sweep.{name} = {value!r:.80}: expected a list")
        for scene in scenes:
            if not isinstance(scene, str) or not _SCENE.fullmatch(scene):
                raise ConfigError(f"Sweep.scenes entry {scene!r:.80}: expected the name of "
                                  "experiments/base/scenes/<name>.gin")
        if not isinstance(seed_binding, str) or not _SELECTOR.fullmatch(seed_binding):
            raise ConfigError(f"Sweep.seed_binding = {seed_binding!r:.80}: expected a binding name like 'Trainer.seed'")
        from harness.run.search_space import parse as parse_search

        super().__init__(axes=dict(axes or {}), zipped=dict(zipped or {}), seeds=list(seeds), scenes=list(scenes),
                         seed_binding=seed_binding, exclude=list(exclude or ()), compose=compose,
                         search=parse_search(search, {**(axes or {}), **(zipped or {})}, seed_binding))


@gin.configurable
def launch(cluster: str = "local", parallel: int = 1, threads: int | None = None,
           timeout_min: int = 600, slurm_partition: str | None = None,
           slurm_account: str | None = None, slurm_qos: str | None = None,
           cpus_per_task: int = 2, mem_gb: float | None = None, gpus_per_node: int = 0,
           slurm_constraint: str | None = None, slurm_array_parallelism: int = 32,
           slurm_additional_parameters: dict | None = None, retry_failed: bool = False,
           wait: bool = False, stop_grace_s: float = 60.0, stale: str = "report", tasks_per_node: int = 1,
           nodes: int = 1, collective_timeout_s: float = 600.0):
    """How to run a sweep; none of this changes a trial's result, so none of it is in trial ids.

    `wait` (slurm): stay until every submitted trial has finished, noticing through sacct the
    jobs that ended without a result (cancelled, killed, out of memory); by default the sweep
    returns once the array is queued (follow it with `make status`).

    `stop_grace_s` (local): how long a sweep stopped by SIGTERM or Ctrl-C waits for its running
    trials to save their last step and end before it kills them.

    `stale`: what to do with done trials computed by other code than the checkout's (see
    harness/core/staleness.py): 'report' (keep, mark stale), 'rerun' or 'ignore'.

    `tasks_per_node` x `nodes` > 1: each trial trains data-parallel on that many processes
    (harness/run/distributed.py; the local cluster: one node, at most one task per CPU);
    `collective_timeout_s`: how long a rank waits in a collective for the others before failing."""
    if cluster not in ("local", "debug", "slurm"):
        raise ConfigError(f"launch.cluster = '{cluster}': expected 'local', 'debug' or 'slurm'")
    if parallel < 1:
        raise ConfigError(f"launch.parallel = {parallel}: expected a positive integer")
    check_policy(stale)
    check_parallel({"cluster": cluster, "tasks_per_node": tasks_per_node, "nodes": nodes,
                  "gpus_per_node": gpus_per_node})
    if isinstance(collective_timeout_s, bool) or not isinstance(collective_timeout_s, (int, float)) \
            or collective_timeout_s <= 0:
        raise ConfigError(f"launch.collective_timeout_s = {collective_timeout_s!r}: expected a number of seconds > 0")
    if isinstance(stop_grace_s, bool) or not isinstance(stop_grace_s, (int, float)) or stop_grace_s < 0:
        raise ConfigError(f"launch.stop_grace_s = {stop_grace_s!r}: expected a number of seconds >= 0")
    return dict(locals())


def check_parallel(settings: dict, method_cls=None) -> None:
    """One ConfigError line for a data-parallel launch (harness/run/distributed.py) that cannot run as
    asked: several tasks on the debug cluster, several nodes on the local one, more local tasks than
    CPUs, more tasks per node than GPUs (when GPUs are asked for), or a method without the
    `data_parallel` capability (`method_cls`, when given)."""
    import os

    tasks, nodes, cluster = settings.get("tasks_per_node", 1), settings.get("nodes", 1), settings["cluster"]
    for name, value in (("tasks_per_node", tasks), ("nodes", nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"launch.{name} = {value!r}: expected an integer >= 1")
    if tasks * nodes == 1:
        return
    if cluster == "debug":
        raise ConfigError(f"launch.tasks_per_node = {tasks}: the debug cluster runs a trial in this process; "
                          "use cluster='local' for several processes")
    if cluster == "local" and nodes > 1:
        raise ConfigError(f"launch.nodes = {nodes}: the local cluster has one node; use cluster='slurm'")
    if cluster == "local" and tasks > (os.cpu_count() or 1):
        raise ConfigError(f"launch.tasks_per_node = {tasks} is more than the {os.cpu_count()} CPUs here")
    gpus = settings.get("gpus_per_node") or 0
    if cluster == "slurm" and gpus and tasks > gpus:
        raise ConfigError(f"launch.tasks_per_node = {tasks} is more than launch.gpus_per_node = {gpus} "
                          "(one GPU per task)")
    if method_cls is not None and "data_parallel" not in tuple(getattr(method_cls, "capabilities", ())):
        name = getattr(method_cls, "__name__", repr(method_cls))
        raise ConfigError(f"launch.tasks_per_node x nodes = {tasks * nodes} but {name} does not declare the "
                          "'data_parallel' capability (it cannot train on several processes)")
