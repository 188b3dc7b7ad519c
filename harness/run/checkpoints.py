"""Checkpoints: atomic, checksummed, newest-valid-wins.

Each checkpoint is `step_<N>.pt` (torch.save of a dict) with `step_<N>.pt.sha256` beside it
(written before it).
Loading verifies the checksum; a truncated or corrupted file is skipped with a warning that
names it and the previous good one is used.

The best state by validation PSNR is `best_<N>.pt` (N: the step it was taken at), written the same
way. It is named by step rather than overwritten in place: with the checksum in a separate file,
an in-place rewrite cut between the two writes would leave new checksum + old data, losing the
best. A new best is complete before the older one is removed, so a kill leaves one or both.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path

import torch

from harness.core.records import atomic_write_bytes, remove_temp_files

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")
_BEST = re.compile(r"^best_(\d+)\.pt$")  # never matches _NAME: keep-N pruning and load_latest ignore it


def named_tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) method state dict, by its dotted name ('grid.sh', 'opt.state.0.v')."""
    if isinstance(state, torch.Tensor):
        return {prefix or "tensor": state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return {n: t for k, v in items for n, t in named_tensors(v, f"{prefix}.{k}" if prefix else str(k)).items()}


def _checkpoints(directory: Path, pattern: re.Pattern = _NAME) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def _write(path: Path, payload: dict) -> None:
    """Checksum first, then the data (both atomic); on a failed data write, drop the checksum."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    sums = _sums(path)
    atomic_write_bytes(sums, hashlib.sha256(data).hexdigest().encode())
    try:
        atomic_write_bytes(path, data)
    except BaseException:
        sums.unlink(missing_ok=True)
        raise


def save(directory: Path, step: int, payload: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically, prune old ones.

    The checksum is written first and the data second, so a `step_N.pt` never exists without its
    checksum: a kill in between leaves only a `.sha256` without data, which load ignores and
    `tidy` removes. A failed write (e.g. disk full) raises records.WriteError naming the file and
    leaves the older checkpoints as they were."""
    path = Path(directory) / f"step_{step:08d}.pt"
    _write(path, payload)
    for _, old in _checkpoints(Path(directory))[:-keep]:
        _remove(old)
    return path


def save_best(directory: Path, step: int, payload: dict) -> Path:
    """Write the best-so-far state as `best_<step>.pt` (atomic, checksummed like `save`), then remove
    older best files. The caller must not rewrite the step of an existing best (see the module doc)."""
    path = Path(directory) / f"best_{step:08d}.pt"
    _write(path, payload)
    for _, old in _checkpoints(Path(directory), _BEST):
        if old != path:
            _remove(old)
    return path


def _remove(path: Path) -> None:
    """A checkpoint and its checksum (data first, so a kill never leaves data without its checksum)."""
    path.unlink(missing_ok=True)
    _sums(path).unlink(missing_ok=True)


def load_best(directory: Path) -> tuple[int, dict] | None:
    """The newest best state that verifies, as (step, payload), or None. Newest is best: a best
    file is only written when its PSNR beats the previous one."""
    for step, path in reversed(_checkpoints(Path(directory), _BEST)):
        payload = _verified(path)
        if payload is not None:
            return step, payload
    return None


def _sums(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def tidy(directory: Path) -> None:
    """Remove what a killed save can leave behind: temp files and checksums without data.
    Call only while holding the trial's lock (no save in progress)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    removed = remove_temp_files(directory)
    for sums in [*directory.glob("step_*.pt.sha256"), *directory.glob("best_*.pt.sha256")]:
        if not sums.with_suffix("").exists():
            sums.unlink(missing_ok=True)
            removed.append(sums)
    if removed:
        log.info("removed %d leftover(s) of an interrupted checkpoint write in %s", len(removed), directory)


def _checked_bytes(path: Path) -> bytes | None:
    """The file's bytes if they match its checksum; else None, with a warning naming the file."""
    sums = _sums(path)
    try:
        data, expected = path.read_bytes(), sums.read_text().strip()
    except FileNotFoundError:
        log.warning("checkpoint %s has no checksum file: skipped", path)
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("checkpoint %s fails its checksum (truncated or corrupted): skipped", path)
        return None
    return data


def _verified(path: Path) -> dict | None:
    data = _checked_bytes(path)
    if data is None:
        return None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure means unusable
        log.warning("checkpoint %s cannot be read (%s): skipped", path, exc)
        return None


def load_latest(directory: Path) -> tuple[int, dict] | None:
    """The newest checkpoint that verifies, as (step, payload), or None."""
    for step, path in reversed(_checkpoints(Path(directory))):
        payload = _verified(path)
        if payload is not None:
            return step, payload
    return None


def newest_valid(directory: Path) -> Path | None:
    """The newest checkpoint file whose checksum verifies (without unpickling it), or None."""
    for _, path in reversed(_checkpoints(Path(directory))):
        if _checked_bytes(path) is not None:
            return path
    return None
