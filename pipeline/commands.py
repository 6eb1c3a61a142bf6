"""The single-run commands: train one run, or evaluate a trained one, recorded in MLflow.

    psalm-train model=psalm data=synthetic profile=smoke seed=0
    psalm-train model=cheaf model.use_pyramid_refinement=false profile=default
    psalm-evaluate mode=none model=psalm profile=default seed=0
    psalm-evaluate mode=shuffled model=cheaf profile=default seed=1

``python -m psalm.train`` and ``python -m psalm.evaluate`` are aliases of the same functions
(``make train`` / ``make evaluate`` use them). The arguments are Hydra overrides of
``conf/config.yaml``, composed by ``pipeline.config`` (the same composition as a study's cells);
training is ``pipeline.run.run`` of the validated spec, evaluation ``pipeline.run.evaluate_run``.
A bad override, value or data file is one line on stderr and exit status 2 (``--debug`` or
``HYDRA_FULL_ERROR=1``: the traceback). Hydra, torch and MLflow are imported only once the
arguments are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli import (
    OneLineParser,
    debug_flag,
    guarded,
    log_level,
    setup_logging,
    verbosity_flags,
)

_OVERRIDES_HELP = (
    "Hydra overrides of conf/config.yaml, e.g. model=cheaf seed=1 profile=smoke "
    "model.use_pyramid=false (groups: model, data, train, launcher, profile)"
)


def train_main(argv: Sequence[str] | None = None, prog: str = "psalm-train") -> int:
    """Train one run (``psalm-train``); the exit status."""
    parser = train_parser(prog)
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging(log_level(args))

    def body() -> int:
        apply_job_defaults()  # as a dispatched job gets them, before torch allocates anything
        from pipeline.config import make_spec
        from pipeline.run import check_spec, run

        spec = make_spec(tuple(args.overrides))
        check_spec(spec)
        _print_metrics(run(spec))
        return 0

    return guarded(body, debug=debug_flag(args))


def evaluate_main(argv: Sequence[str] | None = None, prog: str = "psalm-evaluate") -> int:
    """Evaluate a trained run's checkpoint in a support mode (``psalm-evaluate``); the exit
    status."""
    parser = evaluate_parser(prog)
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging(log_level(args))
    modes = [a.split("=", 1)[1] for a in args.overrides if a.startswith("mode=")]
    rest = tuple(a for a in args.overrides if not a.startswith("mode="))
    mode = modes[-1] if modes else "none"

    def body() -> int:
        apply_job_defaults()
        from pipeline.config import ConfigError
        from pipeline.run import evaluate_run
        from psalm.options import EVAL_MODES

        if len(set(modes)) > 1:  # one evaluation a command: a second mode= is a mistake
            raise ConfigError(
                f"mode= given {len(modes)} times ({', '.join(modes)}); evaluate one mode a "
                "command, or train with eval.modes=[…] to log several"
            )
        if mode not in EVAL_MODES:
            raise ConfigError(f"mode={mode!r} is not one of {', '.join(EVAL_MODES)}")
        _print_metrics(evaluate_run(rest, mode))
        return 0

    return guarded(body, debug=debug_flag(args))


def apply_job_defaults() -> None:
    """Give this process the environment a dispatched job gets (``JOB_DEFAULTS``: huge pages for
    PyTorch's large CPU buffers), where it is not set. torch reads it at its first allocation, so
    this must run before torch is imported; later it changes nothing."""
    import os

    from pipeline.dispatch.launcher import job_defaults

    if "torch" not in sys.modules:
        os.environ.update(job_defaults())


def train_parser(prog: str = "psalm-train") -> argparse.ArgumentParser:
    """The arguments of ``psalm-train``."""
    return _parser(prog, "Train one run and record it in MLflow.")


def evaluate_parser(prog: str = "psalm-evaluate") -> argparse.ArgumentParser:
    """The arguments of ``psalm-evaluate``."""
    parser = _parser(
        prog,
        "Evaluate a trained run's checkpoint in a support mode, as its own MLflow run. The "
        "overrides are those the run was trained with (they identify it); it must be FINISHED.",
    )
    parser.epilog = (
        "mode=normal | none (support_features=None in the fusion module: the report's test 3; "
        "the default) | shuffled (another class's supports: a control)"
    )
    return parser


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=description, parents=[verbosity_flags()])
    parser.add_argument("overrides", nargs="*", metavar="override", help=_OVERRIDES_HELP)
    return parser


def _print_metrics(metrics: dict) -> None:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
