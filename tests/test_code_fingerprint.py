"""The code digests that key the Transform, Trainer and Tuner caches cover every trainer
module those components run: an edit to any of them re-runs the component."""

import ast
import pathlib

import pytest

from pipeline import configs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _trainer_imports(module: str, seen=None) -> set:
    """`module` and every trainer/*.py it imports, transitively (function-level imports too)."""
    seen = set() if seen is None else seen
    if module in seen:
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse((ROOT / module).read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "trainer":
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer."):
            names = [node.module.split(".", 1)[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".", 1)[1] for a in node.names
                     if a.name.startswith("trainer.")]
        for name in names:
            path = f"trainer/{name}.py"
            if (ROOT / path).exists():
                _trainer_imports(path, seen)
    return seen


@pytest.mark.parametrize("entry, covered", [
    ("trainer/preprocessing.py", configs.TRANSFORM_CODE),
    ("trainer/run.py", configs.TRAINER_CODE),
    ("trainer/tuning.py", configs.TUNER_CODE),
    ("components/movielens_example_gen/executor.py", configs.EXAMPLE_GEN_CODE),
])
def test_cache_digest_covers_every_module_the_component_runs(entry, covered):
    missing = _trainer_imports(entry) - set(covered)
    assert not missing, f"{entry} runs {sorted(missing)}, which its cache digest leaves out"
