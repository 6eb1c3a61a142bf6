"""Progress of long loops (a batch of jobs, a run's training steps, a sweep's trials), one way.

    progress = Progress("pyramid", total=12, unit="job")
    progress.write("  done      [1/12] psalm seed=0 (1m05s)")  # a line of its own
    progress.update(1, "1/12 done, 2 running, 9 queued", eta_s=600)
    progress.close()

On a terminal (stderr is a tty) it is a tqdm bar, with the status text and the ETA after it.
Elsewhere (job logs, CI, a pipe) it logs plain status lines at INFO on the ``pipeline.progress``
logger: when the text changes (``on_change``), when ``done`` crosses a tenth of ``total``, or
when ``every_s`` has passed since the last line; not on every poll. With ``-q`` (WARNING) there
is neither bar nor lines.

The ETA of a batch (``estimate_remaining_s``) schedules the remaining jobs on the slots that run
them, as the queue does, and charges each job still to start the process start-up seen so far.
A loop that passes no ETA gets one from its rate since the first update.
"""

from __future__ import annotations

import heapq
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

log = logging.getLogger(__name__)


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def estimate_remaining_s(
    mean_s: float,
    running_elapsed_s: Sequence[float],
    queued: int,
    slots: int,
    startup_s: float = 0.0,
) -> float:
    """Seconds until the last job ends: each running job needs what is left of ``mean_s``; each
    queued one ``startup_s + mean_s`` on the slot that frees first (at most ``slots`` at once)."""
    free_at = [max(mean_s - elapsed, 0.0) for elapsed in running_elapsed_s]
    end = max(free_at, default=0.0)
    free_at += [0.0] * max(slots - len(free_at), 0)
    if not free_at:
        free_at = [0.0]
    heapq.heapify(free_at)
    for _ in range(queued):
        finish = heapq.heappop(free_at) + startup_s + mean_s
        end = max(end, finish)
        heapq.heappush(free_at, finish)
    return end


def stream_is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """A counter of ``total`` units with a status text: a tqdm bar on a terminal, else log lines
    (see the module docstring)."""

    def __init__(
        self,
        name: str,
        total: int,
        *,
        unit: str = "it",
        stream: TextIO | None = None,
        on_change: bool = True,
        every_s: float | None = None,
    ) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.on_change, self.every_s = on_change, every_s
        self.enabled = log.isEnabledFor(logging.INFO)
        stream = stream or sys.stderr
        self.bar: Any = None
        if self.enabled and stream_is_terminal(stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=name,
                unit=unit,
                file=stream,
                dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s |{bar}| {elapsed} {postfix}",
            )
        self.t0 = time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, done) of the first update
        self.last_text: str | None = None
        self.last_time = 0.0
        self.last_tenth = -1

    def update(self, done: int, text: str = "", eta_s: float | None = None) -> None:
        """``done`` of ``total`` units; ``text`` says the rest (counts, loss, best value)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        if eta_s is None:
            eta_s = self._rate_eta(done, now)
        eta = f" · ETA {format_duration(eta_s)}" if eta_s is not None else ""
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(text + eta, refresh=True)
            return
        tenth = done * 10 // self.total if self.total else 0
        due = (
            self.last_text is None
            or (self.on_change and text != self.last_text)
            or tenth != self.last_tenth
            or (self.every_s is not None and now - self.last_time >= self.every_s)
        )
        if due:
            log.info("[%s] %s%s", self.name, text, eta)
            self.last_text, self.last_time, self.last_tenth = text, now, tenth

    def write(self, line: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _rate_eta(self, done: int, now: float) -> float | None:
        start, done0 = self.first or (now, done)
        if done <= done0 or now <= start:
            return None
        rate = (done - done0) / (now - start)
        return (self.total - done) / rate
