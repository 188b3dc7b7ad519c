"""`harness reproduce EXP TRIAL_ID`: re-run a done trial from its record into a scratch folder and
compare (issue 22, item 6): metrics to the last digit, the final parameters bit for bit, and what
differs between the machine and code that made the record and the ones reproducing it.

The re-run is an ordinary trial job (harness.run.launch.TrialJob) whose experiment file is the trial's
own `config.gin`, so it runs locally, in-process (`debug`) or on SLURM like any trial, checks that
the config still resolves to the same id, and uses the recorded torch thread count.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from harness.core import provenance
from harness.core.errors import HarnessError
from harness.core.records import TrialRecord, read_json
from harness.run import checkpoints

log = logging.getLogger(__name__)


def compare_parameters(a: dict, b: dict) -> list[str]:
    """One line per tensor that is not bit-identical (or missing on one side)."""
    ta, tb = checkpoints.named_tensors(a), checkpoints.named_tensors(b)
    out = [f"parameter {n}: only in the record" for n in sorted(set(ta) - set(tb))]
    out += [f"parameter {n}: only in the reproduction" for n in sorted(set(tb) - set(ta))]
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            out.append(f"parameter {name}: {tuple(x.shape)} {x.dtype} -> {tuple(y.shape)} {y.dtype}")
        elif not torch.equal(x, y):
            diff = (x.double() - y.double()).abs()
            out.append(f"parameter {name}: {int((x != y).sum())} of {x.numel()} values differ, "
                       f"max |diff| {float(diff.max()):.3g}")
    return out


def _same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def compare_metrics(a: dict, b: dict) -> list[str]:
    """One line per metric (mean, and per view) that is not equal to the last digit."""
    out = []
    for key in ("psnr", "ssim", "lpips", "iterations"):
        if key in a or key in b:
            if not _same(a.get(key), b.get(key)):
                out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    va, vb = a.get("per_view") or {}, b.get("per_view") or {}
    views = [v for v in sorted(set(va) | set(vb)) if not _same(va.get(v), vb.get(v))]
    if views:
        out.append(f"per_view: {len(views)} of {len(set(va) | set(vb))} views differ (first: {views[0]}: "
                   f"{va.get(views[0])} -> {vb.get(views[0])})")
    return out


def reproduce(runs_dir: Path, experiment: str, trial_id: str, settings: dict, out: Path | None = None) -> dict:
    """Re-run the trial and compare; returns {'dir', 'metrics', 'parameters', 'environment'} (lists
    of difference lines; empty lists mean identical)."""
    from harness.run import launch

    record = TrialRecord(Path(runs_dir) / experiment / trial_id)
    status = record.status()
    if not record.status_path.exists():
        raise HarnessError(f"{record.dir}: no such trial record (wrong EXP, TRIAL_ID or --runs-dir?)")
    if status.get("state") != "done" or not record.metrics_path.exists():
        raise HarnessError(f"{record.dir}: trial is {status.get('state')}, not done: nothing to reproduce")
    latest = checkpoints.load_latest(record.checkpoint_dir)
    if latest is None:
        raise HarnessError(f"{record.dir}: no final checkpoint to compare parameters with")
    scratch = Path(out) if out else record.dir.parent / ".reproduce" / f"{trial_id}-{time.strftime('%Y%m%dT%H%M%S')}"
    scratch.mkdir(parents=True, exist_ok=False)
    (scratch / "config.gin").write_bytes(record.config_path.read_bytes())
    executor = launch.make_executor(settings, scratch.parent / ".submitit")
    threads = status.get("torch_threads") or settings.get("threads")
    job = executor.submit(launch.TrialJob(), str(record.config_path), [], [], trial_id, str(scratch), threads)
    log.info("reproducing trial %s in %s (job %s)", trial_id, scratch, job.job_id)
    exc = job.exception()  # waits; for `debug` it runs the job here
    if exc is not None:
        error = TrialRecord(scratch).status().get("error") or str(exc).strip().splitlines()[-1]
        raise HarnessError(f"the reproduction of {trial_id} failed: {error} (folder {scratch})")
    again = TrialRecord(scratch)
    mine = again.status()
    found = checkpoints.load_latest(again.checkpoint_dir)
    recorded = {"code": status.get("code") or {}, "environment": status.get("environment") or {}}
    current = {"code": mine.get("code") or {}, "environment": mine.get("environment") or {}}
    return {"dir": str(scratch),
            "metrics": compare_metrics(record.metrics() or {}, read_json(again.metrics_path, {}) or {}),
            "parameters": compare_parameters(latest[1]["method"], found[1]["method"]) if found else
            ["the reproduction wrote no checkpoint"],
            "environment": provenance.differences(recorded, current)}
