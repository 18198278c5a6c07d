"""Shared fixtures: where the real data lives, and small helpers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MADREC_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets (../shared/data); never copied into the repo."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set MADREC_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture()
def tiny_prepared(tmp_path) -> Path:
    """A prepared dataset of three users over four items (madrec prepare-data, sequences kind)."""
    from madrec.data.prepare import prepare

    (tmp_path / "seq.txt").write_text("1 1 2 3 4\n2 2 3 4\n3 4 3 2 1\n")
    (tmp_path / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": i, "text": f"t{i}"}) + "\n" for i in range(1, 5))
    )
    prepare(
        "sequences", str(tmp_path / "seq.txt"), tmp_path / "ds", items=str(tmp_path / "items.jsonl"), min_item_count=1
    )
    return tmp_path / "ds"


# a record written by madrec.cli's log handler (LOG_FORMAT): time, level, logger
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) ")


@pytest.fixture()
def cli_stderr(capsys):
    """What CLI calls wrote to stderr since the last read, less log records (which verbs write
    depending on what the process imported before): the lines a user reads as the error."""

    def read() -> list[str]:
        err = capsys.readouterr().err
        # a handler bound to a stream that is closed by now: always a bug, so name every handler
        assert "--- Logging error ---" not in err, f"{_stream_handlers()}\n{err[:3000]}"
        return [line for line in err.splitlines() if line.strip() and not _LOG_RECORD.match(line)]

    return read


def _stream_handlers() -> list[str]:
    import logging

    names = ["", *logging.Logger.manager.loggerDict]
    loggers = [logging.getLogger(n) if n else logging.root for n in names]
    return [
        f"{lg.name}: {type(h).__name__} -> {getattr(h, 'stream', None)!r}"
        for lg in loggers
        for h in getattr(lg, "handlers", [])
        if getattr(h, "stream", None) is not None
    ]
