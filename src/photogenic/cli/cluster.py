"""`photogenic job` and `pipeline`: training jobs on the training operator, the pipeline on Kubeflow."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import yaml

from photogenic.cli.base import config_options, friendly_errors, main
from photogenic.config import Config, load_config

# --------------------------------------------------------------------------------------------- cluster


@main.group("job")
def job_group() -> None:
    """Training jobs on Kubeflow's training operator, for teams that train outside KFP."""


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--backend",
            type=click.Choice(["trainjob", "pytorchjob"]),
            default="trainjob",
            help="Kubeflow Trainer v2 TrainJob (runtime torch-distributed), or a training-operator v1 PyTorchJob.",
        ),
        click.option("--recipe", type=click.Choice(["autoencoder", "pretrain", "quality-tune"]), default="pretrain"),
        click.option("--data", "-d", "data_uri", required=True, help="Manifest URI of the training dataset."),
        click.option("--base", "-b", default="", help="Model to start from."),
        click.option("--judges", default="", help="Curation judge set (quality-tune)."),
        click.option("--rehearsal-data", "rehearsal", default="", help="Dataset to rehearse (quality-tune)."),
        click.option("--out", default=None, help="Run URI (default: <store>/runs/<recipe>-<fingerprint>)."),
        click.option("--name", default=None, help="Job name (default: photogenic-<recipe>-<run fingerprint>)."),
        click.option("--namespace", "-n", default="kubeflow", help="Namespace of the job."),
        click.option("--image", default=None, help="Training image (default: components/images.json)."),
        click.option(
            "--image-pull-secret",
            "pull_secrets",
            multiple=True,
            help="Secret for pulling the image; repeat (default: components/images.json's).",
        ),
        click.option("--nodes", default=1, type=click.IntRange(1), help="Nodes."),
        click.option("--gpus-per-node", default=8, type=click.IntRange(0), help="GPUs (and processes) per node."),
        click.option("--node-selector", multiple=True, help="key=value; repeat."),
        click.option("--gpu-toleration/--no-gpu-toleration", default=True, help="Tolerate nvidia.com/gpu taints."),
        click.option("--cache-pvc", default="", help="PVC mounted at /cache on every node (default: an emptyDir)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _training_job(config: Config, kw: dict[str, Any]) -> Any:
    from photogenic.components.images import PULL_SECRETS, TRAIN_IMAGE
    from photogenic.config import overrides_from
    from photogenic.launcher import GPU_TOLERATIONS, train_args, training_job
    from photogenic.train.run import run_uri

    recipe = kw["recipe"].replace("-", "_")
    out = run_uri(
        recipe, config, kw["data_uri"], kw["base"] or None, kw["judges"] or None, kw["out"], kw["rehearsal"] or None
    )
    overrides = [o for o in overrides_from(config) if not o.startswith("workspace=")]
    config_args = ["--preset", config.preset, *overrides]  # a job outside a pipeline run: no published config
    return training_job(
        recipe,
        out,
        train_args(recipe, kw["data_uri"], out, config_args, kw["base"], kw["judges"], "", kw["rehearsal"]),
        image=kw["image"] or TRAIN_IMAGE,
        namespace=kw["namespace"],
        nodes=kw["nodes"],
        gpus_per_node=kw["gpus_per_node"],
        name=kw["name"] or "",
        node_selector=dict(item.split("=", 1) for item in kw["node_selector"]),
        tolerations=GPU_TOLERATIONS if kw["gpu_toleration"] else (),
        cache_pvc=kw["cache_pvc"],
        image_pull_secrets=kw["pull_secrets"] or PULL_SECRETS,
    )


@job_group.command("render")
@_job_options
@config_options
@friendly_errors
def job_render_cmd(config: Config, **kw: Any) -> None:
    """Print the job as YAML (for `kubectl apply -f -` or GitOps): the same job the pipeline launches."""
    from photogenic.launcher import pytorchjob, trainjob

    job = _training_job(config, kw)
    body = pytorchjob(job) if kw["backend"] == "pytorchjob" else trainjob(job)
    click.echo(yaml.safe_dump(body, sort_keys=False), nl=False)


@job_group.command("launch")
@_job_options
@click.option("--timeout-hours", default=168.0, type=float, help="Fail and delete the job after this long.")
@config_options
@friendly_errors
def job_launch_cmd(config: Config, timeout_hours: float, **kw: Any) -> None:
    """Create the job, stream the master's log, wait, delete it (uses your kubeconfig)."""
    from photogenic.launcher import LaunchError, launch

    try:
        launch(_training_job(config, kw), backend=kw["backend"], timeout_s=timeout_hours * 3600)
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from exc


def _kfp(host: str | None) -> Any:
    from photogenic.pipelines import client as kfp_client

    try:
        return kfp_client.connect(host)
    except kfp_client.UnreachableError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group("pipeline")
def pipeline_group() -> None:
    """Compile the pipeline, upload it to Kubeflow Pipelines, run it there."""


@pipeline_group.command("compile")
@click.option(
    "--out", "-o", default=None, type=click.Path(dir_okay=False), help="YAML to write (default: the checked-in one)."
)
@click.option(
    "--kubernetes-manifest",
    is_flag=True,
    help="Write KFP Pipeline and PipelineVersion resources (for GitOps) instead of the plain pipeline spec.",
)
def pipeline_compile_cmd(out: str | None, kubernetes_manifest: bool) -> None:
    """Compile the pipeline to YAML, versioned by the package version and git commit."""
    from photogenic.pipelines.compiler import COMPILED, compile_pipeline

    click.echo(compile_pipeline(out or COMPILED, kubernetes_manifest=kubernetes_manifest))


_host_option = click.option(
    "--host", envvar="KF_PIPELINES_ENDPOINT", default=None, help="KFP API endpoint (env KF_PIPELINES_ENDPOINT)."
)
_package_option = click.option(
    "--package", default=None, type=click.Path(exists=True, dir_okay=False), help="Compiled pipeline YAML."
)


@pipeline_group.command("upload")
@_host_option
@_package_option
@click.option("--name", default=None, help="Pipeline name (default: photogenic-quality-tuning).")
def pipeline_upload_cmd(host: str | None, package: str | None, name: str | None) -> None:
    """Upload the compiled pipeline: a new pipeline, or a new version of an existing one (nothing if the
    server has this version already)."""
    from photogenic.pipelines import client as kfp_client
    from photogenic.pipelines.compiler import COMPILED
    from photogenic.pipelines.quality_tuning import PIPELINE_NAME

    uploaded = kfp_client.upload(_kfp(host), package or COMPILED, name or PIPELINE_NAME)
    click.echo(json.dumps(uploaded.__dict__, indent=2))


@pipeline_group.command("run")
@_host_option
@_package_option
@click.option("--experiment", "-e", default="photogenic", help="KFP experiment.")
@click.option("--run-name", default=None, help="Run name (default: photogenic-<preset>-<time>).")
@click.option("--preset", "-p", default="demo", help="Config preset for every stage.")
@click.option("--set", "overrides", multiple=True, help="Config override key=value; repeat.")
@click.option(
    "--param",
    "params",
    multiple=True,
    help="Other pipeline parameter name=value (typed as the pipeline declares); repeat.",
)
@click.option(
    "--upload", "do_upload", is_flag=True, help="Upload as a new pipeline version first and run that version."
)
@click.option("--wait", "wait_s", default=0, type=int, help="Wait up to this many seconds for the run to end.")
@click.option("--service-account", default=None, help="ServiceAccount for the run's pods.")
def pipeline_run_cmd(
    host: str | None,
    package: str | None,
    experiment: str,
    run_name: str | None,
    preset: str,
    overrides: tuple[str, ...],
    params: tuple[str, ...],
    do_upload: bool,
    wait_s: int,
    service_account: str | None,
) -> None:
    """Create a run of the pipeline on Kubeflow Pipelines."""
    import time

    from photogenic.pipelines import client as kfp_client
    from photogenic.pipelines.compiler import COMPILED

    load_config(preset, overrides=overrides)  # a wrong key fails here, not in the cluster an hour later
    arguments: dict[str, Any] = {"preset": preset, "overrides": list(overrides)}
    try:
        arguments.update(kfp_client.parse_arguments(params, package or COMPILED))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from exc
    client = _kfp(host)
    uploaded = kfp_client.upload(client, package or COMPILED) if do_upload else None
    name = run_name or f"photogenic-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = kfp_client.submit(
        client, experiment, arguments, name, uploaded, package or COMPILED, wait_s, service_account
    )
    click.echo(json.dumps(result, indent=2))
    if wait_s and result["state"] != "SUCCEEDED":
        raise click.ClickException(f"run {result['run_id']} ended {result['state']}: {result.get('error', '')}")


if __name__ == "__main__":  # pragma: no cover
    main()
