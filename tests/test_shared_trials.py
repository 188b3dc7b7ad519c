"""One trial, computed once (issue 22, item 4): identical trials of different experiments (same id)
live in one folder, runs/.trials/<id>, linked from each experiment's folder; they are trained once,
also when the sweeps start at the same moment, and appear in every experiment's report."""

import os
import subprocess
import sys

from reports.collect import collect
from tests.conftest import ROOT
from tests.reliability_tools import tiny_scene, write_experiment  # noqa: F401


def _popen(exp, runs):
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(runs),
                             "--cluster", "local"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_experiments_sharing_a_trial_started_together_train_it_once(tiny_scene, tmp_path):
    trace = tmp_path / "trace.txt"  # ToyColour appends a line each time it is built to train
    common = f"ToyColour.trace_file = '{trace}'\nToyColour.step_delay = 0.02\n"
    # lr 0.05 and 8 buckets are ToyColour's defaults: a's lr=0.05 trial is b's buckets=8 trial
    a = write_experiment(tmp_path, tiny_scene, common + "Sweep.axes = {'ToyColour.lr': [0.01, 0.05]}\n", name="ea")
    b = write_experiment(tmp_path, tiny_scene, common + "Sweep.axes = {'ToyColour.buckets': [8, 4]}\n", name="eb")
    runs = tmp_path / "runs"
    procs = [_popen(exp, runs) for exp in (a, b)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err[-3000:])
        assert "2 of 2 trials done" in out

    ids = {exp: sorted(p.name for p in (runs / exp).iterdir() if not p.name.startswith(".") and p.name != "sweep.json")
           for exp in ("ea", "eb")}
    (shared,) = set(ids["ea"]) & set(ids["eb"])
    assert len(trace.read_text().splitlines()) == 3, trace.read_text()  # three computations, each trained once
    for exp in ("ea", "eb"):
        link = runs / exp / shared
        assert link.is_symlink() and os.readlink(link) == f"../.trials/{shared}"
    assert sorted(p.name for p in (runs / ".trials").iterdir()) == sorted(set(ids["ea"]) | set(ids["eb"]))

    trials = collect(runs, ["ea", "eb"], with_curves=False).trials  # in both reports, with each one's bindings
    rows = trials[trials["id"] == shared].set_index("experiment")
    assert rows.loc["ea", "variant"] == "ea: lr=0.05" and rows.loc["eb", "variant"] == "eb: buckets=8"
    assert rows.loc["ea", "psnr"] == rows.loc["eb", "psnr"] and set(rows["state"]) == {"done"}
