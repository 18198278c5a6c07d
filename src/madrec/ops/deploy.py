"""Deploying a trained checkpoint as a KServe InferenceService (`madrec serve` in the pod).

- `build_inferenceservice(...)`: the InferenceService object, CPU or GPU, the same object as
  manifests/serving/ (tests keep them in step): a custom predictor container `kserve-container`
  running `madrec serve --ckpt /mnt/models` on the madrec image, the model fetched by KServe's
  storage initializer from `STORAGE_URI` (the pipeline's artifact store, a bucket, or pvc://).
- `validate_inferenceservice(doc)`: offline validation against the KServe v1beta1 API as the
  `kserve` SDK ships it (its OpenAPI-generated models: every field name and type, strictly) plus
  the predictor's pod fields against the Kubernetes OpenAPI schema (kubernetes-validate).
- `deploy_step(...)`: the pipeline's deploy step: create or update the InferenceService when
  the evaluated model's test Recall@10 reaches a threshold, and say why it did or did not.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from madrec.errors import MadrecError
from madrec.ops.images import image

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
CONTAINER = "kserve-container"  # the name KServe gives the predictor container
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
PORT = 8080
RECALL_KEY = "test/recall@10"


def build_inferenceservice(
    name: str = "madrec",
    storage_uri: str = "gs://BUCKET/PATH/TO/model",
    *,
    namespace: str | None = None,
    gpu: bool = False,
    tag: str | None = None,
    registry: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 4,
    max_batch_size: int = 64,
    max_batch_wait_ms: float = 5.0,
) -> dict:
    """The InferenceService for a checkpoint at `storage_uri` (gs://, s3://, https://, pvc://)."""
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 45:
        raise MadrecError(
            f"InferenceService name {name!r} must be a DNS label of at most 45 characters "
            "(lower-case letters, digits, '-', starting with a letter)"
        )
    threads = 1 if gpu else 2
    args = [
        "serve",
        "--ckpt",
        MODEL_DIR,
        "--port",
        str(PORT),
        "--max-batch-size",
        str(max_batch_size),
        "--max-batch-wait-ms",
        f"{max_batch_wait_ms:g}",
        "--threads",
        str(threads),
    ]
    resources = (
        {
            "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
        }
        if gpu
        else {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    )
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 10}
    container = {
        "name": CONTAINER,
        "image": image("madrec-cuda" if gpu else "madrec", registry, tag),
        "args": args + (["--device", "cuda"] if gpu else ["--device", "cpu"]),
        "env": [{"name": "STORAGE_URI", "value": storage_uri}, {"name": "OMP_NUM_THREADS", "value": str(threads)}],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "initialDelaySeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT},
            "periodSeconds": 20,
            "initialDelaySeconds": 30,
        },
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    predictor = {"minReplicas": min_replicas, "maxReplicas": max_replicas, "containers": [container]}
    if gpu:
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    metadata = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "madrec",
            "app.kubernetes.io/part-of": "madrec",
            "app.kubernetes.io/component": "serving",
        },
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


# --- offline validation ------------------------------------------------------------------------

_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool}
_QUANTITY = ("ResourceQuantity", "V1beta1MetricQuantity", "IntOrString")
_RENAMED = {
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
}


def _model_class(type_name: str):
    import kserve.models
    import kubernetes.client.models

    type_name = _RENAMED.get(type_name, type_name)
    return getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name, None)


def _check(value, type_name: str, path: str, problems: list[str]) -> None:
    m = re.fullmatch(r"list\[(.*)\]", type_name)
    if m:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            _check(v, m[1], f"{path}[{i}]", problems)
        return
    m = re.fullmatch(r"dict\(([^,]*), (.*)\)", type_name)
    if m:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for k, v in value.items():
            _check(v, m[2], f"{path}.{k}", problems)
        return
    if type_name in _SCALARS:
        ok = isinstance(value, _SCALARS[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        if not ok:
            problems.append(f"{path}: expected {type_name}, got {value!r}")
        return
    if type_name in _QUANTITY:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append(f"{path}: expected a quantity (string or number), got {value!r}")
        return
    cls = _model_class(type_name)
    if cls is None or type_name in ("object", "V1Time", "datetime"):
        return  # free-form, or a type newer than the installed clients: kubernetes-validate covers pods
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return
    fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in fields:
            problems.append(f"{path}: unknown field {key!r} (not in {type_name})")
        else:
            _check(v, cls.openapi_types[fields[key]], f"{path}.{key}", problems)


def validate_inferenceservice(doc: dict, k8s_version: str = "1.32") -> list[str]:
    """Problems, one line each, of an InferenceService object (empty when valid)."""
    label = f"InferenceService {doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "InferenceService":
        return [
            f"{label}: apiVersion/kind must be {API_VERSION} InferenceService, got "
            f"{doc.get('apiVersion')} {doc.get('kind')}"
        ]
    problems: list[str] = []
    _check(doc, "V1beta1InferenceService", "", problems)
    predictor = (doc.get("spec") or {}).get("predictor")
    if not isinstance(predictor, dict):
        return [f"{label}: {p}" for p in problems] + [f"{label}: spec.predictor is required"]
    # The pod part of the predictor (containers, tolerations, ...) against the Kubernetes schema.
    import kubernetes.client.models
    import kubernetes_validate

    pod_fields = set(kubernetes.client.models.V1PodSpec.attribute_map.values())
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {k: v for k, v in predictor.items() if k in pod_fields},
    }
    try:
        kubernetes_validate.validate(pod, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problems.append(f".spec.predictor.{'.'.join(map(str, list(exc.path)[1:]))}: {exc.message}")
    containers = predictor.get("containers") or []
    if len(containers) != 1 or containers[0].get("name") != CONTAINER:
        problems.append(f".spec.predictor.containers: a custom predictor has one container named {CONTAINER!r}")
    elif "STORAGE_URI" not in {e.get("name") for e in containers[0].get("env", [])}:
        problems.append(
            f".spec.predictor.containers[0].env: STORAGE_URI (the model to fetch into {MODEL_DIR}) is missing"
        )
    return [f"{label}: {p.lstrip('.')}" for p in problems]


# --- the pipeline's deploy step ----------------------------------------------------------------


def read_recall(metrics_path: str | Path, metadata: dict | None = None) -> float:
    """test Recall@10 from an evaluate step's Metrics artifact (JSON file, else its metadata)."""
    values = dict(metadata or {})
    path = Path(metrics_path)
    if path.is_file():
        try:
            values.update(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise MadrecError(f"{path}: metrics are not JSON ({exc})") from exc
    if RECALL_KEY not in values:
        raise MadrecError(
            f"no {RECALL_KEY!r} in the evaluation metrics ({', '.join(sorted(values)) or 'none'}); "
            "deploy needs the metrics of an evaluation on the test split"
        )
    return float(values[RECALL_KEY])


def _current_namespace() -> str:
    sa = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return sa.read_text().strip() if sa.is_file() else "default"


def apply_inferenceservice(doc: dict, api=None) -> str:
    """Create the InferenceService, or replace the spec of the existing one; 'created' | 'updated'."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    if api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
    try:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise MadrecError(f"reading InferenceService {namespace}/{name}: {exc.status} {exc.reason}") from exc
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
        return "created"
    doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
    api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, doc)
    return "updated"


def deploy_step(
    model_uri: str,
    metrics_path: str,
    metrics_metadata: dict | None,
    min_recall: float,
    name: str,
    namespace: str = "",
    gpu: bool = False,
    tag: str | None = None,
    api=None,
) -> str:
    """Deploy `model_uri` as InferenceService `name` when test Recall@10 >= min_recall.

    Returns a one-line decision (also logged): 'deployed ...' or 'skipped ...'."""
    recall = read_recall(metrics_path, metrics_metadata)
    if not recall >= min_recall:
        decision = f"skipped: test Recall@10 {recall:.4f} < threshold {min_recall:.4f}; nothing deployed"
        log.info(decision)
        return decision
    if not model_uri or "://" not in model_uri:
        raise MadrecError(
            f"model URI {model_uri!r} is not a storage URI KServe can fetch (gs://, s3://, pvc://, "
            "https://); run the pipeline with a remote pipeline root"
        )
    doc = build_inferenceservice(name, model_uri, namespace=namespace or _current_namespace(), gpu=gpu, tag=tag)
    problems = validate_inferenceservice(doc)
    if problems:
        raise MadrecError("the InferenceService does not validate: " + "; ".join(problems))
    action = apply_inferenceservice(doc, api)
    decision = (
        f"deployed: test Recall@10 {recall:.4f} >= {min_recall:.4f}; InferenceService "
        f"{doc['metadata']['namespace']}/{name} {action} with {model_uri}"
    )
    log.info(decision)
    return decision
