"""Which studies a run belongs to, as its MLflow tags record it, and how to search for them.

A run's identity is its config, not its study, so one run (a baseline) can serve several studies.
Tag ``study`` names the study that first trained it; tag ``studies`` lists every study that uses
it, comma-separated, once a second one joins (``pipeline.tracking.Tracker.join_study`` writes it).
A study's runs are the runs with ``study=<name>`` or ``<name>`` among ``studies``.

MLflow's search has no OR and no list membership, so ``search_study`` runs two searches
(``tags.study = …`` and ``tags.studies LIKE '%…%'``) and keeps, of the second, only the runs that
list the name exactly: ``pyramid`` must not find the runs of ``pyramid-smoke``.

No MLflow import here: the writer (``pipeline.tracking``) and the reader (``analysis.runs``)
both call these functions with their own search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

STUDY_TAG = "study"  # the study that first recorded the run
STUDIES_TAG = "studies"  # every study that uses it, comma-separated (absent until a second one)


def quote(value: str) -> str:
    """``value`` as a string literal of MLflow's search syntax."""
    if "'" in value and '"' in value:
        raise ValueError(f"study name {value!r} cannot contain both ' and \"")
    return f'"{value}"' if "'" in value else f"'{value}'"


def studies_of(tags: Mapping[str, str]) -> list[str]:
    """The studies a run with these tags belongs to, the first one first."""
    studies = [s.strip() for s in tags.get(STUDIES_TAG, "").split(",") if s.strip()]
    first = tags.get(STUDY_TAG)
    if first and first not in studies:
        studies.insert(0, first)
    return studies


def belongs_to(tags: Mapping[str, str], study: str) -> bool:
    """Whether a run with these tags is one of ``study``'s runs."""
    return study in studies_of(tags)


def search_study(search: Callable[[str], Iterable[Any]], study: str, extra: str = "") -> list[Any]:
    """The runs of ``study``: ``search(filter_string)`` (an MLflow search returning ``Run``
    objects) for ``study=<name>`` and for ``<name>`` in ``studies``, merged by run id.
    ``extra`` (e.g. ``"attributes.status = 'RUNNING'"``) is and-ed to both filters."""
    tail = f" and {extra}" if extra else ""
    found: dict[str, Any] = {}
    for run in search(f"tags.{STUDY_TAG} = {quote(study)}{tail}"):
        found[run.info.run_id] = run
    # LIKE's % and _ are wildcards, so the match is only a candidate: keep exact list members
    for run in search(f"tags.{STUDIES_TAG} LIKE {quote(f'%{study}%')}{tail}"):
        if belongs_to(run.data.tags, study):
            found.setdefault(run.info.run_id, run)
    return list(found.values())
