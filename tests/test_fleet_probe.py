"""Hostile probes of the fleet (issue 16): real processes, a real redis-server, the emulator
over loopback HTTP, default policies. Each test is a defect's reproduction."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from kling_async import KlingSession
from kling_async.testing import Fault, KlingEmulator

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

# One keyed extend in a worker whose host clock runs ``skew`` seconds off (time.time and
# datetime.now), as a host without NTP does; it never returns (the test kills it).
_SKEWED_WORKER = textwrap.dedent(
    """
    import asyncio, datetime as dt, json, sys, time
    cfg = json.loads(sys.argv[1])
    skew = float(cfg["skew"])
    real_time, Real = time.time, dt.datetime
    time.time = lambda: real_time() + skew

    class Meta(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, Real)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, Real)

    class Skewed(Real, metaclass=Meta):
        @classmethod
        def now(cls, tz=None):
            return Real.now(tz) + dt.timedelta(seconds=skew)

    dt.datetime = Skewed
    from kling_async import KlingSession

    async def main():
        async with KlingSession(
            access_key=cfg["access_key"], secret_key=cfg["secret_key"],
            base_url=cfg["base_url"], allow_insecure_http=True, fleet=cfg["redis"],
        ) as session:
            handle = await session.extend(video_id="v-1", prompt="p", key="k-1")
            await handle.wait()

    asyncio.run(main())
    """
)


@pytest.mark.crash
async def test_a_worker_with_a_slow_clock_killed_mid_create_leaves_its_task_to_the_key(
    redis_url: str,
) -> None:
    """A worker whose clock is 10 minutes slow is killed -9 while its create is on the
    wire (the server takes 8 s to answer it). The worker that takes the key over must
    end with that task: instead it judges the create's window closed by the dead worker's
    clock, resends at once, gets "external_task_id already exists" (1201) and records the
    key REFUSED: the task made and paid for is no key's, and nobody waits on it."""
    async with KlingEmulator(task_seconds=lambda _: (0.2, 0.3)) as emulator:
        emulator.inject(Fault.delay(8.0), route="create", times=2)
        config = {
            "base_url": emulator.base_url,
            "access_key": emulator.access_key,
            "secret_key": emulator.secret_key,
            "redis": redis_url,
            "skew": -600.0,
        }
        worker = await anyio.open_process(
            [sys.executable, "-c", _SKEWED_WORKER, json.dumps(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not any(r.route == "create" for r in emulator.requests):
                assert time.monotonic() < deadline, "the worker sent no create"
                await anyio.sleep(0.02)
            await anyio.sleep(0.2)
        finally:
            worker.kill()
            await worker.wait()
        async with KlingSession(
            access_key=emulator.access_key,
            secret_key=emulator.secret_key,
            base_url=emulator.base_url,
            allow_insecure_http=True,
            fleet=redis_url,
        ) as session:
            handle = await session.extend(video_id="v-1", prompt="p", key="k-1")
            task = await handle.wait()
        made = [t.task_id for t in emulator.tasks.values()]
        assert [task.task_id] == made


# Keeps Redis busy for 0.6 s (its own clock), so that a command sent meanwhile waits.
_BUSY = """
local t = redis.call('TIME')
local start = t[1] + t[2] / 1e6
while true do
  local n = redis.call('TIME')
  if n[1] + n[2] / 1e6 - start > 0.6 then break end
end
return 1
"""


@pytest.mark.crash
async def test_an_extend_cancelled_while_its_claim_is_in_redis_leaves_the_key_to_others(
    redis_url: str,
) -> None:
    """A web handler's extend cancelled (a native asyncio cancel: a timeout, a client gone)
    while its key's claim is on its way to Redis: the claim is recorded, and must not be left
    owned by the still-living session. Instead the key stays INTENT under that session's
    lease for its whole life, and every other worker's extend of the key waits and fails."""
    import asyncio

    import redis.asyncio as aioredis

    async with KlingEmulator(task_seconds=lambda _: (0.2, 0.3)) as emulator:

        def session() -> KlingSession:
            return KlingSession(
                access_key=emulator.access_key,
                secret_key=emulator.secret_key,
                base_url=emulator.base_url,
                allow_insecure_http=True,
                fleet=redis_url,
            )

        other = aioredis.Redis.from_url(redis_url)
        try:
            async with session() as first, session() as second:
                await first.extend(video_id="warm", prompt="p", key="warm")  # scripts loaded
                busy = asyncio.create_task(other.eval(_BUSY, 0))
                await asyncio.sleep(0.05)
                extend = asyncio.create_task(first.extend(video_id="v-1", prompt="p", key="k-1"))
                await asyncio.sleep(0.2)
                extend.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await extend
                await busy
                with anyio.move_on_after(10):
                    # The key is free: the other session creates its task (the wait for it
                    # follows the default schedule, whose first poll comes 15 s after).
                    await second.extend(video_id="v-1", prompt="p", key="k-1")
                    return
                pytest.fail("the key stayed owned by the session whose extend was cancelled")
        finally:
            await other.aclose()
