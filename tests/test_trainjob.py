"""TrainJob manifest, its validation, following a job to success or failure, and the launcher.

The Kubernetes API is replaced by small in-memory fakes that return the client's own model
objects (V1Pod, CoreV1Event, ApiException), scripted as the operator would move a job along.
"""

import json
import logging
from pathlib import Path

import pytest
from kubernetes.client import (
    CoreV1Event,
    V1ContainerState,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodCondition,
    V1PodStatus,
)
from kubernetes.client.exceptions import ApiException

from madrec.errors import MadrecError
from madrec.ops import trainjob
from madrec.ops.images import image

_REAL_CLIENT = trainjob.TrainJobClient
TWO_NODES = dict(experiment="tiny", num_nodes=2, gpus_per_node=1)  # launch() settings of the tests


def test_manifest_for_nodes_times_gpus(monkeypatch):
    monkeypatch.delenv("MADREC_TAG", raising=False)
    monkeypatch.delenv("MADREC_REGISTRY", raising=False)
    job = trainjob.build_trainjob(
        "madrec-train-x",
        ["experiment=tiny", "max_steps=10"],
        num_nodes=3,
        gpus_per_node=8,
        namespace="team",
        cpu_per_node="30",
        memory_per_node="200Gi",
    )
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["namespace"] == "team"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "madrec-torch",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == image("madrec-cuda")
    assert trainer["command"] == ["torchrun", "-m", "madrec.cli", "train"]
    assert trainer["args"] == ["experiment=tiny", "max_steps=10"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 8)
    assert trainer["resourcesPerNode"] == {
        "limits": {"nvidia.com/gpu": "8"},
        "requests": {"nvidia.com/gpu": "8", "cpu": "30", "memory": "200Gi"},
    }


def test_cpu_job_has_one_process_per_node_and_no_gpu_request():
    job = trainjob.build_trainjob("madrec-cpu", [], num_nodes=2, gpus_per_node=0, image="reg/madrec-cuda:t")
    trainer = job["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1 and "resourcesPerNode" not in trainer
    assert trainer["image"] == "reg/madrec-cuda:t"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "Madrec_Train"}, "at most 63 lower-case"),
        ({"name": "m" * 64}, "at most 63"),
        ({"num_nodes": 0}, "at least one node"),
        ({"gpus_per_node": -1}, "gpus_per_node=-1"),
    ],
)
def test_bad_job_parameters(kwargs, message):
    args = {"name": "madrec-ok", "num_nodes": 2, "gpus_per_node": 1, **kwargs}
    with pytest.raises(MadrecError, match=message):
        trainjob.build_trainjob(args.pop("name"), [], **args)


def test_job_names_are_fresh_and_valid():
    names = {trainjob.job_name() for _ in range(20)}
    assert len(names) == 20
    for name in names:
        trainjob.build_trainjob(name, [], num_nodes=1, gpus_per_node=1)


def test_validation_catches_unknown_fields_and_wrong_types():
    job = trainjob.build_trainjob("madrec-v", [], num_nodes=2, gpus_per_node=1)
    job["spec"]["trainer"]["numProcsPerNode"] = 2  # typo: not in the API
    with pytest.raises(MadrecError, match=r"spec\.trainer\.numProcsPerNode"):
        trainjob.validate_trainer_object(job)
    job = trainjob.build_trainjob("madrec-v", [], num_nodes=2, gpus_per_node=1)
    job["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(MadrecError, match="numNodes"):
        trainjob.validate_trainer_object(job)
    with pytest.raises(MadrecError, match="not a Kubeflow Trainer object"):
        trainjob.validate_trainer_object({"apiVersion": "batch/v1", "kind": "Job"})


# --- following a job -------------------------------------------------------------------------


def _pod(name, phase, *, index="0", waiting=None, terminated=None, unschedulable=None):
    state = None
    if waiting:
        state = V1ContainerState(waiting=V1ContainerStateWaiting(reason=waiting[0], message=waiting[1]))
    if terminated is not None:
        state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=terminated, reason="Error"))
    statuses = (
        [V1ContainerStatus(name="node", image="i", image_id="", ready=False, restart_count=0, state=state)]
        if state
        else None
    )
    conditions = (
        [V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable)]
        if unschedulable
        else None
    )
    return V1Pod(
        metadata=V1ObjectMeta(name=name, labels={"batch.kubernetes.io/job-completion-index": index}),
        status=V1PodStatus(phase=phase, container_statuses=statuses, conditions=conditions),
    )


class _Items:
    def __init__(self, items):
        self.items = items


class FakeCluster:
    """CustomObjectsApi + CoreV1Api for one TrainJob whose states follow a script."""

    def __init__(self, script, logs=None, events=(), create_error=None):
        self.script = list(script)  # [(conditions, pods), ...]; the last one repeats
        self.logs = logs or {}
        self.events = list(events)
        self.create_error = create_error
        self.created, self.deleted, self.step = [], [], -1

    # CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.create_error:
            raise self.create_error
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.created.append((namespace, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.step = min(self.step + 1, len(self.script) - 1)
        conditions = [{"type": t, "status": "True", "message": m} for t, m in self.script[self.step][0]]
        return {"metadata": {"name": name}, "status": {"conditions": conditions}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.deleted.append(name)

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector):
        assert label_selector.startswith("jobset.sigs.k8s.io/jobset-name=")
        return _Items(self.script[self.step][1])

    def read_namespaced_pod_log(self, name, namespace, container, tail_lines):
        assert container == "node"
        return "\n".join(self.logs.get(name, "").splitlines()[-tail_lines:])

    def list_namespaced_event(self, namespace):
        return _Items(self.events)


def _client(fake):
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    return _REAL_CLIENT("team", custom_api=fake, core_api=fake, sleep=sleep, clock=lambda: now[0])


def test_wait_logs_progress_until_complete(caplog):
    fake = FakeCluster(
        [
            ([], []),
            ([], [_pod("j-node-0-0", "Pending", unschedulable="0/3 nodes have enough nvidia.com/gpu")]),
            ([], [_pod("j-node-0-0", "Running"), _pod("j-node-0-1", "Running", index="1")]),
            ([("Complete", "done")], []),
        ],
        logs={"j-node-0-0": "epoch 0\rstep 5/100 loss 3.2\rstep 9/100 loss 2.9\n"},
    )
    with caplog.at_level(logging.INFO, logger="madrec.ops.trainjob"):
        _client(fake).wait("j", timeout_s=3600, poll_s=30)
    text = caplog.text
    assert "waiting for pods" in text
    assert "Unschedulable: 0/3 nodes have enough nvidia.com/gpu" in text
    assert "2 pods: 2 Running | node 0: step 9/100 loss 2.9" in text
    assert "completed after 0h01m30s" in text


def _warning(name: str, reason: str, message: str, pod: str) -> CoreV1Event:
    return CoreV1Event(
        metadata=V1ObjectMeta(name=name),
        type="Warning",
        reason=reason,
        message=message,
        involved_object=V1ObjectReference(kind="Pod", name=pod),
    )


def test_failure_carries_exit_code_logs_and_events():
    failed = _pod("j-node-0-1", "Failed", index="1", terminated=1)
    fake = FakeCluster(
        [([], [_pod("j-node-0-0", "Running")]), ([("Failed", "jobset failed: node-0 failed")], [failed])],
        logs={"j-node-0-1": "\n".join(f"line {i}" for i in range(100)) + "\nRuntimeError: NCCL timeout"},
        events=[
            _warning("e1", "BackOff", "restarting", "j-node-0-1"),
            _warning("e2", "Other", "unrelated", "other-pod"),
        ],
    )
    with pytest.raises(MadrecError) as err:
        _client(fake).wait("j", timeout_s=3600)
    text = str(err.value)
    assert text.startswith("TrainJob j failed: jobset failed: node-0 failed")
    assert "pod j-node-0-1: container node exited 1" in text
    assert "RuntimeError: NCCL timeout" in text and "line 71" in text and "line 70\n" not in text
    assert "Pod j-node-0-1: BackOff: restarting" in text and "unrelated" not in text
    assert fake.deleted == []  # a failed job stays for `kubectl describe`


def test_unstartable_pod_fails_at_once():
    fake = FakeCluster([([], [_pod("j-node-0-0", "Pending", waiting=("InvalidImageName", "bad ref 'x::y'"))])])
    with pytest.raises(MadrecError, match="cannot start: InvalidImageName: bad ref"):
        _client(fake).wait("j", timeout_s=3600)
    assert fake.step == 0


def test_timeout_deletes_the_job():
    fake = FakeCluster([([], [_pod("j-node-0-0", "Running")])])
    with pytest.raises(MadrecError, match="did not finish within 0h02m00s; deleted it"):
        _client(fake).wait("j", timeout_s=120, poll_s=60)
    assert fake.deleted == ["j"]


@pytest.mark.parametrize(
    "status, message",
    [
        (403, "Role/RoleBinding madrec-trainjob-launcher"),
        (404, "is Kubeflow Trainer v2.3\\+ installed"),
        (422, "runtime madrec-torch not found"),
    ],
)
def test_create_errors_say_what_to_fix(status, message):
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"message": "runtime madrec-torch not found"})
    fake = FakeCluster([([], [])], create_error=exc)
    job = trainjob.build_trainjob("madrec-e", [], num_nodes=2, gpus_per_node=1)
    with pytest.raises(MadrecError, match=message):
        _client(fake).create(job)


# --- the launcher: staging on the shared volume ------------------------------------------------


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "dataset"
    (data / "training").mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"num_items": 3}))
    (data / "training" / "part-0.tfrecord.gz").write_bytes(b"records")
    sids = tmp_path / "sids"
    sids.mkdir()
    (sids / "sids.pt").write_bytes(b"sid-tensor")
    return data, sids


class TrainingCluster(FakeCluster):
    """Plays the job's pods: reads the staged inputs and writes the run like `madrec train`."""

    def __init__(self, fail=False):
        super().__init__([([("Failed", "node 0 exited 1")] if fail else [("Complete", "")], [])])
        self.fail, self.seen = fail, {}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        super().create_namespaced_custom_object(group, version, namespace, plural, body)
        args = dict(a.split("=", 1) for a in body["spec"]["trainer"]["args"])
        self.seen = {
            "args": args,
            "dataset": json.loads(Path(args["data_dir"], "dataset.json").read_text()),
            "sids": Path(args["sid_data_path"]).read_bytes(),
        }
        run = Path(args["output_dir"])
        (run / "checkpoints").mkdir(parents=True)
        (run / "metrics.csv").write_text("step,loss\n1,2.0\n")
        if not self.fail:
            (run / "checkpoints" / "best.ckpt").write_bytes(b"best-weights")
            (run / "checkpoints" / "last.ckpt").write_bytes(b"last-weights")
            (run / "summary.json").write_text(json.dumps({"val/recall@10": 0.1, "test/recall@10": 0.09}))


def test_launch_stages_inputs_and_returns_the_model(tmp_path):
    data, sids = _inputs(tmp_path)
    shared = tmp_path / "pvc"
    shared.mkdir()
    fake = TrainingCluster()
    summary = trainjob.launch(
        data,
        sids,
        tmp_path / "out" / "model",
        tmp_path / "out" / "run",
        experiment="tiny",
        overrides=["max_steps=5"],
        num_nodes=2,
        gpus_per_node=4,
        shared_dir=shared,
        client=_client(fake),
        image="reg/madrec-cuda:t",
    )
    namespace, job = fake.created[0]
    name = job["metadata"]["name"]
    stage = shared / "trainjobs" / name
    assert namespace == "team" and job["metadata"]["namespace"] == "team"
    assert fake.seen["args"] == {
        "experiment": "tiny",
        "data_dir": str(stage / "data"),
        "sid_data_path": str(stage / "sids.pt"),
        "output_dir": str(stage / "run"),
        "max_steps": "5",
    }
    assert fake.seen["dataset"] == {"num_items": 3} and fake.seen["sids"] == b"sid-tensor"
    assert (tmp_path / "out" / "model").read_bytes() == b"best-weights"
    run = tmp_path / "out" / "run"
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"last-weights"
    assert not (run / "checkpoints" / "best.ckpt").exists()  # kept once, as the model
    assert (run / "metrics.csv").is_file()
    assert summary == {"val/recall@10": 0.1, "test/recall@10": 0.09}
    assert not stage.exists()


def test_failed_launch_keeps_the_run_and_drops_staged_inputs(tmp_path):
    data, sids = _inputs(tmp_path)
    shared = tmp_path / "pvc"
    shared.mkdir()
    fake = TrainingCluster(fail=True)
    with pytest.raises(MadrecError, match="(?s)failed: node 0 exited 1.*run folder .* stays in .*on PVC madrec-data"):
        paths = (data, sids / "sids.pt", tmp_path / "model", tmp_path / "run")
        trainjob.launch(*paths, **TWO_NODES, shared_dir=shared, client=_client(fake))
    (stage,) = (shared / "trainjobs").iterdir()
    assert (stage / "run" / "metrics.csv").is_file()
    assert not (stage / "data").exists() and not (stage / "sids.pt").exists()
    assert not (tmp_path / "model").exists() and not (tmp_path / "run").exists()


def test_launch_refuses_bad_setups(tmp_path):
    data, sids = _inputs(tmp_path)
    common = dict(**TWO_NODES, client=_client(FakeCluster([([], [])])))
    with pytest.raises(MadrecError, match="the pipeline sets output_dir itself"):
        trainjob.launch(data, sids, tmp_path / "m", overrides=["output_dir=/x"], shared_dir=tmp_path, **common)
    with pytest.raises(MadrecError, match="not mounted in the launcher; mount PVC madrec-data"):
        trainjob.launch(data, sids, tmp_path / "m", shared_dir=tmp_path / "absent", **common)
    with pytest.raises(MadrecError, match="missing data_dir"):
        trainjob.launch(tmp_path, sids, tmp_path / "m", shared_dir=tmp_path, **common)


# --- the KFP component ---------------------------------------------------------------------------


def test_component_matches_the_single_node_train_component(tmp_path, monkeypatch):
    import yaml
    from kfp import compiler, dsl

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))

    from components.train import train
    from components.trainjob import launch_trainjob, mount_shared_volume

    out = tmp_path / "launch.yaml"
    compiler.Compiler().compile(launch_trainjob, str(out))
    spec = yaml.safe_load(out.read_text())
    (executor,) = spec["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == image("madrec")
    assert "pip install" not in " ".join(container["command"])
    inputs = spec["root"]["inputDefinitions"]
    params = inputs["parameters"]
    assert params["shared_dir"]["defaultValue"] == trainjob.SHARED_MOUNT
    assert params["runtime"]["defaultValue"] == trainjob.DEFAULT_RUNTIME

    def io(component):
        s = component.component_spec
        return (
            {
                k: v.type
                for k, v in s.inputs.items()
                if k
                not in (
                    "num_gpus",
                    "num_nodes",
                    "gpus_per_node",
                    "trainer_image",
                    "runtime",
                    "shared_dir",
                    "timeout_hours",
                )
            },
            {k: v.type for k, v in s.outputs.items()},
        )

    assert io(launch_trainjob) == io(train)

    @dsl.pipeline(name="launch-check")
    def pipe(dataset_uri: str = "gs://b/d", sids_uri: str = "gs://b/s"):
        ds = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset)
        sd = dsl.importer(artifact_uri=sids_uri, artifact_class=dsl.Artifact)
        task = launch_trainjob(
            dataset=ds.output, sids=sd.output, experiment="tiny", overrides={}, num_nodes=2, gpus_per_node=4
        )
        mount_shared_volume(task)

    compiler.Compiler().compile(pipe, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    platform = next(d for d in docs if "platforms" in d)
    (executor_cfg,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert executor_cfg["pvcMount"][0]["mountPath"] == trainjob.SHARED_MOUNT
    assert trainjob.SHARED_PVC in json.dumps(executor_cfg["pvcMount"][0])


def test_component_body_runs_the_launcher(tmp_path, monkeypatch):
    from kfp import dsl

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from components.trainjob import launch_trainjob

    data, sids = _inputs(tmp_path)
    shared = tmp_path / "pvc"
    shared.mkdir()
    fake = TrainingCluster()
    monkeypatch.setattr(trainjob, "TrainJobClient", lambda: _client(fake))
    monkeypatch.setenv("MADREC_TAG", "9.9")
    out = tmp_path / "out"
    model, metrics = dsl.Model(uri=str(out / "model")), dsl.Metrics(uri=str(out / "metrics"))

    def launch(overrides: dict, run: str) -> None:
        launch_trainjob.python_func(
            dataset=dsl.Dataset(uri=str(data)),
            sids=dsl.Artifact(uri=str(sids)),
            experiment="tiny",
            overrides=overrides,
            num_nodes=2,
            gpus_per_node=2,
            model=model,
            metrics=metrics,
            run=dsl.Artifact(uri=str(out / run)),
            shared_dir=str(shared),
        )

    launch({"trainer.max_steps": 5.0, "optim.optimizer.lr": 0.001}, "run")
    job = fake.created[0][1]
    assert job["spec"]["trainer"]["image"].endswith("/madrec-cuda:9.9")
    assert job["spec"]["trainer"]["args"][-2:] == ["trainer.max_steps=5", "optim.optimizer.lr=0.001"]
    assert Path(model.path).read_bytes() == b"best-weights"
    assert json.loads(Path(metrics.path).read_text()) == {"test/recall@10": 0.09, "val/recall@10": 0.1}
    assert model.metadata["num_nodes"] == 2 and model.metadata["experiment"] == "tiny"
    with pytest.raises(MadrecError, match="the pipeline sets output_dir itself"):
        launch({"output_dir": "/x"}, "run2")


def test_rejected_job_leaves_nothing_on_the_shared_volume(tmp_path):
    data, sids = _inputs(tmp_path)
    fake = FakeCluster([([], [])], create_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(MadrecError, match="may not do this in namespace 'team'"):
        trainjob.launch(data, sids, tmp_path / "m", **TWO_NODES, shared_dir=tmp_path, client=_client(fake))
    assert list((tmp_path / "trainjobs").iterdir()) == []


def test_quiet_job_still_logs_a_heartbeat(caplog):
    fake = FakeCluster(
        [([], [_pod("j-node-0-0", "Running")])] * 12 + [([("Complete", "")], [])], logs={"j-node-0-0": "step 7/100"}
    )
    with caplog.at_level(logging.INFO, logger="madrec.ops.trainjob"):
        _client(fake).wait("j", timeout_s=3600, poll_s=60)
    beats = [r.getMessage() for r in caplog.records if "node 0: step 7/100" in r.getMessage()]
    assert beats[0].startswith("TrainJob j [0h00m00s]") and len(beats) == 3  # at 0, 5 and 10 minutes
