"""Expanding a large sweep (issue 22, item 8; target: 10,000 trials expanded with ids in <= 10 s on the
2-core CPU; measured, not asserted). `harness.sweep.expand` parses the experiment once per scene and
derives the other trials (sweep._Base); the reference path parses every trial on its own, as the
expansion did before and as each job still does to check its id. Both run here, so their ratio is
measured in the same run. Run with `make bench` or
`pytest tests/bench/test_bench_expand.py --override-ini addopts=`.
"""

from __future__ import annotations

import resource

import pytest

from harness import sweep

pytestmark = pytest.mark.bench


def _experiment(folder, seeds: int):
    path = folder / f"big{seeds}.gin"
    path.write_text("import tests.fixtures.toy_method\ninclude 'base/scenes/lego_100.gin'\n"
                    "Trainer.method = @ToyColour\n"
                    f"Sweep.axes = {{'ToyColour.lr': {[0.001 * (i + 1) for i in range(10)]}, "
                    f"'ToyColour.buckets': {list(range(1, 11))}}}\n"
                    f"Sweep.seeds = {list(range(seeds))}\n")
    return path


@pytest.mark.parametrize("seeds", [10, 100], ids=["1000 trials", "10000 trials"])
def test_expand_derived(benchmark, tmp_path, seeds):
    exp = _experiment(tmp_path, seeds)
    trials = benchmark.pedantic(sweep.expand, args=(str(exp),), rounds=1, iterations=1)
    assert len(trials) == 100 * seeds == len({t.id for t in trials})
    benchmark.extra_info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_expand_reference_1000(benchmark, tmp_path, monkeypatch):
    """Every trial parsed alone (sweep._fast_path_ok forced off): the ratio's denominator."""
    monkeypatch.setattr(sweep, "_fast_path_ok", lambda spec, variants: False)
    exp = _experiment(tmp_path, 10)
    trials = benchmark.pedantic(sweep.expand, args=(str(exp),), rounds=1, iterations=1)
    assert len(trials) == 1000
