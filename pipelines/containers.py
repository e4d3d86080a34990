"""Local runs in containers: every task of the pipeline in our image, through kfp.local's DockerRunner.

A task runs the way a cluster runs it: in the image `make image-local` built, as uid 10001, with only the
environment a pod of ours gets (`launcher.S3_SECRET_KEYS` from a Secret, `launcher.CONFIG_MAP_KEYS`
from a ConfigMap), S3 and MLflow reached over the network. The workspace is mounted at its own path, so
a run without S3 keeps its store, MLflow database and summary there, as the subprocess run does.

Any Docker-compatible API will do: a Docker daemon, or podman's (`podman system service`, which
`engine_api` starts for the run when no daemon answers). Our task handler replaces kfp's for the run:
kfp's removes a container as soon as it exits and then reads its exit status, which podman answers with
a 500 (Docker with a 404, which kfp takes for success); ours waits, reads the status, then removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photogenic.launcher import CONFIG_MAP_KEYS, S3_SECRET_KEYS
from photogenic.tracking import RUN_ID_ENV

# The image's user (images/photogenic/Dockerfile), the uid a cluster runs our pods as.
IMAGE_USER = "10001:10001"
# What `make image-local` (images/build.py --local) builds.
LOCAL_IMAGE = "localhost/photogenic:local"


class ContainerError(RuntimeError):
    """No container engine answers, the image is missing, or the workspace is not writable for the task user."""


@dataclass(frozen=True)
class Containers:
    """How a local run puts its tasks in containers.

    Attributes:
        image: the image every task runs in (the CPU image; a local run trains on the CPU).
        user: uid:gid the tasks run as.
        network: the containers' network; `host`, so that S3 and MLflow on this machine's loopback answer.
    """

    image: str
    user: str = IMAGE_USER
    network: str = "host"


def task_environment() -> dict[str, str]:
    """The environment a pod of ours gets on a cluster, taken from this one: nothing else goes in (the
    run's id stands in for the pod's `pipeline/runid` label)."""
    return {k: os.environ[k] for k in (*S3_SECRET_KEYS, *CONFIG_MAP_KEYS, RUN_ID_ENV) if os.environ.get(k)}


def check_workspace(workspace: Path, user: str) -> None:
    """The tasks write the workspace as `user`; a folder they cannot write fails them one by one, late."""
    uid = int(user.split(":")[0])
    for folder in (workspace, *(p for p in workspace.rglob("*") if p.is_dir())):
        st = folder.stat()
        if st.st_uid == uid or st.st_mode & 0o002:
            continue
        raise ContainerError(
            f"workspace folder {folder} is not writable for uid {uid}, the user the tasks run as: "
            f"`chown -R {user} {workspace}` (or start with a new workspace)"
        )


def prepare_workspace(workspace: Path, user: str) -> None:
    """Create the workspace for the task user: owned by it when this process may give it away (root),
    else open to it."""
    uid, gid = (int(x) for x in user.split(":"))
    root, fresh = os.geteuid() == 0, not workspace.exists()
    for folder in (workspace, workspace / "kfp", workspace / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
        if root and folder.stat().st_uid == 0:
            os.chown(folder, uid, gid)
        elif not root and fresh:
            folder.chmod(folder.stat().st_mode | 0o777)
    check_workspace(workspace, user)


@contextlib.contextmanager
def engine_api() -> Iterator[str]:
    """A Docker-compatible API for the run: $DOCKER_HOST, a Docker daemon, or a podman service started here
    (stopped at the end). Yields the API's address and sets DOCKER_HOST to it meanwhile."""
    import docker

    def answers(url: str | None) -> bool:
        try:
            client = docker.DockerClient(base_url=url) if url else docker.from_env()
            with contextlib.closing(client):
                return bool(client.ping())
        except Exception:  # docker-py raises DockerException, requests' and socket errors alike
            return False

    if answers(os.environ.get("DOCKER_HOST") or None):
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    if shutil.which("podman") is None:
        raise ContainerError(
            "no container engine answers: no Docker daemon at $DOCKER_HOST or /var/run/docker.sock, "
            "and podman is not installed (apt-get install podman)"
        )
    with tempfile.TemporaryDirectory(prefix="photogenic-podman-") as tmp:
        url = f"unix://{tmp}/podman.sock"
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 30
            while not answers(url):
                if service.poll() is not None or time.monotonic() > deadline:
                    err = service.stderr.read().decode(errors="replace") if service.poll() is not None else ""
                    raise ContainerError(f"podman's API service did not start at {url}: {err.strip()[-500:]}")
                time.sleep(0.2)
            saved = os.environ.get("DOCKER_HOST")
            os.environ["DOCKER_HOST"] = url
            try:
                yield url
            finally:
                if saved is None:
                    os.environ.pop("DOCKER_HOST", None)
                else:
                    os.environ["DOCKER_HOST"] = saved
        finally:
            service.terminate()
            try:
                service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.kill()


def check_image(image: str) -> None:
    import docker

    with contextlib.closing(docker.from_env()) as client:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ContainerError(
                f"image {image} is not in the container engine: build it with `make image-local` "
                "(docs/stages.md, 'Run in containers')"
            ) from None


def use_image(pipeline: Any, image: str) -> None:
    """Every executor of the pipeline runs in `image` (kfp.local reads the graph this edits in place)."""
    executors = pipeline.pipeline_spec.deployment_spec.fields["executors"].struct_value.fields
    for executor in executors.values():
        container = executor.struct_value.fields.get("container")
        if container is not None:
            container.struct_value.fields["image"].string_value = image


def runner(containers: Containers) -> Any:
    from kfp import local

    return local.DockerRunner(user=containers.user, network_mode=containers.network, environment=task_environment())


@contextlib.contextmanager
def task_handler(workspace: Path) -> Iterator[None]:
    """Put our task handler in kfp.local's place for the run."""
    from kfp.local import docker_task_handler

    class WorkspaceTaskHandler(docker_task_handler.DockerTaskHandler):
        def get_volumes_to_mount(self, client: Any = None) -> dict[str, Any]:
            volumes = super().get_volumes_to_mount(client)
            volumes[str(workspace)] = {"bind": str(workspace), "mode": "rw"}
            return volumes

        def run(self) -> Any:
            import docker
            from kfp.local import status

            with contextlib.closing(docker.from_env()) as client:
                volumes = self.get_volumes_to_mount(client)
                args = self.runner.container_run_args
                code = run_container(client, self.image, self.full_command, volumes, self.env_vars, args)
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    original = docker_task_handler.DockerTaskHandler
    docker_task_handler.DockerTaskHandler = WorkspaceTaskHandler
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = original


def run_container(
    client: Any, image: str, command: list[str], volumes: dict[str, Any], env: dict[str, str], args: dict[str, Any]
) -> int:
    """Run one task to its end, print its output, and return its exit status; the container is removed
    only after its status was read."""
    container = client.containers.run(
        image=image, command=command, volumes=volumes, environment=env, detach=True, **args
    )
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(Exception):  # already gone is as good as removed
            container.remove(force=True)
