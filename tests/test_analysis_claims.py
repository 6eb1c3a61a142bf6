"""The report's efficiency claims beside reports/benchmark.json."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis import benchmark_claims, component_breakdown, load_benchmark, load_expectations
from analysis.claims import parameter_counts


def _benchmark(cheaf: tuple, psalm: tuple, **extra) -> dict:
    def model(params, latency, mem):
        return {"params": params, "latency_ms": latency, "peak_mem_mb": mem}

    return {"device": "cpu", "batch": 2, "input_size": [256, 256], **extra} | {
        "models": {"cheaf": model(*cheaf), "psalm": model(*psalm)}
    }


def test_report_figures_sit_beside_measured_ones():
    bench = _benchmark((1_760_000, 40.15, 306), (780_000, 27.47, 385))
    claims = benchmark_claims(bench, load_expectations()).set_index("claim")
    assert claims.loc["CHEAF parameters", "report"] == 1_760_000
    assert claims.loc["PSALM latency", "measured"] == pytest.approx(27.47)
    fewer = claims.loc["PSALM has fewer parameters than CHEAF"]
    assert fewer.report == pytest.approx(56.0) and fewer.measured == pytest.approx(55.68, 0.01)
    assert claims.loc["PSALM is faster than CHEAF", "measured"] == pytest.approx(1.4616, 1e-3)
    memory = claims.loc["PSALM uses more memory than CHEAF (the stated trade-off)"]
    assert memory.measured == pytest.approx(25.8, 0.01) and memory.holds is True
    assert claims.holds.dropna().all()


def test_claims_that_fail_are_marked():
    # measured: PSALM bigger and slower, and the file carries its own ratios (used as written)
    bench = _benchmark(
        (1_000_000, 20.0, 300), (1_500_000, 30.0, 200), speedup=0.667, param_reduction=-50.0
    )
    claims = benchmark_claims(bench, load_expectations()).set_index("claim")
    assert claims.loc["PSALM has fewer parameters than CHEAF", "holds"] is False
    assert claims.loc["PSALM has fewer parameters than CHEAF", "measured"] == pytest.approx(-50.0)
    assert claims.loc["PSALM is faster than CHEAF", "measured"] == pytest.approx(0.667)
    assert claims.loc["PSALM is faster than CHEAF", "holds"] is False
    assert claims.loc["PSALM uses more memory than CHEAF (the stated trade-off)", "holds"] is False


def test_missing_figures_are_left_open():
    claims = benchmark_claims({"models": {}}, load_expectations())
    assert claims.measured.isna().all() and claims.holds.isna().all()


def test_component_breakdown_matches_names_loosely():
    bench = _benchmark((1, 1, 1), (1, 1, 1))
    bench["models"]["psalm"]["params_by_component"] = {
        "attentions_w_conv": 281_000,
        "pyramid_lightweight": 52_000,
        "extra_head": 10,
    }
    table = component_breakdown(bench, load_expectations())
    psalm = table[table.model == "psalm"].set_index("component")
    assert psalm.loc["Attentions (w/ conv)", "measured"] == 281_000
    assert math.isnan(psalm.loc["Residual Projectors", "measured"])
    assert psalm.loc["extra_head", "measured"] == 10
    assert math.isnan(psalm.loc["extra_head", "report"])


def test_load_benchmark(tmp_path):
    assert load_benchmark(tmp_path / "none.json") is None
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"models": {}}))
    assert load_benchmark(path) == {"models": {}}
    path.write_text("{oops")
    with pytest.raises(ValueError, match="make benchmark"):
        load_benchmark(path)


def test_parameter_counts_show_that_an_ablation_took_effect():
    runs = pd.DataFrame(
        {
            "model": ["psalm", "psalm", "psalm"],
            "arm": ["baseline", "baseline", "no_pyramid"],
            "tags.params_fusion": ["780000", "780000", "730000"],
            "tags.fusion_modules": ["pyramid=50000,attn=1", "pyramid=50000,attn=1", "attn=1"],
            "params.train.steps": ["10", "10", "10"],
        }
    )
    counts = parameter_counts(runs).set_index(["key", "arm"])["values"]
    assert counts[("tags.params_fusion", "baseline")] == ("780000",)
    assert counts[("tags.params_fusion", "no_pyramid")] == ("730000",)
    assert counts[("tags.fusion_modules", "no_pyramid")] == ("attn=1",)
    assert "params.train.steps" not in counts.index.get_level_values("key")
