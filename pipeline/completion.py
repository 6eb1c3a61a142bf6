"""Tab completion of the commands (``psalm-ablations``, ``psalm-sweeps``, ``psalm-analysis``,
``psalm-train``, ``psalm-evaluate``): the shell script, generated from their argparse parsers by
shtab, so it never runs Python while completing.

    make completion >> ~/.bash_completion                   # bash, from the next shell on
    eval "$(python -m pipeline.completion bash)"             # bash, this shell only
    eval "$(python -m pipeline.completion zsh)"              # zsh, in ~/.zshrc after compinit

The ``python -m ablations`` forms are the same commands without completion.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

SHELLS = ("bash", "zsh")


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Console script -> its parser (building one imports no heavy package)."""
    from ablations.__main__ import build_parser as ablations
    from analysis.__main__ import build_parser as analysis
    from pipeline.commands import evaluate_parser, train_parser
    from sweeps.__main__ import build_parser as sweeps

    return {
        "psalm-ablations": ablations,
        "psalm-sweeps": sweeps,
        "psalm-analysis": analysis,
        "psalm-train": train_parser,
        "psalm-evaluate": evaluate_parser,
    }


def completion_script(shell: str) -> str:
    """The completion script of every command for ``shell`` (bash or zsh)."""
    import shtab

    scripts = []
    for name, build in _parsers().items():
        parser = build()
        parser.prog = name  # the name the shell completes, not "python -m …"
        scripts.append(shtab.complete(parser, shell=shell))
    return "\n".join(scripts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.completion", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("shell", nargs="?", choices=SHELLS, default="bash")
    args = parser.parse_args(argv)
    sys.stdout.write(completion_script(args.shell))
    return 0


if __name__ == "__main__":
    sys.exit(main())
