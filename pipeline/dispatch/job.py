"""The unit submitted for every spec: `Job` runs `fn(spec)` and writes its own JSON report;
`JobStatus` is what is known about a job once the report and the scheduler's view are merged."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from pipeline.cli import setup_logging
from pipeline.dispatch.batch import read_json, write_json_atomic

# A scheduler's view of a batch: index -> (job id, scheduler state, detail)
SchedulerView = dict[int, tuple[str | None, str, str]]


@dataclass(frozen=True)
class JobStatus:
    """What is known about one job of a batch."""

    index: int
    label: str
    state: str  # "queued" | "running" | "done" | "failed" | "cancelled" | "unknown"
    job_id: str | None = None  # SLURM job id ("123_4" in an array), controller pid locally
    detail: str = ""  # scheduler reason (e.g. "BeginTime"), requeue count, or the error line
    error: str | None = None  # traceback or explanation, for failed jobs
    stdout: Path | None = None
    stderr: Path | None = None
    started: float | None = None  # first start (epoch seconds)
    ended: float | None = None
    attempts: int = 0  # starts of the job, requeues included
    result: Any = None  # fn(spec), filled in by `dispatch(wait=True)` / `wait_for` when done

    @property
    def duration_s(self) -> float | None:
        """Seconds from first start to the end, or None while unfinished."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class Job(submitit.helpers.Checkpointable):
    """The picklable unit submitted for every spec: runs `fn(spec)` and reports its progress.

    On timeout or preemption submitit calls `checkpoint()`, which resubmits this same object;
    the next start calls `fn(spec)` again, which resumes from its own saved state.

    SIGTERM (scancel, a preemption's grace period, the local queue stopping the job, `kill`)
    raises KeyboardInterrupt in `fn`, as Ctrl-C would: submitit's wrapper only logs it, and the
    job would run on until SIGKILL. `fn` may handle SIGTERM itself (`pipeline.run.run` finishes
    its training step and saves a checkpoint first).
    """

    def __init__(
        self, fn: Callable[[Any], Any], spec: Any, index: int, label: str, report: str
    ) -> None:
        self.fn = fn
        self.spec = spec
        self.index = index
        self.label = label
        self.report = report  # path of the JSON report

    def __call__(self) -> Any:
        if not logging.getLogger().handlers:  # a process of its own: its stderr is the job's log
            setup_logging()
        path = Path(self.report)
        previous = read_json(path) or {}
        now = time.time()
        info = {
            "index": self.index,
            "label": self.label,
            "attempts": previous.get("attempts", 0) + 1,
            "started": previous.get("started", now),
            "attempt_started": now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": current_job_id(),
        }
        write_json_atomic(path, {**info, "state": "running"})
        try:
            with _sigterm_interrupts():
                result = self.fn(self.spec)
        except Exception:
            write_json_atomic(
                path,
                {**info, "state": "failed", "ended": time.time(), "error": traceback.format_exc()},
            )
            raise
        except BaseException as exc:  # submitit's requeue exit, or a cancel's KeyboardInterrupt
            write_json_atomic(
                path,
                {**info, "state": "interrupted", "ended": time.time(), "error": repr(exc)},
            )
            raise
        write_json_atomic(path, {**info, "state": "done", "ended": time.time()})
        return result


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt for the block (in the main thread, where signals go)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def current_job_id() -> str | None:
    try:
        return submitit.JobEnvironment().job_id
    except Exception:  # not inside a submitit job (debug launcher)
        return None
