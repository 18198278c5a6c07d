"""Resuming from a URL runs no code from the server: the checkpoint is downloaded once, checked
with weights_only loading, and only that local copy reaches Lightning. The server here answers
the first GET with a real checkpoint and every later GET with a pickle that runs code."""

from __future__ import annotations

import http.server
import io
import os
import threading

import pytest
import torch

from madrec.config import load_config
from madrec.errors import MadrecError

from planted import TRAIN_ARGS, planted_dataset


class _RunsCode:
    """Unpickling this creates the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SwitchingSource(http.server.BaseHTTPRequestHandler):
    payloads: list[bytes] = []
    hits = 0

    def do_GET(self):  # noqa: N802
        cls = type(self)
        body = cls.payloads[min(cls.hits, len(cls.payloads) - 1)]
        cls.hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def switching_server():
    SwitchingSource.payloads, SwitchingSource.hits = [], 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SwitchingSource)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_resume_from_a_url_never_unpickles_a_second_download(switching_server, tmp_path, monkeypatch):
    from madrec.train.run import run

    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
    data, sids = planted_dataset(tmp_path / "planted")
    base = ["experiment=tiny", *TRAIN_ARGS, f"data_dir={data}", f"sid_data_path={sids}", "trainer.val_every_n_steps=10"]
    run(load_config([*base, f"output_dir={tmp_path / 'first'}", "trainer.max_steps=10"]))
    good = (tmp_path / "first" / "checkpoints" / "last.ckpt").read_bytes()
    marker = tmp_path / "code-ran"
    hostile = io.BytesIO()
    torch.save({**torch.load(io.BytesIO(good), weights_only=True), "payload": _RunsCode(str(marker))}, hostile)
    SwitchingSource.payloads = [good, hostile.getvalue()]

    resumed = [f"output_dir={tmp_path / 'resumed'}", "trainer.max_steps=20", f"ckpt_path={switching_server}/m.ckpt"]
    summary = run(load_config([*base, *resumed]))
    assert not marker.exists(), "a second download of the checkpoint was unpickled in full"
    assert SwitchingSource.hits == 1
    assert summary["global_step"] == 20


@pytest.mark.slow
def test_a_hostile_first_download_is_refused(switching_server, tmp_path, monkeypatch):
    from madrec.train.run import run

    monkeypatch.setenv("MADREC_CACHE", str(tmp_path / "cache"))
    data, sids = planted_dataset(tmp_path / "planted")
    marker = tmp_path / "code-ran"
    hostile = io.BytesIO()
    torch.save({"madrec": {}, "payload": _RunsCode(str(marker))}, hostile)
    SwitchingSource.payloads = [hostile.getvalue()]
    cfg = load_config(
        ["experiment=tiny", *TRAIN_ARGS, f"data_dir={data}", f"sid_data_path={sids}", f"output_dir={tmp_path / 'r'}"]
        + [f"ckpt_path={switching_server}/m.ckpt"]
    )
    with pytest.raises(MadrecError, match="not a readable madrec checkpoint"):
        run(cfg)
    assert not marker.exists()


def test_lightning_is_never_handed_a_url(tmp_path):
    from madrec.train.callbacks import AtomicCheckpointIO

    with pytest.raises(MadrecError, match="local checkpoint"):
        AtomicCheckpointIO().load_checkpoint("http://127.0.0.1:9/m.ckpt")
    marker = tmp_path / "code-ran"
    torch.save({"payload": _RunsCode(str(marker))}, tmp_path / "local.ckpt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "local.ckpt", weights_only=False)
    assert not marker.exists() and os.path.exists(tmp_path / "local.ckpt")
