"""Multi-node training on Kubeflow's training operator: build the job, create it, wait, stream logs, clean up.

Two backends, one interface:
- `pytorchjob`: a `kubeflow.org/v1` PyTorchJob (training operator v1), built with the `kubeflow-training`
  SDK's typed models: one Master and N-1 Workers, each running `torchrun` (which reads the operator's
  `PET_*` rendezvous variables) around the same `photogenic train` the local tests run.
- `trainjob`: a Kubeflow Trainer v2 `TrainJob` (`trainer.kubeflow.org/v1alpha1`) against a torch
  ClusterTrainingRuntime, built and validated with the `kubeflow-trainer-api` models.

The launcher pod holds no GPU: the task's GPU count, node selector and tolerations go to the job's pods.
While it waits it watches the job's pods too: an image that cannot be pulled, a missing Secret or
ConfigMap key, or a pod that stays unschedulable fails the task at once with the pod's reason, instead
of after the job's timeout. Run in a pod, it makes that pod the job's owner, so deleting the launcher
(or its pipeline run) deletes the job.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "TrainingJob",
    "LaunchError",
    "launch",
    "pytorchjob",
    "trainjob",
    "job_name",
    "kube_apis",
    "BACKENDS",
    "S3_SECRET_KEYS",
    "GPU_TOLERATIONS",
    "CONFIG_MAP_KEYS",
    "PodRef",
    "this_pod",
    "RUN_AS",
]

log = logging.getLogger(__name__)

Backend = Literal["pytorchjob", "trainjob"]
BACKENDS: tuple[str, ...] = ("pytorchjob", "trainjob")
_CONTAINER = {"pytorchjob": "pytorch", "trainjob": "node"}  # the names each operator expects
RUN_AS = 10001  # the images' user and group (images/*/Dockerfile); also the volumes' group (fsGroup)

# Training pods tolerate the taint GPU nodes usually carry (the pipeline's default, `job render`'s too).
GPU_TOLERATIONS: tuple[dict[str, str], ...] = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)

# The environment every pod of ours gets from the cluster (manifests/base): credentials from a Secret,
# endpoints from a ConfigMap. Each key becomes the env var of the same name.
S3_SECRET_KEYS: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CONFIG_MAP_KEYS: tuple[str, ...] = (
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "PHOTOGENIC_STORE_ROOT",
)


class LaunchError(RuntimeError):
    """The training job could not be created, failed, or did not finish in time."""


@dataclass(frozen=True)
class PodRef:
    """A pod that owns the job (the launcher's own pod): deleting it deletes the job."""

    name: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}


def this_pod() -> PodRef | None:
    """The pod this process runs in, from the variables KFP's executor sets (`KFP_POD_NAME`, `KFP_POD_UID`)."""
    import os

    name, uid = os.environ.get("KFP_POD_NAME", ""), os.environ.get("KFP_POD_UID", "")
    return PodRef(name, uid) if name and uid else None


@dataclass(frozen=True)
class TrainingJob:
    """Everything the job needs; nothing here is a secret (credentials come from `secret` as env).

    Attributes:
        name: the job's name (DNS-1123; see `job_name`).
        namespace: where to create it.
        image: the training image.
        args: the `photogenic train ...` arguments, run under torchrun on every node.
        nodes: number of nodes (pods).
        gpus_per_node: GPUs per pod (also torchrun's processes per node; 0 = one CPU process).
        cpu, memory: requests and limits per pod.
        env: plain environment variables (no secrets).
        secret: the Secret holding `S3_SECRET_KEYS` (S3 credentials), referenced, never copied.
        config_map: the ConfigMap holding `CONFIG_MAP_KEYS` (S3 endpoint, region, MLflow URI).
        service_account: the pods' ServiceAccount.
        node_selector, tolerations: scheduling, passed through from the pipeline task.
        cache_pvc: a PVC mounted at /cache (the workspace: local copies of shards and models); "" for an
            emptyDir per pod. Either is writable by the pods' user (fsGroup).
        image_pull_secrets: Secrets for pulling `image` from a private registry.
        owner: the pod that owns the job (`this_pod()`): the job is deleted with it.
        runtime: the Trainer v2 ClusterTrainingRuntime (`trainjob` only).
    """

    name: str
    namespace: str
    image: str
    args: tuple[str, ...]
    nodes: int = 1
    gpus_per_node: int = 1
    cpu: str = "8"
    memory: str = "64Gi"
    env: Mapping[str, str] = field(default_factory=dict)
    secret: str = "photogenic-s3"
    config_map: str = "photogenic-config"
    service_account: str = "photogenic-pipeline"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    cache_pvc: str = ""
    image_pull_secrets: tuple[str, ...] = ()
    owner: PodRef | None = None
    runtime: str = "torch-distributed"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"a training job needs at least one node, got nodes={self.nodes}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.name):
            raise ValueError(f"job name {self.name!r} is not a DNS-1123 label (lowercase, digits, '-', <= 63)")

    @property
    def procs_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    def torchrun(self) -> list[str]:
        """The container command: torchrun takes nnodes, node rank and the master from the operator's
        `PET_*` variables; only the processes per node are ours to say."""
        return ["torchrun", f"--nproc-per-node={self.procs_per_node}", "-m", "photogenic", *self.args]

    def resources(self) -> dict[str, Any]:
        limits: dict[str, str] = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus_per_node:
            limits["nvidia.com/gpu"] = str(self.gpus_per_node)
        return {"requests": dict(limits), "limits": limits}


def job_name(prefix: str, key: str) -> str:
    """A DNS-1123 job name from a prefix and a unique key (a KFP run id, a fingerprint)."""
    clean = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{key}".lower()).strip("-")
    return clean[:63].rstrip("-")


# --------------------------------------------------------------------------------------------- pod parts


def _pod_spec(job: TrainingJob, container: str) -> Any:
    from kubernetes import client as k8s

    mounts, volumes = (
        [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
    )
    # NCCL needs more shared memory than a container's default 64 MiB.
    mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
    env = [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(job.env.items())]
    env += [
        k8s.V1EnvVar(
            name=k, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=job.secret, key=k))
        )
        for k in S3_SECRET_KEYS
    ]
    # Required: without the ConfigMap the pods would run against pod-local paths and no MLflow server.
    env += [
        k8s.V1EnvVar(
            name=k,
            value_from=k8s.V1EnvVarSource(
                config_map_key_ref=k8s.V1ConfigMapKeySelector(name=job.config_map, key=k, optional=False)
            ),
        )
        for k in CONFIG_MAP_KEYS
    ]
    mounts.append(k8s.V1VolumeMount(name="cache", mount_path="/cache"))
    if job.cache_pvc:
        volumes.append(
            k8s.V1Volume(name="cache", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(job.cache_pvc))
        )
    else:
        volumes.append(k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource()))
    env.append(k8s.V1EnvVar(name="PHOTOGENIC_WORKSPACE", value="/cache"))
    return k8s.V1PodSpec(
        service_account_name=job.service_account,
        node_selector=dict(job.node_selector) or None,
        tolerations=[k8s.V1Toleration(**_snake(t)) for t in job.tolerations] or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in job.image_pull_secrets] or None,
        # fsGroup: a fresh volume's root belongs to root; the kubelet gives it to the pods' group.
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=RUN_AS,
            run_as_group=RUN_AS,
            fs_group=RUN_AS,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        containers=[
            k8s.V1Container(
                name=container,
                image=job.image,
                command=job.torchrun(),
                env=env,
                resources=k8s.V1ResourceRequirements(**job.resources()),
                volume_mounts=mounts,
                security_context=k8s.V1SecurityContext(
                    allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
                ),
            )
        ],
        volumes=volumes,
    )


def _metadata(job: TrainingJob) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": job.name,
        "namespace": job.namespace,
        "labels": {"app.kubernetes.io/part-of": "photogenic"},
    }
    if job.owner is not None:
        meta["owner_references"] = [job.owner.owner_reference()]
    return meta


def _snake(toleration: Mapping[str, Any]) -> dict[str, Any]:
    names = {"tolerationSeconds": "toleration_seconds"}
    return {names.get(k, k): v for k, v in toleration.items()}


def _serialize(obj: Any) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


# --------------------------------------------------------------------------------------------- job bodies


def pytorchjob(job: TrainingJob) -> dict[str, Any]:
    """The PyTorchJob body, built with the training SDK's models (Master + nodes-1 Workers)."""
    from kubeflow.training import models as m
    from kubernetes import client as k8s

    def replicas(n: int) -> Any:
        return m.KubeflowOrgV1ReplicaSpec(
            replicas=n,
            restart_policy="OnFailure",
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels={"app.kubernetes.io/part-of": "photogenic"}),
                spec=_pod_spec(job, _CONTAINER["pytorchjob"]),
            ),
        )

    specs = {"Master": replicas(1)}
    if job.nodes > 1:
        specs["Worker"] = replicas(job.nodes - 1)
    body = m.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1",
        kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(**_metadata(job)),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(job.procs_per_node),
            pytorch_replica_specs=specs,
            run_policy=m.KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=3),
        ),
    )
    return _serialize(body)


def trainjob(job: TrainingJob) -> dict[str, Any]:
    """The Trainer v2 TrainJob body, validated by the `kubeflow-trainer-api` models."""
    from kubeflow_trainer_api import models as t

    pod = _serialize(_pod_spec(job, _CONTAINER["trainjob"]))
    container = pod["containers"][0]
    patch = {
        "serviceAccountName": pod["serviceAccountName"],
        "securityContext": pod["securityContext"],
        "volumes": pod["volumes"],
        "containers": [
            {
                "name": container["name"],
                "volumeMounts": container["volumeMounts"],
                "securityContext": container["securityContext"],
            }
        ],
        **({"nodeSelector": pod["nodeSelector"]} if pod.get("nodeSelector") else {}),
        **({"tolerations": pod["tolerations"]} if pod.get("tolerations") else {}),
        **({"imagePullSecrets": pod["imagePullSecrets"]} if pod.get("imagePullSecrets") else {}),
    }
    body = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": {"app.kubernetes.io/part-of": "photogenic"},
            **({"ownerReferences": [job.owner.owner_reference()]} if job.owner else {}),
        },
        "spec": {
            "runtimeRef": {"name": job.runtime},
            "trainer": {
                "image": job.image,
                # The torch runtime runs torchrun itself; we give it the module and its arguments.
                "command": ["torchrun", "-m", "photogenic"],
                "args": list(job.args),
                "numNodes": job.nodes,
                "numProcPerNode": job.procs_per_node,
                "resourcesPerNode": job.resources(),
                "env": container.get("env") or [],
            },
            "runtimePatches": [
                {
                    "manager": "photogenic",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {"name": "node", "template": {"spec": {"template": {"spec": patch}}}}
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }
    model = t.TrainerV1alpha1TrainJob.from_dict(body)
    checked = model.to_dict()
    _same_fields(body, checked, "TrainJob")  # from_dict drops unknown fields silently: catch that here
    return checked


def _same_fields(ours: Any, model: Any, path: str) -> None:
    if isinstance(ours, dict):
        if not isinstance(model, dict):
            raise ValueError(f"{path}: the Trainer API model has no object here")
        for key, value in ours.items():
            if key not in model:
                raise ValueError(f"{path}.{key}: not a field of the Trainer API")
            _same_fields(value, model[key], f"{path}.{key}")
    elif isinstance(ours, list):
        for i, (a, b) in enumerate(zip(ours, model, strict=True)):
            _same_fields(a, b, f"{path}[{i}]")


_KINDS: dict[str, tuple[str, str, str, Callable[[TrainingJob], dict[str, Any]]]] = {
    # backend: (group, version, plural, builder)
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", pytorchjob),
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", trainjob),
}


def _job_selector(backend: str, name: str) -> str:
    """The labels every pod of the job carries (the operator's, or JobSet's for a TrainJob)."""
    if backend == "pytorchjob":
        return f"training.kubeflow.org/job-name={name}"
    return f"jobset.sigs.k8s.io/jobset-name={name}"


def _master_selector(backend: str, name: str) -> str:
    if backend == "pytorchjob":
        return f"{_job_selector(backend, name)},training.kubeflow.org/replica-type=master"
    return f"{_job_selector(backend, name)},batch.kubernetes.io/job-completion-index=0"


# Container states that do not heal by waiting: the image cannot be had, or the pod's Secret or ConfigMap
# (or a key of it) is missing. `ErrImagePull` alone may be a registry hiccup; the kubelet's backoff after
# it (`ImagePullBackOff`) is not.
FATAL_WAITING = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)


def pod_failure(pod: Any, unschedulable_for: float, unschedulable_s: float) -> str | None:
    """Why `pod` cannot make progress, or None: a fatal container state, or unschedulable for too long.

    Args:
        pod: a `V1Pod` (from `list_namespaced_pod`).
        unschedulable_for: seconds this pod has been seen unschedulable so far.
        unschedulable_s: how long an unschedulable pod may wait (a cluster autoscaler may add a node).
    """
    status = getattr(pod, "status", None)
    name = pod.metadata.name
    for cs in [
        *(getattr(status, "init_container_statuses", None) or []),
        *(getattr(status, "container_statuses", None) or []),
    ]:
        waiting = getattr(getattr(cs, "state", None), "waiting", None)
        if waiting is not None and waiting.reason in FATAL_WAITING:
            return f"pod {name}, container {cs.name}: {waiting.reason}: {waiting.message or 'no message'}"
    if unschedulable_for > unschedulable_s:
        reason = _unschedulable(pod)
        return f"pod {name} could not be scheduled for {unschedulable_for:.0f}s: {reason}"
    return None


def _unschedulable(pod: Any) -> str | None:
    for cond in getattr(getattr(pod, "status", None), "conditions", None) or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return cond.message or "Unschedulable"
    return None


def _finished(backend: str, obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """("succeeded" | "failed", reason) once the job has ended, else None."""
    done = "Succeeded" if backend == "pytorchjob" else "Complete"
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == done:
            return "succeeded", cond.get("message", "")
        if cond.get("type") == "Failed":
            return "failed", f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
    return None


# --------------------------------------------------------------------------------------------- lifecycle


def kube_apis() -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api) from the pod's service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def launch(
    job: TrainingJob,
    backend: Backend = "trainjob",
    timeout_s: float = 7 * 24 * 3600,
    poll_s: float = 15.0,
    unschedulable_s: float = 900.0,
    apis: tuple[Any, Any] | None = None,
    cleanup: bool = True,
    out: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create the job, wait for it with a timeout while streaming the master's log, then delete it.

    Args:
        job: what to run.
        backend: `trainjob` (Kubeflow Trainer v2) or `pytorchjob` (training operator v1).
        timeout_s: give up (and delete the job) after this long.
        poll_s: seconds between status checks.
        unschedulable_s: fail when a pod of the job has been unschedulable this long.
        apis: (CustomObjectsApi, CoreV1Api); default from the cluster config.
        cleanup: delete the job when done, whatever the outcome.
        out: where the master's log goes (default stderr).

    Returns:
        The job's final message.

    Raises:
        LaunchError: naming the job, when it cannot be created, fails (with the operator's reason), a pod of
            it cannot start (with the pod's reason), or it times out.
    """
    from kubernetes.client.exceptions import ApiException

    if backend not in _KINDS:
        raise LaunchError(f"unknown training backend {backend!r}; backends: {', '.join(_KINDS)}")
    group, version, plural, build = _KINDS[backend]
    custom, core = apis or kube_apis()
    body = build(job)
    where = f"{plural[:-1]} {job.namespace}/{job.name}"
    log.info("creating %s: %d node(s) x %d GPU(s), %s", where, job.nodes, job.gpus_per_node, shlex.join(job.args))
    try:
        custom.create_namespaced_custom_object(group, version, job.namespace, plural, body)
    except ApiException as exc:
        if exc.status != 409:  # 409: a retried task finds its own job already there, and waits for it
            raise LaunchError(f"cannot create {where}: {exc.status} {exc.reason}: {_api_message(exc)}") from exc
        log.info("%s exists already (a retry): waiting for it", where)
        _adopt(custom, (group, version, plural), job)
    logs = _LogFollower(core, job.namespace, _master_selector(backend, job.name), out or sys.stderr)
    pods = _PodWatch(core, job.namespace, _job_selector(backend, job.name), unschedulable_s, clock)
    started = clock()
    try:
        while True:
            obj = custom.get_namespaced_custom_object(group, version, job.namespace, plural, job.name)
            logs.poll()
            stuck = pods.poll()
            if stuck is not None:
                raise LaunchError(f"{where} cannot run: {stuck}")
            ended = _finished(backend, obj)
            if ended is not None:
                logs.poll()
                outcome, message = ended
                if outcome == "failed":
                    raise LaunchError(f"{where} failed: {message or 'no reason given'}")
                log.info("%s succeeded", where)
                return message
            if clock() - started > timeout_s:
                raise LaunchError(f"{where} did not finish within {timeout_s:.0f}s")
            sleep(poll_s)
    finally:
        if cleanup:
            try:
                custom.delete_namespaced_custom_object(group, version, job.namespace, plural, job.name)
                log.info("deleted %s", where)
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("could not delete %s: %s %s", where, exc.status, exc.reason)


def _adopt(custom: Any, kind: tuple[str, str, str], job: TrainingJob) -> None:
    """A retried launcher pod adds itself to the existing job's owners (the failed pod may be deleted)."""
    if job.owner is None:
        return
    group, version, plural = kind
    obj = custom.get_namespaced_custom_object(group, version, job.namespace, plural, job.name)
    owners = list((obj.get("metadata") or {}).get("ownerReferences") or [])
    if any(o.get("uid") == job.owner.uid for o in owners):
        return
    patch = {"metadata": {"ownerReferences": [*owners, job.owner.owner_reference()]}}
    custom.patch_namespaced_custom_object(group, version, job.namespace, plural, job.name, patch)


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")


@dataclass
class _PodWatch:
    """Looks at every pod of the job on each poll; says why one of them cannot run, if one cannot."""

    core: Any
    namespace: str
    selector: str
    unschedulable_s: float
    clock: Callable[[], float]
    pending_since: dict[str, float] = field(default_factory=dict)

    def poll(self) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        except ApiException as exc:
            log.warning("could not list the job's pods: %s %s", exc.status, exc.reason)
            return None
        now = self.clock()
        for pod in pods:
            name = pod.metadata.name
            if _unschedulable(pod) is None:
                self.pending_since.pop(name, None)
                waited = 0.0
            else:
                waited = now - self.pending_since.setdefault(name, now)
            failure = pod_failure(pod, waited, self.unschedulable_s)
            if failure is not None:
                return failure
        return None


@dataclass
class _LogFollower:
    """Prints the master pod's log as it grows (a missing pod is not an error: it may not exist yet)."""

    core: Any
    namespace: str
    selector: str
    out: Any
    printed: int = 0
    pod: str = ""

    def poll(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            if not self.pod:
                pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
                if not pods:
                    return
                self.pod = pods[0].metadata.name
            text = self.core.read_namespaced_pod_log(self.pod, self.namespace)
        except ApiException as exc:
            if exc.status in (400, 404):  # container still creating, or pod gone
                return
            raise
        if len(text) > self.printed:
            self.out.write(text[self.printed :])
            self.out.flush()
            self.printed = len(text)
