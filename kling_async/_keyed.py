"""Keyed creates: what a journal's claim says, turned into a create, a task id or an error.

With a journal, ``extend(key=...)`` records the request before it is sent and the task id
once it is known (``_journal``), so that a crash or a second run never pays twice: a key
already created returns its task, a create the process died in the middle of is looked up
(never resent), and only a record that proves nothing left the machine is sent again.
"""

from __future__ import annotations

import datetime as dt

from ._create import CallbackSlot, Creator
from ._journal import ClaimOutcome, Journal
from .errors import APIError, KlingError
from .models import ExtendRequest, Task
from .sansio import error_class_for

__all__ = ["JournalRecord", "keyed_create"]


class JournalRecord:
    """The `CreateRecord` of one key: each step of its create, written to the journal."""

    __slots__ = ("_journal", "_key")

    def __init__(self, journal: Journal, key: str) -> None:
        self._journal = journal
        self._key = key

    async def sending(self, sent_at: dt.datetime) -> None:
        await self._journal.mark_sending(self._key, sent_at)

    async def not_sent(self) -> None:
        await self._journal.mark_not_sent(self._key)

    async def created(self, task: Task) -> None:
        await self._journal.mark_created(self._key, task.task_id)

    async def refused(self, error: KlingError) -> None:
        code = error.code if isinstance(error, APIError) else None
        await self._journal.mark_refused(self._key, str(error), code=code)


async def keyed_create(
    creator: Creator,
    journal: Journal,
    key: str,
    request: ExtendRequest,
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
            cls = error_class_for(400, entry.refusal_code)
            raise cls(
                f"the create for key {key!r} was refused before and is not sent again: "
                f"{entry.refusal_reason}",
                status=0,  # not a reply: the journal remembers the refusal
                code=entry.refusal_code,
            )
        if outcome is ClaimOutcome.BUSY:
            raise RuntimeError(
                f"key {key!r} is being created right now by another session or process "
                f"sharing the journal (owner {claim.entry.owner}); wait for it, then extend "
                "again to get its task"
            )
        record = JournalRecord(journal, key)
        if outcome is ClaimOutcome.IN_DOUBT:
            # The process that sent it died before the reply: look it up, never resend.
            entry = claim.entry
            task = await creator.reconcile(
                claim.request,
                sent_at=entry.sent_at or entry.claimed_at,
                record=record,
                callback=callback,
            )
        else:
            task = await creator.create(
                claim.request, deadline=deadline, record=record, callback=callback
            )
        return task.task_id, task
    finally:
        if claim.outcome in (ClaimOutcome.FRESH, ClaimOutcome.IN_DOUBT):
            await journal.release(key)
