"""Components of the comparison branch: the experiments to train side by side, and one table."""
from typing import List

from kfp import dsl
from kfp.dsl import HTML, Input, Markdown, Metrics, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def plan_experiments(experiments: str) -> List[str]:
    """The comma-separated `experiments` run parameter as a list (each a configs/experiment name)."""
    from madrec.ops.steps import experiment_list

    return experiment_list(experiments)


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def compare_models(
    summaries: Input[List[Markdown]],
    metrics: Input[List[Metrics]],
    table: Output[Markdown],
    report: Output[HTML],
    comparison: Output[Metrics],
):
    """One table of the test metrics of every experiment trained in parallel (Markdown and HTML),
    and the same numbers as `<experiment>/test/recall@10`-style metrics."""
    from madrec.ops.steps import compare_step

    compare_step(summaries, metrics, table, report, comparison)
