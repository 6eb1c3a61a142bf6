"""A smoke ablation study through the real SLURM launcher, with one run preempted mid-training.

Needs a reachable SLURM controller (``.ci/run`` starts one with scripts/slurm-up.sh); without one
the test skips with the reason. Jobs log through a loopback MLflow tracking server, as a cluster
user would, so SLURM tasks never share a SQLite file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.dispatch import status, wait_for
from pipeline.mlflow_server import tracking_server

STEPS = 30


def smoke_study(runs: Path, steps: int) -> list[str]:
    """The command of a one-seed PSALM pyramid study on SLURM, checkpointing every 5 steps."""
    return [
        sys.executable, "-m", "ablations", "run", "pyramid", "profile=smoke",
        "launcher=slurm", "launcher.time_min=10", "launcher.mem_gb=2",
        "seeds=[0]", "models=[psalm]", f"output_dir={runs}",
        f"train.steps={steps}", "train.checkpoint_every=5", "data.n_test=6",
    ]  # fmt: skip


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_slurm_study_survives_a_preemption_with_one_run_per_cell(
    slurm_cluster: None, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tmp_path / "runs"
    with tracking_server(backend_store_uri=store) as server:
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
        cmd = [*smoke_study(runs, STEPS), "--no-wait"]
        submitted = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        folder = runs / "studies" / "pyramid-smoke"

        # Preempt the baseline once it has a checkpoint but before it finishes.
        deadline = time.time() + 240
        checkpoints = list(runs.glob("*/checkpoint.pt"))
        while time.time() < deadline and not checkpoints:
            time.sleep(0.2)
            checkpoints = list(runs.glob("*/checkpoint.pt"))
        assert checkpoints, f"no run wrote a checkpoint in time: {status(folder)}"
        jobs = {s.label: s for s in status(folder)}
        victim = next(s for s in jobs.values() if s.state == "running")
        subprocess.run(["scancel", "--signal=USR2", victim.job_id], check=True)
        while time.time() < deadline:  # requeued and held (BeginTime): release it at once
            current = next(s for s in status(folder) if s.label == victim.label)
            if current.state == "queued" and current.attempts >= 1:
                break
            time.sleep(0.2)
        # now+2, not now: a restart in the same second as the requeue is refused by slurmd
        # ("Job credential revoked"), see test_dispatch.py
        subprocess.run(["scontrol", "update", f"JobId={victim.job_id}", "StartTime=now+2"])
        final = wait_for(folder, progress=False, poll_s=0.5, timeout_s=300)
        assert [s.state for s in final] == ["done", "done"], [(s.label, s.detail) for s in final]
        preempted = next(s for s in final if s.label == victim.label)
        assert preempted.attempts == 2

        client = MlflowClient(server.uri)
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string="tags.study = 'pyramid-smoke'",
        )
        assert sorted(r.data.tags["arm"] for r in found) == ["baseline", "no_pyramid"]
        assert all(r.info.status == "FINISHED" for r in found)
        for run in found:  # resumed or not: every step logged exactly once
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
            assert sorted(steps) == list(range(1, STEPS + 1)), (run.data.tags["arm"], steps)
            assert "test/nAP50" in run.data.metrics
        resumed = [r for r in found if r.data.tags.get("resumed") == "true"]
        assert len(resumed) == 1 and resumed[0].data.tags["arm"] in victim.label


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_cancelled_slurm_study_ends_its_runs_and_resumes_when_run_again(
    slurm_cluster: None, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tmp_path / "runs"
    steps = 60
    with tracking_server(backend_store_uri=store) as server:
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
        cmd = smoke_study(runs, steps)
        submitted = subprocess.run([*cmd, "--no-wait"], cwd=tmp_path, env=env, text=True,
                                   capture_output=True)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        folder = runs / "studies" / "pyramid-smoke"
        deadline = time.time() + 240
        while time.time() < deadline and not list(runs.glob("*/checkpoint.pt")):
            time.sleep(0.2)
        assert list(runs.glob("*/checkpoint.pt")), f"no checkpoint in time: {status(folder)}"

        cancelled = subprocess.run(
            [sys.executable, "-m", "ablations", "cancel", "pyramid-smoke", "--output-dir", runs],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert cancelled.returncode == 0, cancelled.stderr[-3000:]
        assert "2 job(s) cancelled" in cancelled.stdout, cancelled.stdout
        final = wait_for(folder, progress=False, poll_s=0.5, timeout_s=120)
        assert [s.state for s in final] == ["cancelled", "cancelled"], final

        # scancel kills the jobs before they can end their runs: the command ends them, so
        # that running the study again resumes them now, not once their heartbeat is stale.
        client = MlflowClient(server.uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        query = "tags.study = 'pyramid-smoke'"
        interrupted = client.search_runs(experiments, filter_string=query)
        assert interrupted, "the cancelled jobs recorded no run"
        assert all(r.info.status == "KILLED" for r in interrupted), [
            (r.info.run_name, r.info.status) for r in interrupted
        ]

        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
        found = client.search_runs(experiments, filter_string=query)
        assert sorted(r.data.tags["arm"] for r in found) == ["baseline", "no_pyramid"]
        assert all(r.info.status == "FINISHED" for r in found)
        resumed = {r.info.run_id for r in found if r.data.tags.get("resumed") == "true"}
        assert {r.info.run_id for r in interrupted} <= resumed  # the same runs, continued
        for run in found:
            logged = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
            assert sorted(logged) == list(range(1, steps + 1)), (run.info.run_name, logged)
