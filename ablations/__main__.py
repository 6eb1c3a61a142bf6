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
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ablations.study import STUDY_KEYS, Plan, expand, load_study, study_folder, study_names
from pipeline.config import ConfigError, RunSpec
from pipeline.dispatch import (
    FINAL_STATES,
    LauncherConfig,
    batch_folders,
    cancel,
    dispatch,
    format_status,
    status,
)
from pipeline.mlflow_server import shared_tracking
from pipeline.run import run, run_dir
from pipeline.tracking import Tracker, tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    study_overrides = [o for o in args.overrides if o.split("=", 1)[0] in STUDY_KEYS]
    run_overrides = [o for o in args.overrides if o.split("=", 1)[0] not in STUDY_KEYS]
    t0 = time.perf_counter()
    study = load_study(args.name, study_overrides)
    if study.schedule is not None:  # seeds=auto
        return run_adaptive(args, study, study_overrides, run_overrides)
    plan = expand(study, run_overrides)
    first = plan.all[0]
    launcher = LauncherConfig.from_mapping(first.config["launcher"])
    uri = tracking_uri(first.config["tracking"]["uri"])
    tracker = Tracker(uri, first.config["tracking"]["experiment"])
    todo_train, todo_eval, skipped = _pending(plan, tracker, args.force)
    print(
        f"study {plan.study}: {len(plan.train)} training run(s), {len(plan.evaluate)} "
        f"evaluation(s) over models {list(study.models)} × seeds {list(study.seeds)}; "
        f"{skipped} already finished or live, launcher {launcher.kind}; "
        f"planned in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    folder = study_folder(plan.study, first.config["output_dir"])
    with shared_tracking(uri, launcher.kind == "local" and len(todo_train) + len(todo_eval) > 1):
        for phase, specs in (("training", todo_train), ("evaluation", todo_eval)):
            if not specs:
                continue
            print(f"{phase}: dispatching {len(specs)} run(s)", flush=True)
            statuses = dispatch(
                specs,
                run,
                launcher,
                folder,
                labels=[s.label for s in specs],
                wait=not args.no_wait,
            )
            if args.no_wait:
                print(
                    f"submitted; follow with `python -m ablations status {plan.study}`"
                    + (
                        "; run the same command again afterwards for the evaluation arms"
                        if todo_eval and phase == "training"
                        else ""
                    ),
                    flush=True,
                )
                return 0
            failed = [s for s in statuses if s.state != "done"]
            for s in failed:
                print(f"FAILED {s.label}: {s.detail} (log: {s.stderr})", flush=True)
    print(f"study {plan.study} done in {time.perf_counter() - t0:.0f}s", flush=True)
    print_results(plan.study, uri)
    return 0


def run_adaptive(args, study, study_overrides: list[str], run_overrides: list[str]) -> int:
    """``seeds=auto``: run the study in rounds, adding seeds to the models with an unsettled
    verdict, until every judged arm is settled or has ``seeds_max`` seeds
    (``analysis.sequential``: the verdicts are read with anytime-valid intervals, so looking
    after every round does not inflate their error rate).

    Each round is an ordinary ``run`` with explicit ``models=`` and ``seeds=``; finished runs
    are never repeated, so an interrupted adaptive study resumes where it stopped.
    """
    from ablations.study import model_name
    from analysis import analyze_study
    from analysis.sequential import SeedSchedule
    from analysis.study_run import design_params, open_study_run, publish_study

    schedule: SeedSchedule = study.schedule
    if args.no_wait:
        print(
            "error: seeds=auto reads each round's verdicts, so it cannot --no-wait", file=sys.stderr
        )
        return 2
    plan = expand(study, run_overrides)
    uri = tracking_uri(plan.all[0].config["tracking"]["uri"])
    Tracker(uri, plan.all[0].config["tracking"]["experiment"])  # creates the store if new
    open_study_run(plan.study, uri, design_params(schedule))
    others = [o for o in study_overrides if o.split("=", 1)[0] not in STUDY_KEYS]
    seeds = {model: schedule.seeds_start for model in study.models}
    t0 = time.perf_counter()
    for round_ in range(1, len(schedule.looks()) + 1):
        todo = sorted(m for m, n in seeds.items() if n)
        print(f"seeds=auto round {round_}: {', '.join(f'{m} → {seeds[m]} seeds' for m in todo)}")
        for count in sorted({seeds[m] for m in todo}):
            models = [m for m in todo if seeds[m] == count]
            argv = [f"models=[{','.join(models)}]", f"seeds=[{','.join(map(str, range(count)))}]"]
            rc = _run(
                argparse.Namespace(**{**vars(args), "overrides": [*argv, *others, *run_overrides]})
            )
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


def _pending(plan: Plan, tracker: Tracker, force: bool) -> tuple[list, list, int]:
    """The specs still to run; ``force`` retires FINISHED runs (deleted in MLflow, restorable)."""
    train, evaluate, skipped = [], [], 0
    for spec in plan.all:
        state = tracker.state(spec.config_hash)
        if state == "finished" and force:
            tracker.retire(spec.config_hash)
            folder = run_dir(spec)
            if folder.exists():  # keep the old checkpoint beside, never delete it
                folder.rename(folder.with_name(f"{folder.name}.retired-{int(time.time())}"))
            state = "new"
        if state in ("finished", "live"):
            skipped += 1
            continue
        (evaluate if spec.kind == "eval" else train).append(spec)
    return train, evaluate, skipped


def print_results(study: str, uri: str) -> None:
    """AP per arm, the verdict table and the dashboard's path."""
    from analysis import analyze_study, format_verdicts, write_dashboard

    result = analyze_study(study, tracking_uri=uri)
    print(arm_table(result.runs, result.metric))
    print()
    print(format_verdicts(result.verdicts))
    path = write_dashboard(result)
    from analysis.study_run import publish_study

    print(f"\ndashboard: {path}\nMLflow parent run of the study: {publish_study(result)}")
    print(f"MLflow: {uri} (make mlflow-ui)")


def arm_table(runs, metric: str) -> str:
    """Mean ± sd of ``metric`` per model and arm, with the number of seeds."""
    column = f"metrics.{metric}" if f"metrics.{metric}" in runs.columns else metric
    if runs.empty or column not in runs.columns:
        return f"(no runs with {metric})"
    finished = runs[runs["status"] == "FINISHED"] if "status" in runs.columns else runs
    grouped = finished.groupby(["model", "arm"])[column].agg(["mean", "std", "count"])
    lines = [f"{metric} per arm (mean ± sd over seeds):"]
    for (model, arm), row in grouped.iterrows():
        sd = 0.0 if row["count"] < 2 else row["std"]
        lines.append(
            f"  {model:<6} {arm:<18} {row['mean']:.3f} ± {sd:.3f}  (n={int(row['count'])})"
        )
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
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
        print(format_status(status(folder)))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    folder = _dispatched(args.study, args.output_dir)
    if folder is None:
        return 2
    stopped: list[str] = []
    for batch in batch_folders(folder):
        live = [s.label for s in status(batch) if s.state not in FINAL_STATES]
        if live:
            cancel(batch)
            stopped += live
            print(f"batch {batch.name}: cancelled {', '.join(live)}")
    if not stopped:
        print(f"study {args.study}: nothing to cancel, every job has ended")
        return 0
    tracker = Tracker(None, args.experiment)
    marked = tracker.end_cancelled(args.study, stopped)
    if marked:
        print(f"MLflow ({tracker.uri}): marked KILLED {', '.join(marked)}")
    print(
        f"study {args.study}: {len(stopped)} job(s) cancelled; finished runs keep their results, "
        f"and `python -m ablations run` again resumes the rest from their checkpoints"
    )
    return 0


def _dispatched(study: str, output_dir: str) -> Path | None:
    """The folder of a dispatched study, or None after an error naming the known ones."""
    folder = study_folder(study, output_dir)
    if folder.exists():
        return folder
    root = folder.parent
    known = ", ".join(sorted(p.name for p in root.glob("*"))) or "none"
    print(f"error: no dispatched study {study!r} under {root} (known: {known})", file=sys.stderr)
    return None


def _list(args: argparse.Namespace) -> int:
    print("\n".join(study_names()))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ablations", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("run", help="run a study (expand, validate, dispatch, wait, report)")
    p.add_argument("name", help=f"one of {', '.join(study_names())}")
    p.add_argument("overrides", nargs="*", help="models=[…] seeds=[…] and per-run overrides")
    p.add_argument("--no-wait", action="store_true", help="submit and return (cluster use)")
    p.add_argument("--force", action="store_true", help="rerun runs that already finished")
    p.set_defaults(func=_run)
    p = sub.add_parser("status", help="the jobs of a dispatched study (all if none named)")
    p.add_argument("study", nargs="?", help="the study's name, e.g. pyramid-default")
    p.add_argument("--output-dir", default="runs", help="the runs' output_dir (default: runs)")
    p.set_defaults(func=_status)
    p = sub.add_parser("cancel", help="stop a dispatched study's unfinished jobs")
    p.add_argument("study", help="the study's name, e.g. pyramid-default")
    p.add_argument("--output-dir", default="runs", help="the runs' output_dir (default: runs)")
    p.add_argument("--experiment", default="psalm", help="MLflow experiment (default: psalm)")
    p.set_defaults(func=_cancel)
    p = sub.add_parser("list", help="the available studies")
    p.set_defaults(func=_list)
    return parser


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RunSpec", "main"]
