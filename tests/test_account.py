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


# -- the gate with a limit: a slot taken before each send, kept until its task finishes ------


async def _take(gate: LocalSlotGate, name: str, taken: list[str]) -> None:
    slot = await gate.acquire(None)
    taken.append(name)
    await gate.bind(slot, f"task-{name}")


async def test_a_full_gate_hands_each_freed_slot_to_the_oldest_create() -> None:
    """Under a limit of 2, the third and fourth creates wait, and pass in the order they came,
    one per task of the gate seen finished; a task the gate never counted frees nothing."""
    gate = LocalSlotGate(Sleeps(), limit=2)
    taken: list[str] = []
    async with anyio.create_task_group() as group:
        for name in ("a", "b", "c", "d"):
            group.start_soon(_take, gate, name, taken)
            await anyio.wait_all_tasks_blocked()
        assert ["a", "b"] == taken
        gate.freed("task-elsewhere")
        await anyio.wait_all_tasks_blocked()
        assert ["a", "b"] == taken
        gate.freed("task-b")
        await anyio.wait_all_tasks_blocked()
        assert ["a", "b", "c"] == taken
        gate.freed("task-a")
    assert ["a", "b", "c", "d"] == taken
    assert 2 == gate.held


async def test_a_slot_handed_to_a_cancelled_create_passes_on() -> None:
    """A create handed a slot and cancelled before it ran again gives it to the next."""
    gate = LocalSlotGate(Sleeps(), limit=1)
    taken: list[str] = []
    await _take(gate, "a", taken)
    first = asyncio.ensure_future(_take(gate, "first", taken))
    await anyio.wait_all_tasks_blocked()
    async with anyio.create_task_group() as group:
        group.start_soon(_take, gate, "second", taken)
        await anyio.wait_all_tasks_blocked()
        gate.freed("task-a")  # handed to the first in line ...
        first.cancel()  # ... cancelled before it could use it
        await anyio.wait_all_tasks_blocked()
    assert ["a", "second"] == taken
    with pytest.raises(asyncio.CancelledError):
        await first
    assert 1 == gate.held


async def test_released_refused_and_past_deadline_creates_leave_the_count_as_it_was() -> None:
    """A create that made no task gives its slot back (refused with 1303 too); one whose
    deadline passes at a full gate raises DeadlinePassed and takes nothing."""
    gate = LocalSlotGate(Sleeps(), limit=1)
    gate.release(await gate.acquire(None))
    gate.refused(await gate.acquire(None))
    assert 0 == gate.held
    slot = await gate.acquire(None)
    with pytest.raises(DeadlinePassed):
        await gate.acquire(anyio.current_time() + 0.01)
    gate.release(slot)
    gate.release(slot)  # once is enough
    assert 0 == gate.held


async def test_a_create_left_in_doubt_keeps_its_slot_for_a_create_s_time_on_the_wire() -> None:
    """A create that may have made a task holds its slot ``hold`` seconds, then gives it back."""
    gate = LocalSlotGate(Sleeps(), limit=1, hold=0.05)
    gate.doubt(await gate.acquire(None))
    assert 1 == gate.held
    await gate.acquire(anyio.current_time() + 5)  # handed on once the hold ends
    assert 1 == gate.held


async def test_closing_wakes_every_create_waiting_at_a_full_gate() -> None:
    """The session closes: creates waiting for a slot raise SessionClosedError."""
    sleeps = Sleeps()
    gate = LocalSlotGate(sleeps, limit=1)
    await gate.acquire(None)
    failures: list[type[BaseException]] = []

    async def waiter() -> None:
        try:
            await gate.acquire(None)
        except SessionClosedError as error:
            failures.append(type(error))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        sleeps.closed = True
        gate.close()
    assert [SessionClosedError] * 3 == failures


async def test_without_a_limit_the_gate_counts_nothing() -> None:
    """No limit: every create passes at once, as before the gate existed."""
    gate = LocalSlotGate(Sleeps())
    slots = [await gate.acquire(None) for _ in range(100)]
    for index, slot in enumerate(slots):
        await gate.bind(slot, f"task-{index}")
    assert 0 == gate.held
