"""A loopback MLflow tracking server in front of a SQLite store, for jobs that log in parallel.

Many processes writing one SQLite file directly can fail with "database is locked". Routed
through one server process, the file has a single writer process, whose connections wait for
each other (a 60 s SQLite busy timeout instead of the default 5 s):

    from pipeline.mlflow_server import tracking_server

    with tracking_server("sqlite:///mlflow.db") as server:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri   # http://127.0.0.1:<port>, jobs inherit it
        ...                                              # dispatch jobs, wait for them

The server lives as long as the `with` block: start it around a blocking dispatch. Inside
`pipeline.processes.owned_processes`, a watchdog also stops it if the driver is killed. Artifacts
are not proxied: runs get a local artifact location (MLflow's own default, ./mlruns, unless
`artifact_root` says otherwise) that jobs write directly, so the store reads the same with or
without the server afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.processes import adopt, release

log = logging.getLogger(__name__)

# The store that $MLFLOW_TRACKING_URI's loopback server fronts, while ``shared_tracking`` runs.
FRONTED_STORE = "PSALM_FRONTED_STORE"

SQLITE_BUSY_TIMEOUT_S = 60


@dataclass(frozen=True)
class TrackingServer:
    """A running server: where to reach it, and where it logs."""

    uri: str  # http://127.0.0.1:<port>
    backend_store_uri: str
    artifact_root: str
    log_path: Path
    pid: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _with_busy_timeout(store_uri: str) -> str:
    """The SQLite URI with SQLite's busy timeout raised (pysqlite reads `timeout` from it)."""
    if not store_uri.startswith("sqlite:") or "timeout=" in store_uri:
        return store_uri
    separator = "&" if "?" in store_uri else "?"
    return f"{store_uri}{separator}timeout={SQLITE_BUSY_TIMEOUT_S}"


def absolute_sqlite_uri(store_uri: str) -> str:
    """`sqlite:///relative.db` resolved against the working directory, where MLflow would open
    it, so that the server (started with another working directory or not), every job of a
    study and the artifact folder beside the store all name the same file; any other URI (an
    absolute path, an in-memory store, a server) as it is."""
    prefix = "sqlite:///"
    path, _, query = store_uri.removeprefix(prefix).partition("?")
    if not store_uri.startswith(prefix) or path.startswith("/") or path in ("", ":memory:"):
        return store_uri
    absolute = prefix + str(Path(path).resolve())
    return f"{absolute}?{query}" if query else absolute


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def check_store(uri: str) -> None:
    """A ValueError for a store URI that is surely a mistake: a bare ``….db`` path, which MLflow
    would take for a folder of its file store; the file store itself (``file:…`` or a folder),
    which MLflow refuses unless ``MLFLOW_ALLOW_FILE_STORE`` is set; an in-memory SQLite store,
    whose runs vanish with the process; a SQLite file in a folder that does not exist, which
    MLflow would create with every missing parent (a mistyped path made a new, empty store
    there). A ConnectionError from ``check_server`` or ``check_database``."""
    if "://" not in uri and uri.endswith(".db"):
        raise ValueError(
            f"tracking URI {uri!r} is a file path: a SQLite store is "
            f"sqlite:///{Path(uri).absolute()}"
        )
    file_store = uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1")
    if file_store and not allowed:  # MLflow refuses it too, in a paragraph
        folder = Path(uri.removeprefix("file://") if uri.startswith("file:") else uri)
        raise ValueError(
            f"tracking URI {uri!r} is MLflow's file store, which MLflow now refuses: use "
            f"sqlite:///{folder.absolute() / 'mlflow.db'} (or set MLFLOW_ALLOW_FILE_STORE=true "
            "to keep the file store)"
        )
    if uri in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        raise ValueError(
            f"tracking URI {uri!r} is an in-memory store: every run would be lost when the "
            "process ends; name a file, e.g. sqlite:///mlflow.db"
        )
    if uri.startswith("sqlite:///"):
        folder = Path(absolute_sqlite_uri(uri).removeprefix("sqlite:///").partition("?")[0]).parent
        if not folder.is_dir():
            raise ValueError(
                f"tracking URI {uri!r}: the folder {folder} does not exist; create it first "
                f"(mkdir -p {shlex.quote(str(folder))}) or fix the path (MLFLOW_TRACKING_URI, "
                "tracking.uri or --tracking-uri)"
            )
    check_server(uri)
    check_database(uri)


# default ports of the database servers MLflow's SQLAlchemy store speaks to
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database(uri: str, timeout_s: float = 5.0) -> None:
    """For a database server's URI (``postgresql://user@host:port/db``, ``mysql+pymysql://…``): a
    ConnectionError at once if nothing listens at its host and port, where MLflow retries for
    about 2 minutes. Whether it then lets us in is for MLflow to say."""
    parts = urllib.parse.urlsplit(uri)
    port = _DATABASE_PORTS.get(parts.scheme.split("+")[0])
    if port is None or not parts.hostname:  # not a database server, or a local socket
        return
    try:
        address = (parts.hostname, parts.port or port)
    except ValueError as exc:  # a port that is not a number
        raise ConnectionError(f"tracking URI {uri!r}: {exc}") from exc
    try:
        socket.create_connection(address, timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(
            f"no database server answers at {address[0]}:{address[1]} for the tracking URI "
            f"{parts.scheme}://…{parts.path} ({exc.strerror or exc}); start it, or point "
            "MLFLOW_TRACKING_URI (tracking.uri=, --tracking-uri) at a store that exists"
        ) from exc


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """For a server's URI (``http(s)://``): a ConnectionError at once if nothing answers there,
    where MLflow's client would retry for about 4 minutes before saying so. Any HTTP answer (a
    proxy's 404 or 401 included) counts: MLflow then tells what is wrong."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"no MLflow tracking server answers at {uri} ({reason}); start it, or point "
            "MLFLOW_TRACKING_URI (tracking.uri=, --tracking-uri) at a store that exists"
        ) from exc


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End the server's process group (uvicorn and its workers), politely first."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


@contextlib.contextmanager
def tracking_server(
    backend_store_uri: str = "sqlite:///mlflow.db",
    *,
    artifact_root: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: str | Path | None = None,
    startup_timeout_s: float = 300.0,  # a cold start on a loaded 2-core machine took > 120 s
) -> Iterator[TrackingServer]:
    """Start `mlflow server` on a free loopback port, wait until GET /health answers, yield it,
    and stop it on exit. A new SQLite file gets its tables first (``create_sqlite_store``)."""
    store_uri = _with_busy_timeout(absolute_sqlite_uri(backend_store_uri))
    artifacts = str(Path(artifact_root or "mlruns").resolve())
    from pipeline.tracking import create_sqlite_store

    create_sqlite_store(store_uri, artifacts)  # whole, even if this process is killed meanwhile
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
        os.close(handle)
        log_path = name
    log_path = Path(log_path)
    port = port or free_port(host)
    uri = f"http://{host}:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--default-artifact-root",
        artifacts,
        "--no-serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # one process owns the SQLite file
    ]
    # MLflow 3's server also starts a job runner with several worker processes (for GenAI
    # features): seconds of CPU each, and nothing here needs them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping reaches the workers
        )
    adopt(process.pid, "mlflow server")  # stopped by a watchdog if the driver is killed
    try:
        deadline = time.time() + startup_timeout_s
        while not _healthy(uri):
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {process.returncode} before answering on "
                    f"{uri}; its log ({log_path}) ends with:\n{_log_tail(log_path)}"
                )
            if time.time() > deadline:
                raise TimeoutError(
                    f"mlflow server did not answer {uri}/health within {startup_timeout_s:.0f} s;"
                    f" its log ({log_path}) ends with:\n{_log_tail(log_path)}"
                )
            time.sleep(0.2)
        yield TrackingServer(uri, store_uri, artifacts, log_path, process.pid)
    finally:
        _stop(process)
        release(process.pid)


@contextlib.contextmanager
def shared_tracking(uri: str, parallel: bool) -> Iterator[str]:
    """Parallel jobs writing one SQLite file can fail with "database is locked": while the block
    runs, put a loopback server in front of it and point ``MLFLOW_TRACKING_URI`` (inherited by
    the jobs) at it. Yields the URI to use; a no-op for one job at a time or a non-SQLite URI."""
    if not (parallel and uri.startswith("sqlite:")):
        yield uri
        return
    with tracking_server(backend_store_uri=uri) as server:
        # the jobs' configs name the store itself (tracking.uri): FRONTED_STORE tells
        # pipeline.tracking.tracking_uri that this store is reached through the server
        routes = {"MLFLOW_TRACKING_URI": server.uri, FRONTED_STORE: uri}
        previous = {key: os.environ.get(key) for key in routes}
        os.environ.update(routes)
        log.info(f"tracking through a loopback MLflow server {server.uri} over {uri}")
        try:
            yield server.uri
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
