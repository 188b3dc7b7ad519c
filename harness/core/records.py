"""The on-disk trial record: runs/<experiment>/<trial-id>/.

Layout (DESIGN.md "Trial record"): config.gin, status.json, metrics.json, train.jsonl,
progress.json, renders/, checkpoints/, lock. Every JSON/checkpoint write is atomic
(temp file in the same directory, fsync, rename, fsync of the directory), so a kill at any
instant leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import math
import os
import socket
import subprocess
import tempfile
from pathlib import Path

from harness.core import faults
from harness.core.errors import RecordError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"  # atomic writes go through .<name>.<random>.tmp in the same folder
# `collapsed`: training ended with finite numbers but learned nothing (harness.run.trial.Trainer's end
# checks); final like `diverged`, with metrics.json kept. `pruned`: a search's early stopping ended it at a
# rung (harness/run/pruning.py), its checkpoint at that step kept (`pruned_at`, `pruned_value` in status.json).
STATES = ("pending", "running", "done", "failed", "diverged", "collapsed", "pruned", "preempted", "cancelled")
# States no job moves on from by itself; all but `done` are re-run only on request (--retry-failed).
FINAL_STATES = ("done", "failed", "diverged", "collapsed", "pruned", "cancelled")
# Allowed status transitions; anything else is a bug in the caller.
TRANSITIONS = {
    "pending": {"running", "failed", "cancelled"},
    "running": {"running", "done", "failed", "diverged", "collapsed", "pruned", "preempted", "cancelled"},
    "preempted": {"running", "failed", "cancelled"},
    "failed": {"running", "cancelled"},
    "diverged": {"running", "cancelled"},
    "collapsed": {"running", "cancelled"},
    "pruned": {"running", "cancelled"},  # running: a search without that pruner resumes it from its rung
    "cancelled": {"running"},
    "done": {"running"},  # only when a re-run is explicitly asked for
}


def binding_label(bindings: dict) -> str:
    """'Plenoxels.sh_degree=2, seed=0': a trial's label (from its bindings) in records, logs and `make status`."""
    return ", ".join(f"{k}={v}" for k, v in bindings.items())


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteError(RecordError, OSError):
    """A record or checkpoint write that failed (disk full, quota, permissions): names the file."""

    def __str__(self) -> str:  # OSError's would be "[Errno N] strerror: filename"
        return self.args[0]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a partial one.

    A failed write (e.g. ENOSPC) removes the temp file, leaves the old file, and raises
    WriteError naming `path`."""
    path = Path(path)
    fault = faults.hit("write", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if fault:
                fault.write(f, data, path)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            fault.at("synced", path)
        os.replace(tmp, path)
        if fault:
            fault.at("renamed", path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(path, exc) from exc
        raise


def write_error(path: Path, exc: OSError) -> WriteError:
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    err = WriteError(f"cannot write {path}: {exc.strerror or exc}" + (f" ({name})" if name else ""))
    err.errno, err.filename = exc.errno, str(path)
    return err


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete temp files that a killed atomic write left in `directory` (call under the trial lock)."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _sanitize(obj):
    """JSON has no inf/nan: write them as strings so files stay standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj) -> None:
    text = json.dumps(_sanitize(obj), indent=2, sort_keys=True, default=_json_default)
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: Path, default=None):
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: corrupt JSON record ({exc})") from None


def git_commit() -> str | None:
    from harness.core.paths import PROJECT_ROOT

    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class TrialRecord:
    """Read/write access to one trial's folder."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    # paths
    @property
    def status_path(self) -> Path:
        return self.dir / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def config_path(self) -> Path:
        return self.dir / "config.gin"

    @property
    def identity_path(self) -> Path:
        return self.dir / "identity.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def renders_dir(self) -> Path:
        return self.dir / "renders"

    @property
    def log_path(self) -> Path:
        return self.dir / "train.jsonl"

    @property
    def progress_path(self) -> Path:
        return self.dir / "progress.json"

    # status
    def status(self) -> dict:
        return read_json(self.status_path, default={"state": "pending"})

    @property
    def state(self) -> str:
        return self.status().get("state", "pending")

    def set_state(self, state: str, **fields) -> dict:
        """Transition to `state`, checking it is allowed, merging `fields` into status.json."""
        if state not in STATES:
            raise RecordError(f"{self.status_path}: unknown state '{state}'")
        status = self.status()
        old = status.get("state", "pending")
        if state not in TRANSITIONS[old]:
            raise RecordError(f"{self.status_path}: illegal transition {old} -> {state}")
        status.update(fields)
        status["state"] = state
        status["updated"] = now_iso()
        if state in FINAL_STATES:
            status["finished"] = status["updated"]
        atomic_write_json(self.status_path, status)
        return status

    def begin_attempt(self, **fields) -> dict:
        """Mark a new attempt at running this trial (first run, resume, requeue or retry)."""
        status = self.set_state("running", host=socket.gethostname(), git_commit=git_commit(),
                                pid=os.getpid(), **fields)
        status["attempts"] = int(status.get("attempts", 0)) + 1
        status.setdefault("started", status["updated"])
        if status.get("pruned_at") is not None:  # a pruned trial resumed (promoted) from its rung's checkpoint
            status["resumed_from_rung"] = status["pruned_at"]
        for key in ("error", "traceback", "finished", "collapse", "pruned_at", "pruned_value"):
            status.pop(key, None)
        atomic_write_json(self.status_path, status)
        return status

    def update(self, **fields) -> dict:
        """Merge `fields` into status.json without changing the state."""
        status = self.status()
        status.update(fields)
        atomic_write_json(self.status_path, status)
        return status

    def requeue(self, allowed: tuple[str, ...], note: dict | None = None, **fields) -> dict:
        """Back to `pending` from one of the `allowed` states, with `fields`: the outcome it had
        (state, error, psnr, job, plus `note`) moves to `previous` rather than being shown as the
        current one. Used when a retry is queued as a new SLURM job, and when a stale trial is
        recomputed (harness/core/staleness.py)."""
        status = self.status()
        old = status.get("state", "pending")
        if old not in allowed:
            raise RecordError(f"{self.status_path}: cannot queue a {old} trial again")
        if old != "pending":
            kept = ("state", "error", "psnr", "finished", "slurm_job_id", "slurm_state", "git_commit")
            status.setdefault("previous", []).append({**{k: status[k] for k in kept if k in status}, **(note or {})})
        for key in ("error", "traceback", "finished", "slurm_state", "psnr", "collapse"):
            status.pop(key, None)
        status.update(fields, state="pending", updated=now_iso())
        atomic_write_json(self.status_path, status)
        return status

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def metrics(self) -> dict | None:
        return read_json(self.metrics_path)

    def write_progress(self, step: int, total: int, **fields) -> None:
        atomic_write_json(self.progress_path, {"step": step, "total": total, **fields})

    def progress(self) -> dict | None:
        try:
            return read_json(self.progress_path)
        except RecordError:
            return None

    def append_log(self, entry: dict) -> None:
        """One JSON line in train.jsonl; flushed and fsynced so a crash loses at most this line."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(_sanitize(entry), sort_keys=True, default=_json_default) + "\n").encode()
        fault = faults.hit("log", self.log_path)
        with open(self.log_path, "ab") as f:
            if fault:
                fault.write(f, line, self.log_path)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def trim_log(self, last_step: int) -> None:
        """Keep only the train.jsonl lines up to `last_step` (the checkpoint a resume starts from),
        dropping a torn last line, so that the resumed run's lines follow on as in an uninterrupted run."""
        rows = [r for r in self.read_log() if int(r.get("step", 0)) <= last_step]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        if self.log_path.exists() and self.log_path.read_text() != text:
            atomic_write_bytes(self.log_path, text.encode())

    def read_log(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        rows = []
        for line in self.log_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a kill: skip it, the rest is intact
        return rows

    @contextlib.contextmanager
    def lock(self, wait: bool = False):
        """Exclusive per-trial lock (flock: released when the holder exits, even by kill -9).
        Without `wait`, raises RecordError if another process holds it; with `wait`, blocks until
        it is free. Yields whether it waited. The holder's host and pid are written into the lock
        file for messages."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                if not wait:
                    raise RecordError(f"{self.dir}: trial is locked by another process ({holder})") from None
                log.info("trial %s is being run by %s: waiting for it", self.dir.name, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
                waited = True
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield waited
        finally:
            os.close(fd)  # closing releases the flock


def create_trial_record(directory: Path, meta: dict, config: str) -> TrialRecord:
    """Make the trial folder with config.gin and a pending status, keeping an existing record."""
    record = TrialRecord(directory)
    try:
        record.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a read-only runs dir: one line naming the folder
        raise write_error(record.dir, exc) from None
    if not record.config_path.exists():  # an existing one is kept: the same id is the same computation,
        atomic_write_bytes(record.config_path, config.encode())  # however another sweep wrote its config
    if not record.status_path.exists():
        _create_json(record.status_path, {"state": "pending", "created": now_iso(), "attempts": 0, **meta})
    return record


def _create_json(path: Path, obj) -> None:
    """Write a complete JSON file only if `path` does not exist yet (link() refuses to replace),
    so two sweeps preparing the same trial cannot overwrite a status the other has moved on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    atomic_write_json(tmp, obj)
    try:
        os.link(tmp, path)
        _fsync_dir(path.parent)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the trial, running under its lock, already tidied our temp file away
        if not path.exists():
            raise
    finally:
        tmp.unlink(missing_ok=True)
