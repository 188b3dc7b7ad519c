"""Staleness (issue 22, item 3): a done trial computed by other code than the checkout's is said in
one line by the sweep, shown by `harness status`, kept (`report`), recomputed (`--stale rerun`,
the old results archived in the trial folder) or passed over in silence (`ignore`)."""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from tests.reliability_tools import write_experiment

METHOD = textwrap.dedent("""
    import gin
    from tests.fixtures.toy_method import ToyColour

    @gin.configurable
    class StaleProbe(ToyColour):
        pass
    """)


def _harness(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'code'}:{ROOT}"}
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _setup(tmp_path, tiny_scene):
    (tmp_path / "code").mkdir()
    module = tmp_path / "code" / "stale_probe.py"
    module.write_text(METHOD)
    exp = write_experiment(tmp_path, tiny_scene, "import stale_probe\nTrainer.method = @StaleProbe\n"
                           "StaleProbe.batch_size = 64\n", name="st")
    # the toy's batch size for the subclass (Gin binds by name: ToyColour's would reach no trial, an error)
    exp.write_text(exp.read_text().replace("ToyColour.batch_size = 64\n", ""))
    return module, exp


def _status(runs):
    (path,) = (runs / "st").glob("*/status.json")
    return json.loads(path.read_text()), path.parent


def test_a_code_change_marks_done_trials_stale_and_rerun_recomputes_exactly_those(tiny_scene, tmp_path):
    module, exp = _setup(tmp_path, tiny_scene)
    runs = tmp_path / "runs"
    first = _harness(tmp_path, "sweep", exp, "--runs-dir", runs)
    assert first.returncode == 0, first.stderr[-3000:]
    status, trial = _status(runs)
    assert "stale_probe" in status["code"]["extra_modules"]  # the method, defined outside the project, is hashed
    assert status["environment"]["torch"] and status["environment"]["cpu_capability"]

    again = _harness(tmp_path, "sweep", exp, "--runs-dir", runs)  # same code: nothing said, nothing run
    assert again.returncode == 0 and "stale" not in again.stderr and "other code" not in again.stderr

    module.write_text(METHOD + "# a change to the method's source\n")  # same signature: same trial id
    proc = _harness(tmp_path, "sweep", exp, "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if "computed by other code" in x]
    assert len(lines) == 1 and "st: 1 of 1 done trials" in lines[0] and status["code"]["source_sha256"][:12] in lines[0]
    assert "kept and marked stale" in lines[0]
    assert _status(runs)[0]["attempts"] == 1  # report: kept, not run
    table = _harness(tmp_path, "status", "st", "--runs-dir", runs).stdout
    assert "1 done trials are stale" in table and status["code"]["source_sha256"][:12] in table.splitlines()[-1]
    assert _harness(tmp_path, "report", "st", "--runs-dir", runs, "--bench", "").returncode == 0
    html = (runs / "st" / "report" / "index.html").read_text()
    banner = html[html.index('id="code-versions"'):].split("</p>")[0]
    assert status["code"]["source_sha256"][:12] in banner and "1 of them by other code" in banner
    assert "stale code</span>" in html

    metrics = (trial / "metrics.json").read_text()
    rerun = _harness(tmp_path, "sweep", exp, "--runs-dir", runs, "--stale", "rerun")
    assert rerun.returncode == 0 and "archived under stale/ and recomputed" in rerun.stderr, rerun.stderr[-3000:]
    new, _ = _status(runs)
    assert new["state"] == "done" and new["attempts"] == 2 and new["code"] != status["code"]
    (archive,) = (trial / "stale").iterdir()
    assert (archive / "metrics.json").read_text() == metrics and (archive / "checkpoints").is_dir()
    assert new["previous"][-1]["archived"] == f"stale/{archive.name}"
    assert json.loads((trial / "metrics.json").read_text())["per_view"] == json.loads(metrics)["per_view"]
    quiet = _harness(tmp_path, "sweep", exp, "--runs-dir", runs)
    assert "other code" not in quiet.stderr  # fresh again
    assert _harness(tmp_path, "report", "st", "--runs-dir", runs, "--bench", "").returncode == 0
    assert 'id="code-versions"' not in (runs / "st" / "report" / "index.html").read_text()


def test_records_written_before_code_provenance_are_stale_and_ignore_is_silent(tiny_scene, tmp_path):
    """Existing runs folders (item 7): a done record without `code` is flagged, never silently reused."""
    module, exp = _setup(tmp_path, tiny_scene)
    runs = tmp_path / "runs"
    assert _harness(tmp_path, "sweep", exp, "--runs-dir", runs).returncode == 0
    status, trial = _status(runs)
    del status["code"]
    (trial / "status.json").write_text(json.dumps(status))
    proc = _harness(tmp_path, "sweep", exp, "--runs-dir", runs)
    assert "1 of 1 done trials were computed by other code" in proc.stderr and "not recorded (1)" in proc.stderr
    ignore = _harness(tmp_path, "sweep", exp, "--runs-dir", runs, "--stale", "ignore")
    assert ignore.returncode == 0 and "other code" not in ignore.stderr
    bad = _harness(tmp_path, "sweep", exp, "--runs-dir", runs, "--bind", "launch.stale = 'maybe'")
    assert bad.returncode == 2 and "launch.stale = 'maybe': expected one of report, rerun, ignore" in bad.stderr
