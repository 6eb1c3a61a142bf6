"""Paired deltas: each variant run against the baseline run of the same seed, then mean and CI.

Pairing (``paired_deltas``): a variant run (``arm != "baseline"``) is paired with

- the run named by its ``eval_of`` tag when it has one (evaluation-only arms reuse the trained
  baseline), else
- the baseline run of the same ``model``, ``ablation`` and ``seed`` (a shared baseline tagged
  ``ablation=pyramid,conv,support`` serves each ablation it lists).

Per pair: ``delta_abs = variant - baseline`` in the metric's units (COCO AP as a fraction, so
0.05 is 5 AP points) and ``delta_rel = 100 * delta_abs / baseline`` in % of the baseline. Per
model x ablation x arm: the mean of the per-seed deltas and a confidence interval over them (by
default a two-sided 95 % Student t interval, ``mean +- t(n-1) * s / sqrt(n)``; ``"normal"`` gives
TFA's ``mean +- z * s / sqrt(n)``, which is too narrow for a handful of seeds).

Nothing is averaged in silently: runs that are not FINISHED, lack the metric or have a NaN, lack
the tags needed to place them, have no same-seed partner, or are superseded by a newer run of the
same cell land in ``PairedDeltas.excluded`` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import BASELINE_ARM, split_ablations

INTERVALS = {
    "t": "Student t over per-seed deltas (n-1 degrees of freedom)",
    "normal": "normal approximation over per-seed deltas (mean +- z*s/sqrt(n), TFA's protocol)",
}
CELL = ["model", "ablation", "arm"]
PAIR_COLUMNS = [
    *CELL,
    "seed",
    "baseline_run_id",
    "variant_run_id",
    "baseline_value",
    "variant_value",
    "delta_abs",
    "delta_rel",
]
SUMMARY_COLUMNS = [
    *CELL,
    "n",
    "seeds",
    "baseline_mean",
    "variant_mean",
    "delta_abs_mean",
    "delta_abs_ci_low",
    "delta_abs_ci_high",
    "delta_rel_mean",
    "delta_rel_ci_low",
    "delta_rel_ci_high",
    "n_excluded",
]
EXCLUDED_COLUMNS = ["run_id", "run_name", "model", "ablation", "arm", "seed", "reason"]


@dataclass(frozen=True)
class PairedDeltas:
    """Result of ``paired_deltas``: per-seed pairs, per-cell summary, and what was left out."""

    metric: str
    confidence: float
    interval: str  # a key of INTERVALS
    pairs: pd.DataFrame  # PAIR_COLUMNS, one row per model x ablation x arm x seed
    summary: pd.DataFrame  # SUMMARY_COLUMNS, one row per model x ablation x arm
    excluded: pd.DataFrame  # EXCLUDED_COLUMNS, one row per run and reason

    @property
    def interval_description(self) -> str:
        """E.g. ``95 % CI: Student t over per-seed deltas (n-1 degrees of freedom)``."""
        return describe_interval(self.confidence, self.interval)


def describe_interval(confidence: float, interval: str) -> str:
    """Human-readable name of an interval method, for tables and dashboards."""
    return f"{confidence * 100:g} % CI: {INTERVALS[interval]}"


def mean_ci(
    values: np.ndarray | list[float], confidence: float = 0.95, interval: str = "t"
) -> tuple[float, float, float]:
    """``(mean, low, high)`` of finite values; the bounds are NaN with fewer than two values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    half = float(half_width(np.array([std]), np.array([x.size]), confidence, interval)[0])
    return mean, mean - half, mean + half


def half_width(
    std: np.ndarray, n: np.ndarray, confidence: float = 0.95, interval: str = "t"
) -> np.ndarray:
    """Half the width of the interval for means of ``n`` values with sample std ``std``
    (element-wise); NaN where ``n < 2``."""
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} unknown; choose one of {sorted(INTERVALS)}")
    n = np.asarray(n, dtype=float)
    std = np.asarray(std, dtype=float)
    tail = (1.0 + confidence) / 2.0
    enough = n >= 2
    df = np.where(enough, n - 1, 1.0)
    q = stats.t.ppf(tail, df) if interval == "t" else np.full(n.shape, stats.norm.ppf(tail))
    return np.where(enough, q * std / np.sqrt(np.where(enough, n, 1.0)), np.nan)


def paired_deltas(
    runs: pd.DataFrame,
    metric: str = "test/nAP50",
    confidence: float = 0.95,
    interval: str = "t",
) -> PairedDeltas:
    """Pair variants with same-seed baselines and summarise the deltas (see module docstring).

    ``runs`` is a frame from ``analysis.load_runs`` (or one with the same columns).
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} unknown; choose one of {sorted(INTERVALS)}")
    excluded: list[dict] = []
    records = [_Record.of(row, metric) for row in _rows(runs)]
    by_id = {r.run_id: r for r in records}

    def exclude(record: _Record, reason: str, ablation: str | None = None, arm=None) -> None:
        excluded.append(
            {
                "run_id": record.run_id,
                "run_name": record.run_name,
                "model": record.model,
                "ablation": ablation if ablation is not None else ",".join(record.ablations),
                "arm": arm if arm is not None else record.arm,
                "seed": record.seed,
                "reason": reason,
            }
        )

    placeable = []
    for record in records:
        if record.tag_problem:
            exclude(record, record.tag_problem)
        elif record.arm != BASELINE_ARM and len(record.ablations) != 1:
            exclude(record, f"a variant run needs exactly one ablation, has {record.ablations}")
        else:
            placeable.append(record)

    baselines: dict[tuple, list[_Record]] = {}
    variants: dict[tuple, list[_Record]] = {}
    for record in placeable:
        if record.arm == BASELINE_ARM:
            for ablation in record.ablations:
                baselines.setdefault((record.model, ablation, record.seed), []).append(record)
        else:
            key = (record.model, record.ablations[0], record.arm, record.seed)
            variants.setdefault(key, []).append(record)

    chosen_baseline = {}
    for key, candidates in baselines.items():
        best, *rest = sorted(candidates, key=_preference)
        chosen_baseline[key] = best
        for other in rest:
            exclude(other, f"superseded by baseline run {best.run_id}", ablation=key[1])
    # Unusable baselines are reported once each, not once per ablation they serve.
    for record in {b.run_id: b for b in chosen_baseline.values() if b.problem}.values():
        exclude(record, record.problem)

    pairs: list[dict] = []
    cells: dict[tuple, int] = {}  # (model, ablation, arm) -> number of excluded variant runs
    partnered: set[tuple] = set()  # (ablation, arm, baseline run id) that have a variant
    for (model, ablation, arm, seed), candidates in variants.items():
        cell = (model, ablation, arm)
        cells.setdefault(cell, 0)
        variant, *rest = sorted(candidates, key=_preference)
        for other in rest:
            exclude(other, f"superseded by run {variant.run_id} of the same arm and seed")
            cells[cell] += 1
        if variant.eval_of:
            baseline = by_id.get(variant.eval_of)
            missing = f"its eval_of run {variant.eval_of} is not in this study"
        else:
            baseline = chosen_baseline.get((model, ablation, seed))
            missing = f"no baseline run with seed {seed} for {model}/{ablation}"
        if baseline is not None:
            partnered.add((ablation, arm, baseline.run_id))
        reason = None
        if variant.problem:
            reason = variant.problem
        elif baseline is None:
            reason = missing
        elif baseline.problem:
            reason = f"baseline run {baseline.run_id}: {baseline.problem}"
        elif baseline.value == 0:
            reason = f"baseline run {baseline.run_id} has {metric} = 0: relative change undefined"
        if reason:
            exclude(variant, reason)
            cells[cell] += 1
            continue
        delta = variant.value - baseline.value
        pairs.append(
            {
                "model": model,
                "ablation": ablation,
                "arm": arm,
                "seed": seed,
                "baseline_run_id": baseline.run_id,
                "variant_run_id": variant.run_id,
                "baseline_value": baseline.value,
                "variant_value": variant.value,
                "delta_abs": delta,
                "delta_rel": 100.0 * delta / baseline.value,
            }
        )

    # Baselines left without a partner in an arm that other seeds of the same cell have.
    arms_of = {}
    for model, ablation, arm in cells:
        arms_of.setdefault((model, ablation), set()).add(arm)
    for (model, ablation, seed), baseline in chosen_baseline.items():
        if baseline.problem:
            continue
        for arm in sorted(arms_of.get((model, ablation), ())):
            if (ablation, arm, baseline.run_id) not in partnered:
                exclude(
                    baseline,
                    f"unpaired baseline: no {arm} run with seed {seed}",
                    ablation=ablation,
                    arm=BASELINE_ARM,
                )

    pair_frame = pd.DataFrame(pairs, columns=PAIR_COLUMNS)
    pair_frame = pair_frame.sort_values([*CELL, "seed"], ignore_index=True)
    summary = _summarise(pair_frame, cells, confidence, interval)
    excluded_frame = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)
    excluded_frame["seed"] = excluded_frame["seed"].astype("Int64")
    return PairedDeltas(
        metric=metric,
        confidence=confidence,
        interval=interval,
        pairs=pair_frame,
        summary=summary,
        excluded=excluded_frame.sort_values(
            ["model", "ablation", "arm", "seed"], na_position="last", ignore_index=True
        ),
    )


def _summarise(
    pairs: pd.DataFrame, cells: dict[tuple, int], confidence: float, interval: str
) -> pd.DataFrame:
    order = sorted(cells, key=lambda cell: tuple(map(str, cell)))
    grouped = pairs.groupby(CELL, sort=False).agg(
        n=("delta_abs", "size"),
        seeds=("seed", lambda s: tuple(int(x) for x in s)),
        baseline_mean=("baseline_value", "mean"),
        variant_mean=("variant_value", "mean"),
        delta_abs_mean=("delta_abs", "mean"),
        delta_abs_std=("delta_abs", "std"),
        delta_rel_mean=("delta_rel", "mean"),
        delta_rel_std=("delta_rel", "std"),
    )
    summary = grouped.reindex(pd.MultiIndex.from_tuples(order, names=CELL)).reset_index()
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["seeds"] = summary["seeds"].map(lambda s: s if isinstance(s, tuple) else ())
    for kind in ("abs", "rel"):
        mean = summary[f"delta_{kind}_mean"]
        half = half_width(summary[f"delta_{kind}_std"], summary["n"], confidence, interval)
        summary[f"delta_{kind}_ci_low"] = mean - half
        summary[f"delta_{kind}_ci_high"] = mean + half
    summary["n_excluded"] = [cells[cell] for cell in order]
    return summary[SUMMARY_COLUMNS]


@dataclass(frozen=True)
class _Record:
    """One run, reduced to what pairing needs."""

    run_id: str
    run_name: str | None
    model: str | None
    arm: str | None
    ablations: tuple[str, ...]
    seed: int | None
    eval_of: str | None
    start_time: float
    value: float
    tag_problem: str | None  # cannot be placed in a cell
    problem: str | None  # placed, but its value must not be averaged in

    @classmethod
    def of(cls, row: dict, metric: str) -> _Record:
        model, arm = _text(row.get("model")), _text(row.get("arm"))
        ablations = split_ablations(row.get("ablation"))
        seed = row.get("seed")
        seed = None if seed is None or pd.isna(seed) else int(seed)
        missing = [
            name
            for name, v in (("model", model), ("arm", arm), ("ablation", ablations), ("seed", seed))
            if v is None or v == ()
        ]
        tag_problem = f"missing or invalid tag(s): {', '.join(missing)}" if missing else None
        value = row.get(f"metrics.{metric}")
        value = float(value) if value is not None and not pd.isna(value) else math.nan
        status = row.get("status")
        if status != "FINISHED":
            problem = f"status {status}"
        elif not math.isfinite(value):
            problem = f"{metric} is missing or not finite ({value})"
        else:
            problem = None
        start = row.get("start_time")
        return cls(
            run_id=str(row.get("run_id")),
            run_name=_text(row.get("run_name")),
            model=model,
            arm=arm,
            ablations=ablations,
            seed=seed,
            eval_of=_text(row.get("eval_of")),
            start_time=pd.Timestamp(start).value if start is not None and not pd.isna(start) else 0,
            value=value,
            tag_problem=tag_problem,
            problem=problem,
        )


def _preference(record: _Record) -> tuple:
    """Usable runs first, then the most recent."""
    return (record.problem is not None, -record.start_time)


def _rows(frame: pd.DataFrame):
    columns = list(frame.columns)
    for values in frame.itertuples(index=False, name=None):
        yield dict(zip(columns, values, strict=True))


def _text(value: object) -> str | None:
    if value is None or (not isinstance(value, tuple | list) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None
