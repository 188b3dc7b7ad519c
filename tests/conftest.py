import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.run.registry  # the tests' entry point: registers the harness's configurables

# fixtures shared by several test modules (tiny_scene, reference, small_blocks)
pytest_plugins = ("tests.reliability_tools", "tests.test_kernels_fixtures")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
TOY = ROOT / "tests" / "fixtures" / "toy.gin"

# Tests run trials in subprocesses too; keep each to one thread on this 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# LPIPS backbone weights offline (the Makefile sets the same when run through `make test`).
if not os.environ.get("HARNESS_LPIPS_WEIGHTS") and (SHARED_DATA / "lpips_weights").is_dir():
    os.environ["HARNESS_LPIPS_WEIGHTS"] = str(SHARED_DATA / "lpips_weights")


def harness(*args, cwd=ROOT, timeout=300, check=False) -> subprocess.CompletedProcess:
    """Run `python -m harness ...` as a user would, capturing output."""
    proc = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"harness {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def requires_shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"shared test data not found: {path}")
