"""Reads the ablation studies back from MLflow and judges them against the PSALM report.

MLflow runs -> tidy pandas frame (``load_runs``) -> paired per-seed deltas with confidence
intervals (``paired_deltas``) -> verdicts against ``conf/expectations.yaml`` (``verdict_table``),
shown as tables, plots, a notebook and an HTML dashboard. ``analyze_study`` does it all in one
call. This package is the project's only MLflow reader. Command line: ``python -m analysis``.
"""

from analysis.claims import benchmark_claims, component_breakdown, load_benchmark
from analysis.compare import compare_studies, write_comparison
from analysis.dashboard import curve_keys, write_dashboard
from analysis.deltas import PairedDeltas, mean_ci, paired_deltas
from analysis.expectations import Expectations, ExpectedRange, load_expectations
from analysis.plots import plot_deltas, plot_learning_curves
from analysis.runs import list_studies, load_metric_histories, load_runs, resolve_tracking_uri
from analysis.study import StudyAnalysis, analyze_runs, analyze_study
from analysis.verdicts import VERDICTS, format_verdicts, judge, verdict_table

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
