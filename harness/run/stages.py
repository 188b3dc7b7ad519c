"""Training in stages (`Trainer.stages`) and the training rays of each stage.

A stage is a dict in Gin:

    Trainer.stages = [
        {'name': 'coarse', 'steps': 2000, 'downscale': 4, 'train': ['mlp', 'appearance']},
        {'name': 'fine', 'steps': 2000, 'downscale': 2, 'train': ['mlp', 'appearance', 'pose_rotation']},
        {'name': 'refine', 'steps': 1000, 'set': {'visibility_weight': 1.0}},
    ]

`steps` (required; the stages' steps sum to Trainer.iterations), `downscale` (training rays from the
train images box-filtered by this integer factor, intrinsics scaled alike; default 1), `train` (the
parameter groups that train, of the method's `parameter_groups()`; default all; the others are frozen:
not updated, their optimiser state kept), `set` (values of the method's `stage_values` attributes for
this stage, e.g. a loss weight; the configured value everywhere else) and `name` (default stage<k>).
The stage of a step is a function of the step alone, so a resumed trial lands in the stage an
uninterrupted one is in; the last step of every stage is checkpointed.

A method trains in stages when it has the `stages` capability: `parameter_groups()`, `freeze(groups)`
(a frozenset of the groups that must not be updated) and `stage_values` (the attribute names a stage
may `set`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.core.data.images import downscale as box_filter
from harness.core.data.images import downscale_mask
from harness.core.data.rays import RaySampler
from harness.core.data.scene import Cameras
from harness.core.errors import ConfigError
from harness.core.method import has as has_capability

KEYS = ("name", "steps", "downscale", "train", "set")


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    start: int  # its first step (0-based: the step that train_step(start, ...) makes)
    steps: int
    downscale: int = 1
    train: tuple[str, ...] | None = None  # None: every group
    values: dict = field(default_factory=dict)

    @property
    def stop(self) -> int:
        return self.start + self.steps

    def record(self) -> dict:
        return {"name": self.name, "start": self.start, "steps": self.steps, "downscale": self.downscale,
                "train": list(self.train) if self.train is not None else "all", "set": dict(self.values)}


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: expected an integer >= 1, got {value!r}")
    return value


def parse(stages, iterations: int) -> list[Stage]:
    """The stages of `Trainer.stages` (None or [] : no stages), checked: one ConfigError line naming the
    stage for an unknown key, a bad count or factor, or steps that do not sum to `iterations`."""
    if stages is None or (isinstance(stages, (list, tuple)) and not stages):
        return []
    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"Trainer.stages: expected a list of dicts, got {type(stages).__name__}")
    out, start = [], 0
    for k, spec in enumerate(stages):
        where = f"Trainer.stages[{k}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a dict with keys {KEYS}, got {spec!r}")
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; a stage has {KEYS}")
        name = str(spec.get("name", f"stage{k}"))
        where = f"Trainer.stages[{k}] ('{name}')"
        if "steps" not in spec:
            raise ConfigError(f"{where}: 'steps' is required")
        steps = _positive_int(spec["steps"], f"{where} steps")
        factor = _positive_int(spec.get("downscale", 1), f"{where} downscale")
        train = spec.get("train", "all")
        if train == "all":
            groups = None
        elif isinstance(train, (list, tuple)) and all(isinstance(g, str) for g in train):
            groups = tuple(train)
        else:
            raise ConfigError(f"{where} train: expected 'all' or a list of parameter group names, got {train!r}")
        values = spec.get("set", {})
        if not isinstance(values, dict):
            raise ConfigError(f"{where} set: expected a dict of values, got {values!r}")
        out.append(Stage(k, name, start, steps, factor, groups, dict(values)))
        start += steps
    if start != iterations:
        raise ConfigError(f"Trainer.stages: the stages' steps sum to {start}, but Trainer.iterations = {iterations}")
    return out


def at(stages: list[Stage], step: int) -> Stage | None:
    """The stage that makes step `step` (0-based), or None without stages."""
    for stage in stages:
        if step < stage.stop:
            return stage
    return stages[-1] if stages else None


def check_method(stages: list[Stage], method) -> None:
    """Before training: the method can train in stages, every group named exists, no stage freezes every
    group, and every `set` key is one the method declares."""
    if not stages:
        return
    name = type(method).__name__
    if not has_capability(method, "stages"):
        raise ConfigError(f"Trainer.stages: {name} does not declare the 'stages' capability "
                          "(parameter_groups, freeze, stage_values)")
    groups = set(method.parameter_groups())
    allowed = tuple(getattr(method, "stage_values", ()))
    for s in stages:
        where = f"Trainer.stages[{s.index}] ('{s.name}')"
        if s.train is not None:
            unknown = sorted(set(s.train) - groups)
            if unknown:
                raise ConfigError(f"{where} train: unknown group(s) {unknown}; {name} has {sorted(groups)}")
            if not set(s.train):
                raise ConfigError(f"{where} train: freezes every group; name at least one of {sorted(groups)}")
        bad = sorted(set(s.values) - set(allowed))
        if bad:
            raise ConfigError(f"{where} set: {bad} cannot be set by a stage; {name} allows {list(allowed)}")


class StageSwitch:
    """Applies a stage to the method (frozen groups, `set` values; the configured values restored where a
    stage does not set them) when the stage changes."""

    def __init__(self, method, stages: list[Stage]):
        self.method, self.stages = method, stages
        self.current: Stage | None = None
        keys = {k for s in stages for k in s.values}
        self.configured = {k: getattr(method, k) for k in keys}

    def enter(self, step: int) -> Stage | None:
        """The stage of `step`, applied if it is not the one applied already; None without stages."""
        stage = at(self.stages, step)
        if stage is None or stage is self.current:
            return stage
        groups = set(self.method.parameter_groups())
        self.method.freeze(frozenset() if stage.train is None else frozenset(groups - set(stage.train)))
        for key, value in self.configured.items():
            setattr(self.method, key, stage.values.get(key, value))
        self.current = stage
        return stage


def downscaled_cameras(cameras: Cameras, factor: int) -> Cameras:
    """Intrinsics of images box-filtered by `factor` (pixel centres stay pixel centres)."""
    if cameras.width % factor or cameras.height % factor:
        raise ConfigError(f"Trainer.stages: images of {cameras.width}x{cameras.height} cannot be downscaled by "
                          f"{factor} (not divisible)")
    return Cameras(cameras.c2w, cameras.fx / factor, cameras.fy / factor, cameras.cx / factor, cameras.cy / factor,
                   cameras.width // factor, cameras.height // factor)


def downscaled_depth(depth: np.ndarray, factor: int, agree: float = 0.05) -> np.ndarray:
    """(N, H, W) depths for pixels `factor` x larger: the mean where the block's depths agree to `agree`
    (relative) or are all infinite (sky), NaN (no depth: skipped) where they do not (an edge)."""
    n, h, w = depth.shape
    blocks = depth.reshape(n, h // factor, factor, w // factor, factor).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, h // factor, w // factor, -1)
    with np.errstate(invalid="ignore"):
        lo, hi = blocks.min(-1), blocks.max(-1)
        mean = blocks.mean(-1)
        ok = (hi - lo <= agree * np.abs(lo)) | np.isinf(lo)
    return np.where(ok, mean, np.nan).astype(np.float32)


def sampler(images: np.ndarray, cameras: Cameras, seed: int, factor: int, masks: np.ndarray | None,
            depth: np.ndarray | None) -> RaySampler:
    """The training rays of a stage at downscale `factor`: images box-filtered, masks kept only where every
    pixel of the block is kept, depth where the block agrees (`downscaled_depth`)."""
    if factor == 1:
        return RaySampler(images, cameras, seed, masks=masks, depth=depth)
    small = np.stack([box_filter(img, factor) for img in images])
    cams = downscaled_cameras(cameras, factor)
    if masks is not None:
        masks = np.stack([downscale_mask(m, factor) for m in masks])
    if depth is not None:
        depth = downscaled_depth(depth, factor)
    return RaySampler(small, cams, seed, masks=masks, depth=depth)


class TrainingRays:
    """The rays of every step: from the sampler of the step's stage (its downscale), inside the centre crop
    `precrop_frac` for the first `precrop_steps` steps; a pure function of (seed, step) like RaySampler."""

    def __init__(self, images: np.ndarray, cameras: Cameras, seed: int, stages: list[Stage],
                 masks: np.ndarray | None = None, depth: np.ndarray | None = None, precrop_steps: int = 0,
                 precrop_frac: float = 0.5):
        self.images, self.cameras, self.seed, self.stages = images, cameras, seed, stages
        self.masks, self.depth = masks, depth
        self.precrop_steps, self.precrop_frac = precrop_steps, precrop_frac
        self._samplers: dict[int, RaySampler] = {}

    def sampler(self, factor: int) -> RaySampler:
        if factor not in self._samplers:
            self._samplers[factor] = sampler(self.images, self.cameras, self.seed, factor, self.masks, self.depth)
        return self._samplers[factor]

    def sample(self, step: int, batch_size: int, patch_size: int = 1, images=None) -> dict:
        """`images`: draw from these train images only (a method's 'time_steps' capability)."""
        stage = at(self.stages, step)
        rays = self.sampler(stage.downscale if stage is not None else 1)
        return rays.sample(step, batch_size, patch_size, crop=self.precrop_frac if step < self.precrop_steps else 1.0,
                           images=images)
