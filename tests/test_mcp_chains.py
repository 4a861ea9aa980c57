"""``chain_videos`` and ``get_chain`` driven by the official ``mcp`` client against the
emulator (run in the test process, so it outlives a killed server): chains from a video id,
text and an image URL, the same key while running and with other prompts, the spending
limit stopping a chain before a link, bad input, and a server killed with ``kill -9``
mid-chain that continues from the journal with one task per link."""

from __future__ import annotations

import collections
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client

from kling_async import PollPolicy, SQLiteJournal
from kling_async._mcp_calls import KlingTools
from kling_async._mcp_server import build_server
from kling_async._mcp_spending import Limits
from kling_async.testing import Fault, KlingEmulator

from .helpers import official
from .mcp_helpers import creates, http_process, ok, spin_until, stdio, text

pytestmark = pytest.mark.anyio


@pytest.fixture
async def manual() -> AsyncIterator[KlingEmulator]:
    """An emulator whose tasks stay where they are until the test sets their status."""
    async with KlingEmulator(auto_advance=False) as emulator:
        yield emulator


def prompts_sent(emu: KlingEmulator) -> collections.Counter[str]:
    """How many creates reached the emulator with each prompt."""
    return collections.Counter(
        str(request.json.get("prompt")) for request in emu.requests if request.route == "create"
    )


def newest(emu: KlingEmulator) -> str:
    """The task id of the newest task the emulator made."""
    return list(emu.tasks)[-1]


async def finish_newest(emu: KlingEmulator, count: int) -> None:
    """Once ``count`` creates reached the emulator, let the newest task succeed."""
    await spin_until(lambda: creates(emu) == count)
    emu.set_status(newest(emu), "succeed")


async def until_state(client: Client, key: str, *states: str) -> dict[str, Any]:
    """get_chain until the chain is in one of ``states``."""
    with anyio.fail_after(20):
        while True:
            shown = ok(await client.call_tool("get_chain", {"key": key}))
            if shown["state"] in states:
                return shown
            await anyio.sleep(0.02)


async def test_the_chain_tools_are_described_for_a_model(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """chain_videos says what it costs, how long it takes and what the key is for."""
    async with stdio(emu, tmp_path) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    described = listed["chain_videos"].description or ""
    for words in ("one paid extend task per prompt", "plus one for the source", "minutes", "key"):
        assert words in described
    assert {"prompts", "key", "video_id", "text", "image"} == set(
        listed["chain_videos"].input_schema["properties"]
    )
    assert "get_chain" in listed


async def test_a_chain_from_a_video_id_while_running_and_done(
    manual: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """chain_videos returns at once (running, with the plan); get_chain shows each link as
    it is made; the same key again while it runs makes nothing new; the same key with other
    prompts is an error that says so; each link extends the video the one before made, and
    each counts in spending()."""
    arguments = {"video_id": "v1", "prompts": ["p1", {"prompt": "p2", "cfg_scale": 0.3}]}
    arguments["key"] = "film-1"
    async with stdio(manual, tmp_path) as client:
        started = ok(await client.call_tool("chain_videos", arguments))
        assert "running" == started["state"]
        assert {"kind": "video_id", "value": "v1"} == started["plan"]["source"]
        assert 2 == started["plan"]["links"]
        await spin_until(lambda: creates(manual) == 1)
        running = await until_state(client, "film-1", "running")
        await spin_until(lambda: creates(manual) == 1)
        again = ok(await client.call_tool("chain_videos", arguments))
        other = await client.call_tool("chain_videos", {**arguments, "prompts": ["p1", "p9"]})
        assert 1 == creates(manual)
        await finish_newest(manual, 1)
        await finish_newest(manual, 2)
        done = await until_state(client, "film-1", "done", "stopped")
        spent = ok(await client.call_tool("spending", {}))
    assert "running" == again["state"]
    assert running["links_made"] <= 1
    assert other.is_error
    assert "film-1" in text(other)
    assert "another chain" in text(other)
    assert "done" == done["state"]
    first, second = done["links"]
    assert ["succeed", "succeed"] == [first["status"], second["status"]]
    assert [1, 2] == [first["link"], second["link"]]
    extends = [request.json for request in manual.requests if request.route == "create"]
    assert "v1" == extends[0]["video_id"]
    assert first["videos"][0]["id"] == extends[1]["video_id"]
    assert 0.3 == extends[1]["cfg_scale"]
    assert "2" == spent["units_spent"]
    assert {first["task_id"], second["task_id"]} == {
        task["task_id"] for task in spent["tasks_created"]
    }


@pytest.mark.parametrize(
    ("source", "family"),
    [
        ({"text": "a lighthouse at dusk"}, "text2video"),
        ({"image": "https://example.com/frame.png"}, "image2video"),
    ],
    ids=["text", "image URL"],
)
async def test_a_chain_from_text_or_an_image_url(
    emu: KlingEmulator, tmp_path: pathlib.Path, source: dict[str, str], family: str
) -> None:
    """The chain makes its source video first (keyed key/0), then extends it."""
    async with stdio(emu, tmp_path) as client:
        ok(await client.call_tool("chain_videos", {**source, "prompts": ["on"], "key": "c"}))
        done = await until_state(client, "c", "done", "stopped")
    assert "done" == done["state"], done["reason"]
    assert family == done["source"]["family"]
    assert "succeed" == done["source"]["status"]
    assert [family, "video-extend"] == [r.family for r in emu.requests if r.route == "create"]
    extend = [r.json for r in emu.requests if r.route == "create"][-1]
    assert done["source"]["videos"][0]["id"] == extend["video_id"]
    assert "c/0" == done["source"]["key"]


async def test_the_spending_limit_stops_a_chain_before_the_refused_link(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """--max-units 2: two links (1 unit each) are made, the third is never sent; get_chain
    says the chain stopped on the limit, naming it and what was spent, and shows both links'
    videos."""
    arguments = {"video_id": "v1", "prompts": ["p1", "p2", "p3", "p4"], "key": "capped"}
    async with stdio(emu, tmp_path, "--max-units", "2") as client:
        ok(await client.call_tool("chain_videos", arguments))
        stopped = await until_state(client, "capped", "done", "stopped")
        spent = ok(await client.call_tool("spending", {}))
    assert "stopped" == stopped["state"]
    assert "spending_limit" == stopped["stopped_on"]
    assert "--max-units 2" in stopped["reason"]
    assert "units spent or committed come to 2" in stopped["reason"]
    assert 2 == creates(emu)
    assert {"p1": 1, "p2": 1} == prompts_sent(emu)
    assert 2 == stopped["links_made"]
    assert all(link["videos"] for link in stopped["links"])
    assert "2" == spent["units_spent"]


async def test_bad_chain_input_is_a_tool_error_and_sends_nothing(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """No source, two sources, no prompts, a prompt without 'prompt', a plan past 3 minutes,
    no key, and a local image outside --allow-dir: isError, nothing sent, nothing started."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG" + b"0" * 100)
    calls: list[dict[str, Any]] = [
        {"prompts": ["a"], "key": "k"},
        {"prompts": ["a"], "video_id": "v1", "text": "a fox", "key": "k"},
        {"prompts": [], "video_id": "v1", "key": "k"},
        {"prompts": [{"negative_prompt": "blur"}], "video_id": "v1", "key": "k"},
        {"prompts": ["a"] * 37, "video_id": "v1", "key": "k"},
        {"prompts": ["a"] * 36, "text": "a fox", "key": "k"},
        {"prompts": ["a"], "video_id": "v1"},
        {"prompts": ["a"], "image": str(secret), "key": "k"},
    ]
    async with stdio(emu, tmp_path) as client:
        results = [await client.call_tool("chain_videos", arguments) for arguments in calls]
        unknown = ok(await client.call_tool("get_chain", {"key": "k"}))
    assert [True] * len(calls) == [result.is_error for result in results]
    said = [text(result) for result in results]
    assert "exactly one source" in said[0]
    assert "exactly one source" in said[1]
    assert "must not be empty" in said[2]
    assert "'prompt' key is required" in said[3]
    assert "185 s" in said[4]
    assert "185 s" in said[5]  # a 5 s source made from text, 36 links
    assert "key is required" in said[6]
    assert "allow-dir" in said[7]
    assert 0 == creates(emu)
    assert "unknown" == unknown["state"]


async def test_a_chain_killed_with_sigkill_continues_after_a_restart_with_one_task_per_link(
    manual: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The server is killed (SIGKILL) once link 2 is created; the restarted server's
    get_chain shows links 1 and 2 from the journal alone, and chain_videos with the same key
    continues: links 3 and 4 are made, and every prompt was sent exactly once. The same key
    with another prompt is refused from the journal before anything is sent."""
    arguments = {"video_id": "v1", "prompts": ["p1", "p2", "p3", "p4"], "key": "film"}

    async def journaled(key: str) -> str:
        async with SQLiteJournal(tmp_path / "journal.sqlite3") as journal:
            with anyio.fail_after(10):
                while (entry := await journal.get(key)) is None or entry.task_id is None:
                    await anyio.sleep(0.02)
                return entry.task_id

    with http_process(manual, tmp_path) as (url, process):
        async with Client(url) as client:
            ok(await client.call_tool("chain_videos", arguments))
            await finish_newest(manual, 1)
            await spin_until(lambda: creates(manual) == 2)
        second = await journaled("film/2")
        process.kill()  # SIGKILL: no clean-up of any kind
        process.wait()
    assert [newest(manual)] == [second]
    with http_process(manual, tmp_path) as (url, _process):
        async with Client(url) as client:
            before = ok(await client.call_tool("get_chain", {"key": "film"}))
            reworded = {**arguments, "prompts": ["p1", "p2-other", "p3", "p4"]}
            other = await client.call_tool("chain_videos", reworded)
            again = ok(await client.call_tool("chain_videos", arguments))
            assert 2 == creates(manual)
            manual.set_status(second, "succeed")
            await finish_newest(manual, 3)
            await finish_newest(manual, 4)
            done = await until_state(client, "film", "done", "stopped")
    assert "not_running" == before["state"]
    assert other.is_error  # the journal's key/2 holds another prompt: refused, nothing paid
    assert "link 2" in text(other)
    assert "chain_videos" in before["reason"]
    assert ["succeed", "submitted"] == [link["status"] for link in before["links"]]
    assert second == before["links"][1]["task_id"]
    assert "running" == again["state"]
    assert "done" == done["state"], done["reason"]
    assert {"p1": 1, "p2": 1, "p3": 1, "p4": 1} == prompts_sent(manual)
    assert 4 == creates(manual)
    assert [link["task_id"] for link in before["links"]] == [
        link["task_id"] for link in done["links"][:2]
    ]


async def test_a_keyed_create_the_journal_already_made_is_not_refused_by_the_limit(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """After a restart with the limit reached by the journal's own task (followed to its end
    by the restarted server), a create whose key the journal already holds pays nothing and
    returns its task (a resumed chain's made links take this path); a new create is refused."""
    keyed = {"video_id": "v1", "key": "made-1"}
    async with stdio(emu, tmp_path) as client:
        made = ok(await client.call_tool("extend_video", keyed))
    async with stdio(emu, tmp_path, "--max-units", "1") as client:
        with anyio.fail_after(10):
            while ok(await client.call_tool("spending", {}))["units_spent"] != "1":
                await anyio.sleep(0.02)
        again = ok(await client.call_tool("extend_video", keyed))
        refused = await client.call_tool("extend_video", {"video_id": "v3", "key": "new-1"})
    assert made["task_id"] == again["task_id"]
    assert refused.is_error
    assert "--max-units 1" in text(refused)
    assert 1 == creates(emu)


async def test_two_concurrent_calls_restarting_a_stopped_chain_start_one_run(
    manual: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A chain stops when Kling refuses its first link's create (the quota, once); eight
    chain_videos calls with its key at once (the server in this process, so that its runs
    can be counted) start one run between them, which makes one task per link."""
    manual.inject(Fault.business(1102), route="create", times=1)
    arguments = {"video_id": "v1", "prompts": ["p1", "p2"], "key": "film"}
    poll = PollPolicy(first_delay=0.02, growth=1.5, max_delay=0.05)
    async with (
        SQLiteJournal(tmp_path / "journal.sqlite3") as journal,
        official(manual, journal=journal, poll_policy=poll) as session,
        anyio.create_task_group() as group,
    ):
        tools = KlingTools(
            session, group, journal=journal, limits=Limits(), out=tmp_path, allow_dirs=()
        )
        async with Client(build_server(tools)) as client:
            ok(await client.call_tool("chain_videos", arguments))
            stopped = await until_state(client, "film", "done", "stopped")
            assert 0 == tools.runs
            results: list[dict[str, Any]] = []

            async def again() -> None:
                results.append(ok(await client.call_tool("chain_videos", arguments)))

            async with anyio.create_task_group() as calls:
                for _ in range(8):
                    calls.start_soon(again)
            assert 1 == tools.runs
            await finish_newest(manual, 2)  # the refused create reached the emulator too
            await finish_newest(manual, 3)
            done = await until_state(client, "film", "done", "stopped")
        tools.stop_runs()
    assert "stopped" == stopped["state"]
    assert ["running"] * 8 == [result["state"] for result in results]
    assert "done" == done["state"], done["reason"]
    assert {"p1": 2, "p2": 1} == prompts_sent(manual)  # p1: refused once, then made once
    assert 2 == len(manual.tasks)
