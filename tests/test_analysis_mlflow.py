"""analysis against a real MLflow store: loading runs and the `python -m analysis` commands."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from _analysis_fixtures import XSS_NAME, planted_store, planted_study

from analysis import load_runs
from analysis.__main__ import main

JSON_KEYS = {
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
}


@pytest.fixture(scope="module")
def store() -> str:
    return planted_store()


def test_load_runs_reads_one_study_into_a_tidy_frame(store):
    runs = load_runs("planted", store)
    assert len(runs) == len(planted_study()) and set(runs.study) == {"planted"}
    assert runs.run_id.is_unique
    for column in ("study", "ablation", "arm", "model", "seed", "config_hash", "git_sha"):
        assert column in runs
    assert str(runs.seed.dtype) == "Int64"
    assert {"metrics.test/nAP50", "params.model.name", "status"} <= set(runs.columns)
    assert set(runs.status) == {"FINISHED", "FAILED", "RUNNING"}
    evals = runs[runs.arm == "support_none"]
    assert evals.eval_of.isin(runs[runs.arm == "baseline"].run_id).all()
    assert XSS_NAME in set(runs.run_name)


def test_shared_baseline_layout_is_read(store):
    runs = load_runs("shared", store)
    baselines = runs[runs.arm == "baseline"]
    assert len(baselines) == 3
    assert set(baselines.ablations) == {("pyramid", "conv", "support")}


def test_unknown_study_and_missing_store_are_explained(store, tmp_path):
    with pytest.raises(
        LookupError,
        match=r"studies there: \['gated', 'planted', 'planted_b', 'shared', 'tiny-smoke'\]",
    ):
        load_runs("nope", store)
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        load_runs("planted", f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def test_tracking_uri_comes_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert len(load_runs("shared")) == 12


def test_verdicts_json(store, capsys):
    assert main(["verdicts", "planted", "--format", "json", "--tracking-uri", store]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert all(JSON_KEYS <= set(row) for row in rows)
    by_cell = {(r["model"], r["ablation"], r["arm"]): r for r in rows}
    within = by_cell[("cheaf", "pyramid", "no_pyramid")]
    assert within["verdict"] == "within" and within["n"] == 4
    assert within["delta_rel_mean"] == pytest.approx(-12.5, abs=0.01)  # ratio of paired means
    assert within["ci_low"] < -12.5 < within["ci_high"]
    assert (within["expected_low"], within["expected_high"]) == (-15, -10)
    assert within["metric"] == "test/nAP50"
    single = by_cell[("psalm", "conv", "no_conv")]
    assert single["n"] == 1 and single["ci_low"] is None and single["verdict"] == "inconclusive"
    control = by_cell[("psalm", "support", "support_shuffled")]
    assert control["verdict"] == "no expectation" and "control" in control["note"]
    assert "status FAILED" in out.err  # left-out runs are told, on stderr


def test_verdicts_table_and_metric_option(store, capsys):
    args = ["verdicts", "planted", "--tracking-uri", store, "--metric", "test/nAP"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "metric test/nAP;" in out and "Student t" in out
    assert "opposite sign" in out and "larger drop" in out
    assert "not averaged in" in out and "no baseline run with seed 7" in out


@pytest.mark.slow
def test_compare_marks_deltas_that_moved(store, tmp_path, capsys):
    args = ["compare", "planted", "planted_b", "--tracking-uri", store, "--out", str(tmp_path)]
    assert main([*args, "--format", "json"]) == 0
    out = capsys.readouterr()
    rows = {(r["model"], r["ablation"], r["arm"]): r for r in json.loads(out.out)}
    assert rows[("cheaf", "pyramid", "no_pyramid")]["moved"] is True
    assert rows[("cheaf", "pyramid", "no_pyramid")]["change"] == pytest.approx(-12.5, abs=0.01)
    assert rows[("psalm", "pyramid", "no_pyramid")]["moved"] is False
    assert rows[("cheaf", "support", "support_none")]["note"] == "only in A"
    page = Path(out.err.strip().splitlines()[-1])
    assert page.is_file() and "MOVED" in page.read_text()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "MOVED" in text and "within -> inconclusive" not in text


def test_bad_study_exits_2_with_the_reason(store, capsys):
    assert main(["verdicts", "nope", "--tracking-uri", store]) == 2
    assert "no runs tagged study='nope'" in capsys.readouterr().err


def test_module_entry_point(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setattr(sys, "argv", ["analysis", "verdicts", "shared", "--format", "json"])
    monkeypatch.delitem(sys.modules, "analysis.__main__")  # run it afresh, as `python -m` does
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("analysis", run_name="__main__")
    assert exit_.value.code == 0
    verdicts = {r["ablation"]: r["verdict"] for r in json.loads(capsys.readouterr().out)}
    assert verdicts == {"pyramid": "within", "conv": "within", "support": "within"}


def test_a_study_is_judged_on_the_metric_it_was_run_with(tmp_path):
    """``metric=test/st_iou`` (or a study file's ``metric:``) is recorded on the study's parent
    run, and the analysis judges on it unless told otherwise; without it, on the expectations
    file's metric."""
    from _analysis_fixtures import log_to_mlflow

    from analysis import analyze_study
    from analysis.study_run import open_study_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_to_mlflow(uri, planted_study(), histories=False)
    assert analyze_study("planted", uri).metric == "test/nAP50"  # conf/expectations.yaml
    open_study_run("planted", uri, {"metric": "test/nAP"})
    result = analyze_study("planted", uri)
    assert result.metric == "test/nAP"
    # the planted deltas are the same relative effects on nAP (value / 2): same verdicts
    assert list(result.verdicts["verdict"]) == list(
        analyze_study("planted", uri, metric="test/nAP50").verdicts["verdict"]
    )
    assert analyze_study("planted", uri, metric="test/nAP50").metric == "test/nAP50"


def test_verdicts_on_a_metric_no_run_logged_are_an_error(store, capsys):
    """``--metric test/st_iou`` on a study of synthetic data used to judge nothing and exit 0,
    every verdict "inconclusive, n=0"; a name no evaluation logs is refused before MLflow is
    read."""
    assert main(["verdicts", "shared", "--tracking-uri", store, "--metric", "test/st_iou"]) == 2
    err = capsys.readouterr().err
    assert "no run of study 'shared' logged test/st_iou" in err and "test/nAP50" in err
    assert main(["verdicts", "shared", "--tracking-uri", store, "--metric", "test/nap50"]) == 2
    assert "'test/nap50' is not one a study can be judged on" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "metric"),
    [([], None), (["metric=test/st_iou"], "test/st_iou")],
)
def test_the_study_setting_metric(overrides, metric):
    from ablations.study import load_study

    assert load_study("pyramid", overrides).metric == metric


def test_a_metric_that_names_no_logged_metric_is_refused():
    from ablations.study import load_study
    from pipeline.config import ConfigError

    for bogus in ("stiou", "test/bogus", "val/nAP50"):  # test/bogus used to pass and train
        with pytest.raises(ConfigError, match=f"metric '{bogus}' is not one a study can be judged"):
            load_study("pyramid", [f"metric={bogus}"])


def test_reporting_unchanged_results_again_rewrites_nothing_and_never_appends(tmp_path):
    """A finished study run again reports again: its parent run's verdict table holds each
    verdict once, and neither it nor the dashboard is redrawn unless the results changed."""
    from _analysis_fixtures import log_to_mlflow
    from mlflow.tracking import MlflowClient

    from analysis import analyze_study, write_dashboard
    from analysis.study_run import publish_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_to_mlflow(uri, planted_study())
    reports = tmp_path / "reports"

    def report() -> tuple[str, Path, int]:
        result = analyze_study("planted", uri)
        page = write_dashboard(result, reports)
        return publish_study(result), page, len(result.verdicts)

    def logged_rows(run_id: str) -> list:
        folder = tmp_path / f"download-{len(list(tmp_path.glob('download-*')))}"
        folder.mkdir()
        path = MlflowClient(uri).download_artifacts(run_id, "verdicts.json", str(folder))
        return json.loads(Path(path).read_text())["data"]

    run_id, page, n_verdicts = report()
    first = page.stat().st_mtime_ns
    assert len(logged_rows(run_id)) == n_verdicts
    assert report()[0] == run_id and page.stat().st_mtime_ns == first  # nothing redrawn
    assert len(logged_rows(run_id)) == n_verdicts

    client = MlflowClient(uri)
    runs = load_runs("planted", uri)
    baseline = runs[(runs.arm == "baseline") & (runs.status == "FINISHED")].iloc[0]
    client.log_metric(baseline.run_id, "test/nAP50", 0.99)  # the results change …
    assert report()[0] == run_id and page.stat().st_mtime_ns != first  # … so it is redrawn
    assert len(logged_rows(run_id)) == n_verdicts  # rewritten, not appended


def test_a_study_computed_on_two_kinds_of_machine_says_so() -> None:
    """Training is deterministic on one kind of machine only: the verdicts say when a study's
    runs come from more than one (tags ``machine.*``, pipeline/run.py)."""
    import pandas as pd

    from analysis.__main__ import machine_mix

    def runs(*isas: str) -> pd.DataFrame:
        return pd.DataFrame(
            {"tags.machine.isa": isas, "tags.machine.device": "cpu", "tags.machine.torch": "2.13"}
        )

    assert machine_mix(runs("AVX2", "AVX2")) == ""
    assert machine_mix(pd.DataFrame({"run_id": ["a"]})) == ""  # runs from before the tags
    text = machine_mix(runs("AVX2", "AVX512", "AVX512"))
    assert text.startswith("the runs were computed on 2 kinds of machine: ")
    assert "AVX512 / cpu / 2.13 (2 runs), AVX2 / cpu / 2.13 (1 run)" in text
