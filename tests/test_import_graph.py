"""sleb's modules import each other without a cycle.

The import graph is read from the sources: each module-level import of a sleb module is an edge
(`from . import name` points at the package itself unless `name` is a submodule). A cycle is a
module that, through its imports, needs itself half-initialised: it works only by the order of
its statements until someone reorders them.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _top_level_imports(tree: ast.Module):
    """Import statements run at import time: the module body, and inside top-level try/if (not TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)


def import_graph() -> dict[str, set[str]]:
    """Each sleb module and the sleb modules its import-time statements load."""
    paths = {_module_name(p): p for p in (ROOT / "sleb").rglob("*.py")}
    graph = {name: set() for name in paths}
    for name, path in paths.items():
        package = _package_of(name, path)
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package
                for _ in range(node.level - 1 if node.level else 0):
                    base = base.rpartition(".")[0]
                source = node.module if not node.level else ".".join(p for p in (base, node.module) if p)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in paths else source for a in node.names]
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    colour, parent = dict.fromkeys(graph, 0), {}
    for start in graph:
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                cycle = [node]
                while cycle[-1] != child:
                    cycle.append(parent[cycle[-1]])
                return cycle[::-1] + [child]
            elif colour[child] == 0:
                colour[child], parent[child] = 1, node
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_sleb_has_no_import_cycle():
    graph = import_graph()
    assert "sleb.prune" in graph["sleb"], "the graph lost the package's own imports"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))



MAX_FUNCTION_LINES = 80


def test_no_function_is_too_long():
    """Functions in sleb/, zoo/ and app.py stay short enough to read at once."""
    paths = [*(ROOT / "sleb").rglob("*.py"), *(ROOT / "zoo").rglob("*.py"), ROOT / "app.py"]
    long_ones = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_ones.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long_ones, "split these functions: " + ", ".join(long_ones)
