"""SLURM queries for sweeps run as job arrays: squeue/sacct parsing, cancelling, and noticing
trials whose job ended without writing a result (cancelled, killed, out of memory, node failure).

Parsers take the text of `squeue -h -r -o '%i|%T|%M|%N|%r'` and
`sacct -n -P -X -o JobID,State,Elapsed,NodeList,ExitCode`, so they are unit-tested on captured
output. A live job is what squeue lists; a finished one is what sacct says (sacct needs slurmdbd,
which scripts/local-slurm.sh sets up).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from harness.core.errors import HarnessError, RecordError
from harness.core.records import TrialRecord

log = logging.getLogger(__name__)

SQUEUE_FORMAT = "%i|%T|%M|%N|%r"
SACCT_FIELDS = "JobID,State,Elapsed,NodeList,ExitCode"
# Final states in which a job wrote no result of its own. COMPLETED is not here: a completed job
# wrote its record. A requeued job shows as PENDING/REQUEUED in squeue, so it is never "lost".
LOST_STATES = {"CANCELLED", "FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "PREEMPTED", "BOOT_FAIL",
               "DEADLINE"}
# Record states a SLURM job may still move on; the others are final.
OPEN_RECORD_STATES = ("pending", "running", "preempted")
_ARRAY = re.compile(r"^(\d+)_\[([^\]]+)\]$")


class SlurmError(HarnessError):
    """squeue/sacct/scancel missing or failing."""


@dataclass
class JobInfo:
    job_id: str          # "123_4" for array task 4 of array 123, "123" for a plain job
    state: str           # first word of SLURM's state: "CANCELLED by 0" -> "CANCELLED"
    elapsed: str = ""
    node: str = ""
    reason: str = ""     # squeue: why pending; sacct: exit code "code:signal"
    source: str = ""     # "squeue" (live) or "sacct" (from accounting)

    @property
    def held(self) -> bool:
        return self.source == "squeue" and self.state == "PENDING" and self.reason == "JobHeldUser"

    @property
    def lost(self) -> bool:
        """Ended without a result of its own: the trial's record must be marked by us."""
        return self.source == "sacct" and self.state in LOST_STATES

    @property
    def ended(self) -> bool:
        """Over (not queued, running or requeued). A COMPLETED job has written its trial's final
        state before exiting, so an open record under an ended job means no result will come."""
        return self.lost or (self.source == "sacct" and self.state == "COMPLETED")


def array_id(job_id: str) -> str:
    """'123_4' -> '123' (what scancel/sacct -j take for the whole array)."""
    return str(job_id).split("_")[0]


def _expand(job_id: str) -> list[str]:
    """'123_[2-5,7%2]' -> ['123_2', ..., '123_5', '123_7']; other ids unchanged."""
    m = _ARRAY.match(job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        step = 1
        if ":" in hi:
            hi, step_text = hi.split(":")
            step = int(step_text)
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1, step)]
    return out


def _rows(text: str, n_fields: int):
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < n_fields:
            raise SlurmError(f"unexpected SLURM output line (expected {n_fields} '|' fields): {line!r}")
        yield fields


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """`squeue -h -r -o '%i|%T|%M|%N|%r'` -> {job id: JobInfo}."""
    out = {}
    for job_id, state, elapsed, node, reason in _rows(text, 5):
        for jid in _expand(job_id.strip()):
            out[jid] = JobInfo(jid, state.split()[0], elapsed, node, reason, "squeue")
    return out


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """`sacct -n -P -X -o JobID,State,Elapsed,NodeList,ExitCode` -> {job id: JobInfo}.

    Pending array tasks come collapsed ('123_[2-5%2]'); a row naming one task wins over a range
    that also covers it (sacct lists a started task both ways after the array is cancelled)."""
    single: dict[str, JobInfo] = {}
    ranged: dict[str, JobInfo] = {}
    for job_id, state, elapsed, node, exit_code in _rows(text, 5):
        job_id = job_id.strip()
        node = "" if node == "None assigned" else node
        target = ranged if _ARRAY.match(job_id) else single
        for jid in _expand(job_id):
            target[jid] = JobInfo(jid, state.split()[0] if state.strip() else "UNKNOWN", elapsed, node,
                                  exit_code, "sacct")
    return {**ranged, **single}


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"`{cmd[0]}` is not on PATH: is SLURM installed here? (scripts/local-slurm.sh up)")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(cmd)}` did not answer in 60 s (is slurmctld/slurmdbd up?)") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise SlurmError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {msg[-1] if msg else 'no output'}")
    return proc.stdout


def squeue(arrays: list[str]) -> dict[str, JobInfo]:
    """Live jobs (pending, running, requeued) of these arrays."""
    if not arrays:
        return {}
    try:
        return parse_squeue(_run(["squeue", "-h", "-r", "-o", SQUEUE_FORMAT, "-j", ",".join(arrays)]))
    except SlurmError as exc:
        if "Invalid job id" in str(exc):  # squeue -j fails once none of the ids is known any more
            return {}
        raise


def sacct(arrays: list[str]) -> dict[str, JobInfo]:
    if not arrays:
        return {}
    # -S: by default sacct only shows jobs since midnight; a sweep may be older
    return parse_sacct(_run(["sacct", "-n", "-P", "-X", "-S", "2000-01-01", "-o", SACCT_FIELDS,
                             "-j", ",".join(arrays)]))


def query(job_ids: list[str]) -> dict[str, JobInfo]:
    """What SLURM knows of these jobs: squeue for live ones, else sacct. Ids it does not know are absent."""
    arrays = sorted({array_id(j) for j in job_ids})
    known = sacct(arrays)  # before squeue: a job ending in between reads as still running, never as lost
    known.update(squeue(arrays))
    return {j: known[j] for j in job_ids if j in known}


def job_id_of(record: TrialRecord, status: dict | None = None) -> str | None:
    status = record.status() if status is None else status
    jid = status.get("slurm_job_id")
    return str(jid) if jid else None


def reconcile(records: list[TrialRecord]) -> dict[str, JobInfo]:
    """Mark open trials whose SLURM job ended without a result (CANCELLED -> `cancelled`;
    FAILED, OUT_OF_MEMORY, NODE_FAIL, TIMEOUT, ..., or COMPLETED with the record still open ->
    `failed`, with the state in the error line).

    Returns {trial dir name: JobInfo} for every record with a SLURM job id that SLURM knows of.
    A trial whose lock is held (a process still runs it) is left alone."""
    ids = {}
    for r in records:
        status = r.status()
        jid = job_id_of(r, status)
        if jid:
            ids[r.dir.name] = (r, jid, status.get("state", "pending"))
    if not ids:
        return {}
    infos = query([jid for _, jid, _ in ids.values()])
    out = {}
    for name, (r, jid, state) in ids.items():
        info = infos.get(jid)
        if info is None:
            continue
        out[name] = info
        if state in OPEN_RECORD_STATES and info.ended:
            mark_lost(r, info)
    return out


def mark_lost(record: TrialRecord, info: JobInfo) -> bool:
    """Record that `info`'s job ended without a result; False if the trial moved on meanwhile."""
    try:
        with record.lock():
            status = record.status()
            if status.get("state") not in OPEN_RECORD_STATES or str(status.get("slurm_job_id")) != info.job_id:
                return False  # finished, or resubmitted as another job, since we looked
            new = "cancelled" if info.state == "CANCELLED" else "failed"
            record.set_state(new, slurm_state=info.state,
                             error=f"SLURM job {info.job_id} ended {info.state} (exit {info.reason}) "
                                   f"without writing a result; log: {status.get('log_stderr', '?')}")
    except RecordError as exc:  # locked: a process is still running the trial
        log.debug("%s", exc)
        return False
    log.warning("trial %s: SLURM job %s ended %s without a result: marked %s", record.dir.name, info.job_id,
                info.state, new)
    return True


def release(job_ids: list[str]) -> list[str]:
    """Release held arrays (submit_slurm holds an array until its records are written)."""
    arrays = sorted({array_id(j) for j in job_ids})
    if arrays:
        _run(["scontrol", "release", *arrays])
    return arrays


def cancel(job_ids: list[str]) -> list[str]:
    """scancel the arrays of these jobs; returns the array ids cancelled."""
    arrays = sorted({array_id(j) for j in job_ids})
    if arrays:
        _run(["scancel", *arrays])
    return arrays


def mark_cancelled(records: list[TrialRecord], arrays: list[str], timeout_s: float = 60.0) -> int:
    """After scancel: wait until the arrays have left squeue (their processes are gone, so the
    trial locks are free), then mark the records still open `cancelled`. Returns how many."""
    deadline = time.monotonic() + timeout_s
    while arrays and time.monotonic() < deadline:
        if not squeue(arrays):
            break
        time.sleep(1)
    marked = 0
    for r in records:
        while True:
            try:
                with r.lock():
                    status = r.status()
                    if status.get("state") in OPEN_RECORD_STATES:
                        job = status.get("slurm_job_id", "-")
                        r.set_state("cancelled", slurm_state="CANCELLED",
                                    error=f"cancelled by `harness cancel` (SLURM job {job})")
                        marked += 1
                break
            except RecordError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    log.warning("trial %s not marked cancelled: %s", r.dir.name, exc)
                    break
                time.sleep(0.5)  # its process is still exiting
    return marked

