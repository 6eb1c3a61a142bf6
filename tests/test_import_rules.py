"""``psalm/`` stays a plain PyTorch library: no hydra, omegaconf, mlflow, optuna or submitit.

Two checks, because each misses what the other sees:

- a static scan of the source of every ``psalm/**/*.py`` (imports anywhere in a file, including
  inside functions, plus ``importlib.import_module("…")`` / ``__import__("…")`` with a literal
  name), which catches imports on code paths no test executes;
- a runtime check in a fresh interpreter that ``import psalm`` and importing every submodule
  leaves none of those packages in ``sys.modules``, which catches indirect imports through a
  third-party package or a module of ours outside ``psalm/``.

Exempt: ``psalm/train.py`` and ``psalm/evaluate.py``. They are the thin command-line shims
(``python -m psalm.train …``) that compose the Hydra config and hand it to ``pipeline/``; they are
never imported by the library itself, and the checks below make sure no other psalm module imports
them. Files are discovered when the tests are collected, so modules added later are covered.
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
FORBIDDEN = frozenset({"hydra", "omegaconf", "mlflow", "optuna", "submitit"})
CLI_SHIMS = frozenset({"psalm.train", "psalm.evaluate"})


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
            out.append(f"{rel}:{line} imports the CLI shim {name} (which may import Hydra)")
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
        "psalm/ is a plain PyTorch library; move this code to pipeline/ (or a CLI shim):\n  "
        + "\n  ".join(problems)
    )


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
