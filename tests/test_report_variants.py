"""Variants are configs, not labels (issue 22, item 5): trials run into one runs folder with different
`--bind`s are separate variants, labelled by what differs, never averaged together; a folder whose
trials bind different sets of keys builds its report."""

import csv

from reports.build import build_report
from reports.collect import collect
from tests.conftest import harness
from tests.reliability_tools import write_experiment


def _summary(path) -> dict[str, dict]:
    with open(path) as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


def test_trials_differing_by_a_bind_are_separate_variants_and_a_mixed_folder_builds(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, "Sweep.seeds = [0, 1]\n", name="mix")
    runs = tmp_path / "runs"
    for binds in (["--bind", "Trainer.iterations = 20"], ["--bind", "Trainer.iterations = 40"],
                  ["--bind", "Trainer.iterations = 40", "--bind", "ToyColour.buckets = 4"]):
        harness("sweep", exp, "--runs-dir", runs, *binds, check=True)

    trials = collect(runs, ["mix"], with_curves=False).trials
    assert len(trials) == 6
    variants = trials.groupby("variant", observed=True)["seed"].apply(sorted).to_dict()
    assert variants == {"buckets=default, iterations=20": [0, 1], "buckets=default, iterations=40": [0, 1],
                        "buckets=4, iterations=40": [0, 1]}, variants

    out = build_report(["mix"], runs, tmp_path / "report", bench_paths=[])  # used to raise KeyError
    assert out.is_file()
    summary = _summary(tmp_path / "report" / "summary.csv")
    assert set(summary) == set(variants)
    for variant, row in summary.items():  # each mean is over its own two seeds only
        own = trials[trials["variant"] == variant]["psnr"]
        assert row["n_done"] == "2" and abs(float(row["psnr_mean"]) - own.mean()) < 1e-9, (variant, row)


def test_seeds_and_scenes_do_not_split_a_variant(tiny_scene, tmp_path):
    """The seed binding differs between the trials of a variant by design, and so do a scene's own
    bindings (load_scene.path, format, background) between scenes: neither makes a new variant."""
    exp = write_experiment(tmp_path, tiny_scene, "Sweep.seeds = [0, 1]\nSweep.axes = {'ToyColour.lr': [0.05]}\n"
                           "Sweep.scenes = ['tiny', 'lego_100']\nTrainer.iterations = 10\n", name="same")
    runs = tmp_path / "runs"
    harness("sweep", exp, "--runs-dir", runs, check=True)
    trials = collect(runs, ["same"], with_curves=False).trials
    assert set(trials["variant"]) == {"lr=0.05"}, set(trials["variant"])
    assert sorted(zip(trials["scene"], trials["seed"])) == [("lego_100", 0), ("lego_100", 1), ("tiny", 0), ("tiny", 1)]


def test_records_from_before_trial_identities_are_a_variant_of_their_own(tiny_scene, tmp_path):
    """An old-format record (no identity.json, no code provenance, another id) of the same config is
    never averaged with today's trial: its own variant, and stale."""
    import json
    import shutil

    exp = write_experiment(tmp_path, tiny_scene, "Sweep.seeds = [0]\n", name="old")
    runs = tmp_path / "runs"
    harness("sweep", exp, "--runs-dir", runs, check=True)
    (new,) = [p for p in (runs / "old").iterdir() if p.is_symlink()]
    legacy = runs / "old" / "0123456789ab"
    shutil.copytree(new.resolve(), legacy)
    (legacy / "identity.json").unlink()
    status = json.loads((legacy / "status.json").read_text())
    del status["code"]
    (legacy / "status.json").write_text(json.dumps({**status, "trial_id": legacy.name}))
    trials = collect(runs, ["old"], with_curves=False).trials.set_index("id")
    assert trials.loc[legacy.name, "variant"] != trials.loc[new.name, "variant"]
    assert "id_version=1" in trials.loc[legacy.name, "variant"] and bool(trials.loc[legacy.name, "code_stale"])
    assert not trials.loc[new.name, "code_stale"]
