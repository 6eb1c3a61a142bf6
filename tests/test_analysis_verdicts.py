"""Verdicts against the report's ranges, and the expectations file they come from."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _analysis_fixtures import (
    as_frame,
    load_bearing_study,
    planted_study,
    ratio_of_means,
    smoke_study,
)

from analysis import analyze_runs, format_verdicts, judge, load_expectations
from analysis.expectations import DEFAULT_EXPECTATIONS, ExpectedRange
from analysis.sequential import SeedSchedule

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
    assert control.delta_rel_mean == pytest.approx(ratio_of_means([-10, -30, -20, -25]))


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


def _gated(shares):
    analysis = analyze_runs(as_frame(load_bearing_study(shares)), "gated")
    return analysis, analysis.verdicts.set_index(["model", "arm"])


SHARES = {
    ("cheaf", "use_pyramid_refinement"): [0.20, 0.22, 0.18, 0.20],  # 20 %: load-bearing
    ("psalm", "use_pyramid"): [0.01, 0.02, 0.015, 0.015],  # 1.5 %: inert
    ("cheaf", "support_none"): None,  # not logged (a run from before the metric existed)
    ("psalm", "support_bypass"): [0.049, 0.05, 0.051, 0.05],  # exactly at the 5 % threshold
}


def test_an_inert_part_makes_the_arm_not_testable_instead_of_a_drop_verdict():
    _, rows = _gated(SHARES)
    inert = rows.loc[("psalm", "no_pyramid")]
    assert inert.verdict == "not testable: use_pyramid is inert in the baseline (1.5 %)"
    assert inert.load_bearing == pytest.approx(0.015) and inert.load_bearing_ok is False
    assert inert.load_bearing_part == "use_pyramid"
    live = rows.loc[("cheaf", "no_pyramid")]
    assert live.verdict == "within" and live.load_bearing_ok is True
    assert live.load_bearing == pytest.approx(0.20)
    at_threshold = rows.loc[("psalm", "support_bypass")]
    assert at_threshold.verdict == "within" and at_threshold.load_bearing_ok is True


def test_a_missing_share_keeps_the_verdict_and_says_so():
    _, rows = _gated(SHARES)
    row = rows.loc[("cheaf", "support_none")]
    assert row.verdict == "within" and row.load_bearing_ok is None
    assert "load-bearing not measured" in row.note
    # the planted study predates the metric: every verdict stands, none is gated
    plain = analyze_runs(as_frame(planted_study()), "planted").verdicts
    assert not plain.verdict.str.startswith("not testable").any()


def test_the_threshold_comes_from_the_expectations_file(tmp_path):
    text = (Path(DEFAULT_EXPECTATIONS).read_text()).replace(
        "load_bearing_threshold: 0.05", "load_bearing_threshold: 0.25"
    )
    (tmp_path / "e.yaml").write_text(text)
    gated = analyze_runs(
        as_frame(load_bearing_study(SHARES)), "gated", expectations=tmp_path / "e.yaml"
    )
    rows = gated.verdicts.set_index(["model", "arm"])
    assert rows.loc[("cheaf", "no_pyramid")].verdict.startswith("not testable")  # 20 % < 25 %
    assert load_expectations().load_bearing_threshold == 0.05
    (tmp_path / "bad.yaml").write_text(text.replace("0.25", "5"))
    with pytest.raises(ValueError, match="load_bearing_threshold"):
        load_expectations(tmp_path / "bad.yaml")


def test_table_shows_what_each_arm_removes_and_what_the_report_claims():
    analysis, rows = _gated(SHARES)
    assert "pyramid" in rows.loc[("cheaf", "no_pyramid")].removes
    assert "query-only" in rows.loc[("psalm", "support_bypass")].removes
    assert rows.loc[("psalm", "no_pyramid")].claim == (
        "the report predicts PSALM loses 20 to 30 (% of the full model's AP)"
    )
    text = format_verdicts(analysis.verdicts)
    assert "not testable: use_pyramid is inert" in text and "1.5 % INERT" in text
    assert "20.0 % ok" in text and "ratio of paired means" in text


def test_a_smoke_study_is_a_plumbing_check_with_no_verdicts():
    smoke = analyze_runs(as_frame(smoke_study()), "tiny-smoke")
    assert smoke.verdicts.plumbing_check.all()
    assert smoke.verdicts.note.str.startswith("plumbing check, no verdicts").all()
    assert format_verdicts(smoke.verdicts).startswith("*** plumbing check, no verdicts")
    real = analyze_runs(as_frame(planted_study()), "planted")
    assert not real.verdicts.plumbing_check.any()
    assert "plumbing" not in format_verdicts(real.verdicts)


def test_seeds_and_why_they_stopped():
    fixed = analyze_runs(as_frame(planted_study()), "planted").verdicts
    assert set(fixed.stop) == {"fixed seeds"}
    schedule = SeedSchedule(seeds_start=3, seeds_batch=2, seeds_max=4)
    auto = analyze_runs(as_frame(planted_study()), "planted", schedule=schedule)
    assert "anytime-valid" in auto.deltas.interval_description
    rows = auto.verdicts.set_index(["model", "ablation", "arm"])
    assert rows.loc[("psalm", "support", "support_none")].stop == "settled"  # opposite sign
    assert rows.loc[("psalm", "conv", "no_conv")].stop == "unsettled: next 3 seeds"  # 1 seed
    assert rows.loc[("cheaf", "support", "support_shuffled")].stop.startswith("no range")
    capped = rows[(rows.verdict == "inconclusive") & (rows.n >= 4)]
    assert (capped.stop == "seeds_max reached").all()
