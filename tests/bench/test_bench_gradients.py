"""What gradient health costs (issue 25; goal: <= 2% of training time), on the default sweep
(`make sweep EXP=plenoxels_tv`: 4 trials of 3000 steps) with the statistics at the default K
(`GradientHealth.every = None`: Trainer.log_every, 50 steps for Plenoxels) and with them off
(`GradientHealth.every = 0`: the hook still checks the loss before each update), tracking off in both,
in one process. Each trial runs both ways back to back, in alternating order. Two figures:
- direct: the seconds the runs with statistics spent in the hook (metrics.json `gradient_health_time`:
  every step's loss check and every K-th step's statistics) over their training loop's wall time
  (`train_wall_time`);
- end to end: the summed `train_wall_time` with statistics over without (noisier: it also holds the
  machine's run-to-run variation).
The trials' PSNRs must agree to the last digit (watching never changes a result). Run with
`pytest tests/bench/test_bench_gradients.py --override-ini addopts= -s`.
"""

from __future__ import annotations

import json

import pytest

from harness.run.driver import run_sweep

pytestmark = pytest.mark.bench

TV = (0.0, 1e-5, 1e-4, 1e-3)  # experiments/plenoxels_tv.gin's axis


def _trial(runs, tv: float, statistics: bool) -> dict:
    bindings = [f"Sweep.axes = {{'TVLoss.weight_density': [{tv!r}]}}", "Tracker.backends = []"]
    if not statistics:
        bindings.append("GradientHealth.every = 0")
    outcome = run_sweep("plenoxels_tv", bindings, runs, {"parallel": 1})
    [(tid, state)] = outcome.items()
    assert state == "done", outcome
    return json.loads((runs / "plenoxels_tv" / tid / "metrics.json").read_text())


def test_gradient_statistics_overhead_on_the_default_sweep(benchmark, tmp_path):
    def both():
        pairs = []
        for i, tv in enumerate(TV):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {on: _trial(tmp_path / ("on" if on else "off"), tv, on) for on in order}
            pairs.append((got[True], got[False]))
        return pairs

    pairs = benchmark.pedantic(both, rounds=1, iterations=1)
    assert all(on["psnr"] == off["psnr"] for on, off in pairs)
    assert all(off["gradient_health_time"] < on["gradient_health_time"] for on, off in pairs)
    wall_on = sum(on["train_wall_time"] for on, _ in pairs)
    wall_off = sum(off["train_wall_time"] for _, off in pairs)
    direct = sum(on["gradient_health_time"] for on, _ in pairs) / wall_on
    benchmark.extra_info.update(wall_s_statistics=round(wall_on, 2), wall_s_off=round(wall_off, 2),
                                end_to_end_ratio=round(wall_on / wall_off, 4), direct_fraction=round(direct, 4),
                                per_trial=[{"tv": tv, "on": on["train_wall_time"], "off": off["train_wall_time"],
                                            "health_on": on["gradient_health_time"],
                                            "health_off": off["gradient_health_time"]}
                                           for tv, (on, off) in zip(TV, pairs)])
    print(f"\ntraining loop: with statistics {wall_on:.1f} s (of which in the hook {direct:.2%}), "
          f"off {wall_off:.1f} s, end-to-end ratio {wall_on / wall_off:.4f}")
