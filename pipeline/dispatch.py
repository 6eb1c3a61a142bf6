"""Run one callable over many specs: in process (debug), on a local slot queue, or on SLURM.

    from pipeline.dispatch import LauncherConfig, dispatch, status, wait_for

    statuses = dispatch(specs, run, LauncherConfig(kind="local"), folder="outputs/pyramid")
    failed = [s for s in statuses if s.state != "done"]      # s.result holds run(spec)

`fn(spec)` is the unit of work. It must be picklable (a module-level function) and idempotent:
after a timeout or preemption the same call runs again from the start, so resuming from a saved
training state is fn's job (it finds its own checkpoint from the spec). Every spec is wrapped in
a `Job` (a submitit `Checkpointable`) that records its progress in a small JSON report, so the
state of a batch can be read from any process: `status(folder)`, `wait_for(folder)`,
`cancel(folder)` and `format_status(...)` back a `status` / `wait` command for cluster users.

Launchers (`LauncherConfig.kind`):
- debug: in this process, one spec after another (tests, pdb).
- local: a queue of N slots on this machine (N = visible GPUs, else CPU cores // threads per
  job); never more jobs running than slots; each job gets its slot's CUDA_VISIBLE_DEVICES (one
  GPU), OMP/MKL thread counts, DISPATCH_THREADS (for code that calls torch.set_num_threads)
  and DISPATCH_SLOT. A detached runner (`pipeline._local_queue`) feeds
  submitit's local controller, so the batch survives the submitting process; a job that reaches
  `time_min` gets USR2, checkpoints and restarts in its slot (at most 5 restarts).
- slurm: one submitit job array (partition, account, qos, time, GPUs, CPUs, memory,
  `array_parallelism`, extra sbatch arguments); USR2 (preemption, or `signal_delay_s` before the
  time limit) -> checkpoint -> `scontrol requeue` -> the job restarts when SLURM lets it.

Each call of `dispatch` makes a batch folder `<folder>/dispatch/<batch id>/` holding
`manifest.json` (launcher, job ids, log folder), `status/<i>.json` (the job reports) and, unless
`log_folder` says otherwise, `logs/` (submitit's pickles, stdout and stderr per job); on a
cluster both must be on a file system the compute nodes share. Functions that take a folder
accept the batch folder or the folder given to `dispatch` (its latest batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import cloudpickle
import submitit
from submitit.core.utils import JobPaths, pickle_load

from pipeline._local_queue import (
    cancel_queue,
    process_runs,
    read_json,
    read_queue,
    runner_alive,
    submit_queue,
    write_json_atomic,
)
from pipeline.processes import adopt, release
from pipeline.schema import LauncherConfig  # the launcher group's schema

FINAL_STATES = ("done", "failed", "cancelled")
MANIFEST = "manifest.json"
# Directory that holds the `pipeline` package: jobs get it on PYTHONPATH so they can unpickle Job.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
# Thread counts a job gets; torch follows OMP_NUM_THREADS unless the job calls set_num_threads,
# so a job that does should read DISPATCH_THREADS.
_THREAD_VARIABLES = (
    "DISPATCH_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
_LOCAL_NO_LIMIT_MIN = 30 * 24 * 60  # "no time limit" for local jobs: 30 days
_SLURM_DEFAULT_TIME_MIN = 60
# A cancelled local queue interrupts its jobs and gives them STOP_GRACE_S (10 s) before SIGKILL.
CANCEL_WAIT_S = 15.0


@dataclass(frozen=True)
class Slot:
    """One place to run a local job: a GPU (or none) and a thread count."""

    index: int
    gpu: str | None
    threads: int

    def env(self) -> dict[str, str]:
        """Environment variables a job in this slot runs with (CUDA_VISIBLE_DEVICES aside)."""
        env = {name: str(self.threads) for name in _THREAD_VARIABLES}
        env["DISPATCH_SLOT"] = str(self.index)
        return env


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
            "job_id": _current_job_id(),
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


def _current_job_id() -> str | None:
    try:
        return submitit.JobEnvironment().job_id
    except Exception:  # not inside a submitit job (debug launcher)
        return None


# --- slots -----------------------------------------------------------------------------------


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


# --- dispatch --------------------------------------------------------------------------------


def dispatch(
    specs: Sequence[Any],
    fn: Callable[[Any], Any],
    launcher: LauncherConfig,
    folder: str | Path,
    *,
    labels: Sequence[str] | None = None,
    progress: bool = True,
    wait: bool = True,
    poll_s: float | None = None,
    batch_id: str | None = None,
) -> list[JobStatus]:
    """Run `fn(spec)` for every spec with `launcher`; batch files go under `folder`/dispatch.

    With `wait`, blocks until every job is done, failed or cancelled (printing progress to stderr
    if `progress`) and returns their statuses with `result` set for the done ones; a failing job
    never stops the others. Without `wait`, returns right after submission (states "queued");
    follow up with `status(folder)` / `wait_for(folder)`. Labels name the jobs in progress lines
    (default: the spec's `label` or `name` attribute, or its str). `batch_id` names the batch
    folder (default: the time and a random suffix), for callers that record it before dispatch.
    """
    specs = list(specs)
    labels = [_default_label(spec) for spec in specs] if labels is None else list(labels)
    if len(labels) != len(specs):
        raise ValueError(f"got {len(labels)} labels for {len(specs)} specs")
    if launcher.kind == "slurm":
        _check_slurm_available()
    if not specs:
        return []
    try:
        cloudpickle.dumps(fn)
    except Exception as exc:
        raise TypeError(
            f"fn {fn!r} cannot be pickled, so it cannot run in another process ({exc}); "
            "use a module-level function"
        ) from exc

    batch_id = batch_id or new_batch_id()
    batch_dir = (Path(folder) / "dispatch" / batch_id).resolve()
    if launcher.log_folder:
        log_dir = Path(launcher.log_folder).resolve() / batch_id
    else:
        log_dir = batch_dir / "logs"
    (batch_dir / "status").mkdir(parents=True)
    jobs = [
        Job(fn, spec, i, label, str(batch_dir / "status" / f"{i}.json"))
        for i, (spec, label) in enumerate(zip(specs, labels, strict=True))
    ]
    manifest: dict[str, Any] = {
        "batch_id": batch_id,
        "created": time.time(),
        "kind": launcher.kind,
        "launcher": dataclasses.asdict(launcher),
        "log_dir": str(log_dir),
        "jobs": [{"index": i, "label": label, "job_id": None} for i, label in enumerate(labels)],
    }

    if launcher.kind == "debug":
        manifest["parallelism"] = 1
        write_json_atomic(batch_dir / MANIFEST, manifest)
        return _run_in_process(batch_dir, jobs, log_dir, progress)
    if launcher.kind == "local":
        slots = local_slots(launcher)
        runner = submit_queue(
            batch_dir,
            log_dir,
            {job.index: job for job in jobs},
            [{"gpu": slot.gpu, "env": slot.env()} for slot in slots],
            timeout_min=launcher.time_min or _LOCAL_NO_LIMIT_MIN,
            signal_delay_s=launcher.signal_delay_s,
            max_requeues=launcher.max_requeues,
            extra_pythonpath=[_PACKAGE_ROOT],
        )
        manifest["runner_pid"] = runner.pid
        if wait:  # a blocking driver owns its queue: if the driver is killed, so is the queue
            adopt(runner.pid, f"local queue {batch_id}")
        manifest["parallelism"] = len(slots)
        manifest["slots"] = [dataclasses.asdict(slot) for slot in slots]
    else:
        submitted = _slurm_executor(launcher, log_dir).submit_array(jobs)
        for entry, job in zip(manifest["jobs"], submitted, strict=True):
            entry["job_id"] = job.job_id
        manifest["parallelism"] = min(len(jobs), launcher.array_parallelism or len(jobs))
    write_json_atomic(batch_dir / MANIFEST, manifest)
    if not wait:
        return status(batch_dir)
    return wait_for(batch_dir, progress=progress, poll_s=poll_s)


def new_batch_id() -> str:
    """A batch folder name: creation time (sorts by age) and a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _default_label(spec: Any) -> str:
    label = getattr(spec, "label", None) or getattr(spec, "name", None) or str(spec)
    return label if len(label) <= 80 else label[:77] + "..."


def _run_in_process(
    batch_dir: Path, jobs: list[Job], log_dir: Path, progress: bool
) -> list[JobStatus]:
    log_dir.mkdir(parents=True, exist_ok=True)
    bar = _Progress(sys.stderr, batch_dir.name, parallelism=1) if progress else None
    for job in jobs:
        if bar:
            bar.update(status(batch_dir))
        try:
            outcome = ("success", job())
        except Exception:
            outcome = ("error", traceback.format_exc())
        with open(log_dir / f"debug_{job.index}_result.pkl", "wb") as out:
            cloudpickle.dump(outcome, out)
    statuses = [_with_result(s, batch_dir) for s in status(batch_dir)]
    if bar:
        bar.finish(statuses)
    return statuses


def _check_slurm_available() -> None:
    missing = [tool for tool in ("sbatch", "srun", "squeue", "scancel") if not shutil.which(tool)]
    if missing:
        raise RuntimeError(
            f"launcher=slurm needs SLURM's commands on PATH, missing: {', '.join(missing)}. "
            "Run this on a cluster login node, start a local one with scripts/slurm-up.sh, "
            "or use launcher=local."
        )


def _slurm_executor(launcher: LauncherConfig, log_dir: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(
        folder=log_dir, cluster="slurm", slurm_max_num_timeout=launcher.max_requeues
    )
    time_min = math.ceil(launcher.time_min or _SLURM_DEFAULT_TIME_MIN)
    setup = [
        f"export PYTHONPATH={shlex.quote(_PACKAGE_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
        *(f"export {name}=${{SLURM_CPUS_PER_TASK:-1}}" for name in _THREAD_VARIABLES),
        *launcher.setup,
    ]
    executor.update_parameters(
        name=launcher.job_name,
        timeout_min=time_min,
        cpus_per_task=launcher.cpus_per_task,
        mem_gb=launcher.mem_gb,
        gpus_per_node=launcher.gpus_per_job or None,
        slurm_partition=launcher.partition,
        slurm_account=launcher.account,
        slurm_qos=launcher.qos,
        slurm_array_parallelism=launcher.array_parallelism or 256,
        slurm_signal_delay_s=launcher.signal_delay_s,
        slurm_setup=setup,
        slurm_additional_parameters=dict(launcher.extra_sbatch) or None,
    )
    return executor


# --- status ----------------------------------------------------------------------------------


def batch_folders(folder: str | Path) -> list[Path]:
    """Every batch dispatched under `folder`, oldest first (`folder` itself if it is one)."""
    folder = Path(folder).resolve()
    if (folder / MANIFEST).exists():
        return [folder]
    for parent in (folder / "dispatch", folder):
        if not parent.is_dir():
            continue
        batches = sorted(p for p in parent.iterdir() if (p / MANIFEST).exists())
        if batches:
            return batches
    return []


def batch_folder(folder: str | Path) -> Path:
    """The batch folder for `folder`: itself if it holds a manifest, else its latest batch."""
    batches = batch_folders(folder)
    if not batches:
        folder = Path(folder).resolve()
        raise FileNotFoundError(
            f"no dispatched batch in {folder} (expected {folder}/dispatch/<batch>/{MANIFEST})"
        )
    return batches[-1]


def status(folder: str | Path) -> list[JobStatus]:
    """Current state of every job of a batch (non-blocking; queries squeue for SLURM)."""
    batch_dir = batch_folder(folder)
    manifest = read_json(batch_dir / MANIFEST)
    kind = manifest["kind"]
    log_dir = Path(manifest["log_dir"])
    reports = {
        entry["index"]: read_json(batch_dir / "status" / f"{entry['index']}.json")
        for entry in manifest["jobs"]
    }
    if kind == "local":
        scheduler = _local_view(batch_dir, manifest)
    elif kind == "slurm":
        scheduler = _slurm_view([e["job_id"] for e in manifest["jobs"]])
    else:  # debug: the jobs ran (or run) in the submitting process
        scheduler = {
            i: (None, "running" if (r or {}).get("state") == "running" else "queued", "")
            for i, r in reports.items()
        }
    statuses = []
    for entry in manifest["jobs"]:
        index = entry["index"]
        job_id, sched_state, sched_detail = scheduler.get(index, (entry["job_id"], "queued", ""))
        job_id = job_id or entry["job_id"]
        statuses.append(
            _merge(entry, reports[index], job_id, sched_state, sched_detail, kind, log_dir)
        )
    return statuses


def _merge(
    entry: dict[str, Any],
    report: dict[str, Any] | None,
    job_id: str | None,
    sched_state: str,
    sched_detail: str,
    kind: str,
    log_dir: Path,
) -> JobStatus:
    """Combine the job's own report with the scheduler's view into one status."""
    report = report or {}
    logs: dict[str, Any] = {}
    if kind != "debug" and job_id:
        paths = JobPaths(log_dir, job_id=job_id, task_id=0)
        logs = {"stdout": paths.stdout, "stderr": paths.stderr}
    common = dict(
        index=entry["index"],
        label=entry["label"],
        job_id=job_id,
        started=report.get("started"),
        attempts=report.get("attempts", 0),
        **logs,
    )
    reported = report.get("state")
    if reported in ("done", "failed"):
        error = report.get("error") if reported == "failed" else None
        return JobStatus(
            state=reported,
            ended=report.get("ended"),
            error=error,
            detail=_last_line(error) if error else "",
            **common,
        )
    if sched_state == "cancelled":
        ended = report.get("ended")
        return JobStatus(state="cancelled", ended=ended, detail=sched_detail, **common)
    if sched_state in ("queued", "running", "unknown"):
        detail = sched_detail
        if reported == "interrupted" and sched_state == "queued":
            detail = f"requeued after attempt {report.get('attempts')}" + (
                f" ({sched_detail})" if sched_detail else ""
            )
        elif sched_state == "running" and common["attempts"] > 1:
            detail = f"attempt {common['attempts']}"
        return JobStatus(state=sched_state, detail=detail, **common)
    # The scheduler says the job is over, but it never reported a result: it was killed.
    if not report and not job_id:
        error = f"the job never started ({sched_detail})"
    else:
        where = f"; see {logs['stderr']}" if logs else ""
        error = f"the job ended without reporting a result ({sched_detail}){where}"
    return JobStatus(state="failed", ended=report.get("ended"), error=error, detail=error, **common)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


_View = dict[int, tuple[str | None, str, str]]  # index -> (job id, scheduler state, detail)


def _local_view(batch_dir: Path, manifest: dict[str, Any]) -> _View:
    """index -> (job id, queued | running | ended | cancelled, detail) from the local runner."""
    queue = read_queue(batch_dir) or {"jobs": {}, "finished": False}
    alive = runner_alive(batch_dir, manifest.get("runner_pid"))
    view = {}
    for entry in manifest["jobs"]:
        job = queue["jobs"].get(str(entry["index"]), {"state": "queued"})
        job_id = job.get("job_id")
        state = job["state"]
        if state == "queued":
            view[entry["index"]] = (
                (None, "queued", "") if alive else (None, "ended", "the local queue runner stopped")
            )
        elif state == "running":
            if process_runs(int(job_id), "submitit.local._local"):
                view[entry["index"]] = (job_id, "running", f"slot {job.get('slot')}")
            else:
                view[entry["index"]] = (job_id, "ended", "its controller process is gone")
        elif state == "exited":
            view[entry["index"]] = (job_id, "ended", f"exit code {job.get('exit_code')}")
        else:
            view[entry["index"]] = (job_id, "cancelled", "cancelled")
    return view


# squeue states (long form) grouped by what they mean for a job
_SLURM_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
_SLURM_QUEUED |= {"RESV_DEL_HOLD", "SPECIAL_EXIT", "SUSPENDED", "PREEMPTED", "POWER_UP_NODE"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}


def _slurm_view(job_ids: list[str]) -> _View:
    """index -> (job id, queued | running | ended | cancelled | unknown, detail) from squeue."""
    try:
        listing = subprocess.run(
            ["squeue", "--me", "--noheader", "--states=all", "--array", "--format=%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        reason = getattr(exc, "stderr", "") or str(exc)
        detail = f"squeue failed: {reason.strip()}"
        return {i: (jid, "unknown", detail) for i, jid in enumerate(job_ids)}
    queue = {}
    for line in listing.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            queue[parts[0]] = (parts[1], parts[2])
    view = {}
    for index, job_id in enumerate(job_ids):
        if job_id not in queue:
            view[index] = (job_id, "ended", "no longer in the SLURM queue")
            continue
        state, reason = queue[job_id]
        reason = "" if reason == "None" else reason
        if state in _SLURM_QUEUED:
            view[index] = (job_id, "queued", reason)
        elif state in _SLURM_RUNNING:
            view[index] = (job_id, "running", "")
        elif state in ("CANCELLED", "DEADLINE"):
            view[index] = (job_id, "cancelled", state)
        else:  # COMPLETED, FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, REVOKED
            view[index] = (job_id, "ended", f"SLURM state {state}")
    return view


def _with_result(job: JobStatus, batch_dir: Path, timeout_s: float = 30.0) -> JobStatus:
    """`job` with its result loaded, if it is done (waits briefly for the result file)."""
    if job.state != "done":
        return job
    manifest = read_json(batch_dir / MANIFEST)
    log_dir = Path(manifest["log_dir"])
    if manifest["kind"] == "debug":
        path = log_dir / f"debug_{job.index}_result.pkl"
    else:
        path = JobPaths(log_dir, job_id=job.job_id, task_id=0).result_pickle
    deadline = time.time() + timeout_s
    # The job reports "done" just before submitit writes its result file.
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    if not path.exists():
        return dataclasses.replace(
            job, state="failed", error=f"the job reported done but wrote no result file {path}"
        )
    outcome, value = pickle_load(path)
    if outcome != "success":
        return dataclasses.replace(job, state="failed", error=value, detail=_last_line(value))
    return dataclasses.replace(job, result=value)


def wait_for(
    folder: str | Path,
    *,
    progress: bool = True,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    stream: TextIO | None = None,
) -> list[JobStatus]:
    """Block until every job of the batch is done, failed or cancelled; return their statuses
    (with results). Ctrl-C cancels a local batch; SLURM jobs keep running."""
    batch_dir = batch_folder(folder)
    manifest = read_json(batch_dir / MANIFEST)
    poll_s = poll_s or (5.0 if manifest["kind"] == "slurm" else 0.5)
    bar = (
        _Progress(stream or sys.stderr, batch_dir.name, manifest.get("parallelism", 1))
        if progress
        else None
    )
    start = time.time()
    try:
        while True:
            statuses = status(batch_dir)
            if bar:
                bar.update(statuses)
            if all(s.state in FINAL_STATES for s in statuses):
                break
            if timeout_s is not None and time.time() - start > timeout_s:
                raise TimeoutError(
                    f"batch {batch_dir} still has unfinished jobs after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if manifest["kind"] == "local":  # the caller says what was interrupted, in one line
            cancel(batch_dir, wait_s=CANCEL_WAIT_S)
            release(manifest.get("runner_pid") or 0)
        elif manifest["kind"] == "slurm":
            print(
                f"\ninterrupted: the SLURM jobs keep running; follow them with status({batch_dir})"
                f" or stop them with cancel({batch_dir})",
                file=sys.stderr,
            )
        raise
    statuses = [_with_result(s, batch_dir) for s in statuses]
    if manifest["kind"] == "local":
        release(manifest.get("runner_pid") or 0)
    if bar:
        bar.finish(statuses)
    return statuses


def cancel(folder: str | Path, wait_s: float = 0.0) -> None:
    """Stop a batch: local queued jobs never start and running ones are interrupted; SLURM jobs
    are scancelled. Jobs already finished keep their results. With ``wait_s``, waits that long
    for a local queue to have stopped its jobs (so they could mark their runs)."""
    batch_dir = batch_folder(folder)
    manifest = read_json(batch_dir / MANIFEST)
    if manifest["kind"] == "local":
        pid = manifest.get("runner_pid")
        cancel_queue(batch_dir, pid)
        deadline = time.time() + wait_s
        while runner_alive(batch_dir, pid) and time.time() < deadline:
            time.sleep(0.2)
    elif manifest["kind"] == "slurm":
        ids = sorted({str(e["job_id"]).split("_")[0] for e in manifest["jobs"] if e["job_id"]})
        if ids:
            subprocess.run(["scancel", *ids], check=False)


# --- progress and tables ---------------------------------------------------------------------


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def estimate_remaining_s(
    statuses: Sequence[JobStatus], parallelism: int, now: float | None = None
) -> float | None:
    """Seconds until the batch ends, from the mean duration of finished jobs; None before one
    finished."""
    now = time.time() if now is None else now
    durations = [s.duration_s for s in statuses if s.state == "done" and s.duration_s is not None]
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    running = [s for s in statuses if s.state == "running"]
    queued = sum(s.state in ("queued", "unknown") for s in statuses)
    work = sum(max(mean - (now - (s.started or now)), 0.0) for s in running) + mean * queued
    lanes = max(1, min(parallelism, len(running) + queued))
    return work / lanes


def summarize(statuses: Sequence[JobStatus]) -> dict[str, int]:
    """Count of jobs per state, in a fixed order."""
    order = ("done", "running", "queued", "failed", "cancelled", "unknown")
    return {state: sum(s.state == state for s in statuses) for state in order}


class _Progress:
    """Per-job lines when jobs finish, plus a one-line summary with an ETA."""

    def __init__(self, stream: TextIO, name: str, parallelism: int) -> None:
        self.stream = stream
        self.name = name
        self.parallelism = parallelism
        self.reported: set[int] = set()
        self.last_line = ""
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def update(self, statuses: Sequence[JobStatus]) -> None:
        total = len(statuses)
        for s in statuses:
            if s.state in FINAL_STATES and s.index not in self.reported:
                self.reported.add(s.index)
                self._clear()
                print(self._job_line(s, len(self.reported), total), file=self.stream, flush=True)
        counts = summarize(statuses)
        parts = [f"{counts['done']}/{total} done"]
        parts += [f"{n} {state}" for state, n in counts.items() if n and state != "done"]
        line = f"[{self.name}] " + ", ".join(parts)
        eta = estimate_remaining_s(statuses, self.parallelism)
        if self.tty:
            full = line + (f" · ETA {_format_duration(eta)}" if eta is not None else "")
            self.stream.write("\r" + full.ljust(len(self.last_line)))
            self.stream.flush()
            self.last_line = full
        elif line != self.last_line:  # logs: one line per change, not per poll
            eta_text = f" · ETA {_format_duration(eta)}" if eta is not None else ""
            print(line + eta_text, file=self.stream, flush=True)
            self.last_line = line

    def _clear(self) -> None:
        if self.tty and self.last_line:
            self.stream.write("\r" + " " * len(self.last_line) + "\r")
            self.last_line = ""

    def _job_line(self, s: JobStatus, finished: int, total: int) -> str:
        head = f"  {s.state:<9} [{finished}/{total}] {s.label}"
        if s.state == "done":
            return f"{head} ({_format_duration(s.duration_s)})"
        log = f" (stderr: {s.stderr})" if s.stderr else ""
        return f"{head}: {s.detail or s.state}{log}"

    def finish(self, statuses: Sequence[JobStatus]) -> None:
        self.update(statuses)
        if self.tty:
            self.stream.write("\n")
        failed = [s for s in statuses if s.state != "done"]
        if failed:
            print(f"[{self.name}] {len(failed)} job(s) did not finish:", file=self.stream)
            for s in failed:
                print(f"  {s.label}: {s.detail or s.state}", file=self.stream)
                if s.stderr:
                    print(f"    stderr: {s.stderr}", file=self.stream)
        self.stream.flush()


def format_status(statuses: Sequence[JobStatus]) -> str:
    """A plain-text table of a batch (what `python -m ablations status` prints)."""
    rows = [("#", "state", "label", "job id", "time", "detail / log")]
    for s in statuses:
        elapsed = s.duration_s
        if elapsed is None and s.started is not None and s.state == "running":
            elapsed = time.time() - s.started
        where = s.detail
        if s.state in ("failed", "running") and s.stderr:
            where = f"{s.detail} (stderr: {s.stderr})" if s.detail else f"stderr: {s.stderr}"
        rows.append(
            (str(s.index), s.state, s.label, s.job_id or "-", _format_duration(elapsed), where)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + "  "
        + row[5]
        for row in rows
    ]
    counts = summarize(statuses)
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n))
    return "\n".join(line.rstrip() for line in lines)
