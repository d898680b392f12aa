"""The import rules between apps (docs/architecture.md, "Import rules") hold, and a break of
one fails `make lint`: lint-imports is run on a copy of the code with one forbidden import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["eventpipeline", "api", "bridge", "emitter", "anomalies_app", "signals_app"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def code_copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_keeps_the_import_rules(tmp_path: Path) -> None:
    result = lint_imports(code_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("signals_app/models.py", "anomalies_app.rules"),
        ("signals_app/services.py", "emitter.generator"),
        ("anomalies_app/services.py", "emitter.models"),
        ("anomalies_app/rules.py", "bridge.offsets"),
        ("emitter/selectors.py", "api.serializers"),
        ("api/views.py", "bridge.consumer"),
    ],
)
def test_a_forbidden_import_breaks_the_lint(tmp_path: Path, importer: str, forbidden: str) -> None:
    tree = code_copy(tmp_path)
    with (tree / importer).open("a") as module:
        module.write(f"\nimport {forbidden}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert forbidden.split(".")[0] in result.stdout
