"""Progress lines of long loops: how often they come, what they say, and where the local run shows them."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from photogenic.progress import PROGRESS_LOGGER, Progress, format_duration, progress_every_s


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


def test_a_line_every_interval_with_rate_eta_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, PROGRESS_LOGGER)
    progress = Progress("pretrain", 100, "step", samples_per_unit=64, every_s=30, clock=clock)
    for step in range(100):
        clock.now += 0.5  # 0.5 s a step: 30 s at step 60
        progress.update(1, loss=1.0 / (step + 1))
    seconds = progress.close()
    lines = _lines(caplog)
    assert seconds == pytest.approx(50.0)
    assert len(lines) == 2  # one at 30 s (step 60), the final one
    assert lines[0] == ("[progress] pretrain: step 60/100 (60%), loss 0.0167, 128.0 samples/s, 30s elapsed, ETA 20s")
    assert lines[1].startswith("[progress] pretrain: step 100/100 (100%), loss 0.0100, 128.0 samples/s, 50s elapsed")
    assert lines[1].endswith(", done") and "ETA" not in lines[1]


def test_the_last_unit_is_reported_once_by_close(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, PROGRESS_LOGGER)
    progress = Progress("evaluate: drawing model A", 64, "image", every_s=10, clock=clock)
    clock.now += 30
    progress.update(64)
    progress.close()
    assert _lines(caplog) == [
        "[progress] evaluate: drawing model A: image 64/64 (100%), 2.13 images/s, 30s elapsed, done"
    ]


def test_a_resumed_loop_counts_its_rate_and_eta_from_its_own_units(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, PROGRESS_LOGGER)
    progress = Progress("quality_tune", 1_000, "step", start=900, every_s=10, clock=clock)
    for _ in range(20):
        clock.now += 1.0
        progress.update()
    assert _lines(caplog)[0] == "[progress] quality_tune: step 910/1000 (91%), 1.00 steps/s, 10s elapsed, ETA 1m30s"


def test_quiet_when_disabled_or_when_nothing_was_done(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, PROGRESS_LOGGER)
    quiet = Progress("rank 1", 10, every_s=0.1, enabled=False, clock=clock)
    for _ in range(10):
        clock.now += 1
        quiet.update()
    quiet.close()
    Progress("finished before", 10, start=10, clock=clock).close()
    assert _lines(caplog) == []


def test_an_unknown_total_shows_the_count_without_eta() -> None:
    clock = FakeClock()
    progress = Progress("ingest", None, "image", every_s=5, clock=clock)
    clock.now += 4
    progress.update(400)
    assert progress.line() == "ingest: image 400, 100 images/s, 4s elapsed"


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOGENIC_PROGRESS_EVERY_S", "7.5")
    assert progress_every_s() == 7.5
    monkeypatch.setenv("PHOTOGENIC_PROGRESS_EVERY_S", "soon")
    with pytest.raises(ValueError, match="PHOTOGENIC_PROGRESS_EVERY_S='soon' is not a number"):
        progress_every_s()
    monkeypatch.setenv("PHOTOGENIC_PROGRESS_EVERY_S", "0")
    with pytest.raises(ValueError, match="must be positive"):
        progress_every_s()
    monkeypatch.delenv("PHOTOGENIC_PROGRESS_EVERY_S")
    assert progress_every_s() <= 30  # a line at least every 30 s while iterations are short


def test_durations_read_as_people_write_them() -> None:
    assert [format_duration(s) for s in (0.4, 12, 187, 3_725)] == ["0s", "12s", "3m07s", "1h02m"]


def test_the_local_run_echoes_progress_lines_in_any_log_format(tmp_path: Path) -> None:
    """KFP's executor formats a task's log its own way; the mark is found in either format, and the line
    goes to the console and the log file."""
    from photogenic.pipelines.local import _Progress

    console = io.StringIO()
    with open(tmp_path / "run.log", "w", encoding="utf-8") as log:
        progress = _Progress(log, console, {})
        progress.write("[KFP Executor 2026-12-01 02:00:00,001 INFO]: [progress] pretrain: step 10/40 (25%)\n")
        progress.write("02:00:01 INFO photogenic.progress: [progress] evaluate: drawing model A: image 32/64\n")
        progress.write("02:00:02 INFO photogenic.train: not a progress line\n")
    shown = console.getvalue().splitlines()
    assert len(shown) == 2
    assert shown[0].endswith("  pretrain: step 10/40 (25%)")
    assert shown[1].endswith("  evaluate: drawing model A: image 32/64")
    assert len((tmp_path / "run.log").read_text().splitlines()) == 3
