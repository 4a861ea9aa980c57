"""KlingSession: credentials, lifetime, the in-flight limiter, and the retry loops.

The protocol is decided in ``sansio`` and ``_policies``; this module only sequences it: it
sends through ``_transport``, sleeps where a policy says so, and keeps the promises of
api.md "Decisions for the SDK": a create is repeated only where no task can exist, an
ambiguous create is reconciled (by the stamped external id, else the list) or reported with
everything needed to resolve it, and closing the session stops every pending call.
"""

from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import logging
import os
import random
import time
import urllib.parse
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import attrs

from . import sansio
from ._auth import BearerKey, JWTSigner
from ._handle import TaskHandle
from ._policies import Action, PollPolicy, RetryPolicy, classify
from ._transport import Transport, open_http_session
from .errors import (
    AmbiguousCreateError,
    APIError,
    InvalidArgumentError,
    KlingError,
    ListUnavailableError,
    NotFoundError,
    SessionClosedError,
    TransportError,
)
from .models import ExtendRequest, Task

if TYPE_CHECKING:
    from types import TracebackType

    import aiohttp

__all__ = ["KlingSession", "SessionStatistics"]

logger = logging.getLogger("kling_async")

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"  # api.md: official, global
_T = TypeVar("_T")
_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"
_RECONCILE_PAGE_SIZE = 50
# Listed tasks for the same video made this long before a lost create was sent are shown as
# candidates when it cannot be resolved; only one made after the send is ever taken for it.
_NEARBY = dt.timedelta(seconds=60)
_REMEMBERED_IDS = 1000  # task ids this session made, kept to tell them apart in the list
_CLOSED_WHILE_PENDING = "the session was closed while this call was pending"


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """A snapshot of what a session is doing and has done.

    Added in version 0.1.
    """

    requests_sent: int
    """HTTP requests sent, retries included."""
    retries: int
    """Requests sent again after a transient failure (1303 slot waits included)."""
    in_flight: int
    """Requests on the wire right now."""
    waits_pending: int
    """``wait()``/``wait_started()``/``watch()`` calls in progress."""
    tasks_created: int
    """Tasks this session created (or found again after an ambiguous create)."""


class KlingSession:
    """An async client for the Kling video-extend API; open it with ``async with``.

    Credentials: a gateway's ``api_key`` (sent as ``Bearer``) or Kling's ``access_key`` and
    ``secret_key`` (signed into a short-lived JWT); missing ones are read from
    ``KLING_API_KEY``, ``KLING_ACCESS_KEY``, ``KLING_SECRET_KEY`` and ``KLING_BASE_URL``. A
    gateway's ``base_url`` includes its prefix (``https://gw.example.com/kling``).

    ``http_session`` borrows the caller's ``aiohttp.ClientSession`` (never closed here);
    otherwise the session owns one. ``max_in_flight`` bounds the requests on the wire at once;
    ``stamp_external_id`` (default: on with access keys, off with a gateway key) stamps a
    generated ``external_task_id`` on each create so an ambiguous create can be found again.

    Added in version 0.1.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        http_session: aiohttp.ClientSession | None = None,
        poll_policy: PollPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        max_in_flight: int = 32,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        stamp_external_id: bool | None = None,
        allow_insecure_http: bool = False,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
        max_response_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._auth = _credentials(api_key, access_key, secret_key)
        self._base_url = _base_url(
            base_url or os.environ.get("KLING_BASE_URL") or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        _check_count("max_in_flight", max_in_flight, None)
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int):
            raise TypeError("max_response_bytes must be an int")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        if http_session is not None and trace_configs is not None:
            raise ValueError(
                "trace_configs go on the aiohttp.ClientSession you pass as http_session"
            )
        self.poll_policy = poll_policy if poll_policy is not None else PollPolicy()
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._stamp = (
            isinstance(self._auth, JWTSigner) if stamp_external_id is None else stamp_external_id
        )
        self._borrowed = http_session
        self._trace_configs = tuple(trace_configs or ())
        self._max_in_flight = max_in_flight
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = float(read_timeout)
        # A create's reply is awaited even when the caller's scope is cancelled; this bounds
        # that wait (a server trickling bytes would otherwise hold it forever).
        self._create_deadline = self._connect_timeout + 2 * self._read_timeout
        self._max_body = max_response_bytes
        self._rng = random.Random()
        self._state = _UNOPENED
        self._http: aiohttp.ClientSession | None = None
        self._transport: Transport | None = None
        self._limiter: anyio.Semaphore | None = None
        self._scope_class: type[anyio.CancelScope] = anyio.CancelScope
        self._closing: anyio.Event | None = None
        self._slot_freed: anyio.Event | None = None
        self._in_flight_scopes: set[anyio.CancelScope] = set()
        self._recent_ids: collections.deque[str] = collections.deque(maxlen=_REMEMBERED_IDS)
        self._tasks_created = 0
        self._keeps_external_ids = False  # set once the server echoes or finds one
        self._requests_sent = 0
        self._retries = 0
        self._in_flight = 0
        self._waits_pending = 0

        # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> KlingSession:
        if self._state != _UNOPENED:
            raise RuntimeError(f"a KlingSession can be opened once; this one is {self._state}")
        if self._borrowed is not None:
            http = self._borrowed
        else:
            http = open_http_session(limit=self._max_in_flight, trace_configs=self._trace_configs)
            self._http = http
        self._transport = Transport(
            http,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            max_body=self._max_body,
        )
        self._limiter = anyio.Semaphore(self._max_in_flight)
        # anyio.CancelScope(...) looks the event loop library up on every call; the class it
        # returns is looked up once here, as each create is sent in a shielded scope.
        self._scope_class = type(anyio.CancelScope())
        self._closing = anyio.Event()
        self._slot_freed = anyio.Event()
        self._state = _OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session: pending calls fail with SessionClosedError, later ones too.

        A create already on the wire that may have made a task fails with
        AmbiguousCreateError instead. Remote tasks are not touched: they keep running and can
        be resumed with `task()` from another session.
        """
        if self._state == _CLOSED:
            return
        opened = self._state == _OPEN
        self._state = _CLOSED
        if opened:
            # Wake every sleeping wait and slot wait; each then sees the state and raises.
            assert self._closing is not None
            self._closing.set()
            self._task_finished()
            # Requests on the wire end here, before the aiohttp session closes under them
            # (a reply half read when that happens could otherwise hang or be lost).
            for scope in self._in_flight_scopes:
                scope.cancel()
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) == _OPEN:
            _warn(
                f"{self!r} was never closed; use 'async with KlingSession(...)' or aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        return f"<KlingSession {self._base_url} {self._auth!r} {self._state}>"

    @property
    def base_url(self) -> str:
        """The base URL requests go to (``/v1/...`` is appended)."""
        return self._base_url

    @property
    def closed(self) -> bool:
        """True once `aclose()` was called."""
        return self._state == _CLOSED

    def statistics(self) -> SessionStatistics:
        """What the session is doing now and has done so far."""
        return SessionStatistics(
            requests_sent=self._requests_sent,
            retries=self._retries,
            in_flight=self._in_flight,
            waits_pending=self._waits_pending,
            tasks_created=self._tasks_created,
        )

    # -- public calls ---------------------------------------------------------------------

    async def extend(
        self,
        video_id: str,
        *,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        callback_url: str | None = None,
        parent_task_id: str | None = None,
        external_task_id: str | None = None,
    ) -> TaskHandle:
        """Submit one extend task (a paid job) and return its handle.

        Arguments are validated before anything is sent. The create is repeated only where
        the server certainly made no task; an unknown outcome is looked up, or raised as
        `AmbiguousCreateError`.
        """
        request = ExtendRequest(
            video_id=video_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            callback_url=callback_url,
            parent_task_id=parent_task_id,
            external_task_id=external_task_id,
        )
        self._check_open()
        if request.external_task_id is None and self._stamp:
            request = attrs.evolve(request, external_task_id=f"kling-async-{uuid.uuid4().hex}")
        task = await self._create(request)
        self._tasks_created += 1
        self._recent_ids.append(task.task_id)
        return TaskHandle(self, task.task_id, task)

    def task(self, task_id: str) -> TaskHandle:
        """A handle for an existing task, without I/O: resume a wait after a restart."""
        _check_task_id(task_id)
        self._check_open()
        return TaskHandle(self, task_id, None)

    async def get_task(self, task_id: str) -> Task:
        """Query one task by its task id or external task id (queries retry transient failures)."""
        _check_task_id(task_id)
        self._check_open()
        return await self._query(task_id)

    def list_tasks(
        self, *, page_size: int = 30, first_page: int = 1, max_pages: int | None = None
    ) -> AsyncIterator[Task]:
        """Iterate the account's extend tasks, newest first, fetching page by page.

        Raises `ListUnavailableError` (on the first page) where the base URL does not offer
        listing, as most gateways do not.
        """
        _check_count("page_size", page_size, 500)  # api.md: pageSize 1..500
        _check_count("first_page", first_page, 1000)  # api.md: pageNum 1..1000
        if max_pages is not None:
            _check_count("max_pages", max_pages, None)
        self._check_open()
        return self._pages(page_size, first_page, max_pages)

    async def _pages(self, page_size: int, page: int, max_pages: int | None) -> AsyncIterator[Task]:
        fetched = 0
        while page <= 1000 and (max_pages is None or fetched < max_pages):
            self._check_open()
            tasks = await self._list_page(page, page_size)
            fetched += 1
            for task in tasks:
                yield task
            if len(tasks) < page_size:
                return
            page += 1

    # -- internals used by TaskHandle -----------------------------------------------------

    def _check_open(self) -> None:
        if self._state == _OPEN:
            return
        if self._state == _UNOPENED:
            raise RuntimeError("open the session first: 'async with KlingSession(...) as session'")
        raise SessionClosedError("the session is closed")

    async def _sleep(self, delay: float, wake: anyio.Event | None = None) -> None:
        """Sleep ``delay`` seconds or until ``wake`` is set; closing the session wakes it too
        (and then it raises SessionClosedError)."""
        event = wake if wake is not None else self._closing
        assert event is not None
        if delay > 0:
            with anyio.move_on_after(delay):
                await event.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if self._state == _CLOSED:
            raise SessionClosedError(_CLOSED_WHILE_PENDING)

    def _task_finished(self) -> None:
        """A task left the running set: wake creates that wait for a parallel-task slot."""
        assert self._slot_freed is not None
        self._slot_freed.set()
        self._slot_freed = anyio.Event()

    async def _query(self, task_id: str) -> Task:
        request = sansio.query_request(self._base_url, task_id)
        task = await self._call(
            request, lambda response, now: sansio.parse_task(response, now, task_id=task_id)
        )
        if task.done:
            self._task_finished()
        return task

    async def _list_page(self, page: int, page_size: int) -> list[Task]:
        request = sansio.list_request(self._base_url, page, page_size)
        return await self._call(request, sansio.parse_task_list)

    # -- the retry loops ------------------------------------------------------------------

    async def _send(
        self,
        request: sansio.HTTPRequest,
        authorization: str,
        parse: Callable[[sansio.HTTPResponse, dt.datetime], _T],
        attempt: int,
        *,
        create: _CreateAttempt | None = None,
    ) -> _T:
        """Send once under the in-flight limiter and parse the reply.

        A create is marked on the wire and shielded from anyio cancel scopes once it holds a
        slot: its reply is awaited (up to `_create_deadline`), so a task it makes is not
        forgotten. Only `aclose()` cuts it short, and the caller then hears it is ambiguous.
        """
        assert self._transport is not None
        assert self._limiter is not None
        limiter = self._limiter
        try:
            limiter.acquire_nowait()  # the common case, without a trip through the event loop
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            if self._state == _CLOSED:  # closed while this call waited for the limiter
                raise SessionClosedError(_CLOSED_WHILE_PENDING)
            if self._transport.closed:
                raise SessionClosedError("the aiohttp.ClientSession lent to this session is closed")
            self._requests_sent += 1
            self._in_flight += 1
            try:
                if create is not None:
                    create.put_on_wire()
                response = await self._exchange(request, authorization, create=create is not None)
            except KlingError as error:
                _log_failure(request, attempt, error)
                if self._state == _CLOSED and not isinstance(error, SessionClosedError):
                    raise SessionClosedError(_CLOSED_WHILE_PENDING) from error
                raise
            finally:
                self._in_flight -= 1
        finally:
            limiter.release()
        try:
            result = parse(response, dt.datetime.now(dt.timezone.utc))
        except KlingError as error:
            _log_failure(request, attempt, error)
            raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> %s (attempt %d) request_id=%s%s",
                request.method,
                request.path,
                response.status,
                attempt,
                sansio.request_id_of(response),
                f" task_id={result.task_id}" if isinstance(result, Task) else "",
            )
        return result

    async def _exchange(
        self, request: sansio.HTTPRequest, authorization: str, *, create: bool
    ) -> sansio.HTTPResponse:
        """One request/reply in a scope that `aclose()` cancels: a request on the wire then
        ends at once, whether the aiohttp session is ours or borrowed, and whatever part of
        the reply has arrived. A create's scope is also shielded from the caller's scopes
        (its reply is awaited, so a task it makes is not forgotten) and so has a deadline."""
        assert self._transport is not None
        if create:
            # time.monotonic() is the asyncio loop's clock, which anyio's deadlines use;
            # anyio.current_time() would look the event loop library up on every create.
            scope = self._scope_class(
                deadline=time.monotonic() + self._create_deadline, shield=True
            )
        else:
            scope = self._scope_class()
        self._in_flight_scopes.add(scope)
        try:
            with scope:
                return await self._transport.send(request, authorization)
        finally:
            self._in_flight_scopes.discard(scope)
        if self._state == _CLOSED:
            raise SessionClosedError(_CLOSED_WHILE_PENDING)
        raise TransportError(
            f"{request.method} {request.path}: no complete reply within "
            f"{self._create_deadline:g} s",
            method=request.method,
            path=request.path,
            sent=True,
        )

    async def _call(
        self,
        request: sansio.HTTPRequest,
        parse: Callable[[sansio.HTTPResponse, dt.datetime], _T],
    ) -> _T:
        """A GET with the query retry rules (api.md "Query retries")."""
        policy = self.retry_policy
        started = time.monotonic()
        retry = 0
        resigned = False
        while True:
            authorization = self._auth.authorization(time.time())
            try:
                return await self._send(request, authorization, parse, retry + 1)
            except KlingError as error:
                action = classify(error, create=False)
                if action is Action.RESIGN and not resigned and self._auth.expire(authorization):
                    resigned = True
                    continue
                if action is not Action.RETRY:
                    raise
                retry += 1
                delay = policy.retry_delay(
                    error, retry=retry, elapsed=time.monotonic() - started, rng=self._rng
                )
                if delay is None:
                    raise
            self._retries += 1
            logger.info(
                "retrying %s %s in %.2f s (retry %d)", request.method, request.path, delay, retry
            )
            await self._sleep(delay)

    async def _create(self, request: ExtendRequest) -> Task:
        """A create with the create retry rules (api.md "Create retries" and "Stamping").

        Whatever interrupts a create while its outcome is unknown (a native asyncio cancel
        during the send, a cancel during the look-up) is logged with what finds the task
        again; closing the session under it raises AmbiguousCreateError.
        """
        attempt = _CreateAttempt()
        try:
            return await self._create_attempts(request, attempt)
        except SessionClosedError as error:
            if not attempt.doubtful:
                raise
            raise AmbiguousCreateError(
                "the session was closed while the create was on the wire",
                request=request,
                sent_at=attempt.sent_at,
                external_task_id=request.external_task_id,
            ) from error
        except anyio.get_cancelled_exc_class():
            if attempt.doubtful:
                logger.warning(
                    "a create for video %s sent at %s was interrupted while its outcome was "
                    "unknown; it may have made a task%s",
                    request.video_id,
                    attempt.sent_at.isoformat(),
                    f" (external_task_id {request.external_task_id})"
                    if request.external_task_id
                    else "",
                )
            raise

    async def _create_attempts(self, request: ExtendRequest, attempt: _CreateAttempt) -> Task:
        policy = self.retry_policy
        http_request = sansio.create_request(self._base_url, request)
        started = time.monotonic()
        first_refusal: float | None = None  # when the first 1303 came
        slot_time = 0.0  # tries refused with 1303 and their waits: not the retry budget's
        retry = 0
        slot_waits = 0
        resigned = False
        while True:
            authorization = self._auth.authorization(time.time())
            attempt.begin()
            tried_at = time.monotonic()
            try:
                task = await self._send(
                    http_request, authorization, sansio.parse_created, retry + 1, create=attempt
                )
            except KlingError as error:
                if isinstance(error, SessionClosedError):
                    raise  # _create decides, knowing whether it was on the wire
                action = classify(error, create=True)
                attempt.on_wire = False
                attempt.in_doubt = action is Action.RECONCILE
                now = time.monotonic()
                if action is Action.RESIGN and not resigned and self._auth.expire(authorization):
                    resigned = True
                    continue
                if action is Action.WAIT_SLOT:
                    first_refusal = tried_at if first_refusal is None else first_refusal
                    await self._wait_for_slot(error, policy, now - first_refusal, slot_waits + 1)
                    slot_waits += 1
                    slot_time += time.monotonic() - tried_at
                    continue
                if action is Action.RECONCILE:
                    # Never resent: a "not found" cannot prove that the first create will not
                    # still make its task (api.md lists these outcomes as unknown).
                    return await self._reconcile(request, error, attempt.sent_at)
                if action is not Action.RETRY:
                    raise
                retry += 1
                delay_or_none = policy.retry_delay(
                    error, retry=retry, elapsed=now - started - slot_time, rng=self._rng
                )
                if delay_or_none is None:
                    raise
                delay = delay_or_none
            else:
                if (
                    request.external_task_id is not None
                    and task.external_task_id == request.external_task_id
                ):
                    self._keeps_external_ids = True
                return task
            self._retries += 1
            logger.info(
                "retrying create for video %s in %.2f s (retry %d)", request.video_id, delay, retry
            )
            await self._sleep(delay)

    async def _wait_for_slot(
        self, error: KlingError, policy: RetryPolicy, waited: float, wait_number: int
    ) -> None:
        """After a 1303: wait for a running task to finish, within ``task_slot_timeout``.

        A ``Retry-After`` on the refusal is honoured in full (not cut short by a task
        finishing); one that ends past the slot timeout fails at once.
        """
        remaining = policy.task_slot_timeout - waited
        if remaining <= 0:
            raise error
        delay = policy.slot_delay(wait_number, self._rng, error)  # Retry-After, capped
        asked = error.retry_after if isinstance(error, APIError) else None
        if asked is not None and policy.wait and asked > remaining:
            raise error
        self._retries += 1
        logger.info("parallel-task limit reached (1303); waiting up to %.2f s", delay)
        await self._sleep(min(delay, remaining), wake=self._slot_freed if asked is None else None)

    async def _reconcile(
        self, request: ExtendRequest, error: KlingError, sent_at: dt.datetime
    ) -> Task:
        """Find out whether a create with an unknown outcome made a task.

        Looks the task up by its external id, else in the first page of the task list, and
        returns it; raises AmbiguousCreateError with what is needed to resolve it by hand
        when it cannot be found out.
        """
        external_id = request.external_task_id
        logger.warning(
            "create for video %s has an unknown outcome (%s); looking it up",
            request.video_id,
            error,
        )

        def ambiguous(why: str, candidates: Sequence[Task] = ()) -> AmbiguousCreateError:
            return AmbiguousCreateError(
                f"the create's outcome is unknown ({error}) and {why}",
                request=request,
                sent_at=sent_at,
                external_task_id=external_id,
                candidates=tuple(candidates),
            )

        if external_id is not None:
            try:
                found = await self._query(external_id)
            except NotFoundError:
                pass  # not yet made, or never; or the server drops external ids: the list
            except KlingError as lookup_error:
                raise ambiguous(f"looking up its external id failed ({lookup_error})") from error
            else:
                self._keeps_external_ids = True
                return found
        try:
            tasks = await self._list_page(1, _RECONCILE_PAGE_SIZE)
        except ListUnavailableError:
            raise ambiguous("this base URL offers no task list to look it up") from error
        except KlingError as list_error:
            raise ambiguous(f"listing tasks failed ({list_error})") from error
        if external_id is not None:
            for task in tasks:
                if task.external_task_id == external_id:
                    return task
        # Recent tasks for this video that are not known to be someone else's.
        candidates = [
            task
            for task in tasks
            if task.task_id not in self._recent_ids
            and task.parent_video is not None
            and task.parent_video.id == request.video_id
            and (task.external_task_id is None or task.external_task_id == external_id)
            and (task.created_at is None or task.created_at >= sent_at - _NEARBY)
        ]
        # Without an id to match, a task is taken for ours only when it is the one candidate
        # and was made after the send. Where the server keeps external ids, ours would carry
        # one: no guess is made then.
        sent_ms = sent_at.replace(microsecond=sent_at.microsecond // 1000 * 1000)  # wire: ms
        if len(candidates) == 1 and not (external_id is not None and self._keeps_external_ids):
            (candidate,) = candidates
            if candidate.created_at is not None and candidate.created_at >= sent_ms:
                return candidate
        why = (
            "the task list shows no recent task for this video"
            if not candidates
            else f"the task list shows {len(candidates)} recent task(s) for this video, none "
            "of which can be told apart as the one it made"
        )
        raise ambiguous(why, candidates) from error


class _CreateAttempt:
    """Where one create stands: is it on the wire, and may it have made a task?"""

    __slots__ = ("in_doubt", "on_wire", "sent_at")

    def __init__(self) -> None:
        self.sent_at = _NEVER
        self.on_wire = False  # sent, no reply yet
        self.in_doubt = False  # failed in a way that may hide a task (being looked up)

    def begin(self) -> None:
        """A new try: nothing sent yet."""
        self.on_wire = self.in_doubt = False

    def put_on_wire(self) -> None:
        """The request leaves now."""
        self.sent_at = dt.datetime.now(dt.timezone.utc)
        self.on_wire = True

    @property
    def doubtful(self) -> bool:
        """Whether a task may exist that the caller has not been told of."""
        return self.on_wire or self.in_doubt


_NEVER = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _check_count(name: str, value: object, maximum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be between 1{bound}, got {value}")


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
            request.path,
            attempt,
            type(error).__name__,
            " ".join(f"{k}={v}" for k, v in extra.items()),
        )


def _credentials(
    api_key: str | None, access_key: str | None, secret_key: str | None
) -> BearerKey | JWTSigner:
    """Pick the auth mode from the arguments, falling back to the environment as a whole."""
    if api_key is None and access_key is None and secret_key is None:
        api_key = os.environ.get("KLING_API_KEY") or None
        access_key = os.environ.get("KLING_ACCESS_KEY") or None
        secret_key = os.environ.get("KLING_SECRET_KEY") or None
        if api_key is not None:
            access_key = secret_key = None  # a gateway key in the environment wins
    if api_key is not None:
        if access_key is not None or secret_key is not None:
            raise ValueError("pass either api_key or access_key + secret_key, not both")
        return BearerKey(_header_safe("api_key", api_key))
    if access_key is None and secret_key is None:
        raise ValueError(
            "no credentials: pass api_key (gateway) or access_key + secret_key (Kling), "
            "or set KLING_API_KEY or KLING_ACCESS_KEY + KLING_SECRET_KEY"
        )
    if not access_key or not secret_key:
        raise ValueError("access_key and secret_key go together; one of them is missing")
    return JWTSigner(_header_safe("access_key", access_key), secret_key)


def _base_url(url: str, *, allow_insecure_http: bool) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {url!r}")
    if parsed.scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.hostname):
        raise ValueError(
            f"refusing plain http:// to {parsed.hostname}: credentials would travel unencrypted; "
            "use https:// or pass allow_insecure_http=True"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_task_id(task_id: object) -> None:
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a str, not {type(task_id).__name__}")
    if not task_id.strip():
        raise InvalidArgumentError("task_id", "must not be empty")


def _header_safe(name: str, value: str) -> str:
    """A credential goes into a header: refuse what would break it (or smuggle another)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    value = value.strip()
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"{name} contains control characters")
    return value
