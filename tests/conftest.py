"""Shared pytest fixtures and session settings.

- Single-threaded maths everywhere: the machine (and CI) has 2 cores shared by the test process and
  any worker processes a test starts, so torch and BLAS use one thread each. The environment
  variables are set before torch is imported so subprocesses inherit them too.
- ``tmp_mlflow_uri``: an isolated MLflow SQLite store per test, so no test touches the repo's
  ``mlflow.db``.
- Markers follow the fixtures: a test that asks for ``slurm_cluster`` is marked ``slurm``, one that
  asks for ``postgres_url`` is marked ``postgres``, so ``make test-fast`` (``-m "not slow and not
  slurm and not browser and not postgres and not soak"``) leaves them out without anyone having
  to remember the marker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # no display on CI

import torch  # noqa: E402  (after the thread variables above)

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]

# fixture -> the marker every test using it gets (see the module docstring)
MARKER_OF_FIXTURE = {"slurm_cluster": "slurm", "postgres_url": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its tables created, made once per session.

    Creating the tables takes seconds; copying the file takes milliseconds.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("mlflow_template")
    db = root / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{db}", str(root / "artifacts"))
    store.engine.dispose()  # release the file before it is copied
    return db


@pytest.fixture
def tmp_mlflow_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _mlflow_template_db: Path
) -> Iterator[str]:
    """A fresh ``sqlite:///…`` MLflow tracking URI under ``tmp_path``, set for this test.

    Both ``MLFLOW_TRACKING_URI`` (inherited by subprocesses) and MLflow's in-process URI point
    at it; both are restored afterwards. Experiments created without an ``artifact_location``
    keep MLflow's default artifact root (``./mlruns`` in the working directory).
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    # The URI a previous mlflow.set_tracking_uri() left in-process (None: env / default).
    previous = tracking_utils._tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  (None is accepted)


@pytest.fixture(scope="session")
def make_mlflow_store(
    _mlflow_template_db: Path,
) -> Callable[[Path], contextlib.AbstractContextManager]:
    """``with make_mlflow_store(root) as (uri, client, experiment_id):`` a store under ``root``,
    set as ``MLFLOW_TRACKING_URI`` (subprocesses inherit it), with the ``psalm`` experiment made
    and its artifact root inside ``root``; for module-scoped fixtures, which cannot use
    ``tmp_mlflow_uri``."""
    from mlflow.tracking import MlflowClient

    @contextlib.contextmanager
    def make(root: Path, experiment: str = "psalm"):
        db = root / "mlflow.db"
        shutil.copyfile(_mlflow_template_db, db)
        uri = f"sqlite:///{db}"
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment(
            experiment, artifact_location=(root / "artifacts").as_uri()
        )
        (root / "cwd").mkdir()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            yield uri, client, experiment_id

    return make


def _slurm_unavailable() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (scripts/slurm-up.sh starts a single-node cluster)"
    try:
        nodes = subprocess.run(
            ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:  # sinfo retries for ~10 s when the controller is down
        return "the SLURM controller did not answer sinfo within 5 s"
    if nodes.returncode != 0:
        return f"the SLURM controller is unreachable: {nodes.stderr.strip()}"
    if not any(s.strip().rstrip("*~#$@") in ("idle", "mix", "alloc") for s in nodes.stdout.split()):
        return f"no usable SLURM node (sinfo states: {nodes.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip (with the reason) unless a SLURM controller with a usable node answers."""
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL database for Optuna's RDB storage: ``PSALM_TEST_POSTGRES_URL`` (set by
    ``.ci/run``), else the server ``scripts/postgres-up.sh`` starts (idempotent); skips, with the
    reason, where PostgreSQL is not installed."""
    url = os.environ.get("PSALM_TEST_POSTGRES_URL")
    if url:
        return url
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "postgres-up.sh")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        pytest.fail(f"scripts/postgres-up.sh failed: {out.stderr.strip()}")
    return out.stdout.strip().splitlines()[-1]
