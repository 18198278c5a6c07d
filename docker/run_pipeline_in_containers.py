#!/usr/bin/env python3
"""Run the compiled madrec pipeline under kfp's local DockerRunner: every step in its image.

    DOCKER_HOST=unix:///run/madrec-podman.sock .venv/bin/python docker/run_pipeline_in_containers.py \\
        --sequences Beauty.txt --items items.jsonl.gz --out runs/containers \\
        [--image-tag 0.1.0] [--registry ghcr.io/madrec-project] [--param sid_levels=3] [KEY=VALUE ...]

DOCKER_HOST is a Docker engine, or podman's Docker-API socket (`podman system service`).
Positional KEY=VALUE arguments are `madrec train` overrides, as for `madrec run-local`; the
images must exist locally (`make build-images`; with num_gpus=0 the CPU image may stand in for
madrec-cuda, tagged under its name). Two adaptations to kfp's local runner, the pipeline YAML
itself is the committed one:
  - kfp's local runner does not resolve the `image_tag` run parameter inside image names (a
    cluster does), so the images are written into a copy of the YAML;
  - DockerRunner passes a step's command as the container's CMD, which our `madrec` ENTRYPOINT
    would prefix; the containers get `env` as entrypoint instead (a cluster overrides it too);
  - kfp 2.17's DockerRunner starts each container with auto_remove and reads its logs and exit
    code afterwards: a step that ends before that is already gone, which kfp then counts as a
    success (NotFound) or, through podman's API (HTTP 500 "no such container"), fails the whole
    run. Here each step's container is removed only after its logs and exit code were read.
DockerRunner mounts only the pipeline root (at the same path), so the inputs are copied under
it, and the root is made writable by the image's user.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pipelines/ for its default file
IMAGE_TAG_PLACEHOLDER = "{{$.inputs.parameters['pipelinechannel--image_tag']}}"
IMAGE_USER = (1000, 1000)  # docker/Dockerfile: USER 1000:1000


def resolve_images(pipeline_text: str, tag: str, registry: str | None) -> str:
    """The pipeline YAML with concrete image references (tag, and optionally registry)."""
    from madrec.ops.images import DEFAULT_REGISTRY

    lines = []
    for line in pipeline_text.splitlines(keepends=True):
        if "ghcr.io" in line or IMAGE_TAG_PLACEHOLDER in line:
            if line.lstrip().startswith(("image:", "constant:")) and "/madrec" in line:
                line = line.replace(IMAGE_TAG_PLACEHOLDER, tag)
                if registry:
                    line = line.replace(f"{DEFAULT_REGISTRY}/", f"{registry.rstrip('/')}/")
        lines.append(line)
    return "".join(lines)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp's `docker_task_handler.run_docker_container`, without its auto_remove race: the
    container is removed after its logs were streamed and its real exit code was read."""
    from kfp.local import docker_task_handler

    image = docker_task_handler.add_latest_tag_if_not_present(image=image)
    if any(image in img.tags + img.attrs.get("RepoDigests", []) for img in client.images.list()):
        print(f"Found image {image!r}\n", flush=True)
    else:
        print(f"Pulling image {image!r}", flush=True)
        client.images.pull(image)
    container = client.containers.run(
        image=image, command=command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="", flush=True)
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def run(args) -> Path:
    from kfp import components, local
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_container  # looked up there at each step

    from madrec.ops.local_run import PIPELINE_FILE, collect_results, link_results, parse_params, pipeline_inputs
    from madrec.ops.pipeline_params import train_overrides_from

    pipeline_file = args.pipeline_file or PIPELINE_FILE
    out = args.out.resolve()
    inputs = out / ".inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    staged = {}
    for key, path in (("source", args.sequences), ("items", args.items)):
        if path:
            target = inputs / Path(path).name
            shutil.copyfile(path, target)
            staged[key] = str(target)
    if os.geteuid() == 0:  # the steps run as the image's non-root user
        chown_tree(out, *IMAGE_USER)

    resolved = Path(tempfile.mkdtemp(prefix="madrec-pipeline-")) / "pipeline.yaml"
    resolved.write_text(resolve_images(Path(pipeline_file).read_text(), args.image_tag, args.registry))
    defaults = {
        "dataset": "sequences",
        **staged,
        "experiment": args.experiment,
        "train_overrides": train_overrides_from(args.overrides, "training overrides"),
        "num_gpus": 0,
        "image_tag": args.image_tag,
    }
    arguments = parse_params(args.param, pipeline_inputs(resolved), base=defaults)
    run_args = {"entrypoint": ["env"], "environment": {"OMP_NUM_THREADS": str(args.threads)}}
    if args.network:
        run_args["network_mode"] = args.network
    local.init(runner=local.DockerRunner(**run_args), pipeline_root=str(out), enable_caching=False)
    before = set(out.iterdir())
    print(f"pipeline in containers: {json.dumps(arguments)} | root {out}", flush=True)
    start = time.perf_counter()
    pipeline = components.load_component_from_file(str(resolved))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        pipeline(**arguments)
    runs = [p for p in out.iterdir() if p not in before and p.is_dir() and not p.name.startswith(".")]
    if len(runs) != 1:
        raise SystemExit(f"{out}: expected one new run folder, found {sorted(p.name for p in runs)}")
    results = collect_results(runs[0])
    folder = link_results(results, runs[0] / "results")
    print(f"pipeline in containers: finished in {time.perf_counter() - start:.0f} s; results in {folder}")
    print(Path(results["summary"]).read_text())
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides")
    p.add_argument("--sequences", required=True, help="'user item item ...' sequences file")
    p.add_argument("--items", required=True, help="item texts (items.jsonl[.gz])")
    p.add_argument("--out", type=Path, required=True, help="pipeline root (mounted into every step)")
    p.add_argument("--experiment", default="tiny")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="other pipeline parameters")
    p.add_argument("--image-tag", default=os.environ.get("MADREC_TAG") or "0.1.0")
    p.add_argument("--registry", default=os.environ.get("MADREC_REGISTRY"), help="default: madrec.ops.images'")
    p.add_argument("--network", default="none", help="container network ('none': the steps run offline; '' = default)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS in the steps")
    p.add_argument("--pipeline-file", type=Path, default=None)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
