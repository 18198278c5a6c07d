"""Component: evaluate a checkpoint with constrained beam decoding (`madrec evaluate`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec-cuda"), install_kfp_package=False)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    split: str,
    overrides: dict,
    num_gpus: int,
    metrics: Output[Metrics],
    report: Output[HTML],
    predictions: Output[Dataset],
    summary: Output[Markdown],
):
    """Evaluate a checkpoint with constrained beam decoding (`madrec evaluate`).

    Args:
        model: The checkpoint to evaluate (a train step's model).
        dataset: The prepared dataset the model was trained on.
        split: `test` or `val`.
        overrides: Extra `madrec evaluate` settings, e.g. `{"beam_size": 20, "ks": [5, 10, 20]}`.
        num_gpus: GPUs; more than one shards the users over processes (torchrun).

    Returns:
        metrics: Recall@K and NDCG@K, the most-popular baseline, unconstrained decoding and the
            decoding-steps sweep.
        report: The evaluation report (HTML).
        predictions: Top-K lists per user (Parquet: user, rank, item_id, item, score).
        summary: One-screen Markdown summary: data, model, metrics table.
    """
    from madrec.ops.steps import evaluate_step

    evaluate_step(model, dataset, split, overrides, num_gpus, metrics, report, predictions, summary)
