"""`make data`: make datasets available under data/ without network, or download them with
checksums (resumable, with a progress bar) where a user has network.

Offline (this team's machines): `link_shared` links the shared copies (`../shared/data/...`) into `data/`.
Online: `fetch`/`download` get one file with HTTP Range resume and a sha256 check before the file
takes its final name; `extract_zip` unpacks an archive safely (no member may land outside the
target folder) and atomically (into a staging folder, then renamed into place); `record_trusted`
keeps the trust-on-first-use lock file. Which files to get, and where they go, is the manifest's
business: `harness/core/data/manifest.py` and `harness/core/data/datasets.toml`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from harness.core.errors import DataError
from harness.core.paths import DATA_DIR, PROJECT_ROOT

log = logging.getLogger(__name__)

# Folder names under data/ and where the team's shared copy sits relative to the project root.
SHARED_DATASETS = {
    "nerf_synthetic/lego_200": "../shared/data/nerf_synthetic/lego_200",
    "nerf_synthetic/lego_400": "../shared/data/nerf_synthetic/lego_400",
    "nerf_synthetic/lego_800_test25": "../shared/data/nerf_synthetic/lego_800_test25",
    "nerf_llff/fern": "../shared/data/nerf_llff/fern",
    "lpips_weights": "../shared/data/lpips_weights",
}

USER_AGENT = "nerf-harness-data/1 (python urllib)"


class DownloadError(DataError):
    """One URL could not deliver the file; `reason` is the short cause (for a multi-URL summary)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


class ChecksumError(DownloadError):
    """The bytes arrived but are not the expected file; `got` is their sha256."""

    def __init__(self, url: str, reason: str, got: str):
        super().__init__(url, reason)
        self.got = got


def link_shared(data_dir: Path = DATA_DIR, project_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Symlink every shared dataset that exists into data/; returns {name: outcome}."""
    outcome = {}
    for name, rel in SHARED_DATASETS.items():
        src = (project_root / rel).resolve()
        dest = data_dir / name
        if dest.exists():
            outcome[name] = "present"
        elif not src.exists():
            outcome[name] = f"not found at {src}"
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():  # a dangling link from an older checkout
                dest.unlink()
            os.symlink(src, dest, target_is_directory=True)
            outcome[name] = f"linked to {src}"
    return outcome


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _expectation(sha256: str | None, prefix: str | None) -> str:
    if sha256:
        return f"sha256 {sha256}"
    return f"a sha256 starting with {prefix}"


def _matches(got: str, sha256: str | None, prefix: str | None) -> bool:
    return (not sha256 or got == sha256.lower()) and (not prefix or got.startswith(prefix.lower()))


def fetch(url: str, dest: Path, sha256: str | None = None, sha256_prefix: str | None = None,
          timeout: float = 60.0, chunk: int = 1 << 16, connect_timeout: float | None = None) -> str:
    """Fetch `url` to `dest` and return the file's sha256.

    Bytes go to `dest.part` first; an existing `.part` is resumed with `Range: bytes=N-` (a server
    that ignores the range answers 200 and the file restarts from zero). The digest is computed
    while writing; only a file matching `sha256` (and/or `sha256_prefix`) is renamed to `dest`,
    a mismatching one is deleted. With neither given any content is accepted (trust on first use:
    the caller records the returned digest). A `dest` that already matches is not fetched again.
    An interrupted transfer keeps `.part` for the next call to resume.

    `connect_timeout` (default `timeout`) bounds connecting and waiting for the response headers;
    `timeout` then bounds each read of the body. Name resolution is not bounded here (sockets have
    no timeout for it).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.is_file():
        got = sha256_file(dest)
        if _matches(got, sha256, sha256_prefix):
            return got
        log.warning("%s does not match %s; fetching it again", dest, _expectation(sha256, sha256_prefix))
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    have = 0
    if part.exists():
        have = part.stat().st_size
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout if connect_timeout is None else connect_timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            response = None
        else:
            kept = f"; partial data kept in {part}" if have else ""
            raise DownloadError(url, f"HTTP {exc.code} {exc.reason}{kept}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(url, f"cannot connect ({getattr(exc, 'reason', None) or exc})") from None
    if response is not None:
        if connect_timeout is not None:
            _set_read_timeout(response, timeout)
        with response:
            ctype = response.headers.get("Content-Type", "")
            if ctype.startswith("text/html") and not dest.name.endswith((".html", ".htm")):
                raise DownloadError(url, "the server sent a web page instead of the file (a login, quota or "
                                         "confirmation page?)")
            resumed = response.status == 206
            if resumed:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start is not None and start != have:  # (a server omitting Content-Range is taken at its word)
                    raise DownloadError(url, f"asked to resume at byte {have}, the server sent a range starting "
                                             f"at {start}; delete {part} and retry")
            else:
                have, digest = 0, hashlib.sha256()
            length = int(response.headers.get("Content-Length") or 0)
            received = 0
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=(length + have) or None, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, disable=None) as bar:
                try:
                    while block := response.read(chunk):
                        f.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(url, f"transfer interrupted after {have + received} bytes "
                                             f"({exc.__class__.__name__}); re-run to resume {part}") from None
            if length and received < length:
                raise DownloadError(url, f"transfer interrupted after {have + received} of {have + length} bytes; "
                                         f"re-run to resume {part}")
    got = digest.hexdigest()
    if not _matches(got, sha256, sha256_prefix):
        part.unlink()
        raise ChecksumError(url, f"checksum mismatch (expected {_expectation(sha256, sha256_prefix)}, got {got}); "
                                 "the downloaded file was removed", got)
    os.replace(part, dest)
    return got


def _set_read_timeout(response, timeout: float) -> None:
    """Give the open response's socket `timeout` for the body (urllib has one timeout for everything).

    http.client keeps the socket as `response.fp.raw._sock` (a SocketIO's socket); without it the
    connect timeout simply stays in force for the reads.
    """
    sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(timeout)


def _range_start(content_range: str) -> int | None:
    """`bytes 100-999/1000` -> 100; None when absent or malformed."""
    try:
        unit, spec = content_range.split(" ", 1)
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def download(url: str, dest: Path, sha256: str, timeout: float = 60.0, chunk: int = 1 << 16) -> Path:
    """Fetch `url` to `dest`, resuming a partial `dest.part`, verifying `sha256` before the rename."""
    try:
        fetch(url, dest, sha256, timeout=timeout, chunk=chunk)
    except ChecksumError:
        raise
    except DownloadError as exc:
        raise DataError(f"{exc}; put the file at {dest} by hand, or retry") from None
    return Path(dest)


# --------------------------------------------------------------------------- zip archives

def _member_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or a DataError when it could land outside the target folder."""
    name = info.filename.replace("\\", "/")
    rel = PurePosixPath(name)
    mode = info.external_attr >> 16
    if rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
        why = "would be written outside the target folder"
    elif stat.S_ISLNK(mode):
        why = "is a symbolic link"
    else:
        return rel
    raise DataError(f"{archive}: member {info.filename!r} {why}; refusing to extract the archive (nothing was written)")


def extract_zip(archive: Path, layout: dict[str, str], data_dir: Path, label: str = "") -> dict[str, str]:
    """Unpack `archive` into `data_dir`, moving each folder `prefix/<child>` to `data_dir/<target>/<child>`.

    `layout` maps a folder inside the archive ("" for its root) to a folder under `data_dir`. Every
    member is checked before anything is written (absolute paths, `..`, drive letters and symlinks
    are refused). Members are extracted into a staging folder in `data_dir` with a progress bar; a
    failure removes it, so nothing is left half-extracted. Each child then takes its place with one
    rename; a child already present is kept, never overwritten. Members outside every prefix (such
    as `__MACOSX/`) are dropped. Returns {'<target>/<child>': 'installed' | 'kept ...'}.
    """
    from tqdm.auto import tqdm

    archive, data_dir = Path(archive), Path(data_dir)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: not a readable zip archive ({exc})") from None
    outcome: dict[str, str] = {}
    with zf:
        members = [(info, _member_path(archive, info)) for info in zf.infolist()]
        tops = sorted({rel.parts[0] for _, rel in members if rel.parts})
        for prefix in layout:
            if prefix and prefix not in tops:
                raise DataError(f"{archive}: no folder {prefix!r} in the archive (its top level: {', '.join(tops)}); "
                                "wrong file?")
        data_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{label or archive.stem}.", suffix=".extracting", dir=data_dir))
        try:
            total = sum(info.file_size for info, _ in members)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"unzip {archive.name}",
                      disable=None) as bar:
                for info, rel in members:
                    out = stage.joinpath(*rel.parts)
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)
                            bar.update(len(block))
            for prefix, target in layout.items():
                src_dir = stage / prefix if prefix else stage
                for child in sorted(src_dir.iterdir()):
                    if not prefix and child.name in layout:
                        continue
                    key = f"{target}/{child.name}"
                    dest = data_dir / target / child.name
                    if dest.exists() or dest.is_symlink():
                        how = f"linked to {dest.resolve()}" if dest.is_symlink() else "present"
                        outcome[key] = f"kept ({how}; remove it to install the downloaded copy)"
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _move_into_place(child, dest)
                    outcome[key] = "installed"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise DataError(f"{archive}: corrupt archive ({exc}); nothing was extracted") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return outcome


def _move_into_place(src: Path, dest: Path) -> None:
    """rename(2); across filesystems (data/<target> linked elsewhere), copy beside `dest`, then rename."""
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp) if src.is_dir() else shutil.copy2(src, tmp)
        os.rename(tmp, dest)


# --------------------------------------------------------------------------- trust on first use

def read_lock(path: Path) -> dict[str, dict]:
    """{file name: {'sha256', 'entry', 'url', 'recorded_utc'}} from the lock file ({} when absent)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"{path}: unreadable lock file ({exc}); fix it, or delete it to trust the next downloads "
                        "anew") from None
    return files


def record_trusted(path: Path, file: str, sha256: str, entry: str, url: str) -> None:
    """Add `file`'s sha256 to the lock file with an atomic write (temp file in the same folder, then rename)."""
    path = Path(path)
    files = read_lock(path)
    files[file] = {"sha256": sha256, "entry": entry, "url": url,
                   "recorded_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "files": files}, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
