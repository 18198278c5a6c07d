"""The operations layer: everything that needs kfp, kubernetes or kserve.

The core library (`madrec.*` outside this package) prepares data, builds SIDs, trains,
decodes, evaluates and recommends without any of them; this package runs that library as
Kubeflow pipeline steps (`steps`), locally (`local_run`) or on a cluster (`submit`,
`trainjob`, `deploy`), serves checkpoints (`serve`) and names the container images (`images`).
"""
