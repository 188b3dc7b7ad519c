"""What live tracking costs (issue 24; goal: <= 3% of training time), on the default sweep
(`make sweep EXP=plenoxels_tv`: 4 trials of 3000 steps) with default tracking (TensorBoard: scalars and
telemetry every 30 steps, a 4-panel validation view every 300) and with tracking off
(`Tracker.backends = []`), in one process. Each trial runs both ways back to back, in alternating
order, so a drift of the machine's speed does not favour one side. Two figures:
- direct: the seconds the tracked runs spent in tracking (telemetry, tracker calls, view panels:
  metrics.json `tracking_time`) over their training loop's wall time (`train_wall_time`);
- end to end: the tracked runs' summed `train_wall_time` over the untracked runs' (noisier: it also
  holds the machine's run-to-run variation, several % on the 2-core VM).
The trials' PSNRs must agree to the last digit (tracking never changes a result). Run with
`pytest tests/bench/test_bench_tracking.py --override-ini addopts= -s`.
"""

from __future__ import annotations

import json

import pytest

from harness.run.driver import run_sweep

pytestmark = pytest.mark.bench

TV = (0.0, 1e-5, 1e-4, 1e-3)  # experiments/plenoxels_tv.gin's axis


def _trial(runs, tv: float, tracking: bool) -> dict:
    bindings = [f"Sweep.axes = {{'TVLoss.weight_density': [{tv!r}]}}"] + ([] if tracking else ["Tracker.backends = []"])
    outcome = run_sweep("plenoxels_tv", bindings, runs, {"parallel": 1})
    [(tid, state)] = outcome.items()
    assert state == "done", outcome
    return json.loads((runs / "plenoxels_tv" / tid / "metrics.json").read_text())


def test_tracking_overhead_on_the_default_sweep(benchmark, tmp_path):
    def both():
        pairs = []
        for i, tv in enumerate(TV):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {tracking: _trial(tmp_path / ("on" if tracking else "off"), tv, tracking) for tracking in order}
            pairs.append((got[True], got[False]))
        return pairs

    pairs = benchmark.pedantic(both, rounds=1, iterations=1)
    assert all(on["psnr"] == off["psnr"] for on, off in pairs)
    assert all(off["tracking_time"] < on["tracking_time"] for on, off in pairs)  # off: telemetry for train.jsonl only
    wall_on = sum(on["train_wall_time"] for on, _ in pairs)
    wall_off = sum(off["train_wall_time"] for _, off in pairs)
    direct = sum(on["tracking_time"] for on, _ in pairs) / wall_on
    benchmark.extra_info.update(wall_s_tracking=round(wall_on, 2), wall_s_off=round(wall_off, 2),
                                end_to_end_ratio=round(wall_on / wall_off, 4), direct_fraction=round(direct, 4),
                                per_trial=[{"tv": tv, "on": on["train_wall_time"], "off": off["train_wall_time"],
                                            "tracking": on["tracking_time"]} for tv, (on, off) in zip(TV, pairs)])
    print(f"\ntraining loop: tracking {wall_on:.1f} s (of which in tracking {direct:.2%}), off {wall_off:.1f} s, "
          f"end-to-end ratio {wall_on / wall_off:.4f}")
