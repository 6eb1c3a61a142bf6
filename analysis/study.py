"""One study analysed end to end: runs -> paired deltas -> verdicts, in one frozen result.

The CLI, the dashboard and the notebook all start from ``analyze_study``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.arms import ArmNotes, load_arm_notes
from analysis.deltas import PairedDeltas, paired_deltas
from analysis.expectations import Expectations, load_expectations
from analysis.runs import load_runs, load_study_design, load_study_metric, resolve_tracking_uri
from analysis.sequential import SeedSchedule
from analysis.verdicts import verdict_table
from psalm.options import check_metric


@dataclass(frozen=True)
class StudyAnalysis:
    """A study's runs, paired deltas and verdicts, and what they were computed with."""

    study: str
    tracking_uri: str
    expectations: Expectations
    runs: pd.DataFrame  # analysis.runs.load_runs
    deltas: PairedDeltas
    verdicts: pd.DataFrame  # analysis.verdicts.VERDICT_COLUMNS
    notes: ArmNotes = ArmNotes()  # what each arm removes, and the part it removes
    schedule: SeedSchedule | None = None  # the study ran seeds=auto with this schedule

    @property
    def metric(self) -> str:
        """The metric the deltas and verdicts are about, e.g. ``test/nAP50``."""
        return self.deltas.metric

    @functools.cached_property
    def digest(self) -> str:
        """A hash of what a report of the study shows: its runs (ids, states, metrics, tags),
        verdicts and the metric; equal digests mean a report written before is still current."""
        text = "\n".join(
            [
                self.metric,
                self.runs.to_json(date_format="iso", default_handler=str),
                self.verdicts.to_json(date_format="iso", default_handler=str),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def analyze_study(
    study: str,
    tracking_uri: str | None = None,
    metric: str | None = None,
    expectations: Expectations | str | Path | None = None,
    interval: str = "t",
) -> StudyAnalysis:
    """Read a study from MLflow and judge it (metric default: the one the study was run with,
    ``metric=`` or its study file's ``metric:``, else the expectations file's).

    A study run with ``seeds=auto`` (its parent run in MLflow says so) is judged with the
    anytime-valid intervals of ``analysis.sequential``, whatever ``interval`` says: a fixed-n
    interval read after optional stopping would not hold its level.
    """
    if metric is not None:
        check_metric(metric)  # before MLflow is read
    if not isinstance(expectations, Expectations):
        expectations = load_expectations(expectations)  # a bad file: before MLflow is read
    uri = resolve_tracking_uri(tracking_uri)
    runs = load_runs(study, uri)
    schedule = load_study_design(study, uri)
    metric = metric or load_study_metric(study, uri)
    return analyze_runs(runs, study, uri, metric, expectations, interval, schedule=schedule)


def analyze_runs(
    runs: pd.DataFrame,
    study: str,
    tracking_uri: str = "",
    metric: str | None = None,
    expectations: Expectations | str | Path | None = None,
    interval: str = "t",
    notes: ArmNotes | None = None,
    schedule: SeedSchedule | None = None,
) -> StudyAnalysis:
    """Judge an already loaded runs frame (what ``analyze_study`` does after reading MLflow).

    ``notes`` default: the study files of the ablations the runs belong to.
    """
    if not isinstance(expectations, Expectations):
        expectations = load_expectations(expectations)
    if notes is None:
        ablations = sorted({a for tags in runs["ablations"] for a in tags}) if len(runs) else []
        notes = load_arm_notes(ablations)
    if schedule is not None:
        interval = "anytime"
    metric = check_metric(metric or expectations.metric)
    logged = sorted(c[len("metrics.") :] for c in runs.columns if c.startswith("metrics.test/"))
    finished = len(runs) and (runs["status"] == "FINISHED").any()
    if finished and f"metrics.{metric}" not in runs.columns:
        raise LookupError(
            f"no run of study {study!r} logged {metric}; its finished runs logged "
            f"{', '.join(logged)} (--metric chooses; test/st_iou is logged on video data only)"
        )
    deltas = paired_deltas(runs, metric, expectations.confidence, interval=interval)
    return StudyAnalysis(
        study=study,
        tracking_uri=tracking_uri,
        expectations=expectations,
        runs=runs,
        deltas=deltas,
        verdicts=verdict_table(deltas, expectations, runs, notes, schedule),
        notes=notes,
        schedule=schedule,
    )
