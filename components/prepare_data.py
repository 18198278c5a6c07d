"""Component: prepare a dataset into leave-one-out TFRecord splits (`madrec prepare-data`)."""
from kfp import dsl
from kfp.dsl import Dataset, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def prepare_data(kind: str, source: str, items: str, min_item_count: int, dataset: Output[Dataset]):
    """Prepare `source` (`kind` ml-1m, sequences or interactions; ml-1m with an empty source
    downloads the GroupLens archive) into items/, training/, evaluation/, testing/ splits."""
    from madrec.ops.steps import prepare_step

    prepare_step(kind, source, items, min_item_count, dataset)
