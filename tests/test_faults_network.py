"""Remote sources that fail mid-transfer (issue 13): an https-like server on loopback that
drops the connection, returns 500 or stalls, and a gs:// emulator behind a proxy that cuts
the download. Each time: a clear MadrecError, nothing in the cache, and a plain re-run
succeeds once the source is back. The known ML-1M archive is checked against its MD5."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import time
import zipfile

import pytest
import torch

from madrec import io as mio
from madrec.data import prepare as mprepare
from madrec.errors import MadrecError

PAYLOAD = bytes(range(256)) * 4000  # 1 MB


class Source(http.server.BaseHTTPRequestHandler):
    """GET /file: mode "ok", "drop" (half the body, then close), "500", "stall" (headers, then
    nothing), "nolength-drop" (no Content-Length, half the body)."""

    mode = "ok"
    body = PAYLOAD
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        mode = type(self).mode
        if mode == "500":
            self.send_error(500, "backend exploded")
            return
        self.send_response(200)
        if mode != "nolength-drop":
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if mode == "stall":
            time.sleep(5)
            return
        if mode in ("drop", "nolength-drop"):
            self.wfile.write(self.body[: len(self.body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Source.mode, Source.body, Source.hits = "ok", PAYLOAD, 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def cache_files(cache):
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


@pytest.mark.parametrize(
    "mode, message",
    [
        ("drop", r"connection closed after \d+ bytes, before the end of the file"),
        ("500", r"HTTP Error 500"),
        ("stall", r"timed out"),
    ],
)
def test_http_failure_is_clear_leaves_no_cache_and_rerun_succeeds(server, tmp_path, monkeypatch, mode, message):
    monkeypatch.setattr(mio, "DOWNLOAD_TIMEOUT_S", 1.0)
    cache = tmp_path / "cache"
    Source.mode = mode
    with pytest.raises(MadrecError, match=rf"{server}/file: cannot download \(.*{message}"):
        mio.fetch(f"{server}/file", cache)
    assert cache_files(cache) == []  # no partial file, no temporary file
    Source.mode = "ok"
    path = mio.fetch(f"{server}/file", cache)
    assert path.read_bytes() == PAYLOAD
    hits = Source.hits
    assert mio.fetch(f"{server}/file", cache) == path and Source.hits == hits  # cached, not fetched again


def test_truncation_without_a_length_is_caught_by_the_checksum(server, tmp_path):
    cache = tmp_path / "cache"
    Source.mode = "nolength-drop"
    good = hashlib.md5(PAYLOAD).hexdigest()
    with pytest.raises(MadrecError, match=rf"MD5 is [0-9a-f]{{32}}, the published checksum is {good}"):
        mio.fetch(f"{server}/file", cache, md5=good)
    assert cache_files(cache) == []
    Source.mode = "ok"
    assert mio.fetch(f"{server}/file", cache, md5=good).read_bytes() == PAYLOAD


def test_ml1m_archive_is_checked_against_the_published_md5(server, tmp_path, monkeypatch):
    assert mprepare.KNOWN_MD5[mprepare.ML1M_URL] == "c4d9eecfca2ab87c1945afe126590906"  # GroupLens ml-1m.zip.md5
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "ml-1m/ratings.dat", "".join(f"{u}::{m}::5::{978300000 + m}\n" for u in (1, 2) for m in range(1, 7))
        )
        zf.writestr("ml-1m/movies.dat", "".join(f"{m}::Movie {m} (2000)::Drama\n" for m in range(1, 7)))
    Source.body = buf.getvalue()
    url = f"{server}/ml-1m.zip"
    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(mprepare.KNOWN_MD5, url, "c4d9eecfca2ab87c1945afe126590906")  # not this fake's
    with pytest.raises(MadrecError, match="published checksum is c4d9eecfca2ab87c1945afe126590906"):
        mprepare.prepare("ml-1m", url, tmp_path / "out", min_item_count=1)
    assert cache_files(tmp_path / "cache") == [] and not (tmp_path / "out").exists()
    monkeypatch.setitem(mprepare.KNOWN_MD5, url, hashlib.md5(Source.body).hexdigest())
    assert mprepare.prepare("ml-1m", url, tmp_path / "out", min_item_count=1)["num_users"] == 2


class CuttingProxy:
    """TCP proxy to the emulator: in "cut" mode it forwards the response's first `cut` bytes
    and then closes both sides (a connection lost mid-download)."""

    def __init__(self, upstream_port: int, cut: int = 4000):
        self.upstream, self.cut, self.mode = upstream_port, cut, "cut"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        up = socket.create_connection(("127.0.0.1", self.upstream))
        limit = self.cut if self.mode == "cut" else None

        def pump(src, dst, budget):
            sent = 0
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if budget is not None and sent + len(data) >= budget:
                        dst.sendall(data[: budget - sent])
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(client, up, None), daemon=True).start()
        pump(up, client, limit)

    def close(self):
        self.sock.close()


@pytest.mark.slow
def test_gcs_download_cut_mid_transfer(tmp_path, monkeypatch):
    from gcp_storage_emulator.server import create_server
    from google.cloud import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    proxy = CuttingProxy(port)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        torch.save(torch.arange(200_000), tmp_path / "up.pt")
        storage.Client().create_bucket("b").blob("sids.pt").upload_from_filename(str(tmp_path / "up.pt"))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setattr(mio, "DOWNLOAD_TIMEOUT_S", 2.0)
        monkeypatch.setattr(mio, "GCS_RETRY_DEADLINE_S", 3.0)
        cache = tmp_path / "cache"
        start = time.time()
        with pytest.raises(MadrecError, match=r"gs://b/sids.pt: download failed"):
            mio.fetch("gs://b/sids.pt", cache)
        assert time.time() - start < 60  # bounded retries, not the client's default two minutes
        assert cache_files(cache) == []
        proxy.mode = "pass"
        path = mio.fetch("gs://b/sids.pt", cache)
        assert path.read_bytes() == (tmp_path / "up.pt").read_bytes()
    finally:
        proxy.close()
        server.stop()
