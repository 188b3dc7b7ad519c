"""The memory profile (harness/run/memory.py, harness/run/profile.py): a step's peak and growth, the
methods' persistent parts, `harness profile`, and metrics.json's `memory`. Memory figures are checked by
comparison (a larger batch grows more), never against fixed numbers or times."""

import json

import numpy as np
import pytest
import torch

from baselines.plenoxels import Plenoxels
from harness.core.data.formats import load_folder
from harness.core.data.rays import RaySampler
from harness.core.method import method_problems, tensor_bytes
from harness.run import memory
from harness.run.evaluation import Evaluation
from tests.conftest import SHARED_DATA, TOY, harness, requires_shared

LEGO = SHARED_DATA / "nerf_synthetic" / "lego_100"
needs_lego = requires_shared("nerf_synthetic", "lego_100")


def _measurable():
    with memory.measure() as peak:
        pass
    if peak.kind != "rss":
        pytest.skip(f"peak RSS not measurable here: {peak.note}")


@pytest.fixture(scope="module")
def lego():
    return load_folder(LEGO, "blender")


def _plenoxels(scene, **kw):
    return Plenoxels(scene, 0, **{"resolution": 32, "upsample_steps": (), "device": "cpu", **kw})


def _batch(scene, step, n):
    split = scene.split("train")
    return RaySampler(split.images, split.cameras, 0).sample(step, n)


def test_measure_resets_the_mark_but_the_process_peak_keeps_it():
    _measurable()
    big = np.ones(40 * 2**20)  # 320 MB resident, then freed
    resident = memory._status_kb()["VmRSS"] / 1024
    del big
    with memory.measure() as peak:
        small = torch.ones(8 * 2**20)  # 32 MB
    del small
    assert peak.growth >= 30 * 2**20 and peak.peak < resident * 2**20  # the mark was reset before the call
    assert memory.process_peak_rss_mb() >= resident - 1  # ... and the process's peak still has the 320 MB


@needs_lego
def test_a_larger_batch_grows_a_plenoxels_step_more(lego):
    _measurable()
    growth = {}
    for n in (8192, 256):  # the larger first: what it leaves freed must not hide the smaller one's growth
        method = _plenoxels(lego)
        method.train_step(0, _batch(lego, 0, n))  # warm-up: the optimiser's state is made on the first step
        _, entry = memory.measure_step(method, 1, _batch(lego, 1, n))
        assert entry["rays"] == n and entry["peak_mb"] > 0 and entry["transient_mb"] <= entry["growth_mb"]
        growth[n] = entry["growth_mb"]
    assert growth[8192] > growth[256], growth


@needs_lego
def test_plenoxels_components_are_its_tensors_sizes(lego):
    method = _plenoxels(lego)
    assert not method_problems(method)
    before = method.memory_components()
    assert before["optimizer"] == 0  # RMSProp's moments are made by the first step
    method.train_step(0, _batch(lego, 0, 512))
    comps = memory.components(method)

    def size(*tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    g, occ = method.grid, method.occupancy
    assert comps == {"grid": size(g.density, g.sh, g.links, g.voxels, method.background_logit),
                     "occupancy": size(occ.fine, occ.coarse, occ.box_min, occ.box_max),
                     "optimizer": size(*(st["v"] for st in method.optim.state.values())),
                     "prune_weights": size(method.max_weight)}
    assert comps["optimizer"] == size(g.density, g.sh)  # one second moment per density and SH value
    assert comps["grid"] >= method.stats()["grid_bytes"]


def test_block_nerf_components_are_its_tensors_sizes():
    from tests.test_block_nerf import small
    from tests.test_block_nerf_toy import toy_scene

    scene = toy_scene()
    method = small(scene, device="cpu")
    assert not method_problems(method)
    split = method.trial_scene.split("train")
    method.train_step(0, RaySampler(split.images, split.cameras, 0).sample(0, 64))
    comps = method.memory_components()

    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    adam = [v for o in method.opt.opts.values() for st in o.state.values() for v in st.values()
            if torch.is_tensor(v)]
    params = [p for ps in method.opt.params.values() for p in ps]
    assert comps == {"mlp": size([*method.field.mlp.parameters(), *method.field.mlp.buffers()]),
                     "visibility": size(method.field.visibility.parameters()),
                     "appearance_codes": size([method.codes]), "pose": size(method.pose.parameters()),
                     "optimizer": size(adam), "gradients": size([p.grad for p in params])}
    assert comps["gradients"] == size(params) and comps["optimizer"] > 2 * size(params) - 1


def test_tensor_bytes_counts_each_tensor_once_through_containers():
    a, b = torch.zeros(10), torch.zeros(3, dtype=torch.float64)
    module = torch.nn.Linear(4, 2)
    assert tensor_bytes(a, {"x": [a, (b, None)], "y": "text"}, module) == 40 + 24 + 4 * (8 + 2)


@needs_lego
def test_trial_probe_measures_first_and_last_step_and_the_first_view(lego):
    method, evaluation = _plenoxels(lego), Evaluation(metrics=("psnr",))
    probe = memory.TrialProbe(method, evaluation, last_step=2)
    for step in range(3):
        method.train_step(step, _batch(lego, step, 256))
    test = lego.split("test")
    assert len(list(evaluation.views(method, test, [0, 1]))) == 2
    rec = probe.record()
    assert rec["train_step"]["step"] == 0 and rec["train_step_last"]["step"] == 2
    assert rec["render_view"]["view"] == test.names[0] and rec["render_view"]["rays"] == 100 * 100
    assert rec["components"] == method.memory_components()
    assert "train_step" not in vars(method) and "views" not in vars(evaluation)  # unwrapped


def test_profile_prints_a_row_per_batch_size_and_an_out_of_memory_row(tmp_path):
    runs = tmp_path / "runs"
    proc = harness("profile", TOY, "--batch-sizes", "64,128,512", "--steps", "2", "--warmup", "1",
                   "--runs-dir", runs, "--bind", "ToyColour.oom_above=200", check=True)
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["batch", "step", "ms"])
    rows = {line.split()[0]: line for line in lines[header + 1:header + 4]}
    assert set(rows) == {"64", "128", "512"}, proc.stdout
    assert "out of memory" in rows["512"] and "out of memory" not in rows["64"]
    assert len(rows["128"].split()) == 9  # every column measured
    assert "largest batch that ran: 128" in proc.stdout
    assert not runs.exists()  # a profile is not a trial: nothing written


def test_a_trial_records_its_memory_in_metrics_json(runs_dir):
    harness("sweep", TOY, "--runs-dir", runs_dir, "--bind", "Sweep.seeds=[0]",
            "--bind", "Sweep.axes={'ToyColour.lr': [0.1]}", check=True)
    (path,) = list(runs_dir.glob("toy/*/metrics.json"))
    metrics = json.loads(path.read_text())
    mem = metrics["memory"]
    assert mem["device"] == "cpu" and mem["train_step"]["step"] == 0 and mem["train_step"]["rays"] == 256
    assert mem["train_step_last"]["step"] == 39 and mem["render_view"]["view"] == "r_0"
    if mem["train_step"]["measured"] == "rss":
        peaks = [mem[k]["peak_mb"] for k in ("train_step", "train_step_last", "render_view")]
        assert 0 < max(peaks) <= metrics["peak_rss_mb"]
    assert "components" not in mem  # ToyColour does not declare the 'memory' capability
