"""One owner for a driver's helper processes: they end when the driver ends, however it ends.

A study (or sweep) driver starts helpers in their own sessions, so that Ctrl-C in the terminal
reaches only the driver: the local queue runner (and through it every job) and the loopback
MLflow server. Inside ``owned_processes(folder)`` each helper is adopted; a small watchdog
process (``python -m pipeline.processes <owner file>``) polls the driver's pid and, when the
driver is gone without closing the block (SIGKILL, a crash, the machine's OOM killer), stops the
helpers in reverse order of adoption: the queue runner first (SIGTERM: it interrupts its jobs,
which mark their MLflow runs KILLED through the server), then the server. Each gets
``STOP_GRACE_S`` before SIGKILL of its whole process group.

SIGTERM and SIGHUP (the terminal closing) to the driver are turned into ``KeyboardInterrupt``
inside the block, so they take the same clean path as Ctrl-C.

    with owned_processes(study_folder) as owner:
        owner.adopt(process.pid, "mlflow server")    # or: adopt_current(pid, name) from a helper
        ...

The owner file (``<folder>/owner-<pid>.json``) lists the helpers; it is removed when the block
ends normally, which also ends the watchdog.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from pipeline.lease import pid_alive

log = logging.getLogger(__name__)

POLL_S = 0.2
STOP_GRACE_S = 15.0  # the queue runner gives its jobs 10 s to stop before SIGKILL

_current: Owner | None = None


class Owner:
    """The driver's side: the owner file and the watchdog that acts on it."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        me = psutil.Process()
        self.path = folder / f"owner-{me.pid}.json"
        self.data: dict[str, Any] = {
            "pid": me.pid,
            "create_time": me.create_time(),
            "helpers": [],
        }
        self._save()
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "pipeline.processes", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "watchdog.log", "ab"),  # noqa: SIM115 (the child keeps it)
            start_new_session=True,  # neither Ctrl-C nor the terminal closing reaches it
        )

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    def adopt(self, pid: int, name: str) -> None:
        """Stop process ``pid`` (and its process group) if the driver dies."""
        entry = {"pid": pid, "name": name, "create_time": psutil.Process(pid).create_time()}
        self.data["helpers"].append(entry)
        self._save()

    def release(self, pid: int) -> None:
        """``pid`` was stopped by the driver itself."""
        self.data["helpers"] = [h for h in self.data["helpers"] if h["pid"] != pid]
        self._save()

    def close(self) -> None:
        """End of the block: helpers still adopted (the block was left by an exception before
        the code that stops them ran, e.g. Ctrl-C right after a queue started) are stopped
        here, as the watchdog would; then the watchdog is told to exit."""
        for helper in reversed(self.data["helpers"]):
            _stop(helper)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.watchdog.wait(timeout=5)


def adopt(pid: int, name: str) -> None:
    """Adopt ``pid`` into the current owner, if a driver opened one (a no-op otherwise)."""
    if _current is not None:
        _current.adopt(pid, name)


def release(pid: int) -> None:
    if _current is not None:
        _current.release(pid)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM and SIGHUP raise ``KeyboardInterrupt``, as Ctrl-C does: every
    command's entry point (``pipeline.cli.guarded``), so that a terminated command stops as an
    interrupted one does. A no-op outside the main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def owned_processes(folder: str | Path) -> Iterator[Owner]:
    """Adopt helpers for the duration of the block (see the module docstring)."""
    global _current
    if _current is not None:  # nested: the outer owner covers everything
        yield _current
        return
    owner = Owner(Path(folder))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _interrupt)
    _current = owner
    try:
        yield owner
    finally:
        _current = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        owner.close()


# --- the watchdog ----------------------------------------------------------------------------


def _stop(helper: dict[str, Any]) -> None:
    pid = helper["pid"]
    if not pid_alive(pid, helper.get("create_time")):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_S
    while pid_alive(pid, helper.get("create_time")) and time.time() < deadline:
        time.sleep(POLL_S)
    # the helpers lead their own sessions: the group is the helper and everything it started
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def watch(path: Path) -> None:
    """Wait for the owner in ``path`` to die, then stop its helpers, newest first."""
    while True:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return  # the driver closed its block: nothing to do
        except json.JSONDecodeError:
            time.sleep(POLL_S)
            continue
        if not pid_alive(data["pid"], data["create_time"]):
            break
        time.sleep(POLL_S)
    for helper in reversed(data["helpers"]):
        log.warning(f"owner {data['pid']} is gone: stopping {helper['name']} (pid {helper['pid']})")
        _stop(helper)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(Path(sys.argv[1]))
