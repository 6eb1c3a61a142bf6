"""What a batch's jobs are doing: `status` (non-blocking), `wait_for` (blocking, with progress),
`cancel`, and `format_status`, the table that `python -m ablations status` prints."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from submitit.core.utils import JobPaths, pickle_load

from pipeline.dispatch import local, slurm
from pipeline.dispatch.batch import MANIFEST, batch_folder, read_json
from pipeline.dispatch.job import JobStatus
from pipeline.processes import release
from pipeline.progress import Progress, estimate_remaining_s, format_duration

log = logging.getLogger(__name__)

FINAL_STATES = ("done", "failed", "cancelled")
# A cancelled local queue interrupts its jobs and gives them STOP_GRACE_S (10 s) before SIGKILL.
CANCEL_WAIT_S = 15.0


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
        scheduler = local.view(batch_dir, manifest)
    elif kind == "slurm":
        scheduler = slurm.view([e["job_id"] for e in manifest["jobs"]])
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


def with_result(job: JobStatus, batch_dir: Path, timeout_s: float = 30.0) -> JobStatus:
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
    parallelism = manifest.get("parallelism", 1)
    bar = (
        Progress(batch_dir.name, len(manifest["jobs"]), unit="job", stream=stream)
        if progress
        else None
    )
    reported: set[int] = set()
    start = time.time()
    try:
        while True:
            statuses = status(batch_dir)
            if bar:
                eta = batch_remaining_s(statuses, parallelism, startup_s(manifest, statuses))
                show_progress(bar, statuses, reported, eta)
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
            log.warning(
                "interrupted: the SLURM jobs keep running; follow them with status(%s) or stop "
                "them with cancel(%s)",
                batch_dir,
                batch_dir,
            )
        raise
    finally:
        if bar:
            bar.close()
    statuses = [with_result(s, batch_dir) for s in statuses]
    if manifest["kind"] == "local":
        release(manifest.get("runner_pid") or 0)
    if bar:
        warn_unfinished(batch_dir.name, statuses)
    return statuses


def cancel(folder: str | Path, wait_s: float = 0.0) -> None:
    """Stop a batch: local queued jobs never start and running ones are interrupted; SLURM jobs
    are scancelled. Jobs already finished keep their results. With ``wait_s``, waits that long
    for a local queue to have stopped its jobs (so they could mark their runs)."""
    batch_dir = batch_folder(folder)
    manifest = read_json(batch_dir / MANIFEST)
    if manifest["kind"] == "local":
        local.cancel(batch_dir, manifest, wait_s)
    elif manifest["kind"] == "slurm":
        slurm.cancel([entry["job_id"] for entry in manifest["jobs"]])


def batch_remaining_s(
    statuses: Sequence[JobStatus],
    parallelism: int,
    startup_s: float = 0.0,
    now: float | None = None,
) -> float | None:
    """Seconds until the batch ends: the mean duration of its finished jobs, scheduled on
    `parallelism` slots, each job still to start paying `startup_s` first
    (`pipeline.progress.estimate_remaining_s`); None before a job has finished."""
    now = time.time() if now is None else now
    durations = [s.duration_s for s in statuses if s.state == "done" and s.duration_s is not None]
    if not durations:
        return None
    running = [now - (s.started or now) for s in statuses if s.state == "running"]
    queued = sum(s.state in ("queued", "unknown") for s in statuses)
    mean = sum(durations) / len(durations)
    return estimate_remaining_s(mean, running, queued, parallelism, startup_s)


def startup_s(manifest: dict[str, Any], statuses: Sequence[JobStatus]) -> float:
    """What it takes a job to start: from the batch's creation to its first job's start
    (the queue, the process, its imports); 0 before a job has started."""
    starts = [s.started for s in statuses if s.started is not None]
    return max(min(starts) - manifest["created"], 0.0) if starts else 0.0


def summarize(statuses: Sequence[JobStatus]) -> dict[str, int]:
    """Count of jobs per state, in a fixed order."""
    order = ("done", "running", "queued", "failed", "cancelled", "unknown")
    return {state: sum(s.state == state for s in statuses) for state in order}


def show_progress(
    progress: Progress, statuses: Sequence[JobStatus], reported: set[int], eta_s: float | None
) -> None:
    """A line for each job that has ended since the last call (its index joins `reported`),
    then the counts: "3/12 done, 2 running, 7 queued"."""
    total = len(statuses)
    for s in statuses:
        if s.state in FINAL_STATES and s.index not in reported:
            reported.add(s.index)
            progress.write(_job_line(s, len(reported), total))
    counts = summarize(statuses)
    parts = [f"{counts['done']}/{total} done"]
    parts += [f"{n} {state}" for state, n in counts.items() if n and state != "done"]
    progress.update(sum(s.state in FINAL_STATES for s in statuses), ", ".join(parts), eta_s)


def _job_line(s: JobStatus, finished: int, total: int) -> str:
    head = f"  {s.state:<9} [{finished}/{total}] {s.label}"
    if s.state == "done":
        return f"{head} ({format_duration(s.duration_s)})"
    where = f" (stderr: {s.stderr})" if s.stderr else ""
    return f"{head}: {s.detail or s.state}{where}"


def warn_unfinished(name: str, statuses: Sequence[JobStatus]) -> None:
    """One warning naming the jobs of batch `name` that did not finish, with their logs."""
    failed = [s for s in statuses if s.state != "done"]
    if not failed:
        return
    lines = [f"[{name}] {len(failed)} job(s) did not finish:"]
    for s in failed:
        lines.append(f"  {s.label}: {s.detail or s.state}")
        if s.stderr:
            lines.append(f"    stderr: {s.stderr}")
    log.warning("%s", "\n".join(lines))


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
            (str(s.index), s.state, s.label, s.job_id or "-", format_duration(elapsed), where)
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
