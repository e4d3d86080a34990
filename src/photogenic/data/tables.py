"""A captions table as a source: a .jsonl, .csv or .parquet file of (key, caption, image) rows beside its
images, in a folder or under an S3 prefix; every bad row is kept aside with its reason."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from photogenic.config import StorageConfig
from photogenic.data.sources import (
    _CHUNK_ROWS,
    _IMAGE_SUFFIXES,
    _TABLE_SUFFIXES,
    Chunk,
    RawRecord,
    Source,
    SourceError,
)
from photogenic.storage import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StoreError,
    StoreUnreachableError,
    join_uri,
    open_store,
    split_parent,
)

__all__ = ["KEY_COLUMNS", "IMAGE_COLUMNS", "CAPTION_COLUMNS", "TableRow", "TableSource"]


# The column names a captions table may use, in order of preference: ours, Hugging Face imagefolder's
# `metadata.csv`/`.jsonl` (`file_name`, `text`), and the usual others.
KEY_COLUMNS = ("key", "id")


IMAGE_COLUMNS = ("image", "file_name", "image_path", "path", "file", "filename")


CAPTION_COLUMNS = ("caption", "text")


@dataclass(frozen=True)
class TableRow:
    """One row of a captions table, checked in the main process; only `image_key`'s bytes are ever read.

    `image_key` is the image's key under the table's folder after normalisation, or None where the row
    names no usable image; `problem` then says why, naming the table, the line and the path.
    """

    where: str
    key: str | None
    caption: bytes | None
    image: str
    image_key: str | None
    extra: dict[str, Any]
    problem: str | None = None


@dataclass
class TableSource(Source):
    """Images in a folder or S3 prefix, captions in a JSONL, CSV or Parquet table beside them.

    The table's folder (or S3 prefix) is the source root: an image reference must name a regular file
    under it, after normalisation. Absolute paths and URIs are accepted only when they point inside it;
    `..` that leaves it, links (never followed, at any depth), hidden files, special files and files
    over `data.max_image_bytes` are quarantined with a reason and never read.
    """

    table_uri: str
    storage: StorageConfig
    max_image_bytes: int = 64 * 2**20
    exclude: tuple[str, ...] = ()  # folders under the root that are not the source's (the run's workspace)
    kind = "table"
    _folder: str = ""
    _name: str = ""

    def __post_init__(self) -> None:
        self._folder, self._name = split_parent(self.table_uri)
        if not self._name.lower().endswith(_TABLE_SUFFIXES):
            raise SourceError(f"captions table {self.table_uri!r} must end in {', '.join(_TABLE_SUFFIXES)}")
        self.table_uri = join_uri(self._folder, self._name)  # absolute: the workers and the reasons use it

    def _store(self) -> Any:
        return open_store(self._folder, self.storage)

    def _scan(self) -> Iterator[ObjectInfo]:
        """Every entry of the source, less the run's own outputs where they lie inside it."""
        for entry in self._store().scan():
            if not self._excluded(entry.key):
                yield entry

    def _excluded(self, key: str) -> bool:
        return any(key == p or key.startswith(f"{p}/") for p in self.exclude)

    def _describe(self) -> dict[str, Any]:
        """The table's content and every entry under the folder with its kind and content (`Store.content_id`:
        the sha256 of a local file's bytes, an S3 ETag), never just names and sizes. Files over the size cap,
        links and special files are identified without being read: ingestion refuses them whatever they hold.
        """
        store = self._store()
        try:
            table = store.stat(self._name)
        except ObjectNotFoundError as exc:
            raise SourceError(f"captions table {self.table_uri} does not exist") from exc
        listing = hashlib.sha256()
        for entry in self._scan():
            if entry.key != self._name:
                content = store.content_id(entry, self.max_image_bytes)
                listing.update(f"{entry.key}\t{entry.kind}\t{content}\n".encode())
        table_id = store.content_id(table, 1 << 62)
        return {"kind": "table", "uri": self.table_uri, "table": table_id, "entries": listing.hexdigest()}

    def rows(self) -> Iterator[TableRow]:
        """The table's rows, streamed and checked; caption values keep their raw bytes where they are not UTF-8.

        Raises:
            SourceError: the table cannot supply an image and a caption for any row (the columns found
                and the names accepted), or it cannot be read at all.
        """
        name = self._name.lower()
        if name.endswith(".parquet"):
            raw_rows = self._parquet_rows()
        elif name.endswith(".csv"):
            raw_rows = self._csv_rows()
        else:
            raw_rows = self._jsonl_rows()
        # CSV and Parquet headers were checked before the first row; JSONL rows each bring their own keys.
        usable, columns = not name.endswith(".jsonl"), set()
        for where, row in raw_rows:
            if isinstance(row, str):  # the line itself could not be parsed
                yield TableRow(where, None, None, "", None, {}, f"{where} of {self.table_uri}: {row}")
                continue
            if not usable and len(columns) < 200:  # for the error message; bounded, whatever the rows hold
                columns.update(row)
            roles = _roles(row)
            usable = usable or (roles[1] is not None and roles[2] is not None)
            yield self._check_row(where, row, roles)
        if not usable:
            raise SourceError(_schema_error(self.table_uri, sorted(columns)))

    def _jsonl_rows(self) -> Iterator[tuple[str, dict[str, Any] | str]]:
        with self._store().open(self._name) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
            for line_no, line in _bounded_lines(text, _MAX_LINE_CHARS):
                if line is None:
                    yield f"line {line_no}", f"is longer than {_MAX_LINE_CHARS} characters; it was skipped unread"
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
                    yield f"line {line_no}", f"not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})"
                    continue
                yield f"line {line_no}", row if isinstance(row, dict) else "not a JSON object"

    def _csv_rows(self) -> Iterator[tuple[str, dict[str, Any] | str]]:
        with self._store().open(self._name) as raw:
            # utf-8-sig: a byte-order mark would otherwise become part of the first column's name.
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
            reader = csv.reader(text)
            header: list[str] | None = None
            last_line = 0
            while True:
                start = last_line + 1  # a record may span lines: reasons name its first physical line
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a field over the csv module's limit: this record only
                    last_line = reader.line_num
                    yield f"line {start}", f"cannot be parsed as CSV ({exc})"
                    continue
                last_line = reader.line_num
                if not record:
                    continue
                if header is None:
                    header = [h.strip() for h in record]
                    self._check_header(header)
                    continue
                if len(record) != len(header):
                    yield f"line {start}", f"has {len(record)} fields, the header {len(header)}"
                    continue
                yield f"line {start}", dict(zip(header, record, strict=True))
            if header is None:
                raise SourceError(f"captions table {self.table_uri} is empty: no header line")

    def _parquet_rows(self) -> Iterator[tuple[str, dict[str, Any] | str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._store().open(self._name) as raw:
            data = raw.read()  # parquet needs random access; the table (not the images) is read whole
        try:
            table = pq.ParquetFile(io.BytesIO(data))
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"captions table {self.table_uri} is not a readable Parquet file: {exc}") from exc
        self._check_header(table.schema_arrow.names)
        row_no = 0
        for batch in table.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                row_no += 1
                yield f"row {row_no}", row

    def _check_header(self, header: list[str]) -> None:
        _, caption, image = _roles(dict.fromkeys(header))
        if caption is None or image is None:
            raise SourceError(_schema_error(self.table_uri, header))

    def _check_row(self, where: str, row: dict[str, Any], roles: tuple[str | None, ...]) -> TableRow:
        key_col, caption_col, image_col = roles
        at = f"{where} of {self.table_uri}"
        extra = {
            k: v
            for k, v in row.items()
            if k not in roles and isinstance(k, str) and (isinstance(v, (str, int, float, bool)) or v is None)
        }
        image = row.get(image_col) if image_col else None
        shown = image if isinstance(image, str) else ""
        key, caption = row.get(key_col) if key_col else None, row.get(caption_col) if caption_col else None
        problem = None
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
            problem = f"{at}: key is {_kind_of(key)}, not text"
        elif caption is not None and not isinstance(caption, (str, bytes)):
            problem = f"{at}: caption is {_kind_of(caption)}, not text"
        image_key, image_problem = self._image_key(image)
        if image_problem and not problem:
            problem = f"{at}: {image_problem}"
        if key is None and isinstance(image, str) and image:
            key = image.rsplit("/", 1)[-1]
        return TableRow(
            where=where,
            key=None if key is None else str(key),
            caption=_caption_bytes(caption) if isinstance(caption, (str, bytes)) else None,
            image=shown,
            image_key=None if problem else image_key,
            extra=extra,
            problem=problem,
        )

    def _image_key(self, image: Any) -> tuple[str | None, str | None]:
        """The image's key under the source folder, or why the reference is refused (nothing is read)."""
        if image is None or image == "":
            return None, "the row names no image"
        if not isinstance(image, str):
            return None, f"image path is {_kind_of(image)}, not text"
        if any(ord(c) < 32 for c in image):
            return None, f"image path {image!r} contains control characters"
        path = image
        if "://" in image or image.startswith("/"):  # absolute: accepted only when it points under the root
            absolute = image.removeprefix("file://")
            if "://" not in absolute and not self._folder.startswith("s3://"):
                absolute = posixpath.normpath(absolute)
            folder = self._folder.rstrip("/") + "/"
            if not absolute.startswith(folder):
                outside = f"image path {image!r} is outside the source folder {self._folder}"
                return None, f"{outside}; only files under it are read"
            path = absolute[len(folder) :]  # relative, normalised below (an S3 URI's `..` included)
        key = posixpath.normpath(path)
        if key == ".." or key.startswith("../") or key.startswith("/"):
            return None, f"image path {image!r} leaves the source folder {self._folder}; only files under it are read"
        if key == "." or any(part.startswith(".") for part in key.split("/")):
            return None, f"image path {image!r} names a hidden file or folder, which is never read"
        if self._excluded(key):
            return None, f"image path {image!r} is inside this run's own workspace or store, which is not the source"
        return key, None

    def chunks(self) -> Iterator[Chunk]:
        referenced: set[str] = set()
        batch: list[TableRow] = []
        index = 0
        for row in self.rows():
            if row.image_key is not None:
                referenced.add(row.image_key)
            batch.append(row)
            if len(batch) >= _CHUNK_ROWS:
                yield Chunk("table", index, (self._folder, self.table_uri, batch, self.max_image_bytes), self.storage)
                index, batch = index + 1, []
        if batch:
            yield Chunk("table", index, (self._folder, self.table_uri, batch, self.max_image_bytes), self.storage)
            index += 1
        # Images nobody captioned: they cannot be used, but they are reported, never ignored.
        orphans = [
            (e.key, e.kind) for e in self._scan() if e.key.lower().endswith(_IMAGE_SUFFIXES) and e.key not in referenced
        ]
        for start in range(0, len(orphans), _CHUNK_ROWS):
            batch_o = orphans[start : start + _CHUNK_ROWS]
            yield Chunk("orphans", index, (self._folder, batch_o, self.max_image_bytes), self.storage)
            index += 1


_MAX_LINE_CHARS = 1 << 24  # a JSONL row longer than 16 Mi characters is refused, not held in memory


def _bounded_lines(text: IO[str], limit: int) -> Iterator[tuple[int, str | None]]:
    """Lines with their numbers; a line longer than `limit` is read past in pieces and yielded as None."""
    line_no = 0
    while line := text.readline(limit):
        line_no += 1
        if len(line) < limit or line.endswith(("\n", "\r")):
            yield line_no, line
            continue
        while (rest := text.readline(limit)) and not rest.endswith(("\n", "\r")):
            pass
        yield line_no, None


_KIND_WORDS = {"symlink": "a symbolic link", "special": "a special file (a device, FIFO or socket)"}


def _roles(row: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """Which column is the key, the caption and the image: the first accepted name present (any case)."""
    by_lower: dict[str, str] = {}
    for name in row:
        if isinstance(name, str):
            by_lower.setdefault(name.strip().lower(), name)

    def pick(names: tuple[str, ...]) -> str | None:
        return next((by_lower[n] for n in names if n in by_lower), None)

    return pick(KEY_COLUMNS), pick(CAPTION_COLUMNS), pick(IMAGE_COLUMNS)


def _schema_error(table_uri: str, columns: list[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:50]) or "none"
    return (
        f"captions table {table_uri} cannot supply an image and a caption for any row: its columns are "
        f"[{shown}]; it needs an image column (one of {', '.join(IMAGE_COLUMNS)}) and a caption column "
        f"(one of {', '.join(CAPTION_COLUMNS)}), and may have a key column ({', '.join(KEY_COLUMNS)})"
    )


def _kind_of(value: Any) -> str:
    return f"a value of type {type(value).__name__} ({str(value)[:40]!r})"


def _caption_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    # Undecodable bytes were kept as surrogates; turn them back into the original bytes.
    return str(value).encode("utf-8", errors="surrogateescape")


def _read_image(store: Any, key: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """One image's bytes, or why not: a problem with this file is the row's, never the stage's."""
    uri = store.uri(key)
    try:
        return store.read_capped(key, max_bytes), None
    except StoreUnreachableError:
        raise  # the source as a whole is unreachable: the stage stops
    except ObjectNotFoundError:
        return None, f"image {uri} does not exist"
    except ObjectTooLargeError as exc:
        return None, f"{exc} (data.max_image_bytes)"
    except StoreError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read image {uri}: {exc.strerror or type(exc).__name__}"


def _load_table(chunk: Chunk) -> list[RawRecord]:
    folder, table_uri, rows, max_bytes = chunk.payload
    store = open_store(folder, chunk.storage)
    out = []
    for row in rows:
        ref = f"{table_uri} {row.where}"
        data, problem = None, row.problem
        if problem is None and row.image_key is not None:
            data, problem = _read_image(store, row.image_key, max_bytes)
            if problem:
                problem = f"{row.where} of {table_uri}: {problem}"
        out.append(
            RawRecord(
                key=row.key or ref,
                image=data,
                caption=row.caption,
                source_ref=ref,
                image_name=row.image,
                extra=row.extra,
                problem=problem,
            )
        )
    return out


def _load_orphans(chunk: Chunk) -> list[RawRecord]:
    folder, entries, max_bytes = chunk.payload
    store = open_store(folder, chunk.storage)
    out = []
    for key, kind in entries:
        uri = join_uri(folder, key)
        if kind == "file":
            data, problem = _read_image(store, key, max_bytes)
        else:
            data, problem = None, f"{uri} is {_KIND_WORDS.get(kind, kind)}, which is never read"
        out.append(
            RawRecord(
                key=key.rsplit("/", 1)[-1],
                image=data,
                caption=None,
                source_ref=uri,
                image_name=key,
                problem=f"image {uri} has no caption row" + (f"; {problem}" if problem else ""),
            )
        )
    return out
