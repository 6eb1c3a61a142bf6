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
  and DISPATCH_SLOT. A detached runner (`pipeline.dispatch._local_queue`) feeds
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

The package is split the way submitit splits its backends:
    launcher.py     LauncherConfig, the Hydra `launcher` group, typed and checked
    job.py          Job (the submitted wrapper that writes a JSON report), JobStatus
    batch.py        the batch folder: manifest, atomic JSON files, batch ids, finding batches
    local.py        slots, GPUs, the local queue's submission and view (`_local_queue.py` runs it)
    slurm.py        the submitit job array, squeue parsing, scancel
    status.py       status, wait_for, cancel, format_status
    submit.py       dispatch
"""

from pipeline.dispatch.batch import MANIFEST, batch_folder, batch_folders, new_batch_id
from pipeline.dispatch.job import Job, JobStatus
from pipeline.dispatch.launcher import KINDS, LauncherConfig
from pipeline.dispatch.local import Slot, available_cpus, local_slots, visible_gpus
from pipeline.dispatch.status import (
    CANCEL_WAIT_S,
    FINAL_STATES,
    batch_remaining_s,
    cancel,
    format_status,
    status,
    summarize,
    wait_for,
)
from pipeline.dispatch.submit import check_launcher, dispatch

__all__ = [
    "CANCEL_WAIT_S",
    "FINAL_STATES",
    "KINDS",
    "MANIFEST",
    "Job",
    "JobStatus",
    "LauncherConfig",
    "Slot",
    "available_cpus",
    "batch_remaining_s",
    "batch_folder",
    "batch_folders",
    "cancel",
    "check_launcher",
    "dispatch",
    "format_status",
    "local_slots",
    "new_batch_id",
    "status",
    "summarize",
    "visible_gpus",
    "wait_for",
]
