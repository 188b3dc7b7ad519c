"""Well-known project locations, resolved from this file (not the working directory)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_RUNS_DIR = Path("runs")


def resolve_project_path(path: str | Path) -> Path:
    """An absolute path as given; a relative one against the project root, so runs work from any cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
