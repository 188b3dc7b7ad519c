"""`harness reproduce` (issue 22, item 6): a done trial re-run from its record gives the same metrics to
the last digit and the same parameters bit for bit; differences of numbers, parameters and machine
are printed."""

import json
import os
import subprocess
import sys

import pytest
import torch

from harness.run import sweep
from tests.conftest import ROOT
from tests.reliability_tools import write_experiment


def _harness(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def done_trial(tiny_scene, tmp_path_factory):
    folder = tmp_path_factory.mktemp("repro")
    exp = write_experiment(folder, tiny_scene)
    runs = folder / "runs"
    assert _harness("sweep", exp, "--runs-dir", runs).returncode == 0
    (trial,) = sweep.expand(str(exp))
    return runs, trial.id


def test_a_done_trial_reproduces_bit_for_bit(done_trial):
    runs, tid = done_trial
    proc = _harness("reproduce", "rel", tid, "--runs-dir", runs)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    assert "metrics: identical (every digit)" in proc.stdout and "parameters: identical (bit for bit)" in proc.stdout
    assert "machine and code: as recorded" in proc.stdout, proc.stdout
    scratch = proc.stdout.splitlines()[0].split(" in ", 1)[1]
    assert json.loads(open(f"{scratch}/metrics.json").read())["per_view"] == \
        json.loads((runs / "rel" / tid / "metrics.json").read_text())["per_view"]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="needs an AVX512 machine to simulate AVX2")
def test_another_cpu_capability_is_named(done_trial):
    """What a record from another machine looks like: torch dispatching to AVX2 kernels here."""
    runs, tid = done_trial
    proc = _harness("reproduce", "rel", tid, "--runs-dir", runs, env={"ATEN_CPU_CAPABILITY": "avx2"})
    assert "cpu capability: AVX512 -> AVX2" in proc.stdout, proc.stdout
    assert proc.returncode in (0, 1) and ("metrics: identical" in proc.stdout or "differences" in proc.stdout)


def test_a_different_result_is_reported_with_the_numbers(done_trial):
    runs, tid = done_trial
    path = runs / "rel" / tid / "metrics.json"
    original = path.read_text()
    metrics = json.loads(original)
    metrics["psnr"] += 0.5  # as if the record came from elsewhere
    path.write_text(json.dumps(metrics))
    try:
        proc = _harness("reproduce", "rel", tid, "--runs-dir", runs)
    finally:
        path.write_text(original)
    assert proc.returncode == 1 and "metrics: 1 differences" in proc.stdout, proc.stdout
    assert f"psnr: {metrics['psnr']!r} -> {metrics['psnr'] - 0.5!r}" in proc.stdout


def test_reproducing_what_is_not_done_is_one_line(done_trial, tmp_path):
    runs, _ = done_trial
    proc = _harness("reproduce", "rel", "000000000000", "--runs-dir", runs)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no such trial record" in proc.stderr
