"""Emulator specification: per-task durations, finish times, and staying cheap at scale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from kling_async.testing import EmulatedTask, KlingEmulator

from .test_emulator import EXTEND, FakeClock, call, create, query

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def status_of(http: aiohttp.ClientSession, emu: KlingEmulator, task_id: str) -> str:
    status: str = (await query(http, emu.base_url, task_id)).body["data"]["task_status"]
    return status


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (the ticker works in the background)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_each_task_gets_its_own_durations(http: aiohttp.ClientSession) -> None:
    """task_seconds(task) -> (submitted, processing) seconds schedules each task on its own."""
    seen: list[tuple[int, str]] = []

    def durations(task: EmulatedTask) -> tuple[float, float]:
        seen.append((task.index, task.video_id))
        return (10.0 * (task.index + 1), 5.0)

    clock = FakeClock()
    async with KlingEmulator(task_seconds=durations) as emu:
        emu.clock = clock
        ids = [
            (await create(http, emu.base_url, video_id=f"v{i}")).body["data"]["task_id"]
            for i in range(2)
        ]
        assert [(0, "v0"), (1, "v1")] == seen
        first, second = (emu.tasks[i] for i in ids)
        created = [t.created_at_ms / 1000 for t in (first, second)]
        assert [(created[0] + 10, created[0] + 15), (created[1] + 20, created[1] + 25)] == [
            (t.starts_at, t.finishes_at) for t in (first, second)
        ]
        assert [True, True] == [t.timed for t in (first, second)]
        clock.now += 12
        assert ["processing", "submitted"] == [await status_of(http, emu, i) for i in ids]
        clock.now += 10
        assert ["succeed", "processing"] == [await status_of(http, emu, i) for i in ids]


async def test_updated_at_is_the_scheduled_finish(http: aiohttp.ClientSession) -> None:
    """A time-driven task's updated_at is its finishes_at (in ms), however late it is seen."""
    clock = FakeClock()
    async with KlingEmulator(task_seconds=lambda task: (1.5, 2.25)) as emu:
        emu.clock = clock
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        clock.now += 100
        final = (await query(http, emu.base_url, task_id)).body["data"]
        task = emu.tasks[task_id]
        assert task.finishes_at is not None
        assert ("succeed", round(task.finishes_at * 1000)) == (
            final["task_status"],
            final["updated_at"],
        )
        assert 3750 == final["updated_at"] - final["created_at"]


async def test_the_ticker_finishes_tasks_without_requests(http: aiohttp.ClientSession) -> None:
    """Per-task schedules advance in the background: no query or list is needed."""
    clock = FakeClock()
    async with KlingEmulator(task_seconds=lambda task: (0.0, 1.0 + task.index)) as emu:
        emu.clock = clock
        for _ in range(3):
            await create(http, emu.base_url)
        clock.now += 2.5
        await until(lambda: [t.status for t in emu.tasks.values()].count("succeed") == 2)
        assert ["succeed", "succeed", "processing"] == [t.status for t in emu.tasks.values()]
        assert 0 == emu.count("query") + emu.count("list")


async def test_task_seconds_wins_over_step_seconds(http: aiohttp.ClientSession) -> None:
    """With both set, task_seconds decides; step_seconds changes only later tasks."""
    async with KlingEmulator(step_seconds=100, task_seconds=lambda task: (0.0, 0.0)) as emu:
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        assert "succeed" == await status_of(http, emu, task_id)
    clock = FakeClock()
    async with KlingEmulator(step_seconds=100) as emu:
        emu.clock = clock
        old = (await create(http, emu.base_url)).body["data"]["task_id"]
        emu.step_seconds = 1
        new = (await create(http, emu.base_url)).body["data"]["task_id"]
        clock.now += 3
        assert ["submitted", "succeed"] == [await status_of(http, emu, i) for i in (old, new)]


@pytest.mark.parametrize(
    "bad",
    [lambda task: (1, -1), lambda task: [1, 2], lambda task: ("1", 2), lambda task: 1 / 0],
    ids=["negative", "list", "text", "raises"],
)
async def test_a_broken_task_seconds_is_5000(
    http: aiohttp.ClientSession, bad: Callable[[EmulatedTask], Any]
) -> None:
    """A task_seconds that raises or returns no (seconds, seconds) pair fails the create."""
    async with KlingEmulator(task_seconds=bad) as emu:
        reply = await create(http, emu.base_url)
        assert (500, 5000) == (reply.status, reply.body["code"])
        assert "task_seconds" in reply.body["message"]
        assert {} == emu.tasks


async def test_poll_driven_tasks_record_when_they_finished(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """A task that advances by polls gets finishes_at (emu.clock) when it finishes."""
    clock = FakeClock()
    emu.clock = clock
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    await status_of(http, emu, task_id)
    await status_of(http, emu, task_id)
    assert (False, None, None) == (
        emu.tasks[task_id].timed,
        emu.tasks[task_id].starts_at,
        emu.tasks[task_id].finishes_at,
    )
    clock.now += 7
    await status_of(http, emu, task_id)
    assert clock.now == emu.tasks[task_id].finishes_at


async def test_time_frees_a_parallel_slot(http: aiohttp.ClientSession) -> None:
    """With max_running, a task finishing by time frees its slot for the next create."""
    clock = FakeClock()
    async with KlingEmulator(max_running=1, task_seconds=lambda task: (0.0, 10.0)) as emu:
        emu.clock = clock
        assert 200 == (await create(http, emu.base_url)).status
        refused = await create(http, emu.base_url)
        assert (429, 1303) == (refused.status, refused.body["code"])
        clock.now += 10
        assert 200 == (await create(http, emu.base_url)).status


async def test_twelve_hundred_timed_tasks(http: aiohttp.ClientSession) -> None:
    """1,200 timed tasks: pages of 500 come newest first and show exactly the finished ones."""
    clock = FakeClock()
    async with KlingEmulator(task_seconds=lambda task: (0.0, float(task.index))) as emu:
        emu.clock = clock
        replies = await asyncio.gather(*(create(http, emu.base_url) for _ in range(1200)))
        assert {200} == {r.status for r in replies}
        clock.now += 999.5
        pages = [
            (await call(http, "GET", f"{emu.base_url}{EXTEND}?pageNum={n}&pageSize=500")).body[
                "data"
            ]
            for n in (1, 2, 3, 4)
        ]
        assert [500, 500, 200, 0] == [len(page) for page in pages]
        listed = [task for page in pages for task in page]
        by_index = [t.task_id for t in sorted(emu.tasks.values(), key=lambda t: t.index)]
        assert by_index[::-1] == [t["task_id"] for t in listed]
        assert [("processing", 200), ("succeed", 1000)] == sorted(
            (status, [t["task_status"] for t in listed].count(status))
            for status in {"processing", "succeed"}
        )


async def test_a_restarted_emulator_keeps_ticking(http: aiohttp.ClientSession) -> None:
    """After close() and start(), time-driven tasks still advance in the background."""
    clock = FakeClock()
    emu = KlingEmulator(task_seconds=lambda task: (0.0, 1.0))
    emu.clock = clock
    await emu.start()
    try:
        await create(http, emu.base_url)
    finally:
        await emu.close()
    clock.now += 2
    async with emu:
        await until(lambda: ["succeed"] == [t.status for t in emu.tasks.values()])
        (task,) = emu.tasks.values()
        assert task.media_base_url == emu.media_url
