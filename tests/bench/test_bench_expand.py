"""Expanding a large sweep (issue 22, item 8; target: 10,000 trials expanded with ids in <= 10 s on the
2-core CPU; measured, not asserted). `harness.run.sweep.expand` parses the experiment once per scene and
derives the other trials (sweep._Base); the reference path parses every trial on its own, as the
expansion did before and as each job still does to check its id. Both run here, so their ratio is
measured in the same run. `driver.prepare` then writes the sweep's records: sweep.json, the index
of every trial; a trial's own folder is made when it is launched (harness/run/store.py), timed here per
1,000 trials. Run with `make bench` or
`pytest tests/bench/test_bench_expand.py --override-ini addopts=`.
"""

from __future__ import annotations

import json
import resource

import pytest

from harness.run import driver, store, sweep

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


def test_expand_and_prepare_10000(benchmark, tmp_path):
    """What `make sweep` does before it launches the first trial: expand, compute ids, write the records."""
    exp = _experiment(tmp_path, 100)

    def sweep_records():
        return driver.prepare(sweep.expand(str(exp)), tmp_path / "runs", exp, [])

    records = benchmark.pedantic(sweep_records, rounds=1, iterations=1)
    assert len(records) == 10000 and {r.state for r in records} == {"pending"}
    assert len(json.loads((tmp_path / "runs" / exp.stem / "sweep.json").read_text())["trials"]) == 10000
    benchmark.extra_info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_materialise_1000(benchmark, tmp_path):
    """The folders of 1,000 launched trials (config.gin, status.json, identity.json, the link), one by
    one as a local sweep launches them: what was paid up front for every trial before."""
    exp = _experiment(tmp_path, 10)
    trials = sweep.expand(str(exp))
    benchmark.pedantic(lambda: [store.materialise(tmp_path / "runs", t) for t in trials], rounds=1, iterations=1)
    assert all((tmp_path / "runs" / exp.stem / t.id / "status.json").is_file() for t in trials)
