"""Every error a user can cause is one line on stderr and a non-zero exit, on every entry point,
and records nothing in MLflow (issue 15).

Each case calls an entry point's ``main(argv)`` in this process (the same function ``python -m``
runs), with ``MLFLOW_TRACKING_URI`` on a fresh store; two cases run the real command in a
subprocess too. ``--debug`` / ``HYDRA_FULL_ERROR=1`` bring the traceback back (last test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_data_coco import write_coco

import ablations.__main__ as ablations_cli
import analysis.__main__ as analysis_cli
import pipeline.profile as profile_cli
import psalm.benchmark as benchmark_cli
import psalm.data.__main__ as data_cli
import psalm.evaluate as evaluate_cli
import psalm.train as train_cli
import sweeps.__main__ as sweeps_cli
from ablations.study import STUDY_DIR

SMOKE = ["profile=smoke", "data.n_val=4", "data.n_test=6"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def _coco(root: Path, break_it: Callable[[Path, Path], None] | None = None) -> list[str]:
    """``data=coco`` overrides over a small COCO set; ``break_it(train_ann, train_images)``
    damages it first."""
    train_ann, train_images = write_coco(root, "train")
    test_ann, test_images = write_coco(root, "test")
    if break_it is not None:
        break_it(train_ann, train_images)
    return [
        "data=coco",
        f"data.train_ann={train_ann}",
        f"data.train_images={train_images}",
        f"data.test_ann={test_ann}",
        f"data.test_images={test_images}",
        "data.novel_classes=[dog]",
        "data.image_size=64",
        "data.support_size=32",
    ]


def _truncate(ann: Path, images: Path) -> None:
    ann.write_text(ann.read_text()[:-40])


def _box_outside(ann: Path, images: Path) -> None:
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [70, 5, 20, 20]  # image 1 is 80 wide
    ann.write_text(json.dumps(data))


def _no_categories(ann: Path, images: Path) -> None:
    data = json.loads(ann.read_text())
    data["categories"] = []
    ann.write_text(json.dumps(data))


def _missing_image(ann: Path, images: Path) -> None:
    (images / "train2.png").unlink()


def _other_sweep_storage(root: Path) -> Path:
    """An Optuna storage that holds another sweep only."""
    import optuna

    path = root / "optuna.db"
    optuna.create_study(study_name="another-sweep", storage=f"sqlite:///{path}")
    return path


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _sweep_file(root: Path, change: Callable[[str], str]) -> str:
    """conf/sweep/psalm.yaml, changed by ``change``, as a file in ``root``."""
    text = (REPO_ROOT / "conf" / "sweep" / "psalm.yaml").read_text()
    return str(_written(root / "changed.yaml", change(text)))


# (id, entry point, argv builder given a scratch folder, extra environment, expected text)
CASES: list[tuple[str, object, Callable[[Path], list[str]], dict[str, str], str]] = [
    ("bad flag value", ablations_cli, lambda t: ["run", "pyramid", "--no-wait=3"], {}, "no-wait"),
    ("unknown study", ablations_cli, lambda t: ["run", "pyramd", *SMOKE], {}, "pyramid"),
    (
        "unknown launcher",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "launcher=slurmm"],
        {},
        "slurm",
    ),
    ("negative lr", train_cli, lambda t: ["model.lr=-1", *SMOKE], {}, "model.lr"),
    (
        "missing annotation file",
        train_cli,
        lambda t: [*_coco(t), f"data.train_ann={t / 'nope.json'}", *SMOKE[:1]],
        {},
        "nope.json",
    ),
    ("truncated JSON", train_cli, lambda t: [*_coco(t, _truncate), *SMOKE[:1]], {}, "JSON"),
    (
        "box outside the image",
        train_cli,
        lambda t: [*_coco(t, _box_outside), *SMOKE[:1]],
        {},
        "outside",
    ),
    (
        "missing image file",
        train_cli,
        lambda t: [*_coco(t, _missing_image), *SMOKE[:1]],
        {},
        "missing",
    ),
    ("no categories", train_cli, lambda t: [*_coco(t, _no_categories), *SMOKE[:1]], {}, "categor"),
    ("num_heads=0", train_cli, lambda t: ["model.num_heads=0", *SMOKE], {}, "model.num_heads"),
    (
        "YAML syntax error in a study file",
        ablations_cli,
        lambda t: ["run", "_pytest_broken_study", *SMOKE],
        {},
        "_pytest_broken_study.yaml",
    ),
    (
        "bad MLFLOW_TRACKING_URI",
        train_cli,
        lambda t: [*SMOKE, f"output_dir={t / 'runs'}"],
        {"MLFLOW_TRACKING_URI": "sqlite:////proc/x/mlflow.db"},
        "MLFLOW_TRACKING_URI",
    ),
    (
        "typo'd +key",
        train_cli,
        lambda t: ["+model.use_pyrmid=false", *SMOKE],
        {},
        "did you mean model.use_pyramid",
    ),
    (
        "typo'd key",
        train_cli,
        lambda t: ["model.use_pyrmid=false", *SMOKE],
        {},
        "did you mean model.use_pyramid",
    ),
    ("override syntax error", train_cli, lambda t: ["model.lr=[", *SMOKE], {}, "model.lr"),
    (
        "unknown model in a study",
        ablations_cli,
        lambda t: ["run", "pyramid", "models=[psalmm]", *SMOKE],
        {},
        "psalmm",
    ),
    ("seeds not a list", ablations_cli, lambda t: ["run", "pyramid", "seeds=abc"], {}, "seeds"),
    ("unknown sweep", sweeps_cli, lambda t: ["run", "nosuch", *SMOKE], {}, "nosuch"),
    (
        "sweep with 0 trials",
        sweeps_cli,
        lambda t: ["run", "psalm", "trials=0", *SMOKE],
        {},
        "trials",
    ),
    (
        "init_from with no checkpoint",
        train_cli,
        lambda t: [*SMOKE, f"init_from={t / 'nope'}"],
        {},
        "no checkpoint there",
    ),
    ("unknown evaluation mode", evaluate_cli, lambda t: ["mode=bogus", *SMOKE], {}, "bogus"),
    (
        "evaluating a run never trained",
        evaluate_cli,
        lambda t: ["mode=none", *SMOKE, "seed=987", f"output_dir={t / 'runs'}"],
        {},
        "train it first",
    ),
    (
        "unknown study to analyse",
        analysis_cli,
        lambda t: ["verdicts", "nosuch-study"],
        {},
        "nosuch",
    ),
    # the notebook used to start a kernel and fail inside it, with the cell's traceback
    ("unknown study's notebook", analysis_cli, lambda t: ["notebook", "nosuch"], {}, "nosuch"),
    # a repeated seed would be one run counted as two in the study's interval
    ("repeated seed", ablations_cli, lambda t: ["run", "pyramid", "seeds=[0,0]"], {}, "repeats"),
    # a negative seed used to be dispatched and fail in every job
    (
        "negative seed",
        ablations_cli,
        lambda t: ["run", "pyramid", "seeds=[-1]", *SMOKE],
        {},
        "seed",
    ),
    # seed= or model= in a study's run overrides gave every cell the same seed or model: the
    # 12 cells of the pyramid study trained as 4 runs and the study exited 0 with no pairs
    (
        "a study's seed= override",
        ablations_cli,
        lambda t: ["run", "pyramid", "seed=3"],
        {},
        "seeds=",
    ),
    (
        "a study's model= override",
        ablations_cli,
        lambda t: ["run", "support", "model=cheaf", *SMOKE],
        {},
        "models=",
    ),
    # an unparsable study setting printed YAML's message without naming it
    ("unparsable seeds", ablations_cli, lambda t: ["run", "pyramid", "seeds=[0,"], {}, "seeds=[0,"),
    # an unknown device used to open an MLflow run that then stayed RUNNING
    ("unknown device", train_cli, lambda t: [*SMOKE, "train.device=tpu"], {}, "train.device"),
    ("profile of an unknown model", profile_cli, lambda t: ["model=nosuch"], {}, "nosuch"),
    ("profile of 0 steps", profile_cli, lambda t: ["--steps", "0"], {}, "--steps"),
    # these four printed tracebacks, the last two only after minutes of measuring
    ("benchmark of 1 repeat", benchmark_cli, lambda t: ["--repeats", "1"], {}, "--repeats"),
    ("benchmark on a TPU", benchmark_cli, lambda t: ["--device", "tpu"], {}, "--device"),
    ("benchmark into a folder", benchmark_cli, lambda t: ["--out", str(t)], {}, "--out"),
    (
        "benchmark into /proc",
        benchmark_cli,
        lambda t: ["--out", "/proc/nosuch/b.json"],
        {},
        "--out",
    ),
    ("data report of 0 batches", data_cli, lambda t: ["--batches", "0"], {}, "--batches"),
    ("data report of -1 val canvases", data_cli, lambda t: ["--n-val", "-1"], {}, "--n-val"),
    ("benchmark on 0 threads", benchmark_cli, lambda t: ["--threads", "0"], {}, "--threads"),
    # a metric no run logs used to train the whole study and store it as the study's metric;
    # every verdict then read "inconclusive, n=0", also in later runs of the study
    (
        "a study judged on a metric never logged",
        ablations_cli,
        lambda t: ["run", "pyramid", "metric=test/bogus", *SMOKE],
        {},
        "test/nAP50",
    ),
    (
        "a video metric on synthetic data",
        ablations_cli,
        lambda t: ["run", "pyramid", "metric=test/st_iou", *SMOKE],
        {},
        "data=video",
    ),
    (
        "verdicts on a bogus metric",
        analysis_cli,
        lambda t: ["verdicts", "x", "--metric", "b"],
        {},
        "'b'",
    ),
    # MLflow's client retried an unreachable server for about 4 minutes before saying so
    (
        "an unreachable tracking server",
        train_cli,
        lambda t: [*SMOKE],
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        "no MLflow tracking server answers at http://127.0.0.1:9",
    ),
    (
        "an unreachable tracking server for a study",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, f"output_dir={t / 'runs'}"],
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        "no MLflow tracking server answers",
    ),
    # a PermissionError (exit 1) that did not name the key
    (
        "output_dir that cannot be made",
        train_cli,
        lambda t: [*SMOKE, "output_dir=/proc/nosuch/runs"],
        {},
        "output_dir=/proc/nosuch/runs",
    ),
    (
        "a study's output_dir that cannot be made",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "output_dir=/proc/nosuch/runs"],
        {},
        "output_dir=",
    ),
    # a misspelt study or sweep setting reads as a run key: the hint named a run key
    ("misspelt sweep setting", sweeps_cli, lambda t: ["run", "psalm", "trails=8"], {}, "trials="),
    (
        "misspelt study setting",
        ablations_cli,
        lambda t: ["run", "pyramid", "seds=[0]"],
        {},
        "seeds=",
    ),
    # overrides after a flag were "unrecognized arguments" in commands with subcommands
    (
        "an override after a flag",
        ablations_cli,
        lambda t: ["run", "pyramid", "-q", "seeds=[0,"],
        {},
        "seeds=[0,",
    ),
    # these passed the checks and failed after training (or trained for nothing), leaving a
    # FAILED run; the thread count crashed the process and left it RUNNING
    ("zero test canvases", train_cli, lambda t: [*SMOKE, "data.n_test=0"], {}, "data.n_test"),
    ("unknown eval split", train_cli, lambda t: [*SMOKE, "eval.split=banana"], {}, "eval.split"),
    ("infinite lr", train_cli, lambda t: [*SMOKE, "model.lr=inf"], {}, "model.lr"),
    ("seed over 2**32", train_cli, lambda t: [*SMOKE, "seed=99999999999999"], {}, "seed must"),
    ("100000 threads", train_cli, lambda t: [*SMOKE, "train.threads=100000"], {}, "train.threads"),
    (
        "a study name with a path in it",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "label.study=../../escape"],
        {},
        "label.study",
    ),
    # KeyError: 'Record does not exist.' with exit 1
    (
        "export of a sweep never run",
        sweeps_cli,
        lambda t: ["export", "psalm", f"storage=sqlite:///{_other_sweep_storage(t)}"],
        {},
        "no sweep psalm",
    ),
    # these failed only after every trial had run (exit 1)
    (
        "sweep export into a folder",
        sweeps_cli,
        lambda t: ["run", "psalm", f"export={t}"],
        {},
        "fold",
    ),
    (
        "sweep export name with an unknown field",
        sweeps_cli,
        lambda t: ["run", "psalm", "export='out/{foo}.yaml'"],
        {},
        "only {model}",
    ),
    (
        "compare at level 5",
        analysis_cli,
        lambda t: ["compare", "a", "b", "--alpha", "5"],
        {},
        "alph",
    ),
    # MLflow took a bare .db path for a file store's folder
    (
        "a SQLite file without sqlite:///",
        train_cli,
        lambda t: [*SMOKE, f"tracking.uri={t / 'mlflow.db'}"],
        {},
        "sqlite:///",
    ),
    # these trained a run to its first step (or a study to dispatch) before failing, exit 1
    ("a canvas under the glyphs", train_cli, lambda t: [*SMOKE, "data.image_size=32"], {}, "64"),
    (
        "five episodes on a canvas",
        train_cli,
        lambda t: [*SMOKE, "data.episodes_per_canvas=5"],
        {},
        "data.episodes_per_canvas=5",
    ),
    (
        "launcher slots not a number",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "launcher.slots=abc"],
        {},
        "launcher.slots",
    ),
    (
        "launcher setup as one string",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "launcher=slurm", "launcher.setup=module load x"],
        {},
        "launcher.setup",
    ),
    (
        "a time limit under the checkpoint signal's lead",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "launcher.time_min=0.05"],
        {},
        "launcher.signal_delay_s=90",
    ),
    (
        "GPUs named on a machine without one",
        ablations_cli,
        lambda t: ["run", "pyramid", *SMOKE, "launcher.gpus=[7]"],
        {"CUDA_VISIBLE_DEVICES": ""},
        "shows no GPU",
    ),
    (
        "a sweep on SLURM without SLURM",
        sweeps_cli,
        lambda t: ["run", "psalm", *SMOKE, "launcher=slurm", f"storage=sqlite:///{t}/o.db"],
        {"PATH": "/nonexistent"},
        "sbatch",
    ),
    (
        "shuffled supports with one novel class",
        train_cli,
        lambda t: [*_coco(t), *SMOKE[:1], "eval.modes=[normal,shuffled]"],
        {},
        "one novel class (dog)",
    ),
    (
        "a support study with one novel class",
        ablations_cli,
        lambda t: ["run", "support", *_coco(t), *SMOKE[:1], "models=[psalm]", "seeds=[0]"],
        {},
        "one novel class (dog)",
    ),
    (
        "two evaluation modes",
        evaluate_cli,
        lambda t: [*SMOKE, "mode=normal", "mode=shuffled"],
        {},
        "mode= given 2 times",
    ),
    ("status of a path", ablations_cli, lambda t: ["status", "../.."], {}, "not a study's name"),
    ("report of no study", analysis_cli, lambda t: ["report", "", "--no-mlflow"], {}, "no study"),
    (
        "an empty video path",
        train_cli,
        lambda t: [*SMOKE, "data=video", "data.train_root="],
        {},
        "data.train_root must name",
    ),
    # a hybrid recorded under one profile's name; a profile of CHEAF labelled psalm
    ("two profiles", train_cli, lambda t: [*SMOKE, "profile=[default,smoke]"], {}, "one option"),
    ("profile with model=", profile_cli, lambda t: ["model=cheaf"], {}, "--models"),
    (
        "an in-memory store",
        train_cli,
        lambda t: [*SMOKE, f"output_dir={t}"],
        {"MLFLOW_TRACKING_URI": "sqlite://"},
        "in-memory",
    ),
    (  # MLflow made the missing folders: a mistyped path gave a new, empty store
        "a store in a missing folder",
        train_cli,
        lambda t: [*SMOKE, f"output_dir={t}"],
        {"MLFLOW_TRACKING_URI": "sqlite:////psalm-no-such-folder/runs/mlflow.db"},
        "/psalm-no-such-folder/runs does not exist",
    ),
    (
        "a database server that is not there",
        analysis_cli,
        lambda t: ["studies"],
        {"MLFLOW_TRACKING_URI": "postgresql://u@127.0.0.1:1/db"},
        "no database server answers",
    ),
    (
        "a cache folder that is a file",
        train_cli,
        lambda t: [*SMOKE],
        {"PSALM_CACHE_DIR": "/proc/version"},
        "PSALM_CACHE_DIR",
    ),
    (
        "a user config that is a file",
        train_cli,
        lambda t: [*SMOKE],
        {"PSALM_USER_CONF": "/proc/version"},
        "PSALM_USER_CONF",
    ),
    ("a mode given as a word", train_cli, lambda t: [*SMOKE, "eval.modes=normal"], {}, "a list"),
    (
        "a validation tail that takes every frame",
        train_cli,
        lambda t: [
            *SMOKE[:1],
            "data=video",
            "data.synthetic.frames=2",
            "data.synthetic.n_train=2",
            "data.synthetic.n_test=1",
            "data.val_fraction=0.99",
        ],
        {},
        "val_fraction=0.99",
    ),
    (
        "a UI address that is not one",
        analysis_cli,
        lambda t: ["report", "x", "--ui-url", "x"],
        {},
        "--ui-url",
    ),
    # these failed after the work was done (report: after writing to the study's MLflow run)
    (
        "a report into a file",
        analysis_cli,
        lambda t: ["report", "x", "--out", str(_written(t / "f", ""))],
        {},
        "is a file, not a folder",
    ),
    (
        "sweep export under a file",
        sweeps_cli,
        lambda t: ["run", "psalm", f"export={_written(t / 'f', '')}/x.yaml"],
        {},
        "is a file, not a folder",
    ),
    # sweep files and settings: ignored, split into characters, or a TypeError after planning
    (
        "a sweep file that is a list",
        sweeps_cli,
        lambda t: ["run", str(_written(t / "list.yaml", "- a\n- b\n"))],
        {},
        "not a list",
    ),
    (
        "a sweep file's overrides as one string",
        sweeps_cli,
        lambda t: ["run", _sweep_file(t, lambda y: y.replace("[model=psalm]", "model=psalm"))],
        {},
        "must be a list of run overrides",
    ),
    (
        "a misspelt field in a space entry",
        sweeps_cli,
        lambda t: ["run", _sweep_file(t, lambda y: y.replace("log: true}", "lgo: true}", 1))],
        {},
        "unknown field(s) ['lgo']",
    ),
    (
        "an unknown sampler setting",
        sweeps_cli,
        lambda t: ["run", "psalm", "sampler.bogus=3"],
        {},
        "sampler.bogus is not a setting",
    ),
    (
        "a threshold pruner without bounds",
        sweeps_cli,
        lambda t: ["run", "psalm", "pruner.name=threshold"],
        {},
        "pruner.lower or pruner.upper",
    ),
    (
        "expectations that are not YAML",
        analysis_cli,
        lambda t: ["verdicts", "x", "--expectations", str(_written(t / "e.yaml", "a: [\n"))],
        {},
        "e.yaml: not valid YAML",
    ),
    (
        "a missing benchmark file",
        analysis_cli,
        lambda t: ["report", "x", "--no-mlflow", "--benchmark", str(t / "nope.json")],
        {},
        "nope.json",
    ),
    # it failed only after minutes of timing
    ("profile into /proc", profile_cli, lambda t: ["--out", "/proc/nosuch/p"], {}, "--out"),
    # --models took the overrides after it for model names
    (
        "profile overrides after --models",
        profile_cli,
        lambda t: ["--models", "psalm", "seed=x"],
        {},
        "seed must be",
    ),
]


@pytest.fixture
def broken_study_file() -> Path:
    """A study file with a YAML syntax error, in the studies folder for the test's duration."""
    path = STUDY_DIR / "_pytest_broken_study.yaml"
    path.write_text("name: broken\nmodels: [psalm\nseeds: [0]\n")
    yield path
    path.unlink()


def _runs_recorded(uri: str) -> int:
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    return len(client.search_runs(ids, "")) if ids else 0


@pytest.mark.parametrize(
    ("entry", "argv", "env", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_a_user_error_is_one_line_and_a_nonzero_exit(
    entry,
    argv: Callable[[Path], list[str]],
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    tmp_mlflow_uri: str,
    broken_study_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "output_dir=" not in " ".join(args) and entry in (train_cli, evaluate_cli):
        args.append(f"output_dir={tmp_path / 'runs'}")
    try:
        code = entry.main(args)
    except SystemExit as exc:  # argparse's errors exit
        code = exc.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"exit {code}; stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in out + err
    assert expected in lines[0], lines[0]
    assert _runs_recorded(tmp_mlflow_uri) == 0, "an MLflow run was recorded"
    # a bad value or input (not a crash) is status 2; argparse's own errors too
    assert code == 2, f"exit {code}: {lines[0]}"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["psalm.train", "model.lr=-1", *SMOKE], id="python -m psalm.train"),
        pytest.param(["ablations", "run", "pyramd"], id="python -m ablations"),
    ],
)
@pytest.mark.slow
def test_the_commands_print_one_line_and_exit_2(
    argv: list[str], tmp_path: Path, tmp_mlflow_uri: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-m", *argv, f"output_dir={tmp_path}"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_hydra_full_error_brings_the_traceback_back(tmp_path: Path, tmp_mlflow_uri: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "psalm.train", "model.lr=-1", *SMOKE, f"output_dir={tmp_path}"],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "model.lr" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_command_stops_as_an_interrupted_one(sig, capsys) -> None:
    """SIGTERM or SIGHUP to any command, even before it has started anything, is one line and
    status 130 (as Ctrl-C), not a silent death by signal; the handlers are restored after."""
    from pipeline.cli import guarded

    before = signal.getsignal(sig)
    finished = []

    def body() -> int:
        os.kill(os.getpid(), sig)
        time.sleep(10)  # interrupted long before
        finished.append(True)
        return 0

    assert guarded(body) == 130
    assert not finished
    assert capsys.readouterr().err.strip() == "interrupted"
    assert signal.getsignal(sig) is before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_run_on_a_machine_without_cuda_records_nothing(
    tmp_path: Path, tmp_mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_cli.main([*SMOKE, "train.device=cuda", f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no usable CUDA device" in err
    assert _runs_recorded(tmp_mlflow_uri) == 0, "an MLflow run was left behind"


@pytest.mark.parametrize(
    ("entry", "argv"),
    [
        pytest.param(analysis_cli, ["verdicts", "nosuch", "--debug"], id="analysis"),
        pytest.param(ablations_cli, ["run", "pyramid", "--debug", "seeds=[0,"], id="ablations"),
        pytest.param(sweeps_cli, ["run", "nosuch", "--debug"], id="sweeps"),
        pytest.param(profile_cli, ["--debug", "seed=x"], id="profile"),
    ],
)
def test_debug_after_the_subcommand_brings_the_exception_back(
    entry, argv: list[str], tmp_mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error line says that ``--debug`` shows the traceback: every command takes it, before
    or after its subcommand (analysis and pipeline.profile used to refuse it)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(Exception) as raised:  # noqa: PT011 - each command raises its own
        entry.main(argv)
    assert not isinstance(raised.value, SystemExit)


@pytest.mark.parametrize(
    ("env", "overrides"),
    [
        pytest.param({"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, [], id="store unreachable"),
        pytest.param({"PATH": "/nonexistent"}, ["launcher=slurm"], id="no SLURM"),
    ],
)
def test_a_study_that_cannot_reach_its_store_or_cluster_leaves_no_study_behind(
    env: dict[str, str],
    overrides: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It used to write the study's folder first, which ``ablations status`` then reported as
    a study whose every cell was already FINISHED; without SLURM it failed only at dispatch."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runs = tmp_path / "runs"
    assert ablations_cli.main(["run", "pyramid", *SMOKE, *overrides, f"output_dir={runs}"]) == 2
    assert not (runs / "studies").exists()
    assert ablations_cli.main(["status", "--output-dir", str(runs)]) == 0
    assert "no dispatched studies" in capsys.readouterr().out
