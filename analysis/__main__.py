"""Command line of the analysis: verdict tables, dashboards and study comparisons.

Run from the repository root (the store defaults to ``sqlite:///mlflow.db`` there, overridden by
``$MLFLOW_TRACKING_URI`` or ``--tracking-uri``):

    python -m analysis verdicts <study> [--format table|json] [--metric test/nAP50]
    python -m analysis report <study> [--out reports] [--ui-url http://127.0.0.1:5000]
    python -m analysis compare <study A> <study B> [--alpha 0.05]
    python -m analysis notebook <study> [--out reports]
    python -m analysis studies

``report`` and ``compare`` print the path of the HTML page they wrote; ``report`` also writes the
verdict table and delta plots to the study's parent run in MLflow (``--no-mlflow`` skips it).
``notebook`` runs analysis/notebooks/ablation_report.ipynb with papermill and prints the paths
of the executed notebook and its HTML copy (beside the dashboard).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import (
    DEBUG_HINT,
    OneLineParser,
    debug_flag,
    debug_requested,
    log_level,
    one_line,
    setup_logging,
    verbosity_flags,
)

if TYPE_CHECKING:
    import pandas as pd

    from analysis.study import StudyAnalysis

log = logging.getLogger("analysis")

# pandas, MLflow and matplotlib are imported inside the commands that use them, so that `--help`
# and argument errors answer at once. The defaults below are those of analysis.dashboard,
# analysis.claims and analysis.deltas (None here: filled in by the command).


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a usage or data error, told on stderr)."""
    args = build_parser().parse_args(argv)
    setup_logging(log_level(args))
    try:
        return args.command(args)
    except (
        LookupError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
    ) as err:  # a bad study, metric, file or --out: the user's to fix
        if debug_requested(debug_flag(args)):
            raise
        print(f"error: {one_line(err, input_error=True)}", file=sys.stderr)
        return 2
    except Exception as err:  # anything else, e.g. an unreachable tracking server: one line too
        if debug_requested(debug_flag(args)):
            raise
        print(f"error: {one_line(err)} ({DEBUG_HINT})", file=sys.stderr)
        return 1


def _verdicts(args: argparse.Namespace) -> int:
    from analysis.verdicts import VERDICT_COLUMNS, format_verdicts

    analysis = _analyze(args, args.study)
    if args.format == "json":
        print(json.dumps(to_records(analysis.verdicts[VERDICT_COLUMNS]), indent=2))
        _warn_excluded(analysis, sys.stderr)
    else:
        print(format_verdicts(analysis.verdicts))
        _warn_excluded(analysis, sys.stdout)
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.claims import DEFAULT_BENCHMARK
    from analysis.dashboard import write_dashboard

    if args.benchmark is not None and not Path(args.benchmark).is_file():
        raise FileNotFoundError(
            f"no benchmark file at {args.benchmark} (--benchmark; make benchmark writes one)"
        )
    out = _out_dir(args)  # before the study's parent run is written to
    analysis = _analyze(args, args.study)
    _warn_excluded(analysis, sys.stderr)
    if args.mlflow:
        from analysis.study_run import publish_study

        run_id = publish_study(analysis)
        print(
            f"MLflow: verdict table and plots in the study's parent run {run_id}", file=sys.stderr
        )
    benchmark = DEFAULT_BENCHMARK if args.benchmark is None else args.benchmark
    print(write_dashboard(analysis, out, args.ui_url, benchmark))
    return 0


def _notebook(args: argparse.Namespace) -> int:
    from analysis.notebook import run_notebook

    out = _out_dir(args)
    _analyze(args, args.study)  # an unknown study or metric: one line, before a kernel starts
    notebook, page = run_notebook(
        args.study,
        out,
        args.tracking_uri,
        args.metric,
        expectations=args.expectations,
        interval=args.interval,
    )
    print(notebook)
    print(page)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from analysis.compare import (
        compare_studies,
        format_comparison,
        same_study_warning,
        write_comparison,
    )

    out = _out_dir(args)
    a, b = _analyze(args, args.study_a), _analyze(args, args.study_b)
    warning = same_study_warning(a, b)
    if warning:
        log.warning(warning)
    table = compare_studies(a, b, args.alpha)
    if args.format == "json":
        print(json.dumps(to_records(table), indent=2))
    else:
        print(format_comparison(table))
    # JSON mode keeps stdout machine-readable: the page's path goes to stderr.
    path = write_comparison(a, b, out, args.alpha)
    print(path, file=sys.stderr if args.format == "json" else sys.stdout)
    return 0


def _web_address(text: str) -> str:
    """``--ui-url``: an http(s) address, which the dashboard's links start with."""
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"must be an http(s):// address, got {text!r}")
    return text


def _out_dir(args: argparse.Namespace) -> Path:
    """``--out`` (default ``reports/``): a folder, or one that can be made there; checked before
    any work, so that a file in the way does not fail the command after it wrote to MLflow."""
    from analysis.dashboard import DEFAULT_REPORTS

    out = Path(DEFAULT_REPORTS if args.out is None else args.out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"the --out folder {out}: {existing} is a file, not a folder")
    return out


def _studies(args: argparse.Namespace) -> int:
    from analysis.runs import list_studies

    studies = list_studies(args.tracking_uri)
    for study in studies:
        print(study)
    if not studies:
        print("(no studies in the store: run one, e.g. make ablation-pyramid)", file=sys.stderr)
    return 0


def to_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN -> null, numpy scalars -> Python numbers."""
    records = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, tuple):
                value = list(value)
            clean[key] = value
        records.append(clean)
    return records


def _analyze(args: argparse.Namespace, study: str) -> StudyAnalysis:
    from analysis.study import analyze_study

    return analyze_study(study, args.tracking_uri, args.metric, args.expectations, args.interval)


def _warn_excluded(analysis: StudyAnalysis, stream) -> None:
    import pandas as pd

    machines = machine_mix(analysis.runs)
    if machines:
        print(f"\nnote: {machines}", file=stream)
    excluded = analysis.deltas.excluded
    if excluded.empty:
        return
    print(f"\n{len(excluded)} run(s) not averaged in:", file=stream)
    for row in excluded.itertuples():
        seed = "-" if pd.isna(row.seed) else row.seed
        print(
            f"  {row.run_name or row.run_id} ({row.model}/{row.ablation}/{row.arm}, seed {seed}): "
            f"{row.reason}",
            file=stream,
        )


def machine_mix(runs: pd.DataFrame) -> str:
    """A sentence when the study's runs were computed on more than one kind of machine
    (instruction set, device, torch: the tags ``pipeline.run.machine_tags`` sets); else "".
    Training is deterministic on one kind only, so a seed's arms trained on two kinds differ by
    more than the ablation (about as much as two seeds do)."""
    keys = [f"tags.machine.{k}" for k in ("isa", "device", "torch")]
    if not set(keys) <= set(runs.columns):
        return ""
    kinds = runs[keys].dropna().astype(str).agg(" / ".join, axis=1).value_counts()
    if len(kinds) < 2:
        return ""
    listed = ", ".join(f"{kind} ({count} run{'s' * (count != 1)})" for kind, count in kinds.items())
    return (
        f"the runs were computed on {len(kinds)} kinds of machine: {listed}; a seed's arms "
        "are paired bit for bit only on one kind (tags machine.*)"
    )


def _level(text: str) -> float:
    """argparse ``type=`` for a test's level: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    flags = verbosity_flags()
    parser = OneLineParser(
        prog="python -m analysis", description=__doc__.split("\n\n")[0], parents=[flags]
    )
    commands = parser.add_subparsers(required=True, metavar="command")
    common = argparse.ArgumentParser(add_help=False, parents=[flags])
    common.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    common.add_argument(
        "--metric", help="metric to judge, e.g. test/nAP (default: conf/expectations.yaml's)"
    )
    common.add_argument("--expectations", help="default: conf/expectations.yaml")
    common.add_argument(
        "--interval",
        default="t",
        help="confidence interval over per-seed deltas (analysis.deltas.INTERVALS): t = Student t "
        "(default), normal = TFA's z, anytime = anytime-valid confidence sequence",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--format", choices=["table", "json"], default="table")
    pages = argparse.ArgumentParser(add_help=False)
    pages.add_argument("--out", help="folder of the pages (default: reports)")

    sub = commands.add_parser("verdicts", parents=[common, output], help="print the verdict table")
    sub.add_argument("study")
    sub.set_defaults(command=_verdicts)

    sub = commands.add_parser("report", parents=[common, pages], help="write the HTML dashboard")
    sub.add_argument("study")
    sub.add_argument(
        "--ui-url",
        type=_web_address,
        help="MLflow UI the run links point to (default: $MLFLOW_UI_URL or http://127.0.0.1:5000)",
    )
    sub.add_argument("--benchmark", help="make benchmark's JSON (default: reports/benchmark.json)")
    sub.add_argument(
        "--no-mlflow",
        dest="mlflow",
        action="store_false",
        help="do not write the verdict table and plots to the study's parent run in MLflow",
    )
    sub.set_defaults(command=_report)

    sub = commands.add_parser(
        "notebook", parents=[common, pages], help="run the ablation notebook for a study"
    )
    sub.add_argument("study")
    sub.set_defaults(command=_notebook)

    sub = commands.add_parser(
        "compare", parents=[common, output, pages], help="compare the deltas of two studies"
    )
    sub.add_argument("study_a")
    sub.add_argument("study_b")
    sub.add_argument(
        "--alpha", type=_level, default=0.05, help="Welch t-test level for 'moved' (0 < alpha < 1)"
    )
    sub.set_defaults(command=_compare)

    sub = commands.add_parser("studies", parents=[common], help="list the studies in the store")
    sub.set_defaults(command=_studies)
    return parser


if __name__ == "__main__":
    sys.exit(main())
