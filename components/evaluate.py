"""Component: evaluate a checkpoint with constrained beam decoding (`madrec evaluate`)."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec-cuda"), install_kfp_package=False)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    split: str,
    overrides: str,
    num_gpus: int,
    metrics: Output[Metrics],
    report: Output[HTML],
    predictions: Output[Dataset],
    summary: Output[Markdown],
):
    """Recall@K / NDCG@K on `split` (overrides such as `beam_size=20`), the HTML report, the
    top-K predictions (Parquet) and a Markdown summary table."""
    from madrec.ops.steps import evaluate_step

    evaluate_step(model, dataset, split, overrides, num_gpus, metrics, report, predictions, summary)
