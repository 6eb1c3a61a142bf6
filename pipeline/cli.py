"""One clear line for every error a user can cause, on every entry point.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return guarded(lambda: body(args), debug=args.debug)

``guarded`` runs the body and turns an exception into one line on stderr (``error: …``, the
exception's type where it is not a config error) and an exit status: 2 for a configuration or
input error, 1 for anything else, 130 for Ctrl-C. The traceback is shown instead with
``--debug`` or ``HYDRA_FULL_ERROR=1`` (Hydra's own switch, which its users already know).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

DEBUG_HINT = "--debug or HYDRA_FULL_ERROR=1 shows the traceback"
# Errors a user causes with a bad value, path or file: exit 2 and no exception type in the line.
# (ConfigError is matched by name: importing pipeline.config would load Hydra and torch into
# every command, analysis's included.)
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
# pipeline.config.ConfigError, psalm.data's DataError, a study or sweep file's YAML error
_INPUT_ERROR_NAMES = {"ConfigError", "DataError", "YAMLError"}


def is_input_error(exc: BaseException) -> bool:
    """A configuration or input error (``pipeline.config.ConfigError``, a missing file)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & _INPUT_ERROR_NAMES) or isinstance(exc, INPUT_ERRORS)


def debug_requested(flag: bool = False) -> bool:
    """Whether tracebacks are wanted: ``--debug`` or ``HYDRA_FULL_ERROR=1``."""
    return flag or os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(exc: BaseException, limit: int = 600) -> str:
    """The exception's message on one line (lists of problems joined with '; ')."""
    lines = [line.strip().lstrip("- ").strip() for line in str(exc).splitlines()]
    text = "; ".join(line for line in lines if line).replace(":;", ":")
    if not text:
        text = type(exc).__name__
    elif not is_input_error(exc) and not isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def guarded(body: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``body``; its return value (None: 0) or one error line and a non-zero status.
    SIGTERM and SIGHUP stop it as Ctrl-C does (one line, status 130, the command's own clean-up),
    also before it has started anything."""
    from pipeline.processes import termination_as_interrupt

    with termination_as_interrupt():
        return _guarded(body, debug)


def _guarded(body: Callable[[], int | None], debug: bool) -> int:
    if debug_requested(debug):
        return body() or 0
    try:
        return body() or 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        code = 2 if is_input_error(exc) else 1
        print(f"error: {one_line(exc)} ({DEBUG_HINT})", file=sys.stderr, flush=True)
        return code


class OneLineParser(argparse.ArgumentParser):
    """argparse with one error line (not the usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")
