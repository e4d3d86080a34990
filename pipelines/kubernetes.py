"""Kubernetes settings for pipeline tasks, as small helpers, so the pipeline body reads as wiring.

All of them go into the compiled pipeline's platform spec; `kfp.local` ignores them (a local run takes
credentials and endpoints from this machine's environment).
"""

from __future__ import annotations

from kfp import dsl, kubernetes

from photogenic.launcher import CONFIG_MAP_KEYS, S3_SECRET_KEYS

S3_SECRET = "photogenic-s3"  # manifests/base: the Secret template users fill in
CONFIG_MAP = "photogenic-config"  # manifests/base: S3 endpoint, region, MLflow URI, store root
CACHE_PVC = "photogenic-cache"  # manifests/base: dataset cache and compiled ops
SERVICE_ACCOUNT_NOTE = "KFP runs tasks as its own ServiceAccount; bind ours (manifests/base/rbac.yaml) to it."


def with_cluster_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """S3 credentials from the Secret and endpoints from the ConfigMap, as environment variables."""
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_SECRET_KEYS})
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in CONFIG_MAP_KEYS}, optional=True)
    return task


def network_retries(task: dsl.PipelineTask, attempts: int = 3) -> dsl.PipelineTask:
    """Retry a task that talks to S3 or MLflow: its stage function reuses what an attempt finished."""
    if attempts <= 0:
        return task
    return task.set_retry(num_retries=attempts, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


def small(task: dsl.PipelineTask, cpu: str = "1", memory: str = "2Gi") -> dsl.PipelineTask:
    """Requests and limits for light tasks (tracking, planning, the job launcher)."""
    return task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)


def data_task(task: dsl.PipelineTask, cpu: str = "4", memory: str = "16Gi") -> dsl.PipelineTask:
    """Requests and limits for data, judge and evaluation tasks (CPU work with several processes)."""
    return task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)


def on_gpu(
    task: dsl.PipelineTask,
    gpus: int | dsl.PipelineChannel,
    node_selector: dict | dsl.PipelineChannel,
    tolerations: list | dsl.PipelineChannel,
) -> dsl.PipelineTask:
    """A training task in its own pod: GPU count, node selector and tolerations (pipeline parameters),
    and the cache volume."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    task.set_cpu_request("8").set_cpu_limit("16").set_memory_request("32Gi").set_memory_limit("64Gi")
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.mount_pvc(task, CACHE_PVC, "/cache")
    task.set_env_variable("PHOTOGENIC_WORKSPACE", "/cache")
    return task


def uncached(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """For tasks whose result depends on more than their inputs (a source that may change, MLflow state)."""
    return task.set_caching_options(False)
