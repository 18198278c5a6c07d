"""`madrec submit`: upload the compiled pipeline to a KFP endpoint and start a run.

The endpoint comes from KFP_HOST (or --host), an optional bearer token from KFP_TOKEN and a
namespace from KFP_NAMESPACE (multi-user Kubeflow). The pipeline is uploaded once per content:
a version named after the YAML's hash is reused when it already exists. Run parameters are
checked against the pipeline's declared inputs and converted to their types.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

from madrec.errors import MadrecError
from madrec.ops.pipeline_params import PIPELINE_FILE, add_param_option, parse_params, pipeline_inputs


def upload(client, pipeline_file: Path, name: str) -> tuple[str, str]:
    """(pipeline id, version id) of `pipeline_file` on the server, uploading what is missing.

    Versions are named after the file's hash, so an unchanged pipeline is not uploaded twice.
    """
    version_name = f"{name}-{hashlib.sha256(pipeline_file.read_bytes()).hexdigest()[:12]}"
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(pipeline_file), pipeline_name=name).pipeline_id
        # the first upload creates the pipeline's one version, holding this file
        return pipeline_id, client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=100, sort_by="created_at desc").pipeline_versions
    for version in versions or []:
        if version.display_name == version_name:
            return pipeline_id, version.pipeline_version_id
    version = client.upload_pipeline_version(str(pipeline_file), version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit(
    client,
    pipeline_file: Path,
    params: dict,
    *,
    pipeline_name: str,
    experiment: str,
    run_name: str,
    namespace: str | None,
    enable_caching: bool | None,
    service_account: str | None,
    ui_host: str,
) -> str:
    """Upload, start a run, return the run's URL in the KFP UI."""
    pipeline_id, version_id = upload(client, pipeline_file, pipeline_name)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.run_pipeline(
        experiment_id,
        run_name,
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        enable_caching=enable_caching,
        service_account=service_account,
    )
    return f"{ui_host.rstrip('/')}/#/runs/details/{run.run_id}"


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="madrec submit", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API endpoint (default $KFP_HOST)")
    p.add_argument("--token", default=os.environ.get("KFP_TOKEN"), help="bearer token (default $KFP_TOKEN)")
    p.add_argument(
        "--namespace", default=os.environ.get("KFP_NAMESPACE"), help="profile namespace (default $KFP_NAMESPACE)"
    )
    p.add_argument(
        "--ui-host", default=os.environ.get("KFP_UI_HOST"), help="UI base URL for the run link (default: host)"
    )
    p.add_argument("--pipeline-file", type=Path, default=PIPELINE_FILE)
    p.add_argument("--pipeline-name", default="madrec")
    p.add_argument("--experiment", default="madrec", help="KFP experiment to file the run under")
    p.add_argument("--run-name", default=None)
    p.add_argument(
        "--service-account",
        default=os.environ.get("KFP_SERVICE_ACCOUNT"),
        help="Kubernetes service account of the run's pods; for num_nodes > 1 one bound to the "
        "madrec-trainjob-launcher Role (manifests/) (default $KFP_SERVICE_ACCOUNT)",
    )
    p.add_argument("--no-cache", action="store_true", help="disable step caching for this run")
    add_param_option(p, "run parameter (repeatable), e.g. --param dataset=sequences --param num_gpus=4")
    args = p.parse_args(argv)
    if not args.host:
        raise MadrecError(
            "no KFP endpoint: set KFP_HOST (e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow "
            "svc/ml-pipeline-ui 8080:80`) or pass --host"
        )
    params = parse_params(args.param, pipeline_inputs(args.pipeline_file))
    import kfp

    client = kfp.Client(host=args.host, existing_token=args.token or None, namespace=args.namespace or "kubeflow")
    url = submit(
        client,
        args.pipeline_file,
        params,
        pipeline_name=args.pipeline_name,
        experiment=args.experiment,
        run_name=args.run_name or f"madrec {time.strftime('%Y-%m-%d %H:%M:%S')}",
        namespace=args.namespace,
        enable_caching=False if args.no_cache else None,
        service_account=args.service_account or None,
        ui_host=args.ui_host or args.host,
    )
    print(f"run started: {url}")
    return 0
