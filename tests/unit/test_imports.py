"""The library's import graph: core never reaches the UI, has no import cycles (function-level imports
count: they only hide a cycle), and the service layer never pulls in the experiments built on top of it."""
from __future__ import annotations

import ast
from pathlib import Path

from core.workspace import REPO_ROOT

CORE = REPO_ROOT / "core"
EXPERIMENTS = {"core.demo", "core.reproduce", "core.reproduce_report"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in the file mentions, at any depth of the code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from core import service`
    return found


def core_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {name: {m for m in imported_names(path) if m in files and m != name} for name, path in files.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_core_never_imports_the_ui():
    offenders = {module_name(p): sorted(m for m in imported_names(p) if m.split(".")[0] in ("app", "gradio", "launch"))
                 for p in CORE.rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_core_has_no_import_cycles():
    assert cycles(core_graph()) == []


def test_the_library_does_not_import_the_experiments():
    graph = core_graph()
    for entry in ("core.service", "core.workbench", "core.jobs", "core.encode", "core.evaluate"):
        assert not reachable(graph, entry) & EXPERIMENTS, entry


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_run_store_names_the_run_file():
    """run.json has one owner (core.runs): nobody else builds its path or parses it by hand."""
    offenders = [module_name(p) for p in [*CORE.rglob("*.py"), *(REPO_ROOT / "app").rglob("*.py")]
                 if p.name != "runs.py" and ('"run.json"' in p.read_text() or "'run.json'" in p.read_text())]
    assert offenders == []
