"""Callbacks in a fleet: any worker's receiver takes any session's callback, and the wait
wakes in whichever process it runs (issue 16), against a real redis-server and the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from kling_async import CallbackReceiver, PollPolicy, TaskHandle
from kling_async._callback_tokens import fleet_token, read_fleet_token, split_fleet_token
from kling_async._fleet import Fleet
from kling_async._redis_callbacks import SECRET_KEY, account_key
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

MOUNT = "/kling/callbacks"
SLOW = PollPolicy()  # the default schedule: polls alone would take 15 s and more
CHILD = pathlib.Path(__file__).with_name("fleet_callbacks_child.py")


@contextlib.asynccontextmanager
async def worker(
    redis: str | aioredis.Redis, **options: Any
) -> AsyncIterator[tuple[CallbackReceiver, list[tuple[float, bytes, int]]]]:
    """One web worker: an aiohttp app on loopback with a fleet receiver mounted; what it
    answered is logged as (time.time() when answered, body, status)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    receiver = CallbackReceiver(
        f"http://127.0.0.1:{sock.getsockname()[1]}{MOUNT}", fleet=redis, **options
    )
    log: list[tuple[float, bytes, int]] = []
    deliver = receiver.deliver

    async def logged(token: str, body: bytes) -> int:
        status = await deliver(token, body)
        log.append((time.time(), body, status))
        return status

    receiver.deliver = logged  # type: ignore[method-assign]
    app = web.Application()
    app.add_subapp(MOUNT, receiver.aiohttp_app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield receiver, log
    finally:
        await runner.cleanup()
        await receiver.aclose()
        sock.close()


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def callback_url_of(emu: KlingEmulator, handle: TaskHandle) -> str:
    url = emu.tasks[handle.task_id].callback_url
    assert url is not None
    return url


def queries_of(emu: KlingEmulator, task_id: str) -> int:
    return sum(
        1
        for r in emu.requests
        if r.route == "query" and urllib.parse.unquote(r.path.rsplit("/", 1)[1]) == task_id
    )


def body(task_id: str, status: str, updated: int = 1) -> bytes:
    return json.dumps({"task_id": task_id, "task_status": status, "updated_at": updated}).encode()


async def hints(client: aioredis.Redis) -> int:
    """Hints recorded on every account's events stream."""
    total = 0
    async for key in client.scan_iter("kling-async:*:events"):
        total += await client.xlen(key)
    return total


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        while not await condition():
            await anyio.sleep(0.005)


# -- the token, pure -----------------------------------------------------------------------------


def test_a_fleet_token_is_checked_by_its_mac_alone() -> None:
    """Any holder of the secret checks a token; another secret, account or nonce fails."""
    secret, other = os.urandom(32), os.urandom(32)
    token = fleet_token(secret, "0123456789abcdef", os.urandom(16))
    assert 62 == len(token)
    assert token.replace("-", "").replace("_", "").replace(".", "").isalnum()  # URL-safe
    account, nonce = read_fleet_token((secret,), token) or ("", "")
    assert "0123456789abcdef" == account
    assert read_fleet_token((other,), token) is None
    assert read_fleet_token((other, secret), token) is not None  # any secret of several
    _, _, mac = token.split(".")
    assert read_fleet_token((secret,), f"fedcba9876543210.{nonce}.{mac}") is None
    assert split_fleet_token("x" * 62) is None
    assert split_fleet_token(token + "A") is None


def test_account_keys_are_the_fleets() -> None:
    """The receiver names an account's keys as that account's Fleet does."""
    fleet = Fleet("redis://127.0.0.1:9/0", account="0123456789abcdef")
    assert fleet.key("cb", "tok", "n") == account_key("0123456789abcdef", "tok", "n")


# -- across processes ------------------------------------------------------------------------------


async def test_a_callback_to_worker_a_wakes_a_wait_in_process_b(redis_url: str) -> None:
    """Process B (its own session, fleet=) waits; Kling's callback reaches worker A's receiver
    in another process; B's wait ends within 1 s of A recording it, with one confirming
    query and no poll (the default schedule and the 60 s safety cadence poll later)."""
    async with (
        worker(redis_url) as (receiver, log),
        KlingEmulator(auto_advance=False) as emu,
    ):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            redis_url,
            emu.base_url,
            emu.access_key,
            emu.secret_key,
            receiver.public_url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        try:
            with anyio.fail_after(20):
                line = (await child.stdout.readline()).decode()
            assert line.startswith("task "), line
            task_id = line.split()[1]
            assert token_of(emu.tasks[task_id].callback_url or "").count(".") == 2
            emu.set_status(task_id, "processing")
            await emu.drain_callbacks()
            emu.set_status(task_id, "succeed")
            await emu.drain_callbacks()
            with anyio.fail_after(20):
                ended = json.loads(await child.stdout.readline())
            assert 0 == await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        assert "succeed" == ended["status"]
        assert {200} == {status for _, _, status in log}
        recorded = log[-1][0]
        latency = ended["ended"] - recorded
        print(f"\nfleet callback: A recorded -> B's wait ended in {latency * 1000:.1f} ms")
        assert latency < 1.0
        assert 1 == queries_of(emu, task_id)  # the confirming query: no poll


async def test_in_one_process_the_wait_wakes_too(redis_url: str) -> None:
    """A session with fleet= and its receiver in the same process: waits end from callbacks
    as without a fleet (one confirming query each, no poll)."""
    async with (
        worker(redis_url) as (receiver, log),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=redis_url, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handles = [await session.extend(f"vid-{i}") for i in range(5)]
        for handle in handles:
            emu.set_status(handle.task_id, "succeed")
        started = time.monotonic()
        with anyio.fail_after(5):
            for handle in handles:
                await handle.wait()
        print(f"\nin one process: 5 waits ended {1000 * (time.monotonic() - started):.1f} ms")
        assert all(queries_of(emu, h.task_id) == 1 for h in handles)
        assert {200} == {status for _, _, status in log}  # submitted, then succeed


# -- what is refused -----------------------------------------------------------------------------


async def test_forged_tokens_and_another_accounts_get_404(redis_url: str) -> None:
    """A token not made under the fleet's secret, or another account's name on a real
    token's nonce and MAC, gets 404 and records nothing; another task's body gets 400."""
    client = aioredis.Redis.from_url(redis_url)
    async with (
        worker(client) as (receiver, _),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=client, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        account, nonce, mac = token.split(".")
        forged = fleet_token(os.urandom(32), account, bytes.fromhex("00" * 16))
        other = "f" * 16 if account != "f" * 16 else "e" * 16
        await until(lambda: _bound(client, account, nonce))
        await emu.drain_callbacks()
        base = await hints(client)  # the emulator's "submitted" callback
        for wrong in (forged, f"{other}.{nonce}.{mac}", f"{account}.{nonce}.{mac[::-1]}"):
            assert 404 == await receiver.deliver(wrong, body(handle.task_id, "succeed"))
        assert base == await hints(client)
        assert 400 == await receiver.deliver(token, body("another-task", "succeed"))
        assert base == await hints(client)
        assert 200 == await receiver.deliver(token, body(handle.task_id, "processing"))
        assert base + 1 == await hints(client)
    await client.aclose()


async def _bound(client: aioredis.Redis, account: str, nonce: str) -> bool:
    return bool(await client.hexists(account_key(account, "tok", nonce), "task"))


async def test_a_replayed_callback_of_a_finished_task_records_nothing(redis_url: str) -> None:
    """Once the task is seen finished, its callbacks (replays, late duplicates) get 200 and
    add no hint (nor any query); another task's body still gets 400."""
    client = aioredis.Redis.from_url(redis_url)
    async with (
        contextlib.AsyncExitStack() as stack,
        worker(client) as (receiver, _),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=client, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        stack.push_async_callback(client.aclose)
        handle = await session.extend("vid-1")
        url = callback_url_of(emu, handle)
        emu.set_status(handle.task_id, "succeed")
        with anyio.fail_after(5):
            await handle.wait()
        await emu.drain_callbacks()  # the final callback's own hint is in before counting
        account, nonce, _ = token_of(url).split(".")
        key = account_key(account, "tok", nonce)
        await until(lambda: _done(client, key))
        # The session's own write of the final state (an event too) is in before counting.
        state = f"kling-async:{account}:task:{handle.task_id}"
        await until(lambda: _starts(client, state, b"2:"))
        recorded = await hints(client)
        final = emu.callbacks[-1].body
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(url, json=final) as response:
                    assert 200 == response.status
        assert recorded == await hints(client)
        assert 400 == await receiver.deliver(token_of(url), body("another-task", "succeed"))
        assert 1 == queries_of(emu, handle.task_id)
        assert 0 < await client.pttl(key) <= 3600 * 1000  # kept an hour, for late duplicates


async def _done(client: aioredis.Redis, key: str) -> bool:
    return bool(await client.hget(key, "done"))


async def _starts(client: aioredis.Redis, key: str, prefix: bytes) -> bool:
    value = await client.get(key)
    return value is not None and bytes(value).startswith(prefix)


async def test_redis_down_answers_503_and_records_nothing(tmp_path: pathlib.Path) -> None:
    """Redis unreachable when the callback comes: 503 with Retry-After (Kling sends it
    again), no hint; once Redis is back, the redelivery is recorded and the wait ends."""
    server = RedisServer(directory=tmp_path).start()
    try:
        async with (
            worker(server.url) as (receiver, _),
            KlingEmulator(auto_advance=False) as emu,
            official(emu, fleet=server.url, callbacks=receiver, poll_policy=SLOW) as session,
        ):
            handle = await session.extend("vid-1")
            url = callback_url_of(emu, handle)
            account, nonce, _ = token_of(url).split(".")
            check = aioredis.Redis.from_url(server.url)
            await until(lambda: _bound(check, account, nonce))
            await emu.drain_callbacks()
            base = await hints(check)  # the emulator's "submitted" callback
            await check.aclose()
            server.stop()
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, data=body(handle.task_id, "succeed")) as response,
            ):
                assert 503 == response.status
                assert "5" == response.headers["Retry-After"]
            server.start()  # its AOF brings the binding back
            check = aioredis.Redis.from_url(server.url)
            assert base == await hints(check)
            emu.set_status(handle.task_id, "succeed")  # Kling sends it again
            with anyio.fail_after(10):
                await handle.wait()
            assert base < await hints(check)
            await check.aclose()
    finally:
        server.close()


async def test_a_bind_that_met_redis_away_is_written_once_it_is_back(
    tmp_path: pathlib.Path,
) -> None:
    """Redis stops while the create is on the wire: binding the callback token fails, is
    tried again, and once Redis is back the task's callback wakes the wait (no poll: a
    bind given up on left the callbacks early ones, and the wait to the safety poll)."""
    server = RedisServer(directory=tmp_path).start()
    try:
        async with (
            worker(server.url) as (receiver, _),
            KlingEmulator(auto_advance=False) as emu,
            official(emu, fleet=server.url, callbacks=receiver, poll_policy=SLOW) as session,
        ):
            check = aioredis.Redis.from_url(server.url)
            emu.inject(Fault.delay(1.0), route="create")
            create = asyncio.ensure_future(session.extend("vid-1"))
            with anyio.fail_after(5):  # its slot is taken: the create goes on the wire now
                while not await check.keys("kling-async:*:slots"):
                    await asyncio.sleep(0.01)
            await check.aclose()
            server.stop()
            handle = await create
            url = callback_url_of(emu, handle)
            account, nonce, _ = token_of(url).split(".")
            server.start()
            check = aioredis.Redis.from_url(server.url)
            with anyio.fail_after(20):
                await until(lambda: _bound(check, account, nonce), 20)
            queries = emu.count("query")
            emu.set_status(handle.task_id, "succeed")
            with anyio.fail_after(10):
                task = await handle.wait()
            await check.aclose()
        assert task.done
        assert queries + 1 >= emu.count("query")  # at most the final callback's confirmation
    finally:
        server.close()


async def test_a_receiver_that_cannot_read_the_secret_answers_503(redis_url: str) -> None:
    """A worker whose Redis is unreachable cannot check a fleet token: 503, never 200."""
    async with (
        worker(redis_url) as (receiver, _),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=redis_url, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
    dead = CallbackReceiver("http://127.0.0.1:9/cb", fleet="redis://127.0.0.1:9/0")
    try:
        assert 503 == await dead.deliver(token, body(handle.task_id, "succeed"))
        assert 404 == await dead.deliver("not-a-token", body(handle.task_id, "succeed"))
    finally:
        await dead.aclose()


# -- mixed set-ups, early callbacks, gateways ----------------------------------------------------


async def test_a_session_without_fleet_keeps_in_process_tokens(redis_url: str) -> None:
    """A session without fleet= beside a receiver with fleet=: today's tokens, known to
    this process's receiver alone (its waits wake from it); another worker answers 404,
    and nothing goes to Redis."""
    client = aioredis.Redis.from_url(redis_url)
    async with (
        worker(client) as (receiver, _),
        worker(client) as (elsewhere, _),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        assert split_fleet_token(token) is None
        assert 404 == await elsewhere.deliver(token, body(handle.task_id, "processing"))
        emu.set_status(handle.task_id, "succeed")
        with anyio.fail_after(5):
            await handle.wait()
        assert 1 == queries_of(emu, handle.task_id)
        assert [] == [key async for key in client.scan_iter("kling-async:*")]
    await client.aclose()


async def test_a_session_with_fleet_and_a_receiver_without_keeps_in_process_tokens(
    redis_url: str,
) -> None:
    """A receiver without fleet= gives every session today's in-process tokens."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks", confirm=False)
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=redis_url, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        assert split_fleet_token(token) is None
        assert 200 == await receiver.deliver(token, body(handle.task_id, "succeed"))
        assert handle.done


async def test_a_callback_before_the_bind_is_applied_by_it(redis_url: str) -> None:
    """A callback that reaches a worker before the create's reply bound its token is kept
    in Redis and recorded by the bind: an early final one ends the wait after one query."""
    client = aioredis.Redis.from_url(redis_url)
    async with (
        worker(client) as (receiver, log),
        KlingEmulator(auto_advance=False) as emu,
        official(emu, fleet=client, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        emu.inject(Fault.callback_before_reply(), route="callback", times=1)
        first = await session.extend("vid-1")  # the emulator's early "submitted"
        assert [200] == [status for _, _, status in log]
        link = session._submitter.link
        assert link is not None
        binding, url = link.issue()  # as extend() does, before it sends the create
        made = await session.extend("vid-2", callback_url="http://127.0.0.1:9/elsewhere")
        emu.set_status(made.task_id, "succeed")
        early = body(made.task_id, "succeed")
        assert 200 == await receiver.deliver(token_of(url), early)
        account, nonce, _ = token_of(url).split(".")
        assert 1 == await client.llen(account_key(account, "early", nonce))
        assert not made.done
        link.bind(binding, made.task_id)  # the reply came: the early callback applies
        with anyio.fail_after(2):  # polls alone would not look before 15 s
            task = await made.wait()
        assert "succeed" == task.status.value
        assert 1 == queries_of(emu, made.task_id)
        assert 0 == await client.exists(account_key(account, "early", nonce))
        events = [key async for key in client.scan_iter("kling-async:*:events")]
        entries: Any = await client.xrange(events[0])
        recorded = [fields[b"task"].decode() for _, fields in entries]
        assert first.task_id in recorded  # the emulator's early one, recorded at its bind
    await client.aclose()


async def test_gateway_ids_map_in_the_fleet(redis_url: str) -> None:
    """Through a gateway the first differing id is Kling's, recorded in Redis for every
    worker: a third id is refused (400), Kling's id wakes the wait under the gateway's."""
    client = aioredis.Redis.from_url(redis_url)
    async with (
        worker(client, confirm=False) as (one, _),
        worker(client, confirm=False) as (two, _),
        KlingEmulator(auto_advance=False) as emu,
        gateway(emu, fleet=client, callbacks=one, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        account, nonce, _ = token.split(".")
        await until(lambda: _bound(client, account, nonce))
        assert 200 == await one.deliver(token, body("kling-777", "processing"))
        assert 400 == await two.deliver(token, body("kling-888", "succeed"))
        assert 200 == await two.deliver(token, body("kling-777", "succeed", updated=3))
        with anyio.fail_after(5):
            task = await handle.wait()
        assert handle.task_id == task.task_id
    await client.aclose()


async def test_the_secret_is_made_once_for_every_worker(redis_url: str) -> None:
    """Two receivers and a session agree on one secret, made once with SET NX."""
    client = aioredis.Redis.from_url(redis_url)
    async with worker(client) as (one, _), worker(redis_url) as (two, _):
        assert await one._fleet.secret() == await two._fleet.secret()  # type: ignore[union-attr]
        assert bytes.fromhex((await client.get(SECRET_KEY)).decode()) == await one._fleet.secret()  # type: ignore[union-attr]
    assert await client.ping()  # borrowed: never closed
    await client.aclose()
