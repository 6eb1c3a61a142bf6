"""Verdicts: does a measured ablation delta agree with the report's predicted range?

``judge`` holds the rule; ``verdict_table`` applies it to every model x ablation x arm.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.deltas import PairedDeltas
from analysis.expectations import Expectations, ExpectedRange

WITHIN = "within"
SMALLER_DROP = "smaller drop"
LARGER_DROP = "larger drop"
OPPOSITE_SIGN = "opposite sign"
INCONCLUSIVE = "inconclusive"
NO_EXPECTATION = "no expectation"
VERDICTS = (WITHIN, SMALLER_DROP, LARGER_DROP, OPPOSITE_SIGN, INCONCLUSIVE, NO_EXPECTATION)
# One line each, for tables and dashboards; `judge`'s docstring is the precise definition.
VERDICT_MEANINGS = {
    WITHIN: "the whole interval lies inside the expected range",
    SMALLER_DROP: "the whole interval lies above the range but not above 0 (costs less)",
    LARGER_DROP: "the whole interval lies below the range (costs more)",
    OPPOSITE_SIGN: "the whole interval lies above 0 (the variant is better; a drop was predicted)",
    INCONCLUSIVE: "the interval straddles a boundary of the range, or fewer than 2 seeds",
    NO_EXPECTATION: "the report predicts nothing for this model and ablation",
}

VERDICT_COLUMNS = [
    "model",
    "ablation",
    "arm",
    "metric",
    "n",
    "delta_abs_mean",
    "delta_rel_mean",
    "ci_low",
    "ci_high",
    "expected_low",
    "expected_high",
    "verdict",
    "scale",
    "interval",
    "note",
]


def judge(n: int, ci_low: float, ci_high: float, expected: ExpectedRange | None) -> str:
    """The verdict for a confidence interval ``[ci_low, ci_high]`` over ``n`` per-seed deltas.

    ``expected`` is the predicted range ``[low, high]`` with ``high <= 0`` (a drop), on the same
    scale as the interval. In order:

    - ``no expectation``: the report predicts nothing for this model and ablation;
    - ``inconclusive``: fewer than two pairs (one seed gives no interval, so one seed is always
      inconclusive) or an undefined interval;
    - ``opposite sign``: the whole interval lies above zero (``ci_low > 0``): the variant is
      better than the baseline, where the report predicts a drop;
    - ``within``: the whole interval lies inside the range (``low <= ci_low`` and
      ``ci_high <= high``);
    - ``smaller drop``: the whole interval lies above the range (``ci_low > high``) but not above
      zero: the variant costs less than predicted (possibly nothing);
    - ``larger drop``: the whole interval lies below the range (``ci_high < low``);
    - ``inconclusive``: otherwise, i.e. the interval straddles ``low`` or ``high`` (it is too
      wide to tell, or the mean sits on a boundary).
    """
    if expected is None:
        return NO_EXPECTATION
    if n < 2 or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return INCONCLUSIVE
    if ci_low > 0:
        return OPPOSITE_SIGN
    if expected.low <= ci_low and ci_high <= expected.high:
        return WITHIN
    if ci_low > expected.high:
        return SMALLER_DROP
    if ci_high < expected.low:
        return LARGER_DROP
    return INCONCLUSIVE


def verdict_table(deltas: PairedDeltas, expectations: Expectations) -> pd.DataFrame:
    """One row per model x ablation x arm with the columns of ``VERDICT_COLUMNS``.

    ``ci_low``/``ci_high`` are on the expectations' scale (relative: % of the baseline's value;
    absolute: metric units), ``interval`` names the interval method, ``note`` says why a verdict
    is weak (one seed, no pairs, runs left out).
    """
    rows = []
    scale = "rel" if expectations.scale == "relative" else "abs"
    for cell in deltas.summary.itertuples(index=False):
        control = expectations.is_control(cell.arm)
        expected = None if control else expectations.range_for(cell.ablation, cell.model)
        ci_low = getattr(cell, f"delta_{scale}_ci_low")
        ci_high = getattr(cell, f"delta_{scale}_ci_high")
        notes = []
        if cell.n == 0:
            notes.append("no usable pairs")
        elif cell.n == 1:
            notes.append("1 seed: no interval")
        if cell.n_excluded:
            notes.append(f"{cell.n_excluded} variant run(s) left out, see excluded")
        if control:
            notes.append("a control arm, not a claim of the report")
        elif expected is None:
            notes.append(f"conf/expectations.yaml has no range for {cell.ablation}/{cell.model}")
        rows.append(
            {
                "model": cell.model,
                "ablation": cell.ablation,
                "arm": cell.arm,
                "metric": deltas.metric,
                "n": int(cell.n),
                "delta_abs_mean": cell.delta_abs_mean,
                "delta_rel_mean": cell.delta_rel_mean,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "expected_low": expected.low if expected else math.nan,
                "expected_high": expected.high if expected else math.nan,
                "verdict": judge(int(cell.n), ci_low, ci_high, expected),
                "scale": expectations.scale,
                "interval": deltas.interval_description,
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def format_verdicts(verdicts: pd.DataFrame) -> str:
    """The verdict table as plain text for the terminal, with what the interval is."""
    if verdicts.empty:
        return "(no variant runs: nothing to judge)"
    suffix = " (%)" if verdicts["scale"].iloc[0] == "relative" else ""
    text = pd.DataFrame(
        {
            "model": verdicts["model"],
            "ablation": verdicts["ablation"],
            "arm": verdicts["arm"],
            "n": verdicts["n"],
            "delta": [_num(x, 4, signed=True) for x in verdicts["delta_abs_mean"]],
            "delta %": [_num(x, 1, signed=True) for x in verdicts["delta_rel_mean"]],
            f"CI{suffix}": [
                f"[{_num(lo, 1, True)}, {_num(hi, 1, True)}]" if math.isfinite(lo) else "-"
                for lo, hi in zip(verdicts["ci_low"], verdicts["ci_high"], strict=True)
            ],
            f"expected{suffix}": [
                f"[{_num(lo, 0, True)}, {_num(hi, 0, True)}]" if math.isfinite(lo) else "-"
                for lo, hi in zip(verdicts["expected_low"], verdicts["expected_high"], strict=True)
            ],
            "verdict": verdicts["verdict"],
            "note": verdicts["note"],
        }
    )
    footer = (
        f"metric {verdicts['metric'].iloc[0]}; delta = variant - same-seed baseline "
        f"(metric units; 'delta %' = % of baseline); n = seed pairs, n < 2 is always "
        f"inconclusive.\n{verdicts['interval'].iloc[0]}."
    )
    return f"{text.to_string(index=False)}\n\n{footer}"


def _num(value: float, digits: int, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
