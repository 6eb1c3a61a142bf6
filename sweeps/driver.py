"""The sweep driver: ask Optuna for trials, dispatch each as a job, keep ``workers`` in flight.

    sweep = load_sweep("psalm", ["profile=smoke", "launcher=debug"])
    summary = drive(sweep)          # blocks until ``trials`` trials are complete/pruned/failed

The driver is the only process that asks (one sampler, seeded: with one worker a sweep is
reproducible); each trial job tells its own result (``sweeps.trial``). The driver holds no state
of its own: everything is in the Optuna storage (trial → its dispatch batch folder, in the
trial's user attributes) and in the batch folders, so killing the driver and running the same
command again picks up where it was:
- trials whose job is still queued or running are followed, not restarted;
- a RUNNING trial whose job has ended without telling (killed, crashed, never dispatched) is
  failed and retried with the same parameters (at most ``max_retries``); the retry's run has the
  same config hash, so it resumes that trial's checkpoint and MLflow run;
- a sampled parameter set equal to a COMPLETE trial's is not trained again: the trial is told
  that trial's value (user attribute ``duplicate_of``).

Trial 0 of a new sweep is the run config's own values (``Sweep.baseline``, user attribute
``baseline``), unless the sweep file sets ``baseline: false``; the summary compares the best
trial with it.

MLflow: a parent run per sweep (``kind=sweep``) holds the sweep's settings as params and, as the
sweep goes, its counts, best value, trial-steps and the best parameters; every trial's run is its
child (tags ``sweep``, ``trial``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from pipeline.config import REPO_ROOT, ConfigError, check_spec, make_spec
from pipeline.dispatch import (
    CANCEL_WAIT_S,
    FINAL_STATES,
    LauncherConfig,
    cancel,
    check_launcher,
    dispatch,
    local_slots,
    new_batch_id,
    status,
)
from pipeline.progress import Progress
from pipeline.tracking import RunHandle, Tracker, tracking_uri
from sweeps.config import Sweep, override
from sweeps.study import (
    best,
    counts,
    distributions,
    open_storage,
    open_study,
    trial_steps,
    used_budget,
)
from sweeps.trial import TrialJob, run_trial

log = logging.getLogger(__name__)

POLL_S = {"debug": 0.0, "local": 1.0, "slurm": 5.0}
PROGRESS_EVERY_S = 30.0


@dataclass
class Summary:
    """What a finished (or interrupted) sweep looks like, for the CLI, the note and MLflow."""

    sweep_id: str
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    # the run config's own values (trial 0): its value, or None if it was pruned, failed or is
    # not done; its state (None: the sweep has no baseline trial)
    baseline_value: float | None
    baseline_state: str | None
    trial_steps: int  # optimiser steps trained over all trials
    full_steps: int  # what they would have trained unpruned (trials × steps × seeds)
    wall_s: float
    trial_seconds: list[float] = field(default_factory=list)  # run time of each trained trial
    job_seconds: list[float] = field(default_factory=list)  # dispatch job time of each trial

    @property
    def steps_saved(self) -> float:
        """Share of trial-steps pruning saved against training every trial to the end."""
        return 1.0 - self.trial_steps / self.full_steps if self.full_steps else 0.0


def sweep_folder(sweep: Sweep, output_dir: str | Path = "runs") -> Path:
    """Dispatch files and job logs of a sweep: ``<output_dir>/sweeps/<sweep id>``."""
    root = Path(output_dir)
    return (root if root.is_absolute() else REPO_ROOT / root) / "sweeps" / sweep.sweep_id


def drive(sweep: Sweep, *, wait: bool = True) -> Summary:
    """Run the sweep to its trial budget (or, without ``wait``, dispatch one round and return)."""
    t0 = time.time()
    base = make_spec(list(sweep.run_overrides))
    check_spec(base)  # data files and K shots, before anything is dispatched
    launcher = LauncherConfig.from_mapping(base.config["launcher"])
    check_launcher(launcher)
    workers = sweep.workers
    if launcher.kind == "debug":
        workers = 1  # in this process, one trial after another
    elif launcher.kind == "local":  # each trial is its own batch: never more than the slots
        workers = min(workers, len(local_slots(launcher)))
    storage = open_storage(sweep, create=True)
    study = open_study(sweep, storage, create=True)
    space = distributions(sweep)
    if sweep.baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(sweep.baseline, user_attrs={"baseline": True})
    # Tell through a study without the sampler: the grid sampler calls Study.stop() once its grid
    # is visited, which Optuna allows only inside Study.optimize.
    teller = optuna.load_study(study_name=sweep.sweep_id, storage=storage)
    tracker = Tracker(
        tracking_uri(base.config["tracking"]["uri"]), base.config["tracking"]["experiment"]
    )
    parent = tracker.open_sweep(
        sweep.sweep_id, sweep.settings | {"run_overrides": list(sweep.run_overrides)}
    )
    folder = sweep_folder(sweep, base.config["output_dir"])
    log.info(
        f"sweep {sweep.sweep_id}: {sweep.trials} trials of {sweep.model} ({sweep.steps} steps"
        f"{f' × seeds {list(sweep.seeds)}' if sweep.seeds else ''}, "
        f"{sweep.metric} every {sweep.report_every or 'end'}"
        f"{f' ({sweep.report_note})' if sweep.report_note else ''}), "
        f"sampler {sweep.sampler['name']}, "
        f"pruner {sweep.pruner['name']}, {workers} worker(s) on {launcher.kind}; storage "
        f"{sweep.storage}; MLflow parent run {parent.run_id}"
    )
    progress = Progress(
        f"sweep {sweep.sweep_id}", sweep.trials, unit="trial", every_s=PROGRESS_EVERY_S
    )
    try:
        while True:
            optuna.storages.fail_stale_trials(study)  # heartbeats: dead processes, retried
            trials = study.get_trials(deepcopy=False)
            in_flight = _check_in_flight(study, storage, trials)
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            room = workers - len(in_flight)
            while room > 0 and (waiting or used_budget(trials) < sweep.trials):
                trial = study.ask(space)
                if not _deduplicate(teller, trial, trials):
                    _dispatch_trial(sweep, teller, trial, parent.run_id, launcher, folder)
                    room -= 1
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state == TrialState.WAITING for t in trials)
            progress.update(*_progress_text(sweep, trials))
            in_flight = [t for t in trials if t.state == TrialState.RUNNING]
            if not in_flight and not waiting and used_budget(trials) >= sweep.trials:
                break
            if not wait:
                log.info(f"submitted; follow with `python -m sweeps status {sweep.name} …`")
                break
            time.sleep(POLL_S[launcher.kind])
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (sweeps/__main__.py)
        progress.close()
        _stop_in_flight(study)
        raise
    summary = summarize(sweep, study.get_trials(deepcopy=False), time.time() - t0)
    _record(parent, summary, finished=wait)
    progress.update(*_progress_text(sweep, study.get_trials(deepcopy=False)))
    progress.close()
    return summary


def _stop_in_flight(study: optuna.Study) -> None:
    """The driver was interrupted: stop the jobs of the trials in flight. Each ends its MLflow
    run KILLED at a checkpoint, and the next ``sweeps run`` fails and retries the trial from
    there. (A driver killed outright leaves its jobs running: they report to the study
    themselves, and the next run finds them alive.)"""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    batches = [t.user_attrs["batch"] for t in running if t.user_attrs.get("batch")]
    for batch in batches:
        if Path(batch).exists():
            cancel(batch, wait_s=CANCEL_WAIT_S)
    log.warning(
        f"stopped {len(batches)} trial job(s) in flight; the next run of the same command "
        "retries them from their checkpoints"
    )


def _dispatch_trial(
    sweep: Sweep,
    study: optuna.Study,
    trial: optuna.Trial,
    parent_run: str,
    launcher: LauncherConfig,
    folder: Path,
) -> None:
    overrides = [
        *sweep.run_overrides,
        *(override(k, v) for k, v in trial.params.items()),
        f"label.study=sweep-{sweep.sweep_id}",
        f"label.sweep={sweep.sweep_id}",
        f"label.trial={trial.number}",
        f"label.parent_run={parent_run}",
        "label.arm=trial",
    ]
    seeds = [[f"seed={s}"] for s in sweep.seeds] or [[]]  # none: the run config's seed
    try:
        specs = tuple(make_spec([*overrides, *seed]) for seed in seeds)
    except ConfigError as exc:  # cannot happen for a validated space; fail the trial, say why
        trial.set_user_attr("failure", str(exc)[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return
    job = TrialJob(sweep=sweep, number=trial.number, specs=specs)
    batch_id = new_batch_id()
    trial.set_user_attr("config_hash", specs[0].config_hash)
    trial.set_user_attr("batch", str(folder / "dispatch" / batch_id))
    # (debug runs the trial here and now; local and slurm return once the job is queued)
    dispatch(
        [job],
        run_trial,
        launcher,
        folder,
        labels=[job.label],
        wait=False,
        progress=False,
        batch_id=batch_id,
    )


def _check_in_flight(
    study: optuna.Study, storage: BaseStorage, trials: list[FrozenTrial]
) -> list[FrozenTrial]:
    """RUNNING trials whose job is still alive; the others are failed and retried."""
    alive = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        batch = t.user_attrs.get("batch")
        if batch and Path(batch).exists():
            job = status(batch)[0]
            if job.state not in FINAL_STATES:
                alive.append(t)
                continue
            # The job ended: if it told the study, the state is no longer RUNNING.
            if _fresh(storage, study, t.number).state != TrialState.RUNNING:
                continue
            reason = f"its job ended ({job.state}: {job.detail or 'no detail'}) without a result"
        else:
            reason = (
                "it was never dispatched (the driver stopped)"
                if not batch
                else "its batch folder is gone"
            )
        _fail_and_retry(study, storage, t.number, reason)
    return alive


def _trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def _fresh(storage: BaseStorage, study: optuna.Study, number: int) -> FrozenTrial:
    """A trial as the storage has it now (the study's list may be cached)."""
    return storage.get_trial(_trial_id(storage, study, number))


def _fail_and_retry(study: optuna.Study, storage: BaseStorage, number: int, reason: str) -> None:
    trial_id = _trial_id(storage, study, number)
    try:
        storage.set_trial_user_attr(trial_id, "failure", reason)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # someone else (the job, a heartbeat check) finished it meanwhile
    retry = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    retry = retry or RetryHeartbeatStaleTrialCallback(
        max_retry=study.user_attrs.get("max_retries", 2)
    )
    retry(study, storage.get_trial(trial_id))


def _deduplicate(study: optuna.Study, trial: optuna.Trial, trials: list[FrozenTrial]) -> bool:
    """Tell ``trial`` the value of a COMPLETE trial with the same parameters, if there is one."""
    for t in trials:
        if t.state == TrialState.COMPLETE and t.params == trial.params and t.number != trial.number:
            trial.set_user_attr("duplicate_of", t.number)
            trial.set_user_attr("steps_trained", 0)
            study.tell(trial, t.value)
            return True
    return False


def summarize(sweep: Sweep, trials: list[FrozenTrial], wall_s: float) -> Summary:
    top = best(trials, sweep.direction)
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    trained = [t for t in counted if "duplicate_of" not in t.user_attrs]
    start = _baseline_trial(trials)
    return Summary(
        sweep_id=sweep.sweep_id,
        counts=counts(trials),
        best_value=None if top is None else top.value,
        best_params={} if top is None else dict(top.params),
        best_trial=None if top is None else top.number,
        # a pruned trial has a value too (its last report), but not the one a sweep compares
        baseline_value=start.value if start and start.state == TrialState.COMPLETE else None,
        baseline_state=None if start is None else start.state.name.lower(),
        trial_steps=sum(trial_steps(t) for t in trained),
        full_steps=len(trained) * sweep.trial_resource,
        wall_s=wall_s,
        trial_seconds=[
            float(t.user_attrs["seconds"]) for t in trained if "seconds" in t.user_attrs
        ],
        job_seconds=[
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trained
            if t.datetime_complete and t.datetime_start
        ],
    )


def _baseline_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The trial of the run config's own values: a retry copies the user attributes of the
    trial it retries, so the last copy that did not fail is the one that holds the value."""
    copies = [t for t in trials if t.user_attrs.get("baseline")]
    alive = [t for t in copies if t.state != TrialState.FAIL]
    return (alive or copies or [None])[-1]


def _record(parent: RunHandle, summary: Summary, finished: bool) -> None:
    c = summary.counts
    metrics = {f"sweep/{k}": v for k, v in c.items()}
    metrics["sweep/trial_steps"] = summary.trial_steps
    metrics["sweep/steps_saved"] = summary.steps_saved
    metrics["sweep/wall_s"] = summary.wall_s
    if summary.best_value is not None:
        metrics["sweep/best_value"] = summary.best_value
    if summary.baseline_value is not None:
        metrics["sweep/baseline_value"] = summary.baseline_value
    parent.log_metrics(metrics, c["complete"] + c["pruned"] + c["failed"])
    parent.set_tags(
        {"best_params": json.dumps(summary.best_params), "best_trial": str(summary.best_trial)}
    )
    if finished:
        parent.finish("FINISHED")
    else:
        parent.flush()


def _progress_text(sweep: Sweep, trials: list[FrozenTrial]) -> tuple[int, str]:
    """Trials ended so far, and the status text: the counts and the best value so far."""
    c = counts(trials)
    top = best(trials, sweep.direction)
    best_text = "-" if top is None else f"{top.value:.4f} (trial {top.number})"
    done = c["complete"] + c["pruned"] + c["failed"]
    text = (
        f"{done}/{sweep.trials} done: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed, {c['running']} running"
        + (f", {c['retried']} retried" if c["retried"] else "")
        + f" | best {sweep.metric} {best_text}"
    )
    return done, text
