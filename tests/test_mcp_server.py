"""``kling-async mcp`` driven by the official ``mcp`` client, over stdio and streamable HTTP,
against the emulator: every tool, progress, exactly-once keyed creates, cancelled creates,
the spending limit, refusals that keep the server serving, and shared polling."""

from __future__ import annotations

import base64
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client

from kling_async import EntryState, KlingSession, PollPolicy, RetryPolicy, SQLiteJournal
from kling_async._cli import main
from kling_async.testing import Fault, KlingEmulator

from .mcp_helpers import (
    creates,
    http_server,
    ok,
    polls,
    spin_until,
    stdio,
    text,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def manual() -> AsyncIterator[KlingEmulator]:
    """An emulator whose tasks stay where they are until the test sets their status."""
    async with KlingEmulator(auto_advance=False) as emulator:
        yield emulator


TOOLS = {
    "extend_video",
    "text_to_video",
    "image_to_video",
    "get_task",
    "wait_for_task",
    "list_tasks",
    "download_video",
    "spending",
    "chain_videos",
    "get_chain",
}


async def test_tools_are_listed_with_descriptions_for_a_model(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Every tool is there; the creates say they are paid and ask for a key."""
    async with stdio(emu, tmp_path) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert TOOLS == set(listed)
    for name in ("extend_video", "text_to_video", "image_to_video"):
        described = listed[name].description or ""
        assert "paid" in described
        assert "key" in listed[name].input_schema["properties"]
    assert listed["get_task"].annotations is not None
    assert listed["get_task"].annotations.read_only_hint


async def test_extend_wait_download_list_and_spending_over_stdio(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A create returns at once (submitted); the wait sends a progress step per status
    change and returns the finished task; the video downloads into --out; list_tasks and
    get_task find the task; spending counts its unit."""
    async with stdio(emu, tmp_path) as client:
        created = ok(await client.call_tool("extend_video", {"video_id": "v1", "prompt": "on"}))
        assert "submitted" == created["status"]
        assert 1 == creates(emu)
        task_id = created["task_id"]
        steps: list[tuple[float, str | None]] = []

        async def progress(step: float, total: float | None, message: str | None) -> None:
            steps.append((step, message))

        waited = await client.call_tool("wait_for_task", {"task_id": task_id}, None, progress)
        finished = ok(waited)
        assert "succeed" == finished["status"]
        assert "1" == finished["cost"]["units"]
        assert "download_video" in text(waited)
        assert [1.0, 2.0] == [step for step, _ in steps]
        assert [f"task {task_id} is processing", f"task {task_id} is succeeded"] == [
            message for _, message in steps
        ]
        saved = ok(await client.call_tool("download_video", {"task_id": task_id}))
        path = pathlib.Path(saved["path"])
        assert (tmp_path / "out").resolve() == path.parent
        content = await anyio.Path(path).read_bytes()
        assert emu.media_content(finished["videos"][0]["id"]) == content
        named = ok(await client.call_tool("download_video", {"task_id": task_id, "filename": "a"}))
        assert "a.mp4" == pathlib.Path(named["path"]).name
        listed = ok(await client.call_tool("list_tasks", {"limit": 5}))
        assert [task_id] == [task["task_id"] for task in listed["tasks"]]
        assert "succeed" == ok(await client.call_tool("get_task", {"task_id": task_id}))["status"]
        spent = ok(await client.call_tool("spending", {}))
    assert "1" == spent["units_spent"]
    assert [{"task_id": task_id, "family": "video-extend", "running": False}] == spent[
        "tasks_created"
    ]


async def test_source_creates_without_a_key_over_stdio(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """text_to_video and image_to_video (from a URL) create on their own routes, and the
    waits follow their families."""
    async with stdio(emu, tmp_path) as client:
        text_task = ok(await client.call_tool("text_to_video", {"prompt": "a red fox"}))
        image_task = ok(
            await client.call_tool(
                "image_to_video", {"image": "https://example.com/frame.png", "prompt": "wind"}
            )
        )
        for created, family in ((text_task, "text2video"), (image_task, "image2video")):
            assert family == created["family"]
            waited = ok(await client.call_tool("wait_for_task", {"task_id": created["task_id"]}))
            assert "succeed" == waited["status"]
    assert ["text2video", "image2video"] == [
        request.family for request in emu.requests if request.route == "create"
    ]


async def test_the_same_tools_over_streamable_http(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Over HTTP too: create, wait with progress, get, spending."""
    with http_server(emu, tmp_path) as url:
        async with Client(url) as client:
            created = ok(await client.call_tool("extend_video", {"video_id": "v1", "key": "h1"}))
            steps: list[str | None] = []

            async def progress(step: float, total: float | None, message: str | None) -> None:
                steps.append(message)

            waited = await client.call_tool(
                "wait_for_task", {"task_id": created["task_id"]}, None, progress
            )
            assert "succeed" == ok(waited)["status"]
            assert steps
            assert "succeed" in (steps[-1] or "")
            got = ok(await client.call_tool("get_task", {"task_id": created["task_id"]}))
            assert "succeed" == got["status"]
            again = ok(await client.call_tool("extend_video", {"video_id": "v1", "key": "h1"}))
            assert created["task_id"] == again["task_id"]
            assert "1" == ok(await client.call_tool("spending", {}))["units_spent"]
    assert 1 == creates(emu)


async def test_a_keyed_extend_three_times_and_after_a_restart_makes_one_task(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The same key: three calls (two at once) and a call to a restarted server on the same
    journal return one task, created once; the key with other arguments is an error."""
    arguments = {"video_id": "v1", "prompt": "slow zoom", "key": "shot-1"}
    async with stdio(emu, tmp_path) as client:
        first = ok(await client.call_tool("extend_video", arguments))
        results = []

        async def call() -> None:
            results.append(ok(await client.call_tool("extend_video", arguments)))

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            group.start_soon(call)
        assert [first["task_id"]] * 2 == [result["task_id"] for result in results]
    async with stdio(emu, tmp_path) as client:
        again = ok(await client.call_tool("extend_video", arguments))
        other = await client.call_tool("extend_video", {**arguments, "prompt": "fast pan"})
    assert first["task_id"] == again["task_id"]
    assert 1 == creates(emu)
    assert other.is_error
    assert "shot-1" in text(other)


async def test_a_cancelled_create_still_lands_in_the_journal(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The client gives up on a keyed create while it waits out Kling's rate limit: the
    server still sends it, records its task in the journal and counts it as spending; the
    same key later returns that task without another create."""
    emu.inject(Fault.rate_limited(1302, retry_after=1), route="create")
    arguments = {"video_id": "v1", "key": "slow-1"}
    recorded: list[str | None] = [None]

    async def journaled() -> None:
        async with SQLiteJournal(tmp_path / "journal.sqlite3") as journal:
            with anyio.fail_after(10):
                while recorded[0] is None:
                    entry = await journal.get("slow-1")
                    recorded[0] = None if entry is None else entry.task_id
                    await anyio.sleep(0.02)

    # The default retry policy: the resend waits for the Retry-After, as for a user.
    waits = {"KLING_ASYNC_TEST_DEFAULT_RETRY": "1"}
    async with stdio(emu, tmp_path, env=waits) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "extend_video", arguments)
            await spin_until(lambda: [429] == [r.status for r in emu.requests])
            group.cancel_scope.cancel()
        await journaled()
        (task_id,) = emu.tasks
        assert task_id == recorded[0]
        # The server counts it too: a create nobody waits for still spends.
        spent = ok(await client.call_tool("spending", {}))
        assert [task_id] == [task["task_id"] for task in spent["tasks_created"]]
        again = ok(await client.call_tool("extend_video", arguments))
        assert task_id == again["task_id"]
        assert task_id == ok(await client.call_tool("get_task", {"task_id": task_id}))["task_id"]
    assert 2 == creates(emu)


async def test_an_unkeyed_cancelled_create_lands_in_the_journal_under_a_key_of_the_server(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The client gives up on a create without a key while it waits out Kling's rate limit:
    the server journals it under a key of its own ('mcp/' and 32 hex digits) before sending
    it, and records its task id; get_task and list_tasks find it. The next create without a
    key makes a new task under a new key, and a caller's key of that form is refused."""
    emu.inject(Fault.rate_limited(1302, retry_after=1), route="create")
    waits = {"KLING_ASYNC_TEST_DEFAULT_RETRY": "1"}
    journal_path = tmp_path / "journal.sqlite3"

    async def journaled() -> list[Any]:
        async with SQLiteJournal(journal_path) as journal:
            return await journal.entries()

    async with stdio(emu, tmp_path, env=waits) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "extend_video", {"video_id": "v1"})
            await spin_until(lambda: [429] == [r.status for r in emu.requests])
            group.cancel_scope.cancel()
        await spin_until(lambda: 1 == len(emu.tasks))
        (task_id,) = emu.tasks
        with anyio.fail_after(10):
            while [entry.task_id for entry in await journaled()] != [task_id]:
                await anyio.sleep(0.02)
        found = ok(await client.call_tool("get_task", {"task_id": task_id}))
        listed = ok(await client.call_tool("list_tasks", {}))
        second = ok(await client.call_tool("extend_video", {"video_id": "v1"}))
        (first_entry, second_entry) = await journaled()
        taken = await client.call_tool("extend_video", {"video_id": "v1", "key": first_entry.key})
    assert re.fullmatch(r"mcp/[0-9a-f]{32}", first_entry.key)
    assert re.fullmatch(r"mcp/[0-9a-f]{32}", second_entry.key)
    assert first_entry.key != second_entry.key
    assert task_id == found["task_id"]
    assert task_id in [task["task_id"] for task in listed["tasks"]]
    assert second["task_id"] == second_entry.task_id != task_id
    assert taken.is_error
    assert "must not contain '/'" in text(taken)
    assert 3 == creates(emu)  # the refused one, its resend, and the second create


async def test_the_spending_limit_holds_across_a_restart_and_follows_tasks_left_running(
    manual: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """--max-units 2: one extend finished (1 unit) and one left running when the server
    stops. The restarted server, on the same journal, counts both (spent 1, committed 2),
    refuses a new create with nothing sent, and follows the running task to its end: the
    ledger then counts its cost and the journal records it finished."""
    limit = ("--max-units", "2")
    async with stdio(manual, tmp_path, *limit) as client:
        first = ok(await client.call_tool("extend_video", {"video_id": "v1"}))
        manual.set_status(first["task_id"], "succeed")
        ok(await client.call_tool("wait_for_task", {"task_id": first["task_id"]}))
        left = ok(await client.call_tool("extend_video", {"video_id": "v2"}))
    async with stdio(manual, tmp_path, *limit) as client:
        before = ok(await client.call_tool("spending", {}))
        refused = await client.call_tool("extend_video", {"video_id": "v3"})
        manual.set_status(left["task_id"], "succeed")
        with anyio.fail_after(10):
            while (after := ok(await client.call_tool("spending", {})))["units_spent"] != "2":
                await anyio.sleep(0.02)
    async with SQLiteJournal(tmp_path / "journal.sqlite3") as journal:
        entries = {entry.task_id: entry for entry in await journal.entries()}
    assert {"units_spent": "1", "units_committed": "2"}.items() <= before.items()
    assert [(first["task_id"], False), (left["task_id"], True)] == [
        (task["task_id"], task["running"]) for task in before["tasks_created"]
    ]
    assert refused.is_error
    assert "--max-units 2" in text(refused)
    assert 2 == creates(manual)
    assert [False, False] == [task["running"] for task in after["tasks_created"]]
    assert EntryState.FINISHED == entries[left["task_id"]].state
    assert "1" == entries[left["task_id"]].task["final_unit_deduction"]


async def test_the_spending_limit_refuses_before_anything_is_sent(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """--max-units 2: one extend finished (1 unit), one running (counted at 1): the third
    create is refused, naming the limit, and never reaches the emulator."""
    async with stdio(emu, tmp_path, "--max-units", "2") as client:
        first = ok(await client.call_tool("extend_video", {"video_id": "v1"}))
        ok(await client.call_tool("wait_for_task", {"task_id": first["task_id"]}))
        ok(await client.call_tool("extend_video", {"video_id": "v2"}))
        refused = await client.call_tool("extend_video", {"video_id": "v3"})
        refused_text = await client.call_tool("text_to_video", {"prompt": "a cat"})
        spent = ok(await client.call_tool("spending", {}))
    assert refused.is_error
    assert "--max-units 2" in text(refused)
    assert "nothing was sent" in text(refused)
    assert refused_text.is_error
    assert 2 == creates(emu)
    assert {"units_spent": "1", "units_committed": "2", "max_units": "2"}.items() <= spent.items()


async def test_bad_input_comes_back_as_tool_errors_and_the_server_keeps_serving(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Unknown tools, bad arguments, unknown task ids, a local image outside --allow-dir and
    a download name with '..' are isError results, nothing is created, no credential shows,
    and the server answers the next call."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG" + b"0" * 100)
    calls = [
        ("no_such_tool", {}),
        ("extend_video", {}),
        ("extend_video", {"video_id": "v1", "cfg_scale": 5}),
        ("extend_video", {"video_id": "v1", "prompt": "x" * 2501}),
        ("extend_video", {"video_id": "v1", "key": " "}),
        ("get_task", {"task_id": "no-such-task"}),
        ("wait_for_task", {"task_id": "no-such-task", "timeout_s": 5}),
        ("wait_for_task", {"task_id": "x", "timeout_s": 1000}),
        ("list_tasks", {"limit": 0}),
        ("list_tasks", {"family": "cartoon"}),
        ("image_to_video", {"image": str(secret)}),
        ("image_to_video", {"image": "not an image"}),
        ("download_video", {"task_id": "x", "filename": "../escape.mp4"}),
    ]
    async with stdio(emu, tmp_path) as client:
        results = [await client.call_tool(name, arguments) for name, arguments in calls]
        created = ok(await client.call_tool("extend_video", {"video_id": "v1"}))
        ok(await client.call_tool("wait_for_task", {"task_id": created["task_id"]}))
        download = await client.call_tool(
            "download_video", {"task_id": created["task_id"], "filename": "../escape.mp4"}
        )
    refused = [
        name for (name, _), result in zip(calls, results, strict=True) if not result.is_error
    ]
    assert [] == refused
    assert "allow-dir" in text(results[10])
    assert "does not exist" in text(results[5])
    assert download.is_error
    assert "'..'" in text(download)
    assert 1 == creates(emu)
    shown = "\n".join(text(result) for result in results) + (tmp_path / "stderr.txt").read_text()
    assert emu.secret_key not in shown
    assert not (tmp_path / "escape.mp4").exists()


async def test_a_local_image_inside_an_allowed_folder_is_sent(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """With --allow-dir, an image inside it is read and sent as base64."""
    images = tmp_path / "images"
    images.mkdir()
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    (images / "frame.png").write_bytes(data)
    async with stdio(emu, tmp_path, "--allow-dir", str(images)) as client:
        ok(await client.call_tool("image_to_video", {"image": str(images / "frame.png")}))
    (request,) = [request for request in emu.requests if request.route == "create"]
    assert base64.b64encode(data).decode() == request.json["image"]


async def test_a_wait_that_runs_out_is_not_an_error(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """timeout_s 0: the result says the task is still running, without isError."""
    async with stdio(emu, tmp_path) as client:
        created = ok(await client.call_tool("extend_video", {"video_id": "v1"}))
        waited = await client.call_tool(
            "wait_for_task", {"task_id": created["task_id"], "timeout_s": 0}
        )
    shaped = ok(waited)
    assert shaped["waited_out"] is True
    assert shaped["done"] is False
    assert "keeps running" in text(waited)


async def test_fifty_concurrent_waits_cost_no_more_requests_than_one_session(
    tmp_path: pathlib.Path,
) -> None:
    """50 wait_for_task calls at once on 50 running tasks send no more queries and list pages,
    from the moment all are waiting until all return, than 50 waits in one session with the
    same poll policy: the tool calls share one session's polling."""
    seconds = 0.02
    policy = PollPolicy(
        first_delay=seconds,
        interval=seconds,
        list_interval=seconds,
        min_duration=0,
        max_duration=0,
        max_delay=seconds,
        jitter=0,
    )
    async with KlingEmulator(auto_advance=False) as emu:

        def session(**options: Any) -> KlingSession:
            return KlingSession(
                access_key=emu.access_key,
                secret_key=emu.secret_key,
                base_url=emu.base_url,
                retry_policy=RetryPolicy.instant(),
                **options,
            )

        async def fifty_running(prefix: str) -> list[str]:
            async with session() as creator:
                ids = [(await creator.extend(f"{prefix}{n}")).task_id for n in range(50)]
            for task_id in ids:
                emu.set_status(task_id, "processing")
            return ids

        def finish(ids: list[str]) -> int:
            for task_id in ids:
                emu.set_status(task_id, "succeed")
            return polls(emu)

        # The baseline: one session, each wait as the server's (started, then finished).
        ids = await fifty_running("base-")
        started: list[str] = []
        async with session(poll_policy=policy) as one, anyio.create_task_group() as group:

            async def wait(task_id: str) -> None:
                handle = one.task(task_id)
                started.append((await handle.wait_started()).task_id)
                await handle.wait()

            for task_id in ids:
                group.start_soon(wait, task_id)
            await spin_until(lambda: len(started) == 50)
            before = finish(ids)
        baseline = polls(emu) - before

        ids = await fifty_running("mcp-")
        steps: list[str | None] = []
        results = []
        async with stdio(emu, tmp_path) as client, anyio.create_task_group() as group:

            async def progress(step: float, total: float | None, message: str | None) -> None:
                steps.append(message)

            async def call(task_id: str) -> None:
                arguments = {"task_id": task_id}
                results.append(
                    ok(await client.call_tool("wait_for_task", arguments, None, progress))
                )

            for task_id in ids:
                group.start_soon(call, task_id)
            await spin_until(lambda: len(steps) == 50)
            before = finish(ids)
        served = polls(emu) - before
    assert 50 * ["succeed"] == [result["status"] for result in results]
    assert served <= baseline, (served, baseline)


async def test_the_built_in_emulator(tmp_path: pathlib.Path) -> None:
    """--emulator needs no account: extend and wait on the server's own emulator."""
    async with stdio(None, tmp_path, "--emulator", "--emulator-step", "0.05") as client:
        created = ok(await client.call_tool("extend_video", {"video_id": "demo", "key": "d1"}))
        waited = ok(await client.call_tool("wait_for_task", {"task_id": created["task_id"]}))
    assert "succeed" == waited["status"]


async def test_a_keyed_text_to_video_is_created_once(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """text_to_video with a key, called twice: one task."""
    async with stdio(emu, tmp_path) as client:
        first = ok(await client.call_tool("text_to_video", {"prompt": "a fox", "key": "t1"}))
        again = ok(await client.call_tool("text_to_video", {"prompt": "a fox", "key": "t1"}))
    assert first["task_id"] == again["task_id"]
    assert 1 == creates(emu)


async def test_a_keyed_image_to_video_is_created_once(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """image_to_video with a key, called twice: one task."""
    arguments = {"image": "https://example.com/a.png", "key": "i1"}
    async with stdio(emu, tmp_path) as client:
        first = ok(await client.call_tool("image_to_video", arguments))
        again = ok(await client.call_tool("image_to_video", arguments))
    assert first["task_id"] == again["task_id"]
    assert 1 == creates(emu)


@pytest.mark.parametrize("address", ["nowhere", "127.0.0.1:99999", "example.com:80"])
def test_a_bad_http_address_is_a_usage_error(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--http takes HOST:PORT with an IP address (or localhost): anything else exits 2."""
    assert 2 == main(["mcp", "--http", address])
    assert "--http" in capsys.readouterr().err


def _serve_until_eof(folder: pathlib.Path, *arguments: str) -> None:
    """Run ``kling-async mcp`` over stdio with nothing to read: it opens its journal and ends."""
    environment = {**os.environ, "XDG_DATA_HOME": str(folder), "KLING_API_KEY": "k"}
    environment.pop("KLING_ACCESS_KEY", None)
    environment.pop("KLING_SECRET_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "kling_async", "mcp", *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr


def test_the_default_journal_is_the_user_s_and_the_emulator_s_is_temporary(
    tmp_path: pathlib.Path,
) -> None:
    """Whatever folder a client starts the server in, it finds its journal again: by default
    in the user's data folder. An emulated run keeps its own, gone with it, so emulated keys
    never land in an account's journal."""
    data = tmp_path / "data"
    _serve_until_eof(data, "--emulator")
    assert not data.exists()
    _serve_until_eof(data, "--base-url", "http://127.0.0.1:9/kling", "--allow-insecure-http")
    assert (data / "kling-async" / "mcp.journal.sqlite3").is_file()
