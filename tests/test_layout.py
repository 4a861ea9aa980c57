"""The package's shape: imports run one way, and only the adapters speak aiohttp."""

from __future__ import annotations

import ast
import pathlib

import kling_async

PACKAGE = pathlib.Path(kling_async.__file__).parent
# Modules that adapt a library to the SDK (design.md): the only ones that may import aiohttp.
AIOHTTP_ADAPTERS = {"_aiohttp_transport", "callbacks", "testing"}


def _runtime_tree(path: pathlib.Path) -> ast.Module:
    """The module's syntax tree without its ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    return tree


def _imports(path: pathlib.Path) -> set[str]:
    """The kling_async modules ``path`` imports at run time."""
    tree = _runtime_tree(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def test_imports_between_modules_form_no_cycle() -> None:
    """No two modules import each other, directly or through others."""
    graph = _graph()
    state: dict[str, str] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join((*trail, name))}"
        state[name] = "open"
        for other in graph.get(name, set()):
            visit(other, (*trail, name))
        state[name] = "done"

    for name in graph:
        visit(name, ())


def test_the_handle_and_the_session_do_not_know_each_other() -> None:
    """TaskHandle talks to the poll scheduler, not to KlingSession's internals."""
    graph = _graph()
    assert "_session" not in graph["_handle"]
    assert "_handle" not in graph["_watch"]


def test_only_adapters_import_aiohttp() -> None:
    """Protocol logic stays pure: aiohttp appears only in the adapters."""
    users = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(_runtime_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(name.split(".")[0] == "aiohttp" for name in names):
                users.add(path.stem)
    assert users <= AIOHTTP_ADAPTERS
