"""A hostile review of ``kling-async mcp``, driven by the official ``mcp`` client against the
emulator: what an agent or an operator could do to make it pay, leak or stop."""

from __future__ import annotations

import pathlib

import anyio
import pytest

from kling_async.testing import KlingEmulator

from .mcp_helpers import creates, ok, stdio, text

pytestmark = pytest.mark.anyio


async def test_ten_creates_at_once_on_a_fresh_server_do_not_pass_the_limit(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """--max-units 2 on a server that has seen no cost yet: ten creates at once (and three
    more after them) send one; the others are refused naming the limit. Counting a running
    task at the highest cost seen (none: 0) let all thirteen through."""
    async with stdio(emu, tmp_path, "--max-units", "2") as client:
        results = []

        async def create(number: int) -> None:
            results.append(await client.call_tool("text_to_video", {"prompt": f"shot {number}"}))

        async with anyio.create_task_group() as group:
            for number in range(10):
                group.start_soon(create, number)
        for number in range(3):
            results.append(await client.call_tool("extend_video", {"video_id": f"v{number}"}))
        assert 1 == creates(emu)
        refused = [result for result in results if result.is_error]
        assert 12 == len(refused)
        assert all("--max-units 2" in text(result) for result in refused)
        made = next(result for result in results if not result.is_error)
        ok(await client.call_tool("wait_for_task", {"task_id": ok(made)["task_id"]}))
        ok(await client.call_tool("text_to_video", {"prompt": "now priced"}))
        after = await client.call_tool("text_to_video", {"prompt": "past the limit"})
    assert after.is_error
    assert 2 == creates(emu)
