"""Results computed by other code than this checkout's are never silently reused (issue 22, item 3).

Every attempt records the source fingerprint it ran with (`status.json` `code`, from
harness.core.provenance). A `done` trial whose recorded source hash differs from what the same files
hash to now, or that recorded none (written before code provenance existed), is *stale*. The sweep
says so in one line per experiment and applies a policy (`--stale`, or Gin `launch.stale`):
`report` (the default: keep the results, mark them stale in `make status` and the report),
`rerun` (archive the old results inside the trial folder, under `stale/`, and train again), or
`ignore`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter

from harness.core import provenance
from harness.core.errors import ConfigError, RecordError
from harness.core.records import TrialRecord

log = logging.getLogger(__name__)

POLICIES = ("report", "rerun", "ignore")
UNKNOWN = "not recorded"
# What a re-run moves aside (the rest of the folder, config and identity, stays).
RESULTS = ("metrics.json", "train.jsonl", "progress.json", "renders", "checkpoints")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ConfigError(f"launch.stale = {policy!r}: expected one of {', '.join(POLICIES)}")
    return policy


def stale_code(status: dict) -> str | None:
    """None when the done trial's recorded code is this checkout's; else its code, in short
    (`short_code`, or 'not recorded'). Only meaningful for `done` trials."""
    code = status.get("code")
    if not isinstance(code, dict) or not code.get("source_sha256"):
        return UNKNOWN
    now = provenance.source_fingerprint(code.get("extra_modules") or ())
    return None if now["source_sha256"] == code["source_sha256"] else provenance.short_code(code)


def find_stale(records: list[TrialRecord]) -> dict[str, str]:
    """{trial folder name: its recorded code} of the done trials computed by other code."""
    out = {}
    for r in records:
        status = r.status()
        if status.get("state") == "done" and (code := stale_code(status)) is not None:
            out[r.dir.name] = code
    return out


def summary(experiment: str, stale: dict[str, str], total_done: int, policy: str) -> str:
    """The one line the sweep prints for an experiment with stale trials."""
    versions = Counter(stale.values())
    listed = ", ".join(f"{v} ({n})" for v, n in versions.most_common(3))
    more = f" and {len(versions) - 3} more" if len(versions) > 3 else ""
    now = provenance.short_code(provenance.source_fingerprint())
    action = {"report": "kept and marked stale (--stale rerun recomputes them)",
              "rerun": "their results archived under stale/ and recomputed",
              "ignore": "kept (--stale ignore)"}[policy]
    return (f"{experiment}: {len(stale)} of {total_done} done trials were computed by other code than this "
            f"checkout's ({now}): {listed}{more}; {action}")


def archive_for_rerun(record: TrialRecord, code: str) -> str:
    """Move a stale trial's results into `stale/<when>/` inside its folder and put it back to
    `pending` (its earlier outcome kept in `previous`), under the trial's lock; returns the folder."""
    with record.lock():
        status = record.status()
        if status.get("state") != "done":
            raise RecordError(f"{record.dir}: only a done trial is re-run as stale, this one is {status.get('state')}")
        dest = record.dir / "stale" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dest.mkdir(parents=True, exist_ok=False)
        for name in RESULTS:
            if (record.dir / name).exists():
                shutil.move(str(record.dir / name), str(dest / name))
        record.requeue(("done",), note={"code": code, "archived": str(dest.relative_to(record.dir))})
    return str(dest)
