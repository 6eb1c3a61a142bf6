"""``python -m psalm.evaluate``: an alias of ``psalm-evaluate``, whose body is in
``pipeline.commands``.

    python -m psalm.evaluate mode=none model=psalm profile=default seed=0

This module and ``psalm/train.py`` are the only ones under ``psalm/`` that import the pipeline:
the command ``python -m psalm.evaluate`` needs a module of that name, and the library never
imports them (``tests/test_import_rules.py`` checks both).
"""

from __future__ import annotations

import sys

from pipeline.commands import evaluate_main


def main(argv: list[str] | None = None) -> int:
    """``psalm-evaluate`` under its ``python -m`` name."""
    return evaluate_main(argv, prog="python -m psalm.evaluate")


if __name__ == "__main__":
    sys.exit(main())
