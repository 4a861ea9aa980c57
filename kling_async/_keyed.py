"""Keyed creates: what a journal's claim says, turned into a create, a task id or an error.

With a journal, ``extend(key=...)`` records the request before it is sent and the task id
once it is known (``_journal``), so that a crash or a second run never pays twice: a key
already created returns its task, a create the process died in the middle of is looked up
(never resent), and only a record that proves nothing left the machine is sent again.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

import anyio
import attrs

from ._attempt import CallbackSlot
from ._create import Creator
from ._journal import ClaimOutcome, Journal
from ._journal_requests import images_left_out
from ._source_requests import CreateRequest, source_video_id
from ._source_video import source_video_error
from ._task_codec import task_json
from .errors import APIError, ClaimLostError, JournalError, KlingError, NotFoundError
from .models import Task
from .sansio import error_class_for

__all__ = ["JournalRecord", "KeyedCreates", "keyed_create"]

logger = logging.getLogger("kling_async")

# A 404 for a task created less than this long ago may be a server that does not show it
# yet: only an older task is recorded gone.
_GONE_AFTER = dt.timedelta(minutes=5)
_HTTP_STATUS = re.compile(r"\(HTTP (\d{3})\b")


class JournalRecord:
    """The `CreateRecord` of one key: each step of its create, written to the journal."""

    __slots__ = ("_journal", "_key")

    def __init__(self, journal: Journal, key: str) -> None:
        self._journal = journal
        self._key = key

    async def sending(
        self, sent_at: dt.datetime, sent_server: dt.datetime | None, uncertainty: float
    ) -> None:
        await self._journal.mark_sending(
            self._key, sent_at, sent_server=sent_server, sent_uncertainty=uncertainty
        )

    async def not_sent(self) -> None:
        await self._journal.mark_not_sent(self._key)

    async def created(self, task: Task) -> None:
        try:
            await self._journal.mark_created(self._key, task.task_id)
        except JournalError as error:
            # The task exists and is paid for: the error says which, and the record stays
            # "sending", so that a later run looks it up and finds it.
            raise JournalError(
                f"the server made task {task.task_id} but the journal could not record it: "
                f"{error.args[0]}",
                key=self._key,
                task_id=task.task_id,
            ) from error
        except ClaimLostError as error:
            # Another process took the key over while this one was creating: it looks the
            # task up and records it; this caller learns which task it was.
            raise ClaimLostError(
                f"the server made task {task.task_id} but another process had taken the key "
                f"over: {error.args[0]}",
                key=self._key,
                task_id=task.task_id,
            ) from error

    async def refused(self, error: KlingError) -> None:
        code = error.code if isinstance(error, APIError) else None
        await self._journal.mark_refused(self._key, str(error), code=code)


async def keyed_create(
    creator: Creator,
    journal: Journal,
    key: str,
    request: CreateRequest,
    *,
    stamp: str | None,
    deadline: float | None,
    busy_wait: float,
    callback: CallbackSlot | None = None,
) -> tuple[str, Task | None]:
    """Create ``request`` under ``key`` at most once; return its task id (and the task when
    this call made or found it).

    Raises ``ValueError`` (before any request) when the key was used for another request,
    the refusal the server gave when the key's request was refused before, and
    ``RuntimeError`` when another process is creating the same key right now.
    """
    now = dt.datetime.now(dt.timezone.utc)
    claim = await journal.claim(key, request, now=now, stamp=stamp, wait=busy_wait)
    try:
        outcome = claim.outcome
        if outcome is ClaimOutcome.EXISTING:
            assert claim.task_id is not None
            return claim.task_id, None
        if outcome is ClaimOutcome.REFUSED:
            entry = claim.entry
            said = entry.refusal_reason or ""
            # The refusal as it was told (its words end with "(HTTP <status>, ..."): the same
            # class and reason again, read from those words alone, never from the key's.
            found = _HTTP_STATUS.search(said)
            status = int(found.group(1)) if found else 400
            cls = error_class_for(status, entry.refusal_code)
            message = f"the create for key {key!r} was refused before and is not sent again: {said}"
            # status 0: not a reply, the journal remembers the refusal (and its words).
            video_id = source_video_id(claim.request)
            source = None
            if video_id:  # an extend: the refusal may be about its source video
                source = source_video_error(
                    cls,
                    message,
                    video_id=video_id,
                    status=0,
                    code=entry.refusal_code,
                    reason_status=status,
                    words=said,
                )
            raise source or cls(message, status=0, code=entry.refusal_code)
        if outcome is ClaimOutcome.GONE:
            entry = claim.entry
            raise NotFoundError(
                f"the task {entry.task_id} made for key {key!r} no longer exists on the server "
                f"({entry.refusal_reason}); nothing is sent: forget the key to create it again, "
                "or settle it to another task",
                status=0,  # not a reply: the journal remembers it
                code=1203,
                task_id=entry.task_id,
            )
        if outcome is ClaimOutcome.BUSY:
            raise RuntimeError(
                f"key {key!r} is being created right now by another session or process "
                f"sharing the journal (owner {claim.entry.owner}); wait for it, then call "
                "again to get its task"
            )
        record = JournalRecord(journal, key)
        if outcome is ClaimOutcome.IN_DOUBT:
            # The process that sent it died before the reply: look it up, never resend.
            entry = claim.entry
            task = await creator.reconcile(
                _sendable(claim.request, request),
                sent_at=entry.sent_at or entry.claimed_at,
                sent_server=entry.sent_server,
                sent_uncertainty=entry.sent_uncertainty,
                record=record,
                key=key,
                callback=callback,
            )
        else:
            task = await creator.create(
                claim.request, deadline=deadline, record=record, callback=callback, key=key
            )
        return task.task_id, task
    finally:
        if claim.outcome in (ClaimOutcome.FRESH, ClaimOutcome.IN_DOUBT):
            await _release(journal, key)


def _sendable(recorded: CreateRequest, given: CreateRequest) -> CreateRequest:
    """The request a create in doubt is looked up (and, if it made no task, sent) as: the
    journal's, or the caller's with the journal's external id when the journal keeps only
    its images' digests (the same request: their fingerprints matched)."""
    if images_left_out(recorded) and not images_left_out(given):
        return attrs.evolve(given, external_task_id=recorded.external_task_id)
    return recorded


async def _release(journal: Journal, key: str) -> None:
    """Let ``key`` go. A failed write (a full disk, a deleted file) is logged, not raised: it
    would hide the error in flight, such as the one naming a task the journal could not
    record, and the key's ownership ends with this journal instance anyway."""
    try:
        await journal.release(key)
    except JournalError as error:
        logger.warning("could not release journal key %r: %s", key, error)


class KeyedCreates:
    """A session's journal: keyed creates, and what waits learn of journaled tasks.

    A wait that sees a task finish records it; a write that fails then (a full disk) does
    not fail the wait: it is logged and tried again with the next one, and when the session
    closes. A task the server no longer knows is recorded GONE and reported once.
    """

    __slots__ = ("_creator", "_flush_failed", "_flushing", "_unrecorded", "journal")

    def __init__(self, creator: Creator, journal: Journal) -> None:
        self._creator = creator
        self.journal = journal
        self._unrecorded: dict[str, Task] = {}  # finishes not yet written
        self._flushing: anyio.Event | None = None  # set when the running flush ends
        self._flush_failed = False  # whether the last flush ended on a failed write
        creator.lookup.journal = journal

    async def create(
        self,
        key: str,
        request: CreateRequest,
        *,
        stamp: str | None,
        deadline: float | None,
        busy_wait: float,
        callback: CallbackSlot | None,
    ) -> tuple[str, Task | None]:
        """`keyed_create` on this journal."""
        return await keyed_create(
            self._creator,
            self.journal,
            key,
            request,
            stamp=stamp,
            deadline=deadline,
            busy_wait=busy_wait,
            callback=callback,
        )

    async def finished(self, task: Task) -> None:
        """A wait saw ``task`` finish: record it (never raises)."""
        self._unrecorded[task.task_id] = task
        await self.flush()

    async def flush(self) -> None:
        """Record the finishes not yet written; on a failure, keep them for the next try.

        One flush writes at a time: a thousand waits ending together queue their finishes
        behind it and return once it has written them (or failed), instead of each writing
        every queued finish again.
        """
        while self._unrecorded:
            running = self._flushing
            if running is None:
                break
            await running.wait()
            if self._flush_failed:
                return  # kept for the next try: the journal did not answer just now
        if not self._unrecorded:
            return
        self._flushing = done = anyio.Event()
        self._flush_failed = False
        try:
            while self._unrecorded:
                task_id, task = next(iter(self._unrecorded.items()))
                try:
                    # The task's JSON goes with its status: what it made and what it cost
                    # stay readable from the journal (``JournalEntry.task``).
                    await self.journal.mark_finished(task_id, task.status, task_json(task))
                except (JournalError, RuntimeError) as error:
                    self._flush_failed = True
                    logger.warning(
                        "could not record that task %s finished (%s); %d finish(es) will be "
                        "recorded later",
                        task_id,
                        error,
                        len(self._unrecorded),
                    )
                    return
                if self._unrecorded.get(task_id) is task:
                    del self._unrecorded[task_id]
        finally:
            self._flushing = None
            done.set()

    async def gone(self, task_id: str, error: KlingError) -> None:
        """A query answered that ``task_id`` does not exist: record it GONE (never raises),
        unless it was created so recently that the server may not list it yet."""
        before = dt.datetime.now(dt.timezone.utc) - _GONE_AFTER
        try:
            key = await self.journal.mark_gone(task_id, str(error), before=before)
        except (JournalError, RuntimeError) as failure:
            logger.warning("could not record that task %s vanished: %s", task_id, failure)
            return
        if key is not None:
            logger.warning(
                "task %s of journal key %r no longer exists on the server (%s); recorded as "
                "gone: forget the key to create it again",
                task_id,
                key,
                error,
            )
