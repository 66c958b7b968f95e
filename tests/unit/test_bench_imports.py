"""The benchmarks import most of the library lazily, inside the functions their subprocesses run, and a
section whose subprocess fails is recorded as an error rather than raised. A name moved in the library (the
trainer's `read_events` moving to `core.runs`) then silently empties a section of bench/results.json. This
resolves every `from core... import name` and `from bench... import name` in bench/ without running a
benchmark."""
import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _project_imports():
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("core", "bench"):
                for alias in node.names:
                    yield pytest.param(node.module, alias.name, id=f"{path.name}:{node.lineno}:{alias.name}")


@pytest.mark.parametrize("module, name", list(_project_imports()))
def test_every_library_name_the_benchmarks_import_exists(module, name):
    imported = importlib.import_module(module)
    assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
        f"bench imports {name} from {module}, which has no such name"
