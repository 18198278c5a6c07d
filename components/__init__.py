"""Kubeflow Pipelines components: one per step, each a thin wrapper over `madrec.ops.steps`.

The function bodies run inside the step's image (`madrec.ops.images`), where madrec and kfp are
installed: nothing is pip-installed at run time, and the same code runs under kfp's local
SubprocessRunner.
"""
