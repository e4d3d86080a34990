"""The S3 store (boto3): objects under s3://bucket/prefix, each object's sha256 in its user metadata, and
S3's errors mapped to the StoreError kinds."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from photogenic.config import StorageConfig
from photogenic.storage import (
    _CHUNK,
    SHA256_META,
    AccessDeniedError,
    BucketNotFoundError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    Store,
    StoreError,
    StoreUnreachableError,
    _check_expected_against_recorded,
    _VerifyingReader,
    join_uri,
    sha256_file,
    split_uri,
)

__all__ = ["S3Store"]


class S3Store(Store):
    """An S3 bucket and prefix. Endpoint and credentials come from the standard AWS environment
    (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE)."""

    def __init__(self, uri: str, config: StorageConfig | None = None) -> None:
        _, rest = split_uri(uri)
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.root = join_uri(f"s3://{self.bucket}", self.prefix)
        self.config = config or StorageConfig()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            cfg = self.config
            self._client = boto3.session.Session().client(
                "s3",
                config=BotoConfig(
                    retries={"mode": "standard", "max_attempts": cfg.max_attempts},
                    connect_timeout=cfg.connect_timeout_s,
                    read_timeout=cfg.read_timeout_s,
                    s3={"addressing_style": cfg.addressing_style},
                ),
            )
        return self._client

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if not key:
            raise StoreError(f"empty object key under {self.root}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        mb = 2**20
        return TransferConfig(
            multipart_threshold=self.config.multipart_threshold_mb * mb,
            multipart_chunksize=self.config.multipart_chunk_mb * mb,
            max_concurrency=4,
        )

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        digest, size = sha256_file(path), Path(path).stat().st_size
        with self._errors(key, "upload"):
            # The transfer manager switches to multipart above the threshold; S3 makes the
            # object visible only once the whole upload completes, so readers never see a part.
            self.client.upload_file(
                str(path),
                self.bucket,
                self._key(key),
                ExtraArgs={"Metadata": {SHA256_META: digest}},
                Config=self._transfer_config(),
            )
        return ObjectInfo(key=key.strip("/"), uri=self.uri(key), size=size, sha256=digest)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        with self._errors(key, "write"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={SHA256_META: digest})
        return ObjectInfo(key=key.strip("/"), uri=self.uri(key), size=len(data), sha256=digest)

    def stat(self, key: str) -> ObjectInfo:
        with self._errors(key, "stat"):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return ObjectInfo(
            key=key.strip("/"),
            uri=self.uri(key),
            size=int(head["ContentLength"]),
            sha256=head.get("Metadata", {}).get(SHA256_META),
            etag=str(head.get("ETag", "")).strip('"') or None,
        )

    def open(self, key: str, sha256: str | None = None) -> BinaryIO:
        with self._errors(key, "read"):
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        recorded = obj.get("Metadata", {}).get(SHA256_META)
        body = obj["Body"]
        _check_expected_against_recorded(self.uri(key), recorded, sha256)
        reader = _VerifyingReader(_S3Body(self, key, body), self.uri(key), sha256 or recorded, close=body.close)
        return io.BufferedReader(reader, _CHUNK)

    def read_capped(self, key: str, max_bytes: int) -> bytes:
        with self._errors(key, "read"):
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        body = obj["Body"]
        size = int(obj.get("ContentLength", 0))
        if size > max_bytes:
            body.close()  # not one byte of the body is read
            raise ObjectTooLargeError(f"{self.uri(key)} is {size} bytes, above the limit of {max_bytes}")
        recorded = obj.get("Metadata", {}).get(SHA256_META)
        reader = _VerifyingReader(_S3Body(self, key, body), self.uri(key), recorded, close=body.close)
        with io.BufferedReader(reader) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix) if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(prefix, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][strip:]
                    # List results carry no user metadata; the checksum is read (and verified) on open.
                    etag = str(item.get("ETag", "")).strip('"') or None
                    yield ObjectInfo(key=key, uri=self.uri(key), size=int(item["Size"]), sha256=None, etag=etag)

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def make_bucket(self) -> bool:
        """Create the bucket if it is missing; True if this call created it (safe to repeat)."""
        from botocore.exceptions import ClientError

        with _S3Errors(self, f"s3://{self.bucket}", "create the bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return False
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:  # created by someone else in between: as good
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
                return False
            return True

    def _errors(self, key: str, action: str) -> _S3Errors:
        return _S3Errors(self, self.uri(key), action)


class _S3Body(io.RawIOBase):
    """A get_object body whose network errors become StoreErrors that name the object."""

    def __init__(self, store: S3Store, key: str, body: Any) -> None:
        self._store, self._key, self._body = store, key, body

    def read(self, size: int = -1) -> bytes:
        with self._store._errors(self._key, "read"):
            return self._body.read(size if size >= 0 else None)


class _S3Errors:
    """Turns botocore's exceptions into StoreErrors that say which URI, which endpoint and what to check."""

    _DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
    _NOT_FOUND = {"NoSuchKey", "404", "NotFound"}

    def __init__(self, store: S3Store, uri: str, action: str) -> None:
        self.store, self.uri, self.action = store, uri, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, StoreError):
            return False
        mapped = self._map(exc)
        if mapped is None:
            return False
        raise mapped from exc

    def _map(self, exc: BaseException) -> StoreError | None:
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx

        what = f"cannot {self.action} {self.uri}"
        where = f"endpoint {self.store.endpoint}"
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectTimeoutError)):
            return StoreUnreachableError(
                f"{what}: the S3 {where} cannot be reached ({type(exc).__name__}); "
                "check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and that the server is up"
            )
        if isinstance(exc, (bx.ReadTimeoutError, bx.ResponseStreamingError, bx.IncompleteReadError)):
            return StoreUnreachableError(f"{what}: the connection to the S3 {where} broke ({type(exc).__name__})")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return AccessDeniedError(
                f"{what}: no usable AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        code = ""
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
        elif isinstance(exc, S3UploadFailedError):
            cause = exc.__context__
            if cause is not None and not isinstance(cause, S3UploadFailedError):
                inner = self._map(cause)
                if inner is not None:
                    return inner
            text = str(exc)
            code = next((c for c in ("NoSuchBucket", *self._DENIED) if c in text), "")
            if not code:
                return StoreError(f"{what}: {text}")
        else:
            return None
        if code == "NoSuchBucket":
            return BucketNotFoundError(f"{what}: bucket {self.store.bucket!r} does not exist at the S3 {where}")
        if code in self._DENIED:
            return AccessDeniedError(
                f"{what}: access denied by the S3 {where} ({code}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket policy"
            )
        if code in self._NOT_FOUND:
            return ObjectNotFoundError(f"no object at {self.uri}")
        return StoreError(f"{what}: {code or type(exc).__name__}: {exc}")
