"""Evaluate a trained run's checkpoint in a support mode, as its own MLflow run.

    python -m psalm.evaluate mode=none model=psalm profile=default seed=0
    python -m psalm.evaluate mode=shuffled model=cheaf profile=default seed=1

The overrides are those the run was trained with (they identify it); ``mode`` is ``normal``,
``none`` (``support_features=None`` in the fusion module: the report's test 3) or ``shuffled``
(another class's supports: a control). The trained run must be FINISHED.
"""

from __future__ import annotations

import sys

from psalm.training import EVAL_MODES


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    modes = [a.split("=", 1)[1] for a in args if a.startswith("mode=")]
    rest = tuple(a for a in args if not a.startswith("mode="))
    mode = modes[-1] if modes else "none"
    if mode not in EVAL_MODES:
        sys.exit(f"error: mode={mode!r} is not one of {', '.join(EVAL_MODES)}")
    from pipeline.run import evaluate_run

    metrics = evaluate_run(rest, mode)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()
