"""Every shipped experiment expands, and no Gin binding is repeated (DESIGN.md: experiment files
state only what differs; the same key twice, or an include's value restated, is drift)."""

import pytest

from harness.run import sweep
from harness.run.config import check_duplicate_bindings, experiment_path, list_experiments


@pytest.mark.parametrize("name", list_experiments())
def test_experiment_expands_without_duplicate_bindings(name):
    assert check_duplicate_bindings(experiment_path(name)) == []
    assert sweep.expand(name, require_data=False)  # lego_200/400 and fern need `make data`


def test_duplicate_bindings_are_found(tmp_path):
    exp = tmp_path / "dup.gin"
    exp.write_text("include 'base/plenoxels.gin'\nTVLoss.weight_sh = 0.0\nTrainer.seed = 1\nTrainer.seed = 2\n")
    problems = check_duplicate_bindings(exp)
    assert any("TVLoss.weight_sh = 0.0" in p and "repeats" in p for p in problems)
    assert any("Trainer.seed bound twice" in p for p in problems)
    assert len(problems) == 2
