"""Searches (`Sweep.search`, harness/run/search.py): Optuna's samplers and pruners over ordinary,
content-addressed trials of the toy method on a 16x16 scene."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.core.errors import ConfigError
from harness.run import search, search_space, sweep
from harness.run.driver import run_sweep
from reports.build import build_report
from tests.conftest import ROOT
from tests.reliability_tools import write_experiment

COMMON = """Trainer.validate_every = 10
Trainer.checkpoint_every = 20
Trainer.min_loss_drop = None
"""
SPACE = "{'ToyColour.lr': ('loguniform', 1e-4, 0.3), 'ToyColour.buckets': ('int', 2, 8)}"


def _search(**settings) -> str:
    items = {"sampler": "'random'", "trials": 4, "seed": 0, "space": SPACE, **settings}
    return "Sweep.search = {" + ", ".join(f"'{k}': {v}" for k, v in items.items()) + "}\n"


def _experiment(folder: Path, scene: Path, name: str, trace: Path, extra: str = "", **settings) -> Path:
    return write_experiment(folder, scene, COMMON + f"ToyColour.trace_file = '{trace}'\n" + _search(**settings)
                            + extra, name=name)


def _trainings(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def _studies(runs: Path, exp: str) -> dict:
    """{study name: [(number, state, params, trial_id, last step)]} of an experiment's store."""
    import optuna

    storage = search_space.open_storage(runs / exp / search.STUDY_FILE)
    return {s.study_name: [(t.number, t.state.name, t.params, t.user_attrs.get("trial_id"), t.last_step)
                           for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
            for s in optuna.get_all_study_summaries(storage)}


def _final(trial_dir: Path) -> dict:
    """What must be bit-identical between two runs of a configuration."""
    import torch

    from harness.run import checkpoints

    step, payload = checkpoints.load_latest(trial_dir / "checkpoints")
    metrics = json.loads((trial_dir / "metrics.json").read_text())
    rows = [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (trial_dir / "train.jsonl").read_text().splitlines()]
    return {"per_view": metrics["per_view"], "psnr": metrics["psnr"], "step": step, "log": rows,
            "table": payload["method"]["table"].tolist(),
            "opt": torch.cat([v.flatten() for s in payload["method"]["opt"]["state"].values()
                              for v in s.values()]).tolist()}


def _plain_run(folder: Path, scene: Path, bindings: dict) -> Path:
    """The same configuration as an ordinary grid trial (no search), in its own runs folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{k} = {v!r}\n" for k, v in bindings.items() if k != "seed")
    exp = write_experiment(folder, scene, COMMON + lines, name="plain")
    runs = folder / "plain_runs"
    assert run_sweep(str(exp), [], runs, {}) == {sweep.expand(str(exp))[0].id: "done"}
    return runs / "plain" / sweep.expand(str(exp))[0].id


# --- spaces and samplers ---------------------------------------------------------------------------
def test_spaces_sample_within_bounds_and_deterministically_for_a_seed():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"a.x": ("uniform", -1.0, 2.0), "a.y": ("loguniform", 1e-6, 1e-2), "a.n": ("int", 1, 3),
             "a.c": ("choice", ["rmsprop", "adam", None])}

    def draw(sampler: str, seed: int) -> list[dict]:
        s = search_space.parse({"sampler": sampler, "seed": seed, "space": space, "startup_trials": 4})
        study = optuna.create_study(direction="maximize")
        out = []
        for n in range(10):
            study.sampler = search.make_sampler(s, n)
            trial = study.ask({p.key: p.distribution() for p in s.space})
            out.append(trial.params)
            study.tell(trial, trial.params["a.x"] - abs(trial.params["a.n"] - 2))  # something for TPE to model
        for params in out:
            assert all(p.contains(params[p.key]) for p in s.space), params
        return out

    for sampler in ("random", "qmc", "tpe"):
        first = draw(sampler, 0)
        assert draw(sampler, 0) == first, sampler
        assert draw(sampler, 1) != first, sampler
        assert len({json.dumps(p, sort_keys=True) for p in first}) > 5, sampler  # it does search
    assert all(isinstance(p["a.n"], int) for p in first)


@pytest.mark.parametrize("search_text, message", [
    ("{'space': {'ToyColour.lr': ('uniform', 0.1, 0.1)}}", "empty range"),
    ("{'space': {'ToyColour.lr': ('uniform', 0.2, 0.1)}}", "inverted range"),
    ("{'space': {'ToyColour.lr': ('loguniform', 0.0, 0.1)}}", "a log range must be above 0"),
    ("{'space': {'ToyColour.lr': ('loguniform', -1.0, 0.1)}}", "a log range must be above 0"),
    ("{'space': {'ToyColour.lr': ('normal', 0.0, 0.1)}}", "unknown kind 'normal'"),
    ("{'space': {'ToyColour.lr': ('choice', [0.1])}}", "at least two values"),
    ("{'sampler': 'cmaes', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}", "unknown sampler"),
    ("{'pruner': 'median', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}", "unknown pruner"),
    ("{'trials': 0, 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}", "'trials'] = 0: expected an integer >= 1"),
    ("{'space': {}}", "expected a non-empty dict"),
    ("{'space': {'ToyColour.buckets': ('int', 2, 8)}}", "also a grid axis"),
    ("{'pruner': 'asha', 'direction': 'minimize', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}",
     "must be maximised"),
])
def test_bad_search_settings_are_one_line_at_expansion(tmp_path, tiny_scene, search_text, message):
    exp = write_experiment(tmp_path, tiny_scene, f"Sweep.axes = {{'ToyColour.buckets': [4, 8]}}\n"
                                                 f"Sweep.search = {search_text}\n")
    with pytest.raises(ConfigError, match=message) as info:
        sweep.read_spec(exp, [])
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    ("Sweep.search = {'objective': 'fid', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}",
     "'fid': no trial records it"),
    ("Sweep.search = {'objective': 'lpips', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}",
     "'lpips': no trial records it"),  # Evaluation.metrics = ('psnr',)
    ("Sweep.search = {'objective': 'val_psnr', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}",
     "validation objectives need Trainer.validate_every > 0"),
    ("Sweep.search = {'pruner': 'asha', 'objective': 'psnr', 'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}",
     "needs validation"),
    ("Trainer.validate_every = 10\nSweep.search = {'pruner': 'asha', 'min_steps': 15, "
     "'space': {'ToyColour.lr': ('uniform', 0.01, 0.1)}}", "multiple of Trainer.validate_every"),
    ("Sweep.search = {'space': {'ToyColour.lr': ('uniform', -0.1, 0.1)}}", "ToyColour.lr = -0.1: expected a positive"),
    ("Sweep.search = {'space': {'Nothing.here': ('uniform', 0.01, 0.1)}}", "Nothing"),
])
def test_settings_that_need_the_trials_config_are_one_line_before_anything_is_made(tmp_path, tiny_scene,
                                                                                    extra, message):
    exp = write_experiment(tmp_path, tiny_scene, extra + "\n")
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=message) as info:
        run_sweep(str(exp), [], runs, {})
    assert len(str(info.value).splitlines()) == 1
    assert not runs.exists()  # nothing made, nothing submitted


def test_bad_search_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, tiny_scene):
    exp = write_experiment(tmp_path, tiny_scene, "Sweep.search = {'space': {'ToyColour.lr': ('loguniform', 0, 1)}}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
    assert "a log range must be above 0" in proc.stderr
    assert not (tmp_path / "runs").exists()


# --- reuse, continuation, resumption -------------------------------------------------------------
def test_a_search_rerun_reuses_every_finished_trial_and_continues_the_study(tmp_path, tiny_scene):
    trace, runs = tmp_path / "trace.txt", tmp_path / "runs"
    exp = _experiment(tmp_path, tiny_scene, "grow", trace, trials=3, objective="'psnr'")
    first = run_sweep(str(exp), [], runs, {})
    assert len(first) == 3 and set(first.values()) == {"done"}
    assert len(_trainings(trace)) == 3
    (study, trials), = _studies(runs, "grow").items()
    assert [t[1] for t in trials] == ["COMPLETE"] * 3
    # every suggestion is an ordinary trial: the id of the same values written as a grid
    grid = write_experiment(tmp_path, tiny_scene, COMMON + f"ToyColour.trace_file = '{trace}'\n"
                            + "Sweep.zipped = {" + ", ".join(f"'{k}': {[t[2][k] for t in trials]!r}"
                                                             for k in trials[0][2]) + "}\n", name="asgrid")
    assert [t.id for t in sweep.expand(str(grid))] == [t[3] for t in trials]

    assert run_sweep(str(exp), [], runs, {}) == first  # all told: nothing asked, nothing trained
    assert len(_trainings(trace)) == 3
    exp = _experiment(tmp_path, tiny_scene, "grow", trace, trials=5, objective="'psnr'")  # more trials
    more = run_sweep(str(exp), [], runs, {})
    assert len(more) == 5 and set(more.values()) == {"done"}
    assert len(_trainings(trace)) == 5  # only the two new ones were trained
    assert _studies(runs, "grow")[study][:3] == trials  # the same study, continued
    html = build_report(["grow"], runs, tmp_path / "report", bench_paths=[]).read_text()
    values = [t.value for t in __import__("optuna").load_study(
        study_name=study, storage=search_space.open_storage(runs / "grow" / search.STUDY_FILE)).trials]
    assert f"<td>{max(values):.4f}</td>" in html  # the best trial heads the table
    assert {"search_0_progress.png", "search_0_parallel.png", "search_0_importance.png"} <= \
        {p.name for p in (tmp_path / "report" / "assets").iterdir()}
    # a search of the same space in another experiment (another study) reuses the trials it is given
    other = _experiment(tmp_path, tiny_scene, "again", trace, trials=5, objective="'psnr'")
    assert run_sweep(str(other), [], runs, {}) == more
    assert len(_trainings(trace)) == 5


def _as_if_other_code(runs: Path, trial_id: str) -> None:
    """Rewrite a done trial's recorded source fingerprint: the record of a checkout whose code differed."""
    path = runs / ".trials" / trial_id / "status.json"
    status = json.loads(path.read_text())
    status["code"]["source_sha256"] = "0" * 64
    path.write_text(json.dumps(status))


def test_stale_trials_of_a_search_are_said_and_rerun_when_reused(tmp_path, tiny_scene, caplog):
    """`launch.stale` in a search: trials already told keep their values (a study is told a trial once) and
    are said in one line; a stale trial another study reuses is said ('report'), or recomputed ('rerun')."""
    trace, runs = tmp_path / "trace.txt", tmp_path / "runs"
    exp = _experiment(tmp_path, tiny_scene, "grow", trace, trials=2, objective="'psnr'")
    first = run_sweep(str(exp), [], runs, {})
    assert set(first.values()) == {"done"} and len(_trainings(trace)) == 2
    for tid in first:
        _as_if_other_code(runs, tid)
    with caplog.at_level("WARNING"):
        assert run_sweep(str(exp), [], runs, {"stale": "rerun"}) == first  # told: nothing is run again
    assert len(_trainings(trace)) == 2
    said = [r.getMessage() for r in caplog.records if "told to its studies" in r.getMessage()]
    assert len(said) == 1 and "2 of 2 done trials" in said[0] and "keep their told values" in said[0]

    caplog.clear()
    with caplog.at_level("WARNING"):  # another study suggests the same configurations: reused, said
        again = run_sweep(str(_experiment(tmp_path, tiny_scene, "again", trace, trials=2, objective="'psnr'")),
                          [], runs, {})
    assert again == first and len(_trainings(trace)) == 2
    assert sum("(reused) was computed by other code" in r.getMessage() for r in caplog.records) == 2
    with caplog.at_level("WARNING"):  # a third study with rerun: recomputed, old results archived
        third = run_sweep(str(_experiment(tmp_path, tiny_scene, "third", trace, trials=2, objective="'psnr'")),
                          [], runs, {"stale": "rerun"})
    assert third == first and len(_trainings(trace)) == 4
    for tid in first:
        status = json.loads((runs / ".trials" / tid / "status.json").read_text())
        assert status["state"] == "done" and status["code"]["source_sha256"] != "0" * 64
        assert (runs / ".trials" / tid / "stale").is_dir()


def test_a_pruned_trial_stops_at_its_rung_and_a_promoted_one_resumes_it_bit_for_bit(tmp_path, tiny_scene):
    trace, runs = tmp_path / "trace.txt", tmp_path / "runs"
    exp = _experiment(tmp_path, tiny_scene, "prune", trace, trials=4, pruner="'asha'", min_steps=10,
                      reduction_factor=2)
    outcome = run_sweep(str(exp), [], runs, {})
    (study, trials), = _studies(runs, "prune").items()
    pruned = [t for t in trials if t[1] == "PRUNED"]
    complete = [t for t in trials if t[1] == "COMPLETE"]
    assert pruned and complete and len(pruned) + len(complete) == 4, trials
    for _, _, _, tid, last in pruned:
        folder = runs / "prune" / tid
        status = json.loads((folder / "status.json").read_text())
        assert status["state"] == "pruned" and outcome[tid] == f"pruned at step {status['pruned_at']}"
        assert status["pruned_at"] == last and last in (10, 20)  # a rung: 10 * 2**k, before the end (40)
        assert sorted(p.name for p in (folder / "checkpoints").glob("step_*.pt"))[-1] == f"step_{last:08d}.pt"
        assert max(json.loads(line)["step"] for line in (folder / "train.jsonl").read_text().splitlines()) == last
        assert not (folder / "metrics.json").exists()  # never evaluated on the test views
    # the report's Search section lists the pruned trials where they stopped, and the best trials
    html = build_report(["prune"], runs, tmp_path / "report", bench_paths=[]).read_text()
    assert 'id="search"' in html and study in html
    table = pd.read_csv(tmp_path / "report" / "search.csv")
    assert sorted(table[table["state"] == "pruned"]["trial_id"]) == sorted(t[3] for t in pruned)
    assert sorted(table[table["state"] == "pruned"]["pruned_at"]) == sorted(t[4] for t in pruned)
    assert table["compute_steps"].iloc[-1] == sum(t[4] for t in trials)  # steps trained, pruned ones' included
    for t in pruned:
        assert f"<td>#{t[0]}</td><td>{t[4]}</td>" in html
    # a trial that was not pruned is bit-identical to the same configuration run without a search
    number, _, params, tid, _ = complete[-1]
    assert _final(runs / "prune" / tid) == _final(_plain_run(tmp_path / "a", tiny_scene, params))

    # the same search without the pruner: the done trials are reused, the pruned ones resume at their rung
    before = len(_trainings(trace))
    exp = _experiment(tmp_path, tiny_scene, "prune", trace, trials=4)
    again = run_sweep(str(exp), [], runs, {})
    assert set(again.values()) == {"done"} and set(again) == {t[3] for t in trials}
    assert len(_trainings(trace)) == before + len(pruned)  # each pruned trial once more, nothing else
    from reports.search import _last_step_and_time

    for _, _, _, tid, last in pruned:
        status = json.loads((runs / "prune" / tid / "status.json").read_text())
        assert status["resumed_from_rung"] == last and status["attempts"] == 2
        # trained to the end now, but the study that pruned it counts the steps up to its rung
        assert _last_step_and_time(runs / "prune" / tid)[0] == 40
        assert _last_step_and_time(runs / "prune" / tid, last)[0] == last
    _, _, params, tid, _ = pruned[0]
    assert _final(runs / "prune" / tid) == _final(_plain_run(tmp_path / "b", tiny_scene, params))


def _driver(exp: Path, runs: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(runs),
                             "--cluster", "local"], cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def test_a_killed_driver_resumes_without_losing_or_repeating_work(tmp_path, tiny_scene):
    """The driver and its trial are killed (SIGKILL, the whole process group: a login node going
    away) while trial #1 trains; the re-run finishes trial #1 from its checkpoint, asks the rest,
    and the study ends as an uninterrupted run's (same suggestions, same values)."""
    trace, runs = tmp_path / "trace.txt", tmp_path / "runs"
    exp = _experiment(tmp_path, tiny_scene, "killed", trace, "ToyColour.step_delay = 0.05\n", trials=3,
                      objective="'psnr'")
    driver = _driver(exp, runs, tmp_path / "driver1.log")
    deadline = time.monotonic() + 120
    second = None
    while time.monotonic() < deadline and driver.poll() is None:
        trials = _studies(runs, "killed") if (runs / "killed" / search.STUDY_FILE).exists() else {}
        rows = next(iter(trials.values()), [])
        if len(rows) == 2 and rows[1][3] and list((runs / "killed" / rows[1][3] / "checkpoints").glob("step_*.pt")):
            second = rows[1][3]
            break
        time.sleep(0.1)
    assert second is not None, (tmp_path / "driver1.log").read_text()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    (study, rows), = _studies(runs, "killed").items()
    assert [r[1] for r in rows] == ["COMPLETE", "RUNNING"]

    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", str(exp), "--runs-dir", str(runs),
                           "--cluster", "local"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (_, rows), = _studies(runs, "killed").items()
    assert [r[1] for r in rows] == ["COMPLETE"] * 3  # the running one told, one more asked: never asked twice
    status = json.loads((runs / "killed" / second / "status.json").read_text())
    assert status["attempts"] == 2
    job_log = Path(status["log_stderr"]).read_text()  # the resumed attempt's job log
    assert f"resumed {second} from step" in job_log, job_log  # from its checkpoint, not from the start
    lines = _trainings(trace)
    assert len(lines) == 4 and len(set(lines)) == 3  # the killed trial twice (start, resume), the others once

    # an uninterrupted search suggests the same and gets the same values
    fresh = tmp_path / "fresh"
    run_sweep(str(exp), [], fresh, {})
    assert [(r[2], r[3]) for r in _studies(fresh, "killed")[study]] == [(r[2], r[3]) for r in rows]
    assert _final(runs / "killed" / second) == _final(fresh / "killed" / second)


def test_dry_run_shows_the_search_and_its_progress(tmp_path, tiny_scene):
    trace, runs = tmp_path / "trace.txt", tmp_path / "runs"
    exp = _experiment(tmp_path, tiny_scene, "dry", trace, "Sweep.seeds = [0, 1]\n", trials=2, sampler="'tpe'",
                      objective="'psnr'")
    out = search.describe(str(exp), [], sweep.read_spec(exp, []), runs)
    assert [c["cell"] for c in out["cells"]] == [{"seed": 0}, {"seed": 1}]
    assert all(c["left"] == 2 and c["states"] == {} for c in out["cells"]) and "tpe search" in out["search"]
    assert not runs.exists()
    run_sweep(str(exp), [], runs, {})
    out = search.describe(str(exp), [], sweep.read_spec(exp, []), runs)
    assert all(c["left"] == 0 and c["states"] == {"complete": 2} and c["best"] for c in out["cells"])
    assert len({c["study"] for c in out["cells"]}) == 2  # a study per grid cell, in one store
    assert len(_trainings(trace)) == 4


@pytest.mark.slurm
def test_search_on_slurm_keeps_parallel_trials_in_flight_and_continues_on_rerun(tmp_path, tiny_scene):
    """Against the local cluster (scripts/local-slurm.sh up): each `harness sweep` (launch.wait False)
    tells what finished and submits up to `parallel` more; re-runs end with every trial told once."""
    import shutil

    if shutil.which("sbatch") is None:
        pytest.skip("no sbatch: start the cluster with scripts/local-slurm.sh up")
    trace, runs = tmp_path / "trace.txt", tmp_path / "runs"
    exp = _experiment(tmp_path, tiny_scene, "onslurm", trace, "launch.cpus_per_task = 1\n", trials=4, parallel=2,
                      pruner="'asha'", min_steps=10, reduction_factor=2)
    first = run_sweep(str(exp), [], runs, {"cluster": "slurm"})
    assert sum(v.startswith("submitted") for v in first.values()) == 2, first
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        outcome = run_sweep(str(exp), [], runs, {"cluster": "slurm"})
        (_, rows), = _studies(runs, "onslurm").items()
        if len(rows) == 4 and all(r[1] in ("COMPLETE", "PRUNED") for r in rows):
            break
        assert sum(r[1] == "RUNNING" for r in rows) <= 2
        time.sleep(3)
    else:
        pytest.fail(f"search did not finish: {outcome}")
    assert len(_trainings(trace)) == 4  # every trial trained once
    import optuna

    (name, rows), = _studies(runs, "onslurm").items()
    study = optuna.load_study(study_name=name, storage=search_space.open_storage(runs / "onslurm" / search.STUDY_FILE))
    for t in study.trials:  # the jobs reported their validations to the study (the journal, from the nodes)
        status = json.loads((runs / "onslurm" / t.user_attrs["trial_id"] / "status.json").read_text())
        assert status["state"] == ("done" if t.state.name == "COMPLETE" else "pruned")
        assert sorted(t.intermediate_values) == list(range(10, (status.get("pruned_at") or 40) + 1, 10))
