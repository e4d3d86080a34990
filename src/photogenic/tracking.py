"""MLflow tracking: one experiment per pipeline, a parent run per pipeline run, a child run per stage."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photogenic.config import Config, flatten, to_dict
from photogenic.redact import REDACTED, looks_secret_name, looks_secret_value, redact, secret_env_values

__all__ = [
    "Tracker",
    "Run",
    "TrackingError",
    "tracking_uri",
    "using_tracking_uri",
    "is_rank_zero",
    "git_commit",
    "KFP_RUN_TAG",
    "RUN_ID_ENV",
    "pipeline_run_id",
    "parent_run_id",
    "open_pipeline_run",
    "close_pipeline_run",
]

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
KFP_RUN_TAG = "photogenic.kfp_run_id"
# This pipeline run's id, in every task's environment: on a cluster from the pod's `pipeline/runid` label
# (pipelines/kubernetes.py), locally from the runner (pipelines/local.py).
RUN_ID_ENV = "PHOTOGENIC_KFP_RUN_ID"
# The MLflow UI opens an experiment in its "Model training" view only with this tag; without it, an
# experiment with no runs yet (or one it guesses wrong) opens in the GenAI view, which shows no runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
_BATCH = 100  # MLflow's limit on params per log_batch call


class TrackingError(RuntimeError):
    """The tracking store failed and `tracking.on_error` is `fail`."""


def tracking_uri(config: Config) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else SQLite in the workspace."""
    if config.tracking.uri:
        return config.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(config.workspace).expanduser().resolve() / 'mlflow.db'}"


def using_tracking_uri(uri: str) -> Any:
    """A context in which MLflow's module-level functions, and the parts of MLflow that ignore a client's
    own URI (the registry resolving `models:/<id>` when it creates a version), talk to `uri`; the URI
    before it (set or unset) is restored after. The context manager is MLflow's own, and private: no
    public one restores an unset URI."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    return _use_tracking_uri(uri)


def is_rank_zero() -> bool:
    """Side effects (logging, saving) happen on global rank 0 only."""
    return int(os.environ.get("RANK", "0")) == 0


def git_commit() -> str:
    """The commit the code runs from: $PHOTOGENIC_GIT_COMMIT (set in images), else `git rev-parse`."""
    if os.environ.get("PHOTOGENIC_GIT_COMMIT"):
        return os.environ["PHOTOGENIC_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@dataclass
class Tracker:
    """Talks to one MLflow tracking store on behalf of a pipeline.

    On ranks other than 0 every call is a no-op. When the store fails, `tracking.on_error` decides:
    `warn` records the failure in `failures` and carries on, `fail` raises TrackingError.
    """

    config: Config
    enabled: bool = field(default_factory=is_rank_zero)
    failures: list[str] = field(default_factory=list)
    _client: Any = None
    _experiment_id: str | None = None

    @property
    def uri(self) -> str:
        return tracking_uri(self.config)

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = self.config.tracking.experiment
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                location = None
                if self.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the cwd
                    location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
                self._experiment_id = self.client.create_experiment(
                    name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            if exp is not None and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(self._experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return self._experiment_id

    def start_run(self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> Run:
        """Open a run (a child of `parent_run_id` if given); close it with `Run.end`."""
        if not self.enabled:
            return Run(self, None)
        all_tags = {**(tags or {}), "photogenic.git_commit": git_commit()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run_id = self._call(
            "start run",
            lambda: self.client.create_run(self.experiment_id(), run_name=name, tags=_clean_tags(all_tags)).info.run_id,
        )
        return Run(self, run_id)

    @contextmanager
    def pipeline_run(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[Run]:
        """The parent run of one pipeline run; FINISHED on success, FAILED on an exception."""
        run = self.start_run(name, tags=tags)
        with run.closing():
            yield run

    @contextmanager
    def stage_run(
        self,
        stage: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        sections: Sequence[str] | None = None,
    ) -> Iterator[Run]:
        """The child run of one stage. Its params are the config keys under `sections` (prefixes of flat
        keys, e.g. `data` or `evaluate.tie_margin`): what the stage reads, so that comparing two stages'
        runs shows the settings that differ. None: the whole config. The config's fingerprint is a tag."""
        run = self.start_run(stage, parent_run_id, {"photogenic.stage": stage, **(tags or {})})
        with run.closing():
            run.log_config(self.config, sections)
            yield run

    def find_run(self, tag: str, value: str) -> str | None:
        """The id of a run in this experiment tagged `tag=value`, or None."""
        runs = self._call(
            "search runs",
            lambda: self.client.search_runs(
                [self.experiment_id()], filter_string=f"tags.`{tag}` = '{value}'", max_results=1
            ),
        )
        return runs[0].info.run_id if runs else None

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # the tracking store is not allowed to take the model down with it
            message = f"MLflow {what} failed at {_safe_uri(self.uri)}: {type(exc).__name__}: {exc}"
            if self.config.tracking.on_error == "fail":
                raise TrackingError(message) from exc
            log.warning("%s (carrying on: tracking.on_error=warn)", message)
            self.failures.append(message)
            return None


@dataclass
class Run:
    """One MLflow run. A run with `run_id` None (other ranks, or a failed start) ignores every call."""

    tracker: Tracker
    run_id: str | None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _do(self, what: str, fn: Any) -> Any:
        if not self.active:
            return None
        return self.tracker._call(what, fn)

    def attempt(self, what: str, fn: Any) -> Any:
        """`fn()` under `tracking.on_error`, for tracking work made of several steps; None on other ranks."""
        return self._do(what, fn)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params; credential-looking names or values are replaced by `<redacted>`."""
        from mlflow.entities import Param

        clean = redact({k: _param_value(v) for k, v in params.items()})
        items = [Param(k, v[:_MAX_PARAM_CHARS]) for k, v in sorted(clean.items())]
        for i in range(0, len(items), _BATCH):
            batch = items[i : i + _BATCH]
            self._do("log params", lambda b=batch: self.tracker.client.log_batch(self.run_id, params=b))

    def log_config(self, config: Config, sections: Sequence[str] | None = None) -> None:
        """The resolved config as flat params (the keys under `sections`, or all), its fingerprint as a tag."""
        flat = flatten(to_dict(config))
        if sections is not None:
            flat = {k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in sections)}
        self.log_params(flat)
        self.set_tags({"photogenic.config_fingerprint": config.fingerprint(), "photogenic.preset": config.preset})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 1000):
            batch = items[i : i + 1000]
            self._do("log metrics", lambda b=batch: self.tracker.client.log_batch(self.run_id, metrics=b))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _clean_tags(tags).items()]
        self._do("set tags", lambda: self.tracker.client.log_batch(self.run_id, tags=items))

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A numpy array (HWC) or PIL image, saved as `artifact_file` (e.g. `samples/step_100.png`)."""
        self._do("log image", lambda: self.tracker.client.log_image(self.run_id, image, artifact_file=artifact_file))

    def log_image_key(self, image: Any, key: str, step: int = 0) -> None:
        """An image under `key` at `step`: the UI shows it in the run's charts and beside other runs' images
        of the same key in its comparison."""
        self._do("log image", lambda: self.tracker.client.log_image(self.run_id, image, key=key, step=step))

    def log_table(self, data: Any, artifact_file: str) -> None:
        """A table (a DataFrame or a dict of columns) as an MLflow table artifact (`*.json`)."""
        self._do("log table", lambda: self.tracker.client.log_table(self.run_id, data, artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._do("log figure", lambda: self.tracker.client.log_figure(self.run_id, figure, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._do("log artifact", lambda: self.tracker.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._do("log dict", lambda: self.tracker.client.log_dict(self.run_id, dict(data), artifact_file))

    def log_inputs(self, datasets: Sequence[Any], model_versions: Sequence[str] = ()) -> None:
        """Lineage (`photogenic.lineage`): datasets (`DatasetRef`s) and the MLflow models of the model
        versions (content fingerprints) this run read; a version never logged as an MLflow model is skipped."""
        if not self.active:
            return
        from mlflow.entities import LoggedModelInput

        from photogenic.serving import find_logged_model

        def log() -> None:
            client = self.tracker.client
            experiment = self.tracker.experiment_id()
            found = [find_logged_model(client, experiment, v) for v in model_versions]
            models = [LoggedModelInput(m.model_id) for m in found if m is not None]
            client.log_inputs(self.run_id, datasets=[d.entity() for d in datasets], models=models or None)

        self._do("log inputs", log)

    def log_model(self, model_uri: str, version: str, recipe: str) -> str | None:
        """The exported text-to-image model at `model_uri` as an MLflow model of this run (`photogenic.serving`),
        sampling by default as the evaluation does; returns its model id (`models:/<id>`), or None where
        tracking is off or failed."""
        from photogenic.serving import log_pyfunc

        sampling = self.tracker.config.evaluate
        return self._do(
            "log model",
            lambda: log_pyfunc(
                self.tracker.uri,
                self.run_id,
                model_uri,
                version,
                recipe,
                sampling.sampling_steps,
                sampling.guidance_scale,
            ),
        )

    def end(self, status: str = "FINISHED") -> None:
        self._do("end run", lambda: self.tracker.client.set_terminated(self.run_id, status))

    @contextmanager
    def system_metrics(self, interval_s: float = 10.0) -> Iterator[None]:
        """CPU, memory, disk and network (and GPU, where `nvidia-ml-py` finds one) as `system/...` metrics of
        this run every `interval_s` while the block runs: MLflow's own monitor, on a thread."""
        monitor = None
        if self.active:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = self._do(
                "start system metrics",
                lambda: SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, tracking_uri=self.tracker.uri),
            )
        if monitor is not None:
            monitor.start()
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()

    @contextmanager
    def closing(self) -> Iterator[Run]:
        try:
            yield self
        except BaseException:
            self.end("FAILED")
            raise
        self.end("FINISHED")


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    env_secrets = secret_env_values()
    out = {}
    for key, value in tags.items():
        value = str(value)
        out[key] = REDACTED if looks_secret_name(key) or looks_secret_value(value, env_secrets) else value
    return out


def _safe_uri(uri: str) -> str:
    """A tracking URI fit for a log line: any user:password in it is dropped."""
    return redact({"uri": uri})["uri"] if "@" in uri else uri


# ----------------------------------------------------------------------------------- the pipeline's run


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
    run = Run(tracker, run_id)
    status = "FINISHED" if state == "SUCCEEDED" else "FAILED"
    run.set_tags({"photogenic.kfp_state": state, **({"photogenic.error": error[:5000]} if error else {})})
    run.end(status)
    return status


def _find_parent(tracker: Tracker, kfp_run_id: str) -> str | None:
    return tracker.find_run(KFP_RUN_TAG, kfp_run_id)
