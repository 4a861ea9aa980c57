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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from kling_async import KlingSession, PollPolicy, RetryPolicy
from kling_async._fleet import Fleet
from kling_async._redis_states import Hints
from kling_async._task_codec import encode_task
from kling_async.models import Task, TaskStatus
from kling_async.testing import EmulatedTask, KlingEmulator

from .redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio

# A real schedule shrunk to the emulator's tasks (they last 0.3-0.9 s): the counts compare
# what processes send on the same schedule, which an instant policy would not have.
POLICY = {
    "first_delay": 0.2,
    "interval": 0.2,
    "list_interval": 0.2,
    "min_duration": 0.3,
    "max_duration": 2.0,
    "max_delay": 0.5,
    "jitter": 0.0,  # the same schedule in every run: the counts compare like with like
    "learn": False,
}
ROOT = Path(__file__).resolve().parent.parent


def _seconds(low: float, high: float) -> Any:
    def task_seconds(task: EmulatedTask) -> tuple[float, float]:
        # Seeded by the video's number alone: tasks a-<i> and b-<i> are twins.
        total = random.Random(task.video_id.rpartition("-")[2]).uniform(low, high)
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


async def _make(emu: KlingEmulator, count: int, first: int = 0, name: str = "v") -> list[str]:
    """``count`` tasks made by a session of no fleet (their creates are not counted)."""
    async with _session(emu, None) as maker:
        return [
            (await maker.extend(video_id=f"{name}-{i}", prompt="p")).task_id
            for i in range(first, first + count)
        ]


def _queries(emu: KlingEmulator, ids: list[str]) -> int:
    """Queries the emulator received for ``ids``."""
    wanted = set(ids)
    return sum(
        1 for r in emu.requests if r.route == "query" and r.path.rpartition("/")[2] in wanted
    )


async def _alone_beside(
    emu: KlingEmulator, fleet: Callable[[list[str]], Awaitable[None]]
) -> tuple[int, int]:
    """Queries for 50 tasks waited on by one session of no fleet, and for their 50 twins
    (same durations) waited on by ``fleet`` at the same time: like against like."""
    alone_ids = await _make(emu, 50, name="a")
    fleet_ids = await _make(emu, 50, name="b")
    async with _session(emu, None) as session:
        await asyncio.gather(
            *(session.task(i).wait(timeout=30) for i in alone_ids), fleet(fleet_ids)
        )
    return _queries(emu, alone_ids), _queries(emu, fleet_ids)


_ALONE: dict[tuple[str, int], int] = {}


async def _one_session_polls(list_mode: str, count: int) -> int:
    """What one session alone waiting on ``count`` tasks makes the emulator answer."""
    if (list_mode, count) not in _ALONE:
        _ALONE[list_mode, count] = await _alone(list_mode, count)
    return _ALONE[list_mode, count]


async def _alone(list_mode: str, count: int) -> int:
    async with KlingEmulator(task_seconds=_seconds(0.3, 0.9), list_mode=list_mode) as emu:
        ids = await _make(emu, count)
        before = _polls(emu)
        async with _session(emu, None) as session:
            await asyncio.gather(*(session.task(i).wait(timeout=30) for i in ids))
        return _polls(emu) - before


@pytest.mark.crash
async def test_three_sessions_waiting_on_the_same_50_tasks_send_what_one_sends(
    redis_url: str,
) -> None:
    """Three fleet sessions (each its own Redis link) waiting on the same 50 tasks (no list:
    every poll is a query) make the emulator answer about what one session alone does."""
    async with KlingEmulator(task_seconds=_seconds(0.3, 0.9), list_mode="404") as emu:
        sessions = [_session(emu, redis_url) for _ in range(3)]
        for session in sessions:
            await session.__aenter__()

        async def fleet(ids: list[str]) -> None:
            waits = [s.task(i).wait(timeout=30) for s in sessions for i in ids]
            assert all(task.done for task in await asyncio.gather(*waits))

        try:
            alone, shared = await _alone_beside(emu, fleet)
        finally:
            for session in sessions:
                await session.aclose()
    print(f"3 sessions: {shared} queries, one session alone: {alone}")
    assert shared <= alone * 1.1 + 5, (shared, alone)


async def test_with_the_list_three_sessions_read_the_pages_one_reads(redis_url: str) -> None:
    """Where the list is offered, three fleet sessions waiting on the same 50 tasks read
    about as many pages (and make as many queries) as one session alone."""
    alone = await _one_session_polls("ok", 50)
    async with KlingEmulator(task_seconds=_seconds(0.3, 0.9)) as emu:
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
        shared = _polls(emu) - before
    assert all(task.done for task in tasks)
    print(f"3 sessions, list: {shared} requests, one session alone: {alone}")
    assert shared <= alone * 1.1 + 5, (shared, alone)


async def _child(config: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fleet_states_child",
        json.dumps(config),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
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


def _config(emu: KlingEmulator, redis_url: str, ids: list[str] | None) -> dict[str, Any]:
    return {
        "base_url": emu.base_url,
        "access_key": emu.access_key,
        "secret_key": emu.secret_key,
        "redis": redis_url,
        "ids": ids,
        "policy": POLICY,
    }


@pytest.mark.crash
async def test_three_processes_waiting_on_the_same_50_tasks_send_what_one_sends(
    redis_url: str, children: list[asyncio.subprocess.Process]
) -> None:
    """Three processes waiting on the same 50 tasks (no list: every poll is a query): the
    emulator answers about what one session alone makes it answer, and every wait ends."""
    async with KlingEmulator(task_seconds=_seconds(0.3, 0.9), list_mode="404") as emu:
        for _ in range(3):
            children.append(await _child(_config(emu, redis_url, None)))
        for child in children:
            await _until(child, "ready")

        async def fleet(ids: list[str]) -> None:
            for child in children:
                assert child.stdin is not None
                child.stdin.write(json.dumps(ids).encode() + b"\n")
                await child.stdin.drain()
            for child in children:
                lines = await _until(child, "all")
                assert 50 == sum(line.startswith("done ") for line in lines)

        alone, shared = await _alone_beside(emu, fleet)
    print(f"3 processes: {shared} queries, one session alone: {alone}")
    # Processes start their waits a few milliseconds apart: a little slack for the timing.
    assert shared <= alone * 1.1 + 10, (shared, alone)


@pytest.mark.crash
async def test_a_killed_leader_is_replaced_and_the_waits_end(
    redis_url: str, children: list[asyncio.subprocess.Process]
) -> None:
    """kill -9 of the process that leads the polling: another takes the lead within a few
    seconds and its waits end."""
    async with KlingEmulator(task_seconds=_seconds(3.5, 4.5)) as emu:
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
    print(f"took over {took_over:.2f} s after the kill")
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


@pytest.mark.crash
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
                wait = asyncio.create_task(session.task(task_id).wait(timeout=25))
                await asyncio.sleep(0.3)
                state = encode_task(_done_task(task_id))
                millis = int(time.time() * 1000)
                await client.set(f"kling-async:{account}:task:{task_id}", f"2:{millis}:{state}")
                task = await wait  # on the re-read's slow beat (REREAD_EVERY)
        finally:
            await client.aclose()
        assert TaskStatus.SUCCEED == task.status
        assert 0 == _polls(emu) - before


@pytest.mark.parametrize("confirm", [False, True], ids=["trusted", "confirmed by the poller"])
async def test_a_recorded_hint_wakes_a_wait_in_another_session_at_once(
    redis_url: str, confirm: bool
) -> None:
    """A recorded hint (a callback receiver's) wakes a wait of another session within 100 ms
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
                await Hints(Fleet(client, account=None)).record(
                    account, task_id, _done_task(task_id), confirm=confirm
                )
                task = await wait
                woke = time.perf_counter() - started
        finally:
            await client.aclose()
    print(f"hint to wake: {woke * 1000:.1f} ms (confirm={confirm})")
    assert TaskStatus.SUCCEED == task.status
    assert woke < 1.0
    if confirm:
        assert 1 == emu.count("query") - queries


@pytest.mark.crash
async def test_waits_fall_back_to_polling_while_redis_is_away_and_resume_after(
    tmp_path: Path,
) -> None:
    """Redis stopped mid-wait: every wait still ends (each session polls for itself); started
    again on the same port and directory, one session polls for all once more."""
    server = RedisServer(port=free_port(), directory=tmp_path).start()
    try:
        async with KlingEmulator(task_seconds=_seconds(1.5, 2.0)) as emu:
            first = await _make(emu, 10)
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
                await asyncio.sleep(1.5)  # the sessions see Redis back; the leader renews
                account = account_of(emu.base_url, emu.access_key)
                async with aioredis.Redis.from_url(server.url) as client:
                    assert await client.exists(f"kling-async:{account}:leader")
                later = await _make(emu, 10, first=10)
                before = emu.count("list")
                tasks = await asyncio.gather(
                    *(s.task(i).wait(timeout=30) for s in sessions for i in later)
                )
                rounds = emu.count("list") - before
            finally:
                for session in sessions:
                    await session.aclose()
        assert all(task.done for task in tasks)
        # One poller reads a list page per 0.2 s for the <= 2 s the tasks last; two would
        # read twice as many.
        print(f"list rounds after the restart: {rounds}")
        assert rounds <= 14, rounds
    finally:
        server.close()


async def test_a_leader_whose_lease_was_taken_stops_polling_at_once(redis_url: str) -> None:
    """Fencing: once another token holds the lease, the old leader sends nothing more (its
    next renewal or write says so) and its waits follow the shared state."""
    async with KlingEmulator(task_seconds=_seconds(30, 40)) as emu:
        ids = await _make(emu, 5)
        account = account_of(emu.base_url, emu.access_key)
        async with _session(emu, redis_url) as session:
            waits = [asyncio.create_task(session.task(i).wait(timeout=20)) for i in ids]
            with anyio.fail_after(5):  # it leads, so it polls (what Redis did not know)
                while not _polls(emu):
                    await asyncio.sleep(0.05)
            client = await _foreign_leader(redis_url, account)
            try:
                await asyncio.sleep(1.2)  # a renewal round (1 s) finds the lease gone
                before = _polls(emu)
                await asyncio.sleep(1.5)
                assert before == _polls(emu)
                assert not any(wait.done() for wait in waits)
                for task_id in ids:  # the (foreign) leader's news reaches its waits
                    await Hints(Fleet(client, account=None)).record(
                        account, task_id, _done_task(task_id), confirm=False
                    )
                tasks = await asyncio.gather(*waits)
            finally:
                await client.aclose()
        assert all(task.done for task in tasks)
        assert before == _polls(emu)


async def test_the_leader_polls_the_tasks_that_hold_slots_until_they_finish(
    redis_url: str,
) -> None:
    """A task id bound to a parallel-task slot (not a pending create) is polled by the leader
    though no process waits on it, until its finished state is in Redis."""
    async with KlingEmulator(task_seconds=_seconds(0.5, 1.0)) as emu:
        (task_id,) = await _make(emu, 1)
        account = account_of(emu.base_url, emu.access_key)
        async with aioredis.Redis.from_url(redis_url) as client, _session(emu, redis_url) as s:
            expiry = int(time.time() * 1000) + 60_000
            await client.zadd(
                f"kling-async:{account}:slots", {task_id: expiry, "pending:x": expiry}
            )
            s.task("some-other-task")  # the session takes part in the polling from now on
            key = f"kling-async:{account}:task:{task_id}"
            for _ in range(60):
                value = await client.get(key)
                if value is not None and value.startswith(b"2:"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the slot's task was not seen finished: {value!r}")
        assert emu.count("query") + emu.count("list") > 0


async def test_the_leader_s_wait_on_a_task_redis_knows_sends_nothing(redis_url: str) -> None:
    """A wait on tasks this process never saw (another process made them and saw them
    finish) gives Redis its first look: the leader sends no query for them (a wait-all over
    a fleet's thousand finished tasks sent a query each)."""
    async with KlingEmulator(task_seconds=_seconds(30, 40)) as emu:
        ids = await _make(emu, 5)
        account = account_of(emu.base_url, emu.access_key)
        async with aioredis.Redis.from_url(redis_url) as client:
            hints = Hints(Fleet(client, account=None))
            for task_id in ids:  # what the process that saw them finish recorded
                await hints.record(account, task_id, _done_task(task_id), confirm=False)
            before = _polls(emu)
            async with _session(emu, redis_url) as session:
                with anyio.fail_after(10):
                    while not await client.exists(f"kling-async:{account}:leader"):
                        await asyncio.sleep(0.05)  # the only session: it leads (it polls)
                    tasks = await asyncio.gather(*(session.task(i).wait() for i in ids))

        assert all(task.done for task in tasks)
        assert before == _polls(emu)
