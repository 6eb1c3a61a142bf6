"""Reads the ablation studies back from MLflow and judges them against the PSALM report.

MLflow runs -> tidy pandas frame (``load_runs``) -> paired per-seed deltas with confidence
intervals (``paired_deltas``) -> verdicts against ``conf/expectations.yaml`` (``verdict_table``),
shown as tables, plots, a notebook and an HTML dashboard. ``analyze_study`` does it all in one
call. This package is the project's only MLflow reader. Command line: ``psalm-analysis`` =
``python -m analysis``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.claims import benchmark_claims, component_breakdown, load_benchmark
    from analysis.compare import compare_studies, write_comparison
    from analysis.dashboard import curve_keys, write_dashboard
    from analysis.deltas import PairedDeltas, mean_ci, paired_deltas
    from analysis.expectations import Expectations, ExpectedRange, load_expectations
    from analysis.plots import plot_deltas, plot_learning_curves
    from analysis.runs import list_studies, load_metric_histories, load_runs, resolve_tracking_uri
    from analysis.study import StudyAnalysis, analyze_runs, analyze_study
    from analysis.verdicts import VERDICTS, format_verdicts, judge, verdict_table

# name -> the module that defines it; loaded on first use, so that `python -m analysis --help`
# needs no pandas, matplotlib or MLflow.
_EXPORTS = {
    "benchmark_claims": "analysis.claims",
    "component_breakdown": "analysis.claims",
    "load_benchmark": "analysis.claims",
    "compare_studies": "analysis.compare",
    "write_comparison": "analysis.compare",
    "curve_keys": "analysis.dashboard",
    "write_dashboard": "analysis.dashboard",
    "PairedDeltas": "analysis.deltas",
    "mean_ci": "analysis.deltas",
    "paired_deltas": "analysis.deltas",
    "Expectations": "analysis.expectations",
    "ExpectedRange": "analysis.expectations",
    "load_expectations": "analysis.expectations",
    "plot_deltas": "analysis.plots",
    "plot_learning_curves": "analysis.plots",
    "list_studies": "analysis.runs",
    "load_metric_histories": "analysis.runs",
    "load_runs": "analysis.runs",
    "resolve_tracking_uri": "analysis.runs",
    "StudyAnalysis": "analysis.study",
    "analyze_runs": "analysis.study",
    "analyze_study": "analysis.study",
    "VERDICTS": "analysis.verdicts",
    "format_verdicts": "analysis.verdicts",
    "judge": "analysis.verdicts",
    "verdict_table": "analysis.verdicts",
}

__all__ = [
    "VERDICTS",
    "Expectations",
    "ExpectedRange",
    "PairedDeltas",
    "StudyAnalysis",
    "analyze_runs",
    "analyze_study",
    "benchmark_claims",
    "compare_studies",
    "component_breakdown",
    "curve_keys",
    "format_verdicts",
    "judge",
    "list_studies",
    "load_benchmark",
    "load_expectations",
    "load_metric_histories",
    "load_runs",
    "mean_ci",
    "paired_deltas",
    "plot_deltas",
    "plot_learning_curves",
    "resolve_tracking_uri",
    "verdict_table",
    "write_comparison",
    "write_dashboard",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
