"""Trial identity (issue 22, item 1): the id hashes the operative computation, bound or defaulted,
and the scene's data; not how the config is written, and not bookkeeping settings."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from harness.run import identity, sweep
from tests.conftest import ROOT
from tests.reliability_tools import Trial, final_state, write_experiment


def _ids(exp, *binds) -> list[str]:
    return [t.id for t in sweep.expand(str(exp), list(binds))]


def test_binding_a_parameter_to_its_default_keeps_the_id(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene)
    plain = _ids(exp)
    assert _ids(exp, "ToyColour.buckets = 8") == plain  # ToyColour's default
    assert _ids(exp, "load_scene.downscale = 1") == plain  # load_scene's default
    assert _ids(exp, "ToyColour.buckets = 4") != plain


def test_the_default_plenoxels_config_is_one_trial_in_four_experiments():
    """plenoxels_tv TV 0, plenoxels_sh degree 2, plenoxels_prune by weight and plenoxels_loss L2 without
    SSIM bind different keys to the defaults: one computation, one id."""
    picks = {"plenoxels_tv": ("TVLoss.weight_density", 0.0), "plenoxels_sh": ("Plenoxels.sh_degree", 2),
             "plenoxels_prune": ("Plenoxels.prune_by", "weight"), "plenoxels_loss": ("Reconstruction.ssim_weight", 0.0)}
    ids = {exp: next(t.id for t in sweep.expand(exp) if t.bindings[key] == value)
           for exp, (key, value) in picks.items()}
    assert len(set(ids.values())) == 1, ids
    assert len({t.id for exp in picks for t in sweep.expand(exp)}) == 4 + 4 + 3 + 3 - 3  # the rest all differ


def test_a_float_written_two_ways_gives_one_id(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene)
    assert _ids(exp, "ToyColour.lr = 1e-5") == _ids(exp, "ToyColour.lr = 0.00001") != _ids(exp)


def test_bookkeeping_settings_keep_the_id_and_cannot_change_the_result(tiny_scene, tmp_path):
    """identity.BOOKKEEPING (the one place they are declared): each keeps the id, and a trial run with
    all of them changed ends with the same metrics and the same weights, bit for bit."""
    exp = write_experiment(tmp_path, tiny_scene)
    changed = ["Trainer.keep_checkpoints = 1", "Trainer.log_every = 3", "Trainer.checkpoint_every = 7",
               "Trainer.progress_every = 1"]
    assert {b.split(".")[1].split(" ")[0] for b in changed} == set(identity.BOOKKEEPING["Trainer"])
    for binding in changed:
        assert _ids(exp, binding) == _ids(exp), binding
    (tmp_path / "other").mkdir()
    other = write_experiment(tmp_path / "other", tiny_scene, "".join(b + "\n" for b in changed))
    runs = [Trial(e, tmp_path / name / "runs") for e, name in ((exp, "a"), (other, "b"))]
    for t in runs:
        t.run_here()
    a, b = (final_state(t) for t in runs)
    assert a["log"] != b["log"]  # logged differently...
    assert {k: a[k] for k in ("per_view", "psnr", "table", "opt", "iterations")} == \
        {k: b[k] for k in ("per_view", "psnr", "table", "opt", "iterations")}  # ...computed identically


def test_editing_a_scene_image_changes_the_id(tiny_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene, scene)
    exp = write_experiment(tmp_path, scene)
    before = _ids(exp)
    image = sorted((scene / "images").glob("*.png"))[3]
    data = image.read_bytes()
    image.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit, same size
    changed = _ids(exp)
    image.write_bytes(data)
    assert changed != before and _ids(exp) == before  # the content decides, not the file's date


def test_changing_a_default_in_a_methods_signature_changes_the_id(tmp_path, tiny_scene):
    """Expanded in fresh processes (Gin registers a configurable once per process)."""
    module = tmp_path / "probe_method.py"
    exp = tmp_path / "probe.gin"
    exp.write_text(f"import probe_method\nload_scene.path = '{tiny_scene}'\nload_scene.format = 'nerfstudio'\n"
                   "Trainer.method = @Probe\nSweep.seeds = [0]\n")

    def expand_with(default: float) -> str:
        module.write_text(textwrap.dedent(f"""
            import gin

            @gin.configurable
            class Probe:  # the Method protocol's members, checked when the sweep expands; never trained here
                def __init__(self, scene, seed, lr: float = {default}, batch_size: int = 8):
                    pass

                train_step = render = state_dict = load_state_dict = stats = lambda self, *args: None
            """))
        code = f"import harness.run.registry; from harness.run import sweep; print(sweep.expand({str(exp)!r})[0].id)"
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    first = expand_with(0.1)
    assert expand_with(0.1) == first  # the same code in another process: the same id
    assert expand_with(0.2) != first


def test_ids_are_the_same_in_every_process_with_references_in_the_config():
    """Block-NeRF binds `@BlockPartition()` and `@Schedule()`: references enter by name, never as an
    object (whose repr would hold a memory address)."""
    code = ("import harness.run.registry; from harness.run import sweep; "
            "print([t.id for t in sweep.expand('block_nerf_ablation')][:3])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           timeout=120).stdout for _ in range(2)}
    assert len(outs) == 1 and "[" in outs.pop()


def test_the_record_keeps_what_the_id_hashes(tiny_scene, tmp_path):
    from harness.run.driver import run_sweep

    exp = write_experiment(tmp_path, tiny_scene)
    run_sweep(str(exp), [], tmp_path / "runs", {"threads": 1})
    (trial,) = sweep.expand(str(exp))
    saved = json.loads((tmp_path / "runs" / "rel" / trial.id / "identity.json").read_text())
    assert identity.trial_id(saved) == trial.id and saved["version"] == identity.ID_VERSION
    assert saved["operative"]["ToyColour"]["buckets"] == 8  # a default, resolved
    assert "log_every" not in saved["operative"]["Trainer"] and saved["data"]["files"] > 10


def test_dry_run_without_the_scene_lists_provisional_ids(tmp_path):
    exp = tmp_path / "gone.gin"
    exp.write_text("import tests.fixtures.toy_method\nTrainer.method = @ToyColour\n"
                   f"load_scene.path = '{tmp_path / 'nowhere'}'\n")
    with pytest.raises(Exception, match="scene path does not exist"):
        sweep.expand(str(exp))
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", str(exp), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ids shown are provisional" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("experiment", ["plenoxels_tv", "plenoxels_loss", "plenoxels_sh", "block_nerf_ablation",
                                        "block_nerf_seam"])
def test_derived_ids_equal_those_of_parsing_each_trial_alone(experiment):
    """expand() parses once per scene and derives the other trials (sweep._Base); the job re-parses
    its trial alone (sweep.trial_config + trial_identity): both must give every trial the same id."""
    trials = sweep.expand(experiment)
    for t in trials:
        sweep.trial_config(sweep.cfg.experiment_path(experiment), [], t.gin_bindings)
        assert sweep.trial_identity()[0] == t.id, t.bindings


def test_derived_ids_with_zipped_axes_scenes_and_a_bookkeeping_axis(tiny_scene, tmp_path):
    exp = write_experiment(tmp_path, tiny_scene, "Sweep.axes = {'ToyColour.lr': [0.01, 0.1], "
                           "'Trainer.log_every': [5, 10]}\nSweep.zipped = {'ToyColour.buckets': [4, 8], "
                           "'ToyColour.batch_size': [32, 64]}\nSweep.scenes = ['tiny', 'lego_100']\n"
                           "Sweep.seeds = [0, 1]\n")
    with pytest.raises(Exception, match="have the same config"):  # log_every is bookkeeping: same trials
        sweep.expand(str(exp))
    exp.write_text(exp.read_text().replace("'Trainer.log_every': [5, 10]", "'Trainer.iterations': [5, 10]"))
    trials = sweep.expand(str(exp))
    assert len(trials) == 2 * 2 * 2 * 2 * 2 == len({t.id for t in trials})
    for t in trials:
        sweep.trial_config(exp, [], t.gin_bindings)
        assert sweep.trial_identity()[0] == t.id, t.bindings


def test_expansion_parses_gin_once_per_scene(monkeypatch, tiny_scene, tmp_path):
    """The Sweep once, then one parse per scene for literal axes (issue 23: it used to be once per
    trial, plus three); the driver passes the Sweep it read with the launch settings."""
    parses = []
    real = sweep.cfg.parse
    monkeypatch.setattr(sweep.cfg, "parse", lambda *a, **k: (parses.append(a), real(*a, **k))[1])
    exp = write_experiment(tmp_path, tiny_scene, "Sweep.axes = {'ToyColour.lr': [0.01, 0.1, 0.2]}\n"
                           "Sweep.scenes = ['tiny', 'lego_100']\nSweep.seeds = [0, 1]\n")
    spec = sweep.read_spec(exp, [])
    assert len(parses) == 1
    trials = sweep.expand(str(exp), spec=spec)
    assert len(trials) == 12 and len(parses) == 1 + 2
