"""``make test-fast``: the tests that need no service and take seconds. Its marker expression
leaves out every test that needs SLURM, PostgreSQL or a browser, and the markers follow the
fixtures, so a new test that asks for a cluster is left out without anyone remembering."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import MARKER_OF_FIXTURE

REPO = Path(__file__).resolve().parents[1]
SERVICE_MARKERS = {"slow", "slurm", "browser", "postgres", "soak"}


def _fast_expression() -> str:
    match = re.search(r"^FAST_TESTS := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile defines FAST_TESTS, the marker expression of make test-fast"
    return match.group(1).strip()


def test_test_fast_leaves_out_every_service_and_slow_marker(pytestconfig: pytest.Config) -> None:
    expression = _fast_expression()
    left_out = set(re.findall(r"not (\w+)", expression))
    assert left_out == SERVICE_MARKERS
    registered = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert SERVICE_MARKERS <= registered


def test_tests_that_use_a_service_fixture_carry_its_marker(request: pytest.FixtureRequest) -> None:
    items = request.session.items  # the tests of this session (all of them under `make test`)
    for item in items:
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                assert item.get_closest_marker(marker), f"{item.nodeid} uses {fixture}"
    browser = [i for i in items if "chromium" in i.name]
    assert all(i.get_closest_marker("browser") for i in browser), browser


def test_make_help_lists_test_fast() -> None:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True).stdout
    assert re.search(r"^  test-fast ", out, re.MULTILINE), out
