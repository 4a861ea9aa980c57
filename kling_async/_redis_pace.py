"""The account's pace shared by the fleet: one token bucket in Redis for every process.

A 1302 seen by any process slows every process: the cut is a Lua script on the bucket
(``_pace_lua``) that publishes the change, and each process mirrors the bucket's on/off and
rate locally (from that message, and from a one-second beat that also reports its own send
rate), so `enabled` costs no Redis call. While the pace is on, the first request in this
process's line takes tokens from Redis for as many in line as the bucket holds (one round
trip for one or more turns); the others wait behind it in order, as with `LocalPace`. Across
processes the order is best effort: whoever asks Redis first after a token accrues gets it.

`sent`, `throttled` and `succeeded` stay synchronous: a 1302 queues one cut (the latest of a
burst), and replies write nothing (the climb is a function of the time since the cut).
While Redis cannot be reached the pace falls back to a `LocalPace` fed all along, logs it
once, and returns to the fleet's bucket when Redis answers again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from ._account import CLOSED_WHILE_PENDING, DeadlinePassed, LocalPace
from ._pace_lua import PACE_SCRIPT
from .errors import FleetError, SessionClosedError

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["OFF_AFTER", "RedisPace"]

logger = logging.getLogger("kling_async")

OFF_AFTER = 3.0
"""Seconds the fleet's rate must stay at or above the rate measured before its last cut
before the pace switches off fleet-wide."""
_BEAT = 1.0  # seconds between a process's reports of its send rate (and reads of the bucket)
_CALL_TIMEOUT = 2.0  # a pace call to Redis that takes longer counts as Redis lost
_MIN_RATE = 0.5  # the slowest rate a guess at a wait assumes (``_pace``'s floor)
_RECHECK = 2.0  # a request waiting for its turn looks again at least this often (seconds)


class _Waiter:
    """One request in this process's line."""

    __slots__ = ("future", "granted")

    def __init__(self) -> None:
        self.granted = False
        self.future: asyncio.Future[None] | None = None


class RedisPace:
    """The `RequestPace` of a fleet: `LocalPace`'s promises, with the bucket in Redis.

    `start` (or the first look at `enabled` inside the loop) starts the background loops on
    the fleet: the beat, the listener of the ``changed`` channel, and the writer of cuts.
    ``round_trips`` counts the Redis calls this pace made.
    """

    def __init__(self, fleet: Fleet, *, off_after: float = OFF_AFTER) -> None:
        self.fleet = fleet
        self.local = LocalPace()  # fed all along: the pace while Redis is lost
        self.round_trips = 0
        self._script = fleet.client.register_script(PACE_SCRIPT)
        self._keys = [fleet.key("pace"), fleet.key("pace", "sent"), fleet.key("pace", "changed")]
        self._off_after = off_after
        self._on = False  # the fleet's bucket is on, as last heard
        self._rate = 0.0
        self._version = -1
        self._cut: tuple[float, float] | None = None  # (sent_at, send rate) of a 1302 to write
        self._down = False
        self._closed = False
        self._started = False
        self._line: collections.deque[_Waiter] = collections.deque()
        self._fetching = False
        self._kick: asyncio.Event | None = None
        self._flushing: asyncio.Lock | None = None

    # -- RequestPace ------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        if not self._started:
            self.start()
        if self._down:
            return self.local.enabled
        return self._on or self._cut is not None

    @property
    def rate(self) -> float | None:
        if self._down or (self._cut is not None and not self._on):
            return self.local.rate
        return self._rate if self._on else None

    @property
    def down(self) -> bool:
        """Whether Redis was lost (this process then paces itself alone)."""
        return self._down

    def start(self) -> None:
        """Start the background loops (once; a no-op outside a running loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._started or self.fleet.closed:
            return
        self._started = True
        self._kick = asyncio.Event()
        self._flushing = asyncio.Lock()
        self.fleet.start(self._beat_loop)
        self.fleet.start(lambda: self.fleet.listen(self._keys[2], self._heard))
        self.fleet.start(self._flush_loop)

    async def turn(self, deadline: float | None) -> None:
        """Wait for this request's turn, in this process's order; `DeadlinePassed` if it
        would come after ``deadline``; `LocalPace`'s turn while Redis is lost."""
        if self._closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        if not self._down:
            await self._fleet_turn(deadline)
        if self._down:
            await self.local.turn(deadline)

    def sent(self, now: float) -> None:
        self.local.sent(now)

    def throttled(self, now: float, sent_at: float) -> None:
        self.local.throttled(now, sent_at)
        if self._cut is None or sent_at > self._cut[0]:
            self._cut = (sent_at, self.local.pace.recent(now))
        if self._kick is not None:
            self._kick.set()

    def succeeded(self, now: float) -> None:
        self.local.succeeded(now)  # the fleet's climb needs no write

    def close(self) -> None:
        self._closed = True
        self.local.close()
        for waiter in self._line:
            _wake(waiter)

    # -- the line -----------------------------------------------------------------------------

    async def _fleet_turn(self, deadline: float | None) -> None:
        """Wait in this process's line for a token from the fleet's bucket; return without
        one when the pace goes off or Redis is lost (then `turn` asks the local pace)."""
        loop = asyncio.get_running_loop()
        line = self._line
        waiter = _Waiter()
        line.append(waiter)
        try:
            while not waiter.granted:
                if self._closed:
                    raise SessionClosedError(CLOSED_WHILE_PENDING)
                if self._down or not self.enabled:
                    return
                if line[0] is waiter and not self._fetching:
                    delay = await self._fetch()
                    if delay is None or waiter.granted:
                        continue
                else:  # behind others: a guess at today's rate, checked again when first
                    delay = max(line.index(waiter), 1) / (self.rate or _MIN_RATE)
                now = loop.time()
                if deadline is not None and now + delay > deadline:
                    raise DeadlinePassed
                await self._sleep(waiter, min(delay, _RECHECK))
        finally:
            if not waiter.granted:
                self._leave(waiter)

    async def _fetch(self) -> float | None:
        """Take tokens for the first in line (one round trip); the seconds the first must
        wait for the next token, or None when the pace is off or Redis lost."""
        self._fetching = True
        try:
            if self._cut is not None:
                await self._flush()
            if self._down:
                return None
            reply = await self._call("take", str(len(self._line)))
        except (FleetError, asyncio.TimeoutError) as error:
            self._lost(error)
            return None
        finally:
            self._fetching = False
        self._apply(reply)
        line = self._line
        for _ in range(min(int(reply[3]), len(line))):
            waiter = line.popleft()
            waiter.granted = True
            _wake(waiter)
        if line:
            _wake(line[0])
        return float(reply[4]) if self._on else None

    def _leave(self, waiter: _Waiter) -> None:
        line = self._line
        first = bool(line) and line[0] is waiter
        line.remove(waiter)
        if first and line:
            _wake(line[0])  # the next one asks Redis now

    async def _sleep(self, waiter: _Waiter, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        future = waiter.future = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiter)
        try:
            await future
        finally:
            timer.cancel()
            waiter.future = None

    # -- Redis ----------------------------------------------------------------------------------

    async def _call(self, *args: str) -> list[Any]:
        """One run of the pace script; `FleetError` or `TimeoutError` when Redis fails."""
        self.round_trips += 1
        with self.fleet.guard(f"pacing requests ({args[0]})", key=self._keys[0]):
            reply = await asyncio.wait_for(
                self._script(keys=self._keys, args=[repr(self._off_after), "", *args]),
                _CALL_TIMEOUT,
            )
        return list(reply)

    def _apply(self, reply: list[Any]) -> None:
        """Mirror the bucket's on/off and rate from a reply (the newest state there is)."""
        self._mirror(int(reply[0]) == 1, float(reply[1]), int(reply[2]))

    def _mirror(self, on: bool, rate: float, version: int) -> None:
        was = self._on
        self._on, self._rate, self._version = on, rate, version
        if was and not on and self._line:
            _wake(self._line[0])  # off fleet-wide: the line goes, one after the other

    async def _flush(self) -> None:
        """Write the queued cut (the latest 1302's); kept queued if Redis fails."""
        assert self._flushing is not None
        async with self._flushing:
            cut = self._cut
            if cut is None:
                return
            sent_at, recent = cut
            age = asyncio.get_running_loop().time() - sent_at
            reply = await self._call("cut", repr(age), repr(recent), self.fleet.instance)
            if self._cut is cut:
                self._cut = None
            self._apply(reply)

    def _lost(self, error: BaseException) -> None:
        if self._down:
            return
        self._down = True
        logger.warning(
            "the fleet's pace is unreachable (%s); pacing this process alone until Redis "
            "answers again",
            str(error) or type(error).__name__,
        )
        if self._line:
            _wake(self._line[0])

    def _back(self) -> None:
        if self._down:
            self._down = False
            logger.warning("the fleet's pace answers again; pacing with the fleet")
            if self._kick is not None and self._cut is not None:
                self._kick.set()

    # -- background loops -----------------------------------------------------------------

    async def _beat_loop(self) -> None:
        """Each second: report this process's send rate, read the bucket, notice Redis lost
        or back."""
        loop = asyncio.get_running_loop()
        while True:
            recent = self.local.pace.recent(loop.time())
            try:
                reply = await self._call("beat", self.fleet.instance, repr(recent))
            except (FleetError, asyncio.TimeoutError) as error:
                self._lost(error)
            else:
                self._back()
                self._apply(reply)
            await asyncio.sleep(_BEAT)

    async def _flush_loop(self) -> None:
        """Write each queued cut at once (a 1302 slows the fleet within a round trip)."""
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._down:
                continue  # the beat kicks again once Redis is back
            try:
                await self._flush()
            except (FleetError, asyncio.TimeoutError) as error:
                self._lost(error)

    def _heard(self, data: str) -> None:
        """Mirror a change the fleet published (``"<on> <rate> <version>"``)."""
        on, rate, version = data.split()
        if int(version) >= self._version:
            self._mirror(on == "1", float(rate), int(version))


def _wake(waiter: _Waiter) -> None:
    future = waiter.future
    if future is not None and not future.done():
        future.set_result(None)
