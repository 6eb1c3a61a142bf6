"""Verdicts against the report's ranges, and the expectations file they come from."""

from __future__ import annotations

import math

import pytest
from _analysis_fixtures import as_frame, planted_study

from analysis import analyze_runs, format_verdicts, judge, load_expectations
from analysis.expectations import ExpectedRange

RANGE = ExpectedRange(low=-15.0, high=-10.0)


@pytest.mark.parametrize(
    ("n", "low", "high", "verdict"),
    [
        (4, -14.0, -11.0, "within"),
        (4, -15.0, -10.0, "within"),  # boundaries belong to the range
        (4, -9.0, -2.0, "smaller drop"),
        (4, -9.0, 3.0, "smaller drop"),  # no drop at all is possible, more than 0 is not certain
        (4, -20.0, -16.0, "larger drop"),
        (4, 0.5, 3.0, "opposite sign"),
        (4, -12.0, -8.0, "inconclusive"),  # straddles the upper boundary
        (4, -17.0, -13.0, "inconclusive"),  # straddles the lower boundary
        (4, -20.0, 5.0, "inconclusive"),  # wider than the whole range
        (1, -12.0, -11.0, "inconclusive"),  # one seed is never enough
        (3, math.nan, math.nan, "inconclusive"),
    ],
)
def test_judge(n, low, high, verdict):
    assert judge(n, low, high, RANGE) == verdict


def test_judge_without_expectation():
    assert judge(5, -14.0, -11.0, None) == "no expectation"


def test_planted_effects_get_the_right_verdicts():
    analysis = analyze_runs(as_frame(planted_study()), "planted")
    got = {(r.model, r.ablation, r.arm): (r.verdict, r.n) for r in analysis.verdicts.itertuples()}
    assert got == {
        ("cheaf", "pyramid", "no_pyramid"): ("within", 4),
        ("psalm", "pyramid", "no_pyramid"): ("smaller drop", 4),
        ("cheaf", "support", "support_none"): ("larger drop", 4),
        ("psalm", "support", "support_none"): ("opposite sign", 4),
        # a control (conf/expectations.yaml `controls`): measured, never judged as a claim
        ("cheaf", "support", "support_shuffled"): ("no expectation", 4),
        ("psalm", "support", "support_shuffled"): ("no expectation", 1),
        ("psalm", "conv", "no_conv"): ("inconclusive", 1),
    }
    rows = analysis.verdicts.set_index(["model", "ablation", "arm"])
    row = rows.loc[("psalm", "conv", "no_conv")]
    assert "1 seed" in row.note
    assert (row.expected_low, row.expected_high) == (-20.0, -15.0)
    assert "Student t" in row.interval
    control = rows.loc[("cheaf", "support", "support_shuffled")]
    assert "control" in control.note and math.isnan(control.expected_low)
    assert control.delta_rel_mean == pytest.approx(-21.25)  # still measured


def test_table_says_which_interval_and_flags_single_seeds():
    analysis = analyze_runs(as_frame(planted_study()), "planted")
    text = format_verdicts(analysis.verdicts)
    assert "95 % CI: Student t over per-seed deltas" in text
    assert "1 seed: no interval" in text
    normal = analyze_runs(as_frame(planted_study()), "planted", interval="normal")
    assert "TFA" in format_verdicts(normal.verdicts)


def test_repo_expectations_hold_the_report_ranges():
    expectations = load_expectations()
    assert expectations.metric == "test/nAP50" and expectations.scale == "relative"
    report = {
        ("pyramid", "cheaf"): (-15, -10),
        ("pyramid", "psalm"): (-30, -20),
        ("conv", "cheaf"): (-10, -5),
        ("conv", "psalm"): (-20, -15),
        ("support", "cheaf"): (-30, -20),
        ("support", "psalm"): (-20, -15),
    }
    assert {k: (r.low, r.high) for k, r in expectations.ranges.items()} == report
    assert expectations.range_for("Pyramid", "PSALM") == ExpectedRange(-30, -20)


def test_expectations_are_validated(tmp_path):
    bad = tmp_path / "e.yaml"
    bad.write_text("ablations:\n  pyramid:\n    psalm: [5, 10]\n")
    with pytest.raises(ValueError, match="pyramid.psalm"):
        load_expectations(bad)
    bad.write_text("scale: logarithmic\n")
    with pytest.raises(ValueError, match="scale"):
        load_expectations(bad)
    with pytest.raises(FileNotFoundError):
        load_expectations(tmp_path / "missing.yaml")


def test_absolute_scale_and_missing_expectation(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("scale: absolute\nablations:\n  pyramid:\n    cheaf: [-0.06, -0.04]\n")
    analysis = analyze_runs(as_frame(planted_study()), "planted", expectations=path)
    rows = analysis.verdicts.set_index(["model", "ablation", "arm"])
    cheaf = rows.loc[("cheaf", "pyramid", "no_pyramid")]
    assert cheaf.verdict == "within"  # about -0.052 absolute
    assert cheaf.ci_low == pytest.approx(analysis.deltas.summary.delta_abs_ci_low.iloc[0])
    other = rows.loc[("psalm", "pyramid", "no_pyramid")]
    assert other.verdict == "no expectation" and math.isnan(other.expected_low)
