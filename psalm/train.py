"""Train one run and record it in MLflow.

    python -m psalm.train model=psalm data=synthetic profile=smoke seed=0
    python -m psalm.train model=cheaf model.use_pyramid_refinement=false profile=default

The arguments are Hydra overrides of ``conf/config.yaml``, composed by ``pipeline.config`` (the
same composition as a study's cells); the body is ``pipeline.run.train``. This file and
``psalm/evaluate.py`` are the only places under ``psalm/`` that reach the pipeline, because they
are command-line entry points, not library code. A bad override, value or data file is one line
on stderr and exit status 2 (``--debug`` or ``HYDRA_FULL_ERROR=1``: the traceback).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    overrides = tuple(a for a in args if a != "--debug")

    def body() -> int:
        from pipeline.config import make_spec
        from pipeline.run import check_spec, run

        spec = make_spec(overrides)
        check_spec(spec)
        metrics = run(spec)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        return 0

    from pipeline.cli import guarded

    return guarded(body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
