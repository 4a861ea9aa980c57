"""The fleet's pace (`RedisPace`): one token bucket in Redis for every process of an account.

The Lua bucket keeps `Pace`'s arithmetic (both run on one sequence), grants never exceed the
bucket however many take at once, a 1302 met by one process slows another that met none
(in its own process, on one emulator) and both climb back until the pace switches off, and
Redis lost mid-burst leaves requests flowing at the local pace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from kling_async import RetryPolicy, sansio
from kling_async._account import DeadlinePassed
from kling_async._fleet import Fleet
from kling_async._pace import Pace
from kling_async._pace_lua import PACE_SCRIPT
from kling_async._redis_pace import RedisPace
from kling_async.errors import FleetError, KlingError, SessionClosedError
from kling_async.testing import Fault, KlingEmulator

from .fleet_pace_child import Counts, paced_wire
from .helpers import official
from .redis_server import RedisServer

CHILD = Path(__file__).with_name("fleet_pace_child.py")
ACCOUNT = "pace-test"
KEYS = [f"kling-async:{ACCOUNT}:pace", f"kling-async:{ACCOUNT}:pace:sent", "chan"]
NEVER = 1e9  # off_after: the agreement test compares `Pace`, which never switches off

pytestmark = pytest.mark.anyio


class LuaBucket:
    """The Lua script driven by hand: the test's own clock instead of Redis's."""

    def __init__(self, client: redis.Redis, off_after: float = NEVER) -> None:
        self.client = client
        self.script = client.register_script(PACE_SCRIPT)
        self.off_after = off_after

    def run(self, now: float, *args: object) -> tuple[bool, float, int, float]:
        reply = self.script(
            keys=KEYS, args=[repr(self.off_after), repr(now), *(str(a) for a in args)]
        )
        return int(reply[0]) == 1, float(reply[1]), int(reply[3]), float(reply[4])

    def tokens(self) -> float:
        return float(self.client.hget(KEYS[0], "tokens") or 0)


# -- the Lua bucket and Pace agree ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_the_lua_bucket_keeps_the_arithmetic_of_pace(redis_url: str, seed: int) -> None:
    """One sequence of sends, 1302s and turns, through `Pace` and through the Lua script:
    the same rate, tokens, grants and waits at every step (values in, values out)."""
    rng = random.Random(seed)
    pace = Pace()
    lua = LuaBucket(redis.Redis.from_url(redis_url))
    now = 1000.0
    for n in range(int(rng.uniform(10, 60))):  # a burst at some rate before the 1302
        pace.sent(now + n / 40)
    now += 1.0
    steps = 0
    while steps < 300:
        now += rng.choice([0.0, 0.001, 0.01, 0.05, 0.2, 0.7])
        event = rng.random()
        if event < 0.08 or not pace.enabled:  # a 1302, for a request sent a while ago
            sent_at = now - rng.choice([0.003, 0.05, 0.4, 2.0])
            recent = pace.recent(now)
            pace.throttled(now, sent_at)
            lua.run(now, "cut", repr(now - sent_at), repr(recent), "a")
        elif event < 0.2:  # a beat: this process's send rate reported, the rate climbs
            lua.run(now, "beat", "a", repr(pace.recent(now)))
            pace.succeeded(now)
        else:  # a turn (the rate climbs first: a reply came before it)
            lua.run(now, "beat", "a", repr(pace.recent(now)))
            pace.succeeded(now)
            ticket = pace.join()
            delay = pace.turn(ticket, now)
            on, rate, granted, wait = lua.run(now, "take", 1)
            assert on
            assert rate == pytest.approx(pace.rate, rel=1e-9)
            assert granted == (1 if delay == 0.0 else 0)
            if delay:
                pace.leave(ticket)
                assert wait == pytest.approx(delay, rel=1e-9)
            else:
                pace.sent(now)
        assert pace.rate == pytest.approx(float(lua.client.hget(KEYS[0], "rate")), rel=1e-9)
        assert pace.tokens == pytest.approx(lua.tokens(), rel=1e-9, abs=1e-12)
        steps += 1


@pytest.mark.crash
def test_the_pace_switches_off_once_back_above_the_rate_before_the_cut(redis_url: str) -> None:
    """`Pace` stays on for good; the fleet's bucket switches off once its rate has stayed at
    or above the rate measured before the last cut for ``off_after`` seconds."""
    lua = LuaBucket(redis.Redis.from_url(redis_url), off_after=3.0)
    on, rate, _, _ = lua.run(100.0, "cut", "0.01", "20.0", "a")
    assert (on, rate) == (True, pytest.approx(14.0))
    states = []
    for step in range(1, 200):
        now = 100.0 + step * 0.1
        on, rate, _, _ = lua.run(now, "beat", "a", repr(rate))
        states.append((now, on, rate))
    back = next(now for now, _, rate in states if rate >= 20.0)
    off = next(now for now, on, _ in states if not on)
    assert off == pytest.approx(back + 3.0, abs=0.15)


# -- grants never exceed the bucket ------------------------------------------------------------


async def test_concurrent_takers_never_take_more_than_the_bucket_holds(redis_url: str) -> None:
    """Eight connections taking tokens as fast as Redis answers, for one second: the grants
    never exceed the one token the cut leaves plus what the rate (climbing) accrues."""
    setup = redis.Redis.from_url(redis_url)
    cut = setup.register_script(PACE_SCRIPT)
    cut(keys=KEYS, args=[repr(NEVER), "", "cut", "0", "40.0", "a"])  # 28/s, one token
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(8)]
    granted: list[int] = []
    rates: list[float] = []
    started = setup.time()

    async def take(client: aioredis.Redis) -> None:
        script = client.register_script(PACE_SCRIPT)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            reply = await script(keys=KEYS, args=[repr(NEVER), "", "take", "3"])
            granted.append(int(reply[3]))
            rates.append(float(reply[1]))

    await asyncio.gather(*(take(client) for client in clients))
    ended = setup.time()
    for client in clients:
        await client.aclose()
    window = (ended[0] - started[0]) + (ended[1] - started[1]) / 1e6
    allowed = 1 + max(rates) * window
    assert len(granted) > 200  # they really raced
    assert sum(granted) <= allowed
    assert sum(granted) >= 0.8 * (min(rates) * window)  # and the bucket was not starved


# -- RedisPace in one process --------------------------------------------------------------------


async def _throttled_pace(redis_url: str) -> tuple[Fleet, RedisPace]:
    """A started pace whose fleet bucket is on at 1.4 requests a second, its token spent."""
    fleet = Fleet(redis_url, account=ACCOUNT)
    await fleet.open()
    pace = RedisPace(fleet)
    pace.start()
    loop = asyncio.get_running_loop()
    now = loop.time()
    for n in range(4):
        pace.sent(now - 2 + n / 2)
    pace.throttled(now, now)
    await pace.turn(None)  # the token the cut leaves
    return fleet, pace


async def test_a_turn_past_its_deadline_raises_and_closing_wakes_every_waiter(
    redis_url: str,
) -> None:
    fleet, pace = await _throttled_pace(redis_url)
    loop = asyncio.get_running_loop()
    try:
        assert pace.enabled
        with pytest.raises(DeadlinePassed):
            await pace.turn(loop.time() + 0.01)
        waits = [asyncio.create_task(pace.turn(None)) for _ in range(5)]
        await asyncio.sleep(0.05)
        pace.close()
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(result, SessionClosedError) for result in results)
    finally:
        await fleet.aclose()


async def test_turns_in_one_process_come_in_the_order_asked(redis_url: str) -> None:
    fleet, pace = await _throttled_pace(redis_url)
    order: list[int] = []

    async def turn(n: int) -> None:
        await pace.turn(None)
        order.append(n)

    try:
        waits = []
        for n in range(4):
            waits.append(asyncio.create_task(turn(n)))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert [0, 1, 2, 3] == order
    finally:
        await fleet.aclose()


async def test_the_pace_costs_no_redis_call_per_request_until_a_1302(
    emu: KlingEmulator, redis_url: str
) -> None:
    """Unpaced, requests make no Redis call (only the one-second beat runs); paced, about
    one per request."""
    async with paced_wire(emu.base_url, emu.access_key, emu.secret_key, redis_url, ACCOUNT) as (
        wire,
        pace,
    ):
        request = sansio.list_request(wire.base_url, 1, 1)
        before = pace.round_trips
        for _ in range(200):
            await wire.call(request, sansio.parse_task_list)
        unpaced = pace.round_trips - before
        assert unpaced <= 2  # beats only
        emu.inject(Fault.rate_limited(), route="list")
        await wire.call(request, sansio.parse_task_list)  # 1302, then retried
        assert pace.enabled
        before, sent = pace.round_trips, wire.requests_sent
        for _ in range(20):
            await wire.call(request, sansio.parse_task_list)
        paced = (pace.round_trips - before) / (wire.requests_sent - sent)
        print(f"redis round trips per request: unpaced {unpaced / 200:.3f}, paced {paced:.2f}")
        assert paced <= 2.5


# -- two processes, one emulator, one Redis --------------------------------------------------------


async def _lines(stream: asyncio.StreamReader, into: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        into.append(json.loads(line))


async def _burst(wire: Any, counts: Counts, stop: asyncio.Event) -> None:
    request = sansio.query_request(wire.base_url, "a-task")
    while not stop.is_set():
        try:
            await wire.call(request, sansio.parse_task)
        except KlingError as error:  # 1302s past the retries, 404s
            counts.other.append(repr(error))
        await asyncio.sleep(0.005)


@pytest.mark.crash
async def test_a_1302_met_by_one_process_paces_another_and_both_climb_back(
    emu: KlingEmulator, redis_url: str
) -> None:
    """Process B lists tasks; A (this process) bursts queries that meet 1302. B, which met
    none, turns paced within a fraction of a second and sends much less, then both climb
    back and the pace switches off fleet-wide. DEFAULT retry policy on both sides."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        emu.base_url,
        emu.access_key,
        emu.secret_key,
        redis_url,
        ACCOUNT,
        "2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    b: list[dict[str, Any]] = []
    try:
        assert json.loads(await asyncio.wait_for(child.stdout.readline(), 15))["ready"]
        reader = asyncio.create_task(_lines(child.stdout, b))
        async with paced_wire(emu.base_url, emu.access_key, emu.secret_key, redis_url, ACCOUNT) as (
            wire,
            a_pace,
        ):
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            await asyncio.sleep(1.5)  # B's own pace, unthrottled
            baseline = len(b)
            emu.inject(Fault.rate_limited(), route="query", seconds=1.0)
            counts, stop = Counts(), asyncio.Event()
            a_started = time.time()
            burst = [asyncio.create_task(_burst(wire, counts, stop)) for _ in range(8)]
            while not a_pace.enabled:
                await asyncio.sleep(0.005)
            a_on = time.time()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*burst)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (a_pace.enabled or b[-1]["on"]):
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # B unthrottled again
            assert not a_pace.enabled
        child.stdin.write(b"stop\n")
        await child.stdin.drain()
        await asyncio.wait_for(child.wait(), 15)
        await reader
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    done, samples = b[-1], b[:-1]
    assert done["other"] == []
    assert any(r.status == 429 for r in emu.requests if r.route == "query")  # A met 1302
    assert samples[-1]["rate_limited"] == 0  # B never met a 1302 itself
    assert all(r.status == 200 for r in emu.requests if r.route == "list")
    b_on = next(s["t"] for s in samples if s["on"])
    assert a_started <= a_on <= b_on < a_on + 1.0  # within a fraction of a second
    assert not samples[-1]["on"]

    def per_second(first: dict[str, Any], last: dict[str, Any]) -> float:
        return float((last["sent"] - first["sent"]) / (last["t"] - first["t"]))

    before = per_second(samples[baseline - 20], samples[baseline - 1])
    paced = [s for s in samples if s["on"]]
    slowest = min(
        per_second(paced[i], paced[i + 10]) for i in range(len(paced) - 10)
    )  # B's sends over half a second while paced
    after = per_second(samples[-20], samples[-1])
    print(f"B sends a second: before {before:.0f}, paced at least {slowest:.1f}, after {after:.0f}")
    assert slowest < before / 3
    assert after > before / 2


# -- Redis lost mid-burst ------------------------------------------------------------------------


@pytest.mark.crash
async def test_redis_lost_mid_burst_leaves_requests_flowing_at_the_local_pace(
    emu: KlingEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The pace on, then Redis killed: requests keep flowing (the local pace), nothing
    leaks to callers, the loss is logged once; Redis back, the fleet's pace is used again."""
    caplog.set_level(logging.WARNING, logger="kling_async")
    with RedisServer() as server:
        async with paced_wire(
            emu.base_url, emu.access_key, emu.secret_key, server.url, ACCOUNT
        ) as (wire, pace):
            stop = asyncio.Event()
            leaked: list[BaseException] = []

            async def flow() -> None:
                request = sansio.list_request(wire.base_url, 1, 1)
                while not stop.is_set():
                    try:
                        await wire.call(request, sansio.parse_task_list)
                    except KlingError as error:
                        if isinstance(error, FleetError) or getattr(error, "code", 0) != 1302:
                            leaked.append(error)
                    except Exception as error:
                        leaked.append(error)
                    await asyncio.sleep(0.005)

            emu.inject(Fault.rate_limited(), route="list", times=3)
            workers = [asyncio.create_task(flow()) for _ in range(4)]
            while not pace.enabled:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            server.stop(kill=True)
            await asyncio.sleep(0.2)
            sent = wire.requests_sent
            for _ in range(50):
                if pace.down:
                    break
                await asyncio.sleep(0.1)
            assert pace.down
            await asyncio.sleep(1.5)
            assert wire.requests_sent > sent + 3  # still flowing, at the local pace
            lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(lost) == 1
            server.start()
            for _ in range(80):
                if not pace.down:
                    break
                await asyncio.sleep(0.1)
            assert not pace.down
            stop.set()
            await asyncio.gather(*workers)
            assert leaked == []


async def test_sessions_with_one_fleet_share_the_pace(emu: KlingEmulator, redis_url: str) -> None:
    """``KlingSession(fleet=...)`` paces with the fleet: a 1302 met by one session shows in
    the other's statistics at once (DEFAULT retry policy), which met none."""
    options: dict[str, Any] = {"fleet": redis_url, "retry_policy": RetryPolicy()}
    async with official(emu, **options) as first, official(emu, **options) as second:
        handle = await first.extend("video-1", prompt="pace")
        await second.get_task(handle.task_id)  # the second's pace is running
        assert second.statistics().rate_limit is None
        emu.inject(Fault.rate_limited(), route="query")
        await first.get_task(handle.task_id)  # 1302, then retried
        for _ in range(100):
            if second.statistics().rate_limit is not None:
                break
            await asyncio.sleep(0.01)
        assert second.statistics().rate_limit is not None
