"""Multi-node training on Kubeflow's training operator: create the job (`photogenic.jobs` builds it), wait,
stream logs, clean up. Two backends, one interface: `pytorchjob` (training operator v1) and `trainjob`
(Kubeflow Trainer v2).

The launcher pod holds no GPU: the task's GPU count, node selector and tolerations go to the job's pods.
While it waits it watches the job's pods too: an image that cannot be pulled, a missing Secret or
ConfigMap key, or a pod that stays unschedulable fails the task at once with the pod's reason, instead
of after the job's timeout. Run in a pod, it makes that pod the job's owner, so deleting the launcher
(or its pipeline run) deletes the job.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from photogenic.jobs import (
    BACKENDS,
    CONFIG_MAP_KEYS,
    GPU_TOLERATIONS,
    RUN_AS,
    S3_SECRET_KEYS,
    Backend,
    PodRef,
    TrainingJob,
    _same_fields,
    job_name,
    pod_namespace,
    pytorchjob,
    this_pod,
    train_args,
    training_job,
    trainjob,
)

__all__ = [
    "TrainingJob",
    "LaunchError",
    "launch",
    "pytorchjob",
    "trainjob",
    "job_name",
    "kube_apis",
    "training_job",
    "train_args",
    "pod_namespace",
    "BACKENDS",
    "S3_SECRET_KEYS",
    "GPU_TOLERATIONS",
    "CONFIG_MAP_KEYS",
    "PodRef",
    "this_pod",
    "RUN_AS",
    "_same_fields",
]

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The training job could not be created, failed, or did not finish in time."""


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
