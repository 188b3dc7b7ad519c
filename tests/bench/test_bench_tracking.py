"""What live tracking costs (issue 24; goal: <= 3% of training time): the default sweep
(`make sweep EXP=plenoxels_tv`, 4 trials of 3000 steps) run with default tracking (TensorBoard: scalars
every 30 steps, a 4-panel validation view every 300) and with tracking off (`Tracker.backends = []`),
in one process, one after the other, each trial on both cores. The figure is the ratio of the trials'
summed training time (metrics.json `train_time`: the steps only, not loading or evaluation); the
trials' PSNRs must agree to the digit (tracking never changes a result). Run with
`pytest tests/bench/test_bench_tracking.py --override-ini addopts= -s`.
"""

from __future__ import annotations

import json

import pytest

from harness.run.driver import run_sweep

pytestmark = pytest.mark.bench


def _sweep(runs, bindings):
    outcome = run_sweep("plenoxels_tv", bindings, runs, {"parallel": 1})
    assert set(outcome.values()) == {"done"}, outcome
    metrics = [json.loads(p.read_text()) for p in sorted(runs.glob("plenoxels_tv/*/metrics.json"))]
    assert len(metrics) == 4
    return {m["scene"] + str(i): m for i, m in enumerate(metrics)}


def test_tracking_overhead_on_the_default_sweep(benchmark, tmp_path):
    def both():
        on = _sweep(tmp_path / "on", [])
        off = _sweep(tmp_path / "off", ["Tracker.backends = []"])
        return on, off

    on, off = benchmark.pedantic(both, rounds=1, iterations=1)
    time_on = sum(m["train_time"] for m in on.values())
    time_off = sum(m["train_time"] for m in off.values())
    assert [round(m["psnr"], 2) for m in on.values()] == [round(m["psnr"], 2) for m in off.values()]
    assert any((tmp_path / "on").rglob("events.out.tfevents.*")) and not any((tmp_path / "off").rglob("tb"))
    benchmark.extra_info.update(train_s_tracking=round(time_on, 2), train_s_off=round(time_off, 2),
                                overhead_ratio=round(time_on / time_off, 4))
    print(f"\ntraining time: tracking {time_on:.1f} s, off {time_off:.1f} s, ratio {time_on / time_off:.4f}")
