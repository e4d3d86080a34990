"""Shared fixtures: a real SeaweedFS S3 server on loopback, isolated environments, GPU skipping."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import SeaweedS3

_ISOLATED_ENV = (
    "MLFLOW_TRACKING_URI",
    "PHOTOGENIC_WORKSPACE",
    "PHOTOGENIC_STORE_ROOT",
    "PHOTOGENIC_KFP_RUN_ID",
    "KFP_POD_NAME",
    "KFP_POD_UID",
    "KF_PIPELINES_ENDPOINT",
    "KF_PIPELINES_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "RANK",
    "PHOTOGENIC_MODEL_CACHE",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = "needs a CUDA GPU; this machine has none"
    if os.environ.get("PHOTOGENIC_REQUIRE_CONTAINERS") != "1":
        missing = _container_image_missing()
        if missing:
            skips["containers"] = f"SKIPPED: runs tasks in containers, and {missing} (CI requires these tests)"
    for item in items:
        for marker, reason in skips.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


_STARTED: dict[str, float] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    import time

    _STARTED["session"] = time.monotonic()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Save every test's time (setup + call + teardown) to build/test-durations.txt, slowest first: the
    suite's speed is kept in view from run to run without timing anything inside a test."""
    import time

    totals: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                totals[report.nodeid] = totals.get(report.nodeid, 0.0) + report.duration
    if not totals:
        return
    wall = time.monotonic() - _STARTED.get("session", time.monotonic())
    out = Path(config.rootpath, "build", "test-durations.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {len(totals)} tests, {sum(totals.values()):.0f} s of test time, {wall:.0f} s wall"]
    lines += [f"{seconds:8.2f}  {nodeid}" for nodeid, seconds in sorted(totals.items(), key=lambda x: -x[1])]
    out.write_text("\n".join(lines) + "\n")
    terminalreporter.write_line(f"test durations: {out}")


def _container_image_missing() -> str | None:
    """Why the container tests cannot run here, or None: they need an engine and `make image-local`'s image."""
    import shutil
    import subprocess

    from photogenic.pipelines.containers import LOCAL_IMAGE

    for engine in ("podman", "docker"):
        if shutil.which(engine) is None:
            continue
        found = subprocess.run([engine, "image", "inspect", LOCAL_IMAGE], capture_output=True, check=False)
        if found.returncode == 0:
            return None
        return f"{engine} has no image {LOCAL_IMAGE} (`make image-local`)"
    return "no container engine is installed (podman, or Docker with its daemon)"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's AWS, MLflow or workspace settings, or writes to the cwd."""
    for name in _ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("PHOTOGENIC_MODEL_CACHE", str(tmp_path / "model-cache"))  # MLflow models' local copies


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the session, started on free loopback ports, killed at the end."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this test's own (killing the session's server would disturb other tests)."""
    import boto3

    server = SeaweedS3(tmp_path / "seaweed" / "data")
    server.start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    boto3.session.Session().client("s3").create_bucket(Bucket="photogenic")  # not the cached default session
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The AWS environment variables that point boto3 at the test server."""
    if s3_server.process is None:  # a test stopped it
        s3_server.start()
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: SeaweedS3) -> str:
    """A fresh, empty bucket; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a local folder and on SeaweedFS."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/prefix/run-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


def pytest_report_header(config: pytest.Config) -> str:
    return f"photogenic tests; cpu count {os.cpu_count()}"


# ------------------------------------------------------------------------- one tiny pipeline per process
# Building a tiny world, autoencoder, pretrained model and judge sets takes a while; the modules that
# only read them share one build per test process (each xdist worker makes its own). Everything a test
# trains, curates or evaluates goes to its own workspace: nothing here is written after it is built.


@contextmanager
def _without_isolated_env() -> Iterator[None]:
    """Session fixtures run before `_isolated_env`: they clear the same variables themselves."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _ISOLATED_ENV:
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def tiny_shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared workspace, and a validated tiny world and a 2-step autoencoder in it."""
    from tests.helpers import tiny_world_and_autoencoder

    ws = tmp_path_factory.mktemp("tiny-shared")
    with _without_isolated_env():
        data, ae = tiny_world_and_autoencoder(ws)
    return {"ws": ws, "data": data, "ae": ae}


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_shared: dict[str, Any]) -> str:
    """A 2-step pretrained model on the shared tiny world (its URI)."""
    from photogenic.train.run import train
    from tests.helpers import tiny_config

    config = tiny_config(tiny_shared["ws"])
    with _without_isolated_env():
        return train("pretrain", config, tiny_shared["data"], base=tiny_shared["ae"], progress=False).model_uri


@pytest.fixture(scope="session")
def tiny_judges(tiny_shared: dict[str, Any]) -> dict[str, Any]:
    """Both judge sets of the tiny preset (`curation`, `evaluation`: JudgeResults)."""
    from photogenic.judges import train_judges
    from tests.helpers import tiny_config

    config = tiny_config(tiny_shared["ws"])
    with _without_isolated_env():
        return {p: train_judges(config, p) for p in ("curation", "evaluation")}
