"""Component: train the masked-diffusion model on one node (`madrec train`, torchrun for N GPUs)."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec-cuda"), install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    sids: Input[Artifact],
    experiment: str,
    overrides: str,
    num_gpus: int,
    model: Output[Model],
    metrics: Output[Metrics],
    run: Output[Artifact],
):
    """Train with `experiment` plus `overrides` (`key=value ...`); more than one GPU launches
    DDP through torchrun. Outputs the self-contained best checkpoint, the final validation
    metrics and the run folder (metrics.csv, summary.json, last.ckpt to resume from)."""
    from madrec.ops.steps import train_step

    train_step(dataset, sids, experiment, overrides, num_gpus, model, metrics, run)
