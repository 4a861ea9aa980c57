"""``kling-async mcp`` under attack, driven by the official ``mcp`` client against the
emulator: what an agent or an operator could do to make it pay, leak or stop."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys

import anyio
import pytest
from mcp import Client

from kling_async import SQLiteJournal
from kling_async.testing import Fault, KlingEmulator

from .mcp_helpers import (
    arguments,
    creates,
    environment,
    http_process,
    ok,
    spin_until,
    stdio,
    text,
)

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


async def test_a_create_whose_caller_left_is_recorded_when_the_http_server_is_stopped(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """SIGTERM to ``--http`` while a create runs that no call waits for any more: the
    server stops serving, the create finishes and lands in the journal, and the process
    exits 0. Uvicorn re-raised the signal once it stopped serving, killing the process
    before the creates still running were done."""
    emu.inject(Fault.delay(1.5), route="create")
    with http_process(emu, tmp_path) as (url, process):
        async with Client(url) as client:
            async with anyio.create_task_group() as group:
                group.start_soon(client.call_tool, "extend_video", {"video_id": "v1", "key": "k1"})
                await spin_until(lambda: 1 == creates(emu))
                group.cancel_scope.cancel()
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                while process.poll() is None:
                    await anyio.sleep(0.05)
        assert 0 == process.returncode
    async with SQLiteJournal(tmp_path / "journal.sqlite3") as journal:
        entry = await journal.get("k1")
    assert entry is not None
    assert [entry.task_id] == list(emu.tasks)


async def test_a_create_on_its_way_is_recorded_when_a_stdio_client_stops_the_server(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A stdio client stops its server by closing stdin, then SIGTERM a moment later (the
    ``mcp`` client after 2 s, then SIGKILL after 2 more): a create still on its way when
    SIGTERM comes finishes and lands in the journal before the process ends. It died at
    once, the task made but its id never journaled."""
    emu.inject(Fault.delay(1.5), route="create")
    env = {**os.environ, **environment(emu)}
    command = [sys.executable, *arguments(tmp_path)]
    async with await anyio.open_process(command, env=env, cwd=tmp_path) as process:
        assert process.stdin is not None
        messages = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "review", "version": "0"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "extend_video", "arguments": {"video_id": "v1", "key": "k1"}},
            },
        ]
        for message in messages:
            await process.stdin.send(json.dumps(message).encode() + b"\n")
        await spin_until(lambda: 1 == creates(emu))
        await process.stdin.aclose()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() in (0, -signal.SIGTERM)
    async with SQLiteJournal(tmp_path / "journal.sqlite3") as journal:
        entry = await journal.get("k1")
    assert entry is not None
    assert [entry.task_id] == list(emu.tasks)


async def test_a_download_never_replaces_a_file_under_a_chosen_name(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A filename that exists in --out (the operator's file, another video) is refused
    before anything is fetched and the file is kept; the video's own name may be saved
    again. It was silently replaced."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.mp4").write_bytes(b"the operator's")
    async with stdio(emu, tmp_path) as client:
        task_id = ok(await client.call_tool("extend_video", {"video_id": "v1"}))["task_id"]
        ok(await client.call_tool("wait_for_task", {"task_id": task_id}))
        refused = await client.call_tool(
            "download_video", {"task_id": task_id, "filename": "mine.mp4"}
        )
        first = ok(await client.call_tool("download_video", {"task_id": task_id}))
        again = ok(await client.call_tool("download_video", {"task_id": task_id}))
    assert refused.is_error
    assert "exists already" in text(refused)
    assert b"the operator's" == (out / "mine.mp4").read_bytes()
    assert first["path"] == again["path"]


async def test_a_create_key_with_a_slash_is_refused_so_no_chain_link_is_taken(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A chain's links are journaled as KEY/1, KEY/2, ...: extend_video with key 'x/2' was
    created, and a chain 'x' then paid for link 1 and stopped at link 2 (the key named
    another request). Such a key is now refused before anything is sent."""
    async with stdio(emu, tmp_path) as client:
        refused = [
            await client.call_tool(tool, {**arguments, "key": "x/2"})
            for tool, arguments in (
                ("extend_video", {"video_id": "v9"}),
                ("text_to_video", {"prompt": "a cat"}),
                ("image_to_video", {"image": "https://example.com/a.png"}),
            )
        ]
        assert 0 == creates(emu)
        assert all(result.is_error and "'/'" in text(result) for result in refused)
        ok(await client.call_tool("extend_video", {"video_id": "v9", "key": "x-2"}))


async def test_a_cash_limit_on_an_account_that_states_no_cash_stops_creates(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The emulator, like Kling's own API, states units and no cash: --max-cash alone was
    never reached (0 cash spent), so creates one after another went on for ever. After the
    first task finished without cash, creates are refused, saying why."""
    async with stdio(emu, tmp_path, "--max-cash", "5") as client:
        made = ok(await client.call_tool("extend_video", {"video_id": "v1"}))
        ok(await client.call_tool("wait_for_task", {"task_id": made["task_id"]}))
        refused = await client.call_tool("extend_video", {"video_id": "v2"})
    assert refused.is_error
    assert "--max-cash 5 cannot be kept" in text(refused)
    assert 1 == creates(emu)


async def test_a_create_in_doubt_keeps_counting_against_the_limit(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A create whose outcome nobody can tell (a 504: it may still make its task) stays in
    the ledger as running, never guessed away: with one unit spent and one in doubt, a
    --max-units 2 server refuses the next create with nothing sent."""
    async with stdio(emu, tmp_path, "--max-units", "2") as client:
        first = ok(await client.call_tool("extend_video", {"video_id": "v0", "key": "k0"}))
        ok(await client.call_tool("wait_for_task", {"task_id": first["task_id"]}))
        emu.inject(Fault.http(504), route="create")
        doubtful = await client.call_tool("extend_video", {"video_id": "v1", "key": "k1"})
        assert doubtful.is_error
        sent = len(emu.requests)
        refused = await client.call_tool("extend_video", {"video_id": "v2", "key": "k2"})
        assert refused.is_error
        assert "--max-units 2" in text(refused)
        assert not [r for r in emu.requests[sent:] if r.route == "create"]
        spent = ok(await client.call_tool("spending", {}))
    assert "1" == spent["units_spent"]
