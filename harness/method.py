"""The one protocol every baseline implements; the trial runner knows nothing else about it.

A method is a Gin-configurable class. The runner builds it as `method_cls(scene=scene, seed=seed)`
and then only calls the members below. Methods train and render; they never compute metrics
(harness.metrics does), never write files (harness.trial does), never launch anything.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Method(Protocol):
    #: rays per training step; the runner draws batches of this size from the train split
    batch_size: int

    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on `batch` (keys: origins, directions (unit), rgb, image_index;
        float32 CPU tensors, moved by the method to its device). Schedules that depend on the
        step (learning rates, coarse-to-fine, pruning) are applied here. Returns scalar losses
        as floats, including 'loss' (the total). Must be deterministic given (state, step, batch)."""

    def render(self, origins: torch.Tensor, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render rays without gradients: returns 'rgb' (M, 3) in [0, 1], 'depth' (M,), 'acc' (M,)
        on the CPU. The runner calls it in chunks of rays."""

    def state_dict(self) -> dict:
        """Everything needed to resume training bit-for-bit (parameters, optimiser state, grid
        resolution, RNG state if any), as tensors/ints/floats/lists (saved with torch.save)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned, including shapes that changed during training."""

    def stats(self) -> dict[str, float]:
        """Model facts for the record (e.g. parameter count, memory in bytes, voxel count)."""


DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str) -> torch.device:
    """A method's `device` binding: 'auto' is the GPU when torch sees one, else the CPU. A
    specific device ('cuda:1') is taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be one of {DEVICES} or a torch device string, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here "
                         f"(torch {torch.__version__}); use device='auto' or 'cpu'")
    return dev


def check_positive_settings(reference) -> None:
    """A method may list settings that must be positive finite numbers (learning rates, batch
    sizes) in an optional class attribute `positive_settings`; check their operative values (Gin
    binding, else the signature's default) when the sweep expands, so a negative learning rate is
    one ConfigError line before anything is queued, not a job failing on the cluster.
    `reference`: Gin's reference to the method (the value of `Trainer.method`)."""
    import inspect
    import math

    import gin

    from harness.errors import ConfigError
    from harness.identity import parameters, resolve_macros

    params, name = parameters(reference.configurable), reference.configurable.name
    for key in getattr(reference.configurable.wrapped, "positive_settings", ()):
        value = resolve_macros(params.get(key))  # absent: a **kwargs setting left unbound
        if value is None or value is inspect.Parameter.empty or isinstance(value, gin.config.ConfigurableReference):
            continue  # optional (e.g. a translation lr defaulting to another), or computed by a call
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise ConfigError(f"{name}.{key} = {value!r}: expected a positive number")
