"""Kubeflow pipeline definitions; `python -m pipelines.madrec_pipeline` compiles the IR YAML."""
