"""`make data`: make datasets available under data/ without network, or download them with
checksums (resumable, with a progress bar) where a user has network.

Offline (this team's machines): link the shared copies (`../shared/data/...`) into `data/`.
Online: `download(url, dest, sha256)` fetches with HTTP Range resume and verifies the checksum.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from harness.errors import DataError
from harness.paths import DATA_DIR, PROJECT_ROOT

log = logging.getLogger(__name__)

# Folder names under data/ and where the team's shared copy sits relative to the project root.
SHARED_DATASETS = {
    "nerf_synthetic/lego_200": "../shared/data/nerf_synthetic/lego_200",
    "nerf_synthetic/lego_400": "../shared/data/nerf_synthetic/lego_400",
    "nerf_synthetic/lego_800_test25": "../shared/data/nerf_synthetic/lego_800_test25",
    "nerf_llff/fern": "../shared/data/nerf_llff/fern",
    "lpips_weights": "../shared/data/lpips_weights",
}


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


def download(url: str, dest: Path, sha256: str, timeout: float = 60.0, chunk: int = 1 << 16) -> Path:
    """Fetch `url` to `dest`, resuming a partial `dest.part`, verifying `sha256` before the rename."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # already complete
            response = None
        else:
            raise DataError(f"{url}: download failed (HTTP {exc.code}); partial data kept in {part}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: download failed ({getattr(exc, 'reason', exc)}); "
                        f"put the file at {dest} by hand, or retry to resume {part}") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total or None, initial=have if resumed else 0, unit="B", unit_scale=True,
                    desc=dest.name, disable=None) as bar:
                while block := response.read(chunk):
                    f.write(block)
                    bar.update(len(block))
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise DataError(f"{url}: checksum mismatch (expected {sha256}, got {got}); the partial file was removed")
    os.replace(part, dest)
    return dest
