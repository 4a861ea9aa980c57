"""Emulator specification: callbacks as Kling sends them, and callback faults (api.md)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from kling_async.testing import Fault, KlingEmulator, RecordedCallback

from .test_emulator import FakeClock, create, query

pytestmark = pytest.mark.anyio


@attrs.define
class Receiver:
    """A callback receiver on loopback: its URL, what it got, and what it answers."""

    url: str = ""
    bodies: list[Any] = attrs.field(factory=list)
    headers: list[dict[str, str]] = attrs.field(factory=list)
    status: int = 200
    on_receive: Callable[[], None] | None = None

    @property
    def statuses(self) -> list[str]:
        return [body["task_status"] for body in self.bodies]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()

    async def hook(request: web.Request) -> web.Response:
        got.headers.append(dict(request.headers))
        got.bodies.append(await request.json())
        if got.on_receive is not None:
            got.on_receive()
        return web.Response(status=got.status, text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield got
    finally:
        await runner.cleanup()


async def make_task(http: aiohttp.ClientSession, emu: KlingEmulator, url: str) -> str:
    task_id: str = (await create(http, emu.base_url, callback_url=url)).body["data"]["task_id"]
    return task_id


async def poll(http: aiohttp.ClientSession, emu: KlingEmulator, task_id: str, times: int) -> None:
    for _ in range(times):
        await query(http, emu.base_url, task_id)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (the emulator delivers in the background)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


# ---------------------------------------------------------------------------- as Kling sends them


async def test_each_status_change_posts_the_query_object(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """Each status change, submitted included, POSTs the task object the query returns."""
    task_id = await make_task(http, emu, receiver.url)
    answers = [(await query(http, emu.base_url, task_id)).body["data"] for _ in range(3)]
    await emu.drain_callbacks()
    assert answers == receiver.bodies
    assert ["submitted", "processing", "succeed"] == receiver.statuses


async def test_callbacks_are_bare_and_unsigned(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A callback body is the bare task object (no envelope), sent as JSON without credentials."""
    await make_task(http, emu, receiver.url)
    await emu.drain_callbacks()
    (body,) = receiver.bodies
    (headers,) = receiver.headers
    assert "code" not in body
    assert "data" not in body
    assert "application/json" == headers["Content-Type"]
    assert not {"authorization", "x-signature", "x-kling-signature"} & {
        name.lower() for name in headers
    }


async def test_callback_log(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """emu.callbacks records each attempt: URL, body, fault and the receiver's HTTP status."""
    receiver.status = 503
    task_id = await make_task(http, emu, receiver.url)
    await emu.drain_callbacks()
    assert [
        RecordedCallback(
            url=receiver.url, body=receiver.bodies[0], fault=None, status=503, error=None
        )
    ] == emu.callbacks
    assert (task_id, "submitted") == (emu.callbacks[0].task_id, emu.callbacks[0].task_status)


async def test_set_status_sends_a_callback(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A status set by hand is a change like any other: its callback carries the message."""
    task_id = await make_task(http, emu, receiver.url)
    emu.set_status(task_id, "failed", message="late")
    await emu.drain_callbacks()
    assert [("submitted", ""), ("failed", "late")] == [
        (b["task_status"], b["task_status_msg"]) for b in receiver.bodies
    ]


async def test_time_driven_callbacks_need_no_polls(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """With step_seconds the background ticker sends every change's callback without polls."""
    clock = FakeClock()
    async with KlingEmulator(step_seconds=10) as emu:
        emu.clock = clock
        await make_task(http, emu, receiver.url)
        clock.now += 25
        await until(lambda: len(receiver.bodies) == 3)
        assert ["submitted", "processing", "succeed"] == receiver.statuses
        assert [0, 10_000, 20_000] == [b["updated_at"] - b["created_at"] for b in receiver.bodies]


async def test_unreachable_receivers_are_logged(http: aiohttp.ClientSession) -> None:
    """A callback to a closed port is logged with no status and the error, and breaks nothing."""
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    async with KlingEmulator(polls_to_start=0, polls_to_finish=0) as emu:
        task_id = await make_task(http, emu, dead_url)
        await query(http, emu.base_url, task_id)
        await emu.drain_callbacks()
        assert [("submitted", None), ("processing", None), ("succeed", None)] == [
            (c.task_status, c.status) for c in emu.callbacks
        ]
        assert all(c.error for c in emu.callbacks)


async def test_close_delivers_pending_callbacks(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """close() delivers pending callbacks before returning, and may be called twice."""
    emu = KlingEmulator(auto_advance=False)
    await emu.start()
    try:
        task_id = await make_task(http, emu, receiver.url)
        emu.set_status(task_id, "processing")
        emu.set_status(task_id, "succeed")
    finally:
        await emu.close()
    assert ["submitted", "processing", "succeed"] == receiver.statuses
    await emu.close()


# ---------------------------------------------------------------------------- faults


async def test_lost(emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """A lost callback never arrives; the log still shows it, with error "lost"."""
    emu.inject(Fault.callback_lost(), route="callback")
    task_id = await make_task(http, emu, receiver.url)
    await poll(http, emu, task_id, 3)
    await emu.drain_callbacks()
    assert ["processing", "succeed"] == receiver.statuses
    assert [("submitted", Fault.callback_lost(), None, "lost")] == [
        (c.task_status, c.fault, c.status, c.error) for c in emu.callbacks if c.fault
    ]


async def test_duplicated(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A duplicated callback arrives twice, and both attempts are logged."""
    emu.inject(Fault.callback_duplicated(), route="callback")
    task_id = await make_task(http, emu, receiver.url)
    await poll(http, emu, task_id, 3)
    await emu.drain_callbacks()
    assert ["submitted", "submitted", "processing", "succeed"] == receiver.statuses
    assert [Fault.callback_duplicated()] * 2 + [None] * 2 == [c.fault for c in emu.callbacks]


async def test_reordered(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A reordered callback is overtaken by the task's next one."""
    emu.inject(Fault.callback_reordered(), route="callback")
    task_id = await make_task(http, emu, receiver.url)
    await poll(http, emu, task_id, 3)
    await emu.drain_callbacks()
    assert ["processing", "submitted", "succeed"] == receiver.statuses


async def test_reordered_last_callback_is_released_by_drain(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A held callback with nothing after it is sent by drain_callbacks()."""
    task_id = await make_task(http, emu, receiver.url)
    await poll(http, emu, task_id, 2)
    emu.inject(Fault.callback_reordered(), route="callback")
    await poll(http, emu, task_id, 1)
    await emu.drain_callbacks()
    assert ["submitted", "processing", "succeed"] == receiver.statuses


async def test_times_applies_to_the_next_callbacks(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """times=N gives the fault to the next N callbacks, across tasks, in the order sent."""
    emu.inject(Fault.callback_lost(), route="callback", times=2)
    first = await make_task(http, emu, receiver.url)
    await make_task(http, emu, receiver.url)
    await poll(http, emu, first, 2)
    await emu.drain_callbacks()
    assert [(first, "processing")] == [(b["task_id"], b["task_status"]) for b in receiver.bodies]


async def test_delayed(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """A delayed callback lets later ones pass it; close() cuts the delay short."""
    emu = KlingEmulator()
    await emu.start()
    try:
        emu.inject(Fault.callback_delayed(30), route="callback")
        task_id = await make_task(http, emu, receiver.url)
        await poll(http, emu, task_id, 3)
        await until(lambda: len(receiver.bodies) == 2)
        assert ["processing", "succeed"] == receiver.statuses
        started = time.monotonic()
    finally:
        await emu.close()
    assert time.monotonic() - started < 5
    assert ["processing", "succeed", "submitted"] == receiver.statuses


async def test_delayed_arrives_after_its_delay(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A callback delayed by N seconds arrives no sooner than N seconds later."""
    emu.inject(Fault.callback_delayed(0.05), route="callback")
    started = time.monotonic()
    await make_task(http, emu, receiver.url)
    await emu.drain_callbacks()
    assert ["submitted"] == receiver.statuses
    assert time.monotonic() - started >= 0.05


async def test_before_reply(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """The submitted callback can land, and be answered, before the create's reply is sent."""
    reply_sent_at_callback: list[int | None] = []
    receiver.on_receive = lambda: reply_sent_at_callback.append(emu.requests[-1].status)
    emu.inject(Fault.callback_before_reply(), route="callback")
    task_id = await make_task(http, emu, receiver.url)
    assert [None] == reply_sent_at_callback  # the create had not been answered yet
    assert [task_id] == [b["task_id"] for b in receiver.bodies]  # no drain needed
    assert (Fault.callback_before_reply(), 200) == (emu.callbacks[0].fault, emu.callbacks[0].status)


async def test_before_reply_waits_for_a_request(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A change no request caused (set_status) skips before_reply; the next create takes it."""
    first = await make_task(http, emu, receiver.url)
    emu.inject(Fault.callback_before_reply(), route="callback")
    emu.set_status(first, "processing")
    second = await make_task(http, emu, receiver.url)
    await emu.drain_callbacks()
    faults = {
        task_id: [c.fault for c in emu.callbacks if c.task_id == task_id]
        for task_id in (first, second)
    }
    assert {first: [None, None], second: [Fault.callback_before_reply()]} == faults


async def test_callback_faults_do_not_touch_requests(
    emu: KlingEmulator, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A callback fault waits for a callback: requests pass it by, and vice versa."""
    emu.inject(Fault.callback_lost(), route="callback")
    emu.inject(Fault.http(500))
    assert 500 == (await create(http, emu.base_url, callback_url=receiver.url)).status
    await make_task(http, emu, receiver.url)
    await emu.drain_callbacks()
    assert [] == receiver.bodies
    assert [Fault.http(500), None] == [r.fault for r in emu.requests]
