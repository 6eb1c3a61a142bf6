"""``psalm/`` stays a plain PyTorch library: no hydra, omegaconf, mlflow, optuna or submitit, and
nothing from this project's orchestration packages (``pipeline``, ``ablations``, ``sweeps``,
``analysis``), which build on the library, never the other way round.

Two checks, because each misses what the other sees:

- a static scan of the source of every ``psalm/**/*.py`` (imports anywhere in a file, including
  inside functions, plus ``importlib.import_module("…")`` / ``__import__("…")`` with a literal
  name), which catches imports on code paths no test executes;
- a runtime check in a fresh interpreter that ``import psalm`` and importing every submodule
  leaves none of those packages in ``sys.modules``, which catches indirect imports through a
  third-party package or a module of ours outside ``psalm/``.

Exempt: exactly ``psalm/train.py`` and ``psalm/evaluate.py``, and only because of their names.
The commands ``python -m psalm.train`` / ``python -m psalm.evaluate`` (documented in the README
and used by ``make train`` / ``make evaluate``) need modules of those names, so the two files
stay in ``psalm/`` as aliases of ``pipeline.commands``, where the commands' code lives. A test
below keeps them aliases: they import only ``pipeline.commands`` and define nothing but
``main``. No other psalm module may import them. Files are discovered when the tests are
collected, so modules added later are covered.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "psalm"
FORBIDDEN = frozenset(
    {"hydra", "omegaconf", "mlflow", "optuna", "submitit"}
    | {"pipeline", "ablations", "sweeps", "analysis"}  # this project's orchestration
)
CLI_SHIMS = frozenset({"psalm.train", "psalm.evaluate"})  # the two aliases (see above)


def _module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """Dotted module name of a file under ``root`` (``psalm/a/__init__.py`` -> ``psalm.a``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _library_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if _module_name(p) not in CLI_SHIMS)


def _imported_names(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything the file imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            found.append((node.lineno, prefix))
            # `from pkg import sub` may import the submodule pkg.sub.
            found += [(node.lineno, f"{prefix}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _violations(path: Path, root: Path = REPO_ROOT) -> list[str]:
    rel = path.relative_to(root)
    out: list[str] = []
    for line, name in _imported_names(path, root):
        if name.split(".")[0] in FORBIDDEN:
            if not any(o.startswith(f"{rel}:{line} imports {name.split('.')[0]}") for o in out):
                out.append(f"{rel}:{line} imports {name}")
        elif any(name == shim or name.startswith(shim + ".") for shim in CLI_SHIMS):
            out.append(f"{rel}:{line} imports the command alias {name} (which imports pipeline)")
    return out


LIBRARY_FILES = _library_files()


def test_psalm_package_exists() -> None:
    assert (PACKAGE_DIR / "__init__.py").is_file(), "psalm/ must be a package"
    assert LIBRARY_FILES, "no library modules found under psalm/"


@pytest.mark.parametrize(
    "path", LIBRARY_FILES, ids=[str(p.relative_to(REPO_ROOT)) for p in LIBRARY_FILES]
)
def test_library_source_has_no_forbidden_imports(path: Path) -> None:
    problems = _violations(path)
    assert not problems, (
        "psalm/ is a plain PyTorch library; move this code to pipeline/:\n  "
        + "\n  ".join(problems)
    )


@pytest.mark.parametrize("alias", sorted(CLI_SHIMS))
def test_the_command_aliases_only_hand_over_to_pipeline_commands(alias: str) -> None:
    """The exemption covers two aliases, not code: each imports ``pipeline.commands`` and
    nothing else of ours or of the forbidden packages, and defines only ``main``."""
    path = REPO_ROOT / (alias.replace(".", "/") + ".py")
    imported = {name for _, name in _imported_names(path, REPO_ROOT)}
    ours = {n for n in imported if n.split(".")[0] in FORBIDDEN}
    assert ours and all(n.startswith("pipeline.commands") for n in ours), (
        f"{path.name} is an alias of pipeline.commands; it imports {sorted(ours)}"
    )
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == ["main"], f"{path.name} should define only main(), not {defined}"


def test_scanner_sees_every_import_form(tmp_path: Path) -> None:
    """The static scan must flag each way a module could be pulled in, or it proves nothing."""
    pkg = tmp_path / "psalm" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "psalm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    sources = {
        "a.py": "import mlflow.tracking\n",
        "b.py": "from omegaconf import DictConfig\n",
        "c.py": "def f():\n    import optuna\n",
        "d.py": "import importlib\nm = importlib.import_module('submitit')\n",
        "e.py": "h = __import__('hydra')\n",
        "f.py": "from .. import train\n",
        "h.py": "from pipeline.config import make_spec\n",
        "i.py": "def f():\n    import analysis\n",
        "g.py": "from ..evaluate import main\n",
    }
    for name, text in sources.items():
        (pkg / name).write_text(text)
    (pkg / "ok.py").write_text("import torch\nfrom . import a\nfrom ..boxes import nms\n")
    for name in sources:
        assert _violations(pkg / name, tmp_path), f"scanner missed the import in {name}"
    assert _violations(pkg / "ok.py", tmp_path) == []


_RUNTIME_CHECK = """
import importlib, json, pkgutil, sys

forbidden, shims = set(json.loads(sys.argv[1])), set(json.loads(sys.argv[2]))

def loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & forbidden)

culprits = {}
import psalm
if loaded():
    culprits["psalm"] = loaded()
for info in pkgutil.walk_packages(psalm.__path__, "psalm."):
    if info.name in shims or any(info.name.startswith(s + ".") for s in shims):
        continue
    before = set(loaded())
    importlib.import_module(info.name)
    new = sorted(set(loaded()) - before)
    if new:
        culprits[info.name] = new
print(json.dumps(culprits))
"""


def test_importing_psalm_loads_no_forbidden_package() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUNTIME_CHECK,
            json.dumps(sorted(FORBIDDEN)),
            json.dumps(sorted(CLI_SHIMS)),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"importing psalm modules failed:\n{result.stderr}"
    culprits = json.loads(result.stdout.strip().splitlines()[-1])
    assert not culprits, (
        "these psalm modules pull in packages psalm/ must not depend on "
        f"(module -> packages newly in sys.modules): {culprits}"
    )
