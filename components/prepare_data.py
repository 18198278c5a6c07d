"""Component: prepare a dataset into TFRecord splits (`madrec prepare-data`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def prepare_data(
    kind: str,
    source: str,
    items: str,
    min_item_count: int,
    dataset: Output[Dataset],
    split: str = "leave-one-out",
    cutoff: float = 0.0,
    cutoff_quantile: float = 0.0,
    holdout_items: float = 0.0,
    holdout_seed: int = 0,
):
    """Prepare interactions into TFRecord splits (`madrec prepare-data`; protocols: docs/data.md).

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
        split: `leave-one-out` (each user's last item tests, the one before validates) or
            `temporal` (a global cut-off in time; ml-1m and interactions only).
        cutoff: temporal: the cut-off in the unit of the input's timestamps; 0 = use cutoff_quantile.
        cutoff_quantile: temporal: cut off at this quantile of all timestamps, e.g. 0.8; 0 = use cutoff.
        holdout_items: leave-one-out: share of items kept only as test targets (new items); 0 = none.
        holdout_seed: Seed of the holdout_items draw.

    Returns:
        dataset: The prepared folder: items/, training/, evaluation/, testing/ GZIP TFRecord
            shards and dataset.json (counts, id maps, what was dropped and why).
    """
    from madrec.ops.steps import prepare_step

    protocol = dict(split=split, cutoff=cutoff, cutoff_quantile=cutoff_quantile, holdout_items=holdout_items)
    prepare_step(kind, source, items, min_item_count, dataset, protocol, holdout_seed)
