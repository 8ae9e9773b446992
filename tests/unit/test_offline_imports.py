"""The offline package imports without cycles, and never from inside a function to hide one."""

from __future__ import annotations

import ast
from pathlib import Path

import risk_engine.offline

OFFLINE = Path(risk_engine.offline.__file__).parent
ROOT = OFFLINE.parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    return set()


def import_graph() -> dict[str, set[str]]:
    """Each offline module -> the offline modules it imports at module level (type-only too)."""
    paths = {module_name(p): p for p in OFFLINE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            # An `if TYPE_CHECKING:` import is a cycle all the same, only hidden from Python.
            for statement in node.body if isinstance(node, ast.If) else [node]:
                found |= imported(statement)
        graph[name] = {dep for dep in found if dep in paths and dep != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_offline_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert "risk_engine.offline.simulate.simulator" in graph
    assert graph["risk_engine.offline.backtest"] >= {
        "risk_engine.offline.distributed",
        "risk_engine.offline.logs",
    }
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_offline_function_imports_the_project() -> None:
    """Imports inside functions are for heavy third-party modules (Dask), never our own."""
    inside: list[str] = []
    for path in OFFLINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for statement in ast.walk(node):
                    names = imported(statement) if isinstance(statement, ast.stmt) else set()
                    if any(name.startswith("risk_engine") for name in names):
                        inside.append(f"{module_name(path)}.{node.name}")
    assert inside == []
