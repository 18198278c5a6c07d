"""The CPU image for real (`make test-images`): every step in a container, as the image's user.

`make test-images` builds the image, then runs this file with MADREC_IMAGE_TESTS=1. Each step
runs in its own container with a host folder mounted at /data (the layout docker/compose.yaml
uses), on a small slice of Amazon Beauty: `madrec --help`, prepare-data, build-sids with the
shipped encoder and no network, a short train, evaluate, recommend; then one compose service as
users run it, and the whole compiled pipeline under kfp's DockerRunner (podman's Docker-API
socket here). Every step's outputs are checked, and so are their owner (the image's user, uid
1000) and the container's own file system (`diff`: nothing written outside /data).
Steps run one after another on the previous step's outputs (module order).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MADREC_IMAGE_TESTS") != "1",
        reason="container tests run through `make test-images` (builds the image first)",
    ),
]

IMAGE = os.environ.get("MADREC_TEST_IMAGE", "ghcr.io/madrec-project/madrec:0.1.0")
DOCKER = os.environ.get("MADREC_TEST_DOCKER", "podman")
UID = GID = 1000  # docker/Dockerfile: USER 1000:1000
USERS = 300  # Beauty slice: the first 300 users (~700 items seen at least twice)
PREP = [
    "--dataset",
    "sequences",
    "--source",
    "/data/raw/Beauty.txt",
    "--items",
    "/data/raw/items.jsonl.gz",
    "--min-item-count",
    "2",
]
SIDS = ["--levels", "3", "--codebook-size", "16"]
TRAIN = [
    "experiment=tiny",
    "trainer.max_steps=50",
    "trainer.val_every_n_steps=25",
    "trainer.checkpoint_every_n_steps=25",
    "trainer.log_every_n_steps=10",
    "trainer.progress_bar=false",
    "eval.val_max_users=100",
]
EVAL = ["split=test", "beam_size=10", "ks=[5,10]", "predictions=true", "compare_users=50"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# What the container runtime itself puts into every container (mount points of /etc/hosts etc.)
RUNTIME_FILES = {
    "/etc",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run",
    "/run/.containerenv",
    "/run/secrets",
    "/data",
}


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "podman" / "containers.conf"))
    return env


def docker(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=_env(), timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{DOCKER} {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def in_container(data: Path, *args: str, network: str | None = None, entrypoint: str | None = None) -> str:
    """`madrec ARGS` in a fresh container of IMAGE with `data` at /data; returns its output.
    Fails when the step fails or when it wrote anything into the container outside /data."""
    name = f"madrec-test-{uuid.uuid4().hex[:10]}"
    opts = ["--name", name, "--volume", f"{data}:/data"]
    for key, value in ENV.items():
        opts += ["--env", f"{key}={value}"]
    if network:
        opts += ["--network", network]
    if entrypoint:
        opts += ["--entrypoint", entrypoint]
    start = time.perf_counter()
    try:
        proc = docker("run", *opts, IMAGE, *args, check=False)
        print(
            f"$ {DOCKER} run ... {IMAGE} {' '.join(args)}  ({time.perf_counter() - start:.0f} s)\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
        assert proc.returncode == 0, (
            f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
        changed = [
            line
            for line in docker("diff", name).stdout.splitlines()
            if line.strip()
            and line.split(maxsplit=1)[-1] not in RUNTIME_FILES
            and line.split() not in (["C", "/tmp"], ["C", "/var/tmp"])
        ]  # temp files, removed again
        assert not changed, f"{' '.join(args)} wrote outside /data: {changed}"
    finally:
        docker("rm", "--force", name, check=False)
    return proc.stdout + proc.stderr


def assert_owned_by_image_user(path: Path) -> None:
    wrong = [str(p) for p in [path, *path.rglob("*")] if p.lstat().st_uid != UID]
    assert not wrong, f"not owned by uid {UID}: {wrong[:10]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data) -> Path:
    """The host folder mounted at /data: raw/ holds the Beauty slice, writable by uid 1000."""
    root = tmp_path_factory.mktemp("images") / "data"
    raw = root / "raw"
    raw.mkdir(parents=True)
    beauty = shared_data / "amazon_beauty"
    lines = (beauty / "Beauty.txt").read_text().splitlines()[:USERS]
    (raw / "Beauty.txt").write_text("\n".join(lines) + "\n")
    shutil.copyfile(beauty / "items.jsonl.gz", raw / "items.jsonl.gz")
    for p in [root, *root.rglob("*")]:
        os.chown(p, UID, GID)
    os.chmod(root.parent, 0o755)
    return root


def test_image_is_built_with_its_user_and_entrypoint():
    info = json.loads(docker("image", "inspect", IMAGE).stdout)[0]
    config = info.get("Config") or info.get("config")
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["madrec"]
    print(f"{IMAGE}: {int(info['Size']) / 2**30:.2f} GiB")


def test_help(data):
    out = in_container(data, "--help")
    for verb in ("prepare-data", "build-sids", "ingest-sids", "train", "evaluate", "recommend"):
        assert verb in out


def test_prepare_data(data):
    in_container(data, "prepare-data", *PREP, "--out", "/data/beauty")
    out = data / "beauty"
    meta = json.loads((out / "dataset.json").read_text())
    assert 0 < meta["num_users"] <= USERS and meta["num_items"] > 100, meta
    for split in ("items", "training", "evaluation", "testing"):
        assert any((out / split).iterdir()), split
    assert_owned_by_image_user(data)


def test_build_sids_with_the_shipped_encoder_offline(data):
    in_container(data, "build-sids", "--data", "/data/beauty", "--out", "/data/beauty_sids", *SIDS, network="none")
    from madrec.sids.format import load_sids

    meta = json.loads((data / "beauty" / "dataset.json").read_text())
    sids = load_sids(data / "beauty_sids" / "sids.pt", meta["num_items"], 16)
    assert tuple(sids.shape) == (4, meta["num_items"])
    assert len({tuple(col) for col in sids.T.tolist()}) == meta["num_items"]  # distinct SIDs
    for name in ("codebooks.pt", "embeddings.pt", "sid_report.json", "sid_report.html"):
        assert (data / "beauty_sids" / name).is_file(), name
    assert_owned_by_image_user(data)


def test_train(data):
    in_container(
        data,
        "train",
        *TRAIN,
        "data_dir=/data/beauty",
        "sid_data_path=/data/beauty_sids/sids.pt",
        "output_dir=/data/run",
        network="none",
    )
    run = data / "run"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert any(key.startswith("test/") for key in summary.get("metrics", summary)), summary
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert_owned_by_image_user(data)


def test_evaluate(data):
    in_container(
        data,
        "evaluate",
        "ckpt_path=/data/run/checkpoints/best.ckpt",
        "data_dir=/data/beauty",
        "output_dir=/data/eval",
        *EVAL,
        network="none",
    )
    metrics = json.loads((data / "eval" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "recall@10" in flat and "ndcg@10" in flat, metrics
    assert (data / "eval" / "report.html").stat().st_size > 1000
    import pyarrow.parquet as pq

    predictions = pq.read_table(data / "eval" / "predictions.parquet")
    assert {"user", "rank", "item_id", "score"} <= set(predictions.column_names) and predictions.num_rows > 0
    assert_owned_by_image_user(data)


def test_recommend(data):
    meta = json.loads((data / "beauty" / "dataset.json").read_text())
    known = set(meta["item_ids"])
    line = (data / "raw" / "Beauty.txt").read_text().splitlines()[1].split()  # a user that was kept
    history = [item for item in line[1:] if item in known][:3]
    assert history
    out = in_container(
        data,
        "recommend",
        "--ckpt",
        "/data/run/checkpoints/best.ckpt",
        "--history",
        ",".join(history),
        "-k",
        "5",
        network="none",
    )
    # the ranked table: "rank item_id score" lines (log lines on stderr may be interleaved)
    rows = [row for row in (line.split() for line in out.splitlines()) if len(row) == 3 and row[0].isdigit()]
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5], out
    assert all(row[1] in known for row in rows), out  # real catalogue items
    assert len({row[1] for row in rows}) == 5, out


def _compose() -> list[str]:
    exe = shutil.which("podman-compose", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if DOCKER.endswith("docker"):
        return [DOCKER, "compose"]
    assert exe, "podman-compose not installed (make test-images installs it)"
    return [exe, "--podman-path", shutil.which(DOCKER) or DOCKER]


def test_compose_runs_one_step_as_users_do(data):
    """`compose run --rm prepare-data ...` with docker/compose.yaml: same files as the direct run."""
    registry, _, tag = IMAGE.rpartition(":")
    env = _env() | {"MADREC_DATA_DIR": str(data), "MADREC_REGISTRY": registry.rsplit("/", 1)[0], "MADREC_TAG": tag}
    cmd = [
        *_compose(),
        "-f",
        str(REPO / "docker" / "compose.yaml"),
        "run",
        "--rm",
        "prepare-data",
        *PREP,
        "--out",
        "/data/beauty_compose",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    print(f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    direct, composed = data / "beauty", data / "beauty_compose"
    files = sorted(p.relative_to(direct) for p in direct.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(composed) for p in composed.rglob("*") if p.is_file())
    for rel in files:
        assert (direct / rel).read_bytes() == (composed / rel).read_bytes(), rel
    assert_owned_by_image_user(composed)


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    """DOCKER_HOST for the docker SDK: the engine's, or a podman API service started here."""
    if DOCKER.endswith("docker"):
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(
        [DOCKER, "system", "service", "--time=0", f"unix://{sock}"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            assert service.poll() is None, service.stderr.read()
            time.sleep(0.1)
        assert sock.exists(), "podman system service did not create its socket"
        yield f"unix://{sock}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_pipeline_under_kfp_docker_runner(data, docker_host, tmp_path_factory):
    """The compiled pipeline, each step in its image (madrec-cuda: the CPU image under its name),
    artifacts passed between containers through the mounted pipeline root, ending in metrics.
    The images get this run's own names (a test registry), so no stale madrec-cuda image of an
    earlier build is used and no image of the user's is retagged."""
    tag = IMAGE.rpartition(":")[2]
    registry = "localhost/madrec-test"
    names = {name: f"{registry}/{name}:{tag}" for name in ("madrec", "madrec-cuda")}
    for name in names.values():
        docker("tag", IMAGE, name)
    root = tmp_path_factory.mktemp("pipeline") / "root"
    cmd = [
        sys.executable,
        str(REPO / "docker" / "run_pipeline_in_containers.py"),
        "--sequences",
        str(data / "raw" / "Beauty.txt"),
        "--items",
        str(data / "raw" / "items.jsonl.gz"),
        "--out",
        str(root),
        "--image-tag",
        tag,
        "--registry",
        registry,
        "--param",
        "min_item_count=2",
        "--param",
        "sid_levels=3",
        "--param",
        "sid_codebook_size=16",
        *[a for item in EVAL[1:] for a in ("--param", f"eval_overrides.{item}")],
        *TRAIN[1:],
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_env() | {"DOCKER_HOST": docker_host}, timeout=1800, cwd=REPO
        )
    finally:
        for name in names.values():
            docker("rmi", name, check=False)  # only the test names: the image keeps its own tag
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    print(
        "\n".join(
            line for line in log.splitlines() if re.search(r"Executing task|finished with status|Found image", line)
        )
    )
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    # each step ran, in its own image, and succeeded
    for step in ("prepare-data", "build-sids", "train", "evaluate"):
        assert re.search(rf"Task '{step}[-\d]*' finished with status SUCCESS", log), f"{step} did not succeed"
    assert f"Found image '{names['madrec']}'" in log and f"Found image '{names['madrec-cuda']}'" in log
    results = next(root.glob("*/results"))
    metrics = json.loads((results / "metrics.json").read_text())
    assert "recall@10" in json.dumps(metrics), metrics
    for name in ("dataset", "sids.pt", "model.ckpt", "report.html"):
        assert (results / name).exists(), name
    # every step ran in a container as the image's user: its outputs are owned by uid 1000
    assert (results / "metrics.json").resolve().stat().st_uid == UID
    assert (results / "model.ckpt").resolve().stat().st_uid == UID
