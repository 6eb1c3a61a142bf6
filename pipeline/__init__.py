"""Glue between the psalm library and the outside world: config, dispatch, tracking."""

import os

# MLflow's usage telemetry is off unless the shell turns it on (MLFLOW_DISABLE_TELEMETRY=false).
# Every MLflow import in this project comes after this package's, so this covers drivers, jobs
# and the tracking server they start. At import, MLflow 3.17 starts a thread that fetches the
# telemetry config from the internet. Where that fails (an offline node) the thread deletes
# _MLFLOW_TELEMETRY_SESSION_ID from os.environ, while the main thread may be iterating os.environ
# inside `requests`. One evaluation job of a study died of it: "API request to …/runs/log-batch
# failed with exception '_MLFLOW_TELEMETRY_SESSION_ID'" (docs/design.md, 2026-11-30). Tests never
# saw it, because MLflow switches telemetry off under pytest and CI.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
