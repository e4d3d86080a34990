"""Exported models in the store: a folder in diffusers format with a manifest, loaded into a verified
local cache, published manifest-last, or imported from an existing diffusers model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from photogenic.config import Config, to_dict
from photogenic.manifest import Manifest, ManifestError, ObjectRef, publish, read_manifest
from photogenic.storage import join_uri, open_store

__all__ = ["load_model_dir", "load_model_pipeline", "publish_model_dir", "drop_local_paths", "import_model"]


def load_model_dir(uri: str, cache: Path) -> Path:
    """A local copy of an exported model (a folder with `manifest.json`), verified against its manifest.

    Raises:
        ManifestError: no Photogenic model at `uri`.
    """
    try:
        manifest = read_manifest(join_uri(uri, "manifest.json"))
    except ManifestError as exc:
        raise ManifestError(f"no Photogenic model at {uri}: {exc}") from exc
    if manifest.kind != "model":
        raise ManifestError(f"{uri} holds a {manifest.kind}, not a model")
    local = cache / manifest.fingerprint[:16]
    if not (local / ".complete").exists():
        store = manifest.store()
        for ref in manifest.objects:
            store.get_file(ref.key, local / ref.key, sha256=ref.sha256)
        (local / ".complete").write_text(manifest.fingerprint)
    return local


def load_model_pipeline(uri: str, config: Config) -> Any:
    """The diffusers pipeline of an exported or imported model, from the workspace's model cache."""
    from photogenic.models.pipeline import load_pipeline

    return load_pipeline(load_model_dir(uri, Path(config.workspace, "cache", "models").resolve()))


def publish_model_dir(local: Path, out_uri: str, meta: dict[str, Any], config: Config) -> tuple[str, str]:
    """Upload an exported model folder and write its manifest last; returns (manifest URI, version)."""
    store = open_store(out_uri, config.storage)
    refs = [
        ObjectRef.of(store.put_file(p.relative_to(local).as_posix(), p))
        for p in sorted(local.rglob("*"))
        if p.is_file()
    ]
    manifest = Manifest(kind="model", root=store.root, objects=refs, config=to_dict(config), meta=meta)
    uri = publish(manifest, store.uri("manifest.json"), config.storage)
    return uri, manifest.fingerprint


def drop_local_paths(local: Path) -> None:
    """diffusers and transformers write where a model was loaded from (`_name_or_path`: here a cache folder
    in the workspace) into the configs they save; without it, the same weights exported from any workspace,
    machine or container have the same files, hence the same version."""
    for path in sorted(local.rglob("config.json")):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and "_name_or_path" in config:
            del config["_name_or_path"]
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


_DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def import_model(src: str, out: str, config: Config) -> tuple[str, str]:
    """Bring an existing diffusers text-to-image model (a folder or store prefix in the Stable Diffusion
    1.5 layout: unet, vae, text_encoder, tokenizer, scheduler) into the store with a manifest, so that
    every stage takes it as a model URI. Returns (manifest URI, version).

    Raises:
        ManifestError: `src` is not such a folder (the message names what is missing).
    """
    from photogenic.models.pipeline import pipeline_class

    source = open_store(src, config.storage)
    with tempfile.TemporaryDirectory(prefix="photogenic-import-") as tmp:
        local = Path(tmp)
        for info in source.list():
            source.get_file(info.key, local / info.key)
        if not (local / "model_index.json").exists():
            raise ManifestError(f"{src} is not a diffusers model folder: no model_index.json")
        missing = [p for p in _DIFFUSERS_PARTS if not (local / p).is_dir()]
        if missing:
            raise ManifestError(
                f"{src} lacks {', '.join(missing)}: a text-to-image model needs {', '.join(_DIFFUSERS_PARTS)}"
            )
        meta = {"recipe": "import", "imported_from": src, "pipeline": pipeline_class(local)}
        return publish_model_dir(local, out, meta, config)
