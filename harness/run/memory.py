"""Peak memory of one call (a training step, the render of a view), and the trial record's `memory` entry.

CPU: a call's peak is the process's peak resident set size (VmHWM in /proc/self/status) while it ran.
Just before the call the kernel's high-water mark is reset to the current RSS (writing "5" to
/proc/self/clear_refs, Linux >= 4.0); the call's growth is VmHWM after it minus VmRSS before it: what it
made resident on top of what was there (its activations and temporaries, and any state it creates).
Freed memory that the C allocator keeps for reuse (glibc) would hide a call's growth, so it is handed
back to the system first (malloc_trim; skipped where the C library has none). Without /proc, or where
the kernel refuses the reset, the figures are None and `note` says why (not measurable).
GPU: torch's allocator: the peak is max_memory_allocated after reset_peak_memory_stats, the growth that
peak minus memory_allocated before the call (tensors only; the CUDA context and the caching allocator's
reserve are not counted).

Resetting the high-water mark also lowers what getrusage reports as the process's peak from then on
(ru_maxrss is that mark), and resetting CUDA's peak statistics lowers max_memory_allocated:
`process_peak_rss_mb` and `process_peak_cuda_mb` keep the highest mark seen before any reset, so a
trial's peak_rss_mb is still the whole process's.

Persistent parts (grid, optimiser state, ...) come from the method's 'memory' capability
(`memory_components() -> {part: bytes}`, harness.core.method); the step's `transient_mb` (activations
and temporaries) is its growth minus what those parts grew by during it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.method import has as has_capability

MB = 2**20
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# a reset that left VmHWM this far above VmRSS did not happen (a kernel that ignores "5")
_RESET_SLACK_KB = 4096
_peak_before_resets = {"rss_kb": 0, "cuda_bytes": 0}  # the highest marks this process reached before a reset


def _status_kb() -> dict[str, int] | None:
    """VmHWM and VmRSS of this process in kB, or None without /proc."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out if len(out) == 2 else None


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None


_LIBC = _libc()


def trim_allocator() -> bool:
    """Hand freed heap memory back to the system (glibc's malloc_trim), so the next call's growth is not
    hidden by reused pages; False where the C library has no malloc_trim."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def _reset_rss_mark() -> tuple[int | None, str]:
    """Reset the peak-RSS mark to the current RSS: (RSS in kB after the reset, '') or (None, why not)."""
    status = _status_kb()
    if status is None:
        return None, f"no {STATUS} (not Linux): peak RSS of a call not measurable"
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError as exc:
        return None, f"cannot reset the peak RSS mark ({CLEAR_REFS}: {exc.strerror or exc}): not measurable"
    after = _status_kb()
    if after is None or after["VmHWM"] > after["VmRSS"] + _RESET_SLACK_KB:
        return None, f"the kernel did not reset the peak RSS mark ({CLEAR_REFS}): not measurable"
    # the mark before the reset was at least the one read before writing (read first, then reset)
    _peak_before_resets["rss_kb"] = max(_peak_before_resets["rss_kb"], status["VmHWM"])
    return after["VmRSS"], ""


def process_peak_rss_mb() -> float:
    """The process's peak RSS in MB (2^20 bytes), including marks that measuring calls reset."""
    import resource

    now_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    status = _status_kb()
    if status is not None:
        now_kb = max(now_kb, status["VmHWM"])
    return round(max(now_kb, _peak_before_resets["rss_kb"]) / 1024, 1)


def process_peak_cuda_mb(device=None) -> float | None:
    """torch's peak allocated GPU memory in MB, including what measuring calls reset; None without CUDA."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(max(torch.cuda.max_memory_allocated(device), _peak_before_resets["cuda_bytes"]) / MB, 1)


@dataclass
class Peak:
    """One call's memory: `peak` (bytes: the process's peak RSS on the CPU, torch's peak allocation on a
    GPU), `growth` (bytes over what was resident/allocated before the call), or None with `note`."""

    kind: str  # 'rss' (CPU: /proc) | 'cuda' (torch.cuda) | 'none' (not measurable)
    before: int | None = None
    peak: int | None = None
    note: str = ""
    seconds: float = 0.0

    @property
    def growth(self) -> int | None:
        return None if self.peak is None or self.before is None else max(0, self.peak - self.before)

    def record(self) -> dict:
        """For the record and the profile table: MB rounded to 0.1, the call's seconds."""
        if self.peak is None:
            return {"measured": self.kind, "note": self.note}
        return {"measured": self.kind, "peak_mb": mb(self.peak), "growth_mb": mb(self.growth),
                "seconds": round(self.seconds, 4)}


def mb(n: float | None) -> float | None:
    return None if n is None else round(n / MB, 1)


def compute_device(method) -> torch.device:
    """Where a method computes: its `device` capability, else the CPU."""
    return torch.device(method.device) if has_capability(method, "device") else torch.device("cpu")


@contextlib.contextmanager
def measure(device: torch.device | str | None = None):
    """`with measure(device) as peak: call()`: the call's Peak (filled in when the block ends, also when
    it raises). `device`: where the call computes (a torch device; None: the CPU)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        _peak_before_resets["cuda_bytes"] = max(_peak_before_resets["cuda_bytes"], torch.cuda.max_memory_allocated(dev))
        torch.cuda.reset_peak_memory_stats(dev)
        peak = Peak("cuda", before=torch.cuda.memory_allocated(dev))
    else:
        trim_allocator()
        before_kb, note = _reset_rss_mark()
        peak = Peak("rss", before=before_kb * 1024) if before_kb is not None else Peak("none", note=note)
    t0 = time.perf_counter()
    try:
        yield peak
    finally:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        peak.seconds = time.perf_counter() - t0
        if dev.type == "cuda":
            peak.peak = torch.cuda.max_memory_allocated(dev)
        elif peak.kind == "rss":
            status = _status_kb()
            peak.peak = status["VmHWM"] * 1024 if status is not None else None


def components(method) -> dict[str, int] | None:
    """The method's persistent parts in bytes ({part: bytes}), or None when it does not declare 'memory'."""
    if not has_capability(method, "memory"):
        return None
    return {str(k): int(v) for k, v in method.memory_components().items()}


def step_record(peak: Peak, step: int, rays: int, grown: int | None) -> dict:
    """A training step's entry: the Peak's figures, its step and rays, and `transient_mb` (growth minus
    `grown`, the bytes the method's persistent parts grew by during the step; None: not declared)."""
    out = {"step": int(step), "rays": int(rays), **peak.record()}
    if peak.growth is not None and grown is not None:
        out["transient_mb"] = mb(max(0, peak.growth - grown))
    return out


def measure_step(method, step: int, batch: dict, device=None, call: Callable | None = None) -> tuple[dict, dict]:
    """(losses, entry) of one training step of `method` (through `call`, default its train_step), measured
    on `device` (default: where the method computes); see step_record."""
    before = components(method)
    with measure(device if device is not None else compute_device(method)) as peak:
        losses = (call or method.train_step)(step, batch)
    after = components(method)
    grown = None if before is None or after is None else sum(after.values()) - sum(before.values())
    return losses, step_record(peak, step, len(batch["origins"]), grown)


class TrialProbe:
    """Measures, in a trial, the first training step of this attempt and the last step of training
    (`last_step`, the 0-based index of the final step) and the first view rendered (validation or test),
    by wrapping the method's `train_step` and the evaluation's `views` (instance attributes, removed by
    `record()`); nothing else is run, so the trial computes exactly what it would unmeasured. A step that
    raises (an out-of-memory retried with a smaller batch) leaves the probe armed for the next one."""

    def __init__(self, method, evaluation, last_step: int | None = None):
        self.method, self.evaluation, self.last_step = method, evaluation, last_step
        self.device = compute_device(method)
        self.steps: list[dict] = []
        self.render: dict | None = None
        self._train_step: Callable = method.train_step
        self._views: Callable = evaluation.views
        method.train_step = self._measured_step
        evaluation.views = self._measured_views

    def _measured_step(self, step: int, batch: dict):
        wanted = not self.steps or step == self.last_step
        if not wanted or any(s["step"] == step for s in self.steps):
            return self._train_step(step, batch)
        losses, entry = measure_step(self.method, step, batch, self.device, call=self._train_step)
        self.steps.append(entry)
        return losses

    def _measured_views(self, method, split, indices, **options):
        views = self._views(method, split, indices, **options)
        if self.render is not None:
            yield from views
            return
        with measure(self.device) as peak:
            first = next(views, None)
        if first is None:
            return
        self.render = {"view": first[0], "rays": int(split.cameras.width * split.cameras.height), **peak.record()}
        yield first
        yield from views

    def detach(self) -> None:
        """Remove the wrappers (each only while it is still the attribute: one set later stays)."""
        for obj, name, ours in ((self.method, "train_step", self._measured_step),
                                (self.evaluation, "views", self._measured_views)):
            if vars(obj).get(name) == ours:
                delattr(obj, name)

    def record(self) -> dict:
        """metrics.json's `memory`: how it was measured, `train_step` (the first step of this attempt),
        `train_step_last` (the last step of training, when measured and not the first), `render_view`
        (the first view rendered), on a GPU `peak_cuda_mb` (the process's peak allocation) and
        `components` ({part: bytes} now, when the method declares them);
        a part not measured is None (a resumed trial that had nothing left to train)."""
        self.detach()
        first = self.steps[0] if self.steps else None
        last = next((s for s in self.steps[1:] if s["step"] == self.last_step), None)
        out: dict = {"device": self.device.type, "measured": _how(self.device),
                     "train_step": first, "render_view": self.render}
        if last is not None:
            out["train_step_last"] = last
        if self.device.type == "cuda":  # the whole trial's, as peak_rss_mb is on the CPU
            out["peak_cuda_mb"] = process_peak_cuda_mb(self.device)
        comps = components(self.method)
        if comps is not None:
            out["components"] = comps
        return out


def _how(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated (tensors, not the CUDA context)"
    if _status_kb() is None:
        return "not measurable (no /proc/self/status)"
    return "process peak RSS (VmHWM after resetting it through /proc/self/clear_refs)"
