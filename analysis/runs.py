"""Reading MLflow: a study's runs as one tidy pandas DataFrame, and their metric histories.

This is the only module of the project that reads MLflow (``pipeline/tracking.py`` writes it).

Run layout it understands (tags written by the pipeline on every run):

- ``study``, ``model``, ``seed``, ``config_hash``, ``git_sha``, ``profile``; ``studies`` on a run
  several studies share (a baseline trained once): every study that uses it, comma-separated;
- ``arm``: ``baseline`` or the variant's name (``no_pyramid``, ``no_conv``, ``support_none``,
  ``support_shuffled``, ``support_none_trained``, ...);
- ``ablation``: the ablation the run belongs to (``pyramid`` | ``conv`` | ``support``). A baseline
  shared by several ablations of a study (one run per study, model and seed) carries
  ``arm=baseline`` and the comma-separated list, e.g. ``ablation=pyramid,conv,support``;
- ``eval_of``: on evaluation-only arms (``support_none``, ``support_shuffled``), the run id of the
  trained baseline they evaluate.

Columns of the frame: ``run_id, run_name, experiment_id, status, start_time, end_time``, the tags
above as plain columns (``seed`` as a nullable integer, ``ablations`` as a tuple parsed from
``ablation``), then ``metrics.<key>`` (last logged value), ``params.<key>`` and ``tags.<key>`` for
everything else.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.mlflow_server import check_store
from pipeline.study_tags import quote, search_study, studies_of

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CONTRACT_TAGS = ("study", "ablation", "arm", "model", "seed", "config_hash", "git_sha", "profile")
BASELINE_ARM = "baseline"
STUDY_RUN_KIND = "study"  # tag ``kind`` of a study's parent run (verdict table, plots, design)
SUMMARY_TAG = "summary_of"  # the parent run's tag naming its study (it has no ``study`` tag)
INFO_COLUMNS = ("run_id", "run_name", "experiment_id", "status", "start_time", "end_time")
RUN_COLUMNS = (*INFO_COLUMNS, *CONTRACT_TAGS, "eval_of", "ablations")


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The store to read: the explicit URI, else ``$MLFLOW_TRACKING_URI``, else MLflow's default
    ``sqlite:///mlflow.db`` in the working directory."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def split_ablations(tag: object) -> tuple[str, ...]:
    """``"pyramid,conv"`` -> ``("pyramid", "conv")``; missing or empty -> ``()``."""
    if tag is None or (isinstance(tag, float) and pd.isna(tag)):
        return ()
    return tuple(part.strip() for part in str(tag).split(",") if part.strip())


def load_runs(study: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """All active (not deleted) runs of ``study``, from every experiment, one row each: those
    tagged ``study=<study>`` and those shared with it (``<study>`` in tag ``studies``, e.g. a
    baseline another study trained first; ``pipeline.study_tags``).

    Raises LookupError naming the studies that do exist when none matches.
    """
    if not study.strip():  # "" would match the runs no study tagged
        raise LookupError("no study name given (python -m analysis studies lists them)")
    client, uri = _client(tracking_uri)
    runs = search_study(lambda where: _search(client, where), study)
    runs = [r for r in runs if r.data.tags.get("kind") != STUDY_RUN_KIND]
    if not runs:
        some_runs = _search(client, "", limit=2000)
        present = sorted({s for r in some_runs for s in studies_of(r.data.tags)})
        raise LookupError(
            f"no runs tagged study={study!r} (or with it in studies) in {uri}; studies there: "
            f"{present or 'none'}. "
            "Pass --tracking-uri (or set MLFLOW_TRACKING_URI) if the runs live elsewhere."
        )
    return runs_frame(runs)


def list_studies(tracking_uri: str | None = None) -> list[str]:
    """Names of the studies present in a store (tags ``study`` and ``studies``)."""
    client, _ = _client(tracking_uri)
    return sorted({s for r in _search(client, "") for s in studies_of(r.data.tags)})


def find_study_run(study: str, tracking_uri: str | None = None):
    """The parent run of a study (tags ``kind=study``, ``summary_of=<study>``), or None."""
    client, _ = _client(tracking_uri)
    runs = _search(
        client, f"tags.{SUMMARY_TAG} = {quote(study)} and tags.kind = '{STUDY_RUN_KIND}'"
    )
    return max(runs, key=lambda r: r.info.start_time) if runs else None


def load_study_metric(study: str, tracking_uri: str | None = None) -> str | None:
    """The metric a study was run to be judged on (its parent run's ``metric`` tag, set by
    ``metric=`` or a study file's ``metric:``), or None: the expectations file's."""
    run = find_study_run(study, tracking_uri)
    return run.data.tags.get("metric") if run is not None else None


def load_study_design(study: str, tracking_uri: str | None = None):
    """The ``seeds=auto`` schedule a study ran with (its parent run's tags), or None."""
    from analysis.sequential import SeedSchedule

    run = find_study_run(study, tracking_uri)
    params = run.data.tags if run is not None else {}
    if params.get("seeds") != "auto":
        return None
    return SeedSchedule(
        seeds_start=int(params["seeds_start"]),
        seeds_batch=int(params["seeds_batch"]),
        seeds_max=int(params["seeds_max"]),
    )


def runs_frame(runs: Iterable) -> pd.DataFrame:
    """Tidy frame from MLflow ``Run`` objects (see the module docstring for the columns)."""
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row: dict[str, object] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "experiment_id": info.experiment_id,
            "status": info.status,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True)
            if info.end_time
            else pd.NaT,
        }
        for key in (*CONTRACT_TAGS, "eval_of"):
            row[key] = data.tags.get(key)
        row["ablations"] = split_ablations(data.tags.get("ablation"))
        row.update({f"metrics.{k}": float(v) for k, v in data.metrics.items()})
        row.update({f"params.{k}": v for k, v in data.params.items()})
        row.update(
            {f"tags.{k}": v for k, v in data.tags.items() if k not in (*CONTRACT_TAGS, "eval_of")}
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    extra = sorted(c for c in frame.columns if c not in RUN_COLUMNS)
    return frame[[*RUN_COLUMNS, *extra]].sort_values(
        ["model", "arm", "seed", "start_time"], na_position="last", ignore_index=True
    )


def load_metric_histories(
    run_ids: Iterable[str], keys: Iterable[str], tracking_uri: str | None = None
) -> pd.DataFrame:
    """Step-wise history of metrics: columns ``run_id, key, step, value`` (sorted by step)."""
    client, _ = _client(tracking_uri)
    rows = [
        (run_id, key, m.step, m.value)
        for run_id in run_ids
        for key in keys
        for m in client.get_metric_history(run_id, key)
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    return frame.sort_values(["run_id", "key", "step"], ignore_index=True)


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI served at ``ui_url``."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient  # slow import: only when a store is read

    uri = resolve_tracking_uri(tracking_uri)
    try:
        check_store(uri)
    except ConnectionError as exc:  # nothing answers where the user pointed: theirs to fix
        raise LookupError(str(exc)) from exc
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            # MLflow would silently create an empty store here; a typo deserves an error.
            raise FileNotFoundError(
                f"no MLflow store at {path.resolve()} ({uri}): run a study first "
                "(make ablation-pyramid) or point --tracking-uri / MLFLOW_TRACKING_URI at the store"
            )
    return MlflowClient(tracking_uri=uri), uri


def _search(client, filter_string: str, limit: int | None = None) -> list:
    from mlflow.entities import ViewType

    experiment_ids = [e.experiment_id for e in _all_pages(client.search_experiments)]
    if not experiment_ids:
        return []
    runs: list = []
    token = None
    while limit is None or len(runs) < limit:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _all_pages(search) -> list:
    items: list = []
    token = None
    while True:
        page = search(page_token=token)
        items.extend(page)
        token = page.token
        if not token:
            return items
