"""Where and how jobs run: `LauncherConfig` (the Hydra `launcher` group, typed and checked in
``pipeline/schema.py`` with the other groups) and what every backend gives a job."""

from __future__ import annotations

from pathlib import Path

from pipeline.schema import LAUNCHER_KINDS as KINDS
from pipeline.schema import LauncherConfig

__all__ = ["KINDS", "PACKAGE_ROOT", "THREAD_VARIABLES", "LauncherConfig"]

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
