"""The small JSON manifest a stage passes on: what it wrote, where, with which checksums, from which config."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from photogenic.config import Config, StorageConfig, fingerprint
from photogenic.storage import (
    ChecksumMismatchError,
    ObjectInfo,
    ObjectNotFoundError,
    Store,
    StoreError,
    join_uri,
    open_store,
    split_parent,
)

__all__ = [
    "SCHEMA_VERSION",
    "ObjectRef",
    "Manifest",
    "ManifestError",
    "StageOutput",
    "publish",
    "read_manifest",
    "reusable",
    "stage_output",
]

SCHEMA_VERSION = 1

log = logging.getLogger(__name__)


class ManifestError(StoreError):
    """A manifest is missing, unreadable, of another schema, or names objects that are not there."""


@dataclass(frozen=True)
class ObjectRef:
    """One object a manifest names, relative to the manifest's root."""

    key: str
    sha256: str
    size: int

    @classmethod
    def of(cls, info: ObjectInfo) -> ObjectRef:
        if info.sha256 is None:
            raise ManifestError(f"{info.uri} has no recorded sha256 and cannot go into a manifest")
        return cls(key=info.key, sha256=info.sha256, size=info.size)


@dataclass(frozen=True)
class Manifest:
    """A dataset or model version.

    Attributes:
        kind: what it describes ("dataset", "model", ...).
        root: URI the object keys are relative to.
        objects: every object, with its sha256 and size.
        counts: named counts (samples, quarantined, ...).
        config: the resolved config that made it.
        meta: anything else a stage wants to hand on (small).
        schema_version: the manifest schema.
        fingerprint: the content version, from kind and the objects' names and checksums only,
            so the same content written anywhere has the same fingerprint.
    """

    kind: str
    root: str
    objects: tuple[ObjectRef, ...]
    counts: Mapping[str, int] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    fingerprint: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", content_fingerprint(self.kind, self.objects))

    def uri(self, ref: ObjectRef | str) -> str:
        return join_uri(self.root, ref.key if isinstance(ref, ObjectRef) else ref)

    def ref(self, key: str) -> ObjectRef:
        for ref in self.objects:
            if ref.key == key:
                return ref
        raise ManifestError(f"the {self.kind} manifest at {self.root} names no object {key!r}")

    def store(self, config: StorageConfig | None = None) -> Store:
        return open_store(self.root, config)

    def open(self, ref: ObjectRef | str, config: StorageConfig | None = None) -> BinaryIO:
        """Stream one object; a ChecksumMismatchError is raised if its bytes differ from the manifest."""
        ref = self.ref(ref) if isinstance(ref, str) else ref
        try:
            return self.store(config).open(ref.key, ref.sha256)
        except ObjectNotFoundError as exc:
            raise ManifestError(f"the {self.kind} manifest at {self.root} names {ref.key}, which is missing") from exc

    def to_json(self) -> str:
        data = asdict(self)
        data["objects"] = [asdict(o) for o in self.objects]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<manifest>") -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {source} is not valid JSON: {exc}") from exc
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest {source} has schema version {version!r}; this Photogenic reads {SCHEMA_VERSION}"
            )
        try:
            data["objects"] = tuple(ObjectRef(**o) for o in data["objects"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest {source} is malformed: {exc}") from exc


def content_fingerprint(kind: str, objects: tuple[ObjectRef, ...]) -> str:
    h = hashlib.sha256(f"{kind}\n".encode())
    for ref in sorted(objects, key=lambda o: o.key):
        h.update(f"{ref.key}\t{ref.sha256}\n".encode())
    return h.hexdigest()


def publish(manifest: Manifest, uri: str, config: StorageConfig | None = None, verify: bool = True) -> str:
    """Write a manifest after checking that every object it names is there with the right checksum.

    Data first, manifest last: a reader that finds the manifest finds all of its data.

    Args:
        manifest: the manifest to publish.
        uri: where to write it (any store URI of a file, e.g. `s3://b/datasets/x/manifest.json`).
        config: storage settings.
        verify: check each object's recorded sha256 and size before writing.

    Returns:
        The manifest's URI.
    """
    if verify:
        store = manifest.store(config)
        for ref in manifest.objects:
            try:
                info = store.stat(ref.key)
            except ObjectNotFoundError as exc:
                raise ManifestError(f"cannot publish {uri}: {manifest.uri(ref)} is missing") from exc
            if info.sha256 != ref.sha256 or info.size != ref.size:
                raise ChecksumMismatchError(
                    f"cannot publish {uri}: {manifest.uri(ref)} has sha256 {info.sha256} and {info.size} bytes, "
                    f"the manifest says {ref.sha256} and {ref.size}"
                )
    parent, name = _split_file_uri(uri)
    open_store(parent, config).put_bytes(name, manifest.to_json().encode())
    return uri


def manifest_file(uri: str) -> str:
    """The manifest of a stage output given either its folder or the manifest file itself."""
    return uri if uri.endswith(".json") else join_uri(uri, "manifest.json")


def read_manifest(uri: str, config: StorageConfig | None = None) -> Manifest:
    """Read and check a manifest from any store URI."""
    parent, name = _split_file_uri(uri)
    try:
        text = open_store(parent, config).get_bytes(name).decode()
    except ObjectNotFoundError as exc:
        raise ManifestError(f"no manifest at {uri}") from exc
    return Manifest.from_json(text, source=uri)


def _split_file_uri(uri: str) -> tuple[str, str]:
    try:
        return split_parent(uri)
    except StoreError as exc:
        raise ManifestError(f"{uri!r} does not name a manifest file") from exc


def reusable(uri: str, request: str, config: StorageConfig | None = None) -> Manifest | None:
    """The manifest at `uri` if an earlier run made it from the same request and all its objects are
    still there with the recorded checksums; else None (the stage then does its work again)."""
    try:
        manifest = read_manifest(uri, config)
    except ManifestError:
        return None
    if manifest.meta.get("request") != request:
        return None
    store = manifest.store(config)
    for ref in manifest.objects:
        try:
            if store.stat(ref.key).sha256 != ref.sha256:
                return None
        except ObjectNotFoundError:
            return None
    return manifest


@dataclass(frozen=True)
class StageOutput:
    """Where a stage's output goes, the request that names it, and what an earlier run left there.

    Attributes:
        stage: the stage's name, for messages.
        request: the fingerprint of everything the output depends on (input versions, settings, code
            version); stored in the manifest's `meta["request"]`.
        store: the output's folder (absolute: other processes and pods read it).
        manifest_uri: where the manifest goes, last.
        previous: the manifest an earlier run published there from the same request, with all of its
            objects intact; None when the stage has to do its work.
        config: storage settings.
    """

    stage: str
    request: str
    store: Store
    manifest_uri: str
    previous: Manifest | None
    config: StorageConfig | None = None

    @property
    def root(self) -> str:
        return self.store.root

    def uri(self, key: str) -> str:
        return self.store.uri(key)

    def publish(self, manifest: Manifest) -> str:
        """Publish the stage's manifest, last, stamped with this request (what makes a rerun reuse it)."""
        if manifest.meta.get("request") != self.request:
            raise ManifestError(
                f"{self.stage}: the manifest for {self.manifest_uri} carries request "
                f"{manifest.meta.get('request')!r}, not this run's {self.request}"
            )
        return publish(manifest, self.manifest_uri, self.config)


def stage_output(
    stage: str,
    request: Mapping[str, Any] | str,
    config: Config,
    out: str | None,
    default: str,
    manifest_name: str = "manifest.json",
) -> StageOutput:
    """The one way a stage finds its output and decides whether to reuse it.

    Args:
        stage: the stage's name, for messages.
        request: everything the output depends on (fingerprinted here), or its fingerprint.
        config: the resolved config (store root and storage settings).
        out: the output URI a user chose, or None for the default.
        default: the default output's path below the store root; `{request}` is replaced by the
            request's first 16 hex digits (e.g. `datasets/validated-{request}`).
        manifest_name: the manifest's file name in the output folder.

    Returns:
        The output, with `previous` set when an earlier run published the same request there and all
        its objects are still intact (the stage then returns that result without working).
    """
    request = request if isinstance(request, str) else fingerprint(dict(request))
    out = out or join_uri(config.store_root(), default.format(request=request[:16]))
    store = open_store(out, config.storage)
    manifest_uri = store.uri(manifest_name)
    previous = reusable(manifest_uri, request, config.storage)
    if previous is not None:
        log.info(
            "%s: %s already holds this request (version %s); reusing it", stage, store.root, previous.fingerprint[:12]
        )
    return StageOutput(stage, request, store, manifest_uri, previous, config.storage)
