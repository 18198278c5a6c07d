"""`madrec` command line: one verb per pipeline step, each a thin layer over the library.

Verbs are imported lazily so `madrec --help` stays fast and a step's heavy dependencies
(tensorflow, transformers, kfp) load only when that step runs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys

from madrec.errors import MadrecError

# verb -> ("module:function", one-line help). The function takes argv (list[str]) and
# returns an exit code.
VERBS: dict[str, tuple[str, str]] = {
    "prepare-data": ("madrec.data.prepare:cli", "prepare ML-1M / sequences / interactions into TFRecord splits"),
    "build-sids": ("madrec.sids.cli:build_cli", "build semantic IDs from item text (encoder + residual k-means)"),
    "ingest-sids": ("madrec.sids.cli:ingest_cli", "validate and ingest a SID file made by GRID (local or gs://)"),
    "train": ("madrec.train.run:cli", "train the masked-diffusion model (key=value config overrides)"),
    "evaluate": ("madrec.evaluate.cli:cli", "evaluate a checkpoint: metrics.json, report.html"),
    "recommend": ("madrec.evaluate.recommend:cli", "recommend the next items for a history of item ids"),
    "serve": ("madrec.ops.serve:cli", "serve a checkpoint over HTTP with KServe (V1 and V2 protocols)"),
    "run-local": ("madrec.ops.local_run:cli", "run the whole Kubeflow pipeline locally (KFP local runner)"),
    "submit": ("madrec.ops.submit:cli", "upload and start the pipeline on a KFP endpoint"),
}


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not when the handler was made:
    a caller that swaps stderr (pytest's capture, a notebook) and later closes the old stream
    must not get "--- Logging error ---" from a handler still bound to it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging() -> None:
    """INFO logs with time and logger name on stderr, for every verb and pipeline step (once per process).

    The CLI owns the root logger's stream output: a plain StreamHandler that a library's
    `logging.basicConfig()` put there earlier is removed, since it would print every line twice,
    or write to the stream of the moment it was made (a capture closed since: "Logging error")."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(h)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: madrec VERB [options]   (madrec VERB --help for a verb's options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"madrec: unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    configure_logging()
    module_name, func_name = VERBS[verb][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        with _torch_threads():
            return int(func(rest) or 0)
    except MadrecError as exc:
        print(f"madrec {verb}: error: {exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _torch_threads():
    """Size torch's CPU thread pool for this step (madrec.threads) when the verb uses torch;
    restored afterwards, for callers that run several verbs in one process (tests)."""
    if "torch" not in sys.modules:  # prepare-data, submit, run-local: no torch in this process
        yield
        return
    import torch

    from madrec import threads

    before = torch.get_num_threads()
    threads.configure()
    try:
        yield
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    sys.exit(main())
