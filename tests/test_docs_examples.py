"""Every Python example in README.md and docs/ passes ``mypy --strict`` as written.

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
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

import kling_async

ROOT = Path(kling_async.__file__).resolve().parent.parent
FRAGMENT = "<!-- fragment -->"
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
        indent = len(fence["indent"])
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(text[indent:] for text in lines[index + 1 : end]) + "\n"
        yield Block(page=page, line=index + 2, code=code, fragment=fragment)
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
