"""The Makefile's analysis targets: report / notebook / compare, as a user types them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from _analysis_fixtures import planted_store

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    if shutil.which("make") is None or not (REPO / ".venv" / ".installed").is_file():
        pytest.skip("needs make and the project's .venv (make setup)")
    # as a user types it: not as a sub-make of `make test ARGS=…`, whose MAKEFLAGS and exported
    # ARGS would reach these targets (CI runs `make test ARGS=--durations=15`)
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "STUDY", "A", "B")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    env["MLFLOW_TRACKING_URI"] = planted_store()
    return subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a loaded 2-core machine took minutes just to import the analysis
    )


def test_help_lists_the_notebook_target():
    if shutil.which("make") is None:
        pytest.skip("needs make")
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True).stdout
    assert "notebook" in out and "report" in out and "compare" in out


@pytest.mark.slow
def test_report_without_study_lists_the_studies_in_the_store(tmp_path):
    result = _make("report", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "set STUDY" in result.stderr and "pyramid" not in result.stderr.split("e.g.")[0]
    assert result.stdout.split() == ["gated", "planted", "planted_b", "shared", "tiny-smoke"]


@pytest.mark.slow
def test_study_names_are_quoted_for_the_shell(tmp_path):
    result = _make("report", "STUDY=it's (odd)", f"ARGS=--out {tmp_path}", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "syntax error" not in result.stderr
    assert 'no runs tagged study="it\'s (odd)"' in result.stderr


@pytest.mark.parametrize(
    ("target", "variable"),
    [("ablation-status", "STUDY"), ("ablation-cancel", "STUDY"), ("sweep-status", "MODEL")],
)
def test_the_study_and_sweep_targets_quote_their_names_too(target, variable, tmp_path):
    """They put the name into the shell as it was: ``STUDY="x; echo …"`` ran the second
    command."""
    marker = tmp_path / "ran"
    result = _make(target, f"{variable}=x; touch {marker}", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert "x; touch" in result.stderr  # the name reached the command whole


def test_a_sweep_without_a_model_says_so(tmp_path):
    result = _make("sweep", "MODEL=", "PROFILE=smoke", tmp_path=tmp_path)
    assert result.returncode == 2 and "needs MODEL=" in result.stderr


def test_a_typed_model_is_the_only_model_of_a_study(tmp_path):
    """``make ablation-pyramid MODEL=cheaf`` studies CHEAF alone (MODEL's default is the
    sweep's, so only a typed one counts); an unknown model is refused before anything runs."""
    result = _make("ablation-pyramid", "MODEL=nosuch", "PROFILE=smoke", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown model(s) ['nosuch'] in models=" in result.stderr, result.stderr
    dry = _make("-n", "ablation-pyramid", "MODEL=cheaf", tmp_path=tmp_path).stdout
    assert "-m ablations run pyramid" in dry and "'models=[cheaf]'" in dry, dry
    assert "models=" not in _make("-n", "ablation-pyramid", tmp_path=tmp_path).stdout


@pytest.mark.slow
def test_compare_warns_when_a_and_b_are_the_same_study(tmp_path):
    result = _make("compare", "A=planted", "B=planted", f"ARGS=--out {tmp_path}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: A and B are the same study (planted)" in result.stderr
