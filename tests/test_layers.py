"""Layers only look down: trainer (the model's code, run inside Transform and the Trainer)
imports nothing of the project above it; components use trainer; serving uses trainer;
pipeline (DAG, configs, front ends) uses them all; and only pipeline/cli.py's own code
imports pipeline.cli. pipeline/errors.py may be imported by every layer."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "components", "serving", "pipeline", "benchmarks")
# What each layer may import of the project (besides itself and pipeline.errors).
ALLOWED = {
    "trainer": {"trainer"},
    "components": {"trainer", "components"},
    "serving": {"trainer", "serving"},
    "pipeline": {"trainer", "components", "serving", "pipeline"},
    "benchmarks": {"trainer", "components", "serving", "pipeline", "benchmarks"},
}


def _imports(path: pathlib.Path) -> set:
    """Every module name `path` imports (at any level of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package, path", list(_modules()),
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(
                             v, pathlib.Path) else v)
def test_imports_look_down(package, path):
    for name in _imports(path):
        top = name.split(".")[0]
        if top not in PACKAGES or name.startswith("pipeline.errors"):
            continue
        assert top in ALLOWED[package], f"{path.relative_to(ROOT)} imports {name}"
        if path != ROOT / "pipeline" / "cli.py":
            assert name != "pipeline.cli" and not name.startswith("pipeline.cli."), (
                f"{path.relative_to(ROOT)} imports {name}")
