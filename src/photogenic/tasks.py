"""What each pipeline task runs: one stage function under the pipeline's MLflow run, returning small JSON.

The KFP components in `photogenic.components` are typed shells around these functions; they are also
importable and tested without KFP. Every function takes the preset and `key=value` overrides (the
pipeline's parameters), resolves the config itself, and returns a dict of strings, numbers and lists.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from photogenic.config import Config, load_config
from photogenic.tracking import Tracker, git_commit, tracking_uri

__all__ = [
    "task_config",
    "open_pipeline_run",
    "close_pipeline_run",
    "plan_ingest",
    "ingest_partition",
    "merge_ingest",
    "validate_data",
    "train_model",
    "launch_training",
    "train_args",
    "training_job",
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

KFP_RUN_TAG = "photogenic.kfp_run_id"
# This pipeline run's id, in every task's environment: on a cluster from the pod's `pipeline/runid` label
# (pipelines/kubernetes.py), locally from the runner (pipelines/local.py).
RUN_ID_ENV = "PHOTOGENIC_KFP_RUN_ID"


def plain(value: Any) -> Any:
    """A result as KFP parameters can carry it: no None (dropped), tuples as lists, NaN as None-free strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value if v is not None]
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def task_config(preset: str, overrides: Sequence[str]) -> Config:
    """The resolved config of a task: the pipeline's preset and overrides, exactly as `photogenic` resolves
    them; $PHOTOGENIC_WORKSPACE (set on pods with a cache volume) is the workspace unless overridden."""
    items = list(overrides)
    if os.environ.get("PHOTOGENIC_WORKSPACE") and not any(o.startswith("workspace=") for o in items):
        items.insert(0, f"workspace={os.environ['PHOTOGENIC_WORKSPACE']}")
    return load_config(preset or None, overrides=items)


# --------------------------------------------------------------------------------------------- parent run


def pipeline_run_id(kfp_run_id: str = "") -> str:
    """This pipeline run's id: `$PHOTOGENIC_KFP_RUN_ID` where set, else `kfp_run_id`."""
    return os.environ.get(RUN_ID_ENV) or kfp_run_id


def parent_run_id(config: Config) -> str:
    """The MLflow parent run of this pipeline run ("" outside one), found by its run-id tag.

    Cached tasks look it up rather than take it as an input: an input that changes every run changes
    the task's cache key every run, and KFP would never reuse a result.
    """
    run_id = pipeline_run_id()
    if not run_id:
        return ""
    found = _find_parent(Tracker(config), run_id)
    if not found:
        log.warning("no MLflow parent run tagged %s=%s: this stage's run has no parent", KFP_RUN_TAG, run_id)
    return found or ""


def open_pipeline_run(config: Config, kfp_run_id: str, pipeline_version: str) -> str:
    """Open the pipeline's MLflow parent run, tagged with the KFP run id; returns its run id.

    A retried task finds the run it opened before (same KFP run id) instead of opening another.
    """
    kfp_run_id = pipeline_run_id(kfp_run_id)
    tracker = Tracker(config)
    existing = _find_parent(tracker, kfp_run_id)
    if existing:
        return existing
    tags = {
        KFP_RUN_TAG: kfp_run_id,
        "photogenic.pipeline_version": pipeline_version,
        "photogenic.preset": config.preset,
        "photogenic.config_fingerprint": config.fingerprint(),
    }
    run = tracker.start_run(f"photogenic-{config.preset}-{kfp_run_id[:8]}", tags=tags)
    run.log_config(config)
    if not run.active:
        raise RuntimeError(f"could not open the MLflow parent run at {tracking_uri(config)}: {tracker.failures}")
    return run.run_id or ""


def close_pipeline_run(config: Config, kfp_run_id: str, state: str, error: str = "") -> str:
    """Mark the parent run FINISHED (KFP state SUCCEEDED) or FAILED (anything else), with the error as a tag.

    Returns:
        The MLflow status written, or "" when no parent run was opened (the first task failed).
    """
    kfp_run_id = pipeline_run_id(kfp_run_id)
    tracker = Tracker(config)
    run_id = _find_parent(tracker, kfp_run_id)
    if not run_id:
        log.warning("no MLflow parent run tagged %s=%s; nothing to close", KFP_RUN_TAG, kfp_run_id)
        return ""
    from photogenic.tracking import Run

    run = Run(tracker, run_id)
    status = "FINISHED" if state == "SUCCEEDED" else "FAILED"
    run.set_tags({"photogenic.kfp_state": state, **({"photogenic.error": error[:5000]} if error else {})})
    run.end(status)
    return status


def _find_parent(tracker: Tracker, kfp_run_id: str) -> str | None:
    runs = tracker._call(
        "search runs",
        lambda: tracker.client.search_runs(
            [tracker.experiment_id()], filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'", max_results=1
        ),
    )
    return runs[0].info.run_id if runs else None


# --------------------------------------------------------------------------------------------- data


def plan_ingest(config: Config, source: str, partitions: int) -> list[dict[str, Any]]:
    """The partitions the pipeline ingests in parallel (see `photogenic.data.ingest.partition_plan`)."""
    from photogenic.data.ingest import partition_plan

    return partition_plan(source, config, partitions)


def ingest_partition(config: Config, source: str, partition: Mapping[str, Any], parent_run_id: str) -> dict[str, Any]:
    """Ingest one partition into its own shards (a child run per partition)."""
    from photogenic.data.ingest import ingest

    index, count = int(partition["index"]), int(partition["count"])
    with Tracker(config).stage_run(f"ingest-{index}-of-{count}", parent_run_id or None) as run:
        result = ingest(source, config, run=run, progress=False, partition=(index, count))
    return plain(asdict(result))


def merge_ingest(config: Config, source: str, parts: Sequence[str], parent_run_id: str) -> dict[str, Any]:
    """Join the partitions into the dataset and publish its manifest."""
    from photogenic.data.ingest import merge_partitions

    with Tracker(config).stage_run("ingest", parent_run_id or None) as run:
        result = merge_partitions(source, parts, config, run=run)
    return plain(asdict(result))


def validate_data(config: Config, data_uri: str, parent_run_id: str) -> dict[str, Any]:
    """Great Expectations over the ingested dataset; failing samples quarantined with their reasons."""
    from photogenic.data.validate import validate

    with Tracker(config).stage_run("validate", parent_run_id or None) as run:
        return plain(asdict(validate(data_uri, config, run=run)))


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
    from photogenic.train.run import train

    stage = f"train-{recipe.replace('_', '-')}"
    with Tracker(config).stage_run(stage, parent_run_id or None) as run:
        result = train(
            recipe,
            config,
            data_uri,
            base=base or None,
            run=run,
            judges=judges or None,
            rehearsal=rehearsal or None,
            progress=False,
        )
    return plain(asdict(result))


def launch_training(
    config: Config,
    preset: str,
    overrides: Sequence[str],
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

    The pods run `torchrun -m photogenic train RECIPE ...` with the same preset and overrides as this
    task, so they resolve the same config and write checkpoints and the model under the same run URI,
    which this task then reads. A model already exported there is reused without a job.

    Args:
        preset, overrides: the pipeline's config (passed on to the pods verbatim).
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
    from photogenic.launcher import launch, this_pod
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
        train_args(recipe, data_uri, out, preset or config.preset, overrides, base, judges, parent_run_id, rehearsal),
        image=image,
        namespace=namespace or _pod_namespace(),
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


def train_args(
    recipe: str,
    data_uri: str,
    out: str,
    preset: str,
    overrides: Sequence[str],
    base: str = "",
    judges: str = "",
    parent_run_id: str = "",
    rehearsal: str = "",
) -> list[str]:
    """The `photogenic train ...` arguments a training job's pods run (after `torchrun -m photogenic`)."""
    args = ["train", recipe.replace("_", "-"), "--data", data_uri, "--out", out, "--preset", preset]
    args += ["--base", base] if base else []
    args += ["--judges", judges] if judges else []
    args += ["--rehearsal-data", rehearsal] if rehearsal else []
    args += ["--parent-run-id", parent_run_id] if parent_run_id else []
    return args + list(overrides)


def training_job(
    recipe: str,
    out: str,
    args: Sequence[str],
    *,
    image: str,
    namespace: str,
    nodes: int,
    gpus_per_node: int,
    name_key: str = "",
    name: str = "",
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    cache_pvc: str = "",
    image_pull_secrets: Sequence[str] = (),
    owner: Any = None,
) -> Any:
    """The training-operator job that runs `args` (from `train_args`) for the run at `out`; named
    `name`, else `photogenic-<recipe>-<name_key>`, else after the run URI's fingerprint."""
    from photogenic.launcher import TrainingJob, job_name

    key = name_key or out.rstrip("/").rsplit("-", 1)[-1]
    return TrainingJob(
        name=name or job_name(f"photogenic-{recipe.replace('_', '-')}", key),
        namespace=namespace,
        image=image,
        args=tuple(args),
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        node_selector=dict(node_selector or {}),
        tolerations=tuple(tolerations),
        cache_pvc=cache_pvc,
        image_pull_secrets=tuple(image_pull_secrets),
        owner=owner,
    )


def _pod_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "default"


def train_judges(config: Config, purpose: str, parent_run_id: str) -> dict[str, Any]:
    """Train and validate one judge set (`curation` or `evaluation`)."""
    from photogenic.judges import train_judges as train

    with Tracker(config).stage_run(f"judges-{purpose}", parent_run_id or None) as run:
        result = train(config, purpose, run=run)  # type: ignore[arg-type]
    return plain({**asdict(result), "uri": result.uri})


def curate_data(
    config: Config, data_uri: str, judges_uri: str, parent_run_id: str, approved: str = ""
) -> dict[str, Any]:
    """The curation funnel: automatic filters, review rounds (`approved`: the reviewers' keys, with
    `curate.review=import`), the QT dataset."""
    from photogenic.curate import curate

    with Tracker(config).stage_run("curate", parent_run_id or None) as run:
        result = curate(data_uri, judges_uri, config, approved=approved or None, run=run)
    return plain({**asdict(result), "counts": result.counts})


def evaluate_models(
    config: Config, a: str, b: str, judges_uri: str, parent_run_id: str, curation_judges_uri: str = ""
) -> dict[str, Any]:
    """Model A (candidate) against model B (reference) on the benchmark's test split: rated by the panel
    (world models) or the evaluation judges (real ones), with the judges' agreement beside it."""
    from photogenic.evaluate import evaluate

    with Tracker(config).stage_run("evaluate", parent_run_id or None) as run:
        result = evaluate(a, b, judges_uri, config, run=run, curation_judges_uri=curation_judges_uri or None)
        return plain(asdict(result))


def gate(evaluation: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a candidate may become `champion`. It reads interval bounds, never point estimates:

    - appeal: the win rate's 95% lower bound is above 50%;
    - faithfulness is not worse: the 95% interval of wins minus losses does not lie below zero, over
      the benchmark and, when concepts were held out of the QT set, on their prompts alone (the paper's
      claim that quality-tuning generalises);
    - the rater of record is trustworthy: the panel explained most images (world models), or the
      imported judges passed their validity check (real models).
    """
    m = evaluation["metrics"]
    reasons = []
    if not m.get("appeal_win_lo", 0.0) > 0.5:
        reasons.append(f"appeal win rate lower bound {m.get('appeal_win_lo', 0.0):.3f} is not above 0.5")
    checks = [("faithfulness", "")]
    if "faithfulness_held_out_win" in m:  # concepts were held out of the QT set
        checks.append(("faithfulness_held_out", " on the held-out concepts"))
    for prefix, where in checks:
        lo, hi = m.get(f"{prefix}_net_lo"), m.get(f"{prefix}_net_hi")
        if lo is None or hi is None:
            reasons.append(f"faithfulness{where} has no interval of wins minus losses (evaluate again)")
        elif hi < 0:
            reasons.append(
                f"faithfulness is worse{where}: the 95% interval of wins minus losses, [{lo:+.3f}, {hi:+.3f}], "
                "lies below zero"
            )
    if not evaluation.get("trustworthy", False):
        reasons.append("the rater of record is not trustworthy (see the evaluation report)")
    return not reasons, "; ".join(reasons) or "passed"


def register_model(
    config: Config,
    model: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    name: str,
    parent_run_id: str,
    alias: str = "champion",
) -> dict[str, Any]:
    """Register the quality-tuned model in the MLflow registry; give it `alias` only if it passes `gate`.

    Args:
        model: the quality-tune result (`model_uri`, `fingerprint`).
        evaluation: the evaluation result (`metrics`, `trustworthy`, `report_uri`).
        name: the registered model's name.
        alias: the alias a passing model gets (the previous holder keeps its version, loses the alias).

    Returns:
        `name`, `version`, `alias` ("" if the gate failed), `gate` (the reason) and `source`.
    """
    passed, reason = gate(evaluation)
    tracker = Tracker(config)
    with tracker.stage_run("register", parent_run_id or None) as run:
        client = tracker.client
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Quality-tuned text-to-image models (Photogenic).")
        tags = {
            "photogenic.model": model["fingerprint"],
            "photogenic.gate": reason,
            "photogenic.report": evaluation.get("report_uri", ""),
            **{f"eval.{k}": f"{v:.4f}" for k, v in sorted(evaluation["metrics"].items()) if k.startswith("appeal_w")},
        }
        version = client.create_model_version(name, source=model["model_uri"], run_id=run.run_id, tags=tags)
        if passed:
            client.set_registered_model_alias(name, alias, version.version)
        run.set_tags({"photogenic.registered": f"{name}/{version.version}", "photogenic.gate": reason})
        run.log_metrics({"register.champion": float(passed)})
    log.info("registered %s version %s (%s: %s)", name, version.version, alias if passed else "no alias", reason)
    return {
        "name": name,
        "version": str(version.version),
        "alias": alias if passed else "",
        "gate": reason,
        "source": model["model_uri"],
    }


# --------------------------------------------------------------------------------------------- summary


def summarize(config: Config, stages: Mapping[str, Any], parent_run_id: str, summary_uri: str = "") -> dict[str, Any]:
    """The run's summary (every stage's result, the MLflow run, the command to compare runs): written
    to `summary_uri` if given and logged on the parent run as `summary.json`."""
    uri = tracking_uri(config)
    stages = _integral(stages)
    summary = {
        "preset": config.preset,
        "config_fingerprint": config.fingerprint(),
        "git_commit": git_commit(),
        "stages": dict(stages),
        "mlflow": {
            "tracking_uri": uri,
            "experiment": config.tracking.experiment,
            "parent_run_id": parent_run_id,
            "ui_command": f"mlflow ui --backend-store-uri {shlex.quote(uri)}",
        },
    }
    tracker = Tracker(config)
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


def _integral(value: Any, key: str = "") -> Any:
    """Counts and steps back to ints: KFP carries every number of a dict parameter as a double."""
    if isinstance(value, Mapping):
        return {k: v if k == "metrics" else _integral(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v, key) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def publish_artifact(artifact: Any, manifest_uri: str, config: Config, **metadata: Any) -> None:
    """Copy a stage's small manifest into a KFP output artifact (the data stays in the store) and
    describe it in the artifact's metadata: the store URI, the version and the counts."""
    from photogenic.manifest import read_manifest

    manifest = read_manifest(manifest_uri, config.storage)
    with open(artifact.path, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    artifact.metadata.update(
        {"store_uri": manifest_uri, "version": manifest.fingerprint, "counts": dict(manifest.counts), **metadata}
    )


def copy_report(uri: str, artifact: Any, config: Config) -> None:
    """Copy a report (HTML, images inline) from the store into a KFP output artifact, for the KFP UI."""
    from photogenic.storage import open_store, split_parent

    folder, name = split_parent(uri)
    with open(artifact.path, "wb") as f:
        f.write(open_store(folder, config.storage).get_bytes(name))
    artifact.metadata["store_uri"] = uri
