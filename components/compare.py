"""Components of the comparison branch: the experiments to train side by side, and one table."""

from kfp import dsl
from kfp.dsl import HTML, Input, Markdown, Metrics, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def plan_experiments(experiments: str) -> list[str]:
    """The experiments to train side by side, checked up front.

    Args:
        experiments: Comma-separated configs/experiment names, e.g. `small,tiger_cpu,sasrec_cpu`.

    Returns:
        Output: The names as a list.
    """
    from madrec.ops.steps import experiment_list

    return experiment_list(experiments)


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def compare_models(
    summaries: Input[list[Markdown]],
    metrics: Input[list[Metrics]],
    table: Output[Markdown],
    report: Output[HTML],
    comparison: Output[Metrics],
):
    """One table of the test metrics of every experiment trained side by side.

    Args:
        summaries: The evaluate steps' Markdown summaries (they name their experiment).
        metrics: The evaluate steps' metrics, in the same order.

    Returns:
        table: The comparison as Markdown, best test Recall@10 first, with most-popular.
        report: The same table as HTML.
        comparison: The same numbers as `<experiment>/test/recall@10`-style metrics.
    """
    from madrec.ops.steps import compare_step

    compare_step(summaries, metrics, table, report, comparison)
