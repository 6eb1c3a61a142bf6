"""The only module that writes MLflow: one run per ``RunSpec``, resumable, never duplicated.

- ``Tracker.open(spec)`` finds the run with the spec's ``config_hash`` tag: a FINISHED one is
  reported as done (the caller skips the work); an unfinished one (RUNNING after a kill, FAILED,
  KILLED) is reopened, so a resumed training continues the same MLflow run; otherwise a new run is
  created with the contracted tags and the flattened resolved config as params.
- ``RunHandle.log_metrics`` drops any (metric, step) at or below the last step already recorded
  for that metric, so a run resumed from an older checkpoint re-computes but never re-logs a step.
  Metrics are buffered and sent in batches: every ``flush_every`` steps (the checkpoint interval,
  so everything up to a checkpoint is recorded before the checkpoint is written), every
  ``FLUSH_EVERY_S`` seconds, and before tags, artifacts and the end of the run.
- Whether a RUNNING run is live is its cell's lease (``pipeline.lease``): the lock dies with the
  process that held it, so a killed run is resumable at once. A ``heartbeat`` tag is refreshed as
  metrics arrive, for runs recorded before leases (stale after ``stale_after_s``).

It also answers the bookkeeping questions dispatch needs (is this hash done? is it live?);
reading results for analysis is ``analysis``'s job.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import REPO_ROOT, ConfigError, RunSpec, flatten
from pipeline.lease import LOCK_FILE
from pipeline.lease import holder as lease_holder
from pipeline.mlflow_server import FRONTED_STORE, absolute_sqlite_uri, check_store
from pipeline.study_tags import STUDIES_TAG, search_study, studies_of

DEFAULT_URI = "sqlite:///mlflow.db"
HEARTBEAT_EVERY_S = 30.0
FLUSH_EVERY_S = 10.0
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def tracking_uri(configured: str | None = None) -> str:
    """The store to use: ``configured`` (``tracking.uri``, whose default is
    ``$MLFLOW_TRACKING_URI``; an explicit ``tracking.uri=`` or ``--tracking-uri`` wins over the
    environment), else ``$MLFLOW_TRACKING_URI``, else the repo's SQLite file. A store that a
    loopback server fronts (``pipeline.mlflow_server.shared_tracking``) is reached through it."""
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    if configured and absolute_sqlite_uri(configured) != os.environ.get(FRONTED_STORE):
        return absolute_sqlite_uri(configured)
    return absolute_sqlite_uri(environment or configured or DEFAULT_URI)


def sqlite_store_exists(uri: str) -> bool:
    """False for a ``sqlite:///`` URI whose file does not exist; True for any other store."""
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or Path(uri.removeprefix(prefix).partition("?")[0]).exists()


def create_sqlite_store(uri: str, artifact_root: str | Path | None = None) -> None:
    """Make a new SQLite store whole or not at all (nothing to do for an existing file or
    another kind of store).

    MLflow creates a store's tables one migration at a time the first time it opens the file.
    A process killed in between (a study driver killed 5 s after its start, in the
    fault-injection test) left a file that every later open refused: "table logged_models
    already exists". So the tables are made in a temporary file beside the store, which is then
    linked into place only if no other process put a store there first.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    path = Path(uri.removeprefix(prefix).partition("?")[0])
    if path.exists() or not path.parent.is_dir():  # a missing folder: check_store refuses it
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    temporary = path.with_name(f".{path.name}.{os.getpid()}.creating")
    root = Path(artifact_root) if artifact_root else path.resolve().parent / "mlartifacts"
    try:
        SqlAlchemyStore(f"{prefix}{temporary.resolve()}", root.as_uri()).engine.dispose()
        os.link(temporary, path)  # atomic, and fails if a store appeared meanwhile
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)


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
    flush_every: int = 1  # send at least at every multiple of this step (checkpoint interval)
    _pending: list[Metric] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.time)
    _last_heartbeat: float = 0.0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if step > self.last_step.get(key, -1):
                self._pending.append(Metric(key, float(value), now, step))
                self.last_step[key] = step
        if step % self.flush_every == 0 or time.time() - self._last_flush > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics (MLflow takes at most 1000 a batch) and the heartbeat."""
        tags = []
        if time.time() - self._last_heartbeat > HEARTBEAT_EVERY_S:
            self._last_heartbeat = time.time()
            tags = [RunTag("heartbeat", str(int(self._last_heartbeat)))]
        pending, self._pending = self._pending, []
        for i in range(0, max(len(pending), 1), 1000):
            if pending[i : i + 1000] or tags:
                self.client.log_batch(self.run_id, metrics=pending[i : i + 1000], tags=tags)
            tags = []
        self._last_flush = time.time()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.flush()
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        self.flush()
        if reason:
            self.set_tags({"failure_reason": reason[:5000]})
        self.client.set_terminated(self.run_id, status=status)


class Tracker:
    """MLflow access for one tracking URI and experiment."""

    def __init__(
        self, uri: str | None = None, experiment: str = "psalm", *, create: bool = True
    ) -> None:
        """``create=False``: an experiment the store lacks is an error (``ConfigError`` naming
        the experiments there) instead of being made."""
        self.uri = tracking_uri(uri)
        try:
            check_store(self.uri)
        except (ConnectionError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        if not create and not sqlite_store_exists(self.uri):
            raise ConfigError(f"no MLflow store at {self.uri} (the file does not exist)")
        try:
            create_sqlite_store(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(experiment, create)
        except ConfigError:
            raise
        except Exception as exc:  # a bad URI, an unwritable folder, an unreachable server
            reason = next((line for line in str(exc).splitlines() if line.strip()), repr(exc))
            raise ConfigError(
                f"cannot open the MLflow tracking store {self.uri}: {reason[:300]}; set "
                "MLFLOW_TRACKING_URI to sqlite:///<a writable path> or a running server's URL"
            ) from exc

    def _experiment(self, name: str, create: bool = True) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if not create:
            known = sorted(e.name for e in self.client.search_experiments())
            raise ConfigError(
                f"no MLflow experiment {name!r} in {self.uri} (experiments there: "
                f"{', '.join(known) or 'none'})"
            )
        location = None
        if self.uri.startswith("sqlite:///"):
            # keep artifacts beside the store, not in whatever folder the process started in
            db = Path(absolute_sqlite_uri(self.uri).removeprefix("sqlite:///").partition("?")[0])
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

    def state(
        self, config_hash: str, folder: str | Path | None = None, stale_after_s: float = 600.0
    ) -> str:
        """``new`` | ``finished`` | ``live`` (RUNNING and its process alive) | ``resumable``.

        With the run's ``folder``, liveness is its lease (``pipeline.lease``): a RUNNING run
        whose holder is gone is resumable at once. Without a lease file (runs recorded before
        leases existed) a heartbeat younger than ``stale_after_s`` counts as live."""
        run = self.find(config_hash)
        if run is None:
            return "new"
        if run.info.status == "FINISHED":
            return "finished"
        if run.info.status == "RUNNING":
            if folder is not None and (Path(folder) / LOCK_FILE).exists():
                return "live" if lease_holder(folder) else "resumable"
            beat = float(run.data.tags.get("heartbeat", run.info.start_time / 1000))
            if time.time() - beat < stale_after_s:
                return "live"
        return "resumable"

    def join_study(self, config_hash: str, study: str, ablation: str = "") -> None:
        """Tag the run of ``config_hash`` with one more study that uses it (tag ``studies``, a
        comma-separated list; tag ``study`` keeps the first; ``pipeline.study_tags``): a
        baseline shared by several studies is trained once. A baseline also gets the study's
        ``ablation`` list added to its own, so each study's analysis pairs its variants with it."""
        run = self.find(config_hash)
        if run is not None:
            self._join(run, study, ablation)

    def _join(self, run: Any, study: str, ablation: str = "") -> None:
        if not study:
            return
        tags = run.data.tags
        studies = studies_of(tags)
        if study not in studies:
            self.client.set_tag(run.info.run_id, STUDIES_TAG, ",".join([*studies, study]))
        if tags.get("arm") == "baseline" and ablation:
            have = [a for a in tags.get("ablation", "").split(",") if a]
            more = [a for a in ablation.split(",") if a and a not in have]
            if more:
                self.client.set_tag(run.info.run_id, "ablation", ",".join([*have, *more]))

    def open_sweep(self, sweep: str, params: Mapping[str, Any]) -> RunHandle:
        """The parent run of a sweep (tags ``kind=sweep``, ``sweep=<name>``): found again when
        the sweep resumes, else created with ``params`` (the sweep's settings, flattened)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.kind = 'sweep' and tags.sweep = '{sweep}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return RunHandle(self.client, run_id, resumed=True)
        tags = {"kind": "sweep", "sweep": sweep, "study": f"sweep-{sweep}", "git_sha": git_sha()}
        run = self.client.create_run(
            self.experiment_id, run_name=f"sweep {sweep}", tags=tags, start_time=_now_ms()
        )
        flat = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(run.info.run_id, params=flat[i : i + 100])
        return RunHandle(self.client, run.info.run_id)

    def end_cancelled(
        self, study: str, labels: Iterable[str], output_dir: str | Path | None = None
    ) -> list[str]:
        """Mark KILLED the RUNNING runs of ``study`` (``pipeline.study_tags``: shared runs too)
        named ``labels``, whose jobs were just cancelled: a process killed by the scheduler
        cannot end its run itself, and a RUNNING run would count as live (and be skipped) until
        its heartbeat went stale. With ``output_dir`` (the runs' folders), a run whose lease is
        still held is left alone: a live process (another study's job training a shared
        baseline, or a cancelled job still ending its own run) owns it. Returns the names of
        the runs marked."""
        wanted = set(labels)
        runs = search_study(
            lambda where: self.client.search_runs([self.experiment_id], filter_string=where),
            study,
            "attributes.status = 'RUNNING'",
        )
        marked = []
        for run in runs:
            if run.info.run_name not in wanted:
                continue
            config_hash = run.data.tags.get("config_hash")
            if (
                output_dir is not None
                and config_hash
                and lease_holder(Path(output_dir) / config_hash)
            ):
                continue
            self.client.set_tag(run.info.run_id, "failure_reason", "cancelled")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_name)
        return sorted(marked)

    def end_unowned(self, runs: Iterable[tuple[str, Path]]) -> list[str]:
        """Mark KILLED each RUNNING run among ``(config_hash, run folder)`` whose lease nobody
        holds: its process was stopped or killed and could not end the run itself. Returns the
        names of the runs marked."""
        marked = []
        for config_hash, folder in runs:
            run = self.find(config_hash)
            if run is None or run.info.status != "RUNNING" or lease_holder(folder):
                continue
            self.client.set_tag(run.info.run_id, "failure_reason", "interrupted")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_name)
        return sorted(marked)

    def retire(self, config_hash: str) -> None:
        """Move a run out of the way for ``--force``: MLflow's soft delete (``mlflow runs
        restore --run-id …`` brings it back)."""
        run = self.find(config_hash)
        if run is None:
            return
        self.client.delete_run(run.info.run_id)

    def open(self, spec: RunSpec, extra_tags: Mapping[str, str] | None = None) -> RunHandle:
        """Reopen the spec's run (finished or not) or create it; metrics are sent at least at
        every checkpoint step (``train.checkpoint_every``)."""
        every = int(spec.config.get("train", {}).get("checkpoint_every", 1))
        run = self.find(spec.config_hash)
        if run is not None:
            tags = spec.tags()
            self._join(run, tags["study"], tags["ablation"])
        if run is not None and run.info.status == "FINISHED":
            return RunHandle(self.client, run.info.run_id, finished=True)
        if run is not None:
            run_id = run.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            last = {
                key: max(m.step for m in self.client.get_metric_history(run_id, key))
                for key in run.data.metrics
            }
            handle = RunHandle(self.client, run_id, resumed=True, last_step=last, flush_every=every)
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
        return RunHandle(self.client, run.info.run_id, flush_every=every)


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["RunHandle", "RunStatus", "Tracker", "git_sha", "tracking_uri"]
