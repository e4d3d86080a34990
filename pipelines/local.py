"""The main job on one machine: the same pipeline, run by `kfp.local` with every task a local subprocess,
or a container of our image (`photogenic.pipelines.containers`).

`photogenic run` calls `run_locally`. Task output goes to a log file in the workspace; the console gets
one progress line per task, and a failing task's own error.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from photogenic.pipelines.containers import (
    ContainerError,
    Containers,
    check_image,
    engine_api,
    prepare_workspace,
    task_handler,
    use_image,
)
from photogenic.pipelines.containers import runner as container_runner
from photogenic.progress import PROGRESS_MARK

__all__ = ["run_locally", "LocalRunError"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_ENDED = re.compile(r"Task '([^']+)' finished with status (\w+)")
# "... [progress] pretrain: step 1200/4000 ..." (photogenic.progress), in any log format: echoed to the console
_PROGRESS = re.compile(re.escape(PROGRESS_MARK) + r"(.+)$")
_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit|Interrupt|Failure)\b.*?: .+)$")


class LocalRunError(RuntimeError):
    """A stage of the local pipeline run failed; the message is the stage's own error."""

    def __init__(self, task: str, error: str, log_path: Path) -> None:
        super().__init__(f"stage {task!r} failed: {error}\n  full log: {log_path}")
        self.task, self.error, self.log_path = task, error, log_path


@dataclass
class _Progress(io.TextIOBase):
    """Everything the run prints goes to the log file; task starts and ends become console lines."""

    log: TextIO
    console: TextIO
    names: dict[str, str] = field(default_factory=dict)  # task -> display name
    started: dict[str, float] = field(default_factory=dict)
    tails: dict[str, deque[str]] = field(default_factory=dict)
    current: str = ""
    failed: list[tuple[str, str]] = field(default_factory=list)
    done: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # display name -> seconds (parallel tasks summed)
    # kfp.local runs a ParallelFor's tasks in threads that all print here, and `print` writes a line's
    # text and its newline in separate calls: lines are assembled per thread, under a lock (without
    # them, concurrent writes lost task-end lines and garbled the log file).
    _partial: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            thread = threading.get_ident()
            *lines, rest = (self._partial.pop(thread, "") + text).split("\n")
            if rest:
                self._partial[thread] = rest
            for line in lines:
                self.log.write(line + "\n")
                self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.log.flush()

    def drain(self) -> None:
        """Write what threads left without a final newline to the log."""
        with self._lock:
            for rest in self._partial.values():
                self.log.write(rest + "\n")
            self._partial.clear()
            self.log.flush()

    def _line(self, line: str) -> None:
        if m := _STARTED.search(line):
            self.current = m.group(1)
            self.started[self.current] = time.perf_counter()
            self.tails[self.current] = deque(maxlen=200)
            return
        if m := _ENDED.search(line):
            task, status = m.group(1), m.group(2)
            seconds = time.perf_counter() - self.started.get(task, time.perf_counter())
            self.done += 1
            mark = "ok" if status == "SUCCESS" else status
            name = self.names.get(task, task)
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.console.write(f"  [{self.done:2d}] {name:<28s} {mark:<8s} {seconds:7.1f} s\n")
            self.console.flush()
            if status != "SUCCESS":
                self.failed.append((name, self._error_of(task)))
            return
        if m := _PROGRESS.search(line):  # a long task's progress line (photogenic.progress)
            self.console.write(f"       {time.strftime('%H:%M:%S')}  {m.group(1)}\n")
            self.console.flush()
        if self.current:
            self.tails[self.current].append(line)

    def _error_of(self, task: str) -> str:
        """The last line of the task's last traceback (the exception and its message)."""
        tail = list(self.tails.get(task, ()))
        starts = [i for i, line in enumerate(tail) if line.strip() == "Traceback (most recent call last):"]
        if starts:
            indent = len(tail[starts[-1]]) - len(tail[starts[-1]].lstrip())
            block = [line for line in tail[starts[-1] + 1 :] if line.strip()]
            outer = [line for line in block if len(line) - len(line.lstrip()) == indent]
            if outer:
                return outer[0].strip()
        for line in reversed(tail):
            if m := _EXCEPTION.match(line):
                return m.group(1).strip()
        return "the task failed without an error message (see the log)"


def run_locally(
    preset: str,
    overrides: Sequence[str],
    workspace: str | Path,
    source: str = "world",
    ingest_partitions: int = 2,
    summary_path: str | Path | None = None,
    console: TextIO | None = None,
    retries: int = 0,
    approved: str = "",
    containers: Containers | None = None,
) -> dict[str, Any]:
    """Run the pipeline through `kfp.local`: every task a process in this environment
    (`SubprocessRunner(use_venv=False)`), or with `containers` a container of our image (`DockerRunner`).

    Args:
        preset: the config preset.
        overrides: `key=value` config overrides (the workspace is added as an absolute path).
        workspace: the local workspace (store, MLflow database, KFP outputs, logs).
        source: what to ingest.
        ingest_partitions: parallel ingestion tasks.
        summary_path: where the summary JSON goes; default `<workspace>/summary.json`.
        console: where progress lines go (default stderr).
        retries: attempts after a failure for tasks that touch S3 or MLflow (the cluster pipeline has
            3); 0 here, so that a failing stage stops the run at once with its error.
        approved: with `curate.review=import`, the reviewers' JSON of approved keys.
        containers: run each task in a container (`photogenic.pipelines.containers`).

    Returns:
        The summary (as `photogenic.tasks.summarize` writes it), plus `summary_path` and `log_path`.

    Raises:
        LocalRunError: with the failing stage's name and its own error message.
        ContainerError: with `containers`, when no engine answers, the image is missing, or the workspace
            is not writable for the tasks' user.
    """
    from kfp import local

    from photogenic.pipelines.compiler import pipeline_version
    from photogenic.pipelines.quality_tuning import build

    workspace = Path(workspace).expanduser().resolve()
    if containers is not None:
        prepare_workspace(workspace, containers.user)
    logs = workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    summary = Path(summary_path).resolve() if summary_path else workspace / "summary.json"
    if containers is not None and not summary.is_relative_to(workspace):
        raise ContainerError(f"--summary {summary}: in containers the summary must lie in the workspace {workspace}")
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.unlink(missing_ok=True)  # never report an older run's summary
    log_path = logs / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.log"
    items = [o for o in overrides if not o.startswith("workspace=")] + [f"workspace={workspace}"]
    console = console or sys.stderr
    where = f"in containers of {containers.image}" if containers else "kfp.local"
    console.write(f"Running the pipeline locally ({where}); task output: {log_path}\n")
    pipeline = build(pipeline_version(), retries=retries)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_run_id_env(f"local-{uuid.uuid4().hex}"))  # before the runner: containers take it
        runner = _runner(stack, pipeline, workspace, containers)
        log_file = stack.enter_context(open(log_path, "w", encoding="utf-8"))
        stack.enter_context(_no_process_group_env())
        stack.enter_context(_stop_tasks_on_termination(console))
        progress = _Progress(log_file, console, _display_names(pipeline))
        local.init(runner=runner, pipeline_root=str(workspace / "kfp"))
        try:
            with contextlib.redirect_stdout(progress), _quiet_runner_warning(), _thread_safe_kfp_logging():
                pipeline(
                    preset=preset,
                    overrides=items,
                    source=source,
                    ingest_partitions=ingest_partitions,
                    pretrain_backend="in-task",
                    gpus_per_node=0,
                    task_gpus=0,
                    summary_uri=str(summary),
                    approved=approved,
                )
        except Exception as exc:  # kfp.local raises RuntimeError for a failed task, others for its own faults
            if progress.failed:
                task, error = progress.failed[0]
            else:
                task, error = progress.current or "pipeline", f"{type(exc).__name__}: {_ANSI.sub('', str(exc))}"
            raise LocalRunError(task, error, log_path) from exc
        finally:
            progress.drain()
    if not summary.exists():
        raise LocalRunError("summarize", f"the run finished but wrote no summary at {summary}", log_path)
    result = json.loads(summary.read_text())
    result["summary_path"], result["log_path"] = str(summary), str(log_path)
    result["task_seconds"] = {name: round(s, 1) for name, s in progress.seconds.items()}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    # Replaced, not rewritten: in containers the summarize task (another user) owns the file.
    fresh = summary.with_name(f".{summary.name}.{uuid.uuid4().hex[:6]}")
    fresh.write_text(json.dumps(result, indent=2))
    fresh.replace(summary)
    return result


def _runner(stack: contextlib.ExitStack, pipeline: Any, workspace: Path, containers: Containers | None) -> Any:
    """kfp.local's runner for the run; with containers, the engine's API and our task handler too, for as
    long as `stack` lives."""
    from kfp import local

    if containers is None:
        return local.SubprocessRunner(use_venv=False)
    stack.enter_context(engine_api())
    check_image(containers.image)
    use_image(pipeline, containers.image)
    stack.enter_context(task_handler(workspace))
    return container_runner(containers)


@contextlib.contextmanager
def _stop_tasks_on_termination(console: TextIO) -> Any:
    """SIGTERM or SIGHUP to this process (`kill`, a closed terminal, a job runner's timeout) stops the
    task processes too, as Ctrl-C does for a terminal's whole process group; left alone, a training task
    would go on using the CPUs for the rest of its stage. Then the run exits with 128 + the signal."""
    import os
    import signal

    import psutil

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        tasks = psutil.Process().children(recursive=True)
        for task in tasks:
            with contextlib.suppress(psutil.NoSuchProcess):
                task.terminate()
        _, alive = psutil.wait_procs(tasks, timeout=10)
        for task in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                task.kill()
        name = signal.Signals(signum).name
        console.write(f"{name} received: stopped the run and its {len(tasks)} task processes (pid {os.getpid()})\n")
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _no_process_group_env() -> Any:
    """Tasks inherit this process's environment; a rank or master port set here (by an earlier
    in-process training run, or the user's shell) would make every training task join that group."""
    import os

    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _run_id_env(run_id: str) -> Any:
    """The run's id for every task, as a cluster gives it from the pod's `pipeline/runid` label: tasks
    find the MLflow parent run by it."""
    import os

    from photogenic.tracking import RUN_ID_ENV

    saved = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = run_id
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = saved


def _display_names(pipeline: Any) -> dict[str, str]:
    """Task name -> display name (`train-2` -> `pretrain`), from the pipeline spec."""
    from google.protobuf import json_format

    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    names = {}
    for component in [spec["root"], *spec.get("components", {}).values()]:
        for key, task in component.get("dag", {}).get("tasks", {}).items():
            names[key] = task.get("taskInfo", {}).get("name", key)
    return names


class _Shared:
    """One context manager shared by threads: the first to enter enters `factory()`, the last to leave
    leaves it."""

    def __init__(self, factory: Any) -> None:
        self.factory, self.lock, self.depth = factory, threading.Lock(), 0
        self.stack: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def __call__(self) -> Any:
        with self.lock:
            if self.depth == 0:
                self.stack = contextlib.ExitStack()
                self.stack.enter_context(self.factory())
            self.depth += 1
        try:
            yield
        finally:
            with self.lock:
                self.depth -= 1
                if self.depth == 0 and self.stack is not None:
                    self.stack.close()
                    self.stack = None


@contextlib.contextmanager
def _thread_safe_kfp_logging() -> Any:
    """kfp.local (2.17) runs a ParallelFor's tasks in threads, and each task swaps the root logger's handlers
    and `builtins.print` in and back out (`logging_utils.local_logger_context`, `indented_print`). Two at
    once undo each other: when the task that started first ends first, the other logs its end with no
    handler (the line "Task ... finished with status ..." is lost, and with it the task's console line and
    its error), and `print` stays indented after both. For the run, the tasks share one of each."""
    from kfp.local import logging_utils

    saved = logging_utils.local_logger_context, logging_utils.indented_print
    logging_utils.local_logger_context = _Shared(saved[0])
    logging_utils.indented_print = _Shared(saved[1])
    try:
        yield
    finally:
        logging_utils.local_logger_context, logging_utils.indented_print = saved


@contextlib.contextmanager
def _quiet_runner_warning() -> Any:
    """kfp.local warns for every task whose image name lacks 'python' (ours are named for what they hold),
    and for each cluster setting (resources, GPUs) it cannot apply on this machine."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner", category=UserWarning)
        yield
