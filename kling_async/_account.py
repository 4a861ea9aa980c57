"""Account-wide concerns behind small protocols, with the in-process implementations.

Kling's limits are per account, not per process: the parallel-task limit (1303) and the rate
limit (1302). A session reaches them only through these seams, so that sessions in many
processes can share one implementation (the fleet) without a branch in the drivers:

- `SlotGate`: creates refused with 1303 wait here for a task to finish (`LocalSlotGate`);
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
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

from ._pace import Pace
from .errors import SessionClosedError

__all__ = [
    "CLOSED_WHILE_PENDING",
    "DeadlinePassed",
    "LocalPace",
    "LocalSlotGate",
    "RequestPace",
    "SlotGate",
]

CLOSED_WHILE_PENDING = "the session was closed while this call was pending"
# A request waiting for its turn at the pace asks again at least this often (seconds).
_PACE_RECHECK = 2.0


class DeadlinePassed(Exception):
    """A caller's deadline ran out before the request was sent (nothing left the machine)."""


class SlotGate(Protocol):
    """Where creates refused with 1303 (too many running tasks) wait for a slot."""

    async def wait(self, delay: float) -> None:
        """Wait up to ``delay`` seconds, or until a task seen finishing frees a slot."""

    def freed(self, count: int = 1) -> None:
        """``count`` tasks were seen finishing: as many waiting creates may try again."""

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


class LocalSlotGate:
    """The slot gate of one process: each freed slot lets the oldest waiter try again."""

    __slots__ = ("_sleep", "_waiters")

    def __init__(self, sleep: Sleep) -> None:
        self._sleep = sleep  # the session's: closing it wakes the sleep and raises
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    async def wait(self, delay: float) -> None:
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await self._sleep(delay, event)
        except BaseException:
            if event.is_set():
                self.freed(1)  # woken for a slot, then cancelled: the next one takes it
            raise
        finally:
            if not event.is_set():
                self._waiters.remove(event)

    def freed(self, count: int = 1) -> None:
        while count > 0 and self._waiters:
            self._waiters.popleft().set()
            count -= 1

    def close(self) -> None:
        self.freed(len(self._waiters))


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
