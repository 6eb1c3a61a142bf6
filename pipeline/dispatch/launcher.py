"""Where and how jobs run: `LauncherConfig` (the Hydra `launcher` group, typed and checked)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("debug", "local", "slurm")
# Directory that holds the `pipeline` package: jobs get it on PYTHONPATH so they can unpickle Job.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# Thread counts a job gets; torch follows OMP_NUM_THREADS unless the job calls set_num_threads,
# so a job that does should read DISPATCH_THREADS.
THREAD_VARIABLES = (
    "DISPATCH_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@dataclass(frozen=True)
class LauncherConfig:
    """Where and how jobs run. Fields not used by `kind` are ignored."""

    kind: str = "local"  # "debug" | "local" | "slurm"
    # local
    slots: int | None = None  # jobs at once; None: one per visible GPU, else cores // threads
    threads_per_job: int | None = None  # OMP/MKL/torch threads; None: 1 (CPU), cores // slots (GPU)
    gpus: tuple[str, ...] | None = None  # CUDA ids for local slots; None: detect; (): CPU only
    # local and slurm
    time_min: float | None = None  # slurm --time; local per-attempt limit; None: 60 / no limit
    signal_delay_s: int = 90  # USR2 this long before time_min, so the job can checkpoint
    # Requeues after a timeout before the job fails. submitit counts a USR2 as a timeout once the
    # job ran min(80 % of time_min, time_min - 10 min), i.e. always when time_min < 50.
    max_requeues: int = 3
    log_folder: str | None = None  # submitit pickles and logs; None: <batch>/logs (shared FS!)
    # slurm
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int = 0
    cpus_per_task: int = 1  # also the job's thread count
    mem_gb: float | None = None  # None: the partition's default
    array_parallelism: int | None = None  # at most this many array tasks at once
    job_name: str = "psalm"
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load, conda activate)
    extra_sbatch: dict[str, Any] = field(default_factory=dict)  # e.g. {"constraint": "a100"}

    def __post_init__(self) -> None:
        # Hydra hands over lists; keep the dataclass immutable and comparable.
        if self.gpus is not None:
            object.__setattr__(self, "gpus", tuple(str(g) for g in self.gpus))
        object.__setattr__(self, "setup", tuple(self.setup))
        object.__setattr__(self, "extra_sbatch", dict(self.extra_sbatch))
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind={self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("slots", "threads_per_job", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name}={value} must be at least 1 (or null for the default)")
        if self.cpus_per_task < 1:
            problems.append(f"cpus_per_task={self.cpus_per_task} must be at least 1")
        if self.gpus_per_job < 0:
            problems.append(f"gpus_per_job={self.gpus_per_job} must be 0 or more")
        if self.time_min is not None and self.time_min <= 0:
            problems.append(f"time_min={self.time_min} must be positive (or null)")
        if self.mem_gb is not None and self.mem_gb <= 0:
            problems.append(f"mem_gb={self.mem_gb} must be positive (or null)")
        if self.signal_delay_s < 0 or self.max_requeues < 0:
            problems.append("signal_delay_s and max_requeues must be 0 or more")
        if problems:
            raise ValueError("invalid launcher config: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LauncherConfig:
        """Build from a plain mapping (e.g. a Hydra `launcher` group), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown launcher setting(s) {unknown}; valid ones are {sorted(known)}"
            )
        return cls(**dict(values))
