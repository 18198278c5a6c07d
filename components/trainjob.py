"""Component: train on several nodes as a Kubeflow Trainer TrainJob (madrec.ops.trainjob).

Same inputs and outputs as `components.train.train`, so the pipeline can pick either behind
`num_nodes > 1`. How data moves: the launcher pod and every TrainJob pod mount the shared PVC
`madrec-data` at /mnt/madrec (manifests/base/storage.yaml). The launcher copies its Dataset and
SID input artifacts (KFP has already downloaded them into the launcher pod) to
/mnt/madrec/trainjobs/<job>/, creates the TrainJob that trains from there under torchrun, waits,
then copies the best checkpoint into the Model artifact and the run folder into `run`, which
KFP uploads to its artifact store. Apply `mount_shared_volume` to the task, and run the pipeline
as a service account bound to the `madrec-trainjob-launcher` Role (manifests/).
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from madrec.ops.images import image
from madrec.ops.trainjob import SHARED_MOUNT, SHARED_PVC


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def launch_trainjob(
    dataset: Input[Dataset],
    sids: Input[Artifact],
    experiment: str,
    overrides: dict,
    num_nodes: int,
    gpus_per_node: int,
    model: Output[Model],
    metrics: Output[Metrics],
    run: Output[Artifact],
    trainer_image: str = "",
    runtime: str = "madrec-torch",
    shared_dir: str = "/mnt/madrec",
    timeout_hours: float = 48.0,
):
    """Train on several nodes as a Kubeflow Trainer TrainJob, launched and followed from this step.

    Args:
        dataset: The prepared dataset (copied to the shared volume for the job).
        sids: The (H, N) SID tensor (copied to the shared volume for the job).
        experiment: Training configuration: a configs/experiment name.
        overrides: Extra `madrec train` config keys and their values, e.g. `{"trainer.max_steps": 20000}`.
        num_nodes: Nodes (pods) of the TrainJob.
        gpus_per_node: GPUs per node; one torchrun process each (0: one CPU process per node).
        trainer_image: Image of the job's pods; empty: the madrec-cuda image of this build.
        runtime: The TrainingRuntime the job refers to (manifests/base: madrec-torch).
        shared_dir: Where the shared volume is mounted, here and in the job's pods.
        timeout_hours: Delete the job (freeing its GPUs) and fail when it runs longer.

    Returns:
        model: The self-contained best checkpoint.
        metrics: Validation metrics of the best checkpoint, steps and wall time.
        run: The job's run folder: metrics.csv, summary.json, config.yaml, last.ckpt.
    """
    from madrec.cli import configure_logging
    from madrec.config import as_arguments
    from madrec.ops.images import image as image_ref
    from madrec.ops.steps import publish_metrics
    from madrec.ops.trainjob import launch

    configure_logging()
    summary = launch(
        dataset.path,
        sids.path,
        model.path,
        run.path,
        experiment=experiment,
        overrides=as_arguments(overrides),
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        image=trainer_image or image_ref("madrec-cuda"),
        runtime=runtime,
        shared_dir=shared_dir,
        timeout_s=timeout_hours * 3600,
    )
    publish_metrics(metrics, summary)
    model.metadata.update(
        {
            "experiment": experiment,
            "overrides": overrides,
            "num_nodes": num_nodes,
            "gpus_per_node": gpus_per_node,
            "dataset": dataset.uri,
            "sids": sids.uri,
        }
    )


def mount_shared_volume(
    task: dsl.PipelineTask, pvc_name: str = SHARED_PVC, mount_path: str = SHARED_MOUNT
) -> dsl.PipelineTask:
    """Mount the shared PVC on the launcher task where `launch_trainjob` stages its inputs."""
    from kfp import kubernetes

    return kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=mount_path)
