"""The container images everything runs in, named in one place: `images.json` (`make images` writes it).

Its `images` map each image to a reference (registry/name:tag, with `@sha256:...` once pushed) and its
`pull_secrets` name the Secrets that pull them from a private registry (a missing one is only a warning
for the kubelet, so a public registry needs none created). The compiled pipeline (every task's image and
pull secrets, the launcher's training image), the training jobs and the manifests (`manifests/base/images`,
a kustomize component written by `write_kustomize`) all follow this file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_NAMES",
    "IMAGES",
    "CPU_IMAGE",
    "TRAIN_IMAGE",
    "PULL_SECRETS",
    "load",
    "split_ref",
    "kustomize_component",
]

IMAGES_JSON = Path(__file__).parent / "images.json"
# Our images (images/<name>/Dockerfile). The manifests name each by this bare name, which kustomize's
# `images` transformer replaces with its reference.
IMAGE_NAMES = ("photogenic", "photogenic-train")
# ServiceAccounts in manifests/base whose pods pull our images.
SERVICE_ACCOUNTS = ("mlflow", "photogenic-pipeline")
_REF = re.compile(r"^(?P<name>[^@\s]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def load(path: Path = IMAGES_JSON) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if set(data) != {"images", "pull_secrets"}:
        raise ValueError(f"{path}: expected the keys images and pull_secrets, got {sorted(data)}")
    for name, ref in data["images"].items():
        split_ref(ref)  # raises on a malformed reference
        if name not in IMAGE_NAMES:
            raise ValueError(f"{path}: unknown image {name!r}; images: {', '.join(IMAGE_NAMES)}")
    return data


def split_ref(ref: str) -> tuple[str, str, str]:
    """`registry/name:tag@sha256:...` -> (name, tag, digest); tag and digest may be "" (not both)."""
    m = _REF.match(ref)
    if not m or "/" not in m["name"] or not (m["tag"] or m["digest"]):
        raise ValueError(f"image reference {ref!r}: expected registry/name:tag or registry/name@sha256:<64 hex>")
    return m["name"], m["tag"] or "", m["digest"] or ""


def kustomize_component(data: dict[str, Any]) -> dict[str, Any]:
    """The kustomize component that points the manifests at our images and pull secrets."""
    images = []
    for name, ref in data["images"].items():
        new_name, tag, digest = split_ref(ref)
        entry = {"name": name, "newName": new_name}
        entry.update({"digest": digest} if digest else {"newTag": tag})
        images.append(entry)
    secrets = [{"name": s} for s in data["pull_secrets"]]
    patches = [
        {
            "target": {"kind": "ServiceAccount", "name": account},
            "patch": json.dumps([{"op": "add", "path": "/imagePullSecrets", "value": secrets}]),
        }
        for account in SERVICE_ACCOUNTS
    ]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "images": images,
        **({"patches": patches} if secrets else {}),
    }


def write_kustomize(path: str | Path, data: dict[str, Any] | None = None) -> Path:
    """Write the component (`make manifests`: manifests/base/images/kustomization.yaml)."""
    import yaml

    path = Path(path)
    header = "# Generated from components/images.json by `make manifests`; do not edit.\n"
    body = yaml.safe_dump(kustomize_component(data or load()), sort_keys=False, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body)
    return path


_DATA = load()
IMAGES: dict[str, str] = _DATA["images"]
PULL_SECRETS: list[str] = _DATA["pull_secrets"]
CPU_IMAGE = IMAGES["photogenic"]  # data, curation, judges, evaluation, tracking, the job launcher, MLflow
TRAIN_IMAGE = IMAGES["photogenic-train"]  # CUDA PyTorch + DeepSpeed: training tasks and job pods
