"""The SLURM backend: one submitit job array per batch; its state read back from `squeue`."""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
from pathlib import Path

import submitit

from pipeline.dispatch.job import SchedulerView
from pipeline.dispatch.launcher import JOB_DEFAULTS, PACKAGE_ROOT, THREAD_VARIABLES, LauncherConfig
from pipeline.schema import ConfigError

DEFAULT_TIME_MIN = 60


def check_available() -> None:
    """SLURM's commands are on PATH and its controller answers (``ConfigError`` otherwise)."""
    tools = ("sbatch", "srun", "squeue", "scancel", "scontrol")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise ConfigError(
            f"launcher=slurm needs SLURM's commands on PATH, missing: {', '.join(missing)}. "
            "Run this on a cluster login node, start a local one with scripts/slurm-up.sh, "
            "or use launcher=local."
        )
    try:  # without a controller every sbatch fails; scontrol ping answers at once either way
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"launcher=slurm: `scontrol ping` failed ({exc})") from exc
    if ping.returncode != 0:
        answer = " ".join(ping.stdout.split("\n")[0].split()) or ping.stderr.strip()
        raise ConfigError(
            f"launcher=slurm: the SLURM controller does not answer (scontrol ping: {answer}). "
            "Start it (scripts/slurm-up.sh for a local one) or use launcher=local."
        )


def executor(launcher: LauncherConfig, log_dir: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(
        folder=log_dir, cluster="slurm", slurm_max_num_timeout=launcher.max_requeues
    )
    time_min = math.ceil(launcher.time_min or DEFAULT_TIME_MIN)
    setup = [
        f"export PYTHONPATH={shlex.quote(PACKAGE_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
        *(f"export {name}=${{SLURM_CPUS_PER_TASK:-1}}" for name in THREAD_VARIABLES),
        *(f"export {name}=${{{name}:-{value}}}" for name, value in JOB_DEFAULTS.items()),
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


# squeue states (long form) grouped by what they mean for a job
_SLURM_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
_SLURM_QUEUED |= {"RESV_DEL_HOLD", "SPECIAL_EXIT", "SUSPENDED", "PREEMPTED", "POWER_UP_NODE"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}


def view(job_ids: list[str]) -> SchedulerView:
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
    states = {}
    for index, job_id in enumerate(job_ids):
        if job_id not in queue:
            states[index] = (job_id, "ended", "no longer in the SLURM queue")
            continue
        state, reason = queue[job_id]
        reason = "" if reason == "None" else reason
        if state in _SLURM_QUEUED:
            states[index] = (job_id, "queued", reason)
        elif state in _SLURM_RUNNING:
            states[index] = (job_id, "running", "")
        elif state in ("CANCELLED", "DEADLINE"):
            states[index] = (job_id, "cancelled", state)
        else:  # COMPLETED, FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, REVOKED
            states[index] = (job_id, "ended", f"SLURM state {state}")
    return states


def submit(log_dir: Path, jobs: list, launcher: LauncherConfig) -> list[str]:
    """Submit `jobs` as one array; the SLURM job id of each ("<array>_<task>")."""
    return [job.job_id for job in executor(launcher, log_dir).submit_array(jobs)]


def cancel(job_ids: list[str | None]) -> None:
    """scancel the arrays of `job_ids`."""
    arrays = sorted({str(job_id).split("_")[0] for job_id in job_ids if job_id})
    if arrays:
        subprocess.run(["scancel", *arrays], check=False)
