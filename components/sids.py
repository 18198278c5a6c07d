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
    """Validate a GRID SID file against the dataset and publish it with its quality report.

    Args:
        source: Path, http(s) or gs:// URI of a torch.save'd int64 tensor (H, N): row = SID
            position, column = item index, last row the de-duplication digit.
        dataset: The prepared dataset the SIDs were built for (one column per item).

    Returns:
        sids: The validated (H, N) int64 SID tensor (sids.pt).
        sid_report: Code usage, entropy and collisions per SID position (HTML).
        sid_metrics: The same quality numbers as metrics.
    """
    from madrec.ops.steps import ingest_sids_step

    ingest_sids_step(source, dataset.path, sids, sid_report, sid_metrics)


@dsl.component(base_image=image("madrec"), install_kfp_package=False)
def build_sids(
    dataset: Input[Dataset],
    encoder: str,
    levels: int,
    codebook_size: int,
    seed: int,
    collaborative_weight: float,
    sids: Output[Artifact],
    codebooks: Output[Artifact],
    sid_report: Output[HTML],
    sid_metrics: Output[Metrics],
):
    """Build semantic IDs from item text: frozen encoder, residual k-means, de-dup digit.

    Args:
        dataset: The prepared dataset whose item texts are embedded.
        encoder: Hugging Face model name or folder of the text encoder; empty: the
            all-MiniLM-L6-v2 shipped in the image (works offline).
        levels: Residual k-means levels L; SIDs have L + 1 digits with the de-dup digit.
        codebook_size: Codes per level (k of k-means); every digit is below it.
        seed: Seed of k-means++ initialisation.
        collaborative_weight: Share of co-occurrence vectors of the training sequences in
            the k-means distances, beside the text embeddings; 0 = item text only (the method).

    Returns:
        sids: The (H, N) int64 SID tensor (sids.pt), column = item index.
        codebooks: The k-means centroids per level, to assign codes to new items later.
        sid_report: Code usage, entropy and collisions per SID position (HTML).
        sid_metrics: The same quality numbers as metrics.
    """
    from madrec.ops.steps import build_sids_step

    settings = (encoder, levels, codebook_size, seed, collaborative_weight)
    build_sids_step(dataset.path, *settings, sids, codebooks, sid_report, sid_metrics)
