"""Ablation studies: expansion into run specs, up-front validation, and ``python -m ablations``.

What users rely on (issue 4): a study expands into paired baseline / variant cells (variants
differ from their baseline only in the ablation flag), baselines are shared across ablations,
the support ablation evaluates the trained baseline instead of training again; one bad cell
stops the whole study before anything is dispatched; ``run`` on the debug launcher records one
FINISHED run per cell and prints the per-arm and verdict tables; a second ``run`` starts
nothing; ``--force`` retires (soft-deletes) the old runs and records new ones.

Every run is a ``profile=smoke`` run in a temporary MLflow store and a temporary
``output_dir`` (run folders, and the dispatch files under ``studies/<study>/``), with the
working directory (where the dashboard goes, ``reports/``) in a temporary folder too. Trained
studies are module fixtures shared by several tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ablations.__main__ import main, trained_elsewhere
from ablations.study import ALL, expand, load_study, study_folder, study_id
from pipeline.config import ConfigError, RunSpec, flatten
from pipeline.dispatch import LauncherConfig, dispatch, status, wait_for

SMOKE = ("profile=smoke", "data.n_val=4", "data.n_test=6")
STEPS = 6  # conf/profile/smoke.yaml train.steps
EXPERIMENT = "psalm"  # conf/config.yaml tracking.experiment
FLAGS = {  # the pyramid ablation's flag per model (conf/ablation/pyramid.yaml)
    "cheaf": "model.use_pyramid_refinement",
    "psalm": "model.use_pyramid",
}
# Jobs run in other processes, which cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- expansion (no training) ----------------------------------------------------------------


def identity(spec: RunSpec) -> dict[str, object]:
    """A spec's flattened config without its labels (study, ablation, arm)."""
    return {k: v for k, v in flatten(spec.config).items() if not k.startswith("label.")}


def by_cell(specs: tuple[RunSpec, ...]) -> dict[tuple[str, int, str], RunSpec]:
    """``(model, seed, arm) -> spec``; fails on a duplicated cell."""
    cells: dict[tuple[str, int, str], RunSpec] = {}
    for spec in specs:
        key = (spec.config["model"]["name"], spec.config["seed"], spec.config["label"]["arm"])
        assert key not in cells, f"cell {key} appears twice"
        cells[key] = spec
    return cells


@pytest.mark.slow
def test_pyramid_study_pairs_each_baseline_with_its_no_pyramid_variant() -> None:
    plan = expand(load_study("pyramid"), list(SMOKE))
    assert plan.study == "pyramid-smoke"
    assert plan.evaluate == ()
    cells = by_cell(plan.train)
    expected = {(m, s, a) for m in FLAGS for s in (0, 1, 2) for a in ("baseline", "no_pyramid")}
    assert set(cells) == expected
    assert len({spec.config_hash for spec in plan.train}) == len(plan.train)
    for (model, seed, arm), spec in cells.items():
        tags = spec.tags()
        assert (tags["study"], tags["ablation"], tags["arm"]) == ("pyramid-smoke", "pyramid", arm)
        assert (tags["model"], tags["seed"], tags["profile"]) == (model, str(seed), "smoke")
        if arm == "baseline":
            continue
        base, variant = identity(cells[(model, seed, "baseline")]), identity(spec)
        differ = {k for k in base.keys() | variant.keys() if base.get(k) != variant.get(k)}
        assert differ == {FLAGS[model]}, f"{model}/{arm}/seed{seed} differs in {sorted(differ)}"
        assert (base[FLAGS[model]], variant[FLAGS[model]]) == (True, False)


@pytest.mark.slow
def test_all_studies_share_one_baseline_per_model_and_seed() -> None:
    plan = expand(load_study(ALL, ["seeds=[0,1]"]), list(SMOKE))
    assert plan.study == "ablations-smoke"
    cells = by_cell(plan.all)
    baselines = {k: s for k, s in cells.items() if k[2] == "baseline"}
    assert set(baselines) == {(m, s, "baseline") for m in FLAGS for s in (0, 1)}
    for spec in baselines.values():
        assert spec.kind == "train"
        assert spec.tags()["ablation"] == "conv,pyramid,support"
        assert spec.tags()["study"] == "ablations-smoke"
    arms = {k[2] for k in cells}
    assert arms == {
        "baseline", "no_pyramid", "no_conv", "support_none", "support_bypass", "support_shuffled"
    }  # fmt: skip
    for (model, seed, _arm), spec in cells.items():
        if spec.kind == "eval":
            assert spec.eval_of == baselines[(model, seed, "baseline")].config_hash


@pytest.mark.slow
def test_support_study_evaluates_the_trained_baseline() -> None:
    plan = expand(load_study("support", ["seeds=[0]"]), list(SMOKE))
    assert plan.study == "support-smoke"
    train, evaluate = by_cell(plan.train), by_cell(plan.evaluate)
    assert set(train) == {(m, 0, "baseline") for m in FLAGS}, "support trains only baselines"
    modes = {"support_none": "none", "support_bypass": "bypass", "support_shuffled": "shuffled"}
    assert set(evaluate) == {(m, 0, a) for m in FLAGS for a in modes}
    for (model, seed, arm), spec in evaluate.items():
        assert spec.kind == "eval"
        assert spec.eval_mode == modes[arm]
        assert spec.eval_of == train[(model, seed, "baseline")].config_hash
        tags = spec.tags()
        assert (tags["study"], tags["ablation"], tags["arm"]) == ("support-smoke", "support", arm)
        assert identity(spec) == identity(train[(model, seed, "baseline")])


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.steps=0", "train.steps"), ("model.use_pyramid=false", "use_pyramid")],
)
def test_one_invalid_cell_fails_the_study_before_dispatch(
    override: str, key: str, tmp_mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # should it run anyway, its report lands here
    with pytest.raises(ConfigError, match=key):
        expand(load_study("pyramid"), [*SMOKE, override])

    sid = "pytest-invalid"
    argv = ["run", "pyramid", *SMOKE, "launcher=debug", "seeds=[0]", f"label.study={sid}"]
    rc = main([*argv, f"output_dir={tmp_path / 'runs'}", override])
    assert rc != 0
    client = MlflowClient(tracking_uri=tmp_mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs == [], "an invalid study recorded MLflow runs"
    assert not study_folder(sid, tmp_path / "runs").exists(), "an invalid study dispatched"
    assert not (tmp_path / "runs").exists(), "an invalid study wrote run folders"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "pyramid-smoke"),
        (["data=synthetic"], "pyramid-smoke"),
        (["data=video"], "pyramid-smoke-video"),
        (["data=video", "label.study=mine"], "mine"),
    ],
)
def test_the_study_id_names_data_other_than_the_glyph_benchmark(overrides, expected) -> None:
    """The same study on drone video is another study, not more seeds of the glyph one."""
    assert study_id(load_study("pyramid"), [*SMOKE, *overrides]) == expected


def test_a_run_override_for_the_studied_model_only_is_accepted() -> None:
    """``models=[cheaf] model.use_short_long_conv=false``: every cell is a CHEAF cell that takes
    the flag, so the study is valid (e.g. the pyramid ablation on a CHEAF without its conv)."""
    study = load_study("pyramid", ["models=[cheaf]", "seeds=[0]"])
    try:
        plan = expand(study, [*SMOKE, "model.use_short_long_conv=false"])
    except ConfigError as exc:
        pytest.fail(
            "ablations/study.py study_id() composes the run overrides with the default model "
            f"(psalm) to find the profile, so a CHEAF-only override fails: {exc}"
        )
    assert len(plan.train) == 2
    assert all(s.config["model"]["use_short_long_conv"] is False for s in plan.train)


@pytest.mark.parametrize(
    ("override", "meaning"),
    [
        ("models=cheaf", ("cheaf",)),
        ("seeds=0", (0,)),
        ("seeds=[a]", None),
        ("seeds=[0,1,0]", None),  # seed 0's run would count twice in the interval
        ("seeds=[true]", None),
        ("models=[psalm,psalm]", None),
    ],
)
def test_study_settings_are_understood_or_refused_clearly(
    override: str, meaning: tuple | None
) -> None:
    """A scalar where a list is expected means a one-item list (or a ConfigError naming the
    setting) — never a TypeError, and never ``cheaf`` read as the models c, h, e, a, f."""
    key = override.split("=", 1)[0]
    try:
        study = load_study("pyramid", [override])
    except ConfigError as exc:
        assert key in str(exc), exc
        return
    except Exception as exc:  # the CLI would show a traceback
        pytest.fail(f"load_study('pyramid', [{override!r}]) raised {type(exc).__name__}: {exc}")
    got = study.models if key == "models" else study.seeds
    assert meaning is not None, f"load_study('pyramid', [{override!r}]) accepted {key}={got}"
    assert got == meaning, f"load_study('pyramid', [{override!r}]) read {key} as {got}"


def test_a_study_composes_once_per_cell_and_gets_each_seeds_own_spec() -> None:
    """Seeds share a Hydra composition (``SeedComposer``); every spec must still be the one
    ``make_spec`` gives for its overrides: the same resolved config and the same hash."""
    from pipeline.config import make_spec

    plan = expand(load_study(ALL, ["seeds=[0,1,2]"]), ["profile=smoke"])
    assert len({spec.config["seed"] for spec in plan.all}) == 3
    for spec in plan.all:
        kwargs = {"kind": spec.kind, "eval_mode": spec.eval_mode, "eval_of": spec.eval_of}
        direct = make_spec(list(spec.overrides), **kwargs)
        assert (direct.config, direct.config_hash) == (spec.config, spec.config_hash), spec.label


def test_the_arm_table_counts_the_runs_the_verdicts_use() -> None:
    """Runs the analysis left out (superseded by a newer run of the cell, e.g. after a code
    change) are not averaged into the arm table either."""
    import pandas as pd

    from ablations.__main__ import arm_table

    runs = pd.DataFrame(
        {
            "run_id": ["old", "new", "other", "failed"],
            "model": ["psalm"] * 4,
            "arm": ["baseline", "baseline", "no_pyramid", "no_pyramid"],
            "status": ["FINISHED", "FINISHED", "FINISHED", "FAILED"],
            "metrics.test/nAP50": [0.1, 0.5, 0.4, 0.0],
        }
    )
    table = arm_table(runs, "test/nAP50", left_out={"old"})
    assert "baseline           0.500 ± 0.000  (n=1)" in table
    assert "no_pyramid         0.400 ± 0.000  (n=1)" in table


def test_list_names_every_study(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"pyramid", "conv", "support", "all"} <= set(names)


def test_status_of_an_unknown_study_fails_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["status", "no-such-study-x7", "--output-dir", str(tmp_path)]) != 0
    assert "no-such-study-x7" in capsys.readouterr().err


def test_status_names_where_each_reused_run_was_trained() -> None:
    # a study reuses any FINISHED run of the same identity: one another study trained, or one a
    # plain `python -m psalm.train` made (no study tag; pandas may hold it as None or NaN)
    runs = pd.DataFrame(
        {
            "run_name": ["psalm/baseline/seed0", "psalm/baseline/seed1", "psalm/no_conv/seed0"],
            "status": ["FINISHED", "FINISHED", "RUNNING"],
            "study": ["pyramid-default", float("nan"), "conv-default"],
        }
    )
    assert trained_elsewhere(runs, "conv-default") == [
        "psalm/baseline/seed0 (FINISHED, from study pyramid-default)",
        "psalm/baseline/seed1 (FINISHED, trained outside any study)",
    ]
    runs["study"] = [None, "", "conv-default"]
    assert [line.split(", ")[1] for line in trained_elsewhere(runs, "conv-default")] == [
        "trained outside any study)"
    ] * 2


def _sleep(seconds: int) -> int:
    time.sleep(seconds)
    return seconds


@pytest.mark.slow
def test_cancel_stops_a_dispatched_study_and_ends_its_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("psalm")
    runs = {  # as a killed job leaves them: RUNNING (and a run of another study, and a done one)
        (study, name): client.create_run(
            experiment, run_name=name, tags={"study": study}
        ).info.run_id
        for study, name in [("sleepy-default", "a/seed0"), ("other-default", "a/seed0"),
                            ("sleepy-default", "c/seed0")]
    }  # fmt: skip
    client.set_terminated(runs["sleepy-default", "c/seed0"], "FINISHED")
    # A study's jobs are dispatched like any batch: two long jobs on one local slot.
    folder = study_folder("sleepy-default", tmp_path)
    launcher = LauncherConfig(kind="local", slots=1)
    dispatch([60, 60], _sleep, launcher, folder, labels=["a/seed0", "b/seed0"], wait=False)
    deadline = time.time() + 30
    while status(folder)[0].state != "running" and time.time() < deadline:
        time.sleep(0.1)
    running = status(folder)[0]
    assert running.state == "running"

    # a misspelt experiment is refused before any job is stopped, and not created
    argv = ["cancel", "sleepy-default", "--output-dir", str(tmp_path)]
    assert main([*argv, "--experiment", "psalm-typo"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow experiment 'psalm-typo'" in err and "Default, psalm)" in err, err
    assert client.get_experiment_by_name("psalm-typo") is None
    assert [s.state for s in status(folder)] == ["running", "queued"]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a/seed0" in out and "b/seed0" in out and "2 job(s) cancelled" in out, out
    statuses = wait_for(folder, progress=False, poll_s=0.2, timeout_s=30)
    assert [s.state for s in statuses] == ["cancelled", "cancelled"]
    assert not Path(f"/proc/{running.job_id}").exists()  # the running job's controller is gone
    assert "marked KILLED a/seed0" in out, out
    ended = {key: client.get_run(run_id).info.status for key, run_id in runs.items()}
    assert ended == {
        ("sleepy-default", "a/seed0"): "KILLED",  # resumable at once by `run`
        ("other-default", "a/seed0"): "RUNNING",
        ("sleepy-default", "c/seed0"): "FINISHED",
    }

    assert main(["cancel", "sleepy-default", "--output-dir", str(tmp_path)]) == 0
    assert "nothing to cancel" in capsys.readouterr().out
    assert main(["cancel", "no-such-study-x7", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no-such-study-x7" in err and "sleepy-default" in err, err


# --- end to end on the debug launcher -------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """A temporary MLflow store (``MLFLOW_TRACKING_URI`` points at it) and a scratch folder."""

    root: Path
    uri: str
    client: MlflowClient
    experiment_id: str

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def outputs(self) -> Path:
        """The studies' ``output_dir``: run folders and ``studies/<study>/`` dispatch files."""
        return self.root / "runs"

    def runs(self, study: str, deleted: bool = False) -> list[Run]:
        """The study's runs (active ones, or only deleted ones)."""
        return self.client.search_runs(
            [self.experiment_id],
            f"tags.study = '{study}'",
            run_view_type=2 if deleted else 1,  # ViewType.DELETED_ONLY / ACTIVE_ONLY
            max_results=1000,
        )

    def steps(self, run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, make_mlflow_store: Callable) -> Iterator[Store]:
    """One MLflow store for the module, set as ``MLFLOW_TRACKING_URI`` (subprocesses inherit it)."""
    root = tmp_path_factory.mktemp("ablations")
    with make_mlflow_store(root) as (uri, client, experiment_id):
        yield Store(root, uri, client, experiment_id)


@dataclass(frozen=True)
class StudyRun:
    """A finished ``ablations run``: its arguments, output and the runs right afterwards."""

    study: str
    argv: tuple[str, ...]
    returncode: int
    out: str
    err: str
    runs: tuple[Run, ...]


def study_argv(store: Store, name: str, sid: str, *extra: str) -> list[str]:
    return [
        "run",
        name,
        *SMOKE,
        "launcher=debug",
        "seeds=[0]",
        *extra,
        f"output_dir={store.outputs}",
        f"label.study={sid}",
    ]


def run_in_process(argv: Sequence[str], cwd: Path) -> int:
    """``python -m ablations argv`` in this process, from ``cwd``, without the final report.

    The report (tables, dashboard) is checked on the subprocess run of the pyramid study; the
    in-process runs here check dispatch and bookkeeping only.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(
            "ablations.__main__.print_results", lambda study, uri: print(f"(report of {study})")
        )
        return main(list(argv))


@pytest.fixture(scope="module")
def pyramid_study(store: Store) -> StudyRun:
    """``python -m ablations run pyramid … models=[psalm]`` as a subprocess."""
    sid = "pytest-pyramid"
    argv = study_argv(store, "pyramid", sid, "models=[psalm]")
    proc = subprocess.run(
        [sys.executable, "-m", "ablations", *argv],
        cwd=store.cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": store.uri},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return StudyRun(
        sid, tuple(argv), proc.returncode, proc.stdout, proc.stderr, tuple(store.runs(sid))
    )


@pytest.fixture(scope="module")
def support_study(store: Store) -> StudyRun:
    """``python -m ablations run support … models=[cheaf]``, in-process."""
    sid = "pytest-support"
    argv = study_argv(store, "support", sid, "models=[cheaf]")
    rc = run_in_process(argv, store.cwd)
    return StudyRun(sid, tuple(argv), rc, "", "", tuple(store.runs(sid)))


@pytest.mark.slow
def test_pyramid_study_records_one_finished_run_per_cell(
    pyramid_study: StudyRun, store: Store
) -> None:
    s = pyramid_study
    arms = sorted(r.data.tags["arm"] for r in s.runs)
    assert arms == ["baseline", "no_pyramid"], (
        f"one run per cell:\n{s.out[-2000:]}\n{s.err[-2000:]}"
    )
    for r in s.runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["model"] == "psalm" and r.data.tags["ablation"] == "pyramid"
        assert store.steps(r.info.run_id, "train/loss") == list(range(1, STEPS + 1))
        assert "test/nAP50" in r.data.metrics


@pytest.mark.slow
def test_pyramid_study_ends_with_the_arm_and_verdict_tables(
    pyramid_study: StudyRun, store: Store
) -> None:
    s = pyramid_study
    assert s.returncode == 0, f"ablations run failed:\n{s.out[-3000:]}\n{s.err[-3000:]}"
    table = s.out[s.out.index("per arm") :]
    assert any("psalm" in line and "baseline" in line for line in table.splitlines())
    assert any("psalm" in line and "no_pyramid" in line for line in table.splitlines())
    verdicts = s.out[s.out.index("verdict") :]
    row = [line for line in verdicts.splitlines() if "no_pyramid" in line]
    assert row, f"no verdict row for no_pyramid:\n{verdicts}"
    assert "inconclusive" in row[0], "one seed must never give a verdict"
    dashboard = Path(s.out.split("dashboard:", 1)[1].split()[0])
    dashboard = dashboard if dashboard.is_absolute() else store.cwd / dashboard
    assert dashboard.is_file() and dashboard.is_relative_to(store.cwd)


@pytest.mark.slow
def test_running_a_finished_study_again_starts_nothing(
    pyramid_study: StudyRun, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(pyramid_study.runs) == 2, "the study did not record its runs"
    batches = study_folder(pyramid_study.study, store.outputs) / "dispatch"
    before = sorted(p.name for p in batches.iterdir())
    capsys.readouterr()
    assert run_in_process(pyramid_study.argv, store.cwd) == 0
    err = capsys.readouterr().err  # the plan and progress are logged to stderr
    assert "2 already finished" in err, err
    assert "dispatching" not in err
    assert sorted(p.name for p in batches.iterdir()) == before, "a new batch was dispatched"
    now = sorted(r.info.run_id for r in store.runs(pyramid_study.study))
    assert now == sorted(r.info.run_id for r in pyramid_study.runs), "new runs were recorded"


@pytest.mark.slow
def test_status_lists_the_jobs_of_a_dispatched_study(
    pyramid_study: StudyRun,
    store: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert len(pyramid_study.runs) == 2, "the study did not record its runs"
    capsys.readouterr()
    # the study recorded its store: status reads the runs there whatever the environment says
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.root / 'another.db'}")
    assert main(["status", pyramid_study.study, "--output-dir", str(store.outputs)]) == 0
    out = capsys.readouterr().out
    for label in ("psalm/baseline/seed0", "psalm/no_pyramid/seed0"):
        assert label in out, out
    assert "done" in out, out
    assert "MLflow: 2 run(s): 2 FINISHED" in out, out


@pytest.mark.slow
def test_support_study_trains_the_baseline_once_and_evaluates_it(
    support_study: StudyRun, store: Store
) -> None:
    s = support_study
    assert s.returncode == 0
    by_arm = {r.data.tags["arm"]: r for r in s.runs}
    assert sorted(by_arm) == ["baseline", "support_bypass", "support_none", "support_shuffled"]
    assert len(s.runs) == 4, "one run per cell"
    baseline = by_arm["baseline"]
    assert baseline.data.tags["kind"] == "train"
    assert store.steps(baseline.info.run_id, "train/loss") == list(range(1, STEPS + 1))
    for arm, mode in (
        ("support_none", "none"), ("support_bypass", "bypass"), ("support_shuffled", "shuffled")
    ):  # fmt: skip
        ev = by_arm[arm]
        assert ev.info.status == "FINISHED"
        assert ev.data.tags["kind"] == "eval" and ev.data.tags["eval_mode"] == mode
        assert ev.data.tags["eval_of"] == baseline.info.run_id
        assert "train/loss" not in ev.data.metrics, "an evaluation arm trained"
        assert "test/nAP50" in ev.data.metrics


@pytest.mark.slow
def test_force_retires_the_finished_runs_and_records_new_ones(
    support_study: StudyRun, store: Store
) -> None:
    assert support_study.returncode == 0
    old = {r.data.tags["arm"]: r.info.run_id for r in support_study.runs}
    old_hash = next(r for r in support_study.runs if r.data.tags["arm"] == "baseline").data.tags[
        "config_hash"
    ]
    assert run_in_process([*support_study.argv, "--force"], store.cwd) == 0
    retired = list(store.outputs.glob(f"{old_hash}.retired-*"))
    assert retired, "the old run's folder (its checkpoint) was not kept"

    new = {r.data.tags["arm"]: r for r in store.runs(support_study.study)}
    assert sorted(new) == sorted(old), "one active run per cell after --force"
    for arm, run_id in old.items():
        assert new[arm].info.run_id != run_id
        assert new[arm].info.status == "FINISHED"
        assert store.client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert new["support_none"].data.tags["eval_of"] == new["baseline"].info.run_id
    # soft-deleted, so still restorable
    store.client.restore_run(old["baseline"])
    assert store.client.get_run(old["baseline"]).info.lifecycle_stage == "active"


# --- a baseline shared by two studies -------------------------------------------------------


@pytest.fixture(scope="module")
def conv_study(pyramid_study: StudyRun, store: Store) -> StudyRun:
    """``python -m ablations run conv … models=[psalm]``, in-process, after the pyramid study:
    its baseline is the pyramid study's (same config), so it trains only ``no_conv``."""
    sid = "pytest-conv"
    argv = study_argv(store, "conv", sid, "models=[psalm]")
    rc = run_in_process(argv, store.cwd)
    return StudyRun(sid, tuple(argv), rc, "", "", tuple(store.runs(sid)))


@pytest.mark.slow
def test_a_baseline_another_study_trained_is_in_this_studys_analysis(
    pyramid_study: StudyRun, conv_study: StudyRun, store: Store, capsys: pytest.CaptureFixture
) -> None:
    from analysis import analyze_study, list_studies, load_runs, write_dashboard

    assert pyramid_study.returncode == 0 and conv_study.returncode == 0
    baseline = next(r for r in pyramid_study.runs if r.data.tags["arm"] == "baseline")
    # trained once, by the pyramid study: the conv study recorded only its variant
    assert [r.data.tags["arm"] for r in conv_study.runs] == ["no_conv"]
    tags = store.client.get_run(baseline.info.run_id).data.tags
    assert tags["study"] == "pytest-pyramid" and tags["studies"] == "pytest-pyramid,pytest-conv"

    conv = analyze_study("pytest-conv", store.uri)
    assert sorted(conv.runs["arm"]) == ["baseline", "no_conv"]
    assert baseline.info.run_id in set(conv.runs["run_id"])
    pair = conv.deltas.pairs
    assert list(pair["arm"]) == ["no_conv"] and list(pair["baseline_run_id"]) == [
        baseline.info.run_id
    ], conv.deltas.excluded
    assert list(conv.verdicts["arm"]) == ["no_conv"] and list(conv.verdicts["n"]) == [1]
    page = write_dashboard(conv, store.root / "reports").read_text()
    assert "no_conv" in page and baseline.info.run_id in page

    # the pyramid study is unchanged by the sharing
    pyramid = analyze_study("pytest-pyramid", store.uri)
    assert sorted(pyramid.runs["arm"]) == ["baseline", "no_pyramid"]
    assert list(pyramid.verdicts["arm"]) == ["no_pyramid"]

    # membership is by whole name: "pytest" is a prefix of both studies, not a study
    assert {"pytest-conv", "pytest-pyramid"} <= set(list_studies(store.uri))
    assert "pytest" not in list_studies(store.uri)
    with pytest.raises(LookupError):
        load_runs("pytest", store.uri)

    capsys.readouterr()
    assert main(["status", "pytest-conv", "--output-dir", str(store.outputs)]) == 0
    out = capsys.readouterr().out
    assert "psalm/no_conv/seed0" in out, out
    assert "2 run(s): 2 FINISHED" in out and "psalm/baseline/seed0" in out, out
    assert "trained elsewhere: " in out and "from study pytest-pyramid" in out, out
