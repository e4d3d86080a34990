"""Multi-node training on Kubeflow's training operator: build the job, create it, wait, stream logs, clean up.

Two backends, one interface:
- `pytorchjob`: a `kubeflow.org/v1` PyTorchJob (training operator v1), built with the `kubeflow-training`
  SDK's typed models: one Master and N-1 Workers, each running `torchrun` (which reads the operator's
  `PET_*` rendezvous variables) around the same `photogenic train` the local tests run.
- `trainjob`: a Kubeflow Trainer v2 `TrainJob` (`trainer.kubeflow.org/v1alpha1`) against a torch
  ClusterTrainingRuntime, built and validated with the `kubeflow-trainer-api` models.

The launcher pod holds no GPU: the task's GPU count, node selector and tolerations go to the job's pods.
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
]

log = logging.getLogger(__name__)

Backend = Literal["pytorchjob", "trainjob"]
BACKENDS: tuple[str, ...] = ("pytorchjob", "trainjob")
_CONTAINER = {"pytorchjob": "pytorch", "trainjob": "node"}  # the names each operator expects

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
        cache_pvc: a PVC mounted at /cache for the dataset cache and compiled ops.
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
    env += [
        k8s.V1EnvVar(
            name=k,
            value_from=k8s.V1EnvVarSource(
                config_map_key_ref=k8s.V1ConfigMapKeySelector(name=job.config_map, key=k, optional=True)
            ),
        )
        for k in CONFIG_MAP_KEYS
    ]
    if job.cache_pvc:
        mounts.append(k8s.V1VolumeMount(name="cache", mount_path="/cache"))
        volumes.append(
            k8s.V1Volume(name="cache", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(job.cache_pvc))
        )
        env.append(k8s.V1EnvVar(name="PHOTOGENIC_WORKSPACE", value="/cache"))
    return k8s.V1PodSpec(
        service_account_name=job.service_account,
        node_selector=dict(job.node_selector) or None,
        tolerations=[k8s.V1Toleration(**_snake(t)) for t in job.tolerations] or None,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")
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
        metadata=k8s.V1ObjectMeta(
            name=job.name, namespace=job.namespace, labels={"app.kubernetes.io/part-of": "photogenic"}
        ),
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
    }
    body = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": {"app.kubernetes.io/part-of": "photogenic"},
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


def _master_selector(backend: str, name: str) -> str:
    if backend == "pytorchjob":
        return f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master"
    return f"jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0"


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
    backend: Backend = "pytorchjob",
    timeout_s: float = 7 * 24 * 3600,
    poll_s: float = 15.0,
    apis: tuple[Any, Any] | None = None,
    cleanup: bool = True,
    out: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Create the job, wait for it with a timeout while streaming the master's log, then delete it.

    Args:
        job: what to run.
        backend: `pytorchjob` or `trainjob`.
        timeout_s: give up (and delete the job) after this long.
        poll_s: seconds between status checks.
        apis: (CustomObjectsApi, CoreV1Api); default from the cluster config.
        cleanup: delete the job when done, whatever the outcome.
        out: where the master's log goes (default stderr).

    Returns:
        The job's final message.

    Raises:
        LaunchError: naming the job, when it cannot be created, fails (with the operator's reason) or times out.
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
    logs = _LogFollower(core, job.namespace, _master_selector(backend, job.name), out or sys.stderr)
    started = clock()
    try:
        while True:
            obj = custom.get_namespaced_custom_object(group, version, job.namespace, plural, job.name)
            logs.poll()
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


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")


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
