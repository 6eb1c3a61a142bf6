"""The local backend: a queue of slots on this machine (one per GPU, or CPU slots of `threads`
each), fed by a detached runner (`pipeline.dispatch._local_queue`) so that a batch outlives the
process that submitted it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dispatch._local_queue import (
    cancel_queue,
    process_runs,
    read_queue,
    runner_alive,
    submit_queue,
)
from pipeline.dispatch.job import Job, SchedulerView
from pipeline.dispatch.launcher import (
    PACKAGE_ROOT,
    THREAD_VARIABLES,
    LauncherConfig,
    job_defaults,
)
from pipeline.processes import adopt

NO_LIMIT_MIN = 30 * 24 * 60  # "no time limit" for local jobs: 30 days


@dataclass(frozen=True)
class Slot:
    """One place to run a local job: a GPU (or none) and a thread count."""

    index: int
    gpu: str | None
    threads: int

    def env(self) -> dict[str, str]:
        """Environment variables a job in this slot runs with (CUDA_VISIBLE_DEVICES aside)."""
        env = {name: str(self.threads) for name in THREAD_VARIABLES}
        env["DISPATCH_SLOT"] = str(self.index)
        env.update(job_defaults())
        return env


def available_cpus() -> int:
    """CPU cores this process may use (affinity mask / cgroup aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> tuple[str, ...]:
    """CUDA devices visible here: the entries of CUDA_VISIBLE_DEVICES if it is set, else the
    UUIDs of the GPUs (or MIG slices) that nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = []
        for item in (x.strip() for x in env.split(",")):
            if not item or item.startswith("-"):  # CUDA stops at the first invalid id
                break
            ids.append(item)
        return tuple(ids)
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    # UUIDs, not indices: nvidia-smi numbers GPUs in PCI order, CUDA (by default) fastest first.
    # With MIG, the slices are the devices.
    uuids = {"GPU": [], "MIG": []}
    for line in (line.strip() for line in listing.splitlines()):
        kind = line.split(" ", 1)[0]
        if kind in uuids and "UUID:" in line:
            uuids[kind].append(line.split("UUID:", 1)[1].strip(" )"))
    return tuple(uuids["MIG"] or uuids["GPU"])


def local_slots(launcher: LauncherConfig) -> list[Slot]:
    """The slots of the local queue: one per GPU (round robin if `slots` asks for more), or
    cores // threads_per_job CPU slots."""
    gpus = launcher.gpus if launcher.gpus is not None else visible_gpus()
    cores = available_cpus()
    if gpus:
        count = launcher.slots or len(gpus)
        threads = launcher.threads_per_job or max(1, cores // count)
        return [Slot(i, gpus[i % len(gpus)], threads) for i in range(count)]
    threads = launcher.threads_per_job or 1
    count = launcher.slots or max(1, cores // threads)
    return [Slot(i, None, threads) for i in range(count)]


def view(batch_dir: Path, manifest: dict[str, Any]) -> SchedulerView:
    """index -> (job id, queued | running | ended | cancelled, detail) from the local runner."""
    queue = read_queue(batch_dir) or {"jobs": {}, "finished": False}
    alive = runner_alive(batch_dir, manifest.get("runner_pid"))
    states = {}
    for entry in manifest["jobs"]:
        job = queue["jobs"].get(str(entry["index"]), {"state": "queued"})
        job_id = job.get("job_id")
        state = job["state"]
        if state == "queued":
            states[entry["index"]] = (
                (None, "queued", "") if alive else (None, "ended", "the local queue runner stopped")
            )
        elif state == "running":
            if process_runs(int(job_id), "submitit.local._local"):
                states[entry["index"]] = (job_id, "running", f"slot {job.get('slot')}")
            else:
                states[entry["index"]] = (job_id, "ended", "its controller process is gone")
        elif state == "exited":
            states[entry["index"]] = (job_id, "ended", f"exit code {job.get('exit_code')}")
        else:
            states[entry["index"]] = (job_id, "cancelled", "cancelled")
    return states


def submit(
    batch_dir: Path, log_dir: Path, jobs: list[Job], launcher: LauncherConfig, *, owned: bool
) -> dict[str, Any]:
    """Start a detached queue runner for `jobs`; the manifest entries that describe it.
    An `owned` queue ends with this process (a blocking driver's; `pipeline.processes`)."""
    slots = local_slots(launcher)
    runner = submit_queue(
        batch_dir,
        log_dir,
        {job.index: job for job in jobs},
        [{"gpu": slot.gpu, "env": slot.env()} for slot in slots],
        timeout_min=launcher.time_min or NO_LIMIT_MIN,
        signal_delay_s=launcher.signal_delay_s,
        max_requeues=launcher.max_requeues,
        extra_pythonpath=[PACKAGE_ROOT],
    )
    if owned:
        adopt(runner.pid, f"local queue {batch_dir.name}")
    return {
        "runner_pid": runner.pid,
        "parallelism": len(slots),
        "slots": [dataclasses.asdict(slot) for slot in slots],
    }


def cancel(batch_dir: Path, manifest: dict[str, Any], wait_s: float = 0.0) -> None:
    """Stop the queue: queued jobs never start, running ones are interrupted. Waits up to
    `wait_s` for the runner to have stopped its jobs (so they could mark their runs)."""
    pid = manifest.get("runner_pid")
    cancel_queue(batch_dir, pid)
    deadline = time.time() + wait_s
    while runner_alive(batch_dir, pid) and time.time() < deadline:
        time.sleep(0.2)
