"""`dispatch`: run one callable over many specs on a launcher, as one batch."""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from pipeline.dispatch import local, slurm
from pipeline.dispatch.batch import MANIFEST, new_batch_id, write_json_atomic
from pipeline.dispatch.job import Job, JobStatus
from pipeline.dispatch.launcher import LauncherConfig
from pipeline.dispatch.status import (
    batch_remaining_s,
    show_progress,
    status,
    wait_for,
    warn_unfinished,
    with_result,
)
from pipeline.progress import Progress
from pipeline.schema import ConfigError


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
        slurm.check_available()
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
        # a blocking driver owns its queue: if the driver is killed, so is the queue
        manifest.update(local.submit(batch_dir, log_dir, jobs, launcher, owned=wait))
    else:
        job_ids = slurm.submit(log_dir, jobs, launcher)
        for entry, job_id in zip(manifest["jobs"], job_ids, strict=True):
            entry["job_id"] = job_id
        manifest["parallelism"] = min(len(jobs), launcher.array_parallelism or len(jobs))
    write_json_atomic(batch_dir / MANIFEST, manifest)
    if not wait:
        return status(batch_dir)
    return wait_for(batch_dir, progress=progress, poll_s=poll_s)


def check_launcher(launcher: LauncherConfig) -> None:
    """What this machine must have for ``launcher``, checked before a study or sweep plans any
    job (``ConfigError``): SLURM's commands for ``launcher=slurm``; for a local queue that names
    its GPUs (``launcher.gpus``), a GPU to run on: without one the jobs would train on the CPU."""
    if launcher.kind == "slurm":
        slurm.check_available()
    if launcher.kind == "local" and launcher.gpus and not local.visible_gpus():
        raise ConfigError(
            f"launcher.gpus=[{', '.join(launcher.gpus)}]: this machine shows no GPU "
            "(nvidia-smi lists none, CUDA_VISIBLE_DEVICES names none); leave launcher.gpus unset "
            "(null) to detect them, or set launcher.gpus=[] for CPU slots"
        )


def _default_label(spec: Any) -> str:
    label = getattr(spec, "label", None) or getattr(spec, "name", None) or str(spec)
    return label if len(label) <= 80 else label[:77] + "..."


def _run_in_process(
    batch_dir: Path, jobs: list[Job], log_dir: Path, progress: bool
) -> list[JobStatus]:
    log_dir.mkdir(parents=True, exist_ok=True)
    bar = Progress(batch_dir.name, len(jobs), unit="job") if progress else None
    reported: set[int] = set()
    for job in jobs:
        if bar:
            statuses = status(batch_dir)
            show_progress(bar, statuses, reported, batch_remaining_s(statuses, parallelism=1))
        try:
            outcome = ("success", job())
        except Exception:
            outcome = ("error", traceback.format_exc())
        with open(log_dir / f"debug_{job.index}_result.pkl", "wb") as out:
            cloudpickle.dump(outcome, out)
    statuses = [with_result(s, batch_dir) for s in status(batch_dir)]
    if bar:
        show_progress(bar, statuses, reported, 0.0)
        bar.close()
        warn_unfinished(batch_dir.name, statuses)
    return statuses
