"""The Optuna side of a sweep: storage, sampler, pruner, the study, and reading its trials.

Storage (``storage:`` in the sweep file):
- default ``sqlite:///optuna.db`` in the repo: fine for a laptop's few workers;
- ``postgresql://user@host/db`` (or any SQLAlchemy URL): Optuna's RDB storage on a database
  server, the design for a cluster's many concurrent workers (a journal file on NFS has
  reported corruption);
- ``journal:<file>``: Optuna's journal file (one machine; no heartbeats).

RDB storages record a heartbeat per running trial (``heartbeat_s``): a trial whose process died
without a word is failed after ``2 × heartbeat_s`` and retried (a copy with the same parameters,
at most ``max_retries`` times) by ``RetryHeartbeatStaleTrialCallback``; the retry's run has the same
config hash, so it resumes the dead trial's checkpoint and MLflow run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from pipeline.config import ConfigError
from sweeps.config import Sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and retries are marked experimental, and ask-and-tell with a heartbeat storage warns
# that heartbeats are meant for Study.optimize: this package records them itself (sweeps.trial).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def distributions(sweep: Sweep) -> dict[str, optuna.distributions.BaseDistribution]:
    """The search space as Optuna distributions, for ``study.ask``."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in sweep.space:
        if p.kind == "categorical":
            out[p.key] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            out[p.key] = optuna.distributions.IntDistribution(
                int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
            )
        else:
            out[p.key] = optuna.distributions.FloatDistribution(
                p.low, p.high, log=p.log, step=p.step
            )
    return out


def open_storage(sweep: Sweep, *, create: bool = False) -> optuna.storages.BaseStorage:
    """The sweep's storage; ``create`` makes a missing SQLite or journal file (and its folder).
    An unreachable or malformed storage is a ``ConfigError`` naming the URL."""
    url = sweep.storage
    for prefix in ("sqlite:///", "journal:"):
        path = Path(url.removeprefix(prefix))
        if url.startswith(prefix) and not path.exists():
            if not create:
                raise ConfigError(f"no sweep storage at {path}: run the sweep first ({url})")
            path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    # Several trial processes write one SQLite file: wait for its lock instead of failing.
    engine_kwargs = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    )
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=sweep.heartbeat_s,
            grace_period=2 * sweep.heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=sweep.max_retries
            ),
        )
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot open the sweep storage {url}: {exc}") from exc


def make_sampler(sweep: Sweep, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep's sampler, seeded with ``sampler.seed + offset``: a resumed driver passes the
    number of trials so far, or its random start would propose the first trials' values again."""
    s = sweep.sampler
    seed = None if s.get("seed") is None else int(s["seed"]) + offset
    if s["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s["name"] == "grid":
        grid = {p.key: p.grid_values() for p in sweep.space}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=int(s.get("startup_trials", 5)), constant_liar=True
    )


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    p = sweep.pruner
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    if p["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(p.get("min_resource", sweep.report_every)),
            max_resource=sweep.trial_resource,
            reduction_factor=int(p.get("reduction_factor", 3)),
        )
    if p["name"] == "threshold":  # stop trials outside [lower, upper] (e.g. a dead model)
        return optuna.pruners.ThresholdPruner(lower=p.get("lower"), upper=p.get("upper"))
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(p.get("startup_trials", 3)),
        n_warmup_steps=int(p.get("warmup_steps", 0)),
    )


def open_study(
    sweep: Sweep, storage: optuna.storages.BaseStorage, *, create: bool = False
) -> optuna.Study:
    """The sweep's study (``create``: make it if new, and refuse to resume a changed sweep)."""
    offset = 0
    if create:
        known = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
        offset = known[sweep.sweep_id].n_trials if sweep.sweep_id in known else 0
    kwargs = dict(
        study_name=sweep.sweep_id,
        storage=storage,
        sampler=make_sampler(sweep, offset),
        pruner=make_pruner(sweep),
    )
    if not create:
        return optuna.load_study(**kwargs)
    study = optuna.create_study(direction=sweep.direction, load_if_exists=True, **kwargs)
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", sweep.fingerprint())
        study.set_user_attr("metric", sweep.metric)
        study.set_user_attr("steps", sweep.steps)
        study.set_user_attr("max_retries", sweep.max_retries)
    elif saved != sweep.fingerprint():
        raise ConfigError(
            f"sweep {sweep.sweep_id} already exists in {sweep.storage} with another search space, "
            "metric or run overrides; resume it unchanged, or give this one another storage "
            f"(storage=…) or delete the old one (optuna delete-study --study-name "
            f"{sweep.sweep_id} --storage {sweep.storage})"
        )
    return study


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that have a retry (their work goes on in another trial)."""
    numbers = set()
    for t in trials:
        n = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if n is not None:
            numbers.add(n)
    return numbers


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials per state; a failed trial with a retry is counted as ``retried``, not failed."""
    again = retried(trials)
    out = {"complete": 0, "pruned": 0, "failed": 0, "retried": 0, "running": 0, "waiting": 0}
    for t in trials:
        if t.state == TrialState.FAIL and t.number in again:
            out["retried"] += 1
        else:
            out[_STATE_NAMES[t.state]] += 1
    return out


def used_budget(trials: list[FrozenTrial]) -> int:
    """Trials that count against ``trials``: all but retried failures and queued retries."""
    c = counts(trials)
    return c["complete"] + c["pruned"] + c["failed"] + c["running"]


def best(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    return (max if direction == "maximize" else min)(done, key=lambda t: t.value)


def trial_steps(trial: FrozenTrial) -> int:
    """Optimiser steps a trial trained (recorded by the trial; duplicates trained none)."""
    return int(trial.user_attrs.get("steps_trained", 0))


_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def params_json(trial: FrozenTrial) -> str:
    return json.dumps(trial.params, sort_keys=True)
