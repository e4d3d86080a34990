"""The HTML reports as a newcomer meets them: opened in headless Chromium, verdict first, every table and
image there, no console error; a screenshot of each is kept (build/screenshots/) for a person to look at."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from photogenic.data.ingest import ingest
from photogenic.data.validate import ValidationFailedError, validate
from photogenic.manifest import read_manifest
from photogenic.prompts import Prompt
from photogenic.report import HELD_OUT_MARK, grid_label
from photogenic.storage import open_store
from tests.browser import open_page
from tests.helpers import tiny_config
from tests.test_hostile_input import _good_rows, _jsonl

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "screenshots"


def _not_blank(path: Path) -> None:
    with Image.open(path) as shot:
        assert shot.width >= 800 and shot.height >= 600
        low, high = shot.convert("L").getextrema()
        assert high - low > 100, f"{path} is blank"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)


def _check_page(page: Any) -> None:
    assert not page.broken_images(), page.broken_images()
    assert not page.console_errors(), page.console_errors()


def test_grid_labels_keep_the_whole_prompt_and_mark_held_out_ones() -> None:
    text = "a small purple triangle in the middle of a striped background, photographed at dusk"
    held = Prompt(text, "triangle", "purple", "striped", True, True)
    lines = grid_label(held)
    assert lines[-1] == HELD_OUT_MARK and " ".join(lines[:-1]) == text
    assert all(len(line) <= 30 for line in lines)
    assert HELD_OUT_MARK not in grid_label(Prompt(text, "triangle", "red", None, False, False))


def test_the_evaluation_report_renders_in_a_browser(
    tmp_path: Path, tiny_pretrained: str, tiny_judges: dict[str, Any]
) -> None:
    from photogenic.evaluate import evaluate

    config = tiny_config(tmp_path, "curate.holdout_concepts=[purple]")
    result = evaluate(tiny_pretrained, tiny_pretrained, tiny_judges["evaluation"].uri, config)
    with open_page(Path(result.report_uri).as_uri()) as page:
        assert page.title == "Photogenic evaluation"
        verdict = page.text("#verdict")
        # The same model on both sides: no appeal win, and tiny judges are not trustworthy.
        assert verdict.startswith("Gate: FAILED.") and "appeal win rate lower bound" in verdict
        assert "The gate's rules" in verdict and page.count("#verdict li") >= 4
        body = page.text("body")
        assert body.index("Gate: FAILED") < body.index("Results (A's wins)")  # the verdict comes first
        assert "Seen and held out:" in body and "(purple)" in body
        assert "Tie margin" in body and "panel.rater_tie_margin" in body
        assert page.count("table") >= 4 and page.count("img") == 1
        _check_page(page)
        _not_blank(page.screenshot(tmp_path / "evaluation_report.png"))


def test_the_validation_report_renders_in_a_browser_passed_and_failed(tmp_path: Path) -> None:
    src = open_store(str(tmp_path / "src"))
    rows = _good_rows(src, 10)
    src.put_bytes("clean.jsonl", _jsonl(rows))
    bad = [{**r, "key": f"blank-{i}", "caption": " "} if i < 3 else r for i, r in enumerate(rows)]
    src.put_bytes("blank.jsonl", _jsonl(bad))

    config = tiny_config(tmp_path / "ws", "data.workers=1")
    raw = ingest(src.uri("clean.jsonl"), config, progress=False)
    passed = validate(raw.manifest_uri, config)
    with open_page(Path(passed.report_uri).as_uri()) as page:
        assert page.title == "Photogenic validation"
        assert page.text(".verdict").startswith("PASSED.")
        body = page.text("body")
        assert f"Validated dataset: {passed.manifest_uri}" in body  # the dataset it published, by name
        assert (
            f"Validated from: {raw.manifest_uri}" in body and read_manifest(raw.manifest_uri).fingerprint[:12] in body
        )
        # Nothing set aside: the empty tables say so.
        assert body.count("none") >= 3 and page.count("table") == 1
        _check_page(page)
        _not_blank(page.screenshot(tmp_path / "validation_report_passed.png"))

    raw = ingest(src.uri("blank.jsonl"), config, progress=False)
    with pytest.raises(ValidationFailedError):
        validate(raw.manifest_uri, tiny_config(tmp_path / "ws", "data.workers=1", "data.max_failed_fraction=0.1"))
    reports = (tmp_path / "ws" / "store" / "datasets").glob("validated-*/report.html")
    (report,) = [p for p in reports if p != Path(passed.report_uri)]
    with open_page(report.as_uri()) as page:
        assert page.text(".verdict").startswith("FAILED. 30.00% of the inputs were set aside, above data.max_failed")
        body = page.text("body")
        assert "Validated dataset: none (validation failed)" in body
        assert "blank-0" in page.text("table")  # the quarantined rows, with their reasons
        _check_page(page)
        _not_blank(page.screenshot(tmp_path / "validation_report_failed.png"))
