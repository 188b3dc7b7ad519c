"""The dataset manifest and its download path, end to end against a local HTTP server on 127.0.0.1:
download + safe atomic unzip, resume after an interrupted transfer, checksum mismatch, trust on
first use, zip-slip, mirrors, clear errors, the CLI, and the shipped manifest's contents."""

import hashlib
import http.server
import io
import json
import random
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.data.fetch import extract_zip, read_lock
from harness.core.data.manifest import (
    LOCK_NAME,
    MANIFEST_PATH,
    entry_state,
    get_entry,
    install,
    list_lines,
    load_manifest,
)
from harness.core.errors import DataError


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


# 'toyset/' mimics nerf_synthetic.zip: one top folder of scenes, plus macOS litter to be dropped.
BIG = random.Random(0).randbytes(512 * 1024)  # incompressible: the zip is > 512 KiB
TOY = make_zip({"toyset/sceneA/transforms.json": b'{"frames": []}', "toyset/sceneA/img.bin": BIG,
                "toyset/sceneB/poses.npy": b"\x93NUMPY", "__MACOSX/toyset/._sceneA": b"junk"})
TOY_SHA = hashlib.sha256(TOY).hexdigest()


class Server:
    """Files by path; `truncate[path] = n` makes the next response to it stop after n bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.types: dict[str, str] = {}
        self.truncate: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's name
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Type", server.types.get(self.path, "application/zip"))
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.truncate.pop(self.path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def write_manifest(path: Path, urls: list[str], sha256: str | None = None, **extra) -> Path:
    lines = ["[toy]", 'title = "toy scenes"', 'file = "toy.zip"', 'kind = "zip"',
             f"urls = {json.dumps(urls)}", 'page = "https://example.org/toy"', 'source = "made by the test"',
             'licence = "CC-0"', 'layout = { toyset = "toy" }', 'provides = ["toy/sceneA", "toy/sceneB"]']
    if sha256:
        lines.append(f'sha256 = "{sha256}"')
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_entry(tmp_path, urls, sha256=None):
    return get_entry(load_manifest(write_manifest(tmp_path / "m.toml", urls, sha256)), "toy")


def leftovers(data: Path) -> list[str]:
    """Staging folders, partial downloads or archives that must not outlive a failure."""
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.name.endswith((".extracting", ".part", ".zip")))


def test_download_and_extract(server, tmp_path):
    server.files["/toy.zip"] = TOY
    data = tmp_path / "data"
    entry = toy_entry(tmp_path, [f"{server.url}/toy.zip"], TOY_SHA)
    assert entry_state(entry, data)[0] == "missing"
    said = []
    outcome = install(entry, data, say=said.append)
    assert outcome == {"toy/sceneA": "installed", "toy/sceneB": "installed"}
    assert (data / "toy/sceneA/img.bin").read_bytes() == BIG
    assert (data / "toy/sceneB/poses.npy").read_bytes() == b"\x93NUMPY"
    assert not (data / "__MACOSX").exists() and not (data / "toy/._sceneA").exists()
    assert leftovers(data) == []  # archive removed after unpacking, no staging folder
    assert "matches the manifest's sha256" in said[0]
    assert entry_state(entry, data)[0] == "present"
    # installed: a second call does nothing, not even a request
    n = len(server.requests)
    assert install(entry, data, say=said.append) == {} and len(server.requests) == n


def test_resume_after_interrupted_transfer(server, tmp_path):
    server.files["/toy.zip"] = TOY
    server.truncate["/toy.zip"] = 200_000
    data = tmp_path / "data"
    entry = toy_entry(tmp_path, [f"{server.url}/toy.zip"], TOY_SHA)
    with pytest.raises(DataError, match="interrupted after 200000 of"):
        install(entry, data, say=lambda _: None)
    part = data / "downloads/toy.zip.part"
    assert part.stat().st_size == 200_000 and not (data / "toy").exists()
    assert "resumes it" in entry_state(entry, data)[1]
    install(entry, data, keep_archive=True, say=lambda _: None)
    assert server.requests[-1] == ("/toy.zip", "bytes=200000-")  # resumed, not restarted
    assert (data / "downloads/toy.zip").read_bytes() == TOY and not part.exists()
    assert (data / "toy/sceneA/img.bin").read_bytes() == BIG


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    server.files["/toy.zip"] = TOY
    data = tmp_path / "data"
    entry = toy_entry(tmp_path, [f"{server.url}/toy.zip"], "ab" * 32)
    with pytest.raises(DataError, match=rf"checksum mismatch \(expected sha256 {'ab' * 32}, got {TOY_SHA}\)"):
        install(entry, data, say=lambda _: None)
    assert not (data / "toy").exists() and leftovers(data) == []
    assert not (data / LOCK_NAME).exists()


def test_trust_on_first_use_is_recorded_then_enforced(server, tmp_path):
    server.files["/toy.zip"] = TOY
    data = tmp_path / "data"
    entry = toy_entry(tmp_path, [f"{server.url}/toy.zip"])  # no sha256 in the manifest
    said = []
    install(entry, data, say=said.append)
    assert "TRUST ON FIRST USE" in said[0] and TOY_SHA in said[0]
    record = read_lock(data / LOCK_NAME)["toy.zip"]
    assert record["sha256"] == TOY_SHA and record["entry"] == "toy" and record["url"].endswith("/toy.zip")
    assert not list(data.glob(f".{LOCK_NAME}.*"))  # the atomic write left no temp file
    # upstream now serves different bytes: refused against the recorded sha256, nothing unpacked
    for scene in ("sceneA", "sceneB"):
        for f in (data / "toy" / scene).iterdir():
            f.unlink()
        (data / "toy" / scene).rmdir()
    server.files["/toy.zip"] = make_zip({"toyset/sceneA/evil.bin": b"changed"})
    with pytest.raises(DataError, match="recorded on first use"):
        install(entry, data, say=lambda _: None)
    assert not (data / "toy/sceneA").exists() and leftovers(data) == []
    assert read_lock(data / LOCK_NAME)["toy.zip"]["sha256"] == TOY_SHA  # the record is not replaced
    # the original bytes are accepted again, verified against the record
    server.files["/toy.zip"] = TOY
    said.clear()
    install(entry, data, say=said.append)
    assert "recorded on first use" in said[0] and (data / "toy/sceneA/img.bin").exists()


def test_sha256_prefix_is_checked(server, tmp_path):
    server.files["/w-12345678.pth"] = b"weights"
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '[w]\ntitle = "w"\nfile = "w-12345678.pth"\nkind = "file"\n'
        f'urls = ["{server.url}/w-12345678.pth"]\npage = "p"\nsource = "s"\nlicence = "l"\n'
        'sha256_prefix = "12345678"\ntarget = "weights"\nprovides = ["weights/w-12345678.pth"]\n')
    entry = load_manifest(manifest)["w"]
    data = tmp_path / "data"
    with pytest.raises(DataError, match="expected a sha256 starting with 12345678"):
        install(entry, data, say=lambda _: None)
    assert not list((data / "weights").iterdir()) and not (data / LOCK_NAME).exists()
    good = hashlib.sha256(b"weights").hexdigest()
    manifest.write_text(manifest.read_text().replace("12345678", good[:8]))
    entry = load_manifest(manifest)["w"]
    server.files[f"/w-{good[:8]}.pth"] = b"weights"
    said = []
    assert install(entry, data, say=said.append) == {f"weights/w-{good[:8]}.pth": "installed"}
    assert "first 8 digits match" in said[0] and read_lock(data / LOCK_NAME)[entry.file]["sha256"] == good


@pytest.mark.parametrize("members,symlinks", [
    ({"toyset/ok.txt": b"x", "toyset/../../evil.txt": b"x"}, None),
    ({"toyset/ok.txt": b"x", "{tmp}/evil_abs.txt": b"x"}, None),  # an absolute path (inside tmp_path)
    ({"toyset/ok.txt": b"x", "toyset\\..\\..\\evil.txt": b"x"}, None),
    ({"toyset/ok.txt": b"x"}, {"toyset/link": "../../../etc/passwd"}),
])
def test_zip_slip_refused(tmp_path, members, symlinks):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({k.replace("{tmp}", str(tmp_path)): v for k, v in members.items()}, symlinks))
    data = tmp_path / "inner" / "data"
    with pytest.raises(DataError, match="refusing to extract"):
        extract_zip(archive, {"toyset": "toy"}, data)
    # every member is checked before anything is written: not even the data folder exists
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip"]


def test_existing_folders_are_kept_and_corrupt_archives_leave_nothing(tmp_path):
    data = tmp_path / "data"
    (data / "toy/sceneA").mkdir(parents=True)
    archive = tmp_path / "toy.zip"
    archive.write_bytes(TOY)
    outcome = extract_zip(archive, {"toyset": "toy"}, data)
    assert outcome["toy/sceneA"].startswith("kept") and outcome["toy/sceneB"] == "installed"
    assert not any((data / "toy/sceneA").iterdir())  # not overwritten
    with pytest.raises(DataError, match="no folder 'nerf_synthetic' in the archive"):
        extract_zip(archive, {"nerf_synthetic": "x"}, data)
    broken = bytearray(TOY)
    at = TOY.index(b"toyset/sceneA/img.bin") + 200  # inside that member's compressed data
    broken[at:at + 64] = bytes(64)
    archive.write_bytes(bytes(broken))
    with pytest.raises(DataError, match="corrupt archive"):
        extract_zip(archive, {"toyset": "other"}, data)
    assert not (data / "other").exists() and not any(data.glob("*.extracting"))


def test_mirror_first_and_every_failure_named(server, tmp_path):
    server.files["/mirror/toy.zip"] = TOY
    server.files["/page.zip"] = b"<html>quota exceeded</html>"
    server.types["/page.zip"] = "text/html; charset=utf-8"
    data = tmp_path / "data"
    dead = "http://127.0.0.1:9/toy.zip"  # discard port: connection refused
    entry = toy_entry(tmp_path, [dead, f"{server.url}/page.zip", f"{server.url}/gone.zip"], TOY_SHA)
    with pytest.raises(DataError) as err:
        install(entry, data, timeout=5, say=lambda _: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{dead}: cannot connect" in msg
    assert f"{server.url}/page.zip: the server sent a web page" in msg
    assert f"{server.url}/gone.zip: HTTP 404" in msg
    assert f"place it at {data / 'downloads/toy.zip'}" in msg and "https://example.org/toy" in msg
    assert not (data / "downloads/toy.zip.part").exists()  # the web page was not appended to the file
    install(entry, data, mirror=f"{server.url}/mirror/toy.zip", timeout=5, say=lambda _: None)
    assert server.requests[-1][0] == "/mirror/toy.zip" and (data / "toy/sceneB").is_dir()


def test_file_placed_by_hand_is_used_without_network(tmp_path):
    data = tmp_path / "data"
    (data / "downloads").mkdir(parents=True)
    (data / "downloads/toy.zip").write_bytes(TOY)
    entry = toy_entry(tmp_path, ["http://127.0.0.1:9/toy.zip"], TOY_SHA)
    assert entry_state(entry, data)[0] == "downloaded"
    assert install(entry, data, timeout=2, say=lambda _: None)["toy/sceneA"] == "installed"


def test_manifest_errors_name_the_field(tmp_path):
    path = write_manifest(tmp_path / "m.toml", ["https://example.org/toy.zip"])
    text = path.read_text()
    for bad, match in [(text.replace('licence = "CC-0"\n', ""), "entry 'toy': missing required field 'licence'"),
                       (text.replace("https://example.org", "ftp://example.org"), "not an http"),
                       (text + 'sha256 = "123"\n', "'sha256' must be 64"),
                       (text + 'checksum = "x"\n', "unknown field"),
                       (text.replace('"toy/sceneA"', '"../escape"'), "not a relative path under data/"),
                       (text.replace('kind = "zip"', 'kind = "tar"'), "'kind' must be"),
                       ("[toy\n", "cannot read the dataset manifest")]:
        path.write_text(bad)
        with pytest.raises(DataError, match=match):
            load_manifest(path)
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: toy"):
        get_entry(load_manifest(write_manifest(path, ["https://example.org/toy.zip"])), "nope")


def test_shipped_manifest():
    from harness.core.metrics.lpips_model import BACKBONE_FILES, PROJECT_WEIGHTS_DIR

    manifest = load_manifest(MANIFEST_PATH)
    assert {"nerf_synthetic", "nerf_llff_data", "lpips_alex", "lpips_vgg"} <= set(manifest)
    for entry in manifest.values():
        assert entry.urls and all(u.startswith(("https://", "http://")) for u in entry.urls)
        assert entry.licence and entry.source and entry.page.startswith("https://")
        assert entry.sha256 is None or len(entry.sha256) == 64
    assert manifest["nerf_synthetic"].file == "nerf_synthetic.zip"
    assert manifest["nerf_llff_data"].file == "nerf_llff_data.zip"
    assert manifest["nerf_llff_data"].layout == {"nerf_llff_data": "nerf_llff"}  # where fern.gin looks
    # LPIPS weights land where harness.core.metrics.lpips_model looks, under the name it expects;
    # torchvision names embed the first 8 hex digits of the sha256.
    for name, net in (("lpips_alex", "alex"), ("lpips_vgg", "vgg")):
        entry = manifest[name]
        hub_name, local_name = BACKBONE_FILES[net]
        assert entry.file == hub_name and entry.target == PROJECT_WEIGHTS_DIR.name
        assert entry.urls[0] == f"https://download.pytorch.org/models/{hub_name}"
        assert entry.sha256_prefix == hub_name.rsplit("-", 1)[1].removesuffix(".pth")
        assert entry.equivalent == (f"lpips_weights/{local_name}",)


def test_torchvision_file_loads_in_lpips(tmp_path, monkeypatch):
    """The downloaded torchvision file (full-model state dict) needs no conversion: lpips_model reads `features.*`."""
    import torch
    import torchvision

    from harness.core.metrics.lpips_model import BACKBONE_FILES, check_lpips_weights, get_lpips_model

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no_hub"))
    monkeypatch.delenv("HARNESS_LPIPS_WEIGHTS", raising=False)
    weights = tmp_path / "lpips_weights"
    weights.mkdir()
    torch.manual_seed(0)
    with torch.device("meta"):  # torchvision's key names and shapes, without initialising 61M parameters
        layout = torchvision.models.alexnet(weights=None).state_dict()
    # The full model's keys, as download.pytorch.org has them; real values for `features.*`, and small
    # stand-ins for the classifier (which LPIPS never reads) to keep the file small.
    state = {k: torch.randn(v.shape) if k.startswith("features.") else torch.zeros(1) for k, v in layout.items()}
    assert any(k.startswith("classifier.") for k in state)
    torch.save(state, weights / BACKBONE_FILES["alex"][0])
    assert check_lpips_weights("alex", weights) == weights / BACKBONE_FILES["alex"][0]
    model, info = get_lpips_model("alex", weights)
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    assert info["backbone_file"] == "alexnet-owt-7be5be79.pth"


def test_cli_list_download_and_errors(server, tmp_path, capsys):
    server.files["/toy.zip"] = TOY
    manifest = write_manifest(tmp_path / "m.toml", [f"{server.url}/toy.zip"])
    data = tmp_path / "data"
    common = ["data", "--manifest", str(manifest), "--data-dir", str(data)]
    assert main(common + ["--list"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "missing" in out and "trust on first use" in out and "licence: CC-0" in out
    assert main(common + ["--download", "toy"]) == 0
    out = capsys.readouterr().out
    assert "TRUST ON FIRST USE" in out and "data/toy/sceneA: installed" in out
    assert main(common + ["--list"]) == 0
    assert "present" in capsys.readouterr().out
    assert main(common + ["--download", "nope"]) == 2
    assert "error: unknown dataset 'nope'; known: toy" in capsys.readouterr().err
    assert main(common + ["--download", "toy", "toy", "--mirror", server.url]) == 2
    assert "--mirror" in capsys.readouterr().err


def test_list_states(tmp_path):
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", ["https://example.org/toy.zip"]))
    data = tmp_path / "data"
    elsewhere = tmp_path / "shared_scene"
    elsewhere.mkdir()
    (data / "toy").mkdir(parents=True)
    (data / "toy/sceneA").symlink_to(elsewhere, target_is_directory=True)
    assert entry_state(manifest["toy"], data)[0] == "partial"
    (data / "toy/sceneB").mkdir()
    assert entry_state(manifest["toy"], data)[0] == "linked"
    (data / "toy/sceneA").unlink()
    (data / "toy/sceneA").mkdir()
    assert entry_state(manifest["toy"], data)[0] == "present"
    lines = list_lines(manifest, data, project_root=tmp_path / "project")
    assert any("toy" in line and "present" in line for line in lines)
    assert any("data/nerf_llff/fern" in line and "no shared copy here" in line for line in lines)
