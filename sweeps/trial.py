"""One sweep trial as a dispatch job: ``run_trial(TrialJob)`` trains the trial's ``RunSpec`` with
``pipeline.run.run`` and reports to the Optuna study itself, from whatever process or node it
runs on (the study lives in shared storage, so pruning works across processes).

- Each validation (``train.eval_every`` = the sweep's ``report_every``) reports the metric as an
  intermediate value and asks the pruner; a pruned trial stops training there (checkpoint kept,
  MLflow run KILLED with ``pruned_at_step``) and is told PRUNED. The baseline trial (the run
  config's own values) reports but is never pruned: it is what the sweep's result is compared
  with, so it must have a value.
- A run that raises (e.g. a diverged loss) is told FAIL with the reason: a deterministic failure,
  not retried. A process that dies without telling is found by the driver (its job ended) or by
  the storage's heartbeat, and retried.
- A requeued job (timeout, preemption) calls ``run_trial`` again: the trial is still RUNNING, so
  it goes on, and ``run`` resumes from the checkpoint into the same MLflow run.
- With the sweep's ``seeds``, the trial trains one run per seed in turn (a seed already
  FINISHED is skipped on a requeue) and is told their mean. Seed i's validations are reported
  at ``i × steps + step``: the pruner compares trials on the same seed at the same step.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.config import RunSpec
from pipeline.run import run
from sweeps.config import Sweep
from sweeps.study import make_pruner, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialJob:
    """What a dispatched trial needs: the sweep, the Optuna trial number and the runs to train
    (one per seed of the sweep, in order)."""

    sweep: Sweep
    number: int
    specs: tuple[RunSpec, ...]

    @property
    def label(self) -> str:
        return f"trial {self.number} ({self.specs[0].config_hash[:8]})"


class _Heartbeat:
    """Records the trial's heartbeat in the storage every ``interval`` s while training."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(self.interval)

    def __enter__(self) -> _Heartbeat:
        if getattr(self.storage, "get_heartbeat_interval", lambda: None)() is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Train one trial and tell the study how it ended; returns what was told."""
    sweep = job.sweep
    storage = open_storage(sweep)
    study = optuna.load_study(study_name=sweep.sweep_id, storage=storage, pruner=make_pruner(sweep))
    study_id = storage.get_study_id_from_name(sweep.sweep_id)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, job.number)
    state = storage.get_trial(trial_id).state
    if state != TrialState.RUNNING:  # failed by a heartbeat check meanwhile: a retry has it
        log.info(f"[{job.label}] is {state.name}; nothing to do")
        return {"number": job.number, "state": state.name}
    trial = optuna.trial.Trial(study, trial_id)
    attempts = int(storage.get_trial(trial_id).user_attrs.get("attempts", 0)) + 1
    trial.set_user_attr("attempts", attempts)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    prunable = not storage.get_trial(trial_id).user_attrs.get("baseline")
    reported: dict[str, int] = {"last": 0}
    offset = {"steps": 0}  # seed i's steps are reported after the earlier seeds' (i × steps)

    def on_validation(step: int, values: dict[str, float]) -> bool:
        trial.report(values[sweep.metric], offset["steps"] + step)
        reported["last"] = offset["steps"] + step
        return prunable and trial.should_prune()

    t0 = time.perf_counter()
    trial.set_user_attr("config_hash", job.specs[0].config_hash)
    values, run_ids, trained = [], [], 0

    def tell(state: TrialState, steps: int, value: float | None = None) -> None:
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        trial.set_user_attr("steps_trained", steps)
        study.tell(job.number, value, state=state)

    with _Heartbeat(storage, trial_id, sweep.heartbeat_s):
        for i, spec in enumerate(job.specs):
            offset["steps"] = i * sweep.steps
            try:
                result = run(spec, on_validation=on_validation)
            except Exception as exc:
                trial.set_user_attr("failure", f"{type(exc).__name__}: {exc}"[:2000])
                tell(TrialState.FAIL, trained + max(0, reported["last"] - offset["steps"]))
                log.warning(f"[{job.label}] failed: {exc}")
                return {"number": job.number, "state": "FAIL", "error": str(exc)}
            run_ids.append(result["run_id"])
            trial.set_user_attr("run_id", run_ids[0])
            if len(job.specs) > 1:
                trial.set_user_attr("run_ids", run_ids)
            if result.get("pruned_at"):
                tell(TrialState.PRUNED, trained + int(result["pruned_at"]))
                step = offset["steps"] + int(result["pruned_at"])
                return {"number": job.number, "state": "PRUNED", "step": step}
            value = result.get(sweep.metric)
            if value is None:
                trial.set_user_attr("failure", f"the run recorded no {sweep.metric}")
                tell(TrialState.FAIL, trained + sweep.steps)
                return {"number": job.number, "state": "FAIL", "error": f"no {sweep.metric}"}
            values.append(float(value))
            trained += 0 if result.get("skipped") else sweep.steps
    if len(values) > 1:
        trial.set_user_attr("seed_values", values)
    value = sum(values) / len(values)
    tell(TrialState.COMPLETE, trained, value)
    return {"number": job.number, "state": "COMPLETE", "value": value}
