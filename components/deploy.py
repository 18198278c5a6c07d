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
    """Serve `model` as a KServe InferenceService when its test Recall@10 is high enough.

    Args:
        model: The checkpoint to serve (its URI must be remote storage KServe can fetch).
        metrics: The evaluate step's metrics on the test split.
        min_recall_at_10: Deploy only when test/recall@10 reaches this; above 1 never deploys.
        service_name: Name of the InferenceService to create or update.
        namespace: Its namespace; empty: the namespace the step runs in.
        use_gpu: Serve on the madrec-cuda image with one GPU instead of the CPU image.
        image_tag: Tag of the madrec images; empty: the tag set in this image.

    Returns:
        Output: The decision, "deployed: ..." or "skipped: ...".
    """
    from madrec.ops.deploy import deploy_step

    return deploy_step(
        model.uri,
        metrics.path,
        dict(metrics.metadata),
        min_recall_at_10,
        service_name,
        namespace,
        gpu=use_gpu,
        tag=image_tag or None,
    )
