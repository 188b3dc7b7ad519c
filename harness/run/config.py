"""Gin parsing: experiment lookup, includes, command-line bindings, one-line errors.

Knows nothing about baselines: experiment files import what they configure
(`import baselines.plenoxels` in base/plenoxels.gin).
"""

from __future__ import annotations

import importlib.util  # noqa: F401  (gin 0.5 reports missing includes as AttributeError without it)
import logging
import sys
import tokenize
import warnings
from pathlib import Path

import gin

from harness.core.errors import ConfigError, HarnessError
from harness.core.paths import EXPERIMENTS_DIR

log = logging.getLogger(__name__)

# Configurables that describe how to run a sweep, not what a trial computes: excluded from
# the trial's config (and so from its id), so that e.g. switching local -> slurm keeps ids.
NON_TRIAL_CONFIGURABLES = ("Sweep", "launch")


def list_experiments(root: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in root.glob("*.gin"))


def experiment_path(name: str, root: Path = EXPERIMENTS_DIR) -> Path:
    """The Gin file of an experiment, given its name (or a path to a .gin file)."""
    candidate = Path(name)
    if candidate.suffix == ".gin" and candidate.is_file():
        return candidate.resolve()
    path = root / f"{name}.gin"
    if not path.is_file():
        available = ", ".join(list_experiments(root)) or "(none)"
        raise ConfigError(f"unknown experiment '{name}': no {path}. Available: {available}")
    return path


def experiment_name(name: str) -> str:
    """The name records are filed under: the Gin file's stem (for a name or a path)."""
    return experiment_path(name).stem


def _one_line(exc: Exception) -> str:
    """Gin errors span several lines (message, 'In file ..., line N', the code): join them."""
    parts = [p.strip() for p in str(exc).splitlines() if p.strip()]
    if not parts:
        return exc.__class__.__name__
    return parts[0] if len(parts) == 1 else f"{parts[0]} ({'; '.join(parts[1:])})"


def parse(files: list[Path], bindings: list[str], search_dir: Path = EXPERIMENTS_DIR) -> None:
    """Clear Gin and parse `files` then `bindings`; any problem becomes one ConfigError line."""
    if "harness.run.registry" not in sys.modules:  # imported by the entry points, never from here (a cycle)
        raise HarnessError("import harness.run.registry before parsing Gin: it registers the harness's "
                           "configurables (the harness's entry points do)")
    gin.clear_config()
    gin.add_config_file_search_path(str(search_dir))
    where = ", ".join(str(f) for f in files)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            gin.parse_config_files_and_bindings([str(f) for f in files], list(bindings),
                                                skip_unknown=False, finalize_config=False)
    except tokenize.TokenError as exc:
        raise ConfigError(f"{where}: Gin syntax error: {exc.args[0]} at line {exc.args[1][0]}") from None
    except SyntaxError as exc:
        # gin's msg can span lines ("malformed node ...\n    Failed to parse token 'inf'"): keep one
        lines = [line.strip() for line in str(exc.msg).splitlines() if line.strip()] or ["invalid syntax"]
        msg = next((m for m in lines if m.startswith("Failed to parse token")), "; ".join(lines))
        raise ConfigError(f"{exc.filename or where}, line {exc.lineno}: Gin syntax error: {msg}"
                          f"{' near ' + repr(exc.text.strip()) if exc.text and ' near ' not in msg else ''}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from None
    except (ValueError, TypeError, AttributeError, ImportError, KeyError, NameError) as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from None


def query(selector: str, default):
    """A binding's value in the parsed config (macros unevaluated), or `default` when unbound."""
    try:
        return gin.query_parameter(selector)
    except ValueError:
        return default


def trial_config_str() -> str:
    """The current Gin config without the sweep/launch sections: what a trial computes from.

    gin.config_str() is ordered and formatted deterministically, so this string is the
    normalised config that trial ids hash.
    """
    out, skip = [], False
    for line in gin.config_str().splitlines():
        if line.startswith("# Parameters for "):
            name = line[len("# Parameters for "):].rstrip(":")
            skip = name in NON_TRIAL_CONFIGURABLES
        elif line.startswith(NON_TRIAL_CONFIGURABLES) and not line.startswith("#"):
            # a binding line of a skipped configurable that has no header (defensive)
            if line.split(".", 1)[0] in NON_TRIAL_CONFIGURABLES:
                continue
        if not skip:
            out.append(line)
    text = "\n".join(out).strip() + "\n"
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def check_duplicate_bindings(path: Path, search_dir: Path = EXPERIMENTS_DIR) -> list[str]:
    """Bindings repeated across a file and its includes (the drift Gin's docs warn about):
    the same key twice in one file, or an include's binding restated with the same value.
    Overriding an included value with a different one is what experiment files are for.
    Read with Gin's own parser (harness.core.gin_text), so values compare as Gin reads them."""
    from gin.config_parser import BindingStatement

    from harness.core import gin_text

    seen: dict[str, tuple[str, str]] = {}  # key -> (where, value)
    local: dict[Path, set[str]] = {}  # the keys each file binds
    problems: list[str] = []
    for file, statement in gin_text.includes(Path(path), search_dir):
        if not isinstance(statement, BindingStatement):
            continue
        key, value = gin_text.key_of(statement), repr(statement.value)
        lineno = statement.location.line_num
        where = f"{file}:{lineno}"
        if key in local.setdefault(file, set()):
            problems.append(f"{key} bound twice in {file} ({seen[key][0]} and line {lineno})")
        elif key in seen and seen[key][1] == value:
            problems.append(f"{key} = {value} at {where} repeats {seen[key][0]}")
        local[file].add(key)
        seen[key] = (where, value)
    return problems
