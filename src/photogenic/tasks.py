"""What each pipeline task runs: one stage function under the pipeline's MLflow run, returning small JSON.

The KFP components in `photogenic.components` are typed shells around these functions; they are also
importable and tested without KFP. The config is resolved once per run, from the pipeline's preset and
`key=value` overrides, by the open-run task (`config_from`, `publish_config`); every other task reads it
back from the store (`task_config`). Each function returns a dict of strings, numbers and lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import yaml

from photogenic.config import Config, ConfigError, load_config, to_dict
from photogenic.registry import gate, register_model
from photogenic.stages import result_dict, run_stage
from photogenic.tracking import (
    KFP_RUN_TAG,
    RUN_ID_ENV,
    Tracker,
    close_pipeline_run,
    git_commit,
    open_pipeline_run,
    parent_run_id,
    pipeline_run_id,
)

__all__ = [
    "task_config",
    "config_from",
    "publish_config",
    "open_pipeline_run",
    "close_pipeline_run",
    "plan_ingest",
    "ingest_partition",
    "merge_ingest",
    "validate_data",
    "train_model",
    "launch_training",
    "train_judges",
    "curate_data",
    "evaluate_models",
    "register_model",
    "summarize",
    "gate",
    "KFP_RUN_TAG",
    "RUN_ID_ENV",
    "pipeline_run_id",
    "parent_run_id",
]

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """A result as KFP parameters can carry it: no None (dropped), tuples as lists, NaN as None-free strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value if v is not None]
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def config_from(preset: str, overrides: Sequence[str]) -> Config:
    """The config the pipeline's preset and overrides name, resolved exactly as `photogenic` resolves them;
    $PHOTOGENIC_WORKSPACE (set in our images, and on pods with a cache volume) is the workspace unless an
    override names one."""
    items = list(overrides)
    if os.environ.get("PHOTOGENIC_WORKSPACE") and not _names_workspace(items):
        items.insert(0, f"workspace={os.environ['PHOTOGENIC_WORKSPACE']}")
    return load_config(preset or None, overrides=items)


def publish_config(config: Config, overrides: Sequence[str] = ()) -> str:
    """Write a run's resolved config to the store, once; every later task and pod reads it from there.

    The workspace, a folder on one machine, stays out of it unless `overrides` name one: each task then
    takes its own machine's ($PHOTOGENIC_WORKSPACE, as `config_from`).

    Returns:
        `<store>/configs/<sha256 of the file>.yaml`: named by content, so a rerun with the same config
        names the same file, and the tasks that take it keep their cache keys.
    """
    from photogenic.storage import join_uri, open_store

    data = to_dict(config)
    if not _names_workspace(overrides):
        del data["workspace"]
    text = yaml.safe_dump(data, sort_keys=True).encode()
    store = open_store(join_uri(config.store_root(), "configs"), config.storage)
    name = f"{hashlib.sha256(text).hexdigest()[:16]}.yaml"
    if not store.exists(name):
        store.put_bytes(name, text)
    return store.uri(name)


def task_config(config_uri: str) -> Config:
    """A task's config: the run's, as `publish_config` wrote it (its name checked against its bytes)."""
    from photogenic.storage import StoreError, open_store, split_parent

    folder, name = split_parent(config_uri)
    try:
        text = open_store(folder).get_bytes(name)
    except StoreError as exc:
        raise ConfigError(f"the run's config {config_uri} cannot be read: {exc}") from exc
    if f"{hashlib.sha256(text).hexdigest()[:16]}.yaml" != name:
        raise ConfigError(f"the run's config {config_uri} does not hold the bytes its name was made from")
    data = yaml.safe_load(text)
    workspace = os.environ.get("PHOTOGENIC_WORKSPACE")
    extra = [f"workspace={workspace}"] if workspace and "workspace" not in data else []
    return load_config(file=config_uri, overrides=extra)


def _names_workspace(overrides: Sequence[str]) -> bool:
    return any(o.startswith("workspace=") for o in overrides)


# --------------------------------------------------------------------------------------------- data


def plan_ingest(config: Config, source: str, partitions: int) -> list[dict[str, Any]]:
    """The partitions the pipeline ingests in parallel (see `photogenic.data.ingest.partition_plan`)."""
    from photogenic.data.ingest import partition_plan

    return partition_plan(source, config, partitions)


def ingest_partition(config: Config, source: str, partition: Mapping[str, Any], parent_run_id: str) -> dict[str, Any]:
    """Ingest one partition into its own shards (a child run per partition)."""
    index, count = int(partition["index"]), int(partition["count"])
    fields = {"index": index, "count": count}
    result = run_stage("ingest-partition", config, parent_run_id, fields, source=source, partition=(index, count))
    return plain(result_dict(result))


def merge_ingest(config: Config, source: str, parts: Sequence[str], parent_run_id: str) -> dict[str, Any]:
    """Join the partitions into the dataset and publish its manifest."""
    return plain(result_dict(run_stage("ingest-merge", config, parent_run_id, source=source, part_uris=parts)))


def validate_data(config: Config, data_uri: str, parent_run_id: str) -> dict[str, Any]:
    """Great Expectations over the ingested dataset; failing samples quarantined with their reasons."""
    return plain(result_dict(run_stage("validate", config, parent_run_id, manifest_uri=data_uri)))


# --------------------------------------------------------------------------------------------- models


def train_model(
    config: Config,
    recipe: str,
    data_uri: str,
    base: str,
    judges: str,
    parent_run_id: str,
    rehearsal: str = "",
) -> dict[str, Any]:
    """One training recipe in this process (`autoencoder`, `pretrain`, `quality_tune`)."""
    result = run_stage(
        "train",
        config,
        parent_run_id,
        recipe=recipe,
        data_uri=data_uri,
        base=base or None,
        judges=judges or None,
        rehearsal=rehearsal or None,
    )
    return plain(result_dict(result))


def launch_training(
    config: Config,
    config_uri: str,
    recipe: str,
    data_uri: str,
    base: str,
    judges: str,
    parent_run_id: str,
    backend: str,
    image: str,
    nodes: int,
    gpus_per_node: int,
    image_pull_secrets: Sequence[str] = (),
    namespace: str = "",
    job_key: str = "",
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    cache_pvc: str = "",
    timeout_s: float = 7 * 24 * 3600,
    apis: tuple[Any, Any] | None = None,
    rehearsal: str = "",
) -> dict[str, Any]:
    """Run one recipe as a multi-node job on the training operator; wait; return the exported model.

    The pods run `torchrun -m photogenic train RECIPE ... --config CONFIG_URI`: they read the run's config
    from the store, as this task did, and write checkpoints and the model under the same run URI, which
    this task then reads. A model already exported there is reused without a job.

    Args:
        config_uri: the run's resolved config (`publish_config`), which the pods read.
        backend: `trainjob` (Trainer v2) or `pytorchjob` (kubeflow.org/v1).
        image: the training image.
        image_pull_secrets: Secrets for pulling it.
        nodes, gpus_per_node: the job's size.
        namespace: where the job goes; default this pod's namespace.
        job_key: makes the job name unique; default the run URI's fingerprint (a pipeline run with the
            same inputs finds the same job: it waits for it rather than starting a second one).
        node_selector, tolerations, cache_pvc: passed through to the job's pods.
        timeout_s: fail the task (and delete the job) after this long.
        apis: Kubernetes API clients (tests pass fakes).
        rehearsal: a dataset the recipe rehearses (`rehearsal_fraction`, `guidance_preservation`); "" for none.
    """
    from photogenic.launcher import launch, pod_namespace, this_pod, train_args, training_job
    from photogenic.train.run import run_uri
    from photogenic.train.trainer import finished_model

    out = run_uri(recipe, config, data_uri, base or None, judges or None, rehearsal=rehearsal or None)
    steps = getattr(config.train, recipe).steps
    model_uri = out.rstrip("/") + "/model"
    done = finished_model(recipe, steps, model_uri, config)
    if done is not None:
        return plain(asdict(done))
    job = training_job(
        recipe,
        out,
        train_args(recipe, data_uri, out, ["--config", config_uri], base, judges, parent_run_id, rehearsal),
        image=image,
        namespace=namespace or pod_namespace(),
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        name_key=job_key,
        node_selector=node_selector,
        tolerations=tolerations,
        cache_pvc=cache_pvc,
        image_pull_secrets=image_pull_secrets,
        owner=None if namespace else this_pod(),  # an owner must live in the job's namespace
    )
    launch(job, backend=backend, timeout_s=timeout_s, apis=apis)  # type: ignore[arg-type]
    done = finished_model(recipe, steps, model_uri, config)
    if done is None:
        raise RuntimeError(f"the {backend} for {recipe} succeeded but {model_uri} holds no finished model")
    return plain({**asdict(done), "reused": False})


def train_judges(config: Config, purpose: str, parent_run_id: str) -> dict[str, Any]:
    """Train and validate one judge set (`curation` or `evaluation`)."""
    return plain(result_dict(run_stage("judges", config, parent_run_id, purpose=purpose)))


def curate_data(
    config: Config, data_uri: str, judges_uri: str, parent_run_id: str, approved: str = ""
) -> dict[str, Any]:
    """The curation funnel: automatic filters, review rounds (`approved`: the reviewers' keys, with
    `curate.review=import`), the QT dataset."""
    result = run_stage(
        "curate", config, parent_run_id, data_uri=data_uri, judges_uri=judges_uri, approved=approved or None
    )
    return plain(result_dict(result))


def evaluate_models(
    config: Config, a: str, b: str, judges_uri: str, parent_run_id: str, curation_judges_uri: str = ""
) -> dict[str, Any]:
    """Model A (candidate) against model B (reference) on the benchmark's test split: rated by the panel
    (world models) or the evaluation judges (real ones), with the judges' agreement beside it."""
    result = run_stage(
        "evaluate",
        config,
        parent_run_id,
        a=a,
        b=b,
        judges_uri=judges_uri,
        curation_judges_uri=curation_judges_uri or None,
    )
    return plain(result_dict(result))


# --------------------------------------------------------------------------------------------- summary


def summarize(config: Config, stages: Mapping[str, Any], parent_run_id: str, summary_uri: str = "") -> dict[str, Any]:
    """The run's summary (every stage's result, the MLflow run, the command to compare runs): written
    to `summary_uri` if given and logged on the parent run as `summary.json`."""
    stages = _integral(stages)
    summary = {
        "preset": config.preset,
        "config_fingerprint": config.fingerprint(),
        "git_commit": git_commit(),
        "stages": dict(stages),
    }
    tracker = Tracker(config)
    summary["mlflow"] = mlflow_commands(tracker, stages.get("register"), parent_run_id)
    if parent_run_id:
        from photogenic.tracking import Run

        parent = Run(tracker, parent_run_id)
        parent.log_dict(summary, "summary.json")
        stages_ = summary["stages"]
        parent.set_tags(
            {
                "photogenic.dataset.clean": stages_["validate"]["fingerprint"],
                "photogenic.dataset.qt": stages_["curate"]["fingerprint"],
                "photogenic.model.pretrain": stages_["pretrain"]["fingerprint"],
                "photogenic.model.quality_tune": stages_["quality_tune"]["fingerprint"],
            }
        )
        parent.log_metrics({f"eval/{k}": v for k, v in stages_["evaluate"]["metrics"].items()})
    if summary_uri:
        from photogenic.storage import open_store, split_parent

        folder, name = split_parent(summary_uri)
        open_store(folder, config.storage).put_bytes(name, json.dumps(summary, indent=2).encode())
    return summary


def mlflow_commands(tracker: Tracker, registered: Mapping[str, Any] | None, parent_run_id: str) -> dict[str, str]:
    """Where the run is in MLflow and the commands that open it: the UI (and the run's page in it), and the
    registered model loaded in Python and served over REST."""
    uri = tracker.uri
    env = f"MLFLOW_TRACKING_URI={shlex.quote(uri)}"
    out = {
        "tracking_uri": uri,
        "experiment": tracker.config.tracking.experiment,
        "parent_run_id": parent_run_id,
        "ui_command": f"mlflow ui --backend-store-uri {shlex.quote(uri)}",
    }
    experiment = tracker.experiment_id() if parent_run_id else ""
    if experiment:
        out["run_page"] = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent_run_id}"
    if registered:
        model = f"models:/{registered['name']}" + (
            f"@{registered['alias']}" if registered.get("alias") else f"/{registered['version']}"
        )
        out["model"] = model
        out["load_command"] = (
            f"{env} python -c \"import mlflow, pandas; m = mlflow.pyfunc.load_model('{model}'); "
            "print(m.predict(pandas.DataFrame({'prompt': ['a red circle']}))['image'][0][:60])\""
        )
        out["serve_command"] = f"{env} mlflow models serve -m {model} --env-manager local -h 127.0.0.1 -p 5001"
    return out


def _integral(value: Any, key: str = "") -> Any:
    """Counts and steps back to ints: KFP carries every number of a dict parameter as a double."""
    if isinstance(value, Mapping):
        return {k: v if k == "metrics" else _integral(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v, key) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
