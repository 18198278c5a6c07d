"""Files in and out: fetching local / http(s) / gs:// sources, and atomic writes.

Every output of a step is written under a temporary sibling path and renamed into place,
so a failed or interrupted step never leaves a half-written file or folder behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from madrec.errors import MadrecError

log = logging.getLogger(__name__)


def _umask_mode(mode: int) -> int:
    """`mode` as the user's umask would have made it (mkdtemp/mkstemp use 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def default_cache_dir() -> Path:
    """Where downloads are cached: $MADREC_CACHE, else ~/.cache/madrec."""
    return Path(os.environ.get("MADREC_CACHE", Path.home() / ".cache" / "madrec"))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; on success replace `final` with it.

    On an exception the temporary folder is removed and `final` is left as it was. Writers
    finishing into the same `final` at once end with one complete folder there (the last to
    finish) or a MadrecError, and no temporaries; those of killed writers go on the next run
    (remove_stale_temporaries).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_writer()}-", dir=final.parent))
    tmp.chmod(_umask_mode(0o777))
    try:
        yield tmp
        _swap_in(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _swap_in(tmp: Path, final: Path, tries: int = 5) -> None:
    """Rename `tmp` to `final`, moving an existing `final` aside first (a folder cannot be
    renamed onto a non-empty one). Another writer may put its folder at `final` between the
    two renames; that one is moved aside in turn, a bounded number of times."""
    unique = tmp.name.rpartition(".tmp-")[2]  # host.pid-random: no other writer or thread has it
    for attempt in range(tries):
        old: Path | None = final.with_name(f".{final.name}.old-{unique}-{attempt}")
        try:
            os.replace(final, old)
        except FileNotFoundError:  # no previous output, or another writer just moved it aside
            old = None
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another writer's folder arrived in between
                if old is not None:
                    _remove(old)
                continue
            if old is not None:  # put the previous output back rather than lose it
                with contextlib.suppress(OSError):
                    os.replace(old, final)
                _remove(old)
            raise
        if old is not None:
            _remove(old)
        return
    raise MadrecError(
        f"{final}: other writers replaced this output at the same time, {tries} times in a row; "
        "run one writer per output folder (or run again)"
    )


def _writer() -> str:
    """Who writes a temporary, in its name: this host and process (so a later run can tell that
    the writer died). Called per write, not at import, so a forked child names itself."""
    return f"{_host()}.{os.getpid()}"


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_FOREIGN_AGE_S = 24 * 3600  # leftovers whose writer cannot be checked (another host, an older madrec)
# after `.NAME.tmp-` / `.NAME.old-`: this version's `HOST.PID-RANDOM[-N]`, or an older madrec's
# `RANDOM` (mkdtemp/mkstemp: 8 of [a-z0-9_]) / `PID` (.old); anything else is not ours and stays
_OURS = re.compile(r"(?:(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]+)-[A-Za-z0-9_]+(?:-[0-9]+)?|[a-z0-9_]{8}|[0-9]+)")


def remove_stale_temporaries(final: Path) -> int:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` siblings of `final` left by writers that died (killed
    mid-write); returns how many. Those of a live process on this host are kept; those whose
    writer cannot be checked (another host's, or named by an older madrec without the pid) only
    once they are a day old."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in final.parent.iterdir():
            for kind in ("tmp", "old"):
                prefix = f".{final.name}.{kind}-"
                if path.name.startswith(prefix) and _is_stale(path, path.name[len(prefix) :]):
                    _remove(path)
                    removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) / folder(s) of interrupted writers", final, removed)
    return removed


def _is_stale(path: Path, rest: str) -> bool:
    match = _OURS.fullmatch(rest)
    if match is None:
        return False
    if match["host"] == _host():
        return not _alive(int(match["pid"]))
    try:
        return time.time() - path.lstat().st_mtime > _FOREIGN_AGE_S
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():  # our own: another thread of this process may be writing
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to `final` for writing; rename it into place on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-{_writer()}-", dir=final.parent)
    os.chmod(tmp, _umask_mode(0o666))
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's file names and contents."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "gs://"))


# seconds a download may wait for the server at any one point (connect, or the next bytes),
# and how long the GCS client may keep retrying transient errors; tests shorten them
DOWNLOAD_TIMEOUT_S = 60.0
GCS_RETRY_DEADLINE_S = 120.0


def fetch(uri: str, cache_dir: str | os.PathLike | None = None, *, md5: str | None = None) -> Path:
    """Return a local path for `uri`: a local path as is, a URL downloaded once into the cache.

    Raises MadrecError naming the URI when it cannot be reached or does not exist. A download
    goes to a temporary file that is renamed into the cache only once it is complete (length
    as announced by the server, and `md5` when given): a failed or interrupted download
    leaves nothing in the cache, and the next call downloads again.
    """
    if not is_remote(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise MadrecError(f"{uri}: no such file or folder")
        return path
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "download"
    dest = cache / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if uri.startswith("gs://"):
                _download_gcs(uri, fh)
            else:
                _download_http(uri, fh)
        if md5 is not None and (got := _md5(tmp)) != md5:
            raise MadrecError(
                f"{uri}: the download's MD5 is {got}, the published checksum is {md5}; the file is damaged "
                "or not the expected release (nothing was cached; try again, or pass a local copy)"
            )
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_http(url: str, fh) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            expected = resp.headers.get("Content-Length")
            got = 0
            for block in iter(lambda: resp.read(1 << 20), b""):
                fh.write(block)
                got += len(block)
            if expected is not None and expected.isdigit() and got != int(expected):
                raise http.client.IncompleteRead(b"", int(expected) - got)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = (
            f"the connection closed after {fh.tell()} bytes, before the end of the file"
            if isinstance(exc, http.client.IncompleteRead)
            else exc
        )
        raise MadrecError(
            f"{url}: cannot download ({reason}); check the address and the network, "
            "or download the file yourself and pass its local path"
        ) from exc


def split_gs_uri(uri: str) -> tuple[str, str]:
    bucket, _, blob = uri[len("gs://") :].partition("/")
    if not bucket or not blob:
        raise MadrecError(f"{uri}: a gs:// URI needs a bucket and an object name (gs://BUCKET/PATH)")
    return bucket, blob


def _download_gcs(uri: str, fh) -> None:
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    bucket, blob = split_gs_uri(uri)
    try:
        client = storage.Client()
    except Exception as exc:  # google.auth raises several types for missing credentials
        raise MadrecError(
            f"{uri}: no Google Cloud credentials ({exc}); set GOOGLE_APPLICATION_CREDENTIALS "
            "or run `gcloud auth application-default login`"
        ) from exc
    from google.cloud.storage.retry import DEFAULT_RETRY

    try:
        client.bucket(bucket).blob(blob).download_to_file(
            fh, timeout=DOWNLOAD_TIMEOUT_S, retry=DEFAULT_RETRY.with_timeout(GCS_RETRY_DEADLINE_S)
        )
    except gexc.NotFound as exc:
        raise MadrecError(f"{uri}: object not found in bucket {bucket!r}") from exc
    except gexc.GoogleAPIError as exc:
        raise MadrecError(f"{uri}: download failed ({exc})") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # requests' connection errors are OSErrors
        raise MadrecError(
            f"{uri}: download failed ({type(exc).__name__}: {exc}); check the network and try again"
        ) from exc
