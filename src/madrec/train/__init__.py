"""Stage 4, training: a config and a prepared dataset -> a self-contained checkpoint.

`run` is `madrec train` (config to `summary.json`), `module` the LightningModule, `rows` the
training rows and the per-step sampler, `callbacks` checkpoint IO and progress, `checkpoint`
what a checkpoint holds and how a model is rebuilt from it.
"""
