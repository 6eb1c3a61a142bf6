"""One study analysed end to end: runs -> paired deltas -> verdicts, in one frozen result.

The CLI, the dashboard and the notebook all start from ``analyze_study``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.deltas import PairedDeltas, paired_deltas
from analysis.expectations import Expectations, load_expectations
from analysis.runs import load_runs, resolve_tracking_uri
from analysis.verdicts import verdict_table


@dataclass(frozen=True)
class StudyAnalysis:
    """A study's runs, paired deltas and verdicts, and what they were computed with."""

    study: str
    tracking_uri: str
    expectations: Expectations
    runs: pd.DataFrame  # analysis.runs.load_runs
    deltas: PairedDeltas
    verdicts: pd.DataFrame  # analysis.verdicts.VERDICT_COLUMNS

    @property
    def metric(self) -> str:
        """The metric the deltas and verdicts are about, e.g. ``test/nAP50``."""
        return self.deltas.metric


def analyze_study(
    study: str,
    tracking_uri: str | None = None,
    metric: str | None = None,
    expectations: Expectations | str | Path | None = None,
    interval: str = "t",
) -> StudyAnalysis:
    """Read a study from MLflow and judge it (metric default: the expectations file's)."""
    uri = resolve_tracking_uri(tracking_uri)
    return analyze_runs(load_runs(study, uri), study, uri, metric, expectations, interval)


def analyze_runs(
    runs: pd.DataFrame,
    study: str,
    tracking_uri: str = "",
    metric: str | None = None,
    expectations: Expectations | str | Path | None = None,
    interval: str = "t",
) -> StudyAnalysis:
    """Judge an already loaded runs frame (what ``analyze_study`` does after reading MLflow)."""
    if not isinstance(expectations, Expectations):
        expectations = load_expectations(expectations)
    deltas = paired_deltas(
        runs, metric or expectations.metric, expectations.confidence, interval=interval
    )
    return StudyAnalysis(
        study=study,
        tracking_uri=tracking_uri,
        expectations=expectations,
        runs=runs,
        deltas=deltas,
        verdicts=verdict_table(deltas, expectations),
    )
