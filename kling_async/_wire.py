"""Every request a session sends: auth, the in-flight limiter, the pace, retries, closing.

`Wire` is what the create path (``_create``) and the poll scheduler (``_watch``) share. It
sends through ``_transport``, sleeps where a policy or the session-wide `Pace` says so, and
keeps the promise of api.md "Opening": after `close()` every call raises, and a request on the
wire ends at once. It knows the event loop it was opened on and uses that loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

from . import sansio
from ._auth import BearerKey, JWTSigner
from ._clock import ServerClock
from ._pace import Pace
from ._policies import Action, RetryPolicy, classify
from ._transport import Transport
from .errors import KlingError, RateLimitError, SessionClosedError, TaskLimitError, TransportError
from .models import Task

if TYPE_CHECKING:
    from ._create import CreateAttempt

__all__ = ["CLOSED_WHILE_PENDING", "DeadlinePassed", "Wire"]

logger = logging.getLogger("kling_async")

_T = TypeVar("_T")
_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"
CLOSED_WHILE_PENDING = "the session was closed while this call was pending"
# A request waiting for its turn at the pace asks again at least this often (seconds).
_PACE_RECHECK = 2.0


class DeadlinePassed(Exception):
    """A caller's deadline ran out before the request was sent (nothing left the machine)."""


class Wire:
    """The request layer of one session (created unopened; `open()` binds it to a loop)."""

    def __init__(
        self,
        *,
        base_url: str,
        auth: BearerKey | JWTSigner,
        retry_policy: RetryPolicy,
        max_in_flight: int,
        create_deadline: float,
    ) -> None:
        self.base_url = base_url
        self.auth = auth
        self.retry_policy = retry_policy
        self.rng = random.Random()
        self.pace = Pace()
        self.server_clock = ServerClock()  # what the server's replies say its clock reads
        self.create_deadline = create_deadline
        self.state = _UNOPENED
        self.requests_sent = 0
        self.retries = 0
        self.in_flight = 0
        self._max_in_flight = max_in_flight
        self._transport: Transport | None = None
        self._limiter: anyio.Semaphore | None = None
        self._closing: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock: Callable[[], float] = time.monotonic
        self._scope_class: type[anyio.CancelScope] = anyio.CancelScope
        self._in_flight_scopes: set[anyio.CancelScope] = set()
        self._pace_sleepers: list[asyncio.Future[None]] = []  # requests waiting for a turn
        self._pace_wake_due = False

    # -- lifetime -------------------------------------------------------------------------

    @staticmethod
    def running_loop() -> asyncio.AbstractEventLoop:
        """The running asyncio loop, or a clear RuntimeError (under trio, say)."""
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "kling_async runs on asyncio (aiohttp needs it): open the session inside "
                "asyncio.run(...), or anyio.run(..., backend='asyncio'); trio is not supported"
            ) from None

    def open(self, transport: Transport) -> None:
        """Bind to the running asyncio loop (the SDK runs on asyncio: aiohttp needs it)."""
        loop = self.running_loop()
        self._loop = loop
        self.clock = loop.time  # anyio's deadlines are on this clock, not time.monotonic()
        self._transport = transport
        self._limiter = anyio.Semaphore(self._max_in_flight)
        # anyio.CancelScope(...) looks the event loop library up on every call; the class it
        # returns is looked up once here, as each request is sent in a scope of its own.
        self._scope_class = type(anyio.CancelScope())
        self._closing = anyio.Event()
        self.state = _OPEN

    def close(self) -> bool:
        """Mark closed, wake every sleep and end every request on the wire; True if it was open."""
        opened = self.state == _OPEN
        self.state = _CLOSED
        if opened:
            assert self._closing is not None
            self._closing.set()
            # Requests on the wire end here, before the aiohttp session closes under them
            # (a reply half read when that happens could otherwise hang or be lost).
            for scope in self._in_flight_scopes:
                scope.cancel()
            self._wake_pace_sleepers()
        return opened

    @property
    def closed(self) -> bool:
        return self.state == _CLOSED

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the session was opened on."""
        assert self._loop is not None
        return self._loop

    def check_open(self) -> None:
        """Raise unless the session is open and used from the loop it was opened on."""
        if self.state == _OPEN:
            if self.running_loop() is not self._loop:
                raise RuntimeError(
                    "this KlingSession was opened in another event loop; a session (like its "
                    "aiohttp session) works only in the loop that opened it"
                )
            return
        if self.state == _UNOPENED:
            raise RuntimeError("open the session first: 'async with KlingSession(...) as session'")
        raise SessionClosedError("the session is closed")

    async def sleep(self, delay: float, wake: anyio.Event | None = None) -> None:
        """Sleep ``delay`` seconds or until ``wake`` is set; closing the session wakes it too
        (and then it raises SessionClosedError)."""
        if delay > 0:
            with anyio.move_on_after(delay):
                if wake is None:
                    assert self._closing is not None
                    await self._closing.wait()
                else:
                    await wake.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if self.state == _CLOSED:
            raise SessionClosedError(CLOSED_WHILE_PENDING)

    @property
    def closing(self) -> anyio.Event:
        """Set once the session closes."""
        assert self._closing is not None
        return self._closing

    def server_time(self) -> float:
        """Unix time on the server's clock, as far as its replies told (a JWT's ``nbf`` and
        ``exp`` are checked against it); this machine's clock until then."""
        return time.time() + self.server_clock.seconds

    # -- requests -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the in-flight slots API requests take (a download's connection does),
        counted in ``in_flight``; SessionClosedError if the session closed meanwhile."""
        assert self._limiter is not None
        async with self._limiter:
            if self.state == _CLOSED:
                raise SessionClosedError(CLOSED_WHILE_PENDING)
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def call(
        self,
        request: sansio.HTTPRequest,
        parse: Callable[[sansio.HTTPResponse, dt.datetime], _T],
    ) -> _T:
        """A GET with the query retry rules (api.md "Query retries")."""
        policy = self.retry_policy
        started = self.clock()
        retry = 0
        resigned = False
        while True:
            authorization = self.auth.authorization(self.server_time())
            try:
                return await self.send(request, authorization, parse, retry + 1)
            except KlingError as failure:
                error = failure
                action = classify(error, create=False)
                if action is Action.RESIGN and not resigned and self.auth.expire(authorization):
                    resigned = True
                    continue
                if action is not Action.RETRY:
                    raise
                retry += 1
                delay = policy.retry_delay(
                    error, retry=retry, elapsed=self.clock() - started, rng=self.rng
                )
                if delay is None:
                    raise
            self.retries += 1
            logger.info(
                "retrying %s %s in %.2f s (retry %d): %s",
                request.method,
                request.url,
                delay,
                retry,
                error,
            )
            await self.sleep(delay)

    async def send(
        self,
        request: sansio.HTTPRequest,
        authorization: str,
        parse: Callable[[sansio.HTTPResponse, dt.datetime], _T],
        attempt: int,
        *,
        create: CreateAttempt | None = None,
        deadline: float | None = None,
    ) -> _T:
        """Send once, at the session's pace and under the in-flight limiter, and parse the reply.

        A create is marked on the wire and shielded from anyio cancel scopes once it holds a
        slot: its reply is awaited (up to ``create_deadline``), so a task it makes is not
        forgotten. Only `close()` cuts it short, and the caller then hears it is ambiguous.
        Past ``deadline`` (the loop's clock), a request still waiting for its turn raises
        `DeadlinePassed` instead of being sent.
        """
        assert self._transport is not None
        assert self._limiter is not None
        pace = self.pace
        if pace.enabled and self.retry_policy.wait:
            await self._take_turn(deadline)
        limiter = self._limiter
        try:
            limiter.acquire_nowait()  # the common case, without a trip through the event loop
        except anyio.WouldBlock:
            if deadline is None:
                await limiter.acquire()
            else:
                with anyio.move_on_after(deadline - self.clock()):
                    await limiter.acquire()
                    deadline = None
                if deadline is not None:
                    raise DeadlinePassed from None
        try:
            if self.state == _CLOSED:  # closed while this call waited for the limiter
                raise SessionClosedError(CLOSED_WHILE_PENDING)
            if self._transport.closed:
                raise SessionClosedError("the aiohttp.ClientSession lent to this session is closed")
            self.requests_sent += 1
            self.in_flight += 1
            sent_at = self.clock()
            wall_sent = time.time()
            pace.sent(sent_at)
            try:
                if create is not None:
                    if create.record is not None:
                        await create.before_send(self.server_clock)
                    create.put_on_wire(sent_at, self.create_deadline)
                response = await self._exchange(request, authorization, create=create is not None)
            except KlingError as error:
                _log_failure(request, attempt, error)
                if self.state == _CLOSED and not isinstance(error, SessionClosedError):
                    raise SessionClosedError(CLOSED_WHILE_PENDING) from error
                raise
            finally:
                self.in_flight -= 1
        finally:
            limiter.release()
        now = dt.datetime.now(dt.timezone.utc)
        if response.status >= 400:  # a refusal of our token's times says what time it is
            self.server_clock.observe_date(
                response.headers.get("Date"),
                dt.datetime.fromtimestamp(wall_sent, dt.timezone.utc),
                now,
            )
        try:
            result = parse(response, now)
        except KlingError as error:
            _log_failure(request, attempt, error)
            if isinstance(error, RateLimitError) and not isinstance(error, TaskLimitError):
                pace.throttled(self.clock(), sent_at)  # 1302: the whole session slows down
            elif pace.enabled and pace.succeeded(self.clock()):
                self._wake_pace_sleepers()
            raise
        if pace.enabled and pace.succeeded(self.clock()):
            self._wake_pace_sleepers()  # the rate climbed: the queue's sleeps are too long
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> %s (attempt %d) request_id=%s%s",
                request.method,
                request.url,
                response.status,
                attempt,
                sansio.request_id_of(response),
                f" task_id={result.task_id}" if isinstance(result, Task) else "",
            )
        return result

    async def _take_turn(self, deadline: float | None) -> None:
        """Wait for this request's turn at the session's pace (in the order turns were asked).

        The pace only says how long to sleep before asking again: at most until the next
        token for the first in line, and never longer than ``_PACE_RECHECK``; a rate that
        climbs back wakes the sleepers at once. Past ``deadline`` (at today's rate) the
        request gives up its place and raises `DeadlinePassed`.
        """
        pace = self.pace
        ticket = pace.join()
        served = False
        try:
            while True:
                now = self.clock()
                delay = pace.turn(ticket, now)
                if delay <= 0:
                    served = True
                    return
                if deadline is not None and now + delay > deadline:
                    raise DeadlinePassed
                await self._pace_sleep(min(delay, _PACE_RECHECK))
        finally:
            if not served:
                pace.leave(ticket)  # those behind move up: let them recompute
                if not self._pace_wake_due and self._pace_sleepers:
                    # One wake-up for all the places given up in this turn of the loop (a
                    # thousand waits cancelled together must not wake each other a thousand
                    # times).
                    self._pace_wake_due = True
                    self.loop.call_soon(self._wake_pace_sleepers)

    async def _pace_sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` on the loop's clock, or until the pace or the session changes."""
        if self.state == _CLOSED:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        loop = self.loop
        future: asyncio.Future[None] = loop.create_future()
        self._pace_sleepers.append(future)
        timer = loop.call_later(seconds, _wake, future)
        try:
            await future
        finally:
            timer.cancel()
            if not future.done():
                self._pace_sleepers.remove(future)
        if self.state == _CLOSED:
            raise SessionClosedError(CLOSED_WHILE_PENDING)

    def _wake_pace_sleepers(self) -> None:
        self._pace_wake_due = False
        sleepers, self._pace_sleepers = self._pace_sleepers, []
        for future in sleepers:
            if not future.done():
                future.set_result(None)

    async def _exchange(
        self, request: sansio.HTTPRequest, authorization: str, *, create: bool
    ) -> sansio.HTTPResponse:
        """One request/reply in a scope that `close()` cancels: a request on the wire then
        ends at once, whether the aiohttp session is ours or borrowed, and whatever part of
        the reply has arrived. A create's scope is also shielded from the caller's scopes
        (its reply is awaited, so a task it makes is not forgotten) and so has a deadline."""
        assert self._transport is not None
        if create:
            scope = self._scope_class(deadline=self.clock() + self.create_deadline, shield=True)
        else:
            scope = self._scope_class()
        self._in_flight_scopes.add(scope)
        try:
            with scope:
                return await self._transport.send(request, authorization)
        finally:
            self._in_flight_scopes.discard(scope)
        if self.state == _CLOSED:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        raise TransportError(
            f"{request.method} {request.url}: no complete reply within {self.create_deadline:g} s",
            method=request.method,
            path=request.path,
            sent=True,
        )


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_failure(request: sansio.HTTPRequest, attempt: int, error: KlingError) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        extra: dict[str, Any] = {
            name: getattr(error, name)
            for name in ("status", "code", "request_id", "task_id")
            if getattr(error, name, None) is not None
        }
        logger.debug(
            "%s %s failed (attempt %d): %s %s",
            request.method,
            request.url,
            attempt,
            type(error).__name__,
            " ".join(f"{k}={v}" for k, v in extra.items()),
        )
