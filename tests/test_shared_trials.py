"""One trial, computed once (issue 22, item 4): identical trials of different experiments (same id)
live in one folder, runs/.trials/<id>, linked from each experiment's folder; they are trained once,
also when the sweeps start at the same moment, and appear in every experiment's report."""

import json
import os
import subprocess
import sys

from reports.collect import collect
from tests.conftest import ROOT
from tests.reliability_tools import write_experiment


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
    stored = sorted(p.name for p in (runs / ".trials").iterdir() if not p.name.startswith("."))
    assert stored == sorted(set(ids["ea"]) | set(ids["eb"]))
    assert (runs / ".trials" / ".ground_truth").is_dir()  # the scored targets, once for all trials

    trials = collect(runs, ["ea", "eb"], with_curves=False).trials  # in both reports, with each one's bindings
    rows = trials[trials["id"] == shared].set_index("experiment")
    assert rows.loc["ea", "variant"] == "ea: lr=0.05" and rows.loc["eb", "variant"] == "eb: buckets=8"
    assert rows.loc["ea", "psnr"] == rows.loc["eb", "psnr"] and set(rows["state"]) == {"done"}


def test_a_new_trial_has_a_folder_only_once_it_is_launched(tiny_scene, tmp_path):
    """Expanding writes sweep.json; status and reports list the new trials as pending; launching one
    makes its folder (config, identity, pending status, the link); another experiment sharing a made
    trial links it when it is expanded."""
    from harness.run import driver
    from harness.run.sweep import expand
    from reports.collect import collect_trials

    exp = write_experiment(tmp_path, tiny_scene, "Sweep.axes = {'ToyColour.lr': [0.01, 0.05, 0.1]}\n", name="la")
    runs = tmp_path / "runs"
    trials = expand(str(exp))
    records = driver.prepare(trials, runs, exp, [])
    assert [r.state for r in records] == ["pending"] * 3
    assert [p.name for p in (runs / "la").iterdir()] == ["sweep.json"] and not (runs / ".trials").exists()
    listed = collect_trials(runs, "la")
    assert list(listed["id"]) == [t.id for t in trials] and set(listed["state"]) == {"pending"}

    todo, _ = driver.select(trials, records, False, runs)
    todo[1].materialise()  # the lr=0.05 trial (ToyColour's default lr)
    made = runs / "la" / trials[1].id
    assert made.is_symlink() and os.readlink(made) == f"../.trials/{trials[1].id}"
    assert (made / "config.gin").read_text() == trials[1].config and (made / "identity.json").is_file()
    assert todo[1].record.dir == runs / ".trials" / trials[1].id and todo[1].record.state == "pending"
    assert [p.name for p in (runs / ".trials").iterdir()] == [trials[1].id]

    other = write_experiment(tmp_path, tiny_scene, "Sweep.axes = {'ToyColour.buckets': [8, 4]}\n", name="lb")
    shared = expand(str(other))
    assert shared[0].id == trials[1].id  # buckets=8 is ToyColour's default: the same computation
    driver.prepare(shared, runs, other, [])
    assert (runs / "lb" / shared[0].id).is_symlink() and not (runs / "lb" / shared[1].id).exists()
    assert json.loads((made / "status.json").read_text())["experiments"] == ["la", "lb"]
