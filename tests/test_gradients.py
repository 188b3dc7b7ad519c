"""Gradient health (issue 25, item 2; harness/run/gradients.py): the statistics against hand-computed
gradients, their logging every K steps without changing what a trial computes, the exploding/vanishing
warnings, and the divergence record naming the parameter group whose learning rate blew up."""

import math

import pytest
import torch

from harness.core.errors import TrialDiverged
from harness.run.gradients import GradientHealth, group_stats
from tests.conftest import harness
from tests.reliability_tools import Trial

PLENOXELS = ("include 'base/plenoxels.gin'\ninclude 'base/scenes/lego_100.gin'\n"
             "ITERATIONS = 20\nPlenoxels.resolution = 32\nPlenoxels.upsample_steps = ()\nPlenoxels.prune_steps = ()\n"
             "Plenoxels.batch_size = 512\nTVLoss.weight_density = 1e-4\nEvaluation.metrics = ('psnr',)\n"
             "Tracker.backends = []\nTrainer.checkpoint_every = 10\nTrainer.collapse_psnr = None\n"
             "Trainer.min_loss_drop = None\n")
BLOCK_NERF = ("include 'base/block_nerf.gin'\ninclude 'base/scenes/street.gin'\n"
              "ITERATIONS = 10\nBlockNeRF.batch_size = 128\nMipField.n_coarse = 8\nMipField.n_fine = 8\n"
              "Evaluation.metrics = ('psnr',)\nTracker.backends = []\nTrainer.log_every = 5\n"
              "Trainer.checkpoint_every = 5\nTrainer.collapse_psnr = None\nTrainer.min_loss_drop = None\n")


def _experiment(tmp_path, text: str, name: str = "g"):
    exp = tmp_path / f"{name}.gin"
    exp.write_text(text)
    return exp


def test_statistics_of_a_tiny_model_match_the_gradients_computed_by_hand():
    # y = W x + b, loss = sum(y): dL/dW = x in every row, dL/db = 1
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -4.0, 1.0], [2.0, 0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.1, -0.2]))
    lin(torch.tensor([1.0, 0.0, -3.0])).sum().backward()
    s = group_stats([lin.weight.grad, lin.bias.grad], [lin.weight, lin.bias])
    # gradients: [1, 0, -3, 1, 0, -3, 1, 1]
    assert s["norm"] == pytest.approx(math.sqrt(1 + 9 + 1 + 9 + 1 + 1), rel=1e-12)
    assert s["max"] == 3.0 and s["mean"] == pytest.approx(-2 / 8) and s["zeros"] == 2 / 8
    assert s["nonfinite"] == 0 and s["value_max"] == 4.0


def test_non_finite_entries_are_counted_and_left_out_of_the_other_statistics():
    s = group_stats([torch.tensor([float("nan"), float("inf"), 0.0, 3.0, -4.0])])
    assert s["nonfinite"] == 2 and s["norm"] == 5.0 and s["max"] == 4.0
    assert s["mean"] == pytest.approx(-1 / 3) and s["zeros"] == 1 / 5


class _Watched:
    """A method's two 'gradients' members, for the diagnosis rules alone."""

    capabilities = ("gradients",)

    def __init__(self, **groups):
        self.groups, self.gradient_hook = groups, None

    def parameter_groups(self):
        return self.groups


def test_the_diagnosis_names_non_finite_values_then_gradients_then_the_largest_growth():
    a, b = torch.ones(3), torch.full((2,), 0.5)
    health = GradientHealth(every=1)
    method = _Watched(a=[a], b=[b])
    health.attach(method, log_every=5, step=0)
    assert method.gradient_hook == health.observe
    ok = torch.tensor(1.0)
    health.observe(0, ok, {"a": [torch.ones(3)], "b": [torch.zeros(2)]})
    assert health.take()["grad/a/norm"] == pytest.approx(math.sqrt(3))
    # a non-finite gradient with a finite loss, at a statistics step: that group
    with pytest.raises(TrialDiverged, match=r"non-finite gradient at step 2 in b; first non-finite group: b") as exc:
        health.observe(1, ok, {"a": [torch.ones(3)], "b": [torch.tensor([1.0, float("nan")])]})
    assert exc.value.step == 2 and exc.value.diagnosis["last_healthy"]["step"] == 1
    # values already non-finite come first, whatever the gradients say
    b[1] = float("inf")
    d = health.diagnose(3, "loss", {"a": [torch.full((3,), float("nan"))], "b": [torch.zeros(2)]})
    assert (d["group"], d["evidence"]) == ("b", "1 non-finite values")
    # a NaN loss makes every gradient NaN: the group whose values grew the most is named
    b[1], a[0] = 0.5, 1e30
    with pytest.raises(TrialDiverged, match=r"first non-finite group: a \(its max \|value\| went from 1 at step 1"):
        health.observe(3, torch.tensor(float("nan")), {"a": [torch.full((3,), float("nan"))],
                                                       "b": [torch.full((2,), float("nan"))]})
    # a loss scaler owns non-finite gradients: no divergence
    health.observe(4, torch.tensor(float("inf")), {"a": [torch.full((3,), float("inf"))]}, scaled=True)
    health.detach()
    assert method.gradient_hook is None


def test_statistics_are_logged_every_k_steps_warn_and_change_nothing(tmp_path):
    """GradientHealth.every = 5 against 0 (off): same trial id, same losses, same grid bit for bit;
    the statistics are in train.jsonl every 5 steps, and a threshold crossed is in status.json."""
    from harness.run import checkpoints

    pytest.importorskip("baselines.plenoxels")
    results = []
    for i, extra in enumerate(("GradientHealth.every = 5\nGradientHealth.exploding = 1e-5\n",
                               "GradientHealth.every = 0\n")):
        trial = Trial(_experiment(tmp_path, PLENOXELS + extra, f"p{i}"), tmp_path / f"runs{i}")
        trial.run_here()
        _, payload = checkpoints.load_latest(trial.dir / "checkpoints")
        results.append((trial.trial.id, trial.metrics()["psnr"], trial.log_rows(), payload["method"]["grid"],
                        trial.status()))
    (id_a, psnr_a, log_a, grid_a, status_a), (id_b, psnr_b, log_b, grid_b, status_b) = results
    assert id_a == id_b and psnr_a == psnr_b
    stats = [r for r in log_a if "grad/density/norm" in r]
    assert [r["step"] for r in stats] == [5, 10, 15, 20]
    for r in stats:
        for group in ("density", "sh"):
            assert r[f"grad/{group}/max"] <= r[f"grad/{group}/norm"] and 0 <= r[f"grad/{group}/zeros"] <= 1
            assert r[f"grad/{group}/nonfinite"] == 0 and r[f"grad/{group}/value_max"] > 0
    # the rows of steps between Trainer.log_every (50 here) hold the statistics alone
    strip = [{k: v for k, v in r.items() if not k.startswith("grad/")} for r in log_a]
    assert [r for r in strip if set(r) - {"step", "time"}] == log_b
    assert not any(k.startswith("grad/") for r in log_b for k in r)
    for key in grid_a:
        if torch.is_tensor(grid_a[key]):
            assert torch.equal(grid_a[key], grid_b[key]), key
    warned = status_a["gradient_warnings"]["density: exploding"]
    assert (warned["first_step"], warned["last_step"], warned["count"]) == (5, 20, 4)
    assert "gradient_warnings" not in status_b


@pytest.mark.parametrize("text, binding, group", [
    (PLENOXELS, "Plenoxels.lr_density = 1e30", "density"),
    (BLOCK_NERF, "Optimization.lr_mlp = 1e25", "mlp"),
    (BLOCK_NERF, "Optimization.lr_visibility = 1e30", "visibility"),
])
def test_a_learning_rate_that_blows_up_names_its_parameter_group(tmp_path, text, binding, group):
    from harness.run import checkpoints
    from reports import collect, provenance

    trial = Trial(_experiment(tmp_path, text + binding + "\n"), tmp_path / "runs")
    assert trial.run() == "error"
    status = trial.status()
    assert status["state"] == "diverged" and status["diverged_at"] == 2
    assert status["error"].startswith("non-finite loss at step 2")
    assert f"first non-finite group: {group} (its max |value| went from" in status["error"]
    d = status["divergence"]
    assert (d["step"], d["cause"], d["group"]) == (2, "loss", group)
    assert d["last_healthy"]["step"] == 0 and set(d["last_healthy"]["stats"]) == set(d["groups"])
    # caught between backward and the update: the values kept are finite, every group's and the checkpoint's
    assert all(f["value_nonfinite"] == 0 for f in d["groups"].values())
    assert checkpoints.load_latest(trial.dir / "checkpoints") is None
    # the report's failed-trials section shows the group and the last healthy statistics
    trials = collect.collect(tmp_path / "runs", ["g"], with_curves=False).trials
    row = provenance.unfinished(trials)[0]
    assert f"first non-finite group: {group}" in row["what"]
    assert row["detail"].startswith("last healthy statistics (step 0): ") and f"{group}: max |value|" in row["detail"]


@pytest.mark.parametrize("binding, message", [
    ("GradientHealth.every = -1", "GradientHealth.every = -1: expected an integer >= 0 (0: never) or None"),
    ("GradientHealth.vanishing = 1000.0",
     "GradientHealth.vanishing = 1000.0 must be below GradientHealth.exploding = 100.0"),
    ("GradientHealth.exploding = 0", "GradientHealth.exploding = 0: expected a positive number"),
])
def test_bad_settings_are_one_line_at_expansion(tmp_path, binding, message):
    exp = _experiment(tmp_path, PLENOXELS)
    proc = harness("sweep", exp, "--dry-run", "--bind", binding)
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

