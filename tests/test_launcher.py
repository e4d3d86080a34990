"""The multi-node training launcher, against a fake of the Kubernetes API.

No cluster can run on these machines, so `FakeCustomObjects` and `FakeCore` stand in for the kubernetes
client's CustomObjectsApi and CoreV1Api: they keep created objects in memory and move a job through the
conditions the training operator would set. The job bodies themselves are built and checked with the
Kubeflow SDKs' typed models, and one test runs the pods' exact command (`photogenic train ...`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException

from photogenic.launcher import LaunchError, TrainingJob, job_name, launch, pytorchjob, train_args, trainjob

GROUPS = {"pytorchjobs": "kubeflow.org", "trainjobs": "trainer.kubeflow.org"}


class FakeCustomObjects:
    """CustomObjectsApi's create/get/delete, with `script` giving the status the n-th `get` returns."""

    def __init__(self, script: Callable[[int, dict], dict | None], on_create: Callable[[dict], None] | None = None):
        self.script, self.on_create = script, on_create
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.gets = 0

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict):
        assert GROUPS[plural] == group and body["apiVersion"] == f"{group}/{version}"
        key = (plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[key] = dict(body)
        self.created.append(body)
        if self.on_create:
            self.on_create(body)
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str):
        obj = self.objects[(plural, namespace, name)]
        status = self.script(self.gets, obj)
        self.gets += 1
        return {**obj, "status": status or {}}

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str):
        if self.objects.pop((plural, namespace, name), None) is None:
            raise ApiException(status=404, reason="NotFound")
        self.deleted.append(name)


class FakeCore:
    """CoreV1Api's pod listing and logs: the master pod appears after the first poll, its log grows."""

    def __init__(self, lines: list[str]):
        self.lines, self.reads, self.selectors = lines, 0, []

    def list_namespaced_pod(self, namespace: str, label_selector: str = ""):
        self.selectors.append(label_selector)
        if self.reads == 0:
            self.reads += 1
            return SimpleNamespace(items=[])
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="job-master-0"))])

    def read_namespaced_pod_log(self, name: str, namespace: str) -> str:
        self.reads += 1
        return "".join(self.lines[: self.reads])


def _condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {
        "conditions": [
            {"type": "Running", "status": "False"},
            {"type": kind, "status": "True", "reason": reason, "message": message},
        ]
    }


def _job(**kw: Any) -> TrainingJob:
    base = dict(
        name="photogenic-pretrain-abc",
        namespace="team-a",
        image="registry/photogenic-train:1",
        args=("train", "pretrain", "--data", "s3://b/d/manifest.json"),
    )
    return TrainingJob(**{**base, **kw})


def test_pytorchjob_body_from_the_sdk_models() -> None:
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    body = pytorchjob(_job(nodes=4, gpus_per_node=8, node_selector={"gpu": "h100"}, tolerations=tol, cache_pvc="c"))
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob

    assert body["apiVersion"] == "kubeflow.org/v1" and body["kind"] == "PyTorchJob"
    specs = body["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    pod = specs["Worker"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"  # the name the operator looks for
    assert container["command"] == [
        "torchrun",
        "--nproc-per-node=8",
        "-m",
        "photogenic",
        "train",
        "pretrain",
        "--data",
        "s3://b/d/manifest.json",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["tolerations"] == tol
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret_refs = {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}
    assert secret_refs["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "photogenic-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert not [e for e in container["env"] if "SECRET" in e["name"] and "value" in e]
    assert body["spec"]["nprocPerNode"] == "8"
    # Round-trips through the SDK's typed model.
    from kubeflow.training import ApiClient

    typed = ApiClient().deserialize(SimpleNamespace(data=__import__("json").dumps(body)), KubeflowOrgV1PyTorchJob)
    assert typed.spec.pytorch_replica_specs["Worker"].replicas == 3


def test_trainjob_body_passes_the_trainer_api_models_and_rejects_unknown_fields() -> None:
    body = trainjob(_job(nodes=2, gpus_per_node=4, node_selector={"gpu": "h100"}))
    assert body["kind"] == "TrainJob" and body["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["args"] == ["train", "pretrain", "--data", "s3://b/d/manifest.json"]
    patch = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert patch["template"]["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h100"}
    from photogenic.launcher import _same_fields

    with pytest.raises(ValueError, match="envFrom: not a field"):
        _same_fields({"spec": {"envFrom": []}}, {"spec": {}}, "TrainJob")


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_launch_waits_streams_the_master_log_and_deletes_the_job(backend: str) -> None:
    custom = FakeCustomObjects(
        lambda n, _: _condition("Succeeded" if backend == "pytorchjob" else "Complete") if n >= 2 else None
    )
    core = FakeCore(["step 1/3\n", "step 2/3\n", "step 3/3 done\n", "exported\n"])
    out, slept = io.StringIO(), []
    launch(_job(), backend=backend, poll_s=7, apis=(custom, core), out=out, sleep=slept.append)  # type: ignore[arg-type]
    assert len(custom.created) == 1 and custom.deleted == ["photogenic-pretrain-abc"] and not custom.objects
    assert out.getvalue().startswith("step 1/3\n") and "done" in out.getvalue()
    assert slept == [7, 7]
    assert "replica-type=master" in core.selectors[0] or "job-completion-index=0" in core.selectors[0]


def test_a_failed_job_fails_the_task_with_the_operators_reason_and_is_deleted() -> None:
    custom = FakeCustomObjects(
        lambda n, _: _condition("Failed", "BackoffLimitExceeded", "pod master-0 OOMKilled") if n >= 1 else None
    )
    with pytest.raises(
        LaunchError,
        match="pytorchjob team-a/photogenic-pretrain-abc failed: BackoffLimitExceeded: pod master-0 OOMKilled",
    ):
        launch(_job(), "pytorchjob", apis=(custom, FakeCore([])), out=io.StringIO(), sleep=lambda s: None)  # type: ignore[arg-type]
    assert custom.deleted == ["photogenic-pretrain-abc"]


def test_a_job_past_its_timeout_fails_and_is_deleted() -> None:
    now = [0.0]
    custom = FakeCustomObjects(lambda n, _: None)  # runs forever

    def sleep(s: float) -> None:
        now[0] += s

    with pytest.raises(LaunchError, match="did not finish within 60s"):
        launch(
            _job(),
            timeout_s=60,
            poll_s=25,
            apis=(custom, FakeCore([])),
            out=io.StringIO(),
            clock=lambda: now[0],
            sleep=sleep,
        )  # type: ignore[arg-type]
    assert custom.deleted == ["photogenic-pretrain-abc"] and custom.gets == 4


def test_a_retried_task_waits_for_its_existing_job_and_a_rejected_job_is_a_clear_error() -> None:
    custom = FakeCustomObjects(lambda n, _: _condition("Succeeded"))
    custom.objects[("pytorchjobs", "team-a", "photogenic-pretrain-abc")] = {"metadata": {"name": "x"}}
    launch(_job(), "pytorchjob", apis=(custom, FakeCore([])), out=io.StringIO(), sleep=lambda s: None)  # type: ignore[arg-type]
    assert custom.deleted == ["photogenic-pretrain-abc"]

    class Forbidden(FakeCustomObjects):
        def create_namespaced_custom_object(self, *a: Any, **k: Any) -> None:
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(LaunchError, match="cannot create pytorchjob team-a/photogenic-pretrain-abc: 403 Forbidden"):
        launch(_job(), "pytorchjob", apis=(Forbidden(lambda n, _: None), FakeCore([])), sleep=lambda s: None)  # type: ignore[arg-type]


def test_bad_job_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="not a DNS-1123 label"):
        _job(name="Photogenic_Pretrain")
    with pytest.raises(ValueError, match="at least one node"):
        _job(nodes=0)
    with pytest.raises(LaunchError, match="unknown training backend 'mpijob'"):
        launch(_job(), backend="mpijob", apis=(None, None))  # type: ignore[arg-type]
    assert job_name("photogenic-pretrain", "Run_ID.With/Odd:chars" * 5).startswith(
        "photogenic-pretrain-run-id-with-odd"
    )
    assert len(job_name("p", "x" * 100)) <= 63


@pytest.mark.slow
def test_launch_training_runs_the_pods_command_and_returns_the_model(tmp_path: Path) -> None:
    """The fake operator runs each pod's command (after `torchrun -m photogenic`) through the real CLI,
    as one rank: the same `photogenic train` the local tests run under torchrun."""
    from photogenic import tasks
    from photogenic.cli import main
    from tests.helpers import tiny_config, tiny_world_and_autoencoder

    data, ae = tiny_world_and_autoencoder(tmp_path)
    config = tiny_config(tmp_path)
    commands = []

    def run_pods(body: dict) -> None:
        command = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
        assert command[:4] == ["torchrun", "--nproc-per-node=1", "-m", "photogenic"]
        commands.append(command)
        result = CliRunner().invoke(main, command[4:], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    custom = FakeCustomObjects(lambda n, _: _condition("Succeeded"), on_create=run_pods)
    kw = dict(
        backend="pytorchjob",
        image="img:1",
        nodes=1,
        gpus_per_node=0,
        namespace="ns",
        job_key="run1",
        apis=(custom, FakeCore([])),
    )
    config_uri = tasks.publish_config(config, [f"workspace={tmp_path}"])
    result = tasks.launch_training(config, config_uri, "pretrain", data, ae, "", "", **kw)
    assert result["steps"] == 2 and Path(result["model_uri"], "manifest.json").exists()
    assert commands[0][-2:] == ["--config", config_uri]  # the pods read the run's config, as the task did
    assert custom.deleted == ["photogenic-pretrain-run1"]
    again = tasks.launch_training(config, config_uri, "pretrain", data, ae, "", "", **kw)
    assert again["reused"] is True and len(custom.created) == 1  # a finished model needs no second job
    preset_args = ["--preset", "tiny", "a.b=1"]
    args = train_args("quality_tune", "d.json", "s3://b/run", preset_args, "base", "j", "", "h.json")
    assert args[args.index("--rehearsal-data") + 1] == "h.json" and args[-3:] == preset_args
    assert "--rehearsal-data" not in train_args("pretrain", "d.json", "s3://b/run", preset_args, "ae")


# --------------------------------------------------------------------------------------------- pods


def _pod(name: str, waiting: str = "", message: str = "", unschedulable: str = "") -> SimpleNamespace:
    """A V1Pod as the client returns it (attributes, not dicts): a container waiting for `waiting`, or
    unscheduled with the scheduler's `unschedulable` message."""
    state = SimpleNamespace(waiting=SimpleNamespace(reason=waiting, message=message) if waiting else None)
    statuses = [SimpleNamespace(name="node", state=state)] if waiting else None
    conditions = (
        [SimpleNamespace(type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable)]
        if unschedulable
        else [SimpleNamespace(type="PodScheduled", status="True", reason=None, message=None)]
    )
    status = SimpleNamespace(container_statuses=statuses, init_container_statuses=None, conditions=conditions)
    return SimpleNamespace(metadata=SimpleNamespace(name=name), status=status)


def _fake_time() -> tuple[list[float], dict[str, Any]]:
    """A clock that moves only by the launcher's sleeps: (the sleeps so far, `launch`'s clock and sleep)."""
    slept: list[float] = []
    return slept, {"clock": lambda: sum(slept), "sleep": slept.append}


class PodsCore:
    """CoreV1Api with the job's pods given by `script(n)` on the n-th listing of the whole job."""

    def __init__(self, script: Callable[[int], list[SimpleNamespace]]):
        self.script, self.listings = script, 0

    def list_namespaced_pod(self, namespace: str, label_selector: str = ""):
        if "master" in label_selector or "completion-index" in label_selector:
            return SimpleNamespace(items=[])  # the log follower: nothing to print here
        pods = self.script(self.listings)
        self.listings += 1
        return SimpleNamespace(items=pods)

    def read_namespaced_pod_log(self, name: str, namespace: str) -> str:
        return ""


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "registry.example.com/ml/photogenic-train:0.2.0"'),
        ("CreateContainerConfigError", 'configmap "photogenic-config" not found'),
        ("InvalidImageName", 'Failed to apply default image tag "Registry/Bad Name"'),
    ],
)
@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_a_pod_that_cannot_start_fails_the_task_at_once_with_its_reason(
    backend: str, reason: str, message: str
) -> None:
    custom = FakeCustomObjects(lambda n, _: None)  # the operator reports nothing: the job looks alive
    core = PodsCore(lambda n: [_pod("photogenic-pretrain-abc-node-0-0")] if n < 2 else [_pod("p-0", reason, message)])
    slept, time = _fake_time()
    with pytest.raises(LaunchError) as err:
        launch(_job(), backend, timeout_s=3600, poll_s=15, apis=(custom, core), out=io.StringIO(), **time)  # type: ignore[arg-type]
    assert f"cannot run: pod p-0, container node: {reason}: {message}" in str(err.value)
    assert len(slept) == 2 and custom.deleted == ["photogenic-pretrain-abc"]  # the third poll, not the timeout


def test_a_pod_unschedulable_past_the_grace_fails_with_the_schedulers_message() -> None:
    now = [0.0]
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."

    def pods(n: int) -> list[SimpleNamespace]:
        if n == 3:  # scheduled for a moment (the autoscaler added a node), then pending again: the clock restarts
            return [_pod("w-0")]
        return [_pod("w-0", unschedulable=message)]

    def sleep(s: float) -> None:
        now[0] += s

    custom = FakeCustomObjects(lambda n, _: None)
    with pytest.raises(LaunchError, match=r"pod w-0 could not be scheduled for 660s: 0/3 nodes are available"):
        launch(
            _job(),
            poll_s=60,
            unschedulable_s=600,
            apis=(custom, PodsCore(pods)),
            out=io.StringIO(),
            clock=lambda: now[0],
            sleep=sleep,
        )  # type: ignore[arg-type]
    # Pending at 0-120 s, scheduled at 180 s, pending again from 240 s: past 600 s of it at 900 s.
    assert now[0] == 900 and custom.deleted == ["photogenic-pretrain-abc"]


def test_a_slow_image_pull_is_not_a_failure() -> None:
    custom = FakeCustomObjects(lambda n, _: _condition("Complete") if n >= 3 else None)
    core = PodsCore(lambda n: [_pod("n-0", "ContainerCreating"), _pod("n-1", "ErrImagePull", "i/o timeout")])
    _, time = _fake_time()
    launch(_job(), "trainjob", timeout_s=3600, apis=(custom, core), out=io.StringIO(), **time)  # type: ignore[arg-type]
    assert custom.deleted == ["photogenic-pretrain-abc"]


# --------------------------------------------------------------------------------------------- ownership


class OwnedObjects(FakeCustomObjects):
    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.patches: list[dict] = []

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str, body):
        self.patches.append(body)
        self.objects[(plural, namespace, name)]["metadata"].update(body["metadata"])


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_the_launcher_pod_owns_its_job_and_a_retried_launcher_adds_itself(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photogenic.launcher import this_pod

    monkeypatch.setenv("KFP_POD_NAME", "quality-tuning-abc-system-container-impl-1")
    monkeypatch.setenv("KFP_POD_UID", "8d5b6a1e-0000-4000-8000-000000000001")
    first = this_pod()
    assert first is not None
    custom = OwnedObjects(lambda n, _: _condition("Succeeded" if backend == "pytorchjob" else "Complete"))
    launch(_job(owner=first), backend, apis=(custom, FakeCore([])), out=io.StringIO(), cleanup=False)  # type: ignore[arg-type]
    (created,) = custom.created
    assert created["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": first.name, "uid": first.uid}
    ]
    # KFP retries the task in a new pod; the old one may be garbage-collected: the job must outlive it.
    from photogenic.launcher import PodRef

    retry = PodRef("quality-tuning-abc-system-container-impl-2", "8d5b6a1e-0000-4000-8000-000000000002")
    launch(_job(owner=retry), backend, apis=(custom, FakeCore([])), out=io.StringIO(), cleanup=False)  # type: ignore[arg-type]
    (patch,) = custom.patches
    assert [o["uid"] for o in patch["metadata"]["ownerReferences"]] == [first.uid, retry.uid]
    monkeypatch.delenv("KFP_POD_UID")
    assert this_pod() is None  # outside a KFP pod: no owner


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize("pvc", ["", "photogenic-cache"])
def test_job_pods_can_write_their_cache_pull_private_images_and_need_the_config_map(backend: str, pvc: str) -> None:
    body = (pytorchjob if backend == "pytorchjob" else trainjob)(
        _job(cache_pvc=pvc, image_pull_secrets=("photogenic-registry",))
    )
    if backend == "pytorchjob":
        pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        env = pod["containers"][0]["env"]
    else:
        pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        pod = pod["template"]["spec"]["template"]["spec"]
        env = body["spec"]["trainer"]["env"]
    # A fresh volume's root belongs to root: the kubelet hands it to the pods' group.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 10001
    (cache,) = [v for v in pod["volumes"] if v["name"] == "cache"]
    assert cache == (
        {"name": "cache", "persistentVolumeClaim": {"claimName": pvc}} if pvc else {"name": "cache", "emptyDir": {}}
    )
    assert {"name": "PHOTOGENIC_WORKSPACE", "value": "/cache"} in env
    assert pod["imagePullSecrets"] == [{"name": "photogenic-registry"}]
    config_refs = [e["valueFrom"]["configMapKeyRef"] for e in env if "configMapKeyRef" in e.get("valueFrom", {})]
    assert config_refs and all(ref["optional"] is False for ref in config_refs)


def test_the_default_backend_is_kubeflow_trainer_v2(tmp_path: Path) -> None:
    from photogenic.cli import main

    args = ["job", "render", "--data", "s3://b/d/manifest.json", "--out", "s3://bucket/runs/pretrain-1"]
    args += ["--preset", "tiny", f"workspace={tmp_path}"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = __import__("yaml").safe_load(result.output)
    assert body["kind"] == "TrainJob" and body["spec"]["runtimeRef"]["name"] == "torch-distributed"
    custom = FakeCustomObjects(lambda n, _: _condition("Complete"))
    _, time = _fake_time()
    launch(_job(), timeout_s=60, apis=(custom, FakeCore([])), out=io.StringIO(), **time)  # type: ignore[arg-type]
    assert custom.created[0]["kind"] == "TrainJob"
