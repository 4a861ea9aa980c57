"""Starting ``kling-async mcp`` for the tests: over stdio or streamable HTTP, on an emulator.

The server is a child process (``python -m kling_async mcp``) that talks to the test's own
emulator with an access key, so the test counts what reaches Kling at the emulator. Its
polls run every `POLL` seconds (`_cli_output.TEST_POLL_VARIABLE`), so waits take moments.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import kling_async
from kling_async._cli_output import TEST_POLL_VARIABLE
from kling_async.testing import KlingEmulator

if TYPE_CHECKING:
    from mcp.types import CallToolResult

POLL = "0.02"
ROOT = pathlib.Path(kling_async.__file__).resolve().parent.parent


def environment(emu: KlingEmulator | None, poll: str = POLL) -> dict[str, str]:
    """The server's environment: the emulator's credentials, polls every ``poll`` seconds."""
    env = {TEST_POLL_VARIABLE: poll, "PYTHONPATH": str(ROOT)}
    if emu is not None:
        env |= {
            "KLING_ACCESS_KEY": emu.access_key,
            "KLING_SECRET_KEY": emu.secret_key,
            "KLING_BASE_URL": emu.base_url,
        }
    return env


def arguments(folder: pathlib.Path, *extra: str) -> list[str]:
    return [
        "-m",
        "kling_async",
        "mcp",
        "--journal",
        str(folder / "journal.sqlite3"),
        "--out",
        str(folder / "out"),
        *extra,
    ]


@contextlib.asynccontextmanager
async def stdio(
    emu: KlingEmulator | None,
    folder: pathlib.Path,
    *extra: str,
    poll: str = POLL,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Client]:
    """An MCP client on a stdio server; the server's stderr goes to ``folder/stderr.txt``."""
    params = StdioServerParameters(
        command=sys.executable,
        args=arguments(folder, *extra),
        env=environment(emu, poll) | (env or {}),
        cwd=str(folder),
    )
    with (folder / "stderr.txt").open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


@contextlib.contextmanager
def http_server(emu: KlingEmulator, folder: pathlib.Path, *extra: str) -> Iterator[str]:
    """A ``--http 127.0.0.1:0`` server process; yields its URL (from its first stderr line)."""
    with http_process(emu, folder, *extra) as (url, _process):
        yield url


@contextlib.contextmanager
def http_process(
    emu: KlingEmulator, folder: pathlib.Path, *extra: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A ``--http 127.0.0.1:0`` server process and its URL: a test may kill it."""
    process = subprocess.Popen(
        [sys.executable, *arguments(folder, "--http", "127.0.0.1:0", *extra)],
        env={**os.environ, **environment(emu)},
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"http://\S+/mcp", line)
        assert found, line
        yield found.group(0), process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def creates(emu: KlingEmulator) -> int:
    """Creates that reached the emulator."""
    return sum(1 for request in emu.requests if request.route == "create")


def polls(emu: KlingEmulator) -> int:
    """Queries and list pages that reached the emulator."""
    return sum(1 for request in emu.requests if request.route in ("query", "list"))


def text(result: CallToolResult) -> str:
    """A result's text."""
    return "\n".join(getattr(block, "text", "") for block in result.content)


def ok(result: CallToolResult) -> dict[str, Any]:
    """A result that is no error, as its structured content."""
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return result.structured_content


async def spin_until(condition: Any, seconds: float = 10.0) -> None:
    """Wait (a moment at a time) until ``condition()`` holds."""
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)
