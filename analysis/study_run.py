"""A study's parent run in MLflow: its design, verdict table and delta plots in one place.

Sweeps get a parent run (``kind=sweep``); a study gets one too, so the MLflow UI alone shows a
study. Its tags: ``kind=study`` and ``summary_of=<study>`` (not ``study=``, so whoever lists a
study's runs by that tag never sees it; search ``tags.summary_of = '<study>'`` in the UI), and
how its seeds were chosen (``seeds=auto`` with ``seeds_start``/``seeds_batch``/``seeds_max``, or
the fixed list; tags, not params, because a study run again with other seeds must say so). Its
artifacts: ``verdicts.json`` (``{"columns": [...], "data": [[...], ...]}``, the layout of
``MlflowClient.log_table``, rewritten whole each time: ``log_table`` would append the rows again)
and one ``deltas/<ablation>.png`` per ablation (``MlflowClient.log_figure``); its tag
``results_digest`` says which results they show, so reporting unchanged results again rewrites
nothing. ``analysis.runs.load_study_design`` reads the design back.

``open_study_run`` finds the parent run again (a study run again, or reported again, updates it)
or creates it; ``publish_study`` writes the table and plots.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from analysis.runs import STUDY_RUN_KIND, SUMMARY_TAG, _client, find_study_run
from analysis.sequential import SeedSchedule
from analysis.study import StudyAnalysis

DIGEST_TAG = "results_digest"  # which results the parent run's artifacts show
EXPERIMENT = "psalm"  # the experiment the pipeline's runs live in (conf/config.yaml tracking)


def design_params(schedule: SeedSchedule | None, seeds: tuple[int, ...] = ()) -> dict[str, str]:
    """The tags that record how a study's seeds were chosen."""
    if schedule is None:
        return {"seeds": ",".join(map(str, seeds)) or "fixed"}
    return {
        "seeds": "auto",
        "seeds_start": str(schedule.seeds_start),
        "seeds_batch": str(schedule.seeds_batch),
        "seeds_max": str(schedule.seeds_max),
    }


def open_study_run(
    study: str,
    tracking_uri: str | None = None,
    design: Mapping[str, str] | None = None,
    experiment: str = EXPERIMENT,
    default_design: Mapping[str, str] | None = None,
) -> str:
    """The id of the study's parent run, created when there is none. ``design`` (tags from
    ``design_params``) is written either way; ``default_design`` only on a new run."""
    client, _ = _client(tracking_uri)
    found = find_study_run(study, tracking_uri)
    if found is not None:
        run_id = found.info.run_id
    else:
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run = client.create_run(
            experiment_id,
            run_name=f"study {study}",
            tags={"kind": STUDY_RUN_KIND, SUMMARY_TAG: study, **(default_design or {})},
        )
        run_id = run.info.run_id
        client.set_terminated(run_id, "FINISHED")
    for key, value in (design or {}).items():
        client.set_tag(run_id, key, value)
    return run_id


def publish_study(analysis: StudyAnalysis, experiment: str = EXPERIMENT) -> str:
    """Write the verdict table and the delta plots to the study's parent run; returns its id.
    Results already published (the same ``results_digest``) are not written again."""
    design = design_params(analysis.schedule, tuple(sorted(_seeds(analysis))))
    run_id = open_study_run(
        analysis.study, analysis.tracking_uri, experiment=experiment, default_design=design
    )
    client, _ = _client(analysis.tracking_uri)
    digest = analysis.digest
    if client.get_run(run_id).data.tags.get(DIGEST_TAG) == digest:
        return run_id
    from analysis.plots import plot_deltas

    table = analysis.verdicts
    rows = json.loads(table.to_json(orient="values", date_format="iso", default_handler=str))
    client.log_dict(run_id, {"columns": list(table.columns), "data": rows}, "verdicts.json")
    for ablation in dict.fromkeys(table["ablation"]):
        figure = plot_deltas(analysis, ablation)
        client.log_figure(run_id, figure, f"deltas/{ablation}.png")
    client.set_tag(run_id, "verdicts", _summary(analysis))
    client.set_tag(run_id, DIGEST_TAG, digest)
    return run_id


def _summary(analysis: StudyAnalysis) -> str:
    rows = analysis.verdicts
    return "; ".join(f"{r.model}/{r.arm}: {r.verdict}" for r in rows.itertuples())[:5000]


def _seeds(analysis: StudyAnalysis) -> set[int]:
    return {int(s) for s in analysis.runs["seed"].dropna()}
