"""KFP output artifacts: a stage's small manifest or its HTML report, copied from the store for the KFP UI
(the data stays in the store)."""

from __future__ import annotations

from typing import Any

from photogenic.config import Config

__all__ = ["copy_report", "publish_artifact"]


def publish_artifact(artifact: Any, manifest_uri: str, config: Config, **metadata: Any) -> None:
    """Copy a stage's small manifest into a KFP output artifact (the data stays in the store) and
    describe it in the artifact's metadata: the store URI, the version and the counts."""
    from photogenic.manifest import read_manifest

    manifest = read_manifest(manifest_uri, config.storage)
    with open(artifact.path, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    artifact.metadata.update(
        {"store_uri": manifest_uri, "version": manifest.fingerprint, "counts": dict(manifest.counts), **metadata}
    )


def copy_report(uri: str, artifact: Any, config: Config) -> None:
    """Copy a report (HTML, images inline) from the store into a KFP output artifact, for the KFP UI."""
    from photogenic.storage import open_store, split_parent

    folder, name = split_parent(uri)
    with open(artifact.path, "wb") as f:
        f.write(open_store(folder, config.storage).get_bytes(name))
    artifact.metadata["store_uri"] = uri
