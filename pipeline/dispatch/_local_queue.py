"""A detached slot queue that runs submitit jobs on this machine, one per slot at a time.

submitit's LocalExecutor starts every job at once and gives each the same CUDA_VISIBLE_DEVICES.
This module keeps submitit's per-job controller (logs, result pickles, timeout -> USR2 ->
checkpoint -> requeue on exit code 144) and adds the queue: a runner process, detached from the
process that submitted the batch, starts the next job whenever a slot frees, with that slot's
GPU and thread settings in the job's environment. Because the runner outlives the submitter,
`status` and `cancel` work from any later process.

Files in a batch folder (`pipeline.dispatch` creates the folder and reads the state):
    queue_plan.json   slots, timeouts, job indices (written once by the submitter)
    queue/<i>.pkl     the pickled submission of job i, until the runner hands it to submitit
    queue.json        live state, written only by the runner: runner pid, per job: queued /
                      running (controller pid = submitit job id, slot) / exited (exit code) /
                      cancelled; "finished" once the runner is done
    queue.log         the runner's own output
    cancel            created by `cancel_queue`; the runner stops its jobs when it sees it

Run by `submit_queue`; by hand: python -m pipeline.dispatch._local_queue <batch folder>
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import psutil
from submitit.core.utils import DelayedSubmission, JobPaths, environment_variables
from submitit.local.local import start_controller

from pipeline.dispatch.batch import read_json, write_json_atomic

PLAN_FILE = "queue_plan.json"
STATE_FILE = "queue.json"
CANCEL_FILE = "cancel"
POLL_S = 0.2
# A controller asked to stop (SIGTERM) passes it to its task, which finishes its training step,
# saves a checkpoint and ends its run KILLED (pipeline.run); then both are SIGKILLed.
STOP_GRACE_S = 10.0


def process_runs(pid: int, marker: str) -> bool:
    """Whether `pid` is alive and its command line contains `marker` (guards against pid reuse)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # it has finished
            return False
        cmdline = " ".join(process.cmdline())
    except psutil.Error:  # gone, a zombie by now, or not ours to read
        return False
    # Right after Popen returns, the child may still be inside exec, with an empty command line.
    return not cmdline or marker in cmdline


def submit_queue(
    batch_dir: Path,
    log_dir: Path,
    jobs: dict[int, Any],
    slots: list[dict[str, Any]],
    timeout_min: float,
    signal_delay_s: int,
    max_requeues: int,
    extra_pythonpath: list[str],
) -> subprocess.Popen:
    """Pickle `jobs` (index -> submitit-compatible callable) and start a runner for them.

    Each slot is a dict with "gpu" (a CUDA device id or None) and "env" (variables for the job).
    Returns the runner process, which keeps running after the caller exits.
    """
    queue_dir = batch_dir / "queue"
    queue_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    for index, job in jobs.items():
        delayed = DelayedSubmission(job)
        delayed.set_timeout(timeout_min, max_requeues)
        delayed.dump(queue_dir / f"{index}.pkl")
    plan = {
        "jobs": sorted(jobs),
        "slots": slots,
        "log_dir": str(log_dir),
        "timeout_min": timeout_min,
        "signal_delay_s": signal_delay_s,
        "python": sys.executable,
    }
    write_json_atomic(batch_dir / PLAN_FILE, plan)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*extra_pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    with open(batch_dir / "queue.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.dispatch._local_queue", str(batch_dir)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the submitter's terminal does not reach it
        )


def read_queue(batch_dir: Path) -> dict[str, Any] | None:
    """The runner's live state (see the module docstring), or None before it wrote any."""
    return read_json(batch_dir / STATE_FILE)


def runner_alive(batch_dir: Path, pid: int | None) -> bool:
    """Whether the runner of `batch_dir` with process id `pid` still runs."""
    return pid is not None and process_runs(pid, str(batch_dir))


def cancel_queue(batch_dir: Path, pid: int | None) -> None:
    """Ask the runner to stop: queued jobs never start, running ones are interrupted."""
    (batch_dir / CANCEL_FILE).touch()
    if runner_alive(batch_dir, pid):
        os.kill(pid, signal.SIGTERM)


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a controller and its task (killing the controller alone would orphan the task)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    process.kill()
    process.wait()


class _Runner:
    """The queue loop: start jobs into free slots, record exits, stop on request."""

    def __init__(self, batch_dir: Path) -> None:
        self.batch_dir = batch_dir
        plan = read_json(batch_dir / PLAN_FILE)
        self.slots: list[dict[str, Any]] = plan["slots"]
        self.log_dir = Path(plan["log_dir"])
        self.timeout_min = float(plan["timeout_min"])
        self.signal_delay_s = int(plan["signal_delay_s"])
        # The command submitit's LocalExecutor would give its controller.
        python, folder = shlex.quote(plan["python"]), shlex.quote(str(self.log_dir))
        self.command = f"{python} -u -m submitit.core._submit {folder}"
        self.pending: deque[int] = deque(plan["jobs"])
        self.free: list[int] = list(range(len(self.slots)))
        self.running: dict[int, tuple[subprocess.Popen, int]] = {}
        self.jobs: dict[str, dict[str, Any]] = {str(i): {"state": "queued"} for i in plan["jobs"]}
        self.stop_requested = False

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def save(self, finished: bool = False) -> None:
        state = {"runner_pid": os.getpid(), "jobs": self.jobs, "finished": finished}
        write_json_atomic(self.batch_dir / STATE_FILE, state)

    def start(self, index: int, slot_index: int) -> None:
        slot = self.slots[slot_index]
        gpu = slot.get("gpu")
        with environment_variables(**slot["env"]):
            process = start_controller(
                folder=self.log_dir,
                command=self.command,
                tasks_per_node=1,
                cuda_devices="" if gpu is None else str(gpu),
                timeout_min=self.timeout_min,
                signal_delay_s=self.signal_delay_s,
            )
        # The controller's task waits for this file (submitit names it after the controller pid).
        paths = JobPaths(self.log_dir, job_id=str(process.pid))
        paths.move_temporary_file(self.batch_dir / "queue" / f"{index}.pkl", "submitted_pickle")
        self.running[index] = (process, slot_index)
        self.jobs[str(index)] = {
            "state": "running",
            "job_id": str(process.pid),
            "slot": slot_index,
            "gpu": gpu,
            "started": time.time(),
        }

    def reap(self) -> bool:
        changed = False
        for index, (process, slot_index) in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[index]
            self.free.append(slot_index)
            self.jobs[str(index)].update(state="exited", exit_code=code, ended=time.time())
            changed = True
        return changed

    def stop_all(self) -> None:
        # Not SIGINT: on SIGINT submitit's controller gives its task 1 s before SIGKILL, too
        # little to checkpoint; on SIGTERM it forwards the signal and waits for the task to end.
        for process, _ in self.running.values():
            process.send_signal(signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        for process, _ in self.running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _kill_tree(process)
        now = time.time()
        for index in self.running:
            self.jobs[str(index)].update(state="cancelled", ended=now)
        for index in self.pending:
            self.jobs[str(index)] = {"state": "cancelled", "ended": now}
        self.running.clear()
        self.pending.clear()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.save()
        while self.pending or self.running:
            if self.stop_requested or (self.batch_dir / CANCEL_FILE).exists():
                self.stop_all()
                self.save()
                break
            changed = self.reap()
            while self.pending and self.free:
                self.start(self.pending.popleft(), self.free.pop(0))
                changed = True
            if changed:
                self.save()
            time.sleep(POLL_S)
        self.save(finished=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.dispatch._local_queue <batch folder>")
    _Runner(Path(sys.argv[1]).resolve()).run()
