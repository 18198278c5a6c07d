"""Component: deploy the evaluated model as a KServe InferenceService, only when it is good enough.

Wiring (in a pipeline, after the evaluate task on the test split):

    deployed = deploy(model=<train task>.outputs["model"], metrics=<evaluate task>.outputs["metrics"],
                      min_recall_at_10=deploy_min_recall_at_10, service_name=deploy_service_name,
                      namespace=deploy_namespace, use_gpu=deploy_gpu, image_tag=image_tag)
    deployed.set_caching_options(False)

With `min_recall_at_10` > 1 (no Recall@10 reaches it) the step decides "skipped" and touches
nothing, so a pipeline can always include it and turn deployment on by the run parameter.
"""
from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def deploy(
    model: Input[Model],
    metrics: Input[Metrics],
    min_recall_at_10: float,
    service_name: str,
    namespace: str,
    use_gpu: bool,
    image_tag: str,
) -> str:
    """Create or update InferenceService `service_name` (in `namespace`, default: the step's own)
    serving `model` with `madrec serve` when the evaluation's test/recall@10 >= min_recall_at_10;
    returns the decision ("deployed: ..." or "skipped: ...")."""
    from madrec.ops.deploy import deploy_step

    return deploy_step(model.uri, metrics.path, dict(metrics.metadata), min_recall_at_10, service_name,
                       namespace, gpu=use_gpu, tag=image_tag or None)
