"""minigpt.download against a loopback HTTP server: success, bad checksums, broken connections,
resuming with Range requests, offline machines; and the Tiny Shakespeare corpus served locally."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from minigpt.corpora import REMOTE_FILES, load_corpus
from minigpt.download import ChecksumError, DownloadError, cache_dir, download

PAYLOAD = bytes(range(256)) * 1000  # 256 kB, several chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; `server.behaviour` makes it honour Range requests or misbehave."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        if requested and server.behaviour.get("ranges", True):
            start = int(requested.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = server.behaviour.get("die_after")  # send this many body bytes, then go away
        if cut is None:
            self.wfile.write(body[start:])
            return
        self.wfile.write(body[start : start + cut])
        self.wfile.flush()
        if server.behaviour.get("stall"):
            time.sleep(server.behaviour["stall"])
        if server.behaviour.get("reset"):
            # SO_LINGER with a zero timeout turns close() into a TCP reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True


@pytest.fixture
def serve():
    """serve({"/path": bytes}, **behaviour) -> (base URL, server); servers stop after the test."""
    servers = []

    def start(files, **behaviour):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.files, server.behaviour, server.requests = files, behaviour, []
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def temp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_download_success(serve, tmp_path):
    base, server = serve({"/data.bin": PAYLOAD})
    dest = tmp_path / "sub" / "data.bin"
    result = download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    assert server.requests == [{"path": "/data.bin", "range": None}]


def test_existing_file_is_verified_and_not_downloaded_again(serve, tmp_path):
    base, server = serve({"/data.bin": PAYLOAD})
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    assert download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, progress=False) == dest
    dest.write_bytes(b"something else")
    with pytest.raises(ChecksumError, match="delete it"):
        download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests == []


def test_checksum_mismatch_leaves_nothing(serve, tmp_path):
    base, _ = serve({"/data.bin": PAYLOAD})
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as excinfo:
        download(f"{base}/data.bin", dest, sha256=wrong, progress=False)
    message = str(excinfo.value)
    assert wrong in message and PAYLOAD_SHA in message and f"{base}/data.bin" in message
    assert not dest.exists()
    assert not dest.with_name("data.bin.part").exists()


def test_corrupt_partial_file_is_never_used(serve, tmp_path):
    """A .part whose bytes are not a prefix of the file: the resumed result fails the checksum,
    so the download starts over from zero and the final file is right."""
    base, server = serve({"/data.bin": PAYLOAD})
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(b"\xff" * 1000)
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=1000-", None]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_broken_connection_then_resume(serve, tmp_path, how):
    url_path = "/data.bin"
    base, _ = serve({url_path: PAYLOAD}, die_after=100_000, reset=how == "reset")
    dest = tmp_path / "data.bin"
    part = dest.with_name("data.bin.part")
    with pytest.raises(DownloadError) as excinfo:
        download(base + url_path, dest, sha256=PAYLOAD_SHA, progress=False)
    message = str(excinfo.value)
    assert base + url_path in message and "offline" in message and str(dest) in message
    assert not dest.exists()
    if how == "close":  # a reset may discard bytes in flight, a clean close may not
        assert part.stat().st_size == 100_000

    # A healthy server: the second attempt asks only for the missing bytes.
    base, server = serve({url_path: PAYLOAD})
    kept = part.stat().st_size
    download(base + url_path, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()
    expected_range = f"bytes={kept}-" if kept else None
    assert server.requests == [{"path": url_path, "range": expected_range}]


def test_restart_from_zero_when_server_ignores_range(serve, tmp_path):
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD[:5000])
    base, server = serve({"/data.bin": PAYLOAD}, ranges=False)
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD  # not PAYLOAD[:5000] + PAYLOAD
    assert server.requests[0]["range"] == "bytes=5000-"
    assert len(server.requests) == 1


def test_server_gone_midway(serve, tmp_path):
    base, server = serve({"/data.bin": PAYLOAD}, die_after=10_000)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download(f"{base}/data.bin", dest, progress=False)
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError, match="offline"):
        download(f"{base}/data.bin", dest, progress=False)
    assert not dest.exists()


def test_stalled_server_times_out(serve, tmp_path):
    base, _ = serve({"/data.bin": PAYLOAD}, die_after=1000, stall=1.5)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="timed out"):
        download(f"{base}/data.bin", dest, progress=False, timeout=0.3)
    assert not dest.exists()


def test_offline_connection_refused(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/input.txt"
    dest = tmp_path / "input.txt"
    with pytest.raises(DownloadError) as excinfo:
        download(url, dest, sha256=PAYLOAD_SHA, progress=False)
    message = str(excinfo.value)
    assert url in message
    assert "offline" in message
    assert str(dest) in message and PAYLOAD_SHA in message  # how to place the file by hand
    assert not dest.exists()


def test_http_error_is_reported(serve, tmp_path):
    base, _ = serve({})
    with pytest.raises(DownloadError, match="404"):
        download(f"{base}/missing.txt", tmp_path / "missing.txt", progress=False)
    assert not (tmp_path / "missing.txt").exists()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MINIGPT_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "minigpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "minigpt"


def test_tinyshakespeare_from_loopback(serve, monkeypatch, temp_cache):
    source = SHARED_DATA / "tinyshakespeare.txt"
    if not source.exists():
        pytest.skip(f"{source} not present")
    data = source.read_bytes()
    assert hashlib.sha256(data).hexdigest() == REMOTE_FILES["tinyshakespeare"]["sha256"]
    base, server = serve({"/input.txt": data})
    monkeypatch.setenv("MINIGPT_DATA_URL_TINYSHAKESPEARE", f"{base}/input.txt")

    corpus = load_corpus("tinyshakespeare", progress=False)
    cached = temp_cache / REMOTE_FILES["tinyshakespeare"]["filename"]
    assert cached.read_bytes() == data
    text = data.decode("utf-8")
    (train,), (val,) = corpus.train, corpus.val
    assert train + val == text
    assert len(train) == int(len(text) * 0.9)  # the usual character-level 90/10 split
    assert train.startswith("First Citizen:")

    load_corpus("tinyshakespeare", progress=False)  # cached: no second request
    assert len(server.requests) == 1


def test_tinyshakespeare_offline_message(monkeypatch, temp_cache):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MINIGPT_DATA_URL_TINYSHAKESPEARE", f"http://127.0.0.1:{port}/input.txt")
    with pytest.raises(DownloadError) as excinfo:
        load_corpus("tinyshakespeare", progress=False)
    assert str(temp_cache / "tinyshakespeare" / "input.txt") in str(excinfo.value)
