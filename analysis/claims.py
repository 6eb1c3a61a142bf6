"""The report's efficiency claims (parameters, latency, memory) beside what was measured.

Measured figures come from ``reports/benchmark.json`` (written by ``make benchmark``) and from
parameter counts the runs logged; the report's figures from ``conf/expectations.yaml``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from analysis.expectations import Expectations

DEFAULT_BENCHMARK = Path("reports") / "benchmark.json"
CLAIM_COLUMNS = ["claim", "unit", "report", "measured", "holds"]
COMPONENT_COLUMNS = ["model", "component", "report", "measured"]
# Run tags / params / metrics that prove an ablation took effect: parameter counts and the fusion
# module signature pipeline/run.py records (tags params_total, params_fusion, fusion_modules).
EVIDENCE_KEY = re.compile(
    r"^(tags|params|metrics)\..*(params_total|params_fusion|fusion_modules|num_params|n_params)$",
    re.IGNORECASE,
)


def load_benchmark(path: str | Path = DEFAULT_BENCHMARK) -> dict | None:
    """The benchmark file's content, or None when it is absent (``make benchmark`` writes it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun make benchmark") from err


def benchmark_claims(benchmark: dict, expectations: Expectations) -> pd.DataFrame:
    """One row per claim of the report's "Benchmark Results" table: ``CLAIM_COLUMNS``.

    ``holds`` judges the direction of each comparative claim (PSALM smaller, faster, heavier in
    memory); it is None for plain figures. Ratios are recomputed from the per-model figures when
    the file lacks them (``speedup`` = CHEAF / PSALM latency, ``param_reduction`` = 1 - PSALM /
    CHEAF params as a fraction, ``memory_ratio`` = PSALM / CHEAF peak memory).
    """
    report = expectations.benchmark or {}
    reported = report.get("models", {})
    measured = benchmark.get("models", {})
    rows = []
    for key, unit, label in (
        ("params", "parameters", "parameters"),
        ("latency_ms", "ms", "latency"),
        ("peak_mem_mb", "MB", "peak memory"),
    ):
        for model in ("cheaf", "psalm"):
            rows.append(
                {
                    "claim": f"{model.upper()} {label}",
                    "unit": unit,
                    "report": _number(reported.get(model, {}).get(key)),
                    "measured": _number(measured.get(model, {}).get(key)),
                    "holds": None,
                }
            )
    ratios = _ratios(measured)
    reduction = _number(benchmark.get("param_reduction", ratios["param_reduction"]))
    if abs(reduction) > 1:  # written in % rather than as a fraction
        reduction /= 100.0
    speedup = _number(benchmark.get("speedup", ratios["speedup"]))
    memory = _number(benchmark.get("memory_ratio", ratios["memory_ratio"]))
    rows += [
        {
            "claim": "PSALM has fewer parameters than CHEAF",
            "unit": "% fewer",
            "report": 100 * _number(report.get("param_reduction")),
            "measured": 100 * reduction,
            "holds": _holds(reduction > 0, reduction),
        },
        {
            "claim": "PSALM is faster than CHEAF",
            "unit": "x speedup",
            "report": _number(report.get("speedup")),
            "measured": speedup,
            "holds": _holds(speedup > 1, speedup),
        },
        {
            "claim": "PSALM uses more memory than CHEAF (the stated trade-off)",
            "unit": "% more",
            "report": 100 * (_number(report.get("memory_ratio")) - 1),
            "measured": 100 * (memory - 1),
            "holds": _holds(memory > 1, memory),
        },
    ]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def component_breakdown(benchmark: dict, expectations: Expectations) -> pd.DataFrame:
    """The report's "Parameter Breakdown" beside the measured ``params_by_component``.

    Components are matched by name, ignoring case and punctuation; unmatched ones keep NaN on
    the other side.
    """
    reported = (expectations.benchmark or {}).get("models", {})
    measured = benchmark.get("models", {})
    rows = []
    for model in ("cheaf", "psalm"):
        ours = dict(measured.get(model, {}).get("params_by_component") or {})
        theirs = dict(reported.get(model, {}).get("params_by_component") or {})
        ours_by_key = {_key(name): name for name in ours}
        for name, count in theirs.items():
            match = ours_by_key.pop(_key(name), None)
            rows.append(
                {
                    "model": model,
                    "component": name,
                    "report": _number(count),
                    "measured": _number(ours.get(match)) if match else math.nan,
                }
            )
        for name in ours_by_key.values():
            rows.append(
                {
                    "model": model,
                    "component": name,
                    "report": math.nan,
                    "measured": _number(ours[name]),
                }
            )
    return pd.DataFrame(rows, columns=COMPONENT_COLUMNS)


def parameter_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """What the runs recorded about their model's size, per model x arm: columns
    ``model, arm, key, values`` (the distinct values, as text).

    Shows that an ablation took effect (the variant's counts differ from the baseline's).
    """
    rows = []
    for key in sorted(c for c in runs.columns if EVIDENCE_KEY.match(c)):
        for (model, arm), group in runs[key].groupby([runs["model"], runs["arm"]], dropna=True):
            distinct = sorted({_as_text(v) for v in group.dropna()})
            if distinct:
                rows.append({"model": model, "arm": arm, "key": key, "values": tuple(distinct)})
    return pd.DataFrame(rows, columns=["model", "arm", "key", "values"])


def _as_text(value: object) -> str:
    number = _number(value)
    return str(int(number)) if math.isfinite(number) and number == int(number) else str(value)


def _ratios(models: dict) -> dict[str, float]:
    cheaf, psalm = models.get("cheaf", {}), models.get("psalm", {})

    def ratio(a: object, b: object) -> float:
        a, b = _number(a), _number(b)
        return a / b if math.isfinite(a) and math.isfinite(b) and b else math.nan

    return {
        "param_reduction": 1 - ratio(psalm.get("params"), cheaf.get("params")),
        "speedup": ratio(cheaf.get("latency_ms"), psalm.get("latency_ms")),
        "memory_ratio": ratio(psalm.get("peak_mem_mb"), cheaf.get("peak_mem_mb")),
    }


def _holds(condition: bool, value: float) -> bool | None:
    return bool(condition) if math.isfinite(value) else None


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())
