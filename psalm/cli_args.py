"""argparse pieces shared by the library's commands (``python -m psalm.benchmark``) and the
pipeline's (``pipeline.cli`` re-exports them): a parser whose errors are one line, and a type
for counts. No torch here, so that ``--help`` and usage errors answer at once."""

from __future__ import annotations

import argparse
from pathlib import Path
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


def output_file_problem(flag: str, path: Path, example: str) -> str | None:
    """What is wrong with ``path`` as a file a command will write when it is done (a folder, or
    a folder that cannot be made: the folder is made now), or None; found before minutes of
    work, not after."""
    if path.is_dir():
        return f"{flag} {path} is a folder; give a file such as {path / example}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{flag} {path}: cannot create its folder ({exc.strerror or exc})"
    return None
