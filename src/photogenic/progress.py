"""Progress of long loops as plain log lines: one at least every `every_s` seconds, the same on a laptop's
console (the local run echoes them), in a pod's log and in a task's log file.

    [progress] pretrain: step 1200/4000 (30%), loss 0.0812, 98.1 samples/s, 3m02s elapsed, ETA 7m06s

A bar redrawn in place (tqdm) shows nothing in a pod log or a log file until it ends; a line does. The
`[progress]` mark finds the lines whatever format the process's logging has (KFP's executor sets its own).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "PROGRESS_LOGGER", "PROGRESS_MARK", "progress_every_s", "format_duration"]

PROGRESS_LOGGER = "photogenic.progress"
PROGRESS_MARK = "[progress] "  # the local run echoes lines that carry it to the console
log = logging.getLogger(PROGRESS_LOGGER)

_DEFAULT_EVERY_S = 20.0


def progress_every_s() -> float:
    """Seconds between progress lines: $PHOTOGENIC_PROGRESS_EVERY_S, else 20 (at least one line every 30 s
    while a loop's iterations take less than 10 s each)."""
    raw = os.environ.get("PHOTOGENIC_PROGRESS_EVERY_S", "")
    try:
        value = float(raw) if raw else _DEFAULT_EVERY_S
    except ValueError:
        raise ValueError(f"PHOTOGENIC_PROGRESS_EVERY_S={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"PHOTOGENIC_PROGRESS_EVERY_S={raw!r} must be positive")
    return value


def format_duration(seconds: float) -> str:
    """1h02m, 3m07s, 12s."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts units of work (steps, images, batches) toward `total` and logs a line whenever `every_s`
    seconds have passed since the last one, and one when the loop ends.

    Args:
        what: the task, as the line starts ("pretrain", "evaluate: drawing images").
        total: units in all (the loop's end, counted from 0); None when unknown (no percentage, no ETA).
        unit: what one unit is called ("step", "image").
        start: units already done (a resumed run); the rate and the ETA count only this run's.
        samples_per_unit: samples in one unit, for a samples/s figure (a step's global batch); 0 for none.
        enabled: False on ranks other than 0, and where the caller asked for quiet.
        clock: seconds (monotonic); tests pass a fake one.
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "step",
        start: int = 0,
        samples_per_unit: int = 0,
        enabled: bool = True,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.start = self.done = start
        self.samples_per_unit = samples_per_unit
        self.enabled = enabled
        self.every_s = progress_every_s() if every_s is None else every_s
        self.clock = clock
        self.began = self.last = clock()
        self.fields: dict[str, Any] = {}

    def update(self, n: int = 1, **fields: Any) -> None:
        """`n` more units done; `fields` (e.g. loss=0.08) go into the next line."""
        self.done += n
        self.fields.update(fields)
        finished = self.total is not None and self.done >= self.total  # close() says that, once
        if self.enabled and not finished and self.clock() - self.last >= self.every_s:
            self._emit()

    def close(self) -> float:
        """Log the final line (when any unit was done); returns the seconds the loop took."""
        elapsed = self.clock() - self.began
        if self.enabled and self.done > self.start:
            self._emit(final=True)
        return elapsed

    def line(self, final: bool = False) -> str:
        now = self.clock()
        elapsed = now - self.began
        ran = self.done - self.start
        if self.total is None:
            parts = [f"{self.unit} {self.done}"]
        else:
            parts = [f"{self.unit} {self.done}/{self.total} ({self.done / max(self.total, 1):.0%})"]
        parts += [f"{k} {_value(v)}" for k, v in self.fields.items()]
        if elapsed > 0 and ran:
            rate = ran / elapsed
            if self.samples_per_unit:
                parts.append(f"{rate * self.samples_per_unit:.1f} samples/s")
            else:
                parts.append(f"{rate:.2f} {self.unit}s/s" if rate < 10 else f"{rate:.0f} {self.unit}s/s")
        parts.append(f"{format_duration(elapsed)} elapsed")
        if final:
            parts.append("done")
        elif ran and self.total is not None and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) * elapsed / ran)}")
        return f"{self.what}: " + ", ".join(parts)

    def _emit(self, final: bool = False) -> None:
        log.info("%s%s", PROGRESS_MARK, self.line(final))
        self.last = self.clock()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
