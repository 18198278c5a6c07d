"""The CLI's log handler follows `sys.stderr` instead of binding to the stream of the first call.

Run in a fresh interpreter: pytest's own root handlers would otherwise hide what a first
`configure_logging()` binds to.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import io, logging, sys
    from madrec.cli import configure_logging

    real = sys.stderr
    first = io.StringIO()
    sys.stderr = first                      # e.g. one test's capture stream
    logging.basicConfig(stream=first)       # a library configures logging on it first
    configure_logging()
    logging.getLogger("madrec.test").info("one")
    first.close()                           # that test ends, its stream is closed
    second = io.StringIO()
    sys.stderr = second                     # the next test's stream
    configure_logging()
    logging.getLogger("madrec.test").info("two")
    sys.stderr = real
    print(repr(second.getvalue()))
    print(len(logging.getLogger().handlers))
    """
)


def test_log_lines_follow_the_current_stderr_and_a_closed_stream_is_never_written():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    second, handlers = done.stdout.strip().splitlines()
    assert "INFO madrec.test: two" in second
    assert second.count("two") == 1  # not also through the library's handler
    assert "Logging error" not in done.stderr + second
    assert "closed file" not in done.stderr + second
    assert handlers == "1"  # a second configure_logging() adds no second handler
