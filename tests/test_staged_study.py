"""Staged studies (``pretrain=<data>``, ablations/study.py) and ``init_from=<config hash>``
(pipeline/init_from.py): every training cell first trains on other data, then fine-tunes on the
study's data from those weights, as the report's source project trains before its videos.

What users rely on: the first stage of a cell is exactly the other data's own study cell (so a
study already run there is reused, never trained twice); the fine-tuned cell really starts from
that cell's final weights and says so; the staged study's verdicts see only its own runs; a
setting that cannot work is refused before anything is dispatched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablations.__main__ import main
from ablations.study import expand, load_study, study_id
from pipeline.config import ConfigError, check_spec, make_spec, run_dir
from pipeline.init_from import checkpoint_path
from psalm.data import synthetic_video_benchmark
from psalm.training import CHECKPOINT_NAME

SMOKE = ("profile=smoke",)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Overrides for a small embedded video benchmark (3 training, 2 test videos of 12 frames)
    with its own frame cache."""
    root = tmp_path_factory.mktemp("staged_video")
    paths = synthetic_video_benchmark(root / "bench", n_train=3, n_test=2, frames=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PSALM_CACHE_DIR", str(root / "cache"))
        yield ["data=video", "data.eval_stride=1", *(f"data.{k}={v}" for k, v in paths.items())]


def _no_labels(spec) -> dict:
    return {k: v for k, v in spec.config.items() if k != "label"}


def test_each_training_cell_starts_from_the_glyph_studys_own_cell(video: list[str]) -> None:
    study = load_study("pyramid", ["models=[psalm,cheaf]", "seeds=[0,1]", "pretrain=synthetic"])
    plan = expand(study, [*SMOKE, *video])
    glyph = expand(load_study("pyramid", ["models=[psalm,cheaf]", "seeds=[0,1]"]), SMOKE)

    assert plan.study == "pyramid-smoke-video-from-synthetic"
    # the first stage is the glyph study's training cells, same identity and same labels
    assert [s.config_hash for s in plan.pretrain] == [s.config_hash for s in glyph.train]
    assert [s.config["label"] for s in plan.pretrain] == [s.config["label"] for s in glyph.train]
    assert {s.config["label"]["study"] for s in plan.pretrain} == {"pyramid-smoke"}
    assert {s.config["data"]["name"] for s in plan.pretrain} == {"synthetic"}

    # each video cell (baseline and no-pyramid arm) starts from its own first stage
    assert len(plan.train) == len(plan.pretrain) == 8
    for stage, cell in zip(plan.pretrain, plan.train, strict=True):
        assert cell.config["data"]["name"] == "video"
        assert cell.config["label"]["study"] == plan.study
        assert cell.config["init_from"] == stage.config_hash
        assert cell.config["model"] == stage.config["model"]  # the weights fit by construction
        assert (cell.config["seed"], cell.config["label"]["arm"]) == (
            stage.config["seed"],
            stage.config["label"]["arm"],
        )
    # the names a user reads in messages and cells.json tell the stages apart
    names = [plan.cell(s) for s in plan.all]
    assert len(set(names)) == len(names)
    assert plan.cell(plan.pretrain[0]) == "psalm/baseline/seed0 (pretraining on synthetic)"
    assert [phase for phase, _ in plan.phases()] == ["pretraining", "training", "evaluation"]


def test_a_staged_study_is_another_study_than_the_one_stage_study(video: list[str]) -> None:
    one_stage = load_study("support", ["seeds=[0]"])
    staged = load_study("support", ["seeds=[0]", "pretrain=synthetic"])
    assert study_id(one_stage, [*SMOKE, *video]) == "support-smoke-video"
    assert study_id(staged, [*SMOKE, *video]) == "support-smoke-video-from-synthetic"
    # an explicit study name names the first stage's study after it
    plan = expand(staged, [*SMOKE, *video, "label.study=mine"])
    assert plan.study == "mine"
    assert {s.config["label"]["study"] for s in plan.pretrain} == {"mine-synthetic"}
    assert {s.eval_of for s in plan.evaluate} == {s.config_hash for s in plan.train}


@pytest.mark.parametrize(
    ("settings", "overrides", "expected"),
    [
        (["pretrain=glyphs"], ["data=video"], "pretrain=glyphs: not a data option"),
        (["pretrain=synthetic"], [], "the first stage must be other data"),
        (["pretrain=synthetic"], ["data=video", "init_from=/x"], "both say where training starts"),
    ],
)
def test_a_staged_study_that_cannot_work_is_refused_before_dispatch(
    settings: list[str], overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        expand(load_study("support", ["seeds=[0]", *settings]), [*SMOKE, *overrides])


def test_a_config_hash_with_no_finished_run_is_refused(tmp_path: Path, tmp_mlflow_uri) -> None:
    spec = make_spec([*SMOKE, "init_from='0123456789abcdef'", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="init_from=0123456789abcdef: no run with config hash"):
        check_spec(spec)


def _run_study(argv: Sequence[str], cwd: Path) -> int:
    """``python -m ablations argv`` in this process, from ``cwd``, without the final report
    (tables and dashboard are checked on the one-stage studies, tests/test_ablations.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr("ablations.__main__.print_results", lambda study, uri: None)
        return main(list(argv))


@pytest.mark.slow
def test_a_staged_support_study_runs_its_stages_in_order_and_once(
    video: list[str], tmp_path: Path, tmp_mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from analysis import load_runs
    from analysis.study_run import find_study_run

    out = tmp_path / "runs"
    argv = [
        "run",
        "support",
        "models=[psalm]",
        "seeds=[0]",
        "pretrain=synthetic",
        *SMOKE,
        *video,
        "launcher=debug",
        f"output_dir={out}",
    ]
    assert _run_study(argv, tmp_path) == 0
    client = MlflowClient(tmp_mlflow_uri)
    experiment = client.get_experiment_by_name("psalm").experiment_id

    def cells() -> list:  # training and evaluation runs, not the study's parent run
        return [r for r in client.search_runs([experiment]) if r.data.tags["kind"] != "study"]

    runs = {(r.data.tags["study"], r.data.tags["arm"]): r for r in cells()}
    staged = "support-smoke-video-from-synthetic"
    arms = ("baseline", "support_bypass", "support_none", "support_shuffled")
    assert sorted(runs) == sorted([("support-smoke", "baseline")] + [(staged, a) for a in arms])
    assert all(r.info.status == "FINISHED" for r in runs.values())
    first, video_run = runs["support-smoke", "baseline"], runs[staged, "baseline"]
    first_hash = first.data.tags["config_hash"]
    # the fine-tuned run started from the first stage's final checkpoint, and says so
    assert video_run.data.tags["init_from"] == first_hash
    first_file = out / first_hash / CHECKPOINT_NAME
    assert (
        video_run.data.tags["init_from_sha256"]
        == hashlib.sha256(first_file.read_bytes()).hexdigest()
    )
    assert "test/st_iou" in video_run.data.metrics and "test/st_iou" not in first.data.metrics
    for arm in ("support_bypass", "support_none", "support_shuffled"):
        assert runs[staged, arm].data.tags["eval_of"] == video_run.info.run_id

    # run again: every cell of both stages is found FINISHED, nothing is dispatched
    caplog.clear()
    assert _run_study(argv, tmp_path) == 0
    assert "5 already finished" in caplog.text, caplog.text
    assert "dispatching" not in caplog.text
    assert len(cells()) == 5
    # the staged study's analysis sees its own runs only (the first stage, found FINISHED, was
    # not joined to it), the glyph study only the first stage
    assert sorted(load_runs(staged, tmp_mlflow_uri)["run_id"]) == sorted(
        r.info.run_id for (study, _), r in runs.items() if study == staged
    )
    assert list(load_runs("support-smoke", tmp_mlflow_uri)["run_id"]) == [first.info.run_id]
    assert find_study_run(staged, tmp_mlflow_uri).data.tags["pretrain"] == "synthetic"


@pytest.mark.slow
def test_init_from_a_config_hash_finds_the_runs_checkpoint_here_or_in_mlflow(
    tmp_path: Path, tmp_mlflow_uri: str
) -> None:
    from pipeline.run import run

    out = f"output_dir={tmp_path / 'runs'}"
    source = make_spec([*SMOKE, "data.n_val=4", "data.n_test=6", out])
    run(source)
    local = run_dir(source) / CHECKPOINT_NAME
    started = make_spec([*SMOKE, out, "seed=1", f"init_from='{source.config_hash}'"])
    check_spec(started)  # exists, FINISHED, and fits
    assert checkpoint_path(source.config_hash, started.config, tmp_mlflow_uri) == local.resolve()

    # the run's folder is gone (another machine, a cleaned disk): its MLflow artifact is used
    shutil.move(run_dir(source), tmp_path / "moved")
    fetched = checkpoint_path(source.config_hash, started.config, tmp_mlflow_uri)
    assert fetched != local.resolve() and fetched.is_file()
    assert fetched.read_bytes() == (tmp_path / "moved" / CHECKPOINT_NAME).read_bytes()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (["DATA=video"], "pretrain=synthetic"),  # the videos train in two stages by default
        (["DATA=video", "PRETRAIN=none"], None),
        (["DATA=synthetic"], None),
        ([], None),
        (["DATA=coco", "PRETRAIN=synthetic"], "pretrain=synthetic"),
    ],
)
def test_make_trains_video_studies_in_two_stages_unless_told_otherwise(
    variables: list[str], expected: str | None
) -> None:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "DATA", "PRETRAIN")  # as a user types it
    env = {k: v for k, v in os.environ.items() if k not in outer}
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "ablation-support", *variables],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = next(line for line in out.splitlines() if "-m ablations run support" in line)
    pretrain = [word for word in command.split() if word.startswith("pretrain=")]
    assert pretrain == ([expected] if expected else []), command
