"""CPU threads for training: as many as this process may use, fixed by default, or adapted to the load.

An intra-op parallel region ends when its slowest thread does. With another process on one of two
cores, each of the trainer's two threads waits on the one that shares its core, every region: a demo
step went from 0.50 s to 1.58 s (0.32x throughput), while one thread on the free core took 0.83 s
(0.60x) and two threads idle-waiting passively 0.93 s (but 0.53-0.60 s on an idle machine; bench/results/
contention.md). `train.adapt_threads=true` keeps the thread count that steps fastest *now*: every so
often it runs a few steps with half (or double) the threads and keeps whichever was faster.

The thread count changes the order of float sums (a convolution's weight gradient differs in its last
bits between 1 and 2 threads), so adapting makes a run's bits follow its machine's load: two demos of
the same code and config, one beside other work, got different models (docs/results.md). That is why
the default is a fixed count, every CPU the process may use: the same config on the same kind of
machine then gives the same bytes, busy or idle, only slower when busy.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import deque
from pathlib import Path

import torch

__all__ = ["ThreadTuner", "available_cpus"]

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (a pod's CPU
    limit), at least 1. torch's default is every CPU of the node, which oversubscribes a limited pod."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


class ThreadTuner:
    """Chooses torch's intra-op thread count between steps.

    Args:
        threads: the count, or 0 for torch's count (which follows $OMP_NUM_THREADS: torchrun sets 1 per
            rank) capped by `available_cpus()`.
        adapt: probe and change the count as the load changes (see the module's doc for the cost);
            probes fall on fixed step numbers (a resumed run's too), and steps 25% slower than when
            the count was chosen call one at once.
        first_probe: the step of the first probe; later gaps double while probes lose (to `max_gap`),
            and start again from `first_probe` steps when one wins.
        slowdown: steps this much slower than when the count was last chosen (1.25: 25%) mean the
            machine got busier (or freer): probe at once.
        probe_steps: steps run at the candidate count (the first is dropped: a resized pool warms up).
        margin: a candidate must be this much faster (0.05: 5%) to be kept.
        enabled: False off the CPU (GPU steps do not use intra-op threads).
    """

    def __init__(
        self,
        threads: int = 0,
        adapt: bool = False,
        first_probe: int = 20,
        probe_steps: int = 4,
        window: int = 8,
        margin: float = 0.05,
        slowdown: float = 1.25,
        max_gap: int = 400,
        enabled: bool = True,
    ) -> None:
        self.max_threads = threads or min(torch.get_num_threads(), available_cpus())
        self.adapt = enabled and adapt and self.max_threads > 1
        self.current = self.max_threads
        self.first_probe, self.gap, self.max_gap = first_probe, first_probe, max_gap
        self.probe_steps, self.margin, self.slowdown = probe_steps, margin, slowdown
        self.reference = 0.0  # median step time at the current count when it was last confirmed
        self.recent: deque[float] = deque(maxlen=window)
        self.next_probe = first_probe
        self.candidate = 0  # the count being probed; 0 when not probing
        self.probe: list[float] = []
        self.going_down = True
        if enabled:
            torch.set_num_threads(self.current)

    def start_at(self, step: int) -> None:
        """A run resumed at `step` probes where the uninterrupted run would have on the same machine:
        the schedule of probes that all lost (an idle machine's), from step 0."""
        probe, gap = self.first_probe, self.first_probe
        while probe < step:
            gap = min(gap * 2, self.max_gap)
            probe += self.probe_steps + gap
        self.next_probe, self.gap = probe, gap

    def step_done(self, step: int, seconds: float) -> None:
        """Record step `step`'s time and set the thread count for the next step."""
        if not self.adapt:
            return
        if self.candidate:
            self.probe.append(seconds)
            if len(self.probe) == self.probe_steps:
                self._decide(step)
            return
        self.recent.append(seconds)
        full = len(self.recent) == self.recent.maxlen
        if full and not self.reference:
            self.reference = statistics.median(self.recent)
        elif full and statistics.median(self.recent) > self.reference * self.slowdown:
            self.next_probe, self.gap = step + 1, self.first_probe  # the machine changed: look again now
        if step + 1 >= self.next_probe and len(self.recent) >= self.recent.maxlen // 2:
            self.candidate = self._neighbour()
            self.probe = []
            torch.set_num_threads(self.candidate)

    def _neighbour(self) -> int:
        """Half the threads from the top, double from the bottom, alternating in between."""
        if self.current == self.max_threads:
            self.going_down = True
        elif self.current == 1:
            self.going_down = False
        else:
            self.going_down = not self.going_down
        return max(1, self.current // 2) if self.going_down else min(self.max_threads, self.current * 2)

    def _decide(self, step: int) -> None:
        now, probed = statistics.median(self.recent), statistics.median(self.probe[1:])
        if probed < now * (1 - self.margin):
            log.info(
                "threads: %d (%.3f s/step) beat %d (%.3f s/step); training on with %d",
                self.candidate,
                probed,
                self.current,
                now,
                self.candidate,
            )
            self.current, self.gap = self.candidate, self.first_probe
            self.recent.clear()
            self.reference = 0.0
        else:
            self.gap = min(self.gap * 2, self.max_gap)
            self.reference = now
        torch.set_num_threads(self.current)
        self.candidate, self.next_probe = 0, step + 1 + self.gap
