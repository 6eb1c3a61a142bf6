"""Test fixtures for analysis/: studies with planted per-seed effects, as frames or MLflow runs.

A ``RunSpec``-like ``Planted`` row says what one run is (tags, status, final metric); the same
plan becomes either a runs frame (fast, no MLflow) or real runs in a SQLite MLflow store written
with MlflowClient, laid out as pipeline/tracking.py lays them out.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from analysis.runs import runs_frame

METRIC = "test/nAP50"
XSS_NAME = "<script>alert(1)</script>"
XSS_TAG = "<img src=x onerror=alert(2)>"


@dataclass(frozen=True)
class Planted:
    """One run to plant."""

    model: str
    ablation: str
    arm: str
    seed: int | None
    value: float  # final test/nAP50 (NaN allowed)
    status: str = "FINISHED"
    study: str = "planted"
    name: str | None = None
    eval_of_seed: bool = False  # tag eval_of = the same-seed baseline's run id
    tags: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # extra final metrics, e.g. diag/<part>_share
    profile: str = "default"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def plan_study(
    study: str,
    effects: dict[tuple[str, str, str], list[float]],
    base: float = 0.40,
    eval_arms: tuple[str, ...] = ("support_none", "support_shuffled"),
) -> list[Planted]:
    """Baselines and variants whose relative deltas (% of baseline) per seed are ``effects``.

    ``effects[(model, ablation, arm)] = [rel_delta_seed0, rel_delta_seed1, ...]``. Baseline of
    seed s: ``base + 0.01 * s``. Evaluation-only arms get ``eval_of`` set.
    """
    runs: list[Planted] = []
    baselines = set()
    for (model, ablation, arm), deltas in effects.items():
        for seed, rel in enumerate(deltas):
            value = base + 0.01 * seed
            if (model, ablation, seed) not in baselines:
                baselines.add((model, ablation, seed))
                runs.append(Planted(model, ablation, "baseline", seed, value, study=study))
            runs.append(
                Planted(
                    model,
                    ablation,
                    arm,
                    seed,
                    value * (1 + rel / 100),
                    study=study,
                    eval_of_seed=arm in eval_arms,
                )
            )
    return runs


def ratio_of_means(rels: list[float], base: float = 0.40) -> float:
    """The relative delta ``plan_study`` plants for per-seed ``rels``: 100 * mean(variant -
    baseline) / mean(baseline), baselines ``base + 0.01 * seed``."""
    baselines = [base + 0.01 * s for s in range(len(rels))]
    return 100 * sum(b * r / 100 for b, r in zip(baselines, rels, strict=True)) / sum(baselines)


def planted_study() -> list[Planted]:
    """The main planted study: every verdict, plus failed / NaN / unpaired / hostile runs."""
    runs = plan_study(
        "planted",
        {
            ("cheaf", "pyramid", "no_pyramid"): [-12.5, -12.0, -13.0, -12.5],  # within [-15, -10]
            ("psalm", "pyramid", "no_pyramid"): [-5.0, -4.0, -6.0, -5.0],  # smaller drop
            ("cheaf", "support", "support_none"): [-40.0, -41.0, -39.0, -40.0],  # larger drop
            ("psalm", "support", "support_none"): [5.0, 6.0, 4.0, 5.0],  # opposite sign
            ("cheaf", "support", "support_shuffled"): [-10.0, -30.0, -20.0, -25.0],  # straddles
            ("psalm", "support", "support_shuffled"): [-17.0],  # one seed: inconclusive
            ("psalm", "conv", "no_conv"): [-17.0, -16.0, -18.0],
        },
    )
    # psalm/conv: seed 0's baseline failed, seed 1's variant logged NaN -> one usable pair.
    runs = [
        _replace(r, status="FAILED", value=math.nan)
        if (r.model, r.ablation, r.arm, r.seed) == ("psalm", "conv", "baseline", 0)
        else _replace(r, value=math.nan)
        if (r.model, r.ablation, r.arm, r.seed) == ("psalm", "conv", "no_conv", 1)
        else r
        for r in runs
    ]
    runs += [
        Planted("psalm", "conv", "no_conv", 7, 0.30),  # no baseline with seed 7
        # A failed variant with an absurd value must not drag the mean.
        Planted("cheaf", "pyramid", "no_pyramid", 9, 0.01, status="FAILED"),
        Planted("cheaf", "pyramid", "no_pyramid", 8, 0.2, status="RUNNING"),
        Planted(
            "cheaf", "pyramid", "baseline", 5, 0.5, name=XSS_NAME, tags={"profile": XSS_TAG}
        ),  # an unpaired baseline (no no_pyramid with seed 5), with a hostile name
    ]
    return runs


def shared_baseline_study() -> list[Planted]:
    """Shared-baseline layout: one baseline per model x seed tagged ``pyramid,conv,support``."""
    runs = []
    for seed in range(3):
        value = 0.5 + 0.01 * seed
        base = Planted("cheaf", "pyramid,conv,support", "baseline", seed, value, study="shared")
        runs.append(base)
        for ablation, arm, rel in (
            ("pyramid", "no_pyramid", -12.0),
            ("conv", "no_conv", -7.5),
            ("support", "support_none", -25.0),
        ):
            rel += 0.2 * (seed - 1)
            runs.append(
                Planted(
                    "cheaf",
                    ablation,
                    arm,
                    seed,
                    value * (1 + rel / 100),
                    study="shared",
                    eval_of_seed=arm == "support_none",
                )
            )
    return runs


def moved_study() -> list[Planted]:
    """Study B of a comparison: CHEAF's pyramid costs twice what it cost in ``planted``, PSALM's
    pyramid is unchanged, the support ablation was not run."""
    return plan_study(
        "planted_b",
        {
            ("cheaf", "pyramid", "no_pyramid"): [-25.0, -24.0, -26.0, -25.0],
            ("psalm", "pyramid", "no_pyramid"): [-5.0, -4.0, -6.0, -5.0],
        },
    )


def load_bearing_study(shares: dict[tuple[str, str], list[float] | None]) -> list[Planted]:
    """A pyramid + support study whose baselines log ``diag/<part>_share`` per seed.

    Every arm is planted *within* its range, so only the load-bearing gate can change a verdict.
    ``shares[(model, part)]`` is the per-seed share (a fraction), or None for "not logged".
    """
    effects = {
        ("cheaf", "pyramid", "no_pyramid"): [-12.5, -12.0, -13.0, -12.5],
        ("psalm", "pyramid", "no_pyramid"): [-25.0, -24.0, -26.0, -25.0],
        ("cheaf", "support", "support_none"): [-25.0, -24.5, -25.5, -25.0],
        ("psalm", "support", "support_bypass"): [-17.5, -17.0, -18.0, -17.5],
    }
    runs = plan_study("gated", effects, eval_arms=("support_none", "support_bypass"))
    out = []
    for r in runs:
        if r.arm == "baseline":
            metrics = {}
            for (model, part), values in shares.items():
                if model == r.model and values is not None:
                    metrics[f"diag/{part}_share"] = values[r.seed]
            r = _replace(r, metrics=metrics)
        out.append(r)
    return out


def smoke_study() -> list[Planted]:
    """A smoke-profile study: planted 'within' effects whose verdicts must be greyed."""
    runs = plan_study("tiny-smoke", {("cheaf", "pyramid", "no_pyramid"): [-12.5, -12.0, -13.0]})
    return [_replace(r, profile="smoke") for r in runs]


def as_frame(runs: list[Planted]) -> pd.DataFrame:
    """The runs as ``analysis.load_runs`` would return them (built without MLflow)."""
    return runs_frame(_fake_run(r, runs, i) for i, r in enumerate(runs))


def log_to_mlflow(tracking_uri: str, runs: list[Planted], histories: bool = True) -> None:
    """Create the runs in an MLflow store with learning curves: study ``shared`` in its own
    experiment, the others in ``psalm`` (as pipeline/tracking.py does)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments: dict[str, str] = {}
    real_ids: dict[str, str] = {}
    for i, r in enumerate(runs):
        name = "other" if r.study == "shared" else "psalm"
        if name not in experiments:
            existing = client.get_experiment_by_name(name)
            experiments[name] = (
                existing.experiment_id if existing else client.create_experiment(name)
            )
        tags = _tags(r, runs)
        if "eval_of" in tags:
            tags["eval_of"] = real_ids[tags["eval_of"]]
        run = client.create_run(
            experiments[name], start_time=1_700_000_000_000 + i * 1000, run_name=_name(r)
        )
        real_ids[r.run_id] = run.info.run_id
        metrics = [Metric(METRIC, r.value, 0, 0), Metric("test/nAP", r.value / 2, 0, 0)]
        metrics += [Metric(k, v, 0, 0) for k, v in r.metrics.items()]
        if histories and not r.eval_of_seed and r.seed is not None:
            for step in range(0, 50, 10):
                metrics.append(Metric("train/loss", 2.0 / (1 + step / 10 + r.seed), 0, step))
                metrics.append(Metric("val/nAP50", r.value * step / 40, 0, step))
        params = [Param("model.name", r.model), Param("train.steps", "40")]
        # what pipeline/run.py records to show that an ablation took effect
        tags |= {"params_total": 5000 + len(r.arm), "params_fusion": 1000 + len(r.arm)}
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=params,
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        client.set_terminated(run.info.run_id, status=r.status)


@functools.cache
def planted_store() -> str:
    """A SQLite MLflow store holding the planted, shared and planted_b studies (built once per
    test process, removed at exit). Returns its tracking URI."""
    # SQLite commits are several times faster in memory (tmpfs) than on disk.
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="analysis-store-", dir=where))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    gated = load_bearing_study(
        {
            ("cheaf", "use_pyramid_refinement"): [0.20, 0.22, 0.18, 0.20],  # load-bearing
            ("psalm", "use_pyramid"): [0.01, 0.02, 0.015, 0.015],  # inert: 1.5 %
            ("cheaf", "support_none"): None,  # not measured (an older run)
            ("psalm", "support_bypass"): [0.30, 0.30, 0.30, 0.30],
        }
    )
    log_to_mlflow(
        uri, planted_study() + shared_baseline_study() + moved_study() + gated + smoke_study()
    )
    return uri


def _replace(run: Planted, **changes) -> Planted:
    from dataclasses import replace

    return replace(run, **changes)


def _name(run: Planted) -> str:
    return run.name or f"{run.model}-{run.ablation.replace(',', '+')}-{run.arm}-s{run.seed}"


def _tags(run: Planted, runs: list[Planted]) -> dict[str, str]:
    tags = {
        "study": run.study,
        "ablation": run.ablation,
        "arm": run.arm,
        "model": run.model,
        "config_hash": uuid.uuid5(uuid.NAMESPACE_OID, run.run_id).hex[:12],
        "git_sha": "abc1234",
        "profile": run.profile,
    }
    if run.seed is not None:
        tags["seed"] = str(run.seed)
    if run.eval_of_seed:
        tags["eval_of"] = next(
            b.run_id
            for b in runs
            if b.arm == "baseline"
            and b.study == run.study
            and b.model == run.model
            and run.ablation in b.ablation.split(",")
            and b.seed == run.seed
        )
    tags.update(run.tags)
    return tags


def _fake_run(run: Planted, runs: list[Planted], index: int) -> SimpleNamespace:
    """Duck-typed ``mlflow.entities.Run`` (the attributes ``runs_frame`` reads)."""
    metrics = {METRIC: run.value, "test/nAP": run.value / 2, **run.metrics}
    return SimpleNamespace(
        info=SimpleNamespace(
            run_id=run.run_id,
            run_name=_name(run),
            experiment_id="1",
            status=run.status,
            start_time=1_700_000_000_000 + index * 1000,
            end_time=1_700_000_000_000 + index * 1000 + 500,
        ),
        data=SimpleNamespace(tags=_tags(run, runs), metrics=metrics, params={}),
    )
