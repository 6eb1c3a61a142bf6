"""The documentation the code cites is in the repository: ``docs/design.md`` (architecture and
contracts) and ``docs/results.md`` (measurements); the README starts with what a user needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    suffixes = {".py", ".md", ".yaml", ".toml", ".sh", ".ipynb"}
    return [REPO / n for n in names if Path(n).suffix in suffixes or n == "Makefile"]


def test_no_file_cites_documents_outside_the_repository() -> None:
    bad = []
    for path in _tracked_text_files():
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bDESIGN\.md\b|\.\./shared\b", line):
                bad.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert not bad, "cite docs/design.md (or docs/results.md) instead:\n" + "\n".join(bad)


def test_every_cited_docs_file_exists() -> None:
    cited = set()
    for path in _tracked_text_files():
        if path.is_file():
            cited |= set(re.findall(r"docs/[\w./-]+\.md", path.read_text(encoding="utf-8")))
    assert {"docs/design.md", "docs/results.md"} <= cited
    missing = sorted(c for c in cited if not (REPO / c).is_file())
    assert not missing, missing


def test_readme_starts_with_install_commands_and_reading_results() -> None:
    headings = re.findall(r"^## (.+)$", (REPO / "README.md").read_text(), re.MULTILINE)
    assert headings[:3] == ["Install", "Two commands", "Reading the results"], headings
