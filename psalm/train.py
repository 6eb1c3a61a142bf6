"""``python -m psalm.train``: an alias of ``psalm-train``, whose body is in ``pipeline.commands``.

    python -m psalm.train model=psalm data=synthetic profile=smoke seed=0

This module and ``psalm/evaluate.py`` are the only ones under ``psalm/`` that import the pipeline:
the command ``python -m psalm.train`` needs a module of that name, and the library never imports
them (``tests/test_import_rules.py`` checks both).
"""

from __future__ import annotations

import sys

from pipeline.commands import train_main


def main(argv: list[str] | None = None) -> int:
    """``psalm-train`` under its ``python -m`` name."""
    return train_main(argv, prog="python -m psalm.train")


if __name__ == "__main__":
    sys.exit(main())
