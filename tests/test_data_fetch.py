"""`make data`: linking shared data, and the resumable, checksummed download against a local server."""

import hashlib
import http.server
import threading

import pytest

from harness.core.data.fetch import download, link_shared
from harness.core.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD, honouring 'Range: bytes=N-' as real dataset hosts do."""

    def do_GET(self):  # http.server's name
        start = 0
        if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_checksum(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    out = download(f"{server}/file", tmp_path / "data.bin", sha)
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(DataError, match="checksum mismatch"):
        download(f"{server}/file", tmp_path / "other.bin", "0" * 64)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()


def test_download_resumes_a_partial_file(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    part = tmp_path / "data.bin.part"
    part.write_bytes(PAYLOAD[:300_000])
    out = download(f"{server}/file", tmp_path / "data.bin", sha)
    assert out.read_bytes() == PAYLOAD and not part.exists()


def test_download_without_network_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "x.bin")):
        download("http://127.0.0.1:9/nothing", tmp_path / "x.bin", "0" * 64, timeout=2)


def test_link_shared(tmp_path):
    shared = tmp_path / "shared" / "data" / "nerf_llff" / "fern"
    shared.mkdir(parents=True)
    project = tmp_path / "project"
    project.mkdir()
    outcome = link_shared(project / "data", project)
    assert outcome["nerf_llff/fern"].startswith("linked")
    assert (project / "data" / "nerf_llff" / "fern").resolve() == shared.resolve()
    assert outcome["lpips_weights"].startswith("not found")
    assert link_shared(project / "data", project)["nerf_llff/fern"] == "present"
