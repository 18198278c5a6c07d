"""Stage 5, decoding and evaluation: a checkpoint -> recommendations, metrics and a report.

`decode` is the one constrained beam search every consumer calls, `run` decodes a split
(exact under DDP), `metrics` scores it, `cli` is `madrec evaluate`, `report` its pages,
`recommend` the original-id `Recommender` behind `madrec recommend` and `madrec serve`.
"""
