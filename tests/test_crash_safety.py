"""Crash safety (issue 15): leases, liveness, process ownership, Ctrl-C, config identity.

What users rely on:
- two processes given the same cell never train it at once: the second waits for the lease, then
  finds the run FINISHED; every metric step is recorded once;
- a run whose process is dead is resumable at once (no heartbeat to age);
- a killed driver takes its local queue, its jobs and its loopback MLflow server with it;
- Ctrl-C stops the study's jobs, leaves their runs KILLED (resumable) and prints one line with
  the command that resumes; the same command then finishes the study;
- a run's identity is its config, not the study's name; overrides that change an existing study's
  cells are a new study, not a silent mix; a sweep's validation interval fits its schedule.

Real processes, a real SQLite MLflow store and the real local queue throughout.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _study_harness import (
    StudyDir,
    crash_problems,
    job_tasks,
    study_processes,
    wait_for_no_processes,
)
from mlflow.tracking import MlflowClient

from ablations.__main__ import _drift, _record_cells
from ablations.study import expand, load_study
from pipeline.config import make_spec
from pipeline.dispatch import LauncherConfig, batch_folder, dispatch, status
from pipeline.lease import cell_lease, holder, read_log
from pipeline.run import run, run_dir
from pipeline.tracking import Tracker
from psalm.training import CHECKPOINT_NAME, load_checkpoint
from sweeps.config import load_sweep

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["profile=smoke", "data.n_val=4", "data.n_test=6"]
STEPS = 6


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO_ROOT)}


# --- the lease ------------------------------------------------------------------------------


_HOLD = """
import sys, time
from pipeline.lease import cell_lease
with cell_lease(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_frees_its_cell_at_once(tmp_path: Path, tmp_mlflow_uri: str) -> None:
    folder = tmp_path / "cell"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)],
        env=_env(tmp_mlflow_uri),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        tracker = Tracker(tmp_mlflow_uri)
        run = tracker.client.create_run(tracker.experiment_id, tags={"config_hash": "c0ffee"})
        assert holder(folder)["pid"] == proc.pid
        assert tracker.state("c0ffee", folder) == "live"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert holder(folder) is None
        # RUNNING in MLflow, but nobody holds the cell: resumable now, not in 10 minutes
        assert tracker.client.get_run(run.info.run_id).info.status == "RUNNING"
        assert tracker.state("c0ffee", folder) == "resumable"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_two_processes_given_one_cell_train_it_once(tmp_path: Path, tmp_mlflow_uri: str) -> None:
    argv = [sys.executable, "-m", "psalm.train", *SMOKE, f"output_dir={tmp_path / 'runs'}"]
    procs = [
        subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=_env(tmp_mlflow_uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    client = MlflowClient(tmp_mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("psalm").experiment_id], "")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps
    assert len(client.get_metric_history(run_id, "test/nAP50")) == 1
    assert sum("already finished" in out for out in outs) == 1, outs
    acquires = [
        r
        for r in read_log(tmp_path / "runs" / runs[0].data.tags["config_hash"])
        if r["event"] == "acquire"
    ]
    assert len(acquires) == 2 and not any(r["previous_alive"] for r in acquires), acquires


# --- a job sent SIGTERM -----------------------------------------------------------------------


def _job_log(job) -> str:
    """What a job wrote so far: progress goes through ``logging`` (stderr), results to stdout."""
    files = (job.stdout, job.stderr)
    return "".join(f.read_text() for f in files if f is not None and f.exists())


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_sigtermed_job_saves_a_checkpoint_ends_killed_and_resumes(
    tmp_path: Path, tmp_mlflow_uri: str
) -> None:
    """scancel, a preemption's grace period or ``kill`` send SIGTERM to the job's process;
    submitit's wrapper only logs it. The job must stop at its current step, checkpoint it, end
    its run KILLED, release its lease and exit; the next run resumes from that step."""
    steps = 150  # far longer than the time the job gets to stop
    # no periodic checkpoint before the end: the one found is the one SIGTERM made
    spec = make_spec([*SMOKE, f"train.steps={steps}", "train.checkpoint_every=1000",
                      f"output_dir={tmp_path / 'runs'}"])  # fmt: skip
    folder = tmp_path / "batch"
    launcher = LauncherConfig(kind="local", slots=1, gpus=())
    dispatch([spec], run, launcher, folder, labels=[spec.label], wait=False, progress=False)
    deadline = time.time() + 600
    while True:  # until the job trains: its progress line ("step 15/150 …") is in its log
        job = status(folder)[0]
        assert job.state in ("queued", "running"), job
        if f"/{steps} loss" in _job_log(job):
            break
        assert time.time() < deadline, "the job never started training"
        time.sleep(0.2)
    pid = json.loads((batch_folder(folder) / "status" / "0.json").read_text())["pid"]
    task = psutil.Process(pid)
    assert "submitit.core._submit" in " ".join(task.cmdline())
    os.kill(pid, signal.SIGTERM)
    try:
        task.wait(timeout=60)  # one training step and a checkpoint, not the other ~135 steps
    except psutil.TimeoutExpired:
        task.kill()
        pytest.fail(f"the job still ran 60 s after SIGTERM:\n{_job_log(job)[-2000:]}")

    tracker = Tracker(tmp_mlflow_uri)
    killed = tracker.find(spec.config_hash)
    assert killed.info.status == "KILLED", killed.data.tags.get("failure_reason")
    assert "SIGTERM" in killed.data.tags["failure_reason"]
    cell = run_dir(spec)
    stopped_at = load_checkpoint(cell / CHECKPOINT_NAME)["step"]
    assert 0 < stopped_at < steps
    trained = [m.step for m in tracker.client.get_metric_history(killed.info.run_id, "train/loss")]
    assert sorted(trained) == list(range(1, stopped_at + 1)), "metrics past the checkpoint"
    assert holder(cell) is None
    released = [r for r in read_log(cell) if r["pid"] == pid]
    assert [r["event"] for r in released] == ["acquire", "release"], released

    result = run(spec)  # the same spec again: resumes the same MLflow run from the checkpoint
    assert result["run_id"] == killed.info.run_id and not result["skipped"]
    done = tracker.client.get_run(killed.info.run_id)
    assert done.info.status == "FINISHED"
    assert done.data.tags["resumed_from_step"] == str(stopped_at)
    for key in ("train/loss", "test/nAP50"):
        logged = [m.step for m in tracker.client.get_metric_history(done.info.run_id, key)]
        expected = list(range(1, steps + 1)) if key == "train/loss" else [steps]
        assert sorted(logged) == expected, (key, collections.Counter(logged).most_common(3))


# --- a study's processes --------------------------------------------------------------------


def _wait_for_a_running_job(study: StudyDir, driver: subprocess.Popen) -> None:
    """Until a job trains: its MLflow run exists and is RUNNING."""
    deadline = time.time() + 300
    while True:
        assert driver.poll() is None, (study.root / "driver.log").read_text()
        assert time.time() < deadline, "no job started training"
        if job_tasks(study.root) and (study.root / "mlflow.db").exists():
            client = MlflowClient(study.uri)
            experiment = client.get_experiment_by_name("psalm")
            if experiment and client.search_runs(
                [experiment.experiment_id], "attributes.status = 'RUNNING'"
            ):
                return
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two studies' worth of smoke training, on 2 shared cores
def test_a_killed_driver_takes_its_queue_jobs_and_server_with_it(tmp_path: Path) -> None:
    study = StudyDir(tmp_path)
    driver = study.start()
    _wait_for_a_running_job(study, driver)
    names = " ".join(" ".join(p.cmdline()) for p in study_processes(tmp_path))
    assert (
        "mlflow" in names
        and "pipeline.dispatch._local_queue" in names
        and "pipeline.processes" in names
    )
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    # the watchdog gives the queue 15 s to stop its jobs, then stops the server
    assert not wait_for_no_processes(tmp_path, within_s=60)
    again = study.run()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done in" in again.stderr  # the status line goes through logging, to stderr
    assert not crash_problems(study, cells=2)
    assert not wait_for_no_processes(tmp_path, within_s=10)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ctrl_c_stops_the_jobs_and_says_how_to_resume(tmp_path: Path) -> None:
    study = StudyDir(tmp_path)
    driver = study.start()
    _wait_for_a_running_job(study, driver)
    os.killpg(driver.pid, signal.SIGINT)  # as the terminal does: the driver's process group
    assert driver.wait(timeout=120) == 130
    log = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in log, log
    interrupted = [line for line in log.splitlines() if line.startswith("interrupted")]
    assert len(interrupted) == 1 and "Resume with: python -m ablations run pyramid" in log, log
    client = MlflowClient(study.uri)
    runs = client.search_runs([client.get_experiment_by_name("psalm").experiment_id], "")
    states = collections.Counter(r.info.status for r in runs)
    assert states["RUNNING"] == 0 and states["KILLED"] >= 1, states
    assert not wait_for_no_processes(tmp_path, within_s=10)
    again = study.run()  # the command the line gave
    assert again.returncode == 0, again.stdout + again.stderr
    assert not crash_problems(study, cells=2)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_study_with_a_failed_cell_is_not_done(tmp_path: Path) -> None:
    """A job killed outright: the driver names the missing cell and exits non-zero."""
    study = StudyDir(tmp_path)
    driver = study.start()
    _wait_for_a_running_job(study, driver)
    for job in job_tasks(tmp_path):
        job.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=300) == 1
    log = (tmp_path / "driver.log").read_text()
    assert "is not done" in log and "psalm/" in log, log
    assert study.run().returncode == 0
    assert not crash_problems(study, cells=2)


# --- identity and drift ---------------------------------------------------------------------


def test_a_runs_identity_does_not_include_the_study_name() -> None:
    a = make_spec([*SMOKE, "label.study=one"])
    b = make_spec([*SMOKE, "label.study=two"])
    assert a.config_hash == b.config_hash
    pyramid = expand(load_study("pyramid", ["models=[psalm]", "seeds=[0]"]), SMOKE)
    conv = expand(load_study("conv", ["models=[psalm]", "seeds=[0]"]), SMOKE)
    baseline = {s.config_hash for s in pyramid.train if s.config["label"]["arm"] == "baseline"}
    assert baseline == {s.config_hash for s in conv.train if s.config["label"]["arm"] == "baseline"}


def test_a_shared_run_is_tagged_with_every_study_that_uses_it(tmp_mlflow_uri: str) -> None:
    tracker = Tracker(tmp_mlflow_uri)
    run = tracker.client.create_run(
        tracker.experiment_id, tags={"config_hash": "beef", "study": "pyramid-smoke"}
    )
    tracker.join_study("beef", "conv-smoke")
    tracker.join_study("beef", "conv-smoke")
    tags = tracker.client.get_run(run.info.run_id).data.tags
    assert tags["study"] == "pyramid-smoke" and tags["studies"] == "pyramid-smoke,conv-smoke"


def test_cancel_ends_the_studys_shared_runs_but_not_a_leased_one_or_a_prefix_study(
    tmp_path: Path, tmp_mlflow_uri: str
) -> None:
    """``ablations cancel conv-smoke`` ends the RUNNING runs it lists by name: its own and the
    ones it shares (tag ``studies``), not those of study ``conv-smoke-x`` (a name it is a prefix
    of), and not a shared run whose lease a live process holds (another study trains it)."""
    tracker = Tracker(tmp_mlflow_uri)
    cells = {  # config hash -> (study, studies, run name)
        "a1": ("pyramid-smoke", "pyramid-smoke,conv-smoke", "psalm/baseline/seed0"),  # leased
        "b2": ("conv-smoke", "", "psalm/no_conv/seed0"),
        "c3": ("conv-smoke-x", "", "psalm/no_conv/seed0"),
        "d4": ("pyramid-smoke", "pyramid-smoke,conv-smoke-x,conv-smoke", "psalm/baseline/seed1"),
        "e5": ("pyramid-smoke", "pyramid-smoke,conv-smoke-x", "psalm/baseline/seed2"),
    }
    ids = {}
    for config_hash, (study, studies, name) in cells.items():
        tags = {
            "config_hash": config_hash,
            "study": study,
            **({"studies": studies} if studies else {}),
        }
        ids[config_hash] = tracker.client.create_run(
            tracker.experiment_id, run_name=name, tags=tags
        ).info.run_id
    labels = {name for _, _, name in cells.values()}
    with cell_lease(tmp_path / "a1", "other study"):
        marked = tracker.end_cancelled("conv-smoke", labels, tmp_path)
    assert marked == ["psalm/baseline/seed1", "psalm/no_conv/seed0"]
    states = {h: tracker.client.get_run(i).info.status for h, i in ids.items()}
    assert states == {"a1": "RUNNING", "b2": "KILLED", "c3": "RUNNING", "d4": "KILLED",
                      "e5": "RUNNING"}  # fmt: skip


def test_overrides_that_change_a_studys_cells_are_drift_new_seeds_are_not(tmp_path: Path) -> None:
    study = ["models=[psalm]", "seeds=[0]"]
    runs = [*SMOKE, f"output_dir={tmp_path}"]
    _record_cells(expand(load_study("pyramid", study), runs), str(tmp_path))
    changed = _drift(expand(load_study("pyramid", study), [*runs, "train.steps=7"]), str(tmp_path))
    assert changed is not None and "train.steps 6→7" in changed[1]
    more_seeds = expand(load_study("pyramid", ["models=[psalm]", "seeds=[0,1]"]), runs)
    assert _drift(more_seeds, str(tmp_path)) is None
    assert _drift(expand(load_study("pyramid", study), runs), str(tmp_path)) is None


def test_a_sweep_validation_interval_longer_than_the_schedule_is_fitted() -> None:
    sweep = load_sweep("psalm", ["profile=smoke"])
    assert 1 <= sweep.report_every <= sweep.steps
    assert "longer than the" in sweep.report_note
    assert f"train.eval_every={sweep.report_every}" in sweep.run_overrides
