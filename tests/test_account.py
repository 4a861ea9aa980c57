"""The in-process implementations of the account-wide seams (`SlotGate`, `RequestPace`):
the promises any other implementation (a fleet's) must keep too."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from kling_async import SessionClosedError
from kling_async._account import DeadlinePassed, LocalPace, LocalSlotGate
from kling_async._pace import Pace

pytestmark = pytest.mark.anyio


class Sleeps:
    """The session's sleep as the gate uses it: up to ``delay`` or until ``wake`` is set;
    closed, it raises SessionClosedError."""

    def __init__(self) -> None:
        self.closed = False

    async def __call__(self, delay: float, wake: anyio.Event | None) -> None:
        with anyio.move_on_after(delay):
            if wake is not None:
                await wake.wait()
            else:
                await anyio.sleep_forever()
        if self.closed:
            raise SessionClosedError("closed")


async def _waiter(gate: LocalSlotGate, name: str, woken: list[str]) -> None:
    await gate.wait(60)
    woken.append(name)


async def test_each_freed_slot_wakes_the_oldest_waiter_only() -> None:
    """Slots go to the creates refused first, one per task seen finishing."""
    gate = LocalSlotGate(Sleeps())
    woken: list[str] = []
    async with anyio.create_task_group() as group:
        for name in ("first", "second", "third"):
            group.start_soon(_waiter, gate, name, woken)
            await anyio.wait_all_tasks_blocked()
        gate.freed("task-1")
        await anyio.wait_all_tasks_blocked()
        assert ["first"] == woken
        gate.freed("task-2")
        gate.freed("task-3")
    assert ["first", "second", "third"] == woken


async def test_a_slot_given_to_a_cancelled_waiter_passes_to_the_next() -> None:
    """A waiter woken for a slot and cancelled before it ran again (a native asyncio cancel,
    as a web framework's request timeout sends) hands the slot to the next in line."""
    gate = LocalSlotGate(Sleeps())
    woken: list[str] = []
    first = asyncio.ensure_future(_waiter(gate, "first", woken))
    await anyio.wait_all_tasks_blocked()
    async with anyio.create_task_group() as group:
        group.start_soon(_waiter, gate, "second", woken)
        await anyio.wait_all_tasks_blocked()
        gate.freed("task-1")  # the first in line is woken for it ...
        first.cancel()  # ... and cancelled before it could use it
        await anyio.wait_all_tasks_blocked()
        assert ["second"] == woken
        group.cancel_scope.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_closing_the_gate_wakes_every_waiter() -> None:
    """The session closes: every create waiting for a slot wakes and raises."""
    sleeps = Sleeps()
    gate = LocalSlotGate(sleeps)
    failures: list[type[BaseException]] = []

    async def waiter() -> None:
        try:
            await gate.wait(60)
        except SessionClosedError as error:
            failures.append(type(error))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        sleeps.closed = True
        gate.close()
    assert [SessionClosedError] * 3 == failures


def _throttled(now: float) -> Pace:
    """A pace that has just met a 1302 at ``now`` (the loop's clock), sending 10 a second."""
    pace = Pace()
    for n in range(10):
        pace.sent(now - 1 + n / 10)
    pace.throttled(now, sent_at=now)
    while pace.turn(pace.join(), now) == 0.0:  # spend what the bucket holds
        pass
    return pace


async def test_a_turn_past_the_deadline_gives_up_its_place() -> None:
    """A request whose turn would come after its deadline raises DeadlinePassed at once, and
    leaves the line as it found it."""
    now = asyncio.get_running_loop().time()
    pace = _throttled(now)
    local = LocalPace(pace)
    assert local.enabled
    waiting = pace.waiting
    with pytest.raises(DeadlinePassed):
        await local.turn(deadline=now)
    assert waiting == pace.waiting


async def test_closing_the_pace_ends_every_wait_for_a_turn() -> None:
    """Requests waiting their turn raise SessionClosedError when the session closes."""
    pace = _throttled(asyncio.get_running_loop().time())
    local = LocalPace(pace)
    failures: list[type[BaseException]] = []

    async def request() -> None:
        try:
            await local.turn(deadline=None)
        except SessionClosedError as error:
            failures.append(type(error))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(request)
        await anyio.wait_all_tasks_blocked()
        local.close()
    assert [SessionClosedError] * 3 == failures
