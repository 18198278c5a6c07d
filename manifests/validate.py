"""Render every overlay with `kubectl kustomize` and validate what comes out, offline.

- Kubernetes kinds: the official OpenAPI schemas of --kubernetes-version (kubernetes-validate,
  strict: unknown fields are errors).
- Kubeflow Trainer kinds (TrainingRuntime, and the TrainJob that madrec.ops.trainjob builds): the
  Trainer v2.3 API models of the `kubeflow-trainer-api` package (madrec.ops.trainjob.validate_trainer_object).
- References between them: the TrainJob's runtime, and the volume claim, config map and service
  account the runtime's pods use, exist in the same overlay; the shared volume is mounted where
  the launcher stages inputs.
- Serving (serving/cpu, serving/gpu): the KServe InferenceService against the v1beta1 API of the
  `kserve` SDK (its OpenAPI-generated models, strict: unknown fields and wrong types are errors)
  and its predictor's pod fields against Kubernetes (madrec.ops.deploy.validate_inferenceservice);
  the deploy step's Role may get/create/update InferenceServices and is bound.

Usage: python manifests/validate.py [--kubernetes-version 1.32] [OVERLAY_DIR ...]
Exit status 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def render(overlay: Path) -> list[dict]:
    """The overlay's resources as `kubectl kustomize` renders them."""
    proc = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{overlay}: kubectl kustomize failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def check_schemas(docs: list[dict], k8s_version: str) -> list[str]:
    """Schema problems, one line each, of every rendered object."""
    import kubernetes_validate

    from madrec.errors import MadrecError
    from madrec.ops.trainjob import GROUP, validate_trainer_object

    problems = []
    for doc in docs:
        label = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if str(doc.get("apiVersion", "")).startswith("serving.kserve.io/"):
            from madrec.ops.deploy import validate_inferenceservice

            problems += validate_inferenceservice(doc, k8s_version)
            continue
        if str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
            try:
                validate_trainer_object(doc)
            except MadrecError as exc:
                problems.append(str(exc))
            continue
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path)) or "(top)"
            problems.append(f"{label}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{label}: no schema for {doc.get('apiVersion')} in Kubernetes {k8s_version}")
    return problems


def check_references(docs: list[dict]) -> list[str]:
    """The sample TrainJob's runtime and the runtime pods' claim/config map/account are defined."""
    from madrec.errors import MadrecError
    from madrec.ops.trainjob import SHARED_MOUNT, SHARED_PVC, build_trainjob, validate_trainer_object

    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    job = build_trainjob("madrec-train-check", ["experiment=tiny"], num_nodes=2, gpus_per_node=4)
    problems = []
    try:
        validate_trainer_object(job, "madrec.ops.trainjob.build_trainjob")
    except MadrecError as exc:
        problems.append(str(exc))
    runtime_name = job["spec"]["runtimeRef"]["name"]
    runtimes = [d for d in docs if d["kind"] == "TrainingRuntime" and d["metadata"]["name"] == runtime_name]
    if not runtimes:
        return problems + [f"TrainingRuntime {runtime_name} (the TrainJob's runtimeRef) is not defined"]
    jobs = runtimes[0]["spec"]["template"]["spec"]["replicatedJobs"]
    nodes = [j for j in jobs if j["name"] == "node"]
    if not nodes:
        return problems + [
            f"TrainingRuntime {runtime_name}: no replicatedJob 'node' (the one the torch plugin configures)"
        ]
    pod = nodes[0]["template"]["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "node"]
    if not containers:
        return problems + [f"TrainingRuntime {runtime_name}: no container 'node' in replicatedJob 'node'"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    for claim in claims.values():
        if ("PersistentVolumeClaim", claim) not in names:
            problems.append(f"TrainingRuntime {runtime_name}: PersistentVolumeClaim {claim} is not defined")
    mounts = {m["mountPath"]: m["name"] for m in containers[0].get("volumeMounts", [])}
    if claims.get(mounts.get(SHARED_MOUNT)) != SHARED_PVC:
        problems.append(
            f"TrainingRuntime {runtime_name}: container 'node' must mount PVC {SHARED_PVC} at "
            f"{SHARED_MOUNT}, where the launcher stages the inputs"
        )
    for source in containers[0].get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref and ("ConfigMap", ref) not in names:
            problems.append(f"TrainingRuntime {runtime_name}: ConfigMap {ref} is not defined")
    account = pod.get("serviceAccountName")
    if account and ("ServiceAccount", account) not in names:
        problems.append(f"TrainingRuntime {runtime_name}: ServiceAccount {account} is not defined")
    return problems


def check_serving(docs: list[dict]) -> list[str]:
    """One InferenceService with a model to fetch; the deploy step's Role is granted and bound."""
    from madrec.ops.deploy import CONTAINER, PLURAL

    problems = []
    services = [d for d in docs if d["kind"] == "InferenceService"]
    if len(services) != 1:
        problems.append(f"expected one InferenceService, found {len(services)}")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    granted = [
        name
        for name, role in roles.items()
        for rule in role.get("rules", [])
        if PLURAL in rule.get("resources", []) and {"get", "create", "update"} <= set(rule.get("verbs", []))
    ]
    if not granted:
        problems.append("no Role lets the deploy step get/create/update inferenceservices")
    bound = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] in granted]
    if granted and not bound:
        problems.append(f"Role {granted[0]} is not bound to any service account")
    for svc in services:
        container = (svc["spec"]["predictor"].get("containers") or [{}])[0]
        if container.get("name") == CONTAINER and container.get("args", [None])[0] != "serve":
            problems.append(
                f"InferenceService {svc['metadata']['name']}: the container must run `madrec serve` "
                "(args starting with serve; the image's entrypoint is madrec)"
            )
    return problems


def _validate(folder: Path, check, valid: str, kubernetes_version: str) -> bool:
    """Render one Kustomize folder and check it; print its problems or one line saying it is valid."""
    try:
        docs = render(folder)
    except RuntimeError as exc:
        print(exc)
        return False
    problems = check_schemas(docs, kubernetes_version) + check(docs)
    for problem in problems:
        print(f"{folder}: {problem}")
    if not problems:
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        print(f"{folder}: {len(docs)} {valid} {kubernetes_version} ({kinds})")
    return not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubernetes-version", default="1.32")
    parser.add_argument("overlays", nargs="*", type=Path)
    args = parser.parse_args(argv)
    overlays = args.overlays or sorted(p for p in (HERE / "overlays").iterdir() if p.is_dir())
    serving = [p for p in overlays if (HERE / "serving") in p.resolve().parents]
    overlays = [p for p in overlays if p not in serving]
    if not args.overlays:
        serving = sorted(p for p in (HERE / "serving").iterdir() if p.is_dir() and p.name != "base")
    checks = [
        (serving, check_serving, "serving objects pass the KServe v1beta1 API of the kserve SDK and Kubernetes"),
        (overlays, check_references, "objects valid for Kubeflow Trainer v1alpha1 and Kubernetes"),
    ]
    failed = False
    for folders, check, valid in checks:
        for folder in folders:
            failed |= not _validate(folder, check, valid, args.kubernetes_version)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
