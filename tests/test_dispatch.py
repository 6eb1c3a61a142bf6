"""Dispatch: debug and local-queue behaviour, and the real SLURM path (marked `slurm`).

The SLURM tests need a reachable controller (scripts/slurm-up.sh starts one on this machine);
without one they skip with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

from pipeline.dispatch import (
    JobStatus,
    LauncherConfig,
    Slot,
    batch_remaining_s,
    cancel,
    dispatch,
    format_status,
    local_slots,
    status,
    visible_gpus,
    wait_for,
)
from pipeline.dispatch import local as local_backend
from pipeline.dispatch.status import show_progress, warn_unfinished
from pipeline.progress import Progress

REPO = Path(__file__).resolve().parents[1]

# Jobs run in other processes, which cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- toy jobs --------------------------------------------------------------------------------


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("boom on 3")
    return x * x


def record_interval(spec: dict) -> int:
    """Sleep, and write when this job ran and with which environment."""
    start = time.time()
    time.sleep(spec["sleep_s"])
    if spec.get("fail"):
        raise RuntimeError(f"job {spec['i']} failed on purpose")
    names = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DISPATCH_SLOT")
    names += ("THP_MEM_ALLOC_ENABLE",)
    record = {"start": start, "end": time.time(), "env": {n: os.environ.get(n) for n in names}}
    Path(spec["dir"], f"{spec['i']}.json").write_text(json.dumps(record))
    return spec["i"]


def resumable_steps(spec: dict) -> int:
    """Do `steps` steps, appending one line per step; resume after the lines already written.

    One short append per step keeps the progress file consistent whenever the job is stopped.
    Steps are slow until the job has been interrupted once, so the first attempt cannot finish
    inside the time window that the test gives it.
    """
    log = Path(spec["log"])
    done = len(log.read_text().splitlines()) if log.exists() else 0
    step_s = spec["slow_s"] if done == 0 else spec["fast_s"]
    for k in range(done, spec["steps"]):
        time.sleep(step_s)
        with log.open("a") as f:
            f.write(f"{k}\n")
    return len(log.read_text().splitlines())


def sleep_long(spec: int) -> int:
    time.sleep(60)
    return spec


def overlap(records: list[dict]) -> int:
    """Largest number of intervals that run at the same time."""
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def read_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


# --- config and slots ------------------------------------------------------------------------


def test_launcher_config_rejects_bad_values_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="kind='cloud'"):
        LauncherConfig(kind="cloud")
    with pytest.raises(ValueError, match="launcher.slots must be a positive integer.*got 0"):
        LauncherConfig(slots=0)
    with pytest.raises(ValueError, match="unknown launcher setting.*'partion'"):
        LauncherConfig.from_mapping({"kind": "slurm", "partion": "gpu"})
    config = LauncherConfig.from_mapping({"kind": "local", "gpus": [0, 1], "setup": ["echo"]})
    assert config.gpus == ("0", "1") and config.setup == ("echo",)


def test_local_slots_one_gpu_each_or_cpu_cores_per_thread_count(monkeypatch) -> None:
    monkeypatch.setattr(local_backend, "available_cpus", lambda: 8)
    gpu_slots = local_slots(LauncherConfig(gpus=("0", "1")))
    assert [(s.gpu, s.threads) for s in gpu_slots] == [("0", 4), ("1", 4)]
    assert local_slots(LauncherConfig(gpus=(), threads_per_job=2)) == [
        Slot(i, None, 2) for i in range(4)
    ]
    shared = local_slots(LauncherConfig(gpus=("3",), slots=2, threads_per_job=1))
    assert [s.gpu for s in shared] == ["3", "3"]
    env = Slot(1, "3", 2).env()
    assert env["OMP_NUM_THREADS"] == env["DISPATCH_THREADS"] == "2" and env["DISPATCH_SLOT"] == "1"


def test_jobs_get_huge_pages_unless_the_shell_says_otherwise(monkeypatch) -> None:
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert Slot(0, None, 1).env()["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert Slot(0, None, 1).env()["THP_MEM_ALLOC_ENABLE"] == "0"


def test_visible_gpus_follows_cuda_visible_devices(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ("2", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")  # CUDA ignores ids after an invalid one
    assert visible_gpus() == ("0",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == ()


# --- debug -----------------------------------------------------------------------------------


def test_debug_dispatch_returns_results_and_reports_failures(tmp_path: Path) -> None:
    statuses = dispatch(
        [1, 2, 3, 4], square_or_fail, LauncherConfig(kind="debug"), tmp_path, progress=False
    )
    assert [s.state for s in statuses] == ["done", "done", "failed", "done"]
    assert [s.result for s in statuses] == [1, 4, None, 16]
    assert "ValueError: boom on 3" in statuses[2].error
    assert statuses[2].label == "3"
    # The same states can be read back later from the batch folder.
    assert [s.state for s in status(tmp_path)] == ["done", "done", "failed", "done"]


def test_unpicklable_fn_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    lock = threading.Lock()

    def holds_a_lock(spec: int) -> bool:
        return lock.locked()

    with pytest.raises(TypeError, match="cannot be pickled"):
        dispatch([1], holds_a_lock, LauncherConfig(kind="local"), tmp_path)
    assert not (tmp_path / "dispatch").exists()


# --- local queue -----------------------------------------------------------------------------


@pytest.mark.slow
def test_local_queue_limits_concurrency_pins_env_and_isolates_failures(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    specs = [{"i": i, "dir": str(records), "sleep_s": 0.4, "fail": i == 1} for i in range(5)]
    # Fake GPU ids: the jobs never touch CUDA, they only report what they were given.
    launcher = LauncherConfig(kind="local", gpus=("7", "9"), threads_per_job=1)
    statuses = dispatch(specs, record_interval, launcher, tmp_path, progress=False, poll_s=0.2)

    assert [s.state for s in statuses] == ["done", "failed", "done", "done", "done"], statuses
    assert [s.result for s in statuses] == [0, None, 2, 3, 4]
    failed = statuses[1]
    assert "job 1 failed on purpose" in failed.detail
    assert "job 1 failed on purpose" in failed.stderr.read_text()  # the log the report points to

    done = read_records(records)
    assert len(done) == 4
    assert overlap(done) <= 2  # two slots: never more than two jobs at once
    for record in done:
        assert record["env"]["CUDA_VISIBLE_DEVICES"] in ("7", "9")
        assert record["env"]["OMP_NUM_THREADS"] == record["env"]["MKL_NUM_THREADS"] == "1"
        assert record["env"]["THP_MEM_ALLOC_ENABLE"] == "1"  # huge pages (JOB_DEFAULTS)
    for a in done:  # jobs that ran at the same time had different slots and GPUs
        for b in done:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["env"]["CUDA_VISIBLE_DEVICES"] != b["env"]["CUDA_VISIBLE_DEVICES"]
                assert a["env"]["DISPATCH_SLOT"] != b["env"]["DISPATCH_SLOT"]


@pytest.mark.slow
def test_local_timeout_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    spec = {"log": str(log), "steps": 10, "slow_s": 0.4, "fast_s": 0.02}
    # Each attempt gets USR2 3 s after it starts (time limit 6 s, signal 3 s before it): the
    # first attempt needs 4 s, so it is interrupted, checkpointed and started again.
    launcher = LauncherConfig(kind="local", slots=1, time_min=0.1, signal_delay_s=3, max_requeues=5)
    (job,) = dispatch([spec], resumable_steps, launcher, tmp_path, progress=False, poll_s=0.2)

    assert job.state == "done" and job.result == 10
    assert job.attempts >= 2
    assert log.read_text().splitlines() == [str(k) for k in range(10)]  # every step exactly once


@pytest.mark.slow
def test_local_batch_outlives_the_submitting_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pipeline.dispatch import LauncherConfig, dispatch

        def triple(x):
            return 3 * x

        dispatch([1, 2], triple, LauncherConfig(kind="local", slots=1), sys.argv[1], wait=False)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, check=True, timeout=60)
    statuses = wait_for(tmp_path, progress=False, poll_s=0.2, timeout_s=60)
    assert [(s.state, s.result) for s in statuses] == [("done", 3), ("done", 6)]


def test_local_cancel_stops_running_and_queued_jobs(tmp_path: Path) -> None:
    launcher = LauncherConfig(kind="local", slots=1)
    dispatch([1, 2], sleep_long, launcher, tmp_path, progress=False, wait=False)
    deadline = time.time() + 30
    while status(tmp_path)[0].state != "running" and time.time() < deadline:
        time.sleep(0.1)
    running = status(tmp_path)[0]
    assert running.state == "running"

    cancel(tmp_path)
    statuses = wait_for(tmp_path, progress=False, poll_s=0.2, timeout_s=30)
    assert [s.state for s in statuses] == ["cancelled", "cancelled"]
    assert statuses[1].job_id is None  # the queued job never started
    assert not Path(f"/proc/{running.job_id}").exists()  # its controller is gone


# --- progress --------------------------------------------------------------------------------


def test_eta_schedules_the_remaining_jobs_on_the_slots_with_start_up() -> None:
    now = 1000.0
    statuses = [
        JobStatus(0, "a", "done", started=900.0, ended=910.0),
        JobStatus(1, "b", "done", started=910.0, ended=920.0),
        JobStatus(2, "c", "running", started=996.0),  # 6 s left of a 10 s mean
        JobStatus(3, "d", "queued"),
        JobStatus(4, "e", "queued"),
    ]
    # two slots: d starts on the free one (ends at 10), e when c's frees at 6 (ends at 16)
    assert batch_remaining_s(statuses, parallelism=2, now=now) == pytest.approx(16.0)
    # each job still to start first pays the start-up (the process, its imports): 2 s
    assert batch_remaining_s(statuses, 2, startup_s=2.0, now=now) == pytest.approx(18.0)
    assert batch_remaining_s(statuses, parallelism=1, now=now) == pytest.approx(26.0)
    assert batch_remaining_s(statuses[2:], parallelism=2, now=now) is None


def test_progress_lines_and_status_table_show_failures_with_their_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import io

    stderr_log = tmp_path / "7_0_log.err"
    statuses = [
        JobStatus(0, "psalm seed=0", "done", job_id="7_0", started=0.0, ended=65.0),
        JobStatus(
            1, "psalm seed=1", "failed", job_id="7_1", detail="ValueError: nan", stderr=stderr_log
        ),
        JobStatus(2, "psalm seed=2", "queued", detail="Priority"),
    ]
    caplog.set_level(logging.INFO, logger="pipeline")
    # not a terminal: plain lines through logging (a terminal gets a tqdm bar)
    progress = Progress("pyramid", total=3, unit="job", stream=io.StringIO())
    show_progress(progress, statuses, set(), eta_s=None)
    warn_unfinished("pyramid", statuses)
    text = caplog.text
    assert "psalm seed=0 (1m05s)" in text
    assert f"psalm seed=1: ValueError: nan (stderr: {stderr_log})" in text
    assert "[pyramid] 1/3 done, 1 queued, 1 failed" in text
    assert "2 job(s) did not finish" in text
    table = format_status(statuses)
    assert "7_1" in table and str(stderr_log) in table and "Priority" in table


# --- SLURM -----------------------------------------------------------------------------------


slurm = pytest.mark.slurm


@slurm
@pytest.mark.slow
def test_slurm_job_array_respects_parallelism_and_reports_failures(
    slurm_cluster: None, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    specs = [{"i": i, "dir": str(records), "sleep_s": 0.3, "fail": i == 1} for i in range(3)]
    launcher = LauncherConfig(
        kind="slurm", time_min=5, mem_gb=0.5, cpus_per_task=1, array_parallelism=1
    )
    statuses = dispatch(specs, record_interval, launcher, tmp_path, progress=False, poll_s=0.3)

    assert [s.state for s in statuses] == ["done", "failed", "done"]
    assert [s.result for s in statuses] == [0, None, 2]
    array_id = statuses[0].job_id.split("_")[0]
    assert [s.job_id for s in statuses] == [f"{array_id}_{i}" for i in range(3)]
    assert "job 1 failed on purpose" in statuses[1].stderr.read_text()
    done = read_records(records)
    assert overlap(done) == 1  # array_parallelism=1, although the node has room for more
    assert all(r["env"]["OMP_NUM_THREADS"] == "1" for r in done)
    assert all(r["env"]["THP_MEM_ALLOC_ENABLE"] == "1" for r in done)
    script = next((tmp_path / "dispatch").glob("*/logs/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-2%1" in script and "#SBATCH --mem=512MB" in script


@slurm
def test_slurm_preemption_requeues_and_resumes_once(slurm_cluster: None, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    spec = {"log": str(log), "steps": 10, "slow_s": 0.3, "fast_s": 0.02}
    launcher = LauncherConfig(kind="slurm", time_min=5, mem_gb=0.5)
    (job,) = dispatch([spec], resumable_steps, launcher, tmp_path, progress=False, wait=False)

    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 2):
        time.sleep(0.1)
    assert log.exists(), f"the job never started; see {status(tmp_path)[0]}"
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    # SLURM holds a requeued job for a while (BeginTime, about 2 min); start it sooner, but not
    # within the second of the requeue: slurmd compares the new start's credential with the
    # revocation in whole seconds and refuses it ("Job credential revoked", the job fails).
    while time.time() < deadline:
        current = status(tmp_path)[0]
        if current.state == "queued" and current.attempts == 1:
            break
        time.sleep(0.1)
    assert "requeued after attempt 1" in current.detail
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now+2"], check=True)

    (job,) = wait_for(tmp_path, progress=False, poll_s=0.3, timeout_s=60)
    assert job.state == "done" and job.result == 10 and job.attempts == 2
    assert log.read_text().splitlines() == [str(k) for k in range(10)]  # every step exactly once


def test_single_run_commands_get_the_job_defaults_before_torch() -> None:
    code = (
        "import os, sys\n"
        "from pipeline.commands import apply_job_defaults\n"
        "apply_job_defaults()\n"
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "False"]  # set, and torch not yet imported to read it
