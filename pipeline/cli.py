"""One clear line for every error a user can cause, on every entry point.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return guarded(lambda: body(args), debug=debug_flag(args))

``guarded`` runs the body and turns an exception into one line on stderr (``error: …``, the
exception's type where it is not a config error) and an exit status: 2 for a configuration or
input error, 1 for anything else, 130 for Ctrl-C. The traceback is shown instead with
``--debug`` or ``HYDRA_FULL_ERROR=1`` (Hydra's own switch, which its users already know).

Output: what a user asked for (tables, verdicts, paths) is printed on stdout; progress and
diagnostics are logged (``logging``) to stderr. ``verbosity_flags()`` gives a command and its
subcommands ``-v`` (debug messages too), ``-q`` (warnings and errors only, no progress) and
``--debug``; ``setup_logging(log_level(args))`` applies the first two to the project's loggers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

# re-exported: the pipeline's commands take them from here (psalm.benchmark from psalm.cli_args)
from psalm.cli_args import OneLineParser as OneLineParser
from psalm.cli_args import positive_int as positive_int

DEBUG_HINT = "--debug or HYDRA_FULL_ERROR=1 shows the traceback"
# Errors a user causes with a bad value, path or file: exit 2 and no exception type in the line.
# (ConfigError is matched by name: importing pipeline.config would load Hydra and torch into
# every command, analysis's included.)
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
# pipeline.config.ConfigError, psalm.data's DataError, a study or sweep file's YAML error
_INPUT_ERROR_NAMES = {"ConfigError", "DataError", "YAMLError"}
# The loggers that -v / -q set; other libraries' stay at WARNING.
PACKAGES = ("pipeline", "psalm", "ablations", "sweeps", "analysis")


def is_input_error(exc: BaseException) -> bool:
    """A configuration or input error (``pipeline.config.ConfigError``, a missing file)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & _INPUT_ERROR_NAMES) or isinstance(exc, INPUT_ERRORS)


def debug_requested(flag: bool = False) -> bool:
    """Whether tracebacks are wanted: ``--debug`` or ``HYDRA_FULL_ERROR=1``."""
    return flag or os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(exc: BaseException, limit: int = 600, *, input_error: bool = False) -> str:
    """The exception's message on one line (lists of problems joined with '; '), after its type
    unless it is an input error (``is_input_error``, or ``input_error=True`` from a caller that
    knows)."""
    lines = [line.strip().lstrip("- ").strip() for line in str(exc).splitlines()]
    text = "; ".join(line for line in lines if line).replace(":;", ":")
    if not text:
        text = type(exc).__name__
    elif not (input_error or is_input_error(exc) or isinstance(exc, OSError)):
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


def verbosity_flags() -> argparse.ArgumentParser:
    """A parent parser with ``-v/--verbose``, ``-q/--quiet`` and ``--debug``, for a command and
    each of its subcommands (``parents=[verbosity_flags()]``), so either place takes them. Read
    ``--debug`` with ``debug_flag(args)``."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    group = flags.add_mutually_exclusive_group()
    # SUPPRESS: a subcommand's unset flag must not reset the one given before it
    group.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="also debug messages"
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=argparse.SUPPRESS,
        help="only warnings and errors (no progress)",
    )
    return flags


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args``, except that a subcommand's overrides (``key=value`` words, in
    ``args.overrides``) may also follow its flags: ``ablations run pyramid -v seeds=[0]``.
    (argparse's ``parse_intermixed_args`` does this for a parser without subcommands.)"""
    args, extra = parser.parse_known_args(argv)
    stray = extra if not hasattr(args, "overrides") else [w for w in extra if w.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def debug_flag(args: argparse.Namespace) -> bool:
    """Whether ``--debug`` was given (before or after the subcommand)."""
    return bool(getattr(args, "debug", False))


def log_level(args: argparse.Namespace) -> int:
    """INFO, DEBUG with -v, WARNING with -q (ERROR with -qq)."""
    level = logging.INFO - 10 * getattr(args, "verbose", 0) + 10 * getattr(args, "quiet", 0)
    return min(max(level, logging.DEBUG), logging.ERROR)


class _Formatter(logging.Formatter):
    """INFO and DEBUG as the bare message; warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, so that redirections (and pytest) see the lines."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Log the project's messages at ``level`` and above to stderr (idempotent)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
