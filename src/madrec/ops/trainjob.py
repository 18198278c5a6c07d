"""Multi-node training as a Kubeflow Trainer (v2.3) TrainJob.

`build_trainjob` writes the TrainJob for `num_nodes` x `gpus_per_node` processes running
`torchrun -m madrec.cli train key=value ...` on the `madrec-torch` runtime (manifests/base).
The operator's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR
and PET_MASTER_PORT on every node; torchrun reads them as its defaults and gives each process
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, which Lightning picks up.

`TrainJobClient` creates the job, follows it with a progress line per poll (pod phases, why a
pod waits, the last log line of node 0) and turns a failure into a MadrecError that carries the
failed pods' exit codes, log tails and warning events. `launch` is what the KFP launcher step
runs: inputs staged on the shared volume, job run, best checkpoint copied back.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from madrec.errors import MadrecError
from madrec.io import atomic_dir, atomic_file
from madrec.ops.images import image as image_ref
from madrec.ops.steps import PIPELINE_KEYS
from madrec.overrides import refuse_keys

log = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "trainjobs"
DEFAULT_RUNTIME = "madrec-torch"
# The shared volume (manifests/base/storage.yaml): same claim, same path in launcher and job pods.
SHARED_PVC = "madrec-data"
SHARED_MOUNT = "/mnt/madrec"
COMMAND = ("torchrun", "-m", "madrec.cli", "train")
# Waiting reasons that never resolve on their own: fail now instead of at the timeout.
# A progress line at least this often, even when nothing changed.
HEARTBEAT_S = 300.0
FATAL_WAITING = {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "ErrImageNeverPull"}
TRAINER_MODELS = {
    "TrainJob": "TrainerV1alpha1TrainJob",
    "TrainingRuntime": "TrainerV1alpha1TrainingRuntime",
    "ClusterTrainingRuntime": "TrainerV1alpha1ClusterTrainingRuntime",
}
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def job_name(prefix: str = "madrec-train") -> str:
    """A fresh TrainJob name: prefix, UTC time to the second and 4 random hex digits."""
    return f"{prefix}-{time.strftime('%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def build_trainjob(
    name: str,
    train_args: Sequence[str],
    *,
    num_nodes: int,
    gpus_per_node: int,
    image: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    namespace: str | None = None,
    cpu_per_node: str | None = None,
    memory_per_node: str | None = None,
) -> dict:
    """The TrainJob manifest (a dict ready for the API), validated against the Trainer models.

    gpus_per_node=0 runs one CPU process per node (gloo), e.g. on a test cluster.
    """
    if not _DNS1035.fullmatch(name) or len(name) > 63:
        raise MadrecError(
            f"TrainJob name {name!r}: use at most 63 lower-case letters, digits and '-', starting with a letter"
        )
    if num_nodes < 1:
        raise MadrecError(f"num_nodes={num_nodes}: a TrainJob needs at least one node")
    if gpus_per_node < 0:
        raise MadrecError(f"gpus_per_node={gpus_per_node}: use 0 (CPU) or a positive GPU count")
    resources: dict[str, dict[str, str]] = {}
    if gpus_per_node:
        resources["limits"] = {"nvidia.com/gpu": str(gpus_per_node)}
        resources["requests"] = {"nvidia.com/gpu": str(gpus_per_node)}
    for key, value in (("cpu", cpu_per_node), ("memory", memory_per_node)):
        if value:
            resources.setdefault("requests", {})[key] = str(value)
    trainer = {
        "image": image or image_ref("madrec-cuda"),
        "command": list(COMMAND),
        "args": [str(a) for a in train_args],
        "numNodes": num_nodes,
        "numProcPerNode": max(gpus_per_node, 1),
    }
    if resources:
        trainer["resourcesPerNode"] = resources
    metadata = {"name": name, "labels": {"app.kubernetes.io/name": "madrec", "app.kubernetes.io/component": "train"}}
    if namespace:
        metadata["namespace"] = namespace
    job = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": metadata,
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "TrainingRuntime", "name": runtime},
            "trainer": trainer,
        },
    }
    validate_trainer_object(job)
    return job


def validate_trainer_object(obj: dict, source: str = "") -> None:
    """Check a TrainJob / (Cluster)TrainingRuntime against the Kubeflow Trainer API models.

    Types are checked by the models; fields the models do not know (typos, fields of another
    Trainer version) are found by comparing the object with its parse-and-dump round trip.
    """
    import pydantic
    from kubeflow_trainer_api import models

    kind = obj.get("kind")
    where = f"{source}: " if source else ""
    label = f"{where}{kind} {obj.get('metadata', {}).get('name', '?')!r}"
    if obj.get("apiVersion") != API_VERSION or kind not in TRAINER_MODELS:
        raise MadrecError(
            f"{where}apiVersion/kind {obj.get('apiVersion')}/{kind} is not a Kubeflow "
            f"Trainer object ({API_VERSION}: {', '.join(TRAINER_MODELS)})"
        )
    try:
        parsed = getattr(models, TRAINER_MODELS[kind]).from_dict(obj)
    except pydantic.ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MadrecError(f"{label}: {errors}") from exc
    unknown = _lost_fields(obj, parsed.to_dict())
    if unknown:
        raise MadrecError(f"{label}: field(s) not in the Kubeflow Trainer {VERSION} API: {', '.join(unknown)}")


def _lost_fields(original, dumped, path: str = "") -> list[str]:
    """Paths in `original` that the round trip dropped or changed."""
    if isinstance(original, dict) and isinstance(dumped, dict):
        out = []
        for key, value in original.items():
            sub = f"{path}.{key}" if path else key
            out += [sub] if key not in dumped else _lost_fields(value, dumped[key], sub)
        return out
    if isinstance(original, list) and isinstance(dumped, list) and len(original) == len(dumped):
        return [p for i, (a, b) in enumerate(zip(original, dumped)) for p in _lost_fields(a, b, f"{path}[{i}]")]
    return [] if original == dumped else [path]


def current_namespace() -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else `default`."""
    in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if in_cluster.is_file():
        return in_cluster.read_text().strip()
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()
    except Exception:  # no kubeconfig: the client will say so when it connects
        return "default"
    return (context or {}).get("context", {}).get("namespace") or "default"


def _api_error(exc, what: str, namespace: str) -> MadrecError:
    status = getattr(exc, "status", None)
    try:
        detail = json.loads(exc.body)["message"]
    except Exception:  # body is not always the API's Status JSON
        detail = getattr(exc, "reason", None) or str(exc)
    hint = {
        403: (
            f"the launcher's service account may not do this in namespace {namespace!r}; apply "
            "manifests/overlays/<cluster> there (Role/RoleBinding madrec-trainjob-launcher)"
        ),
        404: (
            f"{detail}; is Kubeflow Trainer v2.3+ installed and manifests/overlays/<cluster> applied in {namespace!r}?"
        ),
        409: "a TrainJob with this name already exists; pick another name",
    }.get(status, detail)
    return MadrecError(f"{what}: Kubernetes API error {status}: {hint}")


class TrainJobClient:
    """Create, follow and delete TrainJobs in one namespace."""

    def __init__(
        self,
        namespace: str | None = None,
        custom_api=None,
        core_api=None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if custom_api is None or core_api is None:
            custom_api, core_api = _connect()
        self.namespace = namespace or current_namespace()
        self.custom, self.core = custom_api, core_api
        self.sleep, self.clock = sleep, clock

    def create(self, job: dict) -> None:
        from kubernetes.client.exceptions import ApiException

        name = job["metadata"]["name"]
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job)
        except ApiException as exc:
            raise _api_error(exc, f"creating TrainJob {name}", self.namespace) from exc
        spec = job["spec"]["trainer"]
        log.info(
            "created TrainJob %s/%s: %d node(s) x %d process(es), image %s",
            self.namespace,
            name,
            spec["numNodes"],
            spec["numProcPerNode"],
            spec["image"],
        )

    def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Foreground"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"deleting TrainJob {name}", self.namespace) from exc

    def wait(self, name: str, timeout_s: float, poll_s: float = 30.0) -> None:
        """Block until the job completes; MadrecError (with logs and events) if it fails.

        On timeout the job is deleted, so its GPUs are freed, and MadrecError is raised.
        """
        from kubernetes.client.exceptions import ApiException

        start = self.clock()
        last_status = last_line = None
        last_logged = -HEARTBEAT_S
        while True:
            try:
                job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            except ApiException as exc:
                raise _api_error(exc, f"reading TrainJob {name}", self.namespace) from exc
            conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
            if _true(conditions.get("Complete")):
                log.info("TrainJob %s completed after %s", name, _duration(self.clock() - start))
                return
            pods = self._pods(name)
            if _true(conditions.get("Failed")):
                message = conditions["Failed"].get("message") or conditions["Failed"].get("reason") or "failed"
                raise MadrecError(self._failure_report(name, f"TrainJob {name} failed: {message}", pods))
            fatal = _fatal_pod_problem(pods)
            if fatal:
                raise MadrecError(self._failure_report(name, f"TrainJob {name}: {fatal}", pods))
            status = _pods_summary(pods)
            line = self._node0_last_line(pods)
            elapsed = self.clock() - start
            if status != last_status or line != last_line or elapsed - last_logged >= HEARTBEAT_S:
                log.info(
                    "TrainJob %s [%s]: %s%s", name, _duration(elapsed), status, f" | node 0: {line}" if line else ""
                )
                last_status, last_line, last_logged = status, line, elapsed
            if elapsed > timeout_s:
                self.delete(name)
                raise MadrecError(
                    self._failure_report(
                        name,
                        f"TrainJob {name} did not finish within {_duration(timeout_s)}; deleted it "
                        "to free its GPUs (raise the launcher's timeout_hours)",
                        pods,
                    )
                )
            self.sleep(poll_s)

    def _pods(self, name: str) -> list:
        selector = f"jobset.sigs.k8s.io/jobset-name={name}"
        return sorted(
            self.core.list_namespaced_pod(self.namespace, label_selector=selector).items, key=lambda p: p.metadata.name
        )

    def _node0_last_line(self, pods: list) -> str:
        running = [p for p in pods if p.status.phase == "Running"]
        if not running:
            return ""
        node0 = next(
            (p for p in running if (p.metadata.labels or {}).get("batch.kubernetes.io/job-completion-index") == "0"),
            running[0],
        )
        try:
            text = self.core.read_namespaced_pod_log(
                node0.metadata.name, self.namespace, container="node", tail_lines=5
            )
        except Exception:  # the container may be restarting or gone; progress is best-effort
            return ""
        lines = [seg.strip() for seg in re.split(r"[\r\n]+", text or "") if seg.strip()]
        return lines[-1][:200] if lines else ""

    def _failure_report(self, name: str, headline: str, pods: list, tail: int = 30) -> str:
        parts = [headline]
        for pod in pods:
            for cs in pod.status.container_statuses or []:
                term = cs.state.terminated if cs.state else None
                if term is None or term.exit_code == 0:
                    continue
                parts.append(
                    f"--- pod {pod.metadata.name}: container {cs.name} exited {term.exit_code} "
                    f"({term.reason or 'Error'}); last {tail} log lines:"
                )
                try:
                    parts.append(
                        (
                            self.core.read_namespaced_pod_log(
                                pod.metadata.name, self.namespace, container=cs.name, tail_lines=tail
                            )
                            or ""
                        ).rstrip()
                    )
                except Exception as exc:  # logs may already be gone with the pod
                    parts.append(f"(no logs: {exc})")
        try:
            events = self.core.list_namespaced_event(self.namespace).items
        except Exception as exc:  # events are context only; the headline already says what failed
            events, parts = [], parts + [f"(cannot list events: {exc})"]
        warnings = [
            e
            for e in events
            if e.type == "Warning" and e.involved_object is not None and (e.involved_object.name or "").startswith(name)
        ]
        if warnings:
            parts.append("--- warning events:")
            parts += [
                f"{e.involved_object.kind} {e.involved_object.name}: {e.reason}: {e.message}" for e in warnings[-20:]
            ]
        parts.append(
            f"(kubectl -n {self.namespace} describe trainjob {name}; "
            f"kubectl -n {self.namespace} logs -l jobset.sigs.k8s.io/jobset-name={name} -c node)"
        )
        return "\n".join(parts)


def _connect():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as exc:
            raise MadrecError(
                f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc}); "
                "run inside the cluster or point KUBECONFIG at one"
            ) from exc
    return client.CustomObjectsApi(), client.CoreV1Api()


def _true(condition: dict | None) -> bool:
    return bool(condition) and str(condition.get("status")) == "True"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _fatal_pod_problem(pods: list) -> str:
    for pod in pods:
        for cs in pod.status.container_statuses or []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason in FATAL_WAITING:
                return f"pod {pod.metadata.name} cannot start: {waiting.reason}: {waiting.message}"
    return ""


def _pods_summary(pods: list) -> str:
    """e.g. '2 pods: 1 Running, 1 Pending (Unschedulable: 0/3 nodes have nvidia.com/gpu)'."""
    if not pods:
        return "waiting for pods"
    counts: dict[str, int] = {}
    reasons = []
    for pod in pods:
        counts[pod.status.phase] = counts.get(pod.status.phase, 0) + 1
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.message:
                reasons.append(f"{cond.reason}: {cond.message}")
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.waiting and cs.state.waiting.reason not in (None, "ContainerCreating"):
                reasons.append(f"{cs.state.waiting.reason}: {cs.state.waiting.message or ''}".rstrip(": "))
    text = f"{len(pods)} pods: " + ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items()))
    return text + (f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else "")


def launch(
    data_dir: str | Path,
    sid_path: str | Path,
    model_path: str | Path,
    run_dir: str | Path | None = None,
    *,
    experiment: str,
    overrides: Sequence[str] = (),
    num_nodes: int,
    gpus_per_node: int,
    image: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    shared_dir: str | Path = SHARED_MOUNT,
    timeout_s: float = 48 * 3600,
    poll_s: float = 30.0,
    client: TrainJobClient | None = None,
) -> dict:
    """Run `madrec train` as a TrainJob on staged copies of the inputs; copy best.ckpt to model_path.

    The inputs are copied to SHARED_DIR/trainjobs/<job>/ (the shared volume, mounted at the same
    path in the job's pods) and the job writes its run to SHARED_DIR/trainjobs/<job>/run. With
    `run_dir` the rest of the run (metrics.csv, summary.json, last.ckpt) is copied there and the
    job's folder removed; without it, or when the job fails, the folder stays for inspection.
    Returns the run's summary.json.
    """
    overrides = refuse_keys(overrides, PIPELINE_KEYS, "the pipeline")
    shared, data_dir, sid_path = _check_launch_inputs(Path(shared_dir), Path(data_dir), Path(sid_path))
    client = client or TrainJobClient()
    name = job_name()
    stage = shared / "trainjobs" / name
    args = [
        f"experiment={experiment}",
        f"data_dir={stage / 'data'}",
        f"sid_data_path={stage / 'sids.pt'}",
        f"output_dir={stage / 'run'}",
        *overrides,
    ]
    job = build_trainjob(
        name,
        args,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        image=image,
        runtime=runtime,
        namespace=client.namespace,
    )
    _stage_and_create(client, job, stage, data_dir, sid_path)
    try:
        client.wait(name, timeout_s=timeout_s, poll_s=poll_s)
    except MadrecError as exc:
        raise MadrecError(
            f"{exc}\nthe job's run folder (metrics.csv, last.ckpt) stays in {stage / 'run'} on PVC {SHARED_PVC}"
        ) from exc
    finally:
        # The staged copies are only the job's inputs; the run folder stays for inspection.
        shutil.rmtree(stage / "data", ignore_errors=True)
        (stage / "sids.pt").unlink(missing_ok=True)
    return _collect_run(client, name, stage / "run", Path(model_path), run_dir)


def _check_launch_inputs(shared: Path, data_dir: Path, sid_path: Path) -> tuple[Path, Path, Path]:
    """The shared volume is mounted and the prepared data and SID file are there to stage."""
    if not shared.is_dir():
        raise MadrecError(
            f"shared volume {shared} is not mounted in the launcher; mount PVC {SHARED_PVC} "
            f"there (components/trainjob.py: mount_shared_volume(task))"
        )
    if sid_path.is_dir():
        sid_path = sid_path / "sids.pt"
    for path, what in ((data_dir / "dataset.json", "data_dir (prepared dataset)"), (sid_path, "SID file")):
        if not path.is_file():
            raise MadrecError(f"{path}: missing {what}; the launcher needs prepare-data and SID outputs")
    return shared, data_dir, sid_path


def _stage_and_create(client: TrainJobClient, job: dict, stage: Path, data_dir: Path, sid_path: Path) -> None:
    """Copy the inputs to the shared volume and create the job; nothing stays behind on failure."""
    log.info("staging inputs in %s", stage)
    try:
        shutil.copytree(data_dir, stage / "data")
        shutil.copyfile(sid_path, stage / "sids.pt")
        client.create(job)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _collect_run(client: TrainJobClient, name: str, run: Path, model_path: Path, run_dir: str | Path | None) -> dict:
    """The finished job's best checkpoint to `model_path`, its run folder to `run_dir` (then the
    job's folder is removed); returns its summary.json."""
    best = run / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise MadrecError(
            f"TrainJob {name} completed but wrote no {best}; check its logs "
            f"(kubectl -n {client.namespace} logs -l jobset.sigs.k8s.io/jobset-name={name} -c node)"
        )
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise MadrecError(f"TrainJob {name} completed but wrote no {summary_path}; check its logs")
    summary = json.loads(summary_path.read_text())
    with open(best, "rb") as src, atomic_file(model_path) as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    log.info("TrainJob %s: best checkpoint copied to %s", name, model_path)
    if run_dir is not None:
        with atomic_dir(run_dir) as tmp:
            shutil.copytree(
                run, tmp, ignore=lambda d, names: ["best.ckpt"] if d == str(best.parent) else [], dirs_exist_ok=True
            )
        shutil.rmtree(run.parent)
    return summary
