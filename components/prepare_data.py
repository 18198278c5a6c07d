"""Component: prepare a dataset into leave-one-out TFRecord splits (`madrec prepare-data`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def prepare_data(kind: str, source: str, items: str, min_item_count: int, dataset: Output[Dataset]):
    """Prepare interactions into leave-one-out TFRecord splits (`madrec prepare-data`).

    Args:
        kind: Input format: `ml-1m` (GroupLens MovieLens-1M), `sequences` (a text file with one
            line per user, "user item item ..." oldest first) or `interactions` (a CSV or
            Parquet table with user_id, item_id, timestamp).
        source: Path or URI (gs://, https://) of the input; `ml-1m` with an empty source downloads
            the GroupLens archive.
        items: Item texts for `sequences` and `interactions`: items.jsonl[.gz] (item_id, text),
            MovieLens movies.dat, or a CSV / Parquet item_id,text table; empty for `ml-1m`.
        min_item_count: Items with fewer interactions than this are removed before splitting
            (users left with fewer than 3 items are dropped).

    Returns:
        dataset: The prepared folder: items/, training/, evaluation/, testing/ GZIP TFRecord
            shards and dataset.json (counts, id maps, what was dropped and why).
    """
    from madrec.ops.steps import prepare_step

    prepare_step(kind, source, items, min_item_count, dataset)
