"""Component: train the masked-diffusion model on one node (`madrec train`, torchrun for N GPUs)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec-cuda"), install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    sids: Input[Artifact],
    experiment: str,
    overrides: dict,
    num_gpus: int,
    model: Output[Model],
    metrics: Output[Metrics],
    run: Output[Artifact],
):
    """Train on one node (`madrec train`); more than one GPU launches DDP through torchrun.

    Args:
        dataset: The prepared dataset (prepare-data).
        sids: The (H, N) SID tensor (build-sids or ingest-sids).
        experiment: Training configuration: a configs/experiment name, e.g. tiny, small,
            discrete_diffusion_train, tiger, sasrec.
        overrides: Extra `madrec train` config keys and their values, e.g.
            `{"trainer.max_steps": 20000, "optim.optimizer.lr": 0.001}`.
        num_gpus: GPUs on the node; 0 trains on CPU, more than one runs DDP.

    Returns:
        model: The self-contained best checkpoint (weights, SIDs, item ids, config).
        metrics: Validation metrics of the best checkpoint, steps and wall time.
        run: The run folder: metrics.csv, summary.json, config.yaml, last.ckpt to resume from.
    """
    from madrec.ops.steps import train_step

    train_step(dataset, sids, experiment, overrides, num_gpus, model, metrics, run)
