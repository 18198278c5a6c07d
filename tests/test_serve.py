"""`madrec serve` over real HTTP on 127.0.0.1 with a real (small) checkpoint: V1 and V2,
health and metrics, dynamic batching, and bad requests answered 4xx with a named cause."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from toy_lm import random_sids, write_checkpoint

pytest.importorskip("kserve")

from madrec.errors import MadrecError  # noqa: E402
from madrec.evaluate.recommend import Recommender  # noqa: E402
from madrec.ops.serve import resolve_checkpoint  # noqa: E402

N = 40
IDS = [f"A{i * 7:04d}" for i in range(N)]
MAX_BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body=None, headers=None, timeout=60) -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _die_with_parent() -> None:
    """In the server's process: SIGTERM it when this process dies (a killed run leaves no server)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    def __init__(self, ckpt: Path, log: Path, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = log
        cmd = [sys.executable, "-m", "madrec.cli", "serve", "--ckpt", str(ckpt), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--threads", "1", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        deadline = time.time() + 300  # a busy shared machine can take minutes to import torch
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _call(self.url + "/v2/health/ready", timeout=2)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after 300 s:\n{log.read_text()[-3000:]}")

    def v1(self, body, **kw):
        return _call(self.url + "/v1/models/madrec:predict", body, **kw)

    def v2(self, body, **kw):
        return _call(self.url + "/v2/models/madrec/infer", body, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.ckpt"
    write_checkpoint(path, random_sids(3, 5, N, seed=9), IDS, max_len=15, codebook_size=5)
    return path


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    srv = Server(
        ckpt,
        tmp_path_factory.mktemp("serve_log") / "server.log",
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-batch-wait-ms",
        "30",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def rec(ckpt):
    return Recommender.from_checkpoint(str(ckpt), device="cpu")


@pytest.mark.slow
def test_v1_predict_is_the_recommender_over_http(server, rec):
    histories = [["A0007", "A0014", "A0021"], ["A0070"], ["A0007", "A0000"]]
    status, body = server.v1({"instances": histories[:2] + [{"history": histories[2], "k": 3}], "k": 5})
    assert status == 200, body
    preds = body["predictions"]
    assert [len(p["items"]) for p in preds] == [5, 5, 3]
    for pred, hist in zip(preds[:2], histories):
        ref = rec.recommend(hist, k=5)
        assert pred["items"] == [i for i, _ in ref]
        assert pred["scores"] == pytest.approx([s for _, s in ref], abs=1e-5)
        assert pred["scores"] == sorted(pred["scores"], reverse=True)
    assert preds[2]["items"] == [i for i, _ in rec.recommend(["A0007", "A0000"], k=3)]


@pytest.mark.slow
def test_exclude_history_skip_unknown_and_next_items(server, rec):
    full = [i for i, _ in rec.recommend(["A0007"], k=10)]
    history = full[:3]  # the model's own favourites: they must disappear
    status, body = server.v1({"instances": [history], "k": 4, "exclude_history": True})
    assert status == 200, body
    items = body["predictions"][0]["items"]
    assert not set(items) & set(history) and len(items) == 4
    assert items == [i for i, _ in rec.recommend(history, k=10) if i not in history][:4]

    status, body = server.v1({"instances": [["A0007", "nope", "A0014"]], "k": 3, "skip_unknown": True})
    assert status == 200 and body["predictions"][0]["items"] == [i for i, _ in rec.recommend(["A0007", "A0014"], k=3)]

    status, body = server.v1({"instances": [["A0007", "A0014"]], "k": 6, "next_items": 2})
    assert status == 200, body
    pairs = body["predictions"][0]["items"]
    ref = rec.recommend(["A0007", "A0014"], k=6, next_items=2)
    assert pairs == [list(p) for p, _ in ref]


@pytest.mark.slow
def test_v2_infer(server, rec):
    request = {
        "id": "r1",
        "parameters": {"k": 3},
        "inputs": [
            {
                "name": "history",
                "datatype": "BYTES",
                "shape": [2, 3],
                "data": ["A0007", "A0014", "A0021", "A0070", "", ""],
            }
        ],
    }
    status, body = server.v2(request)
    assert status == 200, body
    assert body["id"] == "r1" and body["model_name"] == "madrec"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["items"]["shape"] == [2, 3] and out["items"]["datatype"] == "BYTES"
    assert out["scores"]["shape"] == [2, 3] and out["scores"]["datatype"] == "FP32"
    ref = rec.recommend_many([["A0007", "A0014", "A0021"], ["A0070"]], k=3)
    assert out["items"]["data"] == [i for r in ref for i, _ in r]
    assert out["scores"]["data"] == pytest.approx([s for r in ref for _, s in r], abs=1e-5)
    # one history as a 1-D tensor
    status, body = server.v2({"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["A0007"]}]})
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
    # metadata from the library, with this model's tensors
    status, meta = _call(server.url + "/v2/models/madrec")
    assert status == 200 and [i["name"] for i in meta["inputs"]] == ["history"]


@pytest.mark.slow
def test_health_readiness_and_prometheus_metrics(server):
    assert _call(server.url + "/v2/health/live")[0] == 200
    assert _call(server.url + "/v2/health/ready") == (200, {"ready": True})
    assert _call(server.url + "/v1/models/madrec") == (200, {"name": "madrec", "ready": True})
    assert _call(server.url + "/v1/models/other:predict", {"instances": [["A0007"]]})[0] == 404
    server.v1({"instances": [["A0007"]]})
    status, text = _call(server.url + "/metrics")
    assert status == 200
    assert re.search(r'^request_predict_seconds_count\{model_name="madrec"\} [1-9]', text, re.M)  # kserve's
    assert re.search(r"^madrec_batch_histories_count [1-9]", text, re.M)  # ours, same registry


def _metric(url: str, name: str) -> float:
    text = _call(url + "/metrics")[1]
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@pytest.mark.slow
def test_concurrent_requests_are_decoded_together(server, rec):
    histories = [[IDS[i], IDS[(3 * i + 1) % N]] for i in range(16)]
    calls_before = _metric(server.url, "madrec_batch_histories_count")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda h: server.v1({"instances": [h], "k": 5}), histories))
    calls = _metric(server.url, "madrec_batch_histories_count") - calls_before
    assert all(status == 200 for status, _ in answers)
    assert calls < len(histories)  # 16 requests, fewer model calls: batches formed
    assert calls >= len(histories) / MAX_BATCH  # and none larger than --max-batch-size
    for (_, body), h in zip(answers, histories):  # batching changes nothing in the answers
        assert body["predictions"][0]["items"] == [i for i, _ in rec.recommend(h, k=5)]


BAD_V1 = [
    # (name, body, status, words the message must contain)
    ("malformed JSON", b'{"instances": [["A0007"', 400, "malformed JSON"),
    ("not an object", [["A0007"]], 400, '"instances"'),
    ("no instances", {"histories": [["A0007"]]}, 400, '"instances"'),
    ("unknown field", {"instances": [["A0007"]], "topk": 3}, 400, "unknown request field"),
    ("unknown ids", {"instances": [["A0007", "B9999"]]}, 400, "unknown item id(s): 1 not in the model's catalogue"),
    ("all unknown, skipped", {"instances": [["B9999"]], "skip_unknown": True}, 400, "empty history"),
    ("k beyond beam", {"instances": [["A0007"]], "k": 11}, 400, "beyond what the beam can give"),
    ("k zero", {"instances": [["A0007"]], "k": 0}, 400, "k must be >= 1"),
    ("k not int", {"instances": [["A0007"]], "k": "5"}, 400, "k must be an integer"),
    ("empty history", {"instances": [[]]}, 400, "empty history"),
    ("history not a list", {"instances": ["A0007"]}, 400, "must be a list of item ids"),
    ("bad id type", {"instances": [["A0007", {"id": 1}]]}, 400, "item ids must be strings or integers"),
    ("no histories", {"instances": []}, 400, "no histories"),
    ("oversized batch", {"instances": [["A0007"]] * (MAX_BATCH + 1)}, 400, "oversized batch"),
    ("parameters a string", {"instances": [["A0007"]], "parameters": "ab"}, 400, '"parameters" must be an object'),
    ("parameters a number", {"instances": [["A0007"]], "parameters": 5}, 400, '"parameters" must be an object'),
    ("parameters a list", {"instances": [["A0007"]], "parameters": [1, 2]}, 400, '"parameters" must be an object'),
    ("unknown parameter", {"instances": [["A0007"]], "parameters": {"topk": 3}}, 400, "unknown key(s) ['topk']"),
    ("nested 1000 deep", b'{"instances": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "item ids must be strings"),
    ("next_items too many", {"instances": [["A0007"]], "next_items": 9}, 400, "next_items must be"),
    ("exclude not bool", {"instances": [["A0007"]], "exclude_history": "yes"}, 400, "exclude_history must be"),
    ("instance typo", {"instances": [{"histroy": ["A0007"]}]}, 400, "unknown field(s) ['histroy']"),
]


@pytest.mark.parametrize("name,body,status,words", BAD_V1, ids=[b[0] for b in BAD_V1])
@pytest.mark.slow
def test_bad_v1_requests_are_4xx_with_a_named_cause(server, name, body, status, words):
    got, answer = server.v1(body)
    assert got == status, answer
    assert words in answer["error"]
    assert server.v1({"instances": [["A0007"]], "k": 2})[0] == 200  # still serving


BAD_V2 = [
    ("malformed JSON", b'{"inputs": [{"name": "history"', 422, "JSON decode error"),
    (
        "wrong input name",
        {"inputs": [{"name": "hist", "datatype": "BYTES", "shape": [1], "data": ["A0007"]}]},
        400,
        'one input named "history"',
    ),
    (
        "shape mismatch",
        {"inputs": [{"name": "history", "datatype": "BYTES", "shape": [2, 2], "data": ["A0007"]}]},
        400,
        "does not fit shape",
    ),
    (
        "float ids",
        {"inputs": [{"name": "history", "datatype": "FP32", "shape": [1], "data": [1.5]}]},
        400,
        "must be BYTES",
    ),
    (
        "unknown ids",
        {"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["B9999"]}]},
        400,
        "unknown item id(s)",
    ),
    (
        "empty history",
        {"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1, 2], "data": ["", ""]}]},
        400,
        "empty history",
    ),
    (
        "k beyond beam",
        {
            "parameters": {"k": 50},
            "inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["A0007"]}],
        },
        400,
        "beyond what the beam can give",
    ),
    (
        "unknown parameter",
        {
            "parameters": {"topk": 5},
            "inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["A0007"]}],
        },
        400,
        "unknown key(s) ['topk'] in request parameters",
    ),
    (
        "INT64 data not integers",
        {"inputs": [{"name": "history", "datatype": "INT64", "shape": [1], "data": [1.5]}]},
        400,
        "must be integers, got 1.5",
    ),
    (
        "oversized batch",
        {
            "inputs": [
                {
                    "name": "history",
                    "datatype": "BYTES",
                    "shape": [MAX_BATCH + 1, 1],
                    "data": ["A0007"] * (MAX_BATCH + 1),
                }
            ]
        },
        400,
        "oversized batch",
    ),
]


@pytest.mark.parametrize("name,body,status,words", BAD_V2, ids=[b[0] for b in BAD_V2])
@pytest.mark.slow
def test_bad_v2_requests_are_4xx_with_a_named_cause(server, name, body, status, words):
    got, answer = server.v2(body)
    assert got == status, answer
    assert words in (answer["error"] if "error" in answer else json.dumps(answer))
    ok = {"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1], "data": ["A0007"]}]}
    assert server.v2(ok)[0] == 200  # still serving


@pytest.mark.slow
def test_bad_input_is_quoted_and_logged_in_a_bounded_line(server):
    huge_id = "x" * 20_000_000
    before = server.log.stat().st_size
    got, answer = server.v1({"instances": [[huge_id]]})
    assert got == 400 and "unknown item id(s)" in answer["error"] and len(answer["error"]) < 1000
    for body in ({"instances": [["A0007"]], "parameters": "ab"}, {"instances": [["A0007"]], "k": 0}):
        assert server.v1(body)[0] == 400
    time.sleep(0.5)  # the log is written by the server process
    logged = server.log.read_bytes()[before:].decode()
    assert len(logged) < 20_000, logged[:2000]
    assert "Traceback" not in logged and "InvalidInput:" in logged
    assert all(len(line) < 1000 for line in logged.splitlines())


@pytest.mark.slow
def test_history_longer_than_the_window_is_said_in_the_response(server, rec):
    history = IDS[:7]  # max_len 15 at 3 tokens per item: the model reads the last 4
    status, body = server.v1({"instances": [history, history[-2:]], "k": 3})
    assert status == 200, body
    long, short = body["predictions"]
    assert long["dropped_history_items"] == 3 and "dropped_history_items" not in short
    assert long["items"] == [i for i, _ in rec.recommend(history[-4:], k=3)]
    v2 = {"inputs": [{"name": "history", "datatype": "BYTES", "shape": [1, 7], "data": history}]}
    status, body = server.v2(v2)
    out = {o["name"]: o["data"] for o in body.get("outputs", [])}
    assert status == 200 and out["dropped_history_items"] == [3], body
    assert "window of 4 items" in server.log.read_text()


@pytest.mark.slow
def test_model_repository_is_off_by_default(server):
    status, answer = _call(server.url + "/v2/repository/models/madrec/unload", b"")
    assert status == 403 and "--enable-model-repository" in answer["error"]
    assert _call(server.url + "/v2/repository/models/madrec/load", b"")[0] == 403
    assert _call(server.url + "/v2/health/ready")[0] == 200
    assert server.v1({"instances": [["A0007"]], "k": 2})[0] == 200


@pytest.mark.slow
def test_health_follows_the_model_through_unload_and_load(ckpt, tmp_path):
    srv = Server(ckpt, tmp_path / "server.log", "--enable-model-repository")
    try:
        assert _call(srv.url + "/v2/repository/models/madrec/unload", b"")[0] == 200
        for path in ("/v2/health/ready", "/v2/health/live", "/"):
            assert _call(srv.url + path)[0] == 503, path  # kserve said ready and live with no model
        assert srv.v1({"instances": [["A0007"]]})[0] in (404, 503)
        assert _call(srv.url + "/v2/repository/models/madrec/load", b"")[0] == 200
        assert _call(srv.url + "/v2/health/ready") == (200, {"ready": True})
        assert _call(srv.url + "/v2/health/live")[0] == 200
        assert srv.v1({"instances": [["A0007"]], "k": 2})[0] == 200
    finally:
        srv.stop()


@pytest.mark.slow
def test_no_batching_gives_the_same_answers_and_the_server_stops_cleanly(ckpt, tmp_path, rec):
    srv = Server(ckpt, tmp_path / "server.log", "--no-batching", "--beam-size", "20")
    try:
        status, body = srv.v1({"instances": [["A0007", "A0014"]], "k": 15})
        assert status == 200 and len(body["predictions"][0]["items"]) == 15
        assert body["predictions"][0]["items"] == [i for i, _ in rec.recommend(["A0007", "A0014"], k=15, beam_size=20)]
    finally:
        srv.stop()
    assert srv.proc.returncode is not None


def test_checkpoint_folder_is_resolved(tmp_path, ckpt):
    assert resolve_checkpoint(str(ckpt)) == str(ckpt)
    assert resolve_checkpoint("gs://bucket/model") == "gs://bucket/model"
    one = tmp_path / "one"
    one.mkdir()
    (one / "model").write_bytes(b"x")  # KFP's Model artifact: one file without a suffix
    assert resolve_checkpoint(str(one)) == str(one / "model")
    (one / "best.ckpt").write_bytes(b"x")
    (one / "last.ckpt").write_bytes(b"x")
    assert resolve_checkpoint(str(one)) == str(one / "best.ckpt")
    (one / "best.ckpt").unlink()
    assert resolve_checkpoint(str(one)) == str(one / "last.ckpt")  # the only .ckpt
    (one / "other.ckpt").write_bytes(b"x")
    with pytest.raises(MadrecError, match="exactly one file"):
        resolve_checkpoint(str(one))


# --- deployment: the InferenceService and the pipeline's deploy step ------------------------------


@pytest.mark.slow
def test_inferenceservice_manifests_are_the_deploy_steps_object_and_validate():
    import shutil

    import yaml

    from madrec.ops.deploy import build_inferenceservice, validate_inferenceservice

    if shutil.which("kubectl") is None:
        pytest.fail("kubectl not found: it renders the kustomize folders (apt-get install kubectl)")
    repo = Path(__file__).resolve().parents[1]
    for variant, gpu in (("cpu", False), ("gpu", True)):
        out = subprocess.run(
            ["kubectl", "kustomize", str(repo / "manifests" / "serving" / variant)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (svc,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "InferenceService"]
        assert validate_inferenceservice(svc) == []
        built = build_inferenceservice(svc["metadata"]["name"], gpu=gpu, namespace="kubeflow")
        assert svc == built  # the YAML and what the deploy step creates are one object
    proc = subprocess.run(
        [
            sys.executable,
            str(repo / "manifests" / "validate.py"),
            str(repo / "manifests" / "serving" / "cpu"),
            str(repo / "manifests" / "serving" / "gpu"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.count("serving objects pass") == 2, proc.stdout + proc.stderr


def test_inferenceservice_validation_names_the_problems():
    import copy

    from madrec.ops.deploy import build_inferenceservice, validate_inferenceservice

    good = build_inferenceservice("madrec", "gs://b/m")
    bad = copy.deepcopy(good)
    bad["spec"]["predictor"]["minReplica"] = 1  # typo of minReplicas
    bad["spec"]["predictor"]["maxReplicas"] = "4"
    bad["spec"]["predictor"]["containers"][0]["imagePullPolicy"] = 3
    bad["spec"]["predictor"]["containers"][0]["env"] = []
    problems = "\n".join(validate_inferenceservice(bad))
    assert "spec.predictor: unknown field 'minReplica'" in problems
    assert "spec.predictor.maxReplicas: expected int" in problems
    assert "imagePullPolicy" in problems and "STORAGE_URI" in problems
    with pytest.raises(MadrecError, match="DNS label"):
        build_inferenceservice("Madrec_Model")


class FakeCustomObjects:
    """kubernetes.client.CustomObjectsApi, in memory."""

    def __init__(self):
        self.objects, self.calls = {}, []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.rest import ApiException

        self.calls.append("get")
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[(namespace, name)]

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")
        self.calls.append("create")
        self.objects[(namespace, body["metadata"]["name"])] = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": "1"},
        }

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append("replace")
        assert body["metadata"]["resourceVersion"] == self.objects[(namespace, name)]["metadata"]["resourceVersion"]
        self.objects[(namespace, name)] = {**body, "metadata": {**body["metadata"], "resourceVersion": "2"}}


def test_deploy_step_creates_then_updates_only_above_the_threshold(tmp_path):
    from madrec.ops.deploy import deploy_step

    metrics = tmp_path / "metrics"
    metrics.write_text(json.dumps({"test/recall@10": 0.042, "test/ndcg@10": 0.02}))
    api = FakeCustomObjects()
    low = deploy_step("gs://root/run/train/model", str(metrics), {}, 0.05, "madrec", "team", api=api)
    assert low.startswith("skipped") and "0.0420 < threshold 0.0500" in low and api.calls == []
    first = deploy_step("gs://root/run1/train/model", str(metrics), {}, 0.04, "madrec", "team", api=api)
    assert first.startswith("deployed") and "team/madrec created" in first
    second = deploy_step(
        "gs://root/run2/train/model", str(metrics), {}, 0.04, "madrec", "team", gpu=True, tag="1.2.3", api=api
    )
    assert "updated" in second and api.calls == ["get", "create", "get", "replace"]
    svc = api.objects[("team", "madrec")]
    container = svc["spec"]["predictor"]["containers"][0]
    assert {"name": "STORAGE_URI", "value": "gs://root/run2/train/model"} in container["env"]
    assert container["image"].endswith("/madrec-cuda:1.2.3") and container["resources"]["limits"]["nvidia.com/gpu"]
    # metrics from the artifact's metadata when the file is missing; a clear error without them
    assert deploy_step(
        "gs://m", str(tmp_path / "none"), {"test/recall@10": 0.5}, 0.1, "madrec", "team", api=api
    ).startswith("deployed")
    with pytest.raises(MadrecError, match="no 'test/recall@10'"):
        deploy_step("gs://m", str(tmp_path / "none"), {"val/recall@10": 0.5}, 0.1, "madrec", "team", api=api)
    with pytest.raises(MadrecError, match="not a storage URI"):
        deploy_step("/local/model", str(metrics), {}, 0.0, "madrec", "team", api=api)


@pytest.mark.slow
def test_deploy_component_compiles(tmp_path):
    from kfp import compiler, dsl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from components.deploy import deploy

    @dsl.pipeline(name="deploy-check")
    def pipe():  # no parameters: this file's `from __future__ import annotations` would stringify them
        model = dsl.importer(artifact_uri="gs://b/run/train/model", artifact_class=dsl.Model)
        metrics = dsl.importer(artifact_uri="gs://b/run/evaluate/metrics", artifact_class=dsl.Metrics)
        deploy(
            model=model.output,
            metrics=metrics.output,
            min_recall_at_10=0.05,
            service_name="madrec",
            namespace="",
            use_gpu=False,
            image_tag="0.1.0",
        )

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipe, str(out))
    text = out.read_text()
    assert "comp-deploy" in text and "min_recall_at_10" in text and "madrec-project/madrec:" in text
