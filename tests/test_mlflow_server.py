"""The loopback MLflow server: parallel writers through it lose nothing and never lock SQLite."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

import pytest

from pipeline.mlflow_server import _with_busy_timeout, absolute_sqlite_uri, tracking_server

WRITERS = 8
STEPS = 50
PARAMS = 5


def test_sqlite_uri_is_made_absolute_and_patient(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert absolute_sqlite_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert absolute_sqlite_uri("sqlite://") == "sqlite://"  # in-memory: check_store refuses it
    assert _with_busy_timeout("sqlite:////abs/m.db") == "sqlite:////abs/m.db?timeout=60"
    assert _with_busy_timeout("sqlite:////abs/m.db?timeout=5") == "sqlite:////abs/m.db?timeout=5"
    assert _with_busy_timeout("postgresql://db/mlflow") == "postgresql://db/mlflow"


def _write_run(uri: str, writer: int) -> None:
    """One job's worth of logging: params, then one metric per step, then the end of the run."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run("0", tags={"writer": str(writer)}).info.run_id
    for p in range(PARAMS):
        client.log_param(run_id, f"p{p}", writer)
    for step in range(STEPS):
        client.log_metric(run_id, "train/loss", writer * 1000.0 + step, step=step)
    client.set_terminated(run_id)


@pytest.mark.slow
def test_concurrent_writers_through_the_server_lose_nothing(
    tmp_mlflow_uri: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    log = tmp_path / "server.log"
    with tracking_server(tmp_mlflow_uri, artifact_root=tmp_path / "mlruns", log_path=log) as server:
        # Forked writers start at once (mlflow is already imported) and share nothing with this
        # process: it has not talked to the server yet.
        context = multiprocessing.get_context("fork")
        writers = [context.Process(target=_write_run, args=(server.uri, k)) for k in range(WRITERS)]
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=120)
        assert [p.exitcode for p in writers] == [0] * WRITERS

        client = MlflowClient(server.uri)
        runs = client.search_runs(["0"], max_results=100)
        assert len(runs) == WRITERS
        for run in runs:
            writer = int(run.data.tags["writer"])
            assert run.info.status == "FINISHED"
            assert run.data.params == {f"p{p}": str(writer) for p in range(PARAMS)}
            history = client.get_metric_history(run.info.run_id, "train/loss")
            assert sorted((m.step, m.value) for m in history) == [
                (step, writer * 1000.0 + step) for step in range(STEPS)
            ]
        port = int(server.uri.rsplit(":", 1)[1])

    # The same rows are in the SQLite file itself, and the server is gone.
    direct = MlflowClient(tmp_mlflow_uri)
    assert len(direct.search_runs(["0"], max_results=100)) == WRITERS
    assert "database is locked" not in log.read_text()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _kill_while_creating(db: Path, code: str) -> bool:
    """Run ``code`` (which opens a new store at ``db``) and SIGKILL it once MLflow has begun
    making the tables; whether the kill came before the process ended."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:  # alembic's first line: the migrations have started
        if "Creating initial MLflow database tables" in line or time.time() > deadline:
            break
    time.sleep(0.3)  # well into the migrations (they take seconds)
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    return alive


def test_a_process_killed_while_creating_a_store_leaves_no_broken_store(tmp_path: Path) -> None:
    """A study driver killed seconds after its start used to leave a half-made SQLite store
    that every later run refused ("table logged_models already exists"); now the store appears
    whole or not at all, and the next run opens it."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import Tracker

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert _kill_while_creating(db, f"from pipeline.tracking import Tracker; Tracker({uri!r})")
    assert not db.exists()  # only the temporary file was written, and it is never used
    tracker = Tracker(uri)
    assert MlflowClient(uri).get_experiment(tracker.experiment_id).name == "psalm"


# The variables under which MLflow switches its telemetry off by itself (pytest sets the first):
# a process started without them behaves as a user's would.
_TELEMETRY_OFF_BY_ITSELF = (
    "PYTEST_CURRENT_TEST",
    "CI",
    "GITHUB_ACTIONS",
    "MLFLOW_DISABLE_TELEMETRY",
)


def _outside_pytest(extra: dict[str, str] | None = None) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in _TELEMETRY_OFF_BY_ITSELF}
    return {**env, **(extra or {})}


def test_mlflow_telemetry_is_off_in_our_processes_unless_the_shell_turns_it_on() -> None:
    """MLflow's telemetry thread races our requests for os.environ when it cannot reach the
    internet (pipeline/__init__.py): our processes start it switched off, and leave a user's own
    setting alone."""
    import subprocess
    import sys

    probe = (
        "import os, pipeline.tracking\n"
        "from mlflow.telemetry.client import get_telemetry_client\n"
        "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'), get_telemetry_client() is None)\n"
    )
    ours = subprocess.run(
        [sys.executable, "-c", probe], env=_outside_pytest(), capture_output=True, text=True
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == ["true", "True"]

    setting = "import os, pipeline; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    users = subprocess.run(
        [sys.executable, "-c", setting],
        env=_outside_pytest({"MLFLOW_DISABLE_TELEMETRY": "false"}),
        capture_output=True,
        text=True,
    )
    assert users.stdout.strip() == "false", users.stderr


def test_an_explicit_store_wins_over_the_environment_except_through_its_server(
    tmp_mlflow_uri: str, tmp_path: Path, monkeypatch
) -> None:
    """``tracking.uri=`` / ``--tracking-uri`` name the store to use, whatever
    ``$MLFLOW_TRACKING_URI`` says (it used to win); while a study's loopback server fronts a
    store, that store's runs go through the server, and other stores stay direct."""
    import os

    from pipeline.mlflow_server import FRONTED_STORE, shared_tracking
    from pipeline.tracking import tracking_uri

    other = f"sqlite:///{tmp_path}/other.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == tmp_mlflow_uri
    assert tracking_uri(other) == other
    assert tracking_uri(None) == tmp_mlflow_uri
    with shared_tracking(tmp_mlflow_uri, parallel=True) as served:
        assert served.startswith("http://127.0.0.1:")
        assert tracking_uri(tmp_mlflow_uri) == served
        assert tracking_uri(None) == served
        assert tracking_uri(other) == other
    assert os.environ["MLFLOW_TRACKING_URI"] == tmp_mlflow_uri
    assert FRONTED_STORE not in os.environ
    assert tracking_uri(tmp_mlflow_uri) == tmp_mlflow_uri


def test_a_relative_sqlite_store_keeps_its_artifacts_beside_it(tmp_path: Path, monkeypatch) -> None:
    """MLflow opens ``sqlite:///rel.db`` in the working directory; the artifacts used to go to
    the repository's ``mlartifacts/`` instead, whatever the working directory was."""
    from pipeline.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker("sqlite:///rel.db", "psalm")
    assert tracker.uri == f"sqlite:///{tmp_path}/rel.db" and (tmp_path / "rel.db").is_file()
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (tmp_path / "mlartifacts" / "psalm").as_uri()


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("sqlite://", "in-memory store"),
        ("sqlite:///:memory:", "in-memory store"),
        ("/x/mlflow.db", "is a file path"),
        ("sqlite:////psalm-no-such-folder/runs/mlflow.db", "does not exist; create it first"),
        ("file:///x/mlruns", "MLflow's file store"),
        ("./mlruns", "MLflow's file store"),
        ("postgresql://u@127.0.0.1:{port}/db", "no database server answers at 127.0.0.1"),
        ("mysql+pymysql://u@127.0.0.1:{port}/db", "no database server answers at 127.0.0.1"),
    ],
)
def test_a_store_that_cannot_hold_runs_is_refused_at_once(uri: str, problem: str) -> None:
    """MLflow took an in-memory store and lost every run; it retried a dead database for about
    two minutes."""
    import time

    from pipeline.mlflow_server import check_store, free_port

    t0 = time.perf_counter()
    with pytest.raises((ConnectionError, ValueError), match=problem):
        check_store(uri.format(port=free_port()))
    assert time.perf_counter() - t0 < 30  # a refused connection, not a timeout


def test_an_unreachable_server_is_told_at_once() -> None:
    """MLflow's client retries a dead server for minutes; ``check_server`` answers at once."""
    import time

    from pipeline.mlflow_server import check_server, free_port

    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="no MLflow tracking server answers"):
        check_server(f"http://127.0.0.1:{free_port()}")
    assert time.perf_counter() - t0 < 30  # a refused connection, not a timeout
    check_server("sqlite:///anything.db")  # not a server: nothing to check
