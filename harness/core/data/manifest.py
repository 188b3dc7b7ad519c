"""The dataset manifest (`harness/core/data/datasets.toml`) and installing its entries under data/.

Each top-level table is one downloadable file:

- `title`, `source` (where the URLs come from), `licence`: text shown by `--list`.
- `file`: the file's name; `kind`: `"zip"` (unpacked) or `"file"` (used as is).
- `urls`: official source first, mirrors after; `page`: where a person can fetch it by hand.
- `sha256`: the full checksum, only where one is published or verified (never guessed);
  `sha256_prefix`: a partial one (torchvision embeds 8 hex digits in its file names).
- zip: `layout` = {folder in the archive: folder under data/}; each sub-folder is moved there.
  file: `target` = folder under data/ the file goes into.
- `provides`: paths under data/ present once installed; `equivalent`: paths that serve instead.

Without a full `sha256`, the first download is trusted: its sha256 is written to
`data/datasets.lock.json` (atomically) and printed, and every later download must match it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from harness.core.data.fetch import (
    SHARED_DATASETS,
    ChecksumError,
    DownloadError,
    extract_zip,
    fetch,
    read_lock,
    record_trusted,
)
from harness.core.errors import DataError
from harness.core.paths import DATA_DIR, PROJECT_ROOT

MANIFEST_PATH = Path(__file__).with_name("datasets.toml")
LOCK_NAME = "datasets.lock.json"
DOWNLOADS = "downloads"  # data/downloads/: archives (and their .part) before unpacking

_REQUIRED = ("title", "file", "kind", "urls", "page", "source", "licence", "provides")
_KNOWN = set(_REQUIRED) | {"sha256", "sha256_prefix", "layout", "target", "equivalent"}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    file: str
    kind: str
    urls: tuple[str, ...]
    page: str
    source: str
    licence: str
    provides: tuple[str, ...]
    sha256: str | None = None
    sha256_prefix: str | None = None
    layout: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    equivalent: tuple[str, ...] = ()

    def destination(self, data_dir: Path) -> Path:
        """Where the downloaded file is kept: the archive under data/downloads/, a plain file in its target."""
        if self.kind == "zip":
            return Path(data_dir) / DOWNLOADS / self.file
        return Path(data_dir) / self.target_folder() / self.file

    def target_folder(self) -> str:
        """A file entry's folder under data/ (`_entry` requires one of every file entry)."""
        if self.target is None:
            raise DataError(f"{self.name}: a file entry needs 'target' = folder under data/")
        return self.target


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, Entry]:
    """{name: Entry}, or a DataError naming the file, the entry and the field at fault."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path}: cannot read the dataset manifest ({exc})") from None
    if not raw:
        raise DataError(f"{path}: the dataset manifest has no entries")
    return {name: _entry(path, name, spec) for name, spec in raw.items()}


def _entry(path: Path, name: str, spec) -> Entry:
    def bad(msg: str) -> DataError:
        return DataError(f"{path}: entry {name!r}: {msg}")

    if not isinstance(spec, dict):
        raise bad("is not a table")
    for key in _REQUIRED:
        if key not in spec:
            raise bad(f"missing required field {key!r}")
    if unknown := sorted(set(spec) - _KNOWN):
        raise bad(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})")
    for key in ("title", "file", "kind", "page", "source", "licence"):
        if not isinstance(spec[key], str) or not spec[key].strip():
            raise bad(f"{key!r} must be a non-empty string")
    if "/" in spec["file"] or spec["file"].startswith("."):
        raise bad(f"'file' must be a plain file name, got {spec['file']!r}")
    urls = spec["urls"]
    if not isinstance(urls, list) or not urls:
        raise bad("'urls' must be a non-empty list")
    for url in urls:
        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise bad(f"not an http(s) URL: {url!r}")
    sha = spec.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or not _HEX.fullmatch(sha)):
        raise bad("'sha256' must be 64 lowercase hex digits (leave it out when unknown)")
    prefix = spec.get("sha256_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not 4 <= len(prefix) < 64 or not _HEX.fullmatch(prefix)):
        raise bad("'sha256_prefix' must be 4 to 63 lowercase hex digits")
    if sha and prefix and not sha.startswith(prefix):
        raise bad("'sha256' does not start with 'sha256_prefix'")
    kind = spec["kind"]
    if kind == "zip":
        layout = spec.get("layout")
        if not isinstance(layout, dict) or not layout or "target" in spec:
            raise bad("a zip entry needs 'layout' = {folder in the archive = folder under data/} and no 'target'")
        for src, dst in layout.items():
            _check_rel(bad, "layout", src, allow_empty=True)
            _check_rel(bad, "layout", dst)
    elif kind == "file":
        if "layout" in spec or not isinstance(spec.get("target"), str):
            raise bad("a file entry needs 'target' = folder under data/ and no 'layout'")
        _check_rel(bad, "target", spec["target"])
        layout = {}
    else:
        raise bad(f"'kind' must be 'zip' or 'file', got {kind!r}")
    paths = {}
    for key in ("provides", "equivalent"):
        value = spec.get(key, [])
        if not isinstance(value, list) or (key == "provides" and not value):
            raise bad(f"{key!r} must be a{' non-empty' if key == 'provides' else ''} list of paths under data/")
        for p in value:
            _check_rel(bad, key, p)
        paths[key] = tuple(value)
    return Entry(name=name, title=spec["title"], file=spec["file"], kind=kind, urls=tuple(urls), page=spec["page"],
                 source=spec["source"], licence=spec["licence"], provides=paths["provides"], sha256=sha,
                 sha256_prefix=prefix, layout=dict(layout), target=spec.get("target"),
                 equivalent=paths["equivalent"])


def _check_rel(bad, key: str, value, allow_empty: bool = False) -> None:
    ok = isinstance(value, str) and (value or allow_empty)
    if ok and value:
        parts = Path(value).parts
        ok = not Path(value).is_absolute() and ".." not in parts and not value.startswith(".")
    if not ok:
        raise bad(f"{key!r}: {value!r} is not a relative path under data/")


def get_entry(manifest: dict[str, Entry], name: str) -> Entry:
    if name not in manifest:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(manifest)}")
    return manifest[name]


# --------------------------------------------------------------------------- state (`--list`)

def _linked(path: Path, data_dir: Path) -> bool:
    """True when `path` or a folder between it and data_dir is a symlink."""
    p = path
    while p != data_dir and p != p.parent:
        if p.is_symlink():
            return True
        p = p.parent
    return False


def entry_state(entry: Entry, data_dir: Path = DATA_DIR) -> tuple[str, str]:
    """('present' | 'linked' | 'partial' | 'downloaded' | 'missing', a detail for humans)."""
    data_dir = Path(data_dir)
    for group in (entry.provides, entry.equivalent):
        if group and all((data_dir / p).exists() for p in group):
            linked = [p for p in group if _linked(data_dir / p, data_dir)]
            where = ", ".join(f"data/{p}" for p in group)
            return ("linked" if linked else "present"), where
    have = [p for p in entry.provides if (data_dir / p).exists()]
    if have:
        linked = [p for p in have if _linked(data_dir / p, data_dir)]
        note = f" ({len(linked)} linked)" if linked else ""
        return "partial", f"{len(have)}/{len(entry.provides)} present{note}: {', '.join(have)}"
    dest = entry.destination(data_dir)
    part = dest.with_name(dest.name + ".part")
    if entry.kind == "zip" and dest.exists():
        return "downloaded", f"{dest} (not unpacked yet)"
    if part.exists():
        return "missing", f"partial download {part} ({part.stat().st_size / 2**20:.1f} MiB; --download resumes it)"
    return "missing", "not under data/"


def checksum_note(entry: Entry, data_dir: Path = DATA_DIR) -> str:
    if entry.sha256:
        return f"sha256 {entry.sha256[:16]}... (manifest)"
    recorded = read_lock(Path(data_dir) / LOCK_NAME).get(entry.file)
    prefix = f"sha256 prefix {entry.sha256_prefix} (from the file name) + " if entry.sha256_prefix else ""
    if recorded:
        return f"{prefix}trust on first use: sha256 {recorded['sha256'][:16]}... recorded in data/{LOCK_NAME}"
    return f"{prefix}trust on first use (no published sha256; none recorded yet)"


def list_lines(manifest: dict[str, Entry], data_dir: Path = DATA_DIR,
               project_root: Path = PROJECT_ROOT) -> list[str]:
    """What `python -m harness data --list` prints."""
    data_dir = Path(data_dir)
    lines = ["downloadable (python -m harness data --download NAME):"]
    width = max(len(n) for n in manifest)
    for name, entry in manifest.items():
        state, detail = entry_state(entry, data_dir)
        lines.append(f"  {name:<{width}}  {state:<10}  {entry.title}")
        lines.append(f"  {'':<{width}}  {'':<10}  {detail}; {checksum_note(entry, data_dir)}")
        lines.append(f"  {'':<{width}}  {'':<10}  licence: {entry.licence}")
    lines.append("shared copies (python -m harness data):")
    width = max(len(n) for n in SHARED_DATASETS)
    for name, rel in SHARED_DATASETS.items():
        dest = data_dir / name
        if dest.exists():
            state = "linked" if _linked(dest, data_dir) else "present"
        else:
            state = "missing"
        src = (project_root / rel).resolve()
        detail = f"-> {dest.resolve()}" if state == "linked" else (
            f"shared copy at {src}" if src.exists() else "no shared copy here")
        lines.append(f"  data/{name:<{width}}  {state:<10}  {detail}")
    return lines


# --------------------------------------------------------------------------- install

def install(entry: Entry, data_dir: Path = DATA_DIR, mirror: str | None = None, keep_archive: bool = False,
            timeout: float = 60.0, say=print) -> dict[str, str]:
    """Download `entry` (from `mirror` first, when given, then the manifest's URLs), verify, unpack.

    Verification: the manifest's sha256 if it has one, else the sha256 recorded on first use in
    data/datasets.lock.json, else none (the digest is then recorded and printed); a sha256_prefix is
    checked in every case. A file already at its destination (e.g. placed by hand) is verified and
    used without network. Returns {path under data/: outcome}.
    """
    data_dir = Path(data_dir)
    lock_path = data_dir / LOCK_NAME
    dest = entry.destination(data_dir)
    state, detail = entry_state(entry, data_dir)
    if state in ("present", "linked"):
        say(f"{entry.name}: already {state} ({detail}); nothing to download (remove it to download again)")
        return {}
    if entry.kind == "file":
        _check_writable(entry, data_dir)
    recorded = read_lock(lock_path).get(entry.file)
    expected = entry.sha256 or (recorded or {}).get("sha256")
    urls = ([mirror] if mirror else []) + [u for u in entry.urls if u != mirror]
    by_hand = dest.is_file()  # placed by hand (or left by --keep-archive): verified, then used as is
    failures = []
    for url in urls:
        try:
            digest = fetch(url, dest, expected, entry.sha256_prefix, timeout=timeout)
            break
        except ChecksumError as exc:
            if recorded and not entry.sha256:
                failures.append(f"{url}: sha256 {exc.got} differs from {expected} recorded on first use in "
                                f"{lock_path} (if upstream really changed the file, delete its record there)")
            else:
                failures.append(str(exc))
        except DownloadError as exc:
            failures.append(str(exc))
    else:
        raise DataError(f"{entry.name}: no source delivered {entry.file} ({'; '.join(failures)}); fetch it by hand "
                        f"from {entry.page} and place it at {dest}, then re-run "
                        f"`python -m harness data --download {entry.name}`")
    if entry.sha256:
        say(f"{entry.name}: {entry.file} matches the manifest's sha256 {digest}")
    elif recorded:
        say(f"{entry.name}: {entry.file} matches the sha256 recorded on first use in {lock_path}: {digest}")
    else:
        record_trusted(lock_path, entry.file, digest, entry.name, f"placed by hand at {dest}" if by_hand else url)
        checked = f" (its first 8 digits match the file name's {entry.sha256_prefix})" if entry.sha256_prefix else ""
        say(f"{entry.name}: TRUST ON FIRST USE - no published sha256 for {entry.file}; this download's sha256 "
            f"{digest}{checked} is now recorded in {lock_path}, and later downloads must match it")
    if entry.kind == "file":
        return {str(dest.relative_to(data_dir)): "installed"}
    outcome = extract_zip(dest, entry.layout, data_dir, label=entry.name)
    if keep_archive:
        say(f"{entry.name}: archive kept at {dest}")
    else:
        dest.unlink()
    return outcome


def _check_writable(entry: Entry, data_dir: Path, project_root: Path = PROJECT_ROOT) -> None:
    """Never write into the team's shared copy through a data/ link, nor into a read-only folder."""
    folder = data_dir / entry.target_folder()
    if not folder.exists():
        return
    shared = {(project_root / rel).resolve() for rel in SHARED_DATASETS.values()}
    real = folder.resolve()
    if any(real == s or s in real.parents for s in shared) or not os.access(folder, os.W_OK):
        how = f"a link to {real}" if folder.is_symlink() else "a folder"
        raise DataError(f"{entry.name}: data/{entry.target} is {how}, the team's shared copy or not writable; "
                        f"remove the link (or make it a folder of your own) to download {entry.file} there")
