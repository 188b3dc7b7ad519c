"""Block-NeRF's settings in parts, one per concern, each a plain value object whose `__init__`
validates its settings and stores them (docs/block_nerf.md lists every one):

- `MipField`: the mip-NeRF field network and its ray sampling.
- `Appearance`: appearance codes, exposure conditioning and the test-time appearance protocol.
- `Visibility`: the visibility network (`BlockNeRF.visibility = None`: none).
- `PoseRefinement`: learned pose offsets and their regulariser (`BlockNeRF.pose_refinement = None`: none).
- `PoseNoise`: the known perturbation of the training poses (`BlockNeRF.pose_noise = None`: none).
- `Optimization`: optimizer, learning rates per component, schedule, clipping, mixed precision.

An experiment binds each part it uses (`BlockNeRF.field = @MipField()`, experiments/base/block_nerf.gin)
and sets it through its own name (`MipField.width = 128`). The parts are registered with Gin
(`gin.register`), as the Plenoxels loss terms are: Python code building one never reads Gin bindings,
so a reference is the only way in, and a binding to a part no reference reaches is an error when the
sweep expands (harness.run.usage). A bad value is one ConfigError line naming `Part.param`.
"""

from __future__ import annotations

import math
from typing import NoReturn

import gin

from baselines.block_nerf import protocol as proto
from baselines.block_nerf.sampling import SPACINGS
from baselines.block_nerf.training import OPTIMISERS, Schedule
from harness.core.errors import ConfigError

APPEARANCE_MODES = ("appearance_id", "image", "none")


def _fail(part: str, param: str, value, expected: str) -> NoReturn:
    raise ConfigError(f"{part}.{param} = {value!r:.80}: expected {expected}")


def _integer(part: str, param: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(part, param, value, f"an integer >= {minimum}")
    return value


def _number(part: str, param: str, value, positive: bool = False) -> float:
    """A finite number, > 0 (`positive`) or >= 0; returned as a float."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        _fail(part, param, value, "a positive number" if positive else "a number >= 0")
    return float(value)


def _choice(part: str, param: str, value, options: tuple) -> str:
    if value not in options:
        _fail(part, param, value, f"one of {options}")
    return value


def _flag(part: str, param: str, value) -> bool:
    if not isinstance(value, bool):
        _fail(part, param, value, "True or False")
    return value


class _Part:
    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


@gin.register
class MipField(_Part):
    """The field network (mip-NeRF MLP: IPE of `pos_freqs` frequencies -> `depth` x `width` ReLU layers,
    the input re-injected after layer `skip`; colour branch of `colour_width` on the direction's
    `dir_freqs`-frequency encoding) and its ray sampling (`n_coarse` + `n_fine` samples, coarse ones
    spaced by `spacing` between `near` and `far`, None: the scene's; the coarse MSE weighs
    `coarse_loss_weight` in the loss)."""

    def __init__(self, n_coarse: int = 32, n_fine: int = 32, spacing: str = "log", near: float | None = None,
                 far: float | None = None, coarse_loss_weight: float = 0.1, pos_freqs: int = 12,
                 dir_freqs: int = 4, depth: int = 4, width: int = 64, skip: int = 2, colour_width: int = 32):
        p = "MipField"
        self.n_coarse, self.n_fine = _integer(p, "n_coarse", n_coarse, 2), _integer(p, "n_fine", n_fine, 0)
        self.spacing = _choice(p, "spacing", spacing, SPACINGS)
        self.near = None if near is None else _number(p, "near", near, positive=True)
        self.far = None if far is None else _number(p, "far", far, positive=True)
        if self.near is not None and self.far is not None and not self.near < self.far:
            _fail(p, "far", far, f"a number > MipField.near ({near})")
        self.coarse_loss_weight = _number(p, "coarse_loss_weight", coarse_loss_weight)
        self.pos_freqs, self.dir_freqs = _integer(p, "pos_freqs", pos_freqs, 1), _integer(p, "dir_freqs", dir_freqs, 0)
        self.depth, self.width = _integer(p, "depth", depth, 1), _integer(p, "width", width, 1)
        self.skip, self.colour_width = _integer(p, "skip", skip, 0), _integer(p, "colour_width", colour_width, 1)


@gin.register
class Appearance(_Part):
    """Appearance codes of `dim` (`mode`: one per `appearance_id`, one per training `image`, or `none`),
    the exposure input to the colour branch (`exposure`: log2(exposure) x `exposure_scale` through an
    `exposure_freqs`-frequency encoding), and the test-time protocol (`test_protocol`: 'auto' picks
    the mode's own; 'left_half' fits a code with `fit_steps` Adam steps of `fit_lr` on `fit_rays`
    rays of the left half of each test image, baselines/block_nerf/protocol.py)."""

    positive_settings = ("fit_lr",)  # checked when the sweep expands (harness.run.sweep.check_positive_settings)

    def __init__(self, mode: str = "appearance_id", dim: int = 32, exposure: bool = True, exposure_freqs: int = 4,
                 exposure_scale: float = 0.5, test_protocol: str = "auto", fit_steps: int = 64,
                 fit_lr: float = 0.05, fit_rays: int = 512):
        p = "Appearance"
        self.mode, self.dim = _choice(p, "mode", mode, APPEARANCE_MODES), _integer(p, "dim", dim, 1)
        self.exposure, self.exposure_freqs = _flag(p, "exposure", exposure), _integer(p, "exposure_freqs",
                                                                                      exposure_freqs, 0)
        self.exposure_scale = _number(p, "exposure_scale", exposure_scale, positive=True)
        try:
            self.protocol = proto.choose(mode, test_protocol)  # the protocol the test views are rendered with
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.test_protocol = test_protocol
        self.fit_steps, self.fit_rays = _integer(p, "fit_steps", fit_steps, 0), _integer(p, "fit_rays", fit_rays, 1)
        self.fit_lr = _number(p, "fit_lr", fit_lr, positive=True)


@gin.register
class Visibility(_Part):
    """The visibility network V(x, d) (`depth` x `width`, IPE of `freqs` frequencies), trained to the
    density network's transmittance with loss weight `weight`; its error is evaluated on every
    `eval_stride`-th pixel of the test views."""

    def __init__(self, weight: float = 0.1, width: int = 32, depth: int = 2, freqs: int = 8, eval_stride: int = 4):
        p = "Visibility"
        self.weight, self.width = _number(p, "weight", weight), _integer(p, "width", width, 1)
        self.depth, self.freqs = _integer(p, "depth", depth, 0), _integer(p, "freqs", freqs, 1)
        self.eval_stride = _integer(p, "eval_stride", eval_stride, 1)


@gin.register
class PoseRefinement(_Part):
    """Learned pose offsets per pose group (`BlockNeRF.pose_groups`), L2-regularised with a weight that
    decays linearly from `reg_initial` to `reg_final` over `reg_steps` (baselines/block_nerf/pose.py)."""

    def __init__(self, reg_initial: float = 10.0, reg_final: float = 0.01, reg_steps: int = 500):
        p = "PoseRefinement"
        self.reg_initial, self.reg_final = _number(p, "reg_initial", reg_initial), _number(p, "reg_final", reg_final)
        self.reg_steps = _integer(p, "reg_steps", reg_steps, 0)


@gin.register
class PoseNoise(_Part):
    """The known perturbation of the training poses, grouped as the offsets (`BlockNeRF.pose_groups`):
    each group rotated by exactly `rotation_deg` and moved by exactly `translation` (world units), or,
    when `translation` is None, by `translation_frac` x the block's radius."""

    def __init__(self, rotation_deg: float = 0.0, translation: float | None = None, translation_frac: float = 0.0):
        p = "PoseNoise"
        self.rotation_deg = _number(p, "rotation_deg", rotation_deg)
        self.translation = None if translation is None else _number(p, "translation", translation)
        self.translation_frac = _number(p, "translation_frac", translation_frac)


@gin.register
class Optimization(_Part):
    """One `optimizer` ('adam', 'adamw', 'sgd') per component, each with its learning rate (`lr_mlp`,
    `lr_appearance`, `lr_visibility`, `lr_pose` for the pose rotation, `lr_pose_translation` for the
    pose translation, None: `lr_pose`), all on one `schedule` (None: `Schedule()`), per-component
    gradient clipping at `clip_norm` (0: none), float16 autocast when `mixed_precision` (CUDA only)."""

    positive_settings = ("lr_mlp", "lr_appearance", "lr_visibility", "lr_pose", "lr_pose_translation")

    def __init__(self, optimizer: str = "adam", lr_mlp: float = 5e-3, lr_appearance: float = 5e-3,
                 lr_visibility: float = 5e-3, lr_pose: float = 1e-3, lr_pose_translation: float | None = None,
                 schedule: Schedule | None = None, clip_norm: float = 0.0, mixed_precision: bool = True):
        p = "Optimization"
        self.optimizer = _choice(p, "optimizer", optimizer, tuple(sorted(OPTIMISERS)))
        self.lr_mlp = _number(p, "lr_mlp", lr_mlp, positive=True)
        self.lr_appearance = _number(p, "lr_appearance", lr_appearance, positive=True)
        self.lr_visibility = _number(p, "lr_visibility", lr_visibility, positive=True)
        self.lr_pose = _number(p, "lr_pose", lr_pose, positive=True)
        self.lr_pose_translation = (None if lr_pose_translation is None
                                    else _number(p, "lr_pose_translation", lr_pose_translation, positive=True))
        if schedule is not None and not isinstance(schedule, Schedule):
            _fail(p, "schedule", schedule, "@Schedule() or None")
        self.schedule = schedule if schedule is not None else Schedule()
        self.clip_norm = _number(p, "clip_norm", clip_norm)
        self.mixed_precision = _flag(p, "mixed_precision", mixed_precision)
