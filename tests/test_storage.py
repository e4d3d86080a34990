"""The Store API, run the same way on a local folder and on a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import boto3
import pytest

from photogenic.config import StorageConfig
from photogenic.manifest import Manifest, ManifestError, ObjectRef, publish, read_manifest
from photogenic.s3store import S3Store
from photogenic.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ChecksumMismatchError,
    LocalStore,
    ObjectNotFoundError,
    StoreError,
    StoreUnreachableError,
    open_store,
    split_parent,
    split_uri,
)

FAST = StorageConfig(
    max_attempts=2, connect_timeout_s=1.0, read_timeout_s=5.0, multipart_threshold_mb=5, multipart_chunk_mb=5
)


def test_round_trip_bytes_and_files(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri, FAST)
    info = store.put_bytes("a/b/hello.txt", b"hello")
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert info.uri == f"{store.root}/a/b/hello.txt"
    assert store.get_bytes("a/b/hello.txt") == b"hello"
    assert store.exists("a/b/hello.txt") and not store.exists("a/b/nope.txt")

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("a/blob.bin", src)
    dest = store.get_file("a/blob.bin", tmp_path / "out" / "blob.bin")
    assert dest.read_bytes() == src.read_bytes()
    assert store.stat("a/blob.bin").sha256 == hashlib.sha256(src.read_bytes()).hexdigest()

    assert [o.key for o in store.list()] == ["a/b/hello.txt", "a/blob.bin"]
    assert [o.key for o in store.list("a/b/")] == ["a/b/hello.txt"]
    assert [o.key for o in store.list("a/bl")] == ["a/blob.bin"]

    with store.open("a/blob.bin") as f:  # streaming read in small pieces
        pieces = iter(lambda: f.read(4096), b"")
        assert b"".join(pieces) == src.read_bytes()

    store.delete("a/b/hello.txt")
    assert not store.exists("a/b/hello.txt")
    store.delete("a/b/hello.txt")  # deleting twice is fine
    with pytest.raises(ObjectNotFoundError, match="hello.txt"):
        store.get_bytes("a/b/hello.txt")
    assert store.delete_prefix("a/") == 1
    assert list(store.list()) == []


def test_expected_checksum_is_enforced(store_uri: str) -> None:
    store = open_store(store_uri, FAST)
    store.put_bytes("x.bin", b"payload")
    good = hashlib.sha256(b"payload").hexdigest()
    assert store.get_bytes("x.bin", sha256=good) == b"payload"
    with pytest.raises(ChecksumMismatchError, match=r"x\.bin.*expected sha256 0{64}"):
        store.get_bytes("x.bin", sha256="0" * 64)


def test_tampered_object_is_detected_on_read(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri, FAST)
    store.put_bytes("data/shard.tar", b"original bytes")
    # Change the bytes behind the store's back, keeping its recorded checksum.
    if isinstance(store, LocalStore):
        (store.path / "data" / "shard.tar").write_bytes(b"tampered bytes")
    else:
        assert isinstance(store, S3Store)
        recorded = store.stat("data/shard.tar").sha256
        boto3.client("s3").put_object(
            Bucket=store.bucket,
            Key=store._key("data/shard.tar"),
            Body=b"tampered bytes",
            Metadata={"sha256": recorded},
        )
    with pytest.raises(ChecksumMismatchError, match="shard.tar"):
        store.get_bytes("data/shard.tar")
    with pytest.raises(ChecksumMismatchError):
        store.get_file("data/shard.tar", tmp_path / "dest.bin")
    assert not (tmp_path / "dest.bin").exists()


def test_failed_download_leaves_no_file(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri, FAST)
    store.put_bytes("f.bin", b"abc")
    dest = tmp_path / "dl" / "f.bin"
    with pytest.raises(ChecksumMismatchError):
        store.get_file("f.bin", dest, sha256="1" * 64)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_manifest_publish_and_read(store_uri: str) -> None:
    store = open_store(store_uri, FAST)
    refs = [ObjectRef.of(store.put_bytes(f"shards/{i:05d}.tar", f"shard {i}".encode())) for i in range(3)]
    manifest = Manifest(kind="dataset", root=store.root, objects=refs, counts={"samples": 30})
    uri = publish(manifest, store.uri("manifest.json"), FAST)
    back = read_manifest(uri, FAST)
    assert back == manifest
    assert back.fingerprint == manifest.fingerprint
    with back.open("shards/00001.tar", FAST) as f:
        assert f.read() == b"shard 1"
    # The same content elsewhere has the same version; different content a different one.
    moved = Manifest(kind="dataset", root="s3://elsewhere/x", objects=refs)
    assert moved.fingerprint == manifest.fingerprint
    changed = Manifest(kind="dataset", root=store.root, objects=[*refs[:2], ObjectRef("shards/00002.tar", "f" * 64, 7)])
    assert changed.fingerprint != manifest.fingerprint


def test_publish_refuses_missing_or_changed_data(store_uri: str) -> None:
    store = open_store(store_uri, FAST)
    ref = ObjectRef.of(store.put_bytes("d/a.bin", b"aaa"))
    missing = Manifest(kind="dataset", root=store.root, objects=[ref, ObjectRef("d/b.bin", "0" * 64, 3)])
    with pytest.raises(ManifestError, match="d/b.bin is missing"):
        publish(missing, store.uri("m.json"), FAST)
    store.put_bytes("d/a.bin", b"bbb")  # rewritten after the ref was taken
    with pytest.raises(ChecksumMismatchError, match="a.bin"):
        publish(Manifest(kind="dataset", root=store.root, objects=[ref]), store.uri("m.json"), FAST)
    assert not store.exists("m.json")
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(store.uri("m.json"), FAST)


def test_manifest_of_another_schema_is_refused(store_uri: str) -> None:
    store = open_store(store_uri, FAST)
    store.put_bytes("m.json", b'{"schema_version": 99, "kind": "dataset"}')
    with pytest.raises(ManifestError, match="schema version 99"):
        read_manifest(store.uri("m.json"), FAST)
    store.put_bytes("n.json", b"not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(store.uri("n.json"), FAST)


def test_atomic_publish_never_shows_a_manifest_without_its_data(store_uri: str, tmp_path: Path) -> None:
    """A reader polling during a publish sees either no manifest, or a manifest whose data all verifies."""
    store = open_store(store_uri, FAST)
    blob = tmp_path / "big.bin"
    blob.write_bytes(os.urandom(2_000_000))
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                if store.exists("ds/manifest.json"):
                    manifest = read_manifest(store.uri("ds/manifest.json"), FAST)
                    for ref in manifest.objects:
                        with manifest.open(ref, FAST) as f:
                            while f.read(1 << 20):
                                pass
                    seen.append(manifest.fingerprint)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        dataset = store.child("ds")
        refs = [ObjectRef.of(dataset.put_file(f"shards/{i}.bin", blob)) for i in range(4)]
        publish(Manifest(kind="dataset", root=dataset.root, objects=refs), dataset.uri("manifest.json"), FAST)
        deadline = threading.Event()
        for _ in range(100):  # give the reader time to see the published manifest
            if seen:
                break
            deadline.wait(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert seen, "the reader never saw the published manifest"


def test_local_store_hides_sidecars_and_temporaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k.txt", b"v")
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == [".k.txt.sha256", "k.txt"]
    assert [o.key for o in store.list()] == ["k.txt"]
    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes("../escape", b"x")


def test_uri_parsing() -> None:
    assert split_uri("s3://bucket/a/b") == ("s3", "bucket/a/b")
    assert split_uri("file:///tmp/x") == ("file", "/tmp/x")
    with pytest.raises(StoreError, match="scheme 'gs' is not supported"):
        split_uri("gs://bucket/x")
    with pytest.raises(StoreError, match="malformed S3 URI"):
        split_uri("s3:/bucket/x")  # never a local folder named `s3:`
    with pytest.raises(StoreError, match="<redacted> cannot be used") as refused:
        split_uri("https://user:hunter22@minio:9000/bucket")
    assert "hunter22" not in str(refused.value)
    with pytest.raises(StoreError, match="no bucket"):
        split_uri("s3:///x")
    assert split_parent("s3://bucket/a/x.tar") == ("s3://bucket/a", "x.tar")
    assert split_parent("/tmp/d/m.json") == ("/tmp/d", "m.json")
    with pytest.raises(StoreError, match="does not name an object"):
        split_parent("s3://bucket")


# ------------------------------------------------------------------------------------------- S3 only


def test_multipart_upload_above_threshold(s3_bucket: str, tmp_path: Path) -> None:
    """A file over the 5 MiB threshold goes up in parts (its ETag says how many) and reads back verified."""
    store = S3Store(f"s3://{s3_bucket}/mp", FAST)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 2**20))
    info = store.put_file("big.bin", big)
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="mp/big.bin")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 12 MiB in 5 MiB parts (the minimum chunk)
    assert head["Metadata"]["sha256"] == info.sha256
    assert store.get_file("big.bin", tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_missing_bucket_is_a_clear_error(s3_env: object) -> None:
    store = S3Store("s3://no-such-bucket-here/x", FAST)
    with pytest.raises(BucketNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        store.put_bytes("a", b"1")
    with pytest.raises(BucketNotFoundError):
        list(store.list())


def test_wrong_credentials_are_denied(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3Store(f"s3://{s3_bucket}/x", FAST)
    with pytest.raises(AccessDeniedError, match="access denied") as info:
        store.put_bytes("a", b"1")
    assert "not-the-secret" not in str(info.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(AccessDeniedError, match="InvalidAccessKeyId"):
        S3Store(f"s3://{s3_bucket}/x", FAST).get_bytes("a")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3server import _pick_ports

    (port,), _ = _pick_ports(1, 0)  # free, so nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    store = S3Store("s3://bucket/x", FAST)
    with pytest.raises(StoreUnreachableError, match=rf"127\.0\.0\.1:{port}.*cannot be reached"):
        store.put_bytes("a", b"1")


def test_server_stopped_mid_upload_leaves_no_partial_object(s3_bucket: str, s3_server, tmp_path: Path) -> None:  # noqa: ANN001
    """Kill SeaweedFS during a multipart upload: a clear error, and after a restart no object is visible."""
    store = S3Store(f"s3://{s3_bucket}/crash", FAST)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * 2**20))
    killer = threading.Timer(0.3, s3_server.kill)
    killer.start()
    try:
        with pytest.raises(StoreError) as info:
            store.put_file("big.bin", big)
        assert "crash/big.bin" in str(info.value) or "127.0.0.1" in str(info.value)
    finally:
        killer.join()
        s3_server.start()
    assert not store.exists("big.bin")
    assert [o.key for o in store.list()] == []
    # And the same upload succeeds once the server is back.
    store.put_file("big.bin", big)
    assert store.stat("big.bin").size == big.stat().st_size
