"""``pipeline.dispatch._local_queue.process_runs``: the liveness check of the local queue's
runner and controllers (psutil, not hand-parsed /proc): alive with the marker in its command
line, and not when it has exited, is a zombie, or another program reuses the pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from pipeline.dispatch._local_queue import process_runs


def test_a_live_process_with_the_marker_runs() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-xyz"])
    try:
        deadline = time.time() + 10
        while not process_runs(child.pid, "marker-xyz") and time.time() < deadline:
            time.sleep(0.05)
        assert process_runs(child.pid, "marker-xyz")
        assert not process_runs(child.pid, "another-marker")  # a reused pid is not ours
    finally:
        child.kill()
        child.wait()


def test_an_exited_or_zombie_process_does_not_run() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass", "marker-xyz"])
    deadline = time.time() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.05)  # exited, not yet reaped: a zombie
    assert not process_runs(child.pid, "marker-xyz")
    child.wait()  # reaped: gone
    assert not process_runs(child.pid, "marker-xyz")


def test_this_process_runs() -> None:
    assert process_runs(os.getpid(), "")


def test_the_submitit_internals_the_queue_uses_exist() -> None:
    """pyproject.toml pins submitit to the releases these were checked against; a release that
    moves them fails here, not in a study."""
    import importlib
    import inspect

    from submitit.core import utils
    from submitit.local import local

    params = inspect.signature(local.start_controller).parameters
    assert {"folder", "command", "tasks_per_node", "cuda_devices", "timeout_min"} <= set(params)
    assert "signal_delay_s" in params
    assert callable(utils.JobPaths.move_temporary_file)
    assert callable(utils.environment_variables) and callable(utils.pickle_load)
    assert callable(utils.DelayedSubmission)
    importlib.import_module("submitit.core._submit")
