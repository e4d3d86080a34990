"""One storage API over URIs (local paths, s3://bucket/prefix); sha256 recorded on write, verified on read."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat as stat_mod
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from photogenic.config import StorageConfig, check_store_uri, shown_uri

__all__ = [
    "Store",
    "LocalStore",
    "ObjectInfo",
    "open_store",
    "split_uri",
    "split_parent",
    "join_uri",
    "sha256_file",
    "StoreError",
    "StoreUnreachableError",
    "BucketNotFoundError",
    "AccessDeniedError",
    "ObjectNotFoundError",
    "ChecksumMismatchError",
    "ObjectTooLargeError",
    "NotARegularFileError",
]

SHA256_META = "sha256"  # S3 user metadata key (x-amz-meta-sha256)
_CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)


class StoreError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause."""


class StoreUnreachableError(StoreError):
    """The storage endpoint cannot be reached."""


class BucketNotFoundError(StoreError):
    """The bucket named in the URI does not exist."""


class AccessDeniedError(StoreError):
    """The credentials are missing, wrong, or not allowed to do this."""


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """No object at that URI."""


class ChecksumMismatchError(StoreError):
    """An object's bytes do not match its recorded or expected sha256."""


class ObjectTooLargeError(StoreError):
    """An object is larger than the caller allows; none of its bytes were kept."""


class NotARegularFileError(StoreError):
    """A local path is a symbolic link, a device, a FIFO, a socket or a folder: it is never read as data."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object."""

    key: str
    uri: str
    size: int
    sha256: str | None  # as recorded at write time; None for objects written by other tools
    etag: str | None = None  # S3's entity tag from a listing (changes whenever the content does)
    kind: str = "file"  # `scan()` also reports "symlink" and "special" (device, FIFO, socket) entries


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`s3`, `bucket/a/b`); a local path -> (`file`, absolute path).

    Raises:
        StoreError: a malformed URI (`s3:/x`, `s3://`, an unknown scheme), never taken as a local path.
    """
    problem = check_store_uri(uri)
    if problem:
        raise StoreError(f"store URI {shown_uri(uri)} cannot be used: {problem}")
    if uri.startswith("s3://"):
        return "s3", uri[len("s3://") :]
    if uri.startswith("file://"):
        return "file", str(Path(uri[len("file://") :]).resolve())
    return "file", str(Path(uri).expanduser().resolve())


def split_parent(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/x.tar` -> (`s3://bucket/a`, `x.tar`); a local file path -> (its folder, its name)."""
    scheme, rest = split_uri(uri)
    head, _, name = rest.rstrip("/").rpartition("/")
    if not name or (scheme == "s3" and not head):
        raise StoreError(f"{uri!r} does not name an object")
    return (f"s3://{head}" if scheme == "s3" else head or "/"), name


def join_uri(base: str, *parts: str) -> str:
    """Join URI parts with single slashes."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class _VerifyingReader(io.RawIOBase):
    """Streams an object and checks its sha256 when the last byte has been read."""

    def __init__(self, raw: IO[bytes], uri: str, expected: str | None, close: Any = None) -> None:
        self._raw, self._uri, self._expected = raw, uri, expected
        self._hash = hashlib.sha256()
        self._close = close or raw.close
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n:
            self._hash.update(data)
        elif not self._done:
            self._done = True
            _verify(self._uri, self._hash.hexdigest(), self._expected)
        return n

    def close(self) -> None:
        if not self.closed:
            self._close()
        super().close()


def _verify(uri: str, actual: str, *expected: str | None) -> None:
    for want in expected:
        if want is not None and want != actual:
            raise ChecksumMismatchError(f"checksum mismatch for {uri}: expected sha256 {want}, got {actual}")


class Store(ABC):
    """Objects under one root URI, addressed by `/`-separated keys relative to it."""

    root: str

    def uri(self, key: str = "") -> str:
        return join_uri(self.root, key)

    def child(self, prefix: str) -> Store:
        """A store rooted at `prefix` below this one."""
        return open_store(self.uri(prefix), getattr(self, "config", None))

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Upload a file atomically, recording its sha256."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write bytes atomically, recording their sha256."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and recorded sha256 of one object; raises ObjectNotFoundError."""

    @abstractmethod
    def open(self, key: str, sha256: str | None = None) -> BinaryIO:
        """A streaming reader that raises ChecksumMismatchError at the end if the bytes are wrong."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error if it is absent)."""

    @abstractmethod
    def read_capped(self, key: str, max_bytes: int) -> bytes:
        """Read one object that a user's table names, never more than `max_bytes`.

        Raises:
            ObjectNotFoundError, ObjectTooLargeError (checked before any byte is read);
            NotARegularFileError (local: the key or a folder on its way is a symbolic link, or it is not
            a regular file; nothing is opened).
        """

    def content_id(self, info: ObjectInfo, max_bytes: int) -> str:
        """What identifies an object's content, for deciding whether an input changed: never its name and
        size alone. S3: the ETag (a new one for every write). Local: see `LocalStore.content_id`."""
        if info.etag:
            return f"etag:{info.etag}:{info.size}"
        if info.sha256:
            return f"sha256:{info.sha256}"
        raise StoreError(f"{info.uri} has no ETag or checksum to identify its content")

    def scan(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Like `list`, with the S3 ETag, and (local) symbolic links and special files as entries of their own kind."""
        return self.list(prefix)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        """Read a whole object, verifying the recorded sha256 and `sha256` if given."""
        with self.open(key, sha256) as f:
            return f.read()

    def get_file(self, key: str, dest: str | Path, sha256: str | None = None) -> Path:
        """Download to `dest` atomically; the file appears only once its checksum is verified."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            with self.open(key, sha256) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        keys = [o.key for o in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)


class LocalStore(Store):
    """A folder. Each object's sha256 is kept in a hidden sidecar `.NAME.sha256` beside it."""

    def __init__(self, root: str | Path, config: StorageConfig | None = None) -> None:
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)
        self.config = config

    def _file(self, key: str) -> Path:
        return self.path / self._checked(key)

    def _checked(self, key: str) -> str:
        key = key.strip("/")
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise StoreError(f"invalid object key {key!r} under {self.root}")
        return key

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.sha256")

    def _write(self, key: str, write: Any) -> ObjectInfo:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; objects get the usual file mode
        try:
            with os.fdopen(fd, "wb") as f:
                digest, size = write(f)
                f.flush()
                os.fsync(f.fileno())
            side_tmp = Path(f"{tmp}.sha")
            side_tmp.write_text(digest)
            os.replace(side_tmp, self._sidecar(path))
            os.replace(tmp, path)  # the object appears whole, or not at all
        finally:
            Path(tmp).unlink(missing_ok=True)
            Path(f"{tmp}.sha").unlink(missing_ok=True)
        return ObjectInfo(key=key.strip("/"), uri=str(path), size=size, sha256=digest)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        def write(f: IO[bytes]) -> tuple[str, int]:
            f.write(data)
            return hashlib.sha256(data).hexdigest(), len(data)

        return self._write(key, write)

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        def write(f: IO[bytes]) -> tuple[str, int]:
            h, size = hashlib.sha256(), 0
            with open(path, "rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            return h.hexdigest(), size

        return self._write(key, write)

    def _recorded(self, path: Path) -> str | None:
        # A sidecar holds 64 hex digits; never follow a link or read more, whatever the folder holds.
        try:
            fd = os.open(self._sidecar(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, 128).decode("ascii", errors="replace").strip() or None
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        path = self._file(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"no object at {path}")
        return ObjectInfo(key=key.strip("/"), uri=str(path), size=path.stat().st_size, sha256=self._recorded(path))

    def open(self, key: str, sha256: str | None = None) -> BinaryIO:
        path = self._file(key)
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the reader
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object at {path}") from None
        except IsADirectoryError:
            raise ObjectNotFoundError(f"{path} is a folder, not an object") from None
        recorded = self._recorded(path)
        _check_expected_against_recorded(str(path), recorded, sha256)
        return io.BufferedReader(_VerifyingReader(raw, str(path), sha256 or recorded), _CHUNK)

    def read_capped(self, key: str, max_bytes: int) -> bytes:
        parts = self._file(key).relative_to(self.path).parts
        fd = self._walk_to_parent(key, parts)
        try:
            kind = _entry_kind(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False))
            if kind:
                raise NotARegularFileError(f"{self.uri(key)} is {kind}; only regular files are read")
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                file_fd = os.open(parts[-1], flags, dir_fd=fd)
            except OSError as exc:
                raise _open_error(exc, self.uri(key)) from None
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object at {self.uri(key)}") from None
        finally:
            os.close(fd)
        with os.fdopen(file_fd, "rb", buffering=0) as f:
            info = os.fstat(f.fileno())
            kind = _entry_kind(info)  # swapped between the look and the open
            if kind:
                raise NotARegularFileError(f"{self.uri(key)} is {kind}; only regular files are read")
            if info.st_size > max_bytes:
                raise ObjectTooLargeError(f"{self.uri(key)} is {info.st_size} bytes, above the limit of {max_bytes}")
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # it grew while being read
            raise ObjectTooLargeError(f"{self.uri(key)} is more than {max_bytes} bytes, above the limit")
        return data

    def content_id(self, info: ObjectInfo, max_bytes: int) -> str:
        """The sha256 of the file's bytes (a sidecar may be stale: the file is read). A link or special file
        is identified by its kind and never opened; a file over `max_bytes` by its size, unread."""
        if info.kind != "file":
            return info.kind
        if info.size > max_bytes:
            return f"over-cap:{info.size}"
        try:
            path = os.path.join(self.root, self._checked(info.key))
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # gone or unreadable: ingestion quarantines it; its state is the identity
            return f"unreadable:{errno.errorcode.get(exc.errno or 0, 'error')}"
        with os.fdopen(fd, "rb") as f:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                return "special"
            return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"

    def _walk_to_parent(self, key: str, parts: tuple[str, ...]) -> int:
        """A descriptor of the key's folder, reached one folder at a time without following any link."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    folder = "/".join(parts[: i + 1])
                    if exc.errno == errno.ENOENT:
                        raise ObjectNotFoundError(f"no object at {self.uri(key)}") from None
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        what = "a symbolic link" if os.path.islink(self.path / folder) else "not a folder"
                        raise NotARegularFileError(
                            f"{self.uri(folder)} (on the way to {key}) is {what}; links are never followed"
                        ) from None
                    raise
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def scan(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every visible entry under the root, without following links: regular files, links, special files."""
        if not self.path.is_dir():
            return
        found: list[tuple[str, os.stat_result]] = []
        root = self.root.rstrip("/") + "/"
        for dirpath, dirnames, filenames in os.walk(self.root):  # never descends into linked folders
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in links]
            for name in [*filenames, *links]:
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)  # strings, not Paths: a folder may hold millions
                key = path[len(root) :]
                if key.startswith(prefix):
                    try:
                        found.append((key, os.lstat(path)))
                    except FileNotFoundError:  # deleted while scanning
                        continue
        for key, info in sorted(found):
            mode = info.st_mode
            kind = "symlink" if stat_mod.S_ISLNK(mode) else "file" if stat_mod.S_ISREG(mode) else "special"
            yield ObjectInfo(key=key, uri=self.uri(key), size=info.st_size, sha256=None, kind=kind)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.path.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):  # sidecars and in-flight temporary files
                    continue
                key = Path(dirpath, name).relative_to(self.path).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            try:
                yield self.stat(key)
            except ObjectNotFoundError:  # deleted while listing
                continue

    def delete(self, key: str) -> None:
        path = self._file(key)
        path.unlink(missing_ok=True)
        self._sidecar(path).unlink(missing_ok=True)


def _entry_kind(info: os.stat_result) -> str:
    """'' for a regular file, else what the entry is, in words."""
    mode = info.st_mode
    if stat_mod.S_ISREG(mode):
        return ""
    if stat_mod.S_ISLNK(mode):
        return "a symbolic link (links are never followed)"
    if stat_mod.S_ISDIR(mode):
        return "a folder"
    if stat_mod.S_ISFIFO(mode):
        return "a FIFO"
    if stat_mod.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _open_error(exc: OSError, uri: str) -> StoreError | OSError:
    if exc.errno == errno.ELOOP:
        return NotARegularFileError(f"{uri} is a symbolic link (links are never followed)")
    if exc.errno == errno.ENOENT:
        return ObjectNotFoundError(f"no object at {uri}")
    return exc


def _check_expected_against_recorded(uri: str, recorded: str | None, expected: str | None) -> None:
    # Fail before reading a byte when the manifest and the object's own record already disagree.
    if recorded and expected and recorded != expected:
        raise ChecksumMismatchError(
            f"checksum mismatch for {uri}: expected sha256 {expected}, the object was written with {recorded}"
        )


def open_store(uri: str, config: StorageConfig | None = None) -> Store:
    """The store for a URI: `s3://bucket/prefix` or a local path (`file://` optional)."""
    scheme, rest = split_uri(uri)
    if scheme == "s3":
        from photogenic.s3store import S3Store

        return S3Store(uri, config)
    return LocalStore(rest, config)
