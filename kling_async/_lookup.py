"""Looking up a create in doubt: the driver of `_reconcile`'s rules.

It reads what the rules need (the external id's query, the task list back to the send, the
journal's other creates in doubt), places each send on the server's clock, and asks
`_reconcile.verdict`; it looks again every few seconds on the loop's clock until the answer
is known or the send's window has closed (``docs/concepts.md``, "How an unknown outcome is
reconciled"). It never resends: it returns the task, raises `AmbiguousCreateError` with the
candidates, or raises `Absent` for a caller that may send again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _reconcile, sansio
from ._attempt import NEVER, Attempts, CreateAttempt
from ._source_requests import CreateRequest
from .errors import (
    AmbiguousCreateError,
    JournalError,
    KlingError,
    ListUnavailableError,
    NotFoundError,
)
from .models import Task, TaskFamily

if TYPE_CHECKING:
    from ._journal import Journal
    from ._wire import Wire

__all__ = ["Absent", "Lookup"]

logger = logging.getLogger("kling_async")

_PAGE_SIZE = 100  # list pages read by a look-up
_MAX_PAGES = 30  # a look-up reads at most this many pages back to the send


class Absent(Exception):
    """The look-up proved a create absent: neither its external id nor the list knows it."""


class _CannotLook(Exception):
    """Nothing can settle the create: ``why`` says what is missing."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Lookup:
    """Settles the creates in doubt of one session, and learns what the server offers."""

    def __init__(self, wire: Wire, attempts: Attempts) -> None:
        self._wire = wire
        self._attempts = attempts
        self.keeps_external_ids = False  # set once the server echoes or finds one
        self.list_unavailable = False  # the base URL answered that it has no task list
        self._html_lists = 0  # list replies that were an HTML page
        self.journal: Journal | None = None  # its records are claims and rivals too

    async def settle(
        self,
        request: CreateRequest,
        unknown: str,
        attempt: CreateAttempt,
        *,
        may_resend: bool = False,
        cause: KlingError | None = None,
    ) -> Task:
        """Find out whether ``attempt`` made a task (``unknown``: why it is in doubt).

        Looks at once, then every few seconds (on the loop's clock) until the answer is
        known or the create's window has closed; with a policy that does not wait, once.
        Returns its task; raises AmbiguousCreateError with the candidates when it cannot be
        told, and `Absent` (only when ``may_resend``) when it certainly made none.
        """
        wire, attempts, key = self._wire, self._attempts, attempt.key
        named = "" if key is None else f" (key {key!r})"
        logger.info(
            "create for %s%s is in doubt (%s); looking it up",
            request.subject,
            named,
            unknown,
        )

        def ambiguous(why: str, candidates: Sequence[Task] = ()) -> AmbiguousCreateError:
            return AmbiguousCreateError(
                f"the create's outcome is unknown ({unknown}) and {why}",
                request=request,
                sent_at=attempt.sent_at,
                external_task_id=request.external_task_id,
                candidates=tuple(candidates),
                key=key,
            )

        looks = 0
        while True:
            on_wire = [other for other in attempts.rivals(attempt) if other.on_wire]
            ends = max([attempt.window_ends, *(other.window_ends for other in on_wire)])
            final = _reconcile.must_answer(
                now=wire.clock(),
                ends=ends,
                waits=wire.retry_policy.wait,
                rival_on_wire=bool(on_wire),
                may_resend=may_resend,
            )
            looks += 1
            try:
                outcome = await self._look(request, attempt, final=final)
            except _CannotLook as cannot:
                raise ambiguous(cannot.why) from (cause or cannot.__cause__)
            if isinstance(outcome, _reconcile.Found):
                task = outcome.task
                attempts.remember(task.task_id, key)
                attempts.settled(key)
                logger.info(
                    "create for %s%s made task %s (found by look-up %d)",
                    request.subject,
                    named,
                    task.task_id,
                    looks,
                )
                return task
            if isinstance(outcome, _reconcile.Absent):
                if may_resend:
                    raise Absent
                raise ambiguous("no task for it was found until its window closed") from cause
            if isinstance(outcome, _reconcile.Ambiguous):
                raise ambiguous(outcome.why, outcome.candidates) from cause
            delay = _reconcile.look_delay(now=wire.clock(), ends=ends, waits=wire.retry_policy.wait)
            if looks == 1:
                logger.info(
                    "create for %s not found yet; looking again every %g s for up to %.0f s",
                    request.subject,
                    _reconcile.LOOK_EVERY,
                    max(0.0, ends - wire.clock()),
                )
            await wire.sleep(delay, wake=on_wire[0].off_wire() if on_wire else None)

    async def _look(
        self, request: CreateRequest, attempt: CreateAttempt, *, final: bool
    ) -> _reconcile.Verdict | None:
        """One look-up: the external id, then the list back to the send; a verdict or None."""
        external_id = request.external_task_id
        if external_id is not None:
            found = await self._by_external_id(external_id, request.family, final=final)
            if found is not None:
                return _reconcile.Found(found)
        if external_id is not None and self.keeps_external_ids:
            tasks: list[Task] = []  # the id look-up was the whole answer
            covered = True
        else:
            listed = await self._listed(attempt, request.family, final=final)
            if listed is None:
                return None
            tasks, covered = listed
        key = attempt.key
        rivals = [self._doubt(other) for other in self._attempts.rivals(attempt)]
        claimed = self._attempts.claimed(key)
        if self.journal is not None:
            try:
                # A source create's video id is "": the source creates in doubt, of its family.
                recorded = [
                    entry
                    for entry in await self.journal.doubts(attempt.video_id)
                    if entry.request.family is attempt.family
                ]
                owners = await self.journal.keys_of([task.task_id for task in tasks])
            except JournalError as journal_error:
                if final:
                    raise _CannotLook(
                        f"reading the journal failed ({journal_error})"
                    ) from journal_error
                return None
            wall_now = dt.datetime.now(dt.timezone.utc)
            for entry in recorded:
                if entry.key != key and entry.sent_at is not None:
                    rival = CreateAttempt(
                        attempt.video_id, None, entry.external_task_id, family=attempt.family
                    )
                    rival.sent_at = entry.sent_at
                    # Sent "in the future": the clock was set back; unplaced, it contests all.
                    rival.placed = not _reconcile.set_back(entry.sent_at, wall_now)
                    rival.sent_server = entry.sent_server
                    rival.sent_uncertainty = entry.sent_uncertainty or 0.0
                    rivals.append(self._doubt(rival))
            claimed.update(task_id for task_id, owner in owners.items() if owner != key)
        return _reconcile.verdict(
            self._doubt(attempt),
            tasks,
            claimed=claimed,
            rivals=rivals,
            keeps_external_ids=self.keeps_external_ids,
            covered=covered,
            final=final,
        )

    async def carrying(
        self, external_id: str, family: TaskFamily = TaskFamily.EXTEND
    ) -> Task | None:
        """The task of ``family`` carrying ``external_id``, None when the server knows none;
        KlingError when the query fails (with the query retry rules)."""
        wire = self._wire
        try:
            found = await wire.call(
                sansio.query_request(wire.base_url, external_id, family),
                lambda response, now: sansio.parse_task(response, now, task_id=external_id),
            )
        except NotFoundError:
            return None
        self.keeps_external_ids = True
        return found

    async def _by_external_id(
        self, external_id: str, family: TaskFamily, *, final: bool
    ) -> Task | None:
        """The task carrying ``external_id``, or None (not made yet, or not kept)."""
        try:
            # None: not made (yet), or the server drops external ids: the list tells
            return await self.carrying(external_id, family)
        except KlingError as lookup_error:
            if final:
                raise _CannotLook(
                    f"looking up its external id failed ({lookup_error})"
                ) from lookup_error
            return None

    async def _listed(
        self, attempt: CreateAttempt, family: TaskFamily, *, final: bool
    ) -> tuple[list[Task], bool] | None:
        """The list read back to the send (and whether it got that far), or None to look
        again later."""
        if self.list_unavailable:
            raise _CannotLook("this base URL offers no task list to look it up")
        try:
            return await self._read_list(attempt, family)
        except ListUnavailableError as unavailable:
            # A 404 or 1202 says so for good; an HTML page (a proxy's) may pass: it is
            # believed the second time.
            if unavailable.__cause__ is not None or self._html_lists:
                self.list_unavailable = True
                raise _CannotLook("this base URL offers no task list to look it up") from None
            self._html_lists += 1
            if final:
                raise _CannotLook(f"listing tasks failed ({unavailable})") from None
            return None
        except KlingError as list_error:
            if final:
                raise _CannotLook(f"listing tasks failed ({list_error})") from list_error
            return None

    async def _read_list(
        self, attempt: CreateAttempt, family: TaskFamily
    ) -> tuple[list[Task], bool]:
        """List pages, newest first, back past the send (less the margin and the tolerance
        for a misplaced send) on the server's clock; also whether they reached that far."""
        wire = self._wire
        tasks: list[Task] = []
        for page in range(1, _MAX_PAGES + 1):
            before = dt.datetime.now(dt.timezone.utc)
            listed, date = await wire.call(
                sansio.list_request(wire.base_url, page, _PAGE_SIZE, family), _list_and_date
            )
            wire.server_clock.observe_date(date, before, dt.datetime.now(dt.timezone.utc))
            tasks.extend(listed)
            scan_from = self._doubt(attempt).scan_from
            if scan_from is None:
                return tasks, False  # cannot tell how far back to read
            if not _reconcile.read_next_page(listed, _PAGE_SIZE, scan_from):
                return tasks, True
        return tasks, False

    def _doubt(self, attempt: CreateAttempt) -> _reconcile.Doubt:
        """``attempt`` as the look-up's rules see it, on the server's clock now."""
        wire = self._wire
        clock = wire.server_clock
        sent_ago = None
        if attempt.sent_loop is not None:
            sent_ago = dt.timedelta(seconds=wire.clock() - attempt.sent_loop)
        on_server = None
        if attempt.placed and attempt.sent_at is not NEVER:
            on_server = clock.to_server(attempt.sent_at)
        return _reconcile.place(
            video_id=attempt.video_id,
            external_task_id=attempt.external_task_id,
            window=dt.timedelta(seconds=wire.create_deadline),
            clock_uncertainty=clock.uncertainty,
            server_now=clock.to_server(dt.datetime.now(dt.timezone.utc)),
            sent_ago=sent_ago,
            sent_server=attempt.sent_server,
            sent_uncertainty=dt.timedelta(seconds=attempt.sent_uncertainty),
            sent_wall_on_server=on_server,
        )


def _list_and_date(
    response: sansio.HTTPResponse, now: dt.datetime
) -> tuple[list[Task], str | None]:
    """A list page, and the reply's ``Date`` (the server's clock, to place the send on)."""
    return sansio.parse_task_list(response, now), response.headers.get("Date")
