"""Faults and bad input across the whole local pipeline: a run killed between stages, a source full of
bad rows on S3 with credentials that must appear nowhere, and bad settings. See RELIABILITY.md.
(Stage-level faults are in test_reliability.py; the two files run in parallel under `make test`.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from photogenic.cli import main
from tests.s3server import SeaweedS3

pytestmark = pytest.mark.slow


def test_a_local_run_killed_between_stages_reuses_them_when_run_again(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "photogenic", "run", "--preset", "tiny", "-w", str(ws)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # progress lines: kill the whole run as soon as pretraining is under way
        seen.append(line)
        if "] autoencoder " in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not (ws / "summary.json").exists()

    result = CliRunner().invoke(main, ["run", "--preset", "tiny", "-w", str(ws)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages = json.loads((ws / "summary.json").read_text())["stages"]
    for stage in ("ingest", "validate", "autoencoder"):
        assert stages[stage]["reused"] is True, stage
    assert stages["quality_tune"]["reused"] is False


def test_the_pipeline_on_s3_with_bad_rows_loses_nothing_and_leaks_no_credential(
    own_s3: SeaweedS3, tmp_path: Path
) -> None:
    """The tiny pipeline against the real S3 server, credentials in the environment, a captions table with
    every bad-input kind. Real data has no oracle, so the first run stops at curation for a human review
    (as designed); the second imports the reviewers' keys and finishes. Counts in = out + quarantined,
    and no credential value in any log, summary, task output, MLflow param, tag or artifact, the
    compiled pipeline or the manifests."""
    from tests.test_data_stages import make_folder_source

    source = make_folder_source(f"s3://photogenic/raw-{uuid.uuid4().hex[:6]}")
    ws = tmp_path / "ws"
    args = ["run", "--preset", "tiny", "-w", str(ws), "--source", source["uri"], "storage.root=s3://photogenic/runs"]
    args += ["data.max_failed_fraction=0.5"]  # a quarter of this source is bad on purpose
    review = CliRunner().invoke(main, [*args, "curate.review=export"])
    assert review.exit_code == 1 and "stage 'curate' failed: photogenic.curate.ReviewNeeded:" in review.output
    candidates_uri = review.output.split(" and ")[-1].split()[0]
    assert candidates_uri.startswith("s3://photogenic/runs/") and candidates_uri.endswith("candidates.json")
    from photogenic.storage import open_store, split_parent

    folder, name = split_parent(candidates_uri)
    candidates = json.loads(open_store(folder).get_bytes(name))
    approved = tmp_path / "approved.json"
    approved.write_text(json.dumps([c["key"] for c in candidates["candidates"]]))

    result = CliRunner().invoke(main, [*args, "curate.review=import", "--approved", str(approved)])
    assert result.exit_code == 0, result.output
    summary = json.loads((ws / "summary.json").read_text())
    ing, val = summary["stages"]["ingest"]["counts"], summary["stages"]["validate"]["counts"]
    assert ing["input"] == source["rows"] + 1  # + the image without a caption row
    assert ing["input"] == ing["samples"] + ing["duplicates"] + ing["quarantined"]
    assert val["input"] == ing["samples"] == val["clean"] + val["quarantined"]
    assert ing["quarantined"] >= 2 and val["quarantined"] >= 8  # every bad kind is kept aside, with reasons
    assert summary["stages"]["ingest"]["reused"] is True  # the second run reused the first's stages
    assert summary["stages"]["quality_tune"]["model_uri"].startswith("s3://photogenic/runs/")

    texts = [review.output, result.output, (ws / "summary.json").read_text()]
    for path in [*ws.rglob("*"), *(Path(__file__).parents[1] / "manifests").rglob("*.yaml")]:
        if path.is_file() and path.suffix not in (".db", ".pt", ".safetensors", ".png", ".tar"):
            texts.append(path.read_text(errors="replace"))
    from photogenic.pipelines.compiler import COMPILED

    texts.append(COMPILED.read_text())
    from mlflow import MlflowClient

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    for run in client.search_runs([client.get_experiment_by_name("photogenic-quality-tuning").experiment_id]):
        texts.append(json.dumps({**run.data.params, **run.data.tags}))
    assert not [t for t in texts if own_s3.secret_key in t]
    assert len(texts) > 50  # logs, task outputs, artifacts and runs were all read


def test_bad_settings_are_one_clear_error_naming_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: str
) -> None:
    ws = ["-w", str(tmp_path / "ws")]

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, ["run", "--preset", "tiny", *ws, *args])

    wrong_type = run("train.pretrain.steps=many")
    assert wrong_type.exit_code == 1 and "train.pretrain.steps" in wrong_type.output
    unknown = CliRunner().invoke(main, ["run", "--preset", "huge", *ws])
    assert unknown.exit_code == 1 and "unknown preset 'huge'" in unknown.output

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    denied = run(f"storage.root=s3://{s3_bucket}/runs", "storage.max_attempts=1")
    assert denied.exit_code == 1 and "' failed: " in denied.output and "access denied" in denied.output
    assert f"s3://{s3_bucket}/runs/" in denied.output and "wrong-secret-value" not in denied.output

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    unreachable = run("storage.root=s3://photogenic/runs", "storage.max_attempts=1", "storage.connect_timeout_s=1")
    assert unreachable.exit_code == 1
    assert "' failed: " in unreachable.output and "cannot be reached" in unreachable.output
    assert "127.0.0.1:9" in unreachable.output
    assert "wrong-secret-value" not in unreachable.output
