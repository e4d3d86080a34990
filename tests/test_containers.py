"""The pipeline in containers: our image, uid 10001, a pod's environment, S3 and MLflow over the network.

Tests marked `containers` need a container engine (a Docker daemon, or podman) and the image
`make image-local` builds; without them they are skipped with the reason, except where
PHOTOGENIC_REQUIRE_CONTAINERS=1 (CI sets it) makes them run and fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from photogenic.pipelines.containers import (
    LOCAL_IMAGE,
    ContainerError,
    check_workspace,
    engine_api,
    run_container,
    task_environment,
    use_image,
)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "autoencoder", "pretrain", "curate", "quality_tune")


def test_tasks_get_only_a_pods_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("GITHUB_TOKEN", "not for tasks")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not on a pod either")
    env = task_environment()
    assert env == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }


def test_every_task_of_the_pipeline_runs_in_the_chosen_image() -> None:
    from photogenic.pipelines.compiler import pipeline_version
    from photogenic.pipelines.quality_tuning import build

    pipeline = build(pipeline_version())
    use_image(pipeline, "localhost/photogenic:test")
    executors = pipeline.pipeline_spec.deployment_spec.fields["executors"].struct_value.fields
    images = {e.struct_value.fields["container"].struct_value.fields["image"].string_value for e in executors.values()}
    assert len(executors) > 10 and images == {"localhost/photogenic:test"}


def test_a_workspace_the_task_user_cannot_write_is_refused_before_any_task(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "store").mkdir(parents=True)
    for folder in (workspace, workspace / "store"):
        folder.chmod(0o755)  # owned by this test's user, not by uid 10001, and closed to others
    if os.geteuid() != 10001:
        with pytest.raises(ContainerError, match=r"ws is not writable for uid 10001.*chown -R 10001:10001"):
            check_workspace(workspace, "10001:10001")
    workspace.chmod(0o777)
    with pytest.raises(ContainerError, match=r"ws/store is not writable for uid 10001"):
        check_workspace(workspace, "10001:10001")
    (workspace / "store").chmod(0o777)
    check_workspace(workspace, "10001:10001")


def test_image_builds_carry_the_machines_pip_settings_into_podman_but_not_docker(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "images"))
    try:
        import build as image_build
    finally:
        sys.path.remove(str(ROOT / "images"))
    for version in ("2.9.1", "2.13.0"):  # the newest by version, not by name
        (tmp_path / f"torch-{version}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    pip = image_build.PipSettings(index_url=None, ca_bundle=ca, wheels=tmp_path)
    assert pip.torch_on_disk() == "torch==2.13.0"
    podman = image_build.build_command("podman", "photogenic", "r/p:t", "abc", "base:1", "torch==2.13.0", pip)
    assert f"{tmp_path}:/wheels:ro" in podman and "PIP_FIND_LINKS=/wheels" in podman
    assert f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro" in podman and "PYTHON_IMAGE=base:1" in podman
    assert "TORCH_SPEC=torch==2.13.0" in podman and podman[-1] == "."
    docker = image_build.build_command("docker", "photogenic", "r/p:t", "abc", None, None, pip)
    assert "-v" not in docker and not any("PIP_" in word for word in docker)


# --------------------------------------------------------------------------------------------- in containers


@pytest.mark.containers
def test_a_task_that_fails_at_once_is_reported_failed_and_removed() -> None:
    """kfp's own handler takes a container that is gone before its status is read for a success."""
    import docker

    with engine_api():
        client = docker.from_env()
        before = {c.id for c in client.containers.list(all=True)}
        assert run_container(client, LOCAL_IMAGE, ["sh", "-c", "exit 3"], {}, {}, {}) == 3
        assert run_container(client, LOCAL_IMAGE, ["python3", "-c", "import photogenic"], {}, {}, {}) == 0
        as_user = {"user": "10001:10001"}
        assert run_container(client, LOCAL_IMAGE, ["sh", "-c", 'test "$(id -u)" = 10001'], {}, {}, as_user) == 0
        assert {c.id for c in client.containers.list(all=True)} == before  # nothing left behind
        client.close()


def _mlflow_server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        + ["--artifacts-destination", str(tmp_path / "mlartifacts")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers are killed with it (`_stop`)
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                _stop(server)
                raise
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.containers
def test_the_tiny_pipeline_in_containers_gives_the_subprocess_runs_datasets_and_models(
    tmp_path: Path, own_s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same config, run once as local processes and once in our image as uid 10001, each into its own
    S3 prefix, both tracked by one MLflow server over HTTP: every stage gets the same fingerprint."""
    from mlflow import MlflowClient

    from photogenic.config import load_config, overrides_from
    from photogenic.pipelines.containers import Containers
    from photogenic.pipelines.local import run_locally

    server, url = _mlflow_server(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    try:
        summaries = {}
        for how in ("processes", "containers"):
            config = load_config("tiny", overrides=[f"storage.root=s3://photogenic/{how}", "world.num_samples=300"])
            boxes = Containers(LOCAL_IMAGE) if how == "containers" else None
            summaries[how] = run_locally(
                "tiny", overrides_from(config), tmp_path / how, console=io.StringIO(), containers=boxes
            )
        stages = {how: s["stages"] for how, s in summaries.items()}
        for stage in STAGES:
            assert stages["containers"][stage]["fingerprint"] == stages["processes"][stage]["fingerprint"], stage
            assert not stages["containers"][stage]["reused"]
        assert stages["containers"]["quality_tune"]["model_uri"].startswith("s3://photogenic/containers/")
        # The tasks wrote as uid 10001: kfp's output folders in the workspace are theirs.
        outputs = [p for p in (tmp_path / "containers" / "kfp").rglob("*") if p.is_file()]
        assert outputs and {p.stat().st_uid for p in outputs} == {10001}
        assert all(stat.S_IMODE(p.stat().st_mode) & 0o002 == 0 for p in outputs)  # nothing left world-writable
        client = MlflowClient(url)
        for how, summary in summaries.items():
            parent = client.get_run(summary["mlflow"]["parent_run_id"])
            assert parent.info.status == "FINISHED", how
        log = Path(summaries["containers"]["log_path"]).read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in log and own_s3.env()["AWS_SECRET_ACCESS_KEY"] not in log
        print(json.dumps({how: {k: stages[how][k]["fingerprint"][:12] for k in STAGES} for how in stages}))
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """The server and the workers it started (its process group)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(10)
