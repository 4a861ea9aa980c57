"""From a caller's extend to a handle: stamping, keyed creates, callback tokens, resume.

The session's public calls check their arguments and come here; a create's tries and
look-ups are ``_create``'s, a key's record is ``_keyed``'s, and the handle waits through
``_watch``. This is where those meet for one create: its external id is stamped (so that
an unknown outcome can be found again), its receiver token issued before it is sent (a
callback may beat the reply), and a key's journal consulted first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ._attempt import CallbackSlot, new_stamp
from ._create import Creator
from ._handle import TaskHandle
from ._journal import EntryState, Journal, JournalEntry
from ._keyed import KeyedCreates
from ._source_requests import CreateRequest, source_video_id
from ._source_video import KnownDurations, too_long
from ._watch import Watcher
from .errors import KlingError
from .models import ExtendRequest, TaskFamily

if TYPE_CHECKING:
    from ._callback_tokens import CallbackTokens
    from .callbacks import CallbackReceiver

__all__ = ["Submitter"]

logger = logging.getLogger("kling_async")


class Submitter:
    """Submits one session's creates and hands back their handles."""

    def __init__(
        self,
        creator: Creator,
        watcher: Watcher,
        *,
        stamp: bool,
        journal: Journal | None,
        busy_wait: float,
        check_open: Callable[[], None],
    ) -> None:
        self._check_open = check_open  # the session's: raises once it is closed
        self._creator = creator
        self._watcher = watcher
        self._stamp = stamp
        self._busy_wait = busy_wait  # how long a key another process is creating is awaited
        self.keyed: KeyedCreates | None = None
        self._journal = journal
        # The lengths of the videos this session saw, for the 3-minute limit of an extend.
        self.durations = KnownDurations()
        if journal is not None:
            self.keyed = KeyedCreates(creator, journal)
            watcher.events.done = self.keyed.finished
            watcher.events.gone = self.keyed.gone
        # The receiver and this session's tokens of it, while the session is open.
        self.receiver: CallbackReceiver | None = None
        self.link: CallbackTokens[Any] | None = None
        self.tasks_created = 0

    def handle(self, task_id: str, family: TaskFamily | None = None) -> TaskHandle:
        """A handle for ``task_id``, sharing the state of every other one in the session;
        ``family``: the task is of that family (None: as known, else an extend)."""
        state = self._watcher.state(task_id)
        if family is not None:
            state.family = family
        return TaskHandle(self._watcher, state)

    async def submit(
        self, request: CreateRequest, deadline: float | None, key: str | None = None
    ) -> TaskHandle:
        """Create ``request`` (under journal ``key``) and return its handle.

        An extend of a video this session saw that would pass 3 minutes is refused with
        `InvalidArgumentError` before anything is sent, unless the journal already holds
        ``key`` (its record decides: it may have made its task already).
        """
        self._check_open()
        video_id = source_video_id(request)
        refusal = too_long(video_id, self.durations.get(video_id)) if video_id else None
        if refusal is not None and (
            key is None or self._journal is None or await self._journal.get(key) is None
        ):
            raise refusal
        link = self.link
        if link is None or request.callback_url is not None:
            return await self._submit(request, deadline, key, None)
        # A caller's own callback_url is sent unchanged; else the create gets a token of the
        # receiver's, registered before it is sent (a callback may beat the reply).
        binding, url = link.issue()
        slot = CallbackSlot(url)
        try:
            handle = await self._submit(request, deadline, key, slot)
        except BaseException:
            link.discard(binding)
            raise
        if slot.sent:
            link.bind(binding, handle.task_id)
        else:  # a key created before: nothing was sent with this token
            link.discard(binding)
        return handle

    async def _submit(
        self,
        request: CreateRequest,
        deadline: float | None,
        key: str | None,
        slot: CallbackSlot | None,
    ) -> TaskHandle:
        stamp = None
        if request.external_task_id is None and self._stamp:
            stamp = new_stamp()
        if key is not None:
            assert self.keyed is not None
            task_id, made = await self.keyed.create(
                key,
                request,
                stamp=stamp,
                deadline=deadline,
                busy_wait=self._busy_wait,
                callback=slot,
            )
            if made is None:  # created before (maybe by another process): nothing sent
                return self.handle(task_id, request.family)
            task = made
        else:
            if stamp is not None:
                request = attrs.evolve(request, external_task_id=stamp)
            task = await self._creator.create(request, deadline=deadline, callback=slot)
        self.tasks_created += 1
        safety = None
        if slot is not None and slot.sent:
            assert self.receiver is not None
            safety = self.receiver.safety_interval
        state = self._watcher.created(task, safety=safety, family=request.family)
        return TaskHandle(self._watcher, state)

    async def submit_many(
        self, requests: list[ExtendRequest], deadline: float | None
    ) -> list[TaskHandle | KlingError]:
        """Submit side by side; in input order, each one's handle or error (see
        `KlingSession.extend_many`). An extend that would pass 3 minutes (see `submit`)
        raises `InvalidArgumentError` before any of them is sent."""
        for index, request in enumerate(requests):
            refusal = too_long(request.video_id, self.durations.get(request.video_id), index=index)
            if refusal is not None:
                raise refusal
        results: list[TaskHandle | KlingError | None] = [None] * len(requests)

        async def submit(index: int, request: ExtendRequest) -> None:
            try:
                results[index] = await self.submit(request, deadline)
            except KlingError as error:
                results[index] = error

        async with anyio.create_task_group() as group:
            for index, request in enumerate(requests):
                group.start_soon(submit, index, request)
        return [result for result in results if result is not None]

    async def resume(self, journal: Journal) -> list[TaskHandle]:
        """Handles for every journaled task not yet seen finished; creates in doubt looked up
        side by side (see `KlingSession.resume`)."""
        entries = await journal.pending()
        handles = [
            self.handle(entry.task_id, entry.request.family)
            for entry in entries
            if entry.state is EntryState.CREATED and entry.task_id is not None
        ]
        doubts = [entry for entry in entries if entry.state is EntryState.SENDING]
        if doubts:
            logger.info("%d create(s) in doubt: looking them up", len(doubts))
        settled: list[TaskHandle | None] = [None] * len(doubts)

        async def settle(index: int, entry: JournalEntry) -> None:
            try:
                settled[index] = await self.submit(entry.request, None, entry.key)
            except (KlingError, RuntimeError, ValueError) as error:
                # Unsettled, refused, or taken by another process since: the others go on.
                logger.warning("journaled key %r is still unsettled: %s", entry.key, error)

        async with anyio.create_task_group() as group:
            for index, entry in enumerate(doubts):
                group.start_soon(settle, index, entry)
        handles.extend(handle for handle in settled if handle is not None)
        return handles

    async def settle(self, journal: Journal, key: str, task_id: str) -> TaskHandle:
        """Record ``task_id`` as the task of ``key`` once the task is seen to be of the key's
        family (and, for an extend, of its video; see `KlingSession.settle`)."""
        entry = await journal.get(key)
        if entry is None:
            raise ValueError(f"key {key!r} is not in the journal")
        family = entry.request.family
        task = await self._watcher.query(task_id, family)
        parent = task.parent_video
        video_id = source_video_id(entry.request)
        if parent is not None and parent.id != video_id:
            was = f"video {video_id!r}" if video_id else entry.request.subject
            raise ValueError(
                f"task {task_id!r} extends video {parent.id!r}, but key {key!r} was for {was}"
            )
        await journal.settle(key, task.task_id)
        self._creator.attempts.remember(task.task_id)
        return self.handle(task.task_id, family)
