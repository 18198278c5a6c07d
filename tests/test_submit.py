"""`madrec submit`: typed run parameters, upload once per content, the run URL."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from madrec.errors import MadrecError
from madrec.ops.pipeline_params import PIPELINE_FILE, parse_params, pipeline_inputs
from madrec.ops.submit import cli, submit, upload

VERSION = f"madrec-{hashlib.sha256(PIPELINE_FILE.read_bytes()).hexdigest()[:12]}"


class FakeClient:
    """Records the kfp.Client calls `madrec submit` makes; `versions` are on the server."""

    def __init__(self, pipeline_id=None, versions=()):
        self.pipeline_id, self.versions, self.calls = pipeline_id, list(versions), []

    def get_pipeline_id(self, name):
        return self.pipeline_id

    def upload_pipeline(self, path, pipeline_name):
        self.calls.append(("upload_pipeline", path, pipeline_name))
        self.pipeline_id = "p1"
        self.versions.append(SimpleNamespace(display_name=pipeline_name, pipeline_version_id="v-first"))
        return SimpleNamespace(pipeline_id="p1")

    def list_pipeline_versions(self, pipeline_id, **kwargs):
        return SimpleNamespace(pipeline_versions=list(reversed(self.versions)))

    def upload_pipeline_version(self, path, version_name, pipeline_id):
        self.calls.append(("upload_pipeline_version", path, version_name, pipeline_id))
        return SimpleNamespace(pipeline_version_id="v-new")

    def create_experiment(self, name, namespace=None):
        self.calls.append(("create_experiment", name, namespace))
        return SimpleNamespace(experiment_id="e1")

    def run_pipeline(self, experiment_id, job_name, **kwargs):
        self.calls.append(("run_pipeline", experiment_id, job_name, kwargs))
        return SimpleNamespace(run_id="r1")


def test_params_are_typed_from_the_pipeline_yaml():
    inputs = pipeline_inputs(PIPELINE_FILE)
    params = parse_params(
        [
            "num_gpus=4",
            "dataset=sequences",
            'gpu_node_selector={"pool": "a100"}',
            'gpu_tolerations=[{"key": "gpu", "operator": "Exists"}]',
            "train_overrides.batch_size=512",
            "train_overrides.seed=1",
            'eval_overrides={"beam_size": "20", "ks": [5, 20]}',
        ],
        inputs,
    )
    assert params == {
        "num_gpus": 4,
        "dataset": "sequences",
        "gpu_node_selector": {"pool": "a100"},
        "gpu_tolerations": [{"key": "gpu", "operator": "Exists"}],
        "train_overrides": {"batch_size": 512, "seed": 1},
        "eval_overrides": {"beam_size": 20, "ks": [5, 20]},
    }
    # an override is checked against the config schema before any run starts
    with pytest.raises(MadrecError, match=r"--param train_overrides.trainer.max_minuts: unknown config key"):
        parse_params(["train_overrides.trainer.max_minuts=3"], inputs)
    with pytest.raises(MadrecError, match=r"--param eval_overrides: config key beam_size: expected int, got 'wide'"):
        parse_params(['eval_overrides={"beam_size": "wide"}'], inputs)
    # train_overrides.KEY adds to a verb's own overrides (run-local's positional KEY=VALUE)
    base = {"train_overrides": {"trainer.max_steps": 10}, "num_gpus": 0}
    assert parse_params(["train_overrides.seed=2"], inputs, base=base) == {
        "train_overrides": {"trainer.max_steps": 10, "seed": 2},
        "num_gpus": 0,
    }
    assert base == {"train_overrides": {"trainer.max_steps": 10}, "num_gpus": 0}
    with pytest.raises(MadrecError, match=r"--param num_gpu: not a pipeline parameter; valid: .*num_gpus"):
        parse_params(["num_gpu=2"], inputs)
    with pytest.raises(MadrecError, match=r"--param num_gpus='two': not a valid number_integer"):
        parse_params(["num_gpus=two"], inputs)
    with pytest.raises(MadrecError, match="expected a JSON object"):
        parse_params(["gpu_node_selector=[1]"], inputs)
    with pytest.raises(MadrecError, match="expected key=value"):
        parse_params(["num_gpus"], inputs)


def test_first_upload_creates_the_pipeline():
    client = FakeClient()
    assert upload(client, PIPELINE_FILE, "madrec") == ("p1", "v-first")
    assert client.calls == [("upload_pipeline", str(PIPELINE_FILE), "madrec")]


def test_unchanged_pipeline_is_not_uploaded_again():
    client = FakeClient("p1", [SimpleNamespace(display_name=VERSION, pipeline_version_id="v7")])
    assert upload(client, PIPELINE_FILE, "madrec") == ("p1", "v7")
    assert client.calls == []


def test_changed_pipeline_becomes_a_new_version():
    client = FakeClient("p1", [SimpleNamespace(display_name="madrec-000000000000", pipeline_version_id="v0")])
    assert upload(client, PIPELINE_FILE, "madrec") == ("p1", "v-new")
    assert client.calls == [("upload_pipeline_version", str(PIPELINE_FILE), VERSION, "p1")]


def test_submit_starts_a_run_and_returns_its_url():
    client = FakeClient("p1", [SimpleNamespace(display_name=VERSION, pipeline_version_id="v7")])
    url = submit(
        client,
        PIPELINE_FILE,
        {"num_gpus": 2},
        pipeline_name="madrec",
        experiment="exp",
        run_name="r",
        namespace="team",
        enable_caching=False,
        service_account="launcher",
        ui_host="https://kfp.example/",
    )
    assert url == "https://kfp.example/#/runs/details/r1"
    assert client.calls == [
        ("create_experiment", "exp", "team"),
        (
            "run_pipeline",
            "e1",
            "r",
            {
                "params": {"num_gpus": 2},
                "pipeline_id": "p1",
                "version_id": "v7",
                "enable_caching": False,
                "service_account": "launcher",
            },
        ),
    ]


def test_cli_needs_an_endpoint(monkeypatch):
    monkeypatch.delenv("KFP_HOST", raising=False)
    with pytest.raises(MadrecError, match="no KFP endpoint: set KFP_HOST"):
        cli([])
