"""Hostile input to ingestion and validation: tables that try to read outside their source, rows that
try to crash the stage, tables that yield nothing, and reuse that must not trust names and sizes.

A caption table is untrusted. Each test here plants marker bytes outside the source root (in a valid
image, in a text file, in the environment) and asserts they appear nowhere the run wrote: the store,
the MLflow database and artifacts, the console. A refactor that loosens confinement fails them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from photogenic.cli import main
from photogenic.config import Config, ConfigError, load_config
from photogenic.data.ingest import EmptyDatasetError, ingest
from photogenic.data.sources import SourceError
from photogenic.data.validate import ValidationFailedError, validate
from photogenic.manifest import read_manifest
from photogenic.storage import open_store
from photogenic.world import iter_world


def _config(workspace: Path, *overrides: str) -> Config:
    return load_config("tiny", overrides=[f"workspace={workspace}", "data.workers=1", *overrides])


def _marked_png(marker: str, index: int = 0) -> bytes:
    """A valid world picture that carries `marker` in a PNG text chunk: it would pass every check."""
    world = load_config("tiny", overrides=["world.num_samples=1000"]).world
    sample = next(iter_world(world, 500 + index, 501 + index))
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", marker)
    buf = io.BytesIO()
    Image.open(io.BytesIO(sample.image)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _good_rows(store: Any, n: int = 6, prefix: str = "img") -> list[dict[str, str]]:
    rows = []
    for s in iter_world(load_config("tiny").world, 0, n):
        store.put_bytes(f"{prefix}/{s.key}.png", s.image)
        rows.append({"key": s.key, "caption": s.caption, "image": f"{prefix}/{s.key}.png"})
    return rows


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _files_containing(root: Path, marker: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and marker in path.read_bytes():
            hits.append(str(path))
    return hits


def _reasons(manifest_uri: str, config: Config) -> dict[str, str]:
    manifest = read_manifest(manifest_uri, config.storage)
    with manifest.open("quarantine.jsonl", config.storage) as f:
        return {row["key"]: " ".join(row["reasons"]) for row in map(json.loads, f)}


def _photogenic(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("photogenic")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _child_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    return {**keep, "OMP_NUM_THREADS": "1", **extra}


# --------------------------------------------------------------------------------------------- confinement


def test_a_local_table_cannot_read_outside_its_folder(tmp_path: Path) -> None:
    """Every way out of the folder is quarantined with the table, the line and the path, and never read."""
    marker = f"MARKER-{uuid.uuid4().hex}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "marked.png").write_bytes(_marked_png(marker))  # a valid image: it would land in the clean set
    (outside / "secret.txt").write_text(marker)
    src = tmp_path / "src"
    store = open_store(str(src))
    rows = _good_rows(store)
    img = src / "img"
    os.symlink(outside / "marked.png", img / "link.png")
    os.symlink(outside, img / "linked-folder")
    os.symlink(outside / "marked.png", img / "unreferenced-link.png")  # an orphan that is a link
    os.mkfifo(img / "fifo.png")  # opening it for reading would block forever
    os.mkfifo(img / "unreferenced-fifo.png")
    hostile = {
        "dotdot": "../outside/marked.png",
        "dotdot-inside-first": "img/../../outside/secret.txt",
        "absolute": str(outside / "marked.png"),
        "file-uri": f"file://{outside / 'secret.txt'}",
        "etc-passwd": "/etc/passwd",
        "environ": "/proc/self/environ",
        "dev-zero": "/dev/zero",
        "link": "img/link.png",
        "through-linked-folder": "img/linked-folder/marked.png",
        "fifo": "img/fifo.png",
        "hidden": "img/.marked.png",
        "s3-uri": "s3://photogenic/outside/marked.png",
    }
    (img / ".marked.png").write_bytes(_marked_png(marker, 1))
    rows += [{"key": k, "caption": "a caption for a hostile row", "image": v} for k, v in hostile.items()]
    (src / "captions.jsonl").write_bytes(_jsonl(rows))

    workspace = tmp_path / "ws"
    env = _child_env(PHOTOGENIC_SECRET_MARKER=marker)  # what /proc/self/environ would hand over
    done = _photogenic(
        "ingest",
        "--source",
        str(src / "captions.jsonl"),
        "--preset",
        "tiny",
        "-w",
        str(workspace),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"] == {"input": len(rows) + 2, "samples": 6, "duplicates": 0, "quarantined": len(hostile) + 2}
    config = _config(workspace)
    reasons = _reasons(result["manifest_uri"], config)
    table = str(src / "captions.jsonl")
    for line, key in enumerate(hostile, start=7):
        assert f"line {line} of {table}" in reasons[key], (key, reasons[key])
        assert repr(hostile[key]) in reasons[key] or hostile[key].split("/", 1)[-1] in reasons[key], reasons[key]
    for key in ("dotdot", "dotdot-inside-first"):
        assert "leaves the source folder" in reasons[key]
    for key in ("absolute", "file-uri", "etc-passwd", "environ", "dev-zero", "s3-uri"):
        assert "outside the source folder" in reasons[key]
    assert "symbolic link" in reasons["link"] and "symbolic link" in reasons["through-linked-folder"]
    assert "FIFO" in reasons["fifo"] and "hidden" in reasons["hidden"]
    assert "symbolic link" in reasons["unreferenced-link.png"] and "no caption row" in reasons["unreferenced-link.png"]
    assert "special file" in reasons["unreferenced-fifo.png"]

    validated = _photogenic(
        "validate", "-m", result["manifest_uri"], "--preset", "tiny", "-w", str(workspace),
        "data.max_failed_fraction=1", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stderr
    for text in (done.stdout, done.stderr, validated.stdout, validated.stderr):
        assert marker not in text
    assert _files_containing(workspace, marker.encode()) == []  # store, shards, quarantine, MLflow
    assert _files_containing(workspace, b"root:x:0:0") == []  # /etc/passwd's first line


def test_an_s3_table_reads_only_under_its_prefix(s3_bucket: str, tmp_path: Path) -> None:
    """From an S3-hosted table, local paths and keys outside the table's prefix are never read or uploaded."""
    import boto3

    marker = f"MARKER-{uuid.uuid4().hex}"
    local_secret = tmp_path / "host-secret.png"
    local_secret.write_bytes(_marked_png(marker))
    bucket = open_store(f"s3://{s3_bucket}")
    bucket.put_bytes("private/marked.png", _marked_png(marker, 1))  # same bucket, another prefix
    src = bucket.child("raw")
    rows = _good_rows(src)
    hostile = {
        "local-absolute": str(local_secret),
        "local-file-uri": f"file://{local_secret}",
        "dotdot": "../private/marked.png",
        "s3-outside": f"s3://{s3_bucket}/private/marked.png",
        "s3-dotdot": f"s3://{s3_bucket}/raw/../private/marked.png",
        "etc-passwd": "/etc/passwd",
    }
    rows += [{"key": k, "caption": "a caption for a hostile row", "image": v} for k, v in hostile.items()]
    rows.append(
        {
            "key": "s3-inside",
            "caption": "an absolute URI inside the prefix",
            "image": f"s3://{s3_bucket}/raw/img/{rows[0]['key']}.png",
        }
    )
    src.put_bytes("captions.jsonl", _jsonl(rows))
    config = _config(tmp_path / "ws", f"storage.root=s3://{s3_bucket}/out")
    result = ingest(f"s3://{s3_bucket}/raw/captions.jsonl", config, progress=False)
    assert result.counts["quarantined"] == len(hostile) and result.counts["duplicates"] == 1  # s3-inside: a copy
    reasons = _reasons(result.manifest_uri, config)
    for key in hostile:
        assert "source folder" in reasons[key] and f"of s3://{s3_bucket}/raw/captions.jsonl" in reasons[key]
    client = boto3.client("s3")
    for item in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/").get("Contents", []):
        body = client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        assert marker.encode() not in body, item["Key"]
        assert b"root:x:0:0" not in body, item["Key"]


def test_an_oversized_file_is_quarantined_without_being_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    store = open_store(str(src))
    rows = _good_rows(store, 3)
    with open(src / "img" / "huge.png", "wb") as f:  # sparse: 3 GiB on paper, nothing on disk
        f.truncate(3 * 2**30)
    rows.append({"key": "huge", "caption": "a picture too large to read", "image": "img/huge.png"})
    (src / "captions.jsonl").write_bytes(_jsonl(rows))
    config = _config(tmp_path / "ws")
    result = ingest(str(src / "captions.jsonl"), config, progress=False)
    assert result.counts["quarantined"] == 1 and result.bytes_in < 2**20  # the 3 GiB never entered memory
    reason = _reasons(result.manifest_uri, config)["huge"]
    assert f"{3 * 2**30} bytes, above the limit of {64 * 2**20}" in reason and "data.max_image_bytes" in reason


# --------------------------------------------------------------------------------------------- per-row isolation


def test_bad_rows_are_set_aside_and_the_stage_goes_on(tmp_path: Path) -> None:
    """Wrong types, an overlong CSV field, a short record: quarantined with their physical line numbers."""
    src = tmp_path / "src"
    store = open_store(str(src))
    good = _good_rows(store, 4)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "caption", "image"])
    writer.writerow([good[0]["key"], "a caption that spans\ntwo lines", good[0]["image"]])  # lines 2-3
    writer.writerow([good[1]["key"], good[1]["caption"], good[1]["image"]])  # line 4
    writer.writerow(["long", "x" * 200_000, good[2]["image"]])  # line 5: over the csv module's field limit
    writer.writerow(["short", "only two fields"])  # line 6
    writer.writerow([good[3]["key"], good[3]["caption"], good[3]["image"]])  # line 7
    lines = [buf.getvalue().rstrip("\n")]
    (src / "captions.csv").write_text("\n".join(lines) + "\n")
    config = _config(tmp_path / "ws")
    result = ingest(str(src / "captions.csv"), config, progress=False)
    assert result.counts == {"input": 6, "samples": 3, "duplicates": 0, "quarantined": 3}
    reasons = _reasons(result.manifest_uri, config)
    table = str(src / "captions.csv")
    assert f"line 5 of {table}: cannot be parsed as CSV (field larger than field limit" in " ".join(reasons.values())
    assert f"line 6 of {table}: has 2 fields, the header 3" in " ".join(reasons.values())
    assert "has no caption row" in reasons[f"{good[2]['key']}.png"]  # its one row was unreadable: kept aside

    jsonl_rows = [
        {"key": "number", "caption": "an image path that is a number", "image": 12},
        {"key": "listcap", "caption": ["not", "text"], "image": good[0]["image"]},
        {"key": {"a": 1}, "caption": "a key that is a mapping", "image": good[1]["image"]},
        {"key": good[2]["key"], "caption": good[2]["caption"], "image": good[2]["image"]},
    ]
    tail = [
        "{not json",  # line 5
        "[1, 2]",  # line 6
        "[" * 100_000,  # line 7: nesting deeper than Python's stack
        json.dumps({"key": "huge", "caption": "x" * (1 << 24), "image": good[3]["image"]}),  # line 8: 16 Mi+
    ]
    (src / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl_rows) + "\n".join(tail) + "\n")
    result = ingest(str(src / "rows.jsonl"), config, progress=False)
    bad_rows, orphans = 7, 3  # the images of rows 2, 3 and 8 are named by no usable row
    assert result.counts["samples"] == 1 and result.counts["quarantined"] == bad_rows + orphans
    text = " ".join(_reasons(result.manifest_uri, config).values())
    for expected in (
        "line 1 of", "image path is a value of type int ('12'), not text",
        "line 2 of", "caption is a value of type list",
        "line 3 of", "key is a value of type dict",
        "line 5 of", "not valid JSON", "line 6 of", "not a JSON object", "line 7 of",
        "line 8 of", f"is longer than {1 << 24} characters; it was skipped unread",
    ):  # fmt: skip
        assert expected in text, expected


# --------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("header", "rows_ok"),
    [
        ("file_name,text", True),  # Hugging Face imagefolder's metadata.csv
        ("\ufeffkey,caption,image", True),  # a byte-order mark before the header
        (" Key , Caption , Image ", True),
        ("file_name,description", False),  # no caption column
        ("name,caption", False),  # no image column
    ],
)
def test_table_columns_are_checked_before_anything_is_ingested(tmp_path: Path, header: str, rows_ok: bool) -> None:
    src = tmp_path / "src"
    store = open_store(str(src))
    good = _good_rows(store, 3)
    columns = [h.strip().lstrip("\ufeff").lower() for h in header.split(",")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in good:
        values = {"file_name": r["image"], "image": r["image"], "text": r["caption"], "caption": r["caption"]}
        writer.writerow([values.get(c, r["key"]) for c in columns])
    (src / "captions.csv").write_text(f"{header}\n{buf.getvalue()}", encoding="utf-8")
    runner = CliRunner()
    args = ["ingest", "--source", str(src / "captions.csv"), "--preset", "tiny", "-w", str(tmp_path / "ws")]
    done = runner.invoke(main, args)
    if rows_ok:
        assert done.exit_code == 0, done.output
        counts = json.loads(done.stdout)["counts"]
        assert counts == {"input": 3, "samples": 3, "duplicates": 0, "quarantined": 0}
        if "key" in columns:  # the BOM did not rename the key column: keys are the table's, not file names
            keys = {json.loads(s["json"])["key"] for s in _samples(json.loads(done.stdout)["manifest_uri"])}
            assert keys == {r["key"] for r in good}
    else:
        assert done.exit_code == 1 and "Traceback" not in done.output
        assert "cannot supply an image and a caption" in done.output and "file_name" in done.output
        assert all(repr(c) in done.output for c in columns)


def _samples(manifest_uri: str) -> list[dict[str, Any]]:
    from photogenic.data.shards import iter_dataset

    return list(iter_dataset(read_manifest(manifest_uri)))


def test_a_table_that_yields_nothing_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = _config(tmp_path / "ws")
    (src / "empty.csv").write_text("")
    with pytest.raises(SourceError, match="is empty: no header line"):
        ingest(str(src / "empty.csv"), config, progress=False)
    (src / "header.csv").write_text("key,caption,image\n")
    with pytest.raises(EmptyDatasetError, match="found no rows at all"):
        ingest(str(src / "header.csv"), config, progress=False)
    (src / "other.jsonl").write_text('{"url": "a.png", "alt": "x"}\n')
    with pytest.raises(SourceError, match=r"columns are \['alt', 'url'\]"):
        ingest(str(src / "other.jsonl"), config, progress=False)
    (src / "missing.jsonl").write_text('{"image": "a.png", "caption": "a caption"}\n')
    with pytest.raises(
        EmptyDatasetError, match=r"(?s)kept no sample: 1 in -> 0 samples.*line 1 of .*a\.png does not exist"
    ):
        ingest(str(src / "missing.jsonl"), config, progress=False)
    assert not list((tmp_path / "ws").rglob("manifest.json"))  # nothing was published


def test_validation_fails_on_no_clean_sample_and_counts_what_ingestion_set_aside(tmp_path: Path) -> None:
    src = tmp_path / "src"
    store = open_store(str(src))
    rows = _good_rows(store, 10)
    rows += [{"key": f"gone-{i}", "caption": "a caption", "image": f"img/missing-{i}.png"} for i in range(2)]
    store.put_bytes("captions.jsonl", _jsonl(rows))
    config = _config(tmp_path / "ws", "data.max_failed_fraction=0.1")
    raw = ingest(store.uri("captions.jsonl"), config, progress=False)
    assert raw.counts["quarantined"] == 2  # 2 of 12 inputs: 16.7%, though validation itself finds nothing
    with pytest.raises(ValidationFailedError, match=r"2 of the 12 inputs .* \(2 at ingestion, 0 of 10 samples"):
        validate(raw.manifest_uri, config)
    report = open_store(str(tmp_path / "ws" / "store" / "datasets")).list()
    html = next(
        open_store(o.uri.rsplit("/", 1)[0]).get_bytes("report.html") for o in report if o.key.endswith("report.html")
    )
    assert b"Quarantined at ingestion" in html and b"gone-0" in html

    loose = _config(tmp_path / "ws", "data.max_failed_fraction=0.2")
    assert validate(raw.manifest_uri, loose).failed_fraction == pytest.approx(2 / 12)

    blank = [{**r, "caption": " "} for r in rows[:3]]  # ingestion keeps them; validation rejects every one
    store.put_bytes("blank.jsonl", _jsonl(blank))
    raw = ingest(store.uri("blank.jsonl"), loose, progress=False)
    with pytest.raises(ValidationFailedError, match="no sample is clean"):
        validate(raw.manifest_uri, _config(tmp_path / "ws", "data.max_failed_fraction=1"))


# --------------------------------------------------------------------------------------------- reuse and determinism


def _bmp(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="BMP")  # uncompressed: every colour, the same size
    return buf.getvalue()


def test_reuse_is_keyed_on_content_not_names_and_sizes(store_uri: str, tmp_path: Path) -> None:
    store = open_store(f"{store_uri}/src")
    first, second = _bmp((200, 30, 30)), _bmp((30, 30, 200))
    assert len(first) == len(second) and first != second
    store.put_bytes("img/a.bmp", first)
    store.put_bytes("captions.jsonl", _jsonl([{"key": "a", "caption": "a red square", "image": "img/a.bmp"}]))
    config = _config(tmp_path / "ws", f"storage.root={store_uri}/out")
    before = ingest(store.uri("captions.jsonl"), config, progress=False)
    assert ingest(store.uri("captions.jsonl"), config, progress=False).reused
    if store_uri.startswith("s3://"):
        store.put_bytes("img/a.bmp", second)
    else:  # written in place as another tool would: no checksum sidecar is updated
        Path(store.uri("img/a.bmp")).write_bytes(second)
        Path(store.uri("img/.a.bmp.sha256")).unlink()
    after = ingest(store.uri("captions.jsonl"), config, progress=False)
    assert not after.reused and after.fingerprint != before.fingerprint
    image = next(s for s in _samples_of(after.manifest_uri, config) if s["__key__"] == "a")
    assert image["bmp"] == second


def test_a_workspace_inside_the_source_folder_is_not_part_of_the_source(tmp_path: Path) -> None:
    """`--source captions.jsonl` run from the data folder puts the default workspace inside it."""
    src = tmp_path / "src"
    store = open_store(str(src))
    rows = _good_rows(store, 4)
    store.put_bytes("captions.jsonl", _jsonl([*rows, {"key": "own", "caption": "our output", "image": "ws/a.png"}]))
    config = _config(src / "ws")
    first = ingest(store.uri("captions.jsonl"), config, progress=False)
    (src / "ws" / "a.png").write_bytes((src / "img" / f"{rows[0]['key']}.png").read_bytes())  # e.g. a sample grid
    again = ingest(store.uri("captions.jsonl"), config, progress=False)
    assert again.reused and again.counts == first.counts == {
        "input": 5,
        "samples": 4,
        "duplicates": 0,
        "quarantined": 1,
    }
    assert "inside this run's own workspace" in _reasons(first.manifest_uri, config)["own"]


def _samples_of(manifest_uri: str, config: Config) -> list[dict[str, Any]]:
    from photogenic.data.shards import iter_dataset

    return list(iter_dataset(read_manifest(manifest_uri, config.storage), config.storage))


def test_a_rebuild_of_bad_input_is_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "src"
    store = open_store(str(src))
    rows = _good_rows(store, 3)
    store.put_bytes("img/pdf.png", b"%PDF-1.4 not pixels")
    rows.append({"key": "pdf", "caption": "not an image at all", "image": "img/pdf.png"})
    store.put_bytes("captions.jsonl", _jsonl(rows))
    config = _config(tmp_path / "ws", "data.max_failed_fraction=0.5")
    one = ingest(store.uri("captions.jsonl"), config, out=str(tmp_path / "one"), progress=False)
    two = ingest(store.uri("captions.jsonl"), config, out=str(tmp_path / "two"), progress=False)
    assert one.fingerprint == two.fingerprint
    error = json.loads(next(s for s in _samples_of(one.manifest_uri, config) if s["__key__"] == "pdf")["json"])
    assert "decode_error" in error and "0x" not in error["decode_error"], error
    a = validate(one.manifest_uri, config, out=str(tmp_path / "v1"))  # the reasons are the version's input
    b = validate(one.manifest_uri, config, out=str(tmp_path / "v2"))
    assert a.fingerprint == b.fingerprint


# --------------------------------------------------------------------------------------------- store roots, keys


@pytest.mark.parametrize("root", ["s3:/bucket/x", "s3://", "s3:bucket", "gs://bucket/x", "s3://Bad_Bucket/x"])
def test_a_malformed_store_root_is_a_config_error_naming_the_key(tmp_path: Path, root: str) -> None:
    with pytest.raises(ConfigError, match=r"'storage.root'"):
        _config(tmp_path, f"storage.root={root}")
    done = CliRunner().invoke(main, ["ingest", "--preset", "tiny", "-w", str(tmp_path), f"storage.root={root}"])
    assert done.exit_code == 1 and "storage.root" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "s3:").exists() and not any(p.name.startswith("s3:") for p in Path.cwd().iterdir())


def test_a_malformed_source_uri_and_debug_tracebacks(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["ingest", "--source", "s3:/bucket/captions.jsonl", "--preset", "tiny", "-w", str(tmp_path)]
    plain = runner.invoke(main, args)
    assert plain.exit_code == 1 and "malformed S3 URI" in plain.output and "Traceback" not in plain.output
    debug = runner.invoke(main, ["--debug", *args])
    assert debug.exit_code == 1 and isinstance(debug.exception, SourceError)  # raised, with its traceback


def test_keys_that_collide_as_tar_names_say_so(tmp_path: Path) -> None:
    src = tmp_path / "src"
    store = open_store(str(src))
    rows = _good_rows(store, 2)
    rows[0]["key"], rows[1]["key"] = "photo.1", "photo_1"
    store.put_bytes("captions.jsonl", _jsonl(rows))
    config = _config(tmp_path / "ws")
    result = ingest(store.uri("captions.jsonl"), config, progress=False)
    reason = _reasons(result.manifest_uri, config)["photo_1"]
    assert "key 'photo_1' and key 'photo.1'" in reason and "both become the tar key 'photo_1'" in reason
    assert "duplicate key" not in reason


# --------------------------------------------------------------------------------------------- killed ingestion


def test_workers_die_with_a_killed_ingestion_and_its_scratch_is_cleaned_next_time(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = _child_env(TMPDIR=str(scratch))
    args = ["ingest", "--preset", "tiny", "-w", str(tmp_path / "ws"), "data.workers=2", "world.num_samples=200000"]
    exe = Path(sys.executable).with_name("photogenic")
    proc = subprocess.Popen([str(exe), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and (len(workers) < 2 or not list(scratch.glob("photogenic-ingest-*"))):
            time.sleep(0.2)
            workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 2, "the ingestion's workers did not start"
        own = list(scratch.glob(f"photogenic-ingest-{proc.pid}-*"))
        assert own, list(scratch.iterdir())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers {[p.pid for p in alive]} outlived their killed parent"
    assert own[0].exists()  # SIGKILL ran no clean-up

    again = _photogenic("ingest", "--preset", "tiny", "-w", str(tmp_path / "ws2"), env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not own[0].exists()
