"""Paired deltas: each variant run against the baseline run of the same seed, then mean and CI.

Pairing (``paired_deltas``): a variant run (``arm != "baseline"``) is paired with

- the run named by its ``eval_of`` tag when it has one (evaluation-only arms reuse the trained
  baseline), else
- the baseline run of the same ``model``, ``ablation`` and ``seed`` (a shared baseline tagged
  ``ablation=pyramid,conv,support`` serves each ablation it lists).

Per pair: ``delta_abs = variant - baseline`` in the metric's units (COCO AP as a fraction, so
0.05 is 5 AP points). Per model x ablation x arm:

- absolute: the mean of the per-seed deltas and a confidence interval over them (by default a
  two-sided 95 % Student t interval, ``mean +- t(n-1) * s / sqrt(n)``; ``"normal"`` gives TFA's
  ``mean +- z * s / sqrt(n)``, which is too narrow for a handful of seeds);
- relative (the one definition used everywhere): the **ratio of the paired means**,
  ``delta_rel = 100 * mean(variant - baseline) / mean(baseline)`` in % of the baseline. Its sign
  is always the sign of the absolute mean (the baseline's mean AP is positive). Its interval is
  **Fieller's** (Fieller 1954, J. R. Stat. Soc. B 16:175-185) in its paired form: the ratios
  ``r`` that a paired t-test of ``variant - baseline - r * baseline`` (mean zero) does not reject.
  It is exact for normal pairs, holds the point estimate, and excludes 0 exactly when the
  absolute interval does (``r = 0`` is the absolute test). When the baseline mean itself cannot
  be told from 0 the set is unbounded and the interval is reported as ``(-inf, +inf)``.
  The per-pair ``delta_rel`` column is ``100 * delta_abs / mean(baseline of the cell)``, so the
  dots a plot shows average to the cell's relative delta. (A mean of per-seed ratios can
  disagree in sign with the absolute mean; it is not used.)

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
    "t": "Student t over per-seed deltas (n-1 degrees of freedom); relative: Fieller's interval",
    "normal": "normal approximation over per-seed deltas (mean +- z*s/sqrt(n), TFA's protocol); "
    "relative: Fieller's interval with z",
    "anytime": "anytime-valid confidence sequence (Lai 1976 t-mixture; relative: Fieller form), "
    "valid however many seeds were added after looking",
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
    enough = n >= 2
    q = np.sqrt(critical_q2(n, confidence, interval))
    return np.where(enough, q * std / np.sqrt(np.where(enough, n, 1.0)), np.nan)


def critical_q2(n: np.ndarray, confidence: float = 0.95, interval: str = "t") -> np.ndarray:
    """Squared critical value ``q**2`` of the interval ``mean +- q * s / sqrt(n)`` (element-wise;
    NaN where ``n < 2``, ``inf`` where an anytime-valid sequence is still unbounded)."""
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} unknown; choose one of {sorted(INTERVALS)}")
    n = np.asarray(n, dtype=float)
    enough = n >= 2
    tail = (1.0 + confidence) / 2.0
    if interval == "t":
        q2 = stats.t.ppf(tail, np.where(enough, n - 1, 1.0)) ** 2
    elif interval == "normal":
        q2 = np.full(n.shape, stats.norm.ppf(tail) ** 2)
    else:
        from analysis.sequential import lai_q2  # the anytime-valid sequence lives there

        q2 = lai_q2(n, 1.0 - confidence)
    return np.where(enough, q2, np.nan)


def fieller_interval(
    n: np.ndarray,
    delta_mean: np.ndarray,
    baseline_mean: np.ndarray,
    var_delta: np.ndarray,
    var_baseline: np.ndarray,
    cov: np.ndarray,
    q2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fieller's interval for ``mean(delta) / mean(baseline)`` over paired seeds (element-wise).

    The set of ``r`` with ``n * (d - r b)**2 <= q2 * var(delta - r * baseline)``, where ``d``,
    ``b`` are the means and the variances are sample (co)variances (ddof=1). Returns
    ``(low, high)`` as ratios (not %), ``(-inf, inf)`` where the set is unbounded (the baseline
    mean is not distinguishable from 0 at this level) and NaN where ``n < 2``.
    """
    n, d, b = (np.asarray(v, dtype=float) for v in (n, delta_mean, baseline_mean))
    sdd, sbb, sdb, q2 = (np.asarray(v, dtype=float) for v in (var_delta, var_baseline, cov, q2))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = n * b**2 - q2 * sbb
        half_b = -(n * d * b - q2 * sdb)
        c = n * d**2 - q2 * sdd
        disc = half_b**2 - a * c
        bounded = (a > 0) & (disc >= 0) & np.isfinite(q2)
        root = np.sqrt(np.where(bounded, disc, 0.0))
        safe_a = np.where(bounded, a, 1.0)
        low = np.where(bounded, (-half_b - root) / safe_a, -np.inf)
        high = np.where(bounded, (-half_b + root) / safe_a, np.inf)
    valid = n >= 2
    return np.where(valid, low, np.nan), np.where(valid, high, np.nan)


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
                "delta_rel": math.nan,  # set below: % of the cell's mean baseline
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
    if not pair_frame.empty:
        cell_baseline = pair_frame.groupby(CELL)["baseline_value"].transform("mean")
        pair_frame["delta_rel"] = 100.0 * pair_frame["delta_abs"] / cell_baseline
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
        baseline_var=("baseline_value", "var"),
    )
    covariance = pairs.groupby(CELL, sort=False)[["delta_abs", "baseline_value"]].apply(
        lambda g: g["delta_abs"].cov(g["baseline_value"]) if len(g) > 1 else math.nan
    )
    grouped["cov"] = covariance.reindex(grouped.index) if len(grouped) else math.nan
    summary = grouped.reindex(pd.MultiIndex.from_tuples(order, names=CELL)).reset_index()
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["seeds"] = summary["seeds"].map(lambda s: s if isinstance(s, tuple) else ())
    mean = summary["delta_abs_mean"]
    half = half_width(summary["delta_abs_std"], summary["n"], confidence, interval)
    summary["delta_abs_ci_low"] = mean - half
    summary["delta_abs_ci_high"] = mean + half
    with np.errstate(invalid="ignore", divide="ignore"):
        summary["delta_rel_mean"] = 100.0 * mean / summary["baseline_mean"]
    low, high = fieller_interval(
        summary["n"],
        mean,
        summary["baseline_mean"],
        summary["delta_abs_std"] ** 2,
        summary["baseline_var"],
        summary["cov"],
        critical_q2(summary["n"], confidence, interval),
    )
    summary["delta_rel_ci_low"] = 100.0 * low
    summary["delta_rel_ci_high"] = 100.0 * high
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
