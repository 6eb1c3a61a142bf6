"""The only module that writes MLflow: one run per ``RunSpec``, resumable, never duplicated.

- ``Tracker.open(spec)`` finds the run with the spec's ``config_hash`` tag: a FINISHED one is
  reported as done (the caller skips the work); an unfinished one (RUNNING after a kill, FAILED,
  KILLED) is reopened, so a resumed training continues the same MLflow run; otherwise a new run is
  created with the contracted tags and the flattened resolved config as params.
- ``RunHandle.log_metrics`` drops any (metric, step) at or below the last step already recorded
  for that metric, so a run resumed from an older checkpoint re-computes but never re-logs a step.
- A ``heartbeat`` tag is refreshed as metrics arrive; a RUNNING run whose heartbeat is older than
  ``stale_after_s`` is taken for dead (its process was killed) and may be resumed.

It also answers the bookkeeping questions dispatch needs (is this hash done? is it live?);
reading results for analysis is ``analysis``'s job.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import REPO_ROOT, RunSpec, flatten

DEFAULT_URI = "sqlite:///mlflow.db"
HEARTBEAT_EVERY_S = 30.0
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def tracking_uri(configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the config's value, else the repo's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def git_sha() -> str:
    """The checkout's commit, ``-dirty`` if it has uncommitted changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


@dataclass
class RunHandle:
    """An open MLflow run: log metrics (deduplicated by step), artifacts, and finish it."""

    client: MlflowClient
    run_id: str
    finished: bool = False  # already FINISHED before this process opened it
    resumed: bool = False  # reopened an unfinished run
    last_step: dict[str, int] = field(default_factory=dict)
    _last_heartbeat: float = 0.0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if step > self.last_step.get(key, -1)
        ]
        if not fresh:
            return
        tags = []
        if time.time() - self._last_heartbeat > HEARTBEAT_EVERY_S:
            self._last_heartbeat = time.time()
            tags = [RunTag("heartbeat", str(int(self._last_heartbeat)))]
        self.client.log_batch(self.run_id, metrics=fresh, tags=tags)
        for m in fresh:
            self.last_step[m.key] = step

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.set_tags({"failure_reason": reason[:5000]})
        self.client.set_terminated(self.run_id, status=status)


class Tracker:
    """MLflow access for one tracking URI and experiment."""

    def __init__(self, uri: str | None = None, experiment: str = "psalm") -> None:
        self.uri = tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # keep artifacts beside the store, not in whatever folder the process started in
            db = Path(self.uri.removeprefix("sqlite:///"))
            db = db if db.is_absolute() else REPO_ROOT / db
            location = (db.parent / "mlartifacts" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def find(self, config_hash: str) -> Any | None:
        """The newest run with this config hash, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.config_hash = '{config_hash}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def state(self, config_hash: str, stale_after_s: float = 600.0) -> str:
        """``new`` | ``finished`` | ``live`` (RUNNING, fresh heartbeat) | ``resumable``."""
        run = self.find(config_hash)
        if run is None:
            return "new"
        if run.info.status == "FINISHED":
            return "finished"
        if run.info.status == "RUNNING":
            beat = float(run.data.tags.get("heartbeat", run.info.start_time / 1000))
            if time.time() - beat < stale_after_s:
                return "live"
        return "resumable"

    def retire(self, config_hash: str) -> None:
        """Move a run out of the way for ``--force``: MLflow's soft delete (``mlflow runs
        restore --run-id …`` brings it back)."""
        run = self.find(config_hash)
        if run is None:
            return
        self.client.delete_run(run.info.run_id)

    def open(self, spec: RunSpec, extra_tags: Mapping[str, str] | None = None) -> RunHandle:
        """Reopen the spec's run (finished or not) or create it."""
        run = self.find(spec.config_hash)
        if run is not None and run.info.status == "FINISHED":
            return RunHandle(self.client, run.info.run_id, finished=True)
        if run is not None:
            run_id = run.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            last = {
                key: max(m.step for m in self.client.get_metric_history(run_id, key))
                for key in run.data.metrics
            }
            handle = RunHandle(self.client, run_id, resumed=True, last_step=last)
            handle.set_tags({"resumed": "true"})
            return handle
        tags = {**spec.tags(), "git_sha": git_sha(), **(extra_tags or {})}
        run = self.client.create_run(
            self.experiment_id, run_name=spec.label, tags=tags, start_time=_now_ms()
        )
        params = [
            Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(spec.config).items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return RunHandle(self.client, run.info.run_id)


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["RunHandle", "RunStatus", "Tracker", "git_sha", "tracking_uri"]
