"""Every interface gives the same answer to the same operation, and the layers import downwards only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mr_notebook

PACKAGE = Path(mr_notebook.__file__).parent


def _unit(module: str) -> str:
    """``mr_notebook.kernel.chat`` → ``mr_notebook.kernel``: the packages and top modules the layers are made of."""
    return ".".join(module.split(".")[:2])


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only; they import nothing at run time)."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def import_graph() -> dict[str, set[str]]:
    """Which unit imports which at run time, counting imports inside functions (lazy imports are still
    dependencies)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        unit = _unit(".".join(parts))
        if unit == "mr_notebook.__init__":  # the package root only re-exports, lazily
            continue
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                base = node.module
                names = [f"{base}.{a.name}" for a in node.names] if base == "mr_notebook" else [base]
            else:
                continue
            for name in names:
                if name.startswith("mr_notebook.") and name != "mr_notebook.__version__":
                    graph.setdefault(unit, set()).add(_unit(name))
        graph.setdefault(unit, set()).discard(unit)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "mr_notebook.kernel" in graph and "mr_notebook.widgets" in graph
    assert cycles(graph) == []
    # Widgets and helpers find the engine of the process in one place, not through the magics.
    assert "mr_notebook.kernel" not in graph["mr_notebook.widgets"]
    assert "mr_notebook.kernel" not in graph["mr_notebook.workflows"]
    assert graph["mr_notebook.current"] == {"mr_notebook.client"}


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_one_loopback_answer_for_hosts_origins_binds_and_registries() -> None:
    from mr_notebook.hosts import is_loopback

    for host in ("localhost", "LOCALHOST:8888", "127.0.0.1", "127.3.4.5:5000", "::1", "[::1]", "[::1]:12434"):
        assert is_loopback(host), host
    for host in ("", "0.0.0.0", "10.0.0.1", "127.0.0.1.nip.io", "localhost.evil.example", "127.evil", "[::2]:80"):
        assert not is_loopback(host), host


def test_one_short_id() -> None:
    from mr_notebook.digests import short_id

    assert short_id("sha256:" + "0123456789abcdef" * 4) == "0123456789ab" == short_id("0123456789abcdef" * 4)


def test_env_seen_by_a_test() -> None:
    """Run by the test below in a pytest whose shell points at a real server, token and Hub mirror."""
    leaked = sorted(n for n in os.environ if n.startswith(("MR_NOTEBOOK_", "HF_")))
    assert leaked == [], leaked
    os.environ["MR_NOTEBOOK_URL"] = "http://127.0.0.1:9/set-by-a-test/"  # undone before the next test


def test_env_seen_by_the_next_test() -> None:
    assert os.environ.get("MR_NOTEBOOK_URL") != "http://127.0.0.1:9/set-by-a-test/"


def test_the_shell_environment_does_not_reach_tests() -> None:
    env = {**os.environ, "MR_NOTEBOOK_URL": "http://127.0.0.1:9/", "MR_NOTEBOOK_TOKEN": "t", "HF_ENDPOINT": "http://x"}
    selected = [f"{__file__}::test_env_seen_by_a_test", f"{__file__}::test_env_seen_by_the_next_test"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selected],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
