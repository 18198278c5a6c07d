"""`madrec serve`: a KServe model server around `madrec.evaluate.recommend.Recommender`.

    madrec serve --ckpt runs/tiny/checkpoints/best.ckpt --port 8080
    curl -s localhost:8080/v1/models/madrec:predict \\
         -d '{"instances": [{"history": ["B0001", "B0002"]}], "k": 5}'

Built on the KServe Python SDK (`kserve.Model` / `kserve.ModelServer`): the V1 `:predict`
and Open Inference Protocol (V2) REST endpoints, liveness/readiness, model metadata and the
Prometheus `/metrics` endpoint all come from the library; this module only parses requests,
batches them and decodes with the same `Recommender` (constrained beam search) as evaluation.

V1 request: `{"instances": [INSTANCE, ...], "k": 10, "exclude_history": false,
"next_items": 1, "skip_unknown": false}` where an INSTANCE is a list of ORIGINAL item ids
(oldest first) or an object `{"history": [...], "k": ..., "exclude_history": ...,
"next_items": ..., "skip_unknown": ...}` whose fields override the request-level defaults.
V1 response: `{"predictions": [{"items": [...], "scores": [...]}, ...]}`, best first; scores
are summed log-probabilities of the item's SID; with `next_items=n > 1` each entry of `items`
is a list of the next n item ids, decoded jointly.

V2 request: one BYTES input `history` of shape [B, L] (or [L] for one history), padded with
empty strings; `k`, `exclude_history`, `next_items`, `skip_unknown` as request parameters.
V2 response: outputs `items` (BYTES [B, k], or [B, k, n]) and `scores` (FP32 [B, k]); a row
with fewer than k results (exclude_history) is padded with "" and NaN (null in JSON).

Dynamic batching: requests arriving within `--max-batch-wait-ms` of the first waiting one are
decoded together, up to `--max-batch-size` histories, in one decoding thread per worker, so a
busy server decodes more histories per model call. `--no-batching` decodes each request alone.

A history longer than the model's window (max_len) is read from its most recent items; the
response says how many older ones were left out: `dropped_history_items` in the V1 prediction,
an INT64 [B] output of that name in V2 (both only when a history was cut).

Every problem with a request is a 400 whose message names it (malformed JSON, unknown item ids
without skip_unknown, k beyond the beam, empty history, more histories than --max-batch-size,
bad field types or names), quotes at most a short prefix of any bad value, and is logged as one
line; the server keeps serving. Health: `/v2/health/live`, `/v2/health/ready` and `/` answer 503
when no model can answer. The model-repository endpoints (V2 load / unload) answer 403 unless
the server was started with --enable-model-repository.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from madrec.dist import DEVICE_CHOICES
from madrec.errors import MadrecError, clip, quoted

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "madrec"
FIELDS = ("history", "k", "exclude_history", "next_items", "skip_unknown")
OPTIONS = FIELDS[1:]


def _import_kserve():
    """kserve.model_server parses sys.argv when imported: hide madrec's own arguments from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        from kserve.model_server import ModelServer  # noqa: F401 - the import that parses argv
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MadrecError("`madrec serve` needs the KServe SDK: pip install 'madrec[serve]'") from exc
    finally:
        sys.argv = saved
    return kserve


kserve = _import_kserve()
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from kserve import model_server as _kserve_app  # noqa: E402
from kserve.errors import (  # noqa: E402
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from prometheus_client import Histogram  # noqa: E402

BATCH_HISTORIES = Histogram(
    "madrec_batch_histories",
    "histories decoded together in one model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_SECONDS = Histogram("madrec_queue_seconds", "time a request waited for its batch to start decoding")
DECODE_SECONDS = Histogram("madrec_decode_seconds", "wall time of one batched decoding call")


@dataclass
class Query:
    """One history to decode, validated, with its options."""

    history: list[str]
    k: int
    exclude_history: bool
    next_items: int
    dropped: int = 0  # oldest history items beyond the model's window (not read)


@dataclass
class _Pending:
    queries: list[Query]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or the one in a folder (KServe's storage initializer puts the model
    artifact in /mnt/models): best.ckpt, else the folder's only file."""
    if "://" in path or not Path(path).is_dir():
        return path
    folder = Path(path)
    if (folder / "best.ckpt").is_file():
        return str(folder / "best.ckpt")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    ckpts = [p for p in files if p.suffix == ".ckpt"] or files
    if len(ckpts) != 1:
        raise MadrecError(
            f"{path}: a folder given as --ckpt must hold best.ckpt or exactly one file, "
            f"found {len(ckpts)}: {', '.join(p.name for p in ckpts[:5])}"
        )
    return str(ckpts[0])


class RecommenderModel(kserve.Model):
    """The KServe model: parses V1/V2 requests, batches them, decodes with `Recommender`."""

    def __init__(
        self,
        name: str,
        ckpt: str,
        *,
        device: str | None = None,
        beam_size: int = 10,
        max_batch_size: int = 64,
        max_batch_wait_ms: float = 5.0,
        batching: bool = True,
        threads: int | None = None,
    ):
        super().__init__(name)
        if beam_size < 1 or max_batch_size < 1 or max_batch_wait_ms < 0:
            raise MadrecError(
                f"--beam-size and --max-batch-size must be >= 1 and --max-batch-wait-ms >= 0 "
                f"(got {beam_size}, {max_batch_size}, {max_batch_wait_ms})"
            )
        self.ckpt, self.device, self.threads = ckpt, device, threads
        self.beam_size, self.max_batch_size = beam_size, max_batch_size
        self.max_batch_wait = max_batch_wait_ms / 1000.0
        self.batching = batching
        self.rec = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def load(self) -> bool:
        from madrec.evaluate.recommend import Recommender

        path = resolve_checkpoint(self.ckpt)
        self.rec = Recommender.from_checkpoint(path, device=self.device)
        log.info(
            "loaded %s: %d items, SID length %d, max_len %d, device %s",
            path,
            len(self.rec.item_ids),
            self.rec.vocab.sid_len,
            self.rec.max_len,
            self.rec.device,
        )
        self.ready = True
        return self.ready

    def can_answer(self) -> bool:
        """Loaded, and its decoding loop (once started) still running: what health checks report."""
        return bool(self.ready) and self.rec is not None and not (self._worker is not None and self._worker.done())

    def __getstate__(self):
        # `--workers N` sends the model to N spawned processes: each starts its own batcher.
        state = self.__dict__.copy()
        state.update(_queue=None, _worker=None, _executor=None)
        return state

    def _start_batcher(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="madrec-decode")
        self._worker = asyncio.get_running_loop().create_task(self._batch_loop())

    # --- V2 metadata -------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": "history", "datatype": "BYTES", "shape": [-1, -1]}]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "items", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "dropped_history_items", "datatype": "INT64", "shape": [-1]},  # only when a history was cut
        ]

    # --- request handling --------------------------------------------------------------------
    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            queries = self._parse_v2(payload)
            return self._v2_response(payload, queries, await self._decode(queries))
        queries = self._parse_v1(payload)
        results = await self._decode(queries)
        predictions = []
        for q, r in zip(queries, results):
            entry = {"items": [list(i) if isinstance(i, tuple) else i for i, _ in r], "scores": [s for _, s in r]}
            if q.dropped:  # the history was longer than the model's window: say what was not read
                entry["dropped_history_items"] = q.dropped
            predictions.append(entry)
        return {"predictions": predictions}

    def _parse_v1(self, payload) -> list[Query]:
        if isinstance(payload, (bytes, bytearray, str)):  # a body whose content-type is not JSON
            import orjson

            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON in the request body: {exc}") from None
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput(
                'expected a JSON object {"instances": [history, ...], "k": ...}, got '
                + (
                    f"an object with keys {quoted(sorted(payload))}"
                    if isinstance(payload, dict)
                    else type(payload).__name__
                )
            )
        extra = sorted(set(payload) - {"instances", *OPTIONS, "parameters"})
        if extra:
            raise InvalidInput(
                f"unknown request field(s) {quoted(extra)}; allowed: instances, parameters, {', '.join(OPTIONS)}"
            )
        defaults = _options(payload.get("parameters"), '"parameters"')
        defaults.update({key: payload[key] for key in OPTIONS if key in payload})
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise InvalidInput(f'"instances" must be a list of histories, got {type(instances).__name__}')
        self._check_count(len(instances))
        queries = []
        for i, inst in enumerate(instances):
            if isinstance(inst, dict):
                extra = sorted(set(inst) - set(FIELDS))
                if extra:
                    raise InvalidInput(f"instance {i}: unknown field(s) {quoted(extra)}; allowed: {', '.join(FIELDS)}")
                if "history" not in inst:
                    raise InvalidInput(f'instance {i}: no "history" (a list of item ids, oldest first)')
                opts = {**defaults, **{k: v for k, v in inst.items() if k != "history"}}
                history = inst["history"]
            else:
                opts, history = defaults, inst
            queries.append(self._query(i, history, opts))
        return queries

    def _parse_v2(self, request: InferRequest) -> list[Query]:
        params = _options(request.parameters, "request parameters")
        names = [inp.name for inp in request.inputs]
        if names != ["history"]:
            raise InvalidInput(f'expected exactly one input named "history" (BYTES [B, L]), got {quoted(names)}')
        inp = request.inputs[0]
        if inp.datatype not in ("BYTES", "INT64", "INT32"):
            raise InvalidInput(
                f'input "history" must be BYTES (item ids as strings) or INT64, got {quoted(inp.datatype)}'
            )
        if inp.datatype != "BYTES":
            _check_integers(inp.data)
        try:
            array = inp.as_numpy()
        except Exception as exc:  # noqa: BLE001 - shape/data mismatches surface as assorted numpy errors
            raise InvalidInput(
                f'input "history": data does not fit shape {quoted(inp.shape)}: {quoted(str(exc), 200)}'
            ) from None
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2:
            raise InvalidInput(f'input "history" must have shape [B, L] or [L], got {list(array.shape)}')
        self._check_count(array.shape[0])
        queries = []
        for i, row in enumerate(array.tolist()):
            row = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row]
            queries.append(self._query(i, [v for v in row if v != ""], params))
        return queries

    def _check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("no histories in the request: send at least one")
        if n > self.max_batch_size:
            raise InvalidInput(
                f"oversized batch: {n} histories in one request, this server takes at most "
                f"{self.max_batch_size} (--max-batch-size); split the request"
            )

    def _query(self, i: int, history, opts: dict) -> Query:
        k = opts.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int):
            raise InvalidInput(f"instance {i}: k must be an integer, got {quoted(k)}")
        if k < 1:
            raise InvalidInput(f"instance {i}: k must be >= 1, got {k}")
        if k > self.beam_size:
            raise InvalidInput(
                f"instance {i}: k={k} is beyond what the beam can give: the server decodes with "
                f"beam size {self.beam_size} (--beam-size), so k <= {self.beam_size}"
            )
        n = opts.get("next_items", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.rec.max_next_items:
            raise InvalidInput(
                f"instance {i}: next_items must be an integer from 1 to {self.rec.max_next_items} "
                f"(what this checkpoint decodes at once), got {quoted(n)}"
            )
        exclude, skip = opts.get("exclude_history", False), opts.get("skip_unknown", False)
        for name, value in (("exclude_history", exclude), ("skip_unknown", skip)):
            if not isinstance(value, bool):
                raise InvalidInput(f"instance {i}: {name} must be true or false, got {quoted(value)}")
        if not isinstance(history, list):
            raise InvalidInput(f"instance {i}: the history must be a list of item ids, got {type(history).__name__}")
        bad = [h for h in history if isinstance(h, bool) or not isinstance(h, (str, int))]
        if bad:
            raise InvalidInput(f"instance {i}: item ids must be strings or integers, got {quoted(bad[0])}")
        if not history:
            raise InvalidInput(f"instance {i}: empty history: send at least one item id the model knows")
        history = [str(h) for h in history]
        unknown = [h for h in history if h not in self.rec.index_of]
        if unknown:
            if not skip:
                shown = ", ".join(quoted(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise InvalidInput(
                    f"instance {i}: unknown item id(s): {len(unknown)} not in the model's catalogue "
                    f'of {len(self.rec.item_ids)} items: {shown}; send "skip_unknown": true to '
                    f"ignore them"
                )
            history = [h for h in history if h in self.rec.index_of]
            if not history:
                raise InvalidInput(
                    f"instance {i}: empty history: none of its {len(unknown)} item id(s) is in the model's catalogue"
                )
        return Query(history, k, exclude, n, dropped=max(0, len(history) - self.rec.window(n)))

    # --- batching ----------------------------------------------------------------------------
    async def _decode(self, queries: list[Query]) -> list[list]:
        if self._queue is None:
            self._start_batcher()
        pending = _Pending(queries, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry, batch, size = None, [first], len(first.queries)
            if self.batching:
                deadline = first.arrived + self.max_batch_wait
                while size < self.max_batch_size:
                    try:
                        nxt = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            break
                        try:
                            nxt = await asyncio.wait_for(self._queue.get(), wait)
                        except (asyncio.TimeoutError, TimeoutError):
                            break
                    if size + len(nxt.queries) > self.max_batch_size:
                        carry = nxt
                        break
                    batch.append(nxt)
                    size += len(nxt.queries)
            now = time.monotonic()
            for p in batch:
                QUEUE_SECONDS.observe(now - p.arrived)
            try:
                results = await loop.run_in_executor(self._executor, self._decode_batch, batch)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests (a 500: a server fault)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(r)

    def _decode_batch(self, batch: list[_Pending]) -> list[list[list]]:
        """Decode every query of the batch, grouped by next_items, one model call per group."""
        flat = [q for p in batch for q in p.queries]
        out: list[list | None] = [None] * len(flat)
        t0 = time.perf_counter()
        for n in sorted({q.next_items for q in flat}):
            idx = [j for j, q in enumerate(flat) if q.next_items == n]
            BATCH_HISTORIES.observe(len(idx))
            ranked = self.rec.recommend_many(
                [flat[j].history for j in idx],
                k=self.beam_size,
                beam_size=self.beam_size,
                skip_unknown=True,
                next_items=n,
                batch_size=len(idx),
            )
            for j, r in zip(idx, ranked):
                q = flat[j]
                if q.exclude_history:
                    seen = set(q.history)
                    r = [(i, s) for i, s in r if not (seen & ({i} if isinstance(i, str) else set(i)))]
                out[j] = r[: q.k]
        DECODE_SECONDS.observe(time.perf_counter() - t0)
        results, lo = [], 0
        for p in batch:
            results.append(out[lo : lo + len(p.queries)])
            lo += len(p.queries)
        return results

    # --- V2 response -------------------------------------------------------------------------
    def _v2_response(self, request: InferRequest, queries: list[Query], results: list[list]) -> InferResponse:
        import numpy as np

        width = max(q.k for q in queries)
        n = max(q.next_items for q in queries)
        items = np.full((len(results), width, n), "", dtype=object)
        scores = np.full((len(results), width), math.nan, dtype=np.float32)
        for b, r in enumerate(results):
            for j, (ids, s) in enumerate(r):
                ids = (ids,) if isinstance(ids, str) else ids
                items[b, j, : len(ids)] = ids
                scores[b, j] = s
        if n == 1:
            items = items[..., 0]
        out_items, out_scores = (
            InferOutput("items", list(items.shape), "BYTES"),
            InferOutput("scores", list(scores.shape), "FP32"),
        )
        out_items.set_data_from_numpy(items, binary_data=False)
        out_scores.set_data_from_numpy(scores, binary_data=False)
        outputs = [out_items, out_scores]
        dropped = np.array([q.dropped for q in queries], dtype=np.int64)
        if dropped.any():  # a history was longer than the model's window: say how much was not read
            outputs.append(InferOutput("dropped_history_items", [len(queries)], "INT64"))
            outputs[-1].set_data_from_numpy(dropped, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=request.id or str(uuid.uuid4()))


def _options(params, where: str) -> dict:
    """Request-level options (k, exclude_history, ...) from a JSON object; anything else is a 400."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(
            f"{where} must be an object with any of {', '.join(OPTIONS)}, got {type(params).__name__} {quoted(params)}"
        )
    extra = sorted(set(params) - set(OPTIONS))
    if extra:
        raise InvalidInput(f"unknown key(s) {quoted(extra)} in {where}; allowed: {', '.join(OPTIONS)}")
    return dict(params)


def _check_integers(data) -> None:
    """INT64 / INT32 item ids must be integers: numpy would turn 1.5 into item 1 without a word."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f'input "history" is INT64 / INT32, so its data must be integers, got {quoted(value)}')


class RepositoryDisabled(Exception):
    """A model-repository call (V2 load / unload) on a server started without it: a 403."""


class _ModelRepository(ModelRepositoryExtension):
    """KServe's model-repository extension (V2 load / unload), off unless --enable-model-repository:
    anyone who can reach the port could otherwise unload the model. When on, load brings an unloaded
    model back (KServe's own cannot: unload forgets it)."""

    def __init__(self, model_registry, enabled: bool):
        super().__init__(model_registry)
        self.enabled = enabled
        self.served: dict[str, kserve.Model] = {}

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise RepositoryDisabled(
                "model-repository endpoints (load / unload) are off: start `madrec serve` with "
                "--enable-model-repository to allow them (and keep the port private)"
            )

    async def load(self, model_name: str) -> None:
        self._check_enabled()
        model = self.served.get(model_name)
        if model is None:
            raise ModelNotFound(model_name)
        await asyncio.get_running_loop().run_in_executor(None, model.load)
        self._model_registry.update(model)

    async def unload(self, model_name: str) -> None:
        self._check_enabled()
        await super().unload(model_name)


async def _forbidden(_, exc: RepositoryDisabled) -> JSONResponse:
    return JSONResponse(status_code=403, content={"error": str(exc)})


async def _request_invalid(_, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422 echoes the whole offending input; this one quotes a bounded part of it."""
    where = [".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg", "")) for e in exc.errors()[:3]]
    return JSONResponse(status_code=422, content={"error": clip("; ".join(where))})


# kserve adds its own handlers on this app when the server starts; these two it has none for.
_kserve_app.app.add_exception_handler(RepositoryDisabled, _forbidden)
_kserve_app.app.add_exception_handler(RequestValidationError, _request_invalid)

# 4xx answers: the client's mistake, logged as one bounded line instead of a traceback each.
CLIENT_ERRORS = (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
    RepositoryDisabled,
)


class _OneLineClientErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_ERRORS):
            record.msg, record.args = "%s: %s", (type(exc).__name__, clip(str(exc)))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("kserve").addFilter(_OneLineClientErrors())


class _DataPlane(DataPlane):
    """kserve's data plane, naming a V1 body that is not JSON as such, with health checks that
    report whether the model can answer (kserve's say "ready" with no model loaded)."""

    def _can_answer(self) -> bool:
        models = list(self._model_registry.get_models().values())
        return bool(models) and all(getattr(m, "can_answer", lambda m=m: m.ready)() for m in models)

    async def ready(self) -> bool:
        return self._can_answer()

    async def live(self) -> dict[str, str]:
        if not self._can_answer():
            raise ServerNotLive("No model can answer: restart the server.")
        return {"status": "alive"}

    def decode(self, *args, **kwargs):
        try:
            return super().decode(*args, **kwargs)
        except InvalidInput as exc:
            prefix = "Unrecognized request format: "
            if str(exc).startswith(prefix):
                raise InvalidInput(f"malformed JSON in the request body: {str(exc)[len(prefix) :]}") from None
            raise


class _ModelServer(kserve.ModelServer):
    """kserve's ModelServer listens on 0.0.0.0; this one on --host (127.0.0.1 for a local run)."""

    def __init__(self, host: str, *, enable_model_repository: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.host = host
        self.dataplane.__class__ = _DataPlane
        self.model_repository_extension = _ModelRepository(self.registered_models, enable_model_repository)

    def start(self, models: list) -> None:
        self.model_repository_extension.served = {m.name: m for m in models}
        super().start(models)

    async def _serve(self):
        multi = getattr(self, "_rest_multiprocess_server", None)
        for rest in (getattr(self, "_rest_server", None), getattr(multi, "_rest_server", None)):
            if rest is not None:
                rest.config.host = self.host
        await super()._serve()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="madrec serve",
        description="Serve a madrec checkpoint with KServe "
        "(V1 /v1/models/NAME:predict, V2 /v2/models/NAME/infer, /metrics).",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint (local file or folder, http(s)://, gs://)")
    p.add_argument(
        "--host",
        default=os.environ.get("MADREC_SERVE_HOST", "0.0.0.0"),
        help="address to listen on (default 0.0.0.0, as in a pod; 127.0.0.1 for local only)",
    )
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080, KServe's)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="name in the URL paths (default madrec)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=64,
        help="most histories decoded together, and most histories in one request (default 64)",
    )
    p.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=5.0,
        help="how long the first waiting request waits for others to join its batch (default 5)",
    )
    p.add_argument("--no-batching", action="store_true", help="decode every request on its own")
    p.add_argument("--beam-size", type=int, default=10, help="beam width; requests may ask k <= this (default 10)")
    p.add_argument("--device", default=None, help=f"{DEVICE_CHOICES} (default auto: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    p.add_argument(
        "--enable-model-repository",
        action="store_true",
        help="allow POST /v2/repository/models/NAME/load and /unload (off: anyone reaching the port could "
        "unload the model)",
    )
    return p


def cli(argv: list[str]) -> int:
    """`madrec serve --ckpt PATH|gs://... [--host --port --workers --max-batch-size --max-batch-wait-ms]`."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise MadrecError(f"--workers must be >= 1, got {args.workers}")
    model = RecommenderModel(
        args.model_name,
        args.ckpt,
        device=args.device,
        beam_size=args.beam_size,
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        batching=not args.no_batching,
        threads=args.threads,
    )
    model.load()
    server = _ModelServer(
        args.host,
        enable_model_repository=args.enable_model_repository,
        http_port=args.port,
        workers=args.workers,
        enable_grpc=False,
    )
    server.start([model])
    return 0
