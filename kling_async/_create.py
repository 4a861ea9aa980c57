"""A create's life: attempts, waits for a parallel-task slot, and reconciliation.

Every create is a paid job (``docs/concepts.md``, "Creates: retries, stamping and
reconciliation"): a create is repeated only where the server certainly made no task; an
unknown outcome is never resent but looked up (by its external id, else in the task list)
until it is found or the window in which it could make a task has closed, or reported as
`AmbiguousCreateError` with everything needed to resolve it by hand. The look-up's rules
are pure, in `_reconcile`; this module sends, sleeps and records.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
import attrs

from . import _reconcile, sansio
from ._policies import Action, RetryPolicy, classify
from ._wire import DeadlinePassed, Wire
from .errors import (
    AmbiguousCreateError,
    ContentPolicyError,
    InvalidRequestError,
    JournalError,
    KlingError,
    ListUnavailableError,
    NotFoundError,
    SessionClosedError,
    SubmitTimeoutError,
)
from .models import ExtendRequest, Task

if TYPE_CHECKING:
    from ._clock import ServerClock
    from ._journal import Journal

__all__ = ["CallbackSlot", "CreateAttempt", "CreateRecord", "Creator"]

logger = logging.getLogger("kling_async")

_PAGE_SIZE = 100  # list pages read by a look-up
_MAX_PAGES = 30  # a look-up reads at most this many pages back to the send
_LOOK_EVERY = 3.0  # seconds between look-ups of a create in doubt
_CLOCK_STEP = 5.0  # a journaled send this far in the local clock's future: it was set back
_REMEMBERED_IDS = 10_000  # task ids this session made or claimed, kept to tell them apart
_REMEMBERED_DOUBTS = 1_000  # creates that ended ambiguous: they may still own a listed task
_NEVER = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


class CallbackSlot:
    """The callback URL a session's receiver issued for one create.

    A keyed create journals the caller's request (its identity); the URL, with its one-time
    token, is added only to what goes on the wire. ``sent`` tells whether it did.
    """

    __slots__ = ("sent", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = False


class CreateRecord(Protocol):
    """Where a keyed create is made durable (the session's journal, for one key)."""

    async def sending(
        self, sent_at: dt.datetime, sent_server: dt.datetime | None, uncertainty: float
    ) -> None:
        """Immediately before the bytes leave (``sent_server``: the same moment on the
        server's clock, if known, to within ``uncertainty`` seconds)."""

    async def not_sent(self) -> None:
        """The try certainly made no task (a refused connection, 1302, 1303, ...)."""

    async def created(self, task: Task) -> None:
        """The task is known (from the reply, or found again)."""

    async def refused(self, error: KlingError) -> None:
        """The server will not make this task (an invalid request, content policy)."""


class CreateAttempt:
    """Where one create stands: is it on the wire, and may it have made a task?"""

    __slots__ = (
        "_off_wire",
        "external_task_id",
        "in_doubt",
        "key",
        "on_wire",
        "placed",
        "record",
        "recorded",
        "resolved",
        "sent_at",
        "sent_loop",
        "sent_server",
        "sent_uncertainty",
        "video_id",
        "window_ends",
    )

    def __init__(
        self,
        video_id: str,
        record: CreateRecord | None = None,
        external_task_id: str | None = None,
        key: str | None = None,
    ) -> None:
        self.video_id = video_id
        self.external_task_id = external_task_id
        self.key = key  # the journal's: an earlier try of the same key is no rival
        self.record = record
        self.recorded = False  # the record says "sending" for the current try
        self.sent_at = _NEVER  # wall clock, as journaled; compared on the server's clock
        self.sent_loop: float | None = None  # the loop's clock, when this process sent it
        self.sent_server: dt.datetime | None = None  # as journaled, on the server's clock
        self.sent_uncertainty = 0.0
        self.placed = True  # False: sent_at cannot be trusted (the clock was set back)
        self.window_ends = 0.0  # loop clock: the send can no longer make a task after this
        self.on_wire = False  # sent, no reply yet
        self.in_doubt = False  # failed in a way that may hide a task
        self.resolved = False  # its task is known (or it certainly made none)
        self._off_wire: anyio.Event | None = None

    def begin(self) -> None:
        """A new try: nothing sent yet."""
        self.on_wire = self.in_doubt = False

    async def before_send(self, clock: ServerClock) -> None:
        """Make the send durable first (journal: INTENT -> SENDING), then it leaves."""
        if self.record is not None:
            now = dt.datetime.now(dt.timezone.utc)
            uncertainty = clock.uncertainty.total_seconds()
            await self.record.sending(now, clock.to_server(now), uncertainty)
            self.recorded = True

    def put_on_wire(self, now: float, window: float) -> None:
        """The request leaves now (the loop's clock); after ``window`` s it can no longer
        make a task."""
        self.sent_at = dt.datetime.now(dt.timezone.utc)
        self.sent_loop = now
        self.window_ends = now + window
        self.on_wire = True

    def take_off_wire(self) -> None:
        """The reply came (or the request failed): another look-up waiting on it may go on."""
        self.on_wire = False
        if self._off_wire is not None:
            self._off_wire.set()
            self._off_wire = None

    def off_wire(self) -> anyio.Event:
        """Set once the reply came (or the request failed)."""
        if self._off_wire is None:
            self._off_wire = anyio.Event()
            if not self.on_wire:
                self._off_wire.set()
        return self._off_wire

    @property
    def doubtful(self) -> bool:
        """Whether a task may exist that the caller has not been told of."""
        return self.on_wire or self.in_doubt


class SlotGate:
    """Creates refused with 1303 queue here; each freed slot lets the oldest one try again."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    async def wait(self, wire: Wire, delay: float) -> None:
        """Wait up to ``delay`` s for a freed slot (closing the session wakes every waiter)."""
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await wire.sleep(delay, wake=event)
        except BaseException:
            if event.is_set():
                self.release(1)  # woken for a slot, then cancelled: the next one takes it
            raise
        finally:
            if not event.is_set():
                self._waiters.remove(event)

    def release(self, count: int = 1) -> None:
        """Wake the ``count`` oldest waiters."""
        while count > 0 and self._waiters:
            self._waiters.popleft().set()
            count -= 1

    def release_all(self) -> None:
        self.release(len(self._waiters))

    def __len__(self) -> int:
        return len(self._waiters)


class Creator:
    """Sends creates for one session and settles those whose outcome is unknown."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self.gate = SlotGate()
        self.keeps_external_ids = False  # set once the server echoes or finds one
        # Ids made or claimed here, oldest first. An OrderedDict: dropping the oldest of a
        # plain dict (del d[next(iter(d))]) scans every slot deleted before it.
        # Each id maps to the journal key it was made for (None: no key), so that a key's
        # look-up never counts its own task (made, then not recorded) as someone else's.
        self._known: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._active: set[CreateAttempt] = set()
        self._doubts: collections.deque[CreateAttempt] = collections.deque(
            maxlen=_REMEMBERED_DOUBTS
        )
        self.list_unavailable = False  # the base URL answered that it has no task list
        self._html_lists = 0  # list replies that were an HTML page
        self.journal: Journal | None = None  # its records are claims and rivals too

    def remember(self, task_id: str, key: str | None = None) -> None:
        """A task this session made or claimed (for journal ``key``): never another create's
        candidate."""
        known = self._known
        known[task_id] = key
        if len(known) > _REMEMBERED_IDS:
            known.popitem(last=False)

    async def create(
        self,
        request: ExtendRequest,
        *,
        deadline: float | None = None,
        record: CreateRecord | None = None,
        callback: CallbackSlot | None = None,
        key: str | None = None,
    ) -> Task:
        """A create with the create retry rules (api.md "Create retries" and "Stamping").

        ``deadline`` (on the loop's clock) stops waiting before a send, never a create on
        the wire: past it, a create that has not been sent raises `SubmitTimeoutError`.
        Whatever interrupts a create while its outcome is unknown (a native asyncio cancel
        during the send, a cancel during the look-up) is logged with what finds the task
        again; closing the session under it raises AmbiguousCreateError. ``record`` (a
        journal's, for one key) hears of each step so that a crash loses nothing.
        ``callback`` is the receiver's URL for this create, added to what is sent only;
        ``key`` (the journal's) is named in errors and logs.
        """
        if callback is not None and request.callback_url is None:
            request = attrs.evolve(request, callback_url=callback.url)
            callback.sent = True
        attempt = CreateAttempt(request.video_id, record, request.external_task_id, key)
        self._active.add(attempt)
        try:
            task = await self._attempts(request, attempt, deadline, key)
        except SessionClosedError as error:
            if not attempt.doubtful:
                raise
            raise AmbiguousCreateError(
                "the session was closed while the create was on the wire",
                request=request,
                sent_at=attempt.sent_at,
                external_task_id=request.external_task_id,
                key=key,
            ) from error
        except anyio.get_cancelled_exc_class():
            if attempt.doubtful:
                attempt.in_doubt = True
                self._doubts.append(attempt)
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
        except AmbiguousCreateError:
            self._doubts.append(attempt)  # may still own a listed task: a rival for others
            raise
        else:
            attempt.resolved = True
            return task
        finally:
            self._active.discard(attempt)
            attempt.take_off_wire()

    async def _attempts(
        self,
        request: ExtendRequest,
        attempt: CreateAttempt,
        deadline: float | None,
        key: str | None,
    ) -> Task:
        wire = self._wire
        policy = wire.retry_policy
        clock = wire.clock
        http_request = sansio.create_request(wire.base_url, request)
        started = clock()
        first_refusal: float | None = None  # when the first 1303 came
        slot_time = 0.0  # tries refused with 1303 and their waits: not the retry budget's
        retry = 0
        slot_waits = 0
        resigned = False
        last_error: KlingError | None = None
        while True:
            if deadline is not None and clock() >= deadline:
                raise self._timed_out(request, deadline, started, last_error) from last_error
            authorization = wire.auth.authorization(wire.server_time())
            attempt.begin()
            tried_at = clock()
            try:
                task = await wire.send(
                    http_request,
                    authorization,
                    sansio.parse_created,
                    retry + 1,
                    create=attempt,
                    deadline=deadline,
                )
            except DeadlinePassed:
                raise self._timed_out(request, deadline, started, last_error) from last_error
            except KlingError as error:
                if isinstance(error, SessionClosedError):
                    if not attempt.doubtful:
                        await self._not_sent(attempt)
                    raise  # create() decides, knowing whether it was on the wire
                action = classify(error, create=True)
                attempt.in_doubt = action is Action.RECONCILE
                attempt.take_off_wire()
                if action is Action.RAISE and isinstance(error, _REFUSALS):
                    if attempt.record is not None:
                        await attempt.record.refused(error)
                elif action is not Action.RECONCILE:
                    await self._not_sent(attempt)
                now = clock()
                if action is Action.RESIGN and not resigned and wire.auth.expire(authorization):
                    resigned = True
                    continue
                if action is Action.WAIT_SLOT:
                    first_refusal = tried_at if first_refusal is None else first_refusal
                    await self._wait_for_slot(
                        error, policy, now - first_refusal, slot_waits + 1, deadline
                    )
                    slot_waits += 1
                    slot_time += clock() - tried_at
                    last_error = error
                    continue
                if action is Action.RECONCILE:
                    # Never resent: a "not found" cannot prove that the first create will not
                    # still make its task (api.md lists these outcomes as unknown).
                    found = await self._settle(request, str(error), attempt, key=key, cause=error)
                    if attempt.record is not None:
                        await attempt.record.created(found)
                    return found
                if action is not Action.RETRY:
                    raise
                retry += 1
                delay_or_none = policy.retry_delay(
                    error, retry=retry, elapsed=now - started - slot_time, rng=wire.rng
                )
                if delay_or_none is None:
                    raise
                delay = delay_or_none
                last_error = error
            else:
                # Claimed at once, before any await: a concurrent look-up must not take it.
                self.remember(task.task_id, key)
                attempt.take_off_wire()
                if task.created_at is not None:  # the server's clock, read during the send
                    self._wire.server_clock.observe(
                        task.created_at, attempt.sent_at, dt.datetime.now(dt.timezone.utc)
                    )
                if attempt.record is not None:
                    await attempt.record.created(task)
                if (
                    request.external_task_id is not None
                    and task.external_task_id == request.external_task_id
                ):
                    self.keeps_external_ids = True
                return task
            wire.retries += 1
            logger.info(
                "retrying create for video %s in %.2f s (retry %d): %s",
                request.video_id,
                delay,
                retry,
                last_error,
            )
            if deadline is not None and clock() + delay > deadline:
                await wire.sleep(max(0.0, deadline - clock()))
                raise self._timed_out(request, deadline, started, last_error) from last_error
            await wire.sleep(delay)

    async def reconcile(
        self,
        request: ExtendRequest,
        *,
        sent_at: dt.datetime,
        record: CreateRecord,
        sent_server: dt.datetime | None = None,
        sent_uncertainty: float | None = None,
        key: str | None = None,
        callback: CallbackSlot | None = None,
    ) -> Task:
        """Settle a create a journal left sent and unanswered (the process died mid-create).

        It is looked up at once (by its external id, and in the task list read back to its
        send on the server's clock), and again every few seconds until it is found or the
        window in which the send could still make a task (``create_deadline``) has closed.
        Found: its task. Absent after that window: nothing left the machine that the server
        kept, so it is sent now, with the same external id. Anything else raises
        AmbiguousCreateError; it is never resent on a guess.
        """
        wire = self._wire
        window = wire.create_deadline
        now = dt.datetime.now(dt.timezone.utc)
        server_now = wire.server_clock.to_server(now)
        if sent_server is not None and server_now is not None:
            # Both on the server's clock: what this machine's clock did since cannot matter.
            elapsed = (server_now - sent_server).total_seconds()
            placed = True
        else:
            # A clock set back since the send makes the elapsed time negative: the window is
            # then waited in full on the loop's clock (never the wall clock's hour), and the
            # send cannot be placed on the server's clock.
            elapsed = (now - sent_at).total_seconds()
            placed = elapsed >= -_CLOCK_STEP
        remaining = min(window, max(0.0, window - elapsed)) if placed else window
        attempt = CreateAttempt(request.video_id, record, request.external_task_id, key)
        attempt.sent_at = sent_at
        attempt.sent_server = sent_server
        attempt.sent_uncertainty = sent_uncertainty or 0.0
        attempt.placed = placed
        attempt.in_doubt = True
        attempt.window_ends = wire.clock() + remaining
        self._active.add(attempt)
        try:
            task = await self._settle(
                request,
                "it was sent by a process that stopped before the reply",
                attempt,
                key=key,
                absent_is_unsent=True,
            )
        except _Absent:
            attempt.in_doubt = False  # certainly made nothing
        except BaseException:
            self._doubts.append(attempt)  # still in doubt: a rival for other look-ups
            raise
        else:
            attempt.resolved = True
            await record.created(task)
            return task
        finally:
            self._active.discard(attempt)
        logger.info(
            "the journaled create for video %s%s made no task; sending it",
            request.video_id,
            "" if key is None else f" (key {key!r})",
        )
        attempt.recorded = True  # the journal says "sending"
        await self._not_sent(attempt)
        return await self.create(request, record=record, callback=callback, key=key)

    async def _not_sent(self, attempt: CreateAttempt) -> None:
        if attempt.record is not None and attempt.recorded:
            attempt.recorded = False
            await attempt.record.not_sent()

    def _timed_out(
        self,
        request: ExtendRequest,
        deadline: float | None,
        started: float,
        last_error: KlingError | None,
    ) -> SubmitTimeoutError:
        waited = (deadline or started) - started
        return SubmitTimeoutError(request=request, timeout=max(0.0, waited), last_error=last_error)

    async def _wait_for_slot(
        self,
        error: KlingError,
        policy: RetryPolicy,
        waited: float,
        wait_number: int,
        deadline: float | None,
    ) -> None:
        """After a 1303: wait for a running task to finish, within ``task_slot_timeout``.

        A ``Retry-After`` on the refusal is honoured in full (not cut short by a task
        finishing); one that ends past the slot timeout fails at once. Each task the session
        sees finish wakes one waiting create, not all of them.
        """
        wire = self._wire
        plan = policy.slot_wait(error, wait_number=wait_number, waited=waited, rng=wire.rng)
        if plan is None:
            raise error
        delay, slot_ends_it = plan
        wire.retries += 1
        logger.info("parallel-task limit reached (1303); waiting up to %.2f s", delay)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - wire.clock()))
        if slot_ends_it:
            await self.gate.wait(wire, delay)
        else:
            await wire.sleep(delay)

    async def _settle(
        self,
        request: ExtendRequest,
        unknown: str,
        attempt: CreateAttempt,
        *,
        key: str | None = None,
        absent_is_unsent: bool = False,
        cause: KlingError | None = None,
    ) -> Task:
        """Find out whether a create in doubt made a task (rules: `_reconcile`).

        Looks at once, then every few seconds (on the loop's clock) until the answer is
        known or the create's window has closed; with a policy that does not wait, once.
        Returns its task; raises AmbiguousCreateError with the candidates when it cannot be
        told, and `_Absent` (for a caller that may resend) when it certainly made none.
        """
        wire = self._wire
        sent_at = attempt.sent_at
        external_id = request.external_task_id
        logger.info(
            "create for video %s%s is in doubt (%s); looking it up",
            request.video_id,
            "" if key is None else f" (key {key!r})",
            unknown,
        )

        def ambiguous(why: str, candidates: Sequence[Task] = ()) -> AmbiguousCreateError:
            return AmbiguousCreateError(
                f"the create's outcome is unknown ({unknown}) and {why}",
                request=request,
                sent_at=sent_at,
                external_task_id=external_id,
                candidates=tuple(candidates),
                key=key,
            )

        looks = 0
        while True:
            # A rival still waiting for its reply settles which task is whose once it comes:
            # the look-up goes on until its window has closed too, whatever the policy.
            on_wire = [other for other in self._rivals(attempt) if other.on_wire]
            ends = max([attempt.window_ends, *(other.window_ends for other in on_wire)])
            closed = wire.clock() >= ends
            # A policy that does not wait answers at once, but never "absent, send it again"
            # before the window has closed.
            final = closed or not (wire.retry_policy.wait or on_wire or absent_is_unsent)
            looks += 1
            try:
                outcome = await self._look(request, attempt, key, final=final)
            except _CannotLook as cannot:
                raise ambiguous(cannot.why) from (cause or cannot.__cause__)
            if isinstance(outcome, _reconcile.Found):
                task = outcome.task
                self.remember(task.task_id, key)
                self._settled(key)
                logger.info(
                    "create for video %s%s made task %s (found by look-up %d)",
                    request.video_id,
                    "" if key is None else f" (key {key!r})",
                    task.task_id,
                    looks,
                )
                return task
            if isinstance(outcome, _reconcile.Absent):
                if absent_is_unsent:
                    raise _Absent
                raise ambiguous("no task for it was found until its window closed") from cause
            if isinstance(outcome, _reconcile.Ambiguous):
                raise ambiguous(outcome.why, outcome.candidates) from cause
            remaining = max(0.0, ends - wire.clock())
            delay = min(_LOOK_EVERY, remaining) if wire.retry_policy.wait else remaining
            if looks == 1:
                logger.info(
                    "create for video %s not found yet; looking again every %g s for up to %.0f s",
                    request.video_id,
                    _LOOK_EVERY,
                    remaining,
                )
            await wire.sleep(delay, wake=on_wire[0].off_wire() if on_wire else None)

    async def _look(
        self, request: ExtendRequest, attempt: CreateAttempt, key: str | None, *, final: bool
    ) -> _reconcile.Verdict | None:
        """One look-up: the external id, then the list back to the send; a verdict or None."""
        wire = self._wire
        external_id = request.external_task_id
        if external_id is not None:
            try:
                found = await wire.call(
                    sansio.query_request(wire.base_url, external_id),
                    lambda response, now: sansio.parse_task(response, now, task_id=external_id),
                )
            except NotFoundError:
                pass  # not made (yet), or the server drops external ids: the list tells
            except KlingError as lookup_error:
                if final:
                    raise _CannotLook(
                        f"looking up its external id failed ({lookup_error})"
                    ) from lookup_error
                return None
            else:
                self.keeps_external_ids = True
                return _reconcile.Found(found)
        if external_id is not None and self.keeps_external_ids:
            tasks: list[Task] = []  # the id look-up was the whole answer
            covered = True
        else:
            if self.list_unavailable:
                raise _CannotLook("this base URL offers no task list to look it up")
            try:
                tasks, covered = await self._read_list(attempt)
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
        doubt = self._doubt(attempt, external_id)
        rivals = [self._doubt(other, other.external_task_id) for other in self._rivals(attempt)]
        claimed = {task_id for task_id, owner in self._known.items() if key is None or owner != key}
        journal = self.journal
        if journal is not None:
            try:
                recorded = await journal.doubts(request.video_id)
                owners = await journal.keys_of([task.task_id for task in tasks])
            except JournalError as journal_error:
                if final:
                    raise _CannotLook(
                        f"reading the journal failed ({journal_error})"
                    ) from journal_error
                return None
            wall_now = dt.datetime.now(dt.timezone.utc)
            for entry in recorded:
                if entry.key != key and entry.sent_at is not None:
                    rival = CreateAttempt(entry.request.video_id)
                    rival.sent_at = entry.sent_at
                    # Sent "in the future": the clock was set back; unplaced, it contests all.
                    step = (entry.sent_at - wall_now).total_seconds()
                    rival.placed = step <= _CLOCK_STEP
                    rival.sent_server = entry.sent_server
                    rival.sent_uncertainty = entry.sent_uncertainty or 0.0
                    rivals.append(self._doubt(rival, entry.external_task_id))
            claimed.update(task_id for task_id, owner in owners.items() if owner != key)
        return _reconcile.verdict(
            doubt,
            tasks,
            claimed=claimed,
            rivals=rivals,
            keeps_external_ids=self.keeps_external_ids,
            covered=covered,
            final=final,
        )

    async def _read_list(self, attempt: CreateAttempt) -> tuple[list[Task], bool]:
        """List pages, newest first, back past the send (less the margin and the tolerance
        for a misplaced send) on the server's clock; also whether they reached that far."""
        wire = self._wire
        tasks: list[Task] = []
        for page in range(1, _MAX_PAGES + 1):
            before = dt.datetime.now(dt.timezone.utc)
            listed, date = await wire.call(
                sansio.list_request(wire.base_url, page, _PAGE_SIZE), _list_and_date
            )
            self._wire.server_clock.observe_date(date, before, dt.datetime.now(dt.timezone.utc))
            tasks.extend(listed)
            scan_from = self._doubt(attempt, None).scan_from
            if scan_from is None:
                return tasks, False  # cannot tell how far back to read
            if not _reconcile.read_next_page(listed, _PAGE_SIZE, scan_from):
                return tasks, True
        return tasks, False

    def _doubt(self, attempt: CreateAttempt, external_id: str | None) -> _reconcile.Doubt:
        """``attempt`` as the look-up's rules see it, on the server's clock: a send of this
        process is placed by the loop's clock (a wall clock stepped since cannot move it),
        a journaled one by the wall clock it was recorded on."""
        wire = self._wire
        clock = wire.server_clock
        uncertainty = clock.uncertainty
        if attempt.sent_loop is not None:
            now = clock.to_server(dt.datetime.now(dt.timezone.utc))
            ago = dt.timedelta(seconds=wire.clock() - attempt.sent_loop)
            sent_at = None if now is None else now - ago
        elif attempt.sent_server is not None:
            sent_at = attempt.sent_server
            uncertainty = dt.timedelta(seconds=attempt.sent_uncertainty)
        elif attempt.placed and attempt.sent_at is not _NEVER:
            sent_at = clock.to_server(attempt.sent_at)
        else:
            sent_at = None
        return _reconcile.Doubt(
            video_id=attempt.video_id,
            external_task_id=external_id,
            sent_at=sent_at,
            window=dt.timedelta(seconds=self._wire.create_deadline),
            uncertainty=uncertainty,
        )

    def _settled(self, key: str | None) -> None:
        """Earlier tries of journal ``key`` (a look-up cut short) are no longer in doubt."""
        if key is not None:
            for other in self._doubts:
                if other.key == key:
                    other.resolved = True

    def _rivals(self, attempt: CreateAttempt) -> Iterable[CreateAttempt]:
        """Other creates of this session for the same video whose outcome is (or was left)
        unknown."""
        for other in (*self._active, *self._doubts):
            if (
                other is not attempt
                and (attempt.key is None or other.key != attempt.key)
                and other.video_id == attempt.video_id
                and other.doubtful
                and not other.resolved
            ):
                yield other


def _list_and_date(
    response: sansio.HTTPResponse, now: dt.datetime
) -> tuple[list[Task], str | None]:
    """A list page, and the reply's ``Date`` (the server's clock, to place the send on)."""
    return sansio.parse_task_list(response, now), response.headers.get("Date")


class _CannotLook(Exception):
    """Nothing can settle the create: ``why`` says what is missing."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Absent(Exception):
    """The look-up proved a create absent: neither its external id nor the list knows it."""


# Refusals of this very request (api.md "Errors"): sending it again cannot help, so a
# journal remembers them. Account and auth errors are not among them: a re-run may succeed.
_REFUSALS = (InvalidRequestError, NotFoundError, ContentPolicyError)
