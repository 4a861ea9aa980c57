"""Task states shared by a fleet: one poller for the account, every process's waits wake
from Redis, a lost notification or a lost Redis loses no wake-up."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from kling_async import KlingSession, PollPolicy, RetryPolicy
from kling_async._redis_states import record_hint
from kling_async._task_codec import encode_task
from kling_async.models import Task, TaskStatus
from kling_async.testing import EmulatedTask, KlingEmulator

from .redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio

# A real schedule shrunk to the emulator's tasks (they last 0.5-1.5 s): the counts compare
# what processes send on the same schedule, which an instant policy would not have.
POLICY = {
    "first_delay": 0.2,
    "interval": 0.2,
    "list_interval": 0.2,
    "min_duration": 0.3,
    "max_duration": 2.0,
    "max_delay": 0.5,
}
ROOT = Path(__file__).resolve().parent.parent


def _seconds(low: float, high: float) -> Any:
    def task_seconds(task: EmulatedTask) -> tuple[float, float]:
        total = random.Random(task.video_id).uniform(low, high)
        return total * 0.2, total * 0.8

    return task_seconds


def _session(emu: KlingEmulator, fleet: str | None, **options: Any) -> KlingSession:
    return KlingSession(
        access_key=emu.access_key,
        secret_key=emu.secret_key,
        base_url=emu.base_url,
        poll_policy=PollPolicy(**POLICY),
        retry_policy=RetryPolicy.instant(),
        fleet=fleet,
        **options,
    )


def account_of(base_url: str, access_key: str) -> str:
    """The account's name in Redis, as a session computes it (``SessionConfig.account``)."""
    return hashlib.sha256(f"{base_url}\n{access_key}".encode()).hexdigest()[:16]


def _polls(emu: KlingEmulator) -> int:
    """What the emulator received other than creates."""
    return emu.count("query") + emu.count("list")


async def _make(emu: KlingEmulator, count: int) -> list[str]:
    """``count`` tasks made by a session of no fleet (their creates are not counted)."""
    async with _session(emu, None) as maker:
        return [(await maker.extend(video_id=f"v-{i}", prompt="p")).task_id for i in range(count)]


_ALONE: dict[tuple[str, int], int] = {}


async def _one_session_polls(list_mode: str, count: int) -> int:
    """What one session alone waiting on ``count`` tasks makes the emulator answer."""
    if (list_mode, count) not in _ALONE:
        _ALONE[list_mode, count] = await _alone(list_mode, count)
    return _ALONE[list_mode, count]


async def _alone(list_mode: str, count: int) -> int:
    async with KlingEmulator(task_seconds=_seconds(0.5, 1.5), list_mode=list_mode) as emu:
        ids = await _make(emu, count)
        before = _polls(emu)
        async with _session(emu, None) as session:
            await asyncio.gather(*(session.task(i).wait(timeout=30) for i in ids))
        return _polls(emu) - before


@pytest.mark.parametrize("list_mode", ["ok", "404"], ids=["list offered", "queries only"])
async def test_three_sessions_waiting_on_the_same_50_tasks_send_what_one_sends(
    redis_url: str, list_mode: str
) -> None:
    """Three fleet sessions (each its own Redis link) waiting on the same 50 tasks make the
    emulator answer about what one session alone makes it answer."""
    alone = await _one_session_polls(list_mode, 50)
    async with KlingEmulator(task_seconds=_seconds(0.5, 1.5), list_mode=list_mode) as emu:
        ids = await _make(emu, 50)
        before = _polls(emu)
        sessions = [_session(emu, redis_url) for _ in range(3)]
        for session in sessions:
            await session.__aenter__()
        try:
            waits = [s.task(i).wait(timeout=30) for s in sessions for i in ids]
            tasks = await asyncio.gather(*waits)
        finally:
            for session in sessions:
                await session.aclose()
        fleet = _polls(emu) - before
    assert all(task.done for task in tasks)
    assert fleet <= alone * 1.1 + 5, (fleet, alone)


async def _child(config: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fleet_states_child",
        json.dumps(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


async def _line(child: asyncio.subprocess.Process, timeout: float = 30) -> str:
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout)
    assert line, "the child ended early"
    return line.decode().strip()


async def _until(child: asyncio.subprocess.Process, wanted: str, timeout: float = 30) -> list[str]:
    """Lines up to and with ``wanted``."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        line = await _line(child, max(0.1, deadline - time.monotonic()))
        seen.append(line)
        if line == wanted:
            return seen


@pytest.fixture
async def children() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for child in started:
        if child.returncode is None:
            child.kill()
        await child.wait()


def _config(emu: KlingEmulator, redis_url: str, ids: list[str]) -> dict[str, Any]:
    return {
        "base_url": emu.base_url,
        "access_key": emu.access_key,
        "secret_key": emu.secret_key,
        "redis": redis_url,
        "ids": ids,
        "policy": POLICY,
    }


async def test_three_processes_waiting_on_the_same_50_tasks_send_what_one_sends(
    redis_url: str, children: list[asyncio.subprocess.Process]
) -> None:
    """Three processes waiting on the same 50 tasks: the emulator answers about what one
    session alone makes it answer, and every wait ends."""
    alone = await _one_session_polls("ok", 50)
    async with KlingEmulator(task_seconds=_seconds(0.5, 1.5)) as emu:
        ids = await _make(emu, 50)
        before = _polls(emu)
        for _ in range(3):
            children.append(await _child(_config(emu, redis_url, ids)))
        for child in children:
            lines = await _until(child, "all")
            assert 50 == sum(line.startswith("done ") for line in lines)
        fleet = _polls(emu) - before
    assert fleet <= alone * 1.1 + 5, (fleet, alone)


async def test_a_killed_leader_is_replaced_and_the_waits_end(
    redis_url: str, children: list[asyncio.subprocess.Process]
) -> None:
    """kill -9 of the process that leads the polling: another takes the lead within a few
    seconds and its waits end."""
    async with KlingEmulator(task_seconds=_seconds(4.0, 5.0)) as emu:
        ids = await _make(emu, 10)
        first = await _child(_config(emu, redis_url, ids))
        children.append(first)
        await _until(first, "leads")
        second = await _child(_config(emu, redis_url, ids))
        children.append(second)
        await _until(second, "ready")
        await asyncio.sleep(0.5)
        first.kill()
        killed = time.monotonic()
        await _until(second, "leads", timeout=10)
        took_over = time.monotonic() - killed
        lines = await _until(second, "all", timeout=20)
    assert 10 == sum(line.startswith("done ") for line in lines)
    assert took_over < 6, took_over  # LEADER_LEASE (3 s) + a renewal round (1 s), generous


async def _foreign_leader(url: str, account: str) -> aioredis.Redis:
    """A client that made some other (silent) process the fleet's leader for a minute."""
    client = aioredis.Redis.from_url(url)
    await client.set(f"kling-async:{account}:leader", "foreign", px=60_000)
    return client


def _done_task(task_id: str) -> Task:
    now = time.time()
    return Task(
        task_id=task_id,
        status=TaskStatus.SUCCEED,
        updated_at=dt.datetime.fromtimestamp(now, tz=dt.timezone.utc),
    )


async def test_a_lost_notification_still_wakes_the_wait_by_the_slow_reread(
    redis_url: str,
) -> None:
    """A state written to Redis with no event on the stream (the notification lost) still
    ends a wait in another session, by its slow re-read; it queried nothing itself."""
    async with KlingEmulator(task_seconds=_seconds(30, 40)) as emu:
        (task_id,) = await _make(emu, 1)
        account = account_of(emu.base_url, emu.access_key)
        client = await _foreign_leader(redis_url, account)
        before = _polls(emu)
        try:
            async with _session(emu, redis_url) as session:
                wait = asyncio.create_task(session.task(task_id).wait(timeout=10))
                await asyncio.sleep(0.3)
                state = encode_task(_done_task(task_id))
                millis = int(time.time() * 1000)
                await client.set(f"kling-async:{account}:task:{task_id}", f"2:{millis}:{state}")
                task = await wait
        finally:
            await client.aclose()
        assert TaskStatus.SUCCEED == task.status
        assert 0 == _polls(emu) - before


@pytest.mark.parametrize("confirm", [False, True], ids=["trusted", "confirmed by the poller"])
async def test_a_recorded_hint_wakes_a_wait_in_another_session_at_once(
    redis_url: str, confirm: bool
) -> None:
    """record_hint (a callback receiver's) wakes a wait of another session within 100 ms
    (asserted under 1 s for CI); with confirm, the leader's one query confirms it first."""
    async with KlingEmulator(task_seconds=_seconds(30, 40)) as emu:
        (task_id,) = await _make(emu, 1)
        account = account_of(emu.base_url, emu.access_key)
        client = (
            aioredis.Redis.from_url(redis_url)
            if confirm
            else await _foreign_leader(redis_url, account)
        )
        try:
            async with _session(emu, redis_url) as leader, _session(emu, redis_url) as follower:
                if confirm:  # a session that polls takes the lead (and follows the task)
                    await leader.task(task_id).poll()
                    await asyncio.sleep(0.5)
                wait = asyncio.create_task(follower.task(task_id).wait(timeout=10))
                await asyncio.sleep(0.5)
                emu.set_status(task_id, "succeed")
                queries = emu.count("query")
                started = time.perf_counter()
                await record_hint(client, account, task_id, _done_task(task_id), confirm=confirm)
                task = await wait
                woke = time.perf_counter() - started
        finally:
            await client.aclose()
    print(f"hint to wake: {woke * 1000:.1f} ms (confirm={confirm})")
    assert TaskStatus.SUCCEED == task.status
    assert woke < 1.0
    if confirm:
        assert 1 == emu.count("query") - queries


async def test_waits_fall_back_to_polling_while_redis_is_away_and_resume_after(
    tmp_path: Path,
) -> None:
    """Redis stopped mid-wait: every wait still ends (each session polls for itself); started
    again on the same port and directory, one session polls for all once more."""
    server = RedisServer(port=free_port(), directory=tmp_path).start()
    try:
        async with KlingEmulator(task_seconds=_seconds(2.0, 3.0)) as emu:
            ids = await _make(emu, 20)
            first, later = ids[:10], ids[10:]
            sessions = [_session(emu, server.url) for _ in range(2)]
            for session in sessions:
                await session.__aenter__()
            try:
                waits = [
                    asyncio.create_task(s.task(i).wait(timeout=30)) for s in sessions for i in first
                ]
                await asyncio.sleep(0.5)
                server.stop()
                assert all(t.done for t in await asyncio.gather(*waits))
                server.start()
                await asyncio.sleep(2.5)  # the sessions see Redis back and elect a leader
                account = account_of(emu.base_url, emu.access_key)
                async with aioredis.Redis.from_url(server.url) as client:
                    assert await client.exists(f"kling-async:{account}:leader")
                before = _polls(emu)
                tasks = await asyncio.gather(
                    *(s.task(i).wait(timeout=30) for s in sessions for i in later)
                )
                both = _polls(emu) - before
            finally:
                for session in sessions:
                    await session.aclose()
        assert all(task.done for task in tasks)
        # 10 tasks, one poller: a list round per 0.2 s at most for the ~3 s they last.
        assert both <= 30, both
    finally:
        server.close()
