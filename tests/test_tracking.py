"""MLflow tracking against a real SQLite store: nested runs, params, metrics, images, and no secrets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from photogenic.config import ConfigError, flatten, load_config, to_dict
from photogenic.redact import REDACTED, looks_secret_name, looks_secret_value, redact
from photogenic.tracking import PARENT_TAG, Tracker, TrackingError, tracking_uri


def _config(workspace: Path, *overrides: str):  # noqa: ANN202
    return load_config("tiny", overrides=[f"workspace={workspace}", *overrides])


def test_default_uri_is_sqlite_in_the_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(workspace)
    assert tracking_uri(config) == f"sqlite:///{workspace.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert tracking_uri(config) == "sqlite:////elsewhere/m.db"
    assert tracking_uri(_config(workspace, "tracking.uri=http://mlflow:5000")) == "http://mlflow:5000"


def test_parent_and_child_runs_with_params_metrics_and_an_image(workspace: Path) -> None:
    config = _config(workspace)
    tracker = Tracker(config)
    with (
        tracker.pipeline_run("pipeline", tags={"kfp.run_id": "run-123"}) as parent,
        tracker.stage_run("ingest", parent.run_id) as child,
    ):
        child.log_metrics({"loss": 0.5, "samples_per_s": 10.0}, step=1)
        child.log_metrics({"loss": 0.25}, step=2)
        child.log_image(np.zeros((8, 8, 3), dtype=np.uint8), "samples/grid.png")
        child.log_dict({"a": 1}, "reports/summary.json")

    client = MlflowClient(tracking_uri(config))
    parent_run = client.get_run(parent.run_id)
    child_run = client.get_run(child.run_id)
    assert parent_run.info.status == child_run.info.status == "FINISHED"
    assert parent_run.data.tags["kfp.run_id"] == "run-123"
    assert parent_run.data.tags["photogenic.git_commit"]
    assert child_run.data.tags[PARENT_TAG] == parent.run_id
    assert child_run.data.tags["photogenic.config_fingerprint"] == config.fingerprint()
    assert child_run.data.params["train.quality_tune.noise_offset"] == "0.1"
    assert child_run.data.params["model.unet_channels"] == "[16, 32]"
    assert len(child_run.data.params) == len(flatten(to_dict(config)))
    history = client.get_metric_history(child.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    artifacts = {a.path for a in client.list_artifacts(child.run_id, "samples")}
    assert "samples/grid.png" in artifacts
    # Artifacts live beside the database, not in the current directory.
    assert (workspace / "mlartifacts").is_dir()
    assert not Path("mlruns").exists()


def test_failed_stage_marks_the_run_failed(workspace: Path) -> None:
    tracker = Tracker(_config(workspace))
    with pytest.raises(RuntimeError, match="boom"), tracker.stage_run("curate") as run:
        raise RuntimeError("boom")
    assert MlflowClient(tracker.uri).get_run(run.run_id).info.status == "FAILED"


def test_only_rank_zero_logs(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    tracker = Tracker(_config(workspace))
    with tracker.stage_run("pretrain") as run:
        run.log_metrics({"loss": 1.0}, step=0)
    assert run.run_id is None
    assert not (workspace / "mlflow.db").exists()


def test_secret_looking_config_values_never_reach_mlflow(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    config = _config(
        workspace,
        f"tracking.experiment=exp-{secret}",  # a secret pasted into a harmless-looking key
        "model.text_encoder=s3://AKIAIOSFODNN7EXAMPLE@bucket/encoder",
    )
    with pytest.raises(ConfigError, match="'storage.root' \\(<redacted>\\) cannot be used") as refused:
        _config(workspace, "storage.root=http://user:hunter22@minio:9000/bucket")  # and never echoed
    assert "hunter22" not in str(refused.value)
    tracker = Tracker(config)
    with tracker.stage_run("ingest", tags={"note": f"key {secret}"}) as run:
        run.log_params({"aws_secret_access_key": "plain-S3cr3t", "api_token": "abc", "ok": "fine"})
    data = MlflowClient(tracker.uri).get_run(run.run_id).data
    everything = " ".join([*data.params.values(), *data.tags.values(), *data.params, *data.tags])
    for value in (secret, "AKIAIOSFODNN7EXAMPLE", "plain-S3cr3t"):
        assert value not in everything
    assert data.params["model.text_encoder"] == REDACTED
    assert data.params["aws_secret_access_key"] == REDACTED
    assert data.params["ok"] == "fine"
    assert data.tags["note"] == REDACTED
    # The experiment name is not a param; the experiment holding a secret is the user's own choice,
    # but the param that carried it was redacted.
    assert data.params["tracking.experiment"] == REDACTED


def test_redaction_rules() -> None:
    assert looks_secret_name("AWS_SECRET_ACCESS_KEY") and looks_secret_name("auth_token")
    assert looks_secret_name("db.password") and looks_secret_name("api-key")
    assert not looks_secret_name("model.max_caption_tokens")
    assert not looks_secret_name("train.zero_stage")
    assert not looks_secret_name("PWD") and not looks_secret_name("OLDPWD")  # the working directory
    assert looks_secret_value("AKIAIOSFODNN7EXAMPLE", set())
    assert looks_secret_value("https://u:p4ss@host/x", set())
    assert looks_secret_value("Bearer abcdefghijkl", set())
    assert looks_secret_value("-----BEGIN RSA PRIVATE KEY-----", set())
    assert not looks_secret_value("0123456789abcdef0123456789abcdef01234567", set())  # a git commit
    assert not looks_secret_value("s3://bucket/prefix", set())
    assert looks_secret_value("prefix-s3cr3tvalue", {"s3cr3tvalue"})
    assert redact({"a": "1", "password": "x"}) == {"a": "1", "password": REDACTED}


def test_unavailable_store_warns_or_fails_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3server import _pick_ports

    (port,), _ = _pick_ports(1, 0)  # nothing listens there: a tracking server that is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{port}"

    warn = Tracker(_config(tmp_path, f"tracking.uri={uri}", "tracking.on_error=warn"))
    with warn.stage_run("pretrain") as run:
        run.log_metrics({"loss": 1.0})
    assert run.run_id is None
    assert warn.failures and "MLflow start run failed" in warn.failures[0]
    assert f"127.0.0.1:{port}" in warn.failures[0]

    fail = Tracker(_config(tmp_path, f"tracking.uri={uri}", "tracking.on_error=fail"))
    with pytest.raises(TrackingError, match="MLflow start run failed"), fail.stage_run("pretrain"):
        pass


def test_system_metrics_are_logged_while_a_block_runs(workspace: Path) -> None:
    import time

    tracker = Tracker(_config(workspace))
    with tracker.stage_run("train-pretrain") as run, run.system_metrics(interval_s=0.2):
        time.sleep(1.2)
    metrics = MlflowClient(tracker.uri).get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_a_stage_run_logs_only_the_settings_it_reads(workspace: Path) -> None:
    from photogenic.stages import stage_sections

    config = _config(workspace)
    tracker = Tracker(config)
    with tracker.stage_run("train-quality-tune", sections=stage_sections("train", {"recipe": "quality_tune"})) as run:
        pass
    params = MlflowClient(tracker.uri).get_run(run.run_id).data.params
    assert params["train.quality_tune.noise_offset"] == "0.1" and params["train.seed"] == str(config.train.seed)
    assert "model.unet_channels" in params and "evaluate.sampling_steps" in params
    assert not any(k.startswith(("train.pretrain.", "train.autoencoder.", "curate.", "data.")) for k in params)
