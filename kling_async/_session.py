"""KlingSession: credentials, configuration, lifetime and the public calls.

The request layer is ``_wire``, a create's life is ``_create`` and waiting is ``_watch``; the
session wires them together, owns (or borrows) the aiohttp session, and keeps api.md
"Opening": after closing, every call raises, and closing stops every pending call.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import uuid
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from . import _download, _urls, sansio
from ._aiohttp_transport import AiohttpTransport, open_http_session
from ._auth import BearerKey, JWTSigner
from ._create import CallbackSlot, Creator
from ._handle import TaskHandle
from ._journal import EntryState, Journal, JournalEntry, SQLiteJournal
from ._keyed import KeyedCreates
from ._policies import DownloadPolicy, PollPolicy, RetryPolicy
from ._transport import Transport
from ._watch import Watcher
from ._wire import Wire
from .errors import InvalidArgumentError, KlingError
from .models import ExtendRequest, Task, Video
from .models import check_text as _check_text

if TYPE_CHECKING:
    from types import TracebackType

    import aiohttp

    from .callbacks import CallbackReceiver, _SessionLink

__all__ = ["KlingSession", "SessionStatistics"]

logger = logging.getLogger("kling_async")

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"  # api.md: official, global


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
    """``wait()``/``wait_started()``/``watch()``/``as_completed()`` calls in progress."""
    tasks_created: int
    """Tasks this session created (or found again after an ambiguous create)."""
    list_requests: int = 0
    """List pages read to refresh pending waits (versionadded 0.2)."""
    list_refresh: bool | None = None
    """Whether waits refresh through the list: None while undecided (versionadded 0.2)."""
    rate_limit: float | None = None
    """Requests per second the session holds itself to after a 1302, or None (0.2)."""
    tasks_tracked: int = 0
    """Task states held: a live handle or wait, or a receiver token's open create (0.2)."""
    callback_tokens: int = 0
    """Receiver tokens of creates not yet seen finished, by a reply or a callback (0.2)."""


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
    ``list_refresh`` (default None: where the base URL offers it) lets one list page refresh
    many pending waits; True forces it, False never lists. ``journal`` (a file path, or a
    `Journal`) makes keyed creates survive a crash: see `extend`'s ``key`` and `resume`.
    ``callbacks`` (a `CallbackReceiver`) gives each create without its own ``callback_url``
    one of the receiver's URLs, so that its callbacks wake the waits on it at once.
    ``transport`` replaces aiohttp with another `Transport`, such as
    `kling_async.testing.MockTransport` in a unit test.

    Added in version 0.1; ``callbacks`` in 0.2; ``transport`` in 0.3.
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
        list_refresh: bool | None = None,
        allow_insecure_http: bool = False,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
        max_response_bytes: int = 8 * 1024 * 1024,
        journal: str | os.PathLike[str] | Journal | None = None,
        callbacks: CallbackReceiver | None = None,
        transport: Transport | None = None,
    ) -> None:
        auth = _credentials(api_key, access_key, secret_key)
        if base_url is None:
            base_url = os.environ.get("KLING_BASE_URL") or DEFAULT_BASE_URL
        base = _base_url(base_url, allow_insecure_http=allow_insecure_http)
        _check_count("max_in_flight", max_in_flight, None)
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise InvalidArgumentError(name, f"must be a finite number > 0, got {value!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int):
            raise TypeError("max_response_bytes must be an int")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        if list_refresh not in (None, True, False):
            raise TypeError(f"list_refresh must be None, True or False, not {list_refresh!r}")
        if http_session is not None and trace_configs is not None:
            raise ValueError(
                "trace_configs go on the aiohttp.ClientSession you pass as http_session"
            )
        if transport is not None:
            if not isinstance(transport, Transport):
                raise TypeError(f"transport must be a Transport, not {type(transport).__name__}")
            if http_session is not None or trace_configs is not None:
                raise ValueError("http_session and trace_configs are for aiohttp, not transport")
        self._transport = transport
        self.poll_policy = poll_policy if poll_policy is not None else PollPolicy()
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._auth = auth
        self._base_url = base
        self._stamp = (
            isinstance(auth, JWTSigner) if stamp_external_id is None else stamp_external_id
        )
        self._borrowed = http_session
        self._trace_configs = tuple(trace_configs or ())
        self._max_in_flight = max_in_flight
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = float(read_timeout)
        self._max_body = max_response_bytes
        self._http: aiohttp.ClientSession | None = None
        # A create's reply is awaited even when the caller's scope is cancelled; this bounds
        # that wait (a server trickling bytes would otherwise hold it forever).
        self._wire = Wire(
            base_url=base,
            auth=auth,
            retry_policy=self.retry_policy,
            max_in_flight=max_in_flight,
            create_deadline=self._connect_timeout + 2 * self._read_timeout,
        )
        self._creator = Creator(self._wire)
        self._watcher = Watcher(
            self._wire,
            self.poll_policy,
            list_refresh=list_refresh,
            on_finished=self._creator.gate.release,
        )
        self._tasks_created = 0
        self._journal: Journal | None
        self._owns_journal = False
        if journal is None or isinstance(journal, Journal):
            self._journal = journal
        elif isinstance(journal, (str, os.PathLike)):
            self._journal = SQLiteJournal(journal)
            self._owns_journal = True
        else:
            raise TypeError(f"journal must be a path or a Journal, not {type(journal).__name__}")
        self._keyed: KeyedCreates | None = None
        if self._journal is not None:
            self._keyed = KeyedCreates(self._creator, self._journal)
            self._watcher.on_done = self._keyed.finished
            self._watcher.on_gone = self._keyed.gone
        if callbacks is not None:
            from .callbacks import CallbackReceiver

            if not isinstance(callbacks, CallbackReceiver):
                raise TypeError(
                    f"callbacks must be a CallbackReceiver, not {type(callbacks).__name__}"
                )
        self._callbacks = callbacks
        self._link: _SessionLink | None = None

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> KlingSession:
        if self._wire.state != "unopened":
            raise RuntimeError(f"a KlingSession can be opened once; this one is {self._wire.state}")
        self._wire.running_loop()  # before aiohttp, which fails obscurely without asyncio
        transport_http = self._borrowed
        try:
            if self._transport is None:
                if transport_http is None:
                    transport_http = open_http_session(
                        limit=self._max_in_flight, trace_configs=self._trace_configs
                    )
                    self._http = transport_http
                self._transport = AiohttpTransport(
                    transport_http,
                    connect_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                    max_body=self._max_body,
                )
            self._wire.open(self._transport)
            if self._owns_journal:
                assert self._journal is not None
                await self._journal.__aenter__()
            if self._callbacks is not None:
                self._link = self._callbacks._attach(
                    self._watcher, self._wire.loop, gateway=isinstance(self._auth, BearerKey)
                )
        except BaseException:
            self._wire.close()
            if self._http is not None:
                await self._http.close()
                self._http = None
            raise
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
        if self._wire.closed:
            return
        if self._wire.close():
            # Wake every sleeping wait and slot wait; each then sees the state and raises.
            self._watcher.close()
            self._creator.gate.release_all()
        if self._link is not None:
            link, self._link = self._link, None
            link.close()  # its tokens are forgotten: their callbacks get 404 from now on
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()
        if self._keyed is not None:
            with anyio.CancelScope(shield=True):
                await self._keyed.flush()  # finishes a failed write left behind
        if self._owns_journal:
            assert self._journal is not None
            await self._journal.aclose()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        wire = getattr(self, "_wire", None)
        if wire is not None and wire.state == "open":
            _warn(
                f"{self!r} was never closed; use 'async with KlingSession(...)' or aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        return f"<KlingSession {self._base_url} {self._auth!r} {self._wire.state}>"

    @property
    def base_url(self) -> str:
        """The base URL requests go to (``/v1/...`` is appended)."""
        return self._base_url

    @property
    def closed(self) -> bool:
        """True once `aclose()` was called."""
        return self._wire.closed

    def statistics(self) -> SessionStatistics:
        """What the session is doing now and has done so far."""
        wire, watcher = self._wire, self._watcher
        return SessionStatistics(
            requests_sent=wire.requests_sent,
            retries=wire.retries,
            in_flight=wire.in_flight,
            waits_pending=watcher.waits,
            tasks_created=self._tasks_created,
            list_requests=watcher.list_requests,
            list_refresh=watcher.list_mode,
            rate_limit=wire.pace.rate,
            tasks_tracked=watcher.tracked,
            callback_tokens=0 if self._link is None else self._link.open_tokens,
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
        watermark: bool | None = None,
        key: str | None = None,
    ) -> TaskHandle:
        """Submit one extend task (a paid job) and return its handle.

        Arguments are validated before anything is sent. The create is repeated only where
        the server certainly made no task; an unknown outcome is looked up, or raised as
        `AmbiguousCreateError`. ``watermark`` asks for a watermarked copy as well (2026 API).

        ``key`` (with a ``journal``) is the caller's id for this request, such as a row id:
        the create is recorded before it is sent, and a later ``extend`` with the same key,
        in this process or another, returns the recorded task and sends nothing. The same
        key with another request raises ``ValueError``.
        """
        request = ExtendRequest(
            video_id=video_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            callback_url=callback_url,
            parent_task_id=parent_task_id,
            external_task_id=external_task_id,
            watermark=watermark,
        )
        if key is not None:
            self._check_key(key)
        return await self._submit(request, None, key)

    async def extend_many(
        self, requests: Iterable[ExtendRequest], *, timeout: float | None = None
    ) -> list[TaskHandle | KlingError]:
        """Submit many extends at once; return, in input order, a handle or the error for each.

        Unlike ``gather(*extends)``, a failed create never drops the handles of the others.
        Creates go out as fast as ``max_in_flight``, 1303 slot waits and the session's pace
        allow. ``timeout`` bounds the waiting before each send: a create not yet sent by then
        gets `SubmitTimeoutError` (nothing was sent); one already on the wire is awaited.

        Added in version 0.2.
        """
        batch = list(requests)
        for index, request in enumerate(batch):
            if not isinstance(request, ExtendRequest):
                raise TypeError(
                    f"requests[{index}] must be an ExtendRequest, not {type(request).__name__}"
                )
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self._wire.check_open()
        deadline = None if timeout is None else self._wire.clock() + timeout
        results: list[TaskHandle | KlingError | None] = [None] * len(batch)

        async def submit(index: int, request: ExtendRequest) -> None:
            try:
                results[index] = await self._submit(request, deadline)
            except KlingError as error:
                results[index] = error

        async with anyio.create_task_group() as group:
            for index, request in enumerate(batch):
                group.start_soon(submit, index, request)
        return [result for result in results if result is not None]

    async def _submit(
        self, request: ExtendRequest, deadline: float | None, key: str | None = None
    ) -> TaskHandle:
        self._wire.check_open()
        link = self._link
        if link is None or request.callback_url is not None:
            return await self._submit_one(request, deadline, key, None)
        # A caller's own callback_url is sent unchanged; else the create gets a token of the
        # receiver's, registered before it is sent (a callback may beat the reply).
        binding, url = link.issue()
        slot = CallbackSlot(url)
        try:
            handle = await self._submit_one(request, deadline, key, slot)
        except BaseException:
            link.discard(binding)
            raise
        if slot.sent:
            link.bind(binding, handle._state)
        else:  # a key created before: nothing was sent with this token
            link.discard(binding)
        return handle

    async def _submit_one(
        self,
        request: ExtendRequest,
        deadline: float | None,
        key: str | None,
        slot: CallbackSlot | None,
    ) -> TaskHandle:
        stamp = None
        if request.external_task_id is None and self._stamp:
            stamp = f"kling-async-{uuid.uuid4().hex}"
        if key is not None:
            assert self._keyed is not None
            task_id, made = await self._keyed.create(
                key,
                request,
                stamp=stamp,
                deadline=deadline,
                busy_wait=self._wire.create_deadline,
                callback=slot,
            )
            if made is None:  # created before (maybe by another process): nothing sent
                return TaskHandle(self._watcher, self._watcher.state(task_id))
            task = made
        else:
            if stamp is not None:
                request = attrs.evolve(request, external_task_id=stamp)
            task = await self._creator.create(request, deadline=deadline, callback=slot)
        self._tasks_created += 1
        safety = None
        if slot is not None and slot.sent:
            assert self._callbacks is not None
            safety = self._callbacks.safety_interval
        return TaskHandle(self._watcher, self._watcher.created(task, safety=safety))

    async def resume(self) -> list[TaskHandle]:
        """Handles for every journaled task not yet seen finished, to wait on after a restart.

        Creates the last process died in the middle of are looked up at once, side by side
        (by external id, else in the task list), and again every few seconds until each is
        found or its window has closed; one that certainly made no task is sent again. One
        that cannot be settled, or whose record cannot be read, is logged and left in the
        journal (``extend`` with its key raises the error; `settle` or `forget` resolve it);
        the others go on.

        Added in version 0.2.
        """
        journal = self._journal_or_raise("resume()")
        self._wire.check_open()
        entries = await journal.pending()
        handles = [
            TaskHandle(self._watcher, self._watcher.state(entry.task_id))
            for entry in entries
            if entry.state is EntryState.CREATED and entry.task_id is not None
        ]
        doubts = [entry for entry in entries if entry.state is EntryState.SENDING]
        if doubts:
            logger.info("%d create(s) in doubt: looking them up", len(doubts))
        settled: list[TaskHandle | None] = [None] * len(doubts)

        async def settle(index: int, entry: JournalEntry) -> None:
            try:
                settled[index] = await self._submit(entry.request, None, entry.key)
            except (KlingError, RuntimeError, ValueError) as error:
                # Unsettled, refused, or taken by another process since: the others go on.
                logger.warning("journaled key %r is still unsettled: %s", entry.key, error)

        async with anyio.create_task_group() as group:
            for index, entry in enumerate(doubts):
                group.start_soon(settle, index, entry)
        handles.extend(handle for handle in settled if handle is not None)
        return handles

    async def settle(self, key: str, task_id: str) -> TaskHandle:
        """Record ``task_id`` as the task of journal ``key`` and return its handle: the way
        out of a key in doubt (`AmbiguousCreateError` lists its candidates) or whose task
        vanished. The task is queried first; one for another video raises ``ValueError``,
        and so does a task id already recorded for another key.

        Added in version 0.2.
        """
        journal = self._journal_or_raise("settle()")
        self._check_key(key)
        _check_task_id(task_id)
        self._wire.check_open()
        entry = await journal.get(key)
        if entry is None:
            raise ValueError(f"key {key!r} is not in the journal")
        task = await self._watcher.query(task_id)
        parent = task.parent_video
        if parent is not None and parent.id != entry.request.video_id:
            raise ValueError(
                f"task {task_id!r} extends video {parent.id!r}, but key {key!r} was for video "
                f"{entry.request.video_id!r}"
            )
        await journal.settle(key, task.task_id)
        self._creator.remember(task.task_id)
        return TaskHandle(self._watcher, self._watcher.state(task.task_id))

    async def forget(self, key: str) -> bool:
        """Delete the journal's record of ``key`` (True if there was one): the next
        ``extend`` with it creates, and pays for, a new task. For a key whose task vanished,
        or whose create you know made nothing. ``ValueError`` while a create of it runs.

        Added in version 0.2.
        """
        journal = self._journal_or_raise("forget()")
        self._check_key(key)
        self._wire.check_open()
        return await journal.forget(key)

    def _journal_or_raise(self, call: str) -> Journal:
        if self._journal is None:
            raise ValueError(f"{call} reads the journal: KlingSession(journal=...)")
        return self._journal

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if not key.strip():
            raise ValueError("key must not be empty")
        _check_text("key", key)
        if self._journal is None:
            raise ValueError("a key needs a journal: KlingSession(journal='batch.sqlite3')")

    def task(self, task_id: str) -> TaskHandle:
        """A handle for an existing task, without I/O: resume a wait after a restart.

        Every handle of one task id in a session shares its state and its polls.
        """
        _check_task_id(task_id)
        self._wire.check_open()
        return TaskHandle(self._watcher, self._watcher.state(task_id))

    async def get_task(self, task_id: str) -> Task:
        """Query one task by its task id or external task id (queries retry transient failures)."""
        _check_task_id(task_id)
        self._wire.check_open()
        return await self._watcher.query(task_id)

    async def download(
        self,
        video_or_task: Video | Task,
        dest: str | os.PathLike[str],
        *,
        progress: Callable[[int, int | None], object] | None = None,
        policy: DownloadPolicy | None = None,
    ) -> pathlib.Path:
        """Download a result video to ``dest`` and return the path of the finished file.

        ``video_or_task`` is a `Video` or a succeeded `Task` (its first video). ``dest`` is a
        file path, or a directory (the file is then named after the video id and the URL's
        extension, ``.mp4`` by default): a path that ends with a separator, has no suffix
        (``videos``) or is an existing directory names a directory, created if missing. The
        video is streamed into a hidden temporary file next to it, checked against
        ``Content-Length``, fsynced and renamed into place (a replaced file keeps its
        permission bits): a partial file never has the final name. A body that breaks off is
        resumed with ``Range`` within the retry policy. No credential is sent to the media
        host. ``progress(bytes_done, total_or_None)`` is called at most every 100 ms or each
        whole percent, and once at the end. Each connection takes one of the
        ``max_in_flight`` slots. ``policy`` (a `DownloadPolicy`) bounds the size and the
        slowness of the body and says whether internal addresses may be reached: by default
        only public ones (and loopback when the session's base URL is on loopback).

        Raises `MediaExpiredError` when the media host answers 403, 404 or 410 (Kling keeps
        results for 30 days) and `DownloadError` for other failures, an internal address, a
        body over the size cap or too slow, and a write that fails once the download began
        (disk full); errors opening the destination are raised as the `OSError` they are.

        Added in version 0.2.
        """
        return await _download.download(
            self._wire,
            self._transport,
            video_or_task,
            dest,
            progress=progress,
            policy=policy,
        )

    def as_completed(
        self, handles: Iterable[TaskHandle], *, timeout: float | None = None
    ) -> AsyncGenerator[Task, None]:
        """Yield each task once it is done (``succeed`` or ``failed``), in the order they finish.

        It never raises `TaskFailedError`: check ``task.status``. After ``timeout`` seconds it
        raises `WaitTimeoutError` (once the finished ones were yielded) whose ``pending`` holds
        the ids still running. Tasks are polled together: through one list page where the base
        URL offers it, else one query each, on the session's schedule.

        Added in version 0.2.
        """
        states = []
        for handle in handles:
            if not isinstance(handle, TaskHandle):
                raise TypeError(f"as_completed() takes TaskHandles, not {type(handle).__name__}")
            if handle._watcher is not self._watcher:
                raise ValueError(f"{handle!r} belongs to another session")
            states.append(handle._state)
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self._wire.check_open()
        return self._watcher.as_completed(states, timeout)

    def list_tasks(
        self, *, page_size: int = 30, first_page: int = 1, max_pages: int | None = None
    ) -> AsyncGenerator[Task, None]:
        """Iterate the account's extend tasks, newest first, fetching page by page.

        Raises `ListUnavailableError` (on the first page) where the base URL does not offer
        listing, as most gateways do not.
        """
        _check_count("page_size", page_size, 500)  # api.md: pageSize 1..500
        _check_count("first_page", first_page, 1000)  # api.md: pageNum 1..1000
        if max_pages is not None:
            _check_count("max_pages", max_pages, None)
        self._wire.check_open()
        return self._pages(page_size, first_page, max_pages)

    async def _pages(
        self, page_size: int, page: int, max_pages: int | None
    ) -> AsyncGenerator[Task, None]:
        wire = self._wire
        fetched = 0
        while page <= 1000 and (max_pages is None or fetched < max_pages):
            wire.check_open()
            tasks = await wire.call(
                sansio.list_request(wire.base_url, page, page_size), sansio.parse_task_list
            )
            fetched += 1
            for task in tasks:
                yield task
            if len(tasks) < page_size:
                return
            page += 1


def _check_count(name: str, value: object, maximum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f"between 1 and {maximum}" if maximum is not None else "at least 1"
        raise ValueError(f"{name} must be {bound}, got {value}")


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
    """Check a base URL before anything is sent: every later request is built from it."""
    if isinstance(url, str) and not url.strip():
        raise InvalidArgumentError("base_url", "must not be empty")
    parsed = _urls.http_url(url, "base_url")
    if parsed.port == 0:
        raise InvalidArgumentError("base_url", f"port 0 is not a port to connect to: {url!r}")
    if parsed.query or parsed.fragment:
        raise InvalidArgumentError("base_url", f"must not have a query or fragment, got {url!r}")
    if _urls.insecure(parsed) and not allow_insecure_http:
        raise InvalidArgumentError(
            "base_url",
            f"refusing plain http:// to {parsed.hostname}: credentials would travel "
            "unencrypted; use https:// or pass allow_insecure_http=True",
        )
    return url.rstrip("/")


def _check_task_id(task_id: object) -> None:
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a str, not {type(task_id).__name__}")
    if not task_id.strip():
        raise InvalidArgumentError("task_id", "must not be empty")
    _check_text("task_id", task_id)


def _header_safe(name: str, value: str) -> str:
    """A credential goes into a header: refuse what would break it (or smuggle another)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    value = value.strip()
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"{name} contains control characters")
    _check_text(name, value)
    return value
