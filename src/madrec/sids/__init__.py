"""Stage 2, semantic IDs: item texts (and co-occurrence) -> the (H, N) SID tensor.

`embed` (frozen text encoder) and `cooccur` (collaborative vectors) give item vectors, `rkmeans`
turns them into codes, `build` writes a SID file from texts or ingests one made by GRID,
`format` is the file format every reader checks, `cli` the two verbs.
"""
