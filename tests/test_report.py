"""`harness report` on a real (small) sweep: the page in headless Chromium, its numbers against the
records, unfinished trials, and the command's errors."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.core.errors import HarnessError
from reports.build import build_report
from tests.conftest import harness

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_COPY = Path("/tmp/report_screenshot.png")

# Two variants x two seeds of the toy method on the procedural tiny scene (10 test views of 64x64).
SMALL = """\
import tests.fixtures.toy_method
include 'base/scenes/tiny.gin'
Trainer.method = @ToyColour
Trainer.iterations = 30
Trainer.checkpoint_every = 30
Trainer.log_every = 10
Evaluation.metrics = ('psnr', 'ssim')
Trainer.collapse_psnr = None  # ToyColour scores below the mean colour (tests/test_collapse.py)
Sweep.axes = {'ToyColour.lr': [0.01, 0.1]}
Sweep.seeds = [0, 1]
launch.cluster = 'debug'
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(runs dir, experiment name) of a finished real sweep."""
    root = tmp_path_factory.mktemp("report_sweep")
    exp = root / "rsmall.gin"
    exp.write_text(SMALL)
    harness("sweep", exp, "--runs-dir", root / "runs", check=True, timeout=600)
    return root / "runs", "rsmall"


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    runs, name = sweep
    out = tmp_path_factory.mktemp("report_out")
    proc = harness("report", name, "--runs-dir", runs, "--out", out, "--bench", "", check=True)
    assert f"report: {out / 'index.html'}" in proc.stdout
    return out / "index.html"


class Tables(HTMLParser):
    """Cells (text) of every <table>, keyed by its class, with each row's attributes."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[tuple[dict, list[str]]]]] = []
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append((a.get("class", ""), []))
        elif tag == "tr" and self.tables:
            self._row = (a, [])
            self.tables[-1][1].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, cls: str, nth: int = 0):
        found = [rows for c, rows in self.tables if cls in c.split()]
        assert len(found) > nth, f"no table of class {cls!r} (tables: {[c for c, _ in self.tables]})"
        return found[nth]


def parse_tables(path: Path) -> Tables:
    p = Tables()
    p.feed(path.read_text())
    return p


def _records(runs: Path, name: str) -> list[tuple[dict, dict]]:
    out = []
    for d in sorted((runs / name).iterdir()):
        if (d / "status.json").exists():
            out.append((json.loads((d / "status.json").read_text()), json.loads((d / "metrics.json").read_text())))
    return out


def _shown(text: str) -> tuple[float, float]:
    mean, ci = text.split("±")
    return float(mean), float(ci)


def test_table_numbers_equal_the_records_and_the_t_interval(sweep, report):
    runs, name = sweep
    by_lr: dict[float, list[dict]] = {}
    for status, metrics in _records(runs, name):
        assert status["state"] == "done"
        by_lr.setdefault(status["bindings"]["ToyColour.lr"], []).append(metrics)
    assert sorted(by_lr) == [0.01, 0.1] and all(len(v) == 2 for v in by_lr.values())

    rows = parse_tables(report).table("results")
    header, body = rows[0][1], rows[1:]
    assert [r[0]["data-variant"] for r in body] == ["lr=0.01", "lr=0.1"]
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        col = next(i for i, h in enumerate(header) if h.startswith(metric.upper()))
        for (_attrs, cells), lr in zip(body, (0.01, 0.1)):
            values = np.array([m[metric] for m in by_lr[lr]])
            n = len(values)
            half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
            mean, ci = _shown(cells[col])
            tol = 0.5 * 10**-digits + 1e-9
            assert abs(mean - values.mean()) <= tol, (metric, lr, cells[col], values)
            assert abs(ci - half) <= tol, (metric, lr, cells[col], half)
            # the rendered text is exactly the rounding of the recomputed numbers
            assert cells[col].startswith(f"{values.mean():.{digits}f} ± {half:.{digits}f}")
    # best per column: the higher PSNR mean is marked, and only it
    html = report.read_text()
    best_psnr = max(by_lr, key=lambda lr: np.mean([m["psnr"] for m in by_lr[lr]]))
    row = html.split(f'data-variant="lr={best_psnr}"')[1].split("</tr>")[0]
    assert 'class="best" data-metric="psnr"' in row
    other = html.split(f'data-variant="lr={0.01 if best_psnr == 0.1 else 0.1}"')[1].split("</tr>")[0]
    assert 'class="best" data-metric="psnr"' not in other


def test_csv_and_latex_tables(sweep, report):
    import pandas as pd

    runs, name = sweep
    out = report.parent
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and set(trials["state"]) == {"done"}
    views = pd.read_csv(out / "views.csv")
    assert len(views) == 4 * 10  # one row per (trial, test view)
    recorded = {(s["trial_id"], v): m["per_view"][v]["psnr"] for s, m in _records(runs, name) for v in m["per_view"]}
    for r in views.itertuples():
        assert r.psnr == pytest.approx(recorded[(r.key.split("/")[1], r.view)])
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["variant"]) == ["lr=0.01", "lr=0.1"]
    tex = (out / "results.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\textbf{" in tex and "lr=0.01" in tex


def _chrome():
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"headless browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, "
                    f"{CHROMEDRIVER}); .ci/run installs them")
    from selenium import webdriver  # a test dependency (pyproject [test]): missing is an error, not a skip
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def _open_and_check(path: Path, shot: Path, n_variants: int) -> dict:
    from selenium.webdriver.common.by import By

    driver = _chrome()
    try:
        driver.get(path.resolve().as_uri())
        driver.execute_script("return document.readyState")
        rows = driver.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
        assert len(rows) == n_variants, f"results table has {len(rows)} rows, expected {n_variants}"
        images = driver.execute_script(
            "return Array.from(document.images)"
            ".map(i => [i.complete, i.naturalWidth, i.getAttribute('src').slice(0, 80)])")
        assert len(images) >= 5, images
        broken = [src for complete, width, src in images if not complete or width == 0]
        assert not broken, f"images not loaded: {broken}"
        logs = driver.get_log("browser")
        errors = [e for e in logs if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"console errors: {errors}"
        # the thumbnails open full size in the page (the lightbox), without a console error
        driver.find_element(By.CSS_SELECTOR, "table.grid a.zoom").click()
        assert driver.execute_script("return getComputedStyle(document.getElementById('lightbox')).display") == "flex"
        assert driver.execute_script("return document.querySelector('#lightbox img').naturalWidth") > 0
        driver.find_element(By.ID, "lightbox").click()
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 40, 8000))
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(shot))
        return {"images": len(images)}
    finally:
        driver.quit()


def test_report_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    seen = _open_and_check(report, shot, n_variants=2)
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)  # for a person to look at
    assert seen["images"] >= 5


def test_embedded_report_is_one_self_contained_file(sweep, tmp_path):
    runs, name = sweep
    out = tmp_path / "embedded"
    build_report([name], runs, out, embed=True, bench_paths=[], views=["0", "test_005"])
    html = (out / "index.html").read_text()
    assert not (out / "assets").exists() and not [p for p in out.iterdir() if p.name.startswith(".report-")]
    assert 'src="assets/' not in html and html.count('src="data:image/png;base64,') >= 10
    assert ">test_000<" in html and ">test_005<" in html  # the chosen views, by position and by name
    # a copy elsewhere still shows every image: nothing is fetched from beside it
    moved = tmp_path / "elsewhere" / "report.html"
    moved.parent.mkdir()
    shutil.copyfile(out / "index.html", moved)
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        _open_and_check(moved, tmp_path / "embedded.png", n_variants=2)


def test_report_errors_are_one_clear_line(sweep, tmp_path):
    runs, name = sweep
    proc = harness("report", name, "--runs-dir", runs, "--out", tmp_path / "a", "--baseline", "lr=7", "--bench", "")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --baseline 'lr=7' matches no variant")
    assert "lr=0.01" in proc.stderr
    with pytest.raises(HarnessError, match="matches 2 variants"):
        build_report([name], runs, tmp_path / "b", baseline="lr=0", bench_paths=[])
    with pytest.raises(HarnessError, match="--views: no test view 'r_999'"):
        build_report([name], runs, tmp_path / "b", views=["r_999"], bench_paths=[])
    with pytest.raises(HarnessError, match="no such experiment folder.*make sweep EXP=nope"):
        build_report(["nope"], runs, tmp_path / "b", bench_paths=[])
    bad = tmp_path / "bench.json"
    bad.write_text("{not json")
    with pytest.raises(HarnessError, match="not a pytest-benchmark JSON file"):
        build_report([name], runs, tmp_path / "b", bench_paths=[bad])
    with pytest.raises(HarnessError, match="no such file"):
        build_report([name], runs, tmp_path / "b", bench_paths=[tmp_path / "absent.json"])


def test_baseline_choice_and_difference(sweep, tmp_path):
    runs, name = sweep
    out = build_report([name], runs, tmp_path / "b", baseline="lr=0.1", bench_paths=[])
    rows = parse_tables(out).table("diffs")
    header, body = rows[0][1], rows[1:]
    assert len(body) == 1 and body[0][1][1] == "lr=0.01"
    per_seed = {}
    for status, metrics in _records(runs, name):
        per_seed.setdefault(status["bindings"]["seed"], {})[status["bindings"]["ToyColour.lr"]] = metrics["psnr"]
    a = [per_seed[s][0.01] for s in sorted(per_seed)]
    b = [per_seed[s][0.1] for s in sorted(per_seed)]
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    col = header.index("Δ PSNR ↑")
    mean, ci = _shown(body[0][1][col])
    assert mean == pytest.approx(d.mean(), abs=0.0051) and ci == pytest.approx(half, abs=0.0051)
    assert body[0][1][col + 2] == "paired by seed (n=2)"
    assert body[0][1][col + 1] == f"{stats.ttest_rel(a, b).pvalue:.3f}"
