"""Upload and run the compiled pipeline on a Kubeflow Pipelines server: `photogenic pipeline upload | run`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photogenic.pipelines.compiler import COMPILED, read_version
from photogenic.pipelines.quality_tuning import PIPELINE_NAME

__all__ = ["connect", "upload", "submit", "Uploaded", "parse_arguments", "UnreachableError"]

log = logging.getLogger(__name__)


def connect(host: str | None = None, namespace: str | None = None, existing_token: str | None = None) -> Any:
    """A `kfp.Client` for `host` (default: the in-cluster endpoint or $KF_PIPELINES_ENDPOINT, as kfp decides).

    A bearer token comes from `existing_token` or $KF_PIPELINES_TOKEN, never from a file in the repo.
    """
    import os

    import kfp

    token = existing_token or os.environ.get("KF_PIPELINES_TOKEN") or None
    try:
        return kfp.Client(host=host, namespace=namespace, existing_token=token)
    except Exception as exc:  # noqa: BLE001 - kfp checks the server's health here and raises urllib3's errors
        where = host or os.environ.get("KF_PIPELINES_ENDPOINT") or "the in-cluster endpoint"
        reason = str(getattr(exc, "reason", "") or exc).splitlines()[0][:300]
        raise UnreachableError(
            f"cannot reach Kubeflow Pipelines at {where}: {reason}; set --host or KF_PIPELINES_ENDPOINT "
            "(e.g. after `kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`: http://localhost:8080)"
        ) from exc


class UnreachableError(RuntimeError):
    """No Kubeflow Pipelines server answers at the endpoint."""


@dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    created_pipeline: bool
    existed: bool = False  # the server had this version already: nothing was uploaded


def version_name(version: str) -> str:
    """A KFP-friendly version name from a pipeline version (`0.1.0+gabc` -> `0.1.0-gabc`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", version)


def upload(client: Any, package: str | Path = COMPILED, name: str = PIPELINE_NAME) -> Uploaded:
    """Upload the compiled pipeline: a new pipeline if `name` is new, else a new version of it; nothing if
    the server has this version already (safe to repeat).

    The version is named after the version line of the compiled file (package version + commit). A
    version counts as there already when its name is that, or when its pipeline spec records that
    version (the first version of a pipeline is named after the pipeline).
    """
    package = str(package)
    recorded = read_version(package)
    vname = version_name(recorded)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        created = client.upload_pipeline(package, pipeline_name=name, description="Photogenic quality-tuning")
        pipeline_id = created.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1)
        version = versions.pipeline_versions[0]
        log.info("created pipeline %s (%s) with its first version", name, pipeline_id)
        return Uploaded(pipeline_id, version.pipeline_version_id, version.display_name, True)
    found = _find_version(client, pipeline_id, vname, recorded)
    if found is not None:
        log.info("pipeline %s has version %s already: nothing to upload", name, recorded)
        return Uploaded(pipeline_id, found.pipeline_version_id, found.display_name, False, existed=True)
    version = client.upload_pipeline_version(package, pipeline_version_name=vname, pipeline_id=pipeline_id)
    log.info("uploaded version %s of pipeline %s", vname, name)
    return Uploaded(pipeline_id, version.pipeline_version_id, vname, False)


_PARSERS = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda raw: {"true": True, "false": False}[raw.lower()],
    "LIST": json.loads,
    "STRUCT": json.loads,
}


_KIND_NAMES = {
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


def parse_arguments(items: Sequence[str], package: str | Path = COMPILED) -> dict[str, Any]:
    """`name=value` pipeline arguments, typed as the compiled pipeline declares them (`train_cpu=2` stays
    the string "2"; `task_gpus=0` is an integer; lists and dicts are JSON). An unknown name or a value of
    the wrong type is an error here, before any server is contacted."""
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text()))
    if "pipelineSpec" in spec.get("spec", {}):  # the GitOps PipelineVersion form
        spec = spec["spec"]["pipelineSpec"]
    declared = spec["root"]["inputDefinitions"]["parameters"]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not name=value")
        if key not in declared:
            raise ValueError(f"{key!r} is not a parameter of the pipeline; parameters: {', '.join(sorted(declared))}")
        kind = declared[key]["parameterType"]
        try:
            out[key] = _PARSERS[kind](raw)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{key}={raw!r}: not {_KIND_NAMES.get(kind, kind)}") from exc
    return out


_SPEC_VERSION = re.compile(r"^Photogenic (\S+): ")


def _find_version(client: Any, pipeline_id: str, vname: str, recorded: str) -> Any:
    """The pipeline's version named `vname` or whose spec records `recorded`, else None (every page)."""
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
        for v in page.pipeline_versions or []:
            if v.display_name == vname or _spec_version(getattr(v, "pipeline_spec", None)) == recorded:
                return v
        token = getattr(page, "next_page_token", "") or ""
        if not token:
            return None


def _spec_version(spec: Any) -> str | None:
    """The photogenic version in a stored pipeline spec's description (see quality_tuning.build)."""
    if not isinstance(spec, Mapping):
        return None
    spec = spec.get("pipeline_spec", spec)  # with a platform spec, the server nests the two
    description = (spec.get("pipelineInfo") or {}).get("description") or ""
    match = _SPEC_VERSION.match(description)
    return match.group(1) if match else None


def submit(
    client: Any,
    experiment: str,
    arguments: Mapping[str, Any],
    run_name: str,
    uploaded: Uploaded | None = None,
    package: str | Path = COMPILED,
    wait_s: int = 0,
    service_account: str | None = None,
) -> dict[str, Any]:
    """Create a run in `experiment` (created if missing), of an uploaded version or of the package itself.

    Args:
        client: a `kfp.Client`.
        experiment: the KFP experiment's name.
        arguments: pipeline parameters (`preset`, `overrides`, `pretrain_backend`, ...).
        run_name: the run's name.
        uploaded: run this uploaded pipeline version; default: submit `package` directly.
        wait_s: wait up to this long for the run to finish (0: return at once).
        service_account: the ServiceAccount the run's pods use.

    Returns:
        `run_id`, `state` (the final state when waited for), and the run's URL when the client knows it.
    """
    exp = _experiment(client, experiment)
    if uploaded is not None:
        run = client.run_pipeline(
            exp,
            run_name,
            params=dict(arguments),
            pipeline_id=uploaded.pipeline_id,
            version_id=uploaded.version_id,
            service_account=service_account,
        )
        run_id = run.run_id
    else:
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=dict(arguments),
            run_name=run_name,
            experiment_id=exp,
            service_account=service_account,
        )
        run_id = result.run_id
    out: dict[str, Any] = {"run_id": run_id, "experiment_id": exp, "state": "SUBMITTED"}
    host = getattr(getattr(client, "_existing_config", None), "host", "") or ""
    if host:
        out["url"] = f"{host.rstrip('/')}/#/runs/details/{run_id}"
    if wait_s:
        finished = client.wait_for_run_completion(run_id, timeout=wait_s)
        out["state"] = str(getattr(finished, "state", "UNKNOWN"))
        if out["state"] != "SUCCEEDED":
            error = getattr(finished, "error", None)
            out["error"] = getattr(error, "message", None) or str(error or "")
    return out


def _experiment(client: Any, name: str) -> str:
    try:
        return client.get_experiment(experiment_name=name).experiment_id
    except Exception:  # noqa: BLE001 - the server answers "not found" in several ways across versions
        return client.create_experiment(name).experiment_id
