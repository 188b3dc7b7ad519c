"""The one protocol every baseline implements; the trial runner knows nothing else about it.

A method is a Gin-configurable class. The runner builds it as `method_cls(scene=scene, seed=seed)`
and then only calls the members below. Methods train and render; they never compute metrics
(harness.core.metrics does), never write files (harness.run.trial does), never launch anything.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
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


@runtime_checkable
class ViewProtocol(Protocol):
    """Optional: a method whose test views are not plain renders of the split's cameras (Block-NeRF
    fits each view's appearance code on its left half and is scored on the right half). The harness
    renders through these, saves the images and scores them; the method writes nothing."""

    def render_view(self, split, i: int) -> np.ndarray:
        """View i of `split` as scored: (H, W', 3) float32 in [0, 1]."""

    def scored_part(self, image: np.ndarray) -> np.ndarray:
        """The part of a full (H, W, 3) image that is scored (the same crop as render_view's)."""

    def evaluation_record(self, split, full: bool) -> dict:
        """Facts to store with the scores (e.g. the appearance protocol; with `full`, i.e. every test
        view scored, also facts about the trained model such as its block and poses)."""


@runtime_checkable
class SamplesProtocol(Protocol):
    """Optional ('samples'): what a method's render does along each ray, for `harness inspect`."""

    def ray_samples(self, origins: torch.Tensor, directions: torch.Tensor, view=None) -> dict:
        """The samples render() composites for these rays, from its own sampling and compositing code:
        'passes' {name: {'ray' (S,) long, 't', 'delta', 'sigma', 'alpha', 'transmittance' (before the
        sample), 'weight' (S,), 'rgb' (S, 3)}} (by ray, then by t), 'final' (the pass whose composite is
        the pixel), 'rgb' (M, 3) and 'acc' (M,) as render() returns them, 'background' (3,) or None (what
        1 - acc is blended with). With view=(split, i): under the conditioning of the method's scored
        render of that view ('views' methods), described in 'conditioning' (a str)."""


# Optional capabilities: a method names the ones it has in a class attribute `capabilities`; the harness
# uses a capability only when it is declared, and checks the declaration (`method_problems`) when the
# sweep expands (members defined on the class) and when the method is built (instance attributes).
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "patches": ("patch_size",),  # trains on p x p pixel patches (int attribute): the runner samples them
    "own_scene": ("trial_scene",),  # trains, validates and is scored on this Scene (e.g. one block's part)
    "device": ("device",),  # computes on this torch.device: recorded as the trial's device
    "views": ("render_view", "scored_part", "evaluation_record"),  # its own test-view protocol (ViewProtocol)
    # telemetry() -> {name: float} about the last training step, for logs and live tracking: learning
    # rates 'lr/<group>', model facts 'model/<fact>' (voxels, ...); gradients are the 'gradients' capability's
    "telemetry": ("telemetry",),
    # gradient health (harness/run/gradients.py): parameter_groups() -> {group: [parameter tensors]};
    # gradient_hook, an attribute the harness sets (None otherwise), which train_step calls between
    # backward and the update as gradient_hook(step, loss, {group: [gradients]}, scaled=...), with the
    # gradients the optimiser will apply (unscaled, before clipping; `scaled`: a loss scaler skips
    # non-finite steps); it may raise TrialDiverged, before anything is updated
    "gradients": ("parameter_groups", "gradient_hook"),
    "samples": ("ray_samples",),  # the samples its render composites, per ray (SamplesProtocol): harness inspect
    # memory_components() -> {part: bytes} of its persistent state (grid, optimiser state, ...; count them
    # with tensor_bytes), for the memory profile and the trial record (harness/run/memory.py)
    "memory": ("memory_components",),
    # data-parallel training of one trial on several processes (harness/run/distributed.py): data_parallel,
    # an attribute the harness sets (None otherwise) to the rank's DataParallel before training; train_step
    # then gets the rank's slice of the global batch, weights its loss (DataParallel.weight for means over
    # rays, 1 / size for terms equal on every rank) and sums its gradients over the ranks
    # (data_parallel.all_reduce_) before its update; per-ray randomness must depend on the global batch
    "data_parallel": ("data_parallel",),
    # training in stages (harness/run/stages.py): parameter_groups() -> {group: [tensors]}; freeze(groups)
    # stops updating those groups (a frozenset; their optimiser state kept) until called again;
    # stage_values: the attribute names a stage may set for its steps (e.g. a loss weight)
    "stages": ("parameter_groups", "freeze", "stage_values"),
    # a dynamic scene's time steps trained one after another: train_images(step) -> the train split's image
    # indices (np.ndarray) the runner draws the step's rays from (a pure function of the step); total_steps:
    # the training steps its schedule needs (the runner checks Trainer.iterations against it)
    "time_steps": ("train_images", "total_steps"),
}
REQUIRED = ("train_step", "render", "state_dict", "load_state_dict", "stats")


def declared(method) -> tuple[str, ...]:
    """The capabilities a method (class or instance) declares."""
    return tuple(getattr(method, "capabilities", ()))


def has(method, capability: str) -> bool:
    return capability in declared(method)


def method_problems(method) -> list[str]:
    """What a method class (or, built, its instance) lacks: the protocol's methods, the members of the
    capabilities it declares, and, on an instance, capability members it has without declaring them
    (which the harness would ignore); one line each."""
    name = method.__name__ if isinstance(method, type) else type(method).__name__
    problems = [f"{name} has no {m}() (harness.core.method.Method)"
                for m in REQUIRED if not callable(getattr(method, m, None))]
    for cap in declared(method):
        if cap not in CAPABILITIES:
            problems.append(f"{name}.capabilities names '{cap}': known capabilities are {', '.join(CAPABILITIES)}")
            continue
        for member in CAPABILITIES[cap]:
            if not hasattr(method, member) and (not isinstance(method, type) or member in _CLASS_MEMBERS):
                problems.append(f"{name} declares the '{cap}' capability but has no {member}")
    if not isinstance(method, type):
        for cap, members in CAPABILITIES.items():
            if cap not in declared(method) and all(hasattr(method, m) for m in members):
                problems.append(f"{name} has {', '.join(members)} but does not declare the '{cap}' capability "
                                f"(add it to {name}.capabilities)")
    return problems


# defined on the class; the other members are set in __init__
_CLASS_MEMBERS = {*CAPABILITIES["views"], *CAPABILITIES["telemetry"], "parameter_groups", "ray_samples",
                  "memory_components", "train_images"}


def tensor_bytes(*objs) -> int:
    """Bytes (numel * element_size) of the tensors in `objs`: tensors, modules (parameters and buffers),
    dicts (values), lists, tuples and sets, nested; each tensor counted once, anything else ignored.
    For a method's memory_components ('memory' capability)."""
    seen: set[int] = set()
    total, stack = 0, list(objs)
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.parameters())
            stack.extend(obj.buffers())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
    return total


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
