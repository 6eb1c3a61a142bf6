"""Verdicts: does a measured ablation delta agree with the report's predicted range?

``judge`` holds the rule; ``verdict_table`` applies it to every model x ablation x arm, and adds
per arm: what it removes and what the report claims, whether the part it removes is
load-bearing in the trained baseline (an inert part makes the arm ``not testable``), how many
seeds it used and why it stopped (``seeds=auto``), and whether the study is a smoke-profile
plumbing check (whose verdicts mean nothing).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.arms import ArmNotes, share_metric
from analysis.deltas import PairedDeltas
from analysis.expectations import Expectations, ExpectedRange
from analysis.sequential import SeedSchedule, stop_reason

WITHIN = "within"
SMALLER_DROP = "smaller drop"
LARGER_DROP = "larger drop"
OPPOSITE_SIGN = "opposite sign"
INCONCLUSIVE = "inconclusive"
NO_EXPECTATION = "no expectation"
NOT_TESTABLE = "not testable"
VERDICTS = (
    WITHIN,
    SMALLER_DROP,
    LARGER_DROP,
    OPPOSITE_SIGN,
    INCONCLUSIVE,
    NO_EXPECTATION,
    NOT_TESTABLE,
)
SMOKE_PROFILE = "smoke"
PLUMBING = "plumbing check, no verdicts"
PLUMBING_REASON = (
    f"{PLUMBING}: the smoke profile trains for seconds and learns nothing, so its deltas say "
    "nothing about the report (run PROFILE=default)"
)
NOT_MEASURED = "load-bearing not measured"
FIXED_SEEDS = "fixed seeds"
# One line each, for tables and dashboards; `judge`'s docstring is the precise definition.
VERDICT_MEANINGS = {
    WITHIN: "the whole interval lies inside the expected range",
    SMALLER_DROP: "the whole interval lies above the range but not above 0 (costs less)",
    LARGER_DROP: "the whole interval lies below the range (costs more)",
    OPPOSITE_SIGN: "the whole interval lies above 0 (the variant is better; a drop was predicted)",
    INCONCLUSIVE: "the interval straddles a boundary of the range, or fewer than 2 seeds",
    NO_EXPECTATION: "the report predicts nothing for this model and ablation",
    NOT_TESTABLE: "the part this arm removes barely moves the trained baseline's scores "
    "(diag/<part>_share below the threshold), so removing it cannot test the claim",
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
    "load_bearing",
    "load_bearing_part",
    "load_bearing_ok",
    "stop",
    "plumbing_check",
    "removes",
    "claim",
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


def verdict_table(
    deltas: PairedDeltas,
    expectations: Expectations,
    runs: pd.DataFrame | None = None,
    notes: ArmNotes | None = None,
    schedule: SeedSchedule | None = None,
) -> pd.DataFrame:
    """One row per model x ablation x arm with the columns of ``VERDICT_COLUMNS``.

    ``ci_low``/``ci_high`` are on the expectations' scale (relative: % of the baseline's value;
    absolute: metric units), ``interval`` names the interval method, ``note`` says why a verdict
    is weak (one seed, no pairs, runs left out).

    With ``runs`` (the frame the deltas came from) and ``notes`` (the study files' ``parts``):
    ``load_bearing`` is the mean over the paired baselines of ``diag/<part>_share`` for the part
    the arm removes, ``load_bearing_ok`` whether it reaches ``load_bearing_threshold``. Below it
    the verdict reads ``not testable: <part> is inert in the baseline (x %)``; where the metric
    is missing the note says ``load-bearing not measured`` and the verdict stands.
    ``stop`` says why the arm has its number of seeds (``schedule``: the study ran ``seeds=auto``).
    ``plumbing_check`` is True when any run of the study used the smoke profile.
    """
    notes = notes or ArmNotes()
    plumbing = bool(
        runs is not None and "profile" in runs and (runs["profile"] == SMOKE_PROFILE).any()
    )
    rows = []
    scale = "rel" if expectations.scale == "relative" else "abs"
    arm_notes = notes
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
        verdict = judge(int(cell.n), ci_low, ci_high, expected)
        part = arm_notes.part_for(cell.arm, cell.model)
        share = _baseline_share(deltas, runs, cell, part)
        threshold = expectations.load_bearing_threshold
        load_ok = None if math.isnan(share) else bool(share >= threshold)
        if part is not None and load_ok is None:
            notes.append(f"{NOT_MEASURED} ({share_metric(part)} missing)")
        elif load_ok is False and not control:
            verdict = f"{NOT_TESTABLE}: {part} is inert in the baseline ({100 * share:.1f} %)"
        if plumbing:
            notes.insert(0, PLUMBING)
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
                "verdict": verdict,
                "scale": expectations.scale,
                "interval": deltas.interval_description,
                "note": "; ".join(notes),
                "load_bearing": share,
                "load_bearing_part": part,
                "load_bearing_ok": load_ok,
                "stop": _stop(verdict, int(cell.n), expected is None, schedule),
                "plumbing_check": plumbing,
                "removes": arm_notes.removes.get(str(cell.arm), ""),
                "claim": "a control: the report claims nothing"
                if control
                else expectations.claim(cell.ablation, cell.model),
            }
        )
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def settled(verdict: str) -> bool:
    """True for a verdict no more seeds can change the meaning of (not ``inconclusive``)."""
    return verdict != INCONCLUSIVE


def _stop(verdict: str, n: int, no_range: bool, schedule: SeedSchedule | None) -> str:
    if schedule is None:
        return FIXED_SEEDS
    if no_range:
        return "no range to settle (rides along)"
    if verdict.startswith(NOT_TESTABLE):
        return NOT_TESTABLE
    return stop_reason(verdict, n, schedule) or f"unsettled: next {schedule.next_count(n)} seeds"


def _baseline_share(deltas: PairedDeltas, runs, cell, part: str | None) -> float:
    """Mean over the cell's paired baselines of ``diag/<part>_share``; NaN if not measured."""
    column = f"metrics.{share_metric(part)}" if part else None
    if runs is None or column is None or column not in runs:
        return math.nan
    pairs = deltas.pairs
    ids = pairs.loc[
        (pairs["model"] == cell.model)
        & (pairs["ablation"] == cell.ablation)
        & (pairs["arm"] == cell.arm),
        "baseline_run_id",
    ]
    values = runs.loc[runs["run_id"].isin(ids), column].astype(float)
    values = values[values.notna()]
    return float(values.mean()) if len(values) else math.nan


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
            "load-bearing": [_share(r) for r in verdicts.itertuples()],
            "verdict": verdicts["verdict"],
            "seeds: stop": [f"{r.n}: {r.stop}" for r in verdicts.itertuples()],
            "note": verdicts["note"],
        }
    )
    footer = (
        f"metric {verdicts['metric'].iloc[0]}; delta = variant - same-seed baseline "
        f"(metric units; 'delta %' = % of baseline); n = seed pairs, n < 2 is always "
        f"inconclusive.\n{verdicts['interval'].iloc[0]}."
    )
    footer += (
        "\nrelative delta = 100 * mean(variant - baseline) / mean(baseline) over the paired "
        "seeds (ratio of paired means; same sign as the absolute delta). load-bearing = the "
        "baseline's diag/<part>_share for the part the arm removes."
    )
    table = f"{text.to_string(index=False)}\n\n{footer}"
    if verdicts["plumbing_check"].any():
        table = f"*** {PLUMBING_REASON} ***\n\n{table}"
    return table


def _share(row) -> str:
    if row.load_bearing_part is None or (
        isinstance(row.load_bearing_part, float) and math.isnan(row.load_bearing_part)
    ):
        return "-"
    if not math.isfinite(row.load_bearing):
        return "not measured"
    return f"{100 * row.load_bearing:.1f} % {'ok' if row.load_bearing_ok else 'INERT'}"


def _num(value: float, digits: int, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
