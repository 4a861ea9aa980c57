"""Source videos in a fleet: text-to-video and image-to-video tasks are shared through Redis
with their family, so the one poller queries and lists each on its own routes, against a
real redis-server and the emulator."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from kling_async import KlingSession, PollPolicy, RetryPolicy, TaskFamily, TaskHandle
from kling_async.testing import EmulatedTask, Fault, KlingEmulator

from .helpers import official
from .test_fleet_callbacks import SLOW, body, token_of, worker
from .test_fleet_states import POLICY, account_of

pytestmark = pytest.mark.anyio

IMAGE = "https://example.com/first.png"
SOURCES = ("text2video", "image2video")


def _seconds(task: EmulatedTask) -> tuple[float, float]:
    return 0.3, 0.9  # every task alike: the runs compare like with like


def _session(emu: KlingEmulator, fleet: str | None, **options: Any) -> KlingSession:
    options.setdefault("poll_policy", PollPolicy(**POLICY))
    return KlingSession(
        access_key=emu.access_key,
        secret_key=emu.secret_key,
        base_url=emu.base_url,
        retry_policy=RetryPolicy.instant(),
        fleet=fleet,
        **options,
    )


async def _sources(session: KlingSession, count: int) -> list[TaskHandle]:
    """``count`` text-to-videos and ``count`` image-to-videos made by ``session``."""
    handles = [await session.text_to_video(f"a fox, take {i}") for i in range(count)]
    handles += [await session.image_to_video(IMAGE, prompt=f"take {i}") for i in range(count)]
    return handles


def _polls(emu: KlingEmulator) -> dict[tuple[str, str], int]:
    """Queries and list pages received, per (route, family)."""
    return {
        (route, family): emu.count(route, family=family)
        for route in ("query", "list")
        for family in ("video-extend", *SOURCES)
    }


def _queries(emu: KlingEmulator, task_id: str, family: str) -> int:
    return sum(
        1
        for r in emu.requests
        if r.route == "query"
        and r.family == family
        and urllib.parse.unquote(r.path.rsplit("/", 1)[1]) == task_id
    )


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        while not await condition():
            await asyncio.sleep(0.02)


async def _alone(list_mode: str) -> dict[tuple[str, str], int]:
    """What one session of no fleet, making and waiting on the same tasks, has polled."""
    async with KlingEmulator(task_seconds=_seconds, list_mode=list_mode) as emu:
        async with _session(emu, None) as session:
            handles = await _sources(session, 3)
            await asyncio.gather(*(h.wait(timeout=30) for h in handles))
        return _polls(emu)


@pytest.mark.parametrize("list_mode", ["404", "ok"], ids=["queries", "list refresh"])
async def test_one_session_makes_sources_another_waits_and_they_poll_as_one(
    redis_url: str, list_mode: str
) -> None:
    """Session A makes text-to-videos and image-to-videos, session B (same Redis) waits on
    them by id with their family, and a third session, which knows of them only from Redis,
    leads the polling: every wait ends, each family is polled on its own query (and list)
    route, never the extend's, and the fleet sends what one session sends."""
    alone = await _alone(list_mode)
    async with KlingEmulator(task_seconds=_seconds, list_mode=list_mode) as emu:
        account = account_of(emu.base_url, emu.access_key)
        async with (
            aioredis.Redis.from_url(redis_url) as client,
            _session(emu, redis_url) as leader,
        ):
            leader.task("some-other-task")  # it takes the lead before the others open
            await _until(lambda: _exists(client, f"kling-async:{account}:leader"))
            async with _session(emu, redis_url) as maker, _session(emu, redis_url) as waiter:
                handles = await _sources(maker, 3)
                theirs = [waiter.task(h.task_id, family=h.family) for h in handles]
                tasks = await asyncio.gather(*(h.wait(timeout=30) for h in [*handles, *theirs]))
        shared = _polls(emu)
    assert all(task.done for task in tasks)
    assert [TaskFamily.TEXT2VIDEO] * 3 + [TaskFamily.IMAGE2VIDEO] * 3 == [h.family for h in theirs]
    for route in ("query", "list"):
        assert 0 == shared[route, "video-extend"]
    if list_mode == "ok":  # one list round per family that has waits
        assert all(shared["list", family] > 0 for family in SOURCES), shared
    print(f"\nfleet of two: {shared}\none session alone: {alone}")
    for key, count in shared.items():
        assert count <= alone[key] * 1.1 + 3, (key, shared, alone)


async def test_a_wait_s_interest_names_the_family_the_leader_polls(redis_url: str) -> None:
    """Source tasks made outside the fleet (they hold no slot): a fleet session waits on
    them with their family while another session, which holds no handle of them, leads;
    the leader learns each family from the wait's interest and polls its routes alone."""
    async with KlingEmulator(task_seconds=_seconds, list_mode="404") as emu:
        async with _session(emu, None) as outside:
            made = [(h.task_id, h.family) for h in await _sources(outside, 2)]
        account = account_of(emu.base_url, emu.access_key)
        before = _polls(emu)
        async with (
            aioredis.Redis.from_url(redis_url) as client,
            _session(emu, redis_url) as leader,
        ):
            leader.task("some-other-task")  # it takes the lead before the waiter opens
            await _until(lambda: _exists(client, f"kling-async:{account}:leader"))
            async with _session(emu, redis_url) as waiter:
                waits = [waiter.task(i, family=f).wait(timeout=30) for i, f in made]
                tasks = await asyncio.gather(*waits)
                assert 0 == waiter.statistics().requests_sent  # the leader polled for it
        after = _polls(emu)
    assert all(task.done for task in tasks)
    assert before[("query", "video-extend")] == after[("query", "video-extend")]
    for task_id, family in made:
        assert _queries(emu, task_id, family.value) > 0


async def test_an_old_interest_entry_without_a_family_is_polled_as_an_extend(
    redis_url: str,
) -> None:
    """``watched`` holding a bare id (as a process of an earlier version writes an extend's
    interest) beside a text-to-video's entry: the leader polls the bare one on the extend's
    route and the other on text2video's, each until its final state is in Redis (and its
    entry leaves ``watched``)."""
    async with KlingEmulator(task_seconds=_seconds) as emu:
        async with _session(emu, None) as maker:
            extend = (await maker.extend("vid-1", prompt="p")).task_id
            source = (await maker.text_to_video("a fox")).task_id
        account = account_of(emu.base_url, emu.access_key)
        prefix = f"kling-async:{account}"
        async with aioredis.Redis.from_url(redis_url) as client, _session(emu, redis_url) as s:
            expiry = int(time.time() * 1000) + 60_000
            await client.zadd(f"{prefix}:watched", {extend: expiry, f"text2video/{source}": expiry})
            s.task("some-other-task")  # the session takes part in the polling from now on

            async def final() -> bool:
                values = await client.mget(f"{prefix}:task:{extend}", f"{prefix}:task:{source}")
                return all(v is not None and v.startswith(b"2:") for v in values)

            await _until(final)
            await _until(lambda: _empty(client, f"{prefix}:watched"))  # left once finished
    assert _queries(emu, extend, "video-extend") + emu.count("list", family="video-extend") > 0
    assert _queries(emu, source, "text2video") + emu.count("list", family="text2video") > 0
    assert 0 == _queries(emu, source, "video-extend")
    assert 0 == _queries(emu, extend, "text2video")


async def test_a_source_task_s_slot_names_its_family_and_frees_when_it_finishes(
    redis_url: str,
) -> None:
    """With ``max_parallel_tasks=1`` a text-to-video holds the fleet's one slot (named with
    its family) and an image-to-video waits for it until the first is seen finished: no
    1303, and the slot leaves Redis."""
    async with KlingEmulator(auto_advance=False) as emu:
        account = account_of(emu.base_url, emu.access_key)
        slots = f"kling-async:{account}:slots"
        async with (
            aioredis.Redis.from_url(redis_url) as client,
            _session(emu, redis_url, max_parallel_tasks=1) as session,
        ):
            first = await session.text_to_video("a fox")
            assert [f"text2video/{first.task_id}".encode()] == await client.zrange(slots, 0, -1)
            second = asyncio.create_task(session.image_to_video(IMAGE))
            await asyncio.sleep(0.5)
            assert 0 == emu.count("create", family="image2video")  # it waits for the slot
            emu.set_status(first.task_id, "succeed")
            await first.wait(timeout=10)
            with anyio.fail_after(10):
                made = await second
            assert [f"image2video/{made.task_id}".encode()] == await client.zrange(slots, 0, -1)
            emu.set_status(made.task_id, "succeed")
            await made.wait(timeout=10)
            await _until(lambda: _empty(client, slots))
    assert 0 == sum(1 for r in emu.requests if r.status == 429)
    assert 1 == emu.count("create", family="image2video")


async def _exists(client: aioredis.Redis, key: str) -> bool:
    return bool(await client.exists(key))


async def _empty(client: aioredis.Redis, key: str) -> bool:
    return 0 == await client.zcard(key)


async def test_the_leader_polls_a_source_task_that_holds_a_slot_on_its_route(
    redis_url: str,
) -> None:
    """A text-to-video bound to a slot (its maker gone, nobody waiting) is polled by the
    leader on text2video's routes until it is seen finished, and its slot is freed."""
    async with KlingEmulator(task_seconds=_seconds) as emu:
        async with _session(emu, None) as maker:
            task_id = (await maker.text_to_video("a fox")).task_id
        account = account_of(emu.base_url, emu.access_key)
        slots = f"kling-async:{account}:slots"
        async with aioredis.Redis.from_url(redis_url) as client, _session(emu, redis_url) as s:
            expiry = int(time.time() * 1000) + 60_000
            await client.zadd(slots, {f"text2video/{task_id}": expiry})
            s.task("some-other-task")
            key = f"kling-async:{account}:task:{task_id}"

            async def final() -> bool:
                value = await client.get(key)
                return value is not None and value.startswith(b"2:")

            await _until(final)
            await _until(lambda: _empty(client, slots))
    assert 0 == emu.count("query", family="video-extend")
    assert emu.count("query", family="text2video") + emu.count("list", family="text2video") > 0


async def test_a_source_task_s_callbacks_wake_the_fleet_s_waiters(redis_url: str) -> None:
    """A text-to-video of session A, waited on by A and by session B: its callback, early
    (before the create's reply bound the token) and final, reaches a worker's receiver and
    ends both waits with one confirming query on text2video's route, none on the extend's."""
    async with (
        worker(redis_url) as (receiver, log),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=redis_url, callbacks=receiver, poll_policy=SLOW) as maker,
        official(emu, fleet=redis_url, poll_policy=SLOW) as waiter,
    ):
        emu.inject(Fault.callback_before_reply(), route="callback", times=1)
        handle = await maker.text_to_video("a fox")
        assert [200] == [status for _, _, status in log]  # "submitted", before the reply
        theirs = waiter.task(handle.task_id, family="text2video")
        waits = [asyncio.create_task(h.wait()) for h in (handle, theirs)]
        await asyncio.sleep(0.5)
        url = emu.tasks[handle.task_id].callback_url
        assert url is not None
        emu.set_status(handle.task_id, "succeed")
        with anyio.fail_after(5):  # polls alone would not look before 15 s
            tasks = await asyncio.gather(*waits)
        assert ["succeed", "succeed"] == [task.status.value for task in tasks]
        assert 1 == _queries(emu, handle.task_id, "text2video")
        assert 0 == emu.count("query", family="video-extend")
        # A late duplicate of the final callback is taken (200) and changes nothing.
        assert 200 == await receiver.deliver(token_of(url), body(handle.task_id, "succeed"))


async def test_keyed_source_creates_in_a_fleet_make_one_task_per_key(redis_url: str) -> None:
    """Two fleet sessions (the fleet's Redis journal) making the same keyed text-to-video and
    image-to-video at once pay for each key once; both get handles of the key's family."""
    async with KlingEmulator(task_seconds=_seconds) as emu:
        async with _session(emu, redis_url) as one, _session(emu, redis_url) as two:
            made = await asyncio.gather(
                one.text_to_video("a fox", key="shot/0"),
                two.text_to_video("a fox", key="shot/0"),
                one.image_to_video(IMAGE, prompt="a fox", key="shot/1"),
                two.image_to_video(IMAGE, prompt="a fox", key="shot/1"),
            )
            assert made[0].task_id == made[1].task_id
            assert made[2].task_id == made[3].task_id
            assert [TaskFamily.TEXT2VIDEO] * 2 + [TaskFamily.IMAGE2VIDEO] * 2 == [
                h.family for h in made
            ]
            with pytest.raises(ValueError, match="shot/0"):
                await two.text_to_video("a hen", key="shot/0")
            tasks = await asyncio.gather(*(h.wait(timeout=30) for h in made))
        assert all(t.status.value == "succeed" for t in tasks)
        assert 1 == emu.count("create", family="text2video")
        assert 1 == emu.count("create", family="image2video")
