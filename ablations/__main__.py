"""Ablation studies from the command line.

    python -m ablations run pyramid profile=default launcher=local   # = make ablation-pyramid
    python -m ablations run all profile=smoke seeds=[0,1]            # every study, shared baselines
    python -m ablations run support launcher=slurm launcher.partition=gpu --no-wait
    python -m ablations status pyramid-default                       # a study's jobs
    python -m ablations cancel pyramid-default                       # stop its unfinished jobs
    python -m ablations list                                         # the study files

``run`` expands the study (``conf/ablation/<name>.yaml``) into run specs, validates all of them,
skips the runs already FINISHED (or live elsewhere), dispatches the rest, waits, and prints the
AP per arm and the verdicts against the report's expectations, then the dashboard's path.
``cancel`` stops a study's unfinished jobs wherever they run (the local queue, or ``scancel`` on
SLURM); finished runs keep their results, and ``run`` again resumes the interrupted ones from
their last checkpoint.
Study settings ``models=[…]`` and ``seeds=[…]`` change the study; every other override goes to
each run (``profile=``, ``launcher=``, ``train.steps=``, …).

Crash safety: a study is done only when every cell has a FINISHED run; otherwise ``run`` names the
missing cells and exits 1. Each job holds its cell's lease (``pipeline.lease``), so two drivers
never train a cell at once, and a cell whose process died is resumed at once. The driver owns its
local queue and MLflow server (``pipeline.processes``): they stop when it is killed. Ctrl-C (or
SIGTERM / SIGHUP) stops the study's jobs, marks their runs KILLED and prints the command that
resumes (exit 130). Overrides that change the config of cells the study already ran make a new
study (its id is printed); ``--join`` adds them to the existing one instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import (
    OneLineParser,
    debug_flag,
    guarded,
    log_level,
    parse_with_overrides,
    setup_logging,
    verbosity_flags,
)

if TYPE_CHECKING:
    from ablations.study import Plan
    from pipeline.config import RunSpec
    from pipeline.dispatch import LauncherConfig
    from pipeline.tracking import Tracker

# torch, Hydra, MLflow and submitit are imported inside the commands that use them, so that
# `--help` and argument errors answer at once.

CELLS_FILE = "cells.json"  # in the study folder: each cell's config when the study first ran it
TRACKING_FILE = "tracking.json"  # in the study folder: the MLflow store and experiment of its runs

log = logging.getLogger("ablations")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the exit status; errors are one line on stderr (``--debug``: traceback)."""
    args = parse_with_overrides(build_parser(), argv)
    setup_logging(log_level(args))
    return guarded(lambda: args.func(args), debug=debug_flag(args))


def _run(args: argparse.Namespace) -> int:
    from ablations.study import STUDY_KEYS, expand, load_study, study_folder
    from pipeline.dispatch import LauncherConfig
    from pipeline.tracking import Tracker, tracking_uri

    study_overrides = [o for o in args.overrides if o.split("=", 1)[0] in STUDY_KEYS]
    run_overrides = [o for o in args.overrides if o.split("=", 1)[0] not in STUDY_KEYS]
    t0 = time.perf_counter()
    study = load_study(args.name, study_overrides)
    if study.schedule is not None:  # seeds=auto
        return run_adaptive(args, study, study_overrides, run_overrides)
    plan = expand(study, run_overrides)
    first = plan.all[0]
    drifted = _drift(plan, first.config["output_dir"])
    if drifted and not args.join:
        cell, changes = drifted
        new_id = f"{plan.study}-{_fingerprint(plan)}"
        log.warning(
            f"these overrides change the cells of study {plan.study} ({cell}: {changes}); "
            f"running them as study {new_id} (pass --join to add them to {plan.study})"
        )
        plan = expand(study, [*run_overrides, f"label.study={new_id}"])
    launcher = LauncherConfig.from_mapping(first.config["launcher"])
    uri = tracking_uri(first.config["tracking"]["uri"])
    tracker = Tracker(uri, first.config["tracking"]["experiment"])  # a bad store: nothing recorded
    _record_cells(plan, first.config["output_dir"])
    _write_json(
        study_folder(plan.study, first.config["output_dir"]) / TRACKING_FILE,
        {"uri": uri, "experiment": first.config["tracking"]["experiment"]},
    )
    if _settings(study):  # the study's parent run says what it is judged on, how it trained
        from analysis.study_run import open_study_run

        open_study_run(plan.study, uri, _settings(study))
    todo, finished, live = _pending(plan, tracker, args.force)
    first_stage = ""
    if plan.pretrain:
        first_stage = f"{len(plan.pretrain)} first-stage run(s) on {study.pretrain}, then "
    log.info(
        f"study {plan.study}: {first_stage}{len(plan.train)} training run(s), "
        f"{len(plan.evaluate)} evaluation(s) over models {list(study.models)} × seeds "
        f"{list(study.seeds)}; {finished} already finished"
        + (f", {live} held by another process (waited for)" if live else "")
        + f", launcher {launcher.kind}; planned in {time.perf_counter() - t0:.1f}s"
    )
    folder = study_folder(plan.study, first.config["output_dir"])
    if any(todo.values()):
        try:
            code = _dispatch_study(args, plan, launcher, folder, uri, todo)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP to this process
            _interrupted(args, plan, tracker, str(exc) or "SIGINT")
            return 130
        if code is not None:
            return code
    missing = []
    if any(todo.values()):  # else every cell was found FINISHED above
        missing = [spec for spec in plan.all if tracker.state(spec.config_hash) != "finished"]
    if missing:
        log.error(
            f"study {plan.study} is not done: {len(missing)} of {len(plan.all)} cell(s) have no "
            f"FINISHED run: {', '.join(plan.cell(s) for s in missing)}; run `{_command(args)}` "
            "again to resume them"
        )
        return 1
    log.info(f"study {plan.study} done in {time.perf_counter() - t0:.0f}s")
    print_results(plan.study, uri)
    return 0


def _settings(study) -> dict[str, str]:
    """The study settings its MLflow parent run records as tags: ``metric`` (what the verdicts
    are judged on) and ``pretrain`` (the data of a first training stage), where set."""
    return {key: getattr(study, key) for key in ("metric", "pretrain") if getattr(study, key)}


def _dispatch_study(
    args: argparse.Namespace,
    plan: Plan,
    launcher: LauncherConfig,
    folder: Path,
    uri: str,
    todo: dict[str, list[RunSpec]],
) -> int | None:
    """Dispatch each phase in turn (``Plan.phases``: a first stage, training, evaluation); None
    once all have ended, or the exit code after a ``--no-wait`` submission of the first phase
    with work. The driver owns the queue and the server: they end with it
    (``pipeline.processes``)."""
    from pipeline.dispatch import dispatch
    from pipeline.mlflow_server import shared_tracking
    from pipeline.processes import owned_processes
    from pipeline.run import run

    parallel = launcher.kind == "local" and sum(len(specs) for specs in todo.values()) > 1
    with owned_processes(folder), shared_tracking(uri, parallel and not args.no_wait):
        for phase, specs in todo.items():
            if not specs:
                continue
            log.info(f"{phase}: dispatching {len(specs)} run(s)")
            statuses = dispatch(
                specs,
                run,
                launcher,
                folder,
                labels=[s.label for s in specs],
                wait=not args.no_wait,
            )
            if args.no_wait:
                phases = list(todo)
                later = [p for p in phases[phases.index(phase) + 1 :] if todo[p]]
                print(
                    f"submitted; follow with `python -m ablations status {plan.study}`"
                    + (
                        f"; run the same command again afterwards for the {' and '.join(later)}"
                        if later
                        else ""
                    ),
                    flush=True,
                )
                return 0
            for s in statuses:
                if s.state != "done":
                    log.warning(f"FAILED {s.label}: {s.detail} (log: {s.stderr})")
    return None


def _cell_configs(plan: Plan) -> dict[str, dict[str, object]]:
    """cell → its flattened resolved config, without labels and where/how it runs."""
    from pipeline.config import NON_IDENTITY_KEYS, flatten

    return {
        plan.cell(spec): {
            key: value
            for key, value in flatten(spec.config).items()
            if key.split(".", 1)[0] not in NON_IDENTITY_KEYS
        }
        for spec in plan.all
    }


def _fingerprint(plan: Plan) -> str:
    text = json.dumps(_cell_configs(plan), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _drift(plan: Plan, output_dir: str) -> tuple[str, str] | None:
    """(a cell, what changed) if the plan gives a cell of the study a config other than the one
    it was first run with (``cells.json`` in the study folder); None if nothing changed. New
    cells (more seeds, another model) are not a change."""
    from ablations.study import study_folder

    recorded = _read_json(study_folder(plan.study, output_dir) / CELLS_FILE) or {}
    for cell, config in _cell_configs(plan).items():
        before = recorded.get(cell)
        if before is None or before == json.loads(json.dumps(config, default=str)):
            continue
        keys = sorted(set(before) | set(config))
        changed = [
            f"{k} {before.get(k, '(unset)')}→{config.get(k, '(unset)')}"
            for k in keys
            if before.get(k) != config.get(k)
        ]
        return cell, ", ".join(changed[:3]) + (" …" if len(changed) > 3 else "")
    return None


def _record_cells(plan: Plan, output_dir: str) -> None:
    from ablations.study import study_folder

    path = study_folder(plan.study, output_dir) / CELLS_FILE
    _write_json(path, {**(_read_json(path) or {}), **_cell_configs(plan)})


def _write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one), folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _interrupted(args: argparse.Namespace, plan: Plan, tracker: Tracker, why: str) -> None:
    """After Ctrl-C (the local queue already stopped its jobs): end the study's RUNNING runs as
    KILLED, resumable, and say in one line how to resume."""
    from pipeline.config import run_dir

    tracker.end_unowned([(s.config_hash, run_dir(s)) for s in plan.all])
    print(
        f"\ninterrupted ({why}): the study's jobs are stopped and their unfinished runs marked "
        "KILLED (resumable); finished runs are kept. "
        f"Resume with: {_command(args)}",
        file=sys.stderr,
        flush=True,
    )


def _command(args: argparse.Namespace) -> str:
    """The command that resumes this study: the user's own (a ``seeds=auto`` round carries it in
    ``args.resume``, since its overrides name that round's explicit seeds)."""
    resume = getattr(args, "resume", None)
    return resume or shlex.join(["python", "-m", "ablations", "run", args.name, *args.overrides])


def run_adaptive(args, study, study_overrides: list[str], run_overrides: list[str]) -> int:
    """``seeds=auto``: run the study in rounds, adding seeds to the models with an unsettled
    verdict, until every judged arm is settled or has ``seeds_max`` seeds
    (``analysis.sequential``: the verdicts are read with anytime-valid intervals, so looking
    after every round does not inflate their error rate).

    Each round is an ordinary ``run`` with explicit ``models=`` and ``seeds=``; finished runs
    are never repeated, so an interrupted adaptive study resumes where it stopped.
    """
    from ablations.study import expand, model_name
    from analysis import analyze_study
    from analysis.sequential import SeedSchedule
    from analysis.study_run import design_params, open_study_run, publish_study
    from pipeline.tracking import Tracker, tracking_uri

    schedule: SeedSchedule = study.schedule
    if args.no_wait:
        print(
            "error: seeds=auto reads each round's verdicts, so it cannot --no-wait", file=sys.stderr
        )
        return 2
    plan = expand(study, run_overrides)
    uri = tracking_uri(plan.all[0].config["tracking"]["uri"])
    Tracker(uri, plan.all[0].config["tracking"]["experiment"])  # creates the store if new
    open_study_run(plan.study, uri, {**design_params(schedule), **_settings(study)})
    # each round names its own models and seeds; the other study settings carry over
    others = [o for o in study_overrides if o.split("=", 1)[0] in ("metric", "pretrain")]
    seeds = {model: schedule.seeds_start for model in study.models}
    resume = _command(args)  # an interrupted round resumes the whole adaptive study
    first = schedule.first_decisive_look()
    if first != schedule.seeds_start:  # say why the first round(s) cannot settle anything
        log.info(
            f"seeds=auto: with {schedule.seeds_start} seeds the anytime-valid interval is still "
            "unbounded, so "
            + (
                f"the first round that can settle a verdict is the one with {first} seeds"
                if first
                else f"no round up to seeds_max={schedule.seeds_max} can settle a verdict"
            )
        )
    t0 = time.perf_counter()
    for round_ in range(1, len(schedule.looks()) + 1):
        todo = sorted(m for m, n in seeds.items() if n)
        log.info(f"seeds=auto round {round_}: {', '.join(f'{m} → {seeds[m]} seeds' for m in todo)}")
        for count in sorted({seeds[m] for m in todo}):
            models = [m for m in todo if seeds[m] == count]
            argv = [f"models=[{','.join(models)}]", f"seeds=[{','.join(map(str, range(count)))}]"]
            round_args = {"overrides": [*argv, *others, *run_overrides], "resume": resume}
            rc = _run(argparse.Namespace(**{**vars(args), **round_args}))
            if rc:
                return rc
        verdicts = analyze_study(plan.study, tracking_uri=uri).verdicts
        for model in todo:
            stops = verdicts.loc[verdicts["model"] == model_name(model), "stop"]
            unsettled = stops.str.startswith("unsettled").any()
            seeds[model] = schedule.next_count(seeds[model]) if unsettled else 0
        if not any(seeds.values()):
            break
    result = analyze_study(plan.study, tracking_uri=uri)
    publish_study(result)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nseeds=auto done in {minutes:.1f} min; seeds per arm and why they stopped:")
    for row in result.verdicts.itertuples():
        print(f"  {row.model:<6} {row.arm:<18} n={row.n:<3} {row.stop}: {row.verdict}")
    return 0


def _pending(plan: Plan, tracker: Tracker, force: bool) -> tuple[dict[str, list], int, int]:
    """The specs still to run per phase, the number FINISHED and the number held by a live
    process (those are dispatched too: their job waits for the cell's lease, then finds the run
    finished); ``force`` retires FINISHED runs (deleted in MLflow, restorable). A FINISHED run
    joins the study it is labelled with: a first-stage run its own data's study, not this one."""
    from pipeline.config import run_dir

    todo: dict[str, list] = {phase: [] for phase, _ in plan.phases()}
    finished, live = 0, 0
    for phase, spec in [(phase, spec) for phase, specs in plan.phases() for spec in specs]:
        state = tracker.state(spec.config_hash, run_dir(spec))
        if state == "finished" and force:
            tracker.retire(spec.config_hash)
            folder = run_dir(spec)
            if folder.exists():  # keep the old checkpoint beside, never delete it
                folder.rename(folder.with_name(f"{folder.name}.retired-{int(time.time())}"))
            state = "new"
        if state == "finished":
            tags = spec.tags()
            tracker.join_study(spec.config_hash, tags["study"], tags["ablation"])
            finished += 1
            continue
        live += state == "live"
        todo[phase].append(spec)
    return todo, finished, live


def print_results(study: str, uri: str) -> None:
    """AP per arm, the verdict table and the dashboard's path."""
    from analysis import analyze_study, format_verdicts, write_dashboard

    result = analyze_study(study, tracking_uri=uri)
    print(arm_table(result.runs, result.metric, left_out=set(result.deltas.excluded.run_id)))
    print()
    print(format_verdicts(result.verdicts))
    path = write_dashboard(result)
    from analysis.study_run import publish_study

    print(f"\ndashboard: {path}\nMLflow parent run of the study: {publish_study(result)}")
    print(f"MLflow: {uri} (make mlflow-ui)")


def arm_table(runs, metric: str, left_out: set[str] = frozenset()) -> str:
    """Mean ± sd of ``metric`` per model and arm, with the number of seeds, over the FINISHED
    runs the verdicts use (``left_out``: run ids the analysis left out, e.g. superseded by a
    newer run of the same cell after a code change)."""
    column = f"metrics.{metric}" if f"metrics.{metric}" in runs.columns else metric
    if runs.empty or column not in runs.columns:
        return f"(no runs with {metric})"
    finished = runs[runs["status"] == "FINISHED"] if "status" in runs.columns else runs
    finished = (
        finished[~finished["run_id"].isin(left_out)] if "run_id" in runs.columns else finished
    )
    grouped = finished.groupby(["model", "arm"])[column].agg(["mean", "std", "count"])
    lines = [f"{metric} per arm (mean ± sd over seeds):"]
    for (model, arm), row in grouped.iterrows():
        sd = 0.0 if row["count"] < 2 else row["std"]
        lines.append(
            f"  {model:<6} {arm:<18} {row['mean']:.3f} ± {sd:.3f}  (n={int(row['count'])})"
        )
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from ablations.study import study_folder
    from pipeline.dispatch import batch_folders, format_status, status

    root = study_folder("_", args.output_dir).parent
    studies = [args.study] if args.study else sorted(p.name for p in root.glob("*") if p.is_dir())
    if not studies:
        print(f"no dispatched studies under {root}")
        return 0
    for study in studies:
        folder = _dispatched(study, args.output_dir)
        if folder is None:
            return 2
        print(f"study {study}:")
        if batch_folders(folder):
            print(format_status(status(folder)))
        else:
            cells = len(_read_json(folder / CELLS_FILE) or {})
            # FINISHED cells are never dispatched; nor is anything when a run stopped before
            # dispatching (a bad tracking store): the MLflow line below tells which it was
            print(f"no jobs dispatched for its {cells} cell(s)")
        print(_runs_summary(study, args.tracking_uri or _recorded_tracking(folder).get("uri")))
    return 0


def _runs_summary(study: str, uri: str | None) -> str:
    """The study's MLflow runs by state, naming those another study trained (shared
    baselines); found as the analysis finds them (``analysis.runs.load_runs``)."""
    from analysis.runs import load_runs
    from pipeline.tracking import tracking_uri

    try:
        runs = load_runs(study, tracking_uri(uri))
    except (LookupError, FileNotFoundError) as exc:
        return f"MLflow: {str(exc).split(';')[0]}"
    counts = runs["status"].value_counts()
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    elsewhere = trained_elsewhere(runs, study)
    line = f"MLflow: {len(runs)} run(s): {states}"
    return line + (f"; trained elsewhere: {', '.join(elsewhere)}" if elsewhere else "")


def trained_elsewhere(runs, study: str) -> list[str]:
    """``<run name> (<state>, from study <s>)`` for each of the study's runs (an
    ``analysis.runs.load_runs`` frame) that another study trained, or ``trained outside any
    study`` for one a plain ``psalm.train`` made and the study reused."""
    out = []
    for row in runs.itertuples():
        if row.study == study:
            continue
        named = isinstance(row.study, str) and row.study  # absent tags read as None or NaN
        origin = f"from study {row.study}" if named else "trained outside any study"
        out.append(f"{row.run_name} ({row.status}, {origin})")
    return out


def _cancel(args: argparse.Namespace) -> int:
    from pipeline.dispatch import CANCEL_WAIT_S, FINAL_STATES, batch_folders, cancel, status
    from pipeline.tracking import Tracker

    folder = _dispatched(args.study, args.output_dir)
    if folder is None:
        return 2
    live = {
        batch: labels
        for batch in batch_folders(folder)
        if (labels := [s.label for s in status(batch) if s.state not in FINAL_STATES])
    }
    if not live:
        print(f"study {args.study}: nothing to cancel, every job has ended")
        return 0
    recorded = _recorded_tracking(folder)
    # the store is opened before any job is stopped: a wrong experiment or store is an error, not
    # a new experiment in which no run is found to mark
    tracker = Tracker(
        args.tracking_uri or recorded.get("uri"),
        args.experiment or recorded.get("experiment", "psalm"),
        create=False,
    )
    stopped: list[str] = []
    for batch, labels in live.items():
        # a local queue's jobs end their own runs (KILLED) when stopped: give them the time
        cancel(batch, wait_s=CANCEL_WAIT_S)
        stopped += labels
        print(f"batch {batch.name}: cancelled {', '.join(labels)}")
    # runs shared with other studies are found too; those a live process holds are left alone
    marked = tracker.end_cancelled(args.study, stopped, folder.parent.parent)
    if marked:
        print(f"MLflow ({tracker.uri}): marked KILLED {', '.join(marked)}")
    print(
        f"study {args.study}: {len(stopped)} job(s) cancelled; finished runs keep their results, "
        f"and `python -m ablations run` again resumes the rest from their checkpoints"
    )
    return 0


def _recorded_tracking(folder: Path) -> dict[str, str]:
    """The MLflow store and experiment a study recorded to (``TRACKING_FILE``; empty for a study
    run before it was written)."""
    return _read_json(folder / TRACKING_FILE) or {}


def _dispatched(study: str, output_dir: str) -> Path | None:
    """The folder of a dispatched study, or None after an error naming the known ones."""
    from ablations.study import study_folder

    folder = study_folder(study, output_dir)
    if folder.exists():
        return folder
    root = folder.parent
    known = ", ".join(sorted(p.name for p in root.glob("*"))) or "none"
    print(f"error: no dispatched study {study!r} under {root} (known: {known})", file=sys.stderr)
    return None


def _list(args: argparse.Namespace) -> int:
    from ablations.study import study_names

    print("\n".join(study_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    flags = verbosity_flags()
    parser = OneLineParser(
        prog="python -m ablations", description=__doc__.split("\n")[0], parents=[flags]
    )
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser(
        "run", help="run a study (expand, validate, dispatch, wait, report)", parents=[flags]
    )
    p.add_argument("name", help="a study of conf/ablation/ (`list` names them), or all")
    p.add_argument("overrides", nargs="*", help="models=[…] seeds=[…] and per-run overrides")
    p.add_argument("--no-wait", action="store_true", help="submit and return (cluster use)")
    p.add_argument("--force", action="store_true", help="rerun runs that already finished")
    p.add_argument(
        "--join",
        action="store_true",
        help="let overrides that change the study's cells join it (default: a new study id)",
    )
    p.set_defaults(func=_run)
    p = sub.add_parser(
        "status", help="the jobs of a dispatched study (all if none named)", parents=[flags]
    )
    p.add_argument("study", nargs="?", help="the study's name, e.g. pyramid-default")
    p.add_argument("--output-dir", default="runs", help="the runs' output_dir (default: runs)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: the one the study recorded to, else $MLFLOW_TRACKING_URI)",
    )
    p.set_defaults(func=_status)
    p = sub.add_parser("cancel", help="stop a dispatched study's unfinished jobs", parents=[flags])
    p.add_argument("study", help="the study's name, e.g. pyramid-default")
    p.add_argument("--output-dir", default="runs", help="the runs' output_dir (default: runs)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: the one the study recorded to, else $MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment (default: the one the study recorded to, else psalm)",
    )
    p.set_defaults(func=_cancel)
    p = sub.add_parser("list", help="the available studies", parents=[flags])
    p.set_defaults(func=_list)
    return parser


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main"]
