"""Property-based fuzzing of `madrec serve`'s request handling (V1 and V2) through the real
KServe app in process: thousands of generated bodies, each answered below 500 with a bounded
JSON error, nothing logged as an error or with a traceback, and a valid request still answered."""

from __future__ import annotations

import json
import logging

import pytest

from toy_lm import random_sids, write_checkpoint

pytest.importorskip("kserve")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

N = 30
IDS = [f"A{i:03d}" for i in range(N)]
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


class _Errors(logging.Handler):
    """Every record at ERROR or above, or carrying a traceback, that the server logs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient
    from kserve import model_server
    from kserve.protocol.rest.server import RESTServer

    from madrec.ops.serve import RecommenderModel, _ModelServer

    ckpt = tmp_path_factory.mktemp("fuzz") / "model.ckpt"
    write_checkpoint(ckpt, random_sids(3, 5, N, seed=3), IDS, max_len=15, codebook_size=5)
    model = RecommenderModel("madrec", str(ckpt), device="cpu", max_batch_size=8, max_batch_wait_ms=0, threads=1)
    model.load()
    server = _ModelServer("127.0.0.1", http_port=0, enable_grpc=False)
    server.register_model(model)
    server.model_repository_extension.served = {"madrec": model}
    rest = RESTServer(model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0)
    rest.create_application()
    errors = _Errors()
    for name in ("kserve", "madrec", "uvicorn", "fastapi"):
        logging.getLogger(name).addHandler(errors)
    with TestClient(model_server.app, raise_server_exceptions=False) as c:
        c.errors = errors
        yield c
    for name in ("kserve", "madrec", "uvicorn", "fastapi"):
        logging.getLogger(name).removeHandler(errors)


# JSON values of every kind, with item ids and option names mixed in so that some requests get far
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(IDS)
    | st.sampled_from(["history", "k", "next_items", "skip_unknown", "exclude_history", ""])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
histories = st.lists(st.sampled_from(IDS) | st.integers(0, N + 3) | json_values, max_size=20)
option_values = {
    "k": st.integers(-2, 14) | json_values,
    "next_items": st.integers(-1, 6) | json_values,
    "skip_unknown": st.booleans() | json_values,
    "exclude_history": st.booleans() | json_values,
}
options = st.fixed_dictionaries({}, optional=option_values)
instance = histories | st.fixed_dictionaries({"history": histories}, optional=option_values) | json_values
v1_bodies = (
    st.fixed_dictionaries(
        {"instances": st.lists(instance, max_size=10) | json_values},
        optional={**option_values, "parameters": options | json_values, "extra": json_values},
    )
    | json_values
)
v2_inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["history", "hist"]) | st.text(max_size=8),
        "datatype": st.sampled_from(["BYTES", "INT64", "INT32", "FP32", "BOOL"]) | st.text(max_size=6),
        "shape": st.lists(st.integers(-2, 12), max_size=3) | json_values,
        "data": st.lists(st.sampled_from(IDS) | st.integers(-1, N + 3) | scalars, max_size=20) | json_values,
    },
    optional={"parameters": options | json_values},
)
v2_bodies = (
    st.fixed_dictionaries(
        {"inputs": st.lists(v2_inputs, max_size=3) | json_values},
        optional={"parameters": options | json_values, "id": json_values},
    )
    | json_values
)


def _check(response) -> None:
    assert response.status_code < 500, response.text[:2000]
    if response.status_code >= 400:
        assert len(response.content) < 5000, response.content[:500]
        json.loads(response.content)  # a JSON error, not an HTML or text traceback


def _still_serving(client) -> None:
    answer = client.post("/v1/models/madrec:predict", json={"instances": [IDS[:3]], "k": 3})
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]["items"]) == 3
    assert not client.errors.records, [r.getMessage()[:300] for r in client.errors.records[:3]]


def _post(client, path: str, body) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    _check(client.post(path, content=raw, headers={"content-type": "application/json"}))


@pytest.mark.slow
def test_v1_requests_never_fail_the_server(client):
    @FUZZ
    @given(body=v1_bodies)
    def fuzz(body):
        _post(client, "/v1/models/madrec:predict", body)

    fuzz()
    _still_serving(client)


@pytest.mark.slow
def test_v2_requests_never_fail_the_server(client):
    @FUZZ
    @given(body=v2_bodies)
    def fuzz(body):
        _post(client, "/v2/models/madrec/infer", body)

    fuzz()
    _still_serving(client)


@pytest.mark.slow
def test_raw_bodies_never_fail_the_server(client):
    @settings(FUZZ, max_examples=500)
    @given(raw=st.binary(max_size=300), path=st.sampled_from(["/v1/models/madrec:predict", "/v2/models/madrec/infer"]))
    def fuzz(raw, path):
        _post(client, path, raw)

    fuzz()
    _still_serving(client)
