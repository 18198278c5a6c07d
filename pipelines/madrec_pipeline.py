"""The madrec Kubeflow pipeline: prepare data -> semantic IDs -> train -> evaluate.

    python -m pipelines.madrec_pipeline [--out pipelines/madrec_pipeline.yaml]

compiles the IR YAML (`make compile-pipeline`; the result is committed). The same YAML runs
on a cluster (`madrec submit`, or upload it in the KFP UI) and on a laptop (`madrec
run-local`, kfp's SubprocessRunner). Images follow `madrec.ops.images` (MADREC_REGISTRY /
MADREC_TAG at compile time); the `image_tag` run parameter switches the tag per run.

kfp's local runner cannot resolve `dsl.OneOf` over artifacts (kfp 2.17), so instead of
joining the branches, each branch calls the downstream steps as a sub-pipeline.
"""

import argparse
import ast
import inspect
import re
import tempfile
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Input

from components.compare import compare_models, plan_experiments
from components.deploy import deploy
from components.evaluate import evaluate
from components.prepare_data import prepare_data
from components.sids import build_sids, ingest_sids
from components.train import train
from components.trainjob import launch_trainjob, mount_shared_volume
from madrec.data.prepare import ML1M_URL
from madrec.io import write_text_atomic
from madrec.ops.images import image
from madrec.ops.pipeline_params import PIPELINE_FILE
from madrec.sids.cooccur import DEFAULT_COLLABORATIVE_WEIGHT

GPU_RESOURCE = "nvidia.com/gpu"
# Labels and taints of a typical GPU node pool: the NVIDIA GPU operator labels its nodes
# nvidia.com/gpu.present=true; GKE, AKS and EKS GPU pools carry the nvidia.com/gpu taint.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# Requests: a whole local run on Beauty peaked at 1.1 GB RSS per step (bench/pipeline), so the
# CPU steps get ample headroom; GPU steps leave room for data loader workers.
CPU_STEP_RESOURCES = {"cpu": "2", "memory": "8Gi"}
GPU_STEP_RESOURCES = {"cpu": "8", "memory": "32Gi"}
LAUNCHER_RESOURCES = {"cpu": "1", "memory": "4Gi"}  # copies the inputs to the shared volume, then waits


# One description per run parameter (the KFP UI shows them in the run form), shared by the
# pipelines that take it; `_described` writes them into each pipeline's Args: docstring.
PARAMETERS = {
    "dataset": "Input format: `ml-1m` (GroupLens MovieLens-1M), `sequences` (one line per user, "
    "'user item item ...' oldest first) or `interactions` (CSV or Parquet with user_id, item_id, timestamp).",
    "source": "Path or URI (gs://, https://) of the input; for ml-1m the GroupLens archive.",
    "items": "Item texts for sequences / interactions: items.jsonl[.gz] (item_id, text), movies.dat, or a "
    "CSV / Parquet item_id,text table; empty for ml-1m.",
    "min_item_count": "Items with fewer interactions are removed before splitting.",
    "split": "Hold-out protocol: `leave-one-out` (each user's last item tests) or `temporal` (a global "
    "cut-off in time, RecBole's convention; ml-1m and interactions only). docs/data.md has the details.",
    "cutoff": "temporal: the cut-off, in the unit of the input's timestamps; 0 = use cutoff_quantile.",
    "cutoff_quantile": "temporal: cut off at this quantile of all timestamps, e.g. 0.8; 0 = use cutoff.",
    "holdout_items": "leave-one-out: share of items removed from every training and validation history and "
    "kept only as test targets (new items), e.g. 0.05; 0 = none.",
    "holdout_seed": "Seed of the holdout_items draw.",
    "sid_uri": "A SID file made by GRID (path, gs:// or https://) to ingest; empty: build SIDs from the item "
    "texts with the sid_* settings.",
    "sid_encoder": "Text encoder for build-sids (Hugging Face name); empty: all-MiniLM-L6-v2.",
    "sid_levels": "Residual k-means levels; SIDs get one more digit (de-duplication).",
    "sid_codebook_size": "Codes per k-means level.",
    "sid_seed": "Seed of the k-means initialisation.",
    "sid_collaborative_weight": "Share of co-occurrence vectors of the training sequences in the SID k-means "
    "distances, beside the item-text embeddings; 0 = text only, as in the method.",
    "sids": "The (H, N) SID tensor.",
    "experiment": "Training configuration: a configs/experiment name (tiny, small, discrete_diffusion_train, "
    "tiger, sasrec, ...).",
    "experiments": "Comma-separated experiment names to train side by side and compare in one table "
    "(single-node each), e.g. `small,tiger_cpu,sasrec_cpu`; empty: train `experiment` only.",
    "train_overrides": "Extra `madrec train` config keys and values (JSON object), e.g. "
    '`{"trainer.max_steps": 20000, "optim.optimizer.lr": 0.001}`; data_dir, sid_data_path, output_dir, '
    "ckpt_path and split are set by the pipeline.",
    "eval_overrides": 'Extra `madrec evaluate` settings (JSON object), e.g. `{"beam_size": 20, "ks": [5, 10, 20]}`.',
    "num_gpus": "GPUs of the single-node train and evaluate steps; 0 runs on CPU, more than one runs DDP "
    "through torchrun.",
    "num_nodes": "More than 1 trains as a Kubeflow Trainer TrainJob on num_nodes x gpus_per_node GPUs instead "
    "of the single-node train step.",
    "gpus_per_node": "GPUs per node of the TrainJob (num_nodes > 1), and of evaluation after it.",
    "image_tag": "Tag of the madrec and madrec-cuda images every step runs on.",
    "gpu_node_selector": "Node labels that place the GPU steps on the GPU node pool (JSON object).",
    "gpu_tolerations": "Tolerations of the GPU node pool's taints (JSON list of Kubernetes tolerations).",
    "deploy_min_recall_at_10": "Deploy the evaluated model as a KServe InferenceService when its test "
    "Recall@10 reaches this; above 1 (the default) never deploys.",
    "deploy_service_name": "Name of the InferenceService to create or update.",
    "deploy_namespace": "Its namespace; empty: the namespace the run's steps run in.",
    "deploy_gpu": "Serve on the madrec-cuda image with one GPU instead of the CPU image.",
}


def _described(**special: str):
    """Append an Args: section to the pipeline's docstring, one line per parameter from
    PARAMETERS (or `special`, for a name that means something else here); kfp reads it when the
    pipeline is defined, so this decorator goes below @dsl.pipeline."""

    def apply(func):
        names = inspect.signature(func).parameters
        lines = [f"        {name}: {special.get(name) or PARAMETERS[name]}" for name in names]
        func.__doc__ = f"{func.__doc__.rstrip()}\n\n    Args:\n" + "\n".join(lines) + "\n"
        return func

    return apply


def _use_image(task, name: str, tag):
    """Run `task` on image `name` with the run's `tag` (registry from madrec.ops.images)."""
    return task.set_container_image(f"{image(name).rsplit(':', 1)[0]}:{tag}")


def _requests(task, resources: dict):
    return task.set_cpu_request(resources["cpu"]).set_memory_request(resources["memory"])


def _on_gpu_pool(task, num_gpus, node_selector, tolerations):
    """Ask for `num_gpus` GPUs on the GPU node pool, with a memory-backed /dev/shm."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(num_gpus)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    # DataLoader workers and NCCL pass tensors through /dev/shm; a container gets 64 MiB.
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return _requests(task, GPU_STEP_RESOURCES)


def _deploy(model, evaluated, settings: dict, image_tag):
    """Create or update the InferenceService when the test Recall@10 reaches the threshold."""
    task = deploy(model=model, metrics=evaluated.outputs["metrics"], image_tag=image_tag, **settings)
    task.set_caching_options(False).set_display_name("deploy")
    return _requests(_use_image(task, "madrec", image_tag), LAUNCHER_RESOURCES)


def _evaluate(model, dataset, eval_overrides, num_gpus, image_tag, node_selector, tolerations):
    task = evaluate(model=model, dataset=dataset, split="test", overrides=eval_overrides, num_gpus=num_gpus)
    # Always runs, so every run ends with its own report (and local runs can find it).
    task.set_caching_options(False).set_display_name("evaluate")
    _use_image(task, "madrec-cuda", image_tag)
    return _on_gpu_pool(task, num_gpus, node_selector, tolerations)


@dsl.pipeline(
    name="madrec-train-evaluate", description="Train on prepared data and SIDs, then evaluate on the test split."
)
@_described(dataset="The prepared dataset.")
def train_and_evaluate(
    dataset: Input[Dataset],
    sids: Input[Artifact],
    experiment: str,
    train_overrides: dict,
    eval_overrides: dict,
    num_gpus: int,
    num_nodes: int,
    gpus_per_node: int,
    image_tag: str,
    gpu_node_selector: dict,
    gpu_tolerations: list,
    deploy_min_recall_at_10: float,
    deploy_service_name: str,
    deploy_namespace: str,
    deploy_gpu: bool,
):
    """Train on one node (DDP through torchrun for several GPUs) or, with num_nodes > 1, as a
    Kubeflow Trainer TrainJob on num_nodes x gpus_per_node GPUs; then evaluate, then deploy
    when the test Recall@10 reaches deploy_min_recall_at_10."""
    pool = dict(image_tag=image_tag, node_selector=gpu_node_selector, tolerations=gpu_tolerations)
    serving = dict(min_recall_at_10=deploy_min_recall_at_10, service_name=deploy_service_name)
    serving.update(namespace=deploy_namespace, use_gpu=deploy_gpu)
    inputs = dict(dataset=dataset, sids=sids, experiment=experiment, overrides=train_overrides)
    with dsl.If(num_nodes > 1, name="multi-node"):
        trainer_image = f"{image('madrec-cuda').rsplit(':', 1)[0]}:{image_tag}"
        job = launch_trainjob(**inputs, num_nodes=num_nodes, gpus_per_node=gpus_per_node, trainer_image=trainer_image)
        job.set_display_name("train (TrainJob)")
        _requests(_use_image(job, "madrec", image_tag), LAUNCHER_RESOURCES)
        mount_shared_volume(job)
        evaluated = _evaluate(job.outputs["model"], dataset, eval_overrides, gpus_per_node, **pool)
        _deploy(job.outputs["model"], evaluated, serving, image_tag)
    with dsl.Else(name="single-node"):
        trained = train(**inputs, num_gpus=num_gpus)
        trained.set_display_name("train")
        _use_image(trained, "madrec-cuda", image_tag)
        _on_gpu_pool(trained, num_gpus, gpu_node_selector, gpu_tolerations)
        evaluated = _evaluate(trained.outputs["model"], dataset, eval_overrides, num_gpus, **pool)
        _deploy(trained.outputs["model"], evaluated, serving, image_tag)


@dsl.pipeline(
    name="madrec-compare",
    description="Train several experiments in parallel on the same data and SIDs, "
    "evaluate each, and publish one comparison table.",
)
@_described(
    dataset="The prepared dataset.",
    experiments="Comma-separated configs/experiment names, e.g. `small,tiger_cpu,sasrec_cpu`.",
    num_gpus="GPUs of each train and evaluate step; 0 runs on CPU.",
)
def compare_experiments(
    dataset: Input[Dataset],
    sids: Input[Artifact],
    experiments: str,
    train_overrides: dict,
    eval_overrides: dict,
    num_gpus: int,
    image_tag: str,
    gpu_node_selector: dict,
    gpu_tolerations: list,
):
    """One branch per experiment in `experiments` (comma-separated), single-node each; then the table."""
    pool = dict(image_tag=image_tag, node_selector=gpu_node_selector, tolerations=gpu_tolerations)
    plan = plan_experiments(experiments=experiments)
    plan.set_display_name("plan-experiments")
    _requests(_use_image(plan, "madrec", image_tag), LAUNCHER_RESOURCES)
    with dsl.ParallelFor(plan.output, name="each-experiment") as experiment:
        trained = train(dataset=dataset, sids=sids, experiment=experiment, overrides=train_overrides, num_gpus=num_gpus)
        trained.set_display_name("train")
        _use_image(trained, "madrec-cuda", image_tag)
        _on_gpu_pool(trained, num_gpus, gpu_node_selector, gpu_tolerations)
        evaluated = _evaluate(trained.outputs["model"], dataset, eval_overrides, num_gpus, **pool)
    table = compare_models(
        summaries=dsl.Collected(evaluated.outputs["summary"]), metrics=dsl.Collected(evaluated.outputs["metrics"])
    )
    table.set_display_name("compare").set_caching_options(False)
    _requests(_use_image(table, "madrec", image_tag), LAUNCHER_RESOURCES)


def train_evaluate_or_compare(sids, experiments, downstream: dict):
    """The steps after the SIDs: one experiment (train_and_evaluate), or several side by side
    (compare_experiments takes the single-node parameters of `downstream`)."""
    with dsl.If(experiments == "", name="one-experiment"):
        train_and_evaluate(sids=sids, **downstream).set_display_name("train-and-evaluate")
    with dsl.Else(name="compare-experiments"):
        d = downstream
        compare_experiments(
            dataset=d["dataset"],
            sids=sids,
            experiments=experiments,
            train_overrides=d["train_overrides"],
            eval_overrides=d["eval_overrides"],
            num_gpus=d["num_gpus"],
            image_tag=d["image_tag"],
            gpu_node_selector=d["gpu_node_selector"],
            gpu_tolerations=d["gpu_tolerations"],
        ).set_display_name("train-and-compare")


@dsl.pipeline(
    name="madrec",
    description="Masked-diffusion recommender on semantic IDs: prepare data, semantic IDs "
    "(ingest a GRID file when sid_uri is set, else build them), train, evaluate.",
)
@_described()
def madrec_pipeline(
    dataset: str = "ml-1m",
    source: str = ML1M_URL,
    items: str = "",
    min_item_count: int = 5,
    split: str = "leave-one-out",
    cutoff: float = 0.0,
    cutoff_quantile: float = 0.0,
    holdout_items: float = 0.0,
    holdout_seed: int = 0,
    sid_uri: str = "",
    sid_encoder: str = "",
    sid_levels: int = 3,
    sid_codebook_size: int = 256,
    sid_seed: int = 42,
    sid_collaborative_weight: float = DEFAULT_COLLABORATIVE_WEIGHT,
    experiment: str = "discrete_diffusion_train",
    experiments: str = "",
    train_overrides: dict = {},  # noqa: B006 - kfp reads the default from the signature; never mutated
    eval_overrides: dict = {},  # noqa: B006
    num_gpus: int = 1,
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    image_tag: str = image("madrec").rsplit(":", 1)[1],
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_tolerations: list = GPU_TOLERATIONS,
    deploy_min_recall_at_10: float = 2.0,
    deploy_service_name: str = "madrec",
    deploy_namespace: str = "",
    deploy_gpu: bool = False,
):
    """Prepare data, get semantic IDs, train, evaluate (and optionally deploy)."""
    prepared = prepare_data(
        kind=dataset,
        source=source,
        items=items,
        min_item_count=min_item_count,
        split=split,
        cutoff=cutoff,
        cutoff_quantile=cutoff_quantile,
        holdout_items=holdout_items,
        holdout_seed=holdout_seed,
    )
    prepared.set_display_name("prepare-data")
    _requests(_use_image(prepared, "madrec", image_tag), CPU_STEP_RESOURCES)
    data = prepared.outputs["dataset"]
    downstream = dict(
        dataset=data,
        experiment=experiment,
        train_overrides=train_overrides,
        eval_overrides=eval_overrides,
        num_gpus=num_gpus,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        image_tag=image_tag,
        gpu_node_selector=gpu_node_selector,
        gpu_tolerations=gpu_tolerations,
        deploy_min_recall_at_10=deploy_min_recall_at_10,
        deploy_service_name=deploy_service_name,
        deploy_namespace=deploy_namespace,
        deploy_gpu=deploy_gpu,
    )
    with dsl.If(sid_uri != "", name="sids-from-uri"):
        ingested = ingest_sids(source=sid_uri, dataset=data)
        ingested.set_display_name("ingest-sids")
        _requests(_use_image(ingested, "madrec", image_tag), CPU_STEP_RESOURCES)
        train_evaluate_or_compare(ingested.outputs["sids"], experiments, downstream)
    with dsl.Else(name="sids-from-text"):
        built = build_sids(
            dataset=data,
            encoder=sid_encoder,
            levels=sid_levels,
            codebook_size=sid_codebook_size,
            seed=sid_seed,
            collaborative_weight=sid_collaborative_weight,
        )
        built.set_display_name("build-sids")
        _requests(_use_image(built, "madrec", image_tag), CPU_STEP_RESOURCES)
        train_evaluate_or_compare(built.outputs["sids"], experiments, downstream)


def _sorted_keys(value):
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    return [_sorted_keys(v) for v in value] if isinstance(value, list) else value


def _stable_header(text: str) -> str:
    """Sort the dict keys of defaults in the YAML's header comment: kfp prints them in
    protobuf map order, which changes from run to run, and the committed file must not."""

    def fix(m: re.Match) -> str:
        return f"{m[1]}{_sorted_keys(ast.literal_eval(m[2]))!r}]"

    return re.sub(r"^(#    \w+: \w+ \[Default: )(.*)\]$", fix, text, flags=re.M)


def compile_pipeline(out: Path = PIPELINE_FILE) -> Path:
    """Write the pipeline's IR YAML to `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(madrec_pipeline, str(raw))
        write_text_atomic(out, _stable_header(raw.read_text()))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compile the madrec pipeline to KFP IR YAML.")
    parser.add_argument("--out", type=Path, default=PIPELINE_FILE)
    print(compile_pipeline(parser.parse_args().out))
