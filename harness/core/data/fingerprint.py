"""The data a trial reads, as a fingerprint that goes into its id (harness/run/identity.py).

A procedural scene is generated from its Gin parameters by versioned code: its fingerprint is the
generator's hash (kind, parameters, GENERATOR_VERSION). A scene on disk is every file under its
folder (hidden files left out): relative name, size and sha256, so replacing one image in place
gives new trial ids. File hashes are cached by (path, size, mtime, inode) in
`$XDG_CACHE_HOME/nerf-harness/file-hashes.json` (or `$HARNESS_HASH_CACHE`), so a sweep over a
10,000-image scene hashes it once, and later sweeps only stat the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "HARNESS_HASH_CACHE"
_memo: dict[str, str] = {}  # cache key -> sha256, this process
_loaded: set[Path] = set()


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nerf-harness" / "file-hashes.json"


def _load_cache(path: Path) -> None:
    if path in _loaded:
        return
    _loaded.add(path)
    try:
        _memo.update(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass  # absent or unreadable: start afresh (it is only a cache)


def _save_cache(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_memo, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home: hashing still works, only slower next time
        log.debug("cannot write the file-hash cache %s: %s", path, exc)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(root: Path) -> dict:
    """{'files', 'bytes', 'sha256'} of every non-hidden file under `root` (names relative to it)."""
    root = Path(root).resolve()
    cache = cache_path()
    _load_cache(cache)
    entries, total, new = [], 0, 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            st = path.stat()
            key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
            if key not in _memo:
                _memo[key] = _sha256(path)
                new += 1
            entries.append([path.relative_to(root).as_posix(), st.st_size, _memo[key]])
            total += st.st_size
    if new:
        _save_cache(cache)
    entries.sort()
    digest = hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()
    return {"files": len(entries), "bytes": total, "sha256": digest}


def scene_fingerprint(path: str, format: str) -> dict:
    """The fingerprint of the scene `load_scene.path`/`load_scene.format` name (parsed Gin config in
    force: procedural parameters are read from it)."""
    from harness.core.data.load_scene import loader_for, scene_root

    if getattr(loader_for(format), "takes_scene_name", False):
        from harness.core.data.procedural import provenance, scene_params

        prov = provenance(path, scene_params(path))
        return {"procedural": path, "version": prov["version"], "sha256": prov["hash"]}
    return folder_fingerprint(scene_root(path, format))
