"""The package's shape: imports run one way, modules keep their privates, and only the
adapters speak aiohttp."""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

import kling_async

PACKAGE = pathlib.Path(kling_async.__file__).parent
# Modules that adapt a library to the SDK: the only ones that may import aiohttp. The client's
# transport, the receiver's aiohttp.web app, and the testing package (the emulator).
AIOHTTP_ADAPTERS = {"_aiohttp_transport", "_aiohttp_web", "testing"}
# Modules whose rules are pure (values in, values out): no I/O, no clock, no event loop.
PURE = {
    "_chain",
    "_config",
    "_journal_hash",
    "_journal_rules",
    "_list_round",
    "_mcp_chain_rules",
    "_mcp_results",
    "_mcp_spending",
    "_media",
    "_pace",
    "_policies",
    "_reconcile",
    "_schedule",
    "_spending",
    "_task_codec",
    "_task_members",
    "_webhook_signature",
    "sansio",
}
IMPURE = {"aiohttp", "anyio", "asyncio", "os", "socket", "sqlite3", "threading", "time"}
MAX_CLASS_LINES = 450
# The one import made only for type checking that runs against the flow: an error names the
# model it is about (an AmbiguousCreateError's request, a WaitTimeoutError's last task), while
# the models' validators raise InvalidArgumentError (the source creates' too).
TYPE_ONLY_BACK_EDGES = {("errors", "models"), ("errors", "_source_requests")}


@functools.cache
def _modules() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name below it (``_watch``, ``testing._mock``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _tree(path: pathlib.Path, *, type_only: bool) -> ast.Module:
    """The module's syntax tree, with its ``if TYPE_CHECKING:`` blocks unless ``type_only``."""
    tree = ast.parse(path.read_text())
    if not type_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    return tree


def _target(name: str, node: ast.ImportFrom) -> str | None:
    """The package module an ``ImportFrom`` in module ``name`` reads from ("" for the
    package itself), or None when it reads from outside the package."""
    if node.level == 0:
        module = node.module or ""
        if module != "kling_async" and not module.startswith("kling_async."):
            return None
        return module.removeprefix("kling_async").removeprefix(".")
    parts = name.split(".") if name else []
    if _modules()[name].name != "__init__.py":
        parts = parts[:-1]  # a module's package is its parent
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _imports(name: str, path: pathlib.Path, *, type_only: bool) -> set[str]:
    """The package modules ``name`` imports (at run time, or also for type checking)."""
    modules = _modules()
    found: set[str] = set()
    for node in ast.walk(_tree(path, type_only=type_only)):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _target(name, node)
        if target is None:
            continue
        for alias in node.names:
            below = f"{target}.{alias.name}" if target else alias.name
            found.add(below if below in modules else target)
    found.discard("")  # the package itself: its public names
    found.discard(name)
    return found


def _graph(*, type_only: bool) -> dict[str, set[str]]:
    return {name: _imports(name, path, type_only=type_only) for name, path in _modules().items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(name: str, trail: tuple[str, ...]) -> list[str] | None:
        if state.get(name) == "done":
            return None
        if state.get(name) == "open":
            return [*trail, name]
        state[name] = "open"
        for other in sorted(graph.get(name, set())):
            found = visit(other, (*trail, name))
            if found:
                return found
        state[name] = "done"
        return None

    for name in sorted(graph):
        found = visit(name, ())
        if found:
            return found
    return None


@pytest.mark.parametrize("type_only", [False, True], ids=["run time", "type checking too"])
def test_imports_between_modules_form_no_cycle(type_only: bool) -> None:
    """No two modules import each other, directly or through others: not at run time, and
    not through imports made only for type checking either."""
    graph = _graph(type_only=type_only)
    for name, other in TYPE_ONLY_BACK_EDGES:
        graph[name].discard(other)
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or ())}"


def test_the_handle_and_the_session_do_not_know_each_other() -> None:
    """TaskHandle talks to the poll scheduler, not to KlingSession's internals."""
    graph = _graph(type_only=True)
    assert "_session" not in graph["_handle"]
    assert "_handle" not in graph["_watch"]


def test_no_module_imports_anothers_private_names() -> None:
    """A name another module uses is public to the package (no underscore): privates stay
    where they are defined (a private *module* may be imported; its private names may not)."""
    modules = _modules()
    reached = []
    for name, path in modules.items():
        tree = _tree(path, type_only=True)
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _target(name, node) is not None:
                target = _target(name, node)
                for alias in node.names:
                    below = f"{target}.{alias.name}" if target else alias.name
                    if below in modules:
                        aliases.add(alias.asname or alias.name)
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        reached.append(f"{name} imports {alias.name} from {target}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                reached.append(f"{name} reads {node.value.id}.{node.attr}")
    assert [] == reached


def test_only_adapters_import_aiohttp() -> None:
    """Protocol logic stays pure: aiohttp appears only in the adapters."""
    users = set()
    for name, path in _modules().items():
        for node in ast.walk(_tree(path, type_only=False)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(imported.split(".")[0] == "aiohttp" for imported in names):
                users.add(name.split(".")[0])
    assert users <= AIOHTTP_ADAPTERS


@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_modules_do_no_io(name: str) -> None:
    """The decision modules import nothing that sends, sleeps, reads a clock or a file."""
    imported = set()
    for node in ast.walk(_tree(_modules()[name], type_only=False)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert set() == imported & IMPURE


def test_the_cli_uses_only_the_public_testing_package() -> None:
    """The CLI is a front end: it may use `kling_async.testing`'s public names, never its
    modules (``testing.__main__``, ``testing._emulator``, ...)."""
    graph = _graph(type_only=True)
    reached = {
        (name, other)
        for name, imports in graph.items()
        if name.startswith("_cli") or name == "__main__"
        for other in imports
        if other.startswith("testing.")
    }
    assert set() == reached


def test_no_class_is_over_450_lines() -> None:
    """One class, one job: a class that grows past this is doing several (testing aside)."""
    long = []
    for name, path in _modules().items():
        if name.startswith("testing"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert [] == long


def test_only_fleet_modules_import_redis() -> None:
    """Redis is an optional extra: only ``_fleet`` and the ``_redis_*`` modules import it."""
    users = set()
    for name, path in _modules().items():
        for node in ast.walk(_tree(path, type_only=False)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(imported.split(".")[0] == "redis" for imported in names):
                users.add(name)
    assert {name for name in users if name != "_fleet" and not name.startswith("_redis_")} == set()
