"""seeds=auto end to end, with the training replaced by planted runs: rounds, stop reasons, the
study's parent run in MLflow; and the study files' descriptive keys as ``ablations`` reads them."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from _analysis_fixtures import Planted, log_to_mlflow

import ablations.__main__ as driver
from ablations.study import load_study
from analysis import analyze_study, load_runs
from analysis.runs import find_study_run, load_study_design
from pipeline.config import ConfigError

# Per seed, % of baseline: PSALM clearly costs less than the report says (settles), CHEAF sits
# on the edge of its range with a wide spread (never settles: seeds_max).
PSALM = [-5.0, -4.0, -6.0, -5.5, -4.5, -5.0, -5.2]
CHEAF = [-10.0, -4.0, -16.0, -7.0, -13.0, -10.0, -9.0]


def _fake_run(uri: str, calls: list, resumes: list | None = None):
    """Stands in for ``ablations.__main__._run``: logs the requested models x seeds (once)."""
    done: set[tuple[str, int]] = set()
    resumes = [] if resumes is None else resumes

    def run(args: argparse.Namespace) -> int:
        settings = dict(o.split("=", 1) for o in args.overrides if "=" in o)
        models = settings["models"].strip("[]").split(",")
        seeds = [int(s) for s in settings["seeds"].strip("[]").split(",")]
        calls.append((tuple(models), len(seeds)))
        resumes.append(driver._command(args))  # what an interrupted round tells the user
        runs = []
        for model in models:
            for seed in seeds:
                if (model, seed) in done:
                    continue
                done.add((model, seed))
                rel = (PSALM if model == "psalm" else CHEAF)[seed]
                base = 0.40 + 0.01 * seed
                runs += [
                    Planted(model, "pyramid", "baseline", seed, base, study="adaptive"),
                    Planted(
                        model,
                        "pyramid",
                        "no_pyramid",
                        seed,
                        base * (1 + rel / 100),
                        study="adaptive",
                    ),
                ]
        log_to_mlflow(uri, runs, histories=False)
        return 0

    return run


@pytest.mark.slow
def test_seeds_auto_adds_seeds_until_settled_or_seeds_max(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    calls: list = []
    resumes: list = []
    monkeypatch.setattr(driver, "_run", _fake_run(uri, calls, resumes))
    typed = ["seeds=auto", "seeds_max=7", "seeds_batch=2"]
    study = load_study("pyramid", typed)
    assert study.schedule is not None and study.seeds == (0, 1, 2, 3)
    run_overrides = ["label.study=adaptive", f"tracking.uri={uri}"]
    args = argparse.Namespace(name="pyramid", overrides=typed, no_wait=False, force=False)
    assert driver.run_adaptive(args, study, typed, run_overrides) == 0

    # round 1: both models, 4 seeds, where psalm settles; cheaf goes on to 6, then 7
    assert calls == [(("cheaf", "psalm"), 4), (("cheaf",), 6), (("cheaf",), 7)]
    # a round interrupted says to resume the adaptive study, not that round's fixed seeds
    assert set(resumes) == {
        "python -m ablations run pyramid seeds=auto seeds_max=7 seeds_batch=2"
    }, resumes
    result = analyze_study("adaptive", uri)
    rows = result.verdicts.set_index("model")
    assert (rows.loc["psalm", "n"], rows.loc["psalm", "stop"]) == (4, "settled")
    assert rows.loc["psalm", "verdict"] == "smaller drop"
    assert (rows.loc["cheaf", "n"], rows.loc["cheaf", "stop"]) == (7, "seeds_max reached")
    assert rows.loc["cheaf", "verdict"] == "inconclusive"
    assert "anytime-valid" in rows.loc["cheaf", "interval"]
    out = capsys.readouterr().out
    assert re.search(r"psalm\s+no_pyramid\s+n=4\s+settled: smaller drop", out)

    # the parent run: the design as tags, the verdict table and plots as artifacts
    design = load_study_design("adaptive", uri)
    assert (design.seeds_start, design.seeds_batch, design.seeds_max) == (4, 2, 7)
    parent = find_study_run("adaptive", uri)
    assert (
        parent.data.tags["kind"] == "study"
        and "psalm/no_pyramid: smaller drop" in (parent.data.tags["verdicts"])
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    files |= {f.path for f in client.list_artifacts(parent.info.run_id, "deltas")}
    assert {"verdicts.json", "deltas/pyramid.png"} <= files
    table = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "verdicts.json", str(tmp_path))
        ).read_text()
    )
    logged = {row[table["columns"].index("model")]: row for row in table["data"]}
    verdict = table["columns"].index("verdict")
    assert logged["psalm"][verdict] == "smaller drop"
    assert logged["cheaf"][table["columns"].index("stop")] == "seeds_max reached"
    # the parent run is not one of the study's runs
    assert parent.info.run_id not in set(load_runs("adaptive", uri).run_id)


def test_seeds_auto_refuses_no_wait(capsys):
    study = load_study("pyramid", ["seeds=auto"])
    args = argparse.Namespace(name="pyramid", overrides=[], no_wait=True, force=False)
    assert driver.run_adaptive(args, study, [], []) == 2
    assert "cannot --no-wait" in capsys.readouterr().err


def test_study_files_say_what_each_arm_removes_and_which_part():
    pyramid = load_study("pyramid")
    assert pyramid.part_for("no_pyramid", "cheaf") == "use_pyramid_refinement"
    assert pyramid.part_for("no_pyramid", "psalm") == "use_pyramid"
    conv = load_study("conv")
    assert conv.part_for("no_conv", "cheaf") == "use_short_long_conv"
    assert conv.part_for("no_conv", "psalm") == "use_conv_preprocessing"
    support = load_study("support")
    assert support.eval_variants["support_bypass"] == ("support", "bypass")
    assert support.part_for("support_none", "psalm") == "support_none"
    assert support.part_for("support_bypass", "cheaf") == "support_bypass"
    assert support.part_for("support_shuffled", "cheaf") is None  # a control: no part
    everything = load_study("all")
    for arm in ("no_pyramid", "no_conv", "support_none", "support_bypass", "support_shuffled"):
        assert everything.removes[arm]
    assert load_study("pyramid").schedule is None  # fixed seeds unless seeds=auto


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seeds=auto", "seeds_max=1"], "seeds_max"),
        (["seeds=auto", "seeds_batch=0"], "seeds_batch"),
        (["seeds=auto", "seeds_max=3"], "can never settle a verdict"),
        (["seeds_max=x"], None),
    ],
)
def test_bad_adaptive_settings_are_refused_before_dispatch(overrides, message):
    if message is None:  # seeds_max without seeds=auto is accepted and ignored
        assert load_study("pyramid", overrides).schedule is None
        return
    with pytest.raises(ConfigError, match=message):
        load_study("pyramid", overrides)


def test_a_part_that_is_not_measured_is_refused(tmp_path, monkeypatch):
    import ablations.study as study_module

    text = (study_module.STUDY_DIR / "pyramid.yaml").read_text()
    (tmp_path / "pyramid.yaml").write_text(text.replace("psalm: use_pyramid}", "psalm: pyramid}"))
    monkeypatch.setattr(study_module, "STUDY_DIR", tmp_path)
    with pytest.raises(ConfigError, match="'pyramid' is not a measured part"):
        load_study("pyramid")
