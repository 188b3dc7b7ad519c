"""Building a report over 1,000 trial records (target: <= 30 s on the 2-core CPU; measured, not asserted).

The records are synthetic but written with the project's record functions (harness.core.records), like
the trial runner writes them: 2 scenes x 10 x 10 variants x 5 seeds, 20 per-view scores with PSNR,
SSIM and LPIPS, 10 train.jsonl lines each. Run with `make bench` or
`pytest tests/bench/test_bench_report.py --override-ini addopts=`.
"""

from __future__ import annotations

import os
import time

import pytest

from reports.build import build_report
from tests.test_report_units import parse_tables, synthetic_experiment

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    runs = tmp_path_factory.mktemp("bench_report") / "runs"
    t0 = time.perf_counter()
    recs = synthetic_experiment(runs, "big", {"M.lr": [1e-3 * 2**i for i in range(10)],
                                              "M.tv": [1e-5 * 3**i for i in range(10)]},
                                seeds=range(5), scenes=("s0", "s1"), views=20, log_steps=10)
    assert len(recs) == 1000
    return runs, time.perf_counter() - t0


def test_report_of_1000_trials(benchmark, thousand, tmp_path):
    runs, setup = thousand
    cpu = {}

    def build():
        c0 = time.process_time()
        out = build_report(["big"], runs, tmp_path / "rep", bench_paths=[])
        cpu["s"] = time.process_time() - c0  # this process's CPU: the wall time also counts other load
        return out

    out = benchmark.pedantic(build, rounds=1, iterations=1)
    benchmark.extra_info.update(trials=1000, cpu_s=round(cpu["s"], 1), records_written_s=round(setup, 1),
                                load_avg_1min=round(os.getloadavg()[0], 1))
    tables = parse_tables(out)
    assert len(tables.table("results")) == 101 and len(tables.table("results", 1)) == 101  # header + 100 variants
    assert len(tables.table("trials")) == 1001
