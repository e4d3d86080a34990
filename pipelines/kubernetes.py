"""Kubernetes settings for pipeline tasks, as small helpers, so the pipeline body reads as wiring.

All of them go into the compiled pipeline's platform spec; `kfp.local` ignores them (a local run takes
credentials and endpoints from this machine's environment).
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes

from photogenic.components.images import PULL_SECRETS
from photogenic.launcher import CONFIG_MAP_KEYS, S3_SECRET_KEYS
from photogenic.tracking import RUN_ID_ENV

S3_SECRET = "photogenic-s3"  # manifests/secrets: the Secret users create
CONFIG_MAP = "photogenic-config"  # manifests/base: S3 endpoint, region, MLflow URI, store root
# KFP labels every pod of a run with the run's id; tasks find the MLflow parent run by it.
RUN_ID_LABEL = "pipeline/runid"


def with_cluster_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """What every task needs on a cluster: S3 credentials from the Secret and endpoints from the ConfigMap
    (both required: a task without them would write to pod-local paths), the run's id from the pod's
    label, and the pull secrets of our images (components/images.json)."""
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_SECRET_KEYS})
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in CONFIG_MAP_KEYS}, optional=False)
    kubernetes.use_field_path_as_env(task, RUN_ID_ENV, f"metadata.labels['{RUN_ID_LABEL}']")
    if PULL_SECRETS:
        kubernetes.set_image_pull_secrets(task, list(PULL_SECRETS))
    return task


def network_retries(task: dsl.PipelineTask, attempts: int = 3) -> dsl.PipelineTask:
    """Retry a task that talks to S3 or MLflow: its stage function reuses what an attempt finished."""
    if attempts <= 0:
        return task
    return task.set_retry(num_retries=attempts, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


def small(task: dsl.PipelineTask, cpu: str = "1", memory: str = "2Gi") -> dsl.PipelineTask:
    """Requests and limits for light tasks (tracking, planning, the job launcher)."""
    return task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)


Size = Any  # a str, or a pipeline parameter


def _sized(task: dsl.PipelineTask, cpu: Size, memory: Size) -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    return _register(task, cpu, memory)


def _register(task: dsl.PipelineTask, *values: Any) -> dsl.PipelineTask:
    """kfp 2.17 leaves pipeline parameters used only as resources out of the inputs of the sub-DAGs around
    the task (an exit handler, a condition): the task then names an input its DAG does not have, and the
    run fails ("Parent pipeline input argument ... not found"). Registering them fixes the inputs."""
    from kfp.dsl.pipeline_channel import PipelineChannel

    task.register_pipeline_channels([v for v in values if isinstance(v, PipelineChannel)])
    return task


def data_task(task: dsl.PipelineTask, cpu: Size, memory: Size) -> dsl.PipelineTask:
    """Data, judge and evaluation tasks (CPU work with several processes): requests = limits, from the
    pipeline's `data_cpu` and `data_memory`."""
    return _sized(task, cpu, memory)


def on_gpu(
    task: dsl.PipelineTask,
    gpus: Any,
    cpu: Size,
    memory: Size,
    node_selector: Any,
    tolerations: Any,
) -> dsl.PipelineTask:
    """A training task in its own pod, sized by pipeline parameters: `gpus` (the in-task trainer is one
    process on one device: 1, or 0 on a CPU-only cluster), CPU and memory (requests = limits), node
    selector and tolerations; the workspace is an emptyDir at /cache (writable whatever the volume
    permissions; the data comes from S3)."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    _sized(_register(task, gpus), cpu, memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, "cache", "/cache")
    task.set_env_variable("PHOTOGENIC_WORKSPACE", "/cache")
    return task


def uncached(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """For tasks whose result depends on more than their inputs (a source that may change, MLflow state)."""
    return task.set_caching_options(False)
