"""Gradient health while a trial trains (issue 25): per parameter group, every `GradientHealth.every`
steps, the gradient's norm, max |g|, signed mean, fraction of exact zeros and count of non-finite
entries, and the largest |value| of the group's parameters; warnings when a norm is above `exploding`
(the Block-NeRF design's 100) or below `vanishing` (its 1e-8); and, when a trial diverges, which group
went first.

A method opts in with the 'gradients' capability (harness.core.method): it calls its `gradient_hook`
(set here; None otherwise) with the step's loss and gradients *between backward and the update*, so a
non-finite loss is caught before it poisons the parameters: the values the diagnosis reads are the ones
that produced it. The group named is, in this order: the first whose values are already non-finite
(an earlier update overflowed), the first whose gradient is non-finite while the loss is finite, else
the group whose largest |value| grew the most since the last healthy statistics (a learning rate that
blows up makes its group's values huge before anything is NaN; the loss then makes every gradient NaN
at once). Watching never changes what a trial computes: it is not in the trial id (identity.WATCHERS).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import gin
import torch

from harness.core.errors import ConfigError, TrialDiverged

log = logging.getLogger(__name__)

STAT_NAMES = ("norm", "max", "mean", "zeros", "nonfinite", "value_max")  # logged as grad/<group>/<name>
PREFIX = "grad/"


def group_stats(grads: list[torch.Tensor], values: list[torch.Tensor] | None = None) -> dict[str, float]:
    """One group's statistics over all its gradient tensors together (norm, max |g| and mean over the
    finite entries; zeros and nonfinite as a fraction and a count of all entries), and the largest
    finite |value| of its parameters (`values`)."""
    flat = torch.cat([g.detach().reshape(-1) for g in grads]) if grads else torch.zeros(0)
    finite = torch.isfinite(flat)
    nonfinite = int(flat.numel() - finite.sum())
    ok = flat[finite] if nonfinite else flat
    n = ok.numel()
    out = {"norm": float(torch.linalg.vector_norm(ok.double())) if n else 0.0,
           "max": float(ok.abs().amax()) if n else 0.0,
           "mean": float(ok.double().mean()) if n else 0.0,
           "zeros": float((flat == 0).sum()) / flat.numel() if flat.numel() else 0.0,
           "nonfinite": float(nonfinite)}
    if values is not None:
        out["value_max"] = value_max(values)
    return out


def value_max(values: list[torch.Tensor]) -> float:
    """The largest finite |value| of a group's tensors (NaN when every entry is non-finite)."""
    best = -math.inf
    for v in values:
        v = v.detach()
        if v.numel():
            a = v.abs()
            a = a[torch.isfinite(a)] if not bool(torch.isfinite(a).all()) else a
            if a.numel():
                best = max(best, float(a.amax()))
    return best if best > -math.inf else math.nan


def nonfinite_count(tensors: list[torch.Tensor]) -> int:
    return int(sum(int((~torch.isfinite(t.detach())).sum()) for t in tensors))


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"GradientHealth.{name} = {value!r}: expected a positive number")
    return float(value)


@gin.configurable
class GradientHealth:
    """How gradients are watched (see the module docstring). `every`: steps between statistics (None:
    `Trainer.log_every`, so they land in the same train.jsonl rows; 0: never, the divergence diagnosis
    still runs); `exploding` / `vanishing`: the norm thresholds that warn."""

    def __init__(self, every: int | None = None, exploding: float = 100.0, vanishing: float = 1e-8):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ConfigError(f"GradientHealth.every = {every!r}: expected an integer >= 0 (0: never) or None")
        self.every_setting = every
        self.exploding, self.vanishing = _positive("exploding", exploding), _positive("vanishing", vanishing)
        if self.vanishing >= self.exploding:
            raise ConfigError(f"GradientHealth.vanishing = {vanishing!r} must be below GradientHealth.exploding = "
                              f"{exploding!r}")
        self.every = 0
        self.method: Any = None  # the watched method (its 'gradients' capability), while a trial trains
        self.pending: dict[str, float] = {}  # this step's statistics, taken by the trainer for its log row
        self.last_healthy: dict | None = None  # {"step", "stats": {group: stats}}: the latest all-finite statistics
        self.warnings: dict[str, dict] = {}  # "<group>: exploding" -> {first_step, last_step, count, norm}
        self.new_warning = False
        self.seconds = 0.0  # spent in observe(): metrics.json's gradient_health_time, the overhead figure

    # ---- attaching to a trial --------------------------------------------------------------------
    def attach(self, method, log_every: int, step: int) -> None:
        """Watch `method` from `step` on (0 or the resumed step): its hook is set, and the values at this
        point are the reference a later blow-up is measured against."""
        self.every = log_every if self.every_setting is None else self.every_setting
        self.method = method
        method.gradient_hook = self.observe
        groups = method.parameter_groups()
        self.last_healthy = {"step": step, "stats": {g: {"value_max": value_max(v)} for g, v in groups.items()}}

    def detach(self) -> None:
        if self.method is not None:
            self.method.gradient_hook = None
            self.method = None

    # ---- the hook the method calls between backward and its update -----------------------------------
    def observe(self, step: int, loss: torch.Tensor, grads: dict[str, list[torch.Tensor]],
                scaled: bool = False) -> None:
        """Called by the method at its 0-based `step` with the total loss and {group: gradient tensors}
        as the optimiser will receive them (unscaled, before clipping). `scaled`: a mixed-precision loss
        scaler owns non-finite gradients (it skips that step), so they do not end the trial."""
        t0 = time.perf_counter()
        try:
            done = step + 1  # the step number the trainer logs
            grads = {g: [t for t in ts if t is not None] for g, ts in grads.items()}
            if not bool(torch.isfinite(loss.detach()).all()) and not scaled:
                raise self.diverged(done, "loss", f"non-finite loss at step {done}: "
                                    f"{{'loss': {float(loss.detach())}}}", grads)
            if self.every and done % self.every == 0:
                self._statistics(done, grads, scaled)
        finally:
            self.seconds += time.perf_counter() - t0

    def _statistics(self, done: int, grads: dict, scaled: bool) -> None:
        values = self.method.parameter_groups()
        stats = {g: group_stats(ts, values.get(g)) for g, ts in grads.items() if ts}
        self.pending = {f"{PREFIX}{g}/{k}": v for g, s in stats.items() for k, v in s.items()}
        bad = [g for g, s in stats.items() if s["nonfinite"]]
        if bad and not scaled:
            raise self.diverged(done, "gradient", f"non-finite gradient at step {done} in {bad[0]}", grads)
        if not bad:
            self.last_healthy = {"step": done, "stats": stats}
        for g, s in stats.items():
            kind = "exploding" if s["norm"] > self.exploding else "vanishing" if s["norm"] < self.vanishing else None
            if kind is not None:
                self._warn(g, kind, done, s["norm"])

    def _warn(self, group: str, kind: str, step: int, norm: float) -> None:
        key = f"{group}: {kind}"
        seen = self.warnings.get(key)
        if seen is None:
            limit = self.exploding if kind == "exploding" else self.vanishing
            log.warning("step %d: gradient of %s %s (norm %.3g, GradientHealth.%s = %g)",
                        step, group, kind, norm, kind, limit)
            self.warnings[key] = {"first_step": step, "last_step": step, "count": 1, "norm": norm}
            self.new_warning = True
        else:
            seen.update(last_step=step, count=seen["count"] + 1, norm=norm)

    def take(self) -> dict[str, float]:
        """This step's statistics (empty when none were due), once."""
        out, self.pending = self.pending, {}
        return out

    # ---- when a trial diverges -------------------------------------------------------------------
    def diverged(self, step: int, cause: str, message: str, grads: dict | None = None) -> TrialDiverged:
        """A TrialDiverged whose `diagnosis` names the group that went first (module docstring); its
        message ends with that group."""
        diagnosis = self.diagnose(step, cause, grads)
        if diagnosis.get("group"):
            message += f"; first non-finite group: {diagnosis['group']} ({diagnosis['evidence']})"
        exc = TrialDiverged(message)
        exc.step, exc.diagnosis = step, diagnosis
        return exc

    def diagnose(self, step: int, cause: str, grads: dict | None = None) -> dict:
        """{step, cause, group, evidence, groups: {group: facts}, last_healthy} (see the module docstring)."""
        out: dict = {"step": step, "cause": cause, "group": None, "evidence": None, "groups": {},
                     "last_healthy": self.last_healthy}
        if self.method is None:
            return out
        values = self.method.parameter_groups()
        grads = grads or {}
        for g, vs in values.items():
            ts = grads.get(g) or []
            out["groups"][g] = {"value_nonfinite": nonfinite_count(vs), "value_max": value_max(vs),
                                "gradient_nonfinite": nonfinite_count(ts) if ts else None}
        out["group"], out["evidence"] = self._first(out["groups"], cause)
        return out

    def _first(self, facts: dict, cause: str) -> tuple[str | None, str | None]:
        for g, f in facts.items():
            if f["value_nonfinite"]:
                return g, f"{f['value_nonfinite']} non-finite values"
        if cause != "loss":  # with a NaN loss every gradient is NaN: it says nothing about where it began
            for g, f in facts.items():
                if f["gradient_nonfinite"]:
                    return g, f"{f['gradient_nonfinite']} non-finite gradient entries with a finite loss"
        healthy = self.last_healthy or {"step": None, "stats": {}}
        ref = healthy["stats"]
        # relative to at least 1, so a group that starts at zero (Plenoxels' SH) is not infinitely grown
        growth = {g: f["value_max"] / max(ref[g]["value_max"], 1.0) for g, f in facts.items()
                  if g in ref and math.isfinite(ref[g].get("value_max", math.nan)) and math.isfinite(f["value_max"])}
        if not growth:
            return None, None
        g = max(growth, key=lambda k: growth[k])
        since = healthy["step"]
        return g, (f"its max |value| went from {ref[g]['value_max']:.3g} at step {since} to "
                   f"{facts[g]['value_max']:.3g}, the largest growth of any group")

