"""Faults under one stage, with real parts: a SeaweedFS killed and restarted under an ingestion, a
checkpoint write and an evaluation upload, an MLflow server killed mid-training, and one of two torchrun
ranks killed or frozen. Whole-pipeline faults and bad input: test_reliability_pipeline.py. See
RELIABILITY.md."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from photogenic.config import Config, load_config
from photogenic.s3store import S3Store
from photogenic.storage import StoreError
from tests.s3server import SeaweedS3

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, store: str, *overrides: str) -> Config:
    # Fast retries: the outage below lasts a few seconds; botocore's standard mode backs off up to 20 s.
    return load_config(
        "tiny",
        overrides=[f"workspace={tmp_path / 'ws'}", f"storage.root={store}", "data.workers=1", *overrides],
    )


def _kill_and_restart_on(
    monkeypatch: pytest.MonkeyPatch, server: SeaweedS3, when: Callable[[str], bool], down_s: float = 2.0
) -> dict[str, Any]:
    """Kill the S3 server just before the first upload whose key matches `when`, restart it `down_s` later."""
    state: dict[str, Any] = {"killed": False, "restarter": None}
    original = S3Store.put_file

    def put_file(self: S3Store, key: str, path: Any) -> Any:
        if not state["killed"] and when(key):
            state["killed"] = True
            server.kill()
            server.process = None
            state["restarter"] = threading.Timer(down_s, server.start)
            state["restarter"].start()
        return original(self, key, path)

    monkeypatch.setattr(S3Store, "put_file", put_file)
    return state


def _wait(state: dict[str, Any]) -> None:
    assert state["killed"], "the fault was never injected"
    state["restarter"].join()


def _retrying(fn: Callable[[], Any], state: dict[str, Any]) -> tuple[Any, str]:
    """Run a stage; if the outage outlasts the S3 client's retries it must fail clearly (as the pipeline's
    task would, before KFP retries it), and a re-run once the server is back completes."""
    try:
        return fn(), "completed through the outage"
    except StoreError as exc:
        assert "127.0.0.1" in str(exc) and "s3://photogenic/" in str(exc), exc  # names what it could not reach
        _wait(state)
        return fn(), f"failed clearly ({str(exc)[:80]}...), re-run completed"


def test_s3_killed_mid_ingestion_then_the_dataset_is_identical(own_s3: SeaweedS3, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from photogenic.data.ingest import ingest

    reference = ingest("world", _config(tmp_path, "s3://photogenic/reference", "world.num_samples=600"), progress=False)
    config = _config(tmp_path, "s3://photogenic/faulty", "world.num_samples=600")
    state = _kill_and_restart_on(monkeypatch, own_s3, lambda key: key.endswith("shard-00003.tar"))
    result, how = _retrying(lambda: ingest("world", config, progress=False), state)
    _wait(state)
    assert result.fingerprint == reference.fingerprint and result.counts == reference.counts, how


def test_s3_killed_mid_checkpoint_write_then_training_ends_at_the_same_model(
    own_s3: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photogenic.data.ingest import ingest
    from photogenic.data.validate import validate
    from photogenic.train.run import train

    base = _config(tmp_path, "s3://photogenic/data")
    data = validate(ingest("world", base, progress=False).manifest_uri, base).manifest_uri
    steps = ["train.autoencoder.steps=3"]
    reference = train("autoencoder", _config(tmp_path, "s3://photogenic/ref", *steps), data, progress=False)
    state = _kill_and_restart_on(monkeypatch, own_s3, lambda key: key.startswith("step-00000002/"))
    config = _config(tmp_path, "s3://photogenic/faulty", *steps)
    result, how = _retrying(lambda: train("autoencoder", config, data, progress=False), state)
    _wait(state)
    assert result.steps == 3
    assert result.fingerprint == reference.fingerprint, how  # the exported model, byte for byte


def test_s3_killed_mid_evaluation_upload_then_the_results_are_identical(
    own_s3: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photogenic.evaluate import evaluate
    from photogenic.judges import train_judges
    from photogenic.storage import join_uri
    from photogenic.train.run import train
    from tests.helpers import tiny_config, tiny_world_and_autoencoder

    data, ae = tiny_world_and_autoencoder(tmp_path / "local")
    model = train("pretrain", tiny_config(tmp_path / "local"), data, base=ae, progress=False).model_uri
    config = _config(tmp_path, "s3://photogenic/eval")
    judges = train_judges(config, "evaluation")
    reference = evaluate(model, model, judges.uri, config, out="s3://photogenic/eval/ref")
    state = _kill_and_restart_on(monkeypatch, own_s3, lambda key: key.startswith("images/"))
    result, how = _retrying(
        lambda: evaluate(model, model, judges.uri, config, out="s3://photogenic/eval/faulty"), state
    )
    _wait(state)
    assert result.metrics == reference.metrics, how
    assert join_uri("s3://photogenic/eval/faulty", "manifest.json") == result.manifest_uri


def test_mlflow_server_killed_mid_training_keeps_the_model_and_reports_what_was_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photogenic.tracking import Tracker
    from photogenic.train.run import train
    from tests.helpers import tiny_world_and_autoencoder

    data, ae = tiny_world_and_autoencoder(tmp_path / "local")
    port = _free_port()
    store = ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root", str(tmp_path)]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            *store,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 60)
        # Fail fast instead of MLflow's default minutes of HTTP retries per call.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        config = load_config(
            "tiny",
            overrides=[
                f"workspace={tmp_path / 'ws'}",
                f"tracking.uri=http://127.0.0.1:{port}",
                "train.pretrain.steps=4",
            ],
        )
        tracker = Tracker(config)
        with tracker.stage_run("train-pretrain") as run:
            assert run.active
            os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies once the run is open
            server.wait(10)
            result = train("pretrain", config, data, base=ae, run=run, progress=False)
        assert result.steps == 4 and Path(result.model_uri, "manifest.json").exists()  # the model is safe
        assert tracker.failures and all("MLflow" in f and f"127.0.0.1:{port}" in f for f in tracker.failures)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def _worker(launcher: psutil.Process, rank: int, timeout: float = 300) -> psutil.Process:
    """The process of `rank` among the workers a torchrun launcher started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in launcher.children(recursive=True):
            try:
                env = child.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if env.get("RANK") == str(rank) and "LOCAL_RANK" in env:
                return child
        time.sleep(0.1)
    raise AssertionError(f"torchrun never started rank {rank}")


@pytest.fixture(scope="module")
def two_rank_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 12-step ZeRO-2 pretraining under torchrun with 2 ranks on the tiny world, and the weights of
    its uninterrupted run."""
    from tests.helpers import child_env, tiny_world_and_autoencoder, unet_weights

    ws = tmp_path_factory.mktemp("two-ranks")
    data, ae = tiny_world_and_autoencoder(ws)
    cmd = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "photogenic",
        "train",
        "pretrain",
        "--data",
        data,
        "--base",
        ae,
        "--preset",
        "tiny",
        "train.pretrain.steps=12",
        "train.pretrain.checkpoint_every=2",
        "train.pretrain.keep_checkpoints=3",
        "train.zero_stage=2",
    ]
    env = child_env(ws)
    straight = subprocess.run([*cmd, "--out", str(ws / "straight")], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return {"cmd": cmd, "env": env, "weights": unet_weights(json.loads(straight.stdout)["model_uri"])}


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "stalls"])
def test_one_of_two_torchrun_ranks_lost_fails_the_job_within_the_timeout_and_a_restart_resumes(
    two_rank_job: dict[str, Any], fault: signal.Signals, tmp_path: Path
) -> None:
    """Rank 1 of a 2-rank run dies (SIGKILL) or stalls (SIGSTOP) after the second checkpoint: the job
    fails, with the lost rank named, within the configured collective timeout (plus torchrun's 30 s
    grace to stop a frozen rank); no rank is left behind; the same command run again resumes from the
    last complete checkpoint and ends with the uninterrupted run's weights."""
    from tests.helpers import assert_same_weights, latest_checkpoint_step, unet_weights

    timeout_s = 15
    cmd = [*two_rank_job["cmd"], f"train.collective_timeout_s={timeout_s}", "--out", str(tmp_path / "run")]
    env = two_rank_job["env"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    workers: list[psutil.Process] = []
    try:
        launcher = psutil.Process(proc.pid)
        rank1 = _worker(launcher, 1)
        workers = [rank1, _worker(launcher, 0)]
        deadline = time.monotonic() + 300
        while latest_checkpoint_step(tmp_path / "run" / "checkpoints") < 4 and proc.poll() is None:
            assert time.monotonic() < deadline, "the job never wrote its second checkpoint"
            time.sleep(0.05)
        rank1.send_signal(fault)
        lost_at = latest_checkpoint_step(tmp_path / "run" / "checkpoints")
        assert 4 <= lost_at < 12, f"rank 1 was not lost mid-way (latest checkpoint: step {lost_at})"
        bound = timeout_s + 30 + 30  # the collective timeout, torchrun's grace, and slack for a busy machine
        try:
            _, stderr = proc.communicate(timeout=bound)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job still ran {bound}s after rank 1 was lost")
    finally:
        if proc.poll() is None:  # the workers run in sessions of their own: kill them by pid too
            os.killpg(proc.pid, signal.SIGKILL)
            for worker in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.kill()
    assert proc.returncode != 0
    if fault == signal.SIGKILL:  # torchrun names the dead rank as the root cause
        root_cause = stderr[stderr.index("Root Cause") :]
        assert "rank      : 1" in root_cause and "SIGKILL" in root_cause, stderr[-3000:]
    else:  # the waiting rank's collective times out and says so
        assert f"rank 0 of 2: another rank died or stopped answering for more than {timeout_s}s" in stderr
        assert "train.collective_timeout_s" in stderr, stderr[-3000:]
    assert not psutil.wait_procs(workers, timeout=10)[1], "ranks left running after the job failed"

    restarted = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    result = json.loads(restarted.stdout)
    assert result["steps"] == 12 and result["resumed_from"] >= lost_at
    assert_same_weights(two_rank_job["weights"], unet_weights(result["model_uri"]))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout}s")
