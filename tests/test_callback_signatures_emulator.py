"""Signed callbacks end to end: the emulator signs as Kling does, the receiver (aiohttp and
ASGI, in one process or a fleet) takes what is Kling's and refuses the rest with 401."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from kling_async import PollPolicy, TaskHandle
from kling_async.testing import Fault, KlingEmulator
from kling_async.testing._signing import signature_headers, webhook_keys

from .helpers import official
from .test_callbacks import aiohttp_app, fastapi_app

pytestmark = pytest.mark.anyio

SLOW = PollPolicy()  # the default schedule: no poll is due within these tests
SECRET = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="
OLD = "whsec_b3RoZXJzZWNyZXRvdGhlcnNlY3JldG90aGVyc2VjcmV0MTI="
STRANGER = "whsec_c3RyYW5nZXJzdHJhbmdlcnN0cmFuZ2Vyc3RyYW5nZXI="
FRAMEWORKS = ["aiohttp", "asgi"]


def mount(framework: str, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    """The receiver in a real aiohttp app, or in FastAPI (ASGI) served by uvicorn."""
    return (aiohttp_app if framework == "aiohttp" else fastapi_app)(**options)


def queries_of(emu: KlingEmulator, task_id: str) -> int:
    return sum(
        1
        for r in emu.requests
        if r.route == "query" and urllib.parse.unquote(r.path.rsplit("/", 1)[1]) == task_id
    )


def statuses(emu: KlingEmulator) -> list[tuple[str, int | None]]:
    return [(c.task_status, c.status) for c in emu.callbacks]


@contextlib.asynccontextmanager
async def waiting(handle: TaskHandle) -> AsyncIterator[None]:
    """A wait on ``handle`` runs in the background while the block runs, and must end."""
    async with anyio.create_task_group() as group:
        group.start_soon(handle.wait)
        await anyio.sleep(0.01)
        yield
        with anyio.fail_after(5):
            while not handle.done:
                await anyio.sleep(0.005)


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_signed_final_callback_ends_a_wait_with_zero_queries(framework: str) -> None:
    """Kling's signature makes the callback Kling's word: no confirming query, no poll."""
    async with (
        mount(framework, webhook_secret=SECRET) as receiver,
        KlingEmulator(auto_advance=False, webhook_secret=SECRET) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        async with waiting(handle):
            emu.set_status(handle.task_id, "processing")
            emu.set_status(handle.task_id, "succeed")
        await emu.drain_callbacks()
        assert "succeed" == handle.status
        assert handle.last is not None
        assert handle.last.result.videos  # the result came with the signed callback
        assert 0 == emu.count("query")
        assert [("submitted", 200), ("processing", 200), ("succeed", 200)] == statuses(emu)


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_unsigned_forged_and_stale_callbacks_get_401(framework: str) -> None:
    """With a secret, a callback without a signature, with a forged one or with a timestamp
    10 minutes old is refused (401) and changes nothing; the safety poll ends the wait."""
    async with (
        mount(framework, webhook_secret=SECRET, safety_interval=0.3) as receiver,
        KlingEmulator(auto_advance=False) as unsigned,
        KlingEmulator(auto_advance=False, webhook_secret=SECRET) as emu,
    ):
        async with official(unsigned, callbacks=receiver, poll_policy=SLOW) as session:
            handle = await session.extend("vid-1")
            unsigned.set_status(handle.task_id, "succeed")
            with anyio.fail_after(5):
                await handle.wait()
            await unsigned.drain_callbacks()
            assert {401} == {status for _, status in statuses(unsigned)}
            assert 1 <= queries_of(unsigned, handle.task_id)  # the safety poll, not a callback
        async with official(emu, callbacks=receiver, poll_policy=SLOW) as session:
            handle = await session.extend("vid-2")
            await emu.drain_callbacks()
            emu.inject(Fault.callback_bad_signature(), route="callback")
            emu.set_status(handle.task_id, "processing")
            await emu.drain_callbacks()
            emu.inject(Fault.callback_stale(600), route="callback")
            emu.set_status(handle.task_id, "succeed")
            await emu.drain_callbacks()
            assert [("submitted", 200), ("processing", 401), ("succeed", 401)] == statuses(emu)
            assert "submitted" == handle.status  # neither refused callback was taken


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_rotation_either_secret_verifies(framework: str) -> None:
    """Signed with the old and the new secret (a rotation), a callback verifies at a
    receiver that knows either; a receiver that knows neither refuses it."""
    for known, expected in ((OLD, 200), (SECRET, 200), ([STRANGER, OLD], 200), (STRANGER, 401)):
        async with (
            mount(framework, webhook_secret=known) as receiver,
            KlingEmulator(auto_advance=False, webhook_secret=[SECRET, OLD]) as emu,
            official(emu, callbacks=receiver, poll_policy=SLOW) as session,
        ):
            await session.extend("vid-1")
            await emu.drain_callbacks()
            assert [("submitted", expected)] == statuses(emu), known


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_redelivered_callback_is_dropped_by_its_webhook_id(
    framework: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A redelivery (same webhook-id) is answered 200 and not taken a second time."""
    caplog.set_level(logging.DEBUG, logger="kling_async")
    async with (
        mount(framework, webhook_secret=SECRET) as receiver,
        KlingEmulator(auto_advance=False, webhook_secret=SECRET) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        await emu.drain_callbacks()
        emu.inject(Fault.callback_duplicated(), route="callback")
        emu.set_status(handle.task_id, "processing")
        await emu.drain_callbacks()
        assert [200, 200, 200] == [status for _, status in statuses(emu)]
        dropped = [r for r in caplog.records if "redelivered" in r.getMessage()]
        assert 1 == len(dropped)
        assert "processing" == handle.status


async def test_a_signature_is_checked_before_the_body_and_after_the_size() -> None:
    """A body that would not parse gets 401 without a signature (never 400); an oversized
    one gets 413 first; the signed callback through deliver() carries its headers."""
    async with (
        aiohttp_app(webhook_secret=SECRET, max_body_bytes=2048) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = (emu.tasks[handle.task_id].callback_url or "").rsplit("/", 1)[1]
        assert 401 == await receiver.deliver(token, b"<html>not json</html>")
        assert 401 == await receiver.deliver(token, b"{}", {"webhook-id": "x"})
        assert 413 == await receiver.deliver(token, b"x" * 4096)
        assert 404 == await receiver.deliver("y" * len(token), b"{}")
        body = json.dumps({"task_id": handle.task_id, "task_status": "processing"}).encode()
        headers = signature_headers(webhook_keys(SECRET), "msg_1", time.time(), body, None)
        assert 200 == await receiver.deliver(token, body, headers)
        assert "processing" == handle.status
        assert 401 == await receiver.deliver(token, b"not json", headers)  # not this body


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_timestamp_is_compared_on_klings_clock(framework: str) -> None:
    """Kling's clock 10 minutes ahead of this machine's: the session learned the offset from
    its create, so the receiver takes callbacks that the local clock would call stale."""
    async with (
        mount(framework, webhook_secret=SECRET) as receiver,
        KlingEmulator(auto_advance=False, webhook_secret=SECRET) as emu,
    ):
        emu.clock = lambda: time.time() + 600
        async with official(emu, callbacks=receiver, poll_policy=SLOW) as session:
            handle = await session.extend("vid-1")
            async with waiting(handle):
                emu.set_status(handle.task_id, "succeed")
            await emu.drain_callbacks()
            assert [("submitted", 200), ("succeed", 200)] == statuses(emu)
            assert 0 == emu.count("query")


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_an_offset_learned_before_a_clock_step_does_not_refuse_callbacks(
    framework: str,
) -> None:
    """The session learned Kling's clock 10 minutes ahead; then the clocks agree again (one
    of them was stepped): a timestamp fresh on this machine's clock is taken too."""
    async with (
        mount(framework, webhook_secret=SECRET) as receiver,
        KlingEmulator(auto_advance=False, webhook_secret=SECRET) as emu,
    ):
        emu.clock = lambda: time.time() + 600
        async with official(emu, callbacks=receiver, poll_policy=SLOW) as session:
            handle = await session.extend("vid-1")
            emu.clock = time.time
            async with waiting(handle):
                emu.set_status(handle.task_id, "succeed")
            await emu.drain_callbacks()
            assert [("submitted", 200), ("succeed", 200)] == statuses(emu)
            assert 0 == emu.count("query")


async def test_a_fleet_receiver_checks_signatures_and_drops_redeliveries_in_redis(
    redis_url: str,
) -> None:
    """Two web workers of a fleet: each checks the signature with the secret alone; a
    redelivery taken by one is dropped by the other (SET NX in Redis); a signed final
    callback ends the wait with zero queries; a forged one gets 401."""
    pytest.importorskip("redis")
    import redis.asyncio as aioredis

    async with (
        aiohttp_app(fleet=redis_url, webhook_secret=SECRET) as first,
        aiohttp_app(fleet=redis_url, webhook_secret=SECRET) as second,
        KlingEmulator(auto_advance=False, webhook_secret=SECRET) as emu,
        official(emu, fleet=redis_url, callbacks=first, poll_policy=SLOW) as session,
    ):
        try:
            handle = await session.extend("vid-1")
            url = emu.tasks[handle.task_id].callback_url or ""
            token = url.rsplit("/", 1)[1]
            assert 2 == token.count(".")  # a fleet token
            await emu.drain_callbacks()
            body = json.dumps(
                {"task_id": handle.task_id, "task_status": "processing", "updated_at": 1}
            ).encode()
            # A delivery that was not taken (another task's body: 400) drops no later one.
            wrong = json.dumps({"task_id": "another", "task_status": "processing"}).encode()
            refused = signature_headers(webhook_keys(SECRET), "msg_x", time.time(), wrong, None)
            assert 400 == await second.deliver(token, wrong, refused)
            client = aioredis.Redis.from_url(redis_url)
            try:
                before = await _hints(client)
                headers = signature_headers(webhook_keys(SECRET), "msg_x", time.time(), body, None)
                assert 200 == await second.deliver(token, body, headers)
                assert before + 1 == await _hints(client)  # recorded
                seen = [key async for key in client.scan_iter("kling-async:*:cb:wh:msg_x")]
                assert 1 == len(seen)
                before = await _hints(client)
                assert 200 == await first.deliver(token, body, headers)  # the redelivery
                assert before == await _hints(client)  # dropped: no second hint
            finally:
                await client.aclose()
            forged = signature_headers(
                webhook_keys(SECRET), "msg_y", time.time(), body, Fault.callback_bad_signature()
            )
            assert 401 == await second.deliver(token, body, forged)
            async with waiting(handle):
                emu.set_status(handle.task_id, "succeed")
            await emu.drain_callbacks()
            assert 0 == emu.count("query")
            assert {200} == {status for _, status in statuses(emu)}
        finally:
            await first.aclose()
            await second.aclose()


async def _hints(client: Any) -> int:
    total = 0
    async for key in client.scan_iter("kling-async:*:events"):
        total += await client.xlen(key)
    return int(total)


async def test_a_fleet_s_signed_early_callback_is_taken_as_kling_s_word(redis_url: str) -> None:
    """A signed final callback that comes before its create's reply is kept in Redis as an
    early one; the bind takes it as Kling's word: the wait ends with no query."""
    async with (
        aiohttp_app(fleet=redis_url, webhook_secret=SECRET) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=redis_url, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        try:
            async with official(emu) as maker:  # the task a create is making right now
                task_id = (await maker.extend("vid-1")).task_id
            emu.set_status(task_id, "succeed")
            queries = emu.count("query")
            link = session._submitter.link  # the create's token, issued before its send
            assert link is not None
            binding, url = link.issue()
            body = json.dumps({"task_id": task_id, "task_status": "succeed"}).encode()
            headers = signature_headers(webhook_keys(SECRET), "msg_e", time.time(), body, None)
            assert 200 == await receiver.deliver(url.rsplit("/", 1)[1], body, headers)
            handle = session.task(task_id)
            link.bind(binding, task_id)  # the create's reply came
            with anyio.fail_after(5):
                task = await handle.wait()
        finally:
            await receiver.aclose()
    assert "succeed" == task.status
    assert queries == emu.count("query")
