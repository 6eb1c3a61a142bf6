"""Evaluate a trained run's checkpoint in a support mode, as its own MLflow run.

    python -m psalm.evaluate mode=none model=psalm profile=default seed=0
    python -m psalm.evaluate mode=shuffled model=cheaf profile=default seed=1

The overrides are those the run was trained with (they identify it); ``mode`` is ``normal``,
``none`` (``support_features=None`` in the fusion module: the report's test 3) or ``shuffled``
(another class's supports: a control). The trained run must be FINISHED. Errors are one line
and exit status 2 (``--debug`` or ``HYDRA_FULL_ERROR=1``: the traceback).
"""

from __future__ import annotations

import sys

from psalm.training import EVAL_MODES


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    modes = [a.split("=", 1)[1] for a in args if a.startswith("mode=")]
    rest = tuple(a for a in args if not a.startswith("mode="))
    mode = modes[-1] if modes else "none"

    def body() -> int:
        from pipeline.config import ConfigError
        from pipeline.run import evaluate_run

        if mode not in EVAL_MODES:
            raise ConfigError(f"mode={mode!r} is not one of {', '.join(EVAL_MODES)}")
        metrics = evaluate_run(rest, mode)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        return 0

    from pipeline.cli import guarded

    return guarded(body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
