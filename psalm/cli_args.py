"""argparse pieces shared by the library's commands (``python -m psalm.benchmark``) and the
pipeline's (``pipeline.cli`` re-exports them): a parser whose errors are one line, and a type
for counts. No torch here, so that ``--help`` and usage errors answer at once."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse with one error line (not the usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count: an integer >= 1, else a one-line usage error."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for a size or seed: an integer >= 0, else a one-line usage error."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}")
    return value
