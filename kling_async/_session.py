"""KlingSession: the façade. It holds the configuration and the lifetime, and the public calls.

Arguments are checked in ``_config``; requests go through ``_wire``, creates through
``_submit`` (and ``_create``), waits through ``_watch``, and what the session opens and
closes (its transport, its journal, its receiver's tokens) is ``_lifetime``'s. The session
wires them together and keeps its lifetime's promise (``docs/concepts.md``, "The session and
its lifetime"): after closing, every call raises, and closing stops every pending call.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from . import _download, sansio
from ._chain_calls import ChainCalls
from ._config import check_count, check_key, check_task_id, check_timeout, configure
from ._create import Creator
from ._fleet import check_fleet
from ._handle import TaskHandle, states_of
from ._journal import Journal
from ._lifetime import Lifetime
from ._policies import DownloadPolicy, PollPolicy, RetryPolicy
from ._seams import account_parts
from ._source_calls import SourceCalls
from ._spending import Spending
from ._submit import Submitter
from ._transport import Transport
from ._watch import Watcher, WatchEvents
from ._wire import Wire
from .errors import KlingError
from .models import ExtendRequest, SessionStatistics, Task, TaskFamily, Video

if TYPE_CHECKING:
    from types import TracebackType

    import aiohttp
    import redis.asyncio

    from .callbacks import CallbackReceiver

__all__ = ["KlingSession"]

_SLOT_MARGIN = 30.0  # seconds a create's unbound slot outlives the create's longest send


class KlingSession(SourceCalls, ChainCalls):
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

    ``fleet`` (a Redis URL such as ``"redis://host:6379/0"``, or a ``redis.asyncio.Redis``
    client, borrowed and never closed) makes every session on that Redis and Kling account
    one client (``docs/fleet.md``): one journal of keys (used when ``journal`` is not given),
    one parallel-task gate, one pace, one poller. It needs ``kling-async[redis]``.
    ``max_parallel_tasks`` is the account's parallel-task limit, kept before each create is
    sent (None: learned from 1303 replies).

    Added in version 0.1; ``callbacks`` in 0.2; ``transport``, ``fleet`` and
    ``max_parallel_tasks`` in 0.3.
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
        fleet: str | redis.asyncio.Redis | None = None,
        max_parallel_tasks: int | None = None,
    ) -> None:
        fleet = check_fleet(fleet)
        config = configure(
            api_key=api_key,
            base_url=base_url,
            access_key=access_key,
            secret_key=secret_key,
            max_in_flight=max_in_flight,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            stamp_external_id=stamp_external_id,
            list_refresh=list_refresh,
            allow_insecure_http=allow_insecure_http,
            max_response_bytes=max_response_bytes,
            environ=os.environ,
            max_parallel_tasks=max_parallel_tasks,
        )
        parts = account_parts(fleet, account=config.account)
        self._lifetime = lifetime = Lifetime(
            transport=transport,
            http_session=http_session,
            trace_configs=trace_configs,
            journal=journal,
            callbacks=callbacks,
            parts=parts,
        )
        self.poll_policy = poll_policy if poll_policy is not None else PollPolicy()
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._config = config
        self._wire = Wire(
            base_url=config.base_url,
            auth=config.auth,
            retry_policy=self.retry_policy,
            max_in_flight=config.limits.max_in_flight,
            create_deadline=config.timeouts.create,
            pace=parts.pace(),
        )
        # A create's slot is held unbound at most as long as the create may be on the wire.
        gate = parts.gate(
            self._wire.sleep,
            limit=config.limits.max_parallel_tasks,
            hold=config.timeouts.create + _SLOT_MARGIN,
        )
        creator = Creator(self._wire, gate)
        self._spending = Spending()
        self._watcher = Watcher(
            self._wire,
            self.poll_policy,
            list_refresh=config.list_refresh,
            events=WatchEvents(slot_freed=gate.freed, seen=self._saw),
            states=parts.states(),
        )
        self._journal = lifetime.journal
        self._background = lifetime.background
        self._submitter = Submitter(
            creator,
            self._watcher,
            stamp=config.stamp_external_id,
            journal=self._journal,
            busy_wait=config.timeouts.create,
            check_open=self._wire.check_open,
        )
        self._gate = gate

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> KlingSession:
        if self._wire.state != "unopened":
            raise RuntimeError(f"a KlingSession can be opened once; this one is {self._wire.state}")
        self._wire.running_loop()  # before aiohttp, which fails obscurely without asyncio
        await self._lifetime.open(self._config, self._wire, self._watcher, self._submitter)
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
            self._gate.close()
        await self._lifetime.close(self._submitter)

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
        config = self._config
        return f"<KlingSession {config.base_url} {config.auth!r} {self._wire.state}>"

    @property
    def base_url(self) -> str:
        """The base URL requests go to (``/v1/...`` is appended)."""
        return self._config.base_url

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
            tasks_created=self._submitter.tasks_created,
            list_requests=watcher.list_requests,
            list_refresh=watcher.list_mode,
            rate_limit=wire.pace.rate,
            tasks_tracked=watcher.tracked,
            callback_tokens=0 if (link := self._submitter.link) is None else link.open_tokens,
            units_spent=self._spending.units,
            cash_spent=self._spending.cash,
        )

    def _saw(self, task: Task) -> None:
        """A task object came in: what it cost (once it finished), its videos' lengths."""
        self._spending.saw(task)
        self._submitter.durations.saw(task)

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

        Kling extends only videos made by its V1.0, V1.5 and V1.6 models, deletes videos 30
        days after they are made, and stops an extended video at 3 minutes (each extend adds
        4-5 s). A create refused for one of these raises `SourceVideoError`, whose ``reason``
        says which; an extend of a video this session saw, whose length + 4 s would pass 3
        minutes, raises `InvalidArgumentError` before anything is sent (docs/errors.md,
        "Refused source videos").
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
            check_key(key, journal=self._journal is not None)
        return await self._submitter.submit(request, None, key)

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
        check_timeout(timeout)
        self._wire.check_open()
        deadline = None if timeout is None else self._wire.clock() + timeout
        return await self._submitter.submit_many(batch, deadline)

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
        return await self._submitter.resume(journal)

    async def settle(self, key: str, task_id: str) -> TaskHandle:
        """Record ``task_id`` as the task of journal ``key`` and return its handle: the way
        out of a key in doubt (`AmbiguousCreateError` lists its candidates) or whose task
        vanished. The task is queried first; one for another video raises ``ValueError``,
        and so does a task id already recorded for another key.

        Added in version 0.2.
        """
        journal = self._journal_or_raise("settle()")
        check_key(key, journal=True)
        check_task_id(task_id)
        self._wire.check_open()
        return await self._submitter.settle(journal, key, task_id)

    async def forget(self, key: str) -> bool:
        """Delete the journal's record of ``key`` (True if there was one): the next
        ``extend`` with it creates, and pays for, a new task. For a key whose task vanished,
        or whose create you know made nothing. ``ValueError`` while a create of it runs.

        Added in version 0.2.
        """
        journal = self._journal_or_raise("forget()")
        check_key(key, journal=True)
        self._wire.check_open()
        return await journal.forget(key)

    def _journal_or_raise(self, call: str) -> Journal:
        if self._journal is None:
            raise ValueError(f"{call} reads the journal: KlingSession(journal=...)")
        return self._journal

    def task(self, task_id: str, *, family: TaskFamily | str | None = None) -> TaskHandle:
        """A handle for an existing task, without I/O: resume a wait after a restart.

        Every handle of one task id in a session shares its state and its polls. ``family``
        (versionadded 0.3): the task's `TaskFamily`, whose routes it is polled on; by
        default the one this session made it with, else an extend.
        """
        check_task_id(task_id)
        known = None if family is None else TaskFamily(family)
        self._wire.check_open()
        return self._submitter.handle(task_id, known)

    async def get_task(self, task_id: str, *, family: TaskFamily | str = TaskFamily.EXTEND) -> Task:
        """Query one task by its task id or external task id (queries retry transient
        failures), on its ``family``'s route (versionadded 0.3)."""
        check_task_id(task_id)
        known = TaskFamily(family)
        self._wire.check_open()
        return await self._watcher.query(task_id, known)

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
            self._lifetime.transport,
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
        states = states_of(handles, self._watcher)
        check_timeout(timeout)
        self._wire.check_open()
        return self._watcher.as_completed(states, timeout)

    def list_tasks(
        self,
        *,
        page_size: int = 30,
        first_page: int = 1,
        max_pages: int | None = None,
        family: TaskFamily | str = TaskFamily.EXTEND,
    ) -> AsyncGenerator[Task, None]:
        """Iterate the account's tasks of ``family`` (extends by default; versionadded 0.3),
        newest first, fetching page by page.

        Raises `ListUnavailableError` (on the first page) where the base URL does not offer
        listing, as most gateways do not.
        """
        check_count("page_size", page_size, 500)  # Kling's pageSize: 1 to 500
        check_count("first_page", first_page, 1000)  # Kling's pageNum: 1 to 1000
        if max_pages is not None:
            check_count("max_pages", max_pages, None)
        known = TaskFamily(family)
        self._wire.check_open()
        return self._pages(page_size, first_page, max_pages, known)

    async def _pages(
        self, page_size: int, page: int, max_pages: int | None, family: TaskFamily
    ) -> AsyncGenerator[Task, None]:
        wire = self._wire
        fetched = 0
        while page <= 1000 and (max_pages is None or fetched < max_pages):
            wire.check_open()
            tasks = await wire.call(
                sansio.list_request(wire.base_url, page, page_size, family),
                sansio.parse_task_list,
            )
            fetched += 1
            for task in tasks:
                yield task
            if len(tasks) < page_size:
                return
            page += 1
