"""``pipeline.progress``: a tqdm bar on a terminal, throttled plain lines in logs, an ETA over
parallel slots; and the ``-v`` / ``-q`` flags every command shares (``pipeline.cli``)."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline.cli import PACKAGES, OneLineParser, log_level, setup_logging, verbosity_flags
from pipeline.progress import Progress, estimate_remaining_s, format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="pipeline")
    return caplog


def test_eta_fills_the_slot_that_frees_first_and_charges_start_up() -> None:
    # 3 jobs of 10 s on 2 idle slots: two at once, then the third
    assert estimate_remaining_s(10.0, [], queued=3, slots=2) == 20.0
    assert estimate_remaining_s(10.0, [], queued=3, slots=2, startup_s=5.0) == 30.0
    assert estimate_remaining_s(10.0, [4.0, 8.0], queued=0, slots=2) == 6.0
    assert format_duration(65) == "1m05s" and format_duration(None) == "-"


def test_plain_lines_when_the_text_changes_not_on_every_poll(info_logs) -> None:
    progress = Progress("batch", total=4, unit="job", stream=io.StringIO())
    for _ in range(3):
        progress.update(0, "0/4 done, 4 queued")
    progress.update(1, "1/4 done, 3 queued", eta_s=30.0)
    lines = [r.getMessage() for r in info_logs.records]
    assert lines == ["[batch] 0/4 done, 4 queued", "[batch] 1/4 done, 3 queued · ETA 30s"]


def test_step_lines_every_tenth_when_the_text_always_changes(info_logs) -> None:
    progress = Progress("run", total=100, unit="step", stream=io.StringIO(), on_change=False)
    for step in range(1, 101):
        progress.update(step, f"step {step}/100 loss {1 / step:.3f}")
    steps = [r.getMessage().split()[2] for r in info_logs.records]
    assert steps == ["1/100", *(f"{k}/100" for k in range(10, 101, 10))]


def test_a_terminal_gets_a_bar_and_quiet_gets_nothing(info_logs) -> None:
    screen = Terminal()
    progress = Progress("batch", total=2, unit="job", stream=screen)
    progress.update(1, "1/2 done, 1 running", eta_s=5.0)
    progress.close()
    assert "1/2 jobs" in screen.getvalue() and "ETA 5s" in screen.getvalue()
    assert not info_logs.records  # the bar replaces the lines

    logging.getLogger("pipeline").setLevel(logging.WARNING)  # what -q sets
    screen = Terminal()
    progress = Progress("batch", total=2, stream=screen)
    progress.update(1, "1/2 done")
    progress.write("a line")
    progress.close()
    assert screen.getvalue() == ""


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["run"], logging.INFO),
        (["-q", "run"], logging.WARNING),
        (["run", "-q"], logging.WARNING),
        (["run", "-v"], logging.DEBUG),
        (["-v", "run"], logging.DEBUG),
    ],
)
def test_verbosity_flags_work_before_and_after_the_subcommand(argv, level) -> None:
    flags = verbosity_flags()
    parser = OneLineParser(prog="tool", parents=[flags])
    parser.add_subparsers().add_parser("run", parents=[flags])
    assert log_level(parser.parse_args(argv)) == level


def test_setup_logging_sends_the_project_loggers_to_stderr(capsys) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    setup_logging(logging.WARNING)
    try:
        logging.getLogger("pipeline.x").info("chatter")
        logging.getLogger("ablations").warning("careful")
        assert capsys.readouterr().err == "warning: careful\n"
    finally:
        for handler in set(root.handlers) - set(before):
            root.removeHandler(handler)
        for name in PACKAGES:
            logging.getLogger(name).setLevel(logging.NOTSET)
