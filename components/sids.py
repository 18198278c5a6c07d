"""Components: the semantic IDs, either ingested from a GRID file or built from item text."""
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from madrec.ops.images import image


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def ingest_sids(
    source: str,
    dataset: Input[Dataset],
    sids: Output[Artifact],
    sid_report: Output[HTML],
    sid_metrics: Output[Metrics],
):
    """Validate a GRID SID file (local path, http(s) or gs:// URI) against the dataset and
    publish it as the (H, N) int64 SID tensor with its quality report."""
    from madrec.ops.steps import ingest_sids_step

    ingest_sids_step(source, dataset.path, sids, sid_report, sid_metrics)


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def build_sids(
    dataset: Input[Dataset],
    encoder: str,
    levels: int,
    codebook_size: int,
    seed: int,
    sids: Output[Artifact],
    codebooks: Output[Artifact],
    sid_report: Output[HTML],
    sid_metrics: Output[Metrics],
):
    """Embed every item's text, quantise with residual k-means and add the de-dup digit:
    the (H, N) int64 SID tensor, the codebooks and the quality report."""
    from madrec.ops.steps import build_sids_step

    build_sids_step(dataset.path, encoder, levels, codebook_size, seed, sids, codebooks, sid_report, sid_metrics)
