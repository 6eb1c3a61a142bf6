"""An exclusive lease per cell: at most one process trains a run folder at a time.

    with cell_lease(run_dir(spec), spec.label) as lease:   # waits while another process holds it
        ...                                                  # open the MLflow run, train, log

The lease is an advisory lock (``flock``) on ``<run folder>/lease.lock``. The kernel takes it
atomically and drops it the moment its holder exits, however it exits (SIGKILL included), so a
killed job never leaves a stale lease behind and no heartbeat needs to age. On Linux NFS, ``flock``
is mapped to POSIX byte-range locks that the server arbitrates, so the same holds for jobs on
several hosts sharing the run folder.

Beside the lock, ``lease.json`` names the holder (host, pid, SLURM job id, since when) for
``holder()`` and status messages, and ``lease.log`` gets one line per acquire and release: the
record that shows no two processes ever held a cell together (each acquire also records whether
the previous holder was still alive, which the lock makes impossible).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

LOCK_FILE = "lease.lock"
HOLDER_FILE = "lease.json"
LOG_FILE = "lease.log"
WAIT_POLL_S = 0.5


@dataclass(frozen=True)
class Lease:
    """A held lease: the folder it guards and whether another process held it before."""

    folder: Path
    waited_s: float  # how long this process waited for another holder


def _me() -> dict[str, Any]:
    process = psutil.Process()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "create_time": process.create_time(),
        "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
        "since": time.time(),
    }


def pid_alive(pid: int, create_time: float | None = None) -> bool:
    """Whether process ``pid`` (started at ``create_time``, if given: guards against pid reuse)
    runs on this host; a zombie counts as dead."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 1.0:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _read_holder(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / HOLDER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _still_alive(previous: dict[str, Any] | None, host: str) -> bool:
    """Whether the previous holder (on this host, not released) still runs. The kernel drops a
    dying process's locks just before it becomes a zombie: allow that instant to pass."""
    if not previous or previous.get("host") != host or previous.get("released") is not None:
        return False
    deadline = time.time() + 2.0
    while pid_alive(previous["pid"], previous.get("create_time")):
        if time.time() > deadline:
            return True
        time.sleep(0.05)
    return False


def _append_log(folder: Path, record: dict[str, Any]) -> None:
    # O_APPEND writes of one short line are atomic on a local file system
    with open(folder / LOG_FILE, "a") as log:
        log.write(json.dumps(record, sort_keys=True) + "\n")


def holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds the lease of ``folder`` right now (host, pid, job id, since), or None if nobody
    does (never taken, released, or its holder died)."""
    folder = Path(folder)
    if not (folder / LOCK_FILE).exists():
        return None
    fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(folder) or {"host": "?", "pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(info: dict[str, Any]) -> str:
    """'pid 123 on host-a (job 45)' for messages."""
    job = f" (job {info['job_id']})" if info.get("job_id") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{job}"


@contextlib.contextmanager
def cell_lease(folder: str | Path, label: str = "", *, wait: bool = True) -> Iterator[Lease]:
    """Hold the lease of ``folder`` for the block; waits (printing once who holds it) while
    another process does, or raises ``BlockingIOError`` without ``wait``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.time()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            other = _read_holder(folder) or {}
            log.info(f"[{label}] waiting for the lease held by {describe(other)}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; the kernel wakes us when it is free
        previous = _read_holder(folder)
        me = _me()
        _append_log(
            folder,
            {
                "event": "acquire",
                **me,
                "previous": previous,
                # the lock was free, so a previous holder on this host must be gone (or released)
                "previous_alive": _still_alive(previous, me["host"]),
            },
        )
        (folder / f".{HOLDER_FILE}.{os.getpid()}").write_text(json.dumps(me))
        os.replace(folder / f".{HOLDER_FILE}.{os.getpid()}", folder / HOLDER_FILE)
        try:
            yield Lease(folder, waited_s=time.time() - t0)
        finally:
            released = {**me, "released": time.time()}
            (folder / HOLDER_FILE).write_text(json.dumps(released))
            _append_log(folder, {"event": "release", "pid": me["pid"], "host": me["host"]})
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_log(folder: str | Path) -> list[dict[str, Any]]:
    """The acquire / release records of ``folder``'s lease, oldest first."""
    path = Path(folder) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
