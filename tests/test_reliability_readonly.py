"""Reliability: a read-only runs dir (a real read-only tmpfs in a private mount namespace). An empty
one stops a sweep in one line; a finished sweep re-run there does nothing and succeeds; the report
says in one line where it cannot write and how to write it elsewhere; nothing is a traceback."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.reliability_tools import can_mount_tmpfs, write_experiment

SCRIPT = """
set -u
mount -t tmpfs -o size=64m tmpfs "$MNT"
run() {  # run NAME ARGS...: harness ARGS, its stdout, stderr and exit code into $OUT/NAME.*
    name=$1; shift
    "$PY" -m harness "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; echo $? >"$OUT/$name.rc"
}
mount -o remount,ro "$MNT"
run empty sweep "$EXP" --runs-dir "$MNT/runs"
mount -o remount,rw "$MNT"
run first sweep "$EXP" --runs-dir "$MNT/runs"
mount -o remount,ro "$MNT"
run again sweep "$EXP" --runs-dir "$MNT/runs"
run report report rel --runs-dir "$MNT/runs" --bench ''
run elsewhere report rel --runs-dir "$MNT/runs" --bench '' --out "$OUT/report"
"""


@pytest.mark.skipif(not can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace here")
def test_read_only_runs_dir_gives_one_line_and_a_finished_sweep_still_succeeds(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene)
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "MNT": str(mnt), "OUT": str(out), "EXP": str(exp), "PY": sys.executable,
           "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def result(name):
        return (int((out / f"{name}.rc").read_text()), (out / f"{name}.out").read_text(),
                (out / f"{name}.err").read_text())

    rc, stdout, stderr = result("empty")
    assert rc == 2 and "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write {mnt}/runs/") and line.endswith("Read-only file system (EROFS)"), line

    rc, stdout, stderr = result("first")
    assert rc == 0 and "1 of 1 trials done" in stdout, (stdout, stderr[-3000:])

    rc, stdout, stderr = result("again")  # nothing to do: it must not need to write anything
    assert rc == 0 and "1 of 1 trials done" in stdout, (stdout, stderr[-3000:])

    rc, stdout, stderr = result("report")
    assert rc == 2 and "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write the report to {mnt}/runs/rel/report") and "--out DIR" in line, line

    rc, stdout, stderr = result("elsewhere")
    assert rc == 0 and (out / "report" / "index.html").is_file(), stderr[-3000:]
    assert len((out / "report" / "trials.csv").read_text().strip().splitlines()) == 2  # header and the trial
