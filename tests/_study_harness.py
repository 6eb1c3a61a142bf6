"""Run a smoke ablation study as a user does (a real driver process, the local queue, a loopback
MLflow server over a SQLite store in a temporary folder), and check what a crash may never leave
behind. Used by the crash-safety and fault-injection tests.

Every process the study starts carries the temporary folder in its command line (the queue
runner and the jobs through their batch folder, the server through its store, the watchdog
through its owner file), so ``study_processes(root)`` finds them all.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from mlflow.tracking import MlflowClient

from pipeline.lease import read_log

REPO_ROOT = Path(__file__).resolve().parents[1]
# Two cells (psalm baseline and no_pyramid, seed 0), a few seconds of training each.
STUDY_ARGS = ("pyramid", "profile=smoke", "models=[psalm]", "seeds=[0]", "launcher=local")
SMALL_DATA = ("data.n_val=4", "data.n_test=6")


def as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C's signals at their defaults, as in a terminal. A shell
    without job control starts background commands with SIGINT and SIGQUIT ignored, and a
    Python started that way keeps ignoring SIGINT: a test suite run as ``bash .ci/run &``
    would otherwise send Ctrl-C to a driver that cannot hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@dataclass(frozen=True)
class StudyDir:
    root: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def outputs(self) -> Path:
        return self.root / "runs"

    def argv(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ablations",
            "run",
            *STUDY_ARGS,
            *SMALL_DATA,
            f"output_dir={self.outputs}",
            *extra,
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.uri,
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, *extra: str) -> subprocess.Popen:
        """The study's driver, started as from a terminal (its own process group)."""
        (self.root / "cwd").mkdir(exist_ok=True)
        log = open(self.root / "driver.log", "ab")  # noqa: SIM115 (the child writes it)
        return subprocess.Popen(
            self.argv(*extra),
            cwd=self.root / "cwd",
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_from_a_terminal,
        )

    def run(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        (self.root / "cwd").mkdir(exist_ok=True)
        return subprocess.run(
            self.argv(*extra),
            cwd=self.root / "cwd",
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def study_processes(root: Path) -> list[psutil.Process]:
    """Every live process whose command line mentions ``root`` (the study's processes)."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if process.pid == me or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(root) in " ".join(process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for_no_processes(root: Path, within_s: float = 10.0) -> list[str]:
    """Poll up to ``within_s`` for the study's processes to be gone; those still alive."""
    deadline = time.time() + within_s
    while True:
        alive = study_processes(root)
        if not alive or time.time() > deadline:
            break
        time.sleep(0.2)
    names = []
    for process in alive:
        try:
            names.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            continue
    return names


def job_tasks(root: Path) -> list[psutil.Process]:
    """The study's running jobs (submitit tasks that call run(spec))."""
    return [
        p
        for p in study_processes(root)
        if "submitit.core._submit" in " ".join(p.cmdline() if p.is_running() else ())
    ]


def crash_problems(study: StudyDir, cells: int) -> list[str]:
    """What a crash left wrong in the store and the run folders: more or fewer than one FINISHED
    run per cell, a run not FINISHED, a metric step recorded twice, a cell held by two live
    processes at once (from the lease logs)."""
    client = MlflowClient(study.uri)
    experiment = client.get_experiment_by_name("psalm")
    problems: list[str] = []
    runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
    # the study's parent run (analysis/study_run.py, tag kind=study) holds its verdicts: no cell
    runs = [r for r in runs if r.data.tags.get("kind") != "study"]
    by_hash = collections.Counter(r.data.tags.get("config_hash") for r in runs)
    if len(by_hash) != cells:
        problems.append(f"{len(by_hash)} cells recorded, expected {cells}")
    problems += [f"{n} runs for cell {h}" for h, n in by_hash.items() if n != 1]
    for run in runs:
        name = run.info.run_name
        if run.info.status != "FINISHED":
            problems.append(f"{name} is {run.info.status}")
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            repeated = sorted(s for s, n in collections.Counter(steps).items() if n > 1)
            if repeated:
                problems.append(f"{name}: {key} steps {repeated} recorded more than once")
        if "test/nAP50" not in run.data.metrics and run.info.status == "FINISHED":
            problems.append(f"{name}: FINISHED without test/nAP50")
        folder = study.outputs / run.data.tags["config_hash"]
        for record in read_log(folder):
            if record["event"] == "acquire" and record["previous_alive"]:
                problems.append(f"{name}: pid {record['pid']} took the lease of a live holder")
    return problems
