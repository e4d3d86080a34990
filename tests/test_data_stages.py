"""Ingestion and validation end to end, on the world and on a folder of images, locally and on SeaweedFS.

Every bad-input kind of the data contract is fed in and must come out as a clear error or a
quarantine entry that names the key and the reason; counts in = counts out + counts set aside.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from photogenic.cli import main
from photogenic.config import Config, load_config
from photogenic.data.ingest import bounded_map, ingest
from photogenic.data.shards import iter_dataset
from photogenic.data.validate import ValidationFailedError, validate
from photogenic.manifest import ManifestError, read_manifest
from photogenic.storage import ChecksumMismatchError, open_store
from photogenic.world import iter_world


def _config(workspace: Path, *overrides: str) -> Config:
    return load_config("tiny", overrides=[f"workspace={workspace}", "data.workers=1", *overrides])


def _png(size: tuple[int, int], color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _world_png(index: int, size: tuple[int, int] | None = None) -> bytes:
    """A distinct world picture (solid fills would all be near-duplicates of each other)."""
    sample = next(iter_world(load_config("tiny").world, 100 + index, 101 + index))
    if size is None:
        return sample.image
    buf = io.BytesIO()
    Image.open(io.BytesIO(sample.image)).resize(size).save(buf, format="PNG")
    return buf.getvalue()


# Each bad kind: key, image bytes (None: no file), caption bytes, the stage that sets it aside, the reason.
def _bad_inputs(good_png: bytes) -> list[tuple[str, bytes | None, bytes, str, str]]:
    return [
        (
            "truncated",
            good_png[: len(good_png) // 2],
            b"a red square on a sky background",
            "validate",
            "cannot be decoded",
        ),
        ("zero-bytes", b"", b"a red square on a sky background", "validate", "zero-byte image"),
        (
            "not-an-image",
            b"%PDF-1.4 definitely not pixels",
            b"a red square on a sky background",
            "validate",
            "cannot be decoded",
        ),
        ("blank-caption", _world_png(1), b"   \t ", "validate", "caption is empty or whitespace"),
        (
            "latin1-caption",
            _world_png(2),
            "un carr\u00e9 rouge sur fond bleu".encode("latin-1"),
            "validate",
            "not valid UTF-8",
        ),
        ("overlong-caption", _world_png(3), b"word " * 200, "validate", "characters, outside"),
        ("tiny", _world_png(4, (8, 8)), b"a tiny red square image", "validate", "smaller than 16 px"),
        ("panorama", _world_png(5, (200, 20)), b"a very wide red banner", "validate", "aspect ratio 10.00 exceeds 3"),
        ("no-image-file", None, b"a caption whose image file is missing", "ingest", "does not exist"),
    ]


@pytest.fixture
def folder_source(store_uri: str) -> dict[str, Any]:
    return make_folder_source(store_uri)


def make_folder_source(store_uri: str) -> dict[str, Any]:
    """A captions table plus images in a store (local or S3): good rows and one of every bad kind."""
    store = open_store(store_uri)
    good = list(iter_world(load_config("tiny", overrides=["world.duplicate_rate=0"]).world, 0, 30))
    rows = []
    for s in good:
        store.put_bytes(f"raw/images/{s.key}.png", s.image)
        rows.append({"key": s.key, "caption": s.caption, "image": f"images/{s.key}.png"})
    bad = _bad_inputs(good[0].image)
    for key, image, caption, _, _ in bad:
        if image is not None:
            store.put_bytes(f"raw/images/{key}.png", image)
        rows.append(
            {"key": key, "caption": caption.decode("utf-8", errors="surrogateescape"), "image": f"images/{key}.png"}
        )
    # Duplicate key: a second row reusing a key (with another, valid image).
    store.put_bytes("raw/images/other.png", _world_png(6))
    rows.append({"key": good[1].key, "caption": "a second row with the same key", "image": "images/other.png"})
    # Duplicate content: the same bytes as good[2] under a new key.
    store.put_bytes("raw/images/copy.png", good[2].image)
    rows.append({"key": "copy-of-2", "caption": "the same picture again", "image": "images/copy.png"})
    # Image with no caption row.
    store.put_bytes("raw/images/orphan.png", _world_png(7))
    table = b"".join(
        json.dumps({k: v for k, v in r.items()}, ensure_ascii=False).encode("utf-8", errors="surrogateescape") + b"\n"
        for r in rows
    )
    store.put_bytes("raw/captions.jsonl", table)
    return {"uri": store.uri("raw/captions.jsonl"), "good": good, "bad": bad, "rows": len(rows), "store": store_uri}


def test_folder_source_every_bad_input_is_set_aside_with_its_reason(
    folder_source: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(tmp_path, f"storage.root={folder_source['store']}/out", "data.max_failed_fraction=0.5")
    raw = ingest(folder_source["uri"], config)
    c = raw.counts
    assert c["input"] == folder_source["rows"] + 1  # + the orphan image
    assert c["input"] == c["samples"] + c["duplicates"] + c["quarantined"]
    manifest = read_manifest(raw.manifest_uri, config.storage)
    ingest_reasons = _jsonl_rows(manifest, "quarantine.jsonl", config)
    duplicates = _jsonl_rows(manifest, "duplicates.jsonl", config)
    by_key = {r["key"]: r["reasons"] for r in ingest_reasons}
    assert any("does not exist" in why for why in by_key["no-image-file"])
    assert any("duplicate key" in why for why in by_key[folder_source["good"][1].key])
    assert any("has no caption row" in why for why in by_key["orphan.png"])
    assert [(d["key"], d["kind"]) for d in duplicates] == [("copy-of-2", "exact")]
    assert duplicates[0]["duplicate_of"] == folder_source["good"][2].key

    result = validate(raw.manifest_uri, config)
    v = result.counts
    assert v["input"] == c["samples"] and v["input"] == v["clean"] + v["quarantined"]
    clean = read_manifest(result.manifest_uri, config.storage)
    reasons = {r["key"]: r["reasons"] for r in _jsonl_rows(clean, "quarantine.jsonl", config)}
    for key, _, _, stage, expected in folder_source["bad"]:
        if stage == "validate":
            assert any(expected in why for why in reasons[key]), (key, reasons.get(key))
    assert set(reasons) == {b[0] for b in folder_source["bad"] if b[3] == "validate"}
    # Nothing lost: the clean and quarantine shards together hold exactly the ingested samples.
    clean_keys = [json.loads(s["json"])["key"] for s in iter_dataset(clean, config.storage)]
    quarantined = [json.loads(s["json"]) for s in iter_dataset(clean, config.storage, group="quarantine")]
    ingested = [json.loads(s["json"])["key"] for s in iter_dataset(manifest, config.storage)]
    assert sorted(clean_keys + [q["key"] for q in quarantined]) == sorted(ingested)
    assert all(q["reasons"] for q in quarantined)
    # The report and the GX result sit next to the dataset.
    store = clean.store(config.storage)
    gx = json.loads(store.get_bytes("gx_result.json"))
    assert gx["success"] is False and len(gx["results"]) >= 8
    assert "Validation report" in store.get_bytes("report.html").decode()


def _jsonl_rows(manifest: Any, name: str, config: Config) -> list[dict[str, Any]]:
    if name not in {o.key for o in manifest.objects}:
        return []
    with manifest.open(name, config.storage) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_tables(tmp_path: Path, fmt: str) -> None:
    import pandas as pd

    folder = tmp_path / "raw"
    (folder / "img").mkdir(parents=True)
    rows = []
    for s in iter_world(load_config("tiny").world, 0, 12):
        (folder / "img" / f"{s.key}.png").write_bytes(s.image)
        rows.append({"key": s.key, "caption": s.caption, "image": f"img/{s.key}.png"})
    table = folder / f"captions.{fmt}"
    df = pd.DataFrame(rows)
    df.to_csv(table, index=False) if fmt == "csv" else df.to_parquet(table)
    config = _config(tmp_path)
    raw = ingest(str(table), config)
    assert raw.counts == {"input": 12, "samples": 12, "duplicates": 0, "quarantined": 0}
    assert validate(raw.manifest_uri, config).counts == {"input": 12, "clean": 12, "quarantined": 0}


def test_world_ingest_is_versioned_idempotent_and_keeps_the_oracle_apart(store_uri: str, tmp_path: Path) -> None:
    config = _config(tmp_path, f"storage.root={store_uri}", "data.shard_max_samples=64", "world.duplicate_rate=0.05")
    first = ingest("world", config)
    assert first.counts["input"] == config.world.num_samples
    manifest = read_manifest(first.manifest_uri, config.storage)
    shards = manifest.meta["shards"]
    assert len(shards) >= 3 and all(s["samples"] <= 64 for s in shards)
    for sample in iter_dataset(manifest, config.storage):
        assert set(sample) - {"__key__", "__url__"} == {"png", "txt", "json"}
        meta = json.loads(sample["json"])
        assert not {"appeal", "factors", "photogenic", "clean_caption"} & set(meta)
    oracle = _jsonl_rows(manifest, "oracle.jsonl", config)
    assert len(oracle) == first.counts["samples"] and "appeal" in oracle[0]

    again = ingest("world", config)
    assert again.reused and again.fingerprint == first.fingerprint

    # Forced to rebuild (another output), the same input gives byte-identical shards: the same version.
    rebuilt = ingest("world", config, out=f"{store_uri}/elsewhere")
    assert not rebuilt.reused and rebuilt.fingerprint == first.fingerprint

    changed = ingest("world", _config(tmp_path, f"storage.root={store_uri}", "world.seed=9"))
    assert changed.fingerprint != first.fingerprint


def test_world_duplicates_found_are_exactly_the_planted_ones(tmp_path: Path) -> None:
    config = _config(tmp_path, "world.num_samples=800", "world.duplicate_rate=0.04")
    result = ingest("world", config)
    manifest = read_manifest(result.manifest_uri, config.storage)
    found = {d["key"]: d for d in _jsonl_rows(manifest, "duplicates.jsonl", config)}
    planted = {s.key for s in iter_world(config.world) if s.oracle["duplicate_of"] >= 0}
    # Every planted copy is found, and nothing else is called a duplicate (a planted copy of an
    # earlier planted copy counts too). Exact and near copies both occur.
    assert set(found) == planted
    assert {d["kind"] for d in found.values()} == {"exact", "near"}


def test_validation_version_depends_on_the_data_only(tmp_path: Path) -> None:
    config = _config(tmp_path)
    raw = ingest("world", config)
    first = validate(raw.manifest_uri, config, out=str(tmp_path / "v1"))
    second = validate(raw.manifest_uri, config, out=str(tmp_path / "v2"))
    assert first.fingerprint == second.fingerprint  # the GX result differs (run ids, times); the data does not


def test_ingest_from_existing_shards(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = ingest("world", config)
    manifest = read_manifest(first.manifest_uri, config.storage)
    again = ingest(manifest.uri("shards"), config)
    assert again.counts["input"] == first.counts["samples"]
    assert again.counts["samples"] == first.counts["samples"]
    copied = read_manifest(again.manifest_uri, config.storage)
    before = sorted(s["png"] for s in iter_dataset(manifest, config.storage))
    after = sorted(s["png"] for s in iter_dataset(copied, config.storage))
    assert before == after


def test_validation_fails_above_the_threshold_but_writes_its_report(
    folder_source: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(tmp_path, f"storage.root={folder_source['store']}/strict", "data.max_failed_fraction=0.05")
    raw = ingest(folder_source["uri"], config)
    with pytest.raises(
        ValidationFailedError, match=r"8 of \d+ samples .* above data.max_failed_fraction=0.05; see .*report.html"
    ):
        validate(raw.manifest_uri, config, out=f"{folder_source['store']}/strict/validated")
    store = open_store(f"{folder_source['store']}/strict/validated")
    assert store.exists("report.html") and store.exists("quarantine.jsonl")
    assert not store.exists("manifest.json")


def test_corrupt_or_missing_shard_is_a_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path, "data.shard_max_samples=50")
    raw = ingest("world", config)
    manifest = read_manifest(raw.manifest_uri, config.storage)
    store = manifest.store()
    shard = manifest.meta["shards"][1]["key"]
    path = Path(store.root, shard)
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=shard.replace(".", r"\.")):
        validate(raw.manifest_uri, config)
    path.unlink()
    with pytest.raises(ManifestError, match=f"names {shard}, which is missing"):
        validate(raw.manifest_uri, config, out=str(tmp_path / "v2"))


def test_bounded_map_keeps_a_bounded_window_in_flight() -> None:
    consumed = []

    def items():  # noqa: ANN202
        for i in range(100):
            consumed.append(i)
            yield i

    results = bounded_map(abs, items(), workers=2, window=4)
    first = next(results)
    assert first == 0
    assert len(consumed) <= 5  # not the whole source
    assert [first, *results] == list(range(100))


def test_stage_commands_log_to_mlflow(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    runner = CliRunner()
    ingested = runner.invoke(main, ["ingest", "--preset", "tiny", "-w", str(tmp_path)], catch_exceptions=False)
    assert ingested.exit_code == 0, ingested.output
    raw = json.loads(ingested.stdout)
    validated = runner.invoke(
        main, ["validate", "-m", raw["manifest_uri"], "--preset", "tiny", "-w", str(tmp_path)], catch_exceptions=False
    )
    assert validated.exit_code == 0, validated.output
    clean = json.loads(validated.stdout)
    assert clean["counts"]["input"] == raw["counts"]["samples"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("photogenic-quality-tuning")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["ingest"].data.metrics["ingest/samples"] == raw["counts"]["samples"]
    assert runs["validate"].data.metrics["validate/clean"] == clean["counts"]["clean"]
    assert runs["validate"].data.tags["photogenic.dataset.clean"] == clean["fingerprint"]
    assert [a.path for a in client.list_artifacts(runs["validate"].info.run_id, "reports")] == [
        "reports/validation_report.html"
    ]


def test_bad_source_and_manifest_are_clear_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        main, ["ingest", "--source", str(tmp_path / "nothing.jsonl"), "--preset", "tiny", "-w", str(tmp_path)]
    )
    assert missing.exit_code == 1 and "captions table" in missing.output and "does not exist" in missing.output
    no_shards = runner.invoke(
        main, ["ingest", "--source", str(tmp_path), "--preset", "tiny", "-w", str(tmp_path / "w")]
    )
    assert no_shards.exit_code == 1 and "no .tar shards under" in no_shards.output
    no_manifest = runner.invoke(
        main, ["validate", "-m", str(tmp_path / "m.json"), "--preset", "tiny", "-w", str(tmp_path)]
    )
    assert no_manifest.exit_code == 1 and "no manifest at" in no_manifest.output


def test_perceptual_hash_is_imagehash_phash_per_channel() -> None:
    import imagehash

    from photogenic.data.imaging import _channel_phash

    for size in (32, 64, 50):
        world = load_config("tiny", overrides=[f"world.image_size={max(size, 32)}"]).world
        for sample in iter_world(world, 0, 20):
            image = Image.open(io.BytesIO(sample.image)).convert("RGB").resize((size, size))
            reference = 0
            for channel in image.split():
                reference = (reference << 64) | int(str(imagehash.phash(channel)), 16)
            assert _channel_phash(image) == reference


def test_partitioned_ingest_merges_into_the_same_samples_as_one_ingest(tmp_path: Path) -> None:
    from photogenic.data.ingest import partition_plan
    from photogenic.data.merge import merge_partitions
    from photogenic.data.shards import iter_dataset

    config = _config(tmp_path, "world.num_samples=1100", "world.duplicate_rate=0.04")
    whole = ingest("world", config)
    plan = partition_plan("world", config, 3)
    assert [p["index"] for p in plan] == [0, 1, 2] and all("/parts/" in p["out"] for p in plan)
    parts = [ingest("world", config, partition=(p["index"], p["count"])) for p in plan]
    assert sum(p.counts["duplicates"] for p in parts) < whole.counts["duplicates"]  # some pairs span partitions
    merged = merge_partitions("world", [p.manifest_uri for p in reversed(parts)], config)  # any order
    assert merged.counts == whole.counts
    m_whole, m_merged = (read_manifest(r.manifest_uri, config.storage) for r in (whole, merged))
    keys = [sorted(s["__key__"] for s in iter_dataset(m, config.storage)) for m in (m_whole, m_merged)]
    assert keys[0] == keys[1]
    dup = [{d["key"] for d in _jsonl_rows(m, "duplicates.jsonl", config)} for m in (m_whole, m_merged)]
    assert dup[0] == dup[1]
    oracle = [{d["key"] for d in _jsonl_rows(m, "oracle.jsonl", config)} for m in (m_whole, m_merged)]
    assert oracle[0] == oracle[1] == set(keys[0])
    assert merge_partitions("world", [p.manifest_uri for p in parts], config).reused
    with pytest.raises(ValueError, match="not one complete set of partitions"):
        merge_partitions("world", [parts[0].manifest_uri, parts[2].manifest_uri], config)


def test_a_key_reused_across_partitions_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    from photogenic.data.merge import merge_partitions

    folder = tmp_path / "raw"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, s in enumerate(iter_world(load_config("tiny", overrides=["world.num_samples=300"]).world, 0, 300)):
        (folder / "img" / f"{i}.png").write_bytes(s.image)
        key = "clash" if i in (3, 290) else s.key  # rows 3 and 290 land in different 256-row chunks
        rows.append({"key": key, "caption": s.caption, "image": f"img/{i}.png"})
    (folder / "captions.jsonl").write_bytes(_jsonl(rows))
    config = _config(tmp_path)
    source = str(folder / "captions.jsonl")
    parts = [ingest(source, config, partition=(i, 2)) for i in range(2)]
    merged = merge_partitions(source, [p.manifest_uri for p in parts], config)
    assert merged.counts["input"] == 300
    assert merged.counts["input"] == sum(merged.counts[k] for k in ("samples", "duplicates", "quarantined"))
    manifest = read_manifest(merged.manifest_uri, config.storage)
    reasons = [r for r in _jsonl_rows(manifest, "quarantine.jsonl", config) if r["key"] == "clash"]
    assert len(reasons) == 1 and "duplicate key 'clash'" in reasons[0]["reasons"][0]
    from photogenic.data.shards import iter_dataset

    quarantined = [s for s in iter_dataset(manifest, config.storage, group="quarantine") if s["__key__"] == "clash"]
    assert len(quarantined) == 1  # the sample is kept aside, not dropped


def test_shards_are_byte_identical_to_webdatasets_writer(tmp_path: Path) -> None:
    """Shards are written without webdataset's writer (ready members, appended), but every byte, and where
    one shard ends and the next begins, stays what `webdataset.ShardWriter` makes of the same samples."""
    import webdataset as wds

    from photogenic.data.shards import ShardSink

    samples = [
        {
            "__key__": f"s{i:04d}",
            "png": bytes(range(256)) * (i % 5) + b"x" * (i * 37 % 700),  # sizes off, on and across 512-byte blocks
            "txt": "a caption, ünïcode" * (i % 3),
            "json": {"key": f"s{i}", "n": i},
        }
        for i in range(23)
    ]
    for max_samples, max_bytes in ((5, 1 << 30), (100, 2_000)):
        ours = open_store(str(tmp_path / f"ours-{max_samples}"))
        with ShardSink(ours, "shards", max_samples, max_bytes) as sink:
            for sample in samples:
                sink.write(sample)
        theirs = tmp_path / f"theirs-{max_samples}"
        theirs.mkdir()
        writer = wds.ShardWriter(
            f"{theirs}/shard-%05d.tar", maxcount=max_samples, maxsize=max_bytes, verbose=0,
            mtime=0, user="photogenic", group="photogenic", encoder=False,
        )  # fmt: skip
        for sample in samples:
            writer.write({k: v if k.startswith("_") or isinstance(v, bytes) else
                          (v.encode() if isinstance(v, str) else json.dumps(v, sort_keys=True).encode())
                          for k, v in sample.items()})  # fmt: skip
        writer.close()
        expected = sorted(theirs.iterdir())
        assert len(expected) > 1, "the limits must split the samples into several shards"
        assert [s.ref.key for s in sink.shards] == [f"shards/{p.name}" for p in expected]
        for info, path in zip(sink.shards, expected, strict=True):
            assert (Path(ours.root) / info.ref.key).read_bytes() == path.read_bytes(), path.name
        assert sum(s.samples for s in sink.shards) == len(samples)
