"""The training jobs we run on Kubeflow's training operator, as data: the pods' spec and the job bodies.

- `pytorchjob`: a `kubeflow.org/v1` PyTorchJob (training operator v1), built with the `kubeflow-training`
  SDK's typed models: one Master and N-1 Workers, each running `torchrun` (which reads the operator's
  `PET_*` rendezvous variables) around the same `photogenic train` the local tests run.
- `trainjob`: a Kubeflow Trainer v2 `TrainJob` (`trainer.kubeflow.org/v1alpha1`) against a torch
  ClusterTrainingRuntime, built and validated with the `kubeflow-trainer-api` models.

`photogenic.launcher` creates them and watches them to the end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BACKENDS",
    "CONFIG_MAP_KEYS",
    "GPU_TOLERATIONS",
    "RUN_AS",
    "S3_SECRET_KEYS",
    "PodRef",
    "TrainingJob",
    "job_name",
    "pod_namespace",
    "pytorchjob",
    "this_pod",
    "train_args",
    "training_job",
    "trainjob",
]


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


# --------------------------------------------------------------------------------------------- builders


def train_args(
    recipe: str,
    data_uri: str,
    out: str,
    config_args: Sequence[str],
    base: str = "",
    judges: str = "",
    parent_run_id: str = "",
    rehearsal: str = "",
) -> list[str]:
    """The `photogenic train ...` arguments a training job's pods run (after `torchrun -m photogenic`).

    `config_args` name the config: `["--config", URI]` of a run's resolved config, or `["--preset", NAME,
    *overrides]` (overrides last: they are the command's trailing arguments)."""
    args = ["train", recipe.replace("_", "-"), "--data", data_uri, "--out", out]
    args += ["--base", base] if base else []
    args += ["--judges", judges] if judges else []
    args += ["--rehearsal-data", rehearsal] if rehearsal else []
    args += ["--parent-run-id", parent_run_id] if parent_run_id else []
    return args + list(config_args)


def training_job(
    recipe: str,
    out: str,
    args: Sequence[str],
    *,
    image: str,
    namespace: str,
    nodes: int,
    gpus_per_node: int,
    name_key: str = "",
    name: str = "",
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    cache_pvc: str = "",
    image_pull_secrets: Sequence[str] = (),
    owner: Any = None,
) -> Any:
    """The training-operator job that runs `args` (from `train_args`) for the run at `out`; named
    `name`, else `photogenic-<recipe>-<name_key>`, else after the run URI's fingerprint."""
    key = name_key or out.rstrip("/").rsplit("-", 1)[-1]
    return TrainingJob(
        name=name or job_name(f"photogenic-{recipe.replace('_', '-')}", key),
        namespace=namespace,
        image=image,
        args=tuple(args),
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        node_selector=dict(node_selector or {}),
        tolerations=tuple(tolerations),
        cache_pvc=cache_pvc,
        image_pull_secrets=tuple(image_pull_secrets),
        owner=owner,
    )


def pod_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "default"
