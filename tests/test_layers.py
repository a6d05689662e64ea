"""The layers: pipelines -> voice_library -> kespeechchat (the core). Every import points down.

The contract lives in pyproject.toml ([tool.importlinter]) and is checked by import-linter, which
sees function-local imports as well. A function-local import of a project module is allowed only
where it is guarded by ``except ImportError`` (an optional extra behind it); elsewhere it would hide
a cycle.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kespeechchat", "voice_library", "pipelines")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_layers_contract_holds():
    r = lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same check on a copy with one upward import, hidden in a function body as cycles were."""
    for p in PACKAGES:
        shutil.copytree(REPO / p, tmp_path / p, ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    metrics = tmp_path / "kespeechchat" / "metrics.py"
    metrics.write_text(
        metrics.read_text(encoding="utf-8")
        + "\n\ndef _upward():\n    from pipelines.report import run_summary\n\n    return run_summary\n",
        encoding="utf-8",
    )
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    assert "BROKEN" in r.stdout and "kespeechchat.metrics -> pipelines.report" in r.stdout, r.stdout


def _unguarded_local_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded: set[int] = set()
    for t in ast.walk(tree):
        if isinstance(t, ast.Try) and any(
            "ImportError" in ast.unparse(h.type) for h in t.handlers if h.type is not None
        ):
            guarded |= {id(n) for n in t.body}
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").split(".")[0] in PACKAGES
                and id(node) not in guarded
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} from {node.module} import …")
    return found


def test_project_modules_are_imported_at_module_level():
    found = [
        hit for p in PACKAGES for f in sorted((REPO / p).rglob("*.py")) for hit in _unguarded_local_imports(f)
    ]
    assert not found, "function-local imports of project modules:\n" + "\n".join(found)
