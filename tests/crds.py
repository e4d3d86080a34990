"""Validate custom resources against the real CRD schemas of the Kubeflow versions we support.

The schemas are vendored in `tests/data/crds/` (see its `refresh.py` and `SOURCES.md`). A CRD's
`openAPIV3Schema` is checked here the way the API server's structural-schema validation does with
`fieldValidation=Strict` (kubectl's default): an unknown field is an error unless the schema keeps
unknown fields (`x-kubernetes-preserve-unknown-fields`), `x-kubernetes-int-or-string` takes either,
`nullable` admits null. CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).parent / "data" / "crds"

# What docs/kubeflow.md promises (Run on Kubeflow): kind -> the vendored CRD files, one per supported release.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "PyTorchJob": tuple(sorted(p.name for p in CRDS.glob("training-operator-*-kubeflow.org_pytorchjobs.yaml.gz"))),
    "TrainJob": tuple(sorted(p.name for p in CRDS.glob("trainer-*-trainer.kubeflow.org_trainjobs.yaml.gz"))),
    "Pipeline": tuple(sorted(p.name for p in CRDS.glob("pipelines-*-pipelines.kubeflow.org_pipelines.yaml.gz"))),
    "PipelineVersion": tuple(
        sorted(p.name for p in CRDS.glob("pipelines-*-pipelines.kubeflow.org_pipelineversions.yaml.gz"))
    ),
}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load(gzip.decompress((CRDS / name).read_bytes()))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]] + (out.get(key, []) if key == "anyOf" else [])
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def validator(name: str, api_version: str) -> jsonschema.Draft7Validator:
    crd = load(name)
    group, version = api_version.split("/")
    if crd["spec"]["group"] != group:
        raise ValueError(f"{name} defines group {crd['spec']['group']}, not {group}")
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served", True):
            return jsonschema.Draft7Validator(_strict(v["schema"]["openAPIV3Schema"]))
    raise ValueError(f"{name} serves no version {version}")


def errors(doc: dict[str, Any], name: str) -> list[str]:
    """Every schema violation of `doc` under the CRD file `name`, as `path: message` lines."""
    found = validator(name, doc["apiVersion"]).iter_errors(doc)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in found)
