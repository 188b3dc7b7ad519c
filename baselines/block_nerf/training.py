"""Training machinery: per-component optimizers and learning rates, schedules with warm-up, gradient
clipping, mixed precision (CUDA only)."""

from __future__ import annotations

import contextlib
import math

import gin
import torch

from harness.core.errors import ConfigError

SCHEDULES = ("exponential", "cosine", "step", "constant")
OPTIMISERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@gin.register
class Schedule:
    """lr(step) = base * warm-up factor * decay factor.

    warm-up: linear from `warmup_start` to 1 over `warmup_steps`.
    exponential: final_factor ** (step / total); cosine: final + (1 - final)(1 + cos(pi step/total))/2;
    step: gamma ** (number of `milestones` passed); constant: 1."""

    def __init__(self, kind: str = "exponential", total_steps: int = 1000, final_factor: float = 0.1,
                 warmup_steps: int = 0, warmup_start: float = 0.01, milestones=(), gamma: float = 0.1):
        if kind not in SCHEDULES:
            raise ConfigError(f"Schedule.kind must be one of {SCHEDULES}, got {kind!r}")
        if total_steps < 1 or warmup_steps < 0 or not 0 < final_factor <= 1:
            raise ConfigError(f"Schedule: need total_steps >= 1, warmup_steps >= 0, 0 < final_factor <= 1 "
                              f"(got {total_steps}, {warmup_steps}, {final_factor})")
        self.kind, self.total, self.final = kind, int(total_steps), float(final_factor)
        self.warmup, self.warmup_start = int(warmup_steps), float(warmup_start)
        self.milestones, self.gamma = tuple(int(m) for m in milestones), float(gamma)

    def factor(self, step: int) -> float:
        f = min(1.0, step / self.total)
        if self.kind == "exponential":
            decay = self.final ** f
        elif self.kind == "cosine":
            decay = self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * f))
        elif self.kind == "step":
            decay = self.gamma ** sum(step >= m for m in self.milestones)
        else:
            decay = 1.0
        if self.warmup and step < self.warmup:
            decay *= self.warmup_start + (1 - self.warmup_start) * step / self.warmup
        return decay


class ComponentOptimisers:
    """One optimizer per named component ({name: (parameters, lr)}), all on one schedule."""

    def __init__(self, components: dict, schedule: Schedule, optimizer: str = "adam", clip_norm: float = 0.0,
                 eps: float = 1e-8):
        if optimizer not in OPTIMISERS:
            raise ConfigError(f"Optimization.optimizer = {optimizer!r}: expected one of {sorted(OPTIMISERS)}")
        self.schedule, self.clip_norm = schedule, float(clip_norm)
        self.base = {k: float(lr) for k, (_, lr) in components.items()}
        kw = {"eps": eps} if optimizer != "sgd" else {}
        lists = {k: (list(params), lr) for k, (params, lr) in components.items()}
        self.opts = {k: OPTIMISERS[optimizer](params, lr=lr, **kw) for k, (params, lr) in lists.items() if params}
        self.params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in self.opts.items()}
        self.frozen: frozenset[str] = frozenset()

    def freeze(self, components: frozenset[str]) -> None:
        """Stop training `components` (a training stage): no gradient is computed for them and they are not
        stepped, so their optimiser state (moments, step count) is kept for when they train again."""
        self.frozen = frozenset(components)
        for k, ps in self.params.items():
            for p in ps:
                p.requires_grad_(k not in self.frozen)

    def zero_grad(self) -> None:
        for o in self.opts.values():
            o.zero_grad(set_to_none=True)

    def step(self, step: int, scaler=None, before_update=None, before_unscale=None) -> float:
        """Set learning rates for `step`, clip (per component), step; returns the largest grad norm.
        `before_unscale(gradients)` gets them as backward left them (data parallel: the all-reduce, so that
        with mixed precision every rank's scaler finds the same inf/NaN and skips the same steps);
        `before_update({component: [gradients]})` sees them unscaled and not yet clipped."""
        factor = self.schedule.factor(step)
        worst = 0.0
        if before_unscale is not None:
            before_unscale(self.gradients())
        active = {k: o for k, o in self.opts.items() if k not in self.frozen}
        for k, o in self.opts.items():
            for g in o.param_groups:
                g["lr"] = self.base[k] * factor
        for o in active.values():
            if scaler is not None:
                scaler.unscale_(o)
        if before_update is not None:
            before_update(self.gradients())
        for k, o in active.items():
            if self.clip_norm > 0:
                worst = max(worst, float(torch.nn.utils.clip_grad_norm_(self.params[k], self.clip_norm)))
            if scaler is not None:
                scaler.step(o)
            else:
                o.step()
        if scaler is not None:
            scaler.update()
        return worst

    def gradients(self) -> dict[str, list[torch.Tensor]]:
        """{component: [gradients]} of the parameters that have one, in a fixed order."""
        return {k: [p.grad for p in ps if p.grad is not None] for k, ps in self.params.items() if k not in self.frozen}

    def telemetry(self) -> dict[str, float]:
        """Per component: the learning rate last set."""
        return {f"lr/{k}": float(o.param_groups[0]["lr"]) for k, o in self.opts.items()}

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.opts.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.opts.items():
            o.load_state_dict(state[k])


def autocast(device: torch.device, enabled: bool):
    """bfloat16/float16 autocast on CUDA when enabled; a no-op elsewhere (CPU training stays float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
