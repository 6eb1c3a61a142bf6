"""Every command answers ``--help`` with its usage, and does so without loading the heavy packages
(torch, MLflow, Optuna, pandas, Hydra) that only its work needs: ``--help`` and argument errors
come back at once. The console scripts of ``pyproject.toml`` are the same functions as the
``python -m`` forms. (How fast is measured, not asserted: see ``docs/results.md``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# [project.scripts] of pyproject.toml, as installed (make setup reinstalls when it changes)
SCRIPTS = {
    e.name: e.value
    for e in distribution("psalm-ablation").entry_points
    if e.group == "console_scripts"
}
BIN = Path(sys.executable).parent

# (python -m module, subcommand argv, the console script that is the same command)
COMMANDS = [
    ("ablations", [], "psalm-ablations"),
    ("ablations", ["run"], "psalm-ablations"),
    ("ablations", ["status"], "psalm-ablations"),
    ("sweeps", [], "psalm-sweeps"),
    ("sweeps", ["run"], "psalm-sweeps"),
    ("analysis", [], "psalm-analysis"),
    ("analysis", ["report"], "psalm-analysis"),
    ("psalm.train", [], "psalm-train"),
    ("psalm.evaluate", [], "psalm-evaluate"),
]
# Commands with no console script, whose --help must be as quick (make benchmark's)
MODULE_COMMANDS = [("psalm.benchmark", [], None)]
IDS = [" ".join([m, *sub]) for m, sub, _ in COMMANDS]
ALL_IDS = IDS + [" ".join([m, *sub]) for m, sub, _ in MODULE_COMMANDS]
HEAVY = ("torch", "mlflow", "optuna", "pandas", "hydra", "matplotlib", "submitit", "scipy")

# Runs a module as `python -m` does, then prints which heavy packages it loaded.
_PROBE = """
import json, runpy, sys
module, heavy = sys.argv[1], json.loads(sys.argv[2])
sys.argv = [module, *sys.argv[3:]]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(heavy))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "sub", "script"), COMMANDS + MODULE_COMMANDS, ids=ALL_IDS)
def test_python_m_help_prints_usage(module: str, sub: list[str], script: str) -> None:
    proc = _run([sys.executable, "-m", module, *sub, "--help"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module}"), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("module", "sub", "script"), COMMANDS + MODULE_COMMANDS, ids=ALL_IDS)
def test_help_loads_no_heavy_package(module: str, sub: list[str], script: str) -> None:
    proc = _run([sys.executable, "-c", _PROBE, module, json.dumps(HEAVY), *sub, "--help"])
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr
    assert result["loaded"] == [], (
        f"`python -m {module} {' '.join(sub)} --help` imported {result['loaded']}; import them "
        "inside the function that needs them"
    )


@pytest.mark.parametrize("script", sorted({s for _, _, s in COMMANDS}))
def test_console_script_is_declared_and_prints_usage(script: str) -> None:
    assert script in SCRIPTS, f"no console script {script} (pyproject.toml, then make setup)"
    path = BIN / script
    if not path.exists():
        pytest.fail(f"{path} is not installed: run make setup (pyproject.toml changed)")
    proc = _run([str(path), "--help"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: "), proc.stdout


def test_every_console_script_is_covered() -> None:
    assert set(SCRIPTS) == {s for _, _, s in COMMANDS}


@pytest.mark.parametrize(
    ("module", "argv"),
    [("psalm.train", ["--no-such-flag"]), ("psalm.evaluate", ["--no-such-flag"])],
)
def test_an_unknown_flag_is_one_line_and_exit_2(module: str, argv: list[str]) -> None:
    proc = _run([sys.executable, "-m", module, *argv])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr


@pytest.mark.parametrize("package", ["analysis", "psalm"])
def test_lazily_exported_names_all_resolve(package: str) -> None:
    """The packages load their public names on first use (so that the commands above start
    fast); every name in ``__all__`` must still import."""
    module = __import__(package)
    exports = getattr(module, "_EXPORTS", None)
    if exports is not None:
        assert set(exports) == set(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_names_every_command_and_its_subcommands(shell: str) -> None:
    proc = _run([sys.executable, "-m", "pipeline.completion", shell])
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for script_name in SCRIPTS:
        assert script_name in script, f"no completion for {script_name}"
    if shell == "bash":
        assert "_shtab_psalm_ablations_subparsers=(run status cancel list)" in script
        assert "_shtab_psalm_sweeps_subparsers=(run status export list)" in script
        assert "_shtab_psalm_analysis_subparsers=(verdicts report notebook compare studies)" in (
            script
        )
        assert "complete -o bashdefault -F _shtab_psalm_train psalm-train" in script
