"""Code and environment provenance of a trial (issue 22, item 2).

`source_fingerprint()` says exactly which code a trial ran: a sha256 over the project's source
(read from disk, so a tarball without .git is fingerprinted too) plus, where the project is a git
checkout, the commit and whether (and how) the source differs from it. `environment()` says what
it ran on: Python, torch/CUDA/cuDNN/Triton, the packages that compute, the device, the CPU and the
vector instructions PyTorch dispatches to. `differences()` turns two such records into one short
line per difference that can change the numbers, e.g. for a resumed or re-run trial.

Both are cached per process, so calling them for every trial of a large sweep costs little: the
fingerprint is recomputed only when a source file's (path, size, mtime) or the git state (HEAD,
index, refs) changes; the environment's static part is computed once.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

from harness.core.paths import PROJECT_ROOT

# What a trial runs: every *.py under these folders, plus the extra files below.
SOURCE_DIRS = ("harness", "baselines", "kernels")
EXTRA_SUFFIXES = {"kernels": (".cu",)}           # folder -> further suffixes hashed in it
EXTRA_FILES = ("harness/core/data/datasets.toml",)
SKIP_DIRS = {"__pycache__"}

# Distributions whose versions can change the numbers a trial produces.
PACKAGES = ("torch", "torchvision", "numpy", "lpips", "scikit-image", "scipy", "pillow")

GIT_TIMEOUT_S = 5
_FP_CACHE: dict[tuple, dict] = {}
_FP_CACHE_MAX = 8
_ENV_STATIC: dict | None = None
_DEVICE_CACHE: dict[str | None, dict] = {}


def clear_cache() -> None:
    """Forget the cached fingerprints and environment (tests; a long-lived process may too)."""
    global _ENV_STATIC
    _FP_CACHE.clear()
    _ENV_STATIC = None
    _DEVICE_CACHE.clear()


# --------------------------------------------------------------------------------------- source

def _source_files(root: Path) -> list[tuple[str, str, tuple[int, int] | None]]:
    """(relative posix path, absolute path, (size, mtime_ns)) of the project's source files,
    sorted by path. One scandir pass (symlinked sub-folders are not followed, as in os.walk)."""
    base = str(root)
    prefix = os.path.join(base, "")  # every path below starts with it
    found: dict[str, tuple[str, tuple[int, int] | None]] = {}
    for folder in SOURCE_DIRS:
        suffixes = (".py",) + EXTRA_SUFFIXES.get(folder, ())
        stack = [os.path.join(base, folder)]
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except OSError:  # missing folder (baselines/ in a cut-down tree), unreadable
                continue
            with entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.name not in SKIP_DIRS:
                                stack.append(entry.path)
                            continue
                        if not entry.name.endswith(suffixes):
                            continue
                        st = entry.stat()
                    except OSError:  # vanished while listed
                        continue
                    rel = entry.path[len(prefix):].replace(os.sep, "/")
                    found[rel] = (entry.path, (st.st_size, st.st_mtime_ns))
    for rel in EXTRA_FILES:
        path = os.path.join(base, rel)
        key = _stat_key(Path(path))
        if key is not None:
            found[rel] = (path, key)
    return sorted((rel, path, key) for rel, (path, key) in found.items())


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _module_file(name: str) -> tuple[str, Path | None] | None:
    """Where module `name` is: ("file", path), ("no-file", None) for a built-in or namespace
    package, or None when it cannot be found (importing its parent package failed included)."""
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # ModuleNotFoundError for a missing parent, anything a parent's import raises
        return None
    if spec is None:
        return None
    if spec.has_location and spec.origin and os.path.isfile(spec.origin):
        return "file", Path(spec.origin).resolve()
    return "no-file", None


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _find_git_dir(root: Path) -> tuple[Path, Path] | None:
    """(git dir, common dir) of the checkout containing `root`, found without running git
    (.git folder, or a .git file of a worktree/submodule), for the cache key only."""
    for parent in (root, *root.parents):
        dot = parent / ".git"
        if dot.is_dir():
            gitdir = dot
        elif dot.is_file():
            try:
                text = dot.read_text(errors="replace").strip()
            except OSError:
                return None
            if not text.startswith("gitdir:"):
                return None
            gitdir = (parent / text[len("gitdir:"):].strip()).resolve()
        else:
            continue
        common = gitdir
        try:
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        except OSError:
            pass
        return gitdir, common
    return None


def _git_state_key(root: Path) -> tuple:
    """Changes whenever a commit, checkout, reset or staging could change the git fields while
    the source files themselves keep their size and mtime."""
    dirs = _find_git_dir(root)
    env = os.environ.get("GIT_DIR"), os.environ.get("GIT_WORK_TREE")
    if dirs is None:
        return (None, env)
    gitdir, common = dirs
    head = gitdir / "HEAD"
    key = [str(gitdir), env, _stat_key(head), _stat_key(gitdir / "index"),
           _stat_key(common / "packed-refs")]
    try:
        text = head.read_text().strip()
    except OSError:
        text = ""
    key.append(text)
    if text.startswith("ref:"):
        ref = text[4:].strip()
        key.append(_stat_key(gitdir / ref) or _stat_key(common / ref))
    return tuple(key)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              timeout=GIT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _git_fields(root: Path) -> dict:
    """git_commit / git_dirty / git_diff_sha256; all None outside a git checkout that tracks the
    project's source (e.g. a tarball unpacked inside some unrelated repository) or when git fails."""
    none = {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head is None or head.returncode != 0:
        return none
    commit = head.stdout.decode(errors="replace").strip() or None
    if commit is None:
        return none
    tracked = _git(root, "ls-tree", "--name-only", "HEAD", "--", *SOURCE_DIRS)
    if tracked is None or tracked.returncode != 0 or not tracked.stdout.strip():
        return none
    # Options pinned so that the diff's hash depends on the change, not on the user's git config.
    diff = _git(root, "diff", "HEAD", "--no-color", "--no-ext-diff", "--no-textconv", "--binary",
                "--full-index", "--no-renames", "--src-prefix=a/", "--dst-prefix=b/",
                "--", *SOURCE_DIRS)
    if diff is None or diff.returncode != 0:
        return dict(none, git_commit=commit)
    dirty = bool(diff.stdout)
    return {"git_commit": commit, "git_dirty": dirty,
            "git_diff_sha256": hashlib.sha256(diff.stdout).hexdigest() if dirty else None}


def source_fingerprint(extra_modules: Iterable[str] = (), root: Path | None = None) -> dict:
    """The code a trial runs.

    Returns {"source_sha256", "files", "extra_modules", "missing_modules", "git_commit",
    "git_dirty", "git_diff_sha256"}. `source_sha256` covers the sorted relative paths and contents
    of every *.py under harness/, baselines/ and kernels/, kernels/**/*.cu and
    harness/core/data/datasets.toml (read from disk, __pycache__ skipped), plus the source files of
    `extra_modules` (dotted names, e.g. a method defined outside those folders) that lie outside
    them; a module that cannot be found is hashed by name and listed in `missing_modules`.
    `git_dirty` is about tracked changes under those folders against HEAD; `git_diff_sha256`
    hashes that diff. The result is cached per (root, modules, (path, size, mtime) of every file,
    git state); an edit that keeps a file's size and mtime is not seen (as with make).
    """
    root = Path(root).resolve() if root is not None else PROJECT_ROOT
    modules = tuple(sorted(set(extra_modules)))
    files = _source_files(root)
    stats = tuple((rel, key) for rel, _, key in files)
    extras: list[tuple[str, str, Path | None]] = []  # (module, kind, path)
    if modules:
        hashed = {rel for rel, _, _ in files}
    for name in modules:
        where = _module_file(name)
        if where is None:
            extras.append((name, "missing", None))
        elif where[1] is not None and _relative(where[1], root) in hashed:
            continue  # already hashed as part of the source folders
        else:
            extras.append((name, *where))
    extra_stats = tuple((name, kind, str(path), _stat_key(path) if path else None)
                        for name, kind, path in extras)
    key = (str(root), modules, stats, extra_stats, _git_state_key(root))
    cached = _FP_CACHE.get(key)
    if cached is not None:
        return copy.deepcopy(cached)

    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    for rel, path, _ in files:
        try:
            with open(path, "rb") as f:
                add(rel, f.read())
        except OSError:  # vanished between the walk and the read
            add(rel + " (unreadable)", b"")
    for name, kind, module_path in extras:
        if kind == "file" and module_path is not None:  # a "file" always has a path
            try:
                data = module_path.read_bytes()
            except OSError:
                kind, data = "missing", b""
        else:
            data = b""
        add(f"<module {name}: {kind}>", data)
    result = {
        "source_sha256": h.hexdigest(),
        "files": len(files),
        "extra_modules": list(modules),
        "missing_modules": [name for name, kind, _ in extras if kind == "missing"],
        **_git_fields(root),
    }
    if len(_FP_CACHE) >= _FP_CACHE_MAX:
        _FP_CACHE.pop(next(iter(_FP_CACHE)))
    _FP_CACHE[key] = result
    return copy.deepcopy(result)


def short_code(fp: dict | None) -> str:
    """'1a2b3c4d5e6f @ 0123456789+dirty' (source hash @ commit) for messages."""
    fp = fp or {}
    sha = fp.get("source_sha256")
    text = sha[:12] if sha else "not recorded"
    if fp.get("git_commit"):
        text += f" @ {fp['git_commit'][:10]}"
        if fp.get("git_dirty"):
            text += "+dirty"
    return text


# ---------------------------------------------------------------------------------- environment

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except Exception:  # PackageNotFoundError, broken metadata
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _import_torch():
    try:
        import torch
    except Exception:
        return None
    return torch


def _static_environment() -> dict:
    global _ENV_STATIC
    if _ENV_STATIC is not None:
        return _ENV_STATIC
    torch = _import_torch()
    cuda_available = False
    capability = cudnn = None
    if torch is not None:
        try:
            cuda_available = bool(torch.cuda.is_available())
        except Exception:
            cuda_available = False
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except Exception:
            capability = None
        if cuda_available:
            try:
                cudnn = torch.backends.cudnn.version()
            except Exception:
                cudnn = None
    _ENV_STATIC = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": getattr(torch, "__version__", None) if torch is not None else None,
        "cuda": getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None,
        "cuda_available": cuda_available,
        "cudnn": cudnn,
        "triton": _version("triton") or _version("pytorch-triton"),
        "cpu_model": _cpu_model(),
        "cpu_capability": capability,
        "packages": {name: _version(name) for name in PACKAGES},
    }
    return _ENV_STATIC


def _device_fields(device: str | None, cuda_available: bool, cpu_model: str | None) -> dict:
    """device (as given; default 'cuda' when CUDA is available, else 'cpu'), device_name (the
    GPU's name for a CUDA device, the CPU model for 'cpu', the argument itself when it is not a
    torch device string) and gpu_capability. Asking about a CUDA device initialises CUDA."""
    if device in _DEVICE_CACHE:
        return _DEVICE_CACHE[device]
    torch = _import_torch()
    given = device if device is not None else ("cuda" if cuda_available else "cpu")
    fields = {"device": given, "device_name": None, "gpu_capability": None}
    try:
        dev = torch.device(given) if torch is not None else None
    except Exception:
        dev = None
        fields["device_name"] = given  # e.g. 'NVIDIA H100 80GB HBM3' passed as the device
    if dev is not None and dev.type == "cpu":
        fields["device_name"] = cpu_model
    elif dev is not None and dev.type == "cuda" and cuda_available:
        try:
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            fields["device_name"] = torch.cuda.get_device_name(index)
            major, minor = torch.cuda.get_device_capability(index)
            fields["gpu_capability"] = f"{major}.{minor}"
        except Exception:
            pass
    if dev is None or dev.type != "cuda" or dev.index is not None:  # 'cuda' follows current_device
        _DEVICE_CACHE[device] = fields
    return fields


def environment(device: str | None = None) -> dict:
    """What a trial runs on: python, platform, torch, cuda (torch.version.cuda), cuda_available,
    cudnn (when CUDA is available), triton, device, device_name, gpu_capability, cpu_model,
    cpu_capability (torch's CPU kernels' instruction set, e.g. 'AVX512'), aten_cpu_capability
    (the ATEN_CPU_CAPABILITY variable, which caps it), torch_threads, float32_matmul_precision,
    deterministic_algorithms and packages ({distribution: version or None}). Imports torch."""
    env = copy.deepcopy(_static_environment())
    env.update(_device_fields(device, env["cuda_available"], env["cpu_model"]))
    torch = _import_torch()
    env["aten_cpu_capability"] = os.environ.get("ATEN_CPU_CAPABILITY")
    env["torch_threads"] = env["float32_matmul_precision"] = env["deterministic_algorithms"] = None
    if torch is not None:
        for key, get in (("torch_threads", torch.get_num_threads),
                         ("float32_matmul_precision", torch.get_float32_matmul_precision),
                         ("deterministic_algorithms", torch.are_deterministic_algorithms_enabled)):
            try:
                env[key] = get()
            except Exception:
                pass
    return env


# ---------------------------------------------------------------------------------- differences

_MISSING = object()

# (label, key) of environment fields that can change a trial's numbers, in report order.
_ENV_FIELDS = (
    ("python", "python"),
    ("torch", "torch"),
    ("cuda", "cuda"),
    ("cudnn", "cudnn"),
    ("triton", "triton"),
    ("device", "device"),
    ("gpu", "device_name"),
    ("gpu capability", "gpu_capability"),
    ("cpu model", "cpu_model"),
    ("cpu capability", "cpu_capability"),
    ("torch threads", "torch_threads"),
    ("float32 matmul precision", "float32_matmul_precision"),
    ("deterministic algorithms", "deterministic_algorithms"),
)


def _show(value) -> str:
    if value is _MISSING:
        return "not recorded"
    if value is None:
        return "none"
    return str(value)


def _code_text(fp) -> str:
    if not isinstance(fp, dict) or not fp.get("source_sha256"):
        return "not recorded"
    sha = fp["source_sha256"][:12]
    commit = fp.get("git_commit")
    if not commit:
        return f"source {sha} (no git)" if "git_commit" in fp else f"source {sha}"
    return f"source {sha} (commit {commit[:10]}{', dirty' if fp.get('git_dirty') else ''})"


def _device_type(value):
    if isinstance(value, str) and value.split(":", 1)[0] in ("cpu", "cuda", "mps", "xpu"):
        return value.split(":", 1)[0]
    return value


def differences(recorded: dict, current: dict) -> list[str]:
    """One short line per difference that can change numbers between two
    {"code": source_fingerprint(...), "environment": environment(...)} records, e.g.
    'code: source 1a2b3c4d5e6f (commit 0123456789, dirty) -> 9f8e7d6c5b4a (commit abcdef0123)'
    or 'cpu capability: AVX512 -> AVX2'. A key missing on one side reads 'not recorded'; a field
    missing on both sides is no difference. Empty when nothing that matters differs."""
    recorded = recorded if isinstance(recorded, dict) else {}
    current = current if isinstance(current, dict) else {}
    lines = []

    old_code, new_code = recorded.get("code"), current.get("code")
    old_code = old_code if isinstance(old_code, dict) else {}
    new_code = new_code if isinstance(new_code, dict) else {}
    old_sha, new_sha = old_code.get("source_sha256"), new_code.get("source_sha256")
    if old_sha or new_sha:
        changed = old_sha != new_sha
    else:  # no source hash on either side: fall back on the commits
        changed = old_code.get("git_commit") != new_code.get("git_commit")
    if changed:
        old_text, new_text = _code_text(old_code), _code_text(new_code)
        if old_sha and new_sha:  # 'source A (...) -> B (...)'
            new_text = new_text.removeprefix("source ")
        lines.append(f"code: {old_text} -> {new_text}")

    old_env, new_env = recorded.get("environment"), current.get("environment")
    old_env = old_env if isinstance(old_env, dict) else {}
    new_env = new_env if isinstance(new_env, dict) else {}
    for label, key in _ENV_FIELDS:
        old, new = old_env.get(key, _MISSING), new_env.get(key, _MISSING)
        if key == "device":  # cuda:0 vs cuda:1 is the same kind of device (the gpu line has the model)
            if _device_type(old) == _device_type(new):
                continue
        if old != new:
            lines.append(f"{label}: {_show(old)} -> {_show(new)}")

    old_pkg, new_pkg = old_env.get("packages"), new_env.get("packages")
    old_pkg = old_pkg if isinstance(old_pkg, dict) else {}
    new_pkg = new_pkg if isinstance(new_pkg, dict) else {}
    for name in sorted(set(old_pkg) | set(new_pkg)):
        if name == "torch":  # the torch line above says it
            continue
        old, new = old_pkg.get(name, _MISSING), new_pkg.get(name, _MISSING)
        if old != new:
            lines.append(f"{name}: {_show(old)} -> {_show(new)}")
    return lines
