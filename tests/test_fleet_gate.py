"""The fleet's parallel-task gate: real processes, one real redis-server, one emulator.

A create takes a slot in Redis before it is sent and keeps it until its task is seen
finished by any process; with the limit set the fleet meets no 1303 of its own making, and
without it the limit is learned from the first 1303s.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
import redis.asyncio as aioredis

from kling_async import FleetUnavailableError, PollPolicy, RetryPolicy
from kling_async._config import configure
from kling_async._redis_gate import PROBE
from kling_async.testing import KlingEmulator

from .helpers import official
from .redis_server import RedisServer

if TYPE_CHECKING:
    from anyio.abc import Process

pytestmark = pytest.mark.anyio

CHILD = str(Path(__file__).with_name("fleet_gate_child.py"))


def account_prefix(emulator: KlingEmulator) -> str:
    """The fleet's key prefix for the emulator's account (as the sessions compute it)."""
    config = configure(
        base_url=emulator.base_url,
        access_key=emulator.access_key,
        secret_key=emulator.secret_key,
        api_key=None,
        max_in_flight=1,
        connect_timeout=1,
        read_timeout=1,
        stamp_external_id=None,
        list_refresh=None,
        allow_insecure_http=False,
        max_response_bytes=1,
        environ={},
    )
    return f"kling-async:{config.account}"


def refusals(emulator: KlingEmulator) -> int:
    """Creates the emulator refused with 1303 (HTTP 429)."""
    return sum(1 for r in emulator.requests if r.route == "create" and r.status == 429)


async def read_line(process: Process) -> str:
    """The child's next line of output."""
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        chunk = await process.stdout.receive(1)
        data += chunk
    return data.decode().strip()


async def run_fleet(
    emulator: KlingEmulator, redis_url: str, *, processes: int, each: int, limit: str
) -> list[dict[str, object]]:
    """``processes`` children making ``each`` waited extends (5 at a time); their reports."""
    children = [
        await anyio.open_process(
            [
                sys.executable,
                CHILD,
                "extend",
                emulator.base_url,
                redis_url,
                f"p{n}",
                str(each),
                limit,
                "5",
            ],
            stderr=None,  # inherited: a full pipe must not stall a child
        )
        for n in range(processes)
    ]
    try:
        for child in children:
            assert "ready" == await read_line(child)
        for child in children:
            assert child.stdin is not None
            await child.stdin.send(b"go\n")
        with anyio.fail_after(120):
            reports = [json.loads(await read_line(child)) for child in children]
            for child in children:
                assert 0 == await child.wait()
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await child.aclose()
    return reports


@pytest.mark.crash
async def test_a_set_limit_keeps_the_fleet_off_1303(redis_url: str) -> None:
    """4 processes x 25 extends, Kling's limit 5 and the fleet's 5: no create meets 1303, and
    every extend is made once."""
    async with KlingEmulator(max_running=5) as emulator:
        reports = await run_fleet(emulator, redis_url, processes=4, each=25, limit="5")
        made = [task for report in reports for task in report["made"]]  # type: ignore[attr-defined]
        assert 0 == refusals(emulator)
        assert 100 == len(set(made)) == emulator.count("create") == len(emulator.tasks)
        videos = sorted(task.video_id for task in emulator.tasks.values())
        assert sorted(f"p{n}-{i}" for n in range(4) for i in range(25)) == videos
        trips = sum(int(report["round_trips"]) for report in reports)  # type: ignore[call-overload]
        # Per create: acquire, bind, free; plus re-looks at a full gate when another process
        # frees a slot (every waiting process looks, one wins) and a few renewals.
        assert trips <= 100 * 10
        client = aioredis.Redis.from_url(redis_url)
        try:
            prefix = account_prefix(emulator)
            assert 0 == await client.zcard(f"{prefix}:slots")  # every slot came back
        finally:
            await client.aclose()


@pytest.mark.crash
async def test_without_a_limit_the_fleet_learns_it_from_the_first_1303s(redis_url: str) -> None:
    """The same fleet without max_parallel_tasks: a few 1303s teach it the limit (kept in
    Redis), after which no create meets one; every extend is still made once."""
    async with KlingEmulator(max_running=5) as emulator:
        reports = await run_fleet(emulator, redis_url, processes=4, each=25, limit="none")
        made = [task for report in reports for task in report["made"]]  # type: ignore[attr-defined]
        assert 100 == len(set(made)) == len(emulator.tasks)
        creates = [r for r in emulator.requests if r.route == "create"]
        refused = [i for i, r in enumerate(creates) if r.status == 429]
        assert refused, "the limit is learned from 1303s"
        assert len(refused) <= 2 * PROBE
        assert all(i < len(creates) // 2 for i in refused)  # learned early; none after
        client = aioredis.Redis.from_url(redis_url)
        try:
            learned = int(await client.get(f"{account_prefix(emulator)}:limit"))
            assert 1 <= learned <= 5
        finally:
            await client.aclose()


@pytest.mark.crash
async def test_a_killed_process_s_slots_come_back_when_another_sees_its_tasks_finish(
    redis_url: str,
) -> None:
    """A process killed while its 3 tasks run: its slots stay taken (the account still runs
    the tasks) until another process sees them finished; then a create passes at once."""
    async with KlingEmulator(auto_advance=False) as emulator:
        held = await hold_and_kill(emulator, redis_url, count=3, bound_ttl=600)
        async with official(
            emulator, fleet=redis_url, max_parallel_tasks=3, retry_policy=RetryPolicy()
        ) as session:
            handles = [session.task(task_id) for task_id in held]
            for handle in handles:
                await handle.poll()  # seen running here
            for task_id in held:
                emulator.set_status(task_id, "succeed")
            for handle in handles:
                await handle.wait(timeout=10)  # seen finished here: their slots are freed
            with anyio.fail_after(10):
                await session.extend(video_id="after", prompt="p")
        assert 4 == len(emulator.tasks)


@pytest.mark.crash
async def test_a_killed_process_s_slots_expire_when_nobody_sees_its_tasks(
    redis_url: str,
) -> None:
    """Nobody watches the dead process's tasks: their slots end at their TTL, no renewal
    keeping them, and a create waiting at the full gate then passes."""
    async with KlingEmulator(auto_advance=False) as emulator:
        await hold_and_kill(emulator, redis_url, count=2, bound_ttl=1.0)
        async with official(
            emulator, fleet=redis_url, max_parallel_tasks=2, retry_policy=RetryPolicy()
        ) as session:
            with anyio.fail_after(15):
                await session.extend(video_id="after", prompt="p")
        assert 3 == len(emulator.tasks)


async def hold_and_kill(
    emulator: KlingEmulator, redis_url: str, *, count: int, bound_ttl: float
) -> list[str]:
    """A child makes ``count`` tasks under the fleet's gate and is killed (SIGKILL); their
    ids, once the child's slots are seen bound in Redis."""
    child = await anyio.open_process(
        [sys.executable, CHILD, "hold", emulator.base_url, redis_url, str(count), str(bound_ttl)],
        stderr=None,
    )
    try:
        with anyio.fail_after(30):
            held: list[str] = json.loads(await read_line(child))
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await child.aclose()
    client = aioredis.Redis.from_url(redis_url)
    try:
        slots = await client.zrange(f"{account_prefix(emulator)}:slots", 0, -1)
    finally:
        await client.aclose()
    assert sorted(held) == sorted(member.decode() for member in slots)
    return held


async def test_redis_down_at_acquire_raises_and_sends_nothing() -> None:
    """Redis stops after the session opened: a create raises FleetUnavailableError before
    anything is sent."""
    server = RedisServer().start()
    try:
        async with (
            KlingEmulator() as emulator,
            official(emulator, fleet=server.url, poll_policy=PollPolicy.instant()) as session,
        ):
            server.stop(kill=True)
            with pytest.raises(FleetUnavailableError):
                await session.extend(video_id="video-1", prompt="p")
            assert 0 == emulator.count("create")
    finally:
        server.close()
