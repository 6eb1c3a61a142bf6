"""Where and how jobs run: `LauncherConfig` (the Hydra `launcher` group, typed and checked in
``pipeline/schema.py`` with the other groups) and what every backend gives a job."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.schema import LAUNCHER_KINDS as KINDS
from pipeline.schema import LauncherConfig
from psalm.benchmark import HUGE_PAGES_ENV

__all__ = [
    "JOB_DEFAULTS",
    "KINDS",
    "PACKAGE_ROOT",
    "THREAD_VARIABLES",
    "LauncherConfig",
    "job_defaults",
]

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

# Set in every job unless the submitting shell sets them: PyTorch's CPU allocator backs each
# buffer of 2 MB or more with transparent huge pages, so the kernel faults a freed and
# re-allocated map in 2 MB at a time instead of 4 KB. Losses are bit-identical; a default PSALM
# training step took ~10 % less and a test evaluation ~15 % less on this repository's CPU
# (docs/results.md, "Huge pages").
JOB_DEFAULTS = {HUGE_PAGES_ENV: "1"}


def job_defaults() -> dict[str, str]:
    """``JOB_DEFAULTS``, each overridden by the submitting process's own value if it has one."""
    return {name: os.environ.get(name, value) for name, value in JOB_DEFAULTS.items()}
