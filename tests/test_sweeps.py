"""Sweeps: validation before dispatch, end-to-end smoke sweeps (debug, local, SLURM), pruning,
resume after a killed driver, retry of a killed trial, deduplication, MLflow parent/child runs,
the best-config export, PostgreSQL storage and optuna-dashboard."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from _study_harness import as_from_a_terminal
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from pipeline.config import CONF_DIR, REPO_ROOT, USER_CONF_ENV, ConfigError, make_spec
from sweeps.__main__ import main
from sweeps.config import load_sweep

CONTRACT_TAGS = ("study", "ablation", "arm", "model", "seed", "config_hash", "git_sha", "profile")


def write_sweep(folder: Path, name: str = "tiny", **settings) -> Path:
    """A small sweep file: PSALM, lr and weight decay, 6 smoke steps, validated every 2."""
    cfg = {
        "overrides": ["model=psalm", "profile=smoke"],
        "metric": "val/nAP50",
        "space": {
            "model.lr": {"type": "float", "low": 2e-5, "high": 4e-4, "log": True},
            "model.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        },
        "sampler": {"name": "tpe", "seed": 0, "startup_trials": 2},
        "pruner": {"name": "median", "startup_trials": 1},
        "trials": 3,
        "workers": 1,
        "report_every": 2,
        "storage": f"sqlite:///{folder / 'optuna.db'}",
        "export": str(folder / "{model}_tuned.yaml"),
        "heartbeat_s": 5,
    }
    cfg.update(settings)
    path = folder / f"{name}.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return path


def trials_of(path: Path, profile: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    sweep = load_sweep(str(path), [f"profile={profile}"])
    study = optuna.load_study(study_name=sweep.sweep_id, storage=sweep.storage)
    return study.get_trials(deepcopy=False)


def batches(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs" / "sweeps"
    return sorted(root.glob("*/dispatch/*"))


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "space.model.nope={type: float, low: 1, high: 2}",
            "space.model.nope: 'model.nope' is not",
        ),
        ("space.model.lr.low=1e-2", "space.model.lr: low=0.01 must be below high"),
        ("space.model.weight_decay.low=0", "space.model.weight_decay: a log scale needs low > 0"),
        ("space.model.use_pyramid={type: categorical, choices: []}", "non-empty list of choices"),
        ("space.model.lr.type=normal", "space.model.lr: type='normal' must be one of"),
        ("space.train.steps={type: int, low: 0, high: 8}", "space.train.steps=0 makes an invalid"),
        ("space.launcher.slots={type: int, low: 1, high: 4}", "space.launcher.slots: launcher.*"),
        ("sampler.name=grid", "space.model.lr: the grid sampler needs choices or a step"),
        ("report_every=0", "pruning needs intermediate values"),
        ("metric=test/nAP50", "a sweep selects on the validation split"),
        ("trials=0", "trials=0 must be a positive integer"),
        ("baseline=maybe", "baseline='maybe' must be true or false"),
        ("seeds=[0,0]", "seeds=[0, 0] must be null or a list of distinct integers"),
        ("seeds=[]", "seeds=[] must be null"),
        ("seeds=[-1,2]", "seeds=[-1, 2] must be null"),
        # PSALM's own lr (8e-5) outside the range: the baseline trial could not run it
        ("space.model.lr.low=1e-4", "space.model.lr: the run config's value 8e-05 is outside"),
    ],
)
def test_invalid_sweep_is_rejected_naming_the_key(tmp_path, override, message):
    path = write_sweep(tmp_path)
    with pytest.raises(ConfigError, match="nothing dispatched") as err:
        load_sweep(str(path), [override])
    assert message in str(err.value)


def test_invalid_sweep_dispatches_nothing(tmp_path, tmp_mlflow_uri, capsys):
    path = write_sweep(tmp_path)
    rc = main(["run", str(path), "space.model.lr.low=-1", f"output_dir={tmp_path / 'runs'}"])
    assert rc == 2
    assert "space.model.lr: a log scale needs low > 0" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "runs").exists()
    assert MlflowClient(tmp_mlflow_uri).search_experiments()[0].name == "Default"


def test_the_baseline_trial_is_the_run_configs_own_values(tmp_path):
    path = write_sweep(tmp_path)
    model = make_spec(["model=psalm", "profile=smoke"]).config["model"]
    assert load_sweep(str(path), ["profile=smoke"]).baseline == {
        "model.lr": model["lr"],
        "model.weight_decay": model["weight_decay"],
    }
    # a run override moves the baseline with it
    assert load_sweep(str(path), ["model.lr=1e-4"]).baseline["model.lr"] == pytest.approx(1e-4)
    # without a baseline trial, a space that leaves out the run config's value is fine
    narrow = ["space.model.lr.low=1e-4", "baseline=false"]
    assert load_sweep(str(path), narrow).baseline == {}


def test_unknown_run_override_is_rejected(tmp_path):
    path = write_sweep(tmp_path)
    with pytest.raises(ConfigError, match="modle.lr"):
        load_sweep(str(path), ["modle.lr=0.1"])


def test_the_shipped_sweeps_are_valid(monkeypatch):
    from pipeline.config import user_conf_dir
    from sweeps.export import export_path

    monkeypatch.delenv(USER_CONF_ENV, raising=False)
    for name in ("psalm", "cheaf"):
        sweep = load_sweep(name, ["profile=smoke"])
        assert export_path(sweep) == user_conf_dir() / "model" / f"{name}_tuned.yaml"
        assert sweep.metric == "val/nAP50"
        assert {p.key for p in sweep.space} == {
            "model.lr",
            "model.weight_decay",
            "model.warmup_steps",
        }
        assert sweep.sweep_id == f"{name}-smoke"


@pytest.mark.parametrize(
    ("name", "overrides", "key", "first"),
    [
        ("psalm", [], "min_resource", 450),  # warm-ups up to 1500 × warmup_scale 0.2892 = 434
        ("cheaf", [], "min_resource", 900),  # up to 3000 × 0.2892 = 868: judged at 900
        ("psalm", ["pruner.name=median"], "warmup_steps", 450),
        ("psalm", ["space.model.warmup_steps.high=600"], "min_resource", 300),  # 174
        ("psalm", ["space.model.warmup_steps.high=500"], "min_resource", 150),  # 145: 1st report
        ("psalm", ["pruner.min_resource=150"], "min_resource", 150),  # the user's own wins
    ],
)
def test_no_trial_is_judged_before_the_longest_warmup_has_ended(name, overrides, key, first):
    """The pruner's first comparison comes after the longest warm-up a trial can draw: at step
    150 Hyperband pruned the long warm-ups just as they reached their peak lr."""
    sweep = load_sweep(name, overrides)
    assert sweep.pruner[key] == first


def test_the_median_pruner_waits_for_the_warmup(tmp_path):
    """A trial behind the others at step 300 (still warming up) is kept; at 450 it is pruned."""
    from sweeps.study import make_pruner

    sweep = load_sweep("psalm", ["pruner.name=median", "pruner.startup_trials=1"])
    study = optuna.create_study(direction="maximize", pruner=make_pruner(sweep))
    for _ in range(2):
        trial = study.ask()
        for step in (150, 300, 450, 600):
            trial.report(0.5, step)
        study.tell(trial, 0.5)
    slow = study.ask()
    for step in (150, 300):
        slow.report(0.1, step)
        assert not slow.should_prune()
    slow.report(0.1, 450)
    assert slow.should_prune()


# --- debug: end to end, pruning, deduplication ----------------------------------------------


@pytest.mark.slow  # trains smoke trials
def test_debug_sweep_end_to_end(tmp_path, tmp_mlflow_uri, capsys):
    path = write_sweep(tmp_path)
    rc = main(["run", str(path), "launcher=debug", f"output_dir={tmp_path / 'runs'}"])
    assert rc == 0
    out = capsys.readouterr()
    assert "[sweep tiny-smoke] 3/3 done" in out.err  # the progress view
    trials = trials_of(path)
    assert len(trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(t.intermediate_values for t in trials)  # reported during training
    assert all(set(t.intermediate_values) <= {2, 4, 6} for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3

    client = MlflowClient(tmp_mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("psalm").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "train"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep"] == "tiny-smoke"
    assert parent.data.metrics["sweep/complete"] + parent.data.metrics["sweep/pruned"] == 3
    assert len(children) == 3
    for run in children:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep"] == "tiny-smoke"
        assert tags["trial"] in {"0", "1", "2"}
        assert all(tags.get(k) not in (None,) for k in CONTRACT_TAGS)
        assert float(run.data.params["model.lr"]) == pytest.approx(
            trials[int(tags["trial"])].params["model.lr"]
        )

    # trial 0 is the run config's own values, and the summary compares the best with it
    assert trials[0].user_attrs["baseline"] is True
    assert trials[0].params == load_sweep(str(path), ["profile=smoke"]).baseline
    assert trials[0].state == TrialState.COMPLETE  # the median pruner's startup trial
    assert parent.data.metrics["sweep/baseline_value"] == pytest.approx(trials[0].value)
    assert f"the run config's own values (trial 0): val/nAP50 {trials[0].value:.4f}" in out.out
    assert "[baseline: the run config's own values]" in out.out  # the trial table

    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert json.loads(parent.data.tags["best_params"]) == best.params
    exported = OmegaConf.load(tmp_path / "psalm_tuned.yaml")
    assert exported.lr == pytest.approx(best.params["model.lr"])
    assert exported.weight_decay == pytest.approx(best.params["model.weight_decay"])
    base = OmegaConf.load(CONF_DIR / "model" / "psalm.yaml")
    assert set(exported) == set(base) and exported.name == "psalm"
    assert f"best val/nAP50 {best.value:.4f} (trial {best.number})" in out.out

    # Re-running the finished sweep dispatches nothing.
    n = len(batches(tmp_path))
    assert main(["run", str(path), "launcher=debug", f"output_dir={tmp_path / 'runs'}"]) == 0
    assert len(batches(tmp_path)) == n


@pytest.mark.slow  # trains smoke trials
def test_a_trial_over_seeds_is_told_their_mean(tmp_path, tmp_mlflow_uri, capsys):
    """``seeds``: each trial trains one run per seed, in turn, and its value is their mean;
    seed i's validations are reported after the earlier seeds' steps, for the pruner."""
    path = write_sweep(tmp_path, trials=2, seeds=[0, 1], pruner={"name": "none"})
    assert main(["run", str(path), "launcher=debug", f"output_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    trials = trials_of(path)
    client = MlflowClient(tmp_mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("psalm").experiment_id])
    children = [r for r in runs if r.data.tags.get("kind") == "train"]
    assert len(children) == 4  # 2 trials × 2 seeds
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.intermediate_values) == {2, 4, 6, 8, 10, 12}  # seed 1 at 6 + (2, 4, 6)
        mine = [r for r in children if r.data.tags["trial"] == str(t.number)]
        by_seed = {int(r.data.tags["seed"]): r.data.metrics["val/nAP50"] for r in mine}
        assert set(by_seed) == {0, 1}
        assert t.user_attrs["seed_values"] == pytest.approx([by_seed[0], by_seed[1]])
        assert t.value == pytest.approx((by_seed[0] + by_seed[1]) / 2)
        assert t.user_attrs["steps_trained"] == 12
        assert sorted(t.user_attrs["run_ids"]) == sorted(r.info.run_id for r in mine)
    assert "[per seed: " in out  # the trial table
    assert "the mean of 2 seeds each" in out or "the sweep found nothing better" in out
    # a single seed is the run's own seed: an ordinary run override, no per-seed bookkeeping
    single = load_sweep(str(path), ["profile=smoke", "seeds=[3]"])
    assert single.seeds == () and "seed=3" in single.run_overrides
    # a resumed sweep must keep its seeds
    with pytest.raises(ConfigError, match="already exists"):
        from sweeps.driver import drive

        drive(load_sweep(str(path), ["profile=smoke", "seeds=[0,1,2]", "launcher=debug"]))


@pytest.mark.slow  # trains smoke trials
def test_pruned_trials_stop_early_and_are_recorded(tmp_path, tmp_mlflow_uri, capsys):
    # A threshold no model reaches: every trial is pruned at its first validation (step 2).
    # No trial completed, so there is no result to export: the sweep says so and exits 1.
    # (Without the baseline trial, which is never pruned: the next test.)
    path = write_sweep(
        tmp_path, trials=2, pruner={"name": "threshold", "lower": 2.0}, baseline=False
    )
    assert main(["run", str(path), "launcher=debug", f"output_dir={tmp_path / 'runs'}"]) == 1
    captured = capsys.readouterr()
    assert "ended with no completed trial (0 failed, 2 pruned of 2)" in captured.err
    assert "trial-steps trained 4 of 12 without pruning (saved 67%)" in captured.out
    assert "no trial ran the run config's own values (baseline)" in captured.out
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert [t.user_attrs["steps_trained"] for t in trials] == [2, 2]
    client = MlflowClient(tmp_mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("psalm").experiment_id], "tags.kind = 'train'"
    )
    assert {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags["pruned_at_step"] for r in runs} == {"2"}
    assert all(
        max(m.step for m in client.get_metric_history(r.info.run_id, "train/loss")) == 2
        for r in runs
    )
    assert not any(k.startswith("test/") for r in runs for k in r.data.metrics)


@pytest.mark.slow  # trains smoke trials
def test_the_baseline_trial_is_never_pruned(tmp_path, tmp_mlflow_uri, capsys):
    """The run config's own values are what a sweep is judged against: the pruner that stops
    every other trial at its first validation lets the baseline train to the end."""
    path = write_sweep(tmp_path, trials=2, pruner={"name": "threshold", "lower": 2.0})
    assert main(["run", str(path), "launcher=debug", f"output_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[0].user_attrs["baseline"] is True
    assert set(trials[0].intermediate_values) == {2, 4, 6}  # it still reports
    assert [t.user_attrs["steps_trained"] for t in trials] == [6, 2]
    assert "the sweep found nothing better" in out


@pytest.mark.slow  # trains smoke trials
def test_duplicate_parameters_are_not_trained_again(tmp_path, tmp_mlflow_uri):
    path = write_sweep(
        tmp_path,
        trials=3,
        space={"model.use_pyramid": {"type": "categorical", "choices": [True, False]}},
        sampler={"name": "grid", "seed": 0},
        pruner={"name": "none"},
    )
    assert main(["run", str(path), "launcher=debug", f"output_dir={tmp_path / 'runs'}"]) == 0
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    dup = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(dup) == 1  # the grid has two points: the third trial repeats one
    original = trials[dup[0].user_attrs["duplicate_of"]]
    assert dup[0].params == original.params and dup[0].value == original.value
    assert len(batches(tmp_path)) == 2


def test_tuned_model_file_feeds_an_ablation_study(tmp_path, monkeypatch):
    """A tuned model file lives in the user config folder (not the package's conf/) and is a
    model option there: an ablation study and a single run both find it by name."""
    from ablations.study import expand, load_study

    monkeypatch.setenv(USER_CONF_ENV, str(tmp_path / "conf"))
    name = f"zz_test_tuned_{os.getpid()}"
    path = tmp_path / "conf" / "model" / f"{name}.yaml"
    path.parent.mkdir(parents=True)
    tuned = OmegaConf.load(CONF_DIR / "model" / "psalm.yaml")
    tuned.lr = 1.234e-4
    path.write_text(OmegaConf.to_yaml(tuned))
    study = load_study("pyramid", [f"models=[{name}]", "seeds=[0]"])
    plan = expand(study, ["profile=smoke", f"output_dir={tmp_path}"])
    assert plan.study == f"pyramid-smoke-{name}"  # not mixed with the untuned study
    arms = {s.config["label"]["arm"]: s.config for s in plan.train}
    assert set(arms) == {"baseline", "no_pyramid"}
    assert all(c["model"]["lr"] == pytest.approx(1.234e-4) for c in arms.values())
    assert arms["no_pyramid"]["model"]["use_pyramid"] is False
    assert make_spec([f"model={name}", "profile=smoke"]).config["model"]["lr"] == pytest.approx(
        1.234e-4
    )
    assert not (CONF_DIR / "model" / f"{name}.yaml").exists()


def test_sweeps_export_outside_the_package_conf(tmp_path, monkeypatch):
    """The best trial goes to <user config folder>/model/<model>_tuned.yaml, which is on the
    config search path, never into conf/ (a source folder of the package); the shipped sweeps
    keep that default (checked in test_the_shipped_sweeps_are_valid)."""
    from pipeline.config import user_conf_dir
    from sweeps.export import export_path

    monkeypatch.delenv(USER_CONF_ENV, raising=False)
    default = user_conf_dir() / "model" / "psalm_tuned.yaml"
    assert CONF_DIR not in default.parents
    check_ignore = ["git", "check-ignore", "-q", str(default)]
    assert subprocess.run(check_ignore, cwd=REPO_ROOT).returncode == 0  # not source: git ignores it
    monkeypatch.setenv(USER_CONF_ENV, str(tmp_path / "mine"))
    sweep = load_sweep(str(write_sweep(tmp_path, export=None)), ["profile=smoke"])
    assert export_path(sweep) == tmp_path / "mine" / "model" / "psalm_tuned.yaml"


# --- local queue: parallel workers, resume, dead trials ---------------------------------------


def _sweep_process(path: Path, tmp_path: Path, *overrides: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "sweeps",
        "run",
        str(path),
        "launcher=local",
        f"output_dir={tmp_path / 'runs'}",
        *overrides,
    ]
    log = open(tmp_path / "driver.log", "ab")  # noqa: SIM115 (the process owns it)
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=as_from_a_terminal
    )


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _running_job(path: Path):
    """(trial, pid of its job) once a trial's job has started training."""
    try:
        trials = trials_of(path)
    except KeyError:  # the driver has not created the study yet
        return None
    for t in trials:
        if t.state == TrialState.RUNNING and "pid" in t.user_attrs:
            return t, int(t.user_attrs["pid"])
    return None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_local_sweep_runs_trials_in_parallel_processes(tmp_path, tmp_mlflow_uri):
    path = write_sweep(tmp_path, trials=2, workers=2, pruner={"name": "none"})
    assert main(["run", str(path), "launcher=local", f"output_dir={tmp_path / 'runs'}"]) == 0
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    starts = sorted(t.datetime_start for t in trials)
    ends = sorted(t.datetime_complete for t in trials)
    assert starts[1] < ends[0]  # both were in flight at once


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_killed_driver_resumes_the_same_sweep(tmp_path, tmp_mlflow_uri):
    path = write_sweep(tmp_path, trials=2, pruner={"name": "none"})
    driver = _sweep_process(path, tmp_path)
    trial, _ = _wait(lambda: _running_job(path), 180, "trial 0's job to start")
    driver.kill()  # SIGKILL: no cleanup at all
    driver.wait()
    # The job outlives its driver and tells the study itself.
    _wait(lambda: trials_of(path)[0].state == TrialState.COMPLETE, 180, "trial 0 to complete")
    assert main(["run", str(path), "launcher=local", f"output_dir={tmp_path / 'runs'}"]) == 0
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert len(batches(tmp_path)) == 2  # trial 0 was not dispatched again
    assert trials[0].params == trial.params


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_driver_stops_its_trials_which_the_next_run_retries(
    tmp_path, tmp_mlflow_uri, sig
):
    """Ctrl-C (or SIGTERM) to the driver stops the trials' jobs too, not only the driver: the
    job ends its run KILLED, and the next run retries the trial into the same MLflow run."""
    import psutil

    path = write_sweep(tmp_path, trials=1, pruner={"name": "none"})
    overrides = ("train.steps=60", "train.checkpoint_every=2")
    driver = _sweep_process(path, tmp_path, *overrides)
    try:
        trial, pid = _wait(lambda: _running_job(path), 180, "the trial's job to start")
        ckpt = tmp_path / "runs" / trial.user_attrs["config_hash"] / "checkpoint.pt"
        _wait(ckpt.exists, 180, "the first checkpoint")
        driver.send_signal(sig)
        assert driver.wait(timeout=120) == 130, (tmp_path / "driver.log").read_text()
    finally:
        driver.kill()
    _wait(lambda: not psutil.pid_exists(pid), 30, "the trial's job to end")
    assert "stopped 1 trial job(s) in flight" in (tmp_path / "driver.log").read_text()
    client = MlflowClient(tmp_mlflow_uri)
    experiment = client.get_experiment_by_name("psalm").experiment_id
    (run,) = client.search_runs([experiment], "tags.kind = 'train'")
    assert run.info.status == "KILLED"
    overrides_done = [f"output_dir={tmp_path / 'runs'}", *overrides]
    assert main(["run", str(path), "launcher=local", *overrides_done]) == 0
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    (run,) = client.search_runs([experiment], "tags.kind = 'train'")
    assert run.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_killed_trial_is_failed_and_retried_from_its_checkpoint(tmp_path, tmp_mlflow_uri):
    path = write_sweep(tmp_path, trials=1, pruner={"name": "none"})
    overrides = ("train.steps=30", "train.checkpoint_every=2")
    driver = _sweep_process(path, tmp_path, *overrides)
    try:
        trial, pid = _wait(lambda: _running_job(path), 180, "the trial's job to start")
        ckpt = tmp_path / "runs" / trial.user_attrs["config_hash"] / "checkpoint.pt"
        _wait(ckpt.exists, 180, "the first checkpoint")
        os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=360) == 0, (tmp_path / "driver.log").read_text()
    finally:
        driver.kill()
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "without a result" in trials[0].user_attrs["failure"]
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == 0
    # the baseline (trial 0's values) is read from the retry that completed, not the failed one
    from sweeps.driver import summarize

    summary = summarize(load_sweep(str(path), list(overrides)), trials, 0.0)
    assert (summary.baseline_state, summary.baseline_value) == ("complete", trials[1].value)
    client = MlflowClient(tmp_mlflow_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("psalm").experiment_id], "tags.kind = 'train'"
    )  # one MLflow run: the retry resumed it
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 31))  # nothing logged twice, nothing lost


# --- storage servers ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sweep_on_postgresql_storage_with_parallel_workers(tmp_path, tmp_mlflow_uri, postgres_url):
    name = f"pg{os.getpid()}{int(time.time())}"
    path = write_sweep(tmp_path, name=name, trials=2, workers=2, storage=postgres_url)
    assert main(["run", str(path), "launcher=local", f"output_dir={tmp_path / 'runs'}"]) == 0
    study = optuna.load_study(study_name=f"{name}-smoke", storage=postgres_url)
    trials = study.get_trials()
    assert len(trials) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    optuna.delete_study(study_name=f"{name}-smoke", storage=postgres_url)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_slurm_sweep(tmp_path, tmp_mlflow_uri, slurm_cluster):
    path = write_sweep(tmp_path, trials=2, workers=2)
    overrides = ["launcher=slurm", "launcher.time_min=10", f"output_dir={tmp_path / 'runs'}"]
    assert main(["run", str(path), *overrides]) == 0
    trials = trials_of(path)
    assert len(trials) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(t.user_attrs["host"] == socket.gethostname() for t in trials)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_make_optuna_dashboard_serves_the_sweep_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="dash-smoke", storage=storage)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["make", "-s", "optuna-dashboard", f"OPTUNA_STORAGE={storage}", f"OPTUNA_PORT={port}"]
    server = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def studies():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    return json.load(r)
            except OSError:
                return None

        body = _wait(studies, 60, "optuna-dashboard to answer")
        assert [s["study_name"] for s in body["study_summaries"]] == ["dash-smoke"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_sweep_cli_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "sweeps", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("run", "status", "export", "list"):
        assert command in out


def test_unreachable_or_missing_storage_is_a_clear_error(tmp_path, tmp_mlflow_uri, capsys):
    path = write_sweep(tmp_path)
    assert main(["status", str(path)]) == 2
    assert f"no sweep storage at {tmp_path / 'optuna.db'}" in capsys.readouterr().err
    dead = "postgresql://nobody@127.0.0.1:1/optuna"
    assert main(["run", str(path), f"storage={dead}", f"output_dir={tmp_path / 'runs'}"]) == 2
    assert f"cannot open the sweep storage {dead}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_report_every_0_validates_once_at_the_end():
    """With no reports while training, a trial still needs its validation metric: report_every=0
    used to set train.eval_every=0 (never), and every trial failed "no val/nAP50"."""

    sweep = load_sweep("psalm", ["report_every=0", "pruner.name=none", "profile=smoke"])
    steps = make_spec(list(sweep.run_overrides)).config["train"]["steps"]
    assert f"train.eval_every={steps}" in sweep.run_overrides
    assert "validate once" in sweep.report_note
