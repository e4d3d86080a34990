"""Validation: a Great Expectations suite over a per-sample table; failures quarantined with reasons, never dropped."""

from __future__ import annotations

import hashlib
import html
import io
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photogenic.config import Config, DataConfig, to_dict
from photogenic.data.imaging import decoder_message
from photogenic.data.shards import ShardSink, iter_dataset, scratch_dir
from photogenic.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    ObjectRef,
    content_fingerprint,
    read_manifest,
    stage_output,
)
from photogenic.storage import StoreError

__all__ = ["validate", "ValidateResult", "ValidationFailedError", "sample_row", "build_suite"]

log = logging.getLogger(__name__)

_VALIDATE_VERSION = 1
_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "bin")


class ValidationFailedError(StoreError):
    """Too large a fraction of the dataset failed validation; the report says which samples and why."""


@dataclass(frozen=True)
class ValidateResult:
    """The clean dataset's manifest, the report, and the counts (input = clean + quarantined)."""

    manifest_uri: str
    fingerprint: str
    report_uri: str
    counts: dict[str, int]
    failed_fraction: float
    reused: bool = False


def sample_row(sample: dict[str, Any], row: int, shard: str) -> dict[str, Any]:
    """The per-sample table row the expectations run on; every check is computed from the bytes."""
    from PIL import Image

    meta: dict[str, Any] = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
    ext = meta.get("image_member") or next((e for e in _IMAGE_EXTS if e in sample), None)
    image = sample.get(ext) if ext else None
    raw_caption = sample.get("txt")
    caption: str | None = None
    caption_utf8 = True
    if raw_caption is not None:
        try:
            caption = raw_caption.decode("utf-8")
        except UnicodeDecodeError:
            caption_utf8 = False
            caption = raw_caption.decode("utf-8", errors="replace")
    out: dict[str, Any] = {
        "row": row,
        "key": meta.get("key", sample["__key__"]),
        "tar_key": sample["__key__"],
        "shard": shard,
        "caption": caption,
        "caption_utf8": caption_utf8,
        "caption_chars": len(caption.strip()) if caption is not None else 0,
        "has_image": image is not None,
        "bytes": len(image) if image is not None else 0,
        "sha256": hashlib.sha256(image).hexdigest() if image is not None else None,
        "sha256_expected": meta.get("sha256"),
        "decodable": False,
        "decode_error": None,
        "format": None,
        "width": 0,
        "height": 0,
    }
    out["sha256_ok"] = out["sha256_expected"] is None or out["sha256"] == out["sha256_expected"]
    if image is None:
        out["decode_error"] = "no image in the sample"
    elif not image:
        out["decode_error"] = "zero-byte image"
    else:
        try:
            with Image.open(io.BytesIO(image)) as im:
                im.load()
                out.update(decodable=True, format=im.format, width=im.width, height=im.height)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the input
            out["decode_error"] = decoder_message(exc)
    short, long_ = sorted((out["width"], out["height"]))
    out["aspect_ratio"] = float(long_ / short) if short else 0.0
    return out


# Each expectation comes with the sentence that explains a failing row to a person.
_Reason = Callable[[dict[str, Any], DataConfig], str]


def build_suite(data: DataConfig) -> list[tuple[Any, _Reason]]:
    """The expectations on the per-sample table, each paired with a reason for a failing row."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    decoded = Column("decodable") == True  # noqa: E712 - builds a GX condition, not a comparison
    return [
        (E.ExpectColumnValuesToBeUnique(column="key"), lambda r, d: f"key {r['key']!r} appears more than once"),
        (E.ExpectColumnValuesToNotBeNull(column="caption"), lambda r, d: "caption is missing"),
        (
            E.ExpectColumnValuesToBeInSet(column="caption_utf8", value_set=[True]),
            lambda r, d: "caption is not valid UTF-8",
        ),
        (
            E.ExpectColumnValuesToBeBetween(
                column="caption_chars", min_value=data.min_caption_chars, max_value=data.max_caption_chars
            ),
            lambda r, d: (
                "caption is empty or whitespace"
                if r["caption_chars"] == 0
                else f"caption has {r['caption_chars']} characters, "
                f"outside [{d.min_caption_chars}, {d.max_caption_chars}]"
            ),
        ),
        (
            E.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
            lambda r, d: f"image cannot be decoded ({r['decode_error']})",
        ),
        (
            E.ExpectColumnValuesToBeInSet(column="sha256_ok", value_set=[True]),
            lambda r, d: "image bytes do not match the sha256 recorded at ingestion",
        ),
        (
            E.ExpectColumnValuesToBeBetween(column="width", min_value=data.min_image_side, row_condition=decoded),
            lambda r, d: f"image is {r['width']}x{r['height']} px, smaller than {d.min_image_side} px",
        ),
        (
            E.ExpectColumnValuesToBeBetween(column="height", min_value=data.min_image_side, row_condition=decoded),
            lambda r, d: f"image is {r['width']}x{r['height']} px, smaller than {d.min_image_side} px",
        ),
        (
            E.ExpectColumnValuesToBeBetween(
                column="aspect_ratio", max_value=data.max_aspect_ratio, row_condition=decoded
            ),
            lambda r, d: f"aspect ratio {r['aspect_ratio']:.2f} exceeds {d.max_aspect_ratio:g}",
        ),
    ]


def _run_suite(rows: list[dict[str, Any]], data: DataConfig) -> tuple[dict[str, Any], dict[int, list[str]]]:
    """Run the suite with Great Expectations; returns the result JSON and reasons per failing row."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    df = pd.DataFrame(rows)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("photogenic")
        .add_dataframe_asset("samples")
        .add_batch_definition_whole_dataframe("all")
    )
    checks = build_suite(data)
    suite = gx.ExpectationSuite(name="photogenic-samples")
    for expectation, _ in checks:
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row"]}
    )
    by_row = {r["row"]: r for r in rows}
    reasons: dict[int, list[str]] = {}
    explain = {_signature(e): why for e, why in checks}
    for item in result.results:
        if item.success:
            continue
        why = explain[_signature(item.expectation_config)]
        for hit in item.result.get("unexpected_index_list") or []:
            row = int(hit["row"])
            message = why(by_row[row], data)
            if message not in reasons.setdefault(row, []):
                reasons[row].append(message)
    payload = json.loads(json.dumps(result.to_json_dict(), default=str))
    for item in payload.get("results", []):  # keep the JSON small: rows are listed in quarantine.jsonl
        for field in (
            "unexpected_index_list",
            "partial_unexpected_index_list",
            "unexpected_list",
            "partial_unexpected_list",
            "unexpected_index_query",
        ):
            item.get("result", {}).pop(field, None)
    return payload, reasons


def _signature(expectation: Any) -> str:
    kwargs = expectation.kwargs if hasattr(expectation, "kwargs") else expectation.configuration.kwargs
    kind = expectation.type if hasattr(expectation, "type") else expectation.expectation_type
    return f"{kind}:{kwargs.get('column')}"


def validate(
    manifest_uri: str,
    config: Config,
    out: str | None = None,
    run: Any = None,
) -> ValidateResult:
    """Validate a dataset and split it into clean shards and quarantine shards, each with reasons.

    Args:
        manifest_uri: the ingested dataset's manifest.
        config: the resolved config (`data` holds the bounds and the failure threshold).
        out: URI of the validated dataset; default `<store root>/datasets/validated-<fingerprint>`.
        run: an optional tracking Run for counts and the report.

    Returns:
        The clean manifest and the counts; input = clean + quarantined.

    Raises:
        ValidationFailedError: more than `data.max_failed_fraction` of the samples failed. The GX
            result, the HTML report and the quarantine list are still written to `out`.
        ChecksumMismatchError, ManifestError: a shard is corrupt or missing.
    """
    started = time.perf_counter()
    source = read_manifest(manifest_uri, config.storage)
    data = config.data
    settings = {
        k: getattr(data, k)
        for k in ("min_caption_chars", "max_caption_chars", "min_image_side", "max_aspect_ratio", "max_failed_fraction")
    }
    output = stage_output(
        "validate",
        {"input": source.fingerprint, "data": settings, "schema": SCHEMA_VERSION, "v": _VALIDATE_VERSION},
        config,
        out,
        "datasets/validated-{request}",
    )
    store, request, result_uri = output.store, output.request, output.manifest_uri
    if output.previous is not None:
        counts = dict(output.previous.counts)
        result = ValidateResult(
            result_uri,
            output.previous.fingerprint,
            output.uri("report.html"),
            counts,
            counts["quarantined"] / max(counts["input"], 1),
            reused=True,
        )
        _log_result(run, result, None)
        return result

    rows = [sample_row(s, i, s.get("__url__", "")) for i, s in enumerate(iter_dataset(source, config.storage))]
    expected = sum(s["samples"] for s in source.meta.get("shards", []))
    if len(rows) != expected:
        raise ManifestError(f"dataset {manifest_uri} lists {expected} samples in its shards, but {len(rows)} were read")
    gx_result, reasons = _run_suite(rows, data) if rows else ({"success": True, "results": []}, {})
    counts = {"input": len(rows), "clean": len(rows) - len(reasons), "quarantined": len(reasons)}
    whole, upstream, upstream_shown = _ingestion_set_asides(source, config, len(rows))
    failed = (len(reasons) + upstream) / max(whole, 1)

    with scratch_dir("validate") as tmp:
        quarantine_list = Path(tmp, "quarantine.jsonl")
        with quarantine_list.open("w", encoding="utf-8") as f:
            for row_no in sorted(reasons):
                row = rows[row_no]
                f.write(
                    json.dumps(
                        {"key": row["key"], "shard": row["shard"], "reasons": reasons[row_no], "stage": "validate"},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        side_refs = [
            ObjectRef.of(store.put_bytes("gx_result.json", json.dumps(gx_result, indent=2, sort_keys=True).encode())),
            ObjectRef.of(store.put_file("quarantine.jsonl", quarantine_list)),
        ]
        passed = failed <= data.max_failed_fraction and counts["clean"] > 0
        why = (
            "no sample is clean"
            if counts["clean"] == 0
            else f"{failed:.2%} of the inputs were set aside, above data.max_failed_fraction "
            f"({data.max_failed_fraction:.2%})"
        )
        datasets = (result_uri if passed else "", manifest_uri, source.fingerprint, "" if passed else why)
        report = _html_report(datasets, rows, reasons, gx_result, counts, data, upstream, upstream_shown, whole)
        side_refs.append(ObjectRef.of(store.put_bytes("report.html", report.encode())))
        report_uri = store.uri("report.html")
        see = f"see {report_uri} and {store.uri('quarantine.jsonl')}"
        if upstream:
            see += f" (and {source.uri(source.meta['sidecars']['quarantine'])} for ingestion's)"
        if not passed:
            result = ValidateResult("", "", report_uri, counts, failed)
            _log_result(run, result, report)
            set_aside = len(reasons) + upstream
            if counts["clean"] == 0:
                raise ValidationFailedError(
                    f"validation of {manifest_uri} failed: no sample is clean ({whole} entered ingestion, "
                    f"{upstream} set aside there, {len(reasons)} of {len(rows)} here); {see}"
                )
            raise ValidationFailedError(
                f"validation of {manifest_uri} failed: {set_aside} of the {whole} inputs that entered ingestion "
                f"({failed:.1%}) were set aside ({upstream} at ingestion, {len(reasons)} of {len(rows)} "
                f"samples here for breaking expectations), above data.max_failed_fraction="
                f"{data.max_failed_fraction:g}; {see}"
            )
        manifest = _split(source, rows, reasons, config, store, side_refs, counts, request, manifest_uri, Path(tmp))
    output.publish(manifest)
    result = ValidateResult(result_uri, manifest.fingerprint, report_uri, counts, failed)
    log.info(
        "validate: %d in -> %d clean, %d quarantined (%.1f%%); dataset %s (%.1fs)",
        counts["input"],
        counts["clean"],
        counts["quarantined"],
        100 * failed,
        manifest.fingerprint[:12],
        time.perf_counter() - started,
    )
    _log_result(run, result, report)
    return result


_SHOWN = 500  # rows a report lists per table; the quarantine lists hold them all


def _ingestion_set_asides(source: Manifest, config: Config, samples: int) -> tuple[int, int, list[dict[str, Any]]]:
    """What entered ingestion and what it quarantined: (inputs, quarantined, the first `_SHOWN` reasons).

    Inputs include the duplicates ingestion removed. A dataset that did not come from ingestion counts
    its `samples` as the input, with nothing set aside before.
    """
    if source.meta.get("stage") != "ingest" or "input" not in source.counts:
        return samples, 0, []
    key = source.meta.get("sidecars", {}).get("quarantine")
    shown = []
    if key:
        with source.open(key, config.storage) as f:
            lines = (line for line in io.TextIOWrapper(f, encoding="utf-8") if line.strip())
            shown = [json.loads(line) for line in itertools.islice(lines, _SHOWN)]
    return int(source.counts["input"]), int(source.counts.get("quarantined", 0)), shown


def _split(
    source: Manifest,
    rows: list[dict[str, Any]],
    reasons: dict[int, list[str]],
    config: Config,
    store: Any,
    side_refs: list[ObjectRef],
    counts: dict[str, int],
    request: str,
    manifest_uri: str,
    tmp: Path,
) -> Manifest:
    data = config.data
    clean_keys: set[str] = set()
    with (
        ShardSink(store, "shards", data.shard_max_samples, data.shard_max_bytes) as clean,
        ShardSink(store, "quarantine", data.shard_max_samples, data.shard_max_bytes, name="validate") as bad,
    ):
        for i, sample in enumerate(iter_dataset(source, config.storage)):
            if rows[i]["tar_key"] != sample["__key__"]:
                raise ManifestError(f"dataset {manifest_uri} changed while it was being validated")
            members = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
            if i in reasons:
                meta = json.loads(members.get("json", b"{}") or b"{}")
                members["json"] = {**meta, "reasons": reasons[i]}
                members["__key__"] = f"{members['__key__']}__row{i}"  # duplicate keys stay distinct in quarantine
                bad.write(members)
            else:
                clean_keys.add(members["__key__"])
                clean.write(members)
    refs = [s.ref for s in clean.shards] + [s.ref for s in bad.shards] + side_refs
    sidecars = {"gx_result": "gx_result.json", "quarantine": "quarantine.jsonl", "report": "report.html"}
    oracle_key = source.meta.get("sidecars", {}).get("oracle")
    if oracle_key:
        oracle_path = tmp / "oracle.jsonl"
        with source.open(oracle_key, config.storage) as src, oracle_path.open("wb") as dst:
            for line in src:
                if json.loads(line)["key"] in clean_keys:
                    dst.write(line)
        refs.append(ObjectRef.of(store.put_file("oracle.jsonl", oracle_path)))
        sidecars["oracle"] = "oracle.jsonl"
    # The version is the data's: clean and quarantined samples and their reasons, not the reports
    # (the GX result carries run ids and times).
    data_refs = [r for r in refs if r.key not in ("gx_result.json", "report.html")]
    return Manifest(
        kind="dataset",
        root=store.root,
        objects=refs,
        fingerprint=content_fingerprint("dataset", tuple(data_refs)),
        counts=counts,
        config=to_dict(config),
        meta={
            "stage": "validate",
            "request": request,
            "input": {"uri": manifest_uri, "fingerprint": source.fingerprint, "counts": dict(source.counts)},
            "shards": [{"key": s.ref.key, "samples": s.samples} for s in clean.shards],
            "quarantine": [{"key": s.ref.key, "samples": s.samples} for s in bad.shards],
            "sidecars": sidecars,
        },
    )


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "tr.bad td{background:#fde8e8}tr.ok td{background:#eef9ee}"
    ".verdict{font-size:1.2em;border:2px solid;padding:.5em}.pass{color:#070}.fail{color:#b00}"
)


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """An HTML table; cells are escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    if not body:
        return "<p><i>none</i></p>"
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _html_report(
    datasets: tuple[str, str, str, str],
    rows: list[dict[str, Any]],
    reasons: dict[int, list[str]],
    gx_result: dict[str, Any],
    counts: dict[str, int],
    data: DataConfig,
    upstream: int,
    upstream_shown: list[dict[str, Any]],
    whole: int,
) -> str:
    checks, classes = [], []
    for item in gx_result.get("results", []):
        cfg = item.get("expectation_config", {})
        kwargs = {k: v for k, v in cfg.get("kwargs", {}).items() if k != "batch_id"}
        ok = bool(item.get("success"))
        checks.append(
            [
                cfg.get("type", ""),
                json.dumps(kwargs, default=str),
                "pass" if ok else "FAIL",
                item.get("result", {}).get("unexpected_count", 0),
            ]
        )
        classes.append("ok" if ok else "bad")
    by_reason: dict[str, int] = {}
    for why in reasons.values():
        for reason in why:
            kind = reason.split(" (")[0]  # group decoder messages by their first words
            by_reason[kind] = by_reason.get(kind, 0) + 1
    shown = sorted(reasons)[:_SHOWN]
    failing = [[rows[i]["key"], "; ".join(reasons[i]), rows[i]["shard"]] for i in shown]
    more = f"<p>... and {len(reasons) - _SHOWN} more in quarantine.jsonl</p>" if len(reasons) > _SHOWN else ""
    share = (counts["quarantined"] + upstream) / max(whole, 1)
    at_ingest = [[r.get("key", ""), "; ".join(r.get("reasons", [])), r.get("source_ref", "")] for r in upstream_shown]
    more_ingest = (
        f"<p>... and {upstream - len(upstream_shown)} more in the ingested dataset's quarantine.jsonl</p>"
        if upstream > len(upstream_shown)
        else ""
    )
    out_uri, in_uri, in_version, failure = datasets
    if not failure:
        verdict = '<p class="verdict pass"><b>PASSED.</b> The clean samples are published as the validated dataset.</p>'
        names = f"<p>Validated dataset: <code>{html.escape(out_uri)}</code><br>"
    else:
        verdict = (
            f'<p class="verdict fail"><b>FAILED.</b> {html.escape(failure)}: no validated dataset is published, '
            "and the pipeline stops here.</p>"
        )
        names = "<p>Validated dataset: none (validation failed)<br>"
    names += f"Validated from: <code>{html.escape(in_uri)}</code> (the ingested dataset, version {in_version[:12]})</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Photogenic validation</title>
<style>{_CSS}</style></head><body>
<h1>Validation report</h1>
{verdict}
{names}
<p><b>{whole}</b> inputs entered ingestion; <b>{upstream}</b> were quarantined there.
<b>{counts["input"]}</b> samples reached validation: <b>{counts["clean"]}</b> clean,
<b>{counts["quarantined"]}</b> quarantined. Set aside in all: {share:.2%} of the inputs (the stage fails
above {data.max_failed_fraction:.2%}, or when no sample is clean).</p>
<h2>Expectations (Great Expectations)</h2>
{_table(["expectation", "arguments", "result", "failing rows"], checks, classes)}
<h2>Failures by reason</h2>
{_table(["reason", "samples"], [[k, v] for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])])}
<h2>Quarantined here</h2>
{_table(["key", "reasons", "shard"], failing)}{more}
<h2>Quarantined at ingestion</h2>
{_table(["key", "reasons", "source"], at_ingest)}{more_ingest}
</body></html>
"""


def _log_result(run: Any, result: ValidateResult, report: str | None) -> None:
    if run is None:
        return
    run.log_metrics(
        {**{f"validate/{k}": v for k, v in result.counts.items()}, "validate/failed_fraction": result.failed_fraction}
    )
    if result.fingerprint:
        run.set_tags(
            {"photogenic.dataset.clean": result.fingerprint, "photogenic.dataset.clean_uri": result.manifest_uri}
        )
    if report is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "validation_report.html")
            path.write_text(report)
            run.log_artifact(path, "reports")
