"""Fault injection for the reliability tests: kill -9 or ENOSPC at a chosen point of a trial.

Inert unless the environment variable HARNESS_FAULT is set (one lookup per hook). Its value is
space-separated key=value fields, for example

    HARNESS_FAULT="action=kill point=write file=step_*.pt nth=2 phase=data byte=1000"

action  kill (SIGKILL this process) | enospc (raise OSError ENOSPC naming the file)
point   write (records.atomic_write_bytes) | log (records.append_log) | step (after a training step)
file    glob on the written file's name (write/log only; default: any)
nth     fire on the nth matching hit in this process (default 1)
phase   write: data (after `byte` bytes of the temp file) | synced (before the rename) |
        renamed (after the rename, before the directory fsync); log: data
byte    bytes written before a `data` fault fires (default 0; capped at the data's length)
repeat  1: fire on every matching hit from the nth on (a disk that stays full), 0: only the nth (default)
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from dataclasses import dataclass

ENV = "HARNESS_FAULT"
_hits: dict[str, int] = {}


@dataclass(frozen=True)
class Fault:
    action: str
    point: str
    file: str = "*"
    nth: int = 1
    phase: str = "data"
    byte: int = 0
    repeat: int = 0

    def fire(self, path) -> None:
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def write(self, f, data: bytes, path) -> None:
        """Write `data` to `f`, firing after `byte` bytes when this is a data-phase fault."""
        if self.phase != "data":
            f.write(data)
            return
        f.write(data[: self.byte])
        f.flush()
        self.fire(path)

    def at(self, phase: str, path) -> None:
        if self.phase == phase:
            self.fire(path)


def parse(spec: str) -> Fault:
    try:
        fields = dict(item.split("=", 1) for item in spec.split())
        fault = Fault(fields.pop("action"), fields.pop("point"), fields.pop("file", "*"), int(fields.pop("nth", 1)),
                      fields.pop("phase", "data"), int(fields.pop("byte", 0)), int(fields.pop("repeat", 0)))
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{ENV}={spec!r}: cannot parse ({exc})") from None
    if fields or fault.action not in ("kill", "enospc") or fault.point not in ("write", "log", "step") \
            or fault.phase not in ("data", "synced", "renamed"):
        raise ValueError(f"{ENV}={spec!r}: unknown action, point, phase or field")
    return fault


def hit(point: str, path=None) -> Fault | None:
    """The fault to apply at this hook, or None (always None when HARNESS_FAULT is unset)."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    fault = parse(spec)
    if fault.point != point or (path is not None and not fnmatch.fnmatch(os.path.basename(path), fault.file)):
        return None
    _hits[spec] = _hits.get(spec, 0) + 1
    return fault if _hits[spec] == fault.nth or (fault.repeat and _hits[spec] > fault.nth) else None
