"""Checkpoints: atomic, checksummed, newest-valid-wins.

Each checkpoint is `step_<N>.pt` (torch.save of a dict) with `step_<N>.pt.sha256` beside it.
Loading verifies the checksum; a truncated or corrupted file is skipped with a warning that
names it and the previous good one is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path

import torch

from harness.records import atomic_write_bytes

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save(directory: Path, step: int, payload: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically (data first, then its checksum), prune old ones."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = Path(directory) / f"step_{step:08d}.pt"
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    for _, old in _checkpoints(Path(directory))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def _verified(path: Path) -> dict | None:
    sums = path.with_name(path.name + ".sha256")
    if not sums.exists():
        log.warning("checkpoint %s has no checksum file (killed while saving?): skipped", path)
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sums.read_text().strip():
        log.warning("checkpoint %s fails its checksum (truncated or corrupted): skipped", path)
        return None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable
        log.warning("checkpoint %s cannot be read (%s): skipped", path, exc)
        return None


def load_latest(directory: Path) -> tuple[int, dict] | None:
    """The newest checkpoint that verifies, as (step, payload), or None."""
    for step, path in reversed(_checkpoints(Path(directory))):
        payload = _verified(path)
        if payload is not None:
            return step, payload
    return None
