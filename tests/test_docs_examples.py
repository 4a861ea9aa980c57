"""Every Python example in README.md and docs/ passes ``mypy --strict`` as written, and runs.

Each fenced ```` ```python ```` block is a module of its own: it imports what it uses and
type-checks in strict mode, so a reader can copy it, run it, and type-check it.

A block that is deliberately incomplete (it continues an earlier block, or shows one call
out of context) is marked as a fragment by this HTML comment on the line before its fence
(blank lines between them are allowed); the comment shows neither on GitHub, on PyPI nor on
the mkdocs site::

    <!-- fragment -->
    ```python
    async for task in handle.watch():
        print(task.status)
    ```

A fragment is still parsed (top-level ``await``, ``async with`` and ``async for`` allowed),
so a syntax error in it fails too; it is not type-checked. Every page is found anew on
each run: a new page is checked without touching this file. All blocks of all pages go
through one mypy run (with a cache under ``.pytest_cache``), so the check stays fast.

Complete examples are also run, all of a kind in one child process:

- a block that defines ``test_*`` functions is run by pytest as the reader would run it
  (anyio's and kling_async's pytest plugins as installed, warnings as errors, none of this
  repository's configuration); every test in it must pass;
- a script (a block that calls ``asyncio.run(...)`` at the top level or has an
  ``if __name__ == "__main__":`` block) is run in a fresh folder against an emulator started
  by the test (``KLING_BASE_URL`` is its gateway URL, ``KLING_API_KEY=test-key``). The
  emulator answers at once, so the child process shortens the default poll policy's waits
  (see ``examples_runner.py``); everything else is as written.

A complete block that must not be run (it needs a real account, or serves a web app) says
why in an HTML comment on the line before its fence::

    <!-- not-run: serves a web app on port 8080 -->
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import anyio
import attrs
import pytest

import kling_async
from kling_async.testing import KlingEmulator

ROOT = Path(kling_async.__file__).resolve().parent.parent
FRAGMENT = "<!-- fragment -->"
_NOT_RUN = re.compile(r"^<!-- not-run: (?P<reason>\S.*?) -->$")
_FENCE = re.compile(r"^(?P<indent>\s*)```\s*python\s*$")
_ERROR = re.compile(r"^(?P<file>[^:]+\.py):(?P<line>\d+): (?P<rest>(error|note): .*)$")

# Pages whose examples predate this check (issue 11, defect 10) and whose owners have not
# converted them yet: their test is expected to fail, and (xfail is strict) it reports as
# soon as a page passes, so that its entry is removed here.
NOT_YET_TYPED: dict[str, str] = {}


@attrs.frozen
class Block:
    """One ```python block: where it is and what it says."""

    page: str  # relative to ROOT, with forward slashes
    line: int  # the line of the block's first code line, from 1
    code: str
    fragment: bool
    not_run: str | None = None  # the reason given by a `<!-- not-run: ... -->` marker

    @property
    def module(self) -> str:
        stem = re.sub(r"\W", "_", self.page.removesuffix(".md")).lower()
        return f"snippet_{stem}_l{self.line}"


def pages() -> list[str]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [path.relative_to(ROOT).as_posix() for path in found if path.is_file()]


def blocks(page: str) -> Iterator[Block]:
    """The ```python blocks of a page (a path relative to ROOT)."""
    return blocks_in((ROOT / page).read_text(encoding="utf-8"), page)


def blocks_in(text: str, page: str) -> Iterator[Block]:
    """The ```python blocks of a page's text, each marked as a fragment or not."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        before = [text.strip() for text in lines[:index] if text.strip()]
        fragment = bool(before) and before[-1] == FRAGMENT
        marker = _NOT_RUN.match(before[-1]) if before else None
        indent = len(fence["indent"])
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(text[indent:] for text in lines[index + 1 : end]) + "\n"
        yield Block(
            page=page,
            line=index + 2,
            code=code,
            fragment=fragment,
            not_run=marker["reason"] if marker else None,
        )
        index = end + 1


@pytest.fixture(scope="module")
def mypy_errors(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """One ``mypy --strict`` run over every complete block; its errors by page."""
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("snippets")
    modules: dict[str, Block] = {}
    for page in pages():
        for block in blocks(page):
            if not block.fragment:
                modules[f"{block.module}.py"] = block
                (folder / f"{block.module}.py").write_text(block.code, encoding="utf-8")
    errors: dict[str, list[str]] = {page: [] for page in pages()}
    if not modules:
        return errors
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache_dir = cache.mkdir("mypy-docs") if cache is not None else folder / ".mypy_cache"
    with pytest.MonkeyPatch.context() as patch:
        # The examples import the kling_async under test, not another installed copy.
        patch.setenv("MYPYPATH", str(ROOT))
        out, err, _status = api.run(
            [
                "--strict",
                f"--config-file={ROOT / 'pyproject.toml'}",
                f"--cache-dir={cache_dir}",
                "--no-pretty",
                "--no-error-summary",
                "--hide-error-context",
                *sorted(str(folder / name) for name in modules),
            ]
        )
    assert not err.strip(), err
    for text in out.splitlines():
        found = _ERROR.match(text)
        assert found is not None, f"unexpected mypy output: {text}"
        block = modules[Path(found["file"]).name]
        where = block.line + int(found["line"]) - 1
        errors[block.page].append(f"{block.page}:{where}: {found['rest']}")
    return errors


def _marks(page: str) -> list[pytest.MarkDecorator]:
    reason = NOT_YET_TYPED.get(page)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.parametrize("page", [pytest.param(page, marks=_marks(page)) for page in pages()])
def test_examples_pass_mypy_strict(page: str, mypy_errors: dict[str, list[str]]) -> None:
    """The page's complete examples type-check; `<!-- fragment -->` marks the incomplete ones."""
    assert [] == mypy_errors[page]


@pytest.mark.parametrize("page", pages())
def test_fragments_parse(page: str) -> None:
    """A fragment is not type-checked, but it is valid Python (top-level await allowed)."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    for block in blocks(page):
        if block.fragment:
            compile(block.code, f"{page}:{block.line}", "exec", flags=flags)


def test_the_marker_applies_to_the_next_block_only() -> None:
    """A marked block is a fragment, the next one is not; indented fences are found too."""
    page = "\n".join(
        [
            "<!-- fragment -->",
            "",
            "```python",
            "await handle",
            "```",
            "text",
            "```python",
            "import asyncio",
            "```",
            "- a list item:",
            "  ```python",
            "  x = 1",
            "  ```",
            "```bash",
            "echo not python",
            "```",
        ]
    )
    expected = [
        Block(page="p.md", line=4, code="await handle\n", fragment=True),
        Block(page="p.md", line=8, code="import asyncio\n", fragment=False),
        Block(page="p.md", line=12, code="x = 1\n", fragment=False),
    ]
    assert expected == list(blocks_in(page, "p.md"))


# -- running the complete examples ------------------------------------------------------------

RUNNER = Path(__file__).with_name("examples_runner.py")
RUN_TIMEOUT = 120.0  # seconds for all the examples of a kind; they take a few


def defined_tests(block: Block) -> list[str]:
    """The ``test_*`` functions a block defines at its top level."""
    return [
        node.name
        for node in ast.parse(block.code).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
    ]


def is_script(block: Block) -> bool:
    """Whether a block does something when run: ``asyncio.run(...)`` or a ``__main__`` block."""
    for node in ast.parse(block.code).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            function = node.value.func
            if isinstance(function, ast.Attribute) and function.attr == "run":
                return True
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


def runnable(kind: str) -> list[Block]:
    """The complete, unmarked blocks of a kind ("test" or "script") on every page."""
    found = []
    for page in pages():
        for block in blocks(page):
            if block.fragment or block.not_run is not None:
                continue
            if (
                defined_tests(block)
                if kind == "test"
                else is_script(block) and not defined_tests(block)
            ):
                found.append(block)
    return found


def test_not_run_markers_give_a_reason_and_mark_a_runnable_block() -> None:
    """`<!-- not-run: why -->` is only on a block that would otherwise run, never a fragment."""
    marked = [block for page in pages() for block in blocks(page) if block.not_run is not None]
    pointless = [
        f"{b.page}:{b.line}" for b in marked if b.fragment or not (defined_tests(b) or is_script(b))
    ]
    assert [] == pointless
    assert all(block.not_run for block in marked)


def test_the_examples_that_define_tests_pass(tmp_path: Path) -> None:
    """Each example with ``test_*`` functions passes under pytest, as a reader would run it."""
    examples = runnable("test")
    assert examples, "no example defines a test"
    expected = {}
    for block in examples:
        (tmp_path / f"test_{block.module}.py").write_text(block.code, encoding="utf-8")
        for name in defined_tests(block):
            expected[f"test_{block.module}.{name}"] = f"{block.page}:{block.line} {name}"
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n", encoding="utf-8")
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, "PYTHONPATH": ""},
        check=False,
    )
    outcomes: dict[str, set[str]] = {}
    if report.exists():
        for case in ElementTree.parse(report).iter("testcase"):
            failed = [child.tag for child in case if child.tag not in ("system-out", "system-err")]
            name = f"{case.get('classname')}.{case.get('name', '').partition('[')[0]}"
            outcomes.setdefault(name, set()).update(failed or ["passed"])
    results = {where: outcomes.get(name, {"not run"}) for name, where in expected.items()}
    assert {where: {"passed"} for where in expected.values()} == results, done.stdout[-4000:]


@pytest.mark.anyio
async def test_the_example_scripts_run(tmp_path: Path) -> None:
    """Each example script runs to its end against an emulator, in a fresh folder."""
    examples = runnable("script")
    assert examples, "no example script"
    paths = []
    for block in examples:
        path = tmp_path / f"{block.module}.py"
        path.write_text(block.code, encoding="utf-8")
        paths.append(str(path))
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KLING_") and name != "PYTHONPATH"
    }
    async with KlingEmulator() as emu:
        environment |= {"KLING_BASE_URL": emu.gateway_url, "KLING_API_KEY": emu.api_key}
        with anyio.fail_after(RUN_TIMEOUT):
            done = await anyio.run_process(
                [sys.executable, str(RUNNER), *paths], env=environment, check=False
            )
    lines = done.stdout.decode().splitlines()
    prefix = "@example-result "
    results = dict(
        json.loads(line.removeprefix(prefix)) for line in lines if line.startswith(prefix)
    )
    where = {f"{block.module}.py": f"{block.page}:{block.line}" for block in examples}
    failed = {where[name]: error for name, error in results.items() if error is not None}
    assert {} == failed, done.stderr.decode()[-4000:]
    assert sorted(where.values()) == sorted(where[name] for name in results)
    assert emu.count("create") >= 1  # the scripts that use KLING_* reached the emulator
