"""Account-wide concerns behind small protocols, with the in-process implementations.

Kling's limits are per account, not per process: the parallel-task limit (1303) and the rate
limit (1302). A session reaches them only through these seams, so that sessions in many
processes can share one implementation (the fleet) without a branch in the drivers:

- `SlotGate`: a create takes a slot before its send and keeps it until its task is seen
  finished; creates refused with 1303 wait here for a task to finish (`LocalSlotGate`; the
  fleet's is ``_redis_gate.RedisSlotGate``);
- `RequestPace`: every request takes its turn at the pace learned from 1302 (`LocalPace`);
- the journal of keyed creates (``_journal.Journal``), the task states and their one poller
  (``_task_state``), and a receiver's callback tokens (``_callback_tokens``, kept by
  ``callbacks``) are the others.

The pace's arithmetic is pure (``_pace.Pace``); `LocalPace` only sleeps on the loop's clock
and wakes the sleepers when the rate climbs back (``docs/waiting.md``, "The session-wide pace
after a rate limit").
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import anyio

from ._pace import Pace
from .errors import SessionClosedError
from .models import TaskFamily

__all__ = [
    "CLOSED_WHILE_PENDING",
    "DeadlinePassed",
    "LocalPace",
    "LocalSlotGate",
    "RequestPace",
    "Slot",
    "SlotGate",
    "WaitLine",
]

CLOSED_WHILE_PENDING = "the session was closed while this call was pending"
# A request waiting for its turn at the pace asks again at least this often (seconds).
_PACE_RECHECK = 2.0


class DeadlinePassed(Exception):
    """A caller's deadline ran out before the request was sent (nothing left the machine)."""


class Slot:
    """One create's place at the gate: taken before its send, kept until its task is seen
    finished (once bound to the task's id), or given back when the create made no task.

    ``token`` names it while its create is in flight; ``counted`` says whether the gate
    counts it (an in-process gate without a limit does not); ``settled`` is set once it
    was bound, released, refused or left in doubt (later calls change nothing).
    """

    __slots__ = ("counted", "settled", "token")

    def __init__(self, token: str, *, counted: bool) -> None:
        self.token = token
        self.counted = counted
        self.settled = False


class SlotGate(Protocol):
    """The account's parallel-task gate (1303): a create passes it before its send, and
    creates refused with 1303 anyway (the account may be shared) wait here for a slot."""

    async def acquire(self, deadline: float | None) -> Slot:
        """Take a slot, waiting (oldest first) while the account is at its limit;
        `DeadlinePassed` past ``deadline`` (the loop's clock), SessionClosedError on close,
        `FleetUnavailableError` when a shared gate cannot be reached (nothing was sent)."""

    async def bind(self, slot: Slot, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> None:
        """The create made ``task_id`` (of ``family``, whose routes it is polled on): the
        slot stays taken until that task is seen finished (`freed`). Never raises for a
        gate's own trouble: the task exists."""

    def release(self, slot: Slot) -> None:
        """The create certainly made no task (refused, not sent, cancelled before its send)."""

    def refused(self, slot: Slot) -> None:
        """The create was refused with 1303: the slot goes back, and a gate without a set
        limit may learn one from it."""

    def doubt(self, slot: Slot) -> None:
        """The create ended while it may have made a task nobody can name: the slot is kept
        for a create's longest time on the wire, then given back."""

    def freed(self, task_id: str, running: bool = True) -> None:
        """``task_id`` was seen finished (by a poll, a list or a callback): its slot, if it
        has one, is free; when it was seen ``running`` before, a slot of the account came
        free now and one create waiting after a 1303 may try again (a task long finished,
        queried again, wakes nobody)."""

    async def renew(self, task_ids: Collection[str]) -> None:
        """``task_ids`` were seen running: their slots outlive a process that stopped."""

    async def wait(self, delay: float) -> None:
        """After a 1303: wait up to ``delay`` seconds, or until a task seen finishing frees
        a slot."""

    def close(self) -> None:
        """The session closes: wake every waiter (each then raises SessionClosedError)."""


class RequestPace(Protocol):
    """The pace every request of the account keeps after a 1302 (requests too frequent)."""

    @property
    def enabled(self) -> bool:
        """Whether requests take turns now (checked before `turn`: it is off until a 1302)."""

    @property
    def rate(self) -> float | None:
        """Requests per second held to, or None while no 1302 was seen."""

    async def turn(self, deadline: float | None) -> None:
        """Wait for this request's turn; `DeadlinePassed` if it would come after ``deadline``
        (the loop's clock)."""

    def sent(self, now: float) -> None:
        """A request left at ``now``."""

    def throttled(self, now: float, sent_at: float) -> None:
        """The request sent at ``sent_at`` was answered 1302 at ``now``."""

    def succeeded(self, now: float) -> None:
        """A request was answered (not 1302) at ``now``."""

    def close(self) -> None:
        """The session closes: wake every request waiting for its turn."""


Sleep = Callable[[float, "anyio.Event | None"], Awaitable[None]]


class WaitLine:
    """Creates refused with 1303, oldest first: each slot seen freed wakes the oldest."""

    __slots__ = ("_sleep", "_waiters")

    def __init__(self, sleep: Sleep) -> None:
        self._sleep = sleep  # the session's: closing it wakes the sleep and raises
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    async def wait(self, delay: float) -> None:
        """Wait up to ``delay`` seconds, or until `wake` reaches this waiter."""
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await self._sleep(delay, event)
        except BaseException:
            if event.is_set():
                self.wake(1)  # woken for a slot, then cancelled: the next one takes it
            raise
        finally:
            if not event.is_set():
                self._waiters.remove(event)

    def wake(self, count: int = 1) -> None:
        """Wake the ``count`` oldest waiters."""
        while count > 0 and self._waiters:
            self._waiters.popleft().set()
            count -= 1

    def close(self) -> None:
        self.wake(len(self._waiters))


class _Turn:
    """One create waiting at a full gate: set with ``granted`` when a slot is handed to it."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class LocalSlotGate:
    """The slot gate of one process.

    Without ``limit`` it only queues creates refused with 1303 (each task seen finishing
    wakes the oldest). With one, at most ``limit`` creates in flight and tasks made and not
    yet seen finished at once: the others wait, oldest first, for a slot handed to them
    (passed on when its waiter was cancelled). A create left in doubt keeps its slot for
    ``hold`` seconds (a create's longest time on the wire).
    """

    __slots__ = ("_bound", "_closed", "_hold", "_limit", "_line", "_sleep", "_turns", "_used")

    def __init__(self, sleep: Sleep, *, limit: int | None = None, hold: float = 150.0) -> None:
        self._sleep = sleep
        self._limit = limit
        self._hold = hold
        self._line = WaitLine(sleep)
        self._turns: collections.deque[_Turn] = collections.deque()
        self._used = 0  # slots taken: creates in flight and tasks bound
        self._bound: set[str] = set()
        self._closed = False

    @property
    def held(self) -> int:
        """Slots taken now (creates in flight and tasks not yet seen finished)."""
        return self._used

    async def acquire(self, deadline: float | None) -> Slot:
        if self._limit is None:
            return Slot("", counted=False)
        if self._closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        if not self._turns and self._used < self._limit:
            self._used += 1
            return Slot("", counted=True)
        turn = _Turn()
        self._turns.append(turn)
        try:
            while not turn.granted:
                if self._closed:
                    raise SessionClosedError(CLOSED_WHILE_PENDING)
                delay = math.inf if deadline is None else deadline - anyio.current_time()
                if delay <= 0:
                    raise DeadlinePassed
                await self._sleep(delay, turn.event)
        except BaseException:
            if turn.granted:
                self._give_back()  # handed a slot, then cancelled: the next one takes it
            else:
                self._turns.remove(turn)
            raise
        return Slot("", counted=True)

    async def bind(self, slot: Slot, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> None:
        if not self._settle(slot):
            return
        if task_id in self._bound:  # already counted (found twice): one slot is enough
            self._give_back()
        else:
            self._bound.add(task_id)

    def release(self, slot: Slot) -> None:
        if self._settle(slot):
            self._give_back()

    def refused(self, slot: Slot) -> None:
        self.release(slot)  # a set limit stays as set; none is learned in one process

    def doubt(self, slot: Slot) -> None:
        if self._settle(slot):
            asyncio.get_running_loop().call_later(self._hold, self._give_back)

    def freed(self, task_id: str, running: bool = True) -> None:
        if task_id in self._bound:
            self._bound.discard(task_id)
            self._give_back()
        if running:
            self._line.wake(1)

    async def renew(self, task_ids: Collection[str]) -> None:
        return None  # one process's slots live as long as the process

    async def wait(self, delay: float) -> None:
        await self._line.wait(delay)

    def close(self) -> None:
        self._closed = True
        self._line.close()
        for turn in self._turns:
            turn.event.set()

    def _settle(self, slot: Slot) -> bool:
        """Mark ``slot`` settled; whether it was counted and not settled before."""
        first = slot.counted and not slot.settled
        slot.settled = True
        return first

    def _give_back(self) -> None:
        """A slot comes back: hand it to the oldest waiting create, or count it free."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.event.is_set():
                turn.granted = True
                turn.event.set()
                return
        self._used -= 1


class LocalPace:
    """The pace of one process: `Pace`'s turns, slept on the loop's clock.

    The pace only says how long to sleep before asking again: at most until the next token
    for the first in line, and never longer than ``_PACE_RECHECK``; a rate that climbs back
    wakes the sleepers at once.
    """

    __slots__ = ("_closed", "_sleepers", "_wake_due", "pace")

    def __init__(self, pace: Pace | None = None) -> None:
        self.pace = pace if pace is not None else Pace()
        self._closed = False
        self._sleepers: list[asyncio.Future[None]] = []  # requests waiting for a turn
        self._wake_due = False

    @property
    def enabled(self) -> bool:
        return self.pace.enabled

    @property
    def rate(self) -> float | None:
        return self.pace.rate

    async def turn(self, deadline: float | None) -> None:
        """Wait for this request's turn (in the order turns were asked); past ``deadline``
        (at today's rate) the request gives up its place and raises `DeadlinePassed`."""
        loop = asyncio.get_running_loop()
        pace = self.pace
        ticket = pace.join()
        served = False
        try:
            while True:
                now = loop.time()
                delay = pace.turn(ticket, now)
                if delay <= 0:
                    served = True
                    return
                if deadline is not None and now + delay > deadline:
                    raise DeadlinePassed
                await self._sleep(loop, min(delay, _PACE_RECHECK))
        finally:
            if not served:
                pace.leave(ticket)  # those behind move up: let them recompute
                if not self._wake_due and self._sleepers:
                    # One wake-up for all the places given up in this turn of the loop (a
                    # thousand waits cancelled together must not wake each other a thousand
                    # times).
                    self._wake_due = True
                    loop.call_soon(self._wake)

    def sent(self, now: float) -> None:
        self.pace.sent(now)

    def throttled(self, now: float, sent_at: float) -> None:
        self.pace.throttled(now, sent_at)

    def succeeded(self, now: float) -> None:
        if self.pace.enabled and self.pace.succeeded(now):
            self._wake()  # the rate climbed: the queue's sleeps are too long

    def close(self) -> None:
        self._closed = True
        self._wake()

    async def _sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Sleep ``seconds`` on the loop's clock, or until the pace or the session changes."""
        if self._closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        future: asyncio.Future[None] = loop.create_future()
        self._sleepers.append(future)
        timer = loop.call_later(seconds, _wake, future)
        try:
            await future
        finally:
            timer.cancel()
            if not future.done():
                self._sleepers.remove(future)
        if self._closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)

    def _wake(self) -> None:
        self._wake_due = False
        sleepers, self._sleepers = self._sleepers, []
        for future in sleepers:
            if not future.done():
                future.set_result(None)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
