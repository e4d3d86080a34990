"""The trainer's CPU thread count: fixed by default; with `adapt`, kept while it is fastest and dropped when
the machine gets busy.

Step times come from a model of the machine measured in bench/results/contention.md (a demo step: 0.50 s
on 2 threads and 0.85 s on 1 when idle; 1.58 s and 0.83 s with another process on one core), as a
function of the thread count the tuner really set in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from photogenic.train import threads as threads_module
from photogenic.train.threads import ThreadTuner, available_cpus

IDLE = {2: 0.50, 1: 0.85}
BUSY = {2: 1.58, 1: 0.83}


@pytest.fixture(autouse=True)
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = torch.get_num_threads()
    monkeypatch.setattr(threads_module, "available_cpus", lambda: 2)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _train(tuner: ThreadTuner, steps: int, machine: Callable[[int], dict[int, float]]) -> list[int]:
    """The thread count of each step, with the step's time read off the machine's state at that step."""
    counts = []
    for step in range(steps):
        n = torch.get_num_threads()
        counts.append(n)
        tuner.step_done(step, machine(step)[n])
    return counts


def test_an_idle_machine_keeps_every_thread_and_probes_less_and_less_often() -> None:
    counts = _train(ThreadTuner(adapt=True), 1_000, lambda step: IDLE)
    one_thread = [i for i, n in enumerate(counts) if n == 1]
    assert counts[-1] == 2 and len(one_thread) <= 40  # probes: 4 steps each
    gaps = [b - a for a, b in zip(one_thread, one_thread[1:], strict=False) if b - a > 1]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1]
    seconds = sum(IDLE[n] for n in counts)
    assert seconds <= 1.03 * 1_000 * IDLE[2]  # probing costs at most 3% here


def test_a_busy_machine_moves_to_one_thread_and_keeps_half_its_idle_throughput() -> None:
    counts = _train(ThreadTuner(adapt=True), 1_000, lambda step: BUSY)
    assert counts[40:].count(1) >= 0.95 * len(counts[40:])
    seconds = sum(BUSY[n] for n in counts)
    assert 1_000 * IDLE[2] / seconds >= 0.5  # throughput under contention over idle throughput
    pinned = sum(BUSY[2] for _ in range(1_000))
    assert 1_000 * IDLE[2] / pinned < 0.35  # what two threads alone would keep


def test_load_that_comes_late_is_noticed_within_a_few_dozen_steps_and_its_end_too() -> None:
    def machine(step: int) -> dict[int, float]:
        return BUSY if 600 <= step < 1_400 else IDLE

    counts = _train(ThreadTuner(adapt=True), 2_400, machine)
    assert counts[590:600] == [2] * 10
    switched = next(i for i in range(600, 2_400) if counts[i] == 1 and counts[i + 5] == 1)
    assert switched - 600 <= 30
    back = next(i for i in range(1_400, 2_400) if all(n == 2 for n in counts[i : i + 50]))
    assert back - 1_400 <= 450  # found by the next upward probe


def test_two_runs_on_an_idle_machine_take_the_same_path() -> None:
    assert _train(ThreadTuner(adapt=True), 800, lambda step: IDLE) == _train(
        ThreadTuner(adapt=True), 800, lambda step: IDLE
    )


def test_a_pinned_count_is_never_changed_and_off_the_cpu_nothing_is_touched() -> None:
    assert set(_train(ThreadTuner(threads=2), 500, lambda step: BUSY)) == {2}
    # the default: every CPU it may use, fixed under any load (the bits must not follow the load)
    assert set(_train(ThreadTuner(), 500, lambda step: BUSY if step > 100 else IDLE)) == {2}
    torch.set_num_threads(1)
    ThreadTuner(enabled=False).step_done(100, 9.9)
    assert torch.get_num_threads() == 1


def test_available_cpus_is_at_least_one_and_at_most_the_machines() -> None:
    import os

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_a_resumed_run_probes_where_the_uninterrupted_run_did() -> None:
    whole = _train(ThreadTuner(adapt=True), 1_000, lambda step: IDLE)
    tuner = ThreadTuner(adapt=True)
    tuner.start_at(500)
    resumed = []
    for step in range(500, 1_000):
        n = torch.get_num_threads()
        resumed.append(n)
        tuner.step_done(step, IDLE[n])
    assert resumed == whole[500:]
