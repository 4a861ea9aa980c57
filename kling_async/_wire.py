"""Every request a session sends: auth, the in-flight limiter, the pace, retries, closing.

`Wire` is what the create path (``_create``), the poll scheduler (``_watch``) and downloads
share. It sends through a transport, waits its turn at the account's pace (``_account``),
sleeps where the retry decision (``_policies``) says so, and keeps the session's promise
(``docs/concepts.md``, "The session and its lifetime"): after `close()` every call raises,
and a request on the wire ends at once. It knows the event loop it was opened on and uses
that loop's clock. It knows nothing of creates: a caller that must act just before the bytes
leave (a journal) passes a hook, and one whose reply must be awaited whatever happens to the
caller (a paid create) asks for a shielded send.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from . import sansio
from ._account import CLOSED_WHILE_PENDING, DeadlinePassed, LocalPace, RequestPace
from ._auth import BearerKey, JWTSigner
from ._clock import ServerClock
from ._policies import RetryPolicy, next_step
from ._transport import Transport
from .errors import KlingError, RateLimitError, SessionClosedError, TaskLimitError, TransportError
from .models import Task

__all__ = ["Wire"]

BeforeSend = Callable[[float], Awaitable[None]]
"""Awaited with the loop's time once a request holds its slot, just before it leaves."""

logger = logging.getLogger("kling_async")

_T = TypeVar("_T")
_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"


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
        pace: RequestPace | None = None,
    ) -> None:
        self.base_url = base_url
        self.auth = auth
        self.retry_policy = retry_policy
        self.rng = random.Random()
        self.pace: RequestPace = pace if pace is not None else LocalPace()
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
            self.pace.close()
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

    async def call(
        self,
        request: sansio.HTTPRequest,
        parse: Callable[[sansio.HTTPResponse, dt.datetime], _T],
    ) -> _T:
        """A GET with the query retry rules (``docs/errors.md``, "What is retried")."""
        started = self.clock()
        retry = 0
        resigned = False
        while True:
            authorization = self.auth.authorization(self.server_time())
            try:
                return await self.send(request, authorization, parse, retry + 1)
            except KlingError as error:
                step = next_step(
                    self.retry_policy,
                    error,
                    create=False,
                    retry=retry + 1,
                    elapsed=self.clock() - started,
                    rng=self.rng,
                )
                if step.resign and not resigned and self.auth.expire(authorization):
                    resigned = True
                    continue
                if step.delay is None:
                    raise
                retry += 1
                self.retries += 1
                logger.info(
                    "retrying %s %s in %.2f s (retry %d): %s",
                    request.method,
                    request.url,
                    step.delay,
                    retry,
                    error,
                )
            await self.sleep(step.delay)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_in_flight`` slots (counted in ``in_flight``), as a request
        on the wire does: a download's connection takes one too."""
        limiter = self._limiter
        assert limiter is not None
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._await_slot(limiter, None)
        try:
            if self.state == _CLOSED:  # closed while this call waited for the limiter
                raise SessionClosedError(CLOSED_WHILE_PENDING)
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
        finally:
            limiter.release()

    async def _await_slot(self, limiter: anyio.Semaphore, deadline: float | None) -> None:
        """Wait for an in-flight slot; past ``deadline`` (the loop's clock) raise
        `DeadlinePassed` instead."""
        if deadline is None:
            await limiter.acquire()
            return
        with anyio.move_on_after(deadline - self.clock()):
            await limiter.acquire()
            return
        raise DeadlinePassed

    async def send(
        self,
        request: sansio.HTTPRequest,
        authorization: str,
        parse: Callable[[sansio.HTTPResponse, dt.datetime], _T],
        attempt: int,
        *,
        before_send: BeforeSend | None = None,
        shielded: bool = False,
        deadline: float | None = None,
    ) -> _T:
        """Send once, at the account's pace and under the in-flight limiter; parse the reply.

        ``before_send`` is awaited once the request holds its slot, just before it leaves.
        A ``shielded`` request (a paid create) is shielded from anyio cancel scopes from then
        on: its reply is awaited (up to ``create_deadline``), so a task it makes is not
        forgotten; only `close()` cuts it short. Past ``deadline`` (the loop's clock), a
        request still waiting for its turn raises `DeadlinePassed` instead of being sent.
        """
        transport = self._transport
        assert transport is not None
        pace = self.pace
        if pace.enabled and self.retry_policy.wait:
            await pace.turn(deadline)
        limiter = self._limiter
        assert limiter is not None
        try:
            limiter.acquire_nowait()  # the common case, without a trip through the event loop
        except anyio.WouldBlock:
            await self._await_slot(limiter, deadline)
        try:
            if self.state == _CLOSED:  # closed while this call waited for the limiter
                raise SessionClosedError(CLOSED_WHILE_PENDING)
            if transport.closed:
                raise SessionClosedError(
                    "the aiohttp.ClientSession (or transport) lent to this session is closed"
                )
            self.requests_sent += 1
            self.in_flight += 1
            sent_at = self.clock()
            wall_sent = time.time()
            pace.sent(sent_at)
            try:
                if before_send is not None:
                    await before_send(sent_at)
                response = await self._exchange(request, authorization, shielded=shielded)
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
                pace.throttled(self.clock(), sent_at)  # 1302: the whole account slows down
            elif pace.enabled:
                pace.succeeded(self.clock())
            raise
        if pace.enabled:
            pace.succeeded(self.clock())
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

    async def _exchange(
        self, request: sansio.HTTPRequest, authorization: str, *, shielded: bool
    ) -> sansio.HTTPResponse:
        """One request/reply in a scope that `close()` cancels: a request on the wire then
        ends at once, whether the transport is ours or borrowed, and whatever part of the
        reply has arrived. A shielded request's scope (a paid create's) is also shielded from
        the caller's scopes (its reply is awaited, so a task it makes is not forgotten) and
        so has a deadline."""
        assert self._transport is not None
        if shielded:
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
