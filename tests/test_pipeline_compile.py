"""The committed pipeline YAML is what the code compiles to, and carries the cluster settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from madrec.ops.images import DEFAULT_REGISTRY, DEFAULT_TAG

from conftest import REPO

PIPELINE_YAML = REPO / "pipelines" / "madrec_pipeline.yaml"
CPU_STEPS = ("prepare-data", "ingest-sids", "build-sids", "launch-trainjob")
GPU_STEPS = ("train", "evaluate")


@pytest.fixture(scope="module")
def compiled():
    """(pipeline spec, kubernetes platform spec) of the committed YAML."""
    docs = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))
    assert len(docs) == 2, "expected the pipeline spec and the kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _executors(spec, step: str) -> dict:
    """Executors of `step` (a sub-pipeline used twice compiles to exec-train and exec-train-2)."""
    found = {
        name: ex
        for name, ex in spec["deploymentSpec"]["executors"].items()
        if re.fullmatch(rf"exec-{step}(-\d+)*", name)
    }
    assert found, f"no executor for {step}"
    return found


def _tasks(spec):
    """Every task of every DAG: (dag name, task name, task spec)."""
    dags = [("root", spec["root"]["dag"])] + [(n, c["dag"]) for n, c in spec["components"].items() if "dag" in c]
    return [(dag_name, name, task) for dag_name, dag in dags for name, task in dag["tasks"].items()]


@pytest.mark.slow
def test_committed_yaml_is_current(tmp_path):
    out = tmp_path / "pipeline.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("MADREC_REGISTRY", "MADREC_TAG")}
    subprocess.run(
        [sys.executable, "-m", "pipelines.madrec_pipeline", "--out", str(out)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    assert out.read_text() == PIPELINE_YAML.read_text(), (
        "pipelines/madrec_pipeline.yaml is out of date: run `make compile-pipeline` and commit it"
    )


def test_gpu_steps_request_gpus_on_the_gpu_pool(compiled):
    spec, k8s = compiled
    for step in GPU_STEPS:
        for name, executor in _executors(spec, step).items():
            accel = executor["container"]["resources"]["accelerator"]
            assert accel["resourceType"] == "nvidia.com/gpu"
            # evaluation after a TrainJob runs on one node with gpus_per_node GPUs
            counts = ("num_gpus",) if step == "train" else ("num_gpus", "gpus_per_node")
            assert accel["resourceCount"] in [f"{{{{$.inputs.parameters['pipelinechannel--{c}']}}}}" for c in counts]
            platform = k8s[name]
            # inside a condition the run parameter arrives as pipelinechannel--NAME
            selector = platform["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
            assert selector in ("gpu_node_selector", "pipelinechannel--gpu_node_selector")
            (toleration,) = platform["tolerations"]
            assert toleration["tolerationJson"]["componentInputParameter"] in (
                "gpu_tolerations",
                "pipelinechannel--gpu_tolerations",
            )
            assert platform["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "volumeName": "dshm"}]
    for step in CPU_STEPS:
        for name, executor in _executors(spec, step).items():
            assert "accelerator" not in executor["container"]["resources"]
            assert "nodeSelector" not in k8s.get(name, {}), f"{name} must not be pinned to the GPU pool"


def test_gpu_pool_names_are_run_parameters(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"
    assert params["gpu_node_selector"]["defaultValue"] == {"nvidia.com/gpu.present": "true"}
    assert params["gpu_tolerations"]["parameterType"] == "LIST"
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for name in ("dataset", "source", "sid_uri", "experiment", "train_overrides", "num_gpus", "image_tag"):
        assert name in params
    assert params["image_tag"]["defaultValue"] == DEFAULT_TAG
    assert params["num_gpus"]["parameterType"] == "NUMBER_INTEGER"
    # config overrides travel typed (a JSON object), not as shell-quoted text
    assert params["train_overrides"]["parameterType"] == params["eval_overrides"]["parameterType"] == "STRUCT"


def test_images_and_no_install_at_run_time(compiled):
    spec, _ = compiled
    for steps, image in ((CPU_STEPS, "madrec"), (GPU_STEPS, "madrec-cuda")):
        for step in steps:
            for executor in _executors(spec, step).values():
                container = executor["container"]
                assert container["image"] == (
                    f"{DEFAULT_REGISTRY}/{image}:{{{{$.inputs.parameters['pipelinechannel--image_tag']}}}}"
                )
                command = " ".join(container["command"])
                assert "pip install" not in command and "kfp.dsl.executor_main" in command


def test_caching(compiled):
    spec, _ = compiled
    caching = {}
    for _, _name, task in _tasks(spec):
        if task["componentRef"]["name"].startswith(tuple(f"comp-{s}" for s in CPU_STEPS + GPU_STEPS)):
            caching.setdefault(task["taskInfo"]["name"], set()).add(
                task.get("cachingOptions", {}).get("enableCache", False)
            )
    assert caching == {
        "prepare-data": {True},
        "ingest-sids": {True},
        "build-sids": {True},
        "train": {True},
        "train (TrainJob)": {True},
        "evaluate": {False},
    }


def test_sids_branch_on_sid_uri(compiled):
    spec, _ = compiled
    conditions = {
        task["taskInfo"]["name"]: task["triggerPolicy"]["condition"]
        for _, _, task in _tasks(spec)
        if "triggerPolicy" in task
    }
    assert conditions["sids-from-uri"] == "inputs.parameter_values['pipelinechannel--sid_uri'] != ''"
    assert conditions["sids-from-text"] == "!(inputs.parameter_values['pipelinechannel--sid_uri'] != '')"
    assert conditions["one-experiment"] == "inputs.parameter_values['pipelinechannel--experiments'] == ''"
    assert conditions["compare-experiments"] == "!(inputs.parameter_values['pipelinechannel--experiments'] == '')"
    # each branch trains and evaluates (one experiment, or several compared) on the SIDs it produced
    component = {task["taskInfo"]["name"]: task["componentRef"]["name"] for _, _, task in _tasks(spec)}
    for branch, producer in (("sids-from-uri", "ingest-sids"), ("sids-from-text", "build-sids")):
        below = _nested_tasks(spec, component[branch])
        for name in ("train-and-evaluate", "train-and-compare"):
            (task,) = [t for t in below if t["taskInfo"]["name"] == name]
            source = task["inputs"]["artifacts"]["sids"]
            assert (
                source.get("taskOutputArtifact", {}).get("producerTask") == producer
                or source.get("componentInputArtifact") == f"pipelinechannel--{producer}-sids"
            ), source


def _nested_tasks(spec, component: str) -> list[dict]:
    """The tasks of a component's DAG and of the condition branches nested in it."""
    out = []
    for task in spec["components"][component]["dag"]["tasks"].values():
        out.append(task)
        if task["componentRef"]["name"].startswith("comp-condition"):
            out += _nested_tasks(spec, task["componentRef"]["name"])
    return out


def test_multi_node_branch_launches_a_trainjob(compiled):
    spec, k8s = compiled
    conditions = [task["triggerPolicy"]["condition"] for _, _, task in _tasks(spec) if "triggerPolicy" in task]
    assert "int(inputs.parameter_values['pipelinechannel--num_nodes']) > 1" in conditions
    for name in _executors(spec, "launch-trainjob"):
        # the launcher stages inputs on the shared volume that the TrainJob's pods mount too
        assert k8s[name]["pvcMount"] == [
            {
                "constant": "madrec-data",
                "mountPath": "/mnt/madrec",
                "pvcNameParameter": {"runtimeValue": {"constant": "madrec-data"}},
            }
        ]
    launches = [task for _, _, task in _tasks(spec) if task["taskInfo"]["name"] == "train (TrainJob)"]
    assert len(launches) == 2  # one per SID branch
    for task in launches:
        params = task["inputs"]["parameters"]
        assert params["trainer_image"]["runtimeValue"]["constant"] == (
            f"{DEFAULT_REGISTRY}/madrec-cuda:{{{{$.inputs.parameters['pipelinechannel--image_tag']}}}}"
        )
        assert params["num_nodes"] == {"componentInputParameter": "pipelinechannel--num_nodes"}


def test_deploy_follows_every_single_experiment_evaluation(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["deploy_min_recall_at_10"]["defaultValue"] > 1  # off unless a run asks for it
    deploys = [task for _, _, task in _tasks(spec) if task["taskInfo"]["name"] == "deploy"]
    assert len(deploys) == 4  # single- and multi-node, in both SID branches
    for task in deploys:
        assert task["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]["producerTask"].startswith("evaluate")
        assert task.get("cachingOptions", {}).get("enableCache", False) is False


def test_every_run_parameter_is_described(compiled):
    """The KFP UI's run form shows these descriptions (the pipeline docstring's Args:)."""
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params, "the pipeline has no run parameters?"
    missing = sorted(name for name, p in params.items() if not p.get("description", "").strip())
    assert not missing, f"run parameters without a description (add them to Args: of madrec_pipeline): {missing}"


def test_every_component_input_and_output_is_described(compiled):
    """Every component and sub-pipeline documents its inputs and outputs (Args: / Returns:);
    only the channels kfp adds to its condition and loop DAGs (pipelinechannel--*) carry none."""
    spec, _ = compiled
    missing = []
    for name, component in spec["components"].items():
        for side in ("inputDefinitions", "outputDefinitions"):
            for kind in ("parameters", "artifacts"):
                for key, entry in component.get(side, {}).get(kind, {}).items():
                    if not key.startswith("pipelinechannel--") and not entry.get("description", "").strip():
                        missing.append(f"{name}.{key}")
    assert not missing, f"undescribed component inputs/outputs: {missing}"
