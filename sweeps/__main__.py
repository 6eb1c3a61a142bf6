"""Hyperparameter sweeps from the command line.

    python -m sweeps run psalm profile=default launcher=local      # = make sweep MODEL=psalm
    python -m sweeps run cheaf profile=smoke trials=8 pruner.name=none
    python -m sweeps run psalm launcher=slurm storage=postgresql://optuna@db/optuna --no-wait
    python -m sweeps status psalm profile=default                   # trials so far, best value
    python -m sweeps export psalm profile=default                   # conf/model/psalm_tuned.yaml
    python -m sweeps list

``run`` validates the sweep (``conf/sweep/<name>.yaml``, see ``sweeps.config``), then asks Optuna
for trials and dispatches each as a job (``launcher=debug|local|slurm``, ``workers`` at once),
prints a status line as trials end, and at the end the trial table, the share of trial-steps
pruning saved, and the best configuration against trial 0 (the run config's own values, unless
``baseline=false``), exported as a model config file. Run the same command
again after a kill to resume. Settings of the sweep (``trials=``, ``workers=``, ``sampler.*``,
``pruner.*``, ``space.*``, ``storage=``, ``export=``, …) change the sweep; every other override
goes to each trial's run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
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
    from sweeps.config import Sweep
    from sweeps.driver import Summary

# Optuna, Hydra, MLflow and torch are imported inside the commands that use them, so that
# `--help` and argument errors answer at once.


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the exit status; errors are one line on stderr (``--debug``: traceback)."""
    args = parse_with_overrides(build_parser(), argv)
    setup_logging(log_level(args))
    return guarded(lambda: args.func(args), debug=debug_flag(args))


def _run(args: argparse.Namespace) -> int:
    from pipeline.config import CONF_DIR, make_spec, user_conf_dir
    from pipeline.mlflow_server import shared_tracking
    from pipeline.tracking import tracking_uri
    from sweeps.config import load_sweep
    from sweeps.driver import drive
    from sweeps.export import export_best

    sweep = load_sweep(args.name, args.overrides)
    base = make_spec(list(sweep.run_overrides)).config
    uri = tracking_uri(base["tracking"]["uri"])
    parallel = base["launcher"]["kind"] == "local" and sweep.workers > 1
    # Ctrl-C, SIGTERM or SIGHUP (pipeline.cli.guarded) stop the trials in flight
    # (sweeps/driver.py); SIGKILL cannot, and the trials' jobs then run on and report to the
    # study themselves.
    with shared_tracking(uri, parallel and not args.no_wait):
        summary = drive(sweep, wait=not args.no_wait)
    if args.no_wait:
        return 0
    from sweeps.study import open_storage, open_study

    print("\n" + trial_table(sweep, open_study(sweep, open_storage(sweep)).get_trials()))
    _print_summary(sweep, summary)
    if summary.best_trial is None:
        print(f"error: {_why_no_result(sweep)}", file=sys.stderr, flush=True)
        return 1
    if not args.no_export:
        path, others = export_best(sweep, summary)
        print(f"\nbest configuration written to {path}")
        extra = (" " + " ".join(others)) if others else ""
        model_dirs = (CONF_DIR / "model", user_conf_dir() / "model")
        if path.parent in model_dirs:
            print(f'ablate it: make ablation-pyramid ARGS="models=[{path.stem}]{extra}"')
        else:
            print(f"(outside {model_dirs[1]}: copy it there to ablate it as models=[…])")
    return 0


def _why_no_result(sweep: Sweep) -> str:
    """One line: the sweep has no completed trial, and the most common failure."""
    from optuna.trial import TrialState

    from sweeps.study import open_storage, open_study

    trials = open_study(sweep, open_storage(sweep)).get_trials(deepcopy=False)
    failures = [t.user_attrs.get("failure", "no reason recorded") for t in trials]
    failures = [f for t, f in zip(trials, failures, strict=True) if t.state == TrialState.FAIL]
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    reason = max(set(failures), key=failures.count) if failures else None
    return (
        f"sweep {sweep.sweep_id} ended with no completed trial ({len(failures)} failed, "
        f"{pruned} pruned of {len(trials)})"
        + (f"; most failed with: {str(reason).splitlines()[0][:200]}" if reason else "")
        + f"; `python -m sweeps status {sweep.name}` lists them"
    )


def _print_summary(sweep: Sweep, summary: Summary) -> None:
    c = summary.counts
    print(
        f"\nsweep {sweep.sweep_id}: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed ({c['retried']} retried) in {summary.wall_s / 60:.1f} min"
    )
    print(
        f"trial-steps trained {summary.trial_steps:,} of {summary.full_steps:,} without pruning "
        f"(saved {summary.steps_saved:.0%})"
    )
    if summary.trial_seconds and summary.job_seconds:
        n = len(summary.job_seconds)
        run_s, job_s = sum(summary.trial_seconds), sum(summary.job_seconds)
        print(
            f"per trial: {run_s / len(summary.trial_seconds):.1f} s in run(), "
            f"{(job_s - run_s) / n:.1f} s outside it (dispatch, start, imports); "
            f"{3600 * n / max(summary.wall_s, 1e-9):.1f} trials/hour"
        )
    if summary.best_trial is not None:
        params = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in summary.best_params.items()
        )
        print(
            f"best {sweep.metric} {summary.best_value:.4f} (trial {summary.best_trial}): {params}"
        )
    print(_against_baseline(sweep, summary))


def _against_baseline(sweep: Sweep, summary: Summary) -> str:
    """How the best trial compares with the run config's own values (trial 0)."""
    if summary.baseline_state is None:
        return "no trial ran the run config's own values (baseline): nothing to compare with"
    if summary.baseline_value is None or summary.best_value is None:
        return (
            f"the run config's own values (trial 0) have no value ({summary.baseline_state}): "
            "nothing to compare the best with"
        )
    start = f"the run config's own values (trial 0): {sweep.metric} {summary.baseline_value:.4f}"
    if summary.best_trial == 0 or summary.best_value == summary.baseline_value:
        return f"{start}, the best: the sweep found nothing better"
    gain = summary.best_value - summary.baseline_value
    spread = (
        f"the mean of {len(sweep.seeds)} seeds each"
        if sweep.seeds
        else "one seed each: compare over seeds, or sweep with seeds=[0,1,2]"
    )
    return f"{start}; the best differs by {gain:+.4f} ({spread})"


def trial_table(sweep: Sweep, trials) -> str:
    from optuna.trial import TrialState

    rows = [("#", "state", sweep.metric, "steps", "s", "params / note")]
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        if t.state == TrialState.PRUNED and t.intermediate_values:
            value = f"({t.intermediate_values[max(t.intermediate_values)]:.4f})"
        note = " ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in t.params.items()
        )
        if t.user_attrs.get("baseline"):
            note += "  [baseline: the run config's own values]"
        if "seed_values" in t.user_attrs:
            note += (
                "  [per seed: " + " ".join(f"{v:.4f}" for v in t.user_attrs["seed_values"]) + "]"
            )
        for key in ("duplicate_of", "failure"):
            if key in t.user_attrs:
                note += f"  [{key}: {str(t.user_attrs[key])[:60]}]"
        rows.append(
            (
                str(t.number),
                t.state.name.lower(),
                value,
                str(t.user_attrs.get("steps_trained", "-")),
                str(t.user_attrs.get("seconds", "-")),
                note,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
        for r in rows
    )


def _status(args: argparse.Namespace) -> int:
    from sweeps.config import load_sweep
    from sweeps.driver import summarize
    from sweeps.study import open_storage, open_study

    sweep = load_sweep(args.name, args.overrides)
    storage = open_storage(sweep)
    try:
        study = open_study(sweep, storage)
    except KeyError:
        print(f"no sweep {sweep.sweep_id} in {sweep.storage} yet", file=sys.stderr)
        return 2
    trials = study.get_trials(deepcopy=False)
    print(trial_table(sweep, trials))
    started = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    # until now while trials run; a finished sweep's wall time ends at its last trial
    ended = [t.datetime_complete for t in trials if t.datetime_complete]
    running = any(t.datetime_complete is None for t in trials)
    end = time.time() if running or not ended else max(ended).timestamp()
    wall = 0.0 if started is None else end - started.timestamp()
    _print_summary(sweep, summarize(sweep, trials, wall))
    return 0


def _export(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from sweeps.config import load_sweep
    from sweeps.driver import summarize
    from sweeps.export import export_best
    from sweeps.study import open_storage, open_study

    sweep = load_sweep(args.name, args.overrides)
    try:
        study = open_study(sweep, open_storage(sweep))
    except KeyError as exc:  # as in `sweeps status`
        raise ConfigError(f"no sweep {sweep.sweep_id} in {sweep.storage}: run it first") from exc
    summary = summarize(sweep, study.get_trials(deepcopy=False), 0.0)
    if summary.best_trial is None:
        raise ConfigError(f"sweep {sweep.sweep_id} has no complete trial to export yet")
    path, others = export_best(sweep, summary)
    print(path)
    if others:
        print("also pass: " + " ".join(others))
    return 0


def _list(args: argparse.Namespace) -> int:
    from sweeps.config import sweep_names

    print("\n".join(sweep_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    flags = verbosity_flags()
    parser = OneLineParser(
        prog="python -m sweeps", description=__doc__.split("\n")[0], parents=[flags]
    )
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser(
        "run", help="run (or resume) a sweep: validate, dispatch, wait, export", parents=[flags]
    )
    p.add_argument("name", help="a sweep of conf/sweep/ (`list` names them), or a .yaml path")
    p.add_argument("overrides", nargs="*", help="sweep settings and per-run overrides")
    p.add_argument("--no-wait", action="store_true", help="dispatch the first trials and return")
    p.add_argument("--no-export", action="store_true", help="do not write the tuned model file")
    p.set_defaults(func=_run)
    for name, func, text in (
        ("status", _status, "the trials of a sweep so far"),
        ("export", _export, "write the best trial's model config"),
    ):
        p = sub.add_parser(name, help=text, parents=[flags])
        p.add_argument("name")
        p.add_argument("overrides", nargs="*", help="the same overrides as the run (profile=…)")
        p.set_defaults(func=func)
    p = sub.add_parser("list", help="the sweep files", parents=[flags])
    p.set_defaults(func=_list)
    return parser


if __name__ == "__main__":
    sys.exit(main())
